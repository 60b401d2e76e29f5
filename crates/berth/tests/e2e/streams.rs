//! Redis Streams end to end: jobs in, results, health events and
//! notification intents out through the transactional outbox.

use crate::common;

use std::collections::BTreeMap;

use common::*;
use reqwest::StatusCode;
use serde_json::json;

async fn results_for(redis: &PrivateRedis, job_id: &str) -> Vec<BTreeMap<String, String>> {
    redis
        .entries("runtime:job_results")
        .await
        .into_iter()
        .filter(|r| r["job_id"] == job_id)
        .collect()
}

async fn server_with(redis: &PrivateRedis) -> TestServer {
    TestServer::start_with(Options {
        redis_url: Some(redis.url()),
        ..Default::default()
    })
    .await
}

#[tokio::test]
async fn start_job_result_then_disappearance_is_published() {
    let redis = PrivateRedis::start().await;
    let t = server_with(&redis).await;
    t.put_app_template("engine", "v1").await;
    redis
        .xadd(
            "runtime:start_jobs",
            &[
                ("job_id", "job-1"),
                ("runtime_id", "s-1"),
                ("template", "engine"),
                ("env", "{\"K\":\"v\"}"),
            ],
        )
        .await;
    let result = eventually("job result", async || {
        results_for(&redis, "job-1").await.into_iter().next()
    })
    .await;
    assert_eq!(result["outcome"], "success", "{result:?}");
    assert_eq!(result["kind"], "start");
    assert_eq!(result["runtime_id"], "s-1");
    assert_eq!(result["engine_endpoint"], "http://engine-s-1:8080");
    assert_eq!(result["error_code"], "");
    let cid = result["container_id"].clone();
    assert!(docker_inspect(&cid).unwrap()["Config"]["Env"]
        .as_array()
        .unwrap()
        .iter()
        .any(|e| e == "K=v"));
    let ops = t.operations("runtime=s-1&kind=start").await;
    assert_eq!(ops[0]["source"], "stream");

    // Behind berth's back: the disappearance is published too.
    docker_lines(&["rm", "-f", &cid]);
    let ev = eventually("published container_disappeared", async || {
        redis
            .entries("runtime:health_events")
            .await
            .into_iter()
            .find(|e| e["runtime_id"] == "s-1" && e["type"] == "container_disappeared")
    })
    .await;
    assert_eq!(ev["container_id"], cid);
    eventually("record removed", async || {
        let (_, rec) = t.get("/v1/runtimes/s-1").await;
        (rec["status"] == "removed").then_some(())
    })
    .await;
    assert_eq!(
        t.operations("runtime=s-1&kind=reconcile_dispose")
            .await
            .len(),
        1
    );
    t.shutdown().await;
}

#[tokio::test]
async fn a_failed_pull_answers_the_job_and_notifies_admins() {
    let redis = PrivateRedis::start().await;
    let t = server_with(&redis).await;
    let registry = required_env("BERTH_TEST_REGISTRY");
    let image = format!("{registry}/berth-test/not-there");
    t.put_template("ghost", json!({"image": image, "tag": "v9"}))
        .await;
    redis
        .xadd(
            "runtime:start_jobs",
            &[
                ("job_id", "job-g"),
                ("runtime_id", "g-1"),
                ("template", "ghost"),
            ],
        )
        .await;
    let result = eventually("job result", async || {
        results_for(&redis, "job-g").await.into_iter().next()
    })
    .await;
    assert_eq!(result["outcome"], "failure");
    assert_eq!(result["error_code"], "image_pull_failed");
    assert!(!result["error_message"].is_empty());
    assert_eq!(result["container_id"], "");
    assert_eq!(result["engine_endpoint"], "");
    let intent = eventually("intent", async || {
        redis
            .entries("notification:intents")
            .await
            .into_iter()
            .find(|n| n["notification_type"] == "runtime.image_pull_failed")
    })
    .await;
    assert_eq!(intent["audience"], "admin");
    let payload: serde_json::Value = serde_json::from_str(&intent["payload"]).unwrap();
    assert_eq!(payload["runtime_id"], "g-1");
    assert_eq!(payload["image_ref"], format!("{image}:v9"));
    assert_eq!(payload["error_code"], "image_pull_failed");
    let ops = t.operations("runtime=g-1&kind=start").await;
    assert_eq!(
        (ops[0]["outcome"].as_str(), ops[0]["error_code"].as_str()),
        (Some("failure"), Some("image_pull_failed"))
    );
    let (_, rec) = t.get("/v1/runtimes/g-1").await;
    assert_ne!(rec["status"], "running");
    assert!(t.containers().is_empty());
    // The same intent is readable without Redis, from the API.
    let (_, notes) = t.get("/v1/notifications").await;
    assert_eq!(
        notes["notifications"][0]["notification_type"],
        "runtime.image_pull_failed"
    );
    t.shutdown().await;
}

