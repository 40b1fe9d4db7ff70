//! Admission: one decision per new connection, taken under the registry's lock: which donors it
//! may go to (the first reserved at once), whether its dial may be retried while the donor is
//! away, and how long it may wait for the donor's greeting.

use std::net::SocketAddr;
use std::time::Duration;

use crate::session::ConnHandle;
use crate::state::Relay;

/// Where a new connection goes and how long it may wait.
#[derive(Debug, Clone)]
pub struct Admission {
    /// Donors to try, in order.
    pub donors: Vec<String>,
    /// The recipient's clone is resuming: the connection is one of its reconnects.
    pub resuming: bool,
    /// Dial the donor again and again (with backoff) until this has passed, rather than once.
    pub dial_patience: Option<Duration>,
    /// How long the donor's greeting may take.
    pub greeting_wait: Duration,
}

/// Admits connection `conn` from `peer`. A resuming clone's reconnects wait for a donor that is
/// coming back from an outage, as many of them as the clone had connections; any other
/// connection tries each donor once and gives a silent donor the handshake timeout.
pub fn admit(relay: &Relay, conn: &ConnHandle, peer: SocketAddr) -> Admission {
    let config = relay.config();
    let admitted = relay
        .registry()
        .admit(conn.id(), peer.ip(), config.destinations());
    let patience = admitted.long_wait.then_some(config.reconnect_dial_timeout);
    Admission {
        donors: admitted.donors,
        resuming: admitted.resuming,
        dial_patience: patience,
        greeting_wait: patience.unwrap_or(config.handshake_timeout),
    }
}
