//! One recipient connection: dial the donor, then carry bytes both ways until either side ends.

use std::sync::Arc;
use std::time::Instant;

use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::config::Config;
use crate::copy::{self, Legs};
use crate::error::RelayError;
use crate::protocol::handshake::err_packet;
use crate::{socket, upstream};

/// MySQL's client error for "can't connect to server", sent to the recipient in place of a
/// greeting when the donor cannot be reached, so its CLONE fails with a reason rather than EOF.
const CR_CONN_HOST_ERROR: u16 = 2003;

/// Serves one downstream connection to its end and logs how it ended, with byte counts.
/// `close_now` ends it early (relay shutdown after the grace period).
pub async fn serve(downstream: TcpStream, config: Arc<Config>, close_now: CancellationToken) {
    let started = Instant::now();
    let legs = Legs::default();
    let result = tokio::select! {
        result = carry(downstream, &config, &legs) => result,
        _ = close_now.cancelled() => Err(RelayError::Shutdown),
    };
    let bytes_from_downstream = legs.downstream.bytes_read();
    let bytes_from_upstream = legs.upstream.bytes_read();
    let duration_ms = started.elapsed().as_millis() as u64;
    match result {
        Ok(()) => info!(
            bytes_from_downstream,
            bytes_from_upstream, duration_ms, "connection closed"
        ),
        Err(e) if e.is_peer_reset() => debug!(
            bytes_from_downstream,
            bytes_from_upstream,
            duration_ms,
            reason = %e,
            "connection closed by peer reset"
        ),
        Err(e) => warn!(
            bytes_from_downstream,
            bytes_from_upstream,
            duration_ms,
            reason = %e,
            "connection closed on error"
        ),
    }
}

async fn carry(mut downstream: TcpStream, config: &Config, legs: &Legs) -> Result<(), RelayError> {
    socket::tune(&downstream, config).map_err(RelayError::Downstream)?;
    let upstream = match upstream::dial(config).await {
        Ok(upstream) => upstream,
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
    copy::relay(downstream, upstream, config.copy_buffer_bytes, legs).await
}
