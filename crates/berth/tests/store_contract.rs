//! The `Store` contract: one suite, run against every adapter.
//!
//! Each case in `cases` is an async fn taking a [`Ctx`]; the `contract!`
//! macro turns it into `sqlite::<case>` and `postgres::<case>` tests. SQLite
//! runs in a temp dir. PostgreSQL needs `BERTH_TEST_DATABASE_URL` (an admin
//! URL; `scripts/test-env.sh` provides one) and fails without it; every
//! case gets a fresh database, dropped afterwards.

use std::collections::BTreeMap;
use std::future::Future;
use std::path::PathBuf;
use std::str::FromStr;
use std::sync::Arc;

use berth::adapters::store::{self, PostgresStore, SqliteStore};
use berth::ports::store::{OperationFilter, RuntimeFilter, Store, StoreError};
use berth::template_doc::TemplateDoc;
use berth_core::image::Digest;
use berth_core::operation::{Operation, OperationKind, Outcome, Source};
use berth_core::pin::{Pin, PinAction, PinHistoryEntry};
use berth_core::runtime::{LastError, RuntimeRecord};
use berth_core::status::RuntimeStatus;
use berth_core::template::Template;
use futures_util::FutureExt;
use sqlx::postgres::PgConnectOptions;
use sqlx::sqlite::SqliteConnectOptions;
use sqlx::{ConnectOptions, Connection, Executor};

// --- harness ----------------------------------------------------------------

enum Backend {
    Sqlite(PathBuf),
    Postgres(Box<PgConnectOptions>),
}

/// What a case gets: the store under test, and a side door for raw SQL.
struct Ctx {
    store: Arc<dyn Store>,
    backend: Backend,
}

impl Ctx {
    /// Runs `sql` on its own connection, behind the store's back.
    async fn exec(&self, sql: &str) {
        match &self.backend {
            Backend::Sqlite(path) => {
                let mut conn = SqliteConnectOptions::new()
                    .filename(path)
                    .connect()
                    .await
                    .unwrap();
                conn.execute(sql).await.unwrap();
                conn.close().await.unwrap();
            }
            Backend::Postgres(options) => {
                let mut conn = options.connect().await.unwrap();
                conn.execute(sql).await.unwrap();
                conn.close().await.unwrap();
            }
        }
    }
}

async fn run_sqlite<F, Fut>(case: F)
where
    F: FnOnce(Ctx) -> Fut,
    Fut: Future<Output = ()>,
{
    let dir = tempfile::tempdir().unwrap();
    // The default location: `<data_dir>/berth.db`, directories created.
    let data_dir = dir.path().join("data");
    let store = store::connect("", &data_dir).await.unwrap();
    let path = data_dir.join(store::DEFAULT_SQLITE_FILE);
    assert!(path.exists(), "{} was not created", path.display());
    case(Ctx {
        store,
        backend: Backend::Sqlite(path),
    })
    .await;
}

fn admin_url() -> String {
    std::env::var("BERTH_TEST_DATABASE_URL").unwrap_or_else(|_| {
        panic!(
            "BERTH_TEST_DATABASE_URL is not set: the PostgreSQL store tests need a server. \
             Run the tests through scripts/test-env.sh, or first \
             `eval \"$(bash scripts/test-env.sh --env-only)\"`"
        )
    })
}

fn fresh_db_name() -> String {
    format!("bt_{}", uuid::Uuid::now_v7().simple())
}

/// Creates `name` with an ICU collation where `'-'` and `'_'` do not sort
/// in byte order (as in most production databases), so that the suite
/// proves the store sorts names and ids the same on both backends; falls
/// back to the server's default when ICU is not available.
async fn create_database(conn: &mut sqlx::PgConnection, name: &str) {
    let icu = format!(
        "CREATE DATABASE {name} TEMPLATE template0 LOCALE_PROVIDER icu ICU_LOCALE 'en-US' LOCALE 'C.UTF-8'"
    );
    if let Err(e) = conn.execute(icu.as_str()).await {
        eprintln!("no ICU collation ({e}); using the server's default");
        conn.execute(format!("CREATE DATABASE {name}").as_str())
            .await
            .unwrap();
    }
}

async fn run_postgres<F, Fut>(case: F)
where
    F: FnOnce(Ctx) -> Fut,
    Fut: Future<Output = ()>,
{
    let admin = PgConnectOptions::from_str(&admin_url()).unwrap();
    let name = fresh_db_name();
    let mut conn = admin.connect().await.unwrap();
    create_database(&mut conn, &name).await;
    let options = admin.clone().database(&name);
    let result = std::panic::AssertUnwindSafe(async {
        let store = Arc::new(PostgresStore::connect_with(options.clone()).await.unwrap());
        case(Ctx {
            store: store.clone(),
            backend: Backend::Postgres(Box::new(options)),
        })
        .await;
        store.close().await;
    })
    .catch_unwind()
    .await;
    // Best effort: a leftover bt_* database is harmless.
    let _ = conn
        .execute(format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)").as_str())
        .await;
    let _ = conn.close().await;
    if let Err(panic) = result {
        std::panic::resume_unwind(panic);
    }
}

