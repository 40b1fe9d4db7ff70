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

/// Finds packet boundaries in a byte stream fed in chunks of any size, and hands over the head of
/// each packet: its first `head_cap` payload bytes (or the whole payload when shorter). A head
/// that lies within one chunk is passed as a slice of it; only a head that straddles two chunks is
/// gathered in a small buffer. The rest of a payload is skipped, never copied.
#[derive(Debug, Clone)]
pub struct PacketScanner {
    head_cap: usize,
    /// Packets longer than this are handed over as soon as their header is read, with an empty
    /// head, so the caller can refuse them without waiting for their bytes.
    max_payload: usize,
    header: [u8; HEADER_LEN],
    header_filled: usize,
    /// The packet whose head is being gathered or whose payload is being skipped.
    current: Option<PacketHeader>,
    /// Head bytes gathered so far, for a head that straddles chunks.
    stash: Vec<u8>,
    /// Head bytes still wanted for `current`.
    head_left: usize,
    /// Payload bytes of `current` after its head still to skip.
    skip_left: usize,
}

impl Default for PacketScanner {
    fn default() -> Self {
        Self::new(0)
    }
}

impl PacketScanner {
    /// A scanner that hands over up to `head_cap` bytes of each payload.
    pub fn new(head_cap: usize) -> Self {
        PacketScanner {
            head_cap,
            max_payload: usize::MAX,
            header: [0; HEADER_LEN],
            header_filled: 0,
            current: None,
            stash: Vec::new(),
            head_left: 0,
            skip_left: 0,
        }
    }

    /// Sets the length above which a packet is handed over at once with an empty head.
    pub fn set_max_payload(&mut self, max_payload: usize) {
        self.max_payload = max_payload;
    }

    /// Scans the next chunk of the stream, calling `on_packet(header, head)` once per packet as
    /// soon as its head is complete. The first error from the callback stops the scan; it comes
    /// back with the number of bytes of `chunk` consumed up to that point (the end of that
    /// packet's head), so a caller can hand the rest of the chunk to another decoder.
    pub fn scan<E>(
        &mut self,
        chunk: &[u8],
        mut on_packet: impl FnMut(PacketHeader, &[u8]) -> Result<(), E>,
    ) -> Result<(), (E, usize)> {
        let total = chunk.len();
        let mut chunk = chunk;
        let consumed = |rest: &[u8]| total - rest.len();
        while !chunk.is_empty() {
            if self.head_left > 0 {
                let take = self.head_left.min(chunk.len());
                self.stash.extend_from_slice(&chunk[..take]);
                self.head_left -= take;
                chunk = &chunk[take..];
                if self.head_left == 0 {
                    let header = self.current.expect("a packet is open");
                    let result = on_packet(header, &self.stash);
                    self.stash.clear();
                    result.map_err(|e| (e, consumed(chunk)))?;
                }
                continue;
            }
            if self.skip_left > 0 {
                let skip = self.skip_left.min(chunk.len());
                self.skip_left -= skip;
                chunk = &chunk[skip..];
                continue;
            }
            let take = (HEADER_LEN - self.header_filled).min(chunk.len());
            self.header[self.header_filled..self.header_filled + take]
                .copy_from_slice(&chunk[..take]);
            self.header_filled += take;
            chunk = &chunk[take..];
            if self.header_filled < HEADER_LEN {
                return Ok(());
            }
            self.header_filled = 0;
            let header = PacketHeader::from_bytes(self.header);
            let head_len = if header.payload_len > self.max_payload {
                0
            } else {
                header.payload_len.min(self.head_cap)
            };
            self.current = Some(header);
            self.skip_left = header.payload_len - head_len;
            if chunk.len() >= head_len {
                let result = on_packet(header, &chunk[..head_len]);
                chunk = &chunk[head_len..];
                result.map_err(|e| (e, consumed(chunk)))?;
            } else {
                self.stash.extend_from_slice(chunk);
                self.head_left = head_len - chunk.len();
                chunk = &[];
            }
        }
        Ok(())
    }

    /// True when the stream so far ends exactly on a packet boundary.
    pub fn at_boundary(&self) -> bool {
        self.header_filled == 0 && self.head_left == 0 && self.skip_left == 0
    }
}

/// One physical packet: header and payload (at most [`MAX_PAYLOAD_LEN`] bytes).
pub fn frame(seq: u8, payload: &[u8]) -> Vec<u8> {
    let mut packet = PacketHeader {
        payload_len: payload.len(),
        seq,
    }
    .encode()
    .to_vec();
    packet.extend_from_slice(payload);
    packet
}

