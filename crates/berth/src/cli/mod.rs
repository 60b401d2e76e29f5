//! The `berth` command line: `serve` (handled by main) and the client
//! commands, which speak the HTTP API like any other client.

mod client;
mod format;
mod images;
mod rollout;

use std::collections::BTreeMap;
use std::io::{IsTerminal, Read, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

use berth_core::operation::OperationKind;
use berth_core::status::RuntimeStatus;
use clap::builder::PossibleValuesParser;
use indicatif::{ProgressBar, ProgressStyle};
use reqwest::StatusCode;

use crate::http::dto::{
    OperationList, PinHistoryList, PinView, PromoteRequest, RuntimeList, RuntimeView,
    StartRuntimeRequest, TemplateList,
};
use crate::template_doc::TemplateDoc;
use client::{Answer, CliError, Client};
use format::{format_ms, or_dash, short_digest, short_image_ref, Fields, Table};

pub const DEFAULT_API_URL: &str = "http://127.0.0.1:7878";

#[derive(Debug, clap::Parser)]
#[command(
    name = "berth",
    version,
    about = "Runtime manager for long-lived, stateful containers on Docker"
)]
pub struct Cli {
    /// URL of the berth HTTP API
    #[arg(long, global = true, env = "BERTH_API_URL", default_value = DEFAULT_API_URL, value_parser = parse_api_url)]
    pub api_url: String,
    /// Bearer token for the API
    #[arg(long, global = true, env = "BERTH_API_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// Output format: human tables, or the API's JSON for scripts
    #[arg(long, global = true, value_enum, default_value_t = Output::Table)]
    pub output: Output,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Output {
    Table,
    Json,
}

#[derive(Debug, clap::Subcommand)]
pub enum Command {
    /// Run the berth server
    Serve(crate::config::ServeArgs),
    /// Create, list, show and remove templates
    #[command(subcommand)]
    Template(TemplateCommand),
    /// Show, promote and remove a template's pinned image digest
    #[command(subcommand)]
    Pin(PinCommand),
    /// Start, list, show, stop, restart and remove runtimes
    #[command(subcommand)]
    Runtime(RuntimeCommand),
    /// List recorded operations, newest first
    Ops(OpsArgs),
    /// List health events observed on the host, newest first
    Events(EventsArgs),
    /// List notification intents for admins, newest first
    Notifications(NotificationsArgs),
    /// Run one reconcile pass now and show what it did
    Reconcile,
    /// Show this berth instance, its background loops and its fleet
    Status,
    /// Pull the tracked tags of templates now (and optionally recreate
    /// runtimes whose image changed); exits 1 if any template failed
    Refresh(RefreshArgs),
    /// Run one image-watch pass now: look up tracked tags in registries
    Watch,
    /// List, show, pause, resume, abort and watch rollouts of new digests
    #[command(subcommand)]
    Rollout(RolloutCommand),
}

#[derive(Debug, clap::Args)]
pub struct RefreshArgs {
    /// Only this template (repeatable) [default: every template]
    #[arg(long = "template", value_name = "NAME", value_parser = parse_path_segment)]
    pub templates: Vec<String>,
    /// Also recreate running runtimes whose image digest changed
    #[arg(long)]
    pub recreate: bool,
}

#[derive(Debug, clap::Subcommand)]
pub enum RolloutCommand {
    /// List rollouts, newest first
    #[command(visible_alias = "list")]
    Ls {
        /// Only rollouts of this template
        #[arg(long)]
        template: Option<String>,
        /// At most this many rollouts (1 to 1000)
        #[arg(long, value_parser = clap::value_parser!(u32).range(1..=1000))]
        limit: Option<u32>,
    },
    /// Show one rollout and its targets
    Show {
        /// Rollout id
        #[arg(value_parser = parse_path_segment)]
        id: String,
    },
    /// Pause a running rollout
    Pause {
        /// Rollout id
        #[arg(value_parser = parse_path_segment)]
        id: String,
    },
    /// Resume a paused or halted rollout (a halted one retries its failed runtimes)
    Resume {
        /// Rollout id
        #[arg(value_parser = parse_path_segment)]
        id: String,
    },
    /// Abort a running or paused rollout; runtimes not yet updated stay as they are
    Abort {
        /// Rollout id
        #[arg(value_parser = parse_path_segment)]
        id: String,
    },
    /// Follow a rollout until it completes, halts or is aborted; exits 0
    /// when it completed, 1 otherwise
    Watch {
        /// Rollout id
        #[arg(value_parser = parse_path_segment)]
        id: String,
        /// How often to ask, e.g. 500ms or 2s (100ms to 1m)
        #[arg(long, default_value = "1s", value_parser = parse_interval)]
        interval: Duration,
    },
}

#[derive(Debug, clap::Subcommand)]
pub enum TemplateCommand {
    /// Create or replace a template
    Put(TemplatePutArgs),
    /// List templates
    #[command(visible_alias = "list")]
    Ls,
    /// Show one template
    Show {
        /// Template name
        #[arg(value_parser = parse_path_segment)]
        name: String,
    },
    /// Remove a template (refused while runtimes use it)
    #[command(visible_alias = "remove")]
    Rm {
        /// Template name
        #[arg(value_parser = parse_path_segment)]
        name: String,
    },
}

#[derive(Debug, clap::Args)]
#[command(group(clap::ArgGroup::new("source").required(true).args(["file", "image"])))]
pub struct TemplatePutArgs {
    /// Template name
    #[arg(value_parser = parse_path_segment)]
    pub name: String,
    /// The whole template as JSON, as the API takes it; `-` reads standard input
    #[arg(long, short = 'f', value_name = "FILE.json|-")]
    pub file: Option<PathBuf>,
    /// Image repository without tag, e.g. registry.example/acme/engine
    #[arg(long)]
    pub image: Option<String>,
    /// Tracked tag [server default: latest]
    #[arg(long, conflicts_with = "file")]
    pub tag: Option<String>,
    /// Port the runtime serves on inside the container
    #[arg(long, conflicts_with = "file")]
    pub port: Option<u16>,
    /// Environment variable of every runtime (repeatable)
    #[arg(long = "env", value_name = "KEY=VALUE", value_parser = parse_env, conflicts_with = "file")]
    pub env: Vec<(String, String)>,
    /// Where the state directory is mounted [server default: /var/lib/runtime]
    #[arg(long, conflicts_with = "file")]
    pub state_path: Option<String>,
    /// Refuse to start runtimes until a digest is pinned
    #[arg(long, conflicts_with = "file")]
    pub require_pin: bool,
}

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

#[derive(Debug, clap::Args)]
pub struct OpsArgs {
    /// Only operations on this runtime
    #[arg(long)]
    pub runtime: Option<String>,
    /// Only operations of this kind
    #[arg(long, value_parser = PossibleValuesParser::new(OperationKind::ALL.iter().map(|k| k.as_str())))]
    pub kind: Option<String>,
    /// At most this many operations (1 to 1000)
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..=1000))]
    pub limit: Option<u32>,
}

