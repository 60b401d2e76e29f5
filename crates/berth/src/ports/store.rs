//! Storage of templates, pins, runtime records and the operation log.
//!
//! Every method that changes something writes its operation row in the same
//! transaction, so the log can never disagree with the records. Adapters:
//! `adapters::store::sqlite` and `adapters::store::postgres`, both held to
//! one contract suite (`tests/store_contract.rs`).

use async_trait::async_trait;
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
    /// id) in one transaction.
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
}
