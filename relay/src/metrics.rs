//! Counters for `/metrics`, in Prometheus text format. Gauges that the session registry knows
//! (sessions by state) are added when the page is rendered.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::Mutex;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};

use crate::limit::{Caps, RelayLimits};

/// Relay-wide counters.
#[derive(Debug, Default)]
pub struct Metrics {
    pub connections_accepted: AtomicU64,
    pub connections_active: AtomicI64,
    pub bytes_from_downstream: AtomicU64,
    pub bytes_from_upstream: AtomicU64,
    pub clone_data_bytes: AtomicU64,
    pub sessions_started: AtomicU64,
    pub resumes: AtomicU64,
    /// Milliseconds from losing a main connection to the REINIT, summed over resumes.
    pub resume_outage_ms: AtomicU64,
    /// Clone data bytes the donor sent again after resumes.
    pub resent_bytes: AtomicU64,
    /// TLS reloads (SIGHUP or a changed file) that took effect.
    pub tls_reloads: AtomicU64,
    /// TLS reloads that failed, leaving the TLS in use as it was.
    pub tls_reload_failures: AtomicU64,
    /// Streams a relay pair's tunnel opened, and those open now.
    pub tunnel_streams_opened: AtomicU64,
    pub tunnel_streams_active: AtomicI64,
    /// Tunnel connections lost (reset, error, silence) while their stream went on.
    pub tunnel_link_losses: AtomicU64,
    /// Streams resumed over a new tunnel connection.
    pub tunnel_reconnects: AtomicU64,
    /// Bytes sent again from replay buffers after reconnects.
    pub tunnel_replayed_bytes: AtomicU64,
    /// Streams given up (outage past the bridge): the clone falls back to its own resume.
    pub tunnel_fallbacks: AtomicU64,
    /// Bytes in replay buffers: in memory, and in spill files.
    pub tunnel_buffer_bytes: AtomicU64,
    pub tunnel_spill_bytes: AtomicU64,
    /// Spill files made.
    pub tunnel_spills: AtomicU64,
    /// Connection ends by reason (`normal`, `peer_reset`, `protocol_oversize`, ...).
    closes: Mutex<BTreeMap<&'static str, u64>>,
}

impl Metrics {
    pub fn count_close(&self, reason: &'static str) {
        *self
            .closes
            .lock()
            .expect("metrics lock")
            .entry(reason)
            .or_default() += 1;
    }

