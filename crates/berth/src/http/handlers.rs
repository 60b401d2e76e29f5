//! Route handlers: parse, call one service, shape the answer.

use axum::extract::{Path, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;

use super::dto::*;
use super::extract::{ApiJson, ApiQuery};
use super::{ApiCaller, ApiError, AppState};
use crate::services::lifecycle::{ListQuery, RuntimeAction, StartOutcome, StartRequest};
use crate::template_doc::TemplateDoc;

type ApiResult<T> = Result<T, ApiError>;

#[utoipa::path(get, path = "/healthz", tag = "meta", responses((status = 200, description = "the process answers", body = Health)))]
pub async fn healthz() -> Json<Health> {
    Json(Health {
        status: "ok".to_string(),
    })
}

#[utoipa::path(get, path = "/metrics", tag = "meta", responses((status = 200,
    description = "Prometheus text format 0.0.4; OpenMetrics 1.0 when the Accept header asks for `application/openmetrics-text`",
    content(("text/plain"), ("application/openmetrics-text")))))]
pub async fn metrics(State(state): State<AppState>, headers: axum::http::HeaderMap) -> Response {
    let metrics = &state.services.ctx.metrics;
    let openmetrics = headers
        .get_all(header::ACCEPT)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .any(|v| v.contains("application/openmetrics-text"));
    if openmetrics {
        (
            [(
                header::CONTENT_TYPE,
                "application/openmetrics-text; version=1.0.0; charset=utf-8",
            )],
            metrics.encode(),
        )
            .into_response()
    } else {
        (
            [(
                header::CONTENT_TYPE,
                "text/plain; version=0.0.4; charset=utf-8",
            )],
            metrics.encode_text(),
        )
            .into_response()
    }
}

#[utoipa::path(get, path = "/v1/templates", tag = "templates",
    responses((status = 200, body = TemplateList), (status = 401, body = ErrorBody)))]
pub async fn list_templates(State(state): State<AppState>) -> ApiResult<Json<TemplateList>> {
    let templates = state.services.templates.list().await?;
    Ok(Json(TemplateList {
        templates: templates.iter().map(TemplateDoc::from_template).collect(),
    }))
}

#[utoipa::path(get, path = "/v1/templates/{name}", tag = "templates",
    params(("name" = String, Path, description = "template name")),
    responses((status = 200, body = TemplateDoc), (status = 404, body = ErrorBody)))]
pub async fn get_template(
    State(state): State<AppState>,
    Path(name): Path<String>,
) -> ApiResult<Json<TemplateDoc>> {
    let t = state.services.templates.get(&name).await?;
    Ok(Json(TemplateDoc::from_template(&t)))
}

#[utoipa::path(put, path = "/v1/templates/{name}", tag = "templates",
    params(("name" = String, Path, description = "template name")),
    request_body = TemplateDoc,
    responses((status = 201, description = "created", body = TemplateDoc), (status = 200, description = "replaced", body = TemplateDoc),
              (status = 400, body = ErrorBody), (status = 413, body = ErrorBody)))]
pub async fn put_template(
    State(state): State<AppState>,
    ApiCaller(caller): ApiCaller,
    Path(name): Path<String>,
    ApiJson(doc): ApiJson<TemplateDoc>,
) -> ApiResult<(StatusCode, Json<TemplateDoc>)> {
    let (t, created) = state.services.templates.put(&name, &doc, &caller).await?;
    let status = if created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok((status, Json(TemplateDoc::from_template(&t))))
}

#[utoipa::path(delete, path = "/v1/templates/{name}", tag = "templates",
    params(("name" = String, Path, description = "template name")),
    responses((status = 204, description = "deleted"), (status = 404, body = ErrorBody), (status = 409, description = "runtimes still use it", body = ErrorBody)))]
pub async fn delete_template(
    State(state): State<AppState>,
    ApiCaller(caller): ApiCaller,
    Path(name): Path<String>,
) -> ApiResult<StatusCode> {
    state.services.templates.delete(&name, &caller).await?;
    Ok(StatusCode::NO_CONTENT)
}

