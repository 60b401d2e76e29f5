//! An in-memory [`Store`], held to the same contract suite as the SQL
//! adapters (`tests/store_contract.rs`), with fault and crash injection for
//! the services' crash tests.
//!
//! Every call takes one lock; a write first checks everything that could
//! refuse it and only then changes anything, so a refused or failed write
//! leaves no trace, as a rolled-back transaction would.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard};

use async_trait::async_trait;
use berth_core::event::{HealthEvent, HealthEventType, JobResult, Notification};
use berth_core::operation::{Operation, Outcome};
use berth_core::pin::{Pin, PinHistoryEntry};
use berth_core::plugin::UpdateStatus;
use berth_core::rollout::RolloutState;
use berth_core::runtime::RuntimeRecord;
use berth_core::status::RuntimeStatus;
use berth_core::template::Template;

use crate::ports::store::{
    Change, EventFilter, EventStore, Observation, OperationFilter, OutboxIdentity, OutboxMessage,
    OutboxRow, OutboxStore, PluginChange, PluginRecord, PluginStore, PluginUpdate,
    PluginUpdateFilter, RejectionChange, RolloutRow, RolloutStore, RolloutTarget, RuntimeFilter,
    RuntimePage, RuntimeStore, Store, StoreError, TemplateStore, WatchStore, WebhookDelivery,
    WebhookStore,
};
use crate::ports::store::{ChangeKind, ChangeRow, ChangeStore, NewChangeRow};

/// What every call returns once an injected crash has "killed the process".
const CRASH: &str = "injected crash";

fn crash() -> StoreError {
    StoreError::Database(CRASH.to_string())
}

/// A handle on one in-memory store; clones share it, so a test keeps one
/// while the services hold it as `Arc<dyn Store>`.
#[derive(Clone)]
pub struct FakeStore {
    inner: Arc<Mutex<Inner>>,
}

#[derive(Default)]
struct Inner {
    data: Data,
    faults: Faults,
}

/// Run when the injected crash fires: what else dies with the process.
type CrashHook = Arc<dyn Fn() + Send + Sync>;

#[derive(Default)]
struct Faults {
    on_crash: Option<CrashHook>,
    /// Write calls left until the crash: 1 means the next one crashes.
    crash_in: Option<u64>,
    /// The crash happened: every call fails until `revive`.
    crashed: bool,
    fail_next: Option<StoreError>,
    /// Write calls to let through before `refuse` starts.
    refuse_after: u64,
    /// Write calls left to refuse with a database error, as a database
    /// that is restarting.
    refuse: u64,
    /// Write calls to let through before one that applies and then
    /// reports a lost connection.
    lose_reply_after: Option<u64>,
    /// Write calls that returned `Ok`.
    writes: u64,
}

impl Faults {
    /// Called at the start of every write call, before it checks anything.
    fn before_write(&mut self) -> Result<(), StoreError> {
        if self.crashed {
            return Err(crash());
        }
        match self.crash_in {
            Some(1) => {
                self.crash_in = None;
                self.crashed = true;
                if let Some(hook) = &self.on_crash {
                    hook();
                }
                return Err(crash());
            }
            Some(n) => self.crash_in = Some(n - 1),
            None => {}
        }
        if self.refuse_after > 0 {
            self.refuse_after -= 1;
        } else if self.refuse > 0 {
            self.refuse -= 1;
            return Err(StoreError::Database(
                "the database is restarting (injected)".into(),
            ));
        }
        match self.fail_next.take() {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }
}

/// The tables. Vectors keep the order of writing (the SQL `seq`); maps
/// keyed by name or id keep byte order (the SQL `COLLATE "C"`).
#[derive(Default)]
struct Data {
    templates: BTreeMap<String, Template>,
    pins: BTreeMap<String, Pin>,
    pin_history: Vec<PinHistoryEntry>,
    runtimes: BTreeMap<String, RuntimeRecord>,
    /// An update keeps the operation's place.
    operations: Vec<Operation>,
    health_events: Vec<HealthEvent>,
    notifications: Vec<Notification>,
    job_results: BTreeMap<String, JobResult>,
    outbox: BTreeMap<i64, OutboxEntry>,
    /// The last seq handed out; seqs are never reused.
    outbox_seq: i64,
    /// `OutboxStore::outbox_identity`'s id; set when the fake is made.
    outbox_id: String,
    observations: BTreeMap<String, Observation>,
    /// By (template, digest).
    rejections: BTreeMap<(String, String), Rejection>,
    /// In the order of first saving; an update keeps the rollout's place.
    rollouts: Vec<RolloutRow>,
    /// By rollout id, then runtime id.
    rollout_targets: BTreeMap<String, BTreeMap<String, RolloutTarget>>,
    /// By (runtime id, name).
    plugins: BTreeMap<(String, String), PluginRecord>,
    /// In the order of first writing; an update keeps its place.
    plugin_updates: Vec<PluginUpdate>,
    /// By seq (every webhook's queue in one table, as in SQL).
    webhook_deliveries: BTreeMap<i64, WebhookDelivery>,
    /// The last seq handed out; seqs are never reused.
    webhook_seq: i64,
    /// The change log, by seq.
    changes: BTreeMap<i64, ChangeRow>,
    /// The last seq handed out; seqs are never reused.
    change_seq: i64,
}

struct OutboxEntry {
    message: OutboxMessage,
    attempts: i64,
    last_error: Option<String>,
}

struct Rejection {
    reason: String,
    at_ms: i64,
}

impl Data {
    fn upsert_operation(&mut self, op: &Operation) {
        match self.operations.iter_mut().find(|o| o.id == op.id) {
            Some(stored) => *stored = op.clone(),
            None => self.operations.push(op.clone()),
        }
    }

