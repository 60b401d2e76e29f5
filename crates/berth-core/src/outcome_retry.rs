//! How long a service keeps trying to record an operation's outcome when
//! the database refuses it.
//!
//! The outcome describes something that already happened (a container
//! started, a pin moved), so giving up at the first refusal would leave the
//! operation `in_progress` until the next boot fails it, and the record
//! would disagree with the host. A database restart takes seconds; the
//! schedule backs off from 100 ms to 2 s and gives up once it has waited a
//! minute in all, so a caller is not held forever by a database that stays
//! down (boot recovery then settles the operation).

use std::time::Duration;

const FIRST: Duration = Duration::from_millis(100);
const LONGEST: Duration = Duration::from_secs(2);
/// The most time spent waiting between attempts, summed.
pub const GIVE_UP_AFTER: Duration = Duration::from_secs(60);

/// The waits between attempts at one outcome write.
#[derive(Debug, Clone, Default)]
pub struct OutcomeRetry {
    waited: Duration,
    last: Option<Duration>,
}

impl OutcomeRetry {
    /// How long to wait before the next attempt, after one more refusal;
    /// `None`: give up.
    pub fn next_wait(&mut self) -> Option<Duration> {
        let wait = match self.last {
            None => FIRST,
            Some(last) => (last * 2).min(LONGEST),
        };
        if self.waited + wait > GIVE_UP_AFTER {
            return None;
        }
        self.waited += wait;
        self.last = Some(wait);
        Some(wait)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backs_off_to_two_seconds_and_gives_up_after_a_minute_of_waiting() {
        let mut retry = OutcomeRetry::default();
        let waits: Vec<Duration> = std::iter::from_fn(|| retry.next_wait()).collect();
        let ms: Vec<u128> = waits.iter().take(6).map(Duration::as_millis).collect();
        assert_eq!(ms, [100, 200, 400, 800, 1600, 2000]);
        assert!(waits[5..].iter().all(|w| *w == LONGEST));
        let total: Duration = waits.iter().sum();
        assert!(total <= GIVE_UP_AFTER, "{total:?}");
        assert!(total + LONGEST > GIVE_UP_AFTER, "{total:?}");
        assert_eq!(retry.next_wait(), None, "stays given up");
    }
}
