//! Pauses between retries: doubling from a first pause up to a ceiling, back to the first after
//! a success, with optional jitter drawn from a seed (so a run can be replayed).

use std::time::Duration;

/// The pauses of one retry loop.
#[derive(Debug, Clone)]
pub struct Backoff {
    first: Duration,
    max: Duration,
    next: Duration,
    /// Each pause gets up to this fraction of itself on top, drawn from `seed`.
    jitter: f64,
    seed: u64,
    attempt: u64,
}

impl Backoff {
    /// Pauses of `first`, twice that, and so on up to `max`.
    pub fn new(first: Duration, max: Duration) -> Self {
        Backoff {
            first,
            max,
            next: first,
            jitter: 0.0,
            seed: 0,
            attempt: 0,
        }
    }

    /// The first retry goes at once; the pauses after it as [`Backoff::new`].
    pub fn immediate_first(mut self) -> Self {
        self.next = Duration::ZERO;
        self
    }

    /// Adds up to `fraction` of each pause on top, drawn from `seed`: retries of several
    /// clients spread out, the same way in every run with the same seed.
    pub fn with_jitter(mut self, fraction: f64, seed: u64) -> Self {
        self.jitter = fraction;
        self.seed = seed;
        self
    }

    /// The pause the next retry would take (without jitter), to check against a deadline.
    pub fn peek(&self) -> Duration {
        self.next
    }

    /// The pause before the next retry; the one after it doubles.
    pub fn pause(&mut self) -> Duration {
        let pause = self.next;
        self.next = (pause * 2).clamp(self.first, self.max);
        self.attempt += 1;
        if self.jitter > 0.0 {
            pause + pause.mul_f64(self.jitter * unit_interval(self.seed, self.attempt))
        } else {
            pause
        }
    }

    /// Back to the first pause, after a success.
    pub fn reset(&mut self) {
        self.next = self.first;
    }
}

/// A number in [0, 1) that depends only on `seed` and `attempt` (SplitMix64).
fn unit_interval(seed: u64, attempt: u64) -> f64 {
    let mut z = seed
        .wrapping_add(attempt.wrapping_mul(0x9E37_79B9_7F4A_7C15))
        .wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^= z >> 31;
    (z >> 11) as f64 / (1u64 << 53) as f64
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    #[test]
    fn pauses_double_to_the_ceiling_and_reset() {
        let mut b = Backoff::new(10 * MS, 50 * MS);
        let pauses: Vec<_> = (0..5).map(|_| b.pause()).collect();
        assert_eq!(pauses, [10 * MS, 20 * MS, 40 * MS, 50 * MS, 50 * MS]);
        b.reset();
        assert_eq!(b.pause(), 10 * MS);
    }

    #[test]
    fn an_immediate_first_retry_then_the_first_pause() {
        let mut b = Backoff::new(10 * MS, 50 * MS).immediate_first();
        assert_eq!(b.peek(), Duration::ZERO);
        let pauses: Vec<_> = (0..3).map(|_| b.pause()).collect();
        assert_eq!(pauses, [Duration::ZERO, 10 * MS, 20 * MS]);
    }

    #[test]
    fn jitter_stays_within_its_fraction_and_follows_the_seed() {
        let run = |seed| {
            let mut b = Backoff::new(100 * MS, 800 * MS).with_jitter(0.25, seed);
            (0..6).map(|_| b.pause()).collect::<Vec<_>>()
        };
        let plain: Vec<_> = {
            let mut b = Backoff::new(100 * MS, 800 * MS);
            (0..6).map(|_| b.pause()).collect()
        };
        let a = run(7);
        assert_eq!(a, run(7));
        assert_ne!(a, run(8));
        // Clients with different seeds spread out.
        let firsts: std::collections::BTreeSet<Duration> =
            (0..64).map(|seed| run(seed)[0]).collect();
        assert!(firsts.len() > 32, "{firsts:?}");
        for (j, p) in a.iter().zip(&plain) {
            assert!(*j >= *p && *j < p.mul_f64(1.25), "{j:?} against {p:?}");
        }
    }
}
