//! TLS on both legs over real sockets, against a fake MySQL donor that speaks TLS the way
//! mysqld does (SSLRequest, then TLS, then the login request): the relay offers TLS, terminates
//! the recipient's, originates its own to the donor, and the bytes inside reach each side
//! intact; the refusals name their cause in a MySQL ERR packet and forward nothing. Mutual TLS:
//! recipients checked against a client CA and an allow-list of subjects, and the relay's client
//! certificate presented to a donor that demands one.

mod common;
use common::{GREETING, packet, unhex};

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use clone_relay::config::{ClientTlsMode, ServerTlsMode, ServerTlsVerify};
use clone_relay::protocol::handshake::{CLIENT_SSL, ServerHello, parse_server_hello};
use clone_relay::protocol::packet::read_packet;
use clone_relay::{Config, Relay};
use rcgen::{CertificateParams, CertifiedIssuer, IsCa, KeyPair, SanType};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::oneshot;

const CLIENT_PROTOCOL_41: u32 = 0x200;

/// A CA and a server certificate it signs, as rustls wants them, and the CA's PEM.
struct TestPki {
    chain: Vec<CertificateDer<'static>>,
    chain_pem: String,
    key_pem: String,
    ca_pem: String,
}

fn test_pki(name: &str) -> TestPki {
    let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca.is_ca = IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    ca.distinguished_name
        .push(rcgen::DnType::CommonName, format!("{name} CA"));
    let ca = CertifiedIssuer::self_signed(ca, KeyPair::generate().unwrap()).unwrap();
    let key = KeyPair::generate().unwrap();
    let leaf = CertificateParams::new(vec![name.to_string()])
        .unwrap()
        .signed_by(&key, &ca)
        .unwrap();
    TestPki {
        chain: vec![leaf.der().clone(), ca.der().clone()],
        chain_pem: format!("{}{}", leaf.pem(), ca.pem()),
        key_pem: key.serialize_pem(),
        ca_pem: ca.pem(),
    }
}

/// A CA that signs certificates for tests: the relay's own (files), recipients' and the
/// relay's client certificates.
struct TestCa {
    issuer: CertifiedIssuer<'static, KeyPair>,
}

/// A certificate signed by a [`TestCa`], its key, and the chain (the certificate, then the CA).
struct Leaf {
    chain: Vec<CertificateDer<'static>>,
    chain_pem: String,
    key_pem: String,
}

impl TestCa {
    fn new(name: &str) -> Self {
        let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
        ca.is_ca = IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        ca.distinguished_name
            .push(rcgen::DnType::CommonName, format!("{name} CA"));
        TestCa {
            issuer: CertifiedIssuer::self_signed(ca, KeyPair::generate().unwrap()).unwrap(),
        }
    }

    fn pem(&self) -> String {
        self.issuer.pem()
    }

    /// A certificate with the common name `cn` and the subject alternative names `sans`.
    fn leaf(&self, cn: &str, sans: Vec<SanType>) -> Leaf {
        let mut params = CertificateParams::default();
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, cn);
        params.subject_alt_names = sans;
        self.sign(params)
    }

    fn sign(&self, params: CertificateParams) -> Leaf {
        let key = KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        Leaf {
            chain: vec![cert.der().clone(), self.issuer.der().clone()],
            chain_pem: format!("{}{}", cert.pem(), self.issuer.pem()),
            key_pem: key.serialize_pem(),
        }
    }
}

fn dns(name: &str) -> SanType {
    SanType::DnsName(name.try_into().unwrap())
}

/// Writes a certificate chain and its key (mode 600) as `NAME.pem` and `NAME-key.pem`.
fn write_identity(dir: &Path, name: &str, leaf: &Leaf) -> (PathBuf, PathBuf) {
    use std::os::unix::fs::OpenOptionsExt;
    let (cert, key) = (
        dir.join(format!("{name}.pem")),
        dir.join(format!("{name}-key.pem")),
    );
    std::fs::write(&cert, &leaf.chain_pem).unwrap();
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&key)
        .unwrap();
    std::io::Write::write_all(&mut file, leaf.key_pem.as_bytes()).unwrap();
    (cert, key)
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// What the fake donor saw.
#[derive(Default)]
struct Seen {
    tls_logins: AtomicUsize,
    plain_logins: AtomicUsize,
    /// Connections the relay ended with the refused login of its probe user.
    left_politely: AtomicUsize,
    /// The certificate each TLS client presented (first of its chain), in order.
    client_certificates: Mutex<Vec<CertificateDer<'static>>>,
}

/// A fake donor: greeting (offering TLS when `pki` is given); an SSLRequest then TLS, or a
/// plain login; OK; then every packet echoed with its payload XOR 0x5a.
async fn fake_donor(pki: Option<TestPki>) -> (SocketAddr, Arc<Seen>) {
    fake_donor_demanding(pki, None).await
}

