//! The results: a Markdown table for people (and the README), the same as JSON.

use std::fmt::Write;
use std::time::Duration;

use serde::Serialize;

use crate::Options;

/// The row everything is compared with.
pub const DIRECT: &str = "direct";

const MIB: f64 = 1024.0 * 1024.0;

/// One row: its median rate and the ratio to the direct row's median.
#[derive(Debug, Clone, Serialize)]
pub struct RowResult {
    pub key: &'static str,
    pub label: &'static str,
    /// MiB/s of the median transfer; none when skipped.
    pub mib_per_sec: Option<f64>,
    pub min_mib_per_sec: Option<f64>,
    pub max_mib_per_sec: Option<f64>,
    pub transfers: usize,
    pub ratio_to_direct: Option<f64>,
    pub skipped: Option<String>,
}

impl RowResult {
    pub fn new(
        key: &'static str,
        label: &'static str,
        bytes: u64,
        secs: &[f64],
        skipped: Option<&String>,
    ) -> RowResult {
        let mut rates: Vec<f64> = secs.iter().map(|s| bytes as f64 / MIB / s).collect();
        rates.sort_by(f64::total_cmp);
        RowResult {
            key,
            label,
            mib_per_sec: median(&rates),
            min_mib_per_sec: rates.first().copied(),
            max_mib_per_sec: rates.last().copied(),
            transfers: rates.len(),
            ratio_to_direct: None,
            skipped: skipped.cloned(),
        }
    }
}

/// The median of sorted values (the mean of the middle two for an even count).
fn median(sorted: &[f64]) -> Option<f64> {
    let n = sorted.len();
    match n {
        0 => None,
        _ if n % 2 == 1 => Some(sorted[n / 2]),
        _ => Some((sorted[n / 2 - 1] + sorted[n / 2]) / 2.0),
    }
}

/// Percentiles of round-trip times, in microseconds.
#[derive(Debug, Clone, Serialize)]
pub struct Percentiles {
    pub p50_us: f64,
    pub p99_us: f64,
}

impl Percentiles {
    /// The nearest-rank percentiles of `rtt_us` (at least one sample).
    pub fn of(rtt_us: &[f64]) -> Percentiles {
        let mut sorted = rtt_us.to_vec();
        sorted.sort_by(f64::total_cmp);
        let at = |q: f64| {
            let rank = (sorted.len() as f64 * q).ceil() as usize;
            sorted[rank.clamp(1, sorted.len()) - 1]
        };
        Percentiles {
            p50_us: at(0.50),
            p99_us: at(0.99),
        }
    }
}

/// Round trips directly and through the relay, and what the relay adds.
#[derive(Debug, Clone, Serialize)]
pub struct Latency {
    pub round_trips: usize,
    pub direct: Percentiles,
    pub relay: Percentiles,
    pub added_p50_us: f64,
    pub added_p99_us: f64,
}

