//! What a drill found: each scenario's clones with their figures, the checks of its expected
//! outcome, and the verdict; printed as a table and written as JSON.

use clone_relay::session::{Detection, DetectionKind, ResumeRecord};
use serde::Serialize;

use super::scenario::Expect;

const MIB: f64 = 1024.0 * 1024.0;

/// One clone of a scenario.
#[derive(Debug, Clone, Serialize)]
pub struct CloneFigures {
    /// The recipient's name.
    pub recipient: String,
    /// The donor the relay carried the clone to (its upstream address), or the donor itself for
    /// a direct clone.
    pub donor: String,
    /// `plain` or `tls`.
    pub transport: &'static str,
    /// `Completed`, `Failed` (with `error`), or `error` when the drill could not follow it.
    pub outcome: String,
    pub error: Option<String>,
    /// From `CLONE INSTANCE` until the statement returned (the copy).
    pub clone_secs: f64,
    /// Until the recipient reported the end, its restart included.
    pub total_secs: f64,
    /// Data and network bytes by the recipient's `clone_progress`.
    pub data_bytes: u64,
    pub network_bytes: u64,
    /// Bytes the relay read from the donor for the clone.
    pub relay_bytes: u64,
    /// The rate achieved in FILE COPY (bytes from the donor per second, the first second left
    /// out), or over the whole clone when FILE COPY was too short to measure.
    pub rate_bytes_per_sec: Option<f64>,
    /// The relay's session cap.
    pub cap_bytes_per_sec: Option<u64>,
    pub resumes: u64,
    pub resent_bytes: u64,
    /// What the relay found when connections went silent.
    pub detections: Vec<Detection>,
    pub resume_records: Vec<ResumeRecord>,
    /// The longest silence before the relay's finding (flow dead or link down), ms.
    pub detect_ms: Option<u64>,
    /// The longest stretch without clone data in an incident, ms: the silence before a finding
    /// plus the time until data flowed again after the resume, or a link's outage until it was
    /// back.
    pub outage_ms: Option<u64>,
    /// The longest time from a lost main connection (or the relay's reset) to clone data after
    /// the resume, ms; for a link that came back, from the fault's end to data flowing.
    pub recovery_ms: Option<u64>,
    /// The longest time no byte came from the donor for the clone, by the drill's own sampling
    /// of the session (every 50 ms), ms: the outage as the wire saw it.
    pub data_gap_ms: Option<u64>,
    /// `equal`, `DIFFER`, or `n/a` (the clone did not complete).
    pub checksums: &'static str,
    pub mismatched_tables: Vec<String>,
    /// Connections the relay carried for the clone, and how many had TLS on both legs.
    pub connections: u64,
    pub tls_connections: u64,
}

impl CloneFigures {
    pub fn completed(&self) -> bool {
        self.outcome == "Completed"
    }

    pub fn has(&self, kind: DetectionKind) -> bool {
        self.detections.iter().any(|d| d.kind == kind)
    }
}

/// One check of a scenario's expected outcome.
#[derive(Debug, Clone, Serialize)]
pub struct Check {
    pub what: String,
    pub ok: bool,
    /// What was found.
    pub found: String,
}

impl Check {
    pub fn new(what: impl Into<String>, ok: bool, found: impl Into<String>) -> Self {
        Check {
            what: what.into(),
            ok,
            found: found.into(),
        }
    }
}

/// One scenario as it ran.
#[derive(Debug, Clone, Serialize)]
pub struct ScenarioReport {
    pub scenario: String,
    pub description: String,
    /// Where the faults landed.
    pub fault: String,
    pub seed: u64,
    /// Wall time of the whole scenario (waiting for the donor, clones, restarts, checksums).
    pub duration_secs: f64,
    pub clones: Vec<CloneFigures>,
    /// Segments the chaos proxy's emulated loss held back.
    pub losses: u64,
    /// What the scenario's events did, and at how many bytes of clone data they landed.
    pub events: Vec<String>,
    pub checks: Vec<Check>,
    /// The drill's own trouble (a timeout, a container that would not start).
    pub error: Option<String>,
    pub passed: bool,
}

