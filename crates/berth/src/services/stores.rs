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
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use berth_core::operation::OperationKind;
use berth_core::runtime::RuntimeRecord;
use berth_core::status::RuntimeStatus;
use berth_core::store::format::{
    decode_manifest, sha256_hex, BERTH_DIR, LOCK_FILE, MANIFEST_FILE, QUARANTINE_DIR,
    RECEIPTS_FILE, RUN_ID_FILE,
};
use berth_core::store::{
    decode_receipts, encode_receipt, is_manifest_temp, locate, parse_staged_file_name, plan,
    readiness, roll_forward, staged_file_name, understood_versions, ActionKind, ContainerReadiness,
    Envelope, Impact, Location, Manifest, ManifestEntry, ManifestFact, PlanInput, Readiness,
    Receipt, ReceiptLog, ReceiptRecord, RecoveryPlan, RollStep, StagedFact, StoreDescriptor,
    StoreFileFact, ValidatorOutcome,
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
/// cuts. The caller holds the runtime's lock and has rolled forward what an
/// earlier batch left staged ([`roll_forward_stores`]).
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

/// A batch that [`BatchWriter::commit`] committed.
#[derive(Debug)]
pub enum Committed {
    /// Every store file holds the batch.
    Placed,
    /// Committed, but moving the staged files into place failed; a durable
    /// copy of every file is staged in `.berth/` again, so the next
    /// roll-forward (next batch, start or boot) puts it in place.
    Staged(StateFsError),
    /// Committed, but placing failed and so did keeping a durable copy: the
    /// disk is failing and the batch's bytes may be lost with it.
    Failing(StateFsError),
    /// The commit's fsync failed: the batch is visible but may not survive
    /// a power loss.
    Unknown(StateFsError),
}
impl BatchWriter<'_> {
    /// Writes `files` as batch `record`, then commits `manifest`, then puts
    /// the files in place. `Err` means the batch did not commit and no file
    /// holding committed data was touched.
    pub async fn commit(
        &self,
        record: &ReceiptRecord,
        files: &[PreparedFile],
        manifest: &Manifest,
    ) -> std::result::Result<Committed, StateFsError> {
        let fs = self.fs;
        let berth_dir = self.paths.berth_dir();
        let manifest_path = self.paths.manifest();
        let manifest_tmp = berth_dir.join(format!(".{MANIFEST_FILE}.tmp-{}", record.batch_id));
        // Bytes of a struct of strings and integers always serialise.
        let manifest_bytes = serde_json::to_vec_pretty(manifest).unwrap_or_default();
        let staged: Vec<PathBuf> = files
            .iter()
            .map(|f| berth_dir.join(staged_file_name(&record.batch_id, &f.store)))
            .collect();

        // 1. Stage: the receipt (the batch marked preparing), every file and
        //    the new manifest written in `.berth/` and synced, all at once.
        //    No file holding committed data is touched.
        let receipts = async {
            fs.append(&self.paths.receipts(), &encode_receipt(record))
                .await?;
            fs.fsync(&self.paths.receipts()).await
        };
        let manifest_aside = async {
            fs.write(&manifest_tmp, &manifest_bytes).await?;
            fs.fsync(&manifest_tmp).await
        };
        let stores = try_join_all(files.iter().zip(&staged).map(|(f, path)| async move {
            fs.write(path, &f.bytes).await?;
            fs.fsync(path).await
        }));
        let staged_and_renamed = async {
            tokio::try_join!(receipts, manifest_aside, stores)?;
            // 2. The commit: the manifest's rename, made durable by the
            //    fsync of `.berth/` below, which makes the staged files'
            //    names durable too.
            fs.rename(&manifest_tmp, &manifest_path).await
        };
        if let Err(e) = staged_and_renamed.await {
            if !e.is_crash() {
                // Not committed: what was staged is of no use (best effort;
                // the next roll-forward removes what is left).
                let _ = fs.remove_file(&manifest_tmp).await;
                for path in &staged {
                    let _ = fs.remove_file(path).await;
                }
            }
            return Err(e);
        }
        if let Err(e) = fs.fsync_dir(&berth_dir).await {
            if e.is_crash() {
                return Err(e);
            }
            // The new manifest is in place but may not be on the disk: the
            // staged files stay, for whichever manifest the disk kept.
            return Ok(Committed::Unknown(e));
        }

        // 3. Place: every staged file over its store, each directory synced.
        //    A crash here is rolled forward before the next read or start.
        let placed = async {
            let mut dirs = BTreeSet::new();
            for (f, path) in files.iter().zip(&staged) {
                fs.rename(path, &f.path).await?;
                dirs.insert(crate::ports::state_fs::parent_dir(&f.path));
            }
            try_join_all(dirs.iter().map(|d| fs.fsync_dir(d))).await
        };
        let failure = match placed.await {
            Ok(_) => return Ok(Committed::Placed),
            Err(e) if e.is_crash() => return Err(e),
            Err(e) => e,
        };
        // A failed fsync may have dropped a rename whose source is gone from
        // `.berth/` (never retry and trust): stage every file again, from
        // memory, so a durable copy exists whatever the disk kept.
        let restaged = async {
            for (f, path) in files.iter().zip(&staged) {
                fs.write(path, &f.bytes).await?;
                fs.fsync(path).await?;
            }
            fs.fsync_dir(&berth_dir).await
        };
        Ok(match restaged.await {
            Ok(()) => Committed::Staged(failure),
            Err(e) if e.is_crash() => return Err(e),
            Err(_) => Committed::Failing(failure),
        })
    }
}

