//! A clone message the relay does not know, from a real donor, is carried: the chaos proxy
//! between the relay and the donor injects a well-framed clone response with a type byte no
//! MySQL has (0x77) at the first packet boundary after 4 MiB of each donor connection's stream.
//!
//! - With the harness's protocol-level recipient, which passes over responses it does not know,
//!   the clone completes through the relay; the relay's session says it stopped following and
//!   why, and ends as `unfollowed`.
//! - With a real 9.7.4 recipient, the clone fails with the same errno and message through the
//!   relay as with the same injection and no relay.
//!
//! In both, the relay closed no connection itself.

use std::collections::BTreeMap;
use std::time::Duration;

use anyhow::{Context, Result, ensure};
use chaos::{ChaosProxy, Direction, FaultKind, FaultSpec};
use harness::clone::clone_instance;
use harness::clone_client;
use harness::dataset::Dataset;
use harness::image::mysql_image;
use harness::mysql::{DONOR_PASSWORD, DONOR_USER};
use harness::{MysqlServer, RelayFixture, ServerOptions};

const DATASET_BYTES: u64 = 32 * 1024 * 1024;
const INJECT_AFTER_BYTES: u64 = 4 * 1024 * 1024;
const CLONE_TIMEOUT: Duration = Duration::from_secs(300);
const DONOR_FREE_WAIT: Duration = Duration::from_secs(60);
const SEED: u64 = 23;
/// Why a connection ends when a peer ends it: anything else is the relay's own doing.
const PEER_CLOSES: [&str; 4] = ["normal", "peer_reset", "downstream_error", "upstream_error"];

fn unknown_response() -> FaultSpec {
    FaultSpec::new(FaultKind::InjectPacket {
        after_bytes: INJECT_AFTER_BYTES,
        payload_hex: "77c10ea11e".into(),
    })
    .direction(Direction::Downstream)
}

/// The relay's closes by reason, from its `/metrics`.
async fn closes(relay: &RelayFixture) -> Result<BTreeMap<String, u64>> {
    let text = relay.metrics_text().await?;
    let mut out = BTreeMap::new();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("clone_relay_connections_closed_total{reason=\"")
            && let Some((reason, n)) = rest.split_once("\"} ")
        {
            out.insert(reason.to_string(), n.parse()?);
        }
    }
    Ok(out)
}

fn only_peer_closes(closes: &BTreeMap<String, u64>) -> Result<()> {
    let own: Vec<_> = closes
        .iter()
        .filter(|(reason, n)| **n > 0 && !PEER_CLOSES.contains(&reason.as_str()))
        .collect();
    ensure!(
        own.is_empty(),
        "the relay closed connections itself: {own:?}"
    );
    Ok(())
}

pub async fn an_unknown_response_from_a_real_donor_is_carried_and_no_longer_followed() -> Result<()>
{
    let image = mysql_image().await?;
    // A recipient that fails mid-transfer leaves the donor's task waiting for a resume (5 min
    // by default); with 0 the donor ends it at once, so the next clone can start.
    let mut options = ServerOptions::donor();
    options.extra_args = vec!["--clone-donor-timeout-after-network-failure=0".into()];
    let donor = MysqlServer::start(&image, options).await?;
    Dataset::of_size(DATASET_BYTES).seed(&donor).await?;
    let chaos = ChaosProxy::start(
        "127.0.0.1:0".parse()?,
        donor.addr().to_string(),
        SEED,
        vec![unknown_response()],
    )
    .await?;
    let relay = RelayFixture::start(chaos.addr())?;

    // The protocol-level recipient: the clone completes through the relay.
    let run = tokio::time::timeout(
        CLONE_TIMEOUT,
        clone_client::clone_at_version(relay.addr(), DONOR_USER, DONOR_PASSWORD, 0x0103),
    )
    .await
    .context("the clone timed out")??;
    ensure!(run.acknowledged_states == [1, 2, 3, 4], "{run:?}");
    let injections = || {
        chaos
            .control()
            .decisions()
            .into_iter()
            .filter(|d| d.what.ends_with("injected"))
            .count()
    };
    ensure!(injections() == 1, "{:?}", chaos.control().decisions());
    donor.wait_until_clone_free(DONOR_FREE_WAIT).await?;
    let view = relay.sessions();
    let session = view.sessions.first().context("no session")?;
    let why = session.not_followed.as_deref().unwrap_or_default();
    ensure!(why.contains("77"), "not followed because {why:?}");
    ensure!(
        session.state.as_str() == "unfollowed",
        "{}",
        session.state.as_str()
    );
    // Followed up to the injection on main, no further.
    let injected_at = chaos
        .control()
        .decisions()
        .iter()
        .find(|d| d.what.ends_with("injected"))
        .map(|d| d.offset)
        .unwrap_or_default();
    ensure!(
        session.data_bytes >= INJECT_AFTER_BYTES / 2 && session.data_bytes <= injected_at,
        "{} data bytes followed, the injection at {injected_at}",
        session.data_bytes
    );
    ensure!(
        run.data_bytes >= DATASET_BYTES,
        "{} data bytes",
        run.data_bytes
    );
    only_peer_closes(&closes(&relay).await?)?;

    // A real recipient, through the relay and without it.
    let recipient = MysqlServer::start(
        &image,
        ServerOptions::recipient(2, &[relay.addr(), chaos.addr()]),
    )
    .await?;
    let direct = clone_instance(&recipient, chaos.addr(), CLONE_TIMEOUT).await?;
    donor.wait_until_clone_free(DONOR_FREE_WAIT).await?;
    let relayed = clone_instance(&recipient, relay.addr(), CLONE_TIMEOUT).await?;
    donor.wait_until_clone_free(DONOR_FREE_WAIT).await?;
    eprintln!(
        "without the relay: {} {} {:?}; through it: {} {} {:?}",
        direct.state,
        direct.error_no,
        direct.error_message,
        relayed.state,
        relayed.error_no,
        relayed.error_message
    );
    ensure!(!direct.completed() && direct.error_no != 0, "{direct:?}");
    ensure!(injections() >= 3, "{:?}", chaos.control().decisions());
    ensure!(
        (relayed.error_no, &relayed.error_message) == (direct.error_no, &direct.error_message),
        "through the relay {relayed:?}, without it {direct:?}"
    );
    only_peer_closes(&closes(&relay).await?)?;
    relay.stop().await
}
