//! The relay pair end to end with real MySQL: a recipient-side relay (`peer`) carries each
//! recipient connection over a resumable mutual-TLS tunnel to a donor-side relay
//! (`peer_listen`), which dials the donor. The chaos proxy is the inter-zone link between them:
//!
//! ```text
//! recipient -> recipient-side relay -> chaos proxy (the link) -> donor-side relay -> donor
//! ```
//!
//! One donor and one recipient serve every scenario, one after the other, each clone checked
//! table by table. The recipient clones at MySQL's default concurrency, pinned
//! (`clone_max_concurrency=16`, autotune off): at least 17 streams on the tunnel. The link is
//! capped at 20 MiB/s (shared by every tunnel connection, donor to recipient) so that faults land
//! mid-transfer, and faults are triggered by the bytes a relay's session has carried, not by the
//! clock. The relays run on their defaults unless a scenario says otherwise:
//!
//! 1. a clean clone, both relays processes of their own, the link also 25 ms each way: no
//!    resume, no tunnel reconnect, no spill file on either side, both sides' sessions with every
//!    connection, the same stages and the progress at 100%, and each side's peak resident set
//!    under its buffer memory plus a fixed margin (the README's figure); then a recipient that
//!    clones in plaintext (`REQUIRE NO SSL`) with the donor's authentication cache emptied (its
//!    login takes the full exchange) under a 16 MiB/s session cap on the donor side, which the
//!    recipient's own `clone_progress` must show within 3%;
//! 2. ten resets of every open tunnel connection, one per 8 MiB carried: no resume seen by MySQL
//!    on either relay, no error in the recipient's `clone_status`, at least ten tunnel
//!    reconnects, and the donor sends no data twice (what the donor-side relay read from the
//!    donor is within 1% of the clean clone's);
//! 3. the whole link dark for 20 s, new connections included, with the donor-side relay as a
//!    process on a 16 MiB memory and 96 MiB spill budget: no resume, its peak resident set under
//!    the cap plus a fixed margin, its spill files without a name in the spill folder and, read
//!    through the process's descriptors, never showing a random 64-byte label planted in every
//!    table; once memory and spill are full, the donor's network interface sends (almost)
//!    nothing more: TCP holds the donor back;
//! 4. the whole link flapping (chaos `flap`, reset mode, 10 s period, 1 s down, its periods
//!    counted from the proxy's start so that every tunnel connection, new ones included, is down
//!    in the same second) for a whole clone capped at 8 MiB/s: no resume;
//! 5. the link dark for 35 s: past the recipient's own patience (`net_read_timeout`, 30 s), so
//!    the pair gives up at its 25 s bridge and the recipient resumes once (one `COM_REINIT`),
//!    with no resume refused (1815), completed and equal;
//! 6. the whole link (both directions, every tunnel connection sharing it) at 64 KiB/s for
//!    10 s mid-clone: the clone slowed by most of those 10 s, completed and equal, no resume and
//!    no reconnect storm (at most 2 reconnects on both sides together);
//! 7. each relay killed with SIGKILL mid-clone and started again in place: the clone resumes
//!    once through the pair, no resume refused, completed and equal.
//!
//! the soak tier (`--features harness/soak`) adds dark links of 25 s (bridged: no resume), 40 s and 70 s (one
//! resume each), an outage past a 5 s bridge, the flap in blackhole mode (each tunnel
//! connection held 1 s in every 10 s, below `tunnel.timeout`), and the pair's uncapped clone
//! time (mutual TLS and plain tunnel) against one relay and direct; CI keeps the 35 s one, the
//! outage that shows both the fallback and the donor letting go. `CHAOS_SEED` replays the
//! proxy's decisions; `RUST_LOG` sets the relays' log (the processes' too);
//! `RELAY_PAIR_ONLY=resets,blackhole` runs only those scenarios after the clean clone (`plain`,
//! `resets`, `blackhole`, `flap`, `dark`, `slow`, `restart`).

use std::future::Future;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use anyhow::{Context, Result, bail, ensure};
use chaos::{ChaosProxy, Direction, FaultKind, FaultSpec, FlapMode};
use clone_relay::config::TunnelSettings;
use harness::clone::{CloneOutcome, Transport, clone_instance_with};
use harness::dataset::{Checksums, Dataset, mismatches};
use harness::image::mysql_image;
use harness::process::{RelayProcess, free_port};
use harness::{MysqlServer, RelayFixture, ServerOptions};
use tokio::time::Instant;

const MIB: u64 = 1 << 20;
const DATASET_BYTES: u64 = 100 * MIB;
/// MySQL's default `clone_max_concurrency`, pinned (autotune off): sixteen workers beside the
/// main and auxiliary connections.
const CLONE_CONCURRENCY: u64 = 16;
/// MySQL's error when the donor refuses a resume (`COM_REINIT`): it still holds the old clone
/// ("Clone restart wait for idle state timed out"), lost it, or aborted it.
const ER_CLONE_RESTART: i64 = 1815;
/// The tunnel's memory for buffers on the relays' defaults, and the resident set allowed above
/// it for a relay at MySQL's default concurrency (stated in the README): the idle process, a
/// copy buffer of up to 1 MiB per direction for each of the clone's 18 connections, TLS, and
/// the allocator.
const DEFAULT_MEMORY: u64 = 64 * MIB;
const DEFAULT_RSS_MARGIN: u64 = 64 * MIB;
/// The longest dark link the pair hides on its defaults: `tunnel.bridge` (25 s) counted from the
/// loss, below the recipient's own patience on a silent connection (`net_read_timeout`, 30 s;
/// measured: with a 45 s bridge a 35 s dark link had the recipient resume at 35 s).
const BRIDGED: Duration = Duration::from_secs(25);
/// The link's latency each way in the clean clone.
const LATENCY_MS: u64 = 25;
/// The donor side's session cap in the plain recipient's clone, and how far the rate the
/// recipient counts may be from it.
const SESSION_CAP_MIB: u64 = 16;
const CAP_TOLERANCE: f64 = 0.03;
/// The link's cap, donor to recipient, shared by every tunnel connection.
const LINK_RATE_MIB: u64 = 20;
/// The cap during the flap, so that the clone (about 27 s) spans two or three periods.
const FLAP_RATE_MIB: u64 = 8;
/// Bound on one clone, the recipient's restart included.
const CLONE_TIMEOUT: Duration = Duration::from_secs(420);
/// Bound on waiting for a session to reach a point of its transfer.
const SESSION_WAIT: Duration = Duration::from_secs(120);
/// Bound on waiting for both relays to close a clone's session once MySQL reported its end.
const SESSION_END_WAIT: Duration = Duration::from_secs(60);
/// Bound on waiting for the donor to let go of the previous clone (a failed one may be held
/// for a resume for up to 5 minutes, `clone_donor_timeout_after_network_failure`).
const DONOR_FREE_WAIT: Duration = Duration::from_secs(360);
/// The resets: the first once this much clone data was carried, then one per `RESET_EVERY`.
const RESETS: usize = 10;
const RESET_FIRST: u64 = 5 * MIB;
const RESET_EVERY: u64 = 8 * MIB;
/// Bound on waiting for the proxy to cut the connections a reset targets.
const RESET_WAIT: Duration = Duration::from_secs(5);
/// How far what the donor sent may differ from the clean clone's.
const DONOR_BYTES_TOLERANCE: f64 = 0.01;
/// The blackholes start once this much clone data was carried.
const OUTAGE_AT: u64 = 20 * MIB;
const BLACKHOLE: Duration = Duration::from_secs(20);
/// The slow link: the whole link (both directions, every connection) at 64 KiB/s for 10 s.
const SLOW_RATE: u64 = 64 * 1024;
const SLOW_FOR: Duration = Duration::from_secs(10);
/// Reconnects (both sides together) a slow link may cost: none is expected, a stray one is
/// tolerated, a storm (every stream) is not.
const SLOW_RECONNECTS: f64 = 2.0;
/// The donor-side relay's replay buffer memory in the blackhole, and the resident set allowed
/// above it: the process idles at about 18 MiB and its copy buffers, TLS and allocator take
/// about as much again while it carries a clone (peaks 52-60 MiB seen); the outage spills about
/// 190 MiB, so a bound of 80 MiB still shows that spilled bytes do not stay in memory.
const BUFFER_MEMORY: u64 = 16 * MIB;
/// Its spill budget: the outage fills memory and spill, so the donor-side relay stops reading
/// and TCP holds the donor back.
const BUFFER_SPILL: u64 = 96 * MIB;
/// What the donor may transmit while the buffers are full (TCP's buffers filling, keepalives).
const TX_WHILE_FULL: u64 = 4 * MIB;
const RSS_MARGIN: u64 = 64 * MIB;
/// While the link is dark, the spill files are scanned for the planted label each time this
/// much more was spilled, and at least `SPILL_SCANNED` must have been read in one scan.
const SCAN_EVERY: u64 = 64 * MIB;
const SPILL_SCANNED: u64 = 50 * MIB;
/// Bound on waiting for the spilled bytes to be freed once the clone ended.
const SPILL_CLEAN_WAIT: Duration = Duration::from_secs(30);
/// The outage past what the pair bridges, and the bridge it is set to.
const SHORT_BRIDGE: Duration = Duration::from_secs(5);
const OVERRUN: Duration = Duration::from_secs(15);
/// The dark link CI runs on the defaults (the soak adds 25 s, 40 s and 70 s): past the
/// recipient's patience (`net_read_timeout`, 30 s), so the pair falls back to CLONE's resume.
const DARK: Duration = Duration::from_secs(35);
/// The soak's longest dark link, past the default bridge (25 s).
const LONG_OVERRUN: Duration = Duration::from_secs(70);
/// How often the blackhole samples the donor-side process.
const SAMPLE_EVERY: Duration = Duration::from_millis(100);

