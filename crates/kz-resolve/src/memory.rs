//! An in-memory value cache (the server's `cache_ttl` per resolver): a bounded number of
//! entries, each with its own time to live; values kept as [`Resolved`] (zeroized when dropped,
//! replaced, expired or cleared); safe to share between threads.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use kz_secret::Resolved;

/// The longest time to live honoured; a longer one is cut to this (an `Instant` cannot be
/// moved arbitrarily far).
const MAX_TTL: Duration = Duration::from_secs(10 * 365 * 24 * 3600);

/// A bounded, thread-safe cache of resolved values with a time to live per entry.
///
/// When full, an insert first drops the expired entries, then the oldest ones. `get` hands out
/// a copy ([`Resolved::duplicate`]); the cache keeps its own. Debug shows counts, never values.
pub struct MemoryCache {
    max_entries: usize,
    inner: Mutex<Inner>,
}

#[derive(Default)]
struct Inner {
    entries: HashMap<String, Slot>,
    /// Insertion order: sequence number → key (the oldest first).
    by_age: BTreeMap<u64, String>,
    /// Expiry order: (expiry, sequence number) (the first to expire first).
    by_expiry: BTreeSet<(Instant, u64)>,
    next: u64,
}

struct Slot {
    value: Resolved,
    stored: Instant,
    expires: Instant,
    seq: u64,
}

impl Inner {
    fn remove(&mut self, key: &str) {
        if let Some(old) = self.entries.remove(key) {
            self.by_age.remove(&old.seq);
            self.by_expiry.remove(&(old.expires, old.seq));
        }
    }

    fn remove_seq(&mut self, seq: u64) {
        if let Some(key) = self.by_age.remove(&seq)
            && let Some(old) = self.entries.remove(&key)
        {
            self.by_expiry.remove(&(old.expires, old.seq));
        }
    }

    fn purge_expired(&mut self, now: Instant) {
        while let Some(&(expires, seq)) = self.by_expiry.first() {
            if expires > now {
                break;
            }
            self.by_expiry.pop_first();
            self.remove_seq(seq);
        }
    }
}

impl std::fmt::Debug for MemoryCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MemoryCache")
            .field("max_entries", &self.max_entries)
            .field("entries", &self.len())
            .finish()
    }
}

