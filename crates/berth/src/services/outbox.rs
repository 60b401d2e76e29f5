//! The outbox relay: publishes what changes wrote to the outbox, in commit
//! order, and deletes each message once Redis has it. When Redis is down
//! the messages wait in the database; nothing is lost.

use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use super::Context;
use crate::error::Result;
use crate::ports::Bus;

const BATCH: u32 = 200;
const IDLE_POLL: Duration = Duration::from_secs(1);
const BACKOFF_MAX: Duration = Duration::from_secs(5);

pub struct OutboxRelay {
    ctx: Arc<Context>,
    bus: Arc<dyn Bus>,
}

impl OutboxRelay {
    pub fn new(ctx: Arc<Context>, bus: Arc<dyn Bus>) -> Self {
        OutboxRelay { ctx, bus }
    }

    pub async fn run(self: Arc<Self>, cancel: CancellationToken) {
        let mut backoff = Duration::from_millis(100);
        loop {
            let wait = match self.relay_once().await {
                Ok(n) if n as u32 == BATCH => Duration::ZERO,
                Ok(_) => {
                    backoff = Duration::from_millis(100);
                    IDLE_POLL
                }
                Err(e) => {
                    tracing::warn!(error = %e, "outbox relay paused; will retry");
                    backoff = (backoff * 2).min(BACKOFF_MAX);
                    backoff
                }
            };
            if wait.is_zero() {
                continue;
            }
            tokio::select! {
                _ = cancel.cancelled() => return,
                _ = tokio::time::sleep(wait) => {}
                _ = self.ctx.outbox_wakeup.notified() => {}
            }
        }
    }

    /// Publishes one batch, oldest first; stops at the first failure so
    /// that order is kept. Returns how many were published.
    ///
    /// Sets `berth_outbox_backlog` after a batch that was not full (what
    /// is left of it is the whole backlog) and after a failure (counted up
    /// to `OUTBOX_COUNT_CAP` + 1, as `GET /v1/status` does); after a full
    /// batch the relay goes on at once and counts at the end.
    pub async fn relay_once(&self) -> Result<usize> {
        let rows = self.ctx.store.outbox_pending(BATCH).await?;
        let fetched = rows.len();
        let result = self.publish(rows).await;
        match &result {
            Ok(published) if fetched < BATCH as usize => {
                self.ctx
                    .metrics
                    .outbox_backlog_set((fetched - published) as u64);
            }
            Ok(_) => {}
            Err(_) => {
                if let Ok(pending) = self
                    .ctx
                    .store
                    .outbox_pending(super::OUTBOX_COUNT_CAP + 1)
                    .await
                {
                    self.ctx.metrics.outbox_backlog_set(pending.len() as u64);
                }
            }
        }
        result
    }

    async fn publish(&self, rows: Vec<crate::ports::store::OutboxRow>) -> Result<usize> {
        let mut published = 0;
        for row in rows {
            match self
                .bus
                .publish(&row.message.stream, &row.message.fields)
                .await
            {
                Ok(_) => {
                    // Deleted one by one: a crash between publish and delete
                    // can repeat at most this one message.
                    self.ctx.store.outbox_delete(&[row.seq]).await?;
                    self.ctx.metrics.outbox_published.inc();
                    published += 1;
                }
                Err(e) => {
                    self.ctx
                        .store
                        .outbox_failed(row.seq, &e.to_string())
                        .await?;
                    return Err(crate::error::Error::new(
                        berth_core::ErrorCode::Internal,
                        format!("could not publish to {}: {e}", row.message.stream),
                    ));
                }
            }
        }
        Ok(published)
    }
}
