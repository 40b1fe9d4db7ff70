use std::time::Duration;

use tokio::time::Instant;

use crate::fault::{Ctx, Cut, Fault, Flow, Piece, Window, split_at};
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

/// The link goes down at every `period` bytes of the stream in the fault's direction, counted
/// from the offset where the fault became active (the stream's start for a fault in place when
/// the connection opens): a reset after exactly that many bytes, or a `down` pause before the
/// byte at the offset, the bytes after it queued behind. Where it lands depends on bytes alone,
/// never on the clock.
#[derive(Debug)]
pub struct ByteFlap {
    pub period: u64,
    pub down: Duration,
    pub mode: FlapMode,
    /// The offset the periods count from: where the first bytes in the active window began.
    pub origin: Option<u64>,
}

impl ByteFlap {
    /// The first offset at or after `at` where the link goes down.
    fn next_down(&self, origin: u64, at: u64) -> u64 {
        let periods = (at.saturating_sub(origin)).div_ceil(self.period).max(1);
        origin + periods * self.period
    }
}

impl Fault for ByteFlap {
    fn apply(&mut self, ctx: &Ctx<'_>, pieces: Vec<Piece>) -> Flow {
        let origin = *self.origin.get_or_insert(ctx.offset);
        let end = ctx.offset + pieces.iter().map(|p| p.bytes.len() as u64).sum::<u64>();
        match self.mode {
            // The bytes up to the offset get through, then the reset comes at once (not with
            // the next bytes, which may never come).
            FlapMode::Reset => {
                let down = self.next_down(origin, ctx.offset.max(origin + 1));
                if down > end {
                    return Flow::pass(pieces);
                }
                let (head, _) = split_at(pieces, (down - ctx.offset) as usize);
                ctx.decide(down, "link down: reset");
                Flow {
                    pieces: head,
                    then: Some(Cut::Reset),
                }
            }
            // The link stays down for `down` from when the writer gets to the byte at the
            // offset (a pause, so an outage is never swallowed by an earlier wait); the bytes
            // after it queue behind.
            FlapMode::Blackhole => {
                let mut out = Vec::new();
                let mut rest = pieces;
                let mut at = ctx.offset;
                let mut down = self.next_down(origin, at);
                while down < end {
                    let (head, mut tail) = split_at(rest, (down - at) as usize);
                    out.extend(head);
                    if let Some(p) = tail.first_mut() {
                        p.pause += self.down;
                    }
                    ctx.decide(down, "link down: held");
                    rest = tail;
                    at = down;
                    down += self.period;
                }
                out.extend(rest);
                Flow::pass(out)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::faults::testing::*;

    fn byte_flap(period: u64, mode: FlapMode) -> ByteFlap {
        ByteFlap {
            period,
            down: 200 * MS,
            mode,
            origin: None,
        }
    }

    #[test]
    fn byte_reset_passes_exactly_one_period_then_cuts() {
        let t0 = Instant::now();
        let mut f = byte_flap(2500, FlapMode::Reset);
        let first = apply(&mut f, always(t0), t0, 0, 1000);
        assert_eq!((total(&first), first.then), (1000, None));
        let second = apply(&mut f, always(t0), t0, 1000, 1000);
        assert_eq!((total(&second), second.then), (1000, None));
        let third = apply(&mut f, always(t0), t0, 2000, 1000);
        assert_eq!((total(&third), third.then), (500, Some(Cut::Reset)));
        // A chunk ending exactly at the offset cuts at once, without waiting for more bytes.
        let mut f = byte_flap(1000, FlapMode::Reset);
        let exact = apply(&mut f, always(t0), t0, 0, 1000);
        assert_eq!((total(&exact), exact.then), (1000, Some(Cut::Reset)));
        // It never cuts by the clock.
        assert_eq!(f.due_cut(t0 + 3600 * 1000 * MS, always(t0)), None);
    }

    #[test]
    fn byte_periods_count_from_where_the_fault_became_active() {
        let t0 = Instant::now();
        // Active from offset 700 (a byte trigger): the reset is 1000 bytes later, at 1700.
        let mut f = byte_flap(1000, FlapMode::Reset);
        let flow = apply(&mut f, always(t0), t0, 700, 5000);
        assert_eq!((total(&flow), flow.then), (1000, Some(Cut::Reset)));
    }

    #[test]
    fn byte_blackhole_holds_at_every_period_and_keeps_every_byte() {
        let t0 = Instant::now();
        let mut f = byte_flap(1000, FlapMode::Blackhole);
        let flow = apply(&mut f, always(t0), t0, 0, 3500);
        assert_eq!(total(&flow), 3500);
        let bytes: Vec<u8> = flow.pieces.iter().flat_map(|p| p.bytes.to_vec()).collect();
        assert_eq!(bytes, (0..3500).map(|i| i as u8).collect::<Vec<_>>());
        // Pieces start at 0, 1000, 2000 and 3000; a pause comes before each but the first.
        let starts: Vec<(usize, Duration)> = flow
            .pieces
            .iter()
            .scan(0, |at, p| {
                let start = *at;
                *at += p.bytes.len();
                Some((start, p.pause))
            })
            .collect();
        let held = 200 * MS;
        assert_eq!(
            starts,
            [
                (0, Duration::ZERO),
                (1000, held),
                (2000, held),
                (3000, held)
            ]
        );
        // The next chunk starts exactly at an offset: its first byte waits.
        let next = apply(&mut f, always(t0), t0, 4000, 10);
        assert_eq!(next.pieces[0].pause, held);
        let between = apply(&mut f, always(t0), t0, 4010, 10);
        assert_eq!(between.pieces[0].pause, Duration::ZERO);
    }

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
