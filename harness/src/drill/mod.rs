//! What `clone-drill` runs: a seeded donor, clone-relay in front of it, and named scenarios (a
//! clean clone, a capped one, a flaky link, a blackhole, a silent death, a lossy link, TLS on
//! both legs, two donors) or custom ones from a TOML file, each cloning through the relay and
//! the chaos proxy into a recipient, checked table by table and against the outcome it must
//! have. Progress shows on stderr; the report is a table and JSON.
//!
//! # Layout
//! - [`scenario`]: what a scenario is, the named ones, the scenario file.
//! - [`report`]: the figures of each clone, the checks, the table.
//! - [`progress`]: bars on a terminal, lines otherwise.
//! - `run`: one scenario on one recipient, and the direct baseline (the orchestration).
//! - `watch`: the watch over the relay's sessions that feeds the bars, fires the events and
//!   takes the samples.
//! - `figures`: a clone's figures, from those samples, its outcome and the checksums.
//! - `two_donors`: the scenario with two donors and two recipients.
//!
//! Every scenario shares one seeded donor and one recipient (the two-donor scenario adds a
//! second of each) and runs in turn, each once the donor holds no clone; each gets a fresh chaos
//! proxy and relay.

mod figures;
pub mod progress;
pub mod report;
mod run;
pub mod scenario;
mod two_donors;
mod watch;

use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use serde::Serialize;

use crate::dataset::{Checksums, Dataset};
use crate::image::{ImageRef, mysql_image};
use crate::mysql::{CONTAINER_LABEL, MysqlServer, ServerOptions};
use progress::Progress;
use report::ScenarioReport;
use scenario::{Layout, Scenario};

/// The donors' `clone_donor_timeout_after_network_failure` (minutes): how long a donor holds a
/// clone whose connection failed. One minute bounds what a hold that no resume ends can cost
/// the next scenario.
const DONOR_RESUME_MINUTES: u64 = 1;
/// Bound on waiting, before a scenario, for the donor to hold no clone.
const DONOR_FREE_WAIT: Duration = Duration::from_secs(120);

/// What to run.
#[derive(Debug, Clone)]
pub struct DrillOptions {
    /// Size of the seeded data set.
    pub dataset_bytes: u64,
    pub scenarios: Vec<Scenario>,
    /// The seed the scenarios' offsets were drawn from, and the chaos proxy's.
    pub seed: u64,
    /// Also clone directly from the donor (after the scenarios), as the baseline.
    pub direct: bool,
    /// Bound on each clone, restart included.
    pub clone_timeout: Duration,
    /// A per-clone cap for every scenario's relay, over the scenario's own.
    pub session_rate: Option<u64>,
    /// Leave the containers running when the drill ends.
    pub keep: bool,
}

impl Default for DrillOptions {
    fn default() -> Self {
        DrillOptions {
            dataset_bytes: 200 * 1024 * 1024,
            scenarios: scenario::resolve(&["clean".into()], 1).expect("clean exists"),
            seed: 1,
            direct: true,
            clone_timeout: Duration::from_secs(600),
            session_rate: None,
            keep: false,
        }
    }
}

/// A container left running by `--keep`, and how to reach it.
#[derive(Debug, Clone, Serialize)]
pub struct KeptServer {
    pub name: String,
    pub container: String,
    pub addr: String,
}

/// What a drill did.
#[derive(Debug, Clone, Serialize)]
pub struct DrillReport {
    pub image: String,
    pub tables: usize,
    /// Data and index bytes of the seeded tables on the donor.
    pub dataset_bytes: u64,
    pub seed_secs: f64,
    pub seed: u64,
    pub duration_secs: f64,
    pub scenarios: Vec<ScenarioReport>,
    pub passed: bool,
    pub kept: Vec<KeptServer>,
}

impl DrillReport {
    pub fn table(&self) -> String {
        report::table(&self.scenarios)
    }
}

/// A server that `--keep` leaves running: its container is not removed when the drill ends.
#[derive(Debug)]
struct Kept {
    server: Option<MysqlServer>,
    keep: bool,
}

