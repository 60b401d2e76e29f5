//! A small WebDriver client for the console's browser tests: Debian's
//! `chromedriver` driving headless `chromium`, both from the paths
//! `scripts/test-env.sh` exports, spoken to over the W3C WebDriver
//! protocol with reqwest. Nothing is downloaded.

#![allow(dead_code)]

use std::process::Stdio;
use std::time::Duration;

use serde_json::{json, Value};
use tokio::process::{Child, Command};

use super::common::required_env;

/// One browser at a time: two cores do not run several chromiums well.
pub static ONE_BROWSER: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

pub struct Browser {
    driver: Child,
    url: String,
    session: String,
    http: reqwest::Client,
    _profile: tempfile::TempDir,
}

impl Browser {
    /// Starts chromedriver on a free loopback port and opens a headless
    /// session that records every network request.
    pub async fn launch() -> Browser {
        let chromium = required_env("BERTH_TEST_CHROMIUM");
        let chromedriver = required_env("BERTH_TEST_CHROMEDRIVER");
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free port")
            .port();
        let driver = Command::new(&chromedriver)
            .arg(format!("--port={port}"))
            .arg("--allowed-ips=127.0.0.1")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .unwrap_or_else(|e| panic!("{chromedriver} does not start: {e}"));
        let url = format!("http://127.0.0.1:{port}");
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(60))
            .build()
            .expect("client");
        let mut ready = false;
        for _ in 0..200 {
            if let Ok(r) = http.get(format!("{url}/status")).send().await {
                if r.status().is_success() {
                    ready = true;
                    break;
                }
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert!(ready, "chromedriver did not answer on {url}");
        let profile = tempfile::tempdir().expect("profile dir");
        let caps = json!({"capabilities": {"alwaysMatch": {
            "browserName": "chrome",
            "goog:chromeOptions": {
                "binary": chromium,
                "args": ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                         "--window-size=1280,900", "--no-first-run", "--disable-extensions",
                         "--disable-background-networking", "--disable-component-update",
                         "--disable-sync", "--metrics-recording-only", "--no-default-browser-check",
                         format!("--user-data-dir={}", profile.path().display())]
            },
            "goog:loggingPrefs": {"performance": "ALL"},
            // confirm() dialogs wait for the test to answer them.
            "unhandledPromptBehavior": "ignore"
        }}});
        let resp: Value = http
            .post(format!("{url}/session"))
            .json(&caps)
            .send()
            .await
            .expect("new session")
            .json()
            .await
            .expect("session json");
        let session = resp["value"]["sessionId"]
            .as_str()
            .unwrap_or_else(|| panic!("no WebDriver session: {resp}"))
            .to_string();
        Browser {
            driver,
            url,
            session,
            http,
            _profile: profile,
        }
    }

    async fn call(&self, method: reqwest::Method, path: &str, body: Option<Value>) -> Value {
        let mut req = self.http.request(
            method.clone(),
            format!("{}/session/{}{path}", self.url, self.session),
        );
        if let Some(b) = body {
            req = req.json(&b);
        } else if method == reqwest::Method::POST {
            req = req.json(&json!({}));
        }
        let resp = req.send().await.expect("chromedriver answers");
        let status = resp.status();
        let value: Value = resp.json().await.expect("webdriver json");
        assert!(
            status.is_success(),
            "WebDriver {method} {path}: {status} {value}"
        );
        value["value"].clone()
    }

    /// Like `call`, but an error answer is returned instead of failing.
    async fn try_call(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Value,
    ) -> Result<Value, Value> {
        let mut req = self.http.request(
            method.clone(),
            format!("{}/session/{}{path}", self.url, self.session),
        );
        if method != reqwest::Method::GET {
            req = req.json(&body);
        }
        let resp = req.send().await.expect("chromedriver answers");
        let ok = resp.status().is_success();
        let value: Value = resp.json().await.expect("webdriver json");
        if ok {
            Ok(value["value"].clone())
        } else {
            Err(value["value"].clone())
        }
    }

    pub async fn goto(&self, url: &str) {
        self.call(reqwest::Method::POST, "/url", Some(json!({"url": url})))
            .await;
        self.retry_network_change().await;
    }

