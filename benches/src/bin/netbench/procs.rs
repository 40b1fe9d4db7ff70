//! The processes of a run: finding (or building) the `clone-relay` and `chaos` binaries,
//! starting them, socat and this binary's own peers, learning the address each listens on, and
//! ending every one of them when its handle is dropped.

use std::collections::VecDeque;
use std::io::{BufRead, BufReader};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

use crate::peers::{RecvTls, Transfer, parse_line};

/// How long a process may take to say where it listens.
const START_TIMEOUT: Duration = Duration::from_secs(20);
/// Lines of a process's stderr kept for an error message.
const KEPT_LINES: usize = 20;

/// Where `clone-relay` and `chaos` are.
#[derive(Debug, Clone)]
pub struct Bins {
    pub relay: PathBuf,
    pub chaos: PathBuf,
}

/// Finds `clone-relay` and `chaos` in `bin_dir`, or else builds them with cargo (same profile
/// and target directory as this executable) and takes them from next to it; with `no_build`
/// only looks next to it.
pub fn locate_bins(bin_dir: Option<&Path>, no_build: bool) -> Result<Bins> {
    let own = std::env::current_exe().context("this executable's path")?;
    let own_dir = own
        .parent()
        .context("this executable's folder")?
        .to_path_buf();
    let dir = match bin_dir {
        Some(dir) => dir.to_path_buf(),
        None => {
            if !no_build {
                cargo_build(&own_dir)?;
            }
            own_dir
        }
    };
    let bins = Bins {
        relay: dir.join("clone-relay"),
        chaos: dir.join("chaos"),
    };
    for bin in [&bins.relay, &bins.chaos] {
        if !bin.is_file() {
            bail!(
                "{} is missing: build it with `cargo build --release -p clone-relay -p chaos` \
                 (netbench does so itself without --no-build), or name its folder with --bin-dir",
                bin.display()
            );
        }
    }
    Ok(bins)
}

/// `cargo build -p clone-relay -p chaos --bins` in the profile this executable was built with
/// (the name of its folder), into the same target directory.
fn cargo_build(own_dir: &Path) -> Result<()> {
    let profile = own_dir
        .file_name()
        .and_then(|n| n.to_str())
        .context("this executable's folder has no name")?;
    let target_dir = own_dir.parent().context("no target directory")?;
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR")).join("../Cargo.toml");
    let mut command = Command::new(&cargo);
    command
        .args(["build", "--bins", "-p", "clone-relay", "-p", "chaos"])
        .arg("--manifest-path")
        .arg(&manifest)
        .arg("--target-dir")
        .arg(target_dir);
    match profile {
        "debug" => {}
        "release" => drop(command.arg("--release")),
        other => drop(command.args(["--profile", other])),
    }
    eprintln!(
        "netbench: building clone-relay and chaos ({profile}) into {}",
        target_dir.display()
    );
    let status = command
        .stdout(Stdio::null())
        .status()
        .with_context(|| format!("running {}", cargo.to_string_lossy()))?;
    if !status.success() {
        bail!("cargo build of clone-relay and chaos failed ({status})");
    }
    Ok(())
}

/// A child process, killed (SIGKILL) and reaped when dropped. Its stderr is read on a thread
/// of its own so that it never blocks on a full pipe; the last lines are kept for errors.
#[derive(Debug)]
pub struct Proc {
    pub name: String,
    pub(crate) child: Child,
    /// Held open for peers that run until their standard input closes.
    stdin: Option<ChildStdin>,
    tail: Arc<Mutex<VecDeque<String>>>,
}

