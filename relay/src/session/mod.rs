//! Clone sessions: the connections of one clone (main, aux, workers, and the reconnects that
//! resume it) grouped by the clone id and snapshot id their locators carry, with the clone's
//! state, bytes, rate, resumes and progress as the wire shows them.
//!
//! Each relayed connection gets a [`ConnHandle`] that decodes its bytes and applies what it sees
//! to the shared [`Registry`], which `/sessions` and `/metrics` read.
//!
//! - [`handle`]: a connection's side: decoding, recording, data-flow tracking for stalls.
//! - [`view`]: the serialisable snapshots `/sessions` returns.

mod handle;
mod view;

pub use handle::ConnHandle;
pub use view::{
    Change, CloneErrorView, ConnRecord, Progress, ResumeRecord, SessionView, SessionsView,
};

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde::Serialize;
use tokio_util::sync::CancellationToken;
use tracing::{Span, info, warn};

use crate::copy::Legs;
use crate::metrics::Metrics;
use crate::protocol::clone::{CloneId, CommandKind, Descriptor, Stage, innodb_clone_id};
use crate::protocol::decoder::{Event, Limits, Phase};

pub type ConnId = u64;
pub type SessionId = u64;

/// Samples of the data rate older than this are dropped.
const RATE_WINDOW: Duration = Duration::from_secs(5);
const RATE_SAMPLE_EVERY: Duration = Duration::from_millis(250);
/// The donor setting that bounds a resume.
const DONOR_PATIENCE_SETTING: &str = "clone_donor_timeout_after_network_failure";
/// Time past the donor's patience before a resuming session is declared failed: the donor may
/// notice a silent link up to about a minute after the relay did.
const DONOR_PATIENCE_MARGIN: Duration = Duration::from_secs(60);
/// Connections closed for a protocol breach or a timeout kept for `/sessions`.
const KEEP_REJECTED: usize = 32;

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
}

impl SessionState {
    pub fn as_str(self) -> &'static str {
        match self {
            SessionState::Initializing => "initializing",
            SessionState::Transferring => "transferring",
            SessionState::Resuming => "resuming",
            SessionState::Completed => "completed",
            SessionState::Failed => "failed",
        }
    }

    pub fn ended(self) -> bool {
        matches!(self, SessionState::Completed | SessionState::Failed)
    }
}

/// Settings of the registry.
#[derive(Debug, Clone, Copy)]
pub struct SessionSettings {
    /// A session whose main connection is lost fails if no REINIT comes within this.
    pub resume_timeout: Duration,
    /// Ended sessions kept for `/sessions`.
    pub keep_ended: usize,
    pub limits: Limits,
}

impl Default for SessionSettings {
    fn default() -> Self {
        SessionSettings {
            resume_timeout: Duration::from_secs(6 * 60),
            keep_ended: 32,
            limits: Limits::default(),
        }
    }
}

/// Why a connection ended: a short kind for metrics, and the detail for logs and `/sessions`.
#[derive(Debug, Clone)]
pub struct CloseReason {
    pub kind: &'static str,
    pub detail: String,
    /// Closed by the relay for the peer's misbehaviour (breach, timeout).
    pub rejected: bool,
}

#[derive(Debug)]
struct LiveConn {
    record: ConnRecord,
    legs: Legs,
    abort: CancellationToken,
    session: Option<SessionId>,
    peer_ip: IpAddr,
    /// The donor this connection was dialed to (empty until dialed).
    upstream: String,
    last_command: Option<CommandKind>,
    data_stage: Stage,
}

impl LiveConn {
    fn snapshot(&self) -> ConnRecord {
        let mut r = self.record.clone();
        r.bytes_from_downstream = self.legs.downstream.bytes_read();
        r.bytes_from_upstream = self.legs.upstream.bytes_read();
        r
    }
}

#[derive(Debug, Default)]
struct RateMeter {
    samples: VecDeque<(Instant, u64)>,
}

