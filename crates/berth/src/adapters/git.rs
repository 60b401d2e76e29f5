//! `RefResolver` on the `git` binary, hardened against the option- and
//! transport-injection class of bugs (CVE-2017-1000117, CVE-2022-24439,
//! CVE-2022-25912, CVE-2024-32884):
//!
//! - no shell: git is started directly, its arguments a vector, with
//!   `--end-of-options` (git ≥ 2.24) before every value that came from a
//!   user, so a URL like `--upload-pack=…` is never read as an option;
//! - a cleared environment (no `GIT_*` of ours leaks in): only `PATH`,
//!   `HOME=/nonexistent`, `LANG=C`, no terminal prompt, no system or global
//!   config, `GIT_ALLOW_PROTOCOL` limited to the allowed transports (so
//!   `ext::` and `fd::` never run), ssh in batch mode, hooks and
//!   submodules off;
//! - a timeout that kills git and everything it started (its own process
//!   group), and bounded output.

use std::ffi::OsStr;
use std::path::Path;
use std::process::{ExitStatus, Stdio};
use std::time::Duration;

use async_trait::async_trait;
use tokio::io::{AsyncRead, AsyncReadExt};
use tokio::process::Command;

use crate::ports::git::{is_full_commit_id, GitError, RefResolver, RemoteRef};

/// A transport git may use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum GitProtocol {
    Https,
    Ssh,
    /// Local repositories (`file://` and plain paths).
    File,
    /// The unauthenticated `git://` daemon protocol.
    Git,
}

impl GitProtocol {
    /// Its name in URLs and in `GIT_ALLOW_PROTOCOL`.
    pub fn name(self) -> &'static str {
        match self {
            GitProtocol::Https => "https",
            GitProtocol::Ssh => "ssh",
            GitProtocol::File => "file",
            GitProtocol::Git => "git",
        }
    }

    /// What plugin sources may use: https and ssh, plus local repositories
    /// only with `plugins.allow_file_sources`.
    pub fn for_plugins(allow_file_sources: bool) -> Vec<GitProtocol> {
        let mut protocols = vec![GitProtocol::Https, GitProtocol::Ssh];
        if allow_file_sources {
            protocols.push(GitProtocol::File);
        }
        protocols
    }
}

/// The most of git's standard output we read (a ref listing); more is an
/// error rather than a silently cut listing.
const STDOUT_LIMIT: usize = 16 << 20;
/// The most of git's error output we keep; the rest is read and dropped.
const STDERR_LIMIT: usize = 64 << 10;
/// The most of git's error output that goes into an error message.
const MESSAGE_LIMIT: usize = 500;

pub struct GitCli {
    protocols: Vec<GitProtocol>,
    timeout: Duration,
}

impl GitCli {
    /// `protocols`: the transports git may use (everything else is refused,
    /// by us for `scheme://` URLs and by git's `GIT_ALLOW_PROTOCOL` for all);
    /// `timeout`: how long one git command may take before it is killed.
    pub fn new(protocols: &[GitProtocol], timeout: Duration) -> GitCli {
        let mut allowed = Vec::new();
        for p in protocols {
            if !allowed.contains(p) {
                allowed.push(*p);
            }
        }
        GitCli {
            protocols: allowed,
            timeout,
        }
    }

    fn allows(&self, protocol: GitProtocol) -> bool {
        self.protocols.contains(&protocol)
    }

