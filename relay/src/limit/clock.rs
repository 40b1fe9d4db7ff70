//! The clock the limiters run on: tokio's.
//!
//! governor's default clock reads the CPU's time-stamp counter (quanta), which has been seen to
//! step backwards when a task moves between cores; a limiter fed such a step grants a burst or
//! stalls. tokio's `Instant` is the kernel's monotonic clock, the same on every core, and in tests
//! it is the paused clock, so limiter tests run on simulated time; waits use `tokio::time::sleep`
//! on the time governor reports, never governor's own timer.

use std::ops::Add;
use std::time::Duration;

use governor::clock::{Clock, Reference};
use governor::nanos::Nanos;
use tokio::time::Instant;

/// tokio's clock as a governor clock.
#[derive(Debug, Clone, Copy, Default)]
pub struct TokioClock;

/// A reading of [`TokioClock`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Moment(pub Instant);

impl Add<Nanos> for Moment {
    type Output = Moment;

    fn add(self, nanos: Nanos) -> Moment {
        Moment(self.0 + Duration::from(nanos))
    }
}

impl Reference for Moment {
    fn duration_since(&self, earlier: Self) -> Nanos {
        Nanos::from(self.0.saturating_duration_since(earlier.0))
    }

    fn saturating_sub(&self, duration: Nanos) -> Self {
        self.0
            .checked_sub(Duration::from(duration))
            .map_or(*self, Moment)
    }
}

impl Clock for TokioClock {
    type Instant = Moment;

    fn now(&self) -> Moment {
        Moment(Instant::now())
    }
}
