//! One connection's conversation, both directions, turned into [`Event`]s as the bytes pass.
//!
//! The decoder only observes: it reads packet headers and the first bytes of payloads, never
//! rewrites anything, and keeps no payload beyond a small head. It follows the phases of a
//! connection (greeting, login, auth, commands, `COM_CLONE`, the clone sub-protocol, and back to
//! commands after `COM_EXIT`), switches to the compressed framing after auth when both sides
//! negotiated it, and stops decoding (the bytes still flow) once TLS starts. Anything that breaks
//! the protocol is a [`Violation`], and the relay closes the connection on it.

use super::clone::{
    COM_CLONE, Command, CommandKind, Descriptor, Locator, ResponseKind, parse_command,
    parse_config, parse_data_desc, parse_error, parse_locators_response,
};
use super::compressed::Decompressor;
use super::handshake::{
    CLIENT_COMPRESS, CLIENT_ZSTD_COMPRESSION, ERR_MARKER, OK_MARKER, ServerHello,
    parse_login_request, parse_server_hello,
};
use super::packet::{PacketHeader, PacketScanner};
pub use super::{Direction, Limits, Phase, Violation, ViolationKind};

/// Payload bytes of each packet the decoder looks at: enough for any locator set, descriptor or
/// error message it reads.
const HEAD_CAP: usize = 512;

/// Something the decoder saw.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    Greeting {
        connection_id: u32,
        server_version: String,
    },
    /// The client's login request; only the user name is read, never the auth data.
    Login {
        user: String,
        compressed: bool,
    },
    TlsStarted,
    Authenticated,
    /// The server sent ERR instead of a greeting, during auth, or to `COM_CLONE`.
    Refused {
        code: u16,
        message: String,
    },
    /// A classic command other than `COM_CLONE`.
    Command {
        code: u8,
    },
    /// The donor accepted `COM_CLONE`: the clone sub-protocol begins.
    CloneStarted,
    CloneCommand(Command),
    CloneLocators(Vec<Locator>),
    CloneDescriptor(Descriptor),
    /// Payload bytes of a DATA response (or of one of its continuation packets).
    CloneData {
        bytes: u64,
    },
    CloneComplete,
    CloneError {
        errno: i32,
        message: String,
    },
    /// A donor setting sent with the clone's configuration.
    DonorConfig {
        name: String,
        value: String,
    },
    /// The clone protocol version the donor chose (its COM_RES_LOCS).
    ProtocolVersion(u32),
    /// A well-framed clone message the relay does not know: from here on its bytes are carried
    /// and not read.
    StoppedFollowing {
        reason: String,
    },
}

/// Before auth, packets over the login limit are handed over at their header, so a huge length
/// is refused at once rather than after its bytes arrive.
fn scanner_limit(lane: &mut Lane, phase: Phase, limits: Limits) {
    let before_auth = matches!(phase, Phase::Greeting | Phase::Login | Phase::Auth);
    lane.scanner.set_max_payload(if before_auth {
        limits.max_login_packet_bytes
    } else {
        usize::MAX
    });
}

/// Framing state of one direction.
#[derive(Debug)]
struct Lane {
    scanner: PacketScanner,
    decompressor: Option<Decompressor>,
    /// The last packet was 0xFFFFFF bytes: the next one continues it.
    continued: bool,
    /// Bytes of the logical packet so far.
    logical_len: usize,
    /// The logical packet being continued is a DATA response.
    continuing_data: bool,
}

impl Lane {
    fn new() -> Self {
        Lane {
            scanner: PacketScanner::new(HEAD_CAP),
            decompressor: None,
            continued: false,
            logical_len: 0,
            continuing_data: false,
        }
    }
}

/// Why a scan stopped early.
enum Stop {
    Violation(Violation),
    /// The rest of the bytes are in another framing (compressed) or opaque (TLS).
    Switch,
}

/// The decoder of one connection.
#[derive(Debug)]
pub struct Decoder {
    limits: Limits,
    upstream: Lane,
    downstream: Lane,
    talk: Conversation,
}

