//! A stream's replay buffer: the bytes sent to the other relay that it has not acknowledged, so
//! they can be sent again on a new tunnel connection. Held in memory while the relay's memory
//! budget lasts, then appended to a spill file of the stream's own, up to the relay's spill
//! budget. When acknowledgements catch up, what is left in the file moves back into memory and
//! the file goes.
//!
//! Spill files hold clone data, so nobody else can read them, even after a crash: each is an
//! unnamed file (`O_TMPFILE`, or created and unlinked at once where that is missing) in the
//! spill directory, gone with its descriptor, and every record in it is sealed with AES-256-GCM
//! under a random key that exists only in this process's memory.
//!
//! The file is written and read with plain blocking calls: it is written just before it is read
//! back, so the page cache serves it.

use std::collections::VecDeque;
use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use bytes::Bytes;
use ring::aead::{AES_256_GCM, Aad, LessSafeKey, NONCE_LEN, Nonce, UnboundKey};
use ring::rand::{SecureRandom, SystemRandom};

use crate::metrics::Metrics;

/// The tag AES-GCM appends to each sealed record.
const TAG_LEN: usize = 16;

/// The memory and disk all replay buffers of a relay may use together, and the key their spill
/// files are sealed with.
#[derive(Debug)]
pub struct Budget {
    memory_limit: u64,
    spill_limit: u64,
    dir: PathBuf,
    memory: AtomicU64,
    spill: AtomicU64,
    metrics: Arc<Metrics>,
    key: LessSafeKey,
    /// The next record's nonce: each record sealed under the key gets a new one.
    next_nonce: AtomicU64,
    /// Replay buffers alive.
    buffers: AtomicU64,
}

/// Bounds on one buffer's share of the memory budget.
const MIN_SHARE: u64 = 1024 * 1024;
const MAX_SHARE: u64 = 12 * 1024 * 1024;

impl Budget {
    pub fn new(memory_limit: u64, spill_limit: u64, dir: PathBuf, metrics: Arc<Metrics>) -> Self {
        let mut key = [0u8; 32];
        SystemRandom::new()
            .fill(&mut key)
            .expect("the system's random source works");
        let key = LessSafeKey::new(UnboundKey::new(&AES_256_GCM, &key).expect("a 32-byte key"));
        Budget {
            memory_limit,
            spill_limit,
            dir,
            memory: AtomicU64::new(0),
            spill: AtomicU64::new(0),
            metrics,
            key,
            next_nonce: AtomicU64::new(0),
            buffers: AtomicU64::new(0),
        }
    }

    /// One buffer's share of the memory budget: the budget split evenly between the buffers
    /// alive and one more (the slack each read past a share takes), within 1 to 12 MiB.
    fn share(&self) -> u64 {
        let buffers = self.buffers.load(Ordering::Relaxed);
        (self.memory_limit / (buffers + 1)).clamp(MIN_SHARE, MAX_SHARE)
    }

    /// `data` sealed as one record: the ciphertext with its tag, and the record's nonce.
    fn seal(&self, data: &[u8]) -> io::Result<(Vec<u8>, u64)> {
        let counter = self.next_nonce.fetch_add(1, Ordering::Relaxed);
        let mut sealed = Vec::with_capacity(data.len() + TAG_LEN);
        sealed.extend_from_slice(data);
        self.key
            .seal_in_place_append_tag(nonce(counter), Aad::empty(), &mut sealed)
            .map_err(|_| io::Error::other("sealing a spill record failed"))?;
        Ok((sealed, counter))
    }

    /// Opens a record sealed by [`Budget::seal`] in place; returns its plaintext length.
    fn open(&self, sealed: &mut [u8], counter: u64) -> io::Result<usize> {
        let plain = self
            .key
            .open_in_place(nonce(counter), Aad::empty(), sealed)
            .map_err(|_| io::Error::other("a spill record does not open: the file was changed"))?;
        Ok(plain.len())
    }

