//! Docker engine adapter (bollard). See `ports::engine`.
//!
//! Every request carries a timeout: bollard's own client timeout (which ends
//! once response headers arrive) plus a tokio deadline around the whole call,
//! and an idle deadline between the lines of a pull's progress stream.
//! The events stream is the exception: it is meant to stay open, so only its
//! response headers are bounded (see `Engine::events` below).

use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::hash::{BuildHasher, Hasher, RandomState};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use berth_core::container::{ContainerSpec, LABEL_OWNER};
use berth_core::error_chain::describe;
use berth_core::image::Reference;
use bollard::container::LogOutput;
use bollard::container::{
    Config, CreateContainerOptions, InspectContainerOptions, ListContainersOptions,
    NetworkingConfig, RemoveContainerOptions, StartContainerOptions, StopContainerOptions,
};
use bollard::errors::Error as DockerError;
use bollard::exec::{CreateExecOptions, StartExecOptions, StartExecResults};
use bollard::image::CreateImageOptions;
use bollard::models::{
    ContainerInspectResponse, ContainerStateStatusEnum, ContainerSummary, CreateImageInfo,
    EndpointSettings, EventMessage, EventMessageTypeEnum, HostConfig, Network, RestartPolicy,
    RestartPolicyNameEnum,
};
use bollard::network::{CreateNetworkOptions, ListNetworksOptions};
use bollard::system::EventsOptions;
use bollard::{ClientVersion, Docker, API_DEFAULT_VERSION};
use futures_util::stream::BoxStream;
use futures_util::StreamExt;

use crate::ports::engine::{
    exec_output_text, ContainerInfo, Engine, EngineError, EngineEvent, EngineEventKind, ExecOutput,
    ImageInfo, ProgressFn, PullProgress, EXEC_OUTPUT_LIMIT,
};

/// Timeout of every Docker request (and the idle limit of a pull stream).
pub const DOCKER_TIMEOUT: Duration = Duration::from_secs(120);

/// Extra time on top of bollard's timeout for reading a response body.
const BODY_SLACK: Duration = Duration::from_secs(10);

/// An API version every daemon too old for bollard's default still accepts
/// (Docker ≤ 26 supports 1.24 and up).
const FLOOR_VERSION: ClientVersion = ClientVersion {
    major_version: 1,
    minor_version: 24,
};

/// Rounds of create-and-check in `ensure_network` before giving up.
const NETWORK_ATTEMPTS: u32 = 5;

const DEFAULT_SOCKET: &str = "/var/run/docker.sock";

/// Between looks at an exec whose output has ended but whose exit code
/// Docker has not recorded yet.
const EXEC_EXIT_POLL: Duration = Duration::from_millis(20);

/// Looks at an ended exec without an exit code before giving up.
const EXEC_EXIT_LOOKS: u32 = 100;

/// The container events berth listens to. Docker matches `health_status`
/// as a prefix of `health_status: healthy` and the like.
const EVENT_ACTIONS: [&str; 5] = ["start", "die", "oom", "destroy", "health_status"];

/// Attributes Docker adds to a container event beside the container's
/// labels.
const EVENT_OWN_ATTRIBUTES: [&str; 5] = ["name", "image", "exitCode", "execDuration", "signal"];

/// Where the daemon listens, as the operator wrote it.
#[derive(Debug, Clone)]
enum Host {
    Unix(String),
    Http(String),
}

impl Host {
    fn parse(docker_host: &str) -> Result<Host, EngineError> {
        if let Some(path) = docker_host.strip_prefix("unix://") {
            Ok(Host::Unix(path.to_string()))
        } else if docker_host.starts_with("tcp://") || docker_host.starts_with("http://") {
            Ok(Host::Http(docker_host.to_string()))
        } else if docker_host.starts_with('/') {
            Ok(Host::Unix(docker_host.to_string()))
        } else {
            Err(EngineError::Unavailable(format!(
                "docker_host {docker_host:?} is not supported: use unix:///path/to/docker.sock, \
                 tcp://host:port or http://host:port"
            )))
        }
    }

    /// The operator's `docker_host`, else `DOCKER_HOST`, else the local socket.
    fn resolve(docker_host: Option<&str>) -> Result<Host, EngineError> {
        match docker_host {
            Some(h) => Host::parse(h),
            None => match std::env::var("DOCKER_HOST") {
                Ok(h) if !h.is_empty() => Host::parse(&h),
                _ => Ok(Host::Unix(DEFAULT_SOCKET.to_string())),
            },
        }
    }

    fn describe(&self) -> String {
        match self {
            Host::Unix(path) => format!("unix://{path}"),
            Host::Http(addr) => addr.clone(),
        }
    }

    fn client(&self, version: &ClientVersion) -> Result<Docker, EngineError> {
        let secs = DOCKER_TIMEOUT.as_secs();
        let made = match self {
            Host::Unix(path) => Docker::connect_with_unix(path, secs, version),
            Host::Http(addr) => Docker::connect_with_http(addr, secs, version),
        };
        made.map_err(|e| match e {
            DockerError::SocketNotFoundError(path) => EngineError::Unavailable(format!(
                "cannot reach Docker: there is no socket at {path} (is the Docker daemon \
                 running, and is docker_host right?)"
            )),
            other => EngineError::Unavailable(format!(
                "cannot reach Docker at {}: {}",
                self.describe(),
                describe(&other)
            )),
        })
    }
}

