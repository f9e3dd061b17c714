//! Which sending domains may send, per account, remembered for a short while: every
//! `POST /v1/messages` checks its From domain, and asking PostgreSQL each time cost one
//! query per request (the send API's largest fixed cost after authentication). Only
//! "may send" is remembered, so a domain added or verified a moment ago works at once;
//! a deleted domain stops working in this process at once and in the others within the
//! TTL.

use sendmill_wire::AccountId;
use std::{
    collections::HashMap,
    sync::Mutex,
    time::{Duration, Instant},
};

pub struct SenderCache {
    ttl: Duration,
    allowed: Mutex<HashMap<(AccountId, String), Instant>>,
}

/// Entries kept before the cache starts over.
const MAX_ENTRIES: usize = 100_000;

impl SenderCache {
    pub fn new(ttl: Duration) -> Self {
        Self {
            ttl,
            allowed: Mutex::default(),
        }
    }

    /// Whether `domain` was found allowed to send for `account` within the TTL.
    pub fn allowed(&self, account: AccountId, domain: &str) -> bool {
        self.allowed
            .lock()
            .expect("not poisoned")
            .get(&key(account, domain))
            .is_some_and(|at| at.elapsed() < self.ttl)
    }

    pub fn remember(&self, account: AccountId, domain: &str) {
        let mut allowed = self.allowed.lock().expect("not poisoned");
        if allowed.len() >= MAX_ENTRIES {
            allowed.clear();
        }
        allowed.insert(key(account, domain), Instant::now());
    }

    pub fn forget(&self, account: AccountId, domain: &str) {
        self.allowed
            .lock()
            .expect("not poisoned")
            .remove(&key(account, domain));
    }
}

/// Domain names are case-insensitive.
fn key(account: AccountId, domain: &str) -> (AccountId, String) {
    (account, domain.to_ascii_lowercase())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_what_was_remembered_within_the_ttl_is_allowed() {
        let cache = SenderCache::new(Duration::from_secs(60));
        let (a, b) = (AccountId::generate(), AccountId::generate());
        assert!(!cache.allowed(a, "x.test"));
        cache.remember(a, "x.test");
        assert!(cache.allowed(a, "x.test"));
        assert!(!cache.allowed(b, "x.test"), "tenants do not share entries");
        assert!(cache.allowed(a, "X.Test"));
        cache.forget(a, "x.TEST");
        assert!(!cache.allowed(a, "x.test"));
        let expired = SenderCache::new(Duration::ZERO);
        expired.remember(a, "x.test");
        assert!(!expired.allowed(a, "x.test"));
    }
}
