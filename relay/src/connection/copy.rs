//! The copy path: both directions at once in one task, generic over `AsyncRead + AsyncWrite`
//! so that any decorated stream goes through it. When one side finishes sending, the other
//! side's write half is shut down and the opposite direction carries on (half-close).
//!
//! Each direction reads into its own buffer and writes all of it out before reading again.
//! The buffer starts small and grows, up to the configured size, while reads fill it: a
//! direction carrying clone data gets large reads and writes (fewer system calls and wake-ups
//! per byte), one carrying commands and acknowledgements stays small.

use std::future::poll_fn;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use crate::error::RelayError;
use crate::io::{Legs, Metered, violation_of};

/// The buffer a direction starts with (or the configured size, when smaller).
const INITIAL_BUFFER: usize = 16 * 1024;

/// Copies between `downstream` and `upstream` until both directions have ended or one leg fails.
/// Each direction's buffer grows up to `buffer_bytes`. The error says which leg failed, or
/// which peer broke the protocol; the byte counts stay readable in `legs` either way.
pub async fn relay<D, U>(
    downstream: D,
    upstream: U,
    buffer_bytes: usize,
    legs: &Legs,
) -> Result<(), RelayError>
where
    D: AsyncRead + AsyncWrite + Unpin,
    U: AsyncRead + AsyncWrite + Unpin,
{
    let mut down = Metered::new(downstream, legs.downstream.clone());
    let mut up = Metered::new(upstream, legs.upstream.clone());
    let mut to_donor = OneWay::new(buffer_bytes);
    let mut to_recipient = OneWay::new(buffer_bytes);
    let copied = poll_fn(|cx| {
        let a = to_donor.poll(cx, &mut down, &mut up);
        let b = to_recipient.poll(cx, &mut up, &mut down);
        match (a, b) {
            (Poll::Ready(Err(e)), _) | (_, Poll::Ready(Err(e))) => Poll::Ready(Err(e)),
            (Poll::Ready(Ok(())), Poll::Ready(Ok(()))) => Poll::Ready(Ok(())),
            _ => Poll::Pending,
        }
    })
    .await;
    let Err(e) = copied else {
        return Ok(());
    };
    if let Some(violation) = violation_of(&e) {
        return Err(RelayError::Protocol(violation.clone()));
    }
    if legs.upstream.failed() && !legs.downstream.failed() {
        Err(RelayError::Upstream(e))
    } else {
        Err(RelayError::Downstream(e))
    }
}

/// One direction of the copy.
#[derive(Debug)]
struct OneWay {
    buf: Box<[u8]>,
    /// The size the buffer may grow to.
    max: usize,
    /// The last read filled the buffer: the next one gets a larger buffer.
    grow: bool,
    /// Bytes `pos..cap` of `buf` are read and not yet written.
    pos: usize,
    cap: usize,
    /// The source ended; what is left is written, then the destination is shut down.
    read_done: bool,
    need_flush: bool,
    done: bool,
}

impl OneWay {
    fn new(max: usize) -> Self {
        OneWay {
            buf: vec![0; INITIAL_BUFFER.min(max)].into_boxed_slice(),
            max,
            grow: false,
            pos: 0,
            cap: 0,
            read_done: false,
            need_flush: false,
            done: false,
        }
    }

