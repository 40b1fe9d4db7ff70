//! Traffic on a relay besides a clone: many logged-in clients that sit idle, connections that
//! stop in the middle of their login, and a flood of connections from one address that never
//! log in.
//!
//! Idle clients are real `mysql` client processes started inside a container (host networking:
//! they reach the relay on loopback), each logged in with the donor account and running a long
//! `SELECT SLEEP`, so every one is also a connection on the donor. Half logins are sockets of
//! the test itself.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::task::JoinSet;

use crate::mysql::{DONOR_PASSWORD, DONOR_USER, MysqlServer};

/// Marks the idle clients' statement, so they can be told apart in a processlist.
const IDLE_TAG: &str = "idle_client";
/// Where an idle client set keeps its process ids and client output, inside the container.
const IDLE_DIR: &str = "/tmp/idle-clients";
/// The header of a 100-byte login packet (sequence id 1) and its first four bytes: a login that
/// stops halfway.
const HALF_LOGIN: &[u8] = b"\x64\x00\x00\x01\x85\xa2\xb8\x19";
/// The load's connections come from loopback addresses 127.0.0.2 and up, this many of them in
/// turn, as clients of many hosts would: the relay caps the connections one address may hold
/// before they log in (`--max-pending-logins-per-address`, 32), and the load is not one address.
const SOURCE_ADDRESSES: usize = 16;

/// The loopback source address of the load's `i`th connection.
fn source_address(i: usize) -> std::net::Ipv4Addr {
    std::net::Ipv4Addr::new(127, 0, 0, 2 + (i % SOURCE_ADDRESSES) as u8)
}

/// `count` idle `mysql` clients running in a container, logged in through `target` with the
/// donor account. They run until [`IdleClients::stop`] (or until the container goes).
#[derive(Debug)]
pub struct IdleClients<'a> {
    host: &'a MysqlServer,
    count: usize,
}

impl<'a> IdleClients<'a> {
    /// Starts the clients in `host`'s container, all from one shell, each in the background
    /// with its output in a file of its own; returns once they are started (not yet logged in).
    /// Each runs `SELECT SLEEP(hold)`.
    pub async fn start(
        host: &'a MysqlServer,
        target: SocketAddr,
        count: usize,
        hold: Duration,
    ) -> Result<Self> {
        let client = client_command(
            target,
            &format!("SELECT SLEEP({}) AS {IDLE_TAG}", hold.as_secs()),
        );
        let script = format!(
            "rm -rf {IDLE_DIR} && mkdir -p {IDLE_DIR} && cd {IDLE_DIR} && i=0; \
             while [ $i -lt {count} ]; do \
               {client} --bind-address=127.0.0.$((2 + i % {SOURCE_ADDRESSES})) </dev/null >$i.out 2>&1 & \
               echo $! >>pids; i=$((i+1)); \
             done"
        );
        host.shell(&script)
            .await
            .context("starting the idle clients")?;
        Ok(IdleClients { host, count })
    }

    /// How many clients were started.
    pub fn count(&self) -> usize {
        self.count
    }

    /// How many idle clients `donor` shows in its processlist now.
    pub async fn on_donor(donor: &MysqlServer) -> Result<usize> {
        let n = donor
            .sql(&format!(
                "SELECT COUNT(*) FROM performance_schema.processlist \
                 WHERE USER = '{DONOR_USER}' AND INFO LIKE '%{IDLE_TAG}%'"
            ))
            .await?;
        n.trim()
            .parse()
            .with_context(|| format!("processlist count {n:?}"))
    }

