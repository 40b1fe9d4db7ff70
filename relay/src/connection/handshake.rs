//! The handshake stage, between the dial and the copy. It owns both sockets until the donor's
//! OK (or ERR) ends authentication, reads every packet whole, shows each to the connection's
//! decoder as the recipient's conversation has it, and sets up TLS on each leg the way MySQL
//! does it, inside the classic protocol. What the modes allow is decided by the TLS policy
//! ([`crate::tls::policy`]); this stage carries it out:
//!
//! 1. The donor's greeting reaches the recipient with CLIENT_SSL as the policy says: on the
//!    defaults, exactly as the donor offered it (nothing else in the greeting changes).
//! 2. The recipient answers with an SSLRequest (sequence id 1): the relay accepts its TLS and
//!    reads the login request (sequence id 2) inside it, refusing it when the recipient's
//!    certificate is not among the allowed subjects. Or it answers with a plain login request.
//! 3. The donor leg gets TLS as the policy says, once the recipient's leg is known: an
//!    SSLRequest of the relay's own, then TLS. A recipient on TLS never gets a plain donor leg
//!    unless `--server-tls-mode disabled` says so. The login request goes to the donor with
//!    CLIENT_SSL saying what the donor leg does (over a pair's tunnel: what the donor side must
//!    do).
//! 4. The auth exchange is carried packet by packet ([`crate::connection::auth`]), each leg with its own
//!    sequence ids, bridging caching_sha2_password's full authentication when one leg has TLS
//!    and the other not, and refusing plugins that would put the password in clear on a plain
//!    donor leg.
//! 5. The copy takes over with both legs as plain byte streams ([`Leg`]).
//!
//! A mode that cannot be met is refused with a MySQL ERR packet naming the cause, before any
//! login byte reaches the donor; the donor's connection then ends with a refused login of a user
//! that does not exist ([`crate::recovery::probe::leave`]), not a broken handshake that the donor would
//! count against `max_connect_errors`. In `passthrough` the greeting and the recipient's TLS
//! pass untouched (and undecoded), and the copy carries the login. Waits are bounded: the
//! greeting by the admission's greeting wait, the rest (TLS handshakes and the auth exchange
//! included) by the handshake timeout counted from the greeting.

use std::time::Duration;

use tokio::io::AsyncWriteExt;

use crate::connection::leg::Wire;
use tokio::time::Instant;
use tracing::debug;

use super::stage::{
    CR_SSL_CONNECTION_ERROR, drain, read_greeting, read_packet, recipient_gone, recipient_left,
    refuse, send_err,
};
use crate::connection::auth::{self, Exchange};
use crate::connection::leg::Leg;
use crate::connection::transport::Transport;
use crate::error::RelayError;
use crate::io::Observer;
use crate::protocol::auth::{NONCE_LEN, SeqCounter, greeting_nonce, set_login_ssl};
use crate::protocol::handshake::{
    CLIENT_SSL, SSL_REQUEST_LEN, ServerHello, login_auth_plugin, parse_login_request,
    parse_server_hello, set_greeting_ssl,
};
use crate::protocol::{Direction, HEADER_LEN};
use crate::tls::policy::{self, Policy};
use crate::tls::{Tls, donor_name};

/// MySQL's server error for "connections using insecure transport are prohibited".
const ER_SECURE_TRANSPORT_REQUIRED: u16 = 3159;
/// MySQL's error for "client does not support authentication protocol requested by server".
const ER_NOT_SUPPORTED_AUTH_MODE: u16 = 1251;
/// How long a recipient may take from the greeting until its login can go to the donor (TLS
/// included), at most: within the donor's own `connect_timeout` (MySQL's default is 10 s; 5 s
/// is a common setting), so a recipient that stalls is left with the donor's refusal of a login
/// of the relay's, not a broken handshake the donor counts against `max_connect_errors`.
pub const PRE_LOGIN_WAIT: Duration = Duration::from_secs(4);

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
    /// Whether this relay's pair tunnel, when a leg runs over it, is mutual TLS.
    pub tunnel_tls: bool,
    /// The TLS material and the policy of this connection.
    pub tls: &'a Tls,
}

