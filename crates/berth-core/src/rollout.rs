//! Rollouts and the image watcher's decisions, pure: the rollout and target
//! state machines (as `status.rs` is for runtimes), operator steering, the
//! next step of a running rollout, and what the watcher does with a digest.

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

use crate::error::ParseStateError;
use crate::image::Digest;
use crate::template::{Template, UpdatePolicy};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RolloutState {
    Running,
    Paused,
    /// Stopped on too many failures; an operator may resume it.
    Halted,
    Completed,
    Aborted,
}

const ROLLOUT_STATE_NAMES: &[&str] = &["running", "paused", "halted", "completed", "aborted"];

impl RolloutState {
    pub const ALL: [RolloutState; 5] = [
        RolloutState::Running,
        RolloutState::Paused,
        RolloutState::Halted,
        RolloutState::Completed,
        RolloutState::Aborted,
    ];

    pub const fn as_str(self) -> &'static str {
        match self {
            RolloutState::Running => "running",
            RolloutState::Paused => "paused",
            RolloutState::Halted => "halted",
            RolloutState::Completed => "completed",
            RolloutState::Aborted => "aborted",
        }
    }

    /// Decodes a stored state; an unknown name is an error, never a default.
    pub fn parse(s: &str) -> Result<Self, ParseStateError> {
        Self::ALL
            .into_iter()
            .find(|x| x.as_str() == s)
            .ok_or_else(|| ParseStateError {
                what: "rollout state",
                value: s.to_string(),
                expected: ROLLOUT_STATE_NAMES,
            })
    }

    /// No runner works on it (halted may still be resumed by an operator).
    pub const fn is_finished(self) -> bool {
        matches!(
            self,
            RolloutState::Halted | RolloutState::Completed | RolloutState::Aborted
        )
    }

    /// Nothing leaves it.
    pub const fn is_terminal(self) -> bool {
        matches!(self, RolloutState::Completed | RolloutState::Aborted)
    }
}

impl fmt::Display for RolloutState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for RolloutState {
    type Err = ParseStateError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

/// The allowed rollout transitions, by the runner and by operators.
pub fn can_transition(from: RolloutState, to: RolloutState) -> bool {
    use RolloutState::*;
    match from {
        Running => matches!(to, Paused | Halted | Completed | Aborted),
        Paused => matches!(to, Running | Aborted),
        Halted => matches!(to, Running),
        Completed | Aborted => false,
    }
}

/// The operator's verbs (`pause`, `resume`, `abort`) that [`steer`] allows
/// from `from`, in that order: what the console offers as buttons, so a
/// button is never one the API refuses.
pub fn operator_actions(from: RolloutState) -> Vec<&'static str> {
    [
        (RolloutState::Paused, "pause"),
        (RolloutState::Running, "resume"),
        (RolloutState::Aborted, "abort"),
    ]
    .into_iter()
    .filter(|(requested, _)| steer(from, *requested).is_ok())
    .map(|(_, verb)| verb)
    .collect()
}

/// An operator's change to a rollout's state, as [`steer`] allows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RolloutTransition {
    /// Running → paused: the runner stops after the batch in flight.
    Pause,
    /// Paused → running: a runner is started again.
    Resume,
    /// Halted → running: the digest is no longer rejected, a pin the halt
    /// reverted points at the rollout's target again, failed targets are
    /// tried again, and a runner is started.
    ResumeHalted,
    /// Running or paused → aborted, for good.
    Abort,
}

impl RolloutTransition {
    /// The state the rollout is in afterwards.
    pub const fn to(self) -> RolloutState {
        match self {
            RolloutTransition::Pause => RolloutState::Paused,
            RolloutTransition::Resume | RolloutTransition::ResumeHalted => RolloutState::Running,
            RolloutTransition::Abort => RolloutState::Aborted,
        }
    }
}

/// Why an operator's request was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the rollout is {from}; it cannot become {requested}")]
pub struct SteerRefusal {
    pub from: RolloutState,
    pub requested: RolloutState,
}

