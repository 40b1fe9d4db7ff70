//! The copy path over real sockets: a captured clone (real CLONE traffic between two MySQL
//! 9.7.4 servers, `tests/captures`) carried with a small fixed buffer and with buffers that
//! grow to 1 MiB gives intact bytes, balanced counters and the same clone session as the
//! capture says; a malformed packet after large data still closes the connection with the
//! breach as its reason.

mod common;
use common::unhex;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use clone_relay::connection::copy;
use clone_relay::connection::leg::Leg;
use clone_relay::io::{Legs, Observed};
use clone_relay::limit::{Chain, Limited};
use clone_relay::metrics::Metrics;
use clone_relay::protocol::decoder::{Direction, ViolationKind};
use clone_relay::protocol::{Limits, PacketHeader, frame};
use clone_relay::session::{CloseReason, ConnHandle, Registry, Role, SessionSettings};
use clone_relay::{Config, RelayError};
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

fn capture(name: &str) -> Vec<Value> {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/captures")
        .join(name);
    let text = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("capture {} unreadable: {e}", path.display()));
    text.lines()
        .map(|l| serde_json::from_str(l).expect("capture line is JSON"))
        .collect()
}

fn direction(row: &Value) -> Direction {
    match row["dir"].as_str() {
        Some("c2s") => Direction::Upstream,
        _ => Direction::Downstream,
    }
}

/// A captured packet as it was on the wire; DATA payloads cut short in the capture are padded
/// with a pattern to their length.
fn wire_packet(row: &Value) -> Vec<u8> {
    let len = row["len"].as_u64().unwrap() as usize;
    let mut payload = unhex(row["hex"].as_str().unwrap());
    let kept = payload.len();
    payload.extend((kept..len).map(|i| (i % 251) as u8));
    let mut bytes = PacketHeader {
        payload_len: len,
        seq: row["seq"].as_u64().unwrap() as u8,
    }
    .encode()
    .to_vec();
    bytes.extend(payload);
    bytes
}

/// A connected pair of loopback sockets.
async fn pair() -> (TcpStream, TcpStream) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (client, accepted) = tokio::join!(TcpStream::connect(addr), listener.accept());
    (client.unwrap(), accepted.unwrap().0)
}

/// One connection carried by the copy path between a recipient and a donor socket, its bytes
/// decoded by a connection of `registry`.
struct Conn {
    recipient: TcpStream,
    donor: TcpStream,
    legs: Legs,
    handle: Arc<ConnHandle>,
    task: JoinHandle<Result<(), RelayError>>,
}

impl Conn {
    async fn open(registry: &Arc<Registry>, id: u64, buffer_bytes: usize) -> Conn {
        let peer: SocketAddr = "127.0.0.1:40000".parse().unwrap();
        let (recipient, relay_down) = pair().await;
        let (relay_up, donor) = pair().await;
        let legs = Legs::default();
        let handle = Arc::new(registry.open(id, peer, legs.clone()));
        registry.admit(id, peer.ip(), &["donor:3306".to_string()]);
        let task = tokio::spawn({
            let legs = legs.clone();
            let handle = handle.clone();
            async move {
                let mut down = Leg::Plain(Limited::new(relay_down.into(), Chain::default()));
                let mut up = Leg::Plain(Limited::new(relay_up.into(), Chain::default()));
                let down = Observed::new(&mut down, handle.clone(), Direction::Upstream);
                let up = Observed::new(&mut up, handle, Direction::Downstream);
                copy::relay(down, up, buffer_bytes, &legs).await
            }
        });
        Conn {
            recipient,
            donor,
            legs,
            handle,
            task,
        }
    }

    /// Sends `bytes` from one end and checks that the other end receives exactly them.
    async fn carry(&mut self, dir: Direction, bytes: &[u8]) {
        let (from, to) = match dir {
            Direction::Upstream => (&mut self.recipient, &mut self.donor),
            Direction::Downstream => (&mut self.donor, &mut self.recipient),
        };
        let mut got = vec![0u8; bytes.len()];
        let (sent, received) = tokio::join!(from.write_all(bytes), to.read_exact(&mut got));
        sent.unwrap();
        received.unwrap();
        assert!(got == bytes, "bytes changed on the way ({dir:?})");
    }

