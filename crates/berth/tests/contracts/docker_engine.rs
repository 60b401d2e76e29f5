//! The Docker adapter against the machine's real Docker engine and the local
//! test registry started by `scripts/test-env.sh` (nothing is faked).
//!
//! Every test uses its own `bt-<random>` owner and network and removes what
//! it created, also when it fails (see `Cleanup`). What every engine must do
//! (the fake included) is in `engine_contract.rs`; this file keeps what is
//! particular to Docker.

use std::collections::{BTreeMap, HashMap};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use berth::adapters::docker::DockerEngine;
use berth::ports::engine::{Engine, EngineError, EngineEvent, EngineEventKind, PullProgress};
use berth_core::container::{
    plan_container, ContainerSpec, Placement, LABEL_OWNER, LABEL_RUNTIME_ID,
};
use berth_core::image::Repository;
use berth_core::runtime::RuntimeRecord;
use berth_core::template::Template;
use bollard::container::{
    Config, CreateContainerOptions, KillContainerOptions, RemoveContainerOptions,
    StartContainerOptions,
};
use bollard::exec::{CreateExecOptions, StartExecResults};
use bollard::network::ListNetworksOptions;
use bollard::Docker;
use futures_util::StreamExt;

/// `<registry>/berth-test/app`, with tags v1, v2 and latest.
fn test_image() -> String {
    std::env::var("BERTH_TEST_IMAGE").unwrap_or_else(|_| {
        panic!(
            "BERTH_TEST_IMAGE is not set: run `eval \"$(bash scripts/test-env.sh --env-only)\"` \
             first (it starts the local registry and pushes the test images)"
        )
    })
}

/// `host:port` of the test registry.
fn test_registry() -> String {
    std::env::var("BERTH_TEST_REGISTRY").unwrap_or_else(|_| {
        let image = test_image();
        image.split('/').next().unwrap_or_default().to_string()
    })
}

fn unique(prefix: &str) -> String {
    let id = uuid::Uuid::now_v7().simple().to_string();
    // The tail of a v7 uuid is random; the head is a timestamp.
    format!("{prefix}-{}", &id[id.len() - 10..])
}

/// Removes a test's containers (by owner label or name) and networks when
/// dropped, so a failing assertion leaves nothing behind. Uses the docker
/// CLI because `Drop` cannot await.
struct Cleanup {
    owners: Vec<String>,
    names: Vec<String>,
    networks: Vec<String>,
}

impl Drop for Cleanup {
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
        let mut ids: Vec<String> = self.names.clone();
        for owner in &self.owners {
            let filter = format!("label={LABEL_OWNER}={owner}");
            let found = quiet(&["ps", "-aq", "--filter", &filter]);
            ids.extend(found.split_whitespace().map(str::to_string));
        }
        for id in ids {
            quiet(&["rm", "-f", "-v", &id]);
        }
        // By id: `network rm <name>` refuses when a race left duplicates.
        let listed = quiet(&["network", "ls", "--format", "{{.ID}} {{.Name}}"]);
        for line in listed.lines() {
            if let Some((id, name)) = line.split_once(' ') {
                if self.networks.iter().any(|n| n == name) {
                    quiet(&["network", "rm", id]);
                }
            }
        }
    }
}

async fn engine(owner: &str) -> DockerEngine {
    DockerEngine::connect(None, owner)
        .await
        .expect("the local Docker daemon must be reachable")
}

/// Networks whose name is exactly `name` (Docker's filter is a substring one).
async fn networks_named(docker: &Docker, name: &str) -> Vec<bollard::models::Network> {
    let options = ListNetworksOptions {
        filters: HashMap::from([("name", vec![name])]),
    };
    docker
        .list_networks(Some(options))
        .await
        .unwrap()
        .into_iter()
        .filter(|n| n.name.as_deref() == Some(name))
        .collect()
}

