//! A relayed connection's side of the registry: it decodes the bytes that pass (as the copy
//! path's [`Observer`]), records what it sees, and keeps the data flow the stall watch reads.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock, PoisonError};

use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::flow::DataFlow;
use super::{CloseReason, ConnId, Registry, SessionSettings};
use crate::io::Observer;
use crate::limit::{ConnLimits, Pair, RelayLimits};
use crate::protocol::clone::{CommandKind, Stage};
use crate::protocol::decoder::{Decoder, Event};
use crate::protocol::{Direction, Phase, Violation};

/// A relayed connection's link to the registry: it decodes what passes and records it.
#[derive(Debug)]
pub struct ConnHandle {
    registry: Arc<Registry>,
    id: ConnId,
    decoder: Mutex<Decoder>,
    past_login: AtomicBool,
    greeted: AtomicBool,
    abort: CancellationToken,
    flow: Mutex<DataFlow>,
    limits: OnceLock<(Arc<RelayLimits>, ConnLimits)>,
    session_limits: OnceLock<Arc<Pair>>,
}

impl ConnHandle {
    pub(super) fn new(
        registry: Arc<Registry>,
        id: ConnId,
        settings: &SessionSettings,
        abort: CancellationToken,
    ) -> Self {
        let decoder = Decoder::new(settings.limits);
        let decoder = if settings.decode_inside_tls {
            decoder.inside_tls()
        } else {
            decoder
        };
        ConnHandle {
            registry,
            id,
            decoder: Mutex::new(decoder),
            past_login: AtomicBool::new(false),
            greeted: AtomicBool::new(false),
            abort,
            flow: Mutex::new(DataFlow::default()),
            limits: OnceLock::new(),
            session_limits: OnceLock::new(),
        }
    }

    pub fn id(&self) -> ConnId {
        self.id
    }

    fn track_flow(&self, dir: Direction, len: usize, events: &[Event]) {
        let now = Instant::now();
        let mut flow = self.flow.lock().unwrap_or_else(PoisonError::into_inner);
        if dir == Direction::Downstream && len > 0 {
            flow.on_donor_bytes(now);
        }
        for e in events {
            match e {
                Event::CloneCommand(cmd) if cmd.kind == CommandKind::Execute => {
                    flow.on_execute(now);
                }
                Event::CloneComplete | Event::CloneError { .. } => flow.on_done(),
                // Not followed, the connection is carried as a plain TCP proxy would carry it:
                // no data is reckoned owed, so no stall is watched for and its failure resets
                // nothing else.
                Event::StoppedFollowing { .. } => flow.on_done(),
                _ => {}
            }
        }
    }

    /// The connection's data flow, for the stall watch.
    pub fn flow(&self) -> &Mutex<DataFlow> {
        &self.flow
    }

    /// Whether the donor owes this connection data (it is a main or worker in a transfer).
    pub fn owed_data(&self) -> bool {
        self.flow
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .owed()
    }

    /// The connection's bandwidth chains under `limits`: the relay's buckets now, its
    /// session's too once the wire names its clone.
    pub fn limits(&self, limits: &Arc<RelayLimits>) -> ConnLimits {
        self.limits
            .get_or_init(|| (limits.clone(), limits.connection()))
            .1
            .clone()
    }

    /// Draws from the session's buckets too, once the connection's clone is known.
    fn join_session_limits(&self) {
        if self.session_limits.get().is_some() {
            return;
        }
        let Some((limits, chains)) = self.limits.get() else {
            return;
        };
        if let Some(session) = self.registry.session_of(self.id) {
            let pair = limits.session(session);
            chains.join(&pair);
            let _ = self.session_limits.set(pair);
        }
    }

    /// How long ago clone data last arrived on any connection of this connection's session.
    pub fn session_data_age(&self) -> Option<std::time::Duration> {
        self.registry.session_data_age(self.id)
    }

    /// Records what the relay found about this connection's silence.
    pub fn record_detection(
        &self,
        kind: super::DetectionKind,
        silence: std::time::Duration,
        probe: Option<std::time::Duration>,
    ) {
        self.registry
            .record_detection(self.id, kind, silence, probe);
    }

    /// Records whether each leg runs TLS.
    pub fn set_tls(&self, downstream: bool, upstream: bool) {
        self.registry.set_tls(self.id, downstream, upstream);
    }

    /// Picks and reserves the next donor among `candidates` not yet `tried` (the first could
    /// not be reached), free ones first.
    pub fn reserve_next(&self, candidates: &[String], tried: &[String]) -> Option<String> {
        self.registry.reserve_next(self.id, candidates, tried)
    }

    /// Whether the donor's greeting has passed (or the donor refused the connection).
    pub fn greeted(&self) -> bool {
        self.greeted.load(Ordering::Relaxed)
    }

    /// Whether the connection got past login (auth done, or TLS the relay cannot look into).
    pub fn past_login(&self) -> bool {
        self.past_login.load(Ordering::Relaxed)
    }

    /// Completes when the connection is to be reset (see [`Registry::abort_session`]).
    pub async fn aborted(&self) {
        self.abort.cancelled().await
    }

    /// Records the end of the connection, with the longest gaps the donor left on it.
    pub fn close(&self, reason: &CloseReason) {
        let (file_copy, other) = self
            .flow
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .longest_gaps();
        self.registry.record_gaps(self.id, file_copy, other);
        self.registry.close(self.id, reason);
    }
}

impl Observer for ConnHandle {
    /// Decodes bytes travelling in `dir` and records what they say. An error is a protocol
    /// breach: the bytes must not be forwarded and the connection must close.
    fn observe(&self, dir: Direction, bytes: &[u8]) -> Result<(), Violation> {
        let mut events = Vec::new();
        let (result, phase, past_login) = {
            let mut decoder = self.decoder.lock().unwrap_or_else(PoisonError::into_inner);
            let result = decoder.feed(dir, bytes, &mut |e| events.push(e));
            (result, decoder.phase(), decoder.past_login())
        };
        if past_login {
            self.past_login.store(true, Ordering::Relaxed);
        }
        if phase != Phase::Greeting && !self.greeted.swap(true, Ordering::Relaxed) {
            self.registry.greeted(self.id);
        }
        self.track_flow(dir, bytes.len(), &events);
        if !events.is_empty() {
            self.registry.apply(self.id, events, phase);
            self.join_session_limits();
            let streaming = self.registry.stage_of(self.id) == Some(Stage::FileCopy);
            self.flow
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .set_streaming(streaming);
        }
        result
    }
}

impl Drop for ConnHandle {
    /// A connection task that ended without closing its record (a panic) still leaves the
    /// registry; after a normal close this finds nothing to do.
    fn drop(&mut self) {
        self.registry.close(
            self.id,
            &CloseReason {
                kind: "dropped",
                detail: "connection task ended without closing".into(),
                rejected: false,
            },
        );
    }
}