/// An operator asks a rollout in state `from` to become `requested`
/// (pause, resume, abort). Halting and completing are the runner's.
pub fn steer(
    from: RolloutState,
    requested: RolloutState,
) -> Result<RolloutTransition, SteerRefusal> {
    use RolloutState::*;
    let transition = match (from, requested) {
        (Running, Paused) => RolloutTransition::Pause,
        (Paused, Running) => RolloutTransition::Resume,
        (Halted, Running) => RolloutTransition::ResumeHalted,
        (Running | Paused, Aborted) => RolloutTransition::Abort,
        _ => return Err(SteerRefusal { from, requested }),
    };
    debug_assert!(can_transition(from, transition.to()));
    Ok(transition)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TargetState {
    Pending,
    Updated,
    /// Its recreate failed the health gate; it was restored to the old image.
    Failed,
    /// Gone or removed before its turn, or already on the target digest.
    Skipped,
}

const TARGET_STATE_NAMES: &[&str] = &["pending", "updated", "failed", "skipped"];

impl TargetState {
    pub const ALL: [TargetState; 4] = [
        TargetState::Pending,
        TargetState::Updated,
        TargetState::Failed,
        TargetState::Skipped,
    ];

    pub const fn as_str(self) -> &'static str {
        match self {
            TargetState::Pending => "pending",
            TargetState::Updated => "updated",
            TargetState::Failed => "failed",
            TargetState::Skipped => "skipped",
        }
    }

    /// Decodes a stored state; an unknown name is an error, never a default.
    pub fn parse(s: &str) -> Result<Self, ParseStateError> {
        Self::ALL
            .into_iter()
            .find(|x| x.as_str() == s)
            .ok_or_else(|| ParseStateError {
                what: "rollout target state",
                value: s.to_string(),
                expected: TARGET_STATE_NAMES,
            })
    }

    /// Nothing leaves it: the target is done with.
    pub const fn is_terminal(self) -> bool {
        matches!(self, TargetState::Updated | TargetState::Skipped)
    }

    /// The allowed target transitions: a pending target is recreated
    /// (updated or failed) or skipped; a failed one is pending again when
    /// an operator resumes its halted rollout.
    pub fn can_transition(from: TargetState, to: TargetState) -> bool {
        use TargetState::*;
        matches!(
            (from, to),
            (Pending, Updated | Failed | Skipped) | (Failed, Pending)
        )
    }
}

impl fmt::Display for TargetState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for TargetState {
    type Err = ParseStateError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

/// What a running rollout does next.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    /// Recreate these runtimes, then look again.
    Batch(Vec<String>),
    /// Too many failures: stop, restore, (under `track`) revert the pin.
    Halt {
        failures: u32,
    },
    Complete,
    /// Paused or finished: nothing to do.
    Idle,
}

/// `targets` in rollout order. A running rollout halts once `max_failures`
/// runtimes (at least one) failed their health gate; otherwise it batches
/// the next pending targets, and completes when none is left.
pub fn next_step(
    state: RolloutState,
    batch_size: u32,
    max_failures: u32,
    targets: &[(String, TargetState)],
) -> Step {
    if state != RolloutState::Running {
        return Step::Idle;
    }
    let failures = targets
        .iter()
        .filter(|(_, s)| *s == TargetState::Failed)
        .count() as u32;
    if failures >= max_failures.max(1) {
        return Step::Halt { failures };
    }
    let batch: Vec<String> = targets
        .iter()
        .filter(|(_, s)| *s == TargetState::Pending)
        .take(batch_size.max(1) as usize)
        .map(|(id, _)| id.clone())
        .collect();
    if batch.is_empty() {
        Step::Complete
    } else {
        Step::Batch(batch)
    }
}

/// What the watcher does with one template's freshly resolved digest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WatchDecision {
    /// First observation ever: remember it, change nothing.
    Seed,
    Unchanged,
    /// The new digest was rejected after a halted rollout: not retried
    /// until the tag moves again or an operator steps in.
    Rejected,
    Notify {
        from: Digest,
        to: Digest,
    },
    Track {
        from: Digest,
        to: Digest,
    },
}

