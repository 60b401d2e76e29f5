//! `GET /v1/stream` end to end: a real berth (in-process) on SQLite and on
//! PostgreSQL, Docker and the local registry. Changes made through the API
//! arrive as `change` events; a client that reconnects with
//! `Last-Event-ID` gets exactly what it missed, in seq order; a bad kind
//! is a 400; with a token, no token is a 401.

use crate::common;

use berth::cli::sse::{SseEvent, SseReader};
use common::{Backend, Options, TestServer};
use reqwest::StatusCode;
use serde_json::{json, Value};

async fn open(server: &TestServer, query: &str, last_event_id: Option<i64>) -> SseReader {
    let mut req = server
        .client
        .get(format!("{}/v1/stream{query}", server.base));
    if let Some(t) = &server.token {
        req = req.bearer_auth(t);
    }
    if let Some(id) = last_event_id {
        req = req.header("last-event-id", id.to_string());
    }
    let resp = req.send().await.expect("the stream opens");
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(
        resp.headers()["content-type"].to_str().unwrap(),
        "text/event-stream"
    );
    SseReader::new(resp)
}

/// The next `change`: (seq, kind, key, runtime).
async fn next_change(stream: &mut SseReader) -> (i64, String, String, Value) {
    let mut event: SseEvent = stream
        .next()
        .await
        .expect("the stream reads")
        .expect("the stream goes on");
    // Pull progress (not a change) may come along with `?runtime=`.
    while event.event == "progress" {
        event = stream
            .next()
            .await
            .expect("the stream reads")
            .expect("the stream goes on");
    }
    assert_eq!(event.event, "change", "{event:?}");
    let data: Value = serde_json::from_str(&event.data).unwrap();
    let seq = data["seq"].as_i64().unwrap();
    assert_eq!(event.id.as_deref(), Some(seq.to_string().as_str()));
    assert!(data["at"].as_i64().unwrap() > 0, "{data}");
    (
        seq,
        data["kind"].as_str().unwrap().to_string(),
        data["key"].as_str().unwrap().to_string(),
        data["runtime"].clone(),
    )
}

/// Changes until `count` of them are read.
async fn changes(stream: &mut SseReader, count: usize) -> Vec<(i64, String, String, Value)> {
    let mut out = Vec::new();
    while out.len() < count {
        out.push(next_change(stream).await);
    }
    out
}

fn kinds_and_keys(changes: &[(i64, String, String, Value)]) -> Vec<(String, String)> {
    changes
        .iter()
        .map(|(_, kind, key, _)| (kind.clone(), key.clone()))
        .collect()
}

