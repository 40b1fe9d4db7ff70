//! A clone recipient at the protocol level, for tests: it speaks the CLONE sub-protocol itself,
//! so a test chooses the protocol version it proposes (0x0100 to 0x0103 and beyond) and reads
//! with its own code what the donor answers. It logs in with caching_sha2_password (fast or full
//! authentication, the full one with the server's RSA key, as a client without TLS does), opens
//! a main and an aux connection as MySQL's recipient does, sends COM_INIT, runs the main task
//! through COM_EXECUTE to COMPLETE while the aux connection acknowledges each finished snapshot
//! state with COM_ACK (the donor waits for it), and ends both with COM_EXIT. It writes nothing
//! to disk: data blocks are counted, and every byte received is kept for comparison with a tap.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use anyhow::{Context, Result, bail, ensure};
use clone_relay::protocol::auth::greeting_nonce;
use clone_relay::protocol::handshake::{
    CHARSET_UTF8MB4, CLIENT_LONG_PASSWORD, CLIENT_PLUGIN_AUTH, CLIENT_PROTOCOL_41,
    CLIENT_SECURE_CONNECTION,
};
use clone_relay::tls::password;
use ring::digest::{SHA256, digest};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// The clone protocol versions MySQL releases propose: 8.0.17, the plugin file names, the
/// network-failure timeout in the config, and 9.7's JSON configs.
pub const PROTOCOL_VERSIONS: [u32; 4] = [0x0100, 0x0101, 0x0102, 0x0103];

/// COM_CLONE, the command that turns a classic connection into a clone one.
const COM_CLONE: u8 = 0x20;
const COM_QUIT: u8 = 0x01;

/// Clone commands (the first payload byte).
const CMD_INIT: u8 = 1;
const CMD_REINIT: u8 = 3;
const CMD_EXECUTE: u8 = 4;
const CMD_ACK: u8 = 5;
const CMD_EXIT: u8 = 6;

/// Clone responses (the first payload byte).
pub const RES_LOCS: u8 = 1;
pub const RES_DATA_DESC: u8 = 2;
pub const RES_DATA: u8 = 3;
pub const RES_PLUGIN: u8 = 4;
pub const RES_CONFIG: u8 = 5;
pub const RES_COLLATION: u8 = 6;
pub const RES_PLUGIN_V2: u8 = 7;
pub const RES_CONFIG_V3: u8 = 8;
pub const RES_CONFIG_V4: u8 = 9;
pub const RES_COMPLETE: u8 = 99;
pub const RES_ERROR: u8 = 100;

/// InnoDB's storage engine type in a locator.
const ENGINE_INNODB: u8 = 12;
/// The DDL timeout word MySQL's recipient sends: 300 s, bit 31 set (no backup lock).
const DDL_TIMEOUT: u32 = 300 | 1 << 31;
/// The locator a recipient sends with COM_INIT: an InnoDB locator descriptor (version 100,
/// 34 bytes, type LOCATOR, no clone yet) in a 128-byte buffer, as MySQL 9.7's recipient sends.
const INIT_LOCATOR_LEN: usize = 128;
const DESC_VERSION: u32 = 100;
const DESC_LOCATOR_LEN: u32 = 34;
const DESC_TYPE_LOCATOR: u32 = 1;
const DESC_TYPE_STATE: u32 = 3;
/// A STATE descriptor's length with the disk estimate (8.0.21 and later) and its flags' offset
/// with and without it; flag bits: 1 = the state starts, 2 = an acknowledgement.
const STATE_LEN_WITH_DISK: usize = 46;
const STATE_FLAGS_WITH_DISK: usize = 44;
const STATE_FLAGS_WITHOUT_DISK: usize = 36;
const STATE_FLAG_START: u16 = 1;
const STATE_FLAG_ACK: u16 = 2;

/// Payloads longer than this are kept in a capture by their first [`CAPTURE_HEAD`] bytes.
const CAPTURE_CUT: usize = 4096;
const CAPTURE_HEAD: usize = 96;

