//! `GET /v1/stream`: the change stream as server-sent events.
//!
//! Each change is `id: <seq>`, `event: change`, `data: {"seq","kind","key",
//! "runtime","at"}`; it says what changed, and the client GETs the object
//! for its state. `Last-Event-ID` (or `?after=`) resumes from the database;
//! without either the stream is live from now. The feed itself is
//! `services::changes`.

use std::collections::BTreeSet;
use std::convert::Infallible;
use std::sync::Arc;

use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use berth_core::ErrorCode;
use serde::Deserialize;
use utoipa::IntoParams;

use super::dto::ErrorBody;
use super::extract::ApiQuery;
use super::{ApiError, AppState};
use crate::error::Error;
use crate::ports::store::ChangeKind;
use crate::services::changes::{End, Filter, Out, PullEvent, Subscription};
use tokio::sync::broadcast;

#[derive(Debug, Default, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct StreamQuery {
    /// Resume after this seq (as `Last-Event-ID` does; the header wins when
    /// both are given): every change with a greater seq, read from the
    /// database, then live.
    #[param(minimum = 0)]
    pub after: Option<i64>,
    /// Only these kinds, comma-separated: runtime, operation, event,
    /// notification, pin, template, rollout, plugin, plugin_update.
    #[param(
        pattern = "^(runtime|operation|event|notification|pin|template|rollout|plugin|plugin_update)(,(runtime|operation|event|notification|pin|template|rollout|plugin|plugin_update))*$"
    )]
    pub kinds: Option<String>,
    /// Only changes of this runtime.
    #[param(pattern = "^[a-z0-9]([a-z0-9_-]{0,61}[a-z0-9])?$", max_length = 63)]
    pub runtime: Option<String>,
}

fn parse_kinds(text: &str) -> Result<BTreeSet<ChangeKind>, Error> {
    let mut kinds = BTreeSet::new();
    for part in text.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let kind = ChangeKind::parse(part).ok_or_else(|| {
            let known: Vec<&str> = ChangeKind::ALL.iter().map(|k| k.as_str()).collect();
            Error::invalid(format!(
                "kinds: {part:?} is not a kind of change; use a comma-separated list of {}",
                known.join(", ")
            ))
        })?;
        kinds.insert(kind);
    }
    Ok(kinds)
}

fn last_event_id(headers: &HeaderMap) -> Result<Option<i64>, Error> {
    let Some(value) = headers.get("last-event-id") else {
        return Ok(None);
    };
    let text = value.to_str().unwrap_or("").trim();
    if text.is_empty() {
        return Ok(None);
    }
    text.parse::<i64>()
        .ok()
        .filter(|n| *n >= 0)
        .map(Some)
        .ok_or_else(|| {
            Error::invalid(format!(
                "Last-Event-ID: {text:?} is not a change seq (a whole number, 0 or more)"
            ))
        })
}

/// The change stream (server-sent events).
#[utoipa::path(get, path = "/v1/stream", tag = "stream",
    params(
        StreamQuery,
        ("Last-Event-ID" = Option<i64>, Header,
            description = "Resume after this seq: the `id` of the last change received"),
    ),
    responses(
        (status = 200, content_type = "text/event-stream", body = String,
            description = "Server-sent events, endless: `event: change` with `id: <seq>` and \
                `data: {\"seq\":<int>,\"kind\":\"<kind>\",\"key\":\"<id>\",\"runtime\":\"<id>\"|null,\"at\":<ms>}` \
                per change in commit order; `event: reset` with `data: {\"oldest\":<seq>}` first when \
                the cursor is older than the oldest change kept (reload, then changes continue from \
                there); with `runtime`, `event: progress` with `data: {\"runtime\",\"layer\",\"status\",\"current\",\"total\"}` \
                while that runtime's image is pulled (not stored, no id); a `: keep-alive` comment every 15 s. A client that falls behind is \
                disconnected and resumes with `Last-Event-ID`."),
        (status = 400, body = ErrorBody,
            description = "invalid_request: an unknown kind, a bad `after` or `Last-Event-ID`; invalid_id: a bad runtime id"),
        (status = 503, body = ErrorBody,
            description = "unavailable: too many stream clients are connected; storage_unavailable: the database failed"),
    ))]
