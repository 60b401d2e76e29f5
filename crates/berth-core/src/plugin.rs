//! Plugins (git drift), pure: plugin names, git sources and the policy that
//! limits them, tracked refs under git's ref-name rules, resolution of a
//! track from a remote's ref listing, the drift decision and the plugin
//! update status machine.
//!
//! Every value here ends up in a git argument vector, so parsing is the
//! line of defence against option injection (CVE-2017-1000117,
//! CVE-2022-24439, CVE-2022-25912, CVE-2024-32884): an accepted source or
//! ref never starts with `-`, never holds a control character or
//! whitespace, and never names a transport other than https, ssh or file.

use std::cmp::Ordering;
use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::error::{ErrorCode, ParseStateError, ValidationError};
use crate::id::check_name;

/// A plugin's name within its runtime. It becomes a directory name
/// (`<data_dir>/runtimes/<id>/plugins/<name>`) and a mount path
/// (`/plugins/<name>`), so it follows the rule of runtime ids and template
/// names: 1–63 of `[a-z0-9_-]`, starting and ending alphanumeric.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct PluginName(String);

impl PluginName {
    pub fn parse(text: &str) -> Result<Self, ValidationError> {
        check_name("plugin name", ErrorCode::InvalidRequest, text)?;
        Ok(PluginName(text.to_string()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Where every container of the runtime sees the plugin, read-only.
    pub fn mount_path(&self) -> String {
        format!("/plugins/{}", self.0)
    }
}

impl TryFrom<String> for PluginName {
    type Error = ValidationError;
    fn try_from(value: String) -> Result<Self, Self::Error> {
        PluginName::parse(&value)
    }
}

impl From<PluginName> for String {
    fn from(n: PluginName) -> String {
        n.0
    }
}

impl fmt::Display for PluginName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A commit id: exactly 40 lowercase hex digits (SHA-1 object format).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct CommitSha(String);

impl CommitSha {
    pub fn parse(text: &str) -> Result<Self, ValidationError> {
        if text.len() != 40 || !text.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) {
            return Err(ValidationError::new(
                ErrorCode::InvalidTrackedRef,
                format!("commit {text:?} is invalid: it must be exactly 40 lowercase hex digits"),
            ));
        }
        Ok(CommitSha(text.to_string()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for CommitSha {
    type Error = ValidationError;
    fn try_from(value: String) -> Result<Self, Self::Error> {
        CommitSha::parse(&value)
    }
}

impl From<CommitSha> for String {
    fn from(s: CommitSha) -> String {
        s.0
    }
}

impl fmt::Display for CommitSha {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

// ---------------------------------------------------------------- sources

/// The transport git uses for a source; `as_str` is its name in
/// `GIT_ALLOW_PROTOCOL`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum GitScheme {
    Https,
    Ssh,
    File,
}

impl GitScheme {
    pub const fn as_str(self) -> &'static str {
        match self {
            GitScheme::Https => "https",
            GitScheme::Ssh => "ssh",
            GitScheme::File => "file",
        }
    }
}

impl fmt::Display for GitScheme {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What configuration allows as plugin sources (`plugins.allow_file_sources`,
/// `plugins.allowed_hosts`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SourcePolicy {
    pub allow_file: bool,
    /// `None` allows any host. Compared without regard to ASCII case and
    /// without the port. File sources have no host and are governed by
    /// `allow_file` alone.
    pub allowed_hosts: Option<Vec<String>>,
}

impl SourcePolicy {
    /// Allows every well-formed source: for decoding stored rows, which were
    /// checked against the policy of their day. Check the current policy
    /// with [`SourcePolicy::check`] before git runs.
    pub fn permissive() -> Self {
        SourcePolicy {
            allow_file: true,
            allowed_hosts: None,
        }
    }

    /// Refuses a well-formed source this policy does not allow.
    pub fn check(&self, source: &PluginSource) -> Result<(), ValidationError> {
        if source.scheme == GitScheme::File && !self.allow_file {
            return Err(invalid_source(
                &source.text,
                "file sources are not allowed (plugins.allow_file_sources is false)",
            ));
        }
        if let (Some(allowed), Some(host)) = (&self.allowed_hosts, source.host()) {
            if !allowed.iter().any(|a| a.eq_ignore_ascii_case(host)) {
                return Err(invalid_source(
                    &source.text,
                    &format!("host {host:?} is not on plugins.allowed_hosts"),
                ));
            }
        }
        Ok(())
    }
}

/// A plugin's git source: `git+https://host[:port]/path`,
/// `git+ssh://[user@]host[:port]/path` or `git+file:///absolute/path`.
///
/// Displays as the text it was parsed from (nothing is normalised, so
/// `parse(display(x)) == x`); [`PluginSource::git_url`] is what git is given.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize)]
#[serde(into = "String")]
pub struct PluginSource {
    text: String,
    scheme: GitScheme,
    user: Option<String>,
    host: Option<String>,
    port: Option<u16>,
    path: String,
}

const MAX_SOURCE_LEN: usize = 2048;

/// Besides letters and digits, the only characters a source may hold. No
/// shell ever sees a source; the list is narrow so that no quoting, option
/// or percent-decoding trick in git, ssh or a server can either.
const SOURCE_PUNCTUATION: &str = "-._~/:@+";

fn invalid_source(text: &str, why: &str) -> ValidationError {
    ValidationError::new(
        ErrorCode::InvalidPluginSource,
        format!("plugin source {text:?} is invalid: {why}"),
    )
}

impl PluginSource {
    /// Parses `text` and checks it against `policy`.
    pub fn parse(text: &str, policy: &SourcePolicy) -> Result<Self, ValidationError> {
        let source = Self::parse_form(text)?;
        policy.check(&source)?;
        Ok(source)
    }

    fn parse_form(text: &str) -> Result<Self, ValidationError> {
        let fail = |why: &str| Err(invalid_source(text, why));
        if text.is_empty() {
            return fail("it is empty");
        }
        if text.len() > MAX_SOURCE_LEN {
            return fail(&format!("it is longer than {MAX_SOURCE_LEN} bytes"));
        }
        if text.starts_with('-') {
            return fail("it starts with '-', which git would read as an option");
        }
        if let Some(c) = text.chars().find(|c| c.is_control()) {
            return fail(&format!("it contains a control character ({:?})", c));
        }
        let Some(url) = text.strip_prefix("git+") else {
            if let Some((transport, _)) = text.split_once("::") {
                return fail(&format!(
                    "git's {transport}:: transport syntax is refused; use git+https://, git+ssh:// or git+file://"
                ));
            }
            if !text.contains("://") && text.contains(':') {
                return fail("scp-like host:path sources are refused; write git+ssh://host/path");
            }
            return fail("it must start with git+https://, git+ssh:// or git+file://");
        };
        let Some((scheme, rest)) = url.split_once("://") else {
            if url.contains("::") {
                return fail("git's transport syntax (<transport>::) is refused");
            }
            return fail("it must start with git+https://, git+ssh:// or git+file://");
        };
        let scheme = match scheme {
            "https" => GitScheme::Https,
            "ssh" => GitScheme::Ssh,
            "file" => GitScheme::File,
            other => {
                return fail(&format!(
                    "transport {other:?} is refused; only https, ssh and file are accepted"
                ))
            }
        };
        if let Some(c) = rest.chars().find(|c| c.is_whitespace()) {
            return fail(&format!("it contains whitespace ({c:?})"));
        }
        if rest.contains('%') {
            return fail("percent-encoding is not accepted");
        }
        let (user, host, port, path) = if scheme == GitScheme::File {
            if !rest.starts_with('/') {
                return fail("a file source names no host; write git+file:///absolute/path");
            }
            (None, None, None, rest)
        } else {
            let Some(slash) = rest.find('/') else {
                return fail("it names no repository path");
            };
            let (authority, path) = rest.split_at(slash);
            let (user, host_port) = match authority.split_once('@') {
                None => (None, authority),
                Some(_) if scheme == GitScheme::Https => {
                    return fail(
                        "a user name or password in an https source is refused (it would be stored and logged)",
                    )
                }
                Some((user, host_port)) => {
                    if let Some(why) = user_problem(user) {
                        return fail(&why);
                    }
                    (Some(user), host_port)
                }
            };
            if host_port.starts_with('[') {
                return fail("IPv6 address hosts are not supported; use a host name");
            }
            let (host, port) = match host_port.split_once(':') {
                None => (host_port, None),
                Some((host, port)) => (host, Some(port)),
            };
            if let Some(why) = host_problem(host) {
                return fail(&why);
            }
            let port = match port {
                None => None,
                Some(port) => match port.parse::<u16>() {
                    Ok(p) if p > 0 && port.bytes().all(|b| b.is_ascii_digit()) => Some(p),
                    _ => return fail(&format!("port {port:?} is not a number from 1 to 65535")),
                },
            };
            (user, Some(host), port, path)
        };
        if let Some(why) = path_problem(path) {
            return fail(why);
        }
        if let Some(c) = rest
            .chars()
            .find(|c| !c.is_ascii_alphanumeric() && !SOURCE_PUNCTUATION.contains(*c))
        {
            return fail(&format!(
                "it contains {c:?}; a source may use only letters, digits and {SOURCE_PUNCTUATION}"
            ));
        }
        Ok(PluginSource {
            text: text.to_string(),
            scheme,
            user: user.map(str::to_string),
            host: host.map(str::to_string),
            port,
            path: path.to_string(),
        })
    }

    /// The URL git is given: the source without `git+`. It never starts
    /// with `-`; pass it after `--end-of-options` all the same.
    pub fn git_url(&self) -> &str {
        &self.text["git+".len()..]
    }

    /// The transport, for `GIT_ALLOW_PROTOCOL`.
    pub fn scheme(&self) -> GitScheme {
        self.scheme
    }

    /// The host as written, without user and port; `None` for a file source.
    pub fn host(&self) -> Option<&str> {
        self.host.as_deref()
    }

    pub fn port(&self) -> Option<u16> {
        self.port
    }

    /// The ssh user, when one is given.
    pub fn user(&self) -> Option<&str> {
        self.user.as_deref()
    }

    /// The repository path, starting with `/`.
    pub fn path(&self) -> &str {
        &self.path
    }

    pub fn as_str(&self) -> &str {
        &self.text
    }
}

fn user_problem(user: &str) -> Option<String> {
    if user.is_empty() {
        return Some("the ssh user before '@' is empty".into());
    }
    if user.starts_with('-') {
        return Some("the ssh user starts with '-', which ssh would read as an option".into());
    }
    if !user
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
    {
        return Some(format!(
            "ssh user {user:?} is invalid: use letters, digits, '.', '_' and '-'"
        ));
    }
    None
}

fn host_problem(host: &str) -> Option<String> {
    if host.is_empty() {
        return Some("the host is empty".into());
    }
    if host.starts_with('-') {
        return Some("the host starts with '-', which ssh would read as an option".into());
    }
    let labels_ok = host.split('.').all(|label| {
        !label.is_empty()
            && label.as_bytes()[0].is_ascii_alphanumeric()
            && label
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_'))
    });
    if !labels_ok {
        return Some(format!(
            "host {host:?} is invalid: use dot-separated labels of letters, digits, '-' and '_', each starting with a letter or digit"
        ));
    }
    None
}

fn path_problem(path: &str) -> Option<&'static str> {
    let mut segments = path.split('/').filter(|s| !s.is_empty()).peekable();
    if segments.peek().is_none() {
        return Some("it names no repository path");
    }
    for segment in segments {
        if segment == ".." {
            return Some("path traversal ('..') is refused");
        }
        if segment.starts_with('-') {
            return Some("a path component starts with '-', which git could read as an option");
        }
    }
    None
}

impl From<PluginSource> for String {
    fn from(s: PluginSource) -> String {
        s.text
    }
}

impl fmt::Display for PluginSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

// ---------------------------------------------------------------- refs

/// A branch or tag name without its `refs/heads/` or `refs/tags/` prefix,
/// e.g. `main`, `release/1.x`, `v1.2.0`.
///
/// git's check-ref-format rules (with one-level names allowed), plus ours:
/// only letters, digits and `-._/+@`, never a leading `-`, at most 255
/// bytes. git itself allows more punctuation (`;`, `|`, `$`, ...); refusing
/// it keeps every accepted name inert wherever it is logged or passed on.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct RefName(String);

const MAX_REF_NAME_LEN: usize = 255;
const REF_NAME_PUNCTUATION: &str = "-._/+@";

impl RefName {
    pub fn parse(text: &str) -> Result<Self, ValidationError> {
        match ref_name_problem(text) {
            None => Ok(RefName(text.to_string())),
            Some(why) => Err(ValidationError::new(
                ErrorCode::InvalidTrackedRef,
                format!("ref name {text:?} is invalid: {why}"),
            )),
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

fn ref_name_problem(name: &str) -> Option<String> {
    if name.is_empty() {
        return Some("it is empty".into());
    }
    if name.len() > MAX_REF_NAME_LEN {
        return Some(format!("it is longer than {MAX_REF_NAME_LEN} bytes"));
    }
    if name.starts_with('-') {
        return Some("it starts with '-', which git would read as an option".into());
    }
    for c in name.chars() {
        if c.is_control() {
            return Some(format!("it contains a control character ({c:?})"));
        }
        if c.is_whitespace() {
            return Some(format!("it contains whitespace ({c:?})"));
        }
        if !c.is_ascii() {
            return Some(format!("it contains {c:?}; only ASCII is accepted"));
        }
        if !c.is_ascii_alphanumeric() && !REF_NAME_PUNCTUATION.contains(c) {
            return Some(format!(
                "it contains {c:?}; a ref name may use only letters, digits and {REF_NAME_PUNCTUATION}"
            ));
        }
    }
    if name.contains("..") {
        return Some("it contains '..'".into());
    }
    if name.contains("@{") {
        return Some("it contains '@{'".into());
    }
    if name == "@" {
        return Some("'@' alone is not a ref name".into());
    }
    if name.starts_with('/') || name.ends_with('/') || name.contains("//") {
        return Some("it starts or ends with '/' or holds an empty component ('//')".into());
    }
    if name.ends_with('.') {
        return Some("it ends with '.'".into());
    }
    if name
        .split('/')
        .any(|c| c.starts_with('.') || c.ends_with(".lock"))
    {
        return Some("a component starts with '.' or ends with '.lock'".into());
    }
    None
}

impl TryFrom<String> for RefName {
    type Error = ValidationError;
    fn try_from(value: String) -> Result<Self, Self::Error> {
        RefName::parse(&value)
    }
}

impl From<RefName> for String {
    fn from(n: RefName) -> String {
        n.0
    }
}

impl fmt::Display for RefName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// What a plugin follows upstream.
///
/// Text forms: `none`, `tag:<name>`, `tag:latest`, `branch:<name>`,
/// `sha:<40 lowercase hex>`, and a bare `<name>`, which is a branch. The
/// canonical (displayed, stored) form always has its kind: `main` displays
/// as `branch:main`. A tag literally named `latest`, and a branch named
/// `none` without `branch:`, cannot be written.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub enum TrackedRef {
    /// Install the remote's default branch (`HEAD`) and never sweep.
    None,
    Tag(RefName),
    /// The highest semantic-version tag, pre-releases excluded.
    LatestTag,
    Branch(RefName),
    /// One commit, for good: never swept.
    Sha(CommitSha),
}

impl TrackedRef {
    pub fn parse(text: &str) -> Result<Self, ValidationError> {
        if text == "none" {
            return Ok(TrackedRef::None);
        }
        if let Some(rest) = text.strip_prefix("tag:") {
            if rest == "latest" {
                return Ok(TrackedRef::LatestTag);
            }
            return RefName::parse(rest).map(TrackedRef::Tag);
        }
        if let Some(rest) = text.strip_prefix("branch:") {
            return RefName::parse(rest).map(TrackedRef::Branch);
        }
        if let Some(rest) = text.strip_prefix("sha:") {
            return CommitSha::parse(rest).map(TrackedRef::Sha).map_err(|_| {
                ValidationError::new(
                    ErrorCode::InvalidTrackedRef,
                    format!(
                        "tracked ref {text:?} is invalid: sha: must be followed by exactly 40 lowercase hex digits"
                    ),
                )
            });
        }
        if let Some((kind, _)) = text.split_once(':') {
            if !kind.is_empty()
                && !kind.starts_with('-')
                && kind.bytes().all(|b| b.is_ascii_alphanumeric())
            {
                return Err(ValidationError::new(
                    ErrorCode::InvalidTrackedRef,
                    format!(
                        "tracked ref {text:?} is invalid: unknown kind {kind:?}; use none, tag:, tag:latest, branch: or sha:"
                    ),
                ));
            }
        }
        RefName::parse(text).map(TrackedRef::Branch)
    }

    /// The sweeper resolves it again and again: tags and branches move,
    /// `none` and `sha:` do not.
    pub const fn needs_sweep(&self) -> bool {
        matches!(
            self,
            TrackedRef::Tag(_) | TrackedRef::LatestTag | TrackedRef::Branch(_)
        )
    }

    /// Resolving it needs the remote's ref listing (`sha:` does not).
    pub const fn needs_listing(&self) -> bool {
        !matches!(self, TrackedRef::Sha(_))
    }
}

impl fmt::Display for TrackedRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TrackedRef::None => f.write_str("none"),
            TrackedRef::Tag(name) => write!(f, "tag:{name}"),
            TrackedRef::LatestTag => f.write_str("tag:latest"),
            TrackedRef::Branch(name) => write!(f, "branch:{name}"),
            TrackedRef::Sha(sha) => write!(f, "sha:{sha}"),
        }
    }
}

impl FromStr for TrackedRef {
    type Err = ValidationError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

impl TryFrom<String> for TrackedRef {
    type Error = ValidationError;
    fn try_from(value: String) -> Result<Self, Self::Error> {
        TrackedRef::parse(&value)
    }
}

impl From<TrackedRef> for String {
    fn from(t: TrackedRef) -> String {
        t.to_string()
    }
}

// ---------------------------------------------------------------- resolution

/// One line of a remote's ref listing (`git ls-remote` without `--refs`):
/// a full name such as `HEAD`, `refs/heads/main`, `refs/tags/v1.2.0` or the
/// peeled `refs/tags/v1.2.0^{}` of an annotated tag, and the object id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RemoteRef {
    pub name: String,
    pub sha: CommitSha,
}

/// The commit a track points at upstream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResolvedRef {
    pub sha: CommitSha,
    /// The full ref it was found under (`HEAD`, `refs/heads/main`,
    /// `refs/tags/v1.2.0`, never with `^{}`); `None` for a `sha:` track.
    pub ref_name: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ResolveError {
    /// `wanted` is the full ref, or a description for `tag:latest`.
    #[error("{wanted} does not exist upstream")]
    NotFound { wanted: String },
}

impl ResolveError {
    pub const fn code(&self) -> ErrorCode {
        match self {
            ResolveError::NotFound { .. } => ErrorCode::RefNotFound,
        }
    }
}

const PEELED_SUFFIX: &str = "^{}";

/// The commit `track` points at, given the remote's ref listing. A tag is
/// peeled: its `^{}` line (present for annotated tags) wins over the tag
/// object's own line. When a name is listed twice, the first line counts.
pub fn resolve(track: &TrackedRef, refs: &[RemoteRef]) -> Result<ResolvedRef, ResolveError> {
    let found = |full: String| match lookup(refs, &full) {
        Some(sha) => Ok(ResolvedRef {
            sha: sha.clone(),
            ref_name: Some(full),
        }),
        None => Err(ResolveError::NotFound { wanted: full }),
    };
    match track {
        TrackedRef::Sha(sha) => Ok(ResolvedRef {
            sha: sha.clone(),
            ref_name: None,
        }),
        TrackedRef::None => found("HEAD".to_string()),
        TrackedRef::Branch(name) => found(format!("refs/heads/{name}")),
        TrackedRef::Tag(name) => peeled_tag(refs, name.as_str()),
        TrackedRef::LatestTag => match latest_tag(refs) {
            Some(name) => peeled_tag(refs, name),
            None => Err(ResolveError::NotFound {
                wanted: "a semantic-version release tag".to_string(),
            }),
        },
    }
}

fn lookup<'a>(refs: &'a [RemoteRef], full: &str) -> Option<&'a CommitSha> {
    refs.iter().find(|r| r.name == full).map(|r| &r.sha)
}

fn peeled_tag(refs: &[RemoteRef], name: &str) -> Result<ResolvedRef, ResolveError> {
    let full = format!("refs/tags/{name}");
    match lookup(refs, &format!("{full}{PEELED_SUFFIX}")).or_else(|| lookup(refs, &full)) {
        Some(sha) => Ok(ResolvedRef {
            sha: sha.clone(),
            ref_name: Some(full),
        }),
        None => Err(ResolveError::NotFound { wanted: full }),
    }
}

/// A tag name's release version: one optional leading `v`, then
/// `MAJOR.MINOR.PATCH` (or `MAJOR.MINOR`, read as `MAJOR.MINOR.0`) with
/// optional build metadata. Pre-releases and anything else are `None`.
fn release_version(tag: &str) -> Option<semver::Version> {
    let bare = tag.strip_prefix('v').unwrap_or(tag);
    let version = if bare.bytes().filter(|b| *b == b'.').count() == 1
        && bare.bytes().all(|b| b.is_ascii_digit() || b == b'.')
    {
        semver::Version::parse(&format!("{bare}.0"))
    } else {
        semver::Version::parse(bare)
    }
    .ok()?;
    version.pre.is_empty().then_some(version)
}

/// The name (after `refs/tags/`) of the highest release tag. Equal
/// precedence (`v1.0.0` and `1.0.0`, or differing build metadata) is broken
/// by preferring the name without `v`, then the lexicographically smaller.
fn latest_tag(refs: &[RemoteRef]) -> Option<&str> {
    let mut best: Option<(semver::Version, &str)> = None;
    for r in refs {
        let Some(tag) = r.name.strip_prefix("refs/tags/") else {
            continue;
        };
        let tag = tag.strip_suffix(PEELED_SUFFIX).unwrap_or(tag);
        if ref_name_problem(tag).is_some() {
            continue;
        }
        let Some(version) = release_version(tag) else {
            continue;
        };
        let better = match &best {
            None => true,
            Some((best_version, best_tag)) => match version.cmp_precedence(best_version) {
                Ordering::Greater => true,
                Ordering::Less => false,
                Ordering::Equal => {
                    (tag.starts_with('v'), tag) < (best_tag.starts_with('v'), *best_tag)
                }
            },
        };
        if better {
            best = Some((version, tag));
        }
    }
    best.map(|(_, tag)| tag)
}

// ---------------------------------------------------------------- drift

/// The plugin's update in `pending`, if it has one (at most one per
/// runtime and plugin).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PendingUpdate {
    pub id: String,
    pub to_sha: CommitSha,
}

/// The plugin's most recently dismissed update, if any.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DismissedUpdate {
    pub from_sha: Option<CommitSha>,
    pub to_sha: CommitSha,
}

