//! The console: HTML pages served by the binary, read through the same
//! services as the API. Actions on a page call the `/v1` API from
//! `console.js` (with the session's CSRF token); live updates come from
//! `GET /v1/stream`.

pub mod view;

use std::collections::{BTreeMap, HashMap};

use axum::extract::{FromRequestParts, Path, Query, State};
use axum::http::request::Parts;
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use axum::Router;
use maud::Markup;
use serde::Deserialize;

use super::session;
use super::{identify, AppState, Identity};
use crate::error::Error;
use crate::services::lifecycle::ListQuery;
use view::{Fleet, FleetFilter, FleetRow, Nav, Region, Viewer};

/// Rows on one page of the fleet.
pub const FLEET_PAGE: u32 = 50;
/// The newest health events read to fill the fleet's health column.
const RECENT_EVENTS: u32 = 500;
/// Entries on a timeline.
const TIMELINE: u32 = 50;
/// The header a script sends to get one region of a page.
const FRAGMENT_HEADER: &str = "x-berth-fragment";

const CSS: &str = include_str!("console.css");
const JS: &str = include_str!("console.js");

/// Nothing but this server: no external script, style, font or frame, and
/// no page of another site may frame the console.
const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; \
                   connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'";

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/", get(fleet))
        .route("/ui/login", get(login_page).post(login))
        .route("/ui/logout", post(logout))
        .route("/ui/runtimes/{id}", get(runtime))
        .route("/ui/templates", get(templates))
        .route("/ui/templates/{name}", get(template))
        .route("/ui/rollouts", get(rollouts))
        .route("/ui/rollouts/{id}", get(rollout))
        .route("/ui/plugin-updates", get(plugin_updates))
        .route("/ui/assets/console.css", get(css))
        .route("/ui/assets/console.js", get(js))
}

/// An HTML answer with the console's security headers.
fn html(status: StatusCode, markup: Markup) -> Response {
    (
        status,
        [
            (header::CONTENT_TYPE, "text/html; charset=utf-8"),
            (header::CONTENT_SECURITY_POLICY, CSP),
            (header::X_FRAME_OPTIONS, "DENY"),
            (header::CACHE_CONTROL, "no-store"),
            (header::REFERRER_POLICY, "same-origin"),
        ],
        markup.into_string(),
    )
        .into_response()
}

