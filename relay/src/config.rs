//! The relay's settings: one struct read by clap (flags, environment variables) and by serde
//! (a TOML file), with its defaults written once, in the clap attributes, and a validation step.
//!
//! Durations and sizes are written as people write them (`5s`, `250ms`, `256KiB`; see
//! [`crate::units`]); flags and TOML keys carry no unit suffix (`--connect-timeout 5s`,
//! `connect_timeout = "5s"`). The Rust field names keep theirs where the type does not say it
//! (`copy_buffer_bytes: usize`). Precedence: flags and environment variables over the file over
//! the defaults ([`Config::load`]). [`Config::validate`] refuses a bad value with an error
//! naming the setting, so the binary stops at start rather than misbehave later.

use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::builder::{NonEmptyStringValueParser, TypedValueParser};
use clap::parser::ValueSource;
use clap::{ArgAction, ArgMatches, Args, FromArgMatches, ValueEnum};
use serde::{Deserialize, Serialize};
use subtle::ConstantTimeEq;

use crate::error::RelayError;
use crate::limit::{Caps, Targets};
use crate::units::{self, parse_duration, parse_rate, parse_size};

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

/// When a connection that is owed data counts as dead: silent for longer than `factor` times the
/// longest gap seen on it so far, but never less than `min` nor more than `max`. Aux connections
/// and connections not in a transfer are never judged (they are legitimately quiet).
///
/// On the command line these are `--stall-min`, `--stall-max`, `--stall-factor` and
/// `--no-stall-detection`; in the file, the keys of a `[stall]` table.
#[derive(Debug, Clone, Copy, Args, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct StallSettings {
    /// Whether stall detection runs.
    #[arg(
        id = "stall.enabled",
        long = "no-stall-detection",
        action = ArgAction::SetFalse,
        help = "Turn stall detection off (leave dead links to TCP and MySQL)"
    )]
    pub enabled: bool,

    /// Least silence that raises a suspicion while the clone is in FILE COPY, where the donor
    /// streams its files: the relay then asks the donor's path and the flow's own TCP, which
    /// costs a probe, never a reset (a flow whose TCP answers gets until `stall.min`). A lower
    /// `stall.min` lowers it too.
    #[arg(
        id = "stall.min_streaming",
        long = "stall-min-streaming",
        value_name = "DURATION",
        default_value = "2s",
        value_parser = parse_duration
    )]
    #[serde(with = "units::duration")]
    pub min_streaming: Duration,

    /// Least silence that counts as a stall in the other stages, and the longest a flow whose
    /// TCP still answers may stay silent before it counts as stuck. The donor sends keep-alive
    /// descriptors every ~5 s while it waits, and a donor held to a fifth of a CPU paused its
    /// whole clone for up to 5.2 s in FILE COPY, so 8 s of silence is never a healthy wait.
    #[arg(
        id = "stall.min",
        long = "stall-min",
        value_name = "DURATION",
        default_value = "8s",
        value_parser = parse_duration
    )]
    #[serde(with = "units::duration")]
    pub min: Duration,

    /// Most silence tolerated, however long the gaps seen before.
    #[arg(
        id = "stall.max",
        long = "stall-max",
        value_name = "DURATION",
        default_value = "60s",
        value_parser = parse_duration
    )]
    #[serde(with = "units::duration")]
    pub max: Duration,

    /// The stall threshold is this many times the longest gap seen on the connection.
    #[arg(
        id = "stall.factor",
        long = "stall-factor",
        value_name = "N",
        default_value_t = 4
    )]
    pub factor: u32,
}

/// The tunnel of a relay pair: mutual TLS between the two relays (plain only with
/// `tunnel.plain`), the replay buffers that let a stream resume where it stopped, and how long
/// an outage is bridged before the pair falls back to CLONE's own resume.
///
/// On the command line these are `--tunnel-cert`, `--tunnel-key`, ...; in the file, the keys of
/// a `[tunnel]` table.
#[derive(Debug, Clone, Args, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TunnelSettings {
    /// This relay's certificate chain (PEM) on the tunnel.
    #[arg(id = "tunnel.cert", long = "tunnel-cert", value_name = "FILE")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cert: Option<PathBuf>,

    /// The private key (PEM) of `tunnel.cert`.
    #[arg(id = "tunnel.key", long = "tunnel-key", value_name = "FILE")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub key: Option<PathBuf>,

    /// The CA certificate(s) (PEM) that signed the other relay's certificate.
    #[arg(id = "tunnel.ca", long = "tunnel-ca", value_name = "FILE")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ca: Option<PathBuf>,

    /// The name the donor-side relay's certificate must carry (recipient side); the host of
    /// `peer` when unset.
    #[arg(
        id = "tunnel.server_name",
        long = "tunnel-server-name",
        value_name = "NAME"
    )]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub server_name: Option<String>,

    /// Run the tunnel without TLS (for a link that is private already).
    #[arg(id = "tunnel.plain", long = "tunnel-plain")]
    pub plain: bool,

    /// Memory for the replay buffers of all streams together; beyond it they spill to a file.
    #[arg(
        id = "tunnel.memory",
        long = "tunnel-memory",
        value_name = "SIZE",
        default_value = "64MiB",
        value_parser = parse_size
    )]
    #[serde(rename = "memory", with = "units::size")]
    pub memory_bytes: usize,

    /// Disk for the replay buffers beyond `tunnel.memory`, all streams together; a stream whose
    /// buffer cannot grow stops reading its MySQL side (backpressure). 0: no spill file.
    #[arg(
        id = "tunnel.spill",
        long = "tunnel-spill",
        value_name = "SIZE",
        default_value = "1GiB",
        value_parser = parse_size
    )]
    #[serde(rename = "spill", with = "units::size")]
    pub spill_bytes: usize,

    /// Where spill files go (removed when their stream ends); the system's temp dir when unset.
    #[arg(id = "tunnel.spill_dir", long = "tunnel-spill-dir", value_name = "DIR")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub spill_dir: Option<PathBuf>,

    /// The longest outage of the tunnel the pair bridges while holding MySQL's connections;
    /// past it both relays reset their sides and the recipient's CLONE resumes by itself. Below
    /// the recipient's own read timeout (about a minute).
    #[arg(
        id = "tunnel.bridge",
        long = "tunnel-bridge",
        value_name = "DURATION",
        default_value = "45s",
        value_parser = parse_duration
    )]
    #[serde(with = "units::duration")]
    pub bridge: Duration,

    /// Silence on a tunnel connection (each side sends an acknowledgement every 100 ms) after
    /// which it counts as dead and is redialed.
    #[arg(
        id = "tunnel.timeout",
        long = "tunnel-timeout",
        value_name = "DURATION",
        default_value = "3s",
        value_parser = parse_duration
    )]
    #[serde(with = "units::duration")]
    pub timeout: Duration,
}

