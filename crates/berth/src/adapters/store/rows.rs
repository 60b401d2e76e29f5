//! Row codecs: typed column access and the conversions between stored rows
//! and domain values. A row that does not decode is `StoreError::Corrupt`,
//! naming its table and column — never a default.

use std::collections::BTreeMap;

use berth_core::event::{HealthEvent, HealthEventType, JobResult, Notification};
use berth_core::image::Digest;
use berth_core::operation::{Operation, OperationKind, Outcome, Source};
use berth_core::pin::{Pin, PinAction, PinHistoryEntry};
use berth_core::plugin::UpdateStatus;
use berth_core::rollout::{RolloutState, TargetState};
use berth_core::runtime::{LastError, RuntimeRecord};
use berth_core::status::RuntimeStatus;
use berth_core::template::Template;
use sqlx::Row;

use super::corrupt;
use crate::ports::store::{
    ChangeKind, ChangeRow, Observation, OutboxMessage, OutboxRow, PluginRecord, PluginUpdate,
    RolloutRow, RolloutTarget, StoreError, WebhookDelivery,
};
use crate::template_doc::TemplateDoc;

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
    let last_error = decode_last_error(row, T, "last_error_code", "last_error_message")?;
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
        run_id: row.opt_text(T, "run_id")?,
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

pub(crate) fn change_from_row(row: &impl Columns) -> Result<ChangeRow, StoreError> {
    const T: &str = "changes";
    let kind = row.text(T, "kind")?;
    Ok(ChangeRow {
        seq: row.int(T, "seq")?,
        at_ms: row.int(T, "at_ms")?,
        kind: ChangeKind::parse(&kind)
            .ok_or_else(|| corrupt(T, "kind", format!("unknown kind {kind:?}")))?,
        key: row.text(T, "key")?,
        runtime_id: row.opt_text(T, "runtime_id")?,
    })
}

pub(crate) fn webhook_delivery_from_row(row: &impl Columns) -> Result<WebhookDelivery, StoreError> {
    const T: &str = "webhook_deliveries";
    Ok(WebhookDelivery {
        seq: row.int(T, "seq")?,
        id: row.text(T, "id")?,
        webhook: row.text(T, "webhook")?,
        notification_id: row.text(T, "notification_id")?,
        notification_type: row.text(T, "notification_type")?,
        body: row.text(T, "body")?,
        created_at_ms: row.int(T, "created_at_ms")?,
        attempts: row.int(T, "attempts")?,
        last_error: row.opt_text(T, "last_error")?,
        last_attempt_at_ms: row.opt_int(T, "last_attempt_at_ms")?,
        delivered_at_ms: row.opt_int(T, "delivered_at_ms")?,
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
        plugin: row.opt_text(T, "plugin")?,
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

/// An error stored as two columns, both or neither.
fn decode_last_error(
    row: &impl Columns,
    table: &str,
    code_col: &str,
    message_col: &str,
) -> Result<Option<LastError>, StoreError> {
    match (
        row.opt_text(table, code_col)?,
        row.opt_text(table, message_col)?,
    ) {
        (None, None) => Ok(None),
        (Some(code), Some(message)) => Ok(Some(LastError { code, message })),
        (Some(_), None) => Err(corrupt(
            table,
            message_col,
            format!("missing beside {code_col}"),
        )),
        (None, Some(_)) => Err(corrupt(
            table,
            code_col,
            format!("missing beside {message_col}"),
        )),
    }
}

pub(crate) fn plugin_from_row(row: &impl Columns) -> Result<PluginRecord, StoreError> {
    const T: &str = "plugins";
    Ok(PluginRecord {
        runtime_id: row.text(T, "runtime_id")?,
        name: row.text(T, "name")?,
        source: row.text(T, "source")?,
        track: row.text(T, "track")?,
        installed_sha: row.opt_text(T, "installed_sha")?,
        installed_at_ms: row.opt_int(T, "installed_at_ms")?,
        resolved_at_ms: row.opt_int(T, "resolved_at_ms")?,
        last_error: decode_last_error(row, T, "error_code", "error_message")?,
    })
}

pub(crate) fn plugin_update_from_row(row: &impl Columns) -> Result<PluginUpdate, StoreError> {
    const T: &str = "plugin_updates";
    Ok(PluginUpdate {
        id: row.text(T, "id")?,
        runtime_id: row.text(T, "runtime_id")?,
        plugin: row.text(T, "plugin")?,
        track: row.text(T, "track")?,
        from_sha: row.opt_text(T, "from_sha")?,
        to_sha: row.text(T, "to_sha")?,
        status: decode_enum(row.text(T, "status")?, T, "status", |s| {
            UpdateStatus::parse(s).ok()
        })?,
        created_at_ms: row.int(T, "created_at_ms")?,
        updated_at_ms: row.int(T, "updated_at_ms")?,
    })
}
