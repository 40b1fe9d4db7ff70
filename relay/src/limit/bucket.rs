//! One cap: a governor limiter sized for the cap, a queue that makes its waiters take turns,
//! and the count of bytes it has let through. The cap can change while connections draw from
//! it; a bucket without a cap only counts.
//!
//! Sizing, with governor's limits in mind:
//! - governor replenishes one cell per whole number of nanoseconds and counts cells in `u32`:
//!   a cell is as many bytes as the cap moves in at least [`MIN_INTERVAL`], so rounding the
//!   interval to the nanosecond is off by at most 0.0125%, from 1 KiB/s to 1 TiB/s;
//! - the burst is [`BURST_WINDOW`] of the cap (governor's `per_second` would allow a whole
//!   second), and never less than one slice, so a charge of one slice always fits;
//! - waiters are charged a slice at a time (100 us of the cap, at least 16 KiB), in turn (a FIFO
//!   lock), so a large read does not starve small ones.

use std::num::NonZeroU32;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, PoisonError, RwLock};
use std::time::Duration;

use governor::clock::Clock;
use governor::middleware::NoOpMiddleware;
use governor::state::{InMemoryState, NotKeyed};
use governor::{Quota, RateLimiter};
use tokio::time::Instant;

use super::clock::{Moment, TokioClock};

/// Least time between two cells.
pub const MIN_INTERVAL: Duration = Duration::from_micros(4);
/// The burst a cap allows: this much of its rate.
pub const BURST_WINDOW: Duration = Duration::from_millis(20);
/// Least share a waiter takes in one turn (unless the burst is smaller).
pub const MIN_SLICE: u64 = 16 << 10;
/// A waiter's share per turn is this much of the cap, at least [`MIN_SLICE`].
pub const SLICE_WINDOW: Duration = Duration::from_micros(100);
/// Shortest time a [`Bucket::recent_rate`] figure covers.
pub const RATE_SAMPLE: Duration = Duration::from_secs(1);
/// Longest single sleep of a waiter, so a changed cap applies soon.
const MAX_WAIT: Duration = Duration::from_millis(100);

type Limiter = RateLimiter<NotKeyed, InMemoryState, TokioClock, NoOpMiddleware<Moment>>;

/// A cap and the governor limiter sized for it.
#[derive(Debug)]
pub struct Gcra {
    pub rate: u64,
    /// Bytes per governor cell.
    pub cell: u64,
    /// Cells the limiter holds at most.
    pub burst_cells: u32,
    /// Bytes a waiter takes per turn.
    pub slice: u64,
    limiter: Limiter,
}

impl Gcra {
    /// A limiter for `rate` bytes per second (at least 1 KiB/s).
    pub fn new(rate: u64) -> Gcra {
        let rate = rate.max(1);
        let min_interval = MIN_INTERVAL.as_nanos() as u64;
        let cell = (u128::from(rate) * u128::from(min_interval))
            .div_ceil(1_000_000_000)
            .max(1) as u64;
        let interval_ns =
            (u128::from(cell) * 1_000_000_000 + u128::from(rate) / 2) / u128::from(rate);
        let window = (u128::from(rate) * BURST_WINDOW.as_nanos() / 1_000_000_000) as u64;
        let share = (u128::from(rate) * SLICE_WINDOW.as_nanos() / 1_000_000_000) as u64;
        let slice = share.max(MIN_SLICE).min(window).max(cell);
        let burst_cells = (window / cell).max(slice / cell + 1);
        let burst_cells = NonZeroU32::new(u32::try_from(burst_cells).unwrap_or(u32::MAX))
            .expect("at least one cell");
        let quota = Quota::with_period(Duration::from_nanos(interval_ns as u64))
            .expect("a positive interval")
            .allow_burst(burst_cells);
        Gcra {
            rate,
            cell,
            burst_cells: burst_cells.get(),
            slice,
            limiter: RateLimiter::direct_with_clock(quota, TokioClock),
        }
    }

