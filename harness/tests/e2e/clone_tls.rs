//! TLS on both legs, end to end with real MySQL: clones with no `REQUIRE` clause and with
//! `REQUIRE SSL` through the relay on its defaults, a recipient that pins the relay's CA across
//! a relay restart, full authentication inside TLS, the refusals (a donor without TLS, a
//! recipient without TLS, a donor certificate from another CA), each naming its cause and
//! forwarding nothing in plaintext, and the donor's certificate verified against its own CA.
//! A recording proxy (the tap) between the relay and the donor shows what an eavesdropper on
//! the donor leg would see. Mutual TLS: a donor account that `REQUIRE X509` with the relay
//! presenting its client certificate, and recipients presenting theirs to the relay. A
//! certificate reload in the middle of a TLS clone. Link drops over TLS are in `link_drops.rs`,
//! next to the plain ones.
//!
//! The tests of this file run one at a time: each starts its own MySQL servers, and the first
//! compares two clone times, which another test's clone running alongside would skew.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use clone_relay::config::{ClientTlsMode, ServerTlsMode, ServerTlsVerify};
use clone_relay::protocol::clone::Stage;
use clone_relay::protocol::handshake::{CLIENT_SSL, ServerHello, parse_server_hello};
use clone_relay::session::{Role, SessionView};
use harness::clone::{
    CloneOutcome, Transport, clone_instance_with, set_clone_ssl_ca, set_clone_ssl_identity,
};
use harness::dataset::Dataset;
use harness::image::{ImageRef, mysql_image};
use harness::mysql::DONOR_USER;
use harness::tap::Tap;
use harness::{MysqlServer, RelayFixture, ServerOptions};
use tokio::time::Instant;

const MIB: u64 = 1024 * 1024;
const DATASET_BYTES: u64 = 110 * MIB;
/// Enough data for a clone with workers; the mutual TLS and reload tests are about who may
/// clone and what a reload leaves alone, not speed.
const MTLS_DATASET_BYTES: u64 = 32 * MIB;
/// The donor leg's cap in the reload test, and the clone data carried when it reloads.
const RELOAD_CAP_BYTES_PER_SEC: u64 = 14 * MIB;
const RELOAD_AT_BYTES: u64 = 20 * MIB;
const CLONE_TIMEOUT: Duration = Duration::from_secs(600);
/// A refused clone ends at its first connection.
const REFUSED_CLONE_TIMEOUT: Duration = Duration::from_secs(120);
/// Bound on waiting for the donor to let go of a finished clone.
const DONOR_FREE_WAIT: Duration = Duration::from_secs(60);
/// Bound on waiting for the relay to list a refused connection.
const REJECTION_WAIT: Duration = Duration::from_secs(10);
/// The recipient options that make three workers attach as soon as data flows
/// (shared/docs/clone-wire.md).
const THREE_WORKERS: [&str; 2] = [
    "--clone-autotune-concurrency=OFF",
    "--clone-max-concurrency=4",
];

/// A fresh, empty state directory for a relay.
fn state_dir(name: &str) -> anyhow::Result<PathBuf> {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .as_nanos();
    let dir = std::env::temp_dir().join(format!(
        "clone-relay-tls-{name}-{}-{nanos}",
        std::process::id()
    ));
    std::fs::create_dir_all(&dir)?;
    Ok(dir)
}

/// A donor started with `extra` mysqld options, seeded with `bytes` of data when `bytes > 0`.
async fn donor(
    image: &ImageRef,
    extra: &[&str],
    bytes: u64,
) -> anyhow::Result<(MysqlServer, Dataset)> {
    let mut options = ServerOptions::donor();
    options.extra_args = extra.iter().map(ToString::to_string).collect();
    let donor = MysqlServer::start(image, options).await?;
    let dataset = Dataset::of_size(bytes);
    if bytes > 0 {
        dataset.seed(&donor).await?;
    }
    Ok((donor, dataset))
}

/// A recipient that may clone only through `relays`.
async fn recipient(
    image: &ImageRef,
    relays: &[SocketAddr],
    extra: &[&str],
) -> anyhow::Result<MysqlServer> {
    let mut options = ServerOptions::recipient(2, relays);
    options.extra_args = extra.iter().map(ToString::to_string).collect();
    MysqlServer::start(image, options).await
}

/// The clone completed and the recipient holds the donor's data, table by table.
async fn assert_faithful(
    what: &str,
    outcome: &CloneOutcome,
    dataset: &Dataset,
    donor: &MysqlServer,
    recipient: &MysqlServer,
) -> anyhow::Result<()> {
    assert!(outcome.completed(), "{what}: {outcome:?}");
    assert_eq!(
        dataset.compare(donor, recipient).await?,
        Vec::<String>::new(),
        "{what}: tables that differ from the donor's"
    );
    Ok(())
}