/// Runs a command in a container; returns its exit code and output.
async fn exec(docker: &Docker, id: &str, cmd: &[&str]) -> (i64, String) {
    let created = docker
        .create_exec(
            id,
            CreateExecOptions {
                cmd: Some(cmd.to_vec()),
                attach_stdout: Some(true),
                attach_stderr: Some(true),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    let mut out = String::new();
    if let StartExecResults::Attached { mut output, .. } =
        docker.start_exec(&created.id, None).await.unwrap()
    {
        while let Some(Ok(chunk)) = output.next().await {
            out.push_str(&chunk.to_string());
        }
    }
    let code = docker
        .inspect_exec(&created.id)
        .await
        .unwrap()
        .exit_code
        .unwrap_or(-1);
    (code, out)
}

fn ignore_progress(_: PullProgress) {}

/// Creates a container with bollard directly, labelled with `labels` only.
async fn create_raw(docker: &Docker, name: &str, image: &str, labels: HashMap<String, String>) {
    let config = Config {
        image: Some(image.to_string()),
        labels: Some(labels),
        ..Default::default()
    };
    let options = CreateContainerOptions {
        name: name.to_string(),
        platform: None,
    };
    docker
        .create_container(Some(options), config)
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ensure_network_is_idempotent_and_survives_races() {
    let owner = unique("bt");
    let name = format!("{owner}-net");
    let raced = format!("{owner}-raced");
    let longer = format!("{owner}-net-longer");
    let _cleanup = Cleanup {
        owners: vec![],
        names: vec![],
        networks: vec![name.clone(), raced.clone(), longer.clone()],
    };
    let engine = engine(&owner).await;
    let docker = engine.client().clone();

    // A network whose name merely contains ours must not count as ours.
    engine.ensure_network(&longer).await.unwrap();
    engine.ensure_network(&name).await.unwrap();
    engine.ensure_network(&name).await.unwrap();
    let found = networks_named(&docker, &name).await;
    assert_eq!(found.len(), 1, "exactly one network named {name}");
    assert_eq!(found[0].driver.as_deref(), Some("bridge"));
    let labels = found[0].labels.clone().unwrap_or_default();
    assert_eq!(labels.get(LABEL_OWNER), Some(&owner));

    // Clones share one engine (callers in one process); separately connected
    // engines stand in for other processes.
    let mut racers = tokio::task::JoinSet::new();
    for i in 0..8 {
        let engine = if i % 2 == 0 {
            engine.clone()
        } else {
            self::engine(&owner).await
        };
        let raced = raced.clone();
        racers.spawn(async move { engine.ensure_network(&raced).await });
    }
    while let Some(done) = racers.join_next().await {
        done.unwrap()
            .expect("a caller racing to create the network must not fail");
    }
    assert_eq!(networks_named(&docker, &raced).await.len(), 1);
}

fn sha256(data: &[u8]) -> String {
    use std::io::Write;
    let mut child = Command::new("sha256sum")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(data).unwrap();
    let out = child.wait_with_output().unwrap();
    let hex = String::from_utf8(out.stdout).unwrap();
    format!("sha256:{}", hex.split_whitespace().next().unwrap())
}

/// Uploads one blob to the test registry; returns its digest and size.
async fn push_blob(http: &reqwest::Client, repo: &str, data: Vec<u8>) -> (String, usize) {
    let registry = format!("http://{}", test_registry());
    let digest = sha256(&data);
    let size = data.len();
    let started = http
        .post(format!("{registry}/v2/{repo}/blobs/uploads/"))
        .send()
        .await
        .unwrap()
        .error_for_status()
        .unwrap();
    let location = started.headers()["location"].to_str().unwrap().to_string();
    let location = if location.starts_with("http") {
        location
    } else {
        format!("{registry}{location}")
    };
    let separator = if location.contains('?') { '&' } else { '?' };
    http.put(format!("{location}{separator}digest={digest}"))
        .header("content-type", "application/octet-stream")
        .body(data)
        .send()
        .await
        .unwrap()
        .error_for_status()
        .unwrap();
    (digest, size)
}

/// Docker answers a pull whose manifest is fine but whose layer is not a
/// tarball with HTTP 200 and progress lines, then an `error` line: the
/// failure arrives inside the stream, not as a status code.
#[tokio::test]
async fn pull_failure_inside_the_progress_stream_is_pull_failed() {
    let engine = engine(&unique("bt")).await;
    let http = reqwest::Client::new();
    let repo = format!("berth-test/{}", unique("corrupt"));
    let layer = format!("not a tarball {}", unique("layer")).into_bytes();
    let (layer_digest, layer_size) = push_blob(&http, &repo, layer).await;
    let config = serde_json::json!({
        "architecture": "amd64",
        "os": "linux",
        "config": {},
        "rootfs": {"type": "layers", "diff_ids": [layer_digest]},
    });
    let (config_digest, config_size) =
        push_blob(&http, &repo, serde_json::to_vec(&config).unwrap()).await;
    let manifest = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.docker.distribution.manifest.v2+json",
        "config": {
            "mediaType": "application/vnd.docker.container.image.v1+json",
            "size": config_size,
            "digest": config_digest,
        },
        "layers": [{
            "mediaType": "application/vnd.docker.image.rootfs.diff.tar.gzip",
            "size": layer_size,
            "digest": layer_digest,
        }],
    });
    http.put(format!("http://{}/v2/{repo}/manifests/v1", test_registry()))
        .header(
            "content-type",
            "application/vnd.docker.distribution.manifest.v2+json",
        )
        .body(serde_json::to_vec(&manifest).unwrap())
        .send()
        .await
        .unwrap()
        .error_for_status()
        .unwrap();

    let image = format!("{}/{repo}:v1", test_registry());
    let seen = Arc::new(Mutex::new(Vec::new()));
    let sink = seen.clone();
    let record = move |p: PullProgress| sink.lock().unwrap().push(p);
    match engine.pull_image(&image, &record).await {
        Err(EngineError::PullFailed {
            image: failed,
            message,
        }) => {
            assert_eq!(failed, image);
            assert!(message.contains("layer"), "Docker's own message: {message}");
        }
        other => panic!("pull of a corrupt layer: {other:?}"),
    }
    let seen = seen.lock().unwrap();
    assert!(
        seen.iter()
            .any(|p| p.layer.is_some() && p.total == Some(layer_size as u64)),
        "layer progress came before the error: {seen:?}"
    );
}

#[tokio::test]
async fn container_lifecycle_keeps_labels_alias_env_and_state() {
    let owner = unique("bt");
    let network = format!("{owner}-net");
    let _cleanup = Cleanup {
        owners: vec![owner.clone()],
        names: vec![],
        networks: vec![network.clone()],
    };
    let engine = engine(&owner).await;
    let docker = engine.client().clone();
    let image = test_image();
    let image_ref = format!("{image}:v1");
    engine
        .pull_image(&image_ref, &ignore_progress)
        .await
        .unwrap();
    engine.ensure_network(&network).await.unwrap();

    let state = tempfile::tempdir().unwrap();
    std::fs::write(state.path().join("kept.txt"), "from the host").unwrap();
    let plugins = tempfile::tempdir().unwrap();
    std::fs::write(plugins.path().join("plugin.txt"), "plugin").unwrap();
    let state_dir = state.path().to_string_lossy().to_string();

    let mut template = Template::new("engine", Repository::parse(&image).unwrap());
    template.env.insert("FROM_TEMPLATE".into(), "yes".into());
    let record = RuntimeRecord::new(
        "rt-1",
        "engine",
        BTreeMap::from([("FROM_REQUEST".into(), "also".into())]),
        0,
    );
    let plugins_dir = plugins.path().to_string_lossy().to_string();
    let place = Placement {
        owner: &owner,
        network: &network,
        state_dir: &state_dir,
        plugins_dir: &plugins_dir,
    };
    let spec: ContainerSpec = plan_container(&place, &template, &record, &image_ref, 1, 7);

    let id = engine.create_container(&spec).await.unwrap();
    let created = engine.inspect_container(&spec.name).await.unwrap().unwrap();
    assert_eq!(created.id, id);
    assert_eq!(created.name, spec.name);
    assert_eq!(
        created.labels, spec.labels,
        "every berth label, nothing else"
    );
    assert_eq!(created.state, "created");
    assert!(!created.running);
    assert_eq!(
        Some(created.image_id.clone()),
        engine
            .inspect_image(&image_ref)
            .await
            .unwrap()
            .map(|i| i.id)
    );

    // What Docker recorded, read with bollard directly.
    let raw = docker.inspect_container(&id, None).await.unwrap();
    let env = raw.config.as_ref().unwrap().env.clone().unwrap();
    for wanted in &spec.env {
        assert!(env.contains(wanted), "{wanted} in {env:?}");
    }
    assert!(env.contains(&"FROM_TEMPLATE=yes".to_string()));
    assert!(env.contains(&"FROM_REQUEST=also".to_string()));
    let host_config = raw.host_config.as_ref().unwrap();
    let binds = host_config.binds.clone().unwrap();
    assert!(binds.contains(&format!("{state_dir}:/var/lib/runtime")));
    assert!(
        binds.contains(&format!("{plugins_dir}:/plugins:ro")),
        "{binds:?}"
    );
    assert_eq!(host_config.network_mode.as_deref(), Some(network.as_str()));
    let restart = host_config.restart_policy.as_ref().unwrap().name;
    assert_eq!(restart, Some(bollard::models::RestartPolicyNameEnum::NO));

    // The same name again is a conflict.
    match engine.create_container(&spec).await {
        Err(EngineError::Conflict(_)) => {}
        other => panic!("second create with the same name: {other:?}"),
    }

    engine.start_container(&id).await.unwrap();
    engine
        .start_container(&spec.name)
        .await
        .expect("starting a running container is fine");
    let running = engine.inspect_container(&id).await.unwrap().unwrap();
    assert!(running.running);
    assert_eq!(running.state, "running");

    let raw = docker.inspect_container(&id, None).await.unwrap();
    let endpoints = raw.network_settings.unwrap().networks.unwrap();
    let aliases = endpoints[&network].aliases.clone().unwrap_or_default();
    assert!(aliases.contains(&spec.alias), "{aliases:?}");
    // The alias resolves on the network, and the state bind is writable.
    let (code, out) = exec(&docker, &id, &["/bin/busybox", "nslookup", &spec.alias]).await;
    assert_eq!(code, 0, "nslookup {}: {out}", spec.alias);
    let (code, out) = exec(
        &docker,
        &id,
        &[
            "/bin/busybox",
            "sh",
            "-c",
            "cat /var/lib/runtime/kept.txt && echo inside > /var/lib/runtime/written.txt \
             && cat /plugins/plugin.txt && ! echo x > /plugins/denied.txt",
        ],
    )
    .await;
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("from the host"), "{out}");

    engine
        .stop_container(&id, Duration::from_millis(1500))
        .await
        .unwrap();
    let stopped = engine.inspect_container(&id).await.unwrap().unwrap();
    assert!(!stopped.running);
    assert_eq!(stopped.state, "exited");
    assert!(stopped.exit_code.is_some());
    assert!(!stopped.oom_killed);
    engine
        .stop_container(&id, Duration::from_secs(1))
        .await
        .expect("stopping a stopped container is fine");

    engine.start_container(&id).await.unwrap();
    assert!(
        engine
            .inspect_container(&id)
            .await
            .unwrap()
            .unwrap()
            .running
    );

    let listed = engine.list_containers().await.unwrap();
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].id, id);
    assert_eq!(listed[0].name, spec.name);
    assert_eq!(listed[0].state, "running");
    assert!(listed[0].running);
    assert_eq!(listed[0].labels, spec.labels);
    assert_eq!(listed[0].image_id, running.image_id);

    engine.remove_container(&id).await.unwrap();
    assert_eq!(engine.inspect_container(&id).await.unwrap(), None);
    engine
        .remove_container(&id)
        .await
        .expect("removing a missing container is fine");
    assert!(engine.list_containers().await.unwrap().is_empty());
    match engine.start_container(&id).await {
        Err(EngineError::NotFound(_)) => {}
        other => panic!("start of a removed container: {other:?}"),
    }

    // The bind-mounted state directory is not a volume: it survives.
    let written = std::fs::read_to_string(state.path().join("written.txt")).unwrap();
    assert_eq!(written.trim(), "inside");
    assert!(state.path().join("kept.txt").exists());
}

