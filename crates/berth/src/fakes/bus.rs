//! An in-memory bus with the Redis Streams semantics the services rely on
//! (it passes `tests/bus_contract.rs` like `RedisBus`):
//! - `publish` appends with ids `<ms>-<seq>` from the clock, strictly
//!   ascending even when the clock stands still or goes back;
//! - a group starts at id 0 (it sees earlier entries) and creating it also
//!   creates the stream; creating it again is fine;
//! - `read_group` delivers entries newer than the group's last delivered
//!   one, `count` per stream, and records them as pending for the consumer
//!   with the delivery time; it waits up to `block` (tokio time, so paused
//!   tests do not sleep) for a publish;
//! - `claim_stale` moves entries pending at least `min_idle` to the
//!   claiming consumer, resetting their delivery time;
//! - a missing stream or group is `NoGroup` for reads and claims; `ack` of
//!   unknown ids is a no-op.
//!
//! Faults: [`FakeBus::set_unavailable`] fails every call (and wakes blocked
//! reads with the error), [`FakeBus::fail_next_publishes`] fails publishes.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use async_trait::async_trait;
use tokio::sync::Notify;

use crate::ports::bus::{
    AppendOutcome, Bus, BusError, OutboxAppend, StreamEntry, OUTBOX_SEQ_FIELD,
};
use crate::ports::Clock;

/// `<ms>-<seq>`, ordered numerically.
type EntryId = (u64, u64);

/// One entry a group delivered and nobody acknowledged yet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PendingEntry {
    pub id: String,
    pub consumer: String,
    /// Clock time (ms since the epoch) of the last delivery or claim.
    pub delivered_at_ms: i64,
    /// Deliveries so far (a claim counts as one).
    pub deliveries: u64,
}

#[derive(Default)]
struct Group {
    last_delivered: EntryId,
    pending: BTreeMap<EntryId, PendingEntry>,
}

#[derive(Default)]
struct Stream {
    entries: BTreeMap<EntryId, Vec<(String, String)>>,
    last_id: EntryId,
    groups: HashMap<String, Group>,
}

#[derive(Default)]
struct State {
    streams: HashMap<String, Stream>,
    unavailable: bool,
    failing_publishes: usize,
    /// Outbox appends left to fail before anything is applied.
    failing_appends: usize,
    /// Outbox appends left to be applied and then answered with an error
    /// (the reply was lost: a timeout, a broken connection).
    lost_append_replies: usize,
    /// The outbox marks, by key (`Bus::append_outbox`).
    marks: HashMap<String, i64>,
    blocked_readers: usize,
}

pub struct FakeBus {
    clock: Arc<dyn Clock>,
    state: Mutex<State>,
    /// Woken by every publish and fault change, for blocked reads.
    changed: Notify,
}

impl FakeBus {
    pub fn new(clock: Arc<dyn Clock>) -> Self {
        FakeBus {
            clock,
            state: Mutex::new(State::default()),
            changed: Notify::new(),
        }
    }

    fn state(&self) -> MutexGuard<'_, State> {
        // No method panics while holding the lock with the state half-changed.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// While `true`, every call fails with `Unavailable` (Redis is down);
    /// reads blocked at that moment fail too.
    pub fn set_unavailable(&self, unavailable: bool) {
        self.state().unavailable = unavailable;
        self.changed.notify_waiters();
    }

    /// The next `k` publishes fail with `Unavailable` (nothing is appended).
    pub fn fail_next_publishes(&self, k: usize) {
        self.state().failing_publishes = k;
    }

    /// The next `k` outbox appends fail with `Unavailable` before anything
    /// is applied.
    pub fn fail_next_appends(&self, k: usize) {
        self.state().failing_appends = k;
    }

    /// The next `k` outbox appends are applied in full and then fail with
    /// `Unavailable`: the caller cannot tell them from a failure.
    pub fn lose_next_append_replies(&self, k: usize) {
        self.state().lost_append_replies = k;
    }

    /// The outbox mark kept at `key` (absent: `None`).
    pub fn mark(&self, key: &str) -> Option<i64> {
        self.state().marks.get(key).copied()
    }

    /// Every entry of `stream`, oldest first (empty if there is no stream).
    pub fn entries(&self, stream: &str) -> Vec<StreamEntry> {
        self.state()
            .streams
            .get(stream)
            .map(|s| {
                s.entries
                    .iter()
                    .map(|(id, fields)| entry(stream, *id, fields))
                    .collect()
            })
            .unwrap_or_default()
    }

    /// The group's pending entries, by id (empty if there is no such group).
    pub fn pending(&self, stream: &str, group: &str) -> Vec<PendingEntry> {
        self.state()
            .streams
            .get(stream)
            .and_then(|s| s.groups.get(group))
            .map(|g| g.pending.values().cloned().collect())
            .unwrap_or_default()
    }

