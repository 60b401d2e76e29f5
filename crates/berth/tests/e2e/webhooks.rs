//! Webhooks end to end: berth on real Docker and the local registry,
//! posting to a receiver on 127.0.0.1 in this test that records every
//! request and answers what it is told. Signed, retried while the receiver
//! answers 500, delivered in commit order, nothing lost across a restart
//! of berth.

use crate::common;

use std::sync::atomic::{AtomicU16, Ordering};
use std::sync::{Arc, Mutex};

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use berth::services::webhooks::signature;
use common::*;
use serde_json::{json, Value};

const SECRET: &str = "webhook-secret";

#[derive(Debug, Clone)]
struct Hit {
    delivery: String,
    signature: String,
    content_type: String,
    body: String,
    /// What the receiver answered.
    answered: u16,
}

impl Hit {
    fn json(&self) -> Value {
        serde_json::from_str(&self.body).unwrap()
    }
}

#[derive(Clone)]
struct Receiver {
    hits: Arc<Mutex<Vec<Hit>>>,
    answer: Arc<AtomicU16>,
}

impl Receiver {
    async fn start() -> (Receiver, String, tokio::task::JoinHandle<()>) {
        let rx = Receiver {
            hits: Arc::default(),
            answer: Arc::new(AtomicU16::new(200)),
        };
        let app = axum::Router::new()
            .route("/hook", axum::routing::post(record))
            .with_state(rx.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/hook", listener.local_addr().unwrap());
        let task = tokio::spawn(async move {
            axum::serve(listener, app).await.unwrap();
        });
        (rx, url, task)
    }

    fn answer(&self, status: u16) {
        self.answer.store(status, Ordering::SeqCst);
    }

    fn hits(&self) -> Vec<Hit> {
        self.hits.lock().unwrap().clone()
    }

    /// The requests answered 2xx, in arrival order.
    fn accepted(&self) -> Vec<Hit> {
        self.hits()
            .into_iter()
            .filter(|h| (200..300).contains(&h.answered))
            .collect()
    }
}

async fn record(State(rx): State<Receiver>, headers: HeaderMap, body: Bytes) -> StatusCode {
    let header = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_string()
    };
    let answered = rx.answer.load(Ordering::SeqCst);
    rx.hits.lock().unwrap().push(Hit {
        delivery: header("x-berth-delivery"),
        signature: header("x-berth-signature"),
        content_type: header("content-type"),
        body: String::from_utf8(body.to_vec()).unwrap(),
        answered,
    });
    StatusCode::from_u16(answered).unwrap()
}

fn toml(url: &str) -> String {
    format!("[[webhooks]]\nname = \"rx\"\nurl = \"{url}\"\nsecret = \"{SECRET}\"\n")
}

/// Starts runtimes of a template whose image exists nowhere: each start
/// fails and commits one `runtime.*_failed` notification.
async fn fail_starts(server: &TestServer, ids: &[&str]) {
    for id in ids {
        let (status, body) = server.start_runtime(id, "ghost").await;
        assert!(!status.is_success(), "{id}: {status} {body}");
    }
}

/// The ids of the notifications committed so far, oldest first.
async fn notification_ids(server: &TestServer) -> Vec<String> {
    let (status, body) = server.get("/v1/notifications?limit=1000").await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let mut ids: Vec<String> = body["notifications"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n["id"].as_str().unwrap().to_string())
        .collect();
    ids.reverse();
    ids
}

