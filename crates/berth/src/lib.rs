//! berth: a runtime manager for long-lived, stateful containers on Docker.
//!
//! Layout (see ARCHITECTURE.md): `ports` are the traits for outside systems,
//! `adapters` implement them, `services` are the use cases, and `http` and
//! `cli` are the entry points that call the services.

pub mod adapters;
pub mod ports;
pub mod template_doc;
pub mod error;
pub mod metrics;
pub mod services;
