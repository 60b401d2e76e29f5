//! Registry drift end to end: the watcher against the real local registry,
//! health-gated rollouts on the real engine, restore and pin revert.

use crate::common;

use common::*;
use reqwest::StatusCode;
use serde_json::{json, Value};

async fn watch(t: &TestServer) -> Value {
    let (status, report) = t.post("/v1/admin/images/watch", json!({})).await;
    assert_eq!(status, StatusCode::OK, "{report}");
    report
}

async fn rollout_of(t: &TestServer, template: &str, until: &[&str]) -> Value {
    let id = eventually("a rollout", async || {
        let (_, list) = t.get(&format!("/v1/rollouts?template={template}")).await;
        list["rollouts"][0]["id"].as_str().map(str::to_string)
    })
    .await;
    eventually("the rollout to finish", async || {
        let (_, r) = t.get(&format!("/v1/rollouts/{id}")).await;
        until
            .contains(&r["state"].as_str().unwrap_or_default())
            .then_some(r)
    })
    .await
}

fn tracked_template(image: &str) -> Value {
    json!({"image": image, "tag": "stable", "port": 8080, "watch": true, "update_policy": "track",
           "health": {"path": "/healthz", "interval": "200ms", "timeout": "1s", "grace": "5s"},
           "rollout": {"batch_size": 1, "max_failures": 1}, "stop_grace": "1s"})
}

