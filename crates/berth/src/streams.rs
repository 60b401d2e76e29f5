//! The Redis stream contract (DESIGN.md, "Streams"): stream names, the
//! fields of what berth publishes, and the parsing of the jobs it takes in.
//! These are wire types; the domain types stay in `berth_core`.

use std::collections::BTreeMap;

use berth_core::event::{HealthEvent, JobResult, Notification};
use berth_core::id::{validate_runtime_id, validate_template_name};
use berth_core::template::validate_env;
use berth_core::ValidationError;

use crate::ports::store::OutboxMessage;

pub const START_JOBS: &str = "runtime:start_jobs";
pub const STOP_JOBS: &str = "runtime:stop_jobs";
pub const JOB_RESULTS: &str = "runtime:job_results";
pub const HEALTH_EVENTS: &str = "runtime:health_events";
pub const NOTIFICATION_INTENTS: &str = "notification:intents";

fn json_object(map: &BTreeMap<String, String>) -> String {
    // A map of strings always serialises.
    serde_json::to_string(map).unwrap_or_else(|_| "{}".to_string())
}

fn pairs(fields: &[(&str, String)]) -> Vec<(String, String)> {
    fields
        .iter()
        .map(|(k, v)| (k.to_string(), v.clone()))
        .collect()
}

pub fn health_event_message(e: &HealthEvent) -> OutboxMessage {
    OutboxMessage {
        stream: HEALTH_EVENTS.to_string(),
        partition_key: e.runtime_id.clone(),
        fields: pairs(&[
            ("runtime_id", e.runtime_id.clone()),
            ("type", e.event_type.as_str().to_string()),
            ("container_id", e.container_id.clone().unwrap_or_default()),
            ("at_ms", e.at_ms.to_string()),
            ("details", json_object(&e.details)),
        ]),
        created_at_ms: e.at_ms,
    }
}

pub fn notification_message(n: &Notification) -> OutboxMessage {
    OutboxMessage {
        stream: NOTIFICATION_INTENTS.to_string(),
        partition_key: n.payload.get("runtime_id").cloned().unwrap_or_default(),
        fields: pairs(&[
            ("notification_type", n.notification_type.clone()),
            ("audience", n.audience.clone()),
            ("payload", json_object(&n.payload)),
        ]),
        created_at_ms: n.created_at_ms,
    }
}

pub fn job_result_message(r: &JobResult) -> OutboxMessage {
    OutboxMessage {
        stream: JOB_RESULTS.to_string(),
        partition_key: r.runtime_id.clone(),
        fields: pairs(&[
            ("job_id", r.job_id.clone()),
            ("runtime_id", r.runtime_id.clone()),
            ("kind", r.kind.clone()),
            (
                "outcome",
                if r.success { "success" } else { "failure" }.to_string(),
            ),
            ("container_id", r.container_id.clone().unwrap_or_default()),
            (
                "engine_endpoint",
                r.engine_endpoint.clone().unwrap_or_default(),
            ),
            ("error_code", r.error_code.clone().unwrap_or_default()),
            ("error_message", r.error_message.clone().unwrap_or_default()),
            ("finished_at_ms", r.finished_at_ms.to_string()),
        ]),
        created_at_ms: r.finished_at_ms,
    }
}

/// A job taken from `runtime:start_jobs` or `runtime:stop_jobs`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Job {
    Start {
        job_id: String,
        runtime_id: String,
        template: String,
        env: BTreeMap<String, String>,
    },
    Stop {
        job_id: String,
        runtime_id: String,
        remove: bool,
    },
}

/// A job that cannot be run: what is known of it, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BadJob {
    /// The job id when there is a usable one; without it no result can be
    /// correlated, and the entry id stands in.
    pub job_id: String,
    pub runtime_id: String,
    pub kind: &'static str,
    pub error: ValidationError,
}

const MAX_JOB_ID: usize = 200;

