//! The link-drop rig: a seeded donor, the relay with a chaos proxy on its upstream leg, a
//! recipient, and the checks on a finished clone; and the ten resets, which the soak tier also
//! runs with TLS.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use chaos::{ChaosProxy, Direction, FaultKind, FaultSpec};
use clone_relay::Config;
use harness::clone::{CloneOutcome, Transport, clone_instance_with};
use harness::dataset::Dataset;
use harness::image::{ImageRef, mysql_image};
use harness::{MysqlServer, RelayFixture, ServerOptions};

pub const DATASET_BYTES: u64 = 100 * 1024 * 1024;
pub const MIB: u64 = 1024 * 1024;
pub const CLONE_TIMEOUT: Duration = Duration::from_secs(600);
/// Bound on waiting for a clone session to reach a point of its transfer.
pub const SESSION_WAIT: Duration = Duration::from_secs(120);

pub fn seed() -> u64 {
    std::env::var("CHAOS_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(5_2026)
}

/// A shared cap on the donor-to-recipient direction, so faults land mid-transfer.
pub fn capped(rate_mib: u64) -> FaultSpec {
    FaultSpec::new(FaultKind::Bandwidth {
        rate_bytes_per_sec: rate_mib * MIB,
        shared_group: Some("link".into()),
    })
    .direction(Direction::Downstream)
}

/// Relay settings for these tests: the defaults, with stall detection on or off.
pub fn relay_config(upstreams: &[SocketAddr], detect: bool) -> Config {
    let mut config = RelayFixture::config_for(upstreams);
    config.stall.enabled = detect;
    config
}

/// A seeded donor.
pub async fn donor(image: &ImageRef, extra: &[&str]) -> anyhow::Result<(MysqlServer, Dataset)> {
    let mut options = ServerOptions::donor();
    options.extra_args = extra.iter().map(ToString::to_string).collect();
    let donor = MysqlServer::start(image, options).await?;
    let dataset = Dataset::of_size(DATASET_BYTES);
    dataset.seed(&donor).await?;
    Ok((donor, dataset))
}

/// A recipient that may clone only through `relay`, with main and aux connections only (so the
/// chaos proxy's connection indexes 1 and 2 are the clone's first connections).
pub async fn recipient(image: &ImageRef, relay: &RelayFixture) -> anyhow::Result<MysqlServer> {
    let mut options = ServerOptions::recipient(2, &[relay.addr()]);
    options.extra_args = vec![
        "--clone-autotune-concurrency=OFF".into(),
        "--clone-max-concurrency=1".into(),
    ];
    MysqlServer::start(image, options).await
}

/// A seeded donor behind the chaos proxy (with `faults`), the relay in front of it, and a
/// recipient that clones through the relay over `transport`.
pub struct Rig {
    pub donor: MysqlServer,
    pub dataset: Dataset,
    pub chaos: ChaosProxy,
    pub relay: RelayFixture,
    pub recipient: MysqlServer,
    pub transport: Transport,
}

pub async fn rig(
    faults: Vec<FaultSpec>,
    detect: bool,
    donor_args: &[&str],
    adjust: impl FnOnce(&mut Config),
    transport: Transport,
) -> anyhow::Result<Rig> {
    let image = mysql_image().await?;
    let (donor, dataset) = donor(&image, donor_args).await?;
    let chaos = ChaosProxy::start(
        "127.0.0.1:0".parse()?,
        donor.addr().to_string(),
        seed(),
        faults,
    )
    .await?;
    let mut config = relay_config(&[chaos.addr()], detect);
    adjust(&mut config);
    let mut relay = RelayFixture::start_with(config)?;
    relay.expect_faults();
    let recipient = recipient(&image, &relay).await?;
    Ok(Rig {
        donor,
        dataset,
        chaos,
        relay,
        recipient,
        transport,
    })
}

/// One clone through chaos and the relay: the outcome, its wall time, and the relay's view of
/// its session.
pub struct Run {
    pub outcome: CloneOutcome,
    pub took: Duration,
    pub session: clone_relay::session::SessionView,
    pub mismatched: Vec<String>,
}

impl Run {
    /// The clone completed and every table equals the donor's.
    pub fn assert_faithful(&self, seed: u64) {
        assert!(self.outcome.completed(), "seed {seed}: {:?}", self.outcome);
        assert!(
            self.mismatched.is_empty(),
            "seed {seed}: {:?}",
            self.mismatched
        );
    }
}

/// How a transport shows in the figures.
pub fn describe(transport: Transport) -> &'static str {
    match transport {
        Transport::NoSsl => "plain",
        Transport::Default | Transport::RequireSsl => "TLS on both legs",
    }
}