impl StageSettings<'_> {
    fn policy(&self) -> &Policy {
        self.tls.policy()
    }

    /// What a leg is for the policy.
    fn leg(&self, transport: &Transport) -> policy::Leg {
        if transport.is_tunnel() {
            policy::Leg::Tunnel {
                tls: self.tunnel_tls,
            }
        } else {
            policy::Leg::Socket
        }
    }
}

/// Both legs after the stage, and when the recipient's login must be complete.
#[derive(Debug)]
pub struct Handshaken {
    pub downstream: Leg,
    pub upstream: Leg,
    pub login_due: Instant,
}

/// Carries the greeting and the login request between `downstream` (the recipient) and
/// `upstream` (the donor) through `observer`, setting up TLS on both legs where the policy and
/// the recipient ask for it.
pub async fn run(
    mut downstream: Wire,
    mut upstream: Wire,
    observer: &impl Observer,
    s: &StageSettings<'_>,
) -> Result<Handshaken, RelayError> {
    let legs = Legs {
        downstream: s.leg(downstream.get_ref()),
        upstream: s.leg(upstream.get_ref()),
    };
    // A recipient that leaves now still has its donor connection read to the greeting and
    // left with a refused login: a hang-up in the handshake would count against the relay's
    // host on the donor.
    let (greeting, recipient_left) = {
        let read = tokio::time::timeout(
            s.greeting_wait,
            read_greeting(&mut upstream, s.max_greeting_bytes),
        );
        tokio::pin!(read);
        tokio::select! {
            packet = &mut read => (packet, false),
            () = recipient_gone(downstream.get_ref()) => (read.await, true),
        }
    };
    let mut greeting = greeting.map_err(|_| RelayError::UpstreamTimeout {
        addr: s.upstream_addr.to_string(),
        timeout: s.greeting_wait,
    })??;
    let hello = parse_server_hello(&greeting[HEADER_LEN..]);
    if recipient_left {
        leave_donor(&mut upstream, legs, hello.is_ok()).await;
        return Err(RelayError::ClientLeft);
    }
    let greeting_offers =
        matches!(&hello, Ok(ServerHello::Greeting(g)) if g.capabilities & CLIENT_SSL != 0);
    let donor_offers = s.policy().donor_offers(greeting_offers, legs.upstream);
    let offer = match &hello {
        // A donor's own refusal (too many connections, host blocked) passes as it is.
        Ok(ServerHello::Error { .. }) => None,
        _ => match s
            .policy()
            .greeting_offer(s.upstream_addr, donor_offers, legs.downstream)
        {
            Ok(offer) => offer,
            Err(reason) => {
                send_err(&mut downstream, 0, CR_SSL_CONNECTION_ERROR, &reason).await;
                leave_donor(&mut upstream, legs, hello.is_ok()).await;
                return Err(RelayError::TlsRefused(reason));
            }
        },
    };
    if let (Some(offer), Ok(ServerHello::Greeting(_))) = (offer, &hello) {
        set_greeting_ssl(&mut greeting[HEADER_LEN..], offer).expect("a parsed greeting");
    }
    observer
        .observe(Direction::Downstream, &greeting)
        .map_err(RelayError::Protocol)?;
    if let Err(e) = downstream.write_all(&greeting).await {
        leave_donor(&mut upstream, legs, hello.is_ok()).await;
        return Err(RelayError::Downstream(e));
    }
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
        offers_tls: donor_offers,
        offered: offer == Some(true),
        nonce,
        legs,
    };
    let legs =
        tokio::time::timeout_at(login_due, log_in(downstream, upstream, observer, s, donor)).await;
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

/// What the donor's greeting told, and what the recipient was offered.
#[derive(Debug, Clone, Copy)]
struct Donor {
    /// The donor offers TLS the donor leg can have.
    offers_tls: bool,
    /// The recipient was offered TLS.
    offered: bool,
    nonce: Option<[u8; NONCE_LEN]>,
    legs: Legs,
}

