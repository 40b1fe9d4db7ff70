//! clone-relay: an inline relay for MySQL CLONE traffic.
//!
//! The recipient's CLONE client connects to the relay as if it were the donor; the relay dials the
//! donor and carries every byte between them.
//!
//! # Layout
//! - [`config`]: the relay's settings and their validation.
//! - [`server`]: binding the listener and the accept loop, [`run`].
//! - [`connection`]: one downstream (recipient) connection: dial upstream, then copy.
//! - [`upstream`]: dialing the donor, and the start-up probe of its greeting.
//! - [`socket`]: socket tuning through socket2 (TCP_NODELAY, buffers, keepalive).
//! - [`io`]: I/O decorators for the copy path (byte metering).
//! - [`copy`]: the bidirectional copy, generic over `AsyncRead + AsyncWrite`.
//! - [`protocol`]: MySQL classic protocol framing.
//! - [`error`]: the library's error type, saying which side failed.

pub mod config;
pub mod connection;
pub mod copy;
pub mod error;
pub mod io;
pub mod protocol;
pub mod server;
pub mod socket;
pub mod upstream;

pub use config::Config;
pub use error::RelayError;
pub use server::{bind, run};