    /// The refusals of `commit`, checked in the SQL adapters' order before
    /// anything is written.
    fn check_change(&self, change: &Change<'_>) -> Result<(), StoreError> {
        if let Some(job) = change.job_result {
            if self.job_results.contains_key(&job.job_id) {
                return Err(StoreError::Conflict(format!(
                    "job {:?} already has a result",
                    job.job_id
                )));
            }
        }
        if let Some(u) = change.plugin_update {
            let other_pending = self.plugin_updates.iter().any(|s| {
                s.id != u.id
                    && s.status == UpdateStatus::Pending
                    && s.runtime_id == u.runtime_id
                    && s.plugin == u.plugin
            });
            if u.status == UpdateStatus::Pending && other_pending {
                return Err(StoreError::Conflict(format!(
                    "plugin {:?} of runtime {:?} already has a pending update",
                    u.plugin, u.runtime_id
                )));
            }
        }
        for (i, e) in change.health_events.iter().enumerate() {
            let stored = self.health_events.iter().any(|s| s.id == e.id);
            let earlier = change.health_events[..i].iter().any(|s| s.id == e.id);
            if stored || earlier {
                return Err(StoreError::Conflict(format!(
                    "health event {:?} is already stored",
                    e.id
                )));
            }
        }
        for (i, d) in change.webhook_deliveries.iter().enumerate() {
            let stored = self.webhook_deliveries.values().any(|s| s.id == d.id);
            let earlier = change.webhook_deliveries[..i].iter().any(|s| s.id == d.id);
            if stored || earlier {
                return Err(StoreError::Conflict(format!(
                    "webhook delivery {:?} is already stored",
                    d.id
                )));
            }
            let same_intent = |s: &str, n: &str| s == d.webhook && n == d.notification_id;
            let stored = self
                .webhook_deliveries
                .values()
                .any(|s| same_intent(&s.webhook, &s.notification_id));
            let earlier = change.webhook_deliveries[..i]
                .iter()
                .any(|s| same_intent(&s.webhook, &s.notification_id));
            if stored || earlier {
                return Err(StoreError::Conflict(format!(
                    "webhook {:?} already has a delivery of notification {:?}",
                    d.webhook, d.notification_id
                )));
            }
        }
        for (i, n) in change.notifications.iter().enumerate() {
            let stored = self.notifications.iter().any(|s| s.id == n.id);
            let earlier = change.notifications[..i].iter().any(|s| s.id == n.id);
            if stored || earlier {
                return Err(StoreError::Conflict(format!(
                    "notification {:?} is already stored",
                    n.id
                )));
            }
        }
        Ok(())
    }

    /// Appends change-log rows (in the write that changed what they name).
    fn append_changes(&mut self, rows: Vec<NewChangeRow>) {
        for r in rows {
            self.change_seq += 1;
            let seq = self.change_seq;
            self.changes.insert(
                seq,
                ChangeRow {
                    seq,
                    at_ms: r.at_ms,
                    kind: r.kind,
                    key: r.key,
                    runtime_id: r.runtime_id,
                },
            );
        }
    }

