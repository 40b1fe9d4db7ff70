use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::time::Instant;

use crate::fault::{Ctx, Fault, Flow, Piece, split_at};

/// Pieces are cut to this size so that a cap paces the stream smoothly.
const QUANTUM: usize = 16 * 1024;

/// A rate cap. Each piece is given the send slot the cap allows after the pieces before it; a
/// bucket shared by several connections hands out slots to all of them in turn.
#[derive(Debug)]
pub struct Bandwidth {
    pub rate_bytes_per_sec: u64,
    /// The end of the last slot handed out.
    pub bucket: Arc<Mutex<Option<Instant>>>,
}

impl Fault for Bandwidth {
    fn apply(&mut self, _ctx: &Ctx<'_>, pieces: Vec<Piece>) -> Flow {
        let mut out = Vec::with_capacity(pieces.len());
        let mut rest = pieces;
        while !rest.is_empty() {
            let (mut head, tail) = split_at(rest, QUANTUM);
            rest = tail;
            let len: usize = head.iter().map(|p| p.bytes.len()).sum();
            let mut next_free = self.bucket.lock().expect("bandwidth bucket lock");
            let ready = head.iter().map(|p| p.not_before).max().expect("non-empty");
            let start = next_free.map_or(ready, |t| t.max(ready));
            let end = start + Duration::from_secs_f64(len as f64 / self.rate_bytes_per_sec as f64);
            *next_free = Some(end);
            for p in &mut head {
                p.not_before = end;
            }
            out.extend(head);
        }
        Flow::pass(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::faults::testing::*;

    #[test]
    fn paces_to_the_rate_and_shares_a_bucket() {
        let t0 = Instant::now();
        let bucket = Arc::new(Mutex::new(None));
        let mut a = Bandwidth {
            rate_bytes_per_sec: 1_000_000,
            bucket: bucket.clone(),
        };
        let mut b = Bandwidth {
            rate_bytes_per_sec: 1_000_000,
            bucket,
        };
        let fa = apply(&mut a, always(t0), t0, 0, 100_000);
        let last_a = fa.pieces.last().unwrap().not_before - t0;
        assert!((99..=101).contains(&last_a.as_millis()), "{last_a:?}");
        assert_eq!(total(&fa), 100_000);
        // A second connection on the same bucket queues behind the first.
        let fb = apply(&mut b, always(t0), t0, 0, 100_000);
        let last_b = fb.pieces.last().unwrap().not_before - t0;
        assert!((199..=201).contains(&last_b.as_millis()), "{last_b:?}");
    }
}
