//! The `Engine` contract: one suite, run against the real Docker adapter and
//! against `FakeEngine`.
//!
//! Each case in `cases` is an async fn taking the engine under test and a
//! [`Driver`] for what a test does behind berth's back (killing a process,
//! `docker rm -f`, another owner's containers, deleting a network) and for
//! providing a pullable image. The `contract!` macro turns each case into
//! `docker::<case>` and `fake::<case>`.
//!
//! The Docker side needs the local daemon and the test registry
//! (`BERTH_TEST_SLEEPER`, `BERTH_TEST_LABELLED_IMAGE`, from
//! `scripts/test-env.sh`) and fails without
//! them; every test uses its own owner and removes what it created, also
//! when it fails.

use crate::common;

use std::collections::{BTreeMap, HashMap};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use berth::adapters::docker::DockerEngine;
use berth::fakes::FakeEngine;
use berth::ports::engine::{
    Engine, EngineError, EngineEvent, EngineEventKind, ExecOutput, PullProgress, EXEC_OUTPUT_LIMIT,
};
use berth_core::container::{ContainerSpec, LABEL_OWNER, LABEL_RUNTIME_ID};
use bollard::container::{
    Config, CreateContainerOptions, KillContainerOptions, RemoveContainerOptions,
    StartContainerOptions,
};
use bollard::Docker;
use futures_util::stream::BoxStream;
use futures_util::StreamExt;

// --- harness ----------------------------------------------------------------

/// Test-side actions on the engine's host, and its test image.
#[async_trait]
trait Driver: Send + Sync {
    /// The owner the engine under test acts for.
    fn owner(&self) -> String;
    /// A fresh name for a container, network or owner; whatever carries it
    /// is removed when the test ends.
    fn unique(&self, what: &str) -> String;
    /// An engine of `owner` on the same host.
    async fn engine_for(&self, owner: &str) -> Arc<dyn Engine>;
    /// `(repo, tag)` of a pullable image whose process runs until killed
    /// and exits with 137 on SIGKILL.
    fn image(&self) -> (String, String);
    /// A repository in the same registry that does not exist.
    fn missing_repo(&self) -> String;
    /// A repository on a registry host that does not answer.
    fn unreachable_repo(&self) -> String;
    /// A pullable `repo:tag` whose image config has the label
    /// `SCHEMA_LABEL=2`.
    fn labelled_image(&self) -> String;
    /// A container created as someone else would, labelled with `owner`
    /// if given and nothing else; returns its id.
    async fn create_foreign(&self, name: &str, owner: Option<&str>) -> String;
    /// `docker start`.
    async fn start_behind_back(&self, id: &str);
    /// SIGKILL to the container's process.
    async fn kill(&self, id: &str);
    /// `docker rm -f`.
    async fn remove_behind_back(&self, id: &str);
    /// `docker network rm`.
    async fn remove_network(&self, name: &str);
}

macro_rules! contract {
    ($($case:ident),* $(,)?) => {
        mod docker {
            $(
                #[tokio::test]
                async fn $case() {
                    let driver = super::DockerDriver::new().await;
                    super::cases::$case(&driver.engine, &driver).await;
                }
            )*
        }
        mod fake {
            $(
                #[tokio::test]
                async fn $case() {
                    let driver = super::FakeDriver::new();
                    super::cases::$case(&driver.engine, &driver).await;
                }
            )*
        }
    };
}

contract!(
    ping_answers,
    ensure_network_is_idempotent,
    pulls_by_tag_and_digest_with_repo_digests,
    pull_of_a_missing_image_is_image_not_found,
    pull_from_an_unreachable_registry_is_pull_failed,
    create_with_a_taken_name_is_conflict,
    start_and_stop_are_idempotent_and_stop_exits,
    remove_of_a_missing_container_is_fine,
    inspect_by_name_and_id,
    rename_moves_the_name,
    list_has_only_this_owners_containers,
    foreign_containers_are_refused,
    a_missing_network_is_network_missing,
    events_report_this_owners_lifecycle_in_order,
    inspect_image_returns_the_config_labels,
    exec_reports_exit_code_and_output,
    exec_output_keeps_the_first_64_kib,
    exec_needs_a_running_container_of_this_owner,
    exec_past_its_timeout_is_timeout,
);

/// The label on the labelled test image.
const SCHEMA_LABEL: &str = "io.berth.store.launch_state.schema_version";

// Commands the test images can run (static busybox); the fake is scripted
// to answer them as the real image does.
const ECHO_HELLO: &[&str] = &["/bin/busybox", "echo", "hello"];
const FAIL_WITH_3: &[&str] = &["/bin/busybox", "sh", "-c", "echo bad >&2; exit 3"];
const SLEEP_30: &[&str] = &["/bin/busybox", "sleep", "30"];
const SEQ_TO_30000: &[&str] = &["/bin/busybox", "seq", "1", "30000"];

