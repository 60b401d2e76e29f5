//! Webhook delivery on the fakes, with paused time: retries with backoff
//! while the receiver fails, strictly in commit order, nothing lost, the
//! same delivery id on every retry, `types` filtering, and a restart.

use crate::world;

use std::sync::Arc;
use std::time::Duration;

use berth::fakes::webhook::Received;
use berth::fakes::FakeWebhookSender;
use berth::ports::WebhookSender;
use berth::services::webhooks::{signature, Step, WebhookDeliverer, WebhookSpec};
use berth::services::{Effects, Services};
use serde_json::{json, Value};
use tokio_util::sync::CancellationToken;
use world::*;

const SECRET: &str = "s3cret-ü";

fn spec(name: &str, types: &[&str]) -> WebhookSpec {
    WebhookSpec {
        name: name.to_string(),
        url: format!("http://receiver.test/{name}"),
        secret: SECRET.to_string(),
        types: types.iter().map(|t| t.to_string()).collect(),
    }
}

/// Commits one notification per type, each in its own change, as the
/// services do (`Context::commit_change`); returns their ids in order.
async fn notify(s: &Services, types: &[&str]) -> Vec<String> {
    let mut ids = Vec::new();
    for (i, t) in types.iter().enumerate() {
        let n = s.ctx.notification(t, &[("i", i.to_string())]);
        ids.push(n.id.clone());
        s.ctx
            .commit(
                None,
                None,
                &Effects {
                    notifications: vec![n],
                    ..Effects::default()
                },
            )
            .await
            .unwrap();
    }
    ids
}

fn header<'a>(r: &'a Received, name: &str) -> &'a str {
    r.request
        .headers
        .iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.as_str())
        .unwrap_or_else(|| panic!("no {name} header in {r:?}"))
}

fn body(r: &Received) -> Value {
    serde_json::from_str(&r.request.body).unwrap()
}

/// Starts the delivery loop of every configured webhook.
fn run_loops(s: &Services, sender: &FakeWebhookSender) -> CancellationToken {
    let cancel = CancellationToken::new();
    let sender: Arc<dyn WebhookSender> = Arc::new(sender.clone());
    for d in WebhookDeliverer::for_all(&s.ctx, &sender) {
        tokio::spawn(d.run(cancel.clone()));
    }
    cancel
}

