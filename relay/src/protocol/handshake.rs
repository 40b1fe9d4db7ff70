//! The server greeting (Protocol::HandshakeV10) and ERR packets.

/// First payload byte of a HandshakeV10 greeting.
pub const PROTOCOL_V10: u8 = 10;
/// First payload byte of an ERR packet.
pub const ERR_MARKER: u8 = 0xff;
/// First payload byte of an OK packet.
pub const OK_MARKER: u8 = 0x00;

/// Capability flags the relay looks at.
pub const CLIENT_LONG_PASSWORD: u32 = 0x1;
pub const CLIENT_COMPRESS: u32 = 0x20;
pub const CLIENT_PROTOCOL_41: u32 = 0x200;
pub const CLIENT_SSL: u32 = 0x800;
pub const CLIENT_CONNECT_WITH_DB: u32 = 0x8;
pub const CLIENT_SECURE_CONNECTION: u32 = 0x8000;
pub const CLIENT_PLUGIN_AUTH: u32 = 0x8_0000;
pub const CLIENT_PLUGIN_AUTH_LENENC_CLIENT_DATA: u32 = 0x20_0000;
pub const CLIENT_ZSTD_COMPRESSION: u32 = 1 << 26;
/// utf8mb4_0900_ai_ci.
pub const CHARSET_UTF8MB4: u8 = 255;
/// An SSLRequest is the first 32 bytes of a login request, sent alone.
pub const SSL_REQUEST_LEN: usize = 32;

/// What the relay reads from a client's login request (HandshakeResponse41 or SSLRequest).
/// The auth data that follows the user name is never read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoginRequest {
    pub capabilities: u32,
    /// Empty for an SSLRequest.
    pub user: String,
    pub is_ssl_request: bool,
}

/// Parses a login request; an error says what is wrong with it.
pub fn parse_login_request(payload: &[u8], payload_len: usize) -> Result<LoginRequest, String> {
    let caps = payload
        .get(..4)
        .ok_or_else(|| format!("login request of {payload_len} bytes is too short"))?;
    let capabilities = u32::from_le_bytes(caps.try_into().expect("4 bytes"));
    if capabilities & CLIENT_PROTOCOL_41 == 0 {
        return Err("login request without protocol 4.1".into());
    }
    if payload_len < SSL_REQUEST_LEN {
        return Err(format!("login request of {payload_len} bytes is too short"));
    }
    let is_ssl_request = payload_len == SSL_REQUEST_LEN && capabilities & CLIENT_SSL != 0;
    let user = payload
        .get(SSL_REQUEST_LEN..)
        .and_then(|rest| rest.iter().position(|&b| b == 0).map(|n| &rest[..n]))
        .map(|u| String::from_utf8_lossy(u).into_owned())
        .unwrap_or_default();
    Ok(LoginRequest {
        capabilities,
        user,
        is_ssl_request,
    })
}

/// The auth plugin a login request (HandshakeResponse41) names, when it names one: after the
/// user name, the auth response (length-encoded, one-byte length or NUL-terminated as the
/// capabilities say) and the database, when present. The auth response itself is skipped.
pub fn login_auth_plugin(payload: &[u8]) -> Option<String> {
    let caps = u32::from_le_bytes(payload.get(..4)?.try_into().ok()?);
    if caps & CLIENT_PLUGIN_AUTH == 0 {
        return None;
    }
    let mut at = SSL_REQUEST_LEN;
    let nul = |from: usize| payload.get(from..)?.iter().position(|&b| b == 0);
    at += nul(at)? + 1;
    if caps & CLIENT_PLUGIN_AUTH_LENENC_CLIENT_DATA != 0 {
        let (len, used) = lenenc(payload.get(at..)?)?;
        at += used + usize::try_from(len).ok()?;
    } else if caps & CLIENT_SECURE_CONNECTION != 0 {
        at += 1 + usize::from(*payload.get(at)?);
    } else {
        at += nul(at)? + 1;
    }
    if caps & CLIENT_CONNECT_WITH_DB != 0 {
        at += nul(at)? + 1;
    }
    let rest = payload.get(at..)?;
    let name = rest
        .iter()
        .position(|&b| b == 0)
        .map_or(rest, |n| &rest[..n]);
    Some(String::from_utf8_lossy(name).into_owned())
}

