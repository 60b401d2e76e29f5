//! Staged files and rolling a committed batch forward.
//!
//! A batch writes each store's new bytes to a staged file in `.berth/`
//! (`stage.<batch id>.<store>`), commits by renaming the manifest, and only
//! then moves the staged files over the stores. Between the commit and the
//! last move, a store's committed bytes are in its staged file: this module
//! says where a store's committed bytes are ([`locate`]) and what a writer
//! holding the lock does with every staged file it finds ([`roll_forward`]).
//! A staged file is only ever placed when its hash is the manifest's, so a
//! batch that never committed can never be rolled forward.

use std::collections::{BTreeMap, BTreeSet};

use super::format::Manifest;

/// The prefix of a staged file's name in `.berth/`.
pub const STAGE_PREFIX: &str = "stage.";

/// `stage.<batch id>.<store>`. A batch id never holds a `.` (berth's are
/// UUIDs), so the name parses back whatever the store's name.
pub fn staged_file_name(batch_id: &str, store: &str) -> String {
    format!("{STAGE_PREFIX}{batch_id}.{store}")
}

/// The batch id and store of a staged file's name; `None` for any other
/// file of `.berth/`.
pub fn parse_staged_file_name(name: &str) -> Option<(&str, &str)> {
    let rest = name.strip_prefix(STAGE_PREFIX)?;
    let (batch, store) = rest.split_once('.')?;
    (!batch.is_empty() && !store.is_empty()).then_some((batch, store))
}

/// A temporary manifest (`.manifest.json.tmp-<batch id>`) in `.berth/`:
/// a writer holding the lock finds one only where a batch died before its
/// commit, and removes it.
pub fn is_manifest_temp(name: &str) -> bool {
    name.strip_prefix('.')
        .and_then(|n| n.strip_prefix(super::format::MANIFEST_FILE))
        .is_some_and(|n| n.starts_with(".tmp-"))
}

/// A staged file found in `.berth/`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StagedFact {
    pub file_name: String,
    pub store: String,
    /// The hex SHA-256 of its bytes; `None` when it could not be read.
    pub sha256: Option<String>,
}

/// Where a store's committed bytes are.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Location {
    /// The store's own file holds them (or the manifest names no bytes for
    /// the store: there is nothing to find).
    InPlace,
    /// Committed but not yet moved into place: this staged file holds them.
    Staged(String),
    /// Neither the file nor a staged file holds what the manifest names.
    Nowhere,
}

/// Where the bytes the manifest commits for `store` are, given the hash of
/// its file (`None`: absent) and the staged files found.
pub fn locate(
    manifest: &Manifest,
    store: &str,
    file_sha256: Option<&str>,
    staged: &[StagedFact],
) -> Location {
    let Some(entry) = manifest.entry(store) else {
        return Location::InPlace;
    };
    if file_sha256 == Some(entry.sha256.as_str()) {
        return Location::InPlace;
    }
    staged
        .iter()
        .find(|s| s.store == store && s.sha256.as_deref() == Some(entry.sha256.as_str()))
        .map_or(Location::Nowhere, |s| Location::Staged(s.file_name.clone()))
}

/// One step of rolling forward, in the order given.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RollStep {
    /// Move the staged file over the store's file (then sync its directory).
    Place { file_name: String, store: String },
    /// Remove a staged file that holds nothing committed: a batch that never
    /// reached its commit, or a copy of bytes already in place.
    Discard { file_name: String },
}

