//! What `/sessions` shows: plain, serialisable snapshots of sessions and connections.

use std::collections::BTreeMap;

use std::collections::HashMap;

use serde::Serialize;
use tokio::time::Instant;

use super::state::{
    Change, CloneErrorView, ConnRecord, Detection, DonorGaps, LiveConn, ResumeRecord, Session,
    SessionState,
};
use super::{ConnId, Registry, SessionId};
use crate::limit::PairView;
use crate::protocol::clone::{CloneId, Stage};

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
    pub resume_count: u64,
    /// The latest resumes (older ones are counted in `resume_count` only).
    pub resumes: Vec<ResumeRecord>,
    /// What the relay found when connections went silent (the latest ones).
    pub detections: Vec<Detection>,
    /// The longest gaps between donor bytes on the session's closed connections.
    pub donor_gaps: DonorGaps,
    /// How long the donor waits for a resume (its `clone_donor_timeout_after_network_failure`).
    pub donor_resume_timeout_secs: Option<u64>,
    pub progress: Option<Progress>,
    pub error: Option<CloneErrorView>,
    /// The clone protocol version the donor chose, e.g. `0x0103`.
    pub protocol_version: Option<String>,
    /// Why the relay stopped following a connection of this session; its bytes were carried.
    pub not_followed: Option<String>,
    pub history: Vec<Change<SessionState>>,
    pub stages: Vec<Change<Stage>>,
    /// Milliseconds the donor may still hold this clone for a resume that will not come (a link
    /// that failed after the clone completed, or a resume that never came).
    pub donor_holds_for_ms: Option<u64>,
    /// Live connections and the latest closed ones.
    pub connections: Vec<ConnRecord>,
    /// Closed connections no longer listed.
    pub connections_not_listed: u64,
    /// The session's bandwidth caps and what they let through, while it has live connections.
    pub bandwidth: Option<PairView>,
}

/// A donor that may still hold a clone whose recipient will not resume it: new clones go to
/// another free donor until then.
#[derive(Debug, Clone, Serialize)]
pub struct StaleDonorView {
    pub upstream: String,
    pub session: SessionId,
    pub holds_for_ms: u64,
}

/// Everything `/sessions` returns.
#[derive(Debug, Clone, Serialize)]
pub struct SessionsView {
    pub sessions: Vec<SessionView>,
    /// Live connections not (yet) in a clone session.
    pub unassigned: Vec<ConnRecord>,
    /// Recent connections closed for a protocol breach or a timeout.
    pub rejected: Vec<ConnRecord>,
    /// Donors that may still hold a clone nobody will resume.
    pub stale_donors: Vec<StaleDonorView>,
}

impl Registry {
    /// Live and recent sessions, unassigned and rejected connections, stale donors. Reading
    /// changes nothing: expiry runs on its own clock ([`Registry::expire_now`]).
    pub fn view(&self) -> SessionsView {
        let now = Instant::now();
        let inner = self.lock();
        let inner = &*inner;
        SessionsView {
            sessions: inner
                .sessions
                .values()
                .map(|s| s.view(&inner.conns, now))
                .collect(),
            unassigned: inner
                .conns
                .values()
                .filter(|c| c.session.is_none())
                .map(LiveConn::snapshot)
                .collect(),
            rejected: inner.rejected.iter().cloned().collect(),
            stale_donors: inner
                .sessions
                .values()
                .filter_map(|s| stale_donor(s, now))
                .collect(),
        }
    }

    /// Session counts by state, and the donors holding a stale clone, for `/metrics`.
    pub fn count_by_state(&self) -> BTreeMap<&'static str, u64> {
        let inner = self.lock();
        let mut counts: BTreeMap<&'static str, u64> =
            SessionState::ALL.iter().map(|s| (s.as_str(), 0)).collect();
        for s in inner.sessions.values() {
            *counts.entry(s.state.as_str()).or_default() += 1;
        }
        counts
    }

    /// Donors that may still hold a clone nobody will resume.
    pub fn stale_donors(&self) -> Vec<StaleDonorView> {
        let now = Instant::now();
        let inner = self.lock();
        inner
            .sessions
            .values()
            .filter_map(|s| stale_donor(s, now))
            .collect()
    }
}

fn stale_donor(s: &Session, now: Instant) -> Option<StaleDonorView> {
    let until = s
        .donor_holds_until
        .filter(|&t| s.state.ended() && t > now)?;
    Some(StaleDonorView {
        upstream: s.upstream.clone(),
        session: s.id,
        holds_for_ms: until.duration_since(now).as_millis() as u64,
    })
}

impl Session {
    fn view(&self, conns: &HashMap<ConnId, LiveConn>, now: Instant) -> SessionView {
        let mut connections: Vec<ConnRecord> = self.closed.items.iter().cloned().collect();
        connections.extend(
            self.live
                .iter()
                .filter_map(|id| conns.get(id))
                .map(LiveConn::snapshot),
        );
        connections.sort_by_key(|c| c.id);
        let end = self.ended.unwrap_or(now);
        let duration = end.duration_since(self.started);
        let rate = if self.state.ended() {
            self.data_bytes as f64 / duration.as_secs_f64().max(1e-3)
        } else {
            self.rate.rate()
        };
        SessionView {
            id: self.id,
            clone: self.clone,
            upstream: self.upstream.clone(),
            state: self.state,
            started_at_ms: self.started_at_ms,
            ended_at_ms: self.ended_at_ms,
            duration_ms: duration.as_millis() as u64,
            bytes_from_downstream: connections.iter().map(|c| c.bytes_from_downstream).sum(),
            bytes_from_upstream: connections.iter().map(|c| c.bytes_from_upstream).sum(),
            data_bytes: self.data_bytes,
            stage_bytes: self.stage_bytes.clone(),
            resent_bytes: self.resent_bytes,
            rate_bytes_per_sec: rate,
            resume_count: self.resumes.total(),
            resumes: self.resumes.items.iter().cloned().collect(),
            detections: self.detections.items.iter().cloned().collect(),
            donor_gaps: self.donor_gaps,
            donor_resume_timeout_secs: self.donor_patience.map(|d| d.as_secs()),
            progress: self.progress(rate),
            error: self.error.clone(),
            protocol_version: self.protocol_version.map(|v| format!("{v:#06x}")),
            not_followed: self.not_followed.clone(),
            history: self.history.items.iter().cloned().collect(),
            stages: self.stages.clone(),
            donor_holds_for_ms: stale_donor(self, now).map(|d| d.holds_for_ms),
            connections,
            connections_not_listed: self.closed.dropped,
            bandwidth: None,
        }
    }

    /// Progress of the current stage against the donor's estimate for it.
    fn progress(&self, rate: f64) -> Option<Progress> {
        let stage = self.stage?;
        let estimate = self.estimates.get(&stage).copied();
        let done = self.stage_bytes.get(&stage).copied().unwrap_or(0);
        let percent = if self.state == SessionState::Completed {
            Some(100.0)
        } else {
            estimate
                .filter(|&e| e > 0)
                .map(|e| (done as f64 * 100.0 / e as f64).min(100.0))
        };
        let left = estimate.map(|e| e.saturating_sub(done) as f64);
        Some(Progress {
            stage,
            estimate_bytes: estimate,
            done_bytes: done,
            percent,
            eta_secs: left
                .filter(|_| rate > 0.0 && !self.state.ended())
                .map(|l| l / rate),
        })
    }
}