/// A length-encoded integer at the start of `bytes`, and how many bytes it took.
fn lenenc(bytes: &[u8]) -> Option<(u64, usize)> {
    let wide = |n: usize| {
        let mut v = [0u8; 8];
        v[..n].copy_from_slice(bytes.get(1..1 + n)?);
        Some((u64::from_le_bytes(v), 1 + n))
    };
    match *bytes.first()? {
        b @ 0..=0xfa => Some((u64::from(b), 1)),
        0xfc => wide(2),
        0xfd => wide(3),
        0xfe => wide(8),
        _ => None,
    }
}

/// A login request (HandshakeResponse41) for `user` with an empty password and
/// caching_sha2_password named: what the relay sends a donor to end a connection it gives up
/// after the greeting with a refused login rather than a broken handshake.
pub fn login_request(user: &str) -> Vec<u8> {
    let capabilities =
        CLIENT_LONG_PASSWORD | CLIENT_PROTOCOL_41 | CLIENT_SECURE_CONNECTION | CLIENT_PLUGIN_AUTH;
    let mut login = Vec::with_capacity(96);
    login.extend_from_slice(&capabilities.to_le_bytes());
    login.extend_from_slice(&(16u32 << 20).to_le_bytes());
    login.push(CHARSET_UTF8MB4);
    login.extend_from_slice(&[0; 23]);
    login.extend_from_slice(user.as_bytes());
    login.push(0);
    // An empty auth response: no password.
    login.push(0);
    login.extend_from_slice(b"caching_sha2_password\0");
    login
}

/// What the relay reads from a donor's greeting.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Greeting {
    pub server_version: String,
    /// The donor's connection id; the recipient kills a clone by it, so it passes through as is.
    pub connection_id: u32,
    /// The server's capability flags.
    pub capabilities: u32,
}

/// A greeting payload, or the ERR the server sent instead of one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ServerHello {
    Greeting(Greeting),
    Error { code: u16, message: String },
}

/// Parses the first payload a server sends.
pub fn parse_server_hello(payload: &[u8]) -> Result<ServerHello, String> {
    match payload.first() {
        Some(&PROTOCOL_V10) => {
            let rest = &payload[1..];
            let nul = rest
                .iter()
                .position(|&b| b == 0)
                .ok_or("greeting without a server version")?;
            let id = rest
                .get(nul + 1..nul + 5)
                .ok_or("greeting too short for a connection id")?;
            // After the id: 8 bytes of auth data, a filler, the low capability bytes, the
            // character set, the status flags, the high capability bytes.
            let caps = rest
                .get(nul + 5..nul + 21)
                .ok_or("greeting too short for capabilities")?;
            let capabilities = u32::from(caps[9])
                | u32::from(caps[10]) << 8
                | u32::from(caps[14]) << 16
                | u32::from(caps[15]) << 24;
            Ok(ServerHello::Greeting(Greeting {
                server_version: String::from_utf8_lossy(&rest[..nul]).into_owned(),
                connection_id: u32::from_le_bytes(id.try_into().expect("4 bytes")),
                capabilities,
            }))
        }
        Some(&ERR_MARKER) => {
            let code = payload
                .get(1..3)
                .map(|c| u16::from_le_bytes([c[0], c[1]]))
                .ok_or("ERR packet too short")?;
            let mut message = &payload[3..];
            if message.first() == Some(&b'#') && message.len() >= 6 {
                message = &message[6..];
            }
            Ok(ServerHello::Error {
                code,
                message: String::from_utf8_lossy(message).into_owned(),
            })
        }
        Some(other) => Err(format!("unknown protocol version {other}")),
        None => Err("empty greeting".into()),
    }
}

