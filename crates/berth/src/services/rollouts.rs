//! Rollouts: move a template's running runtimes to a target digest in
//! batches, each recreate health-gated. Too many failures halt the rollout;
//! failed runtimes are already restored by the recreate; under `track` the
//! pin goes back to the previous digest and the digest is rejected.
//! Rollout state is stored; an interrupted rollout resumes at the next boot.

use std::sync::Arc;

use berth_core::image::Digest;
use berth_core::operation::Source;
use berth_core::rollout::{next_step, steer, RolloutState, RolloutTransition, Step, TargetState};
use berth_core::status::RuntimeStatus;
use berth_core::ErrorCode;
use futures_util::StreamExt;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::lifecycle::LifecycleService;
use super::pins::PinService;
use super::plugins::PluginService;
use super::{Caller, Context, Effects};
use crate::error::{Error, Result};
use crate::ports::store::{Change, RejectionChange, RolloutChange, RolloutRow, RolloutTarget};
use crate::ports::RuntimeFilter;

/// A target's new state and, when it failed, why.
type TargetOutcome = (TargetState, Option<String>);

pub struct RolloutService {
    ctx: Arc<Context>,
    runtimes: Arc<LifecycleService>,
    pins: Arc<PinService>,
    plugins: Arc<PluginService>,
    tasks: TaskTracker,
    cancel: CancellationToken,
}

