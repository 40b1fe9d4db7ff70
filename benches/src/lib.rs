//! Shared pieces of the benchmarks: stream generators and loopback endpoints.
//!
//! # Layout
//! - [`clone_stream`]: a byte stream shaped like CLONE data (1 MiB DATA packets behind their
//!   descriptors), and [`clone_preamble`], the exchange that precedes it.
//! - [`fake_donor`] and [`clone_client`]: both ends of a clone on loopback, for throughput;
//!   [`start_relay`] puts clone-relay between them.
//! - [`tls_clone_preamble`] and the [`tls`] module: the same with MySQL's in-protocol TLS
//!   upgrade, and a rustls connection pair entirely in memory.

pub mod tls;

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;

use clone_relay::protocol::decoder::Direction;
use clone_relay::protocol::frame;
use clone_relay::protocol::handshake::{CLIENT_SSL, SSL_REQUEST_LEN};
use clone_relay::{Config, Relay};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// A DATA descriptor of a 9.7.4 donor (FILE COPY, 1 MiB block).
const DATA_DESC: [u8; 55] = [
    2, 12, 0, 0, 0, 0, 100, 0, 0, 0, 52, 0, 0, 0, 5, 0, 0, 0, 2, 0, 0, 0, 2, 0, 0, 0, 5, 0, 0, 0,
    1, 0, 0, 0, 3, 0, 16, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
];

/// `blocks` clone DATA responses of `block_bytes`, each behind its DATA descriptor, as the
/// donor sends them.
pub fn clone_stream(blocks: usize, block_bytes: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(blocks * (block_bytes + 64));
    let mut data = vec![3u8];
    data.extend((0..block_bytes).map(|j| j as u8));
    for _ in 0..blocks {
        out.extend(frame(0, &DATA_DESC));
        out.extend(frame(0, &data));
    }
    out
}

/// A donor's greeting (9.7.4); CLIENT_SSL is among the capabilities it offers.
fn greeting() -> Vec<u8> {
    let mut greeting = vec![10u8];
    greeting.extend_from_slice(b"9.7.4\0");
    greeting.extend_from_slice(&[1, 0, 0, 0, 1, 2, 3, 4, 5, 6, 7, 8, 0, 0xff, 0xff, 8, 2, 0]);
    greeting.extend_from_slice(&[0xff, 0xdf, 21, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]);
    greeting
}

/// A login request of `donor_clone` with CLIENT_PROTOCOL_41, CLIENT_PLUGIN_AUTH and `extra`
/// capabilities; its first [`SSL_REQUEST_LEN`] bytes alone are the matching SSLRequest.
fn login(extra: u32) -> Vec<u8> {
    let mut login = vec![0u8; SSL_REQUEST_LEN];
    login[..4].copy_from_slice(&(0x0008_0200u32 | extra).to_le_bytes());
    login.extend_from_slice(b"donor_clone\0");
    login
}

/// Auth OK, then `COM_CLONE` and its OK, with the login request answered at `ok_seq`.
fn after_login(ok_seq: u8) -> [(Direction, u8, Vec<u8>); 3] {
    [
        (Direction::Downstream, ok_seq, vec![0, 0, 0, 2, 0, 0, 0]),
        (Direction::Upstream, 0, vec![0x20]),
        (Direction::Downstream, 1, vec![0, 0, 0, 2, 0, 0, 0]),
    ]
}

fn framed(parts: impl IntoIterator<Item = (Direction, u8, Vec<u8>)>) -> Vec<(Direction, Vec<u8>)> {
    parts
        .into_iter()
        .map(|(dir, seq, payload)| (dir, frame(seq, &payload)))
        .collect()
}

/// The greeting, login, auth and `COM_CLONE` exchange that puts a connection in the clone
/// sub-protocol, as (direction, bytes).
pub fn clone_preamble() -> Vec<(Direction, Vec<u8>)> {
    let mut parts = vec![
        (Direction::Downstream, 0, greeting()),
        (Direction::Upstream, 1, login(0)),
    ];
    parts.extend(after_login(2));
    framed(parts)
}

