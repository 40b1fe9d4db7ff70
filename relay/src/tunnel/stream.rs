//! One resumable stream: a MySQL connection carried between the two relays of a pair, over one
//! tunnel connection after another. Each direction counts its bytes from the stream's start;
//! what was sent stays in the sender's [`Replay`] until the other side acknowledges it, so a new
//! tunnel connection resumes from the offset the other side reports, and no byte is lost or
//! delivered twice.
//!
//! The relay's connection pipeline holds a [`StreamEnd`] (one end of an in-memory pipe); the
//! stream's tasks hold the other: a local reader that fills the replay buffer (and stops
//! reading when the buffer budget is spent, so MySQL's side slows through TCP), and, per tunnel
//! connection, a sender (data, acknowledgements every [`HEARTBEAT`], the end of the direction)
//! and a receiver (delivers data to the pipe, trims the replay buffer on acknowledgements, and
//! declares the connection dead after the configured silence).

use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::BytesMut;
use tokio::io::{
    AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufReader, BufWriter, DuplexStream,
    ReadBuf, ReadHalf, WriteHalf,
};
use tokio::sync::Notify;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::frame::{self, FIN_FRAME, Frame, Heard, MAX_DATA};
use super::replay::{MIN_SHARE, Piece, READ_BYTES, Released, Replay};

/// Each side acknowledges at least this often; the acknowledgement is also the heartbeat.
pub const HEARTBEAT: Duration = Duration::from_millis(100);
/// An acknowledgement goes out early once this much arrived since the last: a third of the
/// smallest window a sender has (its send thirds of the smallest share), so that no sender
/// waits for the heartbeat to go on (with 1 MiB acknowledgements and a 2/3 MiB window, a
/// stream on the smallest share was held to 2/3 MiB per heartbeat, 6.7 MiB/s).
const ACK_EVERY: u64 = MIN_SHARE * SEND_THIRDS / 3 / 3;
/// Largest part of a data frame delivered to the pipeline at once.
const DELIVER_BYTES: usize = 64 * 1024;
/// The tunnel connection's write buffer.
const WRITE_BUFFER: usize = 16 * 1024;
/// The in-memory pipe between the pipeline and the stream's tasks.
const PIPE_BYTES: usize = 256 * 1024;
/// Of a stream's share of the buffer budget ([`Replay::share`]), what it may have sent and not
/// had acknowledged (what may be lost in flight with a connection and sent again), in thirds;
/// the rest is how far ahead of what was sent the pipeline is read while a tunnel connection is
/// up, so the MySQL side slows with the link. While no connection is up, the pipeline is read up
/// to the buffer budget. With the default 64 MiB and a clone at MySQL's default concurrency
/// (17-18 streams) the shares add up to the budget, so a clean clone never spills; a few streams
/// get up to 8 MiB of window each (160 MiB/s over a 50 ms round trip).
const SEND_THIRDS: u64 = 2;

/// Closes released spill segments on a blocking thread (closing frees their blocks).
fn close_off_thread(released: Released) {
    if !released.is_empty() {
        tokio::task::spawn_blocking(move || drop(released));
    }
}

/// A tunnel connection's byte stream: TLS or plain TCP.
pub trait Link: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Link for T {}

/// A tunnel connection: its byte stream, over a socket that notes when a byte last arrived.
pub struct Connection {
    pub link: Box<dyn Link>,
    pub heard: Arc<Heard>,
}

impl std::fmt::Debug for Connection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Connection").finish_non_exhaustive()
    }
}

/// Why a stream was given up, told to the pipeline through its reads.
#[derive(Debug, Default)]
struct Failure(Mutex<Option<String>>);

impl Failure {
    fn set(&self, reason: String) {
        *self.0.lock().unwrap_or_else(PoisonError::into_inner) = Some(reason);
    }

    fn get(&self) -> Option<String> {
        self.0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }
}

