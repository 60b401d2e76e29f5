//! Store adapters: SQLite (embedded default) and PostgreSQL. See `ports::store`.
//!
//! The SQL is written once (`sql.rs`); `transaction.rs`'s `impl_store!` generates the `Store`
//! implementation for a backend from its concrete sqlx types (SQLite accepts
//! PostgreSQL's `$1` numbered placeholders, and both speak `ON CONFLICT … DO
//! UPDATE` and `RETURNING`). What differs lives in the backend's module: how
//! a write transaction begins (`BEGIN IMMEDIATE` on SQLite), connection
//! settings, and the migration files (`migrations/<backend>/`). `rows.rs`
//! turns rows into domain values and back.

use std::path::Path;
use std::sync::Arc;

use crate::ports::store::{Store, StoreError};

mod migrate;
pub mod postgres;
pub mod read_model;
mod rows;
pub(crate) mod sql;
pub mod sqlite;
mod transaction;

pub(crate) use rows::*;
pub(crate) use transaction::impl_store;

pub use postgres::PostgresStore;
pub use read_model::ReadModelStore;
pub use sqlite::SqliteStore;

/// The file name of the SQLite database inside `data_dir` when no
/// `database_url` is configured.
pub const DEFAULT_SQLITE_FILE: &str = "berth.db";

/// Opens the configured store and brings its schema up to date.
///
/// `postgres://` or `postgresql://` → PostgreSQL; a `sqlite:` URL → SQLite;
/// an empty URL → SQLite in `<data_dir>/berth.db` (directories created).
///
/// A SQLite store is wrapped in the runtime read model
/// ([`ReadModelStore`]): one berth owns a database file, so every write
/// passes through it. A PostgreSQL store is not: other replicas write the
/// same tables, and its runtime reads are keyset SQL.
pub async fn connect(database_url: &str, data_dir: &Path) -> Result<Arc<dyn Store>, StoreError> {
    let url = database_url.trim();
    if url.is_empty() {
        let store = SqliteStore::open(&data_dir.join(DEFAULT_SQLITE_FILE)).await?;
        return Ok(Arc::new(ReadModelStore::load(Arc::new(store)).await?));
    }
    if url.starts_with("postgres://") || url.starts_with("postgresql://") {
        return Ok(Arc::new(PostgresStore::connect(url).await?));
    }
    if url.starts_with("sqlite:") {
        let store = SqliteStore::open_url(url).await?;
        return Ok(Arc::new(ReadModelStore::load(Arc::new(store)).await?));
    }
    // Only the scheme: the rest of a URL may hold a password.
    let scheme = url.split_once(':').map_or(url, |(scheme, _)| scheme);
    Err(StoreError::Database(format!(
        "unsupported database_url scheme {scheme:?}: use postgres://… (or postgresql://…) for PostgreSQL, \
         sqlite:PATH for SQLite, or leave it empty for SQLite in the data directory"
    )))
}

// --- errors ---------------------------------------------------------------

pub(crate) fn db_err(e: sqlx::Error) -> StoreError {
    StoreError::Database(e.to_string())
}

/// A unique key already taken becomes `Conflict` with `message`; any other
/// error stays a database error.
pub(crate) fn unique_err(e: sqlx::Error, message: impl FnOnce() -> String) -> StoreError {
    match &e {
        sqlx::Error::Database(d) if d.is_unique_violation() => StoreError::Conflict(message()),
        _ => db_err(e),
    }
}

pub(crate) fn corrupt(table: &str, column: &str, why: impl std::fmt::Display) -> StoreError {
    StoreError::Corrupt(format!("{table}.{column}: {why}"))
}
