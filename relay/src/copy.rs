//! The copy path: both directions at once in one task, generic over `AsyncRead + AsyncWrite`
//! so that any decorated stream goes through it. When one side finishes sending, the other
//! side's write half is shut down and the opposite direction carries on (half-close).
//!
//! Each direction reads into its own buffer and writes it out before reading again. With
//! splicing on, a direction between two plain legs moves what the decoder has no need to see
//! (the rest of a large packet after its head) through a pipe in the kernel instead
//! ([`crate::splice`]); after a splice the next user-space read is kept short, so that it takes
//! the next header and head and leaves the bulk of the packet for the kernel.

use std::future::poll_fn;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use crate::error::RelayError;
use crate::io::{Legs, Metered, violation_of};
use crate::splice::{Pipe, Splice};

/// Fewer passable bytes than this are read in user space: a splice costs two system calls.
const MIN_SPLICE: usize = 16 * 1024;

/// The user-space read after a splice: enough for the next packet's header and head (the
/// decoder looks at 512 bytes), and for the small packets between large ones.
const SHORT_READ: usize = 4 * 1024;

/// How the copy moves bytes.
#[derive(Debug, Clone, Copy)]
pub struct CopySettings {
    /// The buffer of each direction, and the size of its pipe when it splices.
    pub buffer_bytes: usize,
    /// Splice between plain legs where the decoder and the bandwidth caps allow.
    pub splice: bool,
}

/// Copies between `downstream` and `upstream` until both directions have ended or one leg fails.
/// The error says which leg failed, or which peer broke the protocol; the byte counts stay
/// readable in `legs` either way.
pub async fn relay<D, U>(
    downstream: D,
    upstream: U,
    settings: CopySettings,
    legs: &Legs,
) -> Result<(), RelayError>
where
    D: AsyncRead + AsyncWrite + Splice + Unpin,
    U: AsyncRead + AsyncWrite + Splice + Unpin,
{
    let mut down = Metered::new(downstream, legs.downstream.clone());
    let mut up = Metered::new(upstream, legs.upstream.clone());
    let mut to_donor = OneWay::new(settings);
    let mut to_recipient = OneWay::new(settings);
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
    pos: usize,
    cap: usize,
    /// Splicing is allowed in this direction (on in the settings, and the pipe could be made).
    splice: bool,
    pipe: Option<Pipe>,
    /// The last bytes moved went through the pipe: the next read is short.
    spliced_last: bool,
    /// The source ended; what is left is written, then the destination is shut down.
    read_done: bool,
    need_flush: bool,
    done: bool,
}

impl OneWay {
    fn new(settings: CopySettings) -> Self {
        OneWay {
            buf: vec![0; settings.buffer_bytes].into_boxed_slice(),
            pos: 0,
            cap: 0,
            splice: settings.splice,
            pipe: None,
            spliced_last: false,
            read_done: false,
            need_flush: false,
            done: false,
        }
    }

