//! The console's HTML: pure functions from what the services read to
//! markup. No I/O here, so rendering is unit-tested on plain values.
//!
//! A page is a list of regions. Each region names the change kinds of
//! `GET /v1/stream` that make it stale (`data-live`); the script re-fetches
//! just that region (`X-Berth-Fragment`) when one arrives.

use std::collections::BTreeMap;

use berth_core::event::HealthEvent;
use berth_core::operation::Operation;
use berth_core::runtime::RuntimeRecord;
use berth_core::status::RuntimeStatus;
use berth_core::store::plan::Impact;
use maud::{html, Markup, DOCTYPE};
use percent_encoding::{utf8_percent_encode, AsciiSet, NON_ALPHANUMERIC};

use crate::cli::format::{format_ms, short_digest};
use crate::http::roles::Role;
use crate::ports::store::{PluginRecord, PluginUpdate, RolloutRow, RolloutTarget};
use berth_core::pin::PinHistoryEntry;

/// Who is looking, and what the page may offer them.
#[derive(Debug, Clone)]
pub struct Viewer {
    pub name: String,
    pub role: Role,
    /// The session's CSRF token; `None` without a session (an open console,
    /// or a bearer token).
    pub csrf: Option<String>,
    /// A session to end (there is none on an open console).
    pub logged_in: bool,
}

impl Viewer {
    fn can_operate(&self) -> bool {
        self.role.allows(Role::Operator)
    }
}

/// One live part of a page.
pub struct Region {
    pub id: &'static str,
    /// Comma-separated change kinds that make it stale.
    pub live: &'static str,
    /// Only changes of this runtime (`None`: all).
    pub runtime: Option<String>,
    pub body: Markup,
}

/// The navigation entries; `current` is marked for screen readers too.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Nav {
    Fleet,
    Templates,
    Rollouts,
    PluginUpdates,
}

const NAV: [(Nav, &str, &str); 4] = [
    (Nav::Fleet, "/", "Fleet"),
    (Nav::Templates, "/ui/templates", "Templates"),
    (Nav::Rollouts, "/ui/rollouts", "Rollouts"),
    (Nav::PluginUpdates, "/ui/plugin-updates", "Plugin updates"),
];

/// A whole page: head, navigation, the regions.
pub fn page(title: &str, nav: Nav, viewer: &Viewer, regions: &[Region]) -> Markup {
    html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                @if let Some(csrf) = &viewer.csrf { meta name="berth-csrf" content=(csrf); }
                meta name="berth-actor" content=(viewer.name);
                title { (title) " · berth" }
                link rel="stylesheet" href="/ui/assets/console.css";
                script src="/ui/assets/console.js" defer {}
            }
            body {
                a.skip href="#main" { "Skip to content" }
                header.top {
                    a.brand href="/" { "berth" }
                    nav aria-label="Sections" {
                        ul {
                            @for (n, href, label) in NAV {
                                li {
                                    @if n == nav { a href=(href) aria-current="page" { (label) } }
                                    @else { a href=(href) { (label) } }
                                }
                            }
                        }
                    }
                    div.who {
                        span #live-state role="status" aria-live="polite" data-state="connecting" { "connecting…" }
                        span.user { (viewer.name) " (" (viewer.role.as_str()) ")" }
                        @if viewer.logged_in {
                            form method="post" action="/ui/logout" {
                                @if let Some(csrf) = &viewer.csrf { input type="hidden" name="csrf" value=(csrf); }
                                button type="submit" { "Log out" }
                            }
                        }
                    }
                }
                main #main {
                    h1 { (title) }
                    p #action-result role="status" aria-live="polite" {}
                    @for r in regions { (region(r)) }
                }
            }
        }
    }
}

fn region(r: &Region) -> Markup {
    html! {
        section id=(r.id) data-live=(r.live) data-runtime=[r.runtime.as_deref()] {
            (r.body)
        }
    }
}

