//! End to end: the HTTP API drives real containers on the real Docker
//! engine, with images from the local registry.

use crate::common;

use common::*;
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};

fn label(info: &Value, key: &str) -> String {
    info["Config"]["Labels"][key]
        .as_str()
        .unwrap_or_default()
        .to_string()
}

async fn full_lifecycle(backend: Backend) {
    let t = TestServer::start_with(Options {
        backend,
        ..Default::default()
    })
    .await;
    t.put_app_template("engine", "v1").await;

    let (status, rt) = t
        .post(
            "/v1/runtimes",
            json!({"id": "ws-1", "template": "engine", "env": {"FROM_REQUEST": "r", "SHARED": "request"}}),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{rt}");
    assert_eq!(rt["status"], "running");
    assert_eq!(rt["generation"], 1);
    assert_eq!(rt["engine_endpoint"], "http://engine-ws-1:8080");
    assert_eq!(rt["image_ref"], format!("{}:v1", test_image()));
    assert_eq!(
        rt["image_digest"].as_str().unwrap(),
        registry_digest(&test_image(), "v1").await
    );
    let cid = rt["container_id"].as_str().unwrap().to_string();

    // The container: name, every label, alias, env and state mount.
    let info = docker_inspect(&cid).expect("container exists");
    assert_eq!(info["Name"], format!("/{}-ws-1", t.owner));
    assert_eq!(info["State"]["Running"], true);
    assert_eq!(label(&info, "io.berth.owner"), t.owner);
    assert_eq!(label(&info, "io.berth.runtime_id"), "ws-1");
    assert_eq!(label(&info, "io.berth.template"), "engine");
    assert_eq!(
        label(&info, "io.berth.image_ref"),
        format!("{}:v1", test_image())
    );
    assert_eq!(label(&info, "io.berth.generation"), "1");
    assert!(
        label(&info, "io.berth.started_at_ms")
            .parse::<i64>()
            .unwrap()
            > 0
    );
    let aliases = &info["NetworkSettings"]["Networks"][&t.network]["Aliases"];
    assert!(
        aliases
            .as_array()
            .unwrap()
            .iter()
            .any(|a| a == "engine-ws-1"),
        "aliases: {aliases}"
    );
    let env: Vec<String> = info["Config"]["Env"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap().to_string())
        .collect();
    for expected in [
        "FROM_TEMPLATE=t",
        "FROM_REQUEST=r",
        "SHARED=request",
        "BERTH_RUNTIME_ID=ws-1",
        "BERTH_TEMPLATE=engine",
        "BERTH_STATE_PATH=/var/lib/runtime",
        "BERTH_GENERATION=1",
    ] {
        assert!(
            env.contains(&expected.to_string()),
            "missing {expected} in {env:?}"
        );
    }
    let state_dir = t
        .data_dir
        .path()
        .canonicalize()
        .unwrap()
        .join("runtimes/ws-1/state");
    let mounts = info["Mounts"].as_array().unwrap();
    assert!(
        mounts
            .iter()
            .any(|m| m["Source"] == state_dir.to_str().unwrap()
                && m["Destination"] == "/var/lib/runtime"),
        "mounts: {mounts:?}"
    );

    // Starting a running runtime is idempotent: 200, same container.
    let (status, again) = t.start_runtime("ws-1", "engine").await;
    assert_eq!(status, StatusCode::OK, "{again}");
    assert_eq!(again["container_id"], cid.as_str());

    // Stop, then start again: the same container comes back.
    let (status, stopped) = t.post("/v1/runtimes/ws-1/stop", json!({})).await;
    assert_eq!(status, StatusCode::OK, "{stopped}");
    assert_eq!(stopped["status"], "stopped");
    assert_eq!(docker_inspect(&cid).unwrap()["State"]["Running"], false);
    let (status, _) = t.post("/v1/runtimes/ws-1/stop", json!({})).await;
    assert_eq!(
        status,
        StatusCode::OK,
        "stopping a stopped runtime is a no-op"
    );
    let (status, started) = t.post("/v1/runtimes/ws-1/start", json!({})).await;
    assert_eq!(status, StatusCode::CREATED, "{started}");
    assert_eq!(started["status"], "running");
    assert_eq!(started["container_id"], cid.as_str());
    assert_eq!(docker_inspect(&cid).unwrap()["State"]["Running"], true);

    // Restart.
    let before = docker_inspect(&cid).unwrap()["State"]["StartedAt"].clone();
    let (status, restarted) = t.post("/v1/runtimes/ws-1/restart", json!({})).await;
    assert_eq!(status, StatusCode::OK, "{restarted}");
    assert_eq!(restarted["status"], "running");
    let after = docker_inspect(&cid).unwrap();
    assert_eq!(after["State"]["Running"], true);
    assert_ne!(
        after["State"]["StartedAt"], before,
        "the container was restarted"
    );

    // Remove: container gone, record stays as removed, state dir kept.
    let (status, removed) = t.call(Method::DELETE, "/v1/runtimes/ws-1", None).await;
    assert_eq!(status, StatusCode::OK, "{removed}");
    assert_eq!(removed["status"], "removed");
    assert!(docker_inspect(&cid).is_none(), "container is gone");
    assert!(t.containers().is_empty());
    assert!(state_dir.exists(), "state directory survives removal");
    let (status, rec) = t.get("/v1/runtimes/ws-1").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(rec["status"], "removed");

    // A removed id is terminal.
    let (status, body) = t.start_runtime("ws-1", "engine").await;
    assert_eq!(status, StatusCode::CONFLICT, "{body}");
    assert_eq!(body["error"]["code"], "runtime_removed");
    let (status, body) = t.post("/v1/runtimes/ws-1/start", json!({})).await;
    assert_eq!(status, StatusCode::CONFLICT, "{body}");
    assert_eq!(body["error"]["code"], "runtime_removed");

    // Every change is in the log, newest first.
    let ops = t.operations("runtime=ws-1").await;
    let kinds: Vec<&str> = ops.iter().map(|o| o["kind"].as_str().unwrap()).collect();
    assert_eq!(
        kinds,
        ["remove", "restart", "start", "stop", "start"],
        "{ops:?}"
    );
    assert!(ops
        .iter()
        .all(|o| o["outcome"] == "success" && o["source"] == "api"));
    assert_eq!(ops[4]["details"]["container_id"], cid.as_str());

    t.shutdown().await;
}

#[tokio::test]
async fn lifecycle_on_sqlite() {
    full_lifecycle(Backend::Sqlite).await;
}

#[tokio::test]
async fn lifecycle_on_postgres() {
    full_lifecycle(Backend::Postgres).await;
}

#[tokio::test]
async fn pins_decide_the_image_of_every_create() {
    let t = TestServer::start().await;
    let v1 = registry_digest(&test_image(), "v1").await;
    let v2 = registry_digest(&test_image(), "v2").await;
    assert_ne!(v1, v2);
    t.put_app_template("engine", "v1").await;

    // Unpinned: the tag.
    let (status, a) = t.start_runtime("a", "engine").await;
    assert_eq!(status, StatusCode::CREATED, "{a}");
    assert_eq!(a["image_ref"], format!("{}:v1", test_image()));
    assert_eq!(a["image_digest"], v1.as_str());

    // Pin v2: running runtimes are untouched, the next create uses it.
    let (status, pin) = t
        .post(
            "/v1/templates/engine/pin",
            json!({"digest": v2, "reason": "roll forward"}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{pin}");
    assert_eq!(pin["digest"], v2.as_str());
    let (_, a_after) = t.get("/v1/runtimes/a").await;
    assert_eq!(a_after["image_digest"], v1.as_str());
    assert_eq!(a_after["container_id"], a["container_id"]);

    let (status, b) = t.start_runtime("b", "engine").await;
    assert_eq!(status, StatusCode::CREATED, "{b}");
    assert_eq!(b["image_ref"], format!("{}@{v2}", test_image()));
    assert_eq!(b["image_digest"], v2.as_str());
    let info = docker_inspect(b["container_id"].as_str().unwrap()).unwrap();
    let image_id = info["Image"].as_str().unwrap();
    let image = docker_inspect(image_id).unwrap();
    assert!(
        image["RepoDigests"]
            .as_array()
            .unwrap()
            .iter()
            .any(|d| d.as_str().unwrap().ends_with(&v2)),
        "container b runs the pinned digest: {}",
        image["RepoDigests"]
    );

    // a is stale (runs v1, pin is v2); b is not.
    let (_, stale) = t.get("/v1/runtimes?stale=true").await;
    let ids: Vec<&str> = stale["runtimes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["a"]);

    // History newest first; then unpin.
    let (status, _) = t
        .post("/v1/templates/engine/pin", json!({"digest": v1}))
        .await;
    assert_eq!(status, StatusCode::OK);
    let (_, history) = t.get("/v1/templates/engine/pin/history").await;
    let pins = history["pins"].as_array().unwrap();
    assert_eq!(pins.len(), 2);
    assert_eq!(pins[0]["digest"], v1.as_str());
    assert_eq!(pins[0]["previous_digest"], v2.as_str());
    assert_eq!(pins[1]["reason"], "roll forward");
    let (status, _) = t
        .call(Method::DELETE, "/v1/templates/engine/pin", None)
        .await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    let (status, body) = t.get("/v1/templates/engine/pin").await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{body}");

    // require_pin without a pin refuses, and says how to fix it.
    t.put_template(
        "strict",
        json!({"image": test_image(), "tag": "v1", "require_pin": true}),
    )
    .await;
    let (status, body) = t.start_runtime("c", "strict").await;
    assert_eq!(status, StatusCode::CONFLICT, "{body}");
    assert_eq!(body["error"]["code"], "image_not_pinned");
    assert!(body["error"]["message"]
        .as_str()
        .unwrap()
        .contains("/v1/templates/strict/pin"));
    let (_, c) = t.get("/v1/runtimes/c").await;
    assert_ne!(c["status"], "running");
    assert!(t
        .containers()
        .iter()
        .all(|id| docker_inspect(id).unwrap()["Config"]["Labels"]["io.berth.runtime_id"] != "c"));

    // With a pin, the same template starts.
    let (status, _) = t
        .post("/v1/templates/strict/pin", json!({"digest": v1}))
        .await;
    assert_eq!(status, StatusCode::OK);
    let (status, c) = t.post("/v1/runtimes/c/start", json!({})).await;
    assert_eq!(status, StatusCode::CREATED, "{c}");
    assert_eq!(c["image_digest"], v1.as_str());
    t.shutdown().await;
}

#[tokio::test]
async fn unpullable_image_fails_cleanly() {
    let t = TestServer::start().await;
    let registry = required_env("BERTH_TEST_REGISTRY");
    t.put_template(
        "ghost",
        json!({"image": format!("{registry}/berth-test/does-not-exist"), "tag": "v1"}),
    )
    .await;
    let (status, body) = t.start_runtime("g1", "ghost").await;
    // The registry answered: the image does not exist (the caller's input).
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    assert_eq!(body["error"]["code"], "image_pull_failed");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("berth-test/does-not-exist"),
        "the message names the image: {body}"
    );
    assert!(t.containers().is_empty(), "no container is left");
    let (_, rec) = t.get("/v1/runtimes/g1").await;
    assert_eq!(rec["status"], "failed");
    assert_eq!(rec["last_error"]["code"], "image_pull_failed");
    assert!(rec["container_id"].is_null());
    let ops = t.operations("runtime=g1").await;
    assert_eq!(ops.len(), 1, "{ops:?}");
    assert_eq!(ops[0]["kind"], "start");
    assert_eq!(ops[0]["outcome"], "failure");
    assert_eq!(ops[0]["error_code"], "image_pull_failed");
    t.shutdown().await;
}

#[tokio::test]
async fn concurrent_starts_create_one_container() {
    let t = TestServer::start().await;
    t.put_app_template("engine", "v1").await;
    let (a, b) = tokio::join!(
        t.start_runtime("twin", "engine"),
        t.start_runtime("twin", "engine")
    );
    let mut statuses = [a.0, b.0];
    statuses.sort();
    assert_eq!(
        statuses,
        [StatusCode::OK, StatusCode::CREATED],
        "{a:?} {b:?}"
    );
    assert_eq!(a.1["container_id"], b.1["container_id"]);
    assert_eq!(t.containers().len(), 1);
    let starts = t.operations("runtime=twin&kind=start").await;
    assert_eq!(starts.len(), 1, "one start operation: {starts:?}");
    t.shutdown().await;
}

#[tokio::test]
async fn bad_input_gets_stable_codes() {
    let t = TestServer::start().await;
    t.put_app_template("engine", "v1").await;

    let long = "a".repeat(300);
    for bad in ["../x", long.as_str(), "", "Upper", "a b"] {
        let (status, body) = t.start_runtime(bad, "engine").await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{bad:?}: {body}");
        assert_eq!(body["error"]["code"], "invalid_id", "{bad:?}");
        assert!(!body["error"]["message"].as_str().unwrap().is_empty());
    }
    let (status, body) = t.get("/v1/runtimes/Upper").await;
    assert_eq!(
        (status, body["error"]["code"].clone()),
        (StatusCode::BAD_REQUEST, json!("invalid_id"))
    );

    let (status, body) = t.start_runtime("ok-id", "nope").await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(body["error"]["code"], "template_not_found");

    let (status, body) = t.get("/v1/runtimes/unknown").await;
    assert_eq!(
        (status, body["error"]["code"].clone()),
        (StatusCode::NOT_FOUND, json!("runtime_not_found"))
    );

    for digest in [
        "sha256:123",
        "md5:abc",
        "SHA256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef",
    ] {
        let (status, body) = t
            .post("/v1/templates/engine/pin", json!({"digest": digest}))
            .await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{digest}");
        assert_eq!(body["error"]["code"], "invalid_digest", "{digest}");
    }

    // Malformed JSON, wrong shapes, unknown fields, bad template documents.
    let resp = t
        .client
        .post(format!("{}/v1/runtimes", t.base))
        .header("content-type", "application/json")
        .body("{\"id\": ")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::BAD_REQUEST);
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["error"]["code"], "invalid_request");
    for (path, doc) in [
        ("/v1/runtimes", json!({"id": "x"})),
        (
            "/v1/runtimes",
            json!({"id": "x", "template": "engine", "env": {"BERTH_RUNTIME_ID": "y"}}),
        ),
        (
            "/v1/runtimes",
            json!({"id": "x", "template": "engine", "bogus": 1}),
        ),
    ] {
        let (status, body) = t.post(path, doc.clone()).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{doc}: {body}");
        assert_eq!(body["error"]["code"], "invalid_request", "{doc}");
    }
    let (status, body) = t
        .call(
            Method::PUT,
            "/v1/templates/bad",
            Some(json!({"image": "Not An Image"})),
        )
        .await;
    assert_eq!(
        (status, body["error"]["code"].clone()),
        (StatusCode::BAD_REQUEST, json!("invalid_image_ref"))
    );
    let (status, body) = t
        .call(
            Method::PUT,
            "/v1/templates/bad",
            Some(json!({"image": "x", "health": {"path": "/h"}})),
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    let (status, body) = t.get("/v1/runtimes?status=sideways").await;
    assert_eq!(
        (status, body["error"]["code"].clone()),
        (StatusCode::BAD_REQUEST, json!("invalid_request"))
    );
    let (status, body) = t.get("/v1/operations?limit=0").await;
    assert_eq!(
        (status, body["error"]["code"].clone()),
        (StatusCode::BAD_REQUEST, json!("invalid_request"))
    );

    // Oversize body.
    let huge = json!({"image": "x", "env": {"BIG": "x".repeat(2 * 1024 * 1024)}});
    let (status, body) = t.call(Method::PUT, "/v1/templates/big", Some(huge)).await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE, "{body}");
    assert_eq!(body["error"]["code"], "payload_too_large");

    // Unknown route and method: JSON errors too.
    let (status, body) = t.get("/v1/nothing-here").await;
    assert_eq!(
        (status, body["error"]["code"].clone()),
        (StatusCode::NOT_FOUND, json!("not_found"))
    );
    let (status, body) = t.call(Method::PATCH, "/v1/runtimes", None).await;
    assert_eq!(status, StatusCode::METHOD_NOT_ALLOWED, "{body}");

    // A template that runtimes use cannot be deleted.
    let (status, _) = t.start_runtime("user", "engine").await;
    assert_eq!(status, StatusCode::CREATED);
    let (status, body) = t.call(Method::DELETE, "/v1/templates/engine", None).await;
    assert_eq!(
        (status, body["error"]["code"].clone()),
        (StatusCode::CONFLICT, json!("conflict"))
    );
    t.shutdown().await;
}

#[tokio::test]
async fn bearer_token_guards_v1() {
    let t = TestServer::start_with(Options {
        token: Some("s3cret-token".into()),
        ..Default::default()
    })
    .await;
    let url = format!("{}/v1/templates", t.base);
    let resp = t.client.get(&url).send().await.unwrap();
    assert_eq!(resp.status(), StatusCode::UNAUTHORIZED);
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["error"]["code"], "unauthorized");
    let resp = t
        .client
        .get(&url)
        .bearer_auth("wrong-token")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::UNAUTHORIZED);
    let resp = t
        .client
        .get(&url)
        .bearer_auth("s3cret-token")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    // Open endpoints stay open.
    for open in ["/healthz", "/metrics", "/openapi.json"] {
        let resp = t
            .client
            .get(format!("{}{open}", t.base))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), StatusCode::OK, "{open}");
    }
    t.shutdown().await;
}

