//! State stores: the batch writer, recovery at (re)create, and readiness.
//!
//! A batch is committed by the rename of the manifest, and nothing else:
//! its receipts are appended and synced and every file is written aside and
//! synced before any of them is renamed into place; the files are renamed
//! and their directories synced before the manifest is. A failed fsync
//! aborts the batch and is never retried (Linux may have dropped the dirty
//! pages and would report the next fsync as a success).
//!
//! Decisions — what a store's state means, what to do about it, whether the
//! runtime is ready — are core's (`berth_core::store`); this service reads
//! the bytes through the [`StateFs`] port and carries the decisions out.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use berth_core::operation::OperationKind;
use berth_core::runtime::RuntimeRecord;
use berth_core::status::RuntimeStatus;
use berth_core::store::format::{
    decode_manifest, sha256_hex, BERTH_DIR, LOCK_FILE, MANIFEST_FILE, QUARANTINE_DIR,
    RECEIPTS_FILE, RUN_ID_FILE,
};
use berth_core::store::{
    decode_receipts, encode_receipt, plan, readiness, understood_versions, ActionKind,
    ContainerReadiness, Envelope, Impact, Manifest, ManifestEntry, ManifestFact, PlanInput,
    Readiness, Receipt, ReceiptLog, ReceiptRecord, RecoveryPlan, StoreFileFact, ValidatorOutcome,
};
use berth_core::template::Template;
use berth_core::ErrorCode;
use futures_util::future::try_join_all;

use super::{Caller, Context};
use crate::error::{Error, Result};
use crate::ports::state_fs::{write_durable, StateFs, StateFsError};
use crate::ports::EngineError;

/// Limits on what one batch may write.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StoreLimits {
    /// Bytes of one store file (its envelope).
    pub max_store_bytes: usize,
    /// Bytes of all files of one batch.
    pub max_batch_bytes: usize,
    pub max_writes: usize,
}

impl Default for StoreLimits {
    fn default() -> Self {
        StoreLimits {
            max_store_bytes: 4 << 20,
            max_batch_bytes: 16 << 20,
            max_writes: 256,
        }
    }
}

/// Every this many batches the receipt log is rewritten to its last record
/// after the commit (atomically: temp, fsync, rename, fsync dir), so that it
/// stays short without reading its size on every batch. Only records above
/// the manifest's high watermark ever matter to the planner.
const RECEIPT_LOG_COMPACT_EVERY: u64 = 256;

#[derive(Debug, Clone, PartialEq)]
pub struct StoreWrite {
    pub store: String,
    /// Defaults to the version the runtime's image understands.
    pub schema_version: Option<u32>,
    pub data: serde_json::Value,
}

#[derive(Debug, Clone, PartialEq)]
pub struct BatchRequest {
    pub run_id: String,
    pub reason: Option<String>,
    pub writes: Vec<StoreWrite>,
}

/// What a `201` promises survives any crash.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CommittedBatch {
    pub batch_id: String,
    pub seq: u64,
    pub run_id: String,
    pub receipts: Vec<Receipt>,
    pub committed_at_ms: i64,
}

/// A recovery action berth carried out before a container started.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AppliedAction {
    pub kind: ActionKind,
    pub store: String,
    pub reason: &'static str,
    /// Where the file went, relative to the state directory.
    pub moved_to: Option<String>,
}

/// Everything on disk the planner looks at.
struct Facts {
    manifest: ManifestFact,
    receipts: ReceiptLog,
    files: BTreeMap<String, StoreFileFact>,
}

/// The paths of one runtime's state directory.
#[derive(Debug, Clone)]
pub struct StatePaths {
    pub root: PathBuf,
}

impl StatePaths {
    pub fn berth_dir(&self) -> PathBuf {
        self.root.join(BERTH_DIR)
    }
    pub fn manifest(&self) -> PathBuf {
        self.berth_dir().join(MANIFEST_FILE)
    }
    pub fn receipts(&self) -> PathBuf {
        self.berth_dir().join(RECEIPTS_FILE)
    }
    pub fn run_id(&self) -> PathBuf {
        self.berth_dir().join(RUN_ID_FILE)
    }
    pub fn lock(&self) -> PathBuf {
        self.berth_dir().join(LOCK_FILE)
    }
    pub fn quarantine_dir(&self) -> PathBuf {
        self.berth_dir().join(QUARANTINE_DIR)
    }
    pub fn store(&self, relative: &str) -> PathBuf {
        self.root.join(relative)
    }
}

