//! Dialing donors: once, or with retries and backoff for a reconnect of a clone that is
//! resuming; and the start-up probe that checks a donor is a MySQL server.

use std::time::Duration;

use tokio::net::TcpStream;
use tokio::time::{Instant, timeout};
use tracing::debug;

use plumbing::Backoff;

use crate::config::Config;
use crate::error::RelayError;
use crate::protocol::handshake::{Greeting, ServerHello, parse_server_hello};
use crate::protocol::packet::{MAX_GREETING_BYTES, read_packet};
use crate::recovery::health::Health;
use crate::socket;

const FIRST_BACKOFF: Duration = Duration::from_millis(100);
const MAX_BACKOFF: Duration = Duration::from_secs(2);

/// Connects to the donor `addr` within the connect timeout, tuned like every relay socket, and
/// records the outcome in `health`.
pub async fn dial(config: &Config, health: &Health, addr: &str) -> Result<TcpStream, RelayError> {
    let dialed = dial_once(config, addr).await;
    match &dialed {
        Ok(_) => health.record_success(addr),
        Err(e) => health.record_failure(addr, e),
    }
    dialed
}

async fn dial_once(config: &Config, addr: &str) -> Result<TcpStream, RelayError> {
    let connect = async {
        let mut last = None;
        let targets =
            tokio::net::lookup_host(addr)
                .await
                .map_err(|source| RelayError::UpstreamResolve {
                    addr: addr.to_string(),
                    source,
                })?;
        for target in targets {
            match TcpStream::connect(target).await {
                Ok(stream) => return Ok(stream),
                Err(e) => last = Some(e),
            }
        }
        Err(RelayError::UpstreamConnect {
            addr: addr.to_string(),
            source: last.unwrap_or_else(|| std::io::ErrorKind::NotFound.into()),
        })
    };
    let stream = timeout(config.connect_timeout, connect)
        .await
        .map_err(|_| RelayError::UpstreamTimeout {
            addr: addr.to_string(),
            timeout: config.connect_timeout,
        })??;
    socket::tune(&stream, config).map_err(RelayError::Upstream)?;
    Ok(stream)
}

/// Dials `addr` again and again (backoff doubling to 2 s, with up to a quarter of jitter drawn
/// from `seed`, so reconnects of several connections spread out) until it answers or `deadline`
/// passes; the last error is returned then.
pub async fn dial_until(
    config: &Config,
    health: &Health,
    addr: &str,
    deadline: Instant,
    seed: u64,
) -> Result<TcpStream, RelayError> {
    let mut backoff = Backoff::new(FIRST_BACKOFF, MAX_BACKOFF).with_jitter(0.25, seed);
    let mut attempt: u64 = 0;
    loop {
        match dial(config, health, addr).await {
            Ok(stream) => return Ok(stream),
            Err(e) if Instant::now() + backoff.peek() >= deadline => return Err(e),
            Err(e) => {
                attempt += 1;
                debug!(upstream = addr, attempt, error = %e, "donor not reachable yet; retrying");
                tokio::time::sleep(backoff.pause()).await;
            }
        }
    }
}

/// Dials `addr` and reads its greeting, so that a relay pointed at the wrong place says so at
/// start. The connection then ends with a refused login ([`crate::recovery::probe::leave`]), which the
/// donor does not count against `max_connect_errors`. Only a greeting is recorded in `health`
/// as a success.
pub async fn probe(config: &Config, health: &Health, addr: &str) -> Result<Greeting, RelayError> {
    let greeting = match dial_once(config, addr).await {
        Ok(mut stream) => {
            let greeting = read_greeting(config, &mut stream, addr).await;
            if greeting.is_ok() {
                crate::recovery::probe::leave(&mut stream).await;
            }
            greeting
        }
        Err(e) => Err(e),
    };
    match &greeting {
        Ok(_) => health.record_success(addr),
        Err(e) => health.record_failure(addr, e),
    }
    greeting
}

async fn read_greeting(
    config: &Config,
    stream: &mut TcpStream,
    addr: &str,
) -> Result<Greeting, RelayError> {
    let (_, payload) = timeout(
        config.connect_timeout,
        read_packet(stream, MAX_GREETING_BYTES),
    )
    .await
    .map_err(|_| RelayError::UpstreamTimeout {
        addr: addr.to_string(),
        timeout: config.connect_timeout,
    })?
    .map_err(|e| RelayError::UpstreamNotMysql {
        addr: addr.to_string(),
        reason: format!("no greeting: {e}"),
    })?;
    match parse_server_hello(&payload) {
        Ok(ServerHello::Greeting(greeting)) => Ok(greeting),
        Ok(ServerHello::Error { code, message }) => Err(RelayError::UpstreamRefused {
            addr: addr.to_string(),
            code,
            message,
        }),
        Err(reason) => Err(RelayError::UpstreamNotMysql {
            addr: addr.to_string(),
            reason,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn dial_until_waits_for_a_donor_that_comes_back() {
        let addr = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap();
        let config = Config::new(addr.to_string());
        let comes_back = tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(400)).await;
            tokio::net::TcpListener::bind(addr).await.unwrap()
        });
        let deadline = Instant::now() + Duration::from_secs(5);
        let health = Health::default();
        let stream = dial_until(&config, &health, &addr.to_string(), deadline, 1).await;
        assert!(stream.is_ok(), "{stream:?}");
        drop(comes_back.await.unwrap());

        let gone = Instant::now() + Duration::from_millis(300);
        assert!(
            dial_until(&config, &health, "127.0.0.1:1", gone, 1)
                .await
                .is_err()
        );
        assert!(health.readiness().ready);
    }
}
