//! The relay as a whole: every listener served until shutdown ([`Relay::serve_all`]), the
//! start-up check of the donors, and a reload of what SIGHUP rereads.

use std::future::Future;
use std::path::Path;

use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use super::Listeners;
use crate::config::LimitSettings;
use crate::connection::dial;
use crate::error::RelayError;
use crate::state::Relay;

impl Relay {
    /// Serves every listener in `listeners` until `shutdown` completes: the admin API, a pair's
    /// tunnel (its donor side) and the recipients; then stops accepting, gives the connections
    /// in flight the grace period, and stops the admin API last.
    pub async fn serve_all(
        &self,
        listeners: Listeners,
        shutdown: impl Future<Output = ()>,
    ) -> Result<(), RelayError> {
        let stop_admin = CancellationToken::new();
        match listeners.admin {
            Some(admin) => {
                let resets = if self.config().admin_token.is_some() {
                    "on (bearer token)"
                } else {
                    "off (no CLONE_RELAY_ADMIN_TOKEN)"
                };
                if let Ok(addr) = admin.local_addr() {
                    info!(admin = %addr, resets, "admin listening");
                }
                tokio::spawn(crate::admin::serve(
                    admin,
                    self.clone(),
                    stop_admin.clone().cancelled_owned(),
                ));
            }
            None if self.config().admin_token.is_some() => {
                warn!("an admin token is set but no --admin listener: the token is unused");
            }
            None => {}
        }
        let stop_tunnel = CancellationToken::new();
        let tunnel_task = listeners.tunnel.map(|tunnel| {
            if let Ok(addr) = tunnel.local_addr() {
                info!(peer_listen = %addr, upstreams = ?self.config().upstreams, "donor side of a relay pair: listening for tunnels");
            }
            let (relay, stop) = (self.clone(), stop_tunnel.clone());
            tokio::spawn(async move { relay.serve_tunnel(tunnel, stop.cancelled_owned()).await })
        });
        let served = match listeners.recipients {
            Some(recipients) => {
                if let Ok(listen) = recipients.local_addr() {
                    match &self.config().peer {
                        Some(peer) => info!(%listen, %peer, side = "recipient", "relay listening"),
                        None => {
                            info!(%listen, upstreams = ?self.config().upstreams, "relay listening")
                        }
                    }
                }
                self.serve(recipients, shutdown).await
            }
            None => {
                shutdown.await;
                Ok(())
            }
        };
        stop_tunnel.cancel();
        if let Some(task) = tunnel_task {
            let _ = task.await;
        }
        stop_admin.cancel();
        info!("relay stopped");
        served
    }

    /// Checks every donor's greeting (the outcome also feeds `/readyz`). One donor down among
    /// several is a warning; all down (or the only one) is the error.
    pub async fn probe_donors(&self) -> Result<(), RelayError> {
        let (config, health) = (self.config(), self.health());
        if let [donor] = config.upstreams.as_slice() {
            let greeting = dial::probe(config, health, donor).await?;
            info!(upstream = %donor, server_version = %greeting.server_version, "donor answers");
            return Ok(());
        }
        let mut first_error = None;
        let mut answered = 0;
        for donor in &config.upstreams {
            match dial::probe(config, health, donor).await {
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

    /// What SIGHUP rereads: TLS from the configured files, and the bandwidth caps from the
    /// settings `file` under the caps given as flags (`flag_limits`). A failed reload keeps what
    /// is in use (the relay logs why).
    pub fn reload(&self, file: Option<&Path>, flag_limits: &LimitSettings) {
        let _ = self.reload_tls();
        let Some(file) = file else {
            return;
        };
        let limits = std::fs::read_to_string(file)
            .map_err(|e| e.to_string())
            .and_then(|text| LimitSettings::from_file(&text));
        match limits {
            Ok(limits) => self.set_limits(&flag_limits.or(limits)),
            Err(e) => {
                warn!(file = %file.display(), error = %e, "bandwidth caps not reloaded: the caps in use stay")
            }
        }
    }
}
