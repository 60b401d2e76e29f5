//! Service behaviour on the fakes, with paused time: the stream consumer,
//! the outbox relay, refresh and the plugin sweep's writes. (Lifecycle,
//! reconciler, rollouts and the watcher are cut at every commit in
//! `crash_matrix.rs`.)

use crate::world;

use std::sync::Arc;
use std::time::Duration;

use berth::fakes::engine::Op;
use berth::fakes::FakeBus;
use berth::ports::store::{Change, OutboxMessage};
use berth::ports::{Bus, EngineError};
use berth::services::jobs::JobConsumer;
use berth::services::lifecycle::StartRequest;
use berth::services::outbox::OutboxRelay;
use berth::streams::{HEALTH_EVENTS, JOB_RESULTS, NOTIFICATION_INTENTS, START_JOBS, STOP_JOBS};
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

const OUT_STREAMS: [&str; 3] = [JOB_RESULTS, HEALTH_EVENTS, NOTIFICATION_INTENTS];

/// Rows `from..from + n` of the outbox, one change each, spread over the
/// three output streams and two runtimes as changes write them.
async fn write_outbox(s: &berth::services::Services, from: usize, n: usize) {
    for i in from..from + n {
        let m = [OutboxMessage {
            stream: OUT_STREAMS[i % 3].to_string(),
            partition_key: format!("r{}", i % 2),
            fields: fields(&[("n", &i.to_string())]),
            created_at_ms: 0,
        }];
        s.ctx
            .store
            .commit(&Change {
                outbox: &m,
                ..Change::default()
            })
            .await
            .unwrap();
    }
}

/// Every entry on the output streams as (outbox_seq, n), in seq order;
/// with `in_order`, after checking each stream holds its entries in seq
/// order.
fn published(bus: &FakeBus, in_order: bool) -> Vec<(i64, String)> {
    let mut all = Vec::new();
    for stream in OUT_STREAMS {
        let seqs: Vec<(i64, String)> = bus
            .entries(stream)
            .iter()
            .map(|e| {
                let seq = e
                    .field("outbox_seq")
                    .expect("every message carries outbox_seq");
                (seq.parse().unwrap(), e.field("n").unwrap().to_string())
            })
            .collect();
        assert!(
            !in_order || seqs.windows(2).all(|w| w[0].0 < w[1].0),
            "{stream}: not in outbox order: {seqs:?}"
        );
        all.extend(seqs);
    }
    all.sort();
    all
}

/// Where one relay is cut.
#[derive(Debug, Clone, Copy)]
enum RelayCut {
    /// A new process cannot read the mark (Redis fails at once).
    MarkRead,
    /// The batch's append fails before Redis applied anything.
    BeforeAppend,
    /// Redis applied the append and the reply was lost.
    ReplyLost,
    /// The process dies after the append, before the rows are deleted.
    BeforeDelete,
}

/// The relay cut at each of its steps, then a new process relays what is
/// left: every outbox row is on its stream exactly once, in seq order.
#[tokio::test(start_paused = true)]
async fn a_relay_cut_at_every_step_publishes_each_row_exactly_once() {
    for cut in [
        RelayCut::MarkRead,
        RelayCut::BeforeAppend,
        RelayCut::ReplyLost,
        RelayCut::BeforeDelete,
    ] {
        let w = World::new();
        let s = app(&w, true).await;
        let bus = bus(&w);
        // A relay that has published once (it knows its mark's key).
        write_outbox(&s, 0, 1).await;
        let warm = OutboxRelay::new(s.ctx.clone(), bus.clone());
        warm.relay_once().await.unwrap();
        let before = published(&bus, true).len();
        write_outbox(&s, 1, 5).await;
        let cut_relay = match cut {
            RelayCut::MarkRead => {
                bus.fail_next_appends(1);
                OutboxRelay::new(s.ctx.clone(), bus.clone())
            }
            RelayCut::BeforeAppend => {
                bus.fail_next_appends(1);
                warm
            }
            RelayCut::ReplyLost => {
                bus.lose_next_append_replies(1);
                warm
            }
            RelayCut::BeforeDelete => {
                w.store.crash_at_commit(1);
                warm
            }
        };
        assert!(
            cut_relay.relay_once().await.is_err(),
            "{cut:?}: the cut relay fails"
        );
        drop(cut_relay);
        // The next process: the database as committed, the same Redis.
        w.store.revive();
        let s = w.boot_with(true);
        write_outbox(&s, 6, 3).await;
        let relay = OutboxRelay::new(s.ctx.clone(), bus.clone());
        for _ in 0..3 {
            relay.relay_once().await.unwrap();
        }
        assert!(
            s.ctx.store.outbox_pending(100).await.unwrap().is_empty(),
            "{cut:?}: the outbox is empty"
        );
        let all = published(&bus, true);
        let seqs: Vec<i64> = all.iter().map(|(seq, _)| *seq).collect();
        let mut unique = seqs.clone();
        unique.dedup();
        assert_eq!(seqs, unique, "{cut:?}: a row was published twice");
        let ns: Vec<&str> = all[before..].iter().map(|(_, n)| n.as_str()).collect();
        assert_eq!(
            ns,
            ["1", "2", "3", "4", "5", "6", "7", "8"],
            "{cut:?}: every row, once"
        );
        assert_eq!(
            s.ctx.metrics.outbox_published.get() as usize,
            ns.len() - usize::from(matches!(cut, RelayCut::ReplyLost | RelayCut::BeforeDelete)) * 5,
            "{cut:?}: the second process counts what it appended"
        );
    }
}

/// A database restored from a backup is behind the mark Redis keeps for
/// it: its next seqs are at or below the mark. The relay gives the outbox
/// a new identity rather than skip (and delete) them.
#[tokio::test(start_paused = true)]
async fn a_database_behind_its_mark_takes_a_new_identity_and_loses_nothing() {
    let before = World::new();
    let s = before.boot_with(true);
    let bus = bus(&before);
    write_outbox(&s, 0, 5).await;
    OutboxRelay::new(s.ctx.clone(), bus.clone())
        .relay_once()
        .await
        .unwrap();
    assert_eq!(published(&bus, true).len(), 5);
    let old = s.ctx.store.outbox_identity().await.unwrap().id;

    // The backup was taken before any of the five: seqs start again at 1.
    let restored = World::new();
    restored.store.set_outbox_identity(&old);
    let s = restored.boot_with(true);
    write_outbox(&s, 10, 2).await;
    OutboxRelay::new(s.ctx.clone(), bus.clone())
        .relay_once()
        .await
        .unwrap();
    let all = published(&bus, false);
    let ns: Vec<&str> = all.iter().map(|(_, n)| n.as_str()).collect();
    assert_eq!(
        ns,
        ["0", "10", "1", "11", "2", "3", "4"],
        "seqs 1, 1, 2, 2, 3, 4, 5"
    );
    let new = s.ctx.store.outbox_identity().await.unwrap().id;
    assert_ne!(new, old);
    assert_eq!(
        bus.mark(&berth::services::outbox::mark_key_for(OWNER, &new)),
        Some(2)
    );
    assert!(s.ctx.store.outbox_pending(10).await.unwrap().is_empty());
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
