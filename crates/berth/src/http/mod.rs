//! The HTTP API (axum): routing, auth, errors, body limits and metrics.
//! Handlers are thin: they parse, call a service, and shape the answer.

mod console;
pub mod dto;
mod extract;
mod handlers;
pub mod openapi;
pub mod roles;
pub mod session;
mod stream;
pub mod tls;

use std::sync::Arc;

use axum::extract::{DefaultBodyLimit, FromRequestParts, MatchedPath, Request, State};
use axum::http::request::Parts;
use axum::http::{header, HeaderMap, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};
use axum::{Json, Router};
use berth_core::operation::Source;
use berth_core::ErrorCode;
use tokio_util::task::TaskTracker;

use crate::config::ApiToken;
use crate::error::Error;
use crate::metrics::RequestLabels;
use crate::services::{Caller, Services};
use dto::{ErrorBody, ErrorDetail};
use roles::Role;

/// Requests larger than this are refused with 413 `payload_too_large`.
pub const MAX_BODY_BYTES: usize = 1024 * 1024;
/// State-store batches may be larger: up to the batch limit plus JSON framing.
pub const MAX_STORE_BATCH_BYTES: usize = 17 * 1024 * 1024;

#[derive(Clone)]
pub struct AppState {
    pub services: Arc<Services>,
    /// Mutating operations run here, detached from the request: a client
    /// that hangs up does not cancel an operation halfway, and shutdown
    /// waits for them.
    pub tracker: TaskTracker,
    /// The tokens `/v1` accepts (none: the API is open).
    pub auth: Arc<Auth>,
}

/// The tokens the API accepts, each kept as the SHA-256 of its secret.
#[derive(Debug, Default)]
pub struct Auth {
    tokens: Vec<ApiToken>,
    /// `[[tokens]]` are configured: a token's name is the actor, whatever
    /// `X-Berth-Actor` says. With the single `api_token` the header still
    /// names the person (one shared token cannot).
    scoped: bool,
    /// The console's browser sessions.
    pub sessions: session::Sessions,
}

impl Auth {
    pub fn new(tokens: Vec<ApiToken>, scoped: bool) -> Auth {
        Auth {
            tokens,
            scoped,
            sessions: session::Sessions::default(),
        }
    }

    /// Session cookies get `Secure` (the API is served over HTTPS).
    pub fn with_secure_cookies(mut self, secure: bool) -> Auth {
        self.sessions = session::Sessions::new(secure);
        self
    }

    /// Whether `/v1` and the console ask for a token.
    pub fn is_open(&self) -> bool {
        self.tokens.is_empty()
    }

    /// No token: every request is let in (loopback only, see `check_exposure`).
    pub fn open() -> Auth {
        Auth::default()
    }

    pub fn from_config(config: &crate::config::Config) -> Auth {
        Auth::new(config.tokens.clone(), config.scoped_tokens)
            .with_secure_cookies(config.tls.is_some())
    }

    /// The token whose secret this is. Compares SHA-256 digests in
    /// constant time and looks at every token, so the time taken says
    /// nothing about which token, or how much of one, was guessed.
    pub(crate) fn find(&self, secret: &str) -> Option<&ApiToken> {
        let digest = crate::config::sha256(secret.as_bytes());
        let mut found = None;
        for token in &self.tokens {
            if constant_time_eq(&token.sha256, &digest) && found.is_none() {
                found = Some(token);
            }
        }
        found
    }
}

/// The token a request came with, put in its extensions by the auth
/// middleware.
#[derive(Debug, Clone)]
pub struct Principal {
    pub name: String,
    pub role: Role,
    /// The name is the actor (`X-Berth-Actor` does not override it).
    pub names_actor: bool,
}

impl AppState {
    /// Runs an operation to completion even if the caller goes away.
    async fn run<T, F>(&self, fut: F) -> Result<T, ApiError>
    where
        F: std::future::Future<Output = crate::error::Result<T>> + Send + 'static,
        T: Send + 'static,
    {
        match self.tracker.spawn(fut).await {
            Ok(r) => r.map_err(ApiError),
            Err(e) => Err(ApiError(Error::new(
                ErrorCode::Internal,
                format!("the operation task failed: {e}"),
            ))),
        }
    }
}

/// A service error on its way out as JSON.
#[derive(Debug)]
pub struct ApiError(pub Error);

impl From<Error> for ApiError {
    fn from(e: Error) -> Self {
        ApiError(e)
    }
}