    /// Refuses a `scheme://` URL whose scheme is not allowed before git
    /// runs. Other forms (`host:path`, plain paths, `transport::address`)
    /// are left to git, which applies the same list (`GIT_ALLOW_PROTOCOL`).
    fn check_transport(&self, url: &str) -> Result<(), GitError> {
        let Some((scheme, _)) = url.split_once("://") else {
            return Ok(());
        };
        let is_scheme = scheme.starts_with(|c: char| c.is_ascii_alphabetic())
            && scheme
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '+' | '-' | '.'));
        if !is_scheme {
            return Ok(());
        }
        if self.protocols.iter().any(|p| p.name() == scheme) {
            Ok(())
        } else {
            Err(GitError::Refused(format!(
                "the {scheme:?} transport is not allowed (allowed: {})",
                self.allowed_list(", ")
            )))
        }
    }

    fn allowed_list(&self, separator: &str) -> String {
        let names: Vec<&str> = self.protocols.iter().map(|p| p.name()).collect();
        names.join(separator)
    }

    /// Runs `git <hardening options> <args>` in `cwd` and returns its
    /// output if it exited 0. `remote`: whether the command talks to a
    /// remote, so that its failure is classified from git's error output;
    /// local commands fail as [`GitError::Failed`].
    async fn run(&self, cwd: &Path, args: &[&OsStr], remote: bool) -> Result<Vec<u8>, GitError> {
        let file_allow = if self.allows(GitProtocol::File) {
            "protocol.file.allow=always"
        } else {
            "protocol.file.allow=never"
        };
        let mut command = Command::new("git");
        command
            .env_clear()
            .env(
                "PATH",
                std::env::var_os("PATH").unwrap_or_else(|| "/usr/local/bin:/usr/bin:/bin".into()),
            )
            // Nothing of the service account's home is read through $HOME
            // (ssh finds its keys and known_hosts from the password database).
            .env("HOME", "/nonexistent")
            // git's messages in English: they are matched in `classify`.
            .env("LANG", "C")
            .env("GIT_TERMINAL_PROMPT", "0")
            .env("GIT_CONFIG_NOSYSTEM", "1")
            .env("GIT_CONFIG_GLOBAL", "/dev/null")
            .env("GIT_ALLOW_PROTOCOL", self.allowed_list(":"))
            .env("GIT_SSH_COMMAND", "ssh -o BatchMode=yes")
            .args(["-c", file_allow])
            .args(["-c", "core.hooksPath=/dev/null"])
            .args(["-c", "submodule.recurse=false"])
            .args(["-c", "init.defaultBranch=main"])
            .args(["-c", "advice.detachedHead=false"])
            .args(args)
            .current_dir(cwd)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            // Its own group, so that the timeout also ends what git started
            // (ssh, remote helpers, upload-pack).
            .process_group(0);
        let mut child = command.spawn().map_err(|e| GitError::Failed {
            message: format!("cannot run git: {e}"),
        })?;
        let mut group = ProcessGroup(child.id());
        let stdout = child.stdout.take().expect("stdout is piped");
        let stderr = child.stderr.take().expect("stderr is piped");
        let finished = async {
            let (stdout, stderr) =
                tokio::try_join!(read_limited(stdout), read_keeping_head(stderr))?;
            let status = child.wait().await.map_err(|e| GitError::Failed {
                message: format!("waiting for git: {e}"),
            })?;
            Ok::<_, GitError>((status, stdout, stderr))
        };
        let (status, stdout, stderr) = match tokio::time::timeout(self.timeout, finished).await {
            Ok(Ok(done)) => {
                group.0 = None;
                done
            }
            Ok(Err(error)) => return Err(error),
            Err(_) => {
                return Err(GitError::Unavailable(format!(
                    "git did not finish within {:?}",
                    self.timeout
                )))
            }
        };
        if status.success() {
            return Ok(stdout);
        }
        let message = error_message(&stderr, status);
        Err(if remote {
            classify(&stderr, message)
        } else {
            GitError::Failed { message }
        })
    }

    async fn fetch_into(&self, url: &str, sha: &str, dest: &Path) -> Result<(), GitError> {
        let os = |s: &'static str| OsStr::new(s);
        // An empty repository of our own (no templates, so no sample hooks).
        self.run(dest, &[os("init"), os("--quiet"), os("--template=")], false)
            .await?;
        self.run(
            dest,
            &[
                os("fetch"),
                os("--quiet"),
                os("--depth=1"),
                os("--no-tags"),
                os("--no-recurse-submodules"),
                os("--end-of-options"),
                OsStr::new(url),
                OsStr::new(sha),
            ],
            true,
        )
        .await?;
        self.run(
            dest,
            &[
                os("checkout"),
                os("--quiet"),
                os("--detach"),
                os("--end-of-options"),
                OsStr::new(sha),
            ],
            false,
        )
        .await?;
        tokio::fs::remove_dir_all(dest.join(".git"))
            .await
            .map_err(|e| GitError::Failed {
                message: format!("removing {}: {e}", dest.join(".git").display()),
            })
    }
}

