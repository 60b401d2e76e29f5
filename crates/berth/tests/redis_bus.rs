//! `RedisBus` against a real Redis (`BERTH_TEST_REDIS_URL`, set by
//! `eval "$(bash scripts/test-env.sh --env-only)"`). Each test uses its own
//! stream names and deletes them at the end. The restart test runs its own
//! throw-away `redis-server` on a free loopback port.

use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use berth::adapters::redis_bus::RedisBus;
use berth::ports::bus::{Bus, BusError, StreamEntry};

fn redis_url() -> String {
    std::env::var("BERTH_TEST_REDIS_URL").unwrap_or_else(|_| {
        panic!(
            "BERTH_TEST_REDIS_URL is not set: the Redis bus tests need a server. \
             Run `eval \"$(bash scripts/test-env.sh --env-only)\"` first."
        )
    })
}

/// A fresh key prefix: `bt:<uuid>`.
fn prefix() -> String {
    format!("bt:{}", uuid::Uuid::now_v7().simple())
}

async fn bus() -> RedisBus {
    RedisBus::connect(&redis_url())
        .await
        .expect("connect to the test Redis")
}

async fn raw(url: &str) -> redis::aio::MultiplexedConnection {
    redis::Client::open(url)
        .expect("valid url")
        .get_multiplexed_async_connection()
        .await
        .expect("raw connection")
}

async fn del(keys: &[&str]) {
    let mut conn = raw(&redis_url()).await;
    let _: i64 = redis::cmd("DEL")
        .arg(keys)
        .query_async(&mut conn)
        .await
        .expect("DEL");
}

/// Pending entries of a group: (total, per-consumer ids).
async fn pending(stream: &str, group: &str) -> Vec<(String, String)> {
    let mut conn = raw(&redis_url()).await;
    // XPENDING stream group - + count → [[id, consumer, idle, deliveries], …]
    let rows: Vec<(String, String, u64, u64)> = redis::cmd("XPENDING")
        .arg(stream)
        .arg(group)
        .arg("-")
        .arg("+")
        .arg(100)
        .query_async(&mut conn)
        .await
        .expect("XPENDING");
    rows.into_iter().map(|(id, c, _, _)| (id, c)).collect()
}

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

const SHORT: Duration = Duration::from_millis(100);

#[tokio::test]
async fn publish_and_read_group_round_trip() {
    let bus = bus().await;
    let p = prefix();
    let jobs = format!("{p}:jobs");
    let other = format!("{p}:other");
    bus.ensure_group(&jobs, "g").await.expect("group");
    bus.ensure_group(&other, "g").await.expect("group");

    let first = fields(&[("z", "1"), ("a", "{\"json\": true}"), ("m", "")]);
    let second = fields(&[("job_id", "j2"), ("runtime_id", "r2")]);
    let id1 = bus.publish(&jobs, &first).await.expect("publish");
    let id2 = bus.publish(&jobs, &second).await.expect("publish");
    let id3 = bus
        .publish(&other, &fields(&[("k", "v")]))
        .await
        .expect("publish");
    assert!(id_key(&id1) < id_key(&id2), "{id1} < {id2}");

    // A value that is not UTF-8 is read back lossily, not as an error.
    let mut conn = raw(&redis_url()).await;
    let id4: String = redis::cmd("XADD")
        .arg(&jobs)
        .arg("*")
        .arg("bin")
        .arg(&b"ok\xffok"[..])
        .query_async(&mut conn)
        .await
        .expect("raw XADD");

    let got = bus
        .read_group(&[jobs.as_str(), other.as_str()], "g", "c1", 10, SHORT)
        .await
        .expect("read");
    assert_eq!(got.len(), 4, "{got:?}");
    assert_eq!(
        got[0],
        StreamEntry {
            stream: jobs.clone(),
            id: id1.clone(),
            fields: first
        }
    );
    assert_eq!(got[1].id, id2);
    assert_eq!(got[1].fields, second);
    assert_eq!(got[1].field("runtime_id"), Some("r2"));
    assert_eq!(got[2].id, id4);
    assert_eq!(got[2].field("bin"), Some("ok\u{fffd}ok"));
    assert_eq!(got[3].stream, other);
    assert_eq!(got[3].id, id3);
    assert!(id_key(&got[1].id) < id_key(&got[2].id));

    // `>` delivers each entry once to the group.
    let again = bus
        .read_group(&[jobs.as_str(), other.as_str()], "g", "c1", 10, SHORT)
        .await
        .expect("read");
    assert!(again.is_empty(), "{again:?}");

    // COUNT limits per stream; a zero block is a non-blocking read.
    for i in 0..3 {
        bus.publish(&jobs, &fields(&[("n", &i.to_string())]))
            .await
            .expect("publish");
    }
    let started = Instant::now();
    let two = bus
        .read_group(&[jobs.as_str()], "g", "c1", 2, Duration::ZERO)
        .await
        .expect("read");
    assert_eq!(two.len(), 2);
    assert!(started.elapsed() < Duration::from_secs(1));
    assert!(bus
        .read_group(&[], "g", "c1", 2, Duration::ZERO)
        .await
        .expect("no streams")
        .is_empty());

    del(&[&jobs, &other]).await;
}

