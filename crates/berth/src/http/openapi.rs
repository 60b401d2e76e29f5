//! The OpenAPI 3 document, generated from the handlers' own types.

use axum::Json;
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::openapi::{ContentBuilder, Ref, RefOr, Response, ResponseBuilder};
use utoipa::{Modify, OpenApi};

use super::dto::*;
use super::handlers;
use crate::ports::store::ChangeKind;
use crate::template_doc::{
    DisappearDoc, HealthDoc, RestartDoc, RolloutDoc, StoreDoc, StoreReadinessDoc, StoreRecoveryDoc,
    TemplateDoc, UpdatePolicyDoc,
};

#[derive(OpenApi)]
#[openapi(
    info(title = "berth", description = "Runtime manager for long-lived, stateful containers on Docker"),
    paths(
        handlers::healthz, handlers::metrics, serve,
        handlers::list_templates, handlers::get_template, handlers::put_template, handlers::delete_template,
        handlers::get_pin, handlers::promote_pin, handlers::unpin, handlers::pin_history,
        handlers::list_runtimes, handlers::start_runtime, handlers::get_runtime,
        handlers::start_existing_runtime, handlers::stop_runtime, handlers::restart_runtime, handlers::remove_runtime,
        handlers::list_operations, handlers::status, handlers::list_events, handlers::list_notifications, handlers::list_webhook_deliveries, handlers::reconcile_now,
        handlers::refresh_images, handlers::watch_images, handlers::list_rollouts, handlers::get_rollout,
        handlers::pause_rollout, handlers::resume_rollout, handlers::abort_rollout,
        handlers::install_plugin, handlers::list_plugins, handlers::uninstall_plugin,
        handlers::list_plugin_updates, handlers::apply_plugin_update, handlers::dismiss_plugin_update,
        handlers::sweep_plugins, handlers::bulk_apply_plugin,
        handlers::write_store_batch, handlers::get_store_manifest, handlers::get_store_data, handlers::get_readiness,
        super::stream::stream,
    ),
    components(schemas(
        ErrorBody, ErrorDetail, Health, TemplateDoc, HealthDoc, RolloutDoc, UpdatePolicyDoc, RestartDoc,
        DisappearDoc, TemplateList, PinView, PromoteRequest, PinHistoryView, PinHistoryList,
        StartRuntimeRequest, RuntimeView, RuntimeList, OperationView, OperationList,
        HealthEventView, HealthEventList, NotificationView, NotificationList, FailedAction, ReconcileReportView,
        RefreshRequest, RefreshResponse, TemplateFailure, WatchReportView, RolloutTargetView, RolloutProgress,
        RolloutView, RolloutList, StatusView, InstallPluginRequest, PluginView, PluginList,
        PluginUpdateView, PluginUpdateList, SweepFailure, SweepReportView, BulkApplyRequest,
        StoreDoc, StoreReadinessDoc, StoreRecoveryDoc, StoreWriteRequest, StoreBatchRequest, ReceiptView,
        CommittedBatchView, ManifestEntryView, ManifestView, EnvelopeView, StoreActionView, ReadinessView,
        WebhookStatusView, WebhookDeliveryView, WebhookDeliveryList,
        ChangeEventData, ResetEventData, ProgressEventData,
    )),
    modifiers(&BearerAuth, &CommonResponses),
    security(("bearer" = [])),
)]
pub struct ApiDoc;

struct BearerAuth;

impl Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        if let Some(components) = openapi.components.as_mut() {
            components.add_security_scheme(
                "bearer",
                SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
            );
        }
    }
}

/// This document.
#[utoipa::path(get, path = "/openapi.json", tag = "meta",
    responses((status = 200, description = "the OpenAPI 3.1 document of this API", body = Object, content_type = "application/json")))]
pub async fn serve() -> Json<serde_json::Value> {
    Json(document())
}