    /// Reads waiting in `read_group` for a publish right now.
    pub fn blocked_readers(&self) -> usize {
        self.state().blocked_readers
    }

    /// XADD `*` under the lock: the clock's ms, or the last ms with the next
    /// sequence number when the clock has not moved past it.
    fn append(
        state: &mut State,
        now_ms: u64,
        stream: &str,
        fields: Vec<(String, String)>,
    ) -> EntryId {
        let s = state.streams.entry(stream.to_owned()).or_default();
        let id = if now_ms > s.last_id.0 {
            (now_ms, 0)
        } else {
            (s.last_id.0, s.last_id.1 + 1)
        };
        s.last_id = id;
        s.entries.insert(id, fields);
        id
    }

    /// One non-blocking `XREADGROUP … >` over `streams`.
    fn read_now(
        state: &mut State,
        streams: &[&str],
        group: &str,
        consumer: &str,
        count: usize,
        now_ms: i64,
    ) -> Result<Vec<StreamEntry>, BusError> {
        // Like Redis, every group is checked before anything is delivered.
        for name in streams {
            group_of(state, name, group)?;
        }
        let mut out = Vec::new();
        for name in streams {
            let stream = state
                .streams
                .get_mut(*name)
                .expect("checked above: the stream exists");
            let g = stream
                .groups
                .get_mut(group)
                .expect("checked above: the group exists");
            let start = (g.last_delivered.0, g.last_delivered.1.saturating_add(1));
            let new: Vec<(EntryId, Vec<(String, String)>)> = stream
                .entries
                .range(start..)
                .take(count.max(1))
                .map(|(id, fields)| (*id, fields.clone()))
                .collect();
            for (id, fields) in new {
                g.last_delivered = id;
                g.pending.insert(
                    id,
                    PendingEntry {
                        id: format_id(id),
                        consumer: consumer.to_owned(),
                        delivered_at_ms: now_ms,
                        deliveries: 1,
                    },
                );
                out.push(entry(name, id, &fields));
            }
        }
        Ok(out)
    }
}

impl std::fmt::Debug for FakeBus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FakeBus").finish_non_exhaustive()
    }
}

fn format_id((ms, seq): EntryId) -> String {
    format!("{ms}-{seq}")
}

/// An id as Redis accepts it in XACK: `<ms>-<seq>` or `<ms>`.
fn parse_id(id: &str) -> Option<EntryId> {
    match id.split_once('-') {
        Some((ms, seq)) => Some((ms.parse().ok()?, seq.parse().ok()?)),
        None => Some((id.parse().ok()?, 0)),
    }
}

fn entry(stream: &str, id: EntryId, fields: &[(String, String)]) -> StreamEntry {
    StreamEntry {
        stream: stream.to_owned(),
        id: format_id(id),
        fields: fields.to_vec(),
    }
}

fn no_group(stream: &str, group: &str) -> BusError {
    BusError::NoGroup(format!(
        "no stream {stream:?} or consumer group {group:?} on it"
    ))
}

fn group_of<'a>(state: &'a State, stream: &str, group: &str) -> Result<&'a Group, BusError> {
    state
        .streams
        .get(stream)
        .and_then(|s| s.groups.get(group))
        .ok_or_else(|| no_group(stream, group))
}

fn check_available(state: &State) -> Result<(), BusError> {
    if state.unavailable {
        Err(BusError::Unavailable("fake bus: set unavailable".into()))
    } else {
        Ok(())
    }
}

/// Counts a read as blocked for as long as it waits.
struct BlockedReader<'a>(&'a FakeBus);

impl<'a> BlockedReader<'a> {
    fn enter(bus: &'a FakeBus) -> Self {
        bus.state().blocked_readers += 1;
        BlockedReader(bus)
    }
}

impl Drop for BlockedReader<'_> {
    fn drop(&mut self) {
        self.0.state().blocked_readers -= 1;
    }
}

#[async_trait]
impl Bus for FakeBus {
    async fn publish(&self, stream: &str, fields: &[(String, String)]) -> Result<String, BusError> {
        let now_ms = u64::try_from(self.clock.now_ms()).unwrap_or(0);
        let id = {
            let mut state = self.state();
            check_available(&state)?;
            if state.failing_publishes > 0 {
                state.failing_publishes -= 1;
                return Err(BusError::Unavailable(
                    "fake bus: publish set to fail".into(),
                ));
            }
            Self::append(&mut state, now_ms, stream, fields.to_vec())
        };
        self.changed.notify_waiters();
        Ok(format_id(id))
    }

