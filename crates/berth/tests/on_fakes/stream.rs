//! The change feed on the fakes: resume by cursor from the ring and from
//! the store, reset below the oldest change kept, the slow-client drop,
//! filters, the client cap, shutdown; and `GET /v1/stream` through the
//! router with paused time (keep-alive, a change, a bad kind).

use crate::world;

use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::http::{Request, StatusCode};
use berth::fakes::FakeStore;
use berth::http::{router, AppState, Auth};
use berth::metrics::Metrics;
use berth::ports::store::{ChangeKind, ChangeStore, Store};
use berth::services::changes::{ChangeFeed, End, FeedSettings, Filter, Out, Subscription};
use berth::services::Services;
use berth_core::operation::{Operation, OperationKind, Source};
use berth_core::runtime::RuntimeRecord;
use futures_util::{FutureExt, StreamExt};
use serde_json::{json, Value};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tower::ServiceExt;
use world::*;

fn small() -> FeedSettings {
    FeedSettings {
        ring: 4,
        page: 3,
        max_clients: 3,
        ..FeedSettings::default()
    }
}

fn feed_on(store: &FakeStore, settings: FeedSettings) -> (Arc<ChangeFeed>, Arc<Metrics>) {
    let metrics = Arc::new(Metrics::default());
    let feed = Arc::new(ChangeFeed::new(
        Arc::new(store.clone()),
        Default::default(),
        metrics.clone(),
        settings,
    ));
    (feed, metrics)
}

/// `n` template puts through the service: 2 change rows each (template,
/// operation).
async fn put_templates(s: &Services, from: usize, n: usize) {
    for i in from..from + n {
        put_template(
            s,
            &format!("t{i}"),
            json!({"image": REPO, "tag": "v1", "port": 8080}),
        )
        .await;
    }
}

/// What the hub does after a wakeup: reads until nothing is new.
async fn read_all(feed: &ChangeFeed) -> usize {
    let mut total = 0;
    loop {
        match feed.catch_up().await.unwrap() {
            0 => return total,
            n => total += n,
        }
    }
}

/// The seqs a subscription sends until it would wait.
async fn drain(sub: &mut Subscription) -> Vec<Out> {
    let mut out = Vec::new();
    while let Some(next) = sub.next().now_or_never() {
        out.push(next.unwrap_or_else(|e| panic!("the subscription ended: {e:?}")));
    }
    out
}

fn seqs(out: &[Out]) -> Vec<i64> {
    out.iter()
        .map(|o| match o {
            Out::Change(item) => item.seq,
            Out::Reset { oldest } => panic!("a reset at {oldest} among changes"),
        })
        .collect()
}

async fn all_seqs(store: &FakeStore) -> Vec<i64> {
    store
        .list_changes_after(0, 10_000)
        .await
        .unwrap()
        .iter()
        .map(|r| r.seq)
        .collect()
}

#[tokio::test]
async fn a_resumed_client_gets_exactly_the_changes_after_its_cursor_from_the_store_then_memory() {
    let w = World::new();
    let s = w.boot();
    let (feed, _) = feed_on(&w.store, small());
    feed.load().await.unwrap();
    put_templates(&s, 0, 10).await;
    assert_eq!(read_all(&feed).await, 20);
    let snap = feed.snapshot();
    assert_eq!((snap.floor, snap.head, snap.items.len()), (16, 20, 4));
    let all = all_seqs(&w.store).await;
    assert_eq!(all, (1..=20).collect::<Vec<_>>());

    // 5 has left memory long ago: pages of 3 from the store, then memory.
    let mut sub = feed
        .subscribe(Some(5), Filter::default())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(seqs(&drain(&mut sub).await), (6..=20).collect::<Vec<_>>());
    // Then live: a new change arrives once the hub reads it.
    put_templates(&s, 10, 1).await;
    assert!(drain(&mut sub).await.is_empty(), "not read by the hub yet");
    read_all(&feed).await;
    assert_eq!(seqs(&drain(&mut sub).await), [21, 22]);

    // A cursor memory still covers: from memory only.
    let mut sub = feed
        .subscribe(Some(19), Filter::default())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(seqs(&drain(&mut sub).await), [20, 21, 22]);

    // The data line names the change.
    let mut sub = feed
        .subscribe(Some(20), Filter::default())
        .await
        .unwrap()
        .unwrap();
    let Out::Change(item) = sub.next().await.unwrap() else {
        panic!("a change")
    };
    let data: Value = serde_json::from_str(&item.data).unwrap();
    assert_eq!(
        data,
        json!({"seq": 21, "kind": "template", "key": "t10", "runtime": null, "at": data["at"]})
    );
    assert!(data["at"].as_i64().unwrap() > 0);
}

