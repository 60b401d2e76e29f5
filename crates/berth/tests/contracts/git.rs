//! The `RefResolver` contract: one suite of cases, each an async fn over
//! `&dyn RefResolver` and an [`Upstream`] that sets repositories up, run
//!
//! - `file::` — `GitCli` on local bare repositories (`file://` URLs),
//! - `daemon::` — `GitCli` on the same kind of repositories served by a
//!   `git daemon` on loopback (`git://`), the network path,
//! - `fake::` — `FakeRefResolver`.
//!
//! The real upstreams are made with the `git` binary (commits, branches
//! force-pushed, lightweight and annotated tags, tags moved with `tag -f`,
//! refs deleted by push); without git these tests fail. `cli::` holds the
//! tests of `GitCli` alone: refused transports, injection attempts, the
//! timeout.

use crate::common;

use std::collections::{BTreeMap, HashMap};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use berth::adapters::git::{GitCli, GitProtocol};
use berth::fakes::FakeRefResolver;
use berth::ports::git::{GitError, RefResolver};
use sha2::{Digest, Sha256};

// --- upstreams ----------------------------------------------------------------

/// Sets up the repositories a case reads. URLs are whatever the backend
/// serves; refs are full names.
trait Upstream {
    /// A new, empty repository; its URL.
    fn new_repo(&self) -> String;
    /// A URL where there is no repository.
    fn missing_url(&self) -> String;
    /// A new commit in `url`'s repository, on top of the previous one,
    /// holding exactly `files` (path, content). No ref points at it yet.
    fn commit(&self, url: &str, files: &[(&str, &str)]) -> String;
    /// Force-pushes branch `refs/heads/<branch>` to `sha`.
    fn push_branch(&self, url: &str, branch: &str, sha: &str);
    /// `git tag -f <tag> <sha>`, pushed.
    fn lightweight_tag(&self, url: &str, tag: &str, sha: &str);
    /// `git tag -a -f <tag> <sha>`, pushed; the tag object's id.
    fn annotated_tag(&self, url: &str, tag: &str, sha: &str) -> String;
    /// Deletes ref `name` by push.
    fn delete_ref(&self, url: &str, name: &str);
    /// The repository vanishes.
    fn remove_repo(&self, url: &str);
}

/// Runs the test harness's own git (not the adapter) in a clean
/// environment; panics on failure. Returns stdout, trimmed.
fn git(args: &[&str], stdin: Option<&str>, index: Option<&Path>) -> String {
    let mut command = Command::new("git");
    command
        .args(args)
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("HOME", "/nonexistent")
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .env("GIT_CONFIG_GLOBAL", "/dev/null")
        .env("GIT_AUTHOR_NAME", "berth test")
        .env("GIT_AUTHOR_EMAIL", "test@berth.invalid")
        .env("GIT_COMMITTER_NAME", "berth test")
        .env("GIT_COMMITTER_EMAIL", "test@berth.invalid")
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    if let Some(index) = index {
        command.env("GIT_INDEX_FILE", index);
    }
    let mut child = command
        .spawn()
        .expect("the `git` binary must be installed (scripts/test-env.sh installs it)");
    if let Some(input) = stdin {
        child
            .stdin
            .take()
            .unwrap()
            .write_all(input.as_bytes())
            .unwrap();
    }
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "git {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap().trim().to_owned()
}

/// A `git daemon` on loopback serving `base`; killed when dropped.
struct Daemon {
    child: Child,
    port: u16,
}

