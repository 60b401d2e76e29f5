//! The use cases. Each service is shared by every entry point: the HTTP
//! API, the CLI (through the API), the stream consumer and the background
//! loops call the same code, never a second copy.

pub mod changes;
pub mod events;
pub mod jobs;
pub mod lifecycle;
pub mod locks;
pub mod operations;
pub mod outbox;
pub mod pins;
pub mod plugins;
pub mod reconciler;
pub mod refresh;
pub mod rollouts;
pub mod stores;
pub mod templates;
pub mod watcher;
pub mod webhooks;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use berth_core::event::{HealthEvent, HealthEventType, JobResult, Notification};
use berth_core::operation::{Operation, OperationKind, Outcome, Source};
use berth_core::outcome_retry::OutcomeRetry;
use berth_core::runtime::RuntimeRecord;

use crate::error::Result;
use crate::metrics::Metrics;
use crate::ports::store::{Change, StoreError};
use crate::ports::{Clock, Engine, Store};
use crate::streams;

/// One page of a list: its items, and the cursor of the next page when
/// more follow.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Page<T> {
    pub items: Vec<T>,
    /// The id to pass as `after` (runtimes) or `before` (logs) for the next
    /// page; `None` on the last page.
    pub next: Option<String>,
}

impl<T> Page<T> {
    /// From up to `limit + 1` items read: the extra one only tells that
    /// more follow, and the cursor is the id of the last item kept.
    pub fn from_overfetch(mut items: Vec<T>, limit: Option<u32>, id: impl Fn(&T) -> &str) -> Self {
        let next = match limit {
            Some(l) if items.len() > l as usize => {
                items.truncate(l as usize);
                items.last().map(|i| id(i).to_string())
            }
            _ => None,
        };
        Page { items, next }
    }
}

/// What the services need to know about this berth instance.
#[derive(Debug, Clone)]
pub struct Settings {
    /// The owner label value and container name prefix.
    pub owner: String,
    pub network: String,
    /// Absolute; runtimes' state lives in `<data_dir>/runtimes/<id>/state`.
    pub data_dir: PathBuf,
    /// The most one operation (pull included) may take.
    pub operation_deadline: Duration,
    /// Write stream messages to the outbox (only when Redis is configured;
    /// without it the same records are read from the API).
    pub publish_outbox: bool,
    /// Containers younger than this are not adopted (a create may still be
    /// returning).
    pub adoption_grace: Duration,
    pub plugins: plugins::PluginSettings,
    /// The change stream's ring, pages, poll, retention, heartbeat and cap.
    pub stream: changes::FeedSettings,
}

impl Settings {
    /// `<data_dir>/runtimes/<id>/plugins`: one directory per plugin,
    /// mounted read-only at `/plugins` in every container of the runtime.
    pub fn state_dir(&self, runtime_id: &str) -> PathBuf {
        self.data_dir
            .join("runtimes")
            .join(runtime_id)
            .join("state")
    }

    pub fn plugins_dir(&self, runtime_id: &str) -> PathBuf {
        self.data_dir
            .join("runtimes")
            .join(runtime_id)
            .join("plugins")
    }
}

/// Who asked: the operation's source and a name for the pin history.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    pub source: Source,
    pub by: String,
}

impl Caller {
    pub fn new(source: Source) -> Self {
        Caller {
            source,
            by: source.as_str().to_string(),
        }
    }
}

/// The shared ports and settings the services are built on.
pub struct Context {
    pub store: Arc<dyn Store>,
    pub engine: Arc<dyn Engine>,
    pub probe: Arc<dyn crate::ports::probe::HealthProbe>,
    pub registry: Arc<dyn crate::ports::Registry>,
    pub git: Arc<dyn crate::ports::git::RefResolver>,
    /// File access to runtimes' state directories.
    pub state_fs: Arc<dyn crate::ports::state_fs::StateFs>,
    pub clock: Arc<dyn Clock>,
    pub metrics: Arc<Metrics>,
    pub settings: Settings,
    /// Wakes the outbox relay after a commit that wrote messages.
    pub outbox_wakeup: Arc<tokio::sync::Notify>,
    /// Wakes the change feed after a commit (every write writes change-log
    /// rows).
    pub changes_wakeup: Arc<tokio::sync::Notify>,
    /// The configured `[[webhooks]]` (none by default); every notification
    /// a change commits is queued for the matching ones in that change.
    pub webhooks: Arc<webhooks::Webhooks>,
}