/// The pipeline's end of a stream: `AsyncRead + AsyncWrite` like a socket. When the stream is
/// given up (an outage longer than the bridge), its reads fail with the reason.
#[derive(Debug)]
pub struct StreamEnd {
    io: DuplexStream,
    failure: Arc<Failure>,
    ended: CancellationToken,
}

impl StreamEnd {
    /// Cancelled once the pipeline has read the other side's direction to its end: on the donor
    /// side, the recipient's connection closed.
    pub fn ended(&self) -> CancellationToken {
        self.ended.clone()
    }

    fn failed(&self) -> Option<io::Error> {
        self.failure
            .get()
            .map(|reason| io::Error::new(io::ErrorKind::ConnectionAborted, reason))
    }
}

impl AsyncRead for StreamEnd {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        match Pin::new(&mut this.io).poll_read(cx, buf) {
            Poll::Ready(Ok(())) if buf.filled().len() == before => match this.failed() {
                Some(e) => Poll::Ready(Err(e)),
                None => {
                    if buf.remaining() > 0 {
                        this.ended.cancel();
                    }
                    Poll::Ready(Ok(()))
                }
            },
            other => other,
        }
    }
}

impl AsyncWrite for StreamEnd {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        match Pin::new(&mut this.io).poll_write(cx, buf) {
            Poll::Ready(Err(e)) => Poll::Ready(Err(this.failed().unwrap_or(e))),
            other => other,
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_shutdown(cx)
    }
}

/// What both directions of a stream share.
#[derive(Debug)]
struct State {
    /// Bytes read from the pipeline, kept until the other side acknowledges them.
    replay: Replay,
    /// The pipeline's side ended: the end of this direction follows the buffered bytes.
    local_done: bool,
    /// Bytes of the other direction delivered to the pipeline (or dropped after it closed).
    received: u64,
    /// The other direction ended, and the pipeline was told.
    peer_done: bool,
    /// The other side acknowledged the end of this direction.
    peer_has_fin: bool,
    /// The pipeline no longer takes bytes.
    local_write_closed: bool,
    /// The last acknowledgement sent: `received` and `peer_done` then.
    told: (u64, bool),
    /// Why reading the pipeline or keeping its bytes failed.
    broken: Option<String>,
    /// The next offset the current tunnel connection sends; `None` while there is none.
    sending_at: Option<u64>,
    /// The highest offset sent over any connection.
    sent_max: u64,
}

/// A stream's shared half, held by its tasks.
#[derive(Debug)]
pub struct Stream {
    state: Mutex<State>,
    /// Wakes the sender: bytes to send, an acknowledgement due, the stream finished.
    to_send: Notify,
    /// Wakes the local reader: the replay buffer shrank.
    room: Notify,
    failure: Arc<Failure>,
}

/// How one tunnel connection of a stream ended.
#[derive(Debug)]
pub enum LinkEnd {
    /// Both directions ended and were acknowledged: the stream is over.
    Done,
    /// The connection failed or fell silent; the stream goes on over the next one.
    Lost(String),
    /// The stream cannot go on (its buffer broke, or the peer broke the protocol).
    Broken(String),
}

/// The pipe's far end, held by the stream's tasks.
#[derive(Debug)]
pub struct Local {
    pub reader: ReadHalf<DuplexStream>,
    pub writer: WriteHalf<DuplexStream>,
}

impl Stream {
    /// A stream with an empty buffer, the pipeline's end and the far end of its pipe.
    pub fn new(replay: Replay) -> (Arc<Stream>, StreamEnd, Local) {
        let (near, far) = tokio::io::duplex(PIPE_BYTES);
        let failure = Arc::new(Failure::default());
        let stream = Arc::new(Stream {
            state: Mutex::new(State {
                replay,
                local_done: false,
                received: 0,
                peer_done: false,
                peer_has_fin: false,
                local_write_closed: false,
                told: (0, false),
                broken: None,
                sending_at: None,
                sent_max: 0,
            }),
            to_send: Notify::new(),
            room: Notify::new(),
            failure: failure.clone(),
        });
        let (reader, writer) = tokio::io::split(far);
        (
            stream,
            StreamEnd {
                io: near,
                failure,
                ended: CancellationToken::new(),
            },
            Local { reader, writer },
        )
    }

    fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Bytes of the other direction delivered so far (what a hello or welcome reports).
    pub fn received(&self) -> u64 {
        self.state().received
    }

    /// Takes the other side's report of how far it got on a new connection: drops what it has,
    /// and fails when the offset is outside what this side sent. Returns the bytes that were
    /// sent before and go again.
    pub fn resume_from(&self, peer_received: u64) -> Result<u64, String> {
        let mut st = self.state();
        let (base, end) = (st.replay.base(), st.replay.end());
        if peer_received < base || peer_received > end {
            return Err(format!(
                "the other relay reports {peer_received} bytes received; this side holds {base}..{end}"
            ));
        }
        let released = st.replay.ack(peer_received);
        st.told = (st.received, false);
        let again = st.sent_max.saturating_sub(peer_received);
        drop(st);
        close_off_thread(released);
        self.room.notify_one();
        Ok(again)
    }

    /// Gives the stream up: the pipeline's reads fail with `reason` once the pipe is dropped.
    pub fn fail(&self, reason: String) {
        self.failure.set(reason);
    }

    /// Whether the pipeline may be read: the buffer has room, and while a connection is up,
    /// what it has not sent yet is under its part of the stream's share.
    fn may_read(&self) -> bool {
        let st = self.state();
        let read_ahead = st.replay.share() / 3 * (3 - SEND_THIRDS);
        let ahead = st
            .sending_at
            .is_some_and(|at| st.replay.end() - at >= read_ahead);
        !ahead && st.replay.has_room(READ_BYTES as u64)
    }

    /// Reads the pipeline's bytes into the replay buffer until its side ends; waits while the
    /// buffer budget is spent.
    pub async fn read_local(self: Arc<Self>, mut reader: ReadHalf<DuplexStream>) {
        let mut buf = BytesMut::new();
        loop {
            while !self.may_read() {
                self.room.notified().await;
            }
            if buf.capacity() == 0 {
                buf = self
                    .state()
                    .replay
                    .spare_buffer()
                    .unwrap_or_else(|| BytesMut::with_capacity(READ_BYTES));
            }
            match reader.read_buf(&mut buf).await {
                Ok(0) | Err(_) => {
                    self.state().local_done = true;
                    self.to_send.notify_one();
                    return;
                }
                Ok(_) => {}
            }
            // A short read keeps a buffer of its own size, so the memory counted is the memory
            // held; the read buffer stays for the next read.
            let chunk = if buf.len() < buf.capacity() {
                let chunk = bytes::Bytes::copy_from_slice(&buf);
                buf.clear();
                chunk
            } else {
                std::mem::take(&mut buf).freeze()
            };
            let spill = self.state().replay.place(chunk);
            if let Some(spill) = spill {
                // Sealed and written on a blocking thread, the stream's lock not held.
                let written = tokio::task::spawn_blocking(move || spill.write())
                    .await
                    .unwrap_or_else(|e| Err(io::Error::other(e)));
                let mut st = self.state();
                match written {
                    Ok(written) => st.replay.commit(written),
                    Err(e) => {
                        st.broken = Some(format!("the replay buffer's spill file failed: {e}"));
                        st.local_done = true;
                        drop(st);
                        self.to_send.notify_one();
                        return;
                    }
                }
            }
            self.to_send.notify_one();
        }
    }