/// caching_sha2_password's more-data answers.
const FAST_AUTH_OK: u8 = 3;
const PERFORM_FULL_AUTH: u8 = 4;
const REQUEST_PUBLIC_KEY: u8 = 2;

/// What one clone by this client saw.
#[derive(Debug, Clone, Default)]
pub struct ClientClone {
    /// The version the donor chose, from its COM_RES_LOCS.
    pub negotiated: u32,
    /// How many responses of each kind (first payload byte) the donor sent to COM_INIT.
    pub init_responses: BTreeMap<u8, usize>,
    /// The names and values of the CONFIG responses (CONFIG, CONFIG_V3), and the JSON of
    /// CONFIG_V4.
    pub configs: Vec<(String, String)>,
    /// The snapshot states (1 init to 5 done) the donor finished and this client acknowledged.
    pub acknowledged_states: Vec<u32>,
    /// The bytes of DATA blocks received.
    pub data_bytes: u64,
    /// Every byte received on each connection from its greeting to its end: main, then aux.
    pub received: Vec<Vec<u8>>,
    /// The donor's locator from its LOCS (engine, bytes): what a COM_REINIT of this clone names.
    pub donor_locator: Option<(u8, Vec<u8>)>,
    /// The error the donor ended the clone with (COM_RES_ERROR), if it did.
    pub error: Option<DonorError>,
    /// Every packet both ways, in order, as relay/tests/captures keeps them.
    pub capture: Vec<Value>,
}

/// What the client does besides a plain clone.
#[derive(Debug, Clone, Copy)]
pub struct ClientOptions {
    /// The protocol version proposed.
    pub version: u32,
    /// Acknowledge the end of this snapshot state with this error code instead of 0, as a
    /// recipient that failed to apply it does: the donor then ends the clone with an error.
    pub fail_ack: Option<(u32, i32)>,
}

impl ClientOptions {
    pub fn version(version: u32) -> Self {
        ClientOptions {
            version,
            fail_ack: None,
        }
    }
}

/// A clone error the donor sent (COM_RES_ERROR) or a classic ERR.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DonorError {
    pub errno: i32,
    pub message: String,
}

impl std::fmt::Display for DonorError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "donor error {}: {}", self.errno, self.message)
    }
}

impl std::error::Error for DonorError {}

/// Clones from `addr` (a donor, or a relay in front of one) as `user`, proposing `version`.
/// A donor error is returned as an error.
pub async fn clone_at_version(
    addr: SocketAddr,
    user: &str,
    password: &str,
    version: u32,
) -> Result<ClientClone> {
    let run = clone_with(addr, user, password, ClientOptions::version(version)).await?;
    match run.error {
        Some(error) => Err(error.into()),
        None => Ok(run),
    }
}

/// Clones from `addr` as `options` say. A donor error ends the clone as MySQL's recipient ends
/// it (COM_EXIT on each connection, answered with COMPLETE) and is kept in
/// [`ClientClone::error`]; anything else that goes wrong is an error.
pub async fn clone_with(
    addr: SocketAddr,
    user: &str,
    password: &str,
    options: ClientOptions,
) -> Result<ClientClone> {
    let log = Capture::new();
    let mut main = Conn::login(addr, user, password, 1, &log)
        .await
        .context("main")?;
    let mut aux = Conn::login(addr, user, password, 2, &log)
        .await
        .context("aux")?;
    let mut out = ClientClone::default();

    main.write(
        0,
        &locator_command(CMD_INIT, options.version, &init_locator()),
    )
    .await?;
    out.error = init_responses(&mut main, &mut out).await?;
    if out.error.is_none() {
        out.error = execute(&mut main, &mut aux, &mut out, options).await?;
    }
    for conn in [&mut aux, &mut main] {
        conn.write(0, &[CMD_EXIT]).await?;
        conn.until_complete().await.context("COM_EXIT")?;
        conn.write(0, &[COM_QUIT]).await?;
    }
    for conn in [main, aux] {
        out.received.push(conn.finish().await?);
    }
    out.capture = log.rows();
    Ok(out)
}

