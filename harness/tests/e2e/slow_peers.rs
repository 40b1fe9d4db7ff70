//! Slow peers are not dead ones, end to end with real MySQL on the relay's defaults:
//!
//! - a donor held to a small CPU share behind a 1 MiB/s link (the chaos proxy's bandwidth cap on
//!   the relay's donor leg);
//! - a recipient held to a small CPU share behind a 2 MiB/s link, which also stops taking data
//!   for 10 s in the middle of the transfer (its processes frozen).
//!
//! Neither clone is reset (0 resumes, no flow declared dead; the relay fixture also fails on any
//! reset no fault caused), both end with identical data, and the relay says what it saw: the
//! frozen recipient as `recipient_slow`, and the donor's longest gaps, the figures the stall
//! floors are set against.

use std::time::{Duration, Instant};

use chaos::{ChaosProxy, Direction, FaultKind, FaultSpec};
use clone_relay::session::{DetectionKind, SessionView};
use harness::clone::{CloneOutcome, clone_instance};
use harness::dataset::{Dataset, mismatches};
use harness::image::mysql_image;
use harness::{MysqlServer, RelayFixture, ServerOptions};

const MIB: u64 = 1 << 20;
/// A small data set: the clone runs at 1-2 MiB/s from start to end.
const DATASET_BYTES: u64 = 8 * MIB;
const CLONE_TIMEOUT: Duration = Duration::from_secs(600);
const SEED: u64 = 9_2026;
/// The CPU share each slow server is held to.
const SLOW_CPUS: f64 = 0.2;

/// A cap on the donor-to-recipient direction of a chaos proxy.
fn link_cap(rate: u64) -> FaultSpec {
    FaultSpec::new(FaultKind::Bandwidth {
        rate_bytes_per_sec: rate,
        shared_group: Some("link".into()),
    })
    .direction(Direction::Downstream)
}

/// The relay's latest session, once the clone is over.
fn last_session(relay: &RelayFixture) -> SessionView {
    relay
        .sessions()
        .sessions
        .last()
        .cloned()
        .expect("the clone made a session")
}

/// No reset of any kind on the session: what a slow peer must never cause.
fn assert_not_reset(label: &str, outcome: &CloneOutcome, session: &SessionView) {
    assert!(outcome.completed(), "{label}: {outcome:?}");
    assert_eq!(session.resume_count, 0, "{label}: {session:#?}");
    assert!(
        !session
            .detections
            .iter()
            .any(|d| d.kind == DetectionKind::FlowDead),
        "{label}: {:?}",
        session.detections
    );
}

fn report(label: &str, took: Duration, session: &SessionView) {
    let kinds: Vec<_> = session.detections.iter().map(|d| d.kind).collect();
    eprintln!(
        "{label}: clone {:.1} s, {:.1} MiB of clone data, {} resumes, detections {kinds:?}, \
         longest donor gaps: {} ms in FILE COPY, {} ms elsewhere",
        took.as_secs_f64(),
        session.data_bytes as f64 / MIB as f64,
        session.resume_count,
        session.donor_gaps.file_copy_ms,
        session.donor_gaps.other_ms
    );
}

pub async fn a_slow_donor_is_not_reset() -> anyhow::Result<()> {
    let image = mysql_image().await?;
    let donor = MysqlServer::start(&image, ServerOptions::donor()).await?;
    let dataset = Dataset::of_size(DATASET_BYTES);
    dataset.seed(&donor).await?;
    let donor_sums = dataset.checksums(&donor).await?;
    donor.set_cpu_limit(SLOW_CPUS).await?;
    let link = ChaosProxy::start(
        "127.0.0.1:0".parse()?,
        donor.addr().to_string(),
        SEED,
        vec![link_cap(MIB)],
    )
    .await?;
    // The relay on its defaults.
    let relay = RelayFixture::start(link.addr())?;
    let recipient =
        MysqlServer::start(&image, ServerOptions::recipient(2, &[relay.addr()])).await?;

    let started = Instant::now();
    let outcome = clone_instance(&recipient, relay.addr(), CLONE_TIMEOUT).await?;
    let took = started.elapsed();
    let session = last_session(&relay);
    report("slow donor", took, &session);
    assert_not_reset("slow donor", &outcome, &session);
    assert_eq!(
        mismatches(&donor_sums, &dataset.checksums(&recipient).await?),
        Vec::<String>::new()
    );
    relay.stop().await
}

pub async fn a_slow_recipient_is_not_reset() -> anyhow::Result<()> {
    let image = mysql_image().await?;
    let donor = MysqlServer::start(&image, ServerOptions::donor()).await?;
    let dataset = Dataset::of_size(DATASET_BYTES);
    dataset.seed(&donor).await?;
    let donor_sums = dataset.checksums(&donor).await?;
    // The relay on its defaults, straight to the donor; the slow link is on the recipient's
    // side of it.
    let relay = RelayFixture::start(donor.addr())?;
    let link = ChaosProxy::start(
        "127.0.0.1:0".parse()?,
        relay.addr().to_string(),
        SEED,
        vec![link_cap(2 * MIB)],
    )
    .await?;
    let recipient = MysqlServer::start(&image, ServerOptions::recipient(3, &[link.addr()])).await?;
    recipient.set_cpu_limit(SLOW_CPUS).await?;

    let started = Instant::now();
    let freeze = async {
        // A third of the way into the data, the recipient stops taking anything for 10 s.
        relay
            .session_past(DATASET_BYTES / 3, Duration::from_secs(300))
            .await?;
        recipient.freeze_for(Duration::from_secs(10)).await
    };
    let (outcome, frozen) = tokio::join!(
        clone_instance(&recipient, link.addr(), CLONE_TIMEOUT),
        freeze
    );
    frozen?;
    let outcome = outcome?;
    let took = started.elapsed();
    let session = last_session(&relay);
    report("slow recipient", took, &session);
    assert_not_reset("slow recipient", &outcome, &session);
    assert!(
        session
            .detections
            .iter()
            .any(|d| d.kind == DetectionKind::RecipientSlow),
        "the frozen recipient shows as recipient_slow: {:?}",
        session.detections
    );
    assert_eq!(
        mismatches(&donor_sums, &dataset.checksums(&recipient).await?),
        Vec::<String>::new()
    );
    relay.stop().await
}