/// What each leg is for the policy: a socket of the relay's own, or a stream of a pair's tunnel.
#[derive(Debug, Clone, Copy)]
struct Legs {
    downstream: policy::Leg,
    upstream: policy::Leg,
}

/// Ends the donor's connection, which has sent its greeting and heard nothing of the login,
/// with a refused login rather than a broken handshake. Over a tunnel the relay at its other
/// end does that for its own donor connection.
async fn leave_donor(upstream: &mut Wire, legs: Legs, greeted: bool) {
    if greeted && legs.upstream == policy::Leg::Socket {
        crate::recovery::probe::leave(upstream).await;
    }
}

/// Reads the recipient's first login packet and carries the login: refused, passed through
/// (`passthrough`), or with each leg set up and the auth exchange carried to its end. Every way
/// out before the login reaches the donor leaves the donor's connection politely, and so does a
/// recipient that has not logged in within [`PRE_LOGIN_WAIT`] of the greeting: the donor's own
/// `connect_timeout` (10 s by default, 5 s on some) never runs out on the relay.
async fn log_in(
    downstream: Wire,
    mut upstream: Wire,
    observer: &impl Observer,
    s: &StageSettings<'_>,
    donor: Donor,
) -> Result<(Leg, Leg), RelayError> {
    if s.policy().passthrough() {
        return pass_through(downstream, upstream, observer, s).await;
    }
    let wait = PRE_LOGIN_WAIT.min(s.handshake_timeout);
    let recipient = tokio::time::timeout(wait, recipient_login(downstream, observer, s, donor));
    let (mut recipient, login, plan) = match recipient.await {
        Ok(Ok(logged_in)) => logged_in,
        Ok(Err(e)) => {
            leave_donor(&mut upstream, donor.legs, true).await;
            return Err(e);
        }
        Err(_) => {
            leave_donor(&mut upstream, donor.legs, true).await;
            return Err(RelayError::HandshakeTimeout(wait));
        }
    };
    match carry_login(&mut recipient, upstream, observer, s, login, donor, plan).await {
        Ok(upstream) => Ok((recipient, upstream)),
        Err(e) => {
            if let Leg::Plain(downstream) = &recipient {
                drain(downstream.get_ref());
            }
            Err(e)
        }
    }
}

/// `passthrough`: the recipient's first packet (its login, or its SSLRequest and then its own
/// TLS) goes to the donor as it is, and the copy carries the rest undecoded.
async fn pass_through(
    mut downstream: Wire,
    mut upstream: Wire,
    observer: &impl Observer,
    s: &StageSettings<'_>,
) -> Result<(Leg, Leg), RelayError> {
    let first = read_packet(
        &mut downstream,
        observer,
        Direction::Upstream,
        s.max_greeting_bytes,
    )
    .await
    .map_err(|e| match e {
        RelayError::Downstream(e) if recipient_left(&e) => RelayError::ClientLeft,
        e => e,
    })?;
    upstream
        .write_all(&first)
        .await
        .map_err(RelayError::Upstream)?;
    let payload = &first[HEADER_LEN..];
    if parse_login_request(payload, payload.len()).is_ok_and(|l| l.is_ssl_request) {
        debug!("TLS passed through undecoded: clone awareness is off for this connection");
    }
    Ok((Leg::Plain(downstream), Leg::Plain(upstream)))
}

