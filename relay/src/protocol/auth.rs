//! The packets of the auth exchange that the relay reads or makes between the login request and
//! the server's OK or ERR: the nonce (scramble) the server hands out, auth-switch requests,
//! caching_sha2_password's more-data packets, and the edits the relay makes on the way (sequence
//! ids, CLIENT_SSL in a login request).

use super::HEADER_LEN;
use super::handshake::{CLIENT_SSL, ERR_MARKER, OK_MARKER, PROTOCOL_V10};

/// Length of the nonce a server hands out for caching_sha2_password (and native) auth.
pub const NONCE_LEN: usize = 20;
/// First payload byte of an auth-switch request.
pub const AUTH_SWITCH: u8 = 0xfe;
/// First payload byte of an AuthMoreData packet (the server's plugin data during auth).
pub const AUTH_MORE_DATA: u8 = 0x01;
/// caching_sha2_password: the client asks for the server's RSA public key.
pub const REQUEST_PUBLIC_KEY: u8 = 0x02;
/// caching_sha2_password: the scramble matched the server's cache; an OK follows.
pub const FAST_AUTH_SUCCESS: u8 = 0x03;
/// caching_sha2_password: no cache entry; the client must send its password.
pub const PERFORM_FULL_AUTH: u8 = 0x04;

/// A server's packet during the auth exchange.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ServerAuth {
    /// Auth is done: the command phase begins.
    Ok,
    /// Auth failed; the server closes the connection.
    Err,
    /// The server switches to `plugin` and hands out a new nonce (when the plugin sends one of
    /// [`NONCE_LEN`] bytes or more).
    Switch {
        plugin: String,
        nonce: Option<[u8; NONCE_LEN]>,
    },
    /// `0x01 0x03`: fast auth succeeded; the server sends OK next.
    FastAuthSuccess,
    /// `0x01 0x04`: the server wants the password itself.
    PerformFullAuth,
    /// Other plugin data (an RSA public key, say).
    MoreData,
    /// Not an auth packet.
    Unknown,
}

/// Reads what a server's auth packet is.
pub fn classify_server_auth(payload: &[u8]) -> ServerAuth {
    match payload {
        [OK_MARKER, ..] => ServerAuth::Ok,
        [ERR_MARKER, ..] => ServerAuth::Err,
        [AUTH_SWITCH, rest @ ..] => {
            let nul = rest.iter().position(|&b| b == 0);
            let plugin = String::from_utf8_lossy(nul.map_or(rest, |n| &rest[..n])).into_owned();
            let nonce = nul
                .and_then(|nul| rest.get(nul + 1..nul + 1 + NONCE_LEN))
                .map(|n| n.try_into().expect("NONCE_LEN bytes"));
            ServerAuth::Switch { plugin, nonce }
        }
        [AUTH_MORE_DATA, FAST_AUTH_SUCCESS] => ServerAuth::FastAuthSuccess,
        [AUTH_MORE_DATA, PERFORM_FULL_AUTH] => ServerAuth::PerformFullAuth,
        [AUTH_MORE_DATA, ..] => ServerAuth::MoreData,
        _ => ServerAuth::Unknown,
    }
}

/// The nonce in a HandshakeV10 greeting payload: the 8 bytes of auth-plugin-data part 1 and the
/// first 12 of part 2.
pub fn greeting_nonce(payload: &[u8]) -> Option<[u8; NONCE_LEN]> {
    if payload.first() != Some(&PROTOCOL_V10) {
        return None;
    }
    let nul = payload[1..].iter().position(|&b| b == 0)?;
    // After the version's NUL: the connection id (4), part 1 (8), a filler (1), the low
    // capability bytes (2), the character set (1), the status (2), the high capability bytes
    // (2), the auth data length (1), reserved (10), then part 2.
    let part1 = 1 + nul + 1 + 4;
    let part2 = part1 + 8 + 1 + 2 + 1 + 2 + 2 + 1 + 10;
    let mut nonce = [0u8; NONCE_LEN];
    nonce[..8].copy_from_slice(payload.get(part1..part1 + 8)?);
    nonce[8..].copy_from_slice(payload.get(part2..part2 + 12)?);
    Some(nonce)
}

/// Writes `seq` into a whole packet's header.
pub fn set_seq(packet: &mut [u8], seq: u8) {
    if packet.len() >= HEADER_LEN {
        packet[3] = seq;
    }
}

/// Sets or clears CLIENT_SSL in a login request payload (HandshakeResponse41 or SSLRequest),
/// so that it says what the leg it travels on does.
pub fn set_login_ssl(payload: &mut [u8], tls: bool) {
    if let Some(caps) = payload.get_mut(..4) {
        let mut flags = u32::from_le_bytes(caps.try_into().expect("4 bytes"));
        if tls {
            flags |= CLIENT_SSL;
        } else {
            flags &= !CLIENT_SSL;
        }
        caps.copy_from_slice(&flags.to_le_bytes());
    }
}

