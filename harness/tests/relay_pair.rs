//! The relay pair end to end with real MySQL: a recipient-side relay (`peer`) carries each
//! recipient connection over a resumable mutual-TLS tunnel to a donor-side relay
//! (`peer_listen`), which dials the donor. The chaos proxy is the inter-zone link between them:
//!
//! ```text
//! recipient -> recipient-side relay -> chaos proxy (the link) -> donor-side relay -> donor
//! ```
//!
//! One donor and one recipient serve every scenario, one after the other, each clone checked
//! table by table. The link is capped at 20 MiB/s (shared by every tunnel connection, donor to
//! recipient) so that faults land mid-transfer, and faults are triggered by the bytes the
//! recipient-side relay's session has carried, not by the clock:
//!
//! 1. a clean clone: the baseline time, no resume on either relay, no tunnel reconnect; then
//!    the same uncapped from a recipient that clones in plaintext (`REQUIRE NO SSL`) with the
//!    donor's authentication cache emptied, so that its login takes the full exchange (the
//!    other clones use CLONE's default, TLS to the recipient-side relay);
//! 2. ten resets of every open tunnel connection, one per 8 MiB carried, the relays on their
//!    defaults (the donor side reads no further ahead of the link than its send window, so the
//!    donor is still sending when they land): no resume seen by MySQL on either relay, no error in the recipient's `clone_status`, at least ten tunnel
//!    reconnects, and the donor sends no data twice (what the donor-side relay read from the
//!    donor is within 1% of the clean clone's);
//! 3. the whole link dark for 20 s, new connections included, with the donor-side relay as a
//!    process of its own on a 16 MiB buffer cap: no resume, its peak resident set under the cap
//!    plus a fixed margin, its buffers spilled to files that never have a name in the spill
//!    folder and hold no bytes once the clone's streams ended;
//! 4. the whole link flapping (chaos `flap`, reset mode, 10 s period, 1 s down, its periods
//!    counted from the proxy's start so that every tunnel connection, new ones included, is down
//!    in the same second) for a whole clone capped at 8 MiB/s: no resume;
//! 5. an outage longer than the pair bridges (`tunnel.bridge` 5 s, the link dark for 15 s): the
//!    clone falls back to CLONE's own resume and completes faithful, or fails with a clear error;
//!    it never hangs (every wait has a deadline) and never leaves wrong data.
//!
//! `CLONE_RELAY_SOAK=1` adds an outage past the default bridge (70 s against 45 s), the flap in
//! blackhole mode (each tunnel connection held 1 s in every 10 s, below `tunnel.timeout`), and
//! the pair's uncapped clone time (mutual TLS and plain tunnel) against one relay and direct.
//! `CHAOS_SEED` replays the proxy's decisions; `RUST_LOG` sets the relays' log (the donor-side
//! process's too); `RELAY_PAIR_ONLY=resets,blackhole` runs only those scenarios after the
//! clean clone (`plain`, `resets`, `blackhole`, `flap`, `bridge`).

use std::future::Future;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use anyhow::{Context, Result, bail, ensure};
use chaos::{ChaosProxy, Direction, FaultKind, FaultSpec, FlapMode};
use clone_relay::config::TunnelSettings;
use clone_relay::session::SessionView;
use harness::clone::{CloneOutcome, Transport, clone_instance_with};
use harness::dataset::{Checksums, Dataset, mismatches};
use harness::image::mysql_image;
use harness::process::{RelayProcess, free_port};
use harness::{MysqlServer, RelayFixture, ServerOptions, docker_available};
use tokio::time::Instant;

