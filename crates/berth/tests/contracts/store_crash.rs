//! Crash harness of the state-store batch protocol.
//!
//! On the fake `StateFs` a batch is cut at every step boundary, and what
//! survives is read back twice: as after a SIGKILL (everything written is
//! visible) and as after a power loss (only what was synced). With the real
//! filesystem, a child process writing batches is SIGKILLed at random
//! moments, hundreds of times. After every cut and the roll-forward that
//! boot runs, every store holds either the last acknowledged batch or the
//! one in flight (never a mix, never a torn store), and the planner finds
//! nothing to recover. `stores_on_fakes.rs` reads the same cuts back
//! through the service, and `crash.rs` kills the real `berth serve`.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use berth::adapters::state_fs::LocalStateFs;
use berth::fakes::state_fs::FakeStateFs;
use berth::ports::state_fs::StateFs;
use berth::services::stores::{
    prepare_batch, roll_forward_stores, BatchMeta, BatchWriter, Committed, StatePaths, StoreLimits,
    StoreWrite,
};
use berth_core::store::format::decode_manifest;
use berth_core::store::{
    decode_receipts, plan, ActionKind, Envelope, Impact, Manifest, ManifestFact, PlanInput,
    RecoveryPlan, StoreDescriptor, StoreFileFact, StoreReadiness, StoreRecovery,
};

const RUN: &str = "run-1";

fn stores() -> Vec<StoreDescriptor> {
    let d = |name: &str, path: &str, readiness, recovery| StoreDescriptor {
        name: name.into(),
        path: path.into(),
        schema_version: 1,
        readiness,
        recovery,
    };
    vec![
        d(
            "launch_state",
            "launch-state.json",
            StoreReadiness::Blocking,
            StoreRecovery::Quarantine,
        ),
        d(
            "sessions",
            "sessions.json",
            StoreReadiness::Degrading,
            StoreRecovery::Rebuild,
        ),
        d(
            "journal",
            "journal/deliveries.json",
            StoreReadiness::Blocking,
            StoreRecovery::Rebuild,
        ),
    ]
}

/// The data a batch of sequence `seq` writes to `store`.
fn data(store: &str, seq: u64) -> serde_json::Value {
    serde_json::json!({"store": store, "seq": seq, "pad": "x".repeat(64)})
}

/// What boot does before anything reads: roll forward.
async fn boot(fs: &dyn StateFs, paths: &StatePaths) {
    roll_forward_stores(fs, paths, &stores())
        .await
        .expect("roll-forward after a crash");
}

/// Writes one batch of `names` (each store's data marks `seq`) on the
/// committed manifest as the service does (roll forward, then the batch);
/// the caller has made the directories.
async fn write_batch(
    fs: &dyn StateFs,
    paths: &StatePaths,
    names: &[&str],
) -> Result<u64, berth::ports::state_fs::StateFsError> {
    if let Err(e) = roll_forward_stores(fs, paths, &stores()).await {
        let source = e.source.as_ref().map_or(String::new(), |s| s.to_string());
        return Err(berth::ports::state_fs::StateFsError::io(
            "roll forward",
            &paths.root,
            std::io::Error::other(format!("{e}: {source}")),
        ));
    }
    let base = match fs.read(&paths.manifest()).await? {
        Some(bytes) => decode_manifest(&bytes).expect("a committed manifest decodes"),
        None => Manifest::empty("ws-1"),
    };
    let seq = base.high_watermark + 1;
    let batch_id = format!("batch-{seq}");
    let writes = names
        .iter()
        .map(|n| StoreWrite {
            store: n.to_string(),
            schema_version: None,
            data: data(n, seq),
        })
        .collect();
    let batch = prepare_batch(
        &stores(),
        &BTreeMap::new(),
        paths,
        &base,
        BatchMeta {
            batch_id: &batch_id,
            run_id: RUN,
            reason: Some("checkpoint"),
            now_ms: seq as i64,
        },
        writes,
        &StoreLimits::default(),
    )
    .expect("a valid batch");
    match (BatchWriter { fs, paths })
        .commit(&batch.record, &batch.files, &batch.manifest)
        .await?
    {
        Committed::Placed => Ok(seq),
        // Committed; the files are staged. For the harness this batch is in
        // flight, as if its answer was lost.
        Committed::Staged(e) | Committed::Failing(e) | Committed::Unknown(e) => Err(e),
    }
}