    pub fn closes(&self) -> BTreeMap<&'static str, u64> {
        self.closes.lock().expect("metrics lock").clone()
    }

    /// The page, with what the session registry knows passed in: session counts by state, and
    /// the donors that may still hold a clone nobody will resume.
    pub fn render(
        &self,
        sessions_by_state: &BTreeMap<&'static str, u64>,
        stale_upstreams: &[String],
    ) -> String {
        let mut out = String::new();
        let counter = |out: &mut String, name: &str, help: &str, value: u64| {
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} counter\n{name} {value}"
            );
        };
        let load = |c: &AtomicU64| c.load(Ordering::Relaxed);
        counter(
            &mut out,
            "clone_relay_connections_accepted_total",
            "Downstream connections accepted.",
            load(&self.connections_accepted),
        );
        let _ = writeln!(
            out,
            "# HELP clone_relay_connections_active Connections being carried.\n# TYPE clone_relay_connections_active gauge\nclone_relay_connections_active {}",
            self.connections_active.load(Ordering::Relaxed)
        );
        let _ = writeln!(
            out,
            "# HELP clone_relay_bytes_total Bytes carried, by the side they came from.\n# TYPE clone_relay_bytes_total counter"
        );
        let _ = writeln!(
            out,
            "clone_relay_bytes_total{{from=\"downstream\"}} {}",
            load(&self.bytes_from_downstream)
        );
        let _ = writeln!(
            out,
            "clone_relay_bytes_total{{from=\"upstream\"}} {}",
            load(&self.bytes_from_upstream)
        );
        counter(
            &mut out,
            "clone_relay_clone_data_bytes_total",
            "Payload bytes of clone DATA responses carried.",
            load(&self.clone_data_bytes),
        );
        counter(
            &mut out,
            "clone_relay_sessions_started_total",
            "Clone sessions seen starting.",
            load(&self.sessions_started),
        );
        counter(
            &mut out,
            "clone_relay_resumes_total",
            "Clone sessions resumed by the recipient (COM_REINIT).",
            load(&self.resumes),
        );
        let _ = writeln!(
            out,
            "# HELP clone_relay_resume_outage_seconds_total Time from a lost main connection to its REINIT, summed.\n# TYPE clone_relay_resume_outage_seconds_total counter\nclone_relay_resume_outage_seconds_total {:.3}",
            load(&self.resume_outage_ms) as f64 / 1000.0
        );
        counter(
            &mut out,
            "clone_relay_resent_bytes_total",
            "Clone data bytes the donor sent again after resumes.",
            load(&self.resent_bytes),
        );
        let _ = writeln!(
            out,
            "# HELP clone_relay_tls_reloads_total TLS reloads (SIGHUP or a changed file), by result; a failed one leaves the TLS in use.\n# TYPE clone_relay_tls_reloads_total counter\nclone_relay_tls_reloads_total{{result=\"ok\"}} {}\nclone_relay_tls_reloads_total{{result=\"failed\"}} {}",
            load(&self.tls_reloads),
            load(&self.tls_reload_failures)
        );
        self.render_tunnel(&mut out);
        let _ = writeln!(
            out,
            "# HELP clone_relay_sessions Clone sessions known, by state.\n# TYPE clone_relay_sessions gauge"
        );
        for (state, n) in sessions_by_state {
            let _ = writeln!(out, "clone_relay_sessions{{state=\"{state}\"}} {n}");
        }
        let _ = writeln!(
            out,
            "# HELP clone_relay_upstream_stale_clone Donors that may still hold a clone whose recipient will not resume it (new clones go elsewhere meanwhile).\n# TYPE clone_relay_upstream_stale_clone gauge"
        );
        for upstream in stale_upstreams {
            let _ = writeln!(
                out,
                "clone_relay_upstream_stale_clone{{upstream=\"{upstream}\"}} 1"
            );
        }
        let _ = writeln!(
            out,
            "# HELP clone_relay_connections_closed_total Connections ended, by reason.\n# TYPE clone_relay_connections_closed_total counter"
        );
        for (reason, n) in self.closes() {
            let _ = writeln!(
                out,
                "clone_relay_connections_closed_total{{reason=\"{reason}\"}} {n}"
            );
        }
        out
    }
}

impl Metrics {
    /// The tunnel of a relay pair: streams, reconnects, replayed bytes, buffer use.
    fn render_tunnel(&self, out: &mut String) {
        let load = |c: &AtomicU64| c.load(Ordering::Relaxed);
        for (name, help, value) in [
            (
                "clone_relay_tunnel_streams_opened_total",
                "Streams opened over the relay pair's tunnel.",
                load(&self.tunnel_streams_opened),
            ),
            (
                "clone_relay_tunnel_link_losses_total",
                "Tunnel connections lost (reset, error or silence) while their stream went on.",
                load(&self.tunnel_link_losses),
            ),
            (
                "clone_relay_tunnel_reconnects_total",
                "Streams resumed over a new tunnel connection.",
                load(&self.tunnel_reconnects),
            ),
            (
                "clone_relay_tunnel_replayed_bytes_total",
                "Bytes sent again from replay buffers after reconnects.",
                load(&self.tunnel_replayed_bytes),
            ),
            (
                "clone_relay_tunnel_fallbacks_total",
                "Streams given up after an outage longer than the bridge (the clone resumes by itself).",
                load(&self.tunnel_fallbacks),
            ),
            (
                "clone_relay_tunnel_spills_total",
                "Replay buffers that spilled to a file.",
                load(&self.tunnel_spills),
            ),
        ] {
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} counter\n{name} {value}"
            );
        }
        for (name, help, value) in [
            (
                "clone_relay_tunnel_streams_active",
                "Streams open over the tunnel.",
                self.tunnel_streams_active.load(Ordering::Relaxed).max(0) as u64,
            ),
            (
                "clone_relay_tunnel_buffer_bytes",
                "Bytes held in replay buffers in memory.",
                load(&self.tunnel_buffer_bytes),
            ),
            (
                "clone_relay_tunnel_spill_bytes",
                "Bytes held in replay buffers' spill files.",
                load(&self.tunnel_spill_bytes),
            ),
        ] {
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} gauge\n{name} {value}"
            );
        }
    }
}