impl Proc {
    /// Spawns `command` (stderr piped and watched; stdin piped when `keep_stdin`); the first
    /// stderr line for which `listening` returns an address is sent back, and that address is
    /// returned once it comes (a process that exits or stays silent is an error naming its
    /// last lines).
    pub fn start(
        name: &str,
        command: &mut Command,
        keep_stdin: bool,
        mut listening: impl FnMut(&str) -> Option<SocketAddr> + Send + 'static,
    ) -> Result<(Proc, SocketAddr)> {
        let mut proc = Proc::spawn(name, command, keep_stdin, Stdio::null())?;
        let stderr = proc.child.stderr.take().expect("piped stderr");
        let (found, addr) = mpsc::channel();
        let tail = proc.tail.clone();
        std::thread::spawn(move || {
            let mut found = Some(found);
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if let Some(addr) = found.as_ref().and_then(|_| listening(&line)) {
                    let _ = found.take().expect("checked").send(addr);
                }
                let mut tail = tail.lock().expect("tail lock");
                if tail.len() == KEPT_LINES {
                    tail.pop_front();
                }
                tail.push_back(line);
            }
        });
        match addr.recv_timeout(START_TIMEOUT) {
            Ok(addr) => Ok((proc, addr)),
            Err(_) => Err(proc.failure("did not say where it listens")),
        }
    }

    /// Spawns `command` with stderr piped (for [`Proc::start`] or [`Proc::output`]).
    pub(crate) fn spawn(
        name: &str,
        command: &mut Command,
        keep_stdin: bool,
        stdout: Stdio,
    ) -> Result<Proc> {
        let mut child = command
            .stdin(if keep_stdin {
                Stdio::piped()
            } else {
                Stdio::null()
            })
            .stdout(stdout)
            .stderr(Stdio::piped())
            .spawn()
            .with_context(|| format!("starting {name} ({:?})", command.get_program()))?;
        let stdin = child.stdin.take();
        Ok(Proc {
            name: name.to_string(),
            child,
            stdin,
            tail: Arc::default(),
        })
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// An error naming this process, `what` went wrong, how it exited if it did, and its last
    /// stderr lines.
    pub fn failure(&mut self, what: &str) -> anyhow::Error {
        std::thread::sleep(Duration::from_millis(100));
        let status = match self.child.try_wait() {
            Ok(Some(status)) => format!(" ({status})"),
            _ => String::new(),
        };
        let tail = self.tail.lock().expect("tail lock");
        let lines: Vec<&str> = tail.iter().map(String::as_str).collect();
        anyhow::anyhow!(
            "{}{status} {what}; its last lines:\n  {}",
            self.name,
            lines.join("\n  ")
        )
    }

    /// Whether it is still running.
    pub fn running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// Closes its standard input, the signal for [`crate::peers::donor`] to end.
    pub fn close_stdin(&mut self) {
        self.stdin.take();
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.stdin.take();
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Runs `command` to its end and returns its stdout; a non-zero exit is an error with its
/// stderr.
pub fn output(name: &str, command: &mut Command) -> Result<Vec<u8>> {
    let out = command
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("starting {name}"))?;
    if !out.status.success() {
        bail!(
            "{name} failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(out.stdout)
}

/// Starts the donor process ([`crate::peers::donor`]) and returns it with its first stdout
/// line (the JSON of its ports).
pub fn start_donor(command: &mut Command) -> Result<(Proc, String)> {
    let mut proc = Proc::spawn("donor", command, true, Stdio::piped())?;
    let stdout = proc.child.stdout.take().expect("piped stdout");
    let stderr = proc.child.stderr.take().expect("piped stderr");
    let tail = proc.tail.clone();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            tail.lock().expect("tail lock").push_back(line);
        }
    });
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let mut line = String::new();
        let _ = BufReader::new(stdout).read_line(&mut line);
        let _ = tx.send(line);
    });
    match rx.recv_timeout(Duration::from_secs(120)) {
        Ok(line) if !line.trim().is_empty() => Ok((proc, line)),
        _ => Err(proc.failure("did not announce its ports")),
    }
}

/// The address in clone-relay's JSON log line `relay listening`.
pub fn relay_listening(line: &str) -> Option<SocketAddr> {
    log_field(line, "relay listening", "listen")
}

/// The address in clone-relay's JSON log line `admin listening`.
pub fn admin_listening(line: &str) -> Option<SocketAddr> {
    log_field(line, "admin listening", "admin")
}

fn log_field(line: &str, message: &str, field: &str) -> Option<SocketAddr> {
    let v: serde_json::Value = serde_json::from_str(line).ok()?;
    let fields = v.get("fields")?;
    if fields.get("message")?.as_str()? != message {
        return None;
    }
    fields.get(field)?.as_str()?.parse().ok()
}

/// The address in the chaos proxy's `chaos: listening on ADDR with seed N`.
pub fn chaos_listening(line: &str) -> Option<SocketAddr> {
    line.strip_prefix("chaos: listening on ")?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// The address in clone-relay's JSON log line of a pair's donor side listening for tunnels.
pub fn peer_listening(line: &str) -> Option<SocketAddr> {
    log_field(
        line,
        "donor side of a relay pair: listening for tunnels",
        "peer_listen",
    )
}

/// A clone-relay process: the relay, its admin listener, and its tunnel listener when it is a
/// pair's donor side.
#[derive(Debug)]
pub struct RelayProc {
    pub proc: Proc,
    pub addr: SocketAddr,
    pub admin: SocketAddr,
    pub peer_listen: Option<SocketAddr>,
}

/// Starts `clone-relay --listen 127.0.0.1:0 --upstream UPSTREAM --admin 127.0.0.1:0
/// --log-format json` plus `extra`, with the default log level.
pub fn start_relay(
    bins: &Bins,
    name: &str,
    upstream: SocketAddr,
    extra: &[&str],
) -> Result<RelayProc> {
    let to = ["--upstream".to_string(), upstream.to_string()];
    start_relay_to(bins, name, &to, extra)
}

/// The tunnel between a pair's two sides.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PairTunnel {
    /// Mutual TLS, certificates made under the pair's folder (the default a user runs).
    MutualTls,
    /// `--tunnel-plain`.
    Plain,
}