#[tokio::test]
async fn unreachable_daemon_is_unavailable() {
    match DockerEngine::connect(Some("unix:///nonexistent.sock"), "bt-none").await {
        Err(EngineError::Unavailable(message)) => {
            assert!(message.contains("/nonexistent.sock"), "{message}")
        }
        other => panic!("missing socket: {other:?}"),
    }
    // Port 1 on loopback: nothing listens there.
    match DockerEngine::connect(Some("tcp://127.0.0.1:1"), "bt-none").await {
        Err(EngineError::Unavailable(message)) => {
            assert!(message.contains("127.0.0.1:1"), "{message}")
        }
        other => panic!("closed port: {other:?}"),
    }
    match DockerEngine::connect(Some("ssh://somewhere"), "bt-none").await {
        Err(EngineError::Unavailable(message)) => assert!(message.contains("ssh://"), "{message}"),
        other => panic!("unsupported scheme: {other:?}"),
    }
    // The local daemon, explicitly and by default, after negotiation.
    let local = DockerEngine::connect(Some("unix:///var/run/docker.sock"), "bt-none")
        .await
        .unwrap();
    local.ping().await.unwrap();
    engine("bt-none").await.ping().await.unwrap();
}

fn now_ms() -> i64 {
    let since = SystemTime::now().duration_since(UNIX_EPOCH).unwrap();
    i64::try_from(since.as_millis()).unwrap()
}