async fn make_dirs(fs: &dyn StateFs, paths: &StatePaths) {
    fs.create_dir_all(&paths.berth_dir()).await.unwrap();
    fs.create_dir_all(&paths.root.join("journal"))
        .await
        .unwrap();
}

/// What is on disk, the plan for it, and the seq each store's file holds.
struct Survey {
    manifest: Option<Manifest>,
    plan: RecoveryPlan,
    file_seq: BTreeMap<String, Option<u64>>,
}

async fn survey(fs: &dyn StateFs, paths: &StatePaths) -> Survey {
    let descriptors = stores();
    let manifest_fact = match fs.read(&paths.manifest()).await.unwrap() {
        None => ManifestFact::Absent,
        Some(b) => match decode_manifest(&b) {
            Ok(m) => ManifestFact::Present(m),
            Err(e) => ManifestFact::Corrupt(e),
        },
    };
    let receipts = fs
        .read(&paths.receipts())
        .await
        .unwrap()
        .map(|b| decode_receipts(&b))
        .unwrap_or_default();
    let mut files = BTreeMap::new();
    let mut file_seq = BTreeMap::new();
    for d in &descriptors {
        let bytes = fs.read(&paths.store(&d.path)).await.unwrap();
        let seq = bytes.as_ref().and_then(|b| {
            serde_json::from_slice::<Envelope>(b)
                .ok()
                .and_then(|e| e.data["seq"].as_u64())
        });
        file_seq.insert(d.name.clone(), seq);
        files.insert(
            d.name.clone(),
            bytes.map_or(StoreFileFact::Absent, |b| StoreFileFact::from_bytes(&b)),
        );
    }
    let plan = plan(&PlanInput {
        descriptors: &descriptors,
        understood: &BTreeMap::new(),
        manifest: &manifest_fact,
        receipts: &receipts,
        files: &files,
        current_run_id: Some(RUN),
    });
    let manifest = match manifest_fact {
        ManifestFact::Present(m) => Some(m),
        ManifestFact::Absent => None,
        ManifestFact::Corrupt(e) => panic!("a manifest is only ever renamed in whole: {e}"),
    };
    Survey {
        manifest,
        plan,
        file_seq,
    }
}

/// The invariants after any cut and the roll-forward of boot: `acked` is
/// the last acknowledged seq, `in_flight` the batch that may or may not
/// have committed, writing `written`. Every store is healthy and holds
/// exactly what the committed batch gave it.
fn check(s: &Survey, acked: u64, in_flight: u64, written: &[&str], what: &str) {
    let hw = s.manifest.as_ref().map_or(0, |m| m.high_watermark);
    assert!(
        hw == acked || hw == in_flight,
        "{what}: committed seq {hw}, acknowledged {acked}, in flight {in_flight}"
    );
    assert_eq!(s.plan.impact, Impact::None, "{what}: {:?}", s.plan);
    for action in &s.plan.actions {
        assert_eq!(action.kind, ActionKind::None, "{what}: {action:?}");
    }
    for (store, seq) in &s.file_seq {
        let expected = if written.contains(&store.as_str()) {
            hw
        } else {
            acked
        };
        assert_eq!(
            *seq,
            Some(expected),
            "{what}: {store} holds batch {seq:?}, the committed batch gave it {expected}"
        );
    }
}

