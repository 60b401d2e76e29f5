//! Schema migrations: our own tiny runner over embedded, reversible SQL.
//!
//! Each backend has its own directory, `migrations/<backend>/NNNN_name.up.sql`
//! and `.down.sql`, listed here with the same versions and names. Applied
//! versions are kept in `berth_migrations`; each migration runs in its own
//! transaction together with its bookkeeping row. On PostgreSQL every
//! migration transaction first takes an advisory lock, so that replicas
//! starting at once apply each migration exactly once; on SQLite the
//! `BEGIN IMMEDIATE` write lock does the same.

use std::time::{SystemTime, UNIX_EPOCH};

use crate::ports::store::StoreError;

/// One reversible schema change.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Migration {
    pub version: i64,
    pub name: &'static str,
    /// `NNNN_name`, the file name without `.up.sql` / `.down.sql`.
    pub file_stem: &'static str,
    pub up: &'static str,
    pub down: &'static str,
}

macro_rules! migration {
    ($backend:literal, $version:literal, $prefix:literal, $name:literal) => {
        Migration {
            version: $version,
            name: $name,
            file_stem: concat!($prefix, "_", $name),
            up: include_str!(concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/migrations/",
                $backend,
                "/",
                $prefix,
                "_",
                $name,
                ".up.sql"
            )),
            down: include_str!(concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/migrations/",
                $backend,
                "/",
                $prefix,
                "_",
                $name,
                ".down.sql"
            )),
        }
    };
}

/// Oldest first. Add to both lists, with the same version and name.
pub(crate) static SQLITE: &[Migration] = &[
    migration!("sqlite", 1, "0001", "init"),
    migration!("sqlite", 2, "0002", "events_outbox"),
    migration!("sqlite", 3, "0003", "watch_rollouts"),
    migration!("sqlite", 4, "0004", "plugins"),
    migration!("sqlite", 5, "0005", "plugin_rollouts"),
    migration!("sqlite", 6, "0006", "run_id"),
    migration!("sqlite", 7, "0007", "webhook_deliveries"),
    migration!("sqlite", 8, "0008", "changes"),
    migration!("sqlite", 9, "0009", "outbox_relay"),
];
pub(crate) static POSTGRES: &[Migration] = &[
    migration!("postgres", 1, "0001", "init"),
    migration!("postgres", 2, "0002", "events_outbox"),
    migration!("postgres", 3, "0003", "watch_rollouts"),
    migration!("postgres", 4, "0004", "plugins"),
    migration!("postgres", 5, "0005", "plugin_rollouts"),
    migration!("postgres", 6, "0006", "run_id"),
    migration!("postgres", 7, "0007", "webhook_deliveries"),
    migration!("postgres", 8, "0008", "changes"),
    migration!("postgres", 9, "0009", "outbox_relay"),
];

const CREATE_TABLE: &str = "CREATE TABLE IF NOT EXISTS berth_migrations (\
     version BIGINT PRIMARY KEY, name TEXT NOT NULL, applied_at_ms BIGINT NOT NULL)";
const SELECT_VERSIONS: &str = "SELECT version FROM berth_migrations ORDER BY version";
const IS_APPLIED: &str = "SELECT 1 AS one FROM berth_migrations WHERE version = $1";
const INSERT: &str =
    "INSERT INTO berth_migrations (version, name, applied_at_ms) VALUES ($1, $2, $3)";
const DELETE: &str = "DELETE FROM berth_migrations WHERE version = $1";

/// Run first in every PostgreSQL migration transaction: an advisory lock
/// that serialises migrations across clients (an arbitrary constant key:
/// "berth" in ASCII), and no NOTICE chatter ("relation … already exists,
/// skipping") in the logs.
const POSTGRES_PRELUDE: &[&str] = &[
    "SELECT pg_advisory_xact_lock(426870498408)",
    "SET LOCAL client_min_messages = warning",
];
/// SQLite's `BEGIN IMMEDIATE` already holds the database's write lock.
const SQLITE_PRELUDE: &[&str] = &[];

