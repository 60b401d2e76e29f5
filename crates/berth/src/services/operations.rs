//! Reading the operation log.

use std::sync::Arc;

use berth_core::id::validate_runtime_id;
use berth_core::operation::{Operation, OperationKind};

use super::{Context, Page};
use crate::error::{Error, Result};
use crate::ports::OperationFilter;

pub const DEFAULT_LIMIT: u32 = 100;
pub const MAX_LIMIT: u32 = 1000;

pub struct OperationLog {
    ctx: Arc<Context>,
}

impl OperationLog {
    pub fn new(ctx: Arc<Context>) -> Self {
        OperationLog { ctx }
    }

    /// Newest first, only those written before the operation `before`
    /// when given. `kind` is checked against the known kinds.
    pub async fn list(
        &self,
        runtime_id: Option<&str>,
        kind: Option<&str>,
        limit: Option<u32>,
        before: Option<&str>,
    ) -> Result<Page<Operation>> {
        if let Some(id) = runtime_id {
            validate_runtime_id(id)?;
        }
        let kind = kind
            .map(|k| {
                OperationKind::parse(k).ok_or_else(|| {
                    let known: Vec<&str> = OperationKind::ALL.iter().map(|k| k.as_str()).collect();
                    Error::invalid(format!(
                        "unknown operation kind {k:?}; expected one of {}",
                        known.join(", ")
                    ))
                })
            })
            .transpose()?;
        let limit = check_limit(limit)?;
        check_before(before)?;
        let ops = self
            .ctx
            .store
            .list_operations_before(
                &OperationFilter {
                    runtime_id: runtime_id.map(str::to_string),
                    kind,
                    limit: limit + 1,
                },
                before,
            )
            .await?;
        Ok(Page::from_overfetch(ops, Some(limit), |o| o.id.as_str()))
    }
}

/// The longest `before` cursor taken: ids berth writes are far shorter.
const MAX_CURSOR_LEN: usize = 200;

/// A log cursor (`before`): the id of an entry of that log, the `next` of
/// the previous page. An id that names no entry lists nothing; text that
/// cannot be an id is refused.
pub fn check_before(before: Option<&str>) -> Result<()> {
    match before {
        None => Ok(()),
        Some(b)
            if !b.is_empty()
                && b.len() <= MAX_CURSOR_LEN
                && b.bytes().all(|c| c.is_ascii_graphic()) =>
        {
            Ok(())
        }
        Some(b) => Err(Error::invalid(format!(
            "before {b:?} is not an entry id: pass the \"next\" of the previous page"
        ))),
    }
}

/// A list limit: 1..=1000, default 100.
pub fn check_limit(limit: Option<u32>) -> Result<u32> {
    match limit {
        None => Ok(DEFAULT_LIMIT),
        Some(l) if (1..=MAX_LIMIT).contains(&l) => Ok(l),
        Some(l) => Err(Error::invalid(format!(
            "limit {l} is out of range: use 1 to {MAX_LIMIT}"
        ))),
    }
}

impl OperationLog {
    /// Health events, newest first, only those written before the event
    /// `before` when given.
    pub async fn health_events(
        &self,
        runtime_id: Option<&str>,
        event_type: Option<&str>,
        limit: Option<u32>,
        before: Option<&str>,
    ) -> Result<Page<berth_core::event::HealthEvent>> {
        use berth_core::event::HealthEventType;
        if let Some(id) = runtime_id {
            validate_runtime_id(id)?;
        }
        let event_type = event_type
            .map(|t| {
                HealthEventType::parse(t).ok_or_else(|| {
                    let known: Vec<&str> =
                        HealthEventType::ALL.iter().map(|t| t.as_str()).collect();
                    Error::invalid(format!(
                        "unknown event type {t:?}; expected one of {}",
                        known.join(", ")
                    ))
                })
            })
            .transpose()?;
        let limit = check_limit(limit)?;
        check_before(before)?;
        let events = self
            .ctx
            .store
            .list_health_events_before(
                &crate::ports::store::EventFilter {
                    runtime_id: runtime_id.map(str::to_string),
                    event_type,
                    limit: limit + 1,
                },
                before,
            )
            .await?;
        Ok(Page::from_overfetch(events, Some(limit), |e| e.id.as_str()))
    }

    /// Notification intents, newest first, only those written before the
    /// notification `before` when given.
    pub async fn notifications(
        &self,
        limit: Option<u32>,
        before: Option<&str>,
    ) -> Result<Page<berth_core::event::Notification>> {
        let limit = check_limit(limit)?;
        check_before(before)?;
        let notes = self
            .ctx
            .store
            .list_notifications_before(limit + 1, before)
            .await?;
        Ok(Page::from_overfetch(notes, Some(limit), |n| n.id.as_str()))
    }

    /// The webhook delivery log, newest first; only `webhook`'s when given.
    pub async fn webhook_deliveries(
        &self,
        webhook: Option<&str>,
        limit: Option<u32>,
    ) -> Result<Vec<crate::ports::store::WebhookDelivery>> {
        let limit = check_limit(limit)?;
        if let Some(name) = webhook {
            if name.is_empty() {
                return Err(Error::invalid("webhook must not be empty"));
            }
        }
        Ok(self
            .ctx
            .store
            .list_webhook_deliveries(webhook, limit)
            .await?)
    }
}
