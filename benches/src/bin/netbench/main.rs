//! `netbench`: clone-relay's throughput and added latency over loopback, with the sender, the
//! receiver and whatever sits between them each in a process of its own.
//!
//! ```text
//! cargo run --release -p clone-relay-benches --bin netbench [-- --quick] [-- --json FILE]
//! ```
//!
//! It builds the release `clone-relay` and `chaos` binaries (`cargo build --release -p
//! clone-relay -p chaos`, into the same target directory; `--no-build` or `--bin-dir DIR` to
//! skip that), installs socat from Debian's packages when it is missing, then in one run:
//! a donor process (this binary, hidden subcommand `donor`) serves a clone-shaped stream, and
//! for each row a recipient process (`recv`) reads it, directly or through a peer: clone-relay
//! on its defaults, clone-relay with TLS on both legs, clone-relay with `--rate 1TiB/s`, the
//! chaos proxy with no faults, socat, and the TLS donor read directly. The rows' transfers are
//! interleaved round by round and each row reports its median and its ratio to the direct row.
//! A reference row, taking its turn in each round, gives rustls encrypting and decrypting the
//! same stream in memory (in this process). Then `ping` processes time small request/response
//! round trips after login, directly and through the relay, and the table ends with the relay's
//! added latency and its peak RSS (VmHWM) after carrying the plain row.
//!
//! # Layout
//! - `peers`: the hidden subcommands (donor, recipient transfer, ping).
//! - `procs`: finding or building the binaries, starting and ending processes, socat.
//! - `probes`: what a run reads of its processes (peak RSS, CPU, `/metrics`, perf).
//! - `run`: the measurement, in order.
//! - `streams`: the pair's tunnel connections, one per stream against what one shared could carry.
//! - `report`: the table and the JSON.

mod peers;
mod probes;
mod procs;
mod report;
mod run;
mod streams;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};

/// Throughput and added latency of clone-relay over loopback, with sender, receiver and relay
/// in separate processes, against a direct stream, the chaos proxy and socat.
#[derive(Debug, Parser)]
#[command(name = "netbench", args_conflicts_with_subcommands = true)]
struct Cli {
    #[command(subcommand)]
    peer: Option<Peer>,
    #[command(flatten)]
    options: Options,
}

/// What a run measures and how.
#[derive(Debug, Clone, Args)]
pub struct Options {
    /// Small sizes and few repetitions: a smoke test, not a measurement.
    #[arg(long)]
    pub quick: bool,
    /// Also write the results as JSON to this file.
    #[arg(long, value_name = "FILE")]
    pub json: Option<PathBuf>,
    /// Size of the clone stream, in MiB of DATA (default 256, or 8 with --quick).
    #[arg(long, value_name = "N")]
    pub size_mib: Option<usize>,
    /// Transfers per row (default 9, or 2 with --quick); the median is reported.
    #[arg(long, value_name = "N")]
    pub reps: Option<usize>,
    /// Timed round trips for the latency (default 5000, or 200 with --quick).
    #[arg(long, value_name = "N")]
    pub round_trips: Option<usize>,
    /// Take clone-relay and chaos from next to this executable without building them.
    #[arg(long)]
    pub no_build: bool,
    /// Take clone-relay and chaos from this folder.
    #[arg(long, value_name = "DIR")]
    pub bin_dir: Option<PathBuf>,
    /// Record a relay with `perf record -e cpu-clock -g` into this file while the rows run (read
    /// it with `perf report -i FILE`).
    #[arg(long, value_name = "FILE")]
    pub perf: Option<PathBuf>,
    /// The relay `--perf` records: the plain row's, the TLS row's, or a side of the
    /// `--tunnel-plain` pair.
    #[arg(
        long,
        value_enum,
        value_name = "ROW",
        default_value = "plain",
        requires = "perf"
    )]
    pub perf_relay: PerfRelay,
}

/// A relay `--perf` may record.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum PerfRelay {
    Plain,
    Tls,
    /// The `--tunnel-plain` pair's donor side.
    PlainPairDonorSide,
    /// The `--tunnel-plain` pair's recipient side.
    PlainPairRecipientSide,
}

impl Options {
    pub fn size_mib(&self) -> usize {
        self.size_mib.unwrap_or(if self.quick { 8 } else { 256 })
    }
    pub fn reps(&self) -> usize {
        self.reps.unwrap_or(if self.quick { 2 } else { 9 }).max(1)
    }
    pub fn round_trips(&self) -> usize {
        self.round_trips
            .unwrap_or(if self.quick { 200 } else { 5000 })
            .max(1)
    }
}

/// The peers netbench runs as processes of its own (not for direct use).
#[derive(Debug, Subcommand)]
enum Peer {
    #[command(hide = true)]
    Donor {
        #[arg(long)]
        blocks: usize,
        #[arg(long)]
        ca_out: PathBuf,
    },
    #[command(hide = true)]
    Recv {
        #[arg(long)]
        addr: SocketAddr,
        #[arg(long)]
        expect: u64,
        #[arg(long, requires = "tls_name")]
        tls_ca: Option<PathBuf>,
        #[arg(long)]
        tls_name: Option<String>,
    },
    #[command(hide = true)]
    Ping {
        #[arg(long)]
        addr: SocketAddr,
        #[arg(long)]
        count: usize,
        #[arg(long)]
        warmup: usize,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.peer {
        None => run::run(&cli.options),
        Some(Peer::Donor { blocks, ca_out }) => peers::donor(blocks, &ca_out),
        Some(Peer::Recv {
            addr,
            expect,
            tls_ca,
            tls_name,
        }) => {
            let tls = tls_ca
                .zip(tls_name)
                .map(|(ca, name)| peers::RecvTls { ca, name });
            peers::recv(addr, tls, expect)
        }
        Some(Peer::Ping {
            addr,
            count,
            warmup,
        }) => peers::ping(addr, count, warmup),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("netbench: {e:#}");
            ExitCode::FAILURE
        }
    }
}
