//! Seeded, keyed randomness. A decision is a pure function of the run's seed, the connection,
//! the direction, the fault and a key such as a byte offset, so the same seed and the same
//! traffic give the same decisions however the bytes happen to be split into reads.

/// SplitMix64's finaliser: a good 64-bit mix.
fn mix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// The random stream of one fault on one direction of one connection.
#[derive(Debug, Clone, Copy)]
pub struct Rng {
    base: u64,
}

impl Rng {
    /// The stream for `(seed, connection, direction, fault)`.
    pub fn new(seed: u64, connection: u64, direction: u64, fault: u64) -> Self {
        Rng {
            base: mix(mix(mix(mix(seed) ^ connection) ^ direction) ^ fault),
        }
    }

    /// A value in `0..u64::MAX` for `key`.
    pub fn at(&self, key: u64) -> u64 {
        mix(self.base ^ mix(key))
    }

    /// A value in `[0, 1)` for `key`.
    pub fn unit(&self, key: u64) -> f64 {
        (self.at(key) >> 11) as f64 / (1u64 << 53) as f64
    }

    /// True with probability `p` for `key`.
    pub fn chance(&self, key: u64, p: f64) -> bool {
        self.unit(key) < p
    }

    /// A value in `[-spread, spread]` for `key`.
    pub fn spread(&self, key: u64, spread: u64) -> i64 {
        if spread == 0 {
            return 0;
        }
        (self.at(key) % (2 * spread + 1)) as i64 - spread as i64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_inputs_same_values() {
        let a = Rng::new(7, 1, 0, 3);
        let b = Rng::new(7, 1, 0, 3);
        let c = Rng::new(8, 1, 0, 3);
        assert_eq!(a.at(42), b.at(42));
        assert_ne!(a.at(42), c.at(42));
        assert_ne!(a.at(42), a.at(43));
    }

    #[test]
    fn chance_matches_its_probability() {
        let r = Rng::new(1, 2, 3, 4);
        let hits = (0..100_000).filter(|&k| r.chance(k, 0.05)).count();
        assert!((4_500..5_500).contains(&hits), "{hits}");
        assert!((0..1000).all(|k| r.spread(k, 10).abs() <= 10));
    }
}