#[tokio::test]
async fn metrics_and_openapi_describe_the_api() {
    let t = TestServer::start().await;
    t.put_app_template("engine", "v1").await;
    let (status, _) = t.start_runtime("m1", "engine").await;
    assert_eq!(status, StatusCode::CREATED);
    let text = t
        .client
        .get(format!("{}/metrics", t.base))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        text.contains("berth_operations_total{kind=\"start\",outcome=\"success\"} 1"),
        "{text}"
    );
    assert!(text.contains("route=\"/v1/runtimes\""), "{text}");
    let (status, doc) = t.get("/openapi.json").await;
    assert_eq!(status, StatusCode::OK);
    assert!(doc["openapi"].as_str().unwrap().starts_with("3."));
    for path in [
        "/v1/runtimes",
        "/v1/runtimes/{id}",
        "/v1/templates/{name}/pin",
        "/v1/operations",
    ] {
        assert!(doc["paths"][path].is_object(), "{path} documented");
    }
    assert!(doc["components"]["schemas"]["RuntimeView"].is_object());
    t.shutdown().await;
}

/// The network deleted behind berth's back: the next start makes it again.
/// A stopped container stays bound to the deleted network, so it is
/// replaced; a new runtime's container joins the new network. (Docker 20.10
/// notices a missing network only at start, newer daemons may at create.)
#[tokio::test]
async fn a_deleted_network_is_made_again_at_start() {
    let t = TestServer::start().await;
    t.put_app_template("engine", "v1").await;
    let (status, rt) = t.start_runtime("net-1", "engine").await;
    assert_eq!(status, StatusCode::CREATED, "{rt}");
    let cid = rt["container_id"].as_str().unwrap().to_string();
    let (status, stopped) = t.post("/v1/runtimes/net-1/stop", json!({})).await;
    assert_eq!(status, StatusCode::OK, "{stopped}");

    docker_lines(&["network", "rm", &t.network]);
    let (status, started) = t.post("/v1/runtimes/net-1/start", json!({})).await;
    assert_eq!(status, StatusCode::CREATED, "{started}");
    let replacement = started["container_id"].as_str().unwrap();
    assert_ne!(replacement, cid, "the old container cannot rejoin");
    assert!(docker_inspect(&cid).is_none(), "the old container is gone");
    assert_eq!(t.containers(), vec![replacement.to_string()]);
    let info = docker_inspect(replacement).unwrap();
    assert_eq!(info["State"]["Running"], true);
    assert!(
        info["NetworkSettings"]["Networks"][&t.network]["IPAddress"]
            .as_str()
            .is_some_and(|ip| !ip.is_empty()),
        "on the network again: {}",
        info["NetworkSettings"]
    );

    let (status, removed) = t.call(Method::DELETE, "/v1/runtimes/net-1", None).await;
    assert_eq!(status, StatusCode::OK, "{removed}");
    docker_lines(&["network", "rm", &t.network]);
    let (status, rt) = t.start_runtime("net-2", "engine").await;
    assert_eq!(status, StatusCode::CREATED, "{rt}");
    assert_eq!(rt["status"], "running");
    let info = docker_inspect(rt["container_id"].as_str().unwrap()).unwrap();
    assert_eq!(info["State"]["Running"], true);
    t.shutdown().await;
}
