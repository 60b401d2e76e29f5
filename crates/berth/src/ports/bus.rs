//! The message bus (Redis Streams): job intake through a consumer group,
//! and publishing of the outbox. The real adapter is `adapters::redis_bus`.

use std::time::Duration;

use async_trait::async_trait;

#[derive(Debug, Clone, thiserror::Error)]
pub enum BusError {
    /// Redis cannot be reached, or did not answer in time.
    #[error("Redis is unavailable: {0}")]
    Unavailable(String),
    /// The stream or its consumer group does not exist (`NOGROUP`), e.g.
    /// after Redis restarted without persistence: create the group again.
    #[error("no such stream or consumer group: {0}")]
    NoGroup(String),
    /// The key holds something other than a stream (`WRONGTYPE`).
    #[error("the key is not a stream: {0}")]
    WrongType(String),
    #[error("Redis refused the command: {0}")]
    Rejected(String),
}

/// One stream entry: its id and its field/value pairs, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StreamEntry {
    pub stream: String,
    pub id: String,
    pub fields: Vec<(String, String)>,
}

impl StreamEntry {
    pub fn field(&self, name: &str) -> Option<&str> {
        self.fields
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
}

/// One outbox row to append to its stream (see [`Bus::append_outbox`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutboxAppend {
    /// The row's outbox seq; appended as the last field, `outbox_seq`.
    pub seq: i64,
    pub stream: String,
    pub fields: Vec<(String, String)>,
}

/// What one [`Bus::append_outbox`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AppendOutcome {
    /// The mark after the call: every seq up to it has been appended once.
    pub mark: i64,
    /// How many messages this call appended (the others were at or below
    /// the mark already).
    pub appended: usize,
}

/// The name of the field every outbox message carries its seq in.
pub const OUTBOX_SEQ_FIELD: &str = "outbox_seq";

#[async_trait]
pub trait Bus: Send + Sync + 'static {
    /// `XADD stream * field value …`; returns the new entry's id.
    async fn publish(&self, stream: &str, fields: &[(String, String)]) -> Result<String, BusError>;

    /// Appends outbox rows exactly once, atomically with the mark kept at
    /// `mark_key` (the highest seq appended so far; absent is 0). In ONE
    /// atomic step: each message, in the given order, whose seq is above
    /// the mark at that moment is appended to its stream as `fields…
    /// outbox_seq <seq>` and the mark moves to its seq; the others are
    /// skipped. A call repeated with the same messages (its reply was lost,
    /// or the process died before deleting the rows) appends nothing.
    /// Nothing is appended when a stream key holds something else
    /// (`WrongType`).
    async fn append_outbox(
        &self,
        mark_key: &str,
        messages: &[OutboxAppend],
    ) -> Result<AppendOutcome, BusError>;

    /// `XGROUP CREATE stream group 0 MKSTREAM`; an existing group is fine.
    async fn ensure_group(&self, stream: &str, group: &str) -> Result<(), BusError>;

    /// `XREADGROUP GROUP group consumer COUNT count BLOCK block STREAMS … >`:
    /// new entries for this consumer, waiting up to `block` for some (a zero
    /// block does not wait). `NoGroup` when a stream or its group is missing.
    async fn read_group(
        &self,
        streams: &[&str],
        group: &str,
        consumer: &str,
        count: usize,
        block: Duration,
    ) -> Result<Vec<StreamEntry>, BusError>;

    /// `XAUTOCLAIM stream group consumer min_idle 0-0 COUNT count`: takes
    /// over entries other (dead) consumers left pending for `min_idle`.
    /// `NoGroup` when the stream or the group is missing.
    async fn claim_stale(
        &self,
        stream: &str,
        group: &str,
        consumer: &str,
        min_idle: Duration,
        count: usize,
    ) -> Result<Vec<StreamEntry>, BusError>;

    /// `XACK stream group id …`.
    async fn ack(&self, stream: &str, group: &str, ids: &[String]) -> Result<(), BusError>;
}
