//! `berth ops`, `berth events` and `berth notifications`: the records of
//! operations, health events and notification intents, newest first.

use berth_core::operation::OperationKind;
use clap::builder::PossibleValuesParser;

use crate::http::dto::{HealthEventList, NotificationList, OperationList};

use super::client::CliError;
use super::format::{format_ms, or_dash, Table};
use super::{show, Ctx};

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

pub(super) async fn ops(ctx: &Ctx, args: OpsArgs) -> Result<(), CliError> {
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

pub(super) async fn events(ctx: &Ctx, args: EventsArgs) -> Result<(), CliError> {
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
    show(ctx, &answer, |list: HealthEventList| {
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

pub(super) async fn notifications(ctx: &Ctx, args: NotificationsArgs) -> Result<(), CliError> {
    let mut query = Vec::new();
    if let Some(l) = args.limit {
        query.push(("limit", l.to_string()));
    }
    let answer = ctx.client.get(&["v1", "notifications"], &query).await?;
    show(ctx, &answer, |list: NotificationList| {
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
    use crate::http::dto::OperationView;

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
            next: None,
        });
        assert_eq!(
            text,
            "TIME                  KIND          RUNTIME   SOURCE   OUTCOME   ERROR\n\
             1970-01-01 00:00:00   start         ws-1      cli      failure   manifest unknown (image_pull_failed)\n\
             1970-01-01 00:00:00   pin_promote   -         cli      success   -\n"
        );
    }
}