#[tokio::test]
async fn ensure_group_twice_and_reads_earlier_entries() {
    let bus = bus().await;
    let jobs = format!("{}:jobs", prefix());

    // Published before the group exists: the group starts at id 0, so it sees it.
    let early = bus
        .publish(&jobs, &fields(&[("job_id", "early")]))
        .await
        .expect("publish");
    bus.ensure_group(&jobs, "g").await.expect("create");
    bus.ensure_group(&jobs, "g")
        .await
        .expect("existing group is fine");

    // MKSTREAM: a group on a stream that does not exist yet.
    let fresh = format!("{}:fresh", prefix());
    bus.ensure_group(&fresh, "g").await.expect("mkstream");
    let mut conn = raw(&redis_url()).await;
    let exists: i64 = redis::cmd("EXISTS")
        .arg(&fresh)
        .query_async(&mut conn)
        .await
        .expect("EXISTS");
    assert_eq!(exists, 1);

    let got = bus
        .read_group(&[jobs.as_str()], "g", "c", 10, SHORT)
        .await
        .expect("read");
    assert_eq!(ids(&got), vec![early]);

    del(&[&jobs, &fresh]).await;
}

#[tokio::test]
async fn two_consumers_share_entries_without_duplicates() {
    let bus = Arc::new(bus().await);
    let jobs = format!("{}:jobs", prefix());
    bus.ensure_group(&jobs, "g").await.expect("group");
    let mut published = Vec::new();
    for i in 0..20 {
        published.push(
            bus.publish(&jobs, &fields(&[("n", &i.to_string())]))
                .await
                .expect("publish"),
        );
    }

    // Two consumers reading concurrently on one bus, in small batches.
    let consume = |name: &'static str| {
        let bus = Arc::clone(&bus);
        let jobs = jobs.clone();
        tokio::spawn(async move {
            let mut seen = Vec::new();
            loop {
                let batch = bus
                    .read_group(&[jobs.as_str()], "g", name, 3, Duration::from_millis(200))
                    .await
                    .expect("read");
                if batch.is_empty() {
                    return seen;
                }
                seen.extend(ids(&batch));
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        })
    };
    let a = consume("a");
    let b = consume("b");
    let a = a.await.expect("task a");
    let b = b.await.expect("task b");
    assert!(!a.is_empty() && !b.is_empty(), "a={a:?} b={b:?}");

    let mut all: Vec<String> = a.iter().chain(b.iter()).cloned().collect();
    all.sort_by_key(|id| id_key(id));
    assert_eq!(all, published, "each entry exactly once");

    del(&[&jobs]).await;
}

#[tokio::test]
async fn blocking_read_waits_past_the_client_default_timeout() {
    let bus = Arc::new(bus().await);
    let jobs = format!("{}:jobs", prefix());
    bus.ensure_group(&jobs, "g").await.expect("group");

    let publisher = {
        let bus = Arc::clone(&bus);
        let jobs = jobs.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(300)).await;
            bus.publish(&jobs, &fields(&[("job_id", "late")]))
                .await
                .expect("publish")
        })
    };
    let started = Instant::now();
    let got = bus
        .read_group(&[jobs.as_str()], "g", "c", 10, Duration::from_millis(2000))
        .await
        .expect("blocking read");
    let waited = started.elapsed();
    let id = publisher.await.expect("publisher");
    assert_eq!(ids(&got), vec![id]);
    assert!(
        waited >= Duration::from_millis(250) && waited < Duration::from_millis(1900),
        "returned after {waited:?}"
    );

    // Nothing published: waits the whole block, then returns empty (not an error).
    let started = Instant::now();
    let got = bus
        .read_group(&[jobs.as_str()], "g", "c", 10, Duration::from_millis(2000))
        .await
        .expect("blocking read");
    let waited = started.elapsed();
    assert!(got.is_empty(), "{got:?}");
    assert!(
        waited >= Duration::from_millis(1900) && waited < Duration::from_secs(4),
        "returned after {waited:?}"
    );

    // Blocking reads do not hold up other commands on the same bus.
    let reader = {
        let bus = Arc::clone(&bus);
        let jobs = jobs.clone();
        tokio::spawn(async move {
            bus.read_group(&[jobs.as_str()], "g", "c", 10, Duration::from_millis(1500))
                .await
        })
    };
    tokio::time::sleep(Duration::from_millis(100)).await;
    let started = Instant::now();
    bus.ensure_group(&jobs, "g").await.expect("group");
    assert!(started.elapsed() < Duration::from_millis(500));
    let late = bus
        .publish(&jobs, &fields(&[("k", "v")]))
        .await
        .expect("publish");
    let got = reader.await.expect("reader").expect("read");
    assert_eq!(ids(&got), vec![late]);

    del(&[&jobs]).await;
}