fn fs_error(e: StateFsError, doing: &str) -> Error {
    Error::new(
        ErrorCode::StorageUnavailable,
        format!("could not {doing}: {e}; nothing was committed"),
    )
    .caused_by(e)
}

/// The batch protocol over a [`StateFs`], with no database and no Docker:
/// the part whose latency the benchmark measures and the crash harness
/// cuts. The caller holds the runtime's lock.
pub struct BatchWriter<'a> {
    pub fs: &'a dyn StateFs,
    pub paths: &'a StatePaths,
}

/// One store file of a batch, ready to be written.
pub struct PreparedFile {
    pub store: String,
    pub path: PathBuf,
    pub bytes: Vec<u8>,
}

impl BatchWriter<'_> {
    /// Writes `files` as batch `record`, then commits `manifest`.
    /// `record.seq` must be `manifest.high_watermark`.
    pub async fn commit(
        &self,
        record: &ReceiptRecord,
        files: &[PreparedFile],
        manifest: &Manifest,
    ) -> std::result::Result<(), StateFsError> {
        let fs = self.fs;
        let berth_dir = self.paths.berth_dir();
        let manifest_path = self.paths.manifest();
        let manifest_tmp = berth_dir.join(format!(".{MANIFEST_FILE}.tmp-{}", record.batch_id));
        // Bytes of a struct of strings and integers always serialise.
        let manifest_bytes = serde_json::to_vec_pretty(manifest).unwrap_or_default();
        let temps: Vec<PathBuf> = files
            .iter()
            .map(|f| temp_beside(&f.path, &record.batch_id))
            .collect();

        // 1. Receipts (the batch marked preparing), every file and the new
        //    manifest written aside and synced, all at once.
        let receipts = async {
            fs.append(&self.paths.receipts(), &encode_receipt(record))
                .await?;
            fs.fsync(&self.paths.receipts()).await
        };
        let manifest_aside = async {
            fs.write(&manifest_tmp, &manifest_bytes).await?;
            fs.fsync(&manifest_tmp).await
        };
        let stores = try_join_all(files.iter().zip(&temps).map(|(f, tmp)| async move {
            fs.write(tmp, &f.bytes).await?;
            fs.fsync(tmp).await
        }));
        tokio::try_join!(receipts, manifest_aside, stores)?;

        // 2. Every file into place, then its directory synced.
        let mut dirs = BTreeSet::new();
        for (f, tmp) in files.iter().zip(&temps) {
            fs.rename(tmp, &f.path).await?;
            if let Some(dir) = f.path.parent() {
                dirs.insert(dir.to_path_buf());
            }
        }
        try_join_all(dirs.iter().map(|d| fs.fsync_dir(d))).await?;

        // 3. The commit point: the manifest's rename, made durable.
        fs.rename(&manifest_tmp, &manifest_path).await?;
        fs.fsync_dir(&berth_dir).await
    }
}

/// `.<name>.tmp-<batch>` beside `path`.
fn temp_beside(path: &Path, batch_id: &str) -> PathBuf {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    path.with_file_name(format!(".{name}.tmp-{batch_id}"))
}

/// What identifies a batch besides its writes.
pub struct BatchMeta<'a> {
    pub batch_id: &'a str,
    pub run_id: &'a str,
    pub reason: Option<&'a str>,
    pub now_ms: i64,
}

/// A batch ready for [`BatchWriter::commit`].
pub struct PreparedBatch {
    pub record: ReceiptRecord,
    pub files: Vec<PreparedFile>,
    pub manifest: Manifest,
}

