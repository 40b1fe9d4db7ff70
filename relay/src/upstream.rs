//! Dialing the donor, and the start-up probe that checks it is a MySQL server.

use tokio::net::TcpStream;
use tokio::time::timeout;

use crate::config::Config;
use crate::error::RelayError;
use crate::protocol::handshake::{Greeting, ServerHello, parse_server_hello};
use crate::protocol::packet::read_packet;
use crate::socket;

/// A greeting is a few hundred bytes; anything larger is not one.
const MAX_GREETING_BYTES: usize = 16 * 1024;

/// Connects to the configured donor within the connect timeout, tuned like every relay socket.
pub async fn dial(config: &Config) -> Result<TcpStream, RelayError> {
    let addr = &config.upstream;
    let connect = async {
        let mut last = None;
        let targets = tokio::net::lookup_host(addr.as_str())
            .await
            .map_err(|source| RelayError::UpstreamResolve {
                addr: addr.clone(),
                source,
            })?;
        for target in targets {
            match TcpStream::connect(target).await {
                Ok(stream) => return Ok(stream),
                Err(e) => last = Some(e),
            }
        }
        Err(RelayError::UpstreamConnect {
            addr: addr.clone(),
            source: last.unwrap_or_else(|| std::io::ErrorKind::NotFound.into()),
        })
    };
    let stream = timeout(config.connect_timeout, connect)
        .await
        .map_err(|_| RelayError::UpstreamTimeout {
            addr: addr.clone(),
            timeout: config.connect_timeout,
        })??;
    socket::tune(&stream, config).map_err(RelayError::Upstream)?;
    Ok(stream)
}

/// Dials the donor and reads its greeting, so that a relay pointed at the wrong place says so at
/// start. The connection is then dropped; the donor counts it as an aborted connect.
pub async fn probe(config: &Config) -> Result<Greeting, RelayError> {
    let addr = &config.upstream;
    let mut stream = dial(config).await?;
    let (_, payload) = timeout(
        config.connect_timeout,
        read_packet(&mut stream, MAX_GREETING_BYTES),
    )
    .await
    .map_err(|_| RelayError::UpstreamTimeout {
        addr: addr.clone(),
        timeout: config.connect_timeout,
    })?
    .map_err(|e| RelayError::UpstreamNotMysql {
        addr: addr.clone(),
        reason: format!("no greeting: {e}"),
    })?;
    match parse_server_hello(&payload) {
        Ok(ServerHello::Greeting(greeting)) => Ok(greeting),
        Ok(ServerHello::Error { code, message }) => Err(RelayError::UpstreamRefused {
            addr: addr.clone(),
            code,
            message,
        }),
        Err(reason) => Err(RelayError::UpstreamNotMysql {
            addr: addr.clone(),
            reason,
        }),
    }
}
