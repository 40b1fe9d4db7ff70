//! clone-relay running in-process on loopback ports (relay and admin), for a test or a drill.

use std::net::{Ipv4Addr, SocketAddr};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use clone_relay::server::Listeners;
use clone_relay::session::{DetectionKind, SessionsView};
use clone_relay::{Config, Relay, RelayError};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tokio::time::Instant;

/// A running relay with its admin listener; dropping it stops both.
///
/// Unless the test says it injects faults ([`RelayFixture::expect_faults`]), the fixture counts
/// the resets that no fault caused when it stops or is dropped (a resume on any of its sessions,
/// or a flow the relay declared dead) and fails the test on any: a relay that resets a healthy
/// clone is a defect even when the clone completes.
#[derive(Debug)]
pub struct RelayFixture {
    relay: Relay,
    addr: SocketAddr,
    admin_addr: SocketAddr,
    /// The tunnel listener of a pair's donor side.
    peer_addr: Option<SocketAddr>,
    stop: Option<oneshot::Sender<()>>,
    task: JoinHandle<Result<(), RelayError>>,
    faults_expected: bool,
}

impl RelayFixture {
    /// A relay to `upstream` with default settings (and a short shutdown grace).
    pub fn start(upstream: SocketAddr) -> Result<Self> {
        Self::start_with(Self::config(upstream))
    }

    /// The settings [`RelayFixture::start`] uses, to adjust before [`RelayFixture::start_with`].
    pub fn config(upstream: SocketAddr) -> Config {
        let mut config = Config::new(upstream.to_string());
        config.shutdown_grace = Duration::from_secs(1);
        config
    }

    /// The settings for a relay in front of several donors.
    pub fn config_for(upstreams: &[SocketAddr]) -> Config {
        let mut config =
            Config::with_upstreams(upstreams.iter().map(ToString::to_string).collect());
        config.shutdown_grace = Duration::from_secs(1);
        config
    }

    /// A relay with the given settings, listening on free loopback ports.
    pub fn start_with(config: Config) -> Result<Self> {
        Self::start_at(SocketAddr::from((Ipv4Addr::LOCALHOST, 0)), config)
    }

    /// A relay with the given settings listening on `addr` (for example the address of a relay
    /// just stopped, to restart it in place); its admin listener takes a free loopback port.
    pub fn start_at(addr: SocketAddr, config: Config) -> Result<Self> {
        let relay = Relay::new(config)?;
        let listeners = Listeners {
            recipients: Some(clone_relay::bind(addr)?),
            tunnel: relay
                .config()
                .peer_listen
                .map(clone_relay::bind)
                .transpose()?,
            admin: Some(clone_relay::bind(SocketAddr::from((
                Ipv4Addr::LOCALHOST,
                0,
            )))?),
        };
        let addr = listeners
            .recipients_addr()
            .context("relay listener address")?;
        let admin_addr = listeners.admin_addr().context("admin listener address")?;
        let peer_addr = listeners.tunnel_addr();
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn({
            let relay = relay.clone();
            async move {
                relay
                    .serve_all(listeners, async move {
                        let _ = stopped.await;
                    })
                    .await
            }
        });
        Ok(RelayFixture {
            relay,
            addr,
            admin_addr,
            peer_addr,
            stop: Some(stop),
            task,
            faults_expected: false,
        })
    }

    /// Says that the test injects faults (or resets sessions itself), so resets are expected.
    pub fn expect_faults(&mut self) {
        self.faults_expected = true;
    }

    /// The resets no fault explains: one line per session that resumed or that the relay
    /// reset, empty when faults are expected.
    pub fn unexplained_resets(&self) -> Vec<String> {
        if self.faults_expected {
            return Vec::new();
        }
        self.sessions()
            .sessions
            .iter()
            .filter_map(|s| {
                let dead = s
                    .detections
                    .iter()
                    .filter(|d| d.kind == DetectionKind::FlowDead)
                    .count();
                (s.resume_count > 0 || dead > 0).then(|| {
                    format!(
                        "session {} ({}): {} resumes, {dead} flows declared dead, detections {:?}",
                        s.id,
                        s.state.as_str(),
                        s.resume_count,
                        s.detections
                    )
                })
            })
            .collect()
    }

