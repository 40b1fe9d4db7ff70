//! The handshake stage, between the dial and the copy. It owns both sockets until the donor's
//! OK (or ERR) ends authentication, reads every packet whole, shows each to the connection's
//! decoder as the recipient's conversation has it, and sets up TLS on each leg the way MySQL
//! does it, inside the classic protocol:
//!
//! 1. The donor's greeting reaches the recipient with CLIENT_SSL set or cleared as the client
//!    mode says: the relay offers TLS with its own certificate whenever it terminates TLS,
//!    whether or not the donor offers it (nothing else in the greeting changes).
//! 2. The recipient answers with an SSLRequest (sequence id 1): the relay accepts its TLS and
//!    reads the login request (sequence id 2) inside it, refusing it when the recipient's
//!    certificate is not among the allowed subjects. Or it answers with a plain login request.
//! 3. The donor leg gets TLS as the server mode says (`as-client`: when the recipient's has it
//!    and the donor offers it; `preferred`: when the donor offers it; `required`: always;
//!    `disabled`: never): an SSLRequest of the relay's own, then TLS. The login request goes to
//!    the donor with CLIENT_SSL saying what the donor leg does.
//! 4. The auth exchange is carried packet by packet ([`crate::auth`]), each leg with its own
//!    sequence ids, bridging caching_sha2_password's full authentication when one leg has TLS
//!    and the other not.
//! 5. The copy takes over with both legs as plain byte streams ([`Leg`]).
//!
//! A mode that cannot be met is refused with a MySQL ERR packet naming the cause, before any
//! login byte reaches the donor. In `passthrough` the greeting and the recipient's TLS pass
//! untouched (and undecoded), and the copy carries the login. Waits are bounded: the greeting
//! by the admission's greeting wait, the rest (TLS handshakes and the auth exchange included) by
//! the handshake timeout counted from the greeting.

use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use crate::leg::Wire;
use tokio::time::Instant;
use tracing::debug;

use crate::auth::{self, Exchange};
use crate::config::{ClientTlsMode, ServerTlsMode};
use crate::error::RelayError;
use crate::io::Observer;
use crate::leg::Leg;
use crate::protocol::auth::{NONCE_LEN, SeqCounter, greeting_nonce, set_login_ssl};
use crate::protocol::handshake::{
    CLIENT_SSL, SSL_REQUEST_LEN, ServerHello, err_packet, greeting_err_packet, parse_login_request,
    parse_server_hello, set_greeting_ssl,
};
use crate::protocol::{Direction, HEADER_LEN, PacketHeader, Violation, ViolationKind};
use crate::tls::{Tls, donor_name};
use crate::transport::Transport;

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
    mut downstream: Wire,
    mut upstream: Wire,
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
        () = recipient_gone(downstream.get_ref()) => return Err(RelayError::ClientLeft),
    };
    let hello = parse_server_hello(&greeting[HEADER_LEN..]);
    // A tunnel stream carries the login in clear inside the tunnel's own TLS: no TLS inside it,
    // and the relay at its other end deals with the donor's.
    let tunnels = Tunnels {
        downstream: downstream.get_ref().is_tunnel(),
        upstream: upstream.get_ref().is_tunnel(),
    };
    let donor_offers_tls = match &hello {
        Ok(ServerHello::Greeting(g)) => g.capabilities & CLIENT_SSL != 0 && !tunnels.upstream,
        _ => false,
    };
    let offer = match (&hello, offer_tls(s, donor_offers_tls, tunnels)) {
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

    let nonce = greeting_nonce(&greeting[HEADER_LEN..]);
    let login_due = Instant::now() + s.handshake_timeout;
    let donor = Donor {
        offers_tls: donor_offers_tls,
        nonce,
        tunnels,
    };
    let legs = tokio::time::timeout_at(
        login_due,
        log_in(
            downstream,
            upstream,
            observer,
            s,
            offer == Some(true),
            donor,
        ),
    )
    .await;
    match legs {
        Ok(Ok((downstream, upstream))) => Ok(Handshaken {
            downstream,
            upstream,
            login_due,
        }),
        Ok(Err(e)) => Err(e),
        Err(_) => Err(RelayError::HandshakeTimeout(s.handshake_timeout)),
    }
}

/// What the donor's greeting told.
#[derive(Debug, Clone, Copy)]
struct Donor {
    offers_tls: bool,
    nonce: Option<[u8; NONCE_LEN]>,
    tunnels: Tunnels,
}

/// Which legs are streams of a relay pair's tunnel: secure as they are (the tunnel is mutual
/// TLS), so the auth exchange treats them as TLS legs, and no TLS is set up inside them.
#[derive(Debug, Clone, Copy)]
struct Tunnels {
    downstream: bool,
    upstream: bool,
}