macro_rules! contract {
    ($($case:ident),+ $(,)?) => {
        mod sqlite {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $case() {
                    crate::run_sqlite(crate::cases::$case).await
                }
            )+
        }
        mod postgres {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $case() {
                    crate::run_postgres(crate::cases::$case).await
                }
            )+
        }
    };
}

contract!(
    templates_put_get_list,
    template_delete_refuses_while_runtimes_use_it,
    pins_promote_history_unpin,
    seed_pin_only_without_history,
    runtimes_record_get_list_filters,
    operations_upsert_by_id_keeps_their_place,
    list_operations_filters_and_limit,
    fail_in_progress_operations,
    every_change_writes_its_operation_row,
    concurrent_writes_all_succeed,
    corrupt_rows_are_reported,
);

// --- fixtures ---------------------------------------------------------------

fn template(name: &str, tag: &str) -> Template {
    let doc: TemplateDoc = serde_json::from_value(serde_json::json!({
        "image": "registry.example/acme/engine",
        "tag": tag,
        "port": 8080,
        "env": {"KEY": "value", "OTHER": "x y"},
        "health": {"path": "/healthz", "interval": "500ms"},
        "restart": "on-failure",
        "update_policy": "track",
        "rollout": {"batch_size": 2}
    }))
    .unwrap();
    doc.to_template(name).unwrap()
}

fn digest(n: u8) -> Digest {
    let hex = char::from(b'0' + n % 10);
    Digest::parse(&format!("sha256:{}", hex.to_string().repeat(64))).unwrap()
}

fn op(id: &str, kind: OperationKind, at: i64) -> Operation {
    Operation::begin(id.to_string(), kind, Source::Api, at)
}

fn done(mut op: Operation, at: i64) -> Operation {
    op.succeed(at);
    op
}

fn pin(template: &str, d: u8, at: i64) -> Pin {
    Pin {
        template: template.to_string(),
        digest: digest(d),
        promoted_at_ms: at,
        promoted_by: "alice".to_string(),
        reason: Some(format!("promote {d}")),
    }
}

fn promote_entry(p: &Pin, previous: Option<Digest>) -> PinHistoryEntry {
    PinHistoryEntry {
        template: p.template.clone(),
        action: PinAction::Promote,
        digest: Some(p.digest.clone()),
        previous_digest: previous,
        at_ms: p.promoted_at_ms,
        by: p.promoted_by.clone(),
        reason: p.reason.clone(),
    }
}

fn unpin_entry(template: &str, previous: Option<Digest>, at: i64) -> PinHistoryEntry {
    PinHistoryEntry {
        template: template.to_string(),
        action: PinAction::Unpin,
        digest: None,
        previous_digest: previous,
        at_ms: at,
        by: "bob".to_string(),
        reason: None,
    }
}

fn runtime(id: &str, template: &str, status: RuntimeStatus, at: i64) -> RuntimeRecord {
    let mut r = RuntimeRecord::new(id, template, BTreeMap::new(), at);
    r.status = status;
    r
}

fn all_ops() -> OperationFilter {
    OperationFilter {
        runtime_id: None,
        kind: None,
        limit: 10_000,
    }
}

async fn op_count(store: &dyn Store) -> usize {
    store.list_operations(&all_ops()).await.unwrap().len()
}

fn ids(runtimes: &[RuntimeRecord]) -> Vec<&str> {
    runtimes.iter().map(|r| r.id.as_str()).collect()
}

fn op_ids(ops: &[Operation]) -> Vec<&str> {
    ops.iter().map(|o| o.id.as_str()).collect()
}

// --- the contract -------------------------------------------------------------

mod cases {
    use super::*;

    pub async fn templates_put_get_list(ctx: Ctx) {
        let s = ctx.store.as_ref();
        assert_eq!(s.get_template("a-z").await.unwrap(), None);
        assert!(s.list_templates().await.unwrap().is_empty());

        let v1 = template("a-z", "v1");
        let created = s
            .put_template(&v1, &done(op("o1", OperationKind::TemplatePut, 1), 1))
            .await
            .unwrap();
        assert!(created, "a new template reports created");
        assert_eq!(s.get_template("a-z").await.unwrap(), Some(v1.clone()));

        let mut v2 = template("a-z", "v2");
        v2.watch = true;
        v2.env.insert("NEW".into(), "1".into());
        let created = s
            .put_template(&v2, &done(op("o2", OperationKind::TemplatePut, 2), 2))
            .await
            .unwrap();
        assert!(!created, "a replaced template does not report created");
        assert_eq!(s.get_template("a-z").await.unwrap(), Some(v2.clone()));

        for name in ["b", "a_y"] {
            s.put_template(
                &template(name, "v1"),
                &op(&format!("put-{name}"), OperationKind::TemplatePut, 3),
            )
            .await
            .unwrap();
        }
        // Byte order ('-' < '_'), whatever the database's collation.
        let names: Vec<String> = s
            .list_templates()
            .await
            .unwrap()
            .into_iter()
            .map(|t| t.name)
            .collect();
        assert_eq!(names, ["a-z", "a_y", "b"]);
        assert_eq!(s.list_templates().await.unwrap()[0], v2);
    }

