//! A recording TCP proxy for tests: it sits between the relay and a donor, carries every byte
//! both ways, and counts, for each direction, the bytes and the places where a chosen byte
//! string appeared. A match split across two reads is found too (each direction keeps the
//! tail of what it read). It shows what an eavesdropper on the relay's donor leg would see: a
//! known value of the data in plaintext, or nothing of it under TLS.
//!
//! With [`TapOptions`] it also plays the attacker on that leg, during each connection's
//! handshake only: it can clear the TLS offer (CLIENT_SSL) in the donor's greeting, and replace
//! the RSA public key the donor sends for caching_sha2_password's full authentication. It can
//! keep every byte of both directions in memory, to be searched afterwards. These options read
//! the donor's packets whole (MySQL framing) from its greeting until the first OK or ERR after
//! it, or until the client asks for TLS; after that bytes pass as they come.

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use anyhow::{Context, Result};
use clone_relay::protocol::handshake::CLIENT_SSL;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::{JoinHandle, JoinSet};

const READ_BUFFER: usize = 64 * 1024;
/// A classic packet's header: 3-byte little-endian payload length, 1-byte sequence id.
const HEADER: usize = 4;
/// The payload of an SSLRequest: capabilities, max packet, charset, 23 zero bytes.
const SSL_REQUEST_LEN: usize = 32;
/// The first payload byte of AuthMoreData, and what follows it when it carries a public key.
const AUTH_MORE_DATA: u8 = 0x01;
const PEM_START: &[u8] = b"-----BEGIN PUBLIC KEY-----";

/// What one direction of the tap has carried so far, over all its connections.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Flow {
    pub bytes: u64,
    /// Occurrences of the watched byte string.
    pub matches: u64,
}

/// What a tap does besides carrying bytes: the byte string it watches for, the tampering on
/// the donor's handshake packets, and whether it records.
#[derive(Debug, Clone, Default)]
pub struct TapOptions {
    needle: Vec<u8>,
    strip_tls_offer: bool,
    rsa_key: Option<Vec<u8>>,
    record: bool,
}

impl TapOptions {
    /// Carry and count only.
    pub fn new() -> Self {
        Self::default()
    }

    /// Count the occurrences of `needle` in each direction ([`Flow::matches`]).
    pub fn watch(mut self, needle: &[u8]) -> Self {
        self.needle = needle.to_vec();
        self
    }

    /// Clear CLIENT_SSL in the donor's greeting (the first packet from the donor on each
    /// connection): a donor that seems to offer no TLS.
    pub fn strip_tls_offer(mut self) -> Self {
        self.strip_tls_offer = true;
        self
    }

    /// Replace the key of each AuthMoreData packet from the donor that carries an RSA public
    /// key (`0x01` then `-----BEGIN PUBLIC KEY-----`) with `pem`.
    pub fn replace_rsa_key(mut self, pem: &str) -> Self {
        self.rsa_key = Some(pem.as_bytes().to_vec());
        self
    }

    /// Keep every byte sent to and from the donor, per connection, for
    /// [`Tap::to_donor_contains`], [`Tap::from_donor_contains`] and
    /// [`Tap::handshake_packets_to_donor`].
    pub fn record(mut self) -> Self {
        self.record = true;
        self
    }

    /// Whether the donor's handshake packets must be read whole.
    fn frames(&self) -> bool {
        self.strip_tls_offer || self.rsa_key.is_some() || self.record
    }
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
    options: TapOptions,
    from_donor: Counters,
    to_donor: Counters,
    connections: AtomicU64,
    greetings_stripped: AtomicU64,
    keys_seen: AtomicU64,
    keys_replaced: AtomicU64,
    /// One per connection, in the order accepted, when recording.
    records: Mutex<Vec<Arc<Mutex<Record>>>>,
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

/// Everything one connection carried, as sent (the donor's bytes before any tampering).
#[derive(Debug, Default)]
struct Record {
    to_donor: Vec<u8>,
    from_donor: Vec<u8>,
    /// `to_donor.len()` when the donor's OK or ERR ended the handshake.
    handshake_end: Option<usize>,
}

/// What both directions of one connection share.
#[derive(Debug, Default)]
struct Connection {
    /// The client's first packet was an SSLRequest: after the greeting the donor speaks TLS.
    tls: AtomicBool,
    record: Option<Arc<Mutex<Record>>>,
}

impl Connection {
    fn record(&self, with: impl FnOnce(&mut Record)) {
        if let Some(record) = &self.record {
            with(&mut record.lock().expect("tap record"));
        }
    }
}

impl Tap {
    /// A tap on a free loopback port that forwards each connection to `upstream` and watches
    /// both directions for `needle`.
    pub async fn start(upstream: SocketAddr, needle: &[u8]) -> Result<Self> {
        Self::start_with(upstream, TapOptions::new().watch(needle)).await
    }