/// Builds a batch's envelopes, receipts and next manifest on `base`
/// (validated writes of declared stores); refuses what is over `limits`.
pub fn prepare_batch(
    stores: &[berth_core::store::StoreDescriptor],
    understood: &BTreeMap<String, u32>,
    paths: &StatePaths,
    base: &Manifest,
    meta: BatchMeta<'_>,
    writes: Vec<StoreWrite>,
    limits: &StoreLimits,
) -> Result<PreparedBatch> {
    let mut files = Vec::with_capacity(writes.len());
    let mut receipts = Vec::with_capacity(writes.len());
    let mut total = 0usize;
    for w in writes {
        let d = stores
            .iter()
            .find(|d| d.name == w.store)
            .ok_or_else(|| Error::invalid(format!("store {:?} is not declared", w.store)))?;
        let schema_version = w
            .schema_version
            .unwrap_or_else(|| understood.get(&d.name).copied().unwrap_or(d.schema_version));
        let envelope = Envelope {
            schema_version,
            updated_at: meta.now_ms,
            run_id: meta.run_id.to_string(),
            data: w.data,
        };
        let bytes = serde_json::to_vec(&envelope)
            .map_err(|e| Error::invalid(format!("store {:?}: {e}", d.name)))?;
        if bytes.len() > limits.max_store_bytes {
            return Err(Error::new(
                ErrorCode::PayloadTooLarge,
                format!(
                    "store {:?} would be {} bytes; a store may hold at most {}",
                    d.name,
                    bytes.len(),
                    limits.max_store_bytes
                ),
            ));
        }
        total += bytes.len();
        receipts.push(Receipt {
            receipt_id: uuid::Uuid::now_v7().to_string(),
            store: d.name.clone(),
            schema_version,
            sha256: sha256_hex(&bytes),
            size: bytes.len() as u64,
        });
        files.push(PreparedFile {
            store: d.name.clone(),
            path: paths.store(&d.path),
            bytes,
        });
    }
    if total > limits.max_batch_bytes {
        return Err(Error::new(
            ErrorCode::PayloadTooLarge,
            format!(
                "the batch would write {total} bytes; a batch may write at most {}",
                limits.max_batch_bytes
            ),
        ));
    }
    let record = ReceiptRecord {
        batch_id: meta.batch_id.to_string(),
        seq: base.high_watermark + 1,
        run_id: meta.run_id.to_string(),
        reason: meta.reason.map(str::to_string),
        created_at: meta.now_ms,
        receipts,
    };
    let manifest = next_manifest(base, &record);
    Ok(PreparedBatch {
        record,
        files,
        manifest,
    })
}

/// The manifest after `receipts` of batch `record` committed on `base`.
pub fn next_manifest(base: &Manifest, record: &ReceiptRecord) -> Manifest {
    let mut m = base.clone();
    m.schema_version = berth_core::store::MANIFEST_SCHEMA_VERSION;
    m.active_run_id = Some(record.run_id.clone());
    m.high_watermark = record.seq;
    m.last_committed_batch_id = Some(record.batch_id.clone());
    m.last_preparing_batch_id = None;
    for r in &record.receipts {
        let entry = ManifestEntry {
            store: r.store.clone(),
            schema_version: r.schema_version,
            state: "committed".to_string(),
            last_receipt_id: r.receipt_id.clone(),
            sha256: r.sha256.clone(),
        };
        match m.entries.iter_mut().find(|e| e.store == r.store) {
            Some(e) => *e = entry,
            None => m.entries.push(entry),
        }
    }
    m
}

pub struct StoreService {
    ctx: Arc<Context>,
    limits: StoreLimits,
    /// Image labels by image id: an image's labels never change.
    labels: Mutex<BTreeMap<String, BTreeMap<String, String>>>,
    /// The image each run berth started runs, by run id: during a
    /// recreate's gate the record still names the old image.
    run_images: Mutex<BTreeMap<String, String>>,
    /// The last verdict computed for each runtime, for `berth status`.
    last_verdicts: Mutex<BTreeMap<String, Impact>>,
}

impl StoreService {
    pub fn new(ctx: Arc<Context>) -> Self {
        StoreService {
            ctx,
            limits: StoreLimits::default(),
            labels: Mutex::new(BTreeMap::new()),
            run_images: Mutex::new(BTreeMap::new()),
            last_verdicts: Mutex::new(BTreeMap::new()),
        }
    }

    fn fs(&self) -> &dyn StateFs {
        self.ctx.state_fs.as_ref()
    }

    pub fn paths(&self, runtime_id: &str) -> StatePaths {
        StatePaths {
            root: self.ctx.settings.state_dir(runtime_id),
        }
    }