/// The token prompt: nothing of the fleet is on it.
pub fn login(error: Option<&str>) -> Markup {
    html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                title { "Log in · berth" }
                link rel="stylesheet" href="/ui/assets/console.css";
            }
            body.login {
                main #main {
                    h1 { "berth" }
                    form #login method="post" action="/ui/login" {
                        label for="token" { "API token" }
                        input #token type="password" name="token" autocomplete="current-password" required autofocus;
                        @if let Some(e) = error { p.error role="alert" { (e) } }
                        button type="submit" { "Log in" }
                    }
                    p.hint { "The token is exchanged for a session cookie; it is not stored in the browser." }
                }
            }
        }
    }
}

fn ago(now_ms: i64, at_ms: i64) -> String {
    let s = (now_ms - at_ms).max(0) / 1000;
    match s {
        0..=59 => format!("{s}s ago"),
        60..=3599 => format!("{}m ago", s / 60),
        3600..=86_399 => format!("{}h ago", s / 3600),
        _ => format!("{}d ago", s / 86_400),
    }
}

/// A time as text a person reads, with the exact UTC time on hover.
fn when(now_ms: i64, at_ms: i64) -> Markup {
    html! { time title=(format!("{} UTC", format_ms(at_ms))) { (ago(now_ms, at_ms)) } }
}

/// Status as a word and a colour (never colour alone).
pub fn status_badge(status: RuntimeStatus) -> Markup {
    let tone = match status {
        RuntimeStatus::Running => "ok",
        RuntimeStatus::Starting | RuntimeStatus::Stopping => "busy",
        RuntimeStatus::Exited | RuntimeStatus::Failed => "bad",
        RuntimeStatus::Stopped | RuntimeStatus::Removed => "off",
    };
    html! { span class={"badge " (tone)} data-status=(status.as_str()) { (status.as_str()) } }
}

fn impact_badge(impact: Option<Impact>) -> Markup {
    match impact {
        None => html! { span.muted title="not computed since berth started" { "—" } },
        Some(Impact::None) => html! { span.badge.ok { "ready" } },
        Some(Impact::Degraded) => html! { span.badge.busy { "degraded" } },
        Some(Impact::Blocked) => html! { span.badge.bad { "blocked" } },
    }
}

/// A runtime's digest against its template's pin.
fn digest_cell(digest: Option<&str>, pin: Option<&str>) -> Markup {
    let digest_text = digest.map(short_digest);
    html! {
        code title=[digest] { (digest_text.as_deref().unwrap_or("—")) }
        @match (digest, pin) {
            (_, None) => { " " span.muted { "no pin" } }
            (Some(d), Some(p)) if d == p => { " " span.badge.ok { "on pin" } }
            (_, Some(p)) => { " " span.badge.bad title=(format!("pinned: {p}")) { "stale" } }
        }
    }
}

/// A button that calls the API after a confirmation (see console.js).
fn action(method: &str, path: &str, label: &str, confirm: &str) -> Markup {
    html! {
        button type="button" data-method=(method) data-path=(path) data-confirm=(confirm) { (label) }
    }
}

fn runtime_actions(viewer: &Viewer, r: &RuntimeRecord) -> Markup {
    if !viewer.can_operate() || r.status == RuntimeStatus::Removed {
        return html! {};
    }
    let base = format!("/v1/runtimes/{}", r.id);
    html! {
        span.actions {
            @if matches!(r.status, RuntimeStatus::Running | RuntimeStatus::Starting) {
                (action("POST", &format!("{base}/stop"), "Stop", &format!("Stop runtime {}?", r.id)))
                (action("POST", &format!("{base}/restart"), "Restart", &format!("Restart runtime {}?", r.id)))
            } @else {
                (action("POST", &format!("{base}/start"), "Start", &format!("Start runtime {}?", r.id)))
            }
        }
    }
}

/// The fleet list's filters, as the query string carries them.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FleetFilter {
    pub template: Option<String>,
    pub status: Option<String>,
    pub stale: bool,
    /// An id, or the start of ids.
    pub q: Option<String>,
    pub after: Option<String>,
}

