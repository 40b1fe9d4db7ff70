//! The relay's settings: one struct read by clap (flags, environment variables) and by serde
//! (a TOML file), with its defaults written once, in the clap attributes, and a validation step.
//!
//! Durations and sizes are written as people write them (`5s`, `250ms`, `256KiB`; see
//! [`crate::units`]); flags and TOML keys carry no unit suffix (`--connect-timeout 5s`,
//! `connect_timeout = "5s"`). The Rust field names keep theirs where the type does not say it
//! (`copy_buffer_bytes: usize`). Precedence: flags and environment variables over the file over
//! the defaults ([`Config::load`]). [`Config::validate`] refuses a bad value with an error
//! naming the setting, so the binary stops at start rather than misbehave later.
//!
//! # Layout
//!
//! - this file: the [`Config`] struct (every setting with its flag, variable and default) and
//!   what the rest of the relay asks of it;
//! - [`load`]: flags and environment over the file over the defaults, and the file's errors;
//! - [`validate`]: the checks that refuse a bad value naming its setting;
//! - [`stall`], [`tunnel`], [`limits`]: the `[stall]`, `[tunnel]` and `[limits]` sections;
//! - [`tls`]: the TLS modes of each leg (what they mean is [`crate::tls::policy`]'s);
//! - [`secret`]: the admin token's type;
//! - [`units`] (from `plumbing`): durations, sizes and rates as people write them.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::builder::{NonEmptyStringValueParser, TypedValueParser};
use clap::{ArgAction, Args, ValueEnum};
use serde::{Deserialize, Serialize};

use units::{parse_duration, parse_size};

pub mod limits;
pub mod load;
pub mod secret;
pub mod stall;
#[cfg(test)]
mod tests;
pub mod tls;
pub mod tunnel;
pub use plumbing::units;
mod validate;

pub use limits::LimitSettings;
pub use load::SettingsError;
use load::{clap_defaults, one_or_many};
pub use secret::{MIN_TOKEN_LEN, Secret};
pub use stall::StallSettings;
pub use tls::{ClientTlsMode, ServerTlsMode, ServerTlsVerify};
pub use tunnel::TunnelSettings;

