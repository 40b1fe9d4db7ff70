//! A TCP listener for an HTTP API on axum that bounds what clients can hold: at most a set
//! number of connections at once (further ones wait in the listen backlog), each open for at
//! most a set lifetime, however slowly its client sends or reads. axum has no released
//! connection limit of its own.
//!
//! A failed accept is retried: at once when the error concerned only that connection (reset,
//! refused, aborted), else after a pause that doubles from [`ACCEPT_BACKOFF_MIN`] to
//! [`ACCEPT_BACKOFF_MAX`] while accepts keep failing (out of descriptors, say), and starts from
//! the bottom after a success.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::Sleep;
use tracing::{debug, warn};

use crate::backoff::Backoff;

/// First pause after a failed accept.
pub const ACCEPT_BACKOFF_MIN: Duration = Duration::from_millis(10);
/// Longest pause between failed accepts.
pub const ACCEPT_BACKOFF_MAX: Duration = Duration::from_secs(1);

/// Accepts a connection only while fewer than its bound are open; each is closed for reads and
/// writes once its lifetime is over.
#[derive(Debug)]
pub struct BoundedListener {
    inner: TcpListener,
    permits: Arc<Semaphore>,
    lifetime: Duration,
    backoff: Backoff,
    /// What the listener serves, in its log lines (`admin`, `chaos control`).
    name: &'static str,
}

impl BoundedListener {
    /// At most `max_connections` at once on `inner`, each open at most `lifetime`.
    pub fn new(
        inner: TcpListener,
        max_connections: usize,
        lifetime: Duration,
        name: &'static str,
    ) -> Self {
        BoundedListener {
            inner,
            permits: Arc::new(Semaphore::new(max_connections)),
            lifetime,
            backoff: Backoff::new(ACCEPT_BACKOFF_MIN, ACCEPT_BACKOFF_MAX),
            name,
        }
    }
}

/// The address a request came from, as axum's `ConnectInfo` of a [`BoundedListener`]
/// (`into_make_service_with_connect_info::<PeerAddr>()`).
#[derive(Debug, Clone, Copy)]
pub struct PeerAddr(pub SocketAddr);

impl axum::extract::connect_info::Connected<axum::serve::IncomingStream<'_, BoundedListener>>
    for PeerAddr
{
    fn connect_info(stream: axum::serve::IncomingStream<'_, BoundedListener>) -> Self {
        PeerAddr(*stream.remote_addr())
    }
}

impl axum::serve::Listener for BoundedListener {
    type Io = BoundedStream;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (BoundedStream, SocketAddr) {
        let permit = Arc::clone(&self.permits)
            .acquire_owned()
            .await
            .expect("the semaphore is never closed");
        loop {
            match self.inner.accept().await {
                Ok((stream, peer)) => {
                    self.backoff.reset();
                    let stream = BoundedStream {
                        stream,
                        deadline: Box::pin(tokio::time::sleep(self.lifetime)),
                        _permit: permit,
                        name: self.name,
                    };
                    return (stream, peer);
                }
                // About that connection only: the next one may be fine.
                Err(e) if is_connection_error(&e) => {
                    debug!(listener = self.name, error = %e, "accept failed");
                }
                Err(e) => {
                    let pause = self.backoff.pause();
                    warn!(listener = self.name, error = %e, ?pause, "accept failed");
                    tokio::time::sleep(pause).await;
                }
            }
        }
    }

    fn local_addr(&self) -> io::Result<SocketAddr> {
        self.inner.local_addr()
    }
}

fn is_connection_error(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::ConnectionRefused
            | io::ErrorKind::ConnectionAborted
            | io::ErrorKind::ConnectionReset
    )
}

/// A connection of a [`BoundedListener`]: holds its slot until dropped, and fails its reads and
/// writes once its lifetime is over.
#[derive(Debug)]
pub struct BoundedStream {
    stream: TcpStream,
    deadline: Pin<Box<Sleep>>,
    _permit: OwnedSemaphorePermit,
    name: &'static str,
}

impl BoundedStream {
    /// An error once the lifetime is over (and the task woken when it will be).
    fn check(&mut self, cx: &mut Context<'_>) -> io::Result<()> {
        match self.deadline.as_mut().poll(cx) {
            Poll::Ready(()) => Err(io::Error::new(
                io::ErrorKind::TimedOut,
                format!("{} connection open too long", self.name),
            )),
            Poll::Pending => Ok(()),
        }
    }
}

impl AsyncRead for BoundedStream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        self.check(cx)?;
        Pin::new(&mut self.stream).poll_read(cx, buf)
    }
}

impl AsyncWrite for BoundedStream {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.check(cx)?;
        Pin::new(&mut self.stream).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.check(cx)?;
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;

    async fn listener(max: usize, lifetime: Duration) -> (BoundedListener, SocketAddr) {
        let inner = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = inner.local_addr().unwrap();
        (BoundedListener::new(inner, max, lifetime, "test"), addr)
    }

    #[tokio::test]
    async fn connections_beyond_the_bound_wait_for_a_slot() {
        use axum::serve::Listener;
        let (mut listener, addr) = listener(1, Duration::from_secs(60)).await;
        let _first_client = TcpStream::connect(addr).await.unwrap();
        let (first, _) = listener.accept().await;
        let _second_client = TcpStream::connect(addr).await.unwrap();
        // The second waits in the backlog while the first holds the only slot.
        let waiting = tokio::time::timeout(Duration::from_millis(200), listener.accept()).await;
        assert!(waiting.is_err(), "a second connection was accepted");
        drop(first);
        tokio::time::timeout(Duration::from_secs(5), listener.accept())
            .await
            .expect("the freed slot lets the second in");
    }

    #[tokio::test]
    async fn a_connection_fails_once_its_lifetime_is_over() {
        use axum::serve::Listener;
        let (mut listener, addr) = listener(4, Duration::from_millis(100)).await;
        let mut client = TcpStream::connect(addr).await.unwrap();
        let (mut served, _) = listener.accept().await;
        client.write_all(b"x").await.unwrap();
        let mut byte = [0u8; 1];
        served.read_exact(&mut byte).await.unwrap();
        // The client sends nothing more: the read ends with the lifetime, not never.
        let e = tokio::time::timeout(Duration::from_secs(5), served.read(&mut byte))
            .await
            .expect("the lifetime ends the read")
            .unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::TimedOut);
        assert!(
            e.to_string().contains("test connection open too long"),
            "{e}"
        );
    }
}
