use std::time::Duration;

use crate::fault::{Ctx, Fault, Flow, Piece, split_at};

/// Emulated packet loss on a stream: the stream is seen as segments of `segment_bytes`; each is,
/// with `probability`, held back for `retransmit` before it is written, as TCP stalls until a
/// lost segment is sent again. No byte is dropped or reordered. The decision for a segment
/// depends only on the seed and the segment's offset.
#[derive(Debug)]
pub struct Loss {
    pub probability: f64,
    pub segment_bytes: u64,
    pub retransmit: Duration,
}

impl Fault for Loss {
    fn apply(&mut self, ctx: &Ctx<'_>, pieces: Vec<Piece>) -> Flow {
        let len: u64 = pieces.iter().map(|p| p.bytes.len() as u64).sum();
        let end = ctx.offset + len;
        // Segments that start inside this chunk.
        let first = ctx.offset.div_ceil(self.segment_bytes);
        let mut out = Vec::new();
        let mut rest = pieces;
        let mut at = ctx.offset;
        let mut segment = first;
        while segment * self.segment_bytes < end {
            let start = segment * self.segment_bytes;
            if ctx.rng.chance(segment, self.probability) {
                let (head, mut tail) = split_at(rest, (start - at) as usize);
                out.extend(head);
                if let Some(p) = tail.first_mut() {
                    p.pause += self.retransmit;
                }
                ctx.decide(start, "segment lost");
                rest = tail;
                at = start;
            }
            segment += 1;
        }
        out.extend(rest);
        Flow::pass(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::faults::testing::*;
    use tokio::time::Instant;

    #[test]
    fn stalls_about_p_of_segments_and_keeps_every_byte() {
        let t0 = Instant::now();
        let mut f = Loss {
            probability: 0.05,
            segment_bytes: 1000,
            retransmit: 200 * MS,
        };
        let flow = apply(&mut f, always(t0), t0, 0, 1_000_000);
        assert_eq!(total(&flow), 1_000_000);
        let stalls = flow.pieces.iter().filter(|p| p.pause == 200 * MS).count();
        assert!((30..=75).contains(&stalls), "{stalls}");
        let bytes: Vec<u8> = flow.pieces.iter().flat_map(|p| p.bytes.to_vec()).collect();
        assert_eq!(bytes, (0..1_000_000).map(|i| i as u8).collect::<Vec<_>>());
    }

    #[test]
    fn decisions_do_not_depend_on_chunking() {
        let t0 = Instant::now();
        let stalls_at = |chunk: usize| {
            let mut f = Loss {
                probability: 0.1,
                segment_bytes: 100,
                retransmit: MS,
            };
            let mut offsets = Vec::new();
            for i in 0..(100_000 / chunk) {
                let offset = (i * chunk) as u64;
                let flow = apply(&mut f, always(t0), t0, offset, chunk);
                let mut at = offset;
                for p in &flow.pieces {
                    if p.pause > Duration::ZERO {
                        offsets.push(at);
                    }
                    at += p.bytes.len() as u64;
                }
            }
            offsets
        };
        assert_eq!(stalls_at(1000), stalls_at(625));
        assert_eq!(stalls_at(1000), stalls_at(250));
    }
}
