//! The buckets one direction of one connection draws from, and how a charge is paid: a slice
//! at a time, from every capped bucket in turn, innermost (the session) first. A bucket's turn
//! is held until the slice is paid in every bucket, so each bucket is charged exactly once per
//! byte and none is charged for bytes another bucket still holds back.

use std::sync::{Arc, Mutex, PoisonError};

use super::bucket::Bucket;

/// The buckets of one direction of a connection, innermost first. A connection starts with the
/// relay's; the session's join when the connection's clone is known.
#[derive(Debug, Clone, Default)]
pub struct Chain {
    buckets: Arc<Mutex<Vec<Arc<Bucket>>>>,
}

impl Chain {
    pub fn new(buckets: Vec<Arc<Bucket>>) -> Chain {
        Chain {
            buckets: Arc::new(Mutex::new(buckets)),
        }
    }

    /// Puts `bucket` in front (innermost), unless it is there already.
    pub fn join(&self, bucket: Arc<Bucket>) {
        let mut buckets = self.lock();
        if !buckets.iter().any(|b| Arc::ptr_eq(b, &bucket)) {
            buckets.insert(0, bucket);
        }
    }

    pub fn buckets(&self) -> Vec<Arc<Bucket>> {
        self.lock().clone()
    }

    /// The largest read to make before paying, while any bucket of the chain has a cap: the
    /// smallest slice among them.
    pub fn read_bound(&self) -> Option<usize> {
        self.lock()
            .iter()
            .filter_map(|b| b.gcra().map(|g| g.slice as usize))
            .min()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<Arc<Bucket>>> {
        self.buckets.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// Pays for `bytes` moved, from every bucket of `buckets`. `owed` holds, per bucket, the bytes
/// counted but not yet taken as whole cells; it carries over to the next payment.
pub async fn pay(buckets: &[Arc<Bucket>], owed: &mut [u64], bytes: u64) {
    debug_assert_eq!(buckets.len(), owed.len());
    let mut left = bytes;
    while left > 0 {
        let slice = buckets
            .iter()
            .filter_map(|b| b.gcra().map(|g| g.slice))
            .min()
            .unwrap_or(left)
            .min(left);
        let mut turns = Vec::with_capacity(buckets.len());
        for (bucket, owed) in buckets.iter().zip(owed.iter_mut()) {
            *owed += slice;
            match bucket.gcra() {
                Some(gcra) if *owed >= gcra.cell => {
                    turns.push(bucket.turn().await);
                    bucket.take(owed).await;
                }
                Some(_) => {}
                None => *owed = 0,
            }
            bucket.count(slice);
        }
        drop(turns);
        left -= slice;
    }
}
