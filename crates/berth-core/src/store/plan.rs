//! The recovery planner: from the descriptors, the manifest, the receipt
//! log and what is on disk, one action per store with a reason, and the
//! impact on readiness. Reading never changes anything; berth applies the
//! plan when it (re)creates the container.

use std::collections::BTreeMap;

use super::descriptor::{StoreDescriptor, StoreReadiness, StoreRecovery};
use super::format::{Manifest, ReceiptLog, StoreFileFact};

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Impact {
    None,
    Degraded,
    Blocked,
}

impl Impact {
    pub const fn as_str(self) -> &'static str {
        match self {
            Impact::None => "none",
            Impact::Degraded => "degraded",
            Impact::Blocked => "blocked",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ActionKind {
    None,
    /// Nothing berth can do: the runtime must write the store.
    BlockReadiness,
    /// Move the file aside, clear the entry; the runtime rebuilds it.
    Rebuild,
    /// Move the file aside (never delete it).
    Quarantine,
}

impl ActionKind {
    pub const fn as_str(self) -> &'static str {
        match self {
            ActionKind::None => "none",
            ActionKind::BlockReadiness => "block_readiness",
            ActionKind::Rebuild => "rebuild",
            ActionKind::Quarantine => "quarantine",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Reason {
    /// No committed file: never written, or the file vanished.
    Missing,
    /// The file is not what the manifest names and was written by a batch
    /// that did not commit.
    TornBatch,
    /// The file is not what the manifest names, and no uncommitted batch
    /// explains it.
    HashMismatch,
    /// The file is not a store envelope.
    Corrupt,
    /// The file holds a schema newer than the runtime's image understands.
    FutureSchema,
    /// A blocking store's committed data belongs to an earlier run.
    StaleRunId,
}

impl Reason {
    pub const fn as_str(self) -> &'static str {
        match self {
            Reason::Missing => "missing",
            Reason::TornBatch => "torn_batch",
            Reason::HashMismatch => "hash_mismatch",
            Reason::Corrupt => "corrupt",
            Reason::FutureSchema => "future_schema",
            Reason::StaleRunId => "stale_run_id",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoreAction {
    pub kind: ActionKind,
    pub store: String,
    /// `None` exactly when `kind` is `None`.
    pub reason: Option<Reason>,
    /// A sentence for a person (empty for `None`).
    pub detail: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ManifestFact {
    Absent,
    /// Unreadable, or a newer format; the string says why.
    Corrupt(String),
    Present(Manifest),
}

#[derive(Debug, Clone)]
pub struct PlanInput<'a> {
    pub descriptors: &'a [StoreDescriptor],
    /// The schema version the runtime's image understands, by store name;
    /// a store not listed falls back to its descriptor's.
    pub understood: &'a BTreeMap<String, u32>,
    pub manifest: &'a ManifestFact,
    pub receipts: &'a ReceiptLog,
    /// By store name; a store not listed is `Absent`.
    pub files: &'a BTreeMap<String, StoreFileFact>,
    /// The runtime's current run; `None` when it has none yet.
    pub current_run_id: Option<&'a str>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecoveryPlan {
    /// The worst impact of any action.
    pub impact: Impact,
    /// False when the manifest is corrupt.
    pub manifest_healthy: bool,
    /// One per declared store, in declaration order.
    pub actions: Vec<StoreAction>,
}

impl StoreAction {
    fn none(store: &str) -> Self {
        StoreAction {
            kind: ActionKind::None,
            store: store.to_string(),
            reason: None,
            detail: String::new(),
        }
    }
}

/// Decides one action per declared store (in declaration order) and the
/// worst impact. Pure and deterministic: the same input gives the same plan.
///
/// For each store, the first rule that applies wins:
/// 1. the file is not an envelope → `corrupt`;
/// 2. the file holds a schema newer than the image understands →
///    `future_schema`, always quarantined and blocking;
/// 3. the file exists but the manifest has no entry for it → `torn_batch`;
/// 4. the file is not the one the manifest names → `torn_batch` when an
///    uncommitted batch explains it (the manifest says one was preparing, or
///    a receipt above the high watermark names these bytes), else
///    `hash_mismatch`;
/// 5. no file → `missing` (a blocking store blocks readiness, a degrading
///    one is rebuilt);
/// 6. a blocking store committed by another run than the current one →
///    `stale_run_id`;
///
/// otherwise nothing is to be done. Rules 1, 3 and 4 take the store's
/// recovery policy (quarantine or rebuild) and its readiness impact
/// (blocked or degraded). A torn tail of the receipt log changes no action
/// by itself.
pub fn plan(input: &PlanInput<'_>) -> RecoveryPlan {
    let manifest = match input.manifest {
        ManifestFact::Present(m) => Some(m),
        ManifestFact::Absent | ManifestFact::Corrupt(_) => None,
    };
    let mut impact = Impact::None;
    let mut actions = Vec::with_capacity(input.descriptors.len());
    for d in input.descriptors {
        let (action, store_impact) = plan_store(input, manifest, d);
        impact = impact.max(store_impact);
        actions.push(action);
    }
    RecoveryPlan {
        impact,
        manifest_healthy: !matches!(input.manifest, ManifestFact::Corrupt(_)),
        actions,
    }
}

fn plan_store(
    input: &PlanInput<'_>,
    manifest: Option<&Manifest>,
    d: &StoreDescriptor,
) -> (StoreAction, Impact) {
    let name = d.name.as_str();
    let understood = input
        .understood
        .get(name)
        .copied()
        .unwrap_or(d.schema_version);
    let entry = manifest.and_then(|m| m.entry(name));
    let policy = match d.recovery {
        StoreRecovery::Quarantine => ActionKind::Quarantine,
        StoreRecovery::Rebuild => ActionKind::Rebuild,
    };
    let store_impact = match d.readiness {
        StoreReadiness::Blocking => Impact::Blocked,
        StoreReadiness::Degrading => Impact::Degraded,
    };
    let act = |kind: ActionKind, reason: Reason, impact: Impact, detail: String| {
        (
            StoreAction {
                kind,
                store: name.to_string(),
                reason: Some(reason),
                detail,
            },
            impact,
        )
    };

    let (sha256, head) = match input.files.get(name) {
        None | Some(StoreFileFact::Absent) => {
            let detail = match entry {
                Some(_) => format!("store {name} was committed but its file {} is gone", d.path),
                None => format!("store {name} has never been written by a committed batch"),
            };
            return match d.readiness {
                StoreReadiness::Blocking => act(
                    ActionKind::BlockReadiness,
                    Reason::Missing,
                    Impact::Blocked,
                    detail,
                ),
                StoreReadiness::Degrading => act(
                    ActionKind::Rebuild,
                    Reason::Missing,
                    Impact::Degraded,
                    detail,
                ),
            };
        }
        Some(StoreFileFact::Present { sha256, envelope }) => match envelope {
            Err(why) => {
                return act(
                    policy,
                    Reason::Corrupt,
                    store_impact,
                    format!(
                        "store {name}'s file {} is not a store envelope: {why}",
                        d.path
                    ),
                );
            }
            Ok(head) => (sha256, head),
        },
    };

    if head.schema_version > understood {
        return act(
            ActionKind::Quarantine,
            Reason::FutureSchema,
            Impact::Blocked,
            format!(
                "store {name} holds schema {}, newer than the {understood} this image understands",
                head.schema_version
            ),
        );
    }

    let Some(entry) = entry else {
        return act(
            policy,
            Reason::TornBatch,
            store_impact,
            format!(
                "store {name}'s file {} is named by no committed batch: it was written and never committed",
                d.path
            ),
        );
    };

    if entry.sha256 != *sha256 {
        // `entry` is only ever found in a present manifest.
        let (hw, preparing) = manifest
            .map(|m| (m.high_watermark, m.last_preparing_batch_id.as_deref()))
            .unwrap_or((0, None));
        let uncommitted = input
            .receipts
            .records
            .iter()
            .filter(|r| r.seq > hw)
            .find(|r| {
                r.receipts
                    .iter()
                    .any(|rc| rc.store == name && rc.sha256 == *sha256)
            });
        let detail = match (preparing, uncommitted) {
            (_, Some(r)) => Some(format!(
                "store {name}'s file was written by batch {} (seq {}), which never committed",
                r.batch_id, r.seq
            )),
            (Some(batch), None) => Some(format!(
                "store {name}'s file is not the committed one while batch {batch} was preparing and never committed"
            )),
            (None, None) => None,
        };
        return match detail {
            Some(detail) => act(policy, Reason::TornBatch, store_impact, detail),
            None => act(
                policy,
                Reason::HashMismatch,
                store_impact,
                format!(
                    "store {name}'s file does not match the sha256 its last committed batch recorded, and no uncommitted batch wrote it"
                ),
            ),
        };
    }

    if d.readiness == StoreReadiness::Blocking {
        if let Some(current) = input.current_run_id {
            if head.run_id != current {
                return act(
                    ActionKind::BlockReadiness,
                    Reason::StaleRunId,
                    Impact::Blocked,
                    format!(
                        "store {name} was last committed by run {}, not by the current run {current}",
                        head.run_id
                    ),
                );
            }
        }
    }

    (StoreAction::none(name), Impact::None)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::format::{
        decode_manifest, decode_receipts, encode_receipt, sha256_hex, Envelope, ManifestEntry,
        Receipt, ReceiptRecord,
    };
    use crate::store::readiness::{readiness, ContainerReadiness, ValidatorOutcome};
    use proptest::prelude::*;
    use std::collections::BTreeSet;
    use ActionKind as K;
    use StoreReadiness::{Blocking, Degrading};
    use StoreRecovery::{Quarantine, Rebuild};

    const RUN: &str = "run-1";

    fn desc(name: &str, readiness: StoreReadiness, recovery: StoreRecovery) -> StoreDescriptor {
        StoreDescriptor {
            name: name.to_string(),
            path: format!("{name}.json"),
            schema_version: 1,
            readiness,
            recovery,
        }
    }

    fn envelope(schema_version: u32, run_id: &str, data: serde_json::Value) -> Vec<u8> {
        serde_json::to_vec(&Envelope {
            schema_version,
            updated_at: 1_776_772_800_000,
            run_id: run_id.to_string(),
            data,
        })
        .unwrap()
    }

    fn env(schema_version: u32, run_id: &str) -> Vec<u8> {
        envelope(schema_version, run_id, serde_json::json!({"n": 1}))
    }

    /// Everything the planner reads, owned, with helpers to set it up as
    /// a writer would.
    #[derive(Debug, Clone)]
    struct Fx {
        descriptors: Vec<StoreDescriptor>,
        understood: BTreeMap<String, u32>,
        manifest: ManifestFact,
        receipts: ReceiptLog,
        files: BTreeMap<String, StoreFileFact>,
        current: Option<String>,
    }

    impl Fx {
        fn new(descriptors: Vec<StoreDescriptor>) -> Self {
            Fx {
                descriptors,
                understood: BTreeMap::new(),
                manifest: ManifestFact::Absent,
                receipts: ReceiptLog::default(),
                files: BTreeMap::new(),
                current: Some(RUN.to_string()),
            }
        }

        fn manifest_mut(&mut self) -> &mut Manifest {
            if !matches!(self.manifest, ManifestFact::Present(_)) {
                self.manifest = ManifestFact::Present(Manifest::empty("rt-1"));
            }
            match &mut self.manifest {
                ManifestFact::Present(m) => m,
                _ => unreachable!(),
            }
        }

        fn file(&mut self, store: &str, bytes: &[u8]) -> &mut Self {
            self.files
                .insert(store.to_string(), StoreFileFact::from_bytes(bytes));
            self
        }

        /// A committed entry naming `bytes` (the file is not touched).
        fn entry(&mut self, store: &str, bytes: &[u8]) -> &mut Self {
            let m = self.manifest_mut();
            m.high_watermark += 1;
            let seq = m.high_watermark;
            m.entries.retain(|e| e.store != store);
            m.entries.push(ManifestEntry {
                store: store.to_string(),
                schema_version: 1,
                state: "committed".to_string(),
                last_receipt_id: format!("receipt-{seq}"),
                sha256: sha256_hex(bytes),
            });
            self
        }

        fn commit(&mut self, store: &str, bytes: &[u8]) -> &mut Self {
            self.entry(store, bytes).file(store, bytes)
        }

        fn receipt(&mut self, seq: u64, store: &str, bytes: &[u8]) -> &mut Self {
            self.receipts.records.push(ReceiptRecord {
                batch_id: format!("batch-{seq}"),
                seq,
                run_id: RUN.to_string(),
                reason: None,
                created_at: 0,
                receipts: vec![Receipt {
                    receipt_id: format!("receipt-{seq}"),
                    store: store.to_string(),
                    schema_version: 1,
                    sha256: sha256_hex(bytes),
                    size: bytes.len() as u64,
                }],
            });
            self
        }

        fn plan(&self) -> RecoveryPlan {
            plan(&PlanInput {
                descriptors: &self.descriptors,
                understood: &self.understood,
                manifest: &self.manifest,
                receipts: &self.receipts,
                files: &self.files,
                current_run_id: self.current.as_deref(),
            })
        }
    }

    fn policy_action(d: &StoreDescriptor) -> ActionKind {
        match d.recovery {
            Quarantine => K::Quarantine,
            Rebuild => K::Rebuild,
        }
    }

    fn readiness_impact(d: &StoreDescriptor) -> Impact {
        match d.readiness {
            Blocking => Impact::Blocked,
            Degrading => Impact::Degraded,
        }
    }

    /// What a table case expects of store `s`.
    #[derive(Debug, Clone, Copy)]
    enum Expect {
        /// The store's recovery policy and its readiness impact.
        Policy(Reason),
        /// The same for every store.
        Fixed(ActionKind, Reason, Impact),
        /// `missing`: blocking stores block, degrading ones are rebuilt.
        Missing,
        /// Blocking stores are stale; degrading ones need nothing.
        StaleIfBlocking,
        Nothing,
    }

    fn expected(e: Expect, d: &StoreDescriptor) -> (ActionKind, Option<Reason>, Impact) {
        match e {
            Expect::Policy(r) => (policy_action(d), Some(r), readiness_impact(d)),
            Expect::Fixed(k, r, i) => (k, Some(r), i),
            Expect::Missing => match d.readiness {
                Blocking => (K::BlockReadiness, Some(Reason::Missing), Impact::Blocked),
                Degrading => (K::Rebuild, Some(Reason::Missing), Impact::Degraded),
            },
            Expect::StaleIfBlocking => match d.readiness {
                Blocking => (K::BlockReadiness, Some(Reason::StaleRunId), Impact::Blocked),
                Degrading => (K::None, None, Impact::None),
            },
            Expect::Nothing => (K::None, None, Impact::None),
        }
    }

    type Setup = fn(&mut Fx);

    /// Every rule, for every combination of readiness and recovery.
    #[test]
    fn every_rule_for_every_policy() {
        use Reason::*;
        let cases: Vec<(&str, Setup, Expect)> = vec![
            // (a) not an envelope
            (
                "corrupt, never committed",
                |f| {
                    f.file("s", b"{bad");
                },
                Expect::Policy(Corrupt),
            ),
            (
                "corrupt, committed",
                |f| {
                    f.commit("s", b"{bad");
                },
                Expect::Policy(Corrupt),
            ),
            (
                "corrupt, not the committed file",
                |f| {
                    f.entry("s", &env(1, RUN)).file("s", b"");
                },
                Expect::Policy(Corrupt),
            ),
            (
                "corrupt, stale run id irrelevant",
                |f| {
                    f.commit("s", b"[]");
                    f.current = Some("other".into());
                },
                Expect::Policy(Corrupt),
            ),
            // (b) future schema
            (
                "future schema, committed",
                |f| {
                    f.commit("s", &env(2, RUN));
                },
                Expect::Fixed(K::Quarantine, FutureSchema, Impact::Blocked),
            ),
            (
                "future schema, never committed",
                |f| {
                    f.file("s", &env(7, RUN));
                },
                Expect::Fixed(K::Quarantine, FutureSchema, Impact::Blocked),
            ),
            (
                "future schema, not the committed file",
                |f| {
                    f.entry("s", &env(1, RUN)).file("s", &env(2, RUN));
                },
                Expect::Fixed(K::Quarantine, FutureSchema, Impact::Blocked),
            ),
            (
                "future schema beats a stale run id",
                |f| {
                    f.commit("s", &env(2, "old"));
                },
                Expect::Fixed(K::Quarantine, FutureSchema, Impact::Blocked),
            ),
            (
                "image label below the descriptor",
                |f| {
                    f.descriptors[0].schema_version = 3;
                    f.understood.insert("s".into(), 2);
                    f.commit("s", &env(3, RUN));
                },
                Expect::Fixed(K::Quarantine, FutureSchema, Impact::Blocked),
            ),
            (
                "image label above the descriptor",
                |f| {
                    f.understood.insert("s".into(), 3);
                    f.commit("s", &env(3, RUN));
                },
                Expect::Nothing,
            ),
            (
                "another store's label does not apply",
                |f| {
                    f.understood.insert("other".into(), 5);
                    f.commit("s", &env(2, RUN));
                },
                Expect::Fixed(K::Quarantine, FutureSchema, Impact::Blocked),
            ),
            (
                "older schema is fine",
                |f| {
                    f.descriptors[0].schema_version = 4;
                    f.commit("s", &env(1, RUN));
                },
                Expect::Nothing,
            ),
            // (c) file but no entry
            (
                "file, manifest absent",
                |f| {
                    f.file("s", &env(1, RUN));
                },
                Expect::Policy(TornBatch),
            ),
            (
                "file, manifest without the store",
                |f| {
                    f.commit("other", &env(1, RUN)).file("s", &env(1, RUN));
                },
                Expect::Policy(TornBatch),
            ),
            (
                "file, manifest corrupt",
                |f| {
                    f.commit("s", &env(1, RUN));
                    f.manifest = ManifestFact::Corrupt("bad json".into());
                },
                Expect::Policy(TornBatch),
            ),
            // (d) file is not the committed one
            (
                "mismatch, manifest marks a batch preparing",
                |f| {
                    f.entry("s", &env(1, RUN))
                        .file("s", &envelope(1, RUN, serde_json::json!(2)));
                    f.manifest_mut().last_preparing_batch_id = Some("batch-9".into());
                },
                Expect::Policy(TornBatch),
            ),
            (
                "mismatch, an uncommitted receipt names the file",
                |f| {
                    let new = envelope(1, RUN, serde_json::json!(2));
                    f.entry("s", &env(1, RUN))
                        .file("s", &new)
                        .receipt(2, "s", &new);
                },
                Expect::Policy(TornBatch),
            ),
            (
                "mismatch, a receipt far above the watermark names the file",
                |f| {
                    let new = envelope(1, RUN, serde_json::json!(2));
                    f.entry("s", &env(1, RUN))
                        .file("s", &new)
                        .receipt(40, "s", &new);
                },
                Expect::Policy(TornBatch),
            ),
            (
                "mismatch, only a committed receipt names the file",
                |f| {
                    let old = envelope(1, RUN, serde_json::json!(0));
                    f.receipt(1, "s", &old);
                    f.entry("s", &old).entry("s", &env(1, RUN)).file("s", &old);
                },
                Expect::Policy(HashMismatch),
            ),
            (
                "mismatch, an uncommitted receipt of another store has these bytes",
                |f| {
                    let new = envelope(1, RUN, serde_json::json!(2));
                    f.entry("s", &env(1, RUN))
                        .file("s", &new)
                        .receipt(2, "other", &new);
                },
                Expect::Policy(HashMismatch),
            ),
            (
                "mismatch, an uncommitted receipt of this store has other bytes",
                |f| {
                    let new = envelope(1, RUN, serde_json::json!(2));
                    f.entry("s", &env(1, RUN))
                        .file("s", &new)
                        .receipt(2, "s", b"other");
                },
                Expect::Policy(HashMismatch),
            ),
            (
                "mismatch, nothing explains it",
                |f| {
                    f.entry("s", &env(1, RUN))
                        .file("s", &envelope(1, RUN, serde_json::json!(2)));
                },
                Expect::Policy(HashMismatch),
            ),
            (
                "mismatch beats a stale run id",
                |f| {
                    f.entry("s", &env(1, RUN)).file("s", &env(1, "old"));
                },
                Expect::Policy(HashMismatch),
            ),
            (
                "mismatch with a torn receipt log",
                |f| {
                    f.entry("s", &env(1, RUN))
                        .file("s", &envelope(1, RUN, serde_json::json!(2)));
                    f.receipts.torn_tail = true;
                },
                Expect::Policy(HashMismatch),
            ),
            // (e) no file
            ("never written", |_| {}, Expect::Missing),
            (
                "never written, file fact absent",
                |f| {
                    f.files.insert("s".into(), StoreFileFact::Absent);
                },
                Expect::Missing,
            ),
            (
                "committed, file gone",
                |f| {
                    f.entry("s", &env(1, RUN));
                },
                Expect::Missing,
            ),
            (
                "committed, file gone, manifest corrupt",
                |f| {
                    f.manifest = ManifestFact::Corrupt("x".into());
                },
                Expect::Missing,
            ),
            (
                "an uncommitted receipt does not make a missing file torn",
                |f| {
                    f.receipt(1, "s", &env(1, RUN));
                    f.manifest_mut().last_preparing_batch_id = Some("batch-1".into());
                },
                Expect::Missing,
            ),
            // (f) the committed file
            (
                "committed by the current run",
                |f| {
                    f.commit("s", &env(1, RUN));
                },
                Expect::Nothing,
            ),
            (
                "committed by an earlier run",
                |f| {
                    f.commit("s", &env(1, "old"));
                },
                Expect::StaleIfBlocking,
            ),
            (
                "no current run yet",
                |f| {
                    f.commit("s", &env(1, "old"));
                    f.current = None;
                },
                Expect::Nothing,
            ),
            (
                "committed, receipt log torn tail",
                |f| {
                    f.commit("s", &env(1, RUN));
                    f.receipts.torn_tail = true;
                },
                Expect::Nothing,
            ),
            (
                "committed, a torn batch wrote only another store",
                |f| {
                    let other = env(1, RUN);
                    f.commit("s", &env(1, RUN)).receipt(2, "other", &other);
                    f.manifest_mut().last_preparing_batch_id = Some("batch-2".into());
                },
                Expect::Nothing,
            ),
        ];
        for (name, setup, expect) in cases {
            for readiness in [Blocking, Degrading] {
                for recovery in [Quarantine, Rebuild] {
                    let mut f = Fx::new(vec![desc("s", readiness, recovery)]);
                    setup(&mut f);
                    let d = f.descriptors[0].clone();
                    let p = f.plan();
                    let (kind, reason, impact) = expected(expect, &d);
                    let what = format!("{name} ({readiness:?}, {recovery:?})");
                    assert_eq!(p.actions.len(), 1, "{what}");
                    let a = &p.actions[0];
                    assert_eq!(a.store, "s", "{what}");
                    assert_eq!((a.kind, a.reason), (kind, reason), "{what}: {}", a.detail);
                    assert_eq!(p.impact, impact, "{what}");
                    assert_eq!(
                        p.manifest_healthy,
                        !matches!(f.manifest, ManifestFact::Corrupt(_)),
                        "{what}"
                    );
                    if kind == K::None {
                        assert!(a.detail.is_empty(), "{what}: {}", a.detail);
                    } else {
                        assert!(a.detail.contains("store s"), "{what}: {}", a.detail);
                        assert!(!a.detail.contains('\n'), "{what}: {}", a.detail);
                    }
                }
            }
        }
    }

    #[test]
    fn details_say_what_is_wrong() {
        let mut f = Fx::new(vec![
            desc("launch_state", Blocking, Quarantine),
            desc("sessions", Degrading, Rebuild),
            desc("perms", Degrading, Quarantine),
            desc("old", Blocking, Rebuild),
            desc("torn", Degrading, Rebuild),
        ]);
        let torn = envelope(1, RUN, serde_json::json!("new"));
        f.commit("launch_state", &env(2, RUN))
            .commit("perms", &env(1, RUN))
            .file("perms", b"{bad")
            .commit("old", &env(1, "run-0"))
            .entry("torn", &env(1, RUN))
            .file("torn", &torn)
            .receipt(9, "torn", &torn);
        let p = f.plan();
        let details: Vec<&str> = p.actions.iter().map(|a| a.detail.as_str()).collect();
        assert_eq!(
            details[0],
            "store launch_state holds schema 2, newer than the 1 this image understands"
        );
        assert_eq!(
            details[1],
            "store sessions has never been written by a committed batch"
        );
        assert!(details[2].starts_with("store perms's file perms.json is not a store envelope: "));
        assert_eq!(
            details[3],
            "store old was last committed by run run-0, not by the current run run-1"
        );
        assert_eq!(
            details[4],
            "store torn's file was written by batch batch-9 (seq 9), which never committed"
        );
        f.files.remove("launch_state");
        assert_eq!(
            f.plan().actions[0].detail,
            "store launch_state was committed but its file launch_state.json is gone"
        );
    }

    #[test]
    fn the_impact_is_the_worst_and_actions_follow_declaration_order() {
        let mut f = Fx::new(vec![
            desc("c", Degrading, Rebuild),
            desc("a", Degrading, Quarantine),
            desc("b", Blocking, Quarantine),
        ]);
        f.commit("a", &env(1, RUN))
            .commit("b", &env(1, RUN))
            .commit("c", &env(1, RUN));
        let p = f.plan();
        let names: Vec<&str> = p.actions.iter().map(|a| a.store.as_str()).collect();
        assert_eq!(names, ["c", "a", "b"]);
        assert_eq!(p.impact, Impact::None);
        f.file("a", b"{bad");
        assert_eq!(f.plan().impact, Impact::Degraded);
        f.files.remove("b");
        assert_eq!(f.plan().impact, Impact::Blocked);
        f.files.remove("a");
        assert_eq!(f.plan().impact, Impact::Blocked);
        assert!(Impact::None < Impact::Degraded && Impact::Degraded < Impact::Blocked);
    }

    #[test]
    fn no_stores_plan_nothing() {
        let f = Fx::new(vec![]);
        assert_eq!(
            f.plan(),
            RecoveryPlan {
                impact: Impact::None,
                manifest_healthy: true,
                actions: vec![]
            }
        );
    }

    #[test]
    fn undeclared_files_and_entries_are_ignored() {
        let mut f = Fx::new(vec![desc("s", Blocking, Quarantine)]);
        f.commit("s", &env(1, RUN))
            .file("stray", b"{bad")
            .entry("gone", b"x");
        let p = f.plan();
        assert_eq!(p.actions.len(), 1);
        assert_eq!(p.impact, Impact::None);
    }

    // ---- the reference's scenarios ----

    fn reference_stores() -> Vec<StoreDescriptor> {
        vec![
            desc("launch_state", Blocking, Quarantine),
            desc("sessions", Degrading, Rebuild),
        ]
    }

    fn action(p: &RecoveryPlan, store: &str) -> (ActionKind, Option<Reason>) {
        let a = p.actions.iter().find(|a| a.store == store).unwrap();
        (a.kind, a.reason)
    }

    fn ready(p: &RecoveryPlan) -> crate::store::readiness::Readiness {
        readiness(
            p,
            &ContainerReadiness::Healthy,
            &ValidatorOutcome::Passed { lines: vec![] },
        )
    }

    #[test]
    fn a_store_written_but_never_committed_blocks() {
        let mut f = Fx::new(reference_stores());
        f.file("sessions", &env(1, RUN));
        let p = f.plan();
        assert_eq!(p.impact, Impact::Blocked);
        assert!(p.manifest_healthy, "an absent manifest is not corrupt");
        assert_eq!(
            action(&p, "launch_state"),
            (K::BlockReadiness, Some(Reason::Missing))
        );
        assert_eq!(
            action(&p, "sessions"),
            (K::Rebuild, Some(Reason::TornBatch))
        );
        let r = ready(&p);
        assert!(!r.ok);
        assert_eq!(r.reason, "store_recovery_required");
    }

    #[test]
    fn a_corrupt_degrading_store_degrades_and_is_rebuilt() {
        let mut f = Fx::new(reference_stores());
        f.commit("launch_state", &env(1, RUN))
            .file("sessions", b"{bad");
        let p = f.plan();
        assert_eq!(p.impact, Impact::Degraded);
        assert_eq!(action(&p, "sessions"), (K::Rebuild, Some(Reason::Corrupt)));
        let r = ready(&p);
        assert!(r.ok);
        assert_eq!(r.reason, "degraded");
    }

    #[test]
    fn a_future_schema_blocks_and_is_quarantined() {
        let mut f = Fx::new(reference_stores());
        f.file("launch_state", &env(99, RUN))
            .commit("sessions", &env(1, RUN));
        let p = f.plan();
        assert_eq!(p.impact, Impact::Blocked);
        assert_eq!(
            action(&p, "launch_state"),
            (K::Quarantine, Some(Reason::FutureSchema))
        );
        // Even for a degrading store that would otherwise be rebuilt.
        f.file("sessions", &env(99, RUN));
        assert_eq!(
            action(&f.plan(), "sessions"),
            (K::Quarantine, Some(Reason::FutureSchema))
        );
    }

    #[test]
    fn a_stale_run_id_blocks_readiness() {
        let mut f = Fx::new(reference_stores());
        f.commit("launch_state", &env(1, "old-run"))
            .commit("sessions", &env(1, "old-run"));
        let p = f.plan();
        assert_eq!(p.impact, Impact::Blocked);
        assert_eq!(
            action(&p, "launch_state"),
            (K::BlockReadiness, Some(Reason::StaleRunId))
        );
        assert_eq!(action(&p, "sessions"), (K::None, None));
        assert!(!ready(&p).ok);
    }

    #[test]
    fn all_committed_and_valid_is_ready() {
        let mut f = Fx::new(reference_stores());
        f.commit("launch_state", &env(1, RUN))
            .commit("sessions", &env(1, RUN));
        let p = f.plan();
        assert_eq!(p.impact, Impact::None);
        assert!(p.manifest_healthy);
        assert!(p
            .actions
            .iter()
            .all(|a| a.kind == K::None && a.reason.is_none()));
        let r = ready(&p);
        assert!(r.ok);
        assert_eq!(r.reason, "ready");
        assert_eq!(r.actions, p.actions);
        assert!(r.diagnostics.is_empty());
    }

    #[test]
    fn an_invariant_failure_from_the_validator_blocks() {
        let mut f = Fx::new(reference_stores());
        f.commit("launch_state", &env(1, RUN))
            .commit("sessions", &env(1, RUN));
        let line = "confirmed member Builder has no matching session record".to_string();
        let r = readiness(
            &f.plan(),
            &ContainerReadiness::Healthy,
            &ValidatorOutcome::Failed {
                exit_code: 1,
                lines: vec![line.clone()],
            },
        );
        assert!(!r.ok);
        assert_eq!(r.impact, Impact::Blocked);
        assert_eq!(r.reason, "store_validator_failed");
        assert!(r.diagnostics.contains(&line), "{:?}", r.diagnostics);
    }

    // ---- property tests over a model writer ----

    const STORES: [(&str, StoreReadiness, StoreRecovery); 4] = [
        ("s0", Blocking, Quarantine),
        ("s1", Blocking, Rebuild),
        ("s2", Degrading, Quarantine),
        ("s3", Degrading, Rebuild),
    ];
    const CURRENT: &str = "run-cur";
    const OLD: &str = "run-old";

    #[derive(Debug, Clone)]
    struct BatchSpec {
        /// (store index, schema version, payload), each store at most once.
        writes: Vec<(usize, u32, u64)>,
        current_run: bool,
    }

    #[derive(Debug, Clone)]
    enum Disturb {
        Delete,
        Garbage,
        FlipByte(prop::sample::Index),
        /// A valid envelope written outside any batch.
        Foreign(u32),
    }

    #[derive(Debug, Clone)]
    struct History {
        descriptor_versions: Vec<u32>,
        understood: Vec<Option<u32>>,
        batches: Vec<BatchSpec>,
        /// A last batch cut at a step: 0 = its receipt append cut at the
        /// index; n ≥ 1 = receipt appended and the first n-1 files replaced.
        torn: Option<(BatchSpec, usize, prop::sample::Index)>,
        /// The writer marks a batch preparing in the manifest itself.
        preparing_in_manifest: bool,
        disturb: Option<(usize, Disturb)>,
        current_known: bool,
    }

    fn any_batch() -> impl Strategy<Value = BatchSpec> {
        (
            prop::sample::subsequence((0..STORES.len()).collect::<Vec<_>>(), 1..=STORES.len()),
            prop::collection::vec((1u32..=2, any::<u64>()), STORES.len()),
            prop::bool::weighted(0.8),
        )
            .prop_map(|(stores, contents, current_run)| BatchSpec {
                writes: stores
                    .into_iter()
                    .map(|i| (i, contents[i].0, contents[i].1))
                    .collect(),
                current_run,
            })
    }

    fn any_disturb() -> impl Strategy<Value = Disturb> {
        prop_oneof![
            Just(Disturb::Delete),
            Just(Disturb::Garbage),
            any::<prop::sample::Index>().prop_map(Disturb::FlipByte),
            (1u32..=3).prop_map(Disturb::Foreign),
        ]
    }

    fn any_history() -> impl Strategy<Value = History> {
        (
            prop::collection::vec(1u32..=3, STORES.len()),
            prop::collection::vec(prop::option::of(1u32..=3), STORES.len()),
            prop::collection::vec(any_batch(), 0..6),
            prop::option::weighted(0.5, (any_batch(), 0usize..=5, any::<prop::sample::Index>())),
            any::<bool>(),
            prop::option::weighted(0.3, (0..STORES.len(), any_disturb())),
            prop::bool::weighted(0.9),
        )
            .prop_map(
                |(
                    descriptor_versions,
                    understood,
                    batches,
                    torn,
                    preparing_in_manifest,
                    disturb,
                    current_known,
                )| History {
                    descriptor_versions,
                    understood,
                    batches,
                    torn,
                    preparing_in_manifest,
                    disturb,
                    current_known,
                },
            )
    }

    /// What the model wrote, as the planner reads it, and what it knows.
    struct World {
        fx: Fx,
        /// The last committed write of each store: (schema, run id).
        committed: BTreeMap<String, (u32, String)>,
        /// Stores whose file the torn batch replaced.
        torn_written: BTreeMap<String, u32>,
        /// Whether a torn batch happened at all.
        torn: bool,
        disturbed: Option<String>,
        /// The bytes on disk and the sha256 the manifest names, by store.
        on_disk: BTreeMap<String, Vec<u8>>,
        named: BTreeMap<String, String>,
    }

    struct Writer {
        manifest: Option<Manifest>,
        log: Vec<u8>,
        files: BTreeMap<String, Vec<u8>>,
    }

    impl Writer {
        fn record(&self, spec: &BatchSpec) -> (ReceiptRecord, Vec<(String, Vec<u8>, u32)>) {
            let seq = self.manifest.as_ref().map_or(0, |m| m.high_watermark) + 1;
            let run = if spec.current_run { CURRENT } else { OLD };
            let writes: Vec<(String, Vec<u8>, u32)> = spec
                .writes
                .iter()
                .map(|&(i, schema, payload)| {
                    let bytes = serde_json::to_vec(&Envelope {
                        schema_version: schema,
                        updated_at: seq as i64,
                        run_id: run.to_string(),
                        data: serde_json::json!({"seq": seq, "payload": payload}),
                    })
                    .unwrap();
                    (STORES[i].0.to_string(), bytes, schema)
                })
                .collect();
            let record = ReceiptRecord {
                batch_id: format!("batch-{seq}"),
                seq,
                run_id: run.to_string(),
                reason: Some("checkpoint".to_string()),
                created_at: seq as i64,
                receipts: writes
                    .iter()
                    .map(|(store, bytes, schema)| Receipt {
                        receipt_id: format!("receipt-{seq}-{store}"),
                        store: store.clone(),
                        schema_version: *schema,
                        sha256: sha256_hex(bytes),
                        size: bytes.len() as u64,
                    })
                    .collect(),
            };
            (record, writes)
        }

        fn commit(&mut self, spec: &BatchSpec) {
            let (record, writes) = self.record(spec);
            self.log.extend(encode_receipt(&record));
            for (store, bytes, _) in &writes {
                self.files.insert(store.clone(), bytes.clone());
            }
            let m = self.manifest.get_or_insert_with(|| Manifest::empty("rt-1"));
            for r in &record.receipts {
                m.entries.retain(|e| e.store != r.store);
                m.entries.push(ManifestEntry {
                    store: r.store.clone(),
                    schema_version: r.schema_version,
                    state: "committed".to_string(),
                    last_receipt_id: r.receipt_id.clone(),
                    sha256: r.sha256.clone(),
                });
            }
            m.high_watermark = record.seq;
            m.active_run_id = Some(record.run_id.clone());
            m.last_committed_batch_id = Some(record.batch_id.clone());
            m.last_preparing_batch_id = None;
        }
    }

    fn build(h: &History) -> World {
        let mut w = Writer {
            manifest: None,
            log: Vec::new(),
            files: BTreeMap::new(),
        };
        let mut committed = BTreeMap::new();
        for b in &h.batches {
            w.commit(b);
            for &(i, schema, _) in &b.writes {
                let run = if b.current_run { CURRENT } else { OLD };
                committed.insert(STORES[i].0.to_string(), (schema, run.to_string()));
            }
        }
        let mut torn_written = BTreeMap::new();
        if let Some((spec, step, cut)) = &h.torn {
            let (record, writes) = w.record(spec);
            if h.preparing_in_manifest {
                let m = w.manifest.get_or_insert_with(|| Manifest::empty("rt-1"));
                m.last_preparing_batch_id = Some(record.batch_id.clone());
            }
            let frame = encode_receipt(&record);
            if *step == 0 {
                w.log.extend_from_slice(&frame[..cut.index(frame.len())]);
            } else {
                w.log.extend(frame);
                for (store, bytes, schema) in writes.into_iter().take(step - 1) {
                    w.files.insert(store.clone(), bytes);
                    torn_written.insert(store, schema);
                }
            }
        }
        let mut disturbed = None;
        if let Some((i, how)) = &h.disturb {
            let store = STORES[*i].0.to_string();
            match how {
                Disturb::Delete => {
                    w.files.remove(&store);
                }
                Disturb::Garbage => {
                    w.files.insert(store.clone(), b"\0garbage{".to_vec());
                }
                Disturb::FlipByte(at) => {
                    let bytes = w.files.entry(store.clone()).or_default();
                    if bytes.is_empty() {
                        bytes.push(b'x');
                    } else {
                        let at = at.index(bytes.len());
                        bytes[at] ^= 0x20;
                    }
                }
                Disturb::Foreign(schema) => {
                    w.files.insert(store.clone(), env(*schema, CURRENT));
                }
            }
            disturbed = Some(store);
        }

        let descriptors: Vec<StoreDescriptor> = STORES
            .iter()
            .zip(&h.descriptor_versions)
            .map(|(&(name, readiness, recovery), &v)| StoreDescriptor {
                schema_version: v,
                ..desc(name, readiness, recovery)
            })
            .collect();
        let understood = STORES
            .iter()
            .zip(&h.understood)
            .filter_map(|((name, _, _), u)| u.map(|u| (name.to_string(), u)))
            .collect();
        // Read back through the real decoders, as the shell does.
        let manifest = match &w.manifest {
            None => ManifestFact::Absent,
            Some(m) => match decode_manifest(&serde_json::to_vec(m).unwrap()) {
                Ok(m) => ManifestFact::Present(m),
                Err(e) => ManifestFact::Corrupt(e),
            },
        };
        let named = w
            .manifest
            .iter()
            .flat_map(|m| &m.entries)
            .map(|e| (e.store.clone(), e.sha256.clone()))
            .collect();
        let fx = Fx {
            descriptors,
            understood,
            manifest,
            receipts: decode_receipts(&w.log),
            files: w
                .files
                .iter()
                .map(|(s, b)| (s.clone(), StoreFileFact::from_bytes(b)))
                .collect(),
            current: h.current_known.then(|| CURRENT.to_string()),
        };
        World {
            fx,
            committed,
            torn_written,
            torn: h.torn.is_some(),
            disturbed,
            on_disk: w.files,
            named,
        }
    }

    fn understood_of(fx: &Fx, d: &StoreDescriptor) -> u32 {
        fx.understood
            .get(&d.name)
            .copied()
            .unwrap_or(d.schema_version)
    }

    /// The action a store that neither the torn batch nor a disturbance
    /// touched must get.
    fn clean_expectation(w: &World, d: &StoreDescriptor) -> (ActionKind, Option<Reason>) {
        match w.committed.get(&d.name) {
            None => match d.readiness {
                Blocking => (K::BlockReadiness, Some(Reason::Missing)),
                Degrading => (K::Rebuild, Some(Reason::Missing)),
            },
            Some((schema, _)) if *schema > understood_of(&w.fx, d) => {
                (K::Quarantine, Some(Reason::FutureSchema))
            }
            Some((_, run))
                if d.readiness == Blocking && w.fx.current.as_deref().is_some_and(|c| c != run) =>
            {
                (K::BlockReadiness, Some(Reason::StaleRunId))
            }
            Some(_) => (K::None, None),
        }
    }

    proptest! {
        /// P1: a store whose file is not what the manifest names is never
        /// left alone.
        #[test]
        fn p1_a_file_unlike_the_manifest_always_gets_an_action(h in any_history()) {
            let w = build(&h);
            let p = w.fx.plan();
            for a in &p.actions {
                let on_disk = w.on_disk.get(&a.store).map(|b| sha256_hex(b));
                let named = w.named.get(&a.store).cloned();
                if on_disk != named {
                    prop_assert_ne!(a.kind, K::None, "{}: {:?} vs {:?}", a.store, on_disk, named);
                }
            }
        }

        /// P2: with no torn batch, every store a committed batch wrote is
        /// left alone (when its run is current and its schema understood),
        /// and every other store gets exactly the action the rules give.
        #[test]
        fn p2_committed_stores_are_left_alone(h in any_history()) {
            let w = build(&h);
            let p = w.fx.plan();
            for (d, a) in w.fx.descriptors.iter().zip(&p.actions) {
                if w.disturbed.as_deref() == Some(d.name.as_str())
                    || w.torn_written.contains_key(&d.name)
                {
                    continue;
                }
                let expected = clean_expectation(&w, d);
                prop_assert_eq!((a.kind, a.reason), expected, "{}: {}", d.name, a.detail);
                if !w.torn && w.disturbed.is_none() {
                    if let Some((schema, run)) = w.committed.get(&d.name) {
                        if *schema <= understood_of(&w.fx, d)
                            && (d.readiness == Degrading || w.fx.current.as_deref() == Some(run))
                        {
                            prop_assert_eq!(a.kind, K::None, "{}: {}", d.name, a.detail);
                        }
                    }
                }
            }
        }

        /// A file the torn batch replaced is reported torn (or from the
        /// future), never as a hash mismatch.
        #[test]
        fn torn_batch_files_are_reported_torn(h in any_history()) {
            let w = build(&h);
            let p = w.fx.plan();
            for (d, a) in w.fx.descriptors.iter().zip(&p.actions) {
                let Some(schema) = w.torn_written.get(&d.name) else { continue };
                if w.disturbed.as_deref() == Some(d.name.as_str()) {
                    continue;
                }
                if *schema > understood_of(&w.fx, d) {
                    prop_assert_eq!((a.kind, a.reason), (K::Quarantine, Some(Reason::FutureSchema)));
                } else {
                    prop_assert_eq!(
                        (a.kind, a.reason),
                        (policy_action(d), Some(Reason::TornBatch)),
                        "{}: {}", d.name, a.detail
                    );
                }
            }
        }

        /// P3: a store some committed batch wrote is reported missing only
        /// when its file is gone.
        #[test]
        fn p3_committed_stores_are_missing_only_without_a_file(h in any_history()) {
            let w = build(&h);
            let p = w.fx.plan();
            for a in &p.actions {
                if w.committed.contains_key(&a.store) {
                    prop_assert_eq!(
                        a.reason == Some(Reason::Missing),
                        !w.on_disk.contains_key(&a.store),
                        "{}: {}", a.store, a.detail
                    );
                }
            }
        }

        /// P4: a ready runtime has no torn, mismatched or corrupt blocking
        /// store; and it is ready exactly when the plan does not block.
        #[test]
        fn p4_ready_means_no_broken_blocking_store(h in any_history(), configured in any::<bool>()) {
            let w = build(&h);
            let p = w.fx.plan();
            let validator = if configured {
                ValidatorOutcome::Passed { lines: vec!["ok".to_string()] }
            } else {
                ValidatorOutcome::NotConfigured
            };
            let r = readiness(&p, &ContainerReadiness::Healthy, &validator);
            prop_assert_eq!(r.ok, p.impact != Impact::Blocked);
            if r.ok {
                for (d, a) in w.fx.descriptors.iter().zip(&p.actions) {
                    if d.readiness == Blocking {
                        prop_assert!(
                            !matches!(
                                a.reason,
                                Some(Reason::TornBatch | Reason::HashMismatch | Reason::Corrupt)
                            ),
                            "{}: {}", d.name, a.detail
                        );
                    }
                }
            }
        }

        /// P5: the plan is deterministic, one action per descriptor in
        /// order, `reason` set exactly when there is an action, and the
        /// impact the worst of them.
        #[test]
        fn p5_one_deterministic_action_per_descriptor(h in any_history()) {
            let w = build(&h);
            let p = w.fx.plan();
            prop_assert_eq!(&p, &w.fx.clone().plan());
            prop_assert_eq!(p.actions.len(), w.fx.descriptors.len());
            for (d, a) in w.fx.descriptors.iter().zip(&p.actions) {
                prop_assert_eq!(&a.store, &d.name);
                prop_assert_eq!(a.reason.is_none(), a.kind == K::None);
                prop_assert_eq!(a.detail.is_empty(), a.kind == K::None);
            }
            prop_assert!(p.manifest_healthy);
            let worst = w.fx.descriptors.iter().zip(&p.actions).map(|(d, a)| match a.reason {
                None => Impact::None,
                Some(Reason::FutureSchema | Reason::StaleRunId) => Impact::Blocked,
                Some(_) => readiness_impact(d),
            }).max().unwrap_or(Impact::None);
            prop_assert_eq!(p.impact, worst);
            let names: BTreeSet<&str> = p.actions.iter().map(|a| a.store.as_str()).collect();
            prop_assert_eq!(names.len(), STORES.len());
        }
    }
}
