//! A resolve session: the value cache around the engine, the same for `kz run` (the encrypted
//! disk cache, `max_age` and `offline = "fallback"` per provider) and the server
//! ([`MemoryCache`], `cache_ttl` per resolver).
//!
//! 1. [`Session::new`] serves every request whose cached value is fresh enough (`max_age`)
//!    without contacting its provider.
//! 2. The caller resolves the rest ([`Session::pending_requests`]) with [`resolve_all`]; it may
//!    build only the instances those need first (`kz run` does, after its trust check).
//! 3. [`Session::finish`] stores the fetched values, and for a provider that is unreachable
//!    (network error or timeout) under `fallback`, serves the stored value whatever its age,
//!    saying so ([`Served::unreachable`]) so the caller can warn.
//!
//! [`resolve`] does the three steps when the instances are already built (the server). The
//! session decides what is cached and for how long only through the [`Cached`] plan the caller
//! gives each request; where values are kept is the [`ValueStore`]'s business.

use std::collections::HashMap;
use std::time::Duration;

use kz_secret::Resolved;

use crate::engine::{Instance, Outcome, Request, resolve_all};
use crate::memory::MemoryCache;
use crate::provider::{ErrorKind, ProviderError};

/// How one request uses the cache.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Policy {
    /// Reuse a value fetched at most this long ago, without contacting the provider.
    pub max_age: Option<Duration>,
    /// Use any stored value when the provider is unreachable.
    pub fallback: bool,
}

/// A request's cache plan: where its value is kept, and how it is used.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cached {
    /// The store key (it must change whenever anything that decides the value changes: the
    /// provider's type and options, the reference, `field`, the parameters).
    pub key: String,
    /// The policy.
    pub policy: Policy,
}

/// The cache key of a request to a configured instance: a SHA-256 over the provider's type, the
/// instance's options, the reference, `field` and the parameters, so a changed configuration
/// never reuses an old value. (The CLI's disk cache is keyed by it; keep it stable.)
pub fn key(inst: &kz_config::ProviderInstance, r: &Request) -> String {
    use sha2::{Digest, Sha256};
    let mut h = Sha256::new();
    h.update(b"kz-cache-v1\0");
    h.update(inst.ty.name.as_bytes());
    for (k, v) in &inst.options {
        h.update(format!("\0{k}={:?}", v.node.val).as_bytes());
    }
    h.update(b"\0ref=");
    h.update(r.reference.as_bytes());
    h.update(format!("\0field={:?}", r.field).as_bytes());
    for (k, v) in &r.params {
        h.update(format!("\0{k}={:?}", Some(v)).as_bytes());
    }
    kz_config::discover::hex(&h.finalize())
}

/// Where a session keeps values between resolves.
pub trait ValueStore {
    /// The value stored under `key` and its age, whatever its age (`None` when absent, or when
    /// the store has already dropped it).
    fn get(&self, key: &str) -> Option<(Resolved, Duration)>;

    /// Records a value just fetched for a request cached under `policy` (a store may decline
    /// some values, e.g. ones it cannot represent).
    fn put(&mut self, key: String, value: &Resolved, policy: &Policy);
}

/// The server's store: a value is kept for the policy's `max_age` (its `cache_ttl`); without a
/// `max_age` nothing is kept.
impl ValueStore for &MemoryCache {
    fn get(&self, key: &str) -> Option<(Resolved, Duration)> {
        self.get_with_age(key)
    }

    fn put(&mut self, key: String, value: &Resolved, policy: &Policy) {
        if let Some(ttl) = policy.max_age {
            self.insert(key, value, ttl);
        }
    }
}

/// How a value was obtained (`kz status` shows it).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CacheUse {
    /// Not cached.
    Off,
    /// Fetched from the provider (and cached when it succeeded).
    Miss,
    /// Served from the cache, this old.
    Hit(Duration),
    /// The provider was unreachable; served from the cache, this old.
    Fallback(Duration),
}

impl CacheUse {
    /// `off`, `miss`, `hit`, `fallback`.
    pub fn label(self) -> &'static str {
        match self {
            CacheUse::Off => "off",
            CacheUse::Miss => "miss",
            CacheUse::Hit(_) => "hit",
            CacheUse::Fallback(_) => "fallback",
        }
    }
}

/// One request's result, and how it was obtained.
#[derive(Debug)]
pub struct Served {
    /// The result, as the engine gives it (a cached value has zero latency).
    pub outcome: Outcome,
    /// How it was obtained.
    pub cache: CacheUse,
    /// For [`CacheUse::Fallback`]: the provider's error that made the session use the stored
    /// value (the caller warns with it).
    pub unreachable: Option<ProviderError>,
}

