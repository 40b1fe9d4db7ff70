//! clone-relay as a process of its own (the `clone-relay` binary on its defaults), for figures
//! that belong to the relay alone, such as its memory, and for its log; killed when dropped.

use std::future::Future;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use tokio::process::{Child, Command};
use tokio::time::Instant;

/// How long the relay may take to answer `/healthz` after its start.
const READY_WAIT: Duration = Duration::from_secs(30);

/// A relay process that ended before it answered `/healthz`.
#[derive(Debug)]
struct ExitedAtStart(String);

impl std::fmt::Display for ExitedAtStart {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for ExitedAtStart {}

/// A running `clone-relay` process and its admin listener.
#[derive(Debug)]
pub struct RelayProcess {
    child: Child,
    addr: SocketAddr,
    admin_addr: SocketAddr,
    /// Where its stderr goes, when captured.
    log_file: Option<PathBuf>,
}

/// The `clone-relay` binary of this workspace's build: next to the test binaries' folder, built
/// first with cargo when it is not there yet.
pub async fn relay_binary() -> Result<PathBuf> {
    workspace_binary("clone-relay", "clone-relay").await
}

/// The `clone-relay` binary of the workspace's release build, built (or brought up to date)
/// with `cargo build --release` first: for figures of the relay's speed, which a debug build
/// does not show.
pub async fn release_relay_binary() -> Result<PathBuf> {
    let (mut build, binary) = release_build(false)?;
    let status = build
        .status()
        .await
        .context("running cargo build --release")?;
    built(status, binary)
}

/// [`release_relay_binary`], built at the lowest CPU priority (`nice -n 19`: only the time
/// nothing else wants) until `raise` completes, then at the normal one where the system lets a
/// process raise its priority (`renice`, which needs root).
pub async fn release_relay_binary_raised_by(raise: impl Future<Output = ()>) -> Result<PathBuf> {
    let (mut build, binary) = release_build(true)?;
    // Its own process group, so that the compilers cargo has started are raised with it.
    build.process_group(0).kill_on_drop(true);
    let mut child = build
        .spawn()
        .context("running nice cargo build --release")?;
    let group = child.id().context("the build ended at once")?;
    tokio::select! {
        status = child.wait() => {
            return built(status.context("waiting for cargo build --release")?, binary);
        }
        () = raise => {}
    }
    let raised = Command::new("renice")
        .args(["-n", "0", "-g", &group.to_string()])
        .stdout(Stdio::null())
        .status()
        .await;
    if raised.as_ref().is_ok_and(|s| s.success()) {
        eprintln!("the release build goes on at the normal priority");
    } else {
        eprintln!("the release build stays at the lowest priority: renice failed ({raised:?})");
    }
    let status = child
        .wait()
        .await
        .context("waiting for cargo build --release")?;
    built(status, binary)
}

/// `cargo build --release` of the relay binary into this test binary's target folder (under
/// `nice -n 19` when `niced`), and where the binary lands.
fn release_build(niced: bool) -> Result<(Command, PathBuf)> {
    let exe = std::env::current_exe().context("locating the test binary")?;
    // target/<profile>/deps/<test> -> target/release/clone-relay
    let target_dir = exe
        .ancestors()
        .nth(3)
        .context("the test binary has no target folder")?;
    let binary = target_dir.join("release").join("clone-relay");
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let mut command = if niced {
        let mut nice = Command::new("nice");
        nice.args(["-n", "19"]).arg(cargo);
        nice
    } else {
        Command::new(cargo)
    };
    command
        .args([
            "build",
            "--release",
            "-p",
            "clone-relay",
            "--bin",
            "clone-relay",
        ])
        .env("CARGO_TARGET_DIR", target_dir);
    Ok((command, binary))
}

fn built(status: std::process::ExitStatus, binary: PathBuf) -> Result<PathBuf> {
    if !status.success() || !binary.exists() {
        bail!(
            "building the release clone-relay failed ({status}); expected {}",
            binary.display()
        );
    }
    Ok(binary)
}

/// The binary `name` of the workspace's package `package`, of the build the running test
/// belongs to: next to the test binaries' folder, built first with cargo when it is not there
/// yet (a `cargo test --workspace` has built it already).
pub async fn workspace_binary(package: &str, name: &str) -> Result<PathBuf> {
    let exe = std::env::current_exe().context("locating the test binary")?;
    // target/<profile>/deps/<test> -> target/<profile>/<name>
    let profile_dir = exe
        .parent()
        .and_then(|deps| deps.parent())
        .context("the test binary has no target folder")?;
    let binary = profile_dir.join(name);
    if !binary.exists() {
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let mut build = Command::new(cargo);
        build.args(["build", "-p", package, "--bin", name]);
        if profile_dir.file_name().is_some_and(|n| n == "release") {
            build.arg("--release");
        }
        let status = build.status().await.context("running cargo build")?;
        if !status.success() || !binary.exists() {
            bail!(
                "building {name} failed ({status}); expected {}",
                binary.display()
            );
        }
    }
    Ok(binary)
}

/// How a relay process is started.
#[derive(Debug, Clone, Copy)]
struct Launch<'a> {
    /// The binary; the workspace's `clone-relay` (built when missing) when `None`.
    binary: Option<&'a Path>,
    /// Where it listens; a free loopback port when `None`.
    listen: Option<SocketAddr>,
    upstream: Option<SocketAddr>,
    extra: &'a [&'a str],
    /// Its log filter, as `RUST_LOG`.
    rust_log: &'a str,
    /// Where its stderr, its log, goes; inherited when `None`.
    log_file: Option<&'a Path>,
}

