//! The verified-token cache and the `jti` replay cache.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;

use kz_policy::Identity;
use sha2::{Digest, Sha256};

/// Most verified tokens kept.
pub const TOKEN_CACHE_CAPACITY: usize = 10_000;
/// Most bytes of tokens (their sizes added up) the verified-token cache stands for, so that
/// 10,000 tokens near the 16 KiB limit cannot pin 160 MiB of claims.
pub const TOKEN_CACHE_BYTES: usize = 16 * 1024 * 1024;
/// Most `jti`s a `single_use` issuer remembers at once.
pub const REPLAY_CACHE_CAPACITY: usize = 100_000;

#[derive(Debug)]
struct Entry {
    identity: Arc<Identity>,
    /// Served while `now < exp`.
    exp: i64,
    issuer: usize,
    generation: u64,
    seq: u64,
    size: usize,
}

/// Verified tokens by the SHA-256 of the token. Bounded: when full, expired entries go first,
/// then the oldest.
#[derive(Debug)]
pub(crate) struct TokenCache {
    map: HashMap<[u8; 32], Entry>,
    order: VecDeque<([u8; 32], u64)>,
    seq: u64,
    capacity: usize,
    max_bytes: usize,
    bytes: usize,
}

impl TokenCache {
    pub fn new(capacity: usize, max_bytes: usize) -> Self {
        Self {
            map: HashMap::new(),
            order: VecDeque::new(),
            seq: 0,
            capacity: capacity.max(1),
            max_bytes,
            bytes: 0,
        }
    }

    fn remove(&mut self, digest: &[u8; 32]) {
        if let Some(e) = self.map.remove(digest) {
            self.bytes = self.bytes.saturating_sub(e.size);
        }
    }

    /// The identity of a token verified before, if still valid at `now` for the issuer's key
    /// generation that `current` reports.
    pub fn get(
        &mut self,
        digest: &[u8; 32],
        now: i64,
        current: impl Fn(usize) -> Option<u64>,
    ) -> Option<Arc<Identity>> {
        let e = self.map.get(digest)?;
        if now < e.exp && current(e.issuer) == Some(e.generation) {
            return Some(Arc::clone(&e.identity));
        }
        self.remove(digest);
        None
    }

    /// Caches `identity` for the token with this digest and `size` bytes.
    #[allow(clippy::too_many_arguments)]
    pub fn insert(
        &mut self,
        digest: [u8; 32],
        size: usize,
        identity: Arc<Identity>,
        exp: i64,
        issuer: usize,
        generation: u64,
        now: i64,
    ) {
        if now >= exp || size > self.max_bytes {
            return;
        }
        self.remove(&digest);
        let full = |c: &Self| c.map.len() >= c.capacity || c.bytes + size > c.max_bytes;
        if full(self) {
            self.map.retain(|_, e| e.exp > now);
            self.bytes = self.map.values().map(|e| e.size).sum();
            while full(self) {
                let Some((key, seq)) = self.order.pop_front() else {
                    break;
                };
                if self.map.get(&key).is_some_and(|e| e.seq == seq) {
                    self.remove(&key);
                }
            }
        }
        self.seq += 1;
        let seq = self.seq;
        self.order.push_back((digest, seq));
        self.map.insert(
            digest,
            Entry {
                identity,
                exp,
                issuer,
                generation,
                seq,
                size,
            },
        );
        self.bytes += size;
        if self.order.len() > 2 * self.capacity {
            let map = &self.map;
            self.order
                .retain(|(k, s)| map.get(k).is_some_and(|e| e.seq == *s));
        }
    }

    pub fn len(&self) -> usize {
        self.map.len()
    }
}

/// `jti`s seen, each until its token's `exp` plus leeway.
#[derive(Debug, Default)]
pub(crate) struct ReplayCache {
    /// SHA-256 of each `jti` (a token may carry a `jti` of kilobytes).
    seen: HashMap<[u8; 32], i64>,
}

pub(crate) enum Replay {
    Fresh,
    Replayed,
    Full,
}

impl ReplayCache {
    /// Records `jti` until `until`; whether it was fresh.
    pub fn check_and_insert(&mut self, jti: &str, until: i64, now: i64) -> Replay {
        let key: [u8; 32] = Sha256::digest(jti.as_bytes()).into();
        if let Some(&t) = self.seen.get(&key)
            && now < t
        {
            return Replay::Replayed;
        }
        if self.seen.len() >= REPLAY_CACHE_CAPACITY && !self.seen.contains_key(&key) {
            self.seen.retain(|_, t| now < *t);
            if self.seen.len() >= REPLAY_CACHE_CAPACITY {
                return Replay::Full;
            }
        }
        self.seen.insert(key, until);
        Replay::Fresh
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(sub: &str) -> Arc<Identity> {
        Arc::new(Identity {
            sub: sub.into(),
            ..Identity::default()
        })
    }

    #[test]
    fn bounded_and_expiring() {
        let mut c = TokenCache::new(3, 1 << 20);
        for i in 0..10u8 {
            c.insert([i; 32], 10, id("x"), 100 + i64::from(i), 0, 1, 50);
            assert!(c.len() <= 3);
        }
        assert!(c.order.len() <= 6);
        assert!(c.get(&[9; 32], 50, |_| Some(1)).is_some());
        assert!(c.get(&[0; 32], 50, |_| Some(1)).is_none());
        // Expired at exp.
        assert!(c.get(&[9; 32], 109, |_| Some(1)).is_none());
        // A change of the issuer's keys drops it.
        assert!(c.get(&[8; 32], 50, |_| Some(2)).is_none());
        // Never stored when already expired.
        c.insert([42; 32], 10, id("y"), 10, 0, 1, 50);
        assert!(c.get(&[42; 32], 5, |_| Some(1)).is_none());
    }

    #[test]
    fn expired_entries_make_room_first() {
        let mut c = TokenCache::new(2, 1 << 20);
        c.insert([1; 32], 10, id("a"), 100, 0, 1, 0);
        c.insert([2; 32], 10, id("b"), 1000, 0, 1, 0);
        c.insert([3; 32], 10, id("c"), 1000, 0, 1, 200);
        assert!(c.get(&[2; 32], 200, |_| Some(1)).is_some());
        assert!(c.get(&[3; 32], 200, |_| Some(1)).is_some());
    }

    #[test]
    fn bounded_in_bytes() {
        let mut c = TokenCache::new(100, 1000);
        for i in 0..10u8 {
            c.insert([i; 32], 300, id("x"), 100, 0, 1, 0);
            assert!(c.bytes <= 1000);
            assert_eq!(c.bytes, c.map.values().map(|e| e.size).sum::<usize>());
        }
        assert_eq!(c.len(), 3);
        assert!(c.get(&[9; 32], 0, |_| Some(1)).is_some());
        // Re-inserting the same token does not count it twice.
        c.insert([9; 32], 300, id("x"), 100, 0, 1, 0);
        assert_eq!(c.bytes, 900);
        // A token over the whole budget is not cached.
        c.insert([77; 32], 1001, id("x"), 100, 0, 1, 0);
        assert!(c.get(&[77; 32], 0, |_| Some(1)).is_none());
    }

    #[test]
    fn replay() {
        let mut r = ReplayCache::default();
        assert!(matches!(r.check_and_insert("a", 100, 0), Replay::Fresh));
        assert!(matches!(r.check_and_insert("a", 100, 50), Replay::Replayed));
        assert!(matches!(r.check_and_insert("a", 200, 100), Replay::Fresh));
    }
}
