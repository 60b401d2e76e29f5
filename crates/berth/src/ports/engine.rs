//! The container engine (Docker). The real adapter is
//! `adapters::docker::DockerEngine`.

use std::collections::BTreeMap;
use std::time::Duration;

use async_trait::async_trait;
use berth_core::container::ContainerSpec;
use futures_util::stream::BoxStream;

#[derive(Debug, Clone, thiserror::Error)]
pub enum EngineError {
    /// The daemon cannot be reached or did not answer in time.
    #[error("Docker is unavailable: {0}")]
    Unavailable(String),
    #[error("image {image} could not be pulled: {message}")]
    PullFailed { image: String, message: String },
    #[error("no such container or image: {0}")]
    NotFound(String),
    /// The network a container is to join does not exist (any more). Docker
    /// 20.10 notices at start, newer daemons may already at create.
    #[error("Docker network {network} does not exist")]
    NetworkMissing { network: String },
    /// A container with this name already exists.
    #[error("Docker reported a conflict: {0}")]
    Conflict(String),
    /// berth never acts on a container whose owner label is not its own.
    #[error("container {id} belongs to owner {owner:?}, not to this berth instance")]
    ForeignOwner { id: String, owner: String },
    #[error("Docker refused the request: {0}")]
    Rejected(String),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageInfo {
    pub id: String,
    /// `<repo>@sha256:…` entries.
    pub repo_digests: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContainerInfo {
    pub id: String,
    /// Without Docker's leading '/'.
    pub name: String,
    pub labels: BTreeMap<String, String>,
    /// Docker's state: created, running, paused, restarting, removing, exited, dead.
    pub state: String,
    pub running: bool,
    pub exit_code: Option<i64>,
    pub oom_killed: bool,
    pub image_id: String,
    /// When Docker created the container (ms since the epoch); `None` when
    /// Docker did not say.
    pub created_at_ms: Option<i64>,
    /// The container's address on each network it is attached to (inspect
    /// only; empty from the list).
    pub addresses: BTreeMap<String, String>,
    /// Docker's HEALTHCHECK status (`starting`, `healthy`, `unhealthy`)
    /// when the image has one (inspect only).
    pub health: Option<String>,
}

/// What happened to a container, as Docker's events report it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EngineEventKind {
    Started,
    /// The main process exited; `exit_code` as Docker reported it (137 after
    /// SIGKILL, including an OOM kill).
    Died {
        exit_code: Option<i64>,
    },
    /// The kernel's OOM killer hit the container (a `Died` follows).
    OomKilled,
    /// The container was removed.
    Destroyed,
    /// The image's health check changed state.
    HealthStatus {
        healthy: bool,
    },
}

/// One container event. A hint, not a record: Docker drops events a slow
/// listener does not take, so the listener relists after every reconnect.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EngineEvent {
    pub kind: EngineEventKind,
    pub container_id: String,
    /// The container's labels (the event's attributes without Docker's own
    /// keys such as `name`, `image` and `exitCode`).
    pub labels: BTreeMap<String, String>,
    /// When Docker emitted the event (ms since the epoch).
    pub at_ms: i64,
}

/// One line of pull progress, as Docker reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PullProgress {
    pub status: String,
    pub layer: Option<String>,
    pub current: Option<u64>,
    pub total: Option<u64>,
}

pub type ProgressFn = dyn Fn(PullProgress) + Send + Sync;

#[async_trait]
pub trait Engine: Send + Sync + 'static {
    async fn ping(&self) -> Result<(), EngineError>;

    /// Creates the user-defined bridge network unless it exists.
    async fn ensure_network(&self, name: &str) -> Result<(), EngineError>;

    /// The local image, or `None` when it is not present.
    async fn inspect_image(&self, image: &str) -> Result<Option<ImageInfo>, EngineError>;

    async fn pull_image(&self, image: &str, progress: &ProgressFn) -> Result<(), EngineError>;

    /// Creates (does not start) the container; returns its id.
    async fn create_container(&self, spec: &ContainerSpec) -> Result<String, EngineError>;

    /// Starts a container of this owner; a running one is left as it is.
    async fn start_container(&self, id: &str) -> Result<(), EngineError>;

    /// Stops a container of this owner, killing it after `grace`; a stopped
    /// one is left as it is.
    async fn stop_container(&self, id: &str, grace: Duration) -> Result<(), EngineError>;

    /// Force-removes a container of this owner; a missing one is not an error.
    async fn remove_container(&self, id: &str) -> Result<(), EngineError>;

    /// Renames a container of this owner.
    async fn rename_container(&self, id: &str, new_name: &str) -> Result<(), EngineError>;

    /// By id or name; `None` when there is no such container.
    async fn inspect_container(
        &self,
        id_or_name: &str,
    ) -> Result<Option<ContainerInfo>, EngineError>;

    /// Every container, in any state, that carries this instance's owner label.
    async fn list_containers(&self) -> Result<Vec<ContainerInfo>, EngineError>;

    /// Container events (start, die, oom, destroy, health status) of this
    /// owner's containers only, from now on.
    ///
    /// The stream ends, possibly after one `Err`, when the connection to the
    /// daemon breaks; it is never cut by a request timeout. The caller
    /// reconnects with backoff and then relists: events missed while
    /// disconnected, or dropped by the daemon for a slow listener, are not
    /// replayed.
    fn events(&self) -> BoxStream<'static, Result<EngineEvent, EngineError>>;
}
