//! Bytes through clone-relay on loopback against a direct connection, and the relay's copy
//! buffer size (8 KiB, 64 KiB, 256 KiB).

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use clone_relay::Config;
use clone_relay_benches::sink;
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::runtime::Runtime;

const TRANSFER_BYTES: usize = 64 * 1024 * 1024;

/// Sends `TRANSFER_BYTES` to `addr` and waits for the sink's count.
async fn transfer(addr: SocketAddr, block: &[u8]) -> Duration {
    let started = Instant::now();
    let mut s = TcpStream::connect(addr).await.expect("connect");
    s.set_nodelay(true).expect("nodelay");
    for _ in 0..TRANSFER_BYTES / block.len() {
        s.write_all(block).await.expect("write");
    }
    s.shutdown().await.expect("shutdown");
    let mut count = [0u8; 8];
    s.read_exact(&mut count).await.expect("count");
    assert_eq!(u64::from_le_bytes(count), TRANSFER_BYTES as u64);
    started.elapsed()
}

fn relay_to(rt: &Runtime, upstream: SocketAddr, copy_buffer_bytes: usize) -> SocketAddr {
    let mut config = Config::new(upstream.to_string());
    config.copy_buffer_bytes = copy_buffer_bytes;
    let _guard = rt.enter();
    let listener = clone_relay::bind("127.0.0.1:0".parse().expect("addr")).expect("bind relay");
    let addr = listener.local_addr().expect("relay address");
    rt.spawn(clone_relay::run(listener, config, std::future::pending()));
    addr
}

fn throughput(c: &mut Criterion) {
    let rt = Runtime::new().expect("runtime");
    let upstream = rt.block_on(sink());
    let block = vec![0xa5u8; 1 << 20];
    let mut group = c.benchmark_group("loopback_64MiB");
    group.throughput(Throughput::Bytes(TRANSFER_BYTES as u64));
    group.sample_size(10);

    group.bench_function("direct", |b| {
        b.iter_custom(|iters| {
            (0..iters)
                .map(|_| rt.block_on(transfer(upstream, &block)))
                .sum()
        })
    });
    for (name, buffer) in [
        ("relay_8k", 8 * 1024),
        ("relay_64k", 64 * 1024),
        ("relay_256k", 256 * 1024),
    ] {
        let relay = relay_to(&rt, upstream, buffer);
        group.bench_function(name, |b| {
            b.iter_custom(|iters| {
                (0..iters)
                    .map(|_| rt.block_on(transfer(relay, &block)))
                    .sum()
            })
        });
    }
    group.finish();
}

criterion_group!(benches, throughput);
criterion_main!(benches);
