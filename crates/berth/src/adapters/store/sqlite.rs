//! The SQLite store: berth's embedded default (`<data_dir>/berth.db`).
//!
//! WAL journal, `synchronous=NORMAL`, foreign keys on, a 5 s busy timeout,
//! and every write transaction opened with `BEGIN IMMEDIATE`, so that two
//! writers queue on the database lock instead of failing when a deferred
//! read transaction tries to upgrade itself to a write.

use std::path::Path;
use std::str::FromStr;
use std::time::Duration;

use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteSynchronous,
};
use sqlx::{Sqlite, Transaction};

use super::{db_err, impl_store, migrate};
use crate::ports::store::StoreError;

/// How long a connection waits for the database lock before it gives up.
const BUSY_TIMEOUT: Duration = Duration::from_secs(5);
/// Readers run in parallel under WAL; writers take turns on the lock.
const MAX_CONNECTIONS: u32 = 4;
const ACQUIRE_TIMEOUT: Duration = Duration::from_secs(10);

pub struct SqliteStore {
    pool: SqlitePool,
}

impl SqliteStore {
    /// Opens (creating it and its directories if needed) the database file
    /// at `path` and brings its schema up to date.
    pub async fn open(path: &Path) -> Result<Self, StoreError> {
        Self::open_with(SqliteConnectOptions::new().filename(path), false).await
    }

    /// Like [`SqliteStore::open`], from a `sqlite:` URL (`sqlite:berth.db`,
    /// `sqlite:///var/lib/berth/berth.db`, `sqlite::memory:`).
    pub async fn open_url(url: &str) -> Result<Self, StoreError> {
        let options = SqliteConnectOptions::from_str(url).map_err(db_err)?;
        let in_memory = url.contains(":memory:") || url.contains("mode=memory");
        Self::open_with(options, in_memory).await
    }

    async fn open_with(options: SqliteConnectOptions, in_memory: bool) -> Result<Self, StoreError> {
        if !in_memory {
            if let Some(dir) = options.get_filename().parent() {
                if !dir.as_os_str().is_empty() {
                    tokio::fs::create_dir_all(dir).await.map_err(|e| {
                        StoreError::Database(format!(
                            "cannot create the database directory {}: {e}",
                            dir.display()
                        ))
                    })?;
                }
            }
        }
        let options = options
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Normal)
            .foreign_keys(true)
            .busy_timeout(BUSY_TIMEOUT);
        let pool = SqlitePoolOptions::new()
            // An in-memory database lives and dies with its one connection.
            .max_connections(if in_memory { 1 } else { MAX_CONNECTIONS })
            .acquire_timeout(ACQUIRE_TIMEOUT)
            .connect_with(options)
            .await
            .map_err(db_err)?;
        migrate::sqlite::migrate_up(&pool).await?;
        Ok(SqliteStore { pool })
    }

    /// Reverts the schema migrations newer than `target_version` (`0`: all
    /// of them, dropping every table but `berth_migrations`). For downgrades
    /// by hand; opening the store again migrates up.
    pub async fn migrate_down_to(&self, target_version: i64) -> Result<(), StoreError> {
        migrate::sqlite::migrate_down_to(&self.pool, target_version).await
    }

    /// The applied schema migration versions, oldest first.
    pub async fn schema_versions(&self) -> Result<Vec<i64>, StoreError> {
        migrate::sqlite::applied_versions(&self.pool).await
    }

    /// Closes every connection; later calls fail.
    pub async fn close(&self) {
        self.pool.close().await;
    }

    async fn begin_write(&self) -> Result<Transaction<'static, Sqlite>, StoreError> {
        begin_immediate(&self.pool).await
    }

    /// Nothing to do: `BEGIN IMMEDIATE` already makes every writer take
    /// turns, so outbox `seq` order is commit order.
    async fn lock_partitions(
        _tx: &mut Transaction<'static, Sqlite>,
        _keys: &[&str],
    ) -> Result<(), StoreError> {
        Ok(())
    }
}

impl SqliteStore {
    /// The outbox's id and the highest seq AUTOINCREMENT handed out.
    const OUTBOX_IDENTITY: &'static str = "SELECT id, COALESCE(\
         (SELECT seq FROM sqlite_sequence WHERE name = 'outbox'), 0) AS drawn FROM outbox_identity";

    /// Nothing to do: `BEGIN IMMEDIATE` already makes every writer take
    /// turns, so change-log `seq` order is commit order.
    async fn lock_changes(_tx: &mut Transaction<'static, Sqlite>) -> Result<(), StoreError> {
        Ok(())
    }
}

/// A write transaction that holds the database's write lock from its start.
pub(super) async fn begin_immediate(
    pool: &SqlitePool,
) -> Result<Transaction<'static, Sqlite>, StoreError> {
    pool.begin_with("BEGIN IMMEDIATE").await.map_err(db_err)
}

impl_store!(SqliteStore, sqlx::Sqlite);
