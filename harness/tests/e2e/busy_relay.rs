//! A clone through a busy relay, end to end with real MySQL: while a clone of about 110 MB runs
//! through the relay on its defaults (the donor leg capped at 20 MiB/s by the chaos proxy), 200
//! logged-in `mysql` clients sit idle on the relay, 100 connections stop in the middle of
//! their login, and 2 000 connections from one other address open at once and never log in.
//! The flood gets at most the relay's pending logins per address (32) greetings before the
//! first of them can have been cut, MySQL error 1040 for the rest; the clone must complete with
//! the donor's data and no resume, its transfer within 1.05x of the same clone's alone.
//!
//! The transfer is what the load meets: the recipient's `clone_progress` FILE COPY through REDO
//! COPY. The statement's time also holds the recipient's DROP DATA, which for the second clone
//! deletes the first one's files, so it is reported but not bounded.

use std::time::{Duration, Instant};

use chaos::{ChaosProxy, Direction, FaultKind, FaultSpec};
use clone_relay::connection::handshake::PRE_LOGIN_WAIT;
use harness::clone::clone_instance;
use harness::dataset::Dataset;
use harness::image::mysql_image;
use harness::load::{HalfLogins, IdleClients, flood};
use harness::{MysqlServer, RelayFixture, ServerOptions};

const MIB: u64 = 1024 * 1024;
const DATASET_BYTES: u64 = 110 * MIB;
const CLONE_TIMEOUT: Duration = Duration::from_secs(300);
const IDLE_CLIENTS: usize = 200;
const HALF_LOGINS: usize = 100;
const FLOOD: usize = 2_000;
/// The flood's one address; the recipient and the rest of the load come from others.
const FLOOD_FROM: std::net::Ipv4Addr = std::net::Ipv4Addr::new(127, 0, 0, 100);
/// MySQL's "Too many connections", the relay's answer past the pending logins of an address.
const ER_CON_COUNT_ERROR: u16 = 1040;
/// The busy clone's transfer may take this much longer than the same clone's alone.
const BUSY_OVER_ALONE: f64 = 1.05;
/// Longer than anything the test does: the idle clients are ended explicitly.
const IDLE_HOLD: Duration = Duration::from_secs(900);

/// A cap on the donor-to-recipient direction, shared by all connections through the proxy.
fn capped(rate_mib: u64) -> FaultSpec {
    FaultSpec::new(FaultKind::Bandwidth {
        rate_bytes_per_sec: rate_mib * MIB,
        shared_group: Some("link".into()),
    })
    .direction(Direction::Downstream)
}

/// The donor's host-cache rows (IP, connect errors, blocked attempts), for the report.
async fn host_cache(donor: &MysqlServer) -> anyhow::Result<Vec<Vec<String>>> {
    donor
        .rows(
            "SELECT IP, SUM_CONNECT_ERRORS, COUNT_HOST_BLOCKED_ERRORS, COUNT_HANDSHAKE_ERRORS \
             FROM performance_schema.host_cache",
        )
        .await
}

fn closed_by_reason(metrics: &str, reason: &str) -> u64 {
    let prefix = format!("clone_relay_connections_closed_total{{reason=\"{reason}\"}} ");
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(&prefix))
        .and_then(|n| n.trim().parse().ok())
        .unwrap_or(0)
}

