//! One leg of a relayed connection after the handshake stage: plain, or TLS that the relay
//! terminates (towards the recipient) or originates (towards the donor), over TCP or a tunnel
//! stream ([`Transport`]). Either way it is just `AsyncRead + AsyncWrite` to the copy path, and
//! its TCP socket, when it has one, stays reachable for resets. Below TLS sits the bandwidth
//! decorator ([`Wire`]).

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio_rustls::{client, server};

use crate::connection::transport::Transport;
use crate::limit::Limited;

/// A leg's transport, its reads paid from the connection's bandwidth buckets: under TLS, so
/// the caps count what crosses the wire.
pub type Wire = Limited<Transport>;

/// A leg's stream.
#[derive(Debug)]
pub enum Leg {
    Plain(Wire),
    /// TLS from the recipient, terminated by the relay.
    FromRecipient(Box<server::TlsStream<Wire>>),
    /// TLS to the donor, originated by the relay.
    ToDonor(Box<client::TlsStream<Wire>>),
}

impl Leg {
    /// The TCP socket underneath, unless the leg is a tunnel stream.
    pub fn tcp(&self) -> Option<&TcpStream> {
        self.transport().tcp()
    }

    pub fn transport(&self) -> &Transport {
        match self {
            Leg::Plain(s) => s.get_ref(),
            Leg::FromRecipient(s) => s.get_ref().0.get_ref(),
            Leg::ToDonor(s) => s.get_ref().0.get_ref(),
        }
    }

    pub fn is_tls(&self) -> bool {
        !matches!(self, Leg::Plain(_))
    }
}

macro_rules! each {
    ($leg:expr, $s:ident => $body:expr) => {
        match $leg.get_mut() {
            Leg::Plain($s) => $body,
            Leg::FromRecipient($s) => $body,
            Leg::ToDonor($s) => $body,
        }
    };
}

impl AsyncRead for Leg {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        each!(self, s => Pin::new(s).poll_read(cx, buf))
    }
}

impl AsyncWrite for Leg {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        each!(self, s => Pin::new(s).poll_write(cx, buf))
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        each!(self, s => Pin::new(s).poll_flush(cx))
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        each!(self, s => Pin::new(s).poll_shutdown(cx))
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        each!(self, s => Pin::new(s).poll_write_vectored(cx, bufs))
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            Leg::Plain(s) => s.is_write_vectored(),
            Leg::FromRecipient(s) => s.is_write_vectored(),
            Leg::ToDonor(s) => s.is_write_vectored(),
        }
    }
}
