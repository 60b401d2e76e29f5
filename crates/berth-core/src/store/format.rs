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
    hex::encode(Sha256::digest(bytes))
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

#[cfg(test)]
mod tests {
    use super::*;

    fn record(seq: u64, stores: &[&str]) -> ReceiptRecord {
        ReceiptRecord {
            batch_id: format!("batch-{seq}"),
            seq,
            run_id: "run-1".to_string(),
            reason: seq.is_multiple_of(2).then(|| "checkpoint".to_string()),
            created_at: 1_700_000_000_000 + seq as i64,
            receipts: stores
                .iter()
                .enumerate()
                .map(|(i, s)| Receipt {
                    receipt_id: format!("receipt-{seq}-{i}"),
                    store: s.to_string(),
                    schema_version: 1,
                    sha256: sha256_hex(format!("{s}{seq}").as_bytes()),
                    size: 42 + i as u64,
                })
                .collect(),
        }
    }

    fn log_of(records: &[ReceiptRecord]) -> Vec<u8> {
        records.iter().flat_map(encode_receipt).collect()
    }

    fn envelope_bytes(schema_version: u32, run_id: &str) -> Vec<u8> {
        serde_json::to_vec(&Envelope {
            schema_version,
            updated_at: 5,
            run_id: run_id.to_string(),
            data: serde_json::json!({"k": [1, 2]}),
        })
        .unwrap()
    }

