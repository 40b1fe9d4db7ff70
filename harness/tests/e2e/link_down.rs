//! Faults at the kernel level, end to end on the relay's defaults: netfilter in the donor's own
//! network namespace drops packets, so the relay's TCP sees real losses (no proxy above TCP
//! acknowledging for it).
//!
//! - The whole link dark for 20 s, new connections included: the relay must find the link down
//!   and keep the session (no resume), and the clone must take about as long as the same outage
//!   with no relay in the path, measured in the same run.
//! - The clone's open connections silenced for good 3 s into FILE COPY while new ones work (a
//!   lost NAT or conntrack entry): the relay must find the flows dead and the recipient resume
//!   within 5 s of the silence. the soak tier (`--features harness/soak`) adds MySQL alone with the same failure.

use std::time::{Duration, Instant};

use clone_relay::session::DetectionKind;
use harness::clone::{CloneOutcome, clone_instance};
use harness::dataset::{Dataset, mismatches};
use harness::image::mysql_image;
use harness::{MysqlServer, RelayFixture, ServerOptions};

const MIB: u64 = 1 << 20;
const DATASET_BYTES: u64 = 100 * MIB;
const OUTAGE: Duration = Duration::from_secs(20);
const CLONE_TIMEOUT: Duration = Duration::from_secs(600);
/// About 3 s into FILE COPY at 20 MiB/s (the stages before carry little).
const SILENCE_AT: u64 = 60 * MIB;

/// A recipient that may clone from `valid`, its clone capped at 20 MiB/s by MySQL.
fn capped(id: u32, valid: std::net::SocketAddr) -> ServerOptions {
    let mut options = ServerOptions::recipient(id, &[valid]);
    options.extra_args = vec!["--clone-max-network-bandwidth=20".into()];
    options
}

/// Network bytes the recipient's clone has received so far.
async fn received(recipient: &MysqlServer) -> u64 {
    recipient
        .sql("SELECT IFNULL(SUM(NETWORK), 0) FROM performance_schema.clone_progress")
        .await
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(0)
}

/// Clones `from` into `recipient`, and darkens the donor's link for [`OUTAGE`] once 10 MiB
/// have arrived; the outcome and the clone's wall time.
async fn clone_through_outage(
    donor: &MysqlServer,
    recipient: &MysqlServer,
    from: std::net::SocketAddr,
) -> anyhow::Result<(CloneOutcome, Duration)> {
    let started = Instant::now();
    let outage = async {
        wait_received(recipient, 10 * MIB).await?;
        donor.set_link_down(true).await?;
        tokio::time::sleep(OUTAGE).await;
        donor.set_link_down(false).await
    };
    let (outcome, outage) = tokio::join!(clone_instance(recipient, from, CLONE_TIMEOUT), outage);
    outage?;
    Ok((outcome?, started.elapsed()))
}

pub async fn a_twenty_second_outage_is_waited_out_without_a_resume() -> anyhow::Result<()> {
    let image = mysql_image().await?;
    let mut options = ServerOptions::donor();
    options.isolated = true;
    let donor = MysqlServer::start(&image, options).await?;
    let dataset = Dataset::of_size(DATASET_BYTES);
    dataset.seed(&donor).await?;
    let donor_sums = dataset.checksums(&donor).await?;
    let donor_addr = donor.bridge_addr().await?;
    // The relay on its defaults.
    let relay = RelayFixture::start(donor_addr)?;
    let via_relay = MysqlServer::start(&image, capped(2, relay.addr())).await?;
    let direct = MysqlServer::start(&image, capped(3, donor_addr)).await?;

    let (outcome, relayed_took) = clone_through_outage(&donor, &via_relay, relay.addr()).await?;
    assert!(outcome.completed(), "through the relay: {outcome:?}");
    assert_eq!(
        mismatches(&donor_sums, &dataset.checksums(&via_relay).await?),
        Vec::<String>::new()
    );
    let view = relay.sessions();
    let session = view.sessions.last().expect("a session");
    assert_eq!(session.resume_count, 0, "{session:#?}");
    let kinds: Vec<_> = session.detections.iter().map(|d| d.kind).collect();
    assert!(
        kinds.contains(&DetectionKind::LinkDown) && !kinds.contains(&DetectionKind::FlowDead),
        "the relay found the link down, never a lost flow: {kinds:?}"
    );

    donor
        .wait_until_clone_free(Duration::from_secs(120))
        .await?;
    let (outcome, direct_took) = clone_through_outage(&donor, &direct, donor_addr).await?;
    assert!(outcome.completed(), "direct: {outcome:?}");
    let ratio = relayed_took.as_secs_f64() / direct_took.as_secs_f64();
    eprintln!(
        "20 s kernel-level outage: through the relay {:.1} s (0 resumes), direct {:.1} s: {ratio:.2}x",
        relayed_took.as_secs_f64(),
        direct_took.as_secs_f64()
    );
    // TCP's retransmission backoff decides when each side notices the link is back, so the
    // two runs differ by up to a backoff step either way; the relay must not add a resume.
    assert!(ratio < 1.25, "{ratio:.2}x the direct clone's time");
    relay.stop().await
}