/// The relay's latest session, which must be a completed one other than `not`.
fn latest_completed(relay: &RelayFixture, not: Option<u64>) -> SessionView {
    let view = relay.sessions();
    let session = view.sessions.last().cloned();
    let session = session.unwrap_or_else(|| panic!("the relay has no session: {view:#?}"));
    assert_ne!(Some(session.id), not, "no new session: {view:#?}");
    assert_eq!(session.state.as_str(), "completed", "{session:#?}");
    session
}

/// Every connection of the session had TLS on both legs (`tls` true) or on neither (false).
fn assert_tls_on_both_legs(session: &SessionView, tls: bool) {
    assert!(!session.connections.is_empty(), "{session:#?}");
    for c in &session.connections {
        assert!(
            c.tls_downstream == tls && c.tls_upstream == tls,
            "connection {} ({}) has TLS downstream {} and upstream {}, expected {tls} on both",
            c.id,
            c.role.as_str(),
            c.tls_downstream,
            c.tls_upstream
        );
    }
}

/// Waits until the relay lists a rejected connection whose reason contains `reason`; returns
/// that reason.
async fn rejection(relay: &RelayFixture, reason: &str) -> String {
    let deadline = Instant::now() + REJECTION_WAIT;
    loop {
        let rejected = relay.sessions().rejected;
        if let Some(found) = rejected
            .iter()
            .filter_map(|c| c.close_reason.clone())
            .find(|r| r.contains(reason))
        {
            return found;
        }
        assert!(
            Instant::now() < deadline,
            "waited {REJECTION_WAIT:?} for the relay to list a connection rejected with a \
             reason containing {reason:?}; rejected: {rejected:#?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A clone that must fail: its outcome, with the recipient's error message containing `cause`.
async fn refused_clone(
    recipient: &MysqlServer,
    relay: &RelayFixture,
    transport: Transport,
    cause: &str,
) -> anyhow::Result<CloneOutcome> {
    let outcome =
        clone_instance_with(recipient, relay.addr(), REFUSED_CLONE_TIMEOUT, transport).await?;
    assert_eq!(outcome.state, "Failed", "{outcome:?}");
    assert!(
        outcome.error_message.contains(cause),
        "the recipient's error does not name the cause {cause:?}: {outcome:?}"
    );
    Ok(outcome)
}

pub async fn both_legs_use_tls_on_the_relays_defaults_and_the_data_is_hidden() -> anyhow::Result<()>
{
    let image = mysql_image().await?;
    let (donor, dataset) = donor(&image, &[], DATASET_BYTES).await?;
    // A value from the middle of the data: the tap looks for it on the donor leg.
    let label = donor
        .sql("SELECT label FROM drill.t1 ORDER BY id LIMIT 1 OFFSET 10000")
        .await?;
    let label = label.trim();
    assert_eq!(label.len(), 64, "a label is a SHA-256 in hex: {label:?}");
    let tap = Tap::start(donor.addr(), label.as_bytes()).await?;
    let dir = state_dir("defaults")?;
    let mut config = RelayFixture::config(tap.addr());
    config.state_dir = Some(dir.clone());
    let relay = RelayFixture::start_with(config)?;
    let recipient = recipient(&image, &[relay.addr()], &THREE_WORKERS).await?;

    // The control: a plaintext clone shows the value to the tap.
    let plain =
        clone_instance_with(&recipient, relay.addr(), CLONE_TIMEOUT, Transport::NoSsl).await?;
    assert_faithful("REQUIRE NO SSL", &plain, &dataset, &donor, &recipient).await?;
    let after_plain = tap.from_donor();
    assert!(
        after_plain.matches >= 1,
        "the tap never saw the label {label} in {} bytes of a plaintext clone",
        after_plain.bytes
    );
    let plain_session = latest_completed(&relay, None);
    assert_tls_on_both_legs(&plain_session, false);
    donor.wait_until_clone_free(DONOR_FREE_WAIT).await?;

    // No REQUIRE clause: TLS, since the relay offers it as the donor does.
    let tls =
        clone_instance_with(&recipient, relay.addr(), CLONE_TIMEOUT, Transport::Default).await?;
    assert_faithful("no REQUIRE clause", &tls, &dataset, &donor, &recipient).await?;
    let after_tls = tap.from_donor();
    let carried = after_tls.bytes - after_plain.bytes;
    assert!(
        carried >= tls.data_bytes,
        "the TLS clone did not pass the tap: {carried} bytes through it, {} cloned",
        tls.data_bytes
    );
    assert_eq!(
        after_tls.matches, after_plain.matches,
        "the tap saw the label {label} in plaintext during the TLS clone"
    );

    let session = latest_completed(&relay, Some(plain_session.id));
    let roles: Vec<Role> = session.connections.iter().map(|c| c.role).collect();
    for role in [Role::Main, Role::Aux, Role::Worker] {
        assert!(roles.contains(&role), "no {} in {roles:?}", role.as_str());
    }
    let workers = roles.iter().filter(|r| **r == Role::Worker).count();
    let progress = session
        .progress
        .as_ref()
        .unwrap_or_else(|| panic!("no progress for the TLS clone: {session:#?}"));
    assert!(
        session.stages.iter().any(|c| c.to == Stage::FileCopy),
        "the relay saw no FILE COPY stage through TLS: {session:#?}"
    );
    assert!(
        session.data_bytes.abs_diff(tls.data_bytes) * 100 <= tls.data_bytes,
        "the relay counted {} data bytes through TLS, the recipient {}",
        session.data_bytes,
        tls.data_bytes
    );
    assert_tls_on_both_legs(&session, true);
    eprintln!(
        "TLS on both legs: {} connections ({workers} workers), stage {:?} at {:?} %, relay saw \
         {} data bytes, recipient {}; clone {:.1} s with TLS, {:.1} s plain: TLS/plain = {:.2}",
        session.connections.len(),
        progress.stage,
        progress.percent,
        session.data_bytes,
        tls.data_bytes,
        tls.statement_time.as_secs_f64(),
        plain.statement_time.as_secs_f64(),
        tls.statement_time.as_secs_f64() / plain.statement_time.as_secs_f64()
    );
    relay.stop().await?;
    std::fs::remove_dir_all(&dir)?;
    Ok(())
}

pub async fn require_ssl_with_the_relays_ca_pinned_survives_a_relay_restart() -> anyhow::Result<()>
{
    let image = mysql_image().await?;
    let (donor, dataset) = donor(&image, &["--require-secure-transport=ON"], DATASET_BYTES).await?;
    let dir = state_dir("pinned")?;
    let mut config = RelayFixture::config(donor.addr());
    config.state_dir = Some(dir.clone());
    let relay = RelayFixture::start_with(config.clone())?;
    let ca_file = dir.join("tls").join(clone_relay::tls::CA_FILE);
    let ca = std::fs::read_to_string(&ca_file)?;
    let recipient = recipient(&image, &[relay.addr()], &[]).await?;

    // Pinned to another CA, the recipient refuses the relay: the pin is really checked.
    set_clone_ssl_ca(&recipient, &unrelated_ca()?).await?;
    let wrong_pin = clone_instance_with(
        &recipient,
        relay.addr(),
        REFUSED_CLONE_TIMEOUT,
        Transport::RequireSsl,
    )
    .await?;
    assert_eq!(wrong_pin.state, "Failed", "{wrong_pin:?}");
    assert!(
        wrong_pin
            .error_message
            .contains("certificate verify failed"),
        "{wrong_pin:?}"
    );
    let relay_saw = rejection(&relay, "recipient TLS").await;
    eprintln!(
        "REQUIRE SSL pinned to another CA: recipient error {} ({}); relay: {relay_saw}",
        wrong_pin.error_no, wrong_pin.error_message
    );

    set_clone_ssl_ca(&recipient, &ca).await?;
    let first = clone_instance_with(
        &recipient,
        relay.addr(),
        CLONE_TIMEOUT,
        Transport::RequireSsl,
    )
    .await?;
    assert_faithful(
        "REQUIRE SSL, first relay",
        &first,
        &dataset,
        &donor,
        &recipient,
    )
    .await?;
    assert_tls_on_both_legs(&latest_completed(&relay, None), true);

    // The same address and state directory: the same certificate, so the pin still holds.
    let fingerprint = relay.relay().tls().fingerprint.clone();
    assert!(fingerprint.is_some());
    let addr = relay.addr();
    relay.stop().await?;
    let relay = RelayFixture::start_at(addr, config)?;
    assert_eq!(relay.relay().tls().fingerprint, fingerprint);
    assert_eq!(std::fs::read_to_string(&ca_file)?, ca);
    donor.wait_until_clone_free(DONOR_FREE_WAIT).await?;

    // The recipient's restart after the first clone dropped its global settings.
    set_clone_ssl_ca(&recipient, &ca).await?;
    let second = clone_instance_with(
        &recipient,
        relay.addr(),
        CLONE_TIMEOUT,
        Transport::RequireSsl,
    )
    .await?;
    assert_faithful(
        "REQUIRE SSL, restarted relay",
        &second,
        &dataset,
        &donor,
        &recipient,
    )
    .await?;
    assert_tls_on_both_legs(&latest_completed(&relay, None), true);
    eprintln!(
        "REQUIRE SSL with the relay's CA pinned ({}): {:.1} s, and {:.1} s after the restart",
        fingerprint.unwrap_or_default(),
        first.statement_time.as_secs_f64(),
        second.statement_time.as_secs_f64()
    );
    relay.stop().await?;
    std::fs::remove_dir_all(&dir)?;
    Ok(())
}

pub async fn full_authentication_passes_inside_tls() -> anyhow::Result<()> {
    let image = mysql_image().await?;
    let (donor, dataset) = donor(&image, &[], DATASET_BYTES).await?;
    let relay = RelayFixture::start(donor.addr())?;
    let recipient = recipient(&image, &[relay.addr()], &[]).await?;

    // Setting the password (to the same one) empties caching_sha2_password's cache entry for the
    // account, so the clone's first login is a full authentication: the password itself, inside
    // TLS, read by the donor.
    donor
        .sql(&format!(
            "ALTER USER '{DONOR_USER}'@'%' IDENTIFIED BY '{}'",
            harness::mysql::DONOR_PASSWORD
        ))
        .await?;
    let outcome =
        clone_instance_with(&recipient, relay.addr(), CLONE_TIMEOUT, Transport::Default).await?;
    assert_faithful(
        "full authentication",
        &outcome,
        &dataset,
        &donor,
        &recipient,
    )
    .await?;
    assert_tls_on_both_legs(&latest_completed(&relay, None), true);
    relay.stop().await
}

/// Whether the greeting of the server at `addr` offers TLS.
async fn offers_tls(addr: SocketAddr) -> anyhow::Result<bool> {
    let mut s = tokio::net::TcpStream::connect(addr).await?;
    let (_, greeting) = tokio::time::timeout(
        Duration::from_secs(10),
        clone_relay::protocol::packet::read_packet(&mut s, 4096),
    )
    .await??;
    match parse_server_hello(&greeting).map_err(anyhow::Error::msg)? {
        ServerHello::Greeting(g) => Ok(g.capabilities & CLIENT_SSL != 0),
        other => anyhow::bail!("{addr} answered {other:?} instead of a greeting"),
    }
}

pub async fn a_donor_without_tls_is_refused_when_the_donor_leg_requires_it() -> anyhow::Result<()> {
    let image = mysql_image().await?;
    // An empty list of TLS versions turns TLS off on the classic protocol.
    let (donor, _) = donor(&image, &["--tls-version="], 0).await?;
    assert!(
        !offers_tls(donor.addr()).await?,
        "the donor still offers TLS"
    );
    let tap = Tap::start(donor.addr(), DONOR_USER.as_bytes()).await?;
    let mut config = RelayFixture::config(tap.addr());
    config.server_tls_mode = ServerTlsMode::Required;
    let relay = RelayFixture::start_with(config)?;
    let recipient = recipient(&image, &[relay.addr()], &[]).await?;

    let outcome = refused_clone(&recipient, &relay, Transport::Default, "offers no TLS").await?;
    // The refusal takes the greeting's place: the recipient must not read a SQL state into it.
    assert!(
        outcome.error_message.contains(": clone-relay: the donor"),
        "{outcome:?}"
    );
    let reason = rejection(&relay, "offers no TLS").await;
    // Only the refused login of the relay's probe user, which ends the donor's handshake
    // without a connection error: nothing of the recipient's login.
    assert_eq!(
        tap.to_donor().matches,
        0,
        "the donor received the login request's user name"
    );
    eprintln!(
        "donor without TLS: recipient error {} ({}); relay: {reason}",
        outcome.error_no, outcome.error_message
    );
    relay.stop().await
}

pub async fn refusals_on_a_tls_donor_name_their_cause_and_forward_nothing() -> anyhow::Result<()> {
    let image = mysql_image().await?;
    let (donor, _) = donor(&image, &[], 0).await?;
    assert!(offers_tls(donor.addr()).await?);

    // (b) The recipient leg requires TLS; the recipient clones in plaintext.
    let plain_tap = Tap::start(donor.addr(), DONOR_USER.as_bytes()).await?;
    let mut config = RelayFixture::config(plain_tap.addr());
    config.client_tls_mode = ClientTlsMode::Required;
    let requires_tls = RelayFixture::start_with(config)?;

    // (c) The donor's certificate is checked against a CA that did not sign it.
    let dir = state_dir("other-ca")?;
    let other_ca = dir.join("other-ca.pem");
    std::fs::write(&other_ca, unrelated_ca()?)?;
    let ca_tap = Tap::start(donor.addr(), DONOR_USER.as_bytes()).await?;
    let mut config = RelayFixture::config(ca_tap.addr());
    config.server_tls_verify = ServerTlsVerify::Ca;
    config.server_tls_ca = Some(other_ca);
    let verifies = RelayFixture::start_with(config)?;

    let recipient = recipient(&image, &[requires_tls.addr(), verifies.addr()], &[]).await?;

    let plain = refused_clone(
        &recipient,
        &requires_tls,
        Transport::NoSsl,
        "without TLS are refused",
    )
    .await?;
    let plain_reason = rejection(&requires_tls, "without TLS").await;
    assert_eq!(
        plain_tap.to_donor().matches,
        0,
        "the relay sent the donor part of a plaintext login"
    );

    let other = refused_clone(
        &recipient,
        &verifies,
        Transport::Default,
        "TLS to the donor",
    )
    .await?;
    let other_reason = rejection(&verifies, "TLS to upstream").await;
    let to_donor = ca_tap.to_donor();
    assert!(to_donor.bytes > 0, "the relay never tried TLS to the donor");
    assert_eq!(
        to_donor.matches, 0,
        "the donor received the login request's user name"
    );
    eprintln!(
        "plaintext recipient under required TLS: recipient error {} ({}); relay: {plain_reason}",
        plain.error_no, plain.error_message
    );
    eprintln!(
        "donor certificate from another CA: recipient error {} ({}); relay: {other_reason}; \
         {} bytes of SSLRequest and TLS handshake reached the donor",
        other.error_no, other.error_message, to_donor.bytes
    );
    requires_tls.stop().await?;
    verifies.stop().await?;
    std::fs::remove_dir_all(&dir)?;
    Ok(())
}

/// A CA certificate (PEM) that signed nothing the donor has.
fn unrelated_ca() -> anyhow::Result<String> {
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new())?;
    params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "not the donor's CA");
    let key = rcgen::KeyPair::generate()?;
    Ok(params.self_signed(&key)?.pem())
}

pub async fn ca_verification_passes_with_the_donors_own_ca() -> anyhow::Result<()> {
    let image = mysql_image().await?;
    let (donor, dataset) = donor(&image, &[], DATASET_BYTES).await?;
    // The CA mysqld made for its own certificate at its first start; the certificate names no
    // host, so `ca` (the chain without the name) passes and `identity` cannot.
    let dir = state_dir("donor-ca")?;
    let donor_ca = dir.join("donor-ca.pem");
    std::fs::write(&donor_ca, donor.read_data_file("ca.pem").await?)?;
    let verifying = |verify| {
        let mut config = RelayFixture::config(donor.addr());
        config.server_tls_verify = verify;
        config.server_tls_ca = Some(donor_ca.clone());
        RelayFixture::start_with(config)
    };
    let chain_only = verifying(ServerTlsVerify::Ca)?;
    let with_name = verifying(ServerTlsVerify::Identity)?;
    let recipient = recipient(&image, &[chain_only.addr(), with_name.addr()], &[]).await?;

    let refused = refused_clone(
        &recipient,
        &with_name,
        Transport::Default,
        "TLS to the donor",
    )
    .await?;
    let name_reason = rejection(&with_name, "TLS to upstream").await;
    // webpki checks the chain before the name: a name mismatch means the chain passed.
    assert!(
        refused.error_message.contains("not valid for name"),
        "{refused:?}"
    );

    let outcome = clone_instance_with(
        &recipient,
        chain_only.addr(),
        CLONE_TIMEOUT,
        Transport::Default,
    )
    .await?;
    let rejected = chain_only.sessions().rejected;
    assert!(
        outcome.completed(),
        "{outcome:?}; the relay rejected: {rejected:#?}"
    );
    assert_faithful("donor's own CA", &outcome, &dataset, &donor, &recipient).await?;
    assert_tls_on_both_legs(&latest_completed(&chain_only, None), true);
    eprintln!(
        "donor certificate against its own CA: `identity` refused (recipient error {}: {}; \
         relay: {name_reason}); `ca` passed: {} data bytes in {:.1} s",
        refused.error_no,
        refused.error_message,
        outcome.data_bytes,
        outcome.statement_time.as_secs_f64()
    );
    chain_only.stop().await?;
    with_name.stop().await?;
    std::fs::remove_dir_all(&dir)?;
    Ok(())
}

/// A CA made by the test, and certificates it signs.
struct TestCa {
    issuer: rcgen::CertifiedIssuer<'static, rcgen::KeyPair>,
}

/// A certificate chain (the certificate, then the CA) and its key, as PEM.
struct Signed {
    chain_pem: String,
    key_pem: String,
}

impl TestCa {
    fn new(name: &str) -> anyhow::Result<Self> {
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new())?;
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params.key_usages = vec![
            rcgen::KeyUsagePurpose::KeyCertSign,
            rcgen::KeyUsagePurpose::CrlSign,
        ];
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, format!("{name} CA"));
        Ok(TestCa {
            issuer: rcgen::CertifiedIssuer::self_signed(params, rcgen::KeyPair::generate()?)?,
        })
    }

    fn pem(&self) -> String {
        self.issuer.pem()
    }

    /// A client certificate with the common name (and DNS name) `name`.
    fn client(&self, name: &str) -> anyhow::Result<Signed> {
        self.sign(name, rcgen::ExtendedKeyUsagePurpose::ClientAuth)
    }

    /// A server certificate with the common name (and DNS name) `name`.
    fn server(&self, name: &str) -> anyhow::Result<Signed> {
        self.sign(name, rcgen::ExtendedKeyUsagePurpose::ServerAuth)
    }

    fn sign(&self, name: &str, usage: rcgen::ExtendedKeyUsagePurpose) -> anyhow::Result<Signed> {
        let mut params = rcgen::CertificateParams::new(vec![name.to_string()])?;
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, name);
        params.extended_key_usages = vec![usage];
        params.use_authority_key_identifier_extension = true;
        let key = rcgen::KeyPair::generate()?;
        let cert = params.signed_by(&key, &self.issuer)?;
        Ok(Signed {
            chain_pem: format!("{}{}", cert.pem(), self.issuer.pem()),
            key_pem: key.serialize_pem(),
        })
    }
}