    /// Bytes held in memory by all buffers.
    pub fn memory_in_use(&self) -> u64 {
        self.memory.load(Ordering::Relaxed)
    }

    /// Bytes held in spill files by all buffers.
    pub fn spill_in_use(&self) -> u64 {
        self.spill.load(Ordering::Relaxed)
    }

    fn take(counter: &AtomicU64, limit: u64, n: u64) -> bool {
        counter
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |used| {
                (used + n <= limit).then_some(used + n)
            })
            .is_ok()
    }

    fn take_memory(&self, n: u64) -> bool {
        Self::take(&self.memory, self.memory_limit, n)
    }

    fn take_spill(&self, n: u64) -> bool {
        Self::take(&self.spill, self.spill_limit, n)
    }

    fn release_memory(&self, n: u64) {
        self.memory.fetch_sub(n, Ordering::AcqRel);
    }

    fn release_spill(&self, n: u64) {
        self.spill.fetch_sub(n, Ordering::AcqRel);
    }

    fn memory_room(&self, n: u64) -> bool {
        self.memory.load(Ordering::Acquire) + n <= self.memory_limit
    }

    fn spill_room(&self, n: u64) -> bool {
        self.spill.load(Ordering::Acquire) + n <= self.spill_limit
    }
}

fn nonce(counter: u64) -> Nonce {
    let mut bytes = [0u8; NONCE_LEN];
    bytes[NONCE_LEN - 8..].copy_from_slice(&counter.to_be_bytes());
    Nonce::assume_unique_for_key(bytes)
}

/// What [`Replay::read_at`] found: bytes held in memory, or bytes of the spill file opened in
/// the caller's scratch buffer at `from..from + len`.
#[derive(Debug)]
pub enum Piece {
    Memory(Bytes),
    File { from: usize, len: usize },
}

impl Piece {
    pub fn bytes<'a>(&'a self, scratch: &'a [u8]) -> &'a [u8] {
        match self {
            Piece::Memory(bytes) => bytes,
            Piece::File { from, len } => &scratch[*from..*from + *len],
        }
    }
}

/// One sealed record of a spill file: stream bytes `[at, at + len)` (relative to the spill's
/// start), sealed at `file_at` under nonce `counter`.
#[derive(Debug, Clone, Copy)]
struct Record {
    at: u64,
    len: u64,
    file_at: u64,
    counter: u64,
}

/// The spill file of one buffer: stream bytes `[start, start + len)`, in sealed records.
#[derive(Debug)]
struct Spill {
    file: File,
    start: u64,
    len: u64,
    records: Vec<Record>,
    file_len: u64,
}

impl Spill {
    /// The record holding spill offset `at`, opened into `scratch`, with its place.
    fn open(&self, at: u64, budget: &Budget, scratch: &mut Vec<u8>) -> io::Result<Record> {
        let i = self.records.partition_point(|r| r.at + r.len <= at);
        let record = *self
            .records
            .get(i)
            .ok_or_else(|| io::Error::other("replay offset past the spill file"))?;
        scratch.resize(record.len as usize + TAG_LEN, 0);
        self.file.read_exact_at(scratch, record.file_at)?;
        budget.open(scratch, record.counter)?;
        Ok(record)
    }
}

/// Unacknowledged bytes `[base, end)` of one direction of a stream: the oldest in memory, the
/// rest (once memory ran out) in the spill file.
#[derive(Debug)]
pub struct Replay {
    base: u64,
    memory: VecDeque<Bytes>,
    memory_len: u64,
    spill: Option<Spill>,
    end: u64,
    budget: Arc<Budget>,
}

impl Replay {
    /// An empty buffer.
    pub fn new(budget: Arc<Budget>) -> Self {
        budget.buffers.fetch_add(1, Ordering::Relaxed);
        Replay {
            base: 0,
            memory: VecDeque::new(),
            memory_len: 0,
            spill: None,
            end: 0,
            budget,
        }
    }

