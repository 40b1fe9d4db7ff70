//! Whether Docker is reachable. In CI (`CI=true`) a test that needs it must fail when it is not;
//! elsewhere the test is skipped with a message.

use tokio::process::Command;

/// True when `CI` says this is a CI run.
pub fn in_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| v == "true" || v == "1")
}

/// Checks that the Docker engine answers. Returns false (after saying why) when a test should be
/// skipped; panics in CI, where a missing engine is a failure.
pub async fn docker_available(test: &str) -> bool {
    let reason = match Command::new("docker")
        .args(["info", "--format", "{{.ServerVersion}}"])
        .output()
        .await
    {
        Ok(out) if out.status.success() => return true,
        Ok(out) => String::from_utf8_lossy(&out.stderr).trim().to_string(),
        Err(e) => format!("cannot run docker: {e}"),
    };
    if in_ci() {
        panic!("{test} needs Docker, which is not available in CI: {reason}");
    }
    eprintln!("skipping {test}: Docker is not available ({reason})");
    false
}
