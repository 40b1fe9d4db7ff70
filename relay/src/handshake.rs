//! The handshake stage, between the dial and the copy. It owns both sockets while the donor's
//! greeting and the recipient's login request pass, each read whole and shown to the
//! connection's decoder, and it sets up TLS on both legs the way MySQL does it, inside the
//! classic protocol:
//!
//! 1. The donor's greeting reaches the recipient with CLIENT_SSL set or cleared as the modes
//!    say (the relay offers TLS with its own certificate; nothing else in the greeting changes).
//! 2. The recipient answers with an SSLRequest (sequence id 1): the relay accepts its TLS, reads
//!    the login request (sequence id 2) inside it, refuses it when the recipient's certificate
//!    is not among the allowed subjects, sends the donor an SSLRequest of its own
//!    (the recipient's, as it came), connects TLS to the donor, and forwards the login request.
//!    Or it answers with a plain login request, which goes to the donor as it is.
//! 3. The copy takes over with both legs as plain byte streams ([`Leg`]); the decoder sees the
//!    bytes inside TLS.
//!
//! A mode that cannot be met is refused with a MySQL ERR packet naming the cause, before any
//! login byte reaches the donor. In `passthrough` the greeting and the recipient's TLS pass
//! untouched (and undecoded). Waits are bounded: the greeting by the admission's greeting wait,
//! the rest (TLS handshakes included) by the handshake timeout counted from the greeting.

use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::Instant;
use tracing::debug;

use crate::config::{ClientTlsMode, ServerTlsMode};
use crate::error::RelayError;
use crate::io::Observer;
use crate::leg::Leg;
use crate::protocol::handshake::{
    CLIENT_SSL, SSL_REQUEST_LEN, ServerHello, err_packet, greeting_err_packet, parse_login_request,
    parse_server_hello, set_greeting_ssl,
};
use crate::protocol::{Direction, HEADER_LEN, PacketHeader, Violation, ViolationKind};
use crate::tls::{Tls, donor_name};

/// MySQL's server error for "connections using insecure transport are prohibited".
const ER_SECURE_TRANSPORT_REQUIRED: u16 = 3159;
/// MySQL's client error for "SSL connection error".
const CR_SSL_CONNECTION_ERROR: u16 = 2026;

/// What the stage needs to know beyond the sockets.
#[derive(Debug, Clone, Copy)]
pub struct StageSettings<'a> {
    /// The donor, for messages and its TLS name.
    pub upstream_addr: &'a str,
    /// How long the donor's greeting may take.
    pub greeting_wait: Duration,
    /// The recipient's login (TLS included) must be done this long after the greeting.
    pub handshake_timeout: Duration,
    /// Largest greeting accepted from the donor.
    pub max_greeting_bytes: usize,
    pub client_tls: ClientTlsMode,
    pub server_tls: ServerTlsMode,
    pub tls: &'a Tls,
}

/// Both legs after the stage, and when the recipient's login must be complete.
#[derive(Debug)]
pub struct Handshaken {
    pub downstream: Leg,
    pub upstream: Leg,
    pub login_due: Instant,
}

