//! Host drift on the real Docker engine: containers that vanish, exit, or
//! appear with berth's labels but no record.

use crate::common;

use common::*;
use reqwest::StatusCode;
use serde_json::{json, Value};

async fn events(t: &TestServer, query: &str) -> Vec<Value> {
    let (status, body) = t.get(&format!("/v1/events?{query}")).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    body["events"].as_array().unwrap().clone()
}

#[tokio::test]
async fn a_container_removed_behind_berths_back_is_disposed() {
    let t = TestServer::start().await;
    t.put_app_template("engine", "v1").await;
    let (status, rt) = t.start_runtime("gone-1", "engine").await;
    assert_eq!(status, StatusCode::CREATED, "{rt}");
    let cid = rt["container_id"].as_str().unwrap().to_string();

    docker_lines(&["rm", "-f", &cid]);

    let ev = eventually("container_disappeared", async || {
        events(&t, "runtime=gone-1&type=container_disappeared")
            .await
            .into_iter()
            .next()
    })
    .await;
    assert_eq!(ev["container_id"], cid.as_str());
    let rec = eventually("record removed", async || {
        let (_, rec) = t.get("/v1/runtimes/gone-1").await;
        (rec["status"] == "removed").then_some(rec)
    })
    .await;
    assert!(rec["container_id"].is_null());
    let ops = t.operations("runtime=gone-1&kind=reconcile_dispose").await;
    assert_eq!(ops.len(), 1, "{ops:?}");
    assert_eq!(ops[0]["source"], "auto_reconcile");
    assert_eq!(ops[0]["outcome"], "success");
    // Raised once, though both the listener and the reconciler saw it.
    assert_eq!(
        events(&t, "runtime=gone-1&type=container_disappeared")
            .await
            .len(),
        1
    );
    let (_, notes) = t.get("/v1/notifications").await;
    assert!(
        notes["notifications"]
            .as_array()
            .unwrap()
            .iter()
            .any(
                |n| n["notification_type"] == "runtime.container_disappeared"
                    && n["payload"]["runtime_id"] == "gone-1"
            ),
        "{notes}"
    );
    t.shutdown().await;
}

#[tokio::test]
async fn a_labelled_container_without_record_is_adopted_and_a_foreign_one_is_not() {
    let t = TestServer::start_with(Options {
        adoption_grace: Some("0s".into()),
        ..Default::default()
    })
    .await;
    t.put_app_template("engine", "v1").await;
    let image = format!("{}:v1", test_image());
    let ours = docker_lines(&[
        "run",
        "-d",
        "--name",
        &format!("{}-hand-1", t.owner),
        "--label",
        &format!("io.berth.owner={}", t.owner),
        "--label",
        "io.berth.runtime_id=hand-1",
        "--label",
        "io.berth.template=engine",
        "--label",
        &format!("io.berth.image_ref={image}"),
        "--label",
        "io.berth.generation=4",
        &image,
    ]);
    let foreign_owner = unique("bt-foreign-");
    let foreign = docker_lines(&[
        "run",
        "-d",
        "--label",
        &format!("io.berth.owner={foreign_owner}"),
        "--label",
        "io.berth.runtime_id=theirs-1",
        "--label",
        "io.berth.template=engine",
        &image,
    ]);
    let (ours, foreign) = (ours[0].clone(), foreign[0].clone());

    let (status, report) = t.post("/v1/admin/reconcile", json!({})).await;
    assert_eq!(status, StatusCode::OK, "{report}");
    let rec = eventually("adoption", async || {
        let (s, rec) = t.get("/v1/runtimes/hand-1").await;
        (s == StatusCode::OK).then_some(rec)
    })
    .await;
    assert_eq!(rec["status"], "running");
    assert_eq!(rec["container_id"], ours.as_str());
    assert_eq!(rec["template"], "engine");
    assert_eq!(rec["image_ref"], image.as_str());
    assert_eq!(rec["generation"], 4);
    assert_eq!(
        rec["image_digest"],
        registry_digest(&test_image(), "v1").await.as_str()
    );
    let ops = t.operations("runtime=hand-1").await;
    assert_eq!(ops.len(), 1, "{ops:?}");
    assert_eq!(ops[0]["kind"], "reconcile_adopt");
    assert_eq!(ops[0]["source"], "auto_reconcile");
    assert_eq!(ops[0]["outcome"], "success");

    // Another owner's container: no record, still running, untouched.
    let (status, _) = t.get("/v1/runtimes/theirs-1").await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(docker_inspect(&foreign).unwrap()["State"]["Running"], true);
    docker_lines(&["rm", "-f", &foreign]);

    // An adopted runtime is managed like any other.
    let (status, stopped) = t.post("/v1/runtimes/hand-1/stop", json!({})).await;
    assert_eq!(status, StatusCode::OK, "{stopped}");
    assert_eq!(stopped["status"], "stopped");
    t.shutdown().await;
}

