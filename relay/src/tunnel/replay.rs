//! A stream's replay buffer: the bytes sent to the other relay that it has not acknowledged, so
//! they can be sent again on a new tunnel connection, in order. Each read from the stream's
//! local side is held in memory while the relay's memory budget lasts, else sealed into a spill
//! segment of the stream's own, up to the relay's spill budget. A segment holds up to
//! [`SEGMENT_BYTES`] and is closed, its blocks freed, once every record in it is acknowledged,
//! so disk use follows what is unacknowledged.
//!
//! Spill segments hold clone data, so nobody else can read them, even after a crash: each is an
//! unnamed file (`O_TMPFILE`, or created and unlinked at once where that is missing) in the
//! spill directory, gone with its descriptor, and every record in it is sealed with AES-256-GCM
//! under a random key that exists only in this process's memory.
//!
//! The buffer itself does no file I/O: [`Replay::place`] hands out a [`SpillWrite`] and
//! [`Replay::read_at`] a [`SealedRead`], which the stream performs on a blocking thread without
//! holding its lock, and acknowledgements hand back the segments they release
//! ([`Released`]) to be closed there too.

use std::collections::VecDeque;
use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use bytes::{Bytes, BytesMut};
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

/// The most one read from a stream's local side places: the size of the read buffers, which
/// are kept for reuse once acknowledged (see [`Replay::spare_buffer`]).
pub const READ_BYTES: usize = 64 * 1024;
/// Read buffers a replay buffer keeps for reuse, outside the memory budget (256 KiB): more than
/// one acknowledgement releases. Fresh buffers from the allocator cost page faults: glibc hands
/// the pages of freed ones back to the kernel once enough are free together.
const SPARE_BUFFERS: usize = 4;

/// Bounds on one buffer's share of the memory budget.
pub const MIN_SHARE: u64 = 1024 * 1024;
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

/// A spill segment holds up to this much (in sealed records); the next record starts another.
pub const SEGMENT_BYTES: u64 = 8 * 1024 * 1024;

/// One unnamed spill file.
#[derive(Debug)]
pub struct Segment {
    file: File,
}

/// One stretch of unacknowledged bytes: in memory, or a sealed record of a spill segment, of
/// which the first `skip` bytes were acknowledged.
#[derive(Debug)]
enum Item {
    Memory(Bytes),
    Sealed {
        segment: Arc<Segment>,
        file_at: u64,
        len: u64,
        counter: u64,
        skip: u64,
    },
}

impl Item {
    /// Bytes not yet acknowledged.
    fn len(&self) -> u64 {
        match self {
            Item::Memory(bytes) => bytes.len() as u64,
            Item::Sealed { len, skip, .. } => len - skip,
        }
    }
}

/// A record to seal and append to a spill segment (a new one when `append_to` is `None`), off
/// the stream's lock; [`Replay::commit`] then adds it. Its spill budget is already taken.
#[derive(Debug)]
pub struct SpillWrite {
    data: Bytes,
    append_to: Option<(Arc<Segment>, u64)>,
    budget: Arc<Budget>,
}

/// A record written by [`SpillWrite::write`].
#[derive(Debug)]
pub struct Written {
    segment: Arc<Segment>,
    file_at: u64,
    sealed_len: u64,
    len: u64,
    counter: u64,
}

impl SpillWrite {
    /// Seals the record and writes it (blocking). On failure its spill budget is given back.
    pub fn write(self) -> io::Result<Written> {
        let len = self.data.len() as u64;
        let written = self.seal_and_write();
        if written.is_err() {
            self.budget.release_spill(len);
        }
        written
    }