/// What a sweep does for one plugin whose track resolved to `upstream`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DriftDecision {
    /// Installed is upstream and nothing is pending.
    UpToDate,
    /// Insert a pending update from the installed commit to `to_sha`
    /// (intent `plugin.drift_detected`).
    Queue { to_sha: CommitSha },
    /// Upstream moved again: the pending update `id` now goes to `to_sha`
    /// (intent `plugin.drift_detected`).
    MoveTarget { id: String, to_sha: CommitSha },
    /// The pending update stands as it is.
    KeepPending,
    /// An operator dismissed exactly this move (same from, same to); it is
    /// not queued again until upstream moves elsewhere.
    KeepDismissed,
}

/// The drift decision for one plugin.
///
/// - Upstream differs from `installed_sha` (an unknown installed commit
///   differs from every commit): queue an update, or move the pending one's
///   target to upstream, or leave it when it already points there. A
///   dismissal sticks for the move it dismissed.
/// - Upstream is back at `installed_sha` while an update is pending (a tag
///   moved back, a force-push reverted): the pending update is left as it
///   is. The sweeper never decides for the operator, and applying it
///   re-resolves the track, so it then installs what upstream is.
pub fn drift(
    installed_sha: Option<&CommitSha>,
    upstream: &CommitSha,
    pending: Option<&PendingUpdate>,
    last_dismissed: Option<&DismissedUpdate>,
) -> DriftDecision {
    match pending {
        Some(p) if installed_sha != Some(upstream) && p.to_sha != *upstream => {
            DriftDecision::MoveTarget {
                id: p.id.clone(),
                to_sha: upstream.clone(),
            }
        }
        Some(_) => DriftDecision::KeepPending,
        None if installed_sha == Some(upstream) => DriftDecision::UpToDate,
        None if last_dismissed
            .is_some_and(|d| d.from_sha.as_ref() == installed_sha && d.to_sha == *upstream) =>
        {
            DriftDecision::KeepDismissed
        }
        None => DriftDecision::Queue {
            to_sha: upstream.clone(),
        },
    }
}