    /// Writes a change that [`Data::check_change`] accepted.
    fn apply_change(&mut self, change: &Change<'_>) {
        self.append_changes(change.change_rows());
        if let Some(job) = change.job_result {
            self.job_results.insert(job.job_id.clone(), job.clone());
        }
        if let Some(r) = change.runtime {
            self.runtimes.insert(r.id.clone(), r.clone());
        }
        if let Some(op) = change.operation {
            self.upsert_operation(op);
        }
        if let Some(p) = change.pin {
            self.pins.insert(p.pin.template.clone(), p.pin.clone());
            self.pin_history.push(p.entry.clone());
        }
        if let Some(obs) = change.observation {
            self.observations.insert(obs.template.clone(), obs.clone());
        }
        match change.rejection {
            Some(RejectionChange::Reject {
                template,
                digest,
                reason,
                at_ms,
            }) => {
                self.rejections.insert(
                    (template.to_string(), digest.to_string()),
                    Rejection {
                        reason: reason.to_string(),
                        at_ms,
                    },
                );
            }
            Some(RejectionChange::Lift { template, digest }) => {
                self.rejections
                    .remove(&(template.to_string(), digest.to_string()));
            }
            None => {}
        }
        if let Some(r) = change.rollout {
            match self.rollouts.iter_mut().find(|s| s.id == r.rollout.id) {
                Some(stored) => *stored = r.rollout.clone(),
                None => self.rollouts.push(r.rollout.clone()),
            }
            let targets = self
                .rollout_targets
                .entry(r.rollout.id.clone())
                .or_default();
            for t in r.targets {
                targets.insert(t.runtime_id.clone(), t.clone());
            }
        }
        match change.plugin {
            Some(PluginChange::Put(p)) => {
                self.plugins
                    .insert((p.runtime_id.clone(), p.name.clone()), p.clone());
            }
            Some(PluginChange::Delete { runtime_id, name }) => {
                self.plugins
                    .remove(&(runtime_id.to_string(), name.to_string()));
            }
            None => {}
        }
        if let Some(u) = change.plugin_update {
            match self.plugin_updates.iter_mut().find(|s| s.id == u.id) {
                Some(stored) => {
                    // The SQL upsert keeps the row's identity columns.
                    stored.track = u.track.clone();
                    stored.from_sha = u.from_sha.clone();
                    stored.to_sha = u.to_sha.clone();
                    stored.status = u.status;
                    stored.updated_at_ms = u.updated_at_ms;
                }
                None => self.plugin_updates.push(u.clone()),
            }
        }
        self.health_events
            .extend(change.health_events.iter().cloned());
        self.notifications
            .extend(change.notifications.iter().cloned());
        for m in change.outbox {
            self.outbox_seq += 1;
            self.outbox.insert(
                self.outbox_seq,
                OutboxEntry {
                    message: m.clone(),
                    attempts: 0,
                    last_error: None,
                },
            );
        }
        for d in change.webhook_deliveries {
            self.webhook_seq += 1;
            self.webhook_deliveries.insert(
                self.webhook_seq,
                WebhookDelivery {
                    seq: self.webhook_seq,
                    id: d.id.clone(),
                    webhook: d.webhook.clone(),
                    notification_id: d.notification_id.clone(),
                    notification_type: d.notification_type.clone(),
                    body: d.body.clone(),
                    created_at_ms: d.created_at_ms,
                    attempts: 0,
                    last_error: None,
                    last_attempt_at_ms: None,
                    delivered_at_ms: None,
                },
            );
        }
    }
}

/// The newest `limit` of `rows` (kept oldest first) that `keep` accepts.
fn newest_first<T: Clone>(rows: &[T], limit: u32, keep: impl Fn(&T) -> bool) -> Vec<T> {
    rows.iter()
        .rev()
        .filter(|r| keep(r))
        .take(limit as usize)
        .cloned()
        .collect()
}

/// [`newest_first`] of the rows written before the one `id_of` names
/// `before`; nothing when no row has that id.
fn newest_first_before<T: Clone>(
    rows: &[T],
    limit: u32,
    before: Option<&str>,
    id_of: impl Fn(&T) -> &str,
    keep: impl Fn(&T) -> bool,
) -> Vec<T> {
    let end = match before {
        None => rows.len(),
        Some(b) => match rows.iter().position(|r| id_of(r) == b) {
            Some(i) => i,
            None => return Vec::new(),
        },
    };
    newest_first(&rows[..end], limit, keep)
}

impl Default for FakeStore {
    fn default() -> Self {
        FakeStore::new()
    }
}

impl FakeStore {
    pub fn new() -> Self {
        let store = FakeStore {
            inner: Arc::default(),
        };
        store.lock().data.outbox_id = uuid::Uuid::now_v7().simple().to_string();
        store
    }

