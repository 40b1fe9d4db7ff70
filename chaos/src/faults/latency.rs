use std::time::Duration;

use crate::fault::{Ctx, Fault, Flow, Piece};

/// Delays each chunk by a fixed latency plus jitter; the stream stays pipelined (later chunks
/// are read meanwhile), as on a long link.
#[derive(Debug)]
pub struct Latency {
    pub latency_ms: u64,
    pub jitter_ms: u64,
}

impl Fault for Latency {
    fn apply(&mut self, ctx: &Ctx<'_>, mut pieces: Vec<Piece>) -> Flow {
        let jitter = ctx.rng.spread(ctx.offset, self.jitter_ms);
        let delay = (self.latency_ms as i64 + jitter).max(0) as u64;
        let at = ctx.arrived + Duration::from_millis(delay);
        for p in &mut pieces {
            p.not_before = p.not_before.max(at);
        }
        Flow::pass(pieces)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::faults::testing::*;
    use tokio::time::Instant;

    #[test]
    fn delays_by_latency_within_jitter() {
        let t0 = Instant::now();
        let mut f = Latency {
            latency_ms: 50,
            jitter_ms: 10,
        };
        for offset in 0..50 {
            let flow = apply(&mut f, always(t0), t0, offset * 1000, 100);
            let d = flow.pieces[0].not_before - t0;
            assert!(d >= 40 * MS && d <= 60 * MS, "{d:?}");
            assert_eq!(total(&flow), 100);
        }
    }
}
