//! End to end through real MySQL: the relay follows each clone as one session (roles, phases,
//! data bytes against the recipient's own figures), sees a reset clone resume, and shrugs off
//! hostile connections while a clone runs.

use std::time::Duration;

use harness::clone::{CloneOutcome, clone_instance};
use harness::dataset::{Dataset, mismatches};
use harness::image::mysql_image;
use harness::{MysqlServer, RelayFixture, ServerOptions};
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const DATASET_BYTES: u64 = 100 * 1024 * 1024;
const CLONE_TIMEOUT: Duration = Duration::from_secs(300);
/// Bound on waiting for a clone session to reach a point of its transfer.
const SESSION_WAIT: Duration = Duration::from_secs(120);
const MIB: u64 = 1024 * 1024;

/// A seeded donor, a relay in front of it (with `config` adjusted), and a recipient that may
/// clone only through the relay, started with `recipient_args`.
async fn setup(
    adjust: impl FnOnce(&mut clone_relay::Config),
    recipient_args: &[&str],
) -> anyhow::Result<(MysqlServer, Dataset, RelayFixture, MysqlServer)> {
    let image = mysql_image().await?;
    let donor = MysqlServer::start(&image, ServerOptions::donor()).await?;
    let dataset = Dataset::of_size(DATASET_BYTES);
    dataset.seed(&donor).await?;
    let mut config = RelayFixture::config(donor.addr());
    adjust(&mut config);
    let relay = RelayFixture::start_with(config)?;
    let mut options = ServerOptions::recipient(2, &[relay.addr()]);
    options.extra_args = recipient_args.iter().map(ToString::to_string).collect();
    let recipient = MysqlServer::start(&image, options).await?;
    Ok((donor, dataset, relay, recipient))
}

async fn assert_same_data(
    dataset: &Dataset,
    donor: &MysqlServer,
    recipient: &MysqlServer,
) -> anyhow::Result<()> {
    let donor_sums = dataset.checksums(donor).await?;
    let recipient_sums = dataset.checksums(recipient).await?;
    assert_eq!(
        mismatches(&donor_sums, &recipient_sums),
        Vec::<String>::new()
    );
    Ok(())
}

fn within_one_percent(a: u64, b: u64) -> bool {
    a.abs_diff(b) * 100 <= b
}

fn strings(v: &Value, key: &str) -> Vec<String> {
    v.as_array()
        .unwrap_or(&Vec::new())
        .iter()
        .map(|x| x[key].as_str().unwrap_or_default().to_string())
        .collect()
}

pub async fn a_clone_is_one_session_with_main_aux_and_workers() -> anyhow::Result<()> {
    // Autotune off with room for three workers: they attach as soon as data flows.
    let (donor, dataset, relay, recipient) = setup(
        |_| {},
        &[
            "--clone-autotune-concurrency=OFF",
            "--clone-max-concurrency=4",
        ],
    )
    .await?;

    let outcome = clone_instance(&recipient, relay.addr(), CLONE_TIMEOUT).await?;
    assert!(outcome.completed(), "{outcome:?}");
    assert_same_data(&dataset, &donor, &recipient).await?;

    let view = relay.sessions_json().await?;
    let sessions = view["sessions"].as_array().expect("sessions");
    assert_eq!(sessions.len(), 1, "{view:#}");
    let session = &sessions[0];
    assert_eq!(session["state"], "completed", "{session:#}");
    let roles = strings(&session["connections"], "role");
    for role in ["main", "aux", "worker"] {
        assert!(roles.iter().any(|r| r == role), "no {role} in {roles:?}");
    }
    assert_eq!(
        strings(&session["history"], "to"),
        ["initializing", "transferring", "completed"]
    );
    assert_eq!(session["resume_count"], 0);
    let file_copy = session["stage_bytes"]["file_copy"].as_u64().unwrap_or(0);
    let data = session["data_bytes"].as_u64().unwrap_or(0);
    assert!(
        within_one_percent(file_copy, outcome.file_copy_bytes),
        "relay saw {file_copy} FILE COPY bytes, the recipient {}",
        outcome.file_copy_bytes
    );
    // All stages: pages the donor changed during FILE COPY (its purge after the seeding, say)
    // come again in PAGE COPY.
    assert!(
        within_one_percent(data, outcome.data_bytes),
        "relay saw {data} data bytes, the recipient {}",
        outcome.data_bytes
    );
    assert_eq!(session["progress"]["percent"], 100.0);
    eprintln!(
        "relay data bytes {data}, FILE COPY {file_copy}, recipient's FILE COPY {} (ratio {:.4})",
        outcome.file_copy_bytes,
        file_copy as f64 / outcome.file_copy_bytes as f64
    );

    let metrics = relay.metrics_text().await?;
    assert!(
        metrics.contains("clone_relay_sessions{state=\"completed\"} 1"),
        "{metrics}"
    );
    relay.stop().await
}

