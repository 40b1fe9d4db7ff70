//! MySQL classic protocol: what the relay needs to follow a clone, and the few fields it
//! rewrites before auth ends (sequence ids, the login's TLS flag).
//!
//! - [`packet`]: the 4-byte packet header, and a scanner that finds packet boundaries and heads
//!   without copying payloads.
//! - [`compressed`]: the compressed framing (7-byte headers, zlib bodies).
//! - [`handshake`]: the server greeting, the client's login request, OK and ERR packets.
//! - [`auth`]: the auth exchange's packets (nonce, auth switch, caching_sha2_password's
//!   more-data packets) and the relay's edits on the way (sequence ids, CLIENT_SSL).
//! - [`clone`]: the CLONE sub-protocol: commands, responses, locators, descriptors.
//! - [`decoder`]: one connection's conversation, both directions, as a stream of events.
//!
//! The types every layer shares (direction, phase, violation, limits) live here, at the top.

pub mod auth;
pub mod clone;
pub mod compressed;
pub mod decoder;
pub mod handshake;
pub mod packet;

pub use packet::{HEADER_LEN, MAX_PAYLOAD_LEN, PacketHeader, PacketScanner, frame};

/// Which way bytes travel.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Direction {
    /// Recipient to donor (client to server).
    Upstream,
    /// Donor to recipient (server to client).
    Downstream,
}

/// Where a connection is in its conversation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Phase {
    Greeting,
    Login,
    Auth,
    Command,
    Clone,
    /// TLS (or a compression the relay cannot read) started: bytes pass undecoded.
    Opaque,
    /// A clone message the relay does not know (a newer server, a fork): bytes pass with their
    /// framing and limits still checked, but no longer read.
    Unfollowed,
    /// The server refused the login or the connection.
    Refused,
}

/// What kind of protocol breach closed a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ViolationKind {
    /// A packet longer than the phase allows.
    Oversize,
    /// A packet that cannot be read as what the phase expects.
    Malformed,
    /// A packet at a time or from a side the protocol does not allow.
    OutOfProtocol,
    /// Bad compressed framing or zlib data.
    Compression,
}

impl ViolationKind {
    pub fn as_str(self) -> &'static str {
        match self {
            ViolationKind::Oversize => "oversize",
            ViolationKind::Malformed => "malformed",
            ViolationKind::OutOfProtocol => "out_of_protocol",
            ViolationKind::Compression => "compression",
        }
    }
}

/// A protocol breach, with the side it came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Violation {
    pub kind: ViolationKind,
    pub from: Direction,
    pub detail: String,
}

impl std::fmt::Display for Violation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let side = match self.from {
            Direction::Upstream => "recipient",
            Direction::Downstream => "donor",
        };
        write!(f, "{} from the {side}: {}", self.kind.as_str(), self.detail)
    }
}

impl std::error::Error for Violation {}

/// Packet size limits.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Largest packet before auth completes (greeting, login, auth exchange).
    pub max_login_packet_bytes: usize,
    /// Largest logical packet afterwards (continuations included).
    pub max_packet_bytes: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_login_packet_bytes: 64 * 1024,
            max_packet_bytes: 64 * 1024 * 1024,
        }
    }
}

/// The greeting of a MySQL 9.7.4 donor (from the captures), for tests.
#[cfg(test)]
pub(crate) const GREETING_9_7_4: &str = "0a392e372e342d320064000000431e324a347e494700ffffff0200ffdf15000000000000000000006d2234376a3a68386b2375410063616368696e67";

/// Bytes from hex, for tests over captured payloads.
#[cfg(test)]
pub(crate) fn unhex(s: &str) -> Vec<u8> {
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).expect("hex"))
        .collect()
}