#[tokio::test(start_paused = true)]
async fn a_failing_receiver_gets_retries_with_backoff_in_order_and_loses_nothing() {
    let w = World::new();
    let s = w.boot_with_webhooks(vec![spec("hook", &[])]);
    let sender = FakeWebhookSender::new();
    sender.answer_next(2, 500);
    sender.fail_next(1, "connection refused");
    let ids = notify(&s, &["t.zero", "t.one", "t.two", "t.three", "t.four"]).await;
    let cancel = run_loops(&s, &sender);
    tokio::time::sleep(Duration::from_secs(60)).await;

    let got = sender.received();
    assert_eq!(got.len(), 8, "3 failures, then 5 deliveries: {got:#?}");
    // The head, retried with the same delivery id after 1 s, 2 s, 4 s;
    // nothing behind it was sent meanwhile.
    let head_id = header(&got[0], "X-Berth-Delivery");
    for r in &got[..4] {
        assert_eq!(header(r, "X-Berth-Delivery"), head_id);
        assert_eq!(body(r)["id"], ids[0]);
    }
    let gaps: Vec<Duration> = got[..4].windows(2).map(|p| p[1].at - p[0].at).collect();
    assert_eq!(
        gaps,
        [1, 2, 4].map(Duration::from_secs),
        "exponential backoff from 1 s"
    );
    // Then the rest at once, in commit order, each with its own id.
    let order: Vec<String> = got[3..]
        .iter()
        .map(|r| body(r)["id"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(order, ids);
    let mut delivery_ids: Vec<&str> = got[3..]
        .iter()
        .map(|r| header(r, "X-Berth-Delivery"))
        .collect();
    delivery_ids.dedup();
    assert_eq!(delivery_ids.len(), 5);
    for r in &got {
        assert_eq!(r.request.url, "http://receiver.test/hook");
        assert_eq!(header(r, "Content-Type"), "application/json");
        assert_eq!(
            header(r, "X-Berth-Signature"),
            signature(SECRET, &r.request.body)
        );
        let b = body(r);
        assert_eq!(b["audience"], "admin");
        assert!(b["notification_type"].as_str().unwrap().starts_with("t."));
        assert!(
            b["payload"]["i"].is_string() && b["created_at"].is_i64(),
            "{b}"
        );
    }
    // The body is the intent as GET /v1/notifications shows it.
    let listed = s.ctx.store.list_notifications(10).await.unwrap();
    let first = listed.iter().find(|n| n.id == ids[0]).unwrap();
    assert_eq!(
        body(&got[0]),
        json!({"id": first.id, "notification_type": first.notification_type,
               "audience": first.audience, "payload": first.payload,
               "created_at": first.created_at_ms})
    );

    // The log: all delivered; the first after 4 attempts, its error kept.
    let log = s
        .ctx
        .store
        .list_webhook_deliveries(Some("hook"), 100)
        .await
        .unwrap();
    assert_eq!(log.len(), 5);
    assert!(log.iter().all(|d| d.delivered_at_ms.is_some()));
    let first = log.last().unwrap();
    assert_eq!(first.id, head_id);
    assert_eq!(first.attempts, 4);
    assert_eq!(first.last_error.as_deref(), Some("connection refused"));

    // Status and metrics.
    let status = s.status().await.unwrap();
    assert_eq!(status.webhooks.len(), 1);
    let hook = &status.webhooks[0];
    assert_eq!((hook.name.as_str(), hook.pending), ("hook", 0));
    assert_eq!(
        hook.health.last_error.as_deref(),
        Some("connection refused")
    );
    assert!(hook.health.last_error_at_ms.is_some());
    assert!(hook.health.last_delivered_at_ms >= hook.health.last_error_at_ms);
    let metrics = s.ctx.metrics.encode();
    for line in [
        "berth_webhook_deliveries_total{webhook=\"hook\",outcome=\"failed\"} 3",
        "berth_webhook_deliveries_total{webhook=\"hook\",outcome=\"delivered\"} 5",
        "berth_webhook_backlog{webhook=\"hook\"} 0",
    ] {
        assert!(metrics.contains(line), "{line} in\n{metrics}");
    }
    cancel.cancel();
}

#[tokio::test(start_paused = true)]
async fn a_receiver_that_stays_down_holds_the_queue_with_backoff_capped_at_five_minutes() {
    let w = World::new();
    let s = w.boot_with_webhooks(vec![spec("hook", &[])]);
    let sender = FakeWebhookSender::new();
    sender.answer_always(Some(503));
    let ids = notify(&s, &["a", "b", "c"]).await;
    let cancel = run_loops(&s, &sender);
    tokio::time::sleep(Duration::from_secs(30 * 60)).await;

    let got = sender.received();
    // 0, 1, 3, 7, … 511 s, then every 300 s: 10 + 4 attempts in 30 min.
    assert_eq!(got.len(), 14, "{got:#?}");
    assert!(got.iter().all(|r| body(r)["id"] == ids[0]), "only the head");
    let gaps: Vec<u64> = got
        .windows(2)
        .map(|p| (p[1].at - p[0].at).as_secs())
        .collect();
    assert_eq!(gaps, [1, 2, 4, 8, 16, 32, 64, 128, 256, 300, 300, 300, 300]);
    let status = s.status().await.unwrap();
    assert_eq!(status.webhooks[0].pending, 3);
    assert_eq!(
        status.webhooks[0].health.last_error.as_deref(),
        Some("the receiver answered HTTP 503")
    );
    assert_eq!(status.webhooks[0].health.last_delivered_at_ms, None);
    assert!(s
        .ctx
        .metrics
        .encode()
        .contains("berth_webhook_backlog{webhook=\"hook\"} 3"));

    // Back up: the next retry delivers all three, in order, then new ones.
    sender.answer_always(None);
    let later = notify(&s, &["d"]).await;
    tokio::time::sleep(Duration::from_secs(301)).await;
    let delivered: Vec<Value> = sender.received()[14..]
        .iter()
        .map(|r| body(r)["id"].clone())
        .collect();
    let mut want = ids.clone();
    want.extend(later);
    assert_eq!(delivered, want);
    assert_eq!(s.status().await.unwrap().webhooks[0].pending, 0);
    cancel.cancel();
}

#[tokio::test(start_paused = true)]
async fn a_commit_wakes_an_idle_loop_at_once() {
    let w = World::new();
    let s = w.boot_with_webhooks(vec![spec("hook", &[])]);
    let sender = FakeWebhookSender::new();
    let cancel = run_loops(&s, &sender);
    tokio::time::sleep(Duration::from_secs(2)).await;
    let t0 = tokio::time::Instant::now();
    notify(&s, &["x"]).await;
    tokio::time::sleep(Duration::from_millis(10)).await;
    let got = sender.received();
    assert_eq!(got.len(), 1);
    assert!(
        got[0].at - t0 < Duration::from_millis(10),
        "woken, not polled"
    );
    cancel.cancel();
}

#[tokio::test(start_paused = true)]
async fn each_webhook_gets_only_the_types_it_asks_for() {
    let w = World::new();
    let s = w.boot_with_webhooks(vec![
        spec("all", &[]),
        spec(
            "failures",
            &["runtime.start_failed", "runtime.image_pull_failed"],
        ),
    ]);
    // A start whose image exists nowhere: the lifecycle's own notification.
    put_template(&s, "ghost", json!({"image": REPO, "tag": "missing"})).await;
    let failed = s
        .runtimes
        .start(start_request("r-ghost", "ghost"), &caller())
        .await;
    assert!(failed.is_err(), "{failed:?}");
    notify(&s, &["image.update_available"]).await;

    let types = |rows: Vec<berth::ports::store::WebhookDelivery>| {
        rows.into_iter()
            .rev()
            .map(|d| d.notification_type)
            .collect::<Vec<_>>()
    };
    let store = &s.ctx.store;
    let all = types(
        store
            .list_webhook_deliveries(Some("all"), 10)
            .await
            .unwrap(),
    );
    let failures = types(
        store
            .list_webhook_deliveries(Some("failures"), 10)
            .await
            .unwrap(),
    );
    assert_eq!(all.len(), 2, "{all:?}");
    assert!(all[0].starts_with("runtime.") && all[0].ends_with("_failed"));
    assert_eq!(all[1], "image.update_available");
    assert_eq!(failures, all[..1], "only the failure");

    // Each webhook's loop delivers its own queue.
    let sender = FakeWebhookSender::new();
    let dyn_sender: Arc<dyn WebhookSender> = Arc::new(sender.clone());
    for d in WebhookDeliverer::for_all(&s.ctx, &dyn_sender) {
        while d.deliver_once().await.unwrap() != Step::Idle {}
    }
    let got = sender.received();
    let to = |url: &str| {
        got.iter()
            .filter(|r| r.request.url.ends_with(url))
            .map(|r| body(r)["notification_type"].as_str().unwrap().to_string())
            .collect::<Vec<_>>()
    };
    assert_eq!(to("/all"), all);
    assert_eq!(to("/failures"), failures);
}

#[tokio::test(start_paused = true)]
async fn pending_deliveries_survive_a_restart_with_their_ids_and_order() {
    let w = World::new();
    let s = w.boot_with_webhooks(vec![spec("hook", &[])]);
    let down = FakeWebhookSender::new();
    down.fail_next(100, "connection refused");
    let ids = notify(&s, &["a", "b", "c"]).await;
    let cancel = run_loops(&s, &down);
    tokio::time::sleep(Duration::from_secs(10)).await;
    cancel.cancel();
    let tried = down.received();
    assert!(tried.len() >= 3 && tried.iter().all(|r| body(r)["id"] == ids[0]));
    let head_id = header(&tried[0], "X-Berth-Delivery").to_string();
    drop(s);

    // A new process on the same store, the receiver back up. Before it
    // tries, its status shows the stored error of the head.
    let s = w.boot_with_webhooks(vec![spec("hook", &[])]);
    let status = s.status().await.unwrap();
    assert_eq!(status.webhooks[0].pending, 3);
    assert_eq!(
        status.webhooks[0].health.last_error.as_deref(),
        Some("connection refused")
    );
    assert!(status.webhooks[0].health.last_error_at_ms.is_some());
    let up = FakeWebhookSender::new();
    let cancel = run_loops(&s, &up);
    tokio::time::sleep(Duration::from_secs(1)).await;
    let got = up.received();
    let order: Vec<Value> = got.iter().map(|r| body(r)["id"].clone()).collect();
    assert_eq!(order, ids, "all of them, in commit order");
    assert_eq!(header(&got[0], "X-Berth-Delivery"), head_id, "same id");
    assert_eq!(s.status().await.unwrap().webhooks[0].pending, 0);
    cancel.cancel();
}
