//! Operations: the append-only log of every attempt to change the world.

use std::collections::BTreeMap;
use std::fmt;

macro_rules! string_enum {
    ($(#[$meta:meta])* $name:ident { $($variant:ident => $text:literal),+ $(,)? }) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        pub enum $name { $($variant),+ }

        impl $name {
            pub const ALL: &'static [$name] = &[$($name::$variant),+];

            pub const fn as_str(self) -> &'static str {
                match self { $($name::$variant => $text),+ }
            }

            pub fn parse(text: &str) -> Option<Self> {
                match text { $($text => Some($name::$variant),)+ _ => None }
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.as_str())
            }
        }
    };
}

string_enum!(
    /// What an operation tried to do.
    OperationKind {
        Start => "start",
        Stop => "stop",
        Restart => "restart",
        Recreate => "recreate",
        Remove => "remove",
        Refresh => "refresh",
        ReconcileDispose => "reconcile_dispose",
        ReconcileAdopt => "reconcile_adopt",
        ReconcileExited => "reconcile_exited",
        PluginInstall => "plugin_install",
        PluginApply => "plugin_apply",
        PluginUninstall => "plugin_uninstall",
        PluginDismiss => "plugin_dismiss",
        PinPromote => "pin_promote",
        PinUnpin => "pin_unpin",
        TemplatePut => "template_put",
        TemplateDelete => "template_delete",
        StoreBatch => "store_batch",
        StoreQuarantine => "store_quarantine",
        StoreRebuild => "store_rebuild",
    }
);

string_enum!(
    /// Who asked for it.
    Source {
        Api => "api",
        Stream => "stream",
        AutoReconcile => "auto_reconcile",
        ImageWatch => "image_watch",
        DriftSweeper => "drift_sweeper",
        Cli => "cli",
        Config => "config",
    }
);

string_enum!(
    Outcome {
        InProgress => "in_progress",
        Success => "success",
        Failure => "failure",
    }
);

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Operation {
    pub id: String,
    pub runtime_id: Option<String>,
    pub template: Option<String>,
    pub kind: OperationKind,
    pub source: Source,
    pub outcome: Outcome,
    pub error_code: Option<String>,
    pub error_message: Option<String>,
    pub started_at_ms: i64,
    pub finished_at_ms: Option<i64>,
    /// Facts worth keeping: image reference, container id, digests.
    pub details: BTreeMap<String, String>,
}

impl Operation {
    pub fn begin(id: String, kind: OperationKind, source: Source, now_ms: i64) -> Self {
        Operation {
            id,
            runtime_id: None,
            template: None,
            kind,
            source,
            outcome: Outcome::InProgress,
            error_code: None,
            error_message: None,
            started_at_ms: now_ms,
            finished_at_ms: None,
            details: BTreeMap::new(),
        }
    }

    pub fn for_runtime(mut self, runtime_id: &str, template: &str) -> Self {
        self.runtime_id = Some(runtime_id.to_string());
        self.template = Some(template.to_string());
        self
    }

    pub fn for_template(mut self, template: &str) -> Self {
        self.template = Some(template.to_string());
        self
    }

    pub fn detail(mut self, key: &str, value: impl Into<String>) -> Self {
        self.details.insert(key.to_string(), value.into());
        self
    }

    pub fn succeed(&mut self, now_ms: i64) {
        self.outcome = Outcome::Success;
        self.finished_at_ms = Some(now_ms);
    }

    pub fn fail(&mut self, code: &str, message: &str, now_ms: i64) {
        self.outcome = Outcome::Failure;
        self.error_code = Some(code.to_string());
        self.error_message = Some(message.to_string());
        self.finished_at_ms = Some(now_ms);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip() {
        for k in OperationKind::ALL {
            assert_eq!(OperationKind::parse(k.as_str()), Some(*k));
        }
        for s in Source::ALL {
            assert_eq!(Source::parse(s.as_str()), Some(*s));
        }
        for o in Outcome::ALL {
            assert_eq!(Outcome::parse(o.as_str()), Some(*o));
        }
        assert_eq!(OperationKind::parse("nope"), None);
    }
}
