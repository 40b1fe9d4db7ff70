//! The admin API's listener: at most [`super::MAX_CONNECTIONS`] connections, each open at most
//! [`super::CONNECTION_LIFETIME`], so a flood of admin requests never holds up the relay.

use super::*;

/// Accepts at most [`MAX_CONNECTIONS`] connections at once, each bounded by
/// [`CONNECTION_LIFETIME`], and retries failed accepts.
pub(super) struct BoundedListener {
    pub(super) inner: TcpListener,
    pub(super) permits: Arc<Semaphore>,
}

/// The address an admin request came from (axum's `ConnectInfo` of [`BoundedListener`]).
#[derive(Debug, Clone, Copy)]
pub(super) struct PeerAddr(pub(super) SocketAddr);

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
        let permit = self
            .permits
            .clone()
            .acquire_owned()
            .await
            .expect("the semaphore is never closed");
        loop {
            match self.inner.accept().await {
                Ok((stream, peer)) => {
                    let deadline = Box::pin(tokio::time::sleep(CONNECTION_LIFETIME));
                    return (
                        BoundedStream {
                            stream,
                            deadline,
                            _permit: permit,
                        },
                        peer,
                    );
                }
                // About that connection only: the next one may be fine.
                Err(e) if is_connection_error(&e) => debug!(error = %e, "admin accept failed"),
                Err(e) => {
                    warn!(error = %e, "admin accept failed");
                    tokio::time::sleep(ACCEPT_ERROR_BACKOFF).await;
                }
            }
        }
    }

    fn local_addr(&self) -> io::Result<SocketAddr> {
        self.inner.local_addr()
    }
}

pub(super) fn is_connection_error(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::ConnectionRefused
            | io::ErrorKind::ConnectionAborted
            | io::ErrorKind::ConnectionReset
    )
}

/// An admin connection: fails its reads and writes once its lifetime is over, and frees its
/// connection slot when dropped.
pub(super) struct BoundedStream {
    pub(super) stream: TcpStream,
    pub(super) deadline: Pin<Box<Sleep>>,
    pub(super) _permit: OwnedSemaphorePermit,
}

impl BoundedStream {
    fn expired(&mut self, cx: &mut Context<'_>) -> bool {
        self.deadline.as_mut().poll(cx).is_ready()
    }
}

pub(super) fn lifetime_over() -> io::Error {
    io::Error::new(io::ErrorKind::TimedOut, "admin connection open too long")
}

impl AsyncRead for BoundedStream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if self.expired(cx) {
            return Poll::Ready(Err(lifetime_over()));
        }
        Pin::new(&mut self.stream).poll_read(cx, buf)
    }
}

impl AsyncWrite for BoundedStream {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        if self.expired(cx) {
            return Poll::Ready(Err(lifetime_over()));
        }
        Pin::new(&mut self.stream).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if self.expired(cx) {
            return Poll::Ready(Err(lifetime_over()));
        }
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }
}
