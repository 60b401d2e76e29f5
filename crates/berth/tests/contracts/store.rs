//! The `Store` contract: one suite, run against every adapter.
//!
//! Each case in `cases` is an async fn taking a [`Ctx`]; the `contract!`
//! macro turns it into `sqlite::<case>`, `postgres::<case>` and
//! `fake::<case>` tests (the in-memory `berth::fakes::FakeStore`). The cases
//! that reach behind the store with raw SQL (corrupt rows, stored text
//! shapes) run against the SQL backends only. SQLite runs in a temp dir.
//! PostgreSQL needs `BERTH_TEST_DATABASE_URL` (an admin URL;
//! `scripts/test-env.sh` provides one) and fails without it; every case
//! gets a fresh database, dropped afterwards.

use std::collections::BTreeMap;
use std::future::Future;
use std::path::PathBuf;
use std::str::FromStr;
use std::sync::Arc;

use berth::adapters::store::{self, PostgresStore, SqliteStore};
use berth::fakes::FakeStore;
use berth::ports::store::{
    Change, EventFilter, Observation, OperationFilter, OutboxMessage, OutboxRow, OutboxStore,
    PinChange, PluginChange, PluginRecord, PluginUpdate, PluginUpdateFilter, RejectionChange,
    RolloutChange, RolloutRow, RolloutStore, RolloutTarget, RuntimeFilter, RuntimePage, Store,
    StoreError, TemplateStore, WatchStore,
};
use berth::ports::store::{NewWebhookDelivery, WebhookDelivery};
use berth::template_doc::TemplateDoc;
use berth_core::event::{HealthEvent, HealthEventType, JobResult, Notification};
use berth_core::image::Digest;
use berth_core::operation::{Operation, OperationKind, Outcome, Source};
use berth_core::pin::{Pin, PinAction, PinHistoryEntry};
use berth_core::plugin::UpdateStatus;
use berth_core::rollout::{RolloutState, TargetState};
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
    /// The same store as `Ctx::store`.
    Fake(FakeStore),
}

/// What a case gets: the store under test, and a side door for raw SQL
/// (the SQL backends only).
struct Ctx {
    store: Arc<dyn Store>,
    backend: Backend,
}

const NO_SQL: &str = "the fake has no SQL side door: list this case under `sql only`";

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
            Backend::Fake(_) => panic!("{NO_SQL}"),
        }
    }

    /// Reads one nullable text value with `sql`, behind the store's back.
    async fn text(&self, sql: &str) -> Option<String> {
        match &self.backend {
            Backend::Sqlite(path) => {
                let mut conn = SqliteConnectOptions::new()
                    .filename(path)
                    .connect()
                    .await
                    .unwrap();
                let value = sqlx::query_scalar(sql).fetch_one(&mut conn).await.unwrap();
                conn.close().await.unwrap();
                value
            }
            Backend::Postgres(options) => {
                let mut conn = options.connect().await.unwrap();
                let value = sqlx::query_scalar(sql).fetch_one(&mut conn).await.unwrap();
                conn.close().await.unwrap();
                value
            }
            Backend::Fake(_) => panic!("{NO_SQL}"),
        }
    }

    /// The error an outbox message keeps from its last failed publish,
    /// which the port does not read back.
    async fn outbox_last_error(&self, seq: i64) -> Option<String> {
        match &self.backend {
            Backend::Fake(fake) => fake.outbox_error(seq),
            _ => {
                self.text(&format!(
                    "SELECT (SELECT last_error FROM outbox WHERE seq = {seq})"
                ))
                .await
            }
        }
    }

    /// A stored rejection's reason and time as `"<reason> <at_ms>"`, which
    /// the port does not read back. `template` and `digest` must need no
    /// SQL quoting.
    async fn rejection_note(&self, template: &str, digest: &str) -> Option<String> {
        match &self.backend {
            Backend::Fake(fake) => fake
                .rejection(template, digest)
                .map(|(reason, at_ms)| format!("{reason} {at_ms}")),
            _ => {
                self.text(&format!(
                    "SELECT (SELECT reason || ' ' || CAST(rejected_at_ms AS TEXT) \
                     FROM rejected_digests WHERE template = '{template}' AND digest = '{digest}')"
                ))
                .await
            }
        }
    }
}

async fn run_fake<F, Fut>(case: F)
where
    F: FnOnce(Ctx) -> Fut,
    Fut: Future<Output = ()>,
{
    let fake = FakeStore::new();
    case(Ctx {
        store: Arc::new(fake.clone()),
        backend: Backend::Fake(fake),
    })
    .await;
}

async fn run_sqlite<F, Fut>(case: F)
where
    F: FnOnce(Ctx) -> Fut,
    Fut: Future<Output = ()>,
{
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("data").join(store::DEFAULT_SQLITE_FILE);
    let store = Arc::new(SqliteStore::open(&path).await.unwrap());
    case(Ctx {
        store,
        backend: Backend::Sqlite(path),
    })
    .await;
}

/// What `berth serve` runs on SQLite: `store::connect` with no URL, the
/// runtime read model over the SQLite adapter.
async fn run_sqlite_model<F, Fut>(case: F)
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

/// `every backend`: cases run against SQLite, PostgreSQL, the fake, and
/// the runtime read model over SQLite (`sqlite_model`).
/// `sql only`: cases that use the raw-SQL side door (`Ctx::exec`,
/// `Ctx::text`), against SQLite and PostgreSQL.
macro_rules! contract {
    (
        every backend: [$($case:ident),+ $(,)?],
        sql only: [$($sql_case:ident),+ $(,)?] $(,)?
    ) => {
        mod sqlite {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $case() {
                    super::run_sqlite(super::cases::$case).await
                }
            )+
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $sql_case() {
                    super::run_sqlite(super::cases::$sql_case).await
                }
            )+
        }
        mod postgres {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $case() {
                    super::run_postgres(super::cases::$case).await
                }
            )+
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $sql_case() {
                    super::run_postgres(super::cases::$sql_case).await
                }
            )+
        }
        mod fake {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $case() {
                    super::run_fake(super::cases::$case).await
                }
            )+
        }
        mod sqlite_model {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $case() {
                    super::run_sqlite_model(super::cases::$case).await
                }
            )+
        }
    };
}

contract!(
    every backend: [
        templates_put_get_list,
        template_delete_refuses_while_runtimes_use_it,
        pins_promote_history_unpin,
        pin_change_writes_pin_history_and_operation_in_one_commit,
        seed_pin_only_without_history,
        runtimes_record_get_list_filters,
        operations_upsert_by_id_keeps_their_place,
        list_operations_filters_and_limit,
        fail_in_progress_operations,
        get_operation_reads_the_last_write,
        every_change_writes_its_operation_row,
        concurrent_writes_all_succeed,
        commit_writes_everything_in_one_transaction,
        commit_rolls_back_everything_on_a_conflict,
        commit_with_every_part_is_all_or_nothing,
        health_events_newest_first_with_filters,
        has_health_event_matches_runtime_container_and_type,
        notifications_newest_first,
        job_results_round_trip,
        outbox_oldest_first_delete_and_failed,
        json_columns_round_trip,
        outbox_seq_order_is_commit_order_per_key,
        outbox_seq_order_is_commit_order_across_keys,
        outbox_identity_is_fixed_and_counts_every_seq_drawn,
        a_second_delivery_of_one_intent_to_one_webhook_is_refused,
        observations_upsert_through_commit,
        rejections_reject_then_lift,
        rollouts_commit_get_round_trip,
        rollouts_list_newest_first_and_active_oldest_first,
        refused_commit_writes_nothing_of_its_rollout_pin_observation_or_rejection,
        plugins_put_get_list_delete,
        plugin_updates_one_pending_per_runtime_and_plugin,
        plugin_updates_filters_newest_first,
        concurrent_sweeps_queue_one_pending_update,
        plugin_rollouts_keep_their_plugin,
        mark_plugins_resolved_touches_only_those_plugins,
        webhook_deliveries_are_written_with_the_commit_and_queued_per_webhook,
        webhook_head_is_the_oldest_pending_and_success_marks_it_delivered,
        a_refused_commit_writes_no_webhook_delivery,
        webhook_prune_keeps_pending_rows_and_the_newest_delivered,
        webhook_seq_order_is_commit_order_per_webhook,
        runtime_pages_by_keyset,
        runtime_pages_cover_every_record_once_while_records_are_added,
        log_pages_before_an_id,
        a_commit_writes_its_change_rows_in_order,
        writes_outside_commit_write_change_rows,
        a_refused_write_writes_no_change_rows,
        change_rows_are_pruned_below_a_seq,
        change_seq_order_is_commit_order,
    ],
    sql only: [
        corrupt_rows_are_reported,
        corrupt_event_rows_are_reported,
        corrupt_rollout_rows_are_reported,
        unknown_stored_states_are_corrupt,
        json_columns_store_the_documented_shapes,
    ],
);

// --- fixtures ---------------------------------------------------------------

/// Every schema migration version, oldest first (0009: the outbox relay's
/// identity).
const ALL_VERSIONS: [i64; 9] = [1, 2, 3, 4, 5, 6, 7, 8, 9];

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

fn health_event(
    id: &str,
    runtime_id: &str,
    event_type: HealthEventType,
    container_id: Option<&str>,
    at_ms: i64,
) -> HealthEvent {
    HealthEvent {
        id: id.to_string(),
        runtime_id: runtime_id.to_string(),
        event_type,
        container_id: container_id.map(str::to_string),
        at_ms,
        details: [("source".to_string(), "docker_events".to_string())].into(),
    }
}

fn notification(id: &str, notification_type: &str, at_ms: i64) -> Notification {
    Notification {
        id: id.to_string(),
        notification_type: notification_type.to_string(),
        audience: "admin".to_string(),
        payload: [("runtime_id".to_string(), "r1".to_string())].into(),
        created_at_ms: at_ms,
    }
}

fn delivery(id: &str, webhook: &str, n: &Notification) -> NewWebhookDelivery {
    NewWebhookDelivery {
        id: id.to_string(),
        webhook: webhook.to_string(),
        notification_id: n.id.clone(),
        notification_type: n.notification_type.clone(),
        body: format!("{{\"id\":\"{}\",\"ü\":\"'\\\"\"}}", n.id),
        created_at_ms: n.created_at_ms,
    }
}

/// What a stored delivery holds of what was written.
fn written(d: &WebhookDelivery) -> NewWebhookDelivery {
    NewWebhookDelivery {
        id: d.id.clone(),
        webhook: d.webhook.clone(),
        notification_id: d.notification_id.clone(),
        notification_type: d.notification_type.clone(),
        body: d.body.clone(),
        created_at_ms: d.created_at_ms,
    }
}

/// A webhook's whole queue and log, oldest first.
async fn deliveries_of(s: &dyn Store, webhook: &str) -> Vec<WebhookDelivery> {
    let mut all = s
        .list_webhook_deliveries(Some(webhook), 100_000)
        .await
        .unwrap();
    all.reverse();
    all
}

fn job_result(job_id: &str, runtime_id: &str, at_ms: i64) -> JobResult {
    JobResult {
        job_id: job_id.to_string(),
        runtime_id: runtime_id.to_string(),
        kind: "start".to_string(),
        success: true,
        container_id: Some("c0ffee".to_string()),
        engine_endpoint: Some(format!("http://berth-{runtime_id}:8080")),
        error_code: None,
        error_message: None,
        finished_at_ms: at_ms,
    }
}

fn message(stream: &str, key: &str, fields: &[(&str, &str)], at_ms: i64) -> OutboxMessage {
    OutboxMessage {
        stream: stream.to_string(),
        partition_key: key.to_string(),
        fields: fields
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
        created_at_ms: at_ms,
    }
}

fn events(
    runtime_id: Option<&str>,
    event_type: Option<HealthEventType>,
    limit: u32,
) -> EventFilter {
    EventFilter {
        runtime_id: runtime_id.map(str::to_string),
        event_type,
        limit,
    }
}

async fn all_events(store: &dyn Store) -> Vec<HealthEvent> {
    store
        .list_health_events(&events(None, None, 10_000))
        .await
        .unwrap()
}

async fn all_outbox(store: &dyn Store) -> Vec<OutboxRow> {
    store.outbox_pending(10_000).await.unwrap()
}

fn messages(rows: &[OutboxRow]) -> Vec<OutboxMessage> {
    rows.iter().map(|r| r.message.clone()).collect()
}

fn event_ids(events: &[HealthEvent]) -> Vec<&str> {
    events.iter().map(|e| e.id.as_str()).collect()
}

fn ids(runtimes: &[RuntimeRecord]) -> Vec<&str> {
    runtimes.iter().map(|r| r.id.as_str()).collect()
}

fn observation(template: &str, tag: &str, d: u8, at: i64) -> Observation {
    Observation {
        template: template.to_string(),
        reference: format!("registry.example/acme/{template}:{tag}"),
        digest: digest(d).as_str().to_string(),
        observed_at_ms: at,
    }
}

fn rollout(id: &str, template: &str, state: RolloutState, at: i64) -> RolloutRow {
    RolloutRow {
        id: id.to_string(),
        template: template.to_string(),
        from_digest: Some(digest(1).as_str().to_string()),
        to_digest: digest(2).as_str().to_string(),
        state,
        batch_size: 2,
        max_failures: 1,
        failures: 0,
        revert_pin: true,
        source: Source::ImageWatch,
        message: None,
        created_at_ms: at,
        updated_at_ms: at,
        plugin: None,
    }
}

fn target(runtime_id: &str, position: u32, state: TargetState, at: i64) -> RolloutTarget {
    RolloutTarget {
        runtime_id: runtime_id.to_string(),
        position,
        state,
        error: None,
        updated_at_ms: at,
    }
}

fn rollout_ids(rollouts: &[RolloutRow]) -> Vec<&str> {
    rollouts.iter().map(|r| r.id.as_str()).collect()
}

fn op_ids(ops: &[Operation]) -> Vec<&str> {
    ops.iter().map(|o| o.id.as_str()).collect()
}

/// A promote: the pin, its history entry and its operation, one commit.
async fn promote(s: &dyn Store, p: &Pin, entry: &PinHistoryEntry, o: &Operation) {
    s.commit(&Change {
        pin: Some(PinChange { pin: p, entry }),
        operation: Some(o),
        ..Change::default()
    })
    .await
    .unwrap();
}

/// A commit of a rollout and those of its targets that changed, alone.
async fn save_rollout(s: &dyn Store, r: &RolloutRow, targets: &[RolloutTarget]) {
    s.commit(&Change {
        rollout: Some(RolloutChange {
            rollout: r,
            targets,
        }),
        ..Change::default()
    })
    .await
    .unwrap();
}

async fn expect_corrupt<T: std::fmt::Debug>(result: Result<T, StoreError>, column: &str) {
    match result {
        Err(StoreError::Corrupt(msg)) => assert!(msg.contains(column), "{msg}"),
        other => panic!("expected Corrupt naming {column}, got {other:?}"),
    }
}

// --- the contract -------------------------------------------------------------

mod cases {
    use super::*;

    pub async fn runtime_pages_by_keyset(ctx: Ctx) {
        let s = ctx.store.as_ref();
        // Ids whose byte order differs from most collations' order.
        let all = ["a", "a-b", "a0", "a_b", "ab", "b1", "b10", "b2", "z"];
        for (i, id) in all.iter().enumerate() {
            let template = if i % 2 == 0 { "t1" } else { "t2" };
            let status = if i % 3 == 0 {
                RuntimeStatus::Running
            } else {
                RuntimeStatus::Stopped
            };
            let mut r = runtime(id, template, status, i as i64);
            // Digest 0, none or 2 in turn; b10 is removed.
            r.image_digest = (i % 3 != 1).then(|| digest((i % 3) as u8).to_string());
            if *id == "b10" {
                r.status = RuntimeStatus::Removed;
            }
            s.record(Some(&r), &op(&format!("o-{id}"), OperationKind::Start, 1))
                .await
                .unwrap();
        }
        let page = |p: RuntimePage| async move { s.list_runtimes_page(&p).await.unwrap() };
        let whole = page(RuntimePage::default()).await;
        assert_eq!(ids(&whole), all);
        assert_eq!(
            whole,
            s.list_runtimes(&RuntimeFilter::default()).await.unwrap()
        );

        // Walk the pages of three.
        let mut seen = Vec::new();
        let mut after = None;
        loop {
            let p = page(RuntimePage {
                after: after.clone(),
                limit: Some(3),
                ..Default::default()
            })
            .await;
            assert!(p.len() <= 3);
            if p.is_empty() {
                break;
            }
            after = p.last().map(|r| r.id.clone());
            seen.extend(p.into_iter().map(|r| r.id));
        }
        assert_eq!(seen, all);

        // `after` need not name a record; filters combine with it.
        let p = page(RuntimePage {
            after: Some("a1".into()),
            limit: Some(2),
            ..Default::default()
        })
        .await;
        assert_eq!(ids(&p), ["a_b", "ab"]);
        let p = page(RuntimePage {
            template: Some("t1".into()),
            status: Some(RuntimeStatus::Stopped),
            after: Some("a0".into()),
            ..Default::default()
        })
        .await;
        assert_eq!(ids(&p), ["ab", "z"]);
        assert!(page(RuntimePage {
            after: Some("z".into()),
            ..Default::default()
        })
        .await
        .is_empty());

        // Stale: nothing before a pin; then the records of t1 whose digest
        // is not the pin's (none counts), removed ones left out.
        let stale = RuntimePage {
            stale: true,
            ..Default::default()
        };
        assert!(page(stale.clone()).await.is_empty());
        let p1 = pin("t1", 0, 10);
        promote(
            s,
            &p1,
            &promote_entry(&p1, None),
            &op("pin", OperationKind::PinPromote, 10),
        )
        .await;
        // t1 holds a (digest 0), a0 (digest 2), ab (none), b10 (removed),
        // z (digest 2).
        assert_eq!(ids(&page(stale.clone()).await), ["a0", "ab", "z"]);
        assert_eq!(
            ids(&page(RuntimePage {
                stale: true,
                after: Some("a0".into()),
                limit: Some(1),
                ..Default::default()
            })
            .await),
            ["ab"]
        );
        // A record brought to the pin is no longer stale.
        let mut ab = s.get_runtime("ab").await.unwrap().unwrap();
        ab.image_digest = Some(digest(0).to_string());
        s.record(Some(&ab), &op("o-ab-up", OperationKind::Restart, 11))
            .await
            .unwrap();
        assert_eq!(ids(&page(stale.clone()).await), ["a0", "z"]);
    }