/// What a change reports besides the record and its operation; written in
/// the same transaction, and to the outbox when publishing is on.
#[derive(Debug, Default)]
pub struct Effects {
    pub health_events: Vec<HealthEvent>,
    pub notifications: Vec<Notification>,
    pub job_result: Option<JobResult>,
}

impl Context {
    pub fn now_ms(&self) -> i64 {
        self.clock.now_ms()
    }

    /// A new operation, with a time-ordered id.
    /// Names the actor in its details when one is known beyond the source
    /// (a token's name, `X-Berth-Actor`).
    pub fn begin_op(&self, kind: OperationKind, caller: &Caller) -> Operation {
        let op = Operation::begin(
            uuid::Uuid::now_v7().to_string(),
            kind,
            caller.source,
            self.now_ms(),
        );
        if caller.by != caller.source.as_str() {
            op.detail("actor", caller.by.clone())
        } else {
            op
        }
    }

    /// Writes the record and operation together; counts finished operations.
    pub async fn record(&self, runtime: Option<&RuntimeRecord>, op: &Operation) -> Result<()> {
        self.commit(runtime, Some(op), &Effects::default()).await
    }

    /// The stream messages `effects` publish (none without Redis).
    pub fn outbox_for(&self, effects: &Effects) -> Vec<crate::ports::store::OutboxMessage> {
        let mut outbox = Vec::new();
        if self.settings.publish_outbox {
            outbox.extend(
                effects
                    .health_events
                    .iter()
                    .map(streams::health_event_message),
            );
            outbox.extend(
                effects
                    .notifications
                    .iter()
                    .map(streams::notification_message),
            );
            outbox.extend(effects.job_result.iter().map(streams::job_result_message));
        }
        outbox
    }

    /// Writes a record, its operation and their effects in one transaction.
    pub async fn commit(
        &self,
        runtime: Option<&RuntimeRecord>,
        op: Option<&Operation>,
        effects: &Effects,
    ) -> Result<()> {
        self.commit_change(
            Change {
                runtime,
                operation: op,
                ..Change::default()
            },
            effects,
        )
        .await
    }

    /// Writes one decision — `change` with `effects` (and their outbox
    /// messages and webhook deliveries) — in one transaction; wakes the
    /// relay and the webhook loops, counts the operation when it finished.
    pub async fn commit_change(&self, change: Change<'_>, effects: &Effects) -> Result<()> {
        let outbox = self.outbox_for(effects);
        let deliveries = self.webhook_deliveries_for(&effects.notifications);
        let change = Change {
            health_events: &effects.health_events,
            notifications: &effects.notifications,
            job_result: effects.job_result.as_ref(),
            outbox: &outbox,
            webhook_deliveries: &deliveries,
            ..change
        };
        let finished = change
            .operation
            .filter(|op| op.outcome != Outcome::InProgress);
        match finished {
            Some(op) => self.commit_outcome(&change, op).await?,
            None => self.store.commit(&change).await?,
        }
        self.changed();
        if !outbox.is_empty() {
            self.outbox_wakeup.notify_one();
        }
        if !deliveries.is_empty() {
            self.wake_webhooks(&deliveries);
        }
        if let Some(op) = change
            .operation
            .filter(|op| op.outcome != Outcome::InProgress)
        {
            self.metrics.operation_done(op);
        }
        Ok(())
    }

