//! The reconciler on the fakes, with paused time and the FakeClock moved
//! by hand: dispose, adopt after the grace, another owner's containers,
//! the `on-failure` restart backoff and limit, and the budget reset.

use crate::world;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use berth::fakes::engine::Op;
use berth::fakes::FakeStore;
use berth::ports::Engine;
use berth::services::reconciler::ReconcileReport;
use berth::services::Services;
use berth_core::container::{
    ContainerSpec, LABEL_GENERATION, LABEL_IMAGE_REF, LABEL_OWNER, LABEL_RUNTIME_ID, LABEL_TEMPLATE,
};
use berth_core::event::HealthEventType;
use berth_core::operation::{OperationKind, Outcome, Source};
use berth_core::reconcile::RestartBackoff;
use berth_core::status::RuntimeStatus;
use serde_json::json;
use world::*;

async fn app(w: &World, extra: serde_json::Value) -> Arc<Services> {
    w.publish("stable", &digest(1));
    let s = w.boot();
    let mut doc = json!({"image": REPO, "tag": "stable", "stop_grace": "1s"});
    doc.as_object_mut()
        .unwrap()
        .extend(extra.as_object().unwrap().clone());
    put_template(&s, "app", doc).await;
    s
}

async fn container_of(s: &Services, id: &str) -> String {
    s.runtimes.get(id).await.unwrap().container_id.unwrap()
}

#[tokio::test(start_paused = true)]
async fn a_vanished_container_is_disposed_once() {
    let w = World::new();
    let s = app(&w, json!({"on_disappear": "dispose"})).await;
    start_runtimes(&s, "app").await;
    let cid = container_of(&s, "r-0").await;
    w.engine.remove_behind_back(&cid);

    let report = s.reconciler.run_once().await.unwrap();
    assert_eq!(report.disposed, ["r-0"], "{report:?}");
    assert!(report.recreated.is_empty() && report.failed.is_empty());
    let rec = s.runtimes.get("r-0").await.unwrap();
    assert_eq!(rec.status, RuntimeStatus::Removed);
    assert_eq!(rec.container_id, None);
    let ops = operations_of(&s, "r-0").await;
    assert_eq!(ops[0].kind, OperationKind::ReconcileDispose);
    assert_eq!(ops[0].source, Source::AutoReconcile);
    assert_eq!(ops[0].details.get("container_id"), Some(&cid));
    let said = notifications_of(&s, "runtime.container_disappeared").await;
    assert_eq!(said.len(), 1, "{said:?}");
    assert_eq!(
        said[0].payload.get("action").map(String::as_str),
        Some("disposed")
    );
    // The others are untouched, and a second pass changes nothing.
    for id in ["r-1", "r-2"] {
        assert_eq!(
            s.runtimes.get(id).await.unwrap().status,
            RuntimeStatus::Running
        );
    }
    assert_eq!(
        s.reconciler.run_once().await.unwrap(),
        ReconcileReport::default()
    );
    let events = s
        .ctx
        .store
        .list_health_events(&berth::ports::store::EventFilter {
            runtime_id: Some("r-0".into()),
            event_type: Some(HealthEventType::ContainerDisappeared),
            limit: 10,
        })
        .await
        .unwrap();
    assert_eq!(events.len(), 1, "{events:?}");
}

#[tokio::test(start_paused = true)]
async fn a_labelled_container_without_a_record_is_adopted_after_the_grace() {
    let mut w = World::new();
    let s = app(&w, json!({})).await;
    s.runtimes
        .start(start_request("orphan", "app"), &caller())
        .await
        .unwrap();
    let cid = container_of(&s, "orphan").await;
    // berth's records are lost (say, a database restored from an old
    // backup); the container runs on.
    drop(s);
    w.store = FakeStore::new();
    let s = app(&w, json!({})).await;
    assert!(s.ctx.store.get_runtime("orphan").await.unwrap().is_none());

    // Too young: a create may still be returning.
    let report = s.reconciler.run_once().await.unwrap();
    assert!(report.adopted.is_empty(), "{report:?}");
    assert!(s.ctx.store.get_runtime("orphan").await.unwrap().is_none());

    w.clock.advance(s.ctx.settings.adoption_grace);
    let report = s.reconciler.run_once().await.unwrap();
    assert_eq!(report.adopted, ["orphan"], "{report:?}");
    let rec = s.runtimes.get("orphan").await.unwrap();
    assert_eq!(rec.status, RuntimeStatus::Running);
    assert_eq!(rec.template, "app");
    assert_eq!(rec.container_id.as_deref(), Some(cid.as_str()));
    assert_eq!(rec.generation, 1);
    assert_eq!(
        rec.image_ref.as_deref(),
        Some(format!("{REPO}:stable").as_str())
    );
    assert_eq!(rec.image_digest.as_deref(), Some(digest(1).as_str()));
    let ops = operations_of(&s, "orphan").await;
    assert_eq!(ops.len(), 1, "{ops:?}");
    assert_eq!(ops[0].kind, OperationKind::ReconcileAdopt);
    assert_eq!(ops[0].outcome, Outcome::Success);
    assert_eq!(
        s.reconciler.run_once().await.unwrap(),
        ReconcileReport::default(),
        "adopted once"
    );
}

