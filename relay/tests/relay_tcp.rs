//! The relay over real sockets: bytes carried intact both ways, many connections at once, a
//! refusal the client can read when the donor is down, and a clean shutdown.

use std::net::SocketAddr;
use std::time::Duration;

use clone_relay::Config;
use clone_relay::protocol::handshake::{ServerHello, parse_server_hello};
use clone_relay::protocol::packet::read_packet;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

/// An upstream that sends back everything it receives, reversed byte-wise by XOR so a relay that
/// echoed on its own would be caught.
async fn xor_server() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let (mut s, _) = listener.accept().await.unwrap();
            tokio::spawn(async move {
                let mut buf = vec![0u8; 64 * 1024];
                loop {
                    let n = match s.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => n,
                    };
                    buf[..n].iter_mut().for_each(|b| *b ^= 0x5a);
                    if s.write_all(&buf[..n]).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    addr
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
    let upstream = xor_server().await;
    let relay = start(Config::new(upstream.to_string()));

    let clients = (0..8u8).map(|i| {
        tokio::spawn(async move {
            let stream = TcpStream::connect(relay.addr).await.unwrap();
            let (mut rx, mut tx) = stream.into_split();
            let block: Vec<u8> = (0..4 * 1024 * 1024u32)
                .map(|j| (j as u8).wrapping_mul(31).wrapping_add(i))
                .collect();
            let expected: Vec<u8> = block.iter().map(|b| b ^ 0x5a).collect();
            let writer = tokio::spawn(async move { tx.write_all(&block).await.unwrap() });
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
    let upstream = xor_server().await;
    let mut config = Config::new(upstream.to_string());
    config.shutdown_grace = Duration::from_millis(300);
    let relay = start(config);

    let mut client = TcpStream::connect(relay.addr).await.unwrap();
    client.write_all(b"x").await.unwrap();
    let mut one = [0u8; 1];
    client.read_exact(&mut one).await.unwrap();

    relay.stop.send(()).unwrap();
    // New connections are refused once the listener is gone.
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert!(TcpStream::connect(relay.addr).await.is_err());
    // The open one still works within the grace period, then is closed.
    client.write_all(b"y").await.unwrap();
    client.read_exact(&mut one).await.unwrap();
    assert_eq!(one[0], b'y' ^ 0x5a);
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
    let upstream = xor_server().await;
    let mut config = Config::new(upstream.to_string());
    config.max_connections = 1;
    let relay = start(config);

    let mut first = TcpStream::connect(relay.addr).await.unwrap();
    first.write_all(b"a").await.unwrap();
    let mut one = [0u8; 1];
    first.read_exact(&mut one).await.unwrap();

    // The second connects (kernel backlog) but is not served while the first is open.
    let mut second = TcpStream::connect(relay.addr).await.unwrap();
    second.write_all(b"b").await.unwrap();
    let waited =
        tokio::time::timeout(Duration::from_millis(300), second.read_exact(&mut one)).await;
    assert!(waited.is_err(), "second connection was served early");

    drop(first);
    tokio::time::timeout(Duration::from_secs(5), second.read_exact(&mut one))
        .await
        .expect("served once the first closed")
        .unwrap();
    assert_eq!(one[0], b'b' ^ 0x5a);
}
