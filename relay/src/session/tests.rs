//! The registry on its own, with tokio's clock paused: every event, expiry, admission, bounds.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use super::*;
use crate::io::Legs;
use crate::protocol::Phase;
use crate::protocol::clone::{
    CloneId, Command, CommandKind, Descriptor, ENGINE_INNODB, Locator, Stage,
};
use crate::protocol::decoder::Event;

const DONORS: [&str; 2] = ["donor-a:3306", "donor-b:3306"];
const SECOND: Duration = Duration::from_secs(1);

fn registry() -> Arc<Registry> {
    Arc::new(Registry::new(
        SessionSettings::default(),
        Arc::new(Metrics::default()),
    ))
}

fn donors() -> Vec<String> {
    DONORS.iter().map(|d| d.to_string()).collect()
}

fn peer(ip: &str, port: u16) -> SocketAddr {
    SocketAddr::new(ip.parse().unwrap(), port)
}

/// A connection from `ip`, admitted among the two donors.
fn connect(reg: &Arc<Registry>, id: ConnId, ip: &str) -> (ConnHandle, Admitted) {
    let handle = reg.open(id, peer(ip, 40000 + id as u16), Legs::default());
    let admitted = reg.admit(id, ip.parse().unwrap(), &donors());
    (handle, admitted)
}

fn clone_id(n: u64) -> CloneId {
    CloneId {
        clone_id: n,
        snapshot_id: n + 1000,
    }
}

fn command(kind: CommandKind, clone: Option<CloneId>) -> Event {
    Event::CloneCommand(Command {
        kind,
        version: Some(0x0103),
        locators: vec![Locator {
            engine: ENGINE_INNODB,
            id: clone,
        }],
    })
}

fn locators(clone: CloneId) -> Event {
    Event::CloneLocators(vec![Locator {
        engine: ENGINE_INNODB,
        id: Some(clone),
    }])
}

fn data_desc(block: u32) -> Event {
    Event::CloneDescriptor(Descriptor::Data {
        stage: Stage::FileCopy,
        task: 0,
        chunk: 1,
        block,
        file: 0,
        bytes: 1 << 20,
    })
}

fn send(reg: &Registry, conn: ConnId, events: Vec<Event>) {
    reg.apply(conn, events, Phase::Clone);
}

fn lost(reg: &Registry, conn: ConnId) {
    reg.close(
        conn,
        &CloseReason {
            kind: "peer_reset",
            detail: "reset".into(),
            rejected: false,
        },
    );
}

fn only_session(reg: &Registry) -> SessionView {
    let view = reg.view();
    assert_eq!(view.sessions.len(), 1, "{:?}", view.sessions);
    view.sessions.into_iter().next().unwrap()
}

/// INIT, its locators and EXECUTE on `main`; an aux with ACK; a worker with ATTACH.
fn start_clone(reg: &Arc<Registry>, clone: CloneId) -> [ConnHandle; 3] {
    let (main, _) = connect(reg, 1, "10.0.0.1");
    send(
        reg,
        1,
        vec![command(CommandKind::Init, None), locators(clone)],
    );
    let (aux, _) = connect(reg, 2, "10.0.0.1");
    send(reg, 2, vec![command(CommandKind::Ack, Some(clone))]);
    send(reg, 1, vec![command(CommandKind::Execute, None)]);
    let (worker, _) = connect(reg, 3, "10.0.0.1");
    send(reg, 3, vec![command(CommandKind::Attach, Some(clone))]);
    [main, aux, worker]
}

