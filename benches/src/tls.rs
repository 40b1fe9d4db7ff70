//! TLS pieces of the benchmarks, all with rustls and its ring provider, as the relay uses them:
//! certificates made at run time (rcgen), a rustls connection pair that passes records entirely
//! in memory, and both ends of a clone that upgrades to TLS inside the MySQL protocol
//! ([`crate::tls_clone_preamble`]) on loopback.

use std::io::{self, Read, Write};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use clone_relay::protocol::decoder::Direction;
use clone_relay::{Config, Relay};
use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName};
use rustls::{
    ClientConfig, ClientConnection, ConnectionCommon, ProtocolVersion, RootCertStore, ServerConfig,
    ServerConnection, SupportedCipherSuite,
};
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::{TlsAcceptor, TlsConnector};

use crate::{play, read_to_end_counting, start_relay, tls_clone_preamble};

/// The ring provider, as the relay builds its own.
pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// A CA and a server certificate it signs for one DNS name, made at run time.
#[derive(Debug)]
pub struct BenchPki {
    /// The server's certificate, then the CA's.
    pub chain: Vec<CertificateDer<'static>>,
    /// The server certificate's key (PKCS#8 DER).
    pub key: Vec<u8>,
    pub ca: CertificateDer<'static>,
}

/// Makes a CA and a certificate for `name` signed by it (ECDSA P-256, rcgen's default).
pub fn bench_pki(name: &str) -> BenchPki {
    let mut ca = CertificateParams::new(Vec::<String>::new()).expect("CA params");
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.distinguished_name
        .push(DnType::CommonName, format!("{name} bench CA"));
    let ca = CertifiedIssuer::self_signed(ca, KeyPair::generate().expect("CA key"))
        .expect("CA certificate");
    let key = KeyPair::generate().expect("server key");
    let leaf = CertificateParams::new(vec![name.to_string()])
        .expect("server params")
        .signed_by(&key, &ca)
        .expect("server certificate");
    BenchPki {
        chain: vec![leaf.der().clone(), ca.der().clone()],
        key: key.serialize_der(),
        ca: ca.der().clone(),
    }
}

/// The name in the donor side's certificate of a pair's tunnel.
pub const TUNNEL_NAME: &str = "clone-relay-peer";

/// The files of a pair's tunnel PKI: a CA, and a certificate and key for each side.
#[derive(Debug)]
pub struct TunnelPki {
    dir: PathBuf,
}

impl TunnelPki {
    pub fn ca(&self) -> PathBuf {
        self.dir.join("tunnel-ca.pem")
    }

    pub fn cert(&self, side: &str) -> PathBuf {
        self.dir.join(format!("tunnel-{side}.pem"))
    }

    pub fn key(&self, side: &str) -> PathBuf {
        self.dir.join(format!("tunnel-{side}-key.pem"))
    }
}

/// Makes a CA and a certificate for each side of a pair (`donor` for [`TUNNEL_NAME`],
/// `recipient`) under `dir`, the keys readable by their owner only.
pub fn tunnel_pki(dir: &Path) -> std::io::Result<TunnelPki> {
    use std::os::unix::fs::OpenOptionsExt;
    let mut ca = CertificateParams::new(Vec::<String>::new()).expect("CA params");
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.distinguished_name
        .push(DnType::CommonName, "clone-relay tunnel bench CA");
    let ca = CertifiedIssuer::self_signed(ca, KeyPair::generate().expect("CA key"))
        .expect("CA certificate");
    let pki = TunnelPki {
        dir: dir.to_path_buf(),
    };
    std::fs::write(pki.ca(), ca.pem())?;
    for side in ["donor", "recipient"] {
        let key = KeyPair::generate().expect("key");
        let cert = CertificateParams::new(vec![TUNNEL_NAME.to_string()])
            .expect("params")
            .signed_by(&key, &ca)
            .expect("certificate");
        std::fs::write(pki.cert(side), cert.pem())?;
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(pki.key(side))?;
        std::io::Write::write_all(&mut file, key.serialize_pem().as_bytes())?;
    }
    Ok(pki)
}