#[tokio::test]
async fn stale_entries_are_claimed_after_min_idle_and_ack_clears_pending() {
    let bus = bus().await;
    let jobs = format!("{}:jobs", prefix());
    bus.ensure_group(&jobs, "g").await.expect("group");
    let id = bus
        .publish(&jobs, &fields(&[("job_id", "j1"), ("runtime_id", "r1")]))
        .await
        .expect("publish");
    let gone = bus
        .publish(&jobs, &fields(&[("job_id", "deleted")]))
        .await
        .expect("publish");

    // Consumer A takes both and dies without acking.
    let got = bus
        .read_group(&[jobs.as_str()], "g", "a", 10, SHORT)
        .await
        .expect("read");
    assert_eq!(ids(&got), vec![id.clone(), gone.clone()]);
    assert_eq!(
        pending(&jobs, "g").await,
        vec![(id.clone(), "a".to_owned()), (gone.clone(), "a".to_owned())]
    );
    // The second entry is deleted from the stream while pending.
    let mut conn = raw(&redis_url()).await;
    let _: i64 = redis::cmd("XDEL")
        .arg(&jobs)
        .arg(&gone)
        .query_async(&mut conn)
        .await
        .expect("XDEL");

    let min_idle = Duration::from_millis(600);
    let early = bus
        .claim_stale(&jobs, "g", "b", min_idle, 10)
        .await
        .expect("claim");
    assert!(early.is_empty(), "not idle long enough yet: {early:?}");

    tokio::time::sleep(min_idle + Duration::from_millis(200)).await;
    let claimed = bus
        .claim_stale(&jobs, "g", "b", min_idle, 10)
        .await
        .expect("claim");
    assert_eq!(claimed.len(), 1, "deleted entry skipped: {claimed:?}");
    assert_eq!(claimed[0].id, id);
    assert_eq!(claimed[0].stream, jobs);
    assert_eq!(
        claimed[0].fields,
        fields(&[("job_id", "j1"), ("runtime_id", "r1")])
    );
    assert_eq!(
        pending(&jobs, "g").await,
        vec![(id.clone(), "b".to_owned())]
    );

    // Claiming resets the idle time: A cannot take it straight back.
    assert!(bus
        .claim_stale(&jobs, "g", "a", min_idle, 10)
        .await
        .expect("claim")
        .is_empty());

    bus.ack(&jobs, "g", &[])
        .await
        .expect("empty ack is a no-op");
    bus.ack(&jobs, "g", std::slice::from_ref(&id))
        .await
        .expect("ack");
    assert!(pending(&jobs, "g").await.is_empty());

    del(&[&jobs]).await;
}

#[tokio::test]
async fn redis_errors_are_rejected() {
    let bus = bus().await;
    let p = prefix();
    let jobs = format!("{p}:jobs");
    let plain = format!("{p}:plain");

    // No such group.
    bus.publish(&jobs, &fields(&[("k", "v")]))
        .await
        .expect("publish");
    let err = bus
        .read_group(&[jobs.as_str()], "nogroup", "c", 1, SHORT)
        .await
        .expect_err("no group");
    assert!(
        matches!(&err, BusError::Rejected(m) if m.contains("NOGROUP")),
        "{err:?}"
    );
    // The read connection stays usable after an error reply.
    bus.ensure_group(&jobs, "g").await.expect("group");
    assert_eq!(
        bus.read_group(&[jobs.as_str()], "g", "c", 1, SHORT)
            .await
            .expect("read")
            .len(),
        1
    );

    // A key of another type.
    let mut conn = raw(&redis_url()).await;
    let _: () = redis::cmd("SET")
        .arg(&plain)
        .arg("x")
        .query_async(&mut conn)
        .await
        .expect("SET");
    let err = bus
        .publish(&plain, &fields(&[("k", "v")]))
        .await
        .expect_err("wrong type");
    assert!(
        matches!(&err, BusError::Rejected(m) if m.contains("WRONGTYPE")),
        "{err:?}"
    );
    let err = bus.ensure_group(&plain, "g").await.expect_err("wrong type");
    assert!(matches!(err, BusError::Rejected(_)), "{err:?}");

    del(&[&jobs, &plain]).await;
}