const MIB: u64 = 1 << 20;
const DATASET_BYTES: u64 = 100 * MIB;
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
/// The donor-side relay's replay buffer memory in the blackhole, and the resident set allowed
/// above it: the process idles at about 18 MiB and its copy buffers, TLS and allocator take
/// about as much again while it carries a clone (peaks 52-60 MiB seen); the outage spills about
/// 190 MiB, so a bound of 80 MiB still shows that spilled bytes do not stay in memory.
const BUFFER_MEMORY: u64 = 16 * MIB;
const RSS_MARGIN: u64 = 64 * MIB;
/// Bound on waiting for the spilled bytes to be freed once the clone ended.
const SPILL_CLEAN_WAIT: Duration = Duration::from_secs(30);
/// The outage past what the pair bridges, and the bridge it is set to.
const SHORT_BRIDGE: Duration = Duration::from_secs(5);
const OVERRUN: Duration = Duration::from_secs(15);
/// The soak's outage past the default bridge (45 s).
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
/// `plain`, `resets`, `blackhole`, `flap`, `bridge`); the clean clone always runs.
fn wanted(name: &str) -> bool {
    std::env::var("RELAY_PAIR_ONLY").map_or(true, |only| only.split(',').any(|n| n.trim() == name))
}

fn soak() -> bool {
    std::env::var("CLONE_RELAY_SOAK").is_ok_and(|v| v == "1")
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

/// Entries in `dir` (0 when it is gone).
fn entries(dir: &Path) -> usize {
    std::fs::read_dir(dir).map_or(0, Iterator::count)
}

/// The sum of every series of metric `name` in a `/metrics` text; `None` when there is none.
fn metric(text: &str, name: &str) -> Option<f64> {
    let values: Vec<f64> = text
        .lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let (series, value) = l.rsplit_once(' ')?;
            let base = series.split('{').next()?;
            (base == name).then(|| value.trim().parse().ok())?
        })
        .collect();
    (!values.is_empty()).then(|| values.iter().sum())
}

/// A metric that must be there.
fn require_metric(text: &str, name: &str, relay: &str) -> Result<f64> {
    metric(text, name).with_context(|| format!("the {relay} relay's /metrics has no {name}"))
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
        let donor_sums = dataset.checksums(&donor).await?;
        let pair_addr = loopback(free_port()?);
        let single_addr = loopback(free_port()?);
        let mut options = ServerOptions::recipient(2, &[pair_addr, single_addr, donor.addr()]);
        // Main, aux and three workers from the start: five streams on the tunnel.
        options.extra_args = vec![
            "--clone-autotune-concurrency=OFF".into(),
            "--clone-max-concurrency=4".into(),
        ];
        let recipient = MysqlServer::start(&image, options).await?;
        Ok(Env {
            donor,
            dataset,
            donor_sums,
            recipient,
            pair_addr,
            single_addr,
            certs: TunnelCerts::create()?,
            seed: seed(),
        })
    }
}

/// A clone session as the donor-side relay's `/sessions` shows it (it may run as a process, so
/// it is read over HTTP on both kinds).
#[derive(Debug, Clone)]
struct DonorSession {
    id: u64,
    state: String,
    resume_count: u64,
    /// What the donor sent.
    bytes_from_upstream: u64,
    detections: serde_json::Value,
}

impl DonorSession {
    fn from_json(v: &serde_json::Value) -> Result<Self> {
        let number = |field: &str| {
            v[field]
                .as_u64()
                .with_context(|| format!("session field {field} missing in {v}"))
        };
        Ok(DonorSession {
            id: number("id")?,
            state: v["state"].as_str().unwrap_or_default().to_string(),
            resume_count: number("resume_count")?,
            bytes_from_upstream: number("bytes_from_upstream")?,
            detections: v["detections"].clone(),
        })
    }

    fn ended(&self) -> bool {
        self.state == "completed" || self.state == "failed"
    }
}

/// The donor-side relay: in the test's process, or as a process of its own (for its memory).
enum DonorSide {
    InProcess(RelayFixture),
    Process {
        relay: RelayProcess,
        peer_addr: SocketAddr,
    },
}

impl DonorSide {
    fn peer_addr(&self) -> SocketAddr {
        match self {
            DonorSide::InProcess(relay) => relay.peer_addr(),
            DonorSide::Process { peer_addr, .. } => *peer_addr,
        }
    }

    async fn sessions_json(&self) -> Result<serde_json::Value> {
        match self {
            DonorSide::InProcess(relay) => relay.sessions_json().await,
            DonorSide::Process { relay, .. } => relay.sessions_json().await,
        }
    }

    async fn metrics_text(&self) -> Result<String> {
        match self {
            DonorSide::InProcess(relay) => relay.metrics_text().await,
            DonorSide::Process { relay, .. } => relay.metrics_text().await,
        }
    }

