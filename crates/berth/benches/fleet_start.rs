//! Fleet start: 50 runtimes started at once through the API of the real
//! `berth serve` binary (concurrent `POST /v1/runtimes`, wall time until
//! the last `201 running`) against 50 raw Docker API create + starts of the
//! same image at the same concurrency, interleaved round by round
//! (target ≤ 1.05× the wall time, DESIGN.md "Performance targets").
//!
//! `bash scripts/bench.sh fleet_start` (it starts the registry and sets
//! `BERTH_TEST_IMAGE`). `BENCH_FLEET` sets the fleet size (default 50),
//! `BENCH_ROUNDS` the rounds per side (default 5). Under `cargo test` it
//! runs one round of 3 as a smoke test.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use berth_core::container::{
    LABEL_GENERATION, LABEL_IMAGE_REF, LABEL_OWNER, LABEL_RUNTIME_ID, LABEL_TEMPLATE,
};
use bollard::container::{
    Config as ContainerConfig, CreateContainerOptions, NetworkingConfig, RemoveContainerOptions,
};
use bollard::models::{EndpointSettings, HostConfig};
use bollard::network::CreateNetworkOptions;
use bollard::Docker;
use serde_json::json;
use tokio::task::JoinSet;

mod common;

fn env_or(name: &str, benching: bool, bench: usize, smoke: usize) -> usize {
    if !benching {
        return smoke;
    }
    std::env::var(name)
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(bench)
}