impl Daemon {
    async fn start(base: &Path) -> Daemon {
        // A free port: bound and released (the daemon sets SO_REUSEADDR).
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let child = Command::new("git")
            .arg("daemon")
            .arg("--export-all")
            .arg(format!("--base-path={}", base.display()))
            .arg("--listen=127.0.0.1")
            .arg(format!("--port={port}"))
            .arg("--reuseaddr")
            .arg(base)
            .env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .env("HOME", "/nonexistent")
            .env("GIT_CONFIG_NOSYSTEM", "1")
            .env("GIT_CONFIG_GLOBAL", "/dev/null")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("the `git` binary must be installed (scripts/test-env.sh installs it)");
        let mut daemon = Daemon { child, port };
        common::eventually("git daemon to listen", async || {
            assert!(
                daemon.child.try_wait().unwrap().is_none(),
                "git daemon exited"
            );
            tokio::net::TcpStream::connect(("127.0.0.1", port))
                .await
                .ok()
        })
        .await;
        daemon
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Bare repositories in a temporary directory: `<dir>/up/r<N>.git` is the
/// upstream a URL names; commits are made in `<dir>/work/r<N>.git` and
/// pushed from there.
struct RealUpstream {
    dir: tempfile::TempDir,
    url_base: String,
    resolver: GitCli,
    next_repo: AtomicUsize,
    next_commit: AtomicUsize,
    /// url → the last commit made in it (the next one's parent).
    heads: Mutex<HashMap<String, String>>,
    _daemon: Option<Daemon>,
}

impl RealUpstream {
    /// Served as `file://` URLs.
    fn file() -> RealUpstream {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("up")).unwrap();
        let url_base = format!("file://{}/", dir.path().join("up").display());
        RealUpstream::with(dir, url_base, GitProtocol::File, None)
    }

    /// Served by `git daemon` on loopback, as `git://127.0.0.1:<port>/`.
    async fn daemon() -> RealUpstream {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("up")).unwrap();
        let daemon = Daemon::start(&dir.path().join("up")).await;
        let url_base = format!("git://127.0.0.1:{}/", daemon.port);
        RealUpstream::with(dir, url_base, GitProtocol::Git, Some(daemon))
    }

    fn with(
        dir: tempfile::TempDir,
        url_base: String,
        protocol: GitProtocol,
        daemon: Option<Daemon>,
    ) -> RealUpstream {
        RealUpstream {
            dir,
            url_base,
            resolver: GitCli::new(&[protocol], Duration::from_secs(60)),
            next_repo: AtomicUsize::new(0),
            next_commit: AtomicUsize::new(0),
            heads: Mutex::new(HashMap::new()),
            _daemon: daemon,
        }
    }

    fn name_of<'a>(&self, url: &'a str) -> &'a str {
        url.strip_prefix(&self.url_base)
            .unwrap_or_else(|| panic!("{url} is not one of ours"))
    }

    fn upstream(&self, url: &str) -> String {
        let path = self.dir.path().join("up").join(self.name_of(url));
        path.display().to_string()
    }

    fn work(&self, url: &str) -> String {
        let path = self.dir.path().join("work").join(self.name_of(url));
        path.display().to_string()
    }

    fn push(&self, url: &str, refspec: &str) {
        git(
            &[
                "--git-dir",
                &self.work(url),
                "push",
                "--quiet",
                "--force",
                &self.upstream(url),
                refspec,
            ],
            None,
            None,
        );
    }
}

impl Upstream for RealUpstream {
    fn new_repo(&self) -> String {
        let name = format!("r{}.git", self.next_repo.fetch_add(1, Ordering::Relaxed));
        let url = format!("{}{name}", self.url_base);
        for path in [self.upstream(&url), self.work(&url)] {
            git(
                &[
                    "-c",
                    "init.defaultBranch=main",
                    "init",
                    "--quiet",
                    "--bare",
                    &path,
                ],
                None,
                None,
            );
        }
        url
    }

    fn missing_url(&self) -> String {
        format!("{}missing.git", self.url_base)
    }

    fn commit(&self, url: &str, files: &[(&str, &str)]) -> String {
        let work = self.work(url);
        let n = self.next_commit.fetch_add(1, Ordering::Relaxed);
        let index = self.dir.path().join(format!("index-{n}"));
        for (path, content) in files {
            let blob = git(
                &["--git-dir", &work, "hash-object", "-w", "--stdin"],
                Some(content),
                None,
            );
            git(
                &[
                    "--git-dir",
                    &work,
                    "update-index",
                    "--add",
                    "--cacheinfo",
                    &format!("100644,{blob},{path}"),
                ],
                None,
                Some(&index),
            );
        }
        let tree = if files.is_empty() {
            git(&["--git-dir", &work, "mktree"], Some(""), None)
        } else {
            git(&["--git-dir", &work, "write-tree"], None, Some(&index))
        };
        let _ = std::fs::remove_file(&index);
        let message = format!("commit {n}");
        let mut heads = self.heads.lock().unwrap();
        let mut args = vec!["--git-dir", &work, "commit-tree", &tree, "-m", &message];
        if let Some(parent) = heads.get(url) {
            args.extend(["-p", parent]);
        }
        let sha = git(&args, None, None);
        heads.insert(url.to_owned(), sha.clone());
        sha
    }

