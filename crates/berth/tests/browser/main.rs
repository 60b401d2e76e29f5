//! The console in a real headless browser (Debian's chromium through its
//! chromedriver): the token prompt, the live fleet, a clicked action in the
//! operation log with its actor, a refused cross-site POST, and no request
//! to another host. Real berth, real Docker, real registry.

mod chromium;
#[path = "../common/mod.rs"]
mod common;

use reqwest::StatusCode;
use serde_json::{json, Value};

use chromium::{Browser, ONE_BROWSER};
use common::{eventually, Options, TestServer};

const ADMIN: &str = "console-admin-secret";
const ALICE: &str = "alice-operator-secret";

/// A berth with the admin token and `alice` (operator), a template and
/// two running runtimes.
async fn fleet() -> (TestServer, String, [String; 2]) {
    let server = TestServer::start_with(Options {
        token: Some(ADMIN.into()),
        toml: format!("[[tokens]]\nname = \"alice\"\nrole = \"operator\"\ntoken = \"{ALICE}\"\n"),
        ..Options::default()
    })
    .await;
    let template = common::unique("web");
    server.put_app_template(&template, "v1").await;
    let ids = [common::unique("rt-a"), common::unique("rt-b")];
    for id in &ids {
        let (status, body) = server.start_runtime(id, &template).await;
        assert_eq!(status, StatusCode::CREATED, "{body}");
    }
    (server, template, ids)
}

async fn log_in(b: &Browser, server: &TestServer, token: &str) {
    b.goto(&format!("{}/", server.base)).await;
    let input = b.wait_for("#token").await;
    b.type_into(&input, token).await;
    let submit = b.wait_for("#login button[type=submit]").await;
    b.click(&submit).await;
    b.wait_for("table.fleet").await;
}

async fn status_of(server: &TestServer, id: &str) -> String {
    let (status, body) = server.get(&format!("/v1/runtimes/{id}")).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    body["status"].as_str().unwrap_or("").to_string()
}

