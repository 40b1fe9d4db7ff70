//! One recipient connection from admission to close: admit, dial the donor, run the handshake
//! stage, then copy both ways through the decorators until either side ends, a peer breaks the
//! protocol, login takes too long, or the donor goes silent on a connection it owes data.
//!
//! When a connection of a clone in transfer fails, the other connections of its clone session
//! are reset too, so the recipient's CLONE resumes (COM_REINIT) at once rather than when each
//! of them times out on its own.

pub mod admission;
pub mod auth;
pub mod copy;
pub mod dial;
pub mod handshake;
pub mod leg;
mod stage;
pub mod transport;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use tokio::io::AsyncWriteExt;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use self::admission::Admission;
use self::handshake::StageSettings;
use crate::connection::leg::Leg;
use crate::connection::transport::Transport;
use crate::error::RelayError;
use crate::io::{Legs, Observed};
use crate::limit::Limited;
use crate::protocol::Direction;
use crate::protocol::handshake::greeting_err_packet;
use crate::recovery::liveness;
use crate::recovery::liveness::FlowSocket;
use crate::session::{CloseReason, ConnHandle, ConnId};
use crate::socket;
use crate::state::Relay;

/// MySQL's client error for "can't connect to server", sent to the recipient in place of a
/// greeting when no donor can be reached, so its CLONE fails with a reason rather than EOF.
const CR_CONN_HOST_ERROR: u16 = 2003;
/// MySQL's server error for "too many connections", in place of a greeting for an address that
/// holds its most connections not yet logged in.
const ER_CON_COUNT_ERROR: u16 = 1040;
/// On the donor side of a pair, how long the donor may keep a connection open once the recipient
/// closed its own: a donor that still reads closes at once; one that keeps sending (a clone's
/// donor whose recipient gave up) is reset then, so that it lets go of the clone before the
/// recipient's resume asks for it.
const RECIPIENT_GONE_GRACE: Duration = Duration::from_secs(2);

/// Both legs of a connection once the handshake stage is done, kept by [`serve`] so it can
/// reset them however the copy ends.
#[derive(Debug, Default)]
struct Sockets {
    downstream: Option<Leg>,
    upstream: Option<Leg>,
}

