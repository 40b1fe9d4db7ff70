//! The drill end to end, as its users run it: the `clone-drill` binary with real MySQL.
//!
//! - Every named scenario and the checked-in `harness/scenarios/cross-zone.toml`, on a short
//!   data set with the faults landing mid-transfer, sharing one seeded donor and one recipient
//!   (the two-donor scenario adds a second of each), with `--quiet` and `--json`: it exits 0,
//!   prints the report table only (nothing on stderr), and its JSON has the documented schema
//!   (docs/drill.md). The table goes to `$CARGO_TARGET_TMPDIR/drill-report.txt` (and the JSON
//!   beside it), which CI shows.
//! - A scenario file whose expectation a clean clone cannot meet: exit 1, the failed check named.
//! - A scenario file with an unknown key: exit 2, the key and line named, before any container.
//!
//! `CHAOS_SEED=N` moves the seed, and with it every fault offset and loss decision.

use std::path::{Path, PathBuf};
use std::process::Output;

use harness::drill::scenario::NAMES;

use serde_json::Value;
use tokio::process::Command;

/// About 150 MiB carried per clone: at the scenarios' 40 MiB/s link, 4 s of FILE COPY.
const SIZE_MIB: &str = "40";

fn scratch(name: &str) -> PathBuf {
    Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("drill-{}-{name}", std::process::id()))
}

async fn clone_drill(args: &[&str]) -> anyhow::Result<Output> {
    Ok(Command::new(env!("CARGO_BIN_EXE_clone-drill"))
        .args(args)
        .output()
        .await?)
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// The keys docs/drill.md gives for the report, each scenario and each clone, with the JSON type
/// each holds.
fn assert_schema(report: &Value) {
    let has = |v: &Value, key: &str, check: fn(&Value) -> bool, what: &str| {
        assert!(
            v.get(key).is_some_and(check),
            "{what}.{key} is missing or of the wrong type: {v}"
        );
    };
    for (key, check) in [
        ("image", Value::is_string as fn(&Value) -> bool),
        ("tables", Value::is_u64),
        ("dataset_bytes", Value::is_u64),
        ("seed", Value::is_u64),
        ("duration_secs", Value::is_f64),
        ("passed", Value::is_boolean),
        ("scenarios", Value::is_array),
    ] {
        has(report, key, check, "report");
    }
    for s in report["scenarios"].as_array().unwrap() {
        for (key, check) in [
            ("scenario", Value::is_string as fn(&Value) -> bool),
            ("description", Value::is_string),
            ("seed", Value::is_u64),
            ("clones", Value::is_array),
            ("events", Value::is_array),
            ("checks", Value::is_array),
            ("passed", Value::is_boolean),
        ] {
            has(s, key, check, "scenario");
        }
        for c in s["checks"].as_array().unwrap() {
            has(c, "what", Value::is_string, "check");
            has(c, "ok", Value::is_boolean, "check");
            has(c, "found", Value::is_string, "check");
        }
        for c in s["clones"].as_array().unwrap() {
            for (key, check) in [
                ("recipient", Value::is_string as fn(&Value) -> bool),
                ("transport", Value::is_string),
                ("outcome", Value::is_string),
                ("clone_secs", Value::is_f64),
                ("data_bytes", Value::is_u64),
                ("resumes", Value::is_u64),
                ("detections", Value::is_array),
                ("resume_records", Value::is_array),
            ] {
                has(c, key, check, "clone");
            }
        }
    }
}

pub async fn the_drill_binary_passes_every_scenario_and_fails_what_it_must() -> anyhow::Result<()> {
    let seed = std::env::var("CHAOS_SEED").unwrap_or_else(|_| "1".into());
    let cross_zone = Path::new(env!("CARGO_MANIFEST_DIR")).join("scenarios/cross-zone.toml");
    let json = scratch("report.json");
    let out = clone_drill(&[
        "--scenario",
        "all",
        "--scenario-file",
        cross_zone.to_str().unwrap(),
        "--size-mib",
        SIZE_MIB,
        "--seed",
        &seed,
        "--no-direct",
        "--clone-timeout-secs",
        "180",
        "--quiet",
        "--json",
        json.to_str().unwrap(),
    ])
    .await?;
    let (stdout, stderr) = (text(&out.stdout), text(&out.stderr));
    println!("{stdout}");
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR"));
    std::fs::write(dir.join("drill-report.txt"), &stdout)?;
    let report: Value = serde_json::from_str(&std::fs::read_to_string(&json)?)?;
    std::fs::rename(&json, dir.join("drill-report.json"))?;
    assert_eq!(
        out.status.code(),
        Some(0),
        "a scenario failed (seed {seed}):\n{stdout}{stderr}"
    );
    assert!(stderr.is_empty(), "--quiet, yet on stderr:\n{stderr}");
    assert!(stdout.starts_with("clone-drill: image "), "{stdout}");
    assert_schema(&report);
    let ran: Vec<&str> = report["scenarios"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["scenario"].as_str().unwrap())
        .collect();
    let mut want = NAMES.to_vec();
    want.push("cross-zone");
    assert_eq!(ran, want, "every named scenario and the file ran, in order");
    for s in report["scenarios"].as_array().unwrap() {
        let name = s["scenario"].as_str().unwrap();
        assert!(s["passed"] == true, "{name}: {}", s["checks"]);
        assert!(!s["clones"].as_array().unwrap().is_empty(), "{name}");
        assert!(
            stdout.lines().any(|l| l.contains(name)),
            "{name} not in the table:\n{stdout}"
        );
    }

    // A clean clone cannot resume five times: the expectation fails, exit 1.
    let must_fail = scratch("must-fail.toml");
    std::fs::write(
        &must_fail,
        "name = \"expects-resumes\"\ndescription = \"a clean clone expected to resume\"\n\
         [expect]\noutcome = \"completed\"\nmin_resumes = 5\n",
    )?;
    let out = clone_drill(&[
        "--scenario-file",
        must_fail.to_str().unwrap(),
        "--size-mib",
        "8",
        "--no-direct",
        "--quiet",
    ])
    .await?;
    let stdout = text(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{stdout}{}", text(&out.stderr));
    assert!(
        stdout.contains("FAILED expects-resumes"),
        "the failed check is named:\n{stdout}"
    );

    // An unknown key: refused at start, exit 2, with the key and its line.
    let bad = scratch("bad.toml");
    std::fs::write(&bad, "name = \"bad\"\n[expect]\ncolour = 1\n")?;
    let out = clone_drill(&["--scenario-file", bad.to_str().unwrap()]).await?;
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("unknown key `colour` in expect (line 3)"),
        "{stderr}"
    );
    for file in [must_fail, bad] {
        let _ = std::fs::remove_file(file);
    }
    Ok(())
}
