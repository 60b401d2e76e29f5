//! Storage of templates, pins, runtime records, the operation log, health
//! events, notification intents, stream job results, the transactional
//! outbox, and the registry watcher's and rollouts' bookkeeping.
//!
//! Every method that changes something writes its operation row in the same
//! transaction, so the log can never disagree with the records; [`Change`]
//! carries, beside them, whatever the change must report (events,
//! notifications, a job result, messages to publish), written in that same
//! transaction by [`Store::commit`]. Adapters:
//! `adapters::store::sqlite` and `adapters::store::postgres`, both held to
//! one contract suite (`tests/store_contract.rs`) with the in-memory
//! `fakes::FakeStore`.

use async_trait::async_trait;
use berth_core::event::{HealthEvent, HealthEventType, JobResult, Notification};
use berth_core::operation::{Operation, OperationKind, Source};
use berth_core::pin::{Pin, PinHistoryEntry};
use berth_core::plugin::UpdateStatus;
use berth_core::rollout::{RolloutState, TargetState};
use berth_core::runtime::{LastError, RuntimeRecord};
use berth_core::status::RuntimeStatus;
use berth_core::template::Template;

#[derive(Debug, Clone, thiserror::Error)]
pub enum StoreError {
    /// The change contradicts what is stored (e.g. deleting a template
    /// that runtimes still use). The message is for a person.
    #[error("{0}")]
    Conflict(String),
    #[error("database error: {0}")]
    Database(String),
    /// A stored row cannot be read back into a domain value.
    #[error("stored data is corrupt: {0}")]
    Corrupt(String),
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RuntimeFilter {
    pub template: Option<String>,
    pub status: Option<RuntimeStatus>,
}

/// One keyset page of runtime records, sorted by id (see
/// [`RuntimeStore::list_runtimes_page`]).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RuntimePage {
    pub template: Option<String>,
    pub status: Option<RuntimeStatus>,
    /// Only records that are not `removed`, whose template has a pin, and
    /// whose `image_digest` is not that pin's digest (none counts as stale).
    pub stale: bool,
    /// Only ids greater than this one (byte order), whether or not a record
    /// has it.
    pub after: Option<String>,
    /// At most this many; `None` for all.
    pub limit: Option<u32>,
}

impl RuntimePage {
    /// Whether `rec` belongs in the page's filter (not `after`/`limit`),
    /// given the digest pinned for its template. The one definition of the
    /// filter for every store that filters in memory.
    pub fn keeps(&self, rec: &RuntimeRecord, pin: Option<&str>) -> bool {
        self.template.as_ref().is_none_or(|t| rec.template == *t)
            && self.status.is_none_or(|s| rec.status == s)
            && (!self.stale
                || (rec.status != RuntimeStatus::Removed
                    && pin.is_some_and(|p| rec.image_digest.as_deref() != Some(p))))
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OperationFilter {
    pub runtime_id: Option<String>,
    pub kind: Option<OperationKind>,
    pub limit: u32,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EventFilter {
    pub runtime_id: Option<String>,
    pub event_type: Option<HealthEventType>,
    pub limit: u32,
}

/// One message for a Redis stream, kept in the outbox until the relay has
/// published it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutboxMessage {
    /// e.g. `runtime:job_results`.
    pub stream: String,
    /// The runtime id, `""` when none. Messages of one key are handed to the
    /// relay in the order their changes committed; across keys there is no
    /// order.
    pub partition_key: String,
    /// The stream entry's fields, in order; names may repeat.
    pub fields: Vec<(String, String)>,
    pub created_at_ms: i64,
}

/// A stored outbox message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutboxRow {
    /// The message's place in the outbox: ascending in the order of writing
    /// (and, within a partition key, of committing).
    pub seq: i64,
    pub message: OutboxMessage,
    /// Failed publish attempts so far (see [`OutboxStore::outbox_failed`]).
    pub attempts: i64,
}

/// Who the outbox is, to the relay (see [`OutboxStore::outbox_identity`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutboxIdentity {
    /// Random, fixed when the database was made: the relay's high-water
    /// mark in Redis is kept per id.
    pub id: String,
    /// The highest seq ever handed out (0 before the first message); seqs
    /// are never reused, so every row ever written is at or below it.
    pub drawn: i64,
}