    /// Gives this store the outbox identity `id`, as a database restored
    /// from a backup of the one that had it.
    pub fn set_outbox_identity(&self, id: &str) {
        self.lock().data.outbox_id = id.to_string();
    }

    /// The `k`-th write call from now (1-based; `commit`, `record` and every
    /// other method that writes count, whether or not they would succeed)
    /// writes nothing and fails with `Database("injected crash")`, and from
    /// then on every call, reads included, fails the same way until
    /// [`FakeStore::revive`]: the process died at that commit boundary.
    pub fn crash_at_commit(&self, k: u64) {
        assert!(k >= 1, "crash_at_commit counts from 1");
        self.lock().faults.crash_in = Some(k);
    }

    /// Ends a crash (and drops any fault not yet fired), as a restarted
    /// process finds the database: exactly what was committed.
    pub fn revive(&self) {
        let mut inner = self.lock();
        inner.faults = Faults {
            writes: inner.faults.writes,
            on_crash: inner.faults.on_crash.take(),
            ..Faults::default()
        };
    }

    /// Runs `hook` when an injected crash fires (e.g. the engine becomes
    /// unavailable: a dead process does nothing more to the host). Kept
    /// across [`FakeStore::revive`].
    pub fn on_crash(&self, hook: impl Fn() + Send + Sync + 'static) {
        self.lock().faults.on_crash = Some(Arc::new(hook));
    }

    /// Whether an injected crash has happened (and not yet been revived).
    pub fn crashed(&self) -> bool {
        self.lock().faults.crashed
    }

    /// How many write calls have succeeded so far: after a clean run of a
    /// flow, its number of commit boundaries (the `k`s to crash at).
    pub fn writes(&self) -> u64 {
        self.lock().faults.writes
    }

    /// The next write call writes nothing and returns `error`; the store
    /// goes on working afterwards.
    pub fn fail_next_write(&self, error: StoreError) {
        self.lock().faults.fail_next = Some(error);
    }

    /// After `after` more write calls, the next `n` write nothing and fail
    /// with a database error (reads still work): a database restarting,
    /// or a connection lost before the commit.
    pub fn refuse_writes(&self, after: u64, n: u64) {
        let mut inner = self.lock();
        inner.faults.refuse_after = after;
        inner.faults.refuse = n;
    }

    /// After `after` more successful write calls, the next one commits and
    /// then fails with a database error: the connection was lost before
    /// the reply.
    pub fn lose_reply_after(&self, after: u64) {
        self.lock().faults.lose_reply_after = Some(after);
    }

    /// The error kept by the last [`OutboxStore::outbox_failed`] of message
    /// `seq`, which the port does not read back.
    pub fn outbox_error(&self, seq: i64) -> Option<String> {
        self.lock()
            .data
            .outbox
            .get(&seq)
            .and_then(|e| e.last_error.clone())
    }

    /// The reason and time of a stored rejection, which the port does not
    /// read back.
    pub fn rejection(&self, template: &str, digest: &str) -> Option<(String, i64)> {
        self.lock()
            .data
            .rejections
            .get(&(template.to_string(), digest.to_string()))
            .map(|r| (r.reason.clone(), r.at_ms))
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // A test that panicked while holding the lock left consistent data:
        // every write checks before it changes anything.
        self.inner
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn read<T>(&self, read: impl FnOnce(&Data) -> T) -> Result<T, StoreError> {
        let inner = self.lock();
        if inner.faults.crashed {
            return Err(crash());
        }
        Ok(read(&inner.data))
    }

    /// Runs one write call. `write` must return `Err` only before it has
    /// changed anything.
    fn write<T>(
        &self,
        write: impl FnOnce(&mut Data) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        let mut inner = self.lock();
        inner.faults.before_write()?;
        let out = write(&mut inner.data)?;
        inner.faults.writes += 1;
        match inner.faults.lose_reply_after {
            Some(0) => {
                inner.faults.lose_reply_after = None;
                return Err(StoreError::Database(
                    "the connection was lost before the reply (injected)".into(),
                ));
            }
            Some(n) => inner.faults.lose_reply_after = Some(n - 1),
            None => {}
        }
        Ok(out)
    }
}

#[async_trait]
impl TemplateStore for FakeStore {
    async fn put_template(&self, template: &Template, op: &Operation) -> Result<bool, StoreError> {
        self.write(|d| {
            let existed = d
                .templates
                .insert(template.name.clone(), template.clone())
                .is_some();
            d.upsert_operation(op);
            d.append_changes(NewChangeRow::for_write(
                &[(ChangeKind::Template, template.name.as_str())],
                op,
            ));
            Ok(!existed)
        })
    }