/// The document as served: [`ApiDoc`] plus what utoipa has no builder for.
pub fn document() -> serde_json::Value {
    let mut doc = serde_json::to_value(ApiDoc::openapi()).expect("the document serialises");
    describe_stream_events(&mut doc);
    describe_env_names(&mut doc);
    doc
}

/// An environment variable's name and value as `validate_env` takes them
/// (letters, digits and `_`, not starting with a digit; no NUL in the
/// value): JSON Schema's `propertyNames`, which utoipa has no builder for.
fn describe_env_names(doc: &mut serde_json::Value) {
    for schema in ["TemplateDoc", "StartRuntimeRequest"] {
        let env = &mut doc["components"]["schemas"][schema]["properties"]["env"];
        assert!(env.is_object(), "{schema} has env");
        env["propertyNames"] =
            serde_json::json!({"pattern": "^[A-Za-z_][A-Za-z0-9_]*$", "maxLength": 256});
        env["additionalProperties"] =
            serde_json::json!({"type": "string", "pattern": "^[^\\u0000]*$"});
    }
}

/// The stream's 200 the way OpenAPI 3.1 describes server-sent events
/// (there is no `itemSchema` before 3.2): `schema` is one event as an SSE
/// reader parses it, `{event, data, id?, retry?}`, and the JSON inside
/// `data` is given by `contentSchema` (JSON Schema 2020-12). An `id` is a
/// change's seq; a reader carries the last one over to later events
/// without their own, so only a change requires it. The data schemas are
/// inlined: a reader need not resolve references inside a string.
fn describe_stream_events(doc: &mut serde_json::Value) {
    use serde_json::json;
    let data = |doc: &serde_json::Value, name: &str| {
        let schema = doc["components"]["schemas"][name].clone();
        assert!(schema.is_object(), "{name} is a component");
        schema
    };
    let event = |name: &str, data: serde_json::Value, with_id: bool| {
        let mut required = vec!["event", "data"];
        if with_id {
            required.push("id");
        }
        json!({
            "type": "object",
            "required": required,
            "properties": {
                "event": {"type": "string", "const": name},
                "id": {"type": "string", "pattern": "^[0-9]+$",
                    "description": "the seq of the change (of the last change, on other events)"},
                "retry": {"type": "integer"},
                "data": {"type": "string", "contentMediaType": "application/json",
                    "contentSchema": data},
            },
        })
    };
    let mut change = data(doc, "ChangeEventData");
    let kinds: Vec<&str> = ChangeKind::ALL.iter().map(|k| k.as_str()).collect();
    change["properties"]["kind"]["enum"] = json!(kinds);
    let schema = json!({"oneOf": [
        event("change", change, true),
        event("reset", data(doc, "ResetEventData"), false),
        event("progress", data(doc, "ProgressEventData"), false),
    ]});
    let content = &mut doc["paths"]["/v1/stream"]["get"]["responses"]["200"]["content"];
    assert!(content["text/event-stream"].is_object(), "the stream's 200");
    content["text/event-stream"]["schema"] = schema;
}

/// The paths that need no token: `security: []` on them.
const OPEN_PATHS: &[&str] = &["/healthz", "/metrics", "/openapi.json"];

/// A runtime id or template name (`berth_core::id`): 1 to 63 of
/// `[a-z0-9_-]`, starting and ending with a letter or a digit.
const NAME_PATTERN: &str = "^[a-z0-9]([a-z0-9_-]{0,61}[a-z0-9])?$";

