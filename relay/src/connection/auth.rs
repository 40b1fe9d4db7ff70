//! The auth exchange, from the login request to the donor's OK or ERR, carried packet by packet
//! between the recipient's leg and the donor's. Each packet gets the sequence id of the leg it
//! goes out on (each leg counts its own: one may have had an SSLRequest round the other had
//! not, and the relay's own packets shift them further) and is shown to the connection's
//! observer as the recipient's conversation has it.
//!
//! When the legs differ and the donor asks for full authentication (caching_sha2_password's
//! `0x01 0x04`), the relay bridges what the password needs on each leg:
//!
//! - TLS recipient, plain donor: the recipient sends its password in clear inside its TLS; the
//!   relay asks the donor for its RSA public key and sends the password encrypted
//!   ([`crate::tls::password::encrypt`] with the latest nonce), so it never crosses the plain leg
//!   in clear.
//! - Plain recipient, TLS donor: the recipient asks for the public key; the relay serves its
//!   own, decrypts what the recipient sends with it, and sends the password in clear inside the
//!   donor's TLS.
//!
//! The donor's key is checked against the one `--server-public-key` pins, when given. Plugins
//! whose answer is the password in clear (`sha256_password` over TLS, `mysql_clear_password`)
//! are refused from a TLS recipient towards a plain donor leg ([`Policy::plugin_may_answer`]).
//! Refused, the donor gets an empty password instead and its refusal ends its connection, so
//! it counts no broken handshake.
//!
//! The password sits only in buffers cleared when dropped, and is never logged.

use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tracing::debug;
use zeroize::Zeroizing;

use crate::error::RelayError;
use crate::io::Observer;
use crate::protocol::auth::{
    AUTH_MORE_DATA, NONCE_LEN, REQUEST_PUBLIC_KEY, SeqCounter, ServerAuth, classify_server_auth,
    set_seq,
};
use crate::protocol::handshake::err_packet;
use crate::protocol::packet::read_bounded;
use crate::protocol::{Direction, HEADER_LEN, frame};
use crate::tls::password;
use crate::tls::{Policy, RsaKey};

/// MySQL's server error for a bad handshake, sent to the recipient when the relay cannot carry
/// its password across.
const ER_HANDSHAKE_ERROR: u16 = 1043;
/// MySQL's error for "client does not support authentication protocol requested by server".
const ER_NOT_SUPPORTED_AUTH_MODE: u16 = 1251;

/// What the exchange needs to know about the legs.
#[derive(Debug)]
pub struct Exchange<'a> {
    pub recipient_tls: bool,
    pub donor_tls: bool,
    /// The nonce of the donor's greeting (an auth switch brings a new one).
    pub nonce: Option<[u8; NONCE_LEN]>,
    /// The relay's RSA key, for recipients without TLS that ask for a public key.
    pub rsa_key: Option<&'a RsaKey>,
    /// The donor's key pinned by `--server-public-key`: another one is refused.
    pub donor_key: Option<&'a rsa::PublicKey>,
    /// Largest packet accepted from either side.
    pub max_packet: usize,
    /// The next sequence id on each leg (after the login request).
    pub recipient_seq: SeqCounter,
    pub donor_seq: SeqCounter,
}

/// How a full authentication went across the legs, for the logs and the counters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FullAuth {
    /// The donor did not ask for the password (fast auth, or the exchange ended before).
    None,
    /// Both legs alike: the recipient's packets passed as they were.
    Forwarded,
    /// The relay encrypted the password with the donor's public key for a plain donor leg.
    EncryptedForDonor,
    /// The relay decrypted the password with its own key and sent it inside the donor's TLS.
    DecryptedForDonor,
}