impl RateMeter {
    fn sample(&mut self, now: Instant, total: u64) {
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

    fn rate(&self) -> f64 {
        match (self.samples.front(), self.samples.back()) {
            (Some((t0, b0)), Some((t1, b1))) if t1 > t0 => {
                (b1 - b0) as f64 / t1.duration_since(*t0).as_secs_f64()
            }
            _ => 0.0,
        }
    }
}

#[derive(Debug)]
struct Session {
    id: SessionId,
    clone: Option<CloneId>,
    upstream: String,
    /// The recipient's address, for keeping its reconnects on this session's donor.
    downstream_ip: Option<IpAddr>,
    state: SessionState,
    /// When the main connection was lost before the current resume (until data flows again).
    resume_lost_at: Option<Instant>,
    /// The donor's `clone_donor_timeout_after_network_failure`: how long it waits for a resume.
    donor_patience: Option<Duration>,
    started: Instant,
    started_at_ms: u64,
    ended: Option<Instant>,
    ended_at_ms: Option<u64>,
    /// The current main connection.
    main: Option<ConnId>,
    live: Vec<ConnId>,
    closed: Vec<ConnRecord>,
    data_bytes: u64,
    resent_bytes: u64,
    seen_blocks: HashSet<(Stage, u32, u32, u32)>,
    stage: Option<Stage>,
    estimates: BTreeMap<Stage, u64>,
    stage_bytes: BTreeMap<Stage, u64>,
    resumes: Vec<ResumeRecord>,
    lost_at: Option<Instant>,
    error: Option<CloneErrorView>,
    history: Vec<Change<SessionState>>,
    stages: Vec<Change<Stage>>,
    rate: RateMeter,
}

impl Session {
    fn since_start(&self, now: Instant) -> u64 {
        now.duration_since(self.started).as_millis() as u64
    }

    fn set_state(&mut self, to: SessionState, now: Instant) {
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
            self.seen_blocks = HashSet::new();
        }
        info!(
            clone_session = self.id,
            state = to.as_str(),
            "clone session state"
        );
    }

    fn set_stage(&mut self, stage: Stage, now: Instant) {
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

    fn view(&self, conns: &HashMap<ConnId, LiveConn>, now: Instant) -> SessionView {
        let mut connections: Vec<ConnRecord> = self.closed.clone();
        connections.extend(
            self.live
                .iter()
                .filter_map(|id| conns.get(id))
                .map(LiveConn::snapshot),
        );
        connections.sort_by_key(|c| c.id);
        let end = self.ended.unwrap_or(now);
        let duration = end.duration_since(self.started);
        let rate = if self.state.ended() {
            self.data_bytes as f64 / duration.as_secs_f64().max(1e-3)
        } else {
            self.rate.rate()
        };
        let progress = self.stage.map(|stage| {
            let estimate = self.estimates.get(&stage).copied();
            let done = self.stage_bytes.get(&stage).copied().unwrap_or(0);
            let percent = if self.state == SessionState::Completed {
                Some(100.0)
            } else {
                estimate
                    .filter(|&e| e > 0)
                    .map(|e| (done as f64 * 100.0 / e as f64).min(100.0))
            };
            let left = estimate.map(|e| e.saturating_sub(done) as f64);
            Progress {
                stage,
                estimate_bytes: estimate,
                done_bytes: done,
                percent,
                eta_secs: left
                    .filter(|_| rate > 0.0 && !self.state.ended())
                    .map(|l| l / rate),
            }
        });
        SessionView {
            id: self.id,
            clone: self.clone,
            upstream: self.upstream.clone(),
            state: self.state,
            started_at_ms: self.started_at_ms,
            ended_at_ms: self.ended_at_ms,
            duration_ms: duration.as_millis() as u64,
            bytes_from_downstream: connections.iter().map(|c| c.bytes_from_downstream).sum(),
            bytes_from_upstream: connections.iter().map(|c| c.bytes_from_upstream).sum(),
            data_bytes: self.data_bytes,
            stage_bytes: self.stage_bytes.clone(),
            resent_bytes: self.resent_bytes,
            rate_bytes_per_sec: rate,
            resume_count: self.resumes.len(),
            resumes: self.resumes.clone(),
            donor_resume_timeout_secs: self.donor_patience.map(|d| d.as_secs()),
            progress,
            error: self.error.clone(),
            history: self.history.clone(),
            stages: self.stages.clone(),
            connections,
        }
    }
}

#[derive(Debug, Default)]
struct Inner {
    next_session: SessionId,
    conns: HashMap<ConnId, LiveConn>,
    sessions: BTreeMap<SessionId, Session>,
    by_clone: HashMap<(String, CloneId), SessionId>,
    rejected: VecDeque<ConnRecord>,
}

/// All clone sessions the relay follows.
#[derive(Debug)]
pub struct Registry {
    inner: Mutex<Inner>,
    metrics: Arc<Metrics>,
    settings: SessionSettings,
}

impl Registry {
    pub fn new(settings: SessionSettings, metrics: Arc<Metrics>) -> Self {
        Registry {
            inner: Mutex::new(Inner::default()),
            metrics,
            settings,
        }
    }

    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
    }

