//! The store service on the fakes, with paused time: a batch cut by a crash
//! is refused and leaves the stores as they were, a failed fsync is an
//! error and never committed, the image's label decides the schema, the
//! validator's timeout blocks, and recovery at start is logged.

mod world;

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
    s.stores
        .write_batch(
            "s-1",
            BatchRequest {
                run_id: run.to_string(),
                reason: None,
                writes: vec![
                    write("launch_state", json!({"n": 1})),
                    write("sessions", json!([])),
                ],
            },
            &caller(),
        )
        .await
        .map(|b| b.seq)
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