/// Writes `signed` into `dir` as `NAME.pem` and `NAME-key.pem` (readable by its owner only).
fn write_identity(
    dir: &std::path::Path,
    name: &str,
    signed: &Signed,
) -> anyhow::Result<(PathBuf, PathBuf)> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let (cert, key) = (
        dir.join(format!("{name}.pem")),
        dir.join(format!("{name}-key.pem")),
    );
    std::fs::write(&cert, &signed.chain_pem)?;
    std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&key)?
        .write_all(signed.key_pem.as_bytes())?;
    Ok((cert, key))
}

pub async fn a_donor_account_that_requires_x509_clones_through_the_relays_client_certificate()
-> anyhow::Result<()> {
    let image = mysql_image().await?;
    let (donor, dataset) = donor(&image, &[], MTLS_DATASET_BYTES).await?;
    // The donor trusts a CA of the test's for client certificates (ssl_ca, reloaded in place:
    // the file is written once mysqld runs), and the clone account needs a certificate from it.
    // The file keeps the donor's own CA too: mysqld checks its own certificate against ssl_ca.
    // (mysqld ends the ca.pem it makes with a NUL byte, which no exec argument may carry.)
    let donor_clients = TestCa::new("donor's clients")?;
    let own_ca = donor.read_data_file("ca.pem").await?;
    let bundle = format!(
        "{}\n{}",
        own_ca.trim_end_matches(['\0', '\n']),
        donor_clients.pem()
    );
    let ca_path = donor.write_file("x509-clients-ca.pem", &bundle).await?;
    donor
        .sql(&format!(
            "SET GLOBAL ssl_ca = '{ca_path}'; ALTER INSTANCE RELOAD TLS; \
             ALTER USER '{DONOR_USER}'@'%' REQUIRE X509"
        ))
        .await?;

    let dir = state_dir("x509")?;
    let (relay_cert, relay_key) =
        write_identity(&dir, "relay-client", &donor_clients.client("clone-relay")?)?;
    // Recipients too must show a certificate to the relay, from a CA of their own, and be on
    // its allow-list.
    let recipients = TestCa::new("recipients")?;
    let recipients_ca = dir.join("recipients-ca.pem");
    std::fs::write(&recipients_ca, recipients.pem())?;
    let recipient_identity = recipients.client("recipient-2")?;

    let mut config = RelayFixture::config(donor.addr());
    config.state_dir = Some(dir.join("state"));
    std::fs::create_dir_all(dir.join("state"))?;
    config.server_tls_cert = Some(relay_cert);
    config.server_tls_key = Some(relay_key);
    config.client_tls_mode = ClientTlsMode::Required;
    config.client_tls_ca = Some(recipients_ca);
    config.client_tls_allowed_subjects = vec!["recipient-2".into()];
    let with_cert = RelayFixture::start_with(config)?;
    let relay_ca = std::fs::read_to_string(dir.join("state/tls").join(clone_relay::tls::CA_FILE))?;
    // The same relay without a client certificate towards the donor.
    let without_cert = RelayFixture::start(donor.addr())?;
    let recipient = recipient(&image, &[with_cert.addr(), without_cert.addr()], &[]).await?;

    let refused = refused_clone(
        &recipient,
        &without_cert,
        Transport::Default,
        "Access denied",
    )
    .await?;
    assert!(
        without_cert.sessions().rejected.is_empty(),
        "the relay itself refused: {:#?}",
        without_cert.sessions().rejected
    );
    donor.wait_until_clone_free(DONOR_FREE_WAIT).await?;

    // A recipient certificate from the right CA but not on the allow-list: refused by the
    // relay, inside TLS, with the names the certificate carries.
    set_clone_ssl_ca(&recipient, &relay_ca).await?;
    let stranger = recipients.client("recipient-9")?;
    set_clone_ssl_identity(&recipient, &stranger.chain_pem, &stranger.key_pem).await?;
    let not_listed = refused_clone(
        &recipient,
        &with_cert,
        Transport::RequireSsl,
        "matches none of --client-tls-allowed-subjects",
    )
    .await?;
    assert!(
        not_listed.error_message.contains("CN=recipient-9"),
        "{not_listed:?}"
    );
    let not_listed_reason = rejection(&with_cert, "matches none of").await;

    set_clone_ssl_identity(
        &recipient,
        &recipient_identity.chain_pem,
        &recipient_identity.key_pem,
    )
    .await?;
    let outcome = clone_instance_with(
        &recipient,
        with_cert.addr(),
        CLONE_TIMEOUT,
        Transport::RequireSsl,
    )
    .await?;
    let rejected = with_cert.sessions().rejected;
    assert!(
        outcome.completed(),
        "{outcome:?}; the relay rejected: {rejected:#?}"
    );
    assert_eq!(
        rejected.len(),
        1,
        "only the recipient not listed: {rejected:#?}"
    );
    assert_faithful(
        "REQUIRE X509 through the relay's client certificate",
        &outcome,
        &dataset,
        &donor,
        &recipient,
    )
    .await?;
    let session = latest_completed(&with_cert, None);
    assert_tls_on_both_legs(&session, true);
    eprintln!(
        "REQUIRE X509: without the relay's client certificate the recipient got error {} ({}); \
         a recipient certificate not on the allow-list got error {} ({}; relay: \
         {not_listed_reason}); with both certificates right, {} data bytes over {} \
         connections in {:.1} s",
        refused.error_no,
        refused.error_message,
        not_listed.error_no,
        not_listed.error_message,
        outcome.data_bytes,
        session.connections.len(),
        outcome.statement_time.as_secs_f64()
    );
    with_cert.stop().await?;
    without_cert.stop().await?;
    std::fs::remove_dir_all(&dir)?;
    Ok(())
}

