use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::time::Instant;

use crate::fault::{Ctx, Fault, Flow, Piece, split_at};

/// Pieces are cut to a sixteenth of a second at the cap, between these sizes, so that a cap
/// paces the stream smoothly: a slow link delivers a little at a time, as a real one delivers
/// packets, rather than a large piece after a long wait.
const MIN_QUANTUM: usize = 512;
const MAX_QUANTUM: usize = 16 * 1024;

/// The piece size for a cap of `rate` bytes per second.
fn quantum(rate: u64) -> usize {
    ((rate / 16) as usize).clamp(MIN_QUANTUM, MAX_QUANTUM)
}

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
        let quantum = quantum(self.rate_bytes_per_sec);
        while !rest.is_empty() {
            let (mut head, tail) = split_at(rest, quantum);
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

    fn pace_bytes(&self) -> Option<usize> {
        Some(quantum(self.rate_bytes_per_sec))
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

    #[test]
    fn a_slow_cap_delivers_small_pieces_often() {
        let t0 = Instant::now();
        let mut slow = Bandwidth {
            rate_bytes_per_sec: 4096,
            bucket: Arc::new(Mutex::new(None)),
        };
        let flow = apply(&mut slow, always(t0), t0, 0, 8192);
        // 512-byte pieces, one every 125 ms, rather than one 8 KiB piece after 2 s.
        assert_eq!(flow.pieces.len(), 16);
        let first = flow.pieces[0].not_before - t0;
        assert!((124..=126).contains(&first.as_millis()), "{first:?}");
        assert_eq!(total(&flow), 8192);
    }
}