    /// The registry's state. A panic elsewhere while it was held does not stop the relay: the
    /// state is still usable, so a poisoned lock is taken as it is.
    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Fails sessions whose recipient never resumed and forgets old ones; the relay calls this
    /// periodically.
    pub fn expire_now(&self) {
        let mut inner = self.lock();
        self.expire(&mut inner, Instant::now());
    }

    /// Registers a new downstream connection relayed to `upstream`.
    pub fn open(
        self: &Arc<Self>,
        id: ConnId,
        peer: SocketAddr,
        upstream: &str,
        legs: Legs,
    ) -> ConnHandle {
        let record = ConnRecord {
            id,
            peer: peer.to_string(),
            role: Role::Unknown,
            phase: Phase::Greeting,
            user: None,
            donor_connection_id: None,
            opened_at_ms: unix_ms(),
            closed_at_ms: None,
            bytes_from_downstream: 0,
            bytes_from_upstream: 0,
            data_bytes: 0,
            close_reason: None,
        };
        let abort = CancellationToken::new();
        self.lock().conns.insert(
            id,
            LiveConn {
                record,
                legs,
                abort: abort.clone(),
                session: None,
                peer_ip: peer.ip(),
                upstream: upstream.to_string(),
                last_command: None,
                data_stage: Stage::Other,
            },
        );
        ConnHandle::new(self.clone(), id, self.settings.limits, abort)
    }

    /// The donor a new connection from `ip` must go to: the donor of that recipient's live
    /// connections or unfinished session, if any.
    ///
    /// A resuming clone comes first, then the latest clone under way, then the latest live
    /// connection (a clone's aux connection arrives before its main one has said INIT).
    pub fn affinity(&self, ip: IpAddr) -> Option<String> {
        let inner = self.lock();
        let from_ip = |s: &&Session| s.downstream_ip == Some(ip) && !s.state.ended();
        inner
            .sessions
            .values()
            .rev()
            .filter(from_ip)
            .find(|s| s.state == SessionState::Resuming)
            .or_else(|| inner.sessions.values().rev().find(from_ip))
            .map(|s| s.upstream.clone())
            .or_else(|| {
                inner
                    .conns
                    .values()
                    .filter(|c| c.peer_ip == ip && !c.upstream.is_empty())
                    .max_by_key(|c| c.record.id)
                    .map(|c| c.upstream.clone())
            })
    }

