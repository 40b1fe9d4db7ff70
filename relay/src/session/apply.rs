//! Decoder events to registry state: one function per event, each under the registry's lock.

use std::sync::atomic::Ordering;
use std::time::Duration;

use tokio::time::Instant;
use tracing::{info, warn};

use super::state::{CloneErrorView, Inner, ResumeRecord, Role, SessionState};
use super::{ConnId, Registry};
use crate::protocol::Phase;
use crate::protocol::clone::{Command, CommandKind, Descriptor, Locator, innodb_clone_id};
use crate::protocol::decoder::Event;

/// The donor setting that bounds a resume.
const DONOR_PATIENCE_SETTING: &str = "clone_donor_timeout_after_network_failure";
/// MySQL allows up to 30 minutes for it; anything larger is not a real setting.
const MAX_DONOR_PATIENCE_MINUTES: u64 = 30;
/// ER_CLONE_ENCRYPTION: the donor sends encrypted tablespaces, or encrypted redo or undo, only
/// over a TLS connection, and its connection (the relay's donor leg) is plain.
pub const ER_CLONE_ENCRYPTION: i32 = 3872;
/// The reason the relay gives for [`ER_CLONE_ENCRYPTION`] on a plain donor leg.
pub const ENCRYPTED_OVER_PLAIN_DONOR_LEG: &str = "the donor sends encrypted data only over TLS \
     and the relay's donor leg is plain: set --server-tls-mode to preferred or required (under \
     as-client the donor leg is plain whenever the recipient clones without TLS)";

impl Registry {
    /// Applies what the decoder saw on `conn`, now in `phase`.
    pub(super) fn apply(&self, conn: ConnId, events: Vec<Event>, phase: Phase) {
        let now = Instant::now();
        let mut guard = self.lock();
        let inner = &mut *guard;
        let Some(c) = inner.conns.get_mut(&conn) else {
            return;
        };
        c.record.phase = phase;
        if let Some(s) = c.session.and_then(|id| inner.sessions.get_mut(&id)) {
            s.last_activity = now;
        }
        for event in events {
            let Some(c) = inner.conns.get_mut(&conn) else {
                return;
            };
            match event {
                Event::Greeting { connection_id, .. } => {
                    c.record.donor_connection_id = Some(connection_id);
                }
                Event::Login { user, .. } => c.record.user = Some(user),
                Event::CloneCommand(cmd) => self.on_clone_command(inner, conn, cmd, now),
                Event::CloneLocators(locators) => on_locators(inner, conn, &locators),
                Event::CloneDescriptor(desc) => self.on_descriptor(inner, conn, desc, now),
                Event::CloneData { bytes } => self.on_data(inner, conn, bytes, now),
                Event::CloneComplete => on_complete(inner, conn, now),
                Event::CloneError { errno, message } => on_error(inner, conn, errno, message, now),
                Event::DonorConfig { name, value } => on_donor_config(inner, conn, &name, &value),
                Event::ProtocolVersion(version) => {
                    if let Some(s) = c.session.and_then(|id| inner.sessions.get_mut(&id)) {
                        s.protocol_version = Some(version);
                    }
                }
                Event::StoppedFollowing { reason } => {
                    warn!(
                        conn,
                        reason = %reason,
                        "clone message not known to the relay: its bytes are carried, no longer followed"
                    );
                    if let Some(s) = c.session.and_then(|id| inner.sessions.get_mut(&id)) {
                        s.not_followed = Some(reason);
                    }
                }
                Event::TlsStarted
                | Event::Authenticated
                | Event::Refused { .. }
                | Event::Command { .. }
                | Event::CloneStarted => {}
            }
        }
    }