    async fn runtime_and_template(&self, id: &str) -> Result<(RuntimeRecord, Template)> {
        berth_core::id::validate_runtime_id(id)?;
        let rec = self
            .ctx
            .store
            .get_runtime(id)
            .await?
            .ok_or_else(|| Error::runtime_not_found(id))?;
        let template = self
            .ctx
            .store
            .get_template(&rec.template)
            .await?
            .ok_or_else(|| Error::template_not_found(&rec.template))?;
        Ok((rec, template))
    }

    /// Labels of the image a container runs or will run (cached by id).
    async fn image_labels(&self, image: &str) -> Result<BTreeMap<String, String>> {
        if let Some(l) = self
            .labels
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(image)
        {
            return Ok(l.clone());
        }
        let info = self.ctx.engine.inspect_image(image).await.map_err(|e| {
            Error::from_engine(e, ErrorCode::DockerUnavailable, "inspect the image")
        })?;
        let Some(info) = info else {
            // Not (yet) present: the descriptors' versions apply; not cached.
            return Ok(BTreeMap::new());
        };
        self.labels
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(image.to_string(), info.labels.clone());
        Ok(info.labels)
    }

    async fn read_run_id(&self, paths: &StatePaths) -> Result<Option<String>> {
        let bytes = self
            .fs()
            .read(&paths.run_id())
            .await
            .map_err(|e| fs_error(e, "read the run id"))?;
        Ok(bytes
            .map(|b| String::from_utf8_lossy(&b).trim().to_string())
            .filter(|s| !s.is_empty()))
    }

    async fn read_manifest(&self, paths: &StatePaths) -> Result<ManifestFact> {
        let bytes = self
            .fs()
            .read(&paths.manifest())
            .await
            .map_err(|e| fs_error(e, "read the manifest"))?;
        Ok(match bytes {
            None => ManifestFact::Absent,
            Some(b) => match decode_manifest(&b) {
                Ok(m) => ManifestFact::Present(m),
                Err(why) => ManifestFact::Corrupt(why),
            },
        })
    }

    async fn facts(&self, template: &Template, paths: &StatePaths) -> Result<Facts> {
        let manifest = self.read_manifest(paths).await?;
        let receipts = self
            .fs()
            .read(&paths.receipts())
            .await
            .map_err(|e| fs_error(e, "read the receipt log"))?
            .map(|b| decode_receipts(&b))
            .unwrap_or_default();
        let mut files = BTreeMap::new();
        for d in &template.stores {
            let bytes = self
                .fs()
                .read(&paths.store(&d.path))
                .await
                .map_err(|e| fs_error(e, "read a store file"))?;
            files.insert(
                d.name.clone(),
                bytes.map_or(StoreFileFact::Absent, |b| StoreFileFact::from_bytes(&b)),
            );
        }
        Ok(Facts {
            manifest,
            receipts,
            files,
        })
    }

    fn plan_for(
        template: &Template,
        understood: &BTreeMap<String, u32>,
        facts: &Facts,
        run_id: Option<&str>,
    ) -> RecoveryPlan {
        plan(&PlanInput {
            descriptors: &template.stores,
            understood,
            manifest: &facts.manifest,
            receipts: &facts.receipts,
            files: &facts.files,
            current_run_id: run_id,
        })
    }

