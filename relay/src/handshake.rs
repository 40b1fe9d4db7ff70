//! The handshake stage, between the dial and the copy: it owns both legs while the donor's
//! greeting and the recipient's first login packet pass, each read whole, shown to the
//! connection's decoder, then forwarded. This is where either leg's protocol can be upgraded
//! before the copy takes over; today both legs stay as they are.
//!
//! Waits are bounded: the donor's greeting by the admission's greeting wait (long only for a
//! resuming clone's reconnect), the recipient's login by the handshake timeout counted from the
//! greeting. A recipient that leaves before its login ends the stage at once.

use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::Instant;

use crate::error::RelayError;
use crate::io::Observer;
use crate::protocol::handshake::{ServerHello, parse_server_hello};
use crate::protocol::{Direction, HEADER_LEN, PacketHeader};

/// Bytes asked for by each read of the stage.
const READ_CHUNK: usize = 16 * 1024;

/// How the stage ended: when the recipient's login must be complete.
#[derive(Debug, Clone, Copy)]
pub struct LoggingIn {
    pub login_due: Instant,
}

/// Carries the greeting and the first login packet between `downstream` (the recipient) and
/// `upstream` (the donor), through `observer`.
pub async fn run(
    downstream: &mut TcpStream,
    upstream: &mut TcpStream,
    observer: &impl Observer,
    upstream_addr: &str,
    greeting_wait: Duration,
    handshake_timeout: Duration,
) -> Result<LoggingIn, RelayError> {
    let greeting = tokio::select! {
        packet = tokio::time::timeout(greeting_wait, read_packet(upstream, observer, Direction::Downstream)) => {
            packet.map_err(|_| RelayError::UpstreamTimeout {
                addr: upstream_addr.to_string(),
                timeout: greeting_wait,
            })??
        }
        () = recipient_gone(downstream) => return Err(RelayError::ClientLeft),
    };
    downstream
        .write_all(&greeting)
        .await
        .map_err(RelayError::Downstream)?;
    if let Ok(ServerHello::Error { code, message }) = parse_server_hello(&greeting[HEADER_LEN..]) {
        // The donor refused the connection (too many connections, host blocked): the recipient
        // has its error packet; there is no login to wait for.
        return Err(RelayError::UpstreamRefused {
            addr: upstream_addr.to_string(),
            code,
            message,
        });
    }
    let login_due = Instant::now() + handshake_timeout;
    let login = tokio::time::timeout_at(
        login_due,
        read_packet(downstream, observer, Direction::Upstream),
    )
    .await
    .map_err(|_| RelayError::HandshakeTimeout(handshake_timeout))?;
    let login = match login {
        Err(RelayError::Downstream(e))
            if matches!(
                e.kind(),
                std::io::ErrorKind::UnexpectedEof | std::io::ErrorKind::ConnectionReset
            ) =>
        {
            return Err(RelayError::ClientLeft);
        }
        other => other?,
    };
    upstream
        .write_all(&login)
        .await
        .map_err(RelayError::Upstream)?;
    Ok(LoggingIn { login_due })
}

/// Reads from `from` until one whole packet travelling in `dir` has arrived, showing every
/// read to `observer` as it comes (so an oversized length is refused at its header, before its
/// payload is read). Returns every byte read, to forward as it is.
async fn read_packet(
    from: &mut (impl AsyncRead + Unpin),
    observer: &impl Observer,
    dir: Direction,
) -> Result<Vec<u8>, RelayError> {
    let leg_error = |e| match dir {
        Direction::Upstream => RelayError::Downstream(e),
        Direction::Downstream => RelayError::Upstream(e),
    };
    let mut bytes = Vec::with_capacity(READ_CHUNK);
    loop {
        let whole =
            PacketHeader::parse(&bytes).is_some_and(|h| bytes.len() >= HEADER_LEN + h.payload_len);
        if whole {
            return Ok(bytes);
        }
        let before = bytes.len();
        bytes.reserve(READ_CHUNK);
        let n = from.read_buf(&mut bytes).await.map_err(leg_error)?;
        if n == 0 {
            return Err(leg_error(std::io::ErrorKind::UnexpectedEof.into()));
        }
        observer
            .observe(dir, &bytes[before..])
            .map_err(RelayError::Protocol)?;
    }
}