impl Default for TunnelSettings {
    fn default() -> Self {
        clap_defaults()
    }
}

impl Default for StallSettings {
    fn default() -> Self {
        clap_defaults()
    }
}

/// Bandwidth caps, in bytes or bits per second (`100MiB/s`, `500Mbit/s`, `1.5GB/s`); unset is
/// no cap. `rate` caps the whole relay (every clone together) and `session_rate` each clone
/// session (all of its connections), each in both directions counted apart; the `_to_donor` and
/// `_to_recipient` settings override one direction. Bytes are counted on the relay's own
/// sockets, TLS records included.
///
/// On the command line these are `--rate`, `--session-rate`, `--rate-to-donor`... ; in the file,
/// the keys `relay`, `session`, `relay_to_donor`... of a `[limits]` table. `PUT /limits` on the
/// admin API and SIGHUP (rereading the file) change them while clones run.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Args, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LimitSettings {
    /// Cap on the whole relay, each direction (e.g. 100MiB/s).
    #[arg(id = "limits.relay", long = "rate", value_name = "RATE", value_parser = parse_rate)]
    #[serde(with = "units::option_rate", skip_serializing_if = "Option::is_none")]
    pub relay: Option<u64>,

    /// Cap on each clone session, each direction (e.g. 20MiB/s).
    #[arg(
        id = "limits.session",
        long = "session-rate",
        value_name = "RATE",
        value_parser = parse_rate
    )]
    #[serde(with = "units::option_rate", skip_serializing_if = "Option::is_none")]
    pub session: Option<u64>,

    /// Cap on the whole relay towards donors, over `--rate`.
    #[arg(
        id = "limits.relay_to_donor",
        long = "rate-to-donor",
        value_name = "RATE",
        value_parser = parse_rate
    )]
    #[serde(with = "units::option_rate", skip_serializing_if = "Option::is_none")]
    pub relay_to_donor: Option<u64>,

    /// Cap on the whole relay towards recipients (the clone data), over `--rate`.
    #[arg(
        id = "limits.relay_to_recipient",
        long = "rate-to-recipient",
        value_name = "RATE",
        value_parser = parse_rate
    )]
    #[serde(with = "units::option_rate", skip_serializing_if = "Option::is_none")]
    pub relay_to_recipient: Option<u64>,

    /// Cap on each session towards its donor, over `--session-rate`.
    #[arg(
        id = "limits.session_to_donor",
        long = "session-rate-to-donor",
        value_name = "RATE",
        value_parser = parse_rate
    )]
    #[serde(with = "units::option_rate", skip_serializing_if = "Option::is_none")]
    pub session_to_donor: Option<u64>,

    /// Cap on each session towards its recipient (the clone data), over `--session-rate`.
    #[arg(
        id = "limits.session_to_recipient",
        long = "session-rate-to-recipient",
        value_name = "RATE",
        value_parser = parse_rate
    )]
    #[serde(with = "units::option_rate", skip_serializing_if = "Option::is_none")]
    pub session_to_recipient: Option<u64>,
}

impl fmt::Display for LimitSettings {
    /// The caps that are set, as `key=rate` in the file's terms; `no caps` when none is.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let caps = [
            ("relay", self.relay),
            ("session", self.session),
            ("relay_to_donor", self.relay_to_donor),
            ("relay_to_recipient", self.relay_to_recipient),
            ("session_to_donor", self.session_to_donor),
            ("session_to_recipient", self.session_to_recipient),
        ];
        let set: Vec<String> = caps
            .iter()
            .filter_map(|(key, rate)| rate.map(|r| format!("{key}={}", units::format_rate(r))))
            .collect();
        match set.is_empty() {
            true => f.write_str("no caps"),
            false => f.write_str(&set.join(" ")),
        }
    }
}

impl LimitSettings {
    /// The caps per scope and direction, overrides applied.
    pub fn targets(&self) -> Targets {
        Targets {
            relay: Caps {
                to_donor: self.relay_to_donor.or(self.relay),
                to_recipient: self.relay_to_recipient.or(self.relay),
            },
            session: Caps {
                to_donor: self.session_to_donor.or(self.session),
                to_recipient: self.session_to_recipient.or(self.session),
            },
        }
    }

    /// Each cap of `self`, else `other`'s.
    pub fn or(self, other: LimitSettings) -> LimitSettings {
        LimitSettings {
            relay: self.relay.or(other.relay),
            session: self.session.or(other.session),
            relay_to_donor: self.relay_to_donor.or(other.relay_to_donor),
            relay_to_recipient: self.relay_to_recipient.or(other.relay_to_recipient),
            session_to_donor: self.session_to_donor.or(other.session_to_donor),
            session_to_recipient: self.session_to_recipient.or(other.session_to_recipient),
        }
    }

    /// The `[limits]` table of a settings file, no cap for what it leaves out.
    pub fn from_file(text: &str) -> Result<LimitSettings, String> {
        let table: toml::Table = toml::from_str(text).map_err(|e| e.message().to_owned())?;
        match table.get("limits") {
            None => Ok(LimitSettings::default()),
            Some(limits) => serde_path_to_error::deserialize(limits.clone())
                .map_err(|e| format!("invalid limits.{}: {}", e.path(), e.inner().message())),
        }
    }
}

/// TLS on the recipient's leg.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ClientTlsMode {
    Disabled,
    Preferred,
    Required,
    Passthrough,
}

/// TLS on the donor's leg.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ServerTlsMode {
    Disabled,
    Preferred,
    Required,
    AsClient,
}

