//! The real implementations of the ports.

pub mod docker;
pub mod git;
pub mod http_probe;
pub mod redis_bus;
pub mod registry;
pub mod state_fs;
pub mod store;
pub mod webhook;