    /// Carries the stream over one tunnel connection, sending from offset `send_from` (what the
    /// other side reported), until the stream is done or the connection is lost.
    pub async fn carry(
        &self,
        connection: Connection,
        local: &mut WriteHalf<DuplexStream>,
        send_from: u64,
        silence: Duration,
    ) -> LinkEnd {
        let Connection { link, heard } = connection;
        let (r, w) = tokio::io::split(link);
        // Data frames are read past the buffer: it serves the small frames and headers.
        let mut r = BufReader::with_capacity(16 * 1024, r);
        // Acknowledgements, ends and small data frames gather in the buffer; a data frame as
        // large as it goes past it (see `frame::write_data`).
        let mut w = BufWriter::with_capacity(WRITE_BUFFER, w);
        self.state().sending_at = Some(send_from);
        let end = tokio::select! {
            end = self.send(&mut w, send_from) => end,
            end = self.receive(&mut r, local, silence, &heard) => end,
        };
        // No connection: the pipeline may be read up to the buffer budget meanwhile.
        self.state().sending_at = None;
        self.room.notify_one();
        end
    }

    async fn send(&self, w: &mut (impl AsyncWrite + Unpin), mut pos: u64) -> LinkEnd {
        let lost = |e: io::Error| LinkEnd::Lost(format!("sending: {e}"));
        let mut scratch = Vec::new();
        let mut fin_sent = false;
        let mut last_ack = Instant::now() - HEARTBEAT;
        loop {
            let (chunk, ack, fin, finished) = {
                let mut st = self.state();
                if let Some(reason) = &st.broken {
                    return LinkEnd::Broken(reason.clone());
                }
                let send_window = st.replay.share() / 3 * SEND_THIRDS;
                let window = (st.replay.base() + send_window).saturating_sub(pos);
                let chunk = if pos < st.replay.end() && window > 0 {
                    let max = MAX_DATA.min(window as usize);
                    match st.replay.read_at(pos, max) {
                        Ok(chunk) => Some(chunk),
                        Err(e) => {
                            return LinkEnd::Broken(format!("reading the replay buffer: {e}"));
                        }
                    }
                } else {
                    None
                };
                let now = (st.received, st.peer_done);
                let due = last_ack.elapsed() >= HEARTBEAT
                    || (now != st.told && (now.0 - st.told.0 >= ACK_EVERY || now.1 != st.told.1));
                let ack = due.then(|| {
                    st.told = now;
                    now
                });
                let fin = pos == st.replay.end() && st.local_done && !fin_sent;
                let finished = fin_sent
                    && st.local_done
                    && st.replay.base() == st.replay.end()
                    && st.peer_has_fin
                    && st.peer_done
                    && st.told == (st.received, true);
                (chunk, ack, fin, finished)
            };
            if let Some((received, peer_done)) = ack {
                if let Err(e) = w.write_all(&frame::ack(received, peer_done)).await {
                    return lost(e);
                }
                last_ack = Instant::now();
            }
            if let Some(chunk) = chunk {
                let bytes = match chunk {
                    Piece::Memory(bytes) => bytes,
                    Piece::Sealed(sealed) => {
                        // Read and opened on a blocking thread, the stream's lock not held.
                        let mut buf = std::mem::take(&mut scratch);
                        let (read, buf) = tokio::task::spawn_blocking(move || {
                            let read = sealed.read(&mut buf);
                            (read, buf)
                        })
                        .await
                        .unwrap_or_else(|e| (Err(io::Error::other(e)), Vec::new()));
                        scratch = buf;
                        match read {
                            Ok(range) => bytes::Bytes::copy_from_slice(&scratch[range]),
                            Err(e) => {
                                return LinkEnd::Broken(format!("reading the replay buffer: {e}"));
                            }
                        }
                    }
                };
                if let Err(e) = frame::write_data(w, &bytes).await {
                    return lost(e);
                }
                pos += bytes.len() as u64;
                let mut st = self.state();
                st.sending_at = Some(pos);
                st.sent_max = st.sent_max.max(pos);
                drop(st);
                self.room.notify_one();
                continue;
            }
            if fin {
                if let Err(e) = w.write_all(&FIN_FRAME).await {
                    return lost(e);
                }
                fin_sent = true;
                continue;
            }
            if let Err(e) = w.flush().await {
                return lost(e);
            }
            if finished {
                return LinkEnd::Done;
            }
            tokio::select! {
                () = self.to_send.notified() => {}
                () = tokio::time::sleep_until(last_ack + HEARTBEAT) => {}
            }
        }
    }