// ---------------------------------------------------------------- updates

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum UpdateStatus {
    Pending,
    Applied,
    Dismissed,
}

const UPDATE_STATUS_NAMES: &[&str] = &["pending", "applied", "dismissed"];

/// What an operator asks of a plugin update.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UpdateAction {
    Apply,
    Dismiss,
}

impl UpdateAction {
    pub const fn as_str(self) -> &'static str {
        match self {
            UpdateAction::Apply => "apply",
            UpdateAction::Dismiss => "dismiss",
        }
    }

    /// The status the update has once the action is done.
    pub const fn to(self) -> UpdateStatus {
        match self {
            UpdateAction::Apply => UpdateStatus::Applied,
            UpdateAction::Dismiss => UpdateStatus::Dismissed,
        }
    }
}

/// What the service does with an allowed request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UpdateStep {
    /// Carry the action out and record the new status.
    Proceed,
    /// It was done before: answer `200` with the row as it is.
    AlreadyDone,
}

/// A request the update's status refuses (`409 conflict`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the plugin update is {status}; it cannot be {}", action.to())]
pub struct UpdateRefusal {
    pub status: UpdateStatus,
    pub action: UpdateAction,
}

impl UpdateRefusal {
    pub const fn code(&self) -> ErrorCode {
        ErrorCode::Conflict
    }
}