/// What `seq 1 30000` prints (about 170 KB).
fn seq_to_30000() -> String {
    (1..=30000).map(|n| format!("{n}\n")).collect()
}

// --- Docker ------------------------------------------------------------------

/// What a test made on the real daemon, removed on drop with the docker CLI
/// (`Drop` cannot await).
#[derive(Default)]
struct Made {
    names: Vec<String>,
}

struct DockerDriver {
    engine: DockerEngine,
    docker: Docker,
    made: Mutex<Made>,
}

impl DockerDriver {
    async fn new() -> DockerDriver {
        let owner = common::unique("bt-");
        let engine = DockerEngine::connect(None, &owner)
            .await
            .expect("the local Docker daemon must be reachable");
        let docker = engine.client().clone();
        DockerDriver {
            engine,
            docker,
            made: Mutex::new(Made { names: vec![owner] }),
        }
    }
}

impl Drop for DockerDriver {
    fn drop(&mut self) {
        let quiet = |args: &[&str]| {
            Command::new("docker")
                .args(args)
                .stdout(Stdio::piped())
                .stderr(Stdio::null())
                .output()
                .ok()
                .map(|o| String::from_utf8_lossy(&o.stdout).to_string())
                .unwrap_or_default()
        };
        let names = std::mem::take(&mut self.made.lock().unwrap().names);
        // Every name may have been a container's, an owner's or a network's.
        let mut containers = names.clone();
        for owner in &names {
            let filter = format!("label={LABEL_OWNER}={owner}");
            let found = quiet(&["ps", "-aq", "--filter", &filter]);
            containers.extend(found.split_whitespace().map(str::to_string));
        }
        for id in containers {
            quiet(&["rm", "-f", "-v", &id]);
        }
        let listed = quiet(&["network", "ls", "--format", "{{.ID}} {{.Name}}"]);
        for line in listed.lines() {
            if let Some((id, name)) = line.split_once(' ') {
                if names.iter().any(|n| n == name) {
                    quiet(&["network", "rm", id]);
                }
            }
        }
    }
}

#[async_trait]
impl Driver for DockerDriver {
    fn owner(&self) -> String {
        self.engine.owner().to_string()
    }

    fn unique(&self, what: &str) -> String {
        let name = common::unique(&format!("bt-{what}-"));
        self.made.lock().unwrap().names.push(name.clone());
        name
    }

    async fn engine_for(&self, owner: &str) -> Arc<dyn Engine> {
        Arc::new(DockerEngine::connect(None, owner).await.unwrap())
    }

    fn image(&self) -> (String, String) {
        (common::required_env("BERTH_TEST_SLEEPER"), "v1".to_string())
    }

    fn missing_repo(&self) -> String {
        let registry = common::required_env("BERTH_TEST_REGISTRY");
        format!("{registry}/berth-test/{}", common::unique("missing-"))
    }

    fn unreachable_repo(&self) -> String {
        // A loopback port nothing listens on (taken, then let go).
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        format!("127.0.0.1:{port}/berth-test/app")
    }

    fn labelled_image(&self) -> String {
        common::required_env("BERTH_TEST_LABELLED_IMAGE")
    }

    async fn create_foreign(&self, name: &str, owner: Option<&str>) -> String {
        let (repo, tag) = self.image();
        let labels = owner
            .map(|o| HashMap::from([(LABEL_OWNER.to_string(), o.to_string())]))
            .unwrap_or_default();
        let config = Config {
            image: Some(format!("{repo}:{tag}")),
            labels: Some(labels),
            ..Default::default()
        };
        let options = CreateContainerOptions {
            name: name.to_string(),
            platform: None,
        };
        self.docker
            .create_container(Some(options), config)
            .await
            .unwrap()
            .id
    }

    async fn start_behind_back(&self, id: &str) {
        self.docker
            .start_container(id, None::<StartContainerOptions<String>>)
            .await
            .unwrap();
    }

    async fn kill(&self, id: &str) {
        self.docker
            .kill_container(id, Some(KillContainerOptions { signal: "KILL" }))
            .await
            .unwrap();
    }

    async fn remove_behind_back(&self, id: &str) {
        let options = RemoveContainerOptions {
            force: true,
            ..Default::default()
        };
        self.docker
            .remove_container(id, Some(options))
            .await
            .unwrap();
    }

    async fn remove_network(&self, name: &str) {
        self.docker.remove_network(name).await.unwrap();
    }
}

// --- fake --------------------------------------------------------------------

struct FakeDriver {
    engine: FakeEngine,
    names: Mutex<u32>,
}

const FAKE_REPO: &str = "registry.test:5000/berth-test/sleeper";
const FAKE_LABELLED: &str = "registry.test:5000/berth-test/app:labelled";
const FAKE_DOWN_REGISTRY: &str = "registry-down.test:5000";

