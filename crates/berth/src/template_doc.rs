//! The template document: the one written form of a template, shared by the
//! HTTP API (`PUT /v1/templates/{name}`), `[[templates]]` in `berth.toml`
//! and the database. Durations are strings (`"500ms"`, `"2s"`, `"5m"`).

use std::collections::BTreeMap;

use berth_core::duration::{format_duration, parse_duration};
use berth_core::image::{Digest, Repository};
use berth_core::store::{StoreDescriptor, StoreReadiness, StoreRecovery};
use berth_core::template::{
    DisappearPolicy, HealthCheck, RestartPolicy, RolloutPolicy, StoreValidator, Template,
    UpdatePolicy, DEFAULT_VALIDATOR_TIMEOUT,
};
use berth_core::ValidationError;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TemplateDoc {
    /// Only in `berth.toml`, or equal to the path's name in the API.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Image repository without tag, e.g. `registry.example/acme/engine`.
    pub image: String,
    /// Tracked tag; default `latest`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tag: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<u16>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub env: BTreeMap<String, String>,
    /// Where the runtime's state directory is mounted; default `/var/lib/runtime`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub state_path: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub health: Option<HealthDoc>,
    #[serde(default)]
    pub require_pin: bool,
    #[serde(default)]
    pub watch: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub update_policy: Option<UpdatePolicyDoc>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rollout: Option<RolloutDoc>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub restart: Option<RestartDoc>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub on_disappear: Option<DisappearDoc>,
    /// How long a stop waits before it kills; default `10s`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stop_grace: Option<String>,
    /// The state stores its runtimes keep (see docs/state-store.md).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub stores: Vec<StoreDoc>,
    /// Command run inside the container for readiness, e.g. `["/bin/check-state"]`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub store_validator: Option<Vec<String>>,
    /// How long the validator may run; default `10s`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub store_validator_timeout: Option<String>,
    /// Only in `berth.toml`: seeds the pin unless one was ever promoted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pin: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct HealthDoc {
    pub path: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interval: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub grace: Option<String>,
}

