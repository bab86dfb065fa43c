//! The resolution engine: every secret of a run, grouped per provider instance, split into
//! batches, run concurrently (bounded per instance), each batch under one timeout that covers
//! its retries. Every failure is kept: nothing is short-circuited, so the caller can list them
//! all.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use kz_config::SecretEntry;
use kz_secret::Resolved;
use tokio::sync::Semaphore;
use tokio::task::JoinSet;

use crate::provider::{ErrorKind, Item, Provider, ProviderError, json_field};

/// At most this many attempts per item (the first plus two retries).
pub const MAX_ATTEMPTS: u32 = 3;

/// One thing to resolve, independent of where it was configured (a solo configuration's
/// secret, [`Request::from_entry`], or a team bundle's ref resolved by the server).
#[derive(Debug, Clone)]
pub struct Request {
    /// The secret's or ref's name (messages, plugin ids).
    pub name: String,
    /// The provider instance's name (the key of the instances map).
    pub instance: String,
    /// The provider's type.
    pub type_name: &'static str,
    /// The reference as the provider sees it.
    pub reference: String,
    /// One field of a JSON / key-value secret.
    pub field: Option<String>,
    /// Provider parameters, as text.
    pub params: Vec<(String, String)>,
    /// A missing or empty value is skipped (with a warning) instead of failing.
    pub optional: bool,
    /// An empty value is accepted.
    pub allow_empty: bool,
}

impl Request {
    /// The request for a configured secret entry.
    pub fn from_entry(e: &SecretEntry) -> Self {
        Self {
            name: e.name.clone(),
            instance: e.provider.clone(),
            type_name: e.ty.name,
            reference: e.reference.clone(),
            field: e.field.clone(),
            params: e
                .params
                .iter()
                .filter_map(|(k, _)| e.param(k).map(|v| (k.clone(), v)))
                .collect(),
            optional: e.optional,
            allow_empty: e.allow_empty,
        }
    }

    /// The item sent to the provider.
    pub fn item(&self) -> Item {
        Item {
            name: self.name.clone(),
            reference: self.reference.clone(),
            field: self.field.clone(),
            params: self.params.clone(),
        }
    }
}

/// A provider instance ready to use, with the limits from its options.
///
/// Cloning shares the concurrency limit: every [`resolve_all`] on this instance or a clone of
/// it, however many run at once (the server runs one per request), is bounded together to
/// `concurrency` batches in flight. The limit is fixed by [`Instance::new`]; changing the
/// public `concurrency` field later does not change it.
#[derive(Clone)]
pub struct Instance {
    /// The implementation.
    pub provider: Arc<dyn Provider>,
    /// Total time per batch, retries included.
    pub timeout: Duration,
    /// Concurrent batches (as given to [`Instance::new`]).
    pub concurrency: usize,
    limit: Arc<Semaphore>,
}

impl Instance {
    /// An instance whose batches, across every concurrent caller, are at most `concurrency` in
    /// flight (at least 1, at most what the limit can count).
    pub fn new(provider: Arc<dyn Provider>, timeout: Duration, concurrency: usize) -> Self {
        let permits = concurrency.clamp(1, Semaphore::MAX_PERMITS);
        Self {
            provider,
            timeout,
            concurrency,
            limit: Arc::new(Semaphore::new(permits)),
        }
    }
}

impl std::fmt::Debug for Instance {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Instance")
            .field("type", &self.provider.describe().type_name)
            .field("timeout", &self.timeout)
            .field("concurrency", &self.concurrency)
            .finish_non_exhaustive()
    }
}

/// The result for one secret.
#[derive(Debug)]
pub struct Outcome {
    /// The secret's name.
    pub name: String,
    /// Provider instance.
    pub provider: String,
    /// Provider type.
    pub type_name: &'static str,
    /// The reference.
    pub reference: String,
    /// The value(s), or why not.
    pub result: Result<Resolved, ProviderError>,
    /// Time until this secret's batch finished.
    pub latency: Duration,
    /// `optional` and not found / empty: skip it, with a warning.
    pub skipped: bool,
}

impl Outcome {
    /// Failed and not skipped.
    pub fn is_failure(&self) -> bool {
        self.result.is_err() && !self.skipped
    }
}

/// The item a secret entry sends to its provider.
pub fn item_for(entry: &SecretEntry) -> Item {
    Request::from_entry(entry).item()
}