    /// Donors with a clone under way or connections open.
    pub fn busy_upstreams(&self) -> HashSet<String> {
        let inner = self.lock();
        inner
            .sessions
            .values()
            .filter(|s| !s.state.ended())
            .map(|s| s.upstream.clone())
            .chain(inner.conns.values().map(|c| c.upstream.clone()))
            .filter(|u| !u.is_empty())
            .collect()
    }

    /// Whether a clone from `ip` waits to be resumed (its reconnects are worth waiting for).
    pub fn resuming_from(&self, ip: IpAddr) -> bool {
        self.lock()
            .sessions
            .values()
            .any(|s| s.downstream_ip == Some(ip) && s.state == SessionState::Resuming)
    }

    /// Resets every other live connection of `conn`'s clone session, so the recipient resumes
    /// the whole clone at once. Returns how many were reset.
    pub fn abort_session_of(&self, conn: ConnId) -> usize {
        let inner = self.lock();
        let Some(s) = inner
            .conns
            .get(&conn)
            .and_then(|c| c.session)
            .and_then(|id| inner.sessions.get(&id))
        else {
            return 0;
        };
        let others: Vec<&LiveConn> = s
            .live
            .iter()
            .filter(|&&id| id != conn)
            .filter_map(|id| inner.conns.get(id))
            .collect();
        for c in &others {
            c.abort.cancel();
        }
        let n = others.len();
        // The clone is resuming from now on: the recipient's reconnects may come at once.
        let id = s.id;
        let now = Instant::now();
        drop(others);
        let mut inner = inner;
        if let Some(s) = inner.sessions.get_mut(&id)
            && !s.state.ended()
        {
            s.lost_at.get_or_insert(now);
            s.set_state(SessionState::Resuming, now);
        }
        n
    }

    /// Resets every live connection of a clone session on both legs, so that the recipient
    /// resumes it at once. Returns how many connections were reset.
    pub fn abort_session(&self, session: SessionId) -> usize {
        let inner = self.lock();
        let Some(s) = inner.sessions.get(&session) else {
            return 0;
        };
        let mut n = 0;
        for c in s.live.iter().filter_map(|id| inner.conns.get(id)) {
            c.abort.cancel();
            n += 1;
        }
        info!(
            clone_session = session,
            connections = n,
            "clone session reset on request"
        );
        n
    }

    /// Live and recent sessions, unassigned and rejected connections.
    pub fn view(&self) -> SessionsView {
        let now = Instant::now();
        let mut inner = self.lock();
        self.expire(&mut inner, now);
        let inner = &*inner;
        SessionsView {
            sessions: inner
                .sessions
                .values()
                .map(|s| s.view(&inner.conns, now))
                .collect(),
            unassigned: inner
                .conns
                .values()
                .filter(|c| c.session.is_none())
                .map(LiveConn::snapshot)
                .collect(),
            rejected: inner.rejected.iter().cloned().collect(),
        }
    }

