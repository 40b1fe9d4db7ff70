//! What a drill scenario is: the link between the relay and the donor (the chaos proxy's faults,
//! present from the start or injected once the clone has carried so many bytes), the relay's
//! settings, the clone's transport, and the outcome it must have. Every scenario is a TOML file:
//! the named ones are `harness/scenarios/built-in/*.toml` (built into the binary), custom ones
//! any file of the same keys; the values a file draws from the seed (`[draws]`) are put in
//! before it is read.
//!
//! Every fault lands where the bytes say, never at a moment: at a byte offset of a connection's
//! stream (the chaos proxy's `after_bytes` and `period_bytes`), or once the relay's clone session
//! has carried a number of bytes of clone data (an event). Offsets are drawn from the seed.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use chaos::rng::Rng;
use chaos::{Direction, FaultKind, FaultSpec};
use clone_relay::Config;
use clone_relay::session::DetectionKind;
use serde::Deserialize;

const MIB: u64 = 1024 * 1024;

/// The built-in scenarios' files (`harness/scenarios/built-in/`), by name, read as custom ones
/// are.
const BUILT_IN: [(&str, &str); 8] = [
    ("clean", include_str!("../../scenarios/built-in/clean.toml")),
    (
        "capped",
        include_str!("../../scenarios/built-in/capped.toml"),
    ),
    (
        "flaky-link",
        include_str!("../../scenarios/built-in/flaky-link.toml"),
    ),
    (
        "blackhole",
        include_str!("../../scenarios/built-in/blackhole.toml"),
    ),
    (
        "silent-death",
        include_str!("../../scenarios/built-in/silent-death.toml"),
    ),
    ("lossy", include_str!("../../scenarios/built-in/lossy.toml")),
    ("tls", include_str!("../../scenarios/built-in/tls.toml")),
    (
        "two-donors",
        include_str!("../../scenarios/built-in/two-donors.toml"),
    ),
];

/// The named scenarios, in the order `all` runs them.
pub const NAMES: [&str; 8] = [
    "clean",
    "capped",
    "flaky-link",
    "blackhole",
    "silent-death",
    "lossy",
    "tls",
    "two-donors",
];

/// How the scenario is laid out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Layout {
    /// One recipient cloning from the donor through the relay and the chaos proxy.
    Single,
    /// A relay in front of two donors (each behind a pass-through proxy that counts its
    /// connections) and two recipients cloning at once.
    TwoDonors,
}

/// What happens once the relay's clone session has carried `at_data_bytes` of clone data.
#[derive(Debug, Clone, PartialEq)]
pub struct Event {
    pub at_data_bytes: u64,
    pub action: Action,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Action {
    /// A fault added to the chaos proxy then, for `lasting` (for good when none).
    Fault {
        spec: Box<FaultSpec>,
        lasting: Option<Duration>,
    },
    /// The relay resets every connection of the session (as `POST /sessions/{id}/reset`).
    ResetSession,
}

/// The outcome a scenario must have.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Expect {
    /// The clone fails (a scenario that rehearses a failure); otherwise it completes with every
    /// table equal to the donor's.
    pub failure: bool,
    pub min_resumes: Option<u64>,
    pub max_resumes: Option<u64>,
    /// Findings the relay must record.
    pub detections: Vec<DetectionKind>,
    /// Findings it must not record.
    pub no_detections: Vec<DetectionKind>,
    /// The achieved rate within this fraction of the session cap.
    pub rate_within: Option<f64>,
    /// At least this many segments held back by the chaos proxy's emulated loss.
    pub min_losses: Option<u64>,
    /// Every connection with TLS on both legs.
    pub tls_both_legs: bool,
}

/// One scenario, ready to run.
#[derive(Debug, Clone)]
pub struct Scenario {
    pub name: String,
    pub description: String,
    /// Where the faults land, for the report (with the seed's draws).
    pub fault: String,
    pub layout: Layout,
    /// TLS on both legs (no `REQUIRE` clause); plaintext (`REQUIRE NO SSL`) otherwise.
    pub tls: bool,
    /// Faults on the chaos proxy from the start.
    pub faults: Vec<FaultSpec>,
    pub events: Vec<Event>,
    /// The relay's settings; its upstreams are filled in when the scenario runs.
    pub relay: Config,
    pub expect: Expect,
}

