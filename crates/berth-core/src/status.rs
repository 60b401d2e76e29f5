//! The runtime status machine: which statuses exist, which transitions are
//! allowed, and what each lifecycle event does to a status.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RuntimeStatus {
    Starting,
    Running,
    Stopping,
    Stopped,
    Exited,
    Failed,
    /// Terminal: the container is gone and the id is never reused.
    Removed,
}

impl RuntimeStatus {
    pub const ALL: [RuntimeStatus; 7] = [
        RuntimeStatus::Starting,
        RuntimeStatus::Running,
        RuntimeStatus::Stopping,
        RuntimeStatus::Stopped,
        RuntimeStatus::Exited,
        RuntimeStatus::Failed,
        RuntimeStatus::Removed,
    ];

    pub const fn as_str(self) -> &'static str {
        match self {
            RuntimeStatus::Starting => "starting",
            RuntimeStatus::Running => "running",
            RuntimeStatus::Stopping => "stopping",
            RuntimeStatus::Stopped => "stopped",
            RuntimeStatus::Exited => "exited",
            RuntimeStatus::Failed => "failed",
            RuntimeStatus::Removed => "removed",
        }
    }

    pub const fn is_terminal(self) -> bool {
        matches!(self, RuntimeStatus::Removed)
    }

    /// A status an operation is still moving through.
    pub const fn is_transitional(self) -> bool {
        matches!(self, RuntimeStatus::Starting | RuntimeStatus::Stopping)
    }
}

impl fmt::Display for RuntimeStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for RuntimeStatus {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        RuntimeStatus::ALL
            .into_iter()
            .find(|st| st.as_str() == s)
            .ok_or_else(|| {
                format!(
                    "unknown status {s:?}; expected one of starting, running, stopping, stopped, exited, failed, removed"
                )
            })
    }
}

/// The allowed-transitions table. `None` is "no record yet".
pub fn can_transition(from: Option<RuntimeStatus>, to: RuntimeStatus) -> bool {
    use RuntimeStatus::*;
    match from {
        None => matches!(to, Starting | Running),
        Some(Removed) => false,
        Some(Starting) => matches!(to, Running | Failed | Exited | Removed),
        Some(Running) => matches!(to, Stopping | Starting | Exited | Failed | Removed),
        Some(Stopping) => matches!(to, Stopped | Running | Failed | Exited | Removed),
        Some(Stopped) => matches!(to, Starting | Stopping | Removed),
        Some(Exited) => matches!(to, Starting | Stopping | Failed | Removed),
        Some(Failed) => matches!(to, Starting | Stopping | Removed),
    }
}

/// What happened to a runtime.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LifecycleEvent {
    /// A start was requested (first start, or start again).
    StartRequested,
    /// The container runs.
    Started,
    /// An operation failed and the runtime is not running.
    Failed,
    StopRequested,
    Stopped,
    /// A stop failed and the container still runs.
    StopFailed,
    /// The container's main process ended on its own.
    Exited,
    RestartRequested,
    /// The container is gone for good.
    Removed,
    /// A labelled container with no record was taken over.
    Adopted,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TransitionError {
    #[error("the runtime was removed; a removed runtime id cannot be used again")]
    Removed,
    #[error("an operation is already in progress (status {0})")]
    Busy(RuntimeStatus),
    #[error("cannot apply {event:?} to a runtime in status {from}")]
    NotAllowed {
        from: RuntimeStatus,
        event: LifecycleEvent,
    },
    #[error("no runtime record exists for {0:?}")]
    NoRecord(LifecycleEvent),
}

/// Applies `event` to `from`. Every `Ok` result is a transition the table
/// allows; `removed` accepts nothing.
pub fn next_status(
    from: Option<RuntimeStatus>,
    event: LifecycleEvent,
) -> Result<RuntimeStatus, TransitionError> {
    use LifecycleEvent as E;
    use RuntimeStatus::*;
    let Some(from) = from else {
        return match event {
            E::StartRequested => Ok(Starting),
            E::Adopted => Ok(Running),
            other => Err(TransitionError::NoRecord(other)),
        };
    };
    let not_allowed = || TransitionError::NotAllowed { from, event };
    let to = match (from, event) {
        (Removed, _) => return Err(TransitionError::Removed),
        (Starting | Stopping, E::StartRequested | E::StopRequested | E::RestartRequested) => {
            return Err(TransitionError::Busy(from))
        }
        (Stopped | Exited | Failed, E::StartRequested) => Starting,
        (Running | Exited | Failed | Stopped, E::RestartRequested) => Starting,
        (Starting, E::Started) => Running,
        (Starting | Running | Stopping | Exited, E::Failed) => Failed,
        (Running | Exited | Failed, E::StopRequested) => Stopping,
        (Stopping, E::Stopped) => Stopped,
        (Stopping, E::StopFailed) => Running,
        (Starting | Running | Stopping, E::Exited) => Exited,
        (_, E::Removed) => Removed,
        _ => return Err(not_allowed()),
    };
    debug_assert!(can_transition(Some(from), to));
    Ok(to)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use LifecycleEvent as E;
    use RuntimeStatus::*;

    #[test]
    fn happy_path() {
        let s = next_status(None, E::StartRequested).unwrap();
        let s = next_status(Some(s), E::Started).unwrap();
        assert_eq!(s, Running);
        let s = next_status(Some(s), E::StopRequested).unwrap();
        let s = next_status(Some(s), E::Stopped).unwrap();
        assert_eq!(s, Stopped);
        let s = next_status(Some(s), E::StartRequested).unwrap();
        assert_eq!(s, Starting);
        let s = next_status(Some(s), E::Removed).unwrap();
        assert_eq!(s, Removed);
    }

    #[test]
    fn removed_is_terminal() {
        for e in ALL_EVENTS {
            assert_eq!(next_status(Some(Removed), e), Err(TransitionError::Removed));
        }
        for to in RuntimeStatus::ALL {
            assert!(!can_transition(Some(Removed), to));
        }
    }

    #[test]
    fn busy_statuses_refuse_new_requests() {
        for from in [Starting, Stopping] {
            for e in [E::StartRequested, E::StopRequested, E::RestartRequested] {
                assert_eq!(next_status(Some(from), e), Err(TransitionError::Busy(from)));
            }
        }
    }

    #[test]
    fn status_names_round_trip() {
        for s in RuntimeStatus::ALL {
            assert_eq!(s.as_str().parse::<RuntimeStatus>().unwrap(), s);
        }
        assert!("bogus".parse::<RuntimeStatus>().is_err());
    }

    const ALL_EVENTS: [LifecycleEvent; 10] = [
        E::StartRequested,
        E::Started,
        E::Failed,
        E::StopRequested,
        E::Stopped,
        E::StopFailed,
        E::Exited,
        E::RestartRequested,
        E::Removed,
        E::Adopted,
    ];

    proptest! {
        /// No sequence of events reaches a state the table forbids, and
        /// nothing leaves `removed`.
        #[test]
        fn no_sequence_escapes_the_table(events in proptest::collection::vec(0usize..ALL_EVENTS.len(), 0..64)) {
            let mut current: Option<RuntimeStatus> = None;
            let mut removed_seen = false;
            for i in events {
                if let Ok(to) = next_status(current, ALL_EVENTS[i]) {
                    prop_assert!(can_transition(current, to), "{current:?} -> {to:?} not in table");
                    prop_assert!(!removed_seen, "left removed");
                    removed_seen |= to == Removed;
                    current = Some(to);
                }
            }
        }
    }
}
