//! The recovery planner: from the descriptors, the manifest, the receipt
//! log and what is on disk, one action per store with a reason, and the
//! impact on readiness. Reading never changes anything; berth applies the
//! plan when it (re)creates the container.

use std::collections::BTreeMap;

use super::descriptor::StoreDescriptor;
use super::format::{Manifest, ReceiptLog, StoreFileFact};

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Impact {
    None,
    Degraded,
    Blocked,
}

impl Impact {
    pub const fn as_str(self) -> &'static str {
        match self {
            Impact::None => "none",
            Impact::Degraded => "degraded",
            Impact::Blocked => "blocked",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ActionKind {
    None,
    /// Nothing berth can do: the runtime must write the store.
    BlockReadiness,
    /// Move the file aside, clear the entry; the runtime rebuilds it.
    Rebuild,
    /// Move the file aside (never delete it).
    Quarantine,
}

impl ActionKind {
    pub const fn as_str(self) -> &'static str {
        match self {
            ActionKind::None => "none",
            ActionKind::BlockReadiness => "block_readiness",
            ActionKind::Rebuild => "rebuild",
            ActionKind::Quarantine => "quarantine",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Reason {
    /// No committed file: never written, or the file vanished.
    Missing,
    /// The file is not what the manifest names and was written by a batch
    /// that did not commit.
    TornBatch,
    /// The file is not what the manifest names, and no uncommitted batch
    /// explains it.
    HashMismatch,
    /// The file is not a store envelope.
    Corrupt,
    /// The file holds a schema newer than the runtime's image understands.
    FutureSchema,
    /// A blocking store's committed data belongs to an earlier run.
    StaleRunId,
}

impl Reason {
    pub const fn as_str(self) -> &'static str {
        match self {
            Reason::Missing => "missing",
            Reason::TornBatch => "torn_batch",
            Reason::HashMismatch => "hash_mismatch",
            Reason::Corrupt => "corrupt",
            Reason::FutureSchema => "future_schema",
            Reason::StaleRunId => "stale_run_id",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoreAction {
    pub kind: ActionKind,
    pub store: String,
    /// `None` exactly when `kind` is `None`.
    pub reason: Option<Reason>,
    /// A sentence for a person (empty for `None`).
    pub detail: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ManifestFact {
    Absent,
    /// Unreadable, or a newer format; the string says why.
    Corrupt(String),
    Present(Manifest),
}

#[derive(Debug, Clone)]
pub struct PlanInput<'a> {
    pub descriptors: &'a [StoreDescriptor],
    /// The schema version the runtime's image understands, by store name;
    /// a store not listed falls back to its descriptor's.
    pub understood: &'a BTreeMap<String, u32>,
    pub manifest: &'a ManifestFact,
    pub receipts: &'a ReceiptLog,
    /// By store name; a store not listed is `Absent`.
    pub files: &'a BTreeMap<String, StoreFileFact>,
    /// The runtime's current run; `None` when it has none yet.
    pub current_run_id: Option<&'a str>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecoveryPlan {
    /// The worst impact of any action.
    pub impact: Impact,
    /// False when the manifest is corrupt.
    pub manifest_healthy: bool,
    /// One per declared store, in declaration order.
    pub actions: Vec<StoreAction>,
}

pub fn plan(input: &PlanInput<'_>) -> RecoveryPlan {
    todo!("{input:?}")
}