#[derive(Debug, clap::Args)]
pub struct EventsArgs {
    /// Only events of this runtime
    #[arg(long)]
    pub runtime: Option<String>,
    /// Only events of this type
    #[arg(long = "type", value_parser = PossibleValuesParser::new(berth_core::event::HealthEventType::ALL.iter().map(|t| t.as_str())))]
    pub event_type: Option<String>,
    /// At most this many events (1 to 1000)
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..=1000))]
    pub limit: Option<u32>,
}

#[derive(Debug, clap::Args)]
pub struct NotificationsArgs {
    /// At most this many notifications (1 to 1000)
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..=1000))]
    pub limit: Option<u32>,
}

/// `KEY=VALUE`; the value may contain `=` and may be empty.
pub fn parse_env(text: &str) -> Result<(String, String), String> {
    match text.split_once('=') {
        Some(("", _)) => Err(format!("{text:?} has no name before '='")),
        Some((key, value)) => Ok((key.to_string(), value.to_string())),
        None => Err(format!("{text:?} is not KEY=VALUE")),
    }
}

/// A name or id that goes into a URL path. The server validates ids; this
/// only refuses what would change which path is asked for (`..` would be
/// resolved away by URL normalization even when percent-encoded).
pub fn parse_path_segment(text: &str) -> Result<String, String> {
    match text {
        "" => Err("must not be empty".to_string()),
        "." | ".." => Err(format!("{text:?} is not a valid name")),
        _ => Ok(text.to_string()),
    }
}

