//! Every clone protocol version through the relay, against the real donor: the harness's
//! protocol-level recipient ([`harness::clone_client`]) proposes 0x0100, 0x0101, 0x0102 and
//! 0x0103 in turn, and the 9.7.4 donor answers each at that version, with that version's own
//! plugin-level responses. The relay runs on its defaults between them, with a recording tap on
//! its donor leg. For each version:
//!
//! - the client's own reading: the donor chose the version proposed; PLUGIN (4) only at 0x0100,
//!   PLUGIN_V2 (7) from 0x0101, CONFIG_V3 (8) from 0x0102, CONFIG_V4 (9) only at 0x0103; every
//!   snapshot state finished and acknowledged; data received;
//! - the bytes the client received on each connection are the bytes the donor sent on it;
//! - the relay followed the clone: one session, completed, the version shown, its data bytes
//!   those the client counted, no connection closed for a protocol breach.

use std::time::Duration;

use anyhow::{Context, Result, ensure};
use clone_relay::session::SessionView;
use harness::clone_client::{
    self, ClientClone, ClientOptions, PROTOCOL_VERSIONS, RES_COLLATION, RES_CONFIG, RES_CONFIG_V3,
    RES_CONFIG_V4, RES_PLUGIN, RES_PLUGIN_V2,
};
use harness::dataset::Dataset;
use harness::image::mysql_image;
use harness::mysql::{DONOR_PASSWORD, DONOR_USER};
use harness::tap::{Tap, TapOptions};
use harness::{MysqlServer, RelayFixture, ServerOptions};

const DATASET_BYTES: u64 = 16 * 1024 * 1024;
const CLONE_TIMEOUT: Duration = Duration::from_secs(180);
/// Bound on the donor ending the previous clone's threads.
const DONOR_FREE_WAIT: Duration = Duration::from_secs(60);

/// A donor holding the data set.
async fn seeded_donor() -> Result<MysqlServer> {
    let image = mysql_image().await?;
    let donor = MysqlServer::start(&image, ServerOptions::donor()).await?;
    Dataset::of_size(DATASET_BYTES).seed(&donor).await?;
    Ok(donor)
}

/// The close reasons of `session`'s connections that were protocol breaches.
fn breaches(session: &SessionView) -> Vec<&str> {
    session
        .connections
        .iter()
        .filter_map(|c| c.close_reason.as_deref())
        .filter(|r| r.contains("protocol"))
        .collect()
}

pub async fn the_real_donor_at_every_protocol_version_is_carried_and_followed() -> Result<()> {
    let donor = seeded_donor().await?;
    let tap = Tap::start_with(donor.addr(), TapOptions::new().record()).await?;
    let relay = RelayFixture::start(tap.addr())?;

    for version in PROTOCOL_VERSIONS {
        let run = tokio::time::timeout(
            CLONE_TIMEOUT,
            clone_client::clone_at_version(relay.addr(), DONOR_USER, DONOR_PASSWORD, version),
        )
        .await
        .context("the clone timed out")?
        .with_context(|| format!("the clone at {version:#06x}"))?;
        eprintln!(
            "{version:#06x}: responses to INIT {:?}, states {:?}, {} data bytes",
            run.init_responses, run.acknowledged_states, run.data_bytes
        );
        record(&format!("protocol-{version:#06x}"), &run)?;
        check_responses(version, &run)?;
        check_bytes_as_sent(&tap, &run)?;
        check_followed(&relay, version, &run)?;
        donor.wait_until_clone_free(DONOR_FREE_WAIT).await?;
    }
    relay.stop().await
}

/// With `CLONE_RELAY_RECORD_CAPTURES` set to a folder, writes the run's packets there as
/// `clone-9.7.4-<name>.jsonl` (how relay/tests/captures got them).
fn record(name: &str, run: &ClientClone) -> Result<()> {
    if let Some(dir) = std::env::var_os("CLONE_RELAY_RECORD_CAPTURES") {
        let path = std::path::Path::new(&dir).join(format!("clone-9.7.4-{name}.jsonl"));
        clone_client::write_capture(&path, run)?;
    }
    Ok(())
}

