//! The tunnel between the two relays of a pair. The recipient-side relay (`--peer`) carries each
//! recipient connection as a resumable [`stream`] over a tunnel connection of its own (mutual
//! TLS unless `tunnel.plain`) to the donor-side relay (`--peer-listen`), which runs it through
//! its pipeline to the donor. When a tunnel connection is lost (reset, error, or silent for
//! `tunnel.timeout`), the recipient side redials with backoff and both sides resume the stream
//! from the offsets the other reports, replaying from their buffers; MySQL's connections stay
//! up. An outage longer than `tunnel.bridge` gives the stream up on both sides: the pipelines
//! then reset their MySQL legs, and the recipient's CLONE resumes by itself.
//!
//! - [`frame`]: the wire format (hello, welcome, data, acknowledgements, end).
//! - [`replay`]: the replay buffers and their memory and spill budget.
//! - [`stream`]: one stream: the pipeline's end, and carrying it over one connection.
//! - [`client`]: the recipient side: opening streams, redialing.
//! - [`server`]: the donor side: taking tunnel connections, new streams and resumes.

pub mod client;
pub mod frame;
pub mod replay;
pub mod server;
pub mod stream;

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, PoisonError};

use ring::rand::{SecureRandom, SystemRandom};
use tokio::sync::mpsc;

pub use stream::StreamEnd;

use crate::config::{Config, TunnelSettings};
use crate::error::RelayError;
use crate::metrics::Metrics;
use crate::tls::TunnelTls;
use frame::{Hello, Instance, Token};
use replay::{Budget, Replay};
use stream::{Connection, Link, LinkEnd, Stream};
use tracing::warn;

/// What the donor side hands a stream it holds.
enum Attach {
    /// A new tunnel connection for the stream, with its hello.
    Resume(Connection, Hello),
    /// The recipient-side relay that opened the stream was restarted: the stream will never be
    /// resumed, so it is given up at once (its donor leg reset) with this reason.
    Abandon(String),
}

/// Where the donor side's streams come from, to tell a restarted recipient-side relay by: the
/// tunnel's client certificate (none on a plain tunnel), the address the tunnel connection came
/// from, and the recipient's address.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct Origin {
    certificate: Vec<u8>,
    relay: IpAddr,
    recipient: IpAddr,
}

/// A stream the donor side holds.
#[derive(Debug)]
struct Held {
    attach: mpsc::Sender<Attach>,
    origin: Origin,
    instance: Instance,
}

/// A relay's side of its tunnels: settings, TLS, the buffer budget, and on the donor side the
/// streams that a reconnect may resume.
#[derive(Debug)]
pub struct Tunnel {
    settings: TunnelSettings,
    /// The donor-side relay (recipient side only).
    peer: Option<String>,
    tls: Option<TunnelTls>,
    budget: Arc<Budget>,
    metrics: Arc<Metrics>,
    /// This relay's run, which the recipient side's hellos carry.
    instance: Instance,
    /// The streams the donor side holds.
    streams: Mutex<HashMap<Token, Held>>,
}

impl Tunnel {
    /// Whether the tunnel is mutual TLS (`false`: `--tunnel-plain`).
    pub fn is_tls(&self) -> bool {
        self.tls.is_some()
    }

    /// The tunnel of a relay that is one side of a pair; `None` for a relay on its own.
    pub fn new(config: &Config, metrics: Arc<Metrics>) -> Result<Option<Self>, RelayError> {
        if config.peer.is_none() && config.peer_listen.is_none() {
            return Ok(None);
        }
        let tls = TunnelTls::load(config)?;
        let dir = config
            .tunnel
            .spill_dir
            .clone()
            .unwrap_or_else(std::env::temp_dir);
        let budget = Budget::new(
            config.tunnel.memory_bytes as u64,
            config.tunnel.spill_bytes as u64,
            dir,
            metrics.clone(),
        );
        Ok(Some(Tunnel {
            settings: config.tunnel.clone(),
            peer: config.peer.clone(),
            tls,
            budget: Arc::new(budget),
            metrics,
            instance: Tunnel::token(),
            streams: Mutex::default(),
        }))
    }

    /// A fresh stream's token, or a run's instance.
    fn token() -> Token {
        let mut token = [0u8; 16];
        SystemRandom::new()
            .fill(&mut token)
            .expect("the system's random source works");
        token
    }

    /// An empty replay buffer for a stream on this side.
    fn replay(&self) -> Replay {
        Replay::new(self.budget.clone())
    }

    fn streams(&self) -> std::sync::MutexGuard<'_, HashMap<Token, Held>> {
        self.streams.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// What a stream does once a tunnel connection ended: `Some(reason)` when the connection
    /// was lost and the stream goes on over the next; `None` when the stream is over (done, or
    /// broken and given up).
    fn link_ended(&self, stream: &Stream, end: LinkEnd) -> Option<String> {
        match end {
            LinkEnd::Done => None,
            LinkEnd::Broken(reason) => {
                warn!(%reason, "tunnel stream broken; giving it up");
                stream.fail(format!("clone-relay: the tunnel stream broke: {reason}"));
                None
            }
            LinkEnd::Lost(reason) => {
                self.metrics
                    .tunnel_link_losses
                    .fetch_add(1, Ordering::Relaxed);
                Some(reason)
            }
        }
    }

    /// Counts a stream resumed over a new connection, with the bytes it sends again.
    fn count_resume(&self, replayed: u64) {
        self.metrics
            .tunnel_reconnects
            .fetch_add(1, Ordering::Relaxed);
        self.metrics
            .tunnel_replayed_bytes
            .fetch_add(replayed, Ordering::Relaxed);
    }

    /// Gives a stream up after an outage past the bridge: its pipeline's reads fail with the
    /// reason, and the clone falls back to its own resume.
    fn give_up(&self, stream: &Stream, reason: &str) {
        self.metrics
            .tunnel_fallbacks
            .fetch_add(1, Ordering::Relaxed);
        warn!(%reason, "tunnel stream given up; the clone falls back to its own resume");
        stream.fail(format!("clone-relay: {reason}"));
    }

    fn stream_opened(&self) {
        self.metrics
            .tunnel_streams_opened
            .fetch_add(1, Ordering::Relaxed);
        self.metrics
            .tunnel_streams_active
            .fetch_add(1, Ordering::Relaxed);
    }

    fn stream_ended(&self) {
        self.metrics
            .tunnel_streams_active
            .fetch_sub(1, Ordering::Relaxed);
    }
}
