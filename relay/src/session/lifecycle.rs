//! Connections opening and closing, sessions starting, expiring and being reset.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{Span, debug, info};

use super::state::{
    CloneErrorView, ConnRecord, Inner, LiveConn, Role, Session, SessionState, unix_ms,
};
use super::{CloseReason, ConnHandle, ConnId, Registry, SessionId};
use crate::io::Legs;
use crate::protocol::Phase;
use crate::protocol::clone::{CloneId, Stage};

/// Time past the donor's patience before a resuming session is declared failed: the donor may
/// notice a silent link up to about a minute after the relay did.
const DONOR_PATIENCE_MARGIN: Duration = Duration::from_secs(60);
/// MySQL's default `clone_donor_timeout_after_network_failure`, for a donor that has not said.
const DEFAULT_DONOR_PATIENCE: Duration = Duration::from_secs(5 * 60);
/// Connections closed for a protocol breach or a timeout kept for `/sessions`.
const KEEP_REJECTED: usize = 32;
/// Idle stubs (sessions not ended that moved no data and have no live connection: clone
/// commands a donor never carried out, or a clone lost before its first byte) kept per
/// recipient address, and in all. Each connection is in one session at a time, so the sessions
/// that moved no data number at most these plus the open connections.
pub const IDLE_STUBS_PER_ADDRESS: usize = 16;
pub const IDLE_STUBS: usize = 256;

impl Registry {
    /// Registers a new downstream connection; admission reserves its donor next.
    pub fn open(self: &Arc<Self>, id: ConnId, peer: SocketAddr, legs: Legs) -> ConnHandle {
        let record = ConnRecord {
            id,
            peer: peer.to_string(),
            role: Role::Unknown,
            phase: Phase::Greeting,
            user: None,
            donor_connection_id: None,
            opened_at_ms: unix_ms(),
            closed_at_ms: None,
            bytes_from_downstream: 0,
            bytes_from_upstream: 0,
            data_bytes: 0,
            tls_downstream: false,
            tls_upstream: false,
            close_reason: None,
        };
        let abort = CancellationToken::new();
        self.lock().conns.insert(
            id,
            LiveConn {
                record,
                legs,
                abort: abort.clone(),
                session: None,
                peer_ip: peer.ip(),
                upstream: String::new(),
                last_command: None,
                data_stage: Stage::Other,
                waits_for: None,
            },
        );
        ConnHandle::new(self.clone(), id, &self.settings, abort)
    }

    /// Records whether each leg of `conn` runs TLS.
    pub(super) fn set_tls(&self, conn: ConnId, downstream: bool, upstream: bool) {
        if let Some(c) = self.lock().conns.get_mut(&conn) {
            c.record.tls_downstream = downstream;
            c.record.tls_upstream = upstream;
        }
    }

    /// The donor greeted `conn`: it no longer draws from a greeting-wait budget.
    pub(super) fn greeted(&self, conn: ConnId) {
        Self::release_wait_slot(&mut self.lock(), conn);
    }

    /// Records the end of `conn`. A lost main connection marks its clone resuming; one lost in
    /// the clone protocol after the clone completed leaves the donor holding the clone.
    pub(super) fn close(&self, conn: ConnId, reason: &CloseReason) {
        let now = Instant::now();
        let mut guard = self.lock();
        let inner = &mut *guard;
        Self::release_wait_slot(inner, conn);
        let Some(c) = inner.conns.remove(&conn) else {
            return;
        };
        let mut record = c.snapshot();
        record.closed_at_ms = Some(unix_ms());
        record.close_reason = Some(reason.detail.clone());
        if reason.rejected {
            inner.rejected.push_back(record.clone());
            if inner.rejected.len() > KEEP_REJECTED {
                inner.rejected.pop_front();
            }
        }
        let Some(s) = c.session.and_then(|id| inner.sessions.get_mut(&id)) else {
            return;
        };
        s.live.retain(|&id| id != conn);
        s.closed.push(record);
        s.last_activity = now;
        if s.main != Some(conn) {
            if s.is_idle_stub() {
                let ip = s.downstream_ip;
                keep_idle_stubs_bounded(inner, ip);
            }
            return;
        }
        let main_unfollowed = c.record.phase == Phase::Unfollowed;
        if !s.state.ended() && main_unfollowed {
            // The relay cannot tell a finished clone from a lost link here: no resume is
            // awaited and nothing is failed.
            info!(
                clone_session = s.id,
                reason = %reason.detail,
                "main connection ended while not followed"
            );
            s.set_state(SessionState::Unfollowed, now);
        } else if !s.state.ended() {
            s.lost_at = Some(now);
            info!(
                clone_session = s.id,
                reason = %reason.detail,
                "main connection lost; waiting for the recipient to resume"
            );
            s.set_state(SessionState::Resuming, now);
            if s.is_idle_stub() {
                let ip = s.downstream_ip;
                keep_idle_stubs_bounded(inner, ip);
            }
        } else if s.state == SessionState::Completed && c.record.phase == Phase::Clone {
            // The link failed before COM_EXIT: the donor waits for a resume that will not come.
            let patience = s.donor_patience.unwrap_or(DEFAULT_DONOR_PATIENCE);
            s.donor_holds_until = Some(now + patience);
            info!(
                clone_session = s.id,
                upstream = %s.upstream,
                hold_secs = patience.as_secs(),
                "link lost after the clone completed; the donor may hold the clone until it gives up"
            );
        }
    }

