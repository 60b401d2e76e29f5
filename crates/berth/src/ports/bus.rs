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

#[async_trait]
pub trait Bus: Send + Sync + 'static {
    /// `XADD stream * field value …`; returns the new entry's id.
    async fn publish(&self, stream: &str, fields: &[(String, String)]) -> Result<String, BusError>;

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