async fn scenario(backend: Backend) {
    let server = TestServer::start_with(Options {
        backend,
        ..Options::default()
    })
    .await;
    let mut live = open(&server, "", None).await;
    let mut only_runtime = open(&server, "?kinds=runtime,operation&runtime=s1", None).await;

    server.put_app_template("web", "v1").await;
    let first = changes(&mut live, 2).await;
    assert_eq!(
        kinds_and_keys(&first),
        [
            ("template".into(), "web".into()),
            ("operation".into(), first[1].2.clone())
        ]
    );
    assert_eq!(first[0].3, Value::Null);

    let (status, body) = server.start_runtime("s1", "web").await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    // The start: the record and its operation in progress, then done
    // (health events between).
    let mut seen = Vec::new();
    while !seen
        .iter()
        .any(|(_, kind, _, _): &(i64, String, String, Value)| kind == "runtime")
        || seen
            .iter()
            .filter(|(_, kind, _, _)| kind == "operation")
            .count()
            < 2
    {
        seen.push(next_change(&mut live).await);
    }
    for (_, kind, key, runtime) in &seen {
        assert_eq!(runtime, &json!("s1"), "{kind} {key}");
        if kind == "runtime" {
            assert_eq!(key, "s1");
        }
    }
    let ops = server.operations("runtime=s1").await;
    let start_op = ops[0]["id"].as_str().unwrap();
    assert!(seen
        .iter()
        .any(|(_, kind, key, _)| kind == "operation" && key == start_op));
    // The filtered client got only runtime and operation changes of s1,
    // the same ones, in the same order.
    let wanted: Vec<_> = seen
        .iter()
        .filter(|(_, kind, _, _)| kind == "runtime" || kind == "operation")
        .cloned()
        .collect();
    assert_eq!(changes(&mut only_runtime, wanted.len()).await, wanted);

    // Disconnect; more changes; reconnect with Last-Event-ID.
    let last_seen = seen.last().unwrap().0;
    drop(live);
    let (status, body) = server.post("/v1/runtimes/s1/stop", json!({})).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    server.put_app_template("other", "v1").await;
    let (status, body) = server
        .call(reqwest::Method::DELETE, "/v1/templates/other", None)
        .await;
    assert!(status.is_success(), "{body}");

    let mut resumed = open(&server, "", Some(last_seen)).await;
    // Everything after the cursor, up to the template's deletion.
    let mut missed = Vec::new();
    loop {
        let change = next_change(&mut resumed).await;
        let done = change.1 == "template" && change.2 == "other" && {
            // The put's template row comes first; the delete's second.
            missed
                .iter()
                .any(|(_, k, key, _): &(i64, String, String, Value)| {
                    k == "template" && key == "other"
                })
        };
        missed.push(change);
        if done {
            break;
        }
    }
    let seqs: Vec<i64> = missed.iter().map(|c| c.0).collect();
    assert_eq!(seqs[0], last_seen + 1, "nothing missed at the start");
    assert!(seqs.windows(2).all(|w| w[0] < w[1]), "{seqs:?}");
    assert!(missed
        .iter()
        .any(|(_, kind, key, _)| kind == "runtime" && key == "s1"));
    // `?after=` is the same cursor.
    let mut by_query = open(&server, &format!("?after={last_seen}"), None).await;
    assert_eq!(changes(&mut by_query, missed.len()).await, missed);

    // A kind that does not exist.
    let (status, body) = server.get("/v1/stream?kinds=runtime,bogus").await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(body["error"]["code"], "invalid_request", "{body}");
    assert!(
        body["error"]["message"].as_str().unwrap().contains("bogus"),
        "{body}"
    );
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn changes_stream_and_resume_on_sqlite() {
    scenario(Backend::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn changes_stream_and_resume_on_postgres() {
    scenario(Backend::Postgres).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_a_token_the_stream_needs_one() {
    let server = TestServer::start_with(Options {
        token: Some("s3cret-token".into()),
        ..Options::default()
    })
    .await;
    let resp = server
        .client
        .get(format!("{}/v1/stream", server.base))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::UNAUTHORIZED);
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["error"]["code"], "unauthorized");
    // With it: the stream, and a change on it.
    let mut stream = open(&server, "?kinds=template", None).await;
    server.put_app_template("web", "v1").await;
    let (_, kind, key, _) = next_change(&mut stream).await;
    assert_eq!((kind.as_str(), key.as_str()), ("template", "web"));
    server.shutdown().await;
}

#[tokio::test]
async fn a_start_that_pulls_its_image_streams_the_pull_by_layer() {
    let server = TestServer::start().await;
    let repo = common::unique("pulled");
    let target = common::push_registry_only_image(&repo);
    let template = common::unique("pull");
    server
        .put_template(
            &template,
            json!({"image": target, "tag": "v1", "port": 8080}),
        )
        .await;
    let id = common::unique("rt-pull");
    let mut stream = open(&server, &format!("?runtime={id}"), None).await;

    // Read until the runtime's record changes after some progress: the
    // start's last commit comes after its pull.
    let read = async {
        let mut progress: Vec<Value> = Vec::new();
        loop {
            let event = stream.next().await.expect("reads").expect("goes on");
            match event.event.as_str() {
                "progress" => {
                    assert_eq!(event.id, None, "progress is not stored: {event:?}");
                    progress.push(serde_json::from_str(&event.data).unwrap());
                }
                "change" if !progress.is_empty() => {
                    let data: Value = serde_json::from_str(&event.data).unwrap();
                    if data["kind"] == "runtime" {
                        return progress;
                    }
                }
                _ => {}
            }
        }
    };
    let read = async {
        tokio::time::timeout(std::time::Duration::from_secs(120), read)
            .await
            .expect("pull progress and then the running record")
    };
    let ((status, body), progress) = tokio::join!(server.start_runtime(&id, &template), read);
    assert_eq!(status, StatusCode::CREATED, "{body}");
    assert!(
        progress.iter().all(|p| p["runtime"] == id.as_str()),
        "{progress:?}"
    );
    // The layer of its own is downloaded: its id, its bytes, its end.
    let pulled: Vec<&Value> = progress
        .iter()
        .filter(|p| p["status"] == "Pull complete")
        .collect();
    assert!(!pulled.is_empty(), "no layer pulled in {progress:?}");
    let layer = pulled[0]["layer"].as_str().expect("a layer id");
    assert!(
        layer.len() >= 12 && layer.bytes().all(|b| b.is_ascii_hexdigit()),
        "{layer}"
    );
    assert!(
        progress
            .iter()
            .any(|p| p["layer"] == layer && p["total"].as_u64().is_some_and(|t| t > 0)),
        "no byte counts for {layer} in {progress:?}"
    );
    assert!(
        progress
            .iter()
            .all(|p| p["status"].as_str().is_some_and(|s| !s.is_empty())),
        "{progress:?}"
    );
    server.shutdown().await;
}