    /// Commits a change that finishes `op`. What it records already
    /// happened, so a database that refuses it (a restart, a lost
    /// connection) is tried again on [`OutcomeRetry`]'s schedule rather
    /// than leaving the operation `in_progress`. Before each new attempt
    /// the operation row tells whether a refused one committed after all
    /// (its reply lost), so nothing is written twice.
    async fn commit_outcome(
        &self,
        change: &Change<'_>,
        op: &Operation,
    ) -> std::result::Result<(), StoreError> {
        let mut retry = OutcomeRetry::default();
        loop {
            let refused = match self.store.commit(change).await {
                Err(e @ StoreError::Database(_)) => e,
                other => return other,
            };
            let Some(wait) = retry.next_wait() else {
                tracing::error!(operation = %op.id, kind = op.kind.as_str(), error = %refused,
                    "gave up recording an operation's outcome: it stays in_progress until the next boot fails it");
                return Err(refused);
            };
            tracing::warn!(operation = %op.id, kind = op.kind.as_str(), error = %refused,
                retry_in_ms = wait.as_millis() as u64, "the database refused an operation's outcome; trying again");
            tokio::time::sleep(wait).await;
            if let Ok(Some(stored)) = self.store.get_operation(&op.id).await {
                if stored == *op {
                    return Ok(());
                }
            }
        }
    }

    /// Wakes the change feed: a write committed (called by
    /// `commit_change`, and after the template and pin writes that do not
    /// go through it).
    pub fn changed(&self) {
        self.changes_wakeup.notify_one();
    }

    pub fn health_event(
        &self,
        runtime_id: &str,
        event_type: HealthEventType,
        container_id: Option<&str>,
        details: &[(&str, String)],
    ) -> HealthEvent {
        HealthEvent {
            id: uuid::Uuid::now_v7().to_string(),
            runtime_id: runtime_id.to_string(),
            event_type,
            container_id: container_id.map(str::to_string),
            at_ms: self.now_ms(),
            details: details
                .iter()
                .map(|(k, v)| (k.to_string(), v.clone()))
                .collect(),
        }
    }

    /// An admin-facing notification intent.
    pub fn notification(
        &self,
        notification_type: &str,
        payload: &[(&str, String)],
    ) -> Notification {
        Notification {
            id: uuid::Uuid::now_v7().to_string(),
            notification_type: notification_type.to_string(),
            audience: "admin".to_string(),
            payload: payload
                .iter()
                .map(|(k, v)| (k.to_string(), v.clone()))
                .collect(),
            created_at_ms: self.now_ms(),
        }
    }
}

/// Every service, built once and shared by all entry points.
pub struct Services {
    pub ctx: Arc<Context>,
    pub templates: templates::TemplateService,
    pub pins: Arc<pins::PinService>,
    pub runtimes: Arc<lifecycle::LifecycleService>,
    pub operations: operations::OperationLog,
    pub reconciler: Arc<reconciler::Reconciler>,
    pub events: Arc<events::EventsListener>,
    pub refresh: Arc<refresh::RefreshService>,
    pub rollouts: Arc<rollouts::RolloutService>,
    pub watcher: Arc<watcher::ImageWatcher>,
    pub plugins: Arc<plugins::PluginService>,
    pub stores: Arc<stores::StoreService>,
    /// The change stream's feed; its hub runs among the background loops.
    pub changes: Arc<changes::ChangeFeed>,
}

impl Services {
    pub fn new(ctx: Context) -> Arc<Self> {
        let ctx = Arc::new(ctx);
        let runtimes = Arc::new(lifecycle::LifecycleService::new(ctx.clone()));
        let reconciler = Arc::new(reconciler::Reconciler::new(ctx.clone(), runtimes.clone()));
        let pins = Arc::new(pins::PinService::new(ctx.clone()));
        let plugins = Arc::new(plugins::PluginService::new(ctx.clone(), runtimes.clone()));
        let rollouts = Arc::new(rollouts::RolloutService::new(
            ctx.clone(),
            runtimes.clone(),
            pins.clone(),
            plugins.clone(),
        ));
        let refresh = Arc::new(refresh::RefreshService::new(ctx.clone(), runtimes.clone()));
        let changes = Arc::new(changes::ChangeFeed::new(
            ctx.store.clone(),
            ctx.changes_wakeup.clone(),
            ctx.metrics.clone(),
            ctx.settings.stream.clone(),
        ));
        Arc::new(Services {
            changes,
            stores: runtimes.stores.clone(),
            templates: templates::TemplateService::new(ctx.clone()),
            watcher: Arc::new(watcher::ImageWatcher::new(
                ctx.clone(),
                ctx.registry.clone(),
                pins.clone(),
                rollouts.clone(),
                refresh.clone(),
            )),
            plugins,
            refresh,
            rollouts,
            pins,
            operations: operations::OperationLog::new(ctx.clone()),
            events: Arc::new(events::EventsListener::new(
                ctx.clone(),
                runtimes.clone(),
                reconciler.clone(),
            )),
            reconciler,
            runtimes,
            ctx,
        })
    }
}