    /// This buffer's share of the memory budget, while it is split with the others alive.
    pub fn share(&self) -> u64 {
        self.budget.share()
    }

    /// Offset of the oldest unacknowledged byte.
    pub fn base(&self) -> u64 {
        self.base
    }

    /// Offset after the newest byte.
    pub fn end(&self) -> u64 {
        self.end
    }

    /// Whether another `n` bytes fit: in the spill budget once this buffer spills (its bytes
    /// stay in order), else in memory or the spill budget.
    pub fn has_room(&self, n: u64) -> bool {
        if self.spill.is_some() {
            self.budget.spill_room(n)
        } else {
            self.budget.memory_room(n) || self.budget.spill_room(n)
        }
    }

    /// Appends bytes read from the local side: to memory while the budget allows and nothing is
    /// spilled, else to the spill file. The reader asks [`Replay::has_room`] first, so a push
    /// goes over a budget by one read at most, and over the memory budget rather than make a
    /// spill file where there is no spill budget. Fails when the file cannot be written.
    pub fn push(&mut self, data: Bytes) -> io::Result<()> {
        let n = data.len() as u64;
        let to_memory = self.spill.is_none()
            && (self.budget.take_memory(n) || {
                if self.budget.take_spill(n) {
                    false
                } else {
                    self.budget.memory.fetch_add(n, Ordering::AcqRel);
                    true
                }
            });
        if to_memory {
            self.memory_len += n;
            self.memory.push_back(data);
            self.end += n;
            self.note_use();
            return Ok(());
        }
        if self.spill.is_some() && !self.budget.take_spill(n) {
            self.budget.spill.fetch_add(n, Ordering::AcqRel);
        }
        if self.spill.is_none() {
            let file = tempfile::tempfile_in(&self.budget.dir)?;
            self.budget
                .metrics
                .tunnel_spills
                .fetch_add(1, Ordering::Relaxed);
            self.spill = Some(Spill {
                file,
                start: self.end,
                len: 0,
                records: Vec::new(),
                file_len: 0,
            });
        }
        let spill = self.spill.as_mut().expect("just made");
        let (sealed, counter) = self.budget.seal(&data)?;
        spill.file.write_all_at(&sealed, spill.file_len)?;
        spill.records.push(Record {
            at: spill.len,
            len: n,
            file_at: spill.file_len,
            counter,
        });
        spill.file_len += sealed.len() as u64;
        spill.len += n;
        self.end += n;
        self.note_use();
        Ok(())
    }

    /// Up to `max` bytes from `offset` (between `base` and `end`): a part of a memory chunk, or
    /// bytes of the spill file read into `scratch` (which keeps its capacity for the next).
    pub fn read_at(&self, offset: u64, max: usize, scratch: &mut Vec<u8>) -> io::Result<Piece> {
        debug_assert!(self.base <= offset && offset < self.end);
        let mut at = self.base;
        for chunk in &self.memory {
            let chunk_end = at + chunk.len() as u64;
            if offset < chunk_end {
                let from = (offset - at) as usize;
                let to = chunk.len().min(from + max);
                return Ok(Piece::Memory(chunk.slice(from..to)));
            }
            at = chunk_end;
        }
        let spill = self
            .spill
            .as_ref()
            .ok_or_else(|| io::Error::other("replay offset past the buffer"))?;
        let at = offset - spill.start;
        let record = spill.open(at, &self.budget, scratch)?;
        let from = (at - record.at) as usize;
        let len = (record.len as usize - from).min(max);
        Ok(Piece::File { from, len })
    }

