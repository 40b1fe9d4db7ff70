//! The relay's memory, as a process of its own on its defaults (TLS on both legs, as CLONE uses
//! it): its peak resident set while it carries a 16-connection clone at full speed, and its
//! resident set across repeated clones, which must not grow. CI runs 4 clones;
//! the soak tier (`--features harness/soak`) runs 20.

use std::time::Duration;

use harness::clone::clone_instance;
use harness::dataset::{Dataset, mismatches};
use harness::image::mysql_image;
use harness::process::RelayProcess;
use harness::{MysqlServer, ServerOptions};

const MIB: u64 = 1 << 20;
const DATASET_BYTES: u64 = 200 * MIB;
const CLONE_TIMEOUT: Duration = Duration::from_secs(600);
/// The target: the relay's peak resident set during a full-speed clone.
const RSS_CEILING: u64 = 64 * MIB;
/// How much the resident set may differ between the first clone and the last.
const SOAK_DRIFT: u64 = 8 * MIB;

fn clones() -> usize {
    match harness::SOAK {
        true => 20,
        false => 4,
    }
}

fn mib(bytes: u64) -> f64 {
    bytes as f64 / MIB as f64
}

pub async fn the_relay_stays_small_and_flat_over_repeated_full_speed_clones() -> anyhow::Result<()>
{
    let image = mysql_image().await?;
    let donor = MysqlServer::start(&image, ServerOptions::donor()).await?;
    let dataset = Dataset::of_size(DATASET_BYTES);
    dataset.seed(&donor).await?;
    let donor_sums = dataset.checksums(&donor).await?;
    let relay = RelayProcess::start(donor.addr(), &[]).await?;
    let mut options = ServerOptions::recipient(2, &[relay.addr()]);
    // Sixteen workers from the start, uncapped.
    options.extra_args = vec![
        "--clone-autotune-concurrency=OFF".into(),
        "--clone-max-concurrency=16".into(),
    ];
    let recipient = MysqlServer::start(&image, options).await?;
    let (idle, _) = relay.memory()?;

    let mut after_each = Vec::new();
    let mut peak_during_first = 0;
    for round in 0..clones() {
        let clone = clone_instance(&recipient, relay.addr(), CLONE_TIMEOUT);
        tokio::pin!(clone);
        let outcome = loop {
            tokio::select! {
                outcome = &mut clone => break outcome?,
                () = tokio::time::sleep(Duration::from_millis(20)) => {
                    if round == 0 {
                        peak_during_first = peak_during_first.max(relay.memory()?.0);
                    }
                }
            }
        };
        assert!(outcome.completed(), "clone {}: {outcome:?}", round + 1);
        if round == 0 {
            assert_eq!(
                mismatches(&donor_sums, &dataset.checksums(&recipient).await?),
                Vec::<String>::new()
            );
            let sessions = relay.sessions_json().await?;
            let conns = sessions["sessions"][0]["connections"]
                .as_array()
                .map_or(0, Vec::len);
            assert!(conns >= 17, "main, aux and 16 workers expected: {conns}");
        }
        after_each.push(relay.memory()?.0);
        donor
            .wait_until_clone_free(Duration::from_secs(120))
            .await?;
    }
    let (_, hwm) = relay.memory()?;
    let first = after_each[0];
    let last = *after_each.last().expect("at least one clone");
    eprintln!(
        "relay memory: idle {:.1} MiB; during the first 16-connection clone at full speed \
         {:.1} MiB (peak over the run {:.1} MiB); after each of {} clones {} MiB",
        mib(idle),
        mib(peak_during_first),
        mib(hwm),
        after_each.len(),
        after_each
            .iter()
            .map(|b| format!("{:.1}", mib(*b)))
            .collect::<Vec<_>>()
            .join(", ")
    );
    assert!(hwm < RSS_CEILING, "peak {:.1} MiB", mib(hwm));
    assert!(
        last.abs_diff(first) <= SOAK_DRIFT,
        "the resident set moved from {:.1} to {:.1} MiB over {} clones",
        mib(first),
        mib(last),
        after_each.len()
    );
    Ok(())
}
