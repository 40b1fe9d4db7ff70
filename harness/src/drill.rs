//! The whole scenario that `clone-drill` runs: a seeded donor, clone-relay in front of it, and a
//! clone through the relay (and optionally a direct one into a second recipient, to compare),
//! each verified table by table.

use std::time::{Duration, Instant};

use anyhow::Result;

use crate::clone::{CloneOutcome, clone_instance};
use crate::dataset::{Dataset, mismatches};
use crate::image::{ImageRef, mysql_image};
use crate::mysql::{MysqlServer, ServerOptions};
use crate::relay::RelayFixture;

/// What to run.
#[derive(Debug, Clone)]
pub struct DrillOptions {
    /// Size of the seeded data set.
    pub dataset_bytes: u64,
    /// Also clone directly from the donor, for comparison.
    pub direct: bool,
    /// Bound on each clone, restart included.
    pub clone_timeout: Duration,
    /// The relay's per-session bandwidth cap, bytes per second (none: uncapped).
    pub session_rate: Option<u64>,
}

impl Default for DrillOptions {
    fn default() -> Self {
        DrillOptions {
            dataset_bytes: 200 * 1024 * 1024,
            direct: true,
            clone_timeout: Duration::from_secs(600),
            session_rate: None,
        }
    }
}

/// One clone and how its result compares with the donor.
#[derive(Debug, Clone)]
pub struct CloneRun {
    pub outcome: CloneOutcome,
    /// Tables whose checksum differs from the donor's, or that are missing.
    pub mismatched_tables: Vec<String>,
}

impl CloneRun {
    pub fn ok(&self) -> bool {
        self.outcome.completed() && self.mismatched_tables.is_empty()
    }
}

/// What a drill did.
#[derive(Debug, Clone)]
pub struct DrillReport {
    pub image: ImageRef,
    pub tables: usize,
    /// Data and index bytes of the seeded tables on the donor.
    pub dataset_bytes: u64,
    pub seed_time: Duration,
    pub via_relay: CloneRun,
    pub direct: Option<CloneRun>,
    /// The session cap the relay ran under, if any.
    pub session_rate: Option<u64>,
    /// The relayed clone's mean rate from the donor as the relay counted it, bytes per second.
    pub relay_rate: f64,
}

impl DrillReport {
    pub fn ok(&self) -> bool {
        self.via_relay.ok() && self.direct.as_ref().is_none_or(CloneRun::ok)
    }
}

/// Runs a drill: builds or finds the image, starts the servers, seeds, clones, compares.
pub async fn run(options: &DrillOptions) -> Result<DrillReport> {
    let image = mysql_image().await?;
    let donor = MysqlServer::start(&image, ServerOptions::donor()).await?;
    let dataset = Dataset::of_size(options.dataset_bytes);
    let seeding = Instant::now();
    let dataset_bytes = dataset.seed(&donor).await?;
    let seed_time = seeding.elapsed();
    let donor_sums = dataset.checksums(&donor).await?;

    let mut config = RelayFixture::config(donor.addr());
    config.limits.session = options.session_rate;
    let relay = RelayFixture::start_with(config)?;
    let relayed = MysqlServer::start(&image, ServerOptions::recipient(2, &[relay.addr()]));
    let direct = async {
        match options.direct {
            true => {
                Some(MysqlServer::start(&image, ServerOptions::recipient(3, &[donor.addr()])).await)
                    .transpose()
            }
            false => Ok(None),
        }
    };
    let (relayed, direct) = tokio::join!(relayed, direct);
    let (relayed, direct) = (relayed?, direct?);

    let mut direct_run = None;
    if let Some(recipient) = &direct {
        let outcome = clone_instance(recipient, donor.addr(), options.clone_timeout).await?;
        let sums = dataset.checksums(recipient).await?;
        direct_run = Some(CloneRun {
            outcome,
            mismatched_tables: mismatches(&donor_sums, &sums),
        });
    }
    let outcome = clone_instance(&relayed, relay.addr(), options.clone_timeout).await?;
    let sums = dataset.checksums(&relayed).await?;
    let via_relay = CloneRun {
        outcome,
        mismatched_tables: mismatches(&donor_sums, &sums),
    };
    let relay_rate = relay
        .sessions()
        .sessions
        .last()
        .filter(|s| s.duration_ms > 0)
        .map_or(0.0, |s| {
            s.bytes_from_upstream as f64 * 1000.0 / s.duration_ms as f64
        });
    relay.stop().await?;

    Ok(DrillReport {
        session_rate: options.session_rate,
        relay_rate,
        image,
        tables: dataset.tables,
        dataset_bytes,
        seed_time,
        via_relay,
        direct: direct_run,
    })
}