    /// Takes up to `cells` (at most a burst) now, or says how long until they could be taken.
    fn try_take(&self, cells: u64) -> Result<u64, Duration> {
        let n = cells.min(u64::from(self.burst_cells)) as u32;
        let n = NonZeroU32::new(n).expect("cells to take");
        match self.limiter.check_n(n) {
            Ok(Ok(())) => Ok(u64::from(n.get())),
            Ok(Err(not_until)) => Err(not_until.wait_time_from(TokioClock.now())),
            // `n` is within the burst: only a changed cap could get here; wait one interval.
            Err(_) => Err(MIN_INTERVAL),
        }
    }
}

/// One scope's cap (or none), its turn queue and its counters.
#[derive(Debug)]
pub struct Bucket {
    gcra: RwLock<Option<Arc<Gcra>>>,
    turns: tokio::sync::Mutex<()>,
    granted: AtomicU64,
    created: Instant,
    /// The latest rate sample: when it was taken, the count then, the rate it gave.
    sample: std::sync::Mutex<(Instant, u64, u64)>,
}

impl Bucket {
    pub fn new(rate: Option<u64>) -> Bucket {
        Bucket {
            gcra: RwLock::new(rate.map(|r| Arc::new(Gcra::new(r)))),
            turns: tokio::sync::Mutex::new(()),
            granted: AtomicU64::new(0),
            created: Instant::now(),
            sample: std::sync::Mutex::new((Instant::now(), 0, 0)),
        }
    }

    /// The current cap and its limiter, if any.
    pub fn gcra(&self) -> Option<Arc<Gcra>> {
        self.gcra
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// The cap in bytes per second, if any.
    pub fn rate(&self) -> Option<u64> {
        self.gcra().map(|g| g.rate)
    }

    /// Sets or removes the cap; waiters follow within [`MAX_WAIT`]. Setting the same cap again
    /// keeps the limiter's state.
    pub fn set_rate(&self, rate: Option<u64>) {
        let mut gcra = self.gcra.write().unwrap_or_else(PoisonError::into_inner);
        if gcra.as_ref().map(|g| g.rate) != rate {
            *gcra = rate.map(|r| Arc::new(Gcra::new(r)));
        }
    }

    /// Bytes let through so far.
    pub fn granted(&self) -> u64 {
        self.granted.load(Ordering::Relaxed)
    }

    /// Mean rate let through since the bucket was made, bytes per second.
    pub fn mean_rate(&self) -> u64 {
        let secs = self.created.elapsed().as_secs_f64();
        match secs > 0.0 {
            true => (self.granted() as f64 / secs) as u64,
            false => 0,
        }
    }

    /// The rate let through over the latest [`RATE_SAMPLE`] or more: the sample is renewed when
    /// it is that old, so readers a second or more apart each get a fresh figure.
    pub fn recent_rate(&self) -> u64 {
        let mut sample = self.sample.lock().unwrap_or_else(PoisonError::into_inner);
        let (at, count, rate) = *sample;
        let elapsed = at.elapsed();
        if elapsed >= RATE_SAMPLE {
            let now = self.granted();
            let rate = ((now - count) as f64 / elapsed.as_secs_f64()) as u64;
            *sample = (Instant::now(), now, rate);
            return rate;
        }
        rate
    }

    pub(super) fn count(&self, bytes: u64) {
        self.granted.fetch_add(bytes, Ordering::Relaxed);
    }

    /// Waits for this bucket's turn queue.
    pub(super) async fn turn(&self) -> tokio::sync::MutexGuard<'_, ()> {
        self.turns.lock().await
    }

    /// Takes whole cells for the bytes in `owed`, leaving less than one cell there; returns at
    /// once when the bucket has no cap (and then clears `owed`).
    pub(super) async fn take(&self, owed: &mut u64) {
        loop {
            let Some(gcra) = self.gcra() else {
                *owed = 0;
                return;
            };
            let cells = *owed / gcra.cell;
            if cells == 0 {
                return;
            }
            match gcra.try_take(cells) {
                Ok(taken) => *owed -= taken * gcra.cell,
                Err(wait) => tokio::time::sleep(wait.min(MAX_WAIT)).await,
            }
        }
    }
}
