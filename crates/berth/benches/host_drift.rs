//! Host-drift figures against the real engine and a private Redis:
//! - detection latency: `docker rm -f` of a managed container →
//!   `container_disappeared` stored (target p99 ≤ 250 ms);
//! - one full reconcile pass with N managed containers;
//! - stream throughput: stop jobs for already-stopped runtimes (no Docker
//!   work), jobs/s end to end (XADD → result on `runtime:job_results`).
//!
//! `bash scripts/bench.sh`; under `cargo test` it runs tiny sizes as a smoke test.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use berth::app::{start, RunningServer};
use berth::config::{Config, ServeArgs};
use berth::ports::store::EventFilter;
use berth::services::lifecycle::StartRequest;
use berth::services::Caller;
use berth_core::event::HealthEventType;
use berth_core::operation::Source;
use berth_core::template::Template;

fn pct(v: &mut [Duration], p: f64) -> f64 {
    v.sort();
    v[((v.len() as f64 - 1.0) * p).round() as usize].as_secs_f64() * 1e3
}

struct Redis(Child, u16);

impl Drop for Redis {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

async fn private_redis() -> Redis {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let child = Command::new("redis-server")
        .args([
            "--port",
            &port.to_string(),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
        ])
        .stdout(Stdio::null())
        .spawn()
        .expect("redis-server (run scripts/bench.sh)");
    // Owned at once, so that Drop reaps it on every path.
    let redis = Redis(child, port);
    for _ in 0..100 {
        if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return redis;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("redis-server did not start");
}

async fn boot(owner: &str, data: &std::path::Path, redis: Option<String>) -> RunningServer {
    let args = ServeArgs {
        listen: Some("127.0.0.1:0".into()),
        data_dir: Some(data.to_path_buf()),
        owner: Some(owner.into()),
        network: Some(owner.into()),
        redis_url: redis,
        ..Default::default()
    };
    start(Config::from_toml(&args, "", "bench").unwrap())
        .await
        .expect("berth starts")
}

fn cleanup(owner: &str) {
    let out = Command::new("docker")
        .args([
            "ps",
            "-aq",
            "--filter",
            &format!("label=io.berth.owner={owner}"),
        ])
        .output()
        .unwrap();
    let ids: Vec<String> = String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .map(str::to_string)
        .collect();
    if !ids.is_empty() {
        let _ = Command::new("docker")
            .args(["rm", "-f"])
            .args(&ids)
            .output();
    }
    let _ = Command::new("docker")
        .args(["network", "rm", owner])
        .output();
}

#[tokio::main]
pub async fn main() {
    let benching = std::env::args().any(|a| a == "--bench");
    let image = std::env::var("BERTH_TEST_IMAGE").expect("BERTH_TEST_IMAGE: run scripts/bench.sh");
    let sleeper = std::env::var("BERTH_TEST_SLEEPER").unwrap_or_else(|_| image.clone());
    let (samples, tick_containers, jobs) = if benching {
        (50, 200, 2000)
    } else {
        (3, 3, 40)
    };
    let suffix = &uuid::Uuid::now_v7().simple().to_string()[22..];
    let owner = format!("bt-drift-{suffix}");
    let data = tempfile::tempdir().unwrap();
    let redis = private_redis().await;
    let server = boot(
        &owner,
        data.path(),
        Some(format!("redis://127.0.0.1:{}", redis.1)),
    )
    .await;
    let s = server.services.clone();
    let caller = Caller::new(Source::Api);
    for (name, img, tag) in [
        ("app", image.as_str(), "v1"),
        ("idle", sleeper.as_str(), "v1"),
    ] {
        let mut t = Template::new(name, berth_core::image::Repository::parse(img).unwrap());
        t.tag = tag.into();
        // busybox as PID 1 ignores SIGTERM; don't wait 10 s per stop.
        t.stop_grace = Duration::from_secs(1);
        s.ctx
            .store
            .put_template(
                &t,
                &s.ctx
                    .begin_op(berth_core::operation::OperationKind::TemplatePut, &caller),
            )
            .await
            .unwrap();
    }
    let start_one = |id: String, template: &'static str| {
        let s = s.clone();
        let caller = caller.clone();
        async move {
            s.runtimes
                .start(
                    StartRequest {
                        id,
                        template: template.into(),
                        env: Default::default(),
                    },
                    &caller,
                )
                .await
                .expect("start")
        }
    };

    // 1. Detection latency.
    let mut latencies = Vec::new();
    let mut rm_calls = Vec::new();
    for i in 0..samples {
        let id = format!("det-{i}");
        let rec = match start_one(id.clone(), "idle").await {
            berth::services::lifecycle::StartOutcome::Started(r)
            | berth::services::lifecycle::StartOutcome::AlreadyRunning(r) => r,
        };
        let cid = rec.container_id.unwrap();
        let t0 = Instant::now();
        let out = Command::new("docker")
            .args(["rm", "-f", &cid])
            .output()
            .unwrap();
        assert!(out.status.success());
        rm_calls.push(t0.elapsed());
        loop {
            let found = s
                .ctx
                .store
                .list_health_events(&EventFilter {
                    runtime_id: Some(id.clone()),
                    event_type: Some(HealthEventType::ContainerDisappeared),
                    limit: 1,
                })
                .await
                .unwrap();
            if !found.is_empty() {
                latencies.push(t0.elapsed());
                break;
            }
            assert!(
                t0.elapsed() < Duration::from_secs(30),
                "no container_disappeared for {id}"
            );
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    }
    println!("detection latency, {samples} samples (docker rm -f → container_disappeared stored)");
    println!(
        "  p50 {:6.1} ms   p99 {:6.1} ms   max {:6.1} ms   (target p99 ≤ 250 ms)",
        pct(&mut latencies, 0.5),
        pct(&mut latencies, 0.99),
        pct(&mut latencies, 1.0)
    );
    println!(
        "  of which the `docker rm -f` command itself: p50 {:6.1} ms",
        pct(&mut rm_calls, 0.5)
    );

    // 2. A full reconcile pass with N managed containers.
    for i in 0..tick_containers {
        start_one(format!("tick-{i}"), "idle").await;
    }
    let _ = s.reconciler.run_once().await.unwrap();
    let mut ticks = Vec::new();
    for _ in 0..10 {
        let t0 = Instant::now();
        let report = s.reconciler.run_once().await.unwrap();
        ticks.push(t0.elapsed());
        assert!(report.failed.is_empty(), "{report:?}");
    }
    println!(
        "reconcile pass against the real engine with {tick_containers} containers: median {:6.1} ms, max {:6.1} ms (10 passes)",
        pct(&mut ticks, 0.5),
        pct(&mut ticks, 1.0)
    );

    // 3. Stream throughput: stop jobs for already-stopped runtimes.
    let stopped: Vec<String> = (0..tick_containers.min(20))
        .map(|i| format!("tick-{i}"))
        .collect();
    for id in &stopped {
        s.runtimes.stop(id, &caller).await.unwrap();
    }
    let client = redis::Client::open(format!("redis://127.0.0.1:{}", redis.1)).unwrap();
    let mut con = client.get_multiplexed_async_connection().await.unwrap();
    let t0 = Instant::now();
    let mut pipe = redis::pipe();
    for j in 0..jobs {
        pipe.cmd("XADD")
            .arg("runtime:stop_jobs")
            .arg("*")
            .arg("job_id")
            .arg(format!("tp-{j}"))
            .arg("runtime_id")
            .arg(&stopped[j % stopped.len()])
            .arg("remove")
            .arg("false")
            .ignore();
    }
    pipe.query_async::<()>(&mut con).await.unwrap();
    loop {
        let n: usize = redis::cmd("XLEN")
            .arg("runtime:job_results")
            .query_async(&mut con)
            .await
            .unwrap();
        if n >= jobs {
            break;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(300),
            "only {n} of {jobs} results"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let took = t0.elapsed();
    println!(
        "stream throughput: {jobs} stop jobs (no Docker work) in {:.2} s = {:.0} jobs/s end to end",
        took.as_secs_f64(),
        jobs as f64 / took.as_secs_f64()
    );

    server.shutdown().await;
    cleanup(&owner);
}
