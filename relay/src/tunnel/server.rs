//! The donor side of a pair: takes tunnel connections (TLS, then the hello), creates a stream
//! for a fresh hello and hands its end to the relay's pipeline, and passes a resuming hello's
//! connection to the stream it names. A stream whose connection is lost waits for the next one
//! for `tunnel.bridge` (plus the silence that tells a loss), then is given up; so is every stream
//! of a recipient-side relay that was restarted (a fresh hello from the same [`Origin`] with
//! another instance), at once.

use std::net::SocketAddr;
use std::sync::Arc;

use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio::time::timeout;
use tracing::{Instrument, debug, info, warn};

use super::frame::{self, Heard, Hello, Watched, Welcome};
use super::stream::{Connection, LinkEnd, Local, Stream, StreamEnd};
use super::{Attach, Held, Link, Origin, Tunnel};
use crate::config::Config;
use crate::error::RelayError;
use crate::socket;

impl Tunnel {
    /// Takes one tunnel connection from `from`. A fresh stream's end is returned, with the
    /// recipient's address, for the pipeline; a resume is passed to its stream (or refused as
    /// unknown) and gives `None`.
    pub async fn accept(
        self: &Arc<Self>,
        config: &Config,
        tcp: TcpStream,
        from: SocketAddr,
    ) -> Result<Option<(StreamEnd, SocketAddr)>, RelayError> {
        socket::tune(&tcp, config).map_err(RelayError::Downstream)?;
        let silence = self.settings.timeout.max(config.handshake_timeout);
        let heard = Heard::new();
        let tcp = Watched::new(tcp, heard.clone());
        let opened = timeout(silence, async {
            let (mut link, certificate): (Box<dyn Link>, _) = match &self.tls {
                Some(tls) => {
                    let tls = tls
                        .acceptor
                        .accept(tcp)
                        .await
                        .map_err(|e| RelayError::DownstreamTls(e.to_string()))?;
                    let certificate = tls
                        .get_ref()
                        .1
                        .peer_certificates()
                        .and_then(|chain| chain.first())
                        .map(|c| c.to_vec())
                        .unwrap_or_default();
                    (Box::new(tls), certificate)
                }
                None => (Box::new(tcp), Vec::new()),
            };
            let hello = frame::read_hello(&mut link)
                .await
                .map_err(RelayError::Downstream)?;
            Ok::<_, RelayError>((link, hello, certificate))
        })
        .await
        .map_err(|_| RelayError::HandshakeTimeout(silence))?;
        let (link, hello, certificate) = opened?;
        let mut connection = Connection { link, heard };
        let origin = Origin {
            certificate,
            relay: from.ip(),
            recipient: hello.recipient.ip(),
        };
        let known = self
            .streams()
            .get(&hello.token)
            .map(|held| held.attach.clone());
        match (known, hello.fresh) {
            (Some(resume), _) => {
                debug!(%from, "tunnel connection resumes a stream");
                if let Err(mpsc::error::SendError(Attach::Resume(mut connection, _))) =
                    resume.send(Attach::Resume(connection, hello)).await
                {
                    let _ = frame::write_welcome(&mut connection.link, Welcome::Unknown).await;
                }
                Ok(None)
            }
            (None, false) => {
                info!(%from, "tunnel connection for a stream this relay no longer holds");
                let _ = frame::write_welcome(&mut connection.link, Welcome::Unknown).await;
                Ok(None)
            }
            (None, true) => {
                self.abandon_earlier_runs(&origin, &hello);
                let (attach, next) = mpsc::channel(2);
                self.streams().insert(
                    hello.token,
                    Held {
                        attach,
                        origin,
                        instance: hello.instance,
                    },
                );
                let (stream, end, local) = Stream::new(self.replay());
                self.stream_opened();
                let recipient = hello.recipient;
                let tunnel = self.clone();
                tokio::spawn(
                    async move {
                        let token = hello.token;
                        tunnel
                            .serve_stream(&stream, local, connection, hello, next)
                            .await;
                        tunnel.streams().remove(&token);
                        tunnel.stream_ended();
                    }
                    .in_current_span(),
                );
                Ok(Some((end, recipient)))
            }
        }
    }

