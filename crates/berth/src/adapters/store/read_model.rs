//! The in-memory read model of runtime records: a [`Store`] decorator that
//! answers runtime reads (`get_runtime`, `list_runtimes`,
//! `list_runtimes_page`) from memory and passes everything else to the
//! store it wraps.
//!
//! The database stays the truth. The model is loaded from it when the
//! decorator is built (at boot; a restart rebuilds it), and every write
//! that can change a runtime record or a pin's digest goes through this
//! decorator — `Store::commit` (and `record`, which commits), `seed_pin`,
//! `unpin`, `delete_template` — which applies the change to the model after
//! the database committed it, before the caller sees the result. So no
//! service can forget to update it, and a read after a write in this
//! process sees the write.
//!
//! Writes through the decorator take turns (one async mutex around the
//! database write and the model update), so the model takes the changes in
//! the order the database committed them. That costs nothing on SQLite,
//! where `BEGIN IMMEDIATE` already lets one writer at a time.
//!
//! A failed write may still have committed (an error after `COMMIT` was
//! sent): the model then re-reads what the change touched from the
//! database; when that fails too, the model is marked stale, reads go to
//! the database, and the next read tries a full reload.
//!
//! It is only correct when this process makes every write to the runtime
//! and pin tables: `adapters::store::connect` uses it for SQLite (one berth
//! per database file) and never for PostgreSQL, where other replicas write
//! the same tables and reads go to the database through keyset SQL.

use std::collections::{BTreeMap, HashMap};
use std::ops::Bound;
use std::sync::{Arc, RwLock, RwLockReadGuard, RwLockWriteGuard};

use async_trait::async_trait;
use berth_core::event::{HealthEvent, HealthEventType, JobResult, Notification};
use berth_core::operation::Operation;
use berth_core::pin::{Pin, PinHistoryEntry};
use berth_core::runtime::RuntimeRecord;
use berth_core::template::Template;

use crate::ports::store::{
    Change, EventFilter, EventStore, Observation, OperationFilter, OutboxIdentity, OutboxRow,
    OutboxStore, PluginRecord, PluginStore, PluginUpdate, PluginUpdateFilter, RolloutRow,
    RolloutStore, RolloutTarget, RuntimeFilter, RuntimePage, RuntimeStore, Store, StoreError,
    TemplateStore, WatchStore, WebhookDelivery, WebhookStore,
};
use crate::ports::store::{ChangeRow, ChangeStore};

/// What the model holds: every runtime record by id, and each pinned
/// template's digest (for the `stale` filter).
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct ModelSnapshot {
    pub runtimes: BTreeMap<String, Arc<RuntimeRecord>>,
    pub pins: HashMap<String, String>,
}

/// Records read from the database per query while loading.
const LOAD_PAGE: u32 = 1_000;

#[derive(Default)]
struct Model {
    snapshot: ModelSnapshot,
    /// False when a write's outcome could not be re-read: the model may
    /// disagree with the database until the next full reload.
    fresh: bool,
}

/// A [`Store`] whose runtime reads are answered from memory; see the
/// module documentation.
pub struct ReadModelStore {
    inner: Arc<dyn Store>,
    model: RwLock<Model>,
    writes: tokio::sync::Mutex<()>,
}

impl ReadModelStore {
    /// Wraps `inner` and loads the model from it. `inner` must not be
    /// written through any other handle from now on.
    pub async fn load(inner: Arc<dyn Store>) -> Result<Self, StoreError> {
        let store = ReadModelStore {
            inner,
            model: RwLock::new(Model::default()),
            writes: tokio::sync::Mutex::new(()),
        };
        store.reload().await?;
        Ok(store)
    }

    /// A copy of what the model holds now (for tests and checks).
    pub fn snapshot(&self) -> ModelSnapshot {
        self.read_model().snapshot.clone()
    }