/// Carries the auth exchange after the login request until the donor's OK or ERR has reached
/// the recipient. An ERR ends it without an error: the recipient has it, and the copy after the
/// stage sees both sides close.
pub async fn carry(
    recipient: &mut (impl AsyncRead + AsyncWrite + Unpin),
    donor: &mut (impl AsyncRead + AsyncWrite + Unpin),
    observer: &impl Observer,
    mut ex: Exchange<'_>,
) -> Result<FullAuth, RelayError> {
    let mut full_auth = FullAuth::None;
    // The donor asked for the password: the recipient's next packet is about it.
    let mut password_due = false;
    loop {
        let (mut packet, seq) = read(donor, ex.max_packet, Direction::Downstream).await?;
        ex.donor_seq.received(seq);
        let kind = classify_server_auth(&packet[HEADER_LEN..]);
        if let ServerAuth::Switch { plugin, .. } = &kind
            && let Err(reason) = Policy::plugin_may_answer(plugin, ex.recipient_tls, ex.donor_tls)
        {
            decline(donor, &mut ex).await;
            return refuse(recipient, &mut ex, ER_NOT_SUPPORTED_AUTH_MODE, reason).await;
        }
        set_seq(&mut packet, ex.recipient_seq.take());
        observer
            .observe(Direction::Downstream, &packet)
            .map_err(RelayError::Protocol)?;
        recipient
            .write_all(&packet)
            .await
            .map_err(RelayError::Downstream)?;
        match kind {
            ServerAuth::Ok | ServerAuth::Err => return Ok(full_auth),
            ServerAuth::FastAuthSuccess => continue,
            ServerAuth::Switch { nonce, .. } => {
                if nonce.is_some() {
                    ex.nonce = nonce;
                }
                password_due = false;
            }
            ServerAuth::PerformFullAuth => password_due = true,
            ServerAuth::MoreData | ServerAuth::Unknown => {}
        }

        let (packet, seq) = read(recipient, ex.max_packet, Direction::Upstream).await?;
        let mut packet = Zeroizing::new(packet);
        ex.recipient_seq.received(seq);
        observer
            .observe(Direction::Upstream, &packet)
            .map_err(RelayError::Protocol)?;
        if std::mem::take(&mut password_due) {
            full_auth = match (ex.recipient_tls, ex.donor_tls) {
                (true, false) => {
                    if !encrypt_for_donor(recipient, donor, observer, &mut ex, &packet).await? {
                        // The donor answered the key request with its ERR: the recipient has it.
                        return Ok(FullAuth::EncryptedForDonor);
                    }
                    FullAuth::EncryptedForDonor
                }
                (false, true) => {
                    decrypt_for_donor(recipient, donor, observer, &mut ex, &packet).await?;
                    FullAuth::DecryptedForDonor
                }
                _ => {
                    forward(donor, &mut ex.donor_seq, &mut packet).await?;
                    FullAuth::Forwarded
                }
            };
            debug!(?full_auth, "full authentication");
            continue;
        }
        forward(donor, &mut ex.donor_seq, &mut packet).await?;
    }
}

/// Sends a recipient's packet to the donor with the donor leg's next sequence id.
async fn forward(
    donor: &mut (impl AsyncWrite + Unpin),
    seq: &mut SeqCounter,
    packet: &mut [u8],
) -> Result<(), RelayError> {
    set_seq(packet, seq.take());
    donor.write_all(packet).await.map_err(RelayError::Upstream)
}