impl std::ops::Deref for Kept {
    type Target = MysqlServer;
    fn deref(&self) -> &MysqlServer {
        self.server.as_ref().expect("present until dropped")
    }
}

impl Drop for Kept {
    fn drop(&mut self) {
        if self.keep
            && let Some(server) = self.server.take()
        {
            // Without its drop the container handle never asks Docker to remove it.
            std::mem::forget(server);
        }
    }
}

/// The second donor and recipient of the two-donor scenario.
#[derive(Debug)]
struct Second {
    donor: Kept,
    recipient: Kept,
    sums: Checksums,
}

/// What every scenario shares.
#[derive(Debug)]
struct Rig {
    donor: Kept,
    recipient: Kept,
    dataset: Dataset,
    donor_sums: Checksums,
    second: Option<Second>,
    clone_timeout: Duration,
    session_rate: Option<u64>,
}

/// Runs a drill: finds or builds the image, starts and seeds the servers, runs every scenario
/// in turn. Only the drill's own trouble before the first scenario is an error; a scenario that
/// fails, or that the drill could not run, is reported as failed.
pub async fn run(options: &DrillOptions, progress: &Progress) -> Result<DrillReport> {
    let began = Instant::now();
    let step = progress.spinner("finding or building the MySQL image");
    let image = mysql_image().await?;
    step.finish(format!("image {image}"));

    let two = options
        .scenarios
        .iter()
        .any(|s| s.layout == Layout::TwoDonors);
    let step = progress.spinner(match two {
        true => "starting two donors and two recipients",
        false => "starting the donor and the recipient",
    });
    let starting = Instant::now();
    let (donor, recipient, second) = tokio::join!(
        start(&image, donor_options("drill-donor", 1), options.keep),
        start(
            &image,
            recipient_options("drill-recipient", 2),
            options.keep
        ),
        async {
            match two {
                true => {
                    let mut recipient = recipient_options("drill-recipient-b", 4);
                    // An address of its own, so the relay tells the two recipients apart.
                    recipient.isolated = true;
                    let (d, r) = tokio::join!(
                        start(&image, donor_options("drill-donor-b", 3), options.keep),
                        start(&image, recipient, options.keep)
                    );
                    anyhow::Ok(Some((d?, r?)))
                }
                false => Ok(None),
            }
        }
    );
    let (donor, recipient, second): (Kept, Kept, Option<(Kept, Kept)>) =
        (donor?, recipient?, second?);
    step.finish(format!(
        "servers up in {:.1} s",
        starting.elapsed().as_secs_f64()
    ));

    let dataset = Dataset::of_size(options.dataset_bytes);
    let seeding = Instant::now();
    let (dataset_bytes, second_seeded) = tokio::join!(seed(&dataset, &donor, progress), async {
        match &second {
            Some((d, _)) => seed(&dataset, d, progress).await.map(Some),
            None => Ok(None),
        }
    });
    let (dataset_bytes, _) = (dataset_bytes?, second_seeded?);
    let seed_secs = seeding.elapsed().as_secs_f64();
    let donor_sums = dataset.checksums(&donor).await?;
    let second = match second {
        Some((donor, recipient)) => Some(Second {
            sums: dataset.checksums(&donor).await?,
            donor,
            recipient,
        }),
        None => None,
    };
    let rig = Rig {
        donor,
        recipient,
        dataset,
        donor_sums,
        second,
        clone_timeout: options.clone_timeout,
        session_rate: options.session_rate,
    };

    let mut scenarios = Vec::new();
    for s in &options.scenarios {
        progress.note(format!("scenario {}: {}", s.name, s.description));
        let report = match s.layout {
            Layout::Single => run::single(&rig, s, options.seed, progress).await,
            Layout::TwoDonors => two_donors::run(&rig, s, options.seed, progress).await,
        };
        progress.note(format!(
            "scenario {}: {} in {:.1} s",
            s.name,
            if report.passed { "passed" } else { "FAILED" },
            report.duration_secs
        ));
        scenarios.push(report);
    }
    // Last, so that it meets the donor and the recipient as warm as the relayed clones did.
    if options.direct {
        scenarios.push(run::direct(&rig, options.seed, progress).await);
    }

    let kept = match options.keep {
        true => kept_servers(&rig).await,
        false => Vec::new(),
    };
    let passed = !scenarios.is_empty() && scenarios.iter().all(|s| s.passed);
    Ok(DrillReport {
        image: image.to_string(),
        tables: rig.dataset.tables,
        dataset_bytes,
        seed_secs,
        seed: options.seed,
        duration_secs: began.elapsed().as_secs_f64(),
        scenarios,
        passed,
        kept,
    })
}

