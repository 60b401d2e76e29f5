//! The crash matrix: every multi-step flow (ARCHITECTURE.md, "Multi-step
//! flows") is cut at each of its commits on the fakes. The fake store
//! "dies" at commit k — that commit and everything after it is lost, and the
//! engine goes down with it — then a fresh set of services on the same
//! state runs boot recovery and its loops, and the test checks that berth
//! converged: pin, records, containers, rollout state, no duplicated
//! intents. Time is paused: health gates, stop grace and backoff take no
//! wall time.

use crate::world;

use std::collections::BTreeMap;
use std::sync::Arc;

use berth::fakes::probe::Answer;
use berth::ports::Engine;
use berth::services::lifecycle::StartRequest;
use berth::services::Services;
use berth_core::operation::{OperationKind, Outcome};
use berth_core::rollout::{RolloutState, TargetState};
use berth_core::status::RuntimeStatus;
use serde_json::json;
use world::*;

/// How many successful writes `flow` makes on a fresh world after `setup`.
async fn count_writes<S, F>(setup: S, flow: F) -> u64
where
    S: AsyncFn(&World) -> Arc<Services>,
    F: AsyncFn(&World, &Arc<Services>),
{
    let w = World::new();
    let s = setup(&w).await;
    let before = w.store.writes();
    flow(&w, &s).await;
    s.rollouts.settle().await;
    w.store.writes() - before
}

// --- watcher track: tick → pull → one commit → rollout ----------------------

async fn tracked_fleet(w: &World) -> Arc<Services> {
    w.publish("stable", &digest(1));
    let s = w.boot();
    put_template(&s, "trk", tracked(1)).await;
    start_runtimes(&s, "trk").await;
    let seeded = s.watcher.tick().await.unwrap();
    assert_eq!(seeded.seeded, vec!["trk".to_string()]);
    w.publish("stable", &digest(2));
    s
}

async fn tick(_: &World, s: &Arc<Services>) {
    let _ = s.watcher.tick().await;
}

#[tokio::test(start_paused = true)]
async fn watcher_track_converges_after_a_crash_at_every_commit() {
    let n = count_writes(tracked_fleet, tick).await;
    // One commit for the decision, then per runtime: recreate in progress,
    // recreate done, target; then the rollout completes.
    assert_eq!(n, 1 + 3 * RUNTIMES as u64 + 1, "the flow's commits");
    for k in 1..=n {
        let case = format!("crash at commit {k} of {n}");
        let w = World::new();
        let s = tracked_fleet(&w).await;
        w.store.crash_at_commit(k);
        tick(&w, &s).await;
        let s = w.restart(s).await;

        let pin = s.ctx.store.get_pin("trk").await.unwrap().expect("pinned");
        assert_eq!(pin.digest, digest(2), "{case}");
        for rec in s
            .ctx
            .store
            .list_runtimes(&Default::default())
            .await
            .unwrap()
        {
            assert_eq!(rec.status, RuntimeStatus::Running, "{case}: {}", rec.id);
            assert_eq!(
                rec.image_digest.as_deref(),
                Some(digest(2).as_str()),
                "{case}: {}",
                rec.id
            );
        }
        assert_one_container_each(&w, &s, &case).await;
        let rollouts = s.ctx.store.list_rollouts(Some("trk"), 10).await.unwrap();
        assert_eq!(
            rollouts.len(),
            1,
            "{case}: one rollout, never two: {rollouts:?}"
        );
        assert_eq!(rollouts[0].state, RolloutState::Completed, "{case}");
        let history = s.ctx.store.pin_history("trk", 10).await.unwrap();
        let promotes = history
            .iter()
            .filter(|h| h.digest.as_ref() == Some(&digest(2)))
            .count();
        assert_eq!(promotes, 1, "{case}: promoted once: {history:?}");
        let obs = s.ctx.store.get_observation("trk").await.unwrap().unwrap();
        assert_eq!(obs.digest, digest(2).as_str(), "{case}");
    }
}

// --- rollout halt: a bad release halts, reverts the pin, rejects ---------

async fn bad_release(w: &World) -> Arc<Services> {
    let s = tracked_fleet(w).await;
    // Containers of the new digest never answer their health path.
    w.probe.script("http://", Answer::Unhealthy);
    s
}

