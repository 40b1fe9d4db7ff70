//! What the registry holds: live connections, clone sessions and their bounded histories.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::net::IpAddr;
use std::time::Duration;

use serde::Serialize;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::info;

use super::{ConnId, SessionId};
use crate::io::Legs;
use crate::protocol::Phase;
use crate::protocol::clone::{CloneId, CommandKind, Stage};

/// Samples of the data rate older than this are dropped.
const RATE_WINDOW: Duration = Duration::from_secs(5);
const RATE_SAMPLE_EVERY: Duration = Duration::from_millis(250);
/// Closed connections, resumes and state changes kept per session; older ones are counted only.
pub(super) const KEEP_PER_SESSION: usize = 64;
/// Recent DATA blocks remembered per session, to count the blocks a resume sends again.
const KEEP_RECENT_BLOCKS: usize = 256;

/// What a connection does in its clone.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    /// Not (yet) known: before its first clone command.
    Unknown,
    /// Sends INIT or REINIT, then EXECUTE, and carries data.
    Main,
    /// Carries only ACKs; may sit idle for a whole stage.
    Aux,
    /// Sends ATTACH, then EXECUTE, and carries data.
    Worker,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Unknown => "unknown",
            Role::Main => "main",
            Role::Aux => "aux",
            Role::Worker => "worker",
        }
    }
}

/// Where a clone session is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum SessionState {
    Initializing,
    Transferring,
    /// The main connection was lost; waiting for the recipient's REINIT.
    Resuming,
    Completed,
    Failed,
    /// A message the relay does not know came on the main connection, so the relay stopped
    /// reading the clone there; the main connection has ended, and how the clone ended is the
    /// recipient's to say.
    Unfollowed,
}

impl SessionState {
    pub const ALL: [SessionState; 6] = [
        SessionState::Initializing,
        SessionState::Transferring,
        SessionState::Resuming,
        SessionState::Completed,
        SessionState::Failed,
        SessionState::Unfollowed,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            SessionState::Initializing => "initializing",
            SessionState::Transferring => "transferring",
            SessionState::Resuming => "resuming",
            SessionState::Completed => "completed",
            SessionState::Failed => "failed",
            SessionState::Unfollowed => "unfollowed",
        }
    }

    pub fn ended(self) -> bool {
        matches!(
            self,
            SessionState::Completed | SessionState::Failed | SessionState::Unfollowed
        )
    }
}

/// Whose greeting-wait budget a connection draws from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum WaitSlot {
    /// A resuming session's: as many as it had connections at its peak.
    Session(SessionId),
    /// A clone known only from the affinity file of an earlier run.
    Restored,
}

/// One connection as `/sessions` shows it.
#[derive(Debug, Clone, Serialize)]
pub struct ConnRecord {
    pub id: ConnId,
    pub peer: String,
    pub role: Role,
    pub phase: Phase,
    pub user: Option<String>,
    /// The donor's id for this connection (passed through unchanged).
    pub donor_connection_id: Option<u32>,
    pub opened_at_ms: u64,
    pub closed_at_ms: Option<u64>,
    pub bytes_from_downstream: u64,
    pub bytes_from_upstream: u64,
    pub data_bytes: u64,
    /// TLS on the recipient's leg, and on the donor's.
    pub tls_downstream: bool,
    pub tls_upstream: bool,
    pub close_reason: Option<String>,
}

/// A resume of a session.
#[derive(Debug, Clone, Serialize)]
pub struct ResumeRecord {
    /// Since the session started.
    pub at_ms: u64,
    /// From losing the main connection to the REINIT.
    pub outage_ms: u64,
    /// From losing the main connection to the first data after the REINIT.
    pub resumed_after_ms: Option<u64>,
    /// Data bytes the donor sent again after this resume (blocks already carried once).
    pub resent_bytes: u64,
}