/// The Docker adapter. Cheap to clone (the HTTP client is shared).
#[derive(Debug, Clone)]
pub struct DockerEngine {
    docker: Docker,
    owner: String,
    host: String,
    /// Serialises `ensure_network` among the clones of this engine.
    network_turn: Arc<tokio::sync::Mutex<()>>,
}

impl DockerEngine {
    /// Connects and negotiates the API version with the daemon.
    ///
    /// `docker_host`: `None` for the local default (`DOCKER_HOST`, else
    /// `/var/run/docker.sock`), `unix:///path`, `tcp://host:port` or
    /// `http://host:port`. `owner` is the `io.berth.owner` label this
    /// instance creates and is allowed to act on.
    pub async fn connect(
        docker_host: Option<&str>,
        owner: &str,
    ) -> Result<DockerEngine, EngineError> {
        let host = Host::resolve(docker_host)?;
        let docker = negotiate(&host).await?;
        Ok(DockerEngine {
            docker,
            owner: owner.to_string(),
            host: host.describe(),
            network_turn: Arc::default(),
        })
    }

    pub fn owner(&self) -> &str {
        &self.owner
    }

    /// The underlying client (already version-negotiated), for callers that
    /// need Docker APIs outside the `Engine` port, such as the events stream.
    pub fn client(&self) -> &Docker {
        &self.docker
    }

    /// Runs one request under a deadline: bollard's timeout stops at the
    /// response headers, so a stalled body would otherwise hang forever.
    async fn within<T>(
        &self,
        limit: Duration,
        call: impl Future<Output = Result<T, DockerError>>,
    ) -> Result<T, DockerError> {
        match tokio::time::timeout(limit + BODY_SLACK, call).await {
            Ok(result) => result,
            Err(_) => Err(DockerError::RequestTimeoutError),
        }
    }

    async fn call<T>(
        &self,
        call: impl Future<Output = Result<T, DockerError>>,
    ) -> Result<T, DockerError> {
        self.within(DOCKER_TIMEOUT, call).await
    }

    fn map_err(&self, e: DockerError) -> EngineError {
        match e {
            DockerError::DockerResponseServerError {
                status_code: 404,
                message,
            } => EngineError::NotFound(message),
            DockerError::DockerResponseServerError {
                status_code: 409,
                message,
            } => EngineError::Conflict(message),
            DockerError::DockerResponseServerError {
                status_code,
                message,
            } => EngineError::Rejected(format!("{message} (HTTP {status_code})")),
            other if is_transport(&other) => self.unavailable(&other),
            other => EngineError::Rejected(describe(&other)),
        }
    }

    fn unavailable(&self, e: &DockerError) -> EngineError {
        match e {
            DockerError::RequestTimeoutError => EngineError::Unavailable(format!(
                "Docker at {} did not answer within {} s",
                self.host,
                DOCKER_TIMEOUT.as_secs()
            )),
            other => EngineError::Unavailable(format!(
                "cannot reach Docker at {}: {}",
                self.host,
                describe(other)
            )),
        }
    }

    /// The container, if it exists; `ForeignOwner` unless it carries this
    /// instance's owner label (a container without one is foreign too).
    async fn owned(&self, id: &str) -> Result<Option<ContainerInspectResponse>, EngineError> {
        let Some(found) = self.inspect_raw(id).await? else {
            return Ok(None);
        };
        let owner = found
            .config
            .as_ref()
            .and_then(|c| c.labels.as_ref())
            .and_then(|l| l.get(LABEL_OWNER))
            .cloned()
            .unwrap_or_default();
        if owner != self.owner {
            return Err(EngineError::ForeignOwner {
                id: id.to_string(),
                owner,
            });
        }
        Ok(Some(found))
    }

    async fn inspect_raw(&self, id: &str) -> Result<Option<ContainerInspectResponse>, EngineError> {
        let inspected = self
            .call(
                self.docker
                    .inspect_container(id, None::<InspectContainerOptions>),
            )
            .await;
        match inspected {
            Ok(found) => Ok(Some(found)),
            Err(DockerError::DockerResponseServerError {
                status_code: 404, ..
            }) => Ok(None),
            Err(e) => Err(self.map_err(e)),
        }
    }

    async fn networks_named(&self, name: &str) -> Result<Vec<Network>, EngineError> {
        let options = ListNetworksOptions {
            filters: HashMap::from([("name", vec![name])]),
        };
        let networks = self
            .call(self.docker.list_networks(Some(options)))
            .await
            .map_err(|e| self.map_err(e))?;
        // Docker's name filter matches substrings; only an exact name counts.
        Ok(networks
            .into_iter()
            .filter(|n| n.name.as_deref() == Some(name))
            .collect())
    }

