//! Whether a silent connection's flow is dead. The stall watch raises the suspicion; a probe of
//! the donor's path ([`crate::path`]) settles it:
//!
//! - path up while the flow stays silent (a lost NAT entry, or a stuck donor, which a greeting
//!   cannot tell apart): the flow is dead, and the caller resets the session so the recipient
//!   resumes at once;
//! - nothing reaches the donor: the link is down. The session is kept, so TCP carries on when the
//!   link returns; the path is probed again every [`RECHECK`] (at most [`MAX_PROBES`] times per
//!   silence). Once a probe gets through, the silent flow has about the outage's length again
//!   to resume (TCP's retransmission backoff grew through the outage) before it counts as lost.
//!   If the outage outlasts the recipient's own read timeout (about 60 s) the recipient resumes
//!   by itself, as it would with no relay.
//!
//! A recipient that closes its side while the link is down has given up (its own read timeout):
//! the flow ends then too. Each finding is recorded in the connection's session and logged.

use std::time::Duration;

use tokio::time::Instant;

use crate::config::StallSettings;
use crate::io::Legs;
use crate::path::{PathProbes, PathState};
use crate::session::{ConnHandle, DetectionKind};
use crate::stall;

/// How often a link found down is probed again while the flow stays silent.
pub const RECHECK: Duration = Duration::from_secs(5);
/// Probes per silence, after the first.
pub const MAX_PROBES: u32 = 24;

/// Completes once the recipient has closed its side of the connection.
async fn recipient_gone(legs: &Legs) {
    while !legs.downstream.ended() {
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// Completes, with the length of the silence, when the flow of `conn` (to `donor`) is found
/// dead; never while the link to the donor is down.
pub async fn dead_flow(
    settings: &StallSettings,
    probes: &PathProbes,
    donor: &str,
    conn: &ConnHandle,
    legs: &Legs,
) -> Duration {
    loop {
        let silence = stall::watch(settings, conn.flow(), legs).await;
        let (state, took) = probes.check(donor).await;
        let PathState::Down(reason) = state else {
            conn.record_detection(DetectionKind::FlowDead, silence, Some(took));
            return silence;
        };
        tracing::debug!(upstream = donor, %reason, "path probe failed");
        conn.record_detection(DetectionKind::LinkDown, silence, Some(took));
        let down_since = Instant::now();
        let mut rechecks = 0;
        loop {
            tokio::select! {
                () = stall::flowing_since(conn.flow(), down_since) => {
                    let silence = silence + down_since.elapsed();
                    conn.record_detection(DetectionKind::LinkBack, silence, None);
                    break;
                }
                () = recipient_gone(legs) => {
                    // The recipient gave up on the connection (its own read timeout): nothing
                    // is left to wait for.
                    return silence + down_since.elapsed();
                }
                () = tokio::time::sleep(RECHECK), if rechecks < MAX_PROBES => {
                    rechecks += 1;
                    let (state, took) = probes.check(donor).await;
                    if state == PathState::Up {
                        // The link is back. The silent flow resumes when the donor's TCP next
                        // retransmits, and its backoff has doubled through the outage, so that
                        // comes within about the outage's length again: wait that long.
                        let outage = silence + down_since.elapsed();
                        tokio::select! {
                            () = stall::flowing_since(conn.flow(), down_since) => {
                                let silence = silence + down_since.elapsed();
                                conn.record_detection(DetectionKind::LinkBack, silence, None);
                                break;
                            }
                            () = tokio::time::sleep(outage.min(settings.max)) => {
                                let silence = silence + down_since.elapsed();
                                conn.record_detection(DetectionKind::FlowDead, silence, Some(took));
                                return silence;
                            }
                        }
                    }
                }
            }
        }
    }
}
