//! Redis Streams adapter of the `Bus` port (redis-rs, tokio).
//!
//! Two kinds of connection:
//! - one `ConnectionManager` (multiplexed, reconnects by itself after a
//!   connection error) for the short commands: XADD, XGROUP, XAUTOCLAIM, XACK;
//! - a small pool of plain multiplexed connections for `XREADGROUP … BLOCK`.
//!   A blocking read occupies its connection on the server until it returns,
//!   so it must not share one with other commands (they would queue behind
//!   it), nor with another blocking read. These connections have no client
//!   response timeout (a fixed one would cut long blocks); each read carries
//!   its own deadline of `block + COMMAND_TIMEOUT` instead. A connection that
//!   failed or timed out is dropped, and the next read opens a new one, so
//!   reads recover by themselves after Redis restarts.
//!
//! Every call has a deadline. Connection errors and timeouts are
//! `BusError::Unavailable` naming the server as `host:port` only (the URL
//! may carry a password); errors Redis answers with are typed by their
//! error code (`NOGROUP` → `NoGroup`, `WRONGTYPE` → `WrongType`), any other
//! is `Rejected`.

use std::future::Future;
use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use async_trait::async_trait;
use redis::aio::{ConnectionManager, ConnectionManagerConfig, MultiplexedConnection};
use redis::{AsyncConnectionConfig, Client, Cmd, ErrorKind, FromRedisValue, RedisError, Value};

use crate::ports::bus::{
    AppendOutcome, Bus, BusError, OutboxAppend, StreamEntry, OUTBOX_SEQ_FIELD,
};

/// Deadline of one command (on top of the block time for blocking reads).
pub const COMMAND_TIMEOUT: Duration = Duration::from_secs(5);

/// Deadline of one TCP connect + handshake.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);

/// Idle blocking-read connections kept for reuse; more concurrent readers
/// than this open extra connections that are closed after their read.
const MAX_IDLE_READERS: usize = 8;

/// The outbox append (`Bus::append_outbox`), one atomic script per batch.
/// KEYS[1] is the mark, KEYS[1 + i] message i's stream; ARGV holds, per
/// message, its seq, its number of fields n, then its n names and values
/// interleaved. Every key's type is checked before anything is written, so
/// a refused call appends nothing; the mark is set after each XADD, so
/// even an error Redis raises halfway leaves the mark naming exactly what
/// was appended.
const APPEND_OUTBOX_LUA: &str = r#"
for i = 2, #KEYS do
  local t = redis.call('TYPE', KEYS[i]).ok
  if t ~= 'stream' and t ~= 'none' then
    return redis.error_reply('WRONGTYPE ' .. KEYS[i] .. ' holds a ' .. t .. ', not a stream')
  end
end
local mt = redis.call('TYPE', KEYS[1]).ok
if mt ~= 'string' and mt ~= 'none' then
  return redis.error_reply('WRONGTYPE ' .. KEYS[1] .. ' holds a ' .. mt .. ', not a mark')