    /// After Docker answered 404 to a request about a container on
    /// `networks` (each a name, and the network's id once the container has
    /// joined it): `NetworkMissing` when one of them is gone, else the 404
    /// as it was. Docker says which in its message only, so look.
    ///
    /// A container that has joined a network stays bound to its id: once
    /// that network is deleted, a new one of the same name does not help.
    async fn missing_network_or(
        &self,
        networks: impl IntoIterator<Item = (String, Option<String>)>,
        not_found: DockerError,
    ) -> EngineError {
        for (network, bound_to) in networks {
            let found = match self.networks_named(&network).await {
                Ok(found) => found,
                Err(e) => return e,
            };
            let present = match bound_to {
                Some(id) => found.iter().any(|n| n.id.as_deref() == Some(id.as_str())),
                None => !found.is_empty(),
            };
            if !present {
                return EngineError::NetworkMissing { network };
            }
        }
        self.map_err(not_found)
    }

    fn events_error(&self, e: DockerError) -> EngineError {
        match e {
            DockerError::RequestTimeoutError => self.unavailable(&e),
            other if is_transport(&other) => EngineError::Unavailable(format!(
                "the events stream from Docker at {} broke: {}",
                self.host,
                describe(&other)
            )),
            other => self.map_err(other),
        }
    }

    /// Starts the created exec `exec_id` attached, reads its output to the
    /// end (keeping the first `EXEC_OUTPUT_LIMIT` bytes and dropping the
    /// rest, so that the command never blocks on a full pipe), then asks
    /// for its exit code.
    async fn run_exec(&self, exec_id: &str) -> Result<ExecOutput, EngineError> {
        let options = StartExecOptions {
            detach: false,
            tty: false,
            output_capacity: None,
        };
        let started = self
            .call(self.docker.start_exec(exec_id, Some(options)))
            .await
            .map_err(|e| self.map_err(e))?;
        let StartExecResults::Attached { mut output, input } = started else {
            return Err(EngineError::Rejected(format!(
                "Docker started exec {exec_id} detached, not attached"
            )));
        };
        // Nothing is written to the command's stdin (it is not attached).
        drop(input);
        let mut bytes = Vec::new();
        while let Some(chunk) = output.next().await {
            let message = match chunk.map_err(|e| self.map_err(e))? {
                LogOutput::StdOut { message }
                | LogOutput::StdErr { message }
                | LogOutput::Console { message } => message,
                LogOutput::StdIn { .. } => continue,
            };
            // One byte past the limit tells `exec_output_text` it was cut.
            let room = (EXEC_OUTPUT_LIMIT + 1).saturating_sub(bytes.len());
            bytes.extend_from_slice(&message[..message.len().min(room)]);
        }
        // The output ends when the command's pipes close, which may be a
        // moment before Docker has recorded the exit code.
        for _ in 0..EXEC_EXIT_LOOKS {
            let inspected = self
                .call(self.docker.inspect_exec(exec_id))
                .await
                .map_err(|e| self.map_err(e))?;
            if inspected.running != Some(true) {
                if let Some(exit_code) = inspected.exit_code {
                    return Ok(ExecOutput {
                        exit_code,
                        output: exec_output_text(&bytes),
                    });
                }
            }
            tokio::time::sleep(EXEC_EXIT_POLL).await;
        }
        Err(EngineError::Rejected(format!(
            "Docker reported no exit code for exec {exec_id} after its output ended"
        )))
    }

    fn pull_error(&self, image: &str, e: DockerError) -> EngineError {
        match e {
            DockerError::DockerStreamError { error } => EngineError::PullFailed {
                image: image.to_string(),
                message: error,
            },
            // Docker answers 404 when the registry has no such repository,
            // tag or manifest (and 500 when the registry cannot be reached).
            DockerError::DockerResponseServerError {
                status_code: 404,
                message,
            } => EngineError::ImageNotFound {
                image: image.to_string(),
                message,
            },
            DockerError::DockerResponseServerError { message, .. } => EngineError::PullFailed {
                image: image.to_string(),
                message,
            },
            other if is_transport(&other) => self.unavailable(&other),
            other => EngineError::PullFailed {
                image: image.to_string(),
                message: describe(&other),
            },
        }
    }
}

/// bollard 0.18 negotiates by calling `/v1.47/version`, which daemons older
/// than API 1.47 (e.g. Docker 20.10, API 1.41) reject with a 400 "client
/// version 1.47 is too new". In that case ask again at a version they accept
/// and use the daemon's own API version.
async fn negotiate(host: &Host) -> Result<Docker, EngineError> {
    let unreachable = |e: DockerError| {
        EngineError::Unavailable(format!(
            "cannot reach Docker at {}: {}",
            host.describe(),
            describe(&e)
        ))
    };
    let deadline = DOCKER_TIMEOUT + BODY_SLACK;
    let first = host.client(API_DEFAULT_VERSION)?;
    let negotiated = tokio::time::timeout(deadline, first.negotiate_version())
        .await
        .unwrap_or(Err(DockerError::RequestTimeoutError));
    match negotiated {
        Ok(docker) => Ok(docker),
        Err(DockerError::DockerResponseServerError {
            status_code: 400, ..
        }) => {
            let probe = host.client(&FLOOR_VERSION)?;
            let version = tokio::time::timeout(deadline, probe.version())
                .await
                .unwrap_or(Err(DockerError::RequestTimeoutError))
                .map_err(unreachable)?;
            let reported = version.api_version.unwrap_or_default();
            let server = parse_api_version(&reported).ok_or_else(|| {
                EngineError::Rejected(format!(
                    "Docker at {} reported an unreadable API version {reported:?}",
                    host.describe()
                ))
            })?;
            let chosen = if server < *API_DEFAULT_VERSION {
                server
            } else {
                *API_DEFAULT_VERSION
            };
            host.client(&chosen)
        }
        Err(e) => Err(unreachable(e)),
    }
}

