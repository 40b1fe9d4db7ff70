//! Replays of real CLONE traffic from MySQL 9.7.4 donors (`tests/captures`, described in its
//! README): the decoder reads every packet, and the session registry puts all connections of a
//! capture in one clone session with the right roles and one resume. The donor at each protocol
//! version (0x0100-0x0103), a donor error mid-clone and a REINIT the donor refuses are replayed
//! from captures the harness's protocol-level recipient recorded.

mod common;
use common::unhex;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use clone_relay::io::{Legs, Observer};
use clone_relay::metrics::Metrics;
use clone_relay::protocol::clone::{CommandKind, Stage};
use clone_relay::protocol::decoder::{Decoder, Direction, Event, Limits};
use clone_relay::protocol::{PacketHeader, Phase};
use clone_relay::session::{
    CloseReason, ConnHandle, Registry, Role, SessionSettings, SessionState,
};
use serde_json::Value;

/// A capture from `tests/captures`, one JSON value per line. A missing or unreadable capture
/// fails the test.
fn capture(name: &str) -> Vec<Value> {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/captures")
        .join(name);
    let text = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("capture {} unreadable: {e}", path.display()));
    let rows: Vec<Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).expect("capture line is JSON"))
        .collect();
    assert!(!rows.is_empty(), "capture {} is empty", path.display());
    rows
}

fn direction(row: &Value) -> Direction {
    match row["dir"].as_str() {
        Some("c2s") => Direction::Upstream,
        _ => Direction::Downstream,
    }
}

/// A captured packet as it was on the wire; payloads cut short in the capture are padded with
/// zeros to their length (only DATA blocks are, and the relay reads only their heads).
fn wire_packet(row: &Value) -> Vec<u8> {
    let len = row["len"].as_u64().unwrap() as usize;
    let mut payload = unhex(row["hex"].as_str().unwrap());
    payload.resize(len, 0);
    let mut bytes = PacketHeader {
        payload_len: len,
        seq: row["seq"].as_u64().unwrap() as u8,
    }
    .encode()
    .to_vec();
    bytes.extend(payload);
    bytes
}

/// Replays a packet capture through a registry, each packet fed in two uneven pieces.
fn replay(rows: &[Value]) -> Arc<Registry> {
    replay_with(rows, SessionSettings::default())
}

fn replay_with(rows: &[Value], settings: SessionSettings) -> Arc<Registry> {
    let registry = Arc::new(Registry::new(settings, Arc::new(Metrics::default())));
    let mut conns: BTreeMap<u64, ConnHandle> = BTreeMap::new();
    let peer: SocketAddr = "127.0.0.1:40000".parse().unwrap();
    for row in rows {
        let conn = row["conn"].as_u64();
        match (row["event"].as_str(), conn) {
            (Some("open"), Some(id)) => {
                let handle = registry.open(id, peer, Legs::default());
                registry.admit(id, peer.ip(), &["donor:3306".to_string()]);
                conns.insert(id, handle);
            }
            (Some("close"), Some(id)) => {
                if let Some(handle) = conns.remove(&id) {
                    handle.close(&CloseReason {
                        kind: "peer_reset",
                        detail: "closed in capture".into(),
                        rejected: false,
                    });
                }
            }
            (None, Some(id)) => {
                let bytes = wire_packet(row);
                let handle = &conns[&id];
                let cut = bytes.len() / 3;
                for piece in [&bytes[..cut], &bytes[cut..]] {
                    handle
                        .observe(direction(row), piece)
                        .unwrap_or_else(|v| panic!("conn {id}: {v}"));
                }
            }
            _ => {}
        }
    }
    registry
}

fn data_bytes(rows: &[Value]) -> u64 {
    rows.iter()
        .filter(|r| r["dir"] == "s2c" && r["hex"].as_str().is_some_and(|h| h.starts_with("03")))
        .map(|r| r["len"].as_u64().unwrap() - 1)
        .sum()
}

fn roles(registry: &Registry) -> Vec<(u64, Role)> {
    let view = registry.view();
    assert_eq!(view.sessions.len(), 1, "one clone session: {view:#?}");
    assert!(view.unassigned.is_empty(), "{:#?}", view.unassigned);
    view.sessions[0]
        .connections
        .iter()
        .map(|c| (c.id, c.role))
        .collect()
}