/// A state or stage change, in order.
#[derive(Debug, Clone, Serialize)]
pub struct Change<T> {
    pub to: T,
    /// Since the session started.
    pub at_ms: u64,
}

/// What the relay found when a connection of the session went silent.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum DetectionKind {
    /// The donor's path answered while the flow stayed silent: the flow is lost (a dropped NAT
    /// entry) or the donor stuck; the session was reset so the recipient resumes.
    FlowDead,
    /// Nothing reached the donor: the link is down; the session was kept for TCP to carry on.
    LinkDown,
    /// Bytes flowed again after the link was found down.
    LinkBack,
    /// The donor paused longer than the stage's floor within the pace it has shown, or left this
    /// connection silent while the clone's data kept flowing on its others: no probe, no reset.
    DonorSlow,
    /// The donor was silent past the threshold while the recipient had not taken what the relay
    /// held for it: the recipient is the slow side, and the donor was not judged.
    RecipientSlow,
}

/// One detection, as `/sessions` shows it.
#[derive(Debug, Clone, Serialize)]
pub struct Detection {
    pub kind: DetectionKind,
    pub conn: ConnId,
    /// Since the session started.
    pub at_ms: u64,
    /// How long the connection had been silent.
    pub silence_ms: u64,
    /// How long the probe of the donor's path took (none for `link_back` and the slow kinds,
    /// which need no probe).
    pub probe_ms: Option<u64>,
}

/// The longest silences of the donor on connections it owed data, as `/sessions` shows them:
/// what the stall settings' floors are measured against.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct DonorGaps {
    /// In FILE COPY, where the donor streams.
    pub file_copy_ms: u64,
    /// In the other stages of a transfer.
    pub other_ms: u64,
}

impl DonorGaps {
    pub fn widen(&mut self, file_copy: Duration, other: Duration) {
        self.file_copy_ms = self.file_copy_ms.max(file_copy.as_millis() as u64);
        self.other_ms = self.other_ms.max(other.as_millis() as u64);
    }
}

/// The donor's error that ended a session.
#[derive(Debug, Clone, Serialize)]
pub struct CloneErrorView {
    pub errno: i32,
    pub message: String,
    /// The relay's reading of the error when it knows the cause and the fix (for example an
    /// encrypted clone over a plain donor leg).
    pub reason: Option<String>,
}

/// A connection the relay carries now.
#[derive(Debug)]
pub(super) struct LiveConn {
    pub record: ConnRecord,
    pub legs: Legs,
    pub abort: CancellationToken,
    pub session: Option<SessionId>,
    pub peer_ip: IpAddr,
    /// The donor this connection is reserved for or dialed to (empty before admission).
    pub upstream: String,
    pub last_command: Option<CommandKind>,
    pub data_stage: Stage,
    /// The greeting-wait budget this connection draws from, while it waits.
    pub waits_for: Option<WaitSlot>,
}

impl LiveConn {
    pub fn snapshot(&self) -> ConnRecord {
        let mut r = self.record.clone();
        r.bytes_from_downstream = self.legs.downstream.bytes_read();
        r.bytes_from_upstream = self.legs.upstream.bytes_read();
        r
    }
}

/// The data rate over the last few seconds.
#[derive(Debug, Default)]
pub(super) struct RateMeter {
    samples: VecDeque<(Instant, u64)>,
}

impl RateMeter {
    pub fn sample(&mut self, now: Instant, total: u64) {
        if self
            .samples
            .back()
            .is_some_and(|(t, _)| now.duration_since(*t) < RATE_SAMPLE_EVERY)
        {
            return;
        }
        self.samples.push_back((now, total));
        while self.samples.len() > 2 && now.duration_since(self.samples[0].0) > RATE_WINDOW {
            self.samples.pop_front();
        }
    }

    pub fn rate(&self) -> f64 {
        match (self.samples.front(), self.samples.back()) {
            (Some((t0, b0)), Some((t1, b1))) if t1 > t0 => {
                (b1 - b0) as f64 / t1.duration_since(*t0).as_secs_f64()
            }
            _ => 0.0,
        }
    }
}

