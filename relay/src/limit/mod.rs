//! Bandwidth caps at scopes that combine: the whole relay (every clone sharing the link) and
//! each clone session (all of its connections), each in both directions, to the donor and to
//! the recipient. A connection draws from its relay's buckets from the start and from its
//! session's once the wire says which clone it belongs to; a byte passes when every bucket it
//! draws from lets it through.
//!
//! - [`clock`]: the clock the limiters run on, and why.
//! - [`bucket`]: one cap on governor, sized to stay accurate, with a turn queue for fairness.
//! - [`chain`]: the buckets of one direction of a connection, and how a charge is paid.
//! - [`stream`]: [`Limited`], the copy path's decorator.
//! - [`pending`]: the cap on connections per client address that have not logged in yet.

pub mod bucket;
mod chain;
mod clock;
mod pending;
mod stream;

pub use bucket::Bucket;
pub use chain::{Chain, pay};
pub use pending::{Pending, PendingLogins};
pub use stream::Limited;

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError, RwLock, Weak};

use serde::{Deserialize, Serialize};

use crate::protocol::Direction;

/// A clone session's id, as the session registry numbers them.
pub type SessionId = u64;

/// A cap in each direction, bytes per second; `None` is no cap.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Caps {
    pub to_donor: Option<u64>,
    pub to_recipient: Option<u64>,
}

impl Caps {
    pub fn both(rate: Option<u64>) -> Caps {
        Caps {
            to_donor: rate,
            to_recipient: rate,
        }
    }
}

/// The caps of both scopes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Targets {
    pub relay: Caps,
    pub session: Caps,
}

/// A pair of buckets, one per direction.
#[derive(Debug)]
pub struct Pair {
    pub to_donor: Arc<Bucket>,
    pub to_recipient: Arc<Bucket>,
}

impl Pair {
    fn new(caps: Caps) -> Pair {
        Pair {
            to_donor: Arc::new(Bucket::new(caps.to_donor)),
            to_recipient: Arc::new(Bucket::new(caps.to_recipient)),
        }
    }

    fn set(&self, caps: Caps) {
        self.to_donor.set_rate(caps.to_donor);
        self.to_recipient.set_rate(caps.to_recipient);
    }

    /// The caps and what passed, for the admin API.
    pub fn view(&self) -> PairView {
        PairView {
            to_donor: BucketView::of(&self.to_donor),
            to_recipient: BucketView::of(&self.to_recipient),
        }
    }

    /// The bucket bytes travelling `dir` draw from.
    pub fn toward(&self, dir: Direction) -> &Arc<Bucket> {
        match dir {
            Direction::Upstream => &self.to_donor,
            Direction::Downstream => &self.to_recipient,
        }
    }
}

/// One bucket as the admin API shows it.
#[derive(Debug, Clone, Serialize)]
pub struct BucketView {
    /// The cap as written (`20MiB/s`), or null for none.
    pub cap: Option<String>,
    pub cap_bytes_per_second: Option<u64>,
    /// Bytes let through over the latest second or more.
    pub achieved_bytes_per_second: u64,
    /// Bytes let through since the bucket was made.
    pub passed_bytes: u64,
}

impl BucketView {
    fn of(bucket: &Bucket) -> BucketView {
        let rate = bucket.rate();
        BucketView {
            cap: rate.map(crate::units::format_rate),
            cap_bytes_per_second: rate,
            achieved_bytes_per_second: bucket.recent_rate(),
            passed_bytes: bucket.granted(),
        }
    }
}

/// Both directions of a scope, as the admin API shows them.
#[derive(Debug, Clone, Serialize)]
pub struct PairView {
    pub to_donor: BucketView,
    pub to_recipient: BucketView,
}

/// The relay's limits as `GET /limits` shows them: the relay's buckets, and the caps each
/// session gets (a session's own figures are in `/sessions`).
#[derive(Debug, Clone, Serialize)]
pub struct LimitsView {
    pub relay: PairView,
    pub session_caps: CapsView,
}

/// Caps as written, null for none.
#[derive(Debug, Clone, Serialize)]
pub struct CapsView {
    pub to_donor: Option<String>,
    pub to_recipient: Option<String>,
}