#[tokio::test(start_paused = true)]
async fn every_event_lands_in_the_session() {
    let reg = registry();
    let clone = clone_id(7);
    let _conns = start_clone(&reg, clone);
    let s = only_session(&reg);
    assert_eq!(s.state, SessionState::Transferring);
    assert_eq!(s.clone, Some(clone));
    assert_eq!(s.upstream, DONORS[0]);
    let roles: Vec<Role> = s.connections.iter().map(|c| c.role).collect();
    assert_eq!(roles, [Role::Main, Role::Aux, Role::Worker]);

    send(
        &reg,
        1,
        vec![
            Event::CloneDescriptor(Descriptor::State {
                stage: Stage::FileCopy,
                task: 0,
                estimate_bytes: 4 << 20,
                is_start: true,
            }),
            data_desc(1),
            Event::CloneData { bytes: 1 << 20 },
            Event::DonorConfig {
                name: "clone_donor_timeout_after_network_failure".into(),
                value: "99".into(),
            },
        ],
    );
    send(
        &reg,
        3,
        vec![data_desc(2), Event::CloneData { bytes: 1 << 20 }],
    );
    let s = only_session(&reg);
    assert_eq!(s.data_bytes, 2 << 20);
    assert_eq!(s.stage_bytes[&Stage::FileCopy], 2 << 20);
    let progress = s.progress.unwrap();
    assert_eq!(progress.stage, Stage::FileCopy);
    assert_eq!(progress.percent, Some(50.0));
    // A donor setting above MySQL's maximum is clamped to 30 minutes.
    assert_eq!(s.donor_resume_timeout_secs, Some(30 * 60));

    // A worker's error is recorded; only the main connection's ends the clone.
    send(
        &reg,
        3,
        vec![Event::CloneError {
            errno: 3862,
            message: "worker".into(),
        }],
    );
    assert_eq!(only_session(&reg).state, SessionState::Transferring);
    send(&reg, 1, vec![Event::CloneComplete]);
    let s = only_session(&reg);
    assert_eq!(s.state, SessionState::Completed);
    assert_eq!(s.progress.unwrap().percent, Some(100.0));
    assert_eq!(s.error.unwrap().errno, 3862);
}

#[tokio::test(start_paused = true)]
async fn a_donor_error_on_main_fails_the_clone() {
    let reg = registry();
    let _conns = start_clone(&reg, clone_id(1));
    send(
        &reg,
        1,
        vec![Event::CloneError {
            errno: 1158,
            message: "network".into(),
        }],
    );
    let s = only_session(&reg);
    assert_eq!(s.state, SessionState::Failed);
    assert_eq!(s.error.unwrap().message, "network");
}

/// The donor's ERROR 3872 on `conn` of a fresh clone whose donor legs run TLS or not.
fn encryption_refused(tls_upstream: bool) -> SessionView {
    let reg = registry();
    let _conns = start_clone(&reg, clone_id(5));
    for conn in 1..=3 {
        reg.set_tls(conn, tls_upstream, tls_upstream);
    }
    send(
        &reg,
        1,
        vec![Event::CloneError {
            errno: ER_CLONE_ENCRYPTION,
            message: "Clone needs SSL connection for encrypted table.".into(),
        }],
    );
    only_session(&reg)
}

#[tokio::test(start_paused = true)]
async fn encrypted_data_refused_over_a_plain_donor_leg_names_the_fix() {
    let s = encryption_refused(false);
    assert_eq!(s.state, SessionState::Failed);
    let error = s.error.unwrap();
    assert_eq!(error.errno, 3872);
    assert_eq!(
        error.message,
        "Clone needs SSL connection for encrypted table."
    );
    let reason = error
        .reason
        .expect("a reason for 3872 on a plain donor leg");
    assert_eq!(reason, ENCRYPTED_OVER_PLAIN_DONOR_LEG);
    assert!(reason.contains("--server-tls-mode"), "{reason}");

    // A later error the relay does not explain leaves the cause in place.
    let reg = registry();
    let _conns = start_clone(&reg, clone_id(6));
    let refused = Event::CloneError {
        errno: ER_CLONE_ENCRYPTION,
        message: "Clone needs SSL connection for encrypted table.".into(),
    };
    send(&reg, 3, vec![refused]);
    send(
        &reg,
        1,
        vec![Event::CloneError {
            errno: 1158,
            message: "network".into(),
        }],
    );
    let s = only_session(&reg);
    assert_eq!(s.state, SessionState::Failed);
    let error = s.error.unwrap();
    assert_eq!(error.errno, 3872);
    assert_eq!(
        error.reason.as_deref(),
        Some(ENCRYPTED_OVER_PLAIN_DONOR_LEG)
    );

    // The same error over a TLS donor leg is not the relay's doing: no reason is made up.
    let s = encryption_refused(true);
    assert_eq!(s.state, SessionState::Failed);
    assert_eq!(s.error.unwrap().reason, None);
}

