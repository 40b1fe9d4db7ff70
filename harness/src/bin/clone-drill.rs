//! `clone-drill`: one command that proves a clone through clone-relay end to end. It builds or
//! finds the MySQL image, starts a donor and recipients in containers, seeds the donor, clones
//! through an in-process relay (and directly, for comparison), and prints what happened. It exits
//! non-zero when a clone fails or any table differs.

use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use harness::drill::{self, CloneRun, DrillOptions};

#[derive(Debug, Parser)]
#[command(name = "clone-drill", version)]
struct Cli {
    /// Size of the data set to seed, in MiB.
    #[arg(long, default_value_t = 200)]
    size_mib: u64,

    /// Skip the direct clone (no comparison figure).
    #[arg(long)]
    no_direct: bool,

    /// Bound on each clone, restart included, in seconds.
    #[arg(long, default_value_t = 600)]
    clone_timeout_secs: u64,

    /// Cap the relayed clone at this rate (the relay's --session-rate, e.g. 20MiB/s).
    #[arg(long, value_name = "RATE", value_parser = clone_relay::units::parse_rate)]
    session_rate: Option<u64>,
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    if cli.size_mib == 0 {
        eprintln!("clone-drill: --size-mib must be at least 1");
        return ExitCode::from(2);
    }
    let options = DrillOptions {
        dataset_bytes: cli.size_mib * 1024 * 1024,
        direct: !cli.no_direct,
        clone_timeout: Duration::from_secs(cli.clone_timeout_secs),
        session_rate: cli.session_rate,
    };
    eprintln!(
        "clone-drill: seeding {} MiB and cloning (this takes a minute or two)",
        cli.size_mib
    );
    let report = match drill::run(&options).await {
        Ok(report) => report,
        Err(e) => {
            eprintln!("clone-drill: {e:#}");
            return ExitCode::FAILURE;
        }
    };

    println!("image            {}", report.image);
    println!(
        "data set         {} tables, {:.1} MiB on disk, seeded in {:.1} s",
        report.tables,
        mib(report.dataset_bytes),
        report.seed_time.as_secs_f64()
    );
    print_run("via relay", &report.via_relay);
    match report.session_rate {
        Some(cap) => println!(
            "{:<16} cap {}, achieved {:.2} MiB/s from the donor ({:+.1}% of the cap)",
            "",
            clone_relay::units::format_rate(cap),
            mib(report.relay_rate as u64),
            (report.relay_rate / cap as f64 - 1.0) * 100.0
        ),
        None => println!(
            "{:<16} uncapped, {:.2} MiB/s from the donor",
            "",
            mib(report.relay_rate as u64)
        ),
    }
    if let Some(direct) = &report.direct {
        print_run("direct", direct);
        let ratio = report.via_relay.outcome.statement_time.as_secs_f64()
            / direct.outcome.statement_time.as_secs_f64();
        println!("relay / direct   {ratio:.2}x clone time");
    }
    if report.ok() {
        println!("result           OK: every table identical");
        ExitCode::SUCCESS
    } else {
        println!("result           FAILED");
        ExitCode::FAILURE
    }
}

fn print_run(label: &str, run: &CloneRun) {
    let o = &run.outcome;
    let secs = o.statement_time.as_secs_f64();
    println!(
        "{label:<16} {} from {} in {secs:.1} s ({:.1} s with restart), {:.1} MiB data, {:.1} MiB network, {:.1} MiB/s",
        o.state,
        o.source,
        o.total_time.as_secs_f64(),
        mib(o.data_bytes),
        mib(o.network_bytes),
        mib(o.network_bytes) / secs,
    );
    if o.error_no != 0 {
        println!("{:<16} error {}: {}", "", o.error_no, o.error_message);
    }
    if run.mismatched_tables.is_empty() {
        println!("{:<16} checksums equal", "");
    } else {
        println!(
            "{:<16} checksums DIFFER: {}",
            "",
            run.mismatched_tables.join(", ")
        );
    }
}

fn mib(bytes: u64) -> f64 {
    bytes as f64 / (1024.0 * 1024.0)
}