/// A webhook delivery written with a change: one notification intent for
/// one webhook (see [`Change::webhook_deliveries`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewWebhookDelivery {
    /// Unique; sent as `X-Berth-Delivery` on every attempt.
    pub id: String,
    /// The webhook's configured name.
    pub webhook: String,
    pub notification_id: String,
    pub notification_type: String,
    /// The exact body POSTed (and signed), fixed when the change commits.
    pub body: String,
    pub created_at_ms: i64,
}

/// A stored webhook delivery.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WebhookDelivery {
    /// Ascending in the order of writing; within one webhook, in the order
    /// of committing. Each webhook's queue is keyed by (webhook, seq).
    pub seq: i64,
    pub id: String,
    pub webhook: String,
    pub notification_id: String,
    pub notification_type: String,
    pub body: String,
    pub created_at_ms: i64,
    /// Attempts so far, the successful one included.
    pub attempts: i64,
    /// The error of the last failed attempt.
    pub last_error: Option<String>,
    pub last_attempt_at_ms: Option<i64>,
    /// `None` while pending.
    pub delivered_at_ms: Option<i64>,
}

/// A change to a template's pin, written with its history entry.
#[derive(Debug, Clone, Copy)]
pub struct PinChange<'a> {
    /// The pin as it is after the change.
    pub pin: &'a Pin,
    /// Appended to the pin history.
    pub entry: &'a PinHistoryEntry,
}

/// A digest the watcher must not offer again, or a refusal lifted.
#[derive(Debug, Clone, Copy)]
pub enum RejectionChange<'a> {
    /// Marks `digest` as refused for `template`; rejecting it again replaces
    /// `reason` and `at_ms`.
    Reject {
        template: &'a str,
        digest: &'a str,
        reason: &'a str,
        at_ms: i64,
    },
    /// Lifts a rejection; none to lift is no error.
    Lift { template: &'a str, digest: &'a str },
}

/// A rollout and the targets of it that changed.
#[derive(Debug, Clone, Copy)]
pub struct RolloutChange<'a> {
    /// Upserted by id (an update keeps its place in
    /// [`RolloutStore::list_rollouts`] and replaces every other column).
    pub rollout: &'a RolloutRow,
    /// Upserted by rollout id and runtime id; stored targets not given stay
    /// as they are.
    pub targets: &'a [RolloutTarget],
}

/// A plugin installed into a runtime at a tracked ref; keyed by
/// (`runtime_id`, `name`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PluginRecord {
    pub runtime_id: String,
    pub name: String,
    /// Canonical text of a `berth_core::plugin::PluginSource`.
    pub source: String,
    /// Canonical text of a `berth_core::plugin::TrackedRef`.
    pub track: String,
    /// The commit installed; `None` until the first install succeeded.
    pub installed_sha: Option<String>,
    pub installed_at_ms: Option<i64>,
    /// When the sweeper last resolved its track.
    pub resolved_at_ms: Option<i64>,
    /// The last failure to resolve or install, for a person.
    pub last_error: Option<LastError>,
}

/// An update the drift sweeper queued for one plugin of one runtime.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PluginUpdate {
    pub id: String,
    pub runtime_id: String,
    pub plugin: String,
    pub track: String,
    pub from_sha: Option<String>,
    pub to_sha: String,
    pub status: UpdateStatus,
    pub created_at_ms: i64,
    pub updated_at_ms: i64,
}