    /// Writes one batch: `201` means it survives any crash after it.
    pub async fn write_batch(
        &self,
        id: &str,
        req: BatchRequest,
        caller: &Caller,
    ) -> Result<CommittedBatch> {
        let (rec, template) = self.runtime_and_template(id).await?;
        if rec.status == RuntimeStatus::Removed {
            return Err(Error::new(
                ErrorCode::RuntimeRemoved,
                format!("runtime {id:?} was removed; its stores take no more batches"),
            ));
        }
        if template.stores.is_empty() {
            return Err(Error::invalid(format!(
                "template {:?} declares no state stores",
                template.name
            )));
        }
        if req.run_id.trim().is_empty() || req.run_id.len() > 128 {
            return Err(Error::invalid(
                "run_id must be the runtime's current run id (1-128 characters)",
            ));
        }
        if req.writes.is_empty() {
            return Err(Error::invalid("a batch needs at least one write"));
        }
        if req.writes.len() > self.limits.max_writes {
            return Err(Error::new(
                ErrorCode::PayloadTooLarge,
                format!(
                    "a batch may write at most {} stores; this one writes {}",
                    self.limits.max_writes,
                    req.writes.len()
                ),
            ));
        }
        if let Some(reason) = &req.reason {
            if reason.len() > 200 || reason.contains(char::is_control) {
                return Err(Error::invalid(
                    "reason must be at most 200 characters, without control characters",
                ));
            }
        }
        let mut seen = BTreeSet::new();
        for w in &req.writes {
            if !template.stores.iter().any(|d| d.name == w.store) {
                return Err(Error::invalid(format!(
                    "store {:?} is not declared by template {:?}",
                    w.store, template.name
                )));
            }
            if !seen.insert(w.store.as_str()) {
                return Err(Error::invalid(format!(
                    "store {:?} is written twice in one batch",
                    w.store
                )));
            }
            if w.schema_version == Some(0) {
                return Err(Error::invalid("schema_version must be at least 1"));
            }
        }

        let paths = self.paths(id);
        let fs = self.fs();
        fs.create_dir_all(&paths.berth_dir())
            .await
            .map_err(|e| fs_error(e, "create the state directory"))?;
        let _lock = fs
            .lock(&paths.lock())
            .await
            .map_err(|e| fs_error(e, "lock the state directory"))?;

        let current = self.read_run_id(&paths).await?;
        match current.as_deref() {
            None => {
                return Err(Error::new(
                    ErrorCode::Conflict,
                    format!("runtime {id:?} has no run yet; start it first"),
                ))
            }
            Some(current) if current != req.run_id => {
                return Err(Error::new(
                    ErrorCode::Conflict,
                    format!(
                        "run_id {:?} is not runtime {id:?}'s current run ({current:?}); a batch of an earlier run is refused",
                        req.run_id
                    ),
                ))
            }
            Some(_) => {}
        }
        let base = match self.read_manifest(&paths).await? {
            ManifestFact::Absent => Manifest::empty(id),
            ManifestFact::Present(m) => m,
            ManifestFact::Corrupt(why) => {
                return Err(Error::new(
                    ErrorCode::Conflict,
                    format!("the store manifest of runtime {id:?} is unreadable ({why}); restart the runtime so that berth recovers its stores"),
                ))
            }
        };
        let run_image = self
            .run_images
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&req.run_id)
            .cloned();
        let understood = match run_image.as_ref().or(rec.image_ref.as_ref()) {
            Some(image) => understood_versions(&template.stores, &self.image_labels(image).await?),
            None => understood_versions(&template.stores, &BTreeMap::new()),
        };

        let now = self.ctx.now_ms();
        let batch_id = uuid::Uuid::now_v7().to_string();
        let prepared = prepare_batch(
            &template.stores,
            &understood,
            &paths,
            &base,
            BatchMeta {
                batch_id: &batch_id,
                run_id: &req.run_id,
                reason: req.reason.as_deref(),
                now_ms: now,
            },
            req.writes,
            &self.limits,
        )?;
        let PreparedBatch {
            record,
            files,
            manifest,
        } = prepared;
        let receipts = record.receipts.clone();
        for f in &files {
            if let Some(dir) = f.path.parent() {
                fs.create_dir_all(dir)
                    .await
                    .map_err(|e| fs_error(e, "create a store's directory"))?;
            }
        }
        let writer = BatchWriter { fs, paths: &paths };
        let started = std::time::Instant::now();
        if let Err(e) = writer.commit(&record, &files, &manifest).await {
            self.ctx.metrics.store_batch_failed();
            tracing::error!(runtime = %id, batch = %batch_id, error = %e, "state-store batch aborted");
            return Err(fs_error(e, "write the batch durably"));
        }
        self.ctx
            .metrics
            .store_batch_committed(started.elapsed().as_secs_f64());
        self.compact_receipts(&paths, &record).await;