/// A TLS recipient sent its password in clear (`packet`); the donor leg is plain. Asks the donor
/// for its public key and sends it the password encrypted. `false` when the donor answered the
/// key request with an ERR, which has been passed to the recipient.
async fn encrypt_for_donor(
    recipient: &mut (impl AsyncRead + AsyncWrite + Unpin),
    donor: &mut (impl AsyncRead + AsyncWrite + Unpin),
    observer: &impl Observer,
    ex: &mut Exchange<'_>,
    packet: &[u8],
) -> Result<bool, RelayError> {
    let Some(nonce) = ex.nonce else {
        return fail(recipient, ex, "the donor's nonce is unknown".into()).await;
    };
    let request = frame(ex.donor_seq.take(), &[REQUEST_PUBLIC_KEY]);
    donor
        .write_all(&request)
        .await
        .map_err(RelayError::Upstream)?;
    let (mut answer, seq) = read(donor, ex.max_packet, Direction::Downstream).await?;
    ex.donor_seq.received(seq);
    let payload = &answer[HEADER_LEN..];
    let key = match classify_server_auth(payload) {
        ServerAuth::MoreData => password::public_key_from_pem(&payload[1..]),
        ServerAuth::Err => {
            set_seq(&mut answer, ex.recipient_seq.take());
            observer
                .observe(Direction::Downstream, &answer)
                .map_err(RelayError::Protocol)?;
            recipient
                .write_all(&answer)
                .await
                .map_err(RelayError::Downstream)?;
            return Ok(false);
        }
        _ => Err("the donor did not answer the request for its public key with one".into()),
    };
    let key = match key {
        Ok(key) => key,
        Err(reason) => return fail(recipient, ex, format!("donor's RSA key: {reason}")).await,
    };
    if ex.donor_key.is_some_and(|pinned| *pinned != key) {
        decline(donor, ex).await;
        return fail(
            recipient,
            ex,
            "the donor sent an RSA key other than the one --server-public-key pins: refused, nothing of the password was sent".into(),
        )
        .await;
    }
    let encrypted = match password::encrypt(&packet[HEADER_LEN..], &nonce, &key) {
        Ok(encrypted) => encrypted,
        Err(reason) => return fail(recipient, ex, reason).await,
    };
    donor
        .write_all(&frame(ex.donor_seq.take(), &encrypted))
        .await
        .map_err(RelayError::Upstream)?;
    Ok(true)
}

/// A plain recipient answered the donor's request for the password (`packet`); the donor leg
/// is TLS. Serves the relay's public key when asked, decrypts the password, and sends it to the
/// donor in clear inside its TLS.
async fn decrypt_for_donor(
    recipient: &mut (impl AsyncRead + AsyncWrite + Unpin),
    donor: &mut (impl AsyncWrite + Unpin),
    observer: &impl Observer,
    ex: &mut Exchange<'_>,
    packet: &[u8],
) -> Result<(), RelayError> {
    let Some(key) = ex.rsa_key else {
        return fail(
            recipient,
            ex,
            "the relay has no RSA key for a recipient without TLS (its modes do not allow a plain recipient leg with a TLS donor leg)".into(),
        )
        .await;
    };
    let Some(nonce) = ex.nonce else {
        return fail(recipient, ex, "the donor's nonce is unknown".into()).await;
    };
    let mut ciphertext = Zeroizing::new(packet.to_vec());
    if packet[HEADER_LEN..] == [REQUEST_PUBLIC_KEY] {
        let mut answer = vec![AUTH_MORE_DATA];
        answer.extend_from_slice(key.public_pem().as_bytes());
        let answer = frame(ex.recipient_seq.take(), &answer);
        observer
            .observe(Direction::Downstream, &answer)
            .map_err(RelayError::Protocol)?;
        recipient
            .write_all(&answer)
            .await
            .map_err(RelayError::Downstream)?;
        let (next, seq) = read(recipient, ex.max_packet, Direction::Upstream).await?;
        ciphertext = Zeroizing::new(next);
        ex.recipient_seq.received(seq);
        observer
            .observe(Direction::Upstream, &ciphertext)
            .map_err(RelayError::Protocol)?;
    }
    let password = match password::decrypt(&ciphertext[HEADER_LEN..], &nonce, key.private()) {
        Ok(password) => password,
        Err(reason) => {
            return fail(
                recipient,
                ex,
                format!("{reason} (a recipient without TLS must take the relay's public key, not a key file of its own)"),
            )
            .await;
        }
    };
    let clear = Zeroizing::new(frame(ex.donor_seq.take(), &password));
    donor.write_all(&clear).await.map_err(RelayError::Upstream)
}

/// Tells the recipient why its login cannot go on, and fails with it.
async fn fail<T>(
    recipient: &mut (impl AsyncWrite + Unpin),
    ex: &mut Exchange<'_>,
    reason: String,
) -> Result<T, RelayError> {
    refuse(
        recipient,
        ex,
        ER_HANDSHAKE_ERROR,
        format!("clone-relay: {reason}"),
    )
    .await
}

/// Sends the recipient an ERR packet with `code` and `reason`, and fails with it.
async fn refuse<T>(
    recipient: &mut (impl AsyncWrite + Unpin),
    ex: &mut Exchange<'_>,
    code: u16,
    reason: String,
) -> Result<T, RelayError> {
    let packet = err_packet(ex.recipient_seq.take(), code, b"08S01", &reason);
    let _ = recipient.write_all(&packet).await;
    let _ = recipient.shutdown().await;
    Err(RelayError::Auth(reason))
}

