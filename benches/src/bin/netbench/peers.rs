//! The ends of each measured path, run as processes of their own (`netbench` re-executed with a
//! hidden subcommand):
//!
//! - [`donor`]: one process serving three loopback ports: the plain fake donor and the TLS fake
//!   donor of the benches' library (greeting, login, `COM_CLONE`, then the clone-shaped
//!   stream), and a ping donor that answers every command after login with an OK.
//! - [`recv`]: one recipient transfer (plain, or with MySQL's SSLRequest upgrade), timed from
//!   connect to the donor's close.
//! - [`ping`]: round trips of a small MySQL packet (`COM_PING`, answered by an OK) after login.
//!
//! Each prints one JSON line on stdout for the orchestrator.

use std::io::{self, BufRead, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use clone_relay::protocol::decoder::Direction;
use clone_relay::protocol::frame;
use clone_relay_benches::tls::{
    bench_pki, client_config, client_config_from_pem, clone_tls_client, fake_tls_donor,
    server_config,
};
use clone_relay_benches::{clone_client, clone_preamble, clone_stream, fake_donor};
use rustls::pki_types::CertificateDer;
use serde::{Deserialize, Serialize};
use tokio_rustls::{TlsAcceptor, TlsConnector};

/// The name in the TLS fake donor's certificate.
pub const DONOR_NAME: &str = "donor";
/// An OK packet's payload.
const OK: [u8; 7] = [0, 0, 0, 2, 0, 0, 0];
/// `COM_PING`.
const COM_PING: u8 = 0x0e;

/// What the donor process announces once its ports are open.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DonorPorts {
    pub plain: SocketAddr,
    pub tls: SocketAddr,
    pub ping: SocketAddr,
}

/// The donor process: builds the stream (`blocks` DATA packets of 1 MiB), writes the TLS
/// donor's CA to `ca_out` (DER), opens its three ports, prints them, and serves until its standard
/// input closes (the orchestrator holds it open while it runs).
pub fn donor(blocks: usize, ca_out: &Path) -> Result<()> {
    let stream = Arc::new(clone_stream(blocks, 1 << 20));
    let pki = bench_pki(DONOR_NAME);
    std::fs::write(ca_out, &pki.ca).with_context(|| format!("writing {}", ca_out.display()))?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("runtime")?;
    let (plain, tls) = runtime.block_on(async {
        let plain = fake_donor(stream.clone()).await;
        let tls = fake_tls_donor(stream, TlsAcceptor::from(server_config(&pki))).await;
        (plain, tls)
    });
    let ping = ping_donor()?;
    println!(
        "{}",
        serde_json::to_string(&DonorPorts { plain, tls, ping })?
    );
    io::stdout().flush()?;
    // The runtime serves on this thread while it waits for standard input to close.
    runtime.block_on(async {
        tokio::task::spawn_blocking(|| {
            let mut sink = Vec::new();
            let _ = io::stdin().lock().read_to_end(&mut sink);
        })
        .await
    })?;
    Ok(())
}

/// A loopback donor for round trips: greeting, login answered by an OK, then an OK for every
/// command until the client closes. One thread per connection (blocking sockets).
fn ping_donor() -> Result<SocketAddr> {
    let listener = TcpListener::bind("127.0.0.1:0").context("bind ping donor")?;
    let addr = listener.local_addr()?;
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(conn) = conn else { continue };
            std::thread::spawn(move || {
                let _ = serve_pings(conn);
            });
        }
    });
    Ok(addr)
}

fn serve_pings(mut s: TcpStream) -> io::Result<()> {
    s.set_nodelay(true)?;
    let preamble = clone_preamble();
    s.write_all(&preamble[0].1)?;
    let (seq, _) = read_packet(&mut s)?;
    s.write_all(&frame(seq.wrapping_add(1), &OK))?;
    loop {
        let (seq, _) = match read_packet(&mut s) {
            Ok(packet) => packet,
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(()),
            Err(e) => return Err(e),
        };
        s.write_all(&frame(seq.wrapping_add(1), &OK))?;
    }
}

