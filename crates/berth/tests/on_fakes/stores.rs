//! The store service on the fakes, with paused time: a batch cut by a crash
//! is refused and leaves the stores as they were, a failed fsync is an
//! error and never committed, the image's label decides the schema, the
//! validator's timeout blocks, and recovery at start is logged.

use crate::world;

use std::sync::Arc;

use berth::ports::{ExecOutput, StateFs};
use berth::services::stores::{BatchRequest, StoreWrite};
use berth::services::Services;
use berth_core::operation::OperationKind;
use berth_core::store::Impact;
use berth_core::ErrorCode;
use serde_json::json;
use world::*;

fn template() -> serde_json::Value {
    json!({"image": REPO, "tag": "stable", "stop_grace": "1s",
           "stores": [{"name": "launch_state", "path": "launch-state.json"},
                      {"name": "sessions", "path": "sessions.json", "readiness": "degrading", "recovery": "rebuild"}],
           "store_validator": ["/bin/check-state"], "store_validator_timeout": "2s"})
}

async fn app(w: &World) -> Arc<Services> {
    w.publish("stable", &digest(1));
    let s = w.boot();
    put_template(&s, "st", template()).await;
    s.runtimes
        .start(start_request("s-1", "st"), &caller())
        .await
        .unwrap();
    w.engine.set_exec_result(
        &["/bin/check-state"],
        ExecOutput {
            exit_code: 0,
            output: "stores consistent\n".into(),
        },
    );
    s
}

fn write(store: &str, data: serde_json::Value) -> StoreWrite {
    StoreWrite {
        store: store.into(),
        schema_version: None,
        data,
    }
}

async fn run_id(s: &Services) -> String {
    s.runtimes.get("s-1").await.unwrap().run_id.unwrap()
}

async fn both(s: &Services, run: &str) -> berth::error::Result<u64> {
    batch_of(s, run, 1, &["launch_state", "sessions"]).await
}

#[tokio::test(start_paused = true)]
async fn a_checkpointed_runtime_is_ready_and_its_batch_is_logged() {
    let w = World::new();
    let s = app(&w).await;
    let r = s.stores.readiness("s-1").await.unwrap();
    assert!(!r.ok);
    assert_eq!(r.reason, "store_recovery_required");
    let run = run_id(&s).await;
    assert_eq!(both(&s, &run).await.unwrap(), 1);
    let r = s.stores.readiness("s-1").await.unwrap();
    assert!(r.ok, "{r:?}");
    assert_eq!(r.impact, Impact::None);
    assert_eq!(r.diagnostics, vec!["stores consistent".to_string()]);
    let ops = operations_of(&s, "s-1").await;
    let batch = ops
        .iter()
        .find(|o| o.kind == OperationKind::StoreBatch)
        .expect("the batch is in the log");
    assert_eq!(batch.details["stores"], "launch_state,sessions");
    assert_eq!(batch.details["run_id"], run);
}

#[tokio::test(start_paused = true)]
async fn a_validator_that_does_not_finish_in_time_blocks() {
    let w = World::new();
    let s = app(&w).await;
    both(&s, &run_id(&s).await).await.unwrap();
    w.engine.set_exec_hang(&["/bin/check-state"]);
    let r = s.stores.readiness("s-1").await.unwrap();
    assert!(!r.ok, "{r:?}");
    assert_eq!(r.reason, "store_validator_failed");
    assert!(
        r.diagnostics
            .iter()
            .any(|d| d.contains("did not finish within 2s")),
        "{r:?}"
    );
}

#[tokio::test(start_paused = true)]
async fn a_batch_cut_by_a_crash_is_an_error_and_the_next_one_commits() {
    let w = World::new();
    let s = app(&w).await;
    let run = run_id(&s).await;
    both(&s, &run).await.unwrap();
    // The disk stops answering halfway through the next batch.
    w.state_fs.crash_at_step(w.state_fs.steps() + 5);
    let err = both(&s, &run).await.unwrap_err();
    assert_eq!(err.code, ErrorCode::StorageUnavailable, "{err:?}");
    assert!(
        err.message.contains("nothing was committed"),
        "{}",
        err.message
    );
    // What a power loss leaves is still the first batch, whole.
    let after = Arc::new(w.state_fs.after_power_loss());
    let mut w2 = w;
    w2.state_fs = after;
    let s2 = w2.boot();
    let manifest = s2.stores.manifest("s-1").await.unwrap();
    assert_eq!(manifest.high_watermark, 1);
    let r = s2.stores.readiness("s-1").await.unwrap();
    assert!(r.ok, "{r:?}");
    assert_eq!(both(&s2, &run).await.unwrap(), 2);
}