async fn webhook_status(server: &TestServer) -> Value {
    let (status, body) = server.get("/v1/status").await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let hooks = body["webhooks"].as_array().unwrap();
    assert_eq!(hooks.len(), 1, "{body}");
    hooks[0].clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deliveries_are_signed_retried_in_order_and_survive_a_restart() {
    let (rx, url, _receiver) = Receiver::start().await;
    rx.answer(500);
    let server = TestServer::start_with(Options {
        toml: toml(&url),
        ..Options::default()
    })
    .await;
    let registry = required_env("BERTH_TEST_REGISTRY");
    server
        .put_template(
            "ghost",
            json!({"image": format!("{registry}/berth-test/no-such-image"), "tag": "nope"}),
        )
        .await;
    fail_starts(&server, &["wh-0", "wh-1", "wh-2"]).await;
    let committed = notification_ids(&server).await;
    assert_eq!(committed.len(), 3, "{committed:?}");

    // The receiver answers 500: the head is retried, alone, same id.
    eventually("three attempts of the head", async || {
        (rx.hits().len() >= 3).then_some(())
    })
    .await;
    let tried = rx.hits();
    let head = &tried[0];
    assert_eq!(head.json()["id"], committed[0]);
    for h in &tried {
        assert_eq!(h.delivery, head.delivery, "same delivery id on every retry");
        assert_eq!(h.body, head.body);
    }
    let hook = webhook_status(&server).await;
    assert_eq!(hook["name"], "rx");
    assert_eq!(hook["url"], url);
    assert_eq!(hook["pending"], 3);
    assert!(
        hook["last_error"].as_str().unwrap().contains("500"),
        "{hook}"
    );
    assert!(hook["last_error_at"].is_i64(), "{hook}");
    let (_, log) = server.get("/v1/webhooks/deliveries?webhook=rx").await;
    let log = log["deliveries"].as_array().unwrap();
    assert_eq!(log.len(), 3);
    assert!(log.iter().all(|d| d["status"] == "pending"));

    // The receiver recovers: everything arrives, in commit order.
    rx.answer(200);
    eventually("three deliveries", async || {
        (rx.accepted().len() == 3).then_some(())
    })
    .await;
    let accepted = rx.accepted();
    let order: Vec<Value> = accepted.iter().map(|h| h.json()["id"].clone()).collect();
    assert_eq!(order, committed);
    assert_eq!(accepted[0].delivery, head.delivery);
    for h in &accepted {
        assert_eq!(
            h.signature,
            signature(SECRET, &h.body),
            "signature verifies"
        );
        assert_eq!(h.content_type, "application/json");
        let b = h.json();
        assert!(
            b["notification_type"]
                .as_str()
                .unwrap()
                .starts_with("runtime."),
            "{b}"
        );
        assert_eq!(b["audience"], "admin");
        assert_eq!(
            b["payload"]["runtime_id"]
                .as_str()
                .map(|s| s.starts_with("wh-")),
            Some(true),
            "{b}"
        );
    }
    let hook = webhook_status(&server).await;
    assert_eq!(hook["pending"], 0);
    assert!(hook["last_delivered_at"].is_i64(), "{hook}");
    let (status, log) = server
        .get("/v1/webhooks/deliveries?webhook=rx&limit=10")
        .await;
    assert_eq!(status, StatusCode::OK);
    let log = log["deliveries"].as_array().unwrap().clone();
    assert_eq!(log.len(), 3);
    assert!(log
        .iter()
        .all(|d| d["status"] == "delivered" && d["webhook"] == "rx" && d["delivered_at"].is_i64()));
    assert_eq!(log[2]["id"], head.delivery.as_str(), "newest first");
    assert!(log[2]["attempts"].as_i64().unwrap() >= 4);
    assert!(log[2]["last_error"].as_str().unwrap().contains("500"));
    let (status, _) = server.get("/v1/webhooks/deliveries?limit=0").await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    let (_, metrics) = server.get("/metrics").await;
    let metrics = metrics.as_str().unwrap().to_string();
    assert!(
        metrics.contains("berth_webhook_deliveries_total{webhook=\"rx\",outcome=\"delivered\"} 3"),
        "{metrics}"
    );
    assert!(metrics.contains("berth_webhook_backlog{webhook=\"rx\"} 0"));

    // Down again; two more notifications wait; berth restarts meanwhile.
    rx.answer(500);
    fail_starts(&server, &["wh-3", "wh-4"]).await;
    eventually("an attempt of the fourth", async || {
        (rx.hits().len() > accepted.len() + tried.len()).then_some(())
    })
    .await;
    let before_restart = rx.hits().last().unwrap().clone();
    let committed = notification_ids(&server).await;
    assert_eq!(committed.len(), 5);
    assert_eq!(before_restart.json()["id"], committed[3]);
    let (data_dir, owner) = server.stop_keeping_data().await;
    let server = TestServer::start_with(Options {
        toml: toml(&url),
        data_dir: Some(data_dir),
        owner: Some(owner),
        ..Options::default()
    })
    .await;
    assert_eq!(webhook_status(&server).await["pending"], 2);
    rx.answer(200);
    eventually("all five delivered", async || {
        (rx.accepted().len() == 5).then_some(())
    })
    .await;
    let accepted = rx.accepted();
    let order: Vec<Value> = accepted.iter().map(|h| h.json()["id"].clone()).collect();
    assert_eq!(order, committed, "none lost, none reordered, none twice");
    assert_eq!(
        accepted[3].delivery, before_restart.delivery,
        "the same delivery id after the restart"
    );
    for h in &accepted {
        assert_eq!(h.signature, signature(SECRET, &h.body));
    }
    assert_eq!(webhook_status(&server).await["pending"], 0);

    // `berth status` shows the webhook (the CLI binary, through the API;
    // blocking, so off the runtime's threads).
    let base = server.base.clone();
    let out = tokio::task::spawn_blocking(move || {
        std::process::Command::new(env!("CARGO_BIN_EXE_berth"))
            .args(["--api-url", &base, "status"])
            .env_remove("BERTH_API_TOKEN")
            .output()
            .expect("berth binary runs")
    })
    .await
    .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let row = text
        .lines()
        .find(|l| l.starts_with("rx "))
        .unwrap_or_else(|| panic!("no webhook row in\n{text}"));
    assert!(
        text.contains("WEBHOOK") && text.contains("PENDING"),
        "{text}"
    );
    assert!(row.contains(&url) && row.contains(" 0 "), "{row}");
    server.shutdown().await;
}