    /// Reads the database into the model from scratch, a keyset page at a
    /// time: reading every row at once would hold all of them twice (rows
    /// and records) at the peak. Writes wait meanwhile (callers hold the
    /// write turn or run before any write), so the pages are one state.
    async fn reload(&self) -> Result<(), StoreError> {
        let mut runtimes = BTreeMap::new();
        let mut after: Option<String> = None;
        loop {
            let page = self
                .inner
                .list_runtimes_page(&RuntimePage {
                    after: after.take(),
                    limit: Some(LOAD_PAGE),
                    ..RuntimePage::default()
                })
                .await?;
            let full = page.len() == LOAD_PAGE as usize;
            for rec in page {
                after = Some(rec.id.clone());
                runtimes.insert(rec.id.clone(), Arc::new(rec));
            }
            if !full {
                break;
            }
        }
        let pins = self
            .inner
            .list_pins()
            .await?
            .into_iter()
            .map(|p| (p.template, p.digest.to_string()))
            .collect();
        *self.write_model() = Model {
            snapshot: ModelSnapshot { runtimes, pins },
            fresh: true,
        };
        crate::heap::release_free_memory();
        Ok(())
    }

    // A panic while holding the lock cannot leave the model half-changed:
    // every change under it is a single map insert or remove.
    fn read_model(&self) -> RwLockReadGuard<'_, Model> {
        self.model.read().unwrap_or_else(|e| e.into_inner())
    }

    fn write_model(&self) -> RwLockWriteGuard<'_, Model> {
        self.model.write().unwrap_or_else(|e| e.into_inner())
    }

    /// Whether reads may be answered from memory; tries a reload when the
    /// model went stale.
    async fn usable(&self) -> bool {
        if self.read_model().fresh {
            return true;
        }
        let _turn = self.writes.lock().await;
        if self.read_model().fresh {
            return true;
        }
        self.reload().await.is_ok()
    }

    fn put_runtime(&self, rec: &RuntimeRecord) {
        self.write_model()
            .snapshot
            .runtimes
            .insert(rec.id.clone(), Arc::new(rec.clone()));
    }

    fn set_pin(&self, template: &str, digest: Option<String>) {
        let mut model = self.write_model();
        match digest {
            Some(d) => model.snapshot.pins.insert(template.to_string(), d),
            None => model.snapshot.pins.remove(template),
        };
    }

    /// After a write that failed: whatever it touched is read back from the
    /// database; if that fails as well the model is stale.
    async fn resync(&self, runtime: Option<&str>, template: Option<&str>) {
        let mut ok = true;
        if let Some(id) = runtime {
            match self.inner.get_runtime(id).await {
                Ok(Some(rec)) => self.put_runtime(&rec),
                Ok(None) => {
                    self.write_model().snapshot.runtimes.remove(id);
                }
                Err(_) => ok = false,
            }
        }
        if let Some(t) = template {
            match self.inner.get_pin(t).await {
                Ok(pin) => self.set_pin(t, pin.map(|p| p.digest.to_string())),
                Err(_) => ok = false,
            }
        }
        if !ok {
            self.write_model().fresh = false;
        }
    }

    /// The records of `page` from the model, shared (no copy of a record).
    fn page(&self, page: &RuntimePage) -> Vec<Arc<RuntimeRecord>> {
        let model = self.read_model();
        let snapshot = &model.snapshot;
        let from = match &page.after {
            Some(a) => Bound::Excluded(a.as_str()),
            None => Bound::Unbounded,
        };
        snapshot
            .runtimes
            .range::<str, _>((from, Bound::Unbounded))
            .map(|(_, r)| r)
            .filter(|r| page.keeps(r, snapshot.pins.get(&r.template).map(String::as_str)))
            .take(page.limit.map_or(usize::MAX, |l| l as usize))
            .cloned()
            .collect()
    }
}

fn owned(records: Vec<Arc<RuntimeRecord>>) -> Vec<RuntimeRecord> {
    records.into_iter().map(Arc::unwrap_or_clone).collect()
}