/// Sends COM_REINIT for the clone `locator` names (from an earlier [`ClientClone`]) on a new
/// main connection, reads the donor's answer to it and ends with COM_EXIT. The donor's refusal
/// is in [`ClientClone::error`].
pub async fn reinit(
    addr: SocketAddr,
    user: &str,
    password: &str,
    version: u32,
    locator: &(u8, Vec<u8>),
) -> Result<ClientClone> {
    let log = Capture::new();
    let mut main = Conn::login(addr, user, password, 1, &log)
        .await
        .context("main")?;
    let mut out = ClientClone::default();
    main.write(0, &locator_command(CMD_REINIT, version, locator))
        .await?;
    out.error = init_responses(&mut main, &mut out).await?;
    main.write(0, &[CMD_EXIT]).await?;
    main.until_complete().await.context("COM_EXIT")?;
    main.write(0, &[COM_QUIT]).await?;
    out.received.push(main.finish().await?);
    out.capture = log.rows();
    Ok(out)
}

/// The donor's answers to COM_INIT or COM_REINIT, up to COMPLETE or ERROR.
async fn init_responses(main: &mut Conn, out: &mut ClientClone) -> Result<Option<DonorError>> {
    loop {
        let payload = main.read().await?;
        let kind = payload.first().copied().unwrap_or_default();
        *out.init_responses.entry(kind).or_default() += 1;
        match kind {
            RES_LOCS => {
                out.negotiated = le_u32(&payload, 1).context("LOCS without a version")?;
                out.donor_locator = Some(first_locator(&payload[5..]).context("LOCS without one")?);
            }
            RES_CONFIG | RES_CONFIG_V3 | RES_CONFIG_V4 => out
                .configs
                .push(config_pair(&payload[1..]).context("a config response")?),
            RES_COMPLETE => return Ok(None),
            RES_ERROR => return Ok(Some(donor_error(&payload))),
            _ => {}
        }
    }
}

/// The main task from COM_EXECUTE to COMPLETE or ERROR, each finished state acknowledged on
/// aux.
async fn execute(
    main: &mut Conn,
    aux: &mut Conn,
    out: &mut ClientClone,
    options: ClientOptions,
) -> Result<Option<DonorError>> {
    let donor_locator = out
        .donor_locator
        .clone()
        .context("the donor sent no LOCS")?;
    main.write(0, &[CMD_EXECUTE]).await?;
    loop {
        let payload = main.read().await?;
        match payload.first().copied() {
            Some(RES_DATA_DESC) => {
                let desc = payload.get(3..).unwrap_or_default();
                let Some((state, flags_at)) = finished_state(desc) else {
                    continue;
                };
                let mut ack_desc = desc.to_vec();
                let flags = u16::from_be_bytes([desc[flags_at], desc[flags_at + 1]]);
                ack_desc[flags_at..flags_at + 2]
                    .copy_from_slice(&(flags | STATE_FLAG_ACK).to_be_bytes());
                let error = match options.fail_ack {
                    Some((at, code)) if at == state => code,
                    _ => 0,
                };
                aux.write(0, &ack_command(error, &donor_locator, &ack_desc))
                    .await?;
                if let Some(error) = aux.until_complete_or_error().await? {
                    return Ok(Some(error));
                }
                out.acknowledged_states.push(state);
            }
            Some(RES_DATA) => out.data_bytes += payload.len() as u64 - 1,
            Some(RES_COMPLETE) => return Ok(None),
            Some(RES_ERROR) => return Ok(Some(donor_error(&payload))),
            _ => {}
        }
    }
}

/// Writes a run's capture to `path`, one JSON object per line.
pub fn write_capture(path: &std::path::Path, run: &ClientClone) -> Result<()> {
    let mut text = String::new();
    for row in &run.capture {
        text.push_str(&row.to_string());
        text.push('\n');
    }
    std::fs::write(path, text).with_context(|| format!("writing {}", path.display()))
}

/// COM_INIT or COM_REINIT: `[cmd][u32 version][u32 ddl timeout][engine][u32 len][locator]`.
fn locator_command(cmd: u8, version: u32, locator: &(u8, Vec<u8>)) -> Vec<u8> {
    let mut out = vec![cmd];
    out.extend(version.to_le_bytes());
    out.extend(DDL_TIMEOUT.to_le_bytes());
    out.push(locator.0);
    out.extend((locator.1.len() as u32).to_le_bytes());
    out.extend(&locator.1);
    out
}

