//! The services on fakes: every use case driven through the same
//! services as the API, CLI and loops, on fake ports and paused time, and
//! the command line's parsing. No outside service is needed.

#[path = "../world/mod.rs"]
mod world;

mod cli;
mod console;
mod crash_matrix;
mod lifecycle;
mod plugins;
mod reconciler;
mod roles;
mod rollouts;
mod services;
mod stores;
mod stream;
mod watcher;
mod webhooks;