/// The conversation state shared by both directions.
#[derive(Debug)]
struct Conversation {
    limits: Limits,
    phase: Phase,
    server_capabilities: u32,
    compression: Compression,
    /// `COM_CLONE` sent; the next server packet answers it.
    awaiting_clone_ok: bool,
    /// `COM_EXIT` sent; its COMPLETE returns the connection to the command phase.
    exiting: bool,
    /// The relay terminates TLS on this connection, so the decoder sees the bytes inside it:
    /// after an SSLRequest the login request follows (sequence id 2) instead of opaque bytes.
    tls_terminated: bool,
    /// The sequence id the login request must carry.
    login_seq: u8,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Compression {
    None,
    Zlib,
    Zstd,
}

impl Decoder {
    pub fn new(limits: Limits) -> Self {
        Decoder {
            limits,
            upstream: Lane::new(),
            downstream: Lane::new(),
            talk: Conversation {
                limits,
                phase: Phase::Greeting,
                server_capabilities: 0,
                compression: Compression::None,
                awaiting_clone_ok: false,
                exiting: false,
                tls_terminated: false,
                login_seq: 1,
            },
        }
    }

    /// A decoder for a connection whose TLS the relay terminates: it is fed the bytes inside
    /// TLS, so an SSLRequest is followed by a readable login request.
    pub fn inside_tls(mut self) -> Self {
        self.talk.tls_terminated = true;
        self
    }

    pub fn phase(&self) -> Phase {
        self.talk.phase
    }

    /// Whether the connection got past auth (or into TLS, where the relay cannot tell).
    pub fn past_login(&self) -> bool {
        matches!(
            self.talk.phase,
            Phase::Command | Phase::Clone | Phase::Opaque | Phase::Unfollowed
        )
    }

    /// Decodes the next bytes travelling in `dir`, reporting what it sees to `on_event`.
    pub fn feed(
        &mut self,
        dir: Direction,
        chunk: &[u8],
        on_event: &mut dyn FnMut(Event),
    ) -> Result<(), Violation> {
        let mut chunk = chunk;
        while !chunk.is_empty() {
            if matches!(self.talk.phase, Phase::Opaque | Phase::Refused) {
                return Ok(());
            }
            let limits = self.limits;
            let (lane, talk) = match dir {
                Direction::Upstream => (&mut self.upstream, &mut self.talk),
                Direction::Downstream => (&mut self.downstream, &mut self.talk),
            };
            scanner_limit(lane, talk.phase, limits);
            let Lane {
                scanner,
                decompressor,
                continued,
                logical_len,
                continuing_data,
            } = lane;
            let mut on_packet = |h: PacketHeader, head: &[u8]| -> Result<(), Stop> {
                if *continued {
                    *logical_len += h.payload_len;
                    if *logical_len > limits.max_packet_bytes {
                        let limit = limits.max_packet_bytes;
                        let detail = format!("packet of more than {limit} bytes");
                        return talk.stop(dir, ViolationKind::Oversize, detail);
                    }
                    if *continuing_data {
                        on_event(Event::CloneData {
                            bytes: h.payload_len as u64,
                        });
                    }
                    *continued = h.is_continued();
                    return Ok(());
                }
                *continued = h.is_continued();
                *logical_len = h.payload_len;
                if h.payload_len > limits.max_packet_bytes {
                    let limit = limits.max_packet_bytes;
                    let detail = format!("packet of more than {limit} bytes");
                    return talk.stop(dir, ViolationKind::Oversize, detail);
                }
                *continuing_data = talk.phase == Phase::Clone
                    && dir == Direction::Downstream
                    && head.first() == Some(&3);
                talk.on_packet(dir, h, head, on_event)
            };
            match decompressor {
                Some(d) => {
                    // A violation inside the inner stream is kept whole; any other error is the
                    // compressed framing's own.
                    let mut inner_violation = None;
                    let mut inner = |bytes: &[u8]| {
                        scanner.scan(bytes, &mut on_packet).map_err(|(stop, _)| {
                            let v = match stop {
                                Stop::Violation(v) => v,
                                Stop::Switch => Violation {
                                    kind: ViolationKind::OutOfProtocol,
                                    from: dir,
                                    detail: "TLS or compression started inside compression".into(),
                                },
                            };
                            let detail = v.detail.clone();
                            inner_violation = Some(v);
                            detail
                        })
                    };
                    let result = d.feed(chunk, &mut inner);
                    return result.map_err(|detail| {
                        inner_violation.unwrap_or(Violation {
                            kind: ViolationKind::Compression,
                            from: dir,
                            detail,
                        })
                    });
                }
                None => match scanner.scan(chunk, &mut on_packet) {
                    Ok(()) => return Ok(()),
                    Err((Stop::Violation(v), _)) => return Err(v),
                    Err((Stop::Switch, used)) => {
                        chunk = &chunk[used..];
                        self.switch_framing();
                    }
                },
            }
        }
        Ok(())
    }

