//! The relay's own CA and certificate (rcgen), kept in the state directory, and the key files'
//! rules (never readable by others).

use super::*;

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

/// A certificate chain with its key.
pub(super) struct Identity {
    pub(super) chain: Vec<CertificateDer<'static>>,
    pub(super) key: PrivateKeyDer<'static>,
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
    pub(super) fn from_files(
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
    pub(super) fn own(state_dir: Option<&Path>) -> Result<(Self, CertOrigin), RelayError> {
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
    pub(super) fn fingerprint(&self) -> String {
        sha256_hex(self.chain.last().expect("a chain is never empty"))
    }
}

/// SHA-256 of a certificate, as colon-separated hex.
pub(super) fn sha256_hex(cert: &CertificateDer<'_>) -> String {
    let digest = ring::digest::digest(&ring::digest::SHA256, cert.as_ref());
    let hex: Vec<String> = digest.as_ref().iter().map(|b| format!("{b:02X}")).collect();
    hex.join(":")
}

/// The relay's own CA and the certificate it signs, as PEM.
pub(super) struct OwnMaterial {
    /// The certificate, then the CA.
    pub(super) chain_pem: String,
    pub(super) ca_pem: String,
    pub(super) key_pem: String,
}

/// Makes a CA and a server certificate it signs.
pub(super) fn make_own() -> Result<OwnMaterial, RelayError> {
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
    pub(super) fn identity(&self) -> Result<Identity, RelayError> {
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
    pub(super) fn save(&self, dir: &Path) -> io::Result<()> {
        std::fs::create_dir_all(dir)?;
        std::fs::write(dir.join(CERT_FILE), &self.chain_pem)?;
        std::fs::write(dir.join(CA_FILE), &self.ca_pem)?;
        write_private(&dir.join(KEY_FILE), self.key_pem.as_bytes())
    }
}

/// Writes a private key file readable by its owner only.
pub(super) fn write_private(path: &Path, contents: &[u8]) -> io::Result<()> {
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
pub(super) fn refuse_shared_key(path: &Path, field: &'static str) -> Result<(), RelayError> {
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