fn parse_api_version(text: &str) -> Option<ClientVersion> {
    let (major, minor) = text.trim().split_once('.')?;
    Some(ClientVersion {
        major_version: major.parse().ok()?,
        minor_version: minor.parse().ok()?,
    })
}

/// A random pause of up to 50 ms times the attempt, so that creators in
/// different processes stop yielding to each other in lockstep.
fn jitter(attempt: u32) -> Duration {
    let random = RandomState::new().build_hasher().finish();
    Duration::from_millis(random % 50 * u64::from(attempt + 1))
}

/// Failures to talk to the daemon at all, as opposed to answers from it.
fn is_transport(e: &DockerError) -> bool {
    matches!(
        e,
        DockerError::RequestTimeoutError
            | DockerError::IOError { .. }
            | DockerError::HyperResponseError { .. }
            | DockerError::HyperLegacyError { .. }
            | DockerError::SocketNotFoundError(_)
    )
}

fn to_progress(info: CreateImageInfo) -> PullProgress {
    let detail = info.progress_detail.unwrap_or_default();
    PullProgress {
        status: info.status.unwrap_or_default(),
        layer: info.id,
        current: detail.current.and_then(|c| u64::try_from(c).ok()),
        total: detail.total.and_then(|t| u64::try_from(t).ok()),
    }
}

fn bind_text(bind: &berth_core::container::Bind) -> String {
    let mut text = format!("{}:{}", bind.host_path, bind.container_path);
    if bind.read_only {
        text.push_str(":ro");
    }
    text
}

fn labels_map(labels: Option<HashMap<String, String>>) -> BTreeMap<String, String> {
    labels.unwrap_or_default().into_iter().collect()
}

/// Milliseconds since the epoch of an RFC 3339 time such as Docker's
/// `2024-05-01T12:34:56.123456789Z`. `None` when unreadable, and for times
/// not after the epoch: Go's zero time (`0001-01-01T00:00:00Z`) means
/// "unknown".
fn parse_rfc3339_ms(text: &str) -> Option<i64> {
    use time::format_description::well_known::Rfc3339;
    let at = time::OffsetDateTime::parse(text.trim(), &Rfc3339).ok()?;
    let ms = i64::try_from(at.unix_timestamp_nanos().div_euclid(1_000_000)).ok()?;
    (ms > 0).then_some(ms)
}

/// The wall clock, only for an event that arrives without a timestamp.
fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

/// Docker's `since` parameter (`<seconds>.<nanoseconds>`) for `at`.
fn since_param(at: SystemTime) -> String {
    let since = at.duration_since(UNIX_EPOCH).unwrap_or_default();
    format!("{}.{:09}", since.as_secs(), since.subsec_nanos())
}

/// A container event of `owner`, or `None` for anything else (other owners,
/// other object types, actions berth does not follow such as
/// `health_status: starting`).
fn to_event(message: EventMessage, owner: &str) -> Option<EngineEvent> {
    if !matches!(message.typ, None | Some(EventMessageTypeEnum::CONTAINER)) {
        return None;
    }
    let actor = message.actor?;
    let container_id = actor.id.filter(|id| !id.is_empty())?;
    let attributes = actor.attributes.unwrap_or_default();
    // Docker filtered by owner already; this guards the invariant anyway.
    if attributes.get(LABEL_OWNER).map(String::as_str) != Some(owner) {
        return None;
    }
    let action = message.action.unwrap_or_default();
    let kind = match action.as_str() {
        "start" => EngineEventKind::Started,
        "die" => EngineEventKind::Died {
            exit_code: attributes.get("exitCode").and_then(|c| c.parse().ok()),
        },
        "oom" => EngineEventKind::OomKilled,
        "destroy" => EngineEventKind::Destroyed,
        other => match other.strip_prefix("health_status:").map(str::trim) {
            Some("healthy") => EngineEventKind::HealthStatus { healthy: true },
            Some("unhealthy") => EngineEventKind::HealthStatus { healthy: false },
            _ => return None,
        },
    };
    let at_ms = message
        .time_nano
        .filter(|n| *n > 0)
        .map(|n| n / 1_000_000)
        .or_else(|| message.time.filter(|s| *s > 0).map(|s| s * 1000))
        .unwrap_or_else(now_ms);
    let labels = attributes
        .into_iter()
        .filter(|(key, _)| !EVENT_OWN_ATTRIBUTES.contains(&key.as_str()))
        .collect();
    Some(EngineEvent {
        kind,
        container_id,
        labels,
        at_ms,
    })
}

