//! End to end: a real berth server (in-process or the real binary) on
//! the real Docker engine, the local registry, PostgreSQL or SQLite, Redis
//! and git, driven over HTTP, the CLI and the streams.

#[path = "../common/mod.rs"]
mod common;

mod bench_smoke;
mod cli_e2e;
mod config_boot;
mod crash;
mod fuzz_api;
mod host_drift;
mod lifecycle_api;
mod metrics;
mod pages;
mod plugins;
mod registry_drift;
mod shutdown;
mod stores;
mod stream;
mod streams;
mod tls;
mod webhooks;
