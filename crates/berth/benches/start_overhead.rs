//! Start overhead: berth's API start → running, against the raw Docker API
//! create + start of the same local image, interleaved in one run.
//!
//! Run with `bash scripts/bench.sh` (it starts the registry and sets
//! `BERTH_TEST_IMAGE`). `BENCH_SAMPLES` sets the samples per side (default 30).
//! Under `cargo test` it runs two samples as a smoke test.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use berth::app::start;
use berth::config::{Config, ServeArgs};
use bollard::container::{
    Config as ContainerConfig, CreateContainerOptions, RemoveContainerOptions,
};
use bollard::models::{EndpointSettings, HostConfig};
use bollard::network::CreateNetworkOptions;
use bollard::Docker;
use serde_json::json;

fn median(v: &mut [Duration]) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn percentile(v: &mut [Duration], p: f64) -> Duration {
    v.sort();
    let i = ((v.len() as f64 - 1.0) * p).round() as usize;
    v[i]
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

#[tokio::main]
pub async fn main() {
    let image = std::env::var("BERTH_TEST_IMAGE")
        .expect("BERTH_TEST_IMAGE is not set: run `bash scripts/bench.sh`");
    // `cargo bench` passes --bench; under `cargo test --all-targets` this
    // runs as a two-sample smoke test, so the benchmark itself stays tested.
    let benching = std::env::args().any(|a| a == "--bench");
    let samples: usize = std::env::var("BENCH_SAMPLES")
        .ok()
        .and_then(|s| s.parse().ok())
        .filter(|_| benching)
        .unwrap_or(if benching { 30 } else { 2 });
    let suffix = &uuid::Uuid::now_v7().simple().to_string()[22..];
    let owner = format!("bt-bench-{suffix}");
    let data_dir = tempfile::tempdir().expect("tempdir");

    let args = ServeArgs {
        listen: Some("127.0.0.1:0".into()),
        data_dir: Some(data_dir.path().to_path_buf()),
        owner: Some(owner.clone()),
        network: Some(owner.clone()),
        ..Default::default()
    };
    let server = start(Config::from_toml(&args, "", "bench").expect("config"))
        .await
        .expect("berth starts");
    let base = format!("http://{}", server.addr);
    let http = reqwest::Client::new();
    let resp = http
        .put(format!("{base}/v1/templates/bench"))
        .json(&json!({"image": image, "tag": "v1", "port": 8080}))
        .send()
        .await
        .expect("put template");
    assert!(resp.status().is_success());

    let docker = Docker::connect_with_local_defaults()
        .expect("docker")
        .negotiate_version()
        .await
        .expect("docker version");
    // The raw side gets the same shape of container: network, alias,
    // labels, env and a state bind mount.
    let raw_network = format!("{owner}-raw");
    docker
        .create_network(CreateNetworkOptions {
            name: raw_network.clone(),
            ..Default::default()
        })
        .await
        .expect("raw network");
    let raw_state = data_dir.path().canonicalize().unwrap().join("raw-state");
    std::fs::create_dir_all(&raw_state).unwrap();
    let image_ref = format!("{image}:v1");

    // Warm up both paths once (image cache, network creation).
    let mut berth_times = Vec::new();
    let mut raw_times = Vec::new();
    for i in 0..=samples {
        // berth: POST /v1/runtimes until the answer says running.
        let id = format!("b{i}");
        let t0 = Instant::now();
        let resp = http
            .post(format!("{base}/v1/runtimes"))
            .json(&json!({"id": id, "template": "bench"}))
            .send()
            .await
            .expect("start");
        let status = resp.status();
        let body: serde_json::Value = resp.json().await.expect("json");
        let took = t0.elapsed();
        assert_eq!(status, 201, "{body}");
        assert_eq!(body["status"], "running");
        if i > 0 {
            berth_times.push(took);
        }
        http.delete(format!("{base}/v1/runtimes/{id}"))
            .send()
            .await
            .expect("rm");

        // raw Docker: create + start.
        let name = format!("{owner}-raw{i}");
        let t0 = Instant::now();
        let created = docker
            .create_container(
                Some(CreateContainerOptions {
                    name: name.clone(),
                    platform: None,
                }),
                ContainerConfig {
                    image: Some(image_ref.clone()),
                    env: Some(vec![format!("BERTH_RUNTIME_ID={name}")]),
                    labels: Some(HashMap::from([(
                        "io.berth.owner".to_string(),
                        owner.clone(),
                    )])),
                    host_config: Some(HostConfig {
                        binds: Some(vec![format!("{}:/var/lib/runtime", raw_state.display())]),
                        network_mode: Some(raw_network.clone()),
                        ..Default::default()
                    }),
                    networking_config: Some(bollard::container::NetworkingConfig {
                        endpoints_config: HashMap::from([(
                            raw_network.clone(),
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
        docker
            .start_container::<String>(&created.id, None)
            .await
            .expect("raw start");
        let took = t0.elapsed();
        if i > 0 {
            raw_times.push(took);
        }
        docker
            .remove_container(
                &created.id,
                Some(RemoveContainerOptions {
                    force: true,
                    ..Default::default()
                }),
            )
            .await
            .expect("raw remove");
    }

    let (bm, rm) = (median(&mut berth_times), median(&mut raw_times));
    let (b90, r90) = (
        percentile(&mut berth_times, 0.9),
        percentile(&mut raw_times, 0.9),
    );
    println!("start overhead, {samples} samples each, interleaved");
    println!(
        "  raw Docker create+start : median {:7.1} ms   p90 {:7.1} ms",
        ms(rm),
        ms(r90)
    );
    println!(
        "  berth API start→running : median {:7.1} ms   p90 {:7.1} ms",
        ms(bm),
        ms(b90)
    );
    println!(
        "  ratio (medians)         : {:.3}x   (target <= 1.10x)",
        bm.as_secs_f64() / rm.as_secs_f64()
    );

    server.shutdown().await;
    let _ = docker.remove_network(&raw_network).await;
    let _ = docker.remove_network(&owner).await;
}
