//! An in-memory image registry (it passes `tests/registry_contract.rs` like
//! `OciRegistry`): repositories hold manifests (digests) and tags pointing
//! at them. Moving or removing a tag keeps the manifest, as a registry does.
//!
//! Faults: [`FakeRegistry::fail_next`] fails the next calls (of any repo),
//! [`FakeRegistry::fail_repo`] every call for one repository until
//! [`FakeRegistry::heal_repo`]. Every call is counted, failed ones too.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::{Mutex, MutexGuard, PoisonError};

use async_trait::async_trait;
use berth_core::image::{validate_tag, Digest, Repository};

use crate::ports::registry::{Registry, RegistryError};

/// Calls made so far, per method.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RegistryCalls {
    pub resolve_tag: u64,
    pub has_digest: u64,
}

#[derive(Default)]
struct Repo {
    tags: HashMap<String, Digest>,
    manifests: HashSet<Digest>,
}

#[derive(Default)]
struct State {
    repos: HashMap<Repository, Repo>,
    /// Errors for the next calls, in order.
    next_failures: VecDeque<RegistryError>,
    failing_repos: HashMap<Repository, RegistryError>,
    calls: RegistryCalls,
}

#[derive(Default)]
pub struct FakeRegistry {
    state: Mutex<State>,
}

impl FakeRegistry {
    pub fn new() -> Self {
        FakeRegistry::default()
    }

    fn state(&self) -> MutexGuard<'_, State> {
        // No method panics while holding the lock with the state half-changed.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Points `repo:tag` at `digest` (a push), creating the repository and
    /// the manifest as needed.
    pub fn set_tag(&self, repo: &Repository, tag: &str, digest: &Digest) {
        let mut state = self.state();
        let r = state.repos.entry(repo.clone()).or_default();
        r.manifests.insert(digest.clone());
        r.tags.insert(tag.to_owned(), digest.clone());
    }

    /// A manifest no tag points at (pushed by digest, or its tag moved on).
    pub fn add_digest(&self, repo: &Repository, digest: &Digest) {
        self.state()
            .repos
            .entry(repo.clone())
            .or_default()
            .manifests
            .insert(digest.clone());
    }

    /// Untags; the manifest stays.
    pub fn remove_tag(&self, repo: &Repository, tag: &str) {
        if let Some(r) = self.state().repos.get_mut(repo) {
            r.tags.remove(tag);
        }
    }

    /// The next `k` calls (any method, any repository) fail with `error`,
    /// after failures already scheduled.
    pub fn fail_next(&self, k: usize, error: RegistryError) {
        self.state()
            .next_failures
            .extend(std::iter::repeat_n(error, k));
    }

    /// Every call for `repo` fails with `error` until [`Self::heal_repo`].
    pub fn fail_repo(&self, repo: &Repository, error: RegistryError) {
        self.state().failing_repos.insert(repo.clone(), error);
    }

    pub fn heal_repo(&self, repo: &Repository) {
        self.state().failing_repos.remove(repo);
    }

    pub fn calls(&self) -> RegistryCalls {
        self.state().calls
    }

    /// The scripted failure for this call, if any.
    fn scripted_failure(state: &mut State, repo: &Repository) -> Result<(), RegistryError> {
        if let Some(error) = state.next_failures.pop_front() {
            return Err(error);
        }
        match state.failing_repos.get(repo) {
            Some(error) => Err(error.clone()),
            None => Ok(()),
        }
    }
}

impl std::fmt::Debug for FakeRegistry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FakeRegistry").finish_non_exhaustive()
    }
}

#[async_trait]
impl Registry for FakeRegistry {
    async fn resolve_tag(&self, repo: &Repository, tag: &str) -> Result<Digest, RegistryError> {
        let mut state = self.state();
        state.calls.resolve_tag += 1;
        // Checked before any request, as the real client does.
        validate_tag(tag).map_err(|e| RegistryError::Rejected(e.message))?;
        Self::scripted_failure(&mut state, repo)?;
        state
            .repos
            .get(repo)
            .and_then(|r| r.tags.get(tag))
            .cloned()
            .ok_or_else(|| {
                RegistryError::NotFound(format!("repository {}: no tag {tag:?}", repo.as_str()))
            })
    }

    async fn has_digest(&self, repo: &Repository, digest: &Digest) -> Result<bool, RegistryError> {
        let mut state = self.state();
        state.calls.has_digest += 1;
        Self::scripted_failure(&mut state, repo)?;
        Ok(state
            .repos
            .get(repo)
            .is_some_and(|r| r.manifests.contains(digest)))
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn repo(text: &str) -> Repository {
        Repository::parse(text).unwrap()
    }

    fn digest(c: char) -> Digest {
        Digest::parse(&format!("sha256:{}", c.to_string().repeat(64))).unwrap()
    }

    #[tokio::test]
    async fn scripted_failures_come_first_then_per_repo_until_healed() {
        let reg = FakeRegistry::new();
        let app = repo("reg.example/app");
        let other = repo("reg.example/other");
        reg.set_tag(&app, "v1", &digest('a'));
        reg.set_tag(&other, "v1", &digest('b'));

        reg.fail_next(2, RegistryError::Unavailable("down".into()));
        reg.fail_repo(
            &app,
            RegistryError::RateLimited {
                retry_after: Some(Duration::from_secs(30)),
            },
        );
        for _ in 0..2 {
            assert!(matches!(
                reg.resolve_tag(&other, "v1").await,
                Err(RegistryError::Unavailable(_))
            ));
        }
        assert_eq!(reg.resolve_tag(&other, "v1").await, Ok(digest('b')));
        assert_eq!(
            reg.has_digest(&app, &digest('a')).await,
            Err(RegistryError::RateLimited {
                retry_after: Some(Duration::from_secs(30))
            })
        );
        reg.heal_repo(&app);
        assert_eq!(reg.has_digest(&app, &digest('a')).await, Ok(true));
        assert_eq!(
            reg.calls(),
            RegistryCalls {
                resolve_tag: 3,
                has_digest: 2
            }
        );
    }

    #[tokio::test]
    async fn removing_a_tag_keeps_its_manifest() {
        let reg = FakeRegistry::new();
        let app = repo("reg.example/app");
        reg.set_tag(&app, "v1", &digest('a'));
        reg.add_digest(&app, &digest('c'));
        reg.remove_tag(&app, "v1");
        assert!(matches!(
            reg.resolve_tag(&app, "v1").await,
            Err(RegistryError::NotFound(_))
        ));
        assert_eq!(reg.has_digest(&app, &digest('a')).await, Ok(true));
        assert_eq!(reg.has_digest(&app, &digest('c')).await, Ok(true));
    }
}
