//! The `[limits]` section: bandwidth caps per relay and per clone session.

use std::fmt;

use clap::Args;
use serde::{Deserialize, Serialize};

use crate::limit::{Caps, Targets};

use super::units::{self, parse_rate};

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
