//! The `[stall]` section: when a connection the donor owes data counts as dead.

use std::time::Duration;

use clap::{ArgAction, Args};
use serde::{Deserialize, Serialize};

use super::load::clap_defaults;
use super::units::{self, parse_duration};

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

impl Default for StallSettings {
    fn default() -> Self {
        clap_defaults()
    }
}