/// Every step boundary of a batch that rewrites two of three stores, on
/// top of one acknowledged batch of all three; both crash models.
#[tokio::test]
async fn a_batch_cut_at_every_step_leaves_the_acknowledged_or_the_new_batch_whole_after_boot() {
    let paths = StatePaths {
        root: PathBuf::from("/state/ws-1"),
    };
    let mut boundaries = 0;
    for k in 0.. {
        let fs = FakeStateFs::new();
        make_dirs(&fs, &paths).await;
        let acked = write_batch(&fs, &paths, &["launch_state", "sessions", "journal"])
            .await
            .expect("the first batch commits");
        let start = fs.steps();
        fs.crash_at_step(start + k);
        let written = ["launch_state", "journal"];
        let result = write_batch(&fs, &paths, &written).await;
        if let Ok(seq) = result {
            // Past the last step: the batch committed; a power loss keeps it.
            let after = fs.after_power_loss();
            let s = survey(&after, &paths).await;
            assert_eq!(s.manifest.as_ref().unwrap().high_watermark, seq);
            assert_eq!(s.plan.impact, Impact::None, "{:?}", s.plan);
            assert_eq!(s.file_seq["launch_state"], Some(seq));
            assert_eq!(s.file_seq["sessions"], Some(acked));
            break;
        }
        assert!(fs.crashed(), "{:?}", result);
        boundaries += 1;
        for (model, after) in [
            ("process kill", fs.after_process_kill()),
            ("power loss", fs.after_power_loss()),
        ] {
            let what = format!("cut at step {k} ({model})");
            boot(&after, &paths).await;
            let s = survey(&after, &paths).await;
            check(&s, acked, acked + 1, &written, &what);
            // What a committed batch staged is in place, and nothing else is
            // left in `.berth/`.
            let left = after.list(&paths.berth_dir()).await.unwrap();
            assert!(
                !left.iter().any(|n| n.starts_with("stage.")),
                "{what}: {left:?}"
            );
            // And the writer recovers: a new batch of every store is healthy.
            let next = write_batch(&after, &paths, &["launch_state", "sessions", "journal"])
                .await
                .unwrap_or_else(|e| panic!("{what}: the next batch fails: {e}"));
            let s = survey(&after.after_power_loss(), &paths).await;
            assert_eq!(s.plan.impact, Impact::None, "{what}: {:?}", s.plan);
            assert!(s.file_seq.values().all(|v| *v == Some(next)), "{what}");
        }
    }
    // receipts (2) + manifest aside (2) + 2 staged files (4) + manifest
    // rename + `.berth/` sync + 2 placements + 2 dir syncs.
    assert!(boundaries >= 14, "only {boundaries} boundaries were cut");
    println!("cut one batch at {boundaries} step boundaries, 2 crash models each");
}

/// An fsync that fails aborts the batch; it is never retried, and the data
/// the kernel may have dropped is never reported as committed.
#[tokio::test]
async fn a_failed_fsync_aborts_the_batch_and_the_acknowledged_one_stays_whole() {
    let paths = StatePaths {
        root: PathBuf::from("/state/ws-1"),
    };
    // Find the fsync steps of one batch.
    let probe = FakeStateFs::new();
    make_dirs(&probe, &paths).await;
    write_batch(&probe, &paths, &["launch_state", "sessions", "journal"])
        .await
        .unwrap();
    let start = probe.steps();
    write_batch(&probe, &paths, &["launch_state", "journal"])
        .await
        .unwrap();
    let fsyncs: Vec<usize> = probe.step_log()[start..]
        .iter()
        .enumerate()
        .filter(|(_, (op, _))| *op == "fsync")
        .map(|(i, _)| i)
        .collect();
    // The receipt log, the manifest aside and two staged store files.
    assert!(fsyncs.len() >= 4, "{:?}", probe.step_log());
    for i in fsyncs {
        let fs = FakeStateFs::new();
        make_dirs(&fs, &paths).await;
        let acked = write_batch(&fs, &paths, &["launch_state", "sessions", "journal"])
            .await
            .unwrap();
        let start = fs.steps();
        fs.fail_fsync_at_step(start + i);
        let err = write_batch(&fs, &paths, &["launch_state", "journal"])
            .await
            .expect_err("a failed fsync fails the batch");
        assert!(!err.is_crash(), "{err}");
        let log = fs.step_log();
        let (failed_op, failed_path) = log[start + i].clone();
        for (op, path) in &log[start + i + 1..] {
            assert!(
                !(op == &failed_op && path == &failed_path),
                "fsync {i}: {failed_path:?} was synced again after it failed"
            );
            assert!(
                !(*op == "rename" && path.to_string_lossy().contains("manifest.json")),
                "fsync {i}: the manifest was committed after a failed fsync"
            );
        }
        // Whatever the kernel dropped, the acknowledged batch is whole.
        for (model, after) in [
            ("power loss", fs.after_power_loss()),
            ("kill", fs.after_process_kill()),
        ] {
            boot(&after, &paths).await;
            let s = survey(&after, &paths).await;
            let what = format!("fsync {i} failed, then {model}");
            check(&s, acked, acked, &["launch_state", "journal"], &what);
        }
    }
}