    /// Both ends close; returns the counters of both legs once the copy has ended.
    async fn close(mut self) -> [u64; 4] {
        self.recipient.shutdown().await.unwrap();
        self.donor.shutdown().await.unwrap();
        self.task.await.unwrap().expect("the copy ends cleanly");
        for end in [&mut self.recipient, &mut self.donor] {
            let mut rest = Vec::new();
            end.read_to_end(&mut rest).await.unwrap();
            assert!(rest.is_empty(), "nothing more arrives after the close");
        }
        self.handle.close(&CloseReason {
            kind: "peer_reset",
            detail: "closed in capture".into(),
            rejected: false,
        });
        [
            self.legs.downstream.bytes_read(),
            self.legs.downstream.bytes_written(),
            self.legs.upstream.bytes_read(),
            self.legs.upstream.bytes_written(),
        ]
    }
}

/// What a relayed capture leaves behind: each connection's counters, and its clone session.
#[derive(Debug, PartialEq)]
struct Outcome {
    counters: BTreeMap<u64, [u64; 4]>,
    roles: Vec<(u64, Role)>,
    data_bytes: u64,
    resume_count: u64,
    state: String,
    stages: Vec<String>,
}

async fn relay_capture(rows: &[Value], buffer_bytes: usize) -> Outcome {
    let registry = Arc::new(Registry::new(
        SessionSettings::default(),
        Arc::new(Metrics::default()),
    ));
    let mut conns: BTreeMap<u64, Conn> = BTreeMap::new();
    let mut counters = BTreeMap::new();
    for row in rows {
        let Some(id) = row["conn"].as_u64() else {
            continue;
        };
        match row["event"].as_str() {
            Some("open") => {
                conns.insert(id, Conn::open(&registry, id, buffer_bytes).await);
            }
            Some("close") => {
                if let Some(conn) = conns.remove(&id) {
                    counters.insert(id, conn.close().await);
                }
            }
            Some(_) => {}
            None => {
                let conn = conns.get_mut(&id).expect("an open connection");
                conn.carry(direction(row), &wire_packet(row)).await;
            }
        }
    }
    for (id, conn) in conns {
        counters.insert(id, conn.close().await);
    }
    let view = registry.view();
    assert_eq!(view.sessions.len(), 1, "one clone session: {view:#?}");
    let session = &view.sessions[0];
    Outcome {
        counters,
        roles: session.connections.iter().map(|c| (c.id, c.role)).collect(),
        data_bytes: session.data_bytes,
        resume_count: session.resume_count,
        state: format!("{:?}", session.state),
        stages: session
            .stages
            .iter()
            .map(|c| format!("{:?}", c.to))
            .collect(),
    }
}

/// Payload bytes of the DATA responses in a capture.
fn data_bytes(rows: &[Value]) -> u64 {
    rows.iter()
        .filter(|r| r["dir"] == "s2c" && r["hex"].as_str().is_some_and(|h| h.starts_with("03")))
        .map(|r| r["len"].as_u64().unwrap() - 1)
        .sum()
}

/// Bytes each connection of a capture carries, as (recipient to donor, donor to recipient).
fn wire_bytes(rows: &[Value]) -> BTreeMap<u64, (u64, u64)> {
    let mut bytes = BTreeMap::new();
    for row in rows.iter().filter(|r| r["len"].is_u64()) {
        let entry: &mut (u64, u64) = bytes.entry(row["conn"].as_u64().unwrap()).or_default();
        let n = wire_packet(row).len() as u64;
        match direction(row) {
            Direction::Upstream => entry.0 += n,
            Direction::Downstream => entry.1 += n,
        }
    }
    bytes
}

#[tokio::test]
async fn a_capture_carried_with_small_and_growing_buffers_arrives_whole_and_decoded() {
    for name in [
        "clone-9.7.4-reset-mid-transfer.jsonl",
        "clone-9.7.4-workers-reset.jsonl",
    ] {
        let rows = capture(name);
        let small = relay_capture(&rows, 4096).await;
        let large = relay_capture(&rows, 1 << 20).await;
        assert_eq!(large, small, "{name}");

        assert_eq!(small.data_bytes, data_bytes(&rows), "{name}");
        assert!(small.data_bytes > 100 << 20, "{name}: a real transfer");
        assert_eq!(small.resume_count, 1, "{name}");
        assert_eq!(small.state, "Completed", "{name}");
        // Every byte read on a leg was written to the other, and they are the capture's.
        let wire = wire_bytes(&rows);
        for (id, [down_read, down_written, up_read, up_written]) in &small.counters {
            assert_eq!(
                (*down_read, *up_read),
                (*up_written, *down_written),
                "{name} conn {id}"
            );
            assert_eq!(
                wire.get(id),
                Some(&(*down_read, *up_read)),
                "{name} conn {id}"
            );
        }
    }
}