#[async_trait]
impl TemplateStore for ReadModelStore {
    async fn put_template(&self, template: &Template, op: &Operation) -> Result<bool, StoreError> {
        self.inner.put_template(template, op).await
    }
    async fn get_template(&self, name: &str) -> Result<Option<Template>, StoreError> {
        self.inner.get_template(name).await
    }
    async fn list_templates(&self) -> Result<Vec<Template>, StoreError> {
        self.inner.list_templates().await
    }
    async fn delete_template(&self, name: &str, op: &Operation) -> Result<bool, StoreError> {
        let _turn = self.writes.lock().await;
        match self.inner.delete_template(name, op).await {
            Ok(deleted) => {
                if deleted {
                    self.set_pin(name, None);
                }
                Ok(deleted)
            }
            Err(e) => {
                self.resync(None, Some(name)).await;
                Err(e)
            }
        }
    }
    async fn get_pin(&self, template: &str) -> Result<Option<Pin>, StoreError> {
        self.inner.get_pin(template).await
    }
    async fn list_pins(&self) -> Result<Vec<Pin>, StoreError> {
        self.inner.list_pins().await
    }
    async fn seed_pin(
        &self,
        pin: &Pin,
        entry: &PinHistoryEntry,
        op: &Operation,
    ) -> Result<bool, StoreError> {
        let _turn = self.writes.lock().await;
        match self.inner.seed_pin(pin, entry, op).await {
            Ok(seeded) => {
                if seeded {
                    self.set_pin(&pin.template, Some(pin.digest.to_string()));
                }
                Ok(seeded)
            }
            Err(e) => {
                self.resync(None, Some(&pin.template)).await;
                Err(e)
            }
        }
    }
    async fn unpin(
        &self,
        template: &str,
        entry: &PinHistoryEntry,
        op: &Operation,
    ) -> Result<bool, StoreError> {
        let _turn = self.writes.lock().await;
        match self.inner.unpin(template, entry, op).await {
            Ok(unpinned) => {
                if unpinned {
                    self.set_pin(template, None);
                }
                Ok(unpinned)
            }
            Err(e) => {
                self.resync(None, Some(template)).await;
                Err(e)
            }
        }
    }
    async fn pin_history(
        &self,
        template: &str,
        limit: u32,
    ) -> Result<Vec<PinHistoryEntry>, StoreError> {
        self.inner.pin_history(template, limit).await
    }
}

#[async_trait]
impl RuntimeStore for ReadModelStore {
    async fn get_runtime(&self, id: &str) -> Result<Option<RuntimeRecord>, StoreError> {
        if !self.usable().await {
            return self.inner.get_runtime(id).await;
        }
        let rec = self.read_model().snapshot.runtimes.get(id).cloned();
        Ok(rec.map(Arc::unwrap_or_clone))
    }
    async fn list_runtimes(
        &self,
        filter: &RuntimeFilter,
    ) -> Result<Vec<RuntimeRecord>, StoreError> {
        if !self.usable().await {
            return self.inner.list_runtimes(filter).await;
        }
        Ok(owned(self.page(&RuntimePage {
            template: filter.template.clone(),
            status: filter.status,
            ..RuntimePage::default()
        })))
    }
    async fn list_runtimes_page(
        &self,
        page: &RuntimePage,
    ) -> Result<Vec<RuntimeRecord>, StoreError> {
        if !self.usable().await {
            return self.inner.list_runtimes_page(page).await;
        }
        Ok(owned(self.page(page)))
    }
    async fn list_operations_before(
        &self,
        filter: &OperationFilter,
        before: Option<&str>,
    ) -> Result<Vec<Operation>, StoreError> {
        self.inner.list_operations_before(filter, before).await
    }
    async fn get_operation(&self, id: &str) -> Result<Option<Operation>, StoreError> {
        self.inner.get_operation(id).await
    }
    async fn fail_in_progress_operations(
        &self,
        code: &str,
        message: &str,
        now_ms: i64,
    ) -> Result<Vec<Operation>, StoreError> {
        self.inner
            .fail_in_progress_operations(code, message, now_ms)
            .await
    }
    async fn get_job_result(&self, job_id: &str) -> Result<Option<JobResult>, StoreError> {
        self.inner.get_job_result(job_id).await
    }
}

