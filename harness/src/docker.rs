//! Whether Docker is reachable. End-to-end tests are in their own tier (ignored unless selected,
//! see `docs/testing.md`); once selected, one without Docker fails, naming what is missing,
//! whatever `CI` says.

use anyhow::bail;
use tokio::process::Command;

/// Whether this build runs the soak tier's extras (`--features harness/soak`): more seeds, more
/// clones, baselines without the relay's detection.
pub const SOAK: bool = cfg!(feature = "soak");

/// Checks that the Docker engine answers; the error names the engine and why it did not.
pub async fn require_docker() -> anyhow::Result<()> {
    let reason = match Command::new("docker")
        .args(["info", "--format", "{{.ServerVersion}}"])
        .output()
        .await
    {
        Ok(out) if out.status.success() => return Ok(()),
        Ok(out) => String::from_utf8_lossy(&out.stderr).trim().to_string(),
        Err(e) => format!("cannot run docker: {e}"),
    };
    let host = std::env::var("DOCKER_HOST").unwrap_or_else(|_| "the default socket".into());
    bail!("this test needs a running Docker engine ({host}), which did not answer: {reason}")
}
