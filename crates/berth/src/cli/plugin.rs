//! `berth plugin …`, `berth plugin-update …` and `berth sweep`: plugins
//! installed into runtimes from git, and the queue of their updates.

use crate::http::dto::{
    BulkApplyRequest, InstallPluginRequest, PluginList, PluginUpdateList, PluginUpdateView,
    PluginView, RolloutView, SweepReportView,
};

use super::client::CliError;
use super::format::{format_ms, or_dash, Fields, Table};
use super::{emit, emit_json, parse_path_segment, show, Ctx, Output, Spinner};

#[derive(Debug, clap::Subcommand)]
pub enum PluginCommand {
    /// Install a git source into a runtime at a tracked ref; it appears
    /// read-only at /plugins/<name> in the runtime's containers
    Add {
        /// Runtime id
        #[arg(value_parser = parse_path_segment)]
        runtime: String,
        /// Plugin name (its directory under /plugins)
        name: String,
        /// git+https://host/path, git+ssh://[user@]host/path or git+file:///path
        #[arg(long)]
        source: String,
        /// none, tag:<name>, tag:latest, branch:<name>, sha:<40 hex> or a branch name
        #[arg(long, default_value = "tag:latest")]
        track: String,
        /// Do not restart a running runtime afterwards
        #[arg(long)]
        no_restart: bool,
    },
    /// List a runtime's plugins
    #[command(visible_alias = "list")]
    Ls {
        /// Runtime id
        #[arg(value_parser = parse_path_segment)]
        runtime: String,
    },
    /// Uninstall a plugin: its record, its directory and what the
    /// containers see
    #[command(visible_alias = "remove")]
    Rm {
        #[arg(value_parser = parse_path_segment)]
        runtime: String,
        #[arg(value_parser = parse_path_segment)]
        name: String,
    },
}

#[derive(Debug, clap::Subcommand)]
pub enum PluginUpdateCommand {
    /// Queued plugin updates, newest first
    #[command(visible_alias = "list")]
    Ls {
        /// pending, applied or dismissed
        #[arg(long)]
        status: Option<String>,
        #[arg(long)]
        runtime: Option<String>,
        #[arg(long)]
        plugin: Option<String>,
        /// At most this many (1 to 1000)
        #[arg(long, value_parser = clap::value_parser!(u32).range(1..=1000))]
        limit: Option<u32>,
    },
    /// Install an update (re-resolving its track) and restart the runtime
    Apply {
        #[arg(value_parser = parse_path_segment)]
        id: String,
    },
    /// Apply one plugin's newest commit across a template's running
    /// runtimes as a health-gated rollout (follow it with `berth rollout watch`)
    ApplyAll {
        /// Template whose runtimes to update
        #[arg(long)]
        template: String,
        /// Plugin name
        #[arg(long)]
        plugin: String,
    },
    /// Dismiss an update: it is not offered again for the same move
    Dismiss {
        #[arg(value_parser = parse_path_segment)]
        id: String,
    },
}

fn short_sha(sha: Option<&str>) -> String {
    sha.map_or_else(|| "-".to_string(), |s| s.chars().take(12).collect())
}

fn plugin_fields(p: &PluginView) -> String {
    Fields::new()
        .add("runtime", &p.runtime_id)
        .add("name", &p.name)
        .add("source", &p.source)
        .add("track", &p.track)
        .add("installed", or_dash(p.installed_sha.as_deref()))
        .add("installed at", p.installed_at.map_or("-".into(), format_ms))
        .add("resolved at", p.resolved_at.map_or("-".into(), format_ms))
        .add(
            "last error",
            p.last_error
                .as_ref()
                .map_or("-".into(), |e| format!("{} ({})", e.message, e.code)),
        )
        .render()
}

fn update_fields(u: &PluginUpdateView) -> String {
    Fields::new()
        .add("id", &u.id)
        .add("runtime", &u.runtime_id)
        .add("plugin", &u.plugin)
        .add("track", &u.track)
        .add("from", or_dash(u.from_sha.as_deref()))
        .add("to", &u.to_sha)
        .add("status", &u.status)
        .add("updated at", format_ms(u.updated_at))
        .render()
}