#[tokio::test]
async fn malformed_and_redelivered_jobs() {
    let redis = PrivateRedis::start().await;
    let t = server_with(&redis).await;
    t.put_app_template("engine", "v1").await;
    // Malformed jobs get failure results and do not block the stream.
    redis
        .xadd(
            "runtime:start_jobs",
            &[
                ("job_id", "bad-1"),
                ("runtime_id", "../x"),
                ("template", "engine"),
            ],
        )
        .await;
    redis
        .xadd(
            "runtime:start_jobs",
            &[
                ("job_id", "bad-2"),
                ("runtime_id", "ok"),
                ("template", "engine"),
                ("env", "not json"),
            ],
        )
        .await;
    redis
        .xadd("runtime:stop_jobs", &[("runtime_id", "ok")])
        .await;
    // The same job id twice: one container, one result.
    for _ in 0..2 {
        redis
            .xadd(
                "runtime:start_jobs",
                &[
                    ("job_id", "dup-1"),
                    ("runtime_id", "d-1"),
                    ("template", "engine"),
                ],
            )
            .await;
    }
    redis
        .xadd(
            "runtime:stop_jobs",
            &[
                ("job_id", "stop-1"),
                ("runtime_id", "d-1"),
                ("remove", "false"),
            ],
        )
        .await;

    let stop = eventually("stop result", async || {
        results_for(&redis, "stop-1").await.into_iter().next()
    })
    .await;
    assert_eq!(stop["outcome"], "success", "{stop:?}");
    let bad1 = results_for(&redis, "bad-1").await;
    assert_eq!(bad1.len(), 1);
    assert_eq!(bad1[0]["error_code"], "invalid_id");
    let bad2 = results_for(&redis, "bad-2").await;
    assert_eq!(bad2[0]["error_code"], "invalid_request");
    let all = redis.entries("runtime:job_results").await;
    assert!(
        all.iter()
            .any(|r| r["job_id"].starts_with("entry:") && r["error_code"] == "invalid_request"),
        "a job without id is answered under its entry id: {all:?}"
    );
    let dup = results_for(&redis, "dup-1").await;
    assert_eq!(dup.len(), 1, "{dup:?}");
    assert_eq!(dup[0]["outcome"], "success");
    assert_eq!(t.operations("runtime=d-1&kind=start").await.len(), 1);
    assert_eq!(t.containers().len(), 1);
    // Everything was acknowledged.
    let mut c = redis.connection().await.unwrap();
    for stream in ["runtime:start_jobs", "runtime:stop_jobs"] {
        let pending: redis::Value = redis::cmd("XPENDING")
            .arg(stream)
            .arg(&t.owner)
            .query_async(&mut c)
            .await
            .unwrap();
        let redis::Value::Array(parts) = pending else {
            panic!("{pending:?}")
        };
        assert_eq!(parts[0], redis::Value::Int(0), "{stream}: {parts:?}");
    }
    t.shutdown().await;
}

#[tokio::test]
async fn nothing_is_lost_while_redis_is_down() {
    let mut redis = PrivateRedis::start().await;
    let t = server_with(&redis).await;
    t.put_app_template("engine", "v1").await;
    redis.pause().await;

    // Changes while Redis is away: starts, a stop, a removal.
    for id in ["o-1", "o-2", "o-3"] {
        let (status, _) = t.start_runtime(id, "engine").await;
        assert_eq!(status, StatusCode::CREATED);
    }
    let (status, _) = t.post("/v1/runtimes/o-2/stop", json!({})).await;
    assert_eq!(status, StatusCode::OK);
    let cid = t.get("/v1/runtimes/o-3").await.1["container_id"]
        .as_str()
        .unwrap()
        .to_string();
    docker_lines(&["rm", "-f", &cid]);
    let expected = eventually("events recorded", async || {
        let (_, body) = t.get("/v1/events?limit=1000").await;
        let evs = body["events"].as_array().unwrap().clone();
        evs.iter()
            .any(|e| e["type"] == "container_disappeared")
            .then_some(evs)
    })
    .await;
    // Each of those commits woke the relay while Redis was away; what
    // follows checks that everything arrives once it is back.

    redis.resume().await;
    // Every recorded event arrives, once, in order per runtime.
    let (_, body) = t.get("/v1/events?limit=1000").await;
    let mut recorded: Vec<_> = body["events"].as_array().unwrap().clone();
    recorded.reverse();
    assert!(recorded.len() >= expected.len());
    let want: Vec<(String, String, String, String)> = recorded
        .iter()
        .map(|e| {
            (
                e["runtime_id"].as_str().unwrap().to_string(),
                e["type"].as_str().unwrap().to_string(),
                e["container_id"].as_str().unwrap_or_default().to_string(),
                e["at"].to_string(),
            )
        })
        .collect();
    let got = eventually("all events published", async || {
        let got: Vec<(String, String, String, String)> = redis
            .entries("runtime:health_events")
            .await
            .into_iter()
            .map(|e| {
                (
                    e["runtime_id"].clone(),
                    e["type"].clone(),
                    e["container_id"].clone(),
                    e["at_ms"].clone(),
                )
            })
            .collect();
        (got.len() >= want.len()).then_some(got)
    })
    .await;
    for rt in ["o-1", "o-2", "o-3"] {
        let w: Vec<_> = want.iter().filter(|e| e.0 == rt).collect();
        let g: Vec<_> = got.iter().filter(|e| e.0 == rt).collect();
        assert_eq!(g, w, "events of {rt}: once each, in order");
    }
    t.shutdown().await;
}
