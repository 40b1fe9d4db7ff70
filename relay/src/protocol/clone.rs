//! The CLONE sub-protocol that follows `COM_CLONE`: the recipient's commands, the donor's
//! responses, locators and InnoDB descriptors. Integers in the protocol are little-endian; the
//! bodies of InnoDB locators and descriptors are big-endian.

/// `COM_CLONE`, the classic command that switches a connection to the clone sub-protocol.
pub const COM_CLONE: u8 = 0x20;
/// Storage engine type of InnoDB in a locator.
pub const ENGINE_INNODB: u8 = 12;

/// A recipient's clone command.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum CommandKind {
    Init,
    Attach,
    Reinit,
    Execute,
    Ack,
    Exit,
}

impl CommandKind {
    pub fn from_byte(b: u8) -> Option<Self> {
        Some(match b {
            1 => CommandKind::Init,
            2 => CommandKind::Attach,
            3 => CommandKind::Reinit,
            4 => CommandKind::Execute,
            5 => CommandKind::Ack,
            6 => CommandKind::Exit,
            _ => return None,
        })
    }
}

/// A donor's clone response.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ResponseKind {
    Locators,
    DataDesc,
    Data,
    Plugin,
    Config,
    Collation,
    PluginV2,
    ConfigV3,
    ConfigV4,
    Complete,
    Error,
}

impl ResponseKind {
    pub fn from_byte(b: u8) -> Option<Self> {
        Some(match b {
            1 => ResponseKind::Locators,
            2 => ResponseKind::DataDesc,
            3 => ResponseKind::Data,
            4 => ResponseKind::Plugin,
            5 => ResponseKind::Config,
            6 => ResponseKind::Collation,
            7 => ResponseKind::PluginV2,
            8 => ResponseKind::ConfigV3,
            9 => ResponseKind::ConfigV4,
            99 => ResponseKind::Complete,
            100 => ResponseKind::Error,
            _ => return None,
        })
    }
}

/// Identifies one clone on its donor: every connection of a clone session, and every reconnect
/// that resumes it, carries the same pair.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize)]
pub struct CloneId {
    pub clone_id: u64,
    pub snapshot_id: u64,
}

/// A storage engine locator.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Locator {
    pub engine: u8,
    /// For InnoDB: the clone and snapshot ids (zero in an INIT, before the donor assigns them).
    pub id: Option<CloneId>,
}

/// Reads one locator `[u8 engine][u32 len][body]` from the front of `bytes`; returns it and the
/// bytes after it. `None` when `bytes` ends first.
pub fn parse_locator(bytes: &[u8]) -> Option<(Locator, &[u8])> {
    let engine = *bytes.first()?;
    let len = u32::from_le_bytes(bytes.get(1..5)?.try_into().ok()?) as usize;
    let body = bytes.get(5..5 + len)?;
    let id = (engine == ENGINE_INNODB)
        .then(|| {
            // InnoDB locator: 12-byte descriptor header, then clone id and snapshot id.
            Some(CloneId {
                clone_id: be_u64(body, 12)?,
                snapshot_id: be_u64(body, 20)?,
            })
        })
        .flatten();
    Some((Locator { engine, id }, &bytes[5 + len..]))
}

/// The InnoDB clone id found among locators, if any and if assigned (non-zero).
pub fn innodb_clone_id(locators: &[Locator]) -> Option<CloneId> {
    locators
        .iter()
        .filter_map(|l| l.id)
        .find(|id| id.clone_id != 0 || id.snapshot_id != 0)
}

/// A parsed clone command.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Command {
    pub kind: CommandKind,
    /// Protocol version, for INIT, ATTACH and REINIT.
    pub version: Option<u32>,
    pub locators: Vec<Locator>,
}

/// Parses a clone command from the head of its payload (locators cut off by the head's end are
/// left out).
pub fn parse_command(head: &[u8]) -> Option<Command> {
    let kind = CommandKind::from_byte(*head.first()?)?;
    let mut locators = Vec::new();
    let mut version = None;
    match kind {
        CommandKind::Init | CommandKind::Attach | CommandKind::Reinit => {
            version = head
                .get(1..5)
                .map(|v| u32::from_le_bytes(v.try_into().expect("4 bytes")));
            let mut rest = head.get(9..).unwrap_or_default();
            while let Some((locator, after)) = parse_locator(rest) {
                locators.push(locator);
                rest = after;
            }
        }
        CommandKind::Ack => {
            // [5][i32 error][locator][u32 len][descriptor]
            if let Some((locator, _)) = head.get(5..).and_then(parse_locator) {
                locators.push(locator);
            }
        }
        CommandKind::Execute | CommandKind::Exit => {}
    }
    Some(Command {
        kind,
        version,
        locators,
    })
}