    pub async fn template_delete_refuses_while_runtimes_use_it(ctx: Ctx) {
        let s = ctx.store.as_ref();
        let del = |id: &str| op(id, OperationKind::TemplateDelete, 10);

        assert!(!s.delete_template("nope", &del("d0")).await.unwrap());
        assert_eq!(op_count(s).await, 0, "deleting nothing writes nothing");

        s.put_template(
            &template("t", "v1"),
            &op("p", OperationKind::TemplatePut, 1),
        )
        .await
        .unwrap();
        let p = pin("t", 1, 2);
        s.promote_pin(
            &p,
            &promote_entry(&p, None),
            &op("pp", OperationKind::PinPromote, 2),
        )
        .await
        .unwrap();
        for id in ["r1", "r2"] {
            s.record(
                Some(&runtime(id, "t", RuntimeStatus::Running, 3)),
                &op(&format!("start-{id}"), OperationKind::Start, 3).for_runtime(id, "t"),
            )
            .await
            .unwrap();
        }
        // Another template's runtimes do not count.
        s.record(
            Some(&runtime("other", "u", RuntimeStatus::Running, 3)),
            &op("start-other", OperationKind::Start, 3),
        )
        .await
        .unwrap();
        let before = op_count(s).await;

        match s.delete_template("t", &del("d1")).await {
            Err(StoreError::Conflict(msg)) => assert!(msg.contains("2 runtimes"), "{msg}"),
            other => panic!("expected a conflict, got {other:?}"),
        }
        let mut r1 = runtime("r1", "t", RuntimeStatus::Removed, 4);
        r1.created_at_ms = 3;
        s.record(Some(&r1), &op("rm-r1", OperationKind::Remove, 4))
            .await
            .unwrap();
        match s.delete_template("t", &del("d2")).await {
            Err(StoreError::Conflict(msg)) => assert!(msg.contains("1 runtime "), "{msg}"),
            other => panic!("expected a conflict, got {other:?}"),
        }
        assert_eq!(
            op_count(s).await,
            before + 1,
            "a refused delete writes no operation"
        );
        assert!(s.get_template("t").await.unwrap().is_some());
        assert!(
            s.get_pin("t").await.unwrap().is_some(),
            "a refused delete keeps the pin"
        );

        // Stopped still counts; only removed frees the template.
        s.record(
            Some(&runtime("r2", "t", RuntimeStatus::Stopped, 5)),
            &op("stop-r2", OperationKind::Stop, 5),
        )
        .await
        .unwrap();
        assert!(matches!(
            s.delete_template("t", &del("d3")).await,
            Err(StoreError::Conflict(_))
        ));
        s.record(
            Some(&runtime("r2", "t", RuntimeStatus::Removed, 6)),
            &op("rm-r2", OperationKind::Remove, 6),
        )
        .await
        .unwrap();

        assert!(s.delete_template("t", &del("d4")).await.unwrap());
        assert_eq!(s.get_template("t").await.unwrap(), None);
        assert_eq!(
            s.get_pin("t").await.unwrap(),
            None,
            "the pin goes with the template"
        );
        assert_eq!(
            s.pin_history("t", 10).await.unwrap().len(),
            1,
            "the pin history stays"
        );
        let last = s.list_operations(&all_ops()).await.unwrap();
        assert_eq!(last[0].id, "d4");
        assert!(!op_ids(&last).contains(&"d1") && !op_ids(&last).contains(&"d3"));
        assert!(!s.delete_template("t", &del("d5")).await.unwrap());
        // The runtime records stay.
        assert_eq!(
            s.list_runtimes(&RuntimeFilter::default())
                .await
                .unwrap()
                .len(),
            3
        );
    }

