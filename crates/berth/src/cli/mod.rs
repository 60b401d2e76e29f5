//! The `berth` command line: `serve` (handled by main) and the client
//! commands, which speak the HTTP API like any other client. This module
//! holds the top-level parser, the dispatch and the output helpers; each
//! noun's subcommands live in their own module (template, pin, runtime,
//! rollout, images, log, admin).

mod admin;
mod client;
pub(crate) mod format;
mod images;
mod log;
mod pin;
mod plugin;
mod pull;
mod rollout;
mod runtime;
pub mod sse;
mod store;
mod template;

use std::io::{IsTerminal, Write};
use std::time::Duration;

use indicatif::{ProgressBar, ProgressStyle};

use client::{Answer, CliError, Client};

pub use images::RefreshArgs;
pub use log::{EventsArgs, NotificationsArgs, OpsArgs};
pub use pin::PinCommand;
pub use plugin::{PluginCommand, PluginUpdateCommand};
pub use rollout::RolloutCommand;
pub use runtime::RuntimeCommand;
pub use store::StoreCommand;
pub use template::{TemplateCommand, TemplatePutArgs};

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
    /// PEM certificate(s) to trust for an https:// API URL, besides the
    /// built-in roots (e.g. berth's self-signed tls_cert)
    #[arg(long, global = true, env = "BERTH_CA_CERT", value_name = "FILE")]
    pub ca_cert: Option<std::path::PathBuf>,
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
    Serve(Box<crate::config::ServeArgs>),
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
    /// Install, list and remove plugins (git sources) of a runtime
    #[command(subcommand)]
    Plugin(PluginCommand),
    /// List, apply and dismiss queued plugin updates
    #[command(subcommand, name = "plugin-update")]
    PluginUpdate(PluginUpdateCommand),
    /// Run one plugin drift sweep now; exits 1 if a source failed
    Sweep,
    /// Show a runtime's state stores and commit batches to them
    #[command(subcommand)]
    Store(StoreCommand),
    /// Whether a runtime is ready, and which store is at fault; exits 1
    /// when it is blocked
    Readiness {
        /// Runtime id
        #[arg(value_parser = parse_path_segment)]
        runtime: String,
    },
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

/// An `http://` or `https://` URL, with an optional path prefix.
pub fn parse_api_url(text: &str) -> Result<String, String> {
    let url = reqwest::Url::parse(text).map_err(|e| format!("{text:?} is not a URL: {e}"))?;
    if url.scheme() != "http" && url.scheme() != "https" {
        return Err(format!(
            "{text:?}: write an http:// or https:// URL, such as {DEFAULT_API_URL}"
        ));
    }
    if url.host_str().is_none_or(str::is_empty) || url.query().is_some() || url.fragment().is_some()
    {
        return Err(format!("{text:?} must be http(s)://host[:port][/prefix]"));
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
        client: Client::with_ca(&cli.api_url, cli.token.as_deref(), cli.ca_cert.as_deref())?,
        output: cli.output,
    };
    match cli.command {
        Command::Serve(_) => Err(CliError::Other(
            "`berth serve` runs the server; main handles it, not the client".to_string(),
        )),
        Command::Template(c) => template::template(&ctx, c).await.map(|()| 0),
        Command::Pin(c) => pin::pin(&ctx, c).await.map(|()| 0),
        Command::Runtime(c) => runtime::runtime(&ctx, c).await.map(|()| 0),
        Command::Ops(a) => log::ops(&ctx, a).await.map(|()| 0),
        Command::Events(a) => log::events(&ctx, a).await.map(|()| 0),
        Command::Notifications(a) => log::notifications(&ctx, a).await.map(|()| 0),
        Command::Reconcile => admin::reconcile(&ctx).await.map(|()| 0),
        Command::Status => admin::status(&ctx).await.map(|()| 0),
        Command::Refresh(a) => images::refresh(&ctx, a).await,
        Command::Watch => images::watch(&ctx).await.map(|()| 0),
        Command::Rollout(c) => rollout::rollout(&ctx, c).await,
        Command::Plugin(c) => plugin::plugin(&ctx, c).await.map(|()| 0),
        Command::PluginUpdate(c) => plugin::plugin_update(&ctx, c).await.map(|()| 0),
        Command::Sweep => plugin::sweep(&ctx).await,
        Command::Store(c) => store::store(&ctx, c).await.map(|()| 0),
        Command::Readiness { runtime } => store::readiness(&ctx, runtime).await,
    }
}

/// Writes to stdout; a closed pipe (`berth runtime ls | head`) is not an
/// error worth reporting.
fn emit(text: &str) {
    let mut out = std::io::stdout().lock();
    let _ = out.write_all(text.as_bytes()).and_then(|()| out.flush());
}

/// A line for the person on stderr, apart from the answer on stdout.
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

/// Prints an answer: its JSON for `--output json`, or decoded and shown as text.
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

impl Spinner {
    /// A line above the spinner; on stderr as it is without one (tables
    /// only: JSON output stays clean).
    fn println(&self, line: &str) {
        match &self.0 {
            Some(bar) => bar.println(line),
            None => note(line),
        }
    }
}

impl Drop for Spinner {
    fn drop(&mut self) {
        if let Some(bar) = &self.0 {
            bar.finish_and_clear();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
    fn accepts_http_and_https_urls() {
        assert_eq!(
            parse_api_url("http://127.0.0.1:7878/").as_deref(),
            Ok("http://127.0.0.1:7878")
        );
        assert_eq!(
            parse_api_url("http://h/berth").as_deref(),
            Ok("http://h/berth")
        );
        assert_eq!(
            parse_api_url("https://h:7878/").as_deref(),
            Ok("https://h:7878")
        );
        assert!(parse_api_url("ftp://h").is_err());
        assert!(parse_api_url("127.0.0.1:7878").is_err());
        assert!(parse_api_url("http://h/?x=1").is_err());
    }
}