#[tokio::test(start_paused = true)]
async fn a_resume_is_recorded_with_its_outage_and_the_blocks_sent_again() {
    let reg = registry();
    let clone = clone_id(3);
    let [main, aux, worker] = start_clone(&reg, clone);
    send(
        &reg,
        1,
        vec![data_desc(10), Event::CloneData { bytes: 1 << 20 }],
    );
    lost(&reg, 1);
    drop((main, aux, worker));
    assert_eq!(only_session(&reg).state, SessionState::Resuming);

    tokio::time::advance(2 * SECOND).await;
    let (_main, admitted) = connect(&reg, 4, "10.0.0.1");
    assert_eq!(
        admitted.donors,
        [DONORS[0]],
        "a resume goes to its donor only"
    );
    assert!(admitted.resuming && admitted.long_wait);
    send(&reg, 4, vec![command(CommandKind::Reinit, Some(clone))]);
    send(&reg, 4, vec![command(CommandKind::Execute, None)]);
    tokio::time::advance(SECOND).await;
    // The block that was in flight comes again, then a new one.
    send(
        &reg,
        4,
        vec![data_desc(10), Event::CloneData { bytes: 1 << 20 }],
    );
    send(
        &reg,
        4,
        vec![data_desc(11), Event::CloneData { bytes: 1 << 20 }],
    );
    let s = only_session(&reg);
    assert_eq!(s.state, SessionState::Transferring);
    assert_eq!(s.resume_count, 1);
    assert_eq!(s.resumes[0].outage_ms, 2000);
    assert_eq!(s.resumes[0].resumed_after_ms, Some(3000));
    assert_eq!(s.resent_bytes, 1 << 20);
    assert_eq!(s.resumes[0].resent_bytes, 1 << 20);
}

#[tokio::test(start_paused = true)]
async fn a_session_never_resumed_fails_after_the_donors_patience() {
    let reg = registry();
    let [main, ..] = start_clone(&reg, clone_id(4));
    send(
        &reg,
        1,
        vec![Event::DonorConfig {
            name: "clone_donor_timeout_after_network_failure".into(),
            value: "1".into(),
        }],
    );
    lost(&reg, 1);
    drop(main);
    // One minute of patience plus the margin for the recipient's last try.
    tokio::time::advance(119 * SECOND).await;
    reg.expire_now();
    assert_eq!(only_session(&reg).state, SessionState::Resuming);
    tokio::time::advance(2 * SECOND).await;
    reg.expire_now();
    let s = only_session(&reg);
    assert_eq!(s.state, SessionState::Failed);
    assert!(
        s.error
            .unwrap()
            .message
            .contains("did not resume within 120 s")
    );
}

#[tokio::test(start_paused = true)]
async fn sessions_without_a_main_connection_expire_and_ended_ones_are_bounded() {
    let reg = registry();
    let (_aux, _) = connect(&reg, 1, "10.0.0.9");
    for n in 0..100 {
        send(
            &reg,
            1,
            vec![command(CommandKind::Attach, Some(clone_id(n)))],
        );
    }
    // The idle ones beyond the bound were forgotten as they appeared.
    assert_eq!(reg.session_count(), super::IDLE_STUBS_PER_ADDRESS + 1);
    tokio::time::advance(reg.settings().orphan_timeout + SECOND).await;
    reg.expire_now();
    // The one the connection is in now stays while the connection lives.
    assert_eq!(reg.session_count(), 1);

    let reg = registry();
    for n in 0..50u64 {
        let id = 10 + n;
        let (conn, _) = connect(&reg, id, "10.0.0.1");
        send(&reg, id, vec![command(CommandKind::Init, None)]);
        send(&reg, id, vec![command(CommandKind::Execute, None)]);
        send(&reg, id, vec![Event::CloneComplete]);
        // COM_EXIT and its COMPLETE take the connection back to the command phase.
        let exit = vec![command(CommandKind::Exit, None), Event::CloneComplete];
        reg.apply(id, exit, Phase::Command);
        drop(conn);
    }
    reg.expire_now();
    assert_eq!(reg.session_count(), SessionSettings::default().keep_ended);
}

