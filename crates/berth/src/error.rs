//! The error every service returns: a stable code and a sentence for a
//! person. Entry points map the code to an HTTP status, a stream result or
//! a CLI exit.

use berth_core::{ErrorCode, ValidationError};

use crate::ports::{EngineError, StoreError};

#[derive(Debug, Clone, thiserror::Error)]
#[error("{message}")]
pub struct Error {
    pub code: ErrorCode,
    pub message: String,
    /// The outside system (a registry, Docker, git) answered that what the
    /// request names does not exist there: a 422, where the same code
    /// (`image_pull_failed`, `invalid_digest`) from a failure is a 502. The
    /// code stays, so stored results and stream job results do not change.
    pub absent_upstream: bool,
    /// The adapter's error this one came from, kept for logs.
    #[source]
    pub source: Option<std::sync::Arc<dyn std::error::Error + Send + Sync>>,
}

/// Two errors are equal when they say the same to a person; the source is
/// for logs only.
impl PartialEq for Error {
    fn eq(&self, other: &Self) -> bool {
        self.code == other.code
            && self.message == other.message
            && self.absent_upstream == other.absent_upstream
    }
}

impl Eq for Error {}

pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Error {
            code,
            message: message.into(),
            absent_upstream: false,
            source: None,
        }
    }

    /// The outside system said that what the caller named (an image, tag,
    /// manifest or git ref) does not exist: answered 422, not 502.
    pub fn absent_upstream(code: ErrorCode, message: impl Into<String>) -> Self {
        Error {
            absent_upstream: true,
            ..Error::new(code, message)
        }
    }

    /// Keeps `source` for logs.
    pub fn caused_by(mut self, source: impl std::error::Error + Send + Sync + 'static) -> Self {
        self.source = Some(std::sync::Arc::new(source));
        self
    }

    pub fn invalid(message: impl Into<String>) -> Self {
        Error::new(ErrorCode::InvalidRequest, message)
    }

    pub fn template_not_found(name: &str) -> Self {
        Error::new(
            ErrorCode::TemplateNotFound,
            format!("template {name:?} does not exist"),
        )
    }

    pub fn runtime_not_found(id: &str) -> Self {
        Error::new(
            ErrorCode::RuntimeNotFound,
            format!("runtime {id:?} does not exist"),
        )
    }

    /// The HTTP status that fits the code: 422 for something outside berth
    /// that does not exist, 502 only when the outside system failed.
    pub fn http_status(&self) -> u16 {
        use ErrorCode::*;
        if self.absent_upstream {
            return 422;
        }
        match self.code {
            InvalidRequest | InvalidId | InvalidDigest | InvalidImageRef | InvalidTrackedRef
            | InvalidPluginSource => 400,
            Unauthorized => 401,
            Forbidden => 403,
            TemplateNotFound | RuntimeNotFound | PluginNotFound | UpdateNotFound
            | StoreNotFound | NotFound => 404,
            MethodNotAllowed => 405,
            RuntimeRemoved | Conflict | ImageNotPinned => 409,
            PayloadTooLarge => 413,
            // A git ref upstream does not have, named by the caller.
            RefNotFound => 422,
            ImagePullFailed | GitFailed | StartFailed | HealthCheckFailed | StopFailed
            | RemoveFailed => 502,
            DockerUnavailable | StorageUnavailable | Unavailable => 503,
            Timeout => 504,
            Interrupted | Internal => 500,
        }
    }
}

impl From<ValidationError> for Error {
    fn from(e: ValidationError) -> Self {
        Error::new(e.code, e.message)
    }
}

impl From<StoreError> for Error {
    fn from(e: StoreError) -> Self {
        let source = e.clone();
        match e {
            StoreError::Conflict(m) => Error::new(ErrorCode::Conflict, m),
            StoreError::Database(m) => Error::new(
                ErrorCode::StorageUnavailable,
                format!("the database failed: {m}"),
            ),
            StoreError::Corrupt(m) => {
                Error::new(ErrorCode::Internal, format!("stored data is corrupt: {m}"))
            }
        }
        .caused_by(source)
    }
}

impl Error {
    /// Maps an engine failure met while doing `doing` (e.g. "start the
    /// container"); `fallback` is the code for Docker refusing the request.
    pub fn from_engine(e: EngineError, fallback: ErrorCode, doing: &str) -> Self {
        let source = e.clone();
        match e {
            EngineError::Unavailable(m) => Error::new(ErrorCode::DockerUnavailable, m),
            EngineError::PullFailed { image, message } => Error::new(
                ErrorCode::ImagePullFailed,
                format!("could not pull image {image}: {message}"),
            ),
            EngineError::ImageNotFound { image, message } => Error::absent_upstream(
                ErrorCode::ImagePullFailed,
                format!("image {image} does not exist in its registry: {message}"),
            ),
            EngineError::ForeignOwner { .. } | EngineError::Conflict(_) => {
                Error::new(ErrorCode::Conflict, format!("could not {doing}: {e}"))
            }
            EngineError::Timeout(_) => {
                Error::new(ErrorCode::Timeout, format!("could not {doing}: {e}"))
            }
            EngineError::NotFound(_)
            | EngineError::NetworkMissing { .. }
            | EngineError::Rejected(_) => Error::new(fallback, format!("could not {doing}: {e}")),
        }
        .caused_by(source)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plugin_codes_map_to_their_http_statuses() {
        for (code, status) in [
            (ErrorCode::InvalidTrackedRef, 400),
            (ErrorCode::InvalidPluginSource, 400),
            (ErrorCode::PluginNotFound, 404),
            (ErrorCode::UpdateNotFound, 404),
            (ErrorCode::RefNotFound, 422),
            (ErrorCode::GitFailed, 502),
        ] {
            assert_eq!(Error::new(code, "x").http_status(), status, "{code}");
        }
    }

    #[test]
    fn a_missing_image_is_422_and_a_failed_pull_502_with_one_code() {
        let missing = Error::from_engine(
            EngineError::ImageNotFound {
                image: "r.test/app:nope".into(),
                message: "manifest unknown".into(),
            },
            ErrorCode::StartFailed,
            "pull the image",
        );
        let failed = Error::from_engine(
            EngineError::PullFailed {
                image: "r.test/app:v1".into(),
                message: "connection refused".into(),
            },
            ErrorCode::StartFailed,
            "pull the image",
        );
        assert_eq!(missing.code, ErrorCode::ImagePullFailed);
        assert_eq!(failed.code, ErrorCode::ImagePullFailed);
        assert_eq!(missing.http_status(), 422);
        assert_eq!(failed.http_status(), 502);
        assert_ne!(missing, failed);
        // Docker itself unreachable stays a 503.
        let down = Error::from_engine(
            EngineError::Unavailable("no socket".into()),
            ErrorCode::ImagePullFailed,
            "pull the image",
        );
        assert_eq!(down.http_status(), 503);
        assert_eq!(
            Error::absent_upstream(ErrorCode::InvalidDigest, "x").http_status(),
            422
        );
    }

    #[test]
    fn an_engine_timeout_is_the_timeout_code() {
        let e = Error::from_engine(
            EngineError::Timeout("exec did not end within 1 s".into()),
            ErrorCode::Internal,
            "run the command",
        );
        assert_eq!(e.code, ErrorCode::Timeout);
        assert_eq!(e.http_status(), 504);
        assert!(e.message.contains("within 1 s"), "{}", e.message);
    }
}