fn from_inspect(found: ContainerInspectResponse) -> ContainerInfo {
    let state = found.state.unwrap_or_default();
    ContainerInfo {
        id: found.id.unwrap_or_default(),
        name: found
            .name
            .unwrap_or_default()
            .trim_start_matches('/')
            .to_string(),
        labels: labels_map(found.config.and_then(|c| c.labels)),
        state: state.status.map(|s| s.to_string()).unwrap_or_default(),
        running: state.running.unwrap_or(false),
        exit_code: state.exit_code,
        oom_killed: state.oom_killed.unwrap_or(false),
        image_id: found.image.unwrap_or_default(),
        created_at_ms: found.created.as_deref().and_then(parse_rfc3339_ms),
        addresses: found
            .network_settings
            .and_then(|n| n.networks)
            .unwrap_or_default()
            .into_iter()
            .filter_map(|(net, ep)| {
                ep.ip_address
                    .filter(|ip| !ip.is_empty())
                    .map(|ip| (net, ip))
            })
            .collect(),
        health: state
            .health
            .and_then(|h| h.status)
            .map(|s| s.to_string())
            .filter(|s| !s.is_empty() && s != "none"),
    }
}

/// From the list summary, which has no exit code or OOM flag: those stay
/// `None`/`false` here; callers that need them inspect the container. Its
/// creation time has whole seconds only (inspect has nanoseconds).
fn from_summary(summary: ContainerSummary) -> ContainerInfo {
    let state = summary.state.unwrap_or_default();
    ContainerInfo {
        id: summary.id.unwrap_or_default(),
        name: summary
            .names
            .and_then(|n| n.into_iter().next())
            .unwrap_or_default()
            .trim_start_matches('/')
            .to_string(),
        labels: labels_map(summary.labels),
        running: state == "running",
        state,
        exit_code: None,
        oom_killed: false,
        image_id: summary.image_id.unwrap_or_default(),
        created_at_ms: summary
            .created
            .filter(|secs| *secs > 0)
            .and_then(|secs| secs.checked_mul(1000)),
        addresses: Default::default(),
        health: None,
    }
}

#[async_trait]
impl Engine for DockerEngine {
    async fn ping(&self) -> Result<(), EngineError> {
        self.call(self.docker.ping())
            .await
            .map(|_| ())
            .map_err(|e| self.map_err(e))
    }

    async fn ensure_network(&self, name: &str) -> Result<(), EngineError> {
        // Docker before 25 checks for a duplicate name and then creates, not
        // atomically: racing creators each get a network of the same name,
        // and containers then fail with "network is ambiguous". Callers in
        // this process take turns; other processes are handled below.
        let _turn = self.network_turn.lock().await;
        for attempt in 0..NETWORK_ATTEMPTS {
            if !self.networks_named(name).await?.is_empty() {
                return Ok(());
            }
            let options = CreateNetworkOptions {
                name,
                // Without it, Docker before 25 creates a second network of
                // the same name even when there is no race.
                check_duplicate: true,
                driver: "bridge",
                labels: HashMap::from([(LABEL_OWNER, self.owner.as_str())]),
                ..Default::default()
            };
            let created = match self.call(self.docker.create_network(options)).await {
                Ok(created) => created.id,
                // Someone created it since we looked ("already exists", 409):
                // that is success, not a failure.
                Err(e) if !is_transport(&e) && !self.networks_named(name).await?.is_empty() => {
                    return Ok(());
                }
                Err(e) => return Err(self.map_err(e)),
            };
            let same = self.networks_named(name).await?;
            if same
                .iter()
                .all(|n| n.id.as_deref() == Some(created.as_str()))
            {
                return Ok(());
            }
            // Another process created one too: yield ours to it. If it
            // yielded as well, none is left and the next round tries again
            // after a random pause. A failed removal is not fatal: the
            // network is usable, just not alone.
            let _ = self.call(self.docker.remove_network(&created)).await;
            tokio::time::sleep(jitter(attempt)).await;
        }
        if self.networks_named(name).await?.is_empty() {
            return Err(EngineError::Conflict(format!(
                "network {name} could not be created: other callers kept racing to create it"
            )));
        }
        Ok(())
    }

    async fn inspect_image(&self, image: &str) -> Result<Option<ImageInfo>, EngineError> {
        match self.call(self.docker.inspect_image(image)).await {
            Ok(found) => Ok(Some(ImageInfo {
                id: found.id.unwrap_or_default(),
                repo_digests: found.repo_digests.unwrap_or_default(),
                labels: labels_map(found.config.and_then(|c| c.labels)),
            })),
            Err(DockerError::DockerResponseServerError {
                status_code: 404, ..
            }) => Ok(None),
            Err(e) => Err(self.map_err(e)),
        }
    }

