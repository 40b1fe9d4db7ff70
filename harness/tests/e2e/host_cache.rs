//! The relay's clients never get its host blocked on the donor, end to end against a real MySQL
//! donor on an address of its own (loopback clients have no host cache) with
//! `connect_timeout=5`: 200 connections to the relay (on its defaults) that close before their
//! login, half at once and half after the greeting, 20 that stall silently after the greeting,
//! and 50 relay starts (each checks the donor) leave the donor's host-cache connect errors at 0,
//! where 3 hang-ups straight to the donor after its greeting count 3. The same against a donor
//! with `require_secure_transport=ON`.

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::{Result, ensure};
use clone_relay::protocol::packet::read_packet;
use harness::image::mysql_image;
use harness::process::RelayProcess;
use harness::{MysqlServer, ServerOptions};
use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;
use tokio::task::JoinSet;
use tokio::time::Instant;

const LEAVE_AT_ONCE: usize = 100;
const LEAVE_AFTER_GREETING: usize = 100;
const STALLS: usize = 20;
const RELAY_STARTS: usize = 50;
const RAW_HANGUPS: u64 = 3;
/// Connections opened at once: below the relay's pending logins per address (32).
const BATCH: usize = 16;
/// The donor's `connect_timeout`, in seconds: shorter than MySQL's default of 10.
const DONOR_CONNECT_TIMEOUT: u64 = 5;
/// Bound on the relay closing a silent client, and on the donor counting what it saw.
const WAIT: Duration = Duration::from_secs(30);

async fn donor(require_secure_transport: bool) -> Result<MysqlServer> {
    let image = mysql_image().await?;
    let mut options = ServerOptions::donor();
    options.isolated = true;
    options.resolve_names = true;
    options
        .extra_args
        .push(format!("--connect-timeout={DONOR_CONNECT_TIMEOUT}"));
    if require_secure_transport {
        options
            .extra_args
            .push("--require-secure-transport=ON".into());
    }
    let donor = MysqlServer::start(&image, options).await?;
    donor.keep_client_host_errors().await?;
    Ok(donor)
}

/// Reads the greeting from `addr` and returns the open connection.
async fn greeted(addr: SocketAddr) -> Result<TcpStream> {
    let mut stream = TcpStream::connect(addr).await?;
    tokio::time::timeout(WAIT, read_packet(&mut stream, 1 << 16)).await??;
    Ok(stream)
}

/// `count` connections to `addr`, `BATCH` at a time, each doing `visit`; each batch starts once
/// the donor has ended the handshakes of the one before (the relay holds a client's place among
/// its pending logins until it has left the donor).
async fn connections<F, Fut>(
    count: usize,
    addr: SocketAddr,
    donor: &MysqlServer,
    visit: F,
) -> Result<Vec<Duration>>
where
    F: Fn(SocketAddr) -> Fut,
    Fut: std::future::Future<Output = Result<Duration>> + Send + 'static,
{
    let mut out = Vec::new();
    for start in (0..count).step_by(BATCH) {
        let mut batch = JoinSet::new();
        for _ in start..(start + BATCH).min(count) {
            batch.spawn(visit(addr));
        }
        while let Some(done) = batch.join_next().await {
            out.push(done??);
        }
        settled_connect_errors(donor).await?;
    }
    Ok(out)
}

/// Connects and leaves at once, before any greeting.
async fn leave_at_once(addr: SocketAddr) -> Result<Duration> {
    drop(TcpStream::connect(addr).await?);
    Ok(Duration::ZERO)
}

async fn leave_after_greeting(addr: SocketAddr) -> Result<Duration> {
    drop(greeted(addr).await?);
    Ok(Duration::ZERO)
}

/// Reads the greeting, then says nothing: how long until the relay closes the connection.
async fn stall(addr: SocketAddr) -> Result<Duration> {
    let mut stream = greeted(addr).await?;
    let since = Instant::now();
    let mut buf = [0u8; 256];
    loop {
        match tokio::time::timeout(WAIT, stream.read(&mut buf)).await {
            Ok(Ok(0) | Err(_)) => return Ok(since.elapsed()),
            Ok(Ok(_)) => {}
            Err(_) => anyhow::bail!("the relay kept a silent client for {WAIT:?}"),
        }
    }
}