pub(super) async fn plugin(ctx: &Ctx, command: PluginCommand) -> Result<(), CliError> {
    match command {
        PluginCommand::Add {
            runtime,
            name,
            source,
            track,
            no_restart,
        } => {
            let body = InstallPluginRequest {
                name: name.clone(),
                source,
                track,
                restart: !no_restart,
            };
            let _spinner = Spinner::show(ctx, format!("installing {name} into {runtime}"));
            let answer = ctx
                .client
                .post(&["v1", "runtimes", &runtime, "plugins"], Some(&body))
                .await?;
            show(ctx, &answer, |p: PluginView| plugin_fields(&p))
        }
        PluginCommand::Ls { runtime } => {
            let answer = ctx
                .client
                .get(&["v1", "runtimes", &runtime, "plugins"], &[])
                .await?;
            show(ctx, &answer, |list: PluginList| {
                let mut t = Table::new(&["NAME", "SOURCE", "TRACK", "INSTALLED", "LAST ERROR"]);
                for p in &list.plugins {
                    t.row([
                        p.name.clone(),
                        p.source.clone(),
                        p.track.clone(),
                        short_sha(p.installed_sha.as_deref()),
                        p.last_error.as_ref().map_or("-".into(), |e| e.code.clone()),
                    ]);
                }
                t.render()
            })
        }
        PluginCommand::Rm { runtime, name } => {
            let answer = ctx
                .client
                .delete(&["v1", "runtimes", &runtime, "plugins", &name], &[])
                .await?;
            match ctx.output {
                Output::Json => emit_json(&answer),
                Output::Table => emit(&format!("uninstalled plugin {name} from {runtime}\n")),
            }
            Ok(())
        }
    }
}

pub(super) async fn plugin_update(ctx: &Ctx, command: PluginUpdateCommand) -> Result<(), CliError> {
    match command {
        PluginUpdateCommand::Ls {
            status,
            runtime,
            plugin,
            limit,
        } => {
            let mut query: Vec<(&str, String)> = Vec::new();
            if let Some(s) = status {
                query.push(("status", s));
            }
            if let Some(r) = runtime {
                query.push(("runtime", r));
            }
            if let Some(p) = plugin {
                query.push(("plugin", p));
            }
            if let Some(l) = limit {
                query.push(("limit", l.to_string()));
            }
            let answer = ctx.client.get(&["v1", "plugin-updates"], &query).await?;
            show(ctx, &answer, |list: PluginUpdateList| {
                let mut t = Table::new(&[
                    "ID", "RUNTIME", "PLUGIN", "TRACK", "FROM", "TO", "STATUS", "UPDATED",
                ]);
                for u in &list.plugin_updates {
                    t.row([
                        u.id.clone(),
                        u.runtime_id.clone(),
                        u.plugin.clone(),
                        u.track.clone(),
                        short_sha(u.from_sha.as_deref()),
                        short_sha(Some(&u.to_sha)),
                        u.status.clone(),
                        format_ms(u.updated_at),
                    ]);
                }
                t.render()
            })
        }
        PluginUpdateCommand::Apply { id } => {
            let _spinner = Spinner::show(ctx, format!("applying {id}"));
            let answer = ctx
                .client
                .post::<serde_json::Value>(&["v1", "plugin-updates", &id, "apply"], None)
                .await?;
            show(ctx, &answer, |u: PluginUpdateView| update_fields(&u))
        }
        PluginUpdateCommand::ApplyAll { template, plugin } => {
            let body = BulkApplyRequest { template, plugin };
            let answer = ctx
                .client
                .post(&["v1", "plugin-updates", "apply"], Some(&body))
                .await?;
            show(ctx, &answer, |r: RolloutView| {
                format!(
                    "rollout {} of plugin {} to {} started ({} runtime(s) per batch); follow it with: berth rollout watch {}\n",
                    r.id,
                    r.plugin.as_deref().unwrap_or("-"),
                    r.to_digest,
                    r.batch_size,
                    r.id
                )
            })
        }
        PluginUpdateCommand::Dismiss { id } => {
            let answer = ctx
                .client
                .post::<serde_json::Value>(&["v1", "plugin-updates", &id, "dismiss"], None)
                .await?;
            show(ctx, &answer, |u: PluginUpdateView| update_fields(&u))
        }
    }
}

/// One drift sweep now; exits 1 when a source could not be resolved.
pub(super) async fn sweep(ctx: &Ctx) -> Result<i32, CliError> {
    let _spinner = Spinner::show(ctx, "sweeping plugin sources".to_string());
    let answer = ctx
        .client
        .post::<serde_json::Value>(&["v1", "admin", "plugins", "sweep"], None)
        .await?;
    let report: SweepReportView = answer.decode()?;
    show(ctx, &answer, |r: SweepReportView| {
        let mut out = format!(
            "resolved {} source(s) and track(s); queued {} update(s)\n",
            r.resolved, r.queued
        );
        for f in &r.failed {
            out.push_str(&format!(
                "failed: {} at {}: {} ({})\n",
                f.source, f.track, f.error.message, f.error.code
            ));
        }
        out
    })?;
    Ok(if report.failed.is_empty() { 0 } else { 1 })
}
