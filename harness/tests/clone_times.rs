//! Clone times of one data set, direct and through clone-relay on its defaults, plain and with
//! TLS, uncapped and capped at 20 MiB/s by MySQL (`clone_max_network_bandwidth`), in one run,
//! printed as a table with each relayed time's ratio to the direct one. Every clone is checked
//! table by table. It takes a few minutes, so it runs with `CLONE_RELAY_SOAK=1` only.

use std::time::Duration;

use harness::clone::{Transport, clone_instance_with};
use harness::dataset::{Dataset, mismatches};
use harness::image::mysql_image;
use harness::{MysqlServer, RelayFixture, ServerOptions, docker_available};

const MIB: u64 = 1 << 20;
const DATASET_BYTES: u64 = 200 * MIB;
const CLONE_TIMEOUT: Duration = Duration::from_secs(600);

#[tokio::test(flavor = "multi_thread")]
async fn clone_times_direct_and_through_the_relay() -> anyhow::Result<()> {
    if !std::env::var("CLONE_RELAY_SOAK").is_ok_and(|v| v == "1") {
        eprintln!("clone_times: set CLONE_RELAY_SOAK=1 to measure (a few minutes)");
        return Ok(());
    }
    if !docker_available("clone_times_direct_and_through_the_relay").await {
        return Ok(());
    }
    let image = mysql_image().await?;
    let donor = MysqlServer::start(&image, ServerOptions::donor()).await?;
    let dataset = Dataset::of_size(DATASET_BYTES);
    dataset.seed(&donor).await?;
    let donor_sums = dataset.checksums(&donor).await?;
    let relay = RelayFixture::start(donor.addr())?;
    let valid = [donor.addr(), relay.addr()];
    let uncapped = MysqlServer::start(&image, ServerOptions::recipient(2, &valid)).await?;
    let mut options = ServerOptions::recipient(3, &valid);
    options.extra_args = vec!["--clone-max-network-bandwidth=20".into()];
    let capped = MysqlServer::start(&image, options).await?;

    let mut rows = Vec::new();
    for (cap, recipient) in [("uncapped", &uncapped), ("20 MiB/s", &capped)] {
        for (legs, transport) in [("plain", Transport::NoSsl), ("TLS", Transport::Default)] {
            let mut times = Vec::new();
            for (path, from) in [("direct", donor.addr()), ("relay", relay.addr())] {
                donor
                    .wait_until_clone_free(Duration::from_secs(120))
                    .await?;
                let outcome =
                    clone_instance_with(recipient, from, CLONE_TIMEOUT, transport).await?;
                anyhow::ensure!(outcome.completed(), "{cap} {legs} {path}: {outcome:?}");
                let differ = mismatches(&donor_sums, &dataset.checksums(recipient).await?);
                anyhow::ensure!(differ.is_empty(), "{cap} {legs} {path}: {differ:?}");
                times.push(outcome.statement_time.as_secs_f64());
            }
            rows.push(format!(
                "| {cap} | {legs} | {:.1} | {:.1} | {:.2}x |",
                times[0],
                times[1],
                times[1] / times[0]
            ));
        }
    }
    eprintln!(
        "clone of {} MiB of tables (CLONE INSTANCE statement time, s):\n\
         | cap | legs | direct | through clone-relay | relay / direct |\n\
         |---|---|---:|---:|---:|\n{}",
        DATASET_BYTES / MIB,
        rows.join("\n")
    );
    relay.stop().await
}