pub async fn a_donor_error_and_a_refused_reinit_end_as_mysql_ends_them() -> Result<()> {
    let donor = seeded_donor().await?;
    let mut relay = RelayFixture::start(donor.addr())?;
    // The REINIT below is a resume the relay counts, on purpose.
    relay.expect_faults();

    // The client acknowledges the end of the file copy with an error, as a recipient that could
    // not apply it: the donor answers with COM_RES_ERROR on main, and COM_EXIT with COMPLETE.
    let options = ClientOptions {
        version: 0x0103,
        fail_ack: Some((2, 1030)),
    };
    let failed = tokio::time::timeout(
        CLONE_TIMEOUT,
        clone_client::clone_with(relay.addr(), DONOR_USER, DONOR_PASSWORD, options),
    )
    .await
    .context("the failing clone timed out")??;
    record("donor-error", &failed)?;
    let error = failed.error.clone().context("the donor sent no error")?;
    ensure!(error.errno == 1815, "{error}");
    ensure!(
        error.message.contains("error in concurrent task"),
        "{error}"
    );
    // The donor answers the failing ACK itself with COMPLETE; the error comes on main.
    ensure!(
        failed.acknowledged_states == [1, 2],
        "{:?}",
        failed.acknowledged_states
    );
    donor.wait_until_clone_free(DONOR_FREE_WAIT).await?;

    // A clone that completes, then a REINIT naming it: the donor refuses it.
    let done = tokio::time::timeout(
        CLONE_TIMEOUT,
        clone_client::clone_at_version(relay.addr(), DONOR_USER, DONOR_PASSWORD, 0x0103),
    )
    .await
    .context("the clone timed out")??;
    donor.wait_until_clone_free(DONOR_FREE_WAIT).await?;
    let locator = done.donor_locator.clone().context("no LOCS")?;
    let refused =
        clone_client::reinit(relay.addr(), DONOR_USER, DONOR_PASSWORD, 0x0103, &locator).await?;
    record("reinit-refused", &refused)?;
    let error = refused
        .error
        .clone()
        .context("the REINIT was not refused")?;
    ensure!(error.errno == 1815, "{error}");
    ensure!(
        error.message.contains("could not find existing clone"),
        "{error}"
    );

    // The relay: the failed clone failed with the donor's error, the completed one stayed
    // completed, the refused REINIT is a failed session of its own; no connection closed for a
    // protocol breach.
    let view = relay.sessions();
    let states: Vec<(&str, Option<&str>)> = view
        .sessions
        .iter()
        .map(|s| {
            (
                s.state.as_str(),
                s.error.as_ref().map(|e| e.message.as_str()),
            )
        })
        .collect();
    ensure!(
        states
            == [
                (
                    "failed",
                    Some("Internal error: Innodb Clone error in concurrent task")
                ),
                ("completed", None),
                (
                    "failed",
                    Some("Internal error: Innodb Clone Restart could not find existing clone")
                ),
            ],
        "{states:?}"
    );
    for session in &view.sessions {
        ensure!(session.not_followed.is_none(), "{:?}", session.not_followed);
        ensure!(breaches(session).is_empty(), "{:?}", breaches(session));
    }
    relay.stop().await
}

/// What the client itself read: the version chosen and that version's responses.
fn check_responses(version: u32, run: &ClientClone) -> Result<()> {
    ensure!(
        run.negotiated == version,
        "the donor chose {:#06x} for {version:#06x}",
        run.negotiated
    );
    let has = |kind: u8| run.init_responses.contains_key(&kind);
    ensure!(has(RES_COLLATION) && has(RES_CONFIG), "{run:?}");
    ensure!(has(RES_PLUGIN) == (version == 0x0100), "PLUGIN: {run:?}");
    ensure!(
        has(RES_PLUGIN_V2) == (version >= 0x0101),
        "PLUGIN_V2: {run:?}"
    );
    ensure!(
        has(RES_CONFIG_V3) == (version >= 0x0102),
        "CONFIG_V3: {run:?}"
    );
    ensure!(
        has(RES_CONFIG_V4) == (version >= 0x0103),
        "CONFIG_V4: {run:?}"
    );
    let network_timeout = run
        .configs
        .iter()
        .any(|(name, _)| name == "clone_donor_timeout_after_network_failure");
    ensure!(network_timeout == (version >= 0x0102), "{:?}", run.configs);
    ensure!(
        run.acknowledged_states == [1, 2, 3, 4],
        "states acknowledged: {:?}",
        run.acknowledged_states
    );
    ensure!(
        run.data_bytes >= DATASET_BYTES,
        "{} data bytes",
        run.data_bytes
    );
    Ok(())
}

/// Each connection's bytes at the client are the bytes the donor sent on one connection.
fn check_bytes_as_sent(tap: &Tap, run: &ClientClone) -> Result<()> {
    let sent = tap.from_donor_bytes();
    for (i, received) in run.received.iter().enumerate() {
        ensure!(
            sent.iter().any(|s| s == received),
            "connection {i}: the {} bytes received are not what the donor sent on any of {} \
             connections (lengths {:?})",
            received.len(),
            sent.len(),
            sent.iter().map(Vec::len).collect::<Vec<_>>()
        );
    }
    Ok(())
}

/// The relay's session of this clone: completed, the version shown, the data counted.
fn check_followed(relay: &RelayFixture, version: u32, run: &ClientClone) -> Result<()> {
    let shown = format!("{version:#06x}");
    let view = relay.sessions();
    let session = view
        .sessions
        .iter()
        .find(|s| s.protocol_version.as_deref() == Some(shown.as_str()))
        .with_context(|| format!("no session at {shown}: {view:#?}"))?;
    ensure!(
        session.state.as_str() == "completed",
        "session at {shown}: {}",
        session.state.as_str()
    );
    ensure!(session.not_followed.is_none(), "{:?}", session.not_followed);
    ensure!(
        session.data_bytes == run.data_bytes,
        "the relay counted {} data bytes, the client {}",
        session.data_bytes,
        run.data_bytes
    );
    ensure!(breaches(session).is_empty(), "{:?}", breaches(session));
    Ok(())
}
