//! Clone commands for clones that never move data, through the relay's socket: the relay runs as
//! its own process on its defaults, in front of a fake donor that accepts every login and
//! answers every clone command (a real donor closes after the first bogus one, so the bound
//! would never be reached). 10 000 rounds of INIT, REINIT with an unknown id, ATTACH and ACK
//! with random ids, each connection's rounds pipelined in one write, spread over 50
//! connections, leave the relay's sessions within the documented bound (the idle ones of one
//! address, and the ended ones it keeps) and its resident memory within 5 MiB of where it
//! started. Then the same upstream address forwards to a real MySQL donor, and a clone through
//! the same relay is admitted and completes with the donor's data.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use anyhow::{Context, Result, ensure};
use clone_relay::protocol::clone::{COM_CLONE, ENGINE_INNODB};
use clone_relay::protocol::frame;
use clone_relay::protocol::handshake::{
    CLIENT_LONG_PASSWORD, CLIENT_PLUGIN_AUTH, CLIENT_PROTOCOL_41, CLIENT_SECURE_CONNECTION,
    err_packet, login_request, parse_login_request,
};
use clone_relay::protocol::packet::read_packet;
use clone_relay::recovery::probe::PROBE_USER;
use clone_relay::session::{IDLE_STUBS_PER_ADDRESS, SessionSettings};
use harness::clone::clone_instance;
use harness::dataset::Dataset;
use harness::image::mysql_image;
use harness::mysql::DONOR_USER;
use harness::process::RelayProcess;
use harness::{MysqlServer, ServerOptions};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinSet;
use tokio::time::Instant;

const MIB: u64 = 1 << 20;
const ROUNDS: usize = 10_000;
const CONNECTIONS: usize = 50;
/// Connections at once: below the relay's pending logins per address (32).
const WAVE: usize = 10;
/// What the relay's resident memory may grow by over the rounds.
const RSS_MARGIN: u64 = 5 * MIB;
const DATASET_BYTES: u64 = 16 * MIB;
const CLONE_TIMEOUT: Duration = Duration::from_secs(300);
/// Bound on a connection's rounds being answered, and on the relay closing its connections.
const WAIT: Duration = Duration::from_secs(60);
/// INIT, REINIT, ATTACH, ACK, EXIT.
const INIT: u8 = 1;
const ATTACH: u8 = 2;
const REINIT: u8 = 3;
const ACK: u8 = 5;
const EXIT: u8 = 6;
/// COM_RES_LOCS and COM_RES_COMPLETE.
const RES_LOCS: u8 = 1;
const RES_COMPLETE: u8 = 99;

/// An upstream address that plays a donor accepting every clone command until `forward` is
/// set, and from then on forwards each new connection to the real donor.
struct Upstream {
    addr: SocketAddr,
    forward: Arc<AtomicBool>,
    task: tokio::task::JoinHandle<()>,
}

impl Upstream {
    async fn start(donor: SocketAddr) -> Result<Self> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let forward = Arc::new(AtomicBool::new(false));
        let mode = forward.clone();
        let task = tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let forward = mode.load(Ordering::SeqCst);
                tokio::spawn(async move {
                    let _ = if forward {
                        forward_to(stream, donor).await
                    } else {
                        fake_donor(stream).await
                    };
                });
            }
        });
        Ok(Upstream {
            addr,
            forward,
            task,
        })
    }
}

