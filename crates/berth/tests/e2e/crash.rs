//! berth killed with SIGKILL and started again: in the middle of a burst
//! of start jobs (every job gets exactly one result, no runtime has two
//! containers, no berth container is left without a record), of bursts of
//! jobs again and again (each outbox row is on its stream exactly once),
//! of a tag-move rollout, and of a stream of state batches. And the real
//! binary under faults of what it stands on: its data directory on a small
//! filesystem that fills up, and its PostgreSQL restarted under a stream
//! of API calls.

use crate::common;

use std::collections::{BTreeMap, BTreeSet};
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::binary::*;
use common::private_postgres::PrivatePostgres;
use common::*;
use serde_json::{json, Value};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_mid_burst_loses_nothing_and_duplicates_nothing() {
    let redis = PrivateRedis::start().await;
    let data = tempfile::tempdir().unwrap();
    let owner = unique("bt-");
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let base = format!("http://127.0.0.1:{port}");
    let client = reqwest::Client::new();

    let mut berth = Reaped(spawn_berth(data.path(), &owner, port, &redis.url()));
    wait_healthy(&base).await;
    let resp = client
        .put(format!("{base}/v1/templates/engine"))
        .json(&json!({"image": test_image(), "tag": "v1", "port": 8080}))
        .send()
        .await
        .unwrap();
    assert!(resp.status().is_success());

    const JOBS: usize = 12;
    for i in 0..JOBS {
        redis
            .xadd(
                "runtime:start_jobs",
                &[
                    ("job_id", &format!("burst-{i}")),
                    ("runtime_id", &format!("b-{i}")),
                    ("template", "engine"),
                ],
            )
            .await;
    }
    // Kill it while the burst is being worked on.
    for _ in 0..100 {
        if !redis.entries("runtime:job_results").await.is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    berth.0.kill().unwrap();
    berth.0.wait().unwrap();
    let before = redis.entries("runtime:job_results").await.len();
    assert!(
        before < JOBS,
        "the kill came mid-burst ({before} results already)"
    );

    let _berth = Reaped(spawn_berth(data.path(), &owner, port, &redis.url()));
    wait_healthy(&base).await;
    for _ in 0..600 {
        let results = redis.entries("runtime:job_results").await;
        let answered: BTreeSet<_> = results.iter().map(|r| r["job_id"].clone()).collect();
        if answered.len() == JOBS {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Then until nothing can add a result any more: every job entry is
    // acknowledged (a redelivered one is answered from its stored result
    // first) and berth's outbox is empty, so a duplicate, if any, is in
    // the stream by now.
    eventually(
        "every job acknowledged and the outbox drained",
        async || {
            let mut c = redis.connection().await.ok()?;
            let pending: redis::Value = redis::cmd("XPENDING")
                .arg("runtime:start_jobs")
                .arg(&owner)
                .query_async(&mut c)
                .await
                .ok()?;
            let redis::Value::Array(summary) = pending else {
                return None;
            };
            if summary.first() != Some(&redis::Value::Int(0)) {
                return None;
            }
            let status: Value = client
                .get(format!("{base}/v1/status"))
                .send()
                .await
                .ok()?
                .json()
                .await
                .ok()?;
            (status["outbox_pending"] == 0).then_some(())
        },
    )
    .await;
    let results = redis.entries("runtime:job_results").await;

    // Exactly one result per job, each on one outbox row of its own.
    let mut per_job: BTreeMap<String, &BTreeMap<String, String>> = BTreeMap::new();
    for r in &results {
        assert_eq!(r["outcome"], "success", "{r:?}");
        if let Some(first) = per_job.insert(r["job_id"].clone(), r) {
            panic!("job {} published twice: {first:?} and {r:?}", r["job_id"]);
        }
    }
    assert_eq!(per_job.len(), JOBS, "every job answered: {per_job:?}");
    let seqs: BTreeSet<&str> = results.iter().map(|r| r["outbox_seq"].as_str()).collect();
    assert_eq!(seqs.len(), JOBS, "one outbox row each: {results:?}");

    // One container per runtime, each one recorded.
    let containers = docker_lines(&[
        "ps",
        "-a",
        "--no-trunc",
        "--filter",
        &format!("label=io.berth.owner={owner}"),
        "--format",
        "{{.ID}} {{.Label \"io.berth.runtime_id\"}}",
    ]);
    let runtimes: Value = client
        .get(format!("{base}/v1/runtimes"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let recorded: BTreeMap<String, String> = runtimes["runtimes"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|r| {
            Some((
                r["id"].as_str()?.to_string(),
                r["container_id"].as_str()?.to_string(),
            ))
        })
        .collect();
    let mut seen = BTreeSet::new();
    for line in &containers {
        let (cid, rid) = line.split_once(' ').unwrap();
        assert!(
            seen.insert(rid.to_string()),
            "two containers for {rid}: {containers:?}"
        );
        assert_eq!(
            recorded.get(rid).map(String::as_str),
            Some(cid),
            "container {cid} of {rid} is recorded"
        );
    }
    assert_eq!(seen.len(), JOBS);

    drop(_berth);
    remove_owner_containers(&owner);
}

/// The output streams' entries, by stream.
async fn output_entries(redis: &PrivateRedis) -> Vec<(&'static str, BTreeMap<String, String>)> {
    let mut all = Vec::new();
    for stream in [
        "runtime:job_results",
        "runtime:health_events",
        "notification:intents",
    ] {
        for e in redis.entries(stream).await {
            all.push((stream, e));
        }
    }
    all
}

/// Bursts of jobs that berth answers at once (start jobs for a template
/// that is not there, stop jobs for runtimes that are not there), berth
/// SIGKILLed at a random moment of each and started again on the same
/// database and Redis, round after round. At the end every job has exactly
/// one entry on `runtime:job_results`, and no outbox row is on any output
/// stream twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_mid_burst_again_and_again_publishes_each_outbox_row_once() {
    const ROUNDS: usize = 60;
    const BURST: usize = 48;
    let redis = PrivateRedis::start().await;
    let data = tempfile::tempdir().unwrap();
    let owner = unique("bt-");
    let port = free_port();
    let base = format!("http://127.0.0.1:{port}");
    let client = reqwest::Client::new();
    let mut berth = Reaped(spawn_berth(data.path(), &owner, port, &redis.url()));
    wait_healthy(&base).await;

    let mut seed: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut mid_burst = 0;
    for round in 0..ROUNDS {
        let before = redis.entries("runtime:job_results").await.len();
        for i in 0..BURST {
            let job_id = format!("j-{round}-{i}");
            let runtime_id = format!("absent-{round}-{i}");
            if i % 3 == 2 {
                redis
                    .xadd(
                        "runtime:stop_jobs",
                        &[
                            ("job_id", &job_id),
                            ("runtime_id", &runtime_id),
                            ("remove", "true"),
                        ],
                    )
                    .await;
            } else {
                redis
                    .xadd(
                        "runtime:start_jobs",
                        &[
                            ("job_id", &job_id),
                            ("runtime_id", &runtime_id),
                            ("template", "absent"),
                        ],
                    )
                    .await;
            }
        }
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        // A burst is answered within tens of milliseconds.
        tokio::time::sleep(Duration::from_micros(seed % 40_000)).await;
        berth.0.kill().unwrap();
        berth.0.wait().unwrap();
        let published = redis.entries("runtime:job_results").await.len() - before;
        if published < BURST {
            mid_burst += 1;
        }
        berth = Reaped(spawn_berth(data.path(), &owner, port, &redis.url()));
        wait_healthy(&base).await;
    }

    // Until nothing can add an entry any more: every job answered and
    // acknowledged, the outbox empty.
    eventually("every job answered and the outbox drained", async || {
        let results = redis.entries("runtime:job_results").await;
        let answered: BTreeSet<_> = results.iter().map(|r| r["job_id"].clone()).collect();
        if answered.len() < ROUNDS * BURST {
            return None;
        }
        let mut c = redis.connection().await.ok()?;
        for stream in ["runtime:start_jobs", "runtime:stop_jobs"] {
            let pending: redis::Value = redis::cmd("XPENDING")
                .arg(stream)
                .arg(&owner)
                .query_async(&mut c)
                .await
                .ok()?;
            let redis::Value::Array(summary) = pending else {
                return None;
            };
            if summary.first() != Some(&redis::Value::Int(0)) {
                return None;
            }
        }
        let status: Value = client
            .get(format!("{base}/v1/status"))
            .send()
            .await
            .ok()?
            .json()
            .await
            .ok()?;
        (status["outbox_pending"] == 0).then_some(())
    })
    .await;

    let all = output_entries(&redis).await;
    let mut per_seq: BTreeMap<i64, &str> = BTreeMap::new();
    for (stream, e) in &all {
        let seq: i64 = e
            .get("outbox_seq")
            .unwrap_or_else(|| panic!("{stream} entry without outbox_seq: {e:?}"))
            .parse()
            .unwrap();
        if let Some(other) = per_seq.insert(seq, stream) {
            panic!("outbox row {seq} published twice ({other}, {stream})");
        }
    }
    let mut per_job: BTreeMap<&str, usize> = BTreeMap::new();
    for (stream, e) in &all {
        if *stream == "runtime:job_results" {
            assert_eq!(e["outcome"], "failure", "{e:?}");
            *per_job.entry(e["job_id"].as_str()).or_default() += 1;
        }
    }
    let twice: Vec<_> = per_job.iter().filter(|(_, n)| **n != 1).collect();
    assert!(
        twice.is_empty(),
        "jobs with more than one result: {twice:?}"
    );
    assert_eq!(per_job.len(), ROUNDS * BURST);
    eprintln!(
        "{ROUNDS} SIGKILLs ({mid_burst} before the burst's results were all published): \
         {} jobs, {} output entries, each outbox row once",
        per_job.len(),
        all.len()
    );
    assert!(mid_burst > 0, "no kill came before a burst was published");
    drop(berth);
    remove_owner_containers(&owner);
}

/// berth SIGKILLed while it acts on a moved tag — once while the watch
/// tick pulls and decides, once in the middle of the rollout — and started
/// again on the same data: the pin ends on the new digest, every runtime
/// runs it, and each has exactly one container, the recorded one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_during_a_tag_move_rollout_converges_after_restart() {
    for (case, kill) in [("tick", Kill::DuringTheTick), ("rollout", Kill::MidRollout)] {
        converges_after_kill(case, kill).await;
    }
}

/// When the SIGKILL comes.
#[derive(Debug, Clone, Copy)]
enum Kill {
    /// A moment after the watch request went out, while the tick pulls
    /// and decides. A moment chosen, not a wait: nothing has to have
    /// happened yet (each cut of this flow is certain in `crash_matrix`).
    DuringTheTick,
    /// Once the rollout has updated a runtime and still has some to do.
    MidRollout,
}

async fn converges_after_kill(case: &str, kill: Kill) {
    const RUNTIMES: usize = 4;
    let repo = unique(&format!("kill-{case}-"));
    let image = push_as("v1", &repo, "stable");
    let data = tempfile::tempdir().unwrap();
    let config = data.path().join("berth.toml");
    std::fs::write(
        &config,
        "[image_watch]\nenabled = true\ninterval = \"1h\"\n",
    )
    .unwrap();
    let owner = unique("bt-");
    let port = free_port();
    let base = format!("http://127.0.0.1:{port}");
    let client = reqwest::Client::new();
    let spawn = || {
        Reaped(
            berth_command(data.path(), &owner, port)
                .arg("--config")
                .arg(&config)
                .spawn()
                .expect("berth binary runs"),
        )
    };

    let mut berth = spawn();
    wait_healthy(&base).await;
    let template = json!({"image": image, "tag": "stable", "port": 8080, "watch": true,
        "update_policy": "track", "stop_grace": "1s",
        "health": {"path": "/healthz", "interval": "200ms", "timeout": "1s", "grace": "10s"},
        "rollout": {"batch_size": 1, "max_failures": 2}});
    let resp = client
        .put(format!("{base}/v1/templates/trk"))
        .json(&template)
        .send()
        .await
        .unwrap();
    assert!(resp.status().is_success());
    for i in 0..RUNTIMES {
        let resp = client
            .post(format!("{base}/v1/runtimes"))
            .json(&json!({"id": format!("k-{i}"), "template": "trk"}))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 201, "start k-{i}");
    }
    // The first tick seeds the observation with v1.
    let watch = || {
        client
            .post(format!("{base}/v1/admin/images/watch"))
            .json(&json!({}))
            .send()
    };
    assert!(watch().await.unwrap().status().is_success());

    push_as("v2", &repo, "stable");
    let v2 = registry_digest(&image, "stable").await;
    let tick = tokio::spawn(watch());
    match kill {
        Kill::DuringTheTick => tokio::time::sleep(Duration::from_millis(150)).await,
        Kill::MidRollout => {
            eventually("a rollout to v2 half done", async || {
                let list: Value = client
                    .get(format!("{base}/v1/rollouts?template=trk"))
                    .send()
                    .await
                    .ok()?
                    .json()
                    .await
                    .ok()?;
                let id = list["rollouts"]
                    .as_array()?
                    .iter()
                    .find(|r| r["to_digest"] == v2.as_str())?["id"]
                    .as_str()?
                    .to_string();
                let rollout: Value = client
                    .get(format!("{base}/v1/rollouts/{id}"))
                    .send()
                    .await
                    .ok()?
                    .json()
                    .await
                    .ok()?;
                let progress = &rollout["progress"];
                assert_ne!(
                    rollout["state"], "completed",
                    "{case}: the rollout finished before it was seen half done"
                );
                (progress["updated"].as_u64()? >= 1 && progress["pending"].as_u64()? >= 1)
                    .then_some(())
            })
            .await;
        }
    }
    berth.0.kill().unwrap();
    berth.0.wait().unwrap();
    let _ = tick.await;

    // Started again on the same data; the boot tick or the resumed rollout
    // finishes what the kill cut short.
    let _berth = spawn();
    wait_healthy(&base).await;
    let get = |path: String| {
        let client = client.clone();
        async move {
            client
                .get(path)
                .send()
                .await
                .ok()?
                .json::<Value>()
                .await
                .ok()
        }
    };
    let pin = eventually("the pin on the new digest", async || {
        let pin = get(format!("{base}/v1/templates/trk/pin")).await?;
        (pin["digest"] == v2.as_str()).then_some(pin)
    })
    .await;
    assert_eq!(pin["promoted_by"], "image_watch", "{pin}");
    let runtimes = eventually("every runtime on the new digest", async || {
        let list = get(format!("{base}/v1/runtimes?template=trk")).await?;
        let all = list["runtimes"].as_array()?.clone();
        (all.len() == RUNTIMES
            && all
                .iter()
                .all(|r| r["image_digest"] == v2.as_str() && r["status"] == "running"))
        .then_some(all)
    })
    .await;
    let recorded: BTreeMap<String, String> = runtimes
        .iter()
        .map(|r| {
            (
                r["id"].as_str().unwrap().to_string(),
                r["container_id"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    let containers = docker_lines(&[
        "ps",
        "-a",
        "--no-trunc",
        "--filter",
        &format!("label=io.berth.owner={owner}"),
        "--format",
        "{{.ID}} {{.Label \"io.berth.runtime_id\"}}",
    ]);
    let mut seen = BTreeSet::new();
    for line in &containers {
        let (cid, rid) = line.split_once(' ').unwrap();
        assert!(
            seen.insert(rid.to_string()),
            "{case}: two containers for {rid}: {containers:?}"
        );
        assert_eq!(
            recorded.get(rid).map(String::as_str),
            Some(cid),
            "{case}: {cid} of {rid} is the recorded one"
        );
    }
    assert_eq!(seen.len(), RUNTIMES, "{case}: {containers:?}");
    // One rollout did the work: a crash never starts a second one.
    let rollouts = get(format!("{base}/v1/rollouts?template=trk"))
        .await
        .unwrap();
    let to_v2: Vec<&Value> = rollouts["rollouts"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| r["to_digest"] == v2.as_str())
        .collect();
    assert_eq!(to_v2.len(), 1, "{case}: {rollouts}");

    drop(_berth);
    remove_owner_containers(&owner);
}

/// The lost batch, on the real binary: a client posts batches of
/// both stores back to back and `berth serve` is SIGKILLed at a
/// pseudo-random moment, 200 times; after every restart both
/// `GET …/store/{store}` and the file on disk hold the last batch answered
/// `201`, or the one in flight when the kill came (its commit may have
/// happened), and both stores hold the same batch.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_during_a_stream_of_batches_never_loses_an_acknowledged_one() {
    const ROUNDS: usize = 200;
    let data = tempfile::tempdir().unwrap();
    let owner = unique("bt-");
    let port = free_port();
    let base = format!("http://127.0.0.1:{port}");
    let client = reqwest::Client::new();
    let state = data.path().join("runtimes/r1/state");

    let mut berth = Reaped(berth_command(data.path(), &owner, port).spawn().unwrap());
    wait_healthy(&base).await;
    let resp = client
        .put(format!("{base}/v1/templates/st"))
        .json(&json!({"image": test_image(), "tag": "v1", "port": 8080,
            "stores": [
                {"name": "launch_state", "path": "launch-state.json",
                 "readiness": "blocking", "recovery": "quarantine"},
                {"name": "sessions", "path": "sessions.json",
                 "readiness": "degrading", "recovery": "rebuild"}]}))
        .send()
        .await
        .unwrap();
    assert!(resp.status().is_success(), "{}", resp.text().await.unwrap());
    let resp = client
        .post(format!("{base}/v1/runtimes"))
        .json(&json!({"id": "r1", "template": "st"}))
        .send()
        .await
        .unwrap();
    assert!(resp.status().is_success(), "{}", resp.text().await.unwrap());
    let rt: Value = resp.json().await.unwrap();
    let run_id = rt["run_id"]
        .as_str()
        .expect("a started runtime has a run")
        .to_string();

    let mut acked: u64 = 0;
    let mut next: u64 = 1;
    let mut in_flight_committed = 0;
    let mut seed: u64 = 0x2545_f491_4f6c_dd1d;
    for round in 0..ROUNDS {
        // A client posting batches until the kill.
        let poster = {
            let client = client.clone();
            let base = base.clone();
            let run_id = run_id.clone();
            let start = next;
            tokio::spawn(async move {
                let mut last_acked = None;
                let mut n = start;
                loop {
                    let body = json!({"run_id": run_id, "reason": "checkpoint", "writes": [
                        {"store": "launch_state", "data": {"n": n, "members": ["a", "b"]}},
                        {"store": "sessions", "data": {"n": n}}]});
                    let sent = client
                        .post(format!("{base}/v1/runtimes/r1/store/batches"))
                        .json(&body)
                        .send()
                        .await;
                    match sent {
                        Ok(r) if r.status() == reqwest::StatusCode::CREATED => {
                            last_acked = Some(n);
                            n += 1;
                        }
                        Ok(r) => panic!("batch {n}: {} {}", r.status(), r.text().await.unwrap()),
                        // The kill: batch n was in flight.
                        Err(_) => return (last_acked, n),
                    }
                }
            })
        };
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        tokio::time::sleep(Duration::from_micros(seed % 150_000)).await;
        berth.0.kill().unwrap();
        berth.0.wait().unwrap();
        let (last_acked, in_flight) = poster.await.unwrap();
        if let Some(n) = last_acked {
            acked = n;
        }
        next = in_flight + 1;

        berth = Reaped(berth_command(data.path(), &owner, port).spawn().unwrap());
        wait_healthy(&base).await;
        let mut seen = Vec::new();
        for (store, file) in [
            ("launch_state", "launch-state.json"),
            ("sessions", "sessions.json"),
        ] {
            let resp = client
                .get(format!("{base}/v1/runtimes/r1/store/{store}"))
                .send()
                .await
                .unwrap();
            let status = resp.status();
            let body: Value = resp.json().await.unwrap();
            if acked == 0 && status == reqwest::StatusCode::NOT_FOUND {
                // Nothing acknowledged yet, and the first batch did not commit.
                seen.push(0);
                continue;
            }
            assert_eq!(
                status,
                reqwest::StatusCode::OK,
                "round {round}, {store}: {body}"
            );
            let served = body["data"]["n"].as_u64().unwrap();
            let on_disk: Value =
                serde_json::from_slice(&std::fs::read(state.join(file)).unwrap()).unwrap();
            assert_eq!(
                on_disk["data"]["n"].as_u64(),
                Some(served),
                "round {round}, {store}: the file holds {on_disk} but berth serves batch {served}"
            );
            assert!(
                served == acked || served == in_flight,
                "round {round}, {store}: batch {served} is served; {acked} was the last acknowledged, {in_flight} was in flight"
            );
            seen.push(served);
        }
        assert_eq!(
            seen[0], seen[1],
            "round {round}: the stores hold different batches"
        );
        if seen[0] == in_flight {
            in_flight_committed += 1;
            acked = in_flight;
        }
    }
    eprintln!(
        "{ROUNDS} SIGKILLs during a stream of batches: last acknowledged batch {acked}, {in_flight_committed} in-flight batches found committed after restart, none lost"
    );
    assert!(
        acked > ROUNDS as u64 / 2,
        "too few batches were acknowledged: {acked}"
    );
    drop(berth);
    remove_owner_containers(&owner);
}

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
    // Three clients start and stop runtimes: a start's outcome is written
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
