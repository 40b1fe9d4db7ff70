//! Link-drop survival, end to end with real MySQL and the chaos proxy on the relay's upstream
//! leg: resets, silent deaths, a long blackhole, a blackhole past the donor's patience, and
//! donor affinity. Every clone is checked table by table; every failure message has the seed.
//! The silent death also runs with TLS on both legs (no `REQUIRE` clause, the relay on its
//! defaults), with the same assertions; so do the resets in the soak tier
//! (`harness/tests/soak`).
//!
//! The soak tier (`--features harness/soak`) adds the baselines: the same faults with the relay's
//! detection off, to compare against MySQL on its own (they take minutes).

mod rig;

use std::time::{Duration, Instant};

use chaos::{ChaosProxy, FaultKind, FaultSpec};
use clone_relay::Config;
use harness::clone::{Transport, clone_instance};
use harness::dataset::Dataset;
use harness::image::mysql_image;
use harness::{MysqlServer, RelayFixture, ServerOptions};

use rig::*;

pub async fn a_clone_survives_ten_resets() -> anyhow::Result<()> {
    ten_resets(Transport::NoSsl).await
}

/// The clone's first connections go silent for good 3 s in; new connections work.
async fn silent_death(detect: bool, transport: Transport) -> anyhow::Result<Run> {
    let silence = FaultSpec::new(FaultKind::Blackhole {})
        .connections(vec![1, 2])
        .after_ms(3000);
    let rig = rig(vec![capped(20), silence], detect, &[], |_| {}, transport).await?;
    let started = Instant::now();
    let outcome = rig.clone().await?;
    rig.finish(outcome, started).await
}

pub async fn silent_connections_are_detected_and_the_clone_resumes() -> anyhow::Result<()> {
    silent_connections_detected(Transport::NoSsl).await
}

pub async fn silent_tls_connections_are_detected_and_the_clone_resumes() -> anyhow::Result<()> {
    silent_connections_detected(Transport::Default).await
}

/// The silent death with the relay's detection: a prompt resume and a faithful clone.
async fn silent_connections_detected(transport: Transport) -> anyhow::Result<()> {
    let seed = seed();
    let run = silent_death(true, transport).await?;
    run.assert_faithful(seed);
    assert_transport(&run.session, transport);
    assert!(
        run.session.resume_count >= 1,
        "seed {seed}: {:#?}",
        run.session
    );
    // The silence starts 3 s after the main connection opened, in FILE COPY. The proxy's
    // blackhole works above TCP: the relay's socket to the proxy keeps answering, so to the
    // relay this is a stuck donor (a flow lost below TCP is `link_down.rs`'s case). On the
    // relay's defaults it suspects the flow after 2 s, finds the donor's path up and the flow's
    // TCP answering, and resets the clone once the silence reaches `stall.min` (8 s).
    let resumed_at = run.session.resumes[0].at_ms;
    assert!(
        resumed_at <= 3_000 + 8_000 + 2_500,
        "seed {seed}: resumed only {resumed_at} ms into the session"
    );
    let found = &run.session.detections;
    assert!(
        found
            .iter()
            .any(|d| d.kind == clone_relay::session::DetectionKind::FlowDead),
        "seed {seed}: {found:?}"
    );
    // MySQL on its own needed 74 s for the same failure (shared/docs/clone-wire.md).
    assert!(
        run.took < Duration::from_secs(30),
        "seed {seed}: took {:?}",
        run.took
    );
    eprintln!(
        "silent death with detection ({}): resumed {resumed_at} ms in, clone {:.1} s",
        describe(transport),
        run.took.as_secs_f64()
    );
    if harness::SOAK {
        let baseline = silent_death(false, transport).await?;
        eprintln!(
            "silent death without detection: {} after {:.1} s; with/without = {:.2}",
            baseline.outcome.state,
            baseline.took.as_secs_f64(),
            run.took.as_secs_f64() / baseline.took.as_secs_f64()
        );
    }
    Ok(())
}

/// The whole link goes silent for `outage` once 10 MiB have been carried.
async fn whole_link_blackhole(
    outage: Duration,
    detect: bool,
    donor_args: &[&str],
    adjust: impl FnOnce(&mut Config),
) -> anyhow::Result<Run> {
    let rig = rig(
        vec![capped(20)],
        detect,
        donor_args,
        adjust,
        Transport::NoSsl,
    )
    .await?;
    let started = Instant::now();
    let cut = async {
        rig.relay.session_past(10 * MIB, SESSION_WAIT).await?;
        let control = rig.chaos.control();
        anyhow::Ok(
            control.add(
                FaultSpec::new(FaultKind::Blackhole {})
                    .at_ms(control.now_ms())
                    .lasting_ms(outage.as_millis() as u64),
            )?,
        )
    };
    let (outcome, cut) = tokio::join!(rig.clone(), cut);
    cut?;
    rig.finish(outcome?, started).await
}