impl From<berth_core::ValidationError> for ApiError {
    fn from(e: berth_core::ValidationError) -> Self {
        ApiError(e.into())
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status =
            StatusCode::from_u16(self.0.http_status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        if status.is_server_error() {
            let source = self.0.source.as_ref().map(|s| format!("{s:?}"));
            tracing::warn!(code = %self.0.code, message = %self.0.message, source = ?source, "request failed");
        }
        let body = ErrorBody {
            error: ErrorDetail {
                code: self.0.code.as_str().to_string(),
                message: self.0.message,
            },
        };
        (status, Json(body)).into_response()
    }
}

/// The caller: `X-Berth-Source: cli` marks the CLI; the actor (pin
/// history's `promoted_by`, the operation's `actor`) is the token's name
/// under `[[tokens]]`, else `X-Berth-Actor` when given.
fn caller(headers: &HeaderMap, principal: Option<&Principal>) -> Caller {
    let source = match headers.get("x-berth-source").and_then(|v| v.to_str().ok()) {
        Some("cli") => Source::Cli,
        _ => Source::Api,
    };
    let mut caller = Caller::new(source);
    if let Some(p) = principal.filter(|p| p.names_actor) {
        caller.by = p.name.clone();
    } else if let Some(actor) = headers.get("x-berth-actor").and_then(|v| v.to_str().ok()) {
        let actor = actor.trim();
        if !actor.is_empty() && actor.len() <= 128 && !actor.chars().any(char::is_control) {
            caller.by = actor.to_string();
        }
    }
    caller
}

/// The [`Caller`] of a request, as an extractor.
pub(crate) struct ApiCaller(pub Caller);

impl<S: Send + Sync> FromRequestParts<S> for ApiCaller {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        Ok(ApiCaller(caller(
            &parts.headers,
            parts.extensions.get::<Principal>(),
        )))
    }
}

/// Compares without an early exit (`subtle`), so the time taken does not
/// reveal how much of a guessed token was right. Inputs of unequal length
/// are unequal; the lengths themselves are not secret (digests and CSRF
/// tokens have one fixed length).
pub(crate) fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    use subtle::ConstantTimeEq;
    a.ct_eq(b).into()
}

/// Who a request is: its bearer token, else its console session, else
/// nobody (an open API lets nobody in). Unsafe methods from a browser must
/// come from this server's own pages: a cross-site request is refused
/// whatever it carries, and a session must send its CSRF token.
async fn require_token(State(state): State<AppState>, mut req: Request, next: Next) -> Response {
    if session::is_unsafe(req.method()) {
        if let Some(why) = session::cross_site(req.headers()) {
            tracing::warn!(method = %req.method(), path = %req.uri().path(), %why, "cross-site request refused");
            return ApiError(Error::new(
                ErrorCode::Forbidden,
                format!("cross-site request refused: {why}"),
            ))
            .into_response();
        }
    }
    let principal = match authenticate(&state, &req) {
        Ok(p) => p,
        Err(e) => return e.into_response(),
    };
    let Some(principal) = principal else {
        return next.run(req).await;
    };
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map(|p| p.as_str().to_string());
    // A route the table does not list is for admins only.
    let needed = route
        .as_deref()
        .and_then(|r| roles::required_role(req.method(), r))
        .unwrap_or(Role::Admin);
    if !principal.role.allows(needed) {
        return ApiError(Error::new(
            ErrorCode::Forbidden,
            format!(
                "{} {} needs a token with the {needed} role (or above); token {:?} has the {} role",
                req.method(),
                route.as_deref().unwrap_or(req.uri().path()),
                principal.name,
                principal.role,
            ),
        ))
        .into_response();
    }
    req.extensions_mut().insert(principal);
    next.run(req).await
}

