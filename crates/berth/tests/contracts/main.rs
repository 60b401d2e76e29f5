//! The contract suites: every port's one suite, run against its real
//! adapter and its fake, and the adapters' own tests against the real
//! Docker engine, registry, Redis, PostgreSQL and git.

#[path = "../common/mod.rs"]
mod common;

mod bus;
mod clock;
mod docker_engine;
mod engine;
mod git;
mod probe;
mod redis_bus;
mod registry;
mod registry_client;
mod state_fs;
mod store;
mod store_crash;