/// How a pair is set up.
#[derive(Debug, Clone, Copy)]
pub struct PairSpec<'a> {
    pub tunnel: PairTunnel,
    /// The donor side's flags besides the tunnel's.
    pub donor_flags: &'a [&'a str],
    /// Faults (chaos `--fault` JSON) of a chaos proxy between the two sides; none: no proxy.
    pub link_faults: &'a [&'a str],
}

impl PairSpec<'_> {
    pub const fn tunnel(tunnel: PairTunnel) -> PairSpec<'static> {
        PairSpec {
            tunnel,
            donor_flags: &[],
            link_faults: &[],
        }
    }
}

/// A running pair: its two sides, and the chaos proxy between them when there is one.
#[derive(Debug)]
pub struct Pair {
    pub recipient_side: RelayProc,
    pub donor_side: RelayProc,
    /// The chaos proxy between the sides, held so that it lives as long as the pair.
    pub _link: Option<Proc>,
}

/// Starts a pair over loopback: a donor side in front of `upstream` and a recipient side that
/// reaches it through the tunnel `spec` asks for (for mutual TLS, with certificates made under
/// `dir`), across a chaos proxy when `spec` gives it faults.
pub fn start_pair(bins: &Bins, upstream: SocketAddr, dir: &Path, spec: PairSpec) -> Result<Pair> {
    let files = clone_relay_benches::tls::tunnel_pki(dir)?;
    let tunnel = |side: &str| -> Vec<String> {
        match spec.tunnel {
            PairTunnel::Plain => vec!["--tunnel-plain".into()],
            PairTunnel::MutualTls => vec![
                "--tunnel-cert".into(),
                files.cert(side).display().to_string(),
                "--tunnel-key".into(),
                files.key(side).display().to_string(),
                "--tunnel-ca".into(),
                files.ca().display().to_string(),
            ],
        }
    };
    let mut donor_extra = tunnel("donor");
    donor_extra.extend(["--peer-listen".into(), "127.0.0.1:0".into()]);
    donor_extra.extend(spec.donor_flags.iter().map(|f| f.to_string()));
    let donor_extra: Vec<&str> = donor_extra.iter().map(String::as_str).collect();
    let donor_side = start_relay(
        bins,
        "clone-relay (pair, donor side)",
        upstream,
        &donor_extra,
    )?;
    let Some(peer) = donor_side.peer_listen else {
        bail!("the pair's donor side did not say where it listens for tunnels");
    };
    let (link, peer) = if spec.link_faults.is_empty() {
        (None, peer)
    } else {
        let (proc, addr) = start_chaos(bins, peer, spec.link_faults)?;
        (Some(proc), addr)
    };
    let to = ["--peer".to_string(), peer.to_string()];
    let mut recipient_extra = tunnel("recipient");
    if spec.tunnel == PairTunnel::MutualTls {
        recipient_extra.extend([
            "--tunnel-server-name".into(),
            clone_relay_benches::tls::TUNNEL_NAME.into(),
        ]);
    }
    let recipient_extra: Vec<&str> = recipient_extra.iter().map(String::as_str).collect();
    let recipient_side = start_relay_to(
        bins,
        "clone-relay (pair, recipient side)",
        &to,
        &recipient_extra,
    )?;
    Ok(Pair {
        recipient_side,
        donor_side,
        _link: link,
    })
}

/// Starts `clone-relay --listen 127.0.0.1:0 --admin 127.0.0.1:0 --log-format json`, `to`
/// (where it carries connections) and `extra`, with the default log level.
fn start_relay_to(bins: &Bins, name: &str, to: &[String], extra: &[&str]) -> Result<RelayProc> {
    // The admin and tunnel listeners announce themselves before the relay's listener does.
    let (tx, rx) = mpsc::channel();
    let (peer_tx, peer_rx) = mpsc::channel();
    let both = move |line: &str| {
        if let Some(admin) = admin_listening(line) {
            let _ = tx.send(admin);
        }
        if let Some(peer) = peer_listening(line) {
            let _ = peer_tx.send(peer);
        }
        relay_listening(line)
    };
    let mut command = Command::new(&bins.relay);
    command
        .args(["--listen", "127.0.0.1:0", "--admin", "127.0.0.1:0"])
        .args(to)
        .args(["--log-format", "json"])
        .args(extra)
        .env_remove("RUST_LOG")
        .env_remove("CLONE_RELAY_LISTEN")
        .env_remove("CLONE_RELAY_UPSTREAM")
        .env_remove("CLONE_RELAY_ADMIN")
        .env_remove("CLONE_RELAY_ADMIN_TOKEN");
    let (mut proc, addr) = Proc::start(name, &mut command, false, both)?;
    let admin = match rx.try_recv() {
        Ok(admin) => admin,
        Err(_) => return Err(proc.failure("did not say where its admin listener is")),
    };
    Ok(RelayProc {
        proc,
        addr,
        admin,
        peer_listen: peer_rx.try_recv().ok(),
    })
}