#[tokio::test(start_paused = true)]
async fn the_image_label_sets_the_schema_and_an_older_image_quarantines_newer_state() {
    let w = World::new();
    w.publish("stable", &digest(1));
    w.publish("new", &digest(2));
    w.engine.set_image_labels(
        &format!("{REPO}:new"),
        [("io.berth.store.launch_state.schema_version", "3")],
    );
    let s = w.boot();
    let mut doc = template();
    doc["tag"] = json!("new");
    doc.as_object_mut().unwrap().remove("store_validator");
    put_template(&s, "st", doc.clone()).await;
    s.runtimes
        .start(start_request("s-1", "st"), &caller())
        .await
        .unwrap();
    both(&s, &run_id(&s).await).await.unwrap();
    let envelope = s.stores.store_data("s-1", "launch_state").await.unwrap();
    assert_eq!(envelope.schema_version, 3, "the label's version");

    // The template goes back to the unlabelled image and the runtime is
    // recreated on it: recovery for that image moves the newer state aside
    // before it starts. Nobody checkpoints the new run, so the readiness
    // gate fails and the old container comes back.
    doc["tag"] = json!("stable");
    put_template(&s, "st", doc).await;
    let err = s.runtimes.recreate("s-1", &caller()).await.unwrap_err();
    assert_eq!(err.code, ErrorCode::HealthCheckFailed, "{err:?}");
    assert!(err.message.contains("not ready"), "{}", err.message);
    let state = w.data.path().join("runtimes/s-1/state");
    assert_eq!(
        w.state_fs
            .read(&state.join("launch-state.json"))
            .await
            .unwrap(),
        None,
        "the newer state was moved aside"
    );
    let aside = w
        .state_fs
        .list(&state.join(".berth/quarantine"))
        .await
        .unwrap();
    assert!(
        aside.iter().any(|n| n.starts_with("launch_state.")),
        "{aside:?}"
    );
    let ops = operations_of(&s, "s-1").await;
    let q = ops
        .iter()
        .find(|o| o.kind == OperationKind::StoreQuarantine)
        .expect("the quarantine is in the log");
    assert_eq!(q.details["reason"], "future_schema");
    assert!(q.details["moved_to"].starts_with(".berth/quarantine/launch_state."));
}

/// One batch through the service writing `{"n": n}` to every store named.
async fn batch_of(s: &Services, run: &str, n: u64, stores: &[&str]) -> berth::error::Result<u64> {
    s.stores
        .write_batch(
            "s-1",
            BatchRequest {
                run_id: run.to_string(),
                reason: None,
                writes: stores.iter().map(|st| write(st, json!({"n": n}))).collect(),
            },
            &caller(),
        )
        .await
        .map(|b| b.seq)
}

/// What the service serves for `store`, and what its file holds, as `n`.
async fn read_back(s: &Services, w: &World, store: &str, path: &str) -> (u64, u64) {
    let served = s
        .stores
        .store_data("s-1", store)
        .await
        .unwrap_or_else(|e| panic!("{store} cannot be read back: {e:?}"));
    let bytes = w
        .state_fs
        .read(&w.data.path().join("runtimes/s-1/state").join(path))
        .await
        .unwrap()
        .unwrap_or_else(|| panic!("{path} is missing"));
    let on_disk: berth_core::store::Envelope =
        serde_json::from_slice(&bytes).unwrap_or_else(|e| panic!("{path} is not an envelope: {e}"));
    (
        served.data["n"].as_u64().unwrap(),
        on_disk.data["n"].as_u64().unwrap(),
    )
}

