//! The faults, one per file, and [`build`], which makes one from its spec.

mod bandwidth;
mod blackhole;
mod flap;
mod inject_packet;
mod latency;
mod limit_data;
mod loss;
mod reset;
mod slicer;
mod slow_close;
mod timeout;

pub use bandwidth::Bandwidth;
pub use blackhole::Blackhole;
pub use flap::{ByteFlap, Flap};
pub use inject_packet::InjectPacket;
pub use latency::Latency;
pub use limit_data::LimitData;
pub use loss::Loss;
pub use reset::Reset;
pub use slicer::Slicer;
pub use slow_close::SlowClose;
pub use timeout::Timeout;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::fault::{Fault, SharedBuckets};
use crate::spec::FaultKind;

/// The fault for a spec; a shared bandwidth cap takes its bucket from `buckets`.
pub fn build(kind: &FaultKind, buckets: &SharedBuckets) -> Box<dyn Fault> {
    let ms = Duration::from_millis;
    match kind {
        FaultKind::Latency {
            latency_ms,
            jitter_ms,
        } => Box::new(Latency {
            latency_ms: *latency_ms,
            jitter_ms: *jitter_ms,
        }),
        FaultKind::Bandwidth {
            rate_bytes_per_sec,
            shared_group,
        } => Box::new(Bandwidth {
            rate_bytes_per_sec: *rate_bytes_per_sec,
            bucket: shared_group
                .as_deref()
                .map_or_else(|| Arc::new(Mutex::new(None)), |g| buckets.get(g)),
        }),
        FaultKind::Slicer {
            average_bytes,
            variation_bytes,
            delay_us,
        } => Box::new(Slicer {
            average_bytes: *average_bytes,
            variation_bytes: *variation_bytes,
            delay: Duration::from_micros(*delay_us),
        }),
        FaultKind::Reset {} => Box::new(Reset),
        FaultKind::Blackhole {} => Box::new(Blackhole),
        FaultKind::Timeout { timeout_ms } => Box::new(Timeout {
            timeout: ms(*timeout_ms),
        }),
        FaultKind::LimitData { bytes } => Box::new(LimitData {
            limit: *bytes,
            passed: 0,
        }),
        FaultKind::SlowClose { delay_ms } => Box::new(SlowClose {
            delay: ms(*delay_ms),
        }),
        FaultKind::Loss {
            probability,
            segment_bytes,
            retransmit_ms,
        } => Box::new(Loss {
            probability: *probability,
            segment_bytes: *segment_bytes as u64,
            retransmit: ms(*retransmit_ms),
        }),
        FaultKind::InjectPacket {
            after_bytes,
            payload_hex,
        } => Box::new(InjectPacket::new(
            *after_bytes,
            // Validation checked the hex.
            &crate::spec::unhex(payload_hex).unwrap_or_default(),
        )),
        FaultKind::Flap {
            period_ms,
            period_bytes,
            down_ms,
            mode,
        } => match (period_ms, period_bytes) {
            (_, Some(period)) => Box::new(ByteFlap {
                period: *period,
                down: ms(*down_ms),
                mode: *mode,
                origin: None,
            }),
            // Validation leaves exactly one of the two.
            (period_ms, None) => Box::new(Flap {
                period: ms(period_ms.unwrap_or_default()),
                down: ms(*down_ms),
                mode: *mode,
            }),
        },
    }
}

#[cfg(test)]
pub(crate) mod testing {
    //! Driving one fault by hand in unit tests.

    use std::time::Duration;

    use tokio::time::Instant;

    use bytes::Bytes;

    use crate::fault::{Ctx, DecisionLog, Fault, Flow, Piece, Window};
    use crate::rng::Rng;
    use crate::spec::Direction;

    /// Applies `fault` to `len` bytes read at `arrived`, at stream `offset`, active in `window`.
    pub fn apply(
        fault: &mut dyn Fault,
        window: Window,
        arrived: Instant,
        offset: u64,
        len: usize,
    ) -> Flow {
        let bytes: Vec<u8> = (0..len).map(|i| i as u8).collect();
        apply_bytes(fault, window, arrived, offset, &bytes)
    }

    /// Applies `fault` to `bytes` read at `arrived`, at stream `offset`, active in `window`.
    pub fn apply_bytes(
        fault: &mut dyn Fault,
        window: Window,
        arrived: Instant,
        offset: u64,
        bytes: &[u8],
    ) -> Flow {
        let log = DecisionLog::default();
        let ctx = Ctx {
            arrived,
            offset,
            window,
            rng: Rng::new(1, 1, 1, 1),
            log: &log,
            connection: 1,
            direction: Direction::Downstream,
            label: "test",
        };
        let bytes = Bytes::copy_from_slice(bytes);
        fault.apply(&ctx, vec![Piece::new(bytes, arrived)])
    }

    pub fn always(from: Instant) -> Window {
        Window { from, until: None }
    }

    pub fn total(flow: &Flow) -> usize {
        flow.pieces.iter().map(|p| p.bytes.len()).sum()
    }

    pub const MS: Duration = Duration::from_millis(1);
}