/// Completes when the recipient closes its connection before logging in. It sends nothing
/// before the greeting, so any readiness is its end; bytes it sent early stay for the login read.
pub async fn recipient_gone(downstream: &TcpStream) {
    let mut probe = [0u8; 1];
    match downstream.peek(&mut probe).await {
        Ok(0) | Err(_) => {}
        Ok(_) => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::frame;
    use crate::protocol::{Violation, ViolationKind};

    /// Refuses packets longer than 100 bytes at their header, as the decoder does before auth.
    struct SmallPackets;

    impl Observer for SmallPackets {
        fn observe(&self, dir: Direction, bytes: &[u8]) -> Result<(), Violation> {
            match PacketHeader::parse(bytes) {
                Some(h) if bytes.len() == HEADER_LEN && h.payload_len > 100 => Err(Violation {
                    kind: ViolationKind::Oversize,
                    from: dir,
                    detail: format!("{} bytes", h.payload_len),
                }),
                _ => Ok(()),
            }
        }
    }

    async fn pair() -> (TcpStream, TcpStream) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let client = TcpStream::connect(listener.local_addr().unwrap());
        let (client, accepted) = tokio::join!(client, listener.accept());
        (client.unwrap(), accepted.unwrap().0)
    }

    #[tokio::test]
    async fn greeting_and_login_pass_whole_and_oversize_is_refused_at_the_header() {
        let (mut recipient, mut relay_down) = pair().await;
        let (mut relay_up, mut donor) = pair().await;
        let greeting = frame(0, b"\x0a9.7.4\0greeting");
        let login = frame(1, b"login request");
        donor.write_all(&greeting).await.unwrap();
        recipient.write_all(&login).await.unwrap();
        let s = Duration::from_secs(5);
        run(&mut relay_down, &mut relay_up, &SmallPackets, "donor", s, s)
            .await
            .unwrap();
        let mut got = vec![0u8; greeting.len()];
        recipient.read_exact(&mut got).await.unwrap();
        assert_eq!(got, greeting);
        let mut got = vec![0u8; login.len()];
        donor.read_exact(&mut got).await.unwrap();
        assert_eq!(got, login);

        // A 16 MiB length from the recipient is refused before any of it is read or forwarded.
        let (mut recipient, mut relay_down) = pair().await;
        let (mut relay_up, mut donor) = pair().await;
        donor.write_all(&greeting).await.unwrap();
        recipient.write_all(&[0xff, 0xff, 0xff, 1]).await.unwrap();
        let err = run(&mut relay_down, &mut relay_up, &SmallPackets, "donor", s, s)
            .await
            .unwrap_err();
        assert!(matches!(err, RelayError::Protocol(ref v) if v.kind == ViolationKind::Oversize));
        drop(relay_up);
        let mut rest = Vec::new();
        donor.read_to_end(&mut rest).await.unwrap();
        assert!(rest.is_empty(), "nothing reached the donor: {rest:?}");
    }

    #[tokio::test]
    async fn a_recipient_that_leaves_without_a_byte_is_told_apart() {
        let (recipient, mut relay_down) = pair().await;
        let (mut relay_up, _donor) = pair().await;
        drop(recipient);
        let s = Duration::from_secs(5);
        let err = run(&mut relay_down, &mut relay_up, &SmallPackets, "donor", s, s)
            .await
            .unwrap_err();
        assert!(matches!(err, RelayError::ClientLeft), "{err:?}");
    }

    #[tokio::test(start_paused = true)]
    async fn a_silent_donor_gets_the_greeting_wait_and_no_more() {
        let (_recipient, mut relay_down) = pair().await;
        let (mut relay_up, _donor) = pair().await;
        let wait = Duration::from_secs(3);
        let err = run(
            &mut relay_down,
            &mut relay_up,
            &SmallPackets,
            "donor",
            wait,
            wait,
        )
        .await
        .unwrap_err();
        assert!(matches!(err, RelayError::UpstreamTimeout { timeout, .. } if timeout == wait));
    }
}