impl FleetFilter {
    /// The query string of this filter on another page (`after`).
    pub fn query(&self, after: Option<&str>) -> String {
        let mut parts = Vec::new();
        let mut push = |k: &str, v: &str| parts.push(format!("{k}={}", encode(v)));
        if let Some(t) = &self.template {
            push("template", t);
        }
        if let Some(s) = &self.status {
            push("status", s);
        }
        if self.stale {
            push("stale", "true");
        }
        if let Some(q) = &self.q {
            push("q", q);
        }
        if let Some(a) = after {
            push("after", a);
        }
        if parts.is_empty() {
            "/".to_string()
        } else {
            format!("/?{}", parts.join("&"))
        }
    }
}

/// Percent-encodes a query value (ids and names are plain, but a person may
/// type anything into the search box): all but letters, digits and `-_.`.
fn encode(v: &str) -> String {
    const QUERY_VALUE: &AsciiSet = &NON_ALPHANUMERIC.remove(b'-').remove(b'_').remove(b'.');
    utf8_percent_encode(v, QUERY_VALUE).to_string()
}

/// One row of the fleet.
#[derive(Debug, Clone)]
pub struct FleetRow {
    pub record: RuntimeRecord,
    pub pin: Option<String>,
    /// The newest health event's type and time, when one is recent.
    pub health: Option<(String, i64)>,
    pub readiness: Option<Impact>,
    pub pending_updates: usize,
}

/// The fleet page's data.
#[derive(Debug, Clone, Default)]
pub struct Fleet {
    pub filter: FleetFilter,
    pub templates: Vec<String>,
    pub rows: Vec<FleetRow>,
    /// The `after` of the next page.
    pub next: Option<String>,
    /// Runtimes by status, over the whole fleet.
    pub counts: BTreeMap<String, usize>,
    pub total: usize,
    pub stale: usize,
}

pub fn fleet_summary(f: &Fleet) -> Markup {
    html! {
        ul.summary aria-label="Fleet summary" {
            li { strong { (f.total) } " runtimes" }
            @for (status, n) in &f.counts {
                li { a href=(FleetFilter { status: Some(status.clone()), ..FleetFilter::default() }.query(None)) { strong { (n) } " " (status) } }
            }
            li { a href="/?stale=true" { strong { (f.stale) } " stale" } }
        }
    }
}

pub fn fleet_filters(f: &Fleet) -> Markup {
    let statuses = RuntimeStatus::ALL;
    html! {
        form.filters method="get" action="/" role="search" {
            label { "Find runtime "
                input type="search" name="q" value=[f.filter.q.as_deref()] placeholder="id or start of an id" maxlength="63";
            }
            label { "Template "
                select name="template" {
                    option value="" { "all" }
                    @for t in &f.templates {
                        option value=(t) selected[f.filter.template.as_deref() == Some(t)] { (t) }
                    }
                }
            }
            label { "Status "
                select name="status" {
                    option value="" { "all" }
                    @for s in statuses {
                        option value=(s.as_str()) selected[f.filter.status.as_deref() == Some(s.as_str())] { (s.as_str()) }
                    }
                }
            }
            label.check { input type="checkbox" name="stale" value="true" checked[f.filter.stale]; " stale only" }
            button type="submit" { "Filter" }
            @if f.filter != FleetFilter::default() { " " a href="/" { "Clear" } }
        }
    }
}

