//! A recording TCP proxy for tests: it sits between the relay and a donor, carries every byte
//! both ways unchanged, and counts, for each direction, the bytes and the places where a chosen
//! byte string appeared. A match split across two reads is found too (each direction keeps the
//! tail of what it read). It shows what an eavesdropper on the relay's donor leg would see: a
//! known value of the data in plaintext, or nothing of it under TLS.

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use anyhow::{Context, Result};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::{JoinHandle, JoinSet};

const READ_BUFFER: usize = 64 * 1024;

/// What one direction of the tap has carried so far, over all its connections.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Flow {
    pub bytes: u64,
    /// Occurrences of the watched byte string.
    pub matches: u64,
}

/// A running tap; dropping it closes its listener and every connection through it.
#[derive(Debug)]
pub struct Tap {
    addr: SocketAddr,
    shared: Arc<Shared>,
    task: JoinHandle<()>,
}

#[derive(Debug)]
struct Shared {
    upstream: SocketAddr,
    needle: Vec<u8>,
    from_donor: Counters,
    to_donor: Counters,
    connections: AtomicU64,
}

#[derive(Debug, Default)]
struct Counters {
    bytes: AtomicU64,
    matches: AtomicU64,
}

impl Counters {
    fn flow(&self) -> Flow {
        Flow {
            bytes: self.bytes.load(Ordering::Relaxed),
            matches: self.matches.load(Ordering::Relaxed),
        }
    }
}

impl Tap {
    /// A tap on a free loopback port that forwards each connection to `upstream` and watches
    /// both directions for `needle`.
    pub async fn start(upstream: SocketAddr, needle: &[u8]) -> Result<Self> {
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
            .await
            .context("binding the tap")?;
        let addr = listener.local_addr()?;
        let shared = Arc::new(Shared {
            upstream,
            needle: needle.to_vec(),
            from_donor: Counters::default(),
            to_donor: Counters::default(),
            connections: AtomicU64::new(0),
        });
        let task = tokio::spawn(accept(listener, shared.clone()));
        Ok(Tap { addr, shared, task })
    }

    /// Where the relay should dial instead of the donor.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// What the donor sent through the tap so far.
    pub fn from_donor(&self) -> Flow {
        self.shared.from_donor.flow()
    }

    /// What reached the donor through the tap so far.
    pub fn to_donor(&self) -> Flow {
        self.shared.to_donor.flow()
    }

    /// Connections accepted so far.
    pub fn connections(&self) -> u64 {
        self.shared.connections.load(Ordering::Relaxed)
    }
}

impl Drop for Tap {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Accepts until aborted; the connections live in a set owned here, so they end with it.
async fn accept(listener: TcpListener, shared: Arc<Shared>) {
    let mut connections = JoinSet::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let Ok((client, _)) = accepted else {
                    // Out of descriptors, say: give the connections a moment to end.
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    continue;
                };
                shared.connections.fetch_add(1, Ordering::Relaxed);
                connections.spawn(carry(client, shared.clone()));
            }
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
        }
    }
}

/// Carries one connection both ways: an end of stream is passed on as a half-close, and an error
/// on either side closes both. A donor that cannot be reached closes the client's connection at
/// once.
async fn carry(client: TcpStream, shared: Arc<Shared>) {
    let Ok(donor) = TcpStream::connect(shared.upstream).await else {
        return;
    };
    let _ = client.set_nodelay(true);
    let _ = donor.set_nodelay(true);
    let (client_read, client_write) = client.into_split();
    let (donor_read, donor_write) = donor.into_split();
    let _ = tokio::try_join!(
        copy(donor_read, client_write, &shared.needle, &shared.from_donor),
        copy(client_read, donor_write, &shared.needle, &shared.to_donor),
    );
}

/// Copies one direction, counting bytes and matches, until the end of the stream (passed on)
/// or an error.
async fn copy(
    mut from: OwnedReadHalf,
    mut to: OwnedWriteHalf,
    needle: &[u8],
    counters: &Counters,
) -> std::io::Result<()> {
    let mut buf = vec![0u8; READ_BUFFER];
    let mut scanner = Scanner::new(needle);
    loop {
        let n = from.read(&mut buf).await?;
        if n == 0 {
            return to.shutdown().await;
        }
        let found = scanner.scan(&buf[..n]);
        counters.bytes.fetch_add(n as u64, Ordering::Relaxed);
        counters.matches.fetch_add(found, Ordering::Relaxed);
        to.write_all(&buf[..n]).await?;
    }
}

