//! The two-donor scenario: one relay in front of two donors, two recipients cloning through it
//! at once, and one clone reset mid-transfer by the relay.
//!
//! How it shows that both donors serve and that each clone's connections stay on one donor:
//! each donor sits behind a pass-through chaos proxy of its own (the link cap only) that counts
//! the connections it accepts, and the donors hold different data (each seeded with its own
//! random bytes). Then
//! - the relay's sessions name both upstreams: each clone went to a donor of its own (a donor
//!   serves one clone at a time, and the relay sends a new clone to the first free one);
//! - each donor's proxy accepted exactly as many connections as the relay carried for the
//!   sessions on that donor, the reset clone's reconnections included: not one connection of a
//!   clone reached the other donor;
//! - each recipient's tables equal those of the donor its session names (and so not the other's:
//!   a clone whose workers or resume reached the other donor fails or differs).
//!
//! The relay tells recipients apart by their address, so the second recipient has a network
//! namespace of its own and the relay listens on the Docker bridge's host address, where both
//! reach it.

use std::collections::BTreeSet;
use std::net::{Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use chaos::ChaosProxy;
use clone_relay::session::SessionView;

use super::figures::clone_figures;
use super::progress::Progress;
use super::report::{Check, ScenarioReport};
use super::run::{allow_donor, compare, new_report};
use super::scenario::Scenario;
use super::watch::Watch;
use super::{DONOR_FREE_WAIT, Rig};
use crate::clone::{Transport, clone_instance_with};
use crate::mysql::MysqlServer;
use crate::relay::RelayFixture;

pub(super) async fn run(rig: &Rig, s: &Scenario, seed: u64, progress: &Progress) -> ScenarioReport {
    let started = Instant::now();
    let mut report = new_report(s, seed);
    if let Err(e) = clones(rig, s, seed, progress, &mut report).await {
        report.error = Some(format!("{e:#}"));
    }
    report.duration_secs = started.elapsed().as_secs_f64();
    report.judge(&s.expect);
    report
}

async fn clones(
    rig: &Rig,
    s: &Scenario,
    seed: u64,
    progress: &Progress,
    report: &mut ScenarioReport,
) -> Result<()> {
    let second = rig
        .second
        .as_ref()
        .context("the two-donor scenario needs the second donor and recipient")?;
    let (a, b) = tokio::join!(
        rig.donor.wait_until_clone_free(DONOR_FREE_WAIT),
        second.donor.wait_until_clone_free(DONOR_FREE_WAIT)
    );
    a?;
    b?;
    let mut proxies = Vec::new();
    for donor in [&rig.donor, &second.donor] {
        proxies.push(
            ChaosProxy::start(
                (Ipv4Addr::LOCALHOST, 0).into(),
                donor.addr().to_string(),
                seed,
                s.faults.clone(),
            )
            .await?,
        );
    }
    let upstreams: Vec<String> = proxies.iter().map(|p| p.addr().to_string()).collect();
    let mut config = s.relay.clone();
    config.upstreams = upstreams.clone();
    config.shutdown_grace = Duration::from_secs(1);
    if let Some(rate) = rig.session_rate {
        config.limits.session = Some(rate);
    }
    let cap = config.limits.session_to_recipient.or(config.limits.session);
    let gateway = second.recipient.host_gateway().await?;
    let mut relay = RelayFixture::start_at(SocketAddr::new(gateway, 0), config)?;
    // The scenario resets a clone itself; its expectations judge the resets.
    relay.expect_faults();
    let recipients: [&MysqlServer; 2] = [&rig.recipient, &second.recipient];
    for r in recipients {
        allow_donor(r, relay.addr()).await?;
    }
    let own_ip = second.recipient.bridge_addr().await?.ip();
    let transport = match s.tls {
        true => Transport::Default,
        false => Transport::NoSsl,
    };

    // The reset lands on the first clone to carry the event's bytes.
    let mut watch = Watch::new(&s.name, &relay, None, &s.events, progress, &recipients);
    let (first, other) = watch
        .follow(async {
            tokio::join!(
                clone_instance_with(recipients[0], relay.addr(), rig.clone_timeout, transport),
                clone_instance_with(recipients[1], relay.addr(), rig.clone_timeout, transport)
            )
        })
        .await?;
    report.events = std::mem::take(&mut watch.notes);
    let accepted: Vec<u64> = proxies.iter().map(|p| p.control().counts().0).collect();
    for p in proxies {
        p.stop().await;
    }
    let view = relay.sessions();

    // Each recipient's sessions, by the address its connections came from.
    let from_own_ip = |s: &SessionView| {
        s.connections
            .iter()
            .any(|c| c.peer.parse::<SocketAddr>().is_ok_and(|p| p.ip() == own_ip))
    };
    let of = |own: bool| -> Vec<&SessionView> {
        view.sessions
            .iter()
            .filter(|s| from_own_ip(s) == own)
            .collect()
    };
    let donor_sums = |sessions: &[&SessionView]| match sessions.last().map(|s| s.upstream.as_str())
    {
        Some(u) if u == upstreams[1] => &second.sums,
        _ => &rig.donor_sums,
    };
    for (recipient, outcome, sessions) in [
        (recipients[0], first, of(false)),
        (recipients[1], other, of(true)),
    ] {
        let mismatched = compare(&outcome, &rig.dataset, donor_sums(&sessions), recipient).await?;
        let figures = watch.figures(&sessions);
        report.clones.push(clone_figures(
            recipient, transport, outcome, figures, cap, mismatched,
        ));
        report.checks.push(Check::new(
            format!("{}: one session, on one donor", recipient.name()),
            sessions.len() == 1,
            format!(
                "{} sessions on {}",
                sessions.len(),
                sessions
                    .iter()
                    .map(|s| s.upstream.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        ));
    }

    let served: BTreeSet<&str> = view.sessions.iter().map(|s| s.upstream.as_str()).collect();
    report.checks.push(Check::new(
        "both donors serve a clone",
        served.len() == 2,
        format!("{served:?}"),
    ));
    for (i, upstream) in upstreams.iter().enumerate() {
        let carried: u64 = view
            .sessions
            .iter()
            .filter(|s| &s.upstream == upstream)
            .map(|s| s.connections.len() as u64 + s.connections_not_listed)
            .sum();
        report.checks.push(Check::new(
            format!(
                "donor {} accepted exactly the connections of its clones",
                ["a", "b"][i]
            ),
            carried > 0 && accepted[i] == carried,
            format!(
                "{} accepted, {carried} carried by its sessions",
                accepted[i]
            ),
        ));
    }
    relay.stop().await
}
