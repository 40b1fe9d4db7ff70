//! The handshake stage's packet I/O: bounded reads shown to the connection's observer, the ERR
//! packets of a refusal, draining what a refused recipient sent, and noticing a recipient that
//! leaves before its login.

use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};

use super::leg::Wire;
use super::transport::Transport;
use crate::error::RelayError;
use crate::io::Observer;
use crate::protocol::Direction;
use crate::protocol::handshake::{err_packet, greeting_err_packet};
use crate::protocol::packet::read_bounded;

/// MySQL's client error for "SSL connection error".
pub(super) const CR_SSL_CONNECTION_ERROR: u16 = 2026;

/// Sends the recipient an ERR packet naming why the connection cannot go on, and fails with it.
pub(super) async fn refuse<T>(
    downstream: &mut (impl AsyncWrite + Unpin),
    seq: u8,
    reason: String,
) -> Result<T, RelayError> {
    send_err(downstream, seq, CR_SSL_CONNECTION_ERROR, &reason).await;
    Err(RelayError::TlsRefused(reason))
}

/// Sends the recipient an ERR packet and closes the way to it. Best effort: the recipient may
/// be gone already. With `seq` 0 the packet takes the greeting's place and has no SQL state.
pub(super) async fn send_err(
    downstream: &mut (impl AsyncWrite + Unpin),
    seq: u8,
    code: u16,
    reason: &str,
) {
    let packet = if seq == 0 {
        greeting_err_packet(code, reason)
    } else {
        err_packet(seq, code, b"HY000", reason)
    };
    let _ = downstream.write_all(&packet).await;
    let _ = downstream.shutdown().await;
}

/// Reads the donor's greeting whole (bounded by `max` bytes) before anything sees it, since the
/// relay may change its TLS offer.
pub(super) async fn read_greeting(upstream: &mut Wire, max: usize) -> Result<Vec<u8>, RelayError> {
    read_bounded(upstream, max)
        .await
        .map_err(|e| RelayError::from_read(e, Direction::Downstream))
}

/// Reads exactly one packet travelling in `dir` (the TLS handshake may follow it on the same
/// socket), at most `max` payload bytes, and shows it to `observer`.
pub(super) async fn read_packet(
    from: &mut (impl AsyncRead + Unpin),
    observer: &impl Observer,
    dir: Direction,
    max: usize,
) -> Result<Vec<u8>, RelayError> {
    let packet = read_bounded(from, max)
        .await
        .map_err(|e| RelayError::from_read(e, dir))?;
    observer
        .observe(dir, &packet)
        .map_err(RelayError::Protocol)?;
    Ok(packet)
}

pub(super) fn recipient_left(e: &std::io::Error) -> bool {
    matches!(
        e.kind(),
        std::io::ErrorKind::UnexpectedEof | std::io::ErrorKind::ConnectionReset
    )
}

/// Reads and drops what the recipient has already sent, so that closing after a refusal ends
/// with a FIN rather than a reset that could hide the refusal from it.
pub(super) fn drain(downstream: &Transport) {
    let Some(downstream) = downstream.tcp() else {
        return;
    };
    let mut sink = [0u8; 4096];
    while matches!(downstream.try_read(&mut sink), Ok(n) if n > 0) {}
}

/// Completes when the recipient closes its connection before logging in. It sends nothing
/// before the greeting, so any readiness is its end; bytes it sent early stay for the login read.
/// A tunnel stream tells its end through its reads instead: never here.
pub async fn recipient_gone(downstream: &Transport) {
    let Some(downstream) = downstream.tcp() else {
        return std::future::pending().await;
    };
    let mut probe = [0u8; 1];
    match downstream.peek(&mut probe).await {
        Ok(0) | Err(_) => {}
        Ok(_) => std::future::pending().await,
    }
}
