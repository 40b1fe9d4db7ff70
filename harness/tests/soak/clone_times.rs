//! Clone times of one data set, direct and through clone-relay (a process of its own, on its
//! defaults), plain and with TLS, each clone timed by the recipient's own `clone_progress` over
//! its transfer stages (FILE COPY through REDO COPY: the copy alone, without the restart and
//! recovery that follow) and checked table by table. Each cell clones several times, the order
//! of direct and relay alternating round by round; the medians are judged:
//!
//! - uncapped, and a link capped at 20 MiB/s (a chaos proxy in front of the donor, which both
//!   paths cross): relay / direct at most 1.05x;
//! - capped at 20 MiB/s by MySQL (the recipient's `clone_max_network_bandwidth`): the relayed
//!   clone at least at the cap (within 5%). MySQL's throttle does not hold a single thread to
//!   its cap: it sleeps off at most 1 s per check, so a clone runs above the cap by however much
//!   the thread can read in a burst after each sleep (1.1x to 2x of the cap here, direct and
//!   relayed). relay / direct is printed for that cell, not judged: it compares two overshoots.
//!
//! It runs in the soak tier only (about fifteen minutes, and a release build of the relay):
//! 200 MiB of tables, five rounds; `CLONE_TIMES_QUICK=1` makes that the two capped cells,
//! 100 MiB, three rounds.

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::{Result, ensure};
use chaos::{ChaosProxy, Direction, FaultKind, FaultSpec};
use harness::clone::{Transport, clone_instance_with};
use harness::dataset::{Dataset, mismatches};
use harness::image::mysql_image;
use harness::process::{RelayProcess, release_relay_binary};
use harness::{MysqlServer, ServerOptions, require_docker};

const MIB: u64 = 1 << 20;
const CLONE_TIMEOUT: Duration = Duration::from_secs(600);
/// The cap of the capped cells, on the link and in MySQL, in MiB/s.
const CAP_MIB: u64 = 20;
/// The most a relayed median may exceed the direct one by, or fall short of the cap by.
const MAX_RATIO: f64 = 1.05;
/// The chaos proxy's seed (its rate cap draws nothing; the seed only names the run).
const SEED: u64 = 25;

/// The middle value (the mean of the two middle ones for an even count).
fn median(values: &[f64]) -> f64 {
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    let mid = sorted.len() / 2;
    if sorted.len().is_multiple_of(2) {
        (sorted[mid - 1] + sorted[mid]) / 2.0
    } else {
        sorted[mid]
    }
}

/// What a cell's medians must show.
#[derive(Clone, Copy)]
enum Judge {
    /// relay / direct at most [`MAX_RATIO`].
    AsFastAsDirect,
    /// The relayed rate at least the cap / [`MAX_RATIO`].
    AtLeastTheCap,
}

/// One cell: a recipient, and where its two paths lead.
struct Cell<'a> {
    cap: &'static str,
    recipient: &'a MysqlServer,
    direct: SocketAddr,
    relay: SocketAddr,
    judge: Judge,
}

/// One path's clones in a cell: transfer seconds, and network MiB/s.
#[derive(Default)]
struct Times {
    secs: Vec<f64>,
    mib_per_sec: Vec<f64>,
}

fn list(values: &[f64]) -> String {
    values
        .iter()
        .map(|v| format!("{v:.2}"))
        .collect::<Vec<_>>()
        .join(", ")
}