#[utoipa::path(get, path = "/v1/templates/{name}/pin", tag = "pins",
    params(("name" = String, Path, description = "template name")),
    responses((status = 200, body = PinView), (status = 404, description = "no such template, or not pinned", body = ErrorBody)))]
pub async fn get_pin(
    State(state): State<AppState>,
    Path(name): Path<String>,
) -> ApiResult<Json<PinView>> {
    Ok(Json(state.services.pins.get(&name).await?.into()))
}

#[utoipa::path(post, path = "/v1/templates/{name}/pin", tag = "pins",
    params(("name" = String, Path, description = "template name")),
    request_body = PromoteRequest,
    responses((status = 200, body = PinView), (status = 400, description = "invalid_digest", body = ErrorBody), (status = 404, body = ErrorBody)))]
pub async fn promote_pin(
    State(state): State<AppState>,
    ApiCaller(caller): ApiCaller,
    Path(name): Path<String>,
    ApiJson(req): ApiJson<PromoteRequest>,
) -> ApiResult<Json<PinView>> {
    if req.verify {
        state.services.pins.verify(&name, &req.digest).await?;
    }
    let pin = state
        .services
        .pins
        .promote(&name, &req.digest, req.reason.as_deref(), &caller)
        .await?;
    Ok(Json(pin.into()))
}

#[utoipa::path(delete, path = "/v1/templates/{name}/pin", tag = "pins",
    params(("name" = String, Path, description = "template name"), ReasonQuery),
    responses((status = 204, description = "unpinned"), (status = 404, body = ErrorBody)))]
pub async fn unpin(
    State(state): State<AppState>,
    ApiCaller(caller): ApiCaller,
    Path(name): Path<String>,
    ApiQuery(q): ApiQuery<ReasonQuery>,
) -> ApiResult<StatusCode> {
    state
        .services
        .pins
        .unpin(&name, q.reason.as_deref(), &caller)
        .await?;
    Ok(StatusCode::NO_CONTENT)
}

#[utoipa::path(get, path = "/v1/templates/{name}/pin/history", tag = "pins",
    params(("name" = String, Path, description = "template name"), LimitQuery),
    responses((status = 200, body = PinHistoryList), (status = 404, body = ErrorBody)))]
pub async fn pin_history(
    State(state): State<AppState>,
    Path(name): Path<String>,
    ApiQuery(q): ApiQuery<LimitQuery>,
) -> ApiResult<Json<PinHistoryList>> {
    let pins = state.services.pins.history(&name, q.limit).await?;
    Ok(Json(PinHistoryList {
        pins: pins.into_iter().map(Into::into).collect(),
    }))
}

#[utoipa::path(get, path = "/v1/runtimes", tag = "runtimes", params(RuntimeQuery),
    responses((status = 200, body = RuntimeList), (status = 400, body = ErrorBody)))]
pub async fn list_runtimes(
    State(state): State<AppState>,
    ApiQuery(q): ApiQuery<RuntimeQuery>,
) -> ApiResult<Json<RuntimeList>> {
    let runtimes = state
        .services
        .runtimes
        .list(&ListQuery {
            template: q.template,
            status: q.status,
            stale: q.stale.unwrap_or(false),
            limit: q.limit,
            after: q.after,
        })
        .await?;
    Ok(Json(RuntimeList {
        runtimes: runtimes.items.into_iter().map(Into::into).collect(),
        next: runtimes.next,
    }))
}

/// Runs a stop, restart or remove detached from the request.
async fn act(
    state: AppState,
    caller: crate::services::Caller,
    id: String,
    action: RuntimeAction,
) -> ApiResult<Json<RuntimeView>> {
    let services = state.services.clone();
    let rec = state
        .run(async move { services.runtimes.act(action, &id, &caller).await })
        .await?;
    Ok(Json(rec.into()))
}

/// Reports an image pull of runtime `id` to the change stream's clients
/// following it (`berth runtime start` shows them as bars).
fn pull_progress(
    services: &std::sync::Arc<crate::services::Services>,
    id: &str,
) -> impl Fn(crate::ports::engine::PullProgress) + Send + Sync + 'static {
    let feed = services.changes.clone();
    let id = id.to_string();
    move |p| feed.publish_pull(&id, &p)
}

