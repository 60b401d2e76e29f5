//! The `Bus` contract: one suite, run against `RedisBus` on a real Redis
//! (`BERTH_TEST_REDIS_URL`; fails without it) and against `FakeBus`.
//!
//! Each case in `cases` is an async fn taking a [`Ctx`]; the `contract!`
//! macro turns it into `real::<case>` (on Redis) and `fake::<case>` tests. On Redis a
//! case's streams share a fresh prefix, deleted afterwards. The fake runs
//! in paused tokio time with a `FakeClock`, so it never really waits.

use crate::common;

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use berth::adapters::redis_bus::RedisBus;
use berth::fakes::{FakeBus, FakeClock};
use berth::ports::bus::{AppendOutcome, Bus, BusError, OutboxAppend, StreamEntry};
use futures_util::FutureExt;

// --- harness ----------------------------------------------------------------

enum Backend {
    Redis {
        url: String,
    },
    Fake {
        bus: Arc<FakeBus>,
        clock: Arc<FakeClock>,
    },
}

/// What a case gets: the bus under test, and side doors to the backend.
struct Ctx {
    bus: Arc<dyn Bus>,
    prefix: String,
    backend: Backend,
}

impl Ctx {
    /// A stream name private to this case.
    fn stream(&self, name: &str) -> String {
        format!("{}:{name}", self.prefix)
    }

    /// Lets at least `d` pass for idle times: the fake's clock jumps; on
    /// Redis time runs by itself, and the cases poll until it has.
    fn elapse(&self, d: Duration) {
        if let Backend::Fake { clock, .. } = &self.backend {
            clock.advance(d);
        }
    }

    /// The group's pending entries as (id, consumer), by id.
    async fn pending(&self, stream: &str, group: &str) -> Vec<(String, String)> {
        match &self.backend {
            Backend::Fake { bus, .. } => bus
                .pending(stream, group)
                .into_iter()
                .map(|p| (p.id, p.consumer))
                .collect(),
            Backend::Redis { url } => {
                let mut conn = raw(url).await;
                // XPENDING stream group - + count → [[id, consumer, idle, deliveries], …]
                let rows: Vec<(String, String, u64, u64)> = redis::cmd("XPENDING")
                    .arg(stream)
                    .arg(group)
                    .arg("-")
                    .arg("+")
                    .arg(1000)
                    .query_async(&mut conn)
                    .await
                    .expect("XPENDING");
                rows.into_iter().map(|(id, c, _, _)| (id, c)).collect()
            }
        }
    }

    /// Waits until a read is blocked waiting for entries. On the shared
    /// Redis any client's blocked XREADGROUP counts (other cases run at the
    /// same time), which can only make a case prove less, never fail.
    async fn until_a_read_blocks(&self) {
        match &self.backend {
            Backend::Fake { bus, .. } => {
                while bus.blocked_readers() == 0 {
                    tokio::task::yield_now().await;
                }
            }
            Backend::Redis { url } => {
                common::eventually("a blocked XREADGROUP", async || {
                    let mut conn = raw(url).await;
                    let clients: String = redis::cmd("CLIENT")
                        .arg("LIST")
                        .query_async(&mut conn)
                        .await
                        .expect("CLIENT LIST");
                    clients
                        .lines()
                        .any(|line| {
                            let words: Vec<&str> = line.split(' ').collect();
                            words.contains(&"cmd=xreadgroup")
                                && words.iter().any(|w| {
                                    w.strip_prefix("flags=").is_some_and(|f| f.contains('b'))
                                })
                        })
                        .then_some(())
                })
                .await
            }
        }
    }
}

