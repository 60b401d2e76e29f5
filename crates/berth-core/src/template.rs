//! Templates: a named runtime kind and how to run it.

use std::collections::BTreeMap;
use std::time::Duration;

use crate::error::ValidationError;
use crate::id::{validate_env_name, validate_template_name};
use crate::image::{validate_tag, Repository};
use crate::store::{validate_stores, StoreDescriptor};

/// Names berth sets in every runtime's environment; callers cannot override them.
pub const RESERVED_ENV: [&str; 4] = [
    "BERTH_RUNTIME_ID",
    "BERTH_TEMPLATE",
    "BERTH_STATE_PATH",
    "BERTH_GENERATION",
];

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HealthCheck {
    /// HTTP path probed with GET on the container's address and port.
    pub path: String,
    pub interval: Duration,
    pub timeout: Duration,
    pub grace: Duration,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UpdatePolicy {
    Notify,
    Track,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RestartPolicy {
    Never,
    OnFailure,
    Always,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DisappearPolicy {
    Dispose,
    Recreate,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RolloutPolicy {
    pub batch_size: u32,
    pub max_failures: u32,
    /// Recreates of one batch that may run at once (runtimes down at once).
    pub max_unavailable: u32,
}

impl Default for RolloutPolicy {
    fn default() -> Self {
        Self {
            batch_size: 1,
            max_failures: 1,
            max_unavailable: 1,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Template {
    pub name: String,
    pub image: Repository,
    pub tag: String,
    pub port: Option<u16>,
    pub env: BTreeMap<String, String>,
    pub state_path: String,
    pub health: Option<HealthCheck>,
    pub require_pin: bool,
    pub watch: bool,
    pub update_policy: UpdatePolicy,
    pub rollout: RolloutPolicy,
    pub restart: RestartPolicy,
    pub on_disappear: DisappearPolicy,
    /// How long `docker stop` waits before it kills.
    pub stop_grace: Duration,
    /// The state stores its runtimes keep in their state directory.
    pub stores: Vec<StoreDescriptor>,
    /// A command run inside the container (`docker exec`) whose exit status
    /// is part of readiness; its output lines become diagnostics.
    pub store_validator: Option<StoreValidator>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoreValidator {
    pub command: Vec<String>,
    pub timeout: Duration,
}

pub const DEFAULT_VALIDATOR_TIMEOUT: Duration = Duration::from_secs(10);

pub const DEFAULT_TAG: &str = "latest";
pub const DEFAULT_STATE_PATH: &str = "/var/lib/runtime";
pub const DEFAULT_STOP_GRACE: Duration = Duration::from_secs(10);

impl Template {
    /// A template with defaults for everything but its name and image.
    pub fn new(name: &str, image: Repository) -> Self {
        Template {
            name: name.to_string(),
            image,
            tag: DEFAULT_TAG.to_string(),
            port: None,
            env: BTreeMap::new(),
            state_path: DEFAULT_STATE_PATH.to_string(),
            health: None,
            require_pin: false,
            watch: false,
            update_policy: UpdatePolicy::Notify,
            rollout: RolloutPolicy::default(),
            restart: RestartPolicy::Never,
            on_disappear: DisappearPolicy::Dispose,
            stop_grace: DEFAULT_STOP_GRACE,
            stores: Vec::new(),
            store_validator: None,
        }
    }

    /// Checks the invariants every stored template holds.
    pub fn validate(&self) -> Result<(), ValidationError> {
        validate_template_name(&self.name)?;
        validate_tag(&self.tag)?;
        if self.port == Some(0) {
            return Err(ValidationError::invalid_request(
                "port must be between 1 and 65535",
            ));
        }
        validate_env(&self.env, "template")?;
        if !self.state_path.starts_with('/')
            || self.state_path.contains("..")
            || self.state_path == "/"
        {
            return Err(ValidationError::invalid_request(format!(
                "state_path {:?} must be an absolute path inside the container, other than \"/\" and without \"..\"",
                self.state_path
            )));
        }
        if self.state_path.starts_with("/plugins") {
            return Err(ValidationError::invalid_request(
                "state_path must not be under /plugins, where berth mounts plugins",
            ));
        }
        if let Some(h) = &self.health {
            if !h.path.starts_with('/') {
                return Err(ValidationError::invalid_request(format!(
                    "health.path {:?} must start with '/'",
                    h.path
                )));
            }
            if self.port.is_none() {
                return Err(ValidationError::invalid_request(
                    "a health check needs the template's port",
                ));
            }
            if h.interval.is_zero() || h.timeout.is_zero() {
                return Err(ValidationError::invalid_request(
                    "health.interval and health.timeout must be greater than zero",
                ));
            }
        }
        validate_stores(&self.stores)?;
        if let Some(v) = &self.store_validator {
            if v.command.is_empty() || v.command[0].is_empty() {
                return Err(ValidationError::invalid_request(
                    "store_validator must name a command",
                ));
            }
            if v.command.iter().any(|a| a.contains('\0')) {
                return Err(ValidationError::invalid_request(
                    "store_validator arguments must not contain NUL bytes",
                ));
            }
            if v.timeout.is_zero() {
                return Err(ValidationError::invalid_request(
                    "store_validator_timeout must be greater than zero",
                ));
            }
        }
        if self.rollout.batch_size == 0 {
            return Err(ValidationError::invalid_request(
                "rollout.batch_size must be at least 1",
            ));
        }
        Ok(())
    }
}

/// Validates a set of environment variables given by a caller.
pub fn validate_env(env: &BTreeMap<String, String>, whose: &str) -> Result<(), ValidationError> {
    for (key, value) in env {
        validate_env_name(key)?;
        if RESERVED_ENV.contains(&key.as_str()) {
            return Err(ValidationError::invalid_request(format!(
                "{whose} env {key} is set by berth and cannot be overridden"
            )));
        }
        if value.contains('\0') {
            return Err(ValidationError::invalid_request(format!(
                "{whose} env {key} contains a NUL byte"
            )));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t() -> Template {
        Template::new(
            "engine",
            Repository::parse("r.example/acme/engine").unwrap(),
        )
    }

    #[test]
    fn defaults_are_valid() {
        t().validate().unwrap();
    }

    #[test]
    fn rejects_reserved_env_and_bad_paths() {
        let mut x = t();
        x.env.insert("BERTH_RUNTIME_ID".into(), "x".into());
        assert!(x
            .validate()
            .unwrap_err()
            .message
            .contains("cannot be overridden"));
        let mut x = t();
        x.state_path = "relative".into();
        assert!(x.validate().is_err());
        let mut x = t();
        x.health = Some(HealthCheck {
            path: "/healthz".into(),
            interval: Duration::from_secs(1),
            timeout: Duration::from_secs(1),
            grace: Duration::from_secs(1),
        });
        assert!(x.validate().unwrap_err().message.contains("port"));
        x.port = Some(8080);
        x.validate().unwrap();
    }
}