/// The locator of a new clone: an InnoDB locator descriptor with no clone yet.
fn init_locator() -> (u8, Vec<u8>) {
    let mut locator = vec![0u8; INIT_LOCATOR_LEN];
    locator[..4].copy_from_slice(&DESC_VERSION.to_be_bytes());
    locator[4..8].copy_from_slice(&DESC_LOCATOR_LEN.to_be_bytes());
    locator[8..12].copy_from_slice(&DESC_TYPE_LOCATOR.to_be_bytes());
    (ENGINE_INNODB, locator)
}

/// COM_ACK: `[5][i32 error][engine][u32 len][locator][u32 len][descriptor]`.
fn ack_command(error: i32, locator: &(u8, Vec<u8>), desc: &[u8]) -> Vec<u8> {
    let mut cmd = vec![CMD_ACK];
    cmd.extend(error.to_le_bytes());
    cmd.push(locator.0);
    cmd.extend((locator.1.len() as u32).to_le_bytes());
    cmd.extend(&locator.1);
    cmd.extend((desc.len() as u32).to_le_bytes());
    cmd.extend(desc);
    cmd
}

/// The first `[u8 engine][u32 len][bytes]` locator of a LOCS response's tail.
fn first_locator(rest: &[u8]) -> Option<(u8, Vec<u8>)> {
    let engine = *rest.first()?;
    let len = le_u32(rest, 1)? as usize;
    Some((engine, rest.get(5..5 + len)?.to_vec()))
}

/// A STATE descriptor whose state has finished (the start flag clear): its state and the
/// offset of its flags. The layout is told by the descriptor's length.
fn finished_state(desc: &[u8]) -> Option<(u32, usize)> {
    if be_u32(desc, 8)? != DESC_TYPE_STATE {
        return None;
    }
    let len = be_u32(desc, 4)? as usize;
    let flags_at = if len >= STATE_LEN_WITH_DISK {
        STATE_FLAGS_WITH_DISK
    } else {
        STATE_FLAGS_WITHOUT_DISK
    };
    let flags = u16::from_be_bytes([*desc.get(flags_at)?, *desc.get(flags_at + 1)?]);
    (flags & STATE_FLAG_START == 0).then_some((be_u32(desc, 12)?, flags_at))
}

/// `[u32 len][name][u32 len][value]` of a config response.
fn config_pair(body: &[u8]) -> Option<(String, String)> {
    let name_len = le_u32(body, 0)? as usize;
    let name = body.get(4..4 + name_len)?;
    let value_len = le_u32(body, 4 + name_len)? as usize;
    let value = body.get(8 + name_len..8 + name_len + value_len)?;
    Some((
        String::from_utf8_lossy(name).into_owned(),
        String::from_utf8_lossy(value).into_owned(),
    ))
}

/// COM_RES_ERROR `[100][i32 errno][message]`, or a classic ERR `[ff][u16 errno][#state][message]`.
fn donor_error(payload: &[u8]) -> DonorError {
    match payload.first() {
        Some(&0xff) => DonorError {
            errno: payload
                .get(1..3)
                .map_or(-1, |b| i32::from(u16::from_le_bytes([b[0], b[1]]))),
            message: String::from_utf8_lossy(payload.get(9..).unwrap_or_default()).into_owned(),
        },
        _ => DonorError {
            errno: le_u32(payload, 1).map_or(-1, |v| v as i32),
            message: String::from_utf8_lossy(payload.get(5..).unwrap_or_default()).into_owned(),
        },
    }
}

fn le_u32(bytes: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_le_bytes(bytes.get(at..at + 4)?.try_into().ok()?))
}

fn be_u32(bytes: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_be_bytes(bytes.get(at..at + 4)?.try_into().ok()?))
}