    /// Waits until `donor` shows every client in its processlist, for at most `timeout`;
    /// returns how many it shows, or an error naming the count reached and the clients' own
    /// complaints.
    pub async fn wait_logged_in(&self, donor: &MysqlServer, timeout: Duration) -> Result<usize> {
        let deadline = Instant::now() + timeout;
        loop {
            let n = Self::on_donor(donor).await?;
            if n >= self.count {
                return Ok(n);
            }
            if Instant::now() > deadline {
                bail!(
                    "only {n} of {} idle clients logged in on the donor within {timeout:?}; \
                     client output: {}",
                    self.count,
                    self.output().await
                );
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }

    /// What the clients printed that is not the usual password warning (errors, mostly), at
    /// most a few lines.
    pub async fn output(&self) -> String {
        self.host
            .shell(&format!(
                "cat {IDLE_DIR}/*.out | grep -v 'password on the command line' | sort | uniq -c | head -20"
            ))
            .await
            .unwrap_or_else(|e| format!("(unreadable: {e})"))
    }

    /// Ends every client by its process id, then waits until `donor` shows none of them, for
    /// at most `timeout`.
    pub async fn stop(self, donor: &MysqlServer, timeout: Duration) -> Result<()> {
        self.host
            .shell(&format!(
                "for p in $(cat {IDLE_DIR}/pids); do kill $p 2>/dev/null || true; done"
            ))
            .await
            .context("ending the idle clients")?;
        let deadline = Instant::now() + timeout;
        loop {
            let n = Self::on_donor(donor).await?;
            if n == 0 {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!("{n} idle clients still on the donor {timeout:?} after they were ended");
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }

    /// Runs one short query through `target` from the same container with the same client
    /// settings: a fresh login works (the donor has not blocked the relay's address).
    pub async fn fresh_login(host: &MysqlServer, target: SocketAddr) -> Result<String> {
        host.shell(&client_command(target, "SELECT 'fresh login'"))
            .await
            .map(|out| out.trim().to_string())
    }
}

/// A `mysql` client command line that logs in through `target` as the donor account, without
/// TLS (the server's RSA key carries the password), and runs `sql`.
fn client_command(target: SocketAddr, sql: &str) -> String {
    format!(
        "mysql --no-defaults --protocol=TCP --host={} --port={} --user={DONOR_USER} \
         --password={DONOR_PASSWORD} --ssl-mode=DISABLED --get-server-public-key \
         --batch --skip-column-names --execute=\"{sql}\"",
        target.ip(),
        target.port()
    )
}

/// Connections that stop in the middle of their login: each read the 4-byte header of the
/// greeting, sent half a login packet, and stays silent. A task per connection notes when the
/// peer closes it.
#[derive(Debug)]
pub struct HalfLogins {
    watches: JoinSet<Duration>,
    count: usize,
}

impl HalfLogins {
    /// Opens `count` of them against `addr`, one after another.
    pub async fn open(addr: SocketAddr, count: usize) -> Result<Self> {
        let mut watches = JoinSet::new();
        for i in 0..count {
            let socket = tokio::net::TcpSocket::new_v4()?;
            socket
                .bind(SocketAddr::from((source_address(i), 0)))
                .with_context(|| format!("half login {i}: bind"))?;
            let mut s = socket
                .connect(addr)
                .await
                .with_context(|| format!("half login {i}: connect"))?;
            let mut header = [0u8; 4];
            tokio::time::timeout(Duration::from_secs(10), s.read_exact(&mut header))
                .await
                .with_context(|| format!("half login {i}: no greeting within 10 s"))?
                .with_context(|| format!("half login {i}: greeting"))?;
            s.write_all(HALF_LOGIN)
                .await
                .with_context(|| format!("half login {i}: write"))?;
            let opened = Instant::now();
            watches.spawn(async move {
                // Whatever is left of the greeting, then the close; a reset ends it too.
                let mut sink = Vec::new();
                let _ = s.read_to_end(&mut sink).await;
                opened.elapsed()
            });
        }
        Ok(HalfLogins { watches, count })
    }

    /// Waits until the peer has closed every connection (EOF or reset), for at most `timeout`
    /// from now; returns how long each stayed open after its half login was sent.
    pub async fn wait_closed(mut self, timeout: Duration) -> Result<Vec<Duration>> {
        let deadline = tokio::time::Instant::now() + timeout;
        let mut lifetimes = Vec::with_capacity(self.count);
        while lifetimes.len() < self.count {
            match tokio::time::timeout_at(deadline, self.watches.join_next()).await {
                Ok(Some(lifetime)) => lifetimes.push(lifetime?),
                Ok(None) => break,
                Err(_) => bail!(
                    "{} of {} half logins still open after {timeout:?}",
                    self.count - lifetimes.len(),
                    self.count
                ),
            }
        }
        Ok(lifetimes)
    }
}

/// What a flood of connections from one address got as their first packet.
#[derive(Debug, Clone, Default)]
pub struct FloodOutcome {
    /// Greetings that arrived within the window given to [`flood`] from its start.
    pub greeted_in_window: usize,
    /// Greetings in all.
    pub greeted: usize,
    /// MySQL errors in place of a greeting, by error code.
    pub refused: std::collections::BTreeMap<u16, usize>,
    /// How long until every connection had its first packet.
    pub took: Duration,
}

/// Opens `count` connections to `addr` from the loopback address `from` all at once; each reads
/// its first packet (a greeting, or an ERR in its place) and then stays silent until the relay
/// closes it. Returns once every one has its first packet.
pub async fn flood(
    addr: SocketAddr,
    from: std::net::Ipv4Addr,
    count: usize,
    window: Duration,
) -> Result<FloodOutcome> {
    let start = Instant::now();
    let mut set = JoinSet::new();
    for i in 0..count {
        set.spawn(async move {
            let socket = tokio::net::TcpSocket::new_v4()?;
            socket
                .bind(SocketAddr::from((from, 0)))
                .with_context(|| format!("flood {i}: bind"))?;
            let mut s = socket
                .connect(addr)
                .await
                .with_context(|| format!("flood {i}: connect"))?;
            let mut head = [0u8; 7];
            tokio::time::timeout(Duration::from_secs(30), s.read_exact(&mut head))
                .await
                .with_context(|| format!("flood {i}: no first packet within 30 s"))?
                .with_context(|| format!("flood {i}: first packet"))?;
            let at = start.elapsed();
            // The relay closes it: a refusal at once, a greeting at the pre-login wait.
            tokio::spawn(async move {
                let mut sink = Vec::new();
                let _ = s.read_to_end(&mut sink).await;
            });
            // A greeting is protocol 10; an ERR is 0xff, then the code.
            anyhow::Ok(match head[4] {
                10 => (at, None),
                0xff => (at, Some(u16::from_le_bytes([head[5], head[6]]))),
                other => bail!("flood {i}: first packet starts {other:#x}"),
            })
        });
    }
    let mut outcome = FloodOutcome::default();
    while let Some(done) = set.join_next().await {
        match done?? {
            (at, None) => {
                outcome.greeted += 1;
                if at < window {
                    outcome.greeted_in_window += 1;
                }
            }
            (_, Some(code)) => *outcome.refused.entry(code).or_default() += 1,
        }
    }
    outcome.took = start.elapsed();
    Ok(outcome)
}
