//! The standalone fault proxy: it accepts connections, dials the upstream for each, and runs
//! every connection through the live fault table. The table given at start (a schedule) is in
//! place before the first connection is accepted, so none escapes it.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tracing::{info, warn};

use crate::fault::{ConnInfo, Decision, DecisionLog, SharedBuckets};
use crate::link::{self, FaultTable, LinkContext, LinkEnd};
use crate::spec::{FaultSpec, SpecError, validate_all};

const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// Errors of the proxy's API.
#[derive(Debug, thiserror::Error)]
pub enum ChaosError {
    #[error("invalid fault: {0}")]
    Spec(#[from] SpecError),
    #[error("no fault with id {0}")]
    NoSuchFault(u64),
    #[error("cannot listen on {addr}: {source}")]
    Listen {
        addr: SocketAddr,
        source: std::io::Error,
    },
}

/// The control side of a proxy: change faults while connections run. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Control {
    shared: Arc<Shared>,
}

#[derive(Debug)]
struct Shared {
    seed: u64,
    upstream: String,
    table: watch::Sender<FaultTable>,
    next_id: AtomicU64,
    accepted: AtomicU64,
    resets: AtomicU64,
    closes: AtomicU64,
    buckets: Arc<SharedBuckets>,
    log: Arc<DecisionLog>,
    started: Instant,
}

impl Control {
    /// The run's seed: print it with any failure, to replay the same decisions.
    pub fn seed(&self) -> u64 {
        self.shared.seed
    }

    /// Adds a fault; live connections pick it up at once. Returns its id.
    pub fn add(&self, spec: FaultSpec) -> Result<u64, ChaosError> {
        spec.validate()?;
        let id = self.shared.next_id.fetch_add(1, Ordering::Relaxed);
        self.shared.table.send_modify(|t| {
            let mut v = (**t).clone();
            v.push((id, spec));
            *t = Arc::new(v);
        });
        Ok(id)
    }

    /// Replaces a fault's spec (its state on live connections starts afresh).
    pub fn update(&self, id: u64, spec: FaultSpec) -> Result<(), ChaosError> {
        spec.validate()?;
        let mut found = false;
        self.shared.table.send_modify(|t| {
            let mut v = (**t).clone();
            if let Some(entry) = v.iter_mut().find(|(i, _)| *i == id) {
                entry.1 = spec;
                found = true;
            }
            *t = Arc::new(v);
        });
        found.then_some(()).ok_or(ChaosError::NoSuchFault(id))
    }

    /// Removes a fault.
    pub fn remove(&self, id: u64) -> Result<(), ChaosError> {
        let mut found = false;
        self.shared.table.send_modify(|t| {
            let mut v = (**t).clone();
            let before = v.len();
            v.retain(|(i, _)| *i != id);
            found = v.len() != before;
            *t = Arc::new(v);
        });
        found.then_some(()).ok_or(ChaosError::NoSuchFault(id))
    }

    /// Removes every fault.
    pub fn reset(&self) {
        self.shared.table.send_replace(Arc::new(Vec::new()));
    }

    pub fn list(&self) -> Vec<(u64, FaultSpec)> {
        (**self.shared.table.borrow()).clone()
    }

    /// Every fault decision so far (bounded).
    pub fn decisions(&self) -> Vec<Decision> {
        self.shared.log.entries()
    }

    /// Milliseconds since the proxy started: the clock of `trigger.at_ms`.
    pub fn now_ms(&self) -> u64 {
        self.shared.started.elapsed().as_millis() as u64
    }

    /// Connections accepted, and how many a fault reset or closed.
    pub fn counts(&self) -> (u64, u64, u64) {
        (
            self.shared.accepted.load(Ordering::Relaxed),
            self.shared.resets.load(Ordering::Relaxed),
            self.shared.closes.load(Ordering::Relaxed),
        )
    }
}

/// A running fault proxy; dropping it stops accepting (live connections run on).
#[derive(Debug)]
pub struct ChaosProxy {
    addr: SocketAddr,
    control: Control,
    task: JoinHandle<()>,
}

