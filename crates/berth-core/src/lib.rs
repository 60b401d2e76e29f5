//! berth's functional core: domain types and decisions, with no I/O.
//!
//! Nothing here touches the network, the disk, Docker or a clock; time is
//! passed in as milliseconds since the epoch. Adapters and services in the
//! `berth` crate feed this core with facts and carry out what it decides.

pub mod change_feed;
pub mod container;
pub mod duration;
pub mod error;
pub mod error_chain;
pub mod event;
pub mod health_gate;
pub mod id;
pub mod image;
pub mod operation;
pub mod outcome_retry;
pub mod pin;
pub mod plugin;
pub mod reconcile;
pub mod rollout;
pub mod runtime;
pub mod status;
pub mod store;
pub mod template;

pub use error::{ErrorCode, ParseStateError, ValidationError};