impl UpdateStatus {
    pub const ALL: [UpdateStatus; 3] = [
        UpdateStatus::Pending,
        UpdateStatus::Applied,
        UpdateStatus::Dismissed,
    ];

    pub const fn as_str(self) -> &'static str {
        match self {
            UpdateStatus::Pending => "pending",
            UpdateStatus::Applied => "applied",
            UpdateStatus::Dismissed => "dismissed",
        }
    }

    /// Decodes a stored status; an unknown name is an error, never a default.
    pub fn parse(s: &str) -> Result<Self, ParseStateError> {
        Self::ALL
            .into_iter()
            .find(|x| x.as_str() == s)
            .ok_or_else(|| ParseStateError {
                what: "plugin update status",
                value: s.to_string(),
                expected: UPDATE_STATUS_NAMES,
            })
    }

    /// Only a pending update changes, to applied or dismissed, for good.
    pub const fn can_transition(from: UpdateStatus, to: UpdateStatus) -> bool {
        matches!(
            (from, to),
            (
                UpdateStatus::Pending,
                UpdateStatus::Applied | UpdateStatus::Dismissed
            )
        )
    }

    /// Whether `action` may be done to an update in this status: repeating
    /// what was done is idempotent; undoing the other decision is refused.
    pub fn request(self, action: UpdateAction) -> Result<UpdateStep, UpdateRefusal> {
        match (self, action) {
            (UpdateStatus::Pending, _) => Ok(UpdateStep::Proceed),
            (UpdateStatus::Applied, UpdateAction::Apply)
            | (UpdateStatus::Dismissed, UpdateAction::Dismiss) => Ok(UpdateStep::AlreadyDone),
            (status, action) => Err(UpdateRefusal { status, action }),
        }
    }
}

impl fmt::Display for UpdateStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for UpdateStatus {
    type Err = ParseStateError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// A distinct commit id per character.
    fn sha(c: char) -> CommitSha {
        CommitSha::parse(&format!("{:040x}", c as u32)).unwrap()
    }

    fn line(name: &str, c: char) -> RemoteRef {
        RemoteRef {
            name: name.to_string(),
            sha: sha(c),
        }
    }

    fn any_host() -> SourcePolicy {
        SourcePolicy {
            allow_file: false,
            allowed_hosts: None,
        }
    }

    fn track(text: &str) -> TrackedRef {
        TrackedRef::parse(text).unwrap()
    }

    // ---- names

    #[test]
    fn plugin_names_follow_the_id_rule() {
        let name = PluginName::parse("skills_2").unwrap();
        assert_eq!(name.mount_path(), "/plugins/skills_2");
        for bad in ["", "Skills", "-x", "x-", "../x", "a/b", "a.b", "a b"] {
            let err = PluginName::parse(bad).unwrap_err();
            assert_eq!(err.code, ErrorCode::InvalidRequest, "{bad:?}");
        }
    }

    #[test]
    fn commit_shas_are_40_lowercase_hex() {
        CommitSha::parse(&"0a".repeat(20)).unwrap();
        for bad in [
            "".to_string(),
            "a".repeat(39),
            "a".repeat(41),
            "A".repeat(40),
            "g".repeat(40),
            "a".repeat(64),
        ] {
            assert!(CommitSha::parse(&bad).is_err(), "{bad:?}");
        }
    }

    // ---- sources