end
local mark = tonumber(redis.call('GET', KEYS[1]) or '0')
local appended = 0
local a = 1
for i = 2, #KEYS do
  local seq = tonumber(ARGV[a])
  local n = tonumber(ARGV[a + 1])
  local last = a + 1 + 2 * n
  if seq > mark then
    local args = {'XADD', KEYS[i], '*'}
    for j = a + 2, last do
      args[#args + 1] = ARGV[j]
    end
    args[#args + 1] = ARGV[#ARGV]
    args[#args + 1] = ARGV[a]
    redis.call(unpack(args))
    redis.call('SET', KEYS[1], ARGV[a])
    mark = seq
    appended = appended + 1
  end
  a = last + 1
end
return {mark, appended}
"#;

/// Redis Streams bus. Cheap to share behind an `Arc`; all methods take `&self`.
pub struct RedisBus {
    client: Client,
    /// `host:port` (or socket path) for error messages, without credentials.
    addr: String,
    commands: ConnectionManager,
    idle_readers: Mutex<Vec<MultiplexedConnection>>,
    /// The SHA1 of `APPEND_OUTBOX_LUA` once `SCRIPT LOAD` told it (no SHA1
    /// crate here: Redis computes it).
    append_sha: Mutex<Option<String>>,
}

impl std::fmt::Debug for RedisBus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisBus")
            .field("addr", &self.addr)
            .finish()
    }
}

/// Why a blocking read failed, so the caller knows whether the connection
/// is still usable.
enum ReadFailure {
    Redis(RedisError),
    TimedOut,
}

impl RedisBus {
    /// Connects to `url` (`redis://[user:password@]host:port[/db]`).
    /// Fails with `Unavailable` at once when Redis cannot be reached.
    pub async fn connect(url: &str) -> Result<RedisBus, BusError> {
        // redis-rs's parse errors never contain the URL itself.
        let client =
            Client::open(url).map_err(|e| BusError::Rejected(format!("invalid Redis URL: {e}")))?;
        let addr = client.get_connection_info().addr.to_string();

        // Open the first read connection before the manager: it makes one
        // attempt and fails fast, whereas the manager's initial connect retries
        // with a back-off of a second or more.
        let reader = open_reader(&client, &addr).await?;

        // Few, short retries: a command waits for the reconnection, and its own
        // deadline is COMMAND_TIMEOUT. A failed reconnection is attempted again
        // by the next command.
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(CONNECT_TIMEOUT)
            .set_response_timeout(COMMAND_TIMEOUT)
            .set_number_of_retries(2)
            .set_max_delay(1000);
        let commands = with_deadline(
            &addr,
            COMMAND_TIMEOUT,
            ConnectionManager::new_with_config(client.clone(), config),
        )
        .await?;

        Ok(RedisBus {
            client,
            addr,
            commands,
            idle_readers: Mutex::new(vec![reader]),
            append_sha: Mutex::new(None),
        })
    }

    /// Runs a short command on the managed connection.
    async fn run<T: FromRedisValue>(&self, cmd: &Cmd) -> Result<T, BusError> {
        // Clones share the one underlying connection; `query_async` needs `&mut`.
        let mut conn = self.commands.clone();
        with_deadline(&self.addr, COMMAND_TIMEOUT, cmd.query_async(&mut conn)).await
    }

    /// The append script's SHA1, loading it when not known yet.
    async fn append_sha(&self) -> Result<String, BusError> {
        let known = self
            .append_sha
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone();
        if let Some(sha) = known {
            return Ok(sha);
        }
        let mut load = redis::cmd("SCRIPT");
        load.arg("LOAD").arg(APPEND_OUTBOX_LUA);
        let sha: String = self.run(&load).await?;
        *self
            .append_sha
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = Some(sha.clone());
        Ok(sha)
    }

    fn take_idle_reader(&self) -> Option<MultiplexedConnection> {
        // A poisoned lock only means another thread panicked while pushing or
        // popping; the Vec itself is intact.
        self.idle_readers
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .pop()
    }

    fn return_reader(&self, conn: MultiplexedConnection) {
        let mut idle = self
            .idle_readers
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if idle.len() < MAX_IDLE_READERS {
            idle.push(conn);
        }
    }

    async fn read_on(
        conn: &mut MultiplexedConnection,
        cmd: &Cmd,
        deadline: Duration,
    ) -> Result<Value, ReadFailure> {
        match tokio::time::timeout(deadline, cmd.query_async::<Value>(conn)).await {
            Ok(Ok(value)) => Ok(value),
            Ok(Err(e)) => Err(ReadFailure::Redis(e)),
            Err(_) => Err(ReadFailure::TimedOut),
        }
    }

    /// Runs a blocking read on a connection of its own (see the module doc).
    async fn blocking_read(&self, cmd: &Cmd, deadline: Duration) -> Result<Value, BusError> {
        let (mut conn, reused) = match self.take_idle_reader() {
            Some(conn) => (conn, true),
            None => (open_reader(&self.client, &self.addr).await?, false),
        };
        let mut result = Self::read_on(&mut conn, cmd, deadline).await;
        if reused && matches!(&result, Err(ReadFailure::Redis(e)) if is_unavailable(e)) {
            // An idle connection may have died while it sat in the pool (Redis
            // restarted): one more try on a fresh connection before failing.
            conn = open_reader(&self.client, &self.addr).await?;
            result = Self::read_on(&mut conn, cmd, deadline).await;
        }
        match result {
            Ok(value) => {
                self.return_reader(conn);
                Ok(value)
            }
            Err(ReadFailure::Redis(e)) => {
                // An error reply (NOGROUP, WRONGTYPE…) leaves the connection fine.
                if !is_unavailable(&e) {
                    self.return_reader(conn);
                }
                Err(map_error(&self.addr, e))
            }
            // The server may still be blocked on it: drop the connection.
            Err(ReadFailure::TimedOut) => Err(timed_out(&self.addr, deadline)),
        }
    }
}

#[async_trait]
impl Bus for RedisBus {
    async fn publish(&self, stream: &str, fields: &[(String, String)]) -> Result<String, BusError> {
        let mut cmd = redis::cmd("XADD");
        cmd.arg(stream).arg("*");
        for (name, value) in fields {
            cmd.arg(name).arg(value);
        }
        self.run(&cmd).await
    }

    async fn append_outbox(
        &self,
        mark_key: &str,
        messages: &[OutboxAppend],
    ) -> Result<AppendOutcome, BusError> {
        let script_args = |cmd: &mut Cmd| {
            cmd.arg(1 + messages.len()).arg(mark_key);
            for m in messages {
                cmd.arg(&m.stream);
            }
            for m in messages {
                cmd.arg(m.seq).arg(m.fields.len());
                for (name, value) in &m.fields {
                    cmd.arg(name).arg(value);
                }
            }
            // The name of the seq field, once, as the last ARGV.
            cmd.arg(OUTBOX_SEQ_FIELD);
        };
        let mut evalsha = redis::cmd("EVALSHA");
        evalsha.arg(self.append_sha().await?);
        script_args(&mut evalsha);
        let mut conn = self.commands.clone();
        let reply = match tokio::time::timeout(
            COMMAND_TIMEOUT,
            evalsha.query_async::<(i64, i64)>(&mut conn),
        )
        .await
        {
            // Redis forgot its script cache (a restart): nothing ran; EVAL
            // runs the same text and caches it again under the same SHA1.
            Ok(Err(e)) if e.kind() == ErrorKind::NoScriptError => {
                let mut eval = redis::cmd("EVAL");
                eval.arg(APPEND_OUTBOX_LUA);
                script_args(&mut eval);
                self.run::<(i64, i64)>(&eval).await?
            }
            Ok(Ok(reply)) => reply,
            Ok(Err(e)) => return Err(map_error(&self.addr, e)),
            Err(_) => return Err(timed_out(&self.addr, COMMAND_TIMEOUT)),
        };
        let (mark, appended) = reply;
        Ok(AppendOutcome {
            mark,
            appended: usize::try_from(appended).map_err(|_| unexpected("the outbox append"))?,
        })
    }

    async fn ensure_group(&self, stream: &str, group: &str) -> Result<(), BusError> {
        // From id 0, so entries published before the group existed are read too.
        let mut cmd = redis::cmd("XGROUP");
        cmd.arg("CREATE")
            .arg(stream)
            .arg(group)
            .arg("0")
            .arg("MKSTREAM");
        let mut conn = self.commands.clone();
        match tokio::time::timeout(COMMAND_TIMEOUT, cmd.query_async::<Value>(&mut conn)).await {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(e)) if e.code() == Some("BUSYGROUP") => Ok(()),
            Ok(Err(e)) => Err(map_error(&self.addr, e)),
            Err(_) => Err(timed_out(&self.addr, COMMAND_TIMEOUT)),
        }
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
        let mut cmd = redis::cmd("XREADGROUP");
        cmd.arg("GROUP")
            .arg(group)
            .arg(consumer)
            .arg("COUNT")
            .arg(count.max(1));
        // BLOCK 0 would wait forever: a zero block is a non-blocking read.
        // Sub-millisecond blocks round up, as Redis counts whole milliseconds.
        let block_ms = block.as_nanos().div_ceil(1_000_000);
        if block_ms > 0 {
            cmd.arg("BLOCK")
                .arg(u64::try_from(block_ms).unwrap_or(u64::MAX));
        }
        cmd.arg("STREAMS").arg(streams);
        for _ in streams {
            cmd.arg(">");
        }
        let reply = self
            .blocking_read(&cmd, block.saturating_add(COMMAND_TIMEOUT))
            .await?;
        parse_read_reply(reply)
    }

    async fn claim_stale(
        &self,
        stream: &str,
        group: &str,
        consumer: &str,
        min_idle: Duration,
        count: usize,
    ) -> Result<Vec<StreamEntry>, BusError> {
        let min_idle_ms = u64::try_from(min_idle.as_millis()).unwrap_or(u64::MAX);
        let mut cmd = redis::cmd("XAUTOCLAIM");
        cmd.arg(stream)
            .arg(group)
            .arg(consumer)
            .arg(min_idle_ms)
            .arg("0-0")
            .arg("COUNT")
            .arg(count.max(1));
        let reply: Value = self.run(&cmd).await?;
        // [next cursor, entries, deleted ids (Redis 7)]: only the entries matter;
        // the ids of deleted entries are dropped from the pending list by Redis.
        match reply {
            Value::Array(items) => match items.into_iter().nth(1) {
                Some(entries) => parse_entries(stream, entries),
                None => Err(unexpected("XAUTOCLAIM")),
            },
            _ => Err(unexpected("XAUTOCLAIM")),
        }
    }

    async fn ack(&self, stream: &str, group: &str, ids: &[String]) -> Result<(), BusError> {
        if ids.is_empty() {
            return Ok(());
        }
        let mut cmd = redis::cmd("XACK");
        cmd.arg(stream).arg(group).arg(ids);
        self.run::<i64>(&cmd).await.map(|_| ())
    }
}