/// A DATA block's place in the clone: stage, chunk, block, file.
pub(super) type BlockKey = (Stage, u32, u32, u32);

/// The latest DATA blocks of a session with the connection that carried each. A block seen
/// again on another connection was sent again after a resume. Bounded: a resume sends again at
/// most about one block per task, which is among the latest.
#[derive(Debug, Default)]
pub(super) struct RecentBlocks {
    blocks: VecDeque<(ConnId, BlockKey)>,
}

impl RecentBlocks {
    /// Records `block` on `conn`; true when another connection carried it before.
    pub fn seen_again(&mut self, conn: ConnId, block: BlockKey) -> bool {
        let again = self.blocks.iter().any(|&(c, b)| c != conn && b == block);
        if self.blocks.len() == KEEP_RECENT_BLOCKS {
            self.blocks.pop_front();
        }
        self.blocks.push_back((conn, block));
        again
    }

    pub fn clear(&mut self) {
        self.blocks = VecDeque::new();
    }
}

/// A list that keeps its latest `KEEP_PER_SESSION` entries and counts the ones it let go.
#[derive(Debug)]
pub(super) struct Bounded<T> {
    pub items: VecDeque<T>,
    pub dropped: u64,
}

impl<T> Default for Bounded<T> {
    fn default() -> Self {
        Bounded {
            items: VecDeque::new(),
            dropped: 0,
        }
    }
}

impl<T> Bounded<T> {
    pub fn push(&mut self, item: T) {
        if self.items.len() == KEEP_PER_SESSION {
            self.items.pop_front();
            self.dropped += 1;
        }
        self.items.push_back(item);
    }

    pub fn last_mut(&mut self) -> Option<&mut T> {
        self.items.back_mut()
    }

    /// Entries ever pushed.
    pub fn total(&self) -> u64 {
        self.items.len() as u64 + self.dropped
    }
}

/// One clone: its connections, state and figures.
#[derive(Debug)]
pub(super) struct Session {
    pub id: SessionId,
    pub clone: Option<CloneId>,
    pub upstream: String,
    /// The recipient's address, for keeping its reconnects on this session's donor.
    pub downstream_ip: Option<IpAddr>,
    pub state: SessionState,
    /// When the main connection was lost before the current resume (until data flows again).
    pub resume_lost_at: Option<Instant>,
    /// When the main connection was lost, while the session waits for a resume.
    pub lost_at: Option<Instant>,
    /// The donor's `clone_donor_timeout_after_network_failure`: how long it waits for a resume.
    pub donor_patience: Option<Duration>,
    /// Until when the donor may still hold this clone for a resume that will not come (a link
    /// that failed after the clone completed).
    pub donor_holds_until: Option<Instant>,
    pub started: Instant,
    pub started_at_ms: u64,
    pub ended: Option<Instant>,
    pub ended_at_ms: Option<u64>,
    /// The last time a connection of this session did anything.
    pub last_activity: Instant,
    /// The last time clone data from the donor arrived on any connection of this session.
    pub last_data: Option<Instant>,
    /// The current main connection, and whether the session ever had one.
    pub main: Option<ConnId>,
    pub had_main: bool,
    pub live: Vec<ConnId>,
    /// The most connections the session had live at once: the greeting-wait budget of a resume.
    pub peak_live: usize,
    /// Reconnects now granted the long greeting wait of a resume.
    pub waiters: usize,
    pub closed: Bounded<ConnRecord>,
    pub data_bytes: u64,
    pub resent_bytes: u64,
    pub recent_blocks: RecentBlocks,
    pub stage: Option<Stage>,
    pub estimates: BTreeMap<Stage, u64>,
    pub stage_bytes: BTreeMap<Stage, u64>,
    pub resumes: Bounded<ResumeRecord>,
    pub detections: Bounded<Detection>,
    /// The longest gaps between donor bytes on the session's closed connections.
    pub donor_gaps: DonorGaps,
    pub error: Option<CloneErrorView>,
    /// The clone protocol version the donor chose.
    pub protocol_version: Option<u32>,
    /// Why the relay stopped following a connection of this session (a message it does not
    /// know); its bytes are carried all the same.
    pub not_followed: Option<String>,
    pub history: Bounded<Change<SessionState>>,
    pub stages: Vec<Change<Stage>>,
    pub rate: RateMeter,
}