/// A poll interval: `500ms`, `1s`, … from 100ms to a minute.
pub fn parse_interval(text: &str) -> Result<Duration, String> {
    let d = berth_core::duration::parse_duration(text).map_err(|e| e.to_string())?;
    if d < Duration::from_millis(100) || d > Duration::from_secs(60) {
        return Err(format!("{text:?} is outside 100ms to 1m"));
    }
    Ok(d)
}

/// An `http://` URL (this build has no TLS).
pub fn parse_api_url(text: &str) -> Result<String, String> {
    let url = reqwest::Url::parse(text).map_err(|e| format!("{text:?} is not a URL: {e}"))?;
    if url.scheme() != "http" {
        return Err(format!(
            "{text:?}: only http:// is supported (this build has no TLS; put a TLS proxy in front on the client side)"
        ));
    }
    if url.host_str().is_none_or(str::is_empty) || url.query().is_some() || url.fragment().is_some()
    {
        return Err(format!("{text:?} must be http://host[:port][/prefix]"));
    }
    Ok(text.trim_end_matches('/').to_string())
}

/// Runs a client command and returns the process exit code: 0; 1 after
/// printing `error: …` to stderr; or what the command chose (1 when a
/// refresh had failures or a watched rollout did not complete).
pub async fn run(cli: Cli) -> i32 {
    match execute(cli).await {
        Ok(code) => code,
        Err(e) => {
            // Nothing better to do if stderr itself is gone.
            let _ = writeln!(std::io::stderr(), "error: {e}");
            1
        }
    }
}

struct Ctx {
    client: Client,
    output: Output,
}

async fn execute(cli: Cli) -> Result<i32, CliError> {
    let ctx = Ctx {
        client: Client::new(&cli.api_url, cli.token.as_deref())?,
        output: cli.output,
    };
    match cli.command {
        Command::Serve(_) => Err(CliError::Other(
            "`berth serve` runs the server; main handles it, not the client".to_string(),
        )),
        Command::Template(c) => template(&ctx, c).await.map(|()| 0),
        Command::Pin(c) => pin(&ctx, c).await.map(|()| 0),
        Command::Runtime(c) => runtime(&ctx, c).await.map(|()| 0),
        Command::Ops(a) => ops(&ctx, a).await.map(|()| 0),
        Command::Events(a) => events(&ctx, a).await.map(|()| 0),
        Command::Notifications(a) => notifications(&ctx, a).await.map(|()| 0),
        Command::Reconcile => reconcile(&ctx).await.map(|()| 0),
        Command::Status => status(&ctx).await.map(|()| 0),
        Command::Refresh(a) => images::refresh(&ctx, a).await,
        Command::Watch => images::watch(&ctx).await.map(|()| 0),
        Command::Rollout(c) => rollout::rollout(&ctx, c).await,
    }
}

/// Writes to stdout; a closed pipe (`berth runtime ls | head`) is not an
/// error worth reporting.
fn emit(text: &str) {
    let mut out = std::io::stdout().lock();
    let _ = out.write_all(text.as_bytes()).and_then(|()| out.flush());
}

fn note(text: &str) {
    let _ = writeln!(std::io::stderr(), "{text}");
}

/// `--output json`: the server's answer, indented, keys in its order.
fn emit_json(answer: &Answer) {
    let body = answer.body.trim();
    if !body.is_empty() {
        emit(&format!("{}\n", format::indented_json(body)));
    }
}

/// Prints an answer: JSON as is, or decoded and shown as text.
fn show<T, F>(ctx: &Ctx, answer: &Answer, render: F) -> Result<(), CliError>
where
    T: serde::de::DeserializeOwned,
    F: FnOnce(T) -> String,
{
    match ctx.output {
        Output::Json => emit_json(answer),
        Output::Table => emit(&render(answer.decode()?)),
    }
    Ok(())
}

// ---- templates ----