    fn seal_and_write(&self) -> io::Result<Written> {
        let (segment, file_at) = match &self.append_to {
            Some((segment, at)) => (segment.clone(), *at),
            None => {
                let file = tempfile::tempfile_in(&self.budget.dir)?;
                self.budget
                    .metrics
                    .tunnel_spills
                    .fetch_add(1, Ordering::Relaxed);
                (Arc::new(Segment { file }), 0)
            }
        };
        let (sealed, counter) = self.budget.seal(&self.data)?;
        segment.file.write_all_at(&sealed, file_at)?;
        Ok(Written {
            segment,
            file_at,
            sealed_len: sealed.len() as u64,
            len: self.data.len() as u64,
            counter,
        })
    }
}

/// What [`Replay::read_at`] found: bytes held in memory, or a sealed record to read.
#[derive(Debug)]
pub enum Piece {
    Memory(Bytes),
    Sealed(SealedRead),
}

/// Part of a sealed record, to read (blocking) into a scratch buffer.
#[derive(Debug)]
pub struct SealedRead {
    segment: Arc<Segment>,
    file_at: u64,
    len: u64,
    counter: u64,
    /// The part wanted: `from..from + take` of the record's plaintext.
    from: usize,
    take: usize,
    budget: Arc<Budget>,
}

impl SealedRead {
    /// Reads and opens the record into `scratch` (which keeps its capacity for the next);
    /// returns the wanted part's place in it.
    pub fn read(&self, scratch: &mut Vec<u8>) -> io::Result<std::ops::Range<usize>> {
        scratch.resize(self.len as usize + TAG_LEN, 0);
        self.segment.file.read_exact_at(scratch, self.file_at)?;
        self.budget.open(scratch, self.counter)?;
        Ok(self.from..self.from + self.take)
    }
}

/// Spill segments no longer needed, to be closed (their blocks freed) off the stream's lock:
/// dropping this closes them.
#[derive(Debug, Default)]
#[must_use = "dropping it closes spill files: do it off the stream's lock"]
pub struct Released(Vec<Arc<Segment>>);