fn start_response(outcome: StartOutcome) -> (StatusCode, Json<RuntimeView>) {
    match outcome {
        StartOutcome::Started(r) => (StatusCode::CREATED, Json(r.into())),
        StartOutcome::AlreadyRunning(r) => (StatusCode::OK, Json(r.into())),
    }
}

#[utoipa::path(post, path = "/v1/runtimes", tag = "runtimes", request_body = StartRuntimeRequest,
    responses((status = 201, description = "started", body = RuntimeView), (status = 200, description = "already running", body = RuntimeView),
              (status = 400, body = ErrorBody), (status = 404, description = "template_not_found", body = ErrorBody),
              (status = 409, description = "runtime_removed, image_not_pinned or conflict", body = ErrorBody),
              (status = 502, description = "image_pull_failed or start_failed", body = ErrorBody),
              (status = 503, description = "docker_unavailable", body = ErrorBody)))]
pub async fn start_runtime(
    State(state): State<AppState>,
    ApiCaller(caller): ApiCaller,
    ApiJson(req): ApiJson<StartRuntimeRequest>,
) -> ApiResult<(StatusCode, Json<RuntimeView>)> {
    let services = state.services.clone();
    let request = StartRequest {
        id: req.id,
        template: req.template,
        env: req.env,
    };
    let outcome = state
        .run(async move {
            let progress = pull_progress(&services, &request.id);
            services
                .runtimes
                .start_with_progress(request, &caller, &progress)
                .await
        })
        .await?;
    Ok(start_response(outcome))
}

#[utoipa::path(get, path = "/v1/runtimes/{id}", tag = "runtimes",
    params(("id" = String, Path, description = "runtime id")),
    responses((status = 200, body = RuntimeView), (status = 404, body = ErrorBody)))]
pub async fn get_runtime(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> ApiResult<Json<RuntimeView>> {
    let rec = state.services.runtimes.get(&id).await?;
    let mut view: RuntimeView = rec.into();
    // The record answers even when Docker does not; readiness is then left out.
    match state.services.stores.readiness(&id).await {
        Ok(r) => view.readiness = Some(r.into()),
        Err(e) => tracing::debug!(runtime = %id, error = %e.message, "readiness not computed"),
    }
    Ok(Json(view))
}

#[utoipa::path(post, path = "/v1/runtimes/{id}/start", tag = "runtimes",
    params(("id" = String, Path, description = "runtime id")),
    responses((status = 201, body = RuntimeView), (status = 200, description = "already running", body = RuntimeView), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)))]
pub async fn start_existing_runtime(
    State(state): State<AppState>,
    ApiCaller(caller): ApiCaller,
    Path(id): Path<String>,
) -> ApiResult<(StatusCode, Json<RuntimeView>)> {
    let services = state.services.clone();
    let outcome = state
        .run(async move {
            let rec = services.runtimes.get(&id).await?;
            let request = StartRequest {
                id: rec.id,
                template: rec.template,
                env: Default::default(),
            };
            let progress = pull_progress(&services, &request.id);
            services
                .runtimes
                .start_with_progress(request, &caller, &progress)
                .await
        })
        .await?;
    Ok(start_response(outcome))
}

#[utoipa::path(post, path = "/v1/runtimes/{id}/stop", tag = "runtimes",
    params(("id" = String, Path, description = "runtime id")),
    responses((status = 200, body = RuntimeView), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)))]
pub async fn stop_runtime(
    State(state): State<AppState>,
    ApiCaller(caller): ApiCaller,
    Path(id): Path<String>,
) -> ApiResult<Json<RuntimeView>> {
    act(state, caller, id, RuntimeAction::Stop).await
}

#[utoipa::path(post, path = "/v1/runtimes/{id}/restart", tag = "runtimes",
    params(("id" = String, Path, description = "runtime id")),
    responses((status = 200, body = RuntimeView), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)))]
