//! Whether a silent connection's flow is dead. The stall watch raises the suspicion; what
//! follows settles it:
//!
//! - the clone's data still flowing on its other connections: the donor's path is up, so the
//!   silent flow itself is asked at once (below); a flow whose TCP answers is then noted as a
//!   slow donor (the donor hands out a stage's work unevenly, and a slow donor leaves a
//!   connection idle for seconds) and never reset while the clone moves;
//! - nothing reaches the donor on a fresh connection ([`crate::recovery::probe`]): the link is down. The
//!   session is kept, so TCP carries on when the link returns; the path is probed again every
//!   [`RECHECK`] (at most [`MAX_PROBES`] times per silence). Once a probe gets through, the
//!   silent flow has about the outage's length again to resume (TCP's retransmission backoff
//!   grew through the outage) before it counts as lost. If the outage outlasts the recipient's
//!   own read timeout (about 60 s) the recipient resumes by itself, as it would with no relay;
//! - the path up: the silent flow itself is asked ([`check_flow`]). The relay arms a keepalive
//!   probe at once on the donor leg's socket with a one-second user timeout: when nothing
//!   acknowledges it (a lost NAT or conntrack entry), the kernel fails the socket within about
//!   a second, the copy ends, and the session is reset so the recipient resumes at once. When
//!   the donor's TCP answers, the donor is slow (or stuck), not gone: the flow gets until its
//!   silence reaches `stall.min` to bring bytes (a slow donor, recorded as such) before it
//!   counts as stuck and the session is reset.
//!
//! A recipient that closes its side while the link is down has given up (its own read timeout):
//! the flow ends then too. Each finding is recorded in the connection's session and logged.

use std::sync::PoisonError;
use std::time::Duration;

use socket2::{Socket, TcpKeepalive};
use tokio::time::Instant;

use crate::config::{Config, StallSettings};
use crate::io::Legs;
use crate::recovery::probe::{PathProbes, PathState};
use crate::recovery::stall;
use crate::session::Slowness;
use crate::session::{ConnHandle, DetectionKind};

/// How often a link found down is probed again while the flow stays silent.
pub const RECHECK: Duration = Duration::from_secs(5);
/// Probes per silence, after the first.
pub const MAX_PROBES: u32 = 24;
/// The keepalive idle time, probe interval and user timeout armed on a suspect flow's socket.
const FLOW_CHECK: Duration = Duration::from_secs(1);

