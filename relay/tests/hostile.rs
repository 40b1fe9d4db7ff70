//! Hostile input against the session registry: rounds of 10 000 ATTACH and ACK packets with
//! random clone ids from one authenticated connection. Once the orphan timeout has passed the
//! registry is back to its baseline after every round, and the process's resident memory does
//! not grow from round to round. (Its own test binary, so no other test shares the process.)

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use clone_relay::io::{Legs, Observer};
use clone_relay::metrics::Metrics;
use clone_relay::protocol::clone::ENGINE_INNODB;
use clone_relay::protocol::{Direction, frame};
use clone_relay::session::{CloseReason, ConnHandle, Registry, SessionSettings};

const ROUNDS: u64 = 6;
const PACKETS_PER_ROUND: u32 = 10_000;

#[tokio::test(start_paused = true)]
async fn random_clone_ids_do_not_grow_the_registry_or_the_memory() {
    let reg = Arc::new(Registry::new(
        SessionSettings::default(),
        Arc::new(Metrics::default()),
    ));
    let baseline = reg.session_count();
    let donors = vec!["donor:3306".to_string()];
    let mut rng = 0x2545_F491_4F6C_DD1Du64;
    let mut rss = Vec::new();
    for round in 0..ROUNDS {
        let peer: SocketAddr = "10.0.9.9:40000".parse().unwrap();
        let conn = reg.open(round, peer, Legs::default());
        reg.admit(round, peer.ip(), &donors);
        log_in(&conn);
        for i in 0..PACKETS_PER_ROUND {
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            let kind = if i % 2 == 0 { 2 } else { 5 };
            conn.observe(Direction::Upstream, &frame(0, &clone_command(kind, rng)))
                .unwrap();
        }
        assert!(reg.session_count() > 1000, "the packets made sessions");
        conn.close(&CloseReason {
            kind: "normal",
            detail: "closed".into(),
            rejected: false,
        });
        drop(conn);
        tokio::time::advance(reg.settings().orphan_timeout + Duration::from_secs(1)).await;
        reg.expire_now();
        assert_eq!(reg.session_count(), baseline, "round {round}");
        rss.push(resident_bytes());
    }
    eprintln!("resident bytes after each round: {rss:?}");
    // The first rounds warm the allocator up; later ones must not add to it.
    let settled = rss[1];
    let last = *rss.last().unwrap();
    assert!(
        last <= settled + 4 * 1024 * 1024,
        "resident memory grew from {settled} to {last} bytes: {rss:?}"
    );
}

/// This process's resident memory (Linux).
fn resident_bytes() -> u64 {
    let statm = std::fs::read_to_string("/proc/self/statm").expect("/proc/self/statm");
    let pages: u64 = statm.split_whitespace().nth(1).unwrap().parse().unwrap();
    pages * 4096
}

/// Greeting, login, OK, COM_CLONE and its OK, as a recipient and donor exchange them.
fn log_in(conn: &ConnHandle) {
    let mut greeting = vec![10];
    greeting.extend_from_slice(b"9.7.4\0");
    greeting.extend_from_slice(&7u32.to_le_bytes());
    greeting.extend_from_slice(&[0; 9]);
    greeting.extend_from_slice(&0xffffu16.to_le_bytes());
    greeting.extend_from_slice(&[33, 2, 0, 0, 0]);
    greeting.extend_from_slice(&[0; 13]);
    let ok = [0, 0, 0, 2, 0, 0, 0];
    conn.observe(Direction::Downstream, &frame(0, &greeting))
        .unwrap();
    let mut login = 0x8200u32.to_le_bytes().to_vec();
    login.extend_from_slice(&[0; 28]);
    login.extend_from_slice(b"donor_clone\0");
    conn.observe(Direction::Upstream, &frame(1, &login))
        .unwrap();
    conn.observe(Direction::Downstream, &frame(2, &ok)).unwrap();
    conn.observe(Direction::Upstream, &frame(0, &[0x20]))
        .unwrap();
    conn.observe(Direction::Downstream, &frame(1, &ok)).unwrap();
}

/// An ATTACH (2) or ACK (5) naming clone `id`.
fn clone_command(kind: u8, id: u64) -> Vec<u8> {
    let mut body = vec![0u8; 12];
    body.extend_from_slice(&id.to_be_bytes());
    body.extend_from_slice(&(id ^ 1).to_be_bytes());
    let mut payload = vec![kind];
    payload.extend_from_slice(&[0; 4]);
    if kind == 2 {
        payload.extend_from_slice(&[0; 4]);
    }
    payload.push(ENGINE_INNODB);
    payload.extend_from_slice(&(body.len() as u32).to_le_bytes());
    payload.extend_from_slice(&body);
    if kind == 5 {
        payload.extend_from_slice(&0u32.to_le_bytes());
    }
    payload
}
