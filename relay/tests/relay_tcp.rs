//! The relay over real sockets against a small fake MySQL server: bytes carried intact both ways,
//! many connections at once, a refusal the client can read when the donor is down, and a clean
//! shutdown.

mod common;
use common::{GREETING, packet, unhex};

use std::net::SocketAddr;
use std::time::Duration;

use clone_relay::Config;
use clone_relay::protocol::handshake::{ServerHello, parse_server_hello};
use clone_relay::protocol::packet::read_packet;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

/// A fake MySQL server: greeting, login, OK; then it answers every packet with the same packet,
/// payload XOR 0x5a (so a relay that echoed on its own would be caught).
async fn fake_mysql() -> SocketAddr {
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
                while let Ok((h, mut payload)) = read_packet(&mut s, 1 << 24).await {
                    payload.iter_mut().for_each(|b| *b ^= 0x5a);
                    if s.write_all(&packet(h.seq, &payload)).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    addr
}

/// Connects through the relay and logs in to the fake server.
async fn login(relay: SocketAddr) -> TcpStream {
    let mut s = TcpStream::connect(relay).await.unwrap();
    let (h, _) = read_packet(&mut s, 1024).await.unwrap();
    assert_eq!(h.seq, 0);
    let mut login = vec![0u8; 32];
    login[..4].copy_from_slice(&(0x0000_0200u32 | 0x0008_0000).to_le_bytes());
    login.extend_from_slice(b"tester\0");
    s.write_all(&packet(1, &login)).await.unwrap();
    let (_, ok) = read_packet(&mut s, 1024).await.unwrap();
    assert_eq!(ok[0], 0);
    s
}

struct Running {
    addr: SocketAddr,
    stop: oneshot::Sender<()>,
    task: JoinHandle<Result<(), clone_relay::RelayError>>,
}

fn start(config: Config) -> Running {
    let listener = clone_relay::bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop, stopped) = oneshot::channel::<()>();
    let task = tokio::spawn(clone_relay::run(listener, config, async move {
        let _ = stopped.await;
    }));
    Running { addr, stop, task }
}

#[tokio::test]
async fn carries_bytes_intact_on_many_connections() {
    let upstream = fake_mysql().await;
    let relay = start(Config::new(upstream.to_string()));

    let clients = (0..8u8).map(|i| {
        tokio::spawn(async move {
            let stream = login(relay.addr).await;
            let (mut rx, mut tx) = stream.into_split();
            // COM_QUERY packets (a first byte of 0x20 would be COM_CLONE, which the relay
            // would hold the fake server's echo to).
            let payloads: Vec<Vec<u8>> = (0..64u32)
                .map(|k| {
                    std::iter::once(3u8)
                        .chain((1..64 * 1024u32).map(|j| {
                            (j as u8)
                                .wrapping_mul(31)
                                .wrapping_add(i)
                                .wrapping_add(k as u8)
                        }))
                        .collect()
                })
                .collect();
            let stream: Vec<u8> = payloads.iter().flat_map(|p| packet(0, p)).collect();
            let expected: Vec<u8> = payloads
                .iter()
                .flat_map(|p| packet(0, &p.iter().map(|b| b ^ 0x5a).collect::<Vec<_>>()))
                .collect();
            let writer = tokio::spawn(async move { tx.write_all(&stream).await.unwrap() });
            let mut got = vec![0u8; expected.len()];
            rx.read_exact(&mut got).await.unwrap();
            writer.await.unwrap();
            assert!(got == expected, "connection {i}: bytes differ");
        })
    });
    for client in clients.collect::<Vec<_>>() {
        client.await.unwrap();
    }
    relay.stop.send(()).unwrap();
    relay.task.await.unwrap().unwrap();
}

#[tokio::test]
async fn a_dead_upstream_is_reported_to_the_client() {
    let dead = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let relay = start(Config::new(dead.to_string()));
    let mut client = TcpStream::connect(relay.addr).await.unwrap();
    let (header, payload) = read_packet(&mut client, 1024).await.unwrap();
    assert_eq!(header.seq, 0);
    // In place of the greeting: no SQL state, which a client would read as part of the message.
    assert!(payload[3..].starts_with(b"clone-relay: "), "{payload:?}");
    match parse_server_hello(&payload).unwrap() {
        ServerHello::Error { code, message } => {
            assert_eq!(code, 2003);
            assert!(message.contains("unreachable"), "{message}");
        }
        other => panic!("expected an ERR packet, got {other:?}"),
    }
    let mut rest = Vec::new();
    client.read_to_end(&mut rest).await.unwrap();
    assert!(rest.is_empty());
}

