//! TLS material and policy for both legs, built with rustls (ring provider): the acceptor that
//! terminates the recipients' TLS with the relay's certificate (and, with a client CA, checks
//! theirs), and the connector that speaks TLS to donors, verifying their certificates as
//! configured and presenting the relay's client certificate when one is configured.
//!
//! Without a configured certificate the relay makes its own small CA and a certificate signed
//! by it (rcgen). With a state directory both are kept in `DIR/tls/` and reused on restart, so a
//! recipient can pin the CA with `clone_ssl_ca`; the CA's SHA-256 fingerprint is logged.
//!
//! For caching_sha2_password's full authentication between a recipient without TLS and a donor
//! with it, the relay has an RSA key of its own ([`RsaKey`], 2048 bits), made when the modes
//! allow that combination and kept in `DIR/tls/rsa-key.pem` (or in memory without a state
//! directory); a reload keeps it.
//!
//! What each mode means for a connection is decided in [`policy`] alone; the [`Tls`] in use
//! carries the policy of the settings it was built from.
//!
//! The material in use sits in a [`TlsStore`]: a reload (SIGHUP, or a change of a configured
//! file) builds a new [`Tls`] from the files and swaps it in whole; each new connection takes
//! the current one once, so connections already carried keep the TLS sessions they have.

use std::fmt;
use std::io;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::time::SystemTime;

use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose,
};
use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{CryptoProvider, verify_tls12_signature, verify_tls13_signature};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::server::WebPkiClientVerifier;
use rustls::server::danger::ClientCertVerifier;
use rustls::{CertificateError, ClientConfig, DigitallySignedStruct, RootCertStore, ServerConfig};
use tokio_rustls::{TlsAcceptor, TlsConnector};
use tracing::{info, warn};

use crate::config::{ClientTlsMode, Config, ServerTlsMode, ServerTlsVerify};
use crate::error::RelayError;

pub mod policy;

pub use policy::Policy;

/// The folder inside the state directory that holds the relay's own TLS material.
const TLS_DIR: &str = "tls";
/// The relay's CA certificate, for recipients to pin (`clone_ssl_ca`).
pub const CA_FILE: &str = "ca.pem";
const CERT_FILE: &str = "cert.pem";
const KEY_FILE: &str = "key.pem";
/// The relay's RSA key for caching_sha2_password (PKCS#8), beside its certificates.
pub const RSA_KEY_FILE: &str = "rsa-key.pem";
/// Size of the relay's RSA key, as MySQL's own auto-generated keys.
const RSA_BITS: usize = 2048;

/// TLS for both legs, ready to use.
#[derive(Clone)]
pub struct Tls {
    acceptor: Option<TlsAcceptor>,
    connector: Option<TlsConnector>,
    /// SHA-256 of the certificate that anchors the relay's chain (its CA, or the configured
    /// chain's last certificate), as colon-separated hex.
    pub fingerprint: Option<String>,
    /// SHA-256 of the relay's own certificate towards recipients (the chain's first), as
    /// colon-separated hex: it tells two certificates under the same CA apart (a reloaded one
    /// from the one before).
    pub certificate_fingerprint: Option<String>,
    /// Where the relay's certificate came from.
    pub origin: Option<CertOrigin>,
    /// Whether recipients must present a certificate from `client_tls_ca`.
    verifies_recipients: bool,
    /// Names of which a recipient's certificate must carry one (empty: any verified one).
    allowed_subjects: Vec<String>,
    /// Whether the relay presents a client certificate to donors.
    presents_client_certificate: bool,
    /// The relay's own certificate when it is kept nowhere: a reload keeps it rather than make
    /// another, so recipients see the same certificate until the relay restarts.
    ephemeral: Option<Arc<Identity>>,
    /// The relay's RSA key, when the modes allow a recipient without TLS and a donor with it.
    rsa: Option<Arc<RsaKey>>,
    /// The donor's RSA public key pinned by `--server-public-key`.
    donor_public_key: Option<Arc<rsa::PublicKey>>,
    policy: Policy,
}

/// The relay's RSA key pair for caching_sha2_password: it serves the public half to recipients
/// without TLS that ask for it, and decrypts the password they send with the private half.
pub struct RsaKey {
    private: rsa::PrivateKey,
    public_pem: String,
}

impl fmt::Debug for RsaKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RsaKey").finish_non_exhaustive()
    }
}

