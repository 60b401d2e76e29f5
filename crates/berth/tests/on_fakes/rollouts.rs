//! Rollouts on the fakes, with paused time: steering (pause, resume,
//! abort, and the 409 on a refused transition), `max_unavailable`, and a
//! rollout with nothing to do. The health gate is Docker's "still running
//! after a second", so every recreate waits in paused time.

use crate::world;

use std::collections::BTreeSet;
use std::sync::Arc;

use berth::fakes::engine::Op;
use berth::ports::engine::EngineEventKind;
use berth::ports::Engine;
use berth::services::Services;
use berth_core::image::Digest;
use berth_core::operation::Source;
use berth_core::rollout::{RolloutState, TargetState};
use berth_core::ErrorCode;
use futures_util::{FutureExt, StreamExt};
use serde_json::json;
use world::*;

/// `n` runtimes of `app` on digest 1, and the pin moved to digest 2 (a
/// recreate resolves its image through the pin).
async fn fleet(w: &World, n: usize, rollout: serde_json::Value) -> Arc<Services> {
    w.publish("stable", &digest(1));
    let s = w.boot();
    put_template(
        &s,
        "app",
        json!({"image": REPO, "tag": "stable", "stop_grace": "1s", "rollout": rollout}),
    )
    .await;
    for i in 0..n {
        s.runtimes
            .start(start_request(&format!("r-{i}"), "app"), &caller())
            .await
            .unwrap();
    }
    w.registry.add_digest(&repo(), &digest(2));
    w.engine
        .add_image(&format!("{REPO}:next"), digest(2).as_str());
    s.pins
        .promote("app", digest(2).as_str(), None, &caller())
        .await
        .unwrap();
    s
}

async fn roll_to(s: &Services, to: &Digest) -> String {
    s.rollouts
        .start(
            "app",
            Some(digest(1).as_str()),
            to.as_str(),
            false,
            Source::Api,
        )
        .await
        .unwrap()
        .id
}

/// Lets the runner go until its first recreate created a container (and
/// waits in its health gate).
async fn until_a_recreate_is_under_way(w: &World) {
    let before = w.engine.calls(Op::CreateContainer);
    for _ in 0..10_000 {
        if w.engine.calls(Op::CreateContainer) > before {
            return;
        }
        tokio::task::yield_now().await;
    }
    panic!("no recreate began");
}

async fn states(s: &Services, id: &str) -> (RolloutState, Vec<TargetState>) {
    let (row, targets) = s.rollouts.get(id).await.unwrap();
    (row.state, targets.iter().map(|t| t.state).collect())
}

async fn digests(s: &Services) -> Vec<String> {
    s.ctx
        .store
        .list_runtimes(&Default::default())
        .await
        .unwrap()
        .into_iter()
        .map(|r| r.image_digest.unwrap())
        .collect()
}

fn d(n: u8) -> String {
    digest(n).to_string()
}

#[tokio::test(start_paused = true)]
async fn a_paused_rollout_finishes_its_recreate_stops_and_resumes_where_it_was() {
    use TargetState::*;
    let w = World::new();
    let s = fleet(&w, 3, json!({"batch_size": 1})).await;
    let id = roll_to(&s, &digest(2)).await;
    until_a_recreate_is_under_way(&w).await;
    let paused = s
        .rollouts
        .set_state(&id, RolloutState::Paused)
        .await
        .unwrap();
    assert_eq!(paused.state, RolloutState::Paused);
    s.rollouts.settle().await;

    // The recreate under way finished; nothing after it began.
    assert_eq!(
        states(&s, &id).await,
        (RolloutState::Paused, vec![Updated, Pending, Pending])
    );
    assert_eq!(digests(&s).await, [d(2), d(1), d(1)]);
    assert_eq!(w.engine.calls(Op::CreateContainer), 3 + 1);

    let resumed = s
        .rollouts
        .set_state(&id, RolloutState::Running)
        .await
        .unwrap();
    assert_eq!(resumed.state, RolloutState::Running);
    s.rollouts.settle().await;
    assert_eq!(
        states(&s, &id).await,
        (RolloutState::Completed, vec![Updated, Updated, Updated])
    );
    assert_eq!(digests(&s).await, [d(2), d(2), d(2)]);
    assert_eq!(
        w.engine.calls(Op::CreateContainer),
        3 + 3,
        "each runtime recreated once"
    );
    assert_one_container_each(&w, &s, "after the resume").await;

    // A finished rollout is not steered: 409, and nothing changes.
    for to in [
        RolloutState::Paused,
        RolloutState::Running,
        RolloutState::Aborted,
    ] {
        let err = s.rollouts.set_state(&id, to).await.unwrap_err();
        assert_eq!(err.code, ErrorCode::Conflict, "{to:?}: {err:?}");
        assert_eq!(err.http_status(), 409);
    }
    assert_eq!(states(&s, &id).await.0, RolloutState::Completed);
}