    async fn append_outbox(
        &self,
        mark_key: &str,
        messages: &[OutboxAppend],
    ) -> Result<AppendOutcome, BusError> {
        let now_ms = u64::try_from(self.clock.now_ms()).unwrap_or(0);
        let outcome = {
            // One lock for the whole call: as atomic as the Redis script.
            let mut state = self.state();
            check_available(&state)?;
            if state.failing_appends > 0 {
                state.failing_appends -= 1;
                return Err(BusError::Unavailable(
                    "fake bus: outbox append set to fail".into(),
                ));
            }
            // Like the script: every key's type before anything is written.
            if state.streams.contains_key(mark_key) {
                return Err(BusError::WrongType(format!(
                    "{mark_key} holds a stream, not a mark"
                )));
            }
            if let Some(m) = messages
                .iter()
                .find(|m| state.marks.contains_key(&m.stream))
            {
                return Err(BusError::WrongType(format!(
                    "{} holds a mark, not a stream",
                    m.stream
                )));
            }
            let mut mark = state.marks.get(mark_key).copied().unwrap_or(0);
            let mut appended = 0;
            for m in messages {
                if m.seq <= mark {
                    continue;
                }
                let mut fields = m.fields.clone();
                fields.push((OUTBOX_SEQ_FIELD.to_owned(), m.seq.to_string()));
                Self::append(&mut state, now_ms, &m.stream, fields);
                mark = m.seq;
                appended += 1;
            }
            // Like SET in the script: only once something was appended.
            if appended > 0 {
                state.marks.insert(mark_key.to_owned(), mark);
            }
            if state.lost_append_replies > 0 {
                state.lost_append_replies -= 1;
                drop(state);
                self.changed.notify_waiters();
                return Err(BusError::Unavailable(
                    "fake bus: the outbox append's reply was lost".into(),
                ));
            }
            AppendOutcome { mark, appended }
        };
        self.changed.notify_waiters();
        Ok(outcome)
    }

    async fn ensure_group(&self, stream: &str, group: &str) -> Result<(), BusError> {
        let mut state = self.state();
        check_available(&state)?;
        state
            .streams
            .entry(stream.to_owned())
            .or_default()
            .groups
            .entry(group.to_owned())
            .or_default();
        Ok(())
    }

    async fn read_group(
        &self,
        streams: &[&str],
        group: &str,
        consumer: &str,
        count: usize,
        block: Duration,
    ) -> Result<Vec<StreamEntry>, BusError> {
        if streams.is_empty() {
            return Ok(Vec::new());
        }
        let deadline = tokio::time::Instant::now() + block;
        let mut blocked = None;
        loop {
            // Registered before looking, so a publish in between is not missed.
            let changed = self.changed.notified();
            tokio::pin!(changed);
            changed.as_mut().enable();
            {
                let mut state = self.state();
                check_available(&state)?;
                let got = Self::read_now(
                    &mut state,
                    streams,
                    group,
                    consumer,
                    count,
                    self.clock.now_ms(),
                )?;
                if !got.is_empty() || block.is_zero() {
                    return Ok(got);
                }
            }
            if blocked.is_none() {
                blocked = Some(BlockedReader::enter(self));
            }
            if tokio::time::timeout_at(deadline, changed).await.is_err() {
                return Ok(Vec::new());
            }
        }
    }

    async fn claim_stale(
        &self,
        stream: &str,
        group: &str,
        consumer: &str,
        min_idle: Duration,
        count: usize,
    ) -> Result<Vec<StreamEntry>, BusError> {
        let now_ms = self.clock.now_ms();
        let min_idle_ms = i64::try_from(min_idle.as_millis()).unwrap_or(i64::MAX);
        let mut state = self.state();
        check_available(&state)?;
        group_of(&state, stream, group)?;
        let s = state
            .streams
            .get_mut(stream)
            .expect("checked above: the stream exists");
        let g = s
            .groups
            .get_mut(group)
            .expect("checked above: the group exists");
        let mut claimed = Vec::new();
        for (id, pending) in g.pending.iter_mut() {
            if claimed.len() == count.max(1) {
                break;
            }
            if now_ms.saturating_sub(pending.delivered_at_ms) < min_idle_ms {
                continue;
            }
            pending.consumer = consumer.to_owned();
            pending.delivered_at_ms = now_ms;
            pending.deliveries += 1;
            claimed.push(*id);
        }
        Ok(claimed
            .into_iter()
            .map(|id| entry(stream, id, &s.entries[&id]))
            .collect())
    }