    pub async fn pins_promote_history_unpin(ctx: Ctx) {
        let s = ctx.store.as_ref();
        assert_eq!(s.get_pin("t").await.unwrap(), None);
        assert!(s.pin_history("t", 10).await.unwrap().is_empty());

        let p1 = pin("t", 1, 100);
        let e1 = promote_entry(&p1, None);
        s.promote_pin(
            &p1,
            &e1,
            &done(op("o1", OperationKind::PinPromote, 100), 100),
        )
        .await
        .unwrap();
        assert_eq!(s.get_pin("t").await.unwrap(), Some(p1.clone()));

        let mut p2 = pin("t", 2, 200);
        p2.reason = None;
        p2.promoted_by = "watcher".into();
        let e2 = promote_entry(&p2, Some(p1.digest.clone()));
        s.promote_pin(
            &p2,
            &e2,
            &done(op("o2", OperationKind::PinPromote, 200), 200),
        )
        .await
        .unwrap();
        assert_eq!(s.get_pin("t").await.unwrap(), Some(p2.clone()));

        let other = pin("a-other", 3, 150);
        s.promote_pin(
            &other,
            &promote_entry(&other, None),
            &op("o3", OperationKind::PinPromote, 150),
        )
        .await
        .unwrap();
        assert_eq!(
            s.list_pins().await.unwrap(),
            vec![other.clone(), p2.clone()]
        );

        assert_eq!(
            s.pin_history("t", 10).await.unwrap(),
            vec![e2.clone(), e1.clone()]
        );
        assert_eq!(s.pin_history("t", 1).await.unwrap(), vec![e2.clone()]);

        let e3 = unpin_entry("t", Some(p2.digest.clone()), 300);
        assert!(s
            .unpin("t", &e3, &done(op("o4", OperationKind::PinUnpin, 300), 300))
            .await
            .unwrap());
        assert_eq!(s.get_pin("t").await.unwrap(), None);
        let before = op_count(s).await;
        assert!(
            !s.unpin(
                "t",
                &unpin_entry("t", None, 400),
                &op("o5", OperationKind::PinUnpin, 400)
            )
            .await
            .unwrap(),
            "unpinning an unpinned template reports false"
        );
        assert_eq!(op_count(s).await, before, "and writes nothing");
        assert_eq!(
            s.pin_history("t", 10).await.unwrap(),
            vec![e3, e2, e1],
            "newest first, the refused unpin not recorded"
        );
        assert_eq!(s.list_pins().await.unwrap(), vec![other]);
    }

    pub async fn seed_pin_only_without_history(ctx: Ctx) {
        let s = ctx.store.as_ref();
        let seed = |id: &str| op(id, OperationKind::PinPromote, 1).detail("seed", "config");

        let p1 = pin("t", 1, 10);
        assert!(s
            .seed_pin(&p1, &promote_entry(&p1, None), &seed("s1"))
            .await
            .unwrap());
        assert_eq!(s.get_pin("t").await.unwrap(), Some(p1.clone()));
        assert_eq!(s.pin_history("t", 10).await.unwrap().len(), 1);

        // A second seed (the next boot, a changed config) never overwrites.
        let before = op_count(s).await;
        let p2 = pin("t", 2, 20);
        assert!(!s
            .seed_pin(&p2, &promote_entry(&p2, None), &seed("s2"))
            .await
            .unwrap());
        assert_eq!(s.get_pin("t").await.unwrap(), Some(p1.clone()));
        assert_eq!(s.pin_history("t", 10).await.unwrap().len(), 1);
        assert_eq!(op_count(s).await, before, "a refused seed writes nothing");

        // Any history refuses, even an unpin that left no pin.
        let q = pin("u", 3, 30);
        s.promote_pin(
            &q,
            &promote_entry(&q, None),
            &op("p", OperationKind::PinPromote, 30),
        )
        .await
        .unwrap();
        s.unpin(
            "u",
            &unpin_entry("u", Some(q.digest.clone()), 31),
            &op("un", OperationKind::PinUnpin, 31),
        )
        .await
        .unwrap();
        let q2 = pin("u", 4, 40);
        assert!(!s
            .seed_pin(&q2, &promote_entry(&q2, None), &seed("s3"))
            .await
            .unwrap());
        assert_eq!(s.get_pin("u").await.unwrap(), None);

        // Another template's history does not count.
        let v = pin("v", 5, 50);
        assert!(s
            .seed_pin(&v, &promote_entry(&v, None), &seed("s4"))
            .await
            .unwrap());
        let ops = s.list_operations(&all_ops()).await.unwrap();
        assert_eq!(op_ids(&ops), ["s4", "un", "p", "s1"]);
        assert_eq!(
            ops[0].details.get("seed").map(String::as_str),
            Some("config")
        );
    }

