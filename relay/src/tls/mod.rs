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

use crate::config::{Config, ServerTlsVerify};
use crate::error::RelayError;

mod own;
pub mod password;
pub mod policy;
mod rsa_key;
mod store;
mod tunnel;
mod verify;

pub use own::CertOrigin;
use own::*;
pub use policy::Policy;
pub use rsa_key::RsaKey;
pub use store::TlsStore;
pub use tunnel::TunnelTls;
use verify::*;

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
        let policy = Policy::new(config);
        let rsa = match rsa {
            Some(key) => Some(key),
            None if policy.needs_rsa_key() => {
                Some(Arc::new(RsaKey::own(config.state_dir.as_deref())?))
            }
            None => None,
        };
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let terminates = policy.terminates();
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
        let dials_tls = policy.dials();
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
                let key = crate::tls::password::public_key_from_pem(&pem)
                    .map_err(|e| file_invalid("server_public_key", path, e))?;
                Some(Arc::new(key))
            }
            None => None,
        };
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

pub(super) fn tls_invalid(field: &'static str, e: impl fmt::Display) -> RelayError {
    RelayError::Config {
        field,
        reason: e.to_string(),
    }
}

pub(super) fn file_invalid(field: &'static str, path: &Path, e: impl fmt::Display) -> RelayError {
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
