//! The readiness verdict: container health, the recovery plan and the
//! template's store validator, combined.

use super::plan::{ActionKind, Impact, RecoveryPlan, StoreAction};

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
    Passed {
        lines: Vec<String>,
    },
    Failed {
        exit_code: i64,
        lines: Vec<String>,
    },
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

/// Combines the container's health, the recovery plan and the validator's
/// outcome. The first that applies gives the reason: the container not
/// running or unhealthy, then a plan that blocks, then a failed validator,
/// then a degraded plan; otherwise `ready`.
///
/// Diagnostics: one line per store with an action, then the validator's
/// output lines as they are, then why the validator failed, then why the
/// container is unhealthy.
pub fn readiness(
    plan: &RecoveryPlan,
    container: &ContainerReadiness,
    validator: &ValidatorOutcome,
) -> Readiness {
    let validator_failed = matches!(
        validator,
        ValidatorOutcome::Failed { .. } | ValidatorOutcome::Error(_)
    );
    let (impact, reason) = match container {
        ContainerReadiness::NotRunning => (Impact::Blocked, "container_not_running"),
        ContainerReadiness::Unhealthy(_) => (Impact::Blocked, "container_unhealthy"),
        ContainerReadiness::Healthy => match plan.impact {
            Impact::Blocked => (Impact::Blocked, "store_recovery_required"),
            _ if validator_failed => (Impact::Blocked, "store_validator_failed"),
            Impact::Degraded => (Impact::Degraded, "degraded"),
            Impact::None => (Impact::None, "ready"),
        },
    };

    let mut diagnostics: Vec<String> = plan.actions.iter().filter_map(action_line).collect();
    match validator {
        ValidatorOutcome::NotConfigured | ValidatorOutcome::Skipped => {}
        ValidatorOutcome::Passed { lines } => diagnostics.extend(lines.iter().cloned()),
        ValidatorOutcome::Failed { exit_code, lines } => {
            diagnostics.extend(lines.iter().cloned());
            diagnostics.push(format!("store validator exited with {exit_code}"));
        }
        ValidatorOutcome::Error(msg) => diagnostics.push(format!("store validator: {msg}")),
    }
    if let ContainerReadiness::Unhealthy(why) = container {
        diagnostics.push(why.clone());
    }

    Readiness {
        ok: impact != Impact::Blocked,
        reason,
        impact,
        actions: plan.actions.clone(),
        diagnostics,
    }
}