/// The staged files in `.berth/` with their bytes.
pub async fn staged_files(
    fs: &dyn StateFs,
    paths: &StatePaths,
) -> Result<Vec<(StagedFact, Vec<u8>)>> {
    let names = list_berth_dir(fs, paths).await?;
    staged_files_among(fs, paths, names).await
}

async fn list_berth_dir(fs: &dyn StateFs, paths: &StatePaths) -> Result<Vec<String>> {
    fs.list(&paths.berth_dir())
        .await
        .map_err(|e| fs_error(e, "list the state directory"))
}

async fn staged_files_among(
    fs: &dyn StateFs,
    paths: &StatePaths,
    names: Vec<String>,
) -> Result<Vec<(StagedFact, Vec<u8>)>> {
    let mut out = Vec::new();
    for name in names {
        let Some((_, store)) = parse_staged_file_name(&name) else {
            continue;
        };
        let store = store.to_string();
        let bytes = fs
            .read(&paths.berth_dir().join(&name))
            .await
            .map_err(|e| fs_error(e, "read a staged store file"))?;
        let sha256 = bytes.as_deref().map(sha256_hex);
        out.push((
            StagedFact {
                file_name: name,
                store,
                sha256,
            },
            bytes.unwrap_or_default(),
        ));
    }
    Ok(out)
}

/// With the writers' lock held (the caller's): moves into place what a
/// committed batch left staged, and removes what a batch that never
/// committed left (its staged files and temporary manifest). Returns how
/// many stores it placed.
pub async fn roll_forward_stores(
    fs: &dyn StateFs,
    paths: &StatePaths,
    stores: &[StoreDescriptor],
) -> Result<usize> {
    let names = list_berth_dir(fs, paths).await?;
    let manifest_temps: Vec<String> = names
        .iter()
        .filter(|n| is_manifest_temp(n))
        .cloned()
        .collect();
    for name in &manifest_temps {
        fs.remove_file(&paths.berth_dir().join(name))
            .await
            .map_err(|e| fs_error(e, "remove a temporary manifest"))?;
    }
    let staged = staged_files_among(fs, paths, names).await?;
    if staged.is_empty() {
        if !manifest_temps.is_empty() {
            fs.fsync_dir(&paths.berth_dir())
                .await
                .map_err(|e| fs_error(e, "sync the state directory"))?;
        }
        return Ok(0);
    }
    let manifest = match read_manifest(fs, paths).await? {
        ManifestFact::Present(m) => m,
        // Nothing was ever committed: every staged file is of a batch
        // that never reached its commit.
        ManifestFact::Absent => Manifest::empty(""),
        // Nothing can be judged against it; recovery quarantines it.
        ManifestFact::Corrupt(_) => return Ok(0),
    };
    let mut files = BTreeMap::new();
    for d in stores {
        let bytes = fs
            .read(&paths.store(&d.path))
            .await
            .map_err(|e| fs_error(e, "read a store file"))?;
        files.insert(d.name.clone(), bytes.as_deref().map(sha256_hex));
    }
    let facts: Vec<StagedFact> = staged.into_iter().map(|(f, _)| f).collect();
    let steps = roll_forward(&manifest, &facts, &files);
    let mut dirs = BTreeSet::new();
    let mut placed = 0;
    let mut discarded = false;
    for step in steps {
        match step {
            RollStep::Place { file_name, store } => {
                let Some(d) = stores.iter().find(|d| d.name == store) else {
                    continue;
                };
                let to = paths.store(&d.path);
                let dir = crate::ports::state_fs::parent_dir(&to);
                fs.create_dir_all(&dir)
                    .await
                    .map_err(|e| fs_error(e, "create a store's directory"))?;
                fs.rename(&paths.berth_dir().join(&file_name), &to)
                    .await
                    .map_err(|e| fs_error(e, "move a committed store file into place"))?;
                dirs.insert(dir);
                placed += 1;
                tracing::warn!(store = %store, file = %file_name, "rolled a committed batch's store file forward into place");
            }
            RollStep::Discard { file_name } => {
                // The placements are synced before anything is removed.
                for dir in std::mem::take(&mut dirs) {
                    fs.fsync_dir(&dir)
                        .await
                        .map_err(|e| fs_error(e, "sync a store's directory"))?;
                }
                fs.remove_file(&paths.berth_dir().join(&file_name))
                    .await
                    .map_err(|e| fs_error(e, "remove a staged file"))?;
                discarded = true;
            }
        }
    }
    for dir in dirs {
        fs.fsync_dir(&dir)
            .await
            .map_err(|e| fs_error(e, "sync a store's directory"))?;
    }
    if discarded {
        fs.fsync_dir(&paths.berth_dir())
            .await
            .map_err(|e| fs_error(e, "sync the state directory"))?;
    }
    Ok(placed)
}