    /// A tap on a free loopback port that forwards each connection to `upstream` as `options`
    /// say.
    pub async fn start_with(upstream: SocketAddr, options: TapOptions) -> Result<Self> {
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
            .await
            .context("binding the tap")?;
        let addr = listener.local_addr()?;
        let shared = Arc::new(Shared {
            upstream,
            options,
            from_donor: Counters::default(),
            to_donor: Counters::default(),
            connections: AtomicU64::new(0),
            greetings_stripped: AtomicU64::new(0),
            keys_seen: AtomicU64::new(0),
            keys_replaced: AtomicU64::new(0),
            records: Mutex::new(Vec::new()),
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

    /// Greetings whose TLS offer the tap cleared ([`TapOptions::strip_tls_offer`]; a greeting
    /// that offered no TLS is not counted).
    pub fn greetings_stripped(&self) -> u64 {
        self.shared.greetings_stripped.load(Ordering::Relaxed)
    }

    /// AuthMoreData packets from the donor that carried its RSA public key (seen when the
    /// donor's packets are read whole: with any option but [`TapOptions::watch`]).
    pub fn keys_seen(&self) -> u64 {
        self.shared.keys_seen.load(Ordering::Relaxed)
    }

    /// Donor keys the tap replaced ([`TapOptions::replace_rsa_key`]).
    pub fn keys_replaced(&self) -> u64 {
        self.shared.keys_replaced.load(Ordering::Relaxed)
    }

    /// Whether `needle` was sent to the donor on any connection (needs [`TapOptions::record`]).
    pub fn to_donor_contains(&self, needle: &[u8]) -> bool {
        self.recorded(|r| contains(&r.to_donor, needle))
            .into_iter()
            .any(|found| found)
    }

    /// Whether the donor sent `needle` on any connection (needs [`TapOptions::record`]).
    pub fn from_donor_contains(&self, needle: &[u8]) -> bool {
        self.recorded(|r| contains(&r.from_donor, needle))
            .into_iter()
            .any(|found| found)
    }

    /// For each connection in the order accepted, every byte the donor sent on it (needs
    /// [`TapOptions::record`]).
    pub fn from_donor_bytes(&self) -> Vec<Vec<u8>> {
        self.recorded(|r| r.from_donor.clone())
    }

    /// For each connection in the order accepted, the payload lengths of the packets sent to
    /// the donor during its handshake: up to the donor's OK or ERR, or up to and including an
    /// SSLRequest (TLS follows). Needs [`TapOptions::record`].
    pub fn handshake_packets_to_donor(&self) -> Vec<Vec<usize>> {
        self.recorded(|r| {
            let end = r.handshake_end.unwrap_or(r.to_donor.len());
            handshake_packets(&r.to_donor[..end])
        })
    }

    /// `with` applied to each connection's record.
    fn recorded<T>(&self, with: impl Fn(&Record) -> T) -> Vec<T> {
        assert!(
            self.shared.options.record,
            "the tap keeps no bytes: start it with TapOptions::record"
        );
        let records = self.shared.records.lock().expect("tap records").clone();
        records
            .iter()
            .map(|r| with(&r.lock().expect("tap record")))
            .collect()
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
                let record = shared.options.record.then(|| {
                    let record = Arc::new(Mutex::new(Record::default()));
                    shared.records.lock().expect("tap records").push(record.clone());
                    record
                });
                let connection = Arc::new(Connection {
                    tls: AtomicBool::new(false),
                    record,
                });
                connections.spawn(carry(client, shared.clone(), connection));
            }
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
        }
    }
}

/// Carries one connection both ways: an end of stream is passed on as a half-close, and an error
/// on either side closes both. A donor that cannot be reached closes the client's connection at
/// once.
async fn carry(client: TcpStream, shared: Arc<Shared>, connection: Arc<Connection>) {
    let Ok(donor) = TcpStream::connect(shared.upstream).await else {
        return;
    };
    let _ = client.set_nodelay(true);
    let _ = donor.set_nodelay(true);
    let (client_read, client_write) = client.into_split();
    let (donor_read, donor_write) = donor.into_split();
    let _ = tokio::try_join!(
        copy_from_donor(donor_read, client_write, &shared, &connection),
        copy_to_donor(client_read, donor_write, &shared, &connection),
    );
}

/// Copies the donor's bytes to the client, counting and recording them as the donor sent them;
/// during the handshake they go out packet by packet, tampered with as the options say.
async fn copy_from_donor(
    mut from: OwnedReadHalf,
    mut to: OwnedWriteHalf,
    shared: &Shared,
    connection: &Connection,
) -> std::io::Result<()> {
    let mut buf = vec![0u8; READ_BUFFER];
    let mut scanner = Scanner::new(&shared.options.needle);
    let mut handshake = shared.options.frames().then(Handshake::default);
    loop {
        let n = from.read(&mut buf).await?;
        if n == 0 {
            // A donor that left mid-packet: what it sent still goes on.
            if let Some(h) = handshake.take() {
                to.write_all(&h.pending).await?;
            }
            return to.shutdown().await;
        }
        let chunk = &buf[..n];
        let found = scanner.scan(chunk);
        shared
            .from_donor
            .bytes
            .fetch_add(n as u64, Ordering::Relaxed);
        shared
            .from_donor
            .matches
            .fetch_add(found, Ordering::Relaxed);
        connection.record(|r| r.from_donor.extend_from_slice(chunk));
        match &mut handshake {
            None => to.write_all(chunk).await?,
            Some(h) => {
                let out = h.feed(chunk, shared, connection);
                if h.done {
                    handshake = None;
                }
                to.write_all(&out).await?;
            }
        }
    }
}

/// Copies the client's bytes to the donor, counting and recording them; notes whether the
/// client's first packet asks for TLS before that packet reaches the donor.
async fn copy_to_donor(
    mut from: OwnedReadHalf,
    mut to: OwnedWriteHalf,
    shared: &Shared,
    connection: &Connection,
) -> std::io::Result<()> {
    let mut buf = vec![0u8; READ_BUFFER];
    let mut scanner = Scanner::new(&shared.options.needle);
    // The client's first packet, until it is whole.
    let mut first = shared.options.frames().then(Vec::new);
    loop {
        let n = from.read(&mut buf).await?;
        if n == 0 {
            return to.shutdown().await;
        }
        let chunk = &buf[..n];
        let found = scanner.scan(chunk);
        shared.to_donor.bytes.fetch_add(n as u64, Ordering::Relaxed);
        shared.to_donor.matches.fetch_add(found, Ordering::Relaxed);
        connection.record(|r| r.to_donor.extend_from_slice(chunk));
        if let Some(bytes) = &mut first {
            bytes.extend_from_slice(chunk);
            if let Some((_, payload)) = whole_packet(bytes) {
                connection
                    .tls
                    .store(is_ssl_request(payload), Ordering::SeqCst);
                first = None;
            }
        }
        to.write_all(chunk).await?;
    }
}

/// The donor's side of one connection's handshake, read packet by packet.
#[derive(Debug, Default)]
struct Handshake {
    /// Bytes read but not yet a whole packet.
    pending: Vec<u8>,
    greeted: bool,
    /// The handshake is over: bytes pass as they come.
    done: bool,
}

impl Handshake {
    /// Takes the donor's next bytes; returns what goes to the client now: whole packets,
    /// tampered with as the options say, and everything once the handshake is over.
    fn feed(&mut self, chunk: &[u8], shared: &Shared, connection: &Connection) -> Vec<u8> {
        self.pending.extend_from_slice(chunk);
        let mut out = Vec::with_capacity(self.pending.len());
        while !self.done {
            if self.greeted && connection.tls.load(Ordering::SeqCst) {
                // TLS records from here on.
                self.done = true;
                break;
            }
            let Some((len, _)) = whole_packet(&self.pending) else {
                break;
            };
            let mut packet: Vec<u8> = self.pending.drain(..HEADER + len).collect();
            let first = packet.get(HEADER).copied();
            if !self.greeted {
                self.greeted = true;
                if first == Some(0xff) {
                    // Refused instead of greeted.
                    self.done = true;
                } else if shared.options.strip_tls_offer && strip_tls_offer(&mut packet[HEADER..]) {
                    shared.greetings_stripped.fetch_add(1, Ordering::Relaxed);
                }
            } else if matches!(first, Some(0x00 | 0xff)) {
                connection.record(|r| r.handshake_end = Some(r.to_donor.len()));
                self.done = true;
            } else if first == Some(AUTH_MORE_DATA) && packet[HEADER + 1..].starts_with(PEM_START) {
                shared.keys_seen.fetch_add(1, Ordering::Relaxed);
                if let Some(pem) = &shared.options.rsa_key {
                    let mut payload = vec![AUTH_MORE_DATA];
                    payload.extend_from_slice(pem);
                    packet = frame(packet[3], &payload);
                    shared.keys_replaced.fetch_add(1, Ordering::Relaxed);
                }
            }
            out.extend_from_slice(&packet);
        }
        if self.done {
            out.append(&mut self.pending);
        }
        out
    }
}

/// The payload length and payload of the packet at the start of `bytes`, once it is whole.
fn whole_packet(bytes: &[u8]) -> Option<(usize, &[u8])> {
    let header = bytes.get(..HEADER)?;
    let len = usize::from(header[0]) | usize::from(header[1]) << 8 | usize::from(header[2]) << 16;
    bytes
        .get(HEADER..HEADER + len)
        .map(|payload| (len, payload))
}

/// A packet with sequence id `seq` around `payload`.
fn frame(seq: u8, payload: &[u8]) -> Vec<u8> {
    let len = u32::try_from(payload.len()).expect("a handshake packet under 16 MiB");
    let mut packet = len.to_le_bytes()[..3].to_vec();
    packet.push(seq);
    packet.extend_from_slice(payload);
    packet
}

/// Whether a client's first packet is an SSLRequest.
fn is_ssl_request(payload: &[u8]) -> bool {
    payload.len() == SSL_REQUEST_LEN
        && u32::from_le_bytes([payload[0], payload[1], payload[2], payload[3]]) & CLIENT_SSL != 0
}

/// Clears CLIENT_SSL in a greeting's low capability bytes; whether it was set. The low bytes
/// follow the protocol version, the NUL-terminated server version, the connection id (4), the
/// first 8 bytes of the nonce and a filler byte.
fn strip_tls_offer(greeting: &mut [u8]) -> bool {
    let Some(nul) = greeting.iter().skip(1).position(|&b| b == 0) else {
        return false;
    };
    let at = 1 + nul + 1 + 4 + 8 + 1;
    let Some(low) = greeting.get_mut(at..at + 2) else {
        return false;
    };
    let caps = u16::from_le_bytes([low[0], low[1]]);
    // CLIENT_SSL is 0x0800: within the low 16 bits.
    let ssl = CLIENT_SSL as u16;
    if caps & ssl == 0 {
        return false;
    }
    low.copy_from_slice(&(caps & !ssl).to_le_bytes());
    true
}

/// Payload lengths of the whole packets at the start of `bytes`, ending after an SSLRequest
/// (sent first; what follows it is TLS).
fn handshake_packets(mut bytes: &[u8]) -> Vec<usize> {
    let mut lengths = Vec::new();
    while let Some((len, payload)) = whole_packet(bytes) {
        lengths.push(len);
        if lengths.len() == 1 && is_ssl_request(payload) {
            break;
        }
        bytes = &bytes[HEADER + len..];
    }
    lengths
}

/// Whether `needle` occurs in `haystack` (never for an empty needle).
fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    positions(haystack, needle).next().is_some()
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

