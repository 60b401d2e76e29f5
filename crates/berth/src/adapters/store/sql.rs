//! Every statement the store runs, written once for both backends:
//! `$n` placeholders work on SQLite and PostgreSQL alike.

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
         generation, env, created_at_ms, updated_at_ms, last_error_code, last_error_message, run_id"
    };
}
macro_rules! operation_cols {
    () => {
        "id, runtime_id, template, kind, source, outcome, error_code, error_message, \
         started_at_ms, finished_at_ms, details"
    };
}

pub const TEMPLATE_EXISTS: &str = "SELECT 1 AS one FROM templates WHERE name = $1";
pub const UPSERT_TEMPLATE: &str =
    "INSERT INTO templates (name, doc, created_at_ms, updated_at_ms) \
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
pub const PIN_HISTORY_EXISTS: &str = "SELECT 1 AS one FROM pin_history WHERE template = $1 LIMIT 1";
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

pub const GET_RUNTIME: &str = concat!("SELECT ", runtime_cols!(), " FROM runtimes WHERE id = $1");
pub const LIST_RUNTIMES: &str = concat!("SELECT ", runtime_cols!(), " FROM runtimes ORDER BY id");
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
    ") VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14) \
     ON CONFLICT (id) DO UPDATE SET template = excluded.template, status = excluded.status, \
     container_id = excluded.container_id, image_ref = excluded.image_ref, \
     image_digest = excluded.image_digest, engine_endpoint = excluded.engine_endpoint, \
     generation = excluded.generation, env = excluded.env, \
     created_at_ms = excluded.created_at_ms, updated_at_ms = excluded.updated_at_ms, last_error_code = excluded.last_error_code, \
     last_error_message = excluded.last_error_message, run_id = excluded.run_id"
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
pub const HEALTH_EVENT_EXISTS: &str = "SELECT 1 AS one FROM health_events \
     WHERE runtime_id = $1 AND container_id = $2 AND event_type = $3 LIMIT 1";

