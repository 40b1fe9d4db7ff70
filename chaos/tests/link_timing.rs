//! Every fault on an in-memory link with paused time: its timing within tolerance, the bytes
//! intact (all but limit_data), and cancellation clean.

use std::sync::Arc;
use std::time::Duration;

use chaos::fault::{ConnInfo, Cut, DecisionLog, SharedBuckets};
use chaos::link::{self, LinkContext, LinkEnd};
use chaos::{Direction, FaultKind, FaultSpec, FlapMode};
use tokio::io::{AsyncReadExt, AsyncWriteExt, duplex};
use tokio::sync::watch;
use tokio::time::Instant;

const MS: Duration = Duration::from_millis(1);

fn context(faults: Vec<FaultSpec>, log: Arc<DecisionLog>) -> LinkContext {
    let table = Arc::new(
        faults
            .into_iter()
            .enumerate()
            .map(|(i, f)| (i as u64, f))
            .collect(),
    );
    let now = Instant::now();
    LinkContext {
        seed: 42,
        conn: ConnInfo {
            index: 1,
            role: None,
        },
        proxy_start: now,
        conn_start: now,
        buckets: Arc::new(SharedBuckets::default()),
        log,
        // The sender is leaked on purpose: the table stays as given for the whole test.
        faults: Box::leak(Box::new(watch::channel(table))).1.clone(),
    }
}

/// What came out of the far end of the link.
struct Run {
    received: Vec<u8>,
    /// When the first and the last byte arrived, and when the far end saw the end.
    first_at: Option<Duration>,
    last_at: Option<Duration>,
    eof_at: Duration,
    end: LinkEnd,
    log: Arc<DecisionLog>,
}

/// Sends `data` from the client through a link with `faults` (upstream only), then closes.
async fn run(faults: Vec<FaultSpec>, data: Vec<u8>) -> Run {
    let faults = faults
        .into_iter()
        .map(|f| f.direction(Direction::Upstream))
        .collect();
    let log = Arc::new(DecisionLog::default());
    let (mut client, client_side) = duplex(64 * 1024);
    let (server_side, mut server) = duplex(64 * 1024);
    let start = Instant::now();
    let link = tokio::spawn(link::run(
        client_side,
        server_side,
        context(faults, log.clone()),
        |_| {},
    ));
    let writer = tokio::spawn(async move {
        let _ = client.write_all(&data).await;
        let _ = client.shutdown().await;
        client
    });
    let mut received = Vec::new();
    let (mut first_at, mut last_at) = (None, None);
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        match server.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                first_at.get_or_insert(start.elapsed());
                last_at = Some(start.elapsed());
                received.extend_from_slice(&buf[..n]);
            }
        }
    }
    let eof_at = start.elapsed();
    drop(server);
    let _client = writer.await.unwrap();
    let end = link.await.unwrap();
    Run {
        received,
        first_at,
        last_at,
        eof_at,
        end,
        log,
    }
}

fn data(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i * 7 % 251) as u8).collect()
}

fn near(actual: Duration, expected: Duration, tolerance: Duration) -> bool {
    actual >= expected.saturating_sub(tolerance) && actual <= expected + tolerance
}

#[tokio::test(start_paused = true)]
async fn latency_delays_without_losing_bytes() {
    let r = run(
        vec![FaultSpec::new(FaultKind::Latency {
            latency_ms: 100,
            jitter_ms: 10,
        })],
        data(200_000),
    )
    .await;
    assert_eq!(r.received, data(200_000));
    let first = r.first_at.unwrap();
    assert!(near(first, 100 * MS, 12 * MS), "{first:?}");
    // Pipelined: the whole stream takes about one latency, not one per chunk.
    assert!(r.last_at.unwrap() < 250 * MS, "{:?}", r.last_at);
}

#[tokio::test(start_paused = true)]
async fn bandwidth_holds_the_rate() {
    let r = run(
        vec![FaultSpec::new(FaultKind::Bandwidth {
            rate_bytes_per_sec: 1_000_000,
            shared_group: None,
        })],
        data(500_000),
    )
    .await;
    assert_eq!(r.received, data(500_000));
    assert!(
        near(r.last_at.unwrap(), 500 * MS, 25 * MS),
        "{:?}",
        r.last_at
    );
}

