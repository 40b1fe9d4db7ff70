//! `clone-relay`: reads its settings (flags, environment, `--config` file), sets up logging,
//! binds, and hands over to the library.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{CommandFactory, FromArgMatches, Parser};
use clone_relay::config::{LimitSettings, LogFormat};
use clone_relay::{Config, Relay, RelayError, upstream};
use tokio_util::sync::CancellationToken;
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
        Err(e) => return usage_error(format!("{} (see --help)", one_line(&e.to_string()))),
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
        match relay.config().to_toml() {
            Ok(text) => print!("{text}"),
            Err(e) => return usage_error(format!("cannot print the settings: {e}")),
        }
        if relay.config().admin_token.is_some() {
            println!("# admin_token is set");
        }
        return ExitCode::SUCCESS;
    }
    init_tracing(relay.config().log_format);
    let runtime = tokio::runtime::Runtime::new().expect("tokio runtime");
    let reload = Reload {
        file: cli.config,
        flag_limits: cli.settings.limits,
    };
    match runtime.block_on(serve(relay, reload)) {
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

/// What SIGHUP rereads: the settings file's `[limits]`, under the caps given as flags.
#[derive(Debug)]
struct Reload {
    file: Option<PathBuf>,
    flag_limits: LimitSettings,
}

async fn serve(relay: Relay, reload: Reload) -> Result<(), RelayError> {
    let config = relay.config();
    let (admin_addr, probe) = (config.admin, config.upstream_probe);
    let listener = config.listen.map(clone_relay::bind).transpose()?;
    let tunnel_listener = config.peer_listen.map(clone_relay::bind).transpose()?;
    let admin = admin_addr.map(clone_relay::bind).transpose()?;
    if probe {
        probe_donors(&relay).await?;
    }
    let stop = CancellationToken::new();
    match (admin, admin_addr) {
        (Some(admin), Some(addr)) => {
            let resets = if relay.config().admin_token.is_some() {
                "on (bearer token)"
            } else {
                "off (no CLONE_RELAY_ADMIN_TOKEN)"
            };
            let addr = admin.local_addr().unwrap_or(addr);
            info!(admin = %addr, resets, "admin listening");
            tokio::spawn(clone_relay::admin::serve(
                admin,
                relay.clone(),
                stop.clone().cancelled_owned(),
            ));
        }
        _ if relay.config().admin_token.is_some() => {
            warn!("an admin token is set but no --admin listener: the token is unused");
        }
        _ => {}
    }
    match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()) {
        Ok(hangup) => drop(tokio::spawn(reload_on_hangup(
            hangup,
            relay.clone(),
            reload,
        ))),
        Err(e) => warn!(error = %e, "no reload on SIGHUP: cannot handle the signal"),
    }
    let stopping = CancellationToken::new();
    let tunnel_task = tunnel_listener.map(|tunnel_listener| {
        if let Ok(addr) = tunnel_listener.local_addr() {
            info!(peer_listen = %addr, upstreams = ?relay.config().upstreams, "donor side of a relay pair: listening for tunnels");
        }
        let relay = relay.clone();
        let stopping = stopping.clone();
        tokio::spawn(async move {
            relay
                .serve_tunnel(tunnel_listener, stopping.cancelled_owned())
                .await
        })
    });
    match listener {
        Some(listener) => {
            if let Ok(listen) = listener.local_addr() {
                match &relay.config().peer {
                    Some(peer) => {
                        info!(%listen, %peer, side = "recipient", "relay listening")
                    }
                    None => {
                        info!(%listen, upstreams = ?relay.config().upstreams, "relay listening")
                    }
                }
            }
            relay.serve(listener, shutdown_signal()).await?;
        }
        None => shutdown_signal().await,
    }
    stopping.cancel();
    if let Some(task) = tunnel_task {
        let _ = task.await;
    }
    stop.cancel();
    info!("relay stopped");
    Ok(())
}

/// clap's message on one line: its text without the usage and hint lines.
fn one_line(message: &str) -> String {
    message
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with("Usage:") && !l.starts_with("For more"))
        .collect::<Vec<_>>()
        .join(" ")
        .trim_start_matches("error: ")
        .to_string()
}

/// Checks every donor's greeting (the outcome also feeds `/readyz`). One donor down among
/// several is a warning; all down (or the only one) stops the relay.
async fn probe_donors(relay: &Relay) -> Result<(), RelayError> {
    let (config, health) = (relay.config(), relay.health());
    if let [donor] = config.upstreams.as_slice() {
        let greeting = upstream::probe(config, health, donor).await?;
        info!(upstream = %donor, server_version = %greeting.server_version, "donor answers");
        return Ok(());
    }
    let mut first_error = None;
    let mut answered = 0;
    for donor in &config.upstreams {
        match upstream::probe(config, health, donor).await {
            Ok(greeting) => {
                answered += 1;
                info!(upstream = %donor, server_version = %greeting.server_version, "donor answers");
            }
            Err(e) => {
                warn!(upstream = %donor, error = %e, "donor does not answer");
                first_error.get_or_insert(e);
            }
        }
    }
    match first_error {
        Some(e) if answered == 0 => Err(e),
        _ => Ok(()),
    }
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

/// On every SIGHUP, reloads TLS from the configured files and the bandwidth caps from the
/// settings file (a cap given as a flag stays); a failed reload keeps what is in use (the relay
/// logs why) and the relay carries on.
async fn reload_on_hangup(mut hangup: tokio::signal::unix::Signal, relay: Relay, reload: Reload) {
    while hangup.recv().await.is_some() {
        info!("SIGHUP received: reloading TLS and bandwidth caps");
        let _ = relay.reload_tls();
        let Some(file) = &reload.file else {
            continue;
        };
        let limits = std::fs::read_to_string(file)
            .map_err(|e| e.to_string())
            .and_then(|text| LimitSettings::from_file(&text));
        match limits {
            Ok(limits) => relay.set_limits(&reload.flag_limits.or(limits)),
            Err(e) => {
                warn!(file = %file.display(), error = %e, "bandwidth caps not reloaded: the caps in use stay")
            }
        }
    }
}

async fn shutdown_signal() {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .expect("SIGTERM handler");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => info!("SIGINT received"),
        _ = term.recv() => info!("SIGTERM received"),
    }
}
