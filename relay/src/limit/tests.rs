//! Paused-time tests: simulated seconds, real governor limiters.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::time::Instant;

use super::*;

const KIB: u64 = 1 << 10;
const MIB: u64 = 1 << 20;
const GIB: u64 = 1 << 30;
const WINDOW: Duration = Duration::from_secs(10);

/// Runs `streams` tasks that each pay for `chunk`-byte reads from `chain_of(i)` until `window`
/// has passed, and returns the bytes each got through within it. The buckets' own counts are
/// exact at the end of the window (the streams' stop a chunk short).
async fn run_streams(
    streams: usize,
    chunk: u64,
    window: Duration,
    chain_of: impl Fn(usize) -> Chain,
) -> Vec<u64> {
    let end = Instant::now() + window;
    let counts: Vec<Arc<AtomicU64>> = (0..streams).map(|_| Arc::default()).collect();
    let tasks: Vec<_> = (0..streams)
        .map(|i| {
            let chain = chain_of(i);
            let count = counts[i].clone();
            tokio::spawn(async move {
                let buckets = chain.buckets();
                let mut owed = vec![0; buckets.len()];
                loop {
                    pay(&buckets, &mut owed, chunk).await;
                    count.fetch_add(chunk, Ordering::Relaxed);
                }
            })
        })
        .collect();
    tokio::time::sleep_until(end).await;
    for task in &tasks {
        task.abort();
    }
    counts.iter().map(|c| c.load(Ordering::Relaxed)).collect()
}

fn assert_rate_within(bytes: u64, window: Duration, cap: u64, tolerance: f64, what: &str) {
    let rate = bytes as f64 / window.as_secs_f64();
    let error = (rate - cap as f64).abs() / cap as f64;
    println!(
        "{what}: {:+.3}% of the cap",
        (rate / cap as f64 - 1.0) * 100.0
    );
    assert!(
        error <= tolerance,
        "{what}: {rate:.0} B/s against a cap of {cap} B/s ({:.3}% off)",
        error * 100.0
    );
}

fn jain(xs: &[u64]) -> f64 {
    let sum: f64 = xs.iter().map(|&x| x as f64).sum();
    let squares: f64 = xs.iter().map(|&x| (x as f64).powi(2)).sum();
    sum * sum / (xs.len() as f64 * squares)
}

#[test]
fn cells_keep_the_interval_error_under_a_tenth_of_a_percent() {
    for rate in [KIB, 64 * KIB, MIB, 100 * MIB, GIB, 10 * GIB, 1 << 40] {
        let gcra = bucket::Gcra::new(rate);
        let exact_ns = gcra.cell as f64 * 1e9 / rate as f64;
        let interval_ns = exact_ns.round();
        assert!(
            interval_ns >= 4_000.0 || gcra.cell == 1,
            "{rate}: {interval_ns}"
        );
        assert!((interval_ns - exact_ns).abs() / exact_ns < 0.001, "{rate}");
        assert!(
            u64::from(gcra.burst_cells) * gcra.cell > gcra.slice,
            "{rate}: a slice fits the burst"
        );
        assert!(gcra.slice >= gcra.cell);
    }
}

#[tokio::test(start_paused = true)]
async fn the_achieved_rate_is_within_one_percent_of_the_cap() {
    for cap in [64 * KIB, MIB, 100 * MIB, GIB, 10 * GIB] {
        for streams in [1, 16] {
            let bucket = Arc::new(Bucket::new(Some(cap)));
            // Reads as large as the copy path's, but never below a few per simulated second.
            let chunk = (cap / 50).clamp(4 * KIB, 4 * MIB);
            let counts =
                run_streams(streams, chunk, WINDOW, |_| Chain::new(vec![bucket.clone()])).await;
            let granted = bucket.granted();
            let what = format!("{streams} stream(s) at {cap} B/s");
            assert_rate_within(granted, WINDOW, cap, 0.01, &what);
            let counted: u64 = counts.iter().sum();
            assert!(granted - counted <= streams as u64 * chunk, "{what}");
        }
    }
}

#[tokio::test(start_paused = true)]
async fn busy_streams_share_a_cap_fairly() {
    let bucket = Arc::new(Bucket::new(Some(100 * MIB)));
    let counts = run_streams(16, 256 * KIB, WINDOW, |_| Chain::new(vec![bucket.clone()])).await;
    let index = jain(&counts);
    println!("Jain's index over 16 streams: {index:.5}");
    assert!(index >= 0.99, "Jain's index {index:.4} over {counts:?}");
}