/// The packets of one run, in the order sent and read, as relay/tests/captures keeps them.
#[derive(Debug, Clone)]
struct Capture {
    start: Instant,
    rows: Arc<Mutex<Vec<Value>>>,
}

impl Capture {
    fn new() -> Self {
        Capture {
            start: Instant::now(),
            rows: Arc::default(),
        }
    }

    fn t(&self) -> f64 {
        (self.start.elapsed().as_secs_f64() * 1e4).round() / 1e4
    }

    fn event(&self, conn: u64, event: &str) {
        let row = json!({"conn": conn, "event": event, "t": self.t()});
        self.rows.lock().expect("capture").push(row);
    }

    fn packet(&self, conn: u64, dir: &str, seq: u8, payload: &[u8]) {
        let kept = if payload.len() > CAPTURE_CUT {
            &payload[..CAPTURE_HEAD]
        } else {
            payload
        };
        let hex: String = kept.iter().map(|b| format!("{b:02x}")).collect();
        let row = json!({"conn": conn, "dir": dir, "t": self.t(), "seq": seq,
            "len": payload.len(), "hex": hex});
        self.rows.lock().expect("capture").push(row);
    }

    fn rows(&self) -> Vec<Value> {
        self.rows.lock().expect("capture").clone()
    }
}

/// One clone connection: classic packets, every byte received kept.
struct Conn {
    id: u64,
    stream: TcpStream,
    received: Vec<u8>,
    /// The sequence id of the last packet read.
    last_seq: u8,
    capture: Capture,
}

impl Conn {
    /// Connects, logs in and sends COM_CLONE; `id` names the connection in the capture.
    async fn login(
        addr: SocketAddr,
        user: &str,
        password: &str,
        id: u64,
        capture: &Capture,
    ) -> Result<Self> {
        let stream = TcpStream::connect(addr).await?;
        stream.set_nodelay(true)?;
        capture.event(id, "open");
        let mut conn = Conn {
            id,
            stream,
            received: Vec::new(),
            last_seq: 0,
            capture: capture.clone(),
        };
        let greeting = conn.read().await?;
        if greeting.first() == Some(&0xff) {
            return Err(donor_error(&greeting).into());
        }
        let nonce = greeting_nonce(&greeting).context("a greeting without a nonce")?;
        conn.write(
            1,
            &login_request(user, &scramble(password.as_bytes(), &nonce)),
        )
        .await?;
        loop {
            let reply = conn.read().await?;
            match reply.as_slice() {
                [0x00, ..] => break,
                [0xff, ..] => return Err(donor_error(&reply).into()),
                [0x01, FAST_AUTH_OK] => {}
                [0x01, PERFORM_FULL_AUTH] => {
                    conn.write(conn.last_seq + 1, &[REQUEST_PUBLIC_KEY]).await?;
                    let key = conn.read().await?;
                    ensure!(key.first() == Some(&0x01), "no public key came: {key:02x?}");
                    let key =
                        password::public_key_from_pem(&key[1..]).map_err(anyhow::Error::msg)?;
                    let encrypted = password::encrypt(password.as_bytes(), &nonce, &key)
                        .map_err(anyhow::Error::msg)?;
                    conn.write(conn.last_seq + 1, &encrypted).await?;
                }
                other => bail!(
                    "unexpected auth packet {:02x?}",
                    &other[..other.len().min(8)]
                ),
            }
        }
        conn.write(0, &[COM_CLONE]).await?;
        let ok = conn.read().await?;
        if ok.first() != Some(&0x00) {
            return Err(donor_error(&ok).into());
        }
        Ok(conn)
    }

    /// Reads one logical packet (continuations joined).
    async fn read(&mut self) -> Result<Vec<u8>> {
        let mut payload = Vec::new();
        loop {
            let mut header = [0u8; 4];
            self.stream.read_exact(&mut header).await?;
            let len = u32::from_le_bytes([header[0], header[1], header[2], 0]) as usize;
            self.last_seq = header[3];
            let start = payload.len();
            payload.resize(start + len, 0);
            self.stream.read_exact(&mut payload[start..]).await?;
            self.received.extend_from_slice(&header);
            self.received.extend_from_slice(&payload[start..]);
            self.capture
                .packet(self.id, "s2c", header[3], &payload[start..]);
            if len < 0xff_ffff {
                return Ok(payload);
            }
        }
    }

