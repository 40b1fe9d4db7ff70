//! TLS through the relay is never weaker than MySQL alone, end to end with real MySQL and an
//! attacker on the relay's donor leg: a tap ([`harness::tap`]) that clears the TLS offer in the
//! donor's greeting or replaces the RSA key the donor sends. It proves that:
//!
//! - a) on the relay's defaults, a `REQUIRE SSL` clone through a stripped greeting fails with the
//!   recipient's own SSL error, as it would against a donor without TLS: the relay lists the
//!   refusal ("offers no TLS"), no data and no login of the recipient reach the donor leg, and
//!   the donor's connection ends with a refused login, so its host cache counts no connection
//!   error (`SUM_CONNECT_ERRORS`). Controls: the tap sees a value of the data in clear in a
//!   `REQUIRE NO SSL` clone, and a `REQUIRE SSL` clone without the stripping completes with TLS
//!   on both legs and hides it;
//! - b) a clone with no `REQUIRE` clause through the stripped greeting completes in plaintext on
//!   both legs, as MySQL's own preferred mode does;
//! - c) `--server-tls-verify ca` refuses a stripped greeting under `--server-tls-mode as-client`,
//!   `preferred` and `required`;
//! - d) with `--server-tls-mode disabled` (TLS recipient, plain donor leg), a replaced donor key
//!   is refused under `--server-public-key` and nothing of the password is sent, while without
//!   the pin the relay encrypts the password to the key it is given (the donor cannot decrypt
//!   it: access denied);
//! - e) an auth switch to `sha256_password` towards a plain donor leg for a TLS recipient is
//!   refused, the password never sent;
//! - f) a relay pair carries the donor's (stripped) TLS offer across its tunnel unchanged, and
//!   a `REQUIRE SSL` clone is refused;
//! - g) caching_sha2_password's full authentication bridged across one TLS leg and one plain leg,
//!   each way, completes, and the relay's trace log never holds the password.
//!
//! The tests of this file run one at a time, each with its own MySQL servers.

use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Result, bail, ensure};
use clone_relay::config::{ServerTlsMode, ServerTlsVerify};
use clone_relay::recovery::probe::PROBE_USER;
use harness::clone::{CloneOutcome, Transport, clone_instance_as, clone_instance_with};
use harness::dataset::Dataset;
use harness::image::{ImageRef, mysql_image};
use harness::mysql::{DONOR_PASSWORD, DONOR_USER};
use harness::process::RelayProcess;
use harness::tap::{Tap, TapOptions};
use harness::{MysqlServer, RelayFixture, ServerOptions};
use serde_json::Value;
use tokio::time::Instant;

const MIB: u64 = 1 << 20;
const DATASET_BYTES: u64 = 16 * MIB;
/// The trace-log test clones twice: less data keeps its log short.
const LOG_DATASET_BYTES: u64 = 8 * MIB;
const CLONE_TIMEOUT: Duration = Duration::from_secs(300);
/// A refused clone ends at its first connection.
const REFUSED_CLONE_TIMEOUT: Duration = Duration::from_secs(120);
/// Bound on waiting for the donor to let go of a finished clone.
const DONOR_FREE_WAIT: Duration = Duration::from_secs(60);
/// Bound on waiting for the relay to list a refused connection or close a session.
const RELAY_WAIT: Duration = Duration::from_secs(10);
/// Bound on waiting for the donor's host cache to count the relay's refused login.
const HOST_CACHE_WAIT: Duration = Duration::from_secs(20);
/// MySQL's client error "SSL connection error".
const CR_SSL_CONNECTION_ERROR: i64 = 2026;
/// MySQL's "Access denied for user".
const ER_ACCESS_DENIED_ERROR: i64 = 1045;
/// RSA-2048 ciphertext: caching_sha2_password's encrypted password.
const RSA_CIPHERTEXT_LEN: usize = 256;
/// The donor account that authenticates with sha256_password.
const SHA256_USER: &str = "sha256_clone";
const SHA256_PASSWORD: &str = "sha256-clone-secret";
/// A trace log of a clone has many lines; a log that shows nothing proves nothing.
const MIN_LOG_LINES: usize = 100;

/// A folder removed with what it holds when dropped.
struct TempDir(PathBuf);

