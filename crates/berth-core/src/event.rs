//! Health events: what berth observed on the host.

use std::collections::BTreeMap;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum HealthEventType {
    ContainerStarted,
    ContainerExited,
    ContainerOom,
    ContainerDisappeared,
    HealthUnhealthy,
    HealthHealthy,
}

impl HealthEventType {
    pub const ALL: [HealthEventType; 6] = [
        HealthEventType::ContainerStarted,
        HealthEventType::ContainerExited,
        HealthEventType::ContainerOom,
        HealthEventType::ContainerDisappeared,
        HealthEventType::HealthUnhealthy,
        HealthEventType::HealthHealthy,
    ];

    pub const fn as_str(self) -> &'static str {
        match self {
            HealthEventType::ContainerStarted => "container_started",
            HealthEventType::ContainerExited => "container_exited",
            HealthEventType::ContainerOom => "container_oom",
            HealthEventType::ContainerDisappeared => "container_disappeared",
            HealthEventType::HealthUnhealthy => "health_unhealthy",
            HealthEventType::HealthHealthy => "health_healthy",
        }
    }

    pub fn parse(text: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|t| t.as_str() == text)
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HealthEvent {
    pub id: String,
    pub runtime_id: String,
    pub event_type: HealthEventType,
    pub container_id: Option<String>,
    pub at_ms: i64,
    /// e.g. `exit_code`, `source` (`docker_events` or `reconcile`).
    pub details: BTreeMap<String, String>,
}

/// An admin-facing message to deliver elsewhere, e.g.
/// `runtime.image_pull_failed`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Notification {
    pub id: String,
    pub notification_type: String,
    /// Always `admin` for now.
    pub audience: String,
    pub payload: BTreeMap<String, String>,
    pub created_at_ms: i64,
}

/// The answer to one stream job, kept so that a redelivered job id gets
/// the same result without doing the work twice.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JobResult {
    pub job_id: String,
    pub runtime_id: String,
    /// `start` or `stop`.
    pub kind: String,
    pub success: bool,
    pub container_id: Option<String>,
    pub engine_endpoint: Option<String>,
    pub error_code: Option<String>,
    pub error_message: Option<String>,
    pub finished_at_ms: i64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip() {
        for t in HealthEventType::ALL {
            assert_eq!(HealthEventType::parse(t.as_str()), Some(t));
        }
        assert_eq!(HealthEventType::parse("nope"), None);
    }
}