    async fn get_template(&self, name: &str) -> Result<Option<Template>, StoreError> {
        self.read(|d| d.templates.get(name).cloned())
    }

    async fn list_templates(&self) -> Result<Vec<Template>, StoreError> {
        self.read(|d| d.templates.values().cloned().collect())
    }

    async fn delete_template(&self, name: &str, op: &Operation) -> Result<bool, StoreError> {
        self.write(|d| {
            if !d.templates.contains_key(name) {
                return Ok(false);
            }
            let users = d
                .runtimes
                .values()
                .filter(|r| r.template == name && r.status != RuntimeStatus::Removed)
                .count();
            if users > 0 {
                let runtimes = if users == 1 { "runtime" } else { "runtimes" };
                return Err(StoreError::Conflict(format!(
                    "template {name:?} is used by {users} {runtimes} that {} not removed; \
                     remove {} first",
                    if users == 1 { "is" } else { "are" },
                    if users == 1 { "it" } else { "them" },
                )));
            }
            d.templates.remove(name);
            let mut named = vec![(ChangeKind::Template, name)];
            if d.pins.remove(name).is_some() {
                named.push((ChangeKind::Pin, name));
            }
            d.upsert_operation(op);
            d.append_changes(NewChangeRow::for_write(&named, op));
            Ok(true)
        })
    }

    async fn get_pin(&self, template: &str) -> Result<Option<Pin>, StoreError> {
        self.read(|d| d.pins.get(template).cloned())
    }

    async fn list_pins(&self) -> Result<Vec<Pin>, StoreError> {
        self.read(|d| d.pins.values().cloned().collect())
    }

    async fn seed_pin(
        &self,
        pin: &Pin,
        entry: &PinHistoryEntry,
        op: &Operation,
    ) -> Result<bool, StoreError> {
        self.write(|d| {
            if d.pin_history.iter().any(|e| e.template == pin.template) {
                return Ok(false);
            }
            d.pins.insert(pin.template.clone(), pin.clone());
            d.pin_history.push(entry.clone());
            d.upsert_operation(op);
            d.append_changes(NewChangeRow::for_write(
                &[(ChangeKind::Pin, pin.template.as_str())],
                op,
            ));
            Ok(true)
        })
    }

    async fn unpin(
        &self,
        template: &str,
        entry: &PinHistoryEntry,
        op: &Operation,
    ) -> Result<bool, StoreError> {
        self.write(|d| {
            if d.pins.remove(template).is_none() {
                return Ok(false);
            }
            d.pin_history.push(entry.clone());
            d.upsert_operation(op);
            d.append_changes(NewChangeRow::for_write(&[(ChangeKind::Pin, template)], op));
            Ok(true)
        })
    }

    async fn pin_history(
        &self,
        template: &str,
        limit: u32,
    ) -> Result<Vec<PinHistoryEntry>, StoreError> {
        self.read(|d| newest_first(&d.pin_history, limit, |e| e.template == template))
    }
}

#[async_trait]
impl RuntimeStore for FakeStore {
    async fn get_runtime(&self, id: &str) -> Result<Option<RuntimeRecord>, StoreError> {
        self.read(|d| d.runtimes.get(id).cloned())
    }

    async fn list_runtimes(
        &self,
        filter: &RuntimeFilter,
    ) -> Result<Vec<RuntimeRecord>, StoreError> {
        self.read(|d| {
            d.runtimes
                .values()
                .filter(|r| filter.template.as_ref().is_none_or(|t| r.template == *t))
                .filter(|r| filter.status.is_none_or(|s| r.status == s))
                .cloned()
                .collect()
        })
    }

