//! The relay's RSA key for caching_sha2_password, made when the modes allow a recipient
//! without TLS and a donor leg with it, kept beside the relay's certificates.

use super::*;

/// The relay's RSA key pair for caching_sha2_password: it serves the public half to recipients
/// without TLS that ask for it, and decrypts the password they send with the private half.
pub struct RsaKey {
    pub(super) private: rsa::PrivateKey,
    pub(super) public_pem: String,
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

    pub(super) fn from_private(private: rsa::PrivateKey) -> Result<Self, RelayError> {
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
    pub(super) fn own(state_dir: Option<&Path>) -> Result<Self, RelayError> {
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

pub(super) fn rsa_invalid(reason: String) -> RelayError {
    RelayError::Config {
        field: "state_dir",
        reason,
    }
}
