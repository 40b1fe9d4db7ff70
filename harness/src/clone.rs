//! Running `CLONE INSTANCE` on a recipient and following it until the recipient is back from its
//! restart and reports the clone Completed or Failed.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

use crate::mysql::{DONOR_PASSWORD, DONOR_USER, MysqlServer};

const POLL_INTERVAL: Duration = Duration::from_millis(500);

/// How a clone ended, as the recipient's performance_schema tells it.
#[derive(Debug, Clone)]
pub struct CloneOutcome {
    /// `Completed` or `Failed`.
    pub state: String,
    pub error_no: i64,
    pub error_message: String,
    /// The donor address the recipient cloned from (`clone_status.SOURCE`).
    pub source: String,
    /// From issuing CLONE INSTANCE until the statement returned (the copy, without the restart).
    pub statement_time: Duration,
    /// From issuing CLONE INSTANCE until the recipient reported the end, restart included.
    pub total_time: Duration,
    /// Bytes of data cloned, summed over `clone_progress` stages.
    pub data_bytes: u64,
    /// Bytes received over the network, summed over stages.
    pub network_bytes: u64,
    /// The FILE COPY stage's data bytes.
    pub file_copy_bytes: u64,
    /// The transfer stages (FILE COPY through REDO COPY) as the recipient's `clone_progress`
    /// timed them: the copy alone, without the connection set-up, the restart or recovery.
    pub transfer_time: Duration,
}

impl CloneOutcome {
    pub fn completed(&self) -> bool {
        self.state == "Completed"
    }
}

/// How the recipient's clone connections travel: the `REQUIRE` clause of `CLONE INSTANCE`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    /// `REQUIRE NO SSL`: plaintext.
    NoSsl,
    /// No `REQUIRE` clause: TLS whenever the donor offers it, plaintext otherwise.
    Default,
    /// `REQUIRE SSL`: TLS or no clone.
    RequireSsl,
}

impl Transport {
    /// The clause as it ends the `CLONE INSTANCE` statement (empty for [`Transport::Default`]).
    pub fn clause(self) -> &'static str {
        match self {
            Transport::NoSsl => " REQUIRE NO SSL",
            Transport::Default => "",
            Transport::RequireSsl => " REQUIRE SSL",
        }
    }
}

/// Clones from `donor` (a donor or a relay in front of one) into `recipient` in plaintext
/// (`REQUIRE NO SSL`), and waits for the end within `timeout`. A clone that fails is an `Ok`
/// outcome with state `Failed`; only the harness's own trouble (timeout, unreadable status) is
/// an error.
pub async fn clone_instance(
    recipient: &MysqlServer,
    donor: SocketAddr,
    timeout: Duration,
) -> Result<CloneOutcome> {
    clone_instance_with(recipient, donor, timeout, Transport::NoSsl).await
}

/// [`clone_instance`] with the transport of the clone's connections chosen by `transport`.
pub async fn clone_instance_with(
    recipient: &MysqlServer,
    donor: SocketAddr,
    timeout: Duration,
    transport: Transport,
) -> Result<CloneOutcome> {
    clone_instance_as(
        recipient,
        donor,
        timeout,
        transport,
        DONOR_USER,
        DONOR_PASSWORD,
    )
    .await
}