#[tokio::test]
async fn a_removed_id_is_never_readopted() {
    let t = TestServer::start_with(Options {
        adoption_grace: Some("0s".into()),
        ..Default::default()
    })
    .await;
    t.put_app_template("engine", "v1").await;
    let (status, _) = t.start_runtime("once", "engine").await;
    assert_eq!(status, StatusCode::CREATED);
    let (status, _) = t
        .call(reqwest::Method::DELETE, "/v1/runtimes/once", None)
        .await;
    assert_eq!(status, StatusCode::OK);
    let image = format!("{}:v1", test_image());
    let again = docker_lines(&[
        "run",
        "-d",
        "--label",
        &format!("io.berth.owner={}", t.owner),
        "--label",
        "io.berth.runtime_id=once",
        "--label",
        "io.berth.template=engine",
        &image,
    ]);
    let (status, report) = t.post("/v1/admin/reconcile", json!({})).await;
    assert_eq!(status, StatusCode::OK);
    assert!(
        report["reported"]
            .as_array()
            .unwrap()
            .iter()
            .any(|c| c == again[0].as_str()),
        "{report}"
    );
    let (_, rec) = t.get("/v1/runtimes/once").await;
    assert_eq!(rec["status"], "removed");
    assert_eq!(
        docker_inspect(&again[0]).unwrap()["State"]["Running"],
        true,
        "reported, not touched"
    );
    t.shutdown().await;
}

#[tokio::test]
async fn an_exited_container_is_recorded_and_restarted_per_policy() {
    let t = TestServer::start().await;
    t.put_template(
        "flaky",
        json!({"image": test_image(), "tag": "v1", "port": 8080, "restart": "on-failure"}),
    )
    .await;
    t.put_app_template("steady", "v1").await;
    let (_, flaky) = t.start_runtime("flaky-1", "flaky").await;
    let (_, steady) = t.start_runtime("steady-1", "steady").await;
    let flaky_cid = flaky["container_id"].as_str().unwrap().to_string();
    let steady_cid = steady["container_id"].as_str().unwrap().to_string();

    // Kill the main processes.
    docker_lines(&["kill", "-s", "KILL", &flaky_cid, &steady_cid]);

    let exited = eventually("container_exited of steady-1", async || {
        events(&t, "runtime=steady-1&type=container_exited")
            .await
            .into_iter()
            .next()
    })
    .await;
    assert_eq!(exited["details"]["exit_code"], "137");
    let rec = eventually("steady-1 exited", async || {
        let (_, rec) = t.get("/v1/runtimes/steady-1").await;
        (rec["status"] == "exited").then_some(rec)
    })
    .await;
    assert_eq!(rec["container_id"], steady_cid.as_str());
    // The record change is logged: its operation row says what was seen.
    let ops = t.operations("runtime=steady-1&kind=reconcile_exited").await;
    assert_eq!(ops.len(), 1, "{ops:?}");
    assert_eq!(ops[0]["outcome"], "success");
    assert_eq!(ops[0]["source"], "auto_reconcile");
    assert_eq!(ops[0]["details"]["exit_code"], "137");
    assert_eq!(ops[0]["details"]["container_id"], steady_cid.as_str());

    // on-failure: berth starts it again, logged as an automatic restart.
    let ops = eventually("flaky-1 restarted", async || {
        let ops = t.operations("runtime=flaky-1&kind=restart").await;
        ops.iter().any(|o| o["outcome"] == "success").then_some(ops)
    })
    .await;
    assert_eq!(ops[0]["source"], "auto_reconcile");
    let exits = events(&t, "runtime=flaky-1&type=container_exited").await;
    assert_eq!(exits[0]["details"]["exit_code"], "137");
    let (_, rec) = t.get("/v1/runtimes/flaky-1").await;
    assert_eq!(rec["status"], "running");
    assert_eq!(
        docker_inspect(&flaky_cid).unwrap()["State"]["Running"],
        true
    );
    // restart = never: still exited.
    let (_, rec) = t.get("/v1/runtimes/steady-1").await;
    assert_eq!(rec["status"], "exited");
    t.shutdown().await;
}