    pub async fn runtimes_record_get_list_filters(ctx: Ctx) {
        let s = ctx.store.as_ref();
        assert_eq!(s.get_runtime("r1").await.unwrap(), None);

        let env: BTreeMap<String, String> = [
            ("A".to_string(), "1".to_string()),
            ("B".to_string(), "two words".to_string()),
        ]
        .into();
        let mut r1 = RuntimeRecord::new("r1", "t1", env, 1_700_000_000_000);
        let start = op("start-r1", OperationKind::Start, 1_700_000_000_000).for_runtime("r1", "t1");
        s.record(Some(&r1), &start).await.unwrap();
        assert_eq!(s.get_runtime("r1").await.unwrap(), Some(r1.clone()));

        // Upsert: every field changes and reads back.
        r1.status = RuntimeStatus::Running;
        r1.container_id = Some("c0ffee".into());
        r1.image_ref = Some("registry.example/acme/engine@".to_string() + digest(1).as_str());
        r1.image_digest = Some(digest(1).to_string());
        r1.engine_endpoint = Some("http://t1-r1:8080".into());
        r1.generation = 3;
        r1.env.remove("A");
        r1.updated_at_ms = 1_700_000_000_500;
        r1.last_error = Some(LastError {
            code: "start_failed".into(),
            message: "it did not start: \"quotes\" and ünïcode".into(),
        });
        s.record(Some(&r1), &done(start.clone(), 1_700_000_000_500))
            .await
            .unwrap();
        assert_eq!(s.get_runtime("r1").await.unwrap(), Some(r1.clone()));
        r1.last_error = None;
        s.record(Some(&r1), &op("again", OperationKind::Restart, 5))
            .await
            .unwrap();
        assert_eq!(s.get_runtime("r1").await.unwrap(), Some(r1.clone()));

        let others = [
            runtime("r2", "t1", RuntimeStatus::Stopped, 2),
            runtime("r3", "t2", RuntimeStatus::Running, 3),
            runtime("r4", "t2", RuntimeStatus::Removed, 4),
            runtime("r-0", "t2", RuntimeStatus::Failed, 5),
        ];
        for r in &others {
            s.record(
                Some(r),
                &op(&format!("op-{}", r.id), OperationKind::Start, 6),
            )
            .await
            .unwrap();
        }
        let list = |template: Option<&str>, status: Option<RuntimeStatus>| {
            let filter = RuntimeFilter {
                template: template.map(str::to_string),
                status,
            };
            async move { s.list_runtimes(&filter).await.unwrap() }
        };
        let everything = list(None, None).await;
        assert_eq!(
            ids(&everything),
            ["r-0", "r1", "r2", "r3", "r4"],
            "sorted by id"
        );
        assert_eq!(everything[1], r1);
        assert_eq!(ids(&list(Some("t1"), None).await), ["r1", "r2"]);
        assert_eq!(
            ids(&list(None, Some(RuntimeStatus::Running)).await),
            ["r1", "r3"]
        );
        assert_eq!(
            ids(&list(Some("t2"), Some(RuntimeStatus::Removed)).await),
            ["r4"]
        );
        assert!(list(Some("t1"), Some(RuntimeStatus::Removed))
            .await
            .is_empty());
        assert!(list(Some("nope"), None).await.is_empty());

        // An operation alone, with no runtime.
        let before = list(None, None).await;
        s.record(None, &op("no-runtime", OperationKind::Refresh, 7))
            .await
            .unwrap();
        assert_eq!(list(None, None).await, before);
        assert_eq!(
            s.list_operations(&all_ops()).await.unwrap()[0].id,
            "no-runtime"
        );
    }

    pub async fn operations_upsert_by_id_keeps_their_place(ctx: Ctx) {
        let s = ctx.store.as_ref();
        let a = op("a", OperationKind::Start, 10)
            .for_runtime("r1", "t")
            .detail("image_ref", "registry.example/acme/engine:v1");
        s.record(None, &a).await.unwrap();
        let stored = s.list_operations(&all_ops()).await.unwrap();
        assert_eq!(
            stored,
            vec![a.clone()],
            "an in-progress operation reads back as written"
        );

        let b = op("b", OperationKind::Stop, 20);
        s.record(None, &b).await.unwrap();

        let mut a_done = a.clone().detail("container_id", "c0ffee");
        a_done.succeed(30);
        s.record(None, &a_done).await.unwrap();
        let stored = s.list_operations(&all_ops()).await.unwrap();
        assert_eq!(stored.len(), 2, "the same id is one row");
        assert_eq!(
            stored,
            vec![b.clone(), a_done.clone()],
            "an update keeps the row's place"
        );
        assert_eq!(stored[1].outcome, Outcome::Success);
        assert_eq!(stored[1].finished_at_ms, Some(30));

        let mut a_failed = a_done.clone();
        a_failed.fail("start_failed", "boom", 40);
        s.record(None, &a_failed).await.unwrap();
        assert_eq!(
            s.list_operations(&all_ops()).await.unwrap(),
            vec![b, a_failed]
        );
    }