pub async fn restart_runtime(
    State(state): State<AppState>,
    ApiCaller(caller): ApiCaller,
    Path(id): Path<String>,
) -> ApiResult<Json<RuntimeView>> {
    act(state, caller, id, RuntimeAction::Restart).await
}

#[utoipa::path(delete, path = "/v1/runtimes/{id}", tag = "runtimes",
    params(("id" = String, Path, description = "runtime id")),
    responses((status = 200, description = "container removed; the record stays as removed", body = RuntimeView), (status = 404, body = ErrorBody)))]
pub async fn remove_runtime(
    State(state): State<AppState>,
    ApiCaller(caller): ApiCaller,
    Path(id): Path<String>,
) -> ApiResult<Json<RuntimeView>> {
    act(state, caller, id, RuntimeAction::Remove).await
}

#[utoipa::path(get, path = "/v1/operations", tag = "operations", params(OperationQuery),
    responses((status = 200, body = OperationList), (status = 400, body = ErrorBody)))]
pub async fn list_operations(
    State(state): State<AppState>,
    ApiQuery(q): ApiQuery<OperationQuery>,
) -> ApiResult<Json<OperationList>> {
    let ops = state
        .services
        .operations
        .list(
            q.runtime.as_deref(),
            q.kind.as_deref(),
            q.limit,
            q.before.as_deref(),
        )
        .await?;
    Ok(Json(OperationList {
        operations: ops.items.into_iter().map(Into::into).collect(),
        next: ops.next,
    }))
}

#[utoipa::path(get, path = "/v1/events", tag = "events", params(EventQuery),
    responses((status = 200, body = HealthEventList), (status = 400, body = ErrorBody)))]
pub async fn list_events(
    State(state): State<AppState>,
    ApiQuery(q): ApiQuery<EventQuery>,
) -> ApiResult<Json<HealthEventList>> {
    let events = state
        .services
        .operations
        .health_events(
            q.runtime.as_deref(),
            q.event_type.as_deref(),
            q.limit,
            q.before.as_deref(),
        )
        .await?;
    Ok(Json(HealthEventList {
        events: events.items.into_iter().map(Into::into).collect(),
        next: events.next,
    }))
}

#[utoipa::path(get, path = "/v1/notifications", tag = "events", params(NotificationQuery),
    responses((status = 200, body = NotificationList), (status = 400, body = ErrorBody)))]
pub async fn list_notifications(
    State(state): State<AppState>,
    ApiQuery(q): ApiQuery<NotificationQuery>,
) -> ApiResult<Json<NotificationList>> {
    let notifications = state
        .services
        .operations
        .notifications(q.limit, q.before.as_deref())
        .await?;
    Ok(Json(NotificationList {
        notifications: notifications.items.into_iter().map(Into::into).collect(),
        next: notifications.next,
    }))
}

#[utoipa::path(post, path = "/v1/admin/reconcile", tag = "admin",
    responses((status = 200, body = ReconcileReportView), (status = 503, description = "docker_unavailable", body = ErrorBody)))]
pub async fn reconcile_now(State(state): State<AppState>) -> ApiResult<Json<ReconcileReportView>> {
    let services = state.services.clone();
    let report = state
        .run(async move { services.reconciler.run_once().await })
        .await?;
    Ok(Json(report.into()))
}

#[utoipa::path(post, path = "/v1/admin/images/refresh", tag = "admin", request_body = RefreshRequest,
    responses((status = 200, body = RefreshResponse), (status = 400, body = ErrorBody), (status = 500, description = "templates or runtimes could not be read", body = ErrorBody)))]
pub async fn refresh_images(
    State(state): State<AppState>,
    ApiCaller(caller): ApiCaller,
    ApiJson(req): ApiJson<RefreshRequest>,
) -> ApiResult<Json<RefreshResponse>> {
    let services = state.services.clone();
    let result = state
        .run(async move {
            services
                .refresh
                .refresh(req.templates.as_deref(), req.recreate, &caller)
                .await
        })
        .await?;
    Ok(Json(RefreshResponse {
        pulled: result.pulled,
        recreated: result.recreated,
        failed: result
            .failed
            .into_iter()
            .map(|(template, error)| TemplateFailure { template, error })
            .collect(),
    }))
}