impl Ctx {
    /// Every entry of `stream`, oldest first (XRANGE on Redis).
    async fn all_entries(&self, stream: &str) -> Vec<StreamEntry> {
        match &self.backend {
            Backend::Fake { bus, .. } => bus.entries(stream),
            Backend::Redis { url } => {
                let mut conn = raw(url).await;
                let rows: Vec<(String, Vec<(String, String)>)> = redis::cmd("XRANGE")
                    .arg(stream)
                    .arg("-")
                    .arg("+")
                    .query_async(&mut conn)
                    .await
                    .expect("XRANGE");
                rows.into_iter()
                    .map(|(id, fields)| StreamEntry {
                        stream: stream.to_owned(),
                        id,
                        fields,
                    })
                    .collect()
            }
        }
    }

    /// Empties Redis's script cache, as a restart of Redis does (the bus
    /// then finds NOSCRIPT and falls back to EVAL); nothing on the fake.
    async fn flush_scripts(&self) {
        if let Backend::Redis { url } = &self.backend {
            let mut conn = raw(url).await;
            let _: () = redis::cmd("SCRIPT")
                .arg("FLUSH")
                .query_async(&mut conn)
                .await
                .expect("SCRIPT FLUSH");
        }
    }

    /// The mark stored at `key`, read behind the bus's back.
    async fn mark(&self, key: &str) -> Option<i64> {
        match &self.backend {
            Backend::Fake { bus, .. } => bus.mark(key),
            Backend::Redis { url } => {
                let mut conn = raw(url).await;
                redis::cmd("GET")
                    .arg(key)
                    .query_async(&mut conn)
                    .await
                    .expect("GET")
            }
        }
    }
}

fn redis_url() -> String {
    std::env::var("BERTH_TEST_REDIS_URL").unwrap_or_else(|_| {
        panic!(
            "BERTH_TEST_REDIS_URL is not set: the bus contract needs a Redis. \
             Run `eval \"$(bash scripts/test-env.sh --env-only)\"` first."
        )
    })
}

async fn raw(url: &str) -> redis::aio::MultiplexedConnection {
    redis::Client::open(url)
        .expect("valid url")
        .get_multiplexed_async_connection()
        .await
        .expect("raw connection")
}

/// Deletes every key under `prefix`.
async fn delete_prefix(url: &str, prefix: &str) {
    let mut conn = raw(url).await;
    let keys: Vec<String> = redis::cmd("KEYS")
        .arg(format!("{prefix}:*"))
        .query_async(&mut conn)
        .await
        .expect("KEYS");
    if !keys.is_empty() {
        let _: i64 = redis::cmd("DEL")
            .arg(&keys)
            .query_async(&mut conn)
            .await
            .expect("DEL");
    }
}

async fn run_redis<F, Fut>(case: F)
where
    F: FnOnce(Ctx) -> Fut,
    Fut: Future<Output = ()>,
{
    let url = redis_url();
    let prefix = format!("bc:{}", uuid::Uuid::now_v7().simple());
    let bus = RedisBus::connect(&url)
        .await
        .expect("connect to the test Redis");
    let result = std::panic::AssertUnwindSafe(case(Ctx {
        bus: Arc::new(bus),
        prefix: prefix.clone(),
        backend: Backend::Redis { url: url.clone() },
    }))
    .catch_unwind()
    .await;
    delete_prefix(&url, &prefix).await;
    if let Err(panic) = result {
        std::panic::resume_unwind(panic);
    }
}

async fn run_fake<F, Fut>(case: F)
where
    F: FnOnce(Ctx) -> Fut,
    Fut: Future<Output = ()>,
{
    let clock = Arc::new(FakeClock::default());
    let bus = Arc::new(FakeBus::new(clock.clone()));
    case(Ctx {
        bus: bus.clone(),
        prefix: "fake".into(),
        backend: Backend::Fake { bus, clock },
    })
    .await
}

macro_rules! contract {
    ($($case:ident),+ $(,)?) => {
        mod real {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $case() {
                    super::run_redis(super::cases::$case).await
                }
            )+
        }
        mod fake {
            $(
                #[tokio::test(start_paused = true)]
                async fn $case() {
                    super::run_fake(super::cases::$case).await
                }
            )+
        }
    };
}