    #[test]
    fn accepts_the_three_source_forms() {
        let s = PluginSource::parse("git+https://git.example/acme/skills", &any_host()).unwrap();
        assert_eq!(s.git_url(), "https://git.example/acme/skills");
        assert_eq!(s.scheme(), GitScheme::Https);
        assert_eq!(s.host(), Some("git.example"));
        assert_eq!(s.path(), "/acme/skills");
        assert_eq!(s.to_string(), "git+https://git.example/acme/skills");

        let s = PluginSource::parse(
            "git+ssh://git@git.example:2222/acme/skills.git",
            &any_host(),
        )
        .unwrap();
        assert_eq!(s.git_url(), "ssh://git@git.example:2222/acme/skills.git");
        assert_eq!(s.scheme().as_str(), "ssh");
        assert_eq!(
            (s.user(), s.host(), s.port()),
            (Some("git"), Some("git.example"), Some(2222))
        );

        let s = PluginSource::parse("git+ssh://127.0.0.1/~me/repo", &any_host()).unwrap();
        assert_eq!(
            (s.user(), s.host(), s.port()),
            (None, Some("127.0.0.1"), None)
        );

        let files = SourcePolicy {
            allow_file: true,
            allowed_hosts: None,
        };
        let s = PluginSource::parse("git+file:///srv/git/skills.git", &files).unwrap();
        assert_eq!(s.git_url(), "file:///srv/git/skills.git");
        assert_eq!(s.scheme().as_str(), "file");
        assert_eq!(s.host(), None);
    }

    #[test]
    fn file_sources_need_the_setting() {
        let err = PluginSource::parse("git+file:///srv/git/skills.git", &any_host()).unwrap_err();
        assert_eq!(err.code, ErrorCode::InvalidPluginSource);
        assert!(
            err.message.contains("allow_file_sources"),
            "{}",
            err.message
        );
    }

    #[test]
    fn allowed_hosts_limit_sources_without_regard_to_case() {
        let policy = SourcePolicy {
            allow_file: true,
            allowed_hosts: Some(vec!["Git.Example".to_string()]),
        };
        PluginSource::parse("git+https://git.example/a/b", &policy).unwrap();
        PluginSource::parse("git+ssh://git@GIT.EXAMPLE:22/a/b", &policy).unwrap();
        // A file source has no host: allow_file alone governs it.
        PluginSource::parse("git+file:///srv/a", &policy).unwrap();
        let err = PluginSource::parse("git+https://evil.example/a/b", &policy).unwrap_err();
        assert_eq!(err.code, ErrorCode::InvalidPluginSource);
        assert!(err.message.contains("allowed_hosts"), "{}", err.message);
        // A stored row decodes whatever today's policy says; check refuses it.
        let stored =
            PluginSource::parse("git+https://evil.example/a/b", &SourcePolicy::permissive())
                .unwrap();
        assert!(policy.check(&stored).is_err());
    }

    #[test]
    fn refuses_bad_sources_with_a_sentence_naming_the_problem() {
        let files = SourcePolicy {
            allow_file: true,
            allowed_hosts: None,
        };
        for (text, why) in [
            ("", "empty"),
            ("--upload-pack=touch /tmp/x", "starts with '-'"),
            ("-oProxyCommand=x", "starts with '-'"),
            ("git+ssh://-oProxyCommand=x/repo", "host starts with '-'"),
            (
                "git+ssh://-oProxyCommand=x@host/repo",
                "user starts with '-'",
            ),
            ("git+ssh://host/-u/repo", "path component starts with '-'"),
            (
                "git+https://host/--upload-pack=x",
                "path component starts with '-'",
            ),
            ("ext::sh -c touch% /tmp/pwned", "ext:: transport"),
            ("git+ext::sh -c x", "transport syntax"),
            ("fd::17", "fd:: transport"),
            ("git+git://host/repo", "transport \"git\""),
            ("git+http://host/repo", "transport \"http\""),
            ("https://host/repo", "must start with git+"),
            ("git@host:acme/repo.git", "scp-like"),
            ("host:repo", "scp-like"),
            ("git+https://host/repo\n", "control character"),
            ("git+https://host/re\tpo", "control character"),
            ("git+https://host/re\0po", "control character"),
            ("git+https://host/re po", "whitespace"),
            ("git+https://host/repo;rm -rf /", "whitespace"),
            ("git+https://host/repo;x", "';'"),
            ("git+https://host/repo|x", "'|'"),
            ("git+https://host/`x`", "'`'"),
            ("git+https://host/$(x)", "'$'"),
            ("git+https://host/a%0ab", "percent-encoding"),
            ("git+https://host/a?b=c", "'?'"),
            ("git+https://host/a#b", "'#'"),
            ("git+https:///repo", "host is empty"),
            ("git+https://:443/repo", "host is empty"),
            ("git+https://user:pw@host/repo", "user name or password"),
            ("git+https://host", "no repository path"),
            ("git+https://host/", "no repository path"),
            ("git+https://host:0/repo", "port"),
            ("git+https://host:99999/repo", "port"),
            ("git+https://host:+1/repo", "port"),
            ("git+https://host:/repo", "port"),
            ("git+https://ho..st/repo", "host \"ho..st\" is invalid"),
            ("git+https://[::1]/repo", "IPv6"),
            ("git+ssh://@host/repo", "user before '@' is empty"),
            ("git+file://host/srv/repo", "names no host"),
            ("git+file:///srv/../etc/repo", "traversal"),
            ("git+file:///", "no repository path"),
            ("git+https://hoſt/repo", "host \"hoſt\" is invalid"),
            ("git+https://host/repſ", "'ſ'"),
            ("git+https://host/a\\b", "'\\\\'"),
        ] {
            let err = PluginSource::parse(text, &files).unwrap_err();
            assert_eq!(err.code, ErrorCode::InvalidPluginSource, "{text:?}");
            assert!(
                err.message.contains(why),
                "{text:?}: {:?} should say {why:?}",
                err.message
            );
        }
    }

    // ---- tracked refs

    #[test]
    fn parses_every_track_kind() {
        assert_eq!(track("none"), TrackedRef::None);
        assert_eq!(track("tag:latest"), TrackedRef::LatestTag);
        assert_eq!(
            track("tag:v1.2.0"),
            TrackedRef::Tag(RefName::parse("v1.2.0").unwrap())
        );
        assert_eq!(
            track("branch:release/1.x"),
            TrackedRef::Branch(RefName::parse("release/1.x").unwrap())
        );
        let hex = "0123456789abcdef0123456789abcdef01234567";
        assert_eq!(
            track(&format!("sha:{hex}")),
            TrackedRef::Sha(CommitSha::parse(hex).unwrap())
        );
        // A bare name is a branch and displays with its kind.
        assert_eq!(track("main"), track("branch:main"));
        assert_eq!(track("main").to_string(), "branch:main");
        assert_eq!(track("latest"), track("branch:latest"));
        assert_eq!(track("branch:none").to_string(), "branch:none");
    }

    #[test]
    fn only_moving_tracks_are_swept() {
        assert!(!track("none").needs_sweep());
        assert!(!track(&format!("sha:{}", "a".repeat(40))).needs_sweep());
        assert!(track("tag:latest").needs_sweep());
        assert!(track("tag:v1").needs_sweep());
        assert!(track("main").needs_sweep());
        assert!(!track(&format!("sha:{}", "a".repeat(40))).needs_listing());
        assert!(track("none").needs_listing());
    }

    #[test]
    fn refuses_bad_tracks_with_invalid_tracked_ref() {
        let long = "a".repeat(256);
        for text in [
            "",
            "--upload-pack=touch /tmp/x",
            "-oProxyCommand=x",
            "tag:--upload-pack=x",
            "branch:-x",
            "tag:",
            "branch:",
            "sha:",
            "sha:abc",
            "sha:0123456789ABCDEF0123456789ABCDEF01234567",
            "head:main",
            "main\n",
            "ma\0in",
            "ma\tin",
            "ma in",
            "a;b",
            "a..b",
            "a~1",
            "a^",
            "a?",
            "a*",
            "a[0]",
            "a\\b",
            "/a",
            "a/",
            "a//b",
            "a.",
            ".a",
            "a/.b",
            "a.lock",
            "a/b.lock/c",
            "@",
            "a@{1}",
            "mäin",
            "a\u{85}b",
            long.as_str(),
        ] {
            let err = TrackedRef::parse(text).unwrap_err();
            assert_eq!(err.code, ErrorCode::InvalidTrackedRef, "{text:?}");
        }
        for ok in [
            "a@b",
            "@a",
            "v1.2.0",
            "1.0.0+b.1",
            "a.b/c-d_e",
            "a-",
            "feature/x.y",
        ] {
            RefName::parse(ok).unwrap();
        }
    }