    /// Its latest session.
    async fn latest(&self) -> Result<Option<DonorSession>> {
        let view = self.sessions_json().await?;
        view["sessions"]
            .as_array()
            .and_then(|s| s.last())
            .map(DonorSession::from_json)
            .transpose()
    }
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
    /// The donor-side relay's `tunnel.memory` and `tunnel.spill` (in process).
    donor_buffer: Option<(usize, usize)>,
    /// Run the donor-side relay as a process with this buffer memory and spill folder.
    donor_process: Option<(u64, PathBuf)>,
    /// The scenario injects faults: resumes are the scenario's to judge (see
    /// [`RelayFixture::expect_faults`]); without it any resume fails the run.
    faults_expected: bool,
    /// How the recipient's connections reach the recipient-side relay; [`Transport::Default`]
    /// (TLS, CLONE's own default) when `None`.
    transport: Option<Transport>,
}

/// The two relays and the link between them.
struct Pair {
    recipient_side: RelayFixture,
    chaos: ChaosProxy,
    donor_side: DonorSide,
    transport: Transport,
}

impl Pair {
    async fn start(env: &Env, options: PairOptions) -> Result<Pair> {
        let donor_side = match &options.donor_process {
            None => {
                let mut config = RelayFixture::config(env.donor.addr());
                config.peer_listen = Some(loopback(0));
                env.certs.donor_side.apply(&mut config.tunnel);
                config.tunnel.plain = options.plain;
                if let Some(bridge) = options.bridge {
                    config.tunnel.bridge = bridge;
                }
                if let Some((memory, spill)) = options.donor_buffer {
                    config.tunnel.memory_bytes = memory;
                    config.tunnel.spill_bytes = spill;
                }
                let mut relay = RelayFixture::start_with(config)?;
                if options.faults_expected {
                    relay.expect_faults();
                }
                DonorSide::InProcess(relay)
            }
            Some((memory, spill_dir)) => {
                let peer_addr = loopback(free_port()?);
                let mut flags = vec![
                    "--peer-listen".to_string(),
                    peer_addr.to_string(),
                    "--tunnel-memory".into(),
                    format!("{}MiB", memory / MIB),
                    "--tunnel-spill-dir".into(),
                    spill_dir.display().to_string(),
                ];
                flags.extend(env.certs.donor_side.flags());
                if let Some(bridge) = options.bridge {
                    flags.extend(["--tunnel-bridge".into(), format!("{}s", bridge.as_secs())]);
                }
                if options.plain {
                    flags.push("--tunnel-plain".into());
                }
                let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
                let relay = RelayProcess::start(env.donor.addr(), &flags).await?;
                DonorSide::Process { relay, peer_addr }
            }
        };
        let chaos = ChaosProxy::start(
            loopback(0),
            donor_side.peer_addr().to_string(),
            env.seed,
            options.faults,
        )
        .await?;
        let mut config = RelayFixture::config_for(&[]);
        config.peer = Some(chaos.addr().to_string());
        env.certs.recipient_side.apply(&mut config.tunnel);
        config.tunnel.plain = options.plain;
        if let Some(bridge) = options.bridge {
            config.tunnel.bridge = bridge;
        }
        let mut recipient_side = RelayFixture::start_at(env.pair_addr, config)?;
        if options.faults_expected {
            recipient_side.expect_faults();
        }
        Ok(Pair {
            recipient_side,
            chaos,
            donor_side,
            transport: options.transport.unwrap_or(Transport::Default),
        })
    }

    /// Reconnects of the tunnel as each relay counts them: (recipient side, donor side).
    async fn reconnects(&self) -> Result<(f64, f64)> {
        let name = "clone_relay_tunnel_reconnects_total";
        Ok((
            require_metric(
                &self.recipient_side.metrics_text().await?,
                name,
                "recipient-side",
            )?,
            require_metric(&self.donor_side.metrics_text().await?, name, "donor-side")?,
        ))
    }