    async fn pull_image(&self, image: &str, progress: &ProgressFn) -> Result<(), EngineError> {
        let reference = Reference::parse(image).map_err(|e| EngineError::PullFailed {
            image: image.to_string(),
            message: e.message,
        })?;
        // The whole reference goes in `fromImage` and `tag` stays empty: the
        // daemon parses `host:port/repo:tag` and `repo@sha256:…` itself.
        let options = CreateImageOptions {
            from_image: reference.pullable().to_string(),
            ..Default::default()
        };
        let mut stream = self.docker.create_image(Some(options), None, None);
        loop {
            // The request timeout covers only the response headers; a pull
            // that stops reporting progress must not hang forever.
            let next = match tokio::time::timeout(DOCKER_TIMEOUT, stream.next()).await {
                Ok(next) => next,
                Err(_) => {
                    return Err(EngineError::PullFailed {
                        image: image.to_string(),
                        message: format!(
                            "no progress from Docker for {} s",
                            DOCKER_TIMEOUT.as_secs()
                        ),
                    })
                }
            };
            match next {
                None => return Ok(()),
                // bollard turns an `error` line of the stream (e.g.
                // "manifest unknown") into `DockerStreamError`.
                Some(Err(e)) => return Err(self.pull_error(image, e)),
                Some(Ok(info)) => progress(to_progress(info)),
            }
        }
    }

    async fn create_container(&self, spec: &ContainerSpec) -> Result<String, EngineError> {
        let host_config = HostConfig {
            binds: Some(spec.binds.iter().map(bind_text).collect()),
            network_mode: Some(spec.network.clone()),
            // berth decides restarts itself; Docker restarting behind its
            // back would hide exits from the reconciler.
            restart_policy: Some(RestartPolicy {
                name: Some(RestartPolicyNameEnum::NO),
                maximum_retry_count: None,
            }),
            ..Default::default()
        };
        let endpoint = EndpointSettings {
            aliases: Some(vec![spec.alias.clone()]),
            ..Default::default()
        };
        let config = Config {
            image: Some(spec.image.clone()),
            env: Some(spec.env.clone()),
            labels: Some(spec.labels.clone().into_iter().collect()),
            host_config: Some(host_config),
            networking_config: Some(NetworkingConfig {
                endpoints_config: HashMap::from([(spec.network.clone(), endpoint)]),
            }),
            ..Default::default()
        };
        let options = CreateContainerOptions {
            name: spec.name.clone(),
            platform: None,
        };
        match self
            .call(self.docker.create_container(Some(options), config))
            .await
        {
            Ok(created) => Ok(created.id),
            // A missing image or (on daemons that check at create) network.
            Err(
                e @ DockerError::DockerResponseServerError {
                    status_code: 404, ..
                },
            ) => Err(self
                .missing_network_or([(spec.network.clone(), None)], e)
                .await),
            Err(e) => Err(self.map_err(e)),
        }
    }

    async fn start_container(&self, id: &str) -> Result<(), EngineError> {
        let found = self
            .owned(id)
            .await?
            .ok_or_else(|| EngineError::NotFound(format!("no such container: {id}")))?;
        // Act on the inspected id, so a same-named replacement created in
        // between is never touched.
        let target = found.id.unwrap_or_else(|| id.to_string());
        let networks = found
            .network_settings
            .and_then(|n| n.networks)
            .unwrap_or_default()
            .into_iter()
            .map(|(name, endpoint)| (name, endpoint.network_id.filter(|id| !id.is_empty())));
        // Docker answers 304 for a running container; bollard treats it as Ok.
        match self
            .call(
                self.docker
                    .start_container(&target, None::<StartContainerOptions<String>>),
            )
            .await
        {
            Ok(()) => Ok(()),
            // The container was just inspected, so a 404 is most likely its
            // network, deleted since it was created.
            Err(
                e @ DockerError::DockerResponseServerError {
                    status_code: 404, ..
                },
            ) => Err(self.missing_network_or(networks, e).await),
            Err(e) => Err(self.map_err(e)),
        }
    }

    async fn stop_container(&self, id: &str, grace: Duration) -> Result<(), EngineError> {
        let found = self
            .owned(id)
            .await?
            .ok_or_else(|| EngineError::NotFound(format!("no such container: {id}")))?;
        let target = found.id.unwrap_or_else(|| id.to_string());
        let secs = grace.as_secs() + u64::from(grace.subsec_nanos() > 0);
        let options = StopContainerOptions {
            t: i64::try_from(secs).unwrap_or(i64::MAX),
        };
        // Docker answers only after the grace period, so the request may
        // take that long on top of the usual timeout.
        let limit = DOCKER_TIMEOUT + Duration::from_secs(secs);
        let docker = self.docker.clone().with_timeout(limit);
        // 304 (already stopped) is Ok in bollard.
        self.within(limit, docker.stop_container(&target, Some(options)))
            .await
            .map_err(|e| self.map_err(e))
    }

    async fn remove_container(&self, id: &str) -> Result<(), EngineError> {
        let Some(found) = self.owned(id).await? else {
            return Ok(());
        };
        let target = found.id.unwrap_or_else(|| id.to_string());
        let options = RemoveContainerOptions {
            force: true,
            // Anonymous volumes only; bind-mounted state directories are not
            // volumes and stay on the host.
            v: true,
            link: false,
        };
        match self
            .call(self.docker.remove_container(&target, Some(options)))
            .await
        {
            Ok(()) => Ok(()),
            Err(DockerError::DockerResponseServerError {
                status_code: 404, ..
            }) => Ok(()),
            // A forced remove conflicts only with a removal already in
            // progress: then it is going away either way.
            Err(
                e @ DockerError::DockerResponseServerError {
                    status_code: 409, ..
                },
            ) => match self.inspect_raw(&target).await? {
                None => Ok(()),
                Some(again)
                    if again.state.as_ref().and_then(|s| s.status)
                        == Some(ContainerStateStatusEnum::REMOVING) =>
                {
                    Ok(())
                }
                Some(_) => Err(self.map_err(e)),
            },
            Err(e) => Err(self.map_err(e)),
        }
    }

