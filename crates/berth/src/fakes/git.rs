//! In-memory git remotes keyed by URL (it passes `tests/git_contract.rs`
//! like `GitCli`): each holds refs (full names, as `ls-remote` prints
//! them) and commits with their files, which `fetch_commit` writes out.
//! A commit is fetchable once added, whether or not a ref points at it.
//!
//! Faults: [`FakeRefResolver::fail_next`] fails the next calls for one URL,
//! [`FakeRefResolver::set_unavailable`] every call for it until cleared.
//! Every call is counted, failed ones too.

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::path::Path;
use std::sync::{Mutex, MutexGuard, PoisonError};

use async_trait::async_trait;

use crate::ports::git::{is_full_commit_id, GitError, RefResolver, RemoteRef};

#[derive(Default)]
struct Repo {
    /// ref name → object id, sorted like git's listing.
    refs: BTreeMap<String, String>,
    /// commit id → (path, content) of every file in it.
    commits: HashMap<String, Vec<(String, String)>>,
}

#[derive(Default)]
struct State {
    repos: HashMap<String, Repo>,
    next_failures: HashMap<String, VecDeque<GitError>>,
    unavailable: HashSet<String>,
    list_calls: HashMap<String, u64>,
    fetch_calls: HashMap<String, u64>,
}

#[derive(Default)]
pub struct FakeRefResolver {
    state: Mutex<State>,
}

/// The peeled line git lists after an annotated tag.
fn peeled(name: &str) -> String {
    format!("{name}^{{}}")
}

impl FakeRefResolver {
    pub fn new() -> Self {
        FakeRefResolver::default()
    }

    fn state(&self) -> MutexGuard<'_, State> {
        // No method panics while holding the lock with the state half-changed.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// An empty repository at `url` (no refs, no commits), if none is there.
    pub fn create_repo(&self, url: &str) {
        self.state().repos.entry(url.to_owned()).or_default();
    }

    /// Points ref `name` (`refs/heads/main`, `refs/tags/v1`) at `sha`, as a
    /// push or `git tag -f` would, creating the repository as needed. A
    /// peeled line left from an annotated tag of that name goes away.
    pub fn set_ref(&self, url: &str, name: &str, sha: &str) {
        let mut state = self.state();
        let repo = state.repos.entry(url.to_owned()).or_default();
        repo.refs.remove(&peeled(name));
        repo.refs.insert(name.to_owned(), sha.to_owned());
    }

    /// An annotated tag `refs/tags/<tag>`: the tag object and its peeled
    /// `^{}` line pointing at the commit.
    pub fn annotated_tag(&self, url: &str, tag: &str, tag_object_sha: &str, commit_sha: &str) {
        let name = format!("refs/tags/{tag}");
        let mut state = self.state();
        let repo = state.repos.entry(url.to_owned()).or_default();
        repo.refs.insert(peeled(&name), commit_sha.to_owned());
        repo.refs.insert(name, tag_object_sha.to_owned());
    }

    /// Removes ref `name` (and its peeled line).
    pub fn delete_ref(&self, url: &str, name: &str) {
        if let Some(repo) = self.state().repos.get_mut(url) {
            repo.refs.remove(name);
            repo.refs.remove(&peeled(name));
        }
    }

    /// The repository vanishes: its URL is then not found.
    pub fn remove_repo(&self, url: &str) {
        self.state().repos.remove(url);
    }

    /// A commit `sha` of `url` holding exactly `files` (path, content);
    /// creates the repository as needed.
    pub fn add_commit(&self, url: &str, sha: &str, files: &[(&str, &str)]) {
        let files = files
            .iter()
            .map(|(path, content)| ((*path).to_owned(), (*content).to_owned()))
            .collect();
        self.state()
            .repos
            .entry(url.to_owned())
            .or_default()
            .commits
            .insert(sha.to_owned(), files);
    }

    /// The next call (either method) for `url` fails with `error`, after
    /// failures already scheduled for it.
    pub fn fail_next(&self, url: &str, error: GitError) {
        self.state()
            .next_failures
            .entry(url.to_owned())
            .or_default()
            .push_back(error);
    }

    /// While set, every call for `url` is `Unavailable`.
    pub fn set_unavailable(&self, url: &str, unavailable: bool) {
        let mut state = self.state();
        if unavailable {
            state.unavailable.insert(url.to_owned());
        } else {
            state.unavailable.remove(url);
        }
    }

    /// `list_refs` calls for `url` so far.
    pub fn list_calls(&self, url: &str) -> u64 {
        self.state().list_calls.get(url).copied().unwrap_or(0)
    }

