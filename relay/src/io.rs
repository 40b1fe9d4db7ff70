//! I/O decorators for the copy path. Each wraps a stream and adds one concern, so the copy loop
//! stays a plain copy: [`Metered`] counts the bytes read from a leg and remembers whether that
//! leg failed; [`Observed`] shows every byte read from a leg to the protocol decoder before it
//! is forwarded, and turns a protocol breach into a read error so the bad bytes never reach the
//! other side. Rate limiting slots in the same way.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use crate::protocol::decoder::Direction;
use crate::session::ConnHandle;

/// What one leg has done, shared between the copy task and whoever reports on it.
#[derive(Debug, Default)]
pub struct LegStats {
    bytes_read: AtomicU64,
    bytes_written: AtomicU64,
    failed: AtomicBool,
}

impl LegStats {
    /// Bytes read from this leg so far (and so forwarded, or about to be, to the other).
    pub fn bytes_read(&self) -> u64 {
        self.bytes_read.load(Ordering::Relaxed)
    }

    /// Bytes written to this leg so far (accepted by its socket).
    pub fn bytes_written(&self) -> u64 {
        self.bytes_written.load(Ordering::Relaxed)
    }

    /// Whether a read or write on this leg returned an error.
    pub fn failed(&self) -> bool {
        self.failed.load(Ordering::Relaxed)
    }
}

/// A stream that counts the bytes read from it and records its own I/O errors.
#[derive(Debug)]
pub struct Metered<S> {
    inner: S,
    stats: Arc<LegStats>,
}

impl<S> Metered<S> {
    pub fn new(inner: S, stats: Arc<LegStats>) -> Self {
        Metered { inner, stats }
    }

    fn note<T>(&self, result: Poll<io::Result<T>>) -> Poll<io::Result<T>> {
        if let Poll::Ready(Err(_)) = &result {
            self.stats.failed.store(true, Ordering::Relaxed);
        }
        result
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Metered<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let result = Pin::new(&mut self.inner).poll_read(cx, buf);
        let read = buf.filled().len() - before;
        self.stats
            .bytes_read
            .fetch_add(read as u64, Ordering::Relaxed);
        self.note(result)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Metered<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let result = Pin::new(&mut self.inner).poll_write(cx, buf);
        if let Poll::Ready(Ok(n)) = &result {
            self.stats
                .bytes_written
                .fetch_add(*n as u64, Ordering::Relaxed);
        }
        self.note(result)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let result = Pin::new(&mut self.inner).poll_flush(cx);
        self.note(result)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let result = Pin::new(&mut self.inner).poll_shutdown(cx);
        self.note(result)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let result = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        if let Poll::Ready(Ok(n)) = &result {
            self.stats
                .bytes_written
                .fetch_add(*n as u64, Ordering::Relaxed);
        }
        self.note(result)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

/// A leg whose reads pass through the connection's decoder. `dir` is the way the bytes read here
/// travel: reads from the recipient go upstream, reads from the donor go downstream.
#[derive(Debug)]
pub struct Observed<S> {
    inner: S,
    conn: Arc<ConnHandle>,
    dir: Direction,
}

impl<S> Observed<S> {
    pub fn new(inner: S, conn: Arc<ConnHandle>, dir: Direction) -> Self {
        Observed { inner, conn, dir }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Observed<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let result = Pin::new(&mut self.inner).poll_read(cx, buf);
        if let Poll::Ready(Ok(())) = result
            && let Err(violation) = self.conn.observe(self.dir, &buf.filled()[before..])
        {
            // Un-fill the buffer: nothing of a bad read is forwarded.
            buf.set_filled(before);
            return Poll::Ready(Err(io::Error::new(
                io::ErrorKind::InvalidData,
                violation.to_string(),
            )));
        }
        result
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Observed<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[tokio::test]
    async fn counts_bytes_read_and_marks_failures() {
        let (a, mut b) = tokio::io::duplex(64);
        let stats = Arc::new(LegStats::default());
        let mut metered = Metered::new(a, stats.clone());

        b.write_all(b"hello world").await.unwrap();
        let mut buf = [0u8; 32];
        let n = metered.read(&mut buf).await.unwrap();
        assert_eq!(&buf[..n], b"hello world");
        assert_eq!(stats.bytes_read(), 11);
        assert!(!stats.failed());

        drop(b);
        // Writing to a closed duplex is an error, which the leg records.
        assert!(metered.write_all(b"x").await.is_err());
        assert!(stats.failed());
    }
}
