//! `berth status` and `berth reconcile`: the instance and its reconcile
//! loop.

use crate::http::dto::{ReconcileReportView, StatusView};

use super::client::CliError;
use super::format::{format_ms, Table};
use super::{show, Ctx};

pub(super) async fn status(ctx: &Ctx) -> Result<(), CliError> {
    let answer = ctx.client.get(&["v1", "status"], &[]).await?;
    show(ctx, &answer, |s: StatusView| {
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
            ("last plugin sweep", when(s.plugin_sweep_last_run)),
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
            (
                "readiness",
                if s.readiness.is_empty() {
                    "-".into()
                } else {
                    let mut text = s
                        .readiness
                        .iter()
                        .map(|(impact, n)| format!("{impact} {n}"))
                        .collect::<Vec<_>>()
                        .join(", ");
                    if !s.readiness_blocked.is_empty() {
                        text.push_str(&format!(" (blocked: {})", s.readiness_blocked.join(", ")));
                    }
                    text
                },
            ),
        ] {
            out.push_str(&format!("{k}: {v}\n"));
        }
        if !s.webhooks.is_empty() {
            let mut t = Table::new(&[
                "WEBHOOK",
                "URL",
                "PENDING",
                "LAST DELIVERED",
                "LAST ERROR",
                "ERROR AT",
            ]);
            for w in &s.webhooks {
                t.row(vec![
                    w.name.clone(),
                    w.url.clone(),
                    if w.pending >= 10_000 {
                        "10000+".into()
                    } else {
                        w.pending.to_string()
                    },
                    w.last_delivered_at.map_or("never".into(), format_ms),
                    w.last_error.clone().unwrap_or_else(|| "-".into()),
                    w.last_error_at.map_or("-".into(), format_ms),
                ]);
            }
            out.push('\n');
            out.push_str(&t.render());
        }
        out
    })
}

pub(super) async fn reconcile(ctx: &Ctx) -> Result<(), CliError> {
    let answer = ctx
        .client
        .post::<serde_json::Value>(&["v1", "admin", "reconcile"], None)
        .await?;
    show(ctx, &answer, |r: ReconcileReportView| {
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