impl FakeDriver {
    fn new() -> FakeDriver {
        let engine = FakeEngine::new("bt-fake");
        engine.add_image(
            &format!("{FAKE_REPO}:v1"),
            &format!("sha256:{}", "5e".repeat(32)),
        );
        engine.add_image(FAKE_LABELLED, &format!("sha256:{}", "1a".repeat(32)));
        engine.set_image_labels(FAKE_LABELLED, [(SCHEMA_LABEL, "2")]);
        engine.set_registry_unreachable(FAKE_DOWN_REGISTRY, true);
        let reply = |exit_code, output: &str| ExecOutput {
            exit_code,
            output: output.to_string(),
        };
        engine.set_exec_result(ECHO_HELLO, reply(0, "hello\n"));
        engine.set_exec_result(FAIL_WITH_3, reply(3, "bad\n"));
        engine.set_exec_result(SEQ_TO_30000, reply(0, &seq_to_30000()));
        engine.set_exec_hang(SLEEP_30);
        FakeDriver {
            engine,
            names: Mutex::new(0),
        }
    }
}

#[async_trait]
impl Driver for FakeDriver {
    fn owner(&self) -> String {
        self.engine.owner().to_string()
    }

    fn unique(&self, what: &str) -> String {
        let mut n = self.names.lock().unwrap();
        *n += 1;
        format!("bt-{what}-{n}")
    }

    async fn engine_for(&self, owner: &str) -> Arc<dyn Engine> {
        Arc::new(self.engine.for_owner(owner))
    }

    fn image(&self) -> (String, String) {
        (FAKE_REPO.to_string(), "v1".to_string())
    }

    fn missing_repo(&self) -> String {
        "registry.test:5000/berth-test/missing".to_string()
    }

    fn unreachable_repo(&self) -> String {
        format!("{FAKE_DOWN_REGISTRY}/berth-test/app")
    }

    fn labelled_image(&self) -> String {
        FAKE_LABELLED.to_string()
    }

    async fn create_foreign(&self, name: &str, owner: Option<&str>) -> String {
        self.engine.create_foreign(name, owner)
    }

    async fn start_behind_back(&self, id: &str) {
        self.engine.start_behind_back(id);
    }

    async fn kill(&self, id: &str) {
        self.engine.kill(id, 137);
    }

    async fn remove_behind_back(&self, id: &str) {
        self.engine.remove_behind_back(id);
    }

    async fn remove_network(&self, name: &str) {
        assert!(self.engine.remove_network(name), "no network {name}");
    }
}

// --- helpers -----------------------------------------------------------------

fn ignore_progress(_: PullProgress) {}

/// Pulls the driver's image; returns `repo:tag`.
async fn pulled(engine: &dyn Engine, d: &dyn Driver) -> String {
    let (repo, tag) = d.image();
    let image = format!("{repo}:{tag}");
    engine.pull_image(&image, &ignore_progress).await.unwrap();
    image
}

/// A container of this owner, named `name`, on `network`.
fn spec(d: &dyn Driver, name: &str, image: &str, network: &str) -> ContainerSpec {
    ContainerSpec {
        name: name.to_string(),
        image: image.to_string(),
        env: vec!["GREETING=hello".to_string()],
        labels: BTreeMap::from([
            (LABEL_OWNER.to_string(), d.owner()),
            (LABEL_RUNTIME_ID.to_string(), name.to_string()),
        ]),
        network: network.to_string(),
        alias: name.to_string(),
        binds: vec![],
    }
}

/// A created (not started) container of this owner on a fresh network;
/// returns `(id, name, network)`.
async fn created(engine: &dyn Engine, d: &dyn Driver) -> (String, String, String) {
    let image = pulled(engine, d).await;
    let network = d.unique("net");
    engine.ensure_network(&network).await.unwrap();
    let name = d.unique("c");
    let id = engine
        .create_container(&spec(d, &name, &image, &network))
        .await
        .unwrap();
    (id, name, network)
}

async fn state_of(engine: &dyn Engine, id: &str) -> (String, Option<i64>) {
    let info = engine.inspect_container(id).await.unwrap().unwrap();
    (info.state, info.exit_code)
}

/// A running container of this owner on a fresh network; returns
/// `(id, name)`.
async fn running(engine: &dyn Engine, d: &dyn Driver) -> (String, String) {
    let (id, name, _) = created(engine, d).await;
    engine.start_container(&id).await.unwrap();
    (id, name)
}

fn argv(args: &[&str]) -> Vec<String> {
    args.iter().map(|a| a.to_string()).collect()
}

/// Long enough for any command of the suite on a busy machine.
const EXEC_TIMEOUT: Duration = Duration::from_secs(30);

async fn exec(engine: &dyn Engine, id: &str, cmd: &[&str]) -> Result<ExecOutput, EngineError> {
    engine.exec(id, &argv(cmd), EXEC_TIMEOUT).await
}

fn assert_foreign(result: Result<(), EngineError>, expected_owner: &str) {
    match result {
        Err(EngineError::ForeignOwner { owner, .. }) => assert_eq!(owner, expected_owner),
        other => panic!("expected ForeignOwner {expected_owner:?}, got {other:?}"),
    }
}

