//! `berth runtime …`: start, list, show, stop, restart and remove runtimes.

use std::collections::BTreeMap;

use berth_core::status::RuntimeStatus;
use clap::builder::PossibleValuesParser;
use reqwest::StatusCode;

use crate::http::dto::{
    HealthEventList, OperationList, RuntimeList, RuntimeView, StartRuntimeRequest,
};

use super::client::CliError;
use super::format::{format_ms, or_dash, short_digest, short_image_ref, Fields, Table};
use super::sse::ChangeData;
use super::{note, parse_env, parse_path_segment, show, Ctx, Output, Spinner};

#[derive(Debug, clap::Subcommand)]
pub enum RuntimeCommand {
    /// Start a runtime from a template (creating it if needed)
    Start {
        /// Runtime id
        #[arg(value_parser = parse_path_segment)]
        id: String,
        /// Template to start it from
        #[arg(long)]
        template: String,
        /// Environment variable for this runtime (repeatable)
        #[arg(long = "env", value_name = "KEY=VALUE", value_parser = parse_env)]
        env: Vec<(String, String)>,
    },
    /// List runtimes
    #[command(visible_alias = "list")]
    Ls {
        /// Only runtimes of this template
        #[arg(long)]
        template: Option<String>,
        /// Only runtimes in this status
        #[arg(long, value_parser = PossibleValuesParser::new(RuntimeStatus::ALL.map(RuntimeStatus::as_str)))]
        status: Option<String>,
        /// Only runtimes whose running digest differs from their template's pin
        #[arg(long)]
        stale: bool,
    },
    /// Show one runtime
    Show {
        /// Runtime id
        #[arg(value_parser = parse_path_segment)]
        id: String,
    },
    /// Stop a runtime's container (the runtime can be started again)
    Stop {
        /// Runtime id
        #[arg(value_parser = parse_path_segment)]
        id: String,
    },
    /// Recreate a runtime's container from its template's current image
    Restart {
        /// Runtime id
        #[arg(value_parser = parse_path_segment)]
        id: String,
    },
    /// Remove a runtime's container; the record stays as `removed`
    #[command(visible_alias = "remove")]
    Rm {
        /// Runtime id
        #[arg(value_parser = parse_path_segment)]
        id: String,
    },
}

pub(super) async fn runtime(ctx: &Ctx, command: RuntimeCommand) -> Result<(), CliError> {
    match command {
        RuntimeCommand::Start { id, template, env } => {
            let body = StartRuntimeRequest {
                id: id.clone(),
                template,
                env: env.into_iter().collect::<BTreeMap<_, _>>(),
            };
            let answer = {
                let spinner =
                    Spinner::show(ctx, format!("starting {id} (pulling the image if needed)…"));
                with_progress(
                    ctx,
                    &id,
                    &spinner,
                    ctx.client.post(&["v1", "runtimes"], Some(&body)),
                )
                .await?
            };
            if answer.status == StatusCode::OK && ctx.output == Output::Table {
                note(&format!("{id} was already running"));
            }
            show(ctx, &answer, |r: RuntimeView| runtime_fields(&r))
        }
        RuntimeCommand::Ls {
            template,
            status,
            stale,
        } => {
            let mut query = Vec::new();
            if let Some(t) = template {
                query.push(("template", t));
            }
            if let Some(s) = status {
                query.push(("status", s));
            }
            if stale {
                query.push(("stale", "true".to_string()));
            }
            let list = list_all(ctx, query).await?;
            let answer = super::client::Answer {
                status: StatusCode::OK,
                body: serde_json::to_string(&list)
                    .map_err(|e| CliError::Other(format!("cannot encode the list: {e}")))?,
            };
            show(ctx, &answer, |list: RuntimeList| runtime_table(&list))
        }
        RuntimeCommand::Show { id } => {
            let answer = ctx.client.get(&["v1", "runtimes", &id], &[]).await?;
            show(ctx, &answer, |r: RuntimeView| runtime_fields(&r))
        }
        RuntimeCommand::Stop { id } => {
            let answer = ctx
                .client
                .post(&["v1", "runtimes", &id, "stop"], None::<&()>)
                .await?;
            show(ctx, &answer, |r: RuntimeView| runtime_fields(&r))
        }
        RuntimeCommand::Restart { id } => {
            let answer = {
                let spinner = Spinner::show(
                    ctx,
                    format!("restarting {id} (pulling the image if needed)…"),
                );
                with_progress(
                    ctx,
                    &id,
                    &spinner,
                    ctx.client
                        .post(&["v1", "runtimes", &id, "restart"], None::<&()>),
                )
                .await?
            };
            show(ctx, &answer, |r: RuntimeView| runtime_fields(&r))
        }
        RuntimeCommand::Rm { id } => {
            let answer = ctx.client.delete(&["v1", "runtimes", &id], &[]).await?;
            show(ctx, &answer, |r: RuntimeView| runtime_fields(&r))
        }
    }
}