impl Drop for Upstream {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn forward_to(mut stream: TcpStream, donor: SocketAddr) -> Result<()> {
    let mut upstream = TcpStream::connect(donor).await?;
    tokio::io::copy_bidirectional(&mut stream, &mut upstream).await?;
    Ok(())
}

/// A greeting without TLS, for mysql_native_password.
fn greeting() -> Vec<u8> {
    let capabilities =
        CLIENT_LONG_PASSWORD | CLIENT_PROTOCOL_41 | CLIENT_SECURE_CONNECTION | CLIENT_PLUGIN_AUTH;
    let mut g = vec![10];
    g.extend_from_slice(b"9.7.4-fake\0");
    g.extend_from_slice(&7u32.to_le_bytes());
    g.extend_from_slice(b"abcdefgh\0");
    g.extend_from_slice(&(capabilities as u16).to_le_bytes());
    g.push(33);
    g.extend_from_slice(&2u16.to_le_bytes());
    g.extend_from_slice(&((capabilities >> 16) as u16).to_le_bytes());
    g.push(21);
    g.extend_from_slice(&[0; 10]);
    g.extend_from_slice(b"ijklmnopqrst\0");
    g.extend_from_slice(b"mysql_native_password\0");
    g
}

const OK: [u8; 7] = [0, 0, 0, 2, 0, 0, 0];

/// Greets, accepts any login but the relay's probe user, accepts COM_CLONE, then answers each
/// INIT, REINIT and ATTACH with its locators and COMPLETE, each other command with COMPLETE,
/// and closes after EXIT.
async fn fake_donor(mut stream: TcpStream) -> Result<()> {
    stream.write_all(&frame(0, &greeting())).await?;
    let (header, login) = read_packet(&mut stream, 1 << 16).await?;
    let login = parse_login_request(&login, login.len()).map_err(anyhow::Error::msg)?;
    if login.user == PROBE_USER {
        let denied = err_packet(header.seq + 1, 1045, b"28000", "Access denied");
        stream.write_all(&denied).await?;
        return Ok(());
    }
    stream.write_all(&frame(header.seq + 1, &OK)).await?;
    let (header, command) = read_packet(&mut stream, 1 << 16).await?;
    ensure!(command.first() == Some(&COM_CLONE), "not COM_CLONE");
    stream.write_all(&frame(header.seq + 1, &OK)).await?;
    loop {
        let (_, command) = read_packet(&mut stream, 1 << 20).await?;
        let mut out = Vec::new();
        match command.first() {
            Some(&(INIT | REINIT | ATTACH)) => {
                // [cmd][version u32][ddl timeout u32][locators]
                let mut locs = vec![RES_LOCS];
                locs.extend_from_slice(command.get(1..5).context("short command")?);
                locs.extend_from_slice(command.get(9..).context("short command")?);
                out.extend(frame(1, &locs));
                out.extend(frame(2, &[RES_COMPLETE]));
            }
            Some(&EXIT) => {
                stream.write_all(&frame(1, &[RES_COMPLETE])).await?;
                return Ok(());
            }
            _ => out.extend(frame(1, &[RES_COMPLETE])),
        }
        stream.write_all(&out).await?;
    }
}

/// A clone command naming clone `id` (INIT names none).
fn clone_command(kind: u8, id: u64) -> Vec<u8> {
    let mut body = vec![0u8; 12];
    body.extend_from_slice(&id.to_be_bytes());
    body.extend_from_slice(&(id ^ 1).to_be_bytes());
    let mut payload = vec![kind];
    payload.extend_from_slice(&0x0103u32.to_le_bytes());
    if kind != ACK {
        payload.extend_from_slice(&[0; 4]);
    }
    payload.push(ENGINE_INNODB);
    payload.extend_from_slice(&(body.len() as u32).to_le_bytes());
    payload.extend_from_slice(&body);
    payload
}

/// Logs in through the relay, starts the clone protocol, writes `rounds` rounds and EXIT in
/// one write, and reads until the relay closes the connection.
async fn hostile(relay: SocketAddr, rounds: usize, mut rng: u64) -> Result<()> {
    let mut stream = TcpStream::connect(relay).await?;
    read_packet(&mut stream, 1 << 16).await?;
    stream
        .write_all(&frame(1, &login_request(DONOR_USER)))
        .await?;
    let (_, ok) = read_packet(&mut stream, 1 << 16).await?;
    ensure!(ok.first() == Some(&0), "login refused: {ok:?}");
    stream.write_all(&frame(0, &[COM_CLONE])).await?;
    let (_, ok) = read_packet(&mut stream, 1 << 16).await?;
    ensure!(ok.first() == Some(&0), "COM_CLONE refused: {ok:?}");
    let mut pipelined = Vec::new();
    for _ in 0..rounds {
        for kind in [INIT, REINIT, ATTACH, ACK] {
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            let id = if kind == INIT { 0 } else { rng };
            pipelined.extend(frame(0, &clone_command(kind, id)));
        }
    }
    pipelined.extend(frame(0, &[EXIT]));
    stream.write_all(&pipelined).await?;
    let mut sink = vec![0u8; 64 * 1024];
    tokio::time::timeout(WAIT, async {
        while stream.read(&mut sink).await? > 0 {}
        anyhow::Ok(())
    })
    .await
    .context("the relay kept the connection open")??;
    Ok(())
}

/// `connections` hostile connections, `WAVE` at a time, `rounds` spread over them.
async fn hostile_waves(relay: SocketAddr, connections: usize, rounds: usize) -> Result<()> {
    let per_connection = rounds / connections;
    for wave in (0..connections).step_by(WAVE) {
        let mut set = JoinSet::new();
        for i in wave..(wave + WAVE).min(connections) {
            set.spawn(hostile(
                relay,
                per_connection,
                0x9E37_79B9_7F4A_7C15 ^ i as u64,
            ));
        }
        while let Some(done) = set.join_next().await {
            done??;
        }
    }
    Ok(())
}

/// The relay's sessions not ended, and all it lists, once it has no connection left.
async fn session_counts(relay: &RelayProcess) -> Result<(usize, usize)> {
    let deadline = Instant::now() + WAIT;
    loop {
        let view = relay.sessions_json().await?;
        let sessions = view["sessions"].as_array().context("no sessions")?;
        let live = sessions
            .iter()
            .flat_map(|s| s["connections"].as_array().into_iter().flatten())
            .filter(|c| c["closed_at_ms"].is_null())
            .count()
            + view["unassigned"].as_array().map_or(0, Vec::len);
        if live == 0 {
            let unended = sessions
                .iter()
                .filter(|s| !matches!(s["state"].as_str(), Some("completed" | "failed")))
                .count();
            return Ok((unended, sessions.len()));
        }
        ensure!(
            Instant::now() < deadline,
            "the relay still lists {live} connections"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

pub async fn clone_commands_for_clones_that_never_move_data_leave_the_relay_bounded() -> Result<()>
{
    let image = mysql_image().await?;
    let donor = MysqlServer::start(&image, ServerOptions::donor()).await?;
    let dataset = Dataset::of_size(DATASET_BYTES);
    dataset.seed(&donor).await?;
    let upstream = Upstream::start(donor.addr()).await?;
    let relay = RelayProcess::start(upstream.addr, &[]).await?;
    let recipient =
        MysqlServer::start(&image, ServerOptions::recipient(2, &[relay.addr()])).await?;

    // A first wave warms the relay's buffers and allocator up: where it starts from.
    hostile_waves(relay.addr(), WAVE, WAVE).await?;
    let (start_rss, _) = relay.memory()?;
    let started = Instant::now();
    hostile_waves(relay.addr(), CONNECTIONS, ROUNDS).await?;
    let (unended, listed) = session_counts(&relay).await?;
    let (end_rss, peak_rss) = relay.memory()?;
    let keep_ended = SessionSettings::default().keep_ended;
    eprintln!(
        "{ROUNDS} rounds over {CONNECTIONS} connections in {:?}: {unended} sessions not ended, \
         {listed} listed (bound {IDLE_STUBS_PER_ADDRESS} idle for the address, {keep_ended} \
         ended kept); resident {start_rss} -> {end_rss} bytes (peak {peak_rss})",
        started.elapsed()
    );
    ensure!(
        unended <= IDLE_STUBS_PER_ADDRESS,
        "{unended} sessions not ended, over the bound of {IDLE_STUBS_PER_ADDRESS}"
    );
    ensure!(
        listed <= IDLE_STUBS_PER_ADDRESS + keep_ended,
        "{listed} sessions listed"
    );
    ensure!(
        end_rss <= start_rss + RSS_MARGIN,
        "the relay's resident memory grew from {start_rss} to {end_rss} bytes"
    );

    upstream.forward.store(true, Ordering::SeqCst);
    let outcome = clone_instance(&recipient, relay.addr(), CLONE_TIMEOUT).await?;
    ensure!(
        outcome.completed(),
        "the clone after the rounds: {outcome:?}"
    );
    let differ = dataset.compare(&donor, &recipient).await?;
    ensure!(differ.is_empty(), "tables that differ: {differ:?}");
    Ok(())
}