pub fn fleet_table(f: &Fleet, viewer: &Viewer, now_ms: i64) -> Markup {
    html! {
        @if f.rows.is_empty() {
            p.empty { "No runtimes match." }
        } @else {
            div.scroll {
                table.fleet {
                    caption.sr { "Runtimes" }
                    thead { tr {
                        th scope="col" { "Runtime" } th scope="col" { "Status" } th scope="col" { "Template" }
                        th scope="col" { "Digest" } th scope="col" { "Health" } th scope="col" { "Readiness" }
                        th scope="col" { "Plugin updates" } th scope="col" { "Updated" } th scope="col" { span.sr { "Actions" } }
                    } }
                    tbody {
                        @for row in &f.rows {
                            @let r = &row.record;
                            tr data-id=(r.id) {
                                th scope="row" { a href=(format!("/ui/runtimes/{}", r.id)) { (r.id) } }
                                td { (status_badge(r.status))
                                    @if let Some(e) = &r.last_error { " " span.error title=(e.message) { (e.code) } } }
                                td { a href=(format!("/ui/templates/{}", r.template)) { (r.template) } }
                                td { (digest_cell(r.image_digest.as_deref(), row.pin.as_deref())) }
                                td { @match &row.health {
                                    Some((kind, at)) => { (kind) " " span.muted { (when(now_ms, *at)) } }
                                    None => span.muted { "—" }
                                } }
                                td { (impact_badge(row.readiness)) }
                                td { @if row.pending_updates > 0 {
                                    a href=(format!("/ui/plugin-updates?runtime={}", r.id)) { (row.pending_updates) " queued" }
                                } @else { span.muted { "none" } } }
                                td { (when(now_ms, r.updated_at_ms)) }
                                td { (runtime_actions(viewer, r)) }
                            }
                        }
                    }
                }
            }
        }
        nav.pager aria-label="Pages" {
            @if f.filter.after.is_some() { a href=(f.filter.query(None)) { "← First page" } " " }
            @if let Some(next) = &f.next { a rel="next" href=(f.filter.query(Some(next))) { "Next page →" } }
        }
    }
}

/// Operations, newest first.
pub fn operations_table(ops: &[Operation], now_ms: i64, show_runtime: bool) -> Markup {
    html! {
        @if ops.is_empty() { p.empty { "No operations yet." } } @else {
            div.scroll { table.log {
                thead { tr {
                    th scope="col" { "When" } th scope="col" { "Operation" }
                    @if show_runtime { th scope="col" { "Runtime" } }
                    th scope="col" { "Outcome" } th scope="col" { "By" } th scope="col" { "Error" }
                } }
                tbody { @for op in ops {
                    tr data-op=(op.id) {
                        td { (when(now_ms, op.started_at_ms)) }
                        td { (op.kind.as_str()) }
                        @if show_runtime { td { @if let Some(r) = &op.runtime_id { a href=(format!("/ui/runtimes/{r}")) { (r) } } } }
                        td { span class={"badge " (outcome_tone(op.outcome.as_str()))} { (op.outcome.as_str()) } }
                        td { (op.details.get("actor").map(String::as_str).unwrap_or(op.source.as_str())) }
                        td { @if let Some(code) = &op.error_code { span.error title=[op.error_message.as_deref()] { (code) } } }
                    }
                } }
            } }
        }
    }
}

fn outcome_tone(outcome: &str) -> &'static str {
    match outcome {
        "success" => "ok",
        "failure" => "bad",
        _ => "busy",
    }
}

/// Health events, newest first.
pub fn events_table(events: &[HealthEvent], now_ms: i64, show_runtime: bool) -> Markup {
    html! {
        @if events.is_empty() { p.empty { "No health events yet." } } @else {
            div.scroll { table.log {
                thead { tr {
                    th scope="col" { "When" } th scope="col" { "Event" }
                    @if show_runtime { th scope="col" { "Runtime" } }
                    th scope="col" { "Details" }
                } }
                tbody { @for e in events {
                    tr {
                        td { (when(now_ms, e.at_ms)) }
                        td { (e.event_type.as_str()) }
                        @if show_runtime { td { a href=(format!("/ui/runtimes/{}", e.runtime_id)) { (e.runtime_id) } } }
                        td.details { @for (k, v) in &e.details { span { (k) "=" (v) } " " } }
                    }
                } }
            } }
        }
    }
}

/// A runtime's page: the record, readiness and actions.
#[derive(Debug, Clone)]
pub struct RuntimeDetail {
    pub record: RuntimeRecord,
    pub pin: Option<String>,
    /// `(ok, reason, impact, diagnostics)`, or why it could not be computed.
    pub readiness: Result<(bool, String, Impact, Vec<String>), String>,
}