impl RsaKey {
    /// A new key (this takes a moment).
    pub fn generate() -> Result<Self, RelayError> {
        let private = rsa::PrivateKey::new(&mut getrandom::SysRng, RSA_BITS)
            .map_err(|e| rsa_invalid(format!("cannot make the relay's RSA key: {e}")))?;
        Self::from_private(private)
    }

    fn from_private(private: rsa::PrivateKey) -> Result<Self, RelayError> {
        use rsa::pkcs8::{EncodePublicKey, LineEnding};
        let public_pem = private
            .to_public_key()
            .to_public_key_pem(LineEnding::LF)
            .map_err(|e| rsa_invalid(e.to_string()))?;
        Ok(RsaKey {
            private,
            public_pem,
        })
    }

    /// The key kept in `state_dir/tls/`, made and kept there now when absent; made in memory
    /// without a state directory.
    fn own(state_dir: Option<&Path>) -> Result<Self, RelayError> {
        use rsa::pkcs8::{DecodePrivateKey, EncodePrivateKey, LineEnding};
        let Some(state_dir) = state_dir else {
            return Self::generate();
        };
        let dir = state_dir.join(TLS_DIR);
        let path = dir.join(RSA_KEY_FILE);
        if path.exists() {
            refuse_shared_key(&path, "state_dir")?;
            let pem = zeroize::Zeroizing::new(
                std::fs::read_to_string(&path).map_err(|e| file_invalid("state_dir", &path, e))?,
            );
            let private = rsa::PrivateKey::from_pkcs8_pem(&pem)
                .map_err(|e| file_invalid("state_dir", &path, e))?;
            return Self::from_private(private);
        }
        let key = Self::generate()?;
        let pem = key
            .private
            .to_pkcs8_pem(LineEnding::LF)
            .map_err(|e| rsa_invalid(e.to_string()))?;
        std::fs::create_dir_all(&dir)
            .and_then(|()| write_private(&path, pem.as_bytes()))
            .map_err(|e| file_invalid("state_dir", &path, e))?;
        Ok(key)
    }

    pub fn private(&self) -> &rsa::PrivateKey {
        &self.private
    }

    /// The public key as PEM (SubjectPublicKeyInfo), as a MySQL server sends its own.
    pub fn public_pem(&self) -> &str {
        &self.public_pem
    }
}

fn rsa_invalid(reason: String) -> RelayError {
    RelayError::Config {
        field: "state_dir",
        reason,
    }
}

/// Whether the modes allow a recipient leg without TLS with a donor leg with TLS (or a pair's
/// TLS tunnel, which counts as one), where the relay needs its own RSA key.
fn needs_rsa_key(config: &Config) -> bool {
    let plain_recipients = matches!(
        config.client_tls_mode,
        ClientTlsMode::Disabled | ClientTlsMode::Preferred
    );
    if config.peer.is_some() {
        return plain_recipients;
    }
    plain_recipients
        && (matches!(
            config.server_tls_mode,
            ServerTlsMode::Preferred | ServerTlsMode::Required
        ) || (config.server_tls_mode != ServerTlsMode::Disabled
            && config.server_tls_verify != ServerTlsVerify::Disabled))
}

/// Where the relay's certificate towards recipients came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CertOrigin {
    /// The configured files.
    Configured,
    /// The relay's own, made by an earlier run and kept in this folder.
    Kept(PathBuf),
    /// The relay's own, made now and kept in this folder.
    Made(PathBuf),
    /// The relay's own, made now and kept nowhere: it changes at every start.
    Ephemeral,
}

impl Tls {
    /// Logs where the certificate comes from and its fingerprint, once the relay serves, and
    /// what a plain donor leg means under these settings.
    pub fn log_start(&self) {
        if self.policy.allows_plain_donor_under_tls() {
            warn!(
                "--server-tls-mode disabled: recipients on TLS get a plain donor leg, where the clone's data crosses in clear"
            );
            match self.donor_public_key {
                Some(_) => info!(
                    "full authentication over the plain donor leg encrypts the password to the donor key pinned by --server-public-key"
                ),
                None => warn!(
                    "full authentication over a plain donor leg encrypts the password to the RSA key the donor sends, which trusts that network; pin the donor's key with --server-public-key"
                ),
            }
        }
        let Some(fingerprint) = &self.fingerprint else {
            return;
        };
        match &self.origin {
            Some(CertOrigin::Ephemeral) => warn!(
                %fingerprint,
                "TLS towards recipients with a certificate made at start and kept nowhere: it changes at every start (set --state-dir to keep it)"
            ),
            Some(CertOrigin::Kept(dir) | CertOrigin::Made(dir)) => info!(
                %fingerprint,
                ca = %dir.join(CA_FILE).display(),
                "TLS towards recipients with the relay's own certificate; recipients may pin its CA with clone_ssl_ca"
            ),
            _ => info!(%fingerprint, "TLS towards recipients with the configured certificate"),
        }
        if self.verifies_recipients {
            info!(
                allowed_subjects = ?self.allowed_subjects,
                "recipients must present a certificate from --client-tls-ca"
            );
        }
        if self.presents_client_certificate {
            info!("the relay presents its client certificate (--server-tls-cert) to donors");
        }
    }
}