impl std::fmt::Debug for GitCli {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GitCli")
            .field("protocols", &self.allowed_list(":"))
            .field("timeout", &self.timeout)
            .finish()
    }
}

#[async_trait]
impl RefResolver for GitCli {
    async fn list_refs(&self, url: &str) -> Result<Vec<RemoteRef>, GitError> {
        self.check_transport(url)?;
        // From `/`: outside any repository whose local config could reach
        // git (ls-remote reads the config of a repository it finds).
        let stdout = self
            .run(
                Path::new("/"),
                &[
                    OsStr::new("ls-remote"),
                    OsStr::new("--heads"),
                    OsStr::new("--tags"),
                    OsStr::new("--end-of-options"),
                    OsStr::new(url),
                ],
                true,
            )
            .await?;
        parse_ls_remote(&stdout)
    }

    async fn fetch_commit(&self, url: &str, sha: &str, dest: &Path) -> Result<(), GitError> {
        self.check_transport(url)?;
        if !is_full_commit_id(sha) {
            return Err(GitError::Failed {
                message: format!("{sha:?} is not a full commit id"),
            });
        }
        if tokio::fs::symlink_metadata(dest).await.is_ok() {
            return Err(GitError::Failed {
                message: format!("{} already exists", dest.display()),
            });
        }
        tokio::fs::create_dir_all(dest)
            .await
            .map_err(|e| GitError::Failed {
                message: format!("creating {}: {e}", dest.display()),
            })?;
        let result = self.fetch_into(url, sha, dest).await;
        if result.is_err() {
            // Best effort: the error says what went wrong, not this.
            let _ = tokio::fs::remove_dir_all(dest).await;
        }
        result
    }
}

/// Kills a process group when dropped, unless `.0` was cleared (git
/// exited on its own): on a timeout, on an error, and when the caller's
/// future is dropped.
struct ProcessGroup(Option<u32>);

impl Drop for ProcessGroup {
    fn drop(&mut self) {
        if let Some(pid) = self.0.and_then(|pid| libc::pid_t::try_from(pid).ok()) {
            // SAFETY: kill(2) has no memory effects; `-pid` is the group
            // git leads (it was started with `process_group(0)`).
            unsafe {
                libc::kill(-pid, libc::SIGKILL);
            }
        }
    }
}

/// All of `reader`, or an error past [`STDOUT_LIMIT`].
async fn read_limited(reader: impl AsyncRead + Unpin) -> Result<Vec<u8>, GitError> {
    let mut out = Vec::new();
    reader
        .take(STDOUT_LIMIT as u64 + 1)
        .read_to_end(&mut out)
        .await
        .map_err(|e| GitError::Failed {
            message: format!("reading git's output: {e}"),
        })?;
    if out.len() > STDOUT_LIMIT {
        return Err(GitError::Failed {
            message: format!("git's output is larger than {} MiB", STDOUT_LIMIT >> 20),
        });
    }
    Ok(out)
}

/// The first [`STDERR_LIMIT`] bytes of `reader`; the rest is read (so git
/// never blocks on a full pipe) and dropped.
async fn read_keeping_head(mut reader: impl AsyncRead + Unpin) -> Result<Vec<u8>, GitError> {
    let mut head = Vec::new();
    let failed = |e: std::io::Error| GitError::Failed {
        message: format!("reading git's error output: {e}"),
    };
    (&mut reader)
        .take(STDERR_LIMIT as u64)
        .read_to_end(&mut head)
        .await
        .map_err(failed)?;
    tokio::io::copy(&mut reader, &mut tokio::io::sink())
        .await
        .map_err(failed)?;
    Ok(head)
}