impl TempDir {
    fn new(name: &str) -> Result<Self> {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)?
            .as_nanos();
        let dir = std::env::temp_dir().join(format!(
            "clone-relay-downgrade-{name}-{}-{nanos}",
            std::process::id()
        ));
        std::fs::create_dir_all(&dir)?;
        Ok(TempDir(dir))
    }

    fn path(&self, file: &str) -> PathBuf {
        self.0.join(file)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn loopback(port: u16) -> SocketAddr {
    SocketAddr::from((Ipv4Addr::LOCALHOST, port))
}

/// A donor seeded with `bytes` of data (none when 0).
async fn donor(image: &ImageRef, bytes: u64) -> Result<(MysqlServer, Dataset)> {
    let donor = MysqlServer::start(image, ServerOptions::donor()).await?;
    let dataset = Dataset::of_size(bytes);
    if bytes > 0 {
        dataset.seed(&donor).await?;
    }
    Ok((donor, dataset))
}

/// A donor in a network namespace of its own that keeps per-host connection errors in
/// `performance_schema.host_cache` (as in path_probes.rs), seeded with `bytes` of data.
async fn donor_with_host_cache(image: &ImageRef, bytes: u64) -> Result<(MysqlServer, Dataset)> {
    let mut options = ServerOptions::donor();
    options.isolated = true;
    options.resolve_names = true;
    let donor = MysqlServer::start(image, options).await?;
    donor.keep_client_host_errors().await?;
    let dataset = Dataset::of_size(bytes);
    if bytes > 0 {
        dataset.seed(&donor).await?;
    }
    Ok((donor, dataset))
}

/// A recipient that may clone only through `relays`.
async fn recipient(image: &ImageRef, relays: &[SocketAddr]) -> Result<MysqlServer> {
    MysqlServer::start(image, ServerOptions::recipient(2, relays)).await
}

/// A value from the middle of the data set: a label, 64 hex digits (a SHA-256).
async fn label(donor: &MysqlServer) -> Result<String> {
    let label = donor
        .sql("SELECT label FROM drill.t1 ORDER BY id LIMIT 1 OFFSET 1000")
        .await?;
    let label = label.trim().to_string();
    ensure!(label.len() == 64, "a label is a SHA-256 in hex: {label:?}");
    Ok(label)
}

/// The clone completed and the recipient holds the donor's data, table by table.
async fn assert_faithful(
    what: &str,
    outcome: &CloneOutcome,
    dataset: &Dataset,
    donor: &MysqlServer,
    recipient: &MysqlServer,
) -> Result<()> {
    ensure!(outcome.completed(), "{what}: {outcome:?}");
    let differ = dataset.compare(donor, recipient).await?;
    ensure!(
        differ.is_empty(),
        "{what}: tables that differ from the donor's: {differ:?}"
    );
    Ok(())
}

/// A clone through `relay` that must fail.
async fn refused_clone(
    recipient: &MysqlServer,
    relay: SocketAddr,
    transport: Transport,
) -> Result<CloneOutcome> {
    let outcome = clone_instance_with(recipient, relay, REFUSED_CLONE_TIMEOUT, transport).await?;
    ensure!(
        outcome.state == "Failed",
        "the clone was not refused: {outcome:?}"
    );
    Ok(outcome)
}

/// The recipient's own error for a donor that offers no TLS to a `REQUIRE SSL` clone: 2026,
/// itself or inside CLONE's 3862 "Clone Donor Error: Connect failed: 2026 : ...".
fn ensure_ssl_error(outcome: &CloneOutcome) -> Result<()> {
    let code = CR_SSL_CONNECTION_ERROR.to_string();
    ensure!(
        (outcome.error_no == CR_SSL_CONNECTION_ERROR || outcome.error_message.contains(&code))
            && outcome.error_message.contains("SSL connection error"),
        "not the recipient's own SSL error ({code}): {outcome:?}"
    );
    Ok(())
}

/// `/sessions` of the relay whose admin listener is at `admin`.
async fn sessions(admin: SocketAddr) -> Result<Value> {
    let (status, body) = plumbing::http::request(admin, "GET", "/sessions").await?;
    ensure!(status == 200, "/sessions answered {status}: {body}");
    Ok(serde_json::from_str(&body)?)
}

/// Waits until the relay lists a rejected connection whose reason contains `reason`; returns
/// that reason.
async fn rejection(admin: SocketAddr, reason: &str) -> Result<String> {
    let deadline = Instant::now() + RELAY_WAIT;
    loop {
        let view = sessions(admin).await?;
        let found = view["rejected"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|c| c["close_reason"].as_str())
            .find(|r| r.contains(reason));
        if let Some(found) = found {
            return Ok(found.to_string());
        }
        if Instant::now() >= deadline {
            bail!(
                "waited {RELAY_WAIT:?} for the relay to list a connection rejected with a reason \
                 containing {reason:?}; rejected: {:#}",
                view["rejected"]
            );
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The relay's latest session once it completed.
async fn latest_completed(admin: SocketAddr) -> Result<Value> {
    let deadline = Instant::now() + RELAY_WAIT;
    loop {
        let view = sessions(admin).await?;
        let latest = view["sessions"].as_array().and_then(|s| s.last()).cloned();
        if let Some(session) = &latest
            && session["state"] == "completed"
        {
            return Ok(session.clone());
        }
        if Instant::now() >= deadline {
            bail!("waited {RELAY_WAIT:?} for a completed session; latest: {latest:#?}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Every connection of the session had TLS on the recipient's leg as `downstream` says and on
/// the donor's as `upstream` says.
fn assert_legs(session: &Value, downstream: bool, upstream: bool) -> Result<()> {
    let connections = session["connections"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    ensure!(!connections.is_empty(), "no connections: {session:#}");
    for c in &connections {
        ensure!(
            c["tls_downstream"] == downstream && c["tls_upstream"] == upstream,
            "connection {} ({}) has TLS downstream {} and upstream {}, expected {downstream} and \
             {upstream}",
            c["id"],
            c["role"],
            c["tls_downstream"],
            c["tls_upstream"]
        );
    }
    Ok(())
}

/// The donor's host cache: (connection errors, which count towards `max_connect_errors`;
/// refused logins, which do not).
async fn host_cache(donor: &MysqlServer) -> Result<(u64, u64)> {
    let rows = donor
        .rows(
            "SELECT IFNULL(SUM(SUM_CONNECT_ERRORS), 0), \
             IFNULL(SUM(COUNT_AUTHENTICATION_ERRORS + COUNT_AUTH_PLUGIN_ERRORS), 0) \
             FROM performance_schema.host_cache",
        )
        .await?;
    match rows.first().map(Vec::as_slice) {
        Some([connect, auth]) => Ok((connect.parse()?, auth.parse()?)),
        _ => bail!("unexpected host_cache sums {rows:?}"),
    }
}

/// Empties caching_sha2_password's cache on the donor, so that the next login is a full
/// authentication.
async fn cold_auth_cache(donor: &MysqlServer) -> Result<()> {
    donor.sql("FLUSH PRIVILEGES").await?;
    Ok(())
}

/// The donor's RSA public key for caching_sha2_password, as `SHOW STATUS` prints it.
async fn donor_public_key(donor: &MysqlServer) -> Result<String> {
    let rows = donor
        .rows("SHOW STATUS LIKE 'Caching_sha2_password_rsa_public_key'")
        .await?;
    let value = match rows.first().map(Vec::as_slice) {
        Some([_, value]) => value.clone(),
        _ => bail!("no Caching_sha2_password_rsa_public_key in {rows:?}"),
    };
    // The client's batch output writes a value's newlines as `\n`.
    let pem = value.replace("\\n", "\n");
    ensure!(
        pem.starts_with("-----BEGIN PUBLIC KEY-----"),
        "not a public key: {pem:?}"
    );
    Ok(pem)
}

/// A 2048-bit RSA public key (PEM) that is not the donor's.
async fn another_rsa_key() -> Result<String> {
    tokio::task::spawn_blocking(|| {
        use rsa::pkcs8::{EncodePublicKey, LineEnding};
        let private = rsa::PrivateKey::new(&mut getrandom::SysRng, 2048)?;
        Ok(private.to_public_key().to_public_key_pem(LineEnding::LF)?)
    })
    .await?
}

/// Payload lengths of every packet the tap saw go to the donor during a handshake.
fn handshake_lengths(tap: &Tap) -> Vec<usize> {
    tap.handshake_packets_to_donor()
        .into_iter()
        .flatten()
        .collect()
}

pub async fn a_stripped_tls_offer_fails_a_require_ssl_clone_as_mysql_alone_would() -> Result<()> {
    let image = mysql_image().await?;
    let (donor, dataset) = donor_with_host_cache(&image, DATASET_BYTES).await?;
    let label = label(&donor).await?;
    let plain_tap = Tap::start_with(
        donor.addr(),
        TapOptions::new().watch(label.as_bytes()).record(),
    )
    .await?;
    let strip_tap = Tap::start_with(
        donor.addr(),
        TapOptions::new()
            .watch(label.as_bytes())
            .strip_tls_offer()
            .record(),
    )
    .await?;
    let plain_relay = RelayFixture::start(plain_tap.addr())?;
    let strip_relay = RelayFixture::start(strip_tap.addr())?;
    let recipient = recipient(&image, &[plain_relay.addr(), strip_relay.addr()]).await?;

    // The control: in plaintext the tap's capture shows the label.
    let plain = clone_instance_with(
        &recipient,
        plain_relay.addr(),
        CLONE_TIMEOUT,
        Transport::NoSsl,
    )
    .await?;
    assert_faithful("REQUIRE NO SSL", &plain, &dataset, &donor, &recipient).await?;
    ensure!(
        plain_tap.from_donor_contains(label.as_bytes()),
        "the capture of a plaintext clone does not show the label {label}: it could not tell"
    );
    assert_legs(
        &latest_completed(plain_relay.admin_addr()).await?,
        false,
        false,
    )?;
    donor.wait_until_clone_free(DONOR_FREE_WAIT).await?;

    // Through the stripped greeting: the recipient requires TLS and is offered none.
    let (connect_errors, auth_errors) = host_cache(&donor).await?;
    let refused = refused_clone(&recipient, strip_relay.addr(), Transport::RequireSsl).await?;
    ensure_ssl_error(&refused)?;
    let reason = rejection(strip_relay.admin_addr(), "offers no TLS").await?;
    ensure!(
        strip_tap.greetings_stripped() >= 1,
        "the tap stripped no greeting: the test proves nothing"
    );
    ensure!(
        !strip_tap.from_donor_contains(label.as_bytes()),
        "the label crossed the donor leg of the refused clone"
    );
    ensure!(
        !strip_tap.to_donor_contains(DONOR_USER.as_bytes())
            && !strip_tap.to_donor_contains(DONOR_PASSWORD.as_bytes()),
        "the recipient's login reached the donor"
    );
    ensure!(
        strip_tap.to_donor_contains(PROBE_USER.as_bytes()),
        "the relay did not end the donor's connection with a refused login"
    );
    // The donor counts the refused login; a broken handshake would count as a connection error.
    let deadline = Instant::now() + HOST_CACHE_WAIT;
    let after = loop {
        let now = host_cache(&donor).await?;
        if now.0 != connect_errors || now.1 > auth_errors || Instant::now() >= deadline {
            break now;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    ensure!(
        after.0 == connect_errors,
        "the donor's SUM_CONNECT_ERRORS grew from {connect_errors} to {}",
        after.0
    );
    ensure!(
        after.1 > auth_errors,
        "the donor's host cache never counted the relay's refused login ({auth_errors} \
         authentication errors before, {} after {HOST_CACHE_WAIT:?})",
        after.1
    );

    // Without the stripping, REQUIRE SSL gets TLS on both legs, and the tap sees no label.
    let seen = plain_tap.from_donor().matches;
    let tls = clone_instance_with(
        &recipient,
        plain_relay.addr(),
        CLONE_TIMEOUT,
        Transport::RequireSsl,
    )
    .await?;
    assert_faithful("REQUIRE SSL", &tls, &dataset, &donor, &recipient).await?;
    assert_legs(
        &latest_completed(plain_relay.admin_addr()).await?,
        true,
        true,
    )?;
    ensure!(
        plain_tap.from_donor().matches == seen,
        "the tap saw the label in clear during the TLS clone"
    );
    eprintln!(
        "stripped greeting, REQUIRE SSL: recipient error {} ({}); relay: {reason}; {} greetings \
         stripped; host cache connection errors {connect_errors} -> {}, refused logins \
         {auth_errors} -> {}; controls: plaintext {:.1} s (label seen), TLS {:.1} s",
        refused.error_no,
        refused.error_message,
        strip_tap.greetings_stripped(),
        after.0,
        after.1,
        plain.statement_time.as_secs_f64(),
        tls.statement_time.as_secs_f64()
    );
    plain_relay.stop().await?;
    strip_relay.stop().await
}

pub async fn a_stripped_tls_offer_gives_a_default_clone_plaintext_on_both_legs() -> Result<()> {
    let image = mysql_image().await?;
    let (donor, dataset) = donor(&image, DATASET_BYTES).await?;
    let label = label(&donor).await?;
    let tap = Tap::start_with(
        donor.addr(),
        TapOptions::new().watch(label.as_bytes()).strip_tls_offer(),
    )
    .await?;
    let relay = RelayFixture::start(tap.addr())?;
    let recipient = recipient(&image, &[relay.addr()]).await?;

    let outcome =
        clone_instance_with(&recipient, relay.addr(), CLONE_TIMEOUT, Transport::Default).await?;
    assert_faithful("no REQUIRE clause", &outcome, &dataset, &donor, &recipient).await?;
    let session = latest_completed(relay.admin_addr()).await?;
    assert_legs(&session, false, false)?;
    ensure!(
        tap.greetings_stripped() >= 1,
        "the tap stripped no greeting"
    );
    eprintln!(
        "stripped greeting, no REQUIRE clause: completed plain on both legs in {:.1} s over {} \
         connections; {} greetings stripped; the label crossed the donor leg {} times",
        outcome.statement_time.as_secs_f64(),
        session["connections"].as_array().map_or(0, Vec::len),
        tap.greetings_stripped(),
        tap.from_donor().matches
    );
    relay.stop().await
}

pub async fn donor_verification_refuses_a_stripped_tls_offer_under_every_mode() -> Result<()> {
    let image = mysql_image().await?;
    let (donor, _) = donor(&image, 0).await?;
    let dir = TempDir::new("verify")?;
    let donor_ca = dir.path("donor-ca.pem");
    std::fs::write(&donor_ca, donor.read_data_file("ca.pem").await?)?;
    let tap = Tap::start_with(donor.addr(), TapOptions::new().strip_tls_offer().record()).await?;
    let modes = [
        ServerTlsMode::AsClient,
        ServerTlsMode::Preferred,
        ServerTlsMode::Required,
    ];
    let mut relays = Vec::new();
    for mode in modes {
        let mut config = RelayFixture::config(tap.addr());
        config.server_tls_mode = mode;
        config.server_tls_verify = ServerTlsVerify::Ca;
        config.server_tls_ca = Some(donor_ca.clone());
        relays.push(RelayFixture::start_with(config)?);
    }
    let addrs: Vec<SocketAddr> = relays.iter().map(RelayFixture::addr).collect();
    let recipient = recipient(&image, &addrs).await?;

    for (mode, relay) in modes.iter().zip(&relays) {
        let stripped = tap.greetings_stripped();
        let refused = refused_clone(&recipient, relay.addr(), Transport::Default).await?;
        ensure!(
            refused.error_message.contains("offers no TLS"),
            "{mode:?}: the recipient's error does not say the donor offers no TLS: {refused:?}"
        );
        let reason = rejection(relay.admin_addr(), "offers no TLS").await?;
        ensure!(
            tap.greetings_stripped() > stripped,
            "{mode:?}: the tap stripped no greeting"
        );
        eprintln!(
            "--server-tls-verify ca, --server-tls-mode {mode:?}, stripped greeting: recipient \
             error {} ({}); relay: {reason}",
            refused.error_no, refused.error_message
        );
    }
    ensure!(
        !tap.to_donor_contains(DONOR_USER.as_bytes()),
        "a recipient's login reached the donor"
    );
    ensure!(
        tap.to_donor_contains(PROBE_USER.as_bytes()),
        "the relay did not end the donor's connections with a refused login"
    );
    for relay in relays {
        relay.stop().await?;
    }
    Ok(())
}

pub async fn a_replaced_donor_key_is_refused_when_pinned_and_gets_nothing_it_can_read_otherwise()
-> Result<()> {
    let image = mysql_image().await?;
    let (donor, _) = donor(&image, 0).await?;
    let dir = TempDir::new("rsa")?;
    let pinned = dir.path("donor-public-key.pem");
    std::fs::write(&pinned, donor_public_key(&donor).await?)?;
    let other_key = another_rsa_key().await?;
    let tamper = || {
        TapOptions::new()
            .watch(DONOR_PASSWORD.as_bytes())
            .replace_rsa_key(&other_key)
            .record()
    };
    let pinned_tap = Tap::start_with(donor.addr(), tamper()).await?;
    let open_tap = Tap::start_with(donor.addr(), tamper()).await?;
    let pinned_flag = pinned.display().to_string();
    let pinning = RelayProcess::start(
        pinned_tap.addr(),
        &[
            "--server-tls-mode",
            "disabled",
            "--server-public-key",
            &pinned_flag,
        ],
    )
    .await?;
    let trusting = RelayProcess::start(open_tap.addr(), &["--server-tls-mode", "disabled"]).await?;
    let recipient = recipient(&image, &[pinning.addr(), trusting.addr()]).await?;

    // Pinned: the relay refuses the tap's key and sends the donor nothing of the password.
    cold_auth_cache(&donor).await?;
    let refused = refused_clone(&recipient, pinning.addr(), Transport::Default).await?;
    ensure!(
        refused.error_message.contains("server-public-key"),
        "the recipient's error does not name --server-public-key: {refused:?}"
    );
    ensure!(
        pinned_tap.keys_replaced() >= 1,
        "the donor never sent its key (no full authentication): the test proves nothing"
    );
    let pinned_packets = handshake_lengths(&pinned_tap);
    ensure!(
        !pinned_packets.contains(&RSA_CIPHERTEXT_LEN),
        "an RSA ciphertext went to the donor: packets {pinned_packets:?}"
    );
    // Login, the request for the key, then the 1-byte empty password.
    ensure!(
        pinned_tap
            .handshake_packets_to_donor()
            .iter()
            .any(|c| c.len() >= 3 && c.ends_with(&[1, 1])),
        "the relay did not answer the donor with an empty password: packets {pinned_packets:?}"
    );
    ensure!(
        !pinned_tap.to_donor_contains(DONOR_PASSWORD.as_bytes()),
        "the password went to the donor in clear"
    );
    donor.wait_until_clone_free(DONOR_FREE_WAIT).await?;

    // Not pinned: the relay encrypts the password to the key it is given, which the donor
    // cannot decrypt.
    cold_auth_cache(&donor).await?;
    let denied = refused_clone(&recipient, trusting.addr(), Transport::Default).await?;
    ensure!(
        denied.error_no == ER_ACCESS_DENIED_ERROR || denied.error_message.contains("Access denied"),
        "not an access denied: {denied:?}"
    );
    ensure!(
        open_tap.keys_replaced() >= 1,
        "the donor never sent its key (no full authentication)"
    );
    let open_packets = handshake_lengths(&open_tap);
    ensure!(
        open_packets.contains(&RSA_CIPHERTEXT_LEN),
        "no RSA ciphertext went to the donor: packets {open_packets:?}"
    );
    ensure!(
        !open_tap.to_donor_contains(DONOR_PASSWORD.as_bytes()),
        "the password went to the donor in clear"
    );
    eprintln!(
        "replaced donor key, --server-tls-mode disabled: pinned: recipient error {} ({}), {} key \
         replaced, to-donor handshake packets {pinned_packets:?}; not pinned: recipient error {} \
         ({}), to-donor handshake packets {open_packets:?}",
        refused.error_no,
        refused.error_message,
        pinned_tap.keys_replaced(),
        denied.error_no,
        denied.error_message
    );
    Ok(())
}

pub async fn sha256_password_towards_a_plain_donor_leg_is_refused_for_a_tls_recipient() -> Result<()>
{
    let image = mysql_image().await?;
    let (donor, _) = donor(&image, 0).await?;
    donor
        .sql(&format!(
            "CREATE USER '{SHA256_USER}'@'%' IDENTIFIED WITH sha256_password BY \
             '{SHA256_PASSWORD}'; GRANT BACKUP_ADMIN ON *.* TO '{SHA256_USER}'@'%'"
        ))
        .await?;
    let tap = Tap::start_with(
        donor.addr(),
        TapOptions::new().watch(SHA256_PASSWORD.as_bytes()).record(),
    )
    .await?;
    let relay = RelayProcess::start(tap.addr(), &["--server-tls-mode", "disabled"]).await?;
    let recipient = recipient(&image, &[relay.addr()]).await?;

    let refused = clone_instance_as(
        &recipient,
        relay.addr(),
        REFUSED_CLONE_TIMEOUT,
        Transport::Default,
        SHA256_USER,
        SHA256_PASSWORD,
    )
    .await?;
    ensure!(refused.state == "Failed", "not refused: {refused:?}");
    ensure!(
        refused.error_message.contains("sha256_password"),
        "the recipient's error does not name sha256_password: {refused:?}"
    );
    ensure!(
        tap.from_donor_contains(b"sha256_password"),
        "the donor never asked for sha256_password: the test proves nothing"
    );
    ensure!(
        !tap.to_donor_contains(SHA256_PASSWORD.as_bytes()) && tap.to_donor().matches == 0,
        "the password went to the donor"
    );
    let packets = handshake_lengths(&tap);
    ensure!(
        !packets.contains(&RSA_CIPHERTEXT_LEN),
        "an RSA ciphertext went to the donor: packets {packets:?}"
    );
    // Login, then the 1-byte empty password.
    ensure!(
        tap.handshake_packets_to_donor()
            .iter()
            .any(|c| c.len() >= 2 && c.last() == Some(&1)),
        "the relay did not answer the donor with an empty password: packets {packets:?}"
    );
    eprintln!(
        "sha256_password, --server-tls-mode disabled, recipient on TLS: recipient error {} ({}); \
         to-donor handshake packets {packets:?}",
        refused.error_no, refused.error_message
    );
    Ok(())
}

/// One relay's tunnel certificate, key, and the CA it trusts for the other relay, as files.
struct Identity {
    cert: PathBuf,
    key: PathBuf,
    ca: PathBuf,
}

impl Identity {
    fn apply(&self, tunnel: &mut clone_relay::config::TunnelSettings) {
        tunnel.cert = Some(self.cert.clone());
        tunnel.key = Some(self.key.clone());
        tunnel.ca = Some(self.ca.clone());
    }
}

type Issuer = rcgen::CertifiedIssuer<'static, rcgen::KeyPair>;

/// A zone's CA, as relay_pair.rs makes them.
fn zone_ca(zone: &str) -> Result<Issuer> {
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new())?;
    params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    params.key_usages = vec![
        rcgen::KeyUsagePurpose::KeyCertSign,
        rcgen::KeyUsagePurpose::CrlSign,
    ];
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, format!("{zone} zone CA"));
    Ok(rcgen::CertifiedIssuer::self_signed(
        params,
        rcgen::KeyPair::generate()?,
    )?)
}

/// A certificate for `names` signed by `ca`, written to `dir` as `NAME.pem` (chain) and
/// `NAME-key.pem` (owner only), with `trusts` as the CA of the other side.
fn identity(
    dir: &Path,
    name: &str,
    ca: &Issuer,
    names: &[&str],
    usage: rcgen::ExtendedKeyUsagePurpose,
    trusts: &Path,
) -> Result<Identity> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut params =
        rcgen::CertificateParams::new(names.iter().map(ToString::to_string).collect::<Vec<_>>())?;
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, names[0]);
    params.extended_key_usages = vec![usage];
    params.use_authority_key_identifier_extension = true;
    let key = rcgen::KeyPair::generate()?;
    let cert = params.signed_by(&key, ca)?;
    let (cert_path, key_path) = (
        dir.join(format!("{name}.pem")),
        dir.join(format!("{name}-key.pem")),
    );
    std::fs::write(&cert_path, format!("{}{}", cert.pem(), ca.pem()))?;
    std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&key_path)?
        .write_all(key.serialize_pem().as_bytes())?;
    Ok(Identity {
        cert: cert_path,
        key: key_path,
        ca: trusts.to_owned(),
    })
}

pub async fn a_relay_pair_carries_the_stripped_offer_and_refuses_require_ssl() -> Result<()> {
    let image = mysql_image().await?;
    let (donor, _) = donor(&image, 0).await?;
    let tap = Tap::start_with(donor.addr(), TapOptions::new().strip_tls_offer().record()).await?;

    // Mutual TLS between the relays, each zone with a CA of its own.
    let dir = TempDir::new("pair")?;
    let (recipient_zone, donor_zone) = (zone_ca("recipient")?, zone_ca("donor")?);
    let recipient_ca = dir.path("recipient-zone-ca.pem");
    let donor_ca = dir.path("donor-zone-ca.pem");
    std::fs::write(&recipient_ca, recipient_zone.pem())?;
    std::fs::write(&donor_ca, donor_zone.pem())?;
    let recipient_side_id = identity(
        &dir.0,
        "recipient-side",
        &recipient_zone,
        &["recipient-side-relay"],
        rcgen::ExtendedKeyUsagePurpose::ClientAuth,
        &donor_ca,
    )?;
    let donor_side_id = identity(
        &dir.0,
        "donor-side",
        &donor_zone,
        &["localhost", "127.0.0.1"],
        rcgen::ExtendedKeyUsagePurpose::ServerAuth,
        &recipient_ca,
    )?;

    let mut config = RelayFixture::config(tap.addr());
    config.peer_listen = Some(loopback(0));
    donor_side_id.apply(&mut config.tunnel);
    let donor_side = RelayFixture::start_with(config)?;
    let mut config = RelayFixture::config_for(&[]);
    config.peer = Some(donor_side.peer_addr().to_string());
    recipient_side_id.apply(&mut config.tunnel);
    let recipient_side = RelayFixture::start_with(config)?;
    let recipient = recipient(&image, &[recipient_side.addr()]).await?;

    let refused = refused_clone(&recipient, recipient_side.addr(), Transport::RequireSsl).await?;
    ensure_ssl_error(&refused)?;
    let reason = rejection(recipient_side.admin_addr(), "offers no TLS").await?;
    ensure!(
        tap.greetings_stripped() >= 1,
        "the tap stripped no greeting: the test proves nothing"
    );
    ensure!(
        !tap.to_donor_contains(DONOR_USER.as_bytes()),
        "the recipient's login reached the donor"
    );
    ensure!(
        tap.to_donor_contains(PROBE_USER.as_bytes()),
        "the donor-side relay did not end the donor's connection with a refused login"
    );
    eprintln!(
        "relay pair, stripped greeting, REQUIRE SSL: recipient error {} ({}); recipient-side \
         relay: {reason}; {} greetings stripped; the donor-side relay left the donor with a \
         refused login",
        refused.error_no,
        refused.error_message,
        tap.greetings_stripped()
    );
    recipient_side.stop().await?;
    donor_side.stop().await
}

/// Forms of the password a log line could show: as text, as hex, as a list of byte values.
fn password_forms() -> Vec<String> {
    let bytes = DONOR_PASSWORD.as_bytes();
    let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    let list: Vec<String> = bytes.iter().map(u8::to_string).collect();
    vec![DONOR_PASSWORD.to_string(), hex, list.join(", ")]
}

/// The relay's trace log: long enough to show something, and without the password.
fn check_log(what: &str, log: &str) -> Result<usize> {
    let lines = log.lines().count();
    ensure!(
        lines >= MIN_LOG_LINES && log.contains("TRACE"),
        "{what}: the relay's log has {lines} lines and no trace to show: {}",
        log.lines().take(20).collect::<Vec<_>>().join("\n")
    );
    for form in password_forms() {
        ensure!(
            !log.contains(&form),
            "{what}: the relay's log shows the password as {form:?}"
        );
    }
    Ok(lines)
}

pub async fn full_authentication_across_one_tls_leg_completes_and_the_trace_log_keeps_no_password()
-> Result<()> {
    let image = mysql_image().await?;
    let (donor, dataset) = donor(&image, LOG_DATASET_BYTES).await?;
    let dir = TempDir::new("trace")?;
    let recording = || TapOptions::new().watch(DONOR_PASSWORD.as_bytes()).record();

    // (1) Recipient on TLS, donor leg plain: the tap watches the donor leg.
    let donor_leg = Tap::start_with(donor.addr(), recording()).await?;
    let disabled = RelayProcess::start_logged(
        donor_leg.addr(),
        &["--server-tls-mode", "disabled"],
        "trace",
        &dir.path("disabled.log"),
    )
    .await?;
    // (2) Recipient plain, donor leg on TLS: the tap watches the recipient's leg.
    let preferred = RelayProcess::start_logged(
        donor.addr(),
        &["--server-tls-mode", "preferred"],
        "trace",
        &dir.path("preferred.log"),
    )
    .await?;
    let recipient_leg = Tap::start_with(preferred.addr(), recording()).await?;
    let recipient = recipient(&image, &[disabled.addr(), recipient_leg.addr()]).await?;

    cold_auth_cache(&donor).await?;
    let first = clone_instance_with(
        &recipient,
        disabled.addr(),
        CLONE_TIMEOUT,
        Transport::Default,
    )
    .await?;
    assert_faithful(
        "TLS recipient, plain donor leg",
        &first,
        &dataset,
        &donor,
        &recipient,
    )
    .await?;
    assert_legs(&latest_completed(disabled.admin_addr()).await?, true, false)?;
    ensure!(
        donor_leg.keys_seen() >= 1,
        "the donor never sent its key: no full authentication to bridge"
    );
    let to_donor = handshake_lengths(&donor_leg);
    ensure!(
        to_donor.contains(&RSA_CIPHERTEXT_LEN),
        "the relay sent the donor no encrypted password: packets {to_donor:?}"
    );
    ensure!(
        !donor_leg.to_donor_contains(DONOR_PASSWORD.as_bytes()),
        "the password crossed the plain donor leg in clear"
    );
    donor.wait_until_clone_free(DONOR_FREE_WAIT).await?;

    cold_auth_cache(&donor).await?;
    let second = clone_instance_with(
        &recipient,
        recipient_leg.addr(),
        CLONE_TIMEOUT,
        Transport::NoSsl,
    )
    .await?;
    assert_faithful(
        "plain recipient, TLS donor leg",
        &second,
        &dataset,
        &donor,
        &recipient,
    )
    .await?;
    assert_legs(
        &latest_completed(preferred.admin_addr()).await?,
        false,
        true,
    )?;
    ensure!(
        recipient_leg.keys_seen() >= 1,
        "the relay never served its key to the recipient: no full authentication to bridge"
    );
    let from_recipient = handshake_lengths(&recipient_leg);
    ensure!(
        from_recipient.contains(&RSA_CIPHERTEXT_LEN),
        "the recipient sent no encrypted password: packets {from_recipient:?}"
    );
    ensure!(
        !recipient_leg.to_donor_contains(DONOR_PASSWORD.as_bytes()),
        "the password crossed the plain recipient leg in clear"
    );

    let disabled_lines = check_log("--server-tls-mode disabled", &disabled.log_text()?)?;
    let preferred_lines = check_log("--server-tls-mode preferred", &preferred.log_text()?)?;
    eprintln!(
        "full authentication bridged: TLS recipient to plain donor leg in {:.1} s (donor key \
         sent {} times, to-donor handshake packets {to_donor:?}, log {disabled_lines} lines); \
         plain recipient to TLS donor leg in {:.1} s (relay key served {} times, recipient \
         handshake packets {from_recipient:?}, log {preferred_lines} lines); no password in \
         either log",
        first.statement_time.as_secs_f64(),
        donor_leg.keys_seen(),
        second.statement_time.as_secs_f64(),
        recipient_leg.keys_seen()
    );
    Ok(())
}