    fn on_clone_command(&self, inner: &mut Inner, conn: ConnId, cmd: Command, now: Instant) {
        let Some(c) = inner.conns.get_mut(&conn) else {
            return;
        };
        c.last_command = Some(cmd.kind);
        let (upstream, session, role, ip) =
            (c.upstream.clone(), c.session, c.record.role, c.peer_ip);
        let clone = innodb_clone_id(&cmd.locators);
        match (cmd.kind, clone) {
            (CommandKind::Init, _) => {
                let id = self.new_session(inner, &upstream, ip, now);
                Self::bind(inner, conn, id, Role::Main);
            }
            (CommandKind::Reinit, Some(clone)) => {
                let id = self.session_for(inner, &upstream, ip, clone, now);
                Self::bind(inner, conn, id, Role::Main);
                self.on_reinit(inner, id, now);
            }
            (CommandKind::Attach, Some(clone)) => {
                let id = self.session_for(inner, &upstream, ip, clone, now);
                Self::bind(inner, conn, id, Role::Worker);
            }
            (CommandKind::Ack, Some(clone)) if session.is_none() => {
                let id = self.session_for(inner, &upstream, ip, clone, now);
                Self::bind(inner, conn, id, Role::Aux);
            }
            (CommandKind::Execute, _) => {
                if let Some(s) = session.and_then(|id| inner.sessions.get_mut(&id))
                    && role == Role::Main
                    && !s.state.ended()
                {
                    s.set_state(SessionState::Transferring, now);
                }
            }
            _ => {}
        }
    }

    /// A REINIT: the recipient resumes the clone; the outage is recorded.
    fn on_reinit(&self, inner: &mut Inner, session: u64, now: Instant) {
        let Some(s) = inner.sessions.get_mut(&session) else {
            return;
        };
        let lost_at = s.lost_at.take();
        let outage_ms = lost_at.map_or(0, |t| now.duration_since(t).as_millis() as u64);
        s.resume_lost_at = Some(lost_at.unwrap_or(now));
        s.resumes.push(ResumeRecord {
            at_ms: s.since_start(now),
            outage_ms,
            resumed_after_ms: None,
            resent_bytes: 0,
        });
        self.metrics.resumes.fetch_add(1, Ordering::Relaxed);
        self.metrics
            .resume_outage_ms
            .fetch_add(outage_ms, Ordering::Relaxed);
        info!(
            clone_session = session,
            outage_ms,
            resumes = s.resumes.total(),
            "clone session resumed"
        );
        s.set_state(SessionState::Resuming, now);
    }

    fn on_descriptor(&self, inner: &mut Inner, conn: ConnId, desc: Descriptor, now: Instant) {
        let Some(c) = inner.conns.get_mut(&conn) else {
            return;
        };
        let Some(s) = c.session.and_then(|id| inner.sessions.get_mut(&id)) else {
            return;
        };
        match desc {
            Descriptor::State {
                stage,
                estimate_bytes,
                is_start,
                ..
            } => {
                if is_start && estimate_bytes > 0 {
                    s.estimates.insert(stage, estimate_bytes);
                }
                s.set_stage(stage, now);
            }
            Descriptor::Data {
                stage,
                chunk,
                block,
                file,
                bytes,
                ..
            } => {
                c.data_stage = stage;
                s.set_stage(stage, now);
                if s.recent_blocks
                    .seen_again(conn, (stage, chunk, block, file))
                {
                    let bytes = u64::from(bytes);
                    s.resent_bytes += bytes;
                    self.metrics
                        .resent_bytes
                        .fetch_add(bytes, Ordering::Relaxed);
                    if let Some(r) = s.resumes.last_mut() {
                        r.resent_bytes += bytes;
                    }
                }
            }
            Descriptor::Other { .. } => {}
        }
    }