/// Waits until the donor has no connection left in its handshake, so that everything the
/// relay did has ended on the donor and been counted; then the host cache's connect errors.
async fn settled_connect_errors(donor: &MysqlServer) -> Result<u64> {
    let deadline = Instant::now() + WAIT;
    while donor.handshakes_open().await? > 0 {
        ensure!(
            Instant::now() < deadline,
            "the donor still has connections in their handshake after {WAIT:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    donor.connect_errors().await
}

/// The connections the donor has accepted so far (its own SQL sessions included).
async fn donor_connections(donor: &MysqlServer) -> Result<u64> {
    let out = donor
        .sql(
            "SELECT VARIABLE_VALUE FROM performance_schema.global_status \
             WHERE VARIABLE_NAME = 'Connections'",
        )
        .await?;
    Ok(out.trim().parse()?)
}

async fn clients_and_restarts_never_count(require_secure_transport: bool) -> Result<()> {
    let donor = donor(require_secure_transport).await?;
    let relay = RelayProcess::start(donor.addr(), &[]).await?;
    let before = donor_connections(&donor).await?;
    connections(LEAVE_AT_ONCE, relay.addr(), &donor, leave_at_once).await?;
    let errors = settled_connect_errors(&donor).await?;
    ensure!(
        errors == 0,
        "{LEAVE_AT_ONCE} clients of the relay that left at once counted {errors} connect errors \
         on the donor"
    );
    connections(
        LEAVE_AFTER_GREETING,
        relay.addr(),
        &donor,
        leave_after_greeting,
    )
    .await?;
    let errors = settled_connect_errors(&donor).await?;
    ensure!(
        errors == 0,
        "{LEAVE_AFTER_GREETING} clients of the relay that left after the greeting counted \
         {errors} connect errors on the donor"
    );
    // Each went on to the donor: none was refused for too many pending logins.
    let reached = donor_connections(&donor).await? - before;
    ensure!(
        reached >= (LEAVE_AT_ONCE + LEAVE_AFTER_GREETING) as u64,
        "only {reached} connections reached the donor"
    );
    eprintln!("{reached} connections reached the donor");
    let stalled = connections(STALLS, relay.addr(), &donor, stall).await?;
    let slowest = stalled.iter().max().copied().unwrap_or_default();
    eprintln!("{STALLS} silent clients closed by the relay, the last after {slowest:?}");
    let errors = settled_connect_errors(&donor).await?;
    ensure!(
        errors == 0,
        "{STALLS} clients of the relay silent after the greeting counted {errors} connect errors \
         on the donor"
    );
    drop(relay);

    let started = Instant::now();
    for _ in 0..RELAY_STARTS {
        // Each start checks the donor (greeting, refused login) before it serves.
        drop(RelayProcess::start(donor.addr(), &[]).await?);
    }
    eprintln!("{RELAY_STARTS} relay starts in {:?}", started.elapsed());
    let errors = settled_connect_errors(&donor).await?;
    ensure!(
        errors == 0,
        "{RELAY_STARTS} relay starts counted {errors} connect errors on the donor"
    );

    // The control: hang-ups straight to the donor after its greeting do count.
    for _ in 0..RAW_HANGUPS {
        drop(greeted(donor.addr()).await?);
    }
    let deadline = Instant::now() + WAIT;
    let mut errors = 0;
    while errors < RAW_HANGUPS && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(200)).await;
        errors = donor.connect_errors().await?;
    }
    ensure!(
        errors == RAW_HANGUPS,
        "{RAW_HANGUPS} raw hang-ups counted {errors} connect errors: this test could not tell"
    );
    Ok(())
}

pub async fn clients_that_never_log_in_and_relay_starts_leave_the_donor_host_cache_clean()
-> Result<()> {
    clients_and_restarts_never_count(false).await
}

pub async fn the_same_against_a_donor_that_requires_secure_transport() -> Result<()> {
    clients_and_restarts_never_count(true).await
}
