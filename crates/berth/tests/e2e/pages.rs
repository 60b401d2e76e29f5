//! Lists at scale, end to end through the HTTP API: keyset pages of
//! `GET /v1/runtimes` (`limit`, `after`, `next`) and of the logs
//! (`before`, `next`), on the in-memory read model (SQLite) and on keyset
//! SQL (PostgreSQL); reads after writes; the model rebuilt at boot.

use crate::common;

use std::collections::BTreeSet;

use berth::adapters::store::SqliteStore;
use berth::http::dto::RuntimeView;
use berth::ports::{RuntimeStore, Store};
use berth_core::operation::{Operation, OperationKind, Source};
use berth_core::runtime::RuntimeRecord;
use berth_core::status::RuntimeStatus;
use common::{Backend, Options, TestServer};
use reqwest::StatusCode;
use serde_json::Value;

fn record(id: &str, template: &str, at: i64) -> RuntimeRecord {
    let mut rec = RuntimeRecord::new(id, template, Default::default(), at);
    rec.status = RuntimeStatus::Stopped;
    rec.image_ref = Some("registry.example/acme/engine:latest".into());
    rec.generation = 1;
    rec
}

fn op(id: &str, rec: &RuntimeRecord) -> Operation {
    let mut op = Operation::begin(
        id.into(),
        OperationKind::Stop,
        Source::Api,
        rec.created_at_ms,
    )
    .for_runtime(&rec.id, &rec.template);
    op.succeed(rec.created_at_ms);
    op
}

/// Writes `n` stopped records (and their operations) through the running
/// server's own store, as its services would.
async fn seed(server: &TestServer, prefix: &str, n: usize) -> Vec<String> {
    let store = server_store(server);
    let mut ids = Vec::new();
    for i in 0..n {
        let rec = record(&format!("{prefix}{i:04}"), "engine", 1_000 + i as i64);
        store
            .record(Some(&rec), &op(&format!("op-{prefix}{i:04}"), &rec))
            .await
            .unwrap();
        ids.push(rec.id);
    }
    ids
}

fn server_store(server: &TestServer) -> std::sync::Arc<dyn Store> {
    server
        .server
        .as_ref()
        .expect("running")
        .services
        .ctx
        .store
        .clone()
}

fn ids_of(list: &Value, key: &str) -> Vec<String> {
    list[key]
        .as_array()
        .unwrap_or_else(|| panic!("no {key} array in {list}"))
        .iter()
        .map(|r| r["id"].as_str().unwrap().to_string())
        .collect()
}

/// Follows `next` from the first page of `path` (a query string with
/// `limit` already in it), with `cursor` as the name of the parameter.
async fn walk(server: &TestServer, path: &str, key: &str, cursor: &str) -> Vec<Vec<String>> {
    let mut pages = Vec::new();
    let mut next: Option<String> = None;
    loop {
        let url = match &next {
            Some(n) => format!("{path}&{cursor}={n}"),
            None => path.to_string(),
        };
        let (status, body) = server.get(&url).await;
        assert_eq!(status, StatusCode::OK, "{url}: {body}");
        pages.push(ids_of(&body, key));
        match body.get("next") {
            Some(Value::String(n)) => next = Some(n.clone()),
            None => return pages,
            Some(other) => panic!("next is not a string: {other}"),
        }
        assert!(pages.len() < 1_000, "pages do not end");
    }
}

