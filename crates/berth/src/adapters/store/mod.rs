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

use berth_core::event::{HealthEvent, HealthEventType, JobResult, Notification};
use berth_core::image::Digest;
use berth_core::operation::{Operation, OperationKind, Outcome, Source};
use berth_core::pin::{Pin, PinAction, PinHistoryEntry};
use berth_core::rollout::{RolloutState, TargetState};
use berth_core::runtime::{LastError, RuntimeRecord};
use berth_core::status::RuntimeStatus;
use berth_core::template::Template;
use sqlx::Row;

use crate::ports::store::{
    Observation, OutboxMessage, OutboxRow, RolloutRow, RolloutTarget, Store, StoreError,
};
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

// --- reading columns ------------------------------------------------------

/// Typed column access that names the table and column when a value does
/// not decode. Implemented for each backend's row type.
pub(crate) trait Columns {
    fn text(&self, table: &str, column: &str) -> Result<String, StoreError>;
    fn opt_text(&self, table: &str, column: &str) -> Result<Option<String>, StoreError>;
    fn int(&self, table: &str, column: &str) -> Result<i64, StoreError>;
    fn opt_int(&self, table: &str, column: &str) -> Result<Option<i64>, StoreError>;
    fn boolean(&self, table: &str, column: &str) -> Result<bool, StoreError>;
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
            fn boolean(&self, table: &str, column: &str) -> Result<bool, StoreError> {
                self.try_get::<bool, _>(column)
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

/// `outbox.fields`: a JSON array of `[name, value]` pairs, order kept.
pub(crate) fn encode_fields(fields: &[(String, String)]) -> Result<String, StoreError> {
    serde_json::to_string(fields)
        .map_err(|e| StoreError::Database(format!("cannot encode outbox fields as JSON: {e}")))
}

fn decode_fields(
    text: &str,
    table: &str,
    column: &str,
) -> Result<Vec<(String, String)>, StoreError> {
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

pub(crate) fn health_event_from_row(row: &impl Columns) -> Result<HealthEvent, StoreError> {
    const T: &str = "health_events";
    let event_type = row.text(T, "event_type")?;
    Ok(HealthEvent {
        id: row.text(T, "id")?,
        runtime_id: row.text(T, "runtime_id")?,
        event_type: HealthEventType::parse(&event_type).ok_or_else(|| {
            corrupt(
                T,
                "event_type",
                format!("unknown health event type {event_type:?}"),
            )
        })?,
        container_id: row.opt_text(T, "container_id")?,
        at_ms: row.int(T, "at_ms")?,
        details: decode_map(&row.text(T, "details")?, T, "details")?,
    })
}

pub(crate) fn notification_from_row(row: &impl Columns) -> Result<Notification, StoreError> {
    const T: &str = "notifications";
    Ok(Notification {
        id: row.text(T, "id")?,
        notification_type: row.text(T, "notification_type")?,
        audience: row.text(T, "audience")?,
        payload: decode_map(&row.text(T, "payload")?, T, "payload")?,
        created_at_ms: row.int(T, "created_at_ms")?,
    })
}

pub(crate) fn job_result_from_row(row: &impl Columns) -> Result<JobResult, StoreError> {
    const T: &str = "job_results";
    Ok(JobResult {
        job_id: row.text(T, "job_id")?,
        runtime_id: row.text(T, "runtime_id")?,
        kind: row.text(T, "kind")?,
        success: row.boolean(T, "success")?,
        container_id: row.opt_text(T, "container_id")?,
        engine_endpoint: row.opt_text(T, "engine_endpoint")?,
        error_code: row.opt_text(T, "error_code")?,
        error_message: row.opt_text(T, "error_message")?,
        finished_at_ms: row.int(T, "finished_at_ms")?,
    })
}

pub(crate) fn outbox_row_from_row(row: &impl Columns) -> Result<OutboxRow, StoreError> {
    const T: &str = "outbox";
    Ok(OutboxRow {
        seq: row.int(T, "seq")?,
        message: OutboxMessage {
            stream: row.text(T, "stream")?,
            partition_key: row.text(T, "partition_key")?,
            fields: decode_fields(&row.text(T, "fields")?, T, "fields")?,
            created_at_ms: row.int(T, "created_at_ms")?,
        },
        attempts: row.int(T, "attempts")?,
    })
}

/// A state or kind stored as its text; a row that does not decode is
/// corrupt, never a default.
fn decode_enum<T>(
    text: String,
    table: &str,
    column: &str,
    parse: impl Fn(&str) -> Option<T>,
) -> Result<T, StoreError> {
    parse(&text).ok_or_else(|| corrupt(table, column, format!("unknown value {text:?}")))
}

/// A `u32` count stored as a 64-bit integer.
fn decode_u32(value: i64, table: &str, column: &str) -> Result<u32, StoreError> {
    u32::try_from(value).map_err(|_| corrupt(table, column, format!("{value} is not a u32")))
}

pub(crate) fn observation_from_row(row: &impl Columns) -> Result<Observation, StoreError> {
    const T: &str = "image_observations";
    Ok(Observation {
        template: row.text(T, "template")?,
        reference: row.text(T, "reference")?,
        digest: row.text(T, "digest")?,
        observed_at_ms: row.int(T, "observed_at_ms")?,
    })
}

pub(crate) fn rollout_from_row(row: &impl Columns) -> Result<RolloutRow, StoreError> {
    const T: &str = "rollouts";
    Ok(RolloutRow {
        id: row.text(T, "id")?,
        template: row.text(T, "template")?,
        from_digest: row.opt_text(T, "from_digest")?,
        to_digest: row.text(T, "to_digest")?,
        state: decode_enum(row.text(T, "state")?, T, "state", |s| {
            RolloutState::parse(s).ok()
        })?,
        batch_size: decode_u32(row.int(T, "batch_size")?, T, "batch_size")?,
        max_failures: decode_u32(row.int(T, "max_failures")?, T, "max_failures")?,
        failures: decode_u32(row.int(T, "failures")?, T, "failures")?,
        revert_pin: row.boolean(T, "revert_pin")?,
        source: decode_enum(row.text(T, "source")?, T, "source", Source::parse)?,
        message: row.opt_text(T, "message")?,
        created_at_ms: row.int(T, "created_at_ms")?,
        updated_at_ms: row.int(T, "updated_at_ms")?,
    })
}

/// The target in a row of [`sql::GET_ROLLOUT`] (its `target_*` columns),
/// `None` when the rollout has no target (the LEFT JOIN's NULLs).
pub(crate) fn rollout_target_from_row(
    row: &impl Columns,
) -> Result<Option<RolloutTarget>, StoreError> {
    const T: &str = "rollout_targets";
    let Some(runtime_id) = row.opt_text(T, "target_runtime_id")? else {
        return Ok(None);
    };
    Ok(Some(RolloutTarget {
        runtime_id,
        position: decode_u32(row.int(T, "target_position")?, T, "target_position")?,
        state: decode_enum(row.text(T, "target_state")?, T, "target_state", |s| {
            TargetState::parse(s).ok()
        })?,
        error: row.opt_text(T, "target_error")?,
        updated_at_ms: row.int(T, "target_updated_at_ms")?,
    }))
}

/// `outbox_delete` removes at most this many rows per statement (SQLite
/// allows 32,766 parameters, PostgreSQL 65,535).
pub(crate) const OUTBOX_DELETE_CHUNK: usize = 500;

/// `DELETE FROM outbox WHERE seq IN ($1, …, $n)`.
pub(crate) fn outbox_delete_sql(n: usize) -> String {
    let placeholders: Vec<String> = (1..=n).map(|i| format!("${i}")).collect();
    format!(
        "DELETE FROM outbox WHERE seq IN ({})",
        placeholders.join(", ")
    )
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
    macro_rules! health_event_cols {
        () => {
            "id, runtime_id, event_type, container_id, at_ms, details"
        };
    }
    macro_rules! notification_cols {
        () => {
            "id, notification_type, audience, payload, created_at_ms"
        };
    }
    macro_rules! job_result_cols {
        () => {
            "job_id, runtime_id, kind, success, container_id, engine_endpoint, error_code, \
             error_message, finished_at_ms"
        };
    }
    macro_rules! outbox_cols {
        () => {
            "seq, stream, partition_key, fields, created_at_ms, attempts"
        };
    }

    pub const INSERT_HEALTH_EVENT: &str = concat!(
        "INSERT INTO health_events (",
        health_event_cols!(),
        ") VALUES ($1, $2, $3, $4, $5, $6)"
    );
    pub const LIST_HEALTH_EVENTS: &str = concat!(
        "SELECT ",
        health_event_cols!(),
        " FROM health_events ORDER BY seq DESC LIMIT $1"
    );
    pub const LIST_HEALTH_EVENTS_BY_RUNTIME: &str = concat!(
        "SELECT ",
        health_event_cols!(),
        " FROM health_events WHERE runtime_id = $1 ORDER BY seq DESC LIMIT $2"
    );
    pub const LIST_HEALTH_EVENTS_BY_TYPE: &str = concat!(
        "SELECT ",
        health_event_cols!(),
        " FROM health_events WHERE event_type = $1 ORDER BY seq DESC LIMIT $2"
    );
    pub const LIST_HEALTH_EVENTS_BY_RUNTIME_AND_TYPE: &str = concat!(
        "SELECT ",
        health_event_cols!(),
        " FROM health_events WHERE runtime_id = $1 AND event_type = $2 \
         ORDER BY seq DESC LIMIT $3"
    );
    pub const HEALTH_EVENT_EXISTS: &str = "SELECT 1 AS one FROM health_events \
         WHERE runtime_id = $1 AND container_id = $2 AND event_type = $3 LIMIT 1";

    pub const INSERT_NOTIFICATION: &str = concat!(
        "INSERT INTO notifications (",
        notification_cols!(),
        ") VALUES ($1, $2, $3, $4, $5)"
    );
    pub const LIST_NOTIFICATIONS: &str = concat!(
        "SELECT ",
        notification_cols!(),
        " FROM notifications ORDER BY seq DESC LIMIT $1"
    );

    /// Inserts nothing when the job id already has a result: the caller
    /// sees 0 rows affected (no unique-violation error, which would abort
    /// a PostgreSQL transaction).
    pub const INSERT_JOB_RESULT: &str = concat!(
        "INSERT INTO job_results (",
        job_result_cols!(),
        ") VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9) ON CONFLICT (job_id) DO NOTHING"
    );
    pub const GET_JOB_RESULT: &str = concat!(
        "SELECT ",
        job_result_cols!(),
        " FROM job_results WHERE job_id = $1"
    );

    pub const INSERT_OUTBOX: &str = "INSERT INTO outbox \
         (stream, partition_key, fields, created_at_ms) VALUES ($1, $2, $3, $4)";
    pub const OUTBOX_PENDING: &str = concat!(
        "SELECT ",
        outbox_cols!(),
        " FROM outbox ORDER BY seq LIMIT $1"
    );
    pub const OUTBOX_FAILED: &str =
        "UPDATE outbox SET attempts = attempts + 1, last_error = $2 WHERE seq = $1";

    pub const FAIL_IN_PROGRESS_OPERATIONS: &str = concat!(
        "UPDATE operations SET outcome = 'failure', error_code = $1, error_message = $2, \
         finished_at_ms = $3 WHERE outcome = 'in_progress' RETURNING seq, ",
        operation_cols!()
    );

    macro_rules! observation_cols {
        () => {
            "template, reference, digest, observed_at_ms"
        };
    }
    macro_rules! rollout_cols {
        () => {
            "id, template, from_digest, to_digest, state, batch_size, max_failures, failures, \
             revert_pin, source, message, created_at_ms, updated_at_ms"
        };
    }

    pub const GET_OBSERVATION: &str = concat!(
        "SELECT ",
        observation_cols!(),
        " FROM image_observations WHERE template = $1"
    );
    pub const UPSERT_OBSERVATION: &str = concat!(
        "INSERT INTO image_observations (",
        observation_cols!(),
        ") VALUES ($1, $2, $3, $4) \
         ON CONFLICT (template) DO UPDATE SET reference = excluded.reference, \
         digest = excluded.digest, observed_at_ms = excluded.observed_at_ms"
    );

    pub const UPSERT_REJECTION: &str = "INSERT INTO rejected_digests \
         (template, digest, reason, rejected_at_ms) VALUES ($1, $2, $3, $4) \
         ON CONFLICT (template, digest) DO UPDATE SET reason = excluded.reason, \
         rejected_at_ms = excluded.rejected_at_ms";
    pub const IS_REJECTED: &str =
        "SELECT 1 AS one FROM rejected_digests WHERE template = $1 AND digest = $2";
    pub const DELETE_REJECTION: &str =
        "DELETE FROM rejected_digests WHERE template = $1 AND digest = $2";

    /// Keeps `seq` (the rollout's place in the list) of an existing rollout.
    pub const UPSERT_ROLLOUT: &str = concat!(
        "INSERT INTO rollouts (",
        rollout_cols!(),
        ") VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13) \
         ON CONFLICT (id) DO UPDATE SET template = excluded.template, \
         from_digest = excluded.from_digest, to_digest = excluded.to_digest, \
         state = excluded.state, batch_size = excluded.batch_size, \
         max_failures = excluded.max_failures, failures = excluded.failures, \
         revert_pin = excluded.revert_pin, source = excluded.source, \
         message = excluded.message, created_at_ms = excluded.created_at_ms, \
         updated_at_ms = excluded.updated_at_ms"
    );
    pub const UPSERT_ROLLOUT_TARGET: &str = "INSERT INTO rollout_targets \
         (rollout_id, runtime_id, position, state, error, updated_at_ms) \
         VALUES ($1, $2, $3, $4, $5, $6) \
         ON CONFLICT (rollout_id, runtime_id) DO UPDATE SET position = excluded.position, \
         state = excluded.state, error = excluded.error, updated_at_ms = excluded.updated_at_ms";
    /// The rollout with one row per target (or one row of NULL targets),
    /// in one statement, so that the rollout and its targets are read at
    /// one point in time.
    pub const GET_ROLLOUT: &str = "SELECT r.id, r.template, r.from_digest, r.to_digest, \
         r.state, r.batch_size, r.max_failures, r.failures, r.revert_pin, r.source, r.message, \
         r.created_at_ms, r.updated_at_ms, t.runtime_id AS target_runtime_id, \
         t.position AS target_position, t.state AS target_state, t.error AS target_error, \
         t.updated_at_ms AS target_updated_at_ms \
         FROM rollouts r LEFT JOIN rollout_targets t ON t.rollout_id = r.id \
         WHERE r.id = $1 ORDER BY t.position, t.runtime_id";
    pub const LIST_ROLLOUTS: &str = concat!(
        "SELECT ",
        rollout_cols!(),
        " FROM rollouts ORDER BY seq DESC LIMIT $1"
    );
    pub const LIST_ROLLOUTS_BY_TEMPLATE: &str = concat!(
        "SELECT ",
        rollout_cols!(),
        " FROM rollouts WHERE template = $1 ORDER BY seq DESC LIMIT $2"
    );
    /// Excludes the finished states rather than selecting the active ones,
    /// so that a row with an unknown state is read (and reported corrupt).
    pub const ACTIVE_ROLLOUTS: &str = concat!(
        "SELECT ",
        rollout_cols!(),
        " FROM rollouts WHERE state NOT IN ('halted', 'completed', 'aborted') ORDER BY seq"
    );
}

/// Generates `impl Store for $store` over the concrete sqlx database `$db`.
/// `$store` must have a `pool: sqlx::Pool<$db>` field, an inherent
/// `async fn begin_write(&self) -> Result<sqlx::Transaction<'static, $db>, StoreError>`,
/// and an associated
/// `async fn lock_partitions(tx: &mut sqlx::Transaction<'static, $db>, keys: &[&str]) -> Result<(), StoreError>`
/// that makes writers of one outbox partition key take turns until commit
/// (sorted, deduplicated keys; a no-op where `begin_write` already
/// serialises every writer).
macro_rules! impl_store {
    ($store:ty, $db:ty) => {
        const _: () = {
            use async_trait::async_trait;
            use berth_core::event::{HealthEvent, HealthEventType, JobResult, Notification};
            use berth_core::operation::{Operation, OperationKind};
            use berth_core::pin::{Pin, PinHistoryEntry};
            use berth_core::runtime::RuntimeRecord;
            use berth_core::template::Template;

            use $crate::adapters::store::{
                db_err, encode_fields, encode_map, encode_template, health_event_from_row,
                job_result_from_row, notification_from_row, observation_from_row, op_time,
                operation_from_row, outbox_delete_sql, outbox_row_from_row, pin_entry_from_row,
                pin_from_row, rollout_from_row, rollout_target_from_row, runtime_from_row, sql,
                template_from_row, unique_err, Columns, OUTBOX_DELETE_CHUNK,
            };
            use $crate::ports::store::{
                Change, EventFilter, EventStore, Observation, OperationFilter, OutboxMessage,
                OutboxRow, OutboxStore, RejectionChange, RolloutRow, RolloutStore, RolloutTarget,
                RuntimeFilter, RuntimeStore, Store, StoreError, TemplateStore, WatchStore,
            };

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

            async fn insert_health_event(tx: &mut Tx, e: &HealthEvent) -> Result<(), StoreError> {
                sqlx::query(sql::INSERT_HEALTH_EVENT)
                    .bind(&e.id)
                    .bind(&e.runtime_id)
                    .bind(e.event_type.as_str())
                    .bind(e.container_id.as_deref())
                    .bind(e.at_ms)
                    .bind(encode_map(&e.details)?)
                    .execute(&mut **tx)
                    .await
                    .map_err(|err| {
                        unique_err(err, || format!("health event {:?} is already stored", e.id))
                    })?;
                Ok(())
            }

            async fn insert_notification(tx: &mut Tx, n: &Notification) -> Result<(), StoreError> {
                sqlx::query(sql::INSERT_NOTIFICATION)
                    .bind(&n.id)
                    .bind(&n.notification_type)
                    .bind(&n.audience)
                    .bind(encode_map(&n.payload)?)
                    .bind(n.created_at_ms)
                    .execute(&mut **tx)
                    .await
                    .map_err(|err| {
                        unique_err(err, || format!("notification {:?} is already stored", n.id))
                    })?;
                Ok(())
            }

            /// Returns false (inserting nothing) when the job id already
            /// has a result.
            async fn insert_job_result(tx: &mut Tx, j: &JobResult) -> Result<bool, StoreError> {
                let inserted = sqlx::query(sql::INSERT_JOB_RESULT)
                    .bind(&j.job_id)
                    .bind(&j.runtime_id)
                    .bind(&j.kind)
                    .bind(j.success)
                    .bind(j.container_id.as_deref())
                    .bind(j.engine_endpoint.as_deref())
                    .bind(j.error_code.as_deref())
                    .bind(j.error_message.as_deref())
                    .bind(j.finished_at_ms)
                    .execute(&mut **tx)
                    .await
                    .map_err(db_err)?
                    .rows_affected();
                Ok(inserted == 1)
            }

            async fn insert_outbox(tx: &mut Tx, m: &OutboxMessage) -> Result<(), StoreError> {
                sqlx::query(sql::INSERT_OUTBOX)
                    .bind(&m.stream)
                    .bind(&m.partition_key)
                    .bind(encode_fields(&m.fields)?)
                    .bind(m.created_at_ms)
                    .execute(&mut **tx)
                    .await
                    .map_err(db_err)?;
                Ok(())
            }

            async fn upsert_rollout(tx: &mut Tx, r: &RolloutRow) -> Result<(), StoreError> {
                sqlx::query(sql::UPSERT_ROLLOUT)
                    .bind(&r.id)
                    .bind(&r.template)
                    .bind(r.from_digest.as_deref())
                    .bind(&r.to_digest)
                    .bind(r.state.as_str())
                    .bind(i64::from(r.batch_size))
                    .bind(i64::from(r.max_failures))
                    .bind(i64::from(r.failures))
                    .bind(r.revert_pin)
                    .bind(r.source.as_str())
                    .bind(r.message.as_deref())
                    .bind(r.created_at_ms)
                    .bind(r.updated_at_ms)
                    .execute(&mut **tx)
                    .await
                    .map_err(db_err)?;
                Ok(())
            }

            async fn upsert_rollout_target(
                tx: &mut Tx,
                rollout_id: &str,
                t: &RolloutTarget,
            ) -> Result<(), StoreError> {
                sqlx::query(sql::UPSERT_ROLLOUT_TARGET)
                    .bind(rollout_id)
                    .bind(&t.runtime_id)
                    .bind(i64::from(t.position))
                    .bind(t.state.as_str())
                    .bind(t.error.as_deref())
                    .bind(t.updated_at_ms)
                    .execute(&mut **tx)
                    .await
                    .map_err(db_err)?;
                Ok(())
            }

            /// The one write path of `record` and `commit`. On `Err` the
            /// caller drops (rolls back) `tx`.
            async fn write_change(tx: &mut Tx, change: &Change<'_>) -> Result<(), StoreError> {
                // Locks first, before any row lock, in one order for all.
                let mut keys: Vec<&str> = change
                    .outbox
                    .iter()
                    .map(|m| m.partition_key.as_str())
                    .collect();
                keys.sort_unstable();
                keys.dedup();
                if !keys.is_empty() {
                    <$store>::lock_partitions(tx, &keys).await?;
                }
                // The one part that may refuse the change: before the rest.
                if let Some(job) = change.job_result {
                    if !insert_job_result(tx, job).await? {
                        return Err(StoreError::Conflict(format!(
                            "job {:?} already has a result",
                            job.job_id
                        )));
                    }
                }
                if let Some(runtime) = change.runtime {
                    upsert_runtime(tx, runtime).await?;
                }
                if let Some(op) = change.operation {
                    upsert_operation(tx, op).await?;
                }
                if let Some(p) = change.pin {
                    upsert_pin(tx, p.pin).await?;
                    insert_pin_history(tx, p.entry).await?;
                }
                if let Some(obs) = change.observation {
                    sqlx::query(sql::UPSERT_OBSERVATION)
                        .bind(&obs.template)
                        .bind(&obs.reference)
                        .bind(&obs.digest)
                        .bind(obs.observed_at_ms)
                        .execute(&mut **tx)
                        .await
                        .map_err(db_err)?;
                }
                match change.rejection {
                    Some(RejectionChange::Reject {
                        template,
                        digest,
                        reason,
                        at_ms,
                    }) => {
                        sqlx::query(sql::UPSERT_REJECTION)
                            .bind(template)
                            .bind(digest)
                            .bind(reason)
                            .bind(at_ms)
                            .execute(&mut **tx)
                            .await
                            .map_err(db_err)?;
                    }
                    Some(RejectionChange::Lift { template, digest }) => {
                        sqlx::query(sql::DELETE_REJECTION)
                            .bind(template)
                            .bind(digest)
                            .execute(&mut **tx)
                            .await
                            .map_err(db_err)?;
                    }
                    None => {}
                }
                if let Some(r) = change.rollout {
                    upsert_rollout(tx, r.rollout).await?;
                    for t in r.targets {
                        upsert_rollout_target(tx, &r.rollout.id, t).await?;
                    }
                }
                for e in change.health_events {
                    insert_health_event(tx, e).await?;
                }
                for n in change.notifications {
                    insert_notification(tx, n).await?;
                }
                for m in change.outbox {
                    insert_outbox(tx, m).await?;
                }
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
            impl TemplateStore for $store {
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
            }

            #[async_trait]
            impl RuntimeStore for $store {
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

                async fn get_job_result(
                    &self,
                    job_id: &str,
                ) -> Result<Option<JobResult>, StoreError> {
                    sqlx::query(sql::GET_JOB_RESULT)
                        .bind(job_id)
                        .fetch_optional(&self.pool)
                        .await
                        .map_err(db_err)?
                        .map(|row| job_result_from_row(&row))
                        .transpose()
                }
            }

            #[async_trait]
            impl Store for $store {
                async fn commit(&self, change: &Change<'_>) -> Result<(), StoreError> {
                    if change.is_empty() {
                        return Ok(());
                    }
                    let mut tx = self.begin_write().await?;
                    match write_change(&mut tx, change).await {
                        Ok(()) => commit(tx).await,
                        Err(e) => {
                            // Release the lock now; the error is the news.
                            let _ = rollback(tx).await;
                            Err(e)
                        }
                    }
                }
            }

            #[async_trait]
            impl EventStore for $store {
                async fn list_health_events(
                    &self,
                    filter: &EventFilter,
                ) -> Result<Vec<HealthEvent>, StoreError> {
                    let limit = i64::from(filter.limit);
                    let event_type = filter.event_type.map(HealthEventType::as_str);
                    let query = match (filter.runtime_id.as_deref(), event_type) {
                        (None, None) => sqlx::query(sql::LIST_HEALTH_EVENTS).bind(limit),
                        (Some(r), None) => sqlx::query(sql::LIST_HEALTH_EVENTS_BY_RUNTIME)
                            .bind(r)
                            .bind(limit),
                        (None, Some(t)) => sqlx::query(sql::LIST_HEALTH_EVENTS_BY_TYPE)
                            .bind(t)
                            .bind(limit),
                        (Some(r), Some(t)) => {
                            sqlx::query(sql::LIST_HEALTH_EVENTS_BY_RUNTIME_AND_TYPE)
                                .bind(r)
                                .bind(t)
                                .bind(limit)
                        }
                    };
                    query
                        .fetch_all(&self.pool)
                        .await
                        .map_err(db_err)?
                        .iter()
                        .map(health_event_from_row)
                        .collect()
                }

                async fn has_health_event(
                    &self,
                    runtime_id: &str,
                    container_id: &str,
                    event_type: HealthEventType,
                ) -> Result<bool, StoreError> {
                    Ok(sqlx::query(sql::HEALTH_EVENT_EXISTS)
                        .bind(runtime_id)
                        .bind(container_id)
                        .bind(event_type.as_str())
                        .fetch_optional(&self.pool)
                        .await
                        .map_err(db_err)?
                        .is_some())
                }

                async fn list_notifications(
                    &self,
                    limit: u32,
                ) -> Result<Vec<Notification>, StoreError> {
                    sqlx::query(sql::LIST_NOTIFICATIONS)
                        .bind(i64::from(limit))
                        .fetch_all(&self.pool)
                        .await
                        .map_err(db_err)?
                        .iter()
                        .map(notification_from_row)
                        .collect()
                }
            }

            #[async_trait]
            impl OutboxStore for $store {
                async fn outbox_pending(&self, limit: u32) -> Result<Vec<OutboxRow>, StoreError> {
                    sqlx::query(sql::OUTBOX_PENDING)
                        .bind(i64::from(limit))
                        .fetch_all(&self.pool)
                        .await
                        .map_err(db_err)?
                        .iter()
                        .map(outbox_row_from_row)
                        .collect()
                }

                async fn outbox_delete(&self, seqs: &[i64]) -> Result<(), StoreError> {
                    if seqs.is_empty() {
                        return Ok(());
                    }
                    let mut tx = self.begin_write().await?;
                    for chunk in seqs.chunks(OUTBOX_DELETE_CHUNK) {
                        let statement = outbox_delete_sql(chunk.len());
                        let mut query = sqlx::query(&statement);
                        for seq in chunk {
                            query = query.bind(*seq);
                        }
                        query.execute(&mut *tx).await.map_err(db_err)?;
                    }
                    commit(tx).await
                }

                async fn outbox_failed(&self, seq: i64, error: &str) -> Result<(), StoreError> {
                    let mut tx = self.begin_write().await?;
                    sqlx::query(sql::OUTBOX_FAILED)
                        .bind(seq)
                        .bind(error)
                        .execute(&mut *tx)
                        .await
                        .map_err(db_err)?;
                    commit(tx).await
                }
            }

            #[async_trait]
            impl WatchStore for $store {
                async fn get_observation(
                    &self,
                    template: &str,
                ) -> Result<Option<Observation>, StoreError> {
                    sqlx::query(sql::GET_OBSERVATION)
                        .bind(template)
                        .fetch_optional(&self.pool)
                        .await
                        .map_err(db_err)?
                        .map(|row| observation_from_row(&row))
                        .transpose()
                }

                async fn is_rejected(
                    &self,
                    template: &str,
                    digest: &str,
                ) -> Result<bool, StoreError> {
                    Ok(sqlx::query(sql::IS_REJECTED)
                        .bind(template)
                        .bind(digest)
                        .fetch_optional(&self.pool)
                        .await
                        .map_err(db_err)?
                        .is_some())
                }
            }

            #[async_trait]
            impl RolloutStore for $store {
                async fn get_rollout(
                    &self,
                    id: &str,
                ) -> Result<Option<(RolloutRow, Vec<RolloutTarget>)>, StoreError> {
                    let rows = sqlx::query(sql::GET_ROLLOUT)
                        .bind(id)
                        .fetch_all(&self.pool)
                        .await
                        .map_err(db_err)?;
                    let Some(first) = rows.first() else {
                        return Ok(None);
                    };
                    let rollout = rollout_from_row(first)?;
                    let mut targets = Vec::with_capacity(rows.len());
                    for row in &rows {
                        if let Some(target) = rollout_target_from_row(row)? {
                            targets.push(target);
                        }
                    }
                    Ok(Some((rollout, targets)))
                }

                async fn list_rollouts(
                    &self,
                    template: Option<&str>,
                    limit: u32,
                ) -> Result<Vec<RolloutRow>, StoreError> {
                    let limit = i64::from(limit);
                    let query = match template {
                        None => sqlx::query(sql::LIST_ROLLOUTS).bind(limit),
                        Some(t) => sqlx::query(sql::LIST_ROLLOUTS_BY_TEMPLATE)
                            .bind(t)
                            .bind(limit),
                    };
                    query
                        .fetch_all(&self.pool)
                        .await
                        .map_err(db_err)?
                        .iter()
                        .map(rollout_from_row)
                        .collect()
                }

                async fn active_rollouts(&self) -> Result<Vec<RolloutRow>, StoreError> {
                    sqlx::query(sql::ACTIVE_ROLLOUTS)
                        .fetch_all(&self.pool)
                        .await
                        .map_err(db_err)?
                        .iter()
                        .map(rollout_from_row)
                        .collect()
                }
            }
        };
    };
}

pub(crate) use impl_store;
