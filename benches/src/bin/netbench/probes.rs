//! What a run reads of the processes it measures: peak resident set and CPU seconds (from
//! `/proc`), the relay's `/metrics`, and a `perf record` profile.

use std::io::Read;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use anyhow::{Context, Result, bail};

use crate::procs::Proc;

/// VmHWM (peak resident set) of process `pid`, in bytes.
pub fn peak_rss(pid: u32) -> Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let line = status
        .lines()
        .find(|l| l.starts_with("VmHWM:"))
        .context("no VmHWM in /proc/PID/status")?;
    let kib: u64 = line
        .split_whitespace()
        .nth(1)
        .context("VmHWM without a number")?
        .parse()?;
    Ok(kib * 1024)
}

/// The CPU time process `pid` has used so far, (user, system) in seconds, from /proc/PID/stat.
pub fn cpu_seconds(pid: u32) -> Result<(f64, f64)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // The fields after the command name, which sits in parentheses and may hold spaces: the
    // state is the first of them, utime and stime (fields 14 and 15 of the line) the 12th and
    // 13th.
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .context("no command name in /proc/PID/stat")?
        .1
        .split_whitespace()
        .collect();
    let ticks = |i: usize| -> Result<f64> {
        Ok(fields
            .get(i)
            .context("/proc/PID/stat is short")?
            .parse::<f64>()?)
    };
    let hz = clock_ticks_per_second();
    Ok((ticks(11)? / hz, ticks(12)? / hz))
}

/// The kernel's clock ticks per second (`getconf CLK_TCK`; 100 where that fails).
fn clock_ticks_per_second() -> f64 {
    Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|out| String::from_utf8(out.stdout).ok())
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(100.0)
}

/// A value from the relay's `/metrics` (the sample `series`).
pub fn metric(admin: SocketAddr, series: &str) -> Result<f64> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let (status, text) = runtime.block_on(plumbing::http::request(admin, "GET", "/metrics"))?;
    anyhow::ensure!(status == 200, "/metrics answered {status}");
    plumbing::prometheus_text::value(&text, series)
        .with_context(|| format!("no {series} in /metrics"))
}

/// `perf record -g` attached to a process until [`Perf::stop`].
#[derive(Debug)]
pub struct Perf {
    proc: Proc,
    pub file: PathBuf,
}

impl Perf {
    pub fn start(pid: u32, file: &Path) -> Result<Perf> {
        let mut command = Command::new("perf");
        command
            // cpu-clock: virtual machines often lack the hardware counters `cycles` needs.
            .args(["record", "-e", "cpu-clock", "-g", "-o"])
            .arg(file)
            .args(["-p", &pid.to_string()]);
        let mut proc = Proc::spawn("perf", &mut command, false, Stdio::null())?;
        std::thread::sleep(Duration::from_millis(500));
        if !proc.running() {
            return Err(proc.failure("exited at start"));
        }
        Ok(Perf {
            proc,
            file: file.to_path_buf(),
        })
    }

    /// Stops the recording (SIGINT, so perf writes its file) and waits for perf to end.
    pub fn stop(mut self) -> Result<()> {
        let pid = self.proc.pid().to_string();
        Command::new("kill").args(["-INT", &pid]).status()?;
        let status = self.proc.child.wait()?;
        let mut stderr = String::new();
        if let Some(mut e) = self.proc.child.stderr.take() {
            let _ = e.read_to_string(&mut stderr);
        }
        if !self.file.is_file() {
            bail!("perf wrote no {} ({status}): {stderr}", self.file.display());
        }
        Ok(())
    }
}
