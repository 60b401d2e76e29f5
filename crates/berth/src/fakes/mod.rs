//! In-memory fakes of every port, for unit tests of the services.
//!
//! Each fake passes the same contract suite as its real adapter
//! (`tests/*_contract.rs`), so a fake is trusted exactly as far as the real
//! thing. Fakes can also be told to fail, so that tests can inject faults
//! and crashes at any step of a flow.

pub mod bus;
pub mod clock;
pub mod engine;
pub mod git;
pub mod probe;
pub mod registry;
pub mod state_fs;
pub mod store;
pub mod webhook;

pub use bus::FakeBus;
pub use clock::FakeClock;
pub use engine::FakeEngine;
pub use git::FakeRefResolver;
pub use probe::FakeProbe;
pub use registry::FakeRegistry;
pub use state_fs::FakeStateFs;
pub use store::FakeStore;
pub use webhook::FakeWebhookSender;