    /// A greeting as MySQL 9.7 sends it, offering TLS or not.
    fn greeting(tls: bool) -> Vec<u8> {
        let caps: u32 = 0x000f_f7ff & !CLIENT_SSL | if tls { CLIENT_SSL } else { 0 };
        let mut p = vec![10];
        p.extend_from_slice(b"9.7.4\0");
        p.extend_from_slice(&7u32.to_le_bytes());
        p.extend_from_slice(b"abcdefgh\0");
        p.extend_from_slice(&(caps as u16).to_le_bytes());
        p.push(255);
        p.extend_from_slice(&2u16.to_le_bytes());
        p.extend_from_slice(&((caps >> 16) as u16).to_le_bytes());
        p.push(21);
        p.extend_from_slice(&[0; 10]);
        p.extend_from_slice(b"ijklmnopqrst\0caching_sha2_password\0");
        frame(0, &p)
    }

    fn capabilities(greeting: &[u8]) -> u32 {
        use clone_relay::protocol::handshake::{ServerHello, parse_server_hello};
        match parse_server_hello(&greeting[HEADER..]) {
            Ok(ServerHello::Greeting(g)) => g.capabilities,
            other => panic!("not a greeting: {other:?}"),
        }
    }

    /// Reads one whole packet (header included).
    async fn read_packet(s: &mut TcpStream) -> Vec<u8> {
        let mut header = [0u8; HEADER];
        s.read_exact(&mut header).await.unwrap();
        let len = u32::from_le_bytes([header[0], header[1], header[2], 0]) as usize;
        let mut packet = header.to_vec();
        packet.resize(HEADER + len, 0);
        s.read_exact(&mut packet[HEADER..]).await.unwrap();
        packet
    }