/// The same exchange when the recipient asks for TLS, as MySQL does it: before TLS the
/// greeting and a 32-byte SSLRequest (sequence id 1); inside TLS the login request (sequence
/// id 2), its OK (3), `COM_CLONE` and its OK.
pub fn tls_clone_preamble() -> TlsPreamble {
    let ssl_request = login(CLIENT_SSL)[..SSL_REQUEST_LEN].to_vec();
    let mut inside = vec![(Direction::Upstream, 2, login(CLIENT_SSL))];
    inside.extend(after_login(3));
    TlsPreamble {
        before_tls: framed([
            (Direction::Downstream, 0, greeting()),
            (Direction::Upstream, 1, ssl_request),
        ]),
        inside_tls: framed(inside),
    }
}

/// [`tls_clone_preamble`]'s two parts, as (direction, bytes).
#[derive(Debug, Clone)]
pub struct TlsPreamble {
    pub before_tls: Vec<(Direction, Vec<u8>)>,
    pub inside_tls: Vec<(Direction, Vec<u8>)>,
}

/// Plays one side of `parts` on `s`: writes the packets travelling in `sends`, reads (and
/// drops) as many bytes as each of the others has.
pub async fn play(
    s: &mut (impl AsyncRead + AsyncWrite + Unpin),
    parts: &[(Direction, Vec<u8>)],
    sends: Direction,
) -> io::Result<()> {
    for (dir, bytes) in parts {
        if *dir == sends {
            s.write_all(bytes).await?;
        } else {
            let mut got = vec![0u8; bytes.len()];
            s.read_exact(&mut got).await?;
        }
    }
    Ok(())
}

/// Reads `s` to its end in 256 KiB reads; returns the bytes read.
pub async fn read_to_end_counting(s: &mut (impl AsyncRead + Unpin)) -> u64 {
    let mut buf = vec![0u8; 256 * 1024];
    let mut total = 0u64;
    loop {
        match s.read(&mut buf).await.expect("read") {
            0 => return total,
            n => total += n as u64,
        }
    }
}

/// Starts clone-relay with `config` on a loopback port, serving until the runtime ends. Call it
/// inside a Tokio runtime.
pub fn start_relay(config: Config) -> (Relay, SocketAddr) {
    let relay = Relay::new(config).expect("relay");
    let listener = clone_relay::bind("127.0.0.1:0".parse().expect("addr")).expect("bind relay");
    let addr = listener.local_addr().expect("relay address");
    tokio::spawn({
        let relay = relay.clone();
        async move { relay.serve(listener, std::future::pending()).await }
    });
    (relay, addr)
}

/// A loopback fake donor: for each connection it plays the server's side of
/// [`clone_preamble`], then sends `stream` and closes (a connection that breaks off the
/// preamble is dropped).
pub async fn fake_donor(stream: Arc<Vec<u8>>) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind donor");
    let addr = listener.local_addr().expect("donor address");
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            let stream = stream.clone();
            tokio::spawn(async move {
                s.set_nodelay(true).expect("nodelay");
                if play(&mut s, &clone_preamble(), Direction::Downstream)
                    .await
                    .is_ok()
                {
                    let _ = s.write_all(&stream).await;
                }
            });
        }
    });
    addr
}

/// The recipient's side: plays [`clone_preamble`] against `addr`, then reads to the end.
/// Returns the bytes read after the preamble.
pub async fn clone_client(addr: SocketAddr) -> u64 {
    let mut s = TcpStream::connect(addr).await.expect("connect");
    s.set_nodelay(true).expect("nodelay");
    play(&mut s, &clone_preamble(), Direction::Upstream)
        .await
        .expect("preamble");
    read_to_end_counting(&mut s).await
}
