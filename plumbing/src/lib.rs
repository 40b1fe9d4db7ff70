//! What the relay, chaos, the harness and the benchmarks share, written once:
//!
//! - [`listener`]: a bounded TCP listener for the admin and chaos control APIs (axum).
//! - [`backoff`]: pauses that double up to a ceiling between retries.
//! - [`units`]: durations, sizes and rates as people write them (`250ms`, `16KiB`, `20MiB/s`).
//! - [`toml_error`]: a TOML file's error, naming the key and the line.
//! - [`prometheus_text`]: a sample's value in `/metrics` text, for tests and tools.
//! - [`http`] (feature `client`): an HTTP client for tests and tools.

pub mod backoff;
#[cfg(feature = "client")]
pub mod http;
pub mod listener;
pub mod prometheus_text;
pub mod toml_error;
pub mod units;

pub use backoff::Backoff;
pub use listener::BoundedListener;
