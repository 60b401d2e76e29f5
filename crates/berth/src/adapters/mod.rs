//! The real implementations of the ports.

pub mod docker;
pub mod store;