contract!(
    publish_keeps_order_and_repeated_fields,
    ensure_group_is_idempotent_and_starts_at_the_beginning,
    each_group_gets_each_entry_once,
    two_consumers_split_the_entries,
    ack_removes_entries_from_pending,
    claim_stale_takes_over_idle_entries,
    a_blocked_read_wakes_on_publish,
    missing_stream_or_group_is_no_group,
    append_outbox_appends_above_the_mark_only_and_tags_each_seq,
    a_repeated_append_appends_nothing,
    separate_marks_are_kept_separately,
    an_append_keeps_the_given_order_across_streams,
    an_append_to_a_key_of_another_type_appends_nothing,
);

// --- helpers of the cases ---------------------------------------------------

fn fields(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
    pairs
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect()
}

/// `ms-seq` as a pair, to compare ids numerically.
fn id_key(id: &str) -> (u64, u64) {
    let (ms, seq) = id.split_once('-').expect("stream id has a dash");
    (ms.parse().expect("ms"), seq.parse().expect("seq"))
}

fn ids(entries: &[StreamEntry]) -> Vec<String> {
    entries.iter().map(|e| e.id.clone()).collect()
}

/// A non-blocking read; the outer bound only keeps a read that wrongly
/// blocks (BLOCK 0 waits forever) from hanging the suite.
async fn read_now(
    bus: &dyn Bus,
    streams: &[&str],
    group: &str,
    consumer: &str,
    count: usize,
) -> Result<Vec<StreamEntry>, BusError> {
    tokio::time::timeout(
        Duration::from_secs(30),
        bus.read_group(streams, group, consumer, count, Duration::ZERO),
    )
    .await
    .expect("a zero block does not wait")
}

fn outbox(seq: i64, stream: &str, pairs: &[(&str, &str)]) -> OutboxAppend {
    OutboxAppend {
        seq,
        stream: stream.to_owned(),
        fields: fields(pairs),
    }
}

/// The `outbox_seq` values of `entries`, in order.
fn seqs(entries: &[StreamEntry]) -> Vec<i64> {
    entries
        .iter()
        .map(|e| {
            e.field("outbox_seq")
                .expect("every outbox message carries outbox_seq")
                .parse()
                .expect("a number")
        })
        .collect()
}

// --- the cases --------------------------------------------------------------

mod cases {
    use super::*;

    pub async fn publish_keeps_order_and_repeated_fields(ctx: Ctx) {
        let bus = &*ctx.bus;
        let jobs = ctx.stream("jobs");
        let other = ctx.stream("other");
        bus.ensure_group(&jobs, "g").await.unwrap();
        bus.ensure_group(&other, "g").await.unwrap();

        // Repeated names and empty values are kept as given, in order.
        let first = fields(&[("z", "1"), ("a", "{\"json\": true}"), ("z", "2"), ("m", "")]);
        let id1 = bus.publish(&jobs, &first).await.unwrap();
        let mut published = vec![id1.clone()];
        for i in 0..5 {
            published.push(
                bus.publish(&jobs, &fields(&[("n", &i.to_string())]))
                    .await
                    .unwrap(),
            );
        }
        let id_other = bus.publish(&other, &fields(&[("k", "v")])).await.unwrap();
        // Strictly ascending, also within one millisecond.
        for pair in published.windows(2) {
            assert!(id_key(&pair[0]) < id_key(&pair[1]), "{pair:?}");
        }

        let got = read_now(bus, &[&jobs, &other], "g", "c", 100)
            .await
            .unwrap();
        assert_eq!(got.len(), 7, "{got:?}");
        assert_eq!(
            got[0],
            StreamEntry {
                stream: jobs.clone(),
                id: id1,
                fields: first
            }
        );
        assert_eq!(got[0].field("z"), Some("1"), "the first of a repeated name");
        assert_eq!(ids(&got[..6]), published);
        assert_eq!(got[3].field("n"), Some("2"));
        assert_eq!(got[6].stream, other);
        assert_eq!(got[6].id, id_other);

        // COUNT applies per stream.
        for i in 0..3 {
            bus.publish(&jobs, &fields(&[("more", &i.to_string())]))
                .await
                .unwrap();
            bus.publish(&other, &fields(&[("more", &i.to_string())]))
                .await
                .unwrap();
        }
        let two_each = read_now(bus, &[&jobs, &other], "g", "c", 2).await.unwrap();
        let streams: Vec<&str> = two_each.iter().map(|e| e.stream.as_str()).collect();
        assert_eq!(streams, [&jobs, &jobs, &other, &other]);
        assert_eq!(two_each[0].field("more"), Some("0"));
        assert_eq!(two_each[1].field("more"), Some("1"));
        assert!(read_now(bus, &[], "g", "c", 2).await.unwrap().is_empty());
    }

