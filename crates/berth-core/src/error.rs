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
    InvalidPluginSource,
    TemplateNotFound,
    RuntimeNotFound,
    PluginNotFound,
    UpdateNotFound,
    /// A state store the template does not declare, or with no committed data.
    StoreNotFound,
    /// The tracked ref is not (or no longer) in the plugin source's listing.
    RefNotFound,
    RuntimeRemoved,
    Conflict,
    ImageNotPinned,
    ImagePullFailed,
    /// git could not list or fetch a plugin source.
    GitFailed,
    StartFailed,
    /// A recreated container failed its health gate; the old one was restored.
    HealthCheckFailed,
    StopFailed,
    RemoveFailed,
    DockerUnavailable,
    Unauthorized,
    /// A valid token whose role does not allow the request.
    Forbidden,
    PayloadTooLarge,
    NotFound,
    MethodNotAllowed,
    Timeout,
    Interrupted,
    StorageUnavailable,
    /// berth is at a limit of its own (e.g. change-stream clients); try
    /// again later.
    Unavailable,
    Internal,
}

impl ErrorCode {
    pub const ALL: [ErrorCode; 32] = [
        ErrorCode::InvalidRequest,
        ErrorCode::InvalidId,
        ErrorCode::InvalidDigest,
        ErrorCode::InvalidImageRef,
        ErrorCode::InvalidTrackedRef,
        ErrorCode::InvalidPluginSource,
        ErrorCode::TemplateNotFound,
        ErrorCode::RuntimeNotFound,
        ErrorCode::PluginNotFound,
        ErrorCode::UpdateNotFound,
        ErrorCode::StoreNotFound,
        ErrorCode::RefNotFound,
        ErrorCode::RuntimeRemoved,
        ErrorCode::Conflict,
        ErrorCode::ImageNotPinned,
        ErrorCode::ImagePullFailed,
        ErrorCode::GitFailed,
        ErrorCode::StartFailed,
        ErrorCode::HealthCheckFailed,
        ErrorCode::StopFailed,
        ErrorCode::RemoveFailed,
        ErrorCode::DockerUnavailable,
        ErrorCode::Unauthorized,
        ErrorCode::Forbidden,
        ErrorCode::PayloadTooLarge,
        ErrorCode::NotFound,
        ErrorCode::MethodNotAllowed,
        ErrorCode::Timeout,
        ErrorCode::Interrupted,
        ErrorCode::StorageUnavailable,
        ErrorCode::Unavailable,
        ErrorCode::Internal,
    ];

    pub const fn as_str(self) -> &'static str {
        match self {
            ErrorCode::InvalidRequest => "invalid_request",
            ErrorCode::InvalidId => "invalid_id",
            ErrorCode::InvalidDigest => "invalid_digest",
            ErrorCode::InvalidImageRef => "invalid_image_ref",
            ErrorCode::InvalidTrackedRef => "invalid_tracked_ref",
            ErrorCode::InvalidPluginSource => "invalid_plugin_source",
            ErrorCode::TemplateNotFound => "template_not_found",
            ErrorCode::RuntimeNotFound => "runtime_not_found",
            ErrorCode::PluginNotFound => "plugin_not_found",
            ErrorCode::UpdateNotFound => "update_not_found",
            ErrorCode::StoreNotFound => "store_not_found",
            ErrorCode::RefNotFound => "ref_not_found",
            ErrorCode::RuntimeRemoved => "runtime_removed",
            ErrorCode::Conflict => "conflict",
            ErrorCode::ImageNotPinned => "image_not_pinned",
            ErrorCode::ImagePullFailed => "image_pull_failed",
            ErrorCode::GitFailed => "git_failed",
            ErrorCode::StartFailed => "start_failed",
            ErrorCode::HealthCheckFailed => "health_check_failed",
            ErrorCode::StopFailed => "stop_failed",
            ErrorCode::RemoveFailed => "remove_failed",
            ErrorCode::DockerUnavailable => "docker_unavailable",
            ErrorCode::Unauthorized => "unauthorized",
            ErrorCode::Forbidden => "forbidden",
            ErrorCode::PayloadTooLarge => "payload_too_large",
            ErrorCode::NotFound => "not_found",
            ErrorCode::MethodNotAllowed => "method_not_allowed",
            ErrorCode::Timeout => "timeout",
            ErrorCode::Interrupted => "interrupted",
            ErrorCode::StorageUnavailable => "storage_unavailable",
            ErrorCode::Unavailable => "unavailable",
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

#[cfg(test)]
mod tests {
    use super::*;

    /// The names are a public contract: snake_case and one per code.
    #[test]
    fn codes_are_distinct_snake_case() {
        let mut seen = std::collections::HashSet::new();
        for code in ErrorCode::ALL {
            let name = code.as_str();
            assert!(
                !name.is_empty()
                    && name.bytes().all(|b| b.is_ascii_lowercase() || b == b'_')
                    && !name.starts_with('_')
                    && !name.ends_with('_'),
                "{name:?}"
            );
            assert!(seen.insert(name), "{name} twice");
        }
    }

    #[test]
    fn plugin_codes_have_their_contract_names() {
        for (code, name) in [
            (ErrorCode::InvalidTrackedRef, "invalid_tracked_ref"),
            (ErrorCode::InvalidPluginSource, "invalid_plugin_source"),
            (ErrorCode::PluginNotFound, "plugin_not_found"),
            (ErrorCode::UpdateNotFound, "update_not_found"),
            (ErrorCode::RefNotFound, "ref_not_found"),
            (ErrorCode::GitFailed, "git_failed"),
        ] {
            assert_eq!(code.as_str(), name);
            assert!(ErrorCode::ALL.contains(&code), "{name} missing from ALL");
        }
    }
}