    /// `list_refs` calls for all URLs so far (resolutions).
    pub fn total_list_calls(&self) -> u64 {
        self.state().list_calls.values().sum()
    }

    /// `fetch_commit` calls for `url` so far.
    pub fn fetch_calls(&self, url: &str) -> u64 {
        self.state().fetch_calls.get(url).copied().unwrap_or(0)
    }

    /// The scripted failure for this call, if any.
    fn scripted_failure(state: &mut State, url: &str) -> Result<(), GitError> {
        if let Some(error) = state
            .next_failures
            .get_mut(url)
            .and_then(VecDeque::pop_front)
        {
            return Err(error);
        }
        if state.unavailable.contains(url) {
            return Err(GitError::Unavailable(format!("{url} is unreachable")));
        }
        Ok(())
    }
}

impl std::fmt::Debug for FakeRefResolver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FakeRefResolver").finish_non_exhaustive()
    }
}

fn write_files(dest: &Path, files: &[(String, String)]) -> std::io::Result<()> {
    std::fs::create_dir_all(dest)?;
    for (path, content) in files {
        let file = dest.join(path);
        if let Some(parent) = file.parent() {
            std::fs::create_dir_all(parent)?;
        }
        std::fs::write(file, content)?;
    }
    Ok(())
}

#[async_trait]
impl RefResolver for FakeRefResolver {
    async fn list_refs(&self, url: &str) -> Result<Vec<RemoteRef>, GitError> {
        let mut state = self.state();
        *state.list_calls.entry(url.to_owned()).or_default() += 1;
        Self::scripted_failure(&mut state, url)?;
        let repo = state
            .repos
            .get(url)
            .ok_or_else(|| GitError::NotFound(format!("no repository at {url}")))?;
        Ok(repo
            .refs
            .iter()
            .map(|(name, sha)| RemoteRef {
                name: name.clone(),
                sha: sha.clone(),
            })
            .collect())
    }

    async fn fetch_commit(&self, url: &str, sha: &str, dest: &Path) -> Result<(), GitError> {
        let files = {
            let mut state = self.state();
            *state.fetch_calls.entry(url.to_owned()).or_default() += 1;
            Self::scripted_failure(&mut state, url)?;
            if !is_full_commit_id(sha) {
                return Err(GitError::Failed {
                    message: format!("{sha:?} is not a full commit id"),
                });
            }
            let repo = state
                .repos
                .get(url)
                .ok_or_else(|| GitError::NotFound(format!("no repository at {url}")))?;
            repo.commits
                .get(sha)
                .cloned()
                .ok_or_else(|| GitError::NotFound(format!("{url} has no commit {sha}")))?
        };
        if dest.symlink_metadata().is_ok() {
            return Err(GitError::Failed {
                message: format!("{} already exists", dest.display()),
            });
        }
        write_files(dest, &files).map_err(|e| {
            let _ = std::fs::remove_dir_all(dest);
            GitError::Failed {
                message: format!("writing into {}: {e}", dest.display()),
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const URL: &str = "https://git.example/acme/skills";
    const A: &str = "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa";
    const B: &str = "bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb";

    #[tokio::test]
    async fn faults_come_in_order_then_unavailable_until_cleared_and_all_calls_count() {
        let git = FakeRefResolver::new();
        git.set_ref(URL, "refs/heads/main", A);
        git.fail_next(URL, GitError::Refused("no".into()));
        git.set_unavailable(URL, true);
        assert_eq!(
            git.list_refs(URL).await,
            Err(GitError::Refused("no".into()))
        );
        assert!(matches!(
            git.list_refs(URL).await,
            Err(GitError::Unavailable(_))
        ));
        git.set_unavailable(URL, false);
        assert_eq!(git.list_refs(URL).await.unwrap().len(), 1);
        assert!(matches!(
            git.list_refs("https://git.example/other").await,
            Err(GitError::NotFound(_))
        ));
        assert_eq!(git.list_calls(URL), 3);
        assert_eq!(git.total_list_calls(), 4);
        assert_eq!(git.fetch_calls(URL), 0);
    }

    #[tokio::test]
    async fn a_lightweight_tag_over_an_annotated_one_drops_the_peeled_line() {
        let git = FakeRefResolver::new();
        git.annotated_tag(URL, "v1", B, A);
        assert_eq!(git.list_refs(URL).await.unwrap().len(), 2);
        git.set_ref(URL, "refs/tags/v1", A);
        assert_eq!(
            git.list_refs(URL).await.unwrap(),
            vec![RemoteRef {
                name: "refs/tags/v1".into(),
                sha: A.into()
            }]
        );
    }
}
