//! Plugins end to end: real git repositories on disk (`git+file://`), the
//! real engine, the HTTP API. Install at a tracked ref, see it read-only
//! inside the container, sweep for drift, apply and dismiss, uninstall.

use crate::common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::*;
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};

/// A bare repository with a work tree to commit from.
struct Upstream {
    _dir: tempfile::TempDir,
    bare: PathBuf,
    work: PathBuf,
}

fn git(dir: &Path, args: &[&str]) -> String {
    let out = Command::new("git")
        .arg("-C")
        .arg(dir)
        .args(["-c", "user.name=t", "-c", "user.email=t@example.invalid"])
        .args(args)
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .env("GIT_CONFIG_GLOBAL", "/dev/null")
        .output()
        .expect("git runs (scripts/test-env.sh installs it)");
    assert!(
        out.status.success(),
        "git {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

impl Upstream {
    fn new() -> Upstream {
        let dir = tempfile::tempdir().unwrap();
        let bare = dir.path().join("skills.git");
        let work = dir.path().join("work");
        std::fs::create_dir_all(&bare).unwrap();
        std::fs::create_dir_all(&work).unwrap();
        git(&bare, &["init", "-q", "--bare", "-b", "main"]);
        git(&work, &["init", "-q", "-b", "main"]);
        git(&work, &["remote", "add", "origin", bare.to_str().unwrap()]);
        Upstream {
            _dir: dir,
            bare,
            work,
        }
    }

    fn source(&self) -> String {
        format!("git+file://{}", self.bare.display())
    }

    /// Commits `README` with `content`; returns the commit id.
    fn commit(&self, content: &str) -> String {
        std::fs::write(self.work.join("README"), content).unwrap();
        git(&self.work, &["add", "README"]);
        git(&self.work, &["commit", "-q", "-m", content]);
        git(&self.work, &["push", "-q", "-f", "origin", "HEAD:main"]);
        git(&self.work, &["rev-parse", "HEAD"])
    }

    fn tag(&self, name: &str, annotated: bool) {
        if annotated {
            git(&self.work, &["tag", "-f", "-a", name, "-m", name]);
        } else {
            git(&self.work, &["tag", "-f", name]);
        }
        git(
            &self.work,
            &["push", "-q", "-f", "origin", &format!("refs/tags/{name}")],
        );
    }

    fn delete_tag(&self, name: &str) {
        git(
            &self.work,
            &["push", "-q", "origin", &format!(":refs/tags/{name}")],
        );
    }
}

const PLUGINS_TOML: &str = "[plugins]\nallow_file_sources = true\n";

async fn berth() -> TestServer {
    TestServer::start_with(Options {
        toml: PLUGINS_TOML.to_string(),
        ..Default::default()
    })
    .await
}

async fn runtime(t: &TestServer, id: &str) -> String {
    t.put_app_template("app", "v1").await;
    let (status, rt) = t.start_runtime(id, "app").await;
    assert!(status.is_success(), "{rt}");
    rt["container_id"].as_str().unwrap().to_string()
}

fn exec(cid: &str, script: &str) -> (bool, String) {
    let out = Command::new("docker")
        .args(["exec", cid, "/bin/busybox", "sh", "-c", script])
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).trim().to_string(),
    )
}

async fn install(
    t: &TestServer,
    rt: &str,
    name: &str,
    source: &str,
    track: &str,
) -> (StatusCode, Value) {
    t.post(
        &format!("/v1/runtimes/{rt}/plugins"),
        json!({"name": name, "source": source, "track": track}),
    )
    .await
}

async fn sweep(t: &TestServer) -> Value {
    let (status, report) = t.post("/v1/admin/plugins/sweep", json!({})).await;
    assert_eq!(status, StatusCode::OK, "{report}");
    report
}

async fn updates(t: &TestServer, query: &str) -> Vec<Value> {
    let (status, list) = t.get(&format!("/v1/plugin-updates?{query}")).await;
    assert_eq!(status, StatusCode::OK, "{list}");
    list["plugin_updates"].as_array().unwrap().clone()
}

fn plugin_dir(t: &TestServer, rt: &str, name: &str) -> PathBuf {
    let data = std::fs::canonicalize(t.data_dir.path()).unwrap();
    data.join("runtimes").join(rt).join("plugins").join(name)
}

