//! The registry's answer to admission, decided under one lock: which donors a new connection
//! may go to (the first one reserved for it at once, so two clones arriving together never pick
//! the same free donor), and whether it may wait long for its donor's greeting.

use std::collections::HashSet;
use std::net::IpAddr;

use tokio::time::Instant;

use super::state::{Inner, Session, SessionState, WaitSlot};
use super::{ConnId, Registry};

/// The most connections one clone opens (main, aux and 15 workers): the cap of a resume's
/// greeting-wait budget.
const MAX_CLONE_CONNECTIONS: usize = 17;

/// What the registry decided for a new connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Admitted {
    /// Donors to try, in order; the first is reserved for this connection.
    pub donors: Vec<String>,
    /// The recipient's clone is resuming, or was under way when the relay last stopped: its
    /// reconnects are worth waiting for.
    pub resuming: bool,
    /// This connection drew from its clone's greeting-wait budget: it may wait the reconnect
    /// bound for its donor's greeting rather than the handshake timeout.
    pub long_wait: bool,
}

impl Registry {
    /// Decides where connection `conn` from `ip` goes among `upstreams`, and reserves the donor.
    ///
    /// A recipient with a clone under way (resuming first, then the latest unfinished one, then
    /// its latest live connection, then what the affinity file remembers) goes to that clone's
    /// donor and no other: a resumed clone must reach the same donor. Any other connection goes
    /// to the donors not taken (by a clone, a connection, a reservation or a stale clone) first.
    pub fn admit(&self, conn: ConnId, ip: IpAddr, upstreams: &[String]) -> Admitted {
        let now = Instant::now();
        let mut guard = self.lock();
        let inner = &mut *guard;
        let unfinished = |s: &&Session| s.downstream_ip == Some(ip) && !s.state.ended();
        let resuming = inner
            .sessions
            .values()
            .rev()
            .filter(unfinished)
            .find(|s| s.state == SessionState::Resuming)
            .map(|s| s.id);
        let from_session = resuming
            .and_then(|id| inner.sessions.get(&id))
            .or_else(|| inner.sessions.values().rev().find(unfinished))
            .map(|s| s.upstream.clone());
        let from_live_conn = || {
            inner
                .conns
                .values()
                .filter(|c| c.peer_ip == ip && !c.upstream.is_empty())
                .max_by_key(|c| c.record.id)
                .map(|c| c.upstream.clone())
        };
        let remembered = self.affinity().get(ip).map(str::to_string);
        // With no session of its own yet, a recipient the affinity file remembers is resuming a
        // clone from before the restart, whether or not another of its sockets came first.
        let restored = from_session.is_none() && remembered.is_some();
        let affine = from_session.or_else(from_live_conn).or(remembered);
        let donors = match affine {
            Some(donor) => vec![donor],
            None => {
                let taken = taken_donors(inner, now);
                let (free, busy): (Vec<&String>, Vec<&String>) =
                    upstreams.iter().partition(|u| !taken.contains(u.as_str()));
                free.into_iter().chain(busy).cloned().collect()
            }
        };
        let slot = match resuming {
            Some(id) => Some(WaitSlot::Session(id)),
            None if restored => Some(WaitSlot::Restored),
            None => None,
        };
        let long_wait = slot.is_some_and(|slot| take_wait_slot(inner, slot));
        if let Some(c) = inner.conns.get_mut(&conn) {
            c.upstream = donors.first().cloned().unwrap_or_default();
            c.waits_for = slot.filter(|_| long_wait);
        }
        Admitted {
            donors,
            resuming: slot.is_some(),
            long_wait,
        }
    }

    /// Picks and reserves the next donor for `conn` among `candidates` (its admitted donors)
    /// that it has not `tried`, under the lock: a free one first, as at admission, since other
    /// clones may have taken some meanwhile.
    pub fn reserve_next(
        &self,
        conn: ConnId,
        candidates: &[String],
        tried: &[String],
    ) -> Option<String> {
        let now = Instant::now();
        let mut guard = self.lock();
        let inner = &mut *guard;
        if let Some(c) = inner.conns.get_mut(&conn) {
            c.upstream.clear();
        }
        let left = candidates.iter().filter(|d| !tried.contains(d));
        let taken = taken_donors(inner, now);
        let (free, busy): (Vec<&String>, Vec<&String>) =
            left.partition(|d| !taken.contains(d.as_str()));
        let next = free.into_iter().chain(busy).next().cloned()?;
        if let Some(c) = inner.conns.get_mut(&conn) {
            c.upstream.clone_from(&next);
        }
        Some(next)
    }

    /// Gives back the greeting-wait slot `conn` holds (its donor greeted, or it closed).
    pub(super) fn release_wait_slot(inner: &mut Inner, conn: ConnId) {
        let Some(slot) = inner.conns.get_mut(&conn).and_then(|c| c.waits_for.take()) else {
            return;
        };
        match slot {
            WaitSlot::Session(id) => {
                if let Some(s) = inner.sessions.get_mut(&id) {
                    s.waiters = s.waiters.saturating_sub(1);
                }
            }
            WaitSlot::Restored => inner.restored_waiters = inner.restored_waiters.saturating_sub(1),
        }
    }
}

/// Donors with a clone under way or held, a connection open, or a reservation.
fn taken_donors(inner: &Inner, now: Instant) -> HashSet<&str> {
    inner
        .sessions
        .values()
        .filter(|s| s.holds_donor(now))
        .map(|s| s.upstream.as_str())
        .chain(inner.conns.values().map(|c| c.upstream.as_str()))
        .filter(|u| !u.is_empty())
        .collect()
}

/// Takes a slot of the budget, if one is left.
fn take_wait_slot(inner: &mut Inner, slot: WaitSlot) -> bool {
    match slot {
        WaitSlot::Session(id) => {
            let Some(s) = inner.sessions.get_mut(&id) else {
                return false;
            };
            let budget = s.peak_live.clamp(2, MAX_CLONE_CONNECTIONS);
            let granted = s.waiters < budget;
            s.waiters += usize::from(granted);
            granted
        }
        WaitSlot::Restored => {
            let granted = inner.restored_waiters < MAX_CLONE_CONNECTIONS;
            inner.restored_waiters += usize::from(granted);
            granted
        }
    }
}