type Events = BoxStream<'static, Result<EngineEvent, EngineError>>;

/// The next event; fails (rather than hangs) when none comes within 10 s.
async fn next_event(events: &mut Events, waiting_for: &str) -> EngineEvent {
    match tokio::time::timeout(Duration::from_secs(10), events.next()).await {
        Ok(Some(Ok(event))) => event,
        Ok(Some(Err(e))) => panic!("events stream failed while waiting for {waiting_for}: {e}"),
        Ok(None) => panic!("events stream ended while waiting for {waiting_for}"),
        Err(_) => panic!("no event within 10 s while waiting for {waiting_for}"),
    }
}

// --- cases -------------------------------------------------------------------

mod cases {
    use super::*;

    pub async fn ping_answers(engine: &dyn Engine, _d: &dyn Driver) {
        engine.ping().await.unwrap();
    }

    pub async fn ensure_network_is_idempotent(engine: &dyn Engine, d: &dyn Driver) {
        let image = pulled(engine, d).await;
        let network = d.unique("net");
        engine.ensure_network(&network).await.unwrap();
        engine.ensure_network(&network).await.unwrap();

        // Containers on it get an address there while they run.
        let name = d.unique("c");
        let id = engine
            .create_container(&spec(d, &name, &image, &network))
            .await
            .unwrap();
        engine.start_container(&id).await.unwrap();
        let running = engine.inspect_container(&id).await.unwrap().unwrap();
        let address = running
            .addresses
            .get(&network)
            .unwrap_or_else(|| panic!("no address on {network}: {:?}", running.addresses));
        assert!(address.parse::<std::net::Ipv4Addr>().is_ok(), "{address}");
        engine.ensure_network(&network).await.unwrap();
        assert!(
            engine
                .inspect_container(&id)
                .await
                .unwrap()
                .unwrap()
                .running
        );
    }

    pub async fn pulls_by_tag_and_digest_with_repo_digests(engine: &dyn Engine, d: &dyn Driver) {
        let (repo, tag) = d.image();
        let tagged = format!("{repo}:{tag}");
        let seen = Arc::new(Mutex::new(Vec::new()));
        let sink = seen.clone();
        let record = move |p: PullProgress| sink.lock().unwrap().push(p);
        engine.pull_image(&tagged, &record).await.unwrap();
        assert!(
            seen.lock().unwrap().iter().any(|p| !p.status.is_empty()),
            "progress was reported"
        );

        let local = engine.inspect_image(&tagged).await.unwrap().unwrap();
        assert!(local.id.starts_with("sha256:"), "{}", local.id);
        let pinned = local
            .repo_digests
            .iter()
            .find(|entry| entry.starts_with(&format!("{repo}@sha256:")))
            .unwrap_or_else(|| panic!("no digest of {repo} in {:?}", local.repo_digests))
            .clone();
        assert_eq!(pinned.len(), repo.len() + "@sha256:".len() + 64);

        engine.pull_image(&pinned, &ignore_progress).await.unwrap();
        let by_digest = engine.inspect_image(&pinned).await.unwrap().unwrap();
        assert_eq!(by_digest.id, local.id);
        assert!(by_digest.repo_digests.contains(&pinned));
        // By image id too, as Docker resolves it.
        let by_id = engine.inspect_image(&local.id).await.unwrap().unwrap();
        assert_eq!(by_id.id, local.id);
    }

    /// A repository, tag or digest the registry does not have is
    /// `ImageNotFound` (Docker's 404), typed: the API answers it 422.
    pub async fn pull_of_a_missing_image_is_image_not_found(engine: &dyn Engine, d: &dyn Driver) {
        let missing_repo = format!("{}:v1", d.missing_repo());
        let (repo, _) = d.image();
        let missing_tag = format!("{repo}:{}", d.unique("no-such-tag"));
        let missing_digest = format!("{repo}@sha256:{}", "0".repeat(64));
        for missing in [missing_repo, missing_tag, missing_digest] {
            match engine.pull_image(&missing, &ignore_progress).await {
                Err(EngineError::ImageNotFound { image, message }) => {
                    assert_eq!(image, missing);
                    assert!(!message.is_empty());
                }
                other => panic!("pull of {missing}: {other:?}"),
            }
            assert_eq!(engine.inspect_image(&missing).await.unwrap(), None);
        }
    }

    /// A registry that does not answer is a failure, `PullFailed` (502),
    /// never `ImageNotFound`.
    pub async fn pull_from_an_unreachable_registry_is_pull_failed(
        engine: &dyn Engine,
        d: &dyn Driver,
    ) {
        let image = format!("{}:v1", d.unreachable_repo());
        match engine.pull_image(&image, &ignore_progress).await {
            Err(EngineError::PullFailed {
                image: failed,
                message,
            }) => {
                assert_eq!(failed, image);
                assert!(!message.is_empty());
            }
            other => panic!("pull of {image}: {other:?}"),
        }
        assert_eq!(engine.inspect_image(&image).await.unwrap(), None);
    }