/// What a writer holding the lock does with the staged files it found,
/// given the hash of each declared store's file (`None`: absent). A staged
/// file of a store the template no longer declares is left alone.
pub fn roll_forward(
    manifest: &Manifest,
    staged: &[StagedFact],
    files: &BTreeMap<String, Option<String>>,
) -> Vec<RollStep> {
    let mut placed = BTreeSet::new();
    let mut places = Vec::new();
    let mut discards = Vec::new();
    for s in staged {
        let Some(file_sha) = files.get(&s.store) else {
            continue;
        };
        let location = locate(manifest, &s.store, file_sha.as_deref(), staged);
        if location == Location::Staged(s.file_name.clone()) && placed.insert(s.store.clone()) {
            places.push(RollStep::Place {
                file_name: s.file_name.clone(),
                store: s.store.clone(),
            });
        } else {
            discards.push(RollStep::Discard {
                file_name: s.file_name.clone(),
            });
        }
    }
    // Every placement before any removal: a crash in between leaves only
    // copies of what is already in place.
    places.extend(discards);
    places
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::format::ManifestEntry;
    use proptest::prelude::*;

    fn manifest(entries: &[(&str, &str)]) -> Manifest {
        let mut m = Manifest::empty("ws-1");
        m.entries = entries
            .iter()
            .map(|(store, sha)| ManifestEntry {
                store: store.to_string(),
                schema_version: 1,
                state: "committed".into(),
                last_receipt_id: "r".into(),
                sha256: sha.to_string(),
            })
            .collect();
        m
    }

    fn staged(batch: &str, store: &str, sha: Option<&str>) -> StagedFact {
        StagedFact {
            file_name: staged_file_name(batch, store),
            store: store.into(),
            sha256: sha.map(str::to_string),
        }
    }

    fn files(entries: &[(&str, Option<&str>)]) -> BTreeMap<String, Option<String>> {
        entries
            .iter()
            .map(|(s, sha)| (s.to_string(), sha.map(str::to_string)))
            .collect()
    }

    #[test]
    fn names_parse_back_whatever_the_store_name() {
        for store in ["launch_state", "a.b.c", "x-1", "0"] {
            let name = staged_file_name("0193-ab", store);
            assert_eq!(parse_staged_file_name(&name), Some(("0193-ab", store)));
        }
        for other in [
            "manifest.json",
            "receipts.log",
            "stage.",
            "stage.b.",
            "stage..s",
            "lock",
        ] {
            assert_eq!(parse_staged_file_name(other), None, "{other}");
        }
    }

    #[test]
    fn a_temporary_manifest_is_told_from_the_manifest() {
        assert!(is_manifest_temp(".manifest.json.tmp-0193"));
        assert!(!is_manifest_temp("manifest.json"));
        assert!(!is_manifest_temp(".manifest.json"));
        assert!(!is_manifest_temp("stage.b.manifest.json"));
    }

    #[test]
    fn a_committed_batch_not_yet_in_place_is_found_and_placed() {
        let m = manifest(&[("a", "new-a"), ("b", "old-b")]);
        let s = vec![staged("b2", "a", Some("new-a"))];
        let f = files(&[("a", Some("old-a")), ("b", Some("old-b"))]);
        assert_eq!(
            locate(&m, "a", Some("old-a"), &s),
            Location::Staged(staged_file_name("b2", "a"))
        );
        assert_eq!(locate(&m, "b", Some("old-b"), &s), Location::InPlace);
        assert_eq!(
            roll_forward(&m, &s, &f),
            vec![RollStep::Place {
                file_name: staged_file_name("b2", "a"),
                store: "a".into()
            }]
        );
    }

    #[test]
    fn an_uncommitted_batch_is_discarded_and_never_placed() {
        // The manifest still names the old bytes: the batch never committed.
        let m = manifest(&[("a", "old-a")]);
        let s = vec![staged("b2", "a", Some("new-a")), staged("b2", "a2", None)];
        let f = files(&[("a", Some("old-a")), ("a2", None)]);
        assert_eq!(
            roll_forward(&m, &s, &f),
            vec![
                RollStep::Discard {
                    file_name: staged_file_name("b2", "a")
                },
                RollStep::Discard {
                    file_name: staged_file_name("b2", "a2")
                }
            ]
        );
    }

    #[test]
    fn a_copy_of_bytes_in_place_is_discarded_and_an_undeclared_store_kept() {
        let m = manifest(&[("a", "new-a"), ("gone", "g")]);
        let s = vec![
            staged("b2", "a", Some("new-a")),
            staged("b2", "gone", Some("g")),
        ];
        let f = files(&[("a", Some("new-a"))]);
        assert_eq!(
            roll_forward(&m, &s, &f),
            vec![RollStep::Discard {
                file_name: staged_file_name("b2", "a")
            }]
        );
    }

    #[test]
    fn bytes_found_nowhere_are_reported_as_such() {
        let m = manifest(&[("a", "new-a")]);
        assert_eq!(locate(&m, "a", Some("junk"), &[]), Location::Nowhere);
        assert_eq!(locate(&m, "a", None, &[]), Location::Nowhere);
        assert_eq!(locate(&m, "unnamed", None, &[]), Location::InPlace);
    }

    fn sha() -> impl Strategy<Value = Option<String>> {
        prop::option::of(prop::sample::select(vec!["h0", "h1", "h2", "h3"]).prop_map(String::from))
    }

    proptest! {
        /// Whatever is found: only a staged file holding the manifest's bytes
        /// is placed, at most one per store, placements come before removals,
        /// and after carrying the steps out every store holds its committed
        /// bytes where they existed anywhere, and a second pass does nothing.
        #[test]
        fn rolling_forward_places_only_committed_bytes_and_converges(
            entries in prop::collection::btree_map(prop::sample::select(vec!["a", "b", "c"]), sha(), 0..3),
            on_disk in prop::collection::btree_map(prop::sample::select(vec!["a", "b", "c"]), sha(), 0..3),
            found in prop::collection::vec((prop::sample::select(vec!["x", "y"]), prop::sample::select(vec!["a", "b", "c", "d"]), sha()), 0..6),
        ) {
            let m = manifest(&entries.iter().filter_map(|(s, h)| h.as_deref().map(|h| (*s, h))).collect::<Vec<_>>());
            let mut f: BTreeMap<String, Option<String>> = ["a", "b", "c"].iter().map(|s| (s.to_string(), on_disk.get(s).cloned().flatten())).collect();
            let mut st: Vec<StagedFact> = Vec::new();
            for (batch, store, h) in found {
                let name = staged_file_name(batch, store);
                if !st.iter().any(|s| s.file_name == name) {
                    st.push(StagedFact { file_name: name, store: store.to_string(), sha256: h });
                }
            }
            let steps = roll_forward(&m, &st, &f);
            let mut seen_discard = false;
            let mut placed_stores = BTreeSet::new();
            for step in &steps {
                match step {
                    RollStep::Place { file_name, store } => {
                        prop_assert!(!seen_discard, "a removal before a placement");
                        prop_assert!(placed_stores.insert(store.clone()));
                        let s = st.iter().find(|s| &s.file_name == file_name).unwrap();
                        prop_assert_eq!(s.sha256.as_deref(), m.entry(store).map(|e| e.sha256.as_str()));
                    }
                    RollStep::Discard { .. } => seen_discard = true,
                }
            }
            // Carry the steps out.
            let before: Vec<StagedFact> = st.clone();
            for step in &steps {
                match step {
                    RollStep::Place { file_name, store } => {
                        let s = st.iter().position(|s| &s.file_name == file_name).unwrap();
                        let s = st.remove(s);
                        f.insert(store.clone(), s.sha256);
                    }
                    RollStep::Discard { file_name } => st.retain(|s| &s.file_name != file_name),
                }
            }
            for e in &m.entries {
                if !f.contains_key(&e.store) { continue; }
                let was_somewhere = on_disk.get(e.store.as_str()).cloned().flatten().as_deref() == Some(e.sha256.as_str())
                    || before.iter().any(|s| s.store == e.store && s.sha256.as_deref() == Some(e.sha256.as_str()));
                if was_somewhere {
                    prop_assert_eq!(f[&e.store].as_deref(), Some(e.sha256.as_str()));
                }
            }
            prop_assert!(roll_forward(&m, &st, &f).is_empty(), "a second pass changed something");
        }
    }
}