async fn open_reader(client: &Client, addr: &str) -> Result<MultiplexedConnection, BusError> {
    // No response timeout here on purpose: each read sets its own deadline.
    let config = AsyncConnectionConfig::new().set_connection_timeout(CONNECT_TIMEOUT);
    with_deadline(
        addr,
        CONNECT_TIMEOUT.saturating_add(Duration::from_secs(1)),
        client.get_multiplexed_async_connection_with_config(&config),
    )
    .await
}

/// Awaits `fut` for at most `deadline`, mapping errors to `BusError`.
async fn with_deadline<T>(
    addr: &str,
    deadline: Duration,
    fut: impl Future<Output = redis::RedisResult<T>>,
) -> Result<T, BusError> {
    match tokio::time::timeout(deadline, fut).await {
        Ok(Ok(value)) => Ok(value),
        Ok(Err(e)) => Err(map_error(addr, e)),
        Err(_) => Err(timed_out(addr, deadline)),
    }
}

fn timed_out(addr: &str, deadline: Duration) -> BusError {
    BusError::Unavailable(format!("{addr}: no answer within {deadline:?}"))
}

/// Errors that say the server is unreachable or not ready (rather than
/// refusing the command): worth retrying later, and the connection is suspect.
fn is_unavailable(e: &RedisError) -> bool {
    e.is_io_error()
        || matches!(
            e.kind(),
            ErrorKind::BusyLoadingError
                | ErrorKind::TryAgain
                | ErrorKind::ClusterDown
                | ErrorKind::MasterDown
        )
}

