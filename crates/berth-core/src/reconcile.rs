//! The reconcile planner: compares berth's records with the containers on
//! the host and decides what to do. Pure: the reconciler service gathers
//! the facts, calls [`plan`], and carries the actions out.
//!
//! Level-triggered: the plan depends only on the current facts, so running
//! it again after its actions were applied plans nothing new.

use std::collections::{BTreeMap, HashMap, HashSet};

use crate::container::{RuntimeLabels, LABEL_OWNER, LABEL_RUNTIME_ID, LABEL_TEMPLATE};
use crate::id::{validate_runtime_id, validate_template_name};
use crate::runtime::RuntimeRecord;
use crate::status::RuntimeStatus;
use crate::template::{DisappearPolicy, RestartPolicy};

/// A container as the host reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObservedContainer {
    pub id: String,
    pub labels: BTreeMap<String, String>,
    pub running: bool,
    pub exit_code: Option<i64>,
    pub created_at_ms: Option<i64>,
}

/// What a template says about disappearing and exited containers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TemplatePolicy {
    pub restart: RestartPolicy,
    pub on_disappear: DisappearPolicy,
}

impl Default for TemplatePolicy {
    fn default() -> Self {
        TemplatePolicy {
            restart: RestartPolicy::Never,
            on_disappear: DisappearPolicy::Dispose,
        }
    }
}

/// Automatic restarts of one runtime since it last ran healthy.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RestartState {
    pub attempts: u32,
    pub last_attempt_ms: i64,
    pub limit_reported: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RestartBackoff {
    pub base_ms: i64,
    pub max_ms: i64,
    /// Automatic restarts allowed before berth gives up and reports.
    pub limit: u32,
    /// A runtime running longer than this since its last automatic restart
    /// counts as healthy again: its restart budget is reset.
    pub reset_after_ms: i64,
}

impl Default for RestartBackoff {
    fn default() -> Self {
        RestartBackoff {
            base_ms: 1_000,
            max_ms: 60_000,
            limit: 5,
            reset_after_ms: 60_000,
        }
    }
}

impl RestartBackoff {
    /// The wait before restart number `attempt + 1`: base · 2^attempt, capped.
    pub fn delay_ms(&self, attempt: u32) -> i64 {
        let factor = 1_i64.checked_shl(attempt.min(30)).unwrap_or(i64::MAX);
        self.base_ms.saturating_mul(factor).min(self.max_ms)
    }
}

/// Whether a runtime's restart budget is reset (its [`RestartState`]
/// dropped) before a pass: its record is gone (`status` is `None`) or
/// removed, or it is running and has been for longer than `reset_after_ms`
/// since berth last restarted it. A runtime that is down keeps its count,
/// so a crash loop reaches the limit.
pub fn resets_restart_budget(
    state: &RestartState,
    status: Option<RuntimeStatus>,
    backoff: &RestartBackoff,
    now_ms: i64,
) -> bool {
    match status {
        None | Some(RuntimeStatus::Removed) => true,
        Some(RuntimeStatus::Running) => now_ms - state.last_attempt_ms > backoff.reset_after_ms,
        Some(_) => false,
    }
}

pub struct PlanInput<'a> {
    pub owner: &'a str,
    pub records: &'a [RuntimeRecord],
    pub containers: &'a [ObservedContainer],
    /// Runtime ids with an operation in flight: never touched.
    pub in_flight: &'a HashSet<String>,
    pub policies: &'a HashMap<String, TemplatePolicy>,
    pub restarts: &'a HashMap<String, RestartState>,
    pub backoff: RestartBackoff,
    pub now_ms: i64,
    /// Containers younger than this may belong to a create that is still
    /// returning; they are left alone.
    pub grace_ms: i64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// The record's container is gone: mark it `removed`.
    Dispose {
        runtime_id: String,
        container_id: String,
    },
    /// The record's container is gone and the template says recreate.
    Recreate {
        runtime_id: String,
        container_id: String,
    },
    /// A running container of ours with no record: take it over.
    Adopt {
        runtime_id: String,
        template: String,
        container_id: String,
        image_ref: Option<String>,
        generation: Option<i64>,
    },
    /// A container of ours that must not be adopted (its id was removed,
    /// or its labels are unusable): reported, never touched.
    Report {
        runtime_id: Option<String>,
        container_id: String,
        reason: ReportReason,
    },
    /// A `running` record whose container has exited.
    MarkExited {
        runtime_id: String,
        container_id: String,
        exit_code: Option<i64>,
    },
    /// The restart policy asks for another start.
    Restart { runtime_id: String, attempt: u32 },
    /// The restart limit was reached; berth stops trying and says so.
    RestartLimitReached { runtime_id: String, attempts: u32 },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReportReason {
    RemovedRuntime,
    InvalidLabels,
}

