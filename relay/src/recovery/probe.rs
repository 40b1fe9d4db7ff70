//! Whether the way to a donor works, asked when a connection of a transfer goes silent: a fresh
//! connection must bring the donor's greeting within [`PROBE_TIMEOUT`]. A greeting (or a MySQL
//! refusal in its place) means the path is up, so the silent flow alone is lost (a dropped NAT
//! or conntrack entry) or the donor is stuck; no answer means the link is down.
//!
//! MySQL counts a connection that ends during its handshake against `max_connect_errors`, and
//! blocks the client's host after that many in a row; a refused login is not counted. So after
//! the greeting the probe logs in as [`PROBE_USER`], which does not exist, and waits for the
//! refusal before it closes. The donor logs that refusal (`Access denied for user
//! 'clone-relay-probe'`). Probes of one donor are shared: connections that go silent together
//! get the answer of one probe.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::{Instant, timeout, timeout_at};

use crate::protocol::frame;
use crate::protocol::handshake::{ServerHello, login_request, parse_server_hello};
use crate::protocol::packet::{MAX_GREETING_BYTES, read_packet};

/// How long a probe may take, connection and greeting included.
pub const PROBE_TIMEOUT: Duration = Duration::from_secs(2);
/// The user a probe logs in as; it must not exist on the donor.
pub const PROBE_USER: &str = "clone-relay-probe";
/// A probe's answer stands for the other connections of the donor this long.
const SHARED_FOR: Duration = Duration::from_secs(1);

/// What a probe found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PathState {
    /// The donor answered a fresh connection.
    Up,
    /// Nothing answered in time, or the connection failed; the reason.
    Down(String),
}

type Latest = Arc<tokio::sync::Mutex<Option<(Instant, PathState)>>>;

/// The probes of every donor, and how many were made.
#[derive(Debug, Default)]
pub struct PathProbes {
    donors: Mutex<HashMap<String, Latest>>,
    made: AtomicU64,
}

impl PathProbes {
    /// Whether the path to `donor` is up, and how long finding out took (a probe made within the
    /// last second for another connection answers at once).
    pub async fn check(&self, donor: &str) -> (PathState, Duration) {
        let started = Instant::now();
        let latest = self
            .donors
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .entry(donor.to_string())
            .or_default()
            .clone();
        let mut latest = latest.lock().await;
        if let Some((at, state)) = latest.as_ref()
            && at.elapsed() < SHARED_FOR
        {
            return (state.clone(), started.elapsed());
        }
        self.made.fetch_add(1, Ordering::Relaxed);
        let state = probe(donor).await;
        *latest = Some((Instant::now(), state.clone()));
        (state, started.elapsed())
    }

    /// Probes made so far.
    pub fn made(&self) -> u64 {
        self.made.load(Ordering::Relaxed)
    }
}

/// One probe of `donor`, bounded by [`PROBE_TIMEOUT`].
pub async fn probe(donor: &str) -> PathState {
    let due = Instant::now() + PROBE_TIMEOUT;
    let greeted = timeout_at(due, async {
        let mut stream = TcpStream::connect(donor)
            .await
            .map_err(|e| format!("cannot connect: {e}"))?;
        let (_, greeting) = read_packet(&mut stream, MAX_GREETING_BYTES)
            .await
            .map_err(|e| format!("no greeting: {e}"))?;
        Ok::<_, String>((stream, greeting))
    })
    .await;
    let (mut stream, greeting) = match greeted {
        Ok(Ok(greeted)) => greeted,
        Ok(Err(reason)) => return PathState::Down(reason),
        Err(_) => return PathState::Down(format!("no greeting within {PROBE_TIMEOUT:?}")),
    };
    if let Ok(ServerHello::Greeting(_)) = parse_server_hello(&greeting) {
        // Best effort: the path is up whatever the donor says now.
        leave(&mut stream).await;
    }
    PathState::Up
}

/// Ends a donor connection that has sent its greeting and heard nothing yet with a refused login
/// (as [`PROBE_USER`], no password) rather than a broken handshake, which the donor would count
/// against `max_connect_errors`; waits at most [`PROBE_TIMEOUT`] for the refusal. Best effort.
pub async fn leave(stream: &mut (impl AsyncRead + AsyncWrite + Unpin)) {
    if stream
        .write_all(&frame(1, &login_request(PROBE_USER)))
        .await
        .is_ok()
    {
        let _ = timeout(PROBE_TIMEOUT, read_packet(stream, MAX_GREETING_BYTES)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::handshake::parse_login_request;
    use tokio::net::TcpListener;

    #[test]
    fn the_probe_login_parses_as_a_login_for_the_probe_user() {
        let login = login_request(PROBE_USER);
        let parsed = parse_login_request(&login, login.len()).unwrap();
        assert_eq!(parsed.user, PROBE_USER);
        assert!(!parsed.is_ssl_request);
    }

    #[tokio::test]
    async fn a_greeting_is_up_silence_and_refusal_are_down_and_answers_are_shared() {
        // A server that greets, then refuses the login.
        let greeter = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let greeter_addr = greeter.local_addr().unwrap().to_string();
        let logins = Arc::new(AtomicU64::new(0));
        let seen = logins.clone();
        tokio::spawn(async move {
            loop {
                let (mut s, _) = greeter.accept().await.unwrap();
                let seen = seen.clone();
                tokio::spawn(async move {
                    let greeting = crate::protocol::unhex(crate::protocol::GREETING_9_7_4);
                    s.write_all(&frame(0, &greeting)).await.unwrap();
                    if read_packet(&mut s, 1 << 16).await.is_ok() {
                        seen.fetch_add(1, Ordering::SeqCst);
                        let _ = s
                            .write_all(&frame(2, b"\xff\x15\x04#28000Access denied"))
                            .await;
                    }
                });
            }
        });
        let probes = PathProbes::default();
        assert_eq!(probes.check(&greeter_addr).await.0, PathState::Up);
        assert_eq!(
            logins.load(Ordering::SeqCst),
            1,
            "the probe logged in, and was refused"
        );
        // A second connection within the second gets the same answer without a probe.
        assert_eq!(probes.check(&greeter_addr).await.0, PathState::Up);
        assert_eq!(probes.made(), 1);

        // A server that accepts and says nothing: down, within the bound.
        let silent = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let silent_addr = silent.local_addr().unwrap().to_string();
        tokio::spawn(async move {
            let mut held = Vec::new();
            loop {
                held.push(silent.accept().await.unwrap());
            }
        });
        let started = Instant::now();
        assert!(matches!(probe(&silent_addr).await, PathState::Down(_)));
        assert!(started.elapsed() < PROBE_TIMEOUT + Duration::from_millis(500));

        // Nothing listening: down.
        let closed = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let closed_addr = closed.local_addr().unwrap().to_string();
        drop(closed);
        assert!(matches!(probe(&closed_addr).await, PathState::Down(_)));
    }
}
