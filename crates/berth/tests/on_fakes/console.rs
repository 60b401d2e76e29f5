//! The console over plain HTTP (no browser): sessions, CSRF and origin
//! checks, roles, fragments and error pages, on the real router with the
//! fakes behind the services.

use crate::world;

use axum::body::Body;
use axum::http::{header, Request, StatusCode};
use berth::config::ApiToken;
use berth::http::roles::Role;
use berth::http::{router, AppState, Auth};
use tower::ServiceExt;

const ADMIN: &str = "admin-secret";
const VIEW: &str = "viewer-secret";
const HOST: &str = "berth.test:7878";

fn app(world: &world::World, auth: Auth) -> axum::Router {
    router(AppState {
        services: world.boot(),
        tracker: tokio_util::task::TaskTracker::new(),
        auth: std::sync::Arc::new(auth),
    })
}

fn tokens() -> Auth {
    Auth::new(
        vec![
            ApiToken::from_secret("root", Role::Admin, ADMIN),
            ApiToken::from_secret("vera", Role::Viewer, VIEW),
        ],
        true,
    )
}

struct Answer {
    status: StatusCode,
    headers: axum::http::HeaderMap,
    body: String,
}

async fn send(app: &axum::Router, req: Request<Body>) -> Answer {
    let resp = app.clone().oneshot(req).await.expect("router answers");
    let status = resp.status();
    let headers = resp.headers().clone();
    let bytes = axum::body::to_bytes(resp.into_body(), 16 << 20)
        .await
        .expect("body");
    Answer {
        status,
        headers,
        body: String::from_utf8_lossy(&bytes).into_owned(),
    }
}

fn get(path: &str, cookie: Option<&str>) -> Request<Body> {
    let mut b = Request::get(path).header(header::HOST, HOST);
    if let Some(c) = cookie {
        b = b.header(header::COOKIE, format!("berth_session={c}"));
    }
    b.body(Body::empty()).unwrap()
}

/// Logs in through the form; answers the session cookie's value.
async fn log_in(app: &axum::Router, token: &str) -> String {
    let req = Request::post("/ui/login")
        .header(header::HOST, HOST)
        .header(header::ORIGIN, format!("http://{HOST}"))
        .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
        .body(Body::from(format!("token={token}")))
        .unwrap();
    let a = send(app, req).await;
    assert_eq!(a.status, StatusCode::SEE_OTHER, "{}", a.body);
    assert_eq!(a.headers[header::LOCATION], "/");
    let cookie = a.headers[header::SET_COOKIE].to_str().unwrap().to_string();
    assert!(
        cookie.contains("HttpOnly")
            && cookie.contains("SameSite=Strict")
            && cookie.contains("Max-Age="),
        "{cookie}"
    );
    assert!(!cookie.contains("Secure"), "plain HTTP: {cookie}");
    cookie
        .trim_start_matches("berth_session=")
        .split(';')
        .next()
        .unwrap()
        .to_string()
}

/// The CSRF token a page carries.
async fn csrf_of(app: &axum::Router, cookie: &str) -> String {
    let page = send(app, get("/", Some(cookie))).await;
    assert_eq!(page.status, StatusCode::OK);
    let at = page
        .body
        .find("name=\"berth-csrf\" content=\"")
        .expect("csrf meta")
        + 27;
    page.body[at..at + 64].to_string()
}

fn post(
    path: &str,
    cookie: Option<&str>,
    csrf: Option<&str>,
    origin: Option<&str>,
) -> Request<Body> {
    let mut b = Request::post(path).header(header::HOST, HOST);
    if let Some(c) = cookie {
        b = b.header(header::COOKIE, format!("berth_session={c}"));
    }
    if let Some(t) = csrf {
        b = b.header("x-berth-csrf", t);
    }
    if let Some(o) = origin {
        b = b.header(header::ORIGIN, o);
    }
    b.body(Body::empty()).unwrap()
}

