//! State stores: the crash-consistent files a runtime keeps in its state
//! directory, their on-disk format, the recovery planner and the readiness
//! verdict. Pure: the shell reads the bytes, this module decides.
//!
//! The format is documented for runtime authors in `docs/state-store.md`.

pub mod descriptor;
pub mod format;
pub mod plan;
pub mod readiness;
pub mod roll_forward;

pub use descriptor::{
    schema_label, understood_versions, validate_stores, StoreDescriptor, StoreReadiness,
    StoreRecovery,
};
pub use format::{
    decode_receipts, encode_receipt, Envelope, EnvelopeHead, Manifest, ManifestEntry, Receipt,
    ReceiptLog, ReceiptRecord, StoreFileFact, MANIFEST_SCHEMA_VERSION,
};
pub use plan::{
    plan, ActionKind, Impact, ManifestFact, PlanInput, Reason, RecoveryPlan, StoreAction,
};
pub use readiness::{readiness, ContainerReadiness, Readiness, ValidatorOutcome};
pub use roll_forward::{
    is_manifest_temp, locate, parse_staged_file_name, roll_forward, staged_file_name, Location,
    RollStep, StagedFact,
};
