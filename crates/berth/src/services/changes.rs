//! The change feed behind `GET /v1/stream`.
//!
//! Every write path stores change-log rows in the transaction of what they
//! describe (see [`crate::ports::store::ChangeStore`]). One hub task reads
//! the new rows after a wakeup ([`Context::changes_wakeup`], signalled after
//! each commit in this process) or a poll tick (other replicas' commits on
//! PostgreSQL), keeps the newest ones in a bounded ring and publishes it
//! through a `watch` channel as one immutable snapshot. Each connection
//! ([`Subscription`]) pulls from the snapshot at its own pace, so a slow
//! client costs the others nothing and never holds a commit back; older
//! cursors are read page by page from the store. Where a cursor is served
//! from is decided by `berth_core::change_feed`.
//!
//! [`Context::changes_wakeup`]: crate::services::Context::changes_wakeup

use std::collections::{BTreeSet, VecDeque};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use berth_core::change_feed::{self, Mode, Start, Step};
use tokio::sync::{broadcast, watch, Notify};
use tokio_util::sync::CancellationToken;

use crate::metrics::Metrics;
use crate::ports::engine::PullProgress;
use crate::ports::store::{ChangeKind, ChangeRow, Store, StoreError};

/// The change feed's settings.
#[derive(Debug, Clone)]
pub struct FeedSettings {
    /// Changes kept in memory; a live client further behind is dropped.
    pub ring: usize,
    /// Rows per store read.
    pub page: u32,
    /// How often the store is read without a wakeup (other replicas).
    pub poll: Duration,
    /// Change-log rows kept in the database; older ones are pruned.
    pub retain: i64,
    /// An SSE comment this often on an idle connection.
    pub heartbeat: Duration,
    /// Connected stream clients at most; more are refused (503).
    pub max_clients: usize,
}

impl Default for FeedSettings {
    fn default() -> Self {
        FeedSettings {
            ring: 4096,
            page: 500,
            poll: Duration::from_secs(1),
            retain: 100_000,
            heartbeat: Duration::from_secs(15),
            max_clients: 1000,
        }
    }
}

/// One change as the stream sends it, serialised once for every client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FeedItem {
    pub seq: i64,
    pub kind: ChangeKind,
    pub runtime_id: Option<String>,
    /// The SSE `data:` line: `{"seq","kind","key","runtime","at"}`.
    pub data: String,
}

impl FeedItem {
    pub fn new(row: &ChangeRow) -> FeedItem {
        let data = serde_json::json!({
            "seq": row.seq,
            "kind": row.kind.as_str(),
            "key": row.key,
            "runtime": row.runtime_id,
            "at": row.at_ms,
        })
        .to_string();
        FeedItem {
            seq: row.seq,
            kind: row.kind,
            runtime_id: row.runtime_id.clone(),
            data,
        }
    }
}

/// What the hub publishes: every committed change with
/// `floor < seq <= head`, ascending.
#[derive(Debug, Default)]
pub struct Snapshot {
    pub floor: i64,
    pub head: i64,
    pub items: Vec<Arc<FeedItem>>,
    /// The hub stopped (shutdown): connections end.
    pub closed: bool,
}

/// A connection's filter (`?kinds=`, `?runtime=`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Filter {
    /// Empty: every kind.
    pub kinds: BTreeSet<ChangeKind>,
    pub runtime: Option<String>,
}

impl Filter {
    pub fn keeps(&self, item: &FeedItem) -> bool {
        (self.kinds.is_empty() || self.kinds.contains(&item.kind))
            && self
                .runtime
                .as_ref()
                .is_none_or(|r| item.runtime_id.as_ref() == Some(r))
    }
}

/// What a connection sends next.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Out {
    /// The cursor was older than the oldest change kept: reload.
    Reset {
        oldest: i64,
    },
    Change(Arc<FeedItem>),
}

/// Why a connection ends.
#[derive(Debug)]
pub enum End {
    /// Shutdown.
    Closed,
    /// The client fell behind the ring while live.
    Dropped,
    Store(StoreError),
}

/// The feed: the hub's state and the connections' entry point.
pub struct ChangeFeed {
    store: Arc<dyn Store>,
    wakeup: Arc<Notify>,
    metrics: Arc<Metrics>,
    settings: FeedSettings,
    tx: watch::Sender<Arc<Snapshot>>,
    /// One reader of new rows at a time.
    reading: tokio::sync::Mutex<()>,
    clients: Arc<AtomicUsize>,
    /// New rows since the last look at the log's size.
    since_prune_check: AtomicUsize,
    /// Image pull progress: not stored, only for who is connected now (a
    /// client that lags skips some; the next one says more).
    pulls: broadcast::Sender<Arc<PullEvent>>,
}

/// One progress report of an image pull for a runtime, as the stream's
/// `event: progress` sends it.
#[derive(Debug)]
pub struct PullEvent {
    pub runtime: String,
    /// `{"runtime","layer","status","current","total"}`.
    pub data: String,
}