impl fmt::Debug for Tls {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Tls")
            .field("terminates_recipient_tls", &self.acceptor.is_some())
            .field("dials_donor_tls", &self.connector.is_some())
            .field("fingerprint", &self.fingerprint)
            .field("certificate_fingerprint", &self.certificate_fingerprint)
            .field("verifies_recipients", &self.verifies_recipients)
            .field("allowed_subjects", &self.allowed_subjects)
            .field(
                "presents_client_certificate",
                &self.presents_client_certificate,
            )
            .finish()
    }
}

impl Tls {
    /// Builds what the configured modes need; an unreadable or unsafe file is refused with an
    /// error naming its setting.
    pub fn load(config: &Config) -> Result<Self, RelayError> {
        Self::build(config, None, None)
    }

    /// A new `Tls` from the configured files as they are now, for a reload: the same as
    /// [`Tls::load`], except that the relay's own certificate, when it is kept nowhere, stays
    /// the one this `Tls` has.
    /// The relay's RSA key stays the one this `Tls` has.
    pub fn reload(&self, config: &Config) -> Result<Self, RelayError> {
        Self::build(config, self.ephemeral.clone(), self.rsa.clone())
    }

    fn build(
        config: &Config,
        ephemeral: Option<Arc<Identity>>,
        rsa: Option<Arc<RsaKey>>,
    ) -> Result<Self, RelayError> {
        let rsa = match rsa {
            Some(key) => Some(key),
            None if needs_rsa_key(config) => {
                Some(Arc::new(RsaKey::own(config.state_dir.as_deref())?))
            }
            None => None,
        };
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let terminates = matches!(
            config.client_tls_mode,
            ClientTlsMode::Preferred | ClientTlsMode::Required
        );
        let mut kept_nowhere = None;
        let (acceptor, fingerprint, certificate_fingerprint, origin) = if terminates {
            let (identity, origin) = match (&config.client_tls_cert, &config.client_tls_key) {
                (Some(cert), Some(key)) => (
                    Identity::from_files(cert, key, "client_tls_cert", "client_tls_key")?,
                    CertOrigin::Configured,
                ),
                _ => match (&config.state_dir, ephemeral) {
                    (None, Some(identity)) => ((*identity).clone(), CertOrigin::Ephemeral),
                    _ => Identity::own(config.state_dir.as_deref())?,
                },
            };
            if origin == CertOrigin::Ephemeral {
                kept_nowhere = Some(Arc::new(identity.clone()));
            }
            let fingerprint = identity.fingerprint();
            let certificate_fingerprint = sha256_hex(&identity.chain[0]);
            let builder = ServerConfig::builder_with_provider(provider.clone())
                .with_safe_default_protocol_versions()
                .map_err(|e| tls_invalid("client_tls_mode", e))?;
            let builder = match &config.client_tls_ca {
                Some(ca) => builder.with_client_cert_verifier(recipient_verifier(ca, &provider)?),
                None => builder.with_no_client_auth(),
            };
            let server = builder
                .with_single_cert(identity.chain, identity.key)
                .map_err(|e| tls_invalid("client_tls_cert", e))?;
            (
                Some(TlsAcceptor::from(Arc::new(server))),
                Some(fingerprint),
                Some(certificate_fingerprint),
                Some(origin),
            )
        } else {
            (None, None, None, None)
        };
        let dials_tls = config.server_tls_mode != ServerTlsMode::Disabled
            && config.client_tls_mode != ClientTlsMode::Passthrough;
        let client_identity = match (&config.server_tls_cert, &config.server_tls_key) {
            (Some(cert), Some(key)) if dials_tls => Some(Identity::from_files(
                cert,
                key,
                "server_tls_cert",
                "server_tls_key",
            )?),
            _ => None,
        };
        let presents_client_certificate = client_identity.is_some();
        let connector = if dials_tls {
            let verifier = donor_verifier(config, provider.clone())?;
            let client = ClientConfig::builder_with_provider(provider)
                .with_safe_default_protocol_versions()
                .map_err(|e| tls_invalid("server_tls_mode", e))?
                .dangerous()
                .with_custom_certificate_verifier(verifier);
            let client = match client_identity {
                Some(identity) => client
                    .with_client_auth_cert(identity.chain, identity.key)
                    .map_err(|e| tls_invalid("server_tls_cert", e))?,
                None => client.with_no_client_auth(),
            };
            Some(TlsConnector::from(Arc::new(client)))
        } else {
            None
        };
        let donor_public_key = match &config.server_public_key {
            Some(path) => {
                let pem =
                    std::fs::read(path).map_err(|e| file_invalid("server_public_key", path, e))?;
                let key = crate::password::public_key_from_pem(&pem)
                    .map_err(|e| file_invalid("server_public_key", path, e))?;
                Some(Arc::new(key))
            }
            None => None,
        };
        let policy = Policy::new(config, acceptor.is_some(), connector.is_some());
        Ok(Tls {
            donor_public_key,
            policy,
            acceptor,
            connector,
            fingerprint,
            certificate_fingerprint,
            origin,
            verifies_recipients: terminates && config.client_tls_ca.is_some(),
            allowed_subjects: config.client_tls_allowed_subjects.clone(),
            presents_client_certificate,
            ephemeral: kept_nowhere,
            rsa,
        })
    }