fn now_ms() -> i64 {
    // The bookkeeping timestamp only; a clock before 1970 records 0.
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

fn migration_err(m: &Migration, direction: &str, e: sqlx::Error) -> StoreError {
    StoreError::Database(format!(
        "migration {} ({direction}) failed: {e}",
        m.file_stem
    ))
}

/// Refuses a database that has versions this build does not know: it was
/// migrated by a newer berth, and running against it could damage it.
fn check_known(applied: &[i64], list: &[Migration]) -> Result<(), StoreError> {
    match applied
        .iter()
        .find(|v| !list.iter().any(|m| m.version == **v))
    {
        None => Ok(()),
        Some(v) => Err(StoreError::Database(format!(
            "the database has schema migration {v}, which this berth does not know; \
             it was migrated by a newer berth (known versions: up to {})",
            list.last().map_or(0, |m| m.version)
        ))),
    }
}

macro_rules! runner {
    ($module:ident, $db:ty, $list:expr, $begin:path, $prelude:expr) => {
        pub(crate) mod $module {
            use super::{
                check_known, migration_err, now_ms, Migration, CREATE_TABLE, DELETE, INSERT,
                IS_APPLIED, SELECT_VERSIONS,
            };
            use crate::adapters::store::{db_err, Columns};
            use crate::ports::store::StoreError;

            type Pool = sqlx::Pool<$db>;
            type Tx = sqlx::Transaction<'static, $db>;

            fn list() -> &'static [Migration] {
                $list
            }

            async fn begin_locked(pool: &Pool) -> Result<Tx, StoreError> {
                let mut tx = $begin(pool).await?;
                for statement in $prelude {
                    sqlx::query(statement)
                        .execute(&mut *tx)
                        .await
                        .map_err(db_err)?;
                }
                Ok(tx)
            }

            async fn ensure_table(pool: &Pool) -> Result<(), StoreError> {
                let mut tx = begin_locked(pool).await?;
                sqlx::query(CREATE_TABLE)
                    .execute(&mut *tx)
                    .await
                    .map_err(db_err)?;
                tx.commit().await.map_err(db_err)
            }

            async fn is_applied(tx: &mut Tx, version: i64) -> Result<bool, StoreError> {
                Ok(sqlx::query(IS_APPLIED)
                    .bind(version)
                    .fetch_optional(&mut **tx)
                    .await
                    .map_err(db_err)?
                    .is_some())
            }

            /// The applied versions, oldest first.
            pub(crate) async fn applied_versions(pool: &Pool) -> Result<Vec<i64>, StoreError> {
                ensure_table(pool).await?;
                sqlx::query(SELECT_VERSIONS)
                    .fetch_all(pool)
                    .await
                    .map_err(db_err)?
                    .iter()
                    .map(|row| row.int("berth_migrations", "version"))
                    .collect()
            }

            /// Applies every migration not applied yet, oldest first.
            pub(crate) async fn migrate_up(pool: &Pool) -> Result<(), StoreError> {
                let applied = applied_versions(pool).await?;
                check_known(&applied, list())?;
                for m in list() {
                    if applied.contains(&m.version) {
                        continue;
                    }
                    let mut tx = begin_locked(pool).await?;
                    if is_applied(&mut tx, m.version).await? {
                        continue; // another process applied it meanwhile
                    }
                    sqlx::raw_sql(m.up)
                        .execute(&mut *tx)
                        .await
                        .map_err(|e| migration_err(m, "up", e))?;
                    sqlx::query(INSERT)
                        .bind(m.version)
                        .bind(m.name)
                        .bind(now_ms())
                        .execute(&mut *tx)
                        .await
                        .map_err(db_err)?;
                    tx.commit().await.map_err(|e| migration_err(m, "up", e))?;
                }
                Ok(())
            }

            /// Reverts applied migrations newer than `target`, newest first;
            /// `0` reverts them all.
            pub(crate) async fn migrate_down_to(
                pool: &Pool,
                target: i64,
            ) -> Result<(), StoreError> {
                let applied = applied_versions(pool).await?;
                check_known(&applied, list())?;
                for m in list().iter().rev() {
                    if m.version <= target || !applied.contains(&m.version) {
                        continue;
                    }
                    let mut tx = begin_locked(pool).await?;
                    if !is_applied(&mut tx, m.version).await? {
                        continue;
                    }
                    sqlx::raw_sql(m.down)
                        .execute(&mut *tx)
                        .await
                        .map_err(|e| migration_err(m, "down", e))?;
                    sqlx::query(DELETE)
                        .bind(m.version)
                        .execute(&mut *tx)
                        .await
                        .map_err(db_err)?;
                    tx.commit().await.map_err(|e| migration_err(m, "down", e))?;
                }
                Ok(())
            }
        }
    };
}