/// The `data:` of a stream `event: progress`:
/// `{"runtime","layer","status","current","total"}`.
pub fn pull_data(runtime: &str, progress: &PullProgress) -> String {
    serde_json::json!({
        "runtime": runtime,
        "layer": progress.layer,
        "status": progress.status,
        "current": progress.current,
        "total": progress.total,
    })
    .to_string()
}

/// Pull progress reports held for slow connections before they skip some.
const PULL_BACKLOG: usize = 1024;

impl ChangeFeed {
    pub fn new(
        store: Arc<dyn Store>,
        wakeup: Arc<Notify>,
        metrics: Arc<Metrics>,
        settings: FeedSettings,
    ) -> ChangeFeed {
        let (tx, _) = watch::channel(Arc::new(Snapshot::default()));
        ChangeFeed {
            store,
            wakeup,
            metrics,
            settings,
            tx,
            reading: tokio::sync::Mutex::new(()),
            clients: Arc::new(AtomicUsize::new(0)),
            since_prune_check: AtomicUsize::new(0),
            pulls: broadcast::channel(PULL_BACKLOG).0,
        }
    }

    /// Tells the connections following `runtime` how its image pull goes.
    pub fn publish_pull(&self, runtime: &str, progress: &PullProgress) {
        if self.pulls.receiver_count() == 0 {
            return;
        }
        let data = pull_data(runtime, progress);
        // No receiver left since the check: nobody to tell.
        let _ = self.pulls.send(Arc::new(PullEvent {
            runtime: runtime.to_string(),
            data,
        }));
    }

    /// Pull progress from now on.
    pub fn pulls(&self) -> broadcast::Receiver<Arc<PullEvent>> {
        self.pulls.subscribe()
    }

    pub fn settings(&self) -> &FeedSettings {
        &self.settings
    }

    /// The current snapshot.
    pub fn snapshot(&self) -> Arc<Snapshot> {
        self.tx.borrow().clone()
    }

    /// Starts the ring at the newest stored change (nothing in memory):
    /// clients without a cursor begin there. Call once before serving.
    pub async fn load(&self) -> Result<(), StoreError> {
        let _reading = self.reading.lock().await;
        let head = self.store.change_bounds().await?.map_or(0, |(_, hi)| hi);
        self.tx.send_replace(Arc::new(Snapshot {
            floor: head,
            head,
            items: Vec::new(),
            closed: false,
        }));
        Ok(())
    }

    /// Reads the rows committed after the head into the ring and publishes
    /// it; returns how many were new. Reads at most about a ring's worth at
    /// a time (a long backlog is published in ring-sized steps, never held
    /// whole).
    pub async fn catch_up(&self) -> Result<usize, StoreError> {
        let _reading = self.reading.lock().await;
        let current = self.snapshot();
        let mut head = current.head;
        let mut new = Vec::new();
        loop {
            let rows = self
                .store
                .list_changes_after(head, self.settings.page)
                .await?;
            let short = rows.len() < self.settings.page as usize;
            for row in &rows {
                head = row.seq;
                new.push(Arc::new(FeedItem::new(row)));
            }
            if short || new.len() >= self.settings.ring {
                break;
            }
        }
        if new.is_empty() {
            return Ok(0);
        }
        let count = new.len();
        let mut items = Vec::with_capacity((current.items.len() + count).min(self.settings.ring));
        let total = current.items.len() + count;
        let skip = total.saturating_sub(self.settings.ring.max(1));
        let mut floor = current.floor;
        for (i, item) in current.items.iter().chain(new.iter()).enumerate() {
            if i < skip {
                floor = item.seq;
            } else {
                items.push(item.clone());
            }
        }
        self.tx.send_replace(Arc::new(Snapshot {
            floor,
            head,
            items,
            closed: current.closed,
        }));
        self.since_prune_check.fetch_add(count, Ordering::Relaxed);
        Ok(count)
    }

    /// Deletes change-log rows beyond the newest `retain`; looks only after
    /// a tenth of `retain` new rows, so most passes cost nothing.
    pub async fn prune(&self, force: bool) -> Result<u64, StoreError> {
        let every = (self.settings.retain / 10).max(1) as usize;
        if !force && self.since_prune_check.load(Ordering::Relaxed) < every {
            return Ok(0);
        }
        self.since_prune_check.store(0, Ordering::Relaxed);
        match self.store.change_bounds().await? {
            Some((lo, hi)) if hi - lo + 1 > self.settings.retain => {
                self.store
                    .prune_changes_before(hi - self.settings.retain + 1)
                    .await
            }
            _ => Ok(0),
        }
    }

