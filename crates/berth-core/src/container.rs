//! How a runtime becomes a container: name, labels, alias, env and mounts,
//! all derived from berth's own record and template (never copied from an
//! old container's inspected config).

use std::collections::BTreeMap;

use crate::runtime::RuntimeRecord;
use crate::template::Template;

pub const LABEL_OWNER: &str = "io.berth.owner";
pub const LABEL_RUNTIME_ID: &str = "io.berth.runtime_id";
pub const LABEL_TEMPLATE: &str = "io.berth.template";
pub const LABEL_IMAGE_REF: &str = "io.berth.image_ref";
pub const LABEL_GENERATION: &str = "io.berth.generation";
pub const LABEL_STARTED_AT_MS: &str = "io.berth.started_at_ms";

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Bind {
    pub host_path: String,
    pub container_path: String,
    pub read_only: bool,
}

/// Everything needed to create one runtime container.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContainerSpec {
    pub name: String,
    pub image: String,
    /// `KEY=value`, sorted by key.
    pub env: Vec<String>,
    pub labels: BTreeMap<String, String>,
    pub network: String,
    pub alias: String,
    pub binds: Vec<Bind>,
}

/// Where berth runs and what it calls itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Placement<'a> {
    pub owner: &'a str,
    pub network: &'a str,
    /// Host directory for this runtime's state (`<data_dir>/runtimes/<id>/state`).
    pub state_dir: &'a str,
    /// Host directory of this runtime's plugins
    /// (`<data_dir>/runtimes/<id>/plugins`, one subdirectory per plugin).
    pub plugins_dir: &'a str,
}

/// Where every plugin of a runtime appears in its containers, read-only:
/// `/plugins/<name>`.
pub const PLUGINS_PATH: &str = "/plugins";

pub fn container_name(owner: &str, runtime_id: &str) -> String {
    format!("{owner}-{runtime_id}")
}

pub fn network_alias(template: &str, runtime_id: &str) -> String {
    format!("{template}-{runtime_id}")
}

/// `http://<alias>:<port>`, when the template has a port.
pub fn engine_endpoint(template: &Template, runtime_id: &str) -> Option<String> {
    template.port.map(|port| {
        format!(
            "http://{}:{port}",
            network_alias(&template.name, runtime_id)
        )
    })
}

/// Builds the container for `record` at `generation`, running `image_ref`.
/// Request env wins over template env; berth's own variables always win.
pub fn plan_container(
    place: &Placement<'_>,
    template: &Template,
    record: &RuntimeRecord,
    image_ref: &str,
    generation: i64,
    now_ms: i64,
) -> ContainerSpec {
    let mut env: BTreeMap<&str, String> = BTreeMap::new();
    for (k, v) in template.env.iter().chain(record.env.iter()) {
        env.insert(k, v.clone());
    }
    let generation_text = generation.to_string();
    env.insert("BERTH_RUNTIME_ID", record.id.clone());
    env.insert("BERTH_TEMPLATE", template.name.clone());
    env.insert("BERTH_STATE_PATH", template.state_path.clone());
    env.insert("BERTH_GENERATION", generation_text.clone());

    let labels = BTreeMap::from([
        (LABEL_OWNER.to_string(), place.owner.to_string()),
        (LABEL_RUNTIME_ID.to_string(), record.id.clone()),
        (LABEL_TEMPLATE.to_string(), template.name.clone()),
        (LABEL_IMAGE_REF.to_string(), image_ref.to_string()),
        (LABEL_GENERATION.to_string(), generation_text),
        (LABEL_STARTED_AT_MS.to_string(), now_ms.to_string()),
    ]);

    ContainerSpec {
        name: container_name(place.owner, &record.id),
        image: image_ref.to_string(),
        env: env.into_iter().map(|(k, v)| format!("{k}={v}")).collect(),
        labels,
        network: place.network.to_string(),
        alias: network_alias(&template.name, &record.id),
        // The plugins directory is mounted whole: a plugin installed,
        // updated or removed (a rename inside it) shows at
        // `/plugins/<name>` without changing the container's mounts, so a
        // restart, recreate or rollout keeps every plugin.
        binds: vec![
            Bind {
                host_path: place.state_dir.to_string(),
                container_path: template.state_path.clone(),
                read_only: false,
            },
            Bind {
                host_path: place.plugins_dir.to_string(),
                container_path: PLUGINS_PATH.to_string(),
                read_only: true,
            },
        ],
    }
}

/// What berth's labels say about a container it finds on the host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RuntimeLabels {
    pub owner: String,
    pub runtime_id: String,
    pub template: String,
    pub image_ref: Option<String>,
    pub generation: Option<i64>,
}

impl RuntimeLabels {
    /// `None` unless the owner, runtime id and template labels are all present.
    pub fn from_labels(labels: &BTreeMap<String, String>) -> Option<Self> {
        Some(RuntimeLabels {
            owner: labels.get(LABEL_OWNER)?.clone(),
            runtime_id: labels.get(LABEL_RUNTIME_ID)?.clone(),
            template: labels.get(LABEL_TEMPLATE)?.clone(),
            image_ref: labels.get(LABEL_IMAGE_REF).cloned(),
            generation: labels.get(LABEL_GENERATION).and_then(|g| g.parse().ok()),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::image::Repository;

    #[test]
    fn plan_sets_name_labels_alias_env_and_mount() {
        let mut template = Template::new("engine", Repository::parse("r.example/e").unwrap());
        template.port = Some(8080);
        template.env.insert("A".into(), "template".into());
        template.env.insert("B".into(), "template".into());
        let record = RuntimeRecord::new(
            "ws-1",
            "engine",
            BTreeMap::from([("B".into(), "request".into())]),
            0,
        );
        let place = Placement {
            owner: "berth",
            network: "berth",
            state_dir: "/data/runtimes/ws-1/state",
            plugins_dir: "/data/runtimes/ws-1/plugins",
        };
        let spec = plan_container(&place, &template, &record, "r.example/e:latest", 3, 42);
        assert_eq!(spec.name, "berth-ws-1");
        assert_eq!(spec.alias, "engine-ws-1");
        assert_eq!(spec.labels[LABEL_OWNER], "berth");
        assert_eq!(spec.labels[LABEL_GENERATION], "3");
        assert_eq!(spec.labels[LABEL_STARTED_AT_MS], "42");
        assert!(spec.env.contains(&"A=template".to_string()));
        assert!(spec.env.contains(&"B=request".to_string()));
        assert!(spec.env.contains(&"BERTH_RUNTIME_ID=ws-1".to_string()));
        assert!(spec.env.contains(&"BERTH_GENERATION=3".to_string()));
        assert_eq!(spec.binds[0].container_path, "/var/lib/runtime");
        assert!(!spec.binds[0].read_only);
        assert_eq!(
            spec.binds[1],
            Bind {
                host_path: "/data/runtimes/ws-1/plugins".into(),
                container_path: "/plugins".into(),
                read_only: true,
            }
        );
        assert_eq!(
            engine_endpoint(&template, "ws-1").as_deref(),
            Some("http://engine-ws-1:8080")
        );
        let parsed = RuntimeLabels::from_labels(&spec.labels).unwrap();
        assert_eq!(parsed.runtime_id, "ws-1");
        assert_eq!(parsed.generation, Some(3));
    }
}
