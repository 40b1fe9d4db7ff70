//! Stall detection: a main or worker connection whose donor owes it data (between its
//! `COM_EXECUTE` and the COMPLETE or ERROR) and stays silent much longer than the gaps seen on it
//! so far is suspected dead. The floor depends on the stage: in FILE COPY the donor streams
//! without pause, elsewhere it may wait (with keep-alives every few seconds). Aux connections
//! and connections outside a transfer are never judged: they are legitimately quiet. What a
//! suspicion means (this flow lost, or the whole link down) is for the caller to find out.

use std::sync::Mutex;
use std::time::Duration;

use tokio::time::Instant;

use crate::config::StallSettings;
use crate::io::Legs;

/// How often the stall watch looks at a connection.
const CHECK_EVERY: Duration = Duration::from_millis(250);

/// Whether the donor owes a connection data, and how its data has been arriving.
#[derive(Debug, Default)]
pub struct DataFlow {
    owed: bool,
    /// The clone is in FILE COPY: the donor streams without pause.
    streaming: bool,
    last_byte: Option<Instant>,
    longest_gap: Duration,
}

impl DataFlow {
    /// Bytes arrived from the donor.
    pub fn on_donor_bytes(&mut self, now: Instant) {
        if self.owed
            && let Some(last) = self.last_byte
        {
            self.longest_gap = self.longest_gap.max(now.duration_since(last));
        }
        self.last_byte = Some(now);
    }

    /// The recipient sent `COM_EXECUTE`: the donor owes data from now on.
    pub fn on_execute(&mut self, now: Instant) {
        self.owed = true;
        self.last_byte = Some(now);
    }

    /// The clone entered or left FILE COPY. The gaps seen so far belong to the stage before and
    /// are forgotten.
    pub fn set_streaming(&mut self, streaming: bool) {
        if self.streaming != streaming {
            self.streaming = streaming;
            self.longest_gap = Duration::ZERO;
        }
    }

    /// The longest gap between donor bytes seen in the current stage.
    pub fn longest_gap(&self) -> Duration {
        self.longest_gap
    }

    /// The donor answered with COMPLETE or ERROR: it owes nothing more.
    pub fn on_done(&mut self) {
        self.owed = false;
    }

    /// Counts the present as progress: the recipient, not the donor, is holding the data up.
    pub fn excuse(&mut self, now: Instant) {
        if self.owed {
            self.last_byte = Some(now);
        }
    }

    pub fn owed(&self) -> bool {
        self.owed
    }

    /// How long the donor has been silent while owing data, if that is longer than the
    /// threshold: `factor` times the longest gap seen in this stage, within `[floor, max]`, the
    /// floor being `min_streaming` in FILE COPY and `min` elsewhere.
    pub fn stalled(&self, now: Instant, settings: &StallSettings) -> Option<Duration> {
        let silence = now.duration_since(self.last_byte?);
        let floor = match self.streaming {
            true => settings.min_streaming.min(settings.min),
            false => settings.min,
        };
        let threshold = (self.longest_gap * settings.factor).clamp(floor, settings.max);
        (self.owed && silence > threshold).then_some(silence)
    }

    /// How long the donor has been silent on a connection it owes data.
    pub fn silence(&self, now: Instant) -> Option<Duration> {
        let last = self.last_byte?;
        self.owed.then(|| now.duration_since(last))
    }
}

/// Completes, with the length of the silence, when the donor stalls on a connection it owes
/// data. While the relay still holds donor bytes the recipient has not taken, the recipient is
/// the slow side (its disk, its own throttle) and the donor is not judged.
pub async fn watch(settings: &StallSettings, flow: &Mutex<DataFlow>, legs: &Legs) -> Duration {
    if !settings.enabled {
        return std::future::pending().await;
    }
    loop {
        tokio::time::sleep(CHECK_EVERY).await;
        let now = Instant::now();
        let undelivered = legs.upstream.bytes_read() > legs.downstream.bytes_written();
        let mut flow = flow
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if undelivered {
            flow.excuse(now);
        } else if let Some(silence) = flow.stalled(now, settings) {
            return silence;
        }
    }
}

/// Completes when the donor has sent this connection bytes since `since`, or owes it nothing
/// any more.
pub async fn flowing_since(flow: &Mutex<DataFlow>, since: Instant) {
    loop {
        {
            let flow = flow
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            if !flow.owed || flow.last_byte.is_some_and(|t| t > since) {
                return;
            }
        }
        tokio::time::sleep(CHECK_EVERY).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    fn settings() -> StallSettings {
        StallSettings {
            enabled: true,
            min_streaming: 20 * MS,
            min: 50 * MS,
            max: 1000 * MS,
            factor: 4,
        }
    }

    #[tokio::test(start_paused = true)]
    async fn silence_counts_only_while_data_is_owed_and_scales_with_the_gaps() {
        let s = settings();
        let t0 = Instant::now();
        let mut flow = DataFlow::default();
        // Owed nothing (aux, or outside a transfer): never a stall.
        flow.on_donor_bytes(t0);
        assert!(flow.stalled(t0 + 500 * MS, &s).is_none());
        // Owed data and silent past the minimum: a stall.
        flow.on_execute(t0);
        assert!(flow.stalled(t0 + 40 * MS, &s).is_none());
        assert_eq!(flow.stalled(t0 + 60 * MS, &s), Some(60 * MS));
        // A gap of 100 ms seen: the threshold is 400 ms from the last byte.
        flow.on_donor_bytes(t0 + 100 * MS);
        assert!(flow.stalled(t0 + 450 * MS, &s).is_none());
        assert!(flow.stalled(t0 + 550 * MS, &s).is_some());
        // Never above the maximum, however long the gaps were.
        flow.on_donor_bytes(t0 + 1000 * MS);
        assert!(flow.stalled(t0 + 2100 * MS, &s).is_some());
        // A recipient holding data up excuses the donor's silence.
        flow.excuse(t0 + 2100 * MS);
        assert!(flow.stalled(t0 + 2200 * MS, &s).is_none());
        // In FILE COPY the floor is lower, and the gaps of the stage before are forgotten.
        flow.on_donor_bytes(t0 + 3000 * MS);
        flow.set_streaming(true);
        assert!(flow.stalled(t0 + 3015 * MS, &s).is_none());
        assert_eq!(flow.stalled(t0 + 3030 * MS, &s), Some(30 * MS));
        // COMPLETE: nothing owed, nothing judged.
        flow.on_done();
        assert!(flow.stalled(t0 + 9000 * MS, &s).is_none());
    }

    #[tokio::test(start_paused = true)]
    async fn the_watch_fires_after_the_threshold_and_spares_a_slow_recipient() {
        let s = settings();
        let legs = Legs::default();
        let flow = Mutex::new(DataFlow::default());
        flow.lock().unwrap().on_execute(Instant::now());
        let started = Instant::now();
        let silence = watch(&s, &flow, &legs).await;
        assert!(silence > s.min && started.elapsed() <= s.min + CHECK_EVERY * 2);

        // Donor bytes the recipient has not taken yet: the donor is not judged.
        let flow = Mutex::new(DataFlow::default());
        flow.lock().unwrap().on_execute(Instant::now());
        legs.upstream.add_read(1000);
        let judged = tokio::time::timeout(10 * s.max, watch(&s, &flow, &legs)).await;
        assert!(judged.is_err(), "a slow recipient is not a stalled donor");

        // Turned off: never fires.
        let off = StallSettings {
            enabled: false,
            ..s
        };
        let judged = tokio::time::timeout(10 * s.max, watch(&off, &flow, &legs)).await;
        assert!(judged.is_err());
    }
}
