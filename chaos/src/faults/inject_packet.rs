use bytes::Bytes;

use crate::fault::{Ctx, Flow, Piece, split_at};

/// A MySQL classic packet header: 3-byte little-endian payload length, 1-byte sequence id.
const HEADER: usize = 4;
/// A packet of this payload length is continued by the next one (one logical packet).
const CONTINUED: u64 = 0xff_ffff;

/// Inserts one MySQL classic packet into the stream, at the first boundary between logical
/// packets at or after `after` bytes; every byte of the stream itself passes unchanged. It
/// reads the stream's framing (uncompressed) from its first byte, so it must be active from
/// the connection's start.
#[derive(Debug)]
pub struct InjectPacket {
    pub after: u64,
    /// The packet, header included.
    pub packet: Bytes,
    /// The header bytes of the packet being read, when a chunk ended inside it.
    pub header: Vec<u8>,
    /// Payload bytes of the current packet still to pass.
    pub payload_left: u64,
    /// The current packet is continued by the next.
    pub continued: bool,
    pub done: bool,
}

impl InjectPacket {
    pub fn new(after: u64, payload: &[u8]) -> Self {
        let mut packet = (payload.len() as u32).to_le_bytes()[..3].to_vec();
        packet.push(0);
        packet.extend_from_slice(payload);
        InjectPacket {
            after,
            packet: packet.into(),
            header: Vec::with_capacity(HEADER),
            payload_left: 0,
            continued: false,
            done: false,
        }
    }

    /// Where in `bytes` (a chunk at stream `offset`) the packet goes, reading the framing up to
    /// there (or through the whole chunk).
    fn find_boundary(&mut self, offset: u64, bytes: &[u8]) -> Option<usize> {
        let mut i = 0;
        loop {
            if self.payload_left > 0 {
                let skip = self.payload_left.min((bytes.len() - i) as u64);
                self.payload_left -= skip;
                i += skip as usize;
            }
            if self.payload_left == 0
                && self.header.is_empty()
                && !self.continued
                && offset + i as u64 >= self.after
            {
                return Some(i);
            }
            if i == bytes.len() {
                return None;
            }
            while self.header.len() < HEADER && i < bytes.len() {
                self.header.push(bytes[i]);
                i += 1;
            }
            if self.header.len() == HEADER {
                let h = &self.header;
                let len = u64::from(u32::from_le_bytes([h[0], h[1], h[2], 0]));
                self.continued = len == CONTINUED;
                self.payload_left = len;
                self.header.clear();
            }
        }
    }
}

impl crate::fault::Fault for InjectPacket {
    fn apply(&mut self, ctx: &Ctx<'_>, pieces: Vec<Piece>) -> Flow {
        if self.done || pieces.is_empty() {
            return Flow::pass(pieces);
        }
        let bytes: Vec<u8> = pieces
            .iter()
            .flat_map(|p| p.bytes.iter().copied())
            .collect();
        let Some(at) = self.find_boundary(ctx.offset, &bytes) else {
            return Flow::pass(pieces);
        };
        self.done = true;
        let not_before = pieces[0].not_before;
        let (mut head, tail) = split_at(pieces, at);
        ctx.decide(
            ctx.offset + at as u64,
            format!("{}-byte packet injected", self.packet.len() - HEADER),
        );
        head.push(Piece::new(self.packet.clone(), not_before));
        head.extend(tail);
        Flow::pass(head)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::faults::testing::*;
    use tokio::time::Instant;

    fn packet(len: usize, fill: u8) -> Vec<u8> {
        let mut p = (len as u32).to_le_bytes()[..3].to_vec();
        p.push(0);
        p.extend(std::iter::repeat_n(fill, len));
        p
    }

    /// Feeds `stream` in chunks of `chunk` bytes; returns what comes out.
    fn run(f: &mut InjectPacket, stream: &[u8], chunk: usize) -> Vec<u8> {
        let t0 = Instant::now();
        let mut out = Vec::new();
        let mut offset = 0u64;
        for piece in stream.chunks(chunk) {
            let flow = apply_bytes(f, always(t0), t0, offset, piece);
            for p in flow.pieces {
                out.extend_from_slice(&p.bytes);
            }
            offset += piece.len() as u64;
        }
        out
    }

    #[test]
    fn injects_at_the_first_packet_boundary_after_the_offset_whatever_the_chunks() {
        let mut stream = packet(100, 1);
        stream.extend(packet(300, 2));
        stream.extend(packet(50, 3));
        let extra = [0x77, 1, 2];
        // The boundary after 150 bytes is the end of the second packet (at 408).
        let mut expected = stream[..408].to_vec();
        expected.extend(packet(3, 0).iter().take(4));
        expected.extend(extra);
        expected.extend(&stream[408..]);
        for chunk in [1, 3, 4, 7, 104, 408, 1000] {
            let mut f = InjectPacket::new(150, &extra);
            assert_eq!(run(&mut f, &stream, chunk), expected, "chunks of {chunk}");
        }
    }

    #[test]
    fn never_splits_a_continued_packet() {
        // A logical packet of two physical ones: 0xffffff bytes, then 10.
        let mut stream = vec![0xff, 0xff, 0xff, 0];
        stream.extend(std::iter::repeat_n(9u8, 0xff_ffff));
        stream.extend(packet(10, 8));
        stream.extend(packet(5, 7));
        let mut f = InjectPacket::new(1, &[0x77]);
        let out = run(&mut f, &stream, 65536);
        let at = 4 + 0xff_ffff + 14;
        assert_eq!(&out[..at], &stream[..at]);
        assert_eq!(&out[at..at + 5], &[1, 0, 0, 0, 0x77]);
        assert_eq!(&out[at + 5..], &stream[at..]);
        // Once only.
        assert_eq!(out.len(), stream.len() + 5);
    }

    #[test]
    fn passes_everything_when_no_boundary_comes() {
        let stream = packet(100, 1);
        let mut f = InjectPacket::new(1000, &[0x77]);
        assert_eq!(run(&mut f, &stream, 30), stream);
        assert!(!f.done);
    }
}