    pub async fn create_with_a_taken_name_is_conflict(engine: &dyn Engine, d: &dyn Driver) {
        let (id, name, network) = created(engine, d).await;
        let image = pulled(engine, d).await;
        match engine
            .create_container(&spec(d, &name, &image, &network))
            .await
        {
            Err(EngineError::Conflict(message)) => assert!(!message.is_empty()),
            other => panic!("second create of {name}: {other:?}"),
        }
        let first = engine.inspect_container(&name).await.unwrap().unwrap();
        assert_eq!(first.id, id, "the first container keeps its name");
        assert_eq!(engine.list_containers().await.unwrap().len(), 1);
    }

    pub async fn start_and_stop_are_idempotent_and_stop_exits(engine: &dyn Engine, d: &dyn Driver) {
        let (id, _, _) = created(engine, d).await;
        let fresh = engine.inspect_container(&id).await.unwrap().unwrap();
        assert_eq!(fresh.state, "created");
        assert!(!fresh.running);

        // Stopping a container that never ran leaves it created.
        engine.stop_container(&id, Duration::ZERO).await.unwrap();
        assert_eq!(state_of(engine, &id).await.0, "created");

        engine.start_container(&id).await.unwrap();
        engine.start_container(&id).await.unwrap();
        let running = engine.inspect_container(&id).await.unwrap().unwrap();
        assert_eq!(running.state, "running");
        assert!(running.running);

        // The test image's PID 1 ignores SIGTERM: killed after the grace.
        engine.stop_container(&id, Duration::ZERO).await.unwrap();
        assert_eq!(state_of(engine, &id).await, ("exited".into(), Some(137)));
        let stopped = engine.inspect_container(&id).await.unwrap().unwrap();
        assert!(!stopped.running);
        assert!(stopped.addresses.is_empty(), "{:?}", stopped.addresses);
        engine.stop_container(&id, Duration::ZERO).await.unwrap();
        assert_eq!(state_of(engine, &id).await, ("exited".into(), Some(137)));

        engine.start_container(&id).await.unwrap();
        assert_eq!(state_of(engine, &id).await, ("running".into(), Some(0)));
    }

    pub async fn remove_of_a_missing_container_is_fine(engine: &dyn Engine, d: &dyn Driver) {
        engine
            .remove_container(&d.unique("never-existed"))
            .await
            .unwrap();
        let (id, name, _) = created(engine, d).await;
        engine.start_container(&id).await.unwrap();
        engine.remove_container(&name).await.unwrap();
        assert_eq!(engine.inspect_container(&id).await.unwrap(), None);
        assert_eq!(engine.inspect_container(&name).await.unwrap(), None);
        engine.remove_container(&id).await.unwrap();
        assert!(engine.list_containers().await.unwrap().is_empty());

        for (what, result) in [
            ("start", engine.start_container(&id).await),
            ("stop", engine.stop_container(&id, Duration::ZERO).await),
            ("rename", engine.rename_container(&id, &d.unique("c")).await),
        ] {
            assert!(
                matches!(result, Err(EngineError::NotFound(_))),
                "{what} of a removed container: {result:?}"
            );
        }
    }

    pub async fn inspect_by_name_and_id(engine: &dyn Engine, d: &dyn Driver) {
        let image = pulled(engine, d).await;
        let image_id = engine.inspect_image(&image).await.unwrap().unwrap().id;
        let network = d.unique("net");
        engine.ensure_network(&network).await.unwrap();
        let name = d.unique("c");
        let spec = spec(d, &name, &image, &network);
        let id = engine.create_container(&spec).await.unwrap();
        assert_eq!(id.len(), 64, "{id}");
        assert!(id.bytes().all(|b| b.is_ascii_hexdigit()), "{id}");

        let by_id = engine.inspect_container(&id).await.unwrap().unwrap();
        let by_name = engine.inspect_container(&name).await.unwrap().unwrap();
        assert_eq!(by_id, by_name);
        assert_eq!(by_id.id, id);
        assert_eq!(by_id.name, name);
        assert_eq!(by_id.labels, spec.labels, "exactly the spec's labels");
        assert_eq!(by_id.image_id, image_id);
        assert_eq!(by_id.exit_code, Some(0));
        assert!(!by_id.oom_killed);
        assert!(by_id.created_at_ms.is_some());
        assert_eq!(by_id.health, None, "the test image has no health check");

        assert_eq!(
            engine.inspect_container(&d.unique("none")).await.unwrap(),
            None
        );
    }

