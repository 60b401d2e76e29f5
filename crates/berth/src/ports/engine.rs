//! The container engine (Docker). The real adapter is
//! `adapters::docker::DockerEngine`.

use std::collections::BTreeMap;
use std::time::Duration;

use async_trait::async_trait;
use berth_core::container::ContainerSpec;

#[derive(Debug, Clone, thiserror::Error)]
pub enum EngineError {
    /// The daemon cannot be reached or did not answer in time.
    #[error("Docker is unavailable: {0}")]
    Unavailable(String),
    #[error("image {image} could not be pulled: {message}")]
    PullFailed { image: String, message: String },
    #[error("no such container or image: {0}")]
    NotFound(String),
    /// A container with this name already exists.
    #[error("conflict: {0}")]
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

    /// By id or name; `None` when there is no such container.
    async fn inspect_container(
        &self,
        id_or_name: &str,
    ) -> Result<Option<ContainerInfo>, EngineError>;

    /// Every container, in any state, that carries this instance's owner label.
    async fn list_containers(&self) -> Result<Vec<ContainerInfo>, EngineError>;
}
