//! Scoped tokens on the real router (services on the fakes): every
//! operation of the OpenAPI document, with each role, with no token and
//! with a wrong one; and the token's name as the actor.

use crate::world;

use std::sync::Arc;

use axum::body::Body;
use axum::http::{Method, Request, StatusCode};
use berth::config::{ApiToken, API_TOKEN_NAME};
use berth::http::openapi::ApiDoc;
use berth::http::roles::{required_role, Role, ROUTES};
use berth::http::{router, AppState, Auth};
use serde_json::{json, Value};
use tokio_util::task::TaskTracker;
use tower::ServiceExt;
use utoipa::OpenApi;
use world::World;

const ADMIN: &str = "admin-secret";
const OPERATOR: &str = "operator-secret";
const VIEWER: &str = "viewer-secret";

fn tokens() -> Vec<ApiToken> {
    vec![
        ApiToken::from_secret(API_TOKEN_NAME, Role::Admin, ADMIN),
        ApiToken::from_secret("ci", Role::Operator, OPERATOR),
        ApiToken::from_secret("grafana", Role::Viewer, VIEWER),
    ]
}

fn app_on(world: &World, auth: Auth) -> axum::Router {
    app_with(world.boot(), auth)
}

fn app_with(services: Arc<berth::services::Services>, auth: Auth) -> axum::Router {
    router(AppState {
        services,
        tracker: TaskTracker::new(),
        auth: Arc::new(auth),
    })
}

/// Every (method, path) of the OpenAPI document.
fn operations() -> Vec<(Method, String)> {
    let doc = serde_json::to_value(ApiDoc::openapi()).unwrap();
    let mut ops = Vec::new();
    for (path, item) in doc["paths"].as_object().expect("paths") {
        for method in item.as_object().expect("path item").keys() {
            if let Ok(m) = Method::from_bytes(method.to_ascii_uppercase().as_bytes()) {
                if matches!(
                    m,
                    Method::GET | Method::POST | Method::PUT | Method::DELETE | Method::PATCH
                ) {
                    ops.push((m, path.clone()));
                }
            }
        }
    }
    assert!(ops.len() > 30, "the document lists the API: {ops:?}");
    ops
}

/// A concrete URI for a route pattern.
fn concrete(pattern: &str) -> String {
    pattern
        .replace("{name}", "nothing-here")
        .replace("{id}", "nothing-here")
        .replace("{store}", "nothing-here")
}

async fn send(
    app: &axum::Router,
    method: Method,
    uri: &str,
    token: Option<&str>,
    body: Option<Value>,
    actor: Option<&str>,
) -> (StatusCode, Value) {
    let mut req = Request::builder().method(method.clone()).uri(uri);
    if let Some(t) = token {
        req = req.header("authorization", format!("Bearer {t}"));
    }
    if let Some(a) = actor {
        req = req.header("x-berth-actor", a);
    }
    let body = match body {
        Some(b) => {
            req = req.header("content-type", "application/json");
            Body::from(b.to_string())
        }
        None if method == Method::GET || method == Method::DELETE => Body::empty(),
        None => {
            req = req.header("content-type", "application/json");
            Body::from("{}")
        }
    };
    let resp = tokio::time::timeout(
        std::time::Duration::from_secs(30),
        app.clone().oneshot(req.body(body).unwrap()),
    )
    .await
    .unwrap_or_else(|_| panic!("{uri} answers"))
    .unwrap();
    let status = resp.status();
    // The change stream's body never ends: its status and type are the
    // answer.
    let event_stream = resp
        .headers()
        .get("content-type")
        .is_some_and(|v| v.as_bytes().starts_with(b"text/event-stream"));
    if event_stream {
        return (status, Value::String("text/event-stream".into()));
    }
    let bytes = axum::body::to_bytes(resp.into_body(), usize::MAX)
        .await
        .unwrap();
    let value = serde_json::from_slice(&bytes)
        .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into_owned()));
    (status, value)
}