        let stores: Vec<&str> = receipts.iter().map(|r| r.store.as_str()).collect();
        let mut op = self
            .ctx
            .begin_op(OperationKind::StoreBatch, caller)
            .for_runtime(&rec.id, &rec.template)
            .detail("batch_id", batch_id.clone())
            .detail("seq", record.seq.to_string())
            .detail("run_id", req.run_id.clone())
            .detail("stores", stores.join(","));
        if let Some(reason) = &req.reason {
            op = op.detail("reason", reason.clone());
        }
        op.succeed(self.ctx.now_ms());
        // The batch is committed on disk whatever happens to this row.
        if let Err(e) = self.ctx.record(None, &op).await {
            tracing::error!(runtime = %id, batch = %batch_id, error = %e, "the committed batch could not be written to the operation log");
        }
        Ok(CommittedBatch {
            batch_id,
            seq: record.seq,
            run_id: req.run_id,
            receipts,
            committed_at_ms: now,
        })
    }

    /// Rewrites a long receipt log to its last record. Bookkeeping: a
    /// failure leaves the longer log, which is as valid.
    async fn compact_receipts(&self, paths: &StatePaths, last: &ReceiptRecord) {
        if !last.seq.is_multiple_of(RECEIPT_LOG_COMPACT_EVERY) {
            return;
        }
        if let Err(e) = write_durable(self.fs(), &paths.receipts(), &encode_receipt(last)).await {
            tracing::warn!(error = %e, "could not compact the receipt log");
        }
    }

    /// The committed manifest (an empty one before the first batch).
    pub async fn manifest(&self, id: &str) -> Result<Manifest> {
        self.runtime_and_template(id).await?;
        self.committed_manifest(id).await
    }

    async fn committed_manifest(&self, id: &str) -> Result<Manifest> {
        match self.read_manifest(&self.paths(id)).await? {
            ManifestFact::Absent => Ok(Manifest::empty(id)),
            ManifestFact::Present(m) => Ok(m),
            ManifestFact::Corrupt(why) => Err(Error::new(
                ErrorCode::Conflict,
                format!("the store manifest of runtime {id:?} is unreadable: {why}"),
            )),
        }
    }

    /// The committed envelope of one store.
    pub async fn store_data(&self, id: &str, store: &str) -> Result<Envelope> {
        let (rec, template) = self.runtime_and_template(id).await?;
        let Some(d) = template.stores.iter().find(|d| d.name == store) else {
            return Err(Error::new(
                ErrorCode::StoreNotFound,
                format!("template {:?} declares no store {store:?}", template.name),
            ));
        };
        let paths = self.paths(&rec.id);
        let manifest = self.committed_manifest(id).await?;
        let not_committed = || {
            Error::new(
                ErrorCode::StoreNotFound,
                format!("store {store:?} of runtime {id:?} has no committed data"),
            )
        };
        let entry = manifest.entry(store).ok_or_else(not_committed)?;
        let bytes = self
            .fs()
            .read(&paths.store(&d.path))
            .await
            .map_err(|e| fs_error(e, "read the store"))?
            .ok_or_else(not_committed)?;
        if sha256_hex(&bytes) != entry.sha256 {
            return Err(Error::new(
                ErrorCode::Conflict,
                format!("store {store:?} of runtime {id:?} does not hold what its last committed batch wrote; see GET /v1/runtimes/{id}/readiness"),
            ));
        }
        serde_json::from_slice(&bytes).map_err(|e| {
            Error::new(
                ErrorCode::Conflict,
                format!("store {store:?} of runtime {id:?} is not a store envelope: {e}"),
            )
        })
    }

    /// Before a container of `rec` starts on `image`: applies the recovery
    /// plan for that image (quarantine and rebuild move files aside, never
    /// delete them) and writes a new run id. Returns what it did, for the
    /// operation log; sets `rec.run_id`.
    pub async fn begin_run(
        &self,
        template: &Template,
        rec: &mut RuntimeRecord,
        image: &str,
        source: berth_core::operation::Source,
    ) -> Result<Vec<AppliedAction>> {
        let caller = &Caller::new(source);
        let paths = self.paths(&rec.id);
        let fs = self.fs();
        fs.create_dir_all(&paths.berth_dir())
            .await
            .map_err(|e| fs_error(e, "create the state directory"))?;
        let _lock = fs
            .lock(&paths.lock())
            .await
            .map_err(|e| fs_error(e, "lock the state directory"))?;
        let mut applied = Vec::new();
        if !template.stores.is_empty() {
            let understood =
                understood_versions(&template.stores, &self.image_labels(image).await?);
            let facts = self.facts(template, &paths).await?;
            // Run ids do not matter here: a new run starts now.
            let plan = Self::plan_for(template, &understood, &facts, None);
            applied = self.apply(template, &rec.id, &paths, &facts, &plan).await?;
        }
        let run_id = uuid::Uuid::now_v7().to_string();
        write_durable(fs, &paths.run_id(), run_id.as_bytes())
            .await
            .map_err(|e| fs_error(e, "write the run id"))?;
        {
            let mut runs = self.run_images.lock().unwrap_or_else(|p| p.into_inner());
            // One run per runtime is current; older entries only ever miss.
            if runs.len() > 10_000 {
                runs.clear();
            }
            runs.insert(run_id.clone(), image.to_string());
        }
        rec.run_id = Some(run_id);
        for a in &applied {
            let kind = if a.kind == ActionKind::Rebuild {
                OperationKind::StoreRebuild
            } else {
                OperationKind::StoreQuarantine
            };
            let mut op = self
                .ctx
                .begin_op(kind, caller)
                .for_runtime(&rec.id, &rec.template)
                .detail("store", a.store.clone())
                .detail("reason", a.reason.to_string())
                .detail("image", image.to_string());
            if let Some(to) = &a.moved_to {
                op = op.detail("moved_to", to.clone());
            }
            op.succeed(self.ctx.now_ms());
            self.ctx.record(None, &op).await?;
        }
        Ok(applied)
    }

    /// Carries out quarantine and rebuild: files aside, entries cleared, the
    /// manifest rewritten durably.
    async fn apply(
        &self,
        template: &Template,
        runtime_id: &str,
        paths: &StatePaths,
        facts: &Facts,
        plan: &RecoveryPlan,
    ) -> Result<Vec<AppliedAction>> {
        let fs = self.fs();
        let now = self.ctx.now_ms();
        let mut applied = Vec::new();
        let mut manifest = match &facts.manifest {
            ManifestFact::Present(m) => m.clone(),
            _ => Manifest::empty(runtime_id),
        };
        let mut manifest_changed = matches!(facts.manifest, ManifestFact::Corrupt(_));
        if let ManifestFact::Corrupt(_) = facts.manifest {
            let to = paths.quarantine_dir().join(format!("manifest.{now}.json"));
            fs.create_dir_all(&paths.quarantine_dir())
                .await
                .map_err(|e| fs_error(e, "create the quarantine directory"))?;
            fs.move_aside(&paths.manifest(), &to)
                .await
                .map_err(|e| fs_error(e, "move the corrupt manifest aside"))?;
        }
        for action in &plan.actions {
            if !matches!(action.kind, ActionKind::Quarantine | ActionKind::Rebuild) {
                continue;
            }
            let Some(d) = template.stores.iter().find(|d| d.name == action.store) else {
                continue;
            };
            let from = paths.store(&d.path);
            let mut moved_to = None;
            if let Some(StoreFileFact::Present { .. }) = facts.files.get(&d.name) {
                fs.create_dir_all(&paths.quarantine_dir())
                    .await
                    .map_err(|e| fs_error(e, "create the quarantine directory"))?;
                let file_name = from
                    .file_name()
                    .map(|n| n.to_string_lossy().into_owned())
                    .unwrap_or_default();
                let name = format!("{}.{now}.{file_name}", d.name);
                let to = paths.quarantine_dir().join(&name);
                fs.move_aside(&from, &to)
                    .await
                    .map_err(|e| fs_error(e, "move a store file aside"))?;
                if let Some(dir) = from.parent() {
                    fs.fsync_dir(dir)
                        .await
                        .map_err(|e| fs_error(e, "sync the store's directory"))?;
                }
                moved_to = Some(format!("{BERTH_DIR}/{QUARANTINE_DIR}/{name}"));
            }
            let before = manifest.entries.len();
            manifest.entries.retain(|e| e.store != d.name);
            let entry_dropped = manifest.entries.len() != before;
            manifest_changed |= entry_dropped;
            if moved_to.is_none() && !entry_dropped {
                // Nothing to undo (a store never written): not a recovery.
                continue;
            }
            applied.push(AppliedAction {
                kind: action.kind,
                store: d.name.clone(),
                reason: action.reason.map_or("", |r| r.as_str()),
                moved_to,
            });
        }
        if applied.iter().any(|a| a.moved_to.is_some()) {
            fs.fsync_dir(&paths.quarantine_dir())
                .await
                .map_err(|e| fs_error(e, "sync the quarantine directory"))?;
        }
        if manifest_changed {
            let bytes = serde_json::to_vec_pretty(&manifest).unwrap_or_default();
            write_durable(fs, &paths.manifest(), &bytes)
                .await
                .map_err(|e| fs_error(e, "rewrite the manifest"))?;
        }
        Ok(applied)
    }

    /// The last verdict of every runtime with stores whose readiness this
    /// process computed, by runtime id.
    pub fn last_verdicts(&self) -> BTreeMap<String, Impact> {
        self.last_verdicts
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// The readiness of a runtime as it runs now. Changes nothing on disk.
    pub async fn readiness(&self, id: &str) -> Result<Readiness> {
        let (rec, template) = self.runtime_and_template(id).await?;
        let cid = match (&rec.container_id, rec.status) {
            (Some(cid), RuntimeStatus::Running) => Some(cid.as_str()),
            _ => None,
        };
        self.readiness_of(&template, &rec.id, cid).await
    }

    /// The readiness of container `cid` (when given) of runtime `id`.
    pub async fn readiness_of(
        &self,
        template: &Template,
        id: &str,
        cid: Option<&str>,
    ) -> Result<Readiness> {
        let info = match cid {
            Some(cid) => self.ctx.engine.inspect_container(cid).await.map_err(|e| {
                Error::from_engine(e, ErrorCode::DockerUnavailable, "inspect the container")
            })?,
            None => None,
        };
        let container = match &info {
            None => ContainerReadiness::NotRunning,
            Some(i) if !i.running => ContainerReadiness::NotRunning,
            Some(i) if i.health.as_deref() == Some("unhealthy") => {
                ContainerReadiness::Unhealthy("Docker reports the container unhealthy".into())
            }
            Some(i) => match (&template.health, template.port) {
                (Some(check), Some(port)) => match i.addresses.get(&self.ctx.settings.network) {
                    Some(ip) => {
                        let url = format!("http://{ip}:{port}{}", check.path);
                        if self.ctx.probe.healthy(&url, check.timeout).await {
                            ContainerReadiness::Healthy
                        } else {
                            ContainerReadiness::Unhealthy(format!(
                                "health check GET {} did not answer 2xx",
                                check.path
                            ))
                        }
                    }
                    None => ContainerReadiness::Unhealthy(format!(
                        "the container has no address on network {}",
                        self.ctx.settings.network
                    )),
                },
                _ => ContainerReadiness::Healthy,
            },
        };
        let plan = if template.stores.is_empty() {
            RecoveryPlan {
                impact: Impact::None,
                manifest_healthy: true,
                actions: Vec::new(),
            }
        } else {
            let paths = self.paths(id);
            let labels = match &info {
                Some(i) => self.image_labels(&i.image_id).await?,
                None => BTreeMap::new(),
            };
            let understood = understood_versions(&template.stores, &labels);
            let facts = self.facts(template, &paths).await?;
            let run_id = self.read_run_id(&paths).await?;
            Self::plan_for(template, &understood, &facts, run_id.as_deref())
        };
        let validator = match (&template.store_validator, &info) {
            (None, _) => ValidatorOutcome::NotConfigured,
            (Some(_), _) if plan.impact == Impact::Blocked => ValidatorOutcome::Skipped,
            (Some(v), Some(i)) if container == ContainerReadiness::Healthy => {
                match self.ctx.engine.exec(&i.id, &v.command, v.timeout).await {
                    Ok(out) => {
                        let lines = out
                            .output
                            .lines()
                            .map(str::trim_end)
                            .filter(|l| !l.is_empty())
                            .map(str::to_string)
                            .collect();
                        if out.exit_code == 0 {
                            ValidatorOutcome::Passed { lines }
                        } else {
                            ValidatorOutcome::Failed {
                                exit_code: out.exit_code,
                                lines,
                            }
                        }
                    }
                    Err(EngineError::Timeout(_)) => ValidatorOutcome::Error(format!(
                        "did not finish within {}",
                        berth_core::duration::format_duration(v.timeout)
                    )),
                    Err(e) => ValidatorOutcome::Error(e.to_string()),
                }
            }
            (Some(_), _) => ValidatorOutcome::Skipped,
        };
        let verdict = readiness(&plan, &container, &validator);
        self.ctx.metrics.readiness_observed(verdict.impact);
        if !template.stores.is_empty() || template.store_validator.is_some() {
            self.last_verdicts
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .insert(id.to_string(), verdict.impact);
        }
        Ok(verdict)
    }
}