pub async fn a_reset_mid_transfer_resumes_the_same_session() -> anyhow::Result<()> {
    // MySQL's own cap keeps the clone going long enough for the reset to land mid-transfer.
    let (donor, dataset, mut relay, recipient) =
        setup(|_| {}, &["--clone-max-network-bandwidth=20"]).await?;
    // The test resets the session itself.
    relay.expect_faults();

    let clone = clone_instance(&recipient, relay.addr(), CLONE_TIMEOUT);
    let cut = async {
        let id = relay.session_past(30 * MIB, SESSION_WAIT).await?;
        anyhow::Ok(relay.relay().registry().abort_session(id))
    };
    let (outcome, reset) = tokio::join!(clone, cut);
    let reset = reset?;
    let outcome: CloneOutcome = outcome?;

    assert!(reset >= 2, "main and aux were reset, got {reset}");
    assert!(outcome.completed(), "{outcome:?}");
    assert_same_data(&dataset, &donor, &recipient).await?;
    let view = relay.sessions();
    assert_eq!(view.sessions.len(), 1, "{view:#?}");
    let session = &view.sessions[0];
    assert_eq!(session.state.as_str(), "completed");
    assert_eq!(session.resume_count, 1, "{session:#?}");
    eprintln!(
        "resumed after {} ms outage, {} bytes sent again, clone {:.1} s",
        session.resumes[0].outage_ms,
        session.resent_bytes,
        outcome.statement_time.as_secs_f64()
    );
    // Only blocks in flight at the reset are sent again.
    assert!(session.resent_bytes <= 16 * MIB, "{}", session.resent_bytes);
    relay.stop().await
}

/// A hostile client; returns once the relay has closed it.
async fn hostile(relay: std::net::SocketAddr, bytes: &'static [u8]) -> anyhow::Result<()> {
    let mut s = TcpStream::connect(relay).await?;
    let mut greeting = [0u8; 4];
    s.read_exact(&mut greeting).await?;
    s.write_all(bytes).await?;
    let mut rest = Vec::new();
    tokio::time::timeout(Duration::from_secs(20), s.read_to_end(&mut rest)).await??;
    Ok(())
}

pub async fn hostile_connections_do_not_disturb_a_clone() -> anyhow::Result<()> {
    let (donor, dataset, relay, recipient) = setup(
        |config| config.handshake_timeout = Duration::from_secs(2),
        &["--clone-max-network-bandwidth=20"],
    )
    .await?;

    let clone = clone_instance(&recipient, relay.addr(), CLONE_TIMEOUT);
    let attack = async {
        relay.session_past(10 * MIB, SESSION_WAIT).await?;
        tokio::try_join!(
            // A login request without protocol 4.1.
            hostile(relay.addr(), b"\x20\x00\x00\x01\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00"),
            // A 16 MiB length header.
            hostile(relay.addr(), b"\xff\xff\xff\x01\x85\xa2"),
            // Half a login packet, then silence.
            hostile(relay.addr(), b"\x64\x00\x00\x01\x85\xa2\xb8\x19"),
        )
    };
    let (outcome, attacked) = tokio::join!(clone, attack);
    attacked?;
    let outcome = outcome?;

    assert!(outcome.completed(), "{outcome:?}");
    assert_same_data(&dataset, &donor, &recipient).await?;
    let view = relay.sessions();
    assert_eq!(view.sessions.len(), 1);
    assert_eq!(view.sessions[0].resume_count, 0);
    let reasons: Vec<String> = view
        .rejected
        .iter()
        .map(|c| c.close_reason.clone().unwrap_or_default())
        .collect();
    assert_eq!(reasons.len(), 3, "{reasons:?}");
    for expected in ["protocol 4.1", "before auth", "no login within"] {
        assert!(
            reasons.iter().any(|r| r.contains(expected)),
            "no reason mentions {expected:?}: {reasons:?}"
        );
    }
    let metrics = relay.metrics_text().await?;
    for kind in [
        "protocol_malformed",
        "protocol_oversize",
        "handshake_timeout",
    ] {
        assert!(
            metrics.contains(&format!(
                "clone_relay_connections_closed_total{{reason=\"{kind}\"}} 1"
            )),
            "{kind} missing from {metrics}"
        );
    }
    relay.stop().await
}