/// Where the low two bytes of the capability flags sit in a HandshakeV10 greeting payload.
fn greeting_capability_offset(payload: &[u8]) -> Result<usize, String> {
    if payload.first() != Some(&PROTOCOL_V10) {
        return Err("not a HandshakeV10 greeting".into());
    }
    let nul = payload[1..]
        .iter()
        .position(|&b| b == 0)
        .ok_or("greeting without a server version")?;
    // After the version's NUL: the connection id (4), auth data (8), a filler (1).
    let offset = 1 + nul + 1 + 4 + 8 + 1;
    if payload.len() < offset + 2 {
        return Err("greeting too short for capabilities".into());
    }
    Ok(offset)
}

/// Sets or clears CLIENT_SSL in a greeting payload: whether the relay offers TLS to the
/// recipient. Nothing else of the greeting changes (its connection id passes through).
pub fn set_greeting_ssl(payload: &mut [u8], offer: bool) -> Result<(), String> {
    let at = greeting_capability_offset(payload)?;
    let mut low = u16::from_le_bytes([payload[at], payload[at + 1]]);
    if offer {
        low |= CLIENT_SSL as u16;
    } else {
        low &= !(CLIENT_SSL as u16);
    }
    payload[at..at + 2].copy_from_slice(&low.to_le_bytes());
    Ok(())
}

/// An ERR packet (with SQL state) as a whole physical packet.
pub fn err_packet(seq: u8, code: u16, sql_state: &[u8; 5], message: &str) -> Vec<u8> {
    let mut payload = Vec::with_capacity(9 + message.len());
    payload.push(ERR_MARKER);
    payload.extend_from_slice(&code.to_le_bytes());
    payload.push(b'#');
    payload.extend_from_slice(sql_state);
    payload.extend_from_slice(message.as_bytes());
    super::packet::frame(seq, &payload)
}