pub async fn stream(
    State(state): State<AppState>,
    headers: HeaderMap,
    ApiQuery(q): ApiQuery<StreamQuery>,
) -> Result<Response, ApiError> {
    let kinds = match q.kinds.as_deref() {
        Some(text) => parse_kinds(text)?,
        None => BTreeSet::new(),
    };
    if let Some(r) = q.runtime.as_deref() {
        berth_core::id::validate_runtime_id(r)?;
    }
    if q.after.is_some_and(|a| a < 0) {
        return Err(Error::invalid("after: a change seq is 0 or more").into());
    }
    let after = last_event_id(&headers)?.or(q.after);
    let feed = state.services.changes.clone();
    let filter_runtime = q.runtime.clone();
    let filter = Filter {
        kinds,
        runtime: q.runtime,
    };
    let Some(subscription) = feed.subscribe(after, filter).await.map_err(Error::from)? else {
        return Err(Error::new(
            ErrorCode::Unavailable,
            format!(
                "{} change-stream clients are connected, the most this berth serves; try again later",
                feed.settings().max_clients
            ),
        )
        .into());
    };
    // With `?runtime=`, that runtime's image pulls too, as they go.
    let pulls = filter_runtime.map(|runtime| (feed.pulls(), runtime));
    let events = futures_util::stream::unfold(
        Some(Connection {
            subscription,
            pulls,
        }),
        next_event,
    );
    Ok(Sse::new(events)
        .keep_alive(
            KeepAlive::new()
                .interval(feed.settings().heartbeat)
                .text("keep-alive"),
        )
        .into_response())
}

/// The `data:` of `event: reset`: `{"oldest":<seq>}`.
pub(super) fn reset_data(oldest: i64) -> String {
    format!("{{\"oldest\":{oldest}}}")
}

/// One stream connection: its changes and, for one runtime, its pulls.
struct Connection {
    subscription: Subscription,
    pulls: Option<(broadcast::Receiver<Arc<PullEvent>>, String)>,
}

async fn next_event(
    connection: Option<Connection>,
) -> Option<(Result<Event, Infallible>, Option<Connection>)> {
    let mut connection = connection?;
    loop {
        let pull = async {
            match connection.pulls.as_mut() {
                Some((rx, _)) => rx.recv().await,
                None => std::future::pending().await,
            }
        };
        let out = tokio::select! {
            // Changes first: they are the record; progress is a courtesy.
            biased;
            out = connection.subscription.next() => out,
            pull = pull => {
                match pull {
                    Ok(p) if connection.pulls.as_ref().is_some_and(|(_, r)| *r == p.runtime) => {
                        let event = Event::default().event("progress").data(&p.data);
                        return Some((Ok(event), Some(connection)));
                    }
                    // Another runtime's, or some skipped while this client lagged.
                    Ok(_) | Err(broadcast::error::RecvError::Lagged(_)) => continue,
                    Err(broadcast::error::RecvError::Closed) => {
                        connection.pulls = None;
                        continue;
                    }
                }
            }
        };
        let event = match out {
            Ok(Out::Change(item)) => Event::default()
                .id(item.seq.to_string())
                .event("change")
                .data(&item.data),
            Ok(Out::Reset { oldest }) => Event::default().event("reset").data(reset_data(oldest)),
            Err(End::Closed) => return None,
            Err(End::Dropped) => {
                tracing::info!(
                    cursor = connection.subscription.cursor(),
                    "closed a change-stream client that fell behind; it resumes with Last-Event-ID"
                );
                return None;
            }
            Err(End::Store(e)) => {
                tracing::warn!(error = %e, "a change-stream client cannot read the change log; closing it");
                return None;
            }
        };
        return Some((Ok(event), Some(connection)));
    }
}