/// Resolves `requests` with the given instances (keyed by instance name). The outcomes are in
/// the order of `requests`. A request whose instance is missing gets a `Config` error.
pub async fn resolve_all(
    requests: &[Request],
    instances: &HashMap<String, Instance>,
) -> Vec<Outcome> {
    let start = Instant::now();
    let mut slots: Vec<Option<(Result<Resolved, ProviderError>, Duration)>> =
        requests.iter().map(|_| None).collect();
    let mut groups: Vec<(&str, Vec<usize>)> = Vec::new();
    for (i, r) in requests.iter().enumerate() {
        match groups.iter_mut().find(|(p, _)| *p == r.instance) {
            Some((_, v)) => v.push(i),
            None => groups.push((&r.instance, vec![i])),
        }
    }
    let mut tasks = JoinSet::new();
    for (name, idxs) in groups {
        let Some(inst) = instances.get(name) else {
            for i in idxs {
                if let Some(s) = slots.get_mut(i) {
                    *s = Some((
                        Err(ProviderError::new(
                            ErrorKind::Config,
                            format!("provider `{name}` is not available"),
                        )),
                        Duration::ZERO,
                    ));
                }
            }
            continue;
        };
        for chunk in idxs.chunks(inst.provider.max_batch().max(1)) {
            let items: Vec<Item> = chunk
                .iter()
                .filter_map(|i| requests.get(*i))
                .map(Request::item)
                .collect();
            let chunk = chunk.to_vec();
            let inst = inst.clone();
            tasks.spawn(async move {
                // The instance's own limit, shared with every other caller: never closed, so
                // acquiring only waits.
                let _permit = Arc::clone(&inst.limit).acquire_owned().await;
                let results = run_batch(&inst, &items).await;
                (chunk, results, start.elapsed())
            });
        }
    }
    while let Some(joined) = tasks.join_next().await {
        let Ok((chunk, results, latency)) = joined else {
            continue;
        };
        for (i, r) in chunk.into_iter().zip(results) {
            if let Some(s) = slots.get_mut(i) {
                *s = Some((r, latency));
            }
        }
    }
    requests
        .iter()
        .zip(slots)
        .map(|(r, slot)| {
            let (result, latency) = slot.unwrap_or_else(|| {
                (Err(ProviderError::new(ErrorKind::Backend, "the provider task ended without a result")), Duration::ZERO)
            });
            let result = result.and_then(|v| finish(r, v, instances.get(&r.instance)));
            let skipped = r.optional
                && matches!(&result, Err(err) if matches!(err.kind, ErrorKind::NotFound | ErrorKind::Empty | ErrorKind::Field));
            Outcome {
                name: r.name.clone(),
                provider: r.instance.clone(),
                type_name: r.type_name,
                reference: r.reference.clone(),
                result,
                latency,
                skipped,
            }
        })
        .collect()
}

/// Runs one batch with retries of transient failures, all under the instance's timeout.
async fn run_batch(inst: &Instance, items: &[Item]) -> Vec<Result<Resolved, ProviderError>> {
    let mut results: Vec<Option<Result<Resolved, ProviderError>>> =
        items.iter().map(|_| None).collect();
    let work = async {
        let mut pending: Vec<usize> = (0..items.len()).collect();
        for attempt in 1..=MAX_ATTEMPTS {
            let batch: Vec<Item> = pending
                .iter()
                .filter_map(|i| items.get(*i).cloned())
                .collect();
            let answers = inst.provider.resolve(&batch).await;
            let mut retry = Vec::new();
            let mut answers = answers.into_iter();
            for i in pending {
                let answer = answers.next().unwrap_or_else(|| {
                    Err(ProviderError::new(
                        ErrorKind::Backend,
                        "the provider returned fewer results than asked",
                    ))
                });
                match answer {
                    Err(e) if e.transient && attempt < MAX_ATTEMPTS => {
                        retry.push(i);
                        if let Some(s) = results.get_mut(i) {
                            *s = Some(Err(e)); // kept if the timeout cuts the retry short
                        }
                    }
                    other => {
                        if let Some(s) = results.get_mut(i) {
                            *s = Some(other);
                        }
                    }
                }
            }
            if retry.is_empty() {
                break;
            }
            tokio::time::sleep(backoff(attempt)).await;
            pending = retry;
        }
    };
    let timed_out = tokio::time::timeout(inst.timeout, work).await.is_err();
    results
        .into_iter()
        .map(|r| match r {
            Some(Err(e)) if timed_out && e.transient => Err(timeout_error(inst.timeout, Some(&e))),
            Some(r) => r,
            None => Err(timeout_error(inst.timeout, None)),
        })
        .collect()
}

