//! The drill end to end: every named scenario of `clone-drill` with real MySQL, on a short data
//! set with the faults landing mid-transfer, sharing one seeded donor and one recipient (the
//! two-donor scenario adds a second of each), run in turn. It prints the report table and
//! writes it to `$CARGO_TARGET_TMPDIR/drill-report.txt` (and the JSON beside it), which CI
//! shows; every scenario must pass.
//!
//! `CHAOS_SEED=N` moves the seed, and with it every fault offset and loss decision.

use std::time::Duration;

use harness::drill::progress::{Mode, Progress};
use harness::drill::scenario::{self, NAMES};
use harness::drill::{self, DrillOptions};
use harness::require_docker;

const MIB: u64 = 1024 * 1024;
/// About 150 MiB carried per clone: at the scenarios' 40 MiB/s link, 4 s of FILE COPY.
const DATASET_BYTES: u64 = 40 * MIB;

#[tokio::test(flavor = "multi_thread")]
#[ignore = "end-to-end: needs Docker"]
async fn every_drill_scenario_passes_end_to_end() -> anyhow::Result<()> {
    require_docker().await?;
    let seed = std::env::var("CHAOS_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(1);
    let options = DrillOptions {
        dataset_bytes: DATASET_BYTES,
        scenarios: scenario::resolve(&["all".into()], seed)?,
        seed,
        direct: false,
        clone_timeout: Duration::from_secs(180),
        session_rate: None,
        keep: false,
    };
    let report = drill::run(&options, &Progress::new(Mode::Lines)).await?;
    let table = report.table();
    println!("{table}");
    let dir = std::path::Path::new(env!("CARGO_TARGET_TMPDIR"));
    std::fs::write(dir.join("drill-report.txt"), format!("{table}\n"))?;
    std::fs::write(
        dir.join("drill-report.json"),
        serde_json::to_string_pretty(&report)? + "\n",
    )?;

    let ran: Vec<&str> = report
        .scenarios
        .iter()
        .map(|s| s.scenario.as_str())
        .collect();
    assert_eq!(ran, NAMES, "every named scenario ran, in order");
    assert!(report.passed, "a scenario failed (seed {seed}):\n{table}");
    for s in &report.scenarios {
        assert!(
            s.passed && !s.clones.is_empty(),
            "{}: {:?}",
            s.scenario,
            s.checks
        );
    }
    Ok(())
}
