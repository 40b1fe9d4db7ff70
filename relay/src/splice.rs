//! splice(2) through a pipe: bytes move from one TCP socket to another inside the kernel,
//! never copied into the relay. The copy path uses it for the bulk of packets on plain legs
//! with no bandwidth cap: the decoder reads each packet's header and head in user space, and
//! says how much of the packet it has no need to see ([`Splice::poll_passable`]).
//!
//! The pipe is filled only when empty and drained fully before the next fill, so a `splice`
//! that would block means the socket has nothing to give (or no room), never that the pipe is
//! full. Writing to a socket whose peer is gone fails with `EPIPE` (Rust programs ignore
//! SIGPIPE).

use std::io;
use std::os::fd::OwnedFd;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll, ready};

use rustix::pipe::{PipeFlags, SpliceFlags, fcntl_setpipe_size, pipe_with, splice};
use tokio::io::Interest;
use tokio::net::TcpStream;

use crate::leg::Leg;

/// A stream on the copy path that can take part in splicing: its plain TCP socket, and the
/// bookkeeping for bytes spliced out of or into it, which its decorators (counters, decoder,
/// bandwidth buckets) see as if they had been read or written.
pub trait Splice {
    /// The TCP socket to splice from or to: `Some` on a plain leg, `None` under TLS.
    fn socket(&self) -> Option<&TcpStream> {
        None
    }

    /// How many of the next bytes read from this stream may be spliced rather than read: zero
    /// when they must be read in user space (TLS, a bandwidth cap, a header the decoder has not
    /// seen). Pending while a payment for earlier reads completes.
    fn poll_passable(&mut self, _cx: &mut Context<'_>) -> Poll<usize> {
        Poll::Ready(0)
    }

    /// `n` bytes were spliced out of this stream; zero means its peer ended the stream.
    fn passed(&mut self, _n: usize) {}

    /// `n` bytes were spliced into this stream.
    fn written(&mut self, _n: usize) {}

    /// A splice out of or into this stream failed.
    fn failed(&mut self) {}
}

impl<S: Splice + ?Sized> Splice for &mut S {
    fn socket(&self) -> Option<&TcpStream> {
        (**self).socket()
    }

    fn poll_passable(&mut self, cx: &mut Context<'_>) -> Poll<usize> {
        (**self).poll_passable(cx)
    }

    fn passed(&mut self, n: usize) {
        (**self).passed(n)
    }

    fn written(&mut self, n: usize) {
        (**self).written(n)
    }

    fn failed(&mut self) {
        (**self).failed()
    }
}

/// A plain leg splices while its bandwidth buckets have no cap; the bytes are charged to them.
/// A TLS leg never splices.
impl Splice for Leg {
    fn socket(&self) -> Option<&TcpStream> {
        match self {
            Leg::Plain(s) => Some(s.get_ref()),
            Leg::FromRecipient(_) | Leg::ToDonor(_) => None,
        }
    }

    fn poll_passable(&mut self, cx: &mut Context<'_>) -> Poll<usize> {
        match self {
            Leg::Plain(s) => match ready!(s.poll_unbounded(cx)) {
                true => Poll::Ready(usize::MAX),
                false => Poll::Ready(0),
            },
            Leg::FromRecipient(_) | Leg::ToDonor(_) => Poll::Ready(0),
        }
    }

    fn passed(&mut self, n: usize) {
        if let Leg::Plain(s) = self {
            s.charge(n);
        }
    }
}

impl Splice for tokio::io::DuplexStream {}

/// Bytes moved into pipes by this process, for tests that check the kernel path was taken.
static SPLICED: AtomicU64 = AtomicU64::new(0);

/// Bytes this process has spliced out of sockets so far.
pub fn spliced_total() -> u64 {
    SPLICED.load(Ordering::Relaxed)
}

/// A pipe between two sockets, and how many bytes it holds.
#[derive(Debug)]
pub struct Pipe {
    read: OwnedFd,
    write: OwnedFd,
    held: usize,
    capacity: usize,
}

impl Pipe {
    /// A non-blocking pipe of about `capacity` bytes (the kernel rounds it up to pages; when it
    /// refuses the size, the pipe keeps its default).
    pub fn new(capacity: usize) -> io::Result<Pipe> {
        let (read, write) = pipe_with(PipeFlags::CLOEXEC | PipeFlags::NONBLOCK)?;
        let capacity = fcntl_setpipe_size(&write, capacity)
            .or_else(|_| rustix::pipe::fcntl_getpipe_size(&write))?;
        Ok(Pipe {
            read,
            write,
            held: 0,
            capacity,
        })
    }

    /// Bytes in the pipe, not yet written out.
    pub fn held(&self) -> usize {
        self.held
    }