/// The recipient's side of the login, up to the moment its login request may go to the donor:
/// its first packet, its TLS when it asks for it, the refusals the modes call for (each with an
/// ERR packet naming the cause), and what the policy makes of the legs.
async fn recipient_login(
    mut downstream: Wire,
    observer: &impl Observer,
    s: &StageSettings<'_>,
    donor: Donor,
) -> Result<(Leg, Vec<u8>, LoginPlan), RelayError> {
    let first = match read_packet(
        &mut downstream,
        observer,
        Direction::Upstream,
        s.max_greeting_bytes,
    )
    .await
    {
        Ok(first) => first,
        Err(RelayError::Downstream(e)) if recipient_left(&e) => {
            return Err(left_after_greeting(s, donor));
        }
        Err(e) => {
            // A refused packet (oversize, malformed) may leave bytes unread: drained, the close
            // is a FIN the recipient can read up to, not a reset.
            drain(downstream.get_ref());
            return Err(e);
        }
    };
    let payload = &first[HEADER_LEN..];
    let wants_tls = parse_login_request(payload, payload.len()).is_ok_and(|l| l.is_ssl_request);
    let refusal = match (wants_tls, donor.offered) {
        (true, false) => Some((
            CR_SSL_CONNECTION_ERROR,
            "clone-relay: TLS was not offered".to_string(),
        )),
        (false, _)
            if s.policy().recipient_tls_required()
                && donor.legs.downstream == policy::Leg::Socket =>
        {
            Some((
                ER_SECURE_TRANSPORT_REQUIRED,
                "clone-relay: connections without TLS are refused (--client-tls-mode required)"
                    .to_string(),
            ))
        }
        _ => None,
    };
    if let Some((code, reason)) = refusal {
        send_err(&mut downstream, 2, code, &reason).await;
        drain(downstream.get_ref());
        return Err(RelayError::TlsRefused(reason));
    }
    let (mut recipient, login) = if wants_tls {
        accept(downstream, observer, s).await?
    } else {
        (Leg::Plain(downstream), first)
    };
    match plan_login(s, &recipient, &login, donor) {
        Ok(plan) => Ok((recipient, login, plan)),
        Err((code, reason)) => {
            let mut recipient_seq = SeqCounter::new(0);
            recipient_seq.received(login[3]);
            send_err(&mut recipient, recipient_seq.take(), code, &reason).await;
            if let Leg::Plain(downstream) = &recipient {
                drain(downstream.get_ref());
            }
            Err(if code == ER_NOT_SUPPORTED_AUTH_MODE {
                RelayError::Auth(reason)
            } else {
                RelayError::TlsRefused(reason)
            })
        }
    }
}

/// Why a recipient that left after its greeting left, as far as the relay can tell: one that
/// was offered no TLS (the donor offers none) may require it, as a `REQUIRE SSL` clone does,
/// and is listed as refused with that reason.
fn left_after_greeting(s: &StageSettings<'_>, donor: Donor) -> RelayError {
    if donor.offered
        || donor.offers_tls
        || donor.legs.downstream != policy::Leg::Socket
        || !s.policy().follows_donor_offer()
    {
        return RelayError::ClientLeft;
    }
    RelayError::TlsRefused(format!(
        "clone-relay: the recipient left after a greeting without TLS: the donor {} offers no \
         TLS, and the relay offers it only when the donor does (a recipient that requires TLS \
         stops here)",
        s.upstream_addr
    ))
}

/// What the login does on the donor leg, decided before anything of it reaches the donor.
#[derive(Debug, Clone, Copy)]
struct LoginPlan {
    /// The donor leg has TLS (over a tunnel: the donor side is asked for it).
    donor_tls: bool,
    /// The password may cross each leg in clear: TLS, or a TLS tunnel.
    recipient_secure: bool,
    donor_secure: bool,
}