/// `"<store>: <reason> — <detail>"` for a store with an action.
fn action_line(a: &StoreAction) -> Option<String> {
    let reason = a.reason?;
    if a.kind == ActionKind::None {
        return None;
    }
    Some(format!("{}: {} — {}", a.store, reason.as_str(), a.detail))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::plan::{ActionKind, Reason};

    fn act(store: &str, kind: ActionKind, reason: Option<Reason>, detail: &str) -> StoreAction {
        StoreAction {
            kind,
            store: store.to_string(),
            reason,
            detail: detail.to_string(),
        }
    }

    fn plan_with(impact: Impact) -> RecoveryPlan {
        let mut actions = vec![act("a", ActionKind::None, None, "")];
        match impact {
            Impact::None => {}
            Impact::Degraded => actions.push(act(
                "b",
                ActionKind::Rebuild,
                Some(Reason::Corrupt),
                "store b is broken",
            )),
            Impact::Blocked => actions.push(act(
                "c",
                ActionKind::BlockReadiness,
                Some(Reason::Missing),
                "store c is missing",
            )),
        }
        RecoveryPlan {
            impact,
            manifest_healthy: true,
            actions,
        }
    }

    fn lines(l: &[&str]) -> Vec<String> {
        l.iter().map(|s| s.to_string()).collect()
    }

    /// Container, plan impact and validator, in every combination: the
    /// first cause in precedence order gives the reason.
    #[test]
    fn reason_and_impact_for_every_combination() {
        let containers = [
            ContainerReadiness::NotRunning,
            ContainerReadiness::Unhealthy("probe failed".into()),
            ContainerReadiness::Healthy,
        ];
        let validators = [
            ValidatorOutcome::NotConfigured,
            ValidatorOutcome::Skipped,
            ValidatorOutcome::Passed {
                lines: lines(&["fine"]),
            },
            ValidatorOutcome::Failed {
                exit_code: 3,
                lines: lines(&["bad"]),
            },
            ValidatorOutcome::Error("timed out".into()),
        ];
        for container in &containers {
            for impact in [Impact::None, Impact::Degraded, Impact::Blocked] {
                for validator in &validators {
                    let p = plan_with(impact);
                    let r = readiness(&p, container, validator);
                    let validator_failed = matches!(
                        validator,
                        ValidatorOutcome::Failed { .. } | ValidatorOutcome::Error(_)
                    );
                    let (want_impact, want_reason) = match container {
                        ContainerReadiness::NotRunning => {
                            (Impact::Blocked, "container_not_running")
                        }
                        ContainerReadiness::Unhealthy(_) => {
                            (Impact::Blocked, "container_unhealthy")
                        }
                        ContainerReadiness::Healthy if impact == Impact::Blocked => {
                            (Impact::Blocked, "store_recovery_required")
                        }
                        ContainerReadiness::Healthy if validator_failed => {
                            (Impact::Blocked, "store_validator_failed")
                        }
                        ContainerReadiness::Healthy if impact == Impact::Degraded => {
                            (Impact::Degraded, "degraded")
                        }
                        ContainerReadiness::Healthy => (Impact::None, "ready"),
                    };
                    let what = format!("{container:?} {impact:?} {validator:?}");
                    assert_eq!((r.impact, r.reason), (want_impact, want_reason), "{what}");
                    assert_eq!(r.ok, r.impact != Impact::Blocked, "{what}");
                    assert_eq!(r.actions, p.actions, "{what}");
                }
            }
        }
    }

    #[test]
    fn diagnostics_list_actions_then_validator_then_container() {
        let p =
            RecoveryPlan {
                impact: Impact::Blocked,
                manifest_healthy: true,
                actions: vec![
                act("a", ActionKind::None, None, ""),
                act(
                    "launch_state",
                    ActionKind::Quarantine,
                    Some(Reason::FutureSchema),
                    "store launch_state holds schema 2, newer than the 1 this image understands",
                ),
                act("s", ActionKind::Rebuild, Some(Reason::TornBatch), "store s was torn"),
            ],
            };
        let r = readiness(
            &p,
            &ContainerReadiness::Unhealthy("GET /health answered 503".into()),
            &ValidatorOutcome::Failed {
                exit_code: 2,
                lines: lines(&["line one", "line two"]),
            },
        );
        assert_eq!(
            r.diagnostics,
            lines(&[
                "launch_state: future_schema — store launch_state holds schema 2, newer than the 1 this image understands",
                "s: torn_batch — store s was torn",
                "line one",
                "line two",
                "store validator exited with 2",
                "GET /health answered 503",
            ])
        );
        assert_eq!(r.reason, "container_unhealthy");
        assert_eq!(r.actions.len(), 3, "actions keep the None ones");
    }

    #[test]
    fn validator_lines_are_diagnostics_whatever_the_outcome() {
        let p = plan_with(Impact::None);
        let passed = readiness(
            &p,
            &ContainerReadiness::Healthy,
            &ValidatorOutcome::Passed {
                lines: lines(&["3 sessions", "ok"]),
            },
        );
        assert!(passed.ok);
        assert_eq!(passed.reason, "ready");
        assert_eq!(passed.diagnostics, lines(&["3 sessions", "ok"]));

        let error = readiness(
            &p,
            &ContainerReadiness::Healthy,
            &ValidatorOutcome::Error("did not finish in 10s".into()),
        );
        assert!(!error.ok);
        assert_eq!(error.reason, "store_validator_failed");
        assert_eq!(
            error.diagnostics,
            lines(&["store validator: did not finish in 10s"])
        );

        let failed = readiness(
            &p,
            &ContainerReadiness::Healthy,
            &ValidatorOutcome::Failed {
                exit_code: -1,
                lines: vec![],
            },
        );
        assert_eq!(
            failed.diagnostics,
            lines(&["store validator exited with -1"])
        );

        for v in [ValidatorOutcome::NotConfigured, ValidatorOutcome::Skipped] {
            let r = readiness(&p, &ContainerReadiness::Healthy, &v);
            assert!(r.ok);
            assert!(r.diagnostics.is_empty(), "{v:?}");
        }
    }

    #[test]
    fn a_degraded_plan_is_ok_and_says_why() {
        let r = readiness(
            &plan_with(Impact::Degraded),
            &ContainerReadiness::Healthy,
            &ValidatorOutcome::NotConfigured,
        );
        assert!(r.ok);
        assert_eq!((r.impact, r.reason), (Impact::Degraded, "degraded"));
        assert_eq!(r.diagnostics, lines(&["b: corrupt — store b is broken"]));
    }

    #[test]
    fn a_container_that_does_not_run_blocks_a_clean_plan() {
        let r = readiness(
            &plan_with(Impact::None),
            &ContainerReadiness::NotRunning,
            &ValidatorOutcome::Skipped,
        );
        assert!(!r.ok);
        assert_eq!(
            (r.impact, r.reason),
            (Impact::Blocked, "container_not_running")
        );
        assert!(r.diagnostics.is_empty());
    }
}