#[test]
fn reset_mid_transfer_is_one_session_resumed_once() {
    let rows = capture("clone-9.7.4-reset-mid-transfer.jsonl");
    let registry = replay(&rows);
    assert_eq!(
        roles(&registry),
        [
            (1, Role::Main),
            (2, Role::Aux),
            (3, Role::Main),
            (4, Role::Aux)
        ]
    );
    let session = &registry.view().sessions[0];
    assert_eq!(session.resume_count, 1);
    assert_eq!(session.state, SessionState::Completed);
    assert_eq!(session.data_bytes, data_bytes(&rows));
    assert_eq!(session.donor_resume_timeout_secs, Some(5 * 60));
    let clone = session.clone.expect("clone id");
    assert_eq!((clone.clone_id, clone.snapshot_id), (0x1b, 0x1c));
    let states: Vec<SessionState> = session.history.iter().map(|c| c.to).collect();
    assert_eq!(
        states,
        [
            SessionState::Initializing,
            SessionState::Transferring,
            SessionState::Resuming,
            SessionState::Transferring,
            SessionState::Completed
        ]
    );
    let progress = session.progress.as_ref().expect("progress");
    assert_eq!(progress.percent, Some(100.0), "{progress:?}");
}

#[test]
fn every_protocol_version_is_followed_with_its_version_shown() {
    for version in ["0x0100", "0x0101", "0x0102", "0x0103"] {
        let rows = capture(&format!("clone-9.7.4-protocol-{version}.jsonl"));
        let registry = replay(&rows);
        assert_eq!(roles(&registry), [(1, Role::Main), (2, Role::Aux)]);
        let session = &registry.view().sessions[0];
        assert_eq!(session.protocol_version.as_deref(), Some(version));
        assert_eq!(session.state, SessionState::Completed, "{version}");
        assert_eq!(session.not_followed, None, "{version}");
        assert_eq!(session.data_bytes, data_bytes(&rows), "{version}");
        // The network-failure timeout comes in CONFIG_V3, from 0x0102 on.
        let timeout = session.donor_resume_timeout_secs;
        assert_eq!(
            timeout.is_some(),
            version >= "0x0102",
            "{version}: {timeout:?}"
        );
        let progress = session.progress.as_ref().expect("progress");
        assert_eq!(progress.percent, Some(100.0), "{version}: {progress:?}");
    }
}

#[test]
fn a_donor_error_fails_the_session_and_the_connections_leave_the_clone_protocol() {
    // The recipient acknowledged the end of the file copy with an error; the donor sent
    // COM_RES_ERROR on main and answered each COM_EXIT with COMPLETE.
    let rows = capture("clone-9.7.4-donor-error.jsonl");
    let registry = replay(&rows);
    assert_eq!(roles(&registry), [(1, Role::Main), (2, Role::Aux)]);
    let session = &registry.view().sessions[0];
    assert_eq!(session.state, SessionState::Failed);
    let error = session.error.as_ref().expect("the donor's error");
    assert_eq!(
        (error.errno, error.message.as_str()),
        (
            1815,
            "Internal error: Innodb Clone error in concurrent task"
        )
    );
    // After COM_EXIT and its COMPLETE, both are classic connections again (their COM_QUIT).
    let phases: Vec<Phase> = session.connections.iter().map(|c| c.phase).collect();
    assert_eq!(phases, [Phase::Command, Phase::Command]);
    assert_eq!(session.not_followed, None);
    assert_eq!(session.data_bytes, data_bytes(&rows));
}

#[test]
fn a_refused_reinit_is_a_failed_session_with_the_donors_reason() {
    let rows = capture("clone-9.7.4-reinit-refused.jsonl");
    let registry = replay(&rows);
    assert_eq!(roles(&registry), [(1, Role::Main)]);
    let session = &registry.view().sessions[0];
    assert_eq!(session.resume_count, 1);
    assert_eq!(session.state, SessionState::Failed);
    let error = session.error.as_ref().expect("the donor's refusal");
    assert_eq!(
        (error.errno, error.message.as_str()),
        (
            1815,
            "Internal error: Innodb Clone Restart could not find existing clone"
        )
    );
}

#[test]
fn workers_and_their_reconnects_join_the_session() {
    let rows = capture("clone-9.7.4-workers-reset.jsonl");
    let registry = replay(&rows);
    let roles = roles(&registry);
    let count = |role| roles.iter().filter(|(_, r)| *r == role).count();
    assert_eq!(
        (count(Role::Main), count(Role::Aux), count(Role::Worker)),
        (2, 2, 6)
    );
    assert_eq!(roles[0], (1, Role::Main));
    assert_eq!(roles[5], (6, Role::Main));
    let session = &registry.view().sessions[0];
    assert_eq!(session.resume_count, 1);
    assert_eq!(session.state, SessionState::Completed);
    assert_eq!(session.data_bytes, data_bytes(&rows));
    assert!(
        session.resent_bytes > 0,
        "blocks in flight at the reset are sent again"
    );
    let stages: Vec<Stage> = session.stages.iter().map(|c| c.to).collect();
    assert_eq!(
        stages,
        [
            Stage::Init,
            Stage::FileCopy,
            Stage::PageCopy,
            Stage::RedoCopy,
            Stage::Done
        ]
    );
}