    /// Drops what the other relay has acknowledged (everything before `upto`). Once what is left
    /// sits in the spill file only and fits in memory, it moves back to memory and the file goes.
    pub fn ack(&mut self, upto: u64) -> io::Result<()> {
        let upto = upto.min(self.end);
        while self.base < upto {
            let Some(front) = self.memory.front_mut() else {
                // The acknowledged bytes are in the file: they stay until the file goes.
                self.base = upto;
                break;
            };
            let take = (upto - self.base).min(front.len() as u64);
            if take == front.len() as u64 {
                self.memory.pop_front();
            } else {
                let _ = front.split_to(take as usize);
            }
            self.memory_len -= take;
            self.budget.release_memory(take);
            self.base += take;
        }
        if let Some(spill) = &self.spill
            && self.memory.is_empty()
        {
            let left = self.end - self.base;
            if left == 0 {
                self.drop_spill();
            } else if self.budget.take_memory(left) {
                // Record by record, so that acknowledgements free memory as they come.
                let mut at = self.base;
                let mut scratch = Vec::new();
                while at < self.end {
                    let record = spill.open(at - spill.start, &self.budget, &mut scratch)?;
                    let from = (at - spill.start - record.at) as usize;
                    let chunk = Bytes::copy_from_slice(&scratch[from..record.len as usize]);
                    at += chunk.len() as u64;
                    self.memory.push_back(chunk);
                }
                self.memory_len = left;
                self.drop_spill();
            }
        }
        self.note_use();
        Ok(())
    }

    /// Closes the spill file, which has no name: its blocks are freed.
    fn drop_spill(&mut self) {
        if let Some(spill) = self.spill.take() {
            self.budget.release_spill(spill.len);
        }
    }

    fn note_use(&self) {
        let m = &self.budget.metrics;
        m.tunnel_buffer_bytes
            .store(self.budget.memory_in_use(), Ordering::Relaxed);
        m.tunnel_spill_bytes
            .store(self.budget.spill_in_use(), Ordering::Relaxed);
    }
}