/// `<sha>\t<ref>` lines.
fn parse_ls_remote(stdout: &[u8]) -> Result<Vec<RemoteRef>, GitError> {
    let text = std::str::from_utf8(stdout).map_err(|_| GitError::Failed {
        message: "git ls-remote printed a ref name that is not UTF-8".into(),
    })?;
    text.lines()
        .filter(|line| !line.is_empty())
        .map(|line| match line.split_once('\t') {
            Some((sha, name)) if is_full_commit_id(sha) && !name.is_empty() => Ok(RemoteRef {
                name: name.to_owned(),
                sha: sha.to_owned(),
            }),
            _ => Err(GitError::Failed {
                message: format!("unexpected line from git ls-remote: {}", bounded(line)),
            }),
        })
        .collect()
}

/// git's error output as one bounded line: its non-empty lines, `hint:`
/// advice dropped, joined with `; `.
fn error_message(stderr: &[u8], status: ExitStatus) -> String {
    let text = String::from_utf8_lossy(stderr);
    let lines: Vec<&str> = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with("hint:"))
        .collect();
    if lines.is_empty() {
        return format!("git exited with {status} and no message");
    }
    bounded(&lines.join("; "))
}

fn bounded(text: &str) -> String {
    if text.len() <= MESSAGE_LIMIT {
        return text.to_owned();
    }
    let mut end = MESSAGE_LIMIT;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &text[..end])
}

#[derive(Debug, Clone, Copy)]
enum Class {
    NotFound,
    Unavailable,
    Refused,
}

/// git reports failures only as text (with `LANG=C`, stable English), so
/// this process boundary is the one place that reads it. The first needle
/// found (in order, in the lowercased error output) decides; nothing found
/// is `Failed`. Refusals first, then network failures (ssh prints "Could
/// not read from remote repository" after those too), then missing or
/// unreadable repositories and commits.
const STDERR_CLASSES: &[(&str, Class)] = &[
    // GIT_ALLOW_PROTOCOL / protocol.<name>.allow: "transport 'ext' not allowed".
    ("' not allowed", Class::Refused),
    // A `transport::address` URL of a transport git does not know.
    ("unable to find remote helper", Class::Refused),
    // "strange hostname '-oProxyCommand=…' blocked", "strange pathname … blocked".
    ("' blocked", Class::Refused),
    // curl ("Could not resolve host") and ssh ("Could not resolve hostname").
    ("could not resolve host", Class::Unavailable),
    ("temporary failure in name resolution", Class::Unavailable),
    ("connection refused", Class::Unavailable),
    ("connection reset", Class::Unavailable),
    ("timed out", Class::Unavailable),
    ("network is unreachable", Class::Unavailable),
    ("no route to host", Class::Unavailable),
    // git:// ("unable to connect to 127.0.0.1").
    ("unable to connect", Class::Unavailable),
    // HTTP 5xx from a smart-HTTP server.
    ("the requested url returned error: 5", Class::Unavailable),
    // A commit the remote does not have: "upload-pack: not our ref <sha>".
    ("not our ref", Class::NotFound),
    ("does not appear to be a git repository", Class::NotFound),
    // GitHub / GitLab over ssh and https ("ERROR: Repository not found.").
    ("repository not found", Class::NotFound),
    // https: "repository 'https://…/' not found".
    ("' not found", Class::NotFound),
    // git daemon.
    ("access denied or repository not exported", Class::NotFound),
    // https that wants credentials, prompts being off; 401/403/404.
    ("could not read username", Class::NotFound),
    ("authentication failed", Class::NotFound),
    ("the requested url returned error: 4", Class::NotFound),
    // ssh without an accepted key.
    ("permission denied (publickey", Class::NotFound),
    ("could not read from remote repository", Class::NotFound),
];

