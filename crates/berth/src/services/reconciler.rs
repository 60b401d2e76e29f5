//! The reconciler: gathers the facts (records, containers, templates,
//! operations in flight), asks the pure planner what to do, and does it.
//! Runs at start-up, every `reconcile_interval`, after every events
//! reconnect, when the events listener asks, and on demand.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use berth_core::container::engine_endpoint;
use berth_core::event::HealthEventType;
use berth_core::image::{digest_from_repo_digests, Reference};
use berth_core::operation::{OperationKind, Source};
use berth_core::reconcile::{
    plan, resets_restart_budget, Action, ObservedContainer, PlanInput, ReportReason,
    RestartBackoff, RestartState, TemplatePolicy,
};
use berth_core::runtime::RuntimeRecord;
use berth_core::status::{next_status, LifecycleEvent, RuntimeStatus};
use berth_core::template::RestartPolicy;
use berth_core::ErrorCode;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use super::lifecycle::LifecycleService;
use super::{Caller, Context, Effects};
use crate::error::{Error, Result};
use crate::ports::RuntimeFilter;

/// What one pass did, by runtime id.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ReconcileReport {
    pub disposed: Vec<String>,
    pub recreated: Vec<String>,
    pub adopted: Vec<String>,
    pub exited: Vec<String>,
    pub restarted: Vec<String>,
    /// Containers reported and left alone (removed ids, unusable labels).
    pub reported: Vec<String>,
    pub failed: Vec<(String, String)>,
}

pub struct Reconciler {
    ctx: Arc<Context>,
    runtimes: Arc<LifecycleService>,
    restarts: Mutex<HashMap<String, RestartState>>,
    /// One pass at a time.
    pass: tokio::sync::Mutex<()>,
    wakeup: Notify,
    pub backoff: RestartBackoff,
    last_run_ms: AtomicI64,
}

impl Reconciler {
    pub fn new(ctx: Arc<Context>, runtimes: Arc<LifecycleService>) -> Self {
        Reconciler {
            ctx,
            runtimes,
            restarts: Mutex::new(HashMap::new()),
            pass: tokio::sync::Mutex::new(()),
            wakeup: Notify::new(),
            backoff: RestartBackoff::default(),
            last_run_ms: AtomicI64::new(0),
        }
    }

    /// Asks the background loop for a pass soon (coalesced).
    pub fn trigger(&self) {
        self.wakeup.notify_one();
    }

    /// When the last pass finished (ms since the epoch; 0 = never).
    pub fn last_run_ms(&self) -> i64 {
        self.last_run_ms.load(Ordering::Relaxed)
    }

    /// Passes every `interval` and whenever triggered, until cancelled.
    pub async fn run_loop(self: Arc<Self>, interval: Duration, cancel: CancellationToken) {
        loop {
            if let Err(e) = self.run_once().await {
                tracing::warn!(code = %e.code, error = %e.message, "reconcile pass failed");
            }
            // A pass held a copy of every record: give that memory back
            // before idling.
            crate::heap::release_free_memory();
            tokio::select! {
                _ = cancel.cancelled() => return,
                _ = tokio::time::sleep(interval) => {}
                _ = self.wakeup.notified() => {}
            }
        }
    }

