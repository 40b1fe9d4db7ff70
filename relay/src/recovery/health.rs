//! Whether the relay can reach its donors, judged only from the dials it makes anyway (for
//! recipients' connections, reconnects and the start-up probe). Readiness never dials on its
//! own: every connection a donor sees hang up before login counts against its
//! `max_connect_errors`, and enough of them block the relay's host on the donor.

use std::collections::HashMap;
use std::fmt::Display;
use std::sync::Mutex;
use std::time::Duration;

use serde::Serialize;
use tokio::time::Instant;

/// A successful dial this recent keeps the relay ready even if a later one failed.
pub const READY_WINDOW: Duration = Duration::from_secs(60);

/// The outcome of the latest dials of each donor.
#[derive(Debug, Default)]
pub struct Health {
    donors: Mutex<HashMap<String, DonorRecord>>,
}

#[derive(Debug, Default)]
struct DonorRecord {
    last_success: Option<Instant>,
    last_failure: Option<(Instant, String)>,
    /// Whether the latest dial succeeded.
    last_ok: bool,
    successes: u64,
    failures: u64,
}

/// What `/readyz` reports.
#[derive(Debug, Clone, Serialize)]
pub struct Readiness {
    pub ready: bool,
    /// Why the relay is not ready; absent when it is. In JSON `error`, as in every admin
    /// answer that is not a success.
    #[serde(rename = "error", skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// The donors dialed so far, by address.
    pub upstreams: Vec<DonorHealth>,
}

/// One donor's dials, as `/readyz` shows them.
#[derive(Debug, Clone, Serialize)]
pub struct DonorHealth {
    pub upstream: String,
    /// Whether the latest dial succeeded.
    pub last_dial_ok: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_success_secs_ago: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_failure_secs_ago: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
    pub successes: u64,
    pub failures: u64,
}

impl Health {
    /// Records that dialing `upstream` succeeded.
    pub fn record_success(&self, upstream: &str) {
        self.update(upstream, |record| {
            record.last_success = Some(Instant::now());
            record.last_ok = true;
            record.successes += 1;
        });
    }

    /// Records that dialing `upstream` failed, and why.
    pub fn record_failure(&self, upstream: &str, error: &dyn Display) {
        let reason = error.to_string();
        self.update(upstream, |record| {
            record.last_failure = Some((Instant::now(), reason));
            record.last_ok = false;
            record.failures += 1;
        });
    }

    fn update(&self, upstream: &str, change: impl FnOnce(&mut DonorRecord)) {
        let mut donors = self.donors.lock().expect("health lock");
        match donors.get_mut(upstream) {
            Some(record) => change(record),
            None => change(donors.entry(upstream.to_owned()).or_default()),
        }
    }

    /// Ready when some donor's latest dial succeeded, or one succeeded within
    /// [`READY_WINDOW`]; not ready before any dial.
    pub fn readiness(&self) -> Readiness {
        self.readiness_at(Instant::now())
    }

    fn readiness_at(&self, now: Instant) -> Readiness {
        let donors = self.donors.lock().expect("health lock");
        let mut upstreams: Vec<DonorHealth> = donors
            .iter()
            .map(|(upstream, r)| DonorHealth {
                upstream: upstream.clone(),
                last_dial_ok: r.last_ok,
                last_success_secs_ago: r.last_success.map(|t| secs(now - t)),
                last_failure_secs_ago: r.last_failure.as_ref().map(|(t, _)| secs(now - *t)),
                last_error: r.last_failure.as_ref().map(|(_, e)| e.clone()),
                successes: r.successes,
                failures: r.failures,
            })
            .collect();
        upstreams.sort_by(|a, b| a.upstream.cmp(&b.upstream));
        let ready = donors
            .values()
            .any(|r| r.last_ok || r.last_success.is_some_and(|t| now - t <= READY_WINDOW));
        let reason = if ready {
            None
        } else if upstreams.is_empty() {
            Some("no donor dialed yet (the start-up probe is off or has not finished)".into())
        } else {
            let failures: Vec<String> = upstreams
                .iter()
                .map(|d| {
                    format!(
                        "{}: last dial failed {:.0}s ago: {}",
                        d.upstream,
                        d.last_failure_secs_ago.unwrap_or(0.0),
                        d.last_error.as_deref().unwrap_or("unknown error")
                    )
                })
                .collect();
            Some(format!("no donor reachable: {}", failures.join("; ")))
        };
        Readiness {
            ready,
            reason,
            upstreams,
        }
    }
}

fn secs(d: Duration) -> f64 {
    (d.as_secs_f64() * 10.0).round() / 10.0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ready_after_a_recent_or_latest_success() {
        let health = Health::default();
        let r = health.readiness();
        assert!(!r.ready);
        assert!(r.reason.unwrap().contains("no donor dialed yet"));

        health.record_failure("a:1", &"connection refused");
        let r = health.readiness();
        assert!(!r.ready);
        let reason = r.reason.unwrap();
        assert!(
            reason.contains("a:1") && reason.contains("connection refused"),
            "{reason}"
        );

        health.record_success("a:1");
        assert!(health.readiness().ready);
        // The latest dial succeeded: ready however long ago it was.
        let later = Instant::now() + Duration::from_secs(3600);
        assert!(health.readiness_at(later).ready);

        // A failure right after a success: ready within the window, not after.
        health.record_failure("a:1", &"timed out");
        assert!(health.readiness().ready);
        let after_window = Instant::now() + READY_WINDOW + Duration::from_secs(1);
        let r = health.readiness_at(after_window);
        assert!(!r.ready);
        assert!(r.reason.unwrap().contains("timed out"));

        // Another donor that answers makes the relay ready.
        health.record_success("b:2");
        let r = health.readiness_at(after_window);
        assert!(r.ready && r.reason.is_none());
        assert_eq!(r.upstreams.len(), 2);
        assert_eq!(r.upstreams[0].upstream, "a:1");
        assert_eq!((r.upstreams[0].successes, r.upstreams[0].failures), (1, 2));
    }
}
