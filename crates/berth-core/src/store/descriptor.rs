//! What a template declares about each state store.

use crate::error::ValidationError;

/// What a broken or missing store does to readiness.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum StoreReadiness {
    /// The runtime must not be called ready without it.
    Blocking,
    /// The runtime can serve without it, degraded.
    Degrading,
}

/// What berth does with a store whose file cannot be trusted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum StoreRecovery {
    /// Move the file aside (never delete it); the runtime starts without it.
    Quarantine,
    /// Move the file aside and clear the store from the manifest; the
    /// runtime is told (diagnostics) to rebuild it from its own sources.
    Rebuild,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoreDescriptor {
    /// `[a-z0-9_.-]`, 1–64 characters, starting with a letter or digit.
    pub name: String,
    /// Relative to the state directory; no `..`, not under `.berth/`.
    pub path: String,
    /// The schema version the runtime's code writes and understands (an
    /// image label `io.berth.store.<name>.schema_version` overrides it).
    pub schema_version: u32,
    pub readiness: StoreReadiness,
    pub recovery: StoreRecovery,
}

impl StoreDescriptor {
    pub fn validate(&self) -> Result<(), ValidationError> {
        let n = &self.name;
        let name_ok = !n.is_empty()
            && n.len() <= 64
            && n.bytes()
                .next()
                .is_some_and(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
            && n.bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"_.-".contains(&b));
        if !name_ok {
            return Err(ValidationError::invalid_request(format!(
                "store name {n:?} must be 1-64 characters of a-z, 0-9, '_', '.', '-', starting with a letter or digit"
            )));
        }
        let p = &self.path;
        let components: Vec<&str> = p.split('/').collect();
        let path_ok = !p.is_empty()
            && p.len() <= 255
            && !p.starts_with('/')
            && !p.ends_with('/')
            && components
                .iter()
                .all(|c| !c.is_empty() && *c != "." && *c != "..")
            && components[0] != ".berth"
            && !p.contains(|c: char| c.is_control() || c == '\\');
        if !path_ok {
            return Err(ValidationError::invalid_request(format!(
                "store {n}: path {p:?} must be a relative path inside the state directory, without '.', '..' or empty components, and not under .berth/"
            )));
        }
        if self.schema_version == 0 {
            return Err(ValidationError::invalid_request(format!(
                "store {n}: schema_version must be at least 1"
            )));
        }
        Ok(())
    }
}

/// Checks every descriptor, and that names and paths are each used once.
pub fn validate_stores(stores: &[StoreDescriptor]) -> Result<(), ValidationError> {
    let mut names = std::collections::HashSet::new();
    let mut paths = std::collections::HashSet::new();
    for s in stores {
        s.validate()?;
        if !names.insert(s.name.as_str()) {
            return Err(ValidationError::invalid_request(format!(
                "store name {:?} is declared twice",
                s.name
            )));
        }
        if !paths.insert(s.path.as_str()) {
            return Err(ValidationError::invalid_request(format!(
                "store path {:?} is used by two stores",
                s.path
            )));
        }
    }
    // One store's file cannot be a directory holding another's.
    for a in stores {
        for b in stores {
            if b.path.len() > a.path.len()
                && b.path.starts_with(a.path.as_str())
                && b.path.as_bytes()[a.path.len()] == b'/'
            {
                return Err(ValidationError::invalid_request(format!(
                    "store path {:?} of store {} is inside the path {:?} of store {}",
                    b.path, b.name, a.path, a.name
                )));
            }
        }
    }
    Ok(())
}

/// The image label that says which schema version of a store the image's
/// code understands.
pub fn schema_label(store: &str) -> String {
    format!("io.berth.store.{store}.schema_version")
}