    fn restart_states(&self) -> HashMap<String, RestartState> {
        self.restarts
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    fn update_restart(&self, id: &str, f: impl FnOnce(&mut RestartState)) {
        let mut map = self.restarts.lock().unwrap_or_else(|p| p.into_inner());
        f(map.entry(id.to_string()).or_default());
    }

    /// One pass: plan and act. An action that fails is reported and does
    /// not stop the others.
    pub async fn run_once(&self) -> Result<ReconcileReport> {
        let _pass = self.pass.lock().await;
        // Tokio's clock: paused with the fake clock in tests, sub-millisecond.
        let began = tokio::time::Instant::now();
        let ctx = &self.ctx;
        let now = ctx.now_ms();
        let containers =
            ctx.engine.list_containers().await.map_err(|e| {
                Error::from_engine(e, ErrorCode::DockerUnavailable, "list containers")
            })?;
        let records = ctx.store.list_runtimes(&RuntimeFilter::default()).await?;
        let policies: HashMap<String, TemplatePolicy> = ctx
            .store
            .list_templates()
            .await?
            .into_iter()
            .map(|t| {
                (
                    t.name.clone(),
                    TemplatePolicy {
                        restart: t.restart,
                        on_disappear: t.on_disappear,
                    },
                )
            })
            .collect();
        {
            // Runtimes that have run for a while earn their restart budget back.
            let mut map = self.restarts.lock().unwrap_or_else(|p| p.into_inner());
            map.retain(|id, state| {
                let status = records.iter().find(|r| &r.id == id).map(|r| r.status);
                !resets_restart_budget(state, status, &self.backoff, now)
            });
        }
        let in_flight = self.runtimes.busy_ids();
        // The list does not carry exit codes; inspect the few that matter:
        // a running record's container (its exit is recorded) and an exited
        // one under `on-failure` (its code decides the restart; unknown
        // counts as a failure).
        let exit_code_matters: HashSet<&str> = records
            .iter()
            .filter(|r| match r.status {
                RuntimeStatus::Running => true,
                RuntimeStatus::Exited => policies
                    .get(&r.template)
                    .is_some_and(|p| p.restart == RestartPolicy::OnFailure),
                _ => false,
            })
            .filter_map(|r| r.container_id.as_deref())
            .collect();
        let mut observed = Vec::with_capacity(containers.len());
        for c in containers {
            let mut exit_code = c.exit_code;
            if !c.running && exit_code.is_none() && exit_code_matters.contains(c.id.as_str()) {
                if let Ok(Some(info)) = ctx.engine.inspect_container(&c.id).await {
                    exit_code = info.exit_code;
                }
            }
            observed.push(ObservedContainer {
                id: c.id,
                labels: c.labels,
                running: c.running,
                exit_code,
                created_at_ms: c.created_at_ms,
            });
        }
        let restarts = self.restart_states();
        let actions = plan(&PlanInput {
            owner: &ctx.settings.owner,
            records: &records,
            containers: &observed,
            in_flight: &in_flight,
            policies: &policies,
            restarts: &restarts,
            backoff: self.backoff,
            now_ms: now,
            grace_ms: ctx.settings.adoption_grace.as_millis() as i64,
        });
        let mut report = ReconcileReport::default();
        for action in actions {
            let id = action.runtime_id().unwrap_or_default().to_string();
            if let Err(e) = self.act(&action, &observed, &mut report).await {
                tracing::warn!(runtime = %id, action = ?action, error = %e, "reconcile action failed");
                report.failed.push((id, e.message));
            }
        }
        let finished = ctx.now_ms();
        self.last_run_ms.store(finished, Ordering::Relaxed);
        ctx.metrics.reconcile_passes.inc();
        ctx.metrics
            .reconcile_seconds
            .observe(began.elapsed().as_secs_f64());
        ctx.metrics.reconcile_last_run.set(finished / 1000);
        for (action, n) in [
            ("dispose", report.disposed.len()),
            ("recreate", report.recreated.len()),
            ("adopt", report.adopted.len()),
            ("exited", report.exited.len()),
            ("restart", report.restarted.len()),
            ("report", report.reported.len()),
            ("failed", report.failed.len()),
        ] {
            if n > 0 {
                ctx.metrics
                    .reconcile_actions
                    .get_or_create(&crate::metrics::ActionLabels {
                        action: action.into(),
                    })
                    .inc_by(n as u64);
            }
        }
        Ok(report)
    }

    async fn act(
        &self,
        action: &Action,
        observed: &[ObservedContainer],
        report: &mut ReconcileReport,
    ) -> Result<()> {
        let ctx = &self.ctx;
        let caller = Caller::new(Source::AutoReconcile);
        match action {
            Action::Dispose {
                runtime_id,
                container_id,
            } => {
                let Some(_guard) = self.runtimes.try_lock(runtime_id) else {
                    return Ok(());
                };
                let Some(mut rec) = ctx.store.get_runtime(runtime_id).await? else {
                    return Ok(());
                };
                // Re-check under the lock: the record and the host both.
                if rec.container_id.as_deref() != Some(container_id.as_str())
                    || rec.status == RuntimeStatus::Removed
                {
                    return Ok(());
                }
                if ctx
                    .engine
                    .inspect_container(container_id)
                    .await
                    .ok()
                    .flatten()
                    .is_some()
                {
                    return Ok(());
                }
                let now = ctx.now_ms();
                rec.status = next_status(Some(rec.status), LifecycleEvent::Removed)
                    .map_err(|e| Error::new(ErrorCode::Conflict, e.to_string()))?;
                rec.container_id = None;
                rec.engine_endpoint = None;
                rec.updated_at_ms = now;
                let mut op = ctx
                    .begin_op(OperationKind::ReconcileDispose, &caller)
                    .for_runtime(&rec.id, &rec.template)
                    .detail("container_id", container_id.clone());
                op.succeed(now);
                let effects = self
                    .disappeared_effects(&rec, container_id, "disposed")
                    .await?;
                ctx.commit(Some(&rec), Some(&op), &effects).await?;
                report.disposed.push(runtime_id.clone());
            }
            Action::Recreate {
                runtime_id,
                container_id,
            } => {
                // Busy: an operation is under way; the next pass decides again.
                let Some(_guard) = self.runtimes.try_lock(runtime_id) else {
                    return Ok(());
                };
                let Some(rec) = ctx.store.get_runtime(runtime_id).await? else {
                    return Ok(());
                };
                if rec.container_id.as_deref() != Some(container_id.as_str())
                    || rec.status == RuntimeStatus::Removed
                {
                    return Ok(());
                }
                // The disappearance is written with the recreate's intent,
                // in its first commit.
                let effects = self
                    .disappeared_effects(&rec, container_id, "recreated")
                    .await?;
                self.runtimes
                    .restart_locked(runtime_id, &caller, OperationKind::Recreate, effects)
                    .await?;
                report.recreated.push(runtime_id.clone());
            }
            Action::Adopt {
                runtime_id,
                template,
                container_id,
                image_ref,
                generation,
            } => {
                let Some(_guard) = self.runtimes.try_lock(runtime_id) else {
                    return Ok(());
                };
                // Re-read before inserting: a record may have appeared.
                if ctx.store.get_runtime(runtime_id).await?.is_some() {
                    return Ok(());
                }
                let Some(info) = ctx
                    .engine
                    .inspect_container(container_id)
                    .await
                    .ok()
                    .flatten()
                else {
                    return Ok(());
                };
                if !info.running
                    || info.labels.get(berth_core::container::LABEL_OWNER)
                        != Some(&ctx.settings.owner)
                {
                    return Ok(());
                }
                let digest = match ctx.engine.inspect_image(&info.image_id).await {
                    Ok(Some(image)) => image_ref
                        .as_deref()
                        .and_then(|r| Reference::parse(r).ok())
                        .and_then(|r| {
                            digest_from_repo_digests(
                                &r.repository,
                                image.repo_digests.iter().map(String::as_str),
                            )
                        })
                        .map(|d| d.to_string()),
                    _ => None,
                };
                let now = ctx.now_ms();
                let mut rec = RuntimeRecord::new(runtime_id, template, Default::default(), now);
                rec.status = next_status(None, LifecycleEvent::Adopted)
                    .map_err(|e| Error::new(ErrorCode::Conflict, e.to_string()))?;
                rec.container_id = Some(container_id.clone());
                rec.image_ref = image_ref.clone();
                rec.image_digest = digest;
                rec.generation = generation.unwrap_or(1);
                if let Some(t) = ctx.store.get_template(template).await? {
                    rec.engine_endpoint = engine_endpoint(&t, runtime_id);
                }
                let mut op = ctx
                    .begin_op(OperationKind::ReconcileAdopt, &caller)
                    .for_runtime(runtime_id, template)
                    .detail("container_id", container_id.clone());
                op.succeed(now);
                ctx.commit(Some(&rec), Some(&op), &Effects::default())
                    .await?;
                report.adopted.push(runtime_id.clone());
            }
            Action::Report {
                runtime_id,
                container_id,
                reason,
            } => {
                let why = match reason {
                    ReportReason::RemovedRuntime => {
                        "its runtime id was removed, so it is never adopted"
                    }
                    ReportReason::InvalidLabels => "its berth labels are missing or invalid",
                };
                tracing::warn!(runtime = ?runtime_id, container = %container_id, "container left alone: {why}");
                report.reported.push(container_id.clone());
            }
            Action::MarkExited {
                runtime_id,
                container_id,
                exit_code,
            } => {
                let Some(_guard) = self.runtimes.try_lock(runtime_id) else {
                    return Ok(());
                };
                let Some(mut rec) = ctx.store.get_runtime(runtime_id).await? else {
                    return Ok(());
                };
                if rec.status != RuntimeStatus::Running
                    || rec.container_id.as_deref() != Some(container_id.as_str())
                {
                    return Ok(());
                }
                let oom = observed.iter().find(|c| &c.id == container_id).is_some()
                    && ctx
                        .engine
                        .inspect_container(container_id)
                        .await
                        .ok()
                        .flatten()
                        .is_some_and(|i| i.oom_killed);
                rec.status = next_status(Some(rec.status), LifecycleEvent::Exited)
                    .map_err(|e| Error::new(ErrorCode::Conflict, e.to_string()))?;
                rec.updated_at_ms = ctx.now_ms();
                let code = exit_code
                    .map(|c| c.to_string())
                    .unwrap_or_else(|| "unknown".into());
                let code_text = code.clone();
                let mut events = vec![ctx.health_event(
                    runtime_id,
                    HealthEventType::ContainerExited,
                    Some(container_id),
                    &[("exit_code", code.clone()), ("source", "reconcile".into())],
                )];
                if oom {
                    events.push(ctx.health_event(
                        runtime_id,
                        HealthEventType::ContainerOom,
                        Some(container_id),
                        &[],
                    ));
                }
                let effects = Effects {
                    health_events: events,
                    ..Effects::default()
                };
                let mut op = ctx
                    .begin_op(OperationKind::ReconcileExited, &caller)
                    .for_runtime(&rec.id, &rec.template)
                    .detail("container_id", container_id.clone())
                    .detail("exit_code", code_text);
                op.succeed(rec.updated_at_ms);
                ctx.commit(Some(&rec), Some(&op), &effects).await?;
                report.exited.push(runtime_id.clone());
            }
            Action::Restart {
                runtime_id,
                attempt,
            } => {
                let Some(_guard) = self.runtimes.try_lock(runtime_id) else {
                    return Ok(());
                };
                let now = ctx.now_ms();
                self.update_restart(runtime_id, |s| {
                    s.attempts = *attempt;
                    s.last_attempt_ms = now;
                });
                self.runtimes
                    .restart_locked(
                        runtime_id,
                        &caller,
                        OperationKind::Restart,
                        Effects::default(),
                    )
                    .await?;
                report.restarted.push(runtime_id.clone());
            }
            Action::RestartLimitReached {
                runtime_id,
                attempts,
            } => {
                let n = ctx.notification(
                    "runtime.restart_limit_reached",
                    &[
                        ("runtime_id", runtime_id.clone()),
                        ("attempts", attempts.to_string()),
                    ],
                );
                ctx.commit(
                    None,
                    None,
                    &Effects {
                        notifications: vec![n],
                        ..Effects::default()
                    },
                )
                .await?;
                self.update_restart(runtime_id, |s| s.limit_reported = true);
            }
        }
        Ok(())
    }

    /// A `container_disappeared` event unless the events listener already
    /// raised it for this container, and the admin notification.
    async fn disappeared_effects(
        &self,
        rec: &RuntimeRecord,
        container_id: &str,
        action: &str,
    ) -> Result<Effects> {
        let ctx = &self.ctx;
        let mut effects = Effects::default();
        if !ctx
            .store
            .has_health_event(&rec.id, container_id, HealthEventType::ContainerDisappeared)
            .await?
        {
            effects.health_events.push(ctx.health_event(
                &rec.id,
                HealthEventType::ContainerDisappeared,
                Some(container_id),
                &[("source", "reconcile".into())],
            ));
        }
        effects.notifications.push(ctx.notification(
            "runtime.container_disappeared",
            &[
                ("runtime_id", rec.id.clone()),
                ("template", rec.template.clone()),
                ("container_id", container_id.to_string()),
                ("action", action.to_string()),
            ],
        ));
        Ok(effects)
    }
}