    async fn receive(
        &self,
        r: &mut (impl AsyncRead + Unpin),
        local: &mut WriteHalf<DuplexStream>,
        silence: Duration,
        heard: &Heard,
    ) -> LinkEnd {
        let mut data = vec![0u8; DELIVER_BYTES];
        let silent = || {
            LinkEnd::Lost(format!(
                "nothing from the other relay for {}ms",
                silence.as_millis()
            ))
        };
        loop {
            // The link is alive while any byte comes: on a slow link a frame may take longer
            // than the silence.
            let frame = match frame::while_alive(frame::read_frame(r), silence, heard).await {
                Ok(None) => return silent(),
                Err(e) if e.kind() == io::ErrorKind::InvalidData => {
                    return LinkEnd::Broken(format!("the other relay broke the protocol: {e}"));
                }
                Err(e) => return LinkEnd::Lost(format!("receiving: {e}")),
                Ok(Some(frame)) => frame,
            };
            match frame {
                Frame::Data { len } => {
                    if self.state().peer_done {
                        return LinkEnd::Broken("data after the end of the stream".into());
                    }
                    // Delivered as it arrives: on a slow link MySQL gets a frame a little at a
                    // time rather than all of it after a long wait.
                    let mut left = len;
                    while left > 0 {
                        let want = left.min(data.len());
                        let n = match frame::while_alive(r.read(&mut data[..want]), silence, heard)
                            .await
                        {
                            Ok(Some(0)) => {
                                return LinkEnd::Lost("receiving: closed inside a frame".into());
                            }
                            Ok(Some(n)) => n,
                            Ok(None) => return silent(),
                            Err(e) => return LinkEnd::Lost(format!("receiving: {e}")),
                        };
                        self.deliver(&data[..n], local).await;
                        left -= n;
                    }
                }
                Frame::Ack { received, fin } => {
                    let mut st = self.state();
                    if received > st.replay.end() {
                        return LinkEnd::Broken(format!(
                            "acknowledged {received} bytes; only {} were sent",
                            st.replay.end()
                        ));
                    }
                    let released = st.replay.ack(received);
                    st.peer_has_fin |= fin && st.local_done;
                    drop(st);
                    close_off_thread(released);
                    self.room.notify_one();
                    self.to_send.notify_one();
                }
                Frame::Fin => {
                    let first = !self.state().peer_done;
                    if first {
                        let _ = local.shutdown().await;
                        self.state().peer_done = true;
                    }
                    self.to_send.notify_one();
                }
            }
        }
    }

    /// Writes `data` to the pipeline, counting each part as it is taken (so a connection lost
    /// meanwhile resumes after the last byte delivered); drops it once the pipeline is closed.
    async fn deliver(&self, data: &[u8], local: &mut WriteHalf<DuplexStream>) {
        let mut off = 0;
        while off < data.len() {
            let closed = self.state().local_write_closed;
            let n = if closed {
                data.len() - off
            } else {
                match local.write(&data[off..]).await {
                    Ok(0) | Err(_) => {
                        self.state().local_write_closed = true;
                        data.len() - off
                    }
                    Ok(n) => n,
                }
            };
            off += n;
            let mut st = self.state();
            st.received += n as u64;
            let due = st.received - st.told.0 >= ACK_EVERY;
            drop(st);
            if due {
                self.to_send.notify_one();
            }
        }
    }
}
