//! Properties of the decoder: the events of a conversation do not depend on how its bytes are
//! split into reads, and no input at all makes it panic.

mod common;
use common::{GREETING, packet, unhex};

use clone_relay::protocol::decoder::{Decoder, Direction, Event, Limits};
use proptest::prelude::*;

const ATTACH: &str = "02030100002c0100800c2200000000000064000000220000000100000000000000210000000000000022000000000100";
const LOCS: &str =
    "01030100000c2200000000000064000000220000000100000000000000210000000000000022000000000200";
const STATE: &str = "020c00000000640000002e0000000300000002000000000000000a00000007000000001281fb000000000018c21b000001";
const DATA_DESC: &str =
    "020c0000000064000000340000000500000002000000020000000500000001000000030010000000";

/// A worker's whole conversation, as (direction, bytes) in the order they are sent.
fn conversation(data_len: usize) -> Vec<(Direction, Vec<u8>)> {
    use Direction::{Downstream as S2c, Upstream as C2s};
    let mut login = vec![0u8; 32];
    login[..4].copy_from_slice(&0x0008_0200u32.to_le_bytes());
    login.extend_from_slice(b"donor_clone\0");
    login.extend_from_slice(&[0x20; 21]);
    let mut data = vec![3u8];
    data.extend((0..data_len).map(|i| i as u8));
    let mut responses = packet(0, &unhex(STATE));
    responses.extend(packet(0, &unhex(DATA_DESC)));
    responses.extend(packet(0, &data));
    responses.extend(packet(0, &[0x63]));
    let mut auth = packet(2, &[1, 3]);
    auth.extend(packet(3, &[0, 0, 0, 2, 0, 0, 0]));
    let mut locs = packet(0, &unhex(LOCS));
    locs.extend(packet(0, &[0x63]));
    vec![
        (S2c, packet(0, &unhex(GREETING))),
        (C2s, packet(1, &login)),
        (S2c, auth),
        (C2s, packet(0, &[0x20])),
        (S2c, packet(1, &[0, 0, 0, 2, 0, 0, 0])),
        (C2s, packet(0, &unhex(ATTACH))),
        (S2c, locs),
        (C2s, packet(0, &[4])),
        (S2c, responses),
        (C2s, packet(0, &[6])),
        (S2c, packet(0, &[0x63])),
        (C2s, packet(0, &[0x1f])),
        (C2s, packet(0, &[0x01])),
    ]
}

/// Feeds the conversation, each message cut at the given sizes (cycled); returns the events,
/// with DATA byte counts summed so that splits of the counting do not matter.
fn events(conv: &[(Direction, Vec<u8>)], cuts: &[usize]) -> (Vec<Event>, u64) {
    let mut decoder = Decoder::new(Limits::default());
    let mut events = Vec::new();
    let mut data = 0;
    let mut sizes = cuts.iter().cycle();
    for (dir, bytes) in conv {
        let mut rest = &bytes[..];
        while !rest.is_empty() {
            let n = (*sizes.next().unwrap()).min(rest.len());
            decoder
                .feed(*dir, &rest[..n], &mut |e| match e {
                    Event::CloneData { bytes } => data += bytes,
                    e => events.push(e),
                })
                .expect("a valid conversation");
            rest = &rest[n..];
        }
    }
    (events, data)
}

proptest! {
    #[test]
    fn events_do_not_depend_on_read_sizes(
        data_len in 0usize..200_000,
        cuts in prop::collection::vec(1usize..3000, 1..40),
    ) {
        let conv = conversation(data_len);
        let whole = events(&conv, &[usize::MAX]);
        prop_assert_eq!(whole.1, data_len as u64);
        prop_assert_eq!(events(&conv, &cuts), whole);
    }

    #[test]
    fn arbitrary_bytes_never_panic(
        reads in prop::collection::vec((any::<bool>(), prop::collection::vec(any::<u8>(), 0..600)), 0..20),
    ) {
        let mut decoder = Decoder::new(Limits::default());
        for (upstream, bytes) in reads {
            let dir = if upstream { Direction::Upstream } else { Direction::Downstream };
            if decoder.feed(dir, &bytes, &mut |_| {}).is_err() {
                break;
            }
        }
    }

    #[test]
    fn arbitrary_bytes_after_clone_start_never_panic(
        reads in prop::collection::vec((any::<bool>(), prop::collection::vec(any::<u8>(), 0..600)), 0..20),
    ) {
        let conv = conversation(10);
        let mut decoder = Decoder::new(Limits::default());
        for (dir, bytes) in &conv[..5] {
            decoder.feed(*dir, bytes, &mut |_| {}).unwrap();
        }
        for (upstream, bytes) in reads {
            let dir = if upstream { Direction::Upstream } else { Direction::Downstream };
            if decoder.feed(dir, &bytes, &mut |_| {}).is_err() {
                break;
            }
        }
    }
}

#[test]
fn the_conversation_reads_as_expected() {
    let (events, data) = events(&conversation(1000), &[usize::MAX]);
    assert_eq!(data, 1000);
    assert!(matches!(
        events[0],
        Event::Greeting {
            connection_id: 100,
            ..
        }
    ));
    assert!(events.contains(&Event::Authenticated));
    assert!(events.contains(&Event::CloneStarted));
    assert_eq!(events.last(), Some(&Event::Command { code: 1 }));
}

#[test]
fn a_donor_error_ends_the_clone_protocol_cleanly() {
    use Direction::{Downstream as S2c, Upstream as C2s};
    let conv = conversation(10);
    let mut decoder = Decoder::new(Limits::default());
    let mut events = Vec::new();
    for (dir, bytes) in &conv[..6] {
        decoder.feed(*dir, bytes, &mut |e| events.push(e)).unwrap();
    }
    // The donor refuses the ATTACH and stays in the clone protocol: the recipient's COM_EXIT
    // gets COMPLETE, and the connection is a classic one again (COM_QUIT).
    let mut error = vec![100u8];
    error.extend(3862i32.to_le_bytes());
    error.extend(b"could not find existing clone");
    let steps: [(Direction, Vec<u8>); 4] = [
        (S2c, packet(0, &error)),
        (C2s, packet(0, &[6])),
        (S2c, packet(1, &[99])),
        (C2s, packet(0, &[0x01])),
    ];
    for (dir, bytes) in &steps {
        decoder
            .feed(*dir, bytes, &mut |e| events.push(e))
            .unwrap_or_else(|v| panic!("{v}"));
    }
    assert!(events.contains(&Event::CloneError {
        errno: 3862,
        message: "could not find existing clone".into()
    }));
    assert_eq!(events.last(), Some(&Event::Command { code: 0x01 }));
}