pub fn runtime_summary(d: &RuntimeDetail, viewer: &Viewer, now_ms: i64) -> Markup {
    let r = &d.record;
    html! {
        dl.facts {
            dt { "Status" } dd { (status_badge(r.status)) " " (runtime_actions(viewer, r)) }
            dt { "Template" } dd { a href=(format!("/ui/templates/{}", r.template)) { (r.template) } }
            dt { "Digest" } dd { (digest_cell(r.image_digest.as_deref(), d.pin.as_deref())) }
            dt { "Container" } dd { code { (r.container_id.as_deref().map(|c| &c[..c.len().min(12)]).unwrap_or("—")) } }
            dt { "Generation" } dd { (r.generation) }
            dt { "Run id" } dd { code { (r.run_id.as_deref().unwrap_or("—")) } }
            dt { "Updated" } dd { (when(now_ms, r.updated_at_ms)) }
            @if let Some(e) = &r.last_error { dt { "Last error" } dd.error { code { (e.code) } " " (e.message) } }
            dt { "Readiness" } dd {
                @match &d.readiness {
                    Ok((_, reason, impact, diagnostics)) => {
                        (impact_badge(Some(*impact))) " " code { (reason) }
                        @if !diagnostics.is_empty() { ul.diagnostics { @for line in diagnostics { li { (line) } } } }
                    }
                    Err(why) => { span.muted { "unknown: " (why) } }
                }
            }
        }
    }
}

pub fn plugins_table(
    plugins: &[PluginRecord],
    updates: &[PluginUpdate],
    viewer: &Viewer,
    now_ms: i64,
) -> Markup {
    html! {
        @if plugins.is_empty() { p.empty { "No plugins." } } @else {
            div.scroll { table {
                thead { tr { th scope="col" { "Plugin" } th scope="col" { "Tracks" } th scope="col" { "Installed" } th scope="col" { "Queued update" } } }
                tbody { @for p in plugins {
                    tr {
                        th scope="row" { (p.name) }
                        td { code { (p.track) } }
                        td { code { (p.installed_sha.as_deref().map(|s| &s[..s.len().min(12)]).unwrap_or("—")) } }
                        td { @for u in updates.iter().filter(|u| u.plugin == p.name) {
                            (update_line(u, viewer, now_ms))
                        } }
                    }
                } }
            } }
        }
    }
}

fn update_line(u: &PluginUpdate, viewer: &Viewer, now_ms: i64) -> Markup {
    html! {
        span.update {
            code { (u.from_sha.as_deref().map(|s| &s[..s.len().min(12)]).unwrap_or("—")) } " → " code { (&u.to_sha[..u.to_sha.len().min(12)]) }
            " " span.muted { (when(now_ms, u.created_at_ms)) }
            @if viewer.can_operate() && u.status.as_str() == "pending" {
                " " (action("POST", &format!("/v1/plugin-updates/{}/apply", u.id), "Apply", &format!("Apply {} to {} and restart the runtime?", u.plugin, u.runtime_id)))
                " " (action("POST", &format!("/v1/plugin-updates/{}/dismiss", u.id), "Dismiss", &format!("Dismiss this update of {} on {}?", u.plugin, u.runtime_id)))
            }
        }
    }
}

pub fn plugin_updates_table(updates: &[PluginUpdate], viewer: &Viewer, now_ms: i64) -> Markup {
    html! {
        @if updates.is_empty() { p.empty { "No plugin updates." } } @else {
            div.scroll { table {
                thead { tr { th scope="col" { "Runtime" } th scope="col" { "Plugin" } th scope="col" { "Tracks" } th scope="col" { "Status" } th scope="col" { "Update" } } }
                tbody { @for u in updates {
                    tr data-update=(u.id) {
                        td { a href=(format!("/ui/runtimes/{}", u.runtime_id)) { (u.runtime_id) } }
                        td { (u.plugin) }
                        td { code { (u.track) } }
                        td { span class={"badge " (match u.status.as_str() { "pending" => "busy", "applied" => "ok", _ => "off" })} { (u.status.as_str()) } }
                        td { (update_line(u, viewer, now_ms)) }
                    }
                } }
            } }
        }
    }
}

