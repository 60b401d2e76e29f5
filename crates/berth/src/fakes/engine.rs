//! An in-memory Docker daemon behind the `Engine` port.
//!
//! It behaves like `adapters::docker::DockerEngine` on Docker 20.10 as far
//! as `tests/engine_contract.rs` checks, which both pass: owner labels are
//! checked exactly where the adapter checks them, a container's network is
//! only looked for at start, a forced remove of a running container reports
//! `Died` then `Destroyed`, and so on.
//!
//! Several [`FakeEngine`]s can share one daemon ([`FakeEngine::for_owner`]),
//! standing in for berth instances of different owners on one Docker host.
//! Each view has its own call counters and fault plan; the daemon's state
//! (images, networks, containers, availability) is shared.
//!
//! Exec is scripted ([`FakeEngine::set_exec_result`],
//! [`FakeEngine::set_exec_hang`], [`FakeEngine::script_exec`],
//! [`FakeEngine::set_exec_handler`]): the fake runs nothing, it answers a
//! command by its longest scripted prefix, else by the handler, else like a
//! missing binary (exit 127, output `not found`). Containers are checked as
//! the adapter checks them (missing, another owner's, not running) before
//! any script is looked at.
//!
//! Test controls (`kill`, `remove_behind_back`, `create_foreign`, …) act
//! like the docker CLI behind berth's back: they are not counted, never
//! fail by a fault, and panic when told to act on a container that does
//! not exist, since that is a mistake in the test.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use async_trait::async_trait;
use berth_core::container::{ContainerSpec, LABEL_OWNER};
use futures_util::stream::BoxStream;
use futures_util::StreamExt;
use sha2::{Digest as _, Sha256};
use tokio::sync::broadcast;

use crate::fakes::FakeClock;
use crate::ports::engine::{
    cap_exec_text, ContainerInfo, Engine, EngineError, EngineEvent, EngineEventKind, ExecOutput,
    ImageInfo, ProgressFn, PullProgress,
};
use crate::ports::Clock;

/// The exit code of a container stopped, or force-removed while running: a
/// PID 1 that ignores SIGTERM (as the test images' busybox does) is killed
/// after the grace period.
pub const KILLED_EXIT_CODE: i64 = 137;

/// Events a listener may fall behind by before its stream ends.
const EVENT_BUFFER: usize = 1024;

/// One method of the `Engine` port, for counting calls and planning faults.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Op {
    Ping,
    EnsureNetwork,
    InspectImage,
    PullImage,
    CreateContainer,
    StartContainer,
    StopContainer,
    RemoveContainer,
    RenameContainer,
    InspectContainer,
    ListContainers,
    Exec,
    Events,
}

/// Docker's HEALTHCHECK states.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Health {
    Starting,
    Healthy,
    Unhealthy,
}

impl Health {
    fn as_str(self) -> &'static str {
        match self {
            Health::Starting => "starting",
            Health::Healthy => "healthy",
            Health::Unhealthy => "unhealthy",
        }
    }
}

/// How the fake answers an exec of a command.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ExecScript {
    /// Ends at once with this output (cut to `EXEC_OUTPUT_LIMIT` bytes).
    Reply(ExecOutput),
    /// Ends with `reply` after `after` on tokio's clock (paused time skips
    /// it), unless the caller's timeout is not longer than that: then
    /// `Timeout` once the timeout has passed.
    Slow { after: Duration, reply: ExecOutput },
    /// Never ends: `Timeout` once the caller's timeout has passed on tokio's
    /// clock.
    Hang,
}

/// One exec that reached a running container of this owner.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExecCall {
    /// The container's full id.
    pub container_id: String,
    pub cmd: Vec<String>,
}

type ExecHandler = dyn Fn(&ExecCall) -> Option<ExecScript> + Send + Sync;

/// The daemon's exec scripts: what the containers' images would do.
#[derive(Default)]
struct ExecScripts {
    /// By command prefix; the longest one that matches wins.
    rules: BTreeMap<Vec<String>, ExecScript>,
    /// Asked when no rule matches; `None` falls through to "not found".
    handler: Option<Arc<ExecHandler>>,
}

/// The exit code of an exec no script answers, like a shell's for a
/// missing command (real Docker answers an exec of a binary that does not
/// exist with 126 and the OCI runtime's error as output).
pub const EXEC_NOT_FOUND_EXIT_CODE: i64 = 127;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Status {
    Created,
    Running,
    Exited,
}

impl Status {
    fn as_str(self) -> &'static str {
        match self {
            Status::Created => "created",
            Status::Running => "running",
            Status::Exited => "exited",
        }
    }
}

#[derive(Debug, Clone)]
struct Container {
    id: String,
    name: String,
    labels: BTreeMap<String, String>,
    status: Status,
    exit_code: i64,
    oom_killed: bool,
    image_id: String,
    created_at_ms: i64,
    network: String,
    /// The id of the network it joined at its first start: Docker keeps it
    /// bound to that one, even when a new network of the same name appears.
    joined: Option<String>,
    /// Only while running, like Docker's `IPAddress`.
    address: Option<String>,
    health: Option<Health>,
}

impl Container {
    fn owner(&self) -> &str {
        self.labels
            .get(LABEL_OWNER)
            .map(String::as_str)
            .unwrap_or("")
    }

    fn inspected(&self) -> ContainerInfo {
        ContainerInfo {
            id: self.id.clone(),
            name: self.name.clone(),
            labels: self.labels.clone(),
            state: self.status.as_str().to_string(),
            running: self.status == Status::Running,
            exit_code: Some(self.exit_code),
            oom_killed: self.oom_killed,
            image_id: self.image_id.clone(),
            created_at_ms: Some(self.created_at_ms),
            addresses: self
                .address
                .iter()
                .map(|ip| (self.network.clone(), ip.clone()))
                .collect(),
            health: self.health.map(|h| h.as_str().to_string()),
        }
    }

    /// What Docker's list has: no exit code, OOM flag, addresses or health,
    /// and the creation time in whole seconds.
    fn listed(&self) -> ContainerInfo {
        ContainerInfo {
            exit_code: None,
            oom_killed: false,
            created_at_ms: Some(self.created_at_ms - self.created_at_ms.rem_euclid(1000)),
            addresses: BTreeMap::new(),
            health: None,
            ..self.inspected()
        }
    }
}

/// A repository in the fake registry.
#[derive(Debug, Default)]
struct Remote {
    tags: BTreeMap<String, String>,
    digests: BTreeSet<String>,
}