fn seed() -> u64 {
    std::env::var("CHAOS_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(14_2026)
}

/// Whether to run scenario `name`: all unless `RELAY_PAIR_ONLY` lists some (comma-separated:
/// `plain`, `resets`, `blackhole`, `flap`, `dark`, `restart`); the clean clone always runs.
fn wanted(name: &str) -> bool {
    std::env::var("RELAY_PAIR_ONLY").map_or(true, |only| only.split(',').any(|n| n.trim() == name))
}

fn mib(bytes: u64) -> f64 {
    bytes as f64 / MIB as f64
}

fn loopback(port: u16) -> SocketAddr {
    SocketAddr::from((Ipv4Addr::LOCALHOST, port))
}

/// The in-process relays log to stderr when `RUST_LOG` is set.
fn init_logging() {
    if std::env::var("RUST_LOG").is_ok() {
        let _ = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
            .with_writer(std::io::stderr)
            .try_init();
    }
}

/// A shared cap on the link, donor to recipient.
fn capped(rate_mib: u64) -> FaultSpec {
    FaultSpec::new(FaultKind::Bandwidth {
        rate_bytes_per_sec: rate_mib * MIB,
        shared_group: Some("link".into()),
    })
    .direction(Direction::Downstream)
}

/// A folder removed with what it holds when dropped.
struct TempDir(PathBuf);

impl TempDir {
    /// A fresh, empty folder under the system's temp dir.
    fn new(name: &str) -> Result<Self> {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)?
            .as_nanos();
        let dir = std::env::temp_dir().join(format!(
            "clone-relay-pair-{name}-{}-{nanos}",
            std::process::id()
        ));
        std::fs::create_dir_all(&dir)?;
        Ok(TempDir(dir))
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Reads every regular file process `pid` has open (spill files have no name: they are read
/// through `/proc/<pid>/fd`) and looks for `needle`. Returns the bytes read and whether it was
/// found.
fn open_files_hold(pid: u32, needle: &[u8]) -> Result<(u64, bool)> {
    let mut scanned = 0;
    for entry in std::fs::read_dir(format!("/proc/{pid}/fd"))? {
        let path = entry?.path();
        // Sockets, pipes and the like are not files; a descriptor closed meanwhile is gone.
        if !std::fs::metadata(&path).is_ok_and(|m| m.is_file()) {
            continue;
        }
        let Ok(bytes) = std::fs::read(&path) else {
            continue;
        };
        scanned += bytes.len() as u64;
        if bytes.windows(needle.len()).any(|w| w == needle) {
            return Ok((scanned, true));
        }
    }
    Ok((scanned, false))
}

/// What `server` has transmitted on its network interface.
async fn donor_tx_bytes(server: &MysqlServer) -> Result<u64> {
    let out = server
        .shell("cat /sys/class/net/eth0/statistics/tx_bytes")
        .await?;
    out.trim()
        .parse()
        .with_context(|| format!("the donor's tx_bytes: {out:?}"))
}

/// Entries in `dir` (0 when it is gone).
fn entries(dir: &Path) -> usize {
    std::fs::read_dir(dir).map_or(0, Iterator::count)
}

/// A metric that must be there.
fn require_metric(text: &str, name: &str, relay: &str) -> Result<f64> {
    plumbing::prometheus_text::sum(text, name)
        .with_context(|| format!("the {relay} relay's /metrics has no {name}"))
}

/// One relay's certificate, key, and the CA it trusts for the other relay, as files.
struct Identity {
    cert: PathBuf,
    key: PathBuf,
    ca: PathBuf,
}

impl Identity {
    fn apply(&self, tunnel: &mut TunnelSettings) {
        tunnel.cert = Some(self.cert.clone());
        tunnel.key = Some(self.key.clone());
        tunnel.ca = Some(self.ca.clone());
    }

    fn flags(&self) -> Vec<String> {
        [
            ("--tunnel-cert", &self.cert),
            ("--tunnel-key", &self.key),
            ("--tunnel-ca", &self.ca),
        ]
        .into_iter()
        .flat_map(|(flag, path)| [flag.to_string(), path.display().to_string()])
        .collect()
    }
}

/// The tunnel's certificates: each zone has a CA of its own. The recipient-side relay shows a
/// client certificate from the recipient zone's CA and trusts the donor zone's; the donor-side
/// relay shows a server certificate for `localhost` and 127.0.0.1 from the donor zone's CA and
/// trusts the recipient zone's. The recipient side checks the name it dials (the host of
/// `peer`, the proxy's 127.0.0.1), as it does by default.
struct TunnelCerts {
    _dir: TempDir,
    recipient_side: Identity,
    donor_side: Identity,
}

type Issuer = rcgen::CertifiedIssuer<'static, rcgen::KeyPair>;

fn zone_ca(zone: &str) -> Result<Issuer> {
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new())?;
    params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    params.key_usages = vec![
        rcgen::KeyUsagePurpose::KeyCertSign,
        rcgen::KeyUsagePurpose::CrlSign,
    ];
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, format!("{zone} zone CA"));
    Ok(rcgen::CertifiedIssuer::self_signed(
        params,
        rcgen::KeyPair::generate()?,
    )?)
}

/// A certificate for `names` (DNS names or IP addresses) signed by `ca`: the chain (the
/// certificate, then the CA) and the key, as PEM.
fn leaf(
    ca: &Issuer,
    names: &[&str],
    usage: rcgen::ExtendedKeyUsagePurpose,
) -> Result<(String, String)> {
    let mut params =
        rcgen::CertificateParams::new(names.iter().map(ToString::to_string).collect::<Vec<_>>())?;
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, names[0]);
    params.extended_key_usages = vec![usage];
    params.use_authority_key_identifier_extension = true;
    let key = rcgen::KeyPair::generate()?;
    let cert = params.signed_by(&key, ca)?;
    Ok((format!("{}{}", cert.pem(), ca.pem()), key.serialize_pem()))
}

/// Writes `contents` readable by its owner only.
fn write_private(path: &Path, contents: &str) -> Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)?
        .write_all(contents.as_bytes())?;
    Ok(())
}

impl TunnelCerts {
    fn create() -> Result<Self> {
        let temp = TempDir::new("certs")?;
        let dir = temp.0.clone();
        let recipient_zone = zone_ca("recipient")?;
        let donor_zone = zone_ca("donor")?;
        let recipient_ca = dir.join("recipient-zone-ca.pem");
        let donor_ca = dir.join("donor-zone-ca.pem");
        std::fs::write(&recipient_ca, recipient_zone.pem())?;
        std::fs::write(&donor_ca, donor_zone.pem())?;
        let identity = |name: &str, (chain, key): (String, String), ca: &Path| -> Result<_> {
            let (cert_path, key_path) = (
                dir.join(format!("{name}.pem")),
                dir.join(format!("{name}-key.pem")),
            );
            std::fs::write(&cert_path, chain)?;
            write_private(&key_path, &key)?;
            Ok(Identity {
                cert: cert_path,
                key: key_path,
                ca: ca.to_owned(),
            })
        };
        let recipient_side = identity(
            "recipient-side",
            leaf(
                &recipient_zone,
                &["recipient-side-relay"],
                rcgen::ExtendedKeyUsagePurpose::ClientAuth,
            )?,
            &donor_ca,
        )?;
        let donor_side = identity(
            "donor-side",
            leaf(
                &donor_zone,
                &["localhost", "127.0.0.1"],
                rcgen::ExtendedKeyUsagePurpose::ServerAuth,
            )?,
            &recipient_ca,
        )?;
        Ok(TunnelCerts {
            _dir: temp,
            recipient_side,
            donor_side,
        })
    }
}

/// The donor, the recipient and what every pair shares.
struct Env {
    donor: MysqlServer,
    dataset: Dataset,
    donor_sums: Checksums,
    /// A random 64-byte label planted in a row of every table: clone data that must never be
    /// readable in a spill file.
    label: String,
    recipient: MysqlServer,
    /// Where every pair's recipient-side relay listens: the recipient's valid donor.
    pair_addr: SocketAddr,
    /// Where the soak's single relay listens.
    single_addr: SocketAddr,
    certs: TunnelCerts,
    seed: u64,
}

