//! The health gate after a recreate, pure: given what the service observed
//! of the new container and how long the gate has run, pass, fail, or look
//! again after a wait. The service inspects, probes and sleeps.
//!
//! A template's health check (GET on the container's address and port
//! until 2xx, within `grace`) wins; without one, Docker's own HEALTHCHECK
//! decides; without that, the container passes once it kept running for
//! [`SETTLE`].

use std::fmt;
use std::time::Duration;

use crate::duration::format_duration;
use crate::template::{HealthCheck, Template};

/// Without a health check and without a Docker HEALTHCHECK, a new container
/// counts as healthy once it has kept running this long.
pub const SETTLE: Duration = Duration::from_secs(1);
/// The most a Docker HEALTHCHECK may take to report healthy.
pub const DOCKER_HEALTH_LIMIT: Duration = Duration::from_secs(60);
/// How often Docker's HEALTHCHECK status is read again.
pub const DOCKER_HEALTH_POLL: Duration = Duration::from_millis(500);
/// How often a container without any health check is looked at while it settles.
pub const SETTLE_POLL: Duration = Duration::from_millis(250);

/// How a template's new container is judged.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GatePolicy {
    /// The template's HTTP health check on `port`.
    Probe { check: HealthCheck, port: u16 },
    /// Docker's HEALTHCHECK when the image has one, else "still running".
    Container,
}

impl GatePolicy {
    pub fn of(template: &Template) -> GatePolicy {
        match (&template.health, template.port) {
            (Some(check), Some(port)) => GatePolicy::Probe {
                check: check.clone(),
                port,
            },
            _ => GatePolicy::Container,
        }
    }
}

/// Docker's HEALTHCHECK status of a container that has one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DockerHealth {
    /// `starting`, or a status berth does not know: not decided yet.
    Starting,
    Healthy,
    Unhealthy,
}

impl DockerHealth {
    pub fn from_docker(status: &str) -> DockerHealth {
        match status {
            "healthy" => DockerHealth::Healthy,
            "unhealthy" => DockerHealth::Unhealthy,
            _ => DockerHealth::Starting,
        }
    }
}

/// What the service saw of the new container in one look.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Observation {
    /// The container no longer exists.
    Gone,
    Exited {
        exit_code: Option<i64>,
    },
    Running {
        /// The HTTP probe's result under [`GatePolicy::Probe`]: `Some(true)`
        /// on 2xx, `Some(false)` on anything else, `None` when it was not
        /// probed (no policy probe, or no address on berth's network yet).
        probe_ok: Option<bool>,
        /// `None` when the image has no HEALTHCHECK.
        docker_health: Option<DockerHealth>,
    },
}

/// Why the new container failed its gate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GateFailure {
    Disappeared,
    Exited { exit_code: Option<i64> },
    NoAnswer { path: String, grace: Duration },
    DockerUnhealthy,
    DockerTimedOut,
}

impl fmt::Display for GateFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            GateFailure::Disappeared => {
                f.write_str("the new container disappeared during its health check")
            }
            GateFailure::Exited { exit_code } => {
                f.write_str("the new container exited during its health check (exit code ")?;
                match exit_code {
                    Some(c) => write!(f, "{c})"),
                    None => f.write_str("unknown)"),
                }
            }
            GateFailure::NoAnswer { path, grace } => write!(
                f,
                "the new container did not answer 2xx on {path} within {}",
                format_duration(*grace)
            ),
            GateFailure::DockerUnhealthy => f.write_str("Docker's HEALTHCHECK reports unhealthy"),
            GateFailure::DockerTimedOut => {
                f.write_str("Docker's HEALTHCHECK did not report healthy in time")
            }
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GateStep {
    Pass,
    Fail {
        reason: GateFailure,
    },
    /// Look (inspect, and probe under a probe policy) again after this wait.
    ProbeAgainAfter(Duration),
}

