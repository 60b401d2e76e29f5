//! Store adapters: SQLite (embedded default) and PostgreSQL. See `ports::store`.
//!
//! The SQL is written once, here: [`impl_store!`] generates the `Store`
//! implementation for a backend from its concrete sqlx types (SQLite accepts
//! PostgreSQL's `$1` numbered placeholders, and both speak `ON CONFLICT … DO
//! UPDATE` and `RETURNING`). What differs lives in the backend's module: how
//! a write transaction begins (`BEGIN IMMEDIATE` on SQLite), connection
//! settings, and the migration files (`migrations/<backend>/`).

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

use berth_core::image::Digest;
use berth_core::operation::{Operation, OperationKind, Outcome, Source};
use berth_core::pin::{Pin, PinAction, PinHistoryEntry};
use berth_core::runtime::{LastError, RuntimeRecord};
use berth_core::status::RuntimeStatus;
use berth_core::template::Template;
use sqlx::Row;

use crate::ports::store::{Store, StoreError};
use crate::template_doc::TemplateDoc;

mod migrate;
pub mod postgres;
pub mod sqlite;

pub use postgres::PostgresStore;
pub use sqlite::SqliteStore;

/// The file name of the SQLite database inside `data_dir` when no
/// `database_url` is configured.
pub const DEFAULT_SQLITE_FILE: &str = "berth.db";

