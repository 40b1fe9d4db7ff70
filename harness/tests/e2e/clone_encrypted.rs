//! Encrypted tablespaces through the relay, end to end with real MySQL: donor and recipient load
//! the `component_keyring_file` keyring, and the donor holds a table created with
//! `ENCRYPTION='Y'` next to the ordinary data set. The donor sends an encrypted tablespace's key
//! only over TLS, so the clone completes with TLS on both legs (the recipient's table still
//! encrypted, with its own master key), and fails with the donor's error 3872 when the relay's
//! donor leg is plain, the relay naming the fix (`--server-tls-mode`) in its log and `/sessions`.

use std::time::Duration;

use clone_relay::config::{ClientTlsMode, ServerTlsMode};
use clone_relay::session::{ENCRYPTED_OVER_PLAIN_DONOR_LEG, ER_CLONE_ENCRYPTION, SessionView};
use harness::clone::{CloneOutcome, Transport, clone_instance_with};
use harness::dataset::Dataset;
use harness::image::mysql_image;
use harness::{MysqlServer, RelayFixture, ServerOptions};

const MIB: u64 = 1024 * 1024;
/// The ordinary tables: a small data set, the clone is about encryption, not size.
const DATASET_BYTES: u64 = 8 * MIB;
/// The encrypted table, in the data set's schema.
const SECRET_TABLE: &str = "drill.secret";
const SECRET_ROWS: u64 = 4000;
const CLONE_TIMEOUT: Duration = Duration::from_secs(300);
/// A refused clone ends at the first encrypted file.
const REFUSED_CLONE_TIMEOUT: Duration = Duration::from_secs(120);
/// The recipient's error for a clone the donor refused; its message carries the donor's errno.
const ER_CLONE_DONOR: i64 = 3862;
/// Bound on waiting for the donor to let go of a finished clone.
const DONOR_FREE_WAIT: Duration = Duration::from_secs(60);

/// A server with the keyring loaded.
fn with_keyring(mut options: ServerOptions) -> ServerOptions {
    options.keyring = true;
    options
}

/// Creates the encrypted table on `donor` and fills it with random bytes.
async fn seed_secret(donor: &MysqlServer) -> anyhow::Result<()> {
    donor
        .sql(&format!(
            "CREATE TABLE {SECRET_TABLE} (
               id BIGINT UNSIGNED NOT NULL AUTO_INCREMENT PRIMARY KEY,
               payload BLOB NOT NULL
             ) ENGINE=InnoDB ENCRYPTION='Y';
             SET SESSION cte_max_recursion_depth = {SECRET_ROWS};
             INSERT INTO {SECRET_TABLE} (payload)
             WITH RECURSIVE seq(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM seq WHERE n < {SECRET_ROWS})
             SELECT RANDOM_BYTES(1024) FROM seq"
        ))
        .await?;
    Ok(())
}

/// Whether InnoDB keeps the encrypted table's tablespace encrypted on `server`, from
/// `INNODB_TABLESPACES` and the table's `CREATE_OPTIONS`.
async fn secret_is_encrypted(server: &MysqlServer) -> anyhow::Result<bool> {
    let (schema, table) = SECRET_TABLE.split_once('.').unwrap_or_default();
    let rows = server
        .rows(&format!(
            "SELECT s.ENCRYPTION, t.CREATE_OPTIONS
             FROM information_schema.INNODB_TABLESPACES s
             JOIN information_schema.TABLES t ON s.NAME = CONCAT(t.TABLE_SCHEMA, '/', t.TABLE_NAME)
             WHERE t.TABLE_SCHEMA = '{schema}' AND t.TABLE_NAME = '{table}'"
        ))
        .await?;
    match rows.as_slice() {
        [row] => match row.as_slice() {
            [encryption, options] => Ok(encryption == "Y" && options.contains("ENCRYPTION='Y'")),
            _ => anyhow::bail!("{}: unexpected row {row:?}", server.name()),
        },
        _ => anyhow::bail!("{}: {SECRET_TABLE} not found: {rows:?}", server.name()),
    }
}

/// CHECKSUM TABLE of the encrypted table.
async fn secret_checksum(server: &MysqlServer) -> anyhow::Result<String> {
    let sum = server
        .sql(&format!("CHECKSUM TABLE {SECRET_TABLE}"))
        .await?;
    let sum = sum
        .split('\t')
        .nth(1)
        .unwrap_or_default()
        .trim()
        .to_string();
    anyhow::ensure!(
        sum.parse::<u64>().is_ok(),
        "{}: no checksum for {SECRET_TABLE}: {sum:?}",
        server.name()
    );
    Ok(sum)
}

/// The relay's only session, ended.
fn only_session(relay: &RelayFixture) -> SessionView {
    let view = relay.sessions();
    assert_eq!(view.sessions.len(), 1, "{view:#?}");
    let session = view.sessions[0].clone();
    assert!(session.state.ended(), "{session:#?}");
    session
}