#[async_trait]
impl EventStore for ReadModelStore {
    async fn list_health_events_before(
        &self,
        filter: &EventFilter,
        before: Option<&str>,
    ) -> Result<Vec<HealthEvent>, StoreError> {
        self.inner.list_health_events_before(filter, before).await
    }
    async fn has_health_event(
        &self,
        runtime_id: &str,
        container_id: &str,
        event_type: HealthEventType,
    ) -> Result<bool, StoreError> {
        self.inner
            .has_health_event(runtime_id, container_id, event_type)
            .await
    }
    async fn list_notifications_before(
        &self,
        limit: u32,
        before: Option<&str>,
    ) -> Result<Vec<Notification>, StoreError> {
        self.inner.list_notifications_before(limit, before).await
    }
}

#[async_trait]
impl OutboxStore for ReadModelStore {
    async fn outbox_pending(&self, limit: u32) -> Result<Vec<OutboxRow>, StoreError> {
        self.inner.outbox_pending(limit).await
    }
    async fn outbox_delete(&self, seqs: &[i64]) -> Result<(), StoreError> {
        self.inner.outbox_delete(seqs).await
    }
    async fn outbox_failed(&self, seq: i64, error: &str) -> Result<(), StoreError> {
        self.inner.outbox_failed(seq, error).await
    }
    async fn outbox_identity(&self) -> Result<OutboxIdentity, StoreError> {
        self.inner.outbox_identity().await
    }
    async fn outbox_new_identity(&self) -> Result<String, StoreError> {
        self.inner.outbox_new_identity().await
    }
}

#[async_trait]
impl WebhookStore for ReadModelStore {
    async fn webhook_head(&self, webhook: &str) -> Result<Option<WebhookDelivery>, StoreError> {
        self.inner.webhook_head(webhook).await
    }
    async fn webhook_delivered(&self, seq: i64, at_ms: i64) -> Result<(), StoreError> {
        self.inner.webhook_delivered(seq, at_ms).await
    }
    async fn webhook_failed(&self, seq: i64, error: &str, at_ms: i64) -> Result<(), StoreError> {
        self.inner.webhook_failed(seq, error, at_ms).await
    }
    async fn webhook_pending_count(&self, webhook: &str, cap: u32) -> Result<u64, StoreError> {
        self.inner.webhook_pending_count(webhook, cap).await
    }
    async fn list_webhook_deliveries(
        &self,
        webhook: Option<&str>,
        limit: u32,
    ) -> Result<Vec<WebhookDelivery>, StoreError> {
        self.inner.list_webhook_deliveries(webhook, limit).await
    }
    async fn prune_webhook_deliveries(
        &self,
        webhook: &str,
        delivered_before_ms: i64,
        keep: u32,
    ) -> Result<u64, StoreError> {
        self.inner
            .prune_webhook_deliveries(webhook, delivered_before_ms, keep)
            .await
    }
}

#[async_trait]
impl ChangeStore for ReadModelStore {
    async fn list_changes_after(
        &self,
        after: i64,
        limit: u32,
    ) -> Result<Vec<ChangeRow>, StoreError> {
        self.inner.list_changes_after(after, limit).await
    }
    async fn change_bounds(&self) -> Result<Option<(i64, i64)>, StoreError> {
        self.inner.change_bounds().await
    }
    async fn prune_changes_before(&self, before: i64) -> Result<u64, StoreError> {
        self.inner.prune_changes_before(before).await
    }
}

#[async_trait]
impl WatchStore for ReadModelStore {
    async fn get_observation(&self, template: &str) -> Result<Option<Observation>, StoreError> {
        self.inner.get_observation(template).await
    }
    async fn is_rejected(&self, template: &str, digest: &str) -> Result<bool, StoreError> {
        self.inner.is_rejected(template, digest).await
    }
}

#[async_trait]
impl RolloutStore for ReadModelStore {
    async fn get_rollout(
        &self,
        id: &str,
    ) -> Result<Option<(RolloutRow, Vec<RolloutTarget>)>, StoreError> {
        self.inner.get_rollout(id).await
    }
    async fn list_rollouts(
        &self,
        template: Option<&str>,
        limit: u32,
    ) -> Result<Vec<RolloutRow>, StoreError> {
        self.inner.list_rollouts(template, limit).await
    }
    async fn active_rollouts(&self) -> Result<Vec<RolloutRow>, StoreError> {
        self.inner.active_rollouts().await
    }
}