fn timeout_error(t: Duration, last: Option<&ProviderError>) -> ProviderError {
    let mut msg = format!("no answer within {}", humanize(t));
    if let Some(e) = last {
        msg.push_str(&format!(" (last error: {})", e.message));
    }
    ProviderError::new(ErrorKind::Timeout, msg)
        .help("check that the backend is reachable, or raise the provider's `timeout` option")
}

/// `1.5s`, `250ms`.
pub fn humanize(d: Duration) -> String {
    if d.as_millis() < 1000 {
        format!("{}ms", d.as_millis())
    } else if d.subsec_millis() == 0 {
        format!("{}s", d.as_secs())
    } else {
        format!("{:.1}s", d.as_secs_f64())
    }
}

/// Jittered exponential backoff: 100 ms, 200 ms, … each with up to 50 % random extra.
fn backoff(attempt: u32) -> Duration {
    let base = 100u64.saturating_mul(1 << attempt.saturating_sub(1).min(6));
    let jitter = rand::random_range(0..=base / 2);
    Duration::from_millis(base + jitter)
}

/// Applies `field` (when the provider does not) and the empty-value rule.
fn finish(e: &Request, r: Resolved, inst: Option<&Instance>) -> Result<Resolved, ProviderError> {
    let r = match (r, &e.field) {
        (Resolved::Single(v), Some(f)) if !inst.is_some_and(|i| i.provider.handles_field()) => {
            Resolved::Single(json_field(&v, f)?)
        }
        (r, _) => r,
    };
    if !e.allow_empty {
        let empty = match &r {
            Resolved::Single(v) => v.is_empty(),
            Resolved::Multi(m) => m.iter().any(|(_, v)| v.is_empty()),
        };
        if empty {
            return Err(ProviderError::new(ErrorKind::Empty, "the value is empty")
                .help("store a value, or set allow_empty = true on the secret if empty is valid"));
        }
    }
    Ok(r)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::provider::{BoxFuture, Description};
    use kz_secret::SecretValue;
    use std::sync::atomic::{AtomicUsize, Ordering};

    struct Fake {
        calls: AtomicUsize,
        /// Calls running now, and the most ever running at once.
        in_flight: AtomicUsize,
        max_in_flight: AtomicUsize,
        fail_first: usize,
        delay: Duration,
        batch: usize,
    }

    impl Provider for Fake {
        fn resolve<'a>(
            &'a self,
            items: &'a [Item],
        ) -> BoxFuture<'a, Vec<Result<Resolved, ProviderError>>> {
            Box::pin(async move {
                let n = self.calls.fetch_add(1, Ordering::SeqCst);
                let now = self.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
                self.max_in_flight.fetch_max(now, Ordering::SeqCst);
                tokio::time::sleep(self.delay).await;
                self.in_flight.fetch_sub(1, Ordering::SeqCst);
                items
                    .iter()
                    .map(|i| {
                        if n < self.fail_first {
                            Err(ProviderError::new(ErrorKind::Network, "reset").transient())
                        } else if i.reference == "missing" {
                            Err(ProviderError::not_found("no such secret"))
                        } else if i.reference == "empty" {
                            Ok(Resolved::Single(SecretValue::from_bytes(vec![])))
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
        fn max_batch(&self) -> usize {
            self.batch
        }
        fn describe(&self) -> Description {
            Description {
                instance: "fake".into(),
                type_name: "fake",
                details: vec![],
            }
        }
    }

    fn entries(refs: &[(&str, bool)]) -> Vec<SecretEntry> {
        let text: String = refs
            .iter()
            .enumerate()
            .map(|(i, (r, opt))| {
                format!("S{i} = {{ provider = \"env\", ref = \"X\", optional = {opt} }}\n# {r}\n")
            })
            .collect();
        let dir = tempfile_dir();
        std::fs::write(dir.join(".keyzero.toml"), format!("[secrets]\n{text}")).unwrap();
        let getenv = |_: &str| None;
        let l = kz_config::load(&kz_config::LoadRequest {
            start_dir: &dir,
            config_file: None,
            env_flag: None,
            global_file: None,
            getenv: &getenv,
        });
        let mut v = l.config.unwrap().secrets;
        for (e, (r, _)) in v.iter_mut().zip(refs) {
            e.reference = (*r).to_string();
            e.provider = "fake".into();
        }
        v
    }

    fn tempfile_dir() -> std::path::PathBuf {
        static N: AtomicUsize = AtomicUsize::new(0);
        let d = std::env::temp_dir().join(format!(
            "kz-engine-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::SeqCst)
        ));
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    fn inst(fake: Fake, timeout: Duration) -> (Arc<Fake>, HashMap<String, Instance>) {
        let f = Arc::new(fake);
        let mut m = HashMap::new();
        m.insert("fake".into(), Instance::new(f.clone(), timeout, 8));
        (f, m)
    }

    fn rt() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .start_paused(true)
            .build()
            .unwrap()
    }

    #[test]
    fn collects_every_failure_and_keeps_order() {
        let es = entries(&[
            ("a", false),
            ("missing", false),
            ("b", false),
            ("missing", true),
            ("empty", false),
        ]);
        let refs: Vec<Request> = es.iter().map(Request::from_entry).collect();
        let (_, m) = inst(
            Fake {
                calls: 0.into(),
                in_flight: 0.into(),
                max_in_flight: 0.into(),
                fail_first: 0,
                delay: Duration::ZERO,
                batch: 2,
            },
            Duration::from_secs(10),
        );
        let out = rt().block_on(resolve_all(&refs, &m));
        assert_eq!(
            out.iter().map(|o| o.name.as_str()).collect::<Vec<_>>(),
            ["S0", "S1", "S2", "S3", "S4"]
        );
        assert!(out[0].result.is_ok() && out[2].result.is_ok());
        assert!(out[1].is_failure());
        assert_eq!(
            out[1].result.as_ref().unwrap_err().kind,
            ErrorKind::NotFound
        );
        assert!(out[3].skipped && !out[3].is_failure());
        assert_eq!(out[4].result.as_ref().unwrap_err().kind, ErrorKind::Empty);
    }

    #[test]
    fn retries_transient_errors_at_most_three_times() {
        let es = entries(&[("a", false)]);
        let refs: Vec<Request> = es.iter().map(Request::from_entry).collect();
        let (f, m) = inst(
            Fake {
                calls: 0.into(),
                in_flight: 0.into(),
                max_in_flight: 0.into(),
                fail_first: 2,
                delay: Duration::ZERO,
                batch: 1,
            },
            Duration::from_secs(10),
        );
        let out = rt().block_on(resolve_all(&refs, &m));
        assert!(out[0].result.is_ok());
        assert_eq!(f.calls.load(Ordering::SeqCst), 3);
        let (f, m) = inst(
            Fake {
                calls: 0.into(),
                in_flight: 0.into(),
                max_in_flight: 0.into(),
                fail_first: 5,
                delay: Duration::ZERO,
                batch: 1,
            },
            Duration::from_secs(10),
        );
        let out = rt().block_on(resolve_all(&refs, &m));
        assert_eq!(out[0].result.as_ref().unwrap_err().kind, ErrorKind::Network);
        assert_eq!(f.calls.load(Ordering::SeqCst), 3);
    }

    #[test]
    fn slow_backend_hits_the_timeout() {
        let es = entries(&[("a", false), ("b", false)]);
        let refs: Vec<Request> = es.iter().map(Request::from_entry).collect();
        let (_, m) = inst(
            Fake {
                calls: 0.into(),
                in_flight: 0.into(),
                max_in_flight: 0.into(),
                fail_first: 0,
                delay: Duration::from_secs(30),
                batch: 1,
            },
            Duration::from_millis(500),
        );
        let out = rt().block_on(resolve_all(&refs, &m));
        for o in &out {
            let e = o.result.as_ref().unwrap_err();
            assert_eq!(e.kind, ErrorKind::Timeout);
            assert!(e.message.contains("500ms"), "{}", e.message);
        }
    }

    #[test]
    fn missing_instance_is_a_config_error() {
        let es = entries(&[("a", false)]);
        let refs: Vec<Request> = es.iter().map(Request::from_entry).collect();
        let out = rt().block_on(resolve_all(&refs, &HashMap::new()));
        assert_eq!(out[0].result.as_ref().unwrap_err().kind, ErrorKind::Config);
    }

    fn fake(delay: Duration) -> Fake {
        Fake {
            calls: 0.into(),
            in_flight: 0.into(),
            max_in_flight: 0.into(),
            fail_first: 0,
            delay,
            batch: 1,
        }
    }

    #[test]
    fn concurrent_calls_share_one_instance_limit() {
        // Two callers (the server's concurrent requests) on clones of one instance with
        // `concurrency = 1`: never two batches at once, and still every value.
        let f = Arc::new(fake(Duration::from_millis(100)));
        let one = Instance::new(f.clone(), Duration::from_secs(10), 1);
        let mut a = HashMap::new();
        a.insert("fake".to_string(), one.clone());
        let mut b = HashMap::new();
        b.insert("fake".to_string(), one);
        let es = entries(&[("a", false), ("b", false)]);
        let reqs: Vec<Request> = es.iter().map(Request::from_entry).collect();
        let (x, y) =
            rt().block_on(async { tokio::join!(resolve_all(&reqs, &a), resolve_all(&reqs, &b)) });
        assert!(x.iter().chain(&y).all(|o| o.result.is_ok()));
        assert_eq!(f.calls.load(Ordering::SeqCst), 4);
        assert_eq!(f.max_in_flight.load(Ordering::SeqCst), 1);
    }

    #[test]
    fn the_limit_allows_concurrency_batches_at_once() {
        let f = Arc::new(fake(Duration::from_millis(100)));
        let mut m = HashMap::new();
        m.insert(
            "fake".to_string(),
            Instance::new(f.clone(), Duration::from_secs(10), 2),
        );
        let es = entries(&[("a", false), ("b", false), ("c", false), ("d", false)]);
        let reqs: Vec<Request> = es.iter().map(Request::from_entry).collect();
        let out = rt().block_on(resolve_all(&reqs, &m));
        assert!(out.iter().all(|o| o.result.is_ok()));
        assert_eq!(f.max_in_flight.load(Ordering::SeqCst), 2);
    }

    #[test]
    fn an_abandoned_resolve_gives_its_place_back() {
        // A caller that gives up (a server client hanging up) must not keep the instance's
        // only slot: the next caller still gets its value.
        let f = Arc::new(fake(Duration::from_secs(60)));
        let one = Instance::new(f.clone(), Duration::from_secs(120), 1);
        let mut m = HashMap::new();
        m.insert("fake".to_string(), one);
        let es = entries(&[("a", false)]);
        let reqs: Vec<Request> = es.iter().map(Request::from_entry).collect();
        let rt = rt();
        let gave_up = rt.block_on(async {
            tokio::time::timeout(Duration::from_secs(1), resolve_all(&reqs, &m)).await
        });
        assert!(gave_up.is_err());
        let out = rt.block_on(async {
            tokio::time::timeout(Duration::from_secs(100), resolve_all(&reqs, &m)).await
        });
        let out = out.expect("the slot was released");
        assert!(out[0].result.is_ok());
    }

    #[test]
    fn extreme_concurrency_values_do_not_break_the_limit() {
        for n in [0, usize::MAX] {
            let f = Arc::new(fake(Duration::ZERO));
            let i = Instance::new(f, Duration::from_secs(1), n);
            assert_eq!(i.concurrency, n);
            assert!(i.limit.available_permits() >= 1);
        }
    }

    #[test]
    fn request_from_entry_carries_everything_the_engine_needs() {
        let es = entries(&[("missing", true)]);
        let r = Request::from_entry(&es[0]);
        assert_eq!(
            (r.name.as_str(), r.instance.as_str(), r.type_name),
            ("S0", "fake", "env")
        );
        assert_eq!(r.reference, "missing");
        assert!(r.optional && !r.allow_empty);
        let item = r.item();
        assert_eq!((item.name, item.reference), (r.name, r.reference));
    }

    #[test]
    fn backoff_grows_and_is_bounded() {
        for a in 1..10 {
            let b = backoff(a).as_millis() as u64;
            let base = 100u64 << (a - 1).min(6);
            assert!(b >= base && b <= base + base / 2);
        }
    }
}