/// Every connection of the session ran TLS on its donor leg (`tls`), or none did.
fn assert_donor_leg(session: &SessionView, tls: bool) {
    assert!(!session.connections.is_empty(), "{session:#?}");
    for c in &session.connections {
        assert_eq!(
            (c.tls_downstream, c.tls_upstream),
            (tls, tls),
            "connection {} ({}): TLS downstream, upstream",
            c.id,
            c.role.as_str()
        );
    }
}

pub async fn an_encrypted_tablespace_clones_over_a_tls_donor_leg_and_is_refused_over_a_plain_one()
-> anyhow::Result<()> {
    let image = mysql_image().await?;
    let donor = MysqlServer::start(&image, with_keyring(ServerOptions::donor())).await?;
    let dataset = Dataset::of_size(DATASET_BYTES);
    dataset.seed(&donor).await?;
    seed_secret(&donor).await?;
    assert!(
        secret_is_encrypted(&donor).await?,
        "the donor did not encrypt {SECRET_TABLE}"
    );
    let secret_sum = secret_checksum(&donor).await?;

    // The relay on its defaults (TLS towards the recipient, and towards the donor when the
    // recipient uses it), and one with both legs plain.
    let tls_relay = RelayFixture::start(donor.addr())?;
    let mut config = RelayFixture::config(donor.addr());
    config.client_tls_mode = ClientTlsMode::Disabled;
    config.server_tls_mode = ServerTlsMode::Disabled;
    let plain_relay = RelayFixture::start_with(config)?;
    let recipient = MysqlServer::start(
        &image,
        with_keyring(ServerOptions::recipient(
            2,
            &[tls_relay.addr(), plain_relay.addr()],
        )),
    )
    .await?;

    // (a) TLS on both legs: the clone completes and the table stays encrypted.
    let outcome = clone_instance_with(
        &recipient,
        tls_relay.addr(),
        CLONE_TIMEOUT,
        Transport::RequireSsl,
    )
    .await?;
    assert!(outcome.completed(), "{outcome:?}");
    assert_eq!(
        dataset.compare(&donor, &recipient).await?,
        Vec::<String>::new(),
        "tables that differ from the donor's"
    );
    assert_eq!(secret_checksum(&recipient).await?, secret_sum);
    assert!(
        secret_is_encrypted(&recipient).await?,
        "the recipient's {SECRET_TABLE} is not encrypted after the clone"
    );
    let session = only_session(&tls_relay);
    assert_eq!(session.state.as_str(), "completed", "{session:#?}");
    assert!(session.error.is_none(), "{session:#?}");
    assert_donor_leg(&session, true);
    eprintln!(
        "encrypted table over TLS: completed in {:.1} s, {} data bytes, {} connections; \
         checksum {secret_sum} on both sides, still encrypted on the recipient",
        outcome.statement_time.as_secs_f64(),
        outcome.data_bytes,
        session.connections.len()
    );
    donor.wait_until_clone_free(DONOR_FREE_WAIT).await?;

    // (b) A plain donor leg: the donor refuses to send the key, and the relay says why.
    let refused = clone_instance_with(
        &recipient,
        plain_relay.addr(),
        REFUSED_CLONE_TIMEOUT,
        Transport::NoSsl,
    )
    .await?;
    assert_refused(&refused);
    let session = only_session(&plain_relay);
    assert_eq!(session.state.as_str(), "failed", "{session:#?}");
    assert_donor_leg(&session, false);
    let error = session
        .error
        .clone()
        .unwrap_or_else(|| panic!("no donor error recorded: {session:#?}"));
    assert_eq!(error.errno, ER_CLONE_ENCRYPTION, "{session:#?}");
    assert_eq!(
        error.reason.as_deref(),
        Some(ENCRYPTED_OVER_PLAIN_DONOR_LEG),
        "{session:#?}"
    );
    // The same, as /sessions serves it.
    let json = plain_relay.sessions_json().await?;
    let reason = json["sessions"][0]["error"]["reason"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    assert!(reason.contains("--server-tls-mode"), "{json:#}");
    eprintln!(
        "encrypted table over a plain donor leg: recipient error {} ({}); relay: {reason}",
        refused.error_no, refused.error_message
    );

    tls_relay.stop().await?;
    plain_relay.stop().await
}

/// The recipient reports the donor's refusal to send encrypted data in plaintext: its own
/// ER_CLONE_DONOR around the donor's ER_CLONE_ENCRYPTION.
fn assert_refused(outcome: &CloneOutcome) {
    assert_eq!(outcome.state, "Failed", "{outcome:?}");
    assert_eq!(outcome.error_no, ER_CLONE_DONOR, "{outcome:?}");
    assert!(
        outcome
            .error_message
            .contains(&format!("Clone Donor Error: {ER_CLONE_ENCRYPTION} :")),
        "{outcome:?}"
    );
}
