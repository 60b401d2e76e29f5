//! Shared harness of the scenario tests: a real `berth` server in-process,
//! on the real Docker engine, with the local registry, SQLite or
//! PostgreSQL. Services come from `scripts/test-env.sh`; a missing one
//! fails the test (never skips it).

#![allow(dead_code)]

pub mod binary;
pub mod private_postgres;

use std::time::Duration;

use berth::app::{start, RunningServer};
use berth::config::{Config, ServeArgs};
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};

pub fn required_env(name: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| {
        panic!("{name} is not set: run the tests with `bash scripts/test-env.sh` (it starts the services they need)")
    })
}

/// `127.0.0.1:55000/berth-test/app` (tags v1, v2, latest; busybox httpd on 8080).
pub fn test_image() -> String {
    required_env("BERTH_TEST_IMAGE")
}

pub fn unique(prefix: &str) -> String {
    format!(
        "{prefix}{}",
        &uuid::Uuid::now_v7().simple().to_string()[22..]
    )
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

/// A fresh PostgreSQL database for one test.
pub async fn fresh_postgres_database() -> String {
    let admin = required_env("BERTH_TEST_DATABASE_URL");
    let name = unique("bt_");
    let pool = sqlx::PgPool::connect(&admin)
        .await
        .expect("connect to the test PostgreSQL");
    sqlx::query(&format!("CREATE DATABASE {name}"))
        .execute(&pool)
        .await
        .expect("create a test database");
    pool.close().await;
    let base = admin.rsplit_once('/').map(|(b, _)| b).unwrap_or(&admin);
    format!("{base}/{name}")
}

pub struct TestServer {
    pub server: Option<RunningServer>,
    pub base: String,
    pub client: reqwest::Client,
    pub owner: String,
    pub network: String,
    pub token: Option<String>,
    pub data_dir: tempfile::TempDir,
}

pub struct Options {
    pub backend: Backend,
    pub token: Option<String>,
    pub operation_timeout: Option<String>,
    /// The text of `berth.toml`.
    pub toml: String,
    /// Reuse a data directory (to restart "the same" berth).
    pub data_dir: Option<tempfile::TempDir>,
    pub owner: Option<String>,
    pub adoption_grace: Option<String>,
    pub redis_url: Option<String>,
    pub job_claim_idle: Option<String>,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            backend: Backend::Sqlite,
            token: None,
            operation_timeout: None,
            toml: String::new(),
            data_dir: None,
            owner: None,
            adoption_grace: None,
            redis_url: None,
            job_claim_idle: None,
        }
    }
}

impl TestServer {
    pub async fn start() -> TestServer {
        Self::start_with(Options::default()).await
    }

    pub async fn start_with(opts: Options) -> TestServer {
        let data_dir = match opts.data_dir {
            Some(d) => d,
            None => tempfile::tempdir().expect("tempdir"),
        };
        let owner = opts.owner.clone().unwrap_or_else(|| unique("bt-"));
        let database_url = match opts.backend {
            Backend::Sqlite => None,
            Backend::Postgres => Some(fresh_postgres_database().await),
        };
        let args = ServeArgs {
            listen: Some("127.0.0.1:0".into()),
            data_dir: Some(data_dir.path().to_path_buf()),
            database_url,
            owner: Some(owner.clone()),
            network: Some(owner.clone()),
            api_token: opts.token.clone(),
            operation_timeout: opts.operation_timeout.clone(),
            adoption_grace: opts.adoption_grace.clone(),
            redis_url: opts.redis_url.clone(),
            job_claim_idle: opts.job_claim_idle.clone(),
            reconcile_interval: Some("1s".into()),
            shutdown_timeout: Some("30s".into()),
            ..Default::default()
        };
        let config = Config::from_toml(&args, &opts.toml, "test").expect("config");
        let server = start(config).await.expect("berth starts");
        let base = format!("http://{}", server.addr);
        TestServer {
            server: Some(server),
            base,
            client: reqwest::Client::builder()
                .timeout(Duration::from_secs(300))
                .build()
                .expect("client"),
            network: owner.clone(),
            owner,
            token: opts.token,
            data_dir,
        }
    }

    pub async fn call(
        &self,
        method: Method,
        path: &str,
        body: Option<Value>,
    ) -> (StatusCode, Value) {
        let mut req = self.client.request(method, format!("{}{path}", self.base));
        if let Some(t) = &self.token {
            req = req.bearer_auth(t);
        }
        if let Some(b) = body {
            req = req.json(&b);
        }
        let resp = req.send().await.expect("request reaches berth");
        let status = resp.status();
        let text = resp.text().await.expect("body");
        let value = if text.is_empty() {
            Value::Null
        } else {
            serde_json::from_str(&text).unwrap_or(Value::String(text))
        };
        (status, value)
    }

    pub async fn get(&self, path: &str) -> (StatusCode, Value) {
        self.call(Method::GET, path, None).await
    }

