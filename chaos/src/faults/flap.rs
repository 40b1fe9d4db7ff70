use std::time::Duration;

use tokio::time::Instant;

use crate::fault::{Ctx, Cut, Fault, Flow, Piece, Window};
use crate::spec::FlapMode;

/// The link goes down for `down` at the end of every `period` (counted from when the fault
/// became active), as resets or as blackholes.
#[derive(Debug)]
pub struct Flap {
    pub period: Duration,
    pub down: Duration,
    pub mode: FlapMode,
}

impl Flap {
    /// The down window containing `t`, or the next one: (start, end).
    fn down_window(&self, from: Instant, t: Instant) -> (Instant, Instant) {
        let up = self.period - self.down;
        let since = t.saturating_duration_since(from);
        let cycle = (since.as_nanos() / self.period.as_nanos()) as u32;
        let start = from + self.period * cycle + up;
        if t >= start + self.down {
            (start + self.period, start + self.period + self.down)
        } else {
            (start, start + self.down)
        }
    }
}

impl Fault for Flap {
    fn apply(&mut self, ctx: &Ctx<'_>, mut pieces: Vec<Piece>) -> Flow {
        // A piece is on the link when it is due to be written (after earlier faults' delays).
        let down_at = |p: &Piece| {
            let t = p.not_before.max(ctx.arrived);
            let (start, end) = self.down_window(ctx.window.from, t);
            (t >= start).then_some(end)
        };
        match self.mode {
            FlapMode::Blackhole => {
                for p in &mut pieces {
                    if let Some(end) = down_at(p) {
                        p.not_before = end;
                    }
                }
                Flow::pass(pieces)
            }
            FlapMode::Reset if pieces.iter().any(|p| down_at(p).is_some()) => {
                ctx.decide(ctx.offset, "link down: reset");
                Flow {
                    pieces: Vec::new(),
                    then: Some(Cut::Reset),
                }
            }
            FlapMode::Reset => Flow::pass(pieces),
        }
    }

    fn due_cut(&self, now: Instant, window: Window) -> Option<(Instant, Cut)> {
        match self.mode {
            FlapMode::Reset => Some((self.down_window(window.from, now).0.max(now), Cut::Reset)),
            FlapMode::Blackhole => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::faults::testing::*;

    #[test]
    fn windows_repeat_every_period() {
        let t0 = Instant::now();
        let f = Flap {
            period: 1000 * MS,
            down: 200 * MS,
            mode: FlapMode::Blackhole,
        };
        assert_eq!(f.down_window(t0, t0), (t0 + 800 * MS, t0 + 1000 * MS));
        assert_eq!(
            f.down_window(t0, t0 + 900 * MS),
            (t0 + 800 * MS, t0 + 1000 * MS)
        );
        assert_eq!(
            f.down_window(t0, t0 + 1000 * MS),
            (t0 + 1800 * MS, t0 + 2000 * MS)
        );
    }

    #[test]
    fn blackhole_mode_holds_and_reset_mode_cuts() {
        let t0 = Instant::now();
        let mut hole = Flap {
            period: 1000 * MS,
            down: 200 * MS,
            mode: FlapMode::Blackhole,
        };
        let up = apply(&mut hole, always(t0), t0 + 100 * MS, 0, 10);
        assert_eq!(up.pieces[0].not_before, t0 + 100 * MS);
        let down = apply(&mut hole, always(t0), t0 + 850 * MS, 0, 10);
        assert_eq!(down.pieces[0].not_before, t0 + 1000 * MS);
        let mut reset = Flap {
            period: 1000 * MS,
            down: 200 * MS,
            mode: FlapMode::Reset,
        };
        assert_eq!(
            apply(&mut reset, always(t0), t0 + 850 * MS, 0, 10).then,
            Some(Cut::Reset)
        );
        assert_eq!(
            reset.due_cut(t0, always(t0)),
            Some((t0 + 800 * MS, Cut::Reset))
        );
    }
}
