//! Stall detection: a main or worker connection whose donor owes it data (between its
//! `COM_EXECUTE` and the COMPLETE or ERROR) and stays silent much longer than the gaps seen on it
//! so far is suspected dead. The floor depends on the stage: in FILE COPY the donor streams
//! without pause, elsewhere it may wait (with keep-alives every few seconds). Aux connections
//! and connections outside a transfer are never judged: they are legitimately quiet. What a
//! suspicion means (this flow lost, or the whole link down) is for the caller to find out.
//!
//! Two silences are noticed without a suspicion: the donor pausing past the stage's floor but
//! within the pace it has shown (a slow donor), and the donor silent past the threshold while the
//! recipient has not taken what the relay holds for it (a slow recipient).

use std::sync::Mutex;
use std::time::Duration;

use tokio::time::Instant;

use crate::config::StallSettings;
use crate::io::Legs;
use crate::session::{DataFlow, Slowness};

/// How often the stall watch looks at a connection.
const CHECK_EVERY: Duration = Duration::from_millis(250);

/// Completes, with the length of the silence, when the donor stalls on a connection it owes
/// data. While the relay still holds donor bytes the recipient has not taken, the recipient is
/// the slow side (its disk, its own throttle) and the donor is not judged. `noticed` hears of
/// each silence that shows a slow side without a suspicion, once per silence.
pub async fn watch(
    settings: &StallSettings,
    flow: &Mutex<DataFlow>,
    legs: &Legs,
    mut noticed: impl FnMut(Slowness, Duration),
) -> Duration {
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
        let Some(silence) = flow.silence(now) else {
            continue;
        };
        let slowness = if undelivered {
            flow.excuse(now);
            (silence > flow.threshold(settings)).then_some(Slowness::Recipient)
        } else if let Some(silence) = flow.stalled(now, settings) {
            return silence;
        } else {
            let judged = flow.judged_silence(now).unwrap_or_default();
            (judged > flow.floor(settings)).then_some(Slowness::Donor)
        };
        if let Some(slowness) = slowness
            && flow.first_report()
        {
            drop(flow);
            noticed(slowness, silence);
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
            if !flow.owed() || flow.bytes_since(since) {
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
        // There the gaps seen do not raise the threshold above the floor.
        flow.on_donor_bytes(t0 + 3100 * MS);
        assert_eq!(flow.stalled(t0 + 3130 * MS, &s), Some(30 * MS));
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
        let silence = watch(&s, &flow, &legs, |_, _| {}).await;
        assert!(silence > s.min && started.elapsed() <= s.min + CHECK_EVERY * 2);

        // Donor bytes the recipient has not taken yet: the donor is not judged.
        let flow = Mutex::new(DataFlow::default());
        flow.lock().unwrap().on_execute(Instant::now());
        legs.upstream.add_read(1000);
        let judged = tokio::time::timeout(10 * s.max, watch(&s, &flow, &legs, |_, _| {})).await;
        assert!(judged.is_err(), "a slow recipient is not a stalled donor");

        // Turned off: never fires.
        let off = StallSettings {
            enabled: false,
            ..s
        };
        let judged = tokio::time::timeout(10 * s.max, watch(&off, &flow, &legs, |_, _| {})).await;
        assert!(judged.is_err());
    }

    #[tokio::test(start_paused = true)]
    async fn slow_sides_are_noticed_once_per_silence_without_a_verdict() {
        let s = settings();
        let legs = Legs::default();
        let flow = Mutex::new(DataFlow::default());
        flow.lock().unwrap().on_execute(Instant::now());
        // A 200 ms gap learnt: the threshold is 800 ms, the floor 50 ms.
        tokio::time::advance(200 * MS).await;
        flow.lock().unwrap().on_donor_bytes(Instant::now());
        let mut seen = Vec::new();
        let judged =
            tokio::time::timeout(700 * MS, watch(&s, &flow, &legs, |k, d| seen.push((k, d)))).await;
        assert!(
            judged.is_err(),
            "no verdict within the pace the donor has shown"
        );
        assert_eq!(seen.len(), 1, "{seen:?}");
        assert_eq!(seen[0].0, Slowness::Donor);
        assert!(seen[0].1 > s.min, "{seen:?}");
        // The silence goes on past the threshold: the verdict comes.
        let silence = watch(&s, &flow, &legs, |_, _| {}).await;
        assert!(silence > 800 * MS, "{silence:?}");
        assert_eq!(
            flow.lock().unwrap().longest_gaps(),
            (Duration::ZERO, 200 * MS)
        );

        // The relay holds bytes the recipient has not taken: a slow recipient, noticed once
        // however long it lasts, and never a verdict.
        let flow = Mutex::new(DataFlow::default());
        flow.lock().unwrap().on_execute(Instant::now());
        legs.upstream.add_read(1000);
        let mut seen = Vec::new();
        let judged = tokio::time::timeout(
            10 * s.max,
            watch(&s, &flow, &legs, |k, d| seen.push((k, d))),
        )
        .await;
        assert!(judged.is_err());
        assert_eq!(seen.len(), 1, "{seen:?}");
        assert_eq!(seen[0].0, Slowness::Recipient);
        // Once the recipient has taken everything, the donor's silence counts from then.
        let delivered = Legs::default();
        let started = Instant::now();
        watch(&s, &flow, &delivered, |_, _| {}).await;
        assert!(started.elapsed() <= s.min + CHECK_EVERY * 2);
    }
}