    pub async fn post(&self, path: &str, body: Value) -> (StatusCode, Value) {
        self.call(Method::POST, path, Some(body)).await
    }

    pub async fn put_template(&self, name: &str, doc: Value) {
        let (status, body) = self
            .call(Method::PUT, &format!("/v1/templates/{name}"), Some(doc))
            .await;
        assert!(status.is_success(), "put template {name}: {status} {body}");
    }

    /// The app image at `tag`, serving /healthz on 8080.
    pub async fn put_app_template(&self, name: &str, tag: &str) {
        self.put_template(
            name,
            json!({"image": test_image(), "tag": tag, "port": 8080, "env": {"FROM_TEMPLATE": "t", "SHARED": "template"}}),
        )
        .await;
    }

    pub async fn start_runtime(&self, id: &str, template: &str) -> (StatusCode, Value) {
        self.post("/v1/runtimes", json!({"id": id, "template": template}))
            .await
    }

    pub async fn operations(&self, query: &str) -> Vec<Value> {
        let (status, body) = self.get(&format!("/v1/operations?{query}")).await;
        assert_eq!(status, StatusCode::OK, "{body}");
        body["operations"]
            .as_array()
            .expect("operations array")
            .clone()
    }

    /// Containers carrying this test's owner label.
    pub fn containers(&self) -> Vec<String> {
        docker_lines(&[
            "ps",
            "-aq",
            "--no-trunc",
            "--filter",
            &format!("label=io.berth.owner={}", self.owner),
        ])
    }

    pub async fn shutdown(mut self) {
        if let Some(s) = self.server.take() {
            s.shutdown().await;
        }
    }

    /// Stops the server but keeps its data directory and containers, to
    /// boot "the same" berth again.
    pub async fn stop_keeping_data(mut self) -> (tempfile::TempDir, String) {
        if let Some(s) = self.server.take() {
            s.shutdown().await;
        }
        let dir = std::mem::replace(&mut self.data_dir, tempfile::tempdir().expect("tempdir"));
        let owner = self.owner.clone();
        // The next server with this owner cleans up; this one must not.
        self.owner = unique("bt-gone-");
        self.network = self.owner.clone();
        (dir, owner)
    }
}

impl Drop for TestServer {
    // Runs even when a test panics: leave no container or network behind.
    fn drop(&mut self) {
        let ids = self.containers();
        if !ids.is_empty() {
            let mut args = vec!["rm", "-f", "-v"];
            args.extend(ids.iter().map(String::as_str));
            docker_lines(&args);
        }
        docker_lines(&["network", "rm", &self.network]);
    }
}

/// Runs the docker CLI and returns its non-empty output lines.
pub fn docker_lines(args: &[&str]) -> Vec<String> {
    let out = std::process::Command::new("docker")
        .args(args)
        .output()
        .expect("the docker CLI runs");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .map(str::to_string)
        .collect()
}

pub fn docker_inspect(id: &str) -> Option<Value> {
    let out = std::process::Command::new("docker")
        .args(["inspect", id])
        .output()
        .expect("the docker CLI runs");
    if !out.status.success() {
        return None;
    }
    let v: Value = serde_json::from_slice(&out.stdout).ok()?;
    v.as_array()?.first().cloned()
}

/// The digest the registry serves for `repository:tag` (HEAD on the
/// manifest, as the distribution API defines it).
pub async fn registry_digest(image: &str, tag: &str) -> String {
    let (host, path) = image.split_once('/').expect("image has a registry host");
    let url = format!("http://{host}/v2/{path}/manifests/{tag}");
    let resp = reqwest::Client::new()
        .head(&url)
        .header(
            "Accept",
            "application/vnd.docker.distribution.manifest.v2+json, application/vnd.oci.image.manifest.v1+json, \
             application/vnd.docker.distribution.manifest.list.v2+json, application/vnd.oci.image.index.v1+json",
        )
        .send()
        .await
        .expect("registry answers");
    assert!(resp.status().is_success(), "HEAD {url}: {}", resp.status());
    resp.headers()
        .get("docker-content-digest")
        .expect("Docker-Content-Digest header")
        .to_str()
        .expect("ascii")
        .to_string()
}

/// A throw-away redis-server of one test, on its own loopback port, with
/// append-only persistence so that it can be stopped and started again.
pub struct PrivateRedis {
    pub port: u16,
    pub dir: tempfile::TempDir,
    child: Option<std::process::Child>,
}