type Events = futures_util::stream::BoxStream<'static, Result<EngineEvent, EngineError>>;

/// The next event, failing (not hanging) when none comes within 10 s.
async fn next_event(events: &mut Events, waiting_for: &str) -> EngineEvent {
    match tokio::time::timeout(Duration::from_secs(10), events.next()).await {
        Ok(Some(Ok(event))) => event,
        Ok(Some(Err(e))) => panic!("events stream failed while waiting for {waiting_for}: {e}"),
        Ok(None) => panic!("events stream ended while waiting for {waiting_for}"),
        Err(_) => panic!("no event within 10 s while waiting for {waiting_for}"),
    }
}

async fn kill(docker: &Docker, id: &str) {
    docker
        .kill_container(id, Some(KillContainerOptions { signal: "KILL" }))
        .await
        .unwrap();
}

async fn force_remove(docker: &Docker, id: &str) {
    let options = RemoveContainerOptions {
        force: true,
        ..Default::default()
    };
    docker.remove_container(id, Some(options)).await.unwrap();
}

#[tokio::test]
async fn events_report_this_owners_container_lifecycle_only() {
    let owner = unique("bt");
    let other = unique("bt");
    let name = format!("{owner}-events");
    let foreign_name = format!("{other}-events");
    let _cleanup = Cleanup {
        owners: vec![owner.clone(), other.clone()],
        names: vec![],
        networks: vec![],
    };
    let engine = engine(&owner).await;
    let other_engine = self::engine(&other).await;
    let docker = engine.client().clone();
    let image_ref = format!("{}:v1", test_image());
    engine
        .pull_image(&image_ref, &ignore_progress)
        .await
        .unwrap();

    // Subscribed here, but not polled until everything below has happened:
    // the stream must still deliver what happened since `events()`.
    let mut events = engine.events();
    let mut other_events = other_engine.events();

    // Another owner's whole lifecycle first: since events arrive in order,
    // a leak would show up before this owner's own events.
    create_raw(
        &docker,
        &foreign_name,
        &image_ref,
        HashMap::from([(LABEL_OWNER.to_string(), other.clone())]),
    )
    .await;
    docker
        .start_container(&foreign_name, None::<StartContainerOptions<String>>)
        .await
        .unwrap();
    kill(&docker, &foreign_name).await;
    force_remove(&docker, &foreign_name).await;

    let before_create = now_ms();
    create_raw(
        &docker,
        &name,
        &image_ref,
        HashMap::from([
            (LABEL_OWNER.to_string(), owner.clone()),
            (LABEL_RUNTIME_ID.to_string(), "rt-events".to_string()),
        ]),
    )
    .await;
    let after_create = now_ms();
    let id = engine.inspect_container(&name).await.unwrap().unwrap().id;
    engine.start_container(&id).await.unwrap();

    // Creation times: inspect has sub-second precision, the list whole
    // seconds (truncated).
    let inspected = engine.inspect_container(&id).await.unwrap().unwrap();
    let created = inspected
        .created_at_ms
        .expect("inspect has a creation time");
    assert!(
        (before_create - 2000..=after_create + 2000).contains(&created),
        "inspect created_at_ms {created} vs {before_create}..{after_create}"
    );
    let listed = engine.list_containers().await.unwrap();
    assert_eq!(listed.len(), 1);
    let listed_created = listed[0]
        .created_at_ms
        .expect("the list has a creation time");
    assert_eq!(listed_created % 1000, 0);
    assert!(
        (created - 1000..=created).contains(&listed_created),
        "list created_at_ms {listed_created} vs inspect {created}"
    );

    let started = next_event(&mut events, "start").await;
    assert_eq!(started.kind, EngineEventKind::Started, "{started:?}");
    assert_eq!(started.container_id, id);
    assert_eq!(started.labels.get(LABEL_OWNER), Some(&owner));
    assert_eq!(
        started.labels.get(LABEL_RUNTIME_ID).map(String::as_str),
        Some("rt-events")
    );
    assert!(!started.labels.contains_key("name"), "{:?}", started.labels);
    // Milliseconds, from Docker's clock (the same machine): a sanity check
    // of the unit, not of latency.
    assert!(
        (before_create - 60_000..=now_ms() + 60_000).contains(&started.at_ms),
        "at_ms {} vs now {}",
        started.at_ms,
        now_ms()
    );

    // busybox httpd as PID 1 ignores SIGTERM; SIGKILL exits with 137.
    kill(&docker, &id).await;
    let died = next_event(&mut events, "die").await;
    assert_eq!(
        died.kind,
        EngineEventKind::Died {
            exit_code: Some(137)
        },
        "{died:?}"
    );
    assert_eq!(died.container_id, id);
    assert!(died.at_ms >= started.at_ms);

    force_remove(&docker, &id).await;
    let destroyed = next_event(&mut events, "destroy").await;
    assert_eq!(destroyed.kind, EngineEventKind::Destroyed, "{destroyed:?}");
    assert_eq!(destroyed.container_id, id);
    assert_eq!(destroyed.labels.get(LABEL_OWNER), Some(&owner));

    // The other owner's stream saw its own container, and only that.
    let foreign_started = next_event(&mut other_events, "the other owner's start").await;
    assert_eq!(foreign_started.kind, EngineEventKind::Started);
    assert_eq!(foreign_started.labels.get(LABEL_OWNER), Some(&other));
    assert_ne!(foreign_started.container_id, id);
}