/// A plugin row written or removed.
#[derive(Debug, Clone, Copy)]
pub enum PluginChange<'a> {
    /// Inserts or replaces by (runtime id, name).
    Put(&'a PluginRecord),
    /// Removes the plugin; none to remove is no error. Its updates stay
    /// (the log of what was offered).
    Delete { runtime_id: &'a str, name: &'a str },
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PluginUpdateFilter {
    pub status: Option<UpdateStatus>,
    pub runtime_id: Option<String>,
    pub plugin: Option<String>,
    pub limit: u32,
}

/// Everything one decision writes, in one transaction (see
/// [`Store::commit`]). Build it with `..Change::default()` for the parts a
/// change does not have.
#[derive(Debug, Clone, Copy, Default)]
pub struct Change<'a> {
    /// Upserted by id; what was written is what `get_runtime` returns.
    pub runtime: Option<&'a RuntimeRecord>,
    /// Upserted by id (an update keeps the row's place in the log).
    pub operation: Option<&'a Operation>,
    /// Sets the pin and appends its history entry.
    pub pin: Option<PinChange<'a>>,
    /// Inserts or replaces the template's observation.
    pub observation: Option<&'a Observation>,
    pub rejection: Option<RejectionChange<'a>>,
    pub rollout: Option<RolloutChange<'a>>,
    pub plugin: Option<PluginChange<'a>>,
    /// Upserted by id. `Conflict` (and nothing written) when it is
    /// `pending` and another pending update of the same runtime and plugin
    /// exists.
    pub plugin_update: Option<&'a PluginUpdate>,
    /// Appended; ids are unique.
    pub health_events: &'a [HealthEvent],
    /// Appended; ids are unique.
    pub notifications: &'a [Notification],
    /// Inserted once per job id.
    pub job_result: Option<&'a JobResult>,
    /// Appended, in slice order.
    pub outbox: &'a [OutboxMessage],
    /// Appended, in slice order; ids are unique (`Conflict` otherwise).
    pub webhook_deliveries: &'a [NewWebhookDelivery],
}

impl Change<'_> {
    pub fn is_empty(&self) -> bool {
        self.runtime.is_none()
            && self.operation.is_none()
            && self.pin.is_none()
            && self.observation.is_none()
            && self.rejection.is_none()
            && self.rollout.is_none()
            && self.plugin.is_none()
            && self.plugin_update.is_none()
            && self.health_events.is_empty()
            && self.notifications.is_empty()
            && self.job_result.is_none()
            && self.outbox.is_empty()
            && self.webhook_deliveries.is_empty()
    }
}

/// The last digest the registry watcher saw for a template's tracked tag.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Observation {
    pub template: String,
    /// What was asked of the registry, `repo:tag`.
    pub reference: String,
    /// `sha256:` + 64 hex, as the registry answered (not validated here).
    pub digest: String,
    pub observed_at_ms: i64,
}

/// One rollout of a template's runtimes from one digest to another.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RolloutRow {
    /// Unique; the rollout's key.
    pub id: String,
    pub template: String,
    /// The pin before the rollout; `None` when the template was unpinned.
    pub from_digest: Option<String>,
    pub to_digest: String,
    pub state: RolloutState,
    pub batch_size: u32,
    pub max_failures: u32,
    pub failures: u32,
    /// Whether a halt restores the pin to `from_digest`.
    pub revert_pin: bool,
    /// Who started it.
    pub source: Source,
    pub message: Option<String>,
    pub created_at_ms: i64,
    pub updated_at_ms: i64,
    /// A plugin rollout applies this plugin's update (and `to_digest` is
    /// the commit); `None` for a rollout of an image digest.
    pub plugin: Option<String>,
}

/// One runtime's place and progress in a rollout; keyed by the rollout id
/// and `runtime_id`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RolloutTarget {
    pub runtime_id: String,
    /// The order of updating, ascending.
    pub position: u32,
    pub state: TargetState,
    pub error: Option<String>,
    pub updated_at_ms: i64,
}

/// Templates and their pins.
#[async_trait]
pub trait TemplateStore: Send + Sync + 'static {
    /// Inserts or replaces; returns true when the template is new.
    async fn put_template(&self, template: &Template, op: &Operation) -> Result<bool, StoreError>;
    async fn get_template(&self, name: &str) -> Result<Option<Template>, StoreError>;
    /// Sorted by name.
    async fn list_templates(&self) -> Result<Vec<Template>, StoreError>;
    /// Deletes the template and its current pin (the pin history stays).
    /// `Conflict` while a runtime that is not `removed` uses it; returns
    /// false when there was no such template (and writes nothing).
    async fn delete_template(&self, name: &str, op: &Operation) -> Result<bool, StoreError>;

    async fn get_pin(&self, template: &str) -> Result<Option<Pin>, StoreError>;
    async fn list_pins(&self) -> Result<Vec<Pin>, StoreError>;
    /// Sets the pin only if the template has no pin history at all (a
    /// config seed never overwrites a promote); returns whether it did.
    async fn seed_pin(
        &self,
        pin: &Pin,
        entry: &PinHistoryEntry,
        op: &Operation,
    ) -> Result<bool, StoreError>;
    /// Removes the pin; returns false (and writes nothing) when unpinned.
    async fn unpin(
        &self,
        template: &str,
        entry: &PinHistoryEntry,
        op: &Operation,
    ) -> Result<bool, StoreError>;
    /// Newest first.
    async fn pin_history(
        &self,
        template: &str,
        limit: u32,
    ) -> Result<Vec<PinHistoryEntry>, StoreError>;
}