/// [`clone_instance_with`] logging in to the donor as `user` with `password` instead of the
/// harness's donor account.
pub async fn clone_instance_as(
    recipient: &MysqlServer,
    donor: SocketAddr,
    timeout: Duration,
    transport: Transport,
    user: &str,
    password: &str,
) -> Result<CloneOutcome> {
    // A recipient may clone more than once: the clone to follow is the one after this row.
    let previous = recipient
        .sql("SELECT CONCAT(ID, '@', BEGIN_TIME) FROM performance_schema.clone_status")
        .await
        .ok()
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty());
    let started = Instant::now();
    let statement = format!(
        "CLONE INSTANCE FROM '{user}'@'{}':{} IDENTIFIED BY '{password}'{}",
        donor.ip(),
        donor.port(),
        transport.clause()
    );
    let deadline = started + timeout;
    // The statement ends with an error either way once the recipient restarts; the status table
    // is what tells success from failure.
    let _ = tokio::time::timeout_at(deadline.into(), recipient.sql(&statement)).await;
    let statement_time = started.elapsed();

    // Each look at the status table is bounded by the deadline too (the recipient may be in
    // the middle of its restart).
    let mut last_seen = String::from("no row yet");
    loop {
        if Instant::now() > deadline {
            bail!(
                "clone into {} did not end within {timeout:?} (last clone_status: {last_seen})",
                recipient.name()
            );
        }
        let rows = tokio::time::timeout_at(
            deadline.into(),
            recipient.rows(
                "SELECT CONCAT(ID, '@', BEGIN_TIME), STATE, ERROR_NO, ERROR_MESSAGE, SOURCE \
                 FROM performance_schema.clone_status",
            ),
        )
        .await;
        if let Ok(Ok(rows)) = rows
            && let Some([id, state, error_no, error_message, source]) =
                rows.first().map(Vec::as_slice)
        {
            last_seen = format!("{state} ({id})");
            if previous.as_deref() != Some(id.as_str())
                && (state == "Completed" || state == "Failed")
            {
                let (data_bytes, network_bytes, file_copy_bytes) = progress(recipient).await?;
                let transfer_time = transfer_time(recipient).await?;
                return Ok(CloneOutcome {
                    state: state.clone(),
                    error_no: error_no.parse().unwrap_or(-1),
                    error_message: error_message.clone(),
                    source: source.clone(),
                    statement_time,
                    total_time: started.elapsed(),
                    data_bytes,
                    network_bytes,
                    file_copy_bytes,
                    transfer_time,
                });
            }
        }
        tokio::time::sleep(POLL_INTERVAL).await;
    }
}

/// (data bytes, network bytes, FILE COPY data bytes) from `clone_progress`.
async fn progress(recipient: &MysqlServer) -> Result<(u64, u64, u64)> {
    let rows = recipient
        .rows("SELECT STAGE, DATA, NETWORK FROM performance_schema.clone_progress")
        .await?;
    let mut totals = (0, 0, 0);
    for row in rows {
        let [stage, data, network] = row.as_slice() else {
            bail!("unexpected clone_progress row {row:?}");
        };
        let data: u64 = data.parse().unwrap_or(0);
        totals.0 += data;
        totals.1 += network.parse::<u64>().unwrap_or(0);
        if stage == "FILE COPY" {
            totals.2 = data;
        }
    }
    Ok(totals)
}

/// From the first transfer stage's start to the last one's end in `clone_progress` (FILE COPY,
/// PAGE COPY, REDO COPY); zero when the clone reached none of them.
async fn transfer_time(recipient: &MysqlServer) -> Result<Duration> {
    let micros = recipient
        .sql(
            "SELECT COALESCE(TIMESTAMPDIFF(MICROSECOND, MIN(BEGIN_TIME), MAX(END_TIME)), 0) \
             FROM performance_schema.clone_progress \
             WHERE STAGE IN ('FILE COPY', 'PAGE COPY', 'REDO COPY') AND BEGIN_TIME IS NOT NULL",
        )
        .await?;
    let micros: i64 = micros
        .trim()
        .parse()
        .with_context(|| format!("the transfer stages' time: {micros:?}"))?;
    Ok(Duration::from_micros(micros.max(0) as u64))
}

/// Makes `recipient` verify the certificate of whatever it clones from against `ca_pem`
/// (MySQL checks the chain, not the host name): the file goes next to the data directory and
/// `clone_ssl_ca` names it. A global setting, lost at the recipient's restart after a clone:
/// set it again before each clone.
pub async fn set_clone_ssl_ca(recipient: &MysqlServer, ca_pem: &str) -> Result<()> {
    let path = recipient.write_file("clone-ssl-ca.pem", ca_pem).await?;
    recipient
        .sql(&format!("SET GLOBAL clone_ssl_ca = '{path}'"))
        .await?;
    Ok(())
}

/// Makes `recipient` present a client certificate to whatever it clones from: the chain and key
/// (PEM) go next to the data directory and `clone_ssl_cert` and `clone_ssl_key` name them. Global
/// settings, lost at the recipient's restart after a clone, like `clone_ssl_ca`.
pub async fn set_clone_ssl_identity(
    recipient: &MysqlServer,
    cert_pem: &str,
    key_pem: &str,
) -> Result<()> {
    let cert = recipient.write_file("clone-ssl-cert.pem", cert_pem).await?;
    let key = recipient.write_file("clone-ssl-key.pem", key_pem).await?;
    recipient
        .sql(&format!(
            "SET GLOBAL clone_ssl_cert = '{cert}'; SET GLOBAL clone_ssl_key = '{key}'"
        ))
        .await?;
    Ok(())
}
