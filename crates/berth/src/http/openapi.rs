//! The OpenAPI 3 document, generated from the handlers' own types.

use axum::Json;
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi};

use super::dto::*;
use super::handlers;
use crate::template_doc::{
    DisappearDoc, HealthDoc, RestartDoc, RolloutDoc, StoreDoc, StoreReadinessDoc, StoreRecoveryDoc,
    TemplateDoc, UpdatePolicyDoc,
};

#[derive(OpenApi)]
#[openapi(
    info(title = "berth", description = "Runtime manager for long-lived, stateful containers on Docker"),
    paths(
        handlers::healthz, handlers::metrics,
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
    )),
    modifiers(&BearerAuth),
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

pub async fn serve() -> Json<utoipa::openapi::OpenApi> {
    Json(ApiDoc::openapi())
}