    pub async fn rename_moves_the_name(engine: &dyn Engine, d: &dyn Driver) {
        let (id, old_name, network) = created(engine, d).await;
        let new_name = d.unique("renamed");
        engine.rename_container(&id, &new_name).await.unwrap();
        assert_eq!(engine.inspect_container(&old_name).await.unwrap(), None);
        let renamed = engine.inspect_container(&new_name).await.unwrap().unwrap();
        assert_eq!(renamed.id, id);
        assert_eq!(renamed.name, new_name);

        // The old name is free again; a taken one is a conflict.
        let image = pulled(engine, d).await;
        let other = engine
            .create_container(&spec(d, &old_name, &image, &network))
            .await
            .unwrap();
        match engine.rename_container(&other, &new_name).await {
            Err(EngineError::Conflict(_)) => {}
            result => panic!("rename onto a taken name: {result:?}"),
        }
        let unchanged = engine.inspect_container(&other).await.unwrap().unwrap();
        assert_eq!(unchanged.name, old_name);
    }

    pub async fn list_has_only_this_owners_containers(engine: &dyn Engine, d: &dyn Driver) {
        let (id, name, _) = created(engine, d).await;
        engine.start_container(&id).await.unwrap();
        let other = d.unique("owner");
        let foreign_name = d.unique("foreign");
        d.create_foreign(&foreign_name, Some(&other)).await;
        d.create_foreign(&d.unique("unlabelled"), None).await;

        let mine = engine.list_containers().await.unwrap();
        assert_eq!(mine.len(), 1, "{mine:?}");
        assert_eq!(mine[0].id, id);
        assert_eq!(mine[0].name, name);
        assert_eq!(mine[0].state, "running");
        assert!(mine[0].running);
        assert_eq!(mine[0].labels.get(LABEL_OWNER), Some(&d.owner()));
        assert_eq!(mine[0].exit_code, None, "the list has no exit codes");
        let created = mine[0].created_at_ms.expect("the list has creation times");
        assert_eq!(created % 1000, 0, "whole seconds");

        let theirs = d.engine_for(&other).await.list_containers().await.unwrap();
        let names: Vec<&str> = theirs.iter().map(|c| c.name.as_str()).collect();
        assert_eq!(names, vec![foreign_name.as_str()]);
    }

    pub async fn foreign_containers_are_refused(engine: &dyn Engine, d: &dyn Driver) {
        pulled(engine, d).await;
        let other = d.unique("owner");
        let foreign_name = d.unique("foreign");
        let foreign = d.create_foreign(&foreign_name, Some(&other)).await;
        let unlabelled_name = d.unique("unlabelled");
        d.create_foreign(&unlabelled_name, None).await;

        assert_foreign(engine.start_container(&foreign_name).await, &other);
        assert_eq!(state_of(engine, &foreign).await.0, "created");

        d.start_behind_back(&foreign).await;
        assert_foreign(
            engine.stop_container(&foreign, Duration::ZERO).await,
            &other,
        );
        assert_foreign(engine.remove_container(&foreign_name).await, &other);
        assert_foreign(
            engine.rename_container(&foreign, &d.unique("taken")).await,
            &other,
        );
        let still = engine.inspect_container(&foreign).await.unwrap().unwrap();
        assert!(still.running, "stop and remove were refused");
        assert_eq!(still.name, foreign_name, "rename was refused");

        // No owner label is somebody else's too.
        assert_foreign(engine.start_container(&unlabelled_name).await, "");
        assert_foreign(engine.remove_container(&unlabelled_name).await, "");
        assert_foreign(
            engine
                .stop_container(&unlabelled_name, Duration::ZERO)
                .await,
            "",
        );
        assert_foreign(
            engine
                .rename_container(&unlabelled_name, &d.unique("taken"))
                .await,
            "",
        );
        assert!(engine
            .inspect_container(&unlabelled_name)
            .await
            .unwrap()
            .is_some());
    }

    /// Docker 20.10 looks for the network only at start (newer daemons may
    /// refuse the create already): either way, `NetworkMissing`. A container
    /// that has run stays bound to its network's id.
    pub async fn a_missing_network_is_network_missing(engine: &dyn Engine, d: &dyn Driver) {
        let image = pulled(engine, d).await;
        let network = d.unique("net");
        let is_missing = |result: Result<(), EngineError>| match result {
            Err(EngineError::NetworkMissing { network: missing }) => {
                assert_eq!(missing, network)
            }
            other => panic!("on missing network {network}: {other:?}"),
        };
        let name = d.unique("c");
        match engine
            .create_container(&spec(d, &name, &image, &network))
            .await
        {
            Ok(id) => {
                is_missing(engine.start_container(&id).await);
                assert_eq!(state_of(engine, &id).await.0, "created");
                engine.ensure_network(&network).await.unwrap();
                engine.start_container(&id).await.unwrap();
            }
            Err(e) => is_missing(Err(e)),
        }

        // Deleted behind berth's back after the create.
        let (id, _, network) = created(engine, d).await;
        d.remove_network(&network).await;
        let is_missing = |result: Result<(), EngineError>| match result {
            Err(EngineError::NetworkMissing { network: missing }) => {
                assert_eq!(missing, network)
            }
            other => panic!("on deleted network {network}: {other:?}"),
        };
        is_missing(engine.start_container(&id).await);
        engine.ensure_network(&network).await.unwrap();
        engine.start_container(&id).await.unwrap();
        assert!(
            engine
                .inspect_container(&id)
                .await
                .unwrap()
                .unwrap()
                .running
        );

        // Once it has run on a network, a container is bound to that one:
        // a new network of the same name does not bring it back.
        engine.stop_container(&id, Duration::ZERO).await.unwrap();
        d.remove_network(&network).await;
        engine.ensure_network(&network).await.unwrap();
        is_missing(engine.start_container(&id).await);
        assert_eq!(state_of(engine, &id).await.0, "exited");
    }

