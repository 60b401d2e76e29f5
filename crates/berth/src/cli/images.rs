//! `berth refresh` and `berth watch`: the image admin endpoints.

use crate::http::dto::{RefreshRequest, RefreshResponse, TemplateFailure, WatchReportView};

use super::client::CliError;
use super::format::Table;
use super::{emit, emit_json, parse_path_segment, Ctx, Output, Spinner};

#[derive(Debug, clap::Args)]
pub struct RefreshArgs {
    /// Only this template (repeatable) [default: every template]
    #[arg(long = "template", value_name = "NAME", value_parser = parse_path_segment)]
    pub templates: Vec<String>,
    /// Also recreate running runtimes whose image digest changed
    #[arg(long)]
    pub recreate: bool,
}

/// `POST /v1/admin/images/refresh`; exit code 1 when any template failed,
/// after the whole answer is printed.
pub(super) async fn refresh(ctx: &Ctx, args: RefreshArgs) -> Result<i32, CliError> {
    let body = refresh_body(args);
    let answer = {
        let _spinner = Spinner::show(ctx, "pulling images…".to_string());
        ctx.client
            .post(&["v1", "admin", "images", "refresh"], Some(&body))
            .await?
    };
    if ctx.output == Output::Json {
        emit_json(&answer);
    }
    let result: RefreshResponse = answer.decode()?;
    if ctx.output == Output::Table {
        emit(&refresh_table(&result));
    }
    Ok(if result.failed.is_empty() { 0 } else { 1 })
}

fn refresh_body(args: RefreshArgs) -> RefreshRequest {
    RefreshRequest {
        templates: (!args.templates.is_empty()).then_some(args.templates),
        recreate: args.recreate,
    }
}

/// One row per template pulled, runtime recreated and template failed; a
/// section with nothing in it shows `-`.
fn refresh_table(r: &RefreshResponse) -> String {
    let mut t = Table::new(&["RESULT", "NAME"]);
    section(&mut t, "pulled", &r.pulled);
    section(&mut t, "recreated", &r.recreated);
    failures(&mut t, &r.failed);
    t.render()
}

/// `POST /v1/admin/images/watch`: one image-watch tick.
pub(super) async fn watch(ctx: &Ctx) -> Result<(), CliError> {
    let answer = {
        let _spinner = Spinner::show(ctx, "looking up tracked tags…".to_string());
        ctx.client
            .post::<()>(&["v1", "admin", "images", "watch"], None)
            .await?
    };
    match ctx.output {
        Output::Json => emit_json(&answer),
        Output::Table => emit(&watch_table(&answer.decode()?)),
    }
    Ok(())
}

fn watch_table(r: &WatchReportView) -> String {
    let mut t = Table::new(&["RESULT", "TEMPLATE"]);
    section(&mut t, "seeded", &r.seeded);
    section(&mut t, "notified", &r.notified);
    section(&mut t, "tracked", &r.tracked);
    failures(&mut t, &r.failed);
    format!("registry lookups: {}\n{}", r.lookups, t.render())
}

fn section(t: &mut Table, label: &str, names: &[String]) {
    if names.is_empty() {
        t.row([label, "-"]);
    }
    for name in names {
        t.row([label, name]);
    }
}

fn failures(t: &mut Table, failed: &[TemplateFailure]) {
    if failed.is_empty() {
        t.row(["failed", "-"]);
    }
    for f in failed {
        t.row(["failed".to_string(), format!("{}: {}", f.template, f.error)]);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn asks_for_every_template_unless_some_are_named() {
        let all = refresh_body(RefreshArgs {
            templates: Vec::new(),
            recreate: false,
        });
        assert_eq!(
            serde_json::to_value(&all).unwrap(),
            serde_json::json!({"templates": null, "recreate": false})
        );
        let some = refresh_body(RefreshArgs {
            templates: vec!["engine".into(), "db".into()],
            recreate: true,
        });
        assert_eq!(
            serde_json::to_value(&some).unwrap(),
            serde_json::json!({"templates": ["engine", "db"], "recreate": true})
        );
    }

    #[test]
    fn renders_a_refresh_by_section() {
        let text = refresh_table(&RefreshResponse {
            pulled: vec!["engine".into(), "db".into()],
            recreated: Vec::new(),
            failed: vec![TemplateFailure {
                template: "cache".into(),
                error: "manifest unknown\n(404)".into(),
            }],
        });
        assert_eq!(
            text,
            "RESULT      NAME\n\
             pulled      engine\n\
             pulled      db\n\
             recreated   -\n\
             failed      cache: manifest unknown (404)\n"
        );
    }

    #[test]
    fn renders_a_watch_tick() {
        let text = watch_table(&WatchReportView {
            lookups: 3,
            seeded: vec!["db".into()],
            notified: vec!["engine".into()],
            tracked: Vec::new(),
            failed: Vec::new(),
        });
        assert_eq!(
            text,
            "registry lookups: 3\n\
             RESULT     TEMPLATE\n\
             seeded     db\n\
             notified   engine\n\
             tracked    -\n\
             failed     -\n"
        );
    }
}
