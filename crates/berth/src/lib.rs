//! berth: a runtime manager for long-lived, stateful containers on Docker.
//!
//! Layout (see ARCHITECTURE.md): `ports` are the traits for outside systems,
//! `adapters` implement them, `services` are the use cases, and `http` and
//! `cli` are the entry points that call the services.

pub mod adapters;
pub mod app;
pub mod cli;
pub mod config;
pub mod error;
pub mod fakes;
pub mod heap;
pub mod http;
pub mod metrics;
pub mod ports;
pub mod services;
pub mod streams;
pub mod template_doc;
