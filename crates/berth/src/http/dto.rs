//! Wire types of the HTTP API. Domain types stay in `berth_core`; these
//! are what JSON looks like. Times are milliseconds since the Unix epoch.

use std::collections::BTreeMap;

use berth_core::operation::Operation;
use berth_core::pin::{Pin, PinHistoryEntry};
use berth_core::runtime::RuntimeRecord;
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use crate::template_doc::TemplateDoc;

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct ErrorBody {
    pub error: ErrorDetail,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema, PartialEq, Eq)]
pub struct ErrorDetail {
    /// Stable snake_case code, e.g. `invalid_id`.
    pub code: String,
    /// A sentence for a person.
    pub message: String,
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct Health {
    pub status: String,
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct TemplateList {
    pub templates: Vec<TemplateDoc>,
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct PinView {
    pub template: String,
    pub digest: String,
    pub promoted_at: i64,
    pub promoted_by: String,
    pub reason: Option<String>,
}

impl From<Pin> for PinView {
    fn from(p: Pin) -> Self {
        PinView {
            template: p.template,
            digest: p.digest.to_string(),
            promoted_at: p.promoted_at_ms,
            promoted_by: p.promoted_by,
            reason: p.reason,
        }
    }
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PromoteRequest {
    /// `sha256:` followed by 64 lowercase hex digits.
    #[schema(pattern = "^sha256:[0-9a-f]{64}$")]
    pub digest: String,
    #[serde(default)]
    pub reason: Option<String>,
    /// Refuse a digest the registry does not have.
    #[serde(default)]
    pub verify: bool,
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct PinHistoryView {
    pub template: String,
    /// `promote` or `unpin`.
    pub action: String,
    pub digest: Option<String>,
    pub previous_digest: Option<String>,
    pub at: i64,
    pub by: String,
    pub reason: Option<String>,
}

impl From<PinHistoryEntry> for PinHistoryView {
    fn from(e: PinHistoryEntry) -> Self {
        PinHistoryView {
            template: e.template,
            action: e.action.as_str().to_string(),
            digest: e.digest.map(|d| d.to_string()),
            previous_digest: e.previous_digest.map(|d| d.to_string()),
            at: e.at_ms,
            by: e.by,
            reason: e.reason,
        }
    }
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct PinHistoryList {
    pub pins: Vec<PinHistoryView>,
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct StartRuntimeRequest {
    /// 1 to 63 of `[a-z0-9_-]`, starting and ending with a letter or a digit.
    #[schema(
        min_length = 1,
        max_length = 63,
        pattern = "^[a-z0-9]([a-z0-9_-]{0,61}[a-z0-9])?$"
    )]
    pub id: String,
    /// A template name (the same rule as runtime ids).
    #[schema(
        min_length = 1,
        max_length = 63,
        pattern = "^[a-z0-9]([a-z0-9_-]{0,61}[a-z0-9])?$"
    )]
    pub template: String,
    #[serde(default)]
    pub env: BTreeMap<String, String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema, PartialEq, Eq)]
pub struct RuntimeView {
    pub id: String,
    pub template: String,
    /// starting, running, stopping, stopped, exited, failed or removed.
    pub status: String,
    pub container_id: Option<String>,
    pub image_ref: Option<String>,
    pub image_digest: Option<String>,
    pub engine_endpoint: Option<String>,
    pub generation: i64,
    /// New each time berth starts the runtime's container; the runtime reads
    /// it at `$BERTH_STATE_PATH/.berth/run_id`.
    pub run_id: Option<String>,
    pub created_at: i64,
    pub updated_at: i64,
    pub last_error: Option<ErrorDetail>,
    /// Only on `GET /v1/runtimes/{id}`: the readiness verdict.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub readiness: Option<ReadinessView>,
}

impl From<RuntimeRecord> for RuntimeView {
    fn from(r: RuntimeRecord) -> Self {
        RuntimeView {
            id: r.id,
            template: r.template,
            status: r.status.as_str().to_string(),
            container_id: r.container_id,
            image_ref: r.image_ref,
            image_digest: r.image_digest,
            engine_endpoint: r.engine_endpoint,
            generation: r.generation,
            run_id: r.run_id,
            created_at: r.created_at_ms,
            updated_at: r.updated_at_ms,
            last_error: r.last_error.map(|e| ErrorDetail {
                code: e.code,
                message: e.message,
            }),
            readiness: None,
        }
    }
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct RuntimeList {
    pub runtimes: Vec<RuntimeView>,
    /// Present when more runtimes follow: pass it as `after` for the next
    /// page.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct OperationView {
    pub id: String,
    pub runtime_id: Option<String>,
    pub template: Option<String>,
    pub kind: String,
    /// api, stream, auto_reconcile, image_watch, drift_sweeper, cli or config.
    pub source: String,
    /// in_progress, success or failure.
    pub outcome: String,
    pub error_code: Option<String>,
    pub error_message: Option<String>,
    pub started_at: i64,
    pub finished_at: Option<i64>,
    pub details: BTreeMap<String, String>,
}

impl From<Operation> for OperationView {
    fn from(o: Operation) -> Self {
        OperationView {
            id: o.id,
            runtime_id: o.runtime_id,
            template: o.template,
            kind: o.kind.as_str().to_string(),
            source: o.source.as_str().to_string(),
            outcome: o.outcome.as_str().to_string(),
            error_code: o.error_code,
            error_message: o.error_message,
            started_at: o.started_at_ms,
            finished_at: o.finished_at_ms,
            details: o.details,
        }
    }
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct OperationList {
    pub operations: Vec<OperationView>,
    /// Present when older operations follow: pass it as `before` for the
    /// next page.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next: Option<String>,
}

#[derive(Debug, Default, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct RuntimeQuery {
    pub template: Option<String>,
    pub status: Option<String>,
    /// Only runtimes whose running digest differs from their template's pin.
    pub stale: Option<bool>,
    /// Page size, 1 to 10000; without it, every runtime in one answer.
    #[param(minimum = 1, maximum = 10000)]
    pub limit: Option<u32>,
    /// Keyset cursor: only runtimes whose id sorts after this one (byte
    /// order). Pass the `next` of the previous answer.
    pub after: Option<String>,
}

#[derive(Debug, Default, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct OperationQuery {
    pub runtime: Option<String>,
    pub kind: Option<String>,
    /// 1 to 1000; default 100.
    #[param(minimum = 1, maximum = 1000)]
    pub limit: Option<u32>,
    /// Cursor: only operations written before the one with this id (by
    /// their place in the log, which an update of an operation keeps). Pass
    /// the `next` of the previous answer; an id that names no operation
    /// answers an empty list.
    pub before: Option<String>,
}

#[derive(Debug, Default, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct LimitQuery {
    /// 1 to 1000; default 100.
    #[param(minimum = 1, maximum = 1000)]
    pub limit: Option<u32>,
}

#[derive(Debug, Default, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct ReasonQuery {
    pub reason: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct HealthEventView {
    pub id: String,
    pub runtime_id: String,
    /// container_started, container_exited, container_oom,
    /// container_disappeared, health_unhealthy or health_healthy.
    #[serde(rename = "type")]
    pub event_type: String,
    pub container_id: Option<String>,
    pub at: i64,
    pub details: BTreeMap<String, String>,
}

impl From<berth_core::event::HealthEvent> for HealthEventView {
    fn from(e: berth_core::event::HealthEvent) -> Self {
        HealthEventView {
            id: e.id,
            runtime_id: e.runtime_id,
            event_type: e.event_type.as_str().to_string(),
            container_id: e.container_id,
            at: e.at_ms,
            details: e.details,
        }
    }
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct HealthEventList {
    pub events: Vec<HealthEventView>,
    /// Present when older events follow: pass it as `before` for the next
    /// page.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct NotificationView {
    pub id: String,
    pub notification_type: String,
    pub audience: String,
    pub payload: BTreeMap<String, String>,
    pub created_at: i64,
}

impl From<berth_core::event::Notification> for NotificationView {
    fn from(n: berth_core::event::Notification) -> Self {
        NotificationView {
            id: n.id,
            notification_type: n.notification_type,
            audience: n.audience,
            payload: n.payload,
            created_at: n.created_at_ms,
        }
    }
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct NotificationList {
    pub notifications: Vec<NotificationView>,
    /// Present when older notifications follow: pass it as `before` for
    /// the next page.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next: Option<String>,
}

#[derive(Debug, Default, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct EventQuery {
    pub runtime: Option<String>,
    #[serde(rename = "type")]
    pub event_type: Option<String>,
    /// 1 to 1000; default 100.
    #[param(minimum = 1, maximum = 1000)]
    pub limit: Option<u32>,
    /// Cursor: only events written before the one with this id. Pass the
    /// `next` of the previous answer; an id that names no event answers an
    /// empty list.
    pub before: Option<String>,
}

#[derive(Debug, Default, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct NotificationQuery {
    /// 1 to 1000; default 100.
    #[param(minimum = 1, maximum = 1000)]
    pub limit: Option<u32>,
    /// Cursor: only notifications written before the one with this id.
    /// Pass the `next` of the previous answer; an id that names no
    /// notification answers an empty list.
    pub before: Option<String>,
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct FailedAction {
    pub runtime_id: String,
    pub error: String,
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct ReconcileReportView {
    pub disposed: Vec<String>,
    pub recreated: Vec<String>,
    pub adopted: Vec<String>,
    pub exited: Vec<String>,
    pub restarted: Vec<String>,
    /// Container ids reported and left alone.
    pub reported: Vec<String>,
    pub failed: Vec<FailedAction>,
}

impl From<crate::services::reconciler::ReconcileReport> for ReconcileReportView {
    fn from(r: crate::services::reconciler::ReconcileReport) -> Self {
        ReconcileReportView {
            disposed: r.disposed,
            recreated: r.recreated,
            adopted: r.adopted,
            exited: r.exited,
            restarted: r.restarted,
            reported: r.reported,
            failed: r
                .failed
                .into_iter()
                .map(|(runtime_id, error)| FailedAction { runtime_id, error })
                .collect(),
        }
    }
}

#[derive(Debug, Default, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RefreshRequest {
    /// Templates to refresh; all when absent.
    #[serde(default)]
    pub templates: Option<Vec<String>>,
    /// Also recreate running runtimes whose digest differs.
    #[serde(default)]
    pub recreate: bool,
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct TemplateFailure {
    pub template: String,
    pub error: String,
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct RefreshResponse {
    pub pulled: Vec<String>,
    pub recreated: Vec<String>,
    pub failed: Vec<TemplateFailure>,
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct WatchReportView {
    /// Registry lookups made (one per distinct repo:tag).
    pub lookups: usize,
    pub seeded: Vec<String>,
    pub notified: Vec<String>,
    pub tracked: Vec<String>,
    pub failed: Vec<TemplateFailure>,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct RolloutTargetView {
    pub runtime_id: String,
    /// pending, updated, failed or skipped.
    pub state: String,
    pub error: Option<String>,
    pub updated_at: i64,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct RolloutProgress {
    pub total: usize,
    pub updated: usize,
    pub failed: usize,
    pub skipped: usize,
    pub pending: usize,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct RolloutView {
    pub id: String,
    pub template: String,
    pub from_digest: Option<String>,
    pub to_digest: String,
    /// running, paused, halted, completed or aborted.
    pub state: String,
    /// The operator's verbs the rollout's state allows, from core's
    /// transitions (`pause`, `resume`, `abort`; none once it has ended):
    /// `POST /v1/rollouts/{id}/pause`, `…/resume`, `…/abort` accept exactly
    /// these.
    #[serde(default)]
    pub actions: Vec<String>,
    pub batch_size: u32,
    pub max_failures: u32,
    pub failures: u32,
    pub source: String,
    pub message: Option<String>,
    pub created_at: i64,
    pub updated_at: i64,
    /// Set for a plugin rollout (`to_digest` is then the commit it installs).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub plugin: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub progress: Option<RolloutProgress>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub targets: Option<Vec<RolloutTargetView>>,
}

impl RolloutView {
    pub fn from_row(
        r: crate::ports::store::RolloutRow,
        targets: Option<Vec<crate::ports::store::RolloutTarget>>,
    ) -> Self {
        let progress = targets.as_ref().map(|ts| {
            use berth_core::rollout::TargetState;
            let count = |s: TargetState| ts.iter().filter(|t| t.state == s).count();
            RolloutProgress {
                total: ts.len(),
                updated: count(TargetState::Updated),
                failed: count(TargetState::Failed),
                skipped: count(TargetState::Skipped),
                pending: count(TargetState::Pending),
            }
        });
        RolloutView {
            id: r.id,
            template: r.template,
            from_digest: r.from_digest,
            to_digest: r.to_digest,
            state: r.state.as_str().to_string(),
            actions: berth_core::rollout::operator_actions(r.state)
                .into_iter()
                .map(String::from)
                .collect(),
            batch_size: r.batch_size,
            max_failures: r.max_failures,
            failures: r.failures,
            source: r.source.as_str().to_string(),
            message: r.message,
            created_at: r.created_at_ms,
            updated_at: r.updated_at_ms,
            plugin: r.plugin,
            progress,
            targets: targets.map(|ts| {
                ts.into_iter()
                    .map(|t| RolloutTargetView {
                        runtime_id: t.runtime_id,
                        state: t.state.as_str().to_string(),
                        error: t.error,
                        updated_at: t.updated_at_ms,
                    })
                    .collect()
            }),
        }
    }
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct RolloutList {
    pub rollouts: Vec<RolloutView>,
}

#[derive(Debug, Default, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct RolloutQuery {
    pub template: Option<String>,
    /// 1 to 1000; default 100.
    #[param(minimum = 1, maximum = 1000)]
    pub limit: Option<u32>,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct StatusView {
    pub version: String,
    pub owner: String,
    pub network: String,
    /// Whether Redis streams are configured.
    pub redis: bool,
    pub docker_events_connected: bool,
    /// ms since the epoch; 0 = never.
    pub reconcile_last_run: i64,
    /// ms since the epoch; 0 = never (or the watcher is off).
    pub image_watch_last_tick: i64,
    /// When the last plugin drift sweep finished (0 = never).
    pub plugin_sweep_last_run: i64,
    /// Messages waiting for Redis (counted up to 1001).
    pub outbox_pending: usize,
    pub active_rollouts: usize,
    /// Runtime count by status.
    pub runtimes: BTreeMap<String, usize>,
    /// Runtimes with stores by their last readiness impact (none, degraded,
    /// blocked), as last computed by this process.
    #[serde(default)]
    pub readiness: BTreeMap<String, usize>,
    /// Up to 20 runtimes whose last readiness verdict was blocked.
    #[serde(default)]
    pub readiness_blocked: Vec<String>,
    /// Each configured webhook's backlog and last outcomes.
    #[serde(default)]
    pub webhooks: Vec<WebhookStatusView>,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema, PartialEq, Eq)]
pub struct WebhookStatusView {
    pub name: String,
    pub url: String,
    /// Deliveries waiting (counted up to 10000).
    pub pending: u64,
    /// The last failed attempt's error (since this berth started; before
    /// its first attempt, the stored error of the oldest pending delivery).
    pub last_error: Option<String>,
    /// ms since the epoch.
    pub last_error_at: Option<i64>,
    /// ms since the epoch; the last delivery since this berth started.
    pub last_delivered_at: Option<i64>,
}

#[derive(Debug, Default, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct WebhookDeliveryQuery {
    /// Only this webhook's deliveries.
    pub webhook: Option<String>,
    /// 1 to 1000; default 100.
    #[param(minimum = 1, maximum = 1000)]
    pub limit: Option<u32>,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema, PartialEq, Eq)]
pub struct WebhookDeliveryView {
    /// Sent as `X-Berth-Delivery`.
    pub id: String,
    pub webhook: String,
    pub notification_id: String,
    pub notification_type: String,
    /// `pending` or `delivered`.
    pub status: String,
    pub attempts: i64,
    pub last_error: Option<String>,
    /// ms since the epoch.
    pub created_at: i64,
    pub last_attempt_at: Option<i64>,
    pub delivered_at: Option<i64>,
}

impl From<crate::ports::store::WebhookDelivery> for WebhookDeliveryView {
    fn from(d: crate::ports::store::WebhookDelivery) -> Self {
        WebhookDeliveryView {
            status: if d.delivered_at_ms.is_some() {
                "delivered"
            } else {
                "pending"
            }
            .to_string(),
            id: d.id,
            webhook: d.webhook,
            notification_id: d.notification_id,
            notification_type: d.notification_type,
            attempts: d.attempts,
            last_error: d.last_error,
            created_at: d.created_at_ms,
            last_attempt_at: d.last_attempt_at_ms,
            delivered_at: d.delivered_at_ms,
        }
    }
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct WebhookDeliveryList {
    pub deliveries: Vec<WebhookDeliveryView>,
}

// --- plugins ---------------------------------------------------------------

/// `POST /v1/runtimes/{id}/plugins`.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct InstallPluginRequest {
    /// Directory name and mount point (`/plugins/<name>`): lowercase
    /// letters, digits and `-`.
    pub name: String,
    /// `git+https://host/path`, `git+ssh://[user@]host/path` or
    /// `git+file:///path` (with `plugins.allow_file_sources`).
    pub source: String,
    /// `none`, `tag:<name>`, `tag:latest`, `branch:<name>`, `sha:<40 hex>`
    /// or a bare branch name.
    #[serde(default = "default_track")]
    pub track: String,
    /// Restart a running runtime so that it loads the plugin (default true).
    #[serde(default = "default_true")]
    pub restart: bool,
}

fn default_track() -> String {
    "tag:latest".to_string()
}

fn default_true() -> bool {
    true
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema, PartialEq, Eq)]
pub struct PluginView {
    pub runtime_id: String,
    pub name: String,
    pub source: String,
    pub track: String,
    /// The commit installed (40 hex), null before the first install.
    pub installed_sha: Option<String>,
    pub installed_at: Option<i64>,
    /// When the drift sweeper last resolved the track.
    pub resolved_at: Option<i64>,
    pub last_error: Option<ErrorDetail>,
}

impl From<crate::ports::store::PluginRecord> for PluginView {
    fn from(p: crate::ports::store::PluginRecord) -> Self {
        PluginView {
            runtime_id: p.runtime_id,
            name: p.name,
            source: p.source,
            track: p.track,
            installed_sha: p.installed_sha,
            installed_at: p.installed_at_ms,
            resolved_at: p.resolved_at_ms,
            last_error: p.last_error.map(|e| ErrorDetail {
                code: e.code,
                message: e.message,
            }),
        }
    }
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct PluginList {
    pub plugins: Vec<PluginView>,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema, PartialEq, Eq)]
pub struct PluginUpdateView {
    pub id: String,
    pub runtime_id: String,
    pub plugin: String,
    pub track: String,
    pub from_sha: Option<String>,
    pub to_sha: String,
    /// pending, applied or dismissed.
    pub status: String,
    pub created_at: i64,
    pub updated_at: i64,
}

impl From<crate::ports::store::PluginUpdate> for PluginUpdateView {
    fn from(u: crate::ports::store::PluginUpdate) -> Self {
        PluginUpdateView {
            id: u.id,
            runtime_id: u.runtime_id,
            plugin: u.plugin,
            track: u.track,
            from_sha: u.from_sha,
            to_sha: u.to_sha,
            status: u.status.as_str().to_string(),
            created_at: u.created_at_ms,
            updated_at: u.updated_at_ms,
        }
    }
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct PluginUpdateList {
    pub plugin_updates: Vec<PluginUpdateView>,
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct PluginUpdateQuery {
    /// pending, applied or dismissed.
    pub status: Option<String>,
    pub runtime: Option<String>,
    pub plugin: Option<String>,
    /// At most this many (1 to 1000, default 100).
    #[param(minimum = 1, maximum = 1000)]
    pub limit: Option<u32>,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema, PartialEq, Eq)]
pub struct SweepFailure {
    pub source: String,
    pub track: String,
    pub error: ErrorDetail,
}

/// `POST /v1/admin/plugins/sweep`.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema, PartialEq, Eq)]
pub struct SweepReportView {
    /// Distinct (source, track) resolved.
    pub resolved: usize,
    /// Updates queued or moved forward.
    pub queued: usize,
    pub failed: Vec<SweepFailure>,
}

impl From<crate::services::plugins::SweepReport> for SweepReportView {
    fn from(r: crate::services::plugins::SweepReport) -> Self {
        SweepReportView {
            resolved: r.resolved,
            queued: r.queued,
            failed: r
                .failed
                .into_iter()
                .map(|f| SweepFailure {
                    source: f.source,
                    track: f.track,
                    error: ErrorDetail {
                        code: f.error.code.as_str().to_string(),
                        message: f.error.message,
                    },
                })
                .collect(),
        }
    }
}

/// `POST /v1/plugin-updates/apply`: one plugin's update across a template's
/// running runtimes, as a health-gated rollout.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct BulkApplyRequest {
    /// A template name: 1 to 63 of `[a-z0-9_-]`, starting and ending with a
    /// letter or a digit.
    #[schema(
        min_length = 1,
        max_length = 63,
        pattern = "^[a-z0-9]([a-z0-9_-]{0,61}[a-z0-9])?$"
    )]
    pub template: String,
    pub plugin: String,
}

// --- state stores ----------------------------------------------------------

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct StoreWriteRequest {
    /// A store the runtime's template declares.
    pub store: String,
    /// Any JSON value; kept as the envelope's `data`.
    #[schema(value_type = Value)]
    pub data: serde_json::Value,
    /// The schema of `data`; default: the version the runtime's image understands.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(minimum = 1)]
    pub schema_version: Option<u32>,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct StoreBatchRequest {
    /// The runtime's current run (`$BERTH_STATE_PATH/.berth/run_id`).
    pub run_id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    pub writes: Vec<StoreWriteRequest>,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema, PartialEq, Eq)]
pub struct ReceiptView {
    pub receipt_id: String,
    pub store: String,
    pub schema_version: u32,
    /// Hex SHA-256 of the store file's bytes.
    pub sha256: String,
    pub size: u64,
}

impl From<berth_core::store::Receipt> for ReceiptView {
    fn from(r: berth_core::store::Receipt) -> Self {
        ReceiptView {
            receipt_id: r.receipt_id,
            store: r.store,
            schema_version: r.schema_version,
            sha256: r.sha256,
            size: r.size,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema, PartialEq, Eq)]
pub struct CommittedBatchView {
    pub batch_id: String,
    pub seq: u64,
    pub run_id: String,
    pub committed_at: i64,
    pub receipts: Vec<ReceiptView>,
}

impl From<crate::services::stores::CommittedBatch> for CommittedBatchView {
    fn from(b: crate::services::stores::CommittedBatch) -> Self {
        CommittedBatchView {
            batch_id: b.batch_id,
            seq: b.seq,
            run_id: b.run_id,
            committed_at: b.committed_at_ms,
            receipts: b.receipts.into_iter().map(Into::into).collect(),
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema, PartialEq, Eq)]
pub struct ManifestEntryView {
    pub store: String,
    pub schema_version: u32,
    pub state: String,
    pub last_receipt_id: String,
    pub sha256: String,
}

/// `.berth/manifest.json`: the commit record of a runtime's stores.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema, PartialEq, Eq)]
pub struct ManifestView {
    pub schema_version: u32,
    pub runtime_id: String,
    pub active_run_id: Option<String>,
    pub high_watermark: u64,
    pub last_committed_batch_id: Option<String>,
    pub last_preparing_batch_id: Option<String>,
    pub entries: Vec<ManifestEntryView>,
}

impl From<berth_core::store::Manifest> for ManifestView {
    fn from(m: berth_core::store::Manifest) -> Self {
        ManifestView {
            schema_version: m.schema_version,
            runtime_id: m.runtime_id,
            active_run_id: m.active_run_id,
            high_watermark: m.high_watermark,
            last_committed_batch_id: m.last_committed_batch_id,
            last_preparing_batch_id: m.last_preparing_batch_id,
            entries: m
                .entries
                .into_iter()
                .map(|e| ManifestEntryView {
                    store: e.store,
                    schema_version: e.schema_version,
                    state: e.state,
                    last_receipt_id: e.last_receipt_id,
                    sha256: e.sha256,
                })
                .collect(),
        }
    }
}

/// One store's committed envelope.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema, PartialEq)]
pub struct EnvelopeView {
    pub schema_version: u32,
    pub updated_at: i64,
    pub run_id: String,
    #[schema(value_type = Value)]
    pub data: serde_json::Value,
}

impl From<berth_core::store::Envelope> for EnvelopeView {
    fn from(e: berth_core::store::Envelope) -> Self {
        EnvelopeView {
            schema_version: e.schema_version,
            updated_at: e.updated_at,
            run_id: e.run_id,
            data: e.data,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema, PartialEq, Eq)]
pub struct StoreActionView {
    /// none, block_readiness, rebuild or quarantine.
    pub kind: String,
    pub store: String,
    /// missing, torn_batch, hash_mismatch, corrupt, future_schema or stale_run_id; null for none.
    pub reason: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema, PartialEq, Eq)]
pub struct ReadinessView {
    /// False exactly when `impact` is `blocked`.
    pub ok: bool,
    /// ready, degraded, container_not_running, container_unhealthy,
    /// store_recovery_required or store_validator_failed.
    pub reason: String,
    /// none, degraded or blocked.
    pub impact: String,
    pub actions: Vec<StoreActionView>,
    pub diagnostics: Vec<String>,
}

impl From<berth_core::store::Readiness> for ReadinessView {
    fn from(r: berth_core::store::Readiness) -> Self {
        ReadinessView {
            ok: r.ok,
            reason: r.reason.to_string(),
            impact: r.impact.as_str().to_string(),
            actions: r
                .actions
                .into_iter()
                .map(|a| StoreActionView {
                    kind: a.kind.as_str().to_string(),
                    store: a.store,
                    reason: a.reason.map(|r| r.as_str().to_string()),
                })
                .collect(),
            diagnostics: r.diagnostics,
        }
    }
}

/// The `data` of a change-stream `event: change`: one committed change.
// The feed writes it (`services::changes::FeedItem`); a test in
// `openapi.rs` reads what it writes back into this type.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ChangeEventData {
    /// The change log's seq, also the event's `id`.
    #[schema(minimum = 1)]
    pub seq: i64,
    /// What changed: one of the change kinds (`?kinds=` takes the same
    /// names; the document lists them from `ChangeKind::ALL`).
    pub kind: String,
    /// The id or name of what changed (its key for `kind`).
    pub key: String,
    /// The runtime the change concerns, if any.
    pub runtime: Option<String>,
    /// When it was committed (ms since the epoch).
    pub at: i64,
}

/// `event: reset`: the cursor was older than the oldest change kept.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ResetEventData {
    /// The oldest seq still kept: reload, then changes continue after it.
    #[schema(minimum = 0)]
    pub oldest: i64,
}

/// `event: progress`: one report of a runtime's image pull, as Docker
/// gives it (not stored, no id of its own).
#[derive(Debug, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ProgressEventData {
    pub runtime: String,
    /// The layer's id, when the report is about one.
    pub layer: Option<String>,
    /// Docker's words, e.g. `Downloading`, `Pull complete`.
    pub status: String,
    /// Bytes done and in all, when Docker says.
    #[schema(minimum = 0)]
    pub current: Option<u64>,
    #[schema(minimum = 0)]
    pub total: Option<u64>,
}