    /// Moves bytes from `from` to `to` until `from` ends and `to` is shut down.
    fn poll<R, W>(&mut self, cx: &mut Context<'_>, from: &mut R, to: &mut W) -> Poll<io::Result<()>>
    where
        R: AsyncRead + Unpin,
        W: AsyncWrite + Unpin,
    {
        loop {
            if self.done {
                return Poll::Ready(Ok(()));
            }
            if self.pos < self.cap {
                match Pin::new(&mut *to).poll_write(cx, &self.buf[self.pos..self.cap]) {
                    Poll::Ready(Ok(0)) => return Poll::Ready(Err(io::ErrorKind::WriteZero.into())),
                    Poll::Ready(Ok(n)) => {
                        self.pos += n;
                        self.need_flush = true;
                    }
                    Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                    Poll::Pending => {
                        // The destination is full: read on into the rest of the buffer, so the
                        // next write is larger.
                        if self.cap < self.buf.len()
                            && !self.read_done
                            && let Poll::Ready(result) = self.poll_fill(cx, from)
                        {
                            result?;
                            continue;
                        }
                        return Poll::Pending;
                    }
                }
                continue;
            }
            if self.read_done {
                if self.need_flush {
                    ready!(Pin::new(&mut *to).poll_flush(cx))?;
                    self.need_flush = false;
                }
                ready!(Pin::new(&mut *to).poll_shutdown(cx))?;
                self.done = true;
                continue;
            }
            // All written: read afresh, into a larger buffer when the last one filled up.
            self.pos = 0;
            self.cap = 0;
            if self.grow && self.buf.len() < self.max {
                let size = (self.buf.len() * 4).min(self.max);
                self.buf = vec![0; size].into_boxed_slice();
            }
            if self.poll_fill(cx, from)?.is_pending() {
                // Nothing to read for now: what was written goes out (TLS holds records back
                // until flushed).
                if self.need_flush {
                    ready!(Pin::new(&mut *to).poll_flush(cx))?;
                    self.need_flush = false;
                }
                return Poll::Pending;
            }
        }
    }

    /// Reads into the free end of the buffer.
    fn poll_fill<R>(&mut self, cx: &mut Context<'_>, from: &mut R) -> Poll<io::Result<()>>
    where
        R: AsyncRead + Unpin,
    {
        let mut buf = ReadBuf::new(&mut self.buf[self.cap..]);
        ready!(Pin::new(&mut *from).poll_read(cx, &mut buf))?;
        let n = buf.filled().len();
        self.cap += n;
        self.read_done = n == 0;
        self.grow = self.cap == self.buf.len();
        Poll::Ready(Ok(()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt, duplex};

    #[tokio::test]
    async fn carries_both_ways_and_half_closes() {
        let (recipient, relay_down) = duplex(1024);
        let (relay_up, donor) = duplex(1024);
        let legs = Legs::default();
        let task = tokio::spawn({
            let legs = legs.clone();
            async move { relay(relay_down, relay_up, 4096, &legs).await }
        });

        let (mut recipient_rx, mut recipient_tx) = tokio::io::split(recipient);
        let (mut donor_rx, mut donor_tx) = tokio::io::split(donor);
        let block: Vec<u8> = (0..100_000u32).map(|i| (i % 251) as u8).collect();

        recipient_tx.write_all(b"COM_CLONE").await.unwrap();
        recipient_tx.shutdown().await.unwrap();
        let mut got = Vec::new();
        donor_rx.read_to_end(&mut got).await.unwrap();
        assert_eq!(got, b"COM_CLONE");

        // The recipient has half-closed; the donor's data still flows back.
        let sender = tokio::spawn(async move {
            donor_tx.write_all(&block).await.unwrap();
            donor_tx.shutdown().await.unwrap();
            block
        });
        let mut back = Vec::new();
        recipient_rx.read_to_end(&mut back).await.unwrap();
        assert_eq!(back, sender.await.unwrap());

        task.await.unwrap().unwrap();
        assert_eq!(legs.downstream.bytes_read(), 9);
        assert_eq!(legs.upstream.bytes_read(), 100_000);
    }

    #[tokio::test]
    async fn a_buffer_grows_only_while_reads_fill_it() {
        let (mut sender, mut from) = duplex(4 << 20);
        let (mut to, mut receiver) = duplex(4 << 20);
        let mut way = OneWay::new(1 << 20);

        // Small messages leave the buffer as it started.
        sender.write_all(b"ack").await.unwrap();
        std::future::poll_fn(|cx| {
            assert!(way.poll(cx, &mut from, &mut to).is_pending());
            std::task::Poll::Ready(())
        })
        .await;
        assert_eq!(way.buf.len(), INITIAL_BUFFER);

        // A stream that fills every read: the buffer grows to the ceiling, never past it.
        let block: Vec<u8> = (0..3 << 20).map(|i: u32| (i % 251) as u8).collect();
        sender.write_all(&block).await.unwrap();
        sender.shutdown().await.unwrap();
        std::future::poll_fn(|cx| way.poll(cx, &mut from, &mut to))
            .await
            .unwrap();
        assert_eq!(way.buf.len(), 1 << 20);
        let mut got = Vec::new();
        receiver.read_to_end(&mut got).await.unwrap();
        assert_eq!(&got[..3], b"ack");
        assert!(got[3..] == block[..], "bytes changed on the way");
    }

    #[tokio::test]
    async fn names_the_leg_that_failed() {
        let (recipient, relay_down) = duplex(64);
        let (relay_up, donor) = duplex(64);
        drop(donor);
        let legs = Legs::default();
        let (_rx, mut tx) = tokio::io::split(recipient);
        tx.write_all(b"data for a donor that is gone")
            .await
            .unwrap();
        let err = relay(relay_down, relay_up, 4096, &legs).await.unwrap_err();
        assert!(matches!(err, RelayError::Upstream(_)), "{err:?}");
    }
}
