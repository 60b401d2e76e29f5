//! Rollouts: move a template's running runtimes to a target digest in
//! batches, each recreate health-gated. Too many failures halt the rollout;
//! failed runtimes are already restored by the recreate; under `track` the
//! pin goes back to the previous digest and the digest is rejected.
//! Rollout state is stored; an interrupted rollout resumes at the next boot.

use std::sync::Arc;

use berth_core::operation::Source;
use berth_core::rollout::{next_step, steer, RolloutState, RolloutTransition, Step, TargetState};
use berth_core::status::RuntimeStatus;
use berth_core::ErrorCode;
use futures_util::StreamExt;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::lifecycle::LifecycleService;
use super::pins::PinService;
use super::{Caller, Context, Effects};
use crate::error::{Error, Result};
use crate::ports::store::{Change, RolloutRow, RolloutTarget};
use crate::ports::RuntimeFilter;

/// A target's new state and, when it failed, why.
type TargetOutcome = (TargetState, Option<String>);

/// A stored rollout or target state that does not decode.
fn corrupt(id: &str, e: berth_core::ParseStateError) -> Error {
    Error::new(ErrorCode::Internal, format!("rollout {id:?}: stored {e}"))
}

pub struct RolloutService {
    ctx: Arc<Context>,
    runtimes: Arc<LifecycleService>,
    pins: Arc<PinService>,
    tasks: TaskTracker,
    cancel: CancellationToken,
}

impl RolloutService {
    pub fn new(ctx: Arc<Context>, runtimes: Arc<LifecycleService>, pins: Arc<PinService>) -> Self {
        RolloutService {
            ctx,
            runtimes,
            pins,
            tasks: TaskTracker::new(),
            cancel: CancellationToken::new(),
        }
    }

    fn not_found(id: &str) -> Error {
        Error::new(
            ErrorCode::NotFound,
            format!("rollout {id:?} does not exist"),
        )
    }

    pub async fn get(&self, id: &str) -> Result<(RolloutRow, Vec<RolloutTarget>)> {
        self.ctx
            .store
            .get_rollout(id)
            .await?
            .ok_or_else(|| Self::not_found(id))
    }

    pub async fn list(
        &self,
        template: Option<&str>,
        limit: Option<u32>,
    ) -> Result<Vec<RolloutRow>> {
        let limit = super::operations::check_limit(limit)?;
        Ok(self.ctx.store.list_rollouts(template, limit).await?)
    }

    /// Starts a rollout of `template` to `to_digest` over its running
    /// runtimes not on it yet, and runs it in the background.
    pub async fn start(
        self: &Arc<Self>,
        template: &str,
        from_digest: Option<&str>,
        to_digest: &str,
        revert_pin: bool,
        source: Source,
    ) -> Result<RolloutRow> {
        let t = self
            .ctx
            .store
            .get_template(template)
            .await?
            .ok_or_else(|| Error::template_not_found(template))?;
        let runtimes = self
            .ctx
            .store
            .list_runtimes(&RuntimeFilter {
                template: Some(template.to_string()),
                status: Some(RuntimeStatus::Running),
            })
            .await?;
        let now = self.ctx.now_ms();
        let row = RolloutRow {
            id: uuid::Uuid::now_v7().to_string(),
            template: template.to_string(),
            from_digest: from_digest.map(str::to_string),
            to_digest: to_digest.to_string(),
            state: RolloutState::Running.as_str().to_string(),
            batch_size: t.rollout.batch_size,
            max_failures: t.rollout.max_failures,
            failures: 0,
            revert_pin,
            source: source.as_str().to_string(),
            message: None,
            created_at_ms: now,
            updated_at_ms: now,
        };
        let targets: Vec<RolloutTarget> = runtimes
            .iter()
            .filter(|r| r.image_digest.as_deref() != Some(to_digest))
            .enumerate()
            .map(|(i, r)| RolloutTarget {
                runtime_id: r.id.clone(),
                position: i as u32,
                state: TargetState::Pending.as_str().to_string(),
                error: None,
                updated_at_ms: now,
            })
            .collect();
        self.ctx
            .store
            .save_rollout(&row, &targets, &Change::default())
            .await?;
        self.spawn(row.id.clone());
        Ok(row)
    }