    fn check_resets(&self) -> Result<()> {
        let unexplained = self.unexplained_resets();
        if !unexplained.is_empty() {
            bail!(
                "the relay reset clones that no fault touched (a false reset):\n{}",
                unexplained.join("\n")
            );
        }
        Ok(())
    }

    /// Where the recipient should clone from.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Where a pair's recipient side reaches this relay (its `peer_listen`, bound).
    pub fn peer_addr(&self) -> SocketAddr {
        self.peer_addr
            .expect("peer_addr: this relay has no peer_listen (not a pair's donor side)")
    }

    /// The admin listener (`/metrics`, `/sessions`).
    pub fn admin_addr(&self) -> SocketAddr {
        self.admin_addr
    }

    /// The relay's shared state, for direct inspection.
    pub fn relay(&self) -> &Relay {
        &self.relay
    }

    /// `/sessions` fetched over HTTP from the admin listener, as JSON.
    pub async fn sessions_json(&self) -> Result<serde_json::Value> {
        let (status, body) = plumbing::http::request(self.admin_addr, "GET", "/sessions").await?;
        if status != 200 {
            bail!("/sessions answered {status}: {body}");
        }
        Ok(serde_json::from_str(&body)?)
    }

    /// `/metrics` fetched over HTTP.
    pub async fn metrics_text(&self) -> Result<String> {
        metrics_text(self.admin_addr).await
    }

    /// Waits until the relay's latest session has carried `bytes` of clone data; returns its id.
    /// Fails, saying what it waited for and how far the session got, when `within` passes
    /// first or when that session ends short of `bytes` (a clone that failed or finished early
    /// fails the wait at once instead of leaving it to the deadline). A session already over
    /// when the wait begins belongs to an earlier clone and is not the one waited for.
    pub async fn session_past(&self, bytes: u64, within: Duration) -> Result<u64> {
        let deadline = Instant::now() + within;
        let earlier = self
            .sessions()
            .sessions
            .last()
            .filter(|s| s.state.ended())
            .map(|s| s.id);
        loop {
            let latest = self
                .sessions()
                .sessions
                .last()
                .filter(|s| Some(s.id) != earlier)
                .cloned();
            if let Some(s) = &latest {
                if s.data_bytes >= bytes {
                    return Ok(s.id);
                }
                if s.state.ended() {
                    bail!(
                        "waited for a clone session to carry {bytes} bytes of clone data, but \
                         session {} ended {} after {} bytes",
                        s.id,
                        s.state.as_str(),
                        s.data_bytes
                    );
                }
            }
            if Instant::now() >= deadline {
                let seen = latest.map_or_else(
                    || "no new session began".to_string(),
                    |s| {
                        format!(
                            "session {} is {} after {} bytes",
                            s.id,
                            s.state.as_str(),
                            s.data_bytes
                        )
                    },
                );
                bail!(
                    "waited {within:?} for a clone session to carry {bytes} bytes of clone \
                     data: {seen}"
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// The sessions as the registry holds them.
    pub fn sessions(&self) -> SessionsView {
        self.relay.registry().view()
    }

    /// Stops the relay and waits for it to finish; fails on a false reset (see the type's
    /// documentation).
    pub async fn stop(mut self) -> Result<()> {
        let resets = self.check_resets();
        // Checked once: the drop that follows has nothing more to say.
        self.faults_expected = true;
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        (&mut self.task).await??;
        resets
    }
}

impl Drop for RelayFixture {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if !std::thread::panicking()
            && let Err(e) = self.check_resets()
        {
            panic!("{e:#}");
        }
    }
}

/// `/metrics` of the relay whose admin listener is at `admin`, as text.
pub async fn metrics_text(admin: SocketAddr) -> Result<String> {
    let (status, body) = plumbing::http::request(admin, "GET", "/metrics").await?;
    if status != 200 {
        bail!("/metrics answered {status}: {body}");
    }
    Ok(body)
}