pub fn decide(
    previous: Option<&Digest>,
    current: &Digest,
    rejected: bool,
    policy: UpdatePolicy,
) -> WatchDecision {
    match previous {
        None => WatchDecision::Seed,
        Some(p) if p == current => WatchDecision::Unchanged,
        Some(_) if rejected => WatchDecision::Rejected,
        Some(p) => match policy {
            UpdatePolicy::Notify => WatchDecision::Notify {
                from: p.clone(),
                to: current.clone(),
            },
            UpdatePolicy::Track => WatchDecision::Track {
                from: p.clone(),
                to: current.clone(),
            },
        },
    }
}

/// Watched templates grouped by `repo:tag`: one registry request per group
/// per tick, however many templates and runtimes share it.
pub fn watch_groups(templates: &[Template]) -> BTreeMap<(String, String), Vec<String>> {
    let mut groups: BTreeMap<(String, String), Vec<String>> = BTreeMap::new();
    for t in templates.iter().filter(|t| t.watch) {
        groups
            .entry((t.image.to_string(), t.tag.clone()))
            .or_default()
            .push(t.name.clone());
    }
    groups
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::image::Repository;
    use proptest::prelude::*;
    use TargetState::*;

    fn d(c: char) -> Digest {
        Digest::parse(&format!("sha256:{}", c.to_string().repeat(64))).unwrap()
    }

    fn targets(states: &[TargetState]) -> Vec<(String, TargetState)> {
        states
            .iter()
            .enumerate()
            .map(|(i, s)| (format!("r{i}"), *s))
            .collect()
    }

    #[test]
    fn batches_in_order_then_completes() {
        let t = targets(&[Updated, Pending, Pending, Pending]);
        assert_eq!(
            next_step(RolloutState::Running, 2, 1, &t),
            Step::Batch(vec!["r1".into(), "r2".into()])
        );
        let t = targets(&[Updated, Skipped, Updated]);
        assert_eq!(next_step(RolloutState::Running, 2, 1, &t), Step::Complete);
    }

    #[test]
    fn halts_at_max_failures() {
        let t = targets(&[Failed, Pending]);
        assert_eq!(
            next_step(RolloutState::Running, 1, 1, &t),
            Step::Halt { failures: 1 }
        );
        assert_eq!(
            next_step(RolloutState::Running, 1, 2, &t),
            Step::Batch(vec!["r1".into()])
        );
        assert_eq!(
            next_step(RolloutState::Running, 1, 0, &t),
            Step::Halt { failures: 1 }
        );
    }

    #[test]
    fn paused_and_finished_rollouts_idle() {
        let t = targets(&[Pending]);
        for s in [
            RolloutState::Paused,
            RolloutState::Halted,
            RolloutState::Completed,
            RolloutState::Aborted,
        ] {
            assert_eq!(next_step(s, 1, 1, &t), Step::Idle);
        }
    }

    #[test]
    fn watcher_decisions() {
        assert_eq!(
            decide(None, &d('a'), false, UpdatePolicy::Track),
            WatchDecision::Seed
        );
        assert_eq!(
            decide(Some(&d('a')), &d('a'), false, UpdatePolicy::Track),
            WatchDecision::Unchanged
        );
        assert_eq!(
            decide(Some(&d('a')), &d('b'), true, UpdatePolicy::Track),
            WatchDecision::Rejected
        );
        assert_eq!(
            decide(Some(&d('a')), &d('b'), false, UpdatePolicy::Notify),
            WatchDecision::Notify {
                from: d('a'),
                to: d('b')
            }
        );
        assert_eq!(
            decide(Some(&d('a')), &d('b'), false, UpdatePolicy::Track),
            WatchDecision::Track {
                from: d('a'),
                to: d('b')
            }
        );
    }

    #[test]
    fn groups_share_one_request() {
        let repo = Repository::parse("r.example/a").unwrap();
        let mut a = Template::new("a", repo.clone());
        a.watch = true;
        let mut b = Template::new("b", repo.clone());
        b.watch = true;
        let mut c = Template::new("c", repo);
        c.watch = true;
        c.tag = "v2".into();
        let unwatched = Template::new("d", Repository::parse("x").unwrap());
        let g = watch_groups(&[a, b, c, unwatched]);
        assert_eq!(g.len(), 2);
        assert_eq!(
            g[&("r.example/a".to_string(), "latest".to_string())],
            ["a", "b"]
        );
    }

    #[test]
    fn state_names_round_trip() {
        for s in RolloutState::ALL {
            assert_eq!(RolloutState::parse(s.as_str()), Ok(s));
            assert_eq!(s.to_string().parse::<RolloutState>(), Ok(s));
        }
        for s in TargetState::ALL {
            assert_eq!(TargetState::parse(s.as_str()), Ok(s));
            assert_eq!(s.to_string().parse::<TargetState>(), Ok(s));
        }
    }

    #[test]
    fn unknown_stored_states_are_errors() {
        let e = RolloutState::parse("Running").unwrap_err();
        assert_eq!(e.what, "rollout state");
        assert_eq!(e.value, "Running");
        assert_eq!(
            e.to_string(),
            "rollout state \"Running\" is not one of running, paused, halted, completed, aborted"
        );
        let e = TargetState::parse("").unwrap_err();
        assert_eq!(e.what, "rollout target state");
        assert_eq!(
            e.to_string(),
            "rollout target state \"\" is not one of pending, updated, failed, skipped"
        );
    }

    #[test]
    fn rollout_transition_table() {
        use RolloutState::*;
        let allowed = [
            (Running, Paused),
            (Running, Halted),
            (Running, Completed),
            (Running, Aborted),
            (Paused, Running),
            (Paused, Aborted),
            (Halted, Running),
        ];
        for from in RolloutState::ALL {
            for to in RolloutState::ALL {
                assert_eq!(
                    can_transition(from, to),
                    allowed.contains(&(from, to)),
                    "{from} -> {to}"
                );
            }
        }
    }

    #[test]
    fn steering_table() {
        use RolloutState::*;
        use RolloutTransition as T;
        let cases = [
            (Running, Paused, Ok(T::Pause)),
            (Paused, Running, Ok(T::Resume)),
            (Halted, Running, Ok(T::ResumeHalted)),
            (Running, Aborted, Ok(T::Abort)),
            (Paused, Aborted, Ok(T::Abort)),
            (Running, Running, Err(())),
            (Paused, Paused, Err(())),
            (Halted, Paused, Err(())),
            (Halted, Aborted, Err(())),
            (Completed, Running, Err(())),
            (Completed, Aborted, Err(())),
            (Aborted, Running, Err(())),
            (Aborted, Paused, Err(())),
            // Halting and completing are the runner's, not an operator's.
            (Running, Halted, Err(())),
            (Running, Completed, Err(())),
        ];
        for (from, requested, want) in cases {
            let got = steer(from, requested);
            match want {
                Ok(t) => {
                    assert_eq!(got, Ok(t), "{from} -> {requested}");
                    assert_eq!(t.to(), requested);
                }
                Err(()) => assert_eq!(got, Err(SteerRefusal { from, requested })),
            }
        }
        assert_eq!(
            steer(Completed, Running).unwrap_err().to_string(),
            "the rollout is completed; it cannot become running"
        );
    }

    #[test]
    fn target_transition_table() {
        let allowed = [
            (Pending, Updated),
            (Pending, Failed),
            (Pending, Skipped),
            (Failed, Pending),
        ];
        for from in TargetState::ALL {
            for to in TargetState::ALL {
                assert_eq!(
                    TargetState::can_transition(from, to),
                    allowed.contains(&(from, to)),
                    "{from} -> {to}"
                );
            }
        }
    }

    #[test]
    fn every_rollout_state_is_reachable_from_running() {
        let mut seen = vec![RolloutState::Running];
        let mut frontier = vec![RolloutState::Running];
        while let Some(from) = frontier.pop() {
            for to in RolloutState::ALL {
                if can_transition(from, to) && !seen.contains(&to) {
                    seen.push(to);
                    frontier.push(to);
                }
            }
        }
        for s in RolloutState::ALL {
            assert!(seen.contains(&s), "{s} unreachable from running");
        }
    }

    fn any_rollout_state() -> impl Strategy<Value = RolloutState> {
        proptest::sample::select(RolloutState::ALL.to_vec())
    }

    fn any_target_state() -> impl Strategy<Value = TargetState> {
        proptest::sample::select(TargetState::ALL.to_vec())
    }

    proptest! {
        /// Whatever the runner and operators ask, in any order, nothing
        /// leaves a terminal state and every change is in the table.
        #[test]
        fn no_transition_leaves_a_terminal_state(
            requests in proptest::collection::vec((any::<bool>(), any_rollout_state()), 0..64)
        ) {
            let mut current = RolloutState::Running;
            for (by_operator, to) in requests {
                let next = if by_operator {
                    steer(current, to).ok().map(RolloutTransition::to)
                } else {
                    can_transition(current, to).then_some(to)
                };
                if let Some(next) = next {
                    prop_assert!(can_transition(current, next), "{current} -> {next}");
                    prop_assert!(!current.is_terminal(), "left terminal {current}");
                    current = next;
                }
            }
        }

        #[test]
        fn no_target_transition_leaves_a_terminal_state(
            walk in proptest::collection::vec(any_target_state(), 0..32)
        ) {
            let mut current = Pending;
            for to in walk {
                if TargetState::can_transition(current, to) {
                    prop_assert!(!current.is_terminal(), "left terminal {current}");
                    current = to;
                }
            }
        }

        /// A batch holds only pending targets, in order, at most
        /// `batch_size` of them; the rollout halts exactly when failures
        /// reach `max_failures` (at least one), and completes exactly when
        /// nothing is pending.
        #[test]
        fn next_step_batches_pending_and_halts_at_max_failures(
            states in proptest::collection::vec(any_target_state(), 0..24),
            batch_size in 0u32..6,
            max_failures in 0u32..6,
        ) {
            let t = targets(&states);
            let failures = states.iter().filter(|s| **s == Failed).count() as u32;
            let pending: Vec<String> = t
                .iter()
                .filter(|(_, s)| *s == Pending)
                .map(|(id, _)| id.clone())
                .collect();
            match next_step(RolloutState::Running, batch_size, max_failures, &t) {
                Step::Halt { failures: f } => {
                    prop_assert_eq!(f, failures);
                    prop_assert!(failures >= max_failures.max(1));
                }
                Step::Batch(batch) => {
                    prop_assert!(failures < max_failures.max(1));
                    prop_assert!(!batch.is_empty());
                    prop_assert!(batch.len() <= batch_size.max(1) as usize);
                    prop_assert_eq!(&batch[..], &pending[..batch.len()]);
                }
                Step::Complete => {
                    prop_assert!(failures < max_failures.max(1));
                    prop_assert!(pending.is_empty());
                }
                Step::Idle => prop_assert!(false, "a running rollout never idles"),
            }
        }

        #[test]
        fn only_running_rollouts_step(
            state in any_rollout_state(),
            states in proptest::collection::vec(any_target_state(), 0..8),
        ) {
            let step = next_step(state, 1, 1, &targets(&states));
            prop_assert_eq!(step == Step::Idle, state != RolloutState::Running);
        }
    }

    #[test]
    fn operator_actions_are_what_steer_allows() {
        use RolloutState::*;
        assert_eq!(operator_actions(Running), vec!["pause", "abort"]);
        assert_eq!(operator_actions(Paused), vec!["resume", "abort"]);
        // Halted → running only: a halted rollout is resumed, not aborted.
        assert_eq!(operator_actions(Halted), vec!["resume"]);
        assert!(operator_actions(Completed).is_empty());
        assert!(operator_actions(Aborted).is_empty());
    }
}
