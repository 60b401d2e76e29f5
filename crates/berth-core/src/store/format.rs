//! The on-disk format: store envelopes, the manifest, and the receipt log.
//! See `docs/state-store.md`; these types are its single definition.

use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};

/// The manifest format this berth writes and reads.
pub const MANIFEST_SCHEMA_VERSION: u32 = 1;

/// Directory under the state directory holding berth's own files.
pub const BERTH_DIR: &str = ".berth";
pub const MANIFEST_FILE: &str = "manifest.json";
pub const RECEIPTS_FILE: &str = "receipts.log";
pub const RUN_ID_FILE: &str = "run_id";
pub const LOCK_FILE: &str = "lock";
/// Quarantined files go to `.berth/quarantine/<store>.<ms>.<file name>`.
pub const QUARANTINE_DIR: &str = "quarantine";

/// A store file: `{"schema_version","updated_at","run_id","data"}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Envelope {
    pub schema_version: u32,
    /// ms since the epoch.
    pub updated_at: i64,
    pub run_id: String,
    pub data: serde_json::Value,
}

/// What the planner needs of an envelope.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EnvelopeHead {
    pub schema_version: u32,
    pub run_id: String,
    pub updated_at: i64,
}

impl Envelope {
    pub fn head(&self) -> EnvelopeHead {
        EnvelopeHead {
            schema_version: self.schema_version,
            run_id: self.run_id.clone(),
            updated_at: self.updated_at,
        }
    }
}

/// One store's line in the manifest.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ManifestEntry {
    pub store: String,
    pub schema_version: u32,
    /// `committed`.
    pub state: String,
    pub last_receipt_id: String,
    /// Hex SHA-256 of the store file's bytes.
    pub sha256: String,
}

/// `.berth/manifest.json`, the commit record: it names only files written whole.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Manifest {
    pub schema_version: u32,
    pub runtime_id: String,
    pub active_run_id: Option<String>,
    /// Sequence number of the last committed batch (0: none yet).
    pub high_watermark: u64,
    pub last_committed_batch_id: Option<String>,
    /// A batch a writer marked preparing in the manifest itself and did not
    /// commit. berth's writer marks preparing in the receipt log and always
    /// commits this as `null`; a non-null value means a torn batch.
    pub last_preparing_batch_id: Option<String>,
    pub entries: Vec<ManifestEntry>,
}

impl Manifest {
    pub fn empty(runtime_id: &str) -> Self {
        Manifest {
            schema_version: MANIFEST_SCHEMA_VERSION,
            runtime_id: runtime_id.to_string(),
            active_run_id: None,
            high_watermark: 0,
            last_committed_batch_id: None,
            last_preparing_batch_id: None,
            entries: Vec::new(),
        }
    }

    pub fn entry(&self, store: &str) -> Option<&ManifestEntry> {
        self.entries.iter().find(|e| e.store == store)
    }
}

/// What one batch wrote to one store.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Receipt {
    pub receipt_id: String,
    pub store: String,
    pub schema_version: u32,
    pub sha256: String,
    pub size: u64,
}

/// One record of `.berth/receipts.log`: a batch and its receipts, appended
/// (and fsynced) before any of its files is renamed into place. A record
/// whose `seq` is above the manifest's `high_watermark` is a batch that was
/// preparing and never committed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReceiptRecord {
    pub batch_id: String,
    pub seq: u64,
    pub run_id: String,
    pub reason: Option<String>,
    /// ms since the epoch.
    pub created_at: i64,
    pub receipts: Vec<Receipt>,
}

/// The receipt log as read back: the records that verify, and whether the
/// log ends in a region that does not (an append cut by a crash).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ReceiptLog {
    pub records: Vec<ReceiptRecord>,
    pub torn_tail: bool,
}

/// Hex SHA-256 of `bytes`.
pub fn sha256_hex(bytes: &[u8]) -> String {
    let digest = Sha256::digest(bytes);
    let mut out = String::with_capacity(64);
    for b in digest {
        out.push_str(&format!("{b:02x}"));
    }
    out
}

/// One framed line of the receipt log:
/// `<byte length of JSON> <hex sha256 of JSON> <JSON>\n`.
pub fn encode_receipt(record: &ReceiptRecord) -> Vec<u8> {
    // A struct of strings and integers always serialises.
    let json = serde_json::to_vec(record).unwrap_or_default();
    let mut out = format!("{} {} ", json.len(), sha256_hex(&json)).into_bytes();
    out.extend_from_slice(&json);
    out.push(b'\n');
    out
}

/// Reads the receipt log; stops at the first frame that does not verify
/// (its length, checksum or JSON), which marks a torn tail.
pub fn decode_receipts(bytes: &[u8]) -> ReceiptLog {
    let mut log = ReceiptLog::default();
    let mut rest = bytes;
    while !rest.is_empty() {
        match decode_frame(rest) {
            Some((record, used)) => {
                log.records.push(record);
                rest = &rest[used..];
            }
            None => {
                log.torn_tail = true;
                break;
            }
        }
    }
    log
}

fn decode_frame(bytes: &[u8]) -> Option<(ReceiptRecord, usize)> {
    let sp1 = bytes.iter().take(21).position(|&b| b == b' ')?;
    let len: usize = std::str::from_utf8(&bytes[..sp1]).ok()?.parse().ok()?;
    let hash_start = sp1 + 1;
    let hash_end = hash_start + 64;
    if bytes.len() < hash_end + 1 || bytes[hash_end] != b' ' {
        return None;
    }
    let hash = std::str::from_utf8(&bytes[hash_start..hash_end]).ok()?;
    let json_start = hash_end + 1;
    let json_end = json_start.checked_add(len)?;
    if bytes.len() < json_end + 1 || bytes[json_end] != b'\n' {
        return None;
    }
    let json = &bytes[json_start..json_end];
    if sha256_hex(json) != hash {
        return None;
    }
    let record = serde_json::from_slice(json).ok()?;
    Some((record, json_end + 1))
}

/// What the shell found at a store's path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoreFileFact {
    Absent,
    Present {
        sha256: String,
        /// `Err` with why when the bytes are not an envelope.
        envelope: Result<EnvelopeHead, String>,
    },
}

impl StoreFileFact {
    pub fn from_bytes(bytes: &[u8]) -> Self {
        let envelope = serde_json::from_slice::<Envelope>(bytes)
            .map(|e| e.head())
            .map_err(|e| e.to_string());
        StoreFileFact::Present {
            sha256: sha256_hex(bytes),
            envelope,
        }
    }
}

/// Decodes a manifest file's bytes.
pub fn decode_manifest(bytes: &[u8]) -> Result<Manifest, String> {
    let m: Manifest = serde_json::from_slice(bytes).map_err(|e| e.to_string())?;
    if m.schema_version > MANIFEST_SCHEMA_VERSION {
        return Err(format!(
            "manifest schema_version {} is newer than this berth understands ({MANIFEST_SCHEMA_VERSION})",
            m.schema_version
        ));
    }
    Ok(m)
}
