//! Helpers shared by the relay's integration tests.

#[allow(unused_imports)]
pub use clone_relay::protocol::frame as packet;

/// The greeting of a MySQL 9.7.4 donor (from relay/tests/captures), connection id 100.
#[allow(dead_code)]
pub const GREETING: &str = "0a392e372e342d320064000000431e324a347e494700ffffff0200ffdf15000000000000000000006d2234376a3a68386b2375410063616368696e67";

/// Bytes from hex.
pub fn unhex(s: &str) -> Vec<u8> {
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).expect("hex"))
        .collect()
}