pub fn templates_table(templates: &[(String, String, Option<String>)]) -> Markup {
    html! {
        @if templates.is_empty() { p.empty { "No templates." } } @else {
            div.scroll { table {
                thead { tr { th scope="col" { "Template" } th scope="col" { "Image" } th scope="col" { "Pin" } } }
                tbody { @for (name, image, pin) in templates {
                    tr {
                        th scope="row" { a href=(format!("/ui/templates/{name}")) { (name) } }
                        td { code { (image) } }
                        td { @match pin { Some(p) => { code title=(p) { (short_digest(p)) } } None => { span.muted { "not pinned" } } } }
                    }
                } }
            } }
        }
    }
}

pub fn pin_history(entries: &[PinHistoryEntry], now_ms: i64) -> Markup {
    html! {
        @if entries.is_empty() { p.empty { "Never pinned." } } @else {
            ol.history { @for e in entries {
                li {
                    (when(now_ms, e.at_ms)) " " strong { (e.action.as_str()) } " "
                    @if let Some(d) = &e.digest { code title=(d.to_string()) { (short_digest(&d.to_string())) } }
                    @if let Some(p) = &e.previous_digest { " (was " code title=(p.to_string()) { (short_digest(&p.to_string())) } ")" }
                    " by " (e.by)
                    @if let Some(reason) = &e.reason { " — " (reason) }
                }
            } }
        }
    }
}

pub fn rollouts_table(rollouts: &[RolloutRow], now_ms: i64) -> Markup {
    html! {
        @if rollouts.is_empty() { p.empty { "No rollouts." } } @else {
            div.scroll { table {
                thead { tr { th scope="col" { "Rollout" } th scope="col" { "Template" } th scope="col" { "To" } th scope="col" { "State" } th scope="col" { "Failures" } th scope="col" { "Updated" } } }
                tbody { @for r in rollouts {
                    tr data-rollout=(r.id) {
                        th scope="row" { a href=(format!("/ui/rollouts/{}", r.id)) { (&r.id[..r.id.len().min(13)]) } }
                        td { a href=(format!("/ui/templates/{}", r.template)) { (r.template) } @if let Some(p) = &r.plugin { " plugin " (p) } }
                        td { code title=(r.to_digest) { (short_digest(&r.to_digest)) } }
                        td { (rollout_state(r)) }
                        td { (r.failures) " of at most " (r.max_failures) }
                        td { (when(now_ms, r.updated_at_ms)) }
                    }
                } }
            } }
        }
    }
}

fn rollout_state(r: &RolloutRow) -> Markup {
    let s = r.state.as_str();
    let tone = match s {
        "running" => "busy",
        "completed" => "ok",
        "halted" | "aborted" => "bad",
        _ => "off",
    };
    html! { span class={"badge " (tone)} data-state=(s) { (s) } }
}

pub fn rollout_detail(
    r: &RolloutRow,
    targets: &[RolloutTarget],
    viewer: &Viewer,
    now_ms: i64,
) -> Markup {
    let done = targets
        .iter()
        .filter(|t| t.state.as_str() != "pending")
        .count();
    let base = format!("/v1/rollouts/{}", r.id);
    html! {
        dl.facts {
            dt { "State" } dd { (rollout_state(r))
                @if viewer.can_operate() {
                    span.actions {
                        // The verbs core's `steer` allows, never a copy of its rules.
                        @for verb in berth_core::rollout::operator_actions(r.state) {
                            @match verb {
                                "pause" => (action("POST", &format!("{base}/pause"), "Pause", "Pause this rollout?")),
                                "resume" => (action("POST", &format!("{base}/resume"), "Resume", "Resume this rollout?")),
                                _ => (action("POST", &format!("{base}/abort"), "Abort", "Abort this rollout? Runtimes already updated stay updated.")),
                            }
                        }
                    }
                }
            }
            dt { "Template" } dd { a href=(format!("/ui/templates/{}", r.template)) { (r.template) } }
            dt { "From" } dd { code { (r.from_digest.as_deref().map(short_digest).unwrap_or_else(|| "—".into())) } }
            dt { "To" } dd { code title=(r.to_digest) { (short_digest(&r.to_digest)) } }
            dt { "Progress" } dd {
                progress max=(targets.len().max(1)) value=(done) aria-label="targets done" {}
                " " (done) " of " (targets.len()) " done, " (r.failures) " failed (at most " (r.max_failures) ")"
            }
            @if let Some(m) = &r.message { dt { "Message" } dd { (m) } }
            dt { "Updated" } dd { (when(now_ms, r.updated_at_ms)) }
        }
        div.scroll { table {
            thead { tr { th scope="col" { "#" } th scope="col" { "Runtime" } th scope="col" { "State" } th scope="col" { "Error" } } }
            tbody { @for t in targets {
                tr {
                    td { (t.position) }
                    td { a href=(format!("/ui/runtimes/{}", t.runtime_id)) { (t.runtime_id) } }
                    td { span class={"badge " (match t.state.as_str() { "updated" => "ok", "failed" => "bad", "pending" => "busy", _ => "off" })} { (t.state.as_str()) } }
                    td { (t.error.as_deref().unwrap_or("")) }
                }
            } }
        } }
    }
}

