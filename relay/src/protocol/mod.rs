//! MySQL classic protocol: what the relay needs to follow a clone, and nothing it would have to
//! rewrite.
//!
//! - [`packet`]: the 4-byte packet header, and a scanner that finds packet boundaries and heads
//!   without copying payloads.
//! - [`compressed`]: the compressed framing (7-byte headers, zlib bodies).
//! - [`handshake`]: the server greeting, the client's login request, OK and ERR packets.
//! - [`clone`]: the CLONE sub-protocol: commands, responses, locators, descriptors.
//! - [`decoder`]: one connection's conversation, both directions, as a stream of events.

pub mod clone;
pub mod compressed;
pub mod decoder;
pub mod handshake;
pub mod packet;

pub use packet::{HEADER_LEN, MAX_PAYLOAD_LEN, PacketHeader, PacketScanner, frame};

/// Bytes from hex, for tests over captured payloads.
#[cfg(test)]
pub(crate) fn unhex(s: &str) -> Vec<u8> {
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).expect("hex"))
        .collect()
}