/// Runs `request` (a start or restart of runtime `id`) and, while it is in
/// flight, shows the runtime's operations and health events as they
/// commit and its image pull layer by layer, from the change stream, on
/// stderr (tables only). Without a
/// change stream (an older server) only the spinner shows.
async fn with_progress<F>(
    ctx: &Ctx,
    id: &str,
    spinner: &Spinner,
    request: F,
) -> Result<super::client::Answer, CliError>
where
    F: std::future::Future<Output = Result<super::client::Answer, CliError>>,
{
    let query = [
        ("runtime", id.to_string()),
        ("kinds", "operation,event".to_string()),
    ];
    let stream = match ctx.output {
        Output::Table => ctx.client.stream(&query, None).await.ok(),
        Output::Json => None,
    };
    let Some(mut stream) = stream else {
        return request.await;
    };
    let mut request = std::pin::pin!(request);
    let mut shown = std::collections::BTreeSet::new();
    let mut pulls = super::pull::PullBars::new(spinner);
    loop {
        tokio::select! {
            answer = &mut request => return answer,
            event = stream.next() => match event {
                Ok(Some(event)) => {
                    if event.event == "progress" {
                        pulls.show(spinner, &event.data);
                    } else if let Some(change) = event.change() {
                        if let Some(line) = progress_line(ctx, id, &change).await {
                            if shown.insert(line.clone()) {
                                spinner.println(&line);
                            }
                        }
                    }
                }
                // The stream ended: the spinner alone from here.
                Ok(None) | Err(_) => return request.await,
            },
        }
    }
}

/// One line for a change of the runtime: its operation's kind and outcome,
/// or its health event's type.
async fn progress_line(ctx: &Ctx, id: &str, change: &ChangeData) -> Option<String> {
    let query = [("runtime", id.to_string()), ("limit", "20".to_string())];
    match change.kind.as_str() {
        "operation" => {
            let list: OperationList = ctx
                .client
                .get(&["v1", "operations"], &query)
                .await
                .ok()?
                .decode()
                .ok()?;
            let op = list.operations.into_iter().find(|o| o.id == change.key)?;
            let mut line = format!("  {} {}", op.kind, op.outcome);
            if let Some(code) = &op.error_code {
                line.push_str(&format!(" ({code})"));
            }
            Some(line)
        }
        "event" => {
            let list: HealthEventList = ctx
                .client
                .get(&["v1", "events"], &query)
                .await
                .ok()?
                .decode()
                .ok()?;
            let e = list.events.into_iter().find(|e| e.id == change.key)?;
            Some(format!("  {}", e.event_type))
        }
        _ => None,
    }
}

/// Runtimes asked for a page at a time.
const LIST_PAGE: u32 = 1_000;

/// Every runtime of `query`, following the API's `next` page by page, so
/// that no single answer has to hold a large fleet.
async fn list_all(ctx: &Ctx, query: Vec<(&str, String)>) -> Result<RuntimeList, CliError> {
    let mut all = RuntimeList {
        runtimes: Vec::new(),
        next: None,
    };
    let mut after: Option<String> = None;
    loop {
        let mut page_query = query.clone();
        page_query.push(("limit", LIST_PAGE.to_string()));
        if let Some(a) = &after {
            page_query.push(("after", a.clone()));
        }
        let page: RuntimeList = ctx
            .client
            .get(&["v1", "runtimes"], &page_query)
            .await?
            .decode()?;
        all.runtimes.extend(page.runtimes);
        match page.next {
            // A cursor that does not move would loop for ever.
            Some(next) if after.as_deref() != Some(next.as_str()) => after = Some(next),
            _ => return Ok(all),
        }
    }
}

