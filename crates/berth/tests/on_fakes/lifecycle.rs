//! The lifecycle service on the fakes, with paused time: idempotent start,
//! stop and start, restart, failed starts that leave nothing behind,
//! `require_pin`, removed ids, and the operation deadline.

use crate::world;

use std::sync::Arc;

use berth::fakes::engine::Op;
use berth::fakes::probe::Answer;
use berth::ports::{Engine, EngineError};
use berth::services::lifecycle::StartOutcome;
use berth::services::Services;
use berth_core::operation::{OperationKind, Outcome};
use berth_core::status::RuntimeStatus;
use berth_core::ErrorCode;
use serde_json::json;
use world::*;

async fn app(w: &World) -> Arc<Services> {
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

async fn start(s: &Services, id: &str) -> berth::error::Result<StartOutcome> {
    s.runtimes.start(start_request(id, "app"), &caller()).await
}

#[tokio::test(start_paused = true)]
async fn a_second_start_of_a_running_runtime_is_already_running_with_one_container() {
    let w = World::new();
    let s = app(&w).await;
    let StartOutcome::Started(first) = start(&s, "w-1").await.unwrap() else {
        panic!("the first start starts");
    };
    let again = start(&s, "w-1").await.unwrap();
    let StartOutcome::AlreadyRunning(rec) = again else {
        panic!("the second start changes nothing: {again:?}");
    };
    assert_eq!(rec.container_id, first.container_id);
    assert_eq!(w.engine.calls(Op::CreateContainer), 1);
    assert_eq!(w.engine.calls(Op::StartContainer), 1);
    assert_eq!(containers_of(&w, "w-1").await.len(), 1);
    let starts = operations_of(&s, "w-1")
        .await
        .into_iter()
        .filter(|o| o.kind == OperationKind::Start)
        .count();
    assert_eq!(starts, 1, "nothing done, nothing logged");
}

#[tokio::test(start_paused = true)]
async fn stop_then_start_brings_the_same_container_back() {
    let w = World::new();
    let s = app(&w).await;
    start(&s, "w-1").await.unwrap();
    let cid = s.runtimes.get("w-1").await.unwrap().container_id.unwrap();

    let stopped = s.runtimes.stop("w-1", &caller()).await.unwrap();
    assert_eq!(stopped.status, RuntimeStatus::Stopped);
    let info = w.engine.inspect_container(&cid).await.unwrap().unwrap();
    assert!(!info.running, "the container is stopped, not removed");
    // Stopping a stopped runtime changes nothing.
    let stops = w.engine.calls(Op::StopContainer);
    s.runtimes.stop("w-1", &caller()).await.unwrap();
    assert_eq!(w.engine.calls(Op::StopContainer), stops);

    let StartOutcome::Started(rec) = start(&s, "w-1").await.unwrap() else {
        panic!("a stopped runtime is started");
    };
    assert_eq!(rec.status, RuntimeStatus::Running);
    assert_eq!(rec.container_id.as_deref(), Some(cid.as_str()));
    assert_eq!(
        rec.generation, 1,
        "the same container, not a new generation"
    );
    assert_eq!(w.engine.calls(Op::CreateContainer), 1);
    assert!(
        w.engine
            .inspect_container(&cid)
            .await
            .unwrap()
            .unwrap()
            .running
    );
    let kinds: Vec<OperationKind> = operations_of(&s, "w-1")
        .await
        .iter()
        .map(|o| o.kind)
        .collect();
    assert_eq!(
        kinds,
        [
            OperationKind::Start,
            OperationKind::Stop,
            OperationKind::Start
        ],
        "the second stop is not logged; newest first"
    );
}

#[tokio::test(start_paused = true)]
async fn restart_runs_the_container_again_and_a_new_generation_when_it_is_gone() {
    let w = World::new();
    let s = app(&w).await;
    start(&s, "w-1").await.unwrap();
    let first = s.runtimes.get("w-1").await.unwrap();
    let cid = first.container_id.clone().unwrap();

    // Its container still exists: stopped and started again, same generation.
    let restarted = s.runtimes.restart("w-1", &caller()).await.unwrap();
    assert_eq!(restarted.status, RuntimeStatus::Running);
    assert_eq!(restarted.container_id.as_deref(), Some(cid.as_str()));
    assert_eq!(restarted.generation, first.generation);
    assert_eq!(w.engine.calls(Op::StopContainer), 1);
    assert_eq!(w.engine.calls(Op::StartContainer), 2);

    // Its container is gone: a new one, one generation on, from the record.
    w.engine.remove_behind_back(&cid);
    let recreated = s.runtimes.restart("w-1", &caller()).await.unwrap();
    assert_eq!(recreated.status, RuntimeStatus::Running);
    assert_eq!(recreated.generation, first.generation + 1);
    let new_cid = recreated.container_id.clone().unwrap();
    assert_ne!(new_cid, cid);
    let mine = containers_of(&w, "w-1").await;
    assert_eq!(mine.len(), 1, "{mine:?}");
    assert_eq!(mine[0].id, new_cid);
    assert_eq!(
        mine[0]
            .labels
            .get("io.berth.generation")
            .map(String::as_str),
        Some("2")
    );

    let restarts: Vec<_> = operations_of(&s, "w-1")
        .await
        .into_iter()
        .filter(|o| o.kind == OperationKind::Restart)
        .collect();
    assert_eq!(restarts.len(), 2, "{restarts:?}");
    assert!(restarts.iter().all(|o| o.outcome == Outcome::Success));
    assert_eq!(
        restarts[0].details.get("container_id"),
        Some(&new_cid),
        "the newest restart names the new container"
    );
}

/// A start that fails at `op` leaves no container, a failed record with
/// the error and a failed operation with its code.
async fn failed_start_leaves_nothing(op: Op) {
    let w = World::new();
    let s = app(&w).await;
    w.engine
        .fail_next(op, EngineError::Rejected(format!("{op:?} refused")));
    let err = start(&s, "w-1").await.unwrap_err();
    assert_eq!(err.code, ErrorCode::StartFailed, "{op:?}: {err:?}");
    assert!(
        w.engine.list_containers().await.unwrap().is_empty(),
        "{op:?}: no container left"
    );
    let rec = s.runtimes.get("w-1").await.unwrap();
    assert_eq!(rec.status, RuntimeStatus::Failed, "{op:?}");
    assert_eq!(rec.container_id, None, "{op:?}");
    let last = rec.last_error.expect("last_error");
    assert_eq!(last.code, "start_failed", "{op:?}");
    assert_eq!(last.message, err.message, "{op:?}");
    let ops = operations_of(&s, "w-1").await;
    assert_eq!(ops.len(), 1, "{op:?}: {ops:?}");
    assert_eq!(ops[0].kind, OperationKind::Start);
    assert_eq!(ops[0].outcome, Outcome::Failure, "{op:?}");
    assert_eq!(ops[0].error_code.as_deref(), Some("start_failed"), "{op:?}");
    assert_eq!(
        notifications_of(&s, "runtime.start_failed").await.len(),
        1,
        "{op:?}"
    );

    // The failure is not sticky: the next start works.
    let StartOutcome::Started(rec) = start(&s, "w-1").await.unwrap() else {
        panic!("{op:?}: started after the failure");
    };
    assert_eq!(rec.last_error, None);
    assert_eq!(containers_of(&w, "w-1").await.len(), 1);
}

#[tokio::test(start_paused = true)]
async fn a_failed_create_leaves_no_container_and_a_failed_record() {
    failed_start_leaves_nothing(Op::CreateContainer).await;
}

#[tokio::test(start_paused = true)]
async fn a_failed_container_start_removes_the_created_container() {
    failed_start_leaves_nothing(Op::StartContainer).await;
}

#[tokio::test(start_paused = true)]
async fn require_pin_without_a_pin_is_image_not_pinned() {
    let w = World::new();
    w.publish("stable", &digest(1));
    let s = w.boot();
    put_template(
        &s,
        "strict",
        json!({"image": REPO, "tag": "stable", "require_pin": true}),
    )
    .await;
    let err = s
        .runtimes
        .start(start_request("w-1", "strict"), &caller())
        .await
        .unwrap_err();
    assert_eq!(err.code, ErrorCode::ImageNotPinned, "{err:?}");
    assert_eq!(err.http_status(), 409);
    assert_eq!(w.engine.calls(Op::PullImage), 0, "nothing pulled");
    assert_eq!(w.engine.calls(Op::CreateContainer), 0);
    let rec = s.runtimes.get("w-1").await.unwrap();
    assert_eq!(rec.status, RuntimeStatus::Failed);
    assert_eq!(rec.last_error.unwrap().code, "image_not_pinned");

    // With a pin, the same start runs the pinned digest.
    s.pins
        .promote("strict", digest(1).as_str(), None, &caller())
        .await
        .unwrap();
    let StartOutcome::Started(rec) = s
        .runtimes
        .start(start_request("w-1", "strict"), &caller())
        .await
        .unwrap()
    else {
        panic!("started once pinned");
    };
    assert_eq!(rec.image_digest.as_deref(), Some(digest(1).as_str()));
    assert_eq!(
        rec.image_ref,
        Some(format!("{REPO}@{}", digest(1).as_str())),
        "by digest, never by tag"
    );
}

#[tokio::test(start_paused = true)]
async fn a_removed_runtime_cannot_be_started_or_restarted() {
    let w = World::new();
    let s = app(&w).await;
    start(&s, "w-1").await.unwrap();
    let removed = s.runtimes.remove("w-1", &caller()).await.unwrap();
    assert_eq!(removed.status, RuntimeStatus::Removed);
    assert!(w.engine.list_containers().await.unwrap().is_empty());

    let err = start(&s, "w-1").await.unwrap_err();
    assert_eq!(err.code, ErrorCode::RuntimeRemoved, "{err:?}");
    assert_eq!(err.http_status(), 409);
    let err = s.runtimes.restart("w-1", &caller()).await.unwrap_err();
    assert_eq!(err.code, ErrorCode::RuntimeRemoved, "{err:?}");
    assert_eq!(
        s.runtimes.get("w-1").await.unwrap().status,
        RuntimeStatus::Removed
    );
    assert!(w.engine.list_containers().await.unwrap().is_empty());
    assert_eq!(
        w.engine.calls(Op::CreateContainer),
        1,
        "only the first start"
    );
}

#[tokio::test(start_paused = true)]
async fn an_operation_past_its_deadline_is_a_timeout_and_restores_the_old_container() {
    // The engine fake cannot hang a call; the health gate can outlast the
    // deadline instead: a grace longer than the world's 300 s deadline and
    // a probe that never passes.
    let w = World::new();
    w.publish("stable", &digest(1));
    let s = w.boot();
    put_template(
        &s,
        "slow",
        json!({"image": REPO, "tag": "stable", "port": 8080, "stop_grace": "1s",
               "health": {"path": "/healthz", "interval": "1s", "timeout": "1s", "grace": "1h"}}),
    )
    .await;
    s.runtimes
        .start(start_request("w-1", "slow"), &caller())
        .await
        .unwrap();
    let old = s.runtimes.get("w-1").await.unwrap();
    w.publish("stable", &digest(2));
    w.probe.script("http://", Answer::Unhealthy);

    let err = s.runtimes.recreate("w-1", &caller()).await.unwrap_err();
    // Cut by the deadline (`timeout`), not by the gate's grace
    // (`health_check_failed`).
    assert_eq!(err.code, ErrorCode::Timeout, "{err:?}");
    assert_eq!(err.http_status(), 504);

    let rec = s.runtimes.get("w-1").await.unwrap();
    assert_eq!(rec.status, RuntimeStatus::Running);
    assert_eq!(rec.container_id, old.container_id, "the old one runs again");
    assert_eq!(rec.image_digest, old.image_digest);
    assert_eq!(rec.last_error.unwrap().code, "timeout");
    let mine = containers_of(&w, "w-1").await;
    assert_eq!(mine.len(), 1, "the new generation is gone: {mine:?}");
    assert!(mine[0].running);
    let recreate = operations_of(&s, "w-1")
        .await
        .into_iter()
        .find(|o| o.kind == OperationKind::Recreate)
        .expect("the recreate is logged");
    assert_eq!(recreate.outcome, Outcome::Failure);
    assert_eq!(recreate.error_code.as_deref(), Some("timeout"));
    assert_eq!(
        recreate.details.get("restored").map(String::as_str),
        Some("true")
    );
}

/// A database that refuses a start's outcome for a while (a restart): the
/// outcome is recorded once it answers again, so the start succeeds and
/// no operation is left `in_progress`.
#[tokio::test(start_paused = true)]
async fn an_outcome_the_database_refuses_for_a_while_is_recorded_when_it_returns() {
    let w = World::new();
    let s = app(&w).await;
    // Write 1 is the intent; the next five attempts at the outcome fail.
    w.store.refuse_writes(1, 5);
    let StartOutcome::Started(rec) = start(&s, "w-1").await.unwrap() else {
        panic!("the start starts");
    };
    assert_eq!(rec.status, RuntimeStatus::Running);
    assert_eq!(s.runtimes.get("w-1").await.unwrap(), rec);
    let ops = operations_of(&s, "w-1").await;
    assert_eq!(ops.len(), 1, "{ops:?}");
    assert_eq!(ops[0].outcome, Outcome::Success, "{ops:?}");
    assert_eq!(containers_of(&w, "w-1").await.len(), 1);
}

/// The outcome's commit lands but its reply is lost: the retry finds the
/// operation row written and does not write the outcome (and its
/// notification) a second time.
#[tokio::test(start_paused = true)]
async fn an_outcome_whose_reply_was_lost_is_written_once() {
    let w = World::new();
    let s = app(&w).await;
    w.engine
        .fail_next(Op::StartContainer, EngineError::Rejected("refused".into()));
    w.store.lose_reply_after(1);
    let err = start(&s, "w-1").await.unwrap_err();
    assert_eq!(err.code, ErrorCode::StartFailed, "{err:?}");
    let ops = operations_of(&s, "w-1").await;
    assert_eq!(ops.len(), 1, "{ops:?}");
    assert_eq!(ops[0].outcome, Outcome::Failure, "{ops:?}");
    assert_eq!(
        notifications_of(&s, "runtime.start_failed").await.len(),
        1,
        "one intent for one failure"
    );
}