    async fn ack(&self, stream: &str, group: &str, ids: &[String]) -> Result<(), BusError> {
        let mut state = self.state();
        check_available(&state)?;
        if let Some(g) = state
            .streams
            .get_mut(stream)
            .and_then(|s| s.groups.get_mut(group))
        {
            for id in ids.iter().filter_map(|id| parse_id(id)) {
                g.pending.remove(&id);
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fakes::FakeClock;

    fn fields(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    #[tokio::test(start_paused = true)]
    async fn ids_ascend_within_one_millisecond_and_follow_the_clock() {
        let clock = Arc::new(FakeClock::at(1_000));
        let bus = FakeBus::new(clock.clone());
        let one = fields(&[("k", "v")]);
        assert_eq!(bus.publish("s", &one).await.unwrap(), "1000-0");
        assert_eq!(bus.publish("s", &one).await.unwrap(), "1000-1");
        clock.advance(Duration::from_millis(5));
        assert_eq!(bus.publish("s", &one).await.unwrap(), "1005-0");
        // Another stream has its own sequence.
        assert_eq!(bus.publish("t", &one).await.unwrap(), "1005-0");
        assert_eq!(bus.entries("s").len(), 3);
    }

    #[tokio::test(start_paused = true)]
    async fn a_blocked_read_waits_in_paused_time_and_wakes_on_publish() {
        let bus = Arc::new(FakeBus::new(Arc::new(FakeClock::default())));
        bus.ensure_group("s", "g").await.unwrap();

        // Nothing comes: the whole block passes (in paused time), empty.
        let started = tokio::time::Instant::now();
        let got = bus
            .read_group(&["s"], "g", "c", 10, Duration::from_secs(3600))
            .await
            .unwrap();
        assert!(got.is_empty());
        assert_eq!(started.elapsed(), Duration::from_secs(3600));
        assert_eq!(bus.blocked_readers(), 0);

        let reader = tokio::spawn({
            let bus = Arc::clone(&bus);
            async move {
                bus.read_group(&["s"], "g", "c", 10, Duration::from_secs(3600))
                    .await
            }
        });
        while bus.blocked_readers() == 0 {
            tokio::task::yield_now().await;
        }
        let id = bus.publish("s", &fields(&[("k", "v")])).await.unwrap();
        let got = reader.await.unwrap().unwrap();
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].id, id);
        assert_eq!(bus.pending("s", "g")[0].consumer, "c");
    }

    #[tokio::test(start_paused = true)]
    async fn faults_fail_calls_and_wake_blocked_reads() {
        let bus = Arc::new(FakeBus::new(Arc::new(FakeClock::default())));
        bus.ensure_group("s", "g").await.unwrap();
        let one = fields(&[("k", "v")]);

        bus.fail_next_publishes(2);
        for _ in 0..2 {
            assert!(matches!(
                bus.publish("s", &one).await,
                Err(BusError::Unavailable(_))
            ));
        }
        bus.publish("s", &one).await.unwrap();
        assert_eq!(bus.entries("s").len(), 1, "failed publishes append nothing");

        bus.read_group(&["s"], "g", "c", 10, Duration::ZERO)
            .await
            .unwrap();
        let reader = tokio::spawn({
            let bus = Arc::clone(&bus);
            async move {
                bus.read_group(&["s"], "g", "late", 10, Duration::from_secs(3600))
                    .await
            }
        });
        while bus.blocked_readers() == 0 {
            tokio::task::yield_now().await;
        }
        bus.set_unavailable(true);
        assert!(matches!(
            reader.await.unwrap(),
            Err(BusError::Unavailable(_))
        ));
        assert!(matches!(
            bus.ensure_group("s", "g").await,
            Err(BusError::Unavailable(_))
        ));
        bus.set_unavailable(false);
        bus.ensure_group("s", "g").await.unwrap();
    }

    #[tokio::test(start_paused = true)]
    async fn a_claim_resets_the_idle_time_and_counts_a_delivery() {
        let clock = Arc::new(FakeClock::default());
        let bus = FakeBus::new(clock.clone());
        bus.ensure_group("s", "g").await.unwrap();
        let id = bus.publish("s", &fields(&[("k", "v")])).await.unwrap();
        bus.read_group(&["s"], "g", "a", 10, Duration::ZERO)
            .await
            .unwrap();
        let idle = Duration::from_secs(30);
        clock.advance(idle);
        let claimed = bus.claim_stale("s", "g", "b", idle, 10).await.unwrap();
        assert_eq!(claimed.len(), 1);
        assert!(bus
            .claim_stale("s", "g", "a", idle, 10)
            .await
            .unwrap()
            .is_empty());
        let pending = bus.pending("s", "g");
        assert_eq!(
            pending,
            vec![PendingEntry {
                id,
                consumer: "b".into(),
                delivered_at_ms: clock.now_ms(),
                deliveries: 2,
            }]
        );
    }
}