/// Counts occurrences of a byte string in a stream read in pieces, matches across pieces
/// included.
#[derive(Debug)]
struct Scanner<'a> {
    needle: &'a [u8],
    /// The stream's last `needle.len() - 1` bytes (fewer at its start).
    tail: Vec<u8>,
}

impl<'a> Scanner<'a> {
    fn new(needle: &'a [u8]) -> Self {
        Scanner {
            needle,
            tail: Vec::with_capacity(needle.len()),
        }
    }

    /// Occurrences that end in `chunk`.
    fn scan(&mut self, chunk: &[u8]) -> u64 {
        let keep = self.needle.len().saturating_sub(1);
        if keep == 0 {
            return count(chunk, self.needle);
        }
        // A match that starts in the tail ends within the chunk's first `keep` bytes.
        let mut seam = self.tail.clone();
        seam.extend_from_slice(&chunk[..chunk.len().min(keep)]);
        let across = positions(&seam, self.needle)
            .filter(|&at| at < self.tail.len())
            .count() as u64;
        let within = count(chunk, self.needle);
        self.tail
            .extend_from_slice(&chunk[chunk.len().saturating_sub(keep)..]);
        let excess = self.tail.len().saturating_sub(keep);
        self.tail.drain(..excess);
        across + within
    }
}

fn count(haystack: &[u8], needle: &[u8]) -> u64 {
    positions(haystack, needle).count() as u64
}

/// Where `needle` starts in `haystack` (overlapping matches included; none for an empty one).
fn positions<'h>(haystack: &'h [u8], needle: &'h [u8]) -> impl Iterator<Item = usize> + 'h {
    let first = needle.first().copied();
    let mut from = 0;
    std::iter::from_fn(move || {
        let first = first?;
        while from < haystack.len() {
            let at = from + haystack[from..].iter().position(|&b| b == first)?;
            from = at + 1;
            if haystack[at..].starts_with(needle) {
                return Some(at);
            }
        }
        None
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matches_are_counted_within_and_across_reads() {
        let mut s = Scanner::new(b"secret");
        assert_eq!(s.scan(b"a secret and a sec"), 1);
        assert_eq!(s.scan(b"ret"), 1, "split over two reads");
        assert_eq!(s.scan(b"s"), 0);
        assert_eq!(s.scan(b"e"), 0);
        assert_eq!(s.scan(b"cr"), 0);
        assert_eq!(s.scan(b"et secret"), 2, "split over four reads, then whole");
        assert_eq!(s.scan(b""), 0);
        assert_eq!(s.scan(b"secre"), 0);
        assert_eq!(
            s.scan(b"xsecret"),
            1,
            "a near miss across reads is no match"
        );
    }

    #[test]
    fn overlapping_and_single_byte_needles() {
        assert_eq!(count(b"aaaa", b"aa"), 3);
        assert_eq!(Scanner::new(b"x").scan(b"xyx"), 2);
        assert_eq!(Scanner::new(b"").scan(b"anything"), 0);
    }

    #[tokio::test]
    async fn a_tap_carries_both_ways_and_counts_what_it_saw() {
        let server = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let upstream = server.local_addr().unwrap();
        tokio::spawn(async move {
            let (mut s, _) = server.accept().await.unwrap();
            s.write_all(b"hello, the pass").await.unwrap();
            s.write_all(b"word is swordfish").await.unwrap();
            let mut got = [0u8; 4];
            s.read_exact(&mut got).await.unwrap();
            assert_eq!(&got, b"ping");
        });
        let tap = Tap::start(upstream, b"password").await.unwrap();
        let mut c = TcpStream::connect(tap.addr()).await.unwrap();
        c.write_all(b"ping").await.unwrap();
        let mut got = Vec::new();
        c.read_to_end(&mut got).await.unwrap();
        assert_eq!(got, b"hello, the password is swordfish");
        assert_eq!(
            tap.from_donor(),
            Flow {
                bytes: 32,
                matches: 1
            }
        );
        assert_eq!(
            tap.to_donor(),
            Flow {
                bytes: 4,
                matches: 0
            }
        );
        assert_eq!(tap.connections(), 1);
    }
}
