//! PLACEHOLDER (replaced by the plugin core on merge): update statuses.
use std::fmt;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum UpdateStatus {
    Pending,
    Applied,
    Dismissed,
}

impl UpdateStatus {
    pub const fn as_str(self) -> &'static str {
        match self {
            UpdateStatus::Pending => "pending",
            UpdateStatus::Applied => "applied",
            UpdateStatus::Dismissed => "dismissed",
        }
    }
    pub fn parse(s: &str) -> Result<Self, String> {
        match s {
            "pending" => Ok(UpdateStatus::Pending),
            "applied" => Ok(UpdateStatus::Applied),
            "dismissed" => Ok(UpdateStatus::Dismissed),
            o => Err(o.to_string()),
        }
    }
}

impl fmt::Display for UpdateStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}
