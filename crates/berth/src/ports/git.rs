//! Git remotes, for plugins: list a remote's refs and fetch one commit.
//! The real adapter is `adapters::git::GitCli` (the `git` binary); the fake
//! is `fakes::FakeRefResolver`. Both pass `tests/git_contract.rs`.
//!
//! Callers pass values the core has already validated (a source URL without
//! its `git+` prefix, a full commit id); the adapter still never lets one
//! be read as an option.

use std::path::Path;

use async_trait::async_trait;

/// One line of `git ls-remote`: a ref name and the object it points at.
/// An annotated tag appears twice: `refs/tags/X` (the tag object) and
/// `refs/tags/X^{}` (the commit it peels to).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct RemoteRef {
    pub name: String,
    pub sha: String,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum GitError {
    /// The repository or the commit does not exist, or we may not read it
    /// (git cannot tell a private repository from a missing one).
    #[error("the git repository or commit was not found, or cannot be read: {0}")]
    NotFound(String),
    /// Network failure or timeout: worth retrying later.
    #[error("the git remote is unavailable: {0}")]
    Unavailable(String),
    /// The source's transport is not allowed (`GIT_ALLOW_PROTOCOL`), or
    /// git refused the URL's form.
    #[error("this git source is not allowed: {0}")]
    Refused(String),
    /// Anything else; `message` carries git's error output (trimmed).
    #[error("git failed: {message}")]
    Failed { message: String },
}

#[async_trait]
pub trait RefResolver: Send + Sync + 'static {
    /// The remote's branches and tags, as `git ls-remote --heads --tags`
    /// lists them (full names, `refs/heads/…` and `refs/tags/…`, with the
    /// peeled `^{}` line of every annotated tag), without cloning anything.
    /// An empty repository has none.
    async fn list_refs(&self, url: &str) -> Result<Vec<RemoteRef>, GitError>;

    /// Writes the files of commit `sha` (a full commit id) of `url` into
    /// `dest` (created, parents too); no history, no `.git`, no submodules.
    /// If `dest` already exists the call fails and leaves it untouched; on
    /// any other error `dest` does not exist afterwards.
    async fn fetch_commit(&self, url: &str, sha: &str, dest: &Path) -> Result<(), GitError>;
}

/// Whether `sha` is a full commit id (SHA-1 or SHA-256, lowercase hex):
/// anything else would be taken by `git fetch` as a ref name.
pub fn is_full_commit_id(sha: &str) -> bool {
    matches!(sha.len(), 40 | 64) && sha.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}
