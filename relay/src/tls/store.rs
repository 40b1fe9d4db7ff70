//! The TLS in use and its reload: a new [`Tls`] swapped in whole when a configured file
//! changes or on SIGHUP.

use super::*;

/// The TLS in use, swapped whole by a reload. Each new connection takes the current [`Tls`]
/// once ([`TlsStore::current`]) and keeps it to its end, so a reload never touches a
/// connection already carried.
#[derive(Debug)]
pub struct TlsStore {
    pub(super) current: RwLock<Arc<Tls>>,
    /// Each configured TLS file with its stamp when the current `Tls` was last (re)built.
    pub(super) stamps: Mutex<Vec<(PathBuf, Stamp)>>,
}

/// What tells a changed file: its modification time and the SHA-256 of its contents (`None`:
/// unreadable). The digest catches a rewrite within the clock's granularity.
pub(super) type Stamp = Option<(SystemTime, Vec<u8>)>;

impl TlsStore {
    /// A store holding `tls`, built from `config`'s files as they are now.
    pub fn new(tls: Tls, config: &Config) -> Self {
        TlsStore {
            current: RwLock::new(Arc::new(tls)),
            stamps: Mutex::new(stamps(config)),
        }
    }

    /// The TLS for a new connection.
    pub fn current(&self) -> Arc<Tls> {
        self.current
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Builds a new `Tls` from the files and swaps it in; on failure the current one stays and
    /// the error says why.
    pub fn reload(&self, config: &Config) -> Result<Arc<Tls>, RelayError> {
        let mut seen = self.stamps.lock().unwrap_or_else(PoisonError::into_inner);
        // Stamped before reading, so a change made during the build is seen by the next poll.
        *seen = stamps(config);
        self.swap(config)
    }

    /// Like [`TlsStore::reload`], but only when a configured TLS file changed (its modification
    /// time or its contents) since the last build or attempt (`None`: nothing changed). A
    /// failed attempt is not repeated until a file changes again.
    pub fn reload_if_changed(&self, config: &Config) -> Option<Result<Arc<Tls>, RelayError>> {
        let mut seen = self.stamps.lock().unwrap_or_else(PoisonError::into_inner);
        let now = stamps(config);
        if *seen == now {
            return None;
        }
        *seen = now;
        Some(self.swap(config))
    }

    pub(super) fn swap(&self, config: &Config) -> Result<Arc<Tls>, RelayError> {
        let new = Arc::new(self.current().reload(config)?);
        *self.current.write().unwrap_or_else(PoisonError::into_inner) = new.clone();
        Ok(new)
    }
}

/// The configured TLS files (certificates, keys, CAs of both legs), each with its stamp now.
pub(super) fn stamps(config: &Config) -> Vec<(PathBuf, Stamp)> {
    [
        &config.client_tls_cert,
        &config.client_tls_key,
        &config.client_tls_ca,
        &config.server_tls_cert,
        &config.server_tls_key,
        &config.server_tls_ca,
        &config.server_public_key,
    ]
    .into_iter()
    .flatten()
    .map(|path| {
        let stamp = std::fs::metadata(path)
            .and_then(|m| m.modified())
            .and_then(|modified| {
                let contents = std::fs::read(path)?;
                let digest = ring::digest::digest(&ring::digest::SHA256, &contents);
                Ok((modified, digest.as_ref().to_vec()))
            })
            .ok();
        (path.clone(), stamp)
    })
    .collect()
}
