//! The relay's error type: each variant says which side failed and how.

use std::io;
use std::time::Duration;

/// Errors of the relay library.
#[derive(Debug, thiserror::Error)]
pub enum RelayError {
    /// A setting is out of range or malformed; `field` names the flag or config key.
    #[error("invalid {field}: {reason}")]
    Config { field: &'static str, reason: String },

    /// The listening socket could not be set up.
    #[error("cannot listen on {addr}: {source}")]
    Listen { addr: String, source: io::Error },

    /// The donor's address did not resolve.
    #[error("upstream {addr}: cannot resolve: {source}")]
    UpstreamResolve { addr: String, source: io::Error },

    /// The donor refused or dropped the TCP connection.
    #[error("upstream {addr} unreachable: {source}")]
    UpstreamConnect { addr: String, source: io::Error },

    /// The donor did not complete the TCP handshake or send its greeting in time.
    #[error("upstream {addr} did not answer within {}ms", timeout.as_millis())]
    UpstreamTimeout { addr: String, timeout: Duration },

    /// The donor answered, but not with a MySQL greeting.
    #[error("upstream {addr} is not a MySQL server: {reason}")]
    UpstreamNotMysql { addr: String, reason: String },

    /// The donor answered the connection with an error packet instead of a greeting.
    #[error("upstream {addr} refused the connection: error {code}: {message}")]
    UpstreamRefused {
        addr: String,
        code: u16,
        message: String,
    },

    /// Reading from or writing to the recipient failed.
    #[error("downstream i/o: {0}")]
    Downstream(#[source] io::Error),

    /// Reading from or writing to the donor failed.
    #[error("upstream i/o: {0}")]
    Upstream(#[source] io::Error),

    /// The relay is shutting down and the grace period for connections in flight has passed.
    #[error("relay shutting down")]
    Shutdown,
}

impl RelayError {
    /// True when the error is a peer closing or resetting its socket: routine for a relay, logged
    /// at debug rather than warn.
    pub fn is_peer_reset(&self) -> bool {
        match self {
            RelayError::Downstream(e) | RelayError::Upstream(e) => matches!(
                e.kind(),
                io::ErrorKind::ConnectionReset
                    | io::ErrorKind::BrokenPipe
                    | io::ErrorKind::ConnectionAborted
                    | io::ErrorKind::UnexpectedEof
            ),
            _ => false,
        }
    }
}