impl RolloutService {
    pub fn new(
        ctx: Arc<Context>,
        runtimes: Arc<LifecycleService>,
        pins: Arc<PinService>,
        plugins: Arc<PluginService>,
    ) -> Self {
        RolloutService {
            ctx,
            runtimes,
            pins,
            plugins,
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

    /// The rollout of `template` to `to_digest` over its running runtimes
    /// not on it yet, not yet written: a decision commits it together with
    /// what caused it (the watcher's pin promote).
    pub async fn plan(
        &self,
        template: &str,
        from_digest: Option<&str>,
        to_digest: &str,
        revert_pin: bool,
        source: Source,
    ) -> Result<(RolloutRow, Vec<RolloutTarget>)> {
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
            state: RolloutState::Running,
            batch_size: t.rollout.batch_size,
            max_failures: t.rollout.max_failures,
            failures: 0,
            revert_pin,
            source,
            message: None,
            created_at_ms: now,
            updated_at_ms: now,
            plugin: None,
        };
        let targets: Vec<RolloutTarget> = runtimes
            .iter()
            .filter(|r| r.image_digest.as_deref() != Some(to_digest))
            .enumerate()
            .map(|(i, r)| RolloutTarget {
                runtime_id: r.id.clone(),
                position: i as u32,
                state: TargetState::Pending,
                error: None,
                updated_at_ms: now,
            })
            .collect();
        Ok((row, targets))
    }

    /// Starts a rollout (see [`RolloutService::plan`]) and runs it in the
    /// background.
    pub async fn start(
        self: &Arc<Self>,
        template: &str,
        from_digest: Option<&str>,
        to_digest: &str,
        revert_pin: bool,
        source: Source,
    ) -> Result<RolloutRow> {
        let (row, targets) = self
            .plan(template, from_digest, to_digest, revert_pin, source)
            .await?;
        self.save(&row, &targets).await?;
        self.spawn(row.id.clone());
        Ok(row)
    }

    /// Applies `plugin`'s newest commit across `template`'s running
    /// runtimes that have it installed at another commit: in batches, each
    /// restart gated on health, a failed one restored to its previous
    /// commit, halting after `rollout.max_failures`. The track is resolved
    /// once, so every runtime gets the same commit.
    pub async fn start_plugin(
        self: &Arc<Self>,
        template: &str,
        plugin: &str,
        caller: &Caller,
    ) -> Result<RolloutRow> {
        let t = self
            .ctx
            .store
            .get_template(template)
            .await?
            .ok_or_else(|| Error::template_not_found(template))?;
        let to_sha = self.plugins.upstream_for_template(template, plugin).await?;
        let running = self
            .ctx
            .store
            .list_runtimes(&RuntimeFilter {
                template: Some(template.to_string()),
                status: Some(RuntimeStatus::Running),
            })
            .await?;
        let mut targets = Vec::new();
        let now = self.ctx.now_ms();
        for r in running {
            let installed = self.ctx.store.get_plugin(&r.id, plugin).await?;
            if installed.is_some_and(|p| p.installed_sha.as_deref() != Some(to_sha.as_str())) {
                targets.push(RolloutTarget {
                    runtime_id: r.id.clone(),
                    position: targets.len() as u32,
                    state: TargetState::Pending,
                    error: None,
                    updated_at_ms: now,
                });
            }
        }
        let row = RolloutRow {
            id: uuid::Uuid::now_v7().to_string(),
            template: template.to_string(),
            from_digest: None,
            to_digest: to_sha.to_string(),
            state: RolloutState::Running,
            batch_size: t.rollout.batch_size,
            max_failures: t.rollout.max_failures,
            failures: 0,
            revert_pin: false,
            source: caller.source,
            message: None,
            created_at_ms: now,
            updated_at_ms: now,
            plugin: Some(plugin.to_string()),
        };
        self.save(&row, &targets).await?;
        self.spawn(row.id.clone());
        Ok(row)
    }

    /// Writes the rollout and the given targets, alone.
    async fn save(&self, row: &RolloutRow, targets: &[RolloutTarget]) -> Result<()> {
        self.ctx
            .commit_change(
                Change {
                    rollout: Some(RolloutChange {
                        rollout: row,
                        targets,
                    }),
                    ..Change::default()
                },
                &Effects::default(),
            )
            .await
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
            .filter(|r| r.state == RolloutState::Running)
        {
            self.spawn(r.id);
            n += 1;
        }
        Ok(n)
    }

    /// Waits until every runner started so far has finished (completed,
    /// halted, paused or stopped on an error); new ones may start after.
    pub async fn settle(&self) {
        self.tasks.close();
        self.tasks.wait().await;
        self.tasks.reopen();
    }

    /// Stops the runners between batches (on shutdown).
    pub async fn shutdown(&self) {
        self.cancel.cancel();
        self.tasks.close();
        self.tasks.wait().await;
    }

    async fn run(&self, id: &str) -> Result<()> {
        let caller = Caller::new(self.get(id).await?.0.source);
        loop {
            if self.cancel.is_cancelled() {
                return Ok(());
            }
            let (mut row, mut targets) = self.get(id).await?;
            let view: Vec<(String, TargetState)> = targets
                .iter()
                .map(|t| (t.runtime_id.clone(), t.state))
                .collect();
            match next_step(row.state, row.batch_size, row.max_failures, &view) {
                Step::Idle => return Ok(()),
                Step::Complete => {
                    row.state = RolloutState::Completed;
                    row.updated_at_ms = self.ctx.now_ms();
                    self.save(&row, &[]).await?;
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
                    let plugin = row.plugin.clone();
                    let outcomes: Vec<(String, Result<TargetOutcome>)> =
                        futures_util::stream::iter(batch)
                            .map(|rid| {
                                let (to, caller, plugin) = (&to, &caller, &plugin);
                                async move {
                                    let outcome = match plugin {
                                        Some(p) => self.plugin_target(&rid, p, to, caller).await,
                                        None => self.recreate_target(&rid, to, caller).await,
                                    };
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
                            t.state = outcome.0;
                            t.error = outcome.1;
                            t.updated_at_ms = now;
                        }
                        row.failures = targets
                            .iter()
                            .filter(|t| t.state == TargetState::Failed)
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
                        self.save(&row, &changed).await?;
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

    /// Installs the plugin's commit on one target, health-gated, unless the
    /// runtime is gone, stopped, lost the plugin or already has it.
    async fn plugin_target(
        &self,
        rid: &str,
        plugin: &str,
        to_sha: &str,
        caller: &Caller,
    ) -> Result<TargetOutcome> {
        let runs = matches!(
            self.ctx.store.get_runtime(rid).await?,
            Some(r) if r.status == RuntimeStatus::Running
        );
        let installed = self.ctx.store.get_plugin(rid, plugin).await?;
        Ok(match installed {
            Some(p) if runs && p.installed_sha.as_deref() != Some(to_sha) => {
                match self.plugins.apply_gated(rid, plugin, to_sha, caller).await {
                    Ok(()) => (TargetState::Updated, None),
                    Err(e) => (TargetState::Failed, Some(e.message)),
                }
            }
            _ => (TargetState::Skipped, None),
        })
    }

    /// Halts the rollout in one commit: the halted state, and under
    /// `track` the rejection of its digest and the pin back to the previous
    /// one, with the `rollout.halted` intent. A crash before that commit
    /// leaves the rollout running; the resumed runner halts it again.
    async fn halt(&self, mut row: RolloutRow, failures: u32, caller: &Caller) -> Result<()> {
        let now = self.ctx.now_ms();
        row.state = RolloutState::Halted;
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
        if let Some(plugin) = &row.plugin {
            payload.push(("plugin", plugin.clone()));
        }
        // Under `track`: back to the previous digest, and do not try this
        // one again until the tag moves or an operator steps in.
        let revert = match (&row.from_digest, row.revert_pin) {
            (Some(from), true) => {
                let from = Digest::parse(from).map_err(|e| {
                    Error::new(
                        ErrorCode::Internal,
                        format!("rollout {}: stored from_digest is invalid: {e}", row.id),
                    )
                })?;
                let by = Caller {
                    source: caller.source,
                    by: "rollout".to_string(),
                };
                let reason = format!("rollout {} halted", row.id);
                payload.push(("pin_reverted_to", from.to_string()));
                Some(
                    self.pins
                        .promotion(&row.template, &from, Some(reason), &by)
                        .await?,
                )
            }
            _ => None,
        };
        let effects = Effects {
            notifications: vec![self.ctx.notification("rollout.halted", &payload)],
            ..Effects::default()
        };
        let base = revert.as_ref().map(|p| p.change()).unwrap_or_default();
        let rejection = row.revert_pin.then_some(RejectionChange::Reject {
            template: &row.template,
            digest: &row.to_digest,
            reason: "its rollout halted on failed health checks",
            at_ms: now,
        });
        self.ctx
            .commit_change(
                Change {
                    rollout: Some(RolloutChange {
                        rollout: &row,
                        targets: &[],
                    }),
                    rejection,
                    ..base
                },
                &effects,
            )
            .await
    }

    /// Sets a running or paused rollout's state (pause, resume, abort), or
    /// resumes a halted one: in one commit the digest is no longer
    /// rejected, failed runtimes are tried again, and a pin the halt
    /// reverted points at the rollout's target again (recreates resolve the
    /// image through the pin).
    pub async fn set_state(self: &Arc<Self>, id: &str, to: RolloutState) -> Result<RolloutRow> {
        self.set_state_by(id, to, &Caller::new(Source::Api)).await
    }

    /// [`Self::set_state`] on behalf of `caller`: a pin re-promoted by a
    /// resume names the caller's actor when one is known, else "rollout".
    pub async fn set_state_by(
        self: &Arc<Self>,
        id: &str,
        to: RolloutState,
        caller: &Caller,
    ) -> Result<RolloutRow> {
        let (mut row, targets) = self.get(id).await?;
        let transition = steer(row.state, to).map_err(|refusal| {
            Error::new(
                ErrorCode::Conflict,
                format!(
                    "rollout {id:?} is {}; it cannot become {}",
                    refusal.from, refusal.requested
                ),
            )
        })?;
        let resumed_from_halt = transition == RolloutTransition::ResumeHalted;
        row.state = transition.to();
        row.updated_at_ms = self.ctx.now_ms();
        let retried: Vec<RolloutTarget> = if resumed_from_halt {
            targets
                .into_iter()
                .filter(|t| t.state == TargetState::Failed)
                .map(|mut t| {
                    t.state = TargetState::Pending;
                    t.error = None;
                    t.updated_at_ms = row.updated_at_ms;
                    t
                })
                .collect()
        } else {
            Vec::new()
        };
        let repromote = if resumed_from_halt && row.revert_pin {
            let to_digest = Digest::parse(&row.to_digest).map_err(|e| {
                Error::new(
                    ErrorCode::Internal,
                    format!("rollout {id}: stored to_digest is invalid: {e}"),
                )
            })?;
            let operator = Caller {
                source: caller.source,
                by: if caller.by == caller.source.as_str() {
                    "rollout".to_string()
                } else {
                    caller.by.clone()
                },
            };
            let reason = format!("rollout {} resumed", row.id);
            Some(
                self.pins
                    .promotion(&row.template, &to_digest, Some(reason), &operator)
                    .await?,
            )
        } else {
            None
        };
        let base = repromote.as_ref().map(|p| p.change()).unwrap_or_default();
        let lift = resumed_from_halt.then_some(RejectionChange::Lift {
            template: &row.template,
            digest: &row.to_digest,
        });
        self.ctx
            .commit_change(
                Change {
                    rollout: Some(RolloutChange {
                        rollout: &row,
                        targets: &retried,
                    }),
                    rejection: lift.or(base.rejection),
                    ..base
                },
                &Effects::default(),
            )
            .await?;
        if transition.to() == RolloutState::Running {
            self.spawn(row.id.clone());
        }
        Ok(row)
    }
}
