//! End to end: a real MySQL donor and recipient in containers, CLONE INSTANCE of more than
//! 100 MB, once through clone-relay and once directly, data verified table by table.

use std::time::Duration;

use harness::clone::clone_instance;
use harness::dataset::{Dataset, mismatches};
use harness::image::mysql_image;
use harness::{MysqlServer, RelayFixture, ServerOptions};

const DATASET_BYTES: u64 = 120 * 1024 * 1024;
const MIN_SEEDED_BYTES: u64 = 100 * 1024 * 1024;
const CLONE_TIMEOUT: Duration = Duration::from_secs(300);

/// A seeded donor: the server and its data set.
async fn seeded_donor() -> anyhow::Result<(MysqlServer, Dataset)> {
    let image = mysql_image().await?;
    let donor = MysqlServer::start(&image, ServerOptions::donor()).await?;
    let dataset = Dataset::of_size(DATASET_BYTES);
    let seeded = dataset.seed(&donor).await?;
    assert!(
        seeded >= MIN_SEEDED_BYTES,
        "seeded only {seeded} bytes, want at least {MIN_SEEDED_BYTES}"
    );
    Ok((donor, dataset))
}

pub async fn clone_through_relay_matches_donor() -> anyhow::Result<()> {
    let (donor, dataset) = seeded_donor().await?;
    let relay = RelayFixture::start(donor.addr())?;
    // Only the relay is a valid donor: the clone cannot bypass it.
    let recipient = MysqlServer::start(
        &mysql_image().await?,
        ServerOptions::recipient(2, &[relay.addr()]),
    )
    .await?;

    let outcome = clone_instance(&recipient, relay.addr(), CLONE_TIMEOUT).await?;

    assert!(outcome.completed(), "clone failed: {outcome:?}");
    assert_eq!(outcome.source, relay.addr().to_string());
    assert!(outcome.data_bytes >= MIN_SEEDED_BYTES, "{outcome:?}");
    let donor_sums = dataset.checksums(&donor).await?;
    let recipient_sums = dataset.checksums(&recipient).await?;
    assert_eq!(
        mismatches(&donor_sums, &recipient_sums),
        Vec::<String>::new()
    );
    relay.stop().await
}

pub async fn direct_clone_matches_donor() -> anyhow::Result<()> {
    let (donor, dataset) = seeded_donor().await?;
    let recipient = MysqlServer::start(
        &mysql_image().await?,
        ServerOptions::recipient(2, &[donor.addr()]),
    )
    .await?;

    let outcome = clone_instance(&recipient, donor.addr(), CLONE_TIMEOUT).await?;

    assert!(outcome.completed(), "clone failed: {outcome:?}");
    assert_eq!(outcome.source, donor.addr().to_string());
    let donor_sums = dataset.checksums(&donor).await?;
    let recipient_sums = dataset.checksums(&recipient).await?;
    assert_eq!(
        mismatches(&donor_sums, &recipient_sums),
        Vec::<String>::new()
    );
    Ok(())
}

pub async fn clone_through_relay_to_a_dead_donor_fails_clearly() -> anyhow::Result<()> {
    // A port nothing listens on: the relay cannot reach its upstream.
    let dead = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?;
    let relay = RelayFixture::start(dead)?;
    let recipient = MysqlServer::start(
        &mysql_image().await?,
        ServerOptions::recipient(2, &[relay.addr()]),
    )
    .await?;

    let outcome = clone_instance(&recipient, relay.addr(), CLONE_TIMEOUT).await?;

    assert_eq!(outcome.state, "Failed", "{outcome:?}");
    assert!(
        outcome.error_message.contains("unreachable"),
        "the recipient should see the relay's reason: {outcome:?}"
    );
    relay.stop().await
}