/// An ERR packet sent in place of a greeting (sequence id 0), without the SQL state, as mysqld
/// sends one: a client reads the SQL state only once protocol 4.1 is agreed, so before the
/// greeting it would take `#HY000` for the start of the message.
pub fn greeting_err_packet(code: u16, message: &str) -> Vec<u8> {
    let mut payload = Vec::with_capacity(3 + message.len());
    payload.push(ERR_MARKER);
    payload.extend_from_slice(&code.to_le_bytes());
    payload.extend_from_slice(message.as_bytes());
    super::packet::frame(0, &payload)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::GREETING_9_7_4;
    use crate::protocol::unhex;

    /// A login request with `caps`, the user `u`, the auth response `auth` and, when the
    /// capabilities say so, a database and a plugin name.
    fn login(caps: u32, auth: &[u8], plugin: &str) -> Vec<u8> {
        let mut p = (caps | CLIENT_PROTOCOL_41).to_le_bytes().to_vec();
        p.extend_from_slice(&[0, 0, 0, 1, 255]);
        p.extend_from_slice(&[0; 23]);
        p.extend_from_slice(b"u\0");
        // A short length is one byte both as a length-encoded integer and as a plain one.
        if caps & (CLIENT_PLUGIN_AUTH_LENENC_CLIENT_DATA | CLIENT_SECURE_CONNECTION) != 0 {
            p.push(auth.len() as u8);
            p.extend_from_slice(auth);
        } else {
            p.extend_from_slice(auth);
            p.push(0);
        }
        if caps & CLIENT_CONNECT_WITH_DB != 0 {
            p.extend_from_slice(b"db\0");
        }
        p.extend_from_slice(plugin.as_bytes());
        p.push(0);
        p
    }

    #[test]
    fn the_auth_plugin_of_a_login_request_is_read_past_its_auth_response() {
        let lenenc = CLIENT_PLUGIN_AUTH | CLIENT_PLUGIN_AUTH_LENENC_CLIENT_DATA;
        let secure = CLIENT_PLUGIN_AUTH | CLIENT_SECURE_CONNECTION | CLIENT_CONNECT_WITH_DB;
        // A scramble may hold NUL bytes; the lengths carry it over them.
        let scramble = [0u8, 1, 0, 2, 0, 3];
        for caps in [lenenc, secure, lenenc | CLIENT_CONNECT_WITH_DB] {
            let p = login(caps, &scramble, "mysql_clear_password");
            assert_eq!(
                login_auth_plugin(&p).as_deref(),
                Some("mysql_clear_password")
            );
        }
        let p = login(CLIENT_PLUGIN_AUTH, b"secret", "sha256_password");
        assert_eq!(login_auth_plugin(&p).as_deref(), Some("sha256_password"));
        assert_eq!(login_auth_plugin(&login(0, b"x", "")), None);
        // Cut short: no name rather than a wrong one.
        let p = login(lenenc, &[9; 40], "caching_sha2_password");
        assert_eq!(login_auth_plugin(&p[..50]), None);
    }

    #[test]
    fn the_ssl_offer_in_a_greeting_can_be_set_and_cleared() {
        let mut greeting = vec![PROTOCOL_V10];
        greeting.extend_from_slice(b"9.7.4\0");
        greeting.extend_from_slice(&42u32.to_le_bytes());
        greeting.extend_from_slice(&[7; 8]);
        greeting.push(0);
        greeting.extend_from_slice(&(CLIENT_PROTOCOL_41 as u16).to_le_bytes());
        greeting.extend_from_slice(&[255, 2, 0, 0, 0]);
        greeting.extend_from_slice(&[0; 13]);
        let parsed = |g: &[u8]| match parse_server_hello(g).unwrap() {
            ServerHello::Greeting(g) => g,
            other => panic!("{other:?}"),
        };
        set_greeting_ssl(&mut greeting, true).unwrap();
        let g = parsed(&greeting);
        assert_eq!(g.capabilities & CLIENT_SSL, CLIENT_SSL);
        assert_eq!(g.capabilities & CLIENT_PROTOCOL_41, CLIENT_PROTOCOL_41);
        assert_eq!(g.connection_id, 42);
        set_greeting_ssl(&mut greeting, false).unwrap();
        assert_eq!(parsed(&greeting).capabilities & CLIENT_SSL, 0);
        assert!(set_greeting_ssl(&mut [0xff, 1, 2], true).is_err());
    }

    /// The greeting of a MySQL 9.7.4 donor, from the captures in `relay/tests/captures` (connection id 100).

    #[test]
    fn reads_a_real_greeting() {
        let hello = parse_server_hello(&unhex(GREETING_9_7_4)).unwrap();
        assert_eq!(
            hello,
            ServerHello::Greeting(Greeting {
                server_version: "9.7.4-2".into(),
                connection_id: 100,
                capabilities: 0xdfff_ffff,
            })
        );
    }

    #[test]
    fn reads_a_real_login_request() {
        // Head of a 9.7.4 recipient's login request as donor_clone (compressed capture).
        let head = unhex(
            "a5a2b81900000004ff0000000000000000000000000000000000000000000000646f6e6f725f636c6f6e6500209b4eef",
        );
        let login = parse_login_request(&head, 181).unwrap();
        assert_eq!(login.user, "donor_clone");
        assert!(login.capabilities & CLIENT_COMPRESS != 0);
        assert!(!login.is_ssl_request);
        assert!(parse_login_request(&head[..2], 2).is_err());
        assert!(parse_login_request(&[0, 0, 0, 0], 40).is_err());
    }

    #[test]
    fn err_packet_round_trips() {
        let packet = err_packet(0, 1040, b"08004", "Too many connections");
        let header = crate::protocol::PacketHeader::parse(&packet).unwrap();
        assert_eq!(header.payload_len, packet.len() - 4);
        assert_eq!(
            parse_server_hello(&packet[4..]).unwrap(),
            ServerHello::Error {
                code: 1040,
                message: "Too many connections".into()
            }
        );
        let packet = greeting_err_packet(2003, "donor unreachable");
        assert_eq!(&packet[..7], b"\x14\x00\x00\x00\xff\xd3\x07");
        assert_eq!(
            &packet[7..],
            b"donor unreachable",
            "no SQL state before the message"
        );
    }

    #[test]
    fn refuses_what_is_not_a_greeting() {
        assert!(parse_server_hello(b"HTTP/1.1 400").is_err());
        assert!(parse_server_hello(b"").is_err());
        assert!(parse_server_hello(&[10, b'9']).is_err());
    }
}
