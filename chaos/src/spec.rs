//! What a fault is, as a test, a config file or the control API declares it. Values carry their
//! units as the relay's settings do (`latency = "40ms"`, `rate = "20MiB/s"`, `average = "16KiB"`,
//! through [`plumbing::units`]); the Rust fields keep theirs in their names (`latency_ms`). The
//! older keys with the unit in the name and a bare number (`latency_ms = 40`) are read too, with a
//! warning, for this release only. [`FaultSpec::validate`] names the bad field.

use serde::{Deserialize, Serialize};

/// Which way the fault acts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Direction {
    /// Client to server (recipient to donor).
    Upstream,
    /// Server to client (donor to recipient).
    Downstream,
    #[default]
    Both,
}

impl Direction {
    pub fn includes(self, dir: Direction) -> bool {
        self == Direction::Both || self == dir
    }
}

/// How a flap takes the link down.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FlapMode {
    /// Bytes stop, nothing is closed (a silent outage).
    #[default]
    Blackhole,
    /// Connections are reset when the link goes down.
    Reset,
}

fn default_segment_bytes() -> usize {
    1448
}

fn default_retransmit_ms() -> u64 {
    200
}

/// The faults, with their parameters.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum FaultKind {
    /// Each chunk arrives `latency_ms` (± `jitter_ms`) later; the stream stays pipelined.
    Latency {
        #[serde(
            rename = "latency",
            alias = "latency_ms",
            with = "plumbing::units::millis"
        )]
        latency_ms: u64,
        #[serde(
            default,
            rename = "jitter",
            alias = "jitter_ms",
            with = "plumbing::units::millis"
        )]
        jitter_ms: u64,
    },
    /// A rate cap, per connection, or shared by every connection naming the same group. It is
    /// paced by hand (each piece waits for the next free send time), not by the relay's governor
    /// limiter, so a seeded run replays the same waits; it models a thin link, and is not the
    /// relay's own bandwidth cap (see clone-relay's `limit` module).
    Bandwidth {
        #[serde(
            rename = "rate",
            alias = "rate_bytes_per_sec",
            with = "plumbing::units::rate"
        )]
        rate_bytes_per_sec: u64,
        #[serde(default)]
        shared_group: Option<String>,
    },
    /// Writes cut into pieces of `average_bytes` (± `variation_bytes`), `delay_us` apart.
    Slicer {
        #[serde(
            rename = "average",
            alias = "average_bytes",
            with = "plumbing::units::size"
        )]
        average_bytes: usize,
        #[serde(
            default,
            rename = "variation",
            alias = "variation_bytes",
            with = "plumbing::units::size"
        )]
        variation_bytes: usize,
        #[serde(
            default,
            rename = "delay",
            alias = "delay_us",
            with = "plumbing::units::micros"
        )]
        delay_us: u64,
    },
    /// A real RST (zero linger) on both sides when the fault becomes active.
    Reset {},
    /// Bytes stop and nothing is closed, until the fault ends.
    Blackhole {},
    /// Bytes stop; after `timeout_ms` the connection is closed.
    Timeout {
        #[serde(
            rename = "timeout",
            alias = "timeout_ms",
            with = "plumbing::units::millis"
        )]
        timeout_ms: u64,
    },
    /// The connection is closed after `bytes` bytes in this direction.
    LimitData {
        #[serde(
            rename = "after_data",
            alias = "bytes",
            with = "plumbing::units::bytes"
        )]
        bytes: u64,
    },
    /// The end of the stream is passed on `delay_ms` late.
    SlowClose {
        #[serde(rename = "delay", alias = "delay_ms", with = "plumbing::units::millis")]
        delay_ms: u64,
    },
    /// Emulated packet loss: each `segment_bytes` segment is, with `probability`, held back for
    /// `retransmit_ms`, so the stream stalls as TCP does under loss; no byte is lost or reordered.
    Loss {
        probability: f64,
        #[serde(
            default = "default_segment_bytes",
            rename = "segment",
            alias = "segment_bytes",
            with = "plumbing::units::size"
        )]
        segment_bytes: usize,
        #[serde(
            default = "default_retransmit_ms",
            rename = "retransmit",
            alias = "retransmit_ms",
            with = "plumbing::units::millis"
        )]
        retransmit_ms: u64,
    },
    /// One MySQL classic packet (`payload_hex`, sequence id 0) inserted at the first boundary
    /// between logical packets at or after `after_bytes` of the stream; the stream's own bytes
    /// pass unchanged. It reads the (uncompressed) framing from the connection's first byte, so
    /// it takes no trigger. For a message a peer does not know, well framed.
    InjectPacket {
        #[serde(
            rename = "after_data",
            alias = "after_bytes",
            with = "plumbing::units::bytes"
        )]
        after_bytes: u64,
        payload_hex: String,
    },
    /// The link goes down again and again, measured in one of two ways (exactly one is given):
    /// `period_ms`, for `down_ms` at the end of every period of time; or `period_bytes`, at every
    /// `period_bytes` bytes of the connection's stream in the fault's direction (a reset there,
    /// or those bytes held for `down_ms`), so that where it lands depends on bytes alone.
    Flap {
        #[serde(
            default,
            skip_serializing_if = "Option::is_none",
            rename = "period",
            alias = "period_ms",
            with = "plumbing::units::option_millis"
        )]
        period_ms: Option<u64>,
        #[serde(
            default,
            skip_serializing_if = "Option::is_none",
            rename = "period_data",
            alias = "period_bytes",
            with = "plumbing::units::option_bytes"
        )]
        period_bytes: Option<u64>,
        #[serde(
            default,
            rename = "down",
            alias = "down_ms",
            with = "plumbing::units::millis"
        )]
        down_ms: u64,
        #[serde(default)]
        mode: FlapMode,
    },
}