    /// The hub: reads new rows after each wakeup and every `poll`, prunes
    /// now and then; on cancel, ends every connection.
    pub async fn run(self: Arc<Self>, cancel: CancellationToken) {
        loop {
            tokio::select! {
                _ = cancel.cancelled() => break,
                _ = self.wakeup.notified() => {}
                _ = tokio::time::sleep(self.settings.poll) => {}
            }
            match self.catch_up().await {
                // More may wait: read on at once.
                Ok(n) if n >= self.settings.ring => self.wakeup.notify_one(),
                Ok(_) => {}
                Err(e) => {
                    tracing::warn!(error = %e, "the change feed cannot read the change log; retrying");
                    continue;
                }
            }
            if let Err(e) = self.prune(false).await {
                tracing::warn!(error = %e, "the change feed cannot prune the change log");
            }
        }
        let _reading = self.reading.lock().await;
        let last = self.snapshot();
        self.tx.send_replace(Arc::new(Snapshot {
            floor: last.floor,
            head: last.head,
            items: last.items.clone(),
            closed: true,
        }));
    }

    /// A new connection after `after` (none: live from now), or `None` when
    /// `max_clients` are connected. Looks at the log's oldest row only
    /// when resuming.
    pub async fn subscribe(
        self: &Arc<Self>,
        after: Option<i64>,
        filter: Filter,
    ) -> Result<Option<Subscription>, StoreError> {
        let Some(guard) = ClientGuard::take(self) else {
            return Ok(None);
        };
        let rx = self.tx.subscribe();
        let head = rx.borrow().head;
        let oldest = match after {
            Some(_) => self.store.change_bounds().await?.map(|(lo, _)| lo),
            None => None,
        };
        let mut pending = VecDeque::new();
        let cursor = match change_feed::start(after, head, oldest) {
            Start::From(c) => c,
            Start::Reset { oldest } => {
                pending.push_back(Out::Reset { oldest });
                oldest - 1
            }
        };
        Ok(Some(Subscription {
            feed: self.clone(),
            rx,
            cursor,
            // Live from now is live at once: falling behind the ring drops
            // it. A resumed cursor catches up from the database first.
            mode: if after.is_none() {
                Mode::Live
            } else {
                Mode::CatchingUp
            },
            filter,
            pending,
            _guard: guard,
        }))
    }

    pub fn clients(&self) -> usize {
        self.clients.load(Ordering::Relaxed)
    }
}

/// Counts a connection while it lives.
struct ClientGuard {
    clients: Arc<AtomicUsize>,
    metrics: Arc<Metrics>,
}

impl ClientGuard {
    fn take(feed: &ChangeFeed) -> Option<ClientGuard> {
        let max = feed.settings.max_clients;
        feed.clients
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < max).then_some(n + 1)
            })
            .ok()?;
        feed.metrics.stream_clients.inc();
        Some(ClientGuard {
            clients: feed.clients.clone(),
            metrics: feed.metrics.clone(),
        })
    }
}

impl Drop for ClientGuard {
    fn drop(&mut self) {
        self.clients.fetch_sub(1, Ordering::AcqRel);
        self.metrics.stream_clients.dec();
    }
}

/// One stream connection: its cursor, filter and what it has yet to send.
pub struct Subscription {
    feed: Arc<ChangeFeed>,
    rx: watch::Receiver<Arc<Snapshot>>,
    cursor: i64,
    mode: Mode,
    filter: Filter,
    pending: VecDeque<Out>,
    _guard: ClientGuard,
}

impl Subscription {
    /// The last seq sent or skipped.
    pub fn cursor(&self) -> i64 {
        self.cursor
    }

    /// The next message, waiting for one. Cancel-safe: state changes only
    /// after each await.
    pub async fn next(&mut self) -> Result<Out, End> {
        loop {
            if let Some(out) = self.pending.pop_front() {
                return Ok(out);
            }
            let snap = self.rx.borrow_and_update().clone();
            if snap.closed {
                return Err(End::Closed);
            }
            match change_feed::step(self.cursor, self.mode, snap.floor, snap.head) {
                Step::Wait => {
                    if self.rx.changed().await.is_err() {
                        return Err(End::Closed);
                    }
                }
                Step::Memory => {
                    self.mode = Mode::Live;
                    let from = snap.items.partition_point(|i| i.seq <= self.cursor);
                    for item in &snap.items[from..] {
                        if self.filter.keeps(item) {
                            self.pending.push_back(Out::Change(item.clone()));
                        }
                    }
                    self.cursor = snap.head;
                }
                Step::Database => {
                    let page = self.feed.settings.page;
                    let rows = self
                        .feed
                        .store
                        .list_changes_after(self.cursor, page)
                        .await
                        .map_err(End::Store)?;
                    let short = rows.len() < page as usize;
                    for row in &rows {
                        let item = FeedItem::new(row);
                        if self.filter.keeps(&item) {
                            self.pending.push_back(Out::Change(Arc::new(item)));
                        }
                    }
                    self.cursor = change_feed::after_page(
                        self.cursor,
                        rows.last().map(|r| r.seq),
                        short,
                        snap.floor,
                    );
                }
                Step::Drop => {
                    self.feed.metrics.stream_dropped_clients.inc();
                    return Err(End::Dropped);
                }
            }
        }
    }
}