/// Forwards TCP connections on loopback to the local Docker socket, and can
/// cut them all, standing in for a daemon restart or a broken network.
struct Proxy {
    addr: std::net::SocketAddr,
    open: Arc<Mutex<Vec<std::net::TcpStream>>>,
    upstream: Arc<Mutex<Vec<std::os::unix::net::UnixStream>>>,
}

impl Proxy {
    fn start() -> Proxy {
        use std::net::{Shutdown, TcpListener};
        use std::os::unix::net::UnixStream;
        let socket = match std::env::var("DOCKER_HOST") {
            Ok(h) if !h.is_empty() => h
                .strip_prefix("unix://")
                .unwrap_or_else(|| panic!("this test proxies a unix socket, not {h}"))
                .to_string(),
            _ => "/var/run/docker.sock".to_string(),
        };
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let open: Arc<Mutex<Vec<std::net::TcpStream>>> = Arc::default();
        let upstream: Arc<Mutex<Vec<UnixStream>>> = Arc::default();
        let (open_list, upstream_list) = (open.clone(), upstream.clone());
        std::thread::spawn(move || {
            for client in listener.incoming() {
                let Ok(client) = client else { break };
                let daemon = UnixStream::connect(&socket).unwrap();
                open_list.lock().unwrap().push(client.try_clone().unwrap());
                upstream_list
                    .lock()
                    .unwrap()
                    .push(daemon.try_clone().unwrap());
                let (mut from_client, mut to_daemon) =
                    (client.try_clone().unwrap(), daemon.try_clone().unwrap());
                std::thread::spawn(move || {
                    let _ = std::io::copy(&mut from_client, &mut to_daemon);
                    let _ = to_daemon.shutdown(Shutdown::Write);
                });
                let (mut from_daemon, mut to_client) = (daemon, client);
                std::thread::spawn(move || {
                    let _ = std::io::copy(&mut from_daemon, &mut to_client);
                    let _ = to_client.shutdown(Shutdown::Both);
                });
            }
        });
        Proxy {
            addr,
            open,
            upstream,
        }
    }