impl<'a> Launch<'a> {
    fn new(upstream: Option<SocketAddr>, extra: &'a [&'a str], rust_log: &'a str) -> Self {
        Launch {
            binary: None,
            listen: None,
            upstream,
            extra,
            rust_log,
            log_file: None,
        }
    }
}

impl RelayProcess {
    /// Starts the relay to `upstream` on its defaults (plus `extra` flags), on free loopback
    /// ports, and waits until its admin listener answers.
    pub async fn start(upstream: SocketAddr, extra: &[&str]) -> Result<Self> {
        // Its log at `warn`, or as `RUST_LOG` asks when the test run sets it.
        let log = std::env::var("RUST_LOG").unwrap_or_else(|_| "warn".into());
        Self::spawn(Launch::new(Some(upstream), extra, &log)).await
    }

    /// [`RelayProcess::start`] with the binary at `binary` (for example
    /// [`release_relay_binary`]'s).
    pub async fn start_binary(binary: &Path, upstream: SocketAddr, extra: &[&str]) -> Result<Self> {
        let log = std::env::var("RUST_LOG").unwrap_or_else(|_| "warn".into());
        Self::spawn(Launch {
            binary: Some(binary),
            ..Launch::new(Some(upstream), extra, &log)
        })
        .await
    }

    /// A relay listening on `listen` (for example where one just killed listened, to restart it
    /// in place), to `upstream` when given (a recipient-side relay of a pair has none: its
    /// `--peer` is in `extra`), its log as [`RelayProcess::start`] sets it.
    pub async fn start_at(
        listen: SocketAddr,
        upstream: Option<SocketAddr>,
        extra: &[&str],
    ) -> Result<Self> {
        let log = std::env::var("RUST_LOG").unwrap_or_else(|_| "warn".into());
        Self::spawn(Launch {
            listen: Some(listen),
            ..Launch::new(upstream, extra, &log)
        })
        .await
    }

    /// [`RelayProcess::start`] with the log filter `rust_log` (as `RUST_LOG`) and the process's
    /// stderr, its log, written to `log_file` (created or truncated); [`RelayProcess::log_text`]
    /// reads it.
    pub async fn start_logged(
        upstream: SocketAddr,
        extra: &[&str],
        rust_log: &str,
        log_file: &Path,
    ) -> Result<Self> {
        Self::spawn(Launch {
            log_file: Some(log_file),
            ..Launch::new(Some(upstream), extra, rust_log)
        })
        .await
    }

    /// Starts the relay and waits for it. Ports chosen here (`listen` unset) are free when
    /// checked but may be taken before the relay binds them (`Address already in use`), so a
    /// relay that exits at start on them gets one more try on fresh ones.
    async fn spawn(launch: Launch<'_>) -> Result<Self> {
        let tries = if launch.listen.is_none() { 2 } else { 1 };
        let mut exited = None;
        for _ in 0..tries {
            match Self::spawn_once(launch).await {
                Err(e) if e.downcast_ref::<ExitedAtStart>().is_some() => {
                    eprintln!("harness: {e:#}; starting it again on fresh ports");
                    exited = Some(e);
                }
                other => return other,
            }
        }
        Err(exited.expect("at least one try"))
    }

