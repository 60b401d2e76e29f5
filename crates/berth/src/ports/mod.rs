//! One small trait per outside system. Services depend on these, never on
//! an adapter directly, so that decisions can be unit-tested with fakes.

pub mod bus;
pub mod clock;
pub mod engine;
pub mod git;
pub mod probe;
pub mod registry;
pub mod state_fs;
pub mod store;
pub mod webhook;

pub use bus::{AppendOutcome, Bus, BusError, OutboxAppend, StreamEntry, OUTBOX_SEQ_FIELD};
pub use clock::{Clock, SystemClock};
pub use engine::{ContainerInfo, Engine, EngineError, ExecOutput, ImageInfo, PullProgress};
pub use git::{GitError, RefResolver, RemoteRef};
pub use registry::{Registry, RegistryError};
pub use state_fs::{write_durable, StateFs, StateFsError, StateLock};
pub use store::{
    EventStore, OperationFilter, OutboxStore, PluginStore, RolloutStore, RuntimeFilter,
    RuntimePage, RuntimeStore, Store, StoreError, TemplateStore, WatchStore, WebhookStore,
};
pub use webhook::{WebhookError, WebhookRequest, WebhookSender};