#[tokio::test(start_paused = true)]
async fn another_owners_containers_are_never_touched() {
    let w = World::new();
    let s = app(&w, json!({"on_disappear": "recreate", "restart": "always"})).await;
    start_runtimes(&s, "app").await;
    let theirs = w.engine.for_owner("bt-other");
    // Theirs: a berth-labelled runtime no record of ours names, one that
    // shares an id with ours and exited, and an unlabelled one.
    let spec = |name: &str, runtime_id: &str| ContainerSpec {
        name: name.to_string(),
        image: format!("{REPO}:stable"),
        env: vec![],
        labels: BTreeMap::from([
            (LABEL_OWNER.to_string(), "bt-other".to_string()),
            (LABEL_RUNTIME_ID.to_string(), runtime_id.to_string()),
            (LABEL_TEMPLATE.to_string(), "app".to_string()),
            (LABEL_IMAGE_REF.to_string(), format!("{REPO}:stable")),
            (LABEL_GENERATION.to_string(), "1".to_string()),
        ]),
        network: "bridge".to_string(),
        alias: name.to_string(),
        binds: vec![],
    };
    let ghost = theirs
        .create_container(&spec("bt-other-ghost", "ghost"))
        .await
        .unwrap();
    theirs.start_container(&ghost).await.unwrap();
    let twin = theirs
        .create_container(&spec("bt-other-r-0", "r-0"))
        .await
        .unwrap();
    theirs.start_container(&twin).await.unwrap();
    w.engine.kill(&twin, 1);
    theirs.create_foreign("plain", Some("bt-other"));
    let before = theirs.list_containers().await.unwrap();
    assert_eq!(before.len(), 3);

    w.clock.advance(Duration::from_secs(3600));
    let calls = |op| w.engine.calls(op);
    let (stops, removes, starts) = (
        calls(Op::StopContainer),
        calls(Op::RemoveContainer),
        calls(Op::StartContainer),
    );
    let report = s.reconciler.run_once().await.unwrap();
    assert_eq!(
        report,
        ReconcileReport::default(),
        "ours are fine, theirs invisible"
    );
    assert_eq!(theirs.list_containers().await.unwrap(), before);
    assert!(s.ctx.store.get_runtime("ghost").await.unwrap().is_none());
    assert_eq!(
        (
            calls(Op::StopContainer),
            calls(Op::RemoveContainer),
            calls(Op::StartContainer)
        ),
        (stops, removes, starts)
    );
    assert_one_container_each(&w, &s, "after the pass").await;
}

/// One on-failure runtime, `crasher`.
async fn crasher(w: &World) -> Arc<Services> {
    let s = app(w, json!({"restart": "on-failure"})).await;
    s.runtimes
        .start(start_request("crasher", "app"), &caller())
        .await
        .unwrap();
    s
}

/// Its process exits with 1, and a pass sees it.
async fn crash(w: &World, s: &Services) -> ReconcileReport {
    let cid = container_of(s, "crasher").await;
    w.engine.kill(&cid, 1);
    s.reconciler.run_once().await.unwrap()
}

fn ms(ms: i64) -> Duration {
    Duration::from_millis(ms as u64)
}

async fn automatic_restarts(s: &Services) -> usize {
    operations_of(s, "crasher")
        .await
        .iter()
        .filter(|o| o.kind == OperationKind::Restart && o.source == Source::AutoReconcile)
        .count()
}

