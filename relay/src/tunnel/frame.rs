//! The tunnel's wire format. A tunnel connection opens with the recipient side's [`Hello`] and
//! the donor side's [`Welcome`]; then both sides send [`Frame`]s: data, acknowledgements (also
//! the heartbeat) and the end of a direction. Integers are big-endian.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::time::Instant;

/// Opens every hello and welcome: the format and its version.
const MAGIC: &[u8; 4] = b"CRT2";
/// Largest data frame; a larger length is a broken peer.
pub const MAX_DATA: usize = 256 * 1024;
/// A stream's identity across reconnects.
pub type Token = [u8; 16];
/// A recipient-side relay's run: drawn at random when the process starts, so a restarted relay
/// is told apart from the one before.
pub type Instance = [u8; 16];

const DATA: u8 = 1;
const ACK: u8 = 2;
const FIN: u8 = 3;

const WELCOME_RESUME: u8 = 1;
const WELCOME_UNKNOWN: u8 = 2;

/// What opens a tunnel connection: the stream it carries and how far that stream's bytes from
/// the donor side got.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hello {
    pub token: Token,
    /// Bytes of the donor side's direction delivered to the recipient side so far.
    pub received: u64,
    /// The stream's first connection: the donor side creates it.
    pub fresh: bool,
    /// The recipient's address, which the donor side groups clone sessions by.
    pub recipient: SocketAddr,
    /// The recipient-side relay's run that opened the stream.
    pub instance: Instance,
}

/// The donor side's answer to a [`Hello`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Welcome {
    /// Carry on: the recipient side's bytes delivered to the donor side so far.
    Resume { received: u64 },
    /// The donor side has no such stream (it ended, or gave up waiting): the stream is lost.
    Unknown,
}

/// One frame after the hello.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Frame {
    /// Data: `len` bytes follow the header, for the reader to take as they arrive.
    Data { len: usize },
    /// The sender has delivered this many bytes of the other direction, and whether it has
    /// seen that direction's end. Sent at least every heartbeat.
    Ack { received: u64, fin: bool },
    /// The sender's direction ends after the data already sent.
    Fin,
}

fn invalid(reason: impl Into<String>) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, reason.into())
}

pub async fn write_hello(w: &mut (impl AsyncWrite + Unpin), hello: &Hello) -> io::Result<()> {
    let addr = hello.recipient.to_string();
    let mut out = Vec::with_capacity(64);
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&hello.token);
    out.extend_from_slice(&hello.instance);
    out.extend_from_slice(&hello.received.to_be_bytes());
    out.push(u8::from(hello.fresh));
    out.push(addr.len() as u8);
    out.extend_from_slice(addr.as_bytes());
    w.write_all(&out).await?;
    w.flush().await
}

pub async fn read_hello(r: &mut (impl AsyncRead + Unpin)) -> io::Result<Hello> {
    read_magic(r).await?;
    let mut token = [0u8; 16];
    r.read_exact(&mut token).await?;
    let mut instance = [0u8; 16];
    r.read_exact(&mut instance).await?;
    let received = r.read_u64().await?;
    let fresh = match r.read_u8().await? {
        0 => false,
        1 => true,
        other => return Err(invalid(format!("hello: bad fresh flag {other}"))),
    };
    let len = usize::from(r.read_u8().await?);
    let mut addr = vec![0u8; len];
    r.read_exact(&mut addr).await?;
    let recipient = std::str::from_utf8(&addr)
        .ok()
        .and_then(|a| a.parse().ok())
        .ok_or_else(|| invalid("hello: the recipient's address does not parse"))?;
    Ok(Hello {
        token,
        received,
        fresh,
        recipient,
        instance,
    })
}

pub async fn write_welcome(w: &mut (impl AsyncWrite + Unpin), welcome: Welcome) -> io::Result<()> {
    let mut out = Vec::with_capacity(13);
    out.extend_from_slice(MAGIC);
    match welcome {
        Welcome::Resume { received } => {
            out.push(WELCOME_RESUME);
            out.extend_from_slice(&received.to_be_bytes());
        }
        Welcome::Unknown => {
            out.push(WELCOME_UNKNOWN);
            out.extend_from_slice(&0u64.to_be_bytes());
        }
    }
    w.write_all(&out).await?;
    w.flush().await
}

pub async fn read_welcome(r: &mut (impl AsyncRead + Unpin)) -> io::Result<Welcome> {
    read_magic(r).await?;
    let kind = r.read_u8().await?;
    let received = r.read_u64().await?;
    match kind {
        WELCOME_RESUME => Ok(Welcome::Resume { received }),
        WELCOME_UNKNOWN => Ok(Welcome::Unknown),
        other => Err(invalid(format!("welcome: unknown kind {other}"))),
    }
}