impl Session {
    pub fn new(id: SessionId, upstream: &str, now: Instant) -> Self {
        let mut history = Bounded::default();
        history.push(Change {
            to: SessionState::Initializing,
            at_ms: 0,
        });
        Session {
            id,
            clone: None,
            upstream: upstream.to_string(),
            downstream_ip: None,
            state: SessionState::Initializing,
            resume_lost_at: None,
            lost_at: None,
            donor_patience: None,
            donor_holds_until: None,
            started: now,
            started_at_ms: unix_ms(),
            ended: None,
            ended_at_ms: None,
            last_activity: now,
            last_data: None,
            main: None,
            had_main: false,
            live: Vec::new(),
            peak_live: 0,
            waiters: 0,
            closed: Bounded::default(),
            data_bytes: 0,
            resent_bytes: 0,
            recent_blocks: RecentBlocks::default(),
            stage: None,
            estimates: BTreeMap::new(),
            stage_bytes: BTreeMap::new(),
            resumes: Bounded::default(),
            detections: Bounded::default(),
            donor_gaps: DonorGaps::default(),
            error: None,
            protocol_version: None,
            not_followed: None,
            history,
            stages: Vec::new(),
            rate: RateMeter::default(),
        }
    }

    pub fn since_start(&self, now: Instant) -> u64 {
        now.duration_since(self.started).as_millis() as u64
    }

    pub fn set_state(&mut self, to: SessionState, now: Instant) {
        if self.state == to {
            return;
        }
        self.state = to;
        self.history.push(Change {
            to,
            at_ms: self.since_start(now),
        });
        if to.ended() {
            self.ended = Some(now);
            self.ended_at_ms = Some(unix_ms());
            self.recent_blocks.clear();
        }
        info!(
            clone_session = self.id,
            state = to.as_str(),
            "clone session state"
        );
    }

    /// Moves to a later stage; stages never go back.
    pub fn set_stage(&mut self, stage: Stage, now: Instant) {
        if self.stage.is_some_and(|s| s >= stage) {
            return;
        }
        self.stage = Some(stage);
        self.stages.push(Change {
            to: stage,
            at_ms: self.since_start(now),
        });
        info!(clone_session = self.id, ?stage, "clone stage");
    }

    /// Whether the donor is taken by this session: the clone is under way or waits for a resume,
    /// or the donor may still hold it after a link failed at its end.
    /// Not ended, moved no data, and no connection: nothing a clone would lose if forgotten.
    pub fn is_idle_stub(&self) -> bool {
        !self.state.ended() && self.data_bytes == 0 && self.live.is_empty()
    }

    pub fn holds_donor(&self, now: Instant) -> bool {
        !self.state.ended() || self.donor_holds_until.is_some_and(|t| now < t)
    }
}

/// Everything behind the registry's lock.
#[derive(Debug, Default)]
pub(super) struct Inner {
    pub next_session: SessionId,
    pub conns: HashMap<ConnId, LiveConn>,
    pub sessions: BTreeMap<SessionId, Session>,
    pub by_clone: HashMap<(String, CloneId), SessionId>,
    pub rejected: VecDeque<ConnRecord>,
    /// Long greeting waits granted to reconnects of clones known only from the affinity file.
    pub restored_waiters: usize,
}

pub(super) fn unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}
