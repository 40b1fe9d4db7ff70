//! What a leg runs over: a TCP socket, or a stream of a relay pair's tunnel ([`StreamEnd`]).
//! The copy path and the handshake stage see one `AsyncRead + AsyncWrite` either way; only the
//! socket-level work (tuning, resets, liveness) needs the TCP socket, which a tunnel stream has
//! not.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

use crate::tunnel::StreamEnd;

/// A leg's byte stream.
#[derive(Debug)]
pub enum Transport {
    Tcp(TcpStream),
    /// A stream of the tunnel between the two relays of a pair, which replays what a link drop
    /// lost; the tunnel is encrypted on its own.
    Tunnel(StreamEnd),
}

impl Transport {
    /// The TCP socket, when the leg has one of its own.
    pub fn tcp(&self) -> Option<&TcpStream> {
        match self {
            Transport::Tcp(s) => Some(s),
            Transport::Tunnel(_) => None,
        }
    }

    pub fn is_tunnel(&self) -> bool {
        matches!(self, Transport::Tunnel(_))
    }

    /// For a tunnel stream, cancelled once the other side's direction has been read to its end.
    pub fn peer_ended(&self) -> Option<tokio_util::sync::CancellationToken> {
        match self {
            Transport::Tcp(_) => None,
            Transport::Tunnel(s) => Some(s.ended()),
        }
    }
}

impl From<TcpStream> for Transport {
    fn from(stream: TcpStream) -> Self {
        Transport::Tcp(stream)
    }
}

impl AsyncRead for Transport {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Transport::Tcp(s) => Pin::new(s).poll_read(cx, buf),
            Transport::Tunnel(s) => Pin::new(s).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Transport {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Transport::Tcp(s) => Pin::new(s).poll_write(cx, buf),
            Transport::Tunnel(s) => Pin::new(s).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Transport::Tcp(s) => Pin::new(s).poll_flush(cx),
            Transport::Tunnel(s) => Pin::new(s).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Transport::Tcp(s) => Pin::new(s).poll_shutdown(cx),
            Transport::Tunnel(s) => Pin::new(s).poll_shutdown(cx),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Transport::Tcp(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            Transport::Tunnel(s) => Pin::new(s).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            Transport::Tcp(s) => s.is_write_vectored(),
            Transport::Tunnel(s) => s.is_write_vectored(),
        }
    }
}