/// Everything the relay needs to run. As flags and TOML keys, the names are those given in
/// `#[arg(long)]` and `#[serde(rename)]`; the stall settings are a `[stall]` table in the file.
#[derive(Debug, Clone, Args, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Address to listen on for recipients, e.g. 0.0.0.0:3307 (the binary requires it).
    #[arg(long, env = "CLONE_RELAY_LISTEN", value_name = "ADDR")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub listen: Option<SocketAddr>,

    /// The donors, as HOST:PORT, resolved at each dial; repeat the flag or separate with
    /// commas. A new clone goes to the first donor not busy with another clone; every
    /// connection of a clone session stays on its donor.
    #[arg(
        id = "upstream",
        long = "upstream",
        env = "CLONE_RELAY_UPSTREAM",
        value_name = "HOST:PORT",
        value_delimiter = ','
    )]
    #[serde(rename = "upstream", deserialize_with = "one_or_many")]
    pub upstreams: Vec<String>,

    /// Recipient side of a relay pair: carry every recipient connection over a resumable
    /// tunnel to the donor-side relay at this HOST:PORT (its `--peer-listen`), instead of to a
    /// donor. Takes the place of `--upstream`.
    #[arg(long, env = "CLONE_RELAY_PEER", value_name = "HOST:PORT")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub peer: Option<String>,

    /// Donor side of a relay pair: accept tunnels from recipient-side relays on this address and
    /// carry their streams to the donors at `--upstream`.
    #[arg(long, env = "CLONE_RELAY_PEER_LISTEN", value_name = "ADDR")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub peer_listen: Option<SocketAddr>,

    /// The tunnel between the two relays of a pair.
    #[command(flatten)]
    pub tunnel: TunnelSettings,

    /// Connections carried at once; further recipients wait in the listen backlog.
    #[arg(long, value_name = "N", default_value_t = 1024)]
    pub max_connections: usize,

    /// Connections from one client address that have not logged in yet (each holds a donor
    /// connection until it does); one more is refused with MySQL error 1040 before the donor is
    /// dialed. Logged-in connections are not counted.
    #[arg(long, value_name = "N", default_value_t = 32)]
    pub max_pending_logins_per_address: usize,

    /// Bound on dialing the donor (TCP handshake).
    #[arg(long, value_name = "DURATION", default_value = "5s", value_parser = parse_duration)]
    #[serde(with = "units::duration")]
    pub connect_timeout: Duration,

    /// The most each direction's copy buffer grows to (it starts at 16 KiB and grows while reads
    /// fill it). 1 MiB took a third less CPU per byte than 256 KiB over loopback.
    #[arg(
        id = "copy_buffer",
        long = "copy-buffer",
        value_name = "SIZE",
        default_value = "1MiB",
        value_parser = parse_size
    )]
    #[serde(rename = "copy_buffer", with = "units::size")]
    pub copy_buffer_bytes: usize,

    /// SO_SNDBUF/SO_RCVBUF for both legs; unset keeps the kernel's autotuning, which on Linux
    /// grows further than a fixed size set here allows.
    #[arg(
        id = "socket_buffer",
        long = "socket-buffer",
        value_name = "SIZE",
        value_parser = parse_size
    )]
    #[serde(
        rename = "socket_buffer",
        with = "units::option_size",
        skip_serializing_if = "Option::is_none"
    )]
    pub socket_buffer_bytes: Option<usize>,

    /// TCP keepalive: idle time before the first probe.
    #[arg(long, value_name = "DURATION", default_value = "30s", value_parser = parse_duration)]
    #[serde(with = "units::duration")]
    pub keepalive_idle: Duration,

    /// TCP keepalive: time between probes.
    #[arg(long, value_name = "DURATION", default_value = "10s", value_parser = parse_duration)]
    #[serde(with = "units::duration")]
    pub keepalive_interval: Duration,

    /// TCP keepalive: unanswered probes before the kernel drops the connection.
    #[arg(long, value_name = "N", default_value_t = 3)]
    pub keepalive_retries: u32,

    /// TCP_USER_TIMEOUT on both legs: how long sent data may stay unacknowledged before the
    /// kernel drops the connection. As long as the recipient's own read timeout (about a
    /// minute), so a link that is down for less is waited out rather than cut.
    #[arg(long, value_name = "DURATION", default_value = "60s", value_parser = parse_duration)]
    #[serde(with = "units::duration")]
    pub user_timeout: Duration,

    /// Stall detection on main and worker connections while the donor owes data.
    #[command(flatten)]
    pub stall: StallSettings,

    /// Bandwidth caps: the whole relay's and each clone session's.
    #[command(flatten)]
    pub limits: LimitSettings,

    /// How long a reconnect of a resuming clone may wait for its donor to come back.
    #[arg(long, value_name = "DURATION", default_value = "4m", value_parser = parse_duration)]
    #[serde(with = "units::duration")]
    pub reconnect_dial_timeout: Duration,

    /// On shutdown (SIGINT/SIGTERM), how long connections in flight may run before they are
    /// closed.
    #[arg(long, value_name = "DURATION", default_value = "30s", value_parser = parse_duration)]
    #[serde(with = "units::duration")]
    pub shutdown_grace: Duration,

    /// A recipient must finish logging in within this (slow or stuck clients are cut).
    #[arg(long, value_name = "DURATION", default_value = "10s", value_parser = parse_duration)]
    #[serde(with = "units::duration")]
    pub handshake_timeout: Duration,

    /// Largest packet accepted before auth completes.
    #[arg(
        id = "max_login_packet",
        long = "max-login-packet",
        value_name = "SIZE",
        default_value = "64KiB",
        value_parser = parse_size
    )]
    #[serde(rename = "max_login_packet", with = "units::size")]
    pub max_login_packet_bytes: usize,

    /// Largest logical packet accepted after auth.
    #[arg(
        id = "max_packet",
        long = "max-packet",
        value_name = "SIZE",
        default_value = "64MiB",
        value_parser = parse_size
    )]
    #[serde(rename = "max_packet", with = "units::size")]
    pub max_packet_bytes: usize,

    /// A clone session whose main connection is lost fails if the recipient does not resume
    /// within this (MySQL's own limit, clone_donor_timeout_after_network_failure, is 5 min).
    #[arg(long, value_name = "DURATION", default_value = "6m", value_parser = parse_duration)]
    #[serde(with = "units::duration")]
    pub resume_timeout: Duration,

    /// Address of the admin listener (/metrics, /sessions, /healthz, /readyz, resets); off
    /// when unset.
    #[arg(long, env = "CLONE_RELAY_ADMIN", value_name = "ADDR")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub admin: Option<SocketAddr>,

    /// Bearer token that the admin listener's mutating endpoints require; without one they are
    /// off. Prefer the environment variable: a flag's value is visible to other local users.
    #[arg(
        long,
        env = "CLONE_RELAY_ADMIN_TOKEN",
        value_name = "TOKEN",
        hide_env_values = true,
        value_parser = Secret::parse
    )]
    // Never written out: `--check-config` and the precedence merge leave it aside.
    #[serde(skip_serializing)]
    pub admin_token: Option<Secret>,

    /// Directory where the relay keeps its small state files (the affinity table, so that a
    /// resume reaches its donor after a restart); it must exist. No default.
    #[arg(
        long,
        value_name = "DIR",
        value_parser = NonEmptyStringValueParser::new().map(PathBuf::from)
    )]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub state_dir: Option<PathBuf>,

    /// TLS towards recipients: `preferred` offers it (with the relay's own certificate) when the
    /// donor offers TLS (always under `--server-tls-mode disabled`), `required` refuses recipients
    /// without it, `disabled` never offers it, `passthrough` passes the recipient's TLS to the
    /// donor undecoded (clone awareness is then off for TLS clones; needs `--server-tls-mode
    /// as-client`).
    #[arg(long, value_enum, value_name = "MODE", default_value_t = ClientTlsMode::Preferred)]
    pub client_tls_mode: ClientTlsMode,

    /// TLS towards donors: `as-client` uses TLS when the recipient does, `preferred` whenever the
    /// donor offers it, `required` always (a donor without TLS is refused), `disabled` never.
    /// Under all but `disabled`, a recipient on TLS gets a donor leg on TLS or a refusal. With
    /// TLS on one leg only the relay carries caching_sha2_password's full authentication across
    /// (see the README).
    #[arg(long, value_enum, value_name = "MODE", default_value_t = ServerTlsMode::AsClient)]
    pub server_tls_mode: ServerTlsMode,

    /// The relay's certificate chain towards recipients (PEM); without it the relay makes a
    /// self-signed CA and certificate, kept in the state directory when there is one.
    #[arg(long, value_name = "FILE", requires = "client_tls_key")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub client_tls_cert: Option<PathBuf>,

    /// The private key of `client_tls_cert` (PEM); it must not be readable by others.
    #[arg(long, value_name = "FILE", requires = "client_tls_cert")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub client_tls_key: Option<PathBuf>,

    /// CA certificates (PEM) that recipients' certificates must chain to: with it, a recipient
    /// must present a valid certificate from one of them, or its TLS handshake fails. Needs
    /// `--client-tls-mode required` (a recipient without TLS has no certificate to check).
    #[arg(long, value_name = "FILE")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub client_tls_ca: Option<PathBuf>,

    /// Recipients allowed in, by their certificate: each entry is a subject common name, a DNS
    /// name or an IP address of the certificate's subject alternative names; repeat the flag or
    /// separate with commas. A recipient whose certificate matches none is refused with a MySQL
    /// ERR packet. Empty (the default): any certificate from `--client-tls-ca`.
    #[arg(
        id = "client_tls_allowed_subjects",
        long = "client-tls-allowed-subjects",
        value_name = "NAME",
        value_delimiter = ','
    )]
    #[serde(
        deserialize_with = "one_or_many",
        skip_serializing_if = "Vec::is_empty"
    )]
    pub client_tls_allowed_subjects: Vec<String>,

    /// How the donor's certificate is checked: `disabled` (as MySQL's own preferred mode),
    /// `ca` (the chain against `--server-tls-ca`, not the name: stock mysqld certificates carry
    /// no usable name), `identity` (chain and name). `ca` and `identity` mean a TLS donor leg
    /// for every connection, as `--server-tls-mode required` does: a donor without TLS is
    /// refused.
    #[arg(long, value_enum, value_name = "MODE", default_value_t = ServerTlsVerify::Disabled)]
    pub server_tls_verify: ServerTlsVerify,

    /// CA certificates (PEM) that donors' certificates must chain to, for `--server-tls-verify
    /// ca` or `identity`.
    #[arg(long, value_name = "FILE")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub server_tls_ca: Option<PathBuf>,

    /// A client certificate chain (PEM) the relay presents to donors, for a donor account that
    /// `REQUIRE X509` (or `REQUIRE SUBJECT`/`ISSUER`); without it the relay presents none.
    #[arg(long, value_name = "FILE", requires = "server_tls_key")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub server_tls_cert: Option<PathBuf>,

    /// The private key of `server_tls_cert` (PEM); it must not be readable by others.
    #[arg(long, value_name = "FILE", requires = "server_tls_cert")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub server_tls_key: Option<PathBuf>,

    /// The donor's RSA public key (PEM, as `SHOW STATUS LIKE
    /// 'Caching_sha2_password_rsa_public_key'` prints it), pinned for caching_sha2_password's
    /// full authentication over a plain donor leg: a donor that sends another key is refused
    /// and nothing of the password is sent. Without it the relay encrypts the password to the
    /// key the donor sends, as MySQL's own clone client does, which trusts that network.
    #[arg(long, value_name = "FILE")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub server_public_key: Option<PathBuf>,

    /// Check at start that each donor answers with a MySQL greeting (`--no-upstream-probe`
    /// turns it off).
    #[arg(
        long = "no-upstream-probe",
        action = ArgAction::SetFalse,
        help = "Skip the start-up check that each donor answers with a MySQL greeting"
    )]
    pub upstream_probe: bool,

    /// Format of the log lines on stderr (level through RUST_LOG).
    #[arg(long, value_enum, value_name = "FORMAT", default_value_t = LogFormat::Human)]
    pub log_format: LogFormat,
}

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// One line of text per event.
    Human,
    /// One JSON object per line.
    Json,
}