/// Every connection the session kept had TLS on both legs when the clone asked for it, on
/// neither when it did not.
pub fn assert_transport(session: &clone_relay::session::SessionView, transport: Transport) {
    let tls = transport != Transport::NoSsl;
    for c in &session.connections {
        assert!(
            c.tls_downstream == tls && c.tls_upstream == tls,
            "connection {} ({}): TLS downstream {}, upstream {}; expected {tls} on both",
            c.id,
            c.role.as_str(),
            c.tls_downstream,
            c.tls_upstream
        );
    }
}

impl Rig {
    pub fn clone(&self) -> impl std::future::Future<Output = anyhow::Result<CloneOutcome>> + '_ {
        clone_instance_with(
            &self.recipient,
            self.relay.addr(),
            CLONE_TIMEOUT,
            self.transport,
        )
    }

    pub async fn finish(&self, outcome: CloneOutcome, started: Instant) -> anyhow::Result<Run> {
        finish(
            outcome,
            started,
            &self.relay,
            &self.dataset,
            &self.donor,
            &self.recipient,
        )
        .await
    }
}

pub async fn finish(
    outcome: CloneOutcome,
    started: Instant,
    relay: &RelayFixture,
    dataset: &Dataset,
    donor: &MysqlServer,
    recipient: &MysqlServer,
) -> anyhow::Result<Run> {
    let took = started.elapsed();
    // The relay's verdict: a clone the recipient gave up on is failed by the relay once the
    // donor's patience (learnt from the wire) and a margin are over, never left hanging.
    let deadline = Instant::now() + Duration::from_secs(100);
    let session = loop {
        let session = relay
            .sessions()
            .sessions
            .last()
            .cloned()
            .ok_or_else(|| anyhow::anyhow!("no session"))?;
        if session.state.ended() || outcome.completed() || Instant::now() > deadline {
            break session;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    let mismatched = if outcome.completed() {
        dataset.compare(donor, recipient).await?
    } else {
        Vec::new()
    };
    Ok(Run {
        outcome,
        took,
        session,
        mismatched,
    })
}

/// Ten resets spread over the transfer: the clone resumes after each and ends faithful.
pub async fn ten_resets(transport: Transport) -> anyhow::Result<()> {
    let seed = seed();
    let rig = rig(vec![capped(8)], true, &[], |_| {}, transport).await?;
    let (chaos, relay) = (&rig.chaos, &rig.relay);

    let started = Instant::now();
    let clone = rig.clone();
    let resets = async {
        let control = chaos.control();
        let mut next = 3 * MIB;
        for _ in 0..10 {
            // Each reset lands once the clone has resumed and carried 3 MiB more.
            relay.session_past(next, SESSION_WAIT).await?;
            let id = control.add(
                FaultSpec::new(FaultKind::Reset {})
                    .at_ms(control.now_ms())
                    .lasting_ms(50),
            )?;
            tokio::time::sleep(Duration::from_millis(100)).await;
            control.remove(id)?;
            next = relay.sessions().sessions.last().map_or(0, |s| s.data_bytes) + 3 * MIB;
        }
        anyhow::Ok(())
    };
    let (outcome, resets) = tokio::join!(clone, resets);
    resets?;
    let run = rig.finish(outcome?, started).await?;

    run.assert_faithful(seed);
    assert!(
        run.session.resume_count >= 10,
        "seed {seed}: {} resumes",
        run.session.resume_count
    );
    assert_transport(&run.session, transport);
    eprintln!(
        "ten resets ({}): {} resumes, {} bytes sent again, clone {:.1} s",
        describe(transport),
        run.session.resume_count,
        run.session.resent_bytes,
        run.took.as_secs_f64()
    );
    rig.relay.stop().await
}