#[tokio::test]
async fn without_a_cursor_a_client_is_live_from_now() {
    let w = World::new();
    let s = w.boot();
    put_templates(&s, 0, 3).await;
    let (feed, _) = feed_on(&w.store, small());
    feed.load().await.unwrap();
    let mut sub = feed
        .subscribe(None, Filter::default())
        .await
        .unwrap()
        .unwrap();
    assert!(drain(&mut sub).await.is_empty(), "no backlog");
    put_templates(&s, 3, 1).await;
    read_all(&feed).await;
    assert_eq!(seqs(&drain(&mut sub).await), [7, 8]);
}

#[tokio::test]
async fn a_cursor_older_than_the_oldest_change_kept_is_told_to_reset() {
    let w = World::new();
    let s = w.boot();
    let (feed, _) = feed_on(&w.store, small());
    feed.load().await.unwrap();
    put_templates(&s, 0, 10).await;
    read_all(&feed).await;
    w.store.prune_changes_before(10).await.unwrap();

    let mut sub = feed
        .subscribe(Some(3), Filter::default())
        .await
        .unwrap()
        .unwrap();
    let out = drain(&mut sub).await;
    assert_eq!(out[0], Out::Reset { oldest: 10 });
    assert_eq!(seqs(&out[1..]), (10..=20).collect::<Vec<_>>());
    // Right below the oldest kept: nothing was lost, no reset.
    let mut sub = feed
        .subscribe(Some(9), Filter::default())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(seqs(&drain(&mut sub).await), (10..=20).collect::<Vec<_>>());
}

#[tokio::test]
async fn the_hub_prunes_the_log_to_what_it_keeps() {
    let w = World::new();
    let s = w.boot();
    let (feed, _) = feed_on(
        &w.store,
        FeedSettings {
            retain: 6,
            ..small()
        },
    );
    feed.load().await.unwrap();
    put_templates(&s, 0, 5).await;
    read_all(&feed).await;
    assert_eq!(feed.prune(false).await.unwrap(), 4);
    assert_eq!(w.store.change_bounds().await.unwrap(), Some((5, 10)));
    assert_eq!(feed.prune(true).await.unwrap(), 0);
}

#[tokio::test]
async fn a_live_client_that_falls_behind_memory_is_dropped_and_resumes_from_the_store() {
    let w = World::new();
    let s = w.boot();
    let (feed, metrics) = feed_on(&w.store, small());
    feed.load().await.unwrap();
    let mut slow = feed
        .subscribe(None, Filter::default())
        .await
        .unwrap()
        .unwrap();
    let mut quick = feed
        .subscribe(None, Filter::default())
        .await
        .unwrap()
        .unwrap();
    put_templates(&s, 0, 1).await;
    read_all(&feed).await;
    assert_eq!(seqs(&drain(&mut slow).await), [1, 2]);
    // Ten more commits while the slow client reads nothing; the quick one
    // keeps up after each.
    let mut quick_seen = seqs(&drain(&mut quick).await);
    for i in 1..11 {
        put_templates(&s, i, 1).await;
        read_all(&feed).await;
        quick_seen.extend(seqs(&drain(&mut quick).await));
    }
    assert_eq!(quick_seen, (1..=22).collect::<Vec<_>>());
    let cursor = slow.cursor();
    assert_eq!(cursor, 2);
    assert!(matches!(slow.next().await, Err(End::Dropped)));
    assert_eq!(metrics.stream_dropped_clients.get(), 1);
    drop(slow);
    // It reconnects with Last-Event-ID: the store has everything.
    let mut resumed = feed
        .subscribe(Some(cursor), Filter::default())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        seqs(&drain(&mut resumed).await),
        (3..=22).collect::<Vec<_>>()
    );
}