/// One MySQL packet: its sequence id and payload.
fn read_packet(s: &mut impl Read) -> io::Result<(u8, Vec<u8>)> {
    let mut header = [0u8; 4];
    s.read_exact(&mut header)?;
    let len = u32::from_le_bytes([header[0], header[1], header[2], 0]) as usize;
    let mut payload = vec![0u8; len];
    s.read_exact(&mut payload)?;
    Ok((header[3], payload))
}

/// TLS for a recipient: the CA file to trust (PEM, or one DER certificate) and the name to verify.
#[derive(Debug, Clone)]
pub struct RecvTls {
    pub ca: PathBuf,
    pub name: String,
}

/// One recipient transfer's outcome.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Transfer {
    pub bytes: u64,
    pub secs: f64,
}

/// One transfer from `addr`: connect, the clone preamble (with the TLS upgrade when `tls` is
/// given), the stream to the donor's close. Fails unless `expect` bytes arrived.
pub fn recv(addr: SocketAddr, tls: Option<RecvTls>, expect: u64) -> Result<()> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("runtime")?;
    let connector = match &tls {
        Some(tls) => {
            let ca = std::fs::read(&tls.ca).with_context(|| format!("{}", tls.ca.display()))?;
            let config = if ca.starts_with(b"-----BEGIN") {
                client_config_from_pem(&ca)
            } else {
                client_config([CertificateDer::from(ca)])
            };
            Some(TlsConnector::from(config))
        }
        None => None,
    };
    let started = Instant::now();
    let bytes = runtime.block_on(async {
        match (&tls, &connector) {
            (Some(tls), Some(connector)) => clone_tls_client(addr, connector, &tls.name).await.0,
            _ => clone_client(addr).await,
        }
    });
    let secs = started.elapsed().as_secs_f64();
    if bytes != expect {
        bail!("{addr}: read {bytes} bytes after the preamble, expected {expect}");
    }
    println!("{}", serde_json::to_string(&Transfer { bytes, secs })?);
    Ok(())
}

/// Round-trip times of one `ping` run, in microseconds, in the order they were taken.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RoundTrips {
    pub rtt_us: Vec<f64>,
}

/// Logs in at `addr`, makes `warmup` round trips, then times `count` (a `COM_PING` out, its OK
/// back, both through whatever sits in between).
pub fn ping(addr: SocketAddr, count: usize, warmup: usize) -> Result<()> {
    let mut s = TcpStream::connect(addr).with_context(|| format!("connect {addr}"))?;
    s.set_nodelay(true)?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    let preamble = clone_preamble();
    read_packet(&mut s).context("greeting")?;
    let login = preamble
        .iter()
        .find(|(dir, _)| *dir == Direction::Upstream)
        .map(|(_, bytes)| bytes.clone())
        .expect("the preamble has a login request");
    s.write_all(&login)?;
    let (_, ok) = read_packet(&mut s).context("login answer")?;
    if ok.first() != Some(&0) {
        bail!("{addr}: login answered with {ok:?}, not an OK");
    }
    let request = frame(0, &[COM_PING]);
    let mut rtts = Vec::with_capacity(count);
    for i in 0..warmup + count {
        let started = Instant::now();
        s.write_all(&request)?;
        let (seq, payload) = read_packet(&mut s).context("ping answer")?;
        let took = started.elapsed();
        if seq != 1 || payload.first() != Some(&0) {
            bail!("{addr}: ping answered with seq {seq}, {payload:?}");
        }
        if i >= warmup {
            rtts.push(took.as_secs_f64() * 1e6);
        }
    }
    println!("{}", serde_json::to_string(&RoundTrips { rtt_us: rtts })?);
    Ok(())
}

/// Reads the single JSON line a peer printed.
pub fn parse_line<T: for<'de> Deserialize<'de>>(what: &str, out: &[u8]) -> Result<T> {
    let line = out
        .lines()
        .map_while(Result::ok)
        .find(|l| l.starts_with('{'))
        .with_context(|| format!("{what}: no JSON line in {:?}", String::from_utf8_lossy(out)))?;
    serde_json::from_str(&line).with_context(|| format!("{what}: {line}"))
}
