//! Verifiers of the other side's certificate on each leg, and the names a recipient's
//! certificate is matched by.

use super::*;

/// The names a certificate is known by: its subject's common names, and the DNS names and IP
/// addresses among its subject alternative names.
#[derive(Debug, Default)]
pub(super) struct CertificateNames {
    pub(super) common_names: Vec<String>,
    pub(super) dns_names: Vec<String>,
    pub(super) ip_addresses: Vec<IpAddr>,
}

impl CertificateNames {
    pub(super) fn of(cert: &CertificateDer<'_>) -> Result<Self, String> {
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
    pub(super) fn match_any(&self, allowed: &[String]) -> bool {
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

/// CA certificates from a PEM file; the error names `field`.
pub(super) fn read_roots(path: &Path, field: &'static str) -> Result<RootCertStore, RelayError> {
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
pub(super) fn recipient_verifier(
    ca_file: &Path,
    provider: &Arc<CryptoProvider>,
) -> Result<Arc<dyn ClientCertVerifier>, RelayError> {
    let roots = read_roots(ca_file, "client_tls_ca")?;
    WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone())
        .build()
        .map_err(|e| tls_invalid("client_tls_ca", e))
}

/// The verifier of donors' certificates for the configured mode.
pub(super) fn donor_verifier(
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
pub(super) struct AnyCertificate {
    pub(super) provider: Arc<CryptoProvider>,
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
pub(super) struct ChainOnly {
    pub(super) inner: Arc<WebPkiServerVerifier>,
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