/// Runtime records, the operation log and stream job results.
#[async_trait]
pub trait RuntimeStore: Send + Sync + 'static {
    async fn get_runtime(&self, id: &str) -> Result<Option<RuntimeRecord>, StoreError>;
    /// Sorted by id.
    async fn list_runtimes(&self, filter: &RuntimeFilter)
        -> Result<Vec<RuntimeRecord>, StoreError>;
    /// Up to `page.limit` records of the page's filter with ids above
    /// `page.after`, sorted by id: keyset paging that stays correct while
    /// records are added (each id is listed once, in its place).
    async fn list_runtimes_page(
        &self,
        page: &RuntimePage,
    ) -> Result<Vec<RuntimeRecord>, StoreError>;
    /// Newest first.
    async fn list_operations(
        &self,
        filter: &OperationFilter,
    ) -> Result<Vec<Operation>, StoreError> {
        self.list_operations_before(filter, None).await
    }
    /// Newest first, only operations written before the one with id
    /// `before` (by their place in the log, which an update keeps); an id
    /// that names no operation lists nothing.
    async fn list_operations_before(
        &self,
        filter: &OperationFilter,
        before: Option<&str>,
    ) -> Result<Vec<Operation>, StoreError>;
    /// One operation by id, as last written.
    async fn get_operation(&self, id: &str) -> Result<Option<Operation>, StoreError>;
    /// Crash recovery at boot: every operation still `in_progress` becomes a
    /// failure with `code`/`message`; returns the operations it changed.
    async fn fail_in_progress_operations(
        &self,
        code: &str,
        message: &str,
        now_ms: i64,
    ) -> Result<Vec<Operation>, StoreError>;
    async fn get_job_result(&self, job_id: &str) -> Result<Option<JobResult>, StoreError>;
}

/// Health events and notification intents (written through
/// [`Store::commit`]).
#[async_trait]
pub trait EventStore: Send + Sync + 'static {
    /// Newest first (order of writing), at most `filter.limit`.
    async fn list_health_events(
        &self,
        filter: &EventFilter,
    ) -> Result<Vec<HealthEvent>, StoreError> {
        self.list_health_events_before(filter, None).await
    }
    /// [`EventStore::list_health_events`] of only the events written before
    /// the one with id `before`; an id that names no event lists nothing.
    async fn list_health_events_before(
        &self,
        filter: &EventFilter,
        before: Option<&str>,
    ) -> Result<Vec<HealthEvent>, StoreError>;
    /// Whether an event of `event_type` is stored for this runtime and
    /// container. A read only: a caller that writes the event when this
    /// says false must not race another writer of the same event.
    async fn has_health_event(
        &self,
        runtime_id: &str,
        container_id: &str,
        event_type: HealthEventType,
    ) -> Result<bool, StoreError>;
    /// Newest first (order of writing), at most `limit`.
    async fn list_notifications(&self, limit: u32) -> Result<Vec<Notification>, StoreError> {
        self.list_notifications_before(limit, None).await
    }
    /// [`EventStore::list_notifications`] of only the notifications written
    /// before the one with id `before`; an id that names none lists nothing.
    async fn list_notifications_before(
        &self,
        limit: u32,
        before: Option<&str>,
    ) -> Result<Vec<Notification>, StoreError>;
}

