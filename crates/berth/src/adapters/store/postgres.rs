//! The PostgreSQL store: the production and multi-replica backend.

use std::str::FromStr;
use std::time::Duration;

use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions};
use sqlx::{Postgres, Transaction};

use super::{db_err, impl_store, migrate};
use crate::ports::store::StoreError;

const MAX_CONNECTIONS: u32 = 10;
const ACQUIRE_TIMEOUT: Duration = Duration::from_secs(10);
/// The first key of the outbox partition advisory locks ("outb" in ASCII);
/// the two-key form never collides with the migrations' one-key lock.
const OUTBOX_LOCK_CLASS: i32 = 0x6F75_7462;
const LOCK_PARTITION: &str = "SELECT pg_advisory_xact_lock($1, hashtext($2))";
/// The key of the change log's advisory lock ("chng" in ASCII, and 0): the
/// two-key form, apart from the outbox partitions' class.
const CHANGES_LOCK_CLASS: i32 = 0x6368_6E67;
const LOCK_CHANGES: &str = "SELECT pg_advisory_xact_lock($1, 0)";

pub struct PostgresStore {
    pool: PgPool,
}

impl PostgresStore {
    /// Connects to `url` (`postgres://…` or `postgresql://…`) and brings the
    /// schema up to date.
    pub async fn connect(url: &str) -> Result<Self, StoreError> {
        let options = PgConnectOptions::from_str(url).map_err(db_err)?;
        Self::connect_with(options).await
    }

    /// Like [`PostgresStore::connect`], from parsed options.
    pub async fn connect_with(options: PgConnectOptions) -> Result<Self, StoreError> {
        let pool = PgPoolOptions::new()
            .max_connections(MAX_CONNECTIONS)
            .acquire_timeout(ACQUIRE_TIMEOUT)
            .connect_with(options)
            .await
            .map_err(db_err)?;
        migrate::postgres::migrate_up(&pool).await?;
        Ok(PostgresStore { pool })
    }

    /// Reverts the schema migrations newer than `target_version` (`0`: all
    /// of them, dropping every table but `berth_migrations`). For downgrades
    /// by hand; opening the store again migrates up.
    pub async fn migrate_down_to(&self, target_version: i64) -> Result<(), StoreError> {
        migrate::postgres::migrate_down_to(&self.pool, target_version).await
    }

    /// The applied schema migration versions, oldest first.
    pub async fn schema_versions(&self) -> Result<Vec<i64>, StoreError> {
        migrate::postgres::applied_versions(&self.pool).await
    }

    /// Closes every connection; later calls fail.
    pub async fn close(&self) {
        self.pool.close().await;
    }

    async fn begin_write(&self) -> Result<Transaction<'static, Postgres>, StoreError> {
        begin(&self.pool).await
    }

    /// Makes the writers of each webhook's queue (`webhook:<name>`) take
    /// turns until they commit. A `BIGSERIAL` value is drawn at insert time
    /// but becomes visible at commit, so without this a webhook's delivery
    /// loop could see (and send) delivery 5 while its delivery 4 is still
    /// uncommitted. With it, within one key, a later `seq` always commits
    /// later. `keys` come sorted, so two changes never wait on each other
    /// in a cycle; a hash collision only makes two keys share turns.
    async fn lock_partitions(
        tx: &mut Transaction<'static, Postgres>,
        keys: &[&str],
    ) -> Result<(), StoreError> {
        for key in keys {
            sqlx::query(LOCK_PARTITION)
                .bind(OUTBOX_LOCK_CLASS)
                .bind(*key)
                .execute(&mut **tx)
                .await
                .map_err(db_err)?;
        }
        Ok(())
    }
}

impl PostgresStore {
    /// The outbox's id and the highest seq its sequence handed out (a
    /// sequence is outside transactions: uncommitted draws count too).
    const OUTBOX_IDENTITY: &'static str = "SELECT id, \
         (SELECT CASE WHEN is_called THEN last_value ELSE 0 END FROM outbox_seq_seq) AS drawn \
         FROM outbox_identity";

    /// Makes writers of the change log and the outbox take turns from here
    /// until they commit. A `BIGSERIAL` is drawn at insert but visible at
    /// commit, so without this a stream reader could see seq 8 committed
    /// while seq 7 is still in flight, move its cursor past 7 and never
    /// send it; the outbox relay would move its high-water mark past 7 the
    /// same way and never publish it. Taken
    /// just before the change rows, after every other lock and row write,
    /// so it is held only for the inserts and the commit.
    async fn lock_changes(tx: &mut Transaction<'static, Postgres>) -> Result<(), StoreError> {
        sqlx::query(LOCK_CHANGES)
            .bind(CHANGES_LOCK_CLASS)
            .execute(&mut **tx)
            .await
            .map_err(db_err)?;
        Ok(())
    }
}

pub(super) async fn begin(pool: &PgPool) -> Result<Transaction<'static, Postgres>, StoreError> {
    pool.begin().await.map_err(db_err)
}

impl_store!(PostgresStore, sqlx::Postgres);