/// A section heading inside a region.
pub fn heading(text: &str) -> Markup {
    html! { h2 { (text) } }
}

#[cfg(test)]
mod tests {
    use super::*;
    use berth_core::runtime::RuntimeRecord;

    fn viewer(role: Role) -> Viewer {
        Viewer {
            name: "ops".into(),
            role,
            csrf: Some("c5rf".into()),
            logged_in: true,
        }
    }

    fn record(id: &str, status: RuntimeStatus, digest: &str) -> RuntimeRecord {
        let mut r = RuntimeRecord::new(id, "web", Default::default(), 0);
        r.status = status;
        r.image_digest = Some(digest.to_string());
        r
    }

    /// A row with nothing known beyond its record.
    fn bare(record: RuntimeRecord) -> FleetRow {
        FleetRow {
            record,
            pin: None,
            health: None,
            readiness: None,
            pending_updates: 0,
        }
    }

    fn fleet(rows: Vec<FleetRow>) -> Fleet {
        Fleet {
            rows,
            total: 2,
            ..Fleet::default()
        }
    }

    #[test]
    fn the_fleet_marks_stale_runtimes_and_shows_status_as_text() {
        let pin = "sha256:".to_string() + &"a".repeat(64);
        let old = "sha256:".to_string() + &"b".repeat(64);
        let f = fleet(vec![
            FleetRow {
                record: record("on-pin", RuntimeStatus::Running, &pin),
                pin: Some(pin.clone()),
                health: None,
                readiness: Some(Impact::None),
                pending_updates: 0,
            },
            FleetRow {
                record: record("behind", RuntimeStatus::Exited, &old),
                pin: Some(pin.clone()),
                health: Some(("container_exited".into(), 0)),
                readiness: Some(Impact::Blocked),
                pending_updates: 2,
            },
        ]);
        let html = fleet_table(&f, &viewer(Role::Operator), 5_000).into_string();
        let on_pin = &html
            [html.find("data-id=\"on-pin\"").unwrap()..html.find("data-id=\"behind\"").unwrap()];
        let behind = &html[html.find("data-id=\"behind\"").unwrap()..];
        assert!(
            on_pin.contains(">on pin<") && !on_pin.contains(">stale<"),
            "{on_pin}"
        );
        assert!(behind.contains(">stale<"), "{behind}");
        assert!(on_pin.contains(">running<") && behind.contains(">exited<"));
        assert!(behind.contains(">blocked<") && on_pin.contains(">ready<"));
        assert!(behind.contains("2 queued"));
        assert!(behind.contains("container_exited"));
        // A stopped-ish runtime offers start, a running one stop and restart.
        assert!(
            on_pin.contains("/v1/runtimes/on-pin/stop")
                && on_pin.contains("/v1/runtimes/on-pin/restart")
        );
        assert!(behind.contains("/v1/runtimes/behind/start") && !behind.contains("/stop"));
    }

    #[test]
    fn a_viewer_gets_no_action_buttons() {
        let f = fleet(vec![bare(record("a", RuntimeStatus::Running, "sha256:x"))]);
        let html = fleet_table(&f, &viewer(Role::Viewer), 0).into_string();
        assert!(!html.contains("data-method"), "{html}");
        assert!(html.contains("no pin"));
    }