#[tokio::test(start_paused = true)]
async fn slicer_fragments_the_stream() {
    let r = run(
        vec![FaultSpec::new(FaultKind::Slicer {
            average_bytes: 100,
            variation_bytes: 20,
            delay_us: 1000,
        })],
        data(20_000),
    )
    .await;
    assert_eq!(r.received, data(20_000));
    // About 200 slices, 1 ms apart.
    assert!(r.last_at.unwrap() >= 150 * MS, "{:?}", r.last_at);
}

#[tokio::test(start_paused = true)]
async fn reset_cuts_when_it_becomes_active() {
    let (mut client, client_side) = duplex(1024);
    let (server_side, mut server) = duplex(1024);
    let start = Instant::now();
    let faults = vec![FaultSpec::new(FaultKind::Reset {}).after_ms(200)];
    let link = tokio::spawn(link::run(
        client_side,
        server_side,
        context(faults, Arc::default()),
        |_| {},
    ));
    client.write_all(b"before").await.unwrap();
    let mut buf = [0u8; 6];
    server.read_exact(&mut buf).await.unwrap();
    let end = link.await.unwrap();
    assert!(matches!(end, LinkEnd::Cut(Cut::Reset)), "{end:?}");
    assert!(near(start.elapsed(), 200 * MS, MS), "{:?}", start.elapsed());
    assert_eq!(server.read(&mut buf).await.unwrap_or(0), 0);
}

#[tokio::test(start_paused = true)]
async fn blackhole_holds_then_releases_every_byte() {
    let r = run(
        vec![FaultSpec::new(FaultKind::Blackhole {}).lasting_ms(500)],
        data(100_000),
    )
    .await;
    assert_eq!(r.received, data(100_000));
    assert!(near(r.first_at.unwrap(), 500 * MS, MS), "{:?}", r.first_at);
    assert!(matches!(r.end, LinkEnd::Finished), "{:?}", r.end);
}

#[tokio::test(start_paused = true)]
async fn timeout_closes_after_its_time() {
    let r = run(
        vec![FaultSpec::new(FaultKind::Timeout { timeout_ms: 300 })],
        data(1000),
    )
    .await;
    assert!(r.received.is_empty());
    assert!(matches!(r.end, LinkEnd::Cut(Cut::Close)), "{:?}", r.end);
    assert!(near(r.eof_at, 300 * MS, MS), "{:?}", r.eof_at);
}

#[tokio::test(start_paused = true)]
async fn limit_data_passes_exactly_the_limit() {
    let r = run(
        vec![FaultSpec::new(FaultKind::LimitData { bytes: 1000 })],
        data(50_000),
    )
    .await;
    assert_eq!(r.received, data(1000));
    assert!(matches!(r.end, LinkEnd::Cut(Cut::Close)), "{:?}", r.end);
}

#[tokio::test(start_paused = true)]
async fn slow_close_delays_the_end() {
    let r = run(
        vec![FaultSpec::new(FaultKind::SlowClose { delay_ms: 400 })],
        data(1000),
    )
    .await;
    assert_eq!(r.received, data(1000));
    assert!(near(r.eof_at, 400 * MS, 2 * MS), "{:?}", r.eof_at);
}

#[tokio::test(start_paused = true)]
async fn loss_stalls_for_each_lost_segment() {
    let r = run(
        vec![FaultSpec::new(FaultKind::Loss {
            probability: 0.05,
            segment_bytes: 1000,
            retransmit_ms: 200,
        })],
        data(100_000),
    )
    .await;
    assert_eq!(r.received, data(100_000));
    let lost = r
        .log
        .entries()
        .iter()
        .filter(|d| d.what == "segment lost")
        .count() as u32;
    assert!(lost > 0);
    assert!(
        near(r.last_at.unwrap(), 200 * MS * lost, 20 * MS),
        "{lost} losses, {:?}",
        r.last_at
    );
}