#[utoipa::path(post, path = "/v1/admin/images/watch", tag = "admin",
    responses((status = 200, description = "one image-watch tick, now", body = WatchReportView)))]
pub async fn watch_images(State(state): State<AppState>) -> ApiResult<Json<WatchReportView>> {
    let services = state.services.clone();
    let r = state
        .run(async move { services.watcher.tick().await })
        .await?;
    Ok(Json(WatchReportView {
        lookups: r.lookups,
        seeded: r.seeded,
        notified: r.notified,
        tracked: r.tracked,
        failed: r
            .failed
            .into_iter()
            .map(|(template, error)| TemplateFailure { template, error })
            .collect(),
    }))
}

#[utoipa::path(get, path = "/v1/rollouts", tag = "rollouts", params(RolloutQuery),
    responses((status = 200, body = RolloutList)))]
pub async fn list_rollouts(
    State(state): State<AppState>,
    ApiQuery(q): ApiQuery<RolloutQuery>,
) -> ApiResult<Json<RolloutList>> {
    let rows = state
        .services
        .rollouts
        .list(q.template.as_deref(), q.limit)
        .await?;
    Ok(Json(RolloutList {
        rollouts: rows
            .into_iter()
            .map(|r| RolloutView::from_row(r, None))
            .collect(),
    }))
}

#[utoipa::path(get, path = "/v1/rollouts/{id}", tag = "rollouts",
    params(("id" = String, Path, description = "rollout id")),
    responses((status = 200, body = RolloutView), (status = 404, body = ErrorBody)))]
pub async fn get_rollout(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> ApiResult<Json<RolloutView>> {
    let (row, targets) = state.services.rollouts.get(&id).await?;
    Ok(Json(RolloutView::from_row(row, Some(targets))))
}

async fn set_rollout_state(
    state: AppState,
    caller: crate::services::Caller,
    id: String,
    to: berth_core::rollout::RolloutState,
) -> ApiResult<Json<RolloutView>> {
    let row = state
        .services
        .rollouts
        .set_state_by(&id, to, &caller)
        .await?;
    Ok(Json(RolloutView::from_row(row, None)))
}

#[utoipa::path(post, path = "/v1/rollouts/{id}/pause", tag = "rollouts",
    params(("id" = String, Path, description = "rollout id")),
    responses((status = 200, body = RolloutView), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)))]
pub async fn pause_rollout(
    State(state): State<AppState>,
    ApiCaller(caller): ApiCaller,
    Path(id): Path<String>,
) -> ApiResult<Json<RolloutView>> {
    set_rollout_state(state, caller, id, berth_core::rollout::RolloutState::Paused).await
}

#[utoipa::path(post, path = "/v1/rollouts/{id}/resume", tag = "rollouts",
    params(("id" = String, Path, description = "rollout id")),
    responses((status = 200, body = RolloutView), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)))]
pub async fn resume_rollout(
    State(state): State<AppState>,
    ApiCaller(caller): ApiCaller,
    Path(id): Path<String>,
) -> ApiResult<Json<RolloutView>> {
    set_rollout_state(
        state,
        caller,
        id,
        berth_core::rollout::RolloutState::Running,
    )
    .await
}

#[utoipa::path(post, path = "/v1/rollouts/{id}/abort", tag = "rollouts",
    params(("id" = String, Path, description = "rollout id")),
    responses((status = 200, body = RolloutView), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)))]
pub async fn abort_rollout(
    State(state): State<AppState>,
    ApiCaller(caller): ApiCaller,
    Path(id): Path<String>,
) -> ApiResult<Json<RolloutView>> {
    set_rollout_state(
        state,
        caller,
        id,
        berth_core::rollout::RolloutState::Aborted,
    )
    .await
}

#[utoipa::path(get, path = "/v1/status", tag = "meta",
    responses((status = 200, body = StatusView)))]