fn map_error(addr: &str, e: RedisError) -> BusError {
    if is_unavailable(&e) {
        return BusError::Unavailable(format!("{addr}: {e}"));
    }
    // The code is the first word of Redis's error reply.
    match e.code() {
        Some("NOGROUP") => BusError::NoGroup(e.to_string()),
        Some("WRONGTYPE") => BusError::WrongType(e.to_string()),
        _ => BusError::Rejected(e.to_string()),
    }
}

fn unexpected(command: &str) -> BusError {
    BusError::Rejected(format!("unexpected reply shape to {command}"))
}

/// Bytes as text: stream values may hold anything, decoded lossily.
fn into_text(value: Value) -> Option<String> {
    match value {
        Value::BulkString(bytes) => Some(
            String::from_utf8(bytes)
                .unwrap_or_else(|e| String::from_utf8_lossy(e.as_bytes()).into_owned()),
        ),
        Value::SimpleString(s) => Some(s),
        Value::VerbatimString { text, .. } => Some(text),
        Value::Okay => Some("OK".to_owned()),
        Value::Int(i) => Some(i.to_string()),
        _ => None,
    }
}

/// A flat `[k, v, k, v, …]` array (RESP2) or a map (RESP3) as pairs.
fn into_pairs(value: Value) -> Option<Vec<(Value, Value)>> {
    match value {
        Value::Map(pairs) => Some(pairs),
        Value::Array(items) if items.len() % 2 == 0 => {
            let mut pairs = Vec::with_capacity(items.len() / 2);
            let mut items = items.into_iter();
            while let (Some(k), Some(v)) = (items.next(), items.next()) {
                pairs.push((k, v));
            }
            Some(pairs)
        }
        _ => None,
    }
}