#[tokio::test(start_paused = true)]
async fn flap_blackholes_and_resets() {
    let hole = run(
        vec![
            FaultSpec::new(FaultKind::Blackhole {}).lasting_ms(850),
            FaultSpec::new(FaultKind::Flap {
                period_ms: Some(1000),
                period_bytes: None,
                down_ms: 200,
                mode: FlapMode::Blackhole,
            }),
        ],
        data(10_000),
    )
    .await;
    // Released by the plain blackhole at 850 ms, inside the flap's down window: held to 1000.
    assert_eq!(hole.received, data(10_000));
    assert!(
        near(hole.first_at.unwrap(), 1000 * MS, MS),
        "{:?}",
        hole.first_at
    );

    let (_client, client_side) = duplex(1024);
    let (server_side, _server) = duplex(1024);
    let start = Instant::now();
    let faults = vec![FaultSpec::new(FaultKind::Flap {
        period_ms: Some(1000),
        period_bytes: None,
        down_ms: 200,
        mode: FlapMode::Reset,
    })];
    let end = link::run(
        client_side,
        server_side,
        context(faults, Arc::default()),
        |_| {},
    )
    .await;
    assert!(matches!(end, LinkEnd::Cut(Cut::Reset)), "{end:?}");
    assert!(near(start.elapsed(), 800 * MS, MS), "{:?}", start.elapsed());
}

fn byte_flap(period_bytes: u64, down_ms: u64, mode: FlapMode) -> FaultSpec {
    FaultSpec::new(FaultKind::Flap {
        period_ms: None,
        period_bytes: Some(period_bytes),
        down_ms,
        mode,
    })
}

#[tokio::test(start_paused = true)]
async fn byte_flap_resets_at_its_offset_exactly_whatever_the_timing() {
    for latency_ms in [0, 30] {
        // Latency ahead of the flap moves when bytes arrive, not where the reset lands.
        let mut faults = vec![byte_flap(12_345, 0, FlapMode::Reset)];
        if latency_ms > 0 {
            faults.insert(
                0,
                FaultSpec::new(FaultKind::Latency {
                    latency_ms,
                    jitter_ms: 10,
                }),
            );
        }
        let r = run(faults, data(50_000)).await;
        assert_eq!(r.received, data(12_345), "latency {latency_ms} ms");
        assert!(matches!(r.end, LinkEnd::Cut(Cut::Reset)), "{:?}", r.end);
        let cuts: Vec<u64> = r
            .log
            .entries()
            .iter()
            .filter(|d| d.what == "link down: reset")
            .map(|d| d.offset)
            .collect();
        assert_eq!(cuts, [12_345]);
    }
}

#[tokio::test(start_paused = true)]
async fn byte_flap_never_cuts_an_idle_link() {
    let (mut client, client_side) = duplex(1024);
    let (server_side, mut server) = duplex(1024);
    let faults = vec![byte_flap(100, 0, FlapMode::Reset).direction(Direction::Upstream)];
    let link = tokio::spawn(link::run(
        client_side,
        server_side,
        context(faults, Arc::default()),
        |_| {},
    ));
    client.write_all(&data(99)).await.unwrap();
    let mut buf = [0u8; 99];
    server.read_exact(&mut buf).await.unwrap();
    // An hour of silence one byte short of the offset: still up.
    tokio::time::sleep(Duration::from_secs(3600)).await;
    assert!(!link.is_finished());
    client.write_all(b"x").await.unwrap();
    let end = link.await.unwrap();
    assert!(matches!(end, LinkEnd::Cut(Cut::Reset)), "{end:?}");
    let mut last = [0u8; 1];
    server.read_exact(&mut last).await.unwrap();
    assert_eq!(&last, b"x");
}

#[tokio::test(start_paused = true)]
async fn byte_flap_blackhole_pauses_at_every_offset() {
    let r = run(
        vec![byte_flap(3000, 200, FlapMode::Blackhole)],
        data(10_000),
    )
    .await;
    // Down at 3000, 6000 and 9000: three outages of 200 ms, every byte delivered in order.
    assert_eq!(r.received, data(10_000));
    assert!(matches!(r.end, LinkEnd::Finished), "{:?}", r.end);
    assert!(
        near(r.last_at.unwrap(), 600 * MS, 2 * MS),
        "{:?}",
        r.last_at
    );
    let downs: Vec<u64> = r
        .log
        .entries()
        .iter()
        .filter(|d| d.what == "link down: held")
        .map(|d| d.offset)
        .collect();
    assert_eq!(downs, [3000, 6000, 9000]);
}

