//! The soak tier: long end-to-end runs, built only with `--features harness/soak` (cargo refuses
//! `--test soak` without it) and run with
//! `cargo test -p harness --features soak --test soak -- --nocapture`.
//! The same feature makes the end-to-end tier's tests run their soak extras (more seeds, more
//! clones, baselines without the relay).

mod clone_times;
#[path = "../e2e/link_drops/rig.rs"]
#[allow(dead_code)]
mod link_drops;

use harness::Transport;
use harness::require_docker;

/// The ten resets of the link-drop tests, with TLS on both legs (the relay on its defaults).
#[tokio::test(flavor = "multi_thread")]
async fn a_tls_clone_survives_ten_resets() -> anyhow::Result<()> {
    require_docker().await?;
    link_drops::ten_resets(Transport::Default).await
}