/// Answers the donor's request for the password with an empty one (a single NUL, which every
/// plugin reads as no password) and waits, bounded, for its refusal: the donor ends the
/// connection as a failed login, not a broken handshake. Best effort.
async fn decline(donor: &mut (impl AsyncRead + AsyncWrite + Unpin), ex: &mut Exchange<'_>) {
    let empty = frame(ex.donor_seq.take(), &[0]);
    if donor.write_all(&empty).await.is_ok() {
        let _ = tokio::time::timeout(
            crate::recovery::probe::PROBE_TIMEOUT,
            read(donor, ex.max_packet, Direction::Downstream),
        )
        .await;
    }
}

/// Reads one whole packet (at most `max` payload bytes) travelling in `dir`; returns it with
/// its sequence id.
async fn read(
    from: &mut (impl AsyncRead + Unpin),
    max: usize,
    dir: Direction,
) -> Result<(Vec<u8>, u8), RelayError> {
    let packet = read_bounded(from, max)
        .await
        .map_err(|e| RelayError::from_read(e, dir))?;
    let seq = packet[3];
    Ok((packet, seq))
}

#[cfg(test)]
mod tests {
    use std::sync::{LazyLock, Mutex};

    use sha1::Sha1;
    use tokio::io::{AsyncReadExt, DuplexStream, duplex};

    use super::*;
    use crate::protocol::Violation;
    use crate::protocol::auth::{AUTH_SWITCH, FAST_AUTH_SUCCESS, PERFORM_FULL_AUTH};

    /// One key for these tests, serving as the donor's and as the relay's.
    static KEY: LazyLock<RsaKey> = LazyLock::new(|| RsaKey::generate().expect("a key"));

    const NONCE: [u8; NONCE_LEN] = *b"greeting-nonce-01234";
    const PASSWORD: &[u8] = b"clone-relay-drill\0";
    const OK: &[u8] = &[0, 0, 0, 2, 0, 0, 0];

    /// Every packet shown to the observer, whole.
    #[derive(Debug, Default)]
    struct Seen(Mutex<Vec<(Direction, Vec<u8>)>>);

    impl Observer for Seen {
        fn observe(&self, dir: Direction, bytes: &[u8]) -> Result<(), Violation> {
            self.0.lock().unwrap().push((dir, bytes.to_vec()));
            Ok(())
        }
    }

    impl Seen {
        /// (direction, sequence id, first payload byte) of each packet seen.
        fn summary(&self) -> Vec<(Direction, u8, u8)> {
            let seen = self.0.lock().unwrap();
            seen.iter().map(|(d, p)| (*d, p[3], p[4])).collect()
        }
    }

