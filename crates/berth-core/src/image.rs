//! Image repositories, tags, digests and the pin → reference resolution.

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::error::{ErrorCode, ValidationError};

/// A content digest, always `sha256:` followed by 64 lowercase hex digits.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Digest(String);

impl Digest {
    pub fn parse(text: &str) -> Result<Self, ValidationError> {
        let hex = text.strip_prefix("sha256:").ok_or_else(|| {
            ValidationError::new(
                ErrorCode::InvalidDigest,
                format!("digest {text:?} is invalid: it must start with \"sha256:\""),
            )
        })?;
        if hex.len() != 64 || !hex.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) {
            return Err(ValidationError::new(
                ErrorCode::InvalidDigest,
                format!(
                    "digest {text:?} is invalid: \"sha256:\" must be followed by exactly 64 lowercase hex digits"
                ),
            ));
        }
        Ok(Digest(text.to_string()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for Digest {
    type Error = ValidationError;
    fn try_from(value: String) -> Result<Self, Self::Error> {
        Digest::parse(&value)
    }
}

impl From<Digest> for String {
    fn from(d: Digest) -> String {
        d.0
    }
}

impl fmt::Display for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// An image repository without tag or digest, e.g.
/// `registry.example:5000/acme/engine` or `busybox`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Repository(String);

fn invalid_ref(text: &str, why: &str) -> ValidationError {
    ValidationError::new(
        ErrorCode::InvalidImageRef,
        format!("image {text:?} is invalid: {why}"),
    )
}

fn is_path_component(c: &str) -> bool {
    // [a-z0-9]+ separated by one '.', '_', '__' or one or more '-'.
    if c.is_empty() {
        return false;
    }
    let b = c.as_bytes();
    if !b[0].is_ascii_alphanumeric() || !b[b.len() - 1].is_ascii_alphanumeric() {
        return false;
    }
    c.bytes()
        .all(|x| x.is_ascii_lowercase() || x.is_ascii_digit() || matches!(x, b'.' | b'_' | b'-'))
        && !c.contains("..")
        && !c.contains("___")
}

fn is_domain(d: &str) -> bool {
    let (host, port) = match d.rsplit_once(':') {
        Some((h, p)) => (h, Some(p)),
        None => (d, None),
    };
    let host_ok = !host.is_empty()
        && host.split('.').all(|label| {
            !label.is_empty()
                && label
                    .bytes()
                    .all(|x| x.is_ascii_alphanumeric() || x == b'-')
                && !label.starts_with('-')
                && !label.ends_with('-')
        });
    let port_ok =
        port.is_none_or(|p| !p.is_empty() && p.len() <= 5 && p.bytes().all(|x| x.is_ascii_digit()));
    host_ok && port_ok
}

impl Repository {
    pub fn parse(text: &str) -> Result<Self, ValidationError> {
        if text.is_empty() {
            return Err(invalid_ref(text, "it must not be empty"));
        }
        if text.len() > 255 {
            return Err(invalid_ref(text, "it is longer than 255 characters"));
        }
        if text.contains('@') {
            return Err(invalid_ref(
                text,
                "give the repository only; pin a digest with the pin endpoint",
            ));
        }
        let mut parts: Vec<&str> = text.split('/').collect();
        // The first part is a registry domain when it looks like one
        // (has a '.' or a ':' or is "localhost"), as Docker decides it.
        if parts.len() > 1 {
            let first = parts[0];
            if first.contains('.') || first.contains(':') || first == "localhost" {
                if !is_domain(first) {
                    return Err(invalid_ref(text, "the registry host is malformed"));
                }
                parts.remove(0);
            }
        }
        if let Some(last) = parts.last() {
            if last.contains(':') {
                return Err(invalid_ref(
                    text,
                    "give the repository without a tag; the tag goes in the \"tag\" field",
                ));
            }
        }
        if !parts.iter().all(|c| is_path_component(c)) {
            return Err(invalid_ref(
                text,
                "each path component must be lowercase letters and digits, separated by '.', '_' or '-'",
            ));
        }
        Ok(Repository(text.to_string()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The repository as Docker writes it in `RepoDigests`: Docker Hub's
    /// `docker.io/library/` prefix is dropped.
    pub fn docker_short_name(&self) -> &str {
        let s = self.0.as_str();
        s.strip_prefix("docker.io/library/")
            .or_else(|| s.strip_prefix("docker.io/"))
            .unwrap_or(s)
    }
}

impl TryFrom<String> for Repository {
    type Error = ValidationError;
    fn try_from(value: String) -> Result<Self, Self::Error> {
        Repository::parse(&value)
    }
}

impl From<Repository> for String {
    fn from(r: Repository) -> String {
        r.0
    }
}

impl fmt::Display for Repository {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Validates a tag: `[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}`.
pub fn validate_tag(tag: &str) -> Result<(), ValidationError> {
    let ok = !tag.is_empty()
        && tag.len() <= 128
        && (tag.as_bytes()[0].is_ascii_alphanumeric() || tag.as_bytes()[0] == b'_')
        && tag
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'));
    if ok {
        Ok(())
    } else {
        Err(ValidationError::new(
            ErrorCode::InvalidImageRef,
            format!("tag {tag:?} is invalid: use up to 128 letters, digits, '_', '.' and '-'"),
        ))
    }
}

/// The reference berth asks Docker for: by digest when pinned, else by tag.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ImageRef {
    Tagged { repo: Repository, tag: String },
    Pinned { repo: Repository, digest: Digest },
}

impl ImageRef {
    pub fn repository(&self) -> &Repository {
        match self {
            ImageRef::Tagged { repo, .. } | ImageRef::Pinned { repo, .. } => repo,
        }
    }

    pub fn pinned_digest(&self) -> Option<&Digest> {
        match self {
            ImageRef::Pinned { digest, .. } => Some(digest),
            ImageRef::Tagged { .. } => None,
        }
    }
}

impl fmt::Display for ImageRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ImageRef::Tagged { repo, tag } => write!(f, "{repo}:{tag}"),
            ImageRef::Pinned { repo, digest } => write!(f, "{repo}@{digest}"),
        }
    }
}

/// Why no image reference could be resolved.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NotPinned {
    pub template: String,
}

/// Image resolution on every (re)create: the pin wins; without a pin the
/// tracked tag is used, unless the template requires a pin.
pub fn resolve_image(
    template_name: &str,
    repo: &Repository,
    tag: &str,
    require_pin: bool,
    pin: Option<&Digest>,
) -> Result<ImageRef, NotPinned> {
    match pin {
        Some(digest) => Ok(ImageRef::Pinned {
            repo: repo.clone(),
            digest: digest.clone(),
        }),
        None if require_pin => Err(NotPinned {
            template: template_name.to_string(),
        }),
        None => Ok(ImageRef::Tagged {
            repo: repo.clone(),
            tag: tag.to_string(),
        }),
    }
}

/// Picks the digest of `repo` out of Docker's `RepoDigests`
/// (`<repo>@sha256:…` entries). An image built locally and never pushed or
/// pulled has none.
pub fn digest_from_repo_digests<'a>(
    repo: &Repository,
    repo_digests: impl IntoIterator<Item = &'a str>,
) -> Option<Digest> {
    let wanted = repo.docker_short_name();
    let mut fallback = None;
    for entry in repo_digests {
        let Some((name, digest)) = entry.rsplit_once('@') else {
            continue;
        };
        let Ok(digest) = Digest::parse(digest) else {
            continue;
        };
        if name == wanted || name == repo.as_str() {
            return Some(digest);
        }
        fallback.get_or_insert(digest);
    }
    fallback
}

#[cfg(test)]
mod tests {
    use super::*;