/// [`fake_donor`] that, with `client_ca` (PEM), demands of TLS clients a certificate from that
/// CA, as mysqld does for an account that `REQUIRE X509` (but in the TLS handshake).
async fn fake_donor_demanding(
    pki: Option<TestPki>,
    client_ca: Option<&str>,
) -> (SocketAddr, Arc<Seen>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let seen = Arc::new(Seen::default());
    let mut greeting = unhex(GREETING);
    clone_relay::protocol::handshake::set_greeting_ssl(&mut greeting, pki.is_some()).unwrap();
    let acceptor = pki.map(|pki| {
        let builder = rustls::ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .unwrap();
        let builder = match client_ca {
            Some(ca) => {
                let mut roots = rustls::RootCertStore::empty();
                for cert in CertificateDer::pem_slice_iter(ca.as_bytes()) {
                    roots.add(cert.unwrap()).unwrap();
                }
                let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
                    Arc::new(roots),
                    provider(),
                )
                .build()
                .unwrap();
                builder.with_client_cert_verifier(verifier)
            }
            None => builder.with_no_client_auth(),
        };
        let config = builder
            .with_single_cert(
                pki.chain,
                PrivateKeyDer::from_pem_slice(pki.key_pem.as_bytes()).unwrap(),
            )
            .unwrap();
        tokio_rustls::TlsAcceptor::from(Arc::new(config))
    });
    tokio::spawn({
        let seen = seen.clone();
        async move {
            loop {
                let (mut s, _) = listener.accept().await.unwrap();
                let (greeting, acceptor, seen) = (greeting.clone(), acceptor.clone(), seen.clone());
                tokio::spawn(async move {
                    s.write_all(&packet(0, &greeting)).await.unwrap();
                    let Ok((h, first)) = read_packet(&mut s, 1 << 20).await else {
                        return;
                    };
                    if first.len() == 32 && h.seq == 1 {
                        let Some(acceptor) = acceptor else { return };
                        let Ok(mut tls) = acceptor.accept(s).await else {
                            return;
                        };
                        let Ok((h, _login)) = read_packet(&mut tls, 1 << 20).await else {
                            return;
                        };
                        assert_eq!(h.seq, 2, "the login inside TLS has sequence id 2");
                        seen.tls_logins.fetch_add(1, Ordering::Relaxed);
                        if let Some(certs) = tls.get_ref().1.peer_certificates() {
                            seen.client_certificates
                                .lock()
                                .unwrap()
                                .push(certs[0].clone());
                        }
                        echo(&mut tls, 3).await;
                    } else if login_user(&first) == clone_relay::recovery::probe::PROBE_USER {
                        seen.left_politely.fetch_add(1, Ordering::Relaxed);
                        let denied = clone_relay::protocol::handshake::err_packet(
                            2,
                            1045,
                            b"28000",
                            "Access denied",
                        );
                        let _ = s.write_all(&denied).await;
                    } else {
                        seen.plain_logins.fetch_add(1, Ordering::Relaxed);
                        echo(&mut s, 2).await;
                    }
                });
            }
        }
    });
    (addr, seen)
}

/// The user name of a login request payload.
fn login_user(payload: &[u8]) -> String {
    clone_relay::protocol::handshake::parse_login_request(payload, payload.len())
        .map(|l| l.user)
        .unwrap_or_default()
}

async fn echo(s: &mut (impl AsyncRead + AsyncWrite + Unpin), ok_seq: u8) {
    if s.write_all(&packet(ok_seq, &[0, 0, 0, 2, 0, 0, 0]))
        .await
        .is_err()
    {
        return;
    }
    while let Ok((h, mut payload)) = read_packet(s, 1 << 24).await {
        payload.iter_mut().for_each(|b| *b ^= 0x5a);
        if s.write_all(&packet(h.seq, &payload)).await.is_err() {
            return;
        }
    }
}

struct Running {
    relay: Relay,
    addr: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
}

impl Drop for Running {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

fn start(config: Config) -> Running {
    let relay = Relay::new(config).unwrap();
    let listener = clone_relay::bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop, stopped) = oneshot::channel::<()>();
    tokio::spawn({
        let relay = relay.clone();
        async move {
            relay
                .serve(listener, async move {
                    let _ = stopped.await;
                })
                .await
        }
    });
    Running {
        relay,
        addr,
        stop: Some(stop),
    }
}

fn scratch_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("clone-relay-tls-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn login_request(seq: u8, extra_caps: u32) -> Vec<u8> {
    let mut login = vec![0u8; 32];
    login[..4].copy_from_slice(&(CLIENT_PROTOCOL_41 | 0x0008_0000 | extra_caps).to_le_bytes());
    login.extend_from_slice(b"tester\0");
    packet(seq, &login)
}

/// An SSLRequest: the first 32 bytes of a login request, alone, with sequence id 1.
fn ssl_request() -> Vec<u8> {
    let login = login_request(1, CLIENT_SSL);
    packet(1, &login[4..4 + 32])
}

/// Reads the greeting through the relay; whether it offers TLS.
async fn greeting_offers_tls(s: &mut TcpStream) -> bool {
    let (_, greeting) = read_packet(s, 1024).await.unwrap();
    match parse_server_hello(&greeting).unwrap() {
        ServerHello::Greeting(g) => g.capabilities & CLIENT_SSL != 0,
        other => panic!("not a greeting: {other:?}"),
    }
}

/// The relay's CA, read from its state directory, as a rustls client trusts it.
fn trusting(ca_pem: &[u8]) -> tokio_rustls::TlsConnector {
    trusting_as(ca_pem, None)
}

/// [`trusting`], presenting `client` as the recipient's certificate.
fn trusting_as(ca_pem: &[u8], client: Option<&Leaf>) -> tokio_rustls::TlsConnector {
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(ca_pem) {
        roots.add(cert.unwrap()).unwrap();
    }
    let config = rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots);
    let config = match client {
        Some(leaf) => config
            .with_client_auth_cert(
                leaf.chain.clone(),
                PrivateKeyDer::from_pem_slice(leaf.key_pem.as_bytes()).unwrap(),
            )
            .unwrap(),
        None => config.with_no_client_auth(),
    };
    tokio_rustls::TlsConnector::from(Arc::new(config))
}

type RecipientTls = tokio_rustls::client::TlsStream<TcpStream>;

/// A recipient's way in as far as its login: greeting, SSLRequest, TLS through `connector`,
/// the login request (sequence id 2) sent inside. Fails where the TLS handshake does.
async fn tls_login(
    relay: SocketAddr,
    connector: &tokio_rustls::TlsConnector,
) -> std::io::Result<RecipientTls> {
    let mut s = TcpStream::connect(relay).await?;
    assert!(greeting_offers_tls(&mut s).await, "the relay offers TLS");
    s.write_all(&ssl_request()).await?;
    let name = ServerName::try_from("clone-relay").unwrap();
    let mut tls = connector.connect(name, s).await?;
    tls.write_all(&login_request(2, CLIENT_SSL)).await?;
    Ok(tls)
}