    fn on_data(&self, inner: &mut Inner, conn: ConnId, bytes: u64, now: Instant) {
        let Some(c) = inner.conns.get_mut(&conn) else {
            return;
        };
        c.record.data_bytes += bytes;
        self.metrics
            .clone_data_bytes
            .fetch_add(bytes, Ordering::Relaxed);
        let stage = c.data_stage;
        let Some(s) = c.session.and_then(|id| inner.sessions.get_mut(&id)) else {
            return;
        };
        s.data_bytes += bytes;
        s.last_data = Some(now);
        *s.stage_bytes.entry(stage).or_default() += bytes;
        s.rate.sample(now, s.data_bytes);
        if s.state == SessionState::Resuming {
            s.set_state(SessionState::Transferring, now);
        }
        if let Some(lost) = s.resume_lost_at.take()
            && let Some(r) = s.resumes.last_mut()
        {
            let after_ms = now.duration_since(lost).as_millis() as u64;
            r.resumed_after_ms = Some(after_ms);
            info!(
                clone_session = s.id,
                resumed_after_ms = after_ms,
                "clone data flows again"
            );
        }
    }
}

/// The donor's answer to INIT or REINIT names the clone: later ATTACH, ACK and REINIT find the
/// session by it.
fn on_locators(inner: &mut Inner, conn: ConnId, locators: &[Locator]) {
    let Some(c) = inner.conns.get(&conn) else {
        return;
    };
    if let (Some(id), Some(clone), Role::Main) =
        (c.session, innodb_clone_id(locators), c.record.role)
    {
        if let Some(s) = inner.sessions.get_mut(&id) {
            s.clone = Some(clone);
        }
        inner.by_clone.insert((c.upstream.clone(), clone), id);
    }
}

/// COMPLETE of the main connection's EXECUTE: the clone is done.
fn on_complete(inner: &mut Inner, conn: ConnId, now: Instant) {
    let Some(c) = inner.conns.get(&conn) else {
        return;
    };
    let done = c.record.role == Role::Main && c.last_command == Some(CommandKind::Execute);
    if let Some(s) = c.session.and_then(|id| inner.sessions.get_mut(&id))
        && done
    {
        s.set_state(SessionState::Completed, now);
    }
}

/// The donor's ERROR: recorded on the session (the latest, unless an earlier one has the
/// relay's reason), with the relay's reason when it knows the fix; on the main connection it
/// ends the clone.
fn on_error(inner: &mut Inner, conn: ConnId, errno: i32, message: String, now: Instant) {
    let Some(c) = inner.conns.get(&conn) else {
        return;
    };
    let is_main = c.record.role == Role::Main;
    let reason = explain(errno, c.record.tls_upstream);
    if let Some(s) = c.session.and_then(|id| inner.sessions.get_mut(&id)) {
        match reason {
            Some(reason) => warn!(
                clone_session = s.id,
                errno,
                %message,
                reason,
                "donor reported a clone error"
            ),
            None => warn!(clone_session = s.id, errno, %message, "donor reported a clone error"),
        }
        // An error the relay explains is the clone's cause: a later one it does not explain
        // (another connection failing after it) leaves it in place.
        if reason.is_some() || s.error.as_ref().is_none_or(|e| e.reason.is_none()) {
            s.error = Some(CloneErrorView {
                errno,
                message,
                reason: reason.map(str::to_string),
            });
        }
        if is_main {
            s.set_state(SessionState::Failed, now);
        }
    }
}

/// The cause and fix of a donor's error that the relay's own settings explain: `tls_upstream`
/// tells whether the connection's donor leg runs TLS.
fn explain(errno: i32, tls_upstream: bool) -> Option<&'static str> {
    (errno == ER_CLONE_ENCRYPTION && !tls_upstream).then_some(ENCRYPTED_OVER_PLAIN_DONOR_LEG)
}

/// The donor's resume patience, read from its CONFIG responses.
fn on_donor_config(inner: &mut Inner, conn: ConnId, name: &str, value: &str) {
    let Some(c) = inner.conns.get(&conn) else {
        return;
    };
    if name == DONOR_PATIENCE_SETTING
        && let Ok(minutes) = value.trim().parse::<u64>()
        && let Some(s) = c.session.and_then(|id| inner.sessions.get_mut(&id))
    {
        let minutes = minutes.min(MAX_DONOR_PATIENCE_MINUTES);
        s.donor_patience = Some(Duration::from_secs(minutes * 60));
    }
}
