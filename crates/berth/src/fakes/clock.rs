//! A clock that tests control: it follows tokio's clock (so it moves with
//! `tokio::time::pause`/`advance` and auto-advance in paused tests) plus any
//! explicit jumps made with [`FakeClock::advance`].

use std::sync::atomic::{AtomicI64, Ordering};
use std::time::Duration;

use crate::ports::Clock;

#[derive(Debug)]
pub struct FakeClock {
    base_ms: i64,
    start: tokio::time::Instant,
    jumped_ms: AtomicI64,
}

/// 2026-01-01T00:00:00Z: a fixed, readable epoch for tests.
pub const FAKE_EPOCH_MS: i64 = 1_767_225_600_000;

impl FakeClock {
    /// A clock reading `base_ms` now. Must be created inside a tokio runtime
    /// when it is to follow paused time.
    pub fn at(base_ms: i64) -> Self {
        FakeClock {
            base_ms,
            start: tokio::time::Instant::now(),
            jumped_ms: AtomicI64::new(0),
        }
    }

    /// Moves this clock (not tokio's) forward.
    pub fn advance(&self, by: Duration) {
        self.jumped_ms
            .fetch_add(by.as_millis() as i64, Ordering::SeqCst);
    }
}

impl Default for FakeClock {
    fn default() -> Self {
        FakeClock::at(FAKE_EPOCH_MS)
    }
}

impl Clock for FakeClock {
    fn now_ms(&self) -> i64 {
        self.base_ms
            + self.start.elapsed().as_millis() as i64
            + self.jumped_ms.load(Ordering::SeqCst)
    }
}