/// What `berth status` shows: the instance, its loops, its fleet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StatusReport {
    pub version: &'static str,
    pub owner: String,
    pub network: String,
    pub redis: bool,
    pub docker_events_connected: bool,
    /// ms since the epoch; 0 = never.
    pub reconcile_last_run_ms: i64,
    pub image_watch_last_tick_ms: i64,
    pub plugin_sweep_last_run_ms: i64,
    /// Capped at `OUTBOX_COUNT_CAP` + 1.
    pub outbox_pending: usize,
    pub active_rollouts: usize,
    pub runtimes: std::collections::BTreeMap<String, usize>,
    /// Runtimes with stores by their last readiness impact (`none`,
    /// `degraded`, `blocked`), as last computed by this process.
    pub readiness: std::collections::BTreeMap<String, usize>,
    /// Up to 20 runtimes whose last verdict was `blocked`.
    pub readiness_blocked: Vec<String>,
    pub webhooks: Vec<WebhookStatus>,
}

/// One webhook in `berth status`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WebhookStatus {
    pub name: String,
    pub url: String,
    /// Deliveries waiting, counted up to `webhooks::BACKLOG_CAP`.
    pub pending: u64,
    pub health: webhooks::WebhookHealth,
}

pub const OUTBOX_COUNT_CAP: u32 = 1000;

impl Services {
    pub async fn status(&self) -> Result<StatusReport> {
        let store = &self.ctx.store;
        let verdicts = self.stores.last_verdicts();
        let mut runtimes = std::collections::BTreeMap::new();
        for r in store
            .list_runtimes(&crate::ports::RuntimeFilter::default())
            .await?
        {
            *runtimes.entry(r.status.as_str().to_string()).or_insert(0) += 1;
        }
        let mut webhooks = Vec::new();
        for hook in self.ctx.webhooks.all() {
            let pending = store
                .webhook_pending_count(&hook.spec.name, webhooks::BACKLOG_CAP)
                .await?;
            let mut health = hook.health();
            if health.last_error.is_none() && pending > 0 {
                // Not tried by this process yet (e.g. just restarted): the
                // head's stored error is the news.
                if let Some(head) = store.webhook_head(&hook.spec.name).await? {
                    health.last_error = head.last_error;
                    health.last_error_at_ms = head.last_attempt_at_ms;
                }
            }
            webhooks.push(WebhookStatus {
                name: hook.spec.name.clone(),
                url: hook.spec.url.clone(),
                pending,
                health,
            });
        }
        Ok(StatusReport {
            version: env!("CARGO_PKG_VERSION"),
            owner: self.ctx.settings.owner.clone(),
            network: self.ctx.settings.network.clone(),
            redis: self.ctx.settings.publish_outbox,
            docker_events_connected: self
                .events
                .connected
                .load(std::sync::atomic::Ordering::Relaxed),
            reconcile_last_run_ms: self.reconciler.last_run_ms(),
            image_watch_last_tick_ms: self.watcher.last_tick_ms(),
            plugin_sweep_last_run_ms: self.plugins.last_sweep_ms(),
            outbox_pending: store.outbox_pending(OUTBOX_COUNT_CAP + 1).await?.len(),
            active_rollouts: store.active_rollouts().await?.len(),
            readiness: {
                let mut by_impact = std::collections::BTreeMap::new();
                for impact in verdicts.values() {
                    *by_impact.entry(impact.as_str().to_string()).or_insert(0) += 1;
                }
                by_impact
            },
            readiness_blocked: verdicts
                .iter()
                .filter(|(_, i)| **i == berth_core::store::Impact::Blocked)
                .map(|(id, _)| id.clone())
                .take(20)
                .collect(),
            runtimes,
            webhooks,
        })
    }
}