pub async fn status(State(state): State<AppState>) -> ApiResult<Json<StatusView>> {
    let s = state.services.status().await?;
    Ok(Json(StatusView {
        version: s.version.to_string(),
        owner: s.owner,
        network: s.network,
        redis: s.redis,
        docker_events_connected: s.docker_events_connected,
        reconcile_last_run: s.reconcile_last_run_ms,
        image_watch_last_tick: s.image_watch_last_tick_ms,
        plugin_sweep_last_run: s.plugin_sweep_last_run_ms,
        outbox_pending: s.outbox_pending,
        active_rollouts: s.active_rollouts,
        runtimes: s.runtimes,
        readiness: s.readiness,
        readiness_blocked: s.readiness_blocked,
        webhooks: s
            .webhooks
            .into_iter()
            .map(|w| WebhookStatusView {
                name: w.name,
                url: w.url,
                pending: w.pending,
                last_error: w.health.last_error,
                last_error_at: w.health.last_error_at_ms,
                last_delivered_at: w.health.last_delivered_at_ms,
            })
            .collect(),
    }))
}

#[utoipa::path(get, path = "/v1/webhooks/deliveries", tag = "events", params(WebhookDeliveryQuery),
    responses((status = 200, description = "the delivery log, newest first", body = WebhookDeliveryList),
              (status = 400, description = "invalid_request: a bad limit or webhook, or an unknown parameter", body = ErrorBody),
              (status = 401, description = "a token is configured and the request has none or another", body = ErrorBody)))]
pub async fn list_webhook_deliveries(
    State(state): State<AppState>,
    ApiQuery(q): ApiQuery<WebhookDeliveryQuery>,
) -> ApiResult<Json<WebhookDeliveryList>> {
    let deliveries = state
        .services
        .operations
        .webhook_deliveries(q.webhook.as_deref(), q.limit)
        .await?;
    Ok(Json(WebhookDeliveryList {
        deliveries: deliveries.into_iter().map(Into::into).collect(),
    }))
}

// --- plugins ---------------------------------------------------------------

#[utoipa::path(post, path = "/v1/runtimes/{id}/plugins", tag = "plugins", request_body = InstallPluginRequest,
    params(("id" = String, Path, description = "runtime id")),
    responses((status = 201, description = "installed", body = PluginView),
              (status = 200, description = "already installed from this source and track", body = PluginView),
              (status = 400, description = "invalid_request, invalid_plugin_source or invalid_tracked_ref", body = ErrorBody),
              (status = 404, description = "runtime_not_found or ref_not_found", body = ErrorBody),
              (status = 409, description = "runtime_removed, or the name is taken by another source or track", body = ErrorBody),
              (status = 502, description = "git_failed, or the restart failed", body = ErrorBody)))]
pub async fn install_plugin(
    State(state): State<AppState>,
    ApiCaller(caller): ApiCaller,
    Path(id): Path<String>,
    ApiJson(req): ApiJson<InstallPluginRequest>,
) -> ApiResult<(StatusCode, Json<PluginView>)> {
    let services = state.services.clone();
    let (plugin, created) = state
        .run(async move {
            services
                .plugins
                .install(
                    crate::services::plugins::InstallRequest {
                        runtime_id: id,
                        name: req.name,
                        source: req.source,
                        track: req.track,
                        restart: req.restart,
                    },
                    &caller,
                )
                .await
        })
        .await?;
    let status = if created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok((status, Json(plugin.into())))
}

#[utoipa::path(get, path = "/v1/runtimes/{id}/plugins", tag = "plugins",
    params(("id" = String, Path, description = "runtime id")),
    responses((status = 200, body = PluginList), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub async fn list_plugins(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> ApiResult<Json<PluginList>> {
    let plugins = state.services.plugins.list(&id).await?;
    Ok(Json(PluginList {
        plugins: plugins.into_iter().map(Into::into).collect(),
    }))
}

#[utoipa::path(delete, path = "/v1/runtimes/{id}/plugins/{name}", tag = "plugins",
    params(("id" = String, Path, description = "runtime id"), ("name" = String, Path, description = "plugin name")),
    responses((status = 204, description = "uninstalled: no row, no directory"),
              (status = 400, body = ErrorBody), (status = 404, description = "runtime_not_found or plugin_not_found", body = ErrorBody)))]