#[derive(Debug)]
struct Network {
    id: String,
    /// The second octet of its 172.x.0.0/16 subnet.
    subnet: u32,
    next_host: u32,
}

#[derive(Debug, Default)]
struct State {
    unavailable: bool,
    registry: BTreeMap<String, Remote>,
    /// Registry hosts (`host[:port]`) that do not answer: a pull from one
    /// fails as Docker's does (HTTP 500, connection refused).
    unreachable_registries: BTreeSet<String>,
    /// Image id → its `repo@digest` entries.
    images: BTreeMap<String, BTreeSet<String>>,
    /// Image id → its config's labels (also for images not pulled yet).
    image_labels: BTreeMap<String, BTreeMap<String, String>>,
    /// `repo:tag` and `repo@digest` → image id.
    local_refs: BTreeMap<String, String>,
    networks: BTreeMap<String, Network>,
    /// Networks ever made; the next subnet is 172.(17 + this).0.0/16.
    networks_made: u32,
    /// In creation order.
    containers: Vec<Container>,
    created: u64,
}

#[derive(Debug, Clone)]
enum Feed {
    Event(EngineEvent),
    /// The daemon went away: every open events stream breaks.
    Broken,
}

struct Daemon {
    state: Mutex<State>,
    exec: Mutex<ExecScripts>,
    feed: broadcast::Sender<Feed>,
    clock: Arc<dyn Clock>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Trigger {
    Next,
    /// The n-th call (1-based) of this view to the method.
    Call(usize),
}

#[derive(Debug)]
struct Fault {
    op: Op,
    trigger: Trigger,
    /// The call takes effect and only its answer is lost.
    lose_reply: bool,
    error: EngineError,
}

#[derive(Debug, Default)]
struct Calls {
    counts: HashMap<Op, usize>,
    faults: Vec<Fault>,
    execs: Vec<ExecCall>,
}

/// What a call does after counting: fail at once, or act and then perhaps
/// answer with an error anyway.
type Entry = Result<Option<EngineError>, EngineError>;

/// An in-memory engine for one owner. Cheap to clone; clones share
/// everything, counters included.
#[derive(Clone)]
pub struct FakeEngine {
    daemon: Arc<Daemon>,
    owner: String,
    calls: Arc<Mutex<Calls>>,
}

impl FakeEngine {
    /// A new, empty daemon (with Docker's default `bridge` network) seen by
    /// `owner`, on a [`FakeClock`].
    pub fn new(owner: &str) -> FakeEngine {
        FakeEngine::with_clock(owner, Arc::new(FakeClock::default()))
    }

    /// Like [`FakeEngine::new`], with creation and event times from `clock`.
    pub fn with_clock(owner: &str, clock: Arc<dyn Clock>) -> FakeEngine {
        let (feed, _) = broadcast::channel(EVENT_BUFFER);
        let mut state = State::default();
        add_network(&mut state, "bridge");
        FakeEngine {
            daemon: Arc::new(Daemon {
                state: Mutex::new(state),
                exec: Mutex::default(),
                feed,
                clock,
            }),
            owner: owner.to_string(),
            calls: Arc::default(),
        }
    }

    /// Another owner's engine on the same daemon, with its own counters and
    /// faults.
    pub fn for_owner(&self, owner: &str) -> FakeEngine {
        FakeEngine {
            daemon: self.daemon.clone(),
            owner: owner.to_string(),
            calls: Arc::default(),
        }
    }

    pub fn owner(&self) -> &str {
        &self.owner
    }

    // --- test controls: the registry, the daemon, the docker CLI --------

    /// Publishes `digest` (`sha256:` + 64 hex) as `reference` (`repo:tag`,
    /// or `repo` for `repo:latest`) in the fake registry, so that a pull of
    /// `repo:tag` or `repo@digest` works. Publishing a tag again moves it.
    ///
    /// Panics on a malformed reference or digest.
    pub fn add_image(&self, reference: &str, digest: &str) {
        let hex = digest.strip_prefix("sha256:").unwrap_or("");
        assert!(
            hex.len() == 64 && hex.bytes().all(|b| b.is_ascii_hexdigit()),
            "not a sha256 digest: {digest:?}"
        );
        let (repo, tag) = match parse_reference(reference) {
            Reference::Tag { repo, tag } => (repo, tag),
            Reference::Digest { .. } => panic!("add_image takes repo:tag, not {reference:?}"),
        };
        let mut state = self.state();
        let remote = state.registry.entry(repo).or_default();
        remote.tags.insert(tag, digest.to_string());
        remote.digests.insert(digest.to_string());
    }

    /// Makes the registry at `host` (`host[:port]`, as in an image
    /// reference) stop answering, or answer again: a pull from it then
    /// fails with `PullFailed`, as Docker's does for a registry it cannot
    /// reach (a pull of an image it lacks is `ImageNotFound`).
    pub fn set_registry_unreachable(&self, host: &str, unreachable: bool) {
        let mut state = self.state();
        if unreachable {
            state.unreachable_registries.insert(host.to_string());
        } else {
            state.unreachable_registries.remove(host);
        }
    }

    /// Gives the image published as `reference` (`repo:tag` or
    /// `repo@digest`, see [`FakeEngine::add_image`]) these config labels, as
    /// `LABEL` lines or `docker build --label` would; `inspect_image`
    /// returns them for that image, pulled before or after. Replaces labels
    /// set before. Panics when `reference` is not published.
    pub fn set_image_labels<K, V>(&self, reference: &str, labels: impl IntoIterator<Item = (K, V)>)
    where
        K: Into<String>,
        V: Into<String>,
    {
        let mut state = self.state();
        let digest = match parse_reference(reference) {
            Reference::Tag { repo, tag } => state
                .registry
                .get(&repo)
                .and_then(|r| r.tags.get(&tag))
                .cloned(),
            Reference::Digest { repo, digest } => state
                .registry
                .get(&repo)
                .filter(|r| r.digests.contains(&digest))
                .map(|_| digest),
        }
        .unwrap_or_else(|| panic!("{reference} is not published in the fake registry"));
        let labels = labels
            .into_iter()
            .map(|(k, v)| (k.into(), v.into()))
            .collect();
        state.image_labels.insert(image_id(&digest), labels);
    }

    /// An exec of a command that starts with `prefix` (argv; `&[]` matches
    /// every command) ends with `output`. See [`FakeEngine::script_exec`].
    pub fn set_exec_result(&self, prefix: &[&str], output: ExecOutput) {
        self.script_exec(prefix, ExecScript::Reply(output));
    }

