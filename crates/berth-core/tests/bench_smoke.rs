//! The planner benchmark at its smoke size (`cargo bench` runs the full
//! size), so a benchmark that breaks fails the suite.

#[path = "../benches/planner.rs"]
mod planner;

#[test]
fn planner_smoke() {
    planner::main();
}