/// The bandwidth caps (`_cap_bytes_per_second`, absent for no cap) of both scopes, and what the
/// relay's own buckets let through (`_passed_bytes_total`, and over the latest second or more,
/// `_achieved_bytes_per_second`), by direction.
pub fn render_limits(out: &mut String, limits: &RelayLimits) {
    let targets = limits.targets();
    let directions = |caps: Caps| {
        [
            ("to_donor", caps.to_donor),
            ("to_recipient", caps.to_recipient),
        ]
    };
    let _ = writeln!(
        out,
        "# HELP clone_relay_limit_cap_bytes_per_second Bandwidth cap by scope and direction.\n# TYPE clone_relay_limit_cap_bytes_per_second gauge"
    );
    for (scope, caps) in [("relay", targets.relay), ("session", targets.session)] {
        for (direction, cap) in directions(caps) {
            if let Some(cap) = cap {
                let _ = writeln!(
                    out,
                    "clone_relay_limit_cap_bytes_per_second{{scope=\"{scope}\",direction=\"{direction}\"}} {cap}"
                );
            }
        }
    }
    let relay = limits.relay();
    let buckets = [
        ("to_donor", &relay.to_donor),
        ("to_recipient", &relay.to_recipient),
    ];
    let _ = writeln!(
        out,
        "# HELP clone_relay_limit_passed_bytes_total Bytes the relay's buckets let through, by direction.\n# TYPE clone_relay_limit_passed_bytes_total counter"
    );
    for (direction, bucket) in buckets {
        let _ = writeln!(
            out,
            "clone_relay_limit_passed_bytes_total{{scope=\"relay\",direction=\"{direction}\"}} {}",
            bucket.granted()
        );
    }
    let _ = writeln!(
        out,
        "# HELP clone_relay_limit_achieved_bytes_per_second Rate the relay's buckets let through over the latest second or more.\n# TYPE clone_relay_limit_achieved_bytes_per_second gauge"
    );
    for (direction, bucket) in buckets {
        let _ = writeln!(
            out,
            "clone_relay_limit_achieved_bytes_per_second{{scope=\"relay\",direction=\"{direction}\"}} {}",
            bucket.recent_rate()
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_prometheus_text() {
        let m = Metrics::default();
        m.connections_accepted.fetch_add(3, Ordering::Relaxed);
        m.count_close("protocol_oversize");
        m.count_close("protocol_oversize");
        m.tls_reload_failures.fetch_add(1, Ordering::Relaxed);
        let page = m.render(&[("completed", 1)].into(), &["db-a:3306".into()]);
        assert!(page.contains("clone_relay_connections_accepted_total 3\n"));
        assert!(
            page.contains("clone_relay_connections_closed_total{reason=\"protocol_oversize\"} 2\n")
        );
        assert!(page.contains("clone_relay_sessions{state=\"completed\"} 1\n"));
        assert!(page.contains("clone_relay_tls_reloads_total{result=\"failed\"} 1\n"));
        assert!(page.contains("clone_relay_upstream_stale_clone{upstream=\"db-a:3306\"} 1\n"));
        for line in page.lines().filter(|l| !l.starts_with('#')) {
            let value = line.rsplit(' ').next().unwrap();
            assert!(value.parse::<f64>().is_ok(), "{line}");
        }
    }
}
