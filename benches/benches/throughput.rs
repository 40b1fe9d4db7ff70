//! A donor's clone stream on loopback: direct, through clone-relay (copy buffers of 8 KiB,
//! 64 KiB, 256 KiB; decoding as in production; and with a bandwidth cap far above the rate, for
//! the limiter's cost), and through the chaos proxy with no faults.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use clone_relay::Config;
use clone_relay_benches::{clone_client, clone_stream, fake_donor};
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use tokio::runtime::Runtime;

const BLOCKS: usize = 64;

async fn transfer(addr: SocketAddr, expected: u64) -> Duration {
    let started = Instant::now();
    assert_eq!(clone_client(addr).await, expected);
    started.elapsed()
}

/// A cap no loopback stream reaches: the limiter charges every read, never waits.
const FAR_ABOVE: u64 = 1 << 40;

fn relay_to(
    rt: &Runtime,
    upstream: SocketAddr,
    copy_buffer_bytes: usize,
    cap: Option<u64>,
) -> SocketAddr {
    let mut config = Config::new(upstream.to_string());
    config.copy_buffer_bytes = copy_buffer_bytes;
    config.limits.relay = cap;
    let _guard = rt.enter();
    let listener = clone_relay::bind("127.0.0.1:0".parse().expect("addr")).expect("bind relay");
    let addr = listener.local_addr().expect("relay address");
    rt.spawn(clone_relay::run(listener, config, std::future::pending()));
    addr
}

fn throughput(c: &mut Criterion) {
    let rt = Runtime::new().expect("runtime");
    let stream = Arc::new(clone_stream(BLOCKS, 1 << 20));
    let bytes = stream.len() as u64;
    let donor = rt.block_on(fake_donor(stream));
    let mut group = c.benchmark_group("clone_stream_64MiB");
    group.throughput(Throughput::Bytes(bytes));
    group.sample_size(10);

    group.bench_function("direct", |b| {
        b.iter_custom(|iters| {
            (0..iters)
                .map(|_| rt.block_on(transfer(donor, bytes)))
                .sum()
        })
    });
    for (name, buffer, cap) in [
        ("relay_8k", 8 * 1024, None),
        ("relay_64k", 64 * 1024, None),
        ("relay_256k", 256 * 1024, None),
        ("relay_256k_capped_far_above", 256 * 1024, Some(FAR_ABOVE)),
    ] {
        let relay = relay_to(&rt, donor, buffer, cap);
        group.bench_function(name, |b| {
            b.iter_custom(|iters| {
                (0..iters)
                    .map(|_| rt.block_on(transfer(relay, bytes)))
                    .sum()
            })
        });
    }
    let chaos = rt
        .block_on(chaos::ChaosProxy::start(
            "127.0.0.1:0".parse().expect("addr"),
            donor.to_string(),
            1,
            Vec::new(),
        ))
        .expect("chaos proxy");
    let chaos_addr = chaos.addr();
    group.bench_function("chaos_no_faults", |b| {
        b.iter_custom(|iters| {
            (0..iters)
                .map(|_| rt.block_on(transfer(chaos_addr, bytes)))
                .sum()
        })
    });
    group.finish();
}

criterion_group!(benches, throughput);
criterion_main!(benches);