    /// Whether a recipient whose TLS handshake passed may go on: with allowed subjects
    /// configured, its certificate must carry one of them as its subject's common name or among
    /// its DNS or IP subject alternative names. The refusal names what the certificate carries.
    pub fn admit_recipient(&self, chain: Option<&[CertificateDer<'_>]>) -> Result<(), String> {
        if self.allowed_subjects.is_empty() {
            return Ok(());
        }
        let Some(leaf) = chain.and_then(<[_]>::first) else {
            return Err(
                "clone-relay: the recipient presented no certificate, and --client-tls-allowed-subjects is set"
                    .into(),
            );
        };
        let names = CertificateNames::of(leaf)
            .map_err(|e| format!("clone-relay: the recipient's certificate cannot be read: {e}"))?;
        if names.match_any(&self.allowed_subjects) {
            Ok(())
        } else {
            Err(format!(
                "clone-relay: the recipient's certificate ({names}) matches none of --client-tls-allowed-subjects"
            ))
        }
    }

    /// Terminates recipients' TLS, when the mode does.
    pub fn acceptor(&self) -> Option<&TlsAcceptor> {
        self.acceptor.as_ref()
    }

    /// Speaks TLS to donors, when the mode does.
    pub fn connector(&self) -> Option<&TlsConnector> {
        self.connector.as_ref()
    }

    /// The relay's RSA key, when the modes allow a recipient without TLS and a donor with it.
    /// What the modes mean for each connection.
    pub fn policy(&self) -> &Policy {
        &self.policy
    }

    /// The donor's RSA public key, when `--server-public-key` pins it.
    pub fn donor_public_key(&self) -> Option<&rsa::PublicKey> {
        self.donor_public_key.as_deref()
    }

    pub fn rsa_key(&self) -> Option<&RsaKey> {
        self.rsa.as_deref()
    }
}

/// The TLS in use, swapped whole by a reload. Each new connection takes the current [`Tls`]
/// once ([`TlsStore::current`]) and keeps it to its end, so a reload never touches a
/// connection already carried.
#[derive(Debug)]
pub struct TlsStore {
    current: RwLock<Arc<Tls>>,
    /// Each configured TLS file with its stamp when the current `Tls` was last (re)built.
    stamps: Mutex<Vec<(PathBuf, Stamp)>>,
}

/// What tells a changed file: its modification time and the SHA-256 of its contents (`None`:
/// unreadable). The digest catches a rewrite within the clock's granularity.
type Stamp = Option<(SystemTime, Vec<u8>)>;

impl TlsStore {
    /// A store holding `tls`, built from `config`'s files as they are now.
    pub fn new(tls: Tls, config: &Config) -> Self {
        TlsStore {
            current: RwLock::new(Arc::new(tls)),
            stamps: Mutex::new(stamps(config)),
        }
    }