pub async fn uninstall_plugin(
    State(state): State<AppState>,
    ApiCaller(caller): ApiCaller,
    Path((id, name)): Path<(String, String)>,
) -> ApiResult<StatusCode> {
    let services = state.services.clone();
    state
        .run(async move { services.plugins.uninstall(&id, &name, &caller).await })
        .await?;
    Ok(StatusCode::NO_CONTENT)
}

#[utoipa::path(get, path = "/v1/plugin-updates", tag = "plugins", params(PluginUpdateQuery),
    responses((status = 200, body = PluginUpdateList), (status = 400, body = ErrorBody)))]
pub async fn list_plugin_updates(
    State(state): State<AppState>,
    ApiQuery(q): ApiQuery<PluginUpdateQuery>,
) -> ApiResult<Json<PluginUpdateList>> {
    let updates = state
        .services
        .plugins
        .updates(
            q.status.as_deref(),
            q.runtime.as_deref(),
            q.plugin.as_deref(),
            q.limit,
        )
        .await?;
    Ok(Json(PluginUpdateList {
        plugin_updates: updates.into_iter().map(Into::into).collect(),
    }))
}

#[utoipa::path(post, path = "/v1/plugin-updates/{id}/apply", tag = "plugins",
    params(("id" = String, Path, description = "plugin update id")),
    responses((status = 200, description = "applied (again: idempotent)", body = PluginUpdateView),
              (status = 404, description = "update_not_found", body = ErrorBody),
              (status = 409, description = "dismissed, or its plugin is gone", body = ErrorBody),
              (status = 502, description = "git_failed, or the restart failed", body = ErrorBody)))]
pub async fn apply_plugin_update(
    State(state): State<AppState>,
    ApiCaller(caller): ApiCaller,
    Path(id): Path<String>,
) -> ApiResult<Json<PluginUpdateView>> {
    let services = state.services.clone();
    let update = state
        .run(async move { services.plugins.apply(&id, &caller).await })
        .await?;
    Ok(Json(update.into()))
}

#[utoipa::path(post, path = "/v1/plugin-updates/{id}/dismiss", tag = "plugins",
    params(("id" = String, Path, description = "plugin update id")),
    responses((status = 200, description = "dismissed (again: idempotent)", body = PluginUpdateView),
              (status = 404, description = "update_not_found", body = ErrorBody),
              (status = 409, description = "already applied", body = ErrorBody)))]
pub async fn dismiss_plugin_update(
    State(state): State<AppState>,
    ApiCaller(caller): ApiCaller,
    Path(id): Path<String>,
) -> ApiResult<Json<PluginUpdateView>> {
    let services = state.services.clone();
    let update = state
        .run(async move { services.plugins.dismiss(&id, &caller).await })
        .await?;
    Ok(Json(update.into()))
}

#[utoipa::path(post, path = "/v1/admin/plugins/sweep", tag = "admin",
    responses((status = 200, body = SweepReportView), (status = 503, description = "storage_unavailable", body = ErrorBody)))]
pub async fn sweep_plugins(State(state): State<AppState>) -> ApiResult<Json<SweepReportView>> {
    let services = state.services.clone();
    let report = state
        .run(async move { services.plugins.sweep().await })
        .await?;
    Ok(Json(report.into()))
}

#[utoipa::path(post, path = "/v1/plugin-updates/apply", tag = "plugins", request_body = BulkApplyRequest,
    responses((status = 202, description = "a rollout applying the plugin's newest commit in health-gated batches; a runtime that fails its gate is restored to its previous commit", body = RolloutView),
              (status = 400, body = ErrorBody),
              (status = 404, description = "template_not_found, plugin_not_found or ref_not_found", body = ErrorBody),
              (status = 409, description = "the runtimes install the plugin from different sources or tracks", body = ErrorBody),
              (status = 502, description = "git_failed", body = ErrorBody)))]