    fn cut(&self) {
        for stream in self.open.lock().unwrap().drain(..) {
            let _ = stream.shutdown(std::net::Shutdown::Both);
        }
        for stream in self.upstream.lock().unwrap().drain(..) {
            let _ = stream.shutdown(std::net::Shutdown::Both);
        }
    }
}

#[tokio::test]
async fn events_stream_ends_when_the_connection_breaks() {
    let owner = unique("bt");
    let name = format!("{owner}-cut");
    let _cleanup = Cleanup {
        owners: vec![owner.clone()],
        names: vec![],
        networks: vec![],
    };
    let proxy = Proxy::start();
    let engine = DockerEngine::connect(Some(&format!("tcp://{}", proxy.addr)), &owner)
        .await
        .unwrap();
    let docker = engine.client().clone();
    let image_ref = format!("{}:v1", test_image());
    engine
        .pull_image(&image_ref, &ignore_progress)
        .await
        .unwrap();

    let mut events = engine.events();
    create_raw(
        &docker,
        &name,
        &image_ref,
        HashMap::from([(LABEL_OWNER.to_string(), owner.clone())]),
    )
    .await;
    engine.start_container(&name).await.unwrap();
    // The stream is connected and delivering.
    let started = next_event(&mut events, "start").await;
    assert_eq!(started.kind, EngineEventKind::Started);

    proxy.cut();
    match tokio::time::timeout(Duration::from_secs(10), events.next()).await {
        Ok(None) => {}
        Ok(Some(Err(EngineError::Unavailable(message)))) => {
            assert!(message.contains(&proxy.addr.to_string()), "{message}");
            let after = tokio::time::timeout(Duration::from_secs(10), events.next()).await;
            assert!(
                matches!(after, Ok(None)),
                "the stream ends after its error: {after:?}"
            );
        }
        Ok(other) => panic!("after the connection broke: {other:?}"),
        Err(_) => panic!("the events stream did not end within 10 s of the connection breaking"),
    }
}