runner!(
    sqlite,
    sqlx::Sqlite,
    super::SQLITE,
    crate::adapters::store::sqlite::begin_immediate,
    super::SQLITE_PRELUDE
);
runner!(
    postgres,
    sqlx::Postgres,
    super::POSTGRES,
    crate::adapters::store::postgres::begin,
    super::POSTGRES_PRELUDE
);

#[cfg(test)]
mod tests {
    use std::collections::{BTreeMap, BTreeSet};
    use std::str::FromStr;

    use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
    use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions};
    use sqlx::{ConnectOptions, Connection, Executor};

    use super::*;

    /// The tables of 0001, of 0002, of 0003, of 0004.
    const TABLES_0001: [&str; 5] = ["templates", "pins", "pin_history", "runtimes", "operations"];
    const TABLES_0002: [&str; 4] = ["health_events", "notifications", "job_results", "outbox"];
    const TABLES_0003: [&str; 4] = [
        "image_observations",
        "rejected_digests",
        "rollouts",
        "rollout_targets",
    ];
    const TABLES_0004: [&str; 2] = ["plugins", "plugin_updates"];
    const TABLES: [&str; 18] = [
        "templates",
        "pins",
        "pin_history",
        "runtimes",
        "operations",
        "health_events",
        "notifications",
        "job_results",
        "outbox",
        "image_observations",
        "rejected_digests",
        "rollouts",
        "rollout_targets",
        "plugins",
        "plugin_updates",
        "webhook_deliveries",
        "changes",
        "outbox_identity",
    ];
    /// The tables each migration adds, by version.
    /// 0005 adds a column, no table.
    const TABLES_0005: [&str; 0] = [];
    /// 0006 adds a column, no table.
    const TABLES_0006: [&str; 0] = [];
    const TABLES_0007: [&str; 1] = ["webhook_deliveries"];
    const TABLES_0008: [&str; 1] = ["changes"];
    const TABLES_0009: [&str; 1] = ["outbox_identity"];
    const BY_VERSION: [(i64, &[&str]); 9] = [
        (1, &TABLES_0001),
        (2, &TABLES_0002),
        (3, &TABLES_0003),
        (4, &TABLES_0004),
        (5, &TABLES_0005),
        (6, &TABLES_0006),
        (7, &TABLES_0007),
        (8, &TABLES_0008),
        (9, &TABLES_0009),
    ];

    #[test]
    fn the_table_lists_agree() {
        let tables: Vec<&str> = BY_VERSION
            .iter()
            .flat_map(|(_, tables)| tables.iter().copied())
            .collect();
        assert_eq!(tables, TABLES);
        let versions: Vec<i64> = BY_VERSION.iter().map(|(v, _)| *v).collect();
        assert_eq!(versions, all(SQLITE), "a migration's tables are not listed");
    }

    fn unique_versions(list: &[Migration]) -> Result<(), String> {
        let mut seen = BTreeSet::new();
        for m in list {
            if !seen.insert(m.version) {
                return Err(format!("two migrations share version {}", m.version));
            }
        }
        Ok(())
    }

    #[test]
    fn versions_are_unique_and_ascending() {
        for (backend, list) in [("sqlite", SQLITE), ("postgres", POSTGRES)] {
            assert!(!list.is_empty(), "{backend}: no migrations");
            unique_versions(list).unwrap_or_else(|e| panic!("{backend}: {e}"));
            for pair in list.windows(2) {
                assert!(
                    pair[0].version < pair[1].version,
                    "{backend}: migrations must be listed oldest first"
                );
            }
            for m in list {
                assert!(
                    m.version > 0,
                    "{backend}: version 0 means \"nothing applied\""
                );
                assert_eq!(
                    m.file_stem,
                    format!("{:04}_{}", m.version, m.name),
                    "{backend}: file name and version disagree"
                );
            }
        }
    }

    #[test]
    fn the_duplicate_check_catches_duplicates() {
        let dup = [SQLITE[0], SQLITE[0]];
        assert!(unique_versions(&dup).is_err());
    }

    #[test]
    fn backends_have_the_same_versions_and_names() {
        let names = |list: &[Migration]| -> Vec<(i64, &str)> {
            list.iter().map(|m| (m.version, m.name)).collect()
        };
        assert_eq!(names(SQLITE), names(POSTGRES));
    }

    /// Every file in `migrations/<backend>/` is listed, once, with its pair;
    /// two files with one version prefix fail here.
    #[test]
    fn files_on_disk_match_the_lists() {
        for (backend, list) in [("sqlite", SQLITE), ("postgres", POSTGRES)] {
            let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("migrations")
                .join(backend);
            let mut stems: BTreeMap<String, BTreeSet<&str>> = BTreeMap::new();
            for entry in std::fs::read_dir(&dir).unwrap() {
                let file = entry.unwrap().file_name().into_string().unwrap();
                let (stem, direction) = if let Some(s) = file.strip_suffix(".up.sql") {
                    (s, "up")
                } else if let Some(s) = file.strip_suffix(".down.sql") {
                    (s, "down")
                } else {
                    panic!("{backend}: unexpected file {file:?} in {}", dir.display());
                };
                stems.entry(stem.to_string()).or_default().insert(direction);
            }
            let mut versions = BTreeMap::new();
            for (stem, directions) in &stems {
                assert_eq!(
                    directions.len(),
                    2,
                    "{backend}: {stem} needs .up.sql and .down.sql"
                );
                let (prefix, _) = stem
                    .split_once('_')
                    .unwrap_or_else(|| panic!("{backend}: {stem} is not NNNN_name"));
                let version: i64 = prefix.parse().unwrap();
                if let Some(other) = versions.insert(version, stem.clone()) {
                    panic!("{backend}: {other} and {stem} share version {version}");
                }
            }
            let listed: BTreeSet<String> = list.iter().map(|m| m.file_stem.to_string()).collect();
            let on_disk: BTreeSet<String> = stems.keys().cloned().collect();
            assert_eq!(
                listed, on_disk,
                "{backend}: migrate.rs and the directory disagree"
            );
        }
    }

    #[tokio::test]
    async fn sqlite_up_down_up() {
        let dir = tempfile::tempdir().unwrap();
        let options = SqliteConnectOptions::new()
            .filename(dir.path().join("m.db"))
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal);
        let pool = SqlitePoolOptions::new()
            .max_connections(2)
            .connect_with(options)
            .await
            .unwrap();
        let count = |table: &'static str| {
            let pool = pool.clone();
            async move {
                pool.fetch_one(format!("SELECT COUNT(*) FROM {table}").as_str())
                    .await
                    .is_ok()
            }
        };
        // Every table and index with its SQL.
        let schema = || {
            let pool = pool.clone();
            async move {
                sqlx::query_as::<_, (String, String, Option<String>)>(
                    "SELECT type, name, sql FROM sqlite_master \
                     WHERE name NOT LIKE 'sqlite_%' ORDER BY type, name",
                )
                .fetch_all(&pool)
                .await
                .unwrap()
            }
        };

        sqlite::migrate_up(&pool).await.unwrap();
        sqlite::migrate_up(&pool).await.unwrap(); // idempotent
        assert_eq!(sqlite::applied_versions(&pool).await.unwrap(), all(SQLITE));
        for t in TABLES {
            assert!(count(t).await, "{t} missing after up");
        }
        let full = schema().await;

        // Down one version at a time, newest first, and up again from each:
        // the newer migrations' tables go, the older ones' stay.
        for target in all(SQLITE).into_iter().rev().skip(1) {
            sqlite::migrate_down_to(&pool, target).await.unwrap();
            assert_eq!(
                sqlite::applied_versions(&pool).await.unwrap(),
                (1..=target).collect::<Vec<_>>()
            );
            let (kept, gone) = tables_at(target);
            for t in kept {
                assert!(count(t).await, "{t} missing after down to {target}");
            }
            for t in gone {
                assert!(!count(t).await, "{t} still there after down to {target}");
            }
            sqlite::migrate_up(&pool).await.unwrap();
            assert_eq!(schema().await, full, "down to {target} and up again");
            sqlite::migrate_down_to(&pool, target).await.unwrap();
        }
        sqlite::migrate_up(&pool).await.unwrap();
        assert_eq!(schema().await, full);

        sqlite::migrate_down_to(&pool, 0).await.unwrap();
        assert!(sqlite::applied_versions(&pool).await.unwrap().is_empty());
        for t in TABLES {
            assert!(!count(t).await, "{t} still there after down");
        }
        // Only berth_migrations is left.
        let left: Vec<String> = sqlx::query_scalar(
            "SELECT name FROM sqlite_master WHERE type IN ('table', 'index') \
             AND name NOT LIKE 'sqlite_%' ORDER BY name",
        )
        .fetch_all(&pool)
        .await
        .unwrap();
        assert_eq!(left, ["berth_migrations"]);

        sqlite::migrate_up(&pool).await.unwrap();
        assert_eq!(sqlite::applied_versions(&pool).await.unwrap(), all(SQLITE));
        for t in TABLES {
            assert!(count(t).await, "{t} missing after up again");
        }
        assert_eq!(schema().await, full, "up → down → up is the same schema");
    }

    #[tokio::test]
    async fn sqlite_refuses_a_newer_schema() {
        let dir = tempfile::tempdir().unwrap();
        let options = SqliteConnectOptions::new()
            .filename(dir.path().join("m.db"))
            .create_if_missing(true);
        let pool = SqlitePoolOptions::new()
            .connect_with(options)
            .await
            .unwrap();
        sqlite::migrate_up(&pool).await.unwrap();
        sqlx::query("INSERT INTO berth_migrations (version, name, applied_at_ms) VALUES (9999, 'future', 0)")
            .execute(&pool)
            .await
            .unwrap();
        let err = sqlite::migrate_up(&pool).await.unwrap_err();
        assert!(err.to_string().contains("9999"), "{err}");
    }

    fn all(list: &[Migration]) -> Vec<i64> {
        list.iter().map(|m| m.version).collect()
    }

    /// `(tables that must exist, tables that must not)` with versions up
    /// to `version` applied.
    fn tables_at(version: i64) -> (Vec<&'static str>, Vec<&'static str>) {
        let (kept, gone): (Vec<_>, Vec<_>) = BY_VERSION.iter().partition(|(v, _)| *v <= version);
        let flat = |list: Vec<&(i64, &'static [&'static str])>| {
            list.into_iter()
                .flat_map(|(_, tables)| tables.iter().copied())
                .collect()
        };
        (flat(kept), flat(gone))
    }

    #[tokio::test]
    async fn postgres_up_down_up() {
        let admin_url = std::env::var("BERTH_TEST_DATABASE_URL").unwrap_or_else(|_| {
            panic!(
                "BERTH_TEST_DATABASE_URL is not set: the PostgreSQL migration test needs a server; \
                 run `eval \"$(bash scripts/test-env.sh --env-only)\"` first (or scripts/test-env.sh)"
            )
        });
        let admin = PgConnectOptions::from_str(&admin_url).unwrap();
        let name = format!("bt_{}", uuid::Uuid::now_v7().simple());
        let mut conn = admin.connect().await.unwrap();
        conn.execute(format!("CREATE DATABASE {name}").as_str())
            .await
            .unwrap();

        let pool = PgPoolOptions::new()
            .max_connections(2)
            .connect_with(admin.clone().database(&name))
            .await
            .unwrap();
        let result = {
            use futures_util::FutureExt;
            std::panic::AssertUnwindSafe(async {
                let count = |table: &'static str| {
                    let pool = pool.clone();
                    async move {
                        pool.fetch_one(format!("SELECT COUNT(*) FROM {table}").as_str())
                            .await
                            .is_ok()
                    }
                };
                // Every column and index of the public schema.
                let schema = || {
                    let pool = pool.clone();
                    async move {
                        let columns: Vec<String> = sqlx::query_scalar(
                            "SELECT concat_ws(' ', table_name, column_name, data_type, \
                             is_nullable, column_default, collation_name) \
                             FROM information_schema.columns WHERE table_schema = 'public' \
                             ORDER BY table_name, column_name",
                        )
                        .fetch_all(&pool)
                        .await
                        .unwrap();
                        let indexes: Vec<String> = sqlx::query_scalar(
                            "SELECT indexdef FROM pg_indexes WHERE schemaname = 'public' \
                             ORDER BY indexname",
                        )
                        .fetch_all(&pool)
                        .await
                        .unwrap();
                        (columns, indexes)
                    }
                };
                // Two runners at once: the advisory lock lets one apply each migration.
                let (a, b) = tokio::join!(postgres::migrate_up(&pool), postgres::migrate_up(&pool));
                a.unwrap();
                b.unwrap();
                assert_eq!(
                    postgres::applied_versions(&pool).await.unwrap(),
                    all(POSTGRES)
                );
                for t in TABLES {
                    assert!(count(t).await, "{t} missing after up");
                }
                let full = schema().await;

                // Down one version at a time, newest first, and up again
                // from each: the newer migrations' tables go, the older
                // ones' stay.
                for target in all(POSTGRES).into_iter().rev().skip(1) {
                    postgres::migrate_down_to(&pool, target).await.unwrap();
                    assert_eq!(
                        postgres::applied_versions(&pool).await.unwrap(),
                        (1..=target).collect::<Vec<_>>()
                    );
                    let (kept, gone) = tables_at(target);
                    for t in kept {
                        assert!(count(t).await, "{t} missing after down to {target}");
                    }
                    for t in gone {
                        assert!(!count(t).await, "{t} still there after down to {target}");
                    }
                    postgres::migrate_up(&pool).await.unwrap();
                    assert_eq!(schema().await, full, "down to {target} and up again");
                    postgres::migrate_down_to(&pool, target).await.unwrap();
                }
                postgres::migrate_up(&pool).await.unwrap();
                assert_eq!(schema().await, full);

                postgres::migrate_down_to(&pool, 0).await.unwrap();
                assert!(postgres::applied_versions(&pool).await.unwrap().is_empty());
                for t in TABLES {
                    assert!(!count(t).await, "{t} still there after down");
                }
                let left: Vec<String> = sqlx::query_scalar(
                    "SELECT table_name::text FROM information_schema.tables \
                     WHERE table_schema = 'public' ORDER BY 1",
                )
                .fetch_all(&pool)
                .await
                .unwrap();
                assert_eq!(left, ["berth_migrations"]);
                postgres::migrate_up(&pool).await.unwrap();
                assert_eq!(
                    postgres::applied_versions(&pool).await.unwrap(),
                    all(POSTGRES)
                );
                for t in TABLES {
                    assert!(count(t).await, "{t} missing after up again");
                }
                assert_eq!(schema().await, full, "up → down → up is the same schema");
            })
            .catch_unwind()
            .await
        };
        pool.close().await;
        let _ = conn
            .execute(format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)").as_str())
            .await;
        let _ = conn.close().await;
        if let Err(panic) = result {
            std::panic::resume_unwind(panic);
        }
    }
}