/// XREADGROUP's reply: nil on timeout, else `[[stream, entries], …]`
/// (RESP2) or `{stream: entries}` (RESP3).
fn parse_read_reply(reply: Value) -> Result<Vec<StreamEntry>, BusError> {
    let per_stream: Vec<(Value, Value)> = match reply {
        Value::Nil => return Ok(Vec::new()),
        Value::Map(pairs) => pairs,
        Value::Array(items) => items
            .into_iter()
            .map(|item| match item {
                Value::Array(pair) if pair.len() == 2 => {
                    let mut pair = pair.into_iter();
                    match (pair.next(), pair.next()) {
                        (Some(name), Some(entries)) => Ok((name, entries)),
                        _ => Err(unexpected("XREADGROUP")),
                    }
                }
                _ => Err(unexpected("XREADGROUP")),
            })
            .collect::<Result<_, _>>()?,
        _ => return Err(unexpected("XREADGROUP")),
    };
    let mut out = Vec::new();
    for (name, entries) in per_stream {
        let stream = into_text(name).ok_or_else(|| unexpected("XREADGROUP"))?;
        out.extend(parse_entries(&stream, entries)?);
    }
    Ok(out)
}

/// `[[id, [k, v, …]], …]`; an entry whose fields are nil was deleted after
/// it was delivered and is skipped.
fn parse_entries(stream: &str, entries: Value) -> Result<Vec<StreamEntry>, BusError> {
    let items = match entries {
        Value::Nil => return Ok(Vec::new()),
        Value::Array(items) => items,
        _ => return Err(unexpected("stream entries")),
    };
    let mut out = Vec::with_capacity(items.len());
    for item in items {
        let Value::Array(parts) = item else {
            return Err(unexpected("stream entry"));
        };
        let mut parts = parts.into_iter();
        let (Some(id), Some(fields)) = (parts.next(), parts.next()) else {
            return Err(unexpected("stream entry"));
        };
        let id = into_text(id).ok_or_else(|| unexpected("stream entry id"))?;
        if fields == Value::Nil {
            continue;
        }
        let fields = into_pairs(fields)
            .ok_or_else(|| unexpected("stream entry fields"))?
            .into_iter()
            .map(|(k, v)| match (into_text(k), into_text(v)) {
                (Some(k), Some(v)) => Ok((k, v)),
                _ => Err(unexpected("stream entry field")),
            })
            .collect::<Result<_, _>>()?;
        out.push(StreamEntry {
            stream: stream.to_owned(),
            id,
            fields,
        });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bulk(s: &[u8]) -> Value {
        Value::BulkString(s.to_vec())
    }

    #[test]
    fn read_reply_keeps_field_order_and_decodes_lossily() {
        let reply = Value::Array(vec![Value::Array(vec![
            bulk(b"s1"),
            Value::Array(vec![
                Value::Array(vec![
                    bulk(b"1-0"),
                    Value::Array(vec![bulk(b"z"), bulk(b"1"), bulk(b"a"), bulk(b"\xff")]),
                ]),
                Value::Array(vec![bulk(b"2-0"), Value::Nil]),
            ]),
        ])]);
        let entries = parse_read_reply(reply).expect("parses");
        assert_eq!(entries.len(), 1);
        assert_eq!(entries[0].stream, "s1");
        assert_eq!(entries[0].id, "1-0");
        assert_eq!(
            entries[0].fields,
            vec![
                ("z".to_owned(), "1".to_owned()),
                ("a".to_owned(), "\u{fffd}".to_owned())
            ]
        );
    }

    #[test]
    fn nil_reply_is_empty_and_odd_fields_are_rejected() {
        assert!(parse_read_reply(Value::Nil).expect("parses").is_empty());
        let odd = Value::Array(vec![Value::Array(vec![
            bulk(b"1-0"),
            Value::Array(vec![bulk(b"k")]),
        ])]);
        assert!(matches!(
            parse_entries("s", odd),
            Err(BusError::Rejected(_))
        ));
    }

    #[test]
    fn resp3_map_reply_parses() {
        let reply = Value::Map(vec![(
            bulk(b"s2"),
            Value::Array(vec![Value::Array(vec![
                bulk(b"3-1"),
                Value::Map(vec![(bulk(b"k"), bulk(b"v"))]),
            ])]),
        )]);
        let entries = parse_read_reply(reply).expect("parses");
        assert_eq!(entries[0].stream, "s2");
        assert_eq!(entries[0].field("k"), Some("v"));
    }
}
