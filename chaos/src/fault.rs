//! The fault trait, and what faults work on: the pieces of each chunk read from one side, each
//! with the earliest time it may be written to the other.
//!
//! A fault may delay pieces (latency, bandwidth, loss, blackhole), split them (slicer), or end
//! the connection (reset, timeout, limit_data, flap) now or at a time of its own, traffic or not.
//! This module knows no fault in particular: [`crate::faults`] implements them, and
//! [`crate::schedule`] wraps one with its activation.

use std::collections::HashMap;
use std::fmt::Debug;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::time::Instant;

use bytes::Bytes;
use serde::Serialize;

use crate::rng::Rng;
use crate::spec::Direction;

/// Bytes on their way: the earliest time they may be written, and a pause to take just before
/// writing them (a stall that counts from when the writer gets to them, as a retransmission
/// timeout does).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Piece {
    pub bytes: Bytes,
    pub not_before: Instant,
    pub pause: Duration,
}

impl Piece {
    pub fn new(bytes: Bytes, not_before: Instant) -> Self {
        Piece {
            bytes,
            not_before,
            pause: Duration::ZERO,
        }
    }
}

/// How a fault ends a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Cut {
    /// RST on both sides (zero linger).
    Reset,
    /// FIN on both sides.
    Close,
}

/// What a fault makes of the pieces of a chunk: the pieces to write, then maybe an end.
#[derive(Debug, Default)]
pub struct Flow {
    pub pieces: Vec<Piece>,
    pub then: Option<Cut>,
}

impl Flow {
    pub fn pass(pieces: Vec<Piece>) -> Self {
        Flow { pieces, then: None }
    }
}

/// When a fault is active on a connection: from `from`, until `until` (or for good).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Window {
    pub from: Instant,
    pub until: Option<Instant>,
}

impl Window {
    pub fn contains(&self, t: Instant) -> bool {
        t >= self.from && self.until.is_none_or(|u| t < u)
    }

    /// The window's end, or a time far enough away to mean "never".
    pub fn end(&self) -> Instant {
        self.until
            .unwrap_or_else(|| self.from + Duration::from_secs(100 * 365 * 86_400))
    }
}

/// One fault decision, for the replay log.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Decision {
    pub connection: u64,
    pub direction: Direction,
    pub fault: String,
    /// Stream offset (in the fault's direction) the decision applies at.
    pub offset: u64,
    pub what: String,
}

/// The decisions of a run, bounded.
#[derive(Debug, Default)]
pub struct DecisionLog {
    entries: Mutex<Vec<Decision>>,
}

const MAX_DECISIONS: usize = 100_000;

impl DecisionLog {
    pub fn record(&self, d: Decision) {
        let mut entries = self.entries.lock().expect("decision log lock");
        if entries.len() < MAX_DECISIONS {
            entries.push(d);
        }
    }

    pub fn entries(&self) -> Vec<Decision> {
        self.entries.lock().expect("decision log lock").clone()
    }
}

/// What a fault knows when it acts.
#[derive(Debug)]
pub struct Ctx<'a> {
    /// When the chunk was read from its source.
    pub arrived: Instant,
    /// Offset of the first byte of the pieces in this direction's stream.
    pub offset: u64,
    /// When the fault is active.
    pub window: Window,
    pub rng: Rng,
    pub(crate) log: &'a DecisionLog,
    pub(crate) connection: u64,
    pub(crate) direction: Direction,
    pub(crate) label: &'a str,
}

impl Ctx<'_> {
    /// Records a decision at `offset`.
    pub fn decide(&self, offset: u64, what: impl Into<String>) {
        self.log.record(Decision {
            connection: self.connection,
            direction: self.direction,
            fault: self.label.to_string(),
            offset,
            what: what.into(),
        });
    }
}

/// One kind of fault acting on one direction of one connection.
pub trait Fault: Send + Debug {
    /// Delays, splits or holds the pieces of one chunk (all inside the active window), or ends
    /// the connection after some of them.
    fn apply(&mut self, ctx: &Ctx<'_>, pieces: Vec<Piece>) -> Flow;

    /// An end this fault brings at a time of its own, traffic or not.
    fn due_cut(&self, _now: Instant, _window: Window) -> Option<(Instant, Cut)> {
        None
    }

    /// Extra wait before the end of the source's stream is passed on.
    fn close_delay(&self) -> Duration {
        Duration::ZERO
    }

    /// For a fault judged as bytes leave (a rate cap): the piece size the link hands it, one
    /// piece at a time, its window checked as each piece leaves. Connections sharing a cap then
    /// take turns piece by piece, as flows on a real link do, and the cap ends with its window
    /// rather than with the bytes queued while it lasted.
    fn pace_bytes(&self) -> Option<usize> {
        None
    }
}

/// Bandwidth buckets shared by name across connections.
#[derive(Debug, Default)]
pub struct SharedBuckets {
    buckets: Mutex<HashMap<String, Arc<Mutex<Option<Instant>>>>>,
}

impl SharedBuckets {
    /// The bucket (next free send time) of a group.
    pub fn get(&self, group: &str) -> Arc<Mutex<Option<Instant>>> {
        self.buckets
            .lock()
            .expect("buckets lock")
            .entry(group.to_string())
            .or_default()
            .clone()
    }
}

/// Who a connection is, for targeting.
#[derive(Debug, Clone, Default)]
pub struct ConnInfo {
    /// 1 for the first connection.
    pub index: u64,
    /// The clone role, where the embedder knows it.
    pub role: Option<String>,
}

/// Splits pieces at `n` bytes: those before, those from there on.
pub fn split_at(pieces: Vec<Piece>, mut n: usize) -> (Vec<Piece>, Vec<Piece>) {
    let mut head = Vec::new();
    let mut tail = Vec::new();
    for p in pieces {
        if n == 0 {
            tail.push(p);
        } else if p.bytes.len() <= n {
            n -= p.bytes.len();
            head.push(p);
        } else {
            let mut bytes = p.bytes;
            let rest = bytes.split_off(n);
            head.push(Piece {
                bytes,
                not_before: p.not_before,
                pause: p.pause,
            });
            tail.push(Piece::new(rest, p.not_before));
            n = 0;
        }
    }
    (head, tail)
}