/// The gate's next step, `elapsed_ms` after it began (a clock that went
/// backwards counts as no time). A 2xx passes even past `grace`: the
/// answer came in; `grace` bounds only how long berth keeps asking.
pub fn next(policy: &GatePolicy, elapsed_ms: i64, observation: &Observation) -> GateStep {
    let elapsed = Duration::from_millis(elapsed_ms.max(0) as u64);
    let fail = |reason| GateStep::Fail { reason };
    let (probe_ok, docker_health) = match *observation {
        Observation::Gone => return fail(GateFailure::Disappeared),
        Observation::Exited { exit_code } => return fail(GateFailure::Exited { exit_code }),
        Observation::Running {
            probe_ok,
            docker_health,
        } => (probe_ok, docker_health),
    };
    match policy {
        GatePolicy::Probe { check, .. } => {
            if probe_ok == Some(true) {
                GateStep::Pass
            } else if elapsed >= check.grace {
                fail(GateFailure::NoAnswer {
                    path: check.path.clone(),
                    grace: check.grace,
                })
            } else {
                GateStep::ProbeAgainAfter(check.interval)
            }
        }
        GatePolicy::Container => match docker_health {
            Some(DockerHealth::Healthy) => GateStep::Pass,
            Some(DockerHealth::Unhealthy) => fail(GateFailure::DockerUnhealthy),
            Some(DockerHealth::Starting) if elapsed < DOCKER_HEALTH_LIMIT => {
                GateStep::ProbeAgainAfter(DOCKER_HEALTH_POLL)
            }
            Some(DockerHealth::Starting) => fail(GateFailure::DockerTimedOut),
            None if elapsed >= SETTLE => GateStep::Pass,
            None => GateStep::ProbeAgainAfter(SETTLE_POLL),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::image::Repository;

    fn probe_policy() -> GatePolicy {
        GatePolicy::Probe {
            check: HealthCheck {
                path: "/healthz".into(),
                interval: Duration::from_millis(200),
                timeout: Duration::from_millis(100),
                grace: Duration::from_secs(5),
            },
            port: 8080,
        }
    }

    fn running(probe_ok: Option<bool>, docker_health: Option<DockerHealth>) -> Observation {
        Observation::Running {
            probe_ok,
            docker_health,
        }
    }

    fn fail(reason: GateFailure) -> GateStep {
        GateStep::Fail { reason }
    }

    #[test]
    fn policy_follows_the_template() {
        let mut t = Template::new("t", Repository::parse("x").unwrap());
        assert_eq!(GatePolicy::of(&t), GatePolicy::Container);
        let GatePolicy::Probe { check, .. } = probe_policy() else {
            unreachable!()
        };
        t.health = Some(check.clone());
        // A health check without a port cannot be probed.
        assert_eq!(GatePolicy::of(&t), GatePolicy::Container);
        t.port = Some(8080);
        assert_eq!(GatePolicy::of(&t), GatePolicy::Probe { check, port: 8080 });
    }

    #[test]
    fn docker_statuses() {
        assert_eq!(DockerHealth::from_docker("healthy"), DockerHealth::Healthy);
        assert_eq!(
            DockerHealth::from_docker("unhealthy"),
            DockerHealth::Unhealthy
        );
        assert_eq!(
            DockerHealth::from_docker("starting"),
            DockerHealth::Starting
        );
        assert_eq!(DockerHealth::from_docker("bogus"), DockerHealth::Starting);
    }

    #[test]
    fn gate_steps() {
        use DockerHealth::*;
        let probe = probe_policy();
        let container = GatePolicy::Container;
        let no_answer = GateFailure::NoAnswer {
            path: "/healthz".into(),
            grace: Duration::from_secs(5),
        };
        let cases: Vec<(&str, &GatePolicy, i64, Observation, GateStep)> = vec![
            // Whatever the policy, a container that is gone or exited fails.
            (
                "gone",
                &probe,
                0,
                Observation::Gone,
                fail(GateFailure::Disappeared),
            ),
            (
                "gone, container",
                &container,
                0,
                Observation::Gone,
                fail(GateFailure::Disappeared),
            ),
            (
                "exited",
                &probe,
                10,
                Observation::Exited { exit_code: Some(3) },
                fail(GateFailure::Exited { exit_code: Some(3) }),
            ),
            (
                "exited, container",
                &container,
                10,
                Observation::Exited { exit_code: None },
                fail(GateFailure::Exited { exit_code: None }),
            ),
            // Probe policy: 2xx passes, else wait an interval until grace.
            ("2xx", &probe, 0, running(Some(true), None), GateStep::Pass),
            (
                "2xx after grace",
                &probe,
                9_000,
                running(Some(true), None),
                GateStep::Pass,
            ),
            (
                "no 2xx yet",
                &probe,
                0,
                running(Some(false), None),
                GateStep::ProbeAgainAfter(Duration::from_millis(200)),
            ),
            (
                "no address yet",
                &probe,
                1_000,
                running(None, None),
                GateStep::ProbeAgainAfter(Duration::from_millis(200)),
            ),
            (
                "just before grace",
                &probe,
                4_999,
                running(Some(false), None),
                GateStep::ProbeAgainAfter(Duration::from_millis(200)),
            ),
            (
                "at grace",
                &probe,
                5_000,
                running(Some(false), None),
                fail(no_answer.clone()),
            ),
            (
                "no address at grace",
                &probe,
                5_000,
                running(None, None),
                fail(no_answer.clone()),
            ),
            // The probe wins over Docker's HEALTHCHECK.
            (
                "probe over docker healthy",
                &probe,
                0,
                running(Some(false), Some(Healthy)),
                GateStep::ProbeAgainAfter(Duration::from_millis(200)),
            ),
            (
                "probe over docker unhealthy",
                &probe,
                0,
                running(Some(true), Some(Unhealthy)),
                GateStep::Pass,
            ),
            // Docker's HEALTHCHECK, within its limit.
            (
                "docker healthy",
                &container,
                0,
                running(None, Some(Healthy)),
                GateStep::Pass,
            ),
            (
                "docker unhealthy",
                &container,
                0,
                running(None, Some(Unhealthy)),
                fail(GateFailure::DockerUnhealthy),
            ),
            (
                "docker starting",
                &container,
                59_999,
                running(None, Some(Starting)),
                GateStep::ProbeAgainAfter(DOCKER_HEALTH_POLL),
            ),
            (
                "docker starting at its limit",
                &container,
                60_000,
                running(None, Some(Starting)),
                fail(GateFailure::DockerTimedOut),
            ),
            // Neither: still running after a second.
            (
                "settling",
                &container,
                999,
                running(None, None),
                GateStep::ProbeAgainAfter(SETTLE_POLL),
            ),
            (
                "settled",
                &container,
                1_000,
                running(None, None),
                GateStep::Pass,
            ),
            (
                "clock went backwards",
                &container,
                -5_000,
                running(None, None),
                GateStep::ProbeAgainAfter(SETTLE_POLL),
            ),
        ];
        for (name, policy, elapsed, observation, want) in cases {
            assert_eq!(next(policy, elapsed, &observation), want, "{name}");
        }
    }

    #[test]
    fn failure_messages() {
        assert_eq!(
            GateFailure::Exited {
                exit_code: Some(137)
            }
            .to_string(),
            "the new container exited during its health check (exit code 137)"
        );
        assert_eq!(
            GateFailure::Exited { exit_code: None }.to_string(),
            "the new container exited during its health check (exit code unknown)"
        );
        assert_eq!(
            GateFailure::NoAnswer {
                path: "/healthz".into(),
                grace: Duration::from_secs(30)
            }
            .to_string(),
            "the new container did not answer 2xx on /healthz within 30s"
        );
    }
}