/// A donor's greeting, the login, auth OK, `COM_CLONE` and its OK, as (direction, bytes).
fn preamble() -> Vec<(Direction, Vec<u8>)> {
    let mut greeting = vec![10u8];
    greeting.extend_from_slice(b"9.7.4\0");
    greeting.extend_from_slice(&[1, 0, 0, 0, 1, 2, 3, 4, 5, 6, 7, 8, 0, 0xff, 0xff, 8, 2, 0]);
    greeting.extend_from_slice(&[0xff, 0xdf, 21, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]);
    let mut login = vec![0u8; 32];
    login[..4].copy_from_slice(&0x0008_0200u32.to_le_bytes());
    login.extend_from_slice(b"donor_clone\0");
    vec![
        (Direction::Downstream, frame(0, &greeting)),
        (Direction::Upstream, frame(1, &login)),
        (Direction::Downstream, frame(2, &[0, 0, 0, 2, 0, 0, 0])),
        (Direction::Upstream, frame(0, &[0x20])),
        (Direction::Downstream, frame(1, &[0, 0, 0, 2, 0, 0, 0])),
    ]
}

#[tokio::test]
async fn messages_the_relay_does_not_know_are_carried_unchanged_and_no_longer_followed() {
    let registry = Arc::new(Registry::new(
        SessionSettings::default(),
        Arc::new(Metrics::default()),
    ));
    let mut conn = Conn::open(&registry, 1, 1 << 20).await;
    for (dir, bytes) in preamble() {
        conn.carry(dir, &bytes).await;
    }
    // INIT at protocol 0x0103, and the donor's locators at the version it chose.
    let mut init = vec![1u8];
    init.extend_from_slice(&0x0103u32.to_le_bytes());
    init.extend_from_slice(&300u32.to_le_bytes());
    conn.carry(Direction::Upstream, &frame(0, &init)).await;
    let mut locs = vec![1u8];
    locs.extend_from_slice(&0x0102u32.to_le_bytes());
    conn.carry(Direction::Downstream, &frame(1, &locs)).await;
    // A 4 MiB DATA response: the buffer grows on it.
    let mut data = vec![3u8];
    data.extend((0..4 << 20).map(|i: u32| (i % 251) as u8));
    conn.carry(Direction::Downstream, &frame(2, &data)).await;

    // Then a response of a kind this relay does not know (a newer server's), a command of a
    // kind it does not know, and more data: all carried as they are.
    conn.carry(Direction::Downstream, &frame(3, &[0x77, 1, 2, 3]))
        .await;
    conn.carry(Direction::Upstream, &frame(0, &[0x42, 9, 9]))
        .await;
    conn.carry(Direction::Downstream, &frame(4, &data)).await;

    let view = registry.view();
    let session = view.sessions.first().expect("the INIT made a session");
    assert_eq!(session.protocol_version.as_deref(), Some("0x0102"));
    let why = session.not_followed.as_deref().unwrap_or_default();
    assert!(why.contains("77"), "the session says why: {why:?}");
    // Only the data before the unknown response was followed.
    assert_eq!(session.data_bytes, 4 << 20);
    let [down_read, down_written, up_read, up_written] = conn.close().await;
    assert_eq!((down_read, down_written), (up_written, up_read));
}