/// After the login: the OK (sequence id 3), then one packet echoed by the donor.
async fn logged_in_and_echoed(tls: &mut RecipientTls) {
    let (h, ok) = read_packet(tls, 1024).await.unwrap();
    assert_eq!((h.seq, ok[0]), (3, 0), "OK after the login inside TLS");
    echoed(tls, b"inside TLS").await;
}

/// One packet through both legs and back, XOR 0x5a by the donor.
async fn echoed(tls: &mut RecipientTls, payload: &[u8]) {
    tls.write_all(&packet(0, payload)).await.unwrap();
    let (_, echoed) = read_packet(tls, 1024).await.unwrap();
    assert_eq!(echoed, payload.iter().map(|b| b ^ 0x5a).collect::<Vec<_>>());
}

/// The recipient's TLS handshake failed: at its end (TLS 1.2), or, since a TLS 1.3 client
/// finishes before the relay checks its certificate, at the first read after the login.
async fn tls_fails(relay: SocketAddr, connector: &tokio_rustls::TlsConnector) {
    match tls_login(relay, connector).await {
        Err(_) => {}
        Ok(mut tls) => {
            let read = read_packet(&mut tls, 1024).await;
            assert!(read.is_err(), "the relay answered the login: {read:?}");
        }
    }
}

/// A recipient that asks for TLS: SSLRequest, TLS verified against the relay's CA, login
/// (sequence id 2), OK (3), then one packet echoed by the donor.
async fn tls_recipient(relay: SocketAddr, relay_ca: &[u8]) {
    let mut s = TcpStream::connect(relay).await.unwrap();
    assert!(greeting_offers_tls(&mut s).await, "the relay offers TLS");
    s.write_all(&ssl_request()).await.unwrap();
    let name = ServerName::try_from("clone-relay").unwrap();
    let mut tls = trusting(relay_ca).connect(name, s).await.unwrap();
    tls.write_all(&login_request(2, CLIENT_SSL)).await.unwrap();
    let (h, ok) = read_packet(&mut tls, 1024).await.unwrap();
    assert_eq!((h.seq, ok[0]), (3, 0), "OK after the login inside TLS");
    tls.write_all(&packet(0, b"inside TLS")).await.unwrap();
    let (_, echoed) = read_packet(&mut tls, 1024).await.unwrap();
    assert_eq!(
        echoed,
        b"inside TLS".iter().map(|b| b ^ 0x5a).collect::<Vec<_>>()
    );
}

#[tokio::test]
async fn both_legs_tls_on_defaults_and_the_certificate_survives_a_restart() {
    let (donor, seen) = fake_donor(Some(test_pki("donor"))).await;
    let state = scratch_dir("restart");
    let mut config = Config::new(donor.to_string());
    config.state_dir = Some(state.clone());
    let running = start(config.clone());
    let ca = std::fs::read(state.join("tls").join(clone_relay::tls::CA_FILE)).unwrap();
    tls_recipient(running.addr, &ca).await;
    assert_eq!(seen.tls_logins.load(Ordering::Relaxed), 1);
    assert_eq!(seen.plain_logins.load(Ordering::Relaxed), 0);
    let fingerprint = running.relay.tls().fingerprint.clone();
    drop(running);

    // A restart with the same state directory keeps the certificate, so a recipient that pinned
    // the CA goes on working.
    let again = start(config);
    assert_eq!(again.relay.tls().fingerprint, fingerprint);
    tls_recipient(again.addr, &ca).await;
    let view = again.relay.registry().view();
    let conn = view.unassigned.iter().find(|c| c.tls_downstream);
    assert!(
        conn.is_some_and(|c| c.tls_upstream),
        "{:?}",
        view.unassigned
    );
    std::fs::remove_dir_all(&state).unwrap();
}

#[tokio::test]
async fn a_plain_recipient_stays_plain_on_both_legs() {
    let (donor, seen) = fake_donor(Some(test_pki("donor"))).await;
    let running = start(Config::new(donor.to_string()));
    let mut s = TcpStream::connect(running.addr).await.unwrap();
    assert!(greeting_offers_tls(&mut s).await);
    s.write_all(&login_request(1, 0)).await.unwrap();
    let (h, ok) = read_packet(&mut s, 1024).await.unwrap();
    assert_eq!((h.seq, ok[0]), (2, 0));
    assert_eq!(seen.plain_logins.load(Ordering::Relaxed), 1);
}

/// Reads what the relay sent instead of going on: an ERR packet; returns its message.
async fn refusal(s: &mut (impl AsyncRead + Unpin)) -> String {
    let (_, err) = read_packet(s, 4096).await.unwrap();
    match parse_server_hello(&err).unwrap() {
        ServerHello::Error { message, .. } => message,
        other => panic!("expected an ERR packet, got {other:?}"),
    }
}

#[tokio::test]
async fn a_plain_donor_under_required_donor_tls_is_refused() {
    let (donor, seen) = fake_donor(None).await;
    let mut config = Config::new(donor.to_string());
    config.server_tls_mode = ServerTlsMode::Required;
    let running = start(config);
    let mut s = TcpStream::connect(running.addr).await.unwrap();
    let (h, err) = read_packet(&mut s, 4096).await.unwrap();
    // In place of the greeting: no SQL state, which a client would read as part of the message.
    assert_eq!((h.seq, err[0]), (0, 0xff), "an ERR packet for a greeting");
    let message = String::from_utf8_lossy(&err[3..]);
    assert!(message.starts_with("clone-relay: "), "{message}");
    assert!(message.contains("offers no TLS"), "{message}");
    let mut rest = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut rest)).await;
    assert_eq!(seen.plain_logins.load(Ordering::Relaxed), 0);
    wait_for_rejection(&running.relay, "offers no TLS").await;
}