/// The next sequence id of one leg: each packet sent or received on the leg takes one. Packets
/// the relay adds or takes out on one leg only (an SSLRequest, a public-key round) shift the
/// two legs apart, so each keeps its own.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SeqCounter(u8);

impl SeqCounter {
    /// A leg whose next packet carries `next`.
    pub fn new(next: u8) -> Self {
        SeqCounter(next)
    }

    /// The sequence id for a packet the relay sends on this leg now.
    pub fn take(&mut self) -> u8 {
        let seq = self.0;
        self.0 = self.0.wrapping_add(1);
        seq
    }

    /// A packet with `seq` arrived on this leg: the next one follows it.
    pub fn received(&mut self, seq: u8) {
        self.0 = seq.wrapping_add(1);
    }

    pub fn next(self) -> u8 {
        self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::GREETING_9_7_4;
    use crate::protocol::unhex;

    /// The greeting of a MySQL 9.7.4 donor, from the captures in `relay/tests/captures`.

    #[test]
    fn the_nonce_of_a_real_greeting() {
        let nonce = greeting_nonce(&unhex(GREETING_9_7_4)).unwrap();
        // Part 1: 431e324a347e4947; part 2 (12 bytes before its NUL): 6d2234376a3a68386b237541.
        assert_eq!(
            nonce.to_vec(),
            unhex("431e324a347e49476d2234376a3a68386b237541")
        );
        assert_eq!(greeting_nonce(&[0xff, 1, 2]), None);
        assert_eq!(greeting_nonce(&unhex(GREETING_9_7_4)[..40]), None);
    }

    #[test]
    fn server_auth_packets_are_told_apart() {
        assert_eq!(classify_server_auth(&[0, 0, 0, 2, 0]), ServerAuth::Ok);
        assert_eq!(classify_server_auth(&[0xff, 0x15, 0x04]), ServerAuth::Err);
        assert_eq!(classify_server_auth(&[1, 3]), ServerAuth::FastAuthSuccess);
        assert_eq!(classify_server_auth(&[1, 4]), ServerAuth::PerformFullAuth);
        assert_eq!(
            classify_server_auth(b"\x01-----BEGIN PUBLIC KEY-----"),
            ServerAuth::MoreData
        );
        assert_eq!(classify_server_auth(&[0x42]), ServerAuth::Unknown);
        let mut switch = vec![AUTH_SWITCH];
        switch.extend_from_slice(b"caching_sha2_password\0");
        switch.extend((1..=20).collect::<Vec<u8>>());
        switch.push(0);
        assert_eq!(
            classify_server_auth(&switch),
            ServerAuth::Switch {
                plugin: "caching_sha2_password".into(),
                nonce: Some(core::array::from_fn(|i| i as u8 + 1))
            }
        );
        assert_eq!(
            classify_server_auth(b"\xfemysql_clear_password\0"),
            ServerAuth::Switch {
                plugin: "mysql_clear_password".into(),
                nonce: None
            }
        );
    }

    #[test]
    fn client_ssl_is_set_and_cleared_in_a_login_request() {
        let head = unhex(
            "a5a2b81900000004ff0000000000000000000000000000000000000000000000646f6e6f725f636c6f6e6500",
        );
        let mut login = head.clone();
        set_login_ssl(&mut login, true);
        let caps = |p: &[u8]| u32::from_le_bytes(p[..4].try_into().unwrap());
        assert_eq!(caps(&login), caps(&head) | CLIENT_SSL);
        set_login_ssl(&mut login, false);
        assert_eq!(caps(&login) & CLIENT_SSL, 0);
        assert_eq!(login[4..], head[4..], "nothing else changes");
    }

    #[test]
    fn each_leg_counts_its_own_sequence_ids() {
        // A TLS recipient leg: greeting 0, SSLRequest 1, login 2; a plain donor leg: login 1.
        let mut recipient = SeqCounter::new(0);
        let mut donor = SeqCounter::new(0);
        recipient.received(2);
        donor.take();
        assert_eq!(donor.take(), 1, "the login goes to the donor as 1");
        donor.received(2); // the donor's 0x01 0x04
        assert_eq!(recipient.take(), 3, "and reaches the recipient as 3");
        recipient.received(4); // the password
        assert_eq!(donor.take(), 3, "the relay's key request");
        donor.received(4); // the donor's key
        assert_eq!(donor.take(), 5, "the encrypted password");
        donor.received(6); // OK
        assert_eq!(recipient.take(), 5, "OK to the recipient");
        let mut wraps = SeqCounter::new(255);
        assert_eq!(wraps.take(), 255);
        assert_eq!(wraps.next(), 0);
        let mut packet = vec![1, 0, 0, 9, 0];
        set_seq(&mut packet, 7);
        assert_eq!(packet, [1, 0, 0, 7, 0]);
    }
}