fn median(v: &[Duration]) -> Duration {
    let mut v = v.to_vec();
    v.sort();
    v[v.len() / 2]
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// Starts `ids` at once through the API; the wall time until the last
/// answer, each of which must be `201 running`.
async fn berth_fleet(http: &reqwest::Client, base: &str, ids: &[String]) -> Duration {
    let mut set = JoinSet::new();
    let t0 = Instant::now();
    for id in ids {
        let (http, url, id) = (http.clone(), format!("{base}/v1/runtimes"), id.clone());
        set.spawn(async move {
            let resp = http
                .post(url)
                .json(&json!({"id": id, "template": "fleet"}))
                .send()
                .await
                .expect("POST /v1/runtimes");
            let status = resp.status();
            let body: serde_json::Value = resp.json().await.expect("json");
            assert_eq!(status, 201, "{id}: {body}");
            assert_eq!(body["status"], "running", "{id}: {body}");
        });
    }
    while let Some(done) = set.join_next().await {
        done.expect("a start task");
    }
    t0.elapsed()
}

/// Removes `ids` through the API (not timed), all at once.
async fn berth_remove(http: &reqwest::Client, base: &str, ids: &[String]) {
    let mut set = JoinSet::new();
    for id in ids {
        let (http, url) = (http.clone(), format!("{base}/v1/runtimes/{id}"));
        set.spawn(async move {
            let resp = http.delete(url).send().await.expect("DELETE");
            assert!(resp.status().is_success(), "{}", resp.status());
        });
    }
    while let Some(done) = set.join_next().await {
        done.expect("a remove task");
    }
}

/// What the raw side needs to make a container shaped like berth's.
struct Raw {
    docker: Docker,
    image: String,
    owner: String,
    network: String,
    state: PathBuf,
}

/// Creates and starts `names` at once through the Docker API, with the
/// shape of berth's containers (network and alias, labels, env, a state
/// bind mount, its directory made first); the wall time until the last
/// start returned, and the container ids.
async fn raw_fleet(raw: &Arc<Raw>, names: &[String]) -> (Duration, Vec<String>) {
    let mut set = JoinSet::new();
    let t0 = Instant::now();
    for name in names {
        let (raw, name) = (raw.clone(), name.clone());
        set.spawn(async move {
            let dir = raw.state.join(&name);
            tokio::fs::create_dir_all(&dir).await.expect("state dir");
            let created = raw
                .docker
                .create_container(
                    Some(CreateContainerOptions {
                        name: name.clone(),
                        platform: None,
                    }),
                    ContainerConfig {
                        image: Some(raw.image.clone()),
                        env: Some(vec![format!("BERTH_RUNTIME_ID={name}")]),
                        // berth's labels, under another owner: the berth
                        // under test neither sees nor touches these.
                        labels: Some(HashMap::from([
                            (LABEL_OWNER.to_string(), raw.owner.clone()),
                            (LABEL_RUNTIME_ID.to_string(), name.clone()),
                            (LABEL_TEMPLATE.to_string(), "fleet".to_string()),
                            (LABEL_IMAGE_REF.to_string(), raw.image.clone()),
                            (LABEL_GENERATION.to_string(), "1".to_string()),
                        ])),
                        host_config: Some(HostConfig {
                            binds: Some(vec![format!("{}:/var/lib/runtime", dir.display())]),
                            network_mode: Some(raw.network.clone()),
                            ..Default::default()
                        }),
                        networking_config: Some(NetworkingConfig {
                            endpoints_config: HashMap::from([(
                                raw.network.clone(),
                                EndpointSettings {
                                    aliases: Some(vec![name.clone()]),
                                    ..Default::default()
                                },
                            )]),
                        }),
                        ..Default::default()
                    },
                )
                .await
                .expect("raw create");
            raw.docker
                .start_container::<String>(&created.id, None)
                .await
                .expect("raw start");
            created.id
        });
    }
    let mut ids = Vec::new();
    while let Some(done) = set.join_next().await {
        ids.push(done.expect("a raw task"));
    }
    (t0.elapsed(), ids)
}

async fn raw_remove(raw: &Arc<Raw>, ids: Vec<String>) {
    let mut set = JoinSet::new();
    for id in ids {
        let raw = raw.clone();
        set.spawn(async move {
            raw.docker
                .remove_container(
                    &id,
                    Some(RemoveContainerOptions {
                        force: true,
                        v: true,
                        ..Default::default()
                    }),
                )
                .await
                .expect("raw remove");
        });
    }
    while let Some(done) = set.join_next().await {
        done.expect("a raw remove task");
    }
}

#[tokio::main]
pub async fn main() {
    let image = std::env::var("BERTH_TEST_IMAGE")
        .expect("BERTH_TEST_IMAGE is not set: run `bash scripts/bench.sh fleet_start`");
    // `cargo bench` passes --bench; under `cargo test --all-targets` this
    // runs a smoke size, so the benchmark itself stays tested.
    let benching = std::env::args().any(|a| a == "--bench");
    let fleet = env_or("BENCH_FLEET", benching, 50, 3);
    let rounds = env_or("BENCH_ROUNDS", benching, 5, 1);
    let data = tempfile::tempdir().expect("tempdir");
    // Killed, with every container and network of both owners, on drop
    // (a failed assertion included).
    let server = common::BerthProcess::start("bt-fleet", data.path(), &[]).await;
    let owner = server.owner.clone();
    let base = server.base.clone();
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(fleet)
        .timeout(Duration::from_secs(300))
        .build()
        .expect("client");
    // A short stop grace: the busybox httpd ignores SIGTERM, and removal
    // between rounds is not timed.
    let resp = http
        .put(format!("{base}/v1/templates/fleet"))
        .json(&json!({"image": image, "tag": "v1", "port": 8080, "stop_grace": "1s"}))
        .send()
        .await
        .expect("put template");
    assert!(resp.status().is_success(), "{}", resp.status());

    let docker = Docker::connect_with_local_defaults()
        .expect("docker")
        .negotiate_version()
        .await
        .expect("docker version");
    let raw_owner = format!("{owner}-raw");
    docker
        .create_network(CreateNetworkOptions {
            name: raw_owner.clone(),
            ..Default::default()
        })
        .await
        .expect("raw network");
    let raw_state = data.path().canonicalize().unwrap().join("raw-state");
    let raw = Arc::new(Raw {
        docker,
        image: format!("{image}:v1"),
        owner: raw_owner.clone(),
        network: raw_owner,
        state: raw_state,
    });

    // Warm-up: one of each (image cache, berth's network, connections).
    let warm = vec!["warm".to_string()];
    berth_fleet(&http, &base, &warm).await;
    berth_remove(&http, &base, &warm).await;
    let (_, ids) = raw_fleet(&raw, &[format!("{owner}-raw-warm")]).await;
    raw_remove(&raw, ids).await;

    println!("fleet start: {fleet} at once, {rounds} rounds, interleaved");
    let (mut berth_times, mut raw_times) = (Vec::new(), Vec::new());
    for round in 0..rounds {
        let ids: Vec<String> = (0..fleet).map(|i| format!("r{round}-{i}")).collect();
        let names: Vec<String> = (0..fleet)
            .map(|i| format!("{owner}-raw-r{round}-{i}"))
            .collect();
        // Alternate which side goes first.
        let (b, r) = if round % 2 == 0 {
            let b = berth_fleet(&http, &base, &ids).await;
            berth_remove(&http, &base, &ids).await;
            let (r, raw_ids) = raw_fleet(&raw, &names).await;
            raw_remove(&raw, raw_ids).await;
            (b, r)
        } else {
            let (r, raw_ids) = raw_fleet(&raw, &names).await;
            raw_remove(&raw, raw_ids).await;
            let b = berth_fleet(&http, &base, &ids).await;
            berth_remove(&http, &base, &ids).await;
            (b, r)
        };
        println!(
            "  round {round}: raw {:8.1} ms   berth {:8.1} ms   ({:.3}x)",
            ms(r),
            ms(b),
            b.as_secs_f64() / r.as_secs_f64()
        );
        berth_times.push(b);
        raw_times.push(r);
    }
    let (bm, rm) = (median(&berth_times), median(&raw_times));
    println!(
        "  raw Docker create+start, {fleet} at once : median wall {:8.1} ms",
        ms(rm)
    );
    println!(
        "  berth POST /v1/runtimes, {fleet} at once : median wall {:8.1} ms",
        ms(bm)
    );
    println!(
        "  ratio (medians)                        : {:.3}x   (target <= 1.05x)",
        bm.as_secs_f64() / rm.as_secs_f64()
    );
}