    /// Session counts by state, for `/metrics`.
    pub fn count_by_state(&self) -> BTreeMap<&'static str, u64> {
        let now = Instant::now();
        let mut inner = self.lock();
        self.expire(&mut inner, now);
        let mut counts: BTreeMap<&'static str, u64> = [
            SessionState::Initializing,
            SessionState::Transferring,
            SessionState::Resuming,
            SessionState::Completed,
            SessionState::Failed,
        ]
        .into_iter()
        .map(|s| (s.as_str(), 0))
        .collect();
        for s in inner.sessions.values() {
            *counts.entry(s.state.as_str()).or_default() += 1;
        }
        counts
    }

    /// Fails sessions whose recipient never resumed, and forgets the oldest ended sessions.
    fn expire(&self, inner: &mut Inner, now: Instant) {
        for s in inner.sessions.values_mut() {
            // The donor drops the clone when its own patience runs out; past that (and a
            // margin for the recipient's last try) no resume can succeed.
            let limit = s.donor_patience.map_or(self.settings.resume_timeout, |p| {
                self.settings
                    .resume_timeout
                    .min(p.saturating_add(DONOR_PATIENCE_MARGIN))
            });
            if s.state == SessionState::Resuming
                && s.lost_at.is_some_and(|t| now.duration_since(t) > limit)
            {
                s.error = Some(CloneErrorView {
                    errno: 0,
                    message: format!("the recipient did not resume within {} s", limit.as_secs()),
                });
                s.set_state(SessionState::Failed, now);
            }
        }
        let ended: Vec<SessionId> = inner
            .sessions
            .values()
            .filter(|s| s.state.ended() && s.live.is_empty())
            .map(|s| s.id)
            .collect();
        for id in ended
            .iter()
            .take(ended.len().saturating_sub(self.settings.keep_ended))
        {
            inner.sessions.remove(id);
            inner.by_clone.retain(|_, session| session != id);
        }
    }

    fn new_session(&self, inner: &mut Inner, upstream: &str, now: Instant) -> SessionId {
        inner.next_session += 1;
        let id = inner.next_session;
        inner.sessions.insert(
            id,
            Session {
                id,
                clone: None,
                upstream: upstream.to_string(),
                downstream_ip: None,
                state: SessionState::Initializing,
                resume_lost_at: None,
                donor_patience: None,
                started: now,
                started_at_ms: unix_ms(),
                ended: None,
                ended_at_ms: None,
                main: None,
                live: Vec::new(),
                closed: Vec::new(),
                data_bytes: 0,
                resent_bytes: 0,
                seen_blocks: HashSet::new(),
                stage: None,
                estimates: BTreeMap::new(),
                stage_bytes: BTreeMap::new(),
                resumes: Vec::new(),
                lost_at: None,
                error: None,
                history: vec![Change {
                    to: SessionState::Initializing,
                    at_ms: 0,
                }],
                stages: Vec::new(),
                rate: RateMeter::default(),
            },
        );
        self.metrics
            .sessions_started
            .fetch_add(1, Ordering::Relaxed);
        info!(clone_session = id, upstream, "clone session started");
        id
    }

    /// The session of a clone id on an upstream, created when the relay has not seen it (a
    /// clone that began before the relay started).
    fn session_for(
        &self,
        inner: &mut Inner,
        upstream: &str,
        clone: CloneId,
        now: Instant,
    ) -> SessionId {
        if let Some(&id) = inner.by_clone.get(&(upstream.to_string(), clone))
            && inner.sessions.contains_key(&id)
        {
            return id;
        }
        let id = self.new_session(inner, upstream, now);
        inner.sessions.get_mut(&id).expect("just made").clone = Some(clone);
        inner.by_clone.insert((upstream.to_string(), clone), id);
        id
    }

    fn bind(inner: &mut Inner, conn: ConnId, session: SessionId, role: Role) {
        let Some(c) = inner.conns.get_mut(&conn) else {
            return;
        };
        if c.record.role == Role::Unknown || role == Role::Main {
            c.record.role = role;
        }
        let previous = c.session.replace(session);
        let span = Span::current();
        span.record("role", format!("{:?}", c.record.role).to_lowercase());
        span.record("clone_session", session);
        if previous != Some(session) {
            if let Some(prev) = previous.and_then(|p| inner.sessions.get_mut(&p)) {
                prev.live.retain(|&id| id != conn);
            }
            let peer_ip = c.peer_ip;
            if let Some(s) = inner.sessions.get_mut(&session) {
                s.live.push(conn);
                s.downstream_ip.get_or_insert(peer_ip);
            }
        }
        if role == Role::Main
            && let Some(s) = inner.sessions.get_mut(&session)
        {
            s.main = Some(conn);
        }
    }

    fn apply(&self, conn: ConnId, events: Vec<Event>, phase: Phase) {
        let now = Instant::now();
        let mut guard = self.lock();
        let inner = &mut *guard;
        let Some(c) = inner.conns.get_mut(&conn) else {
            return;
        };
        c.record.phase = phase;
        for event in events {
            let Some(c) = inner.conns.get_mut(&conn) else {
                return;
            };
            let upstream = c.upstream.clone();
            match event {
                Event::Greeting { connection_id, .. } => {
                    c.record.donor_connection_id = Some(connection_id);
                }
                Event::Login { user, .. } => c.record.user = Some(user),
                Event::CloneCommand(cmd) => {
                    c.last_command = Some(cmd.kind);
                    let clone = innodb_clone_id(&cmd.locators);
                    let session = c.session;
                    match cmd.kind {
                        CommandKind::Init => {
                            let id = self.new_session(inner, &upstream, now);
                            Self::bind(inner, conn, id, Role::Main);
                        }
                        CommandKind::Reinit => {
                            let Some(clone) = clone else { continue };
                            let id = self.session_for(inner, &upstream, clone, now);
                            Self::bind(inner, conn, id, Role::Main);
                            let Some(s) = inner.sessions.get_mut(&id) else {
                                continue;
                            };
                            let lost_at = s.lost_at.take();
                            let outage = lost_at.map(|t| now.duration_since(t));
                            s.resume_lost_at = Some(lost_at.unwrap_or(now));
                            let at_ms = s.since_start(now);
                            s.resumes.push(ResumeRecord {
                                at_ms,
                                outage_ms: outage.map_or(0, |d| d.as_millis() as u64),
                                resumed_after_ms: None,
                                resent_bytes: 0,
                            });
                            self.metrics.resumes.fetch_add(1, Ordering::Relaxed);
                            self.metrics.resume_outage_ms.fetch_add(
                                outage.map_or(0, |d| d.as_millis() as u64),
                                Ordering::Relaxed,
                            );
                            info!(
                                clone_session = id,
                                outage_ms = outage.map_or(0, |d| d.as_millis() as u64),
                                resumes = s.resumes.len(),
                                "clone session resumed"
                            );
                            s.set_state(SessionState::Resuming, now);
                        }
                        CommandKind::Attach => {
                            let Some(clone) = clone else { continue };
                            let id = self.session_for(inner, &upstream, clone, now);
                            Self::bind(inner, conn, id, Role::Worker);
                        }
                        CommandKind::Ack => {
                            if session.is_none()
                                && let Some(clone) = clone
                            {
                                let id = self.session_for(inner, &upstream, clone, now);
                                Self::bind(inner, conn, id, Role::Aux);
                            }
                        }
                        CommandKind::Execute => {
                            let is_main = c.record.role == Role::Main;
                            if let Some(s) = session.and_then(|id| inner.sessions.get_mut(&id))
                                && is_main
                                && !s.state.ended()
                            {
                                s.set_state(SessionState::Transferring, now);
                            }
                        }
                        CommandKind::Exit => {}
                    }
                }
                Event::CloneLocators(locators) => {
                    if let (Some(id), Some(clone)) = (c.session, innodb_clone_id(&locators))
                        && c.record.role == Role::Main
                    {
                        if let Some(s) = inner.sessions.get_mut(&id) {
                            s.clone = Some(clone);
                        }
                        inner.by_clone.insert((upstream, clone), id);
                    }
                }
                Event::CloneDescriptor(desc) => {
                    let Some(s) = c.session.and_then(|id| inner.sessions.get_mut(&id)) else {
                        continue;
                    };
                    match desc {
                        Descriptor::State {
                            stage,
                            estimate_bytes,
                            is_start,
                            ..
                        } => {
                            if is_start && estimate_bytes > 0 {
                                s.estimates.insert(stage, estimate_bytes);
                            }
                            s.set_stage(stage, now);
                        }
                        Descriptor::Data {
                            stage,
                            chunk,
                            block,
                            file,
                            bytes,
                            ..
                        } => {
                            c.data_stage = stage;
                            s.set_stage(stage, now);
                            if !s.seen_blocks.insert((stage, chunk, block, file)) {
                                s.resent_bytes += u64::from(bytes);
                                self.metrics
                                    .resent_bytes
                                    .fetch_add(u64::from(bytes), Ordering::Relaxed);
                                if let Some(r) = s.resumes.last_mut() {
                                    r.resent_bytes += u64::from(bytes);
                                }
                            }
                        }
                        Descriptor::Other { .. } => {}
                    }
                }
                Event::CloneData { bytes } => {
                    c.record.data_bytes += bytes;
                    self.metrics
                        .clone_data_bytes
                        .fetch_add(bytes, Ordering::Relaxed);
                    let stage = c.data_stage;
                    if let Some(s) = c.session.and_then(|id| inner.sessions.get_mut(&id)) {
                        s.data_bytes += bytes;
                        *s.stage_bytes.entry(stage).or_default() += bytes;
                        let total = s.data_bytes;
                        s.rate.sample(now, total);
                        if s.state == SessionState::Resuming {
                            s.set_state(SessionState::Transferring, now);
                        }
                        if let Some(lost) = s.resume_lost_at.take()
                            && let Some(r) = s.resumes.last_mut()
                        {
                            let after_ms = now.duration_since(lost).as_millis() as u64;
                            r.resumed_after_ms = Some(after_ms);
                            info!(
                                clone_session = s.id,
                                resumed_after_ms = after_ms,
                                "clone data flows again"
                            );
                        }
                    }
                }
                Event::CloneComplete => {
                    let done =
                        c.record.role == Role::Main && c.last_command == Some(CommandKind::Execute);
                    if let Some(s) = c.session.and_then(|id| inner.sessions.get_mut(&id))
                        && done
                    {
                        s.set_state(SessionState::Completed, now);
                    }
                }
                Event::CloneError { errno, message } => {
                    let is_main = c.record.role == Role::Main;
                    if let Some(s) = c.session.and_then(|id| inner.sessions.get_mut(&id)) {
                        warn!(clone_session = s.id, errno, %message, "donor reported a clone error");
                        s.error = Some(CloneErrorView { errno, message });
                        if is_main {
                            s.set_state(SessionState::Failed, now);
                        }
                    }
                }
                Event::DonorConfig { name, value } => {
                    if name == DONOR_PATIENCE_SETTING
                        && let Ok(minutes) = value.trim().parse::<u64>()
                        && let Some(s) = c.session.and_then(|id| inner.sessions.get_mut(&id))
                    {
                        // MySQL allows up to 30 minutes; anything larger is not a real setting.
                        s.donor_patience = Some(Duration::from_secs(minutes.min(30) * 60));
                    }
                }
                Event::TlsStarted
                | Event::Authenticated
                | Event::Refused { .. }
                | Event::Command { .. }
                | Event::CloneStarted => {}
            }
        }
    }

    fn close(&self, conn: ConnId, reason: &CloseReason) {
        let now = Instant::now();
        let mut guard = self.lock();
        let inner = &mut *guard;
        let Some(c) = inner.conns.remove(&conn) else {
            return;
        };
        let mut record = c.snapshot();
        record.closed_at_ms = Some(unix_ms());
        record.close_reason = Some(reason.detail.clone());
        if reason.rejected {
            inner.rejected.push_back(record.clone());
            if inner.rejected.len() > KEEP_REJECTED {
                inner.rejected.pop_front();
            }
        }
        let Some(s) = c.session.and_then(|id| inner.sessions.get_mut(&id)) else {
            return;
        };
        s.live.retain(|&id| id != conn);
        s.closed.push(record);
        if s.main == Some(conn) && !s.state.ended() {
            s.lost_at = Some(now);
            info!(
                clone_session = s.id,
                reason = %reason.detail,
                "main connection lost; waiting for the recipient to resume"
            );
            s.set_state(SessionState::Resuming, now);
        }
    }
}

fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}
