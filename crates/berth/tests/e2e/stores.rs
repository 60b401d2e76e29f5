//! State stores end to end: batches through the API, readiness on the real
//! engine (health, stores, the validator run with `docker exec`), recovery
//! at restart, and rollouts gated on readiness.

use crate::common;

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use common::*;
use reqwest::StatusCode;
use serde_json::{json, Value};

fn state_dir(t: &TestServer, id: &str) -> PathBuf {
    t.data_dir.path().join("runtimes").join(id).join("state")
}

fn stores() -> Value {
    json!([
        {"name": "launch_state", "path": "launch-state.json", "schema_version": 1,
         "readiness": "blocking", "recovery": "quarantine"},
        {"name": "sessions", "path": "sessions.json", "schema_version": 1,
         "readiness": "degrading", "recovery": "rebuild"}
    ])
}

fn template(image: &str, tag: &str) -> Value {
    json!({"image": image, "tag": tag, "port": 8080, "stop_grace": "1s",
           "health": {"path": "/healthz", "interval": "200ms", "timeout": "1s", "grace": "5s"},
           "stores": stores(),
           "store_validator": ["/bin/busybox", "sh", "-c",
               "if test -f \"$BERTH_STATE_PATH/launch-state.json\"; then echo launch state present; else echo launch state absent; exit 1; fi"]})
}

async fn runtime(t: &TestServer, id: &str) -> Value {
    let (status, rt) = t.get(&format!("/v1/runtimes/{id}")).await;
    assert_eq!(status, StatusCode::OK, "{rt}");
    rt
}

/// The verdict once the container answers its health check (a start does
/// not wait for it; under load httpd may take a moment to listen).
async fn readiness(t: &TestServer, id: &str) -> Value {
    eventually("the container to answer its health check", async || {
        let (status, r) = t.get(&format!("/v1/runtimes/{id}/readiness")).await;
        assert_eq!(status, StatusCode::OK, "{r}");
        (r["reason"] != "container_unhealthy").then_some(r)
    })
    .await
}

fn action<'a>(r: &'a Value, store: &str) -> &'a Value {
    r["actions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|a| a["store"] == store)
        .unwrap_or_else(|| panic!("no action for {store}: {r}"))
}

async fn batch(t: &TestServer, id: &str, body: Value) -> (StatusCode, Value) {
    t.post(&format!("/v1/runtimes/{id}/store/batches"), body)
        .await
}

