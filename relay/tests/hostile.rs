//! Hostile input against the session registry: rounds of 10 000 clone commands (INIT, REINIT,
//! ATTACH and ACK with random clone ids) spread over 40 authenticated connections from one
//! address, as if a donor accepted every one. The sessions that moved no data stay within
//! their bound at every packet; once the connections close and the orphan timeout passes the
//! registry holds no more than the bound of idle stubs; and the process's resident memory does
//! not grow from round to round. (Its own test binary, so no other test shares the process.)
//! `harness/tests/e2e/hostile_sessions.rs` sends the same rounds through the relay's socket.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use clone_relay::io::{Legs, Observer};
use clone_relay::metrics::Metrics;
use clone_relay::protocol::clone::ENGINE_INNODB;
use clone_relay::protocol::{Direction, frame};
use clone_relay::session::{
    CloseReason, ConnHandle, IDLE_STUBS, IDLE_STUBS_PER_ADDRESS, Registry, SessionSettings,
};

const ROUNDS: u64 = 6;
const PACKETS_PER_ROUND: u32 = 10_000;
const CONNECTIONS: u64 = 40;
/// INIT, ATTACH, REINIT, ACK.
const KINDS: [u8; 4] = [1, 2, 3, 5];

#[tokio::test(start_paused = true)]
async fn clone_commands_for_clones_that_never_move_data_stay_bounded() {
    let reg = Arc::new(Registry::new(
        SessionSettings::default(),
        Arc::new(Metrics::default()),
    ));
    let donors = vec!["donor:3306".to_string()];
    let mut rng = 0x2545_F491_4F6C_DD1Du64;
    let mut rss = Vec::new();
    let mut most = 0;
    for round in 0..ROUNDS {
        let conns: Vec<ConnHandle> = (0..CONNECTIONS)
            .map(|i| {
                let id = round * CONNECTIONS + i;
                let peer: SocketAddr = format!("10.0.9.9:{}", 40000 + i).parse().unwrap();
                let conn = reg.open(id, peer, Legs::default());
                reg.admit(id, peer.ip(), &donors);
                log_in(&conn);
                conn
            })
            .collect();
        for i in 0..PACKETS_PER_ROUND {
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            let kind = KINDS[i as usize % KINDS.len()];
            let conn = &conns[(rng % CONNECTIONS) as usize];
            conn.observe(Direction::Upstream, &frame(0, &clone_command(kind, rng)))
                .unwrap();
            // Each open connection is in one session; the rest are idle stubs.
            most = most.max(reg.session_count());
            assert!(
                reg.session_count() <= IDLE_STUBS_PER_ADDRESS + CONNECTIONS as usize,
                "round {round}, packet {i}: {} sessions",
                reg.session_count()
            );
        }
        for conn in conns {
            conn.close(&CloseReason {
                kind: "normal",
                detail: "closed".into(),
                rejected: false,
            });
        }
        tokio::time::advance(reg.settings().orphan_timeout + Duration::from_secs(1)).await;
        reg.expire_now();
        assert!(
            reg.session_count() <= IDLE_STUBS_PER_ADDRESS,
            "round {round}: {} sessions left",
            reg.session_count()
        );
        rss.push(resident_bytes());
    }
    eprintln!(
        "most sessions at once {most} (bound {IDLE_STUBS_PER_ADDRESS} idle per address, \
         {IDLE_STUBS} in all, plus {CONNECTIONS} connections); resident bytes after each round: {rss:?}"
    );
    // The first rounds warm the allocator up; later ones must not add to it.
    let settled = rss[1];
    let last = *rss.last().unwrap();
    assert!(
        last <= settled + 4 * 1024 * 1024,
        "resident memory grew from {settled} to {last} bytes: {rss:?}"
    );
}

#[tokio::test(start_paused = true)]
async fn idle_stubs_from_many_addresses_stay_within_the_total() {
    let reg = Arc::new(Registry::new(
        SessionSettings::default(),
        Arc::new(Metrics::default()),
    ));
    let donors = vec!["donor:3306".to_string()];
    for i in 0..2_000u64 {
        let peer: SocketAddr = format!("10.1.{}.{}:4000", i / 250, i % 250 + 1)
            .parse()
            .unwrap();
        let conn = reg.open(i, peer, Legs::default());
        reg.admit(i, peer.ip(), &donors);
        log_in(&conn);
        conn.observe(Direction::Upstream, &frame(0, &clone_command(1, i + 1)))
            .unwrap();
        conn.close(&CloseReason {
            kind: "normal",
            detail: "closed".into(),
            rejected: false,
        });
        assert!(
            reg.session_count() <= IDLE_STUBS,
            "after {i}: {}",
            reg.session_count()
        );
    }
    assert_eq!(reg.session_count(), IDLE_STUBS, "the newest are kept");
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

/// An INIT (1), ATTACH (2), REINIT (3) or ACK (5) naming clone `id`.
fn clone_command(kind: u8, id: u64) -> Vec<u8> {
    let mut body = vec![0u8; 12];
    body.extend_from_slice(&id.to_be_bytes());
    body.extend_from_slice(&(id ^ 1).to_be_bytes());
    let mut payload = vec![kind];
    payload.extend_from_slice(&[0; 4]);
    if kind != 5 {
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