impl Action {
    pub fn runtime_id(&self) -> Option<&str> {
        match self {
            Action::Dispose { runtime_id, .. }
            | Action::Recreate { runtime_id, .. }
            | Action::Adopt { runtime_id, .. }
            | Action::MarkExited { runtime_id, .. }
            | Action::Restart { runtime_id, .. }
            | Action::RestartLimitReached { runtime_id, .. } => Some(runtime_id),
            Action::Report { runtime_id, .. } => runtime_id.as_deref(),
        }
    }
}

/// The two labels the plan needs, borrowed from a container.
struct Labels<'a> {
    runtime_id: &'a str,
    template: &'a str,
}

impl<'a> Labels<'a> {
    fn of(c: &'a ObservedContainer) -> Option<Self> {
        Some(Labels {
            runtime_id: c.labels.get(LABEL_RUNTIME_ID)?,
            template: c.labels.get(LABEL_TEMPLATE)?,
        })
    }
}

fn wants_restart(policy: RestartPolicy, exit_code: Option<i64>) -> bool {
    match policy {
        RestartPolicy::Never => false,
        RestartPolicy::Always => true,
        // An unknown exit code is treated as a failure.
        RestartPolicy::OnFailure => exit_code != Some(0),
    }
}

/// Decides the actions for one reconcile pass, ordered by runtime id.
pub fn plan(input: &PlanInput<'_>) -> Vec<Action> {
    let mut actions = Vec::new();
    // Our containers only; another owner's are invisible to the plan.
    // Labels are borrowed, not parsed into owned values: this loop runs
    // once per container on every tick.
    let ours: Vec<(&ObservedContainer, Option<Labels<'_>>)> = input
        .containers
        .iter()
        .filter(|c| c.labels.get(LABEL_OWNER).map(String::as_str) == Some(input.owner))
        .map(|c| (c, Labels::of(c)))
        .collect();
    let by_container_id: HashMap<&str, &ObservedContainer> =
        ours.iter().map(|(c, _)| (c.id.as_str(), *c)).collect();
    // Per labelled runtime id: the smallest id among its running
    // containers, so that only one of several claimants is adopted.
    let mut by_runtime: HashMap<&str, Option<&str>> = HashMap::with_capacity(ours.len());
    for (c, labels) in &ours {
        if let Some(l) = labels {
            let first = by_runtime.entry(l.runtime_id).or_default();
            if c.running && first.is_none_or(|f| c.id.as_str() < f) {
                *first = Some(c.id.as_str());
            }
        }
    }
    let records: HashMap<&str, &RuntimeRecord> =
        input.records.iter().map(|r| (r.id.as_str(), r)).collect();

    for rec in input.records {
        if rec.status == RuntimeStatus::Removed
            || rec.status.is_transitional()
            || input.in_flight.contains(&rec.id)
        {
            continue;
        }
        let Some(cid) = rec.container_id.as_deref() else {
            continue;
        };
        let policy = input
            .policies
            .get(&rec.template)
            .copied()
            .unwrap_or_default();
        match by_container_id.get(cid) {
            None => {
                // Another container already carries this runtime's label:
                // a recreate is between steps; leave it to its operation.
                if by_runtime.contains_key(rec.id.as_str()) {
                    continue;
                }
                let action = if policy.on_disappear == DisappearPolicy::Recreate
                    && rec.status == RuntimeStatus::Running
                {
                    Action::Recreate {
                        runtime_id: rec.id.clone(),
                        container_id: cid.to_string(),
                    }
                } else {
                    Action::Dispose {
                        runtime_id: rec.id.clone(),
                        container_id: cid.to_string(),
                    }
                };
                actions.push(action);
            }
            Some(c) if c.running => {}
            Some(c) => {
                let exited_now = rec.status == RuntimeStatus::Running;
                if exited_now {
                    actions.push(Action::MarkExited {
                        runtime_id: rec.id.clone(),
                        container_id: c.id.clone(),
                        exit_code: c.exit_code,
                    });
                }
                if exited_now || rec.status == RuntimeStatus::Exited {
                    let state = input.restarts.get(&rec.id).copied().unwrap_or_default();
                    if wants_restart(policy.restart, c.exit_code) {
                        if state.attempts >= input.backoff.limit {
                            if !state.limit_reported {
                                actions.push(Action::RestartLimitReached {
                                    runtime_id: rec.id.clone(),
                                    attempts: state.attempts,
                                });
                            }
                        } else if state.attempts == 0
                            || input.now_ms - state.last_attempt_ms
                                >= input.backoff.delay_ms(state.attempts - 1)
                        {
                            actions.push(Action::Restart {
                                runtime_id: rec.id.clone(),
                                attempt: state.attempts + 1,
                            });
                        }
                    }
                }
            }
        }
    }

    for (c, labels) in &ours {
        let young = c
            .created_at_ms
            .is_some_and(|created| input.now_ms - created < input.grace_ms);
        let Some(l) = labels.as_ref().filter(|l| {
            validate_runtime_id(l.runtime_id).is_ok() && validate_template_name(l.template).is_ok()
        }) else {
            if !young {
                actions.push(Action::Report {
                    runtime_id: labels.as_ref().map(|l| l.runtime_id.to_string()),
                    container_id: c.id.clone(),
                    reason: ReportReason::InvalidLabels,
                });
            }
            continue;
        };
        if young || input.in_flight.contains(l.runtime_id) {
            continue;
        }
        match records.get(l.runtime_id) {
            Some(rec) if rec.status == RuntimeStatus::Removed => actions.push(Action::Report {
                runtime_id: Some(l.runtime_id.to_string()),
                container_id: c.id.clone(),
                reason: ReportReason::RemovedRuntime,
            }),
            Some(_) => {}
            None if c.running => {
                // Only one adoption per runtime id, even if two containers claim it.
                let first = by_runtime.get(l.runtime_id).copied().flatten();
                if first == Some(c.id.as_str()) {
                    let labels = RuntimeLabels::from_labels(&c.labels);
                    actions.push(Action::Adopt {
                        runtime_id: l.runtime_id.to_string(),
                        template: l.template.to_string(),
                        container_id: c.id.clone(),
                        image_ref: labels.as_ref().and_then(|x| x.image_ref.clone()),
                        generation: labels.and_then(|x| x.generation),
                    });
                }
            }
            None => {}
        }
    }
    actions.sort_by(|a, b| a.runtime_id().cmp(&b.runtime_id()));
    actions
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const OWNER: &str = "berth";
    const NOW: i64 = 1_000_000;

    fn container(
        id: &str,
        owner: &str,
        runtime: &str,
        running: bool,
        exit: Option<i64>,
    ) -> ObservedContainer {
        ObservedContainer {
            id: id.to_string(),
            labels: BTreeMap::from([
                (LABEL_OWNER.to_string(), owner.to_string()),
                (LABEL_RUNTIME_ID.to_string(), runtime.to_string()),
                (LABEL_TEMPLATE.to_string(), "engine".to_string()),
            ]),
            running,
            exit_code: exit,
            created_at_ms: Some(NOW - 600_000),
        }
    }

    fn record(id: &str, status: RuntimeStatus, container: Option<&str>) -> RuntimeRecord {
        let mut r = RuntimeRecord::new(id, "engine", BTreeMap::new(), 0);
        r.status = status;
        r.container_id = container.map(str::to_string);
        r
    }

    #[derive(Debug)]
    struct Facts {
        records: Vec<RuntimeRecord>,
        containers: Vec<ObservedContainer>,
        in_flight: HashSet<String>,
        policies: HashMap<String, TemplatePolicy>,
        restarts: HashMap<String, RestartState>,
    }

    impl Facts {
        fn new(records: Vec<RuntimeRecord>, containers: Vec<ObservedContainer>) -> Self {
            Facts {
                records,
                containers,
                in_flight: HashSet::new(),
                policies: HashMap::new(),
                restarts: HashMap::new(),
            }
        }

        fn plan(&self) -> Vec<Action> {
            plan(&PlanInput {
                owner: OWNER,
                records: &self.records,
                containers: &self.containers,
                in_flight: &self.in_flight,
                policies: &self.policies,
                restarts: &self.restarts,
                backoff: RestartBackoff::default(),
                now_ms: NOW,
                grace_ms: 30_000,
            })
        }

        /// What the reconciler service does with each action, modelled.
        fn apply(&mut self, actions: &[Action]) {
            for a in actions {
                match a {
                    Action::Dispose { runtime_id, .. } => {
                        let r = self
                            .records
                            .iter_mut()
                            .find(|r| &r.id == runtime_id)
                            .unwrap();
                        r.status = RuntimeStatus::Removed;
                        r.container_id = None;
                    }
                    Action::Recreate { runtime_id, .. } | Action::Restart { runtime_id, .. } => {
                        let new_id = format!("new-{runtime_id}-{}", self.containers.len());
                        self.containers
                            .push(container(&new_id, OWNER, runtime_id, true, None));
                        let r = self
                            .records
                            .iter_mut()
                            .find(|r| &r.id == runtime_id)
                            .unwrap();
                        r.status = RuntimeStatus::Running;
                        r.container_id = Some(new_id);
                    }
                    Action::Adopt {
                        runtime_id,
                        template,
                        container_id,
                        ..
                    } => {
                        let mut r = RuntimeRecord::new(runtime_id, template, BTreeMap::new(), NOW);
                        r.status = RuntimeStatus::Running;
                        r.container_id = Some(container_id.clone());
                        self.records.push(r);
                    }
                    Action::MarkExited { runtime_id, .. } => {
                        let r = self
                            .records
                            .iter_mut()
                            .find(|r| &r.id == runtime_id)
                            .unwrap();
                        r.status = RuntimeStatus::Exited;
                    }
                    Action::RestartLimitReached { runtime_id, .. } => {
                        self.restarts
                            .entry(runtime_id.clone())
                            .or_default()
                            .limit_reported = true;
                    }
                    Action::Report { .. } => {}
                }
            }
        }
    }

    #[test]
    fn disposes_a_record_whose_container_vanished() {
        let f = Facts::new(
            vec![record("a", RuntimeStatus::Running, Some("c1"))],
            vec![],
        );
        assert_eq!(
            f.plan(),
            vec![Action::Dispose {
                runtime_id: "a".into(),
                container_id: "c1".into()
            }]
        );
    }

    #[test]
    fn recreates_when_the_template_says_so() {
        let mut f = Facts::new(
            vec![record("a", RuntimeStatus::Running, Some("c1"))],
            vec![],
        );
        f.policies.insert(
            "engine".into(),
            TemplatePolicy {
                on_disappear: DisappearPolicy::Recreate,
                ..Default::default()
            },
        );
        assert!(matches!(f.plan()[..], [Action::Recreate { .. }]));
    }

    #[test]
    fn adopts_a_running_labelled_container_without_record() {
        let f = Facts::new(vec![], vec![container("c9", OWNER, "orphan", true, None)]);
        assert_eq!(
            f.plan(),
            vec![Action::Adopt {
                runtime_id: "orphan".into(),
                template: "engine".into(),
                container_id: "c9".into(),
                image_ref: None,
                generation: None,
            }]
        );
    }

    #[test]
    fn never_adopts_another_owner_or_a_removed_id_or_a_young_container() {
        let mut young = container("c3", OWNER, "fresh", true, None);
        young.created_at_ms = Some(NOW - 1_000);
        let f = Facts::new(
            vec![record("gone", RuntimeStatus::Removed, None)],
            vec![
                container("c1", "someone-else", "theirs", true, None),
                container("c2", OWNER, "gone", true, None),
                young,
            ],
        );
        assert_eq!(
            f.plan(),
            vec![Action::Report {
                runtime_id: Some("gone".into()),
                container_id: "c2".into(),
                reason: ReportReason::RemovedRuntime
            }]
        );
    }

    #[test]
    fn in_flight_runtimes_are_left_alone() {
        let mut f = Facts::new(
            vec![record("a", RuntimeStatus::Running, Some("c1"))],
            vec![container("c2", OWNER, "b", true, None)],
        );
        f.in_flight.insert("a".into());
        f.in_flight.insert("b".into());
        assert!(f.plan().is_empty());
    }

    #[test]
    fn exited_container_is_marked_and_restarted_per_policy() {
        let recs = vec![
            record("never", RuntimeStatus::Running, Some("c1")),
            record("onfail-ok", RuntimeStatus::Running, Some("c2")),
            record("onfail-bad", RuntimeStatus::Running, Some("c3")),
        ];
        let mut cs = vec![
            container("c1", OWNER, "never", false, Some(1)),
            container("c2", OWNER, "onfail-ok", false, Some(0)),
            container("c3", OWNER, "onfail-bad", false, Some(137)),
        ];
        for c in &mut cs {
            c.labels.insert(LABEL_TEMPLATE.into(), "t".into());
        }
        let mut f = Facts::new(recs, cs);
        for r in &mut f.records {
            r.template = if r.id == "never" {
                "engine".into()
            } else {
                "onfail".into()
            };
        }
        f.policies.insert(
            "onfail".into(),
            TemplatePolicy {
                restart: RestartPolicy::OnFailure,
                ..Default::default()
            },
        );
        let plan = f.plan();
        assert_eq!(
            plan.iter()
                .filter(|a| matches!(a, Action::MarkExited { .. }))
                .count(),
            3
        );
        let restarts: Vec<_> = plan
            .iter()
            .filter_map(|a| match a {
                Action::Restart {
                    runtime_id,
                    attempt,
                } => Some((runtime_id.as_str(), *attempt)),
                _ => None,
            })
            .collect();
        assert_eq!(restarts, [("onfail-bad", 1)]);
    }

    #[test]
    fn restart_budget_reset_table() {
        use RuntimeStatus::*;
        let backoff = RestartBackoff::default();
        let state = RestartState {
            attempts: 5,
            last_attempt_ms: NOW - 60_000,
            limit_reported: true,
        };
        let cases = [
            // Record gone or removed: forgotten.
            (None, NOW, true),
            (Some(Removed), NOW, true),
            // Running: reset only after more than `reset_after_ms`.
            (Some(Running), NOW, false),
            (Some(Running), NOW + 1, true),
            (Some(Running), NOW - 30_000, false),
            // Down or busy: the count stays, so a crash loop hits the limit.
            (Some(Exited), NOW + 1_000_000, false),
            (Some(Failed), NOW + 1_000_000, false),
            (Some(Stopped), NOW + 1_000_000, false),
            (Some(Starting), NOW + 1_000_000, false),
            (Some(Stopping), NOW + 1_000_000, false),
        ];
        for (status, now, want) in cases {
            assert_eq!(
                resets_restart_budget(&state, status, &backoff, now),
                want,
                "{status:?} at {now}"
            );
        }
        let short = RestartBackoff {
            reset_after_ms: 10,
            ..backoff
        };
        assert!(resets_restart_budget(
            &state,
            Some(Running),
            &short,
            state.last_attempt_ms + 11
        ));
    }

    #[test]
    fn restarts_back_off_and_stop_at_the_limit() {
        let mut f = Facts::new(
            vec![record("a", RuntimeStatus::Exited, Some("c1"))],
            vec![container("c1", OWNER, "a", false, Some(1))],
        );
        f.policies.insert(
            "engine".into(),
            TemplatePolicy {
                restart: RestartPolicy::Always,
                ..Default::default()
            },
        );
        let backoff = RestartBackoff::default();
        // Two attempts so far, the last just now: wait.
        f.restarts.insert(
            "a".into(),
            RestartState {
                attempts: 2,
                last_attempt_ms: NOW - 10,
                limit_reported: false,
            },
        );
        assert!(f.plan().is_empty());
        // Long enough ago: try the third.
        f.restarts.get_mut("a").unwrap().last_attempt_ms = NOW - backoff.delay_ms(1);
        assert_eq!(
            f.plan(),
            vec![Action::Restart {
                runtime_id: "a".into(),
                attempt: 3
            }]
        );
        // At the limit: report once, then nothing.
        f.restarts.get_mut("a").unwrap().attempts = backoff.limit;
        let plan = f.plan();
        assert!(matches!(
            plan[..],
            [Action::RestartLimitReached { attempts: 5, .. }]
        ));
        f.apply(&plan);
        assert!(f.plan().is_empty());
    }

    #[test]
    fn backoff_grows_and_caps() {
        let b = RestartBackoff::default();
        assert_eq!(b.delay_ms(0), 1_000);
        assert_eq!(b.delay_ms(1), 2_000);
        assert_eq!(b.delay_ms(3), 8_000);
        assert_eq!(b.delay_ms(40), 60_000);
    }

    #[test]
    fn a_running_record_with_its_container_running_needs_nothing() {
        let f = Facts::new(
            vec![record("a", RuntimeStatus::Running, Some("c1"))],
            vec![container("c1", OWNER, "a", true, None)],
        );
        assert!(f.plan().is_empty());
    }

    fn arb_facts() -> impl Strategy<Value = Facts> {
        let statuses = prop::sample::select(RuntimeStatus::ALL.to_vec());
        let rec = (0u8..12, statuses, proptest::option::of(0u8..16));
        let cont = (
            0u8..16,
            0u8..12,
            any::<bool>(),
            prop::sample::select(vec![OWNER, "other"]),
            proptest::option::of(0i64..3),
        );
        (
            proptest::collection::vec(rec, 0..12),
            proptest::collection::vec(cont, 0..16),
        )
            .prop_map(|(rs, cs)| {
                let mut seen = HashSet::new();
                let records = rs
                    .into_iter()
                    .filter(|(id, _, _)| seen.insert(*id))
                    .map(|(id, st, c)| {
                        record(&format!("r{id}"), st, c.map(|c| format!("c{c}")).as_deref())
                    })
                    .collect();
                let mut seen = HashSet::new();
                let containers = cs
                    .into_iter()
                    .filter(|(cid, ..)| seen.insert(*cid))
                    .map(|(cid, rid, running, owner, exit)| {
                        container(&format!("c{cid}"), owner, &format!("r{rid}"), running, exit)
                    })
                    .collect();
                let mut f = Facts::new(records, containers);
                f.policies.insert(
                    "engine".into(),
                    TemplatePolicy {
                        restart: RestartPolicy::OnFailure,
                        on_disappear: DisappearPolicy::Dispose,
                    },
                );
                f
            })
    }

    proptest! {
        #[test]
        fn never_disposes_a_record_that_has_its_container(f in arb_facts()) {
            for a in f.plan() {
                if let Action::Dispose { container_id, .. } = &a {
                    prop_assert!(!f.containers.iter().any(|c| &c.id == container_id && c.labels[LABEL_OWNER] == OWNER));
                }
            }
        }

        #[test]
        fn never_adopts_or_reports_a_foreign_container(f in arb_facts()) {
            for a in f.plan() {
                let cid = match &a {
                    Action::Adopt { container_id, .. } | Action::Report { container_id, .. } => container_id,
                    _ => continue,
                };
                let c = f.containers.iter().find(|c| &c.id == cid).unwrap();
                prop_assert_eq!(c.labels[LABEL_OWNER].as_str(), OWNER);
            }
        }

        #[test]
        fn applying_the_plan_twice_changes_nothing(mut f in arb_facts()) {
            let first = f.plan();
            f.apply(&first);
            let second = f.plan();
            f.apply(&second);
            let records_after_second = f.records.clone();
            let third = f.plan();
            f.apply(&third);
            // Only reports may repeat; the records are a fixed point.
            prop_assert!(third.iter().all(|a| matches!(a, Action::Report { .. })), "{third:?}");
            prop_assert_eq!(records_after_second, f.records.clone());
        }
    }
}
