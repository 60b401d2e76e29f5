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
//! one contract suite (`tests/store_contract.rs`).

use async_trait::async_trait;
use berth_core::event::{HealthEvent, HealthEventType, JobResult, Notification};
use berth_core::operation::{Operation, OperationKind};
use berth_core::pin::{Pin, PinHistoryEntry};
use berth_core::runtime::RuntimeRecord;
use berth_core::status::RuntimeStatus;
use berth_core::template::Template;

#[derive(Debug, thiserror::Error)]
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
    /// Failed publish attempts so far (see [`Store::outbox_failed`]).
    pub attempts: i64,
}

/// Everything one change writes, in one transaction (see [`Store::commit`]).
/// Build it with `..Change::default()` for the parts a change does not have.
#[derive(Debug, Clone, Copy, Default)]
pub struct Change<'a> {
    /// Upserted by id; what was written is what `get_runtime` returns.
    pub runtime: Option<&'a RuntimeRecord>,
    /// Upserted by id (an update keeps the row's place in the log).
    pub operation: Option<&'a Operation>,
    /// Appended; ids are unique.
    pub health_events: &'a [HealthEvent],
    /// Appended; ids are unique.
    pub notifications: &'a [Notification],
    /// Inserted once per job id.
    pub job_result: Option<&'a JobResult>,
    /// Appended, in slice order.
    pub outbox: &'a [OutboxMessage],
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
    /// `running`, `paused`, `halted`, `completed` or `aborted`; stored as
    /// given ([`Store::active_rollouts`] reads `running` and `paused`).
    pub state: String,
    pub batch_size: u32,
    pub max_failures: u32,
    pub failures: u32,
    /// Whether a halt restores the pin to `from_digest`.
    pub revert_pin: bool,
    /// Who started it: an operation source (`image_watch`, `api`, …).
    pub source: String,
    pub message: Option<String>,
    pub created_at_ms: i64,
    pub updated_at_ms: i64,
}

/// One runtime's place and progress in a rollout; keyed by the rollout id
/// and `runtime_id`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RolloutTarget {
    pub runtime_id: String,
    /// The order of updating, ascending.
    pub position: u32,
    /// `pending`, `updated`, `failed` or `skipped`; stored as given.
    pub state: String,
    pub error: Option<String>,
    pub updated_at_ms: i64,
}