#[tokio::test(start_paused = true)]
async fn rollout_halt_converges_after_a_crash_at_every_commit() {
    let n = count_writes(bad_release, tick).await;
    // decision; recreate in progress, recreate failed (restored), target;
    // the halt.
    assert_eq!(n, 5, "the flow's commits");
    for k in 1..=n {
        let case = format!("crash at commit {k} of {n}");
        let w = World::new();
        let s = bad_release(&w).await;
        w.store.crash_at_commit(k);
        tick(&w, &s).await;
        let s = w.restart(s).await;

        // Whatever the cut, berth ends on the old digest with the new one
        // refused, or (cut before the decision) re-decides and halts again.
        let pin = s.ctx.store.get_pin("trk").await.unwrap().expect("pinned");
        assert_eq!(pin.digest, digest(1), "{case}: the pin is back");
        assert!(
            s.ctx
                .store
                .is_rejected("trk", digest(2).as_str())
                .await
                .unwrap(),
            "{case}: the bad digest is refused"
        );
        for rec in s
            .ctx
            .store
            .list_runtimes(&Default::default())
            .await
            .unwrap()
        {
            assert_eq!(rec.status, RuntimeStatus::Running, "{case}: {}", rec.id);
            assert_eq!(
                rec.image_digest.as_deref(),
                Some(digest(1).as_str()),
                "{case}: {}",
                rec.id
            );
        }
        assert_one_container_each(&w, &s, &case).await;
        let rollouts = s.ctx.store.list_rollouts(Some("trk"), 10).await.unwrap();
        assert_eq!(rollouts.len(), 1, "{case}: {rollouts:?}");
        assert_eq!(rollouts[0].state, RolloutState::Halted, "{case}");
        let halted = s
            .ctx
            .store
            .list_notifications(100)
            .await
            .unwrap()
            .into_iter()
            .filter(|n| n.notification_type == "rollout.halted")
            .count();
        assert_eq!(halted, 1, "{case}: rollout.halted raised once");
    }
}

// --- rollout resume after a halt -----------------------------------------

async fn halted(w: &World) -> Arc<Services> {
    let s = bad_release(w).await;
    s.watcher.tick().await.unwrap();
    s.rollouts.settle().await;
    // The operator fixed the release's health; resuming retries it.
    w.probe.script("http://", Answer::Healthy);
    s
}

async fn resume(_: &World, s: &Arc<Services>) {
    let id = s.ctx.store.list_rollouts(Some("trk"), 1).await.unwrap()[0]
        .id
        .clone();
    let _ = s.rollouts.set_state(&id, RolloutState::Running).await;
}

#[tokio::test(start_paused = true)]
async fn rollout_resume_is_one_commit_then_a_resumable_rollout() {
    let n = count_writes(halted, resume).await;
    assert_eq!(n, 1 + 3 * RUNTIMES as u64 + 1, "the flow's commits");
    for k in 1..=n {
        let case = format!("crash at commit {k} of {n}");
        let w = World::new();
        let s = halted(&w).await;
        w.store.crash_at_commit(k);
        resume(&w, &s).await;
        let s = w.restart(s).await;
        let rollout = s
            .ctx
            .store
            .list_rollouts(Some("trk"), 1)
            .await
            .unwrap()
            .remove(0);
        let pin = s.ctx.store.get_pin("trk").await.unwrap().unwrap();
        let rejected = s
            .ctx
            .store
            .is_rejected("trk", digest(2).as_str())
            .await
            .unwrap();
        if k == 1 {
            // The resume itself was lost: still halted, nothing half-done.
            assert_eq!(rollout.state, RolloutState::Halted, "{case}");
            assert_eq!(pin.digest, digest(1), "{case}");
            assert!(rejected, "{case}");
            continue;
        }
        assert_eq!(rollout.state, RolloutState::Completed, "{case}");
        assert_eq!(pin.digest, digest(2), "{case}");
        assert!(!rejected, "{case}: the rejection is lifted");
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
                "{case}: {}",
                rec.id
            );
        }
        let (_, targets) = s.ctx.store.get_rollout(&rollout.id).await.unwrap().unwrap();
        assert!(
            targets
                .iter()
                .all(|t| t.state != TargetState::Failed && t.state != TargetState::Pending),
            "{case}: {targets:?}"
        );
        assert_one_container_each(&w, &s, &case).await;
    }
}