    /// The TLS for a new connection.
    pub fn current(&self) -> Arc<Tls> {
        self.current
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Builds a new `Tls` from the files and swaps it in; on failure the current one stays and
    /// the error says why.
    pub fn reload(&self, config: &Config) -> Result<Arc<Tls>, RelayError> {
        let mut seen = self.stamps.lock().unwrap_or_else(PoisonError::into_inner);
        // Stamped before reading, so a change made during the build is seen by the next poll.
        *seen = stamps(config);
        self.swap(config)
    }

    /// Like [`TlsStore::reload`], but only when a configured TLS file changed (its modification
    /// time or its contents) since the last build or attempt (`None`: nothing changed). A
    /// failed attempt is not repeated until a file changes again.
    pub fn reload_if_changed(&self, config: &Config) -> Option<Result<Arc<Tls>, RelayError>> {
        let mut seen = self.stamps.lock().unwrap_or_else(PoisonError::into_inner);
        let now = stamps(config);
        if *seen == now {
            return None;
        }
        *seen = now;
        Some(self.swap(config))
    }

    fn swap(&self, config: &Config) -> Result<Arc<Tls>, RelayError> {
        let new = Arc::new(self.current().reload(config)?);
        *self.current.write().unwrap_or_else(PoisonError::into_inner) = new.clone();
        Ok(new)
    }
}

/// The configured TLS files (certificates, keys, CAs of both legs), each with its stamp now.
fn stamps(config: &Config) -> Vec<(PathBuf, Stamp)> {
    [
        &config.client_tls_cert,
        &config.client_tls_key,
        &config.client_tls_ca,
        &config.server_tls_cert,
        &config.server_tls_key,
        &config.server_tls_ca,
        &config.server_public_key,
    ]
    .into_iter()
    .flatten()
    .map(|path| {
        let stamp = std::fs::metadata(path)
            .and_then(|m| m.modified())
            .and_then(|modified| {
                let contents = std::fs::read(path)?;
                let digest = ring::digest::digest(&ring::digest::SHA256, &contents);
                Ok((modified, digest.as_ref().to_vec()))
            })
            .ok();
        (path.clone(), stamp)
    })
    .collect()
}

/// The name the relay gives a donor in its TLS handshake: the host of `HOST:PORT` (an IP
/// address or a DNS name); any valid name where the host is neither, since only `identity`
/// verification reads it.
pub fn donor_name(upstream: &str) -> ServerName<'static> {
    let host = upstream
        .rsplit_once(':')
        .map_or(upstream, |(host, _)| host)
        .trim_start_matches('[')
        .trim_end_matches(']');
    ServerName::try_from(host.to_string())
        .unwrap_or_else(|_| ServerName::try_from("mysql").expect("a valid DNS name"))
}

/// The mutual TLS of a relay pair's tunnel: each relay presents `tunnel.cert` and requires the
/// other's certificate to chain to `tunnel.ca`.
#[derive(Clone)]
pub struct TunnelTls {
    pub acceptor: TlsAcceptor,
    pub connector: TlsConnector,
}

impl fmt::Debug for TunnelTls {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TunnelTls").finish_non_exhaustive()
    }
}

impl TunnelTls {
    /// The tunnel's TLS from `tunnel.cert`, `tunnel.key` and `tunnel.ca`; `None` for a plain
    /// tunnel.
    pub fn load(config: &Config) -> Result<Option<Self>, RelayError> {
        let t = &config.tunnel;
        let (Some(cert), Some(key), Some(ca)) = (&t.cert, &t.key, &t.ca) else {
            return Ok(None);
        };
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let identity = Identity::from_files(cert, key, "tunnel.cert", "tunnel.key")?;
        let roots = Arc::new(read_roots(ca, "tunnel.ca")?);
        let clients = WebPkiClientVerifier::builder_with_provider(roots.clone(), provider.clone())
            .build()
            .map_err(|e| tls_invalid("tunnel.ca", e))?;
        let server = ServerConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .map_err(|e| tls_invalid("tunnel.cert", e))?
            .with_client_cert_verifier(clients)
            .with_single_cert(identity.chain.clone(), identity.key.clone_key())
            .map_err(|e| tls_invalid("tunnel.cert", e))?;
        let client = ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| tls_invalid("tunnel.cert", e))?
            .with_root_certificates(roots)
            .with_client_auth_cert(identity.chain, identity.key)
            .map_err(|e| tls_invalid("tunnel.cert", e))?;
        Ok(Some(TunnelTls {
            acceptor: TlsAcceptor::from(Arc::new(server)),
            connector: TlsConnector::from(Arc::new(client)),
        }))
    }
}

