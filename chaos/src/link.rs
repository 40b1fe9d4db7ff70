//! One proxied connection: each direction is read by one task and written by another, with the
//! direction's fault chain in between. A bounded queue between them keeps backpressure (a held
//! stream stops being read, so the sender stalls as on a real link) while letting delayed
//! chunks stay pipelined. A cut from either direction ends both, with a real RST or a FIN.

use std::io;
use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadHalf, WriteHalf};
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;
use tracing::debug;

use crate::fault::{ConnInfo, Cut, DecisionLog, Flow, Piece, SharedBuckets};
use crate::schedule::{Scheduled, Setup};
use crate::spec::{Direction, FaultSpec};

/// Chunks read but not yet written, per direction.
const QUEUE_CHUNKS: usize = 64;
const READ_BYTES: usize = 32 * 1024;

/// The live fault table: (id, spec) pairs, replaced whole on every change.
pub type FaultTable = Arc<Vec<(u64, FaultSpec)>>;

/// What a connection's links share.
#[derive(Debug, Clone)]
pub struct LinkContext {
    pub seed: u64,
    pub conn: ConnInfo,
    pub proxy_start: Instant,
    pub conn_start: Instant,
    pub buckets: Arc<SharedBuckets>,
    pub log: Arc<DecisionLog>,
    pub faults: watch::Receiver<FaultTable>,
}

/// How a connection ended.
#[derive(Debug)]
pub enum LinkEnd {
    /// Both directions reached their end.
    Finished,
    /// A fault ended it.
    Cut(Cut),
    /// A side failed.
    Error(io::Error),
}

/// The faults of one direction, kept in step with the live table.
#[derive(Debug)]
struct Chain {
    dir: Direction,
    ctx: LinkContext,
    faults: Vec<Scheduled>,
}

impl Chain {
    fn new(dir: Direction, ctx: LinkContext) -> Self {
        let mut chain = Chain {
            dir,
            ctx,
            faults: Vec::new(),
        };
        chain.reconcile();
        chain
    }

    /// Brings the chain in line with the table: new and changed faults are set up afresh,
    /// removed ones dropped, unchanged ones keep their state.
    fn reconcile(&mut self) {
        let table = self.ctx.faults.borrow_and_update().clone();
        let mut old = std::mem::take(&mut self.faults);
        let setup = Setup {
            seed: self.ctx.seed,
            conn: &self.ctx.conn,
            direction: self.dir,
            proxy_start: self.ctx.proxy_start,
            conn_start: self.ctx.conn_start,
            buckets: &self.ctx.buckets,
            log: &self.ctx.log,
        };
        for (id, spec) in table.iter() {
            let kept = old
                .iter()
                .position(|s| s.id == *id && s.spec == *spec)
                .map(|i| old.swap_remove(i));
            self.faults
                .push(kept.unwrap_or_else(|| Scheduled::new(*id, spec.clone(), setup)));
        }
    }

    fn apply(&mut self, arrived: Instant, offset: u64, bytes: Bytes) -> Flow {
        let mut pieces = vec![Piece::new(bytes, arrived)];
        for fault in &mut self.faults {
            let flow = fault.apply(
                &self.ctx.log,
                self.ctx.conn.index,
                self.dir,
                arrived,
                offset,
                pieces,
            );
            if flow.then.is_some() {
                return flow;
            }
            pieces = flow.pieces;
        }
        Flow::pass(pieces)
    }

    /// How many bytes to put through the chain at a time: a paced fault's piece, or all.
    fn pace_bytes(&self) -> Option<usize> {
        self.faults.iter().filter_map(Scheduled::pace_bytes).min()
    }

    fn due_cut(&self) -> Option<(Instant, Cut)> {
        let now = Instant::now();
        self.faults
            .iter()
            .filter_map(|f| f.due_cut(now))
            .min_by_key(|(at, _)| *at)
    }

    fn close_delay(&self) -> Duration {
        self.faults
            .iter()
            .map(Scheduled::close_delay)
            .max()
            .unwrap_or_default()
    }
}

struct Chunk {
    bytes: Bytes,
    arrived: Instant,
}

async fn read_side<R: AsyncRead>(mut src: ReadHalf<R>, tx: mpsc::Sender<Chunk>) -> io::Result<()> {
    loop {
        let mut buf = BytesMut::with_capacity(READ_BYTES);
        if src.read_buf(&mut buf).await? == 0 {
            return Ok(());
        }
        let chunk = Chunk {
            bytes: buf.freeze(),
            arrived: Instant::now(),
        };
        if tx.send(chunk).await.is_err() {
            return Ok(());
        }
    }
}

/// Sleeps until `at`, or for ever when there is no `at`.
async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

enum WriteEnd {
    Eof,
    Cut(Cut),
}

/// Completes when the fault table changes; never once its sender is gone.
async fn table_changed(table: &mut Option<watch::Receiver<FaultTable>>) {
    match table {
        Some(rx) => {
            if rx.changed().await.is_err() {
                *table = None;
                std::future::pending::<()>().await;
            }
        }
        None => std::future::pending().await,
    }
}

