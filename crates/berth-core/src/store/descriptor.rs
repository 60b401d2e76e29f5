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
            && n.bytes().next().is_some_and(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
            && n
                .bytes()
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