    /// Fails sessions whose recipient never resumed and forgets old ones; the relay calls this
    /// periodically.
    /// It also writes the affinity file when it changed, outside the registry's lock (a slow
    /// disk holds up only this call), so call it off the async workers.
    pub fn expire_now(&self) {
        {
            let mut inner = self.lock();
            self.expire(&mut inner, Instant::now());
        }
        let snapshot = self.affinity().take_changes();
        if let Some(snapshot) = snapshot {
            snapshot.save();
        }
    }

    /// Fails sessions whose recipient never resumed, forgets sessions that never had a main
    /// connection once idle, and forgets the oldest ended sessions.
    pub(super) fn expire(&self, inner: &mut Inner, now: Instant) {
        for s in inner.sessions.values_mut() {
            // The donor drops the clone when its own patience runs out; past that (and a
            // margin for the recipient's last try) no resume can succeed.
            let patience = s.donor_patience.unwrap_or(DEFAULT_DONOR_PATIENCE);
            let limit = self
                .settings
                .resume_timeout
                .min(patience.saturating_add(DONOR_PATIENCE_MARGIN));
            if s.state == SessionState::Resuming
                && let Some(lost) = s.lost_at
                && now.duration_since(lost) > limit
            {
                s.error = Some(CloneErrorView {
                    errno: 0,
                    message: format!("the recipient did not resume within {} s", limit.as_secs()),
                    reason: None,
                });
                s.donor_holds_until = Some(lost + patience);
                s.set_state(SessionState::Failed, now);
            }
        }
        let orphans: Vec<SessionId> = inner
            .sessions
            .values()
            .filter(|s| !s.had_main && s.live.is_empty())
            .filter(|s| now.duration_since(s.last_activity) >= self.settings.orphan_timeout)
            .map(|s| s.id)
            .collect();
        // The affinity table learns of the sessions that ended before any is forgotten.
        self.sync_affinity(inner);
        // The oldest ended first, by when they ended: a long clone that just ended stays.
        let mut ended: Vec<(Instant, SessionId)> = inner
            .sessions
            .values()
            .filter(|s| s.state.ended() && s.live.is_empty() && !s.holds_donor(now))
            .filter_map(|s| s.ended.map(|t| (t, s.id)))
            .collect();
        ended.sort_unstable();
        let forget = ended.len().saturating_sub(self.settings.keep_ended);
        let ended_ids = ended.iter().take(forget).map(|&(_, id)| id);
        for id in orphans.iter().copied().chain(ended_ids) {
            inner.sessions.remove(&id);
        }
        if !orphans.is_empty() || forget > 0 {
            inner
                .by_clone
                .retain(|_, id| inner.sessions.contains_key(id));
        }
    }

    /// Brings the affinity table in line with the clones under way: each recipient with a clone
    /// under way maps to its donor; a recipient whose clones all ended is forgotten.
    fn sync_affinity(&self, inner: &Inner) {
        let mut affinity = self.affinity();
        for s in inner.sessions.values().filter(|s| s.had_main) {
            let Some(ip) = s.downstream_ip else { continue };
            if !s.state.ended() {
                affinity.keep(ip, &s.upstream);
                continue;
            }
            let busy = inner
                .sessions
                .values()
                .any(|o| o.downstream_ip == Some(ip) && !o.state.ended());
            if !busy {
                affinity.remove(ip);
            }
        }
    }

    /// Resets every other live connection of `conn`'s clone session, so the recipient resumes
    /// the whole clone at once. Returns how many were reset.
    pub fn abort_session_of(&self, conn: ConnId) -> usize {
        let now = Instant::now();
        let mut guard = self.lock();
        let inner = &mut *guard;
        let Some(id) = inner.conns.get(&conn).and_then(|c| c.session) else {
            return 0;
        };
        let Some(s) = inner.sessions.get_mut(&id) else {
            return 0;
        };
        let mut n = 0;
        for c in s.live.iter().filter(|&&c| c != conn) {
            if let Some(c) = inner.conns.get(c) {
                c.abort.cancel();
                n += 1;
            }
        }
        // The clone is resuming from now on: the recipient's reconnects may come at once.
        if !s.state.ended() {
            s.lost_at.get_or_insert(now);
            s.set_state(SessionState::Resuming, now);
        }
        n
    }