    /// An exec of a command that starts with `prefix` never ends: the call
    /// returns `Timeout` once its timeout has passed on tokio's clock (so
    /// with paused time, at once).
    pub fn set_exec_hang(&self, prefix: &[&str]) {
        self.script_exec(prefix, ExecScript::Hang);
    }

    /// How an exec of a command that starts with `prefix` answers, in every
    /// container of the daemon. The longest matching prefix wins; scripting
    /// the same prefix again replaces it.
    pub fn script_exec(&self, prefix: &[&str], script: ExecScript) {
        let prefix = prefix.iter().map(|a| a.to_string()).collect();
        self.lock_exec().rules.insert(prefix, script);
    }

    /// Asked for a command no scripted prefix matches (outside the daemon's
    /// locks, so it may call the fake); `None` answers like a missing
    /// binary. Replaces the handler set before.
    pub fn set_exec_handler(
        &self,
        handler: impl Fn(&ExecCall) -> Option<ExecScript> + Send + Sync + 'static,
    ) {
        self.lock_exec().handler = Some(Arc::new(handler));
    }

    /// The execs this view ran, in order; those refused (missing, foreign
    /// or not running container, empty command, fault) are not listed.
    pub fn execs(&self) -> Vec<ExecCall> {
        self.lock_calls().execs.clone()
    }

    /// Makes every call fail with `Unavailable`, and breaks open events
    /// streams, until called again with `false`.
    pub fn set_unavailable(&self, unavailable: bool) {
        self.state().unavailable = unavailable;
        if unavailable {
            // No listener is not an error.
            let _ = self.daemon.feed.send(Feed::Broken);
        }
    }

    /// The next call of `op` fails with `error` and has no effect.
    pub fn fail_next(&self, op: Op, error: EngineError) {
        self.plan(op, Trigger::Next, false, error);
    }

    /// The `nth` call (1-based, counting every call of this view since it
    /// was made) of `op` fails with `error` and has no effect.
    pub fn fail_call(&self, op: Op, nth: usize, error: EngineError) {
        self.plan(op, Trigger::Call(nth), false, error);
    }

    /// The next call of `op` takes effect but answers `error`, like a
    /// request whose reply was lost (a timeout after Docker acted).
    pub fn lose_reply_next(&self, op: Op, error: EngineError) {
        self.plan(op, Trigger::Next, true, error);
    }

    /// How many times this view's `op` was called (failed calls included).
    pub fn calls(&self, op: Op) -> usize {
        self.lock_calls().counts.get(&op).copied().unwrap_or(0)
    }

    /// The names of the daemon's networks.
    pub fn networks(&self) -> Vec<String> {
        self.state().networks.keys().cloned().collect()
    }

    /// Deletes a network behind berth's back; true when it existed.
    pub fn remove_network(&self, name: &str) -> bool {
        self.state().networks.remove(name).is_some()
    }

    /// Creates a container as someone else would (on the `bridge` network,
    /// image not checked), labelled with `owner` if given and nothing else;
    /// returns its id. Panics when the name is taken.
    pub fn create_foreign(&self, name: &str, owner: Option<&str>) -> String {
        let labels = owner
            .map(|o| BTreeMap::from([(LABEL_OWNER.to_string(), o.to_string())]))
            .unwrap_or_default();
        let now = self.daemon.clock.now_ms();
        let mut state = self.state();
        assert!(
            find(&state, name).is_none(),
            "a container named {name} exists"
        );
        let id = next_container_id(&mut state);
        state.containers.push(Container {
            image_id: hex_id(&format!("foreign image of {name}")),
            ..new_container(id.clone(), name, labels, "bridge", now)
        });
        id
    }

    /// Starts a container behind berth's back, whoever owns it.
    pub fn start_behind_back(&self, id_or_name: &str) {
        let mut state = self.state();
        let at = self.expect(&state, id_or_name);
        if let Err(e) = start(&mut state, at) {
            panic!("cannot start {id_or_name}: {e}");
        }
        self.emit(&state.containers[at], EngineEventKind::Started);
    }

    /// The container's process exits with `exit_code` (the container must
    /// be running); a `Died` event follows.
    pub fn kill(&self, id_or_name: &str, exit_code: i64) {
        let mut state = self.state();
        let at = self.expect_running(&state, id_or_name);
        self.exit(&mut state.containers[at], exit_code);
    }

    /// The kernel's OOM killer hits the running container: `OomKilled`,
    /// then `Died` with 137.
    pub fn oom_kill(&self, id_or_name: &str) {
        let mut state = self.state();
        let at = self.expect_running(&state, id_or_name);
        let container = &mut state.containers[at];
        container.oom_killed = true;
        self.emit(container, EngineEventKind::OomKilled);
        self.exit(container, KILLED_EXIT_CODE);
    }

    /// `docker rm -f`: removes the container whoever owns it (`Died` first
    /// when it runs, then `Destroyed`).
    pub fn remove_behind_back(&self, id_or_name: &str) {
        let mut state = self.state();
        let at = self.expect(&state, id_or_name);
        self.destroy(&mut state, at);
    }

    /// Sets the container's HEALTHCHECK status; `Healthy` and `Unhealthy`
    /// are reported as events, `Starting` is not (as in Docker).
    pub fn set_health(&self, id_or_name: &str, health: Health) {
        let mut state = self.state();
        let at = self.expect(&state, id_or_name);
        let container = &mut state.containers[at];
        container.health = Some(health);
        let healthy = match health {
            Health::Starting => return,
            Health::Healthy => true,
            Health::Unhealthy => false,
        };
        self.emit(container, EngineEventKind::HealthStatus { healthy });
    }

    // --- internals ---------------------------------------------------------

    fn state(&self) -> MutexGuard<'_, State> {
        // A panicking test thread must not wedge the others.
        self.daemon
            .state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn lock_exec(&self) -> MutexGuard<'_, ExecScripts> {
        self.daemon
            .exec
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// The script for `call`: the longest matching prefix, else the
    /// handler's answer, else "not found".
    fn exec_script(&self, call: &ExecCall) -> ExecScript {
        let handler = {
            let scripts = self.lock_exec();
            let rule = scripts
                .rules
                .iter()
                .filter(|(prefix, _)| call.cmd.starts_with(prefix))
                .max_by_key(|(prefix, _)| prefix.len());
            if let Some((_, script)) = rule {
                return script.clone();
            }
            scripts.handler.clone()
        };
        handler.and_then(|h| h(call)).unwrap_or_else(|| {
            ExecScript::Reply(ExecOutput {
                exit_code: EXEC_NOT_FOUND_EXIT_CODE,
                output: "not found".to_string(),
            })
        })
    }

