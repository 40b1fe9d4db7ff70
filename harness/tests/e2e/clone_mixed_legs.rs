//! TLS on one leg only ("mixed legs"), end to end with real MySQL: the four combinations of a
//! plain or TLS recipient leg with a plain or TLS donor leg, each cloned once with the donor's
//! caching_sha2_password cache emptied for the clone account (full authentication: the
//! password itself must cross the relay) and once with it warm (fast authentication). Every
//! clone's tables are compared with the donor's. The relay's debug log of the auth exchange
//! tells whether a login was a full authentication and how the relay carried it, so a case that
//! fast auth alone would pass cannot pass as a full-authentication case. A recording proxy (the
//! tap) between each relay and the donor shows that the password never reaches the donor leg in
//! clear.
//!
//! One donor and one recipient serve all the clones, one after another: each CLONE replaces the
//! recipient's data, and the donor is free of the previous clone before the next begins.

use std::io::Write;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use clone_relay::config::{ClientTlsMode, ServerTlsMode};
use clone_relay::session::SessionView;
use harness::clone::{CloneOutcome, Transport, clone_instance_with};
use harness::dataset::Dataset;
use harness::image::mysql_image;
use harness::mysql::{DONOR_PASSWORD, DONOR_USER};
use harness::tap::Tap;
use harness::{MysqlServer, RelayFixture, ServerOptions};
use tracing::Dispatch;
use tracing::dispatcher::DefaultGuard;

const MIB: u64 = 1024 * 1024;
/// Small: this file is about who may log in and how, not about speed.
const DATASET_BYTES: u64 = 16 * MIB;
const CLONE_TIMEOUT: Duration = Duration::from_secs(300);
/// Bound on waiting for the donor to let go of a finished clone.
const DONOR_FREE_WAIT: Duration = Duration::from_secs(60);

/// The relay's log lines of the auth exchange (target `clone_relay::connection::auth`, debug),
/// from the threads of this test's runtime.
#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().expect("log buffer").extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Captured {
    /// A multi-threaded runtime whose threads (and the caller's, while the guard lives) log
    /// the auth exchange here: this test's relays run on it, and the other tests of the binary
    /// on runtimes of their own, so their lines stay out.
    fn runtime() -> anyhow::Result<(Captured, tokio::runtime::Runtime, DefaultGuard)> {
        let captured = Captured::default();
        let writer = captured.clone();
        let dispatch = Dispatch::new(
            tracing_subscriber::fmt()
                .with_env_filter("clone_relay::connection::auth=debug")
                .with_ansi(false)
                .with_writer(move || writer.clone())
                .finish(),
        );
        let for_threads = dispatch.clone();
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .on_thread_start(move || {
                // For the thread's whole life.
                std::mem::forget(tracing::dispatcher::set_default(&for_threads));
            })
            .build()?;
        let guard = tracing::dispatcher::set_default(&dispatch);
        Ok((captured, runtime, guard))
    }

    /// How the full authentications logged since `from` (a byte offset) were carried, in
    /// order, and the offset to count from next time.
    fn full_auths_since(&self, from: usize) -> (Vec<String>, usize) {
        let log = self.0.lock().expect("log buffer");
        let text = String::from_utf8_lossy(&log[from..]);
        let kinds = text
            .lines()
            .filter(|line| line.contains("full authentication"))
            .filter_map(|line| {
                let at = line.find("full_auth=")? + "full_auth=".len();
                line[at..].split_whitespace().next().map(str::to_string)
            })
            .collect();
        (kinds, log.len())
    }
}

/// One combination of legs: how its relay is set up and how the recipient clones through it.
struct Case {
    name: &'static str,
    recipient_tls: bool,
    donor_tls: bool,
    client: ClientTlsMode,
    server: ServerTlsMode,
    /// How the relay carries a full authentication here (its log's `full_auth`).
    full_auth: &'static str,
}

const CASES: [Case; 4] = [
    Case {
        name: "plain recipient leg, plain donor leg",
        recipient_tls: false,
        donor_tls: false,
        client: ClientTlsMode::Disabled,
        server: ServerTlsMode::AsClient,
        full_auth: "Forwarded",
    },
    Case {
        name: "TLS recipient leg, plain donor leg",
        recipient_tls: true,
        donor_tls: false,
        client: ClientTlsMode::Required,
        server: ServerTlsMode::Disabled,
        full_auth: "EncryptedForDonor",
    },
    Case {
        name: "plain recipient leg, TLS donor leg",
        recipient_tls: false,
        donor_tls: true,
        client: ClientTlsMode::Disabled,
        server: ServerTlsMode::Required,
        full_auth: "DecryptedForDonor",
    },
    Case {
        name: "TLS recipient leg, TLS donor leg",
        recipient_tls: true,
        donor_tls: true,
        client: ClientTlsMode::Preferred,
        server: ServerTlsMode::AsClient,
        full_auth: "Forwarded",
    },
];

/// A relay for `case` behind its own tap, which watches the donor leg for the password.
struct CaseRelay {
    relay: RelayFixture,
    tap: Tap,
    state_dir: PathBuf,
}

fn state_dir(name: &str) -> anyhow::Result<PathBuf> {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .as_nanos();
    let dir = std::env::temp_dir().join(format!(
        "clone-relay-mixed-{name}-{}-{nanos}",
        std::process::id()
    ));
    std::fs::create_dir_all(&dir)?;
    Ok(dir)
}

