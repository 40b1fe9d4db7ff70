//! One recipient connection: choose and dial a donor, then carry bytes both ways through the
//! protocol decoder until either side ends, a peer breaks the protocol, login takes too long, or
//! the donor goes silent on a connection it owes data.
//!
//! When a connection of a clone in transfer fails, the other connections of its clone session
//! are reset too, so the recipient's CLONE resumes (COM_REINIT) at once rather than when each
//! of them times out on its own.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::config::Config;
use crate::copy::{self, Legs};
use crate::error::RelayError;
use crate::io::Observed;
use crate::protocol::decoder::Direction;
use crate::protocol::handshake::err_packet;
use crate::server::Relay;
use crate::session::{CloseReason, ConnHandle, ConnId};
use crate::{socket, upstream};

/// MySQL's client error for "can't connect to server", sent to the recipient in place of a
/// greeting when no donor can be reached, so its CLONE fails with a reason rather than EOF.
const CR_CONN_HOST_ERROR: u16 = 2003;
/// How often a connection waiting for the donor's greeting looks for it.
const GREETING_CHECK_EVERY: Duration = Duration::from_millis(100);
/// How often the stall detector looks at a connection.
const STALL_CHECK_EVERY: Duration = Duration::from_millis(250);

/// Serves one downstream connection to its end, records it in the session registry and the
/// metrics, and logs how it ended with byte counts. `close_now` ends it early (relay shutdown
/// after the grace period).
pub async fn serve(
    downstream: TcpStream,
    peer: SocketAddr,
    id: ConnId,
    relay: Relay,
    close_now: CancellationToken,
) {
    let started = Instant::now();
    let metrics = relay.metrics();
    metrics.connections_accepted.fetch_add(1, Ordering::Relaxed);
    metrics.connections_active.fetch_add(1, Ordering::Relaxed);
    let legs = Legs::default();
    let conn = Arc::new(relay.registry().open(id, peer, "", legs.clone()));

    let mut downstream = downstream;
    let mut upstream = None;
    let result = tokio::select! {
        result = carry(&mut downstream, &mut upstream, peer, &relay, &legs, &conn) => result,
        _ = close_now.cancelled() => Err(RelayError::Shutdown),
        _ = conn.aborted() => Err(RelayError::Aborted),
    };
    let result = match (result, conn.violation()) {
        (Err(_), Some(violation)) => Err(RelayError::Protocol(violation)),
        (result, _) => result,
    };
    if let Err(e) = &result
        && conn.owed_data()
        && !matches!(e, RelayError::Aborted | RelayError::Shutdown)
    {
        // The clone cannot go on without this connection: reset the rest of it now.
        let others = relay.registry().abort_session_of(id);
        info!(others, reason = %e, "connection of a clone in transfer failed; resetting its session");
    }
    if matches!(
        result,
        Err(RelayError::Aborted | RelayError::Stalled { .. })
    ) {
        // A real reset on both legs: the recipient sees the failure at once and resumes, and
        // the donor lets go of its end.
        for stream in std::iter::once(&downstream).chain(upstream.as_ref()) {
            let _ = socket2::SockRef::from(stream).set_linger(Some(Duration::ZERO));
        }
    }

    let bytes_from_downstream = legs.downstream.bytes_read();
    let bytes_from_upstream = legs.upstream.bytes_read();
    metrics
        .bytes_from_downstream
        .fetch_add(bytes_from_downstream, Ordering::Relaxed);
    metrics
        .bytes_from_upstream
        .fetch_add(bytes_from_upstream, Ordering::Relaxed);
    metrics.connections_active.fetch_sub(1, Ordering::Relaxed);
    let reason = match &result {
        Ok(()) => CloseReason {
            kind: "normal",
            detail: "closed".into(),
            rejected: false,
        },
        Err(e) => CloseReason {
            kind: e.kind(),
            detail: e.to_string(),
            rejected: e.is_rejection(),
        },
    };
    metrics.count_close(reason.kind);
    // The registry learns of the end (a lost main marks its clone resuming) before the sockets
    // close, so the recipient's immediate reconnect is recognised.
    conn.close(&reason);
    drop((downstream, upstream));

    let duration_ms = started.elapsed().as_millis() as u64;
    match result {
        Ok(()) => info!(
            bytes_from_downstream,
            bytes_from_upstream, duration_ms, "connection closed"
        ),
        Err(e) if e.is_peer_reset() || matches!(e, RelayError::Shutdown) => debug!(
            bytes_from_downstream,
            bytes_from_upstream,
            duration_ms,
            reason = %e,
            "connection closed"
        ),
        Err(e) => warn!(
            bytes_from_downstream,
            bytes_from_upstream,
            duration_ms,
            kind = e.kind(),
            reason = %e,
            "connection closed on error"
        ),
    }
}

/// The donors to try for a new connection from `peer`, in order: the donor of that recipient's
/// clone if it has one under way (and no other: a resumed clone must reach the same donor),
/// else the donors not busy with another clone, then the busy ones.
fn donors_for(relay: &Relay, peer: SocketAddr) -> Vec<String> {
    if let Some(donor) = relay.registry().affinity(peer.ip()) {
        return vec![donor];
    }
    let busy = relay.registry().busy_upstreams();
    let (free, taken): (Vec<&String>, Vec<&String>) = relay
        .config()
        .upstreams
        .iter()
        .partition(|u| !busy.contains(*u));
    free.into_iter().chain(taken).cloned().collect()
}

