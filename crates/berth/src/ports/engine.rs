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
    /// The pull failed: the registry could not be reached or answered an
    /// error, or Docker failed (`Unavailable` when Docker is not reached).
    #[error("image {image} could not be pulled: {message}")]
    PullFailed { image: String, message: String },
    /// The registry has no such repository, tag or manifest (Docker answers
    /// the pull with HTTP 404): the caller named an image that is not there.
    #[error("image {image} does not exist in its registry: {message}")]
    ImageNotFound { image: String, message: String },
    #[error("no such container or image: {0}")]
    NotFound(String),
    /// The network a container is to join does not exist (any more). Docker
    /// 20.10 notices at start, newer daemons may already at create.
    #[error("Docker network {network} does not exist")]
    NetworkMissing { network: String },
    /// The request does not fit the object's state: a container with this
    /// name already exists, or an exec in a container that is not running
    /// (created, exited, paused or restarting).
    #[error("Docker reported a conflict: {0}")]
    Conflict(String),
    /// berth never acts on a container whose owner label is not its own.
    #[error("container {id} belongs to owner {owner:?}, not to this berth instance")]
    ForeignOwner { id: String, owner: String },
    #[error("Docker refused the request: {0}")]
    Rejected(String),
    /// A command run with `Engine::exec` did not finish within its timeout
    /// (Docker itself answered; compare `Unavailable`).
    #[error("timed out: {0}")]
    Timeout(String),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageInfo {
    pub id: String,
    /// `<repo>@sha256:…` entries.
    pub repo_digests: Vec<String>,
    /// The image config's `Labels` (`LABEL` lines, `docker build --label`);
    /// empty when it has none.
    pub labels: BTreeMap<String, String>,
}

/// The most output `Engine::exec` keeps: the first 64 KiB, the rest is read
/// and dropped.
pub const EXEC_OUTPUT_LIMIT: usize = 64 * 1024;

/// What a command run with `Engine::exec` did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExecOutput {
    /// The command's exit code, as Docker reports it: 126 when Docker
    /// could not start it at all (no such binary; the output then holds the
    /// OCI runtime's error), 127 from a shell for a missing command, 137
    /// after SIGKILL.
    pub exit_code: i64,
    /// stdout and stderr interleaved as Docker delivered them, decoded as
    /// lossy UTF-8, at most [`EXEC_OUTPUT_LIMIT`] bytes (the first part).
    pub output: String,
}

/// Raw exec output to [`ExecOutput::output`]: at most
/// [`EXEC_OUTPUT_LIMIT`] bytes of lossy UTF-8; a character cut in two by the
/// limit is dropped, not replaced.
pub(crate) fn exec_output_text(bytes: &[u8]) -> String {
    let mut kept = &bytes[..bytes.len().min(EXEC_OUTPUT_LIMIT)];
    if kept.len() < bytes.len() {
        // The last character's first byte is within the last four.
        let start = (kept.len().saturating_sub(4)..kept.len())
            .rev()
            .find(|&i| kept[i] & 0b1100_0000 != 0b1000_0000);
        if let Some(start) = start {
            if let Err(e) = std::str::from_utf8(&kept[start..]) {
                if e.error_len().is_none() {
                    kept = &kept[..start];
                }
            }
        }
    }
    cap_exec_text(String::from_utf8_lossy(kept).into_owned())
}

/// Cuts `text` to at most [`EXEC_OUTPUT_LIMIT`] bytes on a character
/// boundary (lossy decoding may have made it longer than its bytes).
pub(crate) fn cap_exec_text(mut text: String) -> String {
    if text.len() > EXEC_OUTPUT_LIMIT {
        let mut end = EXEC_OUTPUT_LIMIT;
        while !text.is_char_boundary(end) {
            end -= 1;
        }
        text.truncate(end);
    }
    text
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

    /// Runs `cmd` (argv, no shell) in a running container of this owner and
    /// waits for it to end; see [`ExecOutput`] for what comes back.
    ///
    /// Errors: `NotFound` for a missing container, `ForeignOwner` for
    /// another owner's (or an unlabelled) one, `Conflict` when the container
    /// is not running (created, exited, paused, restarting), `Rejected` for
    /// an empty `cmd`, and `Timeout` when the command has not ended within
    /// `timeout` (counted from its start). Docker cannot cancel an exec: a
    /// command that timed out is left running in the container until it
    /// ends by itself or the container stops.
    async fn exec(
        &self,
        id: &str,
        cmd: &[String],
        timeout: Duration,
    ) -> Result<ExecOutput, EngineError>;

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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exec_output_keeps_the_first_part_and_no_cut_character() {
        assert_eq!(exec_output_text(b"hello\n"), "hello\n");
        assert_eq!(exec_output_text(b"a\xffb"), "a\u{fffd}b");

        let long = vec![b'y'; EXEC_OUTPUT_LIMIT + 10];
        assert_eq!(exec_output_text(&long).len(), EXEC_OUTPUT_LIMIT);

        // "é" (2 bytes) cut in two by the limit is dropped, not replaced.
        let mut cut = vec![b'y'; EXEC_OUTPUT_LIMIT - 1];
        cut.extend_from_slice("é and more".as_bytes());
        let text = exec_output_text(&cut);
        assert_eq!(text.len(), EXEC_OUTPUT_LIMIT - 1);
        assert!(text.bytes().all(|b| b == b'y'));

        // Ending exactly at the limit on a whole character keeps it.
        let mut whole = vec![b'y'; EXEC_OUTPUT_LIMIT - 2];
        whole.extend_from_slice("é!".as_bytes());
        assert!(exec_output_text(&whole).ends_with('é'));

        // Replacement characters (3 bytes for 1) do not push it past the limit.
        let invalid = vec![0xff; EXEC_OUTPUT_LIMIT + 1];
        let text = exec_output_text(&invalid);
        assert!(text.len() <= EXEC_OUTPUT_LIMIT && text.len() > EXEC_OUTPUT_LIMIT - 3);
        assert!(text.chars().all(|c| c == '\u{fffd}'));
    }
}