impl Latency {
    pub fn new(direct_us: &[f64], relay_us: &[f64]) -> Latency {
        let (direct, relay) = (Percentiles::of(direct_us), Percentiles::of(relay_us));
        Latency {
            round_trips: direct_us.len().min(relay_us.len()),
            added_p50_us: relay.p50_us - direct.p50_us,
            added_p99_us: relay.p99_us - direct.p99_us,
            direct,
            relay,
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub quick: bool,
    pub cpus: usize,
    /// When the run ended (UTC, RFC 3339).
    pub taken_at: String,
    /// The machine: CPU model, CPU count, kernel.
    pub machine: String,
    pub stream_bytes: u64,
    pub stream_data_mib: usize,
    pub repetitions: usize,
    pub rows: Vec<RowResult>,
    /// The TLS row's median as a ratio of rustls in memory.
    pub relay_tls_to_rustls_in_memory: Option<f64>,
    /// The pair's median (mutual-TLS tunnel) as a ratio of the single relay with TLS on both legs.
    pub pair_to_relay_tls: Option<f64>,
    /// The `--tunnel-plain` pair's median as a ratio of the single plain relay.
    pub plain_pair_to_relay_plain: Option<f64>,
    pub latency: Latency,
    /// VmHWM of the relay that carried the plain row, read after its last transfer.
    pub relay_plain_peak_rss_bytes: u64,
    pub transfers_secs: f64,
    /// CPU each relay process used per GiB it carried in the timed rounds.
    pub relay_cpu: Vec<RelayCpu>,
    /// The pair's tunnel connections: one stream alone against several at once.
    pub tunnel_connections: Vec<StreamsResult>,
}

/// The pair's tunnel connections under one condition: medians of one stream alone and of
/// several at once (see the `streams` module).
#[derive(Debug, Clone, Serialize)]
pub struct StreamsResult {
    pub conditions: String,
    pub streams: usize,
    /// One stream alone: the most one shared connection could carry.
    pub one_stream_mib_per_sec: f64,
    /// `streams` streams at once, each on its own connection, in all.
    pub together_mib_per_sec: f64,
}

impl StreamsResult {
    /// From each round's rates, MiB/s.
    pub fn new(
        conditions: &str,
        streams: usize,
        mut alone: Vec<f64>,
        mut together: Vec<f64>,
    ) -> Self {
        alone.sort_by(f64::total_cmp);
        together.sort_by(f64::total_cmp);
        StreamsResult {
            conditions: conditions.to_string(),
            streams,
            one_stream_mib_per_sec: median(&alone).unwrap_or(f64::NAN),
            together_mib_per_sec: median(&together).unwrap_or(f64::NAN),
        }
    }
}

/// CPU seconds per GiB carried, user and system, of one relay process (from /proc/PID/stat).
#[derive(Debug, Clone, Serialize)]
pub struct RelayCpu {
    pub relay: String,
    pub user_secs_per_gib: f64,
    pub system_secs_per_gib: f64,
}

impl Report {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        opts: &Options,
        stream_bytes: u64,
        stream_data_mib: usize,
        repetitions: usize,
        mut rows: Vec<RowResult>,
        latency: Latency,
        relay_plain_peak_rss_bytes: u64,
        transfers_took: Duration,
    ) -> Report {
        let direct = rows
            .iter()
            .find(|r| r.key == DIRECT)
            .and_then(|r| r.mib_per_sec);
        for row in &mut rows {
            row.ratio_to_direct = row.mib_per_sec.zip(direct).map(|(r, d)| r / d);
        }
        let rate = |key: &str| {
            rows.iter()
                .find(|r| r.key == key)
                .and_then(|r| r.mib_per_sec)
        };
        let relay_tls_to_rustls_in_memory = rate("relay_tls")
            .zip(rate("rustls_in_memory"))
            .map(|(t, m)| t / m);
        let pair_to_relay_tls = rate("relay_pair")
            .zip(rate("relay_tls"))
            .map(|(p, t)| p / t);
        let plain_pair_to_relay_plain = rate("relay_pair_plain")
            .zip(rate("relay_plain"))
            .map(|(p, r)| p / r);
        Report {
            quick: opts.quick,
            cpus: std::thread::available_parallelism().map_or(0, |n| n.get()),
            taken_at: humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string(),
            machine: machine(),
            stream_bytes,
            stream_data_mib,
            repetitions,
            rows,
            relay_tls_to_rustls_in_memory,
            pair_to_relay_tls,
            plain_pair_to_relay_plain,
            latency,
            relay_plain_peak_rss_bytes,
            transfers_secs: transfers_took.as_secs_f64(),
            relay_cpu: Vec::new(),
            tunnel_connections: Vec::new(),
        }
    }

    /// The table and the lines under it, as Markdown.
    pub fn table(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(
            out,
            "\nnetbench{}: a {} MiB clone-shaped stream (1 MiB DATA packets) over loopback; \
             sender, receiver and each peer in its own process; median of {} \
             transfers per row, rows interleaved round by round; taken {} on {}\n",
            if self.quick { " --quick" } else { "" },
            self.stream_data_mib,
            self.repetitions,
            self.taken_at,
            self.machine
        );
        let _ = writeln!(out, "| path | MiB/s | min-max MiB/s | vs direct |");
        let _ = writeln!(out, "|---|---:|---:|---:|");
        for row in &self.rows {
            match (&row.skipped, row.mib_per_sec) {
                (Some(why), _) => {
                    let _ = writeln!(out, "| {} | skipped: {why} | | |", row.label);
                }
                (None, Some(rate)) => {
                    let _ = writeln!(
                        out,
                        "| {} | {rate:.0} | {:.0}-{:.0} | {:.2}x |",
                        row.label,
                        row.min_mib_per_sec.unwrap_or(rate),
                        row.max_mib_per_sec.unwrap_or(rate),
                        row.ratio_to_direct.unwrap_or(f64::NAN)
                    );
                }
                (None, None) => {
                    let _ = writeln!(out, "| {} | not measured | | |", row.label);
                }
            }
        }
        let _ = writeln!(out);
        if let Some(ratio) = self.relay_tls_to_rustls_in_memory {
            let _ = writeln!(
                out,
                "clone-relay with TLS on both legs: {ratio:.2}x of rustls in memory (target: at least 0.5x)"
            );
        }
        if let Some(ratio) = self.pair_to_relay_tls {
            let _ = writeln!(
                out,
                "the pair (mutual-TLS tunnel): {ratio:.2}x of one relay with TLS on both legs (target: at least 0.9x)"
            );
        }
        if let Some(ratio) = self.plain_pair_to_relay_plain {
            let _ = writeln!(
                out,
                "the pair with --tunnel-plain: {ratio:.2}x of one plain relay (target: at least 0.6x)"
            );
        }
        let l = &self.latency;
        let _ = writeln!(
            out,
            "added latency through clone-relay ({} round trips each of COM_PING after login, \
             direct and relayed alternating in {} runs): \
             p50 {:+.1} us (direct {:.1} us, relay {:.1} us), p99 {:+.1} us (direct {:.1} us, \
             relay {:.1} us) (target: p99 under 100 us)",
            l.round_trips,
            self.repetitions,
            l.added_p50_us,
            l.direct.p50_us,
            l.relay.p50_us,
            l.added_p99_us,
            l.direct.p99_us,
            l.relay.p99_us
        );
        let _ = writeln!(
            out,
            "clone-relay peak RSS (VmHWM) after carrying the plain row: {:.1} MiB (target: under 64 MiB)",
            self.relay_plain_peak_rss_bytes as f64 / MIB
        );
        if !self.relay_cpu.is_empty() {
            let each: Vec<String> = self
                .relay_cpu
                .iter()
                .map(|c| {
                    format!(
                        "{} {:.2} + {:.2}",
                        c.relay, c.user_secs_per_gib, c.system_secs_per_gib
                    )
                })
                .collect();
            let _ = writeln!(
                out,
                "relay CPU per GiB carried, user + system seconds (/proc/PID/stat, timed rounds): {}",
                each.join("; ")
            );
        }
        for t in &self.tunnel_connections {
            let _ = writeln!(
                out,
                "the pair's tunnel, {}: {} streams at once, one connection each, {:.0} MiB/s in all; \
                 one stream alone (the most one shared connection could carry) {:.0} MiB/s; {:.2}x",
                t.conditions,
                t.streams,
                t.together_mib_per_sec,
                t.one_stream_mib_per_sec,
                t.together_mib_per_sec / t.one_stream_mib_per_sec
            );
        }
        out
    }
}

/// The CPU model, the CPU count and the kernel's release, as this machine reports them.
fn machine() -> String {
    let model = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|info| {
            info.lines()
                .find_map(|l| l.strip_prefix("model name"))
                .and_then(|rest| rest.split_once(':'))
                .map(|(_, name)| name.trim().to_string())
        })
        .unwrap_or_else(|| "an unknown CPU".into());
    let cpus = std::thread::available_parallelism().map_or(0, |n| n.get());
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|r| r.trim().to_string())
        .unwrap_or_else(|_| "unknown".into());
    format!("{cpus} x {model}, Linux {kernel}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_are_nearest_rank() {
        let samples: Vec<f64> = (1..=200).rev().map(f64::from).collect();
        let p = Percentiles::of(&samples);
        assert_eq!((p.p50_us, p.p99_us), (100.0, 198.0));
        let one = Percentiles::of(&[7.0]);
        assert_eq!((one.p50_us, one.p99_us), (7.0, 7.0));
    }

    #[test]
    fn the_median_of_an_even_count_is_the_mean_of_the_middle_two() {
        assert_eq!(median(&[]), None);
        assert_eq!(median(&[1.0, 5.0, 9.0]), Some(5.0));
        assert_eq!(median(&[1.0, 3.0, 5.0, 100.0]), Some(4.0));
    }
}
