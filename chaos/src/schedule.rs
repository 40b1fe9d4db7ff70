//! Activation: a fault built from its spec for one direction of one connection, with its
//! toxicity, target, trigger and duration. This is the one module that knows both the fault
//! machinery ([`crate::fault`]) and the faults ([`crate::faults`]); neither imports it.

use std::time::Duration;

use tokio::time::Instant;

use crate::fault::{
    ConnInfo, Ctx, Cut, Decision, DecisionLog, Fault, Flow, Piece, SharedBuckets, Window, split_at,
};
use crate::faults;
use crate::rng::Rng;
use crate::spec::{Direction, FaultSpec};

/// A fault with its activation on one direction of one connection.
#[derive(Debug)]
pub struct Scheduled {
    pub id: u64,
    pub spec: FaultSpec,
    fault: Box<dyn Fault>,
    /// False when toxicity or target left this connection out.
    applies: bool,
    window: Option<Window>,
    /// For a byte trigger: the offset at which the window opens.
    armed_at: Option<u64>,
    rng: Rng,
    label: String,
}

/// Everything a fault needs when it is set up on a connection.
#[derive(Debug, Clone, Copy)]
pub struct Setup<'a> {
    pub seed: u64,
    pub conn: &'a ConnInfo,
    pub direction: Direction,
    pub proxy_start: Instant,
    pub conn_start: Instant,
    pub buckets: &'a SharedBuckets,
    pub log: &'a DecisionLog,
}

impl Scheduled {
    pub fn new(id: u64, spec: FaultSpec, setup: Setup<'_>) -> Self {
        let dir_key = match setup.direction {
            Direction::Upstream => 1,
            _ => 2,
        };
        let rng = Rng::new(setup.seed, setup.conn.index, dir_key, id);
        let targeted =
            spec.target
                .connections
                .as_ref()
                .is_none_or(|c| c.contains(&setup.conn.index))
                && spec.target.roles.as_ref().is_none_or(|roles| {
                    setup.conn.role.as_ref().is_some_and(|r| roles.contains(r))
                });
        let toxic = spec.toxicity >= 1.0 || rng.chance(u64::MAX, spec.toxicity);
        let applies = spec.direction.includes(setup.direction) && targeted && toxic;
        let label = spec.label();
        if applies {
            setup.log.record(Decision {
                connection: setup.conn.index,
                direction: setup.direction,
                fault: label.clone(),
                offset: 0,
                what: "applies".into(),
            });
        }
        // The trigger names a moment; the fault lasts from there. A connection opened later
        // meets the rest of that window (a schedule is one outage for everyone), not a window
        // of its own.
        let duration = spec.duration_ms.map(Duration::from_millis);
        // Without a trigger a fault starts when it is set up: with the connection, or, for a
        // fault added to live connections, now.
        let mut start = Instant::now().max(setup.conn_start);
        if let Some(at) = spec.trigger.at_ms {
            start = setup.proxy_start + Duration::from_millis(at);
        }
        if let Some(after) = spec.trigger.after_ms {
            start = start.max(setup.conn_start + Duration::from_millis(after));
        }
        let armed_at = spec.trigger.after_bytes;
        let window = armed_at.is_none().then(|| Window {
            from: start.max(setup.conn_start),
            until: duration.map(|d| start + d),
        });
        Scheduled {
            id,
            fault: faults::build(&spec.fault, setup.buckets),
            spec,
            applies,
            window,
            armed_at,
            rng,
            label,
        }
    }

    /// Applies the fault to a chunk read at `arrived` whose first byte is at `offset`.
    pub fn apply(
        &mut self,
        log: &DecisionLog,
        conn: u64,
        dir: Direction,
        arrived: Instant,
        offset: u64,
        pieces: Vec<Piece>,
    ) -> Flow {
        if !self.applies {
            return Flow::pass(pieces);
        }
        let len: u64 = pieces.iter().map(|p| p.bytes.len() as u64).sum();
        // A byte trigger opens the window at the chunk that reaches it; bytes before it pass.
        let mut before = Vec::new();
        let mut pieces = pieces;
        let mut offset = offset;
        if let Some(at) = self.armed_at {
            if offset + len <= at {
                return Flow::pass(pieces);
            }
            if offset < at {
                let (head, tail) = split_at(pieces, (at - offset) as usize);
                before = head;
                pieces = tail;
                offset = at;
            }
            self.armed_at = None;
            let duration = self.spec.duration_ms.map(Duration::from_millis);
            self.window = Some(Window {
                from: arrived,
                until: duration.map(|d| arrived + d),
            });
        }
        let Some(window) = self.window else {
            return Flow::pass(pieces);
        };
        // A paced fault is judged as the bytes leave (now), others as they arrived.
        let judged_at = if self.fault.pace_bytes().is_some() {
            Instant::now().max(arrived)
        } else {
            arrived
        };
        if !window.contains(judged_at) {
            before.extend(pieces);
            return Flow::pass(before);
        }
        let ctx = Ctx {
            arrived,
            offset,
            window,
            rng: self.rng,
            log,
            connection: conn,
            direction: dir,
            label: &self.label,
        };
        let mut flow = self.fault.apply(&ctx, pieces);
        before.append(&mut flow.pieces);
        flow.pieces = before;
        flow
    }

    /// The piece size a paced fault takes at a time, if it is one and applies here.
    pub fn pace_bytes(&self) -> Option<usize> {
        self.applies.then(|| self.fault.pace_bytes()).flatten()
    }

    pub fn due_cut(&self, now: Instant) -> Option<(Instant, Cut)> {
        match (self.applies, self.window) {
            (true, Some(window)) => self
                .fault
                .due_cut(now, window)
                .filter(|(at, _)| window.until.is_none_or(|u| *at < u)),
            _ => None,
        }
    }

    pub fn close_delay(&self) -> Duration {
        if self.applies {
            self.fault.close_delay()
        } else {
            Duration::ZERO
        }
    }
}