#[tokio::test(flavor = "multi_thread")]
async fn the_token_prompt_shows_nothing_until_a_correct_token_opens_a_session() {
    let _one = ONE_BROWSER.lock().await;
    let (server, template, ids) = fleet().await;
    let b = Browser::launch().await;

    b.goto(&format!("{}/", server.base)).await;
    b.wait_for("#token").await;
    assert!(b.current_url().await.ends_with("/ui/login"));
    let prompt = b.source().await;
    for id in &ids {
        assert!(!prompt.contains(id.as_str()), "the prompt shows {id}");
    }
    assert!(!prompt.contains(&template));

    // A wrong token: an error, still nothing of the fleet, no session.
    let input = b.wait_for("#token").await;
    b.type_into(&input, "not-the-token").await;
    b.click(&b.wait_for("#login button[type=submit]").await)
        .await;
    let error = b.wait_for("#login .error").await;
    assert_eq!(b.text(&error).await, "That token is not valid.");
    assert!(!b.source().await.contains(ids[0].as_str()));
    assert!(b.cookies().await.is_empty());

    log_in(&b, &server, ALICE).await;
    for id in &ids {
        b.wait_for(&format!("tr[data-id='{id}']")).await;
    }
    let row = b
        .wait_for(&format!("tr[data-id='{}'] .badge[data-status]", ids[0]))
        .await;
    assert_eq!(b.text(&row).await, "running");
    let url = b.current_url().await;
    assert!(!url.contains(ALICE), "the token is in the URL {url}");
    assert!(
        !b.source().await.contains(ALICE),
        "the token is in the page"
    );

    // The session cookie: HttpOnly, SameSite=Strict, with an expiry, and
    // out of reach of the page's scripts.
    let cookies = b.cookies().await;
    let session = cookies
        .iter()
        .find(|c| c["name"] == "berth_session")
        .unwrap_or_else(|| panic!("no session cookie in {cookies:?}"));
    assert_eq!(session["httpOnly"], Value::Bool(true), "{session}");
    assert_eq!(session["sameSite"], "Strict", "{session}");
    assert!(session["expiry"].as_u64().is_some(), "{session}");
    assert_eq!(b.execute("return document.cookie", json!([])).await, "");

    // Log out: back to the prompt, and the old session opens nothing.
    b.click(&b.wait_for("form[action='/ui/logout'] button").await)
        .await;
    b.wait_for("#token").await;
    b.goto(&format!("{}/", server.base)).await;
    b.wait_for("#token").await;

    b.quit().await;
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn changes_made_through_the_api_appear_on_the_open_page_without_a_reload() {
    let _one = ONE_BROWSER.lock().await;
    let (server, template, ids) = fleet().await;
    let b = Browser::launch().await;
    log_in(&b, &server, ALICE).await;
    b.wait_until(
        "the stream to connect",
        "return document.getElementById('live-state').dataset.state === 'live'",
    )
    .await;
    // A mark a reload would wipe.
    b.execute("window.__berthMark = 'still here'", json!([]))
        .await;

    let (status, body) = server
        .post(&format!("/v1/runtimes/{}/stop", ids[0]), json!({}))
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    b.wait_until(
        "the stopped runtime's row to say so",
        &format!("const b = document.querySelector(\"tr[data-id='{}'] .badge[data-status]\"); return !!b && b.textContent === 'stopped'", ids[0]),
    )
    .await;

    let third = common::unique("rt-c");
    let (status, body) = server.start_runtime(&third, &template).await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    b.wait_until(
        "the new runtime to be listed",
        &format!("return !!document.querySelector(\"tr[data-id='{third}']\")"),
    )
    .await;
    assert_eq!(
        b.execute("return window.__berthMark", json!([])).await,
        "still here",
        "the page reloaded"
    );

    b.quit().await;
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_clicked_stop_happens_after_confirmation_and_is_logged_with_the_actor() {
    let _one = ONE_BROWSER.lock().await;
    let (server, _template, ids) = fleet().await;
    let b = Browser::launch().await;
    log_in(&b, &server, ALICE).await;

    let stop = b
        .wait_for(&format!(
            "tr[data-id='{}'] button[data-path$='/stop']",
            ids[1]
        ))
        .await;
    b.click(&stop).await;
    let question = b.accept_dialog().await;
    assert_eq!(question, format!("Stop runtime {}?", ids[1]));
    eventually("the runtime to stop", async || {
        (status_of(&server, &ids[1]).await == "stopped").then_some(())
    })
    .await;
    b.wait_until(
        "the row to show it",
        &format!("const b = document.querySelector(\"tr[data-id='{}'] .badge[data-status]\"); return !!b && b.textContent === 'stopped'", ids[1]),
    )
    .await;
    let ops = server
        .operations(&format!("runtime={}&kind=stop", ids[1]))
        .await;
    assert_eq!(ops.len(), 1, "{ops:?}");
    assert_eq!(ops[0]["outcome"], "success");
    assert_eq!(ops[0]["details"]["actor"], "alice", "{:?}", ops[0]);
    // The other runtime was not touched.
    assert_eq!(status_of(&server, &ids[0]).await, "running");

    b.quit().await;
    server.shutdown().await;
}

/// A page on another origin (same site: another port of 127.0.0.1, so the
/// SameSite cookie does go along) that POSTs a stop to berth.
async fn attacker_page(target: &str) -> (String, tokio::task::JoinHandle<()>) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let page = format!(
        "<!DOCTYPE html><html><body><form id=f method=post action=\"{target}\"></form>\
         <script>document.getElementById('f').submit()</script></body></html>"
    );
    let task = tokio::spawn(async move {
        while let Ok((mut conn, _)) = listener.accept().await {
            let mut buf = [0u8; 4096];
            let _ = conn.read(&mut buf).await;
            let resp = format!(
                "HTTP/1.1 200 OK\r\ncontent-type: text/html\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{page}",
                page.len()
            );
            let _ = conn.write_all(resp.as_bytes()).await;
        }
    });
    (format!("http://{addr}/"), task)
}

#[tokio::test(flavor = "multi_thread")]
async fn a_cross_site_post_carrying_the_session_cookie_is_refused_and_changes_nothing() {
    let _one = ONE_BROWSER.lock().await;
    let (server, _template, ids) = fleet().await;
    let b = Browser::launch().await;
    log_in(&b, &server, ALICE).await;

    let (attacker, task) =
        attacker_page(&format!("{}/v1/runtimes/{}/stop", server.base, ids[0])).await;
    b.goto(&attacker).await;
    b.wait_until(
        "the forged form to be answered",
        "return document.body !== null && document.body.innerText.includes('cross-site request refused')",
    )
    .await;
    let answer = b.execute("return document.body.innerText", json!([])).await;
    let answer: Value = serde_json::from_str(answer.as_str().unwrap_or("")).expect("a JSON error");
    assert_eq!(answer["error"]["code"], "forbidden", "{answer}");

    assert_eq!(status_of(&server, &ids[0]).await, "running");
    assert!(server
        .operations(&format!("runtime={}&kind=stop", ids[0]))
        .await
        .is_empty());
    task.abort();
    b.quit().await;
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn every_page_loads_only_from_berth_itself() {
    let _one = ONE_BROWSER.lock().await;
    let (server, template, ids) = fleet().await;
    let b = Browser::launch().await;
    log_in(&b, &server, ALICE).await;
    let pages = [
        "/".to_string(),
        format!("/?template={template}&status=running"),
        format!("/ui/runtimes/{}", ids[0]),
        "/ui/templates".to_string(),
        format!("/ui/templates/{template}"),
        "/ui/rollouts".to_string(),
        "/ui/plugin-updates".to_string(),
    ];
    for page in &pages {
        b.goto(&format!("{}{page}", server.base)).await;
        b.wait_for("main h1").await;
        b.wait_until(
            "the page's script to run",
            "return !!document.getElementById('live-state')",
        )
        .await;
    }
    // The search box finds one runtime by its id.
    b.goto(&format!("{}/", server.base)).await;
    let search = b.wait_for("input[name=q]").await;
    b.type_into(&search, &ids[1]).await;
    b.click(&b.wait_for("form.filters button[type=submit]").await)
        .await;
    b.wait_until(
        "the runtime's page",
        &format!("return location.pathname === '/ui/runtimes/{}'", ids[1]),
    )
    .await;

    // At a phone's width nothing is wider than the screen, and the fleet's
    // actions can be reached by keyboard (Tab lands on real buttons).
    b.set_window_size(390, 844).await;
    b.goto(&format!("{}/", server.base)).await;
    b.wait_for("table.fleet").await;
    let widths = b
        .execute(
            "return [document.documentElement.scrollWidth, window.innerWidth]",
            json!([]),
        )
        .await;
    assert!(
        widths[0].as_u64() <= widths[1].as_u64(),
        "wider than a phone: {widths}"
    );
    let focusable = b
        .execute(
            "return Array.from(document.querySelectorAll('table.fleet button')).every(b => b.tabIndex === 0)",
            json!([]),
        )
        .await;
    assert_eq!(focusable, Value::Bool(true));
    b.set_window_size(1280, 900).await;

    if let Ok(path) = std::env::var("BERTH_SCREENSHOT") {
        // A fuller fleet for the README's picture: more runtimes, one stopped.
        for n in 0..4 {
            let (status, body) = server.start_runtime(&format!("agent-{n}"), &template).await;
            assert_eq!(status, StatusCode::CREATED, "{body}");
        }
        let (status, body) = server.post("/v1/runtimes/agent-2/stop", json!({})).await;
        assert_eq!(status, StatusCode::OK, "{body}");
        let (_, running) = server.get(&format!("/v1/runtimes/{}", ids[0])).await;
        let (status, body) = server
            .post(
                &format!("/v1/templates/{template}/pin"),
                json!({"digest": running["image_digest"], "reason": "vetted build"}),
            )
            .await;
        assert_eq!(status, StatusCode::OK, "{body}");
        b.goto(&format!("{}/", server.base)).await;
        b.wait_until(
            "the stream to connect",
            "return document.getElementById('live-state').dataset.state === 'live'",
        )
        .await;
        std::fs::write(&path, b.screenshot().await).expect("write the screenshot");
    }

    let urls = b.requested_urls().await;
    assert!(urls.len() >= pages.len(), "{urls:?}");
    let foreign: Vec<&String> = urls
        .iter()
        // The browser's own pages (chrome://, about:, data:) are not network.
        .filter(|u| {
            let network = ["http:", "https:", "ws:", "wss:", "ftp:"]
                .iter()
                .any(|s| u.starts_with(s));
            network && !u.starts_with(&format!("{}/", server.base))
        })
        .collect();
    assert!(
        foreign.is_empty(),
        "requests left for another host: {foreign:?}"
    );
    b.quit().await;
    server.shutdown().await;
}