// --- pin promote: pin, history, operation and lifted rejection at once ---

#[tokio::test(start_paused = true)]
async fn pin_promote_is_one_commit() {
    let w = World::new();
    let s = halted(&w).await;
    assert!(s
        .ctx
        .store
        .is_rejected("trk", digest(2).as_str())
        .await
        .unwrap());
    let before = w.store.writes();
    w.store.crash_at_commit(1);
    let lost = s
        .pins
        .promote("trk", digest(2).as_str(), Some("by hand"), &caller())
        .await;
    assert!(lost.is_err());
    let s = w.restart(s).await;
    // Nothing of the promote landed...
    assert_eq!(
        s.ctx.store.get_pin("trk").await.unwrap().unwrap().digest,
        digest(1)
    );
    assert!(s
        .ctx
        .store
        .is_rejected("trk", digest(2).as_str())
        .await
        .unwrap());
    let promotes = |ops: &[berth_core::operation::Operation]| {
        ops.iter()
            .filter(|o| {
                o.kind == OperationKind::PinPromote
                    && o.details.get("digest").map(String::as_str) == Some(digest(2).as_str())
            })
            .count()
    };
    let ops = s
        .ctx
        .store
        .list_operations(&berth::ports::OperationFilter {
            runtime_id: None,
            kind: None,
            limit: 1000,
        })
        .await
        .unwrap();
    let promotes_before = promotes(&ops);
    // ...and a promote that lands writes all of it in one commit.
    let at = w.store.writes();
    s.pins
        .promote("trk", digest(2).as_str(), Some("by hand"), &caller())
        .await
        .unwrap();
    assert_eq!(w.store.writes() - at, 1);
    assert!(before <= at);
    assert_eq!(
        s.ctx.store.get_pin("trk").await.unwrap().unwrap().digest,
        digest(2)
    );
    assert!(!s
        .ctx
        .store
        .is_rejected("trk", digest(2).as_str())
        .await
        .unwrap());
    let ops = s
        .ctx
        .store
        .list_operations(&berth::ports::OperationFilter {
            runtime_id: None,
            kind: None,
            limit: 1000,
        })
        .await
        .unwrap();
    assert_eq!(promotes(&ops), promotes_before + 1);
}

// --- reconciler: an exit is one commit with its operation row --------------

async fn plain_fleet(w: &World, on_disappear: &str, restart: &str) -> Arc<Services> {
    w.publish("stable", &digest(1));
    let s = w.boot();
    put_template(
        &s,
        "app",
        json!({"image": REPO, "tag": "stable", "stop_grace": "1s",
               "on_disappear": on_disappear, "restart": restart}),
    )
    .await;
    start_runtimes(&s, "app").await;
    s
}

#[tokio::test(start_paused = true)]
async fn an_exit_is_one_commit_with_its_operation_row() {
    let w = World::new();
    let s = plain_fleet(&w, "dispose", "never").await;
    let cid = s.runtimes.get("r-0").await.unwrap().container_id.unwrap();
    w.engine.kill(&cid, 3);
    let before = w.store.writes();
    let report = s.reconciler.run_once().await.unwrap();
    assert_eq!(report.exited, vec!["r-0".to_string()]);
    assert_eq!(
        w.store.writes() - before,
        1,
        "record, operation and event: one commit"
    );
    let rec = s.runtimes.get("r-0").await.unwrap();
    assert_eq!(rec.status, RuntimeStatus::Exited);
    let ops = s
        .ctx
        .store
        .list_operations(&berth::ports::OperationFilter {
            runtime_id: Some("r-0".into()),
            kind: Some(OperationKind::ReconcileExited),
            limit: 10,
        })
        .await
        .unwrap();
    assert_eq!(ops.len(), 1);
    assert_eq!(ops[0].outcome, Outcome::Success);
    assert_eq!(
        ops[0].details.get("exit_code").map(String::as_str),
        Some("3")
    );

    // Lost with the crash: neither the record change nor its row is there,
    // and the next pass (after a restart) makes it.
    let w = World::new();
    let s = plain_fleet(&w, "dispose", "never").await;
    let cid = s.runtimes.get("r-1").await.unwrap().container_id.unwrap();
    w.engine.kill(&cid, 3);
    w.store.crash_at_commit(1);
    let _ = s.reconciler.run_once().await;
    assert!(w.store.crashed(), "the exit's commit was the one lost");
    let s = w.restart(s).await;
    assert_eq!(
        s.runtimes.get("r-1").await.unwrap().status,
        RuntimeStatus::Exited
    );
    let ops = s
        .ctx
        .store
        .list_operations(&berth::ports::OperationFilter {
            runtime_id: Some("r-1".into()),
            kind: Some(OperationKind::ReconcileExited),
            limit: 10,
        })
        .await
        .unwrap();
    assert_eq!(ops.len(), 1, "exactly one row for one exit");
}