/// Parses the locators of a LOCS response.
pub fn parse_locators_response(head: &[u8]) -> Vec<Locator> {
    // [1][u32 version][locators...]
    let mut locators = Vec::new();
    let mut rest = head.get(5..).unwrap_or_default();
    while let Some((locator, after)) = parse_locator(rest) {
        locators.push(locator);
        rest = after;
    }
    locators
}

/// InnoDB snapshot states, as STATE and DATA descriptors carry them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Stage {
    Init,
    FileCopy,
    PageCopy,
    RedoCopy,
    Done,
    Other,
}

impl Stage {
    pub fn from_wire(state: u32) -> Self {
        match state {
            1 => Stage::Init,
            2 => Stage::FileCopy,
            3 => Stage::PageCopy,
            4 => Stage::RedoCopy,
            5 => Stage::Done,
            _ => Stage::Other,
        }
    }
}

/// What the relay reads from a DATA_DESC response.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Descriptor {
    /// A snapshot state: its stage and, when it starts, the estimated bytes to transfer.
    State {
        stage: Stage,
        task: u32,
        estimate_bytes: u64,
        is_start: bool,
    },
    /// The header of the DATA block that follows.
    Data {
        stage: Stage,
        task: u32,
        chunk: u32,
        block: u32,
        file: u32,
        bytes: u32,
    },
    /// Any other descriptor (task metadata, file metadata, locators).
    Other { desc_type: u32 },
}

const DESC_TYPE_STATE: u32 = 3;
/// A STATE descriptor's flags (big-endian u16) with and without the estimated disk use before
/// them, and its whole length with it.
const STATE_FLAGS_WITH_DISK: usize = 44;
const STATE_FLAGS_WITHOUT_DISK: usize = 36;
const STATE_LEN_WITH_DISK: usize = STATE_FLAGS_WITH_DISK + 2;
const DESC_TYPE_DATA: u32 = 5;

/// Parses a DATA_DESC response head: `[2][u8 engine][u8 locator index][InnoDB descriptor]`.
pub fn parse_data_desc(head: &[u8]) -> Option<Descriptor> {
    let d = head.get(3..)?;
    let desc_type = be_u32(d, 8)?;
    Some(match desc_type {
        DESC_TYPE_STATE => {
            // The descriptor's own length tells the layout: 8.0.21 and later put the estimated
            // disk use (8 bytes) before the 2-byte flags, older servers do not (both say
            // version 100).
            let flags_at = if be_u32(d, 4)? as usize >= STATE_LEN_WITH_DISK {
                STATE_FLAGS_WITH_DISK
            } else {
                STATE_FLAGS_WITHOUT_DISK
            };
            Descriptor::State {
                stage: Stage::from_wire(be_u32(d, 12)?),
                task: be_u32(d, 16)?,
                estimate_bytes: be_u64(d, 28)?,
                is_start: d.get(flags_at + 1).is_some_and(|flags| flags & 1 == 1),
            }
        }
        DESC_TYPE_DATA => Descriptor::Data {
            stage: Stage::from_wire(be_u32(d, 12)?),
            task: be_u32(d, 16)?,
            chunk: be_u32(d, 20)?,
            block: be_u32(d, 24)?,
            file: be_u32(d, 28)?,
            bytes: be_u32(d, 32)?,
        },
        desc_type => Descriptor::Other { desc_type },
    })
}

/// Parses a CONFIG response (`[code][u32 len][name][u32 len][value]`): one donor setting.
pub fn parse_config(head: &[u8]) -> Option<(String, String)> {
    let text = |at: usize| -> Option<(String, usize)> {
        let len = u32::from_le_bytes(head.get(at..at + 4)?.try_into().ok()?) as usize;
        let bytes = head.get(at + 4..at + 4 + len)?;
        Some((String::from_utf8_lossy(bytes).into_owned(), at + 4 + len))
    };
    let (name, next) = text(1)?;
    let (value, _) = text(next)?;
    Some((name, value))
}

/// Parses an ERROR response: `[100][i32 errno][message]`.
pub fn parse_error(head: &[u8]) -> Option<(i32, String)> {
    let errno = i32::from_le_bytes(head.get(1..5)?.try_into().ok()?);
    Some((errno, String::from_utf8_lossy(&head[5..]).into_owned()))
}

