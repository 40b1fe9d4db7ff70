//! clone-relay: an inline relay for MySQL CLONE traffic.
//!
//! The recipient's CLONE client connects to the relay as if it were the donor; the relay dials the
//! donor and carries every byte between them.
//!
//! # Layout
//!
//! One connection flows accept -> admission -> dial -> handshake -> decorated copy -> close:
//!
//! - [`server`]: the relay's listeners ([`server::Listeners`]), the accept loops, and
//!   [`Relay::serve_all`], which serves recipients, a pair's tunnel and the admin API until
//!   shutdown; the start-up check of the donors and the SIGHUP reload.
//! - [`state`]: the shared [`Relay`] state: settings, session registry, TLS, limits, counters.
//! - [`connection`]: one recipient connection from admission to close:
//!   [`connection::admission`] (which donor, how long it may wait), [`connection::dial`]
//!   (the donor connection with retries, the start-up probe), [`connection::handshake`] (both
//!   legs until login, TLS as the policy says), [`connection::auth`] (the auth exchange
//!   across legs of different kinds),
//!   [`connection::copy`] (the bidirectional copy), [`connection::leg`] and
//!   [`connection::transport`] (what a leg is and runs over).
//! - [`io`]: I/O decorators on the copy path (byte metering, protocol observation); [`limit`]:
//!   bandwidth caps per relay and per clone session, as a decorator and its scopes.
//! - [`recovery`]: noticing a silent flow ([`recovery::stall`]), telling a lost flow from a
//!   link that is down ([`recovery::liveness`], [`recovery::probe`]), donors' readiness
//!   ([`recovery::health`]).
//! - [`session`]: clone sessions: connections grouped by clone, with state, bytes, progress.
//! - [`protocol`]: the MySQL classic protocol and CLONE's sub-protocol: framing, the one
//!   bounded packet reader, the decoder, the handshake and auth packets.
//! - [`tls`]: TLS material (rustls, rcgen), reload, verifiers, caching_sha2_password's RSA
//!   exchange ([`tls::password`]), and [`tls::policy`], the one place that says what each TLS
//!   mode means for a connection.
//! - [`tunnel`]: the resumable tunnel between the two relays of a pair (`--peer`,
//!   `--peer-listen`): streams, replay buffers, redials.
//! - [`admin`]: the admin API on axum (`/metrics`, `/sessions`, `/limits`, `/healthz`,
//!   `/readyz`, resets behind a bearer token), its bounded listener, a small client.
//! - [`metrics`]: relay-wide counters in Prometheus text format.
//! - [`config`]: the settings (flags, environment, TOML file), one file per section, and their
//!   validation; [`units`]: durations and sizes as people write them.
//! - [`socket`]: socket tuning through socket2 (TCP_NODELAY, buffers, keepalive).
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
