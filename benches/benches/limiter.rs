//! The bandwidth limiter's cost per charge: a 16 KiB read paid from a bucket without a cap, from
//! one capped far above the rate (the governor check and the turn queue, never a wait), and from
//! a session and a relay bucket nested.

use std::sync::Arc;
use std::time::{Duration, Instant};

use clone_relay::limit::{Bucket, pay};
use criterion::{Criterion, Throughput, criterion_group, criterion_main};

const READ: u64 = 16 << 10;
/// Far above what the bench moves: the limiter checks, never waits.
const HIGH_CAP: u64 = 1 << 40;

fn charges(c: &mut Criterion) {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .expect("runtime");
    let mut group = c.benchmark_group("limiter");
    group.throughput(Throughput::Bytes(READ));
    let cases: [(&str, Vec<Option<u64>>); 3] = [
        ("uncapped", vec![None]),
        ("capped_far_above", vec![Some(HIGH_CAP)]),
        ("session_and_relay", vec![Some(HIGH_CAP), Some(HIGH_CAP)]),
    ];
    for (name, caps) in cases {
        group.bench_function(name, |b| {
            b.iter_custom(|iters| {
                // Fresh buckets per sample, so no sample runs into the cap.
                let buckets: Vec<Arc<Bucket>> =
                    caps.iter().map(|&cap| Arc::new(Bucket::new(cap))).collect();
                let mut owed = vec![0; buckets.len()];
                runtime.block_on(async {
                    let start = Instant::now();
                    for _ in 0..iters {
                        pay(&buckets, &mut owed, READ).await;
                    }
                    start.elapsed()
                })
            })
        });
    }
    group.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default().measurement_time(Duration::from_secs(3));
    targets = charges
}
criterion_main!(benches);