pub async fn a_clone_survives_a_twenty_second_blackhole() -> anyhow::Result<()> {
    let seed = seed();
    let run = whole_link_blackhole(Duration::from_secs(20), true, &[], |_| {}).await?;
    run.assert_faithful(seed);
    // Nothing reached the donor: the link was down, not the flow lost. The relay kept the
    // session and TCP carried on when the link came back.
    assert_eq!(
        run.session.resume_count, 0,
        "seed {seed}: {:#?}",
        run.session
    );
    let kinds: Vec<_> = run.session.detections.iter().map(|d| d.kind).collect();
    assert!(
        kinds.contains(&clone_relay::session::DetectionKind::LinkDown)
            && !kinds.contains(&clone_relay::session::DetectionKind::FlowDead),
        "seed {seed}: {kinds:?}"
    );
    eprintln!(
        "20 s blackhole with detection: {} resumes, clone {:.1} s",
        run.session.resume_count,
        run.took.as_secs_f64()
    );
    if harness::SOAK {
        let baseline = whole_link_blackhole(Duration::from_secs(20), false, &[], |_| {}).await?;
        eprintln!(
            "20 s blackhole without detection: {} after {:.1} s; with/without = {:.2}",
            baseline.outcome.state,
            baseline.took.as_secs_f64(),
            run.took.as_secs_f64() / baseline.took.as_secs_f64()
        );
    }
    Ok(())
}

pub async fn a_blackhole_past_the_donors_patience_fails_clearly() -> anyhow::Result<()> {
    let seed = seed();
    // The donor waits 1 minute for a resume; the link stays dark for 10.
    let run = whole_link_blackhole(
        Duration::from_secs(600),
        true,
        &["--clone-donor-timeout-after-network-failure=1"],
        |config| config.resume_timeout = Duration::from_secs(75),
    )
    .await?;
    assert_eq!(
        run.outcome.state, "Failed",
        "seed {seed}: {:?}",
        run.outcome
    );
    assert_ne!(run.outcome.error_no, 0, "seed {seed}: {:?}", run.outcome);
    assert_eq!(run.session.donor_resume_timeout_secs, Some(60));
    assert_eq!(
        run.session.state.as_str(),
        "failed",
        "seed {seed}: {:#?}",
        run.session
    );
    eprintln!(
        "blackhole past the donor's timeout: recipient error {} ({}), session error {:?}, after {:.1} s",
        run.outcome.error_no,
        run.outcome.error_message,
        run.session.error,
        run.took.as_secs_f64()
    );
    Ok(())
}

pub async fn a_resumed_clone_returns_to_its_donor() -> anyhow::Result<()> {
    let image = mysql_image().await?;
    let (first, dataset) = donor(&image, &[]).await?;
    // A second donor with other data: a clone resumed there would fail or differ.
    let second = MysqlServer::start(&image, ServerOptions::donor()).await?;
    Dataset::of_size(8 * MIB).seed(&second).await?;
    let down = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?;
    let chaos = ChaosProxy::start(
        "127.0.0.1:0".parse()?,
        first.addr().to_string(),
        seed(),
        vec![capped(20)],
    )
    .await?;
    // Donors in order: one down, the first (through chaos, to cap it), the second.
    let mut relay =
        RelayFixture::start_with(relay_config(&[down, chaos.addr(), second.addr()], true))?;
    // The test resets the session itself.
    relay.expect_faults();
    let recipient = recipient(&image, &relay).await?;

    let started = Instant::now();
    let clone = clone_instance(&recipient, relay.addr(), CLONE_TIMEOUT);
    let cut = async {
        let id = relay.session_past(20 * MIB, SESSION_WAIT).await?;
        anyhow::Ok(relay.relay().registry().abort_session(id))
    };
    let (outcome, reset) = tokio::join!(clone, cut);
    let reset = reset?;
    let run = finish(outcome?, started, &relay, &dataset, &first, &recipient).await?;

    assert!(reset >= 2);
    assert!(run.outcome.completed(), "{:?}", run.outcome);
    assert!(run.mismatched.is_empty(), "{:?}", run.mismatched);
    assert_eq!(run.session.upstream, chaos.addr().to_string());
    assert_eq!(run.session.resume_count, 1);
    let upstreams: Vec<_> = relay
        .sessions()
        .sessions
        .iter()
        .map(|s| s.upstream.clone())
        .collect();
    assert_eq!(
        upstreams,
        [chaos.addr().to_string()],
        "one session, on the first donor"
    );
    relay.stop().await
}
