//! Shutdown and crash recovery of the real `berth` binary.

use crate::common;

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use berth::adapters::store::sqlite::SqliteStore;
use berth::ports::Store;
use berth_core::operation::{Operation, OperationKind, Source};
use berth_core::runtime::RuntimeRecord;
use common::*;
use serde_json::{json, Value};

async fn get_json(client: &reqwest::Client, url: String) -> Value {
    client.get(url).send().await.unwrap().json().await.unwrap()
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

struct Berth {
    child: Child,
    base: String,
}

impl Berth {
    async fn spawn(data_dir: &std::path::Path, owner: &str) -> Berth {
        let port = free_port();
        let child = Command::new(env!("CARGO_BIN_EXE_berth"))
            .args(["serve", "--listen", &format!("127.0.0.1:{port}")])
            .arg("--data-dir")
            .arg(data_dir)
            .args(["--owner", owner, "--network", owner])
            .env_remove("BERTH_CONFIG")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("berth binary runs");
        // Owned by `Berth` at once, so that Drop reaps it on every path.
        let berth = Berth {
            child,
            base: format!("http://127.0.0.1:{port}"),
        };
        let client = reqwest::Client::new();
        for _ in 0..300 {
            if client
                .get(format!("{}/healthz", berth.base))
                .send()
                .await
                .is_ok()
            {
                return berth;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("berth did not come up on {}", berth.base);
    }

    fn sigterm(&self) {
        let status = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .unwrap();
        assert!(status.success());
    }

    async fn wait_exit(&mut self) -> std::process::ExitStatus {
        for _ in 0..600 {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        panic!("berth did not exit after SIGTERM");
    }
}

impl Drop for Berth {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn cleanup(owner: &str) {
    let ids = docker_lines(&[
        "ps",
        "-aq",
        "--filter",
        &format!("label=io.berth.owner={owner}"),
    ]);
    if !ids.is_empty() {
        let mut args = vec!["rm", "-f"];
        args.extend(ids.iter().map(String::as_str));
        docker_lines(&args);
    }
    docker_lines(&["network", "rm", owner]);
}

#[tokio::test]
async fn sigterm_lets_an_operation_in_flight_finish() {
    let data = tempfile::tempdir().unwrap();
    let owner = unique("bt-");
    let mut berth = Berth::spawn(data.path(), &owner).await;
    let client = reqwest::Client::new();
    let resp = client
        .put(format!("{}/v1/templates/engine", berth.base))
        .json(&json!({"image": test_image(), "tag": "v1", "port": 8080}))
        .send()
        .await
        .unwrap();
    assert!(resp.status().is_success());

    let start = tokio::spawn({
        let url = format!("{}/v1/runtimes", berth.base);
        let client = client.clone();
        async move {
            client
                .post(url)
                .json(&json!({"id": "inflight", "template": "engine"}))
                .send()
                .await
        }
    });
    // Once berth has recorded the start as under way (Docker is working),
    // ask it to stop.
    let ops_url = format!("{}/v1/operations?runtime=inflight", berth.base);
    let mut under_way = false;
    for _ in 0..2000 {
        let ops: Value = get_json(&client, ops_url.clone()).await;
        if ops["operations"]
            .as_array()
            .is_some_and(|o| o.iter().any(|o| o["outcome"] == "in_progress"))
        {
            under_way = true;
            break;
        }
    }
    assert!(under_way, "the start was seen in progress");
    berth.sigterm();
    let answer = start
        .await
        .unwrap()
        .expect("the request in flight is answered");
    assert_eq!(answer.status(), 201);
    let status = berth.wait_exit().await;
    assert!(status.success(), "berth exits cleanly on SIGTERM: {status}");

    // After a restart the record and the log tell the same story.
    let berth = Berth::spawn(data.path(), &owner).await;
    let rt: Value = get_json(&client, format!("{}/v1/runtimes/inflight", berth.base)).await;
    assert_eq!(rt["status"], "running", "{rt}");
    let ops: Value = get_json(
        &client,
        format!("{}/v1/operations?runtime=inflight", berth.base),
    )
    .await;
    let ops = ops["operations"].as_array().unwrap();
    assert_eq!(ops.len(), 1, "{ops:?}");
    assert_eq!(ops[0]["outcome"], "success");
    drop(berth);
    cleanup(&owner);
}

#[tokio::test]
async fn boot_records_interrupted_operations_as_failed() {
    let t_owner = unique("bt-");
    let data = tempfile::tempdir().unwrap();
    // Leave what a crash mid-start leaves: a `starting` record and an
    // operation `in_progress`, and no container.
    {
        let store = SqliteStore::open(&data.path().join("berth.db"))
            .await
            .unwrap();
        let rec = RuntimeRecord::new("crashed", "engine", Default::default(), 1_000);
        let op = Operation::begin(
            "op-crashed".into(),
            OperationKind::Start,
            Source::Api,
            1_000,
        )
        .for_runtime("crashed", "engine");
        store.record(Some(&rec), &op).await.unwrap();
        store.close().await;
    }
    let berth = Berth::spawn(data.path(), &t_owner).await;
    let client = reqwest::Client::new();
    let ops: Value = get_json(
        &client,
        format!("{}/v1/operations?runtime=crashed", berth.base),
    )
    .await;
    let original = ops["operations"]
        .as_array()
        .unwrap()
        .iter()
        .find(|o| o["id"] == "op-crashed")
        .cloned()
        .expect("the interrupted operation is still in the log");
    assert_eq!(original["outcome"], "failure");
    assert_eq!(original["error_code"], "interrupted");
    let rt: Value = get_json(&client, format!("{}/v1/runtimes/crashed", berth.base)).await;
    assert_eq!(rt["status"], "failed", "{rt}");
    assert_eq!(rt["last_error"]["code"], "interrupted");
    drop(berth);
    cleanup(&t_owner);
}
