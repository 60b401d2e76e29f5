//! `berth rollout …`: list, show, steer and follow rollouts.

use std::io::IsTerminal;
use std::time::Duration;

use berth_core::rollout::RolloutState;
use indicatif::{ProgressBar, ProgressStyle};

use crate::http::dto::{RolloutList, RolloutProgress, RolloutView};

use super::client::{Answer, CliError};
use super::format::{format_ms, or_dash, short_digest, Fields, Table};
use super::sse::SseReader;
use super::{emit, note, parse_interval, parse_path_segment, show, Ctx, Output};

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
    /// Follow a rollout until it completes, halts or is aborted, live from
    /// the change stream; exits 0 when it completed, 1 otherwise. With
    /// `--output json`, each state as one JSON line
    Watch {
        /// Rollout id
        #[arg(value_parser = parse_path_segment)]
        id: String,
        /// How often to ask when the server has no change stream, e.g.
        /// 500ms or 2s (100ms to 1m)
        #[arg(long, default_value = "1s", value_parser = parse_interval)]
        interval: Duration,
    },
}

/// One poll of a local API that takes longer than this is a failure.
const POLL_TIMEOUT: Duration = Duration::from_secs(10);
/// Polls in a row that may go unanswered (a restarting server) after a
/// first answer before `watch` gives up.
const MAX_MISSED_POLLS: u32 = 5;

pub(super) async fn rollout(ctx: &Ctx, command: RolloutCommand) -> Result<i32, CliError> {
    match command {
        RolloutCommand::Ls { template, limit } => {
            let mut query = Vec::new();
            if let Some(t) = template {
                query.push(("template", t));
            }
            if let Some(l) = limit {
                query.push(("limit", l.to_string()));
            }
            let answer = ctx.client.get(&["v1", "rollouts"], &query).await?;
            show(ctx, &answer, |list: RolloutList| rollout_table(&list))?;
        }
        RolloutCommand::Show { id } => {
            let answer = ctx.client.get(&["v1", "rollouts", &id], &[]).await?;
            show(ctx, &answer, |r: RolloutView| rollout_details(&r))?;
        }
        RolloutCommand::Pause { id } => set_state(ctx, &id, "pause").await?,
        RolloutCommand::Resume { id } => set_state(ctx, &id, "resume").await?,
        RolloutCommand::Abort { id } => set_state(ctx, &id, "abort").await?,
        RolloutCommand::Watch { id, interval } => return watch(ctx, &id, interval).await,
    }
    Ok(0)
}

async fn set_state(ctx: &Ctx, id: &str, verb: &str) -> Result<(), CliError> {
    let answer = ctx
        .client
        .post::<()>(&["v1", "rollouts", id, verb], None)
        .await?;
    show(ctx, &answer, |r: RolloutView| rollout_details(&r))
}

fn rollout_table(list: &RolloutList) -> String {
    let mut t = Table::new(&["ID", "TEMPLATE", "STATE", "TO", "FAILURES", "UPDATED"]);
    for r in &list.rollouts {
        t.row([
            r.id.clone(),
            r.template.clone(),
            r.state.clone(),
            short_digest(&r.to_digest),
            format!("{}/{}", r.failures, r.max_failures),
            format_ms(r.updated_at),
        ]);
    }
    t.render()
}

/// `key: value` lines, then the targets (when the answer has them).
fn rollout_details(r: &RolloutView) -> String {
    let mut f = Fields::new();
    f.add("id", &r.id)
        .add("template", &r.template)
        .add("state", &r.state)
        .add(
            "actions",
            or_dash(
                Some(r.actions.join(", "))
                    .filter(|a| !a.is_empty())
                    .as_deref(),
            ),
        )
        .add("from_digest", or_dash(r.from_digest.as_deref()))
        .add("to_digest", &r.to_digest)
        .add("batch_size", r.batch_size.to_string())
        .add(
            "failures",
            format!("{} (max {})", r.failures, r.max_failures),
        )
        .add("source", &r.source)
        .add("message", or_dash(r.message.as_deref()))
        .add("created_at", format_ms(r.created_at))
        .add("updated_at", format_ms(r.updated_at));
    if let Some(p) = &r.progress {
        f.add("progress", progress_text(p));
    }
    let mut out = f.render();
    if let Some(targets) = r.targets.as_deref().filter(|t| !t.is_empty()) {
        let mut t = Table::new(&["RUNTIME", "STATE", "ERROR"]);
        for target in targets {
            t.row([
                target.runtime_id.clone(),
                target.state.clone(),
                or_dash(target.error.as_deref()),
            ]);
        }
        out.push('\n');
        out.push_str(&t.render());
    }
    out
}

fn done(p: &RolloutProgress) -> usize {
    p.updated + p.failed + p.skipped
}