#[tokio::test]
async fn without_a_session_the_pages_redirect_to_the_prompt_and_the_api_answers_401() {
    let world = world::World::new();
    let app = app(&world, tokens());
    for page in [
        "/",
        "/ui/templates",
        "/ui/rollouts",
        "/ui/plugin-updates",
        "/ui/runtimes/x",
    ] {
        let a = send(&app, get(page, None)).await;
        assert_eq!(a.status, StatusCode::SEE_OTHER, "{page}");
        assert_eq!(a.headers[header::LOCATION], "/ui/login", "{page}");
    }
    let a = send(&app, get("/v1/runtimes", Some("forged"))).await;
    assert_eq!(a.status, StatusCode::UNAUTHORIZED, "{}", a.body);
    let prompt = send(&app, get("/ui/login", None)).await;
    assert_eq!(prompt.status, StatusCode::OK);
    assert!(prompt.body.contains("type=\"password\""));
    assert!(prompt.headers[header::CONTENT_SECURITY_POLICY]
        .to_str()
        .unwrap()
        .contains("default-src 'none'"));
}

#[tokio::test]
async fn a_wrong_token_or_a_login_from_another_site_opens_no_session() {
    let world = world::World::new();
    let app = app(&world, tokens());
    let form = |token: &str, origin: &str| {
        Request::post("/ui/login")
            .header(header::HOST, HOST)
            .header(header::ORIGIN, origin)
            .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
            .body(Body::from(format!("token={token}")))
            .unwrap()
    };
    let wrong = send(&app, form("nope", &format!("http://{HOST}"))).await;
    assert_eq!(wrong.status, StatusCode::UNAUTHORIZED);
    assert!(wrong.body.contains("That token is not valid."));
    assert!(wrong.headers.get(header::SET_COOKIE).is_none());
    let cross = send(&app, form(ADMIN, "http://evil.test")).await;
    assert_eq!(cross.status, StatusCode::FORBIDDEN);
    assert!(cross.headers.get(header::SET_COOKIE).is_none());
}

#[tokio::test]
async fn a_session_reads_and_acts_only_with_its_csrf_token_from_its_own_origin() {
    let world = world::World::new();
    let app = app(&world, tokens());
    let cookie = log_in(&app, ADMIN).await;
    let page = send(&app, get("/", Some(&cookie))).await;
    assert_eq!(page.status, StatusCode::OK);
    assert!(page.body.contains("root (admin)"), "{}", page.body);
    assert!(!page.body.contains(ADMIN), "the token is on the page");
    let a = send(&app, get("/v1/runtimes", Some(&cookie))).await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.body);

    let csrf = csrf_of(&app, &cookie).await;
    let own = format!("http://{HOST}");
    // Without the CSRF token, with a wrong one, or from another origin: 403.
    for (token, origin) in [
        (None, Some(own.as_str())),
        (Some("0".repeat(64)), Some(own.as_str())),
        (Some(csrf.clone()), Some("http://evil.test")),
    ] {
        let a = send(
            &app,
            post(
                "/v1/admin/reconcile",
                Some(&cookie),
                token.as_deref(),
                origin,
            ),
        )
        .await;
        assert_eq!(
            a.status,
            StatusCode::FORBIDDEN,
            "{token:?} {origin:?}: {}",
            a.body
        );
        assert!(a.body.contains("\"code\":\"forbidden\""), "{}", a.body);
    }
    // A cross-site request is refused even with a bearer token.
    let a = send(
        &app,
        Request::post("/v1/admin/reconcile")
            .header(header::HOST, HOST)
            .header(header::ORIGIN, "http://evil.test")
            .header(header::AUTHORIZATION, format!("Bearer {ADMIN}"))
            .body(Body::empty())
            .unwrap(),
    )
    .await;
    assert_eq!(a.status, StatusCode::FORBIDDEN, "{}", a.body);
    // With both: the action happens.
    let a = send(
        &app,
        post(
            "/v1/admin/reconcile",
            Some(&cookie),
            Some(&csrf),
            Some(&own),
        ),
    )
    .await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.body);

    // Logging out needs the CSRF token too; then the cookie opens nothing.
    let logout = |csrf: &str| {
        Request::post("/ui/logout")
            .header(header::HOST, HOST)
            .header(header::ORIGIN, own.clone())
            .header(header::COOKIE, format!("berth_session={cookie}"))
            .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
            .body(Body::from(format!("csrf={csrf}")))
            .unwrap()
    };
    assert_eq!(
        send(&app, logout("wrong")).await.status,
        StatusCode::FORBIDDEN
    );
    assert_eq!(
        send(&app, get("/v1/runtimes", Some(&cookie))).await.status,
        StatusCode::OK
    );
    let out = send(&app, logout(&csrf)).await;
    assert_eq!(out.status, StatusCode::SEE_OTHER);
    assert!(out.headers[header::SET_COOKIE]
        .to_str()
        .unwrap()
        .contains("Max-Age=0"));
    assert_eq!(
        send(&app, get("/v1/runtimes", Some(&cookie))).await.status,
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(
        send(&app, get("/", Some(&cookie))).await.status,
        StatusCode::SEE_OTHER
    );
}