async fn write_side<W: AsyncWrite>(
    mut rx: mpsc::Receiver<Chunk>,
    mut dst: WriteHalf<W>,
    mut chain: Chain,
) -> io::Result<WriteEnd> {
    let mut offset = 0u64;
    let mut table = Some(chain.ctx.faults.clone());
    loop {
        let due = chain.due_cut();
        let chunk = tokio::select! {
            biased;
            _ = sleep_until(due.map(|d| d.0)) => return Ok(WriteEnd::Cut(due.expect("due").1)),
            _ = table_changed(&mut table) => {
                chain.reconcile();
                continue;
            }
            chunk = rx.recv() => chunk,
        };
        let Some(Chunk { bytes, arrived }) = chunk else {
            tokio::time::sleep(chain.close_delay()).await;
            let _ = dst.shutdown().await;
            return Ok(WriteEnd::Eof);
        };
        // The chunk goes through the chain (a paced chain takes it a piece at a time); if the
        // faults change while its pieces wait (a blackhole removed, say), what is not yet
        // written goes through the new chain.
        let mut rest = bytes;
        while !rest.is_empty() {
            let take = chain.pace_bytes().map_or(rest.len(), |n| n.min(rest.len()));
            let mut pending = rest.split_to(take);
            'chain: loop {
                let flow = chain.apply(arrived, offset, pending.clone());
                let mut written = 0usize;
                for piece in flow.pieces {
                    let due = chain.due_cut();
                    let held = piece.not_before > Instant::now() || !piece.pause.is_zero();
                    if held || due.is_some_and(|(at, _)| at <= Instant::now()) {
                        let wait = async {
                            if piece.not_before > Instant::now() {
                                tokio::time::sleep_until(piece.not_before).await;
                            }
                            if !piece.pause.is_zero() {
                                tokio::time::sleep(piece.pause).await;
                            }
                        };
                        tokio::select! {
                        biased;
                        _ = sleep_until(due.map(|d| d.0)) => return Ok(WriteEnd::Cut(due.expect("due").1)),
                        _ = table_changed(&mut table) => {
                            chain.reconcile();
                            pending = pending.slice(written..);
                            offset += written as u64;
                            continue 'chain;
                        }
                        _ = wait => {}
                        }
                    }
                    // A peer that stops reading must not hide a due cut.
                    let due = chain.due_cut();
                    tokio::select! {
                        biased;
                        _ = sleep_until(due.map(|d| d.0)) => return Ok(WriteEnd::Cut(due.expect("due").1)),
                        done = dst.write_all(&piece.bytes) => done?,
                    }
                    written += piece.bytes.len();
                }
                offset += pending.len() as u64;
                if let Some(cut) = flow.then {
                    return Ok(WriteEnd::Cut(cut));
                }
                break;
            }
        }
    }
}

/// Carries one connection between `client` and `server` through the faults until it ends.
/// `on_cut` runs before the streams are dropped, so that a socket owner can turn the drop into
/// a real RST (zero linger) or FIN; for in-memory streams a drop is all there is.
pub async fn run<C, S>(
    client: C,
    server: S,
    ctx: LinkContext,
    on_cut: impl FnOnce(&LinkEnd) + Send,
) -> LinkEnd
where
    C: AsyncRead + AsyncWrite + Send + 'static,
    S: AsyncRead + AsyncWrite + Send + 'static,
{
    let (client_rx, client_tx) = tokio::io::split(client);
    let (server_rx, server_tx) = tokio::io::split(server);
    let (up_tx, up_rx) = mpsc::channel(QUEUE_CHUNKS);
    let (down_tx, down_rx) = mpsc::channel(QUEUE_CHUNKS);

    let mut tasks = tokio::task::JoinSet::new();
    tasks.spawn(async move { read_side(client_rx, up_tx).await.map(|()| None) });
    tasks.spawn(async move { read_side(server_rx, down_tx).await.map(|()| None) });
    let up = Chain::new(Direction::Upstream, ctx.clone());
    let down = Chain::new(Direction::Downstream, ctx.clone());
    tasks.spawn(async move { write_side(up_rx, server_tx, up).await.map(Some) });
    tasks.spawn(async move { write_side(down_rx, client_tx, down).await.map(Some) });

    let mut ended_writers = 0;
    let end = loop {
        match tasks.join_next().await {
            None => break LinkEnd::Finished,
            Some(Ok(Ok(Some(WriteEnd::Eof)))) => {
                ended_writers += 1;
                if ended_writers == 2 {
                    break LinkEnd::Finished;
                }
            }
            Some(Ok(Ok(Some(WriteEnd::Cut(cut))))) => break LinkEnd::Cut(cut),
            Some(Ok(Ok(None))) => {} // a reader reached its end; its writer finishes the job
            Some(Ok(Err(e))) => break LinkEnd::Error(e),
            Some(Err(e)) => break LinkEnd::Error(io::Error::other(e)),
        }
    };
    on_cut(&end);
    tasks.shutdown().await;
    debug!(connection = ctx.conn.index, end = ?end, "chaos link ended");
    end
}

/// Makes a socket's coming close a real RST (zero linger) or an immediate FIN, as `end` asks.
pub fn apply_end(socket: &std::net::TcpStream, end: &LinkEnd) {
    match end {
        LinkEnd::Cut(Cut::Reset) => {
            let _ = socket2::SockRef::from(socket).set_linger(Some(Duration::ZERO));
        }
        LinkEnd::Cut(Cut::Close) | LinkEnd::Error(_) => {
            let _ = socket.shutdown(std::net::Shutdown::Both);
        }
        LinkEnd::Finished => {}
    }
}

/// Splits off a second handle on the same socket, to reset or close it after the first is
/// handed to [`run`].
pub fn control_handle(
    stream: tokio::net::TcpStream,
) -> io::Result<(tokio::net::TcpStream, std::net::TcpStream)> {
    let std = stream.into_std()?;
    let ctl = std.try_clone()?;
    Ok((tokio::net::TcpStream::from_std(std)?, ctl))
}