/// The manifest as found on disk.
pub async fn read_manifest(fs: &dyn StateFs, paths: &StatePaths) -> Result<ManifestFact> {
    let bytes = fs
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

    /// Labels of the image a container runs or will run. Only what cannot
    /// change is cached: an image id or a digest reference. A tag is
    /// inspected every time, since it may have moved to another image.
    async fn image_labels(&self, image: &str) -> Result<BTreeMap<String, String>> {
        Ok(self
            .image_of(image)
            .await?
            .map(|(_, labels)| labels)
            .unwrap_or_default())
    }

    /// An immutable name of the image `image` names now (its id, or
    /// `image` itself when that is a digest or an id) and its labels;
    /// `None` when it is not (yet) present, so the descriptors' versions
    /// apply.
    async fn image_of(&self, image: &str) -> Result<Option<(String, BTreeMap<String, String>)>> {
        let immutable = image.starts_with("sha256:") || image.contains("@sha256:");
        if immutable {
            if let Some(l) = self
                .labels
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .get(image)
            {
                return Ok(Some((image.to_string(), l.clone())));
            }
        }
        let info = self.ctx.engine.inspect_image(image).await.map_err(|e| {
            Error::from_engine(e, ErrorCode::DockerUnavailable, "inspect the image")
        })?;
        let Some(info) = info else {
            return Ok(None);
        };
        let mut cache = self.labels.lock().unwrap_or_else(|p| p.into_inner());
        // Bounded: an entry is only a saved inspect.
        if cache.len() > 10_000 {
            cache.clear();
        }
        cache.insert(info.id.clone(), info.labels.clone());
        if immutable {
            cache.insert(image.to_string(), info.labels.clone());
        }
        Ok(Some((info.id, info.labels)))
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
        read_manifest(self.fs(), paths).await
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
        let mut staged = None;
        for d in &template.stores {
            let bytes = match &manifest {
                ManifestFact::Present(m) => {
                    self.committed_bytes(paths, m, &d.name, &d.path, &mut staged)
                        .await?
                }
                _ => self.read_store_file(paths, &d.path).await?,
            };
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

    async fn read_store_file(&self, paths: &StatePaths, path: &str) -> Result<Option<Vec<u8>>> {
        self.fs()
            .read(&paths.store(path))
            .await
            .map_err(|e| fs_error(e, "read a store file"))
    }

    /// A store's bytes as committed: its file, or, while a committed batch
    /// is not yet in place, its staged file (read without the lock: a
    /// staged file is only ever written before its batch commits). Falls
    /// back to the file, whatever it holds, for the planner to judge.
    /// `staged` caches the listing of `.berth/` across stores.
    async fn committed_bytes(
        &self,
        paths: &StatePaths,
        manifest: &Manifest,
        store: &str,
        path: &str,
        staged: &mut Option<Vec<(StagedFact, Vec<u8>)>>,
    ) -> Result<Option<Vec<u8>>> {
        let file = self.read_store_file(paths, path).await?;
        let Some(entry) = manifest.entry(store) else {
            return Ok(file);
        };
        if file.as_deref().map(sha256_hex).as_deref() == Some(entry.sha256.as_str()) {
            return Ok(file);
        }
        if staged.is_none() {
            *staged = Some(staged_files(self.fs(), paths).await?);
        }
        let found = staged.as_deref().unwrap_or_default();
        let facts: Vec<StagedFact> = found.iter().map(|(f, _)| f.clone()).collect();
        let file_sha = file.as_deref().map(sha256_hex);
        Ok(match locate(manifest, store, file_sha.as_deref(), &facts) {
            Location::Staged(name) => found
                .iter()
                .find(|(f, _)| f.file_name == name)
                .map(|(_, bytes)| bytes.clone()),
            Location::InPlace | Location::Nowhere => file,
        })
    }

    /// Boot recovery: rolls forward every runtime's stores that a crash
    /// left between a batch's commit and its placement, before anything
    /// reads or starts. Returns how many store files it placed.
    pub async fn recover(&self) -> Result<usize> {
        let mut placed = 0;
        for template in self.ctx.store.list_templates().await? {
            if template.stores.is_empty() {
                continue;
            }
            let filter = crate::ports::store::RuntimeFilter {
                template: Some(template.name.clone()),
                status: None,
            };
            for rec in self.ctx.store.list_runtimes(&filter).await? {
                match self.recover_runtime(&rec.id, &template).await {
                    Ok(n) => placed += n,
                    // One unreadable state directory must not keep berth
                    // down: its next batch or start rolls forward again.
                    Err(e) => {
                        tracing::error!(runtime = %rec.id, error = %e, "could not roll the runtime's stores forward at boot")
                    }
                }
            }
        }
        Ok(placed)
    }

    /// Rolls one runtime's stores forward, taking the lock only when a
    /// crash left something staged in `.berth/`.
    async fn recover_runtime(&self, id: &str, template: &Template) -> Result<usize> {
        let paths = self.paths(id);
        let left = list_berth_dir(self.fs(), &paths).await?;
        if !left
            .iter()
            .any(|n| parse_staged_file_name(n).is_some() || is_manifest_temp(n))
        {
            return Ok(0);
        }
        let _lock = self
            .fs()
            .lock(&paths.lock())
            .await
            .map_err(|e| fs_error(e, "lock the state directory"))?;
        roll_forward_stores(self.fs(), &paths, &template.stores).await
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
        roll_forward_stores(self.fs(), &paths, &template.stores).await?;
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
        match writer.commit(&record, &files, &manifest).await {
            Ok(Committed::Placed) => {}
            // Committed: reads serve the staged bytes, and the next batch,
            // start or boot puts them in place.
            Ok(Committed::Staged(e)) => {
                tracing::error!(runtime = %id, batch = %batch_id, error = %e, "state-store batch committed, but its files could not be put in place yet; a durable copy is staged");
            }
            // The disk failed at or after the commit: the batch may not
            // survive, so it is not acknowledged.
            Ok(Committed::Unknown(e) | Committed::Failing(e)) => {
                self.ctx.metrics.store_batch_failed();
                tracing::error!(runtime = %id, batch = %batch_id, error = %e, "the disk failed while committing a state-store batch or putting it in place");
                return Err(Error::new(
                    ErrorCode::StorageUnavailable,
                    format!("the disk failed while committing the batch or putting it in place ({e}); it may or may not survive a crash: check the disk, then read the store back"),
                )
                .caused_by(e));
            }
            Err(e) => {
                self.ctx.metrics.store_batch_failed();
                tracing::error!(runtime = %id, batch = %batch_id, error = %e, "state-store batch aborted");
                return Err(fs_error(e, "write the batch durably"));
            }
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
        let not_committed = || {
            Error::new(
                ErrorCode::StoreNotFound,
                format!("store {store:?} of runtime {id:?} has no committed data"),
            )
        };
        let manifest = self.committed_manifest(id).await?;
        let entry = manifest.entry(store).ok_or_else(not_committed)?;
        let file = self.read_store_file(&paths, &d.path).await?;
        let bytes = match file {
            Some(bytes) if sha256_hex(&bytes) == entry.sha256 => bytes,
            // A batch may be between its commit and its placement: read
            // again under the writers' lock, the staged copy included.
            _ => {
                let _lock = self
                    .fs()
                    .lock(&paths.lock())
                    .await
                    .map_err(|e| fs_error(e, "lock the state directory"))?;
                let manifest = self.committed_manifest(id).await?;
                let entry = manifest.entry(store).ok_or_else(not_committed)?;
                let bytes = self
                    .committed_bytes(&paths, &manifest, store, &d.path, &mut None)
                    .await?
                    .ok_or_else(not_committed)?;
                if sha256_hex(&bytes) != entry.sha256 {
                    return Err(Error::new(
                        ErrorCode::Conflict,
                        format!("store {store:?} of runtime {id:?} does not hold what its last committed batch wrote; see GET /v1/runtimes/{id}/readiness"),
                    ));
                }
                bytes
            }
        };
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
        // The image as it is now, by id: a tag may move later, the id not.
        let mut run_image = image.to_string();
        if !template.stores.is_empty() {
            roll_forward_stores(fs, &paths, &template.stores).await?;
            let labels = match self.image_of(image).await? {
                Some((image_id, labels)) => {
                    run_image = image_id;
                    labels
                }
                None => BTreeMap::new(),
            };
            let understood = understood_versions(&template.stores, &labels);
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
            runs.insert(run_id.clone(), run_image);
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