    pub async fn events_report_this_owners_lifecycle_in_order(engine: &dyn Engine, d: &dyn Driver) {
        let image = pulled(engine, d).await;
        let network = d.unique("net");
        engine.ensure_network(&network).await.unwrap();
        let other = d.unique("owner");
        let other_engine = d.engine_for(&other).await;

        // Subscribed here, polled only once everything below happened: the
        // stream still delivers what happened since `events()`.
        let mut events = engine.events();
        let mut other_events = other_engine.events();

        // Another owner's whole lifecycle first: events arrive in order, so
        // a leak would show before this owner's own events.
        let foreign = d.create_foreign(&d.unique("foreign"), Some(&other)).await;
        d.start_behind_back(&foreign).await;
        d.kill(&foreign).await;
        d.remove_behind_back(&foreign).await;
        let unlabelled = d.create_foreign(&d.unique("unlabelled"), None).await;
        d.start_behind_back(&unlabelled).await;
        d.remove_behind_back(&unlabelled).await;

        let spec = spec(d, &d.unique("c"), &image, &network);
        let id = engine.create_container(&spec).await.unwrap();
        engine.start_container(&id).await.unwrap();
        d.kill(&id).await;
        engine.start_container(&id).await.unwrap();
        engine.stop_container(&id, Duration::ZERO).await.unwrap();
        engine.remove_container(&id).await.unwrap();
        // Removed while running, behind berth's back.
        let second_spec = self::spec(d, &d.unique("c"), &image, &network);
        let second = engine.create_container(&second_spec).await.unwrap();
        engine.start_container(&second).await.unwrap();
        d.remove_behind_back(&second).await;

        let died = EngineEventKind::Died {
            exit_code: Some(137),
        };
        let expected = [
            (&id, &spec.labels, EngineEventKind::Started, "start"),
            (&id, &spec.labels, died.clone(), "die after kill"),
            (&id, &spec.labels, EngineEventKind::Started, "second start"),
            (&id, &spec.labels, died.clone(), "die after stop"),
            (&id, &spec.labels, EngineEventKind::Destroyed, "destroy"),
            (
                &second,
                &second_spec.labels,
                EngineEventKind::Started,
                "start of the second",
            ),
            (
                &second,
                &second_spec.labels,
                died.clone(),
                "die of the second in rm -f",
            ),
            (
                &second,
                &second_spec.labels,
                EngineEventKind::Destroyed,
                "destroy of the second",
            ),
        ];
        let mut last_at = 0;
        for (container, labels, kind, what) in expected {
            let event = next_event(&mut events, what).await;
            assert_eq!(
                (&event.container_id, &event.kind),
                (container, &kind),
                "{what}: {event:?}"
            );
            assert_eq!(
                &event.labels, labels,
                "{what}: the container's labels, nothing more"
            );
            assert!(event.at_ms >= last_at, "{what}: times do not go back");
            last_at = event.at_ms;
        }
        let first = next_event(&mut other_events, "the other owner's start").await;
        assert_eq!(first.kind, EngineEventKind::Started);
        assert_eq!(first.container_id, foreign);
        assert_eq!(first.labels.get(LABEL_OWNER), Some(&other));
        assert_eq!(
            first.labels.get(LABEL_RUNTIME_ID),
            None,
            "labels are the container's, nothing more: {:?}",
            first.labels
        );
    }

    pub async fn inspect_image_returns_the_config_labels(engine: &dyn Engine, d: &dyn Driver) {
        let plain = pulled(engine, d).await;
        let info = engine.inspect_image(&plain).await.unwrap().unwrap();
        assert_eq!(info.labels, BTreeMap::new(), "the sleeper image has none");

        let labelled = d.labelled_image();
        engine
            .pull_image(&labelled, &ignore_progress)
            .await
            .unwrap();
        let info = engine.inspect_image(&labelled).await.unwrap().unwrap();
        assert_eq!(
            info.labels.get(SCHEMA_LABEL).map(String::as_str),
            Some("2"),
            "{:?}",
            info.labels
        );
        // The same by image id.
        let by_id = engine.inspect_image(&info.id).await.unwrap().unwrap();
        assert_eq!(by_id.labels, info.labels);
    }

