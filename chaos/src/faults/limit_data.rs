use crate::fault::{Ctx, Cut, Fault, Flow, Piece, split_at};

/// Closes the connection once `limit` bytes have passed (counted from when the fault became
/// active); exactly `limit` bytes get through.
#[derive(Debug)]
pub struct LimitData {
    pub limit: u64,
    pub passed: u64,
}

impl Fault for LimitData {
    fn apply(&mut self, ctx: &Ctx<'_>, pieces: Vec<Piece>) -> Flow {
        let len: u64 = pieces.iter().map(|p| p.bytes.len() as u64).sum();
        let left = self.limit - self.passed;
        if len < left {
            self.passed += len;
            return Flow::pass(pieces);
        }
        let (head, _) = split_at(pieces, left as usize);
        self.passed = self.limit;
        ctx.decide(ctx.offset + left, "limit reached");
        Flow {
            pieces: head,
            then: Some(Cut::Close),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::faults::testing::*;
    use tokio::time::Instant;

    #[test]
    fn passes_exactly_the_limit_then_closes() {
        let t0 = Instant::now();
        let mut f = LimitData {
            limit: 2500,
            passed: 0,
        };
        let first = apply(&mut f, always(t0), t0, 0, 1000);
        assert_eq!((total(&first), first.then), (1000, None));
        let second = apply(&mut f, always(t0), t0, 1000, 1000);
        assert_eq!((total(&second), second.then), (1000, None));
        let third = apply(&mut f, always(t0), t0, 2000, 1000);
        assert_eq!((total(&third), third.then), (500, Some(Cut::Close)));
    }
}