    async fn rename_container(&self, id: &str, new_name: &str) -> Result<(), EngineError> {
        let Some(found) = self.owned(id).await? else {
            return Err(EngineError::NotFound(id.to_string()));
        };
        let target = found.id.unwrap_or_else(|| id.to_string());
        self.call(self.docker.rename_container(
            &target,
            bollard::container::RenameContainerOptions { name: new_name },
        ))
        .await
        .map_err(|e| self.map_err(e))
    }

    async fn inspect_container(
        &self,
        id_or_name: &str,
    ) -> Result<Option<ContainerInfo>, EngineError> {
        Ok(self.inspect_raw(id_or_name).await?.map(from_inspect))
    }

    async fn exec(
        &self,
        id: &str,
        cmd: &[String],
        timeout: Duration,
    ) -> Result<ExecOutput, EngineError> {
        if cmd.is_empty() {
            return Err(EngineError::Rejected(format!(
                "no command to run in container {id}"
            )));
        }
        let found = self
            .owned(id)
            .await?
            .ok_or_else(|| EngineError::NotFound(format!("no such container: {id}")))?;
        let target = found.id.unwrap_or_else(|| id.to_string());
        // Docker would answer 409 too, in words only; say it plainly. A
        // paused container counts as running for Docker, not for exec.
        let state = found.state.unwrap_or_default();
        let status = state.status.map(|s| s.to_string()).unwrap_or_default();
        if state.running != Some(true) || status != "running" {
            return Err(EngineError::Conflict(format!(
                "cannot run {cmd:?} in container {id}: it is not running (it is {})",
                if status.is_empty() {
                    "in no known state"
                } else {
                    &status
                }
            )));
        }
        let options = CreateExecOptions {
            cmd: Some(cmd.to_vec()),
            attach_stdin: Some(false),
            attach_stdout: Some(true),
            attach_stderr: Some(true),
            tty: Some(false),
            ..Default::default()
        };
        // Stopped or removed since the inspect: 409 (Conflict) or 404.
        let exec_id = self
            .call(self.docker.create_exec(&target, options))
            .await
            .map_err(|e| self.map_err(e))?
            .id;
        match tokio::time::timeout(timeout, self.run_exec(&exec_id)).await {
            Ok(result) => result,
            // Dropping the attached stream does not stop the command:
            // Docker has no way to, so it runs on in the container.
            Err(_) => Err(EngineError::Timeout(format!(
                "{cmd:?} in container {id} did not end within {timeout:?} (it may still be running there)"
            ))),
        }
    }

    async fn list_containers(&self) -> Result<Vec<ContainerInfo>, EngineError> {
        let owner_filter = format!("{LABEL_OWNER}={}", self.owner);
        let options = ListContainersOptions {
            all: true,
            filters: HashMap::from([("label", vec![owner_filter.as_str()])]),
            ..Default::default()
        };
        let summaries = self
            .call(self.docker.list_containers(Some(options)))
            .await
            .map_err(|e| self.map_err(e))?;
        Ok(summaries.into_iter().map(from_summary).collect())
    }

    fn events(&self) -> BoxStream<'static, Result<EngineEvent, EngineError>> {
        // The request goes out only when the stream is first polled; `since`
        // (this moment, on the daemon's clock, which is ours for a local
        // socket) makes Docker replay from its buffer what happened in
        // between, so a caller may subscribe, relist, and only then poll.
        let options = EventsOptions::<String> {
            since: Some(since_param(SystemTime::now())),
            until: None,
            filters: HashMap::from([
                ("type".to_string(), vec!["container".to_string()]),
                (
                    "label".to_string(),
                    vec![format!("{LABEL_OWNER}={}", self.owner)],
                ),
                (
                    "event".to_string(),
                    EVENT_ACTIONS.iter().map(|a| a.to_string()).collect(),
                ),
            ]),
        };
        // bollard's request timeout ends once the response headers arrive,
        // and Docker sends those at once (before any event), so it bounds
        // subscribing but never cuts the open stream. No idle deadline
        // either: a quiet stream is normal.
        let raw = self.docker.events(Some(options));
        let engine = self.clone();
        // Ends after the first error: bollard's stream is not worth polling
        // after a broken connection or an undecodable line.
        futures_util::stream::unfold(Some((raw, engine)), |state| async move {
            let (mut raw, engine) = state?;
            loop {
                match raw.next().await {
                    None => return None,
                    Some(Err(e)) => return Some((Err(engine.events_error(e)), None)),
                    Some(Ok(message)) => {
                        if let Some(event) = to_event(message, &engine.owner) {
                            return Some((Ok(event), Some((raw, engine))));
                        }
                    }
                }
            }
        })
        .boxed()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hosts_parse_by_scheme() {
        assert!(matches!(Host::parse("unix:///x.sock"), Ok(Host::Unix(p)) if p == "/x.sock"));
        assert!(matches!(Host::parse("/x.sock"), Ok(Host::Unix(p)) if p == "/x.sock"));
        assert!(matches!(Host::parse("tcp://h:2375"), Ok(Host::Http(_))));
        assert!(matches!(Host::parse("http://h:2375"), Ok(Host::Http(_))));
        assert!(matches!(
            Host::parse("ssh://h"),
            Err(EngineError::Unavailable(_))
        ));
    }

