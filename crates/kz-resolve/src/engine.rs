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

/// A provider instance ready to use, with the limits from its options.
#[derive(Clone)]
pub struct Instance {
    /// The implementation.
    pub provider: Arc<dyn Provider>,
    /// Total time per batch, retries included.
    pub timeout: Duration,
    /// Concurrent batches.
    pub concurrency: usize,
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
    Item {
        name: entry.name.clone(),
        reference: entry.reference.clone(),
        field: entry.field.clone(),
        params: entry
            .params
            .iter()
            .filter_map(|(k, _)| entry.param(k).map(|v| (k.clone(), v)))
            .collect(),
    }
}

/// Resolves `entries` with the given instances (keyed by instance name). The outcomes are in
/// the order of `entries`. An entry whose instance is missing gets a `Config` error.
pub async fn resolve_all(
    entries: &[&SecretEntry],
    instances: &HashMap<String, Instance>,
) -> Vec<Outcome> {
    let start = Instant::now();
    let mut slots: Vec<Option<(Result<Resolved, ProviderError>, Duration)>> =
        entries.iter().map(|_| None).collect();
    let mut groups: Vec<(String, Vec<usize>)> = Vec::new();
    for (i, e) in entries.iter().enumerate() {
        match groups.iter_mut().find(|(p, _)| *p == e.provider) {
            Some((_, v)) => v.push(i),
            None => groups.push((e.provider.clone(), vec![i])),
        }
    }
    let mut tasks = JoinSet::new();
    for (name, idxs) in groups {
        let Some(inst) = instances.get(&name) else {
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
        let sem = Arc::new(Semaphore::new(inst.concurrency.max(1)));
        for chunk in idxs.chunks(inst.provider.max_batch().max(1)) {
            let items: Vec<Item> = chunk
                .iter()
                .filter_map(|i| entries.get(*i))
                .map(|e| item_for(e))
                .collect();
            let chunk = chunk.to_vec();
            let inst = inst.clone();
            let sem = Arc::clone(&sem);
            tasks.spawn(async move {
                let _permit = sem.acquire_owned().await;
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
    entries
        .iter()
        .zip(slots)
        .map(|(e, slot)| {
            let (result, latency) = slot.unwrap_or_else(|| {
                (Err(ProviderError::new(ErrorKind::Backend, "the provider task ended without a result")), Duration::ZERO)
            });
            let result = result.and_then(|r| finish(e, r, instances.get(&e.provider)));
            let skipped = e.optional
                && matches!(&result, Err(err) if matches!(err.kind, ErrorKind::NotFound | ErrorKind::Empty | ErrorKind::Field));
            Outcome {
                name: e.name.clone(),
                provider: e.provider.clone(),
                type_name: e.ty.name,
                reference: e.reference.clone(),
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
fn finish(
    e: &SecretEntry,
    r: Resolved,
    inst: Option<&Instance>,
) -> Result<Resolved, ProviderError> {
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
                tokio::time::sleep(self.delay).await;
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
        m.insert(
            "fake".into(),
            Instance {
                provider: f.clone(),
                timeout,
                concurrency: 8,
            },
        );
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
        let refs: Vec<&SecretEntry> = es.iter().collect();
        let (_, m) = inst(
            Fake {
                calls: 0.into(),
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
        let refs: Vec<&SecretEntry> = es.iter().collect();
        let (f, m) = inst(
            Fake {
                calls: 0.into(),
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
        let refs: Vec<&SecretEntry> = es.iter().collect();
        let (_, m) = inst(
            Fake {
                calls: 0.into(),
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
        let refs: Vec<&SecretEntry> = es.iter().collect();
        let out = rt().block_on(resolve_all(&refs, &HashMap::new()));
        assert_eq!(out[0].result.as_ref().unwrap_err().kind, ErrorKind::Config);
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