fn progress_text(p: &RolloutProgress) -> String {
    format!(
        "{}/{} done ({} updated, {} failed, {} skipped, {} pending)",
        done(p),
        p.total,
        p.updated,
        p.failed,
        p.skipped,
        p.pending
    )
}

/// The progress of a view, counted from its targets if the server left
/// the summary out.
fn progress_of(r: &RolloutView) -> RolloutProgress {
    if let Some(p) = &r.progress {
        return p.clone();
    }
    let targets = r.targets.as_deref().unwrap_or_default();
    let count = |s: &str| targets.iter().filter(|t| t.state == s).count();
    RolloutProgress {
        total: targets.len(),
        updated: count("updated"),
        failed: count("failed"),
        skipped: count("skipped"),
        pending: count("pending"),
    }
}

fn is_finished(r: &RolloutView) -> bool {
    RolloutState::parse(&r.state).is_ok_and(RolloutState::is_finished)
}

/// What `watch` shows while a rollout goes on: the bar's message, and
/// (without a terminal) the whole line.
fn watch_message(r: &RolloutView) -> String {
    format!("{}, failures {}/{}", r.state, r.failures, r.max_failures)
}

fn watch_line(r: &RolloutView) -> String {
    let p = progress_of(r);
    format!(
        "{}  {}  {}",
        format_ms(r.updated_at),
        watch_message(r),
        progress_text(&p)
    )
}

/// The last line of `watch`, and its exit code: 0 only for a completed
/// rollout.
fn watch_summary(r: &RolloutView) -> (String, i32) {
    let p = progress_of(r);
    let mut line = format!(
        "rollout {} {}: {} updated, {} failed, {} skipped of {}",
        r.id, r.state, p.updated, p.failed, p.skipped, p.total
    );
    if let Some(message) = r.message.as_deref().filter(|m| !m.is_empty()) {
        line.push_str(" (");
        line.push_str(&super::format::clean(message));
        line.push(')');
    }
    let code = if r.state == RolloutState::Completed.as_str() {
        0
    } else {
        1
    };
    (line, code)
}

/// What changes between polls worth a line.
fn watch_key(r: &RolloutView) -> (String, u32, usize, usize, usize, usize) {
    let p = progress_of(r);
    (
        r.state.clone(),
        r.failures,
        p.total,
        p.updated,
        p.failed,
        p.skipped,
    )
}

/// How `watch` shows progress.
enum Display {
    Bar(ProgressBar),
    Lines,
    /// `--output json`: each state as one JSON line on stdout.
    JsonLines,
}

impl Display {
    fn new(ctx: &Ctx) -> Display {
        match ctx.output {
            Output::Json => Display::JsonLines,
            Output::Table if std::io::stderr().is_terminal() => {
                let bar = ProgressBar::new(0);
                if let Ok(style) =
                    ProgressStyle::with_template("{spinner} [{bar:30}] {pos}/{len} {msg} {elapsed}")
                {
                    bar.set_style(style.progress_chars("=> "));
                }
                bar.enable_steady_tick(Duration::from_millis(120));
                Display::Bar(bar)
            }
            Output::Table => Display::Lines,
        }
    }

    fn update(&self, r: &RolloutView, answer: &Answer) {
        match self {
            Display::Bar(bar) => {
                let p = progress_of(r);
                bar.set_length(p.total as u64);
                bar.set_position(done(&p) as u64);
                bar.set_message(watch_message(r));
            }
            Display::Lines => emit(&format!("{}\n", watch_line(r))),
            // The server's compact JSON; a raw newline can only be
            // whitespace between tokens.
            Display::JsonLines => emit(&format!("{}\n", answer.body.trim().replace('\n', " "))),
        }
    }

    /// A passing problem, such as an unanswered poll.
    fn warn(&self, text: &str) {
        match self {
            Display::Bar(bar) => bar.set_message(text.to_string()),
            Display::Lines | Display::JsonLines => note(text),
        }
    }

    fn finish(&self) {
        if let Display::Bar(bar) = self {
            bar.finish_and_clear();
        }
    }
}

async fn watch(ctx: &Ctx, id: &str, interval: Duration) -> Result<i32, CliError> {
    let display = Display::new(ctx);
    let outcome = tokio::select! {
        outcome = follow(ctx, id, interval, &display) => Some(outcome),
        _ = tokio::signal::ctrl_c() => None,
    };
    display.finish();
    match outcome {
        Some(Ok(r)) => {
            // JSON: the final state was the last line.
            if ctx.output == Output::Table {
                emit(&format!("{}\n", watch_summary(&r).0));
            }
            Ok(watch_summary(&r).1)
        }
        Some(Err(e)) => Err(e),
        None => {
            note(&format!(
                "stopped watching; rollout {id} goes on (see `berth rollout show {id}`)"
            ));
            Ok(130)
        }
    }
}

