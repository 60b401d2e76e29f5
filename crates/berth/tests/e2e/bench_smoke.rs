//! Every benchmark at its smoke size (`cargo bench` runs the full sizes):
//! each one's `main` is run as a test, so a benchmark that breaks fails the
//! suite without the suite building a binary per benchmark.

// Each benchmark loads its own copy of `benches/common`, as its binary does.
#![allow(clippy::duplicate_mod)]

#[path = "../../benches/api_scale.rs"]
mod api_scale;
#[path = "../../benches/console_render.rs"]
mod console_render;
#[path = "../../benches/fleet_start.rs"]
mod fleet_start;
#[path = "../../benches/host_drift.rs"]
mod host_drift;
#[path = "../../benches/plugin_sweep.rs"]
mod plugin_sweep;
#[path = "../../benches/start_overhead.rs"]
mod start_overhead;
#[path = "../../benches/store_batch.rs"]
mod store_batch;
#[path = "../../benches/stream_latency.rs"]
mod stream_latency;
#[path = "../../benches/watch_tick.rs"]
mod watch_tick;

#[test]
fn api_scale_smoke() {
    api_scale::main();
}

#[test]
fn console_render_smoke() {
    console_render::main();
}

#[test]
fn fleet_start_smoke() {
    fleet_start::main();
}

#[test]
fn host_drift_smoke() {
    host_drift::main();
}

#[test]
fn plugin_sweep_smoke() {
    plugin_sweep::main();
}

#[test]
fn start_overhead_smoke() {
    start_overhead::main();
}

#[test]
fn store_batch_smoke() {
    store_batch::main();
}

#[test]
fn stream_latency_smoke() {
    stream_latency::main();
}

#[test]
fn watch_tick_smoke() {
    watch_tick::main();
}
