//! caching_sha2_password's RSA password exchange, as MySQL does it on a connection without TLS:
//! the password with its terminating NUL, XORed byte by byte with the server's nonce (repeated
//! cyclically), encrypted with RSA-OAEP (SHA-1 and MGF1 with SHA-1, OpenSSL's
//! `RSA_PKCS1_OAEP_PADDING`) under the server's public key. The relay encrypts a password
//! towards a donor without TLS, and decrypts one that a recipient without TLS encrypted under
//! the relay's own key. Passwords live in [`Zeroizing`] buffers, cleared when dropped.

use rsa::pkcs1::DecodeRsaPublicKey;
use rsa::pkcs8::DecodePublicKey;
use rsa::{PrivateKey, PublicKey};
use sha1::Sha1;
use zeroize::Zeroizing;

/// The password as a client sends it: its bytes up to the first NUL, then a NUL.
pub fn with_nul(password: &[u8]) -> Zeroizing<Vec<u8>> {
    let end = password
        .iter()
        .position(|&b| b == 0)
        .unwrap_or(password.len());
    let mut out = Zeroizing::new(Vec::with_capacity(end + 1));
    out.extend_from_slice(&password[..end]);
    out.push(0);
    out
}

/// XORs `bytes` in place with `nonce`, repeated cyclically (MySQL's `xor_string`).
pub fn xor_nonce(bytes: &mut [u8], nonce: &[u8]) {
    if nonce.is_empty() {
        return;
    }
    for (b, n) in bytes.iter_mut().zip(nonce.iter().cycle()) {
        *b ^= n;
    }
}

/// Reads a public key in PEM as a MySQL server sends it (SubjectPublicKeyInfo), or in PKCS#1.
pub fn public_key_from_pem(pem: &[u8]) -> Result<PublicKey, String> {
    let pem = std::str::from_utf8(pem).map_err(|_| "the public key is not PEM text".to_string())?;
    let pem = pem.trim_end_matches('\0').trim();
    PublicKey::from_public_key_pem(pem)
        .or_else(|_| PublicKey::from_pkcs1_pem(pem))
        .map_err(|e| format!("the public key cannot be read: {e}"))
}

/// What a client sends a server without TLS in full authentication: `password` (its NUL added
/// when missing) masked with `nonce` and encrypted under `key`.
pub fn encrypt(password: &[u8], nonce: &[u8], key: &PublicKey) -> Result<Vec<u8>, String> {
    let mut masked = with_nul(password);
    xor_nonce(&mut masked, nonce);
    key.oaep_encrypt::<Sha1>(&masked)
        .map_err(|e| format!("RSA encryption of the password failed: {e}"))
}

/// The password (with its NUL) a client encrypted under `key` with [`encrypt`], as a server
/// reads it: decrypted, unmasked, and cut at the first NUL.
pub fn decrypt(
    ciphertext: &[u8],
    nonce: &[u8],
    key: &PrivateKey,
) -> Result<Zeroizing<Vec<u8>>, String> {
    let mut masked = Zeroizing::new(
        key.oaep_decrypt::<Sha1>(ciphertext)
            .map_err(|_| "the encrypted password cannot be decrypted with the relay's key")?,
    );
    xor_nonce(&mut masked, nonce);
    Ok(with_nul(&masked))
}

#[cfg(test)]
mod tests {
    use super::*;
    use rsa::pkcs8::{EncodePublicKey, LineEnding};
    use std::sync::LazyLock;

    /// One key for the tests of this module (generating one takes a moment in a debug build).
    static KEY: LazyLock<PrivateKey> =
        LazyLock::new(|| PrivateKey::new(&mut getrandom::SysRng, 2048).expect("a key"));

    const NONCE: [u8; 20] = *b"0123456789abcdefghij";

    #[test]
    fn the_mask_covers_the_nul_and_repeats_the_nonce() {
        let password = b"a password longer than the twenty-byte nonce";
        let mut masked = with_nul(password).to_vec();
        assert_eq!(masked.len(), password.len() + 1);
        xor_nonce(&mut masked, &NONCE);
        assert_eq!(masked[0], b'a' ^ b'0');
        assert_eq!(masked[20], password[20] ^ b'0', "the nonce starts again");
        assert_eq!(
            masked[password.len()],
            NONCE[password.len() % 20],
            "NUL masked"
        );
        xor_nonce(&mut masked, &NONCE);
        assert_eq!(&masked[..password.len()], password);
        assert_eq!(*with_nul(b"pw\0junk"), b"pw\0");
    }

    #[test]
    fn a_password_round_trips_through_oaep_with_the_nonce() {
        let public = KEY.to_public_key();
        let pem = public.to_public_key_pem(LineEnding::LF).unwrap();
        let key = public_key_from_pem(pem.as_bytes()).unwrap();
        let sent = encrypt(b"clone-relay-drill", &NONCE, &key).unwrap();
        assert_eq!(sent.len(), 256, "a 2048-bit key's cipher length");
        assert!(!sent.windows(5).any(|w| w == b"clone"));
        let read = decrypt(&sent, &NONCE, &KEY).unwrap();
        assert_eq!(*read, b"clone-relay-drill\0");
        // Another nonce reads another password: the nonce is part of the secret.
        let other = decrypt(&sent, b"ABCDEFGHIJKLMNOPQRST", &KEY).unwrap();
        assert_ne!(*other, b"clone-relay-drill\0");
        assert!(decrypt(&sent[1..], &NONCE, &KEY).is_err());
    }

    #[test]
    fn what_a_server_does_with_the_clients_encryption() {
        // The server's steps (sha2_password.cc): decrypt, XOR the whole plaintext with the
        // nonce, read up to the NUL.
        let public = KEY.to_public_key();
        let sent = encrypt(b"secret", &NONCE, &public).unwrap();
        let mut plain = KEY.oaep_decrypt::<Sha1>(&sent).unwrap();
        assert_eq!(plain.len(), 7);
        xor_nonce(&mut plain, &NONCE);
        assert_eq!(plain, b"secret\0");
    }

    #[test]
    fn public_keys_in_both_pem_forms_are_read() {
        use rsa::pkcs1::EncodeRsaPublicKey;
        let public = KEY.to_public_key();
        let spki = public.to_public_key_pem(LineEnding::LF).unwrap();
        let mut with_nul = spki.clone().into_bytes();
        with_nul.push(0);
        assert_eq!(public_key_from_pem(&with_nul).unwrap(), public);
        let pkcs1 = public.to_pkcs1_pem(LineEnding::LF).unwrap();
        assert_eq!(public_key_from_pem(pkcs1.as_bytes()).unwrap(), public);
        assert!(public_key_from_pem(b"not a key").is_err());
    }
}
