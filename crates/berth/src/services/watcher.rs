//! The image watcher: one registry request per distinct `repo:tag` per
//! tick, however many templates and runtimes share it. The last observed
//! digest is stored, so a change made while berth was down is acted on at
//! the first tick; the first observation ever only seeds.

use std::sync::Arc;
use std::time::Duration;

use berth_core::image::{Digest, ImageRef, Repository};
use berth_core::operation::Source;
use berth_core::rollout::{decide, watch_groups, WatchDecision};
use berth_core::template::Template;
use tokio_util::sync::CancellationToken;

use super::pins::PinService;
use super::refresh::RefreshService;
use super::rollouts::RolloutService;
use super::{Caller, Context, Effects};
use crate::error::Result;
use crate::ports::store::{Change, Observation, RolloutChange};
use crate::ports::Registry;

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct WatchReport {
    /// Registry requests made (one per distinct repo:tag).
    pub lookups: usize,
    pub seeded: Vec<String>,
    pub notified: Vec<String>,
    pub tracked: Vec<String>,
    /// (template, error): a failure for one does not stop the others.
    pub failed: Vec<(String, String)>,
}

pub struct ImageWatcher {
    ctx: Arc<Context>,
    registry: Arc<dyn Registry>,
    pins: Arc<PinService>,
    rollouts: Arc<RolloutService>,
    refresh: Arc<RefreshService>,
    last_tick_ms: std::sync::atomic::AtomicI64,
}

impl ImageWatcher {
    /// When the last tick finished (ms since the epoch; 0 = never).
    pub fn last_tick_ms(&self) -> i64 {
        self.last_tick_ms.load(std::sync::atomic::Ordering::Relaxed)
    }

    pub fn new(
        ctx: Arc<Context>,
        registry: Arc<dyn Registry>,
        pins: Arc<PinService>,
        rollouts: Arc<RolloutService>,
        refresh: Arc<RefreshService>,
    ) -> Self {
        ImageWatcher {
            ctx,
            registry,
            pins,
            rollouts,
            refresh,
            last_tick_ms: Default::default(),
        }
    }

    pub async fn run_loop(self: Arc<Self>, interval: Duration, cancel: CancellationToken) {
        loop {
            match self.tick().await {
                Ok(r) if !r.failed.is_empty() => {
                    tracing::warn!(failed = ?r.failed, "image watch tick had failures")
                }
                Ok(_) => {}
                Err(e) => tracing::warn!(error = %e, "image watch tick failed"),
            }
            tokio::select! {
                _ = cancel.cancelled() => return,
                _ = tokio::time::sleep(interval) => {}
            }
        }
    }

    pub async fn tick(&self) -> Result<WatchReport> {
        // Tokio's clock: paused with the fake clock in tests, sub-millisecond.
        let began = tokio::time::Instant::now();
        let templates = self.ctx.store.list_templates().await?;
        let mut report = WatchReport::default();
        for ((repo, tag), names) in watch_groups(&templates) {
            report.lookups += 1;
            let digest = match Repository::parse(&repo) {
                Ok(r) => self
                    .registry
                    .resolve_tag(&r, &tag)
                    .await
                    .map_err(|e| e.to_string()),
                Err(e) => Err(e.message),
            };
            let digest = match digest {
                Ok(d) => d,
                Err(e) => {
                    for n in names {
                        report.failed.push((n, e.clone()));
                    }
                    continue;
                }
            };
            for name in names {
                let Some(t) = templates.iter().find(|t| t.name == name) else {
                    continue;
                };
                if let Err(e) = self.observe(t, &tag, &digest, &mut report).await {
                    report.failed.push((name.clone(), e.message));
                }
            }
        }
        self.last_tick_ms
            .store(self.ctx.now_ms(), std::sync::atomic::Ordering::Relaxed);
        self.ctx
            .metrics
            .watch_tick_seconds
            .observe(began.elapsed().as_secs_f64());
        Ok(report)
    }