    pub async fn ensure_group_is_idempotent_and_starts_at_the_beginning(ctx: Ctx) {
        let bus = &*ctx.bus;
        let jobs = ctx.stream("jobs");

        // Published before the group exists: the group starts at id 0.
        let early = bus
            .publish(&jobs, &fields(&[("job_id", "early")]))
            .await
            .unwrap();
        bus.ensure_group(&jobs, "g").await.unwrap();
        bus.ensure_group(&jobs, "g")
            .await
            .expect("an existing group is fine");
        assert_eq!(
            ids(&read_now(bus, &[&jobs], "g", "c", 10).await.unwrap()),
            vec![early]
        );
        // Creating it again does not rewind it.
        bus.ensure_group(&jobs, "g").await.unwrap();
        assert!(read_now(bus, &[&jobs], "g", "c", 10)
            .await
            .unwrap()
            .is_empty());

        // MKSTREAM: a group on a stream that does not exist yet can be read.
        let fresh = ctx.stream("fresh");
        bus.ensure_group(&fresh, "g").await.unwrap();
        assert!(read_now(bus, &[&fresh], "g", "c", 10)
            .await
            .unwrap()
            .is_empty());
        let id = bus.publish(&fresh, &fields(&[("k", "v")])).await.unwrap();
        assert_eq!(
            ids(&read_now(bus, &[&fresh], "g", "c", 10).await.unwrap()),
            vec![id]
        );
    }

    pub async fn each_group_gets_each_entry_once(ctx: Ctx) {
        let bus = &*ctx.bus;
        let jobs = ctx.stream("jobs");
        bus.ensure_group(&jobs, "g1").await.unwrap();
        bus.ensure_group(&jobs, "g2").await.unwrap();
        let a = bus.publish(&jobs, &fields(&[("n", "a")])).await.unwrap();
        let b = bus.publish(&jobs, &fields(&[("n", "b")])).await.unwrap();

        for group in ["g1", "g2"] {
            let got = read_now(bus, &[&jobs], group, "c", 10).await.unwrap();
            assert_eq!(ids(&got), vec![a.clone(), b.clone()], "{group}");
        }
        // `>`: delivered entries are not delivered again, to any consumer.
        assert!(read_now(bus, &[&jobs], "g1", "c", 10)
            .await
            .unwrap()
            .is_empty());
        assert!(read_now(bus, &[&jobs], "g1", "other", 10)
            .await
            .unwrap()
            .is_empty());

        let c = bus.publish(&jobs, &fields(&[("n", "c")])).await.unwrap();
        assert_eq!(
            ids(&read_now(bus, &[&jobs], "g1", "other", 10).await.unwrap()),
            vec![c.clone()]
        );
        assert_eq!(
            ids(&read_now(bus, &[&jobs], "g2", "c", 10).await.unwrap()),
            vec![c]
        );
    }