    #[test]
    fn sha256_hex_is_lowercase_hex_of_the_bytes() {
        assert_eq!(
            sha256_hex(b"abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        assert_eq!(sha256_hex(b"").len(), 64);
    }

    #[test]
    fn a_frame_is_length_checksum_json_newline() {
        let r = record(1, &["a"]);
        let frame = encode_receipt(&r);
        let json = serde_json::to_vec(&r).unwrap();
        let head = format!("{} {} ", json.len(), sha256_hex(&json));
        assert!(frame.starts_with(head.as_bytes()));
        assert_eq!(&frame[head.len()..frame.len() - 1], json.as_slice());
        assert_eq!(frame.last(), Some(&b'\n'));
    }

    #[test]
    fn receipt_frames_round_trip() {
        let records = vec![record(1, &["a", "b"]), record(2, &[]), record(3, &["c"])];
        let log = decode_receipts(&log_of(&records));
        assert_eq!(
            log,
            ReceiptLog {
                records,
                torn_tail: false
            }
        );
        assert_eq!(decode_receipts(b""), ReceiptLog::default());
    }

    #[test]
    fn a_log_cut_anywhere_in_its_last_frame_keeps_the_earlier_records() {
        let records = vec![record(1, &["a", "b"]), record(2, &["c"]), record(3, &["a"])];
        let earlier = log_of(&records[..2]);
        let whole = log_of(&records);
        for cut in earlier.len()..whole.len() {
            let log = decode_receipts(&whole[..cut]);
            assert_eq!(log.records, records[..2], "cut at {cut}");
            // Cut exactly at the frame boundary nothing is torn.
            assert_eq!(log.torn_tail, cut != earlier.len(), "cut at {cut}");
        }
        assert_eq!(decode_receipts(&whole).records, records);
    }

    #[test]
    fn a_log_cut_at_every_frame_boundary_is_not_torn() {
        let records = [record(1, &["a"]), record(2, &["b"]), record(3, &["c"])];
        for n in 0..=records.len() {
            let log = decode_receipts(&log_of(&records[..n]));
            assert_eq!(log.records, records[..n]);
            assert!(!log.torn_tail);
        }
    }

    #[test]
    fn garbage_after_the_last_frame_is_a_torn_tail() {
        let records = vec![record(1, &["a"]), record(2, &["b"])];
        for garbage in [&b"x"[..], b"\n", b" ", b"0 ", b"12 abc {}\n", b"\0\0\0\0"] {
            let mut bytes = log_of(&records);
            bytes.extend_from_slice(garbage);
            let log = decode_receipts(&bytes);
            assert_eq!(log.records, records, "{garbage:?}");
            assert!(log.torn_tail, "{garbage:?}");
        }
    }

    #[test]
    fn a_frame_with_a_valid_checksum_but_not_a_record_is_a_torn_tail() {
        let json = br#"{"not":"a record"}"#;
        let mut bytes = log_of(&[record(1, &["a"])]);
        bytes.extend_from_slice(format!("{} {} ", json.len(), sha256_hex(json)).as_bytes());
        bytes.extend_from_slice(json);
        bytes.push(b'\n');
        let log = decode_receipts(&bytes);
        assert_eq!(log.records.len(), 1);
        assert!(log.torn_tail);
    }

    #[test]
    fn a_flipped_byte_in_the_json_fails_the_checksum() {
        let records = [record(1, &["a"]), record(2, &["store_b"])];
        let first = encode_receipt(&records[0]);
        let second = encode_receipt(&records[1]);
        let json_start = second.iter().position(|&b| b == b'{').unwrap();
        let json_end = second.len() - 1;
        for i in json_start..json_end {
            let mut bytes = first.clone();
            let mut frame = second.clone();
            // Stays valid JSON for letters and digits; only the checksum
            // can tell.
            frame[i] ^= 0x01;
            bytes.extend_from_slice(&frame);
            let log = decode_receipts(&bytes);
            assert_eq!(log.records, records[..1], "flip at {i}");
            assert!(log.torn_tail, "flip at {i}");
        }
    }

    #[test]
    fn a_wrong_length_prefix_is_a_torn_tail() {
        let frame = encode_receipt(&record(1, &["a"]));
        let sp = frame.iter().position(|&b| b == b' ').unwrap();
        let len: usize = std::str::from_utf8(&frame[..sp]).unwrap().parse().unwrap();
        for wrong in [len - 1, len + 1, usize::MAX] {
            let mut bytes = wrong.to_string().into_bytes();
            bytes.extend_from_slice(&frame[sp..]);
            let log = decode_receipts(&bytes);
            assert!(log.records.is_empty(), "{wrong}");
            assert!(log.torn_tail, "{wrong}");
        }
    }

    #[test]
    fn decode_manifest_reads_what_serde_writes() {
        let mut m = Manifest::empty("rt-1");
        m.high_watermark = 3;
        m.active_run_id = Some("run-1".to_string());
        m.entries.push(ManifestEntry {
            store: "a".to_string(),
            schema_version: 1,
            state: "committed".to_string(),
            last_receipt_id: "receipt-1".to_string(),
            sha256: sha256_hex(b"x"),
        });
        let bytes = serde_json::to_vec(&m).unwrap();
        assert_eq!(decode_manifest(&bytes), Ok(m.clone()));
        assert_eq!(
            m.entry("a").map(|e| e.last_receipt_id.as_str()),
            Some("receipt-1")
        );
        assert_eq!(m.entry("b"), None);
    }

    #[test]
    fn decode_manifest_refuses_a_newer_schema_version() {
        let mut m = Manifest::empty("rt-1");
        m.schema_version = MANIFEST_SCHEMA_VERSION + 1;
        let err = decode_manifest(&serde_json::to_vec(&m).unwrap()).unwrap_err();
        assert!(err.contains("newer"), "{err}");
    }

    #[test]
    fn decode_manifest_refuses_what_is_not_a_manifest() {
        assert!(decode_manifest(b"").is_err());
        assert!(decode_manifest(b"{bad").is_err());
        assert!(decode_manifest(br#"{"schema_version":1}"#).is_err());
    }

    #[test]
    fn a_store_file_fact_carries_the_sha_and_the_envelope_head() {
        let bytes = envelope_bytes(2, "run-9");
        assert_eq!(
            StoreFileFact::from_bytes(&bytes),
            StoreFileFact::Present {
                sha256: sha256_hex(&bytes),
                envelope: Ok(EnvelopeHead {
                    schema_version: 2,
                    run_id: "run-9".to_string(),
                    updated_at: 5,
                }),
            }
        );
    }

    #[test]
    fn a_store_file_that_is_not_an_envelope_is_present_with_an_error() {
        for bytes in [
            &b"{bad"[..],
            b"",
            b"[]",
            br#"{"schema_version":1,"updated_at":0,"data":{}}"#,
            br#"{"schema_version":1,"updated_at":0,"run_id":"r","data":{},"extra":1}"#,
        ] {
            match StoreFileFact::from_bytes(bytes) {
                StoreFileFact::Present { sha256, envelope } => {
                    assert_eq!(sha256, sha256_hex(bytes));
                    assert!(envelope.is_err(), "{bytes:?}");
                }
                StoreFileFact::Absent => panic!("absent"),
            }
        }
    }
}