#[tokio::test]
async fn tag_latest_installs_the_highest_release_read_only_and_drift_is_queued() {
    let up = Upstream::new();
    let c190 = up.commit("v1.9.0");
    up.tag("v1.9.0", false);
    let c1100 = up.commit("v1.10.0");
    up.tag("v1.10.0", true);
    up.commit("v2.0.0-rc.1");
    up.tag("v2.0.0-rc.1", true);
    assert_ne!(c190, c1100);

    let t = berth().await;
    let cid = runtime(&t, "ws-1").await;
    let (status, p) = install(&t, "ws-1", "skills", &up.source(), "tag:latest").await;
    assert_eq!(status, StatusCode::CREATED, "{p}");
    // v1.10.0 > v1.9.0 by semantic version; the release candidate is not a release;
    // the annotated tag is peeled to its commit.
    assert_eq!(p["installed_sha"], c1100.as_str(), "{p}");
    assert_eq!(p["track"], "tag:latest");

    // Restarted, and the plugin is there, read-only.
    let cid_now = t.get("/v1/runtimes/ws-1").await.1["container_id"]
        .as_str()
        .unwrap()
        .to_string();
    assert_eq!(cid_now, cid, "a restart keeps the container");
    let (ok, out) = exec(&cid, "cat /plugins/skills/README");
    assert!(ok, "{out}");
    assert_eq!(out, "v1.10.0");
    let (ok, _) = exec(&cid, "echo x > /plugins/skills/written");
    assert!(!ok, "the plugin is read-only inside the container");
    assert!(!plugin_dir(&t, "ws-1", "skills").join(".git").exists());
    let ops = t.operations("runtime=ws-1&kind=plugin_install").await;
    assert_eq!(ops[0]["outcome"], "success", "{ops:?}");

    // Installing the same again answers the installed plugin.
    let (status, again) = install(&t, "ws-1", "skills", &up.source(), "tag:latest").await;
    assert_eq!(status, StatusCode::OK, "{again}");
    let (status, err) = install(&t, "ws-1", "skills", &up.source(), "branch:main").await;
    assert_eq!(status, StatusCode::CONFLICT, "{err}");

    // Nothing moved: a sweep queues nothing.
    let (_, status) = t.get("/v1/status").await;
    assert_eq!(
        status["plugin_sweep_last_run"], 0,
        "never swept yet: {status}"
    );
    let report = sweep(&t).await;
    assert_eq!(report["resolved"], 1, "{report}");
    assert_eq!(report["queued"], 0, "{report}");
    let (_, status) = t.get("/v1/status").await;
    assert!(
        status["plugin_sweep_last_run"].as_i64().unwrap() > 0,
        "{status}"
    );
    let metrics = t
        .client
        .get(format!("{}/metrics", t.base))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(metrics.contains("berth_plugin_sweeps_total 1"), "{metrics}");

    // Upstream releases v1.11.0 (annotated): one pending update, peeled.
    let c1110 = up.commit("v1.11.0");
    up.tag("v1.11.0", true);
    assert_eq!(sweep(&t).await["queued"], 1);
    let pending = updates(&t, "status=pending").await;
    assert_eq!(pending.len(), 1, "{pending:?}");
    assert_eq!(pending[0]["to_sha"], c1110.as_str());
    assert_eq!(pending[0]["from_sha"], c1100.as_str());
    assert_eq!(pending[0]["plugin"], "skills");
    // A second sweep changes nothing; a later move moves the same update.
    assert_eq!(sweep(&t).await["queued"], 0);
    let c1120 = up.commit("v1.12.0");
    up.tag("v1.12.0", false);
    assert_eq!(sweep(&t).await["queued"], 1);
    let moved = updates(&t, "status=pending").await;
    assert_eq!(moved.len(), 1, "still one pending: {moved:?}");
    assert_eq!(moved[0]["id"], pending[0]["id"]);
    assert_eq!(moved[0]["to_sha"], c1120.as_str());
    let (_, notes) = t.get("/v1/notifications").await;
    let drift: Vec<&Value> = notes["notifications"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|n| n["notification_type"] == "plugin.drift_detected")
        .collect();
    assert_eq!(drift.len(), 2, "{drift:?}");

    // Apply: installed, applied, restarted; the container sees the new files.
    let id = moved[0]["id"].as_str().unwrap().to_string();
    let (status, applied) = t
        .post(&format!("/v1/plugin-updates/{id}/apply"), json!({}))
        .await;
    assert_eq!(status, StatusCode::OK, "{applied}");
    assert_eq!(applied["status"], "applied");
    let (_, list) = t.get("/v1/runtimes/ws-1/plugins").await;
    assert_eq!(list["plugins"][0]["installed_sha"], c1120.as_str());
    let (ok, out) = exec(&cid, "cat /plugins/skills/README");
    assert!(ok);
    assert_eq!(out, "v1.12.0");
    // Idempotent; dismissing an applied update is a conflict.
    let (status, again) = t
        .post(&format!("/v1/plugin-updates/{id}/apply"), json!({}))
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(again, applied);
    let (status, err) = t
        .post(&format!("/v1/plugin-updates/{id}/dismiss"), json!({}))
        .await;
    assert_eq!(status, StatusCode::CONFLICT, "{err}");
    assert_eq!(err["error"]["code"], "conflict");
    let ops = t.operations("runtime=ws-1&kind=plugin_apply").await;
    assert_eq!(ops.len(), 1, "the second apply did nothing: {ops:?}");

    // The plugin survives a recreate (the template moves to another image).
    t.put_app_template("app", "v2").await;
    let (status, refreshed) = t
        .post("/v1/admin/images/refresh", json!({"recreate": true}))
        .await;
    assert_eq!(status, StatusCode::OK, "{refreshed}");
    assert_eq!(refreshed["recreated"], json!(["ws-1"]), "{refreshed}");
    let cid = t.get("/v1/runtimes/ws-1").await.1["container_id"]
        .as_str()
        .unwrap()
        .to_string();
    assert_ne!(cid, cid_now, "a new container");
    let (ok, out) = exec(&cid, "cat /plugins/skills/README");
    assert!(ok, "{out}");
    assert_eq!(out, "v1.12.0");

    // Uninstall: no row, no directory, nothing in the container.
    let (status, _) = t
        .call(Method::DELETE, "/v1/runtimes/ws-1/plugins/skills", None)
        .await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    let (_, list) = t.get("/v1/runtimes/ws-1/plugins").await;
    assert_eq!(list["plugins"], json!([]));
    assert!(!plugin_dir(&t, "ws-1", "skills").exists());
    let (ok, out) = exec(&cid, "test -e /plugins/skills || echo gone");
    assert!(ok, "the container runs: {out}");
    assert_eq!(out, "gone", "gone from the container");
    let (status, err) = t
        .call(Method::DELETE, "/v1/runtimes/ws-1/plugins/skills", None)
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(err["error"]["code"], "plugin_not_found");
    t.shutdown().await;
}

