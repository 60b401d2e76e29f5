//! The real `berth serve` binary on SQLite with 10,000 and then 100,000
//! runtime records (written before it starts):
//! - resident memory of the idle process (targets ≤ 60 MB / ≤ 150 MB);
//! - `GET /v1/runtimes`, the whole list of 10,000 (target p99 ≤ 50 ms);
//! - `GET /v1/runtimes?limit=500&after=<id>` at random places, 10,000
//!   records (target p99 ≤ 5 ms) and 100,000 records (target p99 ≤ 10 ms).
//!
//! Also, in process: the JSON encoding of 10,000 records alone, to know
//! its share of a whole list.
//!
//! `bash scripts/bench.sh api_scale`; under `cargo test` it runs a smoke size.

mod common;
use std::time::{Duration, Instant};

use berth::http::dto::{RuntimeList, RuntimeView};
use common::seed::{id, pct, record, seed};

fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

/// A tiny xorshift: the pages' places, the same in every run.
struct Places(u64);

impl Places {
    fn next(&mut self, n: usize) -> usize {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        (self.0 % n as u64) as usize
    }
}

struct Server {
    process: common::BerthProcess,
    _data: tempfile::TempDir,
}

async fn serve(n: usize) -> Server {
    let data = tempfile::tempdir().unwrap();
    let t0 = Instant::now();
    seed(&data.path().join("berth.db"), n).await;
    println!(
        "  ({n} records written in {:.1} s)",
        t0.elapsed().as_secs_f64()
    );
    let t0 = Instant::now();
    let envs: Vec<(&str, String)> = std::env::var("BENCH_MALLOC_ARENA_MAX")
        .ok()
        .map(|v| ("MALLOC_ARENA_MAX", v))
        .into_iter()
        .collect();
    let process = common::BerthProcess::start("bt-scale", data.path(), &envs).await;
    println!("  (boot to /healthz: {:.2} s)", t0.elapsed().as_secs_f64());
    Server {
        process,
        _data: data,
    }
}

async fn get(http: &reqwest::Client, url: &str) -> (Duration, Vec<u8>) {
    let t0 = Instant::now();
    let resp = http.get(url).send().await.unwrap();
    assert!(resp.status().is_success(), "{url}: {}", resp.status());
    let body = resp.bytes().await.unwrap();
    let elapsed = t0.elapsed();
    (elapsed, body.to_vec())
}

/// `requests` pages of 500 at random places; returns p50 and p99 in ms.
async fn pages(http: &reqwest::Client, server: &Server, n: usize, requests: usize) -> (f64, f64) {
    let mut places = Places(0x9E37_79B9_7F4A_7C15);
    let mut times = Vec::new();
    for _ in 0..requests {
        let after = id(places.next(n));
        let (t, body) = get(
            http,
            &format!(
                "{}/v1/runtimes?limit=500&after={after}",
                server.process.base
            ),
        )
        .await;
        times.push(t);
        let page: RuntimeList = serde_json::from_slice(&body).unwrap();
        assert!(page.runtimes.len() <= 500);
        assert_eq!(page.next.is_some(), page.runtimes.len() == 500);
    }
    (pct(&mut times, 0.5), pct(&mut times, 0.99))
}

#[tokio::main]
pub async fn main() {
    let benching = std::env::args().any(|a| a == "--bench");
    let (small, large, whole_requests, page_requests) = if benching {
        (10_000, 100_000, 200, 1_000)
    } else {
        (200, 1_000, 5, 20)
    };
    let http = reqwest::Client::new();

    // The encoder's share of a whole list, in process.
    let views: Vec<RuntimeView> = (0..small).map(|i| RuntimeView::from(record(i))).collect();
    let mut encodes = Vec::new();
    for _ in 0..20 {
        let t0 = Instant::now();
        let bytes = serde_json::to_vec(&views).unwrap();
        encodes.push(t0.elapsed());
        assert!(!bytes.is_empty());
    }
    println!(
        "JSON encoding of {small} runtime views (in process): median {:.1} ms",
        pct(&mut encodes, 0.5)
    );

    println!("berth serve (SQLite) with {small} runtime records");
    let server = serve(small).await;
    // Idle: let the boot reconcile pass and the first events settle.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let idle_small = rss_kib(server.process.pid());
    let mut times = Vec::new();
    let mut bytes = 0;
    for _ in 0..whole_requests {
        let (t, body) = get(&http, &format!("{}/v1/runtimes", server.process.base)).await;
        times.push(t);
        bytes = body.len();
    }
    let (_, body) = get(&http, &format!("{}/v1/runtimes", server.process.base)).await;
    let listed: RuntimeList = serde_json::from_slice(&body).unwrap();
    assert_eq!(listed.runtimes.len(), small);
    assert!(listed.next.is_none());
    println!(
        "  GET /v1/runtimes, all ({:.1} MB of JSON), {whole_requests} requests: p50 {:.1} ms, p99 {:.1} ms (target p99 ≤ 50 ms)",
        bytes as f64 / 1e6,
        pct(&mut times, 0.5),
        pct(&mut times, 0.99)
    );
    let (p50, p99) = pages(&http, &server, small, page_requests).await;
    println!(
        "  GET /v1/runtimes?limit=500&after=…, {page_requests} requests: p50 {p50:.2} ms, p99 {p99:.2} ms (target p99 ≤ 5 ms)"
    );
    let busy_small = rss_kib(server.process.pid());
    println!(
        "  resident memory: idle {:.1} MB (target ≤ 60 MB), after the requests {:.1} MB",
        idle_small as f64 / 1024.0,
        busy_small as f64 / 1024.0
    );
    drop(server);

    println!("berth serve (SQLite) with {large} runtime records");
    let server = serve(large).await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let idle_large = rss_kib(server.process.pid());
    let (p50, p99) = pages(&http, &server, large, page_requests).await;
    println!(
        "  GET /v1/runtimes?limit=500&after=…, {page_requests} requests: p50 {p50:.2} ms, p99 {p99:.2} ms (target p99 ≤ 10 ms)"
    );
    let busy_large = rss_kib(server.process.pid());
    println!(
        "  resident memory: idle {:.1} MB (target ≤ 150 MB), after the requests {:.1} MB",
        idle_large as f64 / 1024.0,
        busy_large as f64 / 1024.0
    );
}