    /// After auth with compression negotiated, both directions carry compressed packets.
    fn switch_framing(&mut self) {
        if self.talk.phase == Phase::Command && self.talk.compression == Compression::Zlib {
            for lane in [&mut self.upstream, &mut self.downstream] {
                lane.decompressor = Some(Decompressor::new());
                lane.scanner = PacketScanner::new(HEAD_CAP);
            }
        }
    }
}

impl Conversation {
    fn stop(&self, from: Direction, kind: ViolationKind, detail: String) -> Result<(), Stop> {
        Err(Stop::Violation(Violation { kind, from, detail }))
    }

    fn on_packet(
        &mut self,
        dir: Direction,
        h: PacketHeader,
        head: &[u8],
        on_event: &mut dyn FnMut(Event),
    ) -> Result<(), Stop> {
        use Direction::{Downstream, Upstream};
        let before_auth = matches!(self.phase, Phase::Greeting | Phase::Login | Phase::Auth);
        if before_auth && h.payload_len > self.limits.max_login_packet_bytes {
            return self.stop(
                dir,
                ViolationKind::Oversize,
                format!(
                    "{}-byte packet before auth (limit {})",
                    h.payload_len, self.limits.max_login_packet_bytes
                ),
            );
        }
        match (self.phase, dir) {
            (Phase::Greeting, Upstream) => self.stop(
                dir,
                ViolationKind::OutOfProtocol,
                "client sent data before the server greeting".into(),
            ),
            (Phase::Greeting, Downstream) => match parse_server_hello(head) {
                Ok(ServerHello::Greeting(g)) => {
                    self.server_capabilities = g.capabilities;
                    self.phase = Phase::Login;
                    on_event(Event::Greeting {
                        connection_id: g.connection_id,
                        server_version: g.server_version,
                    });
                    Ok(())
                }
                Ok(ServerHello::Error { code, message }) => {
                    self.phase = Phase::Refused;
                    on_event(Event::Refused { code, message });
                    Ok(())
                }
                Err(reason) => self.stop(dir, ViolationKind::Malformed, reason),
            },
            (Phase::Login, Upstream) => {
                if h.seq != self.login_seq {
                    return self.stop(
                        dir,
                        ViolationKind::OutOfProtocol,
                        format!("login request with sequence id {}", h.seq),
                    );
                }
                let login = match parse_login_request(head, h.payload_len) {
                    Ok(login) => login,
                    Err(reason) => return self.stop(dir, ViolationKind::Malformed, reason),
                };
                if login.is_ssl_request && self.login_seq == 1 {
                    on_event(Event::TlsStarted);
                    if self.tls_terminated {
                        self.login_seq = 2;
                        return Ok(());
                    }
                    self.phase = Phase::Opaque;
                    return Err(Stop::Switch);
                }
                let both = login.capabilities & self.server_capabilities;
                self.compression = if both & CLIENT_ZSTD_COMPRESSION != 0 {
                    Compression::Zstd
                } else if both & CLIENT_COMPRESS != 0 {
                    Compression::Zlib
                } else {
                    Compression::None
                };
                self.phase = Phase::Auth;
                on_event(Event::Login {
                    user: login.user,
                    compressed: self.compression != Compression::None,
                });
                Ok(())
            }
            (Phase::Login, Downstream) => self.stop(
                dir,
                ViolationKind::OutOfProtocol,
                "server sent data before the login request".into(),
            ),
            (Phase::Auth, Upstream) => Ok(()),
            (Phase::Auth, Downstream) => match head.first() {
                Some(&OK_MARKER) => {
                    on_event(Event::Authenticated);
                    self.phase = match self.compression {
                        Compression::None | Compression::Zlib => Phase::Command,
                        Compression::Zstd => Phase::Opaque,
                    };
                    // The rest is read with the limits (and framing) of the new phase.
                    Err(Stop::Switch)
                }
                Some(&ERR_MARKER) => {
                    self.phase = Phase::Refused;
                    on_event(refusal(head));
                    Ok(())
                }
                // Auth switch request, more data (fast-auth result, RSA key).
                Some(0xfe | 0x01) => Ok(()),
                other => self.stop(
                    dir,
                    ViolationKind::Malformed,
                    format!("unexpected auth packet starting {other:02x?}"),
                ),
            },
            (Phase::Command, Upstream) => {
                if h.seq != 0 {
                    return Ok(()); // a later packet of the same command (e.g. LOAD DATA)
                }
                let Some(&code) = head.first() else {
                    return self.stop(dir, ViolationKind::Malformed, "empty command".into());
                };
                if code == COM_CLONE {
                    self.awaiting_clone_ok = true;
                } else {
                    on_event(Event::Command { code });
                }
                Ok(())
            }
            (Phase::Command, Downstream) => {
                if self.awaiting_clone_ok {
                    self.awaiting_clone_ok = false;
                    match head.first() {
                        Some(&OK_MARKER) => {
                            self.phase = Phase::Clone;
                            on_event(Event::CloneStarted);
                        }
                        Some(&ERR_MARKER) => on_event(refusal(head)),
                        _ => {
                            return self.stop(
                                dir,
                                ViolationKind::Malformed,
                                "COM_CLONE answered with neither OK nor ERR".into(),
                            );
                        }
                    }
                }
                Ok(())
            }
            (Phase::Clone, Upstream) => {
                let Some(cmd) = parse_command(head) else {
                    let reason = format!("unknown clone command {:02x?}", head.first());
                    self.stop_following(reason, on_event);
                    return Ok(());
                };
                if cmd.kind == CommandKind::Exit {
                    self.exiting = true;
                }
                on_event(Event::CloneCommand(cmd));
                Ok(())
            }
            (Phase::Clone, Downstream) => {
                // A donor that ends the clone protocol on an error answers what follows
                // (COM_EXIT) as a classic server: OK or ERR.
                if let Some(&(OK_MARKER | ERR_MARKER)) = head.first() {
                    self.phase = Phase::Command;
                    self.exiting = false;
                    if head.first() == Some(&ERR_MARKER) {
                        on_event(refusal(head));
                    }
                    return Ok(());
                }
                let kind = head.first().and_then(|&b| ResponseKind::from_byte(b));
                match kind {
                    None => {
                        let reason = format!("unknown clone response {:02x?}", head.first());
                        self.stop_following(reason, on_event);
                        Ok(())
                    }
                    Some(ResponseKind::Locators) => {
                        if let Some(version) = head.get(1..5) {
                            let version = u32::from_le_bytes(version.try_into().expect("4 bytes"));
                            on_event(Event::ProtocolVersion(version));
                        }
                        on_event(Event::CloneLocators(parse_locators_response(head)));
                        Ok(())
                    }
                    Some(ResponseKind::DataDesc) => match parse_data_desc(head) {
                        Some(desc) => {
                            on_event(Event::CloneDescriptor(desc));
                            Ok(())
                        }
                        None => {
                            let reason = format!("a descriptor of {} bytes", h.payload_len);
                            self.stop_following(reason, on_event);
                            Ok(())
                        }
                    },
                    Some(ResponseKind::Data) => {
                        on_event(Event::CloneData {
                            bytes: h.payload_len.saturating_sub(1) as u64,
                        });
                        Ok(())
                    }
                    Some(ResponseKind::Config | ResponseKind::ConfigV3) => {
                        if let Some((name, value)) = parse_config(head) {
                            on_event(Event::DonorConfig { name, value });
                        }
                        Ok(())
                    }
                    Some(ResponseKind::Complete) => {
                        on_event(Event::CloneComplete);
                        if self.exiting {
                            self.exiting = false;
                            self.phase = Phase::Command;
                        }
                        Ok(())
                    }
                    Some(ResponseKind::Error) => {
                        // The donor stays in the clone protocol after an error: the recipient
                        // ends it with COM_EXIT, which the donor answers with COMPLETE.
                        let (errno, message) = parse_error(head).unwrap_or((-1, String::new()));
                        on_event(Event::CloneError { errno, message });
                        Ok(())
                    }
                    Some(_) => Ok(()),
                }
            }
            (Phase::Opaque | Phase::Refused | Phase::Unfollowed, _) => Ok(()),
        }
    }

    /// Stops reading the clone protocol of this connection; its packets still pass framed.
    fn stop_following(&mut self, reason: String, on_event: &mut dyn FnMut(Event)) {
        self.phase = Phase::Unfollowed;
        on_event(Event::StoppedFollowing { reason });
    }
}

fn refusal(head: &[u8]) -> Event {
    match parse_server_hello(head) {
        Ok(ServerHello::Error { code, message }) => Event::Refused { code, message },
        _ => Event::Refused {
            code: 0,
            message: String::new(),
        },
    }
}