impl ScenarioReport {
    /// Checks `expect` against the clones; sets `checks` and `passed`.
    pub fn judge(&mut self, expect: &Expect) {
        let mut checks = Vec::new();
        for c in &self.clones {
            let who = match self.clones.len() {
                1 => String::new(),
                _ => format!("{}: ", c.recipient),
            };
            if expect.failure {
                checks.push(Check::new(
                    format!("{who}the clone fails"),
                    !c.completed(),
                    c.outcome.clone(),
                ));
            } else {
                checks.push(Check::new(
                    format!("{who}the clone completes"),
                    c.completed(),
                    match &c.error {
                        Some(e) => format!("{}: {e}", c.outcome),
                        None => c.outcome.clone(),
                    },
                ));
                checks.push(Check::new(
                    format!("{who}every table equals the donor's"),
                    c.checksums == "equal",
                    match c.mismatched_tables.is_empty() {
                        true => c.checksums.to_string(),
                        false => format!("differ: {}", c.mismatched_tables.join(", ")),
                    },
                ));
            }
            if let Some(within) = expect.rate_within {
                let (ok, found) = match (c.rate_bytes_per_sec, c.cap_bytes_per_sec) {
                    (Some(rate), Some(cap)) => {
                        let off = rate / cap as f64 - 1.0;
                        (
                            off.abs() <= within,
                            format!(
                                "{:.2} MiB/s against {:.2} MiB/s ({:+.1}%)",
                                rate / MIB,
                                cap as f64 / MIB,
                                off * 100.0
                            ),
                        )
                    }
                    _ => (false, "no rate or no cap".into()),
                };
                checks.push(Check::new(
                    format!("{who}the rate is within {:.0}% of the cap", within * 100.0),
                    ok,
                    found,
                ));
            }
            if expect.tls_both_legs {
                checks.push(Check::new(
                    format!("{who}every connection has TLS on both legs"),
                    c.connections > 0 && c.tls_connections == c.connections,
                    format!("{} of {}", c.tls_connections, c.connections),
                ));
            }
            for kind in &expect.detections {
                checks.push(Check::new(
                    format!("{who}the relay finds {}", kind_name(*kind)),
                    c.has(*kind),
                    detections_word(c),
                ));
            }
            for kind in &expect.no_detections {
                checks.push(Check::new(
                    format!("{who}the relay never finds {}", kind_name(*kind)),
                    !c.has(*kind),
                    detections_word(c),
                ));
            }
        }
        let resumes: u64 = self.clones.iter().map(|c| c.resumes).sum();
        match (expect.min_resumes, expect.max_resumes) {
            (Some(min), Some(max)) if min == max => checks.push(Check::new(
                format!("{min} resumes"),
                resumes == min,
                resumes.to_string(),
            )),
            (min, max) => {
                if let Some(min) = min {
                    checks.push(Check::new(
                        format!("at least {min} resumes"),
                        resumes >= min,
                        resumes.to_string(),
                    ));
                }
                if let Some(max) = max {
                    checks.push(Check::new(
                        format!("at most {max} resumes"),
                        resumes <= max,
                        resumes.to_string(),
                    ));
                }
            }
        }
        if let Some(min) = expect.min_losses {
            checks.push(Check::new(
                format!("at least {min} segments lost and retransmitted"),
                self.losses >= min,
                self.losses.to_string(),
            ));
        }
        if let Some(e) = &self.error {
            checks.push(Check::new("the drill runs the scenario", false, e.clone()));
        }
        self.checks.extend(checks);
        self.passed = !self.clones.is_empty() && self.checks.iter().all(|c| c.ok);
    }

    /// The checks that failed, one line each.
    pub fn failures(&self) -> Vec<String> {
        self.checks
            .iter()
            .filter(|c| !c.ok)
            .map(|c| format!("{}: expected {}, found {}", self.scenario, c.what, c.found))
            .collect()
    }
}