/// A certificate chain with its key.
struct Identity {
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
}

impl Clone for Identity {
    fn clone(&self) -> Self {
        Identity {
            chain: self.chain.clone(),
            key: self.key.clone_key(),
        }
    }
}

impl Identity {
    /// Reads a chain and its key; errors name `cert_field` or `key_field`. A key readable by
    /// others is refused.
    fn from_files(
        cert: &Path,
        key: &Path,
        cert_field: &'static str,
        key_field: &'static str,
    ) -> Result<Self, RelayError> {
        refuse_shared_key(key, key_field)?;
        let chain = CertificateDer::pem_file_iter(cert)
            .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
            .map_err(|e| file_invalid(cert_field, cert, e))?;
        if chain.is_empty() {
            return Err(file_invalid(cert_field, cert, "no certificate in it"));
        }
        let key = PrivateKeyDer::from_pem_file(key).map_err(|e| file_invalid(key_field, key, e))?;
        Ok(Identity { chain, key })
    }

    /// The relay's own CA and certificate: read from `state_dir/tls/` when an earlier run left
    /// them there, else made now (and kept there when there is a state directory).
    fn own(state_dir: Option<&Path>) -> Result<(Self, CertOrigin), RelayError> {
        let Some(state_dir) = state_dir else {
            return Ok((make_own()?.identity()?, CertOrigin::Ephemeral));
        };
        let dir = state_dir.join(TLS_DIR);
        let (cert, key) = (dir.join(CERT_FILE), dir.join(KEY_FILE));
        if cert.exists() && key.exists() {
            return Ok((
                Self::from_files(&cert, &key, "client_tls_cert", "client_tls_key")?,
                CertOrigin::Kept(dir),
            ));
        }
        let material = make_own()?;
        material
            .save(&dir)
            .map_err(|e| file_invalid("state_dir", &dir, e))?;
        Ok((material.identity()?, CertOrigin::Made(dir)))
    }

    /// SHA-256 of the chain's last certificate (the CA of the relay's own chain).
    fn fingerprint(&self) -> String {
        sha256_hex(self.chain.last().expect("a chain is never empty"))
    }
}

/// SHA-256 of a certificate, as colon-separated hex.
fn sha256_hex(cert: &CertificateDer<'_>) -> String {
    let digest = ring::digest::digest(&ring::digest::SHA256, cert.as_ref());
    let hex: Vec<String> = digest.as_ref().iter().map(|b| format!("{b:02X}")).collect();
    hex.join(":")
}

/// The names a certificate is known by: its subject's common names, and the DNS names and IP
/// addresses among its subject alternative names.
#[derive(Debug, Default)]
struct CertificateNames {
    common_names: Vec<String>,
    dns_names: Vec<String>,
    ip_addresses: Vec<IpAddr>,
}

impl CertificateNames {
    fn of(cert: &CertificateDer<'_>) -> Result<Self, String> {
        use x509_parser::extensions::GeneralName;
        let (_, parsed) =
            x509_parser::parse_x509_certificate(cert.as_ref()).map_err(|e| e.to_string())?;
        let mut names = CertificateNames {
            common_names: parsed
                .subject()
                .iter_common_name()
                .filter_map(|cn| cn.as_str().ok().map(str::to_owned))
                .collect(),
            ..CertificateNames::default()
        };
        let san = parsed
            .subject_alternative_name()
            .map_err(|e| e.to_string())?;
        for name in san.iter().flat_map(|san| &san.value.general_names) {
            match name {
                GeneralName::DNSName(dns) => names.dns_names.push((*dns).to_owned()),
                GeneralName::IPAddress(bytes) => {
                    if let Ok(v4) = <[u8; 4]>::try_from(*bytes) {
                        names.ip_addresses.push(IpAddr::from(v4));
                    } else if let Ok(v6) = <[u8; 16]>::try_from(*bytes) {
                        names.ip_addresses.push(IpAddr::from(v6));
                    }
                }
                _ => {}
            }
        }
        Ok(names)
    }

    /// Whether any of `allowed` is one of the names: a common name exactly, a DNS name without
    /// regard to ASCII case, an IP address as an address (`::1` is `0:0::1`).
    fn match_any(&self, allowed: &[String]) -> bool {
        allowed.iter().any(|entry| {
            self.common_names.iter().any(|cn| cn == entry)
                || self
                    .dns_names
                    .iter()
                    .any(|dns| dns.eq_ignore_ascii_case(entry))
                || entry
                    .parse::<IpAddr>()
                    .is_ok_and(|ip| self.ip_addresses.contains(&ip))
        })
    }
}