    #[test]
    fn injection_attempts_name_the_option_problem() {
        for text in [
            "--upload-pack=x",
            "tag:--upload-pack=x",
            "branch:-oProxyCommand=x",
        ] {
            let err = TrackedRef::parse(text).unwrap_err();
            assert!(err.message.contains("option"), "{text:?}: {}", err.message);
        }
    }

    /// serde goes through `String`: the canonical text out, parsing in.
    #[test]
    fn tracks_convert_through_their_canonical_text() {
        assert_eq!(String::from(track("main")), "branch:main");
        assert_eq!(
            TrackedRef::try_from("tag:latest".to_string()),
            Ok(TrackedRef::LatestTag)
        );
        assert!(TrackedRef::try_from("-x".to_string()).is_err());
    }

    // ---- resolution

    #[test]
    fn annotated_tags_are_peeled_and_lightweight_tags_are_not() {
        let refs = [
            line("HEAD", 'h'),
            line("refs/heads/main", 'h'),
            // Annotated: the tag object, then the commit it points at.
            line("refs/tags/v1.0.0", 'o'),
            line("refs/tags/v1.0.0^{}", 'c'),
            // Lightweight: only the commit.
            line("refs/tags/v1.1.0", 'l'),
        ];
        let r = resolve(&track("tag:v1.0.0"), &refs).unwrap();
        assert_eq!(r.sha, sha('c'));
        assert_eq!(r.ref_name.as_deref(), Some("refs/tags/v1.0.0"));
        let r = resolve(&track("tag:v1.1.0"), &refs).unwrap();
        assert_eq!(r.sha, sha('l'));
        // The peeled line wins wherever it comes in the listing.
        let reversed: Vec<_> = refs.iter().rev().cloned().collect();
        assert_eq!(
            resolve(&track("tag:v1.0.0"), &reversed).unwrap().sha,
            sha('c')
        );
    }

    #[test]
    fn branches_none_and_shas() {
        let refs = [
            line("HEAD", 'h'),
            line("refs/heads/main", 'h'),
            line("refs/heads/dev", 'd'),
            line("refs/tags/dev", 't'),
        ];
        let r = resolve(&track("dev"), &refs).unwrap();
        assert_eq!(
            (r.sha, r.ref_name.as_deref()),
            (sha('d'), Some("refs/heads/dev"))
        );
        let r = resolve(&track("tag:dev"), &refs).unwrap();
        assert_eq!(r.sha, sha('t'));
        let r = resolve(&track("none"), &refs).unwrap();
        assert_eq!((r.sha, r.ref_name.as_deref()), (sha('h'), Some("HEAD")));
        let pinned = format!("sha:{}", sha('e'));
        let r = resolve(&track(&pinned), &[]).unwrap();
        assert_eq!((r.sha, r.ref_name), (sha('e'), None));
    }

    #[test]
    fn a_moved_tag_or_force_pushed_branch_resolves_to_its_new_commit() {
        let before = [line("refs/tags/v1.0.0", 'a'), line("refs/heads/main", 'b')];
        let after = [line("refs/tags/v1.0.0", 'c'), line("refs/heads/main", 'd')];
        for (t, old, new) in [("tag:v1.0.0", 'a', 'c'), ("main", 'b', 'd')] {
            let old_sha = resolve(&track(t), &before).unwrap().sha;
            let new_sha = resolve(&track(t), &after).unwrap().sha;
            assert_eq!((old_sha.clone(), new_sha.clone()), (sha(old), sha(new)));
            assert_eq!(
                drift(Some(&old_sha), &new_sha, None, None),
                DriftDecision::Queue { to_sha: new_sha }
            );
        }
    }

    #[test]
    fn a_deleted_ref_is_not_found() {
        let refs = [line("HEAD", 'h'), line("refs/heads/main", 'h')];
        for t in ["tag:v1.0.0", "gone", "tag:latest"] {
            let err = resolve(&track(t), &refs).unwrap_err();
            assert_eq!(err.code(), ErrorCode::RefNotFound, "{t}");
        }
        assert_eq!(
            resolve(&track("gone"), &refs).unwrap_err(),
            ResolveError::NotFound {
                wanted: "refs/heads/gone".into()
            }
        );
        // A remote with no default branch lists no HEAD.
        assert!(resolve(&track("none"), &[]).is_err());
        // A branch is never found under its tag, nor the other way round.
        let tags_only = [line("refs/tags/main", 't')];
        assert!(resolve(&track("main"), &tags_only).is_err());
    }

    #[test]
    fn latest_tag_is_the_highest_release_by_semver() {
        let refs = [
            line("refs/heads/main", 'm'),
            line("refs/tags/v1.9.0", '1'),
            line("refs/tags/v1.10.0", '2'),
            line("refs/tags/v1.10.0^{}", '3'),
            line("refs/tags/v2.0.0-rc.1", '4'),
            line("refs/tags/nightly", '5'),
            line("refs/tags/vv9.0.0", '6'),
            line("refs/tags/V8.0.0", '7'),
            line("refs/tags/01.0.0", '8'),
            line("refs/heads/9.9.9", '9'),
        ];
        let r = resolve(&TrackedRef::LatestTag, &refs).unwrap();
        assert_eq!(r.ref_name.as_deref(), Some("refs/tags/v1.10.0"));
        assert_eq!(r.sha, sha('3'), "peeled");
    }

    #[test]
    fn latest_tag_reads_major_minor_as_a_patch_zero() {
        let refs = [line("refs/tags/v1.2", 'a'), line("refs/tags/1.1.9", 'b')];
        assert_eq!(latest_tag(&refs), Some("v1.2"));
        let refs = [line("refs/tags/v1.2", 'a'), line("refs/tags/1.2.1", 'b')];
        assert_eq!(latest_tag(&refs), Some("1.2.1"));
        assert_eq!(release_version("1"), None);
        assert_eq!(release_version("1.2-rc.1"), None);
        assert_eq!(
            release_version("v1.2.3+build.5"),
            Some(semver::Version::parse("1.2.3+build.5").unwrap())
        );
    }

    #[test]
    fn latest_tag_ties_are_broken_the_same_way_in_any_order() {
        let refs = [
            line("refs/tags/v1.0.0", 'a'),
            line("refs/tags/1.0.0+b", 'b'),
            line("refs/tags/1.0.0", 'c'),
            line("refs/tags/v1.0", 'd'),
        ];
        let mut orders = vec![refs.to_vec()];
        orders.push(refs.iter().rev().cloned().collect());
        orders.push(vec![
            refs[2].clone(),
            refs[0].clone(),
            refs[3].clone(),
            refs[1].clone(),
        ]);
        for listing in orders {
            assert_eq!(latest_tag(&listing), Some("1.0.0"));
        }
        let only_v = [line("refs/tags/v1.0", 'd'), line("refs/tags/v1.0.0", 'a')];
        assert_eq!(latest_tag(&only_v), Some("v1.0"));
    }

    // ---- drift

