//! Which donor each recipient clones from, kept in a small JSON file so that a recipient's
//! resume still reaches its donor after the relay restarts. Entries are written when a clone
//! session learns its recipient, removed when the session ends, and ignored once older than the
//! longest a resume can take.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};
use tracing::warn;

/// The file's name inside the relay's state directory.
pub const FILE_NAME: &str = "affinity.json";

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct Entry {
    upstream: String,
    /// When the entry was last written, in Unix milliseconds.
    saved_at_ms: u64,
}

/// The affinity table, in memory and, when it has a path, on disk.
#[derive(Debug)]
pub struct AffinityStore {
    path: Option<PathBuf>,
    max_age: Duration,
    entries: BTreeMap<IpAddr, Entry>,
    /// Changed since the file was last written.
    dirty: bool,
}

/// The table as it was when taken, to write to its file without holding any lock.
#[derive(Debug)]
pub struct AffinitySnapshot {
    path: PathBuf,
    entries: BTreeMap<IpAddr, Entry>,
}

/// Files are written one at a time, each with the latest table taken after the previous one.
static WRITING: std::sync::Mutex<()> = std::sync::Mutex::new(());

impl AffinitySnapshot {
    /// Writes the table: a new file, synced, renamed over the old one, so a crash leaves one or
    /// the other whole.
    pub fn save(self) {
        let _one_at_a_time = WRITING
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let tmp = self.path.with_extension("json.tmp");
        let result = serde_json::to_vec_pretty(&self.entries)
            .map_err(std::io::Error::other)
            .and_then(|bytes| {
                use std::io::Write;
                let mut file = std::fs::File::create(&tmp)?;
                file.write_all(&bytes)?;
                file.sync_all()
            })
            .and_then(|()| std::fs::rename(&tmp, &self.path));
        if let Err(e) = result {
            warn!(path = %self.path.display(), error = %e, "cannot save the affinity file");
        }
    }
}

impl AffinityStore {
    /// A table that is not kept across restarts.
    pub fn in_memory() -> Self {
        AffinityStore {
            path: None,
            max_age: Duration::ZERO,
            entries: BTreeMap::new(),
            dirty: false,
        }
    }

    /// The table kept in `dir`, with what an earlier run left there that is younger than
    /// `max_age`. An unreadable file is reported and replaced: the relay works without it.
    pub fn load(dir: &Path, max_age: Duration) -> Self {
        let path = dir.join(FILE_NAME);
        let entries = match std::fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes).unwrap_or_else(|e| {
                warn!(path = %path.display(), error = %e, "affinity file unreadable; starting empty");
                BTreeMap::new()
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => BTreeMap::new(),
            Err(e) => {
                warn!(path = %path.display(), error = %e, "affinity file unreadable; starting empty");
                BTreeMap::new()
            }
        };
        let mut store = AffinityStore {
            path: Some(path),
            max_age,
            entries,
            dirty: false,
        };
        let now = unix_ms();
        store.entries.retain(|_, e| !store_expired(e, max_age, now));
        store
    }

    /// The donor that `ip` cloned from when an earlier run of the relay stopped, if recent.
    pub fn get(&self, ip: IpAddr) -> Option<&str> {
        self.entries
            .get(&ip)
            .filter(|e| !store_expired(e, self.max_age, unix_ms()))
            .map(|e| e.upstream.as_str())
    }

    /// Records that `ip` clones from `upstream` now. The file is written when the entry is new,
    /// changed, or a quarter of the way to its expiry, so a clone under way is never forgotten.
    pub fn keep(&mut self, ip: IpAddr, upstream: &str) {
        if self.path.is_none() {
            return;
        }
        let now = unix_ms();
        let refresh_ms = self.max_age.as_millis() as u64 / 4;
        let fresh = self.entries.get(&ip).is_some_and(|e| {
            e.upstream == upstream && now.saturating_sub(e.saved_at_ms) < refresh_ms
        });
        if !fresh {
            let entry = Entry {
                upstream: upstream.to_string(),
                saved_at_ms: now,
            };
            self.entries.insert(ip, entry);
            self.dirty = true;
        }
    }

    /// Forgets `ip` (its clone ended).
    pub fn remove(&mut self, ip: IpAddr) {
        if self.entries.remove(&ip).is_some() {
            self.dirty = true;
        }
    }

    /// The table to write, if it changed since it was last taken.
    pub fn take_changes(&mut self) -> Option<AffinitySnapshot> {
        let path = self.path.clone()?;
        std::mem::take(&mut self.dirty).then(|| AffinitySnapshot {
            path,
            entries: self.entries.clone(),
        })
    }
}

fn store_expired(entry: &Entry, max_age: Duration, now_ms: u64) -> bool {
    now_ms.saturating_sub(entry.saved_at_ms) >= max_age.as_millis() as u64
}

fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scratch_dir(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("clone-relay-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    #[test]
    fn survives_a_restart_and_forgets_ended_clones() {
        let dir = scratch_dir("affinity");
        let ip: IpAddr = "10.0.0.7".parse().unwrap();
        let other: IpAddr = "10.0.0.8".parse().unwrap();
        let hour = Duration::from_secs(3600);
        {
            let mut store = AffinityStore::load(&dir, hour);
            store.keep(ip, "donor-b:3306");
            store.keep(other, "donor-a:3306");
            store.remove(other);
            store.take_changes().expect("changed").save();
            assert!(store.take_changes().is_none(), "written once");
        }
        let store = AffinityStore::load(&dir, hour);
        assert_eq!(store.get(ip), Some("donor-b:3306"));
        assert_eq!(store.get(other), None);
        // Entries older than the longest resume are not used.
        assert_eq!(AffinityStore::load(&dir, Duration::ZERO).get(ip), None);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_garbled_file_starts_empty() {
        let dir = scratch_dir("affinity-garbled");
        std::fs::write(dir.join(FILE_NAME), b"{not json").unwrap();
        let store = AffinityStore::load(&dir, Duration::from_secs(60));
        assert_eq!(store.get("10.0.0.7".parse().unwrap()), None);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