impl fmt::Display for CertificateNames {
    /// `CN=a, DNS:b, IP:192.0.2.1`, at most eight names (then `...`), or `no names`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        const SHOWN: usize = 8;
        let all: Vec<String> = (self.common_names.iter().map(|cn| format!("CN={cn}")))
            .chain(self.dns_names.iter().map(|dns| format!("DNS:{dns}")))
            .chain(self.ip_addresses.iter().map(|ip| format!("IP:{ip}")))
            .collect();
        if all.is_empty() {
            return f.write_str("no names");
        }
        f.write_str(&all[..all.len().min(SHOWN)].join(", "))?;
        if all.len() > SHOWN {
            f.write_str(", ...")?;
        }
        Ok(())
    }
}

/// The relay's own CA and the certificate it signs, as PEM.
struct OwnMaterial {
    /// The certificate, then the CA.
    chain_pem: String,
    ca_pem: String,
    key_pem: String,
}

/// Makes a CA and a server certificate it signs.
fn make_own() -> Result<OwnMaterial, RelayError> {
    let made = || -> Result<OwnMaterial, rcgen::Error> {
        let mut ca = CertificateParams::new(Vec::<String>::new())?;
        ca.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        ca.distinguished_name
            .push(DnType::CommonName, "clone-relay CA");
        ca.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let ca = CertifiedIssuer::self_signed(ca, KeyPair::generate()?)?;
        let mut leaf = CertificateParams::new(vec!["clone-relay".to_string()])?;
        leaf.distinguished_name
            .push(DnType::CommonName, "clone-relay");
        leaf.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        leaf.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        leaf.use_authority_key_identifier_extension = true;
        let key = KeyPair::generate()?;
        let cert = leaf.signed_by(&key, &ca)?;
        Ok(OwnMaterial {
            chain_pem: format!("{}{}", cert.pem(), ca.pem()),
            ca_pem: ca.pem(),
            key_pem: key.serialize_pem(),
        })
    };
    made().map_err(|e| RelayError::Config {
        field: "client_tls_cert",
        reason: format!("cannot make the relay's own certificate: {e}"),
    })
}

impl OwnMaterial {
    fn identity(&self) -> Result<Identity, RelayError> {
        let own = |e: rustls::pki_types::pem::Error| RelayError::Config {
            field: "client_tls_cert",
            reason: format!("the relay's own certificate: {e}"),
        };
        Ok(Identity {
            chain: CertificateDer::pem_slice_iter(self.chain_pem.as_bytes())
                .collect::<Result<_, _>>()
                .map_err(own)?,
            key: PrivateKeyDer::from_pem_slice(self.key_pem.as_bytes()).map_err(own)?,
        })
    }

    /// Writes the material to `dir`, the key readable by its owner only.
    fn save(&self, dir: &Path) -> io::Result<()> {
        std::fs::create_dir_all(dir)?;
        std::fs::write(dir.join(CERT_FILE), &self.chain_pem)?;
        std::fs::write(dir.join(CA_FILE), &self.ca_pem)?;
        write_private(&dir.join(KEY_FILE), self.key_pem.as_bytes())
    }
}

/// Writes a private key file readable by its owner only.
fn write_private(path: &Path, contents: &[u8]) -> io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
    let mut key = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)?;
    // A file left by someone else keeps its mode on open: make it the owner's only.
    key.set_permissions(std::fs::Permissions::from_mode(0o600))?;
    key.write_all(contents)
}

/// A private key file that others can read is refused: it names the setting and the fix.
fn refuse_shared_key(path: &Path, field: &'static str) -> Result<(), RelayError> {
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(path)
        .map_err(|e| file_invalid(field, path, e))?
        .permissions()
        .mode();
    if mode & 0o077 != 0 {
        return Err(file_invalid(
            field,
            path,
            format!(
                "readable by its group or others (mode {:o}); chmod 600 it",
                mode & 0o777
            ),
        ));
    }
    Ok(())
}

/// CA certificates from a PEM file; the error names `field`.
fn read_roots(path: &Path, field: &'static str) -> Result<RootCertStore, RelayError> {
    let mut roots = RootCertStore::empty();
    let certs = CertificateDer::pem_file_iter(path)
        .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
        .map_err(|e| file_invalid(field, path, e))?;
    let (added, _) = roots.add_parsable_certificates(certs);
    if added == 0 {
        return Err(file_invalid(field, path, "no usable CA certificate in it"));
    }
    Ok(roots)
}