#[tokio::test(start_paused = true)]
async fn reading_the_sessions_and_their_counts_changes_nothing() {
    let reg = registry();
    let (_aux, _) = connect(&reg, 1, "10.0.0.9");
    for n in 0..3 {
        send(
            &reg,
            1,
            vec![command(CommandKind::Attach, Some(clone_id(n)))],
        );
    }
    // Past the orphans' expiry by the clock: the reads still see them, twice alike.
    tokio::time::advance(reg.settings().orphan_timeout + SECOND).await;
    let first = (reg.view().sessions.len(), reg.count_by_state());
    let second = (reg.view().sessions.len(), reg.count_by_state());
    assert_eq!(first, second);
    assert_eq!(first.0, 3, "a read expired sessions");
    assert_eq!(reg.session_count(), 3);
    // Expiry on its own clock does.
    reg.expire_now();
    assert_eq!(reg.view().sessions.len(), 1);
}

#[tokio::test(start_paused = true)]
async fn per_session_lists_stay_bounded() {
    let reg = registry();
    let clone = clone_id(5);
    let _conns = start_clone(&reg, clone);
    for round in 0..200u64 {
        let id = 100 + round;
        let (_conn, _) = connect(&reg, id, "10.0.0.1");
        send(&reg, id, vec![command(CommandKind::Attach, Some(clone))]);
        send(
            &reg,
            id,
            vec![data_desc(round as u32), Event::CloneData { bytes: 10 }],
        );
        lost(&reg, id);
    }
    let s = only_session(&reg);
    assert!(s.connections.len() <= 64 + 3, "{}", s.connections.len());
    assert_eq!(s.connections_not_listed, 200 - 64);
}

/// Two recipients that start clones at the same instant land on different free donors, and
/// each one's later connections follow its clone.
#[tokio::test(start_paused = true)]
async fn simultaneous_clones_get_different_donors() {
    for run in 0..50u64 {
        let reg = registry();
        let a = tokio::spawn({
            let reg = reg.clone();
            async move { connect(&reg, 1, "10.0.1.1") }
        });
        let b = tokio::spawn({
            let reg = reg.clone();
            async move { connect(&reg, 2, "10.0.1.2") }
        });
        let ((_ca, first), (_cb, second)) = (a.await.unwrap(), b.await.unwrap());
        assert_ne!(first.donors[0], second.donors[0], "run {run}");
        // The aux connection of the first recipient follows its main, before any INIT.
        let (_aux, aux) = connect(&reg, 3, "10.0.1.1");
        assert_eq!(aux.donors, [first.donors[0].clone()], "run {run}");
    }
}

/// A link lost after the clone completed, before COM_EXIT: the donor may hold the clone, so new
/// clones go to the other donor meanwhile.
#[tokio::test(start_paused = true)]
async fn a_donor_holding_a_stale_clone_is_avoided() {
    let reg = registry();
    let [main, aux, worker] = start_clone(&reg, clone_id(6));
    send(&reg, 1, vec![Event::CloneComplete]);
    lost(&reg, 1);
    drop((main, aux, worker));
    let stale = reg.stale_donors();
    assert_eq!(stale.len(), 1);
    assert_eq!(stale[0].upstream, DONORS[0]);
    assert_eq!(stale[0].holds_for_ms, 5 * 60 * 1000);

    let (_next, admitted) = connect(&reg, 10, "10.0.2.1");
    assert_eq!(admitted.donors[0], DONORS[1]);
    tokio::time::advance(5 * 60 * SECOND).await;
    assert!(reg.stale_donors().is_empty());
}

/// The long greeting wait of a resume is granted to about as many sockets as the clone had.
#[tokio::test(start_paused = true)]
async fn the_greeting_wait_budget_of_a_resume_is_bounded() {
    let reg = registry();
    let [main, aux, worker] = start_clone(&reg, clone_id(8));
    lost(&reg, 1);
    drop((main, aux, worker));
    let granted: Vec<bool> = (0..20)
        .map(|i| {
            let (conn, admitted) = connect(&reg, 100 + i, "10.0.0.1");
            std::mem::forget(conn);
            admitted.long_wait
        })
        .collect();
    assert_eq!(granted.iter().filter(|&&g| g).count(), 3, "{granted:?}");
    // A greeting gives the slot back.
    reg.greeted(100);
    let (_conn, admitted) = connect(&reg, 200, "10.0.0.1");
    assert!(admitted.long_wait);
}

