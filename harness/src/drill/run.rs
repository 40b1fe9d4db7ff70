//! One scenario on the shared recipient, the direct baseline, and the watch over the relay's
//! sessions that feeds the bars, fires the scenario's events and samples each session's bytes.

use std::collections::BTreeMap;
use std::future::Future;
use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

use anyhow::Result;
use chaos::ChaosProxy;
use clone_relay::protocol::clone::Stage;
use clone_relay::session::{DetectionKind, SessionView};

use super::progress::{Progress, Step};
use super::report::{CloneFigures, ScenarioReport};
use super::scenario::{Action, Event, Scenario};
use super::{DONOR_FREE_WAIT, Rig};
use crate::clone::{CloneOutcome, Transport, clone_instance_with};
use crate::dataset::{Checksums, Dataset, mismatches};
use crate::mysql::MysqlServer;
use crate::relay::RelayFixture;

const MIB: f64 = 1024.0 * 1024.0;
/// How often the watch looks at the relay's sessions.
const TICK: Duration = Duration::from_millis(50);
/// How often it reads a recipient's `clone_progress` (only while bars are drawn).
const RECIPIENT_POLL: Duration = Duration::from_secs(1);
/// The start of FILE COPY left out of the rate (the cap's burst, TCP's start).
const RATE_SKIP: Duration = Duration::from_secs(1);

/// A stage as MySQL names it in `clone_progress`.
fn stage_name(stage: Stage) -> &'static str {
    match stage {
        Stage::Init => "INIT",
        Stage::FileCopy => "FILE COPY",
        Stage::PageCopy => "PAGE COPY",
        Stage::RedoCopy => "REDO COPY",
        Stage::Done => "DONE",
        Stage::Other => "OTHER",
    }
}

/// One look at a session.
#[derive(Debug, Clone, Copy)]
struct Sample {
    at: Instant,
    stage: Option<Stage>,
    /// Clone data carried.
    data: u64,
    /// Bytes read from the donor.
    wire: u64,
    ended: bool,
}

/// An event that fired.
#[derive(Debug, Clone)]
struct Fired {
    session: u64,
    /// When the fault it added ends.
    ends: Option<Instant>,
}

/// A stage's bar of one session.
#[derive(Debug)]
struct StageBar {
    stage: Stage,
    step: Step,
    since: Instant,
    start_bytes: u64,
    bytes: u64,
}

/// The watch over one relay while its clones run.
pub(super) struct Watch<'a> {
    label: String,
    relay: &'a RelayFixture,
    chaos: Option<&'a chaos::Control>,
    events: Vec<(Event, bool)>,
    progress: &'a Progress,
    recipients: Vec<(&'a MysqlServer, Option<Step>)>,
    last_poll: Option<Instant>,
    samples: BTreeMap<u64, Vec<Sample>>,
    bars: BTreeMap<u64, StageBar>,
    fired: Vec<Fired>,
    /// What the events did and where they landed, for the report.
    pub(super) notes: Vec<String>,
}

impl std::fmt::Debug for Watch<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Watch").field("label", &self.label).finish()
    }
}

