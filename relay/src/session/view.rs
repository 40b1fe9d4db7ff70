//! What `/sessions` shows: plain, serialisable snapshots of sessions and connections.

use std::collections::BTreeMap;

use serde::Serialize;

use super::{ConnId, Role, SessionId, SessionState};
use crate::protocol::clone::{CloneId, Stage};
use crate::protocol::decoder::Phase;

/// One connection as `/sessions` shows it.
#[derive(Debug, Clone, Serialize)]
pub struct ConnRecord {
    pub id: ConnId,
    pub peer: String,
    pub role: Role,
    pub phase: Phase,
    pub user: Option<String>,
    /// The donor's id for this connection (passed through unchanged).
    pub donor_connection_id: Option<u32>,
    pub opened_at_ms: u64,
    pub closed_at_ms: Option<u64>,
    pub bytes_from_downstream: u64,
    pub bytes_from_upstream: u64,
    pub data_bytes: u64,
    pub close_reason: Option<String>,
}

/// A resume of a session.
#[derive(Debug, Clone, Serialize)]
pub struct ResumeRecord {
    /// Since the session started.
    pub at_ms: u64,
    /// From losing the main connection to the REINIT.
    pub outage_ms: u64,
    /// From losing the main connection to the first data after the REINIT.
    pub resumed_after_ms: Option<u64>,
    /// Data bytes the donor sent again after this resume (blocks already carried once).
    pub resent_bytes: u64,
}

/// A state or stage change, in order.
#[derive(Debug, Clone, Serialize)]
pub struct Change<T> {
    pub to: T,
    /// Since the session started.
    pub at_ms: u64,
}

/// Progress of the current stage, from the donor's STATE descriptors (which carry each stage's
/// estimated bytes when it starts).
#[derive(Debug, Clone, Serialize)]
pub struct Progress {
    pub stage: Stage,
    pub estimate_bytes: Option<u64>,
    pub done_bytes: u64,
    /// Of the stage's estimate; 100 once the clone completed.
    pub percent: Option<f64>,
    pub eta_secs: Option<f64>,
}

/// The donor's error that ended a session.
#[derive(Debug, Clone, Serialize)]
pub struct CloneErrorView {
    pub errno: i32,
    pub message: String,
}

/// One clone session as `/sessions` shows it.
#[derive(Debug, Clone, Serialize)]
pub struct SessionView {
    pub id: SessionId,
    pub clone: Option<CloneId>,
    pub upstream: String,
    pub state: SessionState,
    pub started_at_ms: u64,
    pub ended_at_ms: Option<u64>,
    pub duration_ms: u64,
    pub bytes_from_downstream: u64,
    pub bytes_from_upstream: u64,
    pub data_bytes: u64,
    /// Data bytes by the stage they belong to.
    pub stage_bytes: BTreeMap<Stage, u64>,
    pub resent_bytes: u64,
    pub rate_bytes_per_sec: f64,
    pub resume_count: usize,
    pub resumes: Vec<ResumeRecord>,
    /// How long the donor waits for a resume (its `clone_donor_timeout_after_network_failure`).
    pub donor_resume_timeout_secs: Option<u64>,
    pub progress: Option<Progress>,
    pub error: Option<CloneErrorView>,
    pub history: Vec<Change<SessionState>>,
    pub stages: Vec<Change<Stage>>,
    pub connections: Vec<ConnRecord>,
}

/// Everything `/sessions` returns.
#[derive(Debug, Clone, Serialize)]
pub struct SessionsView {
    pub sessions: Vec<SessionView>,
    /// Live connections not (yet) in a clone session.
    pub unassigned: Vec<ConnRecord>,
    /// Recent connections closed for a protocol breach or a timeout.
    pub rejected: Vec<ConnRecord>,
}
