//! I/O decorators for the copy path. Each wraps a stream and adds one concern, so the copy loop
//! stays a plain copy: [`Metered`] counts the bytes moved on a leg and remembers whether that
//! leg failed; [`Observed`] shows every byte read from a leg to an [`Observer`] (the
//! connection's decoder) before it is forwarded, and turns a protocol breach into a read error
//! whose inner error is the [`Violation`], so the bad bytes never reach the other side.
//!
//! Decorators report through [`LegStats`] and [`Observer`]; they know nothing of sessions.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use crate::protocol::{Direction, Violation};

/// The `AsyncWrite` methods of a decorator that leaves writes to its `inner` stream as they are.
macro_rules! forward_write {
    () => {
        fn poll_write(
            mut self: ::std::pin::Pin<&mut Self>,
            cx: &mut ::std::task::Context<'_>,
            buf: &[u8],
        ) -> ::std::task::Poll<::std::io::Result<usize>> {
            ::std::pin::Pin::new(&mut self.inner).poll_write(cx, buf)
        }

        fn poll_flush(
            mut self: ::std::pin::Pin<&mut Self>,
            cx: &mut ::std::task::Context<'_>,
        ) -> ::std::task::Poll<::std::io::Result<()>> {
            ::std::pin::Pin::new(&mut self.inner).poll_flush(cx)
        }

        fn poll_shutdown(
            mut self: ::std::pin::Pin<&mut Self>,
            cx: &mut ::std::task::Context<'_>,
        ) -> ::std::task::Poll<::std::io::Result<()>> {
            ::std::pin::Pin::new(&mut self.inner).poll_shutdown(cx)
        }

        fn poll_write_vectored(
            mut self: ::std::pin::Pin<&mut Self>,
            cx: &mut ::std::task::Context<'_>,
            bufs: &[::std::io::IoSlice<'_>],
        ) -> ::std::task::Poll<::std::io::Result<usize>> {
            ::std::pin::Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
        }

        fn is_write_vectored(&self) -> bool {
            self.inner.is_write_vectored()
        }
    };
}
pub(crate) use forward_write;

/// Sees every byte read from a leg before it is forwarded. An error is a protocol breach: the
/// bytes are not forwarded and the connection closes.
pub trait Observer {
    fn observe(&self, dir: Direction, bytes: &[u8]) -> Result<(), Violation>;
}

impl<O: Observer + ?Sized> Observer for Arc<O> {
    fn observe(&self, dir: Direction, bytes: &[u8]) -> Result<(), Violation> {
        (**self).observe(dir, bytes)
    }
}

/// The protocol breach inside an I/O error made by [`Observed`], if that is what it is.
pub fn violation_of(e: &io::Error) -> Option<&Violation> {
    e.get_ref()?.downcast_ref::<Violation>()
}

/// Counters of both legs of one connection.
#[derive(Debug, Default, Clone)]
pub struct Legs {
    /// The recipient's side: bytes read here went to the donor.
    pub downstream: Arc<LegStats>,
    /// The donor's side: bytes read here went to the recipient.
    pub upstream: Arc<LegStats>,
}

/// What one leg has done, shared between the copy task and whoever reports on it.
#[derive(Debug, Default)]
pub struct LegStats {
    bytes_read: AtomicU64,
    bytes_written: AtomicU64,
    failed: AtomicBool,
    ended: AtomicBool,
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

    /// Counts `n` bytes as read, for tests of what reads the counters.
    #[cfg(test)]
    pub(crate) fn add_read(&self, n: u64) {
        self.bytes_read.fetch_add(n, Ordering::Relaxed);
    }

    /// Whether this leg's peer has closed its side (a read found the end of the stream).
    pub fn ended(&self) -> bool {
        self.ended.load(Ordering::Relaxed)
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
        let room = buf.remaining() > 0;
        let result = Pin::new(&mut self.inner).poll_read(cx, buf);
        let read = buf.filled().len() - before;
        self.stats
            .bytes_read
            .fetch_add(read as u64, Ordering::Relaxed);
        if room && read == 0 && matches!(result, Poll::Ready(Ok(()))) {
            self.stats.ended.store(true, Ordering::Relaxed);
        }
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
pub struct Observed<S, O> {
    inner: S,
    observer: O,
    dir: Direction,
}

impl<S, O> Observed<S, O> {
    pub fn new(inner: S, observer: O, dir: Direction) -> Self {
        Observed {
            inner,
            observer,
            dir,
        }
    }
}

impl<S: AsyncRead + Unpin, O: Observer + Unpin> AsyncRead for Observed<S, O> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let result = Pin::new(&mut self.inner).poll_read(cx, buf);
        if let Poll::Ready(Ok(())) = result
            && let Err(violation) = self.observer.observe(self.dir, &buf.filled()[before..])
        {
            // Un-fill the buffer: nothing of a bad read is forwarded.
            buf.set_filled(before);
            return Poll::Ready(Err(io::Error::new(io::ErrorKind::InvalidData, violation)));
        }
        result
    }
}

impl<S: AsyncWrite + Unpin, O: Unpin> AsyncWrite for Observed<S, O> {
    forward_write!();
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

    /// Refuses any read that contains a `!`.
    struct NoBang;

    impl Observer for NoBang {
        fn observe(&self, dir: Direction, bytes: &[u8]) -> Result<(), Violation> {
            match bytes.contains(&b'!') {
                false => Ok(()),
                true => Err(Violation {
                    kind: crate::protocol::ViolationKind::Malformed,
                    from: dir,
                    detail: "a bang".into(),
                }),
            }
        }
    }

    #[tokio::test]
    async fn a_breach_forwards_nothing_and_carries_the_violation() {
        let (a, mut b) = tokio::io::duplex(64);
        let mut observed = Observed::new(a, NoBang, Direction::Upstream);
        b.write_all(b"fine").await.unwrap();
        let mut buf = [0u8; 32];
        let n = observed.read(&mut buf).await.unwrap();
        assert_eq!(&buf[..n], b"fine");

        b.write_all(b"bad!").await.unwrap();
        let mut rest = Vec::new();
        let err = observed.read_buf(&mut rest).await.unwrap_err();
        assert!(rest.is_empty(), "nothing of a bad read is handed on");
        let violation = violation_of(&err).expect("the violation is the inner error");
        assert_eq!(violation.detail, "a bang");
        assert_eq!(violation.from, Direction::Upstream);
    }
}