    const D: &str = "sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

    #[test]
    fn digests() {
        Digest::parse(D).unwrap();
        for bad in [
            "",
            "sha256:",
            "sha512:0123",
            &D.to_uppercase(),
            &D[..D.len() - 1],
            &format!("{D}0"),
            "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef",
        ] {
            let e = Digest::parse(bad).unwrap_err();
            assert_eq!(e.code, ErrorCode::InvalidDigest, "{bad:?}");
        }
    }

    #[test]
    fn repositories() {
        for ok in [
            "busybox",
            "acme/engine",
            "registry.example/acme/workspace-template-claude-code",
            "127.0.0.1:5000/berth-test/app",
            "localhost/x",
            "a__b/c.d-e",
        ] {
            Repository::parse(ok).unwrap();
        }
        for bad in [
            "",
            "Acme/engine",
            "acme/engine:latest",
            "acme/engine@sha256:00",
            "/x",
            "x/",
            "x//y",
            "-x",
            "bad host:port/x",
        ] {
            let e = Repository::parse(bad).unwrap_err();
            assert_eq!(e.code, ErrorCode::InvalidImageRef, "{bad:?}");
        }
    }

    #[test]
    fn tags() {
        validate_tag("latest").unwrap();
        validate_tag("v1.2.3-rc_1").unwrap();
        for bad in ["", ".x", "-x", "a:b", &"x".repeat(129)] {
            assert!(validate_tag(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn resolution() {
        let repo = Repository::parse("r.example/a/b").unwrap();
        let digest = Digest::parse(D).unwrap();
        let pinned = resolve_image("t", &repo, "latest", true, Some(&digest)).unwrap();
        assert_eq!(pinned.to_string(), format!("r.example/a/b@{D}"));
        let tagged = resolve_image("t", &repo, "stable", false, None).unwrap();
        assert_eq!(tagged.to_string(), "r.example/a/b:stable");
        assert_eq!(
            resolve_image("t", &repo, "latest", true, None),
            Err(NotPinned {
                template: "t".into()
            })
        );
    }

    #[test]
    fn repo_digest_selection() {
        let repo = Repository::parse("docker.io/library/busybox").unwrap();
        let other = "sha256:1111111111111111111111111111111111111111111111111111111111111111";
        let found = digest_from_repo_digests(
            &repo,
            [
                format!("mirror.example/busybox@{other}").as_str(),
                &format!("busybox@{D}"),
            ],
        );
        assert_eq!(found.unwrap().as_str(), D);
        assert_eq!(digest_from_repo_digests(&repo, []), None);
    }
}