    #[test]
    fn text_from_records_is_escaped() {
        let mut r = record("x", RuntimeStatus::Failed, "sha256:x");
        r.last_error = Some(berth_core::runtime::LastError {
            code: "start_failed".into(),
            message: "<script>alert(1)</script>".into(),
        });
        let f = fleet(vec![bare(r)]);
        let html = fleet_table(&f, &viewer(Role::Admin), 0).into_string();
        assert!(!html.contains("<script>alert"), "{html}");
        assert!(html.contains("&lt;script&gt;"));
    }

    #[test]
    fn paging_links_keep_the_filter() {
        let mut f = fleet(vec![]);
        f.filter = FleetFilter {
            template: Some("web".into()),
            status: Some("running".into()),
            stale: true,
            q: Some("a b&c".into()),
            after: Some("rt-1".into()),
        };
        f.next = Some("rt-9".into());
        let html = fleet_table(&f, &viewer(Role::Admin), 0).into_string();
        assert!(html.contains("href=\"/?template=web&amp;status=running&amp;stale=true&amp;q=a%20b%26c&amp;after=rt-9\""), "{html}");
        assert!(html.contains("First page"));
        assert!(html.contains("No runtimes match."));
    }

    #[test]
    fn the_page_carries_the_csrf_token_and_the_regions_their_kinds() {
        let regions = [Region {
            id: "fleet",
            live: "runtime,plugin_update",
            runtime: None,
            body: html! { p { "body" } },
        }];
        let html = page("Fleet", Nav::Fleet, &viewer(Role::Admin), &regions).into_string();
        assert!(html.starts_with("<!DOCTYPE html>"));
        assert!(html.contains("<meta name=\"berth-csrf\" content=\"c5rf\">"));
        assert!(html.contains(
            "<section id=\"fleet\" data-live=\"runtime,plugin_update\"><p>body</p></section>"
        ));
        assert!(html.contains("aria-current=\"page\">Fleet<"));
        assert!(html.contains("action=\"/ui/logout\""));
        // Only this server's own assets.
        assert!(!html.contains("http://") && !html.contains("https://"));
    }

    #[test]
    fn the_login_page_shows_no_fleet_data() {
        let html = login(Some("that token is not valid")).into_string();
        assert!(html.contains("type=\"password\""));
        assert!(html.contains("that token is not valid"));
        assert!(!html.contains("berth-csrf") && !html.contains("console.js"));
    }

    #[test]
    fn times_read_as_ages() {
        assert_eq!(ago(10_000, 9_000), "1s ago");
        assert_eq!(ago(3_600_000, 0), "1h ago");
        assert_eq!(ago(0, 5_000), "0s ago");
    }

    /// The buttons of a rollout are core's `steer` verbs: a halted one is
    /// resumed, never aborted (the API refuses halted → aborted).
    #[test]
    fn a_rollout_offers_only_what_core_allows() {
        use berth_core::rollout::RolloutState;
        let row = |state| RolloutRow {
            id: "r-1".into(),
            template: "web".into(),
            from_digest: None,
            to_digest: "sha256:".to_string() + &"a".repeat(64),
            state,
            batch_size: 1,
            max_failures: 1,
            failures: 0,
            revert_pin: false,
            source: berth_core::operation::Source::Api,
            message: None,
            created_at_ms: 0,
            updated_at_ms: 0,
            plugin: None,
        };
        let buttons = |state| {
            let html = rollout_detail(&row(state), &[], &viewer(Role::Operator), 0).into_string();
            ["pause", "resume", "abort"]
                .into_iter()
                .filter(|verb| html.contains(&format!("/v1/rollouts/r-1/{verb}")))
                .collect::<Vec<_>>()
        };
        assert_eq!(buttons(RolloutState::Running), vec!["pause", "abort"]);
        assert_eq!(buttons(RolloutState::Paused), vec!["resume", "abort"]);
        assert_eq!(buttons(RolloutState::Halted), vec!["resume"]);
        assert!(buttons(RolloutState::Completed).is_empty());
    }
}
