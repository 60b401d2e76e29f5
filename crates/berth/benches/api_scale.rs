//! The real `berth serve` binary with 10,000 runtime records (SQLite):
//! - `GET /v1/runtimes` latency, p50/p99 over 200 requests (target p99 ≤ 50 ms);
//! - resident memory of the idle process (target ≤ 60 MB).
//!
//! `bash scripts/bench.sh api_scale`; under `cargo test` it runs a smoke size.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use berth::adapters::store::sqlite::SqliteStore;
use berth::ports::{RuntimeStore, Store};
use berth_core::operation::{Operation, OperationKind, Source};
use berth_core::runtime::RuntimeRecord;
use berth_core::status::RuntimeStatus;

struct Reaped(Child);

impl Drop for Reaped {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

#[tokio::main]
async fn main() {
    let benching = std::env::args().any(|a| a == "--bench");
    let (n, requests) = if benching { (10_000, 200) } else { (200, 5) };
    let data = tempfile::tempdir().unwrap();
    {
        let store = SqliteStore::open(&data.path().join("berth.db"))
            .await
            .unwrap();
        for i in 0..n {
            let mut rec = RuntimeRecord::new(
                &format!("rt-{i:05}"),
                &format!("t{}", i % 5),
                Default::default(),
                1_000 + i as i64,
            );
            rec.status = RuntimeStatus::Stopped;
            rec.image_ref = Some("registry.example/acme/engine:latest".into());
            rec.image_digest = Some(format!("sha256:{:064x}", i));
            rec.engine_endpoint = Some(format!("http://t-rt-{i:05}:8080"));
            rec.generation = 1;
            let mut op =
                Operation::begin(format!("op-{i}"), OperationKind::Start, Source::Api, 1_000)
                    .for_runtime(&rec.id, &rec.template);
            op.succeed(1_000);
            store.record(Some(&rec), &op).await.unwrap();
        }
        // The store's share of a list: read and decode every record.
        let mut reads = Vec::new();
        for _ in 0..if benching { 20 } else { 2 } {
            let t0 = Instant::now();
            let all = store.list_runtimes(&Default::default()).await.unwrap();
            reads.push(t0.elapsed());
            assert_eq!(all.len(), n);
        }
        reads.sort();
        println!(
            "  store list_runtimes of {n} records (in process): median {:.1} ms",
            reads[reads.len() / 2].as_secs_f64() * 1e3
        );
        store.close().await;
    }
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let owner = format!(
        "bt-scale-{}",
        &uuid::Uuid::now_v7().simple().to_string()[22..]
    );
    let child = Reaped(
        Command::new(env!("CARGO_BIN_EXE_berth"))
            .args([
                "serve",
                "--listen",
                &format!("127.0.0.1:{port}"),
                "--owner",
                &owner,
                "--network",
                &owner,
            ])
            .arg("--data-dir")
            .arg(data.path())
            .env("BERTH_LOG", "warn")
            .envs(
                std::env::var("BENCH_MALLOC_ARENA_MAX")
                    .ok()
                    .map(|v| ("MALLOC_ARENA_MAX", v)),
            )
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("berth binary"),
    );
    let base = format!("http://127.0.0.1:{port}");
    let http = reqwest::Client::new();
    for _ in 0..300 {
        if http.get(format!("{base}/healthz")).send().await.is_ok() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Idle: let the boot reconcile pass and the first events settle.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let idle_rss = rss_kib(child.0.id());

    let mut times = Vec::new();
    let mut bytes = 0;
    for _ in 0..requests {
        let t0 = Instant::now();
        let body = http
            .get(format!("{base}/v1/runtimes"))
            .send()
            .await
            .unwrap()
            .bytes()
            .await
            .unwrap();
        times.push(t0.elapsed());
        bytes = body.len();
    }
    let listed: serde_json::Value = serde_json::from_slice(
        &http
            .get(format!("{base}/v1/runtimes"))
            .send()
            .await
            .unwrap()
            .bytes()
            .await
            .unwrap(),
    )
    .unwrap();
    assert_eq!(listed["runtimes"].as_array().unwrap().len(), n);
    let busy_rss = rss_kib(child.0.id());
    times.sort();
    let pct = |p: f64| times[((times.len() as f64 - 1.0) * p).round() as usize].as_secs_f64() * 1e3;
    println!("berth serve (SQLite) with {n} runtime records");
    println!(
        "  GET /v1/runtimes ({:.1} MB of JSON), {requests} requests: p50 {:.1} ms, p99 {:.1} ms (target p99 ≤ 50 ms)",
        bytes as f64 / 1e6,
        pct(0.5),
        pct(0.99)
    );
    println!(
        "  resident memory: idle {:.1} MB (target ≤ 60 MB), after the requests {:.1} MB",
        idle_rss as f64 / 1024.0,
        busy_rss as f64 / 1024.0
    );
    drop(child);
    let _ = Command::new("docker")
        .args(["network", "rm", &owner])
        .output();
}
