//! The real binary under faults of what it stands on: its data directory
//! on a small filesystem that fills up, and its PostgreSQL restarted under
//! a stream of API calls.

mod common;

use std::collections::BTreeMap;
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::binary::*;
use common::private_postgres::PrivatePostgres;
use common::*;
use serde_json::{json, Value};

/// A tmpfs of its own, unmounted (lazily: a container may still hold the
/// bind mount for a moment) when dropped.
struct SmallFs(std::path::PathBuf);

impl SmallFs {
    fn mount(dir: &std::path::Path, size: &str) -> SmallFs {
        std::fs::create_dir_all(dir).unwrap();
        let out = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir)
            .output()
            .expect("mount runs");
        assert!(
            out.status.success(),
            "mounting a tmpfs needs root (CI runs as root): {}",
            String::from_utf8_lossy(&out.stderr)
        );
        SmallFs(dir.to_path_buf())
    }
}

impl Drop for SmallFs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

/// Fills the filesystem holding `dir` until it refuses a byte more.
fn fill(dir: &std::path::Path) -> std::path::PathBuf {
    use std::io::Write;
    let path = dir.join("filler");
    let mut f = std::fs::File::create(&path).unwrap();
    let chunk = vec![0u8; 64 * 1024];
    loop {
        match f.write(&chunk) {
            Ok(0) => break,
            Ok(_) => {}
            Err(e) if e.raw_os_error() == Some(libc_enospc()) => break,
            Err(e) => panic!("filling {}: {e}", path.display()),
        }
    }
    // Whatever is left in the page cache must not count as free.
    let _ = f.sync_all();
    path
}

const fn libc_enospc() -> i32 {
    28
}