impl<'a> Watch<'a> {
    pub(super) fn new(
        label: &str,
        relay: &'a RelayFixture,
        chaos: Option<&'a chaos::Control>,
        events: &[Event],
        progress: &'a Progress,
        recipients: &[&'a MysqlServer],
    ) -> Self {
        Watch {
            label: label.to_string(),
            relay,
            chaos,
            events: events.iter().map(|e| (e.clone(), false)).collect(),
            progress,
            recipients: recipients.iter().map(|r| (*r, None)).collect(),
            last_poll: None,
            samples: BTreeMap::new(),
            bars: BTreeMap::new(),
            fired: Vec::new(),
            notes: Vec::new(),
        }
    }

    /// Runs `clone` to its end, looking at the relay every [`TICK`] meanwhile.
    pub(super) async fn follow<F: Future>(&mut self, clone: F) -> Result<F::Output> {
        tokio::pin!(clone);
        let mut tick = tokio::time::interval(TICK);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let out = loop {
            tokio::select! {
                out = &mut clone => break out,
                _ = tick.tick() => self.tick().await?,
            }
        };
        self.tick().await?;
        self.finish();
        Ok(out)
    }

    async fn tick(&mut self) -> Result<()> {
        let now = Instant::now();
        let view = self.relay.sessions();
        for s in &view.sessions {
            let sample = Sample {
                at: now,
                stage: s.progress.as_ref().map(|p| p.stage),
                data: s.data_bytes,
                wire: s.bytes_from_upstream,
                ended: s.state.ended(),
            };
            self.samples.entry(s.id).or_default().push(sample);
            self.show(s, now);
        }
        for (event, fired) in &mut self.events {
            if *fired {
                continue;
            }
            let Some(s) = view
                .sessions
                .iter()
                .find(|s| !s.state.ended() && s.data_bytes >= event.at_data_bytes)
            else {
                continue;
            };
            *fired = true;
            let ends = match &event.action {
                Action::Fault { spec, lasting } => {
                    let control = self
                        .chaos
                        .ok_or_else(|| anyhow::anyhow!("a fault event needs the chaos proxy"))?;
                    let mut spec = (**spec).clone();
                    spec.trigger = Default::default();
                    spec.duration_ms = lasting.map(|d| d.as_millis() as u64);
                    control.add(spec.at_ms(control.now_ms()))?;
                    let note = format!(
                        "{} injected at {:.1} MiB of clone data (session {})",
                        event_label(event),
                        s.data_bytes as f64 / MIB,
                        s.id
                    );
                    self.progress.note(format!("  {}: {note}", self.label));
                    self.notes.push(note);
                    lasting.map(|d| now + d)
                }
                Action::ResetSession => {
                    let n = self.relay.relay().registry().abort_session(s.id);
                    let note = format!(
                        "the relay reset session {} ({n} connections) at {:.1} MiB of clone data",
                        s.id,
                        s.data_bytes as f64 / MIB
                    );
                    self.progress.note(format!("  {}: {note}", self.label));
                    self.notes.push(note);
                    None
                }
            };
            self.fired.push(Fired {
                session: s.id,
                ends,
            });
        }
        if self.progress.drawn() && self.last_poll.is_none_or(|t| now - t >= RECIPIENT_POLL) {
            self.last_poll = Some(now);
            for (recipient, step) in &mut self.recipients {
                let line = match recipient
                    .rows(
                        "SELECT STAGE, ESTIMATE, DATA FROM performance_schema.clone_progress \
                         WHERE STATE = 'In Progress'",
                    )
                    .await
                {
                    Ok(rows) => match rows.first().map(Vec::as_slice) {
                        Some([stage, estimate, data]) => format!(
                            "{} {:.1}/{:.1} MiB",
                            stage,
                            data.parse::<f64>().unwrap_or(0.0) / MIB,
                            estimate.parse::<f64>().unwrap_or(0.0) / MIB
                        ),
                        _ => "waiting".into(),
                    },
                    // The recipient restarts once the data is in.
                    Err(_) => "RESTART".into(),
                };
                let step = step.get_or_insert_with(|| {
                    self.progress
                        .spinner(format!("{} by clone_progress", recipient.name()))
                });
                step.message(format!("{} {}: {line}", self.label, recipient.name()));
            }
        }
        Ok(())
    }

    /// Moves the session's stage bar on, starting a new bar when the stage changes.
    fn show(&mut self, s: &SessionView, now: Instant) {
        if s.state.ended() {
            if let Some(bar) = self.bars.remove(&s.id) {
                finish_bar(&self.label, s.id, bar, now);
            }
            return;
        }
        let Some(p) = &s.progress else { return };
        if let Some(bar) = self.bars.get(&s.id)
            && bar.stage != p.stage
        {
            let bar = self.bars.remove(&s.id).expect("present");
            finish_bar(&self.label, s.id, bar, now);
        }
        let total = p.estimate_bytes.unwrap_or(p.done_bytes).max(p.done_bytes);
        let bar = self.bars.entry(s.id).or_insert_with(|| StageBar {
            stage: p.stage,
            step: self
                .progress
                .bytes(format!("{} {}", self.label, stage_name(p.stage)), total),
            since: now,
            start_bytes: s.data_bytes,
            bytes: 0,
        });
        bar.bytes = s.data_bytes - bar.start_bytes.min(s.data_bytes);
        bar.step.set_length(total.max(1));
        bar.step.set(p.done_bytes);
        let mut message = String::new();
        if let Some(percent) = p.percent {
            message.push_str(&format!("{percent:.0}%"));
        }
        if let Some(eta) = p.eta_secs {
            message.push_str(&format!(" eta {eta:.0} s"));
        }
        message.push_str(&format!(" {:.1} MiB/s", s.rate_bytes_per_sec / MIB));
        if s.resume_count > 0 {
            message.push_str(&format!(" resumes {}", s.resume_count));
        }
        if !matches!(s.state.as_str(), "transferring" | "completed") {
            message.push_str(&format!(" ({})", s.state.as_str()));
        }
        bar.step.message(message);
    }

    fn finish(&mut self) {
        let now = Instant::now();
        for (id, bar) in std::mem::take(&mut self.bars) {
            finish_bar(&self.label, id, bar, now);
        }
        for (recipient, step) in &mut self.recipients {
            if let Some(step) = step.take() {
                step.finish(format!("{} {}: clone over", self.label, recipient.name()));
            }
        }
    }

    /// The clone-side figures of the sessions in `sessions` (one clone's, normally one).
    pub(super) fn figures(&self, sessions: &[&SessionView]) -> RelayFigures {
        let mut f = RelayFigures::default();
        for s in sessions {
            f.upstream = s.upstream.clone();
            f.relay_bytes += s.bytes_from_upstream;
            f.resumes += s.resume_count;
            f.resent_bytes += s.resent_bytes;
            f.connections += s.connections.len() as u64 + s.connections_not_listed;
            f.tls_connections += s
                .connections
                .iter()
                .filter(|c| c.tls_downstream && c.tls_upstream)
                .count() as u64;
            f.detections.extend(s.detections.iter().cloned());
            f.resume_records.extend(s.resumes.iter().cloned());
            let detected = s
                .detections
                .iter()
                .filter(|d| matches!(d.kind, DetectionKind::FlowDead | DetectionKind::LinkDown))
                .map(|d| d.silence_ms)
                .max();
            f.detect_ms = f.detect_ms.max(detected);
            f.outage_ms = f.outage_ms.max(outage(s));
            let resumed = s.resumes.iter().filter_map(|r| r.resumed_after_ms).max();
            f.recovery_ms = f.recovery_ms.max(resumed);
            if let Some(samples) = self.samples.get(&s.id) {
                let rate = file_copy_rate(samples).or_else(|| {
                    (s.duration_ms > 0)
                        .then(|| s.bytes_from_upstream as f64 * 1000.0 / s.duration_ms as f64)
                });
                f.rate = f.rate.or(rate);
                f.data_gap_ms = f
                    .data_gap_ms
                    .max(longest_gap(samples).map(|d| d.as_millis() as u64));
                for fired in self.fired.iter().filter(|x| x.session == s.id) {
                    if let Some(ends) = fired.ends {
                        let back = flowing_after(samples, ends).map(|d| d.as_millis() as u64);
                        f.recovery_ms = f.recovery_ms.max(back);
                    }
                }
            }
        }
        f
    }
}

fn event_label(event: &Event) -> String {
    match &event.action {
        Action::Fault { spec, lasting } => match lasting {
            Some(d) => format!("{} for {:.1} s", spec.label(), d.as_secs_f64()),
            None => format!("{} for good", spec.label()),
        },
        Action::ResetSession => "reset".into(),
    }
}

fn finish_bar(label: &str, session: u64, bar: StageBar, now: Instant) {
    let secs = (now - bar.since).as_secs_f64();
    bar.step.finish(format!(
        "{label} {:<9} session {session}: {:>7.1} MiB in {secs:>5.1} s",
        stage_name(bar.stage),
        bar.bytes as f64 / MIB
    ));
}

/// The longest stretch without clone data in an incident of `s`, ms: a dead flow's silence plus
/// the time until data after its resume; a resume's time to data; a link's silence until back.
fn outage(s: &SessionView) -> Option<u64> {
    let mut longest = None;
    let mut dead: Vec<_> = s
        .detections
        .iter()
        .filter(|d| d.kind == DetectionKind::FlowDead)
        .collect();
    for r in &s.resumes {
        let before = dead
            .iter()
            .rposition(|d| d.at_ms <= r.at_ms)
            .map(|i| dead.remove(i).silence_ms)
            .unwrap_or(0);
        let back = r.resumed_after_ms.unwrap_or(r.outage_ms);
        longest = longest.max(Some(before + back));
    }
    for d in &s.detections {
        if d.kind == DetectionKind::LinkBack {
            longest = longest.max(Some(d.silence_ms));
        }
    }
    longest
}

/// Bytes from the donor per second over FILE COPY, its first [`RATE_SKIP`] left out; `None`
/// when that leaves less than a second.
fn file_copy_rate(samples: &[Sample]) -> Option<f64> {
    let copying: Vec<&Sample> = samples
        .iter()
        .filter(|s| s.stage == Some(Stage::FileCopy))
        .collect();
    let first = copying.first()?.at + RATE_SKIP;
    let from = copying.iter().find(|s| s.at >= first)?;
    let to = copying.last()?;
    let secs = (to.at - from.at).as_secs_f64();
    if secs < 1.0 {
        return None;
    }
    // Bytes on the wire, unless a connection that closed fell off the session's list.
    let bytes = match to.wire.checked_sub(from.wire) {
        Some(b) => b,
        None => to.data.saturating_sub(from.data),
    };
    Some(bytes as f64 / secs)
}

/// The longest time no byte came from the donor for the session, from its first byte to its
/// end.
fn longest_gap(samples: &[Sample]) -> Option<Duration> {
    let mut longest = None;
    let mut last: Option<&Sample> = None;
    for s in samples.iter().skip_while(|s| s.wire == 0) {
        match last {
            Some(l) if s.wire != l.wire || s.ended => {
                longest = longest.max(Some(s.at - l.at));
                last = Some(s);
            }
            None => last = Some(s),
            _ => {}
        }
        if s.ended {
            break;
        }
    }
    longest
}

/// How long after `ends` clone data flowed again.
fn flowing_after(samples: &[Sample], ends: Instant) -> Option<Duration> {
    let at_end = samples.iter().take_while(|s| s.at <= ends).last()?.data;
    samples
        .iter()
        .find(|s| s.at > ends && s.data > at_end)
        .map(|s| s.at - ends)
}

/// What the relay saw of one clone.
#[derive(Debug, Default)]
pub(super) struct RelayFigures {
    pub upstream: String,
    pub relay_bytes: u64,
    pub rate: Option<f64>,
    pub resumes: u64,
    pub resent_bytes: u64,
    pub connections: u64,
    pub tls_connections: u64,
    pub detections: Vec<clone_relay::session::Detection>,
    pub resume_records: Vec<clone_relay::session::ResumeRecord>,
    pub detect_ms: Option<u64>,
    pub outage_ms: Option<u64>,
    pub recovery_ms: Option<u64>,
    pub data_gap_ms: Option<u64>,
}

/// A clone's figures from its outcome, the relay's view and the checksums.
pub(super) fn clone_figures(
    recipient: &MysqlServer,
    transport: Transport,
    outcome: Result<CloneOutcome>,
    relay: RelayFigures,
    cap: Option<u64>,
    mismatched: Option<Vec<String>>,
) -> CloneFigures {
    let (outcome_word, error, o) = match outcome {
        Ok(o) if o.completed() => ("Completed".to_string(), None, Some(o)),
        Ok(o) => (
            format!("Failed {}", o.error_no),
            Some(o.error_message.clone()),
            Some(o),
        ),
        Err(e) => ("error".to_string(), Some(format!("{e:#}")), None),
    };
    let started = o.as_ref().is_some_and(|o| o.data_bytes > 0) || relay.relay_bytes > 0;
    let checksums = match (&mismatched, started) {
        (Some(m), _) if m.is_empty() => "equal",
        (Some(_), _) => "DIFFER",
        (None, true) => "DIFFER",
        (None, false) => "n/a",
    };
    CloneFigures {
        recipient: recipient.name().to_string(),
        donor: relay.upstream,
        transport: match transport {
            Transport::NoSsl => "plain",
            _ => "tls",
        },
        outcome: outcome_word,
        error,
        clone_secs: o.as_ref().map_or(0.0, |o| o.statement_time.as_secs_f64()),
        total_secs: o.as_ref().map_or(0.0, |o| o.total_time.as_secs_f64()),
        data_bytes: o.as_ref().map_or(0, |o| o.data_bytes),
        network_bytes: o.as_ref().map_or(0, |o| o.network_bytes),
        relay_bytes: relay.relay_bytes,
        rate_bytes_per_sec: relay.rate,
        cap_bytes_per_sec: cap,
        resumes: relay.resumes,
        resent_bytes: relay.resent_bytes,
        detections: relay.detections,
        resume_records: relay.resume_records,
        detect_ms: relay.detect_ms,
        outage_ms: relay.outage_ms,
        recovery_ms: relay.recovery_ms,
        data_gap_ms: relay.data_gap_ms,
        checksums,
        mismatched_tables: mismatched.unwrap_or_default(),
        connections: relay.connections,
        tls_connections: relay.tls_connections,
    }
}

/// The tables that differ between `donor_sums` and the recipient, when the clone completed.
pub(super) async fn compare(
    outcome: &Result<CloneOutcome>,
    dataset: &Dataset,
    donor_sums: &Checksums,
    recipient: &MysqlServer,
) -> Result<Option<Vec<String>>> {
    match outcome {
        Ok(o) if o.completed() => Ok(Some(mismatches(
            donor_sums,
            &dataset.checksums(recipient).await?,
        ))),
        _ => Ok(None),
    }
}

/// Lets `recipient` clone from `addr` (a global setting its restart after a clone forgets).
pub(super) async fn allow_donor(recipient: &MysqlServer, addr: std::net::SocketAddr) -> Result<()> {
    recipient
        .sql(&format!("SET GLOBAL clone_valid_donor_list = '{addr}'"))
        .await?;
    Ok(())
}

/// An empty report of scenario `s` under `seed`.
pub(super) fn new_report(s: &Scenario, seed: u64) -> ScenarioReport {
    ScenarioReport {
        scenario: s.name.clone(),
        description: s.description.clone(),
        fault: s.fault.clone(),
        seed,
        duration_secs: 0.0,
        clones: Vec::new(),
        losses: 0,
        events: Vec::new(),
        checks: Vec::new(),
        error: None,
        passed: false,
    }
}

/// Runs a scenario with one recipient: a fresh chaos proxy with the scenario's faults in front
/// of the donor, a fresh relay in front of it, one clone through both.
pub(super) async fn single(
    rig: &Rig,
    s: &Scenario,
    seed: u64,
    progress: &Progress,
) -> ScenarioReport {
    let started = Instant::now();
    let mut report = new_report(s, seed);
    if let Err(e) = single_clone(rig, s, seed, progress, &mut report).await {
        report.error = Some(format!("{e:#}"));
    }
    report.duration_secs = started.elapsed().as_secs_f64();
    report.judge(&s.expect);
    report
}

async fn single_clone(
    rig: &Rig,
    s: &Scenario,
    seed: u64,
    progress: &Progress,
    report: &mut ScenarioReport,
) -> Result<()> {
    rig.donor.wait_until_clone_free(DONOR_FREE_WAIT).await?;
    let chaos = ChaosProxy::start(
        (Ipv4Addr::LOCALHOST, 0).into(),
        rig.donor.addr().to_string(),
        seed,
        s.faults.clone(),
    )
    .await?;
    let mut config = s.relay.clone();
    config.upstreams = vec![chaos.addr().to_string()];
    config.shutdown_grace = Duration::from_secs(1);
    if let Some(rate) = rig.session_rate {
        config.limits.session = Some(rate);
    }
    let cap = config.limits.session_to_recipient.or(config.limits.session);
    let mut relay = RelayFixture::start_with(config)?;
    // The scenario's own expectations judge its resets (none for a clean one).
    relay.expect_faults();
    allow_donor(&rig.recipient, relay.addr()).await?;
    let transport = match s.tls {
        true => Transport::Default,
        false => Transport::NoSsl,
    };

    let mut watch = Watch::new(
        &s.name,
        &relay,
        Some(chaos.control()),
        &s.events,
        progress,
        &[&rig.recipient],
    );
    let outcome = watch
        .follow(clone_instance_with(
            &rig.recipient,
            relay.addr(),
            rig.clone_timeout,
            transport,
        ))
        .await?;
    report.losses = chaos
        .control()
        .decisions()
        .iter()
        .filter(|d| d.what == "segment lost")
        .count() as u64;
    let view = relay.sessions();
    let sessions: Vec<&SessionView> = view.sessions.iter().collect();
    let figures = watch.figures(&sessions);
    report.events = std::mem::take(&mut watch.notes);
    drop(watch);
    chaos.stop().await;
    let mismatched = compare(&outcome, &rig.dataset, &rig.donor_sums, &rig.recipient).await?;
    report.clones.push(clone_figures(
        &rig.recipient,
        transport,
        outcome,
        figures,
        cap,
        mismatched,
    ));
    relay.stop().await
}

/// The baseline: a clone straight from the donor, no relay, no faults.
pub(super) async fn direct(rig: &Rig, seed: u64, progress: &Progress) -> ScenarioReport {
    let started = Instant::now();
    let mut s = Scenario::named("clean", seed).expect("clean exists");
    s.name = "direct".into();
    s.description = "the baseline: straight from the donor, without the relay".into();
    s.expect.min_resumes = None;
    s.expect.max_resumes = None;
    let mut report = new_report(&s, seed);
    progress.note(format!("scenario direct: {}", s.description));
    let run = async {
        rig.donor.wait_until_clone_free(DONOR_FREE_WAIT).await?;
        allow_donor(&rig.recipient, rig.donor.addr()).await?;
        let step = progress.spinner("direct clone");
        let outcome = clone_instance_with(
            &rig.recipient,
            rig.donor.addr(),
            rig.clone_timeout,
            Transport::NoSsl,
        )
        .await;
        step.finish("direct clone over");
        let mismatched = compare(&outcome, &rig.dataset, &rig.donor_sums, &rig.recipient).await?;
        let rate = outcome
            .as_ref()
            .ok()
            .filter(|o| !o.statement_time.is_zero())
            .map(|o| o.network_bytes as f64 / o.statement_time.as_secs_f64());
        let relay = RelayFigures {
            upstream: rig.donor.addr().to_string(),
            rate,
            ..RelayFigures::default()
        };
        anyhow::Ok(clone_figures(
            &rig.recipient,
            Transport::NoSsl,
            outcome,
            relay,
            None,
            mismatched,
        ))
    };
    match run.await {
        Ok(clone) => report.clones.push(clone),
        Err(e) => report.error = Some(format!("{e:#}")),
    }
    report.duration_secs = started.elapsed().as_secs_f64();
    report.judge(&s.expect);
    report
}