/// A server config with `pki`'s certificate: the provider's safe default protocol versions
/// (TLS 1.3 is chosen between two rustls peers) and default cipher suites.
pub fn server_config(pki: &BenchPki) -> Arc<ServerConfig> {
    let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(pki.key.clone()));
    let config = ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .expect("protocol versions")
        .with_no_client_auth()
        .with_single_cert(pki.chain.clone(), key)
        .expect("server certificate");
    Arc::new(config)
}

/// A client config trusting the CA certificates in `cas`, with the same defaults.
pub fn client_config(cas: impl IntoIterator<Item = CertificateDer<'static>>) -> Arc<ClientConfig> {
    let mut roots = RootCertStore::empty();
    for ca in cas {
        roots.add(ca).expect("CA certificate");
    }
    let config = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .expect("protocol versions")
        .with_root_certificates(roots)
        .with_no_client_auth();
    Arc::new(config)
}

/// A client config trusting the CA certificates in a PEM file's contents (the relay's
/// `ca.pem` in its state directory).
pub fn client_config_from_pem(ca_pem: &[u8]) -> Arc<ClientConfig> {
    let cas = CertificateDer::pem_slice_iter(ca_pem)
        .collect::<Result<Vec<_>, _>>()
        .expect("PEM certificates");
    client_config(cas)
}

/// A rustls server and client connected through memory: records go from one to the other as
/// byte buffers, with no socket and no runtime in between.
#[derive(Debug)]
pub struct InMemoryPair {
    server: ServerConnection,
    client: ClientConnection,
    /// Ciphertext on its way from the server to the client (and back during the handshake).
    wire: Vec<u8>,
}

impl InMemoryPair {
    /// Runs the handshake for `name` to its end.
    pub fn new(server: Arc<ServerConfig>, client: Arc<ClientConfig>, name: &str) -> Self {
        let name = ServerName::try_from(name.to_string()).expect("server name");
        let mut pair = InMemoryPair {
            server: ServerConnection::new(server).expect("server connection"),
            client: ClientConnection::new(client, name).expect("client connection"),
            wire: Vec::new(),
        };
        while pair.server.is_handshaking() || pair.client.is_handshaking() {
            pass(&mut pair.client, &mut pair.server, &mut pair.wire);
            pass(&mut pair.server, &mut pair.client, &mut pair.wire);
        }
        // The server's session tickets, sent after the handshake, reach the client now rather
        // than inside the timed transfer.
        pass(&mut pair.server, &mut pair.client, &mut pair.wire);
        // Each application write is encrypted whole, not cut at rustls's 64 KiB default limit
        // of records waiting to be sent.
        pair.server.set_buffer_limit(None);
        pair
    }

    /// The protocol version and cipher suite both sides agreed on.
    pub fn negotiated(&self) -> (ProtocolVersion, SupportedCipherSuite) {
        (
            self.client
                .protocol_version()
                .expect("a finished handshake"),
            self.client
                .negotiated_cipher_suite()
                .expect("a finished handshake"),
        )
    }

    /// Sends `stream` from the server to the client in application writes of `write_bytes`:
    /// each write is encrypted into records (`writer` then `write_tls` into a buffer), which
    /// the client takes in (`read_tls`, `process_new_packets`) and decrypts into its own
    /// `write_bytes` buffer. Returns the plaintext bytes the client read.
    pub fn transfer(&mut self, stream: &[u8], write_bytes: usize) -> u64 {
        let mut plain = vec![0u8; write_bytes];
        let mut total = 0u64;
        for chunk in stream.chunks(write_bytes) {
            self.server.writer().write_all(chunk).expect("encrypt");
            self.wire.clear();
            while self.server.wants_write() {
                self.server.write_tls(&mut self.wire).expect("records out");
            }
            let mut input = &self.wire[..];
            while !input.is_empty() {
                self.client.read_tls(&mut input).expect("records in");
                self.client.process_new_packets().expect("decrypt");
                total += drain(&mut self.client, &mut plain);
            }
        }
        total
    }
}