/// The certificate (DER) the relay at `addr` shows a new TLS connection, checked against
/// `ca_pem` under the name `clone-relay`: greeting, SSLRequest, TLS handshake, then gone.
async fn certificate_shown(addr: SocketAddr, ca_pem: &str) -> anyhow::Result<Vec<u8>> {
    use rustls::pki_types::pem::PemObject;
    use tokio::io::AsyncWriteExt;
    let mut s = tokio::net::TcpStream::connect(addr).await?;
    let (_, greeting) = tokio::time::timeout(
        Duration::from_secs(10),
        clone_relay::protocol::packet::read_packet(&mut s, 4096),
    )
    .await??;
    match parse_server_hello(&greeting).map_err(anyhow::Error::msg)? {
        ServerHello::Greeting(g) if g.capabilities & CLIENT_SSL != 0 => {}
        other => anyhow::bail!("{addr} offers no TLS: {other:?}"),
    }
    // CLIENT_PROTOCOL_41 | CLIENT_SSL | CLIENT_SECURE_CONNECTION | CLIENT_PLUGIN_AUTH, a 16 MiB
    // packet limit, utf8mb4.
    let mut request = vec![0u8; 32];
    request[..4].copy_from_slice(&(0x200 | CLIENT_SSL | 0x8000 | 0x0008_0000).to_le_bytes());
    request[4..8].copy_from_slice(&(16u32 << 20).to_le_bytes());
    request[8] = 255;
    s.write_all(&clone_relay::protocol::frame(1, &request))
        .await?;
    let mut roots = rustls::RootCertStore::empty();
    for cert in rustls::pki_types::CertificateDer::pem_slice_iter(ca_pem.as_bytes()) {
        roots.add(cert?)?;
    }
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()?
    .with_root_certificates(roots)
    .with_no_client_auth();
    let tls = tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect(rustls::pki_types::ServerName::try_from("clone-relay")?, s)
        .await?;
    let chain = tls
        .get_ref()
        .1
        .peer_certificates()
        .ok_or_else(|| anyhow::anyhow!("the relay showed no certificate"))?;
    Ok(chain[0].to_vec())
}