fn kind_name(kind: DetectionKind) -> &'static str {
    match kind {
        DetectionKind::FlowDead => "a dead flow",
        DetectionKind::LinkDown => "the link down",
        DetectionKind::LinkBack => "the link back",
        DetectionKind::DonorSlow => "a slow donor",
        DetectionKind::RecipientSlow => "a slow recipient",
    }
}

fn detections_word(c: &CloneFigures) -> String {
    let words: Vec<&str> = c
        .detections
        .iter()
        .map(|d| match d.kind {
            DetectionKind::FlowDead => "flow_dead",
            DetectionKind::LinkDown => "link_down",
            DetectionKind::LinkBack => "link_back",
            DetectionKind::DonorSlow => "donor_slow",
            DetectionKind::RecipientSlow => "recipient_slow",
        })
        .collect();
    match words.is_empty() {
        true => "none".into(),
        false => words.join(", "),
    }
}

/// The table of a drill: one row per clone.
pub fn table(scenarios: &[ScenarioReport]) -> String {
    let mut lines = vec![format!(
        "{:<14} {:>5} {:<26} {:>7} {:>7} {:>7} {:>7} {:>7} {:>7} {:>7} {:>8} {:>7} {:<9} {}",
        "scenario",
        "seed",
        "fault",
        "clone s",
        "MiB",
        "MiB/s",
        "cap",
        "resumes",
        "detect",
        "outage",
        "recovery",
        "gap",
        "checksums",
        "result"
    )];
    for s in scenarios {
        for (i, c) in s.clones.iter().enumerate() {
            let name = match (s.clones.len(), i) {
                (1, _) => s.scenario.clone(),
                (_, i) => format!("{}/{}", s.scenario, i + 1),
            };
            let secs = |ms: Option<u64>| match ms {
                None => "-".to_string(),
                Some(ms) if ms < 1000 => format!("{:.2}", ms as f64 / 1000.0),
                Some(ms) => format!("{:.1}", ms as f64 / 1000.0),
            };
            let result = match (s.passed, i) {
                (_, i) if i > 0 => "",
                (true, _) => "PASS",
                (false, _) => "FAIL",
            };
            lines.push(format!(
                "{:<14} {:>5} {:<26} {:>7.1} {:>7.1} {:>7} {:>7} {:>7} {:>7} {:>7} {:>8} {:>7} {:<9} {}",
                name,
                s.seed,
                clip(&s.fault, 26),
                c.clone_secs,
                c.data_bytes as f64 / MIB,
                c.rate_bytes_per_sec
                    .map_or("-".into(), |r| format!("{:.1}", r / MIB)),
                c.cap_bytes_per_sec
                    .map_or("-".into(), |r| format!("{:.0}", r as f64 / MIB)),
                c.resumes,
                secs(c.detect_ms),
                secs(c.outage_ms),
                secs(c.recovery_ms),
                secs(c.data_gap_ms),
                c.checksums,
                result
            ));
        }
        if s.clones.is_empty() {
            lines.push(format!(
                "{:<14} {:>5} {:<26} {:>7} {:>7} {:>7} {:>7} {:>7} {:>7} {:>7} {:>8} {:>7} {:<9} FAIL",
                s.scenario,
                s.seed,
                clip(&s.fault, 26),
                "-",
                "-",
                "-",
                "-",
                "-",
                "-",
                "-",
                "-",
                "-",
                "n/a"
            ));
        }
    }
    let failures: Vec<String> = scenarios
        .iter()
        .flat_map(ScenarioReport::failures)
        .collect();
    let passed = scenarios.iter().filter(|s| s.passed).count();
    lines.push(String::new());
    lines.push(format!("{passed} of {} scenarios passed", scenarios.len()));
    for f in failures {
        lines.push(format!("FAILED {f}"));
    }
    lines.join("\n")
}

