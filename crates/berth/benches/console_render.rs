//! The console's fleet page on the real `berth serve` binary (SQLite) with
//! 10,000 runtime records over 5 pinned templates: the time from request to
//! the last byte over loopback for the whole page, a filtered page, a
//! search and the live region the page's script re-fetches (target p99 ≤
//! 100 ms), side by side with the API's own page of the same 50 runtimes
//! (`GET /v1/runtimes?limit=50`) in the same run.
//!
//! `bash scripts/bench.sh console_render`; under `cargo test` it runs a
//! smoke size.

mod common;
use std::time::{Duration, Instant};

use common::seed::{id, pct, record, seed};
use serde_json::json;

async fn timed(http: &reqwest::Client, url: &str, fragment: Option<&str>) -> (Duration, String) {
    let t0 = Instant::now();
    let mut req = http.get(url);
    if let Some(f) = fragment {
        req = req.header("x-berth-fragment", f);
    }
    let resp = req.send().await.unwrap();
    assert!(resp.status().is_success(), "{url}: {}", resp.status());
    let body = resp.text().await.unwrap();
    (t0.elapsed(), body)
}

#[tokio::main]
pub async fn main() {
    let benching = std::env::args().any(|a| a == "--bench");
    let (n, requests) = if benching { (10_000, 300) } else { (300, 10) };
    let data = tempfile::tempdir().unwrap();
    seed(&data.path().join("berth.db"), n).await;
    let server = common::BerthProcess::start("bt-console", data.path(), &[]).await;
    let base = server.base.clone();
    let http = reqwest::Client::new();
    // Five templates, each pinned to the digest of one of its runtimes, so
    // the page compares every row's digest with a pin.
    for t in 0..5 {
        let resp = http
            .put(format!("{base}/v1/templates/t{t}"))
            .json(&json!({"image": "registry.example/acme/engine", "tag": "latest"}))
            .send()
            .await
            .unwrap();
        assert!(resp.status().is_success(), "template: {}", resp.status());
        let digest = record(t).image_digest.unwrap();
        let resp = http
            .post(format!("{base}/v1/templates/t{t}/pin"))
            .json(&json!({"digest": digest}))
            .send()
            .await
            .unwrap();
        assert!(resp.status().is_success(), "pin: {}", resp.status());
    }
    let middle = id(n / 2);
    let cases: Vec<(&str, String, Option<&str>)> = vec![
        (
            "API page of 50 (baseline): GET /v1/runtimes?limit=50",
            format!("{base}/v1/runtimes?limit=50"),
            None,
        ),
        ("fleet page, first 50", format!("{base}/"), None),
        (
            "fleet page, filtered, mid-list",
            format!("{base}/?template=t3&status=stopped&after={middle}"),
            None,
        ),
        (
            "fleet page, search by id prefix",
            format!("{base}/?q={}", &middle[..middle.len() - 2]),
            None,
        ),
        (
            "fleet region the script re-fetches",
            format!("{base}/"),
            Some("fleet"),
        ),
    ];
    // Warm up every case (first-touch allocations, SQLite page cache).
    for (_, url, fragment) in &cases {
        for _ in 0..5 {
            timed(&http, url, *fragment).await;
        }
    }
    let (_, page) = timed(&http, &format!("{base}/"), None).await;
    assert_eq!(
        page.matches("<tr data-id=").count(),
        50.min(n),
        "a page of 50 rows"
    );
    assert!(
        page.contains(&format!("<strong>{n}</strong> runtimes")),
        "the whole fleet is counted"
    );
    assert!(
        page.contains(">stale<"),
        "rows are compared with their pins"
    );

    println!("console fleet page, berth serve (SQLite), {n} runtimes, {requests} requests each, interleaved");
    let mut times: Vec<Vec<Duration>> = vec![Vec::new(); cases.len()];
    let mut sizes = vec![0usize; cases.len()];
    for _ in 0..requests {
        for (i, (_, url, fragment)) in cases.iter().enumerate() {
            let (t, body) = timed(&http, url, *fragment).await;
            times[i].push(t);
            sizes[i] = body.len();
        }
    }
    for (i, (name, _, _)) in cases.iter().enumerate() {
        let p50 = pct(&mut times[i], 0.5);
        let p99 = pct(&mut times[i], 0.99);
        println!(
            "  {name}: p50 {p50:.2} ms, p99 {p99:.2} ms ({:.0} KB)",
            sizes[i] as f64 / 1e3
        );
    }
    println!("  target: fleet page p99 ≤ 100 ms");
    drop(server);
}
