//! What is particular to `RedisBus`, against a real Redis
//! (`BERTH_TEST_REDIS_URL`, set by `eval "$(bash scripts/test-env.sh
//! --env-only)"`); the behaviour every `Bus` shares is `tests/bus_contract.rs`.
//! Each test uses its own stream names and deletes them at the end. The
//! restart and blocking tests run their own throw-away `redis-server` on a
//! free loopback port.

use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use berth::adapters::redis_bus::{RedisBus, COMMAND_TIMEOUT};
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

fn ids(entries: &[StreamEntry]) -> Vec<String> {
    entries.iter().map(|e| e.id.clone()).collect()
}

const SHORT: Duration = Duration::from_millis(100);

/// Far beyond any deadline of the bus: a call still running after this
/// hangs. A bound on hangs, not a timing assertion.
const HANG: Duration = Duration::from_secs(60);

#[tokio::test]
async fn values_that_are_not_utf8_are_read_back_lossily() {
    let bus = bus().await;
    let jobs = format!("{}:jobs", prefix());
    bus.ensure_group(&jobs, "g").await.expect("group");
    let mut conn = raw(&redis_url()).await;
    let id: String = redis::cmd("XADD")
        .arg(&jobs)
        .arg("*")
        .arg("bin")
        .arg(&b"ok\xffok"[..])
        .query_async(&mut conn)
        .await
        .expect("raw XADD");
    let got = bus
        .read_group(&[jobs.as_str()], "g", "c", 10, SHORT)
        .await
        .expect("read");
    assert_eq!(ids(&got), vec![id]);
    assert_eq!(got[0].field("bin"), Some("ok\u{fffd}ok"));

    del(&[&jobs]).await;
}

#[tokio::test]
async fn blocking_reads_outlast_the_command_timeout_and_hold_up_no_other_command() {
    // A server of its own, so that its blocked-client count is this test's.
    let server = OwnRedis::start();
    let bus = Arc::new(RedisBus::connect(&server.url()).await.expect("connect"));
    let jobs = "bt:blocking:jobs";
    bus.ensure_group(jobs, "g").await.expect("group");

    // Blocked longer than COMMAND_TIMEOUT: the read ends when its block
    // does, empty, not with a client-side timeout.
    let block = COMMAND_TIMEOUT + Duration::from_millis(500);
    let got = bus
        .read_group(&[jobs], "g", "c", 10, block)
        .await
        .expect("a long blocking read is not cut short");
    assert!(got.is_empty(), "{got:?}");

    // While a read blocks, the same bus still creates groups and publishes,
    // and the publish wakes the read (were the publish queued behind it,
    // the read would end empty after its block).
    let reader = {
        let bus = Arc::clone(&bus);
        tokio::spawn(async move {
            bus.read_group(&[jobs], "g", "c", 10, Duration::from_secs(60))
                .await
        })
    };
    server.until_blocked_clients(1).await;
    bus.ensure_group(jobs, "g").await.expect("group");
    let late = bus
        .publish(jobs, &fields(&[("k", "v")]))
        .await
        .expect("publish");
    let got = reader.await.expect("reader").expect("read");
    assert_eq!(ids(&got), vec![late]);
}

#[tokio::test]
async fn claim_drops_entries_deleted_while_pending() {
    let bus = bus().await;
    let jobs = format!("{}:jobs", prefix());
    bus.ensure_group(&jobs, "g").await.expect("group");
    let id = bus
        .publish(&jobs, &fields(&[("job_id", "j1")]))
        .await
        .expect("publish");
    let gone = bus
        .publish(&jobs, &fields(&[("job_id", "deleted")]))
        .await
        .expect("publish");
    let got = bus
        .read_group(&[jobs.as_str()], "g", "a", 10, SHORT)
        .await
        .expect("read");
    assert_eq!(ids(&got), vec![id.clone(), gone.clone()]);
    let mut conn = raw(&redis_url()).await;
    let _: i64 = redis::cmd("XDEL")
        .arg(&jobs)
        .arg(&gone)
        .query_async(&mut conn)
        .await
        .expect("XDEL");

    // Polled until both are idle long enough: the deleted one is skipped
    // and leaves the pending list.
    let min_idle = Duration::from_millis(50);
    let deadline = Instant::now() + Duration::from_secs(10);
    let claimed = loop {
        let claimed = bus
            .claim_stale(&jobs, "g", "b", min_idle, 10)
            .await
            .expect("claim");
        if !claimed.is_empty() {
            break claimed;
        }
        assert!(Instant::now() < deadline, "nothing became claimable");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(ids(&claimed), vec![id.clone()]);
    assert_eq!(pending(&jobs, "g").await, vec![(id, "b".to_owned())]);

    del(&[&jobs]).await;
}

#[tokio::test]
async fn redis_errors_are_typed_by_their_code() {
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
    assert!(matches!(err, BusError::NoGroup(_)), "{err:?}");
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
    assert!(matches!(err, BusError::WrongType(_)), "{err:?}");
    let err = bus.ensure_group(&plain, "g").await.expect_err("wrong type");
    assert!(matches!(err, BusError::WrongType(_)), "{err:?}");
    let err = bus
        .read_group(&[plain.as_str()], "g", "c", 1, SHORT)
        .await
        .expect_err("wrong type");
    assert!(matches!(err, BusError::WrongType(_)), "{err:?}");

    del(&[&jobs, &plain]).await;
}

#[tokio::test]
async fn unreachable_redis_is_unavailable_without_the_password() {
    let err = tokio::time::timeout(HANG, RedisBus::connect("redis://user:s3cret@127.0.0.1:1"))
        .await
        .expect("a refused connection ends the connect")
        .expect_err("nothing listens on port 1");
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

    /// Waits until `n` clients are blocked (in a blocking read) on it.
    async fn until_blocked_clients(&self, n: u64) {
        let client = redis::Client::open(self.url()).expect("valid url");
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let mut conn = client
                .get_multiplexed_async_connection()
                .await
                .expect("own redis connection");
            let info: String = redis::cmd("INFO")
                .arg("clients")
                .query_async(&mut conn)
                .await
                .expect("INFO clients");
            let blocked = info
                .lines()
                .find_map(|l| l.strip_prefix("blocked_clients:"))
                .and_then(|v| v.trim().parse::<u64>().ok())
                .expect("INFO clients has blocked_clients");
            if blocked >= n {
                return;
            }
            assert!(Instant::now() < deadline, "no read blocked within 10 s");
            tokio::time::sleep(Duration::from_millis(10)).await;
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

    // Down: commands fail as Unavailable (within their deadline; the
    // bound only catches a hang).
    server.down();
    let err = tokio::time::timeout(HANG, bus.publish(jobs, &fields(&[("n", "2")])))
        .await
        .expect("a publish to a stopped server ends")
        .expect_err("server is down");
    assert!(matches!(err, BusError::Unavailable(_)), "{err:?}");

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

    // A read blocked while the server goes away fails with it, not after
    // its block: blocked for an hour, a read that is not cut off would
    // outlast the hang bound.
    let reader = {
        let bus = Arc::clone(&bus);
        tokio::spawn(async move {
            bus.read_group(&[jobs], "g", "c", 10, Duration::from_secs(3600))
                .await
        })
    };
    server.until_blocked_clients(1).await;
    server.down();
    let result = tokio::time::timeout(HANG, reader)
        .await
        .expect("the blocked read ends when its server goes away")
        .expect("reader");
    assert!(
        matches!(result, Err(BusError::Unavailable(_))),
        "{result:?}"
    );
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