impl ChaosProxy {
    /// Listens on `listen`, relaying to `upstream` (`HOST:PORT`) through `faults`, with
    /// decisions drawn from `seed`.
    pub async fn start(
        listen: SocketAddr,
        upstream: impl Into<String>,
        seed: u64,
        faults: Vec<FaultSpec>,
    ) -> Result<Self, ChaosError> {
        validate_all(&faults)?;
        let listener = TcpListener::bind(listen)
            .await
            .map_err(|source| ChaosError::Listen {
                addr: listen,
                source,
            })?;
        let addr = listener.local_addr().map_err(|source| ChaosError::Listen {
            addr: listen,
            source,
        })?;
        let count = faults.len() as u64;
        let table: FaultTable = Arc::new((0..count).zip(faults).collect());
        let shared = Arc::new(Shared {
            seed,
            upstream: upstream.into(),
            table: watch::channel(table).0,
            next_id: AtomicU64::new(count),
            accepted: AtomicU64::new(0),
            resets: AtomicU64::new(0),
            closes: AtomicU64::new(0),
            buckets: Arc::new(SharedBuckets::default()),
            log: Arc::new(DecisionLog::default()),
            started: Instant::now(),
        });
        info!(%addr, upstream = %shared.upstream, seed, faults = count, "chaos proxy listening");
        let task = tokio::spawn(accept_loop(listener, shared.clone()));
        Ok(ChaosProxy {
            addr,
            control: Control { shared },
            task,
        })
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn control(&self) -> &Control {
        &self.control
    }

    /// Stops accepting and waits until the listening socket is closed (so its address can be
    /// bound again at once). Live connections run on.
    pub async fn stop(mut self) {
        self.task.abort();
        let _ = (&mut self.task).await;
    }
}

impl Drop for ChaosProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn accept_loop(listener: TcpListener, shared: Arc<Shared>) {
    loop {
        let (client, peer) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(e) => {
                warn!(error = %e, "chaos accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let index = shared.accepted.fetch_add(1, Ordering::Relaxed) + 1;
        let shared = shared.clone();
        tokio::spawn(async move {
            let server = match tokio::time::timeout(
                CONNECT_TIMEOUT,
                TcpStream::connect(shared.upstream.as_str()),
            )
            .await
            {
                Ok(Ok(server)) => server,
                Ok(Err(e)) => {
                    warn!(connection = index, %peer, error = %e, "chaos upstream unreachable");
                    return;
                }
                Err(_) => {
                    warn!(connection = index, %peer, "chaos upstream timed out");
                    return;
                }
            };
            let _ = client.set_nodelay(true);
            let _ = server.set_nodelay(true);
            let ctx = LinkContext {
                seed: shared.seed,
                conn: ConnInfo { index, role: None },
                proxy_start: shared.started,
                conn_start: Instant::now(),
                buckets: shared.buckets.clone(),
                log: shared.log.clone(),
                faults: shared.table.subscribe(),
            };
            let handles = link::control_handle(client)
                .and_then(|(c, cc)| link::control_handle(server).map(|(s, sc)| (c, cc, s, sc)));
            let (client, client_ctl, server, server_ctl) = match handles {
                Ok(h) => h,
                Err(e) => {
                    warn!(connection = index, error = %e, "chaos socket setup failed");
                    return;
                }
            };
            let on_cut = |end: &LinkEnd| {
                link::apply_end(&client_ctl, end);
                link::apply_end(&server_ctl, end);
            };
            match link::run(client, server, ctx, on_cut).await {
                LinkEnd::Cut(crate::fault::Cut::Reset) => {
                    shared.resets.fetch_add(1, Ordering::Relaxed);
                    info!(
                        connection = index,
                        seed = shared.seed,
                        "chaos reset a connection"
                    );
                }
                LinkEnd::Cut(crate::fault::Cut::Close) => {
                    shared.closes.fetch_add(1, Ordering::Relaxed);
                    info!(
                        connection = index,
                        seed = shared.seed,
                        "chaos closed a connection"
                    );
                }
                LinkEnd::Finished | LinkEnd::Error(_) => {}
            }
        });
    }
}