impl Released {
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// Unacknowledged bytes `[base, end)` of one direction of a stream, in order.
#[derive(Debug)]
pub struct Replay {
    base: u64,
    items: VecDeque<Item>,
    memory_len: u64,
    spill_len: u64,
    end: u64,
    /// The segment records are appended to, and its length.
    writing: Option<(Arc<Segment>, u64)>,
    budget: Arc<Budget>,
    /// Read buffers of acknowledged chunks, for the next reads.
    spare: Vec<BytesMut>,
}

impl Replay {
    /// An empty buffer.
    pub fn new(budget: Arc<Budget>) -> Self {
        budget.buffers.fetch_add(1, Ordering::Relaxed);
        Replay {
            base: 0,
            items: VecDeque::new(),
            memory_len: 0,
            spill_len: 0,
            end: 0,
            writing: None,
            budget,
            spare: Vec::new(),
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

    /// Whether another `n` bytes fit, in memory or in the spill budget.
    pub fn has_room(&self, n: u64) -> bool {
        self.budget.memory_room(n) || self.budget.spill_room(n)
    }

    /// Places bytes read from the local side: into memory at once while the budget allows
    /// (`None`), else as a record for a spill segment, which the caller writes off the lock and
    /// then [`Replay::commit`]s before placing more. The reader asks [`Replay::has_room`] first,
    /// so a push goes over a budget by one read at most, and over the memory budget rather than
    /// make a spill file where there is no spill budget.
    pub fn place(&mut self, data: Bytes) -> Option<SpillWrite> {
        let n = data.len() as u64;
        let to_memory = self.budget.take_memory(n) || {
            if self.budget.take_spill(n) {
                false
            } else {
                self.budget.memory.fetch_add(n, Ordering::AcqRel);
                true
            }
        };
        if to_memory {
            self.memory_len += n;
            self.items.push_back(Item::Memory(data));
            self.end += n;
            self.note_use();
            return None;
        }
        Some(SpillWrite {
            data,
            append_to: self.writing.clone(),
            budget: self.budget.clone(),
        })
    }

    /// Adds a record written to a spill segment.
    pub fn commit(&mut self, written: Written) {
        let next = written.file_at + written.sealed_len;
        self.writing = (next < SEGMENT_BYTES).then(|| (written.segment.clone(), next));
        self.spill_len += written.len;
        self.end += written.len;
        self.items.push_back(Item::Sealed {
            segment: written.segment,
            file_at: written.file_at,
            len: written.len,
            counter: written.counter,
            skip: 0,
        });
        self.note_use();
    }

    /// Up to `max` bytes from `offset` (between `base` and `end`): a part of a memory chunk, or
    /// of a sealed record (it ends at most at the end of the chunk or record it starts in).
    pub fn read_at(&self, offset: u64, max: usize) -> io::Result<Piece> {
        let mut at = self.base;
        for item in &self.items {
            let item_end = at + item.len();
            if offset < item_end {
                let from = (offset - at) as usize;
                let take = (item.len() as usize - from).min(max);
                return Ok(match item {
                    Item::Memory(bytes) => Piece::Memory(bytes.slice(from..from + take)),
                    Item::Sealed {
                        segment,
                        file_at,
                        len,
                        counter,
                        skip,
                    } => Piece::Sealed(SealedRead {
                        segment: segment.clone(),
                        file_at: *file_at,
                        len: *len,
                        counter: *counter,
                        from: *skip as usize + from,
                        take,
                        budget: self.budget.clone(),
                    }),
                });
            }
            at = item_end;
        }
        Err(io::Error::other("replay offset past the buffer"))
    }

    /// Drops what the other relay has acknowledged (everything before `upto`). Returns the
    /// spill segments that no longer hold an unacknowledged record.
    pub fn ack(&mut self, upto: u64) -> Released {
        let upto = upto.min(self.end);
        let mut released = Released::default();
        while self.base < upto {
            let Some(front) = self.items.front_mut() else {
                break;
            };
            let take = (upto - self.base).min(front.len());
            let whole = take == front.len();
            match front {
                Item::Memory(bytes) => {
                    if !whole {
                        let _ = bytes.split_to(take as usize);
                    }
                    self.memory_len -= take;
                    self.budget.release_memory(take);
                }
                Item::Sealed { skip, .. } => {
                    *skip += take;
                    self.spill_len -= take;
                    self.budget.release_spill(take);
                }
            }
            self.base += take;
            if !whole {
                break;
            }
            match self.items.pop_front() {
                Some(Item::Memory(chunk)) => self.keep_spare(chunk),
                Some(Item::Sealed { segment, .. }) => {
                    // The segment being written to, with no other record left in it: the next
                    // record starts a new one, and this one closes.
                    let in_segment = |item: &Item| matches!(item, Item::Sealed { segment: s, .. } if Arc::ptr_eq(s, &segment));
                    if self
                        .writing
                        .as_ref()
                        .is_some_and(|(w, _)| Arc::ptr_eq(w, &segment))
                        && !self.items.iter().any(in_segment)
                    {
                        self.writing = None;
                    }
                    released.0.push(segment);
                }
                None => {}
            }
        }
        self.note_use();
        released
    }

    /// A read buffer of an acknowledged chunk, empty, with room for [`READ_BYTES`].
    pub fn spare_buffer(&mut self) -> Option<BytesMut> {
        self.spare.pop()
    }

    /// Keeps an acknowledged chunk's buffer for a later read when nothing else holds it and it
    /// is a whole read buffer (not a short read's copy, nor the rest of a split chunk).
    fn keep_spare(&mut self, chunk: Bytes) {
        if self.spare.len() >= SPARE_BUFFERS {
            return;
        }
        if let Ok(mut buf) = chunk.try_into_mut()
            && buf.capacity() >= READ_BYTES
        {
            buf.clear();
            self.spare.push(buf);
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
        self.budget.release_spill(self.spill_len);
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

    /// Places `data`, writing it to a spill segment when it goes there.
    fn push(replay: &mut Replay, data: Bytes) {
        if let Some(write) = replay.place(data) {
            replay.commit(write.write().unwrap());
        }
    }

    fn read(replay: &Replay, offset: u64, max: usize) -> Bytes {
        match replay.read_at(offset, max).unwrap() {
            Piece::Memory(bytes) => bytes,
            Piece::Sealed(sealed) => {
                let mut scratch = Vec::new();
                let range = sealed.read(&mut scratch).unwrap();
                Bytes::copy_from_slice(&scratch[range])
            }
        }
    }

    fn bytes(from: u64, n: u64) -> Bytes {
        Bytes::from((from..from + n).map(|i| i as u8).collect::<Vec<u8>>())
    }

    /// The distinct spill segments the buffer's records are in, oldest first.
    fn segments(replay: &Replay) -> Vec<Arc<Segment>> {
        let mut found: Vec<Arc<Segment>> = Vec::new();
        for item in &replay.items {
            if let Item::Sealed { segment, .. } = item
                && !found.iter().any(|s| Arc::ptr_eq(s, segment))
            {
                found.push(segment.clone());
            }
        }
        found
    }

    /// Every byte a segment holds, as written on disk.
    fn raw(segment: &Segment) -> Vec<u8> {
        let mut raw = vec![0u8; segment.file.metadata().unwrap().len() as usize];
        segment.file.read_exact_at(&mut raw, 0).unwrap();
        raw
    }

    #[test]
    fn spills_past_memory_sealed_and_unnamed_reads_back_and_frees_the_file() {
        let dir = std::env::temp_dir().join(format!("replay-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let budget = budget(100, 1000, &dir);
        let mut replay = Replay::new(budget.clone());
        for i in 0..5 {
            push(&mut replay, bytes(i * 60, 60));
        }
        assert_eq!((replay.base(), replay.end()), (0, 300));
        assert_eq!(budget.memory_in_use(), 60);
        assert_eq!(budget.spill_in_use(), 240);
        // The segment has no name in the spill directory, and its bytes are sealed.
        assert_eq!(std::fs::read_dir(&dir).unwrap().count(), 0);
        let segment = segments(&replay).pop().expect("a spill segment");
        let raw = raw(&segment);
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
        // Acknowledged bytes leave the budgets at once, records and memory alike.
        drop(replay.ack(130));
        assert_eq!(replay.base(), 130);
        assert_eq!(budget.memory_in_use(), 0);
        assert_eq!(budget.spill_in_use(), 170);
        assert_eq!(read(&replay, 130, 10), bytes(130, 10));
        // With memory free again, the next read goes there, after the records.
        push(&mut replay, bytes(300, 20));
        assert_eq!(budget.memory_in_use(), 20);
        assert_eq!(read(&replay, 299, 5), bytes(299, 1));
        assert_eq!(read(&replay, 300, 5), bytes(300, 5));
        // Once its last record is acknowledged, the segment is handed back to be closed: only
        // the acknowledgement's caller still holds it.
        let released = replay.ack(300);
        assert_eq!(budget.spill_in_use(), 0);
        assert!(!released.is_empty() && segments(&replay).is_empty());
        drop(segment);
        assert_eq!(Arc::strong_count(&released.0[0]), released.0.len());
        drop(replay);
        assert_eq!(budget.memory_in_use(), 0);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn disk_use_follows_what_is_unacknowledged_segment_by_segment() {
        let budget = budget(0, 64 << 20, &std::env::temp_dir());
        let mut replay = Replay::new(budget.clone());
        let record = 64 * 1024;
        for i in 0..200 {
            push(&mut replay, bytes(i * record, record));
        }
        // 12.5 MiB of records in 8 MiB segments.
        let open = segments(&replay);
        assert_eq!(open.len(), 2);
        assert_eq!(budget.metrics.tunnel_spills.load(Ordering::Relaxed), 2);
        drop(open);
        // The first segment's records acknowledged: it goes, the second stays.
        let first_segment_records = SEGMENT_BYTES.div_ceil(record + TAG_LEN as u64);
        let released = replay.ack(first_segment_records * record);
        assert_eq!(released.0.len() as u64, first_segment_records);
        assert_eq!(Arc::strong_count(&released.0[0]), released.0.len());
        assert_eq!(segments(&replay).len(), 1);
        assert_eq!(read(&replay, 150 * record, 10), bytes(150 * record, 10));
    }

    #[test]
    fn a_changed_spill_record_is_an_error_not_wrong_bytes() {
        let budget = budget(0, 1000, &std::env::temp_dir());
        let mut replay = Replay::new(budget);
        push(&mut replay, bytes(0, 100));
        segments(&replay)[0].file.write_all_at(&[0xff], 10).unwrap();
        let Piece::Sealed(sealed) = replay.read_at(0, 10).unwrap() else {
            panic!("the record is in the spill segment");
        };
        let err = sealed.read(&mut Vec::new()).unwrap_err();
        assert!(err.to_string().contains("does not open"), "{err}");
    }

    #[test]
    fn without_a_spill_budget_nothing_goes_to_a_file() {
        let budget = budget(100, 0, &std::env::temp_dir());
        let mut replay = Replay::new(budget.clone());
        assert!(replay.place(bytes(0, 80)).is_none());
        assert!(!replay.has_room(40));
        // A read that was under way when the room ran out goes over memory, not to a file.
        assert!(replay.place(bytes(80, 40)).is_none());
        assert_eq!(budget.memory_in_use(), 120);
        assert_eq!(read(&replay, 80, 40), bytes(80, 40));
        drop(replay.ack(120));
        assert_eq!(budget.memory_in_use(), 0);
        assert!(replay.has_room(100));
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
        let budget = budget(10, 0, &std::env::temp_dir());
        let mut replay = Replay::new(budget);
        assert!(replay.has_room(10));
        push(&mut replay, bytes(0, 10));
        assert!(!replay.has_room(1));
        drop(replay.ack(4));
        assert!(replay.has_room(4));
    }

    /// A whole read buffer, as the stream's reader makes one.
    fn read_buffer(fill: u8) -> Bytes {
        let mut buf = BytesMut::with_capacity(READ_BYTES);
        buf.resize(READ_BYTES, fill);
        buf.freeze()
    }

    #[test]
    fn acknowledged_read_buffers_are_kept_for_reuse_up_to_a_bound() {
        let budget = budget(64 << 20, 0, &std::env::temp_dir());
        let mut replay = Replay::new(budget.clone());
        for i in 0..8 {
            push(&mut replay, read_buffer(i));
        }
        // Held elsewhere (a send under way): not kept.
        let in_flight = read(&replay, 0, READ_BYTES);
        drop(replay.ack(READ_BYTES as u64));
        assert!(replay.spare_buffer().is_none());
        drop(in_flight);
        // Split by a partial acknowledgement: the rest is not a whole buffer.
        drop(replay.ack(READ_BYTES as u64 + 10));
        drop(replay.ack(2 * READ_BYTES as u64));
        assert!(replay.spare_buffer().is_none());
        // Six whole and held by nothing else: kept, empty, at most SPARE_BUFFERS of them.
        drop(replay.ack(8 * READ_BYTES as u64));
        let mut kept = Vec::new();
        while let Some(buf) = replay.spare_buffer() {
            assert!(buf.is_empty());
            assert!(buf.capacity() >= READ_BYTES);
            kept.push(buf);
        }
        assert_eq!(kept.len(), SPARE_BUFFERS);
        // They are memory outside the budget: the budget counts nothing held.
        assert_eq!(budget.memory_in_use(), 0);
        // A short read's copy is no read buffer.
        push(&mut replay, bytes(0, 100));
        drop(replay.ack(8 * READ_BYTES as u64 + 100));
        assert!(replay.spare_buffer().is_none());
    }
}
