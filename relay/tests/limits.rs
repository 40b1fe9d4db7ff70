//! Bandwidth caps over real sockets: a fake MySQL server streams to 16 clients through a capped
//! relay, and the admin API changes the cap while they read.

mod common;
use common::{GREETING, packet, unhex};

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use clone_relay::admin;
use clone_relay::config::Secret;
use clone_relay::protocol::packet::read_packet;
use clone_relay::{Config, Relay};
use plumbing::http::{request, request_with_json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

const MIB: u64 = 1 << 20;
const TOKEN: &str = "limits-test-token-0123456789";

/// A fake MySQL server: greeting, login, OK; then, for a query, 64 KiB packets without end.
async fn streaming_mysql() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let (mut s, _) = listener.accept().await.unwrap();
            tokio::spawn(async move {
                s.write_all(&packet(0, &unhex(GREETING))).await.unwrap();
                if read_packet(&mut s, 1 << 20).await.is_err() {
                    return;
                }
                s.write_all(&packet(2, &[0, 0, 0, 2, 0, 0, 0]))
                    .await
                    .unwrap();
                if read_packet(&mut s, 1 << 20).await.is_err() {
                    return;
                }
                let mut seq = 1u8;
                loop {
                    let block = packet(seq, &vec![0x11; 64 << 10]);
                    if s.write_all(&block).await.is_err() {
                        return;
                    }
                    seq = seq.wrapping_add(1);
                }
            });
        }
    });
    addr
}

/// Logs in through the relay and asks for the stream.
async fn open_stream(relay: SocketAddr) -> TcpStream {
    let mut s = TcpStream::connect(relay).await.unwrap();
    read_packet(&mut s, 1024).await.unwrap();
    let mut login = vec![0u8; 32];
    login[..4].copy_from_slice(&(0x0000_0200u32 | 0x0008_0000).to_le_bytes());
    login.extend_from_slice(b"tester\0");
    s.write_all(&packet(1, &login)).await.unwrap();
    let (_, ok) = read_packet(&mut s, 1024).await.unwrap();
    assert_eq!(ok[0], 0);
    s.write_all(&packet(0, b"\x03SELECT stream")).await.unwrap();
    s
}

fn start(relay: &Relay) -> (SocketAddr, SocketAddr) {
    let listener = clone_relay::bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let addr = listener.local_addr().unwrap();
    let admin_listener = clone_relay::bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let admin_addr = admin_listener.local_addr().unwrap();
    tokio::spawn(admin::serve(
        admin_listener,
        relay.clone(),
        std::future::pending(),
    ));
    let relay = relay.clone();
    tokio::spawn(async move { relay.serve(listener, std::future::pending()).await });
    (addr, admin_addr)
}

/// Bytes all clients have read so far.
fn spawn_readers(streams: Vec<TcpStream>) -> Arc<AtomicU64> {
    let total = Arc::new(AtomicU64::new(0));
    for mut s in streams {
        let total = total.clone();
        tokio::spawn(async move {
            let mut buf = vec![0u8; 256 << 10];
            while let Ok(n) = s.read(&mut buf).await {
                if n == 0 {
                    return;
                }
                total.fetch_add(n as u64, Ordering::Relaxed);
            }
        });
    }
    total
}

/// Rate of `counter` over `window`, bytes per second.
async fn rate_over(counter: &AtomicU64, window: Duration) -> f64 {
    let (start, at) = (counter.load(Ordering::Relaxed), Instant::now());
    tokio::time::sleep(window).await;
    (counter.load(Ordering::Relaxed) - start) as f64 / at.elapsed().as_secs_f64()
}

fn assert_near(rate: f64, cap: u64, tolerance: f64, what: &str) {
    let off = rate / cap as f64 - 1.0;
    println!(
        "{what}: {:.2} MiB/s, {:+.2}% of the cap",
        rate / MIB as f64,
        off * 100.0
    );
    assert!(
        off.abs() <= tolerance,
        "{what}: {rate:.0} B/s against {cap} B/s"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sixteen_connections_share_the_relay_cap_and_follow_a_change() {
    let upstream = streaming_mysql().await;
    let mut config = Config::new(upstream.to_string());
    config.limits.relay = Some(50 * MIB);
    config.admin_token = Some(Secret::new(TOKEN));
    let relay = Relay::new(config).unwrap();
    let (addr, admin_addr) = start(&relay);

    let mut streams = Vec::new();
    for _ in 0..16 {
        streams.push(open_stream(addr).await);
    }
    let total = spawn_readers(streams);
    // Past the first burst (the limiter's 20 ms and one read per connection).
    tokio::time::sleep(Duration::from_millis(500)).await;
    let rate = rate_over(&total, Duration::from_secs(5)).await;
    assert_near(
        rate,
        50 * MIB,
        0.03,
        "16 connections under a 50 MiB/s relay cap",
    );

    // A live change through the admin API, followed within a second.
    let (status, body) = request_with_json(
        admin_addr,
        "PUT",
        "/limits",
        Some(TOKEN),
        Some(r#"{"relay": "20MiB/s"}"#),
    )
    .await
    .unwrap();
    assert_eq!(status, 200, "{body}");
    assert!(
        body.contains("\"cap\": \"20MiB/s\"") || body.contains("\"cap\":\"20MiB/s\""),
        "{body}"
    );
    tokio::time::sleep(Duration::from_secs(1)).await;
    let rate = rate_over(&total, Duration::from_secs(3)).await;
    assert_near(
        rate,
        20 * MIB,
        0.03,
        "a second after the cap went to 20 MiB/s",
    );

    // Bad input names the key and changes nothing.
    let (status, body) = request_with_json(
        admin_addr,
        "PUT",
        "/limits",
        Some(TOKEN),
        Some(r#"{"relay": "20MiB"}"#),
    )
    .await
    .unwrap();
    assert_eq!(status, 400, "{body}");
    assert!(body.contains("relay") && body.contains("/s"), "{body}");
    let (status, _) = request_with_json(admin_addr, "PUT", "/limits", None, Some("{}"))
        .await
        .unwrap();
    assert_eq!(status, 401, "changing caps needs the token");
    let (_, view) = request(admin_addr, "GET", "/limits").await.unwrap();
    assert!(view.contains("20MiB/s"), "{view}");
    let (_, metrics) = request(admin_addr, "GET", "/metrics").await.unwrap();
    assert!(
        metrics.contains(&format!(
            "clone_relay_limit_cap_bytes_per_second{{scope=\"relay\",direction=\"to_recipient\"}} {}",
            20 * MIB
        )),
        "{metrics}"
    );
}