/// Largest greeting the relay reads from a donor: a greeting is a few hundred bytes.
pub const MAX_GREETING_BYTES: usize = 16 * 1024;

/// How a bounded read of one packet failed.
#[derive(Debug)]
pub enum ReadError {
    Io(std::io::Error),
    /// The header announced a payload longer than the bound; the payload was not read.
    Oversize {
        payload_len: usize,
        max: usize,
    },
}

/// Reads one physical packet whole (its header, then its payload), refusing a payload longer
/// than `max_payload` before reading any of it. Every packet the relay reads on its own (before
/// the copy takes over, and in its probes) comes through here.
pub async fn read_bounded<R: AsyncRead + Unpin>(
    reader: &mut R,
    max_payload: usize,
) -> Result<Vec<u8>, ReadError> {
    let mut packet = vec![0u8; HEADER_LEN];
    reader
        .read_exact(&mut packet)
        .await
        .map_err(ReadError::Io)?;
    let header = PacketHeader::parse(&packet).expect("a whole header");
    if header.payload_len > max_payload {
        return Err(ReadError::Oversize {
            payload_len: header.payload_len,
            max: max_payload,
        });
    }
    packet.resize(HEADER_LEN + header.payload_len, 0);
    reader
        .read_exact(&mut packet[HEADER_LEN..])
        .await
        .map_err(ReadError::Io)?;
    Ok(packet)
}

/// [`read_bounded`], as its header and payload; an oversized payload is an `InvalidData` error.
pub async fn read_packet<R: AsyncRead + Unpin>(
    reader: &mut R,
    max_payload: usize,
) -> std::io::Result<(PacketHeader, Vec<u8>)> {
    match read_bounded(reader, max_payload).await {
        Ok(mut packet) => {
            let header = PacketHeader::parse(&packet).expect("a whole header");
            Ok((header, packet.split_off(HEADER_LEN)))
        }
        Err(ReadError::Io(e)) => Err(e),
        Err(ReadError::Oversize { payload_len, max }) => Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("packet of {payload_len} bytes exceeds the limit of {max}"),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
        let mut stream = frame(0, b"\x20");
        stream.extend(frame(1, &[0x03; 300]));
        stream.extend(frame(2, b""));
        stream.extend(frame(0, b"\x06"));
        for split in 0..=stream.len() {
            let mut scanner = PacketScanner::new(8);
            let mut seen = Vec::new();
            for part in [&stream[..split], &stream[split..]] {
                scanner
                    .scan(part, |h, head| {
                        seen.push((h.seq, h.payload_len, head.to_vec()));
                        Ok::<_, ()>(())
                    })
                    .unwrap();
            }
            let want = [
                (0, 1, vec![0x20]),
                (1, 300, vec![0x03; 8]),
                (2, 0, vec![]),
                (0, 1, vec![0x06]),
            ];
            assert_eq!(seen, want, "split at {split}");
            assert!(scanner.at_boundary());
        }
    }

    #[test]
    fn scanner_stops_at_the_first_error() {
        let mut stream = frame(0, b"a");
        stream.extend(frame(1, b"b"));
        let mut calls = 0;
        let result = PacketScanner::new(4).scan(&stream, |_, _| {
            calls += 1;
            Err("stop")
        });
        assert_eq!((result, calls), (Err(("stop", 5)), 1));
    }

    #[test]
    fn oversized_packets_are_handed_over_at_their_header() {
        let mut scanner = PacketScanner::new(64);
        scanner.set_max_payload(100);
        let mut seen = Vec::new();
        scanner
            .scan(&[0xff, 0xff, 0xff, 1, b'x'], |h, head| {
                seen.push((h.payload_len, head.len()));
                Ok::<_, ()>(())
            })
            .unwrap();
        assert_eq!(seen, [(MAX_PAYLOAD_LEN, 0)]);
    }

    #[tokio::test]
    async fn read_packet_refuses_oversized_payloads() {
        let bytes = frame(0, &[0u8; 100]);
        let (h, p) = read_packet(&mut &bytes[..], 100).await.unwrap();
        assert_eq!((h.payload_len, p.len()), (100, 100));
        let err = read_packet(&mut &bytes[..], 99).await.unwrap_err();
        assert_eq!(err.kind(), std::io::ErrorKind::InvalidData);
    }
}