/// The transactional outbox (written through [`Store::commit`]).
#[async_trait]
pub trait OutboxStore: Send + Sync + 'static {
    /// The oldest `limit` messages (seq ascending), failed ones included.
    /// Takes no lock: one relay at a time.
    async fn outbox_pending(&self, limit: u32) -> Result<Vec<OutboxRow>, StoreError>;
    /// Deletes the messages the relay has published; unknown seqs are
    /// ignored.
    async fn outbox_delete(&self, seqs: &[i64]) -> Result<(), StoreError>;
    /// Counts a failed publish of message `seq` (`attempts` + 1) and keeps
    /// `error`; an unknown seq is ignored.
    async fn outbox_failed(&self, seq: i64, error: &str) -> Result<(), StoreError>;
    /// The outbox's identity and the highest seq handed out so far.
    async fn outbox_identity(&self) -> Result<OutboxIdentity, StoreError>;
    /// Replaces the identity with a new random id and returns it: for a
    /// database found behind the mark Redis keeps for it (restored from a
    /// backup), whose next seqs the old mark would hide.
    async fn outbox_new_identity(&self) -> Result<String, StoreError>;
}

/// Webhook delivery queues, one per webhook, and the delivery log
/// (written through [`Store::commit`]).
#[async_trait]
pub trait WebhookStore: Send + Sync + 'static {
    /// The oldest pending delivery of `webhook` (lowest seq), if any: the
    /// only one that may be sent. Takes no lock: one loop per webhook.
    async fn webhook_head(&self, webhook: &str) -> Result<Option<WebhookDelivery>, StoreError>;
    /// Marks delivery `seq` delivered at `at_ms` (`attempts` + 1), in one
    /// statement; an unknown or already delivered seq is ignored.
    async fn webhook_delivered(&self, seq: i64, at_ms: i64) -> Result<(), StoreError>;
    /// Counts a failed attempt of delivery `seq` (`attempts` + 1) and keeps
    /// `error` and `at_ms`; an unknown or delivered seq is ignored.
    async fn webhook_failed(&self, seq: i64, error: &str, at_ms: i64) -> Result<(), StoreError>;
    /// How many deliveries of `webhook` are pending, counted up to `cap`.
    async fn webhook_pending_count(&self, webhook: &str, cap: u32) -> Result<u64, StoreError>;
    /// Newest first (order of writing), at most `limit`, pending and
    /// delivered; only `webhook`'s when given.
    async fn list_webhook_deliveries(
        &self,
        webhook: Option<&str>,
        limit: u32,
    ) -> Result<Vec<WebhookDelivery>, StoreError>;
    /// Deletes `webhook`'s delivered rows delivered before
    /// `delivered_before_ms`, and those beyond the newest `keep` delivered
    /// ones; pending rows stay. Returns how many went.
    async fn prune_webhook_deliveries(
        &self,
        webhook: &str,
        delivered_before_ms: i64,
        keep: u32,
    ) -> Result<u64, StoreError>;
}

/// The registry watcher's memory: observations and rejected digests
/// (written through [`Store::commit`]).
#[async_trait]
pub trait WatchStore: Send + Sync + 'static {
    async fn get_observation(&self, template: &str) -> Result<Option<Observation>, StoreError>;
    async fn is_rejected(&self, template: &str, digest: &str) -> Result<bool, StoreError>;
}

/// Rollouts and their targets (written through [`Store::commit`]).
#[async_trait]
pub trait RolloutStore: Send + Sync + 'static {
    /// The rollout and all its targets, by position (then runtime id), read
    /// at one point in time.
    async fn get_rollout(
        &self,
        id: &str,
    ) -> Result<Option<(RolloutRow, Vec<RolloutTarget>)>, StoreError>;
    /// Newest first (order of first saving), at most `limit`; only the
    /// template's when `template` is given.
    async fn list_rollouts(
        &self,
        template: Option<&str>,
        limit: u32,
    ) -> Result<Vec<RolloutRow>, StoreError>;
    /// Every rollout in state `running` or `paused`, oldest first.
    async fn active_rollouts(&self) -> Result<Vec<RolloutRow>, StoreError>;
}