#[tokio::test]
async fn unreachable_redis_is_unavailable_quickly_without_the_password() {
    let started = Instant::now();
    let err = RedisBus::connect("redis://user:s3cret@127.0.0.1:1")
        .await
        .expect_err("nothing listens on port 1");
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );
    match err {
        BusError::Unavailable(msg) => {
            assert!(msg.contains("127.0.0.1:1"), "{msg}");
            assert!(!msg.contains("s3cret"), "{msg}");
        }
        other => panic!("expected Unavailable, got {other:?}"),
    }

    let err = RedisBus::connect("http://not-redis")
        .await
        .expect_err("bad url");
    assert!(matches!(err, BusError::Rejected(_)), "{err:?}");
}

/// A throw-away `redis-server` on a free loopback port, killed on drop.
struct OwnRedis {
    port: u16,
    dir: tempfile::TempDir,
    child: Option<Child>,
}

impl OwnRedis {
    fn start() -> OwnRedis {
        let port = TcpListener::bind("127.0.0.1:0")
            .expect("bind")
            .local_addr()
            .expect("addr")
            .port();
        let mut redis = OwnRedis {
            port,
            dir: tempfile::tempdir().expect("tempdir"),
            child: None,
        };
        redis.up();
        redis
    }

    fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    fn up(&mut self) {
        let child = Command::new("redis-server")
            .args(["--bind", "127.0.0.1", "--port", &self.port.to_string()])
            .args(["--save", "", "--appendonly", "no", "--daemonize", "no"])
            .arg("--dir")
            .arg(self.dir.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server runs (scripts/test-env.sh installs it)");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            assert!(Instant::now() < deadline, "own redis-server did not start");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn down(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for OwnRedis {
    fn drop(&mut self) {
        self.down();
    }
}

/// Retries `f` for up to 10 s; Redis needs a moment after a restart.
async fn eventually<T, F, Fut>(what: &str, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, BusError>>,
{
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match f().await {
            Ok(v) => return v,
            Err(e) if Instant::now() < deadline => {
                assert!(matches!(e, BusError::Unavailable(_)), "{what}: {e:?}");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(e) => panic!("{what} still fails after 10 s: {e:?}"),
        }
    }
}

#[tokio::test]
async fn bus_recovers_after_redis_restarts() {
    let mut server = OwnRedis::start();
    let bus = Arc::new(RedisBus::connect(&server.url()).await.expect("connect"));
    let jobs = "bt:restart:jobs";
    bus.ensure_group(jobs, "g").await.expect("group");
    bus.publish(jobs, &fields(&[("n", "1")]))
        .await
        .expect("publish");
    // Leaves an idle read connection in the bus's pool.
    assert_eq!(
        bus.read_group(&[jobs], "g", "c", 10, SHORT)
            .await
            .expect("read")
            .len(),
        1
    );

    // Down: commands fail as Unavailable, promptly.
    server.down();
    let started = Instant::now();
    let err = bus
        .publish(jobs, &fields(&[("n", "2")]))
        .await
        .expect_err("server is down");
    assert!(matches!(err, BusError::Unavailable(_)), "{err:?}");
    assert!(started.elapsed() < Duration::from_secs(6));

    // Up again (empty: no persistence). The manager reconnects; the stale
    // pooled read connection is replaced without an error reaching the caller.
    server.up();
    eventually("ensure_group after restart", || bus.ensure_group(jobs, "g")).await;
    let id = bus
        .publish(jobs, &fields(&[("n", "3")]))
        .await
        .expect("publish after restart");
    let got = bus
        .read_group(&[jobs], "g", "c", 10, SHORT)
        .await
        .expect("first read after restart");
    assert_eq!(ids(&got), vec![id]);

    // A read blocked while the server goes away fails fast, not after its block.
    let reader = {
        let bus = Arc::clone(&bus);
        tokio::spawn(async move {
            let started = Instant::now();
            let result = bus
                .read_group(&[jobs], "g", "c", 10, Duration::from_secs(5))
                .await;
            (result, started.elapsed())
        })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    server.down();
    let (result, waited) = reader.await.expect("reader");
    assert!(
        matches!(result, Err(BusError::Unavailable(_))),
        "{result:?}"
    );
    assert!(waited < Duration::from_secs(3), "{waited:?}");
    let err = bus
        .read_group(&[jobs], "g", "c", 10, SHORT)
        .await
        .expect_err("still down");
    assert!(matches!(err, BusError::Unavailable(_)), "{err:?}");

    server.up();
    eventually("ensure_group after 2nd restart", || {
        bus.ensure_group(jobs, "g")
    })
    .await;
    let id = bus
        .publish(jobs, &fields(&[("n", "4")]))
        .await
        .expect("publish");
    let streams = [jobs];
    let got = eventually("read after 2nd restart", || {
        bus.read_group(&streams, "g", "c", 10, SHORT)
    })
    .await;
    assert_eq!(ids(&got), vec![id]);
}