async fn case_relay(case: &Case, index: usize, donor: SocketAddr) -> anyhow::Result<CaseRelay> {
    let tap = Tap::start(donor, DONOR_PASSWORD.as_bytes()).await?;
    let dir = state_dir(&index.to_string())?;
    let mut config = RelayFixture::config(tap.addr());
    config.client_tls_mode = case.client;
    config.server_tls_mode = case.server;
    config.state_dir = Some(dir.clone());
    Ok(CaseRelay {
        relay: RelayFixture::start_with(config)?,
        tap,
        state_dir: dir,
    })
}

/// The relay's latest session: completed, other than `not`, every connection with the legs
/// of `case`.
fn assert_session(case: &Case, relay: &RelayFixture, not: Option<u64>) -> SessionView {
    let view = relay.sessions();
    let session = view
        .sessions
        .last()
        .cloned()
        .unwrap_or_else(|| panic!("{}: the relay has no session: {view:#?}", case.name));
    assert_ne!(Some(session.id), not, "{}: no new session", case.name);
    assert_eq!(session.state.as_str(), "completed", "{session:#?}");
    assert!(!session.connections.is_empty(), "{session:#?}");
    for c in &session.connections {
        assert!(
            c.tls_downstream == case.recipient_tls && c.tls_upstream == case.donor_tls,
            "{}: connection {} ({}) has TLS downstream {} and upstream {}",
            case.name,
            c.id,
            c.role.as_str(),
            c.tls_downstream,
            c.tls_upstream
        );
    }
    session
}

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

/// Empties caching_sha2_password's cache entry of the clone account: setting its password (to
/// the same one) drops the entry, so its next login is a full authentication.
async fn empty_the_cache(donor: &MysqlServer) -> anyhow::Result<()> {
    donor
        .sql(&format!(
            "ALTER USER '{DONOR_USER}'@'%' IDENTIFIED BY '{DONOR_PASSWORD}'"
        ))
        .await?;
    Ok(())
}

pub fn all_four_leg_combinations_clone_with_an_empty_and_a_warm_auth_cache() -> anyhow::Result<()> {
    let (log, runtime, _guard) = Captured::runtime()?;
    runtime.block_on(all_four_leg_combinations(log))
}

async fn all_four_leg_combinations(log: Captured) -> anyhow::Result<()> {
    let image = mysql_image().await?;
    let donor = MysqlServer::start(&image, ServerOptions::donor()).await?;
    let dataset = Dataset::of_size(DATASET_BYTES);
    dataset.seed(&donor).await?;
    let mut relays = Vec::new();
    for (index, case) in CASES.iter().enumerate() {
        relays.push(case_relay(case, index, donor.addr()).await?);
    }
    let addrs: Vec<SocketAddr> = relays.iter().map(|r| r.relay.addr()).collect();
    let recipient = MysqlServer::start(&image, ServerOptions::recipient(2, &addrs)).await?;

    let (_, mut log_at) = log.full_auths_since(0);
    let mut report = Vec::new();
    for (case, relay) in CASES.iter().zip(&relays) {
        let transport = if case.recipient_tls {
            Transport::RequireSsl
        } else {
            Transport::NoSsl
        };
        let mut last_session = None;
        for empty in [true, false] {
            let what = format!(
                "{}, {} cache",
                case.name,
                if empty { "empty" } else { "warm" }
            );
            if empty {
                empty_the_cache(&donor).await?;
            }
            // Warm: the clone just before (the empty case) left the account in the cache.
            let outcome =
                clone_instance_with(&recipient, relay.relay.addr(), CLONE_TIMEOUT, transport)
                    .await?;
            assert_faithful(&what, &outcome, &dataset, &donor, &recipient).await?;
            let session = assert_session(case, &relay.relay, last_session);
            last_session = Some(session.id);
            let (full_auths, next) = log.full_auths_since(log_at);
            log_at = next;
            if empty {
                // The clone's first connection authenticates in full; the others find the
                // cache entry it made.
                assert!(
                    !full_auths.is_empty(),
                    "{what}: no full authentication, so the cache was not empty"
                );
                assert!(
                    full_auths.iter().all(|kind| kind == case.full_auth),
                    "{what}: full authentications carried as {full_auths:?}, expected {}",
                    case.full_auth
                );
            } else {
                assert_eq!(
                    full_auths,
                    Vec::<String>::new(),
                    "{what}: a full authentication with a warm cache"
                );
            }
            let to_donor = relay.tap.to_donor();
            assert_eq!(
                to_donor.matches, 0,
                "{what}: the password reached the donor leg in clear"
            );
            assert!(
                to_donor.bytes > 0,
                "{what}: nothing passed the tap to the donor"
            );
            report.push(format!(
                "{what}: {} connections, {} full authentication(s) {full_auths:?}, {} data \
                 bytes in {:.1} s, checksums equal",
                session.connections.len(),
                full_auths.len(),
                outcome.data_bytes,
                outcome.statement_time.as_secs_f64()
            ));
            donor.wait_until_clone_free(DONOR_FREE_WAIT).await?;
        }
    }

    // The relay that serves recipients without TLS a key of its own keeps it beside its
    // certificates, readable by its owner only.
    let key = relays[2]
        .state_dir
        .join("tls")
        .join(clone_relay::tls::RSA_KEY_FILE);
    let mode = std::os::unix::fs::PermissionsExt::mode(&std::fs::metadata(&key)?.permissions());
    assert_eq!(mode & 0o077, 0, "{} has mode {mode:o}", key.display());
    assert!(
        !relays[1]
            .state_dir
            .join("tls")
            .join(clone_relay::tls::RSA_KEY_FILE)
            .exists(),
        "a relay whose modes never need its own RSA key made one"
    );

    for line in &report {
        eprintln!("{line}");
    }
    for relay in relays {
        relay.relay.stop().await?;
        std::fs::remove_dir_all(&relay.state_dir)?;
    }
    Ok(())
}