fn be_u32(b: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_be_bytes(b.get(at..at + 4)?.try_into().ok()?))
}

fn be_u64(b: &[u8], at: usize) -> Option<u64> {
    Some(u64::from_be_bytes(b.get(at..at + 8)?.try_into().ok()?))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::unhex;

    // Payloads from relay/tests/captures/clone-9.7.4-workers-reset.jsonl.
    const ATTACH: &str = "02030100002c0100800c2200000000000064000000220000000100000000000000210000000000000022000000000100";
    const LOCS: &str =
        "01030100000c2200000000000064000000220000000100000000000000210000000000000022000000000200";
    const STATE_FILE_COPY: &str = "020c00000000640000002e0000000300000002000000000000000a00000007000000001281fb000000000018c21b000001";
    const DATA_DESC: &str =
        "020c0000000064000000340000000500000002000000020000000500000001000000030010000000";

    #[test]
    fn reads_an_attach() {
        let cmd = parse_command(&unhex(ATTACH)).unwrap();
        assert_eq!(cmd.kind, CommandKind::Attach);
        assert_eq!(cmd.version, Some(0x0103));
        assert_eq!(
            innodb_clone_id(&cmd.locators),
            Some(CloneId {
                clone_id: 0x21,
                snapshot_id: 0x22
            })
        );
    }

    #[test]
    fn reads_the_donors_locators() {
        let locators = parse_locators_response(&unhex(LOCS));
        assert_eq!(locators.len(), 1);
        assert_eq!(locators[0].engine, ENGINE_INNODB);
        assert_eq!(locators[0].id.unwrap().clone_id, 0x21);
    }

    #[test]
    fn reads_state_and_data_descriptors() {
        assert_eq!(
            parse_data_desc(&unhex(STATE_FILE_COPY)),
            Some(Descriptor::State {
                stage: Stage::FileCopy,
                task: 0,
                estimate_bytes: 0x1281_fb00,
                is_start: true
            })
        );
        assert_eq!(
            parse_data_desc(&unhex(DATA_DESC)),
            Some(Descriptor::Data {
                stage: Stage::FileCopy,
                task: 2,
                chunk: 5,
                block: 1,
                file: 3,
                bytes: 1 << 20
            })
        );
    }

    #[test]
    fn reads_a_donor_setting() {
        // From the captures in relay/tests/captures: the donor's resume patience, in minutes.
        let head = unhex(
            "0829000000636c6f6e655f646f6e6f725f74696d656f75745f61667465725f6e6574776f726b5f6661696c7572650100000035",
        );
        assert_eq!(
            parse_config(&head),
            Some((
                "clone_donor_timeout_after_network_failure".into(),
                "5".into()
            ))
        );
        assert_eq!(parse_config(&head[..20]), None);
    }

    #[test]
    fn reads_an_error() {
        let mut head = vec![100];
        head.extend(3862i32.to_le_bytes());
        head.extend(b"Clone Donor Error");
        assert_eq!(parse_error(&head), Some((3862, "Clone Donor Error".into())));
    }

    #[test]
    fn reads_a_state_descriptor_without_the_disk_estimate() {
        // As servers before 8.0.21 send it: 38 bytes, the flags right after the byte estimate.
        let mut head = unhex(STATE_FILE_COPY);
        head.drain(3 + 36..3 + 44);
        head[3 + 4..3 + 8].copy_from_slice(&38u32.to_be_bytes());
        let started = Descriptor::State {
            stage: Stage::FileCopy,
            task: 0,
            estimate_bytes: 0x1281_fb00,
            is_start: true,
        };
        assert_eq!(parse_data_desc(&head), Some(started));
        // The same descriptor not marking a start.
        let last = head.len() - 1;
        head[last] = 0;
        assert!(matches!(
            parse_data_desc(&head),
            Some(Descriptor::State {
                is_start: false,
                ..
            })
        ));
        // With the disk estimate, the flags are read after it, not at the old place.
        let mut head = unhex(STATE_FILE_COPY);
        head[3 + 37] = 1;
        head[3 + 45] = 0;
        assert!(matches!(
            parse_data_desc(&head),
            Some(Descriptor::State {
                is_start: false,
                ..
            })
        ));
    }

    #[test]
    fn truncated_input_is_not_a_panic() {
        for cut in 0..unhex(ATTACH).len() {
            let _ = parse_command(&unhex(ATTACH)[..cut]);
        }
        for cut in 0..unhex(STATE_FILE_COPY).len() {
            let _ = parse_data_desc(&unhex(STATE_FILE_COPY)[..cut]);
        }
    }
}