    async fn write(&mut self, seq: u8, payload: &[u8]) -> Result<()> {
        let packet = clone_relay::protocol::frame(seq, payload);
        self.stream.write_all(&packet).await?;
        self.capture.packet(self.id, "c2s", seq, payload);
        Ok(())
    }

    /// Reads responses until COMPLETE; an ERROR is returned as a [`DonorError`].
    async fn until_complete(&mut self) -> Result<()> {
        match self.until_complete_or_error().await? {
            Some(error) => Err(error.into()),
            None => Ok(()),
        }
    }

    /// Reads responses until COMPLETE (`None`) or ERROR.
    async fn until_complete_or_error(&mut self) -> Result<Option<DonorError>> {
        loop {
            let payload = self.read().await?;
            match payload.first() {
                Some(&RES_COMPLETE) => return Ok(None),
                Some(&RES_ERROR) => return Ok(Some(donor_error(&payload))),
                _ => {}
            }
        }
    }

    /// Reads to the end of the stream (the donor closes after COM_QUIT) and returns every byte
    /// received.
    async fn finish(mut self) -> Result<Vec<u8>> {
        self.stream.read_to_end(&mut self.received).await?;
        self.capture.event(self.id, "close");
        Ok(self.received)
    }
}

/// A HandshakeResponse41 for `user` with a caching_sha2_password scramble.
fn login_request(user: &str, scramble: &[u8]) -> Vec<u8> {
    let capabilities =
        CLIENT_LONG_PASSWORD | CLIENT_PROTOCOL_41 | CLIENT_SECURE_CONNECTION | CLIENT_PLUGIN_AUTH;
    let mut login = Vec::with_capacity(128);
    login.extend(capabilities.to_le_bytes());
    login.extend((1u32 << 30).to_le_bytes());
    login.push(CHARSET_UTF8MB4);
    login.extend([0; 23]);
    login.extend(user.as_bytes());
    login.push(0);
    login.push(scramble.len() as u8);
    login.extend(scramble);
    login.extend(b"caching_sha2_password\0");
    login
}

/// caching_sha2_password's fast-auth scramble: SHA256(p) XOR SHA256(SHA256(SHA256(p)), nonce).
fn scramble(password: &[u8], nonce: &[u8]) -> Vec<u8> {
    if password.is_empty() {
        return Vec::new();
    }
    let once = digest(&SHA256, password);
    let twice = digest(&SHA256, once.as_ref());
    let mut salted = twice.as_ref().to_vec();
    salted.extend_from_slice(nonce);
    let salted = digest(&SHA256, &salted);
    once.as_ref()
        .iter()
        .zip(salted.as_ref())
        .map(|(a, b)| a ^ b)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn init_matches_what_mysql_9_7_sends() {
        // COM_INIT as MySQL 9.7.4's recipient sent it (relay/tests/captures), version 0x0103.
        let mut expected = vec![
            0x01, 0x03, 0x01, 0, 0, 0x2c, 0x01, 0, 0x80, 0x0c, 0x80, 0, 0, 0,
        ];
        expected.extend([0, 0, 0, 0x64, 0, 0, 0, 0x22, 0, 0, 0, 0x01]);
        expected.extend([0u8; 116]);
        assert_eq!(locator_command(CMD_INIT, 0x0103, &init_locator()), expected);
    }

    #[test]
    fn only_finished_states_are_acknowledged() {
        // STATE descriptors from a 9.7.4 donor: init finished, file copy started.
        let hex = |s: &str| chaos::spec::unhex(s).expect("hex");
        let finished = hex(
            "000000640000002e00000003000000010000000000000000000000000000000000000000000000000000000000000000",
        );
        let started = hex(
            "000000640000002e0000000300000002000000000000000a00000007000000001281fb000000000018c21b000001",
        );
        assert_eq!(finished_state(&finished[..46]), Some((1, 44)));
        assert_eq!(finished_state(&started), None);
    }
}
