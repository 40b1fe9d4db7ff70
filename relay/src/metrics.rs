//! Counters for `/metrics`, and the families they make on its page ([`page`]). Gauges that the
//! session registry knows (sessions by state) are added when the page is rendered.

pub mod page;

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};

use crate::limit::{Bucket, Caps, RelayLimits};
use page::{Page, Sample};

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

    /// Adds the relay's families to `page`, with what the session registry knows passed in:
    /// session counts by state, and the donors that may still hold a clone nobody will resume.
    pub fn render(
        &self,
        page: &mut Page,
        sessions_by_state: &BTreeMap<&'static str, u64>,
        stale_upstreams: &[String],
    ) {
        let load = |c: &AtomicU64| c.load(Ordering::Relaxed) as f64;
        page.counter(
            "clone_relay_connections_accepted_total",
            "Downstream connections accepted.",
            load(&self.connections_accepted),
        );
        page.gauge(
            "clone_relay_connections_active",
            "Connections being carried.",
            self.connections_active.load(Ordering::Relaxed) as f64,
        );
        page.counters(
            "clone_relay_bytes_total",
            "Bytes carried, by the side they came from.",
            [
                Sample::new(load(&self.bytes_from_downstream)).label("from", "downstream"),
                Sample::new(load(&self.bytes_from_upstream)).label("from", "upstream"),
            ],
        );
        page.counter(
            "clone_relay_clone_data_bytes_total",
            "Payload bytes of clone DATA responses carried.",
            load(&self.clone_data_bytes),
        );
        page.counter(
            "clone_relay_sessions_started_total",
            "Clone sessions seen starting.",
            load(&self.sessions_started),
        );
        page.counter(
            "clone_relay_resumes_total",
            "Clone sessions resumed by the recipient (COM_REINIT).",
            load(&self.resumes),
        );
        page.counter(
            "clone_relay_resume_outage_seconds_total",
            "Time from a lost main connection to its REINIT, summed.",
            load(&self.resume_outage_ms) / 1000.0,
        );
        page.counter(
            "clone_relay_resent_bytes_total",
            "Clone data bytes the donor sent again after resumes.",
            load(&self.resent_bytes),
        );
        page.counters(
            "clone_relay_tls_reloads_total",
            "TLS reloads (SIGHUP or a changed file), by result; a failed one leaves the TLS in use.",
            [
                Sample::new(load(&self.tls_reloads)).label("result", "ok"),
                Sample::new(load(&self.tls_reload_failures)).label("result", "failed"),
            ],
        );
        self.render_tunnel(page);
        page.gauges(
            "clone_relay_sessions",
            "Clone sessions known, by state.",
            sessions_by_state
                .iter()
                .map(|(state, n)| Sample::new(*n as f64).label("state", state)),
        );
        page.gauges(
            "clone_relay_upstream_stale_clone",
            "Donors that may still hold a clone whose recipient will not resume it (new clones go elsewhere meanwhile).",
            stale_upstreams
                .iter()
                .map(|upstream| Sample::new(1.0).label("upstream", upstream)),
        );
        page.counters(
            "clone_relay_connections_closed_total",
            "Connections ended, by reason.",
            self.closes()
                .into_iter()
                .map(|(reason, n)| Sample::new(n as f64).label("reason", reason)),
        );
    }

    /// The tunnel of a relay pair: streams, reconnects, replayed bytes, buffer use.
    fn render_tunnel(&self, page: &mut Page) {
        let load = |c: &AtomicU64| c.load(Ordering::Relaxed) as f64;
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
            page.counter(name, help, value);
        }
        for (name, help, value) in [
            (
                "clone_relay_tunnel_streams_active",
                "Streams open over the tunnel.",
                self.tunnel_streams_active.load(Ordering::Relaxed).max(0) as f64,
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
            page.gauge(name, help, value);
        }
    }
}

/// The bandwidth caps (`_cap_bytes_per_second`, absent for no cap) of both scopes, and what the
/// relay's own buckets let through (`_passed_bytes_total`, and over the latest second or more,
/// `_achieved_bytes_per_second`), by direction.
pub fn render_limits(page: &mut Page, limits: &RelayLimits) {
    let targets = limits.targets();
    let directions = |caps: Caps| {
        [
            ("to_donor", caps.to_donor),
            ("to_recipient", caps.to_recipient),
        ]
    };
    let caps = [("relay", targets.relay), ("session", targets.session)]
        .into_iter()
        .flat_map(|(scope, caps)| {
            directions(caps)
                .into_iter()
                .filter_map(move |(direction, cap)| {
                    cap.map(|cap| {
                        Sample::new(cap as f64)
                            .label("scope", scope)
                            .label("direction", direction)
                    })
                })
        });
    page.gauges(
        "clone_relay_limit_cap_bytes_per_second",
        "Bandwidth cap by scope and direction.",
        caps,
    );
    let relay = limits.relay();
    let buckets = [
        ("to_donor", &relay.to_donor),
        ("to_recipient", &relay.to_recipient),
    ];
    let by_direction = |value: fn(&Bucket) -> f64| {
        buckets.map(|(direction, bucket)| {
            Sample::new(value(bucket))
                .label("scope", "relay")
                .label("direction", direction)
        })
    };
    page.counters(
        "clone_relay_limit_passed_bytes_total",
        "Bytes the relay's buckets let through, by direction.",
        by_direction(|bucket| bucket.granted() as f64),
    );
    page.gauges(
        "clone_relay_limit_achieved_bytes_per_second",
        "Rate the relay's buckets let through over the latest second or more.",
        by_direction(|bucket| bucket.recent_rate() as f64),
    );
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
        let mut page = Page::default();
        m.render(&mut page, &[("completed", 1)].into(), &["db-a:3306".into()]);
        let page = page.text().unwrap();
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
