//! The verified-token cache and the `jti` replay cache.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;

use kz_policy::Identity;

/// Most verified tokens kept.
pub const TOKEN_CACHE_CAPACITY: usize = 10_000;
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
}

/// Verified tokens by the SHA-256 of the token. Bounded: when full, expired entries go first,
/// then the oldest.
#[derive(Debug)]
pub(crate) struct TokenCache {
    map: HashMap<[u8; 32], Entry>,
    order: VecDeque<([u8; 32], u64)>,
    seq: u64,
    capacity: usize,
}

impl TokenCache {
    pub fn new(capacity: usize) -> Self {
        Self {
            map: HashMap::new(),
            order: VecDeque::new(),
            seq: 0,
            capacity: capacity.max(1),
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
        self.map.remove(digest);
        None
    }

    pub fn insert(
        &mut self,
        digest: [u8; 32],
        identity: Arc<Identity>,
        exp: i64,
        issuer: usize,
        generation: u64,
        now: i64,
    ) {
        if now >= exp {
            return;
        }
        if self.map.len() >= self.capacity && !self.map.contains_key(&digest) {
            self.map.retain(|_, e| e.exp > now);
            while self.map.len() >= self.capacity {
                let Some((key, seq)) = self.order.pop_front() else {
                    break;
                };
                if self.map.get(&key).is_some_and(|e| e.seq == seq) {
                    self.map.remove(&key);
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
            },
        );
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
    seen: HashMap<String, i64>,
}

pub(crate) enum Replay {
    Fresh,
    Replayed,
    Full,
}

impl ReplayCache {
    /// Records `jti` until `until`; whether it was fresh.
    pub fn check_and_insert(&mut self, jti: &str, until: i64, now: i64) -> Replay {
        if let Some(&t) = self.seen.get(jti)
            && now < t
        {
            return Replay::Replayed;
        }
        if self.seen.len() >= REPLAY_CACHE_CAPACITY && !self.seen.contains_key(jti) {
            self.seen.retain(|_, t| now < *t);
            if self.seen.len() >= REPLAY_CACHE_CAPACITY {
                return Replay::Full;
            }
        }
        self.seen.insert(jti.to_string(), until);
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
        let mut c = TokenCache::new(3);
        for i in 0..10u8 {
            c.insert([i; 32], id("x"), 100 + i64::from(i), 0, 1, 50);
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
        c.insert([42; 32], id("y"), 10, 0, 1, 50);
        assert!(c.get(&[42; 32], 5, |_| Some(1)).is_none());
    }

    #[test]
    fn expired_entries_make_room_first() {
        let mut c = TokenCache::new(2);
        c.insert([1; 32], id("a"), 100, 0, 1, 0);
        c.insert([2; 32], id("b"), 1000, 0, 1, 0);
        c.insert([3; 32], id("c"), 1000, 0, 1, 200);
        assert!(c.get(&[2; 32], 200, |_| Some(1)).is_some());
        assert!(c.get(&[3; 32], 200, |_| Some(1)).is_some());
    }

    #[test]
    fn replay() {
        let mut r = ReplayCache::default();
        assert!(matches!(r.check_and_insert("a", 100, 0), Replay::Fresh));
        assert!(matches!(r.check_and_insert("a", 100, 50), Replay::Replayed));
        assert!(matches!(r.check_and_insert("a", 200, 100), Replay::Fresh));
    }
}
