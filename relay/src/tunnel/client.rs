//! The recipient side of a pair: each recipient connection opens a stream over a tunnel
//! connection of its own, and when that connection is lost the stream redials (at once, then
//! with backoff doubling to [`MAX_BACKOFF`]) until the donor side takes it back or
//! `tunnel.bridge` has passed since the loss.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use plumbing::Backoff;
use tokio::io::WriteHalf;
use tokio::net::TcpStream;
use tokio::time::{Instant, timeout};
use tracing::{Instrument, debug, info};

use super::frame::{self, Heard, Hello, Watched, Welcome};
use super::stream::{Connection, Local, Stream, StreamEnd};
use super::{Link, Tunnel};
use crate::config::Config;
use crate::error::RelayError;
use crate::socket;
use crate::tls::donor_name;

const FIRST_BACKOFF: Duration = Duration::from_millis(100);
const MAX_BACKOFF: Duration = Duration::from_secs(1);

impl Tunnel {
    /// Opens a stream for the recipient at `recipient` to the donor-side relay: dials it (again
    /// and again until `deadline`, when given), and returns the pipeline's end once the donor
    /// side has taken the stream.
    pub async fn open(
        self: &Arc<Self>,
        config: &Config,
        recipient: SocketAddr,
        deadline: Option<Instant>,
    ) -> Result<StreamEnd, RelayError> {
        let token = Tunnel::token();
        let hello = Hello {
            token,
            received: 0,
            fresh: true,
            recipient,
            instance: self.instance,
        };
        let mut backoff = Backoff::new(FIRST_BACKOFF, MAX_BACKOFF);
        let connection = loop {
            match self.connect(config, &hello).await {
                Ok((connection, Welcome::Resume { .. })) => break connection,
                Ok((_, Welcome::Unknown)) => {
                    return Err(self.peer_error("the donor-side relay refused a new stream"));
                }
                Err(e) => match deadline {
                    Some(deadline) if Instant::now() + backoff.peek() < deadline => {
                        debug!(error = %e, "donor-side relay not reachable yet; retrying");
                        tokio::time::sleep(backoff.pause()).await;
                    }
                    _ => return Err(e),
                },
            }
        };
        let (stream, end, local) = Stream::new(self.replay());
        self.stream_opened();
        let tunnel = self.clone();
        let config = config.clone();
        tokio::spawn(
            async move {
                tunnel
                    .drive(&stream, local, connection, &config, hello)
                    .await;
                tunnel.stream_ended();
            }
            .in_current_span(),
        );
        Ok(end)
    }

    /// Carries `stream` over `connection` and each one after it, until it is done or given up.
    async fn drive(
        &self,
        stream: &Arc<Stream>,
        local: Local,
        mut connection: Connection,
        config: &Config,
        mut hello: Hello,
    ) {
        let reader = tokio::spawn(stream.clone().read_local(local.reader).in_current_span());
        let mut writer: WriteHalf<_> = local.writer;
        let mut send_from = 0;
        let silence = self.settings.timeout;
        loop {
            let end = stream
                .carry(connection, &mut writer, send_from, silence)
                .await;
            let Some(reason) = self.link_ended(stream, end) else {
                break;
            };
            info!(%reason, "tunnel connection lost; redialing");
            hello.fresh = false;
            hello.received = stream.received();
            match self.reconnect(stream, config, &hello).await {
                Ok((next, from)) => {
                    connection = next;
                    send_from = from;
                }
                Err(reason) => {
                    self.give_up(stream, &reason);
                    break;
                }
            }
        }
        reader.abort();
        drop(writer);
    }

    /// Redials until the donor side takes the stream back, or `tunnel.bridge` has passed.
    /// Returns the connection and the offset to send from.
    async fn reconnect(
        &self,
        stream: &Stream,
        config: &Config,
        hello: &Hello,
    ) -> Result<(Connection, u64), String> {
        let lost = Instant::now();
        let deadline = lost + self.settings.bridge;
        let mut backoff = Backoff::new(FIRST_BACKOFF, MAX_BACKOFF).immediate_first();
        let mut attempts = 0u32;
        loop {
            attempts += 1;
            let remaining = deadline.saturating_duration_since(Instant::now());
            let last_error = match timeout(remaining, self.connect(config, hello)).await {
                Ok(Ok((connection, Welcome::Resume { received }))) => {
                    let replayed = stream.resume_from(received)?;
                    self.count_resume(replayed);
                    info!(
                        outage_ms = lost.elapsed().as_millis() as u64,
                        attempts, replayed, "tunnel stream resumed"
                    );
                    return Ok((connection, received));
                }
                Ok(Ok((_, Welcome::Unknown))) => {
                    return Err("the donor-side relay no longer holds the stream".into());
                }
                Ok(Err(e)) => e.to_string(),
                Err(_) => "no answer".to_string(),
            };
            if Instant::now() + backoff.peek() >= deadline {
                return Err(format!(
                    "the tunnel to {} was down for longer than tunnel.bridge ({}s); last: {last_error}",
                    self.peer.as_deref().unwrap_or("?"),
                    self.settings.bridge.as_secs()
                ));
            }
            debug!(attempts, error = %last_error, "tunnel redial failed");
            tokio::time::sleep(backoff.pause()).await;
        }
    }

    /// One tunnel connection: TCP within the connect timeout, TLS, the hello and the welcome
    /// within `tunnel.timeout`.
    async fn connect(
        &self,
        config: &Config,
        hello: &Hello,
    ) -> Result<(Connection, Welcome), RelayError> {
        let peer = self.peer.as_deref().expect("the recipient side has a peer");
        let tcp = timeout(config.connect_timeout, TcpStream::connect(peer))
            .await
            .map_err(|_| RelayError::UpstreamTimeout {
                addr: peer.to_string(),
                timeout: config.connect_timeout,
            })?
            .map_err(|source| RelayError::UpstreamConnect {
                addr: peer.to_string(),
                source,
            })?;
        socket::tune(&tcp, config).map_err(RelayError::Upstream)?;
        let heard = Heard::new();
        let tcp = Watched::new(tcp, heard.clone());
        let answer = async {
            let mut link: Box<dyn Link> = match &self.tls {
                Some(tls) => {
                    let name = match &self.settings.server_name {
                        Some(name) => donor_name(&format!("{name}:0")),
                        None => donor_name(peer),
                    };
                    let tls = tls.connector.connect(name, tcp).await.map_err(|e| {
                        RelayError::UpstreamTls {
                            addr: peer.to_string(),
                            reason: e.to_string(),
                        }
                    })?;
                    Box::new(tls)
                }
                None => Box::new(tcp),
            };
            frame::write_hello(&mut link, hello)
                .await
                .map_err(RelayError::Upstream)?;
            let welcome = frame::read_welcome(&mut link)
                .await
                .map_err(RelayError::Upstream)?;
            Ok((Connection { link, heard }, welcome))
        };
        let silence = self.settings.timeout.max(config.connect_timeout);
        timeout(silence, answer)
            .await
            .map_err(|_| RelayError::UpstreamTimeout {
                addr: peer.to_string(),
                timeout: silence,
            })?
    }

    fn peer_error(&self, reason: &str) -> RelayError {
        RelayError::UpstreamNotMysql {
            addr: self.peer.clone().unwrap_or_default(),
            reason: reason.to_string(),
        }
    }
}