fn runtime_table(list: &RuntimeList) -> String {
    let mut t = Table::new(&[
        "ID", "TEMPLATE", "STATUS", "IMAGE", "DIGEST", "ENDPOINT", "UPDATED",
    ]);
    for r in &list.runtimes {
        t.row([
            r.id.clone(),
            r.template.clone(),
            r.status.clone(),
            r.image_ref
                .as_deref()
                .map_or_else(|| "-".to_string(), short_image_ref),
            r.image_digest
                .as_deref()
                .map_or_else(|| "-".to_string(), short_digest),
            or_dash(r.engine_endpoint.as_deref()),
            format_ms(r.updated_at),
        ]);
    }
    t.render()
}

fn runtime_fields(r: &RuntimeView) -> String {
    Fields::new()
        .add("id", &r.id)
        .add("template", &r.template)
        .add("status", &r.status)
        .add("container_id", or_dash(r.container_id.as_deref()))
        .add("image_ref", or_dash(r.image_ref.as_deref()))
        .add("image_digest", or_dash(r.image_digest.as_deref()))
        .add("engine_endpoint", or_dash(r.engine_endpoint.as_deref()))
        .add("generation", r.generation.to_string())
        .add("run_id", or_dash(r.run_id.as_deref()))
        .add(
            "readiness",
            r.readiness.as_ref().map_or_else(
                || "-".to_string(),
                |v| format!("{} ({})", v.impact, v.reason),
            ),
        )
        .add("created_at", format_ms(r.created_at))
        .add("updated_at", format_ms(r.updated_at))
        .add(
            "last_error",
            r.last_error.as_ref().map_or_else(
                || "-".to_string(),
                |e| format!("{} ({})", e.message, e.code),
            ),
        )
        .render()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::http::dto::ErrorDetail;

    fn runtime_view() -> RuntimeView {
        RuntimeView {
            id: "ws-1".into(),
            template: "engine".into(),
            status: "running".into(),
            container_id: Some("c0ffee".into()),
            image_ref: Some(format!(
                "reg.example/acme/engine@sha256:{}",
                "ab".repeat(32)
            )),
            image_digest: Some(format!("sha256:{}", "ab".repeat(32))),
            engine_endpoint: Some("172.18.0.2:8080".into()),
            generation: 2,
            run_id: None,
            created_at: 0,
            updated_at: 1_700_000_000_000,
            last_error: None,
            readiness: None,
        }
    }

    #[test]
    fn renders_runtimes_as_a_table() {
        let mut stopped = runtime_view();
        stopped.id = "ws-2".into();
        stopped.status = "stopped".into();
        stopped.image_ref = None;
        stopped.image_digest = None;
        stopped.engine_endpoint = None;
        let text = runtime_table(&RuntimeList {
            runtimes: vec![runtime_view(), stopped],
            next: None,
        });
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(
            lines[0],
            "ID     TEMPLATE   STATUS    IMAGE                                         DIGEST         ENDPOINT          UPDATED"
        );
        assert_eq!(
            lines[1],
            "ws-1   engine     running   reg.example/acme/engine@sha256:abababababab   abababababab   172.18.0.2:8080   2023-11-14 22:13:20"
        );
        assert_eq!(
            lines[2],
            "ws-2   engine     stopped   -                                             -              -                 2023-11-14 22:13:20"
        );
    }

    #[test]
    fn renders_a_runtime_as_fields() {
        let mut r = runtime_view();
        r.last_error = Some(ErrorDetail {
            code: "start_failed".into(),
            message: "the container exited".into(),
        });
        let text = runtime_fields(&r);
        assert!(
            text.starts_with("id: ws-1\ntemplate: engine\nstatus: running\n"),
            "{text}"
        );
        assert!(
            text.contains("\nupdated_at: 2023-11-14 22:13:20\n"),
            "{text}"
        );
        assert!(
            text.ends_with("\nlast_error: the container exited (start_failed)\n"),
            "{text}"
        );
    }
}