impl MemoryCache {
    /// An empty cache holding at most `max_entries` values (0: caches nothing).
    pub fn new(max_entries: usize) -> Self {
        Self {
            max_entries,
            inner: Mutex::new(Inner::default()),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // No code under the lock can panic; a poisoned lock still holds consistent maps.
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// A copy of the value stored under `key`; `None` when absent or expired.
    pub fn get(&self, key: &str) -> Option<Resolved> {
        self.get_at(key, Instant::now()).map(|(v, _)| v)
    }

    /// Same, with the value's age.
    pub fn get_with_age(&self, key: &str) -> Option<(Resolved, Duration)> {
        self.get_at(key, Instant::now())
    }

    fn get_at(&self, key: &str, now: Instant) -> Option<(Resolved, Duration)> {
        let mut inner = self.lock();
        let slot = inner.entries.get(key)?;
        if slot.expires <= now {
            inner.remove(key);
            return None;
        }
        Some((
            slot.value.duplicate(),
            now.saturating_duration_since(slot.stored),
        ))
    }

    /// Stores a copy of `value` under `key` for `ttl` (replacing any value there). A zero `ttl`,
    /// or a cache of size 0, stores nothing.
    pub fn insert(&self, key: String, value: &Resolved, ttl: Duration) {
        self.insert_at(key, value, ttl, Instant::now());
    }

    fn insert_at(&self, key: String, value: &Resolved, ttl: Duration, now: Instant) {
        let mut inner = self.lock();
        inner.remove(&key);
        if self.max_entries == 0 || ttl.is_zero() {
            return;
        }
        let Some(expires) = now.checked_add(ttl.min(MAX_TTL)) else {
            return;
        };
        if inner.entries.len() >= self.max_entries {
            inner.purge_expired(now);
        }
        while inner.entries.len() >= self.max_entries {
            let Some((&oldest, _)) = inner.by_age.first_key_value() else {
                break;
            };
            inner.remove_seq(oldest);
        }
        let seq = inner.next;
        inner.next = inner.next.wrapping_add(1);
        inner.by_age.insert(seq, key.clone());
        inner.by_expiry.insert((expires, seq));
        inner.entries.insert(
            key,
            Slot {
                value: value.duplicate(),
                stored: now,
                expires,
                seq,
            },
        );
    }

    /// Drops every value.
    pub fn clear(&self) {
        let mut inner = self.lock();
        inner.entries.clear();
        inner.by_age.clear();
        inner.by_expiry.clear();
    }

    /// Values held now (expired ones included until they are dropped).
    pub fn len(&self) -> usize {
        self.lock().entries.len()
    }

    /// Holds no value.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kz_secret::SecretValue;

    const CANARY: &str = "kz-canary-mem-5d1e";

    fn v(s: &str) -> Resolved {
        Resolved::Single(SecretValue::from_str_copy(s))
    }

    fn shown(r: &Resolved) -> String {
        match r {
            Resolved::Single(v) => v.expose_str().unwrap_or_default().to_string(),
            Resolved::Multi(m) => m
                .iter()
                .map(|(k, v)| format!("{k}={}", v.expose_str().unwrap_or_default()))
                .collect(),
        }
    }

    #[test]
    fn hit_returns_a_copy_and_replacing_keeps_one_entry() {
        let c = MemoryCache::new(4);
        assert!(c.get("k").is_none());
        c.insert("k".into(), &v("one"), Duration::from_secs(60));
        assert_eq!(c.get("k").as_ref().map(shown).as_deref(), Some("one"));
        c.insert("k".into(), &v("two"), Duration::from_secs(60));
        assert_eq!(c.get("k").as_ref().map(shown).as_deref(), Some("two"));
        assert_eq!(c.len(), 1);
        let multi = Resolved::Multi(vec![("A".into(), SecretValue::from_str_copy("a"))]);
        c.insert("m".into(), &multi, Duration::from_secs(60));
        assert_eq!(c.get("m"), Some(multi));
    }

    #[test]
    fn entries_expire_after_their_own_ttl() {
        let c = MemoryCache::new(4);
        let t0 = Instant::now();
        c.insert_at("short".into(), &v("s"), Duration::from_secs(10), t0);
        c.insert_at("long".into(), &v("l"), Duration::from_secs(100), t0);
        let t = t0 + Duration::from_secs(9);
        let (_, age) = c.get_at("short", t).unwrap();
        assert_eq!(age, Duration::from_secs(9));
        let t = t0 + Duration::from_secs(10);
        assert!(c.get_at("short", t).is_none());
        assert!(c.get_at("long", t).is_some());
        // An expired entry is dropped when seen.
        assert_eq!(c.len(), 1);
        assert!(c.get_at("long", t0 + Duration::from_secs(100)).is_none());
        assert!(c.is_empty());
    }

    #[test]
    fn the_bound_drops_expired_entries_first_then_the_oldest() {
        let c = MemoryCache::new(2);
        let t0 = Instant::now();
        c.insert_at("a".into(), &v("a"), Duration::from_secs(100), t0);
        c.insert_at("b".into(), &v("b"), Duration::from_secs(1), t0);
        // Full: `b` has expired, so it goes, not the older `a`.
        let t1 = t0 + Duration::from_secs(5);
        c.insert_at("c".into(), &v("c"), Duration::from_secs(100), t1);
        assert_eq!(c.len(), 2);
        assert!(c.get_at("a", t1).is_some() && c.get_at("c", t1).is_some());
        // Full, nothing expired: the oldest (`a`) goes.
        c.insert_at("d".into(), &v("d"), Duration::from_secs(100), t1);
        assert_eq!(c.len(), 2);
        assert!(c.get_at("a", t1).is_none());
        assert!(c.get_at("c", t1).is_some() && c.get_at("d", t1).is_some());
        // Replacing a key refreshes its age: `c` is now the newest, `d` the oldest.
        c.insert_at("c".into(), &v("c2"), Duration::from_secs(100), t1);
        c.insert_at("e".into(), &v("e"), Duration::from_secs(100), t1);
        assert!(c.get_at("d", t1).is_none());
        assert!(c.get_at("c", t1).is_some() && c.get_at("e", t1).is_some());
    }

    #[test]
    fn clear_zero_size_zero_ttl_and_huge_ttl() {
        let c = MemoryCache::new(8);
        c.insert("a".into(), &v("a"), Duration::from_secs(60));
        c.insert("b".into(), &v("b"), Duration::MAX);
        assert!(c.get("b").is_some());
        c.clear();
        assert!(c.is_empty() && c.get("a").is_none() && c.get("b").is_none());
        c.insert("z".into(), &v("z"), Duration::ZERO);
        assert!(c.get("z").is_none());
        let none = MemoryCache::new(0);
        none.insert("a".into(), &v("a"), Duration::from_secs(60));
        assert!(none.get("a").is_none() && none.is_empty());
    }

    #[test]
    fn values_never_appear_in_debug() {
        let c = MemoryCache::new(2);
        c.insert("k".into(), &v(CANARY), Duration::from_secs(60));
        let d = format!("{c:?} {c:#?} {:?}", c.get("k"));
        assert!(!d.contains(CANARY), "{d}");
        assert!(d.contains("entries"));
    }

    #[test]
    fn shared_between_threads() {
        let c = std::sync::Arc::new(MemoryCache::new(1000));
        let handles: Vec<_> = (0..4)
            .map(|t| {
                let c = c.clone();
                std::thread::spawn(move || {
                    for i in 0..100 {
                        c.insert(format!("{t}-{i}"), &v("x"), Duration::from_secs(60));
                        assert!(c.get(&format!("{t}-{i}")).is_some());
                    }
                })
            })
            .collect();
        for h in handles {
            h.join().unwrap();
        }
        assert_eq!(c.len(), 400);
    }
}