fn quarantined(t: &TestServer, id: &str) -> Vec<String> {
    let dir = state_dir(t, id).join(".berth/quarantine");
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .map(|d| {
            d.map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    names.sort();
    names
}

#[tokio::test]
async fn batches_readiness_and_recovery_at_restart() {
    let t = TestServer::start().await;
    t.put_template("st", template(&test_image(), "v1")).await;
    let (status, rt) = t.start_runtime("s-1", "st").await;
    assert_eq!(status, StatusCode::CREATED, "{rt}");
    let run1 = rt["run_id"].as_str().expect("a run id").to_string();
    let on_disk = std::fs::read_to_string(state_dir(&t, "s-1").join(".berth/run_id")).unwrap();
    assert_eq!(
        on_disk.trim(),
        run1,
        "the run id is written before the start"
    );

    // Nothing checkpointed yet: blocked by the blocking store, and the
    // validator is not run while the stores block.
    let r = readiness(&t, "s-1").await;
    assert_eq!(r["ok"], false, "{r}");
    assert_eq!(r["impact"], "blocked");
    assert_eq!(r["reason"], "store_recovery_required");
    assert_eq!(action(&r, "launch_state")["kind"], "block_readiness");
    assert_eq!(action(&r, "launch_state")["reason"], "missing");
    assert_eq!(action(&r, "sessions")["kind"], "rebuild");

    // Bad batches are refused with stable codes and change nothing.
    for (body, code, status) in [
        (
            json!({"run_id": "not-the-run", "writes": [{"store": "launch_state", "data": {}}]}),
            "conflict",
            StatusCode::CONFLICT,
        ),
        (
            json!({"run_id": run1, "writes": [{"store": "nope", "data": {}}]}),
            "invalid_request",
            StatusCode::BAD_REQUEST,
        ),
        (
            json!({"run_id": run1, "writes": [{"store": "sessions", "data": 1}, {"store": "sessions", "data": 2}]}),
            "invalid_request",
            StatusCode::BAD_REQUEST,
        ),
        (
            json!({"run_id": run1, "writes": []}),
            "invalid_request",
            StatusCode::BAD_REQUEST,
        ),
        (
            json!({"run_id": run1, "writes": [{"store": "sessions", "data": "x".repeat(5 << 20)}]}),
            "payload_too_large",
            StatusCode::PAYLOAD_TOO_LARGE,
        ),
    ] {
        let (got, body) = batch(&t, "s-1", body).await;
        assert_eq!(got, status, "{body}");
        assert_eq!(body["error"]["code"], code, "{body}");
    }
    let (status, body) = batch(
        &t,
        "nope",
        json!({"run_id": run1, "writes": [{"store": "sessions", "data": {}}]}),
    )
    .await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{body}");
    let (_, manifest) = t.get("/v1/runtimes/s-1/store").await;
    assert_eq!(manifest["high_watermark"], 0, "{manifest}");

    // A good batch commits both stores.
    let (status, committed) = batch(
        &t,
        "s-1",
        json!({"run_id": run1, "reason": "launch checkpoint",
               "writes": [{"store": "launch_state", "data": {"members": ["builder"]}},
                          {"store": "sessions", "data": {"sessions": [{"member": "builder"}]}}]}),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{committed}");
    assert_eq!(committed["seq"], 1);
    assert_eq!(committed["receipts"].as_array().unwrap().len(), 2);
    let (_, manifest) = t.get("/v1/runtimes/s-1/store").await;
    assert_eq!(manifest["high_watermark"], 1);
    assert_eq!(manifest["active_run_id"], run1.as_str());
    assert_eq!(manifest["entries"].as_array().unwrap().len(), 2);
    let (status, launch) = t.get("/v1/runtimes/s-1/store/launch_state").await;
    assert_eq!(status, StatusCode::OK, "{launch}");
    assert_eq!(launch["data"]["members"][0], "builder");
    assert_eq!(launch["run_id"], run1.as_str());
    let (status, body) = t.get("/v1/runtimes/s-1/store/nope").await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(body["error"]["code"], "store_not_found");

    let r = readiness(&t, "s-1").await;
    assert_eq!(r["ok"], true, "{r}");
    assert_eq!(r["reason"], "ready");
    assert_eq!(r["impact"], "none");
    assert!(
        r["diagnostics"]
            .as_array()
            .unwrap()
            .contains(&json!("launch state present")),
        "the validator's output is a diagnostic: {r}"
    );
    assert_eq!(runtime(&t, "s-1").await["readiness"]["ok"], true);
    let ops = t.operations("runtime=s-1&kind=store_batch").await;
    assert_eq!(ops.len(), 1, "{ops:?}");

    // A corrupt degrading store: degraded, rebuild; still ok.
    std::fs::write(state_dir(&t, "s-1").join("sessions.json"), "{bad").unwrap();
    let r = readiness(&t, "s-1").await;
    assert_eq!(r["ok"], true, "{r}");
    assert_eq!(r["impact"], "degraded");
    assert_eq!(action(&r, "sessions")["kind"], "rebuild");
    assert_eq!(action(&r, "sessions")["reason"], "corrupt");
    // Reading readiness changed nothing.
    assert_eq!(
        std::fs::read_to_string(state_dir(&t, "s-1").join("sessions.json")).unwrap(),
        "{bad"
    );

    // A restart applies the plan (the corrupt file is moved aside, never
    // deleted) and starts a new run: the blocking store is now stale.
    let (status, rt) = t.post("/v1/runtimes/s-1/restart", json!({})).await;
    assert_eq!(status, StatusCode::OK, "{rt}");
    let run2 = rt["run_id"].as_str().unwrap().to_string();
    assert_ne!(run2, run1);
    assert!(!state_dir(&t, "s-1").join("sessions.json").exists());
    let moved = quarantined(&t, "s-1");
    assert!(
        moved
            .iter()
            .any(|n| n.starts_with("sessions.") && n.ends_with("sessions.json")),
        "{moved:?}"
    );
    let ops = t.operations("runtime=s-1&kind=store_rebuild").await;
    assert_eq!(ops.len(), 1, "{ops:?}");
    assert_eq!(ops[0]["details"]["reason"], "corrupt", "{ops:?}");
    let r = readiness(&t, "s-1").await;
    assert_eq!(r["ok"], false, "{r}");
    assert_eq!(action(&r, "launch_state")["reason"], "stale_run_id");
    assert_eq!(action(&r, "launch_state")["kind"], "block_readiness");
    // A batch of the old run is refused now.
    let (status, _) = batch(
        &t,
        "s-1",
        json!({"run_id": run1, "writes": [{"store": "launch_state", "data": {}}]}),
    )
    .await;
    assert_eq!(status, StatusCode::CONFLICT);

    // A future schema blocks and is quarantined at the next start.
    let (status, body) = batch(
        &t,
        "s-1",
        json!({"run_id": run2, "writes": [{"store": "launch_state", "schema_version": 7, "data": {}},
                                          {"store": "sessions", "data": {"sessions": []}}]}),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let r = readiness(&t, "s-1").await;
    assert_eq!(r["ok"], false, "{r}");
    assert_eq!(action(&r, "launch_state")["kind"], "quarantine");
    assert_eq!(action(&r, "launch_state")["reason"], "future_schema");
    let (_, rt) = t.post("/v1/runtimes/s-1/restart", json!({})).await;
    let run3 = rt["run_id"].as_str().unwrap().to_string();
    assert!(quarantined(&t, "s-1")
        .iter()
        .any(|n| n.starts_with("launch_state.")));
    let ops = t.operations("runtime=s-1&kind=store_quarantine").await;
    assert_eq!(ops[0]["details"]["reason"], "future_schema", "{ops:?}");

    // An invariant failure reported by the validator blocks, with its line.
    let (status, _) = batch(
        &t,
        "s-1",
        json!({"run_id": run3, "writes": [{"store": "launch_state", "data": {}}]}),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED);
    assert_eq!(readiness(&t, "s-1").await["ok"], true);
    let mut doc = template(&test_image(), "v1");
    doc["store_validator"] = json!([
        "/bin/busybox",
        "sh",
        "-c",
        "echo 'confirmed member builder has no session'; exit 3"
    ]);
    t.put_template("st", doc).await;
    let r = readiness(&t, "s-1").await;
    assert_eq!(r["ok"], false, "{r}");
    assert_eq!(r["reason"], "store_validator_failed");
    assert!(
        r["diagnostics"]
            .as_array()
            .unwrap()
            .contains(&json!("confirmed member builder has no session")),
        "{r}"
    );

    // A stopped runtime is not ready.
    t.post("/v1/runtimes/s-1/stop", json!({})).await;
    let r = readiness(&t, "s-1").await;
    assert_eq!(r["reason"], "container_not_running", "{r}");

    // `berth status` and /metrics report it.
    let (_, status) = t.get("/v1/status").await;
    assert_eq!(status["readiness"]["blocked"], 1, "{status}");
    assert_eq!(status["readiness_blocked"], json!(["s-1"]), "{status}");
    let metrics = t
        .client
        .get(format!("{}/metrics", t.base))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains("berth_readiness_checks_total{impact=\"blocked\"}"),
        "{metrics}"
    );
    assert!(
        metrics.contains("berth_store_batches_total{outcome=\"committed\"} 3"),
        "{metrics}"
    );
    t.shutdown().await;
}

/// Plays the runtime's controller: whenever a new run id appears in the
/// state directory and `enabled` is set, it checkpoints that run.
fn controller(t: &TestServer, id: &str, enabled: Arc<AtomicBool>) -> tokio::task::JoinHandle<()> {
    let run_file = state_dir(t, id).join(".berth/run_id");
    let url = format!("{}/v1/runtimes/{id}/store/batches", t.base);
    let client = t.client.clone();
    tokio::spawn(async move {
        let mut done = String::new();
        loop {
            let run = std::fs::read_to_string(&run_file).unwrap_or_default();
            let run = run.trim().to_string();
            if !run.is_empty() && run != done && enabled.load(Ordering::SeqCst) {
                let body = json!({"run_id": run, "reason": "controller",
                                  "writes": [{"store": "launch_state", "data": {"run": run}}]});
                if let Ok(resp) = client.post(&url).json(&body).send().await {
                    if resp.status() == StatusCode::CREATED {
                        done = run;
                    }
                }
            }
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
    })
}

async fn rollout_of(t: &TestServer, template: &str, nth: usize) -> Value {
    let id = eventually("a rollout", async || {
        let (_, list) = t.get(&format!("/v1/rollouts?template={template}")).await;
        let list = list["rollouts"].as_array().cloned().unwrap_or_default();
        (list.len() > nth).then(|| list[0]["id"].as_str().unwrap().to_string())
    })
    .await;
    eventually("the rollout to finish", async || {
        let (_, r) = t.get(&format!("/v1/rollouts/{id}")).await;
        ["completed", "halted"]
            .contains(&r["state"].as_str().unwrap_or_default())
            .then_some(r)
    })
    .await
}

#[tokio::test]
async fn a_rollout_waits_for_the_new_run_to_checkpoint_and_restores_one_that_does_not() {
    let t = TestServer::start().await;
    let repo = unique("sr-");
    let image = push_as("v1", &repo, "stable");
    let v1 = registry_digest(&image, "stable").await;
    let mut doc = template(&image, "stable");
    doc["watch"] = json!(true);
    doc["update_policy"] = json!("track");
    doc["store_validator"] = Value::Null;
    doc.as_object_mut().unwrap().remove("store_validator");
    t.put_template("sr", doc).await;
    let checkpoint = Arc::new(AtomicBool::new(true));
    let (status, rt) = t.start_runtime("r-1", "sr").await;
    assert_eq!(status, StatusCode::CREATED, "{rt}");
    let ctl = controller(&t, "r-1", checkpoint.clone());
    eventually("the first run checkpointed", async || {
        (readiness(&t, "r-1").await["ok"] == true).then_some(())
    })
    .await;
    let (_, seeded) = t.post("/v1/admin/images/watch", json!({})).await;
    assert_eq!(seeded["seeded"], json!(["sr"]), "{seeded}");

    // A new image whose run checkpoints: the rollout passes.
    push_as("v2", &repo, "stable");
    let v2 = registry_digest(&image, "stable").await;
    t.post("/v1/admin/images/watch", json!({})).await;
    let done = rollout_of(&t, "sr", 0).await;
    assert_eq!(done["state"], "completed", "{done}");
    let rt = runtime(&t, "r-1").await;
    assert_eq!(rt["image_digest"], v2.as_str(), "{rt}");
    let (_, launch) = t.get("/v1/runtimes/r-1/store/launch_state").await;
    assert_eq!(launch["run_id"], rt["run_id"], "the new run checkpointed");
    assert_eq!(rt["readiness"]["ok"], true, "{rt}");

    // A new image whose run never checkpoints: not ready within the
    // grace, so the old container is restored and the pin reverted.
    checkpoint.store(false, Ordering::SeqCst);
    let old_container = rt["container_id"].clone();
    push_as("v1", &repo, "stable");
    t.post("/v1/admin/images/watch", json!({})).await;
    let halted = rollout_of(&t, "sr", 1).await;
    assert_eq!(halted["state"], "halted", "{halted}");
    let rt = runtime(&t, "r-1").await;
    assert_eq!(
        rt["container_id"], old_container,
        "the old container is back"
    );
    assert_eq!(rt["image_digest"], v2.as_str());
    let (_, pin) = t.get("/v1/templates/sr/pin").await;
    assert_eq!(pin["digest"], v2.as_str(), "the pin is reverted: {pin}");
    let failed = t.operations("runtime=r-1&kind=recreate").await;
    let why = failed[0]["error_message"].as_str().unwrap_or_default();
    assert!(why.contains("not ready"), "{failed:?}");
    assert_ne!(v1, v2);
    ctl.abort();
    t.shutdown().await;
}

#[tokio::test]
async fn state_a_newer_schema_wrote_is_not_read_after_a_pin_revert() {
    let t = TestServer::start().await;
    let repo = unique("sv-");
    // The labelled image says it writes launch_state in schema 2.
    let image = push_as("labelled", &repo, "new");
    push_as("v1", &repo, "old");
    let new = registry_digest(&image, "new").await;
    let old = registry_digest(&image, "old").await;
    let mut doc = template(&image, "new");
    doc.as_object_mut().unwrap().remove("store_validator");
    t.put_template("sv", doc).await;
    let (status, _) = t.post("/v1/templates/sv/pin", json!({"digest": new})).await;
    assert!(status.is_success());
    let checkpoint = Arc::new(AtomicBool::new(true));
    let (status, rt) = t.start_runtime("v-1", "sv").await;
    assert_eq!(status, StatusCode::CREATED, "{rt}");
    let ctl = controller(&t, "v-1", checkpoint.clone());
    eventually("the new image checkpointed", async || {
        (readiness(&t, "v-1").await["ok"] == true).then_some(())
    })
    .await;
    let (_, launch) = t.get("/v1/runtimes/v-1/store/launch_state").await;
    assert_eq!(launch["schema_version"], 2, "the label's version: {launch}");

    // The operator rolls the pin back to the older image and recreates.
    let (status, _) = t
        .post(
            "/v1/templates/sv/pin",
            json!({"digest": old, "reason": "revert"}),
        )
        .await;
    assert!(status.is_success());
    let (status, report) = t
        .post(
            "/v1/admin/images/refresh",
            json!({"templates": ["sv"], "recreate": true}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{report}");
    assert_eq!(report["recreated"], json!(["v-1"]), "{report}");
    let rt = runtime(&t, "v-1").await;
    assert_eq!(rt["image_digest"], old.as_str());
    // The schema-2 state was moved aside before the old image started; the
    // store holds what the old image's run wrote since, in schema 1.
    let moved = quarantined(&t, "v-1");
    let aside = moved
        .iter()
        .find(|n| n.starts_with("launch_state."))
        .unwrap_or_else(|| panic!("nothing quarantined: {moved:?}"));
    let aside: Value = serde_json::from_slice(
        &std::fs::read(state_dir(&t, "v-1").join(".berth/quarantine").join(aside)).unwrap(),
    )
    .unwrap();
    assert_eq!(aside["schema_version"], 2);
    let (_, launch) = t.get("/v1/runtimes/v-1/store/launch_state").await;
    assert_eq!(launch["schema_version"], 1, "{launch}");
    assert_eq!(launch["run_id"], rt["run_id"]);
    let ops = t.operations("runtime=v-1&kind=store_quarantine").await;
    assert_eq!(ops[0]["details"]["reason"], "future_schema", "{ops:?}");
    ctl.abort();
    t.shutdown().await;
}