#[tokio::test(start_paused = true)]
async fn an_aborted_rollout_leaves_the_rest_alone_and_cannot_be_resumed() {
    use TargetState::*;
    let w = World::new();
    let s = fleet(&w, 3, json!({"batch_size": 1})).await;
    let id = roll_to(&s, &digest(2)).await;
    until_a_recreate_is_under_way(&w).await;
    s.rollouts
        .set_state(&id, RolloutState::Aborted)
        .await
        .unwrap();
    s.rollouts.settle().await;
    assert_eq!(
        states(&s, &id).await,
        (RolloutState::Aborted, vec![Updated, Pending, Pending])
    );
    assert_eq!(digests(&s).await, [d(2), d(1), d(1)]);

    for to in [RolloutState::Running, RolloutState::Paused] {
        let err = s.rollouts.set_state(&id, to).await.unwrap_err();
        assert_eq!(err.code, ErrorCode::Conflict, "{to:?}: {err:?}");
        assert_eq!(err.http_status(), 409);
    }
    s.rollouts.settle().await;
    assert_eq!(states(&s, &id).await.0, RolloutState::Aborted);
    assert_eq!(digests(&s).await, [d(2), d(1), d(1)], "no runner started");
    assert_one_container_each(&w, &s, "after the abort").await;
}

#[tokio::test(start_paused = true)]
async fn a_paused_rollout_is_aborted_without_running_again() {
    let w = World::new();
    let s = fleet(&w, 2, json!({"batch_size": 1})).await;
    let id = roll_to(&s, &digest(2)).await;
    until_a_recreate_is_under_way(&w).await;
    s.rollouts
        .set_state(&id, RolloutState::Paused)
        .await
        .unwrap();
    s.rollouts.settle().await;
    let creates = w.engine.calls(Op::CreateContainer);
    s.rollouts
        .set_state(&id, RolloutState::Aborted)
        .await
        .unwrap();
    s.rollouts.settle().await;
    assert_eq!(states(&s, &id).await.0, RolloutState::Aborted);
    assert_eq!(w.engine.calls(Op::CreateContainer), creates);
}

/// The most containers of the fleet that existed at once during a rollout
/// of four runtimes in one batch.
async fn peak_containers(max_unavailable: u32) -> usize {
    let w = World::new();
    let s = fleet(
        &w,
        4,
        json!({"batch_size": 4, "max_unavailable": max_unavailable}),
    )
    .await;
    let mut live: BTreeSet<String> = w
        .engine
        .list_containers()
        .await
        .unwrap()
        .into_iter()
        .map(|c| c.id)
        .collect();
    let mut events = w.engine.events();
    let id = roll_to(&s, &digest(2)).await;
    s.rollouts.settle().await;
    assert_eq!(states(&s, &id).await.0, RolloutState::Completed);
    assert_eq!(digests(&s).await, [d(2), d(2), d(2), d(2)]);
    assert_one_container_each(&w, &s, "after the rollout").await;

    let mut peak = live.len();
    while let Some(Some(event)) = events.next().now_or_never() {
        let event = event.unwrap();
        match event.kind {
            EngineEventKind::Started => {
                live.insert(event.container_id);
            }
            EngineEventKind::Destroyed => {
                live.remove(&event.container_id);
            }
            _ => {}
        }
        peak = peak.max(live.len());
    }
    assert_eq!(live.len(), 4, "one container each at the end");
    peak
}

#[tokio::test(start_paused = true)]
async fn max_unavailable_two_recreates_two_at_once() {
    assert_eq!(
        peak_containers(1).await,
        4 + 1,
        "one new generation at a time"
    );
    assert_eq!(
        peak_containers(2).await,
        4 + 2,
        "two side by side, never three"
    );
}

#[tokio::test(start_paused = true)]
async fn a_rollout_with_nothing_to_do_completes() {
    let w = World::new();
    let s = fleet(&w, 2, json!({"batch_size": 1})).await;
    let creates = w.engine.calls(Op::CreateContainer);
    // Every runtime already runs digest 1.
    let id = roll_to(&s, &digest(1)).await;
    s.rollouts.settle().await;
    let (row, targets) = s.rollouts.get(&id).await.unwrap();
    assert_eq!(row.state, RolloutState::Completed);
    assert!(targets.is_empty(), "{targets:?}");
    assert_eq!(w.engine.calls(Op::CreateContainer), creates);
    assert_eq!(w.engine.calls(Op::StopContainer), 0);
}