/// Completes once the recipient has closed its side of the connection.
async fn recipient_gone(legs: &Legs) {
    while !legs.downstream.ended() {
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// The donor leg's socket, for asking its TCP whether a silent flow lives, and the settings to
/// put back when it does.
#[derive(Debug)]
pub struct FlowSocket<'a> {
    pub socket: &'a Socket,
    pub config: &'a Config,
}

impl FlowSocket<'_> {
    /// A keepalive probe at once (the flow has been idle longer than [`FLOW_CHECK`]) and a
    /// user timeout of [`FLOW_CHECK`]: an unanswered probe fails the socket with ETIMEDOUT.
    ///
    /// The interval and the user timeout go first: setting the idle time re-arms the keepalive
    /// timer at once, and its next turn must already come after one interval.
    fn arm(&self) -> std::io::Result<()> {
        self.socket.set_tcp_user_timeout(Some(FLOW_CHECK))?;
        let probe = TcpKeepalive::new()
            .with_interval(FLOW_CHECK)
            .with_retries(3);
        self.socket
            .set_tcp_keepalive(&probe.clone().with_time(self.config.keepalive_idle))?;
        self.socket.set_tcp_keepalive(&probe.with_time(FLOW_CHECK))
    }

    /// The configured keepalive and user timeout again.
    fn disarm(&self) {
        let c = self.config;
        let _ = self.socket.set_tcp_keepalive(
            &TcpKeepalive::new()
                .with_time(c.keepalive_idle)
                .with_interval(c.keepalive_interval)
                .with_retries(c.keepalive_retries),
        );
        let _ = self.socket.set_tcp_user_timeout(Some(c.user_timeout));
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
    upstream: Option<FlowSocket<'_>>,
) -> Duration {
    loop {
        let silence = stall::watch(settings, conn.flow(), legs, |slowness, silence| {
            let kind = match slowness {
                Slowness::Donor => DetectionKind::DonorSlow,
                Slowness::Recipient => DetectionKind::RecipientSlow,
            };
            conn.record_detection(kind, silence, None);
        })
        .await;
        // The clone's data arriving on its other connections shows the donor's path up.
        let moving = session_moving(settings, conn);
        let (state, took) = if moving {
            (PathState::Up, None)
        } else {
            let (state, took) = probes.check(donor).await;
            (state, Some(took))
        };
        match state {
            PathState::Up => match &upstream {
                Some(upstream) => {
                    if check_flow(settings, conn, upstream, silence, took).await {
                        continue;
                    }
                    return silence.max(settings.min);
                }
                None if moving => excuse(conn, silence),
                None => {
                    conn.record_detection(DetectionKind::FlowDead, silence, took);
                    return silence;
                }
            },
            PathState::Down(reason) => {
                tracing::debug!(upstream = donor, %reason, "path probe failed");
                conn.record_detection(DetectionKind::LinkDown, silence, took);
                if let Some(silence) =
                    wait_out_link_down(settings, probes, donor, conn, legs, silence).await
                {
                    return silence;
                }
            }
        }
    }
}

/// Whether the clone's data arrived on any of its connections within the stage's least silence.
fn session_moving(settings: &StallSettings, conn: &ConnHandle) -> bool {
    conn.session_data_age()
        .is_some_and(|age| age < settings.min_streaming.min(settings.min))
}

/// Counts the silence as the donor's slowness, once, and starts the watch afresh.
fn excuse(conn: &ConnHandle, silence: Duration) {
    let mut flow = conn.flow().lock().unwrap_or_else(PoisonError::into_inner);
    flow.excuse(Instant::now());
    let first = flow.first_report();
    drop(flow);
    if first {
        conn.record_detection(DetectionKind::DonorSlow, silence, None);
    }
}

/// Asks the silent flow's own TCP whether it lives (see the module's documentation). True when
/// bytes came back, or the clone moves on its other connections (a slow donor); false when the
/// flow and its clone stayed silent until `stall.min` with the flow's TCP answering (a stuck
/// donor, recorded as a dead flow). When the kernel fails the socket first, the copy ends and
/// [`settle`] records the dead flow.
async fn check_flow(
    settings: &StallSettings,
    conn: &ConnHandle,
    upstream: &FlowSocket<'_>,
    silence: Duration,
    probe: Option<Duration>,
) -> bool {
    let armed_at = Instant::now();
    if let Err(e) = upstream.arm() {
        tracing::debug!(error = %e, "cannot arm the flow check; judging by the probe alone");
        if session_moving(settings, conn) {
            excuse(conn, silence);
            return true;
        }
        conn.record_detection(DetectionKind::FlowDead, silence, probe);
        return false;
    }
    conn.flow()
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .begin_check(silence, probe);
    let stuck_after = settings.min.saturating_sub(silence);
    let alive = tokio::select! {
        () = stall::flowing_since(conn.flow(), armed_at) => true,
        () = tokio::time::sleep(stuck_after) => session_moving(settings, conn),
    };
    conn.flow()
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .end_check();
    upstream.disarm();
    if alive {
        excuse(conn, silence + armed_at.elapsed());
    } else {
        let silence = silence + armed_at.elapsed();
        conn.record_detection(DetectionKind::FlowDead, silence, probe);
    }
    alive
}

/// Records a dead flow when the connection ended in an error of its donor leg while its flow
/// was being checked: the kernel failed the socket because nothing acknowledged the probe.
pub fn settle(conn: &ConnHandle, legs: &Legs, failed: bool) {
    if !failed || !legs.upstream.failed() {
        return;
    }
    let check = conn
        .flow()
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .end_check();
    if let Some((silence, probe, since)) = check {
        conn.record_detection(DetectionKind::FlowDead, silence + since.elapsed(), probe);
    }
}

/// Waits while the link is down: `None` once bytes flow again (the watch starts afresh), or the
/// length of the silence when the flow is to be ended.
async fn wait_out_link_down(
    settings: &StallSettings,
    probes: &PathProbes,
    donor: &str,
    conn: &ConnHandle,
    legs: &Legs,
    silence: Duration,
) -> Option<Duration> {
    let down_since = Instant::now();
    let mut rechecks = 0;
    loop {
        tokio::select! {
            () = stall::flowing_since(conn.flow(), down_since) => {
                let silence = silence + down_since.elapsed();
                conn.record_detection(DetectionKind::LinkBack, silence, None);
                return None;
            }
            () = recipient_gone(legs) => {
                // The recipient gave up on the connection (its own read timeout): nothing is
                // left to wait for.
                return Some(silence + down_since.elapsed());
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
                            return None;
                        }
                        () = tokio::time::sleep(outage.min(settings.max)) => {
                            let silence = silence + down_since.elapsed();
                            conn.record_detection(DetectionKind::FlowDead, silence, Some(took));
                            return Some(silence);
                        }
                    }
                }
            }
        }
    }
}