impl FaultKind {
    pub fn name(&self) -> &'static str {
        match self {
            FaultKind::Latency { .. } => "latency",
            FaultKind::Bandwidth { .. } => "bandwidth",
            FaultKind::Slicer { .. } => "slicer",
            FaultKind::Reset {} => "reset",
            FaultKind::Blackhole {} => "blackhole",
            FaultKind::Timeout { .. } => "timeout",
            FaultKind::LimitData { .. } => "limit_data",
            FaultKind::SlowClose { .. } => "slow_close",
            FaultKind::Loss { .. } => "loss",
            FaultKind::Flap { .. } => "flap",
            FaultKind::InjectPacket { .. } => "inject_packet",
        }
    }
}

/// Which connections a fault applies to.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Target {
    /// Connection indexes (1 = the first the proxy accepted); all when absent.
    #[serde(default)]
    pub connections: Option<Vec<u64>>,
    /// Clone roles (`main`, `aux`, `worker`); applies only where the embedder knows roles.
    #[serde(default)]
    pub roles: Option<Vec<String>>,
}

/// When a fault becomes active; immediately when nothing is set. Several set: the latest.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Trigger {
    /// Since the proxy started (a schedule: the same moment for every connection).
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        rename = "at",
        alias = "at_ms",
        with = "plumbing::units::option_millis"
    )]
    pub at_ms: Option<u64>,
    /// Since the connection opened.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        rename = "after",
        alias = "after_ms",
        with = "plumbing::units::option_millis"
    )]
    pub after_ms: Option<u64>,
    /// Once this many bytes have passed in the fault's direction.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        rename = "after_data",
        alias = "after_bytes",
        with = "plumbing::units::option_bytes"
    )]
    pub after_bytes: Option<u64>,
}

fn one() -> f64 {
    1.0
}

/// One fault as declared.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FaultSpec {
    #[serde(default)]
    pub name: Option<String>,
    pub fault: FaultKind,
    #[serde(default)]
    pub direction: Direction,
    /// Probability that the fault applies to a given connection.
    #[serde(default = "one")]
    pub toxicity: f64,
    #[serde(default)]
    pub target: Target,
    #[serde(default)]
    pub trigger: Trigger,
    /// How long the fault stays active; for good when absent.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        rename = "duration",
        alias = "duration",
        with = "plumbing::units::option_millis"
    )]
    pub duration_ms: Option<u64>,
}

/// A fault parameter out of range; `field` is its path in the spec.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {reason}")]
pub struct SpecError {
    pub field: String,
    pub reason: String,
}

impl FaultSpec {
    /// A fault on both directions of every connection, active at once and for good.
    pub fn new(fault: FaultKind) -> Self {
        FaultSpec {
            name: None,
            fault,
            direction: Direction::Both,
            toxicity: 1.0,
            target: Target::default(),
            trigger: Trigger::default(),
            duration_ms: None,
        }
    }

    pub fn direction(mut self, direction: Direction) -> Self {
        self.direction = direction;
        self
    }

    pub fn at_ms(mut self, at_ms: u64) -> Self {
        self.trigger.at_ms = Some(at_ms);
        self
    }

    pub fn after_ms(mut self, after_ms: u64) -> Self {
        self.trigger.after_ms = Some(after_ms);
        self
    }

    pub fn after_bytes(mut self, after_bytes: u64) -> Self {
        self.trigger.after_bytes = Some(after_bytes);
        self
    }

    pub fn lasting_ms(mut self, duration_ms: u64) -> Self {
        self.duration_ms = Some(duration_ms);
        self
    }

    pub fn toxicity(mut self, toxicity: f64) -> Self {
        self.toxicity = toxicity;
        self
    }