/// A value in `lo..hi` drawn from the seed; each `salt` gives another draw.
fn draw(seed: u64, salt: u64, lo: u64, hi: u64) -> u64 {
    lo + Rng::new(seed, 0, 0, salt).at(0) % (hi - lo)
}

fn mib(bytes: u64) -> f64 {
    bytes as f64 / MIB as f64
}

/// A cap on the donor-to-recipient direction, shared by every connection.
pub fn link(rate: u64) -> FaultSpec {
    FaultSpec::new(FaultKind::Bandwidth {
        rate_bytes_per_sec: rate,
        shared_group: Some("link".into()),
    })
    .direction(Direction::Downstream)
}

impl Scenario {
    /// A named scenario with its offsets drawn from `seed`; `None` for an unknown name.
    ///
    /// The recipient clones with the main connection (the chaos proxy's connection 1), the aux
    /// (2) and one worker (3); when the relay resets a clone the recipient reconnects (4, 5, 6).
    pub fn named(name: &str, seed: u64) -> Option<Scenario> {
        let (_, text) = BUILT_IN.iter().find(|(n, _)| *n == name)?;
        let s = Scenario::from_toml(text, name, seed)
            .unwrap_or_else(|e| panic!("the built-in scenario {name} reads: {e}"));
        Some(s)
    }

    /// Reads a scenario file (see [`ScenarioFile`]). Unknown keys and bad values are refused,
    /// naming the key and its line.
    pub fn from_file(path: &Path, seed: u64) -> Result<Scenario> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("reading scenario file {}", path.display()))?;
        let stem = path
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_else(|| "custom".into());
        Scenario::from_toml(&text, &stem, seed)
            .map_err(|e| anyhow::anyhow!("scenario file {}: {e}", path.display()))
    }

    /// A scenario from the text of a scenario file, its draws taken from `seed`;
    /// `default_name` when it names none.
    pub fn from_toml(text: &str, default_name: &str, seed: u64) -> Result<Scenario, String> {
        let text = with_draws(text, seed)?;
        let file: ScenarioFile = plumbing::toml_error::read(&text)?;
        file.into_scenario(default_name)
    }
}

/// A value drawn from the seed for a scenario file: a byte count in `from..to`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct DrawFile {
    #[serde(with = "plumbing::units::bytes")]
    from: u64,
    #[serde(with = "plumbing::units::bytes")]
    to: u64,
    /// Which draw of the seed: two draws with the same salt give the same value.
    salt: u64,
}

/// `text` with the values of its `[draws]` drawn from `seed` and put in: a string that is just
/// `"{name}"` becomes the byte count, `{name}` inside a longer string (a description) `12.3 MiB`.
fn with_draws(text: &str, seed: u64) -> Result<String, String> {
    let table: toml::Table = text
        .parse()
        .map_err(|e| plumbing::toml_error::describe(text, &e, ""))?;
    let Some(draws) = table.get("draws") else {
        return Ok(text.to_string());
    };
    let draws: BTreeMap<String, DrawFile> = draws
        .clone()
        .try_into()
        .map_err(|e: toml::de::Error| format!("invalid draws: {}", e.message()))?;
    let mut out = text.to_string();
    for (name, d) in draws {
        if d.to <= d.from {
            return Err(format!("invalid draws.{name}: to must be above from"));
        }
        let value = draw(seed, d.salt, d.from, d.to);
        out = out.replace(&format!("\"{{{name}}}\""), &value.to_string());
        out = out.replace(&format!("{{{name}}}"), &format!("{:.1} MiB", mib(value)));
    }
    Ok(out)
}