#[tokio::test]
async fn filters_keep_kinds_and_one_runtime_and_move_the_cursor_past_the_rest() {
    let w = World::new();
    let (feed, _) = feed_on(&w.store, small());
    feed.load().await.unwrap();
    let store: &dyn Store = &w.store;
    for (i, id) in ["a", "b", "a"].iter().enumerate() {
        let rec = RuntimeRecord::new(id, "t", Default::default(), 10);
        let op = Operation::begin(format!("o{i}"), OperationKind::Start, Source::Api, 10)
            .for_runtime(id, "t");
        store.record(Some(&rec), &op).await.unwrap();
    }
    // Rows: 1 runtime a, 2 op o0, 3 runtime b, 4 op o1, 5 runtime a, 6 op o2.
    read_all(&feed).await;
    let sub = |kinds: &[ChangeKind], runtime: Option<&str>| {
        let filter = Filter {
            kinds: kinds.iter().copied().collect(),
            runtime: runtime.map(str::to_string),
        };
        let feed = feed.clone();
        async move { feed.subscribe(Some(0), filter).await.unwrap().unwrap() }
    };
    let mut runtimes_of_a = sub(&[ChangeKind::Runtime], Some("a")).await;
    assert_eq!(seqs(&drain(&mut runtimes_of_a).await), [1, 5]);
    assert_eq!(runtimes_of_a.cursor(), 6);
    let mut ops = sub(&[ChangeKind::Operation], None).await;
    assert_eq!(seqs(&drain(&mut ops).await), [2, 4, 6]);
    let mut of_b = sub(&[], Some("b")).await;
    assert_eq!(seqs(&drain(&mut of_b).await), [3, 4]);
}

#[tokio::test]
async fn clients_beyond_the_cap_are_refused_and_counted() {
    let w = World::new();
    let (feed, metrics) = feed_on(&w.store, small());
    feed.load().await.unwrap();
    let mut subs = Vec::new();
    for _ in 0..3 {
        subs.push(
            feed.subscribe(None, Filter::default())
                .await
                .unwrap()
                .unwrap(),
        );
    }
    assert!(feed
        .subscribe(None, Filter::default())
        .await
        .unwrap()
        .is_none());
    assert_eq!(metrics.stream_clients.get(), 3);
    subs.pop();
    assert_eq!(metrics.stream_clients.get(), 2);
    assert!(feed
        .subscribe(None, Filter::default())
        .await
        .unwrap()
        .is_some());
}

#[tokio::test(start_paused = true)]
async fn the_hub_wakes_after_a_commit_and_ends_connections_at_shutdown() {
    let w = World::new();
    let s = w.boot();
    let feed = s.changes.clone();
    feed.load().await.unwrap();
    let cancel = CancellationToken::new();
    let hub = tokio::spawn(feed.clone().run(cancel.clone()));
    let mut sub = feed
        .subscribe(None, Filter::default())
        .await
        .unwrap()
        .unwrap();
    put_templates(&s, 0, 1).await;
    let Out::Change(first) = sub.next().await.unwrap() else {
        panic!("a change")
    };
    assert_eq!(first.seq, 1);
    assert!(matches!(sub.next().await, Ok(Out::Change(_))));
    cancel.cancel();
    hub.await.unwrap();
    assert!(matches!(sub.next().await, Err(End::Closed)));
}