pub const INSERT_NOTIFICATION: &str = concat!(
    "INSERT INTO notifications (",
    notification_cols!(),
    ") VALUES ($1, $2, $3, $4, $5)"
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

pub const GET_OPERATION: &str = concat!(
    "SELECT ",
    operation_cols!(),
    " FROM operations WHERE id = $1"
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
pub const OUTBOX_NEW_IDENTITY: &str = "UPDATE outbox_identity SET id = $1";

macro_rules! webhook_delivery_cols {
    () => {
        "seq, id, webhook, notification_id, notification_type, body, created_at_ms, attempts, \
         last_error, last_attempt_at_ms, delivered_at_ms"
    };
}

pub const INSERT_WEBHOOK_DELIVERY: &str = "INSERT INTO webhook_deliveries \
     (id, webhook, notification_id, notification_type, body, created_at_ms) \
     VALUES ($1, $2, $3, $4, $5, $6)";
pub const WEBHOOK_HEAD: &str = concat!(
    "SELECT ",
    webhook_delivery_cols!(),
    " FROM webhook_deliveries WHERE webhook = $1 AND delivered_at_ms IS NULL \
     ORDER BY seq LIMIT 1"
);
pub const WEBHOOK_DELIVERED: &str = "UPDATE webhook_deliveries \
     SET delivered_at_ms = $2, last_attempt_at_ms = $2, attempts = attempts + 1 \
     WHERE seq = $1 AND delivered_at_ms IS NULL";
pub const WEBHOOK_FAILED: &str = "UPDATE webhook_deliveries \
     SET attempts = attempts + 1, last_error = $2, last_attempt_at_ms = $3 \
     WHERE seq = $1 AND delivered_at_ms IS NULL";
pub const WEBHOOK_PENDING_COUNT: &str = "SELECT COUNT(*) AS n FROM (SELECT seq FROM \
     webhook_deliveries WHERE webhook = $1 AND delivered_at_ms IS NULL LIMIT $2) AS pending";
pub const LIST_WEBHOOK_DELIVERIES: &str = concat!(
    "SELECT ",
    webhook_delivery_cols!(),
    " FROM webhook_deliveries ORDER BY seq DESC LIMIT $1"
);
pub const LIST_WEBHOOK_DELIVERIES_OF: &str = concat!(
    "SELECT ",
    webhook_delivery_cols!(),
    " FROM webhook_deliveries WHERE webhook = $1 ORDER BY seq DESC LIMIT $2"
);
/// Delivered rows older than $2, or not among the newest $3 delivered.
pub const PRUNE_WEBHOOK_DELIVERIES: &str = "DELETE FROM webhook_deliveries \
     WHERE webhook = $1 AND delivered_at_ms IS NOT NULL AND (delivered_at_ms < $2 OR seq <= \
     (SELECT seq FROM webhook_deliveries WHERE webhook = $1 AND delivered_at_ms IS NOT NULL \
      ORDER BY seq DESC LIMIT 1 OFFSET $3))";

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
         revert_pin, source, message, created_at_ms, updated_at_ms, plugin"
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
    ") VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14) \
     ON CONFLICT (id) DO UPDATE SET template = excluded.template, plugin = excluded.plugin, \
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
     r.created_at_ms, r.updated_at_ms, r.plugin, t.runtime_id AS target_runtime_id, \
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

// --- plugins -----------------------------------------------------------

macro_rules! plugin_cols {
    () => {
        "runtime_id, name, source, track, installed_sha, installed_at_ms, resolved_at_ms, \
         error_code, error_message"
    };
}
macro_rules! plugin_update_cols {
    () => {
        "id, runtime_id, plugin, track, from_sha, to_sha, status, created_at_ms, updated_at_ms"
    };
}
pub const UPSERT_PLUGIN: &str = concat!(
    "INSERT INTO plugins (",
    plugin_cols!(),
    ") VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9) \
     ON CONFLICT (runtime_id, name) DO UPDATE SET source = excluded.source, \
     track = excluded.track, installed_sha = excluded.installed_sha, \
     installed_at_ms = excluded.installed_at_ms, resolved_at_ms = excluded.resolved_at_ms, \
     error_code = excluded.error_code, error_message = excluded.error_message"
);
pub const DELETE_PLUGIN: &str = "DELETE FROM plugins WHERE runtime_id = $1 AND name = $2";
pub const GET_PLUGIN: &str = concat!(
    "SELECT ",
    plugin_cols!(),
    " FROM plugins WHERE runtime_id = $1 AND name = $2"
);
pub const LIST_PLUGINS: &str = concat!(
    "SELECT ",
    plugin_cols!(),
    " FROM plugins ORDER BY runtime_id, name"
);
pub const LIST_PLUGINS_OF_RUNTIME: &str = concat!(
    "SELECT ",
    plugin_cols!(),
    " FROM plugins WHERE runtime_id = $1 ORDER BY name"
);
pub const UPSERT_PLUGIN_UPDATE: &str = concat!(
    "INSERT INTO plugin_updates (",
    plugin_update_cols!(),
    ") VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9) \
     ON CONFLICT (id) DO UPDATE SET track = excluded.track, from_sha = excluded.from_sha, \
     to_sha = excluded.to_sha, status = excluded.status, updated_at_ms = excluded.updated_at_ms"
);
pub const GET_PLUGIN_UPDATE: &str = concat!(
    "SELECT ",
    plugin_update_cols!(),
    " FROM plugin_updates WHERE id = $1"
);
pub const PENDING_PLUGIN_UPDATE: &str = concat!(
    "SELECT ",
    plugin_update_cols!(),
    " FROM plugin_updates WHERE runtime_id = $1 AND plugin = $2 AND status = 'pending'"
);
/// `SELECT … FROM plugin_updates` with a condition for each filter given
/// (status, runtime id, plugin, in that order of placeholders), then the
/// limit. A condition is left out rather than written `$n IS NULL OR …`,
/// which no index can serve: the sweep asks for one plugin's updates once
/// per queued update.
pub fn list_plugin_updates(status: bool, runtime_id: bool, plugin: bool) -> String {
    let mut conditions = Vec::new();
    for (given, column) in [
        (status, "status"),
        (runtime_id, "runtime_id"),
        (plugin, "plugin"),
    ] {
        if given {
            conditions.push(format!("{column} = ${}", conditions.len() + 1));
        }
    }
    let filter = if conditions.is_empty() {
        String::new()
    } else {
        format!(" WHERE {}", conditions.join(" AND "))
    };
    format!(
        concat!(
            "SELECT ",
            plugin_update_cols!(),
            " FROM plugin_updates{} ORDER BY seq DESC LIMIT ${}"
        ),
        filter,
        conditions.len() + 1
    )
}

/// Plugins one [`mark_plugins_resolved`] statement names: two parameters
/// each, plus the time, stay under SQLite's oldest limit of 999.
pub const MARK_RESOLVED_CHUNK: usize = 400;

/// `UPDATE plugins … WHERE (runtime_id, name) IN (SELECT … FROM (VALUES
/// ($2, $3), …))` for `n` plugins; `$1` is the time. The `SELECT` makes
/// SQLite look each key up in the primary key (with a bare `VALUES` list
/// it scans the table once per statement).
pub fn mark_plugins_resolved(n: usize) -> String {
    let keys: Vec<String> = (0..n)
        .map(|i| format!("(${}, ${})", 2 * i + 2, 2 * i + 3))
        .collect();
    format!(
        "UPDATE plugins SET resolved_at_ms = $1, error_code = NULL, error_message = NULL \
         WHERE (runtime_id, name) IN (SELECT column1, column2 FROM (VALUES {}) AS k)",
        keys.join(", ")
    )
}

/// `" WHERE a AND b"` or `""`.
fn where_clause(conditions: &[String]) -> String {
    if conditions.is_empty() {
        String::new()
    } else {
        format!(" WHERE {}", conditions.join(" AND "))
    }
}

/// A page of a log table (`seq` is its order of writing, kept by an
/// update), newest first: `column = $n` for each of `filters` (in that
/// order of placeholders), then, with `before`, only rows written before
/// the row whose `id` is the next placeholder, then the limit. A condition
/// not given is left out (an index serves what remains).
fn list_log(cols: &str, table: &str, filters: &[&str], before: bool) -> String {
    let mut conditions: Vec<String> = filters
        .iter()
        .enumerate()
        .map(|(i, column)| format!("{column} = ${}", i + 1))
        .collect();
    if before {
        // An unknown id makes the subquery NULL: no row compares, the page
        // is empty.
        conditions.push(format!(
            "seq < (SELECT b.seq FROM {table} b WHERE b.id = ${})",
            conditions.len() + 1
        ));
    }
    format!(
        "SELECT {cols} FROM {table}{} ORDER BY seq DESC LIMIT ${}",
        where_clause(&conditions),
        conditions.len() + 1
    )
}

/// Operations, see [`list_log`]; filters are `runtime_id` then `kind`.
pub fn list_operations(runtime_id: bool, kind: bool, before: bool) -> String {
    let filters: Vec<&str> = [(runtime_id, "runtime_id"), (kind, "kind")]
        .into_iter()
        .filter_map(|(given, c)| given.then_some(c))
        .collect();
    list_log(operation_cols!(), "operations", &filters, before)
}

/// Health events, see [`list_log`]; filters are `runtime_id` then
/// `event_type`.
pub fn list_health_events(runtime_id: bool, event_type: bool, before: bool) -> String {
    let filters: Vec<&str> = [(runtime_id, "runtime_id"), (event_type, "event_type")]
        .into_iter()
        .filter_map(|(given, c)| given.then_some(c))
        .collect();
    list_log(health_event_cols!(), "health_events", &filters, before)
}

/// Notifications, see [`list_log`].
pub fn list_notifications(before: bool) -> String {
    list_log(notification_cols!(), "notifications", &[], before)
}

/// A keyset page of runtimes by id: `template = $n`, `status = $n`,
/// `id > $n` (the `after` id) for those given, in that order of
/// placeholders; with `stale`, only records not removed whose template's
/// pin differs from their digest; then `LIMIT $n` when `limit`.
pub fn list_runtimes_page(
    template: bool,
    status: bool,
    stale: bool,
    after: bool,
    limit: bool,
) -> String {
    let mut conditions = Vec::new();
    for (given, condition) in [
        (template, "template = "),
        (status, "status = "),
        (after, "id > "),
    ] {
        if given {
            conditions.push(format!("{condition}${}", conditions.len() + 1));
        }
    }
    if stale {
        conditions.push(
            "status <> 'removed' AND EXISTS (SELECT 1 FROM pins p \
             WHERE p.template = runtimes.template \
             AND (runtimes.image_digest IS NULL OR runtimes.image_digest <> p.digest))"
                .to_string(),
        );
    }
    let placeholders = [template, status, after].iter().filter(|g| **g).count();
    let limit = if limit {
        format!(" LIMIT ${}", placeholders + 1)
    } else {
        String::new()
    };
    format!(
        concat!("SELECT ", runtime_cols!(), " FROM runtimes{} ORDER BY id{}"),
        where_clause(&conditions),
        limit
    )
}

// --- the change log -----------------------------------------------------------

pub const INSERT_CHANGE: &str =
    "INSERT INTO changes (at_ms, kind, key, runtime_id) VALUES ($1, $2, $3, $4)";
pub const LIST_CHANGES_AFTER: &str = "SELECT seq, at_ms, kind, key, runtime_id FROM changes \
     WHERE seq > $1 ORDER BY seq LIMIT $2";
pub const CHANGE_BOUNDS: &str = "SELECT MIN(seq) AS lo, MAX(seq) AS hi FROM changes";
pub const PRUNE_CHANGES: &str = "DELETE FROM changes WHERE seq < $1";
