//! Storage of templates, pins, runtime records, the operation log, health
//! events, notification intents, stream job results and the transactional
//! outbox.
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
}