/// Operations that reach Docker, a registry or a git remote, with what 502
/// (the upstream failed) means there, if they can answer it. They all can
/// answer 503 `docker_unavailable` and 504 `timeout`.
const UPSTREAM: &[(&str, Option<&str>)] = &[
    (
        "start_runtime",
        Some("image_pull_failed, start_failed or health_check_failed"),
    ),
    (
        "start_existing_runtime",
        Some("image_pull_failed, start_failed or health_check_failed"),
    ),
    (
        "restart_runtime",
        Some("image_pull_failed, start_failed, stop_failed or health_check_failed"),
    ),
    ("stop_runtime", Some("stop_failed")),
    ("remove_runtime", Some("stop_failed or remove_failed")),
    (
        "promote_pin",
        Some("image_pull_failed: the registry could not be asked about the digest (with verify)"),
    ),
    ("reconcile_now", Some("Docker refused a reconcile step")),
    ("refresh_images", Some("image_pull_failed")),
    ("watch_images", Some("a registry lookup failed")),
    ("install_plugin", Some("git_failed, or the restart failed")),
    ("uninstall_plugin", Some("the restart failed")),
    (
        "apply_plugin_update",
        Some("git_failed, or the restart failed"),
    ),
    ("bulk_apply_plugin", Some("git_failed")),
    ("sweep_plugins", Some("git_failed")),
    // These only inspect: Docker failing is 503, not 502.
    ("get_readiness", None),
    ("write_store_batch", None),
];

/// Statuses every `/v1` operation can answer, added where a handler does
/// not document them itself (and their description filled in where it
/// left it empty), so the document lists every answer without each
/// handler repeating them:
///
/// - 400 `invalid_request`/`invalid_id` on operations with a parameter or
///   a body (a bad path or query parameter, an unknown query parameter, a
///   body that is not JSON or lacks `Content-Type: application/json`);
/// - 401 `unauthorized` and 403 `forbidden` (tokens, see `roles`);
/// - 404 on operations with a path parameter; 409 on changes;
/// - 413 `payload_too_large` on operations with a body;
/// - 500 `internal`; 503 `storage_unavailable` (every operation reads the
///   database) and `docker_unavailable`; 502 and 504 where [`UPSTREAM`]
///   says the operation reaches Docker, a registry or git.
///
/// `/healthz`, `/metrics` and `/openapi.json` need no token.
struct CommonResponses;

impl Modify for CommonResponses {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        for (path, item) in openapi.paths.paths.iter_mut() {
            let ops = [
                (false, item.get.as_mut()),
                (true, item.put.as_mut()),
                (true, item.post.as_mut()),
                (true, item.delete.as_mut()),
                (true, item.patch.as_mut()),
            ];
            for (changes, op) in ops {
                let Some(op) = op else { continue };
                if OPEN_PATHS.contains(&path.as_str()) {
                    op.security = Some(Vec::new());
                    continue;
                }
                constrain_names(path, op);
                add_common_responses(op, changes);
            }
        }
    }
}

/// Patterns on path parameters whose rules are cheap to state.
fn constrain_names(path: &str, op: &mut utoipa::openapi::path::Operation) {
    use utoipa::openapi::path::ParameterIn;
    use utoipa::openapi::schema::{ObjectBuilder, Type};
    for param in op.parameters.iter_mut().flatten() {
        if param.parameter_in != ParameterIn::Path {
            continue;
        }
        let named = match param.name.as_str() {
            "id" => path.starts_with("/v1/runtimes/"),
            "name" => path.starts_with("/v1/templates/"),
            _ => false,
        };
        let schema = ObjectBuilder::new()
            .schema_type(Type::String)
            .min_length(Some(1));
        let schema = if named {
            schema
                .max_length(Some(berth_core::id::MAX_ID_LEN))
                .pattern(Some(NAME_PATTERN))
        } else {
            schema
        };
        param.schema = Some(schema.build().into());
    }
}