impl Env {
    async fn start() -> Result<Self> {
        let image = mysql_image().await?;
        let donor = MysqlServer::start(&image, ServerOptions::donor()).await?;
        let dataset = Dataset::of_size(DATASET_BYTES);
        dataset.seed(&donor).await?;
        let label = random_label();
        for table in dataset.table_names() {
            donor
                .sql(&format!(
                    "INSERT INTO {table} (k, label, payload, created_at) \
                     VALUES (0, '{label}', RANDOM_BYTES(1024), NOW(6))"
                ))
                .await?;
        }
        let donor_sums = dataset.checksums(&donor).await?;
        let pair_addr = loopback(free_port()?);
        let single_addr = loopback(free_port()?);
        let mut options = ServerOptions::recipient(2, &[pair_addr, single_addr, donor.addr()]);
        // MySQL's default concurrency, pinned: main, aux and sixteen workers from the start,
        // at least 17 streams on the tunnel.
        options.extra_args = vec![
            "--clone-autotune-concurrency=OFF".into(),
            format!("--clone-max-concurrency={CLONE_CONCURRENCY}"),
        ];
        let recipient = MysqlServer::start(&image, options).await?;
        Ok(Env {
            donor,
            dataset,
            donor_sums,
            label,
            recipient,
            pair_addr,
            single_addr,
            certs: TunnelCerts::create()?,
            seed: seed(),
        })
    }
}

/// 64 random hexadecimal characters.
fn random_label() -> String {
    let mut bytes = [0u8; 32];
    getrandom(&mut bytes);
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Fills `bytes` from the system's random source.
fn getrandom(bytes: &mut [u8]) {
    use std::io::Read;
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(bytes))
        .expect("/dev/urandom is readable");
}

/// A clone session as a relay's `/sessions` shows it (read over HTTP, in process or not).
#[derive(Debug, Clone)]
struct SideSession {
    id: u64,
    state: String,
    resume_count: u64,
    /// What the donor sent.
    bytes_from_upstream: u64,
    /// Clone data carried.
    data_bytes: u64,
    /// Connections the session had.
    connections: u64,
    /// The stages seen, in order.
    stages: Vec<String>,
    progress: serde_json::Value,
    resumes: serde_json::Value,
    detections: serde_json::Value,
}

impl SideSession {
    fn from_json(v: &serde_json::Value) -> Result<Self> {
        let number = |field: &str| {
            v[field]
                .as_u64()
                .with_context(|| format!("session field {field} missing in {v}"))
        };
        let listed = v["connections"].as_array().map_or(0, Vec::len) as u64;
        Ok(SideSession {
            id: number("id")?,
            state: v["state"].as_str().unwrap_or_default().to_string(),
            resume_count: number("resume_count")?,
            bytes_from_upstream: number("bytes_from_upstream")?,
            data_bytes: number("data_bytes")?,
            connections: listed + number("connections_not_listed")?,
            stages: v["stages"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|c| c["to"].as_str().map(str::to_string))
                .collect(),
            progress: v["progress"].clone(),
            resumes: v["resumes"].clone(),
            detections: v["detections"].clone(),
        })
    }

    fn ended(&self) -> bool {
        self.state == "completed" || self.state == "failed" || self.state == "unfollowed"
    }
}

/// One relay of a pair: in the test's process, or as a process of its own (for its memory, or
/// to kill it).
enum Side {
    InProcess(RelayFixture),
    Process {
        relay: RelayProcess,
        /// How it was started, to start it again in place.
        listen: SocketAddr,
        upstream: Option<SocketAddr>,
        flags: Vec<String>,
    },
}

impl Side {
    async fn sessions_json(&self) -> Result<serde_json::Value> {
        match self {
            Side::InProcess(relay) => relay.sessions_json().await,
            Side::Process { relay, .. } => relay.sessions_json().await,
        }
    }

    async fn metrics_text(&self) -> Result<String> {
        match self {
            Side::InProcess(relay) => relay.metrics_text().await,
            Side::Process { relay, .. } => relay.metrics_text().await,
        }
    }

    /// Its latest session.
    async fn latest(&self) -> Result<Option<SideSession>> {
        let view = self.sessions_json().await?;
        view["sessions"]
            .as_array()
            .and_then(|s| s.last())
            .map(SideSession::from_json)
            .transpose()
    }

