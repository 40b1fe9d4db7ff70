use tokio::time::Instant;

use crate::fault::{Ctx, Cut, Fault, Flow, Piece, Window};

/// Resets the connection (RST on both sides) when the fault becomes active.
#[derive(Debug)]
pub struct Reset;

impl Fault for Reset {
    fn apply(&mut self, ctx: &Ctx<'_>, _pieces: Vec<Piece>) -> Flow {
        ctx.decide(ctx.offset, "reset");
        Flow {
            pieces: Vec::new(),
            then: Some(Cut::Reset),
        }
    }

    fn due_cut(&self, _now: Instant, window: Window) -> Option<(Instant, Cut)> {
        Some((window.from, Cut::Reset))
    }
}
