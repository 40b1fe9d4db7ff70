//! A relayed connection's side of the registry: it decodes the bytes that pass, records what it
//! sees, and tracks whether the donor owes it data (for the stall detector).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;

use super::{CloseReason, ConnId, Registry};
use crate::config::StallSettings;
use crate::protocol::clone::CommandKind;
use crate::protocol::decoder::{Decoder, Direction, Event, Limits, Phase, Violation};

/// A relayed connection's link to the registry: it decodes what passes and records it.
#[derive(Debug)]
pub struct ConnHandle {
    registry: Arc<Registry>,
    id: ConnId,
    decoder: Mutex<Decoder>,
    violation: Mutex<Option<Violation>>,
    past_login: AtomicBool,
    greeted: AtomicBool,
    abort: CancellationToken,
    flow: Mutex<DataFlow>,
}

/// Whether the donor owes this connection data, and how the data has been arriving.
#[derive(Debug, Default)]
struct DataFlow {
    /// Between the connection's EXECUTE and its COMPLETE or ERROR.
    owed: bool,
    last_byte: Option<Instant>,
    longest_gap: Duration,
}

impl ConnHandle {
    pub(super) fn new(
        registry: Arc<Registry>,
        id: ConnId,
        limits: Limits,
        abort: CancellationToken,
    ) -> Self {
        ConnHandle {
            registry,
            id,
            decoder: Mutex::new(Decoder::new(limits)),
            violation: Mutex::new(None),
            past_login: AtomicBool::new(false),
            greeted: AtomicBool::new(false),
            abort,
            flow: Mutex::new(DataFlow::default()),
        }
    }

    pub fn id(&self) -> ConnId {
        self.id
    }

    /// Decodes bytes travelling in `dir`. An error is a protocol breach: the bytes must not be
    /// forwarded and the connection must close.
    pub fn observe(&self, dir: Direction, bytes: &[u8]) -> Result<(), Violation> {
        let mut events = Vec::new();
        let (result, phase, past_login) = {
            let mut decoder = self.decoder.lock().expect("decoder lock");
            let result = decoder.feed(dir, bytes, &mut |e| events.push(e));
            (result, decoder.phase(), decoder.past_login())
        };
        if past_login {
            self.past_login.store(true, Ordering::Relaxed);
        }
        if phase != Phase::Greeting {
            self.greeted.store(true, Ordering::Relaxed);
        }
        self.track_flow(dir, bytes.len(), &events);
        if !events.is_empty() {
            self.registry.apply(self.id, events, phase);
        }
        if let Err(v) = &result {
            *self.violation.lock().expect("violation lock") = Some(v.clone());
        }
        result
    }

    fn track_flow(&self, dir: Direction, len: usize, events: &[Event]) {
        let now = Instant::now();
        let mut flow = self
            .flow
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if dir == Direction::Downstream && len > 0 {
            if flow.owed
                && let Some(last) = flow.last_byte
            {
                flow.longest_gap = flow.longest_gap.max(now.duration_since(last));
            }
            flow.last_byte = Some(now);
        }
        for e in events {
            match e {
                Event::CloneCommand(cmd) if cmd.kind == CommandKind::Execute => {
                    flow.owed = true;
                    flow.last_byte = Some(now);
                }
                Event::CloneComplete | Event::CloneError { .. } => flow.owed = false,
                _ => {}
            }
        }
    }

    /// Counts the present as progress: the recipient, not the donor, is holding the data up.
    pub fn excuse_silence(&self) {
        let mut flow = self
            .flow
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if flow.owed {
            flow.last_byte = Some(Instant::now());
        }
    }

    /// Whether the donor owes this connection data (it is a main or worker in a transfer).
    pub fn owed_data(&self) -> bool {
        self.flow
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .owed
    }

    /// How long the donor has been silent on a connection it owes data, if that is longer than
    /// the stall threshold: `factor` times the longest gap seen so far, within `[min, max]`.
    pub fn stalled(&self, settings: &StallSettings) -> Option<Duration> {
        let flow = self
            .flow
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let silence = flow.last_byte?.elapsed();
        let threshold = (flow.longest_gap * settings.factor).clamp(settings.min, settings.max);
        (flow.owed && silence > threshold).then_some(silence)
    }

    /// Records the donor this connection was dialed to.
    pub fn set_upstream(&self, upstream: &str) {
        if let Some(c) = self.registry.lock().conns.get_mut(&self.id) {
            c.upstream = upstream.to_string();
        }
    }

    /// Whether the donor's greeting has passed (or the donor refused the connection).
    pub fn greeted(&self) -> bool {
        self.greeted.load(Ordering::Relaxed)
    }

    /// Whether the connection got past login (auth done, or TLS the relay cannot look into).
    pub fn past_login(&self) -> bool {
        self.past_login.load(Ordering::Relaxed)
    }

    /// The protocol breach that stopped this connection, if any.
    pub fn violation(&self) -> Option<Violation> {
        self.violation.lock().expect("violation lock").clone()
    }

    /// Completes when the connection is to be reset (see [`Registry::abort_session`]).
    pub async fn aborted(&self) {
        self.abort.cancelled().await
    }

    /// Records the end of the connection.
    pub fn close(&self, reason: &CloseReason) {
        self.registry.close(self.id, reason);
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::copy::Legs;
    use crate::metrics::Metrics;
    use crate::session::SessionSettings;

    fn handle() -> ConnHandle {
        let registry = Arc::new(Registry::new(
            SessionSettings::default(),
            Arc::new(Metrics::default()),
        ));
        registry.open(
            1,
            "127.0.0.1:40000".parse().unwrap(),
            "donor:3306",
            Legs::default(),
        )
    }

    fn silent_for(h: &ConnHandle, owed: bool, silence: Duration, longest_gap: Duration) {
        let mut flow = h.flow.lock().unwrap();
        flow.owed = owed;
        flow.last_byte = Some(Instant::now() - silence);
        flow.longest_gap = longest_gap;
    }

    #[test]
    fn silence_counts_only_while_data_is_owed_and_scales_with_the_gaps() {
        let h = handle();
        let ms = Duration::from_millis;
        let settings = StallSettings {
            enabled: true,
            min: ms(50),
            max: ms(1000),
            factor: 4,
        };
        // Owed nothing (aux, or outside a transfer): never a stall.
        silent_for(&h, false, ms(500), ms(0));
        assert!(h.stalled(&settings).is_none());
        // Owed data and silent past the minimum: a stall.
        silent_for(&h, true, ms(100), ms(0));
        assert!(h.stalled(&settings).is_some());
        // Gaps of 100 ms seen before: the threshold is 400 ms.
        silent_for(&h, true, ms(300), ms(100));
        assert!(h.stalled(&settings).is_none());
        silent_for(&h, true, ms(450), ms(100));
        assert!(h.stalled(&settings).is_some());
        // Never above the maximum, however long the gaps were.
        silent_for(&h, true, ms(1100), ms(900));
        assert!(h.stalled(&settings).is_some());
        // A recipient holding data up excuses the donor's silence.
        h.excuse_silence();
        assert!(h.stalled(&settings).is_none());
    }
}
