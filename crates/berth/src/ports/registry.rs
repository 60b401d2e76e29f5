//! The image registry (OCI distribution API). The real adapter is
//! `adapters::registry::OciRegistry`.

use std::time::Duration;

use async_trait::async_trait;
use berth_core::image::{Digest, Repository};

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RegistryError {
    /// Network failure, timeout or a 5xx answer: worth retrying later.
    #[error("the registry is unavailable: {0}")]
    Unavailable(String),
    /// 404 / MANIFEST_UNKNOWN / NAME_UNKNOWN.
    #[error("not found in the registry: {0}")]
    NotFound(String),
    /// 401/403 after authenticating as configured.
    #[error("the registry refused access: {0}")]
    Unauthorized(String),
    /// 429; `retry_after` from the `Retry-After` header when given.
    #[error("the registry's rate limit was hit{}", retry_after.map(|d| format!("; retry after {}s", d.as_secs())).unwrap_or_default())]
    RateLimited { retry_after: Option<Duration> },
    #[error("the registry answered unexpectedly: {0}")]
    Rejected(String),
}

#[async_trait]
pub trait Registry: Send + Sync + 'static {
    /// The digest `repo:tag` points at now (`HEAD` on the manifest,
    /// `Docker-Content-Digest`; `GET` and hash the body if the header is
    /// missing).
    async fn resolve_tag(&self, repo: &Repository, tag: &str) -> Result<Digest, RegistryError>;

    /// Whether the registry has a manifest with this digest.
    async fn has_digest(&self, repo: &Repository, digest: &Digest) -> Result<bool, RegistryError>;
}