async fn template(ctx: &Ctx, command: TemplateCommand) -> Result<(), CliError> {
    match command {
        TemplateCommand::Put(args) => {
            let body = template_body(&args)?;
            let answer = ctx
                .client
                .put(&["v1", "templates", &args.name], &body)
                .await?;
            let verb = if answer.status == StatusCode::CREATED {
                "created"
            } else {
                "replaced"
            };
            show(ctx, &answer, |doc: TemplateDoc| {
                format!(
                    "template {} {verb}\n{}",
                    args.name,
                    template_fields(&args.name, &doc)
                )
            })
        }
        TemplateCommand::Ls => {
            let answer = ctx.client.get(&["v1", "templates"], &[]).await?;
            show(ctx, &answer, |list: TemplateList| template_table(&list))
        }
        TemplateCommand::Show { name } => {
            let answer = ctx.client.get(&["v1", "templates", &name], &[]).await?;
            show(ctx, &answer, |doc: TemplateDoc| {
                template_fields(&name, &doc)
            })
        }
        TemplateCommand::Rm { name } => {
            let answer = ctx.client.delete(&["v1", "templates", &name], &[]).await?;
            match ctx.output {
                Output::Json => emit_json(&answer),
                Output::Table => emit(&format!("removed template {name}\n")),
            }
            Ok(())
        }
    }
}

/// The document to PUT: a file as written (the server judges it), or one
/// built from flags.
fn template_body(args: &TemplatePutArgs) -> Result<serde_json::Value, CliError> {
    match (&args.file, &args.image) {
        (Some(path), _) => {
            let (label, text) = read_input(path)?;
            serde_json::from_str(&text)
                .map_err(|e| CliError::Other(format!("{label} is not valid JSON: {e}")))
        }
        (None, Some(image)) => {
            let doc = TemplateDoc {
                image: image.clone(),
                tag: args.tag.clone(),
                port: args.port,
                env: args.env.iter().cloned().collect(),
                state_path: args.state_path.clone(),
                require_pin: args.require_pin,
                ..TemplateDoc::default()
            };
            serde_json::to_value(&doc)
                .map_err(|e| CliError::Other(format!("cannot encode the template: {e}")))
        }
        // clap's group makes one of them required.
        (None, None) => Err(CliError::Other("give --file or --image".to_string())),
    }
}

fn read_input(path: &Path) -> Result<(String, String), CliError> {
    if path == Path::new("-") {
        let mut text = String::new();
        std::io::stdin()
            .read_to_string(&mut text)
            .map_err(|e| CliError::Other(format!("cannot read standard input: {e}")))?;
        return Ok(("standard input".to_string(), text));
    }
    let label = path.display().to_string();
    let text = std::fs::read_to_string(path)
        .map_err(|e| CliError::Other(format!("cannot read {label}: {e}")))?;
    Ok((label, text))
}

fn template_table(list: &TemplateList) -> String {
    let mut t = Table::new(&[
        "NAME",
        "IMAGE",
        "TAG",
        "PORT",
        "REQUIRE_PIN",
        "WATCH",
        "UPDATE_POLICY",
    ]);
    for doc in &list.templates {
        t.row([
            or_dash(doc.name.as_deref()),
            doc.image.clone(),
            or_dash(doc.tag.as_deref()),
            doc.port.map_or_else(|| "-".to_string(), |p| p.to_string()),
            doc.require_pin.to_string(),
            doc.watch.to_string(),
            doc.update_policy
                .map_or_else(|| "-".to_string(), |p| enum_text(&p)),
        ]);
    }
    t.render()
}

fn template_fields(name: &str, doc: &TemplateDoc) -> String {
    let mut f = Fields::new();
    f.add("name", doc.name.as_deref().unwrap_or(name))
        .add("image", &doc.image)
        .add("tag", or_dash(doc.tag.as_deref()))
        .add(
            "port",
            doc.port.map_or_else(|| "-".to_string(), |p| p.to_string()),
        )
        .add("state_path", or_dash(doc.state_path.as_deref()));
    match &doc.health {
        Some(h) => f.add(
            "health",
            format!(
                "GET {} every {}, timeout {}, grace {}",
                h.path,
                or_dash(h.interval.as_deref()),
                or_dash(h.timeout.as_deref()),
                or_dash(h.grace.as_deref())
            ),
        ),
        None => f.add("health", "-"),
    };
    f.add("require_pin", doc.require_pin.to_string())
        .add("watch", doc.watch.to_string())
        .add(
            "update_policy",
            doc.update_policy
                .map_or_else(|| "-".to_string(), |p| enum_text(&p)),
        );
    match &doc.rollout {
        Some(r) => f.add(
            "rollout",
            format!(
                "batch_size {}, max_failures {}",
                r.batch_size, r.max_failures
            ),
        ),
        None => f.add("rollout", "-"),
    };
    f.add(
        "restart",
        doc.restart
            .map_or_else(|| "-".to_string(), |r| enum_text(&r)),
    )
    .add(
        "on_disappear",
        doc.on_disappear
            .map_or_else(|| "-".to_string(), |d| enum_text(&d)),
    )
    .add("stop_grace", or_dash(doc.stop_grace.as_deref()));
    for (key, value) in &doc.env {
        f.add(&format!("env.{key}"), value);
    }
    f.render()
}