/// How the donor's certificate is verified.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ServerTlsVerify {
    Disabled,
    Ca,
    Identity,
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

/// A secret such as the admin token: its `Debug` and `Display` print `***`, it is never
/// serialized, and it has no `==`: [`Secret::matches`] compares in constant time.
#[derive(Clone)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Self {
        Secret(value.into())
    }

    /// The secret itself, for checks of its form; never log it.
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// Whether `given` is the secret, in time that does not depend on where they differ (a
    /// length mismatch fails at once: the length is not the secret).
    pub fn matches(&self, given: &str) -> bool {
        given.as_bytes().ct_eq(self.0.as_bytes()).into()
    }

    /// clap's parser: takes any value, so that clap never quotes it in an error.
    fn parse(value: &str) -> Result<Secret, std::convert::Infallible> {
        Ok(Secret::new(value))
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

impl<'de> Deserialize<'de> for Secret {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct SecretVisitor;
        // Every refusal here names the expected type and never the value.
        impl serde::de::Visitor<'_> for SecretVisitor {
            type Value = Secret;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a string")
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Secret, E> {
                Ok(Secret::new(v))
            }
            fn visit_bool<E: serde::de::Error>(self, _: bool) -> Result<Secret, E> {
                Err(E::custom("must be a string"))
            }
            fn visit_i64<E: serde::de::Error>(self, _: i64) -> Result<Secret, E> {
                Err(E::custom("must be a string"))
            }
            fn visit_u64<E: serde::de::Error>(self, _: u64) -> Result<Secret, E> {
                Err(E::custom("must be a string"))
            }
            fn visit_f64<E: serde::de::Error>(self, _: f64) -> Result<Secret, E> {
                Err(E::custom("must be a string"))
            }
        }
        deserializer.deserialize_any(SecretVisitor)
    }
}

