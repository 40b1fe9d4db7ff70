//! End to end under faults: a clone through the relay and the chaos proxy under latency, loss
//! and slicing, and a clone under real packet loss on the donor container's interface, each
//! proven by checksums. Every failure message carries the seed, to replay it.

use std::time::Duration;

use chaos::{ChaosProxy, FaultKind, FaultSpec};
use harness::clone::clone_instance;
use harness::dataset::{Dataset, mismatches};
use harness::image::mysql_image;
use harness::{MysqlServer, RelayFixture, ServerOptions};

const DATASET_BYTES: u64 = 100 * 1024 * 1024;
const CLONE_TIMEOUT: Duration = Duration::from_secs(600);

/// The seed of this run: `CHAOS_SEED` when set (to replay a failure), else a fixed one.
fn seed() -> u64 {
    std::env::var("CHAOS_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(20_261_121)
}

pub async fn a_clone_survives_latency_loss_and_slicing() -> anyhow::Result<()> {
    let seed = seed();
    let image = mysql_image().await?;
    let donor = MysqlServer::start(&image, ServerOptions::donor()).await?;
    let dataset = Dataset::of_size(DATASET_BYTES);
    dataset.seed(&donor).await?;

    let faults = vec![
        FaultSpec::new(FaultKind::Latency {
            latency_ms: 3,
            jitter_ms: 1,
        }),
        FaultSpec::new(FaultKind::Loss {
            probability: 0.002,
            segment_bytes: 1448,
            retransmit_ms: 20,
        }),
        FaultSpec::new(FaultKind::Slicer {
            average_bytes: 8192,
            variation_bytes: 4096,
            delay_us: 0,
        }),
    ];
    let chaos = ChaosProxy::start(
        "127.0.0.1:0".parse()?,
        donor.addr().to_string(),
        seed,
        faults,
    )
    .await?;
    let mut relay = RelayFixture::start(chaos.addr())?;
    relay.expect_faults();
    let recipient =
        MysqlServer::start(&image, ServerOptions::recipient(2, &[relay.addr()])).await?;

    let outcome = clone_instance(&recipient, relay.addr(), CLONE_TIMEOUT).await?;

    assert!(outcome.completed(), "seed {seed}: {outcome:?}");
    let lost = chaos
        .control()
        .decisions()
        .iter()
        .filter(|d| d.what == "segment lost")
        .count();
    assert!(
        lost > 10,
        "seed {seed}: only {lost} losses: the faults did not bite"
    );
    eprintln!(
        "seed {seed}: {lost} emulated losses, clone {:.1} s",
        outcome.statement_time.as_secs_f64()
    );
    let donor_sums = dataset.checksums(&donor).await?;
    let recipient_sums = dataset.checksums(&recipient).await?;
    assert_eq!(
        mismatches(&donor_sums, &recipient_sums),
        Vec::<String>::new(),
        "seed {seed}"
    );
    relay.stop().await
}

pub async fn a_clone_survives_real_packet_loss_at_the_donor() -> anyhow::Result<()> {
    let image = mysql_image().await?;
    let mut options = ServerOptions::donor();
    options.isolated = true;
    let donor = MysqlServer::start(&image, options).await?;
    let dataset = Dataset::of_size(DATASET_BYTES);
    dataset.seed(&donor).await?;
    let mut relay = RelayFixture::start(donor.addr())?;
    relay.expect_faults();
    let recipient =
        MysqlServer::start(&image, ServerOptions::recipient(2, &[relay.addr()])).await?;

    donor.set_packet_loss(0.05).await?;
    let outcome = clone_instance(&recipient, relay.addr(), CLONE_TIMEOUT).await?;
    let dropped = donor.dropped_packets().await?;
    donor.set_packet_loss(0.0).await?;

    assert!(outcome.completed(), "{outcome:?}");
    assert!(dropped > 100, "only {dropped} packets dropped");
    eprintln!(
        "5% loss both ways at the donor: {dropped} packets dropped, clone {:.1} s",
        outcome.statement_time.as_secs_f64()
    );
    let donor_sums = dataset.checksums(&donor).await?;
    let recipient_sums = dataset.checksums(&recipient).await?;
    assert_eq!(
        mismatches(&donor_sums, &recipient_sums),
        Vec::<String>::new()
    );
    relay.stop().await
}
