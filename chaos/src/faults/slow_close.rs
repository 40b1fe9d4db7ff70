use std::time::Duration;

use crate::fault::{Ctx, Fault, Flow, Piece};

/// Passes the end of the stream on `delay` late.
#[derive(Debug)]
pub struct SlowClose {
    pub delay: Duration,
}

impl Fault for SlowClose {
    fn apply(&mut self, _ctx: &Ctx<'_>, pieces: Vec<Piece>) -> Flow {
        Flow::pass(pieces)
    }

    fn close_delay(&self) -> Duration {
        self.delay
    }
}
