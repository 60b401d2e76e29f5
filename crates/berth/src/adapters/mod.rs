//! The real implementations of the ports.

pub mod docker;
pub mod redis_bus;
pub mod store;
