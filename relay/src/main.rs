//! `clone-relay`: reads its settings (flags, environment, `--config` file), sets up logging,
//! binds, and hands over to the library.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{CommandFactory, FromArgMatches, Parser};
use clone_relay::config::load::flag_error;
use clone_relay::config::{LimitSettings, LogFormat};
use clone_relay::server::Listeners;
use clone_relay::{Config, Relay, RelayError};
use tokio::signal::unix::{SignalKind, signal};
use tracing::{info, warn};
use tracing_subscriber::EnvFilter;

/// Inline relay for MySQL CLONE: point the recipient's `CLONE INSTANCE FROM` at `--listen`, and
/// the relay carries the clone to the donor at `--upstream`. Durations take a unit (`5s`,
/// `250ms`, `4m`); sizes take KiB, MiB, GiB or none (bytes).
#[derive(Debug, Parser)]
#[command(name = "clone-relay", version)]
struct Cli {
    /// Read settings from this TOML file; flags and environment variables override its keys.
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,

    /// Check the settings, print them as TOML (without the admin token) and exit.
    #[arg(long)]
    check_config: bool,

    #[command(flatten)]
    settings: Config,
}

fn main() -> ExitCode {
    let matches = match Cli::command().try_get_matches() {
        Ok(matches) => matches,
        Err(e) if !e.use_stderr() => e.exit(), // --help, --version
        Err(e) => return usage_error(format!("{} (see --help)", flag_error(&e.to_string()))),
    };
    let cli = Cli::from_arg_matches(&matches).expect("clap checked the flags");
    let config = match Config::load(&matches, cli.config.as_deref()) {
        Ok(config) => config,
        Err(e) => return usage_error(e.to_string()),
    };
    // The TLS files are read here too, so a bad one is a bad setting (exit 2), and
    // `--check-config` catches it.
    let relay = match Relay::new(config) {
        Ok(relay) => relay,
        Err(e) => return usage_error(e.to_string()),
    };
    if cli.check_config {
        return match relay.config().effective_toml() {
            Ok(text) => {
                print!("{text}");
                ExitCode::SUCCESS
            }
            Err(e) => usage_error(format!("cannot print the settings: {e}")),
        };
    }
    init_tracing(relay.config().log_format);
    let runtime = tokio::runtime::Runtime::new().expect("tokio runtime");
    match runtime.block_on(serve(relay, cli.config, cli.settings.limits)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("clone-relay: {e}");
            ExitCode::FAILURE
        }
    }
}

fn usage_error(message: String) -> ExitCode {
    eprintln!("clone-relay: {message}");
    ExitCode::from(2)
}

/// Binds, checks the donors, reloads on SIGHUP (TLS, and the caps of the settings `file` under
/// those given as flags) and serves until SIGINT or SIGTERM.
async fn serve(
    relay: Relay,
    file: Option<PathBuf>,
    flags: LimitSettings,
) -> Result<(), RelayError> {
    let listeners = Listeners::bind(relay.config())?;
    if relay.config().upstream_probe {
        relay.probe_donors().await?;
    }
    match signal(SignalKind::hangup()) {
        Ok(mut hangup) => drop(tokio::spawn({
            let relay = relay.clone();
            async move {
                while hangup.recv().await.is_some() {
                    info!("SIGHUP received: reloading TLS and bandwidth caps");
                    relay.reload(file.as_deref(), &flags);
                }
            }
        })),
        Err(e) => warn!(error = %e, "no reload on SIGHUP: cannot handle the signal"),
    }
    relay.serve_all(listeners, shutdown_signal()).await
}

fn init_tracing(format: LogFormat) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Human => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

async fn shutdown_signal() {
    let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => info!("SIGINT received"),
        _ = term.recv() => info!("SIGTERM received"),
    }
}