#[tokio::test]
async fn dismiss_moved_tags_force_pushed_branches_deleted_refs_and_vanished_repos() {
    let branchy = Upstream::new();
    let first = branchy.commit("one");
    let tagged = Upstream::new();
    tagged.commit("t1");
    tagged.tag("stable", false);
    let doomed = Upstream::new();
    doomed.commit("d1");
    doomed.tag("v1.0.0", false);

    let t = berth().await;
    runtime(&t, "ws-2").await;
    for (name, up, track) in [
        ("branchy", &branchy, "branch:main"),
        ("tagged", &tagged, "tag:stable"),
        ("doomed", &doomed, "tag:latest"),
    ] {
        let (status, p) = t
            .post(
                "/v1/runtimes/ws-2/plugins",
                json!({"name": name, "source": up.source(), "track": track, "restart": false}),
            )
            .await;
        assert_eq!(status, StatusCode::CREATED, "{name}: {p}");
    }
    let (_, p) = t.get("/v1/runtimes/ws-2/plugins").await;
    let branchy_row = p["plugins"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == "branchy")
        .unwrap()
        .clone();
    assert_eq!(branchy_row["installed_sha"], first.as_str());

    // The branch is force-pushed to an unrelated commit; the tag is moved;
    // the third repository vanishes.
    git(&branchy.work, &["checkout", "-q", "--orphan", "other"]);
    let rewritten = branchy.commit("rewritten");
    let moved = tagged.commit("t2");
    tagged.tag("stable", false);
    std::fs::remove_dir_all(&doomed.bare).unwrap();

    let report = sweep(&t).await;
    assert_eq!(report["resolved"], 2, "{report}");
    assert_eq!(report["queued"], 2, "{report}");
    let failed = report["failed"].as_array().unwrap();
    assert_eq!(failed.len(), 1, "{report}");
    assert_eq!(failed[0]["source"], doomed.source().as_str());
    let (_, p) = t.get("/v1/runtimes/ws-2/plugins").await;
    let doomed_row = p["plugins"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == "doomed")
        .unwrap()
        .clone();
    assert!(doomed_row["last_error"]["code"].is_string(), "{doomed_row}");
    let pending = updates(&t, "status=pending&runtime=ws-2").await;
    let to = |name: &str| pending.iter().find(|u| u["plugin"] == name).unwrap()["to_sha"].clone();
    assert_eq!(to("branchy"), rewritten.as_str());
    assert_eq!(to("tagged"), moved.as_str());

    // Dismiss one: not queued again for the same move; apply of it is 409.
    let id = pending.iter().find(|u| u["plugin"] == "tagged").unwrap()["id"]
        .as_str()
        .unwrap()
        .to_string();
    let (status, d) = t
        .post(&format!("/v1/plugin-updates/{id}/dismiss"), json!({}))
        .await;
    assert_eq!(status, StatusCode::OK, "{d}");
    assert_eq!(d["status"], "dismissed");
    let (status, _) = t
        .post(&format!("/v1/plugin-updates/{id}/dismiss"), json!({}))
        .await;
    assert_eq!(status, StatusCode::OK, "dismiss is idempotent");
    let (status, err) = t
        .post(&format!("/v1/plugin-updates/{id}/apply"), json!({}))
        .await;
    assert_eq!(status, StatusCode::CONFLICT, "{err}");
    assert_eq!(sweep(&t).await["queued"], 0);

    // A deleted tag: the sweep reports it, nothing is queued.
    tagged.delete_tag("stable");
    let report = sweep(&t).await;
    let failed: Vec<&Value> = report["failed"].as_array().unwrap().iter().collect();
    assert!(
        failed
            .iter()
            .any(|f| f["source"] == tagged.source().as_str()
                && f["error"]["code"] == "ref_not_found"),
        "{report}"
    );
    let (status, err) = t.post("/v1/plugin-updates/nope/apply", json!({})).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(err["error"]["code"], "update_not_found");
    t.shutdown().await;
}

