//! The relay's shared state: its settings, the clone sessions it follows, its counters, the
//! outcome of its dials of donors, its TLS (reloadable). Cheap to clone; the accept loop, the connections and the admin API all hold the same state.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use tracing::{info, warn};

use crate::config::{Config, LimitSettings};
use crate::error::RelayError;
use crate::limit::PendingLogins;
use crate::limit::RelayLimits;
use crate::metrics::Metrics;
use crate::protocol::Limits;
use crate::recovery::health::Health;
use crate::recovery::probe::PathProbes;
use crate::session::affinity::AffinityStore;
use crate::session::{Registry, SessionSettings};
use crate::tls::{Tls, TlsStore};
use crate::tunnel::Tunnel;

/// A relay's shared state.
#[derive(Debug, Clone)]
pub struct Relay {
    config: Arc<Config>,
    registry: Arc<Registry>,
    health: Arc<Health>,
    tls: Arc<TlsStore>,
    limits: Arc<RelayLimits>,
    path_probes: Arc<PathProbes>,
    pending_logins: Arc<PendingLogins>,
    tunnel: Option<Arc<Tunnel>>,
    next_conn_id: Arc<AtomicU64>,
}

impl Relay {
    /// A relay with validated settings. With a state directory, the affinity table of an
    /// earlier run is read from it.
    pub fn new(config: Config) -> Result<Self, RelayError> {
        config.validate()?;
        let tls = Tls::load(&config)?;
        let settings = SessionSettings {
            decode_inside_tls: !crate::tls::Policy::new(&config).passthrough(),
            resume_timeout: config.resume_timeout,
            limits: Limits {
                max_login_packet_bytes: config.max_login_packet_bytes,
                max_packet_bytes: config.max_packet_bytes,
            },
            ..SessionSettings::default()
        };
        let affinity = match &config.state_dir {
            Some(dir) => AffinityStore::load(dir, config.resume_timeout),
            None => AffinityStore::in_memory(),
        };
        let metrics = Arc::new(Metrics::default());
        let tunnel = Tunnel::new(&config, metrics.clone())?.map(Arc::new);
        let registry = Registry::with_affinity(settings, metrics, affinity);
        let tls = TlsStore::new(tls, &config);
        let limits = Arc::new(RelayLimits::new(config.limits.targets()));
        Ok(Relay {
            limits,
            path_probes: Arc::default(),
            pending_logins: Arc::new(PendingLogins::new(config.max_pending_logins_per_address)),
            tunnel,
            next_conn_id: Arc::default(),
            config: Arc::new(config),
            registry: Arc::new(registry),
            health: Arc::new(Health::default()),
            tls: Arc::new(tls),
        })
    }

    pub fn config(&self) -> &Config {
        &self.config
    }

    pub fn registry(&self) -> &Arc<Registry> {
        &self.registry
    }

    pub fn metrics(&self) -> &Arc<Metrics> {
        self.registry.metrics()
    }

    /// TLS for both legs, as it is now: a new connection takes it once and keeps it.
    pub fn tls(&self) -> Arc<Tls> {
        self.tls.current()
    }

    /// Builds TLS anew from the configured files (SIGHUP does this) and uses it for new
    /// connections; live connections keep theirs. On failure the TLS in use stays, and the
    /// reason is logged (warn) and returned.
    pub fn reload_tls(&self) -> Result<(), RelayError> {
        self.record_reload(self.tls.reload(&self.config))
    }

    /// [`Relay::reload_tls`] when a configured TLS file changed since the last look (the serve
    /// loop polls this); whether a reload was tried.
    pub fn reload_tls_if_changed(&self) -> bool {
        match self.tls.reload_if_changed(&self.config) {
            Some(result) => {
                let _ = self.record_reload(result);
                true
            }
            None => false,
        }
    }

    /// Logs and counts a reload's outcome.
    fn record_reload(&self, result: Result<Arc<Tls>, RelayError>) -> Result<(), RelayError> {
        let metrics = self.metrics();
        match result {
            Ok(tls) => {
                metrics.tls_reloads.fetch_add(1, Ordering::Relaxed);
                info!(
                    fingerprint = tls.fingerprint.as_deref().unwrap_or("-"),
                    certificate = tls.certificate_fingerprint.as_deref().unwrap_or("-"),
                    "TLS reloaded: new connections use it, live ones keep theirs"
                );
                Ok(())
            }
            Err(e) => {
                metrics.tls_reload_failures.fetch_add(1, Ordering::Relaxed);
                warn!(error = %e, "TLS reload failed: the TLS in use stays");
                Err(e)
            }
        }
    }

    /// The probes of donors' paths, shared by the connections to each donor.
    pub fn path_probes(&self) -> &PathProbes {
        &self.path_probes
    }

    /// The bandwidth caps and their buckets.
    pub fn limits(&self) -> &Arc<RelayLimits> {
        &self.limits
    }

    /// Applies new bandwidth caps to the relay, its sessions and their live connections.
    pub fn set_limits(&self, settings: &LimitSettings) {
        let targets = settings.targets();
        if targets != self.limits.targets() {
            info!(limits = %settings, "bandwidth caps changed");
            self.limits.set(targets);
        }
    }

    /// The tunnel to the other relay of a pair, when this relay is one side of a pair.
    pub fn tunnel(&self) -> Option<&Arc<Tunnel>> {
        self.tunnel.as_ref()
    }

    /// A new connection's id, unique within the relay (recipients' and tunnel streams').
    pub fn next_conn_id(&self) -> u64 {
        self.next_conn_id.fetch_add(1, Ordering::Relaxed) + 1
    }

    /// The outcome of the latest dials of each donor, for `/readyz`.
    /// Connections not logged in yet, per client address.
    pub fn pending_logins(&self) -> &Arc<PendingLogins> {
        &self.pending_logins
    }

    pub fn health(&self) -> &Health {
        &self.health
    }
}