#[test]
fn every_v1_operation_of_the_document_has_a_role_and_the_table_nothing_else() {
    let ops = operations();
    let unclassified: Vec<String> = ops
        .iter()
        .filter(|(m, p)| p.starts_with("/v1/") && required_role(m, p).is_none())
        .map(|(m, p)| format!("{m} {p}"))
        .collect();
    assert!(
        unclassified.is_empty(),
        "classify these routes in crates/berth/src/http/roles.rs: {unclassified:?}"
    );
    for (method, route, _) in ROUTES {
        assert!(
            ops.iter().any(|(m, p)| m.as_str() == *method && p == route),
            "{method} {route} is in the role table but not in the API document"
        );
    }
}

#[tokio::test]
async fn each_role_is_allowed_and_refused_where_it_should_be_on_every_operation() {
    let world = World::new();
    let app = app_on(&world, Auth::new(tokens(), true));
    let mut checked = 0;
    for (method, pattern) in operations() {
        let uri = concrete(&pattern);
        let case = format!("{method} {pattern}");
        if !pattern.starts_with("/v1/") {
            // /healthz and /metrics are open.
            let (status, body) = send(&app, method.clone(), &uri, None, None, None).await;
            assert!(
                status != StatusCode::UNAUTHORIZED && status != StatusCode::FORBIDDEN,
                "{case} is open: {status} {body}"
            );
            continue;
        }
        let needed = required_role(&method, &pattern).expect("classified (see the test above)");

        let (status, body) = send(&app, method.clone(), &uri, None, None, None).await;
        assert_eq!(
            status,
            StatusCode::UNAUTHORIZED,
            "{case} without a token: {body}"
        );
        assert_eq!(body["error"]["code"], "unauthorized", "{case}");
        let (status, body) = send(&app, method.clone(), &uri, Some("wrong"), None, None).await;
        assert_eq!(
            status,
            StatusCode::UNAUTHORIZED,
            "{case} with a wrong token: {body}"
        );
        assert_eq!(body["error"]["code"], "unauthorized", "{case}");

        for (role, name, secret) in [
            (Role::Viewer, "grafana", VIEWER),
            (Role::Operator, "ci", OPERATOR),
            (Role::Admin, "admin", ADMIN),
        ] {
            let (status, body) = send(&app, method.clone(), &uri, Some(secret), None, None).await;
            if role.allows(needed) {
                assert!(
                    status != StatusCode::UNAUTHORIZED && status != StatusCode::FORBIDDEN,
                    "{case} as {role}: allowed, but {status} {body}"
                );
            } else {
                assert_eq!(status, StatusCode::FORBIDDEN, "{case} as {role}: {body}");
                assert_eq!(body["error"]["code"], "forbidden", "{case} as {role}");
                let message = body["error"]["message"].as_str().unwrap();
                assert!(
                    message.contains(&format!("the {needed} role"))
                        && message.contains(&format!("{name:?} has the {role} role")),
                    "{case} as {role}: {message}"
                );
            }
            checked += 1;
        }
    }
    assert!(checked >= 3 * 35, "{checked} checks");
}

#[tokio::test]
async fn the_table_matches_what_each_role_was_promised() {
    use Role::*;
    for (method, route, role) in [
        ("GET", "/v1/runtimes", Viewer),
        ("GET", "/v1/stream", Viewer),
        ("GET", "/v1/status", Viewer),
        ("POST", "/v1/runtimes", Operator),
        ("POST", "/v1/runtimes/{id}/restart", Operator),
        ("DELETE", "/v1/runtimes/{id}", Operator),
        ("POST", "/v1/plugin-updates/apply", Operator),
        ("POST", "/v1/rollouts/{id}/abort", Operator),
        ("POST", "/v1/runtimes/{id}/store/batches", Operator),
        ("PUT", "/v1/templates/{name}", Admin),
        ("POST", "/v1/templates/{name}/pin", Admin),
        ("DELETE", "/v1/templates/{name}/pin", Admin),
        ("POST", "/v1/admin/reconcile", Admin),
        ("POST", "/v1/admin/plugins/sweep", Admin),
    ] {
        let m = Method::from_bytes(method.as_bytes()).unwrap();
        assert_eq!(required_role(&m, route), Some(role), "{method} {route}");
    }
}