/// Starts `chaos serve` in front of `upstream` with `faults` (chaos `--fault` JSON), seed 1.
pub fn start_chaos(
    bins: &Bins,
    upstream: SocketAddr,
    faults: &[&str],
) -> Result<(Proc, SocketAddr)> {
    let mut command = Command::new(&bins.chaos);
    command
        .args(["serve", "--listen", "127.0.0.1:0", "--seed", "1"])
        .arg("--upstream")
        .arg(upstream.to_string())
        .env_remove("RUST_LOG");
    for fault in faults {
        command.args(["--fault", fault]);
    }
    Proc::start("chaos", &mut command, false, chaos_listening)
}

/// socat, or why there is none: found on the PATH, else installed with apt-get from Debian's
/// packages.
pub fn find_or_install_socat() -> Result<PathBuf, String> {
    if let Some(path) = on_path("socat") {
        return Ok(path);
    }
    eprintln!("netbench: socat is missing: installing it with apt-get (Debian's package socat)");
    let apt = |args: &[&str]| -> Result<(), String> {
        let out = Command::new("apt-get")
            .args(args)
            .env("DEBIAN_FRONTEND", "noninteractive")
            .stdin(Stdio::null())
            .output()
            .map_err(|e| format!("cannot run apt-get: {e}"))?;
        if out.status.success() {
            return Ok(());
        }
        let stderr = String::from_utf8_lossy(&out.stderr);
        let last = stderr.lines().rev().find(|l| !l.trim().is_empty());
        Err(format!(
            "apt-get {} failed ({}): {}",
            args.join(" "),
            out.status,
            last.unwrap_or("no message")
        ))
    };
    apt(&["update", "-qq"])?;
    apt(&["install", "-y", "-qq", "socat"])?;
    on_path("socat").ok_or_else(|| "apt-get installed socat but it is not on the PATH".into())
}

fn on_path(name: &str) -> Option<PathBuf> {
    std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|dir| dir.join(name))
            .find(|p| p.is_file())
    })
}

/// Starts `socat [-b BUFFER] TCP-LISTEN:PORT,bind=127.0.0.1,reuseaddr,fork TCP:UPSTREAM` on a
/// free port and waits until it accepts. (`fork`: one child per connection, as socat serves more
/// than one; without `-b` socat copies 8 KiB at a time.)
pub fn start_socat(
    socat: &Path,
    upstream: SocketAddr,
    buffer: Option<usize>,
) -> Result<(Proc, SocketAddr)> {
    let port = TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let mut command = Command::new(socat);
    if let Some(bytes) = buffer {
        command.arg("-b").arg(bytes.to_string());
    }
    command
        .arg(format!("TCP-LISTEN:{port},bind=127.0.0.1,reuseaddr,fork"))
        .arg(format!("TCP:{upstream}"));
    let mut proc = Proc::spawn("socat", &mut command, false, Stdio::null())?;
    let stderr = proc.child.stderr.take().expect("piped stderr");
    let tail = proc.tail.clone();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            tail.lock().expect("tail lock").push_back(line);
        }
    });
    let deadline = Instant::now() + START_TIMEOUT;
    while Instant::now() < deadline {
        if !proc.running() {
            return Err(proc.failure("exited at start"));
        }
        if TcpStream::connect(addr).is_ok() {
            return Ok((proc, addr));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Err(proc.failure("does not accept connections"))
}

/// One recipient process's transfer; its seconds.
pub fn transfer(me: &Path, addr: SocketAddr, tls: Option<&RecvTls>, expect: u64) -> Result<f64> {
    let mut command = Command::new(me);
    command
        .args(["recv", "--addr", &addr.to_string()])
        .args(["--expect", &expect.to_string()]);
    if let Some(tls) = tls {
        command
            .arg("--tls-ca")
            .arg(&tls.ca)
            .args(["--tls-name", &tls.name]);
    }
    let out = output("recipient", &mut command)?;
    Ok(parse_line::<Transfer>("recipient", &out)?.secs)
}