/// Plugins and their update queue (written through [`Store::commit`],
/// but for the sweep's bookkeeping, [`PluginStore::mark_plugins_resolved`]).
#[async_trait]
pub trait PluginStore: Send + Sync + 'static {
    async fn get_plugin(
        &self,
        runtime_id: &str,
        name: &str,
    ) -> Result<Option<PluginRecord>, StoreError>;
    /// By runtime id, then name; only the runtime's when given.
    async fn list_plugins(&self, runtime_id: Option<&str>)
        -> Result<Vec<PluginRecord>, StoreError>;
    async fn get_plugin_update(&self, id: &str) -> Result<Option<PluginUpdate>, StoreError>;
    /// The pending update of one plugin of one runtime, if any.
    async fn pending_plugin_update(
        &self,
        runtime_id: &str,
        plugin: &str,
    ) -> Result<Option<PluginUpdate>, StoreError>;
    /// Newest first (order of first writing), at most `filter.limit`.
    async fn list_plugin_updates(
        &self,
        filter: &PluginUpdateFilter,
    ) -> Result<Vec<PluginUpdate>, StoreError>;
    /// Sets `resolved_at_ms` to `at_ms` and clears `last_error` of every
    /// plugin in `keys` (runtime id, name), all in ONE transaction, however
    /// many; a key with no plugin is ignored. A sweep's record of the
    /// plugins it resolved, in one write instead of one per plugin.
    async fn mark_plugins_resolved(
        &self,
        keys: &[(String, String)],
        at_ms: i64,
    ) -> Result<(), StoreError>;
}

/// What a change-log row says changed (see [`ChangeStore`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ChangeKind {
    /// A runtime record; key: the runtime id.
    Runtime,
    /// An operation row; key: the operation id.
    Operation,
    /// A health event; key: its id.
    Event,
    /// A notification intent; key: its id.
    Notification,
    /// A pin set or removed; key: the template name.
    Pin,
    /// A template put or deleted; key: its name.
    Template,
    /// A rollout or its targets; key: the rollout id.
    Rollout,
    /// A plugin row put or deleted; key: `<runtime>/<name>`.
    Plugin,
    /// A queued plugin update; key: its id.
    PluginUpdate,
}

impl ChangeKind {
    pub const ALL: [ChangeKind; 9] = [
        ChangeKind::Runtime,
        ChangeKind::Operation,
        ChangeKind::Event,
        ChangeKind::Notification,
        ChangeKind::Pin,
        ChangeKind::Template,
        ChangeKind::Rollout,
        ChangeKind::Plugin,
        ChangeKind::PluginUpdate,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            ChangeKind::Runtime => "runtime",
            ChangeKind::Operation => "operation",
            ChangeKind::Event => "event",
            ChangeKind::Notification => "notification",
            ChangeKind::Pin => "pin",
            ChangeKind::Template => "template",
            ChangeKind::Rollout => "rollout",
            ChangeKind::Plugin => "plugin",
            ChangeKind::PluginUpdate => "plugin_update",
        }
    }

    pub fn parse(s: &str) -> Option<ChangeKind> {
        ChangeKind::ALL.into_iter().find(|k| k.as_str() == s)
    }
}

/// One row of the change log: something a committed write changed. Rows
/// are written in the transaction of what they describe, and `seq` order
/// is commit order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChangeRow {
    pub seq: i64,
    pub at_ms: i64,
    pub kind: ChangeKind,
    pub key: String,
    pub runtime_id: Option<String>,
}

/// A change-log row before it is written (no seq yet).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewChangeRow {
    pub at_ms: i64,
    pub kind: ChangeKind,
    pub key: String,
    pub runtime_id: Option<String>,
}

impl NewChangeRow {
    /// The rows of a write outside [`Store::commit`] (a template put or
    /// deleted, a pin seeded or removed): each named thing, then the
    /// operation, at the operation's time.
    pub fn for_write(named: &[(ChangeKind, &str)], op: &Operation) -> Vec<NewChangeRow> {
        let at_ms = op.finished_at_ms.unwrap_or(op.started_at_ms);
        let mut rows: Vec<NewChangeRow> = named
            .iter()
            .map(|(kind, name)| NewChangeRow {
                at_ms,
                kind: *kind,
                key: name.to_string(),
                runtime_id: None,
            })
            .collect();
        rows.extend(
            Change {
                operation: Some(op),
                ..Change::default()
            }
            .change_rows(),
        );
        rows
    }
}

