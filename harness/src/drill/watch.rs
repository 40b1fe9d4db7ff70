//! The watch over the relay's sessions while a scenario's clones run: it feeds the bars, fires
//! the scenario's events where they land, and samples each session's bytes for the figures.

use std::collections::BTreeMap;
use std::future::Future;
use std::time::{Duration, Instant};

use anyhow::Result;
use clone_relay::protocol::clone::Stage;
use clone_relay::session::{DetectionKind, SessionView};

use super::figures::{
    MIB, RelayFigures, Sample, file_copy_rate, flowing_after, longest_gap, outage,
};
use super::progress::{Progress, Step};
use super::scenario::{Action, Event};
use crate::mysql::MysqlServer;
use crate::relay::RelayFixture;

/// How often the watch looks at the relay's sessions.
const TICK: Duration = Duration::from_millis(50);
/// How often it reads a recipient's `clone_progress` (only while bars are drawn).
const RECIPIENT_POLL: Duration = Duration::from_secs(1);

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
