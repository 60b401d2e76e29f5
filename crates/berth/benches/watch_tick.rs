//! Registry requests and wall time of one image-watch tick, with 1,000
//! runtimes over 5 watched templates, against the local registry. The
//! target is 5 manifest HEADs per tick (one per distinct repo:tag) and
//! token requests only when a token expires.
//!
//! `bash scripts/bench.sh watch_tick`; under `cargo test` it runs a smoke size.

use std::process::Command;
use std::sync::Arc;
use std::time::Instant;

use berth::adapters::registry::{OciRegistry, RegistryConfig};
use berth::app::start;
use berth::config::{Config, ServeArgs};
use berth::services::watcher::ImageWatcher;
use berth::services::Caller;
use berth_core::operation::{Operation, OperationKind, Source};
use berth_core::runtime::RuntimeRecord;
use berth_core::status::RuntimeStatus;
use berth_core::template::Template;

#[tokio::main]
pub async fn main() {
    let benching = std::env::args().any(|a| a == "--bench");
    let (runtimes, ticks) = if benching { (1000, 20) } else { (50, 2) };
    let registry =
        std::env::var("BERTH_TEST_REGISTRY").expect("BERTH_TEST_REGISTRY: run scripts/bench.sh");
    let image = std::env::var("BERTH_TEST_IMAGE").expect("BERTH_TEST_IMAGE");
    let suffix = &uuid::Uuid::now_v7().simple().to_string()[22..];
    let owner = format!("bt-watch-{suffix}");
    let data = tempfile::tempdir().unwrap();
    let args = ServeArgs {
        listen: Some("127.0.0.1:0".into()),
        data_dir: Some(data.path().to_path_buf()),
        owner: Some(owner.clone()),
        network: Some(owner.clone()),
        ..Default::default()
    };
    let server = start(Config::from_toml(&args, "", "bench").unwrap())
        .await
        .unwrap();
    let s = server.services.clone();
    let caller = Caller::new(Source::Api);

    // Five repositories, one watched template each.
    for i in 0..5 {
        let target = format!("{registry}/berth-test/watch-{i}:stable");
        assert!(Command::new("docker")
            .args(["tag", &format!("{image}:v1"), &target])
            .status()
            .unwrap()
            .success());
        assert!(Command::new("docker")
            .args(["push", "-q", &target])
            .output()
            .unwrap()
            .status
            .success());
        let mut t = Template::new(
            &format!("w{i}"),
            berth_core::image::Repository::parse(&format!("{registry}/berth-test/watch-{i}"))
                .unwrap(),
        );
        t.tag = "stable".into();
        t.watch = true;
        s.ctx
            .store
            .put_template(&t, &s.ctx.begin_op(OperationKind::TemplatePut, &caller))
            .await
            .unwrap();
    }
    // Runtime records spread over them (the watcher's cost must not grow with them).
    for i in 0..runtimes {
        let mut rec = RuntimeRecord::new(
            &format!("rt-{i}"),
            &format!("w{}", i % 5),
            Default::default(),
            0,
        );
        rec.status = RuntimeStatus::Stopped;
        let mut op = Operation::begin(format!("op-{i}"), OperationKind::Start, Source::Api, 0)
            .for_runtime(&rec.id, &rec.template);
        op.succeed(0);
        s.ctx.store.record(Some(&rec), &op).await.unwrap();
    }

    let client =
        Arc::new(OciRegistry::new(RegistryConfig::default(), s.ctx.clock.clone()).unwrap());
    let watcher = ImageWatcher::new(
        s.ctx.clone(),
        client.clone(),
        s.pins.clone(),
        s.rollouts.clone(),
        s.refresh.clone(),
    );
    let seed = watcher.tick().await.unwrap();
    assert_eq!(seed.seeded.len(), 5, "{seed:?}");
    let before = client.request_count();
    let mut times = Vec::new();
    for _ in 0..ticks {
        let t0 = Instant::now();
        let r = watcher.tick().await.unwrap();
        times.push(t0.elapsed());
        assert!(r.failed.is_empty(), "{r:?}");
    }
    let after = client.request_count();
    times.sort();
    let per_tick = |a: u64, b: u64| (a - b) as f64 / ticks as f64;
    println!("image watch tick: {runtimes} runtimes over 5 templates, {ticks} ticks after the seeding one");
    println!(
        "  requests per tick: {:.1} manifest HEADs, {:.1} GETs, {:.1} token requests   (target: 5 HEADs, tokens only on expiry)",
        per_tick(after.manifest_heads, before.manifest_heads),
        per_tick(after.manifest_gets, before.manifest_gets),
        per_tick(after.token_requests, before.token_requests),
    );
    println!(
        "  wall time per tick: median {:.1} ms, max {:.1} ms",
        times[times.len() / 2].as_secs_f64() * 1e3,
        times[times.len() - 1].as_secs_f64() * 1e3
    );
    server.shutdown().await;
    let _ = Command::new("docker")
        .args(["network", "rm", &owner])
        .output();
}