impl Change<'_> {
    /// The change-log rows this change writes, in order: runtime,
    /// operation, pin, rollout, plugin, plugin update, each health event,
    /// each notification. `at_ms` is the operation's time when there is
    /// one, else the time the part itself carries.
    pub fn change_rows(&self) -> Vec<NewChangeRow> {
        let op_ms = self
            .operation
            .map(|op| op.finished_at_ms.unwrap_or(op.started_at_ms));
        let mut rows = Vec::new();
        let mut push = |at: i64, kind: ChangeKind, key: String, runtime_id: Option<String>| {
            rows.push(NewChangeRow {
                at_ms: op_ms.unwrap_or(at),
                kind,
                key,
                runtime_id,
            });
        };
        if let Some(r) = self.runtime {
            push(
                r.updated_at_ms,
                ChangeKind::Runtime,
                r.id.clone(),
                Some(r.id.clone()),
            );
        }
        if let Some(op) = self.operation {
            push(
                op.started_at_ms,
                ChangeKind::Operation,
                op.id.clone(),
                op.runtime_id.clone(),
            );
        }
        if let Some(p) = self.pin {
            push(p.entry.at_ms, ChangeKind::Pin, p.pin.template.clone(), None);
        }
        if let Some(r) = self.rollout {
            push(
                r.rollout.updated_at_ms,
                ChangeKind::Rollout,
                r.rollout.id.clone(),
                None,
            );
        }
        match self.plugin {
            Some(PluginChange::Put(p)) => push(
                p.installed_at_ms.or(p.resolved_at_ms).unwrap_or(0),
                ChangeKind::Plugin,
                format!("{}/{}", p.runtime_id, p.name),
                Some(p.runtime_id.clone()),
            ),
            Some(PluginChange::Delete { runtime_id, name }) => push(
                0,
                ChangeKind::Plugin,
                format!("{runtime_id}/{name}"),
                Some(runtime_id.to_string()),
            ),
            None => {}
        }
        if let Some(u) = self.plugin_update {
            push(
                u.updated_at_ms,
                ChangeKind::PluginUpdate,
                u.id.clone(),
                Some(u.runtime_id.clone()),
            );
        }
        for e in self.health_events {
            push(
                e.at_ms,
                ChangeKind::Event,
                e.id.clone(),
                Some(e.runtime_id.clone()),
            );
        }
        for n in self.notifications {
            let runtime = n.payload.get("runtime_id").cloned();
            push(
                n.created_at_ms,
                ChangeKind::Notification,
                n.id.clone(),
                runtime,
            );
        }
        rows
    }
}

/// The change log behind the change stream (rows written by every write
/// path, in the transaction of what they describe).
#[async_trait]
pub trait ChangeStore: Send + Sync + 'static {
    /// Up to `limit` rows with `seq > after`, ascending.
    async fn list_changes_after(
        &self,
        after: i64,
        limit: u32,
    ) -> Result<Vec<ChangeRow>, StoreError>;
    /// The lowest and highest seq still stored; `None` when the log is
    /// empty.
    async fn change_bounds(&self) -> Result<Option<(i64, i64)>, StoreError>;
    /// Deletes every row with `seq < before`; returns how many went.
    async fn prune_changes_before(&self, before: i64) -> Result<u64, StoreError>;
}

/// The whole store: every role, and the one write path of decisions.
#[async_trait]
pub trait Store:
    TemplateStore
    + RuntimeStore
    + EventStore
    + OutboxStore
    + WatchStore
    + RolloutStore
    + PluginStore
    + WebhookStore
    + ChangeStore
{
    /// Writes every part of `change` in ONE transaction: all of it or
    /// nothing. `Conflict` (and nothing written) when `change.job_result`'s
    /// job id already has a result, or when a health event, notification
    /// or webhook delivery id is already stored. An empty change writes nothing.
    async fn commit(&self, change: &Change<'_>) -> Result<(), StoreError>;

    /// [`Store::commit`] of a `Change` with only a record and its operation.
    async fn record(
        &self,
        runtime: Option<&RuntimeRecord>,
        op: &Operation,
    ) -> Result<(), StoreError> {
        self.commit(&Change {
            runtime,
            operation: Some(op),
            ..Change::default()
        })
        .await
    }
}
