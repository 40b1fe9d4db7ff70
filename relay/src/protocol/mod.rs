//! MySQL classic protocol: just what the relay needs to read and write.
//!
//! - [`packet`]: the 4-byte packet header and a zero-copy scanner of packet boundaries.
//! - [`handshake`]: the server greeting and ERR packets.

pub mod handshake;
pub mod packet;

pub use packet::{HEADER_LEN, MAX_PAYLOAD_LEN, PacketHeader, PacketScanner};