    pub async fn list_operations_filters_and_limit(ctx: Ctx) {
        let s = ctx.store.as_ref();
        let plan = [
            ("o1", Some("r1"), OperationKind::Start),
            ("o2", Some("r2"), OperationKind::Start),
            ("o3", Some("r1"), OperationKind::Stop),
            ("o4", None, OperationKind::PinPromote),
            ("o5", Some("r1"), OperationKind::Start),
            ("o6", Some("r2"), OperationKind::Stop),
        ];
        // Started out of order: "newest first" is the order of writing.
        for (i, (id, runtime_id, kind)) in plan.iter().enumerate() {
            let mut o = op(id, *kind, 1000 - i as i64);
            o.runtime_id = runtime_id.map(str::to_string);
            s.record(None, &o).await.unwrap();
        }
        let list = |runtime_id: Option<&str>, kind: Option<OperationKind>, limit: u32| {
            let filter = OperationFilter {
                runtime_id: runtime_id.map(str::to_string),
                kind,
                limit,
            };
            async move { s.list_operations(&filter).await.unwrap() }
        };
        assert_eq!(
            op_ids(&list(None, None, 100).await),
            ["o6", "o5", "o4", "o3", "o2", "o1"]
        );
        assert_eq!(op_ids(&list(None, None, 2).await), ["o6", "o5"]);
        assert_eq!(
            op_ids(&list(Some("r1"), None, 100).await),
            ["o5", "o3", "o1"]
        );
        assert_eq!(op_ids(&list(Some("r1"), None, 2).await), ["o5", "o3"]);
        assert_eq!(
            op_ids(&list(None, Some(OperationKind::Start), 100).await),
            ["o5", "o2", "o1"]
        );
        assert_eq!(
            op_ids(&list(None, Some(OperationKind::Stop), 1).await),
            ["o6"]
        );
        assert_eq!(
            op_ids(&list(Some("r2"), Some(OperationKind::Stop), 100).await),
            ["o6"]
        );
        assert_eq!(
            op_ids(&list(Some("r1"), Some(OperationKind::Start), 1).await),
            ["o5"]
        );
        assert!(list(Some("r3"), None, 100).await.is_empty());
        assert!(list(None, Some(OperationKind::Recreate), 100)
            .await
            .is_empty());
        assert!(list(None, None, 0).await.is_empty());
    }

    pub async fn fail_in_progress_operations(ctx: Ctx) {
        let s = ctx.store.as_ref();
        assert!(s
            .fail_in_progress_operations("interrupted", "berth restarted", 1)
            .await
            .unwrap()
            .is_empty());

        let first = op("first", OperationKind::Start, 10).for_runtime("r1", "t");
        let ok = done(op("ok", OperationKind::Stop, 11), 12);
        let mut failed = op("failed", OperationKind::Start, 13);
        failed.fail("start_failed", "no", 14);
        let second = op("second", OperationKind::Recreate, 15).detail("k", "v");
        for o in [&first, &ok, &failed, &second] {
            s.record(None, o).await.unwrap();
        }

        let changed = s
            .fail_in_progress_operations("interrupted", "berth restarted", 99)
            .await
            .unwrap();
        let expect = |mut o: Operation| {
            o.fail("interrupted", "berth restarted", 99);
            o
        };
        let first_failed = expect(first);
        let second_failed = expect(second);
        assert_eq!(changed, vec![first_failed.clone(), second_failed.clone()]);
        assert_eq!(
            s.list_operations(&all_ops()).await.unwrap(),
            vec![second_failed, failed, ok, first_failed],
            "the rows changed in place, the others untouched"
        );
        assert!(s
            .fail_in_progress_operations("interrupted", "again", 100)
            .await
            .unwrap()
            .is_empty());
    }