/// Who a request is, from its headers alone: shared by the `/v1`
/// middleware and the console's pages.
pub(crate) enum Identity {
    /// `Authorization: Bearer` with a token berth knows.
    Token(Principal),
    /// The console's session cookie, with the session (its CSRF token).
    Session(Principal, session::Session),
    /// No token is configured: the API is open.
    Open,
    /// Credentials missing or not valid: why, for a person.
    Refused(&'static str),
}

pub(crate) fn identify(state: &AppState, headers: &HeaderMap) -> Identity {
    let auth = &state.auth;
    if auth.is_open() {
        return Identity::Open;
    }
    let bearer = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    if let Some(given) = bearer {
        return match auth.find(given.trim()) {
            Some(token) => Identity::Token(Principal {
                name: token.name.clone(),
                role: token.role,
                names_actor: auth.scoped,
            }),
            None => Identity::Refused("the bearer token is not valid"),
        };
    }
    let now = state.services.ctx.now_ms();
    if let Some(s) = session::session_cookie(headers).and_then(|id| auth.sessions.get(id, now)) {
        let principal = Principal {
            name: s.name.clone(),
            role: s.role,
            names_actor: true,
        };
        return Identity::Session(principal, s);
    }
    Identity::Refused(
        "this API needs \"Authorization: Bearer <token>\" (or a console session: log in at /)",
    )
}

/// The principal of a request: `Ok(None)` when the API is open.
fn authenticate(state: &AppState, req: &Request) -> Result<Option<Principal>, ApiError> {
    match identify(state, req.headers()) {
        Identity::Open => Ok(None),
        Identity::Token(p) => Ok(Some(p)),
        Identity::Session(p, s) => {
            let sent = req
                .headers()
                .get(session::CSRF_HEADER)
                .and_then(|v| v.to_str().ok());
            if session::is_unsafe(req.method()) && !session::csrf_matches(&s, sent) {
                return Err(ApiError(Error::new(
                    ErrorCode::Forbidden,
                    "this request carries a console session but not its CSRF token (X-Berth-CSRF); reload the page",
                )));
            }
            Ok(Some(p))
        }
        Identity::Refused(why) => Err(ApiError(Error::new(ErrorCode::Unauthorized, why))),
    }
}

async fn count_requests(State(state): State<AppState>, req: Request, next: Next) -> Response {
    let method = req.method().to_string();
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map(|p| p.as_str().to_string())
        .unwrap_or_else(|| "unmatched".to_string());
    let response = next.run(req).await;
    state
        .services
        .ctx
        .metrics
        .http_requests
        .get_or_create(&RequestLabels {
            method,
            route,
            status: response.status().as_u16(),
        })
        .inc();
    response
}

async fn not_found() -> ApiError {
    ApiError(Error::new(
        ErrorCode::NotFound,
        "no such endpoint; see GET /openapi.json",
    ))
}

async fn method_not_allowed() -> ApiError {
    ApiError(Error::new(
        ErrorCode::MethodNotAllowed,
        "this endpoint does not take that method; see GET /openapi.json",
    ))
}

pub fn router(state: AppState) -> Router {
    use handlers::*;
    let v1 = Router::new()
        .route("/templates", get(list_templates))
        .route(
            "/templates/{name}",
            get(get_template).put(put_template).delete(delete_template),
        )
        .route(
            "/templates/{name}/pin",
            get(get_pin).post(promote_pin).delete(unpin),
        )
        .route("/templates/{name}/pin/history", get(pin_history))
        .route("/runtimes", get(list_runtimes).post(start_runtime))
        .route("/runtimes/{id}", get(get_runtime).delete(remove_runtime))
        .route("/runtimes/{id}/start", post(start_existing_runtime))
        .route("/runtimes/{id}/stop", post(stop_runtime))
        .route("/runtimes/{id}/restart", post(restart_runtime))
        .route(
            "/runtimes/{id}/store/batches",
            post(write_store_batch).layer(DefaultBodyLimit::max(MAX_STORE_BATCH_BYTES)),
        )
        .route("/runtimes/{id}/store", get(get_store_manifest))
        .route("/runtimes/{id}/store/{store}", get(get_store_data))
        .route("/runtimes/{id}/readiness", get(get_readiness))
        .route("/operations", get(list_operations))
        .route("/status", get(status))
        .route("/events", get(list_events))
        .route("/notifications", get(list_notifications))
        .route("/webhooks/deliveries", get(list_webhook_deliveries))
        .route("/admin/reconcile", post(reconcile_now))
        .route("/admin/images/refresh", post(refresh_images))
        .route("/admin/images/watch", post(watch_images))
        .route(
            "/runtimes/{id}/plugins",
            get(list_plugins).post(install_plugin),
        )
        .route("/runtimes/{id}/plugins/{name}", delete(uninstall_plugin))
        .route("/plugin-updates", get(list_plugin_updates))
        .route("/plugin-updates/apply", post(bulk_apply_plugin))
        .route("/plugin-updates/{id}/apply", post(apply_plugin_update))
        .route("/plugin-updates/{id}/dismiss", post(dismiss_plugin_update))
        .route("/admin/plugins/sweep", post(sweep_plugins))
        .route("/rollouts", get(list_rollouts))
        .route("/rollouts/{id}", get(get_rollout))
        .route("/rollouts/{id}/pause", post(pause_rollout))
        .route("/rollouts/{id}/resume", post(resume_rollout))
        .route("/rollouts/{id}/abort", post(abort_rollout))
        .route("/stream", get(stream::stream))
        .route_layer(middleware::from_fn_with_state(state.clone(), require_token));

    Router::new()
        .merge(console::router())
        .route("/healthz", get(healthz))
        .route("/metrics", get(metrics))
        .route("/openapi.json", get(openapi::serve))
        .nest("/v1", v1)
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(middleware::from_fn_with_state(
            state.clone(),
            count_requests,
        ))
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .with_state(state)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn constant_time_eq_compares() {
        assert!(constant_time_eq(b"secret", b"secret"));
        assert!(!constant_time_eq(b"secret", b"secreT"));
        assert!(!constant_time_eq(b"secret", b"secret2"));
        assert!(!constant_time_eq(b"", b"x"));
        // Lengths that differ by a multiple of 256 (or of 65,536: the old
        // fold kept 16 bits of the difference) still differ.
        assert!(!constant_time_eq(&[0u8; 256], b""));
        assert!(!constant_time_eq(&[0u8; 65_536], b""));
        assert!(!constant_time_eq(&[0u8; 65_537], &[0u8; 1]));
        assert!(!constant_time_eq(b"secret", b""));
        assert!(constant_time_eq(b"", b""));
    }
}