pub async fn a_clone_through_a_busy_relay_is_unaffected() -> anyhow::Result<()> {
    let image = mysql_image().await?;
    let mut options = ServerOptions::donor();
    // Every client of the relay is a donor connection too. The donor's own login timeout is
    // longer than the relay's, so the relay is the one that cuts the half logins.
    options.extra_args = vec![
        "--max-connections=600".into(),
        "--connect-timeout=60".into(),
    ];
    let donor = MysqlServer::start(&image, options).await?;
    let dataset = Dataset::of_size(DATASET_BYTES);
    let seeded = dataset.seed(&donor).await?;
    let chaos = ChaosProxy::start(
        "127.0.0.1:0".parse()?,
        donor.addr().to_string(),
        1,
        vec![capped(20)],
    )
    .await?;
    let config = RelayFixture::config(chaos.addr());
    let handshake_timeout = config.handshake_timeout;
    let pending_cap = config.max_pending_logins_per_address;
    let relay = RelayFixture::start_with(config)?;
    let recipient =
        MysqlServer::start(&image, ServerOptions::recipient(2, &[relay.addr()])).await?;

    // The same clone alone first, on the same path and recipient.
    let alone = clone_instance(&recipient, relay.addr(), CLONE_TIMEOUT).await?;
    assert!(alone.completed(), "clone alone: {alone:?}");
    assert_eq!(
        dataset.compare(&donor, &recipient).await?,
        Vec::<String>::new()
    );
    let first = relay.sessions().sessions.last().map(|s| s.id);

    let idle = IdleClients::start(&recipient, relay.addr(), IDLE_CLIENTS, IDLE_HOLD).await?;
    let logged_in = idle
        .wait_logged_in(&donor, Duration::from_secs(120))
        .await?;
    assert!(logged_in >= IDLE_CLIENTS, "{logged_in} idle clients");

    let clone = clone_instance(&recipient, relay.addr(), CLONE_TIMEOUT);
    let half_logins = async {
        // The first clone's session is over: the wait is for the new one.
        relay
            .session_past(10 * MIB, Duration::from_secs(120))
            .await?;
        let opening = Instant::now();
        let half = HalfLogins::open(relay.addr(), HALF_LOGINS).await?;
        let opening = opening.elapsed();
        let flood = flood(relay.addr(), FLOOD_FROM, FLOOD, PRE_LOGIN_WAIT).await?;
        // All of them are open now, with the clone still in transfer.
        let view = relay.sessions();
        let state = view.sessions.last().map(|s| s.state.as_str().to_string());
        anyhow::Ok((half, opening, flood, state, view.unassigned.len()))
    };
    let (busy, half_logins) = tokio::join!(clone, half_logins);
    let (busy, (half, opening, flood, state_then, outside_clone)) = (busy?, half_logins?);
    // No pending login of the flood can end before the relay's pre-login wait has passed since
    // its greeting, so none of the address's places is free again within that window.
    assert!(
        flood.greeted_in_window <= pending_cap,
        "the flood got {} greetings within {PRE_LOGIN_WAIT:?}: {flood:?}",
        flood.greeted_in_window
    );
    let refused = flood.refused.get(&ER_CON_COUNT_ERROR).copied().unwrap_or(0);
    assert_eq!(
        refused + flood.greeted,
        FLOOD,
        "every flood connection got a greeting or error 1040: {flood:?}"
    );
    assert_eq!(
        state_then.as_deref(),
        Some("transferring"),
        "the half logins were open only after the clone's transfer"
    );
    assert!(
        outside_clone >= IDLE_CLIENTS + HALF_LOGINS,
        "{outside_clone} connections outside the clone while it ran"
    );

    assert!(busy.completed(), "clone through the busy relay: {busy:?}");
    assert_eq!(
        dataset.compare(&donor, &recipient).await?,
        Vec::<String>::new()
    );
    let view = relay.sessions();
    let session = view
        .sessions
        .iter()
        .find(|s| first.is_none_or(|f| s.id > f))
        .ok_or_else(|| anyhow::anyhow!("no session for the busy clone: {view:#?}"))?;
    assert_eq!(session.state.as_str(), "completed", "{session:#?}");
    assert_eq!(session.resume_count, 0, "{session:#?}");
    let busy_over_alone = busy.transfer_time.as_secs_f64() / alone.transfer_time.as_secs_f64();
    assert!(
        busy_over_alone <= BUSY_OVER_ALONE,
        "transfer busy {:?} against alone {:?}: {busy_over_alone:.2}x (statements {:?} and {:?})",
        busy.transfer_time,
        alone.transfer_time,
        busy.statement_time,
        alone.statement_time
    );

    // The half logins (and the flood's greeted connections) are cut by the relay's pre-login
    // wait, counted from the greeting; the idle clients are still there.
    let lifetimes = half
        .wait_closed(handshake_timeout + Duration::from_secs(15))
        .await?;
    let shortest = lifetimes.iter().min().copied().unwrap_or_default();
    let longest = lifetimes.iter().max().copied().unwrap_or_default();
    let metrics = relay.metrics_text().await?;
    assert_eq!(
        closed_by_reason(&metrics, "handshake_timeout"),
        (HALF_LOGINS + flood.greeted) as u64,
        "{metrics}"
    );
    let still_idle = IdleClients::on_donor(&donor).await?;
    assert!(
        still_idle >= IDLE_CLIENTS,
        "{still_idle} idle clients left after the clone"
    );

    // The donor has not blocked the relay's address for connection errors (MySQL keeps no
    // host-cache entry for loopback peers, so the fresh login is what shows it).
    let cache = host_cache(&donor).await?;
    assert!(
        cache
            .iter()
            .all(|row| row.get(2).is_none_or(|blocked| blocked == "0")),
        "donor host cache: {cache:?}"
    );
    let fresh = IdleClients::fresh_login(&recipient, relay.addr()).await?;
    assert_eq!(fresh, "fresh login");
    let donor_counts = donor
        .sql(
            "SELECT GROUP_CONCAT(CONCAT(VARIABLE_NAME, '=', VARIABLE_VALUE)) FROM ( \
               SELECT * FROM performance_schema.global_status \
               WHERE VARIABLE_NAME IN ('Aborted_connects', 'Max_used_connections') \
               UNION ALL SELECT * FROM performance_schema.global_variables \
               WHERE VARIABLE_NAME = 'max_connect_errors') AS v",
        )
        .await?;

    idle.stop(&donor, Duration::from_secs(30)).await?;

    eprintln!(
        "busy relay: data set {seeded} bytes; transfer alone {:.2} s, busy {:.2} s, \
         busy/alone = {:.3}x (statements {:.1} s and {:.1} s; {} and {} bytes on the network); \
         {logged_in} idle clients on the donor, {HALF_LOGINS} half logins \
         opened in {:.1} s, {outside_clone} relay connections outside the clone while it ran; \
         each cut by the relay {:.1}-{:.1} s after it was sent; flood of {FLOOD} from \
         {FLOOD_FROM}: {} greeted ({} within {PRE_LOGIN_WAIT:?}), refused {:?}, all answered in \
         {:.2} s; donor {}, host cache {cache:?}",
        alone.transfer_time.as_secs_f64(),
        busy.transfer_time.as_secs_f64(),
        busy_over_alone,
        alone.statement_time.as_secs_f64(),
        busy.statement_time.as_secs_f64(),
        alone.network_bytes,
        busy.network_bytes,
        opening.as_secs_f64(),
        shortest.as_secs_f64(),
        longest.as_secs_f64(),
        flood.greeted,
        flood.greeted_in_window,
        flood.refused,
        flood.took.as_secs_f64(),
        donor_counts.trim(),
    );
    relay.stop().await
}
