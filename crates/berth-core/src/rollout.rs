//! Rollouts and the image watcher's decisions, pure.

use std::collections::BTreeMap;

use crate::image::Digest;
use crate::template::{Template, UpdatePolicy};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RolloutState {
    Running,
    Paused,
    Halted,
    Completed,
    Aborted,
}

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

    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|x| x.as_str() == s)
    }

    pub const fn is_finished(self) -> bool {
        matches!(
            self,
            RolloutState::Halted | RolloutState::Completed | RolloutState::Aborted
        )
    }
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

impl TargetState {
    pub const fn as_str(self) -> &'static str {
        match self {
            TargetState::Pending => "pending",
            TargetState::Updated => "updated",
            TargetState::Failed => "failed",
            TargetState::Skipped => "skipped",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        [
            TargetState::Pending,
            TargetState::Updated,
            TargetState::Failed,
            TargetState::Skipped,
        ]
        .into_iter()
        .find(|x| x.as_str() == s)
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

/// `targets` in rollout order. A rollout halts once `max_failures`
/// runtimes (at least one) failed their health gate.
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
            assert_eq!(RolloutState::parse(s.as_str()), Some(s));
        }
        for s in [Pending, Updated, Failed, Skipped] {
            assert_eq!(TargetState::parse(s.as_str()), Some(s));
        }
    }
}
