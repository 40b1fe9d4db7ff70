//! clone-relay: an inline relay for MySQL CLONE traffic.
//!
//! The recipient's CLONE client connects to the relay as if it were the donor; the relay dials the
//! donor and carries every byte between them.
//!
//! # Layout
//! - [`config`]: the relay's settings (flags, environment, TOML file) and their validation.
//! - [`units`]: durations and sizes as people write them (`30s`, `256KiB`).
//! - [`server`]: binding the listener, the shared [`Relay`] state and its accept loop, [`run`].
//! - [`connection`]: one downstream (recipient) connection: dial upstream, then copy through
//!   the decoder, under a login deadline.
//! - [`session`]: clone sessions: connections grouped by clone, with state, bytes, progress.
//! - [`metrics`]: relay-wide counters in Prometheus text format.
//! - [`admin`]: the admin listener on axum (`/metrics`, `/sessions`, `/healthz`, `/readyz`,
//!   resets behind a bearer token).
//! - [`health`]: the outcome of the latest dials of each donor, for readiness.
//! - [`upstream`]: dialing the donor, and the start-up probe of its greeting.
//! - [`socket`]: socket tuning through socket2 (TCP_NODELAY, buffers, keepalive).
//! - [`io`]: I/O decorators for the copy path (byte metering, protocol observation).
//! - [`copy`]: the bidirectional copy, generic over `AsyncRead + AsyncWrite`.
//! - [`protocol`]: the MySQL classic protocol and CLONE's sub-protocol, decoded as they pass.
//! - [`error`]: the library's error type, saying which side failed.

pub mod admin;
pub mod config;
pub mod connection;
pub mod copy;
pub mod error;
pub mod health;
pub mod io;
pub mod metrics;
pub mod protocol;
pub mod server;
pub mod session;
pub mod socket;
pub mod units;
pub mod upstream;

pub use config::Config;
pub use error::RelayError;
pub use server::{Relay, bind, run};