    pub fn connections(mut self, connections: Vec<u64>) -> Self {
        self.target.connections = Some(connections);
        self
    }

    /// The name shown in logs and the decision log.
    pub fn label(&self) -> String {
        self.name
            .clone()
            .unwrap_or_else(|| self.fault.name().to_string())
    }

    /// Checks every parameter.
    pub fn validate(&self) -> Result<(), SpecError> {
        let bad = |field: &str, reason: &str| {
            Err(SpecError {
                field: field.to_string(),
                reason: reason.to_string(),
            })
        };
        let probability = |p: f64| (0.0..=1.0).contains(&p);
        if !probability(self.toxicity) {
            return bad("toxicity", "must be between 0 and 1");
        }
        if self.duration_ms == Some(0) {
            return bad("duration", "must be above 0");
        }
        match &self.fault {
            FaultKind::Latency {
                latency_ms,
                jitter_ms,
            } if jitter_ms > latency_ms => bad("fault.jitter", "must not exceed latency"),
            FaultKind::Bandwidth {
                rate_bytes_per_sec: 0,
                ..
            } => bad("fault.rate", "must be above 0"),
            FaultKind::Slicer {
                average_bytes: 0, ..
            } => bad("fault.average", "must be above 0"),
            FaultKind::Slicer {
                average_bytes,
                variation_bytes,
                ..
            } if variation_bytes >= average_bytes => {
                bad("fault.variation", "must be below average")
            }
            FaultKind::Timeout { timeout_ms: 0 } => bad("fault.timeout", "must be above 0"),
            FaultKind::Loss { probability: p, .. } if !probability(*p) || *p >= 1.0 => {
                bad("fault.probability", "must be at least 0 and below 1")
            }
            FaultKind::Loss {
                segment_bytes: 0, ..
            } => bad("fault.segment", "must be above 0"),
            FaultKind::InjectPacket { payload_hex, .. } => match unhex(payload_hex) {
                None => bad("fault.payload_hex", "must be hex digits, two per byte"),
                Some(p) if p.is_empty() || p.len() >= 0xff_ffff => bad(
                    "fault.payload_hex",
                    "must hold 1 to 16 777 214 bytes (one physical packet)",
                ),
                Some(_) if self.trigger != Trigger::default() => bad(
                    "trigger",
                    "inject_packet reads the framing from the connection's start: no trigger",
                ),
                Some(_) => Ok(()),
            },
            FaultKind::Flap {
                period_ms,
                period_bytes,
                down_ms,
                mode,
            } => match (period_ms, period_bytes) {
                (None, None) => bad("fault.period", "give period or period_data"),
                (Some(_), Some(_)) => {
                    bad("fault.period_data", "give period or period_data, not both")
                }
                (Some(period_ms), None) if *down_ms == 0 || down_ms >= period_ms => {
                    bad("fault.down", "must be above 0 and below period")
                }
                (None, Some(0)) => bad("fault.period_data", "must be above 0"),
                (None, Some(_)) if *mode == FlapMode::Blackhole && *down_ms == 0 => {
                    bad("fault.down", "must be above 0")
                }
                (None, Some(_)) if *mode == FlapMode::Reset && *down_ms != 0 => bad(
                    "fault.down",
                    "not used by a reset flap on period_data (the connection ends there)",
                ),
                _ => Ok(()),
            },
            _ => Ok(()),
        }
    }
}

/// The bytes of a hex string (two digits per byte), or `None` when it is not one.
pub fn unhex(hex: &str) -> Option<Vec<u8>> {
    if !hex.len().is_multiple_of(2) {
        return None;
    }
    (0..hex.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(hex.get(i..i + 2)?, 16).ok())
        .collect()
}