    pub async fn every_change_writes_its_operation_row(ctx: Ctx) {
        let s = ctx.store.as_ref();
        let mut expected: Vec<Operation> = Vec::new();
        async fn check(s: &dyn Store, expected: &[Operation]) {
            let mut newest_first = expected.to_vec();
            newest_first.reverse();
            assert_eq!(s.list_operations(&all_ops()).await.unwrap(), newest_first);
        }

        let o = done(
            op("put", OperationKind::TemplatePut, 1).for_template("t"),
            1,
        )
        .detail("image", "registry.example/acme/engine");
        s.put_template(&template("t", "v1"), &o).await.unwrap();
        expected.push(o);
        check(s, &expected).await;

        let o = done(
            op("put-again", OperationKind::TemplatePut, 2).for_template("t"),
            2,
        );
        s.put_template(&template("t", "v2"), &o).await.unwrap();
        expected.push(o);
        check(s, &expected).await;

        let p = pin("t", 1, 3);
        let mut o = op("promote", OperationKind::PinPromote, 3).for_template("t");
        o.source = Source::ImageWatch;
        let o = done(o, 3).detail("digest", p.digest.as_str());
        s.promote_pin(&p, &promote_entry(&p, None), &o)
            .await
            .unwrap();
        expected.push(o);
        check(s, &expected).await;

        let o = op("unpin", OperationKind::PinUnpin, 4).for_template("t");
        assert!(s
            .unpin("t", &unpin_entry("t", Some(p.digest.clone()), 4), &o)
            .await
            .unwrap());
        expected.push(o);
        check(s, &expected).await;

        let q = pin("s", 2, 5);
        let mut o = done(
            op("seed", OperationKind::PinPromote, 5).for_template("s"),
            5,
        );
        o.source = Source::Config;
        assert!(s.seed_pin(&q, &promote_entry(&q, None), &o).await.unwrap());
        expected.push(o);
        check(s, &expected).await;

        let r = runtime("r", "t", RuntimeStatus::Running, 6);
        let mut o = op("start", OperationKind::Start, 6).for_runtime("r", "t");
        o.source = Source::Stream;
        s.record(Some(&r), &o).await.unwrap();
        expected.push(o);
        check(s, &expected).await;

        let r = runtime("r", "t", RuntimeStatus::Removed, 7);
        let o = done(
            op("remove", OperationKind::Remove, 7).for_runtime("r", "t"),
            7,
        );
        s.record(Some(&r), &o).await.unwrap();
        expected.push(o);
        check(s, &expected).await;

        let o = done(
            op("delete", OperationKind::TemplateDelete, 8).for_template("t"),
            8,
        );
        assert!(s.delete_template("t", &o).await.unwrap());
        expected.push(o);
        check(s, &expected).await;

        // Every source and kind survives the trip.
        for (i, kind) in OperationKind::ALL.iter().enumerate() {
            let mut o = op(&format!("kind-{i}"), *kind, 100 + i as i64);
            o.source = Source::ALL[i % Source::ALL.len()];
            s.record(None, &o).await.unwrap();
            expected.push(o);
        }
        check(s, &expected).await;
    }

    pub async fn concurrent_writes_all_succeed(ctx: Ctx) {
        // Writers queue on the lock (SQLite: BEGIN IMMEDIATE + busy timeout)
        // instead of failing with "database is locked".
        let mut tasks = Vec::new();
        for i in 0..24 {
            let store = ctx.store.clone();
            tasks.push(tokio::spawn(async move {
                let id = format!("r{i:02}");
                let o = op(&format!("op-{i}"), OperationKind::Start, i).for_runtime(&id, "t");
                store
                    .record(Some(&runtime(&id, "t", RuntimeStatus::Starting, i)), &o)
                    .await?;
                let t = template(&format!("t{i}"), "v1");
                store
                    .put_template(&t, &op(&format!("put-{i}"), OperationKind::TemplatePut, i))
                    .await?;
                store.list_runtimes(&RuntimeFilter::default()).await?;
                Ok::<_, StoreError>(())
            }));
        }
        for task in tasks {
            task.await.unwrap().unwrap();
        }
        let s = ctx.store.as_ref();
        assert_eq!(
            s.list_runtimes(&RuntimeFilter::default())
                .await
                .unwrap()
                .len(),
            24
        );
        assert_eq!(s.list_templates().await.unwrap().len(), 24);
        assert_eq!(op_count(s).await, 48);
    }

    pub async fn corrupt_rows_are_reported(ctx: Ctx) {
        let s = ctx.store.as_ref();
        s.put_template(
            &template("t", "v1"),
            &op("p", OperationKind::TemplatePut, 1),
        )
        .await
        .unwrap();
        s.record(
            Some(&runtime("r", "t", RuntimeStatus::Running, 1)),
            &op("o", OperationKind::Start, 1),
        )
        .await
        .unwrap();
        let pinned = pin("t", 1, 1);
        s.promote_pin(
            &pinned,
            &promote_entry(&pinned, None),
            &op("pp", OperationKind::PinPromote, 1),
        )
        .await
        .unwrap();

        async fn expect_corrupt<T: std::fmt::Debug>(result: Result<T, StoreError>, column: &str) {
            match result {
                Err(StoreError::Corrupt(msg)) => assert!(msg.contains(column), "{msg}"),
                other => panic!("expected Corrupt naming {column}, got {other:?}"),
            }
        }

        ctx.exec("UPDATE runtimes SET status = 'sleeping'").await;
        expect_corrupt(s.get_runtime("r").await, "runtimes.status").await;
        expect_corrupt(
            s.list_runtimes(&RuntimeFilter::default()).await,
            "runtimes.status",
        )
        .await;
        ctx.exec("UPDATE runtimes SET status = 'running', env = 'not json'")
            .await;
        expect_corrupt(s.get_runtime("r").await, "runtimes.env").await;

        ctx.exec("UPDATE templates SET doc = '{\"image\": \"\"}'")
            .await;
        expect_corrupt(s.get_template("t").await, "templates.doc").await;
        expect_corrupt(s.list_templates().await, "templates.doc").await;

        ctx.exec("UPDATE pins SET digest = 'sha256:nope'").await;
        expect_corrupt(s.get_pin("t").await, "pins.digest").await;
        ctx.exec("UPDATE pin_history SET action = 'demote'").await;
        expect_corrupt(s.pin_history("t", 10).await, "pin_history.action").await;

        ctx.exec("UPDATE operations SET kind = 'teleport' WHERE id = 'o'")
            .await;
        expect_corrupt(s.list_operations(&all_ops()).await, "operations.kind").await;
        ctx.exec("UPDATE operations SET kind = 'start', details = '[1]' WHERE id = 'o'")
            .await;
        expect_corrupt(s.list_operations(&all_ops()).await, "operations.details").await;
    }
}

