//! State stores:
//! - batch commit latency for 1, 10 and 100 store files against the same
//!   bytes written with the bare durable sequence (write, fsync, rename,
//!   fsync dir) one file after another, interleaved in one run (target
//!   ≤ 1.5× median);
//! - readiness of a runtime with 10 stores through the real `berth serve`
//!   binary on the real Docker engine, p50/p99 (target p99 ≤ 20 ms).
//!
//! `bash scripts/bench.sh store_batch`; under `cargo test` it runs a smoke size.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::Write;
use std::path::Path;
use std::time::{Duration, Instant};

use berth::adapters::state_fs::LocalStateFs;
use berth::ports::state_fs::StateFs;
use berth::services::stores::{
    prepare_batch, roll_forward_stores, BatchMeta, BatchWriter, Committed, StatePaths, StoreLimits,
    StoreWrite,
};
use berth_core::store::{Manifest, StoreDescriptor, StoreReadiness, StoreRecovery};

mod common;

fn descriptors(n: usize) -> Vec<StoreDescriptor> {
    (0..n)
        .map(|i| StoreDescriptor {
            name: format!("s{i:03}"),
            path: format!("s{i:03}.json"),
            schema_version: 1,
            readiness: StoreReadiness::Blocking,
            recovery: StoreRecovery::Quarantine,
        })
        .collect()
}

/// The bare durable sequence for one file.
fn durable_write(dir: &Path, name: &str, bytes: &[u8]) {
    let tmp = dir.join(format!(".{name}.tmp"));
    let mut f = File::create(&tmp).unwrap();
    f.write_all(bytes).unwrap();
    f.sync_all().unwrap();
    std::fs::rename(&tmp, dir.join(name)).unwrap();
    File::open(dir).unwrap().sync_all().unwrap();
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

async fn batch_latency(files: usize, rounds: usize) {
    let stores = descriptors(files);
    let fs = LocalStateFs::new();
    // On the same filesystem as berth's data directory default (./berth-data).
    let base = tempfile::tempdir_in(".").unwrap();
    let bare_dir = base.path().join("bare");
    std::fs::create_dir_all(&bare_dir).unwrap();
    let paths = StatePaths {
        root: base.path().join("state"),
    };
    fs.create_dir_all(&paths.berth_dir()).await.unwrap();
    let mut manifest = Manifest::empty("bench");
    let (mut bare, mut berth) = (Vec::new(), Vec::new());
    for round in 0..rounds {
        let writes: Vec<StoreWrite> = stores
            .iter()
            .map(|s| StoreWrite {
                store: s.name.clone(),
                schema_version: None,
                data: serde_json::json!({"round": round, "pad": "x".repeat(900)}),
            })
            .collect();
        let batch = prepare_batch(
            &stores,
            &BTreeMap::new(),
            &paths,
            &manifest,
            BatchMeta {
                batch_id: &format!("b{round}"),
                run_id: "run",
                reason: None,
                now_ms: round as i64,
            },
            writes,
            &StoreLimits::default(),
        )
        .unwrap();
        // Interleaved, alternating which goes first.
        let run_bare = || {
            let t0 = Instant::now();
            for f in &batch.files {
                durable_write(&bare_dir, &f.store, &f.bytes);
            }
            t0.elapsed()
        };
        if round % 2 == 0 {
            bare.push(run_bare());
        }
        let t0 = Instant::now();
        // What the service does under the lock: roll forward (a listing of
        // `.berth/` when nothing is staged), then the batch.
        roll_forward_stores(&fs, &paths, &stores).await.unwrap();
        let committed = BatchWriter {
            fs: &fs,
            paths: &paths,
        }
        .commit(&batch.record, &batch.files, &batch.manifest)
        .await
        .unwrap();
        berth.push(t0.elapsed());
        assert!(matches!(committed, Committed::Placed), "{committed:?}");
        if round % 2 == 1 {
            bare.push(run_bare());
        }
        manifest = batch.manifest;
    }
    let (b, s) = (median(bare), median(berth));
    println!(
        "  batch of {files:>3} files: bare durable writes median {:.2} ms, berth batch median {:.2} ms, ratio {:.2}x ({rounds} rounds)",
        ms(b),
        ms(s),
        s.as_secs_f64() / b.as_secs_f64()
    );
}

async fn readiness_latency(requests: usize) {
    let repo = std::env::var("BERTH_TEST_SLEEPER").expect(
        "BERTH_TEST_SLEEPER is not set: run with `bash scripts/bench.sh` (it starts the services)",
    );
    let data = tempfile::tempdir().unwrap();
    let server = common::BerthProcess::start("bt-ready", data.path(), &[]).await;
    let base = &server.base;
    let http = reqwest::Client::new();
    let tag = "v1";
    let stores: Vec<serde_json::Value> = descriptors(10)
        .iter()
        .map(|d| serde_json::json!({"name": d.name, "path": d.path}))
        .collect();
    let put = http
        .put(format!("{base}/v1/templates/ready"))
        .json(&serde_json::json!({"image": repo, "tag": tag, "stores": stores, "stop_grace": "1s"}))
        .send()
        .await
        .unwrap();
    assert!(put.status().is_success(), "{}", put.text().await.unwrap());
    let rt: serde_json::Value = http
        .post(format!("{base}/v1/runtimes"))
        .json(&serde_json::json!({"id": "r-1", "template": "ready"}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let run = rt["run_id"].as_str().expect("a run id").to_string();
    let writes: Vec<serde_json::Value> = descriptors(10)
        .iter()
        .map(|d| serde_json::json!({"store": d.name, "data": {"pad": "x".repeat(2000)}}))
        .collect();
    let committed = http
        .post(format!("{base}/v1/runtimes/r-1/store/batches"))
        .json(&serde_json::json!({"run_id": run, "writes": writes}))
        .send()
        .await
        .unwrap();
    assert_eq!(committed.status(), 201);
    let mut times = Vec::new();
    for _ in 0..requests {
        let t0 = Instant::now();
        let r: serde_json::Value = http
            .get(format!("{base}/v1/runtimes/r-1/readiness"))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        times.push(t0.elapsed());
        assert_eq!(r["ok"], true, "{r}");
    }
    times.sort();
    let p = |q: f64| ms(times[((times.len() as f64 * q) as usize).min(times.len() - 1)]);
    println!(
        "  readiness of a runtime with 10 stores (HTTP, Docker inspect, 10 files read and hashed): p50 {:.2} ms, p99 {:.2} ms over {requests} requests",
        p(0.5),
        p(0.99)
    );
}

#[tokio::main]
pub async fn main() {
    let benching = std::env::args().any(|a| a == "--bench");
    println!(
        "state stores ({})",
        if benching { "bench" } else { "smoke" }
    );
    for (files, rounds) in [(1, 200), (10, 100), (100, 30)] {
        batch_latency(files, if benching { rounds } else { 3 }).await;
    }
    readiness_latency(if benching { 1000 } else { 10 }).await;
}