    pub async fn two_consumers_split_the_entries(ctx: Ctx) {
        let bus = &*ctx.bus;
        let jobs = ctx.stream("jobs");
        bus.ensure_group(&jobs, "g").await.unwrap();
        let mut published = Vec::new();
        for i in 0..20 {
            published.push(
                bus.publish(&jobs, &fields(&[("n", &i.to_string())]))
                    .await
                    .unwrap(),
            );
        }

        // Taking turns in small batches until the group is drained.
        let mut seen: Vec<(String, &str)> = Vec::new();
        loop {
            let mut drained = true;
            for consumer in ["a", "b"] {
                let batch = read_now(bus, &[&jobs], "g", consumer, 3).await.unwrap();
                drained &= batch.is_empty();
                seen.extend(batch.into_iter().map(|e| (e.id, consumer)));
            }
            if drained {
                break;
            }
        }
        assert!(seen.iter().any(|(_, c)| *c == "a"));
        assert!(seen.iter().any(|(_, c)| *c == "b"));
        let mut all: Vec<String> = seen.iter().map(|(id, _)| id.clone()).collect();
        all.sort_by_key(|id| id_key(id));
        assert_eq!(all, published, "each entry exactly once");

        // Each is pending for the consumer it was delivered to.
        let mut expected: Vec<(String, String)> =
            seen.into_iter().map(|(id, c)| (id, c.to_owned())).collect();
        expected.sort_by_key(|(id, _)| id_key(id));
        assert_eq!(ctx.pending(&jobs, "g").await, expected);
    }

    pub async fn ack_removes_entries_from_pending(ctx: Ctx) {
        let bus = &*ctx.bus;
        let jobs = ctx.stream("jobs");
        bus.ensure_group(&jobs, "g").await.unwrap();
        let a = bus.publish(&jobs, &fields(&[("n", "a")])).await.unwrap();
        let b = bus.publish(&jobs, &fields(&[("n", "b")])).await.unwrap();
        read_now(bus, &[&jobs], "g", "c", 10).await.unwrap();
        assert_eq!(
            ctx.pending(&jobs, "g").await,
            vec![(a.clone(), "c".to_owned()), (b.clone(), "c".to_owned())]
        );

        bus.ack(&jobs, "g", &[])
            .await
            .expect("empty ack is a no-op");
        bus.ack(&jobs, "g", std::slice::from_ref(&a)).await.unwrap();
        assert_eq!(
            ctx.pending(&jobs, "g").await,
            vec![(b.clone(), "c".to_owned())]
        );
        // Acknowledging again, or an id never delivered, changes nothing.
        bus.ack(&jobs, "g", &[a.clone(), "1-0".to_owned()])
            .await
            .unwrap();
        assert_eq!(
            ctx.pending(&jobs, "g").await,
            vec![(b.clone(), "c".to_owned())]
        );
        bus.ack(&jobs, "g", &[b]).await.unwrap();
        assert!(ctx.pending(&jobs, "g").await.is_empty());
        // Acknowledged entries are not delivered again, nor claimable.
        assert!(read_now(bus, &[&jobs], "g", "c", 10)
            .await
            .unwrap()
            .is_empty());
        assert!(bus
            .claim_stale(&jobs, "g", "d", Duration::ZERO, 10)
            .await
            .unwrap()
            .is_empty());
    }