pub async fn bulk_apply_plugin(
    State(state): State<AppState>,
    ApiCaller(caller): ApiCaller,
    ApiJson(req): ApiJson<BulkApplyRequest>,
) -> ApiResult<(StatusCode, Json<RolloutView>)> {
    berth_core::id::validate_template_name(&req.template)?;
    let services = state.services.clone();
    let row = state
        .run(async move {
            services
                .rollouts
                .start_plugin(&req.template, &req.plugin, &caller)
                .await
        })
        .await?;
    Ok((StatusCode::ACCEPTED, Json(RolloutView::from_row(row, None))))
}

// --- state stores ----------------------------------------------------------

#[utoipa::path(post, path = "/v1/runtimes/{id}/store/batches", tag = "stores", request_body = StoreBatchRequest,
    params(("id" = String, Path, description = "runtime id")),
    responses((status = 201, description = "committed: survives any crash after this answer", body = CommittedBatchView),
              (status = 400, description = "invalid_request (an undeclared store, a store written twice, no writes) or invalid_id", body = ErrorBody),
              (status = 404, description = "runtime_not_found or template_not_found", body = ErrorBody),
              (status = 409, description = "conflict: run_id is not the runtime's current run, or its manifest is unreadable; runtime_removed", body = ErrorBody),
              (status = 413, description = "payload_too_large: a store, the batch or the body is too large", body = ErrorBody),
              (status = 503, description = "storage_unavailable: a write or fsync failed; nothing was committed", body = ErrorBody)))]
pub async fn write_store_batch(
    State(state): State<AppState>,
    ApiCaller(caller): ApiCaller,
    Path(id): Path<String>,
    ApiJson(req): ApiJson<StoreBatchRequest>,
) -> ApiResult<(StatusCode, Json<CommittedBatchView>)> {
    let services = state.services.clone();
    let request = crate::services::stores::BatchRequest {
        run_id: req.run_id,
        reason: req.reason,
        writes: req
            .writes
            .into_iter()
            .map(|w| crate::services::stores::StoreWrite {
                store: w.store,
                schema_version: w.schema_version,
                data: w.data,
            })
            .collect(),
    };
    let batch = state
        .run(async move { services.stores.write_batch(&id, request, &caller).await })
        .await?;
    Ok((StatusCode::CREATED, Json(batch.into())))
}

#[utoipa::path(get, path = "/v1/runtimes/{id}/store", tag = "stores",
    params(("id" = String, Path, description = "runtime id")),
    responses((status = 200, description = "the committed manifest (empty before the first batch)", body = ManifestView),
              (status = 400, body = ErrorBody), (status = 404, body = ErrorBody),
              (status = 409, description = "the manifest is unreadable", body = ErrorBody),
              (status = 503, body = ErrorBody)))]
pub async fn get_store_manifest(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> ApiResult<Json<ManifestView>> {
    Ok(Json(state.services.stores.manifest(&id).await?.into()))
}

#[utoipa::path(get, path = "/v1/runtimes/{id}/store/{store}", tag = "stores",
    params(("id" = String, Path, description = "runtime id"), ("store" = String, Path, description = "store name")),
    responses((status = 200, description = "the store's committed envelope", body = EnvelopeView),
              (status = 400, body = ErrorBody),
              (status = 404, description = "runtime_not_found, or store_not_found: undeclared or never committed", body = ErrorBody),
              (status = 409, description = "the file does not hold what the last committed batch wrote", body = ErrorBody),
              (status = 503, body = ErrorBody)))]
pub async fn get_store_data(
    State(state): State<AppState>,
    Path((id, store)): Path<(String, String)>,
) -> ApiResult<Json<EnvelopeView>> {
    Ok(Json(
        state.services.stores.store_data(&id, &store).await?.into(),
    ))
}

#[utoipa::path(get, path = "/v1/runtimes/{id}/readiness", tag = "stores",
    params(("id" = String, Path, description = "runtime id")),
    responses((status = 200, description = "the verdict; changes nothing on disk", body = ReadinessView),
              (status = 400, body = ErrorBody), (status = 404, body = ErrorBody),
              (status = 503, description = "docker_unavailable or storage_unavailable", body = ErrorBody)))]
pub async fn get_readiness(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> ApiResult<Json<ReadinessView>> {
    Ok(Json(state.services.stores.readiness(&id).await?.into()))
}