#[tokio::test]
async fn broken_framing_after_large_data_closes_with_the_breach() {
    // The packet limit at 8 MiB, so a single header can announce more than it.
    let settings = SessionSettings {
        limits: Limits {
            max_packet_bytes: 8 << 20,
            ..Limits::default()
        },
        ..SessionSettings::default()
    };
    let registry = Arc::new(Registry::new(settings, Arc::new(Metrics::default())));
    let mut conn = Conn::open(&registry, 1, 1 << 20).await;
    for (dir, bytes) in preamble() {
        conn.carry(dir, &bytes).await;
    }
    // A 4 MiB DATA response: the buffer grows on it.
    let mut data = vec![3u8];
    data.extend((0..4 << 20).map(|i: u32| (i % 251) as u8));
    conn.carry(Direction::Downstream, &frame(2, &data)).await;

    // Then a header announcing a packet of 16 MiB, over the limit: framing the relay does not
    // carry.
    let mut oversize = vec![0xff, 0xff, 0xff, 3];
    oversize.extend([3u8; 1024]);
    conn.donor.write_all(&oversize).await.unwrap();
    let err = conn.task.await.unwrap().unwrap_err();
    let RelayError::Protocol(violation) = &err else {
        panic!("not a protocol breach: {err:?}");
    };
    assert_eq!(violation.kind, ViolationKind::Oversize);
    assert_eq!(violation.from, Direction::Downstream);
    // None of the bad packet reached the recipient.
    let mut rest = Vec::new();
    let _ = conn.recipient.read_to_end(&mut rest).await;
    assert!(
        rest.is_empty(),
        "{} bytes of the bad packet forwarded",
        rest.len()
    );
}

/// A fake donor: plays the server's side of [`preamble`], sends `stream`, then closes.
async fn fake_donor(stream: Vec<u8>) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let (mut s, _) = listener.accept().await.unwrap();
        for (dir, bytes) in preamble() {
            if dir == Direction::Downstream {
                s.write_all(&bytes).await.unwrap();
            } else {
                let mut got = vec![0u8; bytes.len()];
                s.read_exact(&mut got).await.unwrap();
            }
        }
        let _ = s.write_all(&stream).await;
    });
    addr
}

#[tokio::test]
async fn the_relay_closes_a_connection_on_a_breach_after_large_data_and_says_why() {
    // Two large DATA responses, then a packet over the limit: the relay refuses it once it has
    // its header and head (the decoder looks at 512 bytes of each packet).
    let mut data = vec![3u8];
    data.extend((0..2 << 20).map(|i: u32| (i % 251) as u8));
    let mut stream = frame(2, &data);
    stream.extend(frame(3, &data));
    let good = stream.len();
    stream.extend([0xfe, 0xff, 0xff, 4, 3]);
    stream.extend([0u8; 1024]);
    let donor = fake_donor(stream.clone()).await;

    let mut config = Config::new(donor.to_string());
    config.max_packet_bytes = 4 << 20;
    let relay = clone_relay::Relay::new(config).unwrap();
    let listener = clone_relay::bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn({
        let relay = relay.clone();
        async move { relay.serve(listener, std::future::pending()).await }
    });

    let mut s = TcpStream::connect(addr).await.unwrap();
    for (dir, bytes) in preamble() {
        if dir == Direction::Upstream {
            s.write_all(&bytes).await.unwrap();
        } else {
            let mut got = vec![0u8; bytes.len()];
            s.read_exact(&mut got).await.unwrap();
            assert_eq!(got, bytes);
        }
    }
    let mut got = Vec::new();
    let _ = s.read_to_end(&mut got).await;
    // What arrives is the stream as sent, cut before the bad packet's head is complete (the
    // read that completes it is not forwarded at all, so the cut may fall in the good data).
    assert!(
        got.len() > 2 << 20 && got.len() < good + 4 + 512,
        "{} bytes of {good} good ones arrived",
        got.len()
    );
    assert!(got[..] == stream[..got.len()], "bytes changed on the way");

    // The close is recorded with the breach as its reason.
    let closes = tokio::time::timeout(std::time::Duration::from_secs(10), async {
        loop {
            let closes = relay.metrics().closes();
            if let Some(n) = closes.get("protocol_oversize") {
                return *n;
            }
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
    })
    .await
    .expect("the close is counted as a protocol breach");
    assert_eq!(closes, 1);
    let view = relay.registry().view();
    let reasons: Vec<&str> = view
        .rejected
        .iter()
        .filter_map(|c| c.close_reason.as_deref())
        .collect();
    assert!(
        reasons.iter().any(|r| r.contains("packet of more than")),
        "{reasons:?}"
    );
}
