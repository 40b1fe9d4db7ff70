//! The `[tunnel]` section: a relay pair's tunnel.

use std::path::PathBuf;
use std::time::Duration;

use clap::Args;
use serde::{Deserialize, Serialize};

use super::load::clap_defaults;
use super::units::{self, parse_duration, parse_size};

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

    /// The longest outage of the tunnel the pair bridges while holding MySQL's connections,
    /// counted from the loss (`tunnel.timeout` after the link's last byte); past it both relays
    /// reset their sides and the recipient's CLONE resumes by itself. With the timeout, below
    /// the recipient's own patience on a silent connection (`net_read_timeout`, 30 s by
    /// default), so that the donor has let go of the clone before the recipient resumes.
    #[arg(
        id = "tunnel.bridge",
        long = "tunnel-bridge",
        value_name = "DURATION",
        default_value = "25s",
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
