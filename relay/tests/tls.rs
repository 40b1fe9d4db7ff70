//! TLS on both legs over real sockets, against a fake MySQL donor that speaks TLS the way
//! mysqld does (SSLRequest, then TLS, then the login request): the relay offers TLS, terminates
//! the recipient's, originates its own to the donor, and the bytes inside reach each side
//! intact; the refusals name their cause in a MySQL ERR packet and forward nothing.

mod common;
use common::{GREETING, packet, unhex};

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use clone_relay::config::{ClientTlsMode, ServerTlsMode, ServerTlsVerify};
use clone_relay::protocol::handshake::{CLIENT_SSL, ServerHello, parse_server_hello};
use clone_relay::protocol::packet::read_packet;
use clone_relay::{Config, Relay};
use rcgen::{CertificateParams, CertifiedIssuer, IsCa, KeyPair};
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

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// What the fake donor saw.
#[derive(Default)]
struct Seen {
    tls_logins: AtomicUsize,
    plain_logins: AtomicUsize,
}

/// A fake donor: greeting (offering TLS when `pki` is given); an SSLRequest then TLS, or a
/// plain login; OK; then every packet echoed with its payload XOR 0x5a.
async fn fake_donor(pki: Option<TestPki>) -> (SocketAddr, Arc<Seen>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let seen = Arc::new(Seen::default());
    let mut greeting = unhex(GREETING);
    clone_relay::protocol::handshake::set_greeting_ssl(&mut greeting, pki.is_some()).unwrap();
    let acceptor = pki.map(|pki| {
        let config = rustls::ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
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
                        echo(&mut tls, 3).await;
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
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(ca_pem) {
        roots.add(cert.unwrap()).unwrap();
    }
    let config = rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    tokio_rustls::TlsConnector::from(Arc::new(config))
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
    Relay::new(config).unwrap();
    std::fs::remove_dir_all(&dir).unwrap();
}