/// The lost batch: a batch of both stores on top of an acknowledged
/// one is cut at every step of the service's write, and read back after
/// both crash models as a new berth sees it (boot's roll-forward first):
/// `GET …/store/{store}` and the file agree and hold one batch whole — the
/// acknowledged one, or the cut one if it reached its commit — and the next
/// batch commits. Fails with the stores renamed before the manifest.
#[tokio::test(start_paused = true)]
async fn a_batch_cut_at_every_step_reads_back_whole_through_the_service() {
    let stores = [
        ("launch_state", "launch-state.json"),
        ("sessions", "sessions.json"),
    ];
    let mut boundaries = 0;
    let mut committed_cuts = 0;
    for k in 0.. {
        let mut w = World::new();
        let s = app(&w).await;
        let run = run_id(&s).await;
        batch_of(&s, &run, 1, &["launch_state", "sessions"])
            .await
            .expect("the first batch is acknowledged");
        w.state_fs.crash_at_step(w.state_fs.steps() + k);
        let cut = batch_of(&s, &run, 2, &["launch_state", "sessions"]).await;
        if !w.state_fs.crashed() {
            assert_eq!(cut.expect("past the last step the batch commits"), 2);
            break;
        }
        assert!(cut.is_err(), "cut at step {k}: {cut:?}");
        boundaries += 1;
        drop(s);
        let dead = w.state_fs.clone();
        for (model, after) in [
            ("process kill", dead.after_process_kill()),
            ("power loss", dead.after_power_loss()),
        ] {
            let what = format!("cut at step {k} ({model})");
            w.state_fs = Arc::new(after);
            let s2 = w.boot();
            s2.stores.recover().await.unwrap();
            let hw = s2.stores.manifest("s-1").await.unwrap().high_watermark;
            assert!(hw == 1 || hw == 2, "{what}: high watermark {hw}");
            if hw == 2 {
                committed_cuts += 1;
            }
            for (store, path) in stores {
                let (served, on_disk) = read_back(&s2, &w, store, path).await;
                assert_eq!(
                    (served, on_disk),
                    (hw, hw),
                    "{what}: {store} serves batch {served} and its file holds {on_disk}; batch {hw} is committed"
                );
            }
            let r = s2.stores.readiness("s-1").await.unwrap();
            assert!(r.ok, "{what}: {r:?}");
            assert_eq!(
                batch_of(&s2, &run, 3, &["launch_state"]).await.unwrap(),
                hw + 1,
                "{what}"
            );
            assert_eq!(
                read_back(&s2, &w, "launch_state", stores[0].1).await,
                (3, 3)
            );
            assert_eq!(read_back(&s2, &w, "sessions", stores[1].1).await, (hw, hw));
        }
    }
    assert!(boundaries >= 10, "only {boundaries} boundaries were cut");
    assert!(committed_cuts > 0, "no cut fell after the commit");
    println!("cut one batch at {boundaries} steps, 2 crash models each; {committed_cuts} reads found the cut batch committed");
}

/// The labels of an unpinned template's image are read for the image the
/// tag names now: after the tag moves to an image with a newer schema
/// label, a batch is written in that schema (a cache by `repo:tag` kept
/// the old image's labels).
#[tokio::test(start_paused = true)]
async fn the_schema_label_follows_a_moved_tag() {
    let w = World::new();
    w.publish("stable", &digest(1));
    let s = w.boot();
    let mut doc = template();
    doc.as_object_mut().unwrap().remove("store_validator");
    // Degrading, so that the recreate's readiness gate passes before the
    // new run's first batch.
    doc["stores"][0]["readiness"] = json!("degrading");
    put_template(&s, "st", doc).await;
    s.runtimes
        .start(start_request("s-1", "st"), &caller())
        .await
        .unwrap();
    batch_of(&s, &run_id(&s).await, 1, &["launch_state"])
        .await
        .unwrap();
    let envelope = s.stores.store_data("s-1", "launch_state").await.unwrap();
    assert_eq!(envelope.schema_version, 1);

    // The tag moves to an image that says it writes schema 2; the runtime
    // is recreated on it.
    w.publish("stable", &digest(2));
    w.engine.set_image_labels(
        &format!("{REPO}:stable"),
        [("io.berth.store.launch_state.schema_version", "2")],
    );
    let refreshed = s.refresh.refresh(None, true, &caller()).await.unwrap();
    assert!(refreshed.failed.is_empty(), "{refreshed:?}");
    let rec = s.runtimes.get("s-1").await.unwrap();
    assert_eq!(
        rec.image_digest.as_deref(),
        Some(digest(2).as_str()),
        "{rec:?}"
    );
    batch_of(&s, rec.run_id.as_deref().unwrap(), 2, &["launch_state"])
        .await
        .unwrap();
    let envelope = s.stores.store_data("s-1", "launch_state").await.unwrap();
    assert_eq!(envelope.schema_version, 2, "the moved tag's label");
}