#[tokio::test]
async fn a_plain_recipient_under_required_recipient_tls_is_refused() {
    let (donor, seen) = fake_donor(Some(test_pki("donor"))).await;
    let mut config = Config::new(donor.to_string());
    config.client_tls_mode = ClientTlsMode::Required;
    let running = start(config);
    let mut s = TcpStream::connect(running.addr).await.unwrap();
    assert!(greeting_offers_tls(&mut s).await);
    s.write_all(&login_request(1, 0)).await.unwrap();
    let message = refusal(&mut s).await;
    assert!(message.contains("without TLS are refused"), "{message}");
    assert_eq!(
        seen.plain_logins.load(Ordering::Relaxed),
        0,
        "nothing of the login reached the donor"
    );
    wait_for_rejection(&running.relay, "without TLS").await;
}

/// Waits until the donor has seen `n` connections ended with the probe user's refused login.
async fn wait_left_politely(seen: &Seen, n: usize) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while seen.left_politely.load(Ordering::Relaxed) < n {
        assert!(
            tokio::time::Instant::now() < deadline,
            "waited 5 s for {n} connections ended with a refused login; saw {}",
            seen.left_politely.load(Ordering::Relaxed)
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn on_the_defaults_a_donor_without_tls_gets_plain_recipients_and_a_tls_one_is_refused() {
    let (donor, seen) = fake_donor(None).await;
    let running = start(Config::new(donor.to_string()));

    // What a `REQUIRE SSL` recipient does with a greeting that offers no TLS: it leaves.
    let mut s = TcpStream::connect(running.addr).await.unwrap();
    assert!(
        !greeting_offers_tls(&mut s).await,
        "the relay offered TLS that the donor has not"
    );
    drop(s);
    wait_for_rejection(&running.relay, "offers no TLS").await;
    wait_left_politely(&seen, 1).await;

    // One that asks for TLS anyway is refused, and nothing of a login reaches the donor.
    let mut s = TcpStream::connect(running.addr).await.unwrap();
    assert!(!greeting_offers_tls(&mut s).await);
    s.write_all(&ssl_request()).await.unwrap();
    assert!(refusal(&mut s).await.contains("TLS was not offered"));
    wait_left_politely(&seen, 2).await;

    // A recipient with no REQUIRE clause clones in plaintext on both legs, as it would alone.
    let mut s = TcpStream::connect(running.addr).await.unwrap();
    assert!(!greeting_offers_tls(&mut s).await);
    s.write_all(&login_request(1, 0)).await.unwrap();
    let (h, ok) = read_packet(&mut s, 1024).await.unwrap();
    assert_eq!((h.seq, ok[0]), (2, 0));
    assert_eq!(seen.plain_logins.load(Ordering::Relaxed), 1);
    assert_eq!(seen.tls_logins.load(Ordering::Relaxed), 0);
}

#[tokio::test]
async fn donor_verification_means_a_tls_donor_leg_or_a_refusal_whatever_the_modes() {
    let (donor, seen) = fake_donor(None).await;
    let state = scratch_dir("verify-plain-donor");
    let ca = state.join("donor-ca.pem");
    std::fs::write(&ca, test_pki("donor").ca_pem).unwrap();
    let modes = [
        ServerTlsMode::AsClient,
        ServerTlsMode::Preferred,
        ServerTlsMode::Required,
    ];
    for (i, mode) in modes.into_iter().enumerate() {
        let mut config = Config::new(donor.to_string());
        config.server_tls_mode = mode;
        config.server_tls_verify = ServerTlsVerify::Ca;
        config.server_tls_ca = Some(ca.clone());
        let running = start(config);
        let mut s = TcpStream::connect(running.addr).await.unwrap();
        let message = refusal(&mut s).await;
        assert!(
            message.contains("offers no TLS") && message.contains("--server-tls-verify"),
            "{mode:?}: {message}"
        );
        wait_for_rejection(&running.relay, "offers no TLS").await;
        wait_left_politely(&seen, i + 1).await;
    }
    assert_eq!(seen.plain_logins.load(Ordering::Relaxed), 0);
    std::fs::remove_dir_all(&state).unwrap();
}

#[tokio::test]
async fn a_required_recipient_leg_with_a_donor_without_tls_is_refused_naming_why() {
    let (donor, seen) = fake_donor(None).await;
    let mut config = Config::new(donor.to_string());
    config.client_tls_mode = ClientTlsMode::Required;
    let running = start(config);
    let mut s = TcpStream::connect(running.addr).await.unwrap();
    let message = refusal(&mut s).await;
    assert!(
        message.contains("offers no TLS") && message.contains("--client-tls-mode required"),
        "{message}"
    );
    wait_left_politely(&seen, 1).await;
}

/// A donor without TLS that answers every login with an auth switch to `plugin`, records the
/// first login's user and the answer to the switch, and refuses it.
async fn switching_donor(plugin: &'static str) -> (SocketAddr, Arc<Mutex<Vec<Vec<u8>>>>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let heard = Arc::new(Mutex::new(Vec::new()));
    let mut greeting = unhex(GREETING);
    clone_relay::protocol::handshake::set_greeting_ssl(&mut greeting, false).unwrap();
    tokio::spawn({
        let heard = heard.clone();
        async move {
            loop {
                let (mut s, _) = listener.accept().await.unwrap();
                let (greeting, heard) = (greeting.clone(), heard.clone());
                tokio::spawn(async move {
                    s.write_all(&packet(0, &greeting)).await.unwrap();
                    let Ok((_, login)) = read_packet(&mut s, 1 << 20).await else {
                        return;
                    };
                    heard.lock().unwrap().push(login_user(&login).into_bytes());
                    let mut switch = vec![0xfe];
                    switch.extend_from_slice(plugin.as_bytes());
                    switch.push(0);
                    switch.extend_from_slice(b"switched-nonce-56789\0");
                    s.write_all(&packet(2, &switch)).await.unwrap();
                    if let Ok((_, answer)) = read_packet(&mut s, 1 << 20).await {
                        heard.lock().unwrap().push(answer);
                    }
                    let denied = clone_relay::protocol::handshake::err_packet(
                        4,
                        1045,
                        b"28000",
                        "Access denied",
                    );
                    let _ = s.write_all(&denied).await;
                });
            }
        }
    });
    (addr, heard)
}

#[tokio::test]
async fn cleartext_plugins_never_answer_from_a_tls_recipient_onto_a_plain_donor_leg() {
    const PASSWORD: &[u8] = b"never-on-the-plain-leg";
    for plugin in ["sha256_password", "mysql_clear_password"] {
        let (donor, heard) = switching_donor(plugin).await;
        let state = scratch_dir(&format!("switch-{plugin}"));
        let mut config = Config::new(donor.to_string());
        config.state_dir = Some(state.clone());
        // The only setting that gives a TLS recipient a plain donor leg.
        config.server_tls_mode = ServerTlsMode::Disabled;
        let running = start(config);
        let ca = std::fs::read(state.join("tls").join(clone_relay::tls::CA_FILE)).unwrap();

        // The donor switches plugins: refused before the recipient is asked for the password.
        let mut tls = tls_login(running.addr, &trusting(&ca)).await.unwrap();
        let message = refusal(&mut tls).await;
        assert!(message.contains(plugin), "{plugin}: {message}");
        wait_for_rejection(&running.relay, plugin).await;
        let answers = heard.lock().unwrap().clone();
        assert_eq!(
            answers,
            [b"tester".to_vec(), vec![0]],
            "{plugin}: the donor got an empty password, nothing else"
        );

        // A login that names the plugin itself, its answer the password in clear inside TLS.
        let mut s = TcpStream::connect(running.addr).await.unwrap();
        assert!(greeting_offers_tls(&mut s).await);
        s.write_all(&ssl_request()).await.unwrap();
        let name = ServerName::try_from("clone-relay").unwrap();
        let mut tls = trusting(&ca).connect(name, s).await.unwrap();
        let caps = CLIENT_PROTOCOL_41 | CLIENT_SSL | 0x8000 | 0x0008_0000;
        let mut login = vec![0u8; 32];
        login[..4].copy_from_slice(&caps.to_le_bytes());
        login.extend_from_slice(b"tester\0");
        login.push(PASSWORD.len() as u8 + 1);
        login.extend_from_slice(PASSWORD);
        login.push(0);
        login.extend_from_slice(plugin.as_bytes());
        login.push(0);
        tls.write_all(&packet(2, &login)).await.unwrap();
        let message = refusal(&mut tls).await;
        assert!(message.contains(plugin), "{plugin}: {message}");
        // The donor heard only the probe user's refused login, without a password.
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        while heard.lock().unwrap().len() < 3 {
            assert!(tokio::time::Instant::now() < deadline, "{heard:?}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let answers = heard.lock().unwrap().clone();
        assert_eq!(
            answers[2],
            clone_relay::recovery::probe::PROBE_USER.as_bytes()
        );
        assert!(
            !answers
                .iter()
                .any(|a| a.windows(PASSWORD.len()).any(|w| w == PASSWORD)),
            "{plugin}: the password reached the donor"
        );
        std::fs::remove_dir_all(&state).unwrap();
    }
}

#[tokio::test]
async fn a_donor_certificate_from_another_ca_is_refused_under_ca_verification() {
    let (donor, seen) = fake_donor(Some(test_pki("donor"))).await;
    let state = scratch_dir("other-ca");
    let other = state.join("other-ca.pem");
    std::fs::write(&other, test_pki("someone else").ca_pem).unwrap();
    let mut config = Config::new(donor.to_string());
    config.state_dir = Some(state.clone());
    config.server_tls_verify = ServerTlsVerify::Ca;
    config.server_tls_ca = Some(other);
    let running = start(config);
    let ca = std::fs::read(state.join("tls").join(clone_relay::tls::CA_FILE)).unwrap();

    let mut s = TcpStream::connect(running.addr).await.unwrap();
    assert!(greeting_offers_tls(&mut s).await);
    s.write_all(&ssl_request()).await.unwrap();
    let name = ServerName::try_from("clone-relay").unwrap();
    let mut tls = trusting(&ca).connect(name, s).await.unwrap();
    tls.write_all(&login_request(2, CLIENT_SSL)).await.unwrap();
    let message = refusal(&mut tls).await;
    assert!(message.contains("TLS to the donor"), "{message}");
    assert_eq!(seen.tls_logins.load(Ordering::Relaxed), 0);
    wait_for_rejection(&running.relay, "TLS to upstream").await;
    std::fs::remove_dir_all(&state).unwrap();
}

#[tokio::test]
async fn a_donor_certificate_from_the_configured_ca_passes_without_its_name() {
    let pki = test_pki("not-the-donor-host");
    let state = scratch_dir("right-ca");
    let ca_file = state.join("donor-ca.pem");
    std::fs::write(&ca_file, &pki.ca_pem).unwrap();
    let (donor, seen) = fake_donor(Some(pki)).await;
    let mut config = Config::new(donor.to_string());
    config.state_dir = Some(state.clone());
    config.server_tls_verify = ServerTlsVerify::Ca;
    config.server_tls_ca = Some(ca_file);
    let running = start(config);
    let ca = std::fs::read(state.join("tls").join(clone_relay::tls::CA_FILE)).unwrap();
    tls_recipient(running.addr, &ca).await;
    assert_eq!(seen.tls_logins.load(Ordering::Relaxed), 1);
    std::fs::remove_dir_all(&state).unwrap();
}

/// Waits until the relay lists a rejected connection whose reason mentions `reason`.
async fn wait_for_rejection(relay: &Relay, reason: &str) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    loop {
        let rejected = relay.registry().view().rejected;
        if rejected.iter().any(|c| {
            c.close_reason
                .as_deref()
                .is_some_and(|r| r.contains(reason))
        }) {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "waited 5 s for a rejection mentioning {reason:?}: {rejected:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A relay whose recipients must present a certificate from `ca` that names one of `allowed`,
/// with its own certificate kept in `state`; its CA (PEM).
fn mtls_relay(
    state: &Path,
    donor: SocketAddr,
    ca: &TestCa,
    allowed: &[&str],
) -> (Running, Vec<u8>) {
    let ca_file = state.join("recipients-ca.pem");
    std::fs::write(&ca_file, ca.pem()).unwrap();
    let mut config = Config::new(donor.to_string());
    config.state_dir = Some(state.to_owned());
    config.client_tls_mode = ClientTlsMode::Required;
    config.client_tls_ca = Some(ca_file);
    config.client_tls_allowed_subjects = allowed.iter().map(ToString::to_string).collect();
    let running = start(config);
    let relay_ca = std::fs::read(state.join("tls").join(clone_relay::tls::CA_FILE)).unwrap();
    (running, relay_ca)
}

#[tokio::test]
async fn recipients_in_the_allow_list_pass_by_common_name_dns_name_or_ip_address() {
    let (donor, seen) = fake_donor(Some(test_pki("donor"))).await;
    let state = scratch_dir("mtls-allowed");
    let ca = TestCa::new("recipients");
    let allowed = ["recipient-a", "cn-only", "192.0.2.7"];
    let (running, relay_ca) = mtls_relay(&state, donor, &ca, &allowed);

    let by_dns = ca.leaf("not-listed", vec![dns("recipient-a")]);
    let by_cn = ca.leaf("cn-only", Vec::new());
    let by_ip = ca.leaf(
        "not-listed-either",
        vec![SanType::IpAddress("192.0.2.7".parse().unwrap())],
    );
    for leaf in [&by_dns, &by_cn, &by_ip] {
        let connector = trusting_as(&relay_ca, Some(leaf));
        let mut tls = tls_login(running.addr, &connector).await.unwrap();
        logged_in_and_echoed(&mut tls).await;
    }
    assert_eq!(seen.tls_logins.load(Ordering::Relaxed), 3);
    assert!(running.relay.registry().view().rejected.is_empty());
    std::fs::remove_dir_all(&state).unwrap();
}

#[tokio::test]
async fn a_recipient_not_in_the_allow_list_is_refused_inside_tls() {
    let (donor, seen) = fake_donor(Some(test_pki("donor"))).await;
    let state = scratch_dir("mtls-refused");
    let ca = TestCa::new("recipients");
    let (running, relay_ca) = mtls_relay(&state, donor, &ca, &["recipient-a"]);

    let other = ca.leaf("recipient-b", vec![dns("recipient-b.example")]);
    let mut tls = tls_login(running.addr, &trusting_as(&relay_ca, Some(&other)))
        .await
        .unwrap();
    let message = refusal(&mut tls).await;
    assert!(
        message.contains("matches none of --client-tls-allowed-subjects")
            && message.contains("CN=recipient-b, DNS:recipient-b.example"),
        "{message}"
    );
    assert_eq!(
        seen.tls_logins.load(Ordering::Relaxed) + seen.plain_logins.load(Ordering::Relaxed),
        0,
        "nothing of the login reached the donor"
    );
    wait_for_rejection(
        &running.relay,
        "matches none of --client-tls-allowed-subjects",
    )
    .await;
    std::fs::remove_dir_all(&state).unwrap();
}

#[tokio::test]
async fn recipients_without_a_valid_certificate_are_refused() {
    let (donor, seen) = fake_donor(Some(test_pki("donor"))).await;
    let state = scratch_dir("mtls-invalid");
    let ca = TestCa::new("recipients");
    // No allow-list: any certificate from the CA passes, and only those.
    let (running, relay_ca) = mtls_relay(&state, donor, &ca, &[]);

    let good = ca.leaf("recipient-a", vec![dns("recipient-a")]);
    let mut tls = tls_login(running.addr, &trusting_as(&relay_ca, Some(&good)))
        .await
        .unwrap();
    logged_in_and_echoed(&mut tls).await;

    // No certificate at all.
    tls_fails(running.addr, &trusting_as(&relay_ca, None)).await;
    wait_for_rejection(&running.relay, "recipient TLS: peer sent no certificates").await;

    // A certificate from another CA, with a name that would pass.
    let stranger = TestCa::new("someone else").leaf("recipient-a", vec![dns("recipient-a")]);
    tls_fails(running.addr, &trusting_as(&relay_ca, Some(&stranger))).await;
    wait_for_rejection(&running.relay, "UnknownIssuer").await;

    // The right CA, but expired.
    let mut params = CertificateParams::new(vec!["recipient-a".to_string()]).unwrap();
    params.not_before = rcgen::date_time_ymd(2020, 1, 1);
    params.not_after = rcgen::date_time_ymd(2021, 1, 1);
    let expired = ca.sign(params);
    tls_fails(running.addr, &trusting_as(&relay_ca, Some(&expired))).await;
    wait_for_rejection(&running.relay, "certificate expired").await;

    // A plaintext recipient is refused too (client_tls_ca needs client_tls_mode required).
    let mut s = TcpStream::connect(running.addr).await.unwrap();
    assert!(greeting_offers_tls(&mut s).await);
    s.write_all(&login_request(1, 0)).await.unwrap();
    assert!(refusal(&mut s).await.contains("without TLS are refused"));

    assert_eq!(
        seen.tls_logins.load(Ordering::Relaxed),
        1,
        "only the good one"
    );
    assert_eq!(seen.plain_logins.load(Ordering::Relaxed), 0);
    std::fs::remove_dir_all(&state).unwrap();
}

#[tokio::test]
async fn the_relay_presents_its_client_certificate_to_a_donor_that_demands_one() {
    let clients = TestCa::new("donor's clients");
    let (donor, seen) = fake_donor_demanding(Some(test_pki("donor")), Some(&clients.pem())).await;
    let state = scratch_dir("donor-mtls");
    let relay_client = clients.leaf("clone-relay", Vec::new());
    let (cert, key) = write_identity(&state, "relay-client", &relay_client);
    let mut config = Config::new(donor.to_string());
    config.state_dir = Some(state.clone());
    config.server_tls_cert = Some(cert);
    config.server_tls_key = Some(key);
    let running = start(config.clone());
    let relay_ca = std::fs::read(state.join("tls").join(clone_relay::tls::CA_FILE)).unwrap();
    tls_recipient(running.addr, &relay_ca).await;
    assert_eq!(seen.tls_logins.load(Ordering::Relaxed), 1);
    assert_eq!(
        seen.client_certificates.lock().unwrap().as_slice(),
        &relay_client.chain[..1],
        "the donor got the relay's client certificate"
    );
    drop(running);

    // Without it, the donor's TLS fails and no login reaches it.
    config.server_tls_cert = None;
    config.server_tls_key = None;
    let without = start(config);
    let mut tls = tls_login(without.addr, &trusting(&relay_ca)).await.unwrap();
    let answer = read_packet(&mut tls, 1024).await;
    assert!(
        answer.as_ref().map_or(true, |(_, p)| p[0] != 0),
        "the login passed: {answer:?}"
    );
    assert_eq!(seen.tls_logins.load(Ordering::Relaxed), 1);
    std::fs::remove_dir_all(&state).unwrap();
}

#[test]
fn a_key_readable_by_others_is_refused_at_start() {
    use std::os::unix::fs::PermissionsExt;
    let dir = scratch_dir("key-mode");
    let pki = test_pki("relay");
    let (cert, key) = (dir.join("cert.pem"), dir.join("key.pem"));
    std::fs::write(&cert, pki.chain_pem.as_bytes()).unwrap();
    std::fs::write(&key, pki.key_pem.as_bytes()).unwrap();
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o644)).unwrap();
    let mut config = Config::new("127.0.0.1:3306");
    config.client_tls_cert = Some(cert);
    config.client_tls_key = Some(key.clone());
    let err = Relay::new(config.clone()).unwrap_err().to_string();
    assert!(
        err.contains("client_tls_key") && err.contains("readable by its group or others"),
        "{err}"
    );
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).unwrap();
    Relay::new(config.clone()).unwrap();

    // The same for the client certificate the relay presents to donors.
    config.server_tls_cert = config.client_tls_cert.clone();
    config.server_tls_key = Some(key.clone());
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o640)).unwrap();
    let err = Relay::new(config.clone()).unwrap_err().to_string();
    assert!(
        err.contains("client_tls_key") || err.contains("server_tls_key"),
        "{err}"
    );
    config.client_tls_cert = None;
    config.client_tls_key = None;
    let err = Relay::new(config.clone()).unwrap_err().to_string();
    assert!(
        err.contains("server_tls_key") && err.contains("readable by its group or others"),
        "{err}"
    );
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).unwrap();
    Relay::new(config).unwrap();
    std::fs::remove_dir_all(&dir).unwrap();
}