/// Applies the policy to the recipient's login: the donor leg's TLS, and whether the plugin the
/// login names may answer across the legs. A refusal carries the error code for the recipient.
fn plan_login(
    s: &StageSettings<'_>,
    recipient: &Leg,
    login: &[u8],
    donor: Donor,
) -> Result<LoginPlan, (u16, String)> {
    let payload = &login[HEADER_LEN..];
    // Over a tunnel, the login's CLIENT_SSL says what the recipient side asks of the donor leg
    // (the relay at the other end sets it so).
    let (recipient_tls, recipient_secure) = match donor.legs.downstream {
        policy::Leg::Tunnel { tls } => (
            parse_login_request(payload, payload.len())
                .is_ok_and(|l| l.capabilities & CLIENT_SSL != 0),
            tls,
        ),
        policy::Leg::Socket => (recipient.is_tls(), recipient.is_tls()),
    };
    let donor_tls = s
        .policy()
        .donor_leg(s.upstream_addr, recipient_tls, donor.offers_tls)
        .map_err(|reason| (CR_SSL_CONNECTION_ERROR, reason))?;
    let donor_secure = match donor.legs.upstream {
        policy::Leg::Tunnel { tls } => tls,
        policy::Leg::Socket => donor_tls,
    };
    if let Some(plugin) = login_auth_plugin(payload) {
        Policy::plugin_may_answer(&plugin, recipient_secure, donor_secure)
            .map_err(|reason| (ER_NOT_SUPPORTED_AUTH_MODE, reason))?;
    }
    Ok(LoginPlan {
        donor_tls,
        recipient_secure,
        donor_secure,
    })
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
    let login = match read_packet(
        &mut recipient,
        observer,
        Direction::Upstream,
        s.max_greeting_bytes,
    )
    .await
    {
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

/// Sets up the donor leg as `plan` says (TLS with an SSLRequest of the relay's own on a socket
/// of its own), sends the login request with the donor leg's sequence id and CLIENT_SSL, and
/// carries the auth exchange. A donor whose TLS fails is reported to the recipient, and nothing
/// of the login reaches it.
async fn carry_login(
    recipient: &mut Leg,
    mut upstream: Wire,
    observer: &impl Observer,
    s: &StageSettings<'_>,
    mut login: Vec<u8>,
    donor: Donor,
    plan: LoginPlan,
) -> Result<Leg, RelayError> {
    let mut recipient_seq = SeqCounter::new(0);
    recipient_seq.received(login[3]);
    let mut donor_seq = SeqCounter::new(1);
    let dial_tls = plan.donor_tls && donor.legs.upstream == policy::Leg::Socket;
    let mut donor_leg = if dial_tls {
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
    if plan.recipient_secure != plan.donor_secure {
        debug!(
            recipient_tls = plan.recipient_secure,
            donor_tls = plan.donor_secure,
            "TLS on one leg only: the relay carries the auth exchange across"
        );
    }
    set_login_ssl(&mut login[HEADER_LEN..], plan.donor_tls);
    login[3] = donor_seq.take();
    donor_leg
        .write_all(&login)
        .await
        .map_err(RelayError::Upstream)?;
    let exchange = Exchange {
        recipient_tls: plan.recipient_secure,
        donor_tls: plan.donor_secure,
        nonce: donor.nonce,
        rsa_key: s.tls.rsa_key(),
        donor_key: s.tls.donor_public_key(),
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

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use tokio::net::{TcpListener, TcpStream};

    use super::*;
    use crate::config::{ClientTlsMode, Config, ServerTlsMode};
    use crate::limit::Chain;
    use crate::protocol::GREETING_9_7_4;
    use crate::protocol::Violation;
    use tokio::io::AsyncRead;

    use crate::protocol::handshake::{CLIENT_PROTOCOL_41, PROTOCOL_V10, err_packet};
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

    fn settings(tls: &Tls) -> StageSettings<'_> {
        StageSettings {
            upstream_addr: "127.0.0.1:3306",
            greeting_wait: Duration::from_secs(5),
            handshake_timeout: Duration::from_secs(5),
            max_greeting_bytes: 64 * 1024,
            tunnel_tls: false,
            tls,
        }
    }

    #[tokio::test]
    async fn on_the_defaults_a_donor_without_tls_means_a_recipient_without_tls() {
        let tls = Tls::load(&Config::new("127.0.0.1:3306")).unwrap();
        let settings = settings(&tls);
        let (mut recipient, downstream) = pair().await;
        let (upstream, mut donor) = pair().await;
        let seen = Seen::default();
        let donor_side = async {
            let mut greeting = unhex(GREETING_9_7_4);
            set_greeting_ssl(&mut greeting, false).unwrap();
            donor.write_all(&frame(0, &greeting)).await.unwrap();
            // The recipient leaves: the donor's connection ends with a refused login of the
            // probe user, not a broken handshake.
            let (seq, payload) = read_one(&mut donor).await;
            assert_eq!(seq, 1);
            let login = parse_login_request(&payload, payload.len()).unwrap();
            assert_eq!(login.user, crate::recovery::probe::PROBE_USER);
            donor
                .write_all(&err_packet(2, 1045, b"28000", "Access denied"))
                .await
                .unwrap();
        };
        let recipient_side = async {
            let (_, greeting) = read_one(&mut recipient).await;
            let offered = match parse_server_hello(&greeting).unwrap() {
                ServerHello::Greeting(g) => g.capabilities & CLIENT_SSL != 0,
                other => panic!("{other:?}"),
            };
            assert!(
                !offered,
                "the relay offered TLS that the donor does not have"
            );
            // What a `REQUIRE SSL` client does then: it leaves.
            drop(recipient);
        };
        let (result, (), ()) = tokio::join!(
            run(
                Wire::new(downstream.into(), Chain::default()),
                Wire::new(upstream.into(), Chain::default()),
                &seen,
                &settings
            ),
            donor_side,
            recipient_side
        );
        match result {
            Err(e @ RelayError::TlsRefused(_)) => {
                assert!(e.is_rejection());
                assert!(e.to_string().contains("offers no TLS"), "{e}");
            }
            other => panic!("{other:?}"),
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_recipient_silent_after_the_greeting_is_left_with_a_refused_login_in_time() {
        let tls = Tls::load(&Config::new("127.0.0.1:3306")).unwrap();
        let settings = settings(&tls);
        let (mut recipient, downstream) = pair().await;
        let (upstream, mut donor) = pair().await;
        let seen = Seen::default();
        let greeted = tokio::time::Instant::now();
        let donor_side = async {
            donor
                .write_all(&frame(0, &unhex(GREETING_9_7_4)))
                .await
                .unwrap();
            let (seq, payload) = read_one(&mut donor).await;
            let login = parse_login_request(&payload, payload.len()).unwrap();
            assert_eq!(
                (seq, login.user.as_str()),
                (1, crate::recovery::probe::PROBE_USER)
            );
            assert!(
                greeted.elapsed() <= PRE_LOGIN_WAIT,
                "left after {:?}, past the donor's connect_timeout",
                greeted.elapsed()
            );
            donor
                .write_all(&err_packet(2, 1045, b"28000", "Access denied"))
                .await
                .unwrap();
        };
        let recipient_side = async {
            // It reads its greeting and says nothing more.
            read_one(&mut recipient).await;
            recipient
        };
        let (result, (), _recipient) = tokio::join!(
            run(
                Wire::new(downstream.into(), Chain::default()),
                Wire::new(upstream.into(), Chain::default()),
                &seen,
                &settings
            ),
            donor_side,
            recipient_side
        );
        assert!(
            matches!(result, Err(RelayError::HandshakeTimeout(wait)) if wait == PRE_LOGIN_WAIT),
            "{result:?}"
        );
    }

    #[tokio::test]
    async fn a_disabled_donor_leg_gives_a_tls_recipient_a_plain_one_with_ids_and_flags_rewritten() {
        let mut config = Config::new("127.0.0.1:3306");
        config.client_tls_mode = ClientTlsMode::Preferred;
        config.server_tls_mode = ServerTlsMode::Disabled;
        let tls = Tls::load(&config).unwrap();
        // The recipient's TLS client: a relay set to dial TLS without verification has one.
        let mut dialer = Config::new("127.0.0.1:3306");
        dialer.client_tls_mode = ClientTlsMode::Disabled;
        dialer.server_tls_mode = ServerTlsMode::Preferred;
        let dialer = Tls::load(&dialer).unwrap();
        let connector = dialer.connector().unwrap().clone();
        let settings = settings(&tls);
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
            assert!(
                offered,
                "under a disabled donor leg the relay offers its own TLS whatever the donor offers"
            );
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