    /// A reader walks pages of 7 while two writers add records (some
    /// sorting before the reader's place, some after, some updating
    /// records already listed): every record that existed before the walk
    /// is listed exactly once, no id twice, in order.
    pub async fn runtime_pages_cover_every_record_once_while_records_are_added(ctx: Ctx) {
        let s = ctx.store.clone();
        let before: Vec<String> = (0..60).map(|i| format!("r{:03}", i * 2)).collect();
        for id in &before {
            s.record(
                Some(&runtime(id, "t", RuntimeStatus::Running, 1)),
                &op(&format!("o-{id}"), OperationKind::Start, 1),
            )
            .await
            .unwrap();
        }
        let writers: Vec<_> = (0..2)
            .map(|w| {
                let s = s.clone();
                tokio::spawn(async move {
                    for i in 0..30 {
                        // New odd ids all over the range, and updates of
                        // existing ones.
                        let id = format!("r{:03}", (i * 4 + w * 2) + 1);
                        s.record(
                            Some(&runtime(&id, "t", RuntimeStatus::Running, 2)),
                            &op(&format!("o-new-{id}"), OperationKind::Start, 2),
                        )
                        .await
                        .unwrap();
                        let old = format!("r{:03}", (i * 4 + w * 2) % 120);
                        s.record(
                            Some(&runtime(&old, "t", RuntimeStatus::Stopped, 3)),
                            &op(&format!("o-upd-{w}-{i}"), OperationKind::Stop, 3),
                        )
                        .await
                        .unwrap();
                        tokio::task::yield_now().await;
                    }
                })
            })
            .collect();
        let mut seen: Vec<String> = Vec::new();
        let mut after = None;
        loop {
            let p = s
                .list_runtimes_page(&RuntimePage {
                    after: after.clone(),
                    limit: Some(7),
                    ..Default::default()
                })
                .await
                .unwrap();
            if p.is_empty() {
                break;
            }
            after = p.last().map(|r| r.id.clone());
            seen.extend(p.into_iter().map(|r| r.id));
            tokio::task::yield_now().await;
        }
        for w in writers {
            w.await.unwrap();
        }
        let mut sorted = seen.clone();
        sorted.sort();
        sorted.dedup();
        assert_eq!(sorted, seen, "pages listed an id twice or out of order");
        for id in &before {
            assert!(seen.contains(id), "{id} was never listed");
        }
    }

    pub async fn log_pages_before_an_id(ctx: Ctx) {
        let s = ctx.store.as_ref();
        for i in 0..7 {
            let rt = if i % 2 == 0 { "r1" } else { "r2" };
            s.commit(&Change {
                operation: Some(
                    &op(&format!("op{i}"), OperationKind::Start, i).for_runtime(rt, "t"),
                ),
                health_events: &[health_event(
                    &format!("ev{i}"),
                    rt,
                    HealthEventType::ContainerExited,
                    None,
                    i,
                )],
                notifications: &[notification(&format!("n{i}"), "runtime.exited", i)],
                ..Change::default()
            })
            .await
            .unwrap();
        }
        // An update of an operation keeps its place in the log.
        s.commit(&Change {
            operation: Some(&done(
                op("op2", OperationKind::Start, 2).for_runtime("r1", "t"),
                100,
            )),
            ..Change::default()
        })
        .await
        .unwrap();
        let ops = |runtime_id: Option<&str>, limit: u32, before: Option<&'static str>| {
            let filter = OperationFilter {
                runtime_id: runtime_id.map(str::to_string),
                kind: None,
                limit,
            };
            async move {
                op_ids(&s.list_operations_before(&filter, before).await.unwrap())
                    .into_iter()
                    .map(str::to_string)
                    .collect::<Vec<_>>()
            }
        };
        assert_eq!(ops(None, 3, None).await, ["op6", "op5", "op4"]);
        assert_eq!(ops(None, 3, Some("op4")).await, ["op3", "op2", "op1"]);
        assert_eq!(ops(None, 3, Some("op1")).await, ["op0"]);
        assert!(ops(None, 3, Some("op0")).await.is_empty());
        assert!(ops(None, 3, Some("no-such-op")).await.is_empty());
        // The cursor may be an entry the filter leaves out.
        assert_eq!(
            ops(Some("r1"), 10, Some("op5")).await,
            ["op4", "op2", "op0"]
        );

