//! Stable error codes shared by every entry point (HTTP, streams, CLI).

use std::fmt;

/// A stable, snake_case error code. These strings are a public contract
/// (DESIGN.md, "Stable error codes"): never rename one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ErrorCode {
    InvalidRequest,
    InvalidId,
    InvalidDigest,
    InvalidImageRef,
    InvalidTrackedRef,
    TemplateNotFound,
    RuntimeNotFound,
    RuntimeRemoved,
    Conflict,
    ImageNotPinned,
    ImagePullFailed,
    StartFailed,
    /// A recreated container failed its health gate; the old one was restored.
    HealthCheckFailed,
    StopFailed,
    RemoveFailed,
    DockerUnavailable,
    Unauthorized,
    PayloadTooLarge,
    NotFound,
    MethodNotAllowed,
    Timeout,
    Interrupted,
    StorageUnavailable,
    Internal,
}

impl ErrorCode {
    pub const fn as_str(self) -> &'static str {
        match self {
            ErrorCode::InvalidRequest => "invalid_request",
            ErrorCode::InvalidId => "invalid_id",
            ErrorCode::InvalidDigest => "invalid_digest",
            ErrorCode::InvalidImageRef => "invalid_image_ref",
            ErrorCode::InvalidTrackedRef => "invalid_tracked_ref",
            ErrorCode::TemplateNotFound => "template_not_found",
            ErrorCode::RuntimeNotFound => "runtime_not_found",
            ErrorCode::RuntimeRemoved => "runtime_removed",
            ErrorCode::Conflict => "conflict",
            ErrorCode::ImageNotPinned => "image_not_pinned",
            ErrorCode::ImagePullFailed => "image_pull_failed",
            ErrorCode::StartFailed => "start_failed",
            ErrorCode::HealthCheckFailed => "health_check_failed",
            ErrorCode::StopFailed => "stop_failed",
            ErrorCode::RemoveFailed => "remove_failed",
            ErrorCode::DockerUnavailable => "docker_unavailable",
            ErrorCode::Unauthorized => "unauthorized",
            ErrorCode::PayloadTooLarge => "payload_too_large",
            ErrorCode::NotFound => "not_found",
            ErrorCode::MethodNotAllowed => "method_not_allowed",
            ErrorCode::Timeout => "timeout",
            ErrorCode::Interrupted => "interrupted",
            ErrorCode::StorageUnavailable => "storage_unavailable",
            ErrorCode::Internal => "internal",
        }
    }
}

impl fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Input that fails validation: a stable code and a sentence for a person.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct ValidationError {
    pub code: ErrorCode,
    pub message: String,
}

impl ValidationError {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
        }
    }

    pub fn invalid_request(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::InvalidRequest, message)
    }
}

/// A stored state that is not one of its enum's names: the row is corrupt
/// or was written by a newer berth. Never decoded into a default.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{what} {value:?} is not one of {}", expected.join(", "))]
pub struct ParseStateError {
    /// What was being decoded, e.g. "rollout state".
    pub what: &'static str,
    pub value: String,
    pub expected: &'static [&'static str],
}
