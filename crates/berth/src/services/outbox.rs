//! The outbox relay: publishes what changes wrote to the outbox, in commit
//! order, exactly once per row whatever crashes, and deletes each row once
//! Redis has it. When Redis is down the rows wait in the database; nothing
//! is lost.
//!
//! Exactly once: rows go to Redis in batches through `Bus::append_outbox`,
//! which appends only the rows above a high-water mark it keeps in Redis
//! and moves the mark in the same atomic step. A relay killed after the
//! append and before the delete, or whose reply was lost, sends the same
//! rows again and Redis appends none of them. The mark is only sound
//! because outbox seqs are drawn in commit order (the store's contract).

use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use super::Context;
use crate::error::{Error, Result};
use crate::ports::store::OutboxRow;
use crate::ports::{Bus, BusError, OutboxAppend};

const BATCH: u32 = 200;
const IDLE_POLL: Duration = Duration::from_secs(1);
const BACKOFF_MAX: Duration = Duration::from_secs(5);

pub struct OutboxRelay {
    ctx: Arc<Context>,
    bus: Arc<dyn Bus>,
    /// The Redis key of the high-water mark, once the relay has checked the
    /// database against it (see [`OutboxRelay::mark_key`]).
    mark_key: tokio::sync::OnceCell<String>,
}

/// Where the relay keeps its high-water mark for outbox `id`.
pub fn mark_key_for(owner: &str, id: &str) -> String {
    format!("berth:{owner}:outbox:{id}:high_water")
}

impl OutboxRelay {
    pub fn new(ctx: Arc<Context>, bus: Arc<dyn Bus>) -> Self {
        OutboxRelay {
            ctx,
            bus,
            mark_key: tokio::sync::OnceCell::new(),
        }
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

    /// The mark's key, found once per process. A mark above every seq the
    /// database ever handed out means the database went back in time (a
    /// restored backup): its next rows would hide below the mark, so the
    /// outbox takes a new identity and a new mark. Rows the backup still
    /// held may then be published a second time; none is lost.
    async fn mark_key(&self) -> Result<&str> {
        let key = self
            .mark_key
            .get_or_try_init(|| async {
                let owner = &self.ctx.settings.owner;
                let identity = self.ctx.store.outbox_identity().await?;
                let key = mark_key_for(owner, &identity.id);
                let mark = self
                    .bus
                    .append_outbox(&key, &[])
                    .await
                    .map_err(|e| bus_error(&key, e))?
                    .mark;
                if mark <= identity.drawn {
                    return Ok::<_, Error>(key);
                }
                let id = self.ctx.store.outbox_new_identity().await?;
                tracing::warn!(
                    mark,
                    drawn = identity.drawn,
                    old = %identity.id,
                    new = %id,
                    "the outbox is behind its high-water mark in Redis (a restored database?); \
                     it takes a new identity so that no new message is skipped"
                );
                Ok(mark_key_for(owner, &id))
            })
            .await?;
        Ok(key)
    }

    async fn publish(&self, rows: Vec<OutboxRow>) -> Result<usize> {
        if rows.is_empty() {
            return Ok(0);
        }
        let key = self.mark_key().await?;
        let messages: Vec<OutboxAppend> = rows
            .iter()
            .map(|r| OutboxAppend {
                seq: r.seq,
                stream: r.message.stream.clone(),
                fields: r.message.fields.clone(),
            })
            .collect();
        match self.bus.append_outbox(key, &messages).await {
            Ok(outcome) => self.settle(&rows, outcome.mark, outcome.appended).await,
            // One stream key holds something else: the script refused the
            // whole batch. One row at a time publishes the rows before the
            // bad one and keeps the error on it.
            Err(BusError::WrongType(_)) if rows.len() > 1 => {
                let mut published = 0;
                for (row, message) in rows.iter().zip(&messages) {
                    match self
                        .bus
                        .append_outbox(key, std::slice::from_ref(message))
                        .await
                    {
                        Ok(outcome) => {
                            published += self
                                .settle(std::slice::from_ref(row), outcome.mark, outcome.appended)
                                .await?;
                        }
                        Err(e) => return Err(self.failed(row, e).await),
                    }
                }
                Ok(published)
            }
            Err(e) => Err(self.failed(&rows[0], e).await),
        }
    }

    /// Deletes the rows the mark covers (appended now or by an earlier
    /// call whose delete did not happen) and returns how many.
    async fn settle(&self, rows: &[OutboxRow], mark: i64, appended: usize) -> Result<usize> {
        let done: Vec<i64> = rows.iter().map(|r| r.seq).filter(|s| *s <= mark).collect();
        self.ctx.store.outbox_delete(&done).await?;
        self.ctx.metrics.outbox_published.inc_by(appended as u64);
        Ok(done.len())
    }

    /// Keeps the failure on `row` (the head of what is left, in order).
    async fn failed(&self, row: &OutboxRow, e: BusError) -> Error {
        if let Err(store) = self.ctx.store.outbox_failed(row.seq, &e.to_string()).await {
            return store.into();
        }
        bus_error(&row.message.stream, e)
    }
}

fn bus_error(key: &str, e: BusError) -> Error {
    Error::new(
        berth_core::ErrorCode::Internal,
        format!("could not publish to {key}: {e}"),
    )
}
