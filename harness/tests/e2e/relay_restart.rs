//! The relay restarts in the middle of a clone, end to end with real MySQL: two donors hold
//! different data; the clone goes to donor B (the first free of `[B, A]`), and once it has
//! carried 20 MiB the relay is stopped and a new one started on the same address with the same
//! state directory and the donors in the other order, `[A, B]`. Only the affinity file can send
//! the recipient's resume to B (on A it would fail for good: "could not find existing clone").

use std::path::PathBuf;
use std::time::{Duration, Instant};

use chaos::{ChaosProxy, Direction, FaultKind, FaultSpec};
use clone_relay::session::affinity;
use harness::clone::clone_instance;
use harness::dataset::Dataset;
use harness::image::mysql_image;
use harness::{MysqlServer, RelayFixture, ServerOptions};

const MIB: u64 = 1024 * 1024;
const DATASET_BYTES: u64 = 110 * MIB;
/// Donor A's data: the same tables, far fewer rows, so a clone from A is told apart.
const OTHER_DATASET_BYTES: u64 = 8 * MIB;
const RESTART_AT_BYTES: u64 = 20 * MIB;
const CLONE_TIMEOUT: Duration = Duration::from_secs(600);

/// A cap on the donor-to-recipient direction, shared by all connections through the proxy.
fn capped(rate_mib: u64) -> FaultSpec {
    FaultSpec::new(FaultKind::Bandwidth {
        rate_bytes_per_sec: rate_mib * MIB,
        shared_group: Some("link".into()),
    })
    .direction(Direction::Downstream)
}

/// A fresh, empty state directory for the relay.
fn state_dir() -> anyhow::Result<PathBuf> {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .as_nanos();
    let dir = std::env::temp_dir().join(format!(
        "clone-relay-restart-{}-{nanos}",
        std::process::id()
    ));
    std::fs::create_dir_all(&dir)?;
    Ok(dir)
}

pub async fn a_resume_after_a_relay_restart_reaches_its_donor() -> anyhow::Result<()> {
    let image = mysql_image().await?;
    let mut options = ServerOptions::donor();
    options.name = "donor-b".into();
    let donor_b = MysqlServer::start(&image, options).await?;
    let dataset = Dataset::of_size(DATASET_BYTES);
    let seeded = dataset.seed(&donor_b).await?;
    let mut options = ServerOptions::donor();
    options.name = "donor-a".into();
    let donor_a = MysqlServer::start(&image, options).await?;
    Dataset::of_size(OTHER_DATASET_BYTES).seed(&donor_a).await?;
    // B through the chaos proxy, so the clone is still under way when the relay restarts.
    let chaos_b = ChaosProxy::start(
        "127.0.0.1:0".parse()?,
        donor_b.addr().to_string(),
        1,
        vec![capped(20)],
    )
    .await?;
    let (b, a) = (chaos_b.addr(), donor_a.addr());

    let dir = state_dir()?;
    let mut config = RelayFixture::config_for(&[b, a]);
    config.state_dir = Some(dir.clone());
    let mut first = RelayFixture::start_with(config)?;
    first.expect_faults();
    let addr = first.addr();
    let recipient = MysqlServer::start(&image, ServerOptions::recipient(2, &[addr])).await?;

    let started = Instant::now();
    let clone = clone_instance(&recipient, addr, CLONE_TIMEOUT);
    let restart = async {
        first
            .session_past(RESTART_AT_BYTES, Duration::from_secs(120))
            .await?;
        let remembered = std::fs::read_to_string(dir.join(affinity::FILE_NAME))?;
        let relay_1 = first.relay().clone();
        let stopping = Instant::now();
        first.stop().await?;
        // What relay #1 saw, up to its last byte (it carries on through its shutdown grace).
        let before = relay_1.registry().view().sessions.last().cloned();
        let mut config = RelayFixture::config_for(&[a, b]);
        config.state_dir = Some(dir.clone());
        let mut second = RelayFixture::start_at(addr, config)?;
        second.expect_faults();
        anyhow::Ok((
            second,
            before,
            remembered,
            stopping.elapsed(),
            started.elapsed(),
        ))
    };
    let (outcome, restarted) = tokio::join!(clone, restart);
    let (outcome, (second, before, remembered, gap, restarted_at)) = (outcome?, restarted?);
    let took = started.elapsed();

    let before = before.ok_or_else(|| anyhow::anyhow!("relay #1 had no session"))?;
    assert_eq!(before.upstream, b.to_string(), "relay #1: {before:#?}");
    assert!(
        remembered.contains(&b.to_string()),
        "affinity file before the restart: {remembered}"
    );
    assert!(outcome.completed(), "{outcome:?}");
    assert_eq!(
        dataset.compare(&donor_b, &recipient).await?,
        Vec::<String>::new(),
        "the recipient's data differs from donor B's"
    );
    assert!(
        !dataset.compare(&donor_a, &recipient).await?.is_empty(),
        "donor A's data cannot be told from B's"
    );
    let view = second.sessions();
    let upstreams: Vec<&str> = view.sessions.iter().map(|s| s.upstream.as_str()).collect();
    assert_eq!(upstreams, [b.to_string()], "relay #2: {view:#?}");
    let session = &view.sessions[0];
    assert_eq!(session.state.as_str(), "completed", "{session:#?}");
    assert!(session.resume_count >= 1, "{session:#?}");
    let resume = &session.resumes[0];
    // From relay #1 closing the clone's last connection to relay #2 seeing the REINIT.
    let closed_at_ms = before
        .connections
        .iter()
        .filter_map(|c| c.closed_at_ms)
        .max()
        .unwrap_or(session.started_at_ms);
    let outage_ms = session.started_at_ms.saturating_sub(closed_at_ms);

    eprintln!(
        "relay restart: data set {seeded} bytes; relay #1 carried {} data bytes to {b} and was \
         stopped {:.1} s into the clone ({:.1} s to stop it and start relay #2 on {addr}); \
         the recipient's REINIT reached relay #2 {outage_ms} ms after relay #1 closed the clone; \
         relay #2 carried {} data bytes on {} resume(s), the first data {:?} ms after the REINIT, \
         {} bytes sent again; clone {:.1} s (statement {:.1} s), recipient counted {} data bytes, \
         relays together {} ({:.3}x)",
        before.data_bytes,
        restarted_at.as_secs_f64() - gap.as_secs_f64(),
        gap.as_secs_f64(),
        session.data_bytes,
        session.resume_count,
        resume.resumed_after_ms,
        session.resent_bytes,
        took.as_secs_f64(),
        outcome.statement_time.as_secs_f64(),
        outcome.data_bytes,
        before.data_bytes + session.data_bytes,
        (before.data_bytes + session.data_bytes) as f64 / outcome.data_bytes as f64,
    );
    second.stop().await?;
    std::fs::remove_dir_all(&dir)?;
    Ok(())
}