    async fn list_runtimes_page(
        &self,
        page: &RuntimePage,
    ) -> Result<Vec<RuntimeRecord>, StoreError> {
        use std::ops::Bound;
        self.read(|d| {
            let from = match &page.after {
                Some(a) => Bound::Excluded(a.clone()),
                None => Bound::Unbounded,
            };
            d.runtimes
                .range((from, Bound::Unbounded))
                .map(|(_, r)| r)
                .filter(|r| {
                    let pin = d.pins.get(&r.template).map(|p| p.digest.to_string());
                    page.keeps(r, pin.as_deref())
                })
                .take(page.limit.map_or(usize::MAX, |l| l as usize))
                .cloned()
                .collect()
        })
    }

    async fn list_operations_before(
        &self,
        filter: &OperationFilter,
        before: Option<&str>,
    ) -> Result<Vec<Operation>, StoreError> {
        self.read(|d| {
            newest_first_before(
                &d.operations,
                filter.limit,
                before,
                |o| &o.id,
                |o| {
                    filter
                        .runtime_id
                        .as_ref()
                        .is_none_or(|r| o.runtime_id.as_ref() == Some(r))
                        && filter.kind.is_none_or(|k| o.kind == k)
                },
            )
        })
    }

    async fn get_operation(&self, id: &str) -> Result<Option<Operation>, StoreError> {
        self.read(|d| d.operations.iter().find(|o| o.id == id).cloned())
    }

    async fn fail_in_progress_operations(
        &self,
        code: &str,
        message: &str,
        now_ms: i64,
    ) -> Result<Vec<Operation>, StoreError> {
        self.write(|d| {
            let mut changed = Vec::new();
            for o in &mut d.operations {
                if o.outcome == Outcome::InProgress {
                    o.outcome = Outcome::Failure;
                    o.error_code = Some(code.to_string());
                    o.error_message = Some(message.to_string());
                    o.finished_at_ms = Some(now_ms);
                    changed.push(o.clone());
                }
            }
            for op in &changed {
                d.append_changes(NewChangeRow::for_write(&[], op));
            }
            Ok(changed)
        })
    }

    async fn get_job_result(&self, job_id: &str) -> Result<Option<JobResult>, StoreError> {
        self.read(|d| d.job_results.get(job_id).cloned())
    }
}

#[async_trait]
impl EventStore for FakeStore {
    async fn list_health_events_before(
        &self,
        filter: &EventFilter,
        before: Option<&str>,
    ) -> Result<Vec<HealthEvent>, StoreError> {
        self.read(|d| {
            newest_first_before(
                &d.health_events,
                filter.limit,
                before,
                |e| &e.id,
                |e| {
                    filter
                        .runtime_id
                        .as_ref()
                        .is_none_or(|r| e.runtime_id == *r)
                        && filter.event_type.is_none_or(|t| e.event_type == t)
                },
            )
        })
    }

    async fn has_health_event(
        &self,
        runtime_id: &str,
        container_id: &str,
        event_type: HealthEventType,
    ) -> Result<bool, StoreError> {
        self.read(|d| {
            d.health_events.iter().any(|e| {
                e.runtime_id == runtime_id
                    && e.container_id.as_deref() == Some(container_id)
                    && e.event_type == event_type
            })
        })
    }

    async fn list_notifications_before(
        &self,
        limit: u32,
        before: Option<&str>,
    ) -> Result<Vec<Notification>, StoreError> {
        self.read(|d| newest_first_before(&d.notifications, limit, before, |n| &n.id, |_| true))
    }
}

#[async_trait]
impl OutboxStore for FakeStore {
    async fn outbox_pending(&self, limit: u32) -> Result<Vec<OutboxRow>, StoreError> {
        self.read(|d| {
            d.outbox
                .iter()
                .take(limit as usize)
                .map(|(seq, e)| OutboxRow {
                    seq: *seq,
                    message: e.message.clone(),
                    attempts: e.attempts,
                })
                .collect()
        })
    }

    async fn outbox_delete(&self, seqs: &[i64]) -> Result<(), StoreError> {
        self.write(|d| {
            for seq in seqs {
                d.outbox.remove(seq);
            }
            Ok(())
        })
    }

    async fn outbox_failed(&self, seq: i64, error: &str) -> Result<(), StoreError> {
        self.write(|d| {
            if let Some(e) = d.outbox.get_mut(&seq) {
                e.attempts += 1;
                e.last_error = Some(error.to_string());
            }
            Ok(())
        })
    }

