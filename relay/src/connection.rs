//! One recipient connection: dial the donor, then carry bytes both ways through the protocol
//! decoder until either side ends, a peer breaks the protocol, or login takes too long.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Instant;

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
/// greeting when the donor cannot be reached, so its CLONE fails with a reason rather than EOF.
const CR_CONN_HOST_ERROR: u16 = 2003;

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
    let config = relay.config();
    let metrics = relay.metrics();
    metrics.connections_accepted.fetch_add(1, Ordering::Relaxed);
    metrics.connections_active.fetch_add(1, Ordering::Relaxed);
    let legs = Legs::default();
    let conn = Arc::new(
        relay
            .registry()
            .open(id, peer, &config.upstream, legs.clone()),
    );

    let mut downstream = downstream;
    let mut upstream = None;
    let result = tokio::select! {
        result = carry(&mut downstream, &mut upstream, config, &legs, &conn) => result,
        _ = close_now.cancelled() => Err(RelayError::Shutdown),
        _ = conn.aborted() => Err(RelayError::Aborted),
    };
    if matches!(result, Err(RelayError::Aborted)) {
        // A real reset on both legs: the recipient sees the failure at once and resumes.
        for stream in std::iter::once(&downstream).chain(upstream.as_ref()) {
            let _ = socket2::SockRef::from(stream).set_linger(Some(std::time::Duration::ZERO));
        }
    }
    drop((downstream, upstream));
    let result = match (result, conn.violation()) {
        (Err(_), Some(violation)) => Err(RelayError::Protocol(violation)),
        (result, _) => result,
    };

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
    conn.close(&reason);

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

/// Dials the donor into `upstream_slot` (so the caller keeps both sockets and can reset them),
/// then copies until the end.
async fn carry(
    downstream: &mut TcpStream,
    upstream_slot: &mut Option<TcpStream>,
    config: &Config,
    legs: &Legs,
    conn: &Arc<ConnHandle>,
) -> Result<(), RelayError> {
    socket::tune(downstream, config).map_err(RelayError::Downstream)?;
    let upstream = match upstream::dial(config).await {
        Ok(upstream) => upstream_slot.insert(upstream),
        Err(e) => {
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
        }
    };
    debug!(upstream = %config.upstream, "upstream connected");

    let downstream = Observed::new(downstream, conn.clone(), Direction::Upstream);
    let upstream = Observed::new(upstream, conn.clone(), Direction::Downstream);
    let copy = copy::relay(downstream, upstream, config.copy_buffer_bytes, legs);
    let login_deadline = async {
        tokio::time::sleep(config.handshake_timeout).await;
        if conn.past_login() {
            std::future::pending::<()>().await;
        }
    };
    tokio::select! {
        result = copy => result,
        _ = login_deadline => Err(RelayError::HandshakeTimeout(config.handshake_timeout)),
    }
}