/// One state store a template declares.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct StoreDoc {
    /// `[a-z0-9_.-]`, 1-64 characters.
    pub name: String,
    /// File path relative to the state directory, not under `.berth/`.
    pub path: String,
    /// Schema version the runtime's code understands; default 1.
    #[serde(default = "one")]
    pub schema_version: u32,
    /// `blocking` (default) or `degrading`.
    #[serde(default)]
    pub readiness: StoreReadinessDoc,
    /// `quarantine` (default) or `rebuild`.
    #[serde(default)]
    pub recovery: StoreRecoveryDoc,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum StoreReadinessDoc {
    #[default]
    Blocking,
    Degrading,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum StoreRecoveryDoc {
    #[default]
    Quarantine,
    Rebuild,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RolloutDoc {
    #[serde(default = "one")]
    pub batch_size: u32,
    #[serde(default = "one")]
    pub max_failures: u32,
    /// Recreates of one batch that may run at once; default 1.
    #[serde(default = "one")]
    pub max_unavailable: u32,
}

fn one() -> u32 {
    1
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum UpdatePolicyDoc {
    Notify,
    Track,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "kebab-case")]
pub enum RestartDoc {
    Never,
    OnFailure,
    Always,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum DisappearDoc {
    Dispose,
    Recreate,
}

fn duration_field(
    field: &str,
    value: &Option<String>,
    default: std::time::Duration,
) -> Result<std::time::Duration, ValidationError> {
    match value {
        None => Ok(default),
        Some(text) => parse_duration(text)
            .map_err(|e| ValidationError::new(e.code, format!("{field}: {}", e.message))),
    }
}

impl TemplateDoc {
    /// Validates the document into a template named `name`.
    pub fn to_template(&self, name: &str) -> Result<Template, ValidationError> {
        let image = Repository::parse(&self.image)?;
        let mut t = Template::new(name, image);
        if let Some(tag) = &self.tag {
            t.tag = tag.clone();
        }
        t.port = self.port;
        t.env = self.env.clone();
        if let Some(p) = &self.state_path {
            t.state_path = p.clone();
        }
        if let Some(h) = &self.health {
            t.health = Some(HealthCheck {
                path: h.path.clone(),
                interval: duration_field(
                    "health.interval",
                    &h.interval,
                    std::time::Duration::from_secs(2),
                )?,
                timeout: duration_field(
                    "health.timeout",
                    &h.timeout,
                    std::time::Duration::from_secs(1),
                )?,
                grace: duration_field(
                    "health.grace",
                    &h.grace,
                    std::time::Duration::from_secs(30),
                )?,
            });
        }
        t.require_pin = self.require_pin;
        t.watch = self.watch;
        t.update_policy = match self.update_policy {
            None | Some(UpdatePolicyDoc::Notify) => UpdatePolicy::Notify,
            Some(UpdatePolicyDoc::Track) => UpdatePolicy::Track,
        };
        if let Some(r) = &self.rollout {
            t.rollout = RolloutPolicy {
                batch_size: r.batch_size,
                max_failures: r.max_failures,
                max_unavailable: r.max_unavailable,
            };
        }
        t.restart = match self.restart {
            None | Some(RestartDoc::Never) => RestartPolicy::Never,
            Some(RestartDoc::OnFailure) => RestartPolicy::OnFailure,
            Some(RestartDoc::Always) => RestartPolicy::Always,
        };
        t.on_disappear = match self.on_disappear {
            None | Some(DisappearDoc::Dispose) => DisappearPolicy::Dispose,
            Some(DisappearDoc::Recreate) => DisappearPolicy::Recreate,
        };
        t.stop_grace = duration_field("stop_grace", &self.stop_grace, t.stop_grace)?;
        t.stores = self
            .stores
            .iter()
            .map(|s| StoreDescriptor {
                name: s.name.clone(),
                path: s.path.clone(),
                schema_version: s.schema_version,
                readiness: match s.readiness {
                    StoreReadinessDoc::Blocking => StoreReadiness::Blocking,
                    StoreReadinessDoc::Degrading => StoreReadiness::Degrading,
                },
                recovery: match s.recovery {
                    StoreRecoveryDoc::Quarantine => StoreRecovery::Quarantine,
                    StoreRecoveryDoc::Rebuild => StoreRecovery::Rebuild,
                },
            })
            .collect();
        let validator_timeout = duration_field(
            "store_validator_timeout",
            &self.store_validator_timeout,
            DEFAULT_VALIDATOR_TIMEOUT,
        )?;
        t.store_validator = self.store_validator.as_ref().map(|command| StoreValidator {
            command: command.clone(),
            timeout: validator_timeout,
        });
        t.validate()?;
        Ok(t)
    }

    /// The seed pin of a `berth.toml` template, validated.
    pub fn seed_pin(&self) -> Result<Option<Digest>, ValidationError> {
        self.pin.as_deref().map(Digest::parse).transpose()
    }

    /// The full document of a template, every default written out.
    pub fn from_template(t: &Template) -> Self {
        TemplateDoc {
            name: Some(t.name.clone()),
            image: t.image.to_string(),
            tag: Some(t.tag.clone()),
            port: t.port,
            env: t.env.clone(),
            state_path: Some(t.state_path.clone()),
            health: t.health.as_ref().map(|h| HealthDoc {
                path: h.path.clone(),
                interval: Some(format_duration(h.interval)),
                timeout: Some(format_duration(h.timeout)),
                grace: Some(format_duration(h.grace)),
            }),
            require_pin: t.require_pin,
            watch: t.watch,
            update_policy: Some(match t.update_policy {
                UpdatePolicy::Notify => UpdatePolicyDoc::Notify,
                UpdatePolicy::Track => UpdatePolicyDoc::Track,
            }),
            rollout: Some(RolloutDoc {
                batch_size: t.rollout.batch_size,
                max_failures: t.rollout.max_failures,
                max_unavailable: t.rollout.max_unavailable,
            }),
            restart: Some(match t.restart {
                RestartPolicy::Never => RestartDoc::Never,
                RestartPolicy::OnFailure => RestartDoc::OnFailure,
                RestartPolicy::Always => RestartDoc::Always,
            }),
            on_disappear: Some(match t.on_disappear {
                DisappearPolicy::Dispose => DisappearDoc::Dispose,
                DisappearPolicy::Recreate => DisappearDoc::Recreate,
            }),
            stop_grace: Some(format_duration(t.stop_grace)),
            stores: t
                .stores
                .iter()
                .map(|s| StoreDoc {
                    name: s.name.clone(),
                    path: s.path.clone(),
                    schema_version: s.schema_version,
                    readiness: match s.readiness {
                        StoreReadiness::Blocking => StoreReadinessDoc::Blocking,
                        StoreReadiness::Degrading => StoreReadinessDoc::Degrading,
                    },
                    recovery: match s.recovery {
                        StoreRecovery::Quarantine => StoreRecoveryDoc::Quarantine,
                        StoreRecovery::Rebuild => StoreRecoveryDoc::Rebuild,
                    },
                })
                .collect(),
            store_validator: t.store_validator.as_ref().map(|v| v.command.clone()),
            store_validator_timeout: t
                .store_validator
                .as_ref()
                .map(|v| format_duration(v.timeout)),
            pin: None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_through_json() {
        let doc: TemplateDoc = serde_json::from_str(
            r#"{"image":"r.example/acme/engine","tag":"v1","port":8080,"env":{"K":"v"},
                "health":{"path":"/healthz","interval":"500ms"},"update_policy":"track",
                "restart":"on-failure","on_disappear":"recreate","rollout":{"batch_size":2}}"#,
        )
        .unwrap();
        let t = doc.to_template("engine").unwrap();
        assert_eq!(t.health.as_ref().unwrap().interval.as_millis(), 500);
        assert_eq!(t.rollout.batch_size, 2);
        assert_eq!(t.rollout.max_failures, 1);
        let again = TemplateDoc::from_template(&t)
            .to_template("engine")
            .unwrap();
        assert_eq!(again, t);
    }

    #[test]
    fn rejects_unknown_fields_and_bad_values() {
        assert!(serde_json::from_str::<TemplateDoc>(r#"{"image":"x","watcch":true}"#).is_err());
        assert!(
            serde_json::from_str::<TemplateDoc>(r#"{"image":"x","restart":"sometimes"}"#).is_err()
        );
        let doc: TemplateDoc =
            serde_json::from_str(r#"{"image":"x","stop_grace":"soon"}"#).unwrap();
        let err = doc.to_template("t").unwrap_err();
        assert!(err.message.starts_with("stop_grace:"), "{}", err.message);
    }
}