/// Serves one downstream connection to its end, records it in the session registry and the
/// metrics, and logs how it ended with byte counts. `close_now` ends it early (relay shutdown
/// after the grace period).
pub async fn serve(
    downstream: Transport,
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
    let conn = Arc::new(relay.registry().open(id, peer, legs.clone()));

    let mut sockets = Sockets::default();
    let result = tokio::select! {
        result = carry(downstream, &mut sockets, peer, &relay, &legs, &conn) => result,
        _ = close_now.cancelled() => Err(RelayError::Shutdown),
        _ = conn.aborted() => Err(RelayError::Aborted),
    };
    liveness::settle(&conn, &legs, result.is_err());
    if let Err(e) = &result
        && conn.owed_data()
        && !matches!(
            e,
            RelayError::Aborted | RelayError::Shutdown | RelayError::RecipientGone(_)
        )
    {
        // (A recipient gone tells of this connection only: its clone's other connections end
        // on their own, and a resume may already have started new ones in the session.)
        // The clone cannot go on without this connection: reset the rest of it now.
        let others = relay.registry().abort_session_of(id);
        info!(others, reason = %e, "connection of a clone in transfer failed; resetting its session");
    }
    if matches!(
        result,
        Err(RelayError::Aborted | RelayError::Stalled { .. } | RelayError::RecipientGone(_))
    ) {
        // A real reset on both legs: the recipient sees the failure at once and resumes, and
        // the donor lets go of its end.
        // A tunnel stream has no socket of its own: dropping it ends the stream, and the
        // relay at its other end closes its leg.
        for tcp in sockets
            .downstream
            .iter()
            .chain(&sockets.upstream)
            .filter_map(Leg::tcp)
        {
            let _ = socket2::SockRef::from(tcp).set_linger(Some(Duration::ZERO));
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
    drop(sockets);

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

/// Admission, dial, handshake stage, decorated copy. After the stage the legs stay in
/// `sockets` so the caller can reset them.
async fn carry(
    mut downstream: Transport,
    sockets: &mut Sockets,
    peer: SocketAddr,
    relay: &Relay,
    legs: &Legs,
    conn: &Arc<ConnHandle>,
) -> Result<(), RelayError> {
    let config = relay.config();
    if let Some(tcp) = downstream.tcp() {
        socket::tune(tcp, config).map_err(RelayError::Downstream)?;
    }
    // Counted until its login goes through; a tunnel stream was counted by the recipient side.
    let pending = match &downstream {
        Transport::Tcp(_) => match relay.pending_logins().admit(peer.ip()) {
            Some(pending) => Some(pending),
            None => {
                let reason = format!(
                    "clone-relay: {} connections from {} have not logged in yet (--max-pending-logins-per-address)",
                    relay.pending_logins().max_per_address(),
                    peer.ip()
                );
                let refusal = greeting_err_packet(ER_CON_COUNT_ERROR, &reason);
                let _ = downstream.write_all(&refusal).await;
                let _ = downstream.shutdown().await;
                return Err(RelayError::TooManyPending(reason));
            }
        },
        Transport::Tunnel(_) => None,
    };
    let admission = admission::admit(relay, conn, peer);
    let (upstream, donor) = match dial(&admission, relay, conn, &downstream, peer).await {
        Ok(dialed) => dialed,
        Err(e) => {
            refuse(&mut downstream, &e).await;
            return Err(e);
        }
    };
    // A second handle on the donor leg's socket, for the liveness check to tune while the copy
    // owns the stream.
    let upstream_socket = upstream
        .tcp()
        .and_then(|tcp| socket2::SockRef::from(tcp).try_clone().ok());
    // The tunnel bridges its own outages: the stall watch is for a donor's own socket.
    let upstream_tunnel = upstream.is_tunnel();
    // On the donor side of a pair: the recipient's direction ending means the recipient closed.
    let recipient_closed = downstream.peer_ended();
    if config.socket_buffer_bytes.is_none() {
        // Each leg by the caps on the bytes it receives: the recipient's leg takes in bytes
        // towards the donor, the donor's leg bytes towards the recipient.
        let limits = relay.limits();
        for (leg, dir) in [
            (downstream.tcp(), Direction::Upstream),
            (upstream.tcp(), Direction::Downstream),
        ] {
            if let Some(leg) = leg {
                let _ = socket::bound_receive_buffer(leg, limits.lowest_toward(dir));
            }
        }
    }
    // The TLS of this connection, to its end: a reload affects only connections after it.
    let tls = relay.tls();
    let stage = StageSettings {
        upstream_addr: &donor,
        // Through a tunnel the greeting may wait out an outage the tunnel bridges.
        greeting_wait: if upstream_tunnel {
            admission.greeting_wait.max(config.tunnel.bridge)
        } else {
            admission.greeting_wait
        },
        handshake_timeout: config.handshake_timeout,
        max_greeting_bytes: config.max_login_packet_bytes,
        tunnel_tls: relay.tunnel().is_some_and(|t| t.is_tls()),
        tls: &tls,
    };
    // Reads are paid from the relay's buckets from here on, and from the session's once the
    // wire names the clone; reads from the recipient travel to the donor.
    let limits = conn.limits(relay.limits());
    let downstream = Limited::new(downstream, limits.to_donor.clone());
    let upstream = Limited::new(upstream, limits.to_recipient.clone());
    let handshaken = handshake::run(downstream, upstream, conn.as_ref(), &stage).await?;
    drop(pending);
    conn.set_tls(handshaken.downstream.is_tls(), handshaken.upstream.is_tls());
    let downstream = sockets.downstream.insert(handshaken.downstream);
    let upstream = sockets.upstream.insert(handshaken.upstream);

    let downstream = Observed::new(downstream, conn.clone(), Direction::Upstream);
    let upstream = Observed::new(upstream, conn.clone(), Direction::Downstream);
    tokio::select! {
        result = copy::relay(downstream, upstream, config.copy_buffer_bytes, legs) => result,
        e = login_deadline(handshaken.login_due, config.handshake_timeout, conn) => Err(e),
        silence = async {
            if upstream_tunnel {
                std::future::pending().await
            }
            liveness::dead_flow(
                &config.stall,
                relay.path_probes(),
                &donor,
                conn,
                legs,
                upstream_socket.as_ref().map(|socket| FlowSocket { socket, config }),
            )
            .await
        } => Err(RelayError::Stalled { silence }),
        () = donor_kept_on(recipient_closed) => Err(RelayError::RecipientGone(RECIPIENT_GONE_GRACE)),
    }
}

/// On the donor side of a pair, completes once the recipient's connection has been closed for
/// [`RECIPIENT_GONE_GRACE`] (the copy has not ended by then: the donor kept its end open, as
/// a clone's donor does while it still sends); never on a connection from a recipient itself.
/// MySQL's clients do not half-close, so nothing the donor sends after that is read.
async fn donor_kept_on(recipient_closed: Option<CancellationToken>) {
    match recipient_closed {
        Some(closed) => {
            closed.cancelled().await;
            tokio::time::sleep(RECIPIENT_GONE_GRACE).await;
        }
        None => std::future::pending().await,
    }
}

/// Dials the admitted donors in order; a resuming clone's reconnect keeps dialing its donor
/// until the admission's patience runs out or the recipient gives up.
async fn dial(
    admission: &Admission,
    relay: &Relay,
    conn: &ConnHandle,
    downstream: &Transport,
    peer: SocketAddr,
) -> Result<(Transport, String), RelayError> {
    let config = relay.config();
    if let (Some(tunnel), Some(donor_side)) = (relay.tunnel(), &config.peer) {
        // A new connection waits out an outage of the tunnel as its streams do (a worker the
        // clone opens while the link is dark), a resuming clone's as its admission allows.
        let patience = admission.dial_patience.unwrap_or(config.tunnel.bridge);
        let deadline = Some(Instant::now() + patience);
        let stream = tokio::select! {
            stream = tunnel.open(config, peer, deadline) => stream,
            () = stage::recipient_gone(downstream) => return Err(RelayError::ClientLeft),
        };
        return match stream {
            Ok(stream) => {
                relay.health().record_success(donor_side);
                Ok((Transport::Tunnel(stream), donor_side.clone()))
            }
            Err(e) => {
                warn!(peer = %donor_side, error = %e, "donor-side relay unreachable");
                relay.health().record_failure(donor_side, &e);
                Err(e)
            }
        };
    }
    let mut last_error = None;
    let mut tried: Vec<String> = Vec::new();
    let mut next = admission.donors.first().cloned();
    while let Some(donor) = next.take() {
        let dialed = match admission.dial_patience {
            Some(patience) => tokio::select! {
                dialed = dial::dial_until(config, relay.health(), &donor, Instant::now() + patience, conn.id()) => dialed,
                () = stage::recipient_gone(downstream) => return Err(RelayError::ClientLeft),
            },
            None => dial::dial(config, relay.health(), &donor).await,
        };
        match dialed {
            Ok(stream) => {
                debug!(upstream = %donor, resuming = admission.resuming, "upstream connected");
                return Ok((stream.into(), donor));
            }
            Err(e) => {
                warn!(upstream = %donor, error = %e, "donor unreachable");
                last_error = Some(e);
                tried.push(donor);
                next = conn.reserve_next(&admission.donors, &tried);
            }
        }
    }
    Err(last_error.unwrap_or_else(|| RelayError::Config {
        field: "upstream",
        reason: "no donor configured".into(),
    }))
}

/// Tells the recipient, in place of a greeting, that no donor could be reached. Best effort:
/// the recipient may be gone already.
async fn refuse(downstream: &mut Transport, e: &RelayError) {
    if matches!(e, RelayError::ClientLeft) {
        return;
    }
    let refusal = greeting_err_packet(CR_CONN_HOST_ERROR, &format!("clone-relay: {e}"));
    let _ = downstream.write_all(&refusal).await;
    let _ = downstream.shutdown().await;
}

/// Completes with the error when the login is not done by `due` (the handshake timeout counted
/// from the donor's greeting); never once it is done.
async fn login_deadline(due: Instant, timeout: Duration, conn: &ConnHandle) -> RelayError {
    tokio::time::sleep_until(due).await;
    if conn.past_login() {
        std::future::pending::<()>().await;
    }
    RelayError::HandshakeTimeout(timeout)
}