/// A child process writing batches on the real filesystem; run by the
/// harness below with `BERTH_STORE_CRASH_CHILD=<dir>`. It prints
/// `acked <seq>` after each batch returns. Run by itself it writes three
/// batches and checks they read back healthy.
#[tokio::test]
async fn crash_child() {
    let fs = LocalStateFs::new();
    let (dir, keep) = match std::env::var("BERTH_STORE_CRASH_CHILD") {
        Ok(d) => (PathBuf::from(d), None),
        Err(_) => {
            let t = tempfile::tempdir().unwrap();
            (t.path().to_path_buf(), Some(t))
        }
    };
    let paths = StatePaths { root: dir };
    make_dirs(&fs, &paths).await;
    // Bounded, so that a child whose parent died does not write forever.
    let rounds = if keep.is_some() { 3 } else { 10_000 };
    let mut n = 0;
    while n < rounds {
        let seq = write_batch(&fs, &paths, &["launch_state", "sessions", "journal"])
            .await
            .unwrap();
        println!("acked {seq}");
        n += 1;
    }
    let s = survey(&fs, &paths).await;
    assert_eq!(s.plan.impact, Impact::None);
    assert_eq!(s.manifest.unwrap().high_watermark, 3);
}

/// SIGKILLs a real writer at random moments, hundreds of times; after the
/// roll-forward of boot every store holds one batch whole.
#[tokio::test]
async fn a_writer_killed_at_random_moments_leaves_one_whole_batch_after_boot() {
    let exe = std::env::current_exe().unwrap();
    let root = tempfile::tempdir().unwrap();
    let kills = 300;
    let mut rolled = 0;
    let mut seed: u64 = 0x9e37_79b9_7f4a_7c15;
    for round in 0..kills {
        let dir = root.path().join(format!("r{round}"));
        std::fs::create_dir_all(&dir).unwrap();
        let mut child = Command::new(&exe)
            .args([
                "--exact",
                "store_crash::crash_child",
                "--nocapture",
                "--test-threads=1",
            ])
            .env("BERTH_STORE_CRASH_CHILD", &dir)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        // Kill after a pseudo-random number of acknowledged batches, plus a
        // pseudo-random spin so the kill lands anywhere inside a batch.
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        let after_acks = 1 + seed % 5;
        let spin = (seed >> 8) % 200_000;
        let reader = std::thread::spawn(move || {
            let mut lines = BufReader::new(stdout).lines();
            while let Some(Ok(line)) = lines.next() {
                // libtest prints "test crash_child ... " before the first line.
                if let Some((_, seq)) = line.rsplit_once("acked ") {
                    let acked: u64 = seq.trim().parse().unwrap();
                    if acked == after_acks {
                        return (acked, lines);
                    }
                }
            }
            panic!("the child ended before {after_acks} batches");
        });
        let (_, mut lines) = reader.join().unwrap();
        let mut x = 0u64;
        for i in 0..spin {
            x = std::hint::black_box(x.wrapping_add(i));
        }
        child.kill().unwrap();
        child.wait().unwrap();
        // Batches acknowledged before the kill, including any printed while
        // we spun.
        let mut acked = after_acks;
        while let Some(Ok(line)) = lines.next() {
            if let Some((_, seq)) = line.rsplit_once("acked ") {
                acked = seq.trim().parse().unwrap();
            }
        }
        let fs = LocalStateFs::new();
        let paths = StatePaths { root: dir.clone() };
        let staged_left = fs
            .list(&paths.berth_dir())
            .await
            .unwrap()
            .iter()
            .any(|n| n.starts_with("stage."));
        boot(&fs, &paths).await;
        let s = survey(&fs, &paths).await;
        check(
            &s,
            acked,
            acked + 1,
            &["launch_state", "sessions", "journal"],
            &format!("kill {round} after batch {acked}"),
        );
        if staged_left {
            rolled += 1;
        }
        remove_dir(&dir);
    }
    println!(
        "{kills} kills; {rolled} left staged files that boot rolled forward or discarded; every store held the last acknowledged or the in-flight batch"
    );
}

fn remove_dir(dir: &Path) {
    let _ = std::fs::remove_dir_all(dir);
}
