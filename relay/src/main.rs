//! `clone-relay`: parses flags, sets up logging, binds, and hands over to [`clone_relay::run`].

use std::net::SocketAddr;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, ValueEnum};
use clone_relay::config::StallSettings;
use clone_relay::{Config, Relay, RelayError, upstream};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};
use tracing_subscriber::EnvFilter;

/// Inline relay for MySQL CLONE: point the recipient's `CLONE INSTANCE FROM` at `--listen`, and
/// the relay carries the clone to the donor at `--upstream`.
#[derive(Debug, Parser)]
#[command(name = "clone-relay", version)]
struct Cli {
    /// Address to listen on for the recipient, e.g. 127.0.0.1:3307.
    #[arg(long, env = "CLONE_RELAY_LISTEN", value_name = "ADDR")]
    listen: SocketAddr,

    /// The donor, as HOST:PORT; repeat (or separate with commas) for several donors: a new
    /// clone goes to the first one not busy, and each clone stays on its donor.
    #[arg(
        long = "upstream",
        env = "CLONE_RELAY_UPSTREAM",
        value_name = "HOST:PORT",
        value_delimiter = ',',
        required = true
    )]
    upstreams: Vec<String>,

    /// Connections carried at once.
    #[arg(long, default_value_t = 1024)]
    max_connections: usize,

    /// Bound on dialing the donor, in milliseconds.
    #[arg(long, default_value_t = 5000)]
    connect_timeout_ms: u64,

    /// Copy buffer per direction, in bytes.
    #[arg(long, default_value_t = 256 * 1024)]
    copy_buffer_bytes: usize,

    /// SO_SNDBUF/SO_RCVBUF for both legs, in bytes (default: the kernel's autotuning).
    #[arg(long)]
    socket_buffer_bytes: Option<usize>,

    /// TCP keepalive idle time, in milliseconds.
    #[arg(long, default_value_t = 30_000)]
    keepalive_idle_ms: u64,

    /// TCP keepalive probe interval, in milliseconds.
    #[arg(long, default_value_t = 10_000)]
    keepalive_interval_ms: u64,

    /// Unanswered keepalive probes before a connection is dropped.
    #[arg(long, default_value_t = 3)]
    keepalive_retries: u32,

    /// TCP_USER_TIMEOUT on both legs, in milliseconds.
    #[arg(long, default_value_t = 20_000)]
    user_timeout_ms: u64,

    /// A main or worker connection owed data is dead after this much silence at least, in
    /// milliseconds (the threshold grows with the longest gap seen on it).
    #[arg(long, default_value_t = 8_000)]
    stall_min_ms: u64,

    /// ... and at most this much, in milliseconds.
    #[arg(long, default_value_t = 60_000)]
    stall_max_ms: u64,

    /// The stall threshold is this many times the longest gap seen on the connection.
    #[arg(long, default_value_t = 4)]
    stall_factor: u32,

    /// Turn stall detection off (leave dead links to TCP and MySQL).
    #[arg(long)]
    no_stall_detection: bool,

    /// How long a reconnect of a resuming clone may wait for its donor, in milliseconds.
    #[arg(long, default_value_t = 240_000)]
    reconnect_dial_timeout_ms: u64,

    /// On SIGINT/SIGTERM, how long connections in flight may go on, in milliseconds.
    #[arg(long, default_value_t = 30_000)]
    shutdown_grace_ms: u64,

    /// Login deadline for recipients, in milliseconds.
    #[arg(long, default_value_t = 10_000)]
    handshake_timeout_ms: u64,

    /// Largest packet accepted before auth completes, in bytes.
    #[arg(long, default_value_t = 64 * 1024)]
    max_login_packet_bytes: usize,

    /// Largest logical packet accepted after auth, in bytes.
    #[arg(long, default_value_t = 64 * 1024 * 1024)]
    max_packet_bytes: usize,

    /// A clone whose main connection is lost is marked failed if not resumed within this, in
    /// milliseconds.
    #[arg(long, default_value_t = 360_000)]
    resume_timeout_ms: u64,

    /// Address for the admin listener (/metrics, /sessions); off when not given.
    #[arg(long, env = "CLONE_RELAY_ADMIN", value_name = "ADDR")]
    admin: Option<SocketAddr>,

    /// Skip checking at start that the donor answers with a MySQL greeting.
    #[arg(long)]
    no_upstream_probe: bool,

    /// Log format.
    #[arg(long, value_enum, default_value_t = LogFormat::Human)]
    log_format: LogFormat,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum LogFormat {
    Human,
    Json,
}

impl Cli {
    fn config(&self) -> Config {
        let mut config = Config::with_upstreams(self.upstreams.clone());
        config.max_connections = self.max_connections;
        config.connect_timeout = Duration::from_millis(self.connect_timeout_ms);
        config.copy_buffer_bytes = self.copy_buffer_bytes;
        config.socket_buffer_bytes = self.socket_buffer_bytes;
        config.keepalive_idle = Duration::from_millis(self.keepalive_idle_ms);
        config.keepalive_interval = Duration::from_millis(self.keepalive_interval_ms);
        config.keepalive_retries = self.keepalive_retries;
        config.user_timeout = Duration::from_millis(self.user_timeout_ms);
        config.stall = StallSettings {
            enabled: !self.no_stall_detection,
            min: Duration::from_millis(self.stall_min_ms),
            max: Duration::from_millis(self.stall_max_ms),
            factor: self.stall_factor,
        };
        config.reconnect_dial_timeout = Duration::from_millis(self.reconnect_dial_timeout_ms);
        config.shutdown_grace = Duration::from_millis(self.shutdown_grace_ms);
        config.handshake_timeout = Duration::from_millis(self.handshake_timeout_ms);
        config.max_login_packet_bytes = self.max_login_packet_bytes;
        config.max_packet_bytes = self.max_packet_bytes;
        config.resume_timeout = Duration::from_millis(self.resume_timeout_ms);
        config
    }
}

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) if !e.use_stderr() => e.exit(), // --help, --version
        Err(e) => {
            eprintln!("clone-relay: {} (see --help)", one_line(&e.to_string()));
            return ExitCode::from(2);
        }
    };
    init_tracing(cli.log_format);
    let runtime = tokio::runtime::Runtime::new().expect("tokio runtime");
    match runtime.block_on(serve(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("clone-relay: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn serve(cli: Cli) -> Result<(), RelayError> {
    let relay = Relay::new(cli.config())?;
    let listener = clone_relay::bind(cli.listen)?;
    let admin = cli.admin.map(clone_relay::bind).transpose()?;
    if !cli.no_upstream_probe {
        probe_donors(&relay).await?;
    }
    let stop = CancellationToken::new();
    if let Some(admin) = admin {
        info!(admin = %cli.admin.expect("bound"), "admin listening");
        tokio::spawn(clone_relay::admin::serve(
            admin,
            relay.clone(),
            stop.clone().cancelled_owned(),
        ));
    }
    info!(listen = %cli.listen, upstreams = ?relay.config().upstreams, "relay listening");
    relay.serve(listener, shutdown_signal()).await?;
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

/// Checks every donor's greeting (the outcome also feeds readiness). One donor down among
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

async fn shutdown_signal() {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .expect("SIGTERM handler");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => info!("SIGINT received"),
        _ = term.recv() => info!("SIGTERM received"),
    }
}