    /// Gives up at once every stream that an earlier run of the recipient-side relay behind
    /// `hello` opened: that run is gone, and its streams will never be resumed, while the donor
    /// would hold their clone (and refuse the recipient's resume) until they were given up.
    fn abandon_earlier_runs(&self, origin: &Origin, hello: &Hello) {
        let stale: Vec<_> = self
            .streams()
            .values()
            .filter(|held| held.origin == *origin && held.instance != hello.instance)
            .map(|held| held.attach.clone())
            .collect();
        if stale.is_empty() {
            return;
        }
        info!(
            streams = stale.len(),
            recipient = %hello.recipient,
            "the recipient-side relay was restarted; giving up its earlier run's streams"
        );
        for attach in stale {
            tokio::spawn(async move {
                let reason = "the recipient-side relay was restarted".to_string();
                let _ = attach.send(Attach::Abandon(reason)).await;
            });
        }
    }

    /// Carries `stream` over each connection the recipient side brings, until it is done, no
    /// connection came within the bridge, or its recipient-side relay was restarted.
    async fn serve_stream(
        &self,
        stream: &Arc<Stream>,
        local: Local,
        mut connection: Connection,
        mut hello: Hello,
        mut attach: mpsc::Receiver<Attach>,
    ) {
        let reader = tokio::spawn(stream.clone().read_local(local.reader).in_current_span());
        let mut writer = local.writer;
        let silence = self.settings.timeout;
        let patience = self.settings.bridge + silence;
        let mut resumed = false;
        loop {
            let replayed = match stream.resume_from(hello.received) {
                Ok(replayed) => replayed,
                Err(reason) => {
                    warn!(%reason, "tunnel stream cannot resume; giving it up");
                    let _ = frame::write_welcome(&mut connection.link, Welcome::Unknown).await;
                    stream.fail(format!("clone-relay: {reason}"));
                    break;
                }
            };
            let welcome = Welcome::Resume {
                received: stream.received(),
            };
            if frame::write_welcome(&mut connection.link, welcome)
                .await
                .is_err()
            {
                // Lost before it started: wait for the next one as for any loss.
            } else {
                if resumed {
                    self.count_resume(replayed);
                    info!(replayed, "tunnel stream resumed");
                }
                let send_from = hello.received;
                let end = tokio::select! {
                    end = stream.carry(connection, &mut writer, send_from, silence) => end,
                    next = attach.recv() => match next {
                        Some(Attach::Resume(next, next_hello)) => {
                            // The recipient side redialed first: its old connection is dead.
                            (connection, hello) = (next, next_hello);
                            resumed = true;
                            continue;
                        }
                        Some(Attach::Abandon(reason)) => {
                            self.give_up(stream, &reason);
                            break;
                        }
                        None => LinkEnd::Lost("closed".into()),
                    },
                };
                let Some(reason) = self.link_ended(stream, end) else {
                    break;
                };
                info!(%reason, "tunnel connection lost; waiting for the recipient side");
            }
            match timeout(patience, attach.recv()).await {
                Ok(Some(Attach::Resume(next, next_hello))) => {
                    (connection, hello) = (next, next_hello);
                    resumed = true;
                }
                Ok(Some(Attach::Abandon(reason))) => {
                    self.give_up(stream, &reason);
                    break;
                }
                _ => {
                    let reason = format!(
                        "the recipient-side relay did not come back within tunnel.bridge ({}s)",
                        self.settings.bridge.as_secs()
                    );
                    self.give_up(stream, &reason);
                    break;
                }
            }
        }
        reader.abort();
        drop(writer);
    }
}