#[tokio::test]
async fn bad_sources_and_refs_are_refused_before_git_runs() {
    let up = Upstream::new();
    up.commit("x");
    let marker = tempfile::tempdir().unwrap();
    let touched = marker.path().join("pwned");
    let touch = format!("touch {}", touched.display());
    let t = TestServer::start_with(Options {
        toml: "[plugins]\nallowed_hosts = [\"git.example\"]\n".to_string(),
        ..Default::default()
    })
    .await;
    runtime(&t, "ws-3").await;
    let cases = [
        (
            format!("--upload-pack={touch}"),
            "tag:latest",
            "invalid_plugin_source",
        ),
        (
            format!("git+ssh://-oProxyCommand={touch}/x"),
            "tag:latest",
            "invalid_plugin_source",
        ),
        (
            format!("ext::sh -c {touch}"),
            "tag:latest",
            "invalid_plugin_source",
        ),
        (
            "git+https://git.example/a\nb".to_string(),
            "tag:latest",
            "invalid_plugin_source",
        ),
        (
            "git+https://git.example/a;b".to_string(),
            "tag:latest",
            "invalid_plugin_source",
        ),
        (
            "git+https://elsewhere.example/a".to_string(),
            "tag:latest",
            "invalid_plugin_source",
        ),
        // File sources are off unless configured.
        (up.source(), "tag:latest", "invalid_plugin_source"),
        (
            "git+https://git.example/a".to_string(),
            "--upload-pack=x",
            "invalid_tracked_ref",
        ),
        (
            "git+https://git.example/a".to_string(),
            "tag:-x",
            "invalid_tracked_ref",
        ),
        (
            "git+https://git.example/a".to_string(),
            "branch:a..b",
            "invalid_tracked_ref",
        ),
        (
            "git+https://git.example/a".to_string(),
            "sha:123",
            "invalid_tracked_ref",
        ),
    ];
    for (source, track, code) in cases {
        let (status, err) = install(&t, "ws-3", "p", &source, track).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{source} {track}: {err}");
        assert_eq!(err["error"]["code"], code, "{source} {track}: {err}");
    }
    let (status, err) = install(
        &t,
        "ws-3",
        "Bad Name",
        "git+https://git.example/a",
        "tag:latest",
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{err}");
    let (status, err) = install(&t, "nope", "p", "git+https://git.example/a", "tag:latest").await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{err}");
    assert!(!touched.exists(), "no git process ran anything");
    let (_, list) = t.get("/v1/runtimes/ws-3/plugins").await;
    assert_eq!(list["plugins"], json!([]));
    let ops = t.operations("runtime=ws-3&kind=plugin_install").await;
    assert!(
        ops.is_empty(),
        "refused before anything was attempted: {ops:?}"
    );
    t.shutdown().await;
}

/// A bulk apply across a template's runtimes is a rollout: a runtime that
/// fails its health gate after the update is restored to its previous
/// commit and the rollout halts; resumed once the runtime is healthy, it
/// finishes and every runtime runs the new commit.
#[tokio::test]
async fn a_bulk_apply_halts_on_an_unhealthy_runtime_restores_it_and_resumes() {
    let up = Upstream::new();
    let v1 = up.commit("v1.0.0");
    up.tag("v1.0.0", true);
    let t = berth().await;
    t.put_template(
        "gated",
        json!({"image": test_image(), "tag": "v1", "port": 8080, "stop_grace": "1s",
               "health": {"path": "/healthz", "interval": "200ms", "timeout": "1s", "grace": "3s"},
               "rollout": {"batch_size": 1, "max_failures": 1}}),
    )
    .await;
    let mut cids = Vec::new();
    for id in ["ga", "gb"] {
        let (status, rt) = t.start_runtime(id, "gated").await;
        assert_eq!(status, StatusCode::CREATED, "{rt}");
        cids.push(rt["container_id"].as_str().unwrap().to_string());
        let (status, p) = install(&t, id, "skills", &up.source(), "tag:latest").await;
        assert_eq!(status, StatusCode::CREATED, "{p}");
        assert_eq!(p["installed_sha"], v1.as_str());
    }
    // ga goes bad: its health path disappears (in the container's own layer,
    // so a restart keeps it gone).
    let (ok, out) = exec(&cids[0], "rm /www/healthz");
    assert!(ok, "{out}");
    let v2 = up.commit("v1.1.0");
    up.tag("v1.1.0", false);

    let (status, rollout) = t
        .post(
            "/v1/plugin-updates/apply",
            json!({"template": "gated", "plugin": "skills"}),
        )
        .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{rollout}");
    assert_eq!(rollout["plugin"], "skills");
    assert_eq!(rollout["to_digest"], v2.as_str());
    let id = rollout["id"].as_str().unwrap().to_string();
    let done = |until: &'static [&'static str]| {
        let t = &t;
        let id = id.clone();
        async move {
            eventually("the plugin rollout to stop", async || {
                let (_, r) = t.get(&format!("/v1/rollouts/{id}")).await;
                until
                    .contains(&r["state"].as_str().unwrap_or(""))
                    .then_some(r)
            })
            .await
        }
    };
    let halted = done(&["halted", "completed"]).await;
    assert_eq!(halted["state"], "halted", "{halted}");
    let targets = halted["targets"].as_array().unwrap();
    let state_of =
        |rid: &str| targets.iter().find(|x| x["runtime_id"] == rid).unwrap()["state"].clone();
    assert_eq!(state_of("ga"), "failed", "{halted}");
    assert_eq!(
        state_of("gb"),
        "pending",
        "the halt came before gb: {halted}"
    );
    // ga is back on v1: its row, its files, and it runs.
    let (_, list) = t.get("/v1/runtimes/ga/plugins").await;
    assert_eq!(list["plugins"][0]["installed_sha"], v1.as_str(), "{list}");
    assert_eq!(
        list["plugins"][0]["last_error"]["code"], "health_check_failed",
        "{list}"
    );
    let (ok, out) = exec(&cids[0], "cat /plugins/skills/README");
    assert!(ok);
    assert_eq!(out, "v1.0.0");
    let (_, ga) = t.get("/v1/runtimes/ga").await;
    assert_eq!(ga["status"], "running", "{ga}");
    let (_, notes) = t.get("/v1/notifications").await;
    assert!(notes["notifications"]
        .as_array()
        .unwrap()
        .iter()
        .any(|n| n["notification_type"] == "rollout.halted" && n["payload"]["plugin"] == "skills"));

    // Healthy again; resume retries ga and goes on to gb.
    let (ok, out) = exec(&cids[0], "echo ok > /www/healthz");
    assert!(ok, "{out}");
    let (status, r) = t
        .post(&format!("/v1/rollouts/{id}/resume"), json!({}))
        .await;
    assert_eq!(status, StatusCode::OK, "{r}");
    let finished = done(&["completed", "halted"]).await;
    assert_eq!(finished["state"], "completed", "{finished}");
    for (rid, cid) in [("ga", &cids[0]), ("gb", &cids[1])] {
        let (_, list) = t.get(&format!("/v1/runtimes/{rid}/plugins")).await;
        assert_eq!(
            list["plugins"][0]["installed_sha"],
            v2.as_str(),
            "{rid}: {list}"
        );
        let (ok, out) = exec(cid, "cat /plugins/skills/README");
        assert!(ok);
        assert_eq!(out, "v1.1.0", "{rid}");
    }
    let applies = t.operations("runtime=ga&kind=plugin_apply").await;
    let outcomes: Vec<&str> = applies
        .iter()
        .map(|o| o["outcome"].as_str().unwrap())
        .collect();
    assert_eq!(outcomes, ["success", "failure"], "{applies:?}");
    t.shutdown().await;
}