    /// Runs `id` in the background until it finishes, pauses or berth stops.
    pub fn spawn(self: &Arc<Self>, id: String) {
        let this = self.clone();
        self.tasks.spawn(async move {
            if let Err(e) = this.run(&id).await {
                tracing::warn!(rollout = %id, error = %e, "rollout stopped on an error; it resumes at the next start");
            }
        });
    }

    /// Resumes every rollout that was running when berth stopped.
    pub async fn resume_active(self: &Arc<Self>) -> Result<usize> {
        let active = self.ctx.store.active_rollouts().await?;
        let mut n = 0;
        for r in active
            .into_iter()
            .filter(|r| r.state == RolloutState::Running.as_str())
        {
            self.spawn(r.id);
            n += 1;
        }
        Ok(n)
    }

    /// Stops the runners between batches (on shutdown).
    pub async fn shutdown(&self) {
        self.cancel.cancel();
        self.tasks.close();
        self.tasks.wait().await;
    }

    async fn run(&self, id: &str) -> Result<()> {
        let caller =
            Caller::new(Source::parse(&self.get(id).await?.0.source).unwrap_or(Source::Api));
        loop {
            if self.cancel.is_cancelled() {
                return Ok(());
            }
            let (mut row, mut targets) = self.get(id).await?;
            let state = RolloutState::parse(&row.state).map_err(|e| corrupt(id, e))?;
            let view: Vec<(String, TargetState)> = targets
                .iter()
                .map(|t| {
                    TargetState::parse(&t.state)
                        .map(|s| (t.runtime_id.clone(), s))
                        .map_err(|e| corrupt(id, e))
                })
                .collect::<Result<_>>()?;
            match next_step(state, row.batch_size, row.max_failures, &view) {
                Step::Idle => return Ok(()),
                Step::Complete => {
                    row.state = RolloutState::Completed.as_str().to_string();
                    row.updated_at_ms = self.ctx.now_ms();
                    self.ctx
                        .store
                        .save_rollout(&row, &[], &Change::default())
                        .await?;
                    return Ok(());
                }
                Step::Halt { failures } => return self.halt(row, failures, &caller).await,
                Step::Batch(batch) => {
                    // Up to `max_unavailable` recreates of a batch at once.
                    let parallel = self
                        .ctx
                        .store
                        .get_template(&row.template)
                        .await?
                        .map_or(1, |t| t.rollout.max_unavailable.max(1))
                        as usize;
                    let to = row.to_digest.clone();
                    let outcomes: Vec<(String, Result<TargetOutcome>)> =
                        futures_util::stream::iter(batch)
                            .map(|rid| {
                                let (to, caller) = (&to, &caller);
                                async move {
                                    let outcome = self.recreate_target(&rid, to, caller).await;
                                    (rid, outcome)
                                }
                            })
                            .buffer_unordered(parallel)
                            .collect()
                            .await;
                    for (rid, outcome) in outcomes {
                        let outcome = outcome?;
                        let now = self.ctx.now_ms();
                        if let Some(t) = targets.iter_mut().find(|t| t.runtime_id == rid) {
                            t.state = outcome.0.as_str().to_string();
                            t.error = outcome.1;
                            t.updated_at_ms = now;
                        }
                        row.failures = targets
                            .iter()
                            .filter(|t| t.state == TargetState::Failed.as_str())
                            .count() as u32;
                        row.updated_at_ms = now;
                        // Re-read the state: a pause or abort may have come in.
                        if let Some((current, _)) = self.ctx.store.get_rollout(id).await? {
                            row.state = current.state;
                        }
                        let changed: Vec<RolloutTarget> = targets
                            .iter()
                            .filter(|t| t.runtime_id == rid)
                            .cloned()
                            .collect();
                        self.ctx
                            .store
                            .save_rollout(&row, &changed, &Change::default())
                            .await?;
                    }
                }
            }
        }
    }

    /// Recreates one target unless it is gone, stopped or already there.
    async fn recreate_target(
        &self,
        rid: &str,
        to: &str,
        caller: &Caller,
    ) -> Result<(TargetState, Option<String>)> {
        Ok(match self.ctx.store.get_runtime(rid).await? {
            Some(r) if r.status == RuntimeStatus::Running => {
                if r.image_digest.as_deref() == Some(to) {
                    (TargetState::Skipped, None)
                } else {
                    match self.runtimes.recreate(rid, caller).await {
                        Ok(_) => (TargetState::Updated, None),
                        Err(e) => (TargetState::Failed, Some(e.message)),
                    }
                }
            }
            _ => (TargetState::Skipped, None),
        })
    }

