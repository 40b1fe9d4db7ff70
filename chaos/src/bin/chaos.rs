//! `chaos`: the fault proxy as a program, and a client for its control API.
//!
//! ```text
//! chaos serve --listen 127.0.0.1:4000 --upstream 127.0.0.1:3306 --seed 7 \
//!             --control 127.0.0.1:4001 --config faults.toml
//! chaos ctl --control 127.0.0.1:4001 add '{"fault": {"type": "latency", "latency": "50ms"}}'
//! ```

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result, bail};
use chaos::{ChaosProxy, FaultSpec};
use clap::{Parser, Subcommand};
use serde::Deserialize;

#[derive(Debug, Parser)]
#[command(
    name = "chaos",
    version,
    about = "Seeded fault injection on TCP streams"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the fault proxy.
    Serve {
        /// Address to listen on (or `listen` in the config file).
        #[arg(long)]
        listen: Option<SocketAddr>,
        /// The upstream, as HOST:PORT (or `upstream` in the config file).
        #[arg(long)]
        upstream: Option<String>,
        /// Seed of every fault decision (default: from the clock, printed at start).
        #[arg(long)]
        seed: Option<u64>,
        /// Address of the HTTP control API (off when not given).
        #[arg(long)]
        control: Option<SocketAddr>,
        /// TOML file with `seed`, `listen`, `upstream`, `control` and `[[faults]]`.
        #[arg(long)]
        config: Option<PathBuf>,
        /// A fault as JSON, in place from the start (repeatable).
        #[arg(long = "fault", value_name = "JSON")]
        faults: Vec<String>,
    },
    /// Talk to a running proxy's control API.
    Ctl {
        #[arg(long)]
        control: SocketAddr,
        #[command(subcommand)]
        action: Action,
    },
}

#[derive(Debug, Subcommand)]
enum Action {
    /// List the faults.
    List,
    /// Add a fault given as JSON.
    Add { spec: String },
    /// Replace fault ID with a fault given as JSON.
    Update { id: u64, spec: String },
    /// Remove fault ID.
    Remove { id: u64 },
    /// Remove every fault.
    Reset,
    /// Show the fault decisions so far, with the seed.
    Decisions,
}

/// The config file.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct ConfigFile {
    seed: Option<u64>,
    listen: Option<SocketAddr>,
    upstream: Option<String>,
    control: Option<SocketAddr>,
    #[serde(default)]
    faults: Vec<FaultSpec>,
}

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => e.exit(),
    };
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let runtime = tokio::runtime::Runtime::new().expect("tokio runtime");
    match runtime.block_on(run(cli.command)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("chaos: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(command: Command) -> Result<()> {
    match command {
        Command::Serve {
            listen,
            upstream,
            seed,
            control,
            config,
            faults,
        } => {
            let file = match &config {
                Some(path) => {
                    let text = std::fs::read_to_string(path)
                        .with_context(|| format!("reading {}", path.display()))?;
                    plumbing::toml_error::read::<ConfigFile>(&text)
                        .map_err(|e| anyhow::anyhow!("config file {}: {e}", path.display()))?
                }
                None => ConfigFile::default(),
            };
            let listen = listen.or(file.listen).context("listen: not given")?;
            let upstream = upstream.or(file.upstream).context("upstream: not given")?;
            let seed = seed.or(file.seed).unwrap_or_else(clock_seed);
            let mut specs = file.faults;
            for (i, json) in faults.iter().enumerate() {
                specs.push(
                    serde_json::from_str(json).with_context(|| format!("--fault #{}", i + 1))?,
                );
            }
            let proxy = ChaosProxy::start(listen, upstream, seed, specs).await?;
            eprintln!("chaos: listening on {} with seed {seed}", proxy.addr());
            if let Some(addr) = control.or(file.control) {
                let listener = tokio::net::TcpListener::bind(addr)
                    .await
                    .with_context(|| format!("control: cannot listen on {addr}"))?;
                tokio::spawn(chaos::control::serve(listener, proxy.control().clone()));
            }
            tokio::signal::ctrl_c().await?;
            Ok(())
        }
        Command::Ctl { control, action } => {
            let (method, path, body) = match &action {
                Action::List => ("GET", "/faults".to_string(), None),
                Action::Add { spec } => ("POST", "/faults".to_string(), Some(spec.as_str())),
                Action::Update { id, spec } => {
                    ("PUT", format!("/faults/{id}"), Some(spec.as_str()))
                }
                Action::Remove { id } => ("DELETE", format!("/faults/{id}"), None),
                Action::Reset => ("POST", "/reset".to_string(), None),
                Action::Decisions => ("GET", "/decisions".to_string(), None),
            };
            let (status, json) = plumbing::http::request_json(control, method, &path, body)
                .await
                .with_context(|| format!("control API at {control}"))?;
            println!("{}", serde_json::to_string_pretty(&json)?);
            if status != 200 {
                bail!("the proxy answered {status}");
            }
            Ok(())
        }
    }
}

fn clock_seed() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(1, |d| d.as_nanos() as u64)
}