/// Opens the configured store and brings its schema up to date.
///
/// `postgres://` or `postgresql://` → PostgreSQL; a `sqlite:` URL → SQLite;
/// an empty URL → SQLite in `<data_dir>/berth.db` (directories created).
pub async fn connect(database_url: &str, data_dir: &Path) -> Result<Arc<dyn Store>, StoreError> {
    let url = database_url.trim();
    if url.is_empty() {
        let store = SqliteStore::open(&data_dir.join(DEFAULT_SQLITE_FILE)).await?;
        return Ok(Arc::new(store));
    }
    if url.starts_with("postgres://") || url.starts_with("postgresql://") {
        return Ok(Arc::new(PostgresStore::connect(url).await?));
    }
    if url.starts_with("sqlite:") {
        return Ok(Arc::new(SqliteStore::open_url(url).await?));
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

pub(crate) fn corrupt(table: &str, column: &str, why: impl std::fmt::Display) -> StoreError {
    StoreError::Corrupt(format!("{table}.{column}: {why}"))
}

// --- reading columns ------------------------------------------------------

/// Typed column access that names the table and column when a value does
/// not decode. Implemented for each backend's row type.
pub(crate) trait Columns {
    fn text(&self, table: &str, column: &str) -> Result<String, StoreError>;
    fn opt_text(&self, table: &str, column: &str) -> Result<Option<String>, StoreError>;
    fn int(&self, table: &str, column: &str) -> Result<i64, StoreError>;
    fn opt_int(&self, table: &str, column: &str) -> Result<Option<i64>, StoreError>;
}

macro_rules! impl_columns {
    ($row:ty) => {
        impl Columns for $row {
            fn text(&self, table: &str, column: &str) -> Result<String, StoreError> {
                self.try_get::<String, _>(column)
                    .map_err(|e| corrupt(table, column, e))
            }
            fn opt_text(&self, table: &str, column: &str) -> Result<Option<String>, StoreError> {
                self.try_get::<Option<String>, _>(column)
                    .map_err(|e| corrupt(table, column, e))
            }
            fn int(&self, table: &str, column: &str) -> Result<i64, StoreError> {
                self.try_get::<i64, _>(column)
                    .map_err(|e| corrupt(table, column, e))
            }
            fn opt_int(&self, table: &str, column: &str) -> Result<Option<i64>, StoreError> {
                self.try_get::<Option<i64>, _>(column)
                    .map_err(|e| corrupt(table, column, e))
            }
        }
    };
}

impl_columns!(sqlx::sqlite::SqliteRow);
impl_columns!(sqlx::postgres::PgRow);

// --- encoding and decoding domain values ------------------------------------

/// The JSON text stored in `templates.doc`.
pub(crate) fn encode_template(template: &Template) -> Result<String, StoreError> {
    serde_json::to_string(&TemplateDoc::from_template(template)).map_err(|e| {
        StoreError::Database(format!(
            "cannot encode template {:?} as JSON: {e}",
            template.name
        ))
    })
}

/// A string map (`runtimes.env`, `operations.details`) as JSON text.
pub(crate) fn encode_map(map: &BTreeMap<String, String>) -> Result<String, StoreError> {
    serde_json::to_string(map)
        .map_err(|e| StoreError::Database(format!("cannot encode a string map as JSON: {e}")))
}

fn decode_map(
    text: &str,
    table: &str,
    column: &str,
) -> Result<BTreeMap<String, String>, StoreError> {
    serde_json::from_str(text).map_err(|e| corrupt(table, column, e))
}

fn decode_digest(text: &str, table: &str, column: &str) -> Result<Digest, StoreError> {
    Digest::parse(text).map_err(|e| corrupt(table, column, e))
}

fn decode_opt_digest(
    text: Option<String>,
    table: &str,
    column: &str,
) -> Result<Option<Digest>, StoreError> {
    text.map(|t| decode_digest(&t, table, column)).transpose()
}

pub(crate) fn template_from_row(row: &impl Columns) -> Result<Template, StoreError> {
    const T: &str = "templates";
    let name = row.text(T, "name")?;
    let doc: TemplateDoc =
        serde_json::from_str(&row.text(T, "doc")?).map_err(|e| corrupt(T, "doc", e))?;
    doc.to_template(&name).map_err(|e| corrupt(T, "doc", e))
}

pub(crate) fn pin_from_row(row: &impl Columns) -> Result<Pin, StoreError> {
    const T: &str = "pins";
    Ok(Pin {
        template: row.text(T, "template")?,
        digest: decode_digest(&row.text(T, "digest")?, T, "digest")?,
        promoted_at_ms: row.int(T, "promoted_at_ms")?,
        promoted_by: row.text(T, "promoted_by")?,
        reason: row.opt_text(T, "reason")?,
    })
}

pub(crate) fn pin_entry_from_row(row: &impl Columns) -> Result<PinHistoryEntry, StoreError> {
    const T: &str = "pin_history";
    let action = row.text(T, "action")?;
    Ok(PinHistoryEntry {
        template: row.text(T, "template")?,
        action: PinAction::parse(&action)
            .ok_or_else(|| corrupt(T, "action", format!("unknown pin action {action:?}")))?,
        digest: decode_opt_digest(row.opt_text(T, "digest")?, T, "digest")?,
        previous_digest: decode_opt_digest(
            row.opt_text(T, "previous_digest")?,
            T,
            "previous_digest",
        )?,
        at_ms: row.int(T, "at_ms")?,
        by: row.text(T, "by_who")?,
        reason: row.opt_text(T, "reason")?,
    })
}

pub(crate) fn runtime_from_row(row: &impl Columns) -> Result<RuntimeRecord, StoreError> {
    const T: &str = "runtimes";
    let status = row.text(T, "status")?;
    let last_error = match (
        row.opt_text(T, "last_error_code")?,
        row.opt_text(T, "last_error_message")?,
    ) {
        (None, None) => None,
        (Some(code), Some(message)) => Some(LastError { code, message }),
        (Some(_), None) => {
            return Err(corrupt(
                T,
                "last_error_message",
                "missing beside last_error_code",
            ))
        }
        (None, Some(_)) => {
            return Err(corrupt(
                T,
                "last_error_code",
                "missing beside last_error_message",
            ))
        }
    };
    Ok(RuntimeRecord {
        id: row.text(T, "id")?,
        template: row.text(T, "template")?,
        status: status
            .parse::<RuntimeStatus>()
            .map_err(|e| corrupt(T, "status", e))?,
        container_id: row.opt_text(T, "container_id")?,
        image_ref: row.opt_text(T, "image_ref")?,
        image_digest: row.opt_text(T, "image_digest")?,
        engine_endpoint: row.opt_text(T, "engine_endpoint")?,
        generation: row.int(T, "generation")?,
        env: decode_map(&row.text(T, "env")?, T, "env")?,
        created_at_ms: row.int(T, "created_at_ms")?,
        updated_at_ms: row.int(T, "updated_at_ms")?,
        last_error,
    })
}

pub(crate) fn operation_from_row(row: &impl Columns) -> Result<Operation, StoreError> {
    const T: &str = "operations";
    let kind = row.text(T, "kind")?;
    let source = row.text(T, "source")?;
    let outcome = row.text(T, "outcome")?;
    Ok(Operation {
        id: row.text(T, "id")?,
        runtime_id: row.opt_text(T, "runtime_id")?,
        template: row.opt_text(T, "template")?,
        kind: OperationKind::parse(&kind)
            .ok_or_else(|| corrupt(T, "kind", format!("unknown operation kind {kind:?}")))?,
        source: Source::parse(&source)
            .ok_or_else(|| corrupt(T, "source", format!("unknown source {source:?}")))?,
        outcome: Outcome::parse(&outcome)
            .ok_or_else(|| corrupt(T, "outcome", format!("unknown outcome {outcome:?}")))?,
        error_code: row.opt_text(T, "error_code")?,
        error_message: row.opt_text(T, "error_message")?,
        started_at_ms: row.int(T, "started_at_ms")?,
        finished_at_ms: row.opt_int(T, "finished_at_ms")?,
        details: decode_map(&row.text(T, "details")?, T, "details")?,
    })
}

/// The time a change happened, as far as the store is concerned: the
/// operation's end when known, else its start (the store reads no clock).
pub(crate) fn op_time(op: &Operation) -> i64 {
    op.finished_at_ms.unwrap_or(op.started_at_ms)
}

// --- SQL, written once for both backends ------------------------------------

/// Every statement the store runs. `$n` placeholders work on both backends.
pub(crate) mod sql {
    macro_rules! template_cols {
        () => {
            "name, doc"
        };
    }
    macro_rules! pin_cols {
        () => {
            "template, digest, promoted_at_ms, promoted_by, reason"
        };
    }
    macro_rules! pin_history_cols {
        () => {
            "template, action, digest, previous_digest, at_ms, by_who, reason"
        };
    }
    macro_rules! runtime_cols {
        () => {
            "id, template, status, container_id, image_ref, image_digest, engine_endpoint, \
             generation, env, created_at_ms, updated_at_ms, last_error_code, last_error_message"
        };
    }
    macro_rules! operation_cols {
        () => {
            "id, runtime_id, template, kind, source, outcome, error_code, error_message, \
             started_at_ms, finished_at_ms, details"
        };
    }

    pub const TEMPLATE_EXISTS: &str = "SELECT 1 AS one FROM templates WHERE name = $1";
    pub const UPSERT_TEMPLATE: &str = "INSERT INTO templates (name, doc, created_at_ms, updated_at_ms) \
         VALUES ($1, $2, $3, $3) \
         ON CONFLICT (name) DO UPDATE SET doc = excluded.doc, updated_at_ms = excluded.updated_at_ms";
    pub const GET_TEMPLATE: &str = concat!(
        "SELECT ",
        template_cols!(),
        " FROM templates WHERE name = $1"
    );
    pub const LIST_TEMPLATES: &str =
        concat!("SELECT ", template_cols!(), " FROM templates ORDER BY name");
    pub const COUNT_LIVE_RUNTIMES_OF_TEMPLATE: &str =
        "SELECT COUNT(*) AS n FROM runtimes WHERE template = $1 AND status <> 'removed'";
    pub const DELETE_TEMPLATE: &str = "DELETE FROM templates WHERE name = $1";

    pub const GET_PIN: &str = concat!("SELECT ", pin_cols!(), " FROM pins WHERE template = $1");
    pub const LIST_PINS: &str = concat!("SELECT ", pin_cols!(), " FROM pins ORDER BY template");
    pub const UPSERT_PIN: &str = concat!(
        "INSERT INTO pins (",
        pin_cols!(),
        ") VALUES ($1, $2, $3, $4, $5) \
         ON CONFLICT (template) DO UPDATE SET digest = excluded.digest, \
         promoted_at_ms = excluded.promoted_at_ms, promoted_by = excluded.promoted_by, \
         reason = excluded.reason"
    );
    pub const DELETE_PIN: &str = "DELETE FROM pins WHERE template = $1";
    pub const PIN_HISTORY_EXISTS: &str =
        "SELECT 1 AS one FROM pin_history WHERE template = $1 LIMIT 1";
    pub const INSERT_PIN_HISTORY: &str = concat!(
        "INSERT INTO pin_history (",
        pin_history_cols!(),
        ") VALUES ($1, $2, $3, $4, $5, $6, $7)"
    );
    pub const PIN_HISTORY: &str = concat!(
        "SELECT ",
        pin_history_cols!(),
        " FROM pin_history WHERE template = $1 ORDER BY seq DESC LIMIT $2"
    );

    pub const GET_RUNTIME: &str =
        concat!("SELECT ", runtime_cols!(), " FROM runtimes WHERE id = $1");
    pub const LIST_RUNTIMES: &str =
        concat!("SELECT ", runtime_cols!(), " FROM runtimes ORDER BY id");
    pub const LIST_RUNTIMES_BY_TEMPLATE: &str = concat!(
        "SELECT ",
        runtime_cols!(),
        " FROM runtimes WHERE template = $1 ORDER BY id"
    );
    pub const LIST_RUNTIMES_BY_STATUS: &str = concat!(
        "SELECT ",
        runtime_cols!(),
        " FROM runtimes WHERE status = $1 ORDER BY id"
    );
    pub const LIST_RUNTIMES_BY_TEMPLATE_AND_STATUS: &str = concat!(
        "SELECT ",
        runtime_cols!(),
        " FROM runtimes WHERE template = $1 AND status = $2 ORDER BY id"
    );
    /// Replaces every column of an existing record: what was recorded is
    /// what `get_runtime` returns.
    pub const UPSERT_RUNTIME: &str = concat!(
        "INSERT INTO runtimes (",
        runtime_cols!(),
        ") VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13) \
         ON CONFLICT (id) DO UPDATE SET template = excluded.template, status = excluded.status, \
         container_id = excluded.container_id, image_ref = excluded.image_ref, \
         image_digest = excluded.image_digest, engine_endpoint = excluded.engine_endpoint, \
         generation = excluded.generation, env = excluded.env, \
         created_at_ms = excluded.created_at_ms, updated_at_ms = excluded.updated_at_ms, last_error_code = excluded.last_error_code, \
         last_error_message = excluded.last_error_message"
    );

    /// Keeps `seq` (the row's place in the log) of an existing operation.
    pub const UPSERT_OPERATION: &str = concat!(
        "INSERT INTO operations (",
        operation_cols!(),
        ") VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11) \
         ON CONFLICT (id) DO UPDATE SET runtime_id = excluded.runtime_id, \
         template = excluded.template, kind = excluded.kind, source = excluded.source, \
         outcome = excluded.outcome, error_code = excluded.error_code, \
         error_message = excluded.error_message, started_at_ms = excluded.started_at_ms, \
         finished_at_ms = excluded.finished_at_ms, details = excluded.details"
    );
    pub const LIST_OPERATIONS: &str = concat!(
        "SELECT ",
        operation_cols!(),
        " FROM operations ORDER BY seq DESC LIMIT $1"
    );
    pub const LIST_OPERATIONS_BY_RUNTIME: &str = concat!(
        "SELECT ",
        operation_cols!(),
        " FROM operations WHERE runtime_id = $1 ORDER BY seq DESC LIMIT $2"
    );
    pub const LIST_OPERATIONS_BY_KIND: &str = concat!(
        "SELECT ",
        operation_cols!(),
        " FROM operations WHERE kind = $1 ORDER BY seq DESC LIMIT $2"
    );
    pub const LIST_OPERATIONS_BY_RUNTIME_AND_KIND: &str = concat!(
        "SELECT ",
        operation_cols!(),
        " FROM operations WHERE runtime_id = $1 AND kind = $2 ORDER BY seq DESC LIMIT $3"
    );
    pub const FAIL_IN_PROGRESS_OPERATIONS: &str = concat!(
        "UPDATE operations SET outcome = 'failure', error_code = $1, error_message = $2, \
         finished_at_ms = $3 WHERE outcome = 'in_progress' RETURNING seq, ",
        operation_cols!()
    );
}

/// Generates `impl Store for $store` over the concrete sqlx database `$db`.
/// `$store` must have a `pool: sqlx::Pool<$db>` field and an inherent
/// `async fn begin_write(&self) -> Result<sqlx::Transaction<'static, $db>, StoreError>`.
macro_rules! impl_store {
    ($store:ty, $db:ty) => {
        const _: () = {
            use async_trait::async_trait;
            use berth_core::operation::{Operation, OperationKind};
            use berth_core::pin::{Pin, PinHistoryEntry};
            use berth_core::runtime::RuntimeRecord;
            use berth_core::template::Template;

            use $crate::adapters::store::{
                db_err, encode_map, encode_template, op_time, operation_from_row,
                pin_entry_from_row, pin_from_row, runtime_from_row, sql, template_from_row,
                Columns,
            };
            use $crate::ports::store::{OperationFilter, RuntimeFilter, Store, StoreError};

            type Tx = sqlx::Transaction<'static, $db>;

            async fn upsert_operation(tx: &mut Tx, op: &Operation) -> Result<(), StoreError> {
                sqlx::query(sql::UPSERT_OPERATION)
                    .bind(&op.id)
                    .bind(op.runtime_id.as_deref())
                    .bind(op.template.as_deref())
                    .bind(op.kind.as_str())
                    .bind(op.source.as_str())
                    .bind(op.outcome.as_str())
                    .bind(op.error_code.as_deref())
                    .bind(op.error_message.as_deref())
                    .bind(op.started_at_ms)
                    .bind(op.finished_at_ms)
                    .bind(encode_map(&op.details)?)
                    .execute(&mut **tx)
                    .await
                    .map_err(db_err)?;
                Ok(())
            }

            async fn upsert_pin(tx: &mut Tx, pin: &Pin) -> Result<(), StoreError> {
                sqlx::query(sql::UPSERT_PIN)
                    .bind(&pin.template)
                    .bind(pin.digest.as_str())
                    .bind(pin.promoted_at_ms)
                    .bind(&pin.promoted_by)
                    .bind(pin.reason.as_deref())
                    .execute(&mut **tx)
                    .await
                    .map_err(db_err)?;
                Ok(())
            }

            async fn insert_pin_history(
                tx: &mut Tx,
                entry: &PinHistoryEntry,
            ) -> Result<(), StoreError> {
                sqlx::query(sql::INSERT_PIN_HISTORY)
                    .bind(&entry.template)
                    .bind(entry.action.as_str())
                    .bind(entry.digest.as_ref().map(|d| d.as_str()))
                    .bind(entry.previous_digest.as_ref().map(|d| d.as_str()))
                    .bind(entry.at_ms)
                    .bind(&entry.by)
                    .bind(entry.reason.as_deref())
                    .execute(&mut **tx)
                    .await
                    .map_err(db_err)?;
                Ok(())
            }

            async fn upsert_runtime(tx: &mut Tx, r: &RuntimeRecord) -> Result<(), StoreError> {
                let (code, message) = match &r.last_error {
                    Some(e) => (Some(e.code.as_str()), Some(e.message.as_str())),
                    None => (None, None),
                };
                sqlx::query(sql::UPSERT_RUNTIME)
                    .bind(&r.id)
                    .bind(&r.template)
                    .bind(r.status.as_str())
                    .bind(r.container_id.as_deref())
                    .bind(r.image_ref.as_deref())
                    .bind(r.image_digest.as_deref())
                    .bind(r.engine_endpoint.as_deref())
                    .bind(r.generation)
                    .bind(encode_map(&r.env)?)
                    .bind(r.created_at_ms)
                    .bind(r.updated_at_ms)
                    .bind(code)
                    .bind(message)
                    .execute(&mut **tx)
                    .await
                    .map_err(db_err)?;
                Ok(())
            }

            async fn commit(tx: Tx) -> Result<(), StoreError> {
                tx.commit().await.map_err(db_err)
            }

            /// Ends a transaction that decided to change nothing, releasing
            /// the SQLite write lock at once rather than when `tx` drops.
            async fn rollback(tx: Tx) -> Result<(), StoreError> {
                tx.rollback().await.map_err(db_err)
            }

            #[async_trait]
            impl Store for $store {
                async fn put_template(
                    &self,
                    template: &Template,
                    op: &Operation,
                ) -> Result<bool, StoreError> {
                    let doc = encode_template(template)?;
                    let mut tx = self.begin_write().await?;
                    let existed = sqlx::query(sql::TEMPLATE_EXISTS)
                        .bind(&template.name)
                        .fetch_optional(&mut *tx)
                        .await
                        .map_err(db_err)?
                        .is_some();
                    sqlx::query(sql::UPSERT_TEMPLATE)
                        .bind(&template.name)
                        .bind(doc)
                        .bind(op_time(op))
                        .execute(&mut *tx)
                        .await
                        .map_err(db_err)?;
                    upsert_operation(&mut tx, op).await?;
                    commit(tx).await?;
                    Ok(!existed)
                }

                async fn get_template(&self, name: &str) -> Result<Option<Template>, StoreError> {
                    sqlx::query(sql::GET_TEMPLATE)
                        .bind(name)
                        .fetch_optional(&self.pool)
                        .await
                        .map_err(db_err)?
                        .map(|row| template_from_row(&row))
                        .transpose()
                }

                async fn list_templates(&self) -> Result<Vec<Template>, StoreError> {
                    sqlx::query(sql::LIST_TEMPLATES)
                        .fetch_all(&self.pool)
                        .await
                        .map_err(db_err)?
                        .iter()
                        .map(template_from_row)
                        .collect()
                }

                async fn delete_template(
                    &self,
                    name: &str,
                    op: &Operation,
                ) -> Result<bool, StoreError> {
                    let mut tx = self.begin_write().await?;
                    let exists = sqlx::query(sql::TEMPLATE_EXISTS)
                        .bind(name)
                        .fetch_optional(&mut *tx)
                        .await
                        .map_err(db_err)?
                        .is_some();
                    if !exists {
                        rollback(tx).await?;
                        return Ok(false);
                    }
                    let row = sqlx::query(sql::COUNT_LIVE_RUNTIMES_OF_TEMPLATE)
                        .bind(name)
                        .fetch_one(&mut *tx)
                        .await
                        .map_err(db_err)?;
                    let users = row.int("runtimes", "n")?;
                    if users > 0 {
                        let runtimes = if users == 1 { "runtime" } else { "runtimes" };
                        rollback(tx).await?;
                        return Err(StoreError::Conflict(format!(
                            "template {name:?} is used by {users} {runtimes} that {} not removed; \
                             remove {} first",
                            if users == 1 { "is" } else { "are" },
                            if users == 1 { "it" } else { "them" },
                        )));
                    }
                    sqlx::query(sql::DELETE_TEMPLATE)
                        .bind(name)
                        .execute(&mut *tx)
                        .await
                        .map_err(db_err)?;
                    sqlx::query(sql::DELETE_PIN)
                        .bind(name)
                        .execute(&mut *tx)
                        .await
                        .map_err(db_err)?;
                    upsert_operation(&mut tx, op).await?;
                    commit(tx).await?;
                    Ok(true)
                }

                async fn get_pin(&self, template: &str) -> Result<Option<Pin>, StoreError> {
                    sqlx::query(sql::GET_PIN)
                        .bind(template)
                        .fetch_optional(&self.pool)
                        .await
                        .map_err(db_err)?
                        .map(|row| pin_from_row(&row))
                        .transpose()
                }

                async fn list_pins(&self) -> Result<Vec<Pin>, StoreError> {
                    sqlx::query(sql::LIST_PINS)
                        .fetch_all(&self.pool)
                        .await
                        .map_err(db_err)?
                        .iter()
                        .map(pin_from_row)
                        .collect()
                }

                async fn promote_pin(
                    &self,
                    pin: &Pin,
                    entry: &PinHistoryEntry,
                    op: &Operation,
                ) -> Result<(), StoreError> {
                    let mut tx = self.begin_write().await?;
                    upsert_pin(&mut tx, pin).await?;
                    insert_pin_history(&mut tx, entry).await?;
                    upsert_operation(&mut tx, op).await?;
                    commit(tx).await
                }

                async fn seed_pin(
                    &self,
                    pin: &Pin,
                    entry: &PinHistoryEntry,
                    op: &Operation,
                ) -> Result<bool, StoreError> {
                    let mut tx = self.begin_write().await?;
                    let has_history = sqlx::query(sql::PIN_HISTORY_EXISTS)
                        .bind(&pin.template)
                        .fetch_optional(&mut *tx)
                        .await
                        .map_err(db_err)?
                        .is_some();
                    if has_history {
                        rollback(tx).await?;
                        return Ok(false);
                    }
                    upsert_pin(&mut tx, pin).await?;
                    insert_pin_history(&mut tx, entry).await?;
                    upsert_operation(&mut tx, op).await?;
                    commit(tx).await?;
                    Ok(true)
                }

                async fn unpin(
                    &self,
                    template: &str,
                    entry: &PinHistoryEntry,
                    op: &Operation,
                ) -> Result<bool, StoreError> {
                    let mut tx = self.begin_write().await?;
                    let deleted = sqlx::query(sql::DELETE_PIN)
                        .bind(template)
                        .execute(&mut *tx)
                        .await
                        .map_err(db_err)?
                        .rows_affected();
                    if deleted == 0 {
                        rollback(tx).await?;
                        return Ok(false);
                    }
                    insert_pin_history(&mut tx, entry).await?;
                    upsert_operation(&mut tx, op).await?;
                    commit(tx).await?;
                    Ok(true)
                }

                async fn pin_history(
                    &self,
                    template: &str,
                    limit: u32,
                ) -> Result<Vec<PinHistoryEntry>, StoreError> {
                    sqlx::query(sql::PIN_HISTORY)
                        .bind(template)
                        .bind(i64::from(limit))
                        .fetch_all(&self.pool)
                        .await
                        .map_err(db_err)?
                        .iter()
                        .map(pin_entry_from_row)
                        .collect()
                }

                async fn get_runtime(&self, id: &str) -> Result<Option<RuntimeRecord>, StoreError> {
                    sqlx::query(sql::GET_RUNTIME)
                        .bind(id)
                        .fetch_optional(&self.pool)
                        .await
                        .map_err(db_err)?
                        .map(|row| runtime_from_row(&row))
                        .transpose()
                }

                async fn list_runtimes(
                    &self,
                    filter: &RuntimeFilter,
                ) -> Result<Vec<RuntimeRecord>, StoreError> {
                    let status = filter.status.map(|s| s.as_str());
                    let query = match (filter.template.as_deref(), status) {
                        (None, None) => sqlx::query(sql::LIST_RUNTIMES),
                        (Some(t), None) => sqlx::query(sql::LIST_RUNTIMES_BY_TEMPLATE).bind(t),
                        (None, Some(s)) => sqlx::query(sql::LIST_RUNTIMES_BY_STATUS).bind(s),
                        (Some(t), Some(s)) => {
                            sqlx::query(sql::LIST_RUNTIMES_BY_TEMPLATE_AND_STATUS)
                                .bind(t)
                                .bind(s)
                        }
                    };
                    query
                        .fetch_all(&self.pool)
                        .await
                        .map_err(db_err)?
                        .iter()
                        .map(runtime_from_row)
                        .collect()
                }

                async fn record(
                    &self,
                    runtime: Option<&RuntimeRecord>,
                    op: &Operation,
                ) -> Result<(), StoreError> {
                    let mut tx = self.begin_write().await?;
                    if let Some(runtime) = runtime {
                        upsert_runtime(&mut tx, runtime).await?;
                    }
                    upsert_operation(&mut tx, op).await?;
                    commit(tx).await
                }

                async fn list_operations(
                    &self,
                    filter: &OperationFilter,
                ) -> Result<Vec<Operation>, StoreError> {
                    let limit = i64::from(filter.limit);
                    let kind = filter.kind.map(OperationKind::as_str);
                    let query = match (filter.runtime_id.as_deref(), kind) {
                        (None, None) => sqlx::query(sql::LIST_OPERATIONS).bind(limit),
                        (Some(r), None) => sqlx::query(sql::LIST_OPERATIONS_BY_RUNTIME)
                            .bind(r)
                            .bind(limit),
                        (None, Some(k)) => sqlx::query(sql::LIST_OPERATIONS_BY_KIND)
                            .bind(k)
                            .bind(limit),
                        (Some(r), Some(k)) => sqlx::query(sql::LIST_OPERATIONS_BY_RUNTIME_AND_KIND)
                            .bind(r)
                            .bind(k)
                            .bind(limit),
                    };
                    query
                        .fetch_all(&self.pool)
                        .await
                        .map_err(db_err)?
                        .iter()
                        .map(operation_from_row)
                        .collect()
                }

                async fn fail_in_progress_operations(
                    &self,
                    code: &str,
                    message: &str,
                    now_ms: i64,
                ) -> Result<Vec<Operation>, StoreError> {
                    let mut tx = self.begin_write().await?;
                    let rows = sqlx::query(sql::FAIL_IN_PROGRESS_OPERATIONS)
                        .bind(code)
                        .bind(message)
                        .bind(now_ms)
                        .fetch_all(&mut *tx)
                        .await
                        .map_err(db_err)?;
                    commit(tx).await?;
                    // RETURNING has no order of its own: oldest first, by seq.
                    let mut changed = rows
                        .iter()
                        .map(|row| Ok((row.int("operations", "seq")?, operation_from_row(row)?)))
                        .collect::<Result<Vec<_>, StoreError>>()?;
                    changed.sort_by_key(|(seq, _)| *seq);
                    Ok(changed.into_iter().map(|(_, op)| op).collect())
                }
            }
        };
    };
}

pub(crate) use impl_store;
