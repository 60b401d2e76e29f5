//! The Docker events listener: turns container events of this owner into
//! health events and reconcile triggers. An event is a hint, not a record:
//! after every (re)connect the reconciler relists everything.

use std::sync::Arc;
use std::time::Duration;

use berth_core::container::LABEL_RUNTIME_ID;
use berth_core::event::HealthEventType;
use berth_core::status::RuntimeStatus;
use futures_util::StreamExt;
use tokio_util::sync::CancellationToken;

use super::lifecycle::LifecycleService;
use super::reconciler::Reconciler;
use super::{Context, Effects};
use crate::error::Result;
use crate::ports::engine::{EngineEvent, EngineEventKind};

pub struct EventsListener {
    /// Whether the Docker events stream is open now.
    pub connected: std::sync::atomic::AtomicBool,
    ctx: Arc<Context>,
    runtimes: Arc<LifecycleService>,
    reconciler: Arc<Reconciler>,
}

const BACKOFF_START: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(5);

impl EventsListener {
    pub fn new(
        ctx: Arc<Context>,
        runtimes: Arc<LifecycleService>,
        reconciler: Arc<Reconciler>,
    ) -> Self {
        EventsListener {
            connected: Default::default(),
            ctx,
            runtimes,
            reconciler,
        }
    }

    /// Listens until cancelled; reconnects with backoff when the stream
    /// breaks (Docker restarted, socket closed).
    pub async fn run(self: Arc<Self>, cancel: CancellationToken) {
        let mut backoff = BACKOFF_START;
        loop {
            let mut events = self.ctx.engine.events();
            self.connected
                .store(true, std::sync::atomic::Ordering::Relaxed);
            // Subscribed first, then relist: nothing falls between the two.
            self.reconciler.trigger();
            loop {
                let next = tokio::select! {
                    _ = cancel.cancelled() => return,
                    next = events.next() => next,
                };
                match next {
                    Some(Ok(event)) => {
                        backoff = BACKOFF_START;
                        self.ctx.metrics.docker_events.inc();
                        if let Err(e) = self.handle(&event).await {
                            tracing::warn!(error = %e, container = %event.container_id, "could not record a Docker event");
                        }
                    }
                    Some(Err(e)) => {
                        tracing::warn!(error = %e, "Docker events stream failed; reconnecting");
                        break;
                    }
                    None => {
                        tracing::info!("Docker events stream ended; reconnecting");
                        break;
                    }
                }
            }
            self.connected
                .store(false, std::sync::atomic::Ordering::Relaxed);
            tokio::select! {
                _ = cancel.cancelled() => return,
                _ = tokio::time::sleep(backoff) => {}
            }
            self.ctx.metrics.docker_events_reconnects.inc();
            backoff = (backoff * 2).min(BACKOFF_MAX);
        }
    }

    /// Records what one event says, when it concerns a runtime berth knows.
    pub async fn handle(&self, event: &EngineEvent) -> Result<()> {
        let Some(runtime_id) = event.labels.get(LABEL_RUNTIME_ID) else {
            return Ok(());
        };
        let ctx = &self.ctx;
        let cid = Some(event.container_id.as_str());
        let health = |t, details: &[(&str, String)]| ctx.health_event(runtime_id, t, cid, details);
        // Kept until the event is committed.
        let mut held = None;
        let event_type_and_details = match &event.kind {
            EngineEventKind::Started => Some(health(HealthEventType::ContainerStarted, &[])),
            EngineEventKind::OomKilled => Some(health(HealthEventType::ContainerOom, &[])),
            EngineEventKind::HealthStatus { healthy } => Some(health(
                if *healthy {
                    HealthEventType::HealthHealthy
                } else {
                    HealthEventType::HealthUnhealthy
                },
                &[],
            )),
            // The reconciler marks the record exited and raises the event
            // with the exit code, once, and applies the restart policy.
            EngineEventKind::Died { .. } => {
                self.reconciler.trigger();
                None
            }
            EngineEventKind::Destroyed => {
                // Only a destroy berth did not initiate is a disappearance:
                // the record still points at this container and no
                // operation of ours is under way.
                // Holding the runtime's lock serialises this with the
                // reconciler's dispose, so the event is written once; a
                // busy runtime is being changed by berth itself (or being
                // disposed, which raises the event).
                let Some(guard) = self.runtimes.try_lock(runtime_id) else {
                    return Ok(());
                };
                held = Some(guard);
                let rec = ctx.store.get_runtime(runtime_id).await?;
                let unexpected = rec.is_some_and(|r| {
                    r.status != RuntimeStatus::Removed && r.container_id.as_deref() == cid
                });
                if unexpected {
                    self.reconciler.trigger();
                    Some(health(
                        HealthEventType::ContainerDisappeared,
                        &[("source", "docker_events".into())],
                    ))
                } else {
                    None
                }
            }
        };
        if let Some(e) = event_type_and_details {
            let effects = Effects {
                health_events: vec![e],
                ..Effects::default()
            };
            ctx.commit(None, None, &effects).await?;
        }
        drop(held);
        Ok(())
    }
}
