//! The relay's error type: each variant says which side failed and how.

use std::io;
use std::time::Duration;

use crate::protocol::packet::ReadError;
use crate::protocol::{Direction, Violation, ViolationKind};

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

    /// A peer broke the protocol; the connection was closed on both legs.
    #[error("protocol breach: {0}")]
    Protocol(Violation),

    /// The recipient's TLS handshake with the relay failed.
    #[error("recipient TLS: {0}")]
    DownstreamTls(String),

    /// The relay's TLS handshake with the donor failed (its certificate, its protocol).
    #[error("TLS to upstream {addr} failed: {reason}")]
    UpstreamTls { addr: String, reason: String },

    /// The TLS modes could not be met; the recipient was sent this reason in an ERR packet.
    #[error("refused: {0}")]
    TlsRefused(String),

    /// The relay could not carry the auth exchange between legs of different kinds (a donor's
    /// public key it cannot read, a password it cannot decrypt); the recipient was sent this
    /// reason in an ERR packet.
    #[error("auth exchange: {0}")]
    Auth(String),

    /// The client's address holds its most connections not yet logged in; the client was sent
    /// this reason in place of a greeting, and no donor was dialed.
    #[error("refused: {0}")]
    TooManyPending(String),

    /// The recipient closed its connection before logging in (a TCP health check does that).
    #[error("the recipient left before logging in")]
    ClientLeft,

    /// The recipient did not finish logging in within the handshake timeout.
    #[error("no login within {}ms", .0.as_millis())]
    HandshakeTimeout(Duration),

    /// The donor went silent on a connection it owes data.
    #[error("donor silent for {}ms on a transfer: link presumed dead", silence.as_millis())]
    Stalled { silence: Duration },

    /// On the donor side of a pair: the recipient's connection closed (the recipient-side relay
    /// ended the stream's direction) and the donor did not close its own within the grace; its
    /// leg is reset so that the donor lets go of the clone.
    #[error(
        "the recipient's connection closed (reported by the recipient-side relay) and the donor \
         kept on for {}ms: resetting the donor's leg",
        .0.as_millis()
    )]
    RecipientGone(Duration),

    /// The connection's clone session was reset on request.
    #[error("clone session reset on request")]
    Aborted,

    /// The relay is shutting down and the grace period for connections in flight has passed.
    #[error("relay shutting down")]
    Shutdown,
}

impl RelayError {
    /// A failed read of one packet travelling in `dir` before the copy takes over: the leg it
    /// was read from, or an oversized packet as a violation of the peer that sent it.
    pub fn from_read(e: ReadError, dir: Direction) -> Self {
        match (e, dir) {
            (ReadError::Io(e), Direction::Upstream) => RelayError::Downstream(e),
            (ReadError::Io(e), Direction::Downstream) => RelayError::Upstream(e),
            (ReadError::Oversize { payload_len, max }, from) => RelayError::Protocol(Violation {
                kind: ViolationKind::Oversize,
                from,
                detail: format!("{payload_len}-byte packet before auth (limit {max})"),
            }),
        }
    }

    /// A short name of the error's kind, for metrics.
    pub fn kind(&self) -> &'static str {
        match self {
            RelayError::Config { .. } => "config",
            RelayError::Listen { .. } => "listen",
            RelayError::UpstreamResolve { .. }
            | RelayError::UpstreamConnect { .. }
            | RelayError::UpstreamTimeout { .. } => "upstream_unreachable",
            RelayError::UpstreamNotMysql { .. } | RelayError::UpstreamRefused { .. } => {
                "upstream_refused"
            }
            RelayError::Downstream(_) if self.is_peer_reset() => "peer_reset",
            RelayError::Upstream(_) if self.is_peer_reset() => "peer_reset",
            RelayError::Downstream(_) => "downstream_error",
            RelayError::Upstream(_) => "upstream_error",
            RelayError::Protocol(v) => match v.kind {
                crate::protocol::ViolationKind::Oversize => "protocol_oversize",
                crate::protocol::ViolationKind::Malformed => "protocol_malformed",
                crate::protocol::ViolationKind::OutOfProtocol => "protocol_out_of_protocol",
                crate::protocol::ViolationKind::Compression => "protocol_compression",
            },
            RelayError::ClientLeft => "client_left",
            RelayError::TooManyPending(_) => "too_many_pending_logins",
            RelayError::DownstreamTls(_) => "tls_downstream",
            RelayError::UpstreamTls { .. } => "tls_upstream",
            RelayError::TlsRefused(_) => "tls_refused",
            RelayError::Auth(_) => "auth_exchange",
            RelayError::HandshakeTimeout(_) => "handshake_timeout",
            RelayError::Stalled { .. } => "stalled",
            RelayError::RecipientGone(_) => "recipient_gone",
            RelayError::Aborted => "aborted",
            RelayError::Shutdown => "shutdown",
        }
    }

    /// Whether the relay closed the connection for the peer's misbehaviour.
    pub fn is_rejection(&self) -> bool {
        matches!(
            self,
            RelayError::Protocol(_)
                | RelayError::HandshakeTimeout(_)
                | RelayError::DownstreamTls(_)
                | RelayError::UpstreamTls { .. }
                | RelayError::TlsRefused(_)
                | RelayError::Auth(_)
                | RelayError::TooManyPending(_)
        )
    }

    /// True when the error is a peer closing or resetting its socket: routine for a relay, logged
    /// at debug rather than warn.
    pub fn is_peer_reset(&self) -> bool {
        match self {
            RelayError::ClientLeft => true,
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