fn unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// Waits until `recipient` has received `bytes` of its clone over the network.
async fn wait_received(recipient: &MysqlServer, bytes: u64) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(120);
    while received(recipient).await < bytes {
        anyhow::ensure!(
            Instant::now() < deadline,
            "the clone never reached {} MiB",
            bytes / MIB
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Ok(())
}

/// Clones `from` into `recipient`; with `silence`, the donor's open connections go silent for
/// good (new ones work) once [`SILENCE_AT`] bytes have arrived, about 3 s into FILE COPY at
/// 20 MiB/s. The outcome, the clone's wall time, and the moment of the silence (Unix ms).
async fn clone_with_silence(
    donor: &MysqlServer,
    recipient: &MysqlServer,
    from: std::net::SocketAddr,
    silence: bool,
) -> anyhow::Result<(CloneOutcome, Duration, Option<u64>)> {
    let started = Instant::now();
    let cut = async {
        if !silence {
            return anyhow::Ok(None);
        }
        wait_received(recipient, SILENCE_AT).await?;
        donor.silence_open_connections().await?;
        Ok(Some(unix_ms()))
    };
    let (outcome, cut) = tokio::join!(clone_instance(recipient, from, CLONE_TIMEOUT), cut);
    let silenced = cut?;
    donor.set_packet_loss(0.0).await?;
    Ok((outcome?, started.elapsed(), silenced))
}

pub async fn flows_silenced_in_the_kernel_are_found_dead_within_five_seconds() -> anyhow::Result<()>
{
    let image = mysql_image().await?;
    let mut options = ServerOptions::donor();
    options.isolated = true;
    let donor = MysqlServer::start(&image, options).await?;
    let dataset = Dataset::of_size(DATASET_BYTES);
    dataset.seed(&donor).await?;
    let donor_sums = dataset.checksums(&donor).await?;
    let donor_addr = donor.bridge_addr().await?;
    // The relay on its defaults.
    let mut relay = RelayFixture::start(donor_addr)?;
    relay.expect_faults();
    let clean = MysqlServer::start(&image, capped(2, relay.addr())).await?;
    let silenced = MysqlServer::start(&image, capped(3, relay.addr())).await?;

    // A clean run through the same path first.
    let (outcome, clean_took, _) = clone_with_silence(&donor, &clean, relay.addr(), false).await?;
    assert!(outcome.completed(), "clean: {outcome:?}");
    let view = relay.sessions();
    let session = view.sessions.last().expect("a session");
    assert_eq!(session.resume_count, 0, "clean: {session:#?}");
    let clean_session = session.id;

    donor
        .wait_until_clone_free(Duration::from_secs(120))
        .await?;
    let (outcome, took, silenced_at) =
        clone_with_silence(&donor, &silenced, relay.addr(), true).await?;
    assert!(outcome.completed(), "silenced: {outcome:?}");
    assert_eq!(
        mismatches(&donor_sums, &dataset.checksums(&silenced).await?),
        Vec::<String>::new()
    );
    let view = relay.sessions();
    let session = view
        .sessions
        .iter()
        .find(|s| s.id != clean_session)
        .expect("a second session");
    // The silence's moment in the session (taken once the netfilter rules were in), against the
    // first resume's.
    let silence_ms = silenced_at
        .expect("the silence landed")
        .saturating_sub(session.started_at_ms);
    let first_resume = session.resumes.first().expect("the clone resumed");
    let reinit_after = first_resume.at_ms.saturating_sub(silence_ms);
    assert!(
        session
            .detections
            .iter()
            .any(|d| d.kind == DetectionKind::FlowDead),
        "{:?}",
        session.detections
    );
    assert!(
        reinit_after <= 5_000,
        "REINIT {reinit_after} ms after the silence: {session:#?}"
    );
    eprintln!(
        "flows silenced in the kernel 3 s into FILE COPY: REINIT {reinit_after} ms after the \
         silence, clone {:.1} s through the relay against {:.1} s clean ({:.2}x)",
        took.as_secs_f64(),
        clean_took.as_secs_f64(),
        took.as_secs_f64() / clean_took.as_secs_f64()
    );
    if harness::SOAK {
        // MySQL alone with the same failure, on a donor of its own with the same data: the
        // first donor may hold the silenced clone's threads for many minutes.
        let mut options = ServerOptions::donor();
        options.isolated = true;
        let alone = MysqlServer::start(&image, options).await?;
        dataset.seed(&alone).await?;
        let alone_addr = alone.bridge_addr().await?;
        let direct = MysqlServer::start(&image, capped(4, alone_addr)).await?;
        let (outcome, direct_took, _) =
            clone_with_silence(&alone, &direct, alone_addr, true).await?;
        eprintln!(
            "the same silence with no relay: {} after {:.1} s ({:.2}x the relayed clone)",
            outcome.state,
            direct_took.as_secs_f64(),
            direct_took.as_secs_f64() / took.as_secs_f64()
        );
    }
    relay.stop().await
}