    /// A fake donor that plays `script` on its first connection: `Ok(bytes)` is sent, `Err(n)`
    /// waits for `n` bytes from the client. Returns what it received.
    fn fake_donor(script: Vec<Result<Vec<u8>, usize>>) -> (SocketAddr, JoinHandle<Vec<u8>>) {
        let server = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = server.local_addr().unwrap();
        server.set_nonblocking(true).unwrap();
        let server = TcpListener::from_std(server).unwrap();
        let task = tokio::spawn(async move {
            let (mut s, _) = server.accept().await.unwrap();
            let mut got = Vec::new();
            for step in script {
                match step {
                    Ok(bytes) => s.write_all(&bytes).await.unwrap(),
                    Err(n) => {
                        let mut buf = vec![0u8; n];
                        s.read_exact(&mut buf).await.unwrap();
                        got.extend_from_slice(&buf);
                    }
                }
            }
            got
        });
        (addr, task)
    }

    /// Bytes that would read as a packet of about 200 KiB: only raw carrying passes them on.
    const NOT_A_PACKET: &[u8] = b"\x16\x03\x03\x00\x2a tls-looking bytes";

    #[tokio::test]
    async fn a_stripping_tap_clears_the_tls_offer_of_the_greeting_only() {
        let ok = frame(2, &[0, 0, 0, 2, 0, 0, 0]);
        let login = frame(1, &[0x55; 40]);
        let (upstream, donor) = fake_donor(vec![
            Ok(greeting(true)),
            Err(login.len()),
            Ok(ok.clone()),
            Ok(NOT_A_PACKET.to_vec()),
        ]);
        let tap = Tap::start_with(upstream, TapOptions::new().strip_tls_offer().record())
            .await
            .unwrap();
        let mut c = TcpStream::connect(tap.addr()).await.unwrap();
        let got = read_packet(&mut c).await;
        let sent = greeting(true);
        assert_eq!(capabilities(&sent) & CLIENT_SSL, CLIENT_SSL);
        assert_eq!(capabilities(&got), capabilities(&sent) & !CLIENT_SSL);
        let differing: Vec<usize> = (0..sent.len()).filter(|&i| sent[i] != got[i]).collect();
        assert_eq!(differing.len(), 1, "only the one capability byte changes");
        c.write_all(&login).await.unwrap();
        assert_eq!(read_packet(&mut c).await, ok);
        let mut rest = vec![0u8; NOT_A_PACKET.len()];
        tokio::time::timeout(std::time::Duration::from_secs(5), c.read_exact(&mut rest))
            .await
            .expect("raw bytes after the OK pass at once")
            .unwrap();
        assert_eq!(rest, NOT_A_PACKET);
        assert_eq!(donor.await.unwrap(), login);
        assert_eq!(tap.greetings_stripped(), 1);
        // The record holds what the donor sent, before the tap changed it.
        assert!(tap.from_donor_contains(&sent));
        assert!(tap.to_donor_contains(&[0x55; 40]));
        assert_eq!(tap.handshake_packets_to_donor(), vec![vec![40]]);

        // A greeting without TLS is left alone and not counted.
        let (upstream, _donor) = fake_donor(vec![Ok(greeting(false))]);
        let tap = Tap::start_with(upstream, TapOptions::new().strip_tls_offer())
            .await
            .unwrap();
        let mut c = TcpStream::connect(tap.addr()).await.unwrap();
        assert_eq!(read_packet(&mut c).await, greeting(false));
        assert_eq!(tap.greetings_stripped(), 0);
    }