#[async_trait]
pub trait Store: Send + Sync + 'static {
    // --- templates -------------------------------------------------------

    /// Inserts or replaces; returns true when the template is new.
    async fn put_template(&self, template: &Template, op: &Operation) -> Result<bool, StoreError>;
    async fn get_template(&self, name: &str) -> Result<Option<Template>, StoreError>;
    /// Sorted by name.
    async fn list_templates(&self) -> Result<Vec<Template>, StoreError>;
    /// Deletes the template and its current pin (the pin history stays).
    /// `Conflict` while a runtime that is not `removed` uses it; returns
    /// false when there was no such template (and writes nothing).
    async fn delete_template(&self, name: &str, op: &Operation) -> Result<bool, StoreError>;

    // --- pins --------------------------------------------------------------

    async fn get_pin(&self, template: &str) -> Result<Option<Pin>, StoreError>;
    async fn list_pins(&self) -> Result<Vec<Pin>, StoreError>;
    /// Sets the pin and appends `entry` to the history.
    async fn promote_pin(
        &self,
        pin: &Pin,
        entry: &PinHistoryEntry,
        op: &Operation,
    ) -> Result<(), StoreError>;
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

    // --- runtimes and operations -----------------------------------------

    async fn get_runtime(&self, id: &str) -> Result<Option<RuntimeRecord>, StoreError>;
    /// Sorted by id.
    async fn list_runtimes(&self, filter: &RuntimeFilter)
        -> Result<Vec<RuntimeRecord>, StoreError>;
    /// Upserts the runtime record (when given) and the operation row (by
    /// id) in one transaction: [`Store::commit`] of a `Change` with only
    /// these two.
    async fn record(
        &self,
        runtime: Option<&RuntimeRecord>,
        op: &Operation,
    ) -> Result<(), StoreError>;
    /// Newest first.
    async fn list_operations(&self, filter: &OperationFilter)
        -> Result<Vec<Operation>, StoreError>;
    /// Crash recovery at boot: every operation still `in_progress` becomes a
    /// failure with `code`/`message`; returns the operations it changed.
    async fn fail_in_progress_operations(
        &self,
        code: &str,
        message: &str,
        now_ms: i64,
    ) -> Result<Vec<Operation>, StoreError>;

    // --- changes with what they report ------------------------------------

    /// Writes every part of `change` in ONE transaction: all of it or
    /// nothing. `Conflict` (and nothing written) when `change.job_result`'s
    /// job id already has a result, or when a health event or notification
    /// id is already stored. An empty change writes nothing.
    async fn commit(&self, change: &Change<'_>) -> Result<(), StoreError>;

    // --- health events -------------------------------------------------

    /// Newest first (order of writing), at most `filter.limit`.
    async fn list_health_events(
        &self,
        filter: &EventFilter,
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

    // --- notifications and job results ---------------------------------

    /// Newest first (order of writing), at most `limit`.
    async fn list_notifications(&self, limit: u32) -> Result<Vec<Notification>, StoreError>;
    async fn get_job_result(&self, job_id: &str) -> Result<Option<JobResult>, StoreError>;

    // --- outbox ------------------------------------------------------------

    /// The oldest `limit` messages (seq ascending), failed ones included.
    /// Takes no lock: one relay at a time.
    async fn outbox_pending(&self, limit: u32) -> Result<Vec<OutboxRow>, StoreError>;
    /// Deletes the messages the relay has published; unknown seqs are
    /// ignored.
    async fn outbox_delete(&self, seqs: &[i64]) -> Result<(), StoreError>;
    /// Counts a failed publish of message `seq` (`attempts` + 1) and keeps
    /// `error`; an unknown seq is ignored.
    async fn outbox_failed(&self, seq: i64, error: &str) -> Result<(), StoreError>;

    // --- registry watcher ----------------------------------------------------
    //
    // Bookkeeping of the watcher: written without an operation row (the
    // service records an operation when it acts on what it saw).

    async fn get_observation(&self, template: &str) -> Result<Option<Observation>, StoreError>;
    /// Inserts or replaces the template's observation.
    async fn put_observation(&self, obs: &Observation) -> Result<(), StoreError>;
    /// Forgets the template's observation; nothing to forget is no error.
    async fn delete_observation(&self, template: &str) -> Result<(), StoreError>;
    /// Marks `digest` as refused for `template` (e.g. a rollout to it
    /// halted), so the watcher does not offer it again. Rejecting it again
    /// replaces `reason` and `at_ms`.
    async fn reject_digest(
        &self,
        template: &str,
        digest: &str,
        reason: &str,
        at_ms: i64,
    ) -> Result<(), StoreError>;
    async fn is_rejected(&self, template: &str, digest: &str) -> Result<bool, StoreError>;
    /// Lifts a rejection; none to lift is no error.
    async fn clear_rejection(&self, template: &str, digest: &str) -> Result<(), StoreError>;

    // --- rollouts ------------------------------------------------------------

    /// Upserts `rollout` (by id; an update keeps its place in
    /// [`Store::list_rollouts`] and replaces every other column), upserts
    /// each of `targets` (by rollout id and runtime id; stored targets not
    /// given stay as they are) and writes `change`, all in ONE transaction:
    /// when `change` is refused (`Conflict`, as in [`Store::commit`]),
    /// nothing of the rollout is written either.
    async fn save_rollout(
        &self,
        rollout: &RolloutRow,
        targets: &[RolloutTarget],
        change: &Change<'_>,
    ) -> Result<(), StoreError>;
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