#[tokio::test]
async fn watcher_seeds_then_notifies_or_tracks() {
    let t = TestServer::start().await;
    let repo_n = unique("wn-");
    let repo_t = unique("wt-");
    let image_n = push_as("v1", &repo_n, "stable");
    let image_t = push_as("v1", &repo_t, "stable");
    let v1 = registry_digest(&image_t, "stable").await;
    t.put_template(
        "noti",
        json!({"image": image_n, "tag": "stable", "watch": true, "stop_grace": "1s"}),
    )
    .await;
    // Both runtimes in one batch, recreated side by side.
    let mut trk = tracked_template(&image_t);
    trk["rollout"] = json!({"batch_size": 2, "max_failures": 1, "max_unavailable": 2});
    t.put_template("trk", trk).await;
    let (_, n1) = t.start_runtime("n-1", "noti").await;
    let mut before = Vec::new();
    for id in ["t-1", "t-2"] {
        let (status, rt) = t
            .post(
                "/v1/runtimes",
                json!({"id": id, "template": "trk", "env": {"FROM_REQUEST": id}}),
            )
            .await;
        assert_eq!(status, StatusCode::CREATED, "{rt}");
        assert_eq!(rt["image_digest"], v1.as_str());
        let state = t
            .data_dir
            .path()
            .canonicalize()
            .unwrap()
            .join(format!("runtimes/{id}/state"));
        std::fs::write(state.join("marker"), id).unwrap();
        before.push(rt);
    }

    // First sight only seeds.
    let report = watch(&t).await;
    let mut seeded: Vec<&str> = report["seeded"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    seeded.sort();
    assert_eq!(seeded, ["noti", "trk"], "{report}");
    assert_eq!(report["lookups"], 2);
    assert_eq!(watch(&t).await["tracked"], json!([]));
    let (status, _) = t.get("/v1/templates/trk/pin").await;
    assert_eq!(status, StatusCode::NOT_FOUND, "seeding promotes nothing");

    // The tags move.
    push_as("v2", &repo_n, "stable");
    push_as("v2", &repo_t, "stable");
    let v2 = registry_digest(&image_t, "stable").await;
    let report = watch(&t).await;
    assert_eq!(report["notified"], json!(["noti"]), "{report}");
    assert_eq!(report["tracked"], json!(["trk"]), "{report}");

    // notify: an intent, nothing restarts.
    let (_, notes) = t.get("/v1/notifications").await;
    let update = notes["notifications"]
        .as_array()
        .unwrap()
        .iter()
        .find(|n| n["notification_type"] == "image.update_available")
        .cloned()
        .expect("image.update_available");
    assert_eq!(update["payload"]["template"], "noti");
    assert_eq!(
        update["payload"]["new_digest"],
        registry_digest(&image_n, "stable").await.as_str()
    );
    let (_, n1_after) = t.get("/v1/runtimes/n-1").await;
    assert_eq!(n1_after["container_id"], n1["container_id"]);

    // track: pin promoted (source image_watch), fleet rolled to v2.
    let (_, pin) = t.get("/v1/templates/trk/pin").await;
    assert_eq!(pin["digest"], v2.as_str());
    assert_eq!(pin["promoted_by"], "image_watch");
    let rollout = rollout_of(&t, "trk", &["completed", "halted"]).await;
    assert_eq!(rollout["state"], "completed", "{rollout}");
    assert_eq!(rollout["progress"]["updated"], 2);
    for (id, old) in ["t-1", "t-2"].iter().zip(&before) {
        let (_, rt) = t.get(&format!("/v1/runtimes/{id}")).await;
        assert_eq!(rt["image_digest"], v2.as_str(), "{rt}");
        assert_eq!(rt["status"], "running");
        assert_ne!(rt["container_id"], old["container_id"]);
        assert!(
            docker_inspect(old["container_id"].as_str().unwrap()).is_none(),
            "old container removed"
        );
        let info = docker_inspect(rt["container_id"].as_str().unwrap()).unwrap();
        assert_eq!(info["Name"], format!("/{}-{id}", t.owner), "canonical name");
        let aliases = &info["NetworkSettings"]["Networks"][&t.network]["Aliases"];
        assert!(
            aliases
                .as_array()
                .unwrap()
                .iter()
                .any(|a| a == &format!("trk-{id}")),
            "{aliases}"
        );
        let env: Vec<&str> = info["Config"]["Env"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e.as_str().unwrap())
            .collect();
        assert!(
            env.contains(&format!("FROM_REQUEST={id}").as_str()),
            "{env:?}"
        );
        let out = std::process::Command::new("docker")
            .args([
                "exec",
                rt["container_id"].as_str().unwrap(),
                "cat",
                "/var/lib/runtime/marker",
            ])
            .output()
            .unwrap();
        assert_eq!(
            String::from_utf8_lossy(&out.stdout),
            *id,
            "state directory contents kept"
        );
    }
    let ops = t.operations("runtime=t-1&kind=recreate").await;
    assert_eq!(ops[0]["source"], "image_watch");
    assert_eq!(ops[0]["outcome"], "success");
    t.shutdown().await;
}

#[tokio::test]
async fn a_bad_release_halts_restores_and_reverts_the_pin() {
    let t = TestServer::start().await;
    let repo = unique("wb-");
    let image = push_as("v1", &repo, "stable");
    let v1 = registry_digest(&image, "stable").await;
    t.put_template("trk", tracked_template(&image)).await;
    let mut before = Vec::new();
    for id in ["b-1", "b-2"] {
        let (status, rt) = t.start_runtime(id, "trk").await;
        assert_eq!(status, StatusCode::CREATED, "{rt}");
        before.push(rt);
    }
    watch(&t).await;
    push_as("broken", &repo, "stable");
    let broken = registry_digest(&image, "stable").await;
    assert_eq!(watch(&t).await["tracked"], json!(["trk"]));

    let rollout = rollout_of(&t, "trk", &["halted", "completed"]).await;
    assert_eq!(rollout["state"], "halted", "{rollout}");
    assert_eq!(rollout["failures"], 1);
    for (id, old) in ["b-1", "b-2"].iter().zip(&before) {
        let (_, rt) = t.get(&format!("/v1/runtimes/{id}")).await;
        assert_eq!(rt["status"], "running", "{rt}");
        assert_eq!(rt["image_digest"], v1.as_str(), "{rt}");
        assert_eq!(
            rt["container_id"], old["container_id"],
            "the old container is back"
        );
        assert_eq!(
            docker_inspect(old["container_id"].as_str().unwrap()).unwrap()["State"]["Running"],
            true
        );
    }
    assert_eq!(
        t.containers().len(),
        2,
        "the failed new container was removed"
    );
    let (_, pin) = t.get("/v1/templates/trk/pin").await;
    assert_eq!(pin["digest"], v1.as_str(), "pin reverted");
    let (_, history) = t.get("/v1/templates/trk/pin/history").await;
    let pins = history["pins"].as_array().unwrap();
    assert_eq!(
        (pins[0]["digest"].as_str(), pins[1]["digest"].as_str()),
        (Some(v1.as_str()), Some(broken.as_str()))
    );
    let (_, notes) = t.get("/v1/notifications").await;
    let halted = notes["notifications"]
        .as_array()
        .unwrap()
        .iter()
        .find(|n| n["notification_type"] == "rollout.halted")
        .cloned()
        .expect("rollout.halted");
    assert_eq!(halted["payload"]["to_digest"], broken.as_str());
    let failed = t.operations("runtime=b-1&kind=recreate").await;
    assert_eq!(failed[0]["error_code"], "health_check_failed", "{failed:?}");

    // The rejected digest is not retried while the tag stays on it.
    let report = watch(&t).await;
    assert_eq!(report["tracked"], json!([]), "{report}");
    let (_, list) = t.get("/v1/rollouts?template=trk").await;
    assert_eq!(list["rollouts"].as_array().unwrap().len(), 1);

    // Steering: a halted rollout offers only resume, and the verbs it does
    // not offer are refused; resuming retries the failed runtime (and
    // halts again: still broken).
    assert_eq!(rollout["actions"], json!(["resume"]), "{rollout}");
    let id = rollout["id"].as_str().unwrap();
    for verb in ["pause", "abort"] {
        let (status, body) = t
            .post(&format!("/v1/rollouts/{id}/{verb}"), json!({}))
            .await;
        assert_eq!(
            (status, body["error"]["code"].clone()),
            (StatusCode::CONFLICT, json!("conflict")),
            "{verb}"
        );
    }
    let (status, body) = t
        .post("/v1/rollouts/no-such-rollout/abort", json!({}))
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{body}");
    let (status, resumed) = t
        .post(&format!("/v1/rollouts/{id}/resume"), json!({}))
        .await;
    assert_eq!(status, StatusCode::OK, "{resumed}");
    assert_eq!(resumed["state"], "running");
    assert_eq!(resumed["actions"], json!(["pause", "abort"]), "{resumed}");
    let again = eventually("halted again", async || {
        let (_, r) = t.get(&format!("/v1/rollouts/{id}")).await;
        (r["state"] == "halted" && r["updated_at"] != rollout["updated_at"]).then_some(r)
    })
    .await;
    assert_eq!(again["failures"], 1, "{again}");
    let (_, rt) = t.get("/v1/runtimes/b-1").await;
    assert_eq!(rt["image_digest"], v1.as_str());
    t.shutdown().await;
}

#[tokio::test]
async fn one_unreachable_registry_does_not_stop_the_others() {
    let t = TestServer::start().await;
    let repo = unique("wu-");
    let image = push_as("v1", &repo, "stable");
    t.put_template(
        "up",
        json!({"image": image, "tag": "stable", "watch": true}),
    )
    .await;
    t.put_template(
        "down",
        json!({"image": "127.0.0.1:1/berth-test/nowhere", "tag": "stable", "watch": true}),
    )
    .await;
    let report = watch(&t).await;
    assert_eq!(report["seeded"], json!(["up"]), "{report}");
    let failed = report["failed"].as_array().unwrap();
    assert_eq!(failed.len(), 1, "{report}");
    assert_eq!(failed[0]["template"], "down");
    // The next tick tries again.
    let report = watch(&t).await;
    assert_eq!(report["failed"][0]["template"], "down");
    assert_eq!(report["lookups"], 2);
    t.shutdown().await;
}

#[tokio::test]
async fn a_move_while_berth_was_down_is_acted_on_at_boot() {
    let repo = unique("wd-");
    let image = push_as("v1", &repo, "stable");
    let toml = "[image_watch]\nenabled = true\ninterval = \"1h\"\n".to_string();
    let t = TestServer::start_with(Options {
        toml: toml.clone(),
        ..Default::default()
    })
    .await;
    t.put_template(
        "noti",
        json!({"image": image, "tag": "stable", "watch": true}),
    )
    .await;
    watch(&t).await;
    let (data_dir, owner) = t.stop_keeping_data().await;

    push_as("v2", &repo, "stable");
    let v2 = registry_digest(&image, "stable").await;
    let t = TestServer::start_with(Options {
        toml,
        data_dir: Some(data_dir),
        owner: Some(owner),
        ..Default::default()
    })
    .await;
    // The boot tick (no request from us) notices the move.
    let update = eventually("image.update_available after boot", async || {
        let (_, notes) = t.get("/v1/notifications").await;
        notes["notifications"]
            .as_array()
            .unwrap()
            .iter()
            .find(|n| n["notification_type"] == "image.update_available")
            .cloned()
    })
    .await;
    assert_eq!(update["payload"]["new_digest"], v2.as_str());
    t.shutdown().await;
}

#[tokio::test]
async fn a_rollout_interrupted_by_a_restart_resumes() {
    let repo = unique("wr-");
    let image = push_as("v1", &repo, "stable");
    let t = TestServer::start().await;
    t.put_template("trk", tracked_template(&image)).await;
    for i in 0..4 {
        let (status, _) = t.start_runtime(&format!("r-{i}"), "trk").await;
        assert_eq!(status, StatusCode::CREATED);
    }
    watch(&t).await;
    push_as("v2", &repo, "stable");
    let v2 = registry_digest(&image, "stable").await;
    assert_eq!(watch(&t).await["tracked"], json!(["trk"]));
    // Stop at once: the rollout is mid-way (each recreate waits for health).
    let (data_dir, owner) = t.stop_keeping_data().await;
    let t = TestServer::start_with(Options {
        data_dir: Some(data_dir),
        owner: Some(owner),
        ..Default::default()
    })
    .await;
    let (_, list) = t.get("/v1/rollouts?template=trk").await;
    let id = list["rollouts"][0]["id"].as_str().unwrap().to_string();
    let (_, r) = t.get(&format!("/v1/rollouts/{id}")).await;
    assert!(
        r["progress"]["updated"].as_u64().unwrap() < 4,
        "the restart came mid-rollout: {r}"
    );
    let done = rollout_of(&t, "trk", &["completed", "halted"]).await;
    assert_eq!(done["state"], "completed", "{done}");
    assert_eq!(done["id"], id.as_str(), "the same rollout resumed");
    for i in 0..4 {
        let (_, rt) = t.get(&format!("/v1/runtimes/r-{i}")).await;
        assert_eq!(rt["image_digest"], v2.as_str(), "{rt}");
        assert_eq!(rt["status"], "running");
    }
    assert_eq!(t.containers().len(), 4);
    t.shutdown().await;
}

#[tokio::test]
async fn refresh_endpoint_pulls_and_recreates() {
    let t = TestServer::start().await;
    let repo = unique("wf-");
    let image = push_as("v1", &repo, "stable");
    t.put_template(
        "app",
        json!({"image": image, "tag": "stable", "port": 8080, "stop_grace": "1s",
        "health": {"path": "/healthz", "interval": "200ms", "grace": "5s"}}),
    )
    .await;
    t.put_template("ghost", json!({"image": format!("{}/berth-test/ghost-{repo}", required_env("BERTH_TEST_REGISTRY")), "tag": "x"}))
        .await;
    let (_, rt) = t.start_runtime("f-1", "app").await;
    push_as("v2", &repo, "stable");
    let v2 = registry_digest(&image, "stable").await;
    let (status, result) = t
        .post("/v1/admin/images/refresh", json!({"recreate": true}))
        .await;
    assert_eq!(status, StatusCode::OK, "{result}");
    assert_eq!(result["pulled"], json!(["app"]), "{result}");
    assert_eq!(result["recreated"], json!(["f-1"]));
    assert_eq!(result["failed"][0]["template"], "ghost");
    let (_, after) = t.get("/v1/runtimes/f-1").await;
    assert_eq!(after["image_digest"], v2.as_str());
    assert_ne!(after["container_id"], rt["container_id"]);
    // Bad input.
    let (status, body) = t
        .post(
            "/v1/admin/images/refresh",
            json!({"templates": ["Bad Name"]}),
        )
        .await;
    assert_eq!(
        (status, body["error"]["code"].clone()),
        (StatusCode::BAD_REQUEST, json!("invalid_request"))
    );
    t.shutdown().await;
}

/// Builds an image on top of the test image with one layer of its own,
/// pushes it as `<repo>:<tag>` and removes it locally, so that pulling it
/// needs that layer from the registry.
fn push_fresh_layer(repo: &str, tag: &str) {
    let registry = required_env("BERTH_TEST_REGISTRY");
    let target = format!("{registry}/berth-test/{repo}:{tag}");
    let ctx = tempfile::tempdir().unwrap();
    std::fs::write(ctx.path().join("unique"), unique("content-")).unwrap();
    std::fs::write(
        ctx.path().join("Dockerfile"),
        format!("FROM {}:v1\nCOPY unique /www/unique\n", test_image()),
    )
    .unwrap();
    let out = std::process::Command::new("docker")
        .env("DOCKER_BUILDKIT", "0")
        .args(["build", "-q", "-t", &target])
        .arg(ctx.path())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "build: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = std::process::Command::new("docker")
        .args(["push", "-q", &target])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "push: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = std::process::Command::new("docker")
        .args(["rmi", &target])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "rmi: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The compressed blob digest of the manifest's last layer.
async fn last_layer_blob(repo: &str, tag: &str) -> String {
    let registry = required_env("BERTH_TEST_REGISTRY");
    let manifest: Value = reqwest::Client::new()
        .get(format!(
            "http://{registry}/v2/berth-test/{repo}/manifests/{tag}"
        ))
        .header(
            "Accept",
            "application/vnd.docker.distribution.manifest.v2+json",
        )
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let layers = manifest["layers"].as_array().expect("layers");
    layers.last().unwrap()["digest"]
        .as_str()
        .unwrap()
        .to_string()
}

#[tokio::test]
async fn a_failed_pull_rolls_the_observation_back_and_the_next_tick_retries() {
    let registry = required_env("BERTH_TEST_REGISTRY");
    let http = reqwest::Client::new();
    let repo = unique("wp-");
    let image = push_as("v1", &repo, "stable");
    let v1 = registry_digest(&image, "stable").await;
    let t = TestServer::start().await;
    t.put_template("trk", tracked_template(&image)).await;
    let (status, _) = t.start_runtime("p-1", "trk").await;
    assert_eq!(status, StatusCode::CREATED);
    watch(&t).await;

    // The tag moves to an image one of whose layers the registry lost.
    push_fresh_layer(&repo, "stable");
    let moved = registry_digest(&image, "stable").await;
    assert_ne!(moved, v1);
    let blob = last_layer_blob(&repo, "stable").await;
    let blob_url = format!("http://{registry}/v2/berth-test/{repo}/blobs/{blob}");
    let bytes = http
        .get(&blob_url)
        .send()
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap();
    let deleted = http.delete(&blob_url).send().await.unwrap();
    assert_eq!(deleted.status(), StatusCode::ACCEPTED, "blob deleted");

    let report = watch(&t).await;
    assert_eq!(report["tracked"], json!([]), "{report}");
    assert_eq!(report["failed"][0]["template"], "trk", "{report}");
    let (status, _) = t.get("/v1/templates/trk/pin").await;
    assert_eq!(
        status,
        StatusCode::NOT_FOUND,
        "no pin promoted for an image that could not be pulled"
    );
    let (_, rt) = t.get("/v1/runtimes/p-1").await;
    assert_eq!(rt["image_digest"], v1.as_str(), "nothing restarted");
    let (_, notes) = t.get("/v1/notifications").await;
    assert!(notes["notifications"]
        .as_array()
        .unwrap()
        .iter()
        .any(|n| n["notification_type"] == "image.refresh_failed"));

    // The registry has the layer again: the next tick retries and succeeds.
    let start = http
        .post(format!(
            "http://{registry}/v2/berth-test/{repo}/blobs/uploads/"
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(start.status(), StatusCode::ACCEPTED);
    let location = start.headers()["location"].to_str().unwrap().to_string();
    let location = if location.starts_with("http") {
        location
    } else {
        format!("http://{registry}{location}")
    };
    let sep = if location.contains('?') { '&' } else { '?' };
    let put = http
        .put(format!("{location}{sep}digest={blob}"))
        .header("content-type", "application/octet-stream")
        .body(bytes)
        .send()
        .await
        .unwrap();
    assert_eq!(put.status(), StatusCode::CREATED, "blob restored");
    let report = watch(&t).await;
    assert_eq!(report["tracked"], json!(["trk"]), "{report}");
    let done = rollout_of(&t, "trk", &["completed", "halted"]).await;
    assert_eq!(done["state"], "completed", "{done}");
    let (_, rt) = t.get("/v1/runtimes/p-1").await;
    assert_eq!(rt["image_digest"], moved.as_str());
    t.shutdown().await;
}

#[tokio::test]
async fn verified_promotes_refuse_digests_the_registry_lacks() {
    let t = TestServer::start().await;
    let repo = unique("wv-");
    let image = push_as("v1", &repo, "stable");
    let v1 = registry_digest(&image, "stable").await;
    t.put_template("app", json!({"image": image, "tag": "stable"}))
        .await;
    let missing = format!("sha256:{}", "0".repeat(64));
    let (status, body) = t
        .post(
            "/v1/templates/app/pin",
            json!({"digest": missing, "verify": true}),
        )
        .await;
    assert_eq!(
        (status, body["error"]["code"].clone()),
        (StatusCode::UNPROCESSABLE_ENTITY, json!("invalid_digest")),
        "{body}"
    );
    let (status, _) = t.get("/v1/templates/app/pin").await;
    assert_eq!(status, StatusCode::NOT_FOUND, "nothing was promoted");
    let (status, pin) = t
        .post(
            "/v1/templates/app/pin",
            json!({"digest": v1, "verify": true}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{pin}");
    assert_eq!(pin["digest"], v1.as_str());
    t.shutdown().await;
}