/// A long clone that ends after many shorter ones is kept (the oldest ended go first, by when
/// they ended), and its recipient leaves the affinity table.
#[tokio::test(start_paused = true)]
async fn a_clone_that_just_ended_is_kept_and_its_recipient_forgotten() {
    let dir = std::env::temp_dir().join(format!("clone-relay-ended-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let store = affinity::AffinityStore::load(&dir, Duration::from_secs(3600));
    let reg = Arc::new(Registry::with_affinity(
        SessionSettings::default(),
        Arc::new(Metrics::default()),
        store,
    ));
    let (long, _) = connect(&reg, 1, "10.9.9.9");
    send(&reg, 1, vec![command(CommandKind::Init, None)]);
    send(&reg, 1, vec![command(CommandKind::Execute, None)]);
    reg.expire_now();
    let remembered = std::fs::read_to_string(dir.join(affinity::FILE_NAME)).unwrap();
    assert!(remembered.contains("10.9.9.9"), "{remembered}");
    for n in 0..40u64 {
        let id = 100 + n;
        let (conn, _) = connect(&reg, id, "10.0.0.1");
        send(&reg, id, vec![command(CommandKind::Init, None)]);
        send(&reg, id, vec![command(CommandKind::Execute, None)]);
        send(&reg, id, vec![Event::CloneComplete]);
        let exit = vec![command(CommandKind::Exit, None), Event::CloneComplete];
        reg.apply(id, exit, Phase::Command);
        drop(conn);
        tokio::time::advance(SECOND).await;
    }
    send(&reg, 1, vec![Event::CloneComplete]);
    let exit = vec![command(CommandKind::Exit, None), Event::CloneComplete];
    reg.apply(1, exit, Phase::Command);
    drop(long);
    reg.expire_now();
    let view = reg.view();
    let first = view.sessions.iter().find(|s| s.id == 1);
    assert_eq!(first.map(|s| s.state), Some(SessionState::Completed));
    let remembered = std::fs::read_to_string(dir.join(affinity::FILE_NAME)).unwrap();
    assert!(!remembered.contains("10.9.9.9"), "{remembered}");
    std::fs::remove_dir_all(&dir).unwrap();
}

/// A fallback donor is decided again under the lock: one another clone took meanwhile is not
/// picked while a free one is left.
#[tokio::test(start_paused = true)]
async fn the_next_donor_skips_one_taken_meanwhile() {
    let three: Vec<String> = ["a:1", "b:1", "c:1"]
        .iter()
        .map(|d| d.to_string())
        .collect();
    let reg = registry();
    let _x = reg.open(1, peer("10.0.3.1", 1), Legs::default());
    let x = reg.admit(1, "10.0.3.1".parse().unwrap(), &three);
    let _y = reg.open(2, peer("10.0.3.2", 1), Legs::default());
    let y = reg.admit(2, "10.0.3.2".parse().unwrap(), &three);
    assert_eq!((x.donors[0].as_str(), y.donors[0].as_str()), ("a:1", "b:1"));
    // a:1 is down: x moves on, past b:1 (y's) to c:1.
    let next = reg.reserve_next(1, &x.donors, &["a:1".to_string()]);
    assert_eq!(next.as_deref(), Some("c:1"));
}

/// After a restart, every reconnect of a remembered recipient draws from the restored budget,
/// not only the first one.
#[tokio::test(start_paused = true)]
async fn every_reconnect_after_a_restart_may_wait_for_its_donor() {
    let dir = std::env::temp_dir().join(format!("clone-relay-restored-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    {
        let mut store = affinity::AffinityStore::load(&dir, Duration::from_secs(3600));
        store.keep("10.0.4.1".parse().unwrap(), DONORS[1]);
        store.take_changes().unwrap().save();
    }
    let store = affinity::AffinityStore::load(&dir, Duration::from_secs(3600));
    let reg = Arc::new(Registry::with_affinity(
        SessionSettings::default(),
        Arc::new(Metrics::default()),
        store,
    ));
    let (_first, first) = connect(&reg, 1, "10.0.4.1");
    let (_second, second) = connect(&reg, 2, "10.0.4.1");
    for admitted in [&first, &second] {
        assert_eq!(admitted.donors, [DONORS[1]]);
        assert!(admitted.resuming && admitted.long_wait, "{admitted:?}");
    }
    // Another recipient is not affected.
    let (_other, other) = connect(&reg, 3, "10.0.4.2");
    assert!(!other.resuming && !other.long_wait);
    std::fs::remove_dir_all(&dir).unwrap();
}