#[test]
fn compressed_framing_is_decoded() {
    let rows = capture("clone-9.7.4-compressed-raw.jsonl");
    // Raw reads are cut to 64 bytes in this capture, so the login exchange (longer) comes from
    // the uncompressed capture's greeting and this capture's login head, padded; after that,
    // every read that the capture kept whole is fed until the first cut one in each direction.
    let plain = capture("clone-9.7.4-reset-mid-transfer.jsonl");
    let greeting = wire_packet(&plain[1]);
    let mut per_conn: BTreeMap<u64, Vec<Event>> = BTreeMap::new();
    for conn in [1u64, 2] {
        let mut decoder = Decoder::new(Limits::default());
        let mut events = Vec::new();
        let mut cut = false;
        let mut first_c2s = true;
        decoder
            .feed(Direction::Downstream, &greeting, &mut |e| events.push(e))
            .unwrap();
        for row in rows
            .iter()
            .filter(|r| r["conn"] == conn && r["hex"].is_string())
        {
            let dir = direction(row);
            let raw_len = row["raw_len"].as_u64().unwrap() as usize;
            let mut bytes = unhex(row["hex"].as_str().unwrap());
            if dir == Direction::Downstream && bytes.len() < raw_len && bytes[4] == 0x0a {
                continue; // the cut greeting, replaced above
            }
            if dir == Direction::Upstream && first_c2s {
                first_c2s = false;
                bytes.resize(raw_len, 0); // the login request: only its head matters
            }
            cut |= bytes.len() < raw_len;
            if cut {
                break;
            }
            decoder
                .feed(dir, &bytes, &mut |e| events.push(e))
                .unwrap_or_else(|v| panic!("conn {conn}: {v}"));
        }
        per_conn.insert(conn, events);
    }
    let commands = |conn: u64| -> Vec<CommandKind> {
        per_conn[&conn]
            .iter()
            .filter_map(|e| match e {
                Event::CloneCommand(c) => Some(c.kind),
                _ => None,
            })
            .collect()
    };
    assert!(per_conn[&1].contains(&Event::Login {
        user: "donor_clone".into(),
        compressed: true
    }));
    assert!(per_conn[&1].contains(&Event::CloneStarted));
    assert_eq!(commands(1), [CommandKind::Init]);
    // The aux connection's reads are all short enough to have been kept whole.
    let aux = commands(2);
    assert_eq!(aux.last(), Some(&CommandKind::Exit));
    assert!(aux[..aux.len() - 1].iter().all(|&k| k == CommandKind::Ack));
    assert!(aux.len() >= 2);
    let acked_clone = per_conn[&2].iter().find_map(|e| match e {
        Event::CloneCommand(c) => clone_relay::protocol::clone::innodb_clone_id(&c.locators),
        _ => None,
    });
    assert!(acked_clone.is_some(), "ACK carries the clone's locator");
}

#[tokio::test(start_paused = true)]
async fn a_resume_that_dies_before_data_still_fails_in_time() {
    let rows = capture("clone-9.7.4-reset-mid-transfer.jsonl");
    // Up to the resumed main's REINIT (conn 3), then conn 3 and its aux close.
    let reinit = rows
        .iter()
        .position(|r| r["conn"] == 3 && r["hex"].as_str().is_some_and(|h| h.starts_with("03")))
        .unwrap();
    let mut cut: Vec<Value> = rows[..=reinit].to_vec();
    for conn in [3, 4] {
        cut.push(serde_json::json!({"conn": conn, "event": "close"}));
    }
    let settings = SessionSettings {
        resume_timeout: std::time::Duration::from_millis(10),
        ..SessionSettings::default()
    };
    let registry = replay_with(&cut, settings);
    assert_eq!(registry.view().sessions[0].state, SessionState::Resuming);
    tokio::time::advance(std::time::Duration::from_millis(30)).await;
    registry.expire_now();
    let session = &registry.view().sessions[0];
    assert_eq!(session.state, SessionState::Failed);
    assert!(
        session
            .error
            .as_ref()
            .unwrap()
            .message
            .contains("did not resume")
    );
}
