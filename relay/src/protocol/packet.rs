//! Classic packet framing: `[u24 payload length][u8 sequence id][payload]`. A payload of exactly
//! 0xFFFFFF bytes means the logical packet continues in the next one.

use tokio::io::{AsyncRead, AsyncReadExt};

/// Bytes of a packet header.
pub const HEADER_LEN: usize = 4;
/// Largest payload of one physical packet; a payload this long continues in the next packet.
pub const MAX_PAYLOAD_LEN: usize = 0xFF_FFFF;

/// One physical packet's header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PacketHeader {
    pub payload_len: usize,
    pub seq: u8,
}

impl PacketHeader {
    /// Reads a header from the first four bytes, if there are four.
    pub fn parse(bytes: &[u8]) -> Option<Self> {
        let h: &[u8; HEADER_LEN] = bytes.get(..HEADER_LEN)?.try_into().ok()?;
        Some(Self::from_bytes(*h))
    }

    pub fn from_bytes(h: [u8; HEADER_LEN]) -> Self {
        PacketHeader {
            payload_len: usize::from(h[0]) | usize::from(h[1]) << 8 | usize::from(h[2]) << 16,
            seq: h[3],
        }
    }

    /// The header's wire form. `payload_len` must not exceed [`MAX_PAYLOAD_LEN`].
    pub fn encode(self) -> [u8; HEADER_LEN] {
        debug_assert!(self.payload_len <= MAX_PAYLOAD_LEN);
        let len = self.payload_len as u32;
        [len as u8, (len >> 8) as u8, (len >> 16) as u8, self.seq]
    }

    /// Whether the logical packet goes on in the next physical packet.
    pub fn is_continued(self) -> bool {
        self.payload_len == MAX_PAYLOAD_LEN
    }
}

/// Finds packet boundaries in a byte stream fed in chunks of any size, without copying payloads.
///
/// For each packet that starts in a chunk, the callback gets its header and the part of its
/// payload that lies in that chunk (possibly empty).
#[derive(Debug, Default, Clone)]
pub struct PacketScanner {
    header: [u8; HEADER_LEN],
    header_filled: usize,
    payload_left: usize,
}

impl PacketScanner {
    pub fn new() -> Self {
        Self::default()
    }

    /// Scans the next chunk of the stream.
    pub fn scan(&mut self, mut chunk: &[u8], mut on_packet: impl FnMut(PacketHeader, &[u8])) {
        while !chunk.is_empty() {
            if self.payload_left > 0 {
                let skip = self.payload_left.min(chunk.len());
                self.payload_left -= skip;
                chunk = &chunk[skip..];
                continue;
            }
            let take = (HEADER_LEN - self.header_filled).min(chunk.len());
            self.header[self.header_filled..self.header_filled + take]
                .copy_from_slice(&chunk[..take]);
            self.header_filled += take;
            chunk = &chunk[take..];
            if self.header_filled < HEADER_LEN {
                return;
            }
            self.header_filled = 0;
            let header = PacketHeader::from_bytes(self.header);
            let here = header.payload_len.min(chunk.len());
            on_packet(header, &chunk[..here]);
            self.payload_left = header.payload_len - here;
            chunk = &chunk[here..];
        }
    }

    /// True when the stream so far ends exactly on a packet boundary.
    pub fn at_boundary(&self) -> bool {
        self.header_filled == 0 && self.payload_left == 0
    }
}

/// Reads one physical packet, refusing payloads longer than `max_payload`.
pub async fn read_packet<R: AsyncRead + Unpin>(
    reader: &mut R,
    max_payload: usize,
) -> std::io::Result<(PacketHeader, Vec<u8>)> {
    let mut h = [0u8; HEADER_LEN];
    reader.read_exact(&mut h).await?;
    let header = PacketHeader::from_bytes(h);
    if header.payload_len > max_payload {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!(
                "packet of {} bytes exceeds the limit of {max_payload}",
                header.payload_len
            ),
        ));
    }
    let mut payload = vec![0u8; header.payload_len];
    reader.read_exact(&mut payload).await?;
    Ok((header, payload))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn packet(seq: u8, payload: &[u8]) -> Vec<u8> {
        let mut v = PacketHeader {
            payload_len: payload.len(),
            seq,
        }
        .encode()
        .to_vec();
        v.extend_from_slice(payload);
        v
    }

    #[test]
    fn header_round_trips() {
        for len in [0, 1, 250, 65_536, MAX_PAYLOAD_LEN] {
            let h = PacketHeader {
                payload_len: len,
                seq: 7,
            };
            assert_eq!(PacketHeader::parse(&h.encode()), Some(h));
        }
        assert!(PacketHeader::parse(&[1, 0, 0]).is_none());
        assert!(
            PacketHeader {
                payload_len: MAX_PAYLOAD_LEN,
                seq: 0
            }
            .is_continued()
        );
    }

    #[test]
    fn scanner_finds_every_packet_at_every_split() {
        let mut stream = packet(0, b"\x20");
        stream.extend(packet(1, &[0x03; 300]));
        stream.extend(packet(2, b""));
        stream.extend(packet(0, b"\x06"));
        for split in 0..=stream.len() {
            let mut scanner = PacketScanner::new();
            let mut seen = Vec::new();
            for part in [&stream[..split], &stream[split..]] {
                scanner.scan(part, |h, _| seen.push((h.seq, h.payload_len)));
            }
            assert_eq!(seen, [(0, 1), (1, 300), (2, 0), (0, 1)], "split at {split}");
            assert!(scanner.at_boundary());
        }
    }

    #[test]
    fn scanner_hands_over_the_payload_head() {
        let stream = packet(0, b"\x20rest");
        let mut firsts = Vec::new();
        PacketScanner::new().scan(&stream, |_, head| firsts.push(head.to_vec()));
        assert_eq!(firsts, [b"\x20rest".to_vec()]);
    }

    #[tokio::test]
    async fn read_packet_refuses_oversized_payloads() {
        let bytes = packet(0, &[0u8; 100]);
        let (h, p) = read_packet(&mut &bytes[..], 100).await.unwrap();
        assert_eq!((h.payload_len, p.len()), (100, 100));
        let err = read_packet(&mut &bytes[..], 99).await.unwrap_err();
        assert_eq!(err.kind(), std::io::ErrorKind::InvalidData);
    }
}