/// With no change for this long, the rollout is read again anyway.
const QUIET_REREAD: Duration = Duration::from_secs(30);

/// Where `watch` is in the change stream.
struct Live {
    stream: SseReader,
    /// The last change seen, to resume from after a reconnect.
    cursor: Option<i64>,
}

/// Follows the rollout live: reads it, then again after each change of it
/// on the change stream (and after a quiet spell), until it is finished.
/// Without a change stream (an older server), polls every `interval`.
async fn follow(
    ctx: &Ctx,
    id: &str,
    interval: Duration,
    display: &Display,
) -> Result<RolloutView, CliError> {
    let query = [("kinds", "rollout".to_string())];
    // Opened before the first read, so no change between the two is lost.
    let mut live = match ctx.client.stream(&query, None).await {
        Ok(stream) => Live {
            stream,
            cursor: None,
        },
        Err(_) => return poll(ctx, id, interval, display).await,
    };
    let mut last = None;
    loop {
        let answer = ctx
            .client
            .get_within(&["v1", "rollouts", id], POLL_TIMEOUT)
            .await?;
        let r: RolloutView = answer.decode()?;
        let key = watch_key(&r);
        if last.as_ref() != Some(&key) {
            display.update(&r, &answer);
            last = Some(key);
        }
        if is_finished(&r) {
            return Ok(r);
        }
        next_change_of(ctx, id, &query, &mut live, interval, display).await?;
    }
}

/// Waits for a change of rollout `id` (or a reset, or a quiet spell);
/// reconnects with `Last-Event-ID` when the stream ends.
async fn next_change_of(
    ctx: &Ctx,
    id: &str,
    query: &[(&str, String)],
    live: &mut Live,
    interval: Duration,
    display: &Display,
) -> Result<(), CliError> {
    loop {
        match tokio::time::timeout(QUIET_REREAD, live.stream.next()).await {
            Err(_) => return Ok(()),
            Ok(Ok(Some(event))) => {
                if event.event == "reset" {
                    return Ok(());
                }
                if let Some(change) = event.change() {
                    live.cursor = Some(change.seq);
                    if change.kind == "rollout" && change.key == id {
                        return Ok(());
                    }
                }
            }
            // The server closed it (a restart, or this client fell
            // behind): resume after the last change seen.
            Ok(Ok(None)) | Ok(Err(_)) => {
                let mut missed = 0;
                loop {
                    match ctx.client.stream(query, live.cursor).await {
                        Ok(stream) => {
                            live.stream = stream;
                            // What happened meanwhile is re-read.
                            return Ok(());
                        }
                        Err(e) if e.is_transient() && missed < MAX_MISSED_POLLS => {
                            missed += 1;
                            display.warn(&format!("no answer ({missed}/{MAX_MISSED_POLLS}): {e}"));
                            tokio::time::sleep(interval).await;
                        }
                        Err(e) => return Err(e),
                    }
                }
            }
        }
    }
}

