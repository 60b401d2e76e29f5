//! The readiness verdict: container health, the recovery plan and the
//! template's store validator, combined.

use super::plan::{Impact, RecoveryPlan, StoreAction};

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ContainerReadiness {
    /// No container, or it is not running.
    NotRunning,
    /// Running but its health check fails (the string says how).
    Unhealthy(String),
    Healthy,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ValidatorOutcome {
    /// The template has no `store_validator`.
    NotConfigured,
    /// Not run (the container does not run, or the plan already blocks).
    Skipped,
    Passed { lines: Vec<String> },
    Failed { exit_code: i64, lines: Vec<String> },
    /// It could not be run, or did not finish in time.
    Error(String),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Readiness {
    /// False exactly when `impact` is `Blocked`.
    pub ok: bool,
    /// Stable snake_case: `ready`, `degraded`, `container_not_running`,
    /// `container_unhealthy`, `store_recovery_required`,
    /// `store_validator_failed`.
    pub reason: &'static str,
    pub impact: Impact,
    pub actions: Vec<StoreAction>,
    pub diagnostics: Vec<String>,
}

pub fn readiness(
    plan: &RecoveryPlan,
    container: &ContainerReadiness,
    validator: &ValidatorOutcome,
) -> Readiness {
    todo!("{plan:?} {container:?} {validator:?}")
}