/// Carries the greeting and the login request between `downstream` (the recipient) and
/// `upstream` (the donor) through `observer`, setting up TLS on both legs where the modes and
/// the recipient ask for it.
pub async fn run(
    mut downstream: TcpStream,
    mut upstream: TcpStream,
    observer: &impl Observer,
    s: &StageSettings<'_>,
) -> Result<Handshaken, RelayError> {
    let mut greeting = tokio::select! {
        packet = tokio::time::timeout(s.greeting_wait, read_greeting(&mut upstream, s.max_greeting_bytes)) => {
            packet.map_err(|_| RelayError::UpstreamTimeout {
                addr: s.upstream_addr.to_string(),
                timeout: s.greeting_wait,
            })??
        }
        () = recipient_gone(&downstream) => return Err(RelayError::ClientLeft),
    };
    let hello = parse_server_hello(&greeting[HEADER_LEN..]);
    let donor_offers_tls = match &hello {
        Ok(ServerHello::Greeting(g)) => g.capabilities & CLIENT_SSL != 0,
        _ => false,
    };
    let offer = match (&hello, offer_tls(s, donor_offers_tls)) {
        // A donor's own refusal (too many connections, host blocked) passes as it is.
        (Ok(ServerHello::Error { .. }), _) => None,
        (_, Ok(offer)) => offer,
        (_, Err(reason)) => return refuse(&mut downstream, 0, reason).await,
    };
    if let (Some(offer), Ok(ServerHello::Greeting(_))) = (offer, &hello) {
        set_greeting_ssl(&mut greeting[HEADER_LEN..], offer).expect("a parsed greeting");
    }
    observer
        .observe(Direction::Downstream, &greeting)
        .map_err(RelayError::Protocol)?;
    downstream
        .write_all(&greeting)
        .await
        .map_err(RelayError::Downstream)?;
    if let Ok(ServerHello::Error { code, message }) = hello {
        // The donor refused the connection (too many connections, host blocked): the recipient
        // has its error packet; there is no login to wait for.
        return Err(RelayError::UpstreamRefused {
            addr: s.upstream_addr.to_string(),
            code,
            message,
        });
    }

    let login_due = Instant::now() + s.handshake_timeout;
    let legs = tokio::time::timeout_at(
        login_due,
        log_in(
            &mut downstream,
            &mut upstream,
            observer,
            s,
            offer == Some(true),
        ),
    )
    .await;
    match legs {
        Ok(Ok(Legs::Plain)) => Ok(Handshaken {
            downstream: Leg::Plain(downstream),
            upstream: Leg::Plain(upstream),
            login_due,
        }),
        Ok(Ok(Legs::Upgrade)) => {
            let (downstream, upstream) =
                tokio::time::timeout_at(login_due, upgrade(downstream, upstream, observer, s))
                    .await
                    .map_err(|_| RelayError::HandshakeTimeout(s.handshake_timeout))??;
            Ok(Handshaken {
                downstream,
                upstream,
                login_due,
            })
        }
        Ok(Err(e)) => {
            drain(&downstream);
            Err(e)
        }
        Err(_) => Err(RelayError::HandshakeTimeout(s.handshake_timeout)),
    }
}

/// Whether the greeting offers TLS to the recipient (`None`: leave it as the donor sent it), or
/// why the connection cannot go on.
fn offer_tls(s: &StageSettings<'_>, donor_offers: bool) -> Result<Option<bool>, String> {
    let relay_can = s.tls.acceptor().is_some() && s.tls.connector().is_some();
    match s.client_tls {
        ClientTlsMode::Passthrough => Ok(None),
        ClientTlsMode::Disabled => Ok(Some(false)),
        _ if s.server_tls == ServerTlsMode::Required && !donor_offers => Err(format!(
            "clone-relay: the donor {} offers no TLS and --server-tls-mode is required",
            s.upstream_addr
        )),
        ClientTlsMode::Required if !donor_offers => Err(format!(
            "clone-relay: the donor {} offers no TLS and --client-tls-mode is required (TLS on one leg only is not supported yet)",
            s.upstream_addr
        )),
        ClientTlsMode::Required | ClientTlsMode::Preferred => Ok(Some(relay_can && donor_offers)),
    }
}

/// How the legs go on after the first login packet.
enum Legs {
    /// Both stay plain (the login request has been forwarded).
    Plain,
    /// The recipient sent an SSLRequest the relay accepts: both legs become TLS.
    Upgrade,
}