/// A session over `requests`; `plans[i]` is the cache plan of `requests[i]` (`None`, or a
/// missing entry: not cached).
pub struct Session<'a, S: ValueStore + ?Sized> {
    requests: &'a [Request],
    plans: &'a [Option<Cached>],
    store: Option<&'a mut S>,
    hits: Vec<Option<Served>>,
}

impl<S: ValueStore + ?Sized> std::fmt::Debug for Session<'_, S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Session")
            .field("requests", &self.requests.len())
            .field("store", &self.store.is_some())
            .field("hits", &self.hits.iter().flatten().count())
            .finish()
    }
}

fn cached_outcome(r: &Request, value: Resolved) -> Outcome {
    Outcome {
        name: r.name.clone(),
        provider: r.instance.clone(),
        type_name: r.type_name,
        reference: r.reference.clone(),
        result: Ok(value),
        latency: Duration::ZERO,
        skipped: false,
    }
}

impl<'a, S: ValueStore + ?Sized> Session<'a, S> {
    /// Starts a session: every request with a plan whose stored value is at most `max_age` old
    /// is served from `store` now. Without a store nothing is served from or kept in a cache.
    pub fn new(
        requests: &'a [Request],
        plans: &'a [Option<Cached>],
        store: Option<&'a mut S>,
    ) -> Self {
        let hits = requests
            .iter()
            .enumerate()
            .map(|(i, r)| {
                let store = store.as_deref()?;
                let plan = plans.get(i)?.as_ref()?;
                let max_age = plan.policy.max_age?;
                let (value, age) = store.get(&plan.key).filter(|(_, age)| *age <= max_age)?;
                Some(Served {
                    outcome: cached_outcome(r, value),
                    cache: CacheUse::Hit(age),
                    unreachable: None,
                })
            })
            .collect();
        Self {
            requests,
            plans,
            store,
            hits,
        }
    }

    /// The indices (into the requests) still to resolve.
    pub fn pending(&self) -> Vec<usize> {
        self.hits
            .iter()
            .enumerate()
            .filter(|(_, h)| h.is_none())
            .map(|(i, _)| i)
            .collect()
    }

    /// The requests still to resolve, in order: give them to [`resolve_all`].
    pub fn pending_requests(&self) -> Vec<Request> {
        self.pending()
            .into_iter()
            .filter_map(|i| self.requests.get(i).cloned())
            .collect()
    }

    /// Completes the session with the outcomes of [`Session::pending_requests`] (in that
    /// order): successful values are stored, unreachable providers under `fallback` are served
    /// from the store. The results are in the order of the requests.
    pub fn finish(self, fetched: Vec<Outcome>) -> Vec<Served> {
        let Self {
            requests,
            plans,
            mut store,
            hits,
        } = self;
        let mut fetched = fetched.into_iter();
        let mut out = Vec::with_capacity(requests.len());
        for (i, (r, hit)) in requests.iter().zip(hits).enumerate() {
            if let Some(h) = hit {
                out.push(h);
                continue;
            }
            // One outcome per pending request; should the caller give fewer, the request
            // fails rather than vanishing from the results.
            let o = fetched.next().unwrap_or_else(|| Outcome {
                result: Err(ProviderError::new(
                    ErrorKind::Backend,
                    "no result was given for this request",
                )),
                ..cached_outcome(r, Resolved::Multi(Vec::new()))
            });
            let plan = plans.get(i).and_then(Option::as_ref);
            let Some(plan) = plan else {
                out.push(Served {
                    outcome: o,
                    cache: CacheUse::Off,
                    unreachable: None,
                });
                continue;
            };
            let miss = |outcome| Served {
                outcome,
                cache: CacheUse::Miss,
                unreachable: None,
            };
            let Some(store) = store.as_deref_mut() else {
                out.push(miss(o));
                continue;
            };
            match &o.result {
                Ok(value) => {
                    store.put(plan.key.clone(), value, &plan.policy);
                    out.push(miss(o));
                }
                Err(e)
                    if plan.policy.fallback
                        && matches!(e.kind, ErrorKind::Network | ErrorKind::Timeout) =>
                {
                    match store.get(&plan.key) {
                        Some((value, age)) => out.push(Served {
                            unreachable: Some(e.clone()),
                            outcome: cached_outcome(r, value),
                            cache: CacheUse::Fallback(age),
                        }),
                        None => out.push(miss(o)),
                    }
                }
                Err(_) => out.push(miss(o)),
            }
        }
        out
    }
}