    fn push_branch(&self, url: &str, branch: &str, sha: &str) {
        self.push(url, &format!("{sha}:refs/heads/{branch}"));
    }

    fn lightweight_tag(&self, url: &str, tag: &str, sha: &str) {
        git(
            &["--git-dir", &self.work(url), "tag", "-f", tag, sha],
            None,
            None,
        );
        self.push(url, &format!("refs/tags/{tag}:refs/tags/{tag}"));
    }

    fn annotated_tag(&self, url: &str, tag: &str, sha: &str) -> String {
        let work = self.work(url);
        let message = format!("release {tag}");
        git(
            &[
                "--git-dir",
                &work,
                "tag",
                "-a",
                "-f",
                "-m",
                &message,
                tag,
                sha,
            ],
            None,
            None,
        );
        self.push(url, &format!("refs/tags/{tag}:refs/tags/{tag}"));
        git(
            &["--git-dir", &work, "rev-parse", &format!("refs/tags/{tag}")],
            None,
            None,
        )
    }

    fn delete_ref(&self, url: &str, name: &str) {
        self.push(url, &format!(":{name}"));
    }

    fn remove_repo(&self, url: &str) {
        std::fs::remove_dir_all(self.upstream(url)).unwrap();
    }
}

/// The fake's repositories, set up through its own methods.
struct FakeUpstream {
    fake: FakeRefResolver,
    next_repo: AtomicUsize,
    next_object: AtomicUsize,
}

impl FakeUpstream {
    fn new() -> FakeUpstream {
        FakeUpstream {
            fake: FakeRefResolver::new(),
            next_repo: AtomicUsize::new(0),
            next_object: AtomicUsize::new(0),
        }
    }

    /// A new, distinct 40-hex object id.
    fn object_id(&self) -> String {
        let n = self.next_object.fetch_add(1, Ordering::Relaxed);
        let hash = Sha256::digest(format!("object {n}"));
        hash.iter().take(20).map(|b| format!("{b:02x}")).collect()
    }
}

impl Upstream for FakeUpstream {
    fn new_repo(&self) -> String {
        let n = self.next_repo.fetch_add(1, Ordering::Relaxed);
        let url = format!("https://git.example/acme/r{n}.git");
        self.fake.create_repo(&url);
        url
    }

    fn missing_url(&self) -> String {
        "https://git.example/acme/missing.git".into()
    }

    fn commit(&self, url: &str, files: &[(&str, &str)]) -> String {
        let sha = self.object_id();
        self.fake.add_commit(url, &sha, files);
        sha
    }

    fn push_branch(&self, url: &str, branch: &str, sha: &str) {
        self.fake.set_ref(url, &format!("refs/heads/{branch}"), sha);
    }

    fn lightweight_tag(&self, url: &str, tag: &str, sha: &str) {
        self.fake.set_ref(url, &format!("refs/tags/{tag}"), sha);
    }

    fn annotated_tag(&self, url: &str, tag: &str, sha: &str) -> String {
        let tag_object = self.object_id();
        self.fake.annotated_tag(url, tag, &tag_object, sha);
        tag_object
    }

    fn delete_ref(&self, url: &str, name: &str) {
        self.fake.delete_ref(url, name);
    }

    fn remove_repo(&self, url: &str) {
        self.fake.remove_repo(url);
    }
}

macro_rules! contract {
    ($($case:ident),+ $(,)?) => {
        mod file {
            $(
                #[tokio::test]
                async fn $case() {
                    let up = super::RealUpstream::file();
                    super::cases::$case(&up.resolver, &up).await
                }
            )+
        }
        mod daemon {
            $(
                #[tokio::test]
                async fn $case() {
                    let up = super::RealUpstream::daemon().await;
                    super::cases::$case(&up.resolver, &up).await
                }
            )+
        }
        mod fake {
            $(
                #[tokio::test]
                async fn $case() {
                    let up = super::FakeUpstream::new();
                    super::cases::$case(&up.fake, &up).await
                }
            )+
        }
    };
}