/// Reads the recipient's first login packet and decides: forwarded as it is, refused, or an
/// SSLRequest to accept.
async fn log_in(
    downstream: &mut TcpStream,
    upstream: &mut TcpStream,
    observer: &impl Observer,
    s: &StageSettings<'_>,
    offered: bool,
) -> Result<Legs, RelayError> {
    let first = match read_packet(downstream, observer, Direction::Upstream).await {
        Err(RelayError::Downstream(e)) if recipient_left(&e) => return Err(RelayError::ClientLeft),
        other => other?,
    };
    let payload = &first[HEADER_LEN..];
    let wants_tls = parse_login_request(payload, payload.len()).is_ok_and(|l| l.is_ssl_request);
    if s.client_tls == ClientTlsMode::Passthrough {
        upstream
            .write_all(&first)
            .await
            .map_err(RelayError::Upstream)?;
        if wants_tls {
            debug!("TLS passed through undecoded: clone awareness is off for this connection");
        }
        return Ok(Legs::Plain);
    }
    match (wants_tls, offered) {
        (true, true) => Ok(Legs::Upgrade),
        (true, false) => refuse(downstream, 2, "clone-relay: TLS was not offered".into()).await,
        (false, _) if s.client_tls == ClientTlsMode::Required => {
            refuse_with(
                downstream,
                2,
                ER_SECURE_TRANSPORT_REQUIRED,
                "clone-relay: connections without TLS are refused (--client-tls-mode required)".into(),
            )
            .await
        }
        (false, _) if s.server_tls == ServerTlsMode::Required => {
            refuse_with(
                downstream,
                2,
                ER_SECURE_TRANSPORT_REQUIRED,
                "clone-relay: the donor leg requires TLS, so the recipient must use TLS too (TLS on one leg only is not supported yet)".into(),
            )
            .await
        }
        (false, _) => {
            upstream.write_all(&first).await.map_err(RelayError::Upstream)?;
            Ok(Legs::Plain)
        }
    }
}

/// TLS on both legs: accept the recipient's, read its login request inside, then connect TLS to
/// the donor with an SSLRequest of the relay's own and forward the login. A donor whose TLS
/// fails is reported to the recipient inside its TLS, and nothing of the login reaches it.
async fn upgrade(
    downstream: TcpStream,
    mut upstream: TcpStream,
    observer: &impl Observer,
    s: &StageSettings<'_>,
) -> Result<(Leg, Leg), RelayError> {
    let (Some(acceptor), Some(connector)) = (s.tls.acceptor(), s.tls.connector()) else {
        unreachable!("TLS is offered only when the relay has both sides of it");
    };
    let mut recipient = acceptor
        .accept(downstream)
        .await
        .map_err(|e| RelayError::DownstreamTls(e.to_string()))?;
    let login = match read_packet(&mut recipient, observer, Direction::Upstream).await {
        Err(RelayError::Downstream(e)) if recipient_left(&e) => return Err(RelayError::ClientLeft),
        other => other?,
    };
    if let Err(reason) = s
        .tls
        .admit_recipient(recipient.get_ref().1.peer_certificates())
    {
        return refuse(&mut recipient, 3, reason).await;
    }
    let Some(ssl_request) = ssl_request_for(&login) else {
        return refuse(
            &mut recipient,
            3,
            "clone-relay: login request too short".into(),
        )
        .await;
    };
    upstream
        .write_all(&ssl_request)
        .await
        .map_err(RelayError::Upstream)?;
    let donor = match connector
        .connect(donor_name(s.upstream_addr), upstream)
        .await
    {
        Ok(donor) => donor,
        Err(e) => {
            let reason = format!(
                "clone-relay: TLS to the donor {} failed: {e}",
                s.upstream_addr
            );
            send_err(&mut recipient, 3, CR_SSL_CONNECTION_ERROR, &reason).await;
            return Err(RelayError::UpstreamTls {
                addr: s.upstream_addr.to_string(),
                reason: e.to_string(),
            });
        }
    };
    let mut donor = Leg::ToDonor(Box::new(donor));
    donor
        .write_all(&login)
        .await
        .map_err(RelayError::Upstream)?;
    Ok((Leg::FromRecipient(Box::new(recipient)), donor))
}

