//! The classic compressed framing: `[u24 compressed length][u8 seq][u24 uncompressed length]`,
//! then a zlib stream, or the raw bytes when the uncompressed length is 0. The decompressor turns
//! a compressed-framed byte stream back into the inner packet stream, a bounded piece at a time.

use flate2::{Decompress, FlushDecompress, Status};

/// Bytes of a compressed packet's header.
pub const COMPRESSED_HEADER_LEN: usize = 7;
const OUT_CHUNK: usize = 32 * 1024;

/// Streaming decoder of the compressed framing.
#[derive(Debug)]
pub struct Decompressor {
    header: [u8; COMPRESSED_HEADER_LEN],
    header_filled: usize,
    body_left: usize,
    inflated_left: usize,
    raw: bool,
    inflate: Decompress,
    out: Vec<u8>,
}

impl Default for Decompressor {
    fn default() -> Self {
        Self::new()
    }
}

impl Decompressor {
    pub fn new() -> Self {
        Decompressor {
            header: [0; COMPRESSED_HEADER_LEN],
            header_filled: 0,
            body_left: 0,
            inflated_left: 0,
            raw: false,
            inflate: Decompress::new(true),
            out: vec![0; OUT_CHUNK],
        }
    }

    /// Feeds the next chunk of the compressed stream; `inner` gets the inner stream's bytes in
    /// order. An error says what is wrong with the framing or the zlib data.
    pub fn feed(
        &mut self,
        mut chunk: &[u8],
        inner: &mut dyn FnMut(&[u8]) -> Result<(), String>,
    ) -> Result<(), String> {
        while !chunk.is_empty() {
            if self.body_left == 0 {
                let take = (COMPRESSED_HEADER_LEN - self.header_filled).min(chunk.len());
                self.header[self.header_filled..self.header_filled + take]
                    .copy_from_slice(&chunk[..take]);
                self.header_filled += take;
                chunk = &chunk[take..];
                if self.header_filled < COMPRESSED_HEADER_LEN {
                    return Ok(());
                }
                self.header_filled = 0;
                let h = &self.header;
                self.body_left =
                    usize::from(h[0]) | usize::from(h[1]) << 8 | usize::from(h[2]) << 16;
                self.inflated_left =
                    usize::from(h[4]) | usize::from(h[5]) << 8 | usize::from(h[6]) << 16;
                self.raw = self.inflated_left == 0;
                self.inflate.reset(true);
                if self.body_left == 0 && !self.raw {
                    return Err("compressed packet with an empty body".into());
                }
                continue;
            }
            let take = self.body_left.min(chunk.len());
            let (body, rest) = chunk.split_at(take);
            chunk = rest;
            self.body_left -= take;
            if self.raw {
                inner(body)?;
            } else {
                self.inflate_body(body, inner)?;
                if self.body_left == 0 && self.inflated_left != 0 {
                    return Err(format!(
                        "compressed packet inflated {} bytes short",
                        self.inflated_left
                    ));
                }
            }
        }
        Ok(())
    }

    fn inflate_body(
        &mut self,
        mut body: &[u8],
        inner: &mut dyn FnMut(&[u8]) -> Result<(), String>,
    ) -> Result<(), String> {
        loop {
            let (in_before, out_before) = (self.inflate.total_in(), self.inflate.total_out());
            let status = self
                .inflate
                .decompress(body, &mut self.out, FlushDecompress::None)
                .map_err(|e| format!("bad zlib data: {e}"))?;
            let consumed = (self.inflate.total_in() - in_before) as usize;
            let produced = (self.inflate.total_out() - out_before) as usize;
            body = &body[consumed..];
            if produced > self.inflated_left {
                return Err("compressed packet inflates beyond its stated length".into());
            }
            self.inflated_left -= produced;
            if produced > 0 {
                inner(&self.out[..produced])?;
            }
            match status {
                Status::StreamEnd => {
                    if !body.is_empty() || self.body_left > 0 {
                        return Err("bytes after the end of a zlib stream".into());
                    }
                    return Ok(());
                }
                _ if body.is_empty() && produced < self.out.len() => return Ok(()),
                _ if consumed == 0 && produced == 0 => {
                    return Err("zlib stream makes no progress".into());
                }
                _ => {}
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use flate2::Compression;
    use flate2::write::ZlibEncoder;
    use std::io::Write;

    fn compressed_packet(seq: u8, inner: &[u8], compress: bool) -> Vec<u8> {
        let (body, ulen) = if compress {
            let mut e = ZlibEncoder::new(Vec::new(), Compression::default());
            e.write_all(inner).unwrap();
            (e.finish().unwrap(), inner.len())
        } else {
            (inner.to_vec(), 0)
        };
        let mut out = vec![
            body.len() as u8,
            (body.len() >> 8) as u8,
            (body.len() >> 16) as u8,
            seq,
            ulen as u8,
            (ulen >> 8) as u8,
            (ulen >> 16) as u8,
        ];
        out.extend(body);
        out
    }

    #[test]
    fn restores_the_inner_stream_at_every_split() {
        let big: Vec<u8> = (0..200_000u32).map(|i| (i % 7) as u8).collect();
        let mut stream = compressed_packet(0, b"\x01\x00\x00\x00\x20", false);
        stream.extend(compressed_packet(1, &big, true));
        stream.extend(compressed_packet(2, b"tail", true));
        let mut want = b"\x01\x00\x00\x00\x20".to_vec();
        want.extend(&big);
        want.extend(b"tail");
        for split in (0..stream.len())
            .step_by(997)
            .chain([1, 7, 8, stream.len()])
        {
            let mut d = Decompressor::new();
            let mut got = Vec::new();
            for part in [&stream[..split], &stream[split..]] {
                d.feed(part, &mut |b| {
                    got.extend_from_slice(b);
                    Ok(())
                })
                .unwrap();
            }
            assert!(got == want, "split at {split}");
        }
    }

    #[test]
    fn refuses_corrupt_zlib() {
        let mut packet = compressed_packet(0, &[7u8; 1000], true);
        let n = packet.len();
        packet[n - 6] ^= 0xff;
        packet[10] ^= 0x55;
        let err = Decompressor::new()
            .feed(&packet, &mut |_| Ok(()))
            .unwrap_err();
        assert!(
            err.contains("zlib") || err.contains("short") || err.contains("beyond"),
            "{err}"
        );
    }
}