/// berth's data directory on a small filesystem that fills up: a batch is
/// `503 storage_unavailable` and changes nothing, the last committed batch
/// stays readable (API and file), reads and `/healthz` keep answering, and
/// once space returns the next batch commits and nothing of the refused one
/// is left behind.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_refuses_a_batch_and_keeps_the_last_committed_one() {
    let root = tempfile::tempdir().unwrap();
    let mount = SmallFs::mount(&root.path().join("data"), "16m");
    let data = mount.0.clone();
    let owner = unique("bt-");
    let port = free_port();
    let base = format!("http://127.0.0.1:{port}");
    let client = reqwest::Client::new();
    let state = data.join("runtimes/r1/state");
    let berth = Reaped(berth_command(&data, &owner, port).spawn().unwrap());
    wait_healthy(&base).await;

    let resp = client
        .put(format!("{base}/v1/templates/st"))
        .json(&json!({"image": test_image(), "tag": "v1", "port": 8080,
            "stores": [{"name": "launch_state", "path": "launch-state.json"}]}))
        .send()
        .await
        .unwrap();
    assert!(resp.status().is_success(), "{}", resp.text().await.unwrap());
    let rt: Value = client
        .post(format!("{base}/v1/runtimes"))
        .json(&json!({"id": "r1", "template": "st"}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let run_id = rt["run_id"].as_str().expect("started").to_string();
    let batch = |n: u64| {
        json!({"run_id": run_id, "writes": [
            {"store": "launch_state", "data": {"n": n, "pad": "x".repeat(200_000)}}]})
    };
    let post = |n: u64| {
        client
            .post(format!("{base}/v1/runtimes/r1/store/batches"))
            .json(&batch(n))
            .send()
    };
    let read_back = || async {
        let body: Value = client
            .get(format!("{base}/v1/runtimes/r1/store/launch_state"))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let on_disk: Value =
            serde_json::from_slice(&std::fs::read(state.join("launch-state.json")).unwrap())
                .unwrap();
        (body["data"]["n"].as_u64(), on_disk["data"]["n"].as_u64())
    };
    assert_eq!(
        post(1).await.unwrap().status(),
        reqwest::StatusCode::CREATED
    );

    let filler = fill(&data);
    let resp = post(2).await.unwrap();
    let status = resp.status();
    let body: Value = resp.json().await.unwrap();
    assert_eq!(status, reqwest::StatusCode::SERVICE_UNAVAILABLE, "{body}");
    assert_eq!(body["error"]["code"], "storage_unavailable", "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("nothing was committed"),
        "{body}"
    );
    assert_eq!(read_back().await, (Some(1), Some(1)), "the committed batch");
    let health = client.get(format!("{base}/healthz")).send().await.unwrap();
    assert_eq!(health.status(), reqwest::StatusCode::OK);
    let rt = client
        .get(format!("{base}/v1/runtimes/r1"))
        .send()
        .await
        .unwrap();
    assert_eq!(rt.status(), reqwest::StatusCode::OK);
    let manifest: Value = client
        .get(format!("{base}/v1/runtimes/r1/store"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(manifest["high_watermark"], 1, "{manifest}");

    std::fs::remove_file(&filler).unwrap();
    assert_eq!(
        post(3).await.unwrap().status(),
        reqwest::StatusCode::CREATED
    );
    assert_eq!(read_back().await, (Some(3), Some(3)));
    let left: Vec<String> = std::fs::read_dir(state.join(".berth"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("stage.") || n.contains(".tmp-"))
        .collect();
    assert!(left.is_empty(), "the refused batch left {left:?}");
    drop(berth);
    remove_owner_containers(&owner);
    drop(mount);
}

/// Restarts of PostgreSQL in one run; the last one is a stop and a start
/// [`LONG_OUTAGE`] apart.
const RESTARTS: usize = 3;
/// Longer than berth waits for a database connection (10 s).
const LONG_OUTAGE: Duration = Duration::from_secs(12);

/// One API answer: which call, its status and error code.
#[derive(Debug, Clone)]
struct Answer {
    call: String,
    status: u16,
    code: Option<String>,
}

/// What the clients saw, shared by them and the test.
#[derive(Default)]
struct Seen {
    answers: Vec<Answer>,
    /// Runtimes whose start answered 201.
    started: Vec<String>,
}

async fn send(
    seen: &Mutex<Seen>,
    call: &str,
    req: reqwest::RequestBuilder,
) -> Option<(u16, Value)> {
    let resp = match req.send().await {
        Ok(r) => r,
        // berth never drops a connection: a transport error is a failure
        // the test reports with the rest.
        Err(e) => {
            seen.lock().unwrap().answers.push(Answer {
                call: format!("{call} ({e})"),
                status: 0,
                code: None,
            });
            return None;
        }
    };
    let status = resp.status().as_u16();
    let body: Value = resp.json().await.unwrap_or(Value::Null);
    let code = body["error"]["code"].as_str().map(str::to_string);
    seen.lock().unwrap().answers.push(Answer {
        call: call.to_string(),
        status,
        code,
    });
    Some((status, body))
}

/// Every operation of the log, newest first (all pages).
async fn all_operations(client: &reqwest::Client, base: &str) -> Vec<Value> {
    let mut ops = Vec::new();
    let mut before: Option<String> = None;
    loop {
        let mut url = format!("{base}/v1/operations?limit=1000");
        if let Some(b) = &before {
            url.push_str(&format!("&before={b}"));
        }
        let page: Value = client.get(url).send().await.unwrap().json().await.unwrap();
        ops.extend(page["operations"].as_array().expect("operations").clone());
        match page["next"].as_str() {
            Some(n) => before = Some(n.to_string()),
            None => return ops,
        }
    }
}

/// PostgreSQL restarted (`pg_ctl restart -m fast`, then down for longer
/// than a call waits for a connection) while clients
/// write templates, start and stop runtimes and read lists: every answer
/// is a success or `503 storage_unavailable` (never another 5xx, never a
/// dropped connection), calls after the restart succeed, every record has
/// its operation rows, and no operation is left `in_progress` (the outcome
/// of a start that was in flight is recorded once the database is back).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_database_restart_under_load_fails_calls_cleanly_and_strands_nothing() {
    let pg = PrivatePostgres::start().await;
    let data = tempfile::tempdir().unwrap();
    let owner = unique("bt-");
    let port = free_port();
    let base = format!("http://127.0.0.1:{port}");
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(120))
        .build()
        .unwrap();
    let berth = Reaped(
        berth_command(data.path(), &owner, port)
            .args(["--database-url", &pg.url()])
            .spawn()
            .expect("berth binary runs"),
    );
    wait_healthy(&base).await;
    let resp = client
        .put(format!("{base}/v1/templates/app"))
        .json(&json!({"image": test_image(), "tag": "v1", "port": 8080, "stop_grace": "1s"}))
        .send()
        .await
        .unwrap();
    assert!(resp.status().is_success(), "{}", resp.text().await.unwrap());

    let seen = Arc::new(Mutex::new(Seen::default()));
    let stop = tokio_util::sync::CancellationToken::new();
    let mut clients = Vec::new();
    // Two clients start and stop runtimes: a start's outcome is written
    // after its container is up, so one is often in flight at a restart.
    for worker in 0..3 {
        let (client, base, seen, stop) = (client.clone(), base.clone(), seen.clone(), stop.clone());
        clients.push(tokio::spawn(async move {
            let mut i = 0;
            while !stop.is_cancelled() {
                i += 1;
                let id = format!("r-{worker}-{i}");
                let started = send(
                    &seen,
                    "start",
                    client
                        .post(format!("{base}/v1/runtimes"))
                        .json(&json!({"id": id, "template": "app"})),
                )
                .await;
                if matches!(started, Some((201, _))) {
                    seen.lock().unwrap().started.push(id.clone());
                    if i % 2 == 0 {
                        send(
                            &seen,
                            "stop",
                            client.post(format!("{base}/v1/runtimes/{id}/stop")),
                        )
                        .await;
                    }
                }
            }
        }));
    }
    // One writes templates and reads them and the lists back.
    {
        let (client, base, seen, stop) = (client.clone(), base.clone(), seen.clone(), stop.clone());
        clients.push(tokio::spawn(async move {
            let mut i = 0;
            while !stop.is_cancelled() {
                i += 1;
                let name = format!("t{i}");
                let put = send(
                    &seen,
                    "put template",
                    client
                        .put(format!("{base}/v1/templates/{name}"))
                        .json(&json!({"image": test_image(), "tag": "v1", "port": 8080})),
                )
                .await;
                if put.is_some_and(|(status, _)| status < 300) {
                    // What was acknowledged reads back.
                    let got = send(
                        &seen,
                        "get template",
                        client.get(format!("{base}/v1/templates/{name}")),
                    )
                    .await;
                    if let Some((200, body)) = &got {
                        assert_eq!(body["image"], test_image().as_str(), "{name}: {body}");
                    }
                }
                send(
                    &seen,
                    "list runtimes",
                    client.get(format!("{base}/v1/runtimes")),
                )
                .await;
                send(
                    &seen,
                    "list operations",
                    client.get(format!("{base}/v1/operations?limit=20")),
                )
                .await;
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }));
    }

    let answers = || seen.lock().unwrap().answers.len();
    let starts = || seen.lock().unwrap().started.len();
    for restart in 0..RESTARTS {
        // Some calls, and at least two runtimes up, before each restart.
        let (calls, up) = (answers(), starts());
        eventually("calls before the restart", async || {
            (answers() >= calls + 20 && starts() >= up + 2).then_some(())
        })
        .await;
        eprintln!("restart {restart} after {} answers", answers());
        if restart + 1 < RESTARTS {
            pg.restart().await;
        } else {
            // Down for longer than a call waits for a connection: calls in
            // flight fail, and the outcomes of starts in flight must wait.
            pg.stop().await;
            tokio::time::sleep(LONG_OUTAGE).await;
            pg.start_again().await;
        }
    }
    // Calls after the last restart succeed.
    let after_restart = answers();
    eventually("successful starts after the restarts", async || {
        let s = seen.lock().unwrap();
        let ok = s.answers[after_restart..]
            .iter()
            .filter(|a| a.call == "start" && a.status == 201)
            .count();
        (ok >= 2).then_some(())
    })
    .await;
    stop.cancel();
    for c in clients {
        c.await.unwrap();
    }

    let seen = std::mem::take(&mut *seen.lock().unwrap());
    let mut tally: BTreeMap<String, usize> = BTreeMap::new();
    for a in &seen.answers {
        *tally
            .entry(format!("{} {}", a.status, a.code.as_deref().unwrap_or("")))
            .or_default() += 1;
    }
    eprintln!("answers: {tally:?}");
    let bad: Vec<&Answer> = seen
        .answers
        .iter()
        .filter(|a| {
            !((200..300).contains(&a.status)
                || (a.status == 503 && a.code.as_deref() == Some("storage_unavailable")))
        })
        .collect();
    assert!(
        bad.is_empty(),
        "answers other than a success or 503 storage_unavailable: {bad:?}"
    );
    assert!(
        seen.answers.iter().any(|a| a.status == 503),
        "a call in flight through the long outage fails with storage_unavailable: {tally:?}"
    );
    let later = &seen.answers[after_restart..];
    assert!(
        later
            .iter()
            .any(|a| a.call == "put template" && (a.status == 200 || a.status == 201)),
        "template writes work again: {later:?}"
    );

    // Nothing stranded: every operation settles without a restart of
    // berth, every record has its operations, every container its record.
    let ops = eventually("no operation left in_progress", async || {
        let ops = all_operations(&client, &base).await;
        ops.iter()
            .all(|o| o["outcome"] != "in_progress")
            .then_some(ops)
    })
    .await;
    let runtimes: Value = client
        .get(format!("{base}/v1/runtimes"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let records = runtimes["runtimes"].as_array().expect("runtimes");
    for rec in records {
        let id = rec["id"].as_str().unwrap();
        assert!(
            ops.iter().any(|o| o["runtime_id"] == id),
            "record {id} has no operation row: {rec}"
        );
        assert!(
            !["starting", "stopping"].contains(&rec["status"].as_str().unwrap()),
            "record {id} left transitional: {rec}"
        );
    }
    for id in &seen.started {
        assert!(
            records.iter().any(|r| r["id"] == id.as_str()),
            "runtime {id} answered 201 but has no record"
        );
    }
    let containers = docker_lines(&[
        "ps",
        "-a",
        "--filter",
        &format!("label=io.berth.owner={owner}"),
        "--format",
        "{{.Label \"io.berth.runtime_id\"}}",
    ]);
    for c in &containers {
        assert!(
            records.iter().any(|r| r["id"] == c.as_str()),
            "container of {c} has no record"
        );
    }
    eprintln!(
        "{} answers, {} runtimes started, {} operations, {} containers",
        seen.answers.len(),
        seen.started.len(),
        ops.len(),
        containers.len()
    );
    drop(berth);
    remove_owner_containers(&owner);
}