contract!(
    lists_heads_and_tags_with_the_annotated_tags_peeled_line,
    an_empty_repository_lists_nothing,
    a_moved_tag_and_a_force_pushed_branch_show_their_new_commits,
    a_deleted_ref_disappears,
    a_missing_or_vanished_repository_is_not_found,
    fetch_commit_writes_exactly_that_commits_files,
    fetching_a_missing_commit_fails_and_leaves_no_directory,
    fetch_commit_takes_only_full_commit_ids,
    fetch_commit_never_touches_an_existing_directory,
);

/// The listing as name → sha; panics on a duplicate name.
async fn refs(git: &dyn RefResolver, url: &str) -> BTreeMap<String, String> {
    let mut map = BTreeMap::new();
    for r in git.list_refs(url).await.unwrap() {
        assert!(
            map.insert(r.name.clone(), r.sha).is_none(),
            "{} twice",
            r.name
        );
    }
    map
}

fn expected(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(name, sha)| ((*name).to_owned(), (*sha).to_owned()))
        .collect()
}

/// Every entry under `dir` (relative path → file content); directories
/// only as the paths of their files, so an empty one shows as nothing.
fn tree(dir: &Path) -> BTreeMap<String, String> {
    fn walk(root: &Path, dir: &Path, out: &mut BTreeMap<String, String>) {
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            let relative = path.strip_prefix(root).unwrap().display().to_string();
            if path.is_dir() {
                assert!(!relative.ends_with(".git"), "{relative} is a git directory");
                walk(root, &path, out);
            } else {
                out.insert(relative, std::fs::read_to_string(&path).unwrap());
            }
        }
    }
    let mut out = BTreeMap::new();
    walk(dir, dir, &mut out);
    out
}

fn dest_in(dir: &tempfile::TempDir, name: &str) -> PathBuf {
    dir.path().join(name)
}

// --- the cases ----------------------------------------------------------------

mod cases {
    use super::*;

    pub async fn lists_heads_and_tags_with_the_annotated_tags_peeled_line(
        git: &dyn RefResolver,
        up: &dyn Upstream,
    ) {
        let url = up.new_repo();
        let first = up.commit(&url, &[("README", "one")]);
        let second = up.commit(&url, &[("README", "two")]);
        up.push_branch(&url, "main", &second);
        up.push_branch(&url, "dev", &first);
        up.lightweight_tag(&url, "light", &first);
        let tag_object = up.annotated_tag(&url, "v1.0.0", &second);
        assert_ne!(tag_object, second);

        assert_eq!(
            refs(git, &url).await,
            expected(&[
                ("refs/heads/dev", &first),
                ("refs/heads/main", &second),
                ("refs/tags/light", &first),
                ("refs/tags/v1.0.0", &tag_object),
                ("refs/tags/v1.0.0^{}", &second),
            ])
        );
    }

    pub async fn an_empty_repository_lists_nothing(git: &dyn RefResolver, up: &dyn Upstream) {
        let url = up.new_repo();
        assert_eq!(git.list_refs(&url).await, Ok(vec![]));
    }

    pub async fn a_moved_tag_and_a_force_pushed_branch_show_their_new_commits(
        git: &dyn RefResolver,
        up: &dyn Upstream,
    ) {
        let url = up.new_repo();
        let old = up.commit(&url, &[("README", "old")]);
        let new = up.commit(&url, &[("README", "new")]);
        up.push_branch(&url, "main", &new);
        up.lightweight_tag(&url, "stable", &old);
        let old_tag = up.annotated_tag(&url, "latest", &old);
        assert_eq!(
            refs(git, &url).await,
            expected(&[
                ("refs/heads/main", &new),
                ("refs/tags/latest", &old_tag),
                ("refs/tags/latest^{}", &old),
                ("refs/tags/stable", &old),
            ])
        );

        // main goes back to its parent (not a fast-forward); both tags move on.
        up.push_branch(&url, "main", &old);
        up.lightweight_tag(&url, "stable", &new);
        let new_tag = up.annotated_tag(&url, "latest", &new);
        assert_ne!(new_tag, old_tag);
        assert_eq!(
            refs(git, &url).await,
            expected(&[
                ("refs/heads/main", &old),
                ("refs/tags/latest", &new_tag),
                ("refs/tags/latest^{}", &new),
                ("refs/tags/stable", &new),
            ])
        );
    }

