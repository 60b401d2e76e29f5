//! `berth pin …`: show, promote, list the history of and remove a
//! template's pinned image digest.

use crate::http::dto::{PinHistoryList, PinView, PromoteRequest};

use super::client::CliError;
use super::format::{format_ms, or_dash, short_digest, Fields, Table};
use super::{emit, emit_json, parse_path_segment, show, Ctx, Output};

#[derive(Debug, clap::Subcommand)]
pub enum PinCommand {
    /// Show the pinned digest of a template
    Show {
        /// Template name
        #[arg(value_parser = parse_path_segment)]
        template: String,
    },
    /// Pin a template to an image digest (sha256:…)
    Promote {
        /// Template name
        #[arg(value_parser = parse_path_segment)]
        template: String,
        /// Image digest, sha256: and 64 hex digits
        digest: String,
        /// Why, kept in the pin history
        #[arg(long)]
        reason: Option<String>,
    },
    /// Promotions and unpins of a template, newest first
    History {
        /// Template name
        #[arg(value_parser = parse_path_segment)]
        template: String,
        /// At most this many entries (1 to 1000)
        #[arg(long, value_parser = clap::value_parser!(u32).range(1..=1000))]
        limit: Option<u32>,
    },
    /// Unpin a template: runtimes then use its tag again
    #[command(visible_alias = "remove")]
    Rm {
        /// Template name
        #[arg(value_parser = parse_path_segment)]
        template: String,
        /// Why, kept in the pin history
        #[arg(long)]
        reason: Option<String>,
    },
}

pub(super) async fn pin(ctx: &Ctx, command: PinCommand) -> Result<(), CliError> {
    match command {
        PinCommand::Show { template } => {
            let answer = ctx
                .client
                .get(&["v1", "templates", &template, "pin"], &[])
                .await?;
            show(ctx, &answer, |p: PinView| pin_fields(&p))
        }
        PinCommand::Promote {
            template,
            digest,
            reason,
        } => {
            let body = PromoteRequest {
                digest,
                reason,
                verify: false,
            };
            let answer = ctx
                .client
                .post(&["v1", "templates", &template, "pin"], Some(&body))
                .await?;
            show(ctx, &answer, |p: PinView| pin_fields(&p))
        }
        PinCommand::History { template, limit } => {
            let query: Vec<(&str, String)> = limit
                .map(|l| ("limit", l.to_string()))
                .into_iter()
                .collect();
            let answer = ctx
                .client
                .get(&["v1", "templates", &template, "pin", "history"], &query)
                .await?;
            show(ctx, &answer, |list: PinHistoryList| {
                let mut t = Table::new(&["TIME", "ACTION", "DIGEST", "PREVIOUS", "BY", "REASON"]);
                for p in &list.pins {
                    t.row([
                        format_ms(p.at),
                        p.action.clone(),
                        p.digest
                            .as_deref()
                            .map_or_else(|| "-".to_string(), short_digest),
                        p.previous_digest
                            .as_deref()
                            .map_or_else(|| "-".to_string(), short_digest),
                        p.by.clone(),
                        or_dash(p.reason.as_deref()),
                    ]);
                }
                t.render()
            })
        }
        PinCommand::Rm { template, reason } => {
            let query: Vec<(&str, String)> = reason.map(|r| ("reason", r)).into_iter().collect();
            let answer = ctx
                .client
                .delete(&["v1", "templates", &template, "pin"], &query)
                .await?;
            match ctx.output {
                Output::Json => emit_json(&answer),
                Output::Table => emit(&format!("unpinned template {template}\n")),
            }
            Ok(())
        }
    }
}

fn pin_fields(p: &PinView) -> String {
    Fields::new()
        .add("template", &p.template)
        .add("digest", &p.digest)
        .add("promoted_at", format_ms(p.promoted_at))
        .add("promoted_by", &p.promoted_by)
        .add("reason", or_dash(p.reason.as_deref()))
        .render()
}