    /// Moves bytes from `from` to `to` until `from` ends and `to` is shut down.
    fn poll<R, W>(
        &mut self,
        cx: &mut Context<'_>,
        from: &mut Metered<R>,
        to: &mut Metered<W>,
    ) -> Poll<io::Result<()>>
    where
        R: AsyncRead + Splice + Unpin,
        W: AsyncWrite + Splice + Unpin,
    {
        loop {
            if self.done {
                return Poll::Ready(Ok(()));
            }
            if let Some(pipe) = self.pipe.as_mut().filter(|p| p.held() > 0) {
                let socket = to
                    .socket()
                    .expect("a pipe is filled only towards a plain leg");
                match ready!(pipe.poll_drain(cx, socket)) {
                    Ok(n) => to.written(n),
                    Err(e) => {
                        to.failed();
                        return Poll::Ready(Err(e));
                    }
                }
                continue;
            }
            if self.pos < self.cap {
                let n = ready!(Pin::new(&mut *to).poll_write(cx, &self.buf[self.pos..self.cap]))?;
                if n == 0 {
                    return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
                }
                self.pos += n;
                self.need_flush = true;
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
            if ready!(self.poll_splice(cx, from, to))? {
                continue;
            }
            ready!(self.poll_read(cx, from, to))?;
        }
    }

    /// Splices what the source allows, if this direction splices and enough is passable.
    /// `Ready(Ok(false))` when the next bytes are for a user-space read instead.
    fn poll_splice<R, W>(
        &mut self,
        cx: &mut Context<'_>,
        from: &mut Metered<R>,
        to: &mut Metered<W>,
    ) -> Poll<io::Result<bool>>
    where
        R: Splice,
        W: Splice,
    {
        if !self.splice || from.socket().is_none() || to.socket().is_none() {
            return Poll::Ready(Ok(false));
        }
        let passable = ready!(from.poll_passable(cx));
        if passable < MIN_SPLICE {
            return Poll::Ready(Ok(false));
        }
        let pipe = match &mut self.pipe {
            Some(pipe) => pipe,
            None => match Pipe::new(self.buf.len()) {
                Ok(pipe) => self.pipe.insert(pipe),
                Err(e) => {
                    // Out of descriptors or pipe memory: this direction stays in user space.
                    tracing::debug!(error = %e, "no pipe for splicing; copying in user space");
                    self.splice = false;
                    return Poll::Ready(Ok(false));
                }
            },
        };
        let socket = from.socket().expect("checked above");
        match ready!(pipe.poll_fill(cx, socket, passable)) {
            Ok(0) => {
                from.passed(0);
                self.read_done = true;
            }
            Ok(n) => {
                from.passed(n);
                self.spliced_last = true;
            }
            Err(e) => {
                from.failed();
                return Poll::Ready(Err(e));
            }
        }
        Poll::Ready(Ok(true))
    }

    /// Reads into the empty buffer through the source's decorators: a short read after a
    /// splice, a full one otherwise. While the source has nothing, what was written is flushed.
    fn poll_read<R, W>(
        &mut self,
        cx: &mut Context<'_>,
        from: &mut Metered<R>,
        to: &mut Metered<W>,
    ) -> Poll<io::Result<()>>
    where
        R: AsyncRead + Unpin,
        W: AsyncWrite + Unpin,
    {
        let len = match self.spliced_last {
            true => SHORT_READ.min(self.buf.len()),
            false => self.buf.len(),
        };
        let mut buf = ReadBuf::new(&mut self.buf[..len]);
        match Pin::new(&mut *from).poll_read(cx, &mut buf) {
            Poll::Ready(Ok(())) => {}
            Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
            Poll::Pending => {
                if self.need_flush {
                    ready!(Pin::new(&mut *to).poll_flush(cx))?;
                    self.need_flush = false;
                }
                return Poll::Pending;
            }
        }
        let n = buf.filled().len();
        self.pos = 0;
        self.cap = n;
        self.spliced_last = false;
        if n == 0 {
            self.read_done = true;
        }
        Poll::Ready(Ok(()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt, duplex};

    const SETTINGS: CopySettings = CopySettings {
        buffer_bytes: 4096,
        splice: true,
    };

    #[tokio::test]
    async fn carries_both_ways_and_half_closes() {
        let (recipient, relay_down) = duplex(1024);
        let (relay_up, donor) = duplex(1024);
        let legs = Legs::default();
        let task = tokio::spawn({
            let legs = legs.clone();
            async move { relay(relay_down, relay_up, SETTINGS, &legs).await }
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
    async fn names_the_leg_that_failed() {
        let (recipient, relay_down) = duplex(64);
        let (relay_up, donor) = duplex(64);
        drop(donor);
        let legs = Legs::default();
        let (_rx, mut tx) = tokio::io::split(recipient);
        tx.write_all(b"data for a donor that is gone")
            .await
            .unwrap();
        let err = relay(relay_down, relay_up, SETTINGS, &legs)
            .await
            .unwrap_err();
        assert!(matches!(err, RelayError::Upstream(_)), "{err:?}");
    }
}