    pub async fn a_deleted_ref_disappears(git: &dyn RefResolver, up: &dyn Upstream) {
        let url = up.new_repo();
        let sha = up.commit(&url, &[("README", "x")]);
        up.push_branch(&url, "main", &sha);
        up.push_branch(&url, "topic", &sha);
        up.lightweight_tag(&url, "light", &sha);
        up.annotated_tag(&url, "v1", &sha);
        assert_eq!(refs(git, &url).await.len(), 5);

        up.delete_ref(&url, "refs/heads/topic");
        up.delete_ref(&url, "refs/tags/v1");
        assert_eq!(
            refs(git, &url).await,
            expected(&[("refs/heads/main", &sha), ("refs/tags/light", &sha)])
        );
    }

    pub async fn a_missing_or_vanished_repository_is_not_found(
        git: &dyn RefResolver,
        up: &dyn Upstream,
    ) {
        let dir = tempfile::tempdir().unwrap();
        let missing = up.missing_url();
        let err = git.list_refs(&missing).await;
        assert!(matches!(err, Err(GitError::NotFound(_))), "{err:?}");
        let dest = dest_in(&dir, "missing");
        let err = git.fetch_commit(&missing, &"1".repeat(40), &dest).await;
        assert!(matches!(err, Err(GitError::NotFound(_))), "{err:?}");
        assert!(!dest.exists());

        let url = up.new_repo();
        let sha = up.commit(&url, &[("README", "x")]);
        up.push_branch(&url, "main", &sha);
        assert_eq!(refs(git, &url).await.len(), 1);
        up.remove_repo(&url);
        let err = git.list_refs(&url).await;
        assert!(matches!(err, Err(GitError::NotFound(_))), "{err:?}");
        let dest = dest_in(&dir, "vanished");
        let err = git.fetch_commit(&url, &sha, &dest).await;
        assert!(matches!(err, Err(GitError::NotFound(_))), "{err:?}");
        assert!(!dest.exists());
    }

    pub async fn fetch_commit_writes_exactly_that_commits_files(
        git: &dyn RefResolver,
        up: &dyn Upstream,
    ) {
        let url = up.new_repo();
        let first = up.commit(
            &url,
            &[
                ("README", "one\n"),
                ("lib/a.txt", "a\n"),
                (".hidden", "h\n"),
            ],
        );
        let second = up.commit(&url, &[("README", "two\n"), ("lib/deep/b.txt", "b\n")]);
        up.push_branch(&url, "main", &second);
        let tag_object = up.annotated_tag(&url, "v1", &first);

        let dir = tempfile::tempdir().unwrap();
        let tip = dest_in(&dir, "tip");
        git.fetch_commit(&url, &second, &tip).await.unwrap();
        assert_eq!(
            tree(&tip),
            expected(&[("README", "two\n"), ("lib/deep/b.txt", "b\n")])
        );

        // A commit below the branch tip (what an annotated tag peels to).
        assert_ne!(tag_object, first);
        let below = dest_in(&dir, "below");
        git.fetch_commit(&url, &first, &below).await.unwrap();
        assert_eq!(
            tree(&below),
            expected(&[
                (".hidden", "h\n"),
                ("README", "one\n"),
                ("lib/a.txt", "a\n")
            ])
        );
        assert!(!below.join(".git").exists());
    }

