//! A link that goes dark at the kernel level, end to end on the relay's defaults: netfilter in
//! the donor's own network namespace drops every packet for 20 s, new connections included, so
//! the relay's TCP sees a real outage (no proxy above TCP acknowledging for it). The relay must
//! find the link down and keep the session (no resume), and the clone must take about as long
//! as the same outage with no relay in the path, measured in the same run.

use std::time::{Duration, Instant};

use clone_relay::session::DetectionKind;
use harness::clone::{CloneOutcome, clone_instance};
use harness::dataset::{Dataset, mismatches};
use harness::image::mysql_image;
use harness::{MysqlServer, RelayFixture, ServerOptions, docker_available};

const MIB: u64 = 1 << 20;
const DATASET_BYTES: u64 = 100 * MIB;
const OUTAGE: Duration = Duration::from_secs(20);
const CLONE_TIMEOUT: Duration = Duration::from_secs(600);

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
        let deadline = Instant::now() + Duration::from_secs(120);
        while received(recipient).await < 10 * MIB {
            anyhow::ensure!(Instant::now() < deadline, "the clone never reached 10 MiB");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        donor.set_link_down(true).await?;
        tokio::time::sleep(OUTAGE).await;
        donor.set_link_down(false).await
    };
    let (outcome, outage) = tokio::join!(clone_instance(recipient, from, CLONE_TIMEOUT), outage);
    outage?;
    Ok((outcome?, started.elapsed()))
}

#[tokio::test(flavor = "multi_thread")]
async fn a_twenty_second_outage_is_waited_out_without_a_resume() -> anyhow::Result<()> {
    if !docker_available("a_twenty_second_outage_is_waited_out_without_a_resume").await {
        return Ok(());
    }
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
    let capped = |id, valid: std::net::SocketAddr| {
        let mut options = ServerOptions::recipient(id, &[valid]);
        options.extra_args = vec!["--clone-max-network-bandwidth=20".into()];
        options
    };
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
