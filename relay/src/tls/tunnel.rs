//! The mutual TLS of a relay pair's tunnel.

use super::*;

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