    fn lock_calls(&self) -> MutexGuard<'_, Calls> {
        self.calls
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn plan(&self, op: Op, trigger: Trigger, lose_reply: bool, error: EngineError) {
        self.lock_calls().faults.push(Fault {
            op,
            trigger,
            lose_reply,
            error,
        });
    }

    /// Counts the call, then applies the daemon's availability and the
    /// first planned fault it triggers.
    fn enter(&self, op: Op) -> Entry {
        let mut calls = self.lock_calls();
        let count = calls.counts.entry(op).or_insert(0);
        *count += 1;
        let nth = *count;
        if self.state().unavailable {
            return Err(EngineError::Unavailable(
                "the fake Docker daemon is down".to_string(),
            ));
        }
        let fault = calls.faults.iter().position(|f| {
            f.op == op && (f.trigger == Trigger::Next || f.trigger == Trigger::Call(nth))
        });
        match fault.map(|at| calls.faults.remove(at)) {
            None => Ok(None),
            Some(f) if f.lose_reply => Ok(Some(f.error)),
            Some(f) => Err(f.error),
        }
    }

    fn emit(&self, container: &Container, kind: EngineEventKind) {
        let event = EngineEvent {
            kind,
            container_id: container.id.clone(),
            labels: container.labels.clone(),
            at_ms: self.daemon.clock.now_ms(),
        };
        // No listener is not an error.
        let _ = self.daemon.feed.send(Feed::Event(event));
    }

    fn exit(&self, container: &mut Container, exit_code: i64) {
        container.status = Status::Exited;
        container.exit_code = exit_code;
        container.address = None;
        self.emit(
            container,
            EngineEventKind::Died {
                exit_code: Some(exit_code),
            },
        );
    }

    fn destroy(&self, state: &mut State, at: usize) {
        if state.containers[at].status == Status::Running {
            self.exit(&mut state.containers[at], KILLED_EXIT_CODE);
        }
        let gone = state.containers.remove(at);
        self.emit(&gone, EngineEventKind::Destroyed);
    }

    fn expect(&self, state: &State, id_or_name: &str) -> usize {
        find(state, id_or_name).unwrap_or_else(|| panic!("no container {id_or_name}"))
    }

    fn expect_running(&self, state: &State, id_or_name: &str) -> usize {
        let at = self.expect(state, id_or_name);
        assert_eq!(
            state.containers[at].status,
            Status::Running,
            "{id_or_name} is not running"
        );
        at
    }

    /// The container's index if it exists; `ForeignOwner` unless it carries
    /// this owner's label (the adapter's `owned`).
    fn owned(&self, state: &State, id: &str) -> Result<Option<usize>, EngineError> {
        let Some(at) = find(state, id) else {
            return Ok(None);
        };
        let owner = state.containers[at].owner();
        if owner != self.owner {
            return Err(EngineError::ForeignOwner {
                id: id.to_string(),
                owner: owner.to_string(),
            });
        }
        Ok(Some(at))
    }
}

/// The answer of a call that acted: its own failure, else the lost reply's
/// error, else its result.
fn answer<T>(
    lost_reply: Option<EngineError>,
    result: Result<T, EngineError>,
) -> Result<T, EngineError> {
    match (result, lost_reply) {
        (Ok(_), Some(e)) => Err(e),
        (result, _) => result,
    }
}

fn hex_id(seed: &str) -> String {
    hex::encode(Sha256::digest(seed.as_bytes()))
}

fn next_container_id(state: &mut State) -> String {
    state.created += 1;
    hex_id(&format!("fake container {}", state.created))
}

/// The image id (the config's digest) of the image with manifest `digest`.
fn image_id(digest: &str) -> String {
    format!("sha256:{}", hex_id(&format!("config of {digest}")))
}

fn new_container(
    id: String,
    name: &str,
    labels: BTreeMap<String, String>,
    network: &str,
    now_ms: i64,
) -> Container {
    Container {
        id,
        name: name.to_string(),
        labels,
        status: Status::Created,
        exit_code: 0,
        oom_killed: false,
        image_id: String::new(),
        created_at_ms: now_ms,
        network: network.to_string(),
        joined: None,
        address: None,
        health: None,
    }
}

fn add_network(state: &mut State, name: &str) {
    let made = state.networks_made;
    state.networks_made += 1;
    state.networks.insert(
        name.to_string(),
        Network {
            id: hex_id(&format!("fake network {made}")),
            subnet: 17 + made,
            next_host: 2,
        },
    );
}

/// By full id, then name, then unique id prefix, as Docker looks up.
fn find(state: &State, id_or_name: &str) -> Option<usize> {
    let wanted = id_or_name.strip_prefix('/').unwrap_or(id_or_name);
    if wanted.is_empty() {
        return None;
    }
    let containers = &state.containers;
    containers
        .iter()
        .position(|c| c.id == wanted)
        .or_else(|| containers.iter().position(|c| c.name == wanted))
        .or_else(|| {
            let mut prefixed = containers
                .iter()
                .enumerate()
                .filter(|(_, c)| c.id.starts_with(wanted));
            match (prefixed.next(), prefixed.next()) {
                (Some((at, _)), None) => Some(at),
                _ => None,
            }
        })
}

/// Starts a stopped container (a running one is left as it is).
fn start(state: &mut State, at: usize) -> Result<bool, EngineError> {
    if state.containers[at].status == Status::Running {
        return Ok(false);
    }
    let network_name = state.containers[at].network.clone();
    let joined = state.containers[at].joined.clone();
    let network = state
        .networks
        .get_mut(&network_name)
        .filter(|n| joined.as_ref().is_none_or(|id| *id == n.id))
        .ok_or(EngineError::NetworkMissing {
            network: network_name,
        })?;
    let address = format!("172.{}.0.{}", network.subnet, network.next_host);
    network.next_host += 1;
    let network_id = network.id.clone();
    let container = &mut state.containers[at];
    container.joined = Some(network_id);
    container.status = Status::Running;
    container.exit_code = 0;
    container.oom_killed = false;
    container.address = Some(address);
    // The health check starts over with the process.
    if container.health.is_some() {
        container.health = Some(Health::Starting);
    }
    Ok(true)
}

/// Docker's rule for container names.
fn valid_name(name: &str) -> bool {
    let mut bytes = name.bytes();
    bytes.next().is_some_and(|b| b.is_ascii_alphanumeric())
        && name.len() >= 2
        && bytes.all(|b| b.is_ascii_alphanumeric() || b"_.-".contains(&b))
}

fn invalid_name(name: &str) -> EngineError {
    EngineError::Rejected(format!(
        "Invalid container name ({name}), only [a-zA-Z0-9][a-zA-Z0-9_.-] are allowed (HTTP 400)"
    ))
}

enum Reference {
    Tag { repo: String, tag: String },
    Digest { repo: String, digest: String },
}

/// `repo:tag`, `repo@digest`, or `repo` meaning `repo:latest`; a registry's
/// `host:port/` is part of the repository.
fn parse_reference(reference: &str) -> Reference {
    if let Some((repo, digest)) = reference.split_once('@') {
        return Reference::Digest {
            repo: repo.to_string(),
            digest: digest.to_string(),
        };
    }
    let last = reference.rsplit('/').next().unwrap_or(reference);
    match last.rsplit_once(':') {
        Some((_, tag)) => Reference::Tag {
            repo: reference[..reference.len() - tag.len() - 1].to_string(),
            tag: tag.to_string(),
        },
        None => Reference::Tag {
            repo: reference.to_string(),
            tag: "latest".to_string(),
        },
    }
}

/// The local image `reference` (a reference or an image id) names.
fn local_image(state: &State, reference: &str) -> Option<String> {
    if state.images.contains_key(reference) {
        return Some(reference.to_string());
    }
    let key = match parse_reference(reference) {
        Reference::Tag { repo, tag } => format!("{repo}:{tag}"),
        Reference::Digest { repo, digest } => format!("{repo}@{digest}"),
    };
    state.local_refs.get(&key).cloned()
}

#[async_trait]
impl Engine for FakeEngine {
    async fn ping(&self) -> Result<(), EngineError> {
        let lost = self.enter(Op::Ping)?;
        answer(lost, Ok(()))
    }