#[tokio::test]
async fn a_viewer_session_sees_no_actions_and_may_not_act() {
    let world = world::World::new();
    let app = app(&world, tokens());
    let cookie = log_in(&app, VIEW).await;
    let csrf = csrf_of(&app, &cookie).await;
    let page = send(&app, get("/", Some(&cookie))).await;
    assert!(page.body.contains("vera (viewer)"));
    assert!(!page.body.contains("data-method"), "{}", page.body);
    let a = send(
        &app,
        post(
            "/v1/admin/reconcile",
            Some(&cookie),
            Some(&csrf),
            Some(&format!("http://{HOST}")),
        ),
    )
    .await;
    assert_eq!(a.status, StatusCode::FORBIDDEN, "{}", a.body);
    assert!(a.body.contains("vera"), "{}", a.body);
}

#[tokio::test]
async fn an_open_console_needs_no_login_but_still_refuses_cross_site_posts() {
    let world = world::World::new();
    let app = app(&world, Auth::open());
    let page = send(&app, get("/", None)).await;
    assert_eq!(page.status, StatusCode::OK);
    assert!(page.body.contains("console (admin)"));
    assert!(!page.body.contains("/ui/logout"));
    let login = send(&app, get("/ui/login", None)).await;
    assert_eq!(login.status, StatusCode::SEE_OTHER);
    let a = send(
        &app,
        post("/v1/admin/reconcile", None, None, Some("http://evil.test")),
    )
    .await;
    assert_eq!(a.status, StatusCode::FORBIDDEN, "{}", a.body);
    let a = send(
        &app,
        post(
            "/v1/admin/reconcile",
            None,
            None,
            Some(&format!("http://{HOST}")),
        ),
    )
    .await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.body);
}

#[tokio::test]
async fn a_region_is_served_alone_and_a_missing_runtime_is_a_404_page() {
    let world = world::World::new();
    let app = app(&world, Auth::open());
    let mut req = get("/", None);
    req.headers_mut()
        .insert("x-berth-fragment", "summary".parse().unwrap());
    let a = send(&app, req).await;
    assert_eq!(a.status, StatusCode::OK);
    assert!(a.body.starts_with("<ul class=\"summary\""), "{}", a.body);
    assert!(!a.body.contains("<html"));
    let mut req = get("/", None);
    req.headers_mut()
        .insert("x-berth-fragment", "nope".parse().unwrap());
    assert_eq!(send(&app, req).await.status, StatusCode::NOT_FOUND);

    let a = send(&app, get("/ui/runtimes/ghost", None)).await;
    assert_eq!(a.status, StatusCode::NOT_FOUND);
    assert!(a.body.contains("runtime_not_found"), "{}", a.body);
    let a = send(&app, get("/ui/runtimes/NOT_AN_ID", None)).await;
    assert_eq!(a.status, StatusCode::BAD_REQUEST);
    let a = send(&app, get("/?status=bogus", None)).await;
    assert_eq!(a.status, StatusCode::BAD_REQUEST);
    assert!(a.body.contains("bogus"), "{}", a.body);
    let js = send(&app, get("/ui/assets/console.js", None)).await;
    assert_eq!(js.status, StatusCode::OK);
    assert!(js.headers[header::CONTENT_TYPE]
        .to_str()
        .unwrap()
        .starts_with("text/javascript"));
}