    #[tokio::test]
    async fn a_tap_replaces_the_donors_rsa_key_and_fixes_the_packet_length() {
        let donor_key = b"-----BEGIN PUBLIC KEY-----\nMIIBIjAN donor\n-----END PUBLIC KEY-----\n";
        let other_key = "-----BEGIN PUBLIC KEY-----\nMIIBIjANBgkqhkiG9w0B a longer key of the tap's own\n-----END PUBLIC KEY-----\n";
        let key_packet = |seq: u8, pem: &[u8]| {
            let mut payload = vec![AUTH_MORE_DATA];
            payload.extend_from_slice(pem);
            frame(seq, &payload)
        };
        let login = frame(1, &[0x11; 60]);
        let full_auth = frame(2, &[AUTH_MORE_DATA, 0x04]);
        let request_key = frame(3, &[0x02]);
        let encrypted = frame(5, &[0xee; 256]);
        let denied = frame(6, b"\xff\x15\x04#28000Access denied");
        let (upstream, donor) = fake_donor(vec![
            Ok(greeting(true)),
            Err(login.len()),
            Ok(full_auth.clone()),
            Err(request_key.len()),
            Ok(key_packet(4, donor_key)),
            Err(encrypted.len()),
            Ok(denied.clone()),
            Ok(NOT_A_PACKET.to_vec()),
        ]);
        let tap = Tap::start_with(
            upstream,
            TapOptions::new().replace_rsa_key(other_key).record(),
        )
        .await
        .unwrap();
        let mut c = TcpStream::connect(tap.addr()).await.unwrap();
        assert_eq!(
            read_packet(&mut c).await,
            greeting(true),
            "no stripping asked"
        );
        c.write_all(&login).await.unwrap();
        assert_eq!(read_packet(&mut c).await, full_auth);
        c.write_all(&request_key).await.unwrap();
        let got = read_packet(&mut c).await;
        assert_eq!(got, key_packet(4, other_key.as_bytes()));
        assert_eq!(
            u32::from_le_bytes([got[0], got[1], got[2], 0]) as usize,
            1 + other_key.len()
        );
        c.write_all(&encrypted).await.unwrap();
        assert_eq!(read_packet(&mut c).await, denied);
        let mut rest = vec![0u8; NOT_A_PACKET.len()];
        c.read_exact(&mut rest).await.unwrap();
        assert_eq!(rest, NOT_A_PACKET);
        donor.await.unwrap();
        assert_eq!((tap.keys_seen(), tap.keys_replaced()), (1, 1));
        assert!(tap.from_donor_contains(donor_key));
        assert_eq!(tap.handshake_packets_to_donor(), vec![vec![60, 1, 256]]);
        assert!(tap.to_donor_contains(&[0xee; 256]));
        assert!(!tap.to_donor_contains(b"swordfish"));
    }