/// A refusal of the settings the binary was given: an unreadable or malformed file, or a value
/// that [`Config::validate`] refuses. Each message names the file and the key or the setting.
#[derive(Debug, thiserror::Error)]
pub enum SettingsError {
    #[error("cannot read config file {}: {source}", path.display())]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("config file {}: {reason}", path.display())]
    File { path: PathBuf, reason: String },
    #[error(transparent)]
    Invalid(#[from] RelayError),
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

    /// The binary's settings: the flags and environment variables in `matches` (from a command
    /// that [`Config`] was flattened into) over the TOML file at `file` over the defaults,
    /// validated, with `listen` required.
    pub fn load(matches: &ArgMatches, file: Option<&Path>) -> Result<Config, SettingsError> {
        let text = file
            .map(|path| {
                std::fs::read_to_string(path).map_err(|source| SettingsError::Read {
                    path: path.to_owned(),
                    source,
                })
            })
            .transpose()?;
        let config = Config::merge(matches, text.as_deref()).map_err(|e| match (e, file) {
            (Merge::File(reason), Some(path)) => SettingsError::File {
                path: path.to_owned(),
                reason,
            },
            (Merge::File(reason), None) => SettingsError::Invalid(invalid("flags", reason)),
            (Merge::Invalid(e), _) => SettingsError::Invalid(e),
        })?;
        if config.listen.is_none() && config.peer_listen.is_none() {
            return Err(invalid(
                "listen",
                "missing: give --listen ADDR, CLONE_RELAY_LISTEN or listen = \"ADDR\" in the config file (or --peer-listen on a pair's donor side)",
            )
            .into());
        }
        if let Some(dir) = &config.state_dir
            && !dir.is_dir()
        {
            return Err(
                invalid("state_dir", format!("{} is not a directory", dir.display())).into(),
            );
        }
        Ok(config)
    }

    /// Flags and environment variables in `matches` over the TOML `file` text over the
    /// defaults, validated.
    ///
    /// The file's keys are checked first on their own (so an error points at its line); then
    /// each setting whose value came from the command line or the environment replaces the
    /// file's key, and the table is read into a [`Config`], the defaults filling what is left.
    fn merge(matches: &ArgMatches, file: Option<&str>) -> Result<Config, Merge> {
        let given = Config::from_arg_matches(matches)
            .map_err(|e| Merge::Invalid(invalid("flags", e.kind().to_string())))?;
        let mut table = match file {
            Some(text) => {
                read_file(text).map_err(Merge::File)?;
                toml::from_str::<toml::Table>(text)
                    .map_err(|e| Merge::File(file_error(text, &e, "")))?
            }
            None => toml::Table::new(),
        };
        if table.contains_key("admin_token") {
            // The value is not quoted: it is a secret.
            return Err(Merge::File(
                "admin_token is not read from the settings file: give it in the environment \
                 (CLONE_RELAY_ADMIN_TOKEN), where other local users cannot read it"
                    .into(),
            ));
        }
        let given_table = toml::Table::try_from(&given)
            .map_err(|e| Merge::Invalid(invalid("flags", e.to_string())))?;
        for id in setting_ids() {
            if !matches!(
                matches.value_source(&id),
                Some(ValueSource::CommandLine | ValueSource::EnvVariable)
            ) {
                continue;
            }
            // An id is the key's path in the file: `stall.min` is `min` in `[stall]`.
            let mut path: Vec<&str> = id.split('.').collect();
            let key = path.pop().expect("ids are not empty");
            let mut from = Some(&given_table);
            let mut into = &mut table;
            for part in path {
                from = from
                    .and_then(|t| t.get(part))
                    .and_then(toml::Value::as_table);
                into = into
                    .entry(part)
                    .or_insert_with(|| toml::Value::Table(toml::Table::new()))
                    .as_table_mut()
                    .ok_or_else(|| Merge::File(format!("{part} must be a table")))?;
            }
            match from.and_then(|t| t.get(key)) {
                Some(value) => {
                    into.insert(key.to_owned(), value.clone());
                }
                // Not serialized (the token): taken from `given` below.
                None => {
                    into.remove(key);
                }
            }
        }
        let mut config = Config::deserialize(toml::Value::Table(table))
            .map_err(|e| Merge::File(e.message().to_owned()))?;
        if matches!(
            matches.value_source("admin_token"),
            Some(ValueSource::CommandLine | ValueSource::EnvVariable)
        ) {
            config.admin_token = given.admin_token;
        }
        config.validate().map_err(Merge::Invalid)?;
        Ok(config)
    }

    /// The settings as a TOML file would give them; the admin token is left out. Fails only
    /// for a `state_dir` that is not UTF-8.
    pub fn to_toml(&self) -> Result<String, toml::ser::Error> {
        toml::to_string(self)
    }

    /// Where connections go: the donors, or the donor-side relay of a pair (`peer`).
    pub fn destinations(&self) -> &[String] {
        match &self.peer {
            Some(peer) => std::slice::from_ref(peer),
            None => &self.upstreams,
        }
    }

    /// Checks every setting; the error names the first one that is wrong.
    pub fn validate(&self) -> Result<(), RelayError> {
        if self.peer.is_some() && !self.upstreams.is_empty() {
            return Err(invalid(
                "peer",
                "a recipient-side relay sends everything to its peer; --upstream belongs on the donor side",
            ));
        }
        if self.peer.is_some() && self.peer_listen.is_some() {
            return Err(invalid(
                "peer_listen",
                "a relay is either the recipient side (--peer) or the donor side (--peer-listen)",
            ));
        }
        if self.upstreams.is_empty() && self.peer.is_none() {
            return Err(invalid("upstream", "at least one donor is needed"));
        }
        if let Some(peer) = &self.peer {
            validate_host_port(peer).map_err(|reason| invalid("peer", reason))?;
        }
        for upstream in &self.upstreams {
            validate_host_port(upstream).map_err(|reason| invalid("upstream", reason))?;
        }
        if self.max_connections == 0 {
            return Err(invalid("max_connections", "must be at least 1"));
        }
        if self.connect_timeout.is_zero() {
            return Err(invalid("connect_timeout", "must be above 0"));
        }
        if !(4096..=64 * 1024 * 1024).contains(&self.copy_buffer_bytes) {
            return Err(invalid("copy_buffer", "must be between 4KiB and 64MiB"));
        }
        if let Some(n) = self.socket_buffer_bytes
            && !(4096..=256 * 1024 * 1024).contains(&n)
        {
            return Err(invalid("socket_buffer", "must be between 4KiB and 256MiB"));
        }
        if self.keepalive_idle < Duration::from_secs(1) {
            return Err(invalid("keepalive_idle", "must be at least 1s"));
        }
        if self.keepalive_interval < Duration::from_secs(1) {
            return Err(invalid("keepalive_interval", "must be at least 1s"));
        }
        if self.keepalive_retries == 0 {
            return Err(invalid("keepalive_retries", "must be at least 1"));
        }
        if self.user_timeout < Duration::from_secs(1) {
            return Err(invalid("user_timeout", "must be at least 1s"));
        }
        if self.stall.min.is_zero() || self.stall.max < self.stall.min {
            return Err(invalid(
                "stall.min",
                "must be above 0 and at most stall.max",
            ));
        }
        if self.stall.factor == 0 {
            return Err(invalid("stall.factor", "must be at least 1"));
        }
        if self.stall.min_streaming.is_zero() {
            return Err(invalid("stall.min_streaming", "must be above 0"));
        }
        if self.handshake_timeout.is_zero() {
            return Err(invalid("handshake_timeout", "must be above 0"));
        }
        if !(1024..=16 * 1024 * 1024).contains(&self.max_login_packet_bytes) {
            return Err(invalid(
                "max_login_packet",
                "must be between 1KiB and 16MiB",
            ));
        }
        if !(2 * 1024 * 1024..=1024 * 1024 * 1024).contains(&self.max_packet_bytes) {
            return Err(invalid(
                "max_packet",
                "must be between 2MiB (clone needs 2 MiB) and 1GiB",
            ));
        }
        if self.resume_timeout < Duration::from_secs(1) {
            return Err(invalid("resume_timeout", "must be at least 1s"));
        }
        if let Some(token) = &self.admin_token {
            // The reasons never quote the token.
            let token = token.expose();
            if token.len() < MIN_TOKEN_LEN {
                return Err(invalid(
                    "admin_token",
                    format!("must be at least {MIN_TOKEN_LEN} characters"),
                ));
            }
            if !token.bytes().all(|b| b.is_ascii_graphic()) {
                return Err(invalid(
                    "admin_token",
                    "must be printable ASCII without spaces",
                ));
            }
        }
        if let Some(dir) = &self.state_dir
            && dir.as_os_str().is_empty()
        {
            return Err(invalid("state_dir", "must not be empty"));
        }
        self.validate_tls()?;
        self.validate_tunnel()
    }

    /// A pair's tunnel needs its certificate, key and CA unless it is explicitly plain.
    fn validate_tunnel(&self) -> Result<(), RelayError> {
        let t = &self.tunnel;
        if t.plain && (t.cert.is_some() || t.key.is_some() || t.ca.is_some()) {
            return Err(invalid(
                "tunnel.plain",
                "a plain tunnel takes no tunnel.cert, tunnel.key or tunnel.ca: give either --tunnel-plain or the certificates",
            ));
        }
        if (self.peer.is_some() || self.peer_listen.is_some()) && !t.plain {
            for (field, given) in [
                ("tunnel.cert", t.cert.is_some()),
                ("tunnel.key", t.key.is_some()),
                ("tunnel.ca", t.ca.is_some()),
            ] {
                if !given {
                    return Err(invalid(
                        field,
                        "missing: the tunnel is mutual TLS (give --tunnel-cert, --tunnel-key and --tunnel-ca, or --tunnel-plain)",
                    ));
                }
            }
        }
        if t.memory_bytes < 1024 * 1024 {
            return Err(invalid("tunnel.memory", "must be at least 1MiB"));
        }
        if t.bridge < Duration::from_secs(1) {
            return Err(invalid("tunnel.bridge", "must be at least 1s"));
        }
        if t.timeout < Duration::from_millis(500) || t.timeout >= t.bridge {
            return Err(invalid(
                "tunnel.timeout",
                "must be at least 500ms and below tunnel.bridge",
            ));
        }
        Ok(())
    }

    /// The TLS modes must fit together, and each file they need must be named.
    fn validate_tls(&self) -> Result<(), RelayError> {
        use ClientTlsMode as C;
        use ServerTlsMode as S;
        match (self.client_tls_mode, self.server_tls_mode) {
            (C::Passthrough, S::AsClient) => {}
            (C::Passthrough, _) => {
                return Err(invalid(
                    "client_tls_mode",
                    "passthrough needs server_tls_mode = as-client (the recipient's own TLS goes to the donor)",
                ));
            }
            _ => {}
        }
        if self.client_tls_cert.is_some() != self.client_tls_key.is_some() {
            return Err(invalid(
                "client_tls_key",
                "client_tls_cert and client_tls_key go together",
            ));
        }
        if self.client_tls_ca.is_some() && self.client_tls_mode != C::Required {
            return Err(invalid(
                "client_tls_ca",
                "needs client_tls_mode = required: a recipient without TLS has no certificate to check",
            ));
        }
        if !self.client_tls_allowed_subjects.is_empty() && self.client_tls_ca.is_none() {
            return Err(invalid(
                "client_tls_allowed_subjects",
                "needs client_tls_ca: only verified certificates have subjects to check",
            ));
        }
        if let Some(bad) = self
            .client_tls_allowed_subjects
            .iter()
            .find(|s| s.trim().is_empty() || s.trim() != s.as_str())
        {
            return Err(invalid(
                "client_tls_allowed_subjects",
                format!("{bad:?}: an entry must be a name without surrounding spaces"),
            ));
        }
        if self.server_tls_cert.is_some() != self.server_tls_key.is_some() {
            return Err(invalid(
                "server_tls_key",
                "server_tls_cert and server_tls_key go together",
            ));
        }
        if self.server_tls_cert.is_some()
            && (self.server_tls_mode == S::Disabled || self.client_tls_mode == C::Passthrough)
        {
            return Err(invalid(
                "server_tls_cert",
                "the relay dials no TLS to donors with these modes, so it would present no certificate",
            ));
        }
        if self.server_tls_verify != ServerTlsVerify::Disabled && self.server_tls_ca.is_none() {
            return Err(invalid(
                "server_tls_ca",
                "needed when server_tls_verify is ca or identity",
            ));
        }
        if self.server_tls_verify != ServerTlsVerify::Disabled
            && (self.server_tls_mode == S::Disabled || self.client_tls_mode == C::Passthrough)
        {
            return Err(invalid(
                "server_tls_verify",
                "the relay dials no TLS to donors with these modes, so there is no certificate to verify",
            ));
        }
        Ok(())
    }
}

/// Shortest admin token accepted.
pub const MIN_TOKEN_LEN: usize = 16;

/// How [`Config::merge`] failed: in the file (the reason names the key), or in validation.
enum Merge {
    File(String),
    Invalid(RelayError),
}

/// The ids of the settings' arguments, which are also their TOML keys (dotted for a table).
fn setting_ids() -> Vec<String> {
    Config::augment_args(clap::Command::new("settings"))
        .get_arguments()
        .map(|arg| arg.get_id().as_str().to_owned())
        .collect()
}

/// The defaults of a settings struct: its clap defaults, without reading the environment.
fn clap_defaults<T: Args + FromArgMatches>() -> T {
    let command = T::augment_args(clap::Command::new("defaults").no_binary_name(true))
        .mut_args(|arg| arg.env(None));
    let matches = command
        .try_get_matches_from(std::iter::empty::<&str>())
        .expect("the defaults parse");
    T::from_arg_matches(&matches).expect("the defaults parse")
}

/// Reads `text` as the settings file alone, so that an error names its key and line. The
/// message never quotes a value (a wrong key's value may be a secret).
fn read_file(text: &str) -> Result<Config, String> {
    let deserializer = toml::Deserializer::parse(text).map_err(|e| file_error(text, &e, ""))?;
    serde_path_to_error::deserialize(deserializer).map_err(|e| {
        let path = e.path().to_string();
        file_error(text, e.inner(), &path)
    })
}

/// `invalid KEY: MESSAGE (line N)`, or `MESSAGE (line N)` for an error of the file as a whole.
fn file_error(text: &str, error: &toml::de::Error, path: &str) -> String {
    let mut message = error.message().replace('\n', "; ");
    // An unknown key: the message names it; the list of known keys that follows is long.
    if message.starts_with("unknown field")
        && let Some(cut) = message.find(", expected")
    {
        message.truncate(cut);
        message = message.replacen("unknown field", "unknown key", 1);
    }
    let line = error.span().map(|span| {
        let before = &text.as_bytes()[..span.start.min(text.len())];
        before.iter().filter(|&&b| b == b'\n').count() + 1
    });
    let located = match line {
        Some(line) => format!("{message} (line {line})"),
        None => message,
    };
    if path.is_empty() || path == "." || located.starts_with("unknown key") {
        located
    } else {
        format!("invalid {path}: {located}")
    }
}

/// An upstream list in the file: one `"HOST:PORT"`, comma-separated ones, or an array.
fn one_or_many<'de, D: serde::Deserializer<'de>>(deserializer: D) -> Result<Vec<String>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum OneOrMany {
        One(String),
        Many(Vec<String>),
    }
    Ok(match OneOrMany::deserialize(deserializer)? {
        OneOrMany::One(list) => list
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(str::to_owned)
            .collect(),
        OneOrMany::Many(list) => list,
    })
}