/// Polls until the rollout is finished; hands back the last state.
async fn poll(
    ctx: &Ctx,
    id: &str,
    interval: Duration,
    display: &Display,
) -> Result<RolloutView, CliError> {
    let mut last = None;
    let mut missed = 0;
    loop {
        match ctx
            .client
            .get_within(&["v1", "rollouts", id], POLL_TIMEOUT)
            .await
        {
            Ok(answer) => {
                missed = 0;
                let r: RolloutView = answer.decode()?;
                let key = watch_key(&r);
                if last.as_ref() != Some(&key) {
                    display.update(&r, &answer);
                    last = Some(key);
                }
                if is_finished(&r) {
                    return Ok(r);
                }
            }
            // Once it has answered: a server that never did is more
            // likely a wrong URL than a restart.
            Err(e) if e.is_transient() && last.is_some() && missed < MAX_MISSED_POLLS => {
                missed += 1;
                display.warn(&format!("no answer ({missed}/{MAX_MISSED_POLLS}): {e}"));
            }
            Err(e) => return Err(e),
        }
        tokio::time::sleep(interval).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::http::dto::RolloutTargetView;

    fn rollout_view() -> RolloutView {
        let target = |id: &str, state: &str, error: Option<&str>| RolloutTargetView {
            runtime_id: id.into(),
            state: state.into(),
            error: error.map(Into::into),
            updated_at: 0,
        };
        RolloutView {
            id: "01890a5d-ac96-774b-bcce-b302099a8057".into(),
            template: "engine".into(),
            from_digest: None,
            to_digest: format!("sha256:{}", "cd".repeat(32)),
            state: "running".into(),
            actions: vec!["pause".into(), "abort".into()],
            batch_size: 2,
            max_failures: 3,
            failures: 1,
            source: "image_watch".into(),
            message: None,
            created_at: 0,
            updated_at: 1_700_000_000_000,
            plugin: None,
            progress: Some(RolloutProgress {
                total: 4,
                updated: 1,
                failed: 1,
                skipped: 0,
                pending: 2,
            }),
            targets: Some(vec![
                target("ws-1", "updated", None),
                target("ws-2", "failed", Some("health check\ntimed out")),
                target("ws-3", "pending", None),
                target("ws-4", "pending", None),
            ]),
        }
    }

    #[test]
    fn renders_rollouts_as_a_table_with_full_ids() {
        let mut halted = rollout_view();
        halted.id = "r-2".into();
        halted.state = "halted".into();
        halted.failures = 3;
        // Lists carry neither progress nor targets.
        halted.progress = None;
        halted.targets = None;
        let text = rollout_table(&RolloutList {
            rollouts: vec![rollout_view(), halted],
        });
        assert_eq!(
            text,
            "ID                                     TEMPLATE   STATE     TO             FAILURES   UPDATED\n\
             01890a5d-ac96-774b-bcce-b302099a8057   engine     running   cdcdcdcdcdcd   1/3        2023-11-14 22:13:20\n\
             r-2                                    engine     halted    cdcdcdcdcdcd   3/3        2023-11-14 22:13:20\n"
        );
    }

    #[test]
    fn renders_a_rollout_with_its_targets() {
        let text = rollout_details(&rollout_view());
        assert!(
            text.starts_with(
                "id: 01890a5d-ac96-774b-bcce-b302099a8057\ntemplate: engine\nstate: running\nactions: pause, abort\nfrom_digest: -\n"
            ),
            "{text}"
        );
        assert!(text.contains("\nfailures: 1 (max 3)\n"), "{text}");
        assert!(
            text.contains("\nprogress: 2/4 done (1 updated, 1 failed, 0 skipped, 2 pending)\n"),
            "{text}"
        );
        assert!(
            text.ends_with(
                "\n\nRUNTIME   STATE     ERROR\n\
                 ws-1      updated   -\n\
                 ws-2      failed    health check timed out\n\
                 ws-3      pending   -\n\
                 ws-4      pending   -\n"
            ),
            "{text}"
        );
    }

    #[test]
    fn a_rollout_without_targets_is_only_fields() {
        let mut r = rollout_view();
        r.progress = None;
        r.targets = None;
        r.state = "paused".into();
        let text = rollout_details(&r);
        assert!(
            text.ends_with("\nupdated_at: 2023-11-14 22:13:20\n"),
            "{text}"
        );
        assert!(!text.contains("RUNTIME"), "{text}");
    }

    #[test]
    fn counts_progress_from_targets_when_the_summary_is_missing() {
        let mut r = rollout_view();
        r.progress = None;
        let p = progress_of(&r);
        assert_eq!(
            (p.total, p.updated, p.failed, p.skipped, p.pending),
            (4, 1, 1, 0, 2)
        );
        r.targets = None;
        assert_eq!(progress_of(&r).total, 0);
    }

    #[test]
    fn watch_lines_and_summaries() {
        let mut r = rollout_view();
        assert_eq!(
            watch_line(&r),
            "2023-11-14 22:13:20  running, failures 1/3  2/4 done (1 updated, 1 failed, 0 skipped, 2 pending)"
        );
        assert!(!is_finished(&r));
        r.state = "paused".into();
        assert!(!is_finished(&r));

        r.state = "completed".into();
        r.progress = Some(RolloutProgress {
            total: 4,
            updated: 3,
            failed: 1,
            skipped: 0,
            pending: 0,
        });
        assert!(is_finished(&r));
        assert_eq!(
            watch_summary(&r),
            (
                "rollout 01890a5d-ac96-774b-bcce-b302099a8057 completed: 3 updated, 1 failed, 0 skipped of 4"
                    .to_string(),
                0
            )
        );

        r.state = "halted".into();
        r.message = Some("3 runtimes failed".into());
        assert!(is_finished(&r));
        let (line, code) = watch_summary(&r);
        assert_eq!(code, 1);
        assert!(
            line.ends_with(" halted: 3 updated, 1 failed, 0 skipped of 4 (3 runtimes failed)"),
            "{line}"
        );

        r.state = "aborted".into();
        assert!(is_finished(&r));
        assert_eq!(watch_summary(&r).1, 1);

        // A state this client does not know is followed, not taken as the end.
        r.state = "rebalancing".into();
        assert!(!is_finished(&r));
    }

    #[test]
    fn watch_reports_only_changes() {
        let a = rollout_view();
        let mut b = rollout_view();
        b.updated_at += 1000;
        assert_eq!(watch_key(&a), watch_key(&b));
        b.state = "paused".into();
        assert_ne!(watch_key(&a), watch_key(&b));
    }
}