fn app(s: Arc<Services>) -> axum::Router {
    router(AppState {
        services: s,
        tracker: TaskTracker::new(),
        auth: Arc::new(Auth::open()),
    })
}

/// The next SSE frame of a body, as text.
async fn frame(body: &mut axum::body::BodyDataStream) -> String {
    let bytes = body.next().await.expect("a frame").unwrap();
    String::from_utf8(bytes.to_vec()).unwrap()
}

#[tokio::test(start_paused = true)]
async fn the_endpoint_sends_changes_and_keep_alives() {
    let w = World::new();
    let s = w.boot();
    s.changes.load().await.unwrap();
    let cancel = CancellationToken::new();
    tokio::spawn(s.changes.clone().run(cancel.clone()));
    let resp = app(s.clone())
        .oneshot(
            Request::get("/v1/stream?kinds=template")
                .body(Body::empty())
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(
        resp.headers()["content-type"].to_str().unwrap(),
        "text/event-stream"
    );
    let mut body = resp.into_body().into_data_stream();
    // Idle: a keep-alive comment after 15 s (paused time moves on).
    let started = tokio::time::Instant::now();
    assert_eq!(frame(&mut body).await, ": keep-alive\n\n");
    assert_eq!(started.elapsed(), Duration::from_secs(15));
    put_templates(&s, 0, 1).await;
    let text = frame(&mut body).await;
    let data: Value =
        serde_json::from_str(text.lines().find_map(|l| l.strip_prefix("data: ")).unwrap()).unwrap();
    assert!(text.starts_with("id: 1\nevent: change\n"), "{text}");
    assert_eq!(data["kind"], "template");
    assert_eq!(data["key"], "t0");
    cancel.cancel();
    assert!(body.next().await.is_none(), "shutdown ends the stream");
}

#[tokio::test]
async fn the_endpoint_refuses_bad_filters_and_cursors() {
    let w = World::new();
    let s = w.boot();
    for uri in [
        "/v1/stream?kinds=runtime,bogus",
        "/v1/stream?after=-1",
        "/v1/stream?after=x",
        "/v1/stream?runtime=Not_An_Id",
        "/v1/stream?unknown=1",
    ] {
        let resp = app(s.clone())
            .oneshot(Request::get(uri).body(Body::empty()).unwrap())
            .await
            .unwrap();
        assert_eq!(resp.status(), StatusCode::BAD_REQUEST, "{uri}");
        let body = axum::body::to_bytes(resp.into_body(), usize::MAX)
            .await
            .unwrap();
        let body: Value = serde_json::from_slice(&body).unwrap();
        assert!(
            body["error"]["code"]
                .as_str()
                .unwrap()
                .starts_with("invalid_"),
            "{uri}: {body}"
        );
        if uri.contains("bogus") {
            let message = body["error"]["message"].as_str().unwrap();
            assert!(
                message.contains("\"bogus\"") && message.contains("plugin_update"),
                "{message}"
            );
        }
    }
    let resp = app(s.clone())
        .oneshot(
            Request::get("/v1/stream")
                .header("last-event-id", "seven")
                .body(Body::empty())
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::BAD_REQUEST);
}

#[tokio::test]
async fn a_backlog_longer_than_the_ring_is_read_in_ring_sized_steps() {
    let w = World::new();
    let s = w.boot();
    let (feed, _) = feed_on(&w.store, small());
    feed.load().await.unwrap();
    let mut sub = feed
        .subscribe(Some(0), Filter::default())
        .await
        .unwrap()
        .unwrap();
    put_templates(&s, 0, 5).await;
    // Pages of 3 until at least a ring (4) is read: 6, then the other 4.
    assert_eq!(feed.catch_up().await.unwrap(), 6);
    assert_eq!(feed.snapshot().head, 6);
    assert_eq!(feed.catch_up().await.unwrap(), 4);
    assert_eq!(feed.catch_up().await.unwrap(), 0);
    assert_eq!(seqs(&drain(&mut sub).await), (1..=10).collect::<Vec<_>>());
}