/// A scenario file. Every key is optional:
///
/// ```toml
/// name = "cross-zone"            # default: the file's name
/// description = "..."
/// tls = false                    # TLS on both legs, or REQUIRE NO SSL
/// link_rate = "40MiB/s"          # cap on the donor-to-recipient direction of the link
///
/// [relay]                        # clone-relay's settings, as in its config file
/// [relay.limits]
/// session = "32MiB/s"
///
/// [[faults]]                     # chaos fault specs, on the link from the start
/// fault = { type = "reset" }
/// ...
/// [[events]]                     # once the clone has carried at_data of clone data
/// at_data = "12MiB"
/// inject = { fault = { type = "blackhole" } }
/// lasting = "6s"
///
/// [expect]
/// min_resumes = 0
/// ```
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ScenarioFile {
    name: Option<String>,
    #[serde(default)]
    description: String,
    /// Where the faults land, for the report (`{name}` of a draw gives its value); made from
    /// the faults and events when absent.
    fault: Option<String>,
    /// `single` (the default) or `two-donors`.
    layout: Option<String>,
    /// Values drawn from the seed (see [`with_draws`]), put in before the rest is read.
    #[serde(default, rename = "draws")]
    _draws: BTreeMap<String, DrawFile>,
    #[serde(default)]
    tls: bool,
    #[serde(default, with = "plumbing::units::option_rate")]
    link_rate: Option<u64>,
    relay: Option<Config>,
    #[serde(default)]
    faults: Vec<FaultSpec>,
    #[serde(default)]
    events: Vec<EventFile>,
    #[serde(default)]
    expect: ExpectFile,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct EventFile {
    #[serde(
        rename = "at_data",
        alias = "at_data_bytes",
        with = "plumbing::units::bytes"
    )]
    at_data_bytes: u64,
    /// A fault to add to the link then (its own trigger and duration are replaced).
    inject: Option<FaultSpec>,
    /// How long the injected fault lasts; for good when absent.
    #[serde(default, with = "plumbing::units::option_duration")]
    lasting: Option<Duration>,
    /// Reset the clone's connections through the relay.
    #[serde(default)]
    reset_session: bool,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct ExpectFile {
    /// `completed` (the default) or `failed`.
    outcome: Option<String>,
    min_resumes: Option<u64>,
    max_resumes: Option<u64>,
    #[serde(default)]
    detections: Vec<DetectionName>,
    #[serde(default)]
    no_detections: Vec<DetectionName>,
    rate_within_percent: Option<f64>,
    min_losses: Option<u64>,
    #[serde(default)]
    tls_both_legs: bool,
}

#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(rename_all = "snake_case")]
enum DetectionName {
    FlowDead,
    LinkDown,
    LinkBack,
}

impl From<DetectionName> for DetectionKind {
    fn from(d: DetectionName) -> Self {
        match d {
            DetectionName::FlowDead => DetectionKind::FlowDead,
            DetectionName::LinkDown => DetectionKind::LinkDown,
            DetectionName::LinkBack => DetectionKind::LinkBack,
        }
    }
}

impl ScenarioFile {
    fn into_scenario(self, default_name: &str) -> Result<Scenario, String> {
        let name = self.name.unwrap_or_else(|| default_name.to_string());
        if name.is_empty() {
            return Err("invalid name: empty".into());
        }
        let layout = match self.layout.as_deref() {
            None | Some("single") => Layout::Single,
            Some("two-donors") => Layout::TwoDonors,
            Some(other) => {
                return Err(format!("invalid layout: {other:?} (single or two-donors)"));
            }
        };
        let relay = self.relay.unwrap_or_default();
        if relay.listen.is_some() || !relay.upstreams.is_empty() || relay.admin.is_some() {
            return Err(
                "relay.listen, relay.upstream and relay.admin are the drill's to set".into(),
            );
        }
        // Checked as the drill will run it: with an upstream.
        let mut checked = relay.clone();
        checked.upstreams = vec!["127.0.0.1:3306".into()];
        checked
            .validate()
            .map_err(|e| format!("invalid relay settings: {e}"))?;
        let mut faults = Vec::new();
        if let Some(rate) = self.link_rate {
            faults.push(link(rate));
        }
        chaos::spec::validate_all(&self.faults).map_err(|e| format!("invalid {e}"))?;
        faults.extend(self.faults);
        let mut events = Vec::new();
        for (i, e) in self.events.into_iter().enumerate() {
            let at_data_bytes = e.at_data_bytes;
            let action = match (e.inject, e.reset_session) {
                (Some(spec), false) => {
                    spec.validate()
                        .map_err(|r| format!("invalid events[{i}].inject.{r}"))?;
                    Action::Fault {
                        spec: Box::new(spec),
                        lasting: e.lasting,
                    }
                }
                (None, true) if e.lasting.is_none() => Action::ResetSession,
                _ => {
                    return Err(format!(
                        "invalid events[{i}]: give inject (with lasting if it ends) or \
                         reset_session = true"
                    ));
                }
            };
            events.push(Event {
                at_data_bytes,
                action,
            });
        }
        let x = self.expect;
        let failure = match x.outcome.as_deref() {
            None | Some("completed") => false,
            Some("failed") => true,
            Some(other) => {
                return Err(format!(
                    "invalid expect.outcome: {other:?} (completed or failed)"
                ));
            }
        };
        if let Some(p) = x.rate_within_percent
            && !(p > 0.0 && p < 100.0)
        {
            return Err("invalid expect.rate_within_percent: must be above 0 and below 100".into());
        }
        if x.rate_within_percent.is_some() && relay.limits.session.is_none() {
            return Err("expect.rate_within_percent needs relay.limits.session".into());
        }
        let fault = match self.fault {
            Some(fault) => fault,
            None => describe_faults(&faults, &events),
        };
        Ok(Scenario {
            name,
            description: self.description,
            fault,
            layout,
            tls: self.tls,
            faults,
            events,
            relay,
            expect: Expect {
                failure,
                min_resumes: x.min_resumes,
                max_resumes: x.max_resumes,
                detections: x.detections.into_iter().map(Into::into).collect(),
                no_detections: x.no_detections.into_iter().map(Into::into).collect(),
                rate_within: x.rate_within_percent.map(|p| p / 100.0),
                min_losses: x.min_losses,
                tls_both_legs: x.tls_both_legs,
            },
        })
    }
}