    pub async fn claim_stale_takes_over_idle_entries(ctx: Ctx) {
        let bus = &*ctx.bus;
        let jobs = ctx.stream("jobs");
        bus.ensure_group(&jobs, "g").await.unwrap();
        let first = fields(&[("job_id", "j1"), ("runtime_id", "r1")]);
        let one = bus.publish(&jobs, &first).await.unwrap();
        let two = bus
            .publish(&jobs, &fields(&[("job_id", "j2")]))
            .await
            .unwrap();
        assert!(bus
            .claim_stale(&jobs, "g", "b", Duration::ZERO, 10)
            .await
            .unwrap()
            .is_empty());

        // Consumer a takes both and dies without acknowledging.
        read_now(bus, &[&jobs], "g", "a", 10).await.unwrap();
        let long = Duration::from_secs(3600);
        assert!(
            bus.claim_stale(&jobs, "g", "b", long, 10)
                .await
                .unwrap()
                .is_empty(),
            "not idle long enough"
        );

        let idle = Duration::from_millis(50);
        ctx.elapse(idle);
        // Both were delivered at once, so the oldest comes first, COUNT at a time.
        let claimed = common::eventually("entries idle for 50 ms", async || {
            let got = bus.claim_stale(&jobs, "g", "b", idle, 1).await.unwrap();
            (!got.is_empty()).then_some(got)
        })
        .await;
        assert_eq!(
            claimed,
            vec![StreamEntry {
                stream: jobs.clone(),
                id: one.clone(),
                fields: first
            }]
        );
        let rest = bus.claim_stale(&jobs, "g", "b", idle, 10).await.unwrap();
        assert_eq!(ids(&rest), vec![two.clone()]);
        assert_eq!(
            ctx.pending(&jobs, "g").await,
            vec![(one.clone(), "b".to_owned()), (two.clone(), "b".to_owned())]
        );
        // Claimed entries are not new to the group.
        assert!(read_now(bus, &[&jobs], "g", "a", 10)
            .await
            .unwrap()
            .is_empty());

        bus.ack(&jobs, "g", &[one, two]).await.unwrap();
        assert!(ctx.pending(&jobs, "g").await.is_empty());
    }

    pub async fn a_blocked_read_wakes_on_publish(ctx: Ctx) {
        let jobs = ctx.stream("jobs");
        ctx.bus.ensure_group(&jobs, "g").await.unwrap();

        // Nothing published: the block passes, and the answer is empty.
        let got = ctx
            .bus
            .read_group(&[&jobs], "g", "c", 10, Duration::from_millis(100))
            .await
            .unwrap();
        assert!(got.is_empty(), "{got:?}");

        // A long block: were the publish not to wake it, the read would end
        // empty (and the case fail) rather than pass.
        let reader = {
            let bus = Arc::clone(&ctx.bus);
            let jobs = jobs.clone();
            tokio::spawn(async move {
                bus.read_group(&[&jobs], "g", "c", 10, Duration::from_secs(30))
                    .await
            })
        };
        ctx.until_a_read_blocks().await;
        let id = ctx
            .bus
            .publish(&jobs, &fields(&[("job_id", "late")]))
            .await
            .unwrap();
        let got = reader.await.unwrap().unwrap();
        assert_eq!(ids(&got), vec![id]);
        assert_eq!(got[0].field("job_id"), Some("late"));
    }

