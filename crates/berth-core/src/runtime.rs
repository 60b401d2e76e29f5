//! The runtime record: berth's memory of one managed container.

use std::collections::BTreeMap;

use crate::status::RuntimeStatus;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LastError {
    pub code: String,
    pub message: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RuntimeRecord {
    pub id: String,
    pub template: String,
    pub status: RuntimeStatus,
    pub container_id: Option<String>,
    /// The reference berth asked Docker for (`repo@sha256:…` or `repo:tag`).
    pub image_ref: Option<String>,
    /// The digest the container actually runs, when Docker knows it.
    pub image_digest: Option<String>,
    pub engine_endpoint: Option<String>,
    /// Bumped on every container (re)create.
    pub generation: i64,
    /// The caller's own variables, kept so that a recreate rebuilds them.
    pub env: BTreeMap<String, String>,
    pub created_at_ms: i64,
    pub updated_at_ms: i64,
    pub last_error: Option<LastError>,
    /// New on every start of its container; `None` before the first.
    pub run_id: Option<String>,
}

impl RuntimeRecord {
    pub fn new(id: &str, template: &str, env: BTreeMap<String, String>, now_ms: i64) -> Self {
        RuntimeRecord {
            id: id.to_string(),
            template: template.to_string(),
            status: RuntimeStatus::Starting,
            container_id: None,
            image_ref: None,
            image_digest: None,
            engine_endpoint: None,
            generation: 0,
            env,
            created_at_ms: now_ms,
            updated_at_ms: now_ms,
            last_error: None,
            run_id: None,
        }
    }
}