    async fn observe(
        &self,
        t: &Template,
        tag: &str,
        digest: &Digest,
        report: &mut WatchReport,
    ) -> Result<()> {
        let store = &self.ctx.store;
        let previous = store
            .get_observation(&t.name)
            .await?
            .and_then(|o| Digest::parse(&o.digest).ok());
        let rejected = store.is_rejected(&t.name, digest.as_str()).await?;
        let observation = |d: &Digest| Observation {
            template: t.name.clone(),
            reference: format!("{}:{tag}", t.image),
            digest: d.to_string(),
            observed_at_ms: self.ctx.now_ms(),
        };
        match decide(previous.as_ref(), digest, rejected, t.update_policy) {
            WatchDecision::Seed => {
                let obs = observation(digest);
                self.commit_observation(&obs, Vec::new()).await?;
                report.seeded.push(t.name.clone());
            }
            WatchDecision::Unchanged | WatchDecision::Rejected => {}
            WatchDecision::Notify { from, to } => {
                let n = self.ctx.notification(
                    "image.update_available",
                    &[
                        ("template", t.name.clone()),
                        ("old_digest", from.to_string()),
                        ("new_digest", to.to_string()),
                    ],
                );
                self.commit_observation(&observation(&to), vec![n]).await?;
                report.notified.push(t.name.clone());
            }
            WatchDecision::Track { from, to } => {
                self.track(t, &from, &to, &observation(&to)).await?;
                report.tracked.push(t.name.clone());
            }
        }
        Ok(())
    }

    /// The observation with the intents it raises, in one commit.
    async fn commit_observation(
        &self,
        obs: &Observation,
        notifications: Vec<berth_core::event::Notification>,
    ) -> Result<()> {
        self.ctx
            .commit_change(
                Change {
                    observation: Some(obs),
                    ..Change::default()
                },
                &Effects {
                    notifications,
                    ..Effects::default()
                },
            )
            .await
    }

    /// Pull by digest, then in ONE commit: the observation, the pin
    /// promote (with its history and operation row) and the rollout with
    /// its targets. A crash before the commit leaves the old observation,
    /// so the next tick sees the move again; after it, boot resumes the
    /// stored rollout. A failed pull stores nothing but its intent, so the
    /// next tick retries.
    async fn track(
        &self,
        t: &Template,
        from: &Digest,
        to: &Digest,
        obs: &Observation,
    ) -> Result<()> {
        let pulled = self
            .refresh
            .pull_image(&ImageRef::Pinned {
                repo: t.image.clone(),
                digest: to.clone(),
            })
            .await;
        if let Err(e) = pulled {
            let n = self.ctx.notification(
                "image.refresh_failed",
                &[
                    ("template", t.name.clone()),
                    ("digest", to.to_string()),
                    ("error", e.message.clone()),
                ],
            );
            self.ctx
                .commit_change(
                    Change::default(),
                    &Effects {
                        notifications: vec![n],
                        ..Effects::default()
                    },
                )
                .await?;
            return Err(e);
        }
        let previous_pin = self
            .ctx
            .store
            .get_pin(&t.name)
            .await?
            .map(|p| p.digest.to_string());
        let caller = Caller {
            source: Source::ImageWatch,
            by: "image_watch".to_string(),
        };
        let promotion = self
            .pins
            .promotion(&t.name, to, Some(format!("tag {} moved", t.tag)), &caller)
            .await?;
        let from_pin = previous_pin.unwrap_or_else(|| from.to_string());
        let (rollout, targets) = self
            .rollouts
            .plan(
                &t.name,
                Some(&from_pin),
                to.as_str(),
                true,
                Source::ImageWatch,
            )
            .await?;
        self.ctx
            .commit_change(
                Change {
                    observation: Some(obs),
                    rollout: Some(RolloutChange {
                        rollout: &rollout,
                        targets: &targets,
                    }),
                    ..promotion.change()
                },
                &Effects::default(),
            )
            .await?;
        self.rollouts.spawn(rollout.id);
        Ok(())
    }
}
