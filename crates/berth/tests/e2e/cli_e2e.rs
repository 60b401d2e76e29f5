//! The real `berth` binary as a client of a real server.

use crate::common;

use std::process::Output;

use common::*;
use serde_json::Value;

fn berth(t: &TestServer, args: &[&str]) -> Output {
    std::process::Command::new(env!("CARGO_BIN_EXE_berth"))
        .arg("--api-url")
        .arg(&t.base)
        .args(args)
        .env_remove("BERTH_API_TOKEN")
        .output()
        .expect("berth binary runs")
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).to_string()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).to_string()
}

// The CLI runs as a blocking child process; a second worker keeps the
// in-process server answering meanwhile.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cli_drives_templates_pins_runtimes_and_ops() {
    let t = TestServer::start().await;
    let image = test_image();
    let v1 = registry_digest(&image, "v1").await;

    let out = berth(
        &t,
        &[
            "template", "put", "engine", "--image", &image, "--tag", "v1", "--port", "8080",
        ],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let out = berth(&t, &["pin", "promote", "engine", &v1, "--reason", "vetted"]);
    assert!(out.status.success(), "{}", stderr(&out));

    let out = berth(
        &t,
        &[
            "runtime",
            "start",
            "cli-1",
            "--template",
            "engine",
            "--env",
            "MODE=dev",
        ],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stdout(&out).contains("running"), "{}", stdout(&out));
    // While the start was in flight, its operation showed on stderr,
    // live from the change stream.
    assert!(
        stderr(&out).contains("  start in_progress"),
        "{}",
        stderr(&out)
    );

    // Tables for people, JSON for scripts.
    let out = berth(&t, &["runtime", "ls"]);
    assert!(out.status.success());
    let table = stdout(&out);
    assert!(table.lines().next().unwrap().contains("STATUS"), "{table}");
    assert!(
        table.contains("cli-1") && table.contains("running"),
        "{table}"
    );
    let out = berth(&t, &["--output", "json", "runtime", "ls"]);
    let json: Value = serde_json::from_slice(&out.stdout).expect("JSON output");
    assert_eq!(json["runtimes"][0]["id"], "cli-1");
    assert_eq!(json["runtimes"][0]["image_digest"], v1.as_str());

    let out = berth(&t, &["runtime", "rm", "cli-1"]);
    assert!(out.status.success(), "{}", stderr(&out));

    // The log marks the CLI as the source.
    let out = berth(&t, &["--output", "json", "ops", "--runtime", "cli-1"]);
    let ops: Value = serde_json::from_slice(&out.stdout).unwrap();
    let ops = ops["operations"].as_array().unwrap();
    assert_eq!(ops.len(), 2);
    assert!(ops.iter().all(|o| o["source"] == "cli"), "{ops:?}");

    // Status: the instance, its loops, its fleet.
    let out = berth(&t, &["status"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let text = stdout(&out);
    assert!(text.contains(&format!("owner: {}", t.owner)), "{text}");
    assert!(text.contains("runtimes: removed 1"), "{text}");
    let out = berth(&t, &["--output", "json", "status"]);
    let status: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(status["runtimes"]["removed"], 1);
    assert!(
        status["reconcile_last_run"].as_i64().unwrap() > 0,
        "the boot pass ran: {status}"
    );

    // API errors: the message and code on stderr, a non-zero exit.
    let out = berth(&t, &["runtime", "show", "nobody"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("runtime_not_found"),
        "{}",
        stderr(&out)
    );
    let out = berth(&t, &["runtime", "start", "cli-1", "--template", "engine"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("runtime_removed"), "{}", stderr(&out));
    // Bad CLI input is refused before any request.
    let out = berth(
        &t,
        &[
            "runtime",
            "start",
            "x",
            "--template",
            "engine",
            "--env",
            "NOEQUALS",
        ],
    );
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    t.shutdown().await;
}

#[test]
fn cli_says_when_berth_is_not_running() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_berth"))
        .args(["--api-url", "http://127.0.0.1:9", "runtime", "ls"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("cannot reach berth"),
        "{}",
        stderr(&out)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cli_writes_a_batch_shows_stores_and_reports_readiness() {
    let t = TestServer::start().await;
    t.put_template(
        "st",
        serde_json::json!({"image": test_image(), "tag": "v1", "stop_grace": "1s",
                           "stores": [{"name": "launch_state", "path": "launch-state.json"}]}),
    )
    .await;
    let (_, rt) = t.start_runtime("c-1", "st").await;
    let run = rt["run_id"].as_str().unwrap().to_string();

    // Blocked before the first batch: exit 1, and the table says why.
    let out = berth(&t, &["readiness", "c-1"]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    let text = stdout(&out);
    assert!(text.contains("ready: no"), "{text}");
    assert!(
        text.contains("launch_state") && text.contains("missing"),
        "{text}"
    );

    let file = t.data_dir.path().join("launch.json");
    std::fs::write(&file, r#"{"members": ["builder"]}"#).unwrap();
    let out = berth(
        &t,
        &[
            "store",
            "write",
            "c-1",
            "--run-id",
            &run,
            "--set",
            &format!("launch_state=@{}", file.display()),
            "--reason",
            "cli",
        ],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        stdout(&out).contains("committed (seq 1"),
        "{}",
        stdout(&out)
    );

    // A bad value is refused before anything is sent.
    let out = berth(
        &t,
        &[
            "store",
            "write",
            "c-1",
            "--run-id",
            &run,
            "--set",
            "launch_state={",
        ],
    );
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("is not JSON"), "{}", stderr(&out));
    // A stale run is the API's 409, printed with its code.
    let out = berth(
        &t,
        &[
            "store",
            "write",
            "c-1",
            "--run-id",
            "old",
            "--set",
            "launch_state={}",
        ],
    );
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("conflict"), "{}", stderr(&out));

    let out = berth(&t, &["readiness", "c-1"]);
    assert_eq!(out.status.code(), Some(0), "{}", stdout(&out));
    assert!(stdout(&out).contains("ready: yes"), "{}", stdout(&out));
    let out = berth(&t, &["store", "show", "c-1"]);
    assert!(stdout(&out).contains("launch_state"), "{}", stdout(&out));
    let out = berth(
        &t,
        &["--output", "json", "store", "show", "c-1", "launch_state"],
    );
    let envelope: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(envelope["data"]["members"][0], "builder");
    assert_eq!(envelope["run_id"], run.as_str());
    t.shutdown().await;
}

/// `berth rollout watch` follows a rollout live from the change stream:
/// one JSON line per state with `--output json`, exit 0 when it completed;
/// a halted one exits 1.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cli_watches_a_rollout_to_its_end() {
    let t = TestServer::start().await;
    let repo = unique("cw-");
    let image = push_as("v1", &repo, "stable");
    t.put_template(
        "trk",
        serde_json::json!({"image": image, "tag": "stable", "port": 8080, "watch": true,
            "update_policy": "track",
            "health": {"path": "/healthz", "interval": "200ms", "timeout": "1s", "grace": "5s"},
            "rollout": {"batch_size": 1, "max_failures": 1}, "stop_grace": "1s"}),
    )
    .await;
    for id in ["w-1", "w-2"] {
        let (status, body) = t.start_runtime(id, "trk").await;
        assert!(status.is_success(), "{body}");
    }
    let tick = async || {
        let (status, report) = t
            .post("/v1/admin/images/watch", serde_json::json!({}))
            .await;
        assert!(status.is_success(), "{report}");
        report
    };
    tick().await;
    push_as("v2", &repo, "stable");
    assert_eq!(tick().await["tracked"], serde_json::json!(["trk"]));
    let (_, list) = t.get("/v1/rollouts?template=trk").await;
    let id = list["rollouts"][0]["id"].as_str().unwrap().to_string();

    let out = berth(&t, &["--output", "json", "rollout", "watch", &id]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let states: Vec<Value> = stdout(&out)
        .lines()
        .map(|l| serde_json::from_str(l).expect("one JSON document a line"))
        .collect();
    let last = states.last().expect("at least the final state");
    assert_eq!(last["state"], "completed", "{last}");
    assert_eq!(last["progress"]["updated"], 2, "{last}");
    let done: Vec<u64> = states
        .iter()
        .map(|s| s["progress"]["updated"].as_u64().unwrap())
        .collect();
    assert!(done.windows(2).all(|w| w[0] <= w[1]), "{done:?}");
    // Each line is a new state.
    assert!(states.windows(2).all(|w| w[0] != w[1]), "{}", stdout(&out));

    // It followed the change stream (not polls).
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
        metrics
            .lines()
            .any(|l| l.starts_with("berth_http_requests_total")
                && l.contains("route=\"/v1/stream\"")
                && l.contains("status=\"200\"")),
        "{metrics}"
    );

    // A broken release halts: exit 1, the summary says so.
    push_as("broken", &repo, "stable");
    assert_eq!(tick().await["tracked"], serde_json::json!(["trk"]));
    let (_, list) = t.get("/v1/rollouts?template=trk").await;
    let halted = list["rollouts"][0]["id"].as_str().unwrap().to_string();
    assert_ne!(halted, id);
    let out = berth(&t, &["rollout", "watch", &halted]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(
        stdout(&out).contains(&format!("rollout {halted} halted")),
        "{}",
        stdout(&out)
    );
    t.shutdown().await;
}

// A start that has to pull shows the pull layer by layer (as lines: the
// test's stderr is not a terminal).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cli_start_shows_the_image_pull_by_layer() {
    let t = TestServer::start().await;
    let target = push_registry_only_image(&unique("cli-pull"));
    let out = berth(
        &t,
        &[
            "template", "put", "pulled", "--image", &target, "--tag", "v1", "--port", "8080",
        ],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let out = berth(
        &t,
        &["runtime", "start", "cli-pull", "--template", "pulled"],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let err = stderr(&out);
    let layer_lines: Vec<&str> = err.lines().filter(|l| l.starts_with("  pull ")).collect();
    assert!(!layer_lines.is_empty(), "no layer lines in:\n{err}");
    assert!(
        layer_lines.iter().any(|l| l.ends_with(": Pull complete")),
        "no finished layer in:\n{err}"
    );
    t.shutdown().await;
}
