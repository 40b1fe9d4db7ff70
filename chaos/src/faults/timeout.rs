use std::time::Duration;

use tokio::time::Instant;

use crate::fault::{Ctx, Cut, Fault, Flow, Piece, Window};

/// Bytes stop; after `timeout` the connection is closed.
#[derive(Debug)]
pub struct Timeout {
    pub timeout: Duration,
}

impl Fault for Timeout {
    fn apply(&mut self, ctx: &Ctx<'_>, mut pieces: Vec<Piece>) -> Flow {
        let hold = ctx.window.end();
        for p in &mut pieces {
            p.not_before = p.not_before.max(hold);
        }
        Flow::pass(pieces)
    }

    fn due_cut(&self, _now: Instant, window: Window) -> Option<(Instant, Cut)> {
        Some((window.from + self.timeout, Cut::Close))
    }
}