/// Checks a list of faults; the error's field starts with the fault's index.
pub fn validate_all(faults: &[FaultSpec]) -> Result<(), SpecError> {
    for (i, f) in faults.iter().enumerate() {
        f.validate().map_err(|e| SpecError {
            field: format!("faults[{i}].{}", e.field),
            reason: e.reason,
        })?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_a_fault_from_json_and_toml() {
        let json = r#"{"fault": {"type": "latency", "latency": "50ms", "jitter": "5ms"},
                       "direction": "downstream", "trigger": {"after_data": "1000B"}}"#;
        let spec: FaultSpec = serde_json::from_str(json).unwrap();
        assert_eq!(
            spec.fault,
            FaultKind::Latency {
                latency_ms: 50,
                jitter_ms: 5
            }
        );
        assert_eq!(spec.direction, Direction::Downstream);
        assert_eq!(spec.trigger.after_bytes, Some(1000));
        assert_eq!(spec.toxicity, 1.0);
        // The older keys with bare numbers read the same (with a warning).
        let older = r#"{"fault": {"type": "latency", "latency_ms": 50, "jitter_ms": 5},
                        "direction": "downstream", "trigger": {"after_bytes": 1000}}"#;
        assert_eq!(serde_json::from_str::<FaultSpec>(older).unwrap(), spec);
        // Written with units, under the new keys.
        let written = serde_json::to_value(&spec).unwrap();
        assert_eq!(written["fault"]["latency"], "50ms");
        assert_eq!(written["trigger"]["after_data"], 1000);
        let toml_spec: FaultSpec =
            toml::from_str("fault = { type = \"loss\", probability = 0.05 }").unwrap();
        assert!(matches!(
            toml_spec.fault,
            FaultKind::Loss {
                segment_bytes: 1448,
                ..
            }
        ));
    }

    #[test]
    fn unknown_fields_and_bad_values_are_named() {
        assert!(
            serde_json::from_str::<FaultSpec>(r#"{"fault": {"type": "reset"}, "colour": 1}"#)
                .is_err()
        );
        assert!(
            serde_json::from_str::<FaultSpec>(r#"{"fault": {"type": "latency", "ms": 1}}"#)
                .is_err()
        );
        let bad = [
            FaultSpec::new(FaultKind::Bandwidth {
                rate_bytes_per_sec: 0,
                shared_group: None,
            }),
            FaultSpec::new(FaultKind::Blackhole {}).toxicity(2.0),
        ];
        let err = validate_all(&bad).unwrap_err();
        assert_eq!(err.field, "faults[0].fault.rate");
        assert_eq!(bad[1].validate().unwrap_err().field, "toxicity");
        let flap = |period_ms, period_bytes, down_ms, mode| {
            FaultSpec::new(FaultKind::Flap {
                period_ms,
                period_bytes,
                down_ms,
                mode,
            })
            .validate()
            .map_err(|e| e.field)
        };
        let (hole, reset) = (FlapMode::Blackhole, FlapMode::Reset);
        assert_eq!(flap(Some(100), None, 100, reset).unwrap_err(), "fault.down");
        assert_eq!(flap(None, None, 10, hole).unwrap_err(), "fault.period");
        assert_eq!(
            flap(Some(100), Some(1000), 10, hole).unwrap_err(),
            "fault.period_data"
        );
        assert_eq!(
            flap(None, Some(0), 10, hole).unwrap_err(),
            "fault.period_data"
        );
        assert_eq!(flap(None, Some(1000), 0, hole).unwrap_err(), "fault.down");
        assert_eq!(flap(None, Some(1000), 10, reset).unwrap_err(), "fault.down");
        assert_eq!(flap(Some(100), None, 10, reset), Ok(()));
        assert_eq!(flap(None, Some(1000), 10, hole), Ok(()));
        assert_eq!(flap(None, Some(1000), 0, reset), Ok(()));
    }

    #[test]
    fn a_flap_reads_either_clock_and_older_specs_still_read() {
        let old: FaultSpec = toml::from_str(
            "fault = { type = \"flap\", period_ms = 10000, down_ms = 2000, mode = \"reset\" }",
        )
        .unwrap();
        assert_eq!(
            old.fault,
            FaultKind::Flap {
                period_ms: Some(10_000),
                period_bytes: None,
                down_ms: 2000,
                mode: FlapMode::Reset
            }
        );
        let bytes: FaultSpec = serde_json::from_str(
            r#"{"fault": {"type": "flap", "period_bytes": 1048576, "mode": "reset"}}"#,
        )
        .unwrap();
        assert_eq!(bytes.validate(), Ok(()));
        // Written back, the clock not used is left out, and the spec reads the same.
        let json = serde_json::to_string(&bytes).unwrap();
        assert!(!json.contains("period_ms"), "{json}");
        assert_eq!(serde_json::from_str::<FaultSpec>(&json).unwrap(), bytes);
    }

    #[test]
    fn an_injected_packet_is_checked_and_takes_no_trigger() {
        let spec: FaultSpec = toml::from_str(
            "fault = { type = \"inject_packet\", after_bytes = 8388608, payload_hex = \"77a1\" }\n\
             direction = \"downstream\"",
        )
        .unwrap();
        assert_eq!(spec.validate(), Ok(()));
        let field = |spec: &FaultSpec| spec.validate().unwrap_err().field;
        let mut odd = spec.clone();
        odd.fault = FaultKind::InjectPacket {
            after_bytes: 1,
            payload_hex: "7".into(),
        };
        assert_eq!(field(&odd), "fault.payload_hex");
        let mut empty = spec.clone();
        empty.fault = FaultKind::InjectPacket {
            after_bytes: 1,
            payload_hex: String::new(),
        };
        assert_eq!(field(&empty), "fault.payload_hex");
        assert_eq!(field(&spec.clone().after_bytes(10)), "trigger");
    }
}