    pub async fn fetching_a_missing_commit_fails_and_leaves_no_directory(
        git: &dyn RefResolver,
        up: &dyn Upstream,
    ) {
        let url = up.new_repo();
        let sha = up.commit(&url, &[("README", "x")]);
        up.push_branch(&url, "main", &sha);
        let dir = tempfile::tempdir().unwrap();
        let dest = dest_in(&dir, "plugin");
        let err = git.fetch_commit(&url, &"1".repeat(40), &dest).await;
        assert!(matches!(err, Err(GitError::NotFound(_))), "{err:?}");
        assert!(!dest.exists());
    }

    pub async fn fetch_commit_takes_only_full_commit_ids(git: &dyn RefResolver, up: &dyn Upstream) {
        let url = up.new_repo();
        let sha = up.commit(&url, &[("README", "x")]);
        up.push_branch(&url, "main", &sha);
        let dir = tempfile::tempdir().unwrap();
        let dest = dest_in(&dir, "plugin");
        let short = &sha[..12];
        let upper = sha.to_uppercase();
        for not_an_id in [
            "main",
            "refs/heads/main",
            short,
            &upper,
            "--upload-pack=x",
            "",
        ] {
            let err = git.fetch_commit(&url, not_an_id, &dest).await;
            assert!(
                matches!(err, Err(GitError::Failed { .. })),
                "{not_an_id:?}: {err:?}"
            );
            assert!(!dest.exists(), "{not_an_id:?}");
        }
    }

    pub async fn fetch_commit_never_touches_an_existing_directory(
        git: &dyn RefResolver,
        up: &dyn Upstream,
    ) {
        let url = up.new_repo();
        let sha = up.commit(&url, &[("README", "new")]);
        up.push_branch(&url, "main", &sha);
        let dir = tempfile::tempdir().unwrap();
        let dest = dest_in(&dir, "plugin");
        std::fs::create_dir(&dest).unwrap();
        std::fs::write(dest.join("README"), "old").unwrap();
        let err = git.fetch_commit(&url, &sha, &dest).await;
        assert!(matches!(err, Err(GitError::Failed { .. })), "{err:?}");
        assert_eq!(tree(&dest), expected(&[("README", "old")]));
    }
}

// --- GitCli alone ---------------------------------------------------------------

mod cli {
    use tokio::io::AsyncReadExt;

    use super::*;

    fn all_protocols(timeout: Duration) -> GitCli {
        GitCli::new(
            &[
                GitProtocol::Https,
                GitProtocol::Ssh,
                GitProtocol::File,
                GitProtocol::Git,
            ],
            timeout,
        )
    }

    /// A repository with one commit on main; its URL and path.
    fn repo_with_a_commit(up: &RealUpstream) -> (String, String, String) {
        let url = up.new_repo();
        let sha = up.commit(&url, &[("README", "x")]);
        up.push_branch(&url, "main", &sha);
        let path = up.upstream(&url);
        (url, path, sha)
    }

    #[tokio::test]
    async fn local_repositories_are_refused_unless_file_is_allowed() {
        let up = RealUpstream::file();
        let (url, path, sha) = repo_with_a_commit(&up);
        let git = GitCli::new(&GitProtocol::for_plugins(false), Duration::from_secs(60));
        let dir = tempfile::tempdir().unwrap();
        let dest = dest_in(&dir, "plugin");

        // `file://`: refused by the adapter itself, before git runs.
        let err = git.list_refs(&url).await;
        assert!(matches!(err, Err(GitError::Refused(_))), "{err:?}");
        let err = git.fetch_commit(&url, &sha, &dest).await;
        assert!(matches!(err, Err(GitError::Refused(_))), "{err:?}");
        assert!(!dest.exists());
        // A plain path: refused by git (GIT_ALLOW_PROTOCOL has no `file`).
        let err = git.list_refs(&path).await;
        assert!(matches!(err, Err(GitError::Refused(_))), "{err:?}");
        let err = git.fetch_commit(&path, &sha, &dest).await;
        assert!(matches!(err, Err(GitError::Refused(_))), "{err:?}");
        assert!(!dest.exists());

        let with_file = GitCli::new(&GitProtocol::for_plugins(true), Duration::from_secs(60));
        assert_eq!(refs(&with_file, &url).await.len(), 1);
        assert_eq!(refs(&with_file, &path).await.len(), 1);
    }

