//! One scenario on the shared recipient, and the direct baseline: the clones, the watch over
//! them, the comparison with the donor, the report.

use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

use anyhow::Result;
use chaos::ChaosProxy;
use clone_relay::session::SessionView;

use super::figures::{RelayFigures, clone_figures};
use super::progress::Progress;
use super::report::ScenarioReport;
use super::scenario::Scenario;
use super::watch::Watch;
use super::{DONOR_FREE_WAIT, Rig};
use crate::clone::{CloneOutcome, Transport, clone_instance_with};
use crate::dataset::{Checksums, Dataset, mismatches};
use crate::mysql::MysqlServer;
use crate::relay::RelayFixture;

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
