//! `berth store show|write` and `berth readiness`: a runtime's state stores
//! and whether it is ready.

use std::path::PathBuf;

use crate::http::dto::{
    CommittedBatchView, EnvelopeView, ManifestView, ReadinessView, StoreBatchRequest,
    StoreWriteRequest,
};

use super::client::CliError;
use super::format::{format_ms, or_dash, Fields, Table};
use super::{parse_path_segment, show, Ctx};

#[derive(Debug, clap::Subcommand)]
pub enum StoreCommand {
    /// Show a runtime's manifest, or one store's committed data
    Show {
        /// Runtime id
        #[arg(value_parser = parse_path_segment)]
        runtime: String,
        /// A store name: show its committed envelope instead of the manifest
        #[arg(value_parser = parse_path_segment)]
        store: Option<String>,
    },
    /// Commit one batch: every store given is written, or none is
    Write {
        /// Runtime id
        #[arg(value_parser = parse_path_segment)]
        runtime: String,
        /// The runtime's current run id (see `berth runtime show`)
        #[arg(long)]
        run_id: String,
        /// STORE=JSON, or STORE=@FILE to read the JSON from a file (repeatable)
        #[arg(long = "set", value_name = "STORE=JSON|@FILE", required = true, value_parser = parse_store_value)]
        set: Vec<(String, StoreValue)>,
        /// Why, kept in the receipt log and the operation log
        #[arg(long)]
        reason: Option<String>,
    },
}

#[derive(Debug, Clone)]
pub enum StoreValue {
    Inline(String),
    File(PathBuf),
}

fn parse_store_value(text: &str) -> Result<(String, StoreValue), String> {
    let (store, value) = text
        .split_once('=')
        .ok_or_else(|| format!("{text:?} is not STORE=JSON or STORE=@FILE"))?;
    if store.is_empty() {
        return Err(format!("{text:?} has no store name before '='"));
    }
    let value = match value.strip_prefix('@') {
        Some(path) if !path.is_empty() => StoreValue::File(PathBuf::from(path)),
        Some(_) => return Err(format!("{text:?}: '@' must be followed by a file name")),
        None => StoreValue::Inline(value.to_string()),
    };
    Ok((store.to_string(), value))
}

fn decode_value(store: &str, value: &StoreValue) -> Result<serde_json::Value, CliError> {
    let (label, text) = match value {
        StoreValue::Inline(t) => (format!("the value of {store}"), t.clone()),
        StoreValue::File(p) => (
            p.display().to_string(),
            std::fs::read_to_string(p)
                .map_err(|e| CliError::Other(format!("cannot read {}: {e}", p.display())))?,
        ),
    };
    serde_json::from_str(&text).map_err(|e| CliError::Other(format!("{label} is not JSON: {e}")))
}

pub(super) async fn store(ctx: &Ctx, command: StoreCommand) -> Result<(), CliError> {
    match command {
        StoreCommand::Show {
            runtime,
            store: None,
        } => {
            let answer = ctx
                .client
                .get(&["v1", "runtimes", &runtime, "store"], &[])
                .await?;
            show(ctx, &answer, |m: ManifestView| manifest_text(&m))
        }
        StoreCommand::Show {
            runtime,
            store: Some(store),
        } => {
            let answer = ctx
                .client
                .get(&["v1", "runtimes", &runtime, "store", &store], &[])
                .await?;
            show(ctx, &answer, |e: EnvelopeView| {
                let data = serde_json::to_string_pretty(&e.data).unwrap_or_default();
                format!(
                    "{}{data}\n",
                    Fields::new()
                        .add("store", &store)
                        .add("schema version", e.schema_version.to_string())
                        .add("run id", &e.run_id)
                        .add("updated at", format_ms(e.updated_at))
                        .render()
                )
            })
        }
        StoreCommand::Write {
            runtime,
            run_id,
            set,
            reason,
        } => {
            let writes = set
                .iter()
                .map(|(store, value)| {
                    Ok(StoreWriteRequest {
                        store: store.clone(),
                        data: decode_value(store, value)?,
                        schema_version: None,
                    })
                })
                .collect::<Result<Vec<_>, CliError>>()?;
            let body = StoreBatchRequest {
                run_id,
                reason,
                writes,
            };
            let answer = ctx
                .client
                .post(
                    &["v1", "runtimes", &runtime, "store", "batches"],
                    Some(&body),
                )
                .await?;
            show(ctx, &answer, |b: CommittedBatchView| {
                let mut t = Table::new(&["STORE", "SCHEMA", "SIZE", "SHA256"]);
                for r in &b.receipts {
                    t.row([
                        r.store.clone(),
                        r.schema_version.to_string(),
                        r.size.to_string(),
                        r.sha256.chars().take(16).collect(),
                    ]);
                }
                format!(
                    "batch {} committed (seq {}, run {})\n{}",
                    b.batch_id,
                    b.seq,
                    b.run_id,
                    t.render()
                )
            })
        }
    }
}

fn manifest_text(m: &ManifestView) -> String {
    let mut out = Fields::new()
        .add("runtime", &m.runtime_id)
        .add("active run", or_dash(m.active_run_id.as_deref()))
        .add("high watermark", m.high_watermark.to_string())
        .add("last batch", or_dash(m.last_committed_batch_id.as_deref()))
        .render();
    let mut t = Table::new(&["STORE", "SCHEMA", "STATE", "SHA256"]);
    for e in &m.entries {
        t.row([
            e.store.clone(),
            e.schema_version.to_string(),
            e.state.clone(),
            e.sha256.chars().take(16).collect(),
        ]);
    }
    out.push_str(&t.render());
    out
}

/// `berth readiness ID`: exits 0 when ready (or degraded), 1 when blocked.
pub(super) async fn readiness(ctx: &Ctx, runtime: String) -> Result<i32, CliError> {
    let answer = ctx
        .client
        .get(&["v1", "runtimes", &runtime, "readiness"], &[])
        .await?;
    let verdict: ReadinessView = answer.decode()?;
    show(ctx, &answer, |r: ReadinessView| {
        readiness_text(&runtime, &r)
    })?;
    Ok(if verdict.ok { 0 } else { 1 })
}

pub(super) fn readiness_text(runtime: &str, r: &ReadinessView) -> String {
    let mut out = Fields::new()
        .add("runtime", runtime)
        .add("ready", if r.ok { "yes" } else { "no" })
        .add("impact", &r.impact)
        .add("reason", &r.reason)
        .render();
    if !r.actions.is_empty() {
        let mut t = Table::new(&["STORE", "ACTION", "REASON"]);
        for a in &r.actions {
            t.row([
                a.store.clone(),
                a.kind.clone(),
                or_dash(a.reason.as_deref()),
            ]);
        }
        out.push_str(&t.render());
    }
    for d in &r.diagnostics {
        out.push_str(&format!("  {d}\n"));
    }
    out
}