/// The certificate the relay showed this recipient (the first of its chain).
fn certificate_seen(tls: &RecipientTls) -> CertificateDer<'static> {
    tls.get_ref().1.peer_certificates().unwrap()[0].clone()
}

/// A new connection's login and echo through the relay; the certificate it was shown.
async fn new_connection_sees(
    relay: SocketAddr,
    connector: &tokio_rustls::TlsConnector,
) -> CertificateDer<'static> {
    let mut tls = tls_login(relay, connector).await.unwrap();
    logged_in_and_echoed(&mut tls).await;
    certificate_seen(&tls)
}

/// The relay's certificate for recipients, signed by `ca`, under the name the recipients check.
fn relay_leaf(ca: &TestCa) -> Leaf {
    ca.leaf("clone-relay", vec![dns("clone-relay")])
}

/// A relay whose certificate towards recipients is `leaf`, from files in `dir`.
fn relay_with_files(donor: SocketAddr, dir: &Path, leaf: &Leaf) -> (Running, Config) {
    let (cert, key) = write_identity(dir, "relay", leaf);
    let mut config = Config::new(donor.to_string());
    config.client_tls_cert = Some(cert);
    config.client_tls_key = Some(key);
    (start(config.clone()), config)
}

#[tokio::test]
async fn a_changed_certificate_file_is_used_by_the_next_connection_and_live_ones_go_on() {
    let (donor, seen) = fake_donor(Some(test_pki("donor"))).await;
    let dir = scratch_dir("reload-poll");
    let ca = TestCa::new("relay files");
    let (first, second) = (relay_leaf(&ca), relay_leaf(&ca));
    let (running, _) = relay_with_files(donor, &dir, &first);
    let connector = trusting(ca.pem().as_bytes());
    let before = running.relay.tls();

    let mut live = tls_login(running.addr, &connector).await.unwrap();
    logged_in_and_echoed(&mut live).await;
    assert_eq!(certificate_seen(&live), first.chain[0]);

    // New files in place of the old: the relay notices within its poll interval.
    write_identity(&dir, "relay", &second);
    let deadline = tokio::time::Instant::now() + 3 * clone_relay::server::TLS_POLL_INTERVAL;
    loop {
        let shown = new_connection_sees(running.addr, &connector).await;
        if shown == second.chain[0] {
            break;
        }
        assert_eq!(
            shown, first.chain[0],
            "neither the old certificate nor the new"
        );
        assert!(
            tokio::time::Instant::now() < deadline,
            "the relay still shows the old certificate {:?} after the files changed",
            3 * clone_relay::server::TLS_POLL_INTERVAL
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let after = running.relay.tls();
    assert_eq!(after.fingerprint, before.fingerprint, "the same CA");
    assert_ne!(
        after.certificate_fingerprint, before.certificate_fingerprint,
        "another certificate"
    );
    assert!(running.relay.metrics().tls_reloads.load(Ordering::Relaxed) >= 1);

    // The connection opened before the reload keeps its TLS session, on both legs.
    echoed(&mut live, b"after the reload").await;
    echoed(&mut live, b"and once more").await;
    assert_eq!(certificate_seen(&live), first.chain[0]);
    assert!(seen.tls_logins.load(Ordering::Relaxed) >= 3);
    std::fs::remove_dir_all(&dir).unwrap();
}

#[tokio::test]
async fn a_broken_certificate_file_leaves_the_certificate_in_use() {
    let (donor, _) = fake_donor(Some(test_pki("donor"))).await;
    let dir = scratch_dir("reload-broken");
    let ca = TestCa::new("relay files");
    let (first, second) = (relay_leaf(&ca), relay_leaf(&ca));
    let (running, config) = relay_with_files(donor, &dir, &first);
    let connector = trusting(ca.pem().as_bytes());
    let mut live = tls_login(running.addr, &connector).await.unwrap();
    logged_in_and_echoed(&mut live).await;
    let cert_file = config.client_tls_cert.clone().unwrap();

    // Not PEM at all: the reload (as on SIGHUP) fails, naming the setting, and the old
    // certificate stays in use.
    std::fs::write(&cert_file, "not a certificate\n").unwrap();
    let err = running.relay.reload_tls().unwrap_err().to_string();
    assert!(err.contains("client_tls_cert"), "{err}");
    assert_eq!(
        new_connection_sees(running.addr, &connector).await,
        first.chain[0]
    );

    // The new certificate with the old key: refused too.
    std::fs::write(&cert_file, &second.chain_pem).unwrap();
    let err = running.relay.reload_tls().unwrap_err().to_string();
    assert!(err.contains("client_tls_cert"), "{err}");
    assert_eq!(
        new_connection_sees(running.addr, &connector).await,
        first.chain[0]
    );

    // The poll tries a changed file once, fails the same way, and the relay carries on. (The
    // test's runtime has one thread, so the poll runs only where the test awaits.)
    let failures = |r: &Running| {
        r.relay
            .metrics()
            .tls_reload_failures
            .load(Ordering::Relaxed)
    };
    assert_eq!(failures(&running), 2);
    std::fs::write(&cert_file, "-----BEGIN CERTIFICATE-----\ncut short").unwrap();
    let deadline = tokio::time::Instant::now() + 3 * clone_relay::server::TLS_POLL_INTERVAL;
    while failures(&running) < 3 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the poll never tried the changed file"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(
        new_connection_sees(running.addr, &connector).await,
        first.chain[0]
    );
    echoed(&mut live, b"still here").await;

    // Both files right again: the next reload takes them.
    write_identity(&dir, "relay", &second);
    running.relay.reload_tls().unwrap();
    assert_eq!(
        new_connection_sees(running.addr, &connector).await,
        second.chain[0]
    );
    assert_eq!(failures(&running), 3);
    std::fs::remove_dir_all(&dir).unwrap();
}

#[tokio::test]
async fn a_reload_swaps_the_client_certificate_the_donor_sees() {
    let clients = TestCa::new("donor's clients");
    let (donor, seen) = fake_donor_demanding(Some(test_pki("donor")), Some(&clients.pem())).await;
    let dir = scratch_dir("reload-client");
    let (first, second) = (
        clients.leaf("clone-relay", Vec::new()),
        clients.leaf("clone-relay", Vec::new()),
    );
    let (cert, key) = write_identity(&dir, "relay-client", &first);
    let mut config = Config::new(donor.to_string());
    config.state_dir = Some(dir.clone());
    config.server_tls_cert = Some(cert);
    config.server_tls_key = Some(key);
    let running = start(config);
    let relay_ca = std::fs::read(dir.join("tls").join(clone_relay::tls::CA_FILE)).unwrap();
    let connector = trusting(&relay_ca);

    let mut live = tls_login(running.addr, &connector).await.unwrap();
    logged_in_and_echoed(&mut live).await;
    write_identity(&dir, "relay-client", &second);
    running.relay.reload_tls().unwrap();
    new_connection_sees(running.addr, &connector).await;
    echoed(&mut live, b"after the reload").await;
    assert_eq!(
        seen.client_certificates.lock().unwrap().as_slice(),
        [first.chain[0].clone(), second.chain[0].clone()],
        "the donor saw the first certificate, then the reloaded one"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

#[tokio::test]
async fn a_reload_keeps_the_certificate_the_relay_made_for_itself() {
    let (donor, _) = fake_donor(Some(test_pki("donor"))).await;
    // No state directory: the relay's own certificate lives in memory only.
    let running = start(Config::new(donor.to_string()));
    let before = running.relay.tls();
    running.relay.reload_tls().unwrap();
    let after = running.relay.tls();
    assert_eq!(after.fingerprint, before.fingerprint);
    assert_eq!(
        after.certificate_fingerprint,
        before.certificate_fingerprint
    );
}
