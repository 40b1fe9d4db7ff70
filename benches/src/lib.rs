//! Shared pieces of the benchmarks: stream generators and loopback endpoints.
//!
//! # Layout
//! - [`clone_stream`]: a byte stream shaped like CLONE data (1 MiB DATA packets behind small
//!   descriptors).
//! - [`sink`]: a loopback server that reads and discards, acknowledging totals.

use std::net::SocketAddr;

use clone_relay::protocol::PacketHeader;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

/// `blocks` clone DATA blocks of `block_bytes`, each behind a 40-byte descriptor packet.
pub fn clone_stream(blocks: usize, block_bytes: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(blocks * (block_bytes + 52));
    for i in 0..blocks {
        out.extend_from_slice(
            &PacketHeader {
                payload_len: 40,
                seq: 0,
            }
            .encode(),
        );
        out.extend(std::iter::repeat_n(2u8, 40));
        out.extend_from_slice(
            &PacketHeader {
                payload_len: block_bytes,
                seq: 1,
            }
            .encode(),
        );
        out.extend((0..block_bytes).map(|j| (i + j) as u8));
    }
    out
}

/// A loopback server that reads each connection to its end, then writes back the byte count as
/// 8 little-endian bytes.
pub async fn sink() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind sink");
    let addr = listener.local_addr().expect("sink address");
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut buf = vec![0u8; 256 * 1024];
                let mut total = 0u64;
                while let Ok(n) = s.read(&mut buf).await {
                    if n == 0 {
                        break;
                    }
                    total += n as u64;
                }
                let _ = s.write_all(&total.to_le_bytes()).await;
            });
        }
    });
    addr
}
