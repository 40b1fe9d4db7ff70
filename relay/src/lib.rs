//! clone-relay: an inline relay for MySQL CLONE traffic.
//!
//! The recipient's CLONE client connects to the relay as if it were the donor; the relay dials the
//! donor and carries every byte between them.
//!
//! # Layout
//!
//! One connection flows accept -> admit -> dial -> handshake -> decorated copy -> close:
//!
//! - [`server`]: binding the listener and the accept loop ([`run`], [`Relay::serve`]).
//! - [`state`]: the shared [`Relay`] state: settings, session registry, counters.
//! - [`admission`]: one decision per connection: which donor, how long it may wait.
//! - [`connection`]: one recipient connection from admission to close.
//! - [`upstream`]: dialing the donor (with backoff for reconnects), the start-up probe.
//! - [`handshake`]: the stage between dial and copy that owns both legs until login.
//! - [`auth`]: the auth exchange carried packet by packet across the legs, bridging
//!   caching_sha2_password's full authentication when only one leg has TLS.
//! - [`password`]: caching_sha2_password's RSA password exchange (nonce mask, RSA-OAEP).
//! - [`leg`]: a leg after the handshake: plain TCP or TLS, one `AsyncRead + AsyncWrite`.
//! - [`copy`]: the bidirectional copy, generic over `AsyncRead + AsyncWrite`.
//! - [`io`]: I/O decorators on the copy path (byte metering, protocol observation).
//! - [`stall`]: noticing a connection the donor owes data fall silent (the floor by stage).
//! - [`path`]: probing a donor's path with a fresh connection when a flow falls silent.
//! - [`liveness`]: the verdict on a silent flow: lost (reset the session) or link down (keep it).
//! - [`limit`]: bandwidth caps per relay and per clone session, on the copy path.
//! - [`session`]: clone sessions: connections grouped by clone, with state, bytes, progress.
//! - [`protocol`]: the MySQL classic protocol and CLONE's sub-protocol, decoded as they pass.
//! - [`metrics`]: relay-wide counters in Prometheus text format.
//! - [`admin`]: the admin listener on axum (`/metrics`, `/sessions`, `/healthz`, `/readyz`,
//!   resets behind a bearer token).
//! - [`health`]: the outcome of the latest dials of each donor, for readiness.
//! - [`tls`]: TLS for both legs (rustls): the relay's certificate, donor verification, mutual
//!   TLS on either leg, and the store that a reload swaps.
//! - [`socket`]: socket tuning through socket2 (TCP_NODELAY, buffers, keepalive).
//! - [`transport`]: what a leg runs over: TCP, or a stream of a relay pair's tunnel.
//! - [`tunnel`]: the resumable tunnel between the two relays of a pair (`--peer`,
//!   `--peer-listen`): streams, replay buffers, redials.
//! - [`config`]: the relay's settings (flags, environment, TOML file) and their validation.
//! - [`units`]: durations and sizes as people write them (`30s`, `256KiB`).
//! - [`error`]: the library's error type, saying which side failed.

pub mod admin;
pub mod config;
pub mod connection;
pub mod error;
pub mod io;
pub mod limit;
pub mod metrics;
pub mod protocol;
pub mod recovery;
pub mod server;
pub mod session;
pub mod socket;
pub mod state;
pub mod tls;
pub mod tunnel;

pub use config::units;

pub use config::Config;
pub use error::RelayError;
pub use server::{bind, run};
pub use state::Relay;