    #[test]
    fn drift_table() {
        let pending = |id: &str, c| PendingUpdate {
            id: id.to_string(),
            to_sha: sha(c),
        };
        let dismissed = |from: Option<char>, to| DismissedUpdate {
            from_sha: from.map(sha),
            to_sha: sha(to),
        };
        use DriftDecision::*;
        for (installed, upstream, p, d, want) in [
            (Some('a'), 'a', None, None, UpToDate),
            (Some('a'), 'b', None, None, Queue { to_sha: sha('b') }),
            (None, 'b', None, None, Queue { to_sha: sha('b') }),
            (Some('a'), 'b', Some(pending("u1", 'b')), None, KeepPending),
            (
                Some('a'),
                'c',
                Some(pending("u1", 'b')),
                None,
                MoveTarget {
                    id: "u1".into(),
                    to_sha: sha('c'),
                },
            ),
            // Upstream back at installed: the pending update is left alone.
            (Some('a'), 'a', Some(pending("u1", 'b')), None, KeepPending),
            // A dismissal sticks for the move it dismissed...
            (
                Some('a'),
                'b',
                None,
                Some(dismissed(Some('a'), 'b')),
                KeepDismissed,
            ),
            (None, 'b', None, Some(dismissed(None, 'b')), KeepDismissed),
            // ...and no further.
            (
                Some('a'),
                'c',
                None,
                Some(dismissed(Some('a'), 'b')),
                Queue { to_sha: sha('c') },
            ),
            (
                Some('z'),
                'b',
                None,
                Some(dismissed(Some('a'), 'b')),
                Queue { to_sha: sha('b') },
            ),
            (
                Some('a'),
                'a',
                None,
                Some(dismissed(Some('a'), 'b')),
                UpToDate,
            ),
            // A pending update is moved even past an old dismissal.
            (
                Some('a'),
                'b',
                Some(pending("u2", 'c')),
                Some(dismissed(Some('a'), 'b')),
                MoveTarget {
                    id: "u2".into(),
                    to_sha: sha('b'),
                },
            ),
        ] {
            let installed = installed.map(sha);
            assert_eq!(
                drift(installed.as_ref(), &sha(upstream), p.as_ref(), d.as_ref()),
                want,
                "installed {installed:?} upstream {upstream} pending {p:?} dismissed {d:?}"
            );
        }
    }

    // ---- update status machine

    #[test]
    fn update_status_requests() {
        use UpdateAction::*;
        use UpdateStatus::*;
        assert_eq!(Pending.request(Apply), Ok(UpdateStep::Proceed));
        assert_eq!(Pending.request(Dismiss), Ok(UpdateStep::Proceed));
        assert_eq!(Applied.request(Apply), Ok(UpdateStep::AlreadyDone));
        assert_eq!(Dismissed.request(Dismiss), Ok(UpdateStep::AlreadyDone));
        let err = Dismissed.request(Apply).unwrap_err();
        assert_eq!(err.code(), ErrorCode::Conflict);
        assert_eq!(
            err.to_string(),
            "the plugin update is dismissed; it cannot be applied"
        );
        let err = Applied.request(Dismiss).unwrap_err();
        assert_eq!(err.code(), ErrorCode::Conflict);
        assert_eq!(
            err.to_string(),
            "the plugin update is applied; it cannot be dismissed"
        );
    }

    #[test]
    fn update_statuses_round_trip_and_unknown_ones_fail() {
        for s in UpdateStatus::ALL {
            assert_eq!(UpdateStatus::parse(s.as_str()), Ok(s));
            assert_eq!(s.as_str().parse::<UpdateStatus>(), Ok(s));
        }
        let err = UpdateStatus::parse("queued").unwrap_err();
        assert_eq!(err.value, "queued");
        assert_eq!(err.expected, UPDATE_STATUS_NAMES);
    }

    #[test]
    fn every_proceeding_request_is_an_allowed_transition() {
        for from in UpdateStatus::ALL {
            for action in [UpdateAction::Apply, UpdateAction::Dismiss] {
                match from.request(action) {
                    Ok(UpdateStep::Proceed) => {
                        assert!(UpdateStatus::can_transition(from, action.to()))
                    }
                    Ok(UpdateStep::AlreadyDone) => assert_eq!(from, action.to()),
                    Err(_) => assert!(!UpdateStatus::can_transition(from, action.to())),
                }
            }
            for to in UpdateStatus::ALL {
                if from != UpdateStatus::Pending {
                    assert!(!UpdateStatus::can_transition(from, to), "{from} -> {to}");
                }
            }
        }
    }

    // ---- properties

    fn ref_name_strategy() -> impl Strategy<Value = RefName> {
        "[a-zA-Z0-9][a-zA-Z0-9._/@-]{0,24}"
            .prop_filter_map("not a ref name", |s| RefName::parse(&s).ok())
    }

    fn sha_strategy() -> impl Strategy<Value = CommitSha> {
        "[0-9a-f]{40}".prop_map(|s| CommitSha::parse(&s).unwrap())
    }

    fn track_strategy() -> impl Strategy<Value = TrackedRef> {
        prop_oneof![
            Just(TrackedRef::None),
            Just(TrackedRef::LatestTag),
            ref_name_strategy().prop_map(TrackedRef::Tag),
            ref_name_strategy().prop_map(TrackedRef::Branch),
            sha_strategy().prop_map(TrackedRef::Sha),
        ]
    }

    /// Text with the characters that matter most: controls, options,
    /// separators and git's ref-name specials.
    fn hostile_text() -> impl Strategy<Value = String> {
        proptest::collection::vec(
            prop_oneof![
                Just('-'),
                Just('\n'),
                Just('\0'),
                Just('\t'),
                Just('\u{7f}'),
                Just('\u{85}'),
                Just(' '),
                Just(':'),
                Just('/'),
                Just('.'),
                Just('@'),
                Just('{'),
                Just(';'),
                Just('='),
                proptest::char::range('a', 'z'),
                any::<char>(),
            ],
            0..24,
        )
        .prop_map(|cs| cs.into_iter().collect())
    }

    /// Half near-valid names (so that acceptance is exercised often), half
    /// hostile text, and near-valid names with one hostile character put in.
    fn ref_like_text() -> impl Strategy<Value = String> {
        let plausible = "[a-zA-Z0-9][a-zA-Z0-9./_@+-]{0,20}";
        prop_oneof![
            plausible.prop_map(String::from),
            hostile_text(),
            (plausible, hostile_text(), any::<prop::sample::Index>()).prop_map(
                |(base, bad, at)| {
                    let i = at.index(base.len() + 1);
                    format!(
                        "{}{}{}",
                        &base[..i],
                        bad.chars().next().unwrap_or('-'),
                        &base[i..]
                    )
                }
            ),
        ]
    }