#[tokio::test(start_paused = true)]
async fn on_failure_backs_off_exponentially_then_reports_the_limit_once() {
    let w = World::new();
    let s = crasher(&w).await;
    let backoff = RestartBackoff::default();
    assert_eq!((backoff.base_ms, backoff.limit), (1_000, 5));

    // The first exit is restarted at once.
    let report = crash(&w, &s).await;
    assert_eq!(report.exited, ["crasher"], "{report:?}");
    assert_eq!(report.restarted, ["crasher"], "{report:?}");
    // Then 1 s, 2 s, 4 s, 8 s before restarts 2 to 5.
    for attempt in 2..=backoff.limit {
        let wait = 1_000 << (attempt - 2);
        assert_eq!(backoff.delay_ms(attempt - 2), wait);
        let report = crash(&w, &s).await;
        assert_eq!(report.exited, ["crasher"], "attempt {attempt}: {report:?}");
        assert!(report.restarted.is_empty(), "attempt {attempt}: too soon");
        w.clock.advance(ms(wait - 1));
        let report = s.reconciler.run_once().await.unwrap();
        assert!(
            report.restarted.is_empty(),
            "attempt {attempt}: 1 ms before the backoff: {report:?}"
        );
        assert_eq!(
            s.runtimes.get("crasher").await.unwrap().status,
            RuntimeStatus::Exited
        );
        w.clock.advance(ms(1));
        let report = s.reconciler.run_once().await.unwrap();
        assert_eq!(
            report.restarted,
            ["crasher"],
            "attempt {attempt}: {report:?}"
        );
        assert_eq!(
            s.runtimes.get("crasher").await.unwrap().status,
            RuntimeStatus::Running
        );
    }
    assert_eq!(automatic_restarts(&s).await, 5);
    assert!(notifications_of(&s, "runtime.restart_limit_reached")
        .await
        .is_empty());

    // The sixth exit: no restart, however long berth waits; said once.
    let report = crash(&w, &s).await;
    assert!(report.restarted.is_empty(), "{report:?}");
    for _ in 0..3 {
        w.clock.advance(Duration::from_secs(600));
        let report = s.reconciler.run_once().await.unwrap();
        assert!(report.restarted.is_empty(), "{report:?}");
    }
    assert_eq!(automatic_restarts(&s).await, 5);
    let limit = notifications_of(&s, "runtime.restart_limit_reached").await;
    assert_eq!(limit.len(), 1, "{limit:?}");
    assert_eq!(
        limit[0].payload.get("runtime_id").map(String::as_str),
        Some("crasher")
    );
    assert_eq!(
        limit[0].payload.get("attempts").map(String::as_str),
        Some("5")
    );
    let rec = s.runtimes.get("crasher").await.unwrap();
    assert_eq!(rec.status, RuntimeStatus::Exited);
    assert!(!w.engine.list_containers().await.unwrap()[0].running);
}

#[tokio::test(start_paused = true)]
async fn a_clean_exit_is_not_restarted_under_on_failure() {
    let w = World::new();
    let s = crasher(&w).await;
    let cid = container_of(&s, "crasher").await;
    w.engine.kill(&cid, 0);
    let report = s.reconciler.run_once().await.unwrap();
    assert_eq!(report.exited, ["crasher"]);
    w.clock.advance(Duration::from_secs(60));
    let report = s.reconciler.run_once().await.unwrap();
    assert!(report.restarted.is_empty(), "{report:?}");
    assert_eq!(automatic_restarts(&s).await, 0);
}

#[tokio::test(start_paused = true)]
async fn the_restart_budget_resets_after_the_runtime_ran_stably() {
    let w = World::new();
    let s = crasher(&w).await;
    let backoff = RestartBackoff::default();
    // Three restarts: the next would wait 4 s.
    assert_eq!(crash(&w, &s).await.restarted, ["crasher"]);
    for wait in [1_000, 2_000] {
        crash(&w, &s).await;
        w.clock.advance(ms(wait));
        assert_eq!(
            s.reconciler.run_once().await.unwrap().restarted,
            ["crasher"]
        );
    }

    // Up for longer than `reset_after_ms` since the last restart: a pass
    // gives the budget back.
    w.clock.advance(ms(backoff.reset_after_ms + 1));
    assert_eq!(
        s.reconciler.run_once().await.unwrap(),
        ReconcileReport::default()
    );
    // So the next exit is restarted at once, and the one after waits 1 s
    // (not 4 s and 8 s).
    assert_eq!(crash(&w, &s).await.restarted, ["crasher"], "at once");
    assert!(crash(&w, &s).await.restarted.is_empty());
    w.clock.advance(ms(1_000));
    assert_eq!(
        s.reconciler.run_once().await.unwrap().restarted,
        ["crasher"],
        "the second attempt of a fresh budget"
    );
    assert_eq!(automatic_restarts(&s).await, 5);
}