/// The first certificate of a PEM chain, as DER.
fn first_der(chain_pem: &str) -> anyhow::Result<Vec<u8>> {
    use rustls::pki_types::pem::PemObject;
    Ok(
        rustls::pki_types::CertificateDer::pem_slice_iter(chain_pem.as_bytes())
            .next()
            .ok_or_else(|| anyhow::anyhow!("no certificate in the chain"))??
            .to_vec(),
    )
}

pub async fn a_certificate_reload_during_a_tls_clone_leaves_it_whole() -> anyhow::Result<()> {
    let image = mysql_image().await?;
    let (donor, dataset) = donor(&image, &[], MTLS_DATASET_BYTES).await?;
    // A cap on the donor leg, so the clone (about 150 MB with the system tablespaces) takes
    // about ten seconds and the reload lands in its middle.
    let chaos = chaos::ChaosProxy::start(
        "127.0.0.1:0".parse()?,
        donor.addr().to_string(),
        1,
        vec![
            chaos::FaultSpec::new(chaos::FaultKind::Bandwidth {
                rate_bytes_per_sec: RELOAD_CAP_BYTES_PER_SEC,
                shared_group: Some("donor-leg".into()),
            })
            .direction(chaos::Direction::Downstream),
        ],
    )
    .await?;

    // The relay's certificate from files, and the one that replaces it, both from one CA that
    // the recipient pins.
    let dir = state_dir("reload")?;
    let ca = TestCa::new("relay files")?;
    let (first, second) = (ca.server("clone-relay")?, ca.server("clone-relay")?);
    let (cert, key) = write_identity(&dir, "relay", &first)?;
    let mut config = RelayFixture::config(chaos.addr());
    config.client_tls_cert = Some(cert);
    config.client_tls_key = Some(key);
    let relay = RelayFixture::start_with(config)?;
    assert_eq!(
        certificate_shown(relay.addr(), &ca.pem()).await?,
        first_der(&first.chain_pem)?
    );
    let recipient = recipient(&image, &[relay.addr()], &THREE_WORKERS).await?;
    set_clone_ssl_ca(&recipient, &ca.pem()).await?;

    let started = Instant::now();
    let clone = clone_instance_with(
        &recipient,
        relay.addr(),
        CLONE_TIMEOUT,
        Transport::RequireSsl,
    );
    let reload = async {
        relay
            .session_past(RELOAD_AT_BYTES, Duration::from_secs(120))
            .await?;
        let before = relay.relay().tls().certificate_fingerprint.clone();
        write_identity(&dir, "relay", &second)?;
        // The relay notices the new files within its poll interval.
        let deadline = Instant::now() + 3 * clone_relay::server::TLS_POLL_INTERVAL;
        while relay.relay().tls().certificate_fingerprint == before {
            anyhow::ensure!(
                Instant::now() < deadline,
                "the relay did not take the new certificate files within {:?}",
                3 * clone_relay::server::TLS_POLL_INTERVAL
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let session = relay.sessions().sessions.last().cloned();
        anyhow::Ok((started.elapsed(), session))
    };
    let (outcome, reloaded) = tokio::join!(clone, reload);
    let (outcome, (reloaded_at, at_reload)) = (outcome?, reloaded?);
    let rejected = relay.sessions().rejected;
    assert!(
        outcome.completed(),
        "{outcome:?}; the relay rejected: {rejected:#?}"
    );
    assert_faithful(
        "a certificate reload during the clone",
        &outcome,
        &dataset,
        &donor,
        &recipient,
    )
    .await?;
    let at_reload = at_reload.ok_or_else(|| anyhow::anyhow!("no session at the reload"))?;
    assert!(
        !at_reload.state.ended(),
        "the clone was over when the relay reloaded: {at_reload:#?}"
    );
    let session = latest_completed(&relay, None);
    assert_eq!(session.id, at_reload.id, "{session:#?}");
    assert!(
        at_reload.data_bytes < session.data_bytes,
        "the reload came after the last data: {} of {} bytes",
        at_reload.data_bytes,
        session.data_bytes
    );
    assert_eq!(session.resume_count, 0, "{session:#?}");
    assert_tls_on_both_legs(&session, true);
    assert!(rejected.is_empty(), "{rejected:#?}");
    assert_eq!(
        certificate_shown(relay.addr(), &ca.pem()).await?,
        first_der(&second.chain_pem)?,
        "a new connection after the reload"
    );
    eprintln!(
        "certificate reload {:.1} s into a TLS clone, at {} of {} data bytes: the clone \
         completed in {:.1} s over {} connections without a resume, and the next connection \
         got the new certificate",
        reloaded_at.as_secs_f64(),
        at_reload.data_bytes,
        session.data_bytes,
        outcome.statement_time.as_secs_f64(),
        session.connections.len()
    );
    relay.stop().await?;
    std::fs::remove_dir_all(&dir)?;
    Ok(())
}