    proptest! {
        #[test]
        fn ref_names_never_start_with_a_dash_or_hold_controls(text in ref_like_text()) {
            if let Ok(name) = RefName::parse(&text) {
                prop_assert!(!name.as_str().starts_with('-'));
                prop_assert!(!name.as_str().chars().any(|c| c.is_control() || c.is_whitespace()));
            }
            if let Ok(t) = TrackedRef::parse(&text) {
                let shown = t.to_string();
                prop_assert!(!shown.starts_with('-'));
                prop_assert!(!shown.chars().any(|c| c.is_control() || c.is_whitespace()));
            }
        }

        #[test]
        fn a_dash_or_control_character_is_always_refused(
            text in hostile_text(),
            bad in prop_oneof![Just('-'), Just('\n'), Just('\0'), Just('\u{1b}'), Just('\u{7f}'), Just('\u{9b}')],
            at in any::<prop::sample::Index>(),
        ) {
            let dashed = format!("-{text}");
            prop_assert!(RefName::parse(&dashed).is_err());
            prop_assert!(TrackedRef::parse(&dashed).is_err());
            let dashed_tag = format!("tag:-{text}");
            prop_assert!(TrackedRef::parse(&dashed_tag).is_err());
            prop_assert!(PluginSource::parse(&dashed, &SourcePolicy::permissive()).is_err());
            if bad != '-' {
                let chars: Vec<char> = text.chars().collect();
                let i = at.index(chars.len() + 1);
                let mut with: String = chars[..i].iter().collect();
                with.push(bad);
                with.extend(&chars[i..]);
                prop_assert!(RefName::parse(&with).is_err());
                prop_assert!(TrackedRef::parse(&with).is_err());
                let source = format!("git+https://host/{with}");
                prop_assert!(PluginSource::parse(&source, &SourcePolicy::permissive()).is_err());
            }
        }

        #[test]
        fn tracks_round_trip_through_their_text(t in track_strategy()) {
            prop_assert_eq!(TrackedRef::parse(&t.to_string()), Ok(t.clone()));
        }

        #[test]
        fn parsed_tracks_display_as_themselves_or_their_canonical_form(text in ref_like_text()) {
            if let Ok(t) = TrackedRef::parse(&text) {
                let shown = t.to_string();
                let canonical = format!("branch:{text}");
                prop_assert!(shown == text || shown == canonical);
                prop_assert_eq!(TrackedRef::parse(&shown), Ok(t));
            }
        }

        #[test]
        fn accepted_sources_are_safe_for_git_and_round_trip(
            scheme in prop_oneof![Just("https"), Just("ssh"), Just("file")],
            authority in prop_oneof![
                "([a-z]{1,4}@)?[a-z0-9][a-z0-9.-]{0,8}(:[0-9]{1,5})?",
                "[a-z0-9@:.-]{0,12}",
            ],
            path in ref_like_text(),
        ) {
            let text = if scheme == "file" {
                format!("git+file:///{path}")
            } else {
                format!("git+{scheme}://{authority}/{path}")
            };
            if let Ok(s) = PluginSource::parse(&text, &SourcePolicy::permissive()) {
                prop_assert_eq!(s.to_string(), text.clone());
                prop_assert!(!s.git_url().starts_with('-'));
                prop_assert!(!s.git_url().chars().any(|c| c.is_control() || c.is_whitespace()));
                prop_assert!(!s.host().unwrap_or("x").starts_with('-'));
                prop_assert!(!s.user().unwrap_or("x").starts_with('-'));
                prop_assert!(!s.path().split('/').any(|seg| seg.starts_with('-') || seg == ".."));
                prop_assert_eq!(s.git_url().split_once("://").map(|(x, _)| x), Some(s.scheme().as_str()));
                prop_assert_eq!(PluginSource::parse(&text, &SourcePolicy::permissive()), Ok(s));
            }
        }

        /// Whatever the listing, a tag with a peeled line resolves to the
        /// peeled commit, never to the tag object.
        #[test]
        fn resolve_never_returns_a_tag_object_when_a_peeled_line_exists(
            tags in proptest::collection::vec(
                (0u64..4, 0u64..12, 0u64..3, any::<bool>(), any::<bool>(), sha_strategy(), sha_strategy()),
                1..12,
            ),
            shuffle in any::<prop::sample::Index>(),
        ) {
            let mut refs = Vec::new();
            for (major, minor, patch, v, annotated, object, commit) in &tags {
                let name = format!("refs/tags/{}{major}.{minor}.{patch}", if *v { "v" } else { "" });
                if *annotated {
                    refs.push(RemoteRef { name: name.clone(), sha: object.clone() });
                    refs.push(RemoteRef { name: format!("{name}^{{}}"), sha: commit.clone() });
                } else {
                    refs.push(RemoteRef { name, sha: commit.clone() });
                }
            }
            let k = shuffle.index(refs.len());
            refs.rotate_left(k);
            let mut tracks: Vec<TrackedRef> = refs
                .iter()
                .filter_map(|r| r.name.strip_prefix("refs/tags/"))
                .map(|n| TrackedRef::Tag(RefName::parse(n.trim_end_matches("^{}")).unwrap()))
                .collect();
            tracks.push(TrackedRef::LatestTag);
            for t in tracks {
                let r = resolve(&t, &refs).unwrap();
                let full = r.ref_name.clone().unwrap();
                let peeled = format!("{full}^{{}}");
                if let Some(p) = refs.iter().find(|x| x.name == peeled) {
                    prop_assert_eq!(&r.sha, &p.sha);
                } else {
                    prop_assert_eq!(&r.sha, &refs.iter().find(|x| x.name == full).unwrap().sha);
                }
            }
        }

        /// tag:latest picks a release at least as high as every other one.
        #[test]
        fn latest_tag_is_never_below_another_release(
            tags in proptest::collection::vec(
                (0u64..3, 0u64..12, 0u64..12, any::<bool>(), prop_oneof![Just(""), Just("-rc.1"), Just("+b1")]),
                1..10,
            ),
        ) {
            let refs: Vec<RemoteRef> = tags
                .iter()
                .map(|(a, b, c, v, suffix)| line(
                    &format!("refs/tags/{}{a}.{b}.{c}{suffix}", if *v { "v" } else { "" }),
                    'a',
                ))
                .collect();
            let releases: Vec<semver::Version> = refs
                .iter()
                .filter_map(|r| release_version(r.name.strip_prefix("refs/tags/").unwrap()))
                .collect();
            match latest_tag(&refs) {
                None => prop_assert!(releases.is_empty()),
                Some(tag) => {
                    let best = release_version(tag).unwrap();
                    prop_assert!(best.pre.is_empty());
                    for v in &releases {
                        prop_assert!(best.cmp_precedence(v) != Ordering::Less, "{best} < {v}");
                    }
                }
            }
        }

        /// The sweep queues only when nothing is pending, every new or
        /// moved target is upstream, and nothing is queued for upstream
        /// equal to installed.
        #[test]
        fn drift_targets_are_always_upstream(
            installed in proptest::option::of(prop_oneof![Just('a'), Just('b'), Just('c')]),
            upstream in prop_oneof![Just('a'), Just('b'), Just('c')],
            pending_to in proptest::option::of(prop_oneof![Just('a'), Just('b'), Just('c')]),
            dismissed in proptest::option::of((proptest::option::of(prop_oneof![Just('a'), Just('b')]), prop_oneof![Just('a'), Just('b'), Just('c')])),
        ) {
            let installed = installed.map(sha);
            let upstream = sha(upstream);
            let pending = pending_to.map(|c| PendingUpdate { id: "u".into(), to_sha: sha(c) });
            let dismissed = dismissed.map(|(f, t)| DismissedUpdate { from_sha: f.map(sha), to_sha: sha(t) });
            let decision = drift(installed.as_ref(), &upstream, pending.as_ref(), dismissed.as_ref());
            match &decision {
                DriftDecision::Queue { to_sha } => {
                    prop_assert!(pending.is_none());
                    prop_assert_eq!(to_sha, &upstream);
                    prop_assert_ne!(installed.as_ref(), Some(&upstream));
                }
                DriftDecision::MoveTarget { id, to_sha } => {
                    prop_assert_eq!(id, "u");
                    prop_assert_eq!(to_sha, &upstream);
                    prop_assert_ne!(&pending.as_ref().unwrap().to_sha, &upstream);
                }
                DriftDecision::UpToDate => {
                    prop_assert!(pending.is_none());
                    prop_assert_eq!(installed.as_ref(), Some(&upstream));
                }
                DriftDecision::KeepPending => prop_assert!(pending.is_some()),
                DriftDecision::KeepDismissed => {
                    prop_assert!(pending.is_none());
                    prop_assert_eq!(&dismissed.as_ref().unwrap().to_sha, &upstream);
                }
            }
        }
    }
}
