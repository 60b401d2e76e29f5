//! The change stream's added latency: the real `berth serve` binary
//! (SQLite) with 100 clients connected to `GET /v1/stream?kinds=template`;
//! N changes made one after another through the API (`PUT
//! /v1/templates/<name>`, which answers after its commit). For every client
//! and change: the time from the API's answer (the commit, as the caller
//! sees it) to the change's arrival on that client — the stream's added
//! latency (target p99 ≤ 50 ms) — beside the baseline, the API call's own
//! duration in the same run. An arrival before the answer counts as 0.
//!
//! `bash scripts/bench.sh stream_latency` (`BENCH_CLIENTS`, `BENCH_CHANGES`
//! change 100 and 300; `BENCH_POSTGRES=1` runs on a fresh PostgreSQL
//! database of `BERTH_TEST_DATABASE_URL` instead of SQLite); under `cargo
//! test` it runs a smoke size.

mod common;

use std::time::{Duration, Instant};

use berth::cli::sse::SseReader;
use serde_json::json;
use tokio::sync::mpsc;

fn pct(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

fn env_or(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// One client: reports (client, template name, arrival) for every change.
async fn client(
    http: reqwest::Client,
    base: String,
    index: usize,
    arrivals: mpsc::UnboundedSender<(usize, String, Instant)>,
    ready: mpsc::UnboundedSender<()>,
) {
    let resp = http
        .get(format!("{base}/v1/stream?kinds=template"))
        .send()
        .await
        .expect("the stream opens");
    assert_eq!(resp.status(), reqwest::StatusCode::OK);
    let _ = ready.send(());
    let mut stream = SseReader::new(resp);
    while let Ok(Some(event)) = stream.next().await {
        let at = Instant::now();
        if let Some(change) = event.change() {
            if arrivals.send((index, change.key, at)).is_err() {
                return;
            }
        }
    }
}

/// A fresh database on the test PostgreSQL server.
async fn fresh_postgres_database() -> String {
    let admin = std::env::var("BERTH_TEST_DATABASE_URL")
        .expect("BERTH_TEST_DATABASE_URL is not set: run with `bash scripts/bench.sh`");
    let name = format!(
        "bench_stream_{}",
        &uuid::Uuid::now_v7().simple().to_string()[22..]
    );
    let pool = sqlx::PgPool::connect(&admin).await.unwrap();
    sqlx::query(&format!("CREATE DATABASE {name}"))
        .execute(&pool)
        .await
        .unwrap();
    pool.close().await;
    let base = admin.rsplit_once('/').map_or(admin.as_str(), |(b, _)| b);
    format!("{base}/{name}")
}

#[tokio::main]
pub async fn main() {
    let benching = std::env::args().any(|a| a == "--bench");
    let (clients, changes, warmup) = if benching {
        (
            env_or("BENCH_CLIENTS", 100),
            env_or("BENCH_CHANGES", 300),
            20,
        )
    } else {
        (10, 20, 2)
    };
    let data = tempfile::tempdir().unwrap();
    let postgres = std::env::var("BENCH_POSTGRES").is_ok_and(|v| v == "1");
    let mut envs = Vec::new();
    if postgres {
        envs.push(("BERTH_DATABASE_URL", fresh_postgres_database().await));
    }
    let backend = if postgres { "PostgreSQL" } else { "SQLite" };
    let server = common::BerthProcess::start("bt-stream", data.path(), &envs).await;
    let base = server.base.clone();

    let (arrivals_tx, mut arrivals) = mpsc::unbounded_channel();
    let (ready_tx, mut ready) = mpsc::unbounded_channel();
    for i in 0..clients {
        // One connection each, as separate browsers would have.
        let http = reqwest::Client::new();
        tokio::spawn(client(
            http,
            base.clone(),
            i,
            arrivals_tx.clone(),
            ready_tx.clone(),
        ));
    }
    for _ in 0..clients {
        ready.recv().await.expect("every client connects");
    }

    let api = reqwest::Client::new();
    let mut added = Vec::with_capacity(clients * changes);
    let mut from_request = Vec::with_capacity(clients * changes);
    let mut calls = Vec::with_capacity(changes);
    let mut early = 0usize;
    for n in 0..warmup + changes {
        let name = format!("stream-{n}");
        let t0 = Instant::now();
        let resp = api
            .put(format!("{base}/v1/templates/{name}"))
            .json(&json!({"image": "registry.example/acme/engine", "tag": "v1", "port": 8080}))
            .send()
            .await
            .unwrap();
        assert!(resp.status().is_success(), "{}", resp.status());
        let t1 = Instant::now();
        // Every client's arrival of this change.
        let mut got = vec![false; clients];
        let mut left = clients;
        while left > 0 {
            let (client, key, at) = tokio::time::timeout(Duration::from_secs(30), arrivals.recv())
                .await
                .expect("every client gets the change within 30 s")
                .expect("the clients run");
            assert_eq!(key, name, "changes arrive in order");
            assert!(!got[client], "client {client} got {name} twice");
            got[client] = true;
            left -= 1;
            if n >= warmup {
                if at < t1 {
                    early += 1;
                }
                added.push(ms(at.saturating_duration_since(t1)));
                from_request.push(ms(at - t0));
            }
        }
        if n >= warmup {
            calls.push(ms(t1 - t0));
        }
    }
    for v in [&mut added, &mut from_request, &mut calls] {
        v.sort_by(|a, b| a.total_cmp(b));
    }
    println!(
        "berth serve ({backend}), {clients} stream clients, {changes} changes (PUT /v1/templates/…) after {warmup} warm-up"
    );
    println!(
        "  baseline, the API call (request → answer after commit): p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms",
        pct(&calls, 0.5),
        pct(&calls, 0.99),
        pct(&calls, 1.0)
    );
    println!(
        "  added latency, answer → arrival, {} arrivals: p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms (target p99 ≤ 50 ms); {early} arrived before the answer (counted as 0)",
        added.len(),
        pct(&added, 0.5),
        pct(&added, 0.99),
        pct(&added, 1.0)
    );
    println!(
        "  request → arrival: p50 {:.2} ms, p99 {:.2} ms",
        pct(&from_request, 0.5),
        pct(&from_request, 0.99)
    );
    drop(server);
}