    #[tokio::test]
    async fn after_an_ssl_request_the_donors_bytes_pass_as_they_come() {
        let mut request = vec![0u8; SSL_REQUEST_LEN];
        request[..4].copy_from_slice(&(0x0000_0200 | CLIENT_SSL).to_le_bytes());
        let request = frame(1, &request);
        let (upstream, donor) = fake_donor(vec![
            Ok(greeting(true)),
            Err(request.len()),
            Ok(NOT_A_PACKET.to_vec()),
            Err(NOT_A_PACKET.len()),
        ]);
        let tap = Tap::start_with(
            upstream,
            TapOptions::new()
                .strip_tls_offer()
                .replace_rsa_key("x")
                .record(),
        )
        .await
        .unwrap();
        let mut c = TcpStream::connect(tap.addr()).await.unwrap();
        read_packet(&mut c).await;
        c.write_all(&request).await.unwrap();
        let mut got = vec![0u8; NOT_A_PACKET.len()];
        tokio::time::timeout(std::time::Duration::from_secs(5), c.read_exact(&mut got))
            .await
            .expect("TLS bytes pass at once")
            .unwrap();
        assert_eq!(got, NOT_A_PACKET);
        c.write_all(NOT_A_PACKET).await.unwrap();
        let mut expected = request.clone();
        expected.extend_from_slice(NOT_A_PACKET);
        assert_eq!(donor.await.unwrap(), expected);
        assert_eq!(
            tap.handshake_packets_to_donor(),
            vec![vec![SSL_REQUEST_LEN]]
        );
        assert_eq!(tap.keys_replaced(), 0);
    }
}
