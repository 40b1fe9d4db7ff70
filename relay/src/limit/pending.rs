//! Connections that have not logged in yet, counted per client address: each dials the donor and
//! holds one of its connection slots until its login goes through, so one address may hold at
//! most `max_pending_logins_per_address` of them. Logged-in connections are not counted (a
//! recipient behind one address carries main, aux, workers and their reconnects).

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex, PoisonError};

/// The pending logins of every client address.
#[derive(Debug)]
pub struct PendingLogins {
    max_per_address: usize,
    counts: Mutex<HashMap<IpAddr, usize>>,
}

impl PendingLogins {
    pub fn new(max_per_address: usize) -> Self {
        PendingLogins {
            max_per_address,
            counts: Mutex::default(),
        }
    }

    /// A pending login from `addr`, counted until the returned guard is dropped; `None` when the
    /// address holds its most already.
    pub fn admit(self: &Arc<Self>, addr: IpAddr) -> Option<Pending> {
        let mut counts = self.counts.lock().unwrap_or_else(PoisonError::into_inner);
        let count = counts.entry(addr).or_default();
        if *count >= self.max_per_address {
            return None;
        }
        *count += 1;
        Some(Pending {
            logins: self.clone(),
            addr,
        })
    }

    /// Pending logins from `addr` now.
    pub fn count(&self, addr: IpAddr) -> usize {
        let counts = self.counts.lock().unwrap_or_else(PoisonError::into_inner);
        counts.get(&addr).copied().unwrap_or(0)
    }

    pub fn max_per_address(&self) -> usize {
        self.max_per_address
    }
}

/// One pending login; dropping it (the login went through, or the connection ended) frees its
/// place.
#[derive(Debug)]
pub struct Pending {
    logins: Arc<PendingLogins>,
    addr: IpAddr,
}

impl Drop for Pending {
    fn drop(&mut self) {
        let mut counts = self
            .logins
            .counts
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if let Some(count) = counts.get_mut(&self.addr) {
            *count -= 1;
            if *count == 0 {
                counts.remove(&self.addr);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_address_holds_at_most_its_share_and_a_login_frees_its_place() {
        let logins = Arc::new(PendingLogins::new(2));
        let a: IpAddr = "10.0.0.1".parse().unwrap();
        let b: IpAddr = "10.0.0.2".parse().unwrap();
        let first = logins.admit(a).unwrap();
        let _second = logins.admit(a).unwrap();
        assert!(logins.admit(a).is_none(), "a third from the same address");
        let _other = logins.admit(b).expect("another address is not held up");
        drop(first);
        assert_eq!(logins.count(a), 1);
        assert!(logins.admit(a).is_some());
        drop(_other);
        assert_eq!(logins.count(b), 0);
        assert!(
            logins.counts.lock().unwrap().get(&b).is_none(),
            "no entry kept"
        );
    }
}
