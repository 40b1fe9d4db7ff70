//! The packet scanner and the whole decoder over a clone-shaped stream, against a plain memcpy
//! of the same bytes.

use std::hint::black_box;

use clone_relay::protocol::PacketScanner;
use clone_relay::protocol::decoder::{Decoder, Direction, Limits};
use clone_relay_benches::{clone_preamble, clone_stream};
use criterion::{Criterion, Throughput, criterion_group, criterion_main};

fn framing(c: &mut Criterion) {
    let stream = clone_stream(16, 1 << 20);
    let mut group = c.benchmark_group("framing");
    group.throughput(Throughput::Bytes(stream.len() as u64));

    // As the relay sees it: 256 KiB reads, headers straddling read boundaries.
    group.bench_function("scan_256k_reads", |b| {
        b.iter(|| {
            let mut scanner = PacketScanner::new(0);
            let mut packets = 0usize;
            for chunk in stream.chunks(256 * 1024) {
                scanner
                    .scan(black_box(chunk), |_, _| {
                        packets += 1;
                        Ok::<_, ()>(())
                    })
                    .unwrap();
            }
            packets
        })
    });

    // The decoder as the relay runs it on a donor's clone stream, 256 KiB reads.
    let preamble = clone_preamble();
    group.bench_function("decode_256k_reads", |b| {
        b.iter(|| {
            let mut decoder = Decoder::new(Limits::default());
            for (dir, bytes) in &preamble {
                decoder.feed(*dir, bytes, &mut |_| {}).expect("preamble");
            }
            let mut events = 0usize;
            for chunk in stream.chunks(256 * 1024) {
                decoder
                    .feed(Direction::Downstream, black_box(chunk), &mut |_| {
                        events += 1
                    })
                    .expect("clone stream");
            }
            events
        })
    });

    let mut copy = vec![0u8; stream.len()];
    group.bench_function("memcpy", |b| {
        b.iter(|| {
            copy.copy_from_slice(black_box(&stream));
            black_box(copy[copy.len() - 1])
        })
    });
    group.finish();
}

criterion_group!(benches, framing);
criterion_main!(benches);
