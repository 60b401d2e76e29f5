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

/// `name` split into its registry domain, when its first component is one,
/// and the path. The first component is a domain when it looks like one (has
/// a '.' or a ':' or is "localhost"), as Docker decides it.
fn split_domain(name: &str) -> (Option<&str>, &str) {
    match name.split_once('/') {
        Some((first, rest))
            if first.contains('.') || first.contains(':') || first == "localhost" =>
        {
            (Some(first), rest)
        }
        _ => (None, name),
    }
}

/// Checks a repository name; errors name `whole`, the text the caller gave.
fn check_repository(name: &str, whole: &str) -> Result<(), ValidationError> {
    if name.is_empty() {
        return Err(invalid_ref(whole, "the repository must not be empty"));
    }
    if name.len() > 255 {
        return Err(invalid_ref(
            whole,
            "the repository is longer than 255 characters",
        ));
    }
    let (domain, path) = split_domain(name);
    if domain.is_some_and(|d| !is_domain(d)) {
        return Err(invalid_ref(whole, "the registry host is malformed"));
    }
    if !path.split('/').all(is_path_component) {
        return Err(invalid_ref(
            whole,
            "each path component must be lowercase letters and digits, separated by '.', '_' or '-'",
        ));
    }
    Ok(())
}

impl Repository {
    pub fn parse(text: &str) -> Result<Self, ValidationError> {
        if text.contains('@') {
            return Err(invalid_ref(
                text,
                "give the repository only; pin a digest with the pin endpoint",
            ));
        }
        let (_, path) = split_domain(text);
        if path
            .rsplit('/')
            .next()
            .is_some_and(|last| last.contains(':'))
        {
            return Err(invalid_ref(
                text,
                "give the repository without a tag; the tag goes in the \"tag\" field",
            ));
        }
        check_repository(text, text)?;
        Ok(Repository(text.to_string()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The registry host (and port), when the name starts with one.
    pub fn domain(&self) -> Option<&str> {
        split_domain(&self.0).0
    }

    /// The name without its registry host.
    pub fn path(&self) -> &str {
        split_domain(&self.0).1
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

/// A whole image reference as Docker reads it:
/// `[host[:port]/]path[:tag][@sha256:…]`. A ':' is a tag separator only
/// after the last '/', so `127.0.0.1:55000/repo` has no tag.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Reference {
    pub repository: Repository,
    pub tag: Option<String>,
    pub digest: Option<Digest>,
}

impl Reference {
    pub fn parse(text: &str) -> Result<Self, ValidationError> {
        if text.is_empty() {
            return Err(invalid_ref(text, "it must not be empty"));
        }
        let (name, digest) = match text.split_once('@') {
            Some((name, digest)) => {
                let digest = Digest::parse(digest).map_err(|_| {
                    invalid_ref(
                        text,
                        "the digest must be \"sha256:\" and 64 lowercase hex digits",
                    )
                })?;
                (name, Some(digest))
            }
            None => (text, None),
        };
        let after_slash = name.rfind('/').map_or(0, |i| i + 1);
        let (repo, tag) = match name[after_slash..].rfind(':') {
            Some(i) => {
                let colon = after_slash + i;
                (&name[..colon], Some(&name[colon + 1..]))
            }
            None => (name, None),
        };
        if let Some(tag) = tag {
            validate_tag(tag).map_err(|_| {
                invalid_ref(
                    text,
                    "the tag must be up to 128 letters, digits, '_', '.' and '-', not starting with '.' or '-'",
                )
            })?;
        }
        check_repository(repo, text)?;
        Ok(Reference {
            repository: Repository(repo.to_string()),
            tag: tag.map(str::to_string),
            digest,
        })
    }

    /// The reference to pull: with neither tag nor digest Docker would pull
    /// every tag of the repository, so `latest` is added, as the docker CLI
    /// does.
    pub fn pullable(self) -> Reference {
        if self.tag.is_none() && self.digest.is_none() {
            Reference {
                tag: Some(crate::template::DEFAULT_TAG.to_string()),
                ..self
            }
        } else {
            self
        }
    }
}

impl fmt::Display for Reference {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.repository.as_str())?;
        if let Some(tag) = &self.tag {
            write!(f, ":{tag}")?;
        }
        if let Some(digest) = &self.digest {
            write!(f, "@{digest}")?;
        }
        Ok(())
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
        let Ok(Reference {
            repository,
            digest: Some(digest),
            ..
        }) = Reference::parse(entry)
        else {
            continue;
        };
        if repository.as_str() == wanted || repository == *repo {
            return Some(digest);
        }
        fallback.get_or_insert(digest);
    }
    fallback
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

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
    fn repository_domain_and_path() {
        let cases = [
            ("busybox", None, "busybox"),
            ("acme/engine", None, "acme/engine"),
            (
                "127.0.0.1:55000/berth-test/app",
                Some("127.0.0.1:55000"),
                "berth-test/app",
            ),
            ("localhost/x", Some("localhost"), "x"),
            ("r.example/a/b", Some("r.example"), "a/b"),
        ];
        for (text, domain, path) in cases {
            let r = Repository::parse(text).unwrap();
            assert_eq!((r.domain(), r.path()), (domain, path), "{text}");
        }
    }

    fn reference(repo: &str, tag: Option<&str>, digest: Option<&str>) -> Reference {
        Reference {
            repository: Repository::parse(repo).unwrap(),
            tag: tag.map(str::to_string),
            digest: digest.map(|d| Digest::parse(d).unwrap()),
        }
    }

    #[test]
    fn references() {
        let cases = [
            ("busybox", reference("busybox", None, None)),
            ("busybox:latest", reference("busybox", Some("latest"), None)),
            // A port in the registry host is not a tag.
            (
                "127.0.0.1:55000/a/b",
                reference("127.0.0.1:55000/a/b", None, None),
            ),
            (
                "127.0.0.1:55000/a/b:v1",
                reference("127.0.0.1:55000/a/b", Some("v1"), None),
            ),
            (
                &format!("127.0.0.1:55000/a/b@{D}"),
                reference("127.0.0.1:55000/a/b", None, Some(D)),
            ),
            (
                &format!("r.example/a:v1.2-rc_1@{D}"),
                reference("r.example/a", Some("v1.2-rc_1"), Some(D)),
            ),
            ("localhost/x:V2", reference("localhost/x", Some("V2"), None)),
            // No '/': a ':' is a tag, as Docker reads it.
            ("localhost:5000", reference("localhost", Some("5000"), None)),
        ];
        for (text, want) in cases {
            let got = Reference::parse(text).unwrap();
            assert_eq!(got, want, "{text}");
            assert_eq!(got.to_string(), text);
        }
        for bad in [
            "",
            "Busybox",
            "acme/Engine:v1",
            "busybox:",
            "busybox:-x",
            "busybox:.x",
            "busybox@",
            "busybox@sha256:00",
            &format!("busybox@{}", D.to_uppercase()),
            &format!("busybox@{D}@{D}"),
            &format!("busybox:v1:v2@{D}"),
            ":v1",
            "@sha256:00",
            "/x:v1",
            "x//y",
            "bad host:port/x",
            "127.0.0.1:port/x",
            &format!("busybox:{}", "x".repeat(129)),
            &format!("{}:v1", "a".repeat(256)),
        ] {
            let e = Reference::parse(bad).unwrap_err();
            assert_eq!(e.code, ErrorCode::InvalidImageRef, "{bad:?}");
            assert!(
                e.message.contains(&format!("{bad:?}")),
                "{bad:?}: {}",
                e.message
            );
        }
    }

    #[test]
    fn pulls_name_a_tag_or_digest() {
        let pull = |text: &str| Reference::parse(text).unwrap().pullable().to_string();
        assert_eq!(pull("127.0.0.1:55000/a/b:v1"), "127.0.0.1:55000/a/b:v1");
        assert_eq!(pull("127.0.0.1:55000/a/b"), "127.0.0.1:55000/a/b:latest");
        let pinned = format!("127.0.0.1:55000/a/b@{D}");
        assert_eq!(pull(&pinned), pinned);
        assert_eq!(pull("busybox"), "busybox:latest");
    }

    fn component() -> impl Strategy<Value = String> {
        "[a-z0-9]{1,6}([._-][a-z0-9]{1,4})?"
    }

    fn any_reference() -> impl Strategy<Value = Reference> {
        let domain = proptest::option::of(prop_oneof![
            Just("localhost".to_string()),
            "[a-z0-9]{1,8}\\.[a-z]{2,4}",
            "[a-z0-9]{1,8}\\.[a-z]{2,4}:[0-9]{1,5}",
            "127\\.0\\.0\\.1:[0-9]{1,5}",
            "localhost:[0-9]{1,5}",
        ]);
        let path = proptest::collection::vec(component(), 1..4);
        let tag = proptest::option::of("[A-Za-z0-9_][A-Za-z0-9_.-]{0,16}");
        let digest = proptest::option::of("[0-9a-f]{64}");
        (domain, path, tag, digest).prop_map(|(domain, path, tag, digest)| {
            let mut name = path.join("/");
            if let Some(d) = domain {
                name = format!("{d}/{name}");
            }
            Reference {
                repository: Repository(name),
                tag,
                digest: digest.map(|hex| Digest(format!("sha256:{hex}"))),
            }
        })
    }

    proptest! {
        #[test]
        fn references_round_trip(r in any_reference()) {
            prop_assert_eq!(Reference::parse(&r.to_string()), Ok(r.clone()));
            prop_assert!(Repository::parse(r.repository.as_str()).is_ok());
        }

        /// Any text either fails or is the reference it formats back to.
        #[test]
        fn parsing_is_exact(text in "[a-zA-Z0-9:@/._-]{0,40}") {
            if let Ok(r) = Reference::parse(&text) {
                prop_assert_eq!(r.to_string(), text);
            }
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