// --- opening stores -----------------------------------------------------------

#[tokio::test]
async fn connect_opens_sqlite_urls_and_refuses_unknown_schemes() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("nested/dir/custom.db");
    let url = format!("sqlite://{}", file.display());
    let s = store::connect(&url, dir.path()).await.unwrap();
    s.put_template(
        &template("t", "v1"),
        &op("p", OperationKind::TemplatePut, 1),
    )
    .await
    .unwrap();
    drop(s);
    assert!(file.exists());
    // Reopening finds the data and migrates nothing twice.
    let again = SqliteStore::open(&file).await.unwrap();
    assert!(again.get_template("t").await.unwrap().is_some());
    assert_eq!(again.schema_versions().await.unwrap(), [1]);

    let mem = store::connect("sqlite::memory:", dir.path()).await.unwrap();
    mem.put_template(
        &template("m", "v1"),
        &op("p", OperationKind::TemplatePut, 1),
    )
    .await
    .unwrap();
    assert_eq!(mem.list_templates().await.unwrap().len(), 1);

    for bad in ["mysql://root:secret@db/berth", "berth.db", "http://x"] {
        match store::connect(bad, dir.path()).await {
            Err(StoreError::Database(msg)) => {
                assert!(msg.contains("unsupported database_url"), "{msg}");
                assert!(!msg.contains("secret"), "the message leaks the URL: {msg}");
            }
            Err(other) => panic!("{bad}: unexpected error {other:?}"),
            Ok(_) => panic!("{bad}: accepted"),
        }
    }
}

#[tokio::test]
async fn sqlite_migrates_down_and_up_again() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("berth.db");
    let s = SqliteStore::open(&file).await.unwrap();
    s.migrate_down_to(0).await.unwrap();
    assert!(s.schema_versions().await.unwrap().is_empty());
    assert!(s.list_templates().await.is_err(), "the tables are gone");
    s.close().await;
    let s = SqliteStore::open(&file).await.unwrap();
    assert_eq!(s.schema_versions().await.unwrap(), [1]);
    assert!(s.list_templates().await.unwrap().is_empty());
}

/// `connect` with a `postgres://` URL (the contract cases use parsed
/// options), and `postgresql://` as its synonym.
#[tokio::test]
async fn postgres_connect_by_url() {
    let admin_url = admin_url();
    let admin = PgConnectOptions::from_str(&admin_url).unwrap();
    let name = fresh_db_name();
    let mut conn = admin.connect().await.unwrap();
    conn.execute(format!("CREATE DATABASE {name}").as_str())
        .await
        .unwrap();
    let result = std::panic::AssertUnwindSafe(async {
        // Swap the database in the URL's path, keeping any query string.
        let (base, query) = match admin_url.split_once('?') {
            Some((b, q)) => (b, format!("?{q}")),
            None => (admin_url.as_str(), String::new()),
        };
        let after_scheme = base.find("://").map_or(0, |i| i + 3);
        let host_part = match base[after_scheme..].find('/') {
            Some(i) => &base[..after_scheme + i],
            None => base,
        };
        let url = format!("{host_part}/{name}{query}");
        for url in [url.clone(), url.replacen("postgres://", "postgresql://", 1)] {
            let s = store::connect(&url, std::path::Path::new("/nonexistent"))
                .await
                .unwrap();
            s.record(None, &op(&fresh_db_name(), OperationKind::Refresh, 1))
                .await
                .unwrap();
        }
        let s = PostgresStore::connect(&url).await.unwrap();
        assert_eq!(op_count(&s).await, 2, "both URLs reached the same database");
        assert_eq!(s.schema_versions().await.unwrap(), [1]);
        s.migrate_down_to(0).await.unwrap();
        assert!(s.list_templates().await.is_err(), "the tables are gone");
        s.close().await;
        let s = PostgresStore::connect(&url).await.unwrap();
        assert_eq!(s.schema_versions().await.unwrap(), [1]);
        assert_eq!(op_count(&s).await, 0);
        s.close().await;
    })
    .catch_unwind()
    .await;
    let _ = conn
        .execute(format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)").as_str())
        .await;
    let _ = conn.close().await;
    if let Err(panic) = result {
        std::panic::resume_unwind(panic);
    }
}
