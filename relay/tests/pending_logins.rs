//! Connections that have not logged in yet are capped per client address, over real sockets: an
//! address at its cap gets MySQL error 1040 in place of a greeting and the donor is not dialed
//! for it, another address is not held up, and a login that goes through frees its place.

mod common;
use common::{GREETING, packet, unhex};

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use clone_relay::protocol::handshake::{ServerHello, parse_server_hello};
use clone_relay::protocol::packet::read_packet;
use clone_relay::{Config, Relay};
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpSocket, TcpStream};

const CAP: usize = 4;

/// A donor without TLS that greets, answers any login with OK and then idles; counts the
/// connections it accepted.
async fn donor() -> (SocketAddr, Arc<AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let accepted = Arc::new(AtomicUsize::new(0));
    let mut greeting = unhex(GREETING);
    clone_relay::protocol::handshake::set_greeting_ssl(&mut greeting, false).unwrap();
    tokio::spawn({
        let accepted = accepted.clone();
        async move {
            loop {
                let (mut s, _) = listener.accept().await.unwrap();
                accepted.fetch_add(1, Ordering::SeqCst);
                let greeting = greeting.clone();
                tokio::spawn(async move {
                    s.write_all(&packet(0, &greeting)).await.unwrap();
                    if read_packet(&mut s, 1 << 16).await.is_ok() {
                        let _ = s.write_all(&packet(2, &[0, 0, 0, 2, 0, 0, 0])).await;
                    }
                    let mut sink = vec![0u8; 1024];
                    while let Ok((_, _)) = read_packet(&mut s, 1 << 16).await {
                        sink.clear();
                    }
                });
            }
        }
    });
    (addr, accepted)
}

/// A connection to `relay` from the loopback address `from`; what it got first.
async fn connect(relay: SocketAddr, from: &str) -> (TcpStream, ServerHello) {
    let socket = TcpSocket::new_v4().unwrap();
    socket.bind(format!("{from}:0").parse().unwrap()).unwrap();
    let mut stream = socket.connect(relay).await.unwrap();
    let (_, first) =
        tokio::time::timeout(Duration::from_secs(10), read_packet(&mut stream, 1 << 16))
            .await
            .unwrap()
            .unwrap();
    let hello = parse_server_hello(&first).unwrap();
    (stream, hello)
}

/// A plain login request.
fn login() -> Vec<u8> {
    let mut login = vec![0u8; 32];
    login[..4].copy_from_slice(&(0x200u32 | 0x8_0000).to_le_bytes());
    login.extend_from_slice(b"tester\0");
    packet(1, &login)
}

#[tokio::test]
async fn connections_not_logged_in_are_capped_per_address() {
    let (donor, accepted) = donor().await;
    let mut config = Config::new(donor.to_string());
    config.max_pending_logins_per_address = CAP;
    let relay = Relay::new(config).unwrap();
    let listener = clone_relay::bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn({
        let relay = relay.clone();
        async move { relay.serve(listener, std::future::pending()).await }
    });

    let mut held = Vec::new();
    for _ in 0..CAP {
        let (stream, hello) = connect(addr, "127.0.0.1").await;
        assert!(matches!(hello, ServerHello::Greeting(_)), "{hello:?}");
        held.push(stream);
    }
    let (_, refused) = connect(addr, "127.0.0.1").await;
    match refused {
        ServerHello::Error { code, message } => {
            assert_eq!(code, 1040);
            assert!(message.contains("have not logged in yet"), "{message}");
        }
        other => panic!("the address past its cap got {other:?}"),
    }
    assert_eq!(
        accepted.load(Ordering::SeqCst),
        CAP,
        "the donor was dialed for the refused one"
    );

    // Another address is not held up.
    let (_other, hello) = connect(addr, "127.0.0.2").await;
    assert!(matches!(hello, ServerHello::Greeting(_)), "{hello:?}");

    // A login that goes through frees its place.
    held[0].write_all(&login()).await.unwrap();
    let (_, ok) = read_packet(&mut held[0], 1 << 16).await.unwrap();
    assert_eq!(ok[0], 0, "OK after the login");
    let (_again, hello) = connect(addr, "127.0.0.1").await;
    assert!(matches!(hello, ServerHello::Greeting(_)), "{hello:?}");
    let rejected = relay.registry().view().rejected;
    assert!(
        rejected.iter().any(|c| c
            .close_reason
            .as_deref()
            .is_some_and(|r| r.contains("have not logged in yet"))),
        "{rejected:?}"
    );
}