/// `text` cut to `width` characters, with `~` marking the cut.
fn clip(text: &str, width: usize) -> String {
    if text.chars().count() <= width {
        text.to_string()
    } else {
        let mut s: String = text.chars().take(width - 1).collect();
        s.push('~');
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn clone(outcome: &str, checksums: &'static str, resumes: u64) -> CloneFigures {
        CloneFigures {
            recipient: "recipient".into(),
            donor: "127.0.0.1:1".into(),
            transport: "plain",
            outcome: outcome.into(),
            error: None,
            clone_secs: 2.0,
            total_secs: 6.0,
            data_bytes: 150 << 20,
            network_bytes: 150 << 20,
            relay_bytes: 150 << 20,
            rate_bytes_per_sec: Some(24.5 * MIB),
            cap_bytes_per_sec: Some(24 << 20),
            resumes,
            resent_bytes: 0,
            detections: Vec::new(),
            resume_records: Vec::new(),
            detect_ms: None,
            outage_ms: None,
            recovery_ms: None,
            data_gap_ms: None,
            checksums,
            mismatched_tables: Vec::new(),
            connections: 3,
            tls_connections: 0,
        }
    }

    fn report(clones: Vec<CloneFigures>) -> ScenarioReport {
        ScenarioReport {
            scenario: "s".into(),
            description: String::new(),
            fault: "none".into(),
            seed: 1,
            duration_secs: 1.0,
            clones,
            losses: 0,
            events: Vec::new(),
            checks: Vec::new(),
            error: None,
            passed: false,
        }
    }

    #[test]
    fn expectations_pass_and_fail_on_what_was_found() {
        let clean = Expect {
            min_resumes: Some(0),
            max_resumes: Some(0),
            ..Expect::default()
        };
        let mut r = report(vec![clone("Completed", "equal", 0)]);
        r.judge(&clean);
        assert!(r.passed, "{:?}", r.checks);

        let mut r = report(vec![clone("Completed", "equal", 1)]);
        r.judge(&clean);
        assert!(!r.passed);
        assert_eq!(r.failures(), ["s: expected 0 resumes, found 1"]);

        let mut r = report(vec![clone("Completed", "DIFFER", 0)]);
        r.judge(&clean);
        assert!(!r.passed);

        let mut r = report(vec![clone("Failed", "n/a", 0)]);
        r.judge(&clean);
        assert!(!r.passed);

        let capped = Expect {
            rate_within: Some(0.05),
            ..clean.clone()
        };
        let mut r = report(vec![clone("Completed", "equal", 0)]);
        r.judge(&capped);
        assert!(r.passed, "{:?}", r.checks);
        let mut slow = clone("Completed", "equal", 0);
        slow.rate_bytes_per_sec = Some(20.0 * MIB);
        let mut r = report(vec![slow]);
        r.judge(&capped);
        assert!(!r.passed);

        let dead = Expect {
            min_resumes: Some(1),
            detections: vec![DetectionKind::FlowDead],
            ..Expect::default()
        };
        let mut r = report(vec![clone("Completed", "equal", 1)]);
        r.judge(&dead);
        assert!(!r.passed, "no detection recorded");

        let tls = Expect {
            tls_both_legs: true,
            ..clean
        };
        let mut r = report(vec![clone("Completed", "equal", 0)]);
        r.judge(&tls);
        assert!(!r.passed, "plain connections");

        // A scenario the drill could not run fails, clones or not.
        let mut r = report(Vec::new());
        r.error = Some("no container".into());
        r.judge(&Expect::default());
        assert!(!r.passed);
        assert!(table(&[r]).contains("FAIL"));
    }

    #[test]
    fn the_table_has_a_row_per_clone_and_the_verdicts() {
        let mut a = report(vec![clone("Completed", "equal", 0)]);
        a.judge(&Expect::default());
        let mut b = report(vec![
            clone("Completed", "equal", 1),
            clone("Completed", "equal", 0),
        ]);
        b.scenario = "two".into();
        b.judge(&Expect {
            max_resumes: Some(0),
            ..Expect::default()
        });
        let t = table(&[a, b]);
        assert!(t.contains("two/1") && t.contains("two/2"), "{t}");
        assert!(t.contains("1 of 2 scenarios passed"), "{t}");
        assert!(
            t.contains("FAILED two: expected at most 0 resumes, found 1"),
            "{t}"
        );
    }
}