fn donor_options(name: &str, server_id: u32) -> ServerOptions {
    let mut options = ServerOptions::donor();
    options.name = name.into();
    options.server_id = server_id;
    options.extra_args = vec![format!(
        "--clone-donor-timeout-after-network-failure={DONOR_RESUME_MINUTES}"
    )];
    options
}

/// A recipient cloning with its main connection, the aux and one worker (so the chaos proxy's
/// connection indexes 1, 2 and 3 are the clone's first connections). The donors it may clone
/// from are set before each clone (a clone's restart forgets them).
fn recipient_options(name: &str, server_id: u32) -> ServerOptions {
    let mut options = ServerOptions::recipient(server_id, &[]);
    options.name = name.into();
    options.extra_args = vec![
        "--clone-autotune-concurrency=OFF".into(),
        "--clone-max-concurrency=2".into(),
    ];
    options
}

async fn start(image: &ImageRef, options: ServerOptions, keep: bool) -> Result<Kept> {
    Ok(Kept {
        server: Some(MysqlServer::start(image, options).await?),
        keep,
    })
}

/// Seeds `donor`, with a bar fed by the size of the schema's files while it grows.
async fn seed(dataset: &Dataset, donor: &MysqlServer, progress: &Progress) -> Result<u64> {
    let bar = progress.bytes(format!("seeding {}", donor.name()), dataset.total_bytes);
    let started = Instant::now();
    let seeding = dataset.seed(donor);
    tokio::pin!(seeding);
    let bytes = loop {
        tokio::select! {
            bytes = &mut seeding => break bytes.with_context(|| format!("seeding {}", donor.name()))?,
            () = tokio::time::sleep(Duration::from_millis(700)), if progress.drawn() => {
                let du = donor
                    .shell(&format!("du -sb /var/lib/clone-relay/data/{}", dataset.schema))
                    .await
                    .ok()
                    .and_then(|out| out.split_whitespace().next()?.parse::<u64>().ok());
                if let Some(du) = du {
                    bar.set(du.min(dataset.total_bytes));
                }
            }
        }
    };
    bar.finish(format!(
        "seeded {} with {:.1} MiB in {:.1} s",
        donor.name(),
        bytes as f64 / (1024.0 * 1024.0),
        started.elapsed().as_secs_f64()
    ));
    Ok(bytes)
}

/// The containers `--keep` leaves, found by their label.
async fn kept_servers(rig: &Rig) -> Vec<KeptServer> {
    let mut servers: Vec<&MysqlServer> = vec![&rig.donor, &rig.recipient];
    if let Some(second) = &rig.second {
        servers.push(&second.donor);
        servers.push(&second.recipient);
    }
    let mut kept = Vec::new();
    for server in servers {
        let container = tokio::process::Command::new("docker")
            .args([
                "ps",
                "-q",
                "--no-trunc",
                "--filter",
                &format!("label={CONTAINER_LABEL}={}", server.name()),
            ])
            .output()
            .await
            .ok()
            .and_then(|out| {
                String::from_utf8_lossy(&out.stdout)
                    .lines()
                    .next()
                    .map(|id| id.chars().take(12).collect())
            })
            .unwrap_or_else(|| "?".into());
        kept.push(KeptServer {
            name: server.name().to_string(),
            container,
            addr: server.addr().to_string(),
        });
    }
    kept
}