/// Moves what `from` has to send into `to`, through `wire`, and has `to` process it.
fn pass<A, B>(from: &mut ConnectionCommon<A>, to: &mut ConnectionCommon<B>, wire: &mut Vec<u8>) {
    wire.clear();
    while from.wants_write() {
        from.write_tls(wire).expect("records out");
    }
    let mut input = &wire[..];
    while !input.is_empty() {
        to.read_tls(&mut input).expect("records in");
        to.process_new_packets().expect("handshake");
    }
}

/// Reads the client's decrypted bytes until none are left; returns how many.
fn drain(client: &mut ClientConnection, buf: &mut [u8]) -> u64 {
    let mut total = 0u64;
    loop {
        match client.reader().read(buf) {
            Ok(0) => return total,
            Ok(n) => total += n as u64,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return total,
            Err(e) => panic!("plaintext: {e}"),
        }
    }
}

/// clone-relay on its defaults (client TLS preferred, server TLS as-client) in front of
/// `upstream`, and what recipients need to trust it. The relay has a state directory
/// only so that recipients can read the CA of the certificate it makes for itself; the
/// directory is removed on drop.
#[derive(Debug)]
pub struct TlsRelay {
    pub relay: Relay,
    pub addr: SocketAddr,
    /// Trusts the relay's CA.
    client: Arc<ClientConfig>,
    state_dir: PathBuf,
}

/// The name in the certificate clone-relay makes for itself.
pub const RELAY_NAME: &str = "clone-relay";

impl TlsRelay {
    /// Starts it; call it inside a Tokio runtime.
    pub fn start(upstream: SocketAddr) -> Self {
        static STARTED: AtomicUsize = AtomicUsize::new(0);
        let state_dir = std::env::temp_dir().join(format!(
            "clone-relay-bench-tls-{}-{}",
            std::process::id(),
            STARTED.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&state_dir);
        std::fs::create_dir_all(&state_dir).expect("state directory");
        let mut config = Config::new(upstream.to_string());
        config.state_dir = Some(state_dir.clone());
        let (relay, addr) = start_relay(config);
        let ca = std::fs::read(state_dir.join("tls").join(clone_relay::tls::CA_FILE))
            .expect("the relay's CA");
        TlsRelay {
            relay,
            addr,
            client: client_config_from_pem(&ca),
            state_dir,
        }
    }

    /// A connector for recipients, verifying the relay's certificate for [`RELAY_NAME`].
    pub fn connector(&self) -> TlsConnector {
        TlsConnector::from(self.client.clone())
    }

    /// Clone data bytes the relay's decoder has seen so far, on all connections.
    pub fn decoded_bytes(&self) -> u64 {
        self.relay
            .metrics()
            .clone_data_bytes
            .load(Ordering::Relaxed)
    }
}

impl Drop for TlsRelay {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.state_dir);
    }
}

/// A loopback fake donor that speaks TLS the way mysqld does: for each connection it plays the
/// server's side of [`tls_clone_preamble`] (greeting, SSLRequest, TLS with `acceptor`, then the
/// login and `COM_CLONE` inside TLS), sends `stream` inside TLS and closes it (close_notify,
/// then FIN). A connection that breaks off the preamble or the TLS handshake is dropped.
pub async fn fake_tls_donor(stream: Arc<Vec<u8>>, acceptor: TlsAcceptor) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind donor");
    let addr = listener.local_addr().expect("donor address");
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            let (stream, acceptor) = (stream.clone(), acceptor.clone());
            tokio::spawn(async move {
                s.set_nodelay(true).expect("nodelay");
                let preamble = tls_clone_preamble();
                if play(&mut s, &preamble.before_tls, Direction::Downstream)
                    .await
                    .is_err()
                {
                    return;
                }
                let Ok(mut tls) = acceptor.accept(s).await else {
                    return;
                };
                if play(&mut tls, &preamble.inside_tls, Direction::Downstream)
                    .await
                    .is_ok()
                    && tls.write_all(&stream).await.is_ok()
                {
                    let _ = tls.shutdown().await;
                }
            });
        }
    });
    addr
}