/// Whether the greeting offers TLS to the recipient (`None`: leave it as the donor sent it), or
/// why the connection cannot go on.
fn offer_tls(
    s: &StageSettings<'_>,
    donor_offers: bool,
    tunnels: Tunnels,
) -> Result<Option<bool>, String> {
    match s.client_tls {
        ClientTlsMode::Passthrough => Ok(None),
        _ if s.server_tls == ServerTlsMode::Required && !donor_offers && !tunnels.upstream => {
            Err(format!(
                "clone-relay: the donor {} offers no TLS and --server-tls-mode is required",
                s.upstream_addr
            ))
        }
        _ if tunnels.downstream => Ok(Some(false)),
        ClientTlsMode::Disabled => Ok(Some(false)),
        ClientTlsMode::Required | ClientTlsMode::Preferred => Ok(Some(s.tls.acceptor().is_some())),
    }
}

/// Whether the donor leg uses TLS, once the recipient's leg is known.
fn donor_tls(s: &StageSettings<'_>, recipient_tls: bool, donor_offers: bool) -> bool {
    let wanted = match s.server_tls {
        ServerTlsMode::Disabled => false,
        ServerTlsMode::Preferred | ServerTlsMode::Required => true,
        ServerTlsMode::AsClient => recipient_tls,
    };
    wanted && donor_offers && s.tls.connector().is_some()
}

/// Reads the recipient's first login packet and carries the login: refused, passed through
/// (`passthrough`), or with each leg set up and the auth exchange carried to its end.
async fn log_in(
    mut downstream: Wire,
    mut upstream: Wire,
    observer: &impl Observer,
    s: &StageSettings<'_>,
    offered: bool,
    donor: Donor,
) -> Result<(Leg, Leg), RelayError> {
    let first = match read_packet(&mut downstream, observer, Direction::Upstream).await {
        Ok(first) => first,
        Err(RelayError::Downstream(e)) if recipient_left(&e) => return Err(RelayError::ClientLeft),
        Err(e) => {
            // A refused packet (oversize, malformed) may leave bytes unread: drained, the close
            // is a FIN the recipient can read up to, not a reset.
            drain(downstream.get_ref());
            return Err(e);
        }
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
        return Ok((Leg::Plain(downstream), Leg::Plain(upstream)));
    }
    let refusal = match (wants_tls, offered) {
        (true, false) => Some((
            CR_SSL_CONNECTION_ERROR,
            "clone-relay: TLS was not offered".to_string(),
        )),
        (false, _) if s.client_tls == ClientTlsMode::Required && !donor.tunnels.downstream => {
            Some((
                ER_SECURE_TRANSPORT_REQUIRED,
                "clone-relay: connections without TLS are refused (--client-tls-mode required)"
                    .to_string(),
            ))
        }
        _ => None,
    };
    if let Some((code, reason)) = refusal {
        let refused = refuse_with(&mut downstream, 2, code, reason).await;
        drain(downstream.get_ref());
        return refused;
    }
    let (mut recipient, login) = if wants_tls {
        accept(downstream, observer, s).await?
    } else {
        (Leg::Plain(downstream), first)
    };
    match carry_login(&mut recipient, upstream, observer, s, login, donor).await {
        Ok(upstream) => Ok((recipient, upstream)),
        Err(e) => {
            if let Leg::Plain(downstream) = &recipient {
                drain(downstream.get_ref());
            }
            Err(e)
        }
    }
}