    async fn spawn_once(launch: Launch<'_>) -> Result<Self> {
        let Launch {
            binary,
            listen,
            upstream,
            extra,
            rust_log,
            log_file,
        } = launch;
        let binary = match binary {
            Some(path) => path.to_path_buf(),
            None => relay_binary().await?,
        };
        let addr = match listen {
            Some(addr) => addr,
            None => SocketAddr::from((Ipv4Addr::LOCALHOST, free_port()?)),
        };
        // Two picks may land on the same free port.
        let mut admin_port = free_port()?;
        while admin_port == addr.port() {
            admin_port = free_port()?;
        }
        let admin_addr = SocketAddr::from((Ipv4Addr::LOCALHOST, admin_port));
        let mut command = Command::new(&binary);
        command
            .arg("--listen")
            .arg(addr.to_string())
            .args(
                upstream
                    .iter()
                    .flat_map(|u| ["--upstream".into(), u.to_string()]),
            )
            .arg("--admin")
            .arg(admin_addr.to_string())
            .args(extra)
            .env("RUST_LOG", rust_log)
            .stdin(Stdio::null())
            .kill_on_drop(true);
        if let Some(path) = log_file {
            let file = std::fs::File::create(path)
                .with_context(|| format!("creating the relay's log file {}", path.display()))?;
            // Plain text in the file, without terminal colours.
            command.env("NO_COLOR", "1").stderr(file);
        }
        let child = command
            .spawn()
            .with_context(|| format!("starting {}", binary.display()))?;
        let mut relay = RelayProcess {
            child,
            addr,
            admin_addr,
            log_file: log_file.map(Path::to_path_buf),
        };
        let deadline = Instant::now() + READY_WAIT;
        loop {
            if let Ok((200, _)) = plumbing::http::request(admin_addr, "GET", "/healthz").await {
                return Ok(relay);
            }
            if let Some(status) = relay.child.try_wait()? {
                return Err(ExitedAtStart(format!(
                    "clone-relay exited at start ({status}){}",
                    relay.log_tail()
                ))
                .into());
            }
            if Instant::now() >= deadline {
                bail!("clone-relay did not answer /healthz within {READY_WAIT:?}");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// The log written so far, when started with [`RelayProcess::start_logged`].
    pub fn log_text(&self) -> Result<String> {
        let path = self
            .log_file
            .as_ref()
            .context("this relay's log is not captured (use RelayProcess::start_logged)")?;
        let bytes = std::fs::read(path)
            .with_context(|| format!("reading the relay's log {}", path.display()))?;
        Ok(String::from_utf8_lossy(&bytes).into_owned())
    }

    /// The last lines of a captured log, for an error message (empty when not captured).
    fn log_tail(&self) -> String {
        let Ok(log) = self.log_text() else {
            return String::new();
        };
        let lines: Vec<&str> = log.lines().collect();
        format!(
            "; its log ends with:\n{}",
            lines[lines.len().saturating_sub(20)..].join("\n")
        )
    }

    /// Where the recipient should clone from.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The admin listener (`/metrics`, `/sessions`).
    pub fn admin_addr(&self) -> SocketAddr {
        self.admin_addr
    }

    /// `/metrics` as text.
    pub async fn metrics_text(&self) -> Result<String> {
        crate::relay::metrics_text(self.admin_addr).await
    }

    /// `/sessions` as JSON.
    pub async fn sessions_json(&self) -> Result<serde_json::Value> {
        let (status, body) = plumbing::http::request(self.admin_addr, "GET", "/sessions").await?;
        if status != 200 {
            bail!("/sessions answered {status}: {body}");
        }
        Ok(serde_json::from_str(&body)?)
    }

    /// The process's id while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.id()
    }

    /// Kills the process (SIGKILL: no clean shutdown, as a crash or an OOM kill) and waits
    /// until it is gone, so its ports can be bound again.
    pub async fn kill(&mut self) -> Result<()> {
        self.child.kill().await.context("killing clone-relay")
    }

    /// The process's resident memory now and at its peak (`VmRSS`, `VmHWM`), in bytes.
    pub fn memory(&self) -> Result<(u64, u64)> {
        let pid = self.child.id().context("clone-relay has exited")?;
        let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
        let field = |name: &str| -> Result<u64> {
            let line = status
                .lines()
                .find(|l| l.starts_with(name))
                .with_context(|| format!("no {name} in /proc/{pid}/status"))?;
            let kib: u64 = line
                .split_whitespace()
                .nth(1)
                .and_then(|n| n.parse().ok())
                .with_context(|| format!("unreadable {line:?}"))?;
            Ok(kib * 1024)
        };
        Ok((field("VmRSS:")?, field("VmHWM:")?))
    }
}

/// A loopback port free now, for a listener bound moments later or bound again after a restart
/// (a relay's `--listen`, a donor-side relay's `--peer-listen`, a server's port). It lies below
/// the kernel's range of ephemeral ports, so no outgoing connection takes it as its source port
/// in between; it is drawn at random so that tests running at once rarely draw the same one.
pub fn free_port() -> Result<u16> {
    let ephemeral_low = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|range| range.split_whitespace().next()?.parse::<u16>().ok())
        .unwrap_or(32768);
    let (low, high) = (10_000u16, ephemeral_low.max(10_001));
    let mut state = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(1)
        ^ u64::from(std::process::id()) << 32;
    for _ in 0..200 {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        let port = low + (state % u64::from(high - low)) as u16;
        if std::net::TcpListener::bind((Ipv4Addr::LOCALHOST, port)).is_ok() {
            return Ok(port);
        }
    }
    let listener = std::net::TcpListener::bind((Ipv4Addr::LOCALHOST, 0))?;
    Ok(listener.local_addr()?.port())
}
