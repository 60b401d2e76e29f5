//! Service behaviour on the fakes, with paused time: the stream consumer,
//! the outbox relay, refresh and the plugin sweep's writes. (Lifecycle,
//! reconciler, rollouts and the watcher are cut at every commit in
//! `crash_matrix.rs`.)

mod world;

use std::sync::Arc;
use std::time::Duration;

use berth::fakes::engine::Op;
use berth::fakes::FakeBus;
use berth::ports::{Bus, EngineError};
use berth::services::jobs::JobConsumer;
use berth::services::lifecycle::StartRequest;
use berth::services::outbox::OutboxRelay;
use berth::streams::{JOB_RESULTS, START_JOBS, STOP_JOBS};
use berth_core::status::RuntimeStatus;
use serde_json::json;
use world::*;

fn bus(w: &World) -> Arc<FakeBus> {
    Arc::new(FakeBus::new(w.clock.clone()))
}

fn fields(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

async fn app(w: &World, publish: bool) -> Arc<berth::services::Services> {
    w.publish("stable", &digest(1));
    let s = w.boot_with(publish);
    put_template(
        &s,
        "app",
        json!({"image": REPO, "tag": "stable", "stop_grace": "1s"}),
    )
    .await;
    s
}

/// Reads what the consumer would read and runs it, once.
async fn consume_once(consumer: &JobConsumer, bus: &FakeBus) {
    let entries = bus
        .read_group(
            &[START_JOBS, STOP_JOBS],
            &consumer.group,
            &consumer.consumer,
            100,
            Duration::from_millis(10),
        )
        .await
        .unwrap();
    for e in &entries {
        consumer.process(e).await.unwrap();
    }
}

#[tokio::test(start_paused = true)]
async fn a_start_job_is_answered_once_even_when_delivered_twice() {
    let w = World::new();
    let s = app(&w, true).await;
    let bus = bus(&w);
    let consumer = JobConsumer::new(
        s.ctx.clone(),
        bus.clone(),
        s.runtimes.clone(),
        Duration::from_secs(30),
    );
    bus.ensure_group(START_JOBS, &consumer.group).await.unwrap();
    bus.ensure_group(STOP_JOBS, &consumer.group).await.unwrap();
    let job = fields(&[
        ("job_id", "j-1"),
        ("runtime_id", "w-1"),
        ("template", "app"),
    ]);
    bus.publish(START_JOBS, &job).await.unwrap();
    bus.publish(START_JOBS, &job).await.unwrap(); // a producer's retry
    consume_once(&consumer, &bus).await;

    let rec = s.runtimes.get("w-1").await.unwrap();
    assert_eq!(rec.status, RuntimeStatus::Running);
    let result = s.ctx.store.get_job_result("j-1").await.unwrap().unwrap();
    assert!(result.success, "{result:?}");
    // Both entries acknowledged; one result in the outbox for j-1.
    assert!(bus.pending(START_JOBS, &consumer.group).is_empty());
    let relay = OutboxRelay::new(s.ctx.clone(), bus.clone());
    relay.relay_once().await.unwrap();
    let results = bus.entries(JOB_RESULTS);
    assert_eq!(results.len(), 1, "{results:?}");
    assert_eq!(results[0].field("job_id"), Some("j-1"));
    assert_eq!(results[0].field("outcome"), Some("success"));
    assert_eq!(
        w.engine.calls(berth::fakes::engine::Op::CreateContainer),
        1,
        "the duplicate did not start a second container"
    );
}

#[tokio::test(start_paused = true)]
async fn a_malformed_job_gets_a_failure_result_and_does_not_block() {
    let w = World::new();
    let s = app(&w, true).await;
    let bus = bus(&w);
    let consumer = JobConsumer::new(
        s.ctx.clone(),
        bus.clone(),
        s.runtimes.clone(),
        Duration::from_secs(30),
    );
    bus.ensure_group(START_JOBS, &consumer.group).await.unwrap();
    bus.ensure_group(STOP_JOBS, &consumer.group).await.unwrap();
    bus.publish(START_JOBS, &fields(&[("runtime_id", "Bad Id!")]))
        .await
        .unwrap();
    bus.publish(
        START_JOBS,
        &fields(&[
            ("job_id", "j-2"),
            ("runtime_id", "w-2"),
            ("template", "app"),
        ]),
    )
    .await
    .unwrap();
    consume_once(&consumer, &bus).await;
    OutboxRelay::new(s.ctx.clone(), bus.clone())
        .relay_once()
        .await
        .unwrap();
    let results = bus.entries(JOB_RESULTS);
    assert_eq!(results.len(), 2, "{results:?}");
    let bad = &results[0];
    assert!(
        bad.field("job_id").unwrap().starts_with("entry:"),
        "{bad:?}"
    );
    assert_eq!(bad.field("outcome"), Some("failure"));
    assert_eq!(bad.field("error_code"), Some("invalid_request"));
    assert_eq!(results[1].field("job_id"), Some("j-2"));
    assert_eq!(results[1].field("outcome"), Some("success"));
}

/// The Docker events stream breaks (the daemon went away and came back):
/// the listener opens it again, and `berth_docker_events_reconnects_total`
/// counts each attempt.
#[tokio::test(start_paused = true)]
async fn a_broken_events_stream_is_reopened_and_counted() {
    let w = World::new();
    let s = app(&w, false).await;
    let cancel = tokio_util::sync::CancellationToken::new();
    let listener = tokio::spawn(s.events.clone().run(cancel.clone()));
    let connected = || {
        s.events
            .connected
            .load(std::sync::atomic::Ordering::Relaxed)
    };
    tokio::time::sleep(Duration::from_millis(10)).await;
    assert!(connected());
    assert_eq!(s.ctx.metrics.docker_events_reconnects.get(), 0);
    // Down for a while: every reopening fails at once and backs off
    // (100 ms, 200 ms, 400 ms, …).
    w.engine.set_unavailable(true);
    tokio::time::sleep(Duration::from_millis(1_000)).await;
    let while_down = s.ctx.metrics.docker_events_reconnects.get();
    assert!(
        (2..=4).contains(&while_down),
        "{while_down} attempts in 1 s"
    );
    w.engine.set_unavailable(false);
    tokio::time::sleep(Duration::from_secs(6)).await;
    assert!(connected());
    let after = s.ctx.metrics.docker_events_reconnects.get();
    assert_eq!(after, while_down + 1, "one more, the one that held");
    let text = s.ctx.metrics.encode_text();
    assert!(
        text.contains(&format!("berth_docker_events_reconnects_total {after}\n")),
        "{text}"
    );
    cancel.cancel();
    listener.await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn the_outbox_waits_while_the_bus_is_down_and_keeps_commit_order() {
    let w = World::new();
    let s = app(&w, true).await;
    let bus = bus(&w);
    let relay = OutboxRelay::new(s.ctx.clone(), bus.clone());
    bus.set_unavailable(true);
    // Three failed pulls: each failure's intents are written to the outbox
    // with the failed record, in that order.
    for i in 0..3 {
        w.engine.fail_next(
            Op::PullImage,
            EngineError::PullFailed {
                image: REPO.into(),
                message: "registry down".into(),
            },
        );
        let started = s
            .runtimes
            .start(
                StartRequest {
                    id: format!("p-{i}"),
                    template: "app".into(),
                    env: Default::default(),
                },
                &caller(),
            )
            .await;
        assert!(started.is_err());
    }
    let pending = s.ctx.store.outbox_pending(100).await.unwrap();
    assert!(pending.len() >= 3, "{pending:?}");
    assert!(relay.relay_once().await.is_err());
    assert_eq!(
        s.ctx.store.outbox_pending(100).await.unwrap().len(),
        pending.len(),
        "nothing is lost while the bus is down"
    );
    assert_eq!(
        s.ctx.metrics.outbox_backlog.get(),
        pending.len() as i64,
        "the backlog gauge counts what waits"
    );
    bus.set_unavailable(false);
    relay.relay_once().await.unwrap();
    assert!(s.ctx.store.outbox_pending(100).await.unwrap().is_empty());
    assert_eq!(s.ctx.metrics.outbox_backlog.get(), 0);
    let intents = bus.entries("notification:intents");
    assert_eq!(intents.len(), pending.len(), "{intents:?}");
    let runtimes: Vec<String> = intents
        .iter()
        .filter(|e| e.field("notification_type") == Some("runtime.image_pull_failed"))
        .map(|e| {
            let payload: serde_json::Value =
                serde_json::from_str(e.field("payload").unwrap()).unwrap();
            payload["runtime_id"].as_str().unwrap().to_string()
        })
        .collect();
    assert_eq!(runtimes, ["p-0", "p-1", "p-2"], "commit order kept");
}

#[tokio::test(start_paused = true)]
async fn refresh_recreates_runtimes_on_another_digest() {
    let w = World::new();
    let s = app(&w, false).await;
    start_runtimes(&s, "app").await;
    w.publish("stable", &digest(2));
    let report = s
        .refresh
        .refresh(Some(&["app".to_string()]), true, &caller())
        .await
        .unwrap();
    assert_eq!(report.recreated.len(), RUNTIMES, "{report:?}");
    for rec in s
        .ctx
        .store
        .list_runtimes(&Default::default())
        .await
        .unwrap()
    {
        assert_eq!(
            rec.image_digest.as_deref(),
            Some(digest(2).as_str()),
            "{}",
            rec.id
        );
        assert_eq!(rec.status, RuntimeStatus::Running);
    }
    assert_one_container_each(&w, &s, "refresh").await;
}

/// A sweep writes once for every plugin it resolved (their `resolved_at_ms`,
/// a failure's `last_error` cleared), plus one commit per update it queues.
#[tokio::test(start_paused = true)]
async fn a_sweep_stamps_resolved_plugins_in_one_write_and_commits_each_update() {
    use berth::ports::store::{Change, PluginChange, PluginRecord, PluginUpdateFilter};
    use berth::ports::{Clock, EventStore, PluginStore, Store};
    use berth_core::plugin::UpdateStatus;

    let w = World::new();
    let s = w.boot();
    let url = "https://git.example/acme/skills";
    let (a, b) = ("a".repeat(40), "b".repeat(40));
    w.git.set_ref(url, "refs/heads/main", &a);
    let runtimes = ["w-1", "w-2", "w-3"];
    for rt in runtimes {
        let p = PluginRecord {
            runtime_id: rt.to_string(),
            name: "skills".to_string(),
            source: format!("git+{url}"),
            track: "branch:main".to_string(),
            installed_sha: Some(a.clone()),
            installed_at_ms: Some(1),
            resolved_at_ms: Some(1),
            last_error: None,
        };
        w.store
            .commit(&Change {
                plugin: Some(PluginChange::Put(&p)),
                ..Change::default()
            })
            .await
            .unwrap();
    }
    let plugins = || async { w.store.list_plugins(None).await.unwrap() };

    w.git.set_unavailable(url, true);
    let report = s.plugins.sweep().await.unwrap();
    assert_eq!(report.failed.len(), 1, "{report:?}");
    assert!(plugins().await.iter().all(|p| p.last_error.is_some()));

    // Reachable again, nothing moved: one write clears every failure.
    w.git.set_unavailable(url, false);
    w.clock.advance(Duration::from_secs(60));
    let before = w.store.writes();
    let report = s.plugins.sweep().await.unwrap();
    assert_eq!((report.resolved, report.queued), (1, 0), "{report:?}");
    assert_eq!(w.store.writes() - before, 1);
    for p in plugins().await {
        assert_eq!(p.last_error, None, "{p:?}");
        assert_eq!(p.resolved_at_ms, Some(w.clock.now_ms()), "{p:?}");
        assert_eq!(p.installed_sha.as_deref(), Some(a.as_str()));
    }

    // Upstream moved: one commit per queued update (with its intent), then
    // the one stamp.
    w.git.set_ref(url, "refs/heads/main", &b);
    let before = w.store.writes();
    let report = s.plugins.sweep().await.unwrap();
    assert_eq!(report.queued, runtimes.len(), "{report:?}");
    assert_eq!(w.store.writes() - before, runtimes.len() as u64 + 1);
    let pending = w
        .store
        .list_plugin_updates(&PluginUpdateFilter {
            status: Some(UpdateStatus::Pending),
            limit: 100,
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(pending.len(), runtimes.len());
    assert!(pending
        .iter()
        .all(|u| u.to_sha == b && u.from_sha.as_deref() == Some(a.as_str())));
    let drift = w
        .store
        .list_notifications(100)
        .await
        .unwrap()
        .into_iter()
        .filter(|n| n.notification_type == "plugin.drift_detected")
        .count();
    assert_eq!(drift, runtimes.len());

    // Nothing new: the stamp only.
    let before = w.store.writes();
    let report = s.plugins.sweep().await.unwrap();
    assert_eq!(report.queued, 0, "{report:?}");
    assert_eq!(w.store.writes() - before, 1);
}