/// The wire spelling of a template enum (`on-failure`, `track`, …).
fn enum_text<T: serde::Serialize>(value: &T) -> String {
    match serde_json::to_value(value) {
        Ok(serde_json::Value::String(s)) => s,
        _ => "-".to_string(),
    }
}

// ---- pins ----

async fn pin(ctx: &Ctx, command: PinCommand) -> Result<(), CliError> {
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

// ---- runtimes ----

async fn runtime(ctx: &Ctx, command: RuntimeCommand) -> Result<(), CliError> {
    match command {
        RuntimeCommand::Start { id, template, env } => {
            let body = StartRuntimeRequest {
                id: id.clone(),
                template,
                env: env.into_iter().collect::<BTreeMap<_, _>>(),
            };
            let answer = {
                let _spinner =
                    Spinner::show(ctx, format!("starting {id} (pulling the image if needed)…"));
                ctx.client.post(&["v1", "runtimes"], Some(&body)).await?
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
            let answer = ctx.client.get(&["v1", "runtimes"], &query).await?;
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
                let _spinner = Spinner::show(
                    ctx,
                    format!("restarting {id} (pulling the image if needed)…"),
                );
                ctx.client
                    .post(&["v1", "runtimes", &id, "restart"], None::<&()>)
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

/// A spinner on stderr while a long request is in flight; cleared when
/// dropped, whether the request succeeded or not. Only on a terminal and
/// for table output, so scripts and logs see no control sequences.
struct Spinner(Option<ProgressBar>);

impl Spinner {
    fn show(ctx: &Ctx, message: String) -> Spinner {
        if ctx.output != Output::Table || !std::io::stderr().is_terminal() {
            return Spinner(None);
        }
        let bar = ProgressBar::new_spinner();
        if let Ok(style) = ProgressStyle::with_template("{spinner} {msg} {elapsed}") {
            bar.set_style(style);
        }
        bar.set_message(message);
        bar.enable_steady_tick(Duration::from_millis(120));
        Spinner(Some(bar))
    }
}

impl Drop for Spinner {
    fn drop(&mut self) {
        if let Some(bar) = &self.0 {
            bar.finish_and_clear();
        }
    }
}

// ---- operations ----

async fn ops(ctx: &Ctx, args: OpsArgs) -> Result<(), CliError> {
    let mut query = Vec::new();
    if let Some(r) = args.runtime {
        query.push(("runtime", r));
    }
    if let Some(k) = args.kind {
        query.push(("kind", k));
    }
    if let Some(l) = args.limit {
        query.push(("limit", l.to_string()));
    }
    let answer = ctx.client.get(&["v1", "operations"], &query).await?;
    show(ctx, &answer, |list: OperationList| operation_table(&list))
}

async fn events(ctx: &Ctx, args: EventsArgs) -> Result<(), CliError> {
    let mut query = Vec::new();
    if let Some(r) = args.runtime {
        query.push(("runtime", r));
    }
    if let Some(t) = args.event_type {
        query.push(("type", t));
    }
    if let Some(l) = args.limit {
        query.push(("limit", l.to_string()));
    }
    let answer = ctx.client.get(&["v1", "events"], &query).await?;
    show(ctx, &answer, |list: crate::http::dto::HealthEventList| {
        let mut t = Table::new(&["TIME", "TYPE", "RUNTIME", "CONTAINER", "DETAILS"]);
        for e in &list.events {
            let details: Vec<String> = e.details.iter().map(|(k, v)| format!("{k}={v}")).collect();
            t.row([
                format_ms(e.at),
                e.event_type.clone(),
                e.runtime_id.clone(),
                e.container_id
                    .as_deref()
                    .map(|c| c.chars().take(12).collect())
                    .unwrap_or_else(|| "-".into()),
                if details.is_empty() {
                    "-".into()
                } else {
                    details.join(" ")
                },
            ]);
        }
        t.render()
    })
}

async fn notifications(ctx: &Ctx, args: NotificationsArgs) -> Result<(), CliError> {
    let mut query = Vec::new();
    if let Some(l) = args.limit {
        query.push(("limit", l.to_string()));
    }
    let answer = ctx.client.get(&["v1", "notifications"], &query).await?;
    show(ctx, &answer, |list: crate::http::dto::NotificationList| {
        let mut t = Table::new(&["TIME", "TYPE", "AUDIENCE", "PAYLOAD"]);
        for n in &list.notifications {
            let payload: Vec<String> = n.payload.iter().map(|(k, v)| format!("{k}={v}")).collect();
            t.row([
                format_ms(n.created_at),
                n.notification_type.clone(),
                n.audience.clone(),
                payload.join(" "),
            ]);
        }
        t.render()
    })
}

async fn status(ctx: &Ctx) -> Result<(), CliError> {
    let answer = ctx.client.get(&["v1", "status"], &[]).await?;
    show(ctx, &answer, |s: crate::http::dto::StatusView| {
        let when = |ms: i64| {
            if ms == 0 {
                "never".to_string()
            } else {
                format_ms(ms)
            }
        };
        let fleet: Vec<String> = s.runtimes.iter().map(|(k, v)| format!("{k} {v}")).collect();
        let mut out = String::new();
        for (k, v) in [
            ("version", s.version.clone()),
            ("owner", s.owner.clone()),
            ("network", s.network.clone()),
            (
                "redis",
                if s.redis {
                    "configured".into()
                } else {
                    "off".into()
                },
            ),
            (
                "docker events",
                if s.docker_events_connected {
                    "connected".into()
                } else {
                    "disconnected".into()
                },
            ),
            ("last reconcile", when(s.reconcile_last_run)),
            ("last image watch", when(s.image_watch_last_tick)),
            (
                "outbox pending",
                if s.outbox_pending > 1000 {
                    "more than 1000".into()
                } else {
                    s.outbox_pending.to_string()
                },
            ),
            ("active rollouts", s.active_rollouts.to_string()),
            (
                "runtimes",
                if fleet.is_empty() {
                    "none".into()
                } else {
                    fleet.join(", ")
                },
            ),
        ] {
            out.push_str(&format!("{k}: {v}\n"));
        }
        out
    })
}

async fn reconcile(ctx: &Ctx) -> Result<(), CliError> {
    let answer = ctx
        .client
        .post::<serde_json::Value>(&["v1", "admin", "reconcile"], None)
        .await?;
    show(ctx, &answer, |r: crate::http::dto::ReconcileReportView| {
        let mut t = Table::new(&["ACTION", "RUNTIMES"]);
        for (name, ids) in [
            ("disposed", &r.disposed),
            ("recreated", &r.recreated),
            ("adopted", &r.adopted),
            ("exited", &r.exited),
            ("restarted", &r.restarted),
            ("reported", &r.reported),
        ] {
            t.row([
                name.to_string(),
                if ids.is_empty() {
                    "-".into()
                } else {
                    ids.join(", ")
                },
            ]);
        }
        for f in &r.failed {
            t.row([
                "failed".to_string(),
                format!("{}: {}", f.runtime_id, f.error),
            ]);
        }
        t.render()
    })
}

fn operation_table(list: &OperationList) -> String {
    let mut t = Table::new(&["TIME", "KIND", "RUNTIME", "SOURCE", "OUTCOME", "ERROR"]);
    for o in &list.operations {
        let error = match (&o.error_code, &o.error_message) {
            (Some(code), Some(message)) => format!("{message} ({code})"),
            (Some(code), None) => code.clone(),
            (None, Some(message)) => message.clone(),
            (None, None) => "-".to_string(),
        };
        t.row([
            format_ms(o.started_at),
            o.kind.clone(),
            or_dash(o.runtime_id.as_deref()),
            o.source.clone(),
            o.outcome.clone(),
            error,
        ]);
    }
    t.render()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::http::dto::{ErrorDetail, OperationView};

    #[test]
    fn parses_env_pairs() {
        assert_eq!(parse_env("A=1"), Ok(("A".into(), "1".into())));
        assert_eq!(parse_env("A="), Ok(("A".into(), String::new())));
        assert_eq!(parse_env("URL=a=b=c"), Ok(("URL".into(), "a=b=c".into())));
        assert!(parse_env("A").is_err());
        assert!(parse_env("=1").is_err());
        assert!(parse_env("").is_err());
    }

    #[test]
    fn refuses_path_segments_that_change_the_path() {
        assert_eq!(parse_path_segment("ws-1"), Ok("ws-1".to_string()));
        assert_eq!(parse_path_segment("a.b"), Ok("a.b".to_string()));
        assert!(parse_path_segment("").is_err());
        assert!(parse_path_segment(".").is_err());
        assert!(parse_path_segment("..").is_err());
    }

    #[test]
    fn accepts_only_plain_http_urls() {
        assert_eq!(
            parse_api_url("http://127.0.0.1:7878/").as_deref(),
            Ok("http://127.0.0.1:7878")
        );
        assert_eq!(
            parse_api_url("http://h/berth").as_deref(),
            Ok("http://h/berth")
        );
        assert!(parse_api_url("https://h").is_err());
        assert!(parse_api_url("127.0.0.1:7878").is_err());
        assert!(parse_api_url("http://h/?x=1").is_err());
    }

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
            created_at: 0,
            updated_at: 1_700_000_000_000,
            last_error: None,
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

    #[test]
    fn renders_template_fields_with_wire_spellings() {
        let doc: TemplateDoc = serde_json::from_str(
            r#"{"name":"engine","image":"r.example/acme/engine","tag":"v1","env":{"K":"v"},
                "restart":"on-failure","update_policy":"track"}"#,
        )
        .unwrap();
        let text = template_fields("engine", &doc);
        assert!(text.contains("\nrestart: on-failure\n"), "{text}");
        assert!(text.contains("\nupdate_policy: track\n"), "{text}");
        assert!(text.contains("\nport: -\n"), "{text}");
        assert!(text.ends_with("\nenv.K: v\n"), "{text}");
    }

    #[test]
    fn builds_a_template_document_from_flags() {
        let args = TemplatePutArgs {
            name: "engine".into(),
            file: None,
            image: Some("r.example/acme/engine".into()),
            tag: None,
            port: Some(8080),
            env: vec![("A".into(), "1".into())],
            state_path: None,
            require_pin: true,
        };
        let body = template_body(&args).unwrap();
        assert_eq!(
            body,
            serde_json::json!({"image":"r.example/acme/engine","port":8080,"env":{"A":"1"},
                               "require_pin":true,"watch":false})
        );
    }

    #[test]
    fn reads_a_template_file_as_is() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.json");
        std::fs::write(&path, r#"{"image":"x","future_field":1}"#).unwrap();
        let mut args = TemplatePutArgs {
            name: "t".into(),
            file: Some(path.clone()),
            image: None,
            tag: None,
            port: None,
            env: Vec::new(),
            state_path: None,
            require_pin: false,
        };
        assert_eq!(
            template_body(&args).unwrap(),
            serde_json::json!({"image":"x","future_field":1})
        );
        std::fs::write(&path, "{not json").unwrap();
        let err = template_body(&args).unwrap_err().to_string();
        assert!(err.contains("is not valid JSON"), "{err}");
        args.file = Some(dir.path().join("missing.json"));
        assert!(template_body(&args)
            .unwrap_err()
            .to_string()
            .starts_with("cannot read "));
    }

    #[test]
    fn renders_operations_with_errors_last() {
        let failed = OperationView {
            id: "op-1".into(),
            runtime_id: Some("ws-1".into()),
            template: Some("engine".into()),
            kind: "start".into(),
            source: "cli".into(),
            outcome: "failure".into(),
            error_code: Some("image_pull_failed".into()),
            error_message: Some("manifest unknown".into()),
            started_at: 0,
            finished_at: Some(1),
            details: Default::default(),
        };
        let promoted = OperationView {
            id: "op-2".into(),
            runtime_id: None,
            kind: "pin_promote".into(),
            outcome: "success".into(),
            error_code: None,
            error_message: None,
            ..failed.clone()
        };
        let text = operation_table(&OperationList {
            operations: vec![failed, promoted],
        });
        assert_eq!(
            text,
            "TIME                  KIND          RUNTIME   SOURCE   OUTCOME   ERROR\n\
             1970-01-01 00:00:00   start         ws-1      cli      failure   manifest unknown (image_pull_failed)\n\
             1970-01-01 00:00:00   pin_promote   -         cli      success   -\n"
        );
    }
}
