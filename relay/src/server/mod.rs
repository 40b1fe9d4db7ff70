//! Serving: the accept loops (they only accept, take a connection permit and spawn; each
//! connection runs in its own task and span), the relay's listeners bound together
//! ([`Listeners`]), and [`Relay::serve_all`], which serves every one of them (recipients, a
//! pair's tunnel, the admin API) until shutdown. The binary and the harness both call it.

mod lifecycle;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{Instrument, info, info_span, warn};

use crate::config::Config;
use crate::connection;
use crate::connection::transport::Transport;
use crate::error::RelayError;
use crate::socket;
use crate::state::Relay;

/// Pause after a failed accept (for example EMFILE) so the loop does not spin.
const ACCEPT_ERROR_BACKOFF: Duration = Duration::from_millis(100);
/// How often sessions that were never resumed are failed and old ones forgotten.
const EXPIRY_INTERVAL: Duration = Duration::from_secs(1);
/// How often the configured TLS files are checked for a change (then TLS is reloaded).
pub const TLS_POLL_INTERVAL: Duration = Duration::from_secs(2);

/// Binds one of the relay's listening sockets.
pub fn bind(addr: SocketAddr) -> Result<TcpListener, RelayError> {
    socket::listen(addr).map_err(|source| RelayError::Listen {
        addr: addr.to_string(),
        source,
    })
}

/// The relay's listening sockets: recipients (`listen`), a pair's tunnel (`peer_listen`), the
/// admin API (`admin`); each only when its setting is given.
#[derive(Debug, Default)]
pub struct Listeners {
    pub recipients: Option<TcpListener>,
    pub tunnel: Option<TcpListener>,
    pub admin: Option<TcpListener>,
}

impl Listeners {
    /// Binds what `config` asks for.
    pub fn bind(config: &Config) -> Result<Self, RelayError> {
        Ok(Listeners {
            recipients: config.listen.map(bind).transpose()?,
            tunnel: config.peer_listen.map(bind).transpose()?,
            admin: config.admin.map(bind).transpose()?,
        })
    }

    /// The address recipients connect to.
    pub fn recipients_addr(&self) -> Option<SocketAddr> {
        self.recipients.as_ref().and_then(|l| l.local_addr().ok())
    }

    /// The address of a pair's tunnel listener.
    pub fn tunnel_addr(&self) -> Option<SocketAddr> {
        self.tunnel.as_ref().and_then(|l| l.local_addr().ok())
    }

    /// The admin listener's address.
    pub fn admin_addr(&self) -> Option<SocketAddr> {
        self.admin.as_ref().and_then(|l| l.local_addr().ok())
    }
}

/// Accepts on `listener` until `shutdown` completes, each connection under one of `max`
/// permits, in a task of `tasks` that `spawn` makes for it.
async fn accept_loop<F, Fut>(
    listener: TcpListener,
    max: usize,
    shutdown: impl Future<Output = ()>,
    tasks: &TaskTracker,
    what: &'static str,
    mut spawn: F,
) where
    F: FnMut(TcpStream, SocketAddr) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    let permits = Arc::new(Semaphore::new(max));
    tokio::pin!(shutdown);
    loop {
        let permit: OwnedSemaphorePermit = tokio::select! {
            permit = permits.clone().acquire_owned() => permit.expect("the semaphore is never closed"),
            _ = &mut shutdown => break,
        };
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    warn!(error = %e, "{what} accept failed");
                    tokio::time::sleep(ACCEPT_ERROR_BACKOFF).await;
                    continue;
                }
            },
            _ = &mut shutdown => break,
        };
        let connection = spawn(stream, peer);
        tasks.spawn(async move {
            connection.await;
            drop(permit);
        });
    }
}

/// Waits for the connections of `tasks` to end, at most `grace`; then closes the rest
/// (`close_now`) and waits for them.
async fn drain(tasks: &TaskTracker, grace: Duration, close_now: &CancellationToken) {
    tasks.close();
    if tokio::time::timeout(grace, tasks.wait()).await.is_err() {
        info!(
            in_flight = tasks.len(),
            "grace period over: closing connections"
        );
        close_now.cancel();
        tasks.wait().await;
    }
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
        let tasks = TaskTracker::new();
        let close_now = CancellationToken::new();
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
        let max = self.config().max_connections;
        accept_loop(
            listener,
            max,
            shutdown,
            &tasks,
            "recipient",
            |stream, peer| {
                let id = self.next_conn_id();
                let span = info_span!(
                    "conn",
                    id,
                    %peer,
                    role = tracing::field::Empty,
                    clone_session = tracing::field::Empty
                );
                let (relay, close_now) = (self.clone(), close_now.clone());
                async move { connection::serve(stream.into(), peer, id, relay, close_now).await }
                    .instrument(span)
            },
        )
        .await;
        info!(in_flight = tasks.len(), "shutting down: no new connections");
        drain(&tasks, self.config().shutdown_grace, &close_now).await;
        expiry.abort();
        tls_poll.abort();
        Ok(())
    }

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
        let tasks = TaskTracker::new();
        let close_now = CancellationToken::new();
        let max = self.config().max_connections;
        accept_loop(listener, max, shutdown, &tasks, "tunnel", |tcp, from| {
            let (relay, tunnel, close_now) = (self.clone(), tunnel.clone(), close_now.clone());
            async move {
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
            }
        })
        .await;
        drain(&tasks, self.config().shutdown_grace, &close_now).await;
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