    /// Moves up to `max` bytes (at most the pipe's capacity) from `from` into the empty pipe.
    /// `Ok(0)` is the end of `from`'s stream. `max` must not be zero, and the pipe must be empty.
    pub fn poll_fill(
        &mut self,
        cx: &mut Context<'_>,
        from: &TcpStream,
        max: usize,
    ) -> Poll<io::Result<usize>> {
        debug_assert!(max > 0 && self.held == 0);
        let len = max.min(self.capacity);
        loop {
            ready!(from.poll_read_ready(cx))?;
            let moved = from.try_io(Interest::READABLE, || {
                splice(from, None, &self.write, None, len, flags()).map_err(io::Error::from)
            });
            match moved {
                Ok(n) => {
                    self.held = n;
                    SPLICED.fetch_add(n as u64, Ordering::Relaxed);
                    return Poll::Ready(Ok(n));
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                Err(e) => return Poll::Ready(Err(e)),
            }
        }
    }

    /// Writes some of what the pipe holds to `to`; returns the bytes written (more than zero).
    pub fn poll_drain(&mut self, cx: &mut Context<'_>, to: &TcpStream) -> Poll<io::Result<usize>> {
        debug_assert!(self.held > 0);
        loop {
            ready!(to.poll_write_ready(cx))?;
            let moved = to.try_io(Interest::WRITABLE, || {
                splice(&self.read, None, to, None, self.held, flags()).map_err(io::Error::from)
            });
            match moved {
                Ok(0) => return Poll::Ready(Err(io::ErrorKind::WriteZero.into())),
                Ok(n) => {
                    self.held -= n;
                    return Poll::Ready(Ok(n));
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                Err(e) => return Poll::Ready(Err(e)),
            }
        }
    }
}

fn flags() -> SpliceFlags {
    SpliceFlags::MOVE | SpliceFlags::NONBLOCK
}

/// Copies `from` to `to` through `pipe` until `from` ends; returns the bytes copied. Does not
/// shut `to` down.
pub async fn pump(from: &TcpStream, to: &TcpStream, pipe: &mut Pipe) -> io::Result<u64> {
    let mut total = 0;
    loop {
        let n = std::future::poll_fn(|cx| pipe.poll_fill(cx, from, usize::MAX)).await?;
        if n == 0 {
            return Ok(total);
        }
        while pipe.held() > 0 {
            total += std::future::poll_fn(|cx| pipe.poll_drain(cx, to)).await? as u64;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

    /// A connected pair of loopback sockets.
    async fn pair() -> (TcpStream, TcpStream) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (client, accepted) = tokio::join!(TcpStream::connect(addr), listener.accept());
        (client.unwrap(), accepted.unwrap().0)
    }

    #[tokio::test]
    async fn carries_every_byte_in_order_through_a_small_pipe() {
        let (mut sender, relay_in) = pair().await;
        let (relay_out, mut receiver) = pair().await;
        // 3 MiB of a pattern that a shifted or lost byte would break, through a 64 KiB pipe.
        let data: Vec<u8> = (0..3 << 20).map(|i: u32| (i % 251) as u8).collect();
        let send = tokio::spawn({
            let data = data.clone();
            async move {
                sender.write_all(&data).await.unwrap();
                sender.shutdown().await.unwrap();
            }
        });
        let receive = tokio::spawn(async move {
            let mut got = Vec::new();
            receiver.read_to_end(&mut got).await.unwrap();
            got
        });
        let mut pipe = Pipe::new(64 << 10).unwrap();
        let copied = pump(&relay_in, &relay_out, &mut pipe).await.unwrap();
        assert_eq!(copied, data.len() as u64);
        assert_eq!(pipe.held(), 0);
        drop(relay_out);
        send.await.unwrap();
        assert!(receive.await.unwrap() == data, "bytes differ");
    }

    #[tokio::test]
    async fn a_bounded_fill_takes_no_more_than_asked() {
        let (mut sender, relay_in) = pair().await;
        let (relay_out, mut receiver) = pair().await;
        sender
            .write_all(b"header|rest of the packet")
            .await
            .unwrap();
        let mut pipe = Pipe::new(64 << 10).unwrap();
        let n = std::future::poll_fn(|cx| pipe.poll_fill(cx, &relay_in, 7))
            .await
            .unwrap();
        assert_eq!(n, 7);
        while pipe.held() > 0 {
            std::future::poll_fn(|cx| pipe.poll_drain(cx, &relay_out))
                .await
                .unwrap();
        }
        let mut got = [0u8; 7];
        receiver.read_exact(&mut got).await.unwrap();
        assert_eq!(&got, b"header|");
        // The rest stays in the socket for an ordinary read.
        let mut rest = [0u8; 18];
        let mut relay_in = relay_in;
        relay_in.read_exact(&mut rest).await.unwrap();
        assert_eq!(&rest, b"rest of the packet");
    }

    #[tokio::test]
    async fn a_destination_that_is_gone_is_an_error() {
        let (mut sender, relay_in) = pair().await;
        let (relay_out, receiver) = pair().await;
        drop(receiver);
        let feed = tokio::spawn(async move {
            let block = vec![7u8; 1 << 20];
            // Ends with an error once the relay side closes.
            while sender.write_all(&block).await.is_ok() {}
        });
        let mut pipe = Pipe::new(64 << 10).unwrap();
        let err = pump(&relay_in, &relay_out, &mut pipe).await.unwrap_err();
        assert!(
            matches!(
                err.kind(),
                io::ErrorKind::BrokenPipe | io::ErrorKind::ConnectionReset
            ),
            "{err:?}"
        );
        drop(relay_in);
        feed.await.unwrap();
    }
}