const DIGEST: &str = "sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

/// Promotes a pin as `token` claiming to be `mallory`; returns the pin's
/// `promoted_by` and the operation's `actor`.
async fn promote_as(app: &axum::Router, token: Option<&str>) -> (Value, Value) {
    let (status, body) = send(
        app,
        Method::PUT,
        "/v1/templates/app",
        token,
        Some(json!({"image": world::REPO})),
        None,
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let (status, body) = send(
        app,
        Method::POST,
        "/v1/templates/app/pin",
        token,
        Some(json!({"digest": DIGEST})),
        Some("mallory"),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let promoted_by = body["promoted_by"].clone();
    let (status, body) = send(
        app,
        Method::GET,
        "/v1/operations?kind=pin_promote",
        token,
        None,
        None,
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    (
        promoted_by,
        body["operations"][0]["details"]["actor"].clone(),
    )
}

#[tokio::test]
async fn a_named_token_is_the_actor_whatever_the_header_says() {
    let mut tokens = tokens();
    tokens.push(ApiToken::from_secret(
        "release-bot",
        Role::Admin,
        "bot-secret",
    ));
    let world = World::new();
    let app = app_on(&world, Auth::new(tokens, true));
    let (promoted_by, actor) = promote_as(&app, Some("bot-secret")).await;
    assert_eq!(promoted_by, "release-bot");
    assert_eq!(actor, "release-bot");
}

#[tokio::test]
async fn with_only_api_token_or_no_token_the_header_still_names_the_actor() {
    let world = World::new();
    let only_api_token = vec![ApiToken::from_secret(API_TOKEN_NAME, Role::Admin, ADMIN)];
    let app = app_on(&world, Auth::new(only_api_token, false));
    let (promoted_by, actor) = promote_as(&app, Some(ADMIN)).await;
    assert_eq!(promoted_by, "mallory");
    assert_eq!(actor, "mallory");

    let world = World::new();
    let open = app_on(&world, Auth::open());
    let (promoted_by, _) = promote_as(&open, None).await;
    assert_eq!(promoted_by, "mallory");
}

#[tokio::test(start_paused = true)]
async fn resuming_a_halted_rollout_re_promotes_the_pin_as_the_token() {
    use berth::fakes::probe::Answer;
    let w = World::new();
    w.publish("stable", &world::digest(1));
    let s = w.boot();
    world::put_template(&s, "trk", world::tracked(1)).await;
    world::start_runtimes(&s, "trk").await;
    s.watcher.tick().await.unwrap();
    // The new digest never gets healthy: the rollout halts, the pin goes back.
    w.publish("stable", &world::digest(2));
    w.probe.script("http://", Answer::Unhealthy);
    s.watcher.tick().await.unwrap();
    s.rollouts.settle().await;
    w.probe.script("http://", Answer::Healthy);
    let id = s.ctx.store.list_rollouts(Some("trk"), 1).await.unwrap()[0]
        .id
        .clone();

    let app = app_with(s.clone(), Auth::new(tokens(), true));
    let (status, body) = send(
        &app,
        Method::POST,
        &format!("/v1/rollouts/{id}/resume"),
        Some(OPERATOR),
        None,
        Some("mallory"),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let (status, pin) = send(
        &app,
        Method::GET,
        "/v1/templates/trk/pin",
        Some(VIEWER),
        None,
        None,
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{pin}");
    assert_eq!(pin["digest"], world::digest(2).as_str());
    assert_eq!(pin["promoted_by"], "ci");
    s.rollouts.settle().await;
}