#[tokio::test]
async fn shutdown_waits_for_connections_then_closes_them() {
    let upstream = fake_mysql().await;
    let mut config = Config::new(upstream.to_string());
    config.shutdown_grace = Duration::from_millis(300);
    let relay = start(config);

    let mut client = login(relay.addr).await;
    client.write_all(&packet(0, b"x")).await.unwrap();
    let mut one = [0u8; 5];
    client.read_exact(&mut one).await.unwrap();

    relay.stop.send(()).unwrap();
    // New connections are refused once the listener is gone.
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert!(TcpStream::connect(relay.addr).await.is_err());
    // The open one still works within the grace period, then is closed.
    client.write_all(&packet(0, b"y")).await.unwrap();
    client.read_exact(&mut one).await.unwrap();
    assert_eq!(one[4], b'y' ^ 0x5a);
    tokio::time::timeout(Duration::from_secs(5), relay.task)
        .await
        .expect("relay stops after the grace period")
        .unwrap()
        .unwrap();
    let mut rest = Vec::new();
    let _ = client.read_to_end(&mut rest).await;
    assert!(rest.is_empty());
}

#[tokio::test]
async fn max_connections_holds_further_clients_back() {
    let upstream = fake_mysql().await;
    let mut config = Config::new(upstream.to_string());
    config.max_connections = 1;
    let relay = start(config);

    let first = login(relay.addr).await;

    // The second connects (kernel backlog) but gets no greeting while the first is open.
    let mut second = TcpStream::connect(relay.addr).await.unwrap();
    let mut one = [0u8; 1];
    let waited =
        tokio::time::timeout(Duration::from_millis(300), second.read_exact(&mut one)).await;
    assert!(waited.is_err(), "second connection was served early");

    drop(first);
    let mut rest = [0u8; 3];
    tokio::time::timeout(Duration::from_secs(5), second.read_exact(&mut rest))
        .await
        .expect("served once the first closed")
        .unwrap();
}

#[tokio::test]
async fn a_client_that_never_logs_in_is_cut_at_the_deadline() {
    let upstream = fake_mysql().await;
    let mut config = Config::new(upstream.to_string());
    config.handshake_timeout = Duration::from_millis(200);
    let relay = start(config);
    let mut client = TcpStream::connect(relay.addr).await.unwrap();
    // Half a login packet, then nothing.
    client.write_all(&[40, 0, 0, 1, 0, 2]).await.unwrap();
    let mut rest = Vec::new();
    let closed = tokio::time::timeout(Duration::from_secs(5), client.read_to_end(&mut rest)).await;
    assert!(closed.is_ok(), "the relay should close a stuck login");
}

#[tokio::test]
async fn garbage_from_the_client_closes_only_its_connection() {
    let upstream = fake_mysql().await;
    let relay = start(Config::new(upstream.to_string()));
    let mut good = login(relay.addr).await;

    let mut bad = TcpStream::connect(relay.addr).await.unwrap();
    read_packet(&mut bad, 1024).await.unwrap();
    bad.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let mut rest = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), bad.read_to_end(&mut rest))
        .await
        .expect("the bad connection is closed")
        .ok();

    good.write_all(&packet(0, b"still here")).await.unwrap();
    let (_, payload) = read_packet(&mut good, 1024).await.unwrap();
    assert_eq!(
        payload,
        b"still here".iter().map(|b| b ^ 0x5a).collect::<Vec<_>>()
    );
}

/// A TCP health check on the relay port (connect, close, no byte) is a client that left before
/// login: counted as that, with no protocol breach and no rejected connection on record.
#[tokio::test]
async fn a_health_check_is_a_client_that_left_not_a_breach() {
    let upstream = fake_mysql().await;
    let relay = clone_relay::Relay::new(Config::new(upstream.to_string())).unwrap();
    let listener = clone_relay::bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop, stopped) = oneshot::channel::<()>();
    let task = tokio::spawn({
        let relay = relay.clone();
        async move {
            relay
                .serve(listener, async move {
                    let _ = stopped.await;
                })
                .await
        }
    });
    for _ in 0..3 {
        drop(TcpStream::connect(addr).await.unwrap());
    }
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while relay.metrics().closes().get("client_left") != Some(&3) {
        assert!(
            tokio::time::Instant::now() < deadline,
            "waited 5 s for three client_left closes: {:?}",
            relay.metrics().closes()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let closes = relay.metrics().closes();
    assert!(
        closes.keys().all(|k| !k.starts_with("protocol")),
        "{closes:?}"
    );
    assert!(relay.registry().view().rejected.is_empty());
    stop.send(()).unwrap();
    task.await.unwrap().unwrap();
}