/// The verifier of recipients' certificates: a valid chain to one of the CAs in `ca_file` (in
/// its validity period, for client authentication) is required.
fn recipient_verifier(
    ca_file: &Path,
    provider: &Arc<CryptoProvider>,
) -> Result<Arc<dyn ClientCertVerifier>, RelayError> {
    let roots = read_roots(ca_file, "client_tls_ca")?;
    WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone())
        .build()
        .map_err(|e| tls_invalid("client_tls_ca", e))
}

/// The verifier of donors' certificates for the configured mode.
fn donor_verifier(
    config: &Config,
    provider: Arc<CryptoProvider>,
) -> Result<Arc<dyn ServerCertVerifier>, RelayError> {
    let webpki = |path: &PathBuf| -> Result<Arc<WebPkiServerVerifier>, RelayError> {
        let roots = read_roots(path, "server_tls_ca")?;
        WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider.clone())
            .build()
            .map_err(|e| tls_invalid("server_tls_ca", e))
    };
    let ca_file = || {
        config.server_tls_ca.as_ref().ok_or(RelayError::Config {
            field: "server_tls_ca",
            reason: "needed when server_tls_verify is ca or identity".into(),
        })
    };
    Ok(match config.server_tls_verify {
        ServerTlsVerify::Disabled => Arc::new(AnyCertificate { provider }),
        ServerTlsVerify::Ca => Arc::new(ChainOnly {
            inner: webpki(ca_file()?)?,
        }),
        ServerTlsVerify::Identity => webpki(ca_file()?)?,
    })
}

/// Accepts any donor certificate (MySQL's own `preferred` mode does the same); the handshake's
/// signatures are still checked, so the session keys belong to whoever holds that certificate.
#[derive(Debug)]
struct AnyCertificate {
    provider: Arc<CryptoProvider>,
}

impl ServerCertVerifier for AnyCertificate {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// Checks the donor's chain against the configured CAs but not its name, as MySQL's
/// `VERIFY_CA` does: stock mysqld certificates name no host. The chain is checked before the
/// name, so a name mismatch means the chain passed.
#[derive(Debug)]
struct ChainOnly {
    inner: Arc<WebPkiServerVerifier>,
}

impl ServerCertVerifier for ChainOnly {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        match self.inner.verify_server_cert(
            end_entity,
            intermediates,
            server_name,
            ocsp_response,
            now,
        ) {
            Err(rustls::Error::InvalidCertificate(
                CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
            )) => Ok(ServerCertVerified::assertion()),
            other => other,
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}

fn tls_invalid(field: &'static str, e: impl fmt::Display) -> RelayError {
    RelayError::Config {
        field,
        reason: e.to_string(),
    }
}

fn file_invalid(field: &'static str, path: &Path, e: impl fmt::Display) -> RelayError {
    RelayError::Config {
        field,
        reason: format!("{}: {e}", path.display()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names_of(params: CertificateParams) -> CertificateNames {
        let cert = params.self_signed(&KeyPair::generate().unwrap()).unwrap();
        CertificateNames::of(cert.der()).unwrap()
    }

    #[test]
    fn names_match_by_common_name_dns_name_or_ip_address() {
        let mut params = CertificateParams::new(vec![
            "Recipient.Example".to_string(),
            "2001:db8::7".to_string(),
        ])
        .unwrap();
        params
            .distinguished_name
            .push(DnType::CommonName, "Clone Recipient");
        let names = names_of(params);
        assert_eq!(
            names.to_string(),
            "CN=Clone Recipient, DNS:Recipient.Example, IP:2001:db8::7"
        );
        let allows = |entry: &str| names.match_any(&[entry.to_string()]);
        assert!(allows("Clone Recipient"));
        assert!(!allows("clone recipient"), "a common name matches exactly");
        assert!(allows("recipient.example"), "DNS names ignore ASCII case");
        assert!(
            allows("2001:0db8:0:0::7"),
            "an address is compared as an address"
        );
        assert!(!allows("recipient"));
        assert!(!allows("2001:db8::8"));
        assert!(!names.match_any(&[]));
    }

    #[test]
    fn a_certificate_without_names_says_so() {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.distinguished_name = rcgen::DistinguishedName::new();
        let names = names_of(params);
        assert_eq!(names.to_string(), "no names");
        assert!(!names.match_any(&["".to_string(), "x".to_string()]));
    }
}