/// A whole session with instances already built: fresh cached values first, the rest resolved
/// by the engine, then stored (or, unreachable under `fallback`, served from the store).
pub async fn resolve<S: ValueStore + ?Sized>(
    requests: &[Request],
    plans: &[Option<Cached>],
    store: Option<&mut S>,
    instances: &HashMap<String, Instance>,
) -> Vec<Served> {
    let session = Session::new(requests, plans, store);
    let pending = session.pending_requests();
    let fetched = if pending.is_empty() {
        Vec::new()
    } else {
        resolve_all(&pending, instances).await
    };
    session.finish(fetched)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::provider::{BoxFuture, Description, Item, Provider};
    use kz_secret::SecretValue;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};

    const CANARY: &str = "kz-canary-session-3b7c";

    /// Answers `v-<ref>`; `down` makes every call a network error; counts calls.
    struct Fake {
        calls: AtomicUsize,
        down: bool,
    }

    impl Provider for Fake {
        fn resolve<'a>(
            &'a self,
            items: &'a [Item],
        ) -> BoxFuture<'a, Vec<Result<Resolved, ProviderError>>> {
            Box::pin(async move {
                self.calls.fetch_add(1, Ordering::SeqCst);
                items
                    .iter()
                    .map(|i| {
                        if self.down {
                            Err(ProviderError::new(ErrorKind::Network, "connection refused"))
                        } else if i.reference == "missing" {
                            Err(ProviderError::not_found("no such secret"))
                        } else {
                            Ok(Resolved::Single(SecretValue::from_str_copy(&format!(
                                "v-{}",
                                i.reference
                            ))))
                        }
                    })
                    .collect()
            })
        }
        fn describe(&self) -> Description {
            Description {
                instance: "p".into(),
                type_name: "fake",
                details: vec![],
            }
        }
    }

    /// A store with explicit ages (the disk cache's shape).
    #[derive(Default)]
    struct Aged {
        values: HashMap<String, (Resolved, Duration)>,
        puts: usize,
    }

    impl ValueStore for Aged {
        fn get(&self, key: &str) -> Option<(Resolved, Duration)> {
            self.values.get(key).map(|(v, a)| (v.duplicate(), *a))
        }
        fn put(&mut self, key: String, value: &Resolved, _: &Policy) {
            self.puts += 1;
            self.values.insert(key, (value.duplicate(), Duration::ZERO));
        }
    }

    fn req(name: &str, reference: &str) -> Request {
        Request {
            name: name.into(),
            instance: "p".into(),
            type_name: "fake",
            reference: reference.into(),
            field: None,
            params: Vec::new(),
            optional: false,
            allow_empty: false,
        }
    }

    fn plan(key: &str, max_age: Option<u64>, fallback: bool) -> Option<Cached> {
        Some(Cached {
            key: key.into(),
            policy: Policy {
                max_age: max_age.map(Duration::from_secs),
                fallback,
            },
        })
    }

    fn instances(down: bool) -> (Arc<Fake>, HashMap<String, Instance>) {
        let f = Arc::new(Fake {
            calls: 0.into(),
            down,
        });
        let mut m = HashMap::new();
        m.insert(
            "p".to_string(),
            Instance::new(f.clone(), Duration::from_secs(5), 4),
        );
        (f, m)
    }

    fn run<S: ValueStore + ?Sized>(
        reqs: &[Request],
        plans: &[Option<Cached>],
        store: Option<&mut S>,
        m: &HashMap<String, Instance>,
    ) -> Vec<Served> {
        tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .unwrap()
            .block_on(resolve(reqs, plans, store, m))
    }

    fn value(s: &Served) -> String {
        match &s.outcome.result {
            Ok(Resolved::Single(v)) => v.expose_str().unwrap().to_string(),
            other => format!("{other:?}"),
        }
    }

    fn single(s: &str) -> Resolved {
        Resolved::Single(SecretValue::from_str_copy(s))
    }

    #[test]
    fn fresh_values_are_served_without_the_provider_and_stale_ones_refetched() {
        let mut store = Aged::default();
        store.values.insert(
            "k-fresh".into(),
            (single("cached-1"), Duration::from_secs(30)),
        );
        store.values.insert(
            "k-stale".into(),
            (single("cached-2"), Duration::from_secs(90)),
        );
        let reqs = [req("A", "a"), req("B", "b"), req("C", "c")];
        let plans = [
            plan("k-fresh", Some(60), false),
            plan("k-stale", Some(60), false),
            None,
        ];
        let (f, m) = instances(false);
        let out = run(&reqs, &plans, Some(&mut store), &m);
        let names: Vec<&str> = out.iter().map(|s| s.outcome.name.as_str()).collect();
        assert_eq!(names, ["A", "B", "C"]);
        assert_eq!(value(&out[0]), "cached-1");
        assert_eq!(out[0].cache, CacheUse::Hit(Duration::from_secs(30)));
        assert_eq!(value(&out[1]), "v-b");
        assert_eq!(out[1].cache, CacheUse::Miss);
        assert_eq!(value(&out[2]), "v-c");
        assert_eq!(out[2].cache, CacheUse::Off);
        // One batch each for B and C; A never reached the provider.
        assert_eq!(f.calls.load(Ordering::SeqCst), 2);
        // Only the cached request's fresh value was stored.
        assert_eq!(store.puts, 1);
        assert_eq!(value_of(&store, "k-stale"), "v-b");
    }

    fn value_of(s: &Aged, key: &str) -> String {
        match s.get(key) {
            Some((Resolved::Single(v), _)) => v.expose_str().unwrap().to_string(),
            other => format!("{other:?}"),
        }
    }

    #[test]
    fn all_hits_never_contact_a_provider() {
        let mut store = Aged::default();
        store
            .values
            .insert("k".into(), (single("cached"), Duration::ZERO));
        let reqs = [req("A", "a")];
        let plans = [plan("k", Some(60), false)];
        let out = run(&reqs, &plans, Some(&mut store), &HashMap::new());
        assert_eq!(value(&out[0]), "cached");
    }

    #[test]
    fn unreachable_provider_falls_back_to_any_age_only_when_asked() {
        let mut store = Aged::default();
        let old = Duration::from_secs(86_400);
        store.values.insert("k1".into(), (single("old-1"), old));
        store.values.insert("k2".into(), (single("old-2"), old));
        let reqs = [req("A", "a"), req("B", "b"), req("C", "c")];
        let plans = [
            plan("k1", Some(60), true),
            plan("k2", None, false),
            plan("k3", None, true),
        ];
        let (_, m) = instances(true);
        let out = run(&reqs, &plans, Some(&mut store), &m);
        assert_eq!(value(&out[0]), "old-1");
        assert_eq!(out[0].cache, CacheUse::Fallback(old));
        assert_eq!(
            out[0].unreachable.as_ref().map(|e| e.kind),
            Some(ErrorKind::Network)
        );
        // No fallback asked: the error stands.
        assert_eq!(out[1].cache, CacheUse::Miss);
        assert_eq!(
            out[1].outcome.result.as_ref().unwrap_err().kind,
            ErrorKind::Network
        );
        // Fallback asked but nothing stored: the error stands.
        assert!(out[2].outcome.is_failure() && out[2].unreachable.is_none());
        assert_eq!(store.puts, 0);
    }

    #[test]
    fn a_not_found_is_never_replaced_by_a_stored_value() {
        let mut store = Aged::default();
        store
            .values
            .insert("k".into(), (single("old"), Duration::from_secs(600)));
        let reqs = [req("A", "missing")];
        let plans = [plan("k", Some(60), true)];
        let (_, m) = instances(false);
        let out = run(&reqs, &plans, Some(&mut store), &m);
        assert_eq!(
            out[0].outcome.result.as_ref().unwrap_err().kind,
            ErrorKind::NotFound
        );
        assert_eq!(out[0].cache, CacheUse::Miss);
    }

    #[test]
    fn without_a_store_planned_requests_are_misses() {
        let reqs = [req("A", "a")];
        let plans = [plan("k", Some(60), true)];
        let (_, m) = instances(false);
        let out = run::<Aged>(&reqs, &plans, None, &m);
        assert_eq!(value(&out[0]), "v-a");
        assert_eq!(out[0].cache, CacheUse::Miss);
    }

    #[test]
    fn the_memory_cache_is_a_store_for_its_ttl() {
        let cache = MemoryCache::new(16);
        let reqs = [req("A", "a"), req("B", "b")];
        let plans = [plan("ka", Some(60), false), plan("kb", None, true)];
        let (f, m) = instances(false);
        let first = run(&reqs, &plans, Some(&mut &cache), &m);
        assert!(first.iter().all(|s| s.cache == CacheUse::Miss));
        // Without a max_age (TTL), nothing is kept.
        assert_eq!(cache.len(), 1);
        let again = run(&reqs, &plans, Some(&mut &cache), &m);
        assert!(matches!(again[0].cache, CacheUse::Hit(_)));
        assert_eq!(value(&again[0]), "v-a");
        assert_eq!(again[1].cache, CacheUse::Miss);
        assert_eq!(f.calls.load(Ordering::SeqCst), 3);
    }

    fn load(toml: &str) -> kz_config::Config {
        static N: AtomicUsize = AtomicUsize::new(0);
        let dir = std::env::temp_dir().join(format!(
            "kz-session-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::SeqCst)
        ));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join(".keyzero.toml"), toml).unwrap();
        let getenv = |_: &str| None;
        let l = kz_config::load(&kz_config::LoadRequest {
            start_dir: &dir,
            config_file: None,
            env_flag: None,
            global_file: None,
            getenv: &getenv,
        });
        let _ = std::fs::remove_dir_all(&dir);
        l.config.unwrap_or_else(|| panic!("{:?}", l.diagnostics))
    }

    /// The key as the CLI computed it from the secret entry before the session moved here:
    /// existing disk caches must keep their hits.
    fn old_key(entry: &kz_config::SecretEntry, inst: &kz_config::ProviderInstance) -> String {
        use sha2::{Digest, Sha256};
        let mut h = Sha256::new();
        h.update(b"kz-cache-v1\0");
        h.update(inst.ty.name.as_bytes());
        for (k, v) in &inst.options {
            h.update(format!("\0{k}={:?}", v.node.val).as_bytes());
        }
        h.update(b"\0ref=");
        h.update(entry.reference.as_bytes());
        h.update(format!("\0field={:?}", entry.field).as_bytes());
        for (k, _) in &entry.params {
            h.update(format!("\0{k}={:?}", entry.param(k)).as_bytes());
        }
        kz_config::discover::hex(&h.finalize())
    }

    #[test]
    fn the_key_is_the_disk_caches_and_changes_with_what_decides_the_value() {
        let base = r#"
[providers.vault]
type = "hashicorp"
address = "http://127.0.0.1:8200"
timeout = "5s"
[secrets]
A = { provider = "vault", ref = "secret/app", field = "password", version = 3 }
B = { provider = "vault", ref = "secret/app", field = "password", version = 4 }
C = { provider = "vault", ref = "secret/app", field = "user", version = 3 }
D = { provider = "vault", ref = "secret/other", field = "password", version = 3 }
E = { provider = "vault", ref = "secret/app", field = "password", version = 3 }
"#;
        let c = load(base);
        let inst = c.provider("vault").unwrap();
        let keys: Vec<String> = ["A", "B", "C", "D", "E"]
            .iter()
            .map(|n| {
                let e = c.secret(n).unwrap();
                let k = key(inst, &Request::from_entry(e));
                assert_eq!(k, old_key(e, inst), "{n}");
                k
            })
            .collect();
        // Same inputs (A, E), same key; any difference, another key.
        assert_eq!(keys[0], keys[4]);
        let mut distinct = keys[..4].to_vec();
        distinct.sort();
        distinct.dedup();
        assert_eq!(distinct.len(), 4);
        // The instance's options are part of it.
        let other = load(&base.replace("timeout = \"5s\"", "timeout = \"6s\""));
        let e = other.secret("A").unwrap();
        let k = key(other.provider("vault").unwrap(), &Request::from_entry(e));
        assert_ne!(k, keys[0]);
    }

    #[test]
    fn a_request_without_an_outcome_fails_instead_of_vanishing() {
        let reqs = [req("A", "a"), req("B", "b")];
        let session = Session::<Aged>::new(&reqs, &[], None);
        assert_eq!(session.pending(), [0, 1]);
        let out = session.finish(Vec::new());
        assert_eq!(out.len(), 2);
        assert!(out.iter().all(|s| s.outcome.is_failure()));
    }

    #[test]
    fn the_servers_futures_can_move_between_threads() {
        fn send<T: Send>(_: &T) {}
        fn shared<T: Send + Sync>() {}
        shared::<MemoryCache>();
        shared::<Instance>();
        let cache = MemoryCache::new(1);
        let mut store = &cache;
        let reqs = [req("A", "a")];
        let m = HashMap::new();
        send(&resolve(&reqs, &[], Some(&mut store), &m));
        send(&resolve_all(&reqs, &m));
    }

    #[test]
    fn values_never_appear_in_debug() {
        let mut store = Aged::default();
        store
            .values
            .insert("k".into(), (single(CANARY), Duration::ZERO));
        let reqs = [req("A", "a")];
        let plans = [plan("k", Some(60), false)];
        let session = Session::new(&reqs, &plans, Some(&mut store));
        let shown = format!("{session:?}");
        let served = session.finish(Vec::new());
        let shown = format!("{shown} {served:?}");
        assert!(!shown.contains(CANARY), "{shown}");
        assert_eq!(value(&served[0]), CANARY);
    }
}