        let evs = |before: Option<&'static str>| async move {
            event_ids(
                &s.list_health_events_before(&events(Some("r2"), None, 2), before)
                    .await
                    .unwrap(),
            )
            .into_iter()
            .map(str::to_string)
            .collect::<Vec<_>>()
        };
        assert_eq!(evs(None).await, ["ev5", "ev3"]);
        assert_eq!(evs(Some("ev3")).await, ["ev1"]);
        assert!(evs(Some("nope")).await.is_empty());

        let notes = |limit: u32, before: Option<&'static str>| async move {
            s.list_notifications_before(limit, before)
                .await
                .unwrap()
                .into_iter()
                .map(|n| n.id)
                .collect::<Vec<_>>()
        };
        assert_eq!(notes(2, None).await, ["n6", "n5"]);
        assert_eq!(notes(4, Some("n5")).await, ["n4", "n3", "n2", "n1"]);
        assert!(notes(4, Some("n0")).await.is_empty());
        assert!(notes(4, Some("n-unknown")).await.is_empty());
    }

    fn plugin(runtime: &str, name: &str, sha: Option<&str>) -> PluginRecord {
        PluginRecord {
            runtime_id: runtime.to_string(),
            name: name.to_string(),
            source: "git+https://git.example/acme/skills".to_string(),
            track: "tag:latest".to_string(),
            installed_sha: sha.map(str::to_string),
            installed_at_ms: sha.map(|_| 5),
            resolved_at_ms: None,
            last_error: None,
        }
    }

    fn update(
        id: &str,
        runtime: &str,
        name: &str,
        to: &str,
        status: UpdateStatus,
        at: i64,
    ) -> PluginUpdate {
        PluginUpdate {
            id: id.to_string(),
            runtime_id: runtime.to_string(),
            plugin: name.to_string(),
            track: "tag:latest".to_string(),
            from_sha: Some("a".repeat(40)),
            to_sha: to.to_string(),
            status,
            created_at_ms: at,
            updated_at_ms: at,
        }
    }

    async fn put_update(s: &dyn Store, u: &PluginUpdate) -> Result<(), StoreError> {
        s.commit(&Change {
            plugin_update: Some(u),
            ..Change::default()
        })
        .await
    }

    pub async fn plugins_put_get_list_delete(ctx: Ctx) {
        let s = ctx.store.as_ref();
        assert_eq!(s.get_plugin("r1", "skills").await.unwrap(), None);
        let mut p = plugin("r1", "skills", None);
        p.last_error = Some(LastError {
            code: "git_failed".into(),
            message: "unreachable".into(),
        });
        for rec in [
            p.clone(),
            plugin("r1", "tools", Some(&"b".repeat(40))),
            plugin("r0", "skills", None),
        ] {
            let o = op(
                &format!("i-{}-{}", rec.runtime_id, rec.name),
                OperationKind::PluginInstall,
                1,
            );
            s.commit(&Change {
                plugin: Some(PluginChange::Put(&rec)),
                operation: Some(&o),
                ..Change::default()
            })
            .await
            .unwrap();
        }
        assert_eq!(s.get_plugin("r1", "skills").await.unwrap(), Some(p.clone()));
        let all: Vec<(String, String)> = s
            .list_plugins(None)
            .await
            .unwrap()
            .into_iter()
            .map(|p| (p.runtime_id, p.name))
            .collect();
        assert_eq!(
            all,
            [
                ("r0".into(), "skills".into()),
                ("r1".into(), "skills".into()),
                ("r1".into(), "tools".into())
            ]
        );
        assert_eq!(s.list_plugins(Some("r1")).await.unwrap().len(), 2);
        // A put replaces.
        let mut installed = p.clone();
        installed.installed_sha = Some("c".repeat(40));
        installed.last_error = None;
        s.commit(&Change {
            plugin: Some(PluginChange::Put(&installed)),
            ..Change::default()
        })
        .await
        .unwrap();
        assert_eq!(s.get_plugin("r1", "skills").await.unwrap(), Some(installed));
        // Delete, twice: the second finds nothing and is no error.
        for _ in 0..2 {
            s.commit(&Change {
                plugin: Some(PluginChange::Delete {
                    runtime_id: "r1",
                    name: "skills",
                }),
                ..Change::default()
            })
            .await
            .unwrap();
        }
        assert_eq!(s.get_plugin("r1", "skills").await.unwrap(), None);
        assert_eq!(s.list_plugins(Some("r1")).await.unwrap().len(), 1);
    }

    /// One call stamps `resolved_at_ms` and clears `last_error` of every
    /// plugin named, however many; other columns, other plugins and names
    /// with no plugin are left alone.
    pub async fn mark_plugins_resolved_touches_only_those_plugins(ctx: Ctx) {
        let s = ctx.store.as_ref();
        let failed = LastError {
            code: "git_failed".into(),
            message: "unreachable".into(),
        };
        let mut a = plugin("r1", "skills", Some(&"b".repeat(40)));
        a.last_error = Some(failed.clone());
        let mut b = plugin("r2", "tools", Some(&"c".repeat(40)));
        b.resolved_at_ms = Some(7);
        let mut untouched = plugin("r2", "skills", None);
        untouched.last_error = Some(failed.clone());
        for rec in [&a, &b, &untouched] {
            s.commit(&Change {
                plugin: Some(PluginChange::Put(rec)),
                ..Change::default()
            })
            .await
            .unwrap();
        }
        // Nothing to mark writes nothing.
        s.mark_plugins_resolved(&[], 40).await.unwrap();
        assert_eq!(s.get_plugin("r1", "skills").await.unwrap(), Some(a.clone()));
        // More names than one statement takes, most of them of no plugin,
        // with the real ones first and last.
        let mut keys = vec![("r1".to_string(), "skills".to_string())];
        keys.extend((0..2500).map(|i| ("r1".to_string(), format!("ghost-{i}"))));
        keys.push(("r2".to_string(), "tools".to_string()));
        s.mark_plugins_resolved(&keys, 42).await.unwrap();
        let stamped = |mut p: PluginRecord| {
            p.resolved_at_ms = Some(42);
            p.last_error = None;
            p
        };
        assert_eq!(
            s.get_plugin("r1", "skills").await.unwrap(),
            Some(stamped(a))
        );
        assert_eq!(s.get_plugin("r2", "tools").await.unwrap(), Some(stamped(b)));
        assert_eq!(s.get_plugin("r2", "skills").await.unwrap(), Some(untouched));
        assert_eq!(
            s.list_plugins(None).await.unwrap().len(),
            3,
            "no row for a name without a plugin"
        );
    }

    pub async fn plugin_updates_one_pending_per_runtime_and_plugin(ctx: Ctx) {
        let s = ctx.store.as_ref();
        let (b, c) = ("b".repeat(40), "c".repeat(40));
        let first = update("u1", "r1", "skills", &b, UpdateStatus::Pending, 1);
        put_update(s, &first).await.unwrap();
        // A second pending row for the same plugin is refused, with
        // nothing of its change written.
        let second = update("u2", "r1", "skills", &c, UpdateStatus::Pending, 2);
        let o = op("refused", OperationKind::PluginApply, 2);
        let refused = s
            .commit(&Change {
                plugin_update: Some(&second),
                operation: Some(&o),
                ..Change::default()
            })
            .await;
        assert!(
            matches!(refused, Err(StoreError::Conflict(_))),
            "{refused:?}"
        );
        assert_eq!(op_count(s).await, 0, "nothing of the refused change");
        assert_eq!(s.get_plugin_update("u2").await.unwrap(), None);
        // Moving the pending one's target is an update of the same row.
        let mut moved = first.clone();
        moved.to_sha = c.clone();
        moved.updated_at_ms = 3;
        put_update(s, &moved).await.unwrap();
        let pending = s
            .pending_plugin_update("r1", "skills")
            .await
            .unwrap()
            .unwrap();
        assert_eq!(pending.id, "u1");
        assert_eq!(pending.to_sha, c);
        assert_eq!(pending.created_at_ms, 1, "created_at stays");
        assert_eq!(pending.updated_at_ms, 3);
        // Other plugins and runtimes have their own pending row.
        put_update(
            s,
            &update("u3", "r1", "tools", &b, UpdateStatus::Pending, 4),
        )
        .await
        .unwrap();
        put_update(
            s,
            &update("u4", "r2", "skills", &b, UpdateStatus::Pending, 5),
        )
        .await
        .unwrap();
        // Once applied, a new pending update may be queued.
        let mut applied = moved.clone();
        applied.status = UpdateStatus::Applied;
        put_update(s, &applied).await.unwrap();
        assert_eq!(s.pending_plugin_update("r1", "skills").await.unwrap(), None);
        put_update(s, &second).await.unwrap();
        assert_eq!(
            s.pending_plugin_update("r1", "skills")
                .await
                .unwrap()
                .map(|u| u.id),
            Some("u2".to_string())
        );
        assert_eq!(
            s.get_plugin_update("u1").await.unwrap().unwrap().status,
            UpdateStatus::Applied
        );
    }

    pub async fn plugin_updates_filters_newest_first(ctx: Ctx) {
        let s = ctx.store.as_ref();
        let b = "b".repeat(40);
        put_update(
            s,
            &update("u1", "r1", "skills", &b, UpdateStatus::Applied, 1),
        )
        .await
        .unwrap();
        put_update(
            s,
            &update("u2", "r1", "skills", &b, UpdateStatus::Pending, 2),
        )
        .await
        .unwrap();
        put_update(
            s,
            &update("u3", "r2", "tools", &b, UpdateStatus::Dismissed, 3),
        )
        .await
        .unwrap();
        let ids = |v: Vec<PluginUpdate>| v.into_iter().map(|u| u.id).collect::<Vec<_>>();
        let all = PluginUpdateFilter {
            limit: 100,
            ..Default::default()
        };
        assert_eq!(
            ids(s.list_plugin_updates(&all).await.unwrap()),
            ["u3", "u2", "u1"]
        );
        let pending = PluginUpdateFilter {
            status: Some(UpdateStatus::Pending),
            ..all.clone()
        };
        assert_eq!(ids(s.list_plugin_updates(&pending).await.unwrap()), ["u2"]);
        let r1 = PluginUpdateFilter {
            runtime_id: Some("r1".into()),
            ..all.clone()
        };
        assert_eq!(ids(s.list_plugin_updates(&r1).await.unwrap()), ["u2", "u1"]);
        let tools = PluginUpdateFilter {
            plugin: Some("tools".into()),
            ..all.clone()
        };
        assert_eq!(ids(s.list_plugin_updates(&tools).await.unwrap()), ["u3"]);
        let one = PluginUpdateFilter { limit: 1, ..all };
        assert_eq!(ids(s.list_plugin_updates(&one).await.unwrap()), ["u3"]);
    }

    pub async fn plugin_rollouts_keep_their_plugin(ctx: Ctx) {
        let s = ctx.store.as_ref();
        let mut r = rollout("rp", "t", RolloutState::Running, 1);
        r.plugin = Some("skills".to_string());
        r.from_digest = None;
        r.revert_pin = false;
        r.to_digest = "b".repeat(40);
        save_rollout(s, &r, &[target("r1", 0, TargetState::Pending, 1)]).await;
        let (got, targets) = s.get_rollout("rp").await.unwrap().unwrap();
        assert_eq!(got, r);
        assert_eq!(targets.len(), 1);
        assert_eq!(s.list_rollouts(None, 10).await.unwrap(), vec![r.clone()]);
        assert_eq!(s.active_rollouts().await.unwrap(), vec![r]);
    }

    /// Two sweeps that both saw no pending update race to queue one: the
    /// store lets exactly one in.
    pub async fn concurrent_sweeps_queue_one_pending_update(ctx: Ctx) {
        let mut tasks = Vec::new();
        for i in 0..8 {
            let store = ctx.store.clone();
            tasks.push(tokio::spawn(async move {
                let u = update(
                    &format!("u{i}"),
                    "r1",
                    "skills",
                    &"b".repeat(40),
                    UpdateStatus::Pending,
                    i,
                );
                put_update(store.as_ref(), &u).await
            }));
        }
        let mut ok = 0;
        for t in tasks {
            match t.await.unwrap() {
                Ok(()) => ok += 1,
                Err(StoreError::Conflict(_)) => {}
                Err(e) => panic!("unexpected {e:?}"),
            }
        }
        assert_eq!(ok, 1);
        let pending = PluginUpdateFilter {
            status: Some(UpdateStatus::Pending),
            limit: 100,
            ..Default::default()
        };
        assert_eq!(
            ctx.store.list_plugin_updates(&pending).await.unwrap().len(),
            1
        );
    }

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
        promote(
            s,
            &p,
            &promote_entry(&p, None),
            &op("pp", OperationKind::PinPromote, 2),
        )
        .await;
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
        promote(
            s,
            &p1,
            &e1,
            &done(op("o1", OperationKind::PinPromote, 100), 100),
        )
        .await;
        assert_eq!(s.get_pin("t").await.unwrap(), Some(p1.clone()));

        let mut p2 = pin("t", 2, 200);
        p2.reason = None;
        p2.promoted_by = "watcher".into();
        let e2 = promote_entry(&p2, Some(p1.digest.clone()));
        promote(
            s,
            &p2,
            &e2,
            &done(op("o2", OperationKind::PinPromote, 200), 200),
        )
        .await;
        assert_eq!(s.get_pin("t").await.unwrap(), Some(p2.clone()));

        let other = pin("a-other", 3, 150);
        promote(
            s,
            &other,
            &promote_entry(&other, None),
            &op("o3", OperationKind::PinPromote, 150),
        )
        .await;
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
        promote(
            s,
            &q,
            &promote_entry(&q, None),
            &op("p", OperationKind::PinPromote, 30),
        )
        .await;
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

    pub async fn get_operation_reads_the_last_write(ctx: Ctx) {
        let s = ctx.store.as_ref();
        assert_eq!(s.get_operation("nope").await.unwrap(), None);
        let begun = op("o1", OperationKind::Start, 10).for_runtime("r1", "t");
        s.record(None, &begun).await.unwrap();
        assert_eq!(s.get_operation("o1").await.unwrap(), Some(begun.clone()));
        let finished = done(begun, 12);
        s.record(None, &finished).await.unwrap();
        assert_eq!(s.get_operation("o1").await.unwrap(), Some(finished));
        assert_eq!(s.get_operation("o2").await.unwrap(), None);
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
        promote(s, &p, &promote_entry(&p, None), &o).await;
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
        promote(
            s,
            &pinned,
            &promote_entry(&pinned, None),
            &op("pp", OperationKind::PinPromote, 1),
        )
        .await;

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

    pub async fn commit_writes_everything_in_one_transaction(ctx: Ctx) {
        let s = ctx.store.as_ref();
        // An empty change writes nothing, and is no error.
        s.commit(&Change::default()).await.unwrap();
        assert_eq!(op_count(s).await, 0);

        let mut r = runtime("r1", "t", RuntimeStatus::Running, 10);
        r.container_id = Some("c0ffee".into());
        let o = done(
            op("start-r1", OperationKind::Start, 10).for_runtime("r1", "t"),
            11,
        );
        let evs = [
            health_event(
                "e1",
                "r1",
                HealthEventType::ContainerStarted,
                Some("c0ffee"),
                11,
            ),
            health_event(
                "e2",
                "r1",
                HealthEventType::HealthHealthy,
                Some("c0ffee"),
                12,
            ),
        ];
        let notes = [notification("n1", "runtime.started", 11)];
        let job = job_result("job-1", "r1", 11);
        let out = [
            message(
                "runtime:job_results",
                "r1",
                &[("job_id", "job-1"), ("outcome", "success")],
                11,
            ),
            message(
                "runtime:health_events",
                "r1",
                &[("runtime_id", "r1"), ("type", "container_started")],
                11,
            ),
        ];
        s.commit(&Change {
            runtime: Some(&r),
            operation: Some(&o),
            health_events: &evs,
            notifications: &notes,
            job_result: Some(&job),
            outbox: &out,
            ..Change::default()
        })
        .await
        .unwrap();

        assert_eq!(s.get_runtime("r1").await.unwrap(), Some(r.clone()));
        assert_eq!(
            s.list_operations(&all_ops()).await.unwrap(),
            vec![o.clone()]
        );
        assert_eq!(
            all_events(s).await,
            vec![evs[1].clone(), evs[0].clone()],
            "newest first"
        );
        assert_eq!(s.list_notifications(100).await.unwrap(), notes.to_vec());
        assert_eq!(s.get_job_result("job-1").await.unwrap(), Some(job));
        let rows = all_outbox(s).await;
        assert_eq!(
            messages(&rows),
            out.to_vec(),
            "oldest first, in slice order"
        );
        assert!(rows.iter().all(|row| row.attempts == 0));
        assert!(rows[0].seq < rows[1].seq);

        // Parts alone: events and an outbox message without an operation.
        let lone = [health_event(
            "e3",
            "r2",
            HealthEventType::ContainerDisappeared,
            None,
            20,
        )];
        let lone_out = [message("runtime:health_events", "r2", &[("type", "x")], 20)];
        s.commit(&Change {
            health_events: &lone,
            outbox: &lone_out,
            ..Change::default()
        })
        .await
        .unwrap();
        assert_eq!(op_count(s).await, 1, "no operation given, none written");
        assert_eq!(all_events(s).await[0], lone[0]);
        assert_eq!(all_outbox(s).await.len(), 3);

        // An operation update through commit keeps its place, like record.
        let o2 = op("other", OperationKind::Stop, 30);
        s.record(None, &o2).await.unwrap();
        let mut o_again = o.clone();
        o_again.fail("late", "changed", 31);
        s.commit(&Change {
            operation: Some(&o_again),
            ..Change::default()
        })
        .await
        .unwrap();
        assert_eq!(
            s.list_operations(&all_ops()).await.unwrap(),
            vec![o2, o_again]
        );
    }

    pub async fn commit_rolls_back_everything_on_a_conflict(ctx: Ctx) {
        let s = ctx.store.as_ref();
        let r1 = runtime("r1", "t", RuntimeStatus::Running, 10);
        let o1 = op("o1", OperationKind::Start, 10).for_runtime("r1", "t");
        let first_job = job_result("job-1", "r1", 10);
        let first_events = [health_event(
            "e1",
            "r1",
            HealthEventType::ContainerStarted,
            Some("c1"),
            10,
        )];
        let first_notes = [notification("n1", "runtime.started", 10)];
        let first_out = [message(
            "runtime:job_results",
            "r1",
            &[("job_id", "job-1")],
            10,
        )];
        s.commit(&Change {
            runtime: Some(&r1),
            operation: Some(&o1),
            health_events: &first_events,
            notifications: &first_notes,
            job_result: Some(&first_job),
            outbox: &first_out,
            ..Change::default()
        })
        .await
        .unwrap();

        let snapshot = || async {
            (
                s.list_runtimes(&RuntimeFilter::default()).await.unwrap(),
                s.list_operations(&all_ops()).await.unwrap(),
                all_events(s).await,
                s.list_notifications(1000).await.unwrap(),
                all_outbox(s).await,
                s.get_job_result("job-1").await.unwrap(),
            )
        };
        let before = snapshot().await;

        // A redelivered job: same job id, a new runtime, an update of r1,
        // an operation, events, a notification and outbox messages.
        let r2 = runtime("r2", "t", RuntimeStatus::Running, 20);
        let o2 = op("o2", OperationKind::Start, 20).for_runtime("r2", "t");
        let mut second_job = job_result("job-1", "r2", 20);
        second_job.success = false;
        let second_events = [health_event(
            "e2",
            "r2",
            HealthEventType::ContainerStarted,
            Some("c2"),
            20,
        )];
        let second_notes = [notification("n2", "runtime.start_failed", 20)];
        let second_out = [
            message("runtime:job_results", "r2", &[("job_id", "job-1")], 20),
            message("runtime:job_results", "", &[("job_id", "job-1")], 20),
        ];
        match s
            .commit(&Change {
                runtime: Some(&r2),
                operation: Some(&o2),
                health_events: &second_events,
                notifications: &second_notes,
                job_result: Some(&second_job),
                outbox: &second_out,
                ..Change::default()
            })
            .await
        {
            Err(StoreError::Conflict(msg)) => assert!(msg.contains("job-1"), "{msg}"),
            other => panic!("expected a conflict, got {other:?}"),
        }
        // The same, changing the existing runtime and operation instead.
        let mut r1_changed = r1.clone();
        r1_changed.status = RuntimeStatus::Failed;
        let mut o1_changed = o1.clone();
        o1_changed.fail("x", "y", 21);
        assert!(matches!(
            s.commit(&Change {
                runtime: Some(&r1_changed),
                operation: Some(&o1_changed),
                job_result: Some(&second_job),
                outbox: &second_out,
                ..Change::default()
            })
            .await,
            Err(StoreError::Conflict(_))
        ));
        assert_eq!(snapshot().await, before, "nothing of the refused changes");
        assert_eq!(s.get_runtime("r2").await.unwrap(), None);
        assert_eq!(s.get_job_result("job-1").await.unwrap(), Some(first_job));

        // A duplicate event or notification id refuses the whole change too.
        let r3 = runtime("r3", "t", RuntimeStatus::Running, 30);
        let o3 = op("o3", OperationKind::Start, 30);
        let dup_event = [
            health_event("e-new", "r3", HealthEventType::ContainerStarted, None, 30),
            health_event("e1", "r3", HealthEventType::ContainerStarted, None, 30),
        ];
        match s
            .commit(&Change {
                runtime: Some(&r3),
                operation: Some(&o3),
                health_events: &dup_event,
                job_result: Some(&job_result("job-3", "r3", 30)),
                outbox: &second_out,
                ..Change::default()
            })
            .await
        {
            Err(StoreError::Conflict(msg)) => assert!(msg.contains("e1"), "{msg}"),
            other => panic!("expected a conflict, got {other:?}"),
        }
        let dup_note = [notification("n1", "again", 30)];
        assert!(matches!(
            s.commit(&Change {
                runtime: Some(&r3),
                operation: Some(&o3),
                notifications: &dup_note,
                ..Change::default()
            })
            .await,
            Err(StoreError::Conflict(_))
        ));
        assert_eq!(snapshot().await, before);
        assert_eq!(s.get_job_result("job-3").await.unwrap(), None);

        // The store is still usable, and the new job id goes through.
        let j2 = job_result("job-2", "r2", 40);
        s.commit(&Change {
            runtime: Some(&r2),
            operation: Some(&o2),
            job_result: Some(&j2),
            ..Change::default()
        })
        .await
        .unwrap();
        assert_eq!(s.get_job_result("job-2").await.unwrap(), Some(j2));
        assert_eq!(s.get_runtime("r2").await.unwrap(), Some(r2));
    }

    pub async fn health_events_newest_first_with_filters(ctx: Ctx) {
        let s = ctx.store.as_ref();
        assert!(all_events(s).await.is_empty());
        use HealthEventType::*;
        // `at_ms` out of order: newest first is the order of writing.
        let plan = [
            ("e1", "r1", ContainerStarted),
            ("e2", "r2", ContainerStarted),
            ("e3", "r1", ContainerExited),
            ("e4", "r1", ContainerStarted),
            ("e5", "r2", ContainerOom),
            ("e6", "r-1", ContainerStarted),
        ];
        // Some written together, in slice order.
        let written: Vec<HealthEvent> = plan
            .iter()
            .enumerate()
            .map(|(i, (id, r, t))| health_event(id, r, *t, Some("c"), 1000 - i as i64))
            .collect();
        s.commit(&Change {
            health_events: &written[..3],
            ..Change::default()
        })
        .await
        .unwrap();
        for e in &written[3..] {
            s.commit(&Change {
                health_events: std::slice::from_ref(e),
                ..Change::default()
            })
            .await
            .unwrap();
        }
        let list = |r: Option<&str>, t: Option<HealthEventType>, limit: u32| {
            let filter = events(r, t, limit);
            async move { s.list_health_events(&filter).await.unwrap() }
        };
        let everything = list(None, None, 100).await;
        assert_eq!(event_ids(&everything), ["e6", "e5", "e4", "e3", "e2", "e1"]);
        assert_eq!(everything[5], written[0]);
        assert_eq!(event_ids(&list(None, None, 2).await), ["e6", "e5"]);
        assert_eq!(
            event_ids(&list(Some("r1"), None, 100).await),
            ["e4", "e3", "e1"]
        );
        assert_eq!(event_ids(&list(Some("r1"), None, 1).await), ["e4"]);
        assert_eq!(
            event_ids(&list(None, Some(ContainerStarted), 100).await),
            ["e6", "e4", "e2", "e1"]
        );
        assert_eq!(
            event_ids(&list(None, Some(ContainerStarted), 3).await),
            ["e6", "e4", "e2"]
        );
        assert_eq!(
            event_ids(&list(Some("r1"), Some(ContainerStarted), 100).await),
            ["e4", "e1"]
        );
        assert_eq!(
            event_ids(&list(Some("r2"), Some(ContainerOom), 100).await),
            ["e5"]
        );
        assert!(list(Some("r3"), None, 100).await.is_empty());
        assert!(list(None, Some(HealthUnhealthy), 100).await.is_empty());
        assert!(list(Some("r2"), Some(ContainerExited), 100)
            .await
            .is_empty());
        assert!(list(None, None, 0).await.is_empty());

        // Every type survives the trip, with and without a container.
        let mut all_types = Vec::new();
        for (i, t) in HealthEventType::ALL.iter().enumerate() {
            let container = (i % 2 == 0).then_some("c0ffee");
            all_types.push(health_event(
                &format!("t{i}"),
                "rt",
                *t,
                container,
                i as i64,
            ));
        }
        s.commit(&Change {
            health_events: &all_types,
            ..Change::default()
        })
        .await
        .unwrap();
        let mut read = list(Some("rt"), None, 100).await;
        read.reverse();
        assert_eq!(read, all_types);
    }

    pub async fn has_health_event_matches_runtime_container_and_type(ctx: Ctx) {
        let s = ctx.store.as_ref();
        use HealthEventType::*;
        assert!(!s
            .has_health_event("r1", "c1", ContainerDisappeared)
            .await
            .unwrap());
        let evs = [
            health_event("e1", "r1", ContainerDisappeared, Some("c1"), 1),
            health_event("e2", "r1", ContainerStarted, Some("c2"), 2),
            health_event("e3", "r2", ContainerExited, None, 3),
        ];
        s.commit(&Change {
            health_events: &evs,
            ..Change::default()
        })
        .await
        .unwrap();
        assert!(s
            .has_health_event("r1", "c1", ContainerDisappeared)
            .await
            .unwrap());
        assert!(s
            .has_health_event("r1", "c2", ContainerStarted)
            .await
            .unwrap());
        // Each of the three must match.
        assert!(!s
            .has_health_event("r1", "c1", ContainerStarted)
            .await
            .unwrap());
        assert!(!s
            .has_health_event("r1", "c2", ContainerDisappeared)
            .await
            .unwrap());
        assert!(!s
            .has_health_event("r2", "c1", ContainerDisappeared)
            .await
            .unwrap());
        // An event with no container matches no container id, not even "".
        assert!(!s.has_health_event("r2", "", ContainerExited).await.unwrap());
        // Two of a kind are fine.
        s.commit(&Change {
            health_events: &[health_event(
                "e4",
                "r1",
                ContainerDisappeared,
                Some("c1"),
                4,
            )],
            ..Change::default()
        })
        .await
        .unwrap();
        assert!(s
            .has_health_event("r1", "c1", ContainerDisappeared)
            .await
            .unwrap());
    }

    pub async fn notifications_newest_first(ctx: Ctx) {
        let s = ctx.store.as_ref();
        assert!(s.list_notifications(10).await.unwrap().is_empty());
        let mut expected = Vec::new();
        for i in 0..5 {
            // created_at_ms descending: the order of writing decides.
            let mut n = notification(&format!("n{i}"), "image.update_available", 100 - i);
            n.payload.insert("i".into(), i.to_string());
            expected.push(n);
        }
        s.commit(&Change {
            notifications: &expected[..2],
            ..Change::default()
        })
        .await
        .unwrap();
        for n in &expected[2..] {
            let o = op(&format!("o-{}", n.id), OperationKind::Refresh, 1);
            s.commit(&Change {
                operation: Some(&o),
                notifications: std::slice::from_ref(n),
                ..Change::default()
            })
            .await
            .unwrap();
        }
        expected.reverse();
        assert_eq!(s.list_notifications(100).await.unwrap(), expected);
        assert_eq!(
            s.list_notifications(2).await.unwrap(),
            expected[..2].to_vec()
        );
        assert!(s.list_notifications(0).await.unwrap().is_empty());
    }

    pub async fn job_results_round_trip(ctx: Ctx) {
        let s = ctx.store.as_ref();
        assert_eq!(s.get_job_result("nope").await.unwrap(), None);
        let ok = job_result("j-ok", "r1", 1_700_000_000_123);
        let failed = JobResult {
            job_id: "j-failed".into(),
            runtime_id: "r2".into(),
            kind: "stop".into(),
            success: false,
            container_id: None,
            engine_endpoint: None,
            error_code: Some("image_pull_failed".into()),
            error_message: Some("pull failed: \"manifest unknown\" — ünïcode".into()),
            finished_at_ms: 2,
        };
        for j in [&ok, &failed] {
            s.commit(&Change {
                job_result: Some(j),
                ..Change::default()
            })
            .await
            .unwrap();
        }
        assert_eq!(s.get_job_result("j-ok").await.unwrap(), Some(ok));
        assert_eq!(s.get_job_result("j-failed").await.unwrap(), Some(failed));
        assert_eq!(
            s.get_job_result("J-OK").await.unwrap(),
            None,
            "ids are exact"
        );
    }

    pub async fn outbox_oldest_first_delete_and_failed(ctx: Ctx) {
        let s = ctx.store.as_ref();
        assert!(all_outbox(s).await.is_empty());
        s.outbox_delete(&[]).await.unwrap();

        let written: Vec<OutboxMessage> = (0..6)
            .map(|i| {
                message(
                    "runtime:health_events",
                    if i % 2 == 0 { "r1" } else { "r2" },
                    &[("i", &i.to_string())],
                    // created_at_ms descending: the order of writing decides.
                    100 - i,
                )
            })
            .collect();
        s.commit(&Change {
            outbox: &written[..3],
            ..Change::default()
        })
        .await
        .unwrap();
        s.commit(&Change {
            outbox: &written[3..],
            ..Change::default()
        })
        .await
        .unwrap();
        let rows = all_outbox(s).await;
        assert_eq!(messages(&rows), written);
        assert!(rows.windows(2).all(|w| w[0].seq < w[1].seq));
        assert_eq!(
            messages(&s.outbox_pending(2).await.unwrap()),
            written[..2].to_vec()
        );
        assert!(s.outbox_pending(0).await.unwrap().is_empty());

        // A failed publish counts, keeps the error, and keeps the message's
        // place.
        s.outbox_failed(rows[0].seq, "redis: connection refused")
            .await
            .unwrap();
        s.outbox_failed(rows[0].seq, "redis: \"timeout\" ü")
            .await
            .unwrap();
        s.outbox_failed(rows[2].seq, "once").await.unwrap();
        s.outbox_failed(999_999, "unknown seq is ignored")
            .await
            .unwrap();
        let after = all_outbox(s).await;
        assert_eq!(messages(&after), written);
        let attempts: Vec<i64> = after.iter().map(|r| r.attempts).collect();
        assert_eq!(attempts, [2, 0, 1, 0, 0, 0]);
        assert_eq!(
            ctx.outbox_last_error(rows[0].seq).await.as_deref(),
            Some("redis: \"timeout\" ü"),
            "the last error is kept"
        );
        assert_eq!(ctx.outbox_last_error(rows[1].seq).await, None);

        // Delete what was published; unknown seqs are ignored.
        s.outbox_delete(&[rows[1].seq, rows[3].seq, 999_999])
            .await
            .unwrap();
        let left = all_outbox(s).await;
        assert_eq!(
            left.iter().map(|r| r.seq).collect::<Vec<_>>(),
            [rows[0].seq, rows[2].seq, rows[4].seq, rows[5].seq]
        );
        assert_eq!(left[0].attempts, 2);
        s.outbox_delete(&[rows[1].seq]).await.unwrap(); // again: nothing
        let seqs: Vec<i64> = left.iter().map(|r| r.seq).collect();
        s.outbox_delete(&seqs).await.unwrap();
        assert!(all_outbox(s).await.is_empty());

        // Many at once (more than one DELETE statement's worth).
        let many: Vec<OutboxMessage> = (0..1200)
            .map(|i| message("s", "k", &[("i", &i.to_string())], i))
            .collect();
        s.commit(&Change {
            outbox: &many,
            ..Change::default()
        })
        .await
        .unwrap();
        let rows = all_outbox(s).await;
        assert_eq!(messages(&rows), many);
        let mut seqs: Vec<i64> = rows.iter().map(|r| r.seq).collect();
        let kept = seqs.remove(700);
        s.outbox_delete(&seqs).await.unwrap();
        let left = all_outbox(s).await;
        assert_eq!(left.len(), 1);
        assert_eq!(left[0].seq, kept);
        assert_eq!(left[0].message, many[700]);

        // A new message after deletes still sorts last.
        let last = message("s", "k", &[("last", "1")], 0);
        s.commit(&Change {
            outbox: std::slice::from_ref(&last),
            ..Change::default()
        })
        .await
        .unwrap();
        let rows = all_outbox(s).await;
        assert_eq!(rows.len(), 2);
        assert_eq!(rows[1].message, last);
        assert!(rows[1].seq > rows.iter().map(|r| r.seq).min().unwrap());
    }

    pub async fn json_columns_round_trip(ctx: Ctx) {
        let s = ctx.store.as_ref();
        let tricky = [
            "",
            "plain",
            "\"double\" and 'single' quotes",
            "back\\slash \\\" and \\n escaped",
            "line\nbreak\ttab\r\u{0001}",
            "ünïcödé — 日本語 — emoji 🚢⚓",
            "{\"looks\": [\"like\", \"json\"]}",
            "'); DROP TABLE outbox; --",
        ];
        let map: BTreeMap<String, String> = tricky
            .iter()
            .enumerate()
            .map(|(i, v)| (format!("k{i} \"{v}\""), v.to_string()))
            .collect();

        let mut e = health_event(
            "ev-\"1\"-ü",
            "rü'ntime",
            HealthEventType::ContainerExited,
            Some("c\"0"),
            1,
        );
        e.details = map.clone();
        let mut empty = health_event("ev-empty", "r", HealthEventType::ContainerOom, None, 2);
        empty.details = BTreeMap::new();
        let mut n = notification("nö-\"1\"", "rollout.halted ✋", 3);
        n.audience = "ädmin".into();
        n.payload = map.clone();
        let mut n_empty = notification("n-empty", "x", 4);
        n_empty.payload = BTreeMap::new();
        // Fields keep their order; names may repeat; empty lists are fine.
        let mut fields: Vec<(String, String)> = tricky
            .iter()
            .map(|v| (format!("f {v}"), v.to_string()))
            .collect();
        fields.push(("f ".into(), "repeated name".into()));
        fields.insert(0, ("z-first".into(), "\"".into()));
        let m = OutboxMessage {
            stream: "notification:intents".into(),
            partition_key: "rü'ntime".into(),
            fields: fields.clone(),
            created_at_ms: 5,
        };
        let m_empty = OutboxMessage {
            stream: "s".into(),
            partition_key: String::new(),
            fields: Vec::new(),
            created_at_ms: 6,
        };
        let j = JobResult {
            error_message: Some(tricky.join(" | ")),
            error_code: Some("ü\"".into()),
            ..job_result("jöb \"1\"", "rü'ntime", 7)
        };
        s.commit(&Change {
            health_events: &[e.clone(), empty.clone()],
            notifications: &[n.clone(), n_empty.clone()],
            job_result: Some(&j),
            outbox: &[m.clone(), m_empty.clone()],
            ..Change::default()
        })
        .await
        .unwrap();

        assert_eq!(all_events(s).await, vec![empty, e.clone()]);
        assert_eq!(
            s.list_health_events(&events(Some("rü'ntime"), None, 10))
                .await
                .unwrap(),
            vec![e]
        );
        assert!(s
            .has_health_event("rü'ntime", "c\"0", HealthEventType::ContainerExited)
            .await
            .unwrap());
        assert_eq!(s.list_notifications(10).await.unwrap(), vec![n_empty, n]);
        assert_eq!(s.get_job_result("jöb \"1\"").await.unwrap(), Some(j));
        assert_eq!(messages(&all_outbox(s).await), vec![m, m_empty]);
    }

    pub async fn json_columns_store_the_documented_shapes(ctx: Ctx) {
        let s = ctx.store.as_ref();
        let mut empty = health_event("ev-empty", "r", HealthEventType::ContainerOom, None, 2);
        empty.details = BTreeMap::new();
        let mut n_empty = notification("n-empty", "x", 4);
        n_empty.payload = BTreeMap::new();
        let m = message(
            "notification:intents",
            "r",
            &[("z-first", "\""), ("a", "1"), ("a", "2")],
            5,
        );
        let m_empty = message("s", "", &[], 6);
        s.commit(&Change {
            health_events: &[empty],
            notifications: &[n_empty],
            outbox: &[m, m_empty],
            ..Change::default()
        })
        .await
        .unwrap();

        let fields_json = ctx
            .text("SELECT fields FROM outbox WHERE stream = 's'")
            .await
            .unwrap();
        assert_eq!(fields_json, "[]");
        let fields_json = ctx
            .text("SELECT fields FROM outbox WHERE stream = 'notification:intents'")
            .await
            .unwrap();
        let value: serde_json::Value = serde_json::from_str(&fields_json).unwrap();
        assert_eq!(
            value,
            serde_json::json!([["z-first", "\""], ["a", "1"], ["a", "2"]])
        );
        let details = ctx
            .text("SELECT details FROM health_events WHERE id = 'ev-empty'")
            .await
            .unwrap();
        assert_eq!(details, "{}");
        let payload = ctx
            .text("SELECT payload FROM notifications WHERE id = 'n-empty'")
            .await
            .unwrap();
        assert_eq!(payload, "{}");
    }

    /// A relay reading while changes commit never sees a key's later
    /// message before an earlier one: what it sees of a key is always a
    /// prefix (by seq) of what that key finally holds.
    pub async fn outbox_seq_order_is_commit_order_per_key(ctx: Ctx) {
        const KEYS: usize = 3;
        const WRITERS_PER_KEY: usize = 3;
        const COMMITS: usize = 8;
        let done = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let reader = {
            let store = ctx.store.clone();
            let done = done.clone();
            tokio::spawn(async move {
                let mut seen = Vec::new();
                while !done.load(std::sync::atomic::Ordering::SeqCst) {
                    seen.push(store.outbox_pending(100_000).await.unwrap());
                    tokio::task::yield_now().await;
                }
                seen
            })
        };
        let mut writers = Vec::new();
        for key in 0..KEYS {
            for w in 0..WRITERS_PER_KEY {
                let store = ctx.store.clone();
                writers.push(tokio::spawn(async move {
                    let key = format!("r{key}");
                    for i in 0..COMMITS {
                        let o = op(&format!("{key}-{w}-{i}"), OperationKind::Start, 1)
                            .for_runtime(&key, "t");
                        let m = [
                            message(
                                "s",
                                &key,
                                &[("w", &w.to_string()), ("i", &i.to_string())],
                                1,
                            ),
                            message("s", "", &[("w", &w.to_string())], 1),
                        ];
                        store
                            .commit(&Change {
                                operation: Some(&o),
                                outbox: &m,
                                ..Change::default()
                            })
                            .await?;
                    }
                    Ok::<_, StoreError>(())
                }));
            }
        }
        for w in writers {
            w.await.unwrap().unwrap();
        }
        done.store(true, std::sync::atomic::Ordering::SeqCst);
        let seen = reader.await.unwrap();
        let last = all_outbox(ctx.store.as_ref()).await;
        assert_eq!(last.len(), KEYS * WRITERS_PER_KEY * COMMITS * 2);
        let by_key = |rows: &[OutboxRow], key: &str| -> Vec<i64> {
            rows.iter()
                .filter(|r| r.message.partition_key == key)
                .map(|r| r.seq)
                .collect()
        };
        let mut keys: Vec<String> = (0..KEYS).map(|k| format!("r{k}")).collect();
        keys.push(String::new());
        for key in &keys {
            let all = by_key(&last, key);
            for snapshot in &seen {
                let part = by_key(snapshot, key);
                assert_eq!(
                    part,
                    all[..part.len()],
                    "key {key:?}: the relay saw a later message before an earlier one"
                );
            }
        }
        // Each writer's messages are in its own commit order.
        for key in 0..KEYS {
            for w in 0..WRITERS_PER_KEY {
                let is: Vec<String> = last
                    .iter()
                    .filter(|r| {
                        r.message.partition_key == format!("r{key}")
                            && r.message.fields[0].1 == w.to_string()
                    })
                    .map(|r| r.message.fields[1].1.clone())
                    .collect();
                let expected: Vec<String> = (0..COMMITS).map(|i| i.to_string()).collect();
                assert_eq!(is, expected);
            }
        }
    }

    /// The relay keeps one high-water mark for the whole outbox, so no
    /// snapshot may ever see a row whose seq is above one still to commit,
    /// whatever its key: every snapshot is a prefix of the final outbox.
    /// (Each writer has a key of its own, so nothing but the store's
    /// commit-order rule orders them.)
    pub async fn outbox_seq_order_is_commit_order_across_keys(ctx: Ctx) {
        const WRITERS: usize = 6;
        const COMMITS: usize = 10;
        let done = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let reader = {
            let store = ctx.store.clone();
            let done = done.clone();
            tokio::spawn(async move {
                let mut seen = Vec::new();
                while !done.load(std::sync::atomic::Ordering::SeqCst) {
                    let seqs: Vec<i64> = store
                        .outbox_pending(100_000)
                        .await
                        .unwrap()
                        .iter()
                        .map(|r| r.seq)
                        .collect();
                    seen.push(seqs);
                    tokio::task::yield_now().await;
                }
                seen
            })
        };
        let mut writers = Vec::new();
        for w in 0..WRITERS {
            let store = ctx.store.clone();
            writers.push(tokio::spawn(async move {
                let key = format!("w{w}");
                for i in 0..COMMITS {
                    // A runtime record too, so the change holds row locks
                    // and takes a while between drawing a seq and committing.
                    let r = runtime(&key, "t", RuntimeStatus::Running, i as i64);
                    let o =
                        op(&format!("{key}-{i}"), OperationKind::Start, 1).for_runtime(&key, "t");
                    let m = [message("s", &key, &[("i", &i.to_string())], 1)];
                    store
                        .commit(&Change {
                            runtime: Some(&r),
                            operation: Some(&o),
                            outbox: &m,
                            ..Change::default()
                        })
                        .await?;
                }
                Ok::<_, StoreError>(())
            }));
        }
        for w in writers {
            w.await.unwrap().unwrap();
        }
        done.store(true, std::sync::atomic::Ordering::SeqCst);
        let seen = reader.await.unwrap();
        let all: Vec<i64> = all_outbox(ctx.store.as_ref())
            .await
            .iter()
            .map(|r| r.seq)
            .collect();
        assert_eq!(all.len(), WRITERS * COMMITS);
        for snapshot in &seen {
            assert_eq!(
                snapshot[..],
                all[..snapshot.len()],
                "a relay saw a later seq before an earlier one had committed"
            );
        }
    }

    /// The relay's mark in Redis is kept per outbox identity: fixed until
    /// replaced, and `drawn` at or above every seq ever written, deleted
    /// rows included.
    pub async fn outbox_identity_is_fixed_and_counts_every_seq_drawn(ctx: Ctx) {
        let s = ctx.store.as_ref();
        let first = s.outbox_identity().await.unwrap();
        assert!(first.id.len() >= 16, "{first:?}");
        assert_eq!(first.drawn, 0, "nothing drawn yet");
        let m = [
            message("s", "r1", &[("a", "1")], 1),
            message("s", "", &[("b", "2")], 1),
        ];
        s.commit(&Change {
            outbox: &m,
            ..Change::default()
        })
        .await
        .unwrap();
        let rows = all_outbox(s).await;
        let highest = rows.iter().map(|r| r.seq).max().unwrap();
        let after = s.outbox_identity().await.unwrap();
        assert_eq!(after.id, first.id, "the id stays");
        assert_eq!(after.drawn, highest);
        s.outbox_delete(&rows.iter().map(|r| r.seq).collect::<Vec<_>>())
            .await
            .unwrap();
        assert_eq!(
            s.outbox_identity().await.unwrap().drawn,
            highest,
            "deleting draws nothing back"
        );
        let new = s.outbox_new_identity().await.unwrap();
        assert_ne!(new, first.id);
        let replaced = s.outbox_identity().await.unwrap();
        assert_eq!(replaced.id, new);
        assert_eq!(replaced.drawn, highest, "seqs go on");
    }

    /// One notification intent is delivered to one webhook once: a change
    /// that would queue it again (under any delivery id) is refused whole.
    pub async fn a_second_delivery_of_one_intent_to_one_webhook_is_refused(ctx: Ctx) {
        let s = ctx.store.as_ref();
        let n1 = notification("n1", "runtime.start_failed", 10);
        s.commit(&Change {
            notifications: std::slice::from_ref(&n1),
            webhook_deliveries: &[delivery("d1", "a", &n1), delivery("d2", "b", &n1)],
            ..Change::default()
        })
        .await
        .unwrap();
        let r1 = runtime("r1", "t", RuntimeStatus::Failed, 20);
        let err = s
            .commit(&Change {
                runtime: Some(&r1),
                webhook_deliveries: &[delivery("d3", "a", &n1)],
                ..Change::default()
            })
            .await
            .unwrap_err();
        assert!(matches!(err, StoreError::Conflict(_)), "{err:?}");
        // Twice within one change: refused too.
        let n2 = notification("n2", "x", 30);
        let err = s
            .commit(&Change {
                runtime: Some(&r1),
                notifications: std::slice::from_ref(&n2),
                webhook_deliveries: &[delivery("d4", "a", &n2), delivery("d5", "a", &n2)],
                ..Change::default()
            })
            .await
            .unwrap_err();
        assert!(matches!(err, StoreError::Conflict(_)), "{err:?}");
        let ids: Vec<String> = s
            .list_webhook_deliveries(None, 100)
            .await
            .unwrap()
            .into_iter()
            .map(|d| d.id)
            .collect();
        assert_eq!(
            ids,
            ["d2", "d1"],
            "newest first; nothing of the refused changes"
        );
        assert_eq!(s.get_runtime("r1").await.unwrap(), None);
    }

    pub async fn webhook_deliveries_are_written_with_the_commit_and_queued_per_webhook(ctx: Ctx) {
        let s = ctx.store.as_ref();
        assert_eq!(s.webhook_head("a").await.unwrap(), None);
        assert_eq!(s.webhook_pending_count("a", 100).await.unwrap(), 0);
        assert!(s
            .list_webhook_deliveries(None, 100)
            .await
            .unwrap()
            .is_empty());

        let r1 = runtime("r1", "t", RuntimeStatus::Failed, 10);
        let o1 = op("o1", OperationKind::Start, 10).for_runtime("r1", "t");
        let n1 = notification("n1", "runtime.start_failed", 10);
        let n2 = notification("n2", "image.pull_failed", 11);
        // n1 to both webhooks, n2 to `a` only; interleaved in one change.
        let first = [
            delivery("d1", "a", &n1),
            delivery("d2", "b", &n1),
            delivery("d3", "a", &n2),
        ];
        s.commit(&Change {
            runtime: Some(&r1),
            operation: Some(&o1),
            notifications: &[n1.clone(), n2.clone()],
            webhook_deliveries: &first,
            ..Change::default()
        })
        .await
        .unwrap();
        // A change with deliveries only is a change too.
        let n3 = notification("n3", "rollout.halted", 12);
        let second = [delivery("d4", "a", &n3), delivery("d5", "b", &n3)];
        s.commit(&Change {
            webhook_deliveries: &second,
            ..Change::default()
        })
        .await
        .unwrap();

        let a = deliveries_of(s, "a").await;
        let b = deliveries_of(s, "b").await;
        assert_eq!(
            a.iter().map(written).collect::<Vec<_>>(),
            vec![first[0].clone(), first[2].clone(), second[0].clone()]
        );
        assert_eq!(
            b.iter().map(written).collect::<Vec<_>>(),
            vec![first[1].clone(), second[1].clone()]
        );
        for d in a.iter().chain(&b) {
            assert_eq!(d.attempts, 0);
            assert_eq!(d.last_error, None);
            assert_eq!(d.last_attempt_at_ms, None);
            assert_eq!(d.delivered_at_ms, None);
        }
        assert!(a.windows(2).all(|w| w[0].seq < w[1].seq));
        assert_eq!(s.webhook_pending_count("a", 100).await.unwrap(), 3);
        assert_eq!(s.webhook_pending_count("a", 2).await.unwrap(), 2, "capped");
        assert_eq!(s.webhook_pending_count("b", 100).await.unwrap(), 2);
        assert_eq!(s.webhook_pending_count("c", 100).await.unwrap(), 0);
        // The log: newest first, every webhook, limited.
        let ids = |rows: Vec<WebhookDelivery>| rows.into_iter().map(|d| d.id).collect::<Vec<_>>();
        assert_eq!(
            ids(s.list_webhook_deliveries(None, 100).await.unwrap()),
            ["d5", "d4", "d3", "d2", "d1"]
        );
        assert_eq!(
            ids(s.list_webhook_deliveries(None, 2).await.unwrap()),
            ["d5", "d4"]
        );
        assert_eq!(
            ids(s.list_webhook_deliveries(Some("a"), 2).await.unwrap()),
            ["d4", "d3"]
        );
        assert!(s
            .list_webhook_deliveries(Some("c"), 10)
            .await
            .unwrap()
            .is_empty());
    }

    pub async fn webhook_head_is_the_oldest_pending_and_success_marks_it_delivered(ctx: Ctx) {
        let s = ctx.store.as_ref();
        let notes: Vec<Notification> = (0..3)
            .map(|i| notification(&format!("n{i}"), "t", i))
            .collect();
        let ds: Vec<NewWebhookDelivery> = notes
            .iter()
            .enumerate()
            .map(|(i, n)| delivery(&format!("d{i}"), "a", n))
            .collect();
        for d in &ds {
            s.commit(&Change {
                webhook_deliveries: std::slice::from_ref(d),
                ..Change::default()
            })
            .await
            .unwrap();
        }
        let head = s.webhook_head("a").await.unwrap().unwrap();
        assert_eq!(written(&head), ds[0]);
        assert_eq!(s.webhook_head("b").await.unwrap(), None);

        // Failures count and keep their error; the head stays the head.
        s.webhook_failed(head.seq, "the receiver answered HTTP 500", 100)
            .await
            .unwrap();
        s.webhook_failed(head.seq, "connection refused: \"ü\"", 101)
            .await
            .unwrap();
        s.webhook_failed(999_999, "unknown seq is ignored", 1)
            .await
            .unwrap();
        let again = s.webhook_head("a").await.unwrap().unwrap();
        assert_eq!(again.seq, head.seq);
        assert_eq!(again.attempts, 2);
        assert_eq!(
            again.last_error.as_deref(),
            Some("connection refused: \"ü\"")
        );
        assert_eq!(again.last_attempt_at_ms, Some(101));
        assert_eq!(again.delivered_at_ms, None);

        // Success: delivered (kept in the log), the next one is the head.
        s.webhook_delivered(head.seq, 200).await.unwrap();
        s.webhook_delivered(999_999, 200).await.unwrap();
        let next = s.webhook_head("a").await.unwrap().unwrap();
        assert_eq!(written(&next), ds[1]);
        assert_eq!(s.webhook_pending_count("a", 100).await.unwrap(), 2);
        let log = deliveries_of(s, "a").await;
        assert_eq!(log.len(), 3);
        assert_eq!(log[0].delivered_at_ms, Some(200));
        assert_eq!(log[0].last_attempt_at_ms, Some(200));
        assert_eq!(log[0].attempts, 3);
        assert_eq!(
            log[0].last_error.as_deref(),
            Some("connection refused: \"ü\""),
            "the log keeps the last error"
        );

        // A delivered row is never failed or delivered again.
        s.webhook_failed(head.seq, "late", 300).await.unwrap();
        s.webhook_delivered(head.seq, 301).await.unwrap();
        let log = deliveries_of(s, "a").await;
        assert_eq!(log[0].attempts, 3);
        assert_eq!(log[0].delivered_at_ms, Some(200));

        // Out of order success (never done by the loop) still leaves the
        // lowest pending as the head.
        s.webhook_delivered(log[2].seq, 400).await.unwrap();
        assert_eq!(s.webhook_head("a").await.unwrap().unwrap().seq, log[1].seq);
        s.webhook_delivered(log[1].seq, 401).await.unwrap();
        assert_eq!(s.webhook_head("a").await.unwrap(), None);
        assert_eq!(s.webhook_pending_count("a", 100).await.unwrap(), 0);
    }

    pub async fn a_refused_commit_writes_no_webhook_delivery(ctx: Ctx) {
        let s = ctx.store.as_ref();
        let n1 = notification("n1", "runtime.start_failed", 10);
        let job = job_result("job-1", "r1", 10);
        s.commit(&Change {
            job_result: Some(&job),
            notifications: std::slice::from_ref(&n1),
            webhook_deliveries: &[delivery("d1", "a", &n1)],
            ..Change::default()
        })
        .await
        .unwrap();

        // The job already has a result: nothing of this change is written.
        let r1 = runtime("r1", "t", RuntimeStatus::Failed, 20);
        let n2 = notification("n2", "runtime.start_failed", 20);
        let err = s
            .commit(&Change {
                runtime: Some(&r1),
                job_result: Some(&job),
                notifications: std::slice::from_ref(&n2),
                webhook_deliveries: &[delivery("d2", "a", &n2), delivery("d3", "b", &n2)],
                ..Change::default()
            })
            .await
            .unwrap_err();
        assert!(matches!(err, StoreError::Conflict(_)), "{err:?}");
        // A delivery id already stored: refused, nothing written.
        let n3 = notification("n3", "x", 30);
        let err = s
            .commit(&Change {
                runtime: Some(&r1),
                notifications: std::slice::from_ref(&n3),
                webhook_deliveries: &[delivery("d4", "b", &n3), delivery("d1", "a", &n3)],
                ..Change::default()
            })
            .await
            .unwrap_err();
        assert!(matches!(err, StoreError::Conflict(_)), "{err:?}");

        let all = s.list_webhook_deliveries(None, 100).await.unwrap();
        assert_eq!(
            all.iter().map(|d| d.id.as_str()).collect::<Vec<_>>(),
            ["d1"]
        );
        assert_eq!(s.webhook_pending_count("b", 100).await.unwrap(), 0);
        assert_eq!(s.get_runtime("r1").await.unwrap(), None);
        assert_eq!(s.list_notifications(10).await.unwrap(), vec![n1]);
    }

    pub async fn webhook_prune_keeps_pending_rows_and_the_newest_delivered(ctx: Ctx) {
        let s = ctx.store.as_ref();
        let mut ds = Vec::new();
        for i in 0..8 {
            let n = notification(&format!("n{i}"), "t", i);
            ds.push(delivery(&format!("a{i}"), "a", &n));
            ds.push(delivery(&format!("b{i}"), "b", &n));
        }
        s.commit(&Change {
            webhook_deliveries: &ds,
            ..Change::default()
        })
        .await
        .unwrap();
        // a0..a5 delivered at 100..105; a6, a7 pending. All of b delivered.
        let a = deliveries_of(s, "a").await;
        for (i, d) in a.iter().take(6).enumerate() {
            s.webhook_delivered(d.seq, 100 + i as i64).await.unwrap();
        }
        for d in deliveries_of(s, "b").await {
            s.webhook_delivered(d.seq, 100).await.unwrap();
        }
        // Older than 102: a0, a1.
        assert_eq!(s.prune_webhook_deliveries("a", 102, 100).await.unwrap(), 2);
        // Beyond the newest 2 delivered: a2, a3.
        assert_eq!(s.prune_webhook_deliveries("a", 0, 2).await.unwrap(), 2);
        let left: Vec<String> = deliveries_of(s, "a")
            .await
            .into_iter()
            .map(|d| d.id)
            .collect();
        assert_eq!(left, ["a4", "a5", "a6", "a7"]);
        // Pending rows stay, whatever their age or number.
        assert_eq!(
            s.prune_webhook_deliveries("a", i64::MAX, 0).await.unwrap(),
            2
        );
        let left: Vec<String> = deliveries_of(s, "a")
            .await
            .into_iter()
            .map(|d| d.id)
            .collect();
        assert_eq!(left, ["a6", "a7"]);
        assert_eq!(s.webhook_head("a").await.unwrap().unwrap().id, "a6");
        // Another webhook's rows are untouched.
        assert_eq!(deliveries_of(s, "b").await.len(), 8);
    }

    pub async fn webhook_seq_order_is_commit_order_per_webhook(ctx: Ctx) {
        const WRITERS: usize = 4;
        const COMMITS: usize = 8;
        let done = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let reader = {
            let store = ctx.store.clone();
            let done = done.clone();
            tokio::spawn(async move {
                let mut seen = Vec::new();
                while !done.load(std::sync::atomic::Ordering::SeqCst) {
                    let mut rows = store
                        .list_webhook_deliveries(Some("a"), 100_000)
                        .await
                        .unwrap();
                    rows.reverse();
                    seen.push(rows.into_iter().map(|d| d.seq).collect::<Vec<_>>());
                    tokio::task::yield_now().await;
                }
                seen
            })
        };
        let mut writers = Vec::new();
        for w in 0..WRITERS {
            let store = ctx.store.clone();
            writers.push(tokio::spawn(async move {
                for i in 0..COMMITS {
                    let n = notification(&format!("n-{w}-{i}"), "t", 1);
                    let ds = [
                        delivery(&format!("a-{w}-{i}"), "a", &n),
                        delivery(&format!("b-{w}-{i}"), "b", &n),
                    ];
                    store
                        .commit(&Change {
                            notifications: std::slice::from_ref(&n),
                            webhook_deliveries: &ds,
                            ..Change::default()
                        })
                        .await?;
                }
                Ok::<_, StoreError>(())
            }));
        }
        for w in writers {
            w.await.unwrap().unwrap();
        }
        done.store(true, std::sync::atomic::Ordering::SeqCst);
        let seen = reader.await.unwrap();
        let all = deliveries_of(ctx.store.as_ref(), "a").await;
        assert_eq!(all.len(), WRITERS * COMMITS);
        let seqs: Vec<i64> = all.iter().map(|d| d.seq).collect();
        for snapshot in &seen {
            assert_eq!(
                snapshot[..],
                seqs[..snapshot.len()],
                "a reader saw a later delivery before an earlier one"
            );
        }
        // Each writer's deliveries are in its own commit order.
        for w in 0..WRITERS {
            let is: Vec<String> = all
                .iter()
                .filter(|d| d.id.starts_with(&format!("a-{w}-")))
                .map(|d| d.id.clone())
                .collect();
            let expected: Vec<String> = (0..COMMITS).map(|i| format!("a-{w}-{i}")).collect();
            assert_eq!(is, expected);
        }
    }

    pub async fn corrupt_event_rows_are_reported(ctx: Ctx) {
        let s = ctx.store.as_ref();
        s.commit(&Change {
            health_events: &[health_event(
                "e",
                "r",
                HealthEventType::ContainerStarted,
                None,
                1,
            )],
            notifications: &[notification("n", "x", 1)],
            outbox: &[message("s", "r", &[("a", "b")], 1)],
            ..Change::default()
        })
        .await
        .unwrap();

        ctx.exec("UPDATE health_events SET event_type = 'exploded'")
            .await;
        expect_corrupt(
            s.list_health_events(&events(None, None, 10)).await,
            "health_events.event_type",
        )
        .await;
        ctx.exec("UPDATE health_events SET event_type = 'container_started', details = '[]'")
            .await;
        expect_corrupt(
            s.list_health_events(&events(Some("r"), None, 10)).await,
            "health_events.details",
        )
        .await;
        ctx.exec("UPDATE notifications SET payload = '{\"n\": 1}'")
            .await;
        expect_corrupt(s.list_notifications(10).await, "notifications.payload").await;
        ctx.exec("UPDATE outbox SET fields = '{\"a\": \"b\"}'")
            .await;
        expect_corrupt(s.outbox_pending(10).await, "outbox.fields").await;
        ctx.exec("UPDATE outbox SET fields = '[[\"a\"]]'").await;
        expect_corrupt(s.outbox_pending(10).await, "outbox.fields").await;
    }

    pub async fn observations_upsert_through_commit(ctx: Ctx) {
        let s = ctx.store.as_ref();
        assert_eq!(s.get_observation("a").await.unwrap(), None);
        async fn observe(s: &dyn Store, obs: &Observation) {
            s.commit(&Change {
                observation: Some(obs),
                ..Change::default()
            })
            .await
            .unwrap();
        }

        let a1 = observation("a", "latest", 1, 10);
        let b1 = observation("b", "stable", 3, 11);
        observe(s, &a1).await;
        observe(s, &b1).await;
        assert_eq!(s.get_observation("a").await.unwrap(), Some(a1.clone()));
        assert_eq!(s.get_observation("b").await.unwrap(), Some(b1.clone()));

        // An upsert replaces every column of that template's observation only.
        let a2 = observation("a", "v2", 2, 20);
        observe(s, &a2).await;
        assert_eq!(s.get_observation("a").await.unwrap(), Some(a2.clone()));
        assert_eq!(s.get_observation("b").await.unwrap(), Some(b1));
        // Bookkeeping alone writes no operation row.
        assert_eq!(op_count(s).await, 0);

        // Beside an operation, in the same commit.
        let b2 = observation("b", "stable", 4, 30);
        let o = done(
            op("watch-b", OperationKind::Refresh, 30).for_template("b"),
            30,
        );
        s.commit(&Change {
            observation: Some(&b2),
            operation: Some(&o),
            ..Change::default()
        })
        .await
        .unwrap();
        assert_eq!(s.get_observation("b").await.unwrap(), Some(b2));
        assert_eq!(s.get_observation("a").await.unwrap(), Some(a2));
        assert_eq!(s.list_operations(&all_ops()).await.unwrap(), vec![o]);
    }

    pub async fn rejections_reject_then_lift(ctx: Ctx) {
        let s = ctx.store.as_ref();
        async fn reject(s: &dyn Store, rejection: RejectionChange<'_>) {
            s.commit(&Change {
                rejection: Some(rejection),
                ..Change::default()
            })
            .await
            .unwrap();
        }
        let d1 = digest(1);
        let d2 = digest(2);
        let (d1, d2) = (d1.as_str(), d2.as_str());
        assert!(!s.is_rejected("t", d1).await.unwrap());
        // None to lift is no error.
        reject(
            s,
            RejectionChange::Lift {
                template: "t",
                digest: d1,
            },
        )
        .await;
        assert!(!s.is_rejected("t", d1).await.unwrap());

        reject(
            s,
            RejectionChange::Reject {
                template: "t",
                digest: d1,
                reason: "rollout halted",
                at_ms: 10,
            },
        )
        .await;
        assert!(s.is_rejected("t", d1).await.unwrap());
        assert!(!s.is_rejected("t", d2).await.unwrap(), "other digest");
        assert!(!s.is_rejected("u", d1).await.unwrap(), "other template");
        assert_eq!(
            ctx.rejection_note("t", d1).await.as_deref(),
            Some("rollout halted 10")
        );

        // Rejecting again replaces the reason and time.
        reject(
            s,
            RejectionChange::Reject {
                template: "t",
                digest: d1,
                reason: "halted again",
                at_ms: 20,
            },
        )
        .await;
        assert!(s.is_rejected("t", d1).await.unwrap());
        assert_eq!(
            ctx.rejection_note("t", d1).await.as_deref(),
            Some("halted again 20")
        );

        reject(
            s,
            RejectionChange::Reject {
                template: "u",
                digest: d1,
                reason: "x",
                at_ms: 30,
            },
        )
        .await;
        reject(
            s,
            RejectionChange::Lift {
                template: "t",
                digest: d1,
            },
        )
        .await;
        assert!(!s.is_rejected("t", d1).await.unwrap());
        assert_eq!(ctx.rejection_note("t", d1).await, None);
        assert!(s.is_rejected("u", d1).await.unwrap(), "only t's lifted");
        assert_eq!(op_count(s).await, 0);

        // A promote of a rejected digest lifts it in the same commit.
        let p = pin("u", 1, 40);
        let o = done(op("promote-u", OperationKind::PinPromote, 40), 40);
        s.commit(&Change {
            pin: Some(PinChange {
                pin: &p,
                entry: &promote_entry(&p, None),
            }),
            operation: Some(&o),
            rejection: Some(RejectionChange::Lift {
                template: "u",
                digest: d1,
            }),
            ..Change::default()
        })
        .await
        .unwrap();
        assert!(!s.is_rejected("u", d1).await.unwrap());
        assert_eq!(s.get_pin("u").await.unwrap(), Some(p));
        assert_eq!(s.list_operations(&all_ops()).await.unwrap(), vec![o]);
    }

    pub async fn pin_change_writes_pin_history_and_operation_in_one_commit(ctx: Ctx) {
        let s = ctx.store.as_ref();
        let p1 = pin("t", 1, 10);
        let e1 = promote_entry(&p1, None);
        let o1 = done(
            op("o1", OperationKind::PinPromote, 10).for_template("t"),
            10,
        );
        s.commit(&Change {
            pin: Some(PinChange {
                pin: &p1,
                entry: &e1,
            }),
            operation: Some(&o1),
            ..Change::default()
        })
        .await
        .unwrap();
        assert_eq!(s.get_pin("t").await.unwrap(), Some(p1.clone()));
        assert_eq!(s.pin_history("t", 10).await.unwrap(), vec![e1.clone()]);
        assert_eq!(
            s.list_operations(&all_ops()).await.unwrap(),
            vec![o1.clone()]
        );

        // A watcher track: the promote, the rollout it starts and the
        // notification, together.
        let mut p2 = pin("t", 2, 20);
        p2.promoted_by = "watcher".into();
        let e2 = promote_entry(&p2, Some(p1.digest.clone()));
        let mut o2 = op("o2", OperationKind::PinPromote, 20).for_template("t");
        o2.source = Source::ImageWatch;
        let o2 = done(o2, 20);
        let ro = rollout("ro", "t", RolloutState::Running, 20);
        let targets = [target("r1", 0, TargetState::Pending, 20)];
        let out = [message(
            "notification:intents",
            "",
            &[("notification_type", "rollout.started")],
            20,
        )];
        s.commit(&Change {
            pin: Some(PinChange {
                pin: &p2,
                entry: &e2,
            }),
            operation: Some(&o2),
            rollout: Some(RolloutChange {
                rollout: &ro,
                targets: &targets,
            }),
            outbox: &out,
            ..Change::default()
        })
        .await
        .unwrap();
        assert_eq!(s.get_pin("t").await.unwrap(), Some(p2.clone()));
        assert_eq!(
            s.pin_history("t", 10).await.unwrap(),
            vec![e2.clone(), e1.clone()]
        );
        assert_eq!(
            s.get_rollout("ro").await.unwrap(),
            Some((ro, targets.to_vec()))
        );
        assert_eq!(messages(&all_outbox(s).await), out.to_vec());
        assert_eq!(
            s.list_operations(&all_ops()).await.unwrap(),
            vec![o2.clone(), o1.clone()]
        );

        // A refused change writes none of the pin, its history or its
        // operation.
        let job = job_result("job-1", "r1", 30);
        s.commit(&Change {
            job_result: Some(&job),
            ..Change::default()
        })
        .await
        .unwrap();
        let p3 = pin("t", 3, 30);
        let e3 = promote_entry(&p3, Some(p2.digest.clone()));
        let o3 = op("o3", OperationKind::PinPromote, 30);
        assert!(matches!(
            s.commit(&Change {
                pin: Some(PinChange {
                    pin: &p3,
                    entry: &e3,
                }),
                operation: Some(&o3),
                job_result: Some(&job),
                ..Change::default()
            })
            .await,
            Err(StoreError::Conflict(_))
        ));
        assert_eq!(s.get_pin("t").await.unwrap(), Some(p2));
        assert_eq!(s.pin_history("t", 10).await.unwrap(), vec![e2, e1]);
        assert_eq!(s.list_operations(&all_ops()).await.unwrap(), vec![o2, o1]);
    }

    pub async fn commit_with_every_part_is_all_or_nothing(ctx: Ctx) {
        let s = ctx.store.as_ref();
        let rejected = digest(9);
        let r1 = runtime("r1", "t", RuntimeStatus::Running, 10);
        let o1 = done(
            op("o1", OperationKind::Recreate, 10).for_runtime("r1", "t"),
            11,
        );
        let p1 = pin("t", 1, 10);
        let e1 = promote_entry(&p1, None);
        let obs1 = observation("t", "latest", 1, 10);
        let ro1 = rollout("ro-1", "t", RolloutState::Running, 10);
        let targets1 = [
            target("r1", 0, TargetState::Updated, 11),
            target("r2", 1, TargetState::Pending, 10),
        ];
        let evs1 = [health_event(
            "e1",
            "r1",
            HealthEventType::ContainerStarted,
            Some("c1"),
            11,
        )];
        let notes1 = [notification("n1", "rollout.started", 10)];
        let job1 = job_result("job-1", "r1", 11);
        let out1 = [
            message("runtime:job_results", "r1", &[("job_id", "job-1")], 11),
            message(
                "notification:intents",
                "",
                &[("notification_type", "rollout.started")],
                10,
            ),
        ];
        let wh1 = [delivery("wd-1", "hook", &notes1[0])];
        let pl1 = plugin("r1", "skills", Some(&"a".repeat(40)));
        let pu1 = update(
            "pu-1",
            "r1",
            "skills",
            &"b".repeat(40),
            UpdateStatus::Pending,
            10,
        );
        s.commit(&Change {
            runtime: Some(&r1),
            operation: Some(&o1),
            plugin: Some(PluginChange::Put(&pl1)),
            plugin_update: Some(&pu1),
            pin: Some(PinChange {
                pin: &p1,
                entry: &e1,
            }),
            observation: Some(&obs1),
            rejection: Some(RejectionChange::Reject {
                template: "t",
                digest: rejected.as_str(),
                reason: "halted",
                at_ms: 10,
            }),
            rollout: Some(RolloutChange {
                rollout: &ro1,
                targets: &targets1,
            }),
            health_events: &evs1,
            notifications: &notes1,
            job_result: Some(&job1),
            outbox: &out1,
            webhook_deliveries: &wh1,
        })
        .await
        .unwrap();
        // Every part is written.
        assert_eq!(s.get_runtime("r1").await.unwrap(), Some(r1.clone()));
        assert_eq!(
            s.list_operations(&all_ops()).await.unwrap(),
            vec![o1.clone()]
        );
        assert_eq!(s.get_pin("t").await.unwrap(), Some(p1.clone()));
        assert_eq!(s.pin_history("t", 10).await.unwrap(), vec![e1.clone()]);
        assert_eq!(s.get_observation("t").await.unwrap(), Some(obs1.clone()));
        assert!(s.is_rejected("t", rejected.as_str()).await.unwrap());
        assert_eq!(
            s.get_rollout("ro-1").await.unwrap(),
            Some((ro1.clone(), targets1.to_vec()))
        );
        assert_eq!(all_events(s).await, evs1.to_vec());
        assert_eq!(s.list_notifications(10).await.unwrap(), notes1.to_vec());
        assert_eq!(s.get_job_result("job-1").await.unwrap(), Some(job1.clone()));
        assert_eq!(messages(&all_outbox(s).await), out1.to_vec());
        assert_eq!(
            deliveries_of(s, "hook")
                .await
                .iter()
                .map(written)
                .collect::<Vec<_>>(),
            wh1.to_vec()
        );
        assert_eq!(
            s.get_plugin("r1", "skills").await.unwrap(),
            Some(pl1.clone())
        );
        assert_eq!(
            s.get_plugin_update("pu-1").await.unwrap(),
            Some(pu1.clone())
        );
        let all_updates = PluginUpdateFilter {
            limit: 100,
            ..Default::default()
        };

        let snapshot = || async {
            (
                (
                    s.list_runtimes(&RuntimeFilter::default()).await.unwrap(),
                    s.list_operations(&all_ops()).await.unwrap(),
                    s.list_pins().await.unwrap(),
                    s.pin_history("t", 100).await.unwrap(),
                    s.get_observation("t").await.unwrap(),
                    s.is_rejected("t", rejected.as_str()).await.unwrap(),
                    s.is_rejected("t", digest(8).as_str()).await.unwrap(),
                ),
                (
                    s.list_rollouts(None, 100).await.unwrap(),
                    s.get_rollout("ro-1").await.unwrap(),
                    s.get_rollout("ro-2").await.unwrap(),
                    all_events(s).await,
                    s.list_notifications(100).await.unwrap(),
                    s.get_job_result("job-2").await.unwrap(),
                    all_outbox(s).await,
                ),
                (
                    s.list_plugins(None).await.unwrap(),
                    s.list_plugin_updates(&all_updates).await.unwrap(),
                    s.list_webhook_deliveries(None, 100).await.unwrap(),
                ),
            )
        };
        let before = snapshot().await;

        // The next decision, changing every part; each variant below has
        // exactly one part that refuses it.
        let mut r1_failed = r1.clone();
        r1_failed.status = RuntimeStatus::Failed;
        let o2 = op("o2", OperationKind::Recreate, 20).for_runtime("r2", "t");
        let p2 = pin("t", 2, 20);
        let e2 = promote_entry(&p2, Some(p1.digest.clone()));
        let obs2 = observation("t", "latest", 2, 20);
        let mut ro1_halted = ro1.clone();
        ro1_halted.state = RolloutState::Halted;
        ro1_halted.failures = 1;
        let targets2 = [
            target("r2", 1, TargetState::Failed, 20),
            target("r3", 2, TargetState::Pending, 20),
        ];
        let e2_new = health_event("e2", "r2", HealthEventType::HealthUnhealthy, Some("c2"), 20);
        let notes2 = [notification("n2", "rollout.halted", 20)];
        let job2 = job_result("job-2", "r2", 20);
        let out2 = [message(
            "runtime:job_results",
            "r2",
            &[("job_id", "job-2")],
            20,
        )];
        let fresh_events = [e2_new.clone()];
        let wh2 = [
            delivery("wd-2", "hook", &notes2[0]),
            delivery("wd-3", "other", &notes2[0]),
        ];
        let dup_delivery = [wh2[0].clone(), wh1[0].clone()];
        let pu2 = update(
            "pu-2",
            "r1",
            "tools",
            &"c".repeat(40),
            UpdateStatus::Pending,
            20,
        );
        let next = Change {
            runtime: Some(&r1_failed),
            operation: Some(&o2),
            plugin: Some(PluginChange::Delete {
                runtime_id: "r1",
                name: "skills",
            }),
            plugin_update: Some(&pu2),
            pin: Some(PinChange {
                pin: &p2,
                entry: &e2,
            }),
            observation: Some(&obs2),
            rejection: Some(RejectionChange::Lift {
                template: "t",
                digest: rejected.as_str(),
            }),
            rollout: Some(RolloutChange {
                rollout: &ro1_halted,
                targets: &targets2,
            }),
            health_events: &fresh_events,
            notifications: &notes2,
            job_result: Some(&job2),
            outbox: &out2,
            webhook_deliveries: &wh2,
        };

        let dup_stored_event = [e2_new.clone(), evs1[0].clone()];
        let dup_event_in_change = [e2_new.clone(), e2_new.clone()];
        let second_pending = update(
            "pu-3",
            "r1",
            "skills",
            &"d".repeat(40),
            UpdateStatus::Pending,
            20,
        );
        let refused = [
            (
                "a second pending update of one plugin",
                Change {
                    plugin_update: Some(&second_pending),
                    ..next
                },
            ),
            (
                "a duplicate job result",
                Change {
                    job_result: Some(&job1),
                    ..next
                },
            ),
            (
                "a stored health event id",
                Change {
                    health_events: &dup_stored_event,
                    ..next
                },
            ),
            (
                "a health event id twice in the change",
                Change {
                    health_events: &dup_event_in_change,
                    ..next
                },
            ),
            (
                "a stored notification id",
                Change {
                    notifications: &notes1,
                    ..next
                },
            ),
            (
                "a stored webhook delivery id",
                Change {
                    webhook_deliveries: &dup_delivery,
                    ..next
                },
            ),
        ];
        for (why, change) in refused {
            match s.commit(&change).await {
                Err(StoreError::Conflict(_)) => {}
                other => panic!("{why}: expected a conflict, got {other:?}"),
            }
            assert_eq!(snapshot().await, before, "{why}: nothing of it written");
        }

        // Without the refusal, all of it.
        s.commit(&next).await.unwrap();
        assert_eq!(s.get_plugin("r1", "skills").await.unwrap(), None);
        assert_eq!(s.get_plugin_update("pu-2").await.unwrap(), Some(pu2));
        assert_eq!(s.get_runtime("r1").await.unwrap(), Some(r1_failed));
        assert_eq!(s.list_operations(&all_ops()).await.unwrap(), vec![o2, o1]);
        assert_eq!(s.get_pin("t").await.unwrap(), Some(p2));
        assert_eq!(s.pin_history("t", 10).await.unwrap(), vec![e2, e1]);
        assert_eq!(s.get_observation("t").await.unwrap(), Some(obs2));
        assert!(!s.is_rejected("t", rejected.as_str()).await.unwrap());
        assert_eq!(
            s.get_rollout("ro-1").await.unwrap(),
            Some((
                ro1_halted,
                vec![
                    targets1[0].clone(),
                    targets2[0].clone(),
                    targets2[1].clone()
                ]
            ))
        );
        assert_eq!(all_events(s).await, vec![e2_new, evs1[0].clone()]);
        assert_eq!(s.list_notifications(1).await.unwrap(), notes2.to_vec());
        assert_eq!(s.get_job_result("job-2").await.unwrap(), Some(job2));
        let mut all_out = out1.to_vec();
        all_out.extend(out2);
        assert_eq!(messages(&all_outbox(s).await), all_out);
        assert_eq!(
            deliveries_of(s, "hook")
                .await
                .iter()
                .map(written)
                .collect::<Vec<_>>(),
            vec![wh1[0].clone(), wh2[0].clone()]
        );
        assert_eq!(
            deliveries_of(s, "other")
                .await
                .iter()
                .map(written)
                .collect::<Vec<_>>(),
            vec![wh2[1].clone()]
        );
    }

    pub async fn rollouts_commit_get_round_trip(ctx: Ctx) {
        let s = ctx.store.as_ref();
        assert_eq!(s.get_rollout("ro-1").await.unwrap(), None);

        // Targets given out of order come back by position (then runtime id).
        let mut r = rollout("ro-1", "t", RolloutState::Running, 10);
        r.batch_size = u32::MAX;
        r.max_failures = u32::MAX;
        let targets = [
            target("r-c", 2, TargetState::Pending, 10),
            target("r-a", 0, TargetState::Pending, 10),
            target("r-b", 1, TargetState::Pending, 10),
            target("r-0", 1, TargetState::Pending, 10),
        ];
        let o = op("rollout-start", OperationKind::Start, 10);
        s.commit(&Change {
            rollout: Some(RolloutChange {
                rollout: &r,
                targets: &targets,
            }),
            operation: Some(&o),
            ..Change::default()
        })
        .await
        .unwrap();
        let (got, got_targets) = s.get_rollout("ro-1").await.unwrap().unwrap();
        assert_eq!(got, r);
        assert_eq!(
            got_targets,
            vec![
                targets[1].clone(),
                targets[3].clone(),
                targets[2].clone(),
                targets[0].clone()
            ]
        );
        assert_eq!(s.list_operations(&all_ops()).await.unwrap(), vec![o]);

        // An update replaces the rollout's columns; only the given targets
        // change, the others stay.
        let mut r2 = r.clone();
        r2.state = RolloutState::Halted;
        r2.from_digest = None;
        r2.failures = 1;
        r2.revert_pin = false;
        r2.source = Source::Api;
        r2.message = Some("r-a failed its health check".into());
        r2.batch_size = 3;
        r2.max_failures = 0;
        r2.updated_at_ms = 20;
        let mut a_failed = target("r-a", 0, TargetState::Failed, 20);
        a_failed.error = Some("health_unhealthy".into());
        let b_updated = target("r-b", 1, TargetState::Updated, 20);
        save_rollout(s, &r2, &[a_failed.clone(), b_updated.clone()]).await;
        let (got, got_targets) = s.get_rollout("ro-1").await.unwrap().unwrap();
        assert_eq!(got, r2);
        assert_eq!(
            got_targets,
            vec![a_failed, targets[3].clone(), b_updated, targets[0].clone()]
        );
        assert_eq!(op_count(s).await, 1, "a rollout alone writes no operation");

        // A rollout without targets, and one whose id is not another's.
        let lone = rollout("ro-2", "t", RolloutState::Completed, 30);
        save_rollout(s, &lone, &[]).await;
        assert_eq!(s.get_rollout("ro-2").await.unwrap(), Some((lone, vec![])));
        assert_eq!(s.get_rollout("ro-1").await.unwrap().unwrap().1.len(), 4);
        assert_eq!(s.get_rollout("ro").await.unwrap(), None);

        // Every state and source survives the trip.
        let target_states = [
            TargetState::Pending,
            TargetState::Updated,
            TargetState::Failed,
            TargetState::Skipped,
        ];
        for (i, state) in RolloutState::ALL.iter().enumerate() {
            let mut r = rollout(&format!("every-{i}"), "u", *state, 40);
            r.source = Source::ALL[i % Source::ALL.len()];
            let ts: Vec<RolloutTarget> = target_states
                .iter()
                .enumerate()
                .map(|(p, t)| target(&format!("r{p}"), p as u32, *t, 40))
                .collect();
            save_rollout(s, &r, &ts).await;
            assert_eq!(s.get_rollout(&r.id).await.unwrap(), Some((r, ts)));
        }
    }

    pub async fn rollouts_list_newest_first_and_active_oldest_first(ctx: Ctx) {
        let s = ctx.store.as_ref();
        assert!(s.list_rollouts(None, 10).await.unwrap().is_empty());
        assert!(s.active_rollouts().await.unwrap().is_empty());

        // Saved in this order; `created_at_ms` deliberately disagrees, to
        // show the order is that of first saving.
        let saves = [
            rollout("a1", "a", RolloutState::Running, 50),
            rollout("b1", "b", RolloutState::Completed, 40),
            rollout("a2", "a", RolloutState::Paused, 30),
            rollout("b2", "b", RolloutState::Halted, 20),
            rollout("a3", "a", RolloutState::Aborted, 10),
            rollout("b3", "b", RolloutState::Running, 5),
        ];
        for r in &saves {
            save_rollout(s, r, &[target("x", 0, TargetState::Pending, 1)]).await;
        }
        // An update keeps the rollout's place.
        let mut a1 = saves[0].clone();
        a1.failures = 1;
        a1.updated_at_ms = 60;
        save_rollout(s, &a1, &[]).await;

        let all = s.list_rollouts(None, 100).await.unwrap();
        assert_eq!(rollout_ids(&all), ["b3", "a3", "b2", "a2", "b1", "a1"]);
        assert_eq!(all[5], a1);
        assert_eq!(
            rollout_ids(&s.list_rollouts(None, 2).await.unwrap()),
            ["b3", "a3"]
        );
        assert_eq!(
            rollout_ids(&s.list_rollouts(Some("a"), 100).await.unwrap()),
            ["a3", "a2", "a1"]
        );
        assert_eq!(
            rollout_ids(&s.list_rollouts(Some("b"), 1).await.unwrap()),
            ["b3"]
        );
        assert!(s.list_rollouts(Some("c"), 100).await.unwrap().is_empty());
        assert!(s.list_rollouts(None, 0).await.unwrap().is_empty());

        let active = s.active_rollouts().await.unwrap();
        assert_eq!(rollout_ids(&active), ["a1", "a2", "b3"], "oldest first");
        assert_eq!(active[0], a1);

        // Leaving running/paused leaves the active list.
        let mut a2 = saves[2].clone();
        a2.state = RolloutState::Completed;
        save_rollout(s, &a2, &[]).await;
        assert_eq!(
            rollout_ids(&s.active_rollouts().await.unwrap()),
            ["a1", "b3"]
        );

        // Active means not finished, for every state there is.
        for (i, state) in RolloutState::ALL.iter().enumerate() {
            save_rollout(s, &rollout(&format!("every-{i}"), "c", *state, 70), &[]).await;
        }
        let active_states: Vec<RolloutState> = s
            .active_rollouts()
            .await
            .unwrap()
            .into_iter()
            .filter(|r| r.template == "c")
            .map(|r| r.state)
            .collect();
        let unfinished: Vec<RolloutState> = RolloutState::ALL
            .into_iter()
            .filter(|state| !state.is_finished())
            .collect();
        assert_eq!(active_states, unfinished);
    }

    pub async fn refused_commit_writes_nothing_of_its_rollout_pin_observation_or_rejection(
        ctx: Ctx,
    ) {
        let s = ctx.store.as_ref();
        let first = rollout("ro-1", "t", RolloutState::Running, 10);
        let first_targets = [
            target("r1", 0, TargetState::Pending, 10),
            target("r2", 1, TargetState::Pending, 10),
        ];
        let job = job_result("job-1", "r1", 10);
        let o1 = op("o1", OperationKind::Start, 10).for_runtime("r1", "t");
        let r1 = runtime("r1", "t", RuntimeStatus::Running, 10);
        let evs = [health_event(
            "e1",
            "r1",
            HealthEventType::ContainerStarted,
            Some("c1"),
            10,
        )];
        let notes = [notification("n1", "rollout.started", 10)];
        let out = [message(
            "notification:intents",
            "",
            &[("notification_type", "rollout.started")],
            10,
        )];
        s.commit(&Change {
            runtime: Some(&r1),
            operation: Some(&o1),
            rollout: Some(RolloutChange {
                rollout: &first,
                targets: &first_targets,
            }),
            health_events: &evs,
            notifications: &notes,
            job_result: Some(&job),
            outbox: &out,
            ..Change::default()
        })
        .await
        .unwrap();
        // Every part of the change is written beside the rollout.
        assert_eq!(s.get_runtime("r1").await.unwrap(), Some(r1.clone()));
        assert_eq!(s.list_operations(&all_ops()).await.unwrap(), vec![o1]);
        assert_eq!(all_events(s).await, evs.to_vec());
        assert_eq!(s.list_notifications(10).await.unwrap(), notes.to_vec());
        assert_eq!(s.get_job_result("job-1").await.unwrap(), Some(job));
        assert_eq!(messages(&all_outbox(s).await), out.to_vec());

        let snapshot = || async {
            (
                (
                    s.list_rollouts(None, 100).await.unwrap(),
                    s.get_rollout("ro-1").await.unwrap(),
                    s.get_rollout("ro-2").await.unwrap(),
                    s.list_runtimes(&RuntimeFilter::default()).await.unwrap(),
                    s.list_operations(&all_ops()).await.unwrap(),
                ),
                (
                    all_events(s).await,
                    s.list_notifications(100).await.unwrap(),
                    all_outbox(s).await,
                    s.list_pins().await.unwrap(),
                    s.pin_history("t", 100).await.unwrap(),
                    s.get_observation("t").await.unwrap(),
                    s.is_rejected("t", digest(2).as_str()).await.unwrap(),
                ),
            )
        };
        let before = snapshot().await;

        // A duplicate job id refuses the change, and the rollout write with
        // it: neither the update of ro-1 and its targets nor a new ro-2,
        // nor the pin revert, the observation or the rejection beside it.
        let mut halted = first.clone();
        halted.state = RolloutState::Halted;
        halted.failures = 1;
        let mut r1_failed = r1.clone();
        r1_failed.status = RuntimeStatus::Failed;
        let o2 = op("o2", OperationKind::Start, 20);
        let dup_job = job_result("job-1", "r2", 20);
        let more_out = [message(
            "runtime:job_results",
            "r2",
            &[("job_id", "job-1")],
            20,
        )];
        let reverted = pin("t", 1, 20);
        let revert_entry = promote_entry(&reverted, None);
        let obs = observation("t", "latest", 2, 20);
        let halt_targets = [
            target("r1", 0, TargetState::Failed, 20),
            target("r3", 2, TargetState::Pending, 20),
        ];
        let ro2 = rollout("ro-2", "t", RolloutState::Running, 20);
        for r in [&halted, &ro2] {
            match s
                .commit(&Change {
                    runtime: Some(&r1_failed),
                    operation: Some(&o2),
                    pin: Some(PinChange {
                        pin: &reverted,
                        entry: &revert_entry,
                    }),
                    observation: Some(&obs),
                    rejection: Some(RejectionChange::Reject {
                        template: "t",
                        digest: digest(2).as_str(),
                        reason: "rollout halted",
                        at_ms: 20,
                    }),
                    rollout: Some(RolloutChange {
                        rollout: r,
                        targets: &halt_targets,
                    }),
                    job_result: Some(&dup_job),
                    outbox: &more_out,
                    ..Change::default()
                })
                .await
            {
                Err(StoreError::Conflict(msg)) => assert!(msg.contains("job-1"), "{msg}"),
                other => panic!("expected a conflict, got {other:?}"),
            }
        }
        // A duplicate health event id refuses it as well.
        let dup_event = [health_event(
            "e1",
            "r1",
            HealthEventType::ContainerStarted,
            None,
            20,
        )];
        assert!(matches!(
            s.commit(&Change {
                rollout: Some(RolloutChange {
                    rollout: &halted,
                    targets: &[target("r1", 0, TargetState::Failed, 20)],
                }),
                pin: Some(PinChange {
                    pin: &reverted,
                    entry: &revert_entry,
                }),
                health_events: &dup_event,
                ..Change::default()
            })
            .await,
            Err(StoreError::Conflict(_))
        ));
        assert_eq!(snapshot().await, before, "nothing of the refused commits");

        // The store is still usable: the same commit with a fresh job id.
        let j2 = job_result("job-2", "r2", 30);
        let final_targets = [target("r1", 0, TargetState::Failed, 30)];
        s.commit(&Change {
            rollout: Some(RolloutChange {
                rollout: &halted,
                targets: &final_targets,
            }),
            job_result: Some(&j2),
            ..Change::default()
        })
        .await
        .unwrap();
        let (got, targets) = s.get_rollout("ro-1").await.unwrap().unwrap();
        assert_eq!(got, halted);
        assert_eq!(
            targets,
            vec![final_targets[0].clone(), first_targets[1].clone()]
        );
        assert_eq!(s.get_job_result("job-2").await.unwrap(), Some(j2));
    }

    pub async fn corrupt_rollout_rows_are_reported(ctx: Ctx) {
        let s = ctx.store.as_ref();
        save_rollout(
            s,
            &rollout("ro", "t", RolloutState::Running, 1),
            &[target("r", 0, TargetState::Pending, 1)],
        )
        .await;

        ctx.exec("UPDATE rollouts SET batch_size = -1").await;
        expect_corrupt(s.get_rollout("ro").await, "rollouts.batch_size").await;
        expect_corrupt(s.list_rollouts(None, 10).await, "rollouts.batch_size").await;
        expect_corrupt(s.active_rollouts().await, "rollouts.batch_size").await;
        ctx.exec("UPDATE rollouts SET batch_size = 1, failures = 4294967296")
            .await;
        expect_corrupt(s.get_rollout("ro").await, "rollouts.failures").await;
        ctx.exec("UPDATE rollouts SET failures = 0").await;
        ctx.exec("UPDATE rollout_targets SET position = -5").await;
        expect_corrupt(s.get_rollout("ro").await, "rollout_targets.target_position").await;
    }

    /// A stored state the code does not know is an error on every read of
    /// it, never a default (and never silently skipped).
    pub async fn unknown_stored_states_are_corrupt(ctx: Ctx) {
        let s = ctx.store.as_ref();
        let r = rollout("ro", "t", RolloutState::Running, 1);
        let targets = [target("rt", 0, TargetState::Pending, 1)];
        let o = op("o", OperationKind::Start, 1).for_runtime("rt", "t");
        s.commit(&Change {
            rollout: Some(RolloutChange {
                rollout: &r,
                targets: &targets,
            }),
            operation: Some(&o),
            ..Change::default()
        })
        .await
        .unwrap();

        ctx.exec("UPDATE rollouts SET state = 'exploding'").await;
        expect_corrupt(s.get_rollout("ro").await, "rollouts.state").await;
        expect_corrupt(s.list_rollouts(None, 10).await, "rollouts.state").await;
        expect_corrupt(s.list_rollouts(Some("t"), 10).await, "rollouts.state").await;
        expect_corrupt(s.active_rollouts().await, "rollouts.state").await;
        ctx.exec("UPDATE rollouts SET state = 'running', source = 'martians'")
            .await;
        expect_corrupt(s.get_rollout("ro").await, "rollouts.source").await;
        expect_corrupt(s.list_rollouts(None, 10).await, "rollouts.source").await;
        expect_corrupt(s.active_rollouts().await, "rollouts.source").await;
        ctx.exec("UPDATE rollouts SET source = 'image_watch'").await;
        ctx.exec("UPDATE rollout_targets SET state = 'lost'").await;
        expect_corrupt(s.get_rollout("ro").await, "rollout_targets.target_state").await;
        ctx.exec("UPDATE rollout_targets SET state = 'pending'")
            .await;
        assert_eq!(
            s.get_rollout("ro").await.unwrap(),
            Some((r, targets.to_vec())),
            "the repaired rows read back"
        );

        ctx.exec("UPDATE operations SET outcome = 'maybe'").await;
        expect_corrupt(s.list_operations(&all_ops()).await, "operations.outcome").await;
        ctx.exec("UPDATE operations SET outcome = 'in_progress', source = 'martians'")
            .await;
        expect_corrupt(s.list_operations(&all_ops()).await, "operations.source").await;
        ctx.exec("UPDATE operations SET source = 'api'").await;
        assert_eq!(s.list_operations(&all_ops()).await.unwrap(), vec![o]);
    }

    /// (kind, key, runtime) of every change-log row after `after`.
    async fn changes_after(s: &dyn Store, after: i64) -> Vec<(String, String, Option<String>)> {
        s.list_changes_after(after, 10_000)
            .await
            .unwrap()
            .into_iter()
            .map(|c| (c.kind.as_str().to_string(), c.key, c.runtime_id))
            .collect()
    }

    fn change(kind: &str, key: &str, runtime: Option<&str>) -> (String, String, Option<String>) {
        (
            kind.to_string(),
            key.to_string(),
            runtime.map(str::to_string),
        )
    }

    async fn head(s: &dyn Store) -> i64 {
        s.change_bounds().await.unwrap().map_or(0, |(_, hi)| hi)
    }

    pub async fn a_commit_writes_its_change_rows_in_order(ctx: Ctx) {
        let s = ctx.store.as_ref();
        assert_eq!(s.change_bounds().await.unwrap(), None);
        assert!(s.list_changes_after(0, 10).await.unwrap().is_empty());
        let r1 = runtime("r1", "t", RuntimeStatus::Running, 10);
        let o1 = done(
            op("o1", OperationKind::Start, 10).for_runtime("r1", "t"),
            12,
        );
        let events = [
            health_event(
                "e1",
                "r1",
                HealthEventType::ContainerStarted,
                Some("c1"),
                11,
            ),
            health_event("e2", "r1", HealthEventType::ContainerExited, Some("c1"), 11),
        ];
        let notes = [notification("n1", "runtime.started", 11)];
        let p = pin("t", 1, 10);
        let entry = promote_entry(&p, None);
        let ro = rollout("ro1", "t", RolloutState::Running, 10);
        let targets = [target("r1", 0, TargetState::Pending, 10)];
        let pl = plugin("r1", "skills", Some(&"b".repeat(40)));
        let up = update(
            "u1",
            "r1",
            "skills",
            &"c".repeat(40),
            UpdateStatus::Pending,
            10,
        );
        s.commit(&Change {
            runtime: Some(&r1),
            operation: Some(&o1),
            pin: Some(PinChange {
                pin: &p,
                entry: &entry,
            }),
            rollout: Some(RolloutChange {
                rollout: &ro,
                targets: &targets,
            }),
            plugin: Some(PluginChange::Put(&pl)),
            plugin_update: Some(&up),
            health_events: &events,
            notifications: &notes,
            ..Change::default()
        })
        .await
        .unwrap();
        assert_eq!(
            changes_after(s, 0).await,
            [
                change("runtime", "r1", Some("r1")),
                change("operation", "o1", Some("r1")),
                change("pin", "t", None),
                change("rollout", "ro1", None),
                change("plugin", "r1/skills", Some("r1")),
                change("plugin_update", "u1", Some("r1")),
                change("event", "e1", Some("r1")),
                change("event", "e2", Some("r1")),
                change("notification", "n1", Some("r1")),
            ]
        );
        let rows = s.list_changes_after(0, 100).await.unwrap();
        assert!(rows.windows(2).all(|w| w[0].seq < w[1].seq), "{rows:?}");
        // The time is the operation's.
        assert!(rows.iter().all(|r| r.at_ms == 12), "{rows:?}");
        let (lo, hi) = s.change_bounds().await.unwrap().unwrap();
        assert_eq!((lo, hi), (rows[0].seq, rows[8].seq));

        // A later commit comes after; list after a cursor, with a limit.
        let o2 = op("o2", OperationKind::Stop, 20).for_runtime("r1", "t");
        s.record(Some(&r1), &o2).await.unwrap();
        assert_eq!(
            changes_after(s, hi).await,
            [
                change("runtime", "r1", Some("r1")),
                change("operation", "o2", Some("r1")),
            ]
        );
        let two = s.list_changes_after(rows[2].seq, 2).await.unwrap();
        assert_eq!(
            two.iter().map(|r| r.seq).collect::<Vec<_>>(),
            [rows[3].seq, rows[4].seq]
        );
        // An operation without a runtime has none.
        let o3 = done(op("o3", OperationKind::TemplatePut, 30), 30);
        let before = head(s).await;
        s.record(None, &o3).await.unwrap();
        assert_eq!(
            changes_after(s, before).await,
            [change("operation", "o3", None)]
        );
    }

    pub async fn writes_outside_commit_write_change_rows(ctx: Ctx) {
        let s = ctx.store.as_ref();
        let o1 = done(op("o1", OperationKind::TemplatePut, 10), 10);
        s.put_template(&template("web", "v1"), &o1).await.unwrap();
        assert_eq!(
            changes_after(s, 0).await,
            [
                change("template", "web", None),
                change("operation", "o1", None)
            ]
        );
        let h = head(s).await;
        let p = pin("web", 1, 20);
        let o2 = done(op("o2", OperationKind::PinPromote, 20), 20);
        assert!(s.seed_pin(&p, &promote_entry(&p, None), &o2).await.unwrap());
        assert_eq!(
            changes_after(s, h).await,
            [change("pin", "web", None), change("operation", "o2", None)]
        );
        // A seed that does nothing writes no row.
        let h = head(s).await;
        let o3 = done(op("o3", OperationKind::PinPromote, 30), 30);
        assert!(!s.seed_pin(&p, &promote_entry(&p, None), &o3).await.unwrap());
        assert!(changes_after(s, h).await.is_empty());
        let o4 = done(op("o4", OperationKind::PinUnpin, 40), 40);
        assert!(s
            .unpin("web", &unpin_entry("web", Some(digest(1)), 40), &o4)
            .await
            .unwrap());
        assert_eq!(
            changes_after(s, h).await,
            [change("pin", "web", None), change("operation", "o4", None)]
        );
        let h = head(s).await;
        let o5 = done(op("o5", OperationKind::TemplateDelete, 50), 50);
        assert!(s.delete_template("web", &o5).await.unwrap());
        assert_eq!(
            changes_after(s, h).await,
            [
                change("template", "web", None),
                change("operation", "o5", None)
            ]
        );
        // Interrupted operations are changes too.
        let h = head(s).await;
        let o6 = op("o6", OperationKind::Start, 60).for_runtime("r1", "t");
        s.record(None, &o6).await.unwrap();
        let h6 = head(s).await;
        assert!(h6 > h);
        s.fail_in_progress_operations("interrupted", "stopped", 70)
            .await
            .unwrap();
        assert_eq!(
            changes_after(s, h6).await,
            [change("operation", "o6", Some("r1"))]
        );
        let last = s.list_changes_after(h6, 10).await.unwrap();
        assert_eq!(last[0].at_ms, 70);
    }

    pub async fn a_refused_write_writes_no_change_rows(ctx: Ctx) {
        let s = ctx.store.as_ref();
        let r1 = runtime("r1", "t", RuntimeStatus::Running, 10);
        let o1 = op("o1", OperationKind::Start, 10).for_runtime("r1", "t");
        let job = job_result("job-1", "r1", 10);
        s.commit(&Change {
            runtime: Some(&r1),
            operation: Some(&o1),
            job_result: Some(&job),
            ..Change::default()
        })
        .await
        .unwrap();
        let h = head(s).await;
        // The same job id again: refused, nothing written.
        let o2 = op("o2", OperationKind::Start, 20).for_runtime("r1", "t");
        let events = [health_event(
            "e1",
            "r1",
            HealthEventType::ContainerStarted,
            None,
            20,
        )];
        let refused = s
            .commit(&Change {
                runtime: Some(&r1),
                operation: Some(&o2),
                job_result: Some(&job),
                health_events: &events,
                ..Change::default()
            })
            .await;
        assert!(
            matches!(refused, Err(StoreError::Conflict(_))),
            "{refused:?}"
        );
        // A duplicate health event id, after the rows of the rest.
        s.commit(&Change {
            health_events: &events,
            ..Change::default()
        })
        .await
        .unwrap();
        let h2 = head(s).await;
        let refused = s
            .commit(&Change {
                runtime: Some(&r1),
                operation: Some(&o2),
                health_events: &events,
                ..Change::default()
            })
            .await;
        assert!(
            matches!(refused, Err(StoreError::Conflict(_))),
            "{refused:?}"
        );
        assert_eq!(head(s).await, h2);
        assert_eq!(
            changes_after(s, h).await,
            [change("event", "e1", Some("r1"))]
        );
        // A template delete refused while a runtime uses it.
        let o3 = done(op("o3", OperationKind::TemplatePut, 30), 30);
        s.put_template(&template("t", "v1"), &o3).await.unwrap();
        let h3 = head(s).await;
        let o4 = done(op("o4", OperationKind::TemplateDelete, 40), 40);
        assert!(s.delete_template("t", &o4).await.is_err());
        assert!(!s.delete_template("nothing", &o4).await.unwrap());
        assert_eq!(head(s).await, h3);
    }

    pub async fn change_rows_are_pruned_below_a_seq(ctx: Ctx) {
        let s = ctx.store.as_ref();
        for i in 0..10 {
            let o = done(op(&format!("o{i}"), OperationKind::Stop, i), i);
            s.record(None, &o).await.unwrap();
        }
        let rows = s.list_changes_after(0, 100).await.unwrap();
        assert_eq!(rows.len(), 10);
        assert_eq!(s.prune_changes_before(rows[4].seq).await.unwrap(), 4);
        assert_eq!(
            s.change_bounds().await.unwrap(),
            Some((rows[4].seq, rows[9].seq))
        );
        assert_eq!(
            s.list_changes_after(0, 100).await.unwrap(),
            rows[4..].to_vec()
        );
        assert_eq!(s.prune_changes_before(rows[4].seq).await.unwrap(), 0);
        // New rows never reuse a pruned seq.
        s.prune_changes_before(i64::MAX).await.unwrap();
        assert_eq!(s.change_bounds().await.unwrap(), None);
        let o = done(op("o-last", OperationKind::Stop, 99), 99);
        s.record(None, &o).await.unwrap();
        let (lo, _) = s.change_bounds().await.unwrap().unwrap();
        assert!(lo > rows[9].seq);
    }

    /// Concurrent writers: every reader that walks the log by cursor sees
    /// every row, in commit order (seq order is commit order).
    pub async fn change_seq_order_is_commit_order(ctx: Ctx) {
        let store = ctx.store.clone();
        let writers: Vec<_> = (0..8)
            .map(|w| {
                let store = store.clone();
                tokio::spawn(async move {
                    for i in 0..15 {
                        let id = format!("r{w}");
                        let r = runtime(&id, "t", RuntimeStatus::Running, i);
                        let o = done(
                            op(&format!("o{w}-{i}"), OperationKind::Start, i).for_runtime(&id, "t"),
                            i,
                        );
                        store.record(Some(&r), &o).await.unwrap();
                    }
                })
            })
            .collect();
        // A reader following the log as it grows: never skips a seq that
        // commits later with a lower number.
        let mut cursor = 0;
        let mut seen = Vec::new();
        loop {
            let done_writing = writers.iter().all(|w| w.is_finished());
            let rows = store.list_changes_after(cursor, 7).await.unwrap();
            for r in &rows {
                cursor = r.seq;
                seen.push(r.key.clone());
            }
            if rows.is_empty() && done_writing {
                break;
            }
            tokio::task::yield_now().await;
        }
        for w in writers {
            w.await.unwrap();
        }
        let all: Vec<String> = store
            .list_changes_after(0, 10_000)
            .await
            .unwrap()
            .into_iter()
            .map(|r| r.key)
            .collect();
        assert_eq!(all.len(), 8 * 15 * 2);
        assert_eq!(seen, all, "a reader by cursor missed a row");
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
    assert_eq!(again.schema_versions().await.unwrap(), ALL_VERSIONS);

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
    s.put_template(
        &template("t", "v1"),
        &op("p", OperationKind::TemplatePut, 1),
    )
    .await
    .unwrap();
    s.commit(&Change {
        outbox: &[message("s", "", &[("a", "b")], 1)],
        ..Change::default()
    })
    .await
    .unwrap();

    save_rollout(
        &s,
        &rollout("ro", "t", RolloutState::Running, 1),
        &[target("r", 0, TargetState::Pending, 1)],
    )
    .await;
    s.commit(&Change {
        observation: Some(&observation("t", "v1", 1, 1)),
        ..Change::default()
    })
    .await
    .unwrap();

    // Down to 2: what 0005, 0004 and 0003 added goes, older data stays.
    s.migrate_down_to(2).await.unwrap();
    assert_eq!(s.schema_versions().await.unwrap(), [1, 2]);
    assert!(s.get_rollout("ro").await.is_err(), "the rollouts are gone");
    assert!(s.get_observation("t").await.is_err());
    assert_eq!(s.outbox_pending(10).await.unwrap().len(), 1);
    s.close().await;
    let s = SqliteStore::open(&file).await.unwrap();
    assert_eq!(s.schema_versions().await.unwrap(), ALL_VERSIONS);
    assert_eq!(s.get_rollout("ro").await.unwrap(), None);
    assert!(s.list_rollouts(None, 10).await.unwrap().is_empty());

    // Down to 1: 0002's tables go too, 0001's data stays.
    s.migrate_down_to(1).await.unwrap();
    assert_eq!(s.schema_versions().await.unwrap(), [1]);
    assert!(s.outbox_pending(10).await.is_err(), "the outbox is gone");
    assert!(s.get_template("t").await.unwrap().is_some());
    s.close().await;
    let s = SqliteStore::open(&file).await.unwrap();
    assert_eq!(s.schema_versions().await.unwrap(), ALL_VERSIONS);
    assert!(s.outbox_pending(10).await.unwrap().is_empty());
    assert!(s.get_template("t").await.unwrap().is_some());

    s.migrate_down_to(0).await.unwrap();
    assert!(s.schema_versions().await.unwrap().is_empty());
    assert!(s.list_templates().await.is_err(), "the tables are gone");
    s.close().await;
    let s = SqliteStore::open(&file).await.unwrap();
    assert_eq!(s.schema_versions().await.unwrap(), ALL_VERSIONS);
    assert!(s.list_templates().await.unwrap().is_empty());
    assert!(s.outbox_pending(10).await.unwrap().is_empty());
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
        assert_eq!(s.schema_versions().await.unwrap(), ALL_VERSIONS);
        s.migrate_down_to(0).await.unwrap();
        assert!(s.list_templates().await.is_err(), "the tables are gone");
        s.close().await;
        let s = PostgresStore::connect(&url).await.unwrap();
        assert_eq!(s.schema_versions().await.unwrap(), ALL_VERSIONS);
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

// --- the fake's fault and crash injection ----------------------------------------

mod fake_faults {
    use super::*;
    use berth::ports::store::{EventStore, RuntimeStore};

    fn is_crash<T: std::fmt::Debug>(result: &Result<T, StoreError>) -> bool {
        matches!(result, Err(StoreError::Database(msg)) if msg == "injected crash")
    }

    /// A flow of write calls of every kind, one commit boundary each.
    const STEPS: usize = 9;

    async fn step(s: &dyn Store, i: usize) -> Result<(), StoreError> {
        let p = pin("t", 1, 2);
        match i {
            0 => s
                .put_template(
                    &template("t", "v1"),
                    &op("w0", OperationKind::TemplatePut, 1),
                )
                .await
                .map(drop),
            1 => {
                s.commit(&Change {
                    pin: Some(PinChange {
                        pin: &p,
                        entry: &promote_entry(&p, None),
                    }),
                    operation: Some(&op("w1", OperationKind::PinPromote, 2)),
                    ..Change::default()
                })
                .await
            }
            2 => {
                s.record(
                    Some(&runtime("r1", "t", RuntimeStatus::Running, 3)),
                    &op("w2", OperationKind::Start, 3),
                )
                .await
            }
            3 => {
                s.commit(&Change {
                    outbox: &[
                        message("s", "r1", &[("i", "3")], 4),
                        message("s", "r1", &[("i", "3b")], 4),
                    ],
                    ..Change::default()
                })
                .await
            }
            4 => {
                let seq = s.outbox_pending(1).await?[0].seq;
                s.outbox_failed(seq, "refused").await
            }
            5 => {
                let seq = s.outbox_pending(1).await?[0].seq;
                s.outbox_delete(&[seq]).await
            }
            6 => s
                .fail_in_progress_operations("interrupted", "boot", 5)
                .await
                .map(drop),
            7 => s
                .unpin(
                    "t",
                    &unpin_entry("t", Some(p.digest.clone()), 6),
                    &op("w7", OperationKind::PinUnpin, 6),
                )
                .await
                .map(drop),
            8 => s
                .seed_pin(
                    &p,
                    &promote_entry(&p, None),
                    &op("w8", OperationKind::PinPromote, 7),
                )
                .await
                .map(drop),
            _ => unreachable!("{STEPS} steps"),
        }
    }

    async fn run_steps(s: &dyn Store, steps: usize) -> Result<(), StoreError> {
        for i in 0..steps {
            step(s, i).await?;
        }
        Ok(())
    }

    /// Everything the flow can have changed.
    async fn snapshot(
        s: &dyn Store,
    ) -> (
        Vec<Template>,
        Vec<Pin>,
        Vec<PinHistoryEntry>,
        Vec<RuntimeRecord>,
        Vec<Operation>,
        Vec<OutboxRow>,
    ) {
        (
            s.list_templates().await.unwrap(),
            s.list_pins().await.unwrap(),
            s.pin_history("t", 100).await.unwrap(),
            s.list_runtimes(&RuntimeFilter::default()).await.unwrap(),
            s.list_operations(&all_ops()).await.unwrap(),
            all_outbox(s).await,
        )
    }

    #[tokio::test]
    async fn a_crash_at_boundary_k_keeps_exactly_the_first_k_minus_one_writes() {
        let clean = FakeStore::new();
        run_steps(&clean, STEPS).await.unwrap();
        let n = clean.writes();
        assert_eq!(n, STEPS as u64, "one write call per step");

        for k in 1..=n {
            let fake = FakeStore::new();
            fake.crash_at_commit(k);
            let services: Arc<dyn Store> = Arc::new(fake.clone());
            let result = run_steps(services.as_ref(), STEPS).await;
            assert!(is_crash(&result), "k={k}: {result:?}");
            assert!(fake.crashed());
            assert_eq!(fake.writes(), k - 1, "k={k}");
            drop(services);

            // A fresh process on the same store sees what was committed:
            // the same as a clean run of the first k-1 steps.
            fake.revive();
            let restarted: Arc<dyn Store> = Arc::new(fake.clone());
            let expected = FakeStore::new();
            run_steps(&expected, k as usize - 1).await.unwrap();
            assert_eq!(
                snapshot(restarted.as_ref()).await,
                snapshot(&expected).await,
                "k={k}"
            );
        }
    }

    #[tokio::test]
    async fn after_a_crash_every_call_fails_until_revive() {
        let fake = FakeStore::new();
        run_steps(&fake, 1).await.unwrap();
        fake.crash_at_commit(1);
        // Reads before the crash still work: only write calls count.
        assert_eq!(fake.list_templates().await.unwrap().len(), 1);
        assert!(is_crash(
            &fake.record(None, &op("x", OperationKind::Start, 1)).await
        ));

        assert!(is_crash(&fake.list_templates().await));
        assert!(is_crash(&fake.get_runtime("r1").await));
        assert!(is_crash(&fake.outbox_pending(10).await));
        assert!(is_crash(&fake.get_rollout("ro").await));
        assert!(is_crash(&fake.is_rejected("t", "d").await));
        assert!(is_crash(&fake.list_notifications(10).await));
        assert!(is_crash(&fake.commit(&Change::default()).await));
        assert!(is_crash(
            &fake
                .put_template(
                    &template("u", "v1"),
                    &op("y", OperationKind::TemplatePut, 1)
                )
                .await
        ));
        assert!(is_crash(&fake.outbox_delete(&[1]).await));
        assert_eq!(fake.writes(), 1);

        fake.revive();
        assert!(!fake.crashed());
        assert_eq!(fake.list_templates().await.unwrap().len(), 1);
        assert_eq!(
            op_ids(&fake.list_operations(&all_ops()).await.unwrap()),
            ["w0"]
        );
        // Writes work again, and the count goes on.
        fake.record(None, &op("after", OperationKind::Start, 2))
            .await
            .unwrap();
        assert_eq!(fake.writes(), 2);
    }

    #[tokio::test]
    async fn writes_counts_successful_write_calls_only() {
        let fake = FakeStore::new();
        let job = job_result("job-1", "r1", 1);
        let with_job = Change {
            job_result: Some(&job),
            ..Change::default()
        };
        fake.commit(&with_job).await.unwrap();
        assert_eq!(fake.writes(), 1);
        // Refused: not counted.
        assert!(matches!(
            fake.commit(&with_job).await,
            Err(StoreError::Conflict(_))
        ));
        assert_eq!(fake.writes(), 1);
        // Reads: not counted.
        fake.get_job_result("job-1").await.unwrap();
        fake.list_operations(&all_ops()).await.unwrap();
        assert_eq!(fake.writes(), 1);
        // Successful calls that change nothing still count.
        assert!(!fake
            .delete_template("nope", &op("d", OperationKind::TemplateDelete, 2))
            .await
            .unwrap());
        assert!(!fake
            .unpin(
                "t",
                &unpin_entry("t", None, 2),
                &op("u", OperationKind::PinUnpin, 2)
            )
            .await
            .unwrap());
        fake.commit(&Change::default()).await.unwrap();
        assert_eq!(fake.writes(), 4);
        // `record` is one commit.
        fake.record(None, &op("r", OperationKind::Start, 3))
            .await
            .unwrap();
        assert_eq!(fake.writes(), 5);
    }

    #[tokio::test]
    async fn the_crash_counts_every_write_call_refused_or_not() {
        let fake = FakeStore::new();
        let job = job_result("job-1", "r1", 1);
        let with_job = Change {
            job_result: Some(&job),
            ..Change::default()
        };
        fake.commit(&with_job).await.unwrap();
        fake.crash_at_commit(2);
        assert!(matches!(
            fake.commit(&with_job).await,
            Err(StoreError::Conflict(_))
        ));
        assert!(!fake.crashed(), "the first call was refused, not crashed");
        let o = op("o", OperationKind::Start, 2);
        assert!(is_crash(&fake.record(None, &o).await));
        fake.revive();
        assert_eq!(op_count(&fake).await, 0, "the crashed call wrote nothing");
    }

    #[tokio::test]
    async fn refused_writes_write_nothing_and_a_lost_reply_commits() {
        let fake = FakeStore::new();
        fake.refuse_writes(1, 2);
        let o0 = op("o0", OperationKind::Start, 1);
        fake.record(None, &o0).await.unwrap();
        let o1 = op("o1", OperationKind::Start, 1);
        for _ in 0..2 {
            assert!(matches!(
                fake.record(None, &o1).await,
                Err(StoreError::Database(_))
            ));
        }
        assert_eq!(op_count(&fake).await, 1, "refused writes write nothing");
        fake.record(None, &o1).await.unwrap();

        fake.lose_reply_after(0);
        let o2 = op("o2", OperationKind::Stop, 2);
        assert!(matches!(
            fake.record(None, &o2).await,
            Err(StoreError::Database(_))
        ));
        assert_eq!(
            fake.get_operation("o2").await.unwrap(),
            Some(o2),
            "a lost reply's write committed"
        );
        assert_eq!(fake.writes(), 3);
    }

    #[tokio::test]
    async fn fail_next_write_fails_one_write_and_the_store_goes_on() {
        let fake = FakeStore::new();
        let o1 = op("o1", OperationKind::Start, 1);
        fake.record(None, &o1).await.unwrap();
        fake.fail_next_write(StoreError::Conflict("injected".into()));
        // Reads are not affected.
        assert_eq!(op_count(&fake).await, 1);
        let r = runtime("r1", "t", RuntimeStatus::Running, 2);
        let o2 = op("o2", OperationKind::Start, 2);
        match fake.record(Some(&r), &o2).await {
            Err(StoreError::Conflict(msg)) => assert_eq!(msg, "injected"),
            other => panic!("expected the injected error, got {other:?}"),
        }
        assert!(!fake.crashed());
        assert_eq!(
            fake.get_runtime("r1").await.unwrap(),
            None,
            "nothing written"
        );
        assert_eq!(fake.writes(), 1);

        fake.record(Some(&r), &o2).await.unwrap();
        assert_eq!(fake.get_runtime("r1").await.unwrap(), Some(r));
        assert_eq!(
            op_ids(&fake.list_operations(&all_ops()).await.unwrap()),
            ["o2", "o1"]
        );
        assert_eq!(fake.writes(), 2);
    }

    #[tokio::test]
    async fn clones_share_one_store() {
        let fake = FakeStore::new();
        let held: Arc<dyn Store> = Arc::new(fake.clone());
        held.record(None, &op("o", OperationKind::Start, 1))
            .await
            .unwrap();
        assert_eq!(op_count(&fake).await, 1);
        assert_eq!(fake.writes(), 1);
        fake.crash_at_commit(1);
        assert!(is_crash(
            &held.record(None, &op("p", OperationKind::Start, 2)).await
        ));
        assert!(
            is_crash(&held.list_templates().await),
            "one crash for every handle"
        );
    }
}