    #[tokio::test]
    async fn option_shaped_urls_never_run_anything() {
        let up = RealUpstream::file();
        let (_, path, sha) = repo_with_a_commit(&up);
        let dir = tempfile::tempdir().unwrap();
        let marker = dir.path().join("pwned");
        let marker_text = marker.display().to_string();

        // The payload is live: read as an option, git runs it.
        git(
            &[
                "ls-remote",
                &format!("--upload-pack=touch {marker_text}; git-upload-pack"),
                &path,
            ],
            None,
            None,
        );
        assert!(marker.exists());
        std::fs::remove_file(&marker).unwrap();

        let git = all_protocols(Duration::from_secs(60));
        let dest = dest_in(&dir, "plugin");
        for url in [
            format!("--upload-pack=touch {marker_text}"),
            format!("--upload-pack=touch {marker_text}; git-upload-pack {path}"),
            format!("-u touch {marker_text}"),
            format!("ssh://-oProxyCommand=touch {marker_text}/x"),
        ] {
            // git itself also blocks paths and hosts that start with `-`.
            let err = git.list_refs(&url).await;
            assert!(matches!(err, Err(GitError::Refused(_))), "{url}: {err:?}");
            let err = git.fetch_commit(&url, &sha, &dest).await;
            assert!(matches!(err, Err(GitError::Refused(_))), "{url}: {err:?}");
            assert!(!dest.exists());
            assert!(!marker.exists(), "{url} ran a command");
        }
    }

    #[tokio::test]
    async fn ext_and_fd_transports_are_refused_by_git() {
        let dir = tempfile::tempdir().unwrap();
        let marker = dir.path().join("pwned");
        let url = format!("ext::sh -c touch% {}", marker.display());

        // The payload is live where ext is allowed.
        let out = Command::new("git")
            .args(["ls-remote", &url])
            .env("GIT_ALLOW_PROTOCOL", "ext")
            .env("GIT_CONFIG_NOSYSTEM", "1")
            .env("GIT_CONFIG_GLOBAL", "/dev/null")
            .output()
            .expect("the `git` binary must be installed (scripts/test-env.sh installs it)");
        assert!(!out.status.success());
        assert!(marker.exists());
        std::fs::remove_file(&marker).unwrap();

        let git = all_protocols(Duration::from_secs(60));
        let dest = dest_in(&dir, "plugin");
        for url in [url, "fd::17".to_owned()] {
            let err = git.list_refs(&url).await;
            assert!(matches!(err, Err(GitError::Refused(_))), "{url}: {err:?}");
            let err = git.fetch_commit(&url, &"1".repeat(40), &dest).await;
            assert!(matches!(err, Err(GitError::Refused(_))), "{url}: {err:?}");
            assert!(!dest.exists());
        }
        assert!(!marker.exists());
    }

    #[tokio::test]
    async fn the_timeout_kills_a_hung_git() {
        // Accepts git:// connections and never answers.
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let (accepted, mut connections) = tokio::sync::mpsc::unbounded_channel();
        tokio::spawn(async move {
            while let Ok((socket, _)) = listener.accept().await {
                let _ = accepted.send(socket);
            }
        });
        let git = GitCli::new(&[GitProtocol::Git], Duration::from_secs(1));
        let url = format!("git://127.0.0.1:{port}/x.git");
        let dir = tempfile::tempdir().unwrap();
        let dest = dest_in(&dir, "plugin");

        let err = git.list_refs(&url).await;
        assert!(matches!(err, Err(GitError::Unavailable(_))), "{err:?}");
        let err = git.fetch_commit(&url, &"1".repeat(40), &dest).await;
        assert!(matches!(err, Err(GitError::Unavailable(_))), "{err:?}");
        assert!(!dest.exists());

        // Both gits had connected and were killed: their connections end.
        for _ in 0..2 {
            let mut socket = connections.recv().await.unwrap();
            let mut request = Vec::new();
            let closed =
                tokio::time::timeout(Duration::from_secs(60), socket.read_to_end(&mut request))
                    .await;
            assert!(closed.is_ok(), "git is still connected");
            assert!(
                String::from_utf8_lossy(&request).contains("git-upload-pack /x.git"),
                "{request:?}"
            );
        }
    }
}
