//! `netbench --quick` end to end, with real processes: it builds (or finds) clone-relay and
//! chaos, runs every row, and prints the table with a positive figure in each row. No timing is
//! judged here: the figures only have to exist.
//!
//! It is in the end-to-end tier (ignored unless selected): it runs cargo to build the binaries
//! it compares, and installs socat from Debian's packages when missing. Every row must have been
//! measured: a socat row that says "skipped: ..." fails it.

use std::path::PathBuf;
use std::process::Command;

use serde_json::Value;

/// Every row of the table, by its key in the JSON.
const ROWS: [&str; 12] = [
    "direct",
    "relay_plain",
    "relay_tls",
    "relay_capped",
    "relay_pair",
    "relay_pair_plain",
    "relay_pair_spill",
    "chaos",
    "socat",
    "socat_1mib",
    "direct_tls",
    "rustls_in_memory",
];

fn positive(v: &Value) -> f64 {
    let x = v.as_f64().unwrap_or_else(|| panic!("not a number: {v}"));
    assert!(x > 0.0 && x.is_finite(), "not positive: {x}");
    x
}

#[test]
#[ignore = "slow: builds the release binaries with cargo, may install socat"]
fn quick_run_prints_every_row_with_positive_figures() {
    let json = PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("netbench-quick-{}.json", std::process::id()));
    let out = Command::new(env!("CARGO_BIN_EXE_netbench"))
        .args(["--quick", "--json"])
        .arg(&json)
        .output()
        .expect("run netbench");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "netbench: {}\n{stdout}\n{stderr}",
        out.status
    );
    println!("{stdout}");

    let report: Value =
        serde_json::from_str(&std::fs::read_to_string(&json).expect("the JSON")).expect("JSON");
    let _ = std::fs::remove_file(&json);
    let rows = report["rows"].as_array().expect("rows");
    for key in ROWS {
        let row = rows
            .iter()
            .find(|r| r["key"] == key)
            .unwrap_or_else(|| panic!("no row {key}"));
        let label = row["label"].as_str().expect("label");
        let line = stdout
            .lines()
            .find(|l| l.starts_with(&format!("| {label} |")))
            .unwrap_or_else(|| panic!("no table line for {label}:\n{stdout}"));
        if let Some(why) = row["skipped"].as_str() {
            panic!("{key} was not measured: {why}\n{line}");
        }
        positive(&row["mib_per_sec"]);
        positive(&row["ratio_to_direct"]);
        assert_eq!(row["transfers"], report["repetitions"], "{key}");
        assert!(line.ends_with("x |"), "{line}");
    }
    positive(&report["relay_tls_to_rustls_in_memory"]);
    positive(&report["pair_to_relay_tls"]);
    positive(&report["plain_pair_to_relay_plain"]);
    positive(&report["relay_plain_peak_rss_bytes"]);
    let taken_at = report["taken_at"].as_str().expect("taken_at");
    let machine = report["machine"].as_str().expect("machine");
    assert!(
        taken_at.ends_with('Z') && taken_at.len() == 20,
        "{taken_at}"
    );
    assert!(machine.contains("Linux"), "{machine}");
    assert!(
        stdout.contains(&format!("taken {taken_at} on {machine}")),
        "the table does not say when and where it was taken:\n{stdout}"
    );
    let cpu = report["relay_cpu"].as_array().expect("relay_cpu");
    assert_eq!(cpu.len(), 6, "{cpu:?}");
    for relay in cpu {
        let total = relay["user_secs_per_gib"].as_f64().unwrap_or(-1.0)
            + relay["system_secs_per_gib"].as_f64().unwrap_or(-1.0);
        assert!(total >= 0.0, "{relay}");
        // A quick run is a few clock ticks of a fast relay; the TLS one always shows.
        if relay["relay"] == "TLS" {
            assert!(total > 0.0, "the TLS relay used no CPU: {relay}");
        }
    }
    let tunnel = report["tunnel_connections"]
        .as_array()
        .expect("tunnel_connections");
    assert_eq!(tunnel.len(), 2, "{tunnel:?}");
    for condition in tunnel {
        positive(&condition["one_stream_mib_per_sec"]);
        positive(&condition["together_mib_per_sec"]);
        let line = format!(
            "the pair's tunnel, {}: {} streams at once",
            condition["conditions"].as_str().expect("conditions"),
            condition["streams"]
        );
        assert!(stdout.contains(&line), "no {line:?} line:\n{stdout}");
    }
    for side in ["direct", "relay"] {
        positive(&report["latency"][side]["p50_us"]);
        positive(&report["latency"][side]["p99_us"]);
    }
    assert!(report["latency"]["added_p50_us"].is_f64());
    for needle in [
        "of rustls in memory",
        "of one relay with TLS on both legs",
        "of one plain relay",
        "added latency",
        "peak RSS",
        "relay CPU per GiB",
    ] {
        assert!(stdout.contains(needle), "no {needle:?} line:\n{stdout}");
    }
}