/// The relay's limits: its own buckets and every live session's. Each session has buckets of
/// its own, held by its connections and dropped with the last of them.
#[derive(Debug)]
pub struct RelayLimits {
    targets: RwLock<Targets>,
    relay: Pair,
    sessions: Mutex<HashMap<SessionId, Weak<Pair>>>,
}

impl Default for RelayLimits {
    fn default() -> Self {
        RelayLimits::new(Targets::default())
    }
}

impl RelayLimits {
    pub fn new(targets: Targets) -> RelayLimits {
        RelayLimits {
            targets: RwLock::new(targets),
            relay: Pair::new(targets.relay),
            sessions: Mutex::new(HashMap::new()),
        }
    }

    pub fn targets(&self) -> Targets {
        *self.targets.read().unwrap_or_else(PoisonError::into_inner)
    }

    /// The relay-wide buckets.
    pub fn relay(&self) -> &Pair {
        &self.relay
    }

    /// Applies new caps to the relay's buckets and to every live session's; connections follow
    /// within a fraction of a second.
    pub fn set(&self, targets: Targets) {
        *self.targets.write().unwrap_or_else(PoisonError::into_inner) = targets;
        self.relay.set(targets.relay);
        let mut sessions = self.sessions.lock().unwrap_or_else(PoisonError::into_inner);
        sessions.retain(|_, s| match s.upgrade() {
            Some(session) => {
                session.set(targets.session);
                true
            }
            None => false,
        });
    }

    /// The buckets of clone session `id`, made under the current session caps if it has none
    /// live.
    pub fn session(&self, id: SessionId) -> Arc<Pair> {
        let mut sessions = self.sessions.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(pair) = sessions.get(&id).and_then(Weak::upgrade) {
            return pair;
        }
        // Made under the lock, so a concurrent `set` cannot miss it.
        let pair = Arc::new(Pair::new(self.targets().session));
        sessions.retain(|_, s| s.strong_count() > 0);
        sessions.insert(id, Arc::downgrade(&pair));
        pair
    }

    /// The live buckets of clone session `id`, if it has any.
    pub fn session_if_live(&self, id: SessionId) -> Option<Arc<Pair>> {
        let sessions = self.sessions.lock().unwrap_or_else(PoisonError::into_inner);
        sessions.get(&id).and_then(Weak::upgrade)
    }

    /// The chains of a new connection: the relay's buckets only.
    pub fn connection(&self) -> ConnLimits {
        ConnLimits {
            to_donor: Chain::new(vec![self.relay.to_donor.clone()]),
            to_recipient: Chain::new(vec![self.relay.to_recipient.clone()]),
        }
    }

    /// The relay's figures and the session caps, for `GET /limits`.
    pub fn view(&self) -> LimitsView {
        let session = self.targets().session;
        LimitsView {
            relay: self.relay.view(),
            session_caps: CapsView {
                to_donor: session.to_donor.map(crate::units::format_rate),
                to_recipient: session.to_recipient.map(crate::units::format_rate),
            },
        }
    }

    /// The lowest cap (the relay's or a session's) on bytes travelling `dir`, if any.
    pub fn lowest_toward(&self, dir: Direction) -> Option<u64> {
        let targets = self.targets();
        [targets.relay, targets.session]
            .iter()
            .filter_map(|caps| match dir {
                Direction::Upstream => caps.to_donor,
                Direction::Downstream => caps.to_recipient,
            })
            .min()
    }
}

/// The chains of one connection, one per direction.
#[derive(Debug, Clone, Default)]
pub struct ConnLimits {
    pub to_donor: Chain,
    pub to_recipient: Chain,
}

impl ConnLimits {
    /// Makes the connection draw from its session's buckets too.
    pub fn join(&self, session: &Pair) {
        self.to_donor.join(session.to_donor.clone());
        self.to_recipient.join(session.to_recipient.clone());
    }

    /// The chain of bytes travelling `dir`.
    pub fn toward(&self, dir: Direction) -> &Chain {
        match dir {
            Direction::Upstream => &self.to_donor,
            Direction::Downstream => &self.to_recipient,
        }
    }
}

#[cfg(test)]
mod tests;