    pub async fn missing_stream_or_group_is_no_group(ctx: Ctx) {
        let bus = &*ctx.bus;
        let missing = ctx.stream("missing");
        let jobs = ctx.stream("jobs");
        bus.publish(&jobs, &fields(&[("k", "v")])).await.unwrap();
        bus.ensure_group(&jobs, "g").await.unwrap();

        let no_group = |r: Result<Vec<StreamEntry>, BusError>| {
            assert!(matches!(r, Err(BusError::NoGroup(_))), "{r:?}");
        };
        no_group(read_now(bus, &[&missing], "g", "c", 1).await);
        no_group(read_now(bus, &[&jobs], "other", "c", 1).await);
        // One missing group fails the whole read, and delivers nothing.
        no_group(read_now(bus, &[&jobs, &missing], "g", "c", 1).await);
        no_group(bus.claim_stale(&missing, "g", "c", Duration::ZERO, 1).await);
        no_group(
            bus.claim_stale(&jobs, "other", "c", Duration::ZERO, 1)
                .await,
        );
        // Acknowledging on a missing group is a no-op, as XACK is.
        bus.ack(&missing, "g", &["1-0".to_owned()]).await.unwrap();

        // Creating the group is the cure.
        bus.ensure_group(&missing, "g").await.unwrap();
        let got = read_now(bus, &[&jobs, &missing], "g", "c", 10)
            .await
            .unwrap();
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].stream, jobs);
    }

    pub async fn append_outbox_appends_above_the_mark_only_and_tags_each_seq(ctx: Ctx) {
        let bus = &*ctx.bus;
        let results = ctx.stream("results");
        let mark = ctx.stream("outbox:high_water");
        assert_eq!(
            ctx.mark(&mark).await,
            None,
            "no mark before the first append"
        );

        // Nothing to append: the mark (absent is 0) comes back, nothing is set.
        let none = bus.append_outbox(&mark, &[]).await.unwrap();
        assert_eq!(
            none,
            AppendOutcome {
                mark: 0,
                appended: 0
            }
        );
        assert_eq!(ctx.mark(&mark).await, None);

        let first = [
            outbox(3, &results, &[("job_id", "a"), ("k", "v")]),
            outbox(4, &results, &[("job_id", "b")]),
        ];
        let got = bus.append_outbox(&mark, &first).await.unwrap();
        assert_eq!(
            got,
            AppendOutcome {
                mark: 4,
                appended: 2
            }
        );
        assert_eq!(ctx.mark(&mark).await, Some(4));
        let entries = ctx.all_entries(&results).await;
        assert_eq!(entries.len(), 2, "{entries:?}");
        // The message's own fields first, in order, then outbox_seq last.
        assert_eq!(
            entries[0].fields,
            fields(&[("job_id", "a"), ("k", "v"), ("outbox_seq", "3")])
        );
        assert_eq!(
            entries[1].fields,
            fields(&[("job_id", "b"), ("outbox_seq", "4")])
        );

        // A batch straddling the mark: only what is above it goes.
        let straddling = [
            outbox(2, &results, &[("job_id", "old")]),
            outbox(4, &results, &[("job_id", "b")]),
            outbox(5, &results, &[("job_id", "c")]),
            outbox(9, &results, &[("job_id", "d")]),
        ];
        let got = bus.append_outbox(&mark, &straddling).await.unwrap();
        assert_eq!(
            got,
            AppendOutcome {
                mark: 9,
                appended: 2
            }
        );
        let entries = ctx.all_entries(&results).await;
        assert_eq!(seqs(&entries), [3, 4, 5, 9]);
        assert_eq!(entries[2].field("job_id"), Some("c"));

        // Out of order within a call: a seq below one already appended in
        // the same call is at or below the mark by then, so it is skipped.
        let unordered = [
            outbox(12, &results, &[("job_id", "e")]),
            outbox(11, &results, &[("job_id", "f")]),
        ];
        let got = bus.append_outbox(&mark, &unordered).await.unwrap();
        assert_eq!(
            got,
            AppendOutcome {
                mark: 12,
                appended: 1
            }
        );
        assert_eq!(seqs(&ctx.all_entries(&results).await), [3, 4, 5, 9, 12]);
        assert_eq!(ctx.mark(&mark).await, Some(12));
    }

    pub async fn a_repeated_append_appends_nothing(ctx: Ctx) {
        let bus = &*ctx.bus;
        let results = ctx.stream("results");
        let events = ctx.stream("events");
        let mark = ctx.stream("outbox:high_water");
        let batch: Vec<OutboxAppend> = (1..=10)
            .map(|seq| {
                let stream = if seq % 3 == 0 { &events } else { &results };
                outbox(seq, stream, &[("n", &seq.to_string())])
            })
            .collect();
        let first = bus.append_outbox(&mark, &batch).await.unwrap();
        assert_eq!(
            first,
            AppendOutcome {
                mark: 10,
                appended: 10
            }
        );
        // The relay's retry after a lost reply, or after a kill before it
        // deleted the rows: the same batch again, several times.
        for _ in 0..3 {
            ctx.flush_scripts().await;
            let again = bus.append_outbox(&mark, &batch).await.unwrap();
            assert_eq!(
                again,
                AppendOutcome {
                    mark: 10,
                    appended: 0
                }
            );
        }
        assert_eq!(
            seqs(&ctx.all_entries(&results).await),
            [1, 2, 4, 5, 7, 8, 10]
        );
        assert_eq!(seqs(&ctx.all_entries(&events).await), [3, 6, 9]);
        assert_eq!(ctx.mark(&mark).await, Some(10));
    }

    pub async fn separate_marks_are_kept_separately(ctx: Ctx) {
        let bus = &*ctx.bus;
        let results = ctx.stream("results");
        let old_db = ctx.stream("outbox:db-old:high_water");
        let new_db = ctx.stream("outbox:db-new:high_water");
        let batch: Vec<OutboxAppend> = (1..=5)
            .map(|seq| outbox(seq, &results, &[("from", "old")]))
            .collect();
        assert_eq!(bus.append_outbox(&old_db, &batch).await.unwrap().mark, 5);
        // Another database starts its seqs at 1 again: under its own mark
        // nothing of it is taken for already appended.
        let fresh: Vec<OutboxAppend> = (1..=2)
            .map(|seq| outbox(seq, &results, &[("from", "new")]))
            .collect();
        let got = bus.append_outbox(&new_db, &fresh).await.unwrap();
        assert_eq!(
            got,
            AppendOutcome {
                mark: 2,
                appended: 2
            }
        );
        assert_eq!(
            ctx.mark(&old_db).await,
            Some(5),
            "the other mark is untouched"
        );
        assert_eq!(ctx.mark(&new_db).await, Some(2));
        let from: Vec<String> = ctx
            .all_entries(&results)
            .await
            .iter()
            .map(|e| e.field("from").unwrap().to_owned())
            .collect();
        assert_eq!(from, ["old", "old", "old", "old", "old", "new", "new"]);
    }

    pub async fn an_append_keeps_the_given_order_across_streams(ctx: Ctx) {
        let bus = &*ctx.bus;
        let a = ctx.stream("a");
        let b = ctx.stream("b");
        let mark = ctx.stream("outbox:high_water");
        bus.ensure_group(&a, "g").await.unwrap();
        bus.ensure_group(&b, "g").await.unwrap();
        let batch = [
            outbox(1, &a, &[("i", "1")]),
            outbox(2, &b, &[("i", "2")]),
            outbox(3, &a, &[("i", "3")]),
        ];
        bus.append_outbox(&mark, &batch).await.unwrap();
        // Appended entries are read by consumer groups like published ones.
        let got = read_now(bus, &[&a, &b], "g", "c", 10).await.unwrap();
        let order: Vec<(String, Option<&str>)> = got
            .iter()
            .map(|e| (e.stream.clone(), e.field("i")))
            .collect();
        assert_eq!(
            order,
            [
                (a.clone(), Some("1")),
                (a.clone(), Some("3")),
                (b.clone(), Some("2"))
            ]
        );
        let ids_a = ids(&ctx.all_entries(&a).await);
        assert!(id_key(&ids_a[0]) < id_key(&ids_a[1]), "{ids_a:?}");
    }

    pub async fn an_append_to_a_key_of_another_type_appends_nothing(ctx: Ctx) {
        let bus = &*ctx.bus;
        let results = ctx.stream("results");
        let other = ctx.stream("other");
        let mark = ctx.stream("outbox:high_water");
        bus.publish(&other, &fields(&[("k", "v")])).await.unwrap();
        // The mark's key holds a stream.
        let refused = bus
            .append_outbox(&other, &[outbox(1, &results, &[("n", "1")])])
            .await;
        assert!(
            matches!(refused, Err(BusError::WrongType(_))),
            "{refused:?}"
        );
        assert!(ctx.all_entries(&results).await.is_empty());
        // A message's stream key holds the mark: nothing of the batch goes,
        // not even the messages before it.
        bus.append_outbox(&mark, &[outbox(1, &results, &[("n", "1")])])
            .await
            .unwrap();
        let refused = bus
            .append_outbox(
                &mark,
                &[
                    outbox(2, &results, &[("n", "2")]),
                    outbox(3, &mark, &[("n", "3")]),
                ],
            )
            .await;
        assert!(
            matches!(refused, Err(BusError::WrongType(_))),
            "{refused:?}"
        );
        assert_eq!(seqs(&ctx.all_entries(&results).await), [1]);
        assert_eq!(ctx.mark(&mark).await, Some(1));
    }
}