fn add_common_responses(op: &mut utoipa::openapi::path::Operation, changes: bool) {
    let id = op.operation_id.clone().unwrap_or_default();
    let has_body = op.request_body.is_some();
    let has_params = op.parameters.as_ref().is_some_and(|p| !p.is_empty());
    let has_path_params = op
        .parameters
        .iter()
        .flatten()
        .any(|p| p.parameter_in == utoipa::openapi::path::ParameterIn::Path);
    let upstream = UPSTREAM.iter().find(|(o, _)| *o == id).map(|(_, d)| *d);
    let bad_gateway = upstream.flatten();

    let mut common: Vec<(&str, String)> = Vec::new();
    if has_params || has_body {
        let mut d = "invalid_request or invalid_id: a path or query parameter is not valid \
                     (an unknown query parameter included)"
            .to_string();
        if has_body {
            d.push_str(
                "; or the body is not valid JSON for this operation, or is sent without \
                 \"Content-Type: application/json\"",
            );
        }
        common.push(("400", d));
    }
    common.push((
        "401",
        "unauthorized: a token is configured and the request has none, or not a valid one".into(),
    ));
    common.push((
        "403",
        "forbidden: the token's role does not allow this operation".into(),
    ));
    if has_path_params {
        common.push(("404", "not found: nothing has this id or name".into()));
    }
    if changes {
        common.push((
            "409",
            "conflict: the change collides with the current state or a concurrent change".into(),
        ));
    }
    if has_body {
        common.push((
            "413",
            "payload_too_large: the body is larger than this operation takes".into(),
        ));
    }
    // The caller named an image, tag, manifest or git ref that does not
    // exist upstream (the registry or git answered so): not a 5xx.
    let absent = match id.as_str() {
        "start_runtime" | "start_existing_runtime" | "restart_runtime" => {
            Some("image_pull_failed: the registry has no such image, tag or manifest")
        }
        "promote_pin" => Some("invalid_digest: with verify, the registry has no such manifest"),
        "install_plugin" | "apply_plugin_update" | "bulk_apply_plugin" => {
            Some("ref_not_found: the git remote has no such repository, ref or commit")
        }
        _ => None,
    };
    if let Some(d) = absent {
        common.push(("422", d.to_string()));
    }
    common.push(("500", "internal: an unexpected failure".into()));
    if let Some(d) = bad_gateway {
        common.push((
            "502",
            format!("the upstream (Docker, a registry or git) failed: {d}"),
        ));
    }
    common.push((
        "503",
        if upstream.is_some() {
            "storage_unavailable: the database or the state directory failed; \
             docker_unavailable: Docker does not answer"
                .into()
        } else {
            "storage_unavailable: the database or the state directory failed".into()
        },
    ));
    if upstream.is_some() {
        common.push((
            "504",
            "timeout: the operation or Docker did not finish in time".into(),
        ));
    }

    for (status, description) in common {
        match op.responses.responses.get_mut(status) {
            Some(RefOr::T(existing)) => {
                if existing.description.is_empty() {
                    existing.description = description;
                }
            }
            Some(RefOr::Ref(_)) => {}
            None => {
                op.responses
                    .responses
                    .insert(status.to_string(), RefOr::T(error_response(description)));
            }
        }
    }
}