fn asset(content_type: &'static str, body: &'static str) -> Response {
    (
        [
            (header::CONTENT_TYPE, content_type),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        body,
    )
        .into_response()
}

async fn css() -> Response {
    asset("text/css; charset=utf-8", CSS)
}

async fn js() -> Response {
    asset("text/javascript; charset=utf-8", JS)
}

/// Who a page request is from; a browser without a session is sent to
/// the token prompt.
pub struct ConsoleViewer(pub Viewer);

impl FromRequestParts<AppState> for ConsoleViewer {
    type Rejection = Redirect;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, Redirect> {
        let viewer = match identify(state, &parts.headers) {
            Identity::Open => Viewer {
                name: "console".to_string(),
                role: super::roles::Role::Admin,
                csrf: None,
                logged_in: false,
            },
            Identity::Token(p) => Viewer {
                name: p.name,
                role: p.role,
                csrf: None,
                logged_in: false,
            },
            Identity::Session(p, s) => Viewer {
                name: p.name,
                role: p.role,
                csrf: Some(s.csrf),
                logged_in: true,
            },
            Identity::Refused(_) => return Err(Redirect::to("/ui/login")),
        };
        Ok(ConsoleViewer(viewer))
    }
}

/// A service error as a small page (the console's 4xx/5xx).
fn error_page(viewer: &Viewer, e: Error) -> Response {
    let status = StatusCode::from_u16(e.http_status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    if status.is_server_error() {
        tracing::warn!(code = %e.code, message = %e.message, "console page failed");
    }
    let body = maud::html! { p.error role="alert" { code { (e.code.as_str()) } " " (e.message) } p { a href="/" { "Back to the fleet" } } };
    html(
        status,
        view::page(
            "Something went wrong",
            Nav::Fleet,
            viewer,
            &[Region {
                id: "error",
                live: "",
                runtime: None,
                body,
            }],
        ),
    )
}

/// The whole page, or only the region a script asked for.
fn respond(
    headers: &HeaderMap,
    title: &str,
    nav: Nav,
    viewer: &Viewer,
    regions: Vec<Region>,
) -> Response {
    if let Some(want) = headers.get(FRAGMENT_HEADER).and_then(|v| v.to_str().ok()) {
        return match regions.into_iter().find(|r| r.id == want) {
            Some(r) => html(StatusCode::OK, r.body),
            None => (StatusCode::NOT_FOUND, "no such region").into_response(),
        };
    }
    html(StatusCode::OK, view::page(title, nav, viewer, &regions))
}

macro_rules! page_try {
    ($viewer:expr, $e:expr) => {
        match $e {
            Ok(v) => v,
            Err(e) => return error_page(&$viewer, e.into()),
        }
    };
}

// ------------------------------------------------------------------ login

async fn login_page(State(state): State<AppState>, headers: HeaderMap) -> Response {
    // Open, or logged in already: nothing to ask.
    if matches!(
        identify(&state, &headers),
        Identity::Open | Identity::Session(..)
    ) {
        return Redirect::to("/").into_response();
    }
    html(StatusCode::OK, view::login(None))
}

#[derive(Deserialize)]
struct LoginForm {
    #[serde(default)]
    token: String,
}

async fn login(
    State(state): State<AppState>,
    headers: HeaderMap,
    axum::Form(form): axum::Form<LoginForm>,
) -> Response {
    // A login from another site would plant the attacker's session.
    if let Some(why) = session::cross_site(&headers) {
        tracing::warn!(%why, "cross-site login refused");
        return html(
            StatusCode::FORBIDDEN,
            view::login(Some("This login came from another site and was refused.")),
        );
    }
    if state.auth.is_open() {
        return Redirect::to("/").into_response();
    }
    let Some(token) = state.auth.find(form.token.trim()) else {
        tracing::info!("console login with a wrong token");
        return html(
            StatusCode::UNAUTHORIZED,
            view::login(Some("That token is not valid.")),
        );
    };
    let now = state.services.ctx.now_ms();
    match state.auth.sessions.open(&token.name, token.role, now) {
        Ok((id, _)) => {
            tracing::info!(token = %token.name, role = %token.role, "console session opened");
            (
                StatusCode::SEE_OTHER,
                [
                    (header::SET_COOKIE, state.auth.sessions.set_cookie(&id)),
                    (header::LOCATION, "/".to_string()),
                    (header::CACHE_CONTROL, "no-store".to_string()),
                ],
            )
                .into_response()
        }
        Err(e) => {
            tracing::warn!(error = %e, "no randomness for a session id");
            html(
                StatusCode::SERVICE_UNAVAILABLE,
                view::login(Some("The server could not open a session; try again.")),
            )
        }
    }
}

#[derive(Deserialize)]
struct LogoutForm {
    #[serde(default)]
    csrf: String,
}

async fn logout(
    State(state): State<AppState>,
    headers: HeaderMap,
    axum::Form(form): axum::Form<LogoutForm>,
) -> Response {
    let cross = session::cross_site(&headers);
    if let Some(id) = session::session_cookie(&headers) {
        let now = state.services.ctx.now_ms();
        match state.auth.sessions.get(id, now) {
            Some(s) if cross.is_none() && session::csrf_matches(&s, Some(&form.csrf)) => {
                state.auth.sessions.close(id);
                tracing::info!(token = %s.name, "console session closed");
            }
            Some(_) => {
                return (
                    StatusCode::FORBIDDEN,
                    "logout refused: it did not come from this console's page",
                )
                    .into_response();
            }
            None => {}
        }
    }
    (
        StatusCode::SEE_OTHER,
        [
            (header::SET_COOKIE, state.auth.sessions.clear_cookie()),
            (header::LOCATION, "/ui/login".to_string()),
        ],
    )
        .into_response()
}

// ------------------------------------------------------------------ fleet

#[derive(Deserialize, Default)]
struct FleetQuery {
    template: Option<String>,
    status: Option<String>,
    stale: Option<String>,
    q: Option<String>,
    after: Option<String>,
}

fn non_empty(v: Option<String>) -> Option<String> {
    v.map(|s| s.trim().to_string()).filter(|s| !s.is_empty())
}

async fn fleet(
    State(state): State<AppState>,
    ConsoleViewer(viewer): ConsoleViewer,
    headers: HeaderMap,
    Query(q): Query<FleetQuery>,
) -> Response {
    let filter = FleetFilter {
        template: non_empty(q.template),
        status: non_empty(q.status),
        stale: q.stale.as_deref() == Some("true"),
        q: non_empty(q.q).map(|s| s.to_ascii_lowercase()),
        after: non_empty(q.after),
    };
    let services = &state.services;
    // A search for an exact id opens that runtime.
    if let (Some(q), None) = (&filter.q, &filter.after) {
        if services.runtimes.get(q).await.is_ok() && headers.get(FRAGMENT_HEADER).is_none() {
            return Redirect::to(&format!("/ui/runtimes/{q}")).into_response();
        }
    }
    // The whole fleet's counts cost a pass over every record: only for
    // the page itself and the summary region.
    let fragment = headers.get(FRAGMENT_HEADER).and_then(|v| v.to_str().ok());
    let counts = matches!(fragment, None | Some("summary"));
    let fleet = page_try!(viewer, load_fleet(&state, filter, counts).await);
    let now = services.ctx.now_ms();
    let events = page_try!(
        viewer,
        services
            .operations
            .health_events(None, None, Some(10), None)
            .await
    );
    let ops = page_try!(
        viewer,
        services.operations.list(None, None, Some(10), None).await
    );
    let regions = vec![
        Region {
            id: "summary",
            live: "runtime,pin",
            runtime: None,
            body: view::fleet_summary(&fleet),
        },
        Region {
            id: "filters",
            live: "template",
            runtime: None,
            body: view::fleet_filters(&fleet),
        },
        Region {
            id: "fleet",
            live: "runtime,pin,plugin_update,event",
            runtime: None,
            body: view::fleet_table(&fleet, &viewer, now),
        },
        Region {
            id: "latest",
            live: "operation,event",
            runtime: None,
            body: maud::html! {
                (view::heading("Latest operations")) (view::operations_table(&ops.items, now, true))
                (view::heading("Latest health events")) (view::events_table(&events.items, now, true))
            },
        },
    ];
    respond(&headers, "Fleet", Nav::Fleet, &viewer, regions)
}

/// One page of the fleet with what its rows show, and (with `counts`) the
/// whole fleet's counts by status and of stale runtimes.
pub async fn load_fleet(
    state: &AppState,
    filter: FleetFilter,
    counts: bool,
) -> crate::error::Result<Fleet> {
    let services = &state.services;
    // A search that is not an exact id lists the ids from it on (ids sort
    // as text, so those starting with it come first).
    let search_from = filter.q.as_deref().map(|q| {
        q.trim_end_matches(|c: char| !c.is_ascii_alphanumeric())
            .to_string()
    });
    let after = match (&filter.after, &search_from) {
        (Some(a), _) => Some(a.clone()),
        (None, Some(q)) if !q.is_empty() => Some(q.clone()),
        _ => None,
    };
    let page = services
        .runtimes
        .list(&ListQuery {
            template: filter.template.clone(),
            status: filter.status.clone(),
            stale: filter.stale,
            limit: Some(FLEET_PAGE),
            after,
        })
        .await?;
    let mut items = page.items;
    let mut next = page.next;
    if let Some(prefix) = filter.q.as_deref() {
        // Past the ids that start with the search, the list is over.
        if let Some(cut) = items.iter().position(|r| !r.id.starts_with(prefix)) {
            items.truncate(cut);
            next = None;
        }
    }
    let templates = services.templates.list().await?;
    let mut pins = HashMap::new();
    for t in &templates {
        if let Some(pin) = services.pins.current(&t.name).await? {
            pins.insert(t.name.clone(), pin.digest.to_string());
        }
    }
    let mut by_status = BTreeMap::new();
    let (mut total, mut stale) = (0, 0);
    if counts {
        let all = services.runtimes.list(&ListQuery::default()).await?.items;
        total = all.len();
        for r in &all {
            *by_status.entry(r.status.as_str().to_string()).or_insert(0) += 1;
        }
        stale = services
            .runtimes
            .list(&ListQuery {
                stale: true,
                ..ListQuery::default()
            })
            .await?
            .items
            .len();
    }
    let recent = services
        .operations
        .health_events(None, None, Some(RECENT_EVENTS), None)
        .await?
        .items;
    let mut health: HashMap<&str, (String, i64)> = HashMap::new();
    for e in &recent {
        health
            .entry(e.runtime_id.as_str())
            .or_insert_with(|| (e.event_type.as_str().to_string(), e.at_ms));
    }
    let pending = services
        .plugins
        .updates(
            Some("pending"),
            None,
            None,
            Some(crate::services::operations::MAX_LIMIT),
        )
        .await?;
    let mut queued: HashMap<&str, usize> = HashMap::new();
    for u in &pending {
        *queued.entry(u.runtime_id.as_str()).or_insert(0) += 1;
    }
    let verdicts = services.stores.last_verdicts();
    let rows = items
        .into_iter()
        .map(|record| FleetRow {
            pin: pins.get(&record.template).cloned(),
            health: health.get(record.id.as_str()).cloned(),
            readiness: verdicts.get(&record.id).copied(),
            pending_updates: queued.get(record.id.as_str()).copied().unwrap_or(0),
            record,
        })
        .collect();
    Ok(Fleet {
        filter,
        templates: templates.into_iter().map(|t| t.name).collect(),
        rows,
        next,
        total,
        counts: by_status,
        stale,
    })
}

// ---------------------------------------------------------------- runtime

async fn runtime(
    State(state): State<AppState>,
    ConsoleViewer(viewer): ConsoleViewer,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Response {
    let services = &state.services;
    let record = page_try!(viewer, services.runtimes.get(&id).await);
    let pin = page_try!(viewer, services.pins.current(&record.template).await)
        .map(|p| p.digest.to_string());
    let readiness = match services.stores.readiness(&id).await {
        Ok(r) => Ok((r.ok, r.reason.to_string(), r.impact, r.diagnostics)),
        Err(e) => Err(e.message),
    };
    let plugins = page_try!(viewer, services.plugins.list(&id).await);
    let updates = page_try!(
        viewer,
        services
            .plugins
            .updates(Some("pending"), Some(&id), None, None)
            .await
    );
    let ops = page_try!(
        viewer,
        services
            .operations
            .list(Some(&id), None, Some(TIMELINE), None)
            .await
    );
    let events = page_try!(
        viewer,
        services
            .operations
            .health_events(Some(&id), None, Some(TIMELINE), None)
            .await
    );
    let now = services.ctx.now_ms();
    let detail = view::RuntimeDetail {
        record,
        pin,
        readiness,
    };
    let regions = vec![
        Region {
            id: "runtime",
            live: "runtime,pin,event",
            runtime: Some(id.clone()),
            body: view::runtime_summary(&detail, &viewer, now),
        },
        Region {
            id: "plugins",
            live: "plugin,plugin_update",
            runtime: Some(id.clone()),
            body: maud::html! { (view::heading("Plugins")) (view::plugins_table(&plugins, &updates, &viewer, now)) },
        },
        Region {
            id: "timeline",
            live: "operation,event",
            runtime: Some(id.clone()),
            body: maud::html! {
                (view::heading("Operations")) (view::operations_table(&ops.items, now, false))
                (view::heading("Health events")) (view::events_table(&events.items, now, false))
            },
        },
    ];
    respond(
        &headers,
        &format!("Runtime {id}"),
        Nav::Fleet,
        &viewer,
        regions,
    )
}

// -------------------------------------------------------------- templates

async fn templates(
    State(state): State<AppState>,
    ConsoleViewer(viewer): ConsoleViewer,
    headers: HeaderMap,
) -> Response {
    let services = &state.services;
    let list = page_try!(viewer, services.templates.list().await);
    let mut rows = Vec::new();
    for t in list {
        let pin =
            page_try!(viewer, services.pins.current(&t.name).await).map(|p| p.digest.to_string());
        rows.push((t.name.clone(), format!("{}:{}", t.image, t.tag), pin));
    }
    let regions = vec![Region {
        id: "templates",
        live: "template,pin",
        runtime: None,
        body: view::templates_table(&rows),
    }];
    respond(&headers, "Templates", Nav::Templates, &viewer, regions)
}

async fn template(
    State(state): State<AppState>,
    ConsoleViewer(viewer): ConsoleViewer,
    headers: HeaderMap,
    Path(name): Path<String>,
) -> Response {
    let services = &state.services;
    let t = page_try!(viewer, services.templates.get(&name).await);
    let history = page_try!(viewer, services.pins.history(&name, Some(TIMELINE)).await);
    let rollouts = page_try!(
        viewer,
        services.rollouts.list(Some(&name), Some(TIMELINE)).await
    );
    let now = services.ctx.now_ms();
    let image = format!("{}:{}", t.image, t.tag);
    let regions = vec![
        Region {
            id: "pins",
            live: "pin,template",
            runtime: None,
            body: maud::html! {
                p { "Image " code { (image) } ". " a href=(format!("/?template={name}")) { "Its runtimes" } }
                (view::heading("Pin history")) (view::pin_history(&history, now))
            },
        },
        Region {
            id: "rollouts",
            live: "rollout",
            runtime: None,
            body: maud::html! { (view::heading("Rollouts")) (view::rollouts_table(&rollouts, now)) },
        },
    ];
    respond(
        &headers,
        &format!("Template {name}"),
        Nav::Templates,
        &viewer,
        regions,
    )
}

// --------------------------------------------------------------- rollouts

async fn rollouts(
    State(state): State<AppState>,
    ConsoleViewer(viewer): ConsoleViewer,
    headers: HeaderMap,
) -> Response {
    let list = page_try!(viewer, state.services.rollouts.list(None, Some(100)).await);
    let now = state.services.ctx.now_ms();
    let regions = vec![Region {
        id: "rollouts",
        live: "rollout",
        runtime: None,
        body: view::rollouts_table(&list, now),
    }];
    respond(&headers, "Rollouts", Nav::Rollouts, &viewer, regions)
}

async fn rollout(
    State(state): State<AppState>,
    ConsoleViewer(viewer): ConsoleViewer,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Response {
    let (row, targets) = page_try!(viewer, state.services.rollouts.get(&id).await);
    let now = state.services.ctx.now_ms();
    let regions = vec![Region {
        id: "rollout",
        live: "rollout",
        runtime: None,
        body: view::rollout_detail(&row, &targets, &viewer, now),
    }];
    respond(
        &headers,
        &format!("Rollout of {}", row.template),
        Nav::Rollouts,
        &viewer,
        regions,
    )
}

// --------------------------------------------------------- plugin updates

#[derive(Deserialize, Default)]
struct UpdatesQuery {
    status: Option<String>,
    runtime: Option<String>,
}

async fn plugin_updates(
    State(state): State<AppState>,
    ConsoleViewer(viewer): ConsoleViewer,
    headers: HeaderMap,
    Query(q): Query<UpdatesQuery>,
) -> Response {
    let status = non_empty(q.status).unwrap_or_else(|| "pending".to_string());
    let runtime = non_empty(q.runtime);
    let updates = page_try!(
        viewer,
        state
            .services
            .plugins
            .updates(
                Some(&status),
                runtime.as_deref(),
                None,
                Some(crate::services::operations::MAX_LIMIT)
            )
            .await
    );
    let now = state.services.ctx.now_ms();
    let body = maud::html! {
        nav.tabs aria-label="Update status" {
            @for s in ["pending", "applied", "dismissed"] {
                @if s == status { a aria-current="page" href=(format!("/ui/plugin-updates?status={s}")) { (s) } }
                @else { a href=(format!("/ui/plugin-updates?status={s}")) { (s) } }
                " "
            }
        }
        (view::plugin_updates_table(&updates, &viewer, now))
    };
    let regions = vec![Region {
        id: "updates",
        live: "plugin_update",
        runtime: None,
        body,
    }];
    respond(
        &headers,
        "Plugin updates",
        Nav::PluginUpdates,
        &viewer,
        regions,
    )
}