async fn pages_cover_every_runtime_once(backend: Backend) {
    let server = TestServer::start_with(Options {
        backend,
        ..Options::default()
    })
    .await;
    let mut ids = seed(&server, "p", 25).await;
    ids.sort();

    let pages = walk(&server, "/v1/runtimes?limit=10", "runtimes", "after").await;
    let sizes: Vec<usize> = pages.iter().map(Vec::len).collect();
    assert_eq!(sizes, [10, 10, 5]);
    assert_eq!(pages.concat(), ids);

    // A limit that ends exactly on the last record: no `next`, and no
    // empty page after it.
    let pages = walk(&server, "/v1/runtimes?limit=5", "runtimes", "after").await;
    assert_eq!(pages.len(), 5);
    assert_eq!(pages.concat(), ids);

    // Without a limit: everything, no `next`.
    let (status, whole) = server.get("/v1/runtimes").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(ids_of(&whole, "runtimes"), ids);
    assert!(whole.get("next").is_none(), "{whole}");

    // Filters page too.
    let (_, stopped) = server
        .get("/v1/runtimes?status=stopped&template=engine&limit=24")
        .await;
    assert_eq!(ids_of(&stopped, "runtimes"), ids[..24]);
    assert_eq!(stopped["next"], ids[23]);
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn runtime_pages_cover_every_record_once_and_next_is_absent_on_the_last_sqlite() {
    pages_cover_every_runtime_once(Backend::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn runtime_pages_cover_every_record_once_and_next_is_absent_on_the_last_postgres() {
    pages_cover_every_runtime_once(Backend::Postgres).await;
}

/// A client pages through the API while the server's store takes new
/// records (before and after the client's place) and updates old ones:
/// every record that existed before the walk is listed exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pages_cover_every_record_once_while_records_are_added() {
    let server = TestServer::start().await;
    let before: Vec<String> = seed(&server, "m", 200)
        .await
        .into_iter()
        .filter(|id| id.ends_with(['0', '2', '4', '6', '8']))
        .collect();
    let store = server_store(&server);
    let writer = tokio::spawn(async move {
        for i in 0..300 {
            // New ids among the existing ones ("m0001a" after "m0001") and
            // at the end, and updates of existing records.
            let rec = record(&format!("m{:04}a", (i * 7) % 200), "engine", 5_000 + i);
            store
                .record(Some(&rec), &op(&format!("op-new-{i}"), &rec))
                .await
                .unwrap();
            let mut old = record(&format!("m{:04}", (i * 3) % 200), "engine", 6_000 + i);
            old.status = RuntimeStatus::Removed;
            store
                .record(Some(&old), &op(&format!("op-upd-{i}"), &old))
                .await
                .unwrap();
            tokio::task::yield_now().await;
        }
    });
    let pages = walk(&server, "/v1/runtimes?limit=17", "runtimes", "after").await;
    writer.await.unwrap();
    let seen = pages.concat();
    let unique: BTreeSet<&String> = seen.iter().collect();
    assert_eq!(unique.len(), seen.len(), "an id was listed twice");
    let mut sorted = seen.clone();
    sorted.sort();
    assert_eq!(sorted, seen, "pages are out of order");
    for id in &before {
        assert!(unique.contains(id), "{id} was never listed");
    }
    server.shutdown().await;
}

/// What this instance wrote is what it lists and shows at once: through
/// the API (a real start) and through its store.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_read_after_a_write_on_the_same_instance_sees_it() {
    let server = TestServer::start().await;
    seed(&server, "a", 3).await;
    server.put_app_template("web", "v1").await;
    let (status, started) = server.start_runtime("b-web", "web").await;
    assert_eq!(status, StatusCode::CREATED, "{started}");
    let (_, page) = server.get("/v1/runtimes?after=a0002&limit=1").await;
    let listed = &page["runtimes"][0];
    for field in ["id", "status", "container_id", "run_id", "generation"] {
        assert_eq!(listed[field], started[field], "{field}: {page}");
    }
    assert_eq!(listed["status"], "running");
    assert!(page.get("next").is_none());

    let (status, stopped) = server
        .post("/v1/runtimes/b-web/stop", serde_json::json!({}))
        .await;
    assert_eq!(status, StatusCode::OK, "{stopped}");
    let (_, page) = server.get("/v1/runtimes?template=web").await;
    assert_eq!(page["runtimes"][0]["status"], "stopped");
    assert_eq!(page["runtimes"][0]["updated_at"], stopped["updated_at"]);

    let store = server_store(&server);
    let mut rec = record("a0001", "other", 9_000);
    rec.status = RuntimeStatus::Failed;
    store.record(Some(&rec), &op("op-a1", &rec)).await.unwrap();
    let (_, one) = server.get("/v1/runtimes?after=a0000&limit=1").await;
    assert_eq!(one["runtimes"][0]["template"], "other");
    assert_eq!(one["runtimes"][0]["status"], "failed");
    assert_eq!(one["next"], "a0001");
    let (_, shown) = server.get("/v1/runtimes/a0001").await;
    assert_eq!(shown["status"], "failed");
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_limit_after_and_before_are_invalid_requests() {
    let server = TestServer::start().await;
    for (query, says) in [
        ("limit=0", "limit 0 is out of range"),
        ("limit=10001", "limit 10001 is out of range"),
        ("limit=abc", "query string is not valid"),
        ("limit=-1", "query string is not valid"),
        ("after=", "is not a runtime id"),
        ("after=Not%20An%20Id", "is not a runtime id"),
        ("after=..%2Fetc", "is not a runtime id"),
        ("page=2", "query string is not valid"),
    ] {
        let (status, body) = server.get(&format!("/v1/runtimes?{query}")).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{query}: {body}");
        assert_eq!(body["error"]["code"], "invalid_request", "{query}: {body}");
        let message = body["error"]["message"].as_str().unwrap();
        assert!(message.contains(says), "{query}: {message}");
    }
    for path in ["/v1/operations", "/v1/events", "/v1/notifications"] {
        for (query, says) in [
            ("limit=0", "out of range"),
            ("limit=1001", "out of range"),
            ("before=", "is not an entry id"),
            ("before=a%20b", "is not an entry id"),
            ("after=x", "query string is not valid"),
        ] {
            let (status, body) = server.get(&format!("{path}?{query}")).await;
            assert_eq!(status, StatusCode::BAD_REQUEST, "{path}?{query}: {body}");
            assert_eq!(body["error"]["code"], "invalid_request");
            let message = body["error"]["message"].as_str().unwrap();
            assert!(message.contains(says), "{path}?{query}: {message}");
        }
    }
    // The largest page is allowed; an `after` past the end is an empty
    // last page.
    let (status, body) = server.get("/v1/runtimes?limit=10000&after=zzz").await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["runtimes"], serde_json::json!([]));
    assert!(body.get("next").is_none());
    server.shutdown().await;
}

async fn log_pages(backend: Backend) {
    let server = TestServer::start_with(Options {
        backend,
        ..Options::default()
    })
    .await;
    let ids = seed(&server, "l", 12).await;
    let newest_first: Vec<String> = ids.iter().rev().map(|id| format!("op-{id}")).collect();
    let pages = walk(
        &server,
        "/v1/operations?kind=stop&limit=5",
        "operations",
        "before",
    )
    .await;
    let sizes: Vec<usize> = pages.iter().map(Vec::len).collect();
    assert_eq!(sizes, [5, 5, 2]);
    assert_eq!(pages.concat(), newest_first);
    // An id that names no operation: an empty page.
    let (status, body) = server.get("/v1/operations?before=op-unknown").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["operations"], serde_json::json!([]));
    assert!(body.get("next").is_none());
    // Events and notifications answer the same shape (none written here).
    for (path, key) in [
        ("/v1/events", "events"),
        ("/v1/notifications", "notifications"),
    ] {
        let (status, body) = server.get(&format!("{path}?limit=3")).await;
        assert_eq!(status, StatusCode::OK, "{body}");
        assert!(body[key].is_array());
        assert!(body.get("next").is_none());
    }
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn operation_pages_follow_before_sqlite() {
    log_pages(Backend::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn operation_pages_follow_before_postgres() {
    log_pages(Backend::Postgres).await;
}

/// Records written before boot, by the first run and by nobody else are
/// all in the model the next boot builds, exactly as the database holds
/// them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_model_rebuilt_after_a_restart_equals_the_database() {
    let data = tempfile::tempdir().unwrap();
    let file = data.path().join("berth.db");
    {
        let store = SqliteStore::open(&file).await.unwrap();
        for i in 0..30 {
            let rec = record(&format!("pre{i:03}"), "engine", i);
            store
                .record(Some(&rec), &op(&format!("op-pre{i}"), &rec))
                .await
                .unwrap();
        }
        store.close().await;
    }
    let first = TestServer::start_with(Options {
        data_dir: Some(data),
        ..Options::default()
    })
    .await;
    seed(&first, "run", 20).await;
    let (_, listed_by_first) = first.get("/v1/runtimes").await;
    let (data, owner) = first.stop_keeping_data().await;

    let truth: Vec<Value> = {
        let store = SqliteStore::open(&file).await.unwrap();
        let records = store.list_runtimes(&Default::default()).await.unwrap();
        store.close().await;
        records
            .into_iter()
            .map(|r| serde_json::to_value(RuntimeView::from(r)).unwrap())
            .collect()
    };
    assert_eq!(truth.len(), 50);
    assert_eq!(listed_by_first["runtimes"], Value::Array(truth.clone()));

    let second = TestServer::start_with(Options {
        data_dir: Some(data),
        owner: Some(owner),
        ..Options::default()
    })
    .await;
    let (_, listed) = second.get("/v1/runtimes").await;
    // The boot reconcile may settle records (none of these has a
    // container); compare what the database holds now.
    let now: Vec<Value> = server_store(&second)
        .list_runtimes(&Default::default())
        .await
        .unwrap()
        .into_iter()
        .map(|r| serde_json::to_value(RuntimeView::from(r)).unwrap())
        .collect();
    let direct = {
        let store = SqliteStore::open(&file).await.unwrap();
        let records = store.list_runtimes(&Default::default()).await.unwrap();
        store.close().await;
        records
            .into_iter()
            .map(|r| serde_json::to_value(RuntimeView::from(r)).unwrap())
            .collect::<Vec<_>>()
    };
    assert_eq!(now, direct, "the model is not the database");
    assert_eq!(listed["runtimes"], Value::Array(direct));
    second.shutdown().await;
}

/// The cursors and the `next` of each list are in the OpenAPI document.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_openapi_document_describes_the_cursors() {
    let server = TestServer::start().await;
    let (status, doc) = server.get("/openapi.json").await;
    assert_eq!(status, StatusCode::OK);
    let params = |path: &str| -> Vec<String> {
        doc["paths"][path]["get"]["parameters"]
            .as_array()
            .unwrap_or_else(|| panic!("no parameters for {path}"))
            .iter()
            .map(|p| p["name"].as_str().unwrap().to_string())
            .collect()
    };
    for (path, cursor) in [
        ("/v1/runtimes", "after"),
        ("/v1/operations", "before"),
        ("/v1/events", "before"),
        ("/v1/notifications", "before"),
    ] {
        let names = params(path);
        assert!(names.contains(&"limit".to_string()), "{path}: {names:?}");
        assert!(names.contains(&cursor.to_string()), "{path}: {names:?}");
    }
    for schema in [
        "RuntimeList",
        "OperationList",
        "HealthEventList",
        "NotificationList",
    ] {
        assert!(
            doc["components"]["schemas"][schema]["properties"]["next"].is_object(),
            "{schema} has no next"
        );
    }
    server.shutdown().await;
}

/// `berth runtime ls` follows `next` (pages of 1,000) and shows every
/// runtime once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cli_lists_every_runtime_page_by_page() {
    let server = TestServer::start().await;
    let mut ids = seed(&server, "c", 2_345).await;
    ids.sort();
    let run = |args: &[&str]| {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_berth"))
            .arg("--api-url")
            .arg(&server.base)
            .args(args)
            .env_remove("BERTH_API_TOKEN")
            .output()
            .expect("berth binary runs");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    };
    let json: Value = serde_json::from_str(&run(&["--output", "json", "runtime", "ls"])).unwrap();
    assert_eq!(ids_of(&json, "runtimes"), ids);
    assert!(json.get("next").is_none());
    let table = run(&["runtime", "ls", "--status", "stopped"]);
    assert_eq!(
        table.lines().count(),
        1 + ids.len(),
        "a header and a line each"
    );
    server.shutdown().await;
}