    async fn outbox_identity(&self) -> Result<OutboxIdentity, StoreError> {
        self.read(|d| OutboxIdentity {
            id: d.outbox_id.clone(),
            drawn: d.outbox_seq,
        })
    }

    async fn outbox_new_identity(&self) -> Result<String, StoreError> {
        let id = uuid::Uuid::now_v7().simple().to_string();
        self.write(|d| {
            d.outbox_id = id.clone();
            Ok(())
        })?;
        Ok(id)
    }
}

#[async_trait]
impl WebhookStore for FakeStore {
    async fn webhook_head(&self, webhook: &str) -> Result<Option<WebhookDelivery>, StoreError> {
        self.read(|d| {
            d.webhook_deliveries
                .values()
                .find(|w| w.webhook == webhook && w.delivered_at_ms.is_none())
                .cloned()
        })
    }

    async fn webhook_delivered(&self, seq: i64, at_ms: i64) -> Result<(), StoreError> {
        self.write(|d| {
            if let Some(w) = d.webhook_deliveries.get_mut(&seq) {
                if w.delivered_at_ms.is_none() {
                    w.attempts += 1;
                    w.delivered_at_ms = Some(at_ms);
                    w.last_attempt_at_ms = Some(at_ms);
                }
            }
            Ok(())
        })
    }

    async fn webhook_failed(&self, seq: i64, error: &str, at_ms: i64) -> Result<(), StoreError> {
        self.write(|d| {
            if let Some(w) = d.webhook_deliveries.get_mut(&seq) {
                if w.delivered_at_ms.is_none() {
                    w.attempts += 1;
                    w.last_error = Some(error.to_string());
                    w.last_attempt_at_ms = Some(at_ms);
                }
            }
            Ok(())
        })
    }

    async fn webhook_pending_count(&self, webhook: &str, cap: u32) -> Result<u64, StoreError> {
        self.read(|d| {
            d.webhook_deliveries
                .values()
                .filter(|w| w.webhook == webhook && w.delivered_at_ms.is_none())
                .take(cap as usize)
                .count() as u64
        })
    }

    async fn list_webhook_deliveries(
        &self,
        webhook: Option<&str>,
        limit: u32,
    ) -> Result<Vec<WebhookDelivery>, StoreError> {
        self.read(|d| {
            d.webhook_deliveries
                .values()
                .rev()
                .filter(|w| webhook.is_none_or(|name| w.webhook == name))
                .take(limit as usize)
                .cloned()
                .collect()
        })
    }

    async fn prune_webhook_deliveries(
        &self,
        webhook: &str,
        delivered_before_ms: i64,
        keep: u32,
    ) -> Result<u64, StoreError> {
        self.write(|d| {
            let delivered: Vec<(i64, i64)> = d
                .webhook_deliveries
                .values()
                .rev()
                .filter(|w| w.webhook == webhook)
                .filter_map(|w| w.delivered_at_ms.map(|at| (w.seq, at)))
                .collect();
            let gone: Vec<i64> = delivered
                .iter()
                .enumerate()
                .filter(|(i, (_, at))| *i >= keep as usize || *at < delivered_before_ms)
                .map(|(_, (seq, _))| *seq)
                .collect();
            for seq in &gone {
                d.webhook_deliveries.remove(seq);
            }
            Ok(gone.len() as u64)
        })
    }
}

#[async_trait]
impl WatchStore for FakeStore {
    async fn get_observation(&self, template: &str) -> Result<Option<Observation>, StoreError> {
        self.read(|d| d.observations.get(template).cloned())
    }

    async fn is_rejected(&self, template: &str, digest: &str) -> Result<bool, StoreError> {
        self.read(|d| {
            d.rejections
                .contains_key(&(template.to_string(), digest.to_string()))
        })
    }
}

#[async_trait]
impl RolloutStore for FakeStore {
    async fn get_rollout(
        &self,
        id: &str,
    ) -> Result<Option<(RolloutRow, Vec<RolloutTarget>)>, StoreError> {
        self.read(|d| {
            let rollout = d.rollouts.iter().find(|r| r.id == id)?.clone();
            // By runtime id already; a stable sort by position keeps that
            // as the tie-break.
            let mut targets: Vec<RolloutTarget> = d
                .rollout_targets
                .get(id)
                .map(|t| t.values().cloned().collect())
                .unwrap_or_default();
            targets.sort_by_key(|t| t.position);
            Some((rollout, targets))
        })
    }