#[tokio::test(start_paused = true)]
async fn nested_scopes_give_each_session_the_lesser_cap_and_a_fair_share() {
    let limits = RelayLimits::new(Targets {
        relay: Caps::both(Some(100 * MIB)),
        session: Caps::both(Some(30 * MIB)),
    });
    let chain_in = |session: &Pair| {
        let conn = limits.connection();
        conn.join(session);
        conn.to_recipient.clone()
    };

    // One session alone gets its own cap, below the relay's.
    let session = limits.session(1);
    run_streams(4, 256 * KIB, WINDOW, |_| chain_in(&session)).await;
    let granted = session.to_recipient.granted();
    assert_rate_within(granted, WINDOW, 30 * MIB, 0.01, "one session");

    // Four sessions of two connections each share the relay's 100 MiB/s: 25 each.
    let sessions: Vec<_> = (2..6).map(|id| limits.session(id)).collect();
    let relay_before = limits.relay().to_recipient.granted();
    run_streams(8, 256 * KIB, WINDOW, |i| chain_in(&sessions[i / 2])).await;
    let relay = limits.relay().to_recipient.granted() - relay_before;
    assert_rate_within(relay, WINDOW, 100 * MIB, 0.01, "the relay");
    for (i, session) in sessions.iter().enumerate() {
        let what = format!("session {i} of four");
        assert_rate_within(
            session.to_recipient.granted(),
            WINDOW,
            25 * MIB,
            0.02,
            &what,
        );
    }
    // The other direction was never charged.
    assert_eq!(limits.relay().to_donor.granted(), 0);
}

#[tokio::test(start_paused = true)]
async fn a_changed_cap_is_followed_within_a_second() {
    let limits = RelayLimits::new(Targets {
        relay: Caps::both(Some(MIB)),
        session: Caps::default(),
    });
    let chain = limits.connection().to_recipient.clone();
    let stream = tokio::spawn(run_streams(4, 64 * KIB, WINDOW, move |_| chain.clone()));
    tokio::time::sleep(Duration::from_secs(4)).await;
    let at_change = limits.relay().to_recipient.granted();
    limits.set(Targets {
        relay: Caps::both(Some(4 * MIB)),
        session: Caps::default(),
    });
    tokio::time::sleep(Duration::from_secs(1)).await;
    let after_a_second = limits.relay().to_recipient.granted();
    tokio::time::sleep(Duration::from_secs(4)).await;
    let later = limits.relay().to_recipient.granted();
    stream.await.unwrap();
    assert_rate_within(at_change, Duration::from_secs(4), MIB, 0.02, "before");
    assert_rate_within(
        later - after_a_second,
        Duration::from_secs(4),
        4 * MIB,
        0.01,
        "from a second after the change",
    );
    // Removing the cap lets the next payment through at once.
    limits.set(Targets::default());
    let buckets = limits.connection().to_recipient.buckets();
    let before = Instant::now();
    pay(&buckets, &mut [0], 100 * MIB).await;
    assert_eq!(before.elapsed(), Duration::ZERO);
}

#[tokio::test(start_paused = true)]
async fn a_limited_stream_reads_at_the_cap() {
    let cap = MIB;
    let bucket = Arc::new(Bucket::new(Some(cap)));
    let (mut sender, receiver) = tokio::io::duplex(256 * KIB as usize);
    let mut limited = Limited::new(receiver, Chain::new(vec![bucket.clone()]));
    tokio::spawn(async move {
        let block = vec![7u8; 64 * KIB as usize];
        while sender.write_all(&block).await.is_ok() {}
    });
    let start = Instant::now();
    let mut buf = vec![0u8; 256 * KIB as usize];
    let mut total = 0u64;
    while start.elapsed() < WINDOW {
        let n = limited.read(&mut buf).await.unwrap();
        assert!(n <= 16 << 10, "reads are bounded to a slice while capped");
        total += n as u64;
    }
    assert_rate_within(total, WINDOW, cap, 0.01, "a limited duplex");
}

#[test]
fn each_direction_takes_the_lowest_cap_on_its_own_bytes() {
    let limits = RelayLimits::new(Targets {
        relay: Caps {
            to_donor: Some(4 << 20),
            to_recipient: None,
        },
        session: Caps {
            to_donor: Some(1 << 20),
            to_recipient: None,
        },
    });
    // A cap towards the donor says nothing about the bytes the donor's leg takes in.
    assert_eq!(limits.lowest_toward(Direction::Upstream), Some(1 << 20));
    assert_eq!(limits.lowest_toward(Direction::Downstream), None);
}