impl PrivateRedis {
    pub async fn start() -> PrivateRedis {
        // The shared Redis proves redis-server is installed (test-env.sh).
        required_env("BERTH_TEST_REDIS_URL");
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let mut r = PrivateRedis {
            port,
            dir: tempfile::tempdir().unwrap(),
            child: None,
        };
        r.resume().await;
        r
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// Starts (again) on the same port and data directory.
    pub async fn resume(&mut self) {
        let child = std::process::Command::new("redis-server")
            .args([
                "--port",
                &self.port.to_string(),
                "--bind",
                "127.0.0.1",
                "--appendonly",
                "yes",
                "--save",
                "",
            ])
            .arg("--dir")
            .arg(self.dir.path())
            .stdout(std::process::Stdio::null())
            .spawn()
            .expect("redis-server runs");
        self.child = Some(child);
        for _ in 0..100 {
            if let Ok(mut c) = self.connection().await {
                if redis::cmd("PING")
                    .query_async::<String>(&mut c)
                    .await
                    .is_ok()
                {
                    return;
                }
            }
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
        panic!("private redis-server did not start on {}", self.port);
    }

    /// Stops it, keeping its data (SHUTDOWN saves the append-only file).
    pub async fn pause(&mut self) {
        if let Ok(mut c) = self.connection().await {
            let _ = redis::cmd("SHUTDOWN").query_async::<()>(&mut c).await;
        }
        if let Some(mut child) = self.child.take() {
            let _ = child.wait();
        }
    }

    pub async fn connection(&self) -> redis::RedisResult<redis::aio::MultiplexedConnection> {
        redis::Client::open(self.url())?
            .get_multiplexed_async_connection()
            .await
    }

    pub async fn xadd(&self, stream: &str, fields: &[(&str, &str)]) {
        let mut c = self.connection().await.expect("redis");
        let mut cmd = redis::cmd("XADD");
        cmd.arg(stream).arg("*");
        for (k, v) in fields {
            cmd.arg(*k).arg(*v);
        }
        cmd.query_async::<String>(&mut c).await.expect("XADD");
    }

    /// Every entry of `stream`, oldest first, as field maps.
    pub async fn entries(&self, stream: &str) -> Vec<std::collections::BTreeMap<String, String>> {
        let mut c = self.connection().await.expect("redis");
        let v: redis::Value = redis::cmd("XRANGE")
            .arg(stream)
            .arg("-")
            .arg("+")
            .query_async(&mut c)
            .await
            .expect("XRANGE");
        let text = |v: &redis::Value| match v {
            redis::Value::BulkString(b) => String::from_utf8_lossy(b).to_string(),
            redis::Value::SimpleString(s) => s.clone(),
            other => panic!("unexpected {other:?}"),
        };
        let redis::Value::Array(items) = v else {
            return Vec::new();
        };
        items
            .iter()
            .map(|item| {
                let redis::Value::Array(parts) = item else {
                    panic!("entry {item:?}")
                };
                let redis::Value::Array(fields) = &parts[1] else {
                    panic!("fields {item:?}")
                };
                fields
                    .chunks(2)
                    .map(|kv| (text(&kv[0]), text(&kv[1])))
                    .collect()
            })
            .collect()
    }
}

impl Drop for PrivateRedis {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Polls `check` every 100 ms until it returns Some; fails after 60 s.
pub async fn eventually<T>(what: &str, mut check: impl AsyncFnMut() -> Option<T>) -> T {
    for _ in 0..600 {
        if let Some(v) = check().await {
            return v;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    panic!("timed out waiting for {what}");
}

/// Points `<registry>/berth-test/<repo>:<tag>` at the test image `source`
/// tag (v1, v2 or broken) and pushes it; returns the repository.
pub fn push_as(source: &str, repo: &str, tag: &str) -> String {
    let registry = required_env("BERTH_TEST_REGISTRY");
    let target = format!("{registry}/berth-test/{repo}");
    let src = format!("{}:{source}", test_image());
    assert!(std::process::Command::new("docker")
        .args(["tag", &src, &format!("{target}:{tag}")])
        .status()
        .unwrap()
        .success());
    let out = std::process::Command::new("docker")
        .args(["push", "-q", &format!("{target}:{tag}")])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "push: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    target
}

/// An image only the registry has: the app v1 image plus one layer of its
/// own, built, pushed as `<registry>/berth-test/<repo>:v1` and removed from
/// the engine, so a start must pull it (the new layer for real, the shared
/// ones as "Already exists"). Answers the repository.
pub fn push_registry_only_image(repo: &str) -> String {
    let registry = required_env("BERTH_TEST_REGISTRY");
    let target = format!("{registry}/berth-test/{repo}");
    let dir = tempfile::tempdir().expect("build context");
    std::fs::write(dir.path().join("layer.txt"), unique("layer")).unwrap();
    std::fs::write(
        dir.path().join("Dockerfile"),
        format!("FROM {}:v1\nCOPY layer.txt /layer.txt\n", test_image()),
    )
    .unwrap();
    let run = |args: &[&str]| {
        let out = std::process::Command::new("docker")
            .env("DOCKER_BUILDKIT", "0")
            .args(args)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "docker {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    let reference = format!("{target}:v1");
    run(&[
        "build",
        "-q",
        "-t",
        &reference,
        &dir.path().to_string_lossy(),
    ]);
    run(&["push", "-q", &reference]);
    run(&["rmi", &reference]);
    target
}
