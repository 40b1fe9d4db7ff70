//! The relay's probes of a donor's path, against a real MySQL donor on an address of its own
//! (its own network namespace, so the donor sees the relay's host as a remote client) with
//! `max_connect_errors=3` and its host cache on: many probes in a row never get the host blocked, where as few as
//! three connections that hang up after the greeting do.

use std::time::Duration;

use clone_relay::protocol::handshake::{ServerHello, parse_server_hello};
use clone_relay::protocol::packet::read_packet;
use clone_relay::recovery::probe::{PathState, probe};
use harness::image::mysql_image;
use harness::{MysqlServer, ServerOptions};
use tokio::net::TcpStream;

/// MySQL's "Host is blocked because of many connection errors".
const ER_HOST_IS_BLOCKED: u16 = 1129;

/// What a new connection from this host gets instead of, or as, its greeting.
async fn greeting_or_refusal(donor: &str) -> anyhow::Result<Result<(), u16>> {
    let mut stream = TcpStream::connect(donor).await?;
    let (_, payload) =
        tokio::time::timeout(Duration::from_secs(10), read_packet(&mut stream, 1 << 16)).await??;
    Ok(
        match parse_server_hello(&payload).map_err(anyhow::Error::msg)? {
            ServerHello::Greeting(_) => Ok(()),
            ServerHello::Error { code, .. } => Err(code),
        },
    )
}

pub async fn probes_never_get_the_relay_blocked_by_max_connect_errors() -> anyhow::Result<()> {
    let image = mysql_image().await?;
    let mut options = ServerOptions::donor();
    options.isolated = true;
    // The host cache, which counts connection errors per client host, is used only when the
    // server resolves names (the harness turns that off by default).
    options.resolve_names = true;
    options.extra_args = vec!["--max-connect-errors=3".into()];
    let donor = MysqlServer::start(&image, options).await?;
    let addr = donor.addr().to_string();
    donor.keep_client_host_errors().await?;

    for i in 0..8 {
        assert_eq!(probe(&addr).await, PathState::Up, "probe {i}");
    }
    let errors = donor
        .sql("SELECT IFNULL(SUM(SUM_CONNECT_ERRORS), 0) FROM performance_schema.host_cache")
        .await?;
    // Each probe ended in a refused login (an auth plugin error, which does not block), not in
    // a broken handshake.
    assert_eq!(
        errors.trim(),
        "0",
        "no probe counted as a blocking connection error"
    );

    assert_eq!(
        greeting_or_refusal(&addr).await?,
        Ok(()),
        "eight probes in a row left the host unblocked"
    );

    // What the probes avoid: connections that end after the greeting count, and the fourth
    // connection is refused.
    for _ in 0..3 {
        greeting_or_refusal(&addr).await?.ok();
    }
    // The donor counts a connection's error once it sees it closed.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        match greeting_or_refusal(&addr).await? {
            Err(code) => {
                assert_eq!(code, ER_HOST_IS_BLOCKED);
                break;
            }
            Ok(()) => {
                anyhow::ensure!(
                    tokio::time::Instant::now() < deadline,
                    "hanging up after the greeting never got the host blocked: this test could not tell"
                );
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    }
    Ok(())
}