// --- reconciler: on_disappear = recreate --------------------------------

async fn vanished(w: &World) -> Arc<Services> {
    let s = plain_fleet(w, "recreate", "never").await;
    let cid = s.runtimes.get("r-0").await.unwrap().container_id.unwrap();
    w.engine.remove_behind_back(&cid);
    s
}

async fn reconcile(_: &World, s: &Arc<Services>) {
    let _ = s.reconciler.run_once().await;
}

#[tokio::test(start_paused = true)]
async fn reconcile_recreate_converges_after_a_crash_at_every_commit() {
    let n = count_writes(vanished, reconcile).await;
    assert_eq!(
        n, 3,
        "intent with the disappearance, the bring-up's start, the outcome"
    );
    for k in 1..=n {
        let case = format!("crash at commit {k} of {n}");
        let w = World::new();
        let s = vanished(&w).await;
        w.store.crash_at_commit(k);
        reconcile(&w, &s).await;
        let s = w.restart(s).await;
        let rec = s.runtimes.get("r-0").await.unwrap();
        assert_eq!(rec.status, RuntimeStatus::Running, "{case}: {rec:?}");
        assert_one_container_each(&w, &s, &case).await;
        let disappeared = s
            .ctx
            .store
            .list_health_events(&berth::ports::store::EventFilter {
                runtime_id: Some("r-0".into()),
                event_type: Some(berth_core::event::HealthEventType::ContainerDisappeared),
                limit: 10,
            })
            .await
            .unwrap();
        assert_eq!(
            disappeared.len(),
            1,
            "{case}: reported once: {disappeared:?}"
        );
    }
}

// --- start: intent, create + start, outcome --------------------------------

async fn empty_fleet(w: &World) -> Arc<Services> {
    w.publish("stable", &digest(1));
    let s = w.boot();
    put_template(
        &s,
        "app",
        json!({"image": REPO, "tag": "stable", "stop_grace": "1s"}),
    )
    .await;
    s
}

async fn start_one(_: &World, s: &Arc<Services>) {
    let _ = s
        .runtimes
        .start(
            StartRequest {
                id: "solo".into(),
                template: "app".into(),
                env: BTreeMap::new(),
            },
            &caller(),
        )
        .await;
}

#[tokio::test(start_paused = true)]
async fn start_leaves_no_unrecorded_container_after_a_crash_at_every_commit() {
    let n = count_writes(empty_fleet, start_one).await;
    assert_eq!(n, 2, "intent, then the outcome");
    for k in 1..=n {
        let case = format!("crash at commit {k} of {n}");
        let w = World::new();
        let s = empty_fleet(&w).await;
        w.store.crash_at_commit(k);
        start_one(&w, &s).await;
        let s = w.restart(s).await;
        let containers = w.engine.list_containers().await.unwrap();
        match s.ctx.store.get_runtime("solo").await.unwrap() {
            // Lost before the intent: nothing was started.
            None => assert!(containers.is_empty(), "{case}: {containers:?}"),
            Some(rec) => {
                let in_progress = s
                    .ctx
                    .store
                    .list_operations(&berth::ports::OperationFilter {
                        runtime_id: Some("solo".into()),
                        kind: None,
                        limit: 10,
                    })
                    .await
                    .unwrap()
                    .into_iter()
                    .filter(|o| o.outcome == Outcome::InProgress)
                    .count();
                assert_eq!(in_progress, 0, "{case}: no operation left in progress");
                assert!(!rec.status.is_transitional(), "{case}: settled: {rec:?}");
                // Every container is the recorded one.
                for c in &containers {
                    assert_eq!(Some(&c.id), rec.container_id.as_ref(), "{case}");
                }
                if rec.status == RuntimeStatus::Running {
                    assert_eq!(containers.len(), 1, "{case}");
                }
            }
        }
    }
}