    async fn ensure_network(&self, name: &str) -> Result<(), EngineError> {
        let lost = self.enter(Op::EnsureNetwork)?;
        let mut state = self.state();
        if !state.networks.contains_key(name) {
            add_network(&mut state, name);
        }
        answer(lost, Ok(()))
    }

    async fn inspect_image(&self, image: &str) -> Result<Option<ImageInfo>, EngineError> {
        let lost = self.enter(Op::InspectImage)?;
        let state = self.state();
        let found = local_image(&state, image).map(|id| ImageInfo {
            repo_digests: state.images[&id].iter().cloned().collect(),
            labels: state.image_labels.get(&id).cloned().unwrap_or_default(),
            id,
        });
        answer(lost, Ok(found))
    }

    async fn pull_image(&self, image: &str, progress: &ProgressFn) -> Result<(), EngineError> {
        let lost = self.enter(Op::PullImage)?;
        let (repo, tag, digest) = {
            let state = self.state();
            let found = match parse_reference(image) {
                Reference::Tag { repo, tag } => state
                    .registry
                    .get(&repo)
                    .and_then(|r| r.tags.get(&tag).cloned())
                    .map(|digest| (repo, Some(tag), digest)),
                Reference::Digest { repo, digest } => state
                    .registry
                    .get(&repo)
                    .filter(|r| r.digests.contains(&digest))
                    .map(|_| (repo, None, digest)),
            };
            let host = image.split_once('/').map_or("docker.io", |(host, _)| host);
            if state.unreachable_registries.contains(host) {
                return answer(
                    lost,
                    Err(EngineError::PullFailed {
                        image: image.to_string(),
                        message: format!(
                            "Get \"http://{host}/v2/\": dial tcp {host}: connect: connection refused"
                        ),
                    }),
                );
            }
            // Docker's 404: the registry answered, and has no such manifest.
            found.ok_or_else(|| EngineError::ImageNotFound {
                image: image.to_string(),
                message: format!("manifest for {image} not found: manifest unknown"),
            })?
        };
        // Progress is reported outside the lock: the callback may call back.
        progress(PullProgress {
            status: format!("Pulling from {repo}"),
            layer: Some(tag.clone().unwrap_or_else(|| digest.clone())),
            current: None,
            total: None,
        });
        let id = image_id(&digest);
        let fresh = {
            let mut state = self.state();
            let fresh = local_image(&state, image).as_deref() != Some(id.as_str());
            state
                .images
                .entry(id.clone())
                .or_default()
                .insert(format!("{repo}@{digest}"));
            state
                .local_refs
                .insert(format!("{repo}@{digest}"), id.clone());
            if let Some(tag) = tag {
                state.local_refs.insert(format!("{repo}:{tag}"), id);
            }
            fresh
        };
        progress(PullProgress {
            status: format!("Digest: {digest}"),
            layer: None,
            current: None,
            total: None,
        });
        progress(PullProgress {
            status: if fresh {
                format!("Status: Downloaded newer image for {image}")
            } else {
                format!("Status: Image is up to date for {image}")
            },
            layer: None,
            current: None,
            total: None,
        });
        answer(lost, Ok(()))
    }

    async fn create_container(&self, spec: &ContainerSpec) -> Result<String, EngineError> {
        let lost = self.enter(Op::CreateContainer)?;
        let now = self.daemon.clock.now_ms();
        let mut state = self.state();
        if !valid_name(&spec.name) {
            return Err(invalid_name(&spec.name));
        }
        let image_id = local_image(&state, &spec.image)
            .ok_or_else(|| EngineError::NotFound(format!("No such image: {}", spec.image)))?;
        if let Some(other) = state.containers.iter().find(|c| c.name == spec.name) {
            return Err(EngineError::Conflict(format!(
                "the container name \"/{}\" is already in use by container \"{}\"",
                spec.name, other.id
            )));
        }
        let id = next_container_id(&mut state);
        state.containers.push(Container {
            image_id,
            ..new_container(
                id.clone(),
                &spec.name,
                spec.labels.clone(),
                &spec.network,
                now,
            )
        });
        answer(lost, Ok(id))
    }

    async fn start_container(&self, id: &str) -> Result<(), EngineError> {
        let lost = self.enter(Op::StartContainer)?;
        let mut state = self.state();
        let at = self
            .owned(&state, id)?
            .ok_or_else(|| EngineError::NotFound(format!("no such container: {id}")))?;
        if start(&mut state, at)? {
            self.emit(&state.containers[at], EngineEventKind::Started);
        }
        answer(lost, Ok(()))
    }

    async fn stop_container(&self, id: &str, _grace: Duration) -> Result<(), EngineError> {
        let lost = self.enter(Op::StopContainer)?;
        let mut state = self.state();
        let at = self
            .owned(&state, id)?
            .ok_or_else(|| EngineError::NotFound(format!("no such container: {id}")))?;
        if state.containers[at].status == Status::Running {
            self.exit(&mut state.containers[at], KILLED_EXIT_CODE);
        }
        answer(lost, Ok(()))
    }