/// Parses one stream entry into a job. `entry_id` stands in for a missing
/// job id so that even a malformed job gets a (failure) result.
pub fn parse_job(stream: &str, entry_id: &str, fields: &[(String, String)]) -> Result<Job, BadJob> {
    let get = |name: &str| {
        fields
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    };
    let kind = if stream == START_JOBS {
        "start"
    } else {
        "stop"
    };
    let job_id = get("job_id").map(str::trim).unwrap_or("");
    let runtime_id = get("runtime_id").unwrap_or("").to_string();
    let bad = |job_id: &str, message: String| BadJob {
        job_id: job_id.to_string(),
        runtime_id: runtime_id.clone(),
        kind,
        error: ValidationError::invalid_request(message),
    };
    if job_id.is_empty() || job_id.len() > MAX_JOB_ID || job_id.chars().any(char::is_control) {
        return Err(bad(
            &format!("entry:{entry_id}"),
            format!("job_id is missing or invalid (1 to {MAX_JOB_ID} printable characters)"),
        ));
    }
    if let Err(e) = validate_runtime_id(&runtime_id) {
        return Err(BadJob {
            error: e,
            ..bad(job_id, String::new())
        });
    }
    match kind {
        "start" => {
            let template = get("template").unwrap_or("");
            validate_template_name(template)
                .map_err(|e| bad(job_id, format!("template: {}", e.message)))?;
            let env = match get("env").map(str::trim).filter(|e| !e.is_empty()) {
                None => BTreeMap::new(),
                Some(text) => {
                    serde_json::from_str::<BTreeMap<String, String>>(text).map_err(|e| {
                        bad(job_id, format!("env must be a JSON object of strings: {e}"))
                    })?
                }
            };
            validate_env(&env, "job").map_err(|e| bad(job_id, e.message))?;
            Ok(Job::Start {
                job_id: job_id.to_string(),
                runtime_id,
                template: template.to_string(),
                env,
            })
        }
        _ => {
            let remove = match get("remove").map(str::trim) {
                None | Some("") | Some("false") => false,
                Some("true") => true,
                Some(other) => {
                    return Err(bad(
                        job_id,
                        format!("remove must be \"true\" or \"false\", not {other:?}"),
                    ))
                }
            };
            Ok(Job::Stop {
                job_id: job_id.to_string(),
                runtime_id,
                remove,
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn f(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn parses_start_and_stop_jobs() {
        let job = parse_job(
            START_JOBS,
            "1-0",
            &f(&[
                ("job_id", "j1"),
                ("runtime_id", "ws-1"),
                ("template", "engine"),
                ("env", "{\"A\":\"1\"}"),
            ]),
        )
        .unwrap();
        assert!(matches!(job, Job::Start { ref env, .. } if env["A"] == "1"));
        let job = parse_job(
            STOP_JOBS,
            "1-0",
            &f(&[("job_id", "j2"), ("runtime_id", "ws-1"), ("remove", "true")]),
        )
        .unwrap();
        assert_eq!(
            job,
            Job::Stop {
                job_id: "j2".into(),
                runtime_id: "ws-1".into(),
                remove: true
            }
        );
    }

    #[test]
    fn malformed_jobs_say_why_and_keep_what_is_known() {
        let e = parse_job(START_JOBS, "5-0", &f(&[("runtime_id", "ws-1")])).unwrap_err();
        assert_eq!(e.job_id, "entry:5-0");
        assert_eq!(e.error.code.as_str(), "invalid_request");
        let e = parse_job(
            START_JOBS,
            "5-0",
            &f(&[("job_id", "j"), ("runtime_id", "../x"), ("template", "t")]),
        )
        .unwrap_err();
        assert_eq!(e.job_id, "j");
        assert_eq!(e.error.code.as_str(), "invalid_id");
        let e = parse_job(
            START_JOBS,
            "5-0",
            &f(&[
                ("job_id", "j"),
                ("runtime_id", "ws"),
                ("template", "t"),
                ("env", "[1]"),
            ]),
        )
        .unwrap_err();
        assert!(e.error.message.contains("env"), "{}", e.error.message);
        let e = parse_job(
            STOP_JOBS,
            "5-0",
            &f(&[("job_id", "j"), ("runtime_id", "ws"), ("remove", "yes")]),
        )
        .unwrap_err();
        assert!(e.error.message.contains("remove"));
    }

    #[test]
    fn messages_carry_the_contract_fields() {
        let r = JobResult {
            job_id: "j".into(),
            runtime_id: "ws".into(),
            kind: "start".into(),
            success: false,
            container_id: None,
            engine_endpoint: None,
            error_code: Some("image_pull_failed".into()),
            error_message: Some("no".into()),
            finished_at_ms: 5,
        };
        let m = job_result_message(&r);
        assert_eq!(m.stream, JOB_RESULTS);
        let names: Vec<&str> = m.fields.iter().map(|(k, _)| k.as_str()).collect();
        assert_eq!(
            names,
            [
                "job_id",
                "runtime_id",
                "kind",
                "outcome",
                "container_id",
                "engine_endpoint",
                "error_code",
                "error_message",
                "finished_at_ms"
            ]
        );
        assert_eq!(m.fields[3].1, "failure");
    }
}