/// Dials a donor into `upstream_slot` (so the caller keeps both sockets and can reset them),
/// then copies until the end.
async fn carry(
    downstream: &mut TcpStream,
    upstream_slot: &mut Option<TcpStream>,
    peer: SocketAddr,
    relay: &Relay,
    legs: &Legs,
    conn: &Arc<ConnHandle>,
) -> Result<(), RelayError> {
    let config = relay.config();
    socket::tune(downstream, config).map_err(RelayError::Downstream)?;
    // A reconnect of a clone that is resuming waits for its donor; others try each donor once.
    let resuming = relay.registry().resuming_from(peer.ip());
    let deadline = tokio::time::Instant::now() + config.reconnect_dial_timeout;
    let mut last_error = None;
    let mut chosen = String::new();
    for donor in donors_for(relay, peer) {
        let dialed = if resuming {
            // The recipient retries on its own; stop waiting for the donor when it gives up.
            tokio::select! {
                dialed = upstream::dial_until(config, relay.health(), &donor, deadline) => dialed,
                _ = recipient_gone(downstream) => {
                    return Err(RelayError::Downstream(std::io::ErrorKind::ConnectionAborted.into()));
                }
            }
        } else {
            upstream::dial(config, relay.health(), &donor).await
        };
        match dialed {
            Ok(stream) => {
                conn.set_upstream(&donor);
                *upstream_slot = Some(stream);
                debug!(upstream = %donor, resuming, "upstream connected");
                chosen = donor;
                break;
            }
            Err(e) => {
                warn!(upstream = %donor, error = %e, "donor unreachable");
                last_error = Some(e);
            }
        }
    }
    let Some(upstream) = upstream_slot.as_mut() else {
        let e = last_error.expect("at least one donor was tried");
        let refusal = err_packet(
            0,
            CR_CONN_HOST_ERROR,
            b"HY000",
            &format!("clone-relay: {e}"),
        );
        // Best effort: the recipient may be gone already.
        let _ = downstream.write_all(&refusal).await;
        let _ = downstream.shutdown().await;
        return Err(e);
    };

    // A resuming clone's reconnect waits for a donor coming back from an outage; any other
    // connection gives a silent donor the handshake timeout.
    let greeting_wait = if resuming {
        config.reconnect_dial_timeout
    } else {
        config.handshake_timeout
    };
    let downstream = Observed::new(downstream, conn.clone(), Direction::Upstream);
    let upstream = Observed::new(upstream, conn.clone(), Direction::Downstream);
    let copy = copy::relay(downstream, upstream, config.copy_buffer_bytes, legs);
    tokio::select! {
        result = copy => result,
        e = login_deadline(config, &chosen, greeting_wait, conn) => Err(e),
        silence = stall_watch(config, conn, legs) => Err(RelayError::Stalled { silence }),
    }
}

/// Completes when the recipient closes its connection (it sends nothing before the greeting, so
/// any readiness is its end; bytes it sent early are left for the decoder to judge).
async fn recipient_gone(downstream: &TcpStream) {
    let mut probe = [0u8; 1];
    match downstream.peek(&mut probe).await {
        Ok(0) | Err(_) => {}
        Ok(_) => std::future::pending().await,
    }
}

/// Completes with the error when a login takes too long. The recipient's part is bounded by the
/// handshake timeout, counted from the donor's greeting; the donor's greeting by `greeting_wait`
/// (long for a resuming clone's reconnect, so it is carried through an outage rather than cut).
async fn login_deadline(
    config: &Config,
    donor: &str,
    greeting_wait: Duration,
    conn: &ConnHandle,
) -> RelayError {
    let greeting_due = tokio::time::Instant::now() + greeting_wait;
    while !conn.greeted() {
        if tokio::time::Instant::now() >= greeting_due {
            return RelayError::UpstreamTimeout {
                addr: donor.to_string(),
                timeout: greeting_wait,
            };
        }
        tokio::time::sleep(GREETING_CHECK_EVERY).await;
    }
    tokio::time::sleep(config.handshake_timeout).await;
    if conn.past_login() {
        std::future::pending::<()>().await;
    }
    RelayError::HandshakeTimeout(config.handshake_timeout)
}

/// Completes, with the length of the silence, when the donor stalls on a connection it owes
/// data. While the relay still holds donor bytes the recipient has not taken, the recipient is
/// the slow side (its disk, its own throttle) and the donor is not judged.
async fn stall_watch(config: &Config, conn: &ConnHandle, legs: &Legs) -> Duration {
    if !config.stall.enabled {
        return std::future::pending().await;
    }
    loop {
        tokio::time::sleep(STALL_CHECK_EVERY).await;
        let undelivered = legs.upstream.bytes_read() > legs.downstream.bytes_written();
        if undelivered {
            conn.excuse_silence();
        } else if let Some(silence) = conn.stalled(&config.stall) {
            return silence;
        }
    }
}