    /// Waits until its latest session has carried `bytes` of clone data.
    async fn session_past(&self, bytes: u64, within: Duration) -> Result<()> {
        let deadline = Instant::now() + within;
        loop {
            match self.latest().await? {
                Some(s) if s.data_bytes >= bytes => return Ok(()),
                Some(s) if s.ended() => bail!(
                    "the session ended {} after {} bytes, before {bytes}",
                    s.state,
                    s.data_bytes
                ),
                _ => ensure!(
                    Instant::now() < deadline,
                    "no session carried {bytes} bytes within {within:?}"
                ),
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    fn process(&self) -> Option<&RelayProcess> {
        match self {
            Side::InProcess(_) => None,
            Side::Process { relay, .. } => Some(relay),
        }
    }

    /// Kills the process (SIGKILL) and starts it again in place, on the same flags: a crash
    /// and the restart its supervisor does.
    async fn kill_and_restart(&mut self) -> Result<()> {
        let Side::Process {
            relay,
            listen,
            upstream,
            flags,
        } = self
        else {
            bail!("only a relay running as a process can be killed");
        };
        relay.kill().await?;
        let args: Vec<&str> = flags.iter().map(String::as_str).collect();
        *relay = RelayProcess::start_at(*listen, *upstream, &args).await?;
        Ok(())
    }

    /// Stops it; one in process fails on a resume no fault explains.
    async fn stop(self) -> Result<()> {
        match self {
            Side::InProcess(relay) => relay.stop().await,
            Side::Process { mut relay, .. } => relay.kill().await,
        }
    }
}

/// The donor-side relay as a process of its own.
#[derive(Default)]
struct DonorProcess {
    /// `--tunnel-memory`, when not the default.
    memory: Option<u64>,
    /// `--tunnel-spill`, when not the default.
    spill: Option<u64>,
    /// `--tunnel-spill-dir`, when not the default.
    spill_dir: Option<PathBuf>,
}

/// How a pair is set up.
#[derive(Default)]
struct PairOptions {
    /// The link's faults from the start.
    faults: Vec<FaultSpec>,
    /// `tunnel.bridge` on both relays (their default when `None`).
    bridge: Option<Duration>,
    /// The tunnel without TLS on both relays.
    plain: bool,
    /// Run the donor-side relay as a process.
    donor_process: Option<DonorProcess>,
    /// Run the recipient-side relay as a process.
    recipient_process: bool,
    /// A session cap on the donor-side relay (in process), bytes per second.
    donor_session_rate: Option<u64>,
    /// The scenario injects faults: resumes are the scenario's to judge (see
    /// [`RelayFixture::expect_faults`]); without it any resume fails the run.
    faults_expected: bool,
    /// How the recipient's connections reach the recipient-side relay; [`Transport::Default`]
    /// (TLS, CLONE's own default) when `None`.
    transport: Option<Transport>,
}

impl PairOptions {
    /// The link capped at [`LINK_RATE_MIB`], with faults to come.
    fn faulted_link() -> Self {
        PairOptions {
            faults: vec![capped(LINK_RATE_MIB)],
            faults_expected: true,
            ..PairOptions::default()
        }
    }
}

/// The two relays and the link between them.
struct Pair {
    recipient_side: Side,
    chaos: ChaosProxy,
    donor_side: Side,
    transport: Transport,
}

impl Pair {
    async fn start(env: &Env, options: PairOptions) -> Result<Pair> {
        let peer_listen = loopback(free_port()?);
        let donor_side = match &options.donor_process {
            None => {
                let mut config = RelayFixture::config(env.donor.addr());
                config.peer_listen = Some(peer_listen);
                // A plain tunnel takes no certificates.
                if !options.plain {
                    env.certs.donor_side.apply(&mut config.tunnel);
                }
                config.tunnel.plain = options.plain;
                if let Some(bridge) = options.bridge {
                    config.tunnel.bridge = bridge;
                }
                config.limits.session = options.donor_session_rate;
                let mut relay = RelayFixture::start_with(config)?;
                if options.faults_expected {
                    relay.expect_faults();
                }
                Side::InProcess(relay)
            }
            Some(process) => {
                let mut flags = vec!["--peer-listen".to_string(), peer_listen.to_string()];
                if let Some(memory) = process.memory {
                    flags.extend(["--tunnel-memory".into(), format!("{}MiB", memory / MIB)]);
                }
                if let Some(spill) = process.spill {
                    flags.extend(["--tunnel-spill".into(), format!("{}MiB", spill / MIB)]);
                }
                if let Some(dir) = &process.spill_dir {
                    flags.extend(["--tunnel-spill-dir".into(), dir.display().to_string()]);
                }
                if !options.plain {
                    flags.extend(env.certs.donor_side.flags());
                }
                flags.extend(common_flags(&options));
                let listen = loopback(free_port()?);
                let args: Vec<&str> = flags.iter().map(String::as_str).collect();
                let upstream = Some(env.donor.addr());
                let relay = RelayProcess::start_at(listen, upstream, &args).await?;
                Side::Process {
                    relay,
                    listen,
                    upstream,
                    flags,
                }
            }
        };
        let chaos = ChaosProxy::start(
            loopback(0),
            peer_listen.to_string(),
            env.seed,
            options.faults.clone(),
        )
        .await?;
        let recipient_side = if options.recipient_process {
            let mut flags = vec!["--peer".to_string(), chaos.addr().to_string()];
            if !options.plain {
                flags.extend(env.certs.recipient_side.flags());
            }
            flags.extend(common_flags(&options));
            let args: Vec<&str> = flags.iter().map(String::as_str).collect();
            let relay = RelayProcess::start_at(env.pair_addr, None, &args).await?;
            Side::Process {
                relay,
                listen: env.pair_addr,
                upstream: None,
                flags,
            }
        } else {
            let mut config = RelayFixture::config_for(&[]);
            config.peer = Some(chaos.addr().to_string());
            if !options.plain {
                env.certs.recipient_side.apply(&mut config.tunnel);
            }
            config.tunnel.plain = options.plain;
            if let Some(bridge) = options.bridge {
                config.tunnel.bridge = bridge;
            }
            let mut relay = RelayFixture::start_at(env.pair_addr, config)?;
            if options.faults_expected {
                relay.expect_faults();
            }
            Side::InProcess(relay)
        };
        Ok(Pair {
            recipient_side,
            chaos,
            donor_side,
            transport: options.transport.unwrap_or(Transport::Default),
        })
    }

    /// Reconnects of the tunnel as each relay counts them: (recipient side, donor side).
    async fn reconnects(&self) -> Result<(f64, f64)> {
        self.both("clone_relay_tunnel_reconnects_total").await
    }

    /// Every error 1815 the donor answered a resume with, as either relay saw it on the wire
    /// (the answer the recipient got), in any of its sessions.
    async fn refused_resumes(&self) -> Result<Vec<String>> {
        let mut refused = Vec::new();
        for (name, side) in [
            ("recipient side", &self.recipient_side),
            ("donor side", &self.donor_side),
        ] {
            let view = side.sessions_json().await?;
            for session in view["sessions"].as_array().into_iter().flatten() {
                let error = &session["error"];
                if error["errno"].as_i64() == Some(ER_CLONE_RESTART) {
                    refused.push(format!("{name}: {}", error["message"]));
                }
            }
        }
        Ok(refused)
    }

    /// A metric both relays must have: (recipient side, donor side).
    async fn both(&self, name: &str) -> Result<(f64, f64)> {
        Ok((
            require_metric(
                &self.recipient_side.metrics_text().await?,
                name,
                "recipient-side",
            )?,
            require_metric(&self.donor_side.metrics_text().await?, name, "donor-side")?,
        ))
    }

    /// Stops both relays (one in process fails on a resume no fault explains) and the link.
    async fn stop(self) -> Result<()> {
        let Pair {
            recipient_side,
            chaos,
            donor_side,
            ..
        } = self;
        let recipient = recipient_side.stop().await;
        let donor = donor_side.stop().await;
        chaos.stop().await;
        recipient.context("the recipient-side relay")?;
        donor.context("the donor-side relay")
    }
}

/// Flags both relays of a pair run with, as processes.
fn common_flags(options: &PairOptions) -> Vec<String> {
    let mut flags = Vec::new();
    if let Some(bridge) = options.bridge {
        flags.extend(["--tunnel-bridge".into(), format!("{}s", bridge.as_secs())]);
    }
    if options.plain {
        flags.push("--tunnel-plain".into());
    }
    flags
}

/// One clone through a pair.
struct Run {
    outcome: CloneOutcome,
    /// The clone's session on the recipient-side relay.
    recipient_side: SideSession,
    /// The clone's session on the donor-side relay.
    donor_side: SideSession,
    mismatched: Vec<String>,
}

impl Run {
    /// The copy's time (the statement, without the recipient's restart).
    fn took(&self) -> f64 {
        self.outcome.statement_time.as_secs_f64()
    }

    /// Completed, no error in the recipient's `clone_status`, every table equal to the donor's.
    fn ensure_faithful(&self, what: &str) -> Result<()> {
        ensure!(
            self.outcome.completed() && self.outcome.error_no == 0,
            "{what}: the clone did not complete cleanly: {:?}",
            self.outcome
        );
        ensure!(
            self.mismatched.is_empty(),
            "{what}: tables differ from the donor's: {:?}",
            self.mismatched
        );
        Ok(())
    }

    /// MySQL saw no link drop: no resume (no COM_REINIT) in either relay's session.
    fn ensure_no_resume(&self, what: &str) -> Result<()> {
        ensure!(
            self.recipient_side.resume_count == 0 && self.donor_side.resume_count == 0,
            "{what}: MySQL resumed the clone: {} resumes on the recipient side ({}), {} on the \
             donor side; detections: recipient side {}, donor side {}",
            self.recipient_side.resume_count,
            self.recipient_side.resumes,
            self.donor_side.resume_count,
            self.recipient_side.detections,
            self.donor_side.detections
        );
        Ok(())
    }
}

/// Clones through `pair` while `side` runs (the faults, samples); `done` is set once the
/// clone has ended. What `side` returns comes back with the run.
async fn clone_through<T>(
    env: &Env,
    pair: &Pair,
    done: &AtomicBool,
    side: impl Future<Output = Result<T>>,
) -> Result<(Run, T)> {
    env.donor.wait_until_clone_free(DONOR_FREE_WAIT).await?;
    let clone = async {
        let outcome =
            clone_instance_with(&env.recipient, env.pair_addr, CLONE_TIMEOUT, pair.transport).await;
        done.store(true, Ordering::Relaxed);
        outcome
    };
    let (outcome, side) = tokio::join!(clone, side);
    let run = finish(env, pair, outcome?).await?;
    let side = side.with_context(|| format!("while the clone ran (it ended {:?})", run.outcome))?;
    Ok((run, side))
}

/// Waits for both relays to close the clone's session, then compares the tables.
async fn finish(env: &Env, pair: &Pair, outcome: CloneOutcome) -> Result<Run> {
    let deadline = Instant::now() + SESSION_END_WAIT;
    let (recipient_side, donor_side) = loop {
        let recipient_side = pair.recipient_side.latest().await?.with_context(|| {
            format!("the clone ended before the recipient-side relay saw a clone: {outcome:?}")
        })?;
        let donor_side = pair
            .donor_side
            .latest()
            .await?
            .with_context(|| format!("the donor-side relay has no session ({outcome:?})"))?;
        if recipient_side.ended() && donor_side.ended() {
            break (recipient_side, donor_side);
        }
        if Instant::now() >= deadline {
            bail!(
                "the clone ended ({outcome:?}) but {SESSION_END_WAIT:?} later the relays' \
                 sessions had not: recipient side {} ({}), donor side {} ({})",
                recipient_side.id,
                recipient_side.state,
                donor_side.id,
                donor_side.state
            );
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    let mismatched = if outcome.completed() {
        mismatches(
            &env.donor_sums,
            &env.dataset.checksums(&env.recipient).await?,
        )
    } else {
        Vec::new()
    };
    Ok(Run {
        outcome,
        recipient_side,
        donor_side,
        mismatched,
    })
}

/// A line of the closing table.
struct Row {
    name: &'static str,
    took: f64,
    /// The clone's network bytes over the link's cap: the time a clean link would take.
    ideal: Option<f64>,
    note: String,
    /// The checks that failed (the scenario's figures are still worth a row).
    failed: Vec<String>,
}

impl Row {
    fn new(name: &'static str, run: &Run, rate_mib: Option<u64>, note: String) -> Self {
        Row {
            name,
            took: run.took(),
            ideal: rate_mib.map(|r| run.outcome.network_bytes as f64 / (r * MIB) as f64),
            note,
            failed: Vec::new(),
        }
    }
}

/// 1. A clean clone through the pair, both relays processes of their own on their defaults, at
///    MySQL's default concurrency over a link capped at [`LINK_RATE_MIB`] with [`LATENCY_MS`]
///    each way: the baseline.
async fn clean(env: &Env) -> Result<(Run, Row)> {
    let latency = FaultSpec::new(FaultKind::Latency {
        latency_ms: LATENCY_MS,
        jitter_ms: 0,
    })
    .direction(Direction::Both);
    let pair = Pair::start(
        env,
        PairOptions {
            faults: vec![capped(LINK_RATE_MIB), latency],
            donor_process: Some(DonorProcess::default()),
            recipient_process: true,
            ..PairOptions::default()
        },
    )
    .await?;
    let (run, ()) = clone_through(env, &pair, &AtomicBool::new(false), async { Ok(()) }).await?;
    run.ensure_faithful("clean")?;
    run.ensure_no_resume("clean")?;
    let (recipient_reconnects, donor_reconnects) = pair.reconnects().await?;
    ensure!(
        recipient_reconnects == 0.0 && donor_reconnects == 0.0,
        "clean: the tunnel reconnected on a clean link ({recipient_reconnects} on the recipient \
         side, {donor_reconnects} on the donor side)"
    );
    // Both sides follow the clone: every connection, the same stages, and its progress to the end.
    let streams = CLONE_CONCURRENCY + 1;
    for (side, session) in [
        ("recipient side", &run.recipient_side),
        ("donor side", &run.donor_side),
    ] {
        ensure!(
            session.state == "completed" && session.connections >= streams,
            "clean: the {side}'s session is {} with {} connections (at least {streams} expected)",
            session.state,
            session.connections
        );
        ensure!(
            session.stages.iter().any(|s| s.contains("file_copy"))
                && session.progress["percent"].as_f64() == Some(100.0),
            "clean: the {side} did not follow the clone's stages and progress: stages {:?}, \
             progress {}",
            session.stages,
            session.progress
        );
    }
    ensure!(
        run.recipient_side.stages == run.donor_side.stages,
        "clean: the sides saw different stages: {:?} and {:?}",
        run.recipient_side.stages,
        run.donor_side.stages
    );
    // A clean clone at MySQL's default concurrency fits the default buffers: no spill.
    let (recipient_spills, donor_spills) = pair.both("clone_relay_tunnel_spills_total").await?;
    ensure!(
        recipient_spills == 0.0 && donor_spills == 0.0,
        "clean: {recipient_spills} spill files on the recipient side, {donor_spills} on the \
         donor side, with no outage"
    );
    let mut peaks = Vec::new();
    for side in [&pair.recipient_side, &pair.donor_side] {
        let relay = side.process().context("both sides run as processes")?;
        peaks.push(relay.memory()?.1);
    }
    let row = Row::new(
        "clean",
        &run,
        Some(LINK_RATE_MIB),
        format!(
            "{} streams; donor sent {:.1} MiB; 0 spills; peak RSS {:.1} MiB recipient side, \
             {:.1} MiB donor side",
            run.recipient_side.connections,
            mib(run.donor_side.bytes_from_upstream),
            mib(peaks[0]),
            mib(peaks[1])
        ),
    );
    let mut problems = Vec::new();
    for (side, peak) in ["recipient side", "donor side"].iter().zip(&peaks) {
        if *peak > DEFAULT_MEMORY + DEFAULT_RSS_MARGIN {
            problems.push(format!(
                "the {side}'s peak resident set was {:.1} MiB, over its {:.0} MiB buffer cap \
                 plus {:.0} MiB",
                mib(*peak),
                mib(DEFAULT_MEMORY),
                mib(DEFAULT_RSS_MARGIN)
            ));
        }
    }
    pair.stop().await?;
    ensure!(problems.is_empty(), "clean: {}", problems.join("; "));
    Ok((run, row))
}

/// Resets every tunnel connection open at that moment, once per [`RESET_EVERY`] of clone data
/// carried, [`RESETS`] times. Returns the connections the proxy cut, what the donor had sent
/// (read by the donor-side relay) at the first and the last reset, and the most the
/// donor-side relay held in spill files at a reset.
async fn reset_the_tunnel(pair: &Pair) -> Result<(u64, [u64; 2], f64)> {
    let control = pair.chaos.control();
    let (_, resets_at_start, _) = control.counts();
    let mut next = RESET_FIRST;
    let mut donor_sent = [0; 2];
    let mut spilled: f64 = 0.0;
    for round in 1..=RESETS {
        pair.recipient_side
            .session_past(next, SESSION_WAIT)
            .await
            .with_context(|| format!("before reset {round}"))?;
        // What the donor had sent as the reset lands (once the link is cut, the donor side
        // reads on into its buffer, as it does through any outage).
        let sent = pair
            .donor_side
            .latest()
            .await?
            .map_or(0, |s| s.bytes_from_upstream);
        donor_sent[usize::from(round > 1)] = sent;
        let (accepted, resets_before, _) = control.counts();
        // Every connection accepted so far (those still open are the tunnel's now); the ones
        // the relays dial later are left alone.
        let id = control.add(
            FaultSpec::new(FaultKind::Reset {})
                .connections((1..=accepted).collect())
                .at_ms(control.now_ms()),
        )?;
        let deadline = Instant::now() + RESET_WAIT;
        while control.counts().1 == resets_before {
            ensure!(
                Instant::now() < deadline,
                "reset {round}: the proxy cut none of connections 1..={accepted} within \
                 {RESET_WAIT:?}"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        // The cut reaches every targeted live connection at once; this leaves it time to.
        tokio::time::sleep(Duration::from_millis(200)).await;
        control.remove(id)?;
        let text = pair.donor_side.metrics_text().await?;
        spilled = spilled.max(
            plumbing::prometheus_text::sum(&text, "clone_relay_tunnel_spill_bytes").unwrap_or(0.0),
        );
        next = pair
            .recipient_side
            .latest()
            .await?
            .map_or(0, |s| s.data_bytes)
            + RESET_EVERY;
    }
    Ok((control.counts().1 - resets_at_start, donor_sent, spilled))
}

/// 2. Ten resets of the tunnel during one clone.
async fn ten_resets(env: &Env, clean: &Run) -> Result<Row> {
    let pair = Pair::start(env, PairOptions::faulted_link()).await?;
    let (run, (cut, donor_sent, spilled)) =
        clone_through(env, &pair, &AtomicBool::new(false), reset_the_tunnel(&pair)).await?;
    run.ensure_faithful("resets")?;
    run.ensure_no_resume("resets")?;
    let (recipient_reconnects, donor_reconnects) = pair.reconnects().await?;
    let replayed = |text: &str| {
        plumbing::prometheus_text::sum(text, "clone_relay_tunnel_replayed_bytes_total")
    };
    let replayed = (
        replayed(&pair.recipient_side.metrics_text().await?).unwrap_or(0.0),
        replayed(&pair.donor_side.metrics_text().await?).unwrap_or(0.0),
    );
    let (sent, clean_sent) = (
        run.donor_side.bytes_from_upstream as f64,
        clean.donor_side.bytes_from_upstream as f64,
    );
    let note = format!(
        "{cut} tunnel connections cut; reconnects \
         {recipient_reconnects}/{donor_reconnects} (recipient/donor side); replayed {:.1}/{:.1} \
         MiB; donor had sent {:.1} and {:.1} MiB at the first and last reset, {:.2} MiB in all \
         ({:+.3}% vs clean); donor side spilled up to {:.1} MiB",
        replayed.0 / MIB as f64,
        replayed.1 / MIB as f64,
        mib(donor_sent[0]),
        mib(donor_sent[1]),
        sent / MIB as f64,
        (sent - clean_sent) / clean_sent * 100.0,
        spilled / MIB as f64
    );
    let mut problems = Vec::new();
    if recipient_reconnects < RESETS as f64 {
        problems.push(format!(
            "{recipient_reconnects} tunnel reconnects on the recipient side after {RESETS} resets"
        ));
    }
    // What the donor sent: the same as the clean clone's, give or take the stages' own
    // variation; a donor that sent data again (a resume) would show it here.
    let drift = (sent - clean_sent).abs() / clean_sent;
    if drift > DONOR_BYTES_TOLERANCE {
        problems.push(format!(
            "the donor sent {:.2}% more or less than in the clean clone",
            drift * 100.0
        ));
    }
    // The check above means something only if the donor was still sending.
    if donor_sent[0] as f64 >= 0.9 * clean_sent {
        problems.push("the donor had sent nearly everything by the first reset".into());
    }
    let mut row = Row::new("10 resets", &run, Some(LINK_RATE_MIB), note);
    row.failed = problems;
    pair.stop().await?;
    Ok(row)
}

/// What the blackhole saw of the donor-side process.
#[derive(Debug, Default)]
struct Samples {
    /// Peak resident set before, during and after the outage.
    rss: [u64; 3],
    buffer: f64,
    spilled: f64,
    spill_files: usize,
    /// Most files ever seen by name in the spill folder (spill files have none).
    named_files: usize,
    /// The donor's transmitted bytes (its network interface's counter) when the buffers were
    /// first seen full during the outage, and at the last second of the outage.
    donor_tx: Option<(u64, u64)>,
    /// Most bytes of the process's open files read in one scan for the planted label, and
    /// whether a scan found it.
    scanned: u64,
    label_seen: bool,
    /// Once a second: seconds since the clone began, resident set, buffer bytes in memory and
    /// in spill files (MiB).
    timeline: Vec<String>,
}

/// 3 and 6. The whole link dark for 20 s, the donor-side relay a process on a 16 MiB buffer.
async fn blackhole(env: &Env, clean: &Run) -> Result<Row> {
    let spill = TempDir::new("spill")?;
    let spill_dir = spill.0.clone();
    let pair = Pair::start(
        env,
        PairOptions {
            donor_process: Some(DonorProcess {
                memory: Some(BUFFER_MEMORY),
                spill: Some(BUFFER_SPILL),
                spill_dir: Some(spill_dir.clone()),
            }),
            ..PairOptions::faulted_link()
        },
    )
    .await?;
    let relay = pair
        .donor_side
        .process()
        .context("the donor-side relay should be a process")?;
    let done = AtomicBool::new(false);
    // Samples the donor-side process from the clone's start, and darkens the link once the
    // session has carried OUTAGE_AT.
    let outage = async {
        let control = pair.chaos.control();
        let began = Instant::now();
        let mut dark_from = None;
        let mut seen = Samples::default();
        let mut next_line = Duration::ZERO;
        while !done.load(Ordering::Relaxed) {
            let at = began.elapsed();
            if dark_from.is_none() {
                let latest = pair.recipient_side.latest().await?;
                match latest {
                    Some(s) if s.data_bytes >= OUTAGE_AT => {
                        control.add(
                            FaultSpec::new(FaultKind::Blackhole {})
                                .at_ms(control.now_ms())
                                .lasting_ms(BLACKHOLE.as_millis() as u64),
                        )?;
                        dark_from = Some(at);
                    }
                    Some(s) if s.ended() => bail!(
                        "the session ended {} after {} bytes, before the outage",
                        s.state,
                        s.data_bytes
                    ),
                    _ => ensure!(
                        at < SESSION_WAIT,
                        "the session did not carry {OUTAGE_AT} bytes within {SESSION_WAIT:?}"
                    ),
                }
            }
            let phase = match dark_from {
                None => 0,
                Some(from) if at < from + BLACKHOLE => 1,
                Some(_) => 2,
            };
            let rss = relay.memory()?.0;
            seen.rss[phase] = seen.rss[phase].max(rss);
            let text = relay.metrics_text().await?;
            let buffer = plumbing::prometheus_text::sum(&text, "clone_relay_tunnel_buffer_bytes")
                .unwrap_or(0.0);
            let spilled = plumbing::prometheus_text::sum(&text, "clone_relay_tunnel_spill_bytes")
                .unwrap_or(0.0);
            seen.buffer = seen.buffer.max(buffer);
            seen.spilled = seen.spilled.max(spilled);
            let spills = plumbing::prometheus_text::sum(&text, "clone_relay_tunnel_spills_total")
                .unwrap_or(0.0);
            seen.spill_files = seen.spill_files.max(spills as usize);
            seen.named_files = seen.named_files.max(entries(&spill_dir));
            // While dark, every 64 MiB more spilled: the spill files' contents, read through
            // the process's descriptors, must not show the label planted in the data.
            if phase == 1 && spilled >= (seen.scanned + SCAN_EVERY) as f64 {
                let pid = relay.pid().context("the donor-side relay exited")?;
                let label = env.label.clone();
                let (scanned, found) =
                    tokio::task::spawn_blocking(move || open_files_hold(pid, label.as_bytes()))
                        .await??;
                seen.scanned = seen.scanned.max(scanned);
                seen.label_seen |= found;
            }
            if at >= next_line {
                // Once the buffers are full, the donor is held back by TCP: what its network
                // interface transmits stays flat.
                if phase == 1 && buffer + spilled >= (BUFFER_MEMORY + BUFFER_SPILL - 2 * MIB) as f64
                {
                    let tx = donor_tx_bytes(&env.donor).await?;
                    let first = seen.donor_tx.map_or(tx, |(first, _)| first);
                    seen.donor_tx = Some((first, tx));
                }
                seen.timeline.push(format!(
                    "{:>3.0}s{} rss {:.1} mem {:.1} spill {:.1}",
                    at.as_secs_f64(),
                    ["", " dark", ""][phase],
                    mib(rss),
                    buffer / MIB as f64,
                    spilled / MIB as f64
                ));
                next_line = at + Duration::from_secs(1);
            }
            tokio::time::sleep(SAMPLE_EVERY).await;
        }
        anyhow::Ok(seen)
    };
    let (run, seen) = clone_through(env, &pair, &done, outage).await?;
    eprintln!(
        "blackhole, the donor-side process once a second (MiB):\n{}",
        seen.timeline.join("\n")
    );
    run.ensure_faithful("blackhole")?;
    run.ensure_no_resume("blackhole")?;
    let (_, peak) = relay.memory()?;
    let deadline = Instant::now() + SPILL_CLEAN_WAIT;
    let mut spill_left = f64::MAX;
    while spill_left > 0.0 && Instant::now() < deadline {
        let text = relay.metrics_text().await?;
        spill_left =
            plumbing::prometheus_text::sum(&text, "clone_relay_tunnel_spill_bytes").unwrap_or(0.0);
        if spill_left > 0.0 {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    let (recipient_reconnects, donor_reconnects) = pair.reconnects().await?;
    let full_tx = seen.donor_tx.map_or("-".to_string(), |(first, last)| {
        format!("{:.2} MiB", mib(last - first))
    });
    let note = format!(
        "{:.2}x clean; donor-side process: peak RSS {:.1} MiB (cap {:.0} MiB; {:.1} before the \
         outage, {:.1} during, {:.1} after), buffers up to {:.1} MiB, spilled up to {:.1} MiB in \
         {} files ({:.1} MiB of them scanned, label not found); buffers full (cap {:.0} MiB \
         of memory and spill): the donor transmitted {full_tx} meanwhile; reconnects \
         {recipient_reconnects}/{donor_reconnects}",
        run.took() / clean.took(),
        mib(peak),
        mib(BUFFER_MEMORY),
        mib(seen.rss[0]),
        mib(seen.rss[1]),
        mib(seen.rss[2]),
        seen.buffer / MIB as f64,
        seen.spilled / MIB as f64,
        seen.spill_files,
        mib(seen.scanned),
        mib(BUFFER_MEMORY + BUFFER_SPILL)
    );
    let mut problems = Vec::new();
    if peak > BUFFER_MEMORY + RSS_MARGIN {
        problems.push(format!(
            "the donor-side relay's peak resident set was {:.1} MiB, over its {:.0} MiB buffer \
             cap plus {:.0} MiB",
            mib(peak),
            mib(BUFFER_MEMORY),
            mib(RSS_MARGIN)
        ));
    }
    // The buffers must have reached their memory cap and spilled, or the figures prove nothing.
    if seen.spilled == 0.0 || seen.spill_files == 0 {
        problems.push("the donor-side relay never spilled".into());
    }
    match seen.donor_tx {
        None => problems.push(format!(
            "the buffers never filled ({:.0} MiB of memory and spill) during the outage",
            mib(BUFFER_MEMORY + BUFFER_SPILL)
        )),
        Some((first, last)) if last - first > TX_WHILE_FULL => problems.push(format!(
            "the donor transmitted {:.1} MiB while the donor-side relay's buffers were full",
            mib(last - first)
        )),
        Some(_) => {}
    }
    if seen.label_seen {
        problems.push("the label planted in the data set is readable in a spill file".into());
    }
    if seen.scanned < SPILL_SCANNED {
        problems.push(format!(
            "the spill files held at most {:.1} MiB when scanned ({:.0} MiB wanted)",
            mib(seen.scanned),
            mib(SPILL_SCANNED)
        ));
    }
    if seen.named_files > 0 {
        problems.push(format!(
            "{} files with a name in the spill folder: spill files must have none",
            seen.named_files
        ));
    }
    if spill_left > 0.0 {
        problems.push(format!(
            "{spill_left} bytes still spilled {SPILL_CLEAN_WAIT:?} after the clone's streams ended"
        ));
    }
    let mut row = Row::new("20 s blackhole", &run, Some(LINK_RATE_MIB), note);
    row.failed = problems;
    pair.stop().await?;
    drop(spill);
    Ok(row)
}

/// Scenario 4: the whole link flapping, 1 s down every 10 s, for a whole clone capped at
/// 8 MiB/s. The periods count from the proxy's start (`at_ms` 0), so every tunnel connection
/// goes down at the same moment and one opened in a down second is down too.
async fn flap(env: &Env, mode: FlapMode, name: &'static str) -> Result<Row> {
    let flap = FaultSpec::new(FaultKind::Flap {
        period_ms: Some(10_000),
        period_bytes: None,
        down_ms: 1_000,
        mode,
    })
    .at_ms(0);
    let pair = Pair::start(
        env,
        PairOptions {
            faults: vec![capped(FLAP_RATE_MIB), flap],
            faults_expected: true,
            ..PairOptions::default()
        },
    )
    .await?;
    let (run, ()) = clone_through(env, &pair, &AtomicBool::new(false), async { Ok(()) }).await?;
    run.ensure_faithful(name)?;
    run.ensure_no_resume(name)?;
    let (_, cut, _) = pair.chaos.control().counts();
    if mode == FlapMode::Reset {
        // A clone of several periods has its tunnel connections cut more than once.
        ensure!(cut >= 2, "{name}: the flap cut {cut} tunnel connections");
    }
    let (recipient_reconnects, donor_reconnects) = pair.reconnects().await?;
    let row = Row::new(
        name,
        &run,
        Some(FLAP_RATE_MIB),
        format!(
            "{cut} tunnel connections cut; reconnects {recipient_reconnects}/{donor_reconnects}"
        ),
    );
    pair.stop().await?;
    Ok(row)
}

/// Darkens the whole link for `outage` (new connections included) once the recipient side's
/// session has carried [`OUTAGE_AT`].
async fn darken(pair: &Pair, outage: Duration) -> Result<()> {
    pair.recipient_side
        .session_past(OUTAGE_AT, SESSION_WAIT)
        .await?;
    let control = pair.chaos.control();
    control.add(
        FaultSpec::new(FaultKind::Blackhole {})
            .at_ms(control.now_ms())
            .lasting_ms(outage.as_millis() as u64),
    )?;
    Ok(())
}

/// The link dark for `outage` from [`OUTAGE_AT`] of clone data, on the pair's defaults: the
/// clone completes with equal tables and MySQL refuses no resume. Within [`BRIDGED`] MySQL sees
/// no resume at all; past it the pair falls back to CLONE's own resume.
async fn dark(env: &Env, outage: Duration, name: &'static str) -> Result<Row> {
    let pair = Pair::start(env, PairOptions::faulted_link()).await?;
    let (run, ()) =
        clone_through(env, &pair, &AtomicBool::new(false), darken(&pair, outage)).await?;
    let (recipient_fallbacks, donor_fallbacks) =
        pair.both("clone_relay_tunnel_fallbacks_total").await?;
    let refused = pair.refused_resumes().await?;
    let note = format!(
        "{} resumes (recipient side); fallbacks {recipient_fallbacks}/{donor_fallbacks}; \
         outcome {} {}",
        run.recipient_side.resume_count, run.outcome.state, run.outcome.error_no
    );
    let mut problems = Vec::new();
    if let Err(e) = run.ensure_faithful(name) {
        problems.push(format!("{e:#}"));
    }
    if !refused.is_empty() {
        problems.push(format!("MySQL refused a resume: {}", refused.join(" | ")));
    }
    if outage <= BRIDGED {
        if let Err(e) = run.ensure_no_resume(name) {
            problems.push(format!("{e:#}"));
        }
    } else {
        // Past it, both relays give the streams up and reset MySQL's connections: the recipient
        // resumes once (COM_REINIT), when the link is back.
        if recipient_fallbacks == 0.0 {
            problems.push(format!("no fallback past the {BRIDGED:?} the pair bridges"));
        }
        if run.recipient_side.resume_count != 1 {
            problems.push(format!(
                "{} resumes where one was expected: {}",
                run.recipient_side.resume_count, run.recipient_side.resumes
            ));
        }
    }
    let mut row = Row::new(name, &run, Some(LINK_RATE_MIB), note);
    row.failed = problems;
    pair.stop().await?;
    Ok(row)
}

/// The whole link slowed to [`SLOW_RATE`] for [`SLOW_FOR`] once the recipient side's session has
/// carried [`OUTAGE_AT`]: the pair carries the clone on, slowly, without giving up a stream.
async fn slow_link(env: &Env, clean: &Run) -> Result<Row> {
    let name = "64 KiB/s for 10 s";
    let pair = Pair::start(env, PairOptions::faulted_link()).await?;
    let slow = async {
        pair.recipient_side
            .session_past(OUTAGE_AT, SESSION_WAIT)
            .await?;
        let control = pair.chaos.control();
        control.add(
            FaultSpec::new(FaultKind::Bandwidth {
                rate_bytes_per_sec: SLOW_RATE,
                shared_group: Some("slow".into()),
            })
            .at_ms(control.now_ms())
            .lasting_ms(SLOW_FOR.as_millis() as u64),
        )?;
        Ok(())
    };
    let (run, ()) = clone_through(env, &pair, &AtomicBool::new(false), slow).await?;
    let (recipient_reconnects, donor_reconnects) = pair.reconnects().await?;
    let refused = pair.refused_resumes().await?;
    let note = format!(
        "reconnects {recipient_reconnects}/{donor_reconnects}; {} resumes; outcome {} {}",
        run.recipient_side.resume_count, run.outcome.state, run.outcome.error_no
    );
    let mut problems = Vec::new();
    for check in [run.ensure_faithful(name), run.ensure_no_resume(name)] {
        if let Err(e) = check {
            problems.push(format!("{e:#}"));
        }
    }
    if !refused.is_empty() {
        problems.push(format!("MySQL refused a resume: {}", refused.join(" | ")));
    }
    // A storm would give up every stream (17) at least once on each side.
    if recipient_reconnects + donor_reconnects > SLOW_RECONNECTS {
        problems.push(format!(
            "the slow link cost reconnects: {recipient_reconnects} (recipient side), \
             {donor_reconnects} (donor side)"
        ));
    }
    // The link carries at most 640 KiB in those 10 s, so the clone must lose most of them.
    let slowed = run.took() - clean.took();
    if slowed < SLOW_FOR.as_secs_f64() / 2.0 {
        problems.push(format!(
            "the slow link did not land: the clone took {slowed:.1} s more than the clean one"
        ));
    }
    let mut row = Row::new(name, &run, Some(LINK_RATE_MIB), note);
    row.failed = problems;
    pair.stop().await?;
    Ok(row)
}

/// One relay of the pair (the recipient side's, or the donor side's) killed with SIGKILL once
/// [`OUTAGE_AT`] of clone data was carried, and started again in place on the same flags: the
/// clone resumes through the pair (CLONE's own resume) and completes with equal tables, and
/// MySQL refuses no resume (a donor still holding the old clone would answer 1815).
async fn restart(env: &Env, recipient_side: bool, name: &'static str) -> Result<Row> {
    let mut pair = Pair::start(
        env,
        PairOptions {
            donor_process: (!recipient_side).then(DonorProcess::default),
            recipient_process: recipient_side,
            ..PairOptions::faulted_link()
        },
    )
    .await?;
    env.donor.wait_until_clone_free(DONOR_FREE_WAIT).await?;
    let began = Instant::now();
    let clone = clone_instance_with(&env.recipient, env.pair_addr, CLONE_TIMEOUT, pair.transport);
    let side = if recipient_side {
        &mut pair.recipient_side
    } else {
        &mut pair.donor_side
    };
    let kill = async {
        side.session_past(OUTAGE_AT, SESSION_WAIT).await?;
        let at = began.elapsed();
        side.kill_and_restart().await?;
        anyhow::Ok(at)
    };
    let (outcome, killed_at) = tokio::join!(clone, kill);
    let killed_at = killed_at?;
    let run = finish(env, &pair, outcome?).await?;
    let refused = pair.refused_resumes().await?;
    let note = format!(
        "killed at {:.1} s; the clone resumed {} times after the restart",
        killed_at.as_secs_f64(),
        run.recipient_side.resume_count
    );
    let mut problems = Vec::new();
    if let Err(e) = run.ensure_faithful(name) {
        problems.push(format!("{e:#}"));
    }
    if !refused.is_empty() {
        problems.push(format!("MySQL refused a resume: {}", refused.join(" | ")));
    }
    // One resume, answered at once: a donor still holding the old clone keeps the resume
    // waiting (up to 30 s, then 1815) and the recipient tries again.
    if run.recipient_side.resume_count != 1 {
        problems.push(format!(
            "{} resumes where one was expected: {}",
            run.recipient_side.resume_count, run.recipient_side.resumes
        ));
    }
    let mut row = Row::new(name, &run, Some(LINK_RATE_MIB), note);
    row.failed = problems;
    pair.stop().await?;
    Ok(row)
}

/// Scenario 5: the link dark for `outage`, longer than `bridge` (the relays' default when
/// `None`): a fallback to CLONE's resume that completes faithful, or a clear failure.
async fn past_the_bridge(
    env: &Env,
    bridge: Option<Duration>,
    outage: Duration,
    name: &'static str,
) -> Result<Row> {
    let pair = Pair::start(
        env,
        PairOptions {
            bridge,
            ..PairOptions::faulted_link()
        },
    )
    .await?;
    let (run, ()) =
        clone_through(env, &pair, &AtomicBool::new(false), darken(&pair, outage)).await?;
    let fallbacks = |text: &str| {
        plumbing::prometheus_text::sum(text, "clone_relay_tunnel_fallbacks_total").unwrap_or(0.0)
    };
    let fallbacks = (
        fallbacks(&pair.recipient_side.metrics_text().await?),
        fallbacks(&pair.donor_side.metrics_text().await?),
    );
    let note = if run.outcome.completed() {
        run.ensure_faithful(name)?;
        ensure!(
            run.recipient_side.resume_count >= 1,
            "{name}: the clone completed across a {outage:?} outage with no resume, past a \
             {bridge:?} bridge"
        );
        format!(
            "completed after {} resumes (recipient side), {} (donor side); fallbacks {}/{}",
            run.recipient_side.resume_count, run.donor_side.resume_count, fallbacks.0, fallbacks.1
        )
    } else {
        ensure!(
            run.outcome.error_no != 0 && !run.outcome.error_message.is_empty(),
            "{name}: the clone failed with no error to show: {:?}",
            run.outcome
        );
        format!(
            "failed clearly: {} {}; fallbacks {}/{}",
            run.outcome.error_no, run.outcome.error_message, fallbacks.0, fallbacks.1
        )
    };
    let row = Row::new(name, &run, Some(LINK_RATE_MIB), note);
    pair.stop().await?;
    Ok(row)
}

/// A recipient that clones in plaintext (`REQUIRE NO SSL`) under a session cap on the donor
/// side, the link uncapped: its login crosses the tunnel as a TLS recipient's does, the clone
/// completes with no resume, and the rate the recipient counts in FILE COPY is the cap's within
/// [`CAP_TOLERANCE`].
async fn plain_recipient(env: &Env) -> Result<Row> {
    let name = "plain recipient, donor-side session cap";
    // An empty authentication cache on the donor: the login takes caching_sha2_password's full
    // exchange (the password itself), not the fast one an earlier clone's login would allow.
    env.donor.sql("FLUSH PRIVILEGES").await?;
    let pair = Pair::start(
        env,
        PairOptions {
            transport: Some(Transport::NoSsl),
            donor_session_rate: Some(SESSION_CAP_MIB * MIB),
            ..PairOptions::default()
        },
    )
    .await?;
    let (run, ()) = clone_through(env, &pair, &AtomicBool::new(false), async { Ok(()) }).await?;
    // The cap, as the recipient counts what it received: FILE COPY's network bytes over the
    // stage's time (`clone_progress`, microseconds).
    let stage = env
        .recipient
        .rows(
            "SELECT NETWORK, TIMESTAMPDIFF(MICROSECOND, BEGIN_TIME, END_TIME) \
             FROM performance_schema.clone_progress WHERE STAGE = 'FILE COPY'",
        )
        .await?;
    let rate = match stage.first().map(Vec::as_slice) {
        Some([bytes, micros]) => {
            let bytes: f64 = bytes.parse().context("FILE COPY's NETWORK")?;
            let micros: f64 = micros.parse().context("FILE COPY's time")?;
            bytes / (micros / 1e6)
        }
        _ => bail!("{name}: no FILE COPY row in clone_progress: {stage:?}"),
    };
    run.ensure_faithful(name)?;
    run.ensure_no_resume(name)?;
    let cap = (SESSION_CAP_MIB * MIB) as f64;
    let off = rate / cap - 1.0;
    let note = format!(
        "REQUIRE NO SSL; {SESSION_CAP_MIB} MiB/s session cap on the donor side: the recipient \
         received {:.2} MiB/s in FILE COPY ({:+.2}%, its clone_progress)",
        rate / MIB as f64,
        off * 100.0
    );
    let mut row = Row::new(name, &run, Some(SESSION_CAP_MIB), note);
    if off.abs() > CAP_TOLERANCE {
        row.failed.push(format!(
            "the recipient received {:.2} MiB/s under a {SESSION_CAP_MIB} MiB/s cap",
            rate / MIB as f64
        ));
    }
    pair.stop().await?;
    Ok(row)
}

/// Soak: uncapped clone times through the pair (mutual TLS and plain tunnel), one relay, and
/// direct, in this run.
async fn throughput(env: &Env) -> Result<Vec<Row>> {
    let mut rows = Vec::new();
    for (name, plain) in [
        ("uncapped pair", false),
        ("uncapped pair, plain tunnel", true),
    ] {
        let pair = Pair::start(
            env,
            PairOptions {
                plain,
                ..PairOptions::default()
            },
        )
        .await?;
        let (run, ()) =
            clone_through(env, &pair, &AtomicBool::new(false), async { Ok(()) }).await?;
        run.ensure_faithful(name)?;
        run.ensure_no_resume(name)?;
        rows.push(Row::new(name, &run, None, String::new()));
        pair.stop().await?;
    }
    let single = RelayFixture::start_at(env.single_addr, RelayFixture::config(env.donor.addr()))?;
    for (name, from) in [
        ("uncapped single relay", env.single_addr),
        ("uncapped direct", env.donor.addr()),
    ] {
        env.donor.wait_until_clone_free(DONOR_FREE_WAIT).await?;
        let outcome =
            clone_instance_with(&env.recipient, from, CLONE_TIMEOUT, Transport::Default).await?;
        ensure!(outcome.completed(), "{name}: {outcome:?}");
        let differ = mismatches(
            &env.donor_sums,
            &env.dataset.checksums(&env.recipient).await?,
        );
        ensure!(differ.is_empty(), "{name}: {differ:?}");
        rows.push(Row {
            name,
            took: outcome.statement_time.as_secs_f64(),
            ideal: None,
            note: String::new(),
            failed: Vec::new(),
        });
    }
    single.stop().await?;
    Ok(rows)
}

pub async fn a_relay_pair_hides_link_drops_from_mysql() -> Result<()> {
    init_logging();
    let started = Instant::now();
    let env = Env::start().await?;
    let seed = env.seed;
    let mut rows = Vec::new();
    let mut failures = Vec::new();
    let mut record = |name: &str, result: Result<Vec<Row>>| match result {
        Ok(more) => {
            for row in &more {
                if !row.failed.is_empty() {
                    failures.push(format!(
                        "{name}: {} (clone {:.1} s; {})",
                        row.failed.join("; "),
                        row.took,
                        row.note
                    ));
                }
            }
            rows.extend(more);
        }
        Err(e) => failures.push(format!("{name}: {e:#}")),
    };

    // The baseline the others compare with; nothing else means much without it.
    let (clean, row) = clean(&env).await.context("the clean clone")?;
    record("clean", Ok(vec![row]));
    if wanted("plain") {
        record(
            "plain recipient",
            plain_recipient(&env).await.map(|r| vec![r]),
        );
    }
    if wanted("resets") {
        record("resets", ten_resets(&env, &clean).await.map(|r| vec![r]));
    }
    if wanted("blackhole") {
        record("blackhole", blackhole(&env, &clean).await.map(|r| vec![r]));
    }
    if wanted("flap") {
        let flapping = flap(&env, FlapMode::Reset, "flap (reset mode)").await;
        record("flap", flapping.map(|r| vec![r]));
    }
    if wanted("dark") {
        let outage = dark(&env, DARK, "35 s dark link, defaults").await;
        record("dark link", outage.map(|r| vec![r]));
    }
    if wanted("slow") {
        record("slow link", slow_link(&env, &clean).await.map(|r| vec![r]));
    }
    if wanted("restart") {
        let killed = restart(&env, true, "recipient-side relay killed and restarted").await;
        record("recipient side restarted", killed.map(|r| vec![r]));
        let killed = restart(&env, false, "donor-side relay killed and restarted").await;
        record("donor side restarted", killed.map(|r| vec![r]));
    }
    if harness::SOAK {
        for (outage, name) in [
            (Duration::from_secs(25), "25 s dark link, defaults"),
            (Duration::from_secs(40), "40 s dark link, defaults"),
            (LONG_OVERRUN, "70 s dark link, defaults"),
        ] {
            record(name, dark(&env, outage, name).await.map(|r| vec![r]));
        }
        let overrun = past_the_bridge(&env, Some(SHORT_BRIDGE), OVERRUN, "15 s outage, 5 s bridge");
        record("past the bridge", overrun.await.map(|r| vec![r]));
        let flapping = flap(&env, FlapMode::Blackhole, "flap (blackhole mode)").await;
        record("flap, blackhole mode", flapping.map(|r| vec![r]));
        record("throughput", throughput(&env).await);
    }

    let table = format!(
        "relay pair, {} MiB data set, seed {seed}, {:.0} s in all:\n\
         | run | clone (s) | at the cap (s) | checks | notes |\n|---|---:|---:|---|---|\n{}",
        DATASET_BYTES / MIB,
        started.elapsed().as_secs_f64(),
        rows.iter()
            .map(|r| format!(
                "| {} | {:.1} | {} | {} | {} |",
                r.name,
                r.took,
                r.ideal.map_or("-".into(), |i| format!("{i:.1}")),
                if r.failed.is_empty() { "ok" } else { "FAILED" },
                r.note
            ))
            .collect::<Vec<_>>()
            .join("\n")
    );
    eprintln!("{table}");
    // CI prints it after the tests.
    let path = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("relay-pair.txt");
    std::fs::write(&path, format!("{table}\n"))?;
    if !failures.is_empty() {
        bail!("seed {seed}:\n{}", failures.join("\n"));
    }
    Ok(())
}