    fn exchange(recipient_tls: bool, donor_tls: bool, after_login: (u8, u8)) -> Exchange<'static> {
        let (mut recipient_seq, mut donor_seq) = (SeqCounter::new(0), SeqCounter::new(0));
        recipient_seq.received(after_login.0);
        donor_seq.received(after_login.1);
        Exchange {
            recipient_tls,
            donor_tls,
            nonce: Some(NONCE),
            rsa_key: Some(&KEY),
            donor_key: None,
            max_packet: 64 * 1024,
            recipient_seq,
            donor_seq,
        }
    }

    async fn expect(s: &mut DuplexStream, seq: u8) -> Vec<u8> {
        let (packet, got) = read(s, 1 << 20, Direction::Upstream).await.unwrap();
        assert_eq!(got, seq, "sequence id of {:02x?}", &packet[HEADER_LEN..]);
        packet[HEADER_LEN..].to_vec()
    }

    async fn send(s: &mut DuplexStream, seq: u8, payload: &[u8]) {
        s.write_all(&frame(seq, payload)).await.unwrap();
    }

    fn more_data(data: &[u8]) -> Vec<u8> {
        let mut payload = vec![AUTH_MORE_DATA];
        payload.extend_from_slice(data);
        payload
    }

    /// Runs the exchange between a recipient and a donor script; returns its outcome.
    async fn run<R, D>(ex: Exchange<'static>, seen: &Seen, recipient: R, donor: D) -> FullAuth
    where
        R: AsyncFnOnce(&mut DuplexStream),
        D: AsyncFnOnce(&mut DuplexStream),
    {
        let (mut r_relay, mut r_peer) = duplex(1 << 16);
        let (mut d_relay, mut d_peer) = duplex(1 << 16);
        let relay = carry(&mut r_relay, &mut d_relay, seen, ex);
        let (outcome, (), ()) = tokio::join!(relay, recipient(&mut r_peer), donor(&mut d_peer));
        outcome.unwrap()
    }

    #[tokio::test]
    async fn tls_recipient_plain_donor_the_password_crosses_encrypted() {
        let seen = Seen::default();
        // The recipient's login went as 2 (after its SSLRequest), the donor's as 1.
        let outcome = run(
            exchange(true, false, (2, 1)),
            &seen,
            async |r| {
                assert_eq!(expect(r, 3).await, [AUTH_MORE_DATA, PERFORM_FULL_AUTH]);
                send(r, 4, PASSWORD).await;
                assert_eq!(expect(r, 5).await, OK);
            },
            async |d| {
                send(d, 2, &[AUTH_MORE_DATA, PERFORM_FULL_AUTH]).await;
                assert_eq!(expect(d, 3).await, [REQUEST_PUBLIC_KEY]);
                send(d, 4, &more_data(KEY.public_pem().as_bytes())).await;
                let encrypted = expect(d, 5).await;
                assert_eq!(encrypted.len(), 256);
                assert!(!encrypted.windows(5).any(|w| w == b"clone"));
                // What mysqld does with it (sha2_password.cc).
                let mut plain = KEY.private().oaep_decrypt::<Sha1>(&encrypted).unwrap();
                password::xor_nonce(&mut plain, &NONCE);
                assert_eq!(plain, PASSWORD);
                send(d, 6, OK).await;
            },
        )
        .await;
        assert_eq!(outcome, FullAuth::EncryptedForDonor);
        use Direction::{Downstream as D, Upstream as U};
        // The decoder sees the recipient's conversation, with the recipient's sequence ids.
        assert_eq!(seen.summary(), [(D, 3, 1), (U, 4, b'c'), (D, 5, 0)]);
    }

    /// The donor's key as `--server-public-key` pins it.
    static PINNED: LazyLock<rsa::PublicKey> =
        LazyLock::new(|| password::public_key_from_pem(KEY.public_pem().as_bytes()).unwrap());
    /// A key the donor does not have: what a proxy on the donor leg would hand out.
    static FOREIGN: LazyLock<RsaKey> = LazyLock::new(|| RsaKey::generate().expect("a key"));

    #[tokio::test]
    async fn the_pinned_key_is_used_when_the_donor_sends_it_and_another_is_refused() {
        let seen = Seen::default();
        let mut ex = exchange(true, false, (2, 1));
        ex.donor_key = Some(&PINNED);
        let outcome = run(
            ex,
            &seen,
            async |r| {
                assert_eq!(expect(r, 3).await, [AUTH_MORE_DATA, PERFORM_FULL_AUTH]);
                send(r, 4, PASSWORD).await;
                assert_eq!(expect(r, 5).await, OK);
            },
            async |d| {
                send(d, 2, &[AUTH_MORE_DATA, PERFORM_FULL_AUTH]).await;
                assert_eq!(expect(d, 3).await, [REQUEST_PUBLIC_KEY]);
                send(d, 4, &more_data(KEY.public_pem().as_bytes())).await;
                assert_eq!(expect(d, 5).await.len(), 256);
                send(d, 6, OK).await;
            },
        )
        .await;
        assert_eq!(outcome, FullAuth::EncryptedForDonor);

        // Another key: refused; the donor gets an empty password and nothing of the real one.
        let (mut r_relay, mut r_peer) = duplex(1 << 16);
        let (mut d_relay, mut d_peer) = duplex(1 << 16);
        let mut ex = exchange(true, false, (2, 1));
        ex.donor_key = Some(&PINNED);
        let relay = async {
            let outcome = carry(&mut r_relay, &mut d_relay, &seen, ex).await;
            drop(d_relay);
            outcome
        };
        let recipient = async {
            assert_eq!(expect(&mut r_peer, 3).await, [1, PERFORM_FULL_AUTH]);
            send(&mut r_peer, 4, PASSWORD).await;
            let err = expect(&mut r_peer, 5).await;
            assert_eq!(err[0], 0xff);
            assert!(String::from_utf8_lossy(&err).contains("--server-public-key"));
        };
        let donor = async {
            send(&mut d_peer, 2, &[1, PERFORM_FULL_AUTH]).await;
            assert_eq!(expect(&mut d_peer, 3).await, [REQUEST_PUBLIC_KEY]);
            send(&mut d_peer, 4, &more_data(FOREIGN.public_pem().as_bytes())).await;
            assert_eq!(expect(&mut d_peer, 5).await, [0], "an empty password");
            send(
                &mut d_peer,
                6,
                &err_packet(6, 1045, b"28000", "Access denied")[4..],
            )
            .await;
            let mut rest = Vec::new();
            d_peer.read_to_end(&mut rest).await.unwrap();
            assert!(rest.is_empty(), "more reached the donor: {rest:?}");
        };
        let (outcome, (), ()) = tokio::join!(relay, recipient, donor);
        assert!(
            matches!(&outcome, Err(RelayError::Auth(r)) if r.contains("--server-public-key")),
            "{outcome:?}"
        );
    }

    #[tokio::test]
    async fn plain_recipient_tls_donor_the_relay_serves_its_key_and_decrypts() {
        let seen = Seen::default();
        // The recipient's login went as 1, the donor's as 2 (after the relay's SSLRequest).
        let outcome = run(
            exchange(false, true, (1, 2)),
            &seen,
            async |r| {
                assert_eq!(expect(r, 2).await, [AUTH_MORE_DATA, PERFORM_FULL_AUTH]);
                send(r, 3, &[REQUEST_PUBLIC_KEY]).await;
                let key = expect(r, 4).await;
                assert_eq!(key[0], AUTH_MORE_DATA);
                let key = password::public_key_from_pem(&key[1..]).unwrap();
                let encrypted = password::encrypt(PASSWORD, &NONCE, &key).unwrap();
                send(r, 5, &encrypted).await;
                assert_eq!(expect(r, 6).await, OK);
            },
            async |d| {
                send(d, 3, &[AUTH_MORE_DATA, PERFORM_FULL_AUTH]).await;
                assert_eq!(expect(d, 4).await, PASSWORD, "in clear inside TLS");
                send(d, 5, OK).await;
            },
        )
        .await;
        assert_eq!(outcome, FullAuth::DecryptedForDonor);
        use Direction::{Downstream as D, Upstream as U};
        let ids: Vec<(Direction, u8)> = seen.summary().iter().map(|&(d, s, _)| (d, s)).collect();
        assert_eq!(ids, [(D, 2), (U, 3), (D, 4), (U, 5), (D, 6)]);
    }

    #[tokio::test]
    async fn an_auth_switch_brings_the_nonce_the_password_is_masked_with() {
        let new_nonce = *b"switched-nonce-56789";
        let mut switch = vec![AUTH_SWITCH];
        switch.extend_from_slice(b"caching_sha2_password\0");
        switch.extend_from_slice(&new_nonce);
        switch.push(0);
        let seen = Seen::default();
        run(
            exchange(true, false, (2, 1)),
            &seen,
            async |r| {
                assert_eq!(expect(r, 3).await[0], AUTH_SWITCH);
                send(r, 4, &[7; 32]).await;
                assert_eq!(expect(r, 5).await, [AUTH_MORE_DATA, PERFORM_FULL_AUTH]);
                send(r, 6, PASSWORD).await;
                assert_eq!(expect(r, 7).await, OK);
            },
            async |d| {
                send(d, 2, &switch).await;
                assert_eq!(expect(d, 3).await, [7; 32], "the scramble passes as it is");
                send(d, 4, &[AUTH_MORE_DATA, PERFORM_FULL_AUTH]).await;
                assert_eq!(expect(d, 5).await, [REQUEST_PUBLIC_KEY]);
                send(d, 6, &more_data(KEY.public_pem().as_bytes())).await;
                let encrypted = expect(d, 7).await;
                let mut plain = KEY.private().oaep_decrypt::<Sha1>(&encrypted).unwrap();
                password::xor_nonce(&mut plain, &new_nonce);
                assert_eq!(plain, PASSWORD, "masked with the switch's nonce");
                send(d, 8, OK).await;
            },
        )
        .await;
    }

    #[tokio::test]
    async fn legs_alike_pass_everything_with_the_offset_of_the_ssl_request() {
        // A plain recipient (login 1) and a plain donor (login 1): full auth passes as it is.
        let seen = Seen::default();
        let outcome = run(
            exchange(false, false, (1, 1)),
            &seen,
            async |r| {
                assert_eq!(expect(r, 2).await, [AUTH_MORE_DATA, PERFORM_FULL_AUTH]);
                send(r, 3, &[REQUEST_PUBLIC_KEY]).await;
                assert_eq!(expect(r, 4).await, more_data(b"donor key"));
                send(r, 5, &[9; 256]).await;
                assert_eq!(expect(r, 6).await, OK);
            },
            async |d| {
                send(d, 2, &[AUTH_MORE_DATA, PERFORM_FULL_AUTH]).await;
                assert_eq!(expect(d, 3).await, [REQUEST_PUBLIC_KEY]);
                send(d, 4, &more_data(b"donor key")).await;
                assert_eq!(expect(d, 5).await, [9; 256]);
                send(d, 6, OK).await;
            },
        )
        .await;
        assert_eq!(outcome, FullAuth::Forwarded);
        // Fast auth with TLS on the recipient leg only: ids shift by the SSLRequest round.
        let seen = Seen::default();
        let outcome = run(
            exchange(true, false, (2, 1)),
            &seen,
            async |r| {
                assert_eq!(expect(r, 3).await, [AUTH_MORE_DATA, FAST_AUTH_SUCCESS]);
                assert_eq!(expect(r, 4).await, OK);
            },
            async |d| {
                send(d, 2, &[AUTH_MORE_DATA, FAST_AUTH_SUCCESS]).await;
                send(d, 3, OK).await;
            },
        )
        .await;
        assert_eq!(outcome, FullAuth::None);
    }

    #[tokio::test]
    async fn an_err_ends_the_exchange_and_a_foreign_ciphertext_is_refused() {
        let seen = Seen::default();
        let denied = err_packet(2, 1045, b"28000", "Access denied");
        run(
            exchange(true, false, (2, 1)),
            &seen,
            async |r| {
                assert_eq!(expect(r, 3).await[0], 0xff);
            },
            async |d| {
                d.write_all(&denied).await.unwrap();
            },
        )
        .await;

        // A plain recipient that encrypted under a key of its own: the relay cannot read it.
        let (mut r_relay, mut r_peer) = duplex(1 << 16);
        let (mut d_relay, mut d_peer) = duplex(1 << 16);
        let ex = exchange(false, true, (1, 2));
        let relay = carry(&mut r_relay, &mut d_relay, &seen, ex);
        let recipient = async {
            assert_eq!(expect(&mut r_peer, 2).await, [1, PERFORM_FULL_AUTH]);
            send(&mut r_peer, 3, &[5; 256]).await;
            let err = expect(&mut r_peer, 4).await;
            assert_eq!(err[0], 0xff);
            assert!(String::from_utf8_lossy(&err).contains("cannot be decrypted"));
        };
        let donor = async {
            send(&mut d_peer, 3, &[1, PERFORM_FULL_AUTH]).await;
        };
        let (outcome, (), ()) = tokio::join!(relay, recipient, donor);
        assert!(
            matches!(&outcome, Err(RelayError::Auth(r)) if r.contains("cannot be decrypted")),
            "{outcome:?}"
        );
        let mut rest = Vec::new();
        drop(d_relay);
        d_peer.read_to_end(&mut rest).await.unwrap();
        assert!(rest.is_empty(), "nothing reached the donor: {rest:?}");
    }
}
