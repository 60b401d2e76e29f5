//! Image pins: the digest a template's runtimes must run.

use crate::image::Digest;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pin {
    pub template: String,
    pub digest: Digest,
    pub promoted_at_ms: i64,
    pub promoted_by: String,
    pub reason: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PinAction {
    Promote,
    Unpin,
}

impl PinAction {
    pub const fn as_str(self) -> &'static str {
        match self {
            PinAction::Promote => "promote",
            PinAction::Unpin => "unpin",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "promote" => Some(PinAction::Promote),
            "unpin" => Some(PinAction::Unpin),
            _ => None,
        }
    }
}

/// One entry of a template's pin history; an unpin has no digest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PinHistoryEntry {
    pub template: String,
    pub action: PinAction,
    pub digest: Option<Digest>,
    pub previous_digest: Option<Digest>,
    pub at_ms: i64,
    pub by: String,
    pub reason: Option<String>,
}