fn invalid(field: &'static str, reason: impl Into<String>) -> RelayError {
    RelayError::Config {
        field,
        reason: reason.into(),
    }
}

/// `HOST:PORT` with a non-empty host and a port in 1..=65535 (`[v6]:PORT` accepted).
fn validate_host_port(s: &str) -> Result<(), String> {
    let (host, port) = s
        .rsplit_once(':')
        .ok_or_else(|| format!("{s:?} is not HOST:PORT"))?;
    if host.is_empty() || host == "[]" {
        return Err(format!("{s:?} has no host"));
    }
    match port.parse::<u16>() {
        Ok(0) | Err(_) => Err(format!("{s:?} has no valid port (1-65535)")),
        Ok(_) => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn field_of(config: &Config) -> &'static str {
        match config.validate() {
            Err(RelayError::Config { field, .. }) => field,
            other => panic!("expected a config error, got {other:?}"),
        }
    }

    fn command() -> clap::Command {
        Config::augment_args(clap::Command::new("clone-relay"))
    }

    /// Settings from `args` (no environment) and a file's text.
    fn merged(args: &[&str], file: Option<&str>) -> Result<Config, String> {
        let matches = command()
            .mut_args(|arg| arg.env(None))
            .try_get_matches_from(std::iter::once("clone-relay").chain(args.iter().copied()))
            .map_err(|e| e.to_string())?;
        Config::merge(&matches, file).map_err(|e| match e {
            Merge::File(reason) => reason,
            Merge::Invalid(e) => e.to_string(),
        })
    }

    #[test]
    fn limits_come_from_flags_and_the_file_with_overrides_per_direction() {
        let c = merged(
            &["--upstream", "db:3306", "--session-rate", "20MiB/s"],
            None,
        )
        .unwrap();
        assert_eq!(c.limits.session, Some(20 << 20));
        assert_eq!(c.limits.targets().session, Caps::both(Some(20 << 20)));
        assert_eq!(c.limits.targets().relay, Caps::both(None));

        let file = "upstream = \"db:3306\"\n[limits]\nrelay = \"1Gbit/s\"\nsession_to_recipient = \"1.5MB/s\"\n";
        let c = merged(&["--rate-to-donor", "1MiB/s"], Some(file)).unwrap();
        let targets = c.limits.targets();
        assert_eq!(targets.relay.to_recipient, Some(125_000_000));
        assert_eq!(targets.relay.to_donor, Some(1 << 20));
        assert_eq!(targets.session.to_recipient, Some(1_500_000));
        assert_eq!(targets.session.to_donor, None);
        assert_eq!(
            LimitSettings::from_file(file).unwrap(),
            LimitSettings {
                relay_to_donor: None,
                ..c.limits
            }
        );

        let err = merged(&["--upstream", "db:3306", "--rate", "fast"], None).unwrap_err();
        assert!(err.contains("rate") && err.contains("fast"), "{err}");
        let err = merged(
            &[],
            Some("upstream = \"db:3306\"\n[limits]\nsession = \"10MiB\"\n"),
        )
        .unwrap_err();
        assert!(err.contains("session") && err.contains("/s"), "{err}");
        let err = LimitSettings::from_file("[limits]\nsesion = \"1MiB/s\"\n").unwrap_err();
        assert!(err.contains("sesion"), "{err}");
        // Written back as read.
        let round = toml::to_string(&c).unwrap();
        assert!(round.contains("relay = \"125000000B/s\""), "{round}");
    }

    #[test]
    fn clap_accepts_the_command() {
        command().debug_assert();
    }

    #[test]
    fn defaults_are_valid() {
        Config::new("db.example:3306").validate().unwrap();
        Config::new("[::1]:3306").validate().unwrap();
    }

    #[test]
    fn defaults_are_the_documented_ones() {
        let c = Config::new("db:3306");
        assert_eq!(c.upstreams, ["db:3306"]);
        assert_eq!(c.max_connections, 1024);
        assert_eq!(c.connect_timeout, Duration::from_secs(5));
        assert_eq!(c.copy_buffer_bytes, 1 << 20);
        assert_eq!(c.socket_buffer_bytes, None);
        assert_eq!(c.keepalive_idle, Duration::from_secs(30));
        assert_eq!(c.keepalive_interval, Duration::from_secs(10));
        assert_eq!(c.keepalive_retries, 3);
        assert_eq!(c.user_timeout, Duration::from_secs(60));
        assert!(c.stall.enabled);
        assert_eq!(c.stall.min, Duration::from_secs(8));
        assert_eq!(c.stall.max, Duration::from_secs(60));
        assert_eq!(c.stall.factor, 4);
        assert_eq!(c.stall.min_streaming, Duration::from_secs(2));
        assert_eq!(c.reconnect_dial_timeout, Duration::from_secs(240));
        assert_eq!(c.shutdown_grace, Duration::from_secs(30));
        assert_eq!(c.handshake_timeout, Duration::from_secs(10));
        assert_eq!(c.max_login_packet_bytes, 64 * 1024);
        assert_eq!(c.max_packet_bytes, 64 * 1024 * 1024);
        assert_eq!(c.resume_timeout, Duration::from_secs(360));
        assert_eq!(c.listen, None);
        assert_eq!(c.admin, None);
        assert!(c.admin_token.is_none());
        assert_eq!(c.state_dir, None);
        assert!(c.upstream_probe);
        assert_eq!(c.log_format, LogFormat::Human);
        assert_eq!(StallSettings::default().min, Duration::from_secs(8));
    }

    #[test]
    fn bad_upstream_is_named() {
        for bad in ["db", ":3306", "db:", "db:0", "db:70000", "db:x"] {
            assert_eq!(field_of(&Config::new(bad)), "upstream", "{bad}");
        }
    }

    #[test]
    fn bad_numbers_are_named() {
        let mut c = Config::new("db:3306");
        c.max_connections = 0;
        assert_eq!(field_of(&c), "max_connections");

        let mut c = Config::new("db:3306");
        c.copy_buffer_bytes = 10;
        assert_eq!(field_of(&c), "copy_buffer");

        let mut c = Config::new("db:3306");
        c.socket_buffer_bytes = Some(1);
        assert_eq!(field_of(&c), "socket_buffer");

        let mut c = Config::new("db:3306");
        c.connect_timeout = Duration::ZERO;
        assert_eq!(field_of(&c), "connect_timeout");

        let mut c = Config::new("db:3306");
        c.stall.max = Duration::from_secs(1);
        assert_eq!(field_of(&c), "stall.min");

        let mut c = Config::new("db:3306");
        c.admin_token = Some(Secret::new("short"));
        assert_eq!(field_of(&c), "admin_token");
    }

    #[test]
    fn flags_take_units() {
        let c = merged(
            &[
                "--upstream",
                "a:1,b:2",
                "--connect-timeout",
                "250ms",
                "--copy-buffer",
                "1MiB",
                "--socket-buffer",
                "65536",
                "--stall-min",
                "2s",
                "--stall-max",
                "1m",
                "--no-stall-detection",
                "--no-upstream-probe",
                "--log-format",
                "json",
            ],
            None,
        )
        .unwrap();
        assert_eq!(c.upstreams, ["a:1", "b:2"]);
        assert_eq!(c.connect_timeout, Duration::from_millis(250));
        assert_eq!(c.copy_buffer_bytes, 1 << 20);
        assert_eq!(c.socket_buffer_bytes, Some(65536));
        assert_eq!(c.stall.min, Duration::from_secs(2));
        assert_eq!(c.stall.max, Duration::from_secs(60));
        assert!(!c.stall.enabled);
        assert!(!c.upstream_probe);
        assert_eq!(c.log_format, LogFormat::Json);
    }

    #[test]
    fn a_duration_without_unit_is_refused() {
        let e = merged(&["--upstream", "a:1", "--connect-timeout", "5"], None).unwrap_err();
        assert!(
            e.contains("--connect-timeout") && e.contains("unit is needed"),
            "{e}"
        );
        let e = merged(&["--upstream", "a:1"], Some("connect_timeout = 5")).unwrap_err();
        assert!(
            e.contains("connect_timeout") && e.contains("unit is needed"),
            "{e}"
        );
        let e = merged(&["--upstream", "a:1"], Some("[stall]\nmin = \"8\"")).unwrap_err();
        assert!(
            e.contains("stall.min") && e.contains("unit is needed"),
            "{e}"
        );
        assert!(e.contains("line 2"), "{e}");
    }

    #[test]
    fn the_file_gives_settings_and_flags_override_it() {
        let file = r#"
            listen = "127.0.0.1:3307"
            upstream = ["file-a:3306", "file-b:3306"]
            connect_timeout = "2s"
            copy_buffer = "64KiB"
            max_packet = 33554432
            admin = "127.0.0.1:9104"
            upstream_probe = false
            [stall]
            min = "3s"
            factor = 2
        "#;
        let c = merged(&[], Some(file)).unwrap();
        assert_eq!(c.listen, Some("127.0.0.1:3307".parse().unwrap()));
        assert_eq!(c.upstreams, ["file-a:3306", "file-b:3306"]);
        assert_eq!(c.connect_timeout, Duration::from_secs(2));
        assert_eq!(c.copy_buffer_bytes, 64 * 1024);
        assert_eq!(c.max_packet_bytes, 32 << 20);
        assert_eq!(c.admin, Some("127.0.0.1:9104".parse().unwrap()));
        assert!(!c.upstream_probe);
        assert_eq!(c.stall.min, Duration::from_secs(3));
        assert_eq!(c.stall.factor, 2);
        // Keys the file leaves out keep their defaults.
        assert_eq!(c.stall.max, Duration::from_secs(60));
        assert_eq!(c.handshake_timeout, Duration::from_secs(10));

        let c = merged(
            &[
                "--upstream",
                "flag:3306",
                "--connect-timeout",
                "7s",
                "--stall-factor",
                "9",
            ],
            Some(file),
        )
        .unwrap();
        assert_eq!(c.upstreams, ["flag:3306"]);
        assert_eq!(c.connect_timeout, Duration::from_secs(7));
        assert_eq!(c.stall.factor, 9);
        // Untouched by flags: the file's values, not the defaults.
        assert_eq!(c.copy_buffer_bytes, 64 * 1024);
        assert_eq!(c.stall.min, Duration::from_secs(3));
        assert!(!c.upstream_probe);
    }

    #[test]
    fn unknown_keys_are_refused_with_the_key_named() {
        let e = merged(&[], Some("upstream = \"a:1\"\nconect_timeout = \"5s\"")).unwrap_err();
        assert!(e.contains("conect_timeout") && e.contains("line 2"), "{e}");
        let e = merged(&[], Some("upstream = \"a:1\"\n[stall]\nminimum = \"5s\"")).unwrap_err();
        assert!(e.contains("minimum"), "{e}");
        // The old unit-suffixed names are gone.
        let e = merged(&[], Some("upstream = \"a:1\"\ncopy_buffer_bytes = 4096")).unwrap_err();
        assert!(e.contains("copy_buffer_bytes"), "{e}");
    }

    #[test]
    fn bad_values_in_the_file_name_the_key() {
        let e = merged(&[], Some("upstream = \"a:1\"\ncopy_buffer = \"64MB\"")).unwrap_err();
        assert!(e.starts_with("invalid copy_buffer:"), "{e}");
        let e = merged(&[], Some("upstream = \"a:1\"\nmax_connections = \"many\"")).unwrap_err();
        assert!(e.starts_with("invalid max_connections:"), "{e}");
        let e = merged(&[], Some("upstream = \"a:1\"\nlog_format = \"xml\"")).unwrap_err();
        assert!(e.starts_with("invalid log_format:"), "{e}");
        let e = merged(&[], Some("upstream = \"a:1\"\ncopy_buffer = 10")).unwrap_err();
        assert!(e.starts_with("invalid copy_buffer:"), "{e}");
        let e = merged(&[], Some("upstream = [")).unwrap_err();
        assert!(e.contains("line 1"), "{e}");
    }

    #[test]
    fn the_token_is_never_shown() {
        let token = "correct-horse-battery-staple";
        let c = merged(
            &["--upstream", "a:1", "--admin-token", token],
            Some("upstream = \"b:1\""),
        )
        .unwrap();
        assert_eq!(c.admin_token.as_ref().map(Secret::expose), Some(token));
        assert!(!format!("{c:?}").contains(token));
        assert!(!c.to_toml().unwrap().contains(token));
        let secret = c.admin_token.as_ref().unwrap();
        assert!(secret.matches(token));
        assert!(!secret.matches("correct-horse-battery-stapl"));
        assert!(!secret.matches(""));
        assert_eq!(format!("{secret} {secret:?}"), "*** ***");

        // Only from the environment (or the flag): a settings file holding it is refused.
        let e = merged(
            &[],
            Some(&format!("upstream = \"a:1\"\nadmin_token = \"{token}\"")),
        )
        .unwrap_err();
        assert!(
            e.contains("admin_token")
                && e.contains("CLONE_RELAY_ADMIN_TOKEN")
                && !e.contains(token),
            "{e}"
        );

        let e = merged(&[], Some("upstream = \"a:1\"\nadmin_token = 123456789")).unwrap_err();
        assert!(e.contains("admin_token") && !e.contains("123456789"), "{e}");
        let e = merged(&["--upstream", "a:1", "--admin-token", "hunter2"], None).unwrap_err();
        assert!(e.contains("admin_token") && !e.contains("hunter2"), "{e}");
    }

    #[test]
    fn settings_round_trip_through_toml() {
        let mut c = Config::new("db:3306");
        c.socket_buffer_bytes = Some(1 << 20);
        c.stall.enabled = false;
        c.listen = Some("127.0.0.1:1".parse().unwrap());
        let text = c.to_toml().unwrap();
        let back = merged(&[], Some(&text)).unwrap();
        assert_eq!(back.to_toml().unwrap(), text);
        assert!(text.contains("copy_buffer = \"1MiB\""), "{text}");
        assert!(text.contains("connect_timeout = \"5s\""), "{text}");
    }

    #[test]
    fn tls_modes_come_from_flags_and_the_file_and_must_fit_together() {
        let c = merged(&[], Some("upstream = \"a:1\"")).unwrap();
        assert_eq!(c.client_tls_mode, ClientTlsMode::Preferred);
        assert_eq!(c.server_tls_mode, ServerTlsMode::AsClient);
        assert_eq!(c.server_tls_verify, ServerTlsVerify::Disabled);
        let file =
            "upstream = \"a:1\"\nclient_tls_mode = \"required\"\nserver_tls_mode = \"required\"";
        let c = merged(&[], Some(file)).unwrap();
        assert_eq!(c.client_tls_mode, ClientTlsMode::Required);
        let c = merged(
            &[
                "--client-tls-mode",
                "disabled",
                "--server-tls-mode",
                "disabled",
            ],
            Some(file),
        )
        .unwrap();
        assert_eq!(c.client_tls_mode, ClientTlsMode::Disabled);

        merged(
            &["--upstream", "a:1", "--client-tls-mode", "passthrough"],
            None,
        )
        .unwrap();
        let e = merged(
            &[
                "--upstream",
                "a:1",
                "--client-tls-mode",
                "passthrough",
                "--server-tls-mode",
                "required",
            ],
            None,
        )
        .unwrap_err();
        assert!(e.contains("invalid client_tls_mode"), "{e}");
        // TLS on one leg only, either way.
        for (client, server) in [("disabled", "required"), ("required", "disabled")] {
            let c = merged(
                &[
                    "--upstream",
                    "a:1",
                    "--client-tls-mode",
                    client,
                    "--server-tls-mode",
                    server,
                ],
                None,
            )
            .unwrap();
            assert_ne!(
                c.client_tls_mode == ClientTlsMode::Disabled,
                c.server_tls_mode == ServerTlsMode::Disabled
            );
        }
        let e = merged(&["--upstream", "a:1", "--server-tls-verify", "ca"], None).unwrap_err();
        assert!(e.contains("invalid server_tls_ca"), "{e}");
        let e = merged(
            &[],
            Some("upstream = \"a:1\"\nclient_tls_mode = \"sometimes\""),
        )
        .unwrap_err();
        assert!(e.contains("client_tls_mode"), "{e}");
    }

    #[test]
    fn mutual_tls_settings_come_from_flags_and_the_file_and_are_checked() {
        let c = merged(
            &[
                "--upstream",
                "a:1",
                "--client-tls-mode",
                "required",
                "--client-tls-ca",
                "/etc/relay/recipients-ca.pem",
                "--client-tls-allowed-subjects",
                "recipient-a,10.0.0.7",
                "--client-tls-allowed-subjects",
                "recipient-b.example",
                "--server-tls-cert",
                "/etc/relay/client.pem",
                "--server-tls-key",
                "/etc/relay/client-key.pem",
            ],
            None,
        )
        .unwrap();
        assert_eq!(
            c.client_tls_ca.as_deref(),
            Some(Path::new("/etc/relay/recipients-ca.pem"))
        );
        assert_eq!(
            c.client_tls_allowed_subjects,
            ["recipient-a", "10.0.0.7", "recipient-b.example"]
        );
        assert_eq!(
            c.server_tls_cert.as_deref(),
            Some(Path::new("/etc/relay/client.pem"))
        );
        let text = c.to_toml().unwrap();
        assert_eq!(merged(&[], Some(&text)).unwrap().to_toml().unwrap(), text);

        let file = "upstream = \"a:1\"\nclient_tls_mode = \"required\"\n\
                    client_tls_ca = \"ca.pem\"\nclient_tls_allowed_subjects = \"x, y\"";
        let c = merged(&[], Some(file)).unwrap();
        assert_eq!(c.client_tls_allowed_subjects, ["x", "y"]);

        let field = |args: &[&str]| {
            let mut all = vec!["--upstream", "a:1"];
            all.extend_from_slice(args);
            merged(&all, None).unwrap_err()
        };
        // A plaintext recipient has no certificate to check.
        let e = field(&["--client-tls-ca", "ca.pem"]);
        assert!(e.contains("invalid client_tls_ca"), "{e}");
        let e = field(&[
            "--client-tls-mode",
            "required",
            "--client-tls-allowed-subjects",
            "x",
        ]);
        assert!(e.contains("invalid client_tls_allowed_subjects"), "{e}");
        let e = field(&[
            "--client-tls-mode",
            "required",
            "--client-tls-ca",
            "ca.pem",
            "--client-tls-allowed-subjects",
            "x,,y",
        ]);
        assert!(e.contains("invalid client_tls_allowed_subjects"), "{e}");
        let e = field(&["--server-tls-cert", "c.pem"]);
        assert!(e.contains("--server-tls-key"), "{e}");
        let mut c = Config::new("a:1");
        c.server_tls_cert = Some("c.pem".into());
        assert_eq!(field_of(&c), "server_tls_key");
        c.server_tls_key = Some("k.pem".into());
        c.validate().unwrap();
        c.client_tls_mode = ClientTlsMode::Disabled;
        c.server_tls_mode = ServerTlsMode::Disabled;
        assert_eq!(field_of(&c), "server_tls_cert");
    }
}