    /// Resets every live connection of a clone session on both legs, so that the recipient
    /// resumes it at once. Returns how many connections were reset.
    pub fn abort_session(&self, session: SessionId) -> usize {
        let inner = self.lock();
        let Some(s) = inner.sessions.get(&session) else {
            return 0;
        };
        let mut n = 0;
        for c in s.live.iter().filter_map(|id| inner.conns.get(id)) {
            c.abort.cancel();
            n += 1;
        }
        info!(
            clone_session = session,
            connections = n,
            "clone session reset on request"
        );
        n
    }

    /// A new session for a clone command from `ip` (its connection is bound to it next).
    pub(super) fn new_session(
        &self,
        inner: &mut Inner,
        upstream: &str,
        ip: IpAddr,
        now: Instant,
    ) -> SessionId {
        inner.next_session += 1;
        let id = inner.next_session;
        let mut session = Session::new(id, upstream, now);
        session.downstream_ip = Some(ip);
        inner.sessions.insert(id, session);
        self.metrics
            .sessions_started
            .fetch_add(1, Ordering::Relaxed);
        info!(clone_session = id, upstream, "clone session started");
        id
    }

    /// The session of a clone id on an upstream, created when the relay has not seen it (a
    /// clone that began before the relay started).
    pub(super) fn session_for(
        &self,
        inner: &mut Inner,
        upstream: &str,
        ip: IpAddr,
        clone: CloneId,
        now: Instant,
    ) -> SessionId {
        let key = (upstream.to_string(), clone);
        // A completed clone is over on the donor too: a command naming it again (which the
        // donor refuses) starts a session of its own and leaves the completed one as it was.
        if let Some(&id) = inner.by_clone.get(&key)
            && inner
                .sessions
                .get(&id)
                .is_some_and(|s| s.state != SessionState::Completed)
        {
            return id;
        }
        let id = self.new_session(inner, upstream, ip, now);
        inner.sessions.get_mut(&id).expect("just made").clone = Some(clone);
        inner.by_clone.insert(key, id);
        id
    }

    /// Puts `conn` in `session` with `role` (a main connection becomes the session's main).
    pub(super) fn bind(inner: &mut Inner, conn: ConnId, session: SessionId, role: Role) {
        let Some(c) = inner.conns.get_mut(&conn) else {
            return;
        };
        if c.record.role == Role::Unknown || role == Role::Main {
            c.record.role = role;
        }
        let previous = c.session.replace(session);
        let (peer_ip, role) = (c.peer_ip, c.record.role);
        let mut left_a_stub = None;
        let span = Span::current();
        span.record("role", role.as_str());
        span.record("clone_session", session);
        if previous != Some(session)
            && let Some(prev) = previous.and_then(|p| inner.sessions.get_mut(&p))
        {
            prev.live.retain(|&id| id != conn);
            left_a_stub = prev.is_idle_stub().then_some(prev.downstream_ip);
        }
        let Some(s) = inner.sessions.get_mut(&session) else {
            return;
        };
        if previous != Some(session) {
            s.live.push(conn);
            s.peak_live = s.peak_live.max(s.live.len());
            s.downstream_ip.get_or_insert(peer_ip);
        }
        if role == Role::Main {
            s.main = Some(conn);
            s.had_main = true;
        }
        if let Some(ip) = left_a_stub {
            keep_idle_stubs_bounded(inner, ip);
        }
    }
}

/// Forgets the least recently active idle stubs beyond [`IDLE_STUBS_PER_ADDRESS`] of `ip`
/// and [`IDLE_STUBS`] in all; called whenever a session becomes one.
fn keep_idle_stubs_bounded(inner: &mut Inner, ip: Option<IpAddr>) {
    if ip.is_some() {
        forget_idle_stubs(inner, ip, IDLE_STUBS_PER_ADDRESS);
    }
    forget_idle_stubs(inner, None, IDLE_STUBS);
}

/// Forgets idle stubs of `ip` (of every address when `None`), least recently active first,
/// until at most `keep` remain.
fn forget_idle_stubs(inner: &mut Inner, ip: Option<IpAddr>, keep: usize) {
    let mut stubs: Vec<(Instant, SessionId)> = inner
        .sessions
        .values()
        .filter(|s| ip.is_none() || s.downstream_ip == ip)
        .filter(|s| s.is_idle_stub())
        .map(|s| (s.last_activity, s.id))
        .collect();
    if stubs.len() <= keep {
        return;
    }
    stubs.sort_unstable();
    let forget = stubs.len() - keep;
    for &(_, id) in &stubs[..forget] {
        inner.sessions.remove(&id);
    }
    inner
        .by_clone
        .retain(|_, id| inner.sessions.contains_key(id));
    debug!(
        forgotten = forget,
        address = ?ip,
        "idle sessions that moved no data forgotten to make room"
    );
}