    async fn remove_container(&self, id: &str) -> Result<(), EngineError> {
        let lost = self.enter(Op::RemoveContainer)?;
        let mut state = self.state();
        if let Some(at) = self.owned(&state, id)? {
            self.destroy(&mut state, at);
        }
        answer(lost, Ok(()))
    }

    async fn rename_container(&self, id: &str, new_name: &str) -> Result<(), EngineError> {
        let lost = self.enter(Op::RenameContainer)?;
        let mut state = self.state();
        let at = self
            .owned(&state, id)?
            .ok_or_else(|| EngineError::NotFound(id.to_string()))?;
        if !valid_name(new_name) {
            return Err(invalid_name(new_name));
        }
        if let Some(other) = state.containers.iter().find(|c| c.name == new_name) {
            return Err(EngineError::Conflict(format!(
                "the container name \"/{new_name}\" is already in use by container \"{}\"",
                other.id
            )));
        }
        state.containers[at].name = new_name.to_string();
        answer(lost, Ok(()))
    }

    async fn inspect_container(
        &self,
        id_or_name: &str,
    ) -> Result<Option<ContainerInfo>, EngineError> {
        let lost = self.enter(Op::InspectContainer)?;
        let state = self.state();
        let found = find(&state, id_or_name).map(|at| state.containers[at].inspected());
        answer(lost, Ok(found))
    }

    async fn exec(
        &self,
        id: &str,
        cmd: &[String],
        timeout: Duration,
    ) -> Result<ExecOutput, EngineError> {
        let lost = self.enter(Op::Exec)?;
        if cmd.is_empty() {
            return Err(EngineError::Rejected(format!(
                "no command to run in container {id}"
            )));
        }
        let call = {
            let state = self.state();
            let at = self
                .owned(&state, id)?
                .ok_or_else(|| EngineError::NotFound(format!("no such container: {id}")))?;
            let container = &state.containers[at];
            if container.status != Status::Running {
                return Err(EngineError::Conflict(format!(
                    "cannot run {cmd:?} in container {id}: it is not running (it is {})",
                    container.status.as_str()
                )));
            }
            ExecCall {
                container_id: container.id.clone(),
                cmd: cmd.to_vec(),
            }
        };
        self.lock_calls().execs.push(call.clone());
        let capped = |reply: ExecOutput| ExecOutput {
            output: cap_exec_text(reply.output),
            ..reply
        };
        // The container is not watched while a script runs: a stop in the
        // meantime does not end it.
        match self.exec_script(&call) {
            ExecScript::Reply(reply) => answer(lost, Ok(capped(reply))),
            ExecScript::Slow { after, reply } if after < timeout => {
                tokio::time::sleep(after).await;
                answer(lost, Ok(capped(reply)))
            }
            ExecScript::Slow { .. } | ExecScript::Hang => {
                tokio::time::sleep(timeout).await;
                Err(EngineError::Timeout(format!(
                    "{cmd:?} in container {id} did not end within {timeout:?} (it may still be running there)"
                )))
            }
        }
    }

    async fn list_containers(&self) -> Result<Vec<ContainerInfo>, EngineError> {
        let lost = self.enter(Op::ListContainers)?;
        let state = self.state();
        // Newest first, as Docker lists.
        let mine = state
            .containers
            .iter()
            .rev()
            .filter(|c| c.owner() == self.owner)
            .map(Container::listed)
            .collect();
        answer(lost, Ok(mine))
    }

