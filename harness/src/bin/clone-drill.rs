//! `clone-drill`: rehearse a clone through clone-relay under faults, end to end. It builds or
//! finds the MySQL image, starts a donor and a recipient in containers, seeds the donor, and runs
//! the scenarios asked for (named ones, or custom ones from TOML files), each through a fresh
//! in-process relay and chaos proxy, checking every table and the outcome the scenario must
//! have. Progress goes to stderr, the report table to stdout (and JSON with `--json`). It exits
//! non-zero when any scenario fails.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use harness::drill::progress::Progress;
use harness::drill::scenario::{self, Scenario};
use harness::drill::{self, DrillOptions, DrillReport};

#[derive(Debug, Parser)]
#[command(
    name = "clone-drill",
    version,
    after_help = "Named scenarios: clean, capped, flaky-link, blackhole, silent-death, lossy, tls, \
                  two-donors (or all)."
)]
struct Cli {
    /// A named scenario to run; repeat for several, or `all`. Default: clean (when no
    /// --scenario-file is given).
    #[arg(long = "scenario", value_name = "NAME")]
    scenarios: Vec<String>,

    /// A custom scenario from a TOML file (see harness/scenarios/); repeatable.
    #[arg(long = "scenario-file", value_name = "FILE")]
    scenario_files: Vec<PathBuf>,

    /// The seed every fault offset and loss decision is drawn from: the same seed lands the
    /// same faults at the same bytes.
    #[arg(long, default_value_t = 1)]
    seed: u64,

    /// Size of the data set to seed, in MiB.
    #[arg(long, default_value_t = 200)]
    size_mib: u64,

    /// Skip the direct clone (the baseline without the relay).
    #[arg(long)]
    no_direct: bool,

    /// Bound on each clone, restart included, in seconds.
    #[arg(long, default_value_t = 600)]
    clone_timeout_secs: u64,

    /// Cap every scenario's relay at this rate per clone (the relay's --session-rate, e.g.
    /// 20MiB/s), over the scenario's own cap.
    #[arg(long, value_name = "RATE", value_parser = plumbing::units::parse_rate)]
    session_rate: Option<u64>,

    /// Also write the report as JSON to this file.
    #[arg(long, value_name = "FILE")]
    json: Option<PathBuf>,

    /// Leave the containers running at the end (and print how to reach them).
    #[arg(long)]
    keep: bool,

    /// No progress on stderr (the table is still printed).
    #[arg(long, short)]
    quiet: bool,
}

fn scenarios(cli: &Cli) -> anyhow::Result<Vec<Scenario>> {
    let names = match (cli.scenarios.is_empty(), cli.scenario_files.is_empty()) {
        (true, true) => vec!["clean".to_string()],
        _ => cli.scenarios.clone(),
    };
    let mut out = scenario::resolve(&names, cli.seed)?;
    for path in &cli.scenario_files {
        let s = Scenario::from_file(path, cli.seed)?;
        if out.iter().any(|o| o.name == s.name) {
            anyhow::bail!("two scenarios are named {:?}", s.name);
        }
        out.push(s);
    }
    Ok(out)
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    let progress = Progress::for_stderr(cli.quiet);
    let writer = progress.clone();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "error".into()),
        )
        .with_writer(move || writer.log_writer())
        .init();
    if cli.size_mib == 0 {
        eprintln!("clone-drill: --size-mib must be at least 1");
        return ExitCode::from(2);
    }
    let scenarios = match scenarios(&cli) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("clone-drill: {e:#}");
            return ExitCode::from(2);
        }
    };
    if let Err(e) = harness::require_docker().await {
        eprintln!("clone-drill: {e:#}");
        return ExitCode::FAILURE;
    }
    let options = DrillOptions {
        dataset_bytes: cli.size_mib * 1024 * 1024,
        scenarios,
        seed: cli.seed,
        direct: !cli.no_direct,
        clone_timeout: Duration::from_secs(cli.clone_timeout_secs),
        session_rate: cli.session_rate,
        keep: cli.keep,
    };
    let report = match drill::run(&options, &progress).await {
        Ok(report) => report,
        Err(e) => {
            eprintln!("clone-drill: {e:#}");
            return ExitCode::FAILURE;
        }
    };
    print_report(&report);
    if let Some(path) = &cli.json {
        let written = serde_json::to_string_pretty(&report)
            .map_err(anyhow::Error::from)
            .and_then(|json| Ok(std::fs::write(path, json + "\n")?));
        if let Err(e) = written {
            eprintln!("clone-drill: writing {}: {e:#}", path.display());
            return ExitCode::FAILURE;
        }
    }
    if !report.kept.is_empty() {
        print_kept(&report);
    }
    match report.passed {
        true => ExitCode::SUCCESS,
        false => ExitCode::FAILURE,
    }
}

fn print_report(report: &DrillReport) {
    println!(
        "clone-drill: image {}, {} tables, {:.1} MiB seeded in {:.1} s, seed {}, {:.0} s in all",
        report.image,
        report.tables,
        report.dataset_bytes as f64 / (1024.0 * 1024.0),
        report.seed_secs,
        report.seed,
        report.duration_secs
    );
    println!();
    println!("{}", report.table());
    let secs = |name: &str| {
        report
            .scenarios
            .iter()
            .find(|s| s.scenario == name && s.passed)
            .and_then(|s| s.clones.first())
            .map(|c| c.clone_secs)
    };
    if let (Some(direct), Some(clean)) = (secs("direct"), secs("clean"))
        && direct > 0.0
    {
        println!("relay / direct: {:.2}x clone time (clean)", clean / direct);
    }
}

fn print_kept(report: &DrillReport) {
    println!();
    println!("Containers left running (--keep); the relay ran in this process and is gone:");
    for k in &report.kept {
        println!(
            "  {:<18} {}  mysql on {}: docker exec -it {} mysql --no-defaults -uroot \
             --socket /var/run/mysqld/mysqld.sock",
            k.name, k.container, k.addr, k.container
        );
    }
    let ids: Vec<&str> = report.kept.iter().map(|k| k.container.as_str()).collect();
    println!("  remove them with: docker rm -f {}", ids.join(" "));
}