/// The schema version of each store the image understands: its label
/// when it has one that parses, else the descriptor's.
pub fn understood_versions(
    stores: &[StoreDescriptor],
    image_labels: &std::collections::BTreeMap<String, String>,
) -> std::collections::BTreeMap<String, u32> {
    stores
        .iter()
        .map(|s| {
            let v = image_labels
                .get(&schema_label(&s.name))
                .and_then(|v| v.trim().parse::<u32>().ok())
                .filter(|v| *v > 0)
                .unwrap_or(s.schema_version);
            (s.name.clone(), v)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::ErrorCode;

    fn store(name: &str, path: &str) -> StoreDescriptor {
        StoreDescriptor {
            name: name.to_string(),
            path: path.to_string(),
            schema_version: 1,
            readiness: StoreReadiness::Blocking,
            recovery: StoreRecovery::Quarantine,
        }
    }

    #[test]
    fn good_names_and_paths_pass() {
        for (name, path) in [
            ("launch_state", "launch-state.json"),
            ("a", "a"),
            ("0.x-y_z", "sub/dir/file.json"),
            (&"n".repeat(64)[..], ".hidden"),
            ("s", "x/.berth/y"),
            ("s", ".berthx/y"),
        ] {
            assert_eq!(store(name, path).validate(), Ok(()), "{name} {path}");
        }
    }

    #[test]
    fn bad_names_are_refused() {
        for name in [
            "",
            "Launch",
            "_x",
            ".x",
            "-x",
            "a/b",
            "a b",
            "é",
            &"n".repeat(65)[..],
        ] {
            let err = store(name, "f.json").validate().unwrap_err();
            assert_eq!(err.code, ErrorCode::InvalidRequest, "{name:?}");
            assert!(
                err.message.contains("store name"),
                "{name:?}: {}",
                err.message
            );
        }
    }

    #[test]
    fn paths_outside_the_state_dir_or_under_berth_are_refused() {
        for path in [
            "",
            "/etc/passwd",
            "/abs",
            "..",
            "../x",
            "a/../../x",
            "a/..",
            ".",
            "./x",
            "a//b",
            "a/",
            ".berth",
            ".berth/x",
            ".berth/manifest.json",
            "a\\..\\b",
            "a\nb",
            &"p".repeat(256)[..],
        ] {
            let err = store("s", path).validate().unwrap_err();
            assert_eq!(err.code, ErrorCode::InvalidRequest, "{path:?}");
            assert!(err.message.contains("path"), "{path:?}: {}", err.message);
        }
    }

    #[test]
    fn schema_version_zero_is_refused() {
        let mut s = store("s", "s.json");
        s.schema_version = 0;
        assert!(s.validate().unwrap_err().message.contains("schema_version"));
    }

    #[test]
    fn duplicates_are_refused() {
        assert_eq!(
            validate_stores(&[store("a", "a.json"), store("b", "b.json")]),
            Ok(())
        );
        assert_eq!(validate_stores(&[]), Ok(()));
        let err = validate_stores(&[store("a", "a.json"), store("a", "b.json")]).unwrap_err();
        assert!(err.message.contains("declared twice"), "{}", err.message);
        let err = validate_stores(&[store("a", "x.json"), store("b", "x.json")]).unwrap_err();
        assert!(
            err.message.contains("used by two stores"),
            "{}",
            err.message
        );
    }

    #[test]
    fn a_store_inside_another_stores_path_is_refused() {
        for (pa, pb) in [("a", "a/b"), ("a/b", "a"), ("x/y", "x/y/z/w")] {
            let err = validate_stores(&[store("a", pa), store("b", pb)]).unwrap_err();
            assert!(err.message.contains("inside"), "{pa} {pb}: {}", err.message);
        }
        assert_eq!(
            validate_stores(&[store("a", "ab"), store("b", "a/b"), store("c", "a.b")]),
            Ok(())
        );
    }

    #[test]
    fn validate_stores_refuses_an_invalid_descriptor() {
        let err = validate_stores(&[store("a", "a.json"), store("B", "b.json")]).unwrap_err();
        assert!(err.message.contains("store name"));
    }
}
