//! A clone's figures: from the watch's samples of its session (the FILE COPY rate, the gaps and
//! outages in its data) and from its outcome, the relay's view and the checksums.

use std::time::{Duration, Instant};

use anyhow::Result;
use clone_relay::protocol::clone::Stage;
use clone_relay::session::{DetectionKind, SessionView};

use super::report::CloneFigures;
use crate::clone::{CloneOutcome, Transport};
use crate::mysql::MysqlServer;

pub(super) const MIB: f64 = 1024.0 * 1024.0;
/// The start of FILE COPY left out of the rate (the cap's burst, TCP's start).
const RATE_SKIP: Duration = Duration::from_secs(1);

/// One look at a session.
#[derive(Debug, Clone, Copy)]
pub(super) struct Sample {
    pub(super) at: Instant,
    pub(super) stage: Option<Stage>,
    /// Clone data carried.
    pub(super) data: u64,
    /// Bytes read from the donor.
    pub(super) wire: u64,
    pub(super) ended: bool,
}

/// The longest stretch without clone data in an incident of `s`, ms: a dead flow's silence plus
/// the time until data after its resume; a resume's time to data; a link's silence until back.
pub(super) fn outage(s: &SessionView) -> Option<u64> {
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
pub(super) fn file_copy_rate(samples: &[Sample]) -> Option<f64> {
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
pub(super) fn longest_gap(samples: &[Sample]) -> Option<Duration> {
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
pub(super) fn flowing_after(samples: &[Sample], ends: Instant) -> Option<Duration> {
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