    async fn halt(&self, mut row: RolloutRow, failures: u32, caller: &Caller) -> Result<()> {
        let now = self.ctx.now_ms();
        row.state = RolloutState::Halted.as_str().to_string();
        row.failures = failures;
        row.message = Some(format!("{failures} runtime(s) failed their health gate"));
        row.updated_at_ms = now;
        let mut payload = vec![
            ("template", row.template.clone()),
            ("rollout_id", row.id.clone()),
            ("to_digest", row.to_digest.clone()),
            ("failures", failures.to_string()),
        ];
        if let Some(from) = &row.from_digest {
            payload.push(("from_digest", from.clone()));
        }
        // Under `track`: back to the previous digest, and do not try this
        // one again until the tag moves or an operator steps in.
        if row.revert_pin {
            self.ctx
                .store
                .reject_digest(
                    &row.template,
                    &row.to_digest,
                    "its rollout halted on failed health checks",
                    now,
                )
                .await?;
            if let Some(from) = row.from_digest.clone() {
                let watcher = Caller {
                    source: caller.source,
                    by: "rollout".to_string(),
                };
                self.pins
                    .promote(
                        &row.template,
                        &from,
                        Some(&format!("rollout {} halted", row.id)),
                        &watcher,
                    )
                    .await?;
                payload.push(("pin_reverted_to", from));
            }
        }
        let effects = Effects {
            notifications: vec![self.ctx.notification("rollout.halted", &payload)],
            ..Effects::default()
        };
        let outbox = self.ctx.outbox_for(&effects);
        self.ctx
            .store
            .save_rollout(
                &row,
                &[],
                &Change {
                    notifications: &effects.notifications,
                    outbox: &outbox,
                    ..Change::default()
                },
            )
            .await?;
        if !outbox.is_empty() {
            self.ctx.outbox_wakeup.notify_one();
        }
        Ok(())
    }

    /// Sets a running or paused rollout's state (pause, resume, abort).
    pub async fn set_state(self: &Arc<Self>, id: &str, to: RolloutState) -> Result<RolloutRow> {
        let (mut row, _) = self.get(id).await?;
        let from = RolloutState::parse(&row.state).map_err(|e| corrupt(id, e))?;
        let transition = steer(from, to).map_err(|refusal| {
            Error::new(
                ErrorCode::Conflict,
                format!(
                    "rollout {id:?} is {}; it cannot become {}",
                    refusal.from, refusal.requested
                ),
            )
        })?;
        if transition == RolloutTransition::ResumeHalted {
            // An operator resumes a halted rollout: the digest is no longer
            // rejected, failed runtimes are tried again, and a pin the halt
            // reverted points at the rollout's target again (recreates
            // resolve the image through the pin).
            self.ctx
                .store
                .clear_rejection(&row.template, &row.to_digest)
                .await?;
            if row.revert_pin {
                let operator = Caller {
                    source: Source::Api,
                    by: "rollout".to_string(),
                };
                self.pins
                    .promote(
                        &row.template,
                        &row.to_digest,
                        Some(&format!("rollout {} resumed", row.id)),
                        &operator,
                    )
                    .await?;
            }
        }
        row.state = transition.to().as_str().to_string();
        row.updated_at_ms = self.ctx.now_ms();
        let (_, targets) = self.get(id).await?;
        let retried: Vec<RolloutTarget> = if transition == RolloutTransition::ResumeHalted {
            targets
                .into_iter()
                .filter(|t| t.state == TargetState::Failed.as_str())
                .map(|mut t| {
                    t.state = TargetState::Pending.as_str().to_string();
                    t.error = None;
                    t
                })
                .collect()
        } else {
            Vec::new()
        };
        self.ctx
            .store
            .save_rollout(&row, &retried, &Change::default())
            .await?;
        if transition.to() == RolloutState::Running {
            self.spawn(row.id.clone());
        }
        Ok(row)
    }
}
