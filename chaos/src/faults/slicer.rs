use std::time::Duration;

use crate::fault::{Ctx, Fault, Flow, Piece, split_at};

/// Cuts writes into small pieces with a pause between them, so the reader sees the stream
/// fragmented at arbitrary points.
#[derive(Debug)]
pub struct Slicer {
    pub average_bytes: usize,
    pub variation_bytes: usize,
    pub delay: Duration,
}

impl Fault for Slicer {
    fn apply(&mut self, ctx: &Ctx<'_>, pieces: Vec<Piece>) -> Flow {
        let mut out = Vec::new();
        let mut rest = pieces;
        let mut offset = ctx.offset;
        while !rest.is_empty() {
            let spread = ctx.rng.spread(offset, self.variation_bytes as u64);
            let size = (self.average_bytes as i64 + spread).max(1) as usize;
            let (mut head, tail) = split_at(rest, size);
            rest = tail;
            offset += head.iter().map(|p| p.bytes.len() as u64).sum::<u64>();
            if !out.is_empty()
                && let Some(first) = head.first_mut()
            {
                first.pause += self.delay;
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
    use tokio::time::Instant;

    #[test]
    fn slices_without_losing_bytes() {
        let t0 = Instant::now();
        let mut f = Slicer {
            average_bytes: 100,
            variation_bytes: 20,
            delay: Duration::from_micros(50),
        };
        let flow = apply(&mut f, always(t0), t0, 0, 10_000);
        assert_eq!(total(&flow), 10_000);
        assert!(flow.pieces.len() >= 80, "{}", flow.pieces.len());
        assert!(
            flow.pieces
                .iter()
                .all(|p| (80..=120).contains(&p.bytes.len())
                    || p.bytes.len() < 80 && std::ptr::eq(p, flow.pieces.last().unwrap()))
        );
        let bytes: Vec<u8> = flow.pieces.iter().flat_map(|p| p.bytes.to_vec()).collect();
        assert_eq!(bytes, (0..10_000).map(|i| i as u8).collect::<Vec<_>>());
    }
}
