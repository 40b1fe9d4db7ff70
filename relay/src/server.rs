//! The accept loop: it only accepts, takes a connection permit and spawns; each connection runs
//! in its own task and span. Also binding the listener, and [`run`].

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{Instrument, info, info_span, warn};

use crate::config::Config;
use crate::connection;
use crate::error::RelayError;
use crate::socket;
use crate::state::Relay;
use crate::transport::Transport;

/// Pause after a failed accept (for example EMFILE) so the loop does not spin.
const ACCEPT_ERROR_BACKOFF: Duration = Duration::from_millis(100);
/// How often sessions that were never resumed are failed and old ones forgotten.
const EXPIRY_INTERVAL: Duration = Duration::from_secs(1);
/// How often the configured TLS files are checked for a change (then TLS is reloaded).
pub const TLS_POLL_INTERVAL: Duration = Duration::from_secs(2);

/// Binds the relay's listening socket.
pub fn bind(addr: SocketAddr) -> Result<TcpListener, RelayError> {
    socket::listen(addr).map_err(|source| RelayError::Listen {
        addr: addr.to_string(),
        source,
    })
}

impl Relay {
    /// Serves `listener` until `shutdown` completes, then stops accepting and gives the
    /// connections in flight the configured grace period before closing them. Meanwhile it
    /// reloads TLS when a configured TLS file changes (checked every [`TLS_POLL_INTERVAL`]).
    pub async fn serve(
        &self,
        listener: TcpListener,
        shutdown: impl Future<Output = ()>,
    ) -> Result<(), RelayError> {
        self.tls().log_start();
        if self.tls().policy().passthrough() {
            warn!(
                "client TLS passthrough: clones over TLS pass undecoded, so their sessions, progress, stall detection and resume accounting are off"
            );
        }
        let permits = Arc::new(Semaphore::new(self.config().max_connections));
        let tasks = TaskTracker::new();
        let close_now = CancellationToken::new();
        tokio::pin!(shutdown);
        let expiry = tokio::spawn({
            let registry = self.registry().clone();
            async move {
                let mut tick = tokio::time::interval(EXPIRY_INTERVAL);
                loop {
                    tick.tick().await;
                    // It may write the affinity file: off the async workers.
                    let registry = registry.clone();
                    let _ = tokio::task::spawn_blocking(move || registry.expire_now()).await;
                }
            }
        });
        let tls_poll = tokio::spawn({
            let relay = self.clone();
            async move {
                let mut tick = tokio::time::interval(TLS_POLL_INTERVAL);
                tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                loop {
                    tick.tick().await;
                    relay.reload_tls_if_changed();
                }
            }
        });

        loop {
            let permit = tokio::select! {
                permit = permits.clone().acquire_owned() => permit.expect("the semaphore is never closed"),
                _ = &mut shutdown => break,
            };
            let (stream, peer) = tokio::select! {
                accepted = listener.accept() => match accepted {
                    Ok(accepted) => accepted,
                    Err(e) => {
                        warn!(error = %e, "accept failed");
                        tokio::time::sleep(ACCEPT_ERROR_BACKOFF).await;
                        continue;
                    }
                },
                _ = &mut shutdown => break,
            };
            let id = self.next_conn_id();
            let span = info_span!(
                "conn",
                id,
                %peer,
                role = tracing::field::Empty,
                clone_session = tracing::field::Empty
            );
            let (relay, close_now) = (self.clone(), close_now.clone());
            tasks.spawn(
                async move {
                    connection::serve(stream.into(), peer, id, relay, close_now).await;
                    drop(permit);
                }
                .instrument(span),
            );
        }

        drop(listener);
        tasks.close();
        info!(in_flight = tasks.len(), "shutting down: no new connections");
        if tokio::time::timeout(self.config().shutdown_grace, tasks.wait())
            .await
            .is_err()
        {
            info!(
                in_flight = tasks.len(),
                "grace period over: closing connections"
            );
            close_now.cancel();
            tasks.wait().await;
        }
        expiry.abort();
        tls_poll.abort();
        Ok(())
    }
}

impl Relay {
    /// The donor side of a relay pair: takes tunnel connections on `listener` until `shutdown`
    /// completes; each new stream runs through the pipeline like a recipient's connection, from
    /// the recipient's address its hello names. Resumes go to their streams.
    pub async fn serve_tunnel(
        &self,
        listener: TcpListener,
        shutdown: impl Future<Output = ()>,
    ) -> Result<(), RelayError> {
        let Some(tunnel) = self.tunnel().cloned() else {
            return Err(RelayError::Config {
                field: "peer_listen",
                reason: "this relay is not a pair's donor side".into(),
            });
        };
        let permits = Arc::new(Semaphore::new(self.config().max_connections));
        let tasks = TaskTracker::new();
        let close_now = CancellationToken::new();
        tokio::pin!(shutdown);
        loop {
            let permit = tokio::select! {
                permit = permits.clone().acquire_owned() => permit.expect("the semaphore is never closed"),
                _ = &mut shutdown => break,
            };
            let (tcp, from) = tokio::select! {
                accepted = listener.accept() => match accepted {
                    Ok(accepted) => accepted,
                    Err(e) => {
                        warn!(error = %e, "tunnel accept failed");
                        tokio::time::sleep(ACCEPT_ERROR_BACKOFF).await;
                        continue;
                    }
                },
                _ = &mut shutdown => break,
            };
            let (relay, tunnel, close_now) = (self.clone(), tunnel.clone(), close_now.clone());
            tasks.spawn(async move {
                let (end, peer) = match tunnel.accept(relay.config(), tcp, from).await {
                    Ok(Some(opened)) => opened,
                    Ok(None) => return,
                    Err(e) => {
                        warn!(%from, error = %e, "tunnel connection refused");
                        return;
                    }
                };
                let id = relay.next_conn_id();
                let span = info_span!(
                    "conn",
                    id,
                    %peer,
                    tunnel = true,
                    role = tracing::field::Empty,
                    clone_session = tracing::field::Empty
                );
                connection::serve(Transport::Tunnel(end), peer, id, relay, close_now)
                    .instrument(span)
                    .await;
                drop(permit);
            });
        }
        drop(listener);
        tasks.close();
        if tokio::time::timeout(self.config().shutdown_grace, tasks.wait())
            .await
            .is_err()
        {
            close_now.cancel();
            tasks.wait().await;
        }
        Ok(())
    }
}

/// Runs a relay with `config` on `listener` until `shutdown` completes.
pub async fn run(
    listener: TcpListener,
    config: Config,
    shutdown: impl Future<Output = ()>,
) -> Result<(), RelayError> {
    Relay::new(config)?.serve(listener, shutdown).await
}