impl Drop for Replay {
    fn drop(&mut self) {
        self.budget.buffers.fetch_sub(1, Ordering::Relaxed);
        self.budget.release_memory(self.memory_len);
        self.drop_spill();
        self.note_use();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn budget(memory: u64, spill: u64, dir: &std::path::Path) -> Arc<Budget> {
        Arc::new(Budget::new(
            memory,
            spill,
            dir.to_owned(),
            Arc::new(Metrics::default()),
        ))
    }

    fn read(replay: &Replay, offset: u64, max: usize) -> Bytes {
        let mut scratch = Vec::new();
        let piece = replay.read_at(offset, max, &mut scratch).unwrap();
        Bytes::copy_from_slice(piece.bytes(&scratch))
    }

    fn bytes(from: u64, n: u64) -> Bytes {
        Bytes::from((from..from + n).map(|i| i as u8).collect::<Vec<u8>>())
    }

    /// Every byte the spill file holds, as written on disk.
    fn raw_spill(replay: &Replay) -> Vec<u8> {
        let spill = replay.spill.as_ref().expect("a spill file");
        let mut raw = vec![0u8; spill.file_len as usize];
        spill.file.read_exact_at(&mut raw, 0).unwrap();
        raw
    }

    #[test]
    fn spills_past_memory_sealed_and_unnamed_reads_back_and_frees_the_file() {
        let dir = std::env::temp_dir().join(format!("replay-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let budget = budget(100, 1000, &dir);
        let mut replay = Replay::new(budget.clone());
        for i in 0..5 {
            replay.push(bytes(i * 60, 60)).unwrap();
        }
        assert_eq!((replay.base(), replay.end()), (0, 300));
        assert_eq!(budget.memory_in_use(), 60);
        assert_eq!(budget.spill_in_use(), 240);
        // The file has no name in the spill directory, and its bytes are sealed.
        assert_eq!(std::fs::read_dir(&dir).unwrap().count(), 0);
        let raw = raw_spill(&replay);
        assert_eq!(raw.len(), 4 * (60 + TAG_LEN));
        let plain = bytes(60, 60);
        assert!(
            !raw.windows(8).any(|w| plain.windows(8).any(|p| p == w)),
            "plaintext in the spill file"
        );
        // Reads cross from memory to the file with the same bytes (a read ends at most at the
        // end of the memory chunk or spill record it starts in).
        for offset in [0, 59, 60, 61, 119, 120, 200, 299] {
            let got = read(&replay, offset, 7);
            assert!(!got.is_empty() && got.len() <= 7, "at {offset}");
            assert_eq!(got, bytes(offset, got.len() as u64), "at {offset}");
        }
        replay.ack(130).unwrap();
        assert_eq!(replay.base(), 130);
        assert_eq!(budget.memory_in_use(), 0);
        // 170 left: more than memory holds, so the file stays.
        assert!(replay.spill.is_some());
        assert_eq!(read(&replay, 130, 10), bytes(130, 10));
        replay.ack(250).unwrap();
        // 50 left: back in memory, the file gone.
        assert!(replay.spill.is_none());
        assert_eq!(budget.spill_in_use(), 0);
        assert_eq!(budget.memory_in_use(), 50);
        assert_eq!(read(&replay, 260, 100), bytes(260, 40));
        replay.push(bytes(300, 20)).unwrap();
        assert_eq!(read(&replay, 299, 5), bytes(299, 1));
        assert_eq!(read(&replay, 300, 5), bytes(300, 5));
        drop(replay);
        assert_eq!(budget.memory_in_use(), 0);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_changed_spill_record_is_an_error_not_wrong_bytes() {
        let dir = std::env::temp_dir();
        let budget = budget(0, 1000, &dir);
        let mut replay = Replay::new(budget);
        replay.push(bytes(0, 100)).unwrap();
        let spill = replay.spill.as_ref().unwrap();
        spill.file.write_all_at(&[0xff], 10).unwrap();
        let mut scratch = Vec::new();
        let err = replay.read_at(0, 10, &mut scratch).unwrap_err();
        assert!(err.to_string().contains("does not open"), "{err}");
    }

    #[test]
    fn without_a_spill_budget_nothing_goes_to_a_file() {
        let dir = std::env::temp_dir().join(format!("replay-nospill-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let budget = budget(100, 0, &dir);
        let mut replay = Replay::new(budget.clone());
        replay.push(bytes(0, 80)).unwrap();
        assert!(!replay.has_room(40));
        // A read that was under way when the room ran out goes over memory, not to a file.
        replay.push(bytes(80, 40)).unwrap();
        assert!(replay.spill.is_none());
        assert_eq!(budget.memory_in_use(), 120);
        assert_eq!(read(&replay, 80, 40), bytes(80, 40));
        replay.ack(120).unwrap();
        assert_eq!(budget.memory_in_use(), 0);
        assert!(replay.has_room(100));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn the_shares_of_a_clone_at_mysqls_default_concurrency_fit_the_default_budget() {
        let budget = budget(64 << 20, 0, &std::env::temp_dir());
        let first = Replay::new(budget.clone());
        assert_eq!(first.share(), 12 << 20);
        // Main, aux and 16 workers.
        let rest: Vec<Replay> = (1..18).map(|_| Replay::new(budget.clone())).collect();
        assert!(first.share() * 18 <= 64 << 20, "{}", first.share());
        assert!(first.share() >= 3 << 20, "{}", first.share());
        drop(rest);
        assert_eq!(first.share(), 12 << 20);
    }

    #[test]
    fn room_runs_out_when_both_budgets_are_spent() {
        let dir = std::env::temp_dir();
        let budget = budget(10, 0, &dir);
        let mut replay = Replay::new(budget);
        assert!(replay.has_room(10));
        replay.push(bytes(0, 10)).unwrap();
        assert!(!replay.has_room(1));
        replay.ack(4).unwrap();
        assert!(replay.has_room(4));
    }
}