fn classify(stderr: &[u8], message: String) -> GitError {
    let text = String::from_utf8_lossy(stderr).to_lowercase();
    let class = STDERR_CLASSES
        .iter()
        .find(|(needle, _)| text.contains(needle))
        .map(|(_, class)| *class);
    match class {
        Some(Class::NotFound) => GitError::NotFound(message),
        Some(Class::Unavailable) => GitError::Unavailable(message),
        Some(Class::Refused) => GitError::Refused(message),
        None => GitError::Failed { message },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ls_remote_lines_become_refs_and_anything_else_is_an_error() {
        let sha = "2eb207076653e1a849cf610f2a45d281a1c894aa";
        let tag = "2b02897cf1f87751ba1c24a027d5e42673c8309c";
        let out =
            format!("{sha}\trefs/heads/main\n{tag}\trefs/tags/v1\n{sha}\trefs/tags/v1^{{}}\n");
        assert_eq!(
            parse_ls_remote(out.as_bytes()).unwrap(),
            vec![
                RemoteRef {
                    name: "refs/heads/main".into(),
                    sha: sha.into()
                },
                RemoteRef {
                    name: "refs/tags/v1".into(),
                    sha: tag.into()
                },
                RemoteRef {
                    name: "refs/tags/v1^{}".into(),
                    sha: sha.into()
                },
            ]
        );
        assert_eq!(parse_ls_remote(b"").unwrap(), vec![]);
        for bad in [
            "xyz\trefs/heads/main",
            &format!("{sha} refs/heads/main"),
            &format!("{sha}\t"),
        ] {
            assert!(
                matches!(
                    parse_ls_remote(bad.as_bytes()),
                    Err(GitError::Failed { .. })
                ),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn git_messages_map_to_kinds() {
        fn kind(error: &GitError) -> &'static str {
            match error {
                GitError::NotFound(_) => "not found",
                GitError::Unavailable(_) => "unavailable",
                GitError::Refused(_) => "refused",
                GitError::Failed { .. } => "failed",
            }
        }
        let cases = [
            ("fatal: transport 'ext' not allowed\n", "refused"),
            (
                "fatal: strange hostname '-oProxyCommand=x' blocked\n",
                "refused",
            ),
            (
                "ssh: connect to host h port 22: Connection refused\n\
                 fatal: Could not read from remote repository.\n",
                "unavailable",
            ),
            (
                "fatal: unable to access 'https://h/x/': Could not resolve host: h\n",
                "unavailable",
            ),
            (
                "fatal: remote error: upload-pack: not our ref 1111\n",
                "not found",
            ),
            (
                "fatal: '/x' does not appear to be a git repository\n\
                 fatal: Could not read from remote repository.\n",
                "not found",
            ),
            (
                "fatal: could not read Username for 'https://h': terminal prompts disabled\n",
                "not found",
            ),
            (
                "fatal: unable to access 'https://h/': SSL certificate problem\n",
                "failed",
            ),
        ];
        for (stderr, expected) in cases {
            let error = classify(stderr.as_bytes(), String::new());
            assert_eq!(kind(&error), expected, "{stderr:?}");
        }
    }

    #[test]
    fn the_message_is_one_bounded_line_without_hints() {
        let status = std::process::Command::new("false").status().unwrap();
        let long = format!(
            "fatal: {}\nhint: try again\n\nfatal: second\n",
            "é".repeat(400)
        );
        let message = error_message(long.as_bytes(), status);
        assert!(message.starts_with("fatal: éé"));
        assert!(message.ends_with('…'));
        assert!(message.len() <= MESSAGE_LIMIT + '…'.len_utf8());
        assert!(!message.contains("hint") && !message.contains('\n'));
        assert_eq!(
            error_message(b"fatal: a\nhint: b\nfatal: c\n", status),
            "fatal: a; fatal: c"
        );
        assert!(error_message(b"", status).contains("no message"));
    }

    #[test]
    fn only_listed_schemes_pass_the_check() {
        let git = GitCli::new(&GitProtocol::for_plugins(false), Duration::from_secs(1));
        assert_eq!(git.check_transport("https://h/x"), Ok(()));
        assert_eq!(git.check_transport("ssh://git@h/x"), Ok(()));
        // Left to GIT_ALLOW_PROTOCOL: scp-like, paths, `transport::`.
        assert_eq!(git.check_transport("git@h:x"), Ok(()));
        for refused in [
            "file:///x",
            "git://h/x",
            "http://h/x",
            "HTTPS://h/x",
            "git+ssh://h/x",
        ] {
            assert!(
                matches!(git.check_transport(refused), Err(GitError::Refused(_))),
                "{refused}"
            );
        }
        let with_file = GitCli::new(&GitProtocol::for_plugins(true), Duration::from_secs(1));
        assert_eq!(with_file.check_transport("file:///x"), Ok(()));
    }
}