fn error_response(description: String) -> Response {
    ResponseBuilder::new()
        .description(description)
        .content(
            "application/json",
            ContentBuilder::new()
                .schema(Some(Ref::from_schema_name("ErrorBody")))
                .build(),
        )
        .build()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::Value;

    fn doc() -> Value {
        document()
    }

    fn operations(doc: &Value) -> Vec<(String, String, Value)> {
        let mut ops = Vec::new();
        for (path, item) in doc["paths"].as_object().unwrap() {
            for (method, op) in item.as_object().unwrap() {
                ops.push((method.clone(), path.clone(), op.clone()));
            }
        }
        ops
    }

    #[test]
    fn every_v1_operation_documents_the_common_answers() {
        let doc = doc();
        for (method, path, op) in operations(&doc) {
            let responses = op["responses"].as_object().unwrap();
            if !path.starts_with("/v1/") {
                assert_eq!(
                    op["security"],
                    serde_json::json!([]),
                    "{method} {path} is open"
                );
                continue;
            }
            assert!(
                op.get("security").is_none(),
                "{method} {path} needs the bearer token"
            );
            let mut needed = vec!["401", "403", "500", "503"];
            let params = op["parameters"].as_array().map(Vec::len).unwrap_or(0);
            let body = op.get("requestBody").is_some();
            if params > 0 || body {
                needed.push("400");
            }
            if body {
                needed.push("413");
            }
            if path.contains('{') {
                needed.push("404");
            }
            for status in needed {
                let r = &responses
                    .get(status)
                    .unwrap_or_else(|| panic!("{method} {path} documents {status}"));
                assert!(
                    !r["description"].as_str().unwrap().is_empty(),
                    "{method} {path} {status} says which codes"
                );
                assert_eq!(
                    r["content"]["application/json"]["schema"]["$ref"],
                    "#/components/schemas/ErrorBody",
                    "{method} {path} {status}"
                );
            }
            for (status, r) in responses {
                if status == "204" {
                    assert!(
                        r.get("content").is_none(),
                        "{method} {path}: 204 has no body"
                    );
                }
            }
        }
        assert_eq!(
            doc["components"]["securitySchemes"]["bearer"]["scheme"],
            "bearer"
        );
        assert_eq!(doc["security"], serde_json::json!([{"bearer": []}]));
    }

    #[test]
    fn content_types_are_what_the_handlers_answer() {
        let doc = doc();
        let metrics = &doc["paths"]["/metrics"]["get"]["responses"]["200"]["content"];
        // Prometheus text by default, OpenMetrics when asked for.
        assert!(metrics["text/plain"].is_object(), "{metrics}");
        assert!(
            metrics["application/openmetrics-text"].is_object(),
            "{metrics}"
        );
        assert!(metrics.get("application/json").is_none());
        let openapi = &doc["paths"]["/openapi.json"]["get"]["responses"]["200"]["content"];
        assert!(openapi["application/json"].is_object(), "{openapi}");
    }

    #[test]
    fn the_change_stream_is_documented_as_server_sent_events() {
        let doc = doc();
        let op = &doc["paths"]["/v1/stream"]["get"];
        assert_eq!(op["operationId"], "stream");
        let ok = &op["responses"]["200"]["content"];
        assert!(ok["text/event-stream"].is_object(), "{ok}");
        for code in ["400", "401", "403", "500", "503"] {
            assert!(op["responses"][code].is_object(), "{code}: {op}");
        }
        let params: Vec<(String, String)> = op["parameters"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| {
                (
                    p["name"].as_str().unwrap().to_string(),
                    p["in"].as_str().unwrap().to_string(),
                )
            })
            .collect();
        for (name, place) in [
            ("after", "query"),
            ("kinds", "query"),
            ("runtime", "query"),
            ("Last-Event-ID", "header"),
        ] {
            assert!(
                params.contains(&(name.to_string(), place.to_string())),
                "{name} in {place}: {params:?}"
            );
        }
    }

    #[test]
    fn each_stream_event_is_described_with_its_data() {
        let doc = doc();
        let schema = &doc["paths"]["/v1/stream"]["get"]["responses"]["200"]["content"]
            ["text/event-stream"]["schema"];
        let events: Vec<&Value> = schema["oneOf"].as_array().unwrap().iter().collect();
        let names: Vec<&str> = events
            .iter()
            .map(|e| e["properties"]["event"]["const"].as_str().unwrap())
            .collect();
        assert_eq!(names, ["change", "reset", "progress"]);
        assert_eq!(
            events[0]["required"],
            serde_json::json!(["event", "data", "id"])
        );
        for e in &events {
            let data = &e["properties"]["data"];
            assert_eq!(data["contentMediaType"], "application/json", "{e}");
            let content = &data["contentSchema"];
            assert_eq!(content["type"], "object", "{e}");
            assert!(
                !content.to_string().contains("$ref"),
                "inlined, no reference to resolve: {content}"
            );
        }
        let kinds: Vec<&str> = events[0]["properties"]["data"]["contentSchema"]["properties"]
            ["kind"]["enum"]
            .as_array()
            .unwrap()
            .iter()
            .map(|k| k.as_str().unwrap())
            .collect();
        let known: Vec<&str> = ChangeKind::ALL.iter().map(|k| k.as_str()).collect();
        assert_eq!(kinds, known, "the documented kinds are the kinds");
        let pattern = doc["paths"]["/v1/stream"]["get"]["parameters"]
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["name"] == "kinds")
            .unwrap()["schema"]["pattern"]
            .as_str()
            .unwrap()
            .to_string();
        for kind in known {
            assert!(
                pattern.contains(&format!("|{kind}|"))
                    || pattern.contains(&format!("({kind}|"))
                    || pattern.contains(&format!("|{kind})")),
                "{kind} in {pattern}"
            );
        }
    }

    #[test]
    fn env_names_follow_the_rule_the_api_checks() {
        let doc = doc();
        for schema in ["TemplateDoc", "StartRuntimeRequest"] {
            let env = &doc["components"]["schemas"][schema]["properties"]["env"];
            let pattern = env["propertyNames"]["pattern"].as_str().unwrap();
            assert_eq!(pattern, "^[A-Za-z_][A-Za-z0-9_]*$", "{schema}");
            // The same names pass and fail in core.
            for (name, ok) in [("A_1", true), ("_x", true), ("1A", false), ("A-B", false)] {
                assert_eq!(
                    berth_core::id::validate_env_name(name).is_ok(),
                    ok,
                    "{name}"
                );
            }
        }
    }

    /// What the feed writes reads back into the documented shapes, which
    /// refuse unknown fields.
    #[test]
    fn the_feed_writes_the_documented_event_data() {
        use crate::ports::store::ChangeRow;
        use crate::services::changes::{pull_data, FeedItem};
        for kind in ChangeKind::ALL {
            for runtime in [None, Some("r1".to_string())] {
                let row = ChangeRow {
                    seq: 7,
                    at_ms: 1_700_000_000_000,
                    kind,
                    key: "k".into(),
                    runtime_id: runtime,
                };
                let data = FeedItem::new(&row).data;
                let back: ChangeEventData = serde_json::from_str(&data).unwrap();
                assert_eq!(back.kind, kind.as_str(), "{data}");
            }
        }
        let progress = crate::ports::PullProgress {
            status: "Downloading".into(),
            layer: Some("abc".into()),
            current: Some(1),
            total: None,
        };
        let _: ProgressEventData = serde_json::from_str(&pull_data("r1", &progress)).unwrap();
        let _: ResetEventData = serde_json::from_str(&super::super::stream::reset_data(3)).unwrap();
    }

    #[test]
    fn parameters_carry_the_rules_the_api_checks() {
        let doc = doc();
        let id = &doc["paths"]["/v1/runtimes/{id}"]["get"]["parameters"][0];
        assert_eq!(id["in"], "path");
        assert_eq!(id["schema"]["pattern"], NAME_PATTERN);
        assert_eq!(id["schema"]["maxLength"], 63);
        let name = &doc["paths"]["/v1/templates/{name}"]["put"]["parameters"][0];
        assert_eq!(name["schema"]["pattern"], NAME_PATTERN);
        // Query parameters are in the query, optional, with their ranges.
        for (method, path, op) in operations(&doc) {
            for p in op["parameters"].as_array().into_iter().flatten() {
                if p["in"] == "query" {
                    assert_eq!(p["required"], false, "{method} {path} {}", p["name"]);
                }
                if p["name"] == "limit" {
                    assert_eq!(p["in"], "query", "{method} {path}");
                    assert_eq!(p["schema"]["minimum"], 1, "{method} {path}");
                }
            }
        }
        let start = &doc["components"]["schemas"]["StartRuntimeRequest"];
        assert_eq!(start["additionalProperties"], false);
        assert_eq!(start["properties"]["id"]["pattern"], NAME_PATTERN);
    }
}