#[async_trait]
impl PluginStore for ReadModelStore {
    async fn get_plugin(
        &self,
        runtime_id: &str,
        name: &str,
    ) -> Result<Option<PluginRecord>, StoreError> {
        self.inner.get_plugin(runtime_id, name).await
    }
    async fn list_plugins(
        &self,
        runtime_id: Option<&str>,
    ) -> Result<Vec<PluginRecord>, StoreError> {
        self.inner.list_plugins(runtime_id).await
    }
    async fn get_plugin_update(&self, id: &str) -> Result<Option<PluginUpdate>, StoreError> {
        self.inner.get_plugin_update(id).await
    }
    async fn pending_plugin_update(
        &self,
        runtime_id: &str,
        plugin: &str,
    ) -> Result<Option<PluginUpdate>, StoreError> {
        self.inner.pending_plugin_update(runtime_id, plugin).await
    }
    async fn list_plugin_updates(
        &self,
        filter: &PluginUpdateFilter,
    ) -> Result<Vec<PluginUpdate>, StoreError> {
        self.inner.list_plugin_updates(filter).await
    }
    async fn mark_plugins_resolved(
        &self,
        keys: &[(String, String)],
        at_ms: i64,
    ) -> Result<(), StoreError> {
        self.inner.mark_plugins_resolved(keys, at_ms).await
    }
}