/// The recipient's side with TLS: plays [`tls_clone_preamble`] against `addr`, connecting TLS
/// with `connector` to `name` after the SSLRequest, then reads to the end (the peer's
/// close_notify). Returns the bytes read after the preamble and the negotiated version and
/// cipher suite.
pub async fn clone_tls_client(
    addr: SocketAddr,
    connector: &TlsConnector,
    name: &str,
) -> (u64, ProtocolVersion, SupportedCipherSuite) {
    let mut s = TcpStream::connect(addr).await.expect("connect");
    s.set_nodelay(true).expect("nodelay");
    let preamble = tls_clone_preamble();
    play(&mut s, &preamble.before_tls, Direction::Upstream)
        .await
        .expect("preamble before TLS");
    let name = ServerName::try_from(name.to_string()).expect("server name");
    let mut tls = connector.connect(name, s).await.expect("recipient TLS");
    let (_, conn) = tls.get_ref();
    let negotiated = (
        conn.protocol_version().expect("a finished handshake"),
        conn.negotiated_cipher_suite()
            .expect("a finished handshake"),
    );
    play(&mut tls, &preamble.inside_tls, Direction::Upstream)
        .await
        .expect("preamble inside TLS");
    let read = read_to_end_counting(&mut tls).await;
    (read, negotiated.0, negotiated.1)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clone_stream;

    #[test]
    fn the_in_memory_pair_carries_every_byte_over_tls_1_3() {
        let pki = bench_pki("donor");
        let mut pair = InMemoryPair::new(
            server_config(&pki),
            client_config([pki.ca.clone()]),
            "donor",
        );
        assert_eq!(pair.negotiated().0, ProtocolVersion::TLSv1_3);
        let stream = clone_stream(3, 100_000);
        assert_eq!(pair.transfer(&stream, 64 * 1024), stream.len() as u64);
        assert_eq!(pair.transfer(&stream, 256 * 1024), stream.len() as u64);
    }

    #[tokio::test]
    async fn a_tls_donor_serves_a_tls_client_directly() {
        let pki = bench_pki("donor");
        let stream = Arc::new(clone_stream(3, 100_000));
        let donor = fake_tls_donor(stream.clone(), TlsAcceptor::from(server_config(&pki))).await;
        let connector = TlsConnector::from(client_config([pki.ca.clone()]));
        let (read, version, _) = clone_tls_client(donor, &connector, "donor").await;
        assert_eq!(read, stream.len() as u64);
        assert_eq!(version, ProtocolVersion::TLSv1_3);
    }

    #[tokio::test]
    async fn a_tls_clone_through_the_relay_is_decoded_inside_both_legs() {
        let pki = bench_pki("donor");
        let stream = Arc::new(clone_stream(3, 100_000));
        let donor = fake_tls_donor(stream.clone(), TlsAcceptor::from(server_config(&pki))).await;
        let relay = TlsRelay::start(donor);
        let (read, version, _) = clone_tls_client(relay.addr, &relay.connector(), RELAY_NAME).await;
        assert_eq!(read, stream.len() as u64);
        assert_eq!(version, ProtocolVersion::TLSv1_3);
        assert!(
            relay.decoded_bytes() >= 300_000,
            "{}",
            relay.decoded_bytes()
        );
    }
}
