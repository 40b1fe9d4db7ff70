//! Clone sessions: the connections of one clone (main, aux, workers, and the reconnects that
//! resume it) grouped by the clone id and snapshot id their locators carry, with the clone's
//! state, bytes, rate, resumes and progress as the wire shows them.
//!
//! Each relayed connection gets a [`ConnHandle`] that decodes its bytes and applies what it sees
//! to the shared [`Registry`], which `/sessions` and `/metrics` read. The registry holds no
//! sockets; it uses tokio's clock, so paused-time tests drive its timers.
//!
//! - [`state`]: what the registry holds (connections, sessions, bounded histories).
//! - [`admit`]: the registry's answer to admission: which donor, how long a socket may wait.
//! - [`apply`]: decoder events to state, one function per event.
//! - [`lifecycle`]: connections opening and closing, sessions starting, expiring, being reset.
//! - [`handle`]: a connection's side: decoding, recording, the data flow the stall watch reads.
//! - [`affinity`]: which donor each recipient clones from, kept in a file across restarts.
//! - [`view`]: the serialisable snapshots `/sessions` returns.

mod admit;
pub mod affinity;
mod apply;
mod flow;
mod handle;
mod lifecycle;
mod state;
mod view;

#[cfg(test)]
mod tests;

pub use admit::Admitted;
pub use apply::{ENCRYPTED_OVER_PLAIN_DONOR_LEG, ER_CLONE_ENCRYPTION};
pub use flow::{DataFlow, Slowness};
pub use handle::ConnHandle;
pub use lifecycle::{IDLE_STUBS, IDLE_STUBS_PER_ADDRESS};
pub use state::{
    Change, CloneErrorView, ConnRecord, Detection, DetectionKind, DonorGaps, ResumeRecord, Role,
    SessionState,
};
pub use view::{Progress, SessionView, SessionsView, StaleDonorView};

use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use crate::metrics::Metrics;
use crate::protocol::Limits;
use affinity::AffinityStore;
use state::Inner;

pub type ConnId = u64;
pub type SessionId = u64;

/// Settings of the registry.
#[derive(Debug, Clone, Copy)]
pub struct SessionSettings {
    /// A session whose main connection is lost fails if no REINIT comes within this.
    pub resume_timeout: Duration,
    /// A session that never had a main connection (made by an ATTACH or ACK for a clone the
    /// relay has not seen start) is forgotten when it has been idle this long.
    pub orphan_timeout: Duration,
    /// Ended sessions kept for `/sessions`.
    pub keep_ended: usize,
    pub limits: Limits,
    /// The relay terminates TLS, so decoders see the bytes inside it.
    pub decode_inside_tls: bool,
}

impl Default for SessionSettings {
    fn default() -> Self {
        SessionSettings {
            resume_timeout: Duration::from_secs(6 * 60),
            orphan_timeout: Duration::from_secs(60),
            keep_ended: 32,
            limits: Limits::default(),
            decode_inside_tls: true,
        }
    }
}

/// Why a connection ended: a short kind for metrics, and the detail for logs and `/sessions`.
#[derive(Debug, Clone)]
pub struct CloseReason {
    pub kind: &'static str,
    pub detail: String,
    /// Closed by the relay for the peer's misbehaviour (breach, timeout).
    pub rejected: bool,
}

/// All clone sessions the relay follows.
#[derive(Debug)]
pub struct Registry {
    inner: Mutex<Inner>,
    affinity: Mutex<AffinityStore>,
    metrics: Arc<Metrics>,
    settings: SessionSettings,
}

impl Registry {
    pub fn new(settings: SessionSettings, metrics: Arc<Metrics>) -> Self {
        Self::with_affinity(settings, metrics, AffinityStore::in_memory())
    }

    /// A registry that remembers recipients' donors in `affinity` (a file, across restarts).
    pub fn with_affinity(
        settings: SessionSettings,
        metrics: Arc<Metrics>,
        affinity: AffinityStore,
    ) -> Self {
        Registry {
            inner: Mutex::new(Inner::default()),
            affinity: Mutex::new(affinity),
            metrics,
            settings,
        }
    }

    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
    }

    pub fn settings(&self) -> &SessionSettings {
        &self.settings
    }

    /// The registry's state. A panic elsewhere while it was held does not stop the relay: the
    /// state is still usable, so a poisoned lock is taken as it is.
    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The affinity table; taken only while the registry's own lock is held, or alone.
    fn affinity(&self) -> MutexGuard<'_, AffinityStore> {
        self.affinity.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The clone session connection `conn` belongs to, once the wire has said.
    pub fn session_of(&self, conn: ConnId) -> Option<SessionId> {
        self.lock().conns.get(&conn).and_then(|c| c.session)
    }

    /// How long ago clone data last arrived on any connection of `conn`'s session.
    pub fn session_data_age(&self, conn: ConnId) -> Option<Duration> {
        let inner = self.lock();
        let session = inner.conns.get(&conn)?.session?;
        let last = inner.sessions.get(&session)?.last_data?;
        Some(tokio::time::Instant::now().duration_since(last))
    }

    /// The stage of the clone connection `conn` belongs to, once the wire has said.
    pub fn stage_of(&self, conn: ConnId) -> Option<crate::protocol::clone::Stage> {
        let inner = self.lock();
        let session = inner.conns.get(&conn)?.session?;
        inner.sessions.get(&session)?.stage
    }

    /// Records what the relay found about a silent connection, in its session and the log.
    pub fn record_detection(
        &self,
        conn: ConnId,
        kind: DetectionKind,
        silence: Duration,
        probe: Option<Duration>,
    ) {
        let mut inner = self.lock();
        let Some(session_id) = inner.conns.get(&conn).and_then(|c| c.session) else {
            return;
        };
        let Some(session) = inner.sessions.get_mut(&session_id) else {
            return;
        };
        let now = tokio::time::Instant::now();
        let detection = Detection {
            kind,
            conn,
            at_ms: session.since_start(now),
            silence_ms: silence.as_millis() as u64,
            probe_ms: probe.map(|p| p.as_millis() as u64),
        };
        tracing::info!(
            clone_session = session_id,
            conn,
            kind = ?kind,
            silence_ms = detection.silence_ms,
            probe_ms = ?detection.probe_ms,
            upstream = %session.upstream,
            "silent connection: {}",
            match kind {
                DetectionKind::FlowDead => "the donor answers a fresh connection, so this flow is lost; resetting the session",
                DetectionKind::LinkDown => "nothing reaches the donor, so the link is down; keeping the session",
                DetectionKind::LinkBack => "bytes flow again; the link is back",
                DetectionKind::DonorSlow => "the donor paused past the stage's floor, within the pace it has shown; waiting",
                DetectionKind::RecipientSlow => "the recipient has not taken the data the relay holds; the donor is not judged",
            }
        );
        session.detections.push(detection);
    }

    /// Widens the session's record of the donor's longest gaps with those of connection `conn`.
    pub fn record_gaps(&self, conn: ConnId, file_copy: Duration, other: Duration) {
        let mut inner = self.lock();
        let Some(session_id) = inner.conns.get(&conn).and_then(|c| c.session) else {
            return;
        };
        if let Some(session) = inner.sessions.get_mut(&session_id) {
            session.donor_gaps.widen(file_copy, other);
        }
    }

    /// Sessions held (live and recently ended), for tests and bounds checks.
    pub fn session_count(&self) -> usize {
        self.lock().sessions.len()
    }
}