#[tokio::test(start_paused = true)]
async fn cancelling_a_held_link_closes_both_ends() {
    let (mut client, client_side) = duplex(1024);
    let (server_side, mut server) = duplex(1024);
    let faults = vec![FaultSpec::new(FaultKind::Blackhole {})];
    let link = link::run(
        client_side,
        server_side,
        context(faults, Arc::default()),
        |_| {},
    );
    client.write_all(b"held").await.unwrap();
    assert!(tokio::time::timeout(100 * MS, link).await.is_err());
    // The link is gone: both ends see it at once, and nothing was delivered.
    let mut buf = [0u8; 8];
    assert_eq!(server.read(&mut buf).await.unwrap_or(0), 0);
    assert_eq!(client.read(&mut buf).await.unwrap_or(0), 0);
}

#[tokio::test(start_paused = true)]
async fn a_scheduled_outage_is_one_window_for_every_connection() {
    // The proxy started 500 ms ago with a blackhole from 0 to 800 ms: a connection opened now
    // is held for the remaining 300 ms, not for a window of its own.
    let (mut client, client_side) = duplex(1024);
    let (server_side, mut server) = duplex(1024);
    let mut ctx = context(
        vec![
            FaultSpec::new(FaultKind::Blackhole {})
                .at_ms(0)
                .lasting_ms(800)
                .direction(Direction::Upstream),
        ],
        Arc::default(),
    );
    ctx.proxy_start -= 500 * MS;
    let start = Instant::now();
    tokio::spawn(link::run(client_side, server_side, ctx, |_| {}));
    client.write_all(b"held").await.unwrap();
    let mut buf = [0u8; 4];
    server.read_exact(&mut buf).await.unwrap();
    assert!(near(start.elapsed(), 300 * MS, MS), "{:?}", start.elapsed());
}

#[tokio::test(start_paused = true)]
async fn a_rate_cap_ends_with_its_window_even_for_bytes_queued_during_it() {
    // 200 kB written at once (read into the link's queue at once) under a 10 kB/s cap that
    // lasts 1 s: about 10 kB pass in that second and the rest right after it, not at 10 kB/s.
    let r = run(
        vec![
            FaultSpec::new(FaultKind::Bandwidth {
                rate_bytes_per_sec: 10_000,
                shared_group: None,
            })
            .lasting_ms(1000),
        ],
        data(200_000),
    )
    .await;
    assert_eq!(r.received, data(200_000));
    let last = r.last_at.unwrap();
    assert!(near(last, 1000 * MS, 100 * MS), "{last:?}");
}

#[tokio::test(start_paused = true)]
async fn connections_sharing_a_cap_take_turns() {
    // Two connections, 64 KiB each, through one 64 KiB/s cap: both finish after about 2 s, and
    // neither waits for the other's whole chunk (32 KiB, half a second) between its pieces.
    let buckets = Arc::new(SharedBuckets::default());
    let cap = FaultSpec::new(FaultKind::Bandwidth {
        rate_bytes_per_sec: 64 * 1024,
        shared_group: Some("link".into()),
    })
    .direction(Direction::Upstream);
    let start = Instant::now();
    let mut receivers = Vec::new();
    for index in 1..=2 {
        let mut ctx = context(vec![cap.clone()], Arc::default());
        ctx.conn.index = index;
        ctx.buckets = buckets.clone();
        let (mut client, client_side) = duplex(64 * 1024);
        let (server_side, mut server) = duplex(64 * 1024);
        tokio::spawn(link::run(client_side, server_side, ctx, |_| {}));
        tokio::spawn(async move {
            client.write_all(&data(64 * 1024)).await.unwrap();
            client.shutdown().await.unwrap();
            // Kept open until the far end has read everything.
            let _ = client.read(&mut [0u8; 1]).await;
        });
        receivers.push(tokio::spawn(async move {
            let (mut received, mut last, mut longest_gap) = (0, Duration::ZERO, Duration::ZERO);
            let mut buf = vec![0u8; 64 * 1024];
            while let Ok(n @ 1..) = server.read(&mut buf).await {
                let now = start.elapsed();
                longest_gap = longest_gap.max(now - last);
                last = now;
                received += n;
            }
            (received, last, longest_gap)
        }));
    }
    for receiver in receivers {
        let (received, last, longest_gap) = receiver.await.unwrap();
        assert_eq!(received, 64 * 1024);
        assert!(near(last, 2000 * MS, 100 * MS), "{last:?}");
        assert!(longest_gap < 200 * MS, "{longest_gap:?}");
    }
}