impl Default for Config {
    /// The defaults of the flags (environment variables are not read).
    fn default() -> Self {
        clap_defaults()
    }
}

impl Config {
    /// Defaults for relaying to one donor.
    pub fn new(upstream: impl Into<String>) -> Self {
        Self::with_upstreams(vec![upstream.into()])
    }

    /// Defaults for relaying to several donors.
    pub fn with_upstreams(upstreams: Vec<String>) -> Self {
        Config {
            upstreams,
            ..Config::default()
        }
    }

    /// The settings as a TOML file would give them; the admin token is left out. Fails only
    /// for a `state_dir` that is not UTF-8.
    pub fn to_toml(&self) -> Result<String, toml::ser::Error> {
        toml::to_string(self)
    }

    /// What `--check-config` prints: [`Config::to_toml`], and a line saying whether the admin
    /// token is set (never what it is).
    pub fn effective_toml(&self) -> Result<String, toml::ser::Error> {
        let mut text = self.to_toml()?;
        if self.admin_token.is_some() {
            text.push_str("# admin_token is set\n");
        }
        Ok(text)
    }

    /// Where connections go: the donors, or the donor-side relay of a pair (`peer`).
    pub fn destinations(&self) -> &[String] {
        match &self.peer {
            Some(peer) => std::slice::from_ref(peer),
            None => &self.upstreams,
        }
    }
}
