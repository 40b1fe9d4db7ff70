//! The relay's shared state: its settings, the clone sessions it follows, its counters, the
//! outcome of its dials of donors. Cheap to clone; the accept loop, the connections and the admin API all hold the same state.

use std::sync::Arc;

use crate::config::Config;
use crate::error::RelayError;
use crate::health::Health;
use crate::metrics::Metrics;
use crate::protocol::Limits;
use crate::session::affinity::AffinityStore;
use crate::session::{Registry, SessionSettings};
use crate::tls::Tls;

/// A relay's shared state.
#[derive(Debug, Clone)]
pub struct Relay {
    config: Arc<Config>,
    registry: Arc<Registry>,
    health: Arc<Health>,
    tls: Arc<Tls>,
}

impl Relay {
    /// A relay with validated settings. With a state directory, the affinity table of an
    /// earlier run is read from it.
    pub fn new(config: Config) -> Result<Self, RelayError> {
        config.validate()?;
        let tls = Tls::load(&config)?;
        let settings = SessionSettings {
            decode_inside_tls: config.client_tls_mode != crate::config::ClientTlsMode::Passthrough,
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
        let registry = Registry::with_affinity(settings, Arc::new(Metrics::default()), affinity);
        Ok(Relay {
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

    /// TLS for both legs.
    pub fn tls(&self) -> &Tls {
        &self.tls
    }

    /// The outcome of the latest dials of each donor, for `/readyz`.
    pub fn health(&self) -> &Health {
        &self.health
    }
}