/// The faults' names and where they land, for the report's fault column.
fn describe_faults(faults: &[FaultSpec], events: &[Event]) -> String {
    let mut parts: Vec<String> = faults
        .iter()
        .map(|f| match (f.trigger.after_bytes, &f.fault) {
            (
                _,
                FaultKind::Bandwidth {
                    rate_bytes_per_sec, ..
                },
            ) => format!("link {}", plumbing::units::format_rate(*rate_bytes_per_sec)),
            (Some(at), _) => format!("{} at {:.1} MiB", f.label(), mib(at)),
            (None, _) => f.label(),
        })
        .collect();
    for e in events {
        let what = match &e.action {
            Action::Fault { spec, .. } => spec.label(),
            Action::ResetSession => "reset".into(),
        };
        parts.push(format!("{what} at {:.1} MiB", mib(e.at_data_bytes)));
    }
    if parts.is_empty() {
        "none".into()
    } else {
        parts.join(", ")
    }
}

/// The scenarios named on the command line (`all` for every named one), in the order given;
/// an unknown name is an error listing the known ones.
pub fn resolve(names: &[String], seed: u64) -> Result<Vec<Scenario>> {
    let mut out: Vec<Scenario> = Vec::new();
    for name in names {
        let wanted: Vec<&str> = match name.as_str() {
            "all" => NAMES.to_vec(),
            other => vec![other],
        };
        for n in wanted {
            let Some(s) = Scenario::named(n, seed) else {
                bail!(
                    "no scenario {n:?}: the named ones are {} (or all)",
                    NAMES.join(", ")
                );
            };
            if !out.iter().any(|o| o.name == s.name) {
                out.push(s);
            }
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_named_scenario_is_built_and_its_faults_are_valid() {
        for name in NAMES {
            let s = Scenario::named(name, 7).unwrap();
            assert_eq!(s.name, name);
            chaos::spec::validate_all(&s.faults).unwrap();
            // Every fault lands by bytes or runs from the start, never at a moment.
            for f in &s.faults {
                assert_eq!(
                    (f.trigger.at_ms, f.trigger.after_ms),
                    (None, None),
                    "{name}"
                );
            }
        }
        assert!(Scenario::named("nope", 1).is_none());
        let all = resolve(&["all".into(), "clean".into()], 1).unwrap();
        assert_eq!(all.len(), NAMES.len());
        let err = resolve(&["clear".into()], 1).unwrap_err().to_string();
        assert!(
            err.contains("\"clear\"") && err.contains("silent-death"),
            "{err}"
        );
    }

    #[test]
    fn offsets_follow_the_seed() {
        let a = Scenario::named("silent-death", 1).unwrap();
        let b = Scenario::named("silent-death", 1).unwrap();
        let c = Scenario::named("silent-death", 2).unwrap();
        assert_eq!(a.faults, b.faults);
        assert_ne!(a.faults, c.faults);
        for seed in 0..50 {
            let s = Scenario::named("flaky-link", seed).unwrap();
            let FaultKind::Flap {
                period_bytes: Some(p),
                ..
            } = s.faults[1].fault
            else {
                panic!("{s:?}")
            };
            assert!((10 * MIB..20 * MIB).contains(&p));
        }
    }

    #[test]
    fn the_built_in_files_say_what_each_scenario_is() {
        let named = |n| Scenario::named(n, 1).unwrap();
        let capped = named("capped");
        assert_eq!(capped.relay.limits.session, Some(24 * MIB));
        assert_eq!(capped.expect.rate_within, Some(0.05));
        let flaky = named("flaky-link");
        assert_eq!(flaky.faults.len(), 2, "the link and the flap");
        assert_eq!(flaky.faults[1].target.connections, Some((1..=6).collect()));
        assert!(flaky.fault.starts_with("reset every ") && flaky.fault.ends_with(" MiB"));
        let blackhole = named("blackhole");
        assert!(matches!(
            blackhole.events[0].action,
            Action::Fault { lasting: Some(d), .. } if d == Duration::from_secs(8)
        ));
        assert_eq!(blackhole.expect.no_detections, [DetectionKind::FlowDead]);
        let silent = named("silent-death");
        let at = silent.faults[1].trigger.after_bytes.unwrap();
        assert!((8 * MIB..24 * MIB).contains(&at));
        assert_eq!(silent.fault, format!("silent at {:.1} MiB", mib(at)));
        assert_eq!(named("two-donors").layout, Layout::TwoDonors);
        assert!(matches!(
            named("two-donors").events[0].action,
            Action::ResetSession
        ));
        assert!(named("tls").tls && named("tls").expect.tls_both_legs);
        assert_eq!(named("lossy").expect.min_losses, Some(20));
        for n in NAMES {
            let s = named(n);
            assert!(!s.description.is_empty(), "{n}");
            assert!(s.expect.min_resumes.is_some(), "{n}");
        }
    }

    const EXAMPLE: &str = include_str!("../../scenarios/cross-zone.toml");

    #[test]
    fn the_example_file_reads() {
        let s = Scenario::from_toml(EXAMPLE, "cross-zone", 1).unwrap();
        assert_eq!(s.name, "cross-zone");
        assert_eq!(s.relay.limits.session, Some(32 * MIB));
        assert!(!s.faults.is_empty());
        assert_eq!(s.events.len(), 1);
        assert!(matches!(
            s.events[0].action,
            Action::Fault {
                lasting: Some(_),
                ..
            }
        ));
        assert!(s.fault.contains("blackhole"), "{}", s.fault);
    }

    #[test]
    fn unknown_keys_and_bad_values_are_named() {
        let err = |text: &str| Scenario::from_toml(text, "x", 1).unwrap_err();
        let e = err("colour = 1\n");
        assert!(e.contains("unknown key `colour`"), "{e}");
        let e = err("[expect]\nmin_resumes = 1\nmax_resume = 2\n");
        assert!(e.contains("`max_resume`") && e.contains("expect"), "{e}");
        assert!(e.contains("line 3"), "{e}");
        let e = err("[relay.stall]\nmin = \"8\"\n");
        assert!(e.contains("relay.stall.min"), "{e}");
        let e = err("[[faults]]\nfault = { type = \"latency\", ms = 1 }\n");
        assert!(e.contains("ms"), "{e}");
        let e = err("[[faults]]\nfault = { type = \"loss\", probability = 2.0 }\n");
        assert!(e.contains("faults[0].fault.probability"), "{e}");
        let e = err("[[events]]\nat_data_bytes = \"1MiB\"\n");
        assert!(e.contains("events[0]"), "{e}");
        let e = err("[relay]\nupstream = \"db:3306\"\n");
        assert!(e.contains("relay.upstream"), "{e}");
        let e = err("[expect]\nrate_within_percent = 5\n");
        assert!(e.contains("relay.limits.session"), "{e}");
        let e = err("layout = \"three-donors\"\n");
        assert!(e.contains("invalid layout"), "{e}");
        let e = err("[draws]\nat = { from = \"8MiB\", to = \"1MiB\", salt = 1 }\n");
        assert!(e.contains("draws.at"), "{e}");
        let e = err("link_rate = \"fast\"\n");
        assert!(e.contains("link_rate"), "{e}");
    }
}