    fn events(&self) -> BoxStream<'static, Result<EngineEvent, EngineError>> {
        if let Err(e) = self.enter(Op::Events) {
            return futures_util::stream::once(async move { Err(e) }).boxed();
        }
        // Subscribed now, so that what happens before the first poll is
        // delivered, as the adapter's `since` does.
        let feed = self.daemon.feed.subscribe();
        let owner = self.owner.clone();
        futures_util::stream::unfold(Some(feed), move |feed| {
            let owner = owner.clone();
            async move {
                let mut feed = feed?;
                loop {
                    match feed.recv().await {
                        Ok(Feed::Event(event)) => {
                            if event.labels.get(LABEL_OWNER) == Some(&owner) {
                                return Some((Ok(event), Some(feed)));
                            }
                        }
                        Ok(Feed::Broken) => {
                            let broke = EngineError::Unavailable(
                                "the events stream from the fake Docker daemon broke".to_string(),
                            );
                            return Some((Err(broke), None));
                        }
                        // Docker drops events for a slow listener; ending the
                        // stream makes the caller reconnect and relist.
                        Err(broadcast::error::RecvError::Lagged(missed)) => {
                            let behind = EngineError::Unavailable(format!(
                                "the events listener fell {missed} events behind"
                            ));
                            return Some((Err(behind), None));
                        }
                        Err(broadcast::error::RecvError::Closed) => return None,
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
    fn references_parse_with_registry_ports() {
        let tag = |r: &str| match parse_reference(r) {
            Reference::Tag { repo, tag } => (repo, tag),
            Reference::Digest { .. } => panic!("{r} is not a tag"),
        };
        assert_eq!(
            tag("127.0.0.1:5000/a/b:v1"),
            ("127.0.0.1:5000/a/b".into(), "v1".into())
        );
        assert_eq!(
            tag("127.0.0.1:5000/a/b"),
            ("127.0.0.1:5000/a/b".into(), "latest".into())
        );
        assert_eq!(tag("busybox"), ("busybox".into(), "latest".into()));
        let pinned = format!("127.0.0.1:5000/a/b@sha256:{}", "0".repeat(64));
        assert!(matches!(
            parse_reference(&pinned),
            Reference::Digest { repo, digest } if repo == "127.0.0.1:5000/a/b" && digest.len() == 71
        ));
    }

    #[test]
    fn container_ids_are_64_hex_and_deterministic() {
        let a = FakeEngine::new("me").create_foreign("one", None);
        let b = FakeEngine::new("me").create_foreign("one", None);
        assert_eq!(a, b);
        assert_eq!(a.len(), 64);
        assert!(a
            .bytes()
            .all(|c| c.is_ascii_hexdigit() && !c.is_ascii_uppercase()));
    }

    #[test]
    fn names_follow_dockers_rule() {
        assert!(valid_name("bt-1.x_y"));
        assert!(!valid_name("a"));
        assert!(!valid_name("-a"));
        assert!(!valid_name("a/b"));
    }

    #[tokio::test]
    async fn the_kth_call_fails_and_lost_replies_still_act() {
        let engine = FakeEngine::new("me");
        engine.fail_call(
            Op::EnsureNetwork,
            2,
            EngineError::Rejected("planned".into()),
        );
        engine.ensure_network("a").await.unwrap();
        assert!(matches!(
            engine.ensure_network("b").await,
            Err(EngineError::Rejected(m)) if m == "planned"
        ));
        assert!(!engine.networks().contains(&"b".to_string()), "no effect");
        engine.ensure_network("b").await.unwrap();
        assert_eq!(engine.calls(Op::EnsureNetwork), 3);

        engine.lose_reply_next(Op::EnsureNetwork, EngineError::Unavailable("lost".into()));
        assert!(matches!(
            engine.ensure_network("c").await,
            Err(EngineError::Unavailable(_))
        ));
        assert!(engine.networks().contains(&"c".to_string()), "it acted");

        engine.fail_next(Op::Ping, EngineError::Unavailable("once".into()));
        assert!(engine.ping().await.is_err());
        engine.ping().await.unwrap();
        engine.set_unavailable(true);
        assert!(matches!(
            engine.ping().await,
            Err(EngineError::Unavailable(_))
        ));
        engine.set_unavailable(false);
        engine.ping().await.unwrap();
        assert_eq!(engine.calls(Op::Ping), 4);
    }

    fn spec(name: &str, image: &str) -> ContainerSpec {
        ContainerSpec {
            name: name.to_string(),
            image: image.to_string(),
            env: vec![],
            labels: BTreeMap::from([(LABEL_OWNER.to_string(), "me".to_string())]),
            network: "bridge".to_string(),
            alias: name.to_string(),
            binds: vec![],
        }
    }

    fn ignore(_: PullProgress) {}

    async fn running(engine: &FakeEngine, name: &str) -> String {
        engine.add_image("r.test/app:v1", &format!("sha256:{}", "a1".repeat(32)));
        engine.pull_image("r.test/app:v1", &ignore).await.unwrap();
        let id = engine
            .create_container(&spec(name, "r.test/app:v1"))
            .await
            .unwrap();
        engine.start_container(&id).await.unwrap();
        id
    }

    async fn next(
        events: &mut BoxStream<'static, Result<EngineEvent, EngineError>>,
    ) -> EngineEventKind {
        events.next().await.unwrap().unwrap().kind
    }

    #[tokio::test]
    async fn health_and_oom_kills_are_reported() {
        let engine = FakeEngine::new("me");
        let mut events = engine.events();
        let id = running(&engine, "c1").await;
        assert_eq!(next(&mut events).await, EngineEventKind::Started);

        engine.set_health(&id, Health::Starting);
        engine.set_health(&id, Health::Unhealthy);
        engine.set_health(&id, Health::Healthy);
        assert_eq!(
            next(&mut events).await,
            EngineEventKind::HealthStatus { healthy: false }
        );
        assert_eq!(
            next(&mut events).await,
            EngineEventKind::HealthStatus { healthy: true }
        );
        let info = engine.inspect_container(&id).await.unwrap().unwrap();
        assert_eq!(info.health.as_deref(), Some("healthy"));

        engine.oom_kill(&id);
        assert_eq!(next(&mut events).await, EngineEventKind::OomKilled);
        assert_eq!(
            next(&mut events).await,
            EngineEventKind::Died {
                exit_code: Some(KILLED_EXIT_CODE)
            }
        );
        let info = engine.inspect_container(&id).await.unwrap().unwrap();
        assert!(info.oom_killed);
        assert_eq!(info.exit_code, Some(KILLED_EXIT_CODE));

        // A new process: no OOM flag, and the health check starts over.
        engine.start_container(&id).await.unwrap();
        let info = engine.inspect_container(&id).await.unwrap().unwrap();
        assert!(!info.oom_killed);
        assert_eq!(info.health.as_deref(), Some("starting"));
    }

    #[tokio::test]
    async fn an_outage_breaks_open_streams_and_refuses_new_ones() {
        let engine = FakeEngine::new("me");
        let mut open = engine.events();
        engine.set_unavailable(true);
        assert!(matches!(
            open.next().await,
            Some(Err(EngineError::Unavailable(_)))
        ));
        assert!(
            open.next().await.is_none(),
            "the stream ends after its error"
        );
        let mut refused = engine.events();
        assert!(matches!(
            refused.next().await,
            Some(Err(EngineError::Unavailable(_)))
        ));
        assert!(refused.next().await.is_none());
        assert_eq!(engine.calls(Op::Events), 2);

        engine.set_unavailable(false);
        let mut events = engine.events();
        running(&engine, "c1").await;
        assert_eq!(next(&mut events).await, EngineEventKind::Started);
    }

    #[tokio::test]
    async fn a_lost_create_reply_leaves_the_container() {
        let engine = FakeEngine::new("me");
        engine.add_image("r.test/app:v1", &format!("sha256:{}", "a1".repeat(32)));
        engine.pull_image("r.test/app:v1", &ignore).await.unwrap();
        engine.lose_reply_next(
            Op::CreateContainer,
            EngineError::Unavailable("timeout".into()),
        );
        let spec = spec("c1", "r.test/app:v1");
        assert!(engine.create_container(&spec).await.is_err());
        let left = engine.inspect_container("c1").await.unwrap();
        assert!(
            left.is_some(),
            "Docker created it before the reply was lost"
        );
        assert!(matches!(
            engine.create_container(&spec).await,
            Err(EngineError::Conflict(_))
        ));
    }

    #[tokio::test]
    async fn a_moved_tag_pulls_the_new_image_and_keeps_the_old_digest() {
        let engine = FakeEngine::new("me");
        let (old, new) = (
            format!("sha256:{}", "01".repeat(32)),
            format!("sha256:{}", "02".repeat(32)),
        );
        engine.add_image("r.test/app:v1", &old);
        engine.pull_image("r.test/app:v1", &ignore).await.unwrap();
        let before = engine
            .inspect_image("r.test/app:v1")
            .await
            .unwrap()
            .unwrap();
        engine.add_image("r.test/app:v1", &new);
        assert_eq!(
            engine.inspect_image("r.test/app:v1").await.unwrap(),
            Some(before.clone()),
            "nothing changes locally before a pull"
        );
        engine.pull_image("r.test/app:v1", &ignore).await.unwrap();
        let after = engine
            .inspect_image("r.test/app:v1")
            .await
            .unwrap()
            .unwrap();
        assert_ne!(after.id, before.id);
        assert_eq!(after.repo_digests, vec![format!("r.test/app@{new}")]);
        let pinned = format!("r.test/app@{old}");
        assert_eq!(engine.inspect_image(&pinned).await.unwrap(), Some(before));
        // The old digest is still in the registry.
        engine.pull_image(&pinned, &ignore).await.unwrap();
    }

    fn out(exit_code: i64, output: &str) -> ExecOutput {
        ExecOutput {
            exit_code,
            output: output.to_string(),
        }
    }

    fn cmd(args: &[&str]) -> Vec<String> {
        args.iter().map(|a| a.to_string()).collect()
    }

    #[tokio::test(start_paused = true)]
    async fn exec_answers_by_longest_prefix_then_handler_then_not_found() {
        let engine = FakeEngine::new("me");
        let id = running(&engine, "c1").await;
        let wait = Duration::from_secs(5);
        engine.set_exec_result(&["sh"], out(1, "any sh"));
        engine.set_exec_result(&["sh", "-c", "ok"], out(0, "ok"));
        engine.set_exec_handler(|call| {
            (call.cmd[0] == "echo").then(|| ExecScript::Reply(out(0, &call.cmd[1..].join(" "))))
        });
        assert_eq!(
            engine
                .exec(&id, &cmd(&["sh", "-c", "ok"]), wait)
                .await
                .unwrap(),
            out(0, "ok")
        );
        assert_eq!(
            engine
                .exec(&id, &cmd(&["sh", "-c", "other"]), wait)
                .await
                .unwrap(),
            out(1, "any sh")
        );
        assert_eq!(
            engine
                .exec("c1", &cmd(&["echo", "a", "b"]), wait)
                .await
                .unwrap(),
            out(0, "a b")
        );
        assert_eq!(
            engine.exec(&id, &cmd(&["ls"]), wait).await.unwrap(),
            out(EXEC_NOT_FOUND_EXIT_CODE, "not found")
        );
        // Scripts belong to the daemon; the log to the view.
        let theirs = engine.for_owner("them");
        assert!(theirs.execs().is_empty());
        assert_eq!(engine.calls(Op::Exec), 4);
        let log = engine.execs();
        assert_eq!(log.len(), 4);
        assert_eq!(log[2].container_id, id, "the full id, even by name");
        assert_eq!(log[2].cmd, cmd(&["echo", "a", "b"]));

        // The empty prefix is a catch-all below every other rule.
        engine.set_exec_result(&[], out(0, "default"));
        assert_eq!(
            engine.exec(&id, &cmd(&["ls"]), wait).await.unwrap(),
            out(0, "default")
        );

        // Long replies are cut like Docker's.
        let long = "x".repeat(crate::ports::engine::EXEC_OUTPUT_LIMIT + 5);
        engine.set_exec_result(&["cat"], out(0, &long));
        let cut = engine.exec(&id, &cmd(&["cat"]), wait).await.unwrap();
        assert_eq!(cut.output.len(), crate::ports::engine::EXEC_OUTPUT_LIMIT);
    }

    #[tokio::test(start_paused = true)]
    async fn slow_and_hanging_execs_run_on_tokio_time() {
        let engine = FakeEngine::new("me");
        let id = running(&engine, "c1").await;
        engine.script_exec(
            &["migrate"],
            ExecScript::Slow {
                after: Duration::from_secs(20),
                reply: out(0, "done"),
            },
        );
        engine.set_exec_hang(&["sleep"]);

        let began = tokio::time::Instant::now();
        assert_eq!(
            engine
                .exec(&id, &cmd(&["migrate"]), Duration::from_secs(60))
                .await
                .unwrap(),
            out(0, "done")
        );
        assert_eq!(began.elapsed(), Duration::from_secs(20));

        let began = tokio::time::Instant::now();
        assert!(matches!(
            engine
                .exec(&id, &cmd(&["migrate"]), Duration::from_secs(10))
                .await,
            Err(EngineError::Timeout(_))
        ));
        assert_eq!(began.elapsed(), Duration::from_secs(10));

        let began = tokio::time::Instant::now();
        assert!(matches!(
            engine
                .exec(&id, &cmd(&["sleep", "1"]), Duration::from_secs(3600))
                .await,
            Err(EngineError::Timeout(_))
        ));
        assert_eq!(began.elapsed(), Duration::from_secs(3600));
    }

    #[tokio::test]
    async fn exec_faults_are_planned_like_any_call() {
        let engine = FakeEngine::new("me");
        let id = running(&engine, "c1").await;
        engine.set_exec_result(&["true"], out(0, ""));
        engine.fail_next(Op::Exec, EngineError::Unavailable("down".into()));
        assert!(matches!(
            engine
                .exec(&id, &cmd(&["true"]), Duration::from_secs(1))
                .await,
            Err(EngineError::Unavailable(_))
        ));
        assert!(engine.execs().is_empty(), "a failed call ran nothing");
        engine.lose_reply_next(Op::Exec, EngineError::Unavailable("lost".into()));
        assert!(engine
            .exec(&id, &cmd(&["true"]), Duration::from_secs(1))
            .await
            .is_err());
        assert_eq!(engine.execs().len(), 1, "it ran; only the reply was lost");
    }

    #[tokio::test]
    async fn image_labels_belong_to_the_published_image() {
        let engine = FakeEngine::new("me");
        let digest = format!("sha256:{}", "b2".repeat(32));
        engine.add_image("r.test/app:v1", &digest);
        engine.pull_image("r.test/app:v1", &ignore).await.unwrap();
        let plain = engine
            .inspect_image("r.test/app:v1")
            .await
            .unwrap()
            .unwrap();
        assert!(plain.labels.is_empty());
        engine.set_image_labels(&format!("r.test/app@{digest}"), [("k", "v")]);
        let labelled = engine
            .inspect_image("r.test/app:v1")
            .await
            .unwrap()
            .unwrap();
        assert_eq!(
            labelled.labels,
            BTreeMap::from([("k".to_string(), "v".to_string())])
        );
        assert_eq!(labelled.id, plain.id);
    }

    #[tokio::test]
    async fn owners_on_one_daemon_count_their_own_calls() {
        let mine = FakeEngine::new("me");
        let theirs = mine.for_owner("them");
        mine.ping().await.unwrap();
        theirs.create_foreign("theirs", Some("them"));
        assert_eq!(mine.calls(Op::Ping), 1);
        assert_eq!(theirs.calls(Op::Ping), 0);
        assert!(mine.list_containers().await.unwrap().is_empty());
        assert_eq!(theirs.list_containers().await.unwrap().len(), 1);
        theirs.set_unavailable(true);
        assert!(mine.ping().await.is_err(), "one daemon, one outage");
    }
}
