//! The reconcile planner on 100,000 records against 100,000 containers.
//! `cargo bench -p berth-core --bench planner`; under `cargo test` it runs
//! a small smoke size.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::time::{Duration, Instant};

use berth_core::container::{LABEL_OWNER, LABEL_RUNTIME_ID, LABEL_TEMPLATE};
use berth_core::reconcile::{plan, ObservedContainer, PlanInput, RestartBackoff};
use berth_core::runtime::RuntimeRecord;
use berth_core::status::RuntimeStatus;

pub fn main() {
    let benching = std::env::args().any(|a| a == "--bench");
    let n = if benching { 100_000 } else { 1_000 };
    let now = 10_000_000;
    // A realistic mix: most match, 1% vanished, 1% exited, 1% unknown (adopt).
    let mut records = Vec::with_capacity(n);
    let mut containers = Vec::with_capacity(n);
    for i in 0..n {
        let id = format!("rt-{i:06}");
        let mut rec = RuntimeRecord::new(&id, "engine", BTreeMap::new(), 0);
        rec.status = RuntimeStatus::Running;
        rec.container_id = Some(format!("c{i:06}"));
        if i % 100 != 1 {
            records.push(rec);
        }
        if i % 100 != 0 {
            containers.push(ObservedContainer {
                id: format!("c{i:06}"),
                labels: BTreeMap::from([
                    (LABEL_OWNER.to_string(), "berth".to_string()),
                    (LABEL_RUNTIME_ID.to_string(), id.clone()),
                    (LABEL_TEMPLATE.to_string(), "engine".to_string()),
                ]),
                running: i % 100 != 2,
                exit_code: Some(1),
                created_at_ms: Some(0),
            });
        }
    }
    let in_flight = HashSet::new();
    let policies = HashMap::new();
    let restarts = HashMap::new();
    let input = PlanInput {
        owner: "berth",
        records: &records,
        containers: &containers,
        in_flight: &in_flight,
        policies: &policies,
        restarts: &restarts,
        backoff: RestartBackoff::default(),
        now_ms: now,
        grace_ms: 30_000,
    };
    let runs = if benching { 15 } else { 2 };
    let mut times: Vec<Duration> = Vec::new();
    let mut actions = 0;
    for _ in 0..runs {
        let t0 = Instant::now();
        let p = plan(&input);
        times.push(t0.elapsed());
        actions = p.len();
    }
    times.sort();
    assert!(
        actions >= 3 * n / 100 - 3,
        "the plan found the drift: {actions}"
    );
    println!(
        "planner: {} records vs {} containers → {actions} actions; median {:.1} ms, max {:.1} ms over {runs} runs (target ≤ 100 ms)",
        records.len(),
        containers.len(),
        times[times.len() / 2].as_secs_f64() * 1e3,
        times[times.len() - 1].as_secs_f64() * 1e3,
    );
}