async fn read_magic(r: &mut (impl AsyncRead + Unpin)) -> io::Result<()> {
    let mut magic = [0u8; 4];
    r.read_exact(&mut magic).await?;
    if &magic != MAGIC {
        return Err(invalid(
            "not a clone-relay tunnel (or another version of it)",
        ));
    }
    Ok(())
}

/// Writes a data frame: its header and `data` in vectored writes, so a buffered writer whose
/// buffer `data` does not fit passes both to the socket without copying them.
pub async fn write_data(w: &mut (impl AsyncWrite + Unpin), data: &[u8]) -> io::Result<()> {
    let header = data_header(data.len());
    let (mut head, mut body) = (&header[..], data);
    while !head.is_empty() || !body.is_empty() {
        let n = w
            .write_vectored(&[io::IoSlice::new(head), io::IoSlice::new(body)])
            .await?;
        if n == 0 {
            return Err(io::ErrorKind::WriteZero.into());
        }
        let from_head = n.min(head.len());
        head = &head[from_head..];
        body = &body[n - from_head..];
    }
    Ok(())
}

/// A data frame's header; the payload follows it.
fn data_header(len: usize) -> [u8; 5] {
    let mut header = [DATA, 0, 0, 0, 0];
    header[1..].copy_from_slice(&(len as u32).to_be_bytes());
    header
}

pub fn ack(received: u64, fin: bool) -> [u8; 10] {
    let mut out = [0u8; 10];
    out[0] = ACK;
    out[1..9].copy_from_slice(&received.to_be_bytes());
    out[9] = u8::from(fin);
    out
}

pub const FIN_FRAME: [u8; 1] = [FIN];

/// Reads one frame; of a data frame, its header only.
pub async fn read_frame(r: &mut (impl AsyncRead + Unpin)) -> io::Result<Frame> {
    match r.read_u8().await? {
        DATA => {
            let len = r.read_u32().await? as usize;
            if len == 0 || len > MAX_DATA {
                return Err(invalid(format!("data frame of {len} bytes")));
            }
            Ok(Frame::Data { len })
        }
        ACK => {
            let received = r.read_u64().await?;
            let fin = r.read_u8().await? != 0;
            Ok(Frame::Ack { received, fin })
        }
        FIN => Ok(Frame::Fin),
        other => Err(invalid(format!("unknown frame type {other}"))),
    }
}

/// When a tunnel connection's socket last delivered a byte: TLS records and frames arrive
/// whole only once their last byte has, so liveness is judged below them.
#[derive(Debug)]
pub struct Heard(Mutex<Instant>);

impl Heard {
    pub fn new() -> Arc<Heard> {
        Arc::new(Heard(Mutex::new(Instant::now())))
    }

