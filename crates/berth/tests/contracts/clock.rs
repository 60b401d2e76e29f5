//! The `Clock` contract: one suite, run against `SystemClock` (on tokio's
//! real clock) and `FakeClock` (on paused time). The `contract!` macro
//! turns each case into `system::<case>` and `fake::<case>`; `fake_only`
//! checks what tests rely on the fake for: it follows paused tokio time
//! and jumps with `advance`; `system_only` that the system clock is the
//! wall clock.

use std::time::Duration;

use berth::fakes::clock::FAKE_EPOCH_MS;
use berth::fakes::FakeClock;
use berth::ports::{Clock, SystemClock};

macro_rules! contract {
    ($($case:ident),* $(,)?) => {
        mod system {
            $(
                #[tokio::test]
                async fn $case() {
                    super::cases::$case(&berth::ports::SystemClock).await;
                }
            )*
        }
        mod fake {
            $(
                #[tokio::test(start_paused = true)]
                async fn $case() {
                    super::cases::$case(&berth::fakes::FakeClock::default()).await;
                }
            )*
        }
    };
}

contract!(
    reads_milliseconds_since_the_epoch,
    never_goes_backwards,
    moves_forward_as_time_passes,
);

mod cases {
    use super::*;

    /// 2020-01-01 and 2100-01-01, in ms since the epoch: a reading outside
    /// is in the wrong unit or from the wrong epoch.
    const PLAUSIBLE: std::ops::Range<i64> = 1_577_836_800_000..4_102_444_800_000;

    pub async fn reads_milliseconds_since_the_epoch(clock: &dyn Clock) {
        let now = clock.now_ms();
        assert!(PLAUSIBLE.contains(&now), "{now}");
    }

    pub async fn never_goes_backwards(clock: &dyn Clock) {
        let mut last = clock.now_ms();
        for i in 0..10_000 {
            if i % 100 == 0 {
                tokio::task::yield_now().await;
            }
            let now = clock.now_ms();
            assert!(now >= last, "read {i}: {now} after {last}");
            last = now;
        }
    }

    /// Polled: real time passes for the system clock, paused time
    /// auto-advances for the fake.
    pub async fn moves_forward_as_time_passes(clock: &dyn Clock) {
        let first = clock.now_ms();
        for _ in 0..10_000 {
            if clock.now_ms() > first {
                return;
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        panic!("the clock stood at {first}");
    }
}

mod fake_only {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn starts_at_its_base() {
        assert_eq!(FakeClock::default().now_ms(), FAKE_EPOCH_MS);
        assert_eq!(FakeClock::at(1_234).now_ms(), 1_234);
    }

    #[tokio::test(start_paused = true)]
    async fn stands_still_while_paused_time_does() {
        let clock = FakeClock::default();
        let first = clock.now_ms();
        tokio::task::yield_now().await;
        assert_eq!(clock.now_ms(), first);
    }

    #[tokio::test(start_paused = true)]
    async fn follows_paused_tokio_time_exactly() {
        let clock = FakeClock::default();
        tokio::time::advance(Duration::from_secs(5)).await;
        assert_eq!(clock.now_ms(), FAKE_EPOCH_MS + 5_000);
        // A sleep auto-advances paused time by exactly its length.
        tokio::time::sleep(Duration::from_millis(250)).await;
        assert_eq!(clock.now_ms(), FAKE_EPOCH_MS + 5_250);
    }

    #[tokio::test(start_paused = true)]
    async fn advance_jumps_without_moving_tokio_time() {
        let clock = FakeClock::default();
        let tokio_before = tokio::time::Instant::now();
        clock.advance(Duration::from_secs(90));
        assert_eq!(clock.now_ms(), FAKE_EPOCH_MS + 90_000);
        assert_eq!(tokio::time::Instant::now(), tokio_before);
        // Jumps and tokio's time add up.
        tokio::time::advance(Duration::from_secs(1)).await;
        assert_eq!(clock.now_ms(), FAKE_EPOCH_MS + 91_000);
    }
}

mod system_only {
    use super::*;

    #[test]
    fn reads_the_wall_clock() {
        let wall = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_millis() as i64;
        let read = SystemClock.now_ms();
        // Read right after: the same ms or later; a minute off would be
        // another clock, not a slow read.
        assert!(read >= wall, "{read} < {wall}");
        assert!(read - wall < 60_000, "{read} vs {wall}: not the wall clock");
    }
}
