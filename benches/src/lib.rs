//! Shared pieces of the benchmarks: stream generators and loopback endpoints.
//!
//! # Layout
//! - [`clone_stream`]: a byte stream shaped like CLONE data (1 MiB DATA packets behind their
//!   descriptors), and [`clone_preamble`], the exchange that precedes it.
//! - [`fake_donor`] and [`clone_client`]: both ends of a clone on loopback, for throughput.

use std::net::SocketAddr;
use std::sync::Arc;

use clone_relay::protocol::decoder::Direction;
use clone_relay::protocol::frame;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
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

/// The greeting, login, auth and `COM_CLONE` exchange that puts a connection in the clone
/// sub-protocol, as (direction, bytes).
pub fn clone_preamble() -> Vec<(Direction, Vec<u8>)> {
    let mut greeting = vec![10u8];
    greeting.extend_from_slice(b"9.7.4\0");
    greeting.extend_from_slice(&[1, 0, 0, 0, 1, 2, 3, 4, 5, 6, 7, 8, 0, 0xff, 0xff, 8, 2, 0]);
    greeting.extend_from_slice(&[0xff, 0xdf, 21, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]);
    let mut login = vec![0u8; 32];
    login[..4].copy_from_slice(&0x0008_0200u32.to_le_bytes());
    login.extend_from_slice(b"donor_clone\0");
    let mut parts = Vec::new();
    for (dir, seq, payload) in [
        (Direction::Downstream, 0, greeting),
        (Direction::Upstream, 1, login),
        (Direction::Downstream, 2, vec![0, 0, 0, 2, 0, 0, 0]),
        (Direction::Upstream, 0, vec![0x20]),
        (Direction::Downstream, 1, vec![0, 0, 0, 2, 0, 0, 0]),
    ] {
        parts.push((dir, frame(seq, &payload)));
    }
    parts
}

/// A loopback fake donor: for each connection it plays the server's side of
/// [`clone_preamble`], then sends `stream` and closes.
pub async fn fake_donor(stream: Arc<Vec<u8>>) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind donor");
    let addr = listener.local_addr().expect("donor address");
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            let stream = stream.clone();
            tokio::spawn(async move {
                s.set_nodelay(true).expect("nodelay");
                for (dir, bytes) in clone_preamble() {
                    match dir {
                        Direction::Downstream => s.write_all(&bytes).await.expect("write"),
                        Direction::Upstream => {
                            let mut got = vec![0u8; bytes.len()];
                            s.read_exact(&mut got).await.expect("read");
                        }
                    }
                }
                let _ = s.write_all(&stream).await;
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
    for (dir, bytes) in clone_preamble() {
        match dir {
            Direction::Upstream => s.write_all(&bytes).await.expect("write"),
            Direction::Downstream => {
                let mut got = vec![0u8; bytes.len()];
                s.read_exact(&mut got).await.expect("read");
            }
        }
    }
    let mut buf = vec![0u8; 256 * 1024];
    let mut total = 0u64;
    loop {
        match s.read(&mut buf).await.expect("read") {
            0 => return total,
            n => total += n as u64,
        }
    }
}