    pub async fn exec_reports_exit_code_and_output(engine: &dyn Engine, d: &dyn Driver) {
        let (id, name) = running(engine, d).await;
        let hello = exec(engine, &id, ECHO_HELLO).await.unwrap();
        assert_eq!(
            hello,
            ExecOutput {
                exit_code: 0,
                output: "hello\n".to_string()
            }
        );
        assert_eq!(exec(engine, &name, ECHO_HELLO).await.unwrap(), hello);

        // stderr comes back too, and the command's own exit code.
        let failed = exec(engine, &id, FAIL_WITH_3).await.unwrap();
        assert_eq!(failed.exit_code, 3, "{failed:?}");
        assert!(failed.output.contains("bad"), "{failed:?}");

        // A binary that is not there is the command's failure, not an
        // engine error: Docker answers 126 with the OCI runtime's message,
        // the fake 127 "not found" (a shell's answer).
        let missing = exec(engine, &id, &["/no/such/binary"]).await.unwrap();
        assert!(
            [126, 127].contains(&missing.exit_code) && !missing.output.is_empty(),
            "{missing:?}"
        );

        match engine.exec(&id, &[], EXEC_TIMEOUT).await {
            Err(EngineError::Rejected(_)) => {}
            other => panic!("exec of no command: {other:?}"),
        }
        // Still running, and nothing of the above stuck to it.
        assert!(
            engine
                .inspect_container(&id)
                .await
                .unwrap()
                .unwrap()
                .running
        );
    }

    pub async fn exec_output_keeps_the_first_64_kib(engine: &dyn Engine, d: &dyn Driver) {
        let (id, _) = running(engine, d).await;
        let long = exec(engine, &id, SEQ_TO_30000).await.unwrap();
        assert_eq!(long.exit_code, 0, "the rest was read, not left to block");
        assert_eq!(long.output.len(), EXEC_OUTPUT_LIMIT);
        assert!(
            long.output == seq_to_30000()[..EXEC_OUTPUT_LIMIT],
            "not the first {EXEC_OUTPUT_LIMIT} bytes of the output: starts {:?}, ends {:?}",
            &long.output[..20],
            &long.output[long.output.len() - 20..]
        );
    }

    pub async fn exec_needs_a_running_container_of_this_owner(engine: &dyn Engine, d: &dyn Driver) {
        let not_running = |result: Result<ExecOutput, EngineError>, what: &str| match result {
            Err(EngineError::Conflict(message)) => {
                assert!(message.contains("not running"), "{what}: {message}")
            }
            other => panic!("exec in a {what} container: {other:?}"),
        };
        let (id, name, _) = created(engine, d).await;
        not_running(exec(engine, &id, ECHO_HELLO).await, "created");
        engine.start_container(&id).await.unwrap();
        engine.stop_container(&id, Duration::ZERO).await.unwrap();
        not_running(exec(engine, &name, ECHO_HELLO).await, "stopped");
        engine.start_container(&id).await.unwrap();
        exec(engine, &id, ECHO_HELLO).await.unwrap();

        engine.remove_container(&id).await.unwrap();
        for missing in [id.clone(), name, d.unique("never-existed")] {
            match exec(engine, &missing, ECHO_HELLO).await {
                Err(EngineError::NotFound(_)) => {}
                other => panic!("exec in missing container {missing}: {other:?}"),
            }
        }

        // Another owner's and an unlabelled container, both running.
        let other = d.unique("owner");
        let foreign = d.create_foreign(&d.unique("foreign"), Some(&other)).await;
        d.start_behind_back(&foreign).await;
        let unlabelled = d.create_foreign(&d.unique("unlabelled"), None).await;
        d.start_behind_back(&unlabelled).await;
        assert_foreign(exec(engine, &foreign, ECHO_HELLO).await.map(|_| ()), &other);
        assert_foreign(exec(engine, &unlabelled, ECHO_HELLO).await.map(|_| ()), "");
        // Their owner may.
        let theirs = d.engine_for(&other).await;
        let hello = theirs
            .exec(&foreign, &argv(ECHO_HELLO), EXEC_TIMEOUT)
            .await
            .unwrap();
        assert_eq!(hello.output, "hello\n");
    }

    pub async fn exec_past_its_timeout_is_timeout(engine: &dyn Engine, d: &dyn Driver) {
        let (id, _) = running(engine, d).await;
        let began = Instant::now();
        match engine
            .exec(&id, &argv(SLEEP_30), Duration::from_secs(1))
            .await
        {
            Err(EngineError::Timeout(message)) => assert!(!message.is_empty()),
            other => panic!("sleep 30 with a 1 s timeout: {other:?}"),
        }
        let took = began.elapsed();
        assert!(
            took >= Duration::from_secs(1) && took < Duration::from_secs(15),
            "took {took:?}"
        );
        // The container is fine and runs the next command.
        assert_eq!(
            exec(engine, &id, ECHO_HELLO).await.unwrap().output,
            "hello\n"
        );
    }
}