/// The SSLRequest the relay sends the donor: the recipient's capabilities and settings, from
/// the head of its login request, with sequence id 1.
fn ssl_request_for(login: &[u8]) -> Option<Vec<u8>> {
    let head = login.get(HEADER_LEN..HEADER_LEN + SSL_REQUEST_LEN)?;
    Some(crate::protocol::frame(1, head))
}

/// Sends the recipient an ERR packet naming why the connection cannot go on, and fails with it.
async fn refuse<T>(
    downstream: &mut (impl AsyncWrite + Unpin),
    seq: u8,
    reason: String,
) -> Result<T, RelayError> {
    refuse_with(downstream, seq, CR_SSL_CONNECTION_ERROR, reason).await
}

async fn refuse_with<T>(
    downstream: &mut (impl AsyncWrite + Unpin),
    seq: u8,
    code: u16,
    reason: String,
) -> Result<T, RelayError> {
    send_err(downstream, seq, code, &reason).await;
    Err(RelayError::TlsRefused(reason))
}

/// Sends the recipient an ERR packet and closes the way to it. Best effort: the recipient may
/// be gone already. With `seq` 0 the packet takes the greeting's place and has no SQL state.
async fn send_err(downstream: &mut (impl AsyncWrite + Unpin), seq: u8, code: u16, reason: &str) {
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
async fn read_greeting(upstream: &mut TcpStream, max: usize) -> Result<Vec<u8>, RelayError> {
    let mut packet = vec![0u8; HEADER_LEN];
    upstream
        .read_exact(&mut packet)
        .await
        .map_err(RelayError::Upstream)?;
    let header = PacketHeader::parse(&packet).expect("a whole header");
    if header.payload_len > max {
        return Err(RelayError::Protocol(Violation {
            kind: ViolationKind::Oversize,
            from: Direction::Downstream,
            detail: format!("{}-byte greeting (limit {max})", header.payload_len),
        }));
    }
    packet.resize(HEADER_LEN + header.payload_len, 0);
    upstream
        .read_exact(&mut packet[HEADER_LEN..])
        .await
        .map_err(RelayError::Upstream)?;
    Ok(packet)
}

/// Reads exactly one packet travelling in `dir` (the TLS handshake may follow it on the same
/// socket), shown to `observer` as it arrives: the header first, so an oversized length is
/// refused before its payload is read.
async fn read_packet(
    from: &mut (impl AsyncRead + Unpin),
    observer: &impl Observer,
    dir: Direction,
) -> Result<Vec<u8>, RelayError> {
    let leg_error = |e| match dir {
        Direction::Upstream => RelayError::Downstream(e),
        Direction::Downstream => RelayError::Upstream(e),
    };
    let mut packet = vec![0u8; HEADER_LEN];
    from.read_exact(&mut packet).await.map_err(leg_error)?;
    observer
        .observe(dir, &packet)
        .map_err(RelayError::Protocol)?;
    let header = PacketHeader::parse(&packet).expect("a whole header");
    packet.resize(HEADER_LEN + header.payload_len, 0);
    from.read_exact(&mut packet[HEADER_LEN..])
        .await
        .map_err(leg_error)?;
    observer
        .observe(dir, &packet[HEADER_LEN..])
        .map_err(RelayError::Protocol)?;
    Ok(packet)
}

fn recipient_left(e: &std::io::Error) -> bool {
    matches!(
        e.kind(),
        std::io::ErrorKind::UnexpectedEof | std::io::ErrorKind::ConnectionReset
    )
}

/// Reads and drops what the recipient has already sent, so that closing after a refusal ends
/// with a FIN rather than a reset that could hide the refusal from it.
fn drain(downstream: &TcpStream) {
    let mut sink = [0u8; 4096];
    while matches!(downstream.try_read(&mut sink), Ok(n) if n > 0) {}
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