    /// Chromium abandons a load with `ERR_NETWORK_CHANGED` when an
    /// interface comes or goes — Docker adding a container's veth does that.
    /// That is the test machine, not the page: load it again.
    async fn retry_network_change(&self) {
        for _ in 0..5 {
            let text = self
                .execute(
                    "return document.body ? document.body.innerText : ''",
                    json!([]),
                )
                .await;
            if !text.as_str().unwrap_or("").contains("ERR_NETWORK_CHANGED") {
                return;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
            self.call(reqwest::Method::POST, "/refresh", None).await;
        }
    }

    pub async fn current_url(&self) -> String {
        self.call(reqwest::Method::GET, "/url", None)
            .await
            .as_str()
            .unwrap_or("")
            .to_string()
    }

    pub async fn source(&self) -> String {
        self.call(reqwest::Method::GET, "/source", None)
            .await
            .as_str()
            .unwrap_or("")
            .to_string()
    }

    /// Runs a script in the page; `arguments[i]` are `args`.
    pub async fn execute(&self, script: &str, args: Value) -> Value {
        self.call(
            reqwest::Method::POST,
            "/execute/sync",
            Some(json!({"script": script, "args": args})),
        )
        .await
    }

    /// The element matching `css`, if any (no waiting).
    pub async fn find(&self, css: &str) -> Option<String> {
        let found = self
            .try_call(
                reqwest::Method::POST,
                "/element",
                json!({"using": "css selector", "value": css}),
            )
            .await
            .ok()?;
        found
            .as_object()
            .and_then(|o| o.values().next())
            .and_then(Value::as_str)
            .map(str::to_string)
    }

    /// Waits (up to 30 s) for an element matching `css`.
    pub async fn wait_for(&self, css: &str) -> String {
        for _ in 0..300 {
            if let Some(e) = self.find(css).await {
                return e;
            }
            self.retry_network_change().await;
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let text = self
            .execute(
                "return document.body ? document.body.innerText : ''",
                json!([]),
            )
            .await;
        panic!(
            "no element {css:?} appeared on {}; the page says:\n{}\nits source:\n{}",
            self.current_url().await,
            text.as_str().unwrap_or(""),
            self.source().await
        );
    }

    /// Waits (up to 30 s) until `script` returns true.
    pub async fn wait_until(&self, what: &str, script: &str) {
        for _ in 0..300 {
            if self.execute(script, json!([])).await == Value::Bool(true) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!(
            "timed out waiting for {what} on {}; page:\n{}",
            self.current_url().await,
            self.source().await
        );
    }

    pub async fn text(&self, element: &str) -> String {
        self.call(
            reqwest::Method::GET,
            &format!("/element/{element}/text"),
            None,
        )
        .await
        .as_str()
        .unwrap_or("")
        .to_string()
    }

    pub async fn click(&self, element: &str) {
        self.call(
            reqwest::Method::POST,
            &format!("/element/{element}/click"),
            None,
        )
        .await;
    }

    pub async fn type_into(&self, element: &str, text: &str) {
        self.call(
            reqwest::Method::POST,
            &format!("/element/{element}/value"),
            Some(json!({"text": text})),
        )
        .await;
    }

    /// Accepts the `confirm()` the page shows (waits up to 10 s for it).
    pub async fn accept_dialog(&self) -> String {
        for _ in 0..100 {
            if let Ok(text) = self
                .try_call(reqwest::Method::GET, "/alert/text", Value::Null)
                .await
            {
                self.call(reqwest::Method::POST, "/alert/accept", None)
                    .await;
                return text.as_str().unwrap_or("").to_string();
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("no dialog was shown");
    }

    pub async fn cookies(&self) -> Vec<Value> {
        self.call(reqwest::Method::GET, "/cookie", None)
            .await
            .as_array()
            .cloned()
            .unwrap_or_default()
    }

    /// Every URL the browser requested since the last call.
    pub async fn requested_urls(&self) -> Vec<String> {
        let url = format!("{}/session/{}/se/log", self.url, self.session);
        let resp: Value = self
            .http
            .post(url)
            .json(&json!({"type": "performance"}))
            .send()
            .await
            .expect("log")
            .json()
            .await
            .expect("log json");
        let mut urls = Vec::new();
        for entry in resp["value"].as_array().cloned().unwrap_or_default() {
            let Some(message) = entry["message"].as_str() else {
                continue;
            };
            let Ok(m) = serde_json::from_str::<Value>(message) else {
                continue;
            };
            if m["message"]["method"] == "Network.requestWillBeSent" {
                if let Some(u) = m["message"]["params"]["request"]["url"].as_str() {
                    urls.push(u.to_string());
                }
            }
        }
        urls
    }

    pub async fn screenshot(&self) -> Vec<u8> {
        use base64::Engine as _;
        let b64 = self.call(reqwest::Method::GET, "/screenshot", None).await;
        base64::engine::general_purpose::STANDARD
            .decode(b64.as_str().unwrap_or(""))
            .expect("screenshot is base64")
    }

    pub async fn set_window_size(&self, width: u32, height: u32) {
        self.call(
            reqwest::Method::POST,
            "/window/rect",
            Some(json!({"width": width, "height": height})),
        )
        .await;
    }

    pub async fn quit(mut self) {
        let _ = self
            .http
            .delete(format!("{}/session/{}", self.url, self.session))
            .send()
            .await;
        let _ = self.driver.kill().await;
    }
}