    async fn list_rollouts(
        &self,
        template: Option<&str>,
        limit: u32,
    ) -> Result<Vec<RolloutRow>, StoreError> {
        self.read(|d| {
            newest_first(&d.rollouts, limit, |r| {
                template.is_none_or(|t| r.template == t)
            })
        })
    }

    async fn active_rollouts(&self) -> Result<Vec<RolloutRow>, StoreError> {
        self.read(|d| {
            d.rollouts
                .iter()
                .filter(|r| matches!(r.state, RolloutState::Running | RolloutState::Paused))
                .cloned()
                .collect()
        })
    }
}

#[async_trait]
impl PluginStore for FakeStore {
    async fn get_plugin(
        &self,
        runtime_id: &str,
        name: &str,
    ) -> Result<Option<PluginRecord>, StoreError> {
        self.read(|d| {
            d.plugins
                .get(&(runtime_id.to_string(), name.to_string()))
                .cloned()
        })
    }

    async fn list_plugins(
        &self,
        runtime_id: Option<&str>,
    ) -> Result<Vec<PluginRecord>, StoreError> {
        self.read(|d| {
            d.plugins
                .values()
                .filter(|p| runtime_id.is_none_or(|r| p.runtime_id == r))
                .cloned()
                .collect()
        })
    }

    async fn get_plugin_update(&self, id: &str) -> Result<Option<PluginUpdate>, StoreError> {
        self.read(|d| d.plugin_updates.iter().find(|u| u.id == id).cloned())
    }

    async fn pending_plugin_update(
        &self,
        runtime_id: &str,
        plugin: &str,
    ) -> Result<Option<PluginUpdate>, StoreError> {
        self.read(|d| {
            d.plugin_updates
                .iter()
                .find(|u| {
                    u.status == UpdateStatus::Pending
                        && u.runtime_id == runtime_id
                        && u.plugin == plugin
                })
                .cloned()
        })
    }

    async fn list_plugin_updates(
        &self,
        filter: &PluginUpdateFilter,
    ) -> Result<Vec<PluginUpdate>, StoreError> {
        self.read(|d| {
            newest_first(&d.plugin_updates, filter.limit, |u| {
                filter.status.is_none_or(|s| u.status == s)
                    && filter
                        .runtime_id
                        .as_deref()
                        .is_none_or(|r| u.runtime_id == r)
                    && filter.plugin.as_deref().is_none_or(|p| u.plugin == p)
            })
        })
    }

    async fn mark_plugins_resolved(
        &self,
        keys: &[(String, String)],
        at_ms: i64,
    ) -> Result<(), StoreError> {
        self.write(|d| {
            for key in keys {
                if let Some(p) = d.plugins.get_mut(key) {
                    p.resolved_at_ms = Some(at_ms);
                    p.last_error = None;
                }
            }
            Ok(())
        })
    }
}

#[async_trait]
impl ChangeStore for FakeStore {
    async fn list_changes_after(
        &self,
        after: i64,
        limit: u32,
    ) -> Result<Vec<ChangeRow>, StoreError> {
        self.read(|d| {
            d.changes
                .range(after.saturating_add(1)..)
                .take(limit as usize)
                .map(|(_, r)| r.clone())
                .collect()
        })
    }

    async fn change_bounds(&self) -> Result<Option<(i64, i64)>, StoreError> {
        self.read(|d| {
            d.changes
                .first_key_value()
                .map(|(k, _)| *k)
                .zip(d.changes.last_key_value().map(|(k, _)| *k))
        })
    }

    /// Housekeeping, not a decision: fails once crashed, but is not one of
    /// the write calls `crash_at_commit` counts (so a feed that prunes does
    /// not move the commit boundaries of the crash tests).
    async fn prune_changes_before(&self, before: i64) -> Result<u64, StoreError> {
        let mut inner = self.lock();
        if inner.faults.crashed {
            return Err(crash());
        }
        let d = &mut inner.data;
        let keep = d.changes.split_off(&before);
        let pruned = d.changes.len() as u64;
        d.changes = keep;
        Ok(pruned)
    }
}

#[async_trait]
impl Store for FakeStore {
    async fn commit(&self, change: &Change<'_>) -> Result<(), StoreError> {
        self.write(|d| {
            d.check_change(change)?;
            d.apply_change(change);
            Ok(())
        })
    }
}