/// Accepts the recipient's TLS and reads its login request inside; refuses a recipient whose
/// certificate is not among the allowed subjects.
async fn accept(
    downstream: Wire,
    observer: &impl Observer,
    s: &StageSettings<'_>,
) -> Result<(Leg, Vec<u8>), RelayError> {
    let Some(acceptor) = s.tls.acceptor() else {
        unreachable!("TLS is offered only when the relay terminates it");
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
    Ok((Leg::FromRecipient(Box::new(recipient)), login))
}

/// Sets up the donor leg (TLS with an SSLRequest of the relay's own when the server mode says
/// so), sends the login request with the donor leg's sequence id and CLIENT_SSL, and carries the
/// auth exchange. A donor whose TLS fails is reported to the recipient, and nothing of the
/// login reaches it.
async fn carry_login(
    recipient: &mut Leg,
    mut upstream: Wire,
    observer: &impl Observer,
    s: &StageSettings<'_>,
    mut login: Vec<u8>,
    donor: Donor,
) -> Result<Leg, RelayError> {
    // Over a tunnel, the login's CLIENT_SSL says whether the recipient's own leg has TLS (the
    // relay at the tunnel's other end sets it so), which `as-client` follows.
    let recipient_leg_tls = if donor.tunnels.downstream {
        parse_login_request(&login[HEADER_LEN..], login.len() - HEADER_LEN)
            .is_ok_and(|l| l.capabilities & CLIENT_SSL != 0)
    } else {
        recipient.is_tls()
    };
    let recipient_tls = recipient.is_tls() || donor.tunnels.downstream;
    let mut recipient_seq = SeqCounter::new(0);
    recipient_seq.received(login[3]);
    let donor_tls = donor_tls(s, recipient_leg_tls, donor.offers_tls);
    let mut donor_seq = SeqCounter::new(1);
    let mut donor_leg = if donor_tls {
        let Some(ssl_request) = ssl_request_for(&login) else {
            return refuse(
                recipient,
                recipient_seq.take(),
                "clone-relay: login request too short".into(),
            )
            .await;
        };
        upstream
            .write_all(&ssl_request)
            .await
            .map_err(RelayError::Upstream)?;
        donor_seq.take();
        let connector = s
            .tls
            .connector()
            .expect("TLS to donors only with a connector");
        match connector
            .connect(donor_name(s.upstream_addr), upstream)
            .await
        {
            Ok(tls) => Leg::ToDonor(Box::new(tls)),
            Err(e) => {
                let reason = format!(
                    "clone-relay: TLS to the donor {} failed: {e}",
                    s.upstream_addr
                );
                send_err(
                    recipient,
                    recipient_seq.take(),
                    CR_SSL_CONNECTION_ERROR,
                    &reason,
                )
                .await;
                return Err(RelayError::UpstreamTls {
                    addr: s.upstream_addr.to_string(),
                    reason: e.to_string(),
                });
            }
        }
    } else {
        Leg::Plain(upstream)
    };
    if recipient_tls != donor_tls {
        debug!(
            recipient_tls,
            donor_tls, "TLS on one leg only: the relay carries the auth exchange across"
        );
    }
    set_login_ssl(
        &mut login[HEADER_LEN..],
        if donor.tunnels.upstream {
            recipient_leg_tls
        } else {
            donor_tls
        },
    );
    login[3] = donor_seq.take();
    donor_leg
        .write_all(&login)
        .await
        .map_err(RelayError::Upstream)?;
    let exchange = Exchange {
        recipient_tls,
        donor_tls: donor_tls || donor.tunnels.upstream,
        nonce: donor.nonce,
        rsa_key: s.tls.rsa_key(),
        max_packet: s.max_greeting_bytes,
        recipient_seq,
        donor_seq,
    };
    auth::carry(recipient, &mut donor_leg, observer, exchange).await?;
    Ok(donor_leg)
}

/// The SSLRequest the relay sends the donor: the recipient's capabilities (CLIENT_SSL set) and
/// settings, from the head of its login request, with sequence id 1.
fn ssl_request_for(login: &[u8]) -> Option<Vec<u8>> {
    let mut head = login
        .get(HEADER_LEN..HEADER_LEN + SSL_REQUEST_LEN)?
        .to_vec();
    set_login_ssl(&mut head, true);
    Some(crate::protocol::frame(1, &head))
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
async fn read_greeting(upstream: &mut Wire, max: usize) -> Result<Vec<u8>, RelayError> {
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
fn drain(downstream: &Transport) {
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

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use tokio::net::{TcpListener, TcpStream};

    use super::*;
    use crate::config::Config;
    use crate::limit::Chain;
    use crate::protocol::GREETING_9_7_4;
    use crate::protocol::handshake::{CLIENT_PROTOCOL_41, PROTOCOL_V10};
    use crate::protocol::{frame, unhex};
    use crate::tls::Tls;

    /// The greeting of a MySQL 9.7.4 donor (connection id 100), from the captures.

    #[derive(Debug, Default)]
    struct Seen(Mutex<Vec<(Direction, Vec<u8>)>>);

    impl Observer for Seen {
        fn observe(&self, dir: Direction, bytes: &[u8]) -> Result<(), Violation> {
            self.0.lock().unwrap().push((dir, bytes.to_vec()));
            Ok(())
        }
    }

    /// Two connected loopback sockets.
    async fn pair() -> (TcpStream, TcpStream) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let near = TcpStream::connect(listener.local_addr().unwrap());
        let (near, far) = tokio::join!(near, listener.accept());
        (near.unwrap(), far.unwrap().0)
    }

    /// A login request payload from a client with `caps` (protocol 4.1 added).
    fn login(caps: u32) -> Vec<u8> {
        let mut p = (caps | CLIENT_PROTOCOL_41).to_le_bytes().to_vec();
        p.extend_from_slice(&[0, 0, 0, 1, 255]);
        p.extend_from_slice(&[0; 23]);
        p.extend_from_slice(b"donor_clone\0");
        p.push(32);
        p.extend_from_slice(&[0x5a; 32]);
        p.extend_from_slice(b"caching_sha2_password\0");
        p
    }

    async fn read_one(s: &mut (impl AsyncRead + Unpin)) -> (u8, Vec<u8>) {
        let (header, payload) = crate::protocol::packet::read_packet(s, 1 << 16)
            .await
            .unwrap();
        (header.seq, payload)
    }

    #[tokio::test]
    async fn a_donor_without_tls_still_gets_a_tls_recipient_and_ids_and_flags_are_rewritten() {
        let mut config = Config::new("127.0.0.1:3306");
        config.client_tls_mode = ClientTlsMode::Preferred;
        config.server_tls_mode = ServerTlsMode::AsClient;
        let tls = Tls::load(&config).unwrap();
        // The recipient's TLS client: a relay set to dial TLS without verification has one.
        let mut dialer = Config::new("127.0.0.1:3306");
        dialer.client_tls_mode = ClientTlsMode::Disabled;
        dialer.server_tls_mode = ServerTlsMode::Preferred;
        let dialer = Tls::load(&dialer).unwrap();
        let connector = dialer.connector().unwrap().clone();
        let settings = StageSettings {
            upstream_addr: "127.0.0.1:3306",
            greeting_wait: Duration::from_secs(5),
            handshake_timeout: Duration::from_secs(5),
            max_greeting_bytes: 64 * 1024,
            client_tls: config.client_tls_mode,
            server_tls: config.server_tls_mode,
            tls: &tls,
        };
        let (mut recipient, downstream) = pair().await;
        let (upstream, mut donor) = pair().await;
        let seen = Seen::default();

        let donor_side = async {
            let mut greeting = unhex(GREETING_9_7_4);
            set_greeting_ssl(&mut greeting, false).unwrap();
            donor.write_all(&frame(0, &greeting)).await.unwrap();
            let (seq, payload) = read_one(&mut donor).await;
            assert_eq!(seq, 1, "the login is the donor leg's first packet");
            let caps = u32::from_le_bytes(payload[..4].try_into().unwrap());
            assert_eq!(
                caps & CLIENT_SSL,
                0,
                "CLIENT_SSL cleared for a plain donor leg"
            );
            assert_eq!(payload[4..], login(CLIENT_SSL)[4..]);
            donor
                .write_all(&frame(2, &[1, crate::protocol::auth::FAST_AUTH_SUCCESS]))
                .await
                .unwrap();
            donor
                .write_all(&frame(3, &[0, 0, 0, 2, 0, 0, 0]))
                .await
                .unwrap();
        };
        let recipient_side = async {
            let (seq, greeting) = read_one(&mut recipient).await;
            assert_eq!((seq, greeting[0]), (0, PROTOCOL_V10));
            let offered = match parse_server_hello(&greeting).unwrap() {
                ServerHello::Greeting(g) => g.capabilities & CLIENT_SSL != 0,
                other => panic!("{other:?}"),
            };
            assert!(offered, "the relay offers TLS though the donor does not");
            let request = login(CLIENT_SSL);
            recipient
                .write_all(&frame(1, &request[..SSL_REQUEST_LEN]))
                .await
                .unwrap();
            let mut tls = connector
                .connect(donor_name("clone-relay"), recipient)
                .await
                .unwrap();
            tls.write_all(&frame(2, &request)).await.unwrap();
            assert_eq!(read_one(&mut tls).await, (3, vec![1, 3]));
            assert_eq!(
                read_one(&mut tls).await.0,
                4,
                "OK in the recipient's numbering"
            );
            tls
        };
        let (handshaken, (), _tls) = tokio::join!(
            run(
                Wire::new(downstream.into(), Chain::default()),
                Wire::new(upstream.into(), Chain::default()),
                &seen,
                &settings
            ),
            donor_side,
            recipient_side
        );
        let handshaken = handshaken.unwrap();
        assert!(handshaken.downstream.is_tls());
        assert!(!handshaken.upstream.is_tls());
        // The observer saw the recipient's conversation: its sequence ids, every packet.
        let seen = seen.0.lock().unwrap();
        let last: Vec<(Direction, u8, u8)> = seen
            .iter()
            .rev()
            .take(2)
            .map(|(d, p)| (*d, p[3], p[4]))
            .collect();
        assert_eq!(
            last,
            [(Direction::Downstream, 4, 0), (Direction::Downstream, 3, 1)]
        );
    }
}