#[async_trait]
impl Store for ReadModelStore {
    async fn commit(&self, change: &Change<'_>) -> Result<(), StoreError> {
        let touches = change.runtime.is_some() || change.pin.is_some();
        if !touches {
            return self.inner.commit(change).await;
        }
        let _turn = self.writes.lock().await;
        match self.inner.commit(change).await {
            Ok(()) => {
                if let Some(rec) = change.runtime {
                    self.put_runtime(rec);
                }
                if let Some(p) = change.pin {
                    self.set_pin(&p.pin.template, Some(p.pin.digest.to_string()));
                }
                Ok(())
            }
            Err(e) => {
                self.resync(
                    change.runtime.map(|r| r.id.as_str()),
                    change.pin.map(|p| p.pin.template.as_str()),
                )
                .await;
                Err(e)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fakes::FakeStore;
    use berth_core::image::Digest;
    use berth_core::operation::{OperationKind, Source};
    use berth_core::pin::PinAction;
    use berth_core::status::RuntimeStatus;

    fn rec(id: &str, template: &str, digest: Option<&str>) -> RuntimeRecord {
        let mut r = RuntimeRecord::new(id, template, Default::default(), 1);
        r.status = RuntimeStatus::Running;
        r.image_digest = digest.map(str::to_string);
        r
    }

    fn op(id: &str) -> Operation {
        Operation::begin(id.into(), OperationKind::Start, Source::Api, 1)
    }

    fn digest(n: u8) -> Digest {
        Digest::parse(&format!("sha256:{}", format!("{n:02x}").repeat(32))).unwrap()
    }

    async fn seeded(fake: &FakeStore, n: usize) {
        for i in 0..n {
            fake.record(
                Some(&rec(&format!("r{i:03}"), "t", None)),
                &op(&format!("o{i}")),
            )
            .await
            .unwrap();
        }
    }

    /// What the database holds, as the model would load it.
    async fn truth(fake: &Arc<FakeStore>) -> ModelSnapshot {
        let direct = ReadModelStore::load(fake.clone()).await.unwrap();
        direct.snapshot()
    }

    #[tokio::test]
    async fn loads_what_the_database_holds_and_follows_every_commit() {
        let fake = Arc::new(FakeStore::new());
        seeded(&fake, 5).await;
        let model = ReadModelStore::load(fake.clone()).await.unwrap();
        assert_eq!(model.snapshot().runtimes.len(), 5);

        // A write through the model is read back at once, from memory.
        let mut r = rec("r001", "t", Some(&digest(1).to_string()));
        r.status = RuntimeStatus::Stopped;
        model.record(Some(&r), &op("o-stop")).await.unwrap();
        assert_eq!(model.get_runtime("r001").await.unwrap(), Some(r.clone()));
        model
            .record(Some(&rec("r100", "t", None)), &op("o-new"))
            .await
            .unwrap();
        assert_eq!(model.snapshot(), truth(&fake).await);
        assert_eq!(
            model.list_runtimes(&Default::default()).await.unwrap(),
            fake.list_runtimes(&Default::default()).await.unwrap()
        );
    }

    #[tokio::test]
    async fn loads_more_records_than_one_load_page_holds() {
        let fake = Arc::new(FakeStore::new());
        seeded(&fake, 2 * LOAD_PAGE as usize + 17).await;
        let model = ReadModelStore::load(fake.clone()).await.unwrap();
        let loaded: Vec<RuntimeRecord> = model
            .snapshot()
            .runtimes
            .into_values()
            .map(Arc::unwrap_or_clone)
            .collect();
        assert_eq!(
            loaded,
            fake.list_runtimes(&Default::default()).await.unwrap()
        );
    }

    #[tokio::test]
    async fn pages_and_the_stale_filter_answer_as_the_database_does() {
        let fake = Arc::new(FakeStore::new());
        seeded(&fake, 20).await;
        let model = ReadModelStore::load(fake.clone()).await.unwrap();
        let d1 = digest(1);
        let pin = Pin {
            template: "t".into(),
            digest: d1.clone(),
            promoted_at_ms: 1,
            promoted_by: "test".into(),
            reason: None,
        };
        let entry = PinHistoryEntry {
            template: "t".into(),
            action: PinAction::Promote,
            digest: Some(d1.clone()),
            previous_digest: None,
            at_ms: 1,
            by: "test".into(),
            reason: None,
        };
        model
            .commit(&Change {
                pin: Some(crate::ports::store::PinChange {
                    pin: &pin,
                    entry: &entry,
                }),
                operation: Some(&op("o-pin")),
                ..Change::default()
            })
            .await
            .unwrap();
        // Half of them run the pinned digest.
        for i in (0..20).step_by(2) {
            model
                .record(
                    Some(&rec(&format!("r{i:03}"), "t", Some(&d1.to_string()))),
                    &op(&format!("o-up{i}")),
                )
                .await
                .unwrap();
        }
        for page in [
            RuntimePage::default(),
            RuntimePage {
                stale: true,
                ..Default::default()
            },
            RuntimePage {
                stale: true,
                after: Some("r004".into()),
                limit: Some(3),
                ..Default::default()
            },
            RuntimePage {
                status: Some(RuntimeStatus::Running),
                after: Some("r0".into()),
                limit: Some(7),
                ..Default::default()
            },
            RuntimePage {
                template: Some("other".into()),
                ..Default::default()
            },
        ] {
            assert_eq!(
                model.list_runtimes_page(&page).await.unwrap(),
                fake.list_runtimes_page(&page).await.unwrap(),
                "{page:?}"
            );
        }
        assert_eq!(
            model
                .list_runtimes_page(&RuntimePage {
                    stale: true,
                    ..Default::default()
                })
                .await
                .unwrap()
                .len(),
            10
        );
        // Unpinning ends staleness.
        assert!(model.unpin("t", &entry, &op("o-unpin")).await.unwrap());
        assert!(model
            .list_runtimes_page(&RuntimePage {
                stale: true,
                ..Default::default()
            })
            .await
            .unwrap()
            .is_empty());
        assert_eq!(model.snapshot(), truth(&fake).await);
    }

    #[tokio::test]
    async fn a_failed_commit_leaves_the_model_as_the_database_is() {
        let fake = Arc::new(FakeStore::new());
        seeded(&fake, 3).await;
        let model = ReadModelStore::load(fake.clone()).await.unwrap();
        // The fake dies at the next commit: nothing written, every call
        // fails; the model cannot re-read, so it goes stale and reads go to
        // the database (which fails as well).
        fake.crash_at_commit(1);
        let err = model
            .record(Some(&rec("r999", "t", None)), &op("o-x"))
            .await;
        assert!(err.is_err());
        assert!(model.get_runtime("r000").await.is_err());
        // Back up: the next read reloads the model from the database.
        fake.revive();
        assert_eq!(model.get_runtime("r999").await.unwrap(), None);
        assert_eq!(model.snapshot(), truth(&fake).await);
    }
}