    fn at(&self) -> Instant {
        *self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn now(&self) {
        *self.0.lock().unwrap_or_else(PoisonError::into_inner) = Instant::now();
    }
}

/// A read of the tunnel connection, as long as bytes keep coming: `Ok(None)` once `silence`
/// passes with no byte at all from the network (as `heard` tells). A read that takes longer
/// than `silence` on a slow link is not a dead link.
pub async fn while_alive<T>(
    read: impl Future<Output = io::Result<T>>,
    silence: Duration,
    heard: &Heard,
) -> io::Result<Option<T>> {
    tokio::pin!(read);
    loop {
        tokio::select! {
            done = &mut read => return done.map(Some),
            () = tokio::time::sleep_until(heard.at() + silence) => {
                if heard.at().elapsed() >= silence {
                    return Ok(None);
                }
            }
        }
    }
}

/// A tunnel connection's socket, noting in [`Heard`] when a byte arrives.
#[derive(Debug)]
pub struct Watched<T> {
    inner: T,
    heard: Arc<Heard>,
}

impl<T> Watched<T> {
    pub fn new(inner: T, heard: Arc<Heard>) -> Self {
        Watched { inner, heard }
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for Watched<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.inner).poll_read(cx, buf);
        if buf.filled().len() > before {
            self.heard.now();
        }
        polled
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Watched<T> {
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

    #[tokio::test]
    async fn a_data_frame_written_in_small_pieces_reads_back_whole() {
        // A pipe of 3 bytes takes the vectored writes a few bytes at a time, the header split
        // across them.
        let (mut tx, mut rx) = tokio::io::duplex(3);
        let payload: Vec<u8> = (0..1000u32).map(|i| i as u8).collect();
        let sent = payload.clone();
        let writer = tokio::spawn(async move { write_data(&mut tx, &sent).await });
        let Frame::Data { len } = read_frame(&mut rx).await.unwrap() else {
            panic!("not a data frame");
        };
        assert_eq!(len, payload.len());
        let mut got = vec![0u8; len];
        rx.read_exact(&mut got).await.unwrap();
        assert_eq!(got, payload);
        writer.await.unwrap().unwrap();
    }

    #[tokio::test(start_paused = true)]
    async fn a_frame_slower_than_the_silence_is_read_while_its_bytes_keep_coming() {
        let (mut tx, rx) = tokio::io::duplex(1024);
        let payload = vec![5u8; 64 * 1024];
        let mut bytes = data_header(payload.len()).to_vec();
        bytes.extend(&payload);
        // 64 KiB at 1 KiB every 100 ms: 6.4 s for one frame, a silence of 3 s.
        let writer = tokio::spawn(async move {
            for piece in bytes.chunks(1024) {
                tx.write_all(piece).await.unwrap();
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            tx
        });
        let started = Instant::now();
        let heard = Heard::new();
        let mut rx = Watched::new(rx, heard.clone());
        let silence = Duration::from_secs(3);
        let frame = while_alive(read_frame(&mut rx), silence, &heard)
            .await
            .unwrap();
        assert_eq!(frame, Some(Frame::Data { len: 64 * 1024 }));
        let mut data = vec![0u8; 64 * 1024];
        let read = while_alive(rx.read_exact(&mut data), silence, &heard)
            .await
            .unwrap();
        assert!(read.is_some());
        assert_eq!(data, payload);
        assert!(started.elapsed() > Duration::from_secs(6));

        // Then the link falls silent in the middle of a frame: given up 3 s after its last byte.
        let mut tx = writer.await.unwrap();
        tx.write_all(&data_header(100)).await.unwrap();
        tx.write_all(&[1; 50]).await.unwrap();
        let frame = while_alive(read_frame(&mut rx), silence, &heard)
            .await
            .unwrap();
        assert_eq!(frame, Some(Frame::Data { len: 100 }));
        let started = Instant::now();
        let mut data = [0u8; 100];
        let read = while_alive(rx.read_exact(&mut data), silence, &heard)
            .await
            .unwrap();
        assert_eq!(read, None);
        let waited = started.elapsed();
        assert!(
            waited >= Duration::from_secs(3) && waited < Duration::from_millis(3100),
            "{waited:?}"
        );
    }

    #[tokio::test]
    async fn hello_welcome_and_frames_round_trip() {
        let hello = Hello {
            token: [7; 16],
            received: 1 << 40,
            fresh: true,
            recipient: "10.1.2.3:4567".parse().unwrap(),
            instance: [9; 16],
        };
        let mut wire = Vec::new();
        write_hello(&mut wire, &hello).await.unwrap();
        write_welcome(&mut wire, Welcome::Resume { received: 99 })
            .await
            .unwrap();
        wire.extend_from_slice(&data_header(3));
        wire.extend_from_slice(b"abc");
        wire.extend_from_slice(&ack(12, true));
        wire.extend_from_slice(&FIN_FRAME);
        let mut r = &wire[..];
        assert_eq!(read_hello(&mut r).await.unwrap(), hello);
        assert_eq!(
            read_welcome(&mut r).await.unwrap(),
            Welcome::Resume { received: 99 }
        );
        assert_eq!(read_frame(&mut r).await.unwrap(), Frame::Data { len: 3 });
        let mut data = [0u8; 3];
        r.read_exact(&mut data).await.unwrap();
        assert_eq!(&data, b"abc");
        assert_eq!(
            read_frame(&mut r).await.unwrap(),
            Frame::Ack {
                received: 12,
                fin: true
            }
        );
        assert_eq!(read_frame(&mut r).await.unwrap(), Frame::Fin);
    }

    #[tokio::test]
    async fn garbage_is_refused_with_a_reason() {
        let mut r = &b"GET / HTTP/1.1\r\n\r\n"[..];
        let e = read_hello(&mut r).await.unwrap_err();
        assert!(e.to_string().contains("not a clone-relay tunnel"), "{e}");
        let mut huge = data_header(MAX_DATA + 1).to_vec();
        huge.extend_from_slice(&[0; 16]);
        let e = read_frame(&mut &huge[..]).await.unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::InvalidData);
    }
}