    #[test]
    fn rfc3339_times_parse_to_milliseconds() {
        assert_eq!(parse_rfc3339_ms("1970-01-01T00:00:01Z"), Some(1000));
        assert_eq!(
            parse_rfc3339_ms("2024-05-01T12:34:56.789123456Z"),
            Some(1_714_566_896_789)
        );
        assert_eq!(
            parse_rfc3339_ms("2024-02-29T00:00:00.5Z"),
            Some(1_709_164_800_500)
        );
        assert_eq!(
            parse_rfc3339_ms("2024-05-01T14:34:56+02:00"),
            Some(1_714_566_896_000)
        );
        assert_eq!(
            parse_rfc3339_ms("2024-05-01T07:34:56.1-05:00"),
            Some(1_714_566_896_100)
        );
        // Docker's own shape: nanoseconds, and an offset where the daemon
        // is not on UTC.
        assert_eq!(
            parse_rfc3339_ms("2024-05-01T14:34:56.789123456+02:00"),
            Some(1_714_566_896_789)
        );
        // Go's zero time: Docker's "unknown".
        assert_eq!(parse_rfc3339_ms("0001-01-01T00:00:00Z"), None);
        for bad in [
            "",
            "2024-05-01",
            "2024-13-01T00:00:00Z",
            "2024-05-01T25:00:00Z",
            "2024-02-30T00:00:00Z",
            "2024-05-01T12:34:56",
            "2024-05-01T12:34:56.x1Z",
            "24-05-01T12:34:56Z",
        ] {
            assert_eq!(parse_rfc3339_ms(bad), None, "{bad:?}");
        }
    }

    fn event(action: &str, attributes: &[(&str, &str)]) -> EventMessage {
        EventMessage {
            typ: Some(EventMessageTypeEnum::CONTAINER),
            action: Some(action.to_string()),
            actor: Some(bollard::models::EventActor {
                id: Some("abc".to_string()),
                attributes: Some(
                    attributes
                        .iter()
                        .map(|(k, v)| (k.to_string(), v.to_string()))
                        .collect(),
                ),
            }),
            scope: None,
            time: Some(1_700_000_000),
            time_nano: Some(1_700_000_000_123_456_789),
        }
    }

    #[test]
    fn events_map_actions_labels_and_times() {
        let mine = [(LABEL_OWNER, "me"), ("name", "me-x"), ("image", "img")];
        let started = to_event(event("start", &mine), "me").unwrap();
        assert_eq!(started.kind, EngineEventKind::Started);
        assert_eq!(started.container_id, "abc");
        assert_eq!(started.at_ms, 1_700_000_000_123);
        assert_eq!(
            started.labels,
            BTreeMap::from([(LABEL_OWNER.to_string(), "me".to_string())])
        );

        let died = [(LABEL_OWNER, "me"), ("exitCode", "137")];
        assert_eq!(
            to_event(event("die", &died), "me").unwrap().kind,
            EngineEventKind::Died {
                exit_code: Some(137)
            }
        );
        assert_eq!(
            to_event(event("die", &mine), "me").unwrap().kind,
            EngineEventKind::Died { exit_code: None }
        );
        assert_eq!(
            to_event(event("oom", &mine), "me").unwrap().kind,
            EngineEventKind::OomKilled
        );
        assert_eq!(
            to_event(event("destroy", &mine), "me").unwrap().kind,
            EngineEventKind::Destroyed
        );
        assert_eq!(
            to_event(event("health_status: healthy", &mine), "me")
                .unwrap()
                .kind,
            EngineEventKind::HealthStatus { healthy: true }
        );
        assert_eq!(
            to_event(event("health_status: unhealthy", &mine), "me")
                .unwrap()
                .kind,
            EngineEventKind::HealthStatus { healthy: false }
        );
        assert_eq!(
            to_event(event("health_status: starting", &mine), "me"),
            None
        );
        assert_eq!(to_event(event("kill", &mine), "me"), None);
        assert_eq!(to_event(event("start", &mine), "someone-else"), None);
        assert_eq!(to_event(event("start", &[]), "me"), None);

        let mut seconds_only = event("start", &mine);
        seconds_only.time_nano = None;
        assert_eq!(
            to_event(seconds_only, "me").unwrap().at_ms,
            1_700_000_000_000
        );
    }

    #[test]
    fn since_has_nanoseconds() {
        let at = UNIX_EPOCH + Duration::new(1_700_000_000, 5);
        assert_eq!(since_param(at), "1700000000.000000005");
    }

    #[test]
    fn api_versions_parse() {
        let v = parse_api_version("1.41").unwrap();
        assert_eq!((v.major_version, v.minor_version), (1, 41));
        assert!(parse_api_version("x").is_none());
    }
}