#[tokio::test(flavor = "multi_thread")]
async fn clone_times_direct_and_through_the_relay() -> Result<()> {
    require_docker().await?;
    let full = std::env::var("CLONE_TIMES_QUICK").is_err();
    let (dataset_bytes, rounds) = if full { (200 * MIB, 5) } else { (100 * MIB, 3) };
    let binary = release_relay_binary().await?;
    let image = mysql_image().await?;
    let donor = MysqlServer::start(&image, ServerOptions::donor()).await?;
    let dataset = Dataset::of_size(dataset_bytes);
    dataset.seed(&donor).await?;
    let donor_sums = dataset.checksums(&donor).await?;

    // The thin link: every byte towards the recipient, of every connection, through one cap.
    let link = ChaosProxy::start(
        "127.0.0.1:0".parse()?,
        donor.addr().to_string(),
        SEED,
        vec![
            FaultSpec::new(FaultKind::Bandwidth {
                rate_bytes_per_sec: CAP_MIB * MIB,
                shared_group: Some("link".into()),
            })
            .direction(Direction::Downstream),
        ],
    )
    .await?;
    let relay = RelayProcess::start_binary(&binary, donor.addr(), &[]).await?;
    let relay_over_link = RelayProcess::start_binary(&binary, link.addr(), &[]).await?;
    let valid = [
        donor.addr(),
        relay.addr(),
        link.addr(),
        relay_over_link.addr(),
    ];
    let mut options = ServerOptions::recipient(3, &valid);
    options.extra_args = vec![format!("--clone-max-network-bandwidth={CAP_MIB}")];
    let mysql_capped = MysqlServer::start(&image, options).await?;
    let uncapped = MysqlServer::start(&image, ServerOptions::recipient(2, &valid)).await?;

    let mut cells = vec![
        Cell {
            cap: "link 20 MiB/s",
            recipient: &uncapped,
            direct: link.addr(),
            relay: relay_over_link.addr(),
            judge: Judge::AsFastAsDirect,
        },
        Cell {
            cap: "MySQL 20 MiB/s",
            recipient: &mysql_capped,
            direct: donor.addr(),
            relay: relay.addr(),
            judge: Judge::AtLeastTheCap,
        },
    ];
    if full {
        cells.insert(
            0,
            Cell {
                cap: "uncapped",
                recipient: &uncapped,
                direct: donor.addr(),
                relay: relay.addr(),
                judge: Judge::AsFastAsDirect,
            },
        );
    }

    let mut rows = Vec::new();
    let mut failed = Vec::new();
    for cell in &cells {
        for (legs, transport) in [("plain", Transport::NoSsl), ("TLS", Transport::Default)] {
            let (mut direct, mut relayed) = (Times::default(), Times::default());
            for round in 0..rounds {
                let mut paths = [("direct", cell.direct), ("relay", cell.relay)];
                if round % 2 == 1 {
                    paths.reverse();
                }
                for (path, from) in paths {
                    donor
                        .wait_until_clone_free(Duration::from_secs(120))
                        .await?;
                    let outcome =
                        clone_instance_with(cell.recipient, from, CLONE_TIMEOUT, transport).await?;
                    let what = format!("{} {legs} {path}, round {}", cell.cap, round + 1);
                    ensure!(outcome.completed(), "{what}: {outcome:?}");
                    let differ = mismatches(&donor_sums, &dataset.checksums(cell.recipient).await?);
                    ensure!(differ.is_empty(), "{what}: {differ:?}");
                    ensure!(
                        !outcome.transfer_time.is_zero(),
                        "{what}: clone_progress timed no transfer stage"
                    );
                    let secs = outcome.transfer_time.as_secs_f64();
                    let times = if path == "direct" {
                        &mut direct
                    } else {
                        &mut relayed
                    };
                    times.secs.push(secs);
                    times
                        .mib_per_sec
                        .push(outcome.network_bytes as f64 / MIB as f64 / secs);
                }
            }
            let ratio = median(&relayed.secs) / median(&direct.secs);
            let relayed_rate = median(&relayed.mib_per_sec);
            rows.push(format!(
                "| {} | {legs} | {:.2} ({}) | {:.1} | {:.2} ({}) | {relayed_rate:.1} | {ratio:.3}x |",
                cell.cap,
                median(&direct.secs),
                list(&direct.secs),
                median(&direct.mib_per_sec),
                median(&relayed.secs),
                list(&relayed.secs),
            ));
            match cell.judge {
                Judge::AsFastAsDirect if ratio > MAX_RATIO => failed.push(format!(
                    "{} {legs}: relay / direct {ratio:.3}x, above {MAX_RATIO}x",
                    cell.cap
                )),
                Judge::AtLeastTheCap if relayed_rate * MAX_RATIO < CAP_MIB as f64 => {
                    failed.push(format!(
                        "{} {legs}: relayed at {relayed_rate:.1} MiB/s, under the cap",
                        cell.cap
                    ))
                }
                _ => {}
            }
        }
    }
    eprintln!(
        "clone of {} MiB of tables, transfer stages by the recipient's clone_progress (seconds: \
         median, then each round's, the order alternating; MiB/s of network bytes, median), \
         relay {}:\n\
         | cap | legs | direct (s) | direct MiB/s | through clone-relay (s) | relayed MiB/s | relay / direct |\n\
         |---|---|---:|---:|---:|---:|---:|\n{}",
        dataset_bytes / MIB,
        binary.display(),
        rows.join("\n")
    );
    ensure!(failed.is_empty(), "{}", failed.join("; "));
    Ok(())
}

#[test]
fn the_median_takes_the_middle() {
    assert_eq!(median(&[3.0, 1.0, 2.0]), 2.0);
    assert_eq!(median(&[4.0, 1.0, 3.0, 2.0]), 2.5);
}