    /// Stops both relays (a relay fixture fails on a resume no fault explains) and the link.
    async fn stop(self) -> Result<()> {
        let Pair {
            recipient_side,
            chaos,
            donor_side,
            ..
        } = self;
        let recipient = recipient_side.stop().await;
        let donor = match donor_side {
            DonorSide::InProcess(relay) => relay.stop().await,
            // Killed when dropped.
            DonorSide::Process { .. } => Ok(()),
        };
        chaos.stop().await;
        recipient.context("the recipient-side relay")?;
        donor.context("the donor-side relay")
    }
}

/// One clone through a pair.
struct Run {
    outcome: CloneOutcome,
    /// The clone's session on the recipient-side relay.
    recipient_side: SessionView,
    /// The clone's session on the donor-side relay.
    donor_side: DonorSession,
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
            "{what}: MySQL resumed the clone: {} resumes on the recipient side ({:?}), {} on the \
             donor side; detections: recipient side {:?}, donor side {}",
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
        let recipient_side = pair
            .recipient_side
            .sessions()
            .sessions
            .last()
            .cloned()
            .with_context(|| {
                format!("the clone ended before the recipient-side relay saw a clone: {outcome:?}")
            })?;
        let donor_side = pair
            .donor_side
            .latest()
            .await?
            .with_context(|| format!("the donor-side relay has no session ({outcome:?})"))?;
        if recipient_side.state.ended() && donor_side.ended() {
            break (recipient_side, donor_side);
        }
        if Instant::now() >= deadline {
            bail!(
                "the clone ended ({outcome:?}) but {SESSION_END_WAIT:?} later the relays' \
                 sessions had not: recipient side {} ({}), donor side {} ({})",
                recipient_side.id,
                recipient_side.state.as_str(),
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

/// 1. A clean clone through the pair: the baseline.
async fn clean(env: &Env) -> Result<(Run, Row)> {
    let pair = Pair::start(
        env,
        PairOptions {
            faults: vec![capped(LINK_RATE_MIB)],
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
    // Spill files the donor-side relay made with no outage at all.
    let spills = metric(
        &pair.donor_side.metrics_text().await?,
        "clone_relay_tunnel_spills_total",
    )
    .unwrap_or(0.0);
    let row = Row::new(
        "clean",
        &run,
        Some(LINK_RATE_MIB),
        format!(
            "donor sent {:.1} MiB; donor side made {spills} spill files",
            mib(run.donor_side.bytes_from_upstream)
        ),
    );
    pair.stop().await?;
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
        spilled = spilled.max(metric(&text, "clone_relay_tunnel_spill_bytes").unwrap_or(0.0));
        next = pair
            .recipient_side
            .sessions()
            .sessions
            .last()
            .map_or(0, |s| s.data_bytes)
            + RESET_EVERY;
    }
    Ok((control.counts().1 - resets_at_start, donor_sent, spilled))
}

/// 2. Ten resets of the tunnel during one clone.
async fn ten_resets(env: &Env, clean: &Run) -> Result<Row> {
    let pair = Pair::start(
        env,
        PairOptions {
            faults: vec![capped(LINK_RATE_MIB)],
            faults_expected: true,
            ..PairOptions::default()
        },
    )
    .await?;
    let (run, (cut, donor_sent, spilled)) =
        clone_through(env, &pair, &AtomicBool::new(false), reset_the_tunnel(&pair)).await?;
    run.ensure_faithful("resets")?;
    run.ensure_no_resume("resets")?;
    let (recipient_reconnects, donor_reconnects) = pair.reconnects().await?;
    let replayed = |text: &str| metric(text, "clone_relay_tunnel_replayed_bytes_total");
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
            faults: vec![capped(LINK_RATE_MIB)],
            donor_process: Some((BUFFER_MEMORY, spill_dir.clone())),
            faults_expected: true,
            ..PairOptions::default()
        },
    )
    .await?;
    let DonorSide::Process { relay, .. } = &pair.donor_side else {
        bail!("the donor-side relay should be a process");
    };
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
                let latest = pair.recipient_side.sessions().sessions.last().cloned();
                match latest {
                    Some(s) if s.data_bytes >= OUTAGE_AT => {
                        control.add(
                            FaultSpec::new(FaultKind::Blackhole {})
                                .at_ms(control.now_ms())
                                .lasting_ms(BLACKHOLE.as_millis() as u64),
                        )?;
                        dark_from = Some(at);
                    }
                    Some(s) if s.state.ended() => bail!(
                        "the session ended {} after {} bytes, before the outage",
                        s.state.as_str(),
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
            let buffer = metric(&text, "clone_relay_tunnel_buffer_bytes").unwrap_or(0.0);
            let spilled = metric(&text, "clone_relay_tunnel_spill_bytes").unwrap_or(0.0);
            seen.buffer = seen.buffer.max(buffer);
            seen.spilled = seen.spilled.max(spilled);
            let spills = metric(&text, "clone_relay_tunnel_spills_total").unwrap_or(0.0);
            seen.spill_files = seen.spill_files.max(spills as usize);
            seen.named_files = seen.named_files.max(entries(&spill_dir));
            if at >= next_line {
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
        spill_left = metric(&text, "clone_relay_tunnel_spill_bytes").unwrap_or(0.0);
        if spill_left > 0.0 {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    let (recipient_reconnects, donor_reconnects) = pair.reconnects().await?;
    let note = format!(
        "{:.2}x clean; donor-side process: peak RSS {:.1} MiB (cap {:.0} MiB; {:.1} before the \
         outage, {:.1} during, {:.1} after), buffers up to {:.1} MiB, spilled up to {:.1} MiB in \
         {} files; reconnects {recipient_reconnects}/{donor_reconnects}",
        run.took() / clean.took(),
        mib(peak),
        mib(BUFFER_MEMORY),
        mib(seen.rss[0]),
        mib(seen.rss[1]),
        mib(seen.rss[2]),
        seen.buffer / MIB as f64,
        seen.spilled / MIB as f64,
        seen.spill_files
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
            faults: vec![capped(LINK_RATE_MIB)],
            bridge,
            faults_expected: true,
            ..PairOptions::default()
        },
    )
    .await?;
    let cut = async {
        pair.recipient_side
            .session_past(OUTAGE_AT, SESSION_WAIT)
            .await?;
        let control = pair.chaos.control();
        control.add(
            FaultSpec::new(FaultKind::Blackhole {})
                .at_ms(control.now_ms())
                .lasting_ms(outage.as_millis() as u64),
        )?;
        anyhow::Ok(())
    };
    let (run, ()) = clone_through(env, &pair, &AtomicBool::new(false), cut).await?;
    let fallbacks = |text: &str| metric(text, "clone_relay_tunnel_fallbacks_total").unwrap_or(0.0);
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

/// A recipient that clones in plaintext (`REQUIRE NO SSL`), uncapped: its login crosses the
/// tunnel as a TLS recipient's does, and the clone completes with no resume.
async fn plain_recipient(env: &Env) -> Result<Row> {
    let name = "plain recipient, uncapped";
    // An empty authentication cache on the donor: the login takes caching_sha2_password's full
    // exchange (the password itself), not the fast one an earlier clone's login would allow.
    env.donor.sql("FLUSH PRIVILEGES").await?;
    let pair = Pair::start(
        env,
        PairOptions {
            transport: Some(Transport::NoSsl),
            ..PairOptions::default()
        },
    )
    .await?;
    let (run, ()) = clone_through(env, &pair, &AtomicBool::new(false), async { Ok(()) }).await?;
    run.ensure_faithful(name)?;
    run.ensure_no_resume(name)?;
    let row = Row::new(name, &run, None, "REQUIRE NO SSL".into());
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

#[tokio::test(flavor = "multi_thread")]
async fn a_relay_pair_hides_link_drops_from_mysql() -> Result<()> {
    if !docker_available("a_relay_pair_hides_link_drops_from_mysql").await {
        return Ok(());
    }
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
    if wanted("bridge") {
        let overrun = past_the_bridge(&env, Some(SHORT_BRIDGE), OVERRUN, "15 s outage, 5 s bridge");
        record("past the bridge", overrun.await.map(|r| vec![r]));
    }
    if soak() {
        let flapping = flap(&env, FlapMode::Blackhole, "flap (blackhole mode)").await;
        record("flap, blackhole mode", flapping.map(|r| vec![r]));
        let overrun = past_the_bridge(&env, None, LONG_OVERRUN, "70 s outage, default bridge");
        record("past the default bridge", overrun.await.map(|r| vec![r]));
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
