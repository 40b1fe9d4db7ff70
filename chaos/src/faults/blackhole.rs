use crate::fault::{Ctx, Fault, Flow, Piece};

/// Bytes stop and nothing is closed until the fault ends; then they flow again, none lost.
#[derive(Debug)]
pub struct Blackhole;

impl Fault for Blackhole {
    fn apply(&mut self, ctx: &Ctx<'_>, mut pieces: Vec<Piece>) -> Flow {
        let end = ctx.window.end();
        for p in &mut pieces {
            p.not_before = p.not_before.max(end);
        }
        Flow::pass(pieces)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fault::Window;
    use crate::faults::testing::*;
    use tokio::time::Instant;

    #[test]
    fn holds_until_the_window_ends() {
        let t0 = Instant::now();
        let window = Window {
            from: t0,
            until: Some(t0 + 500 * MS),
        };
        let flow = apply(&mut Blackhole, window, t0 + 10 * MS, 0, 1000);
        assert_eq!(flow.pieces[0].not_before, t0 + 500 * MS);
        assert_eq!(total(&flow), 1000);
        assert!(flow.then.is_none());
    }
}
