//! The encrypted value cache (`[cache]`, and `max_age` / `offline` per provider).
//!
//! One age file, `$XDG_CACHE_HOME/keyzero/cache.age` (directory 0700, file 0600), encrypted to
//! the `local` store's key: a cached value is as safe as a stored one. Its plaintext is
//! `{"v":1,"entries":{"<key>":{"value"|"value_b64":…,"fetched":<unix seconds>}}}`, where the key is
//! a SHA-256 over the provider type, the instance's options, the reference, `field` and the
//! parameters, so a changed configuration never reuses an old value.
//!
//! - `max_age`: a value fetched within that age is used without contacting the provider.
//! - `offline = "fallback"`: when the provider is unreachable (network error or timeout), the
//!   cached value is used, whatever its age, with a warning naming the age.
//! - Providers with neither setting are never cached, nor are the types that read from this
//!   machine (`local`, `env`, `dotenv`, `age`). Only single values are cached (not the several
//!   variables of `aws_sts` with `format = "env"`).
//! - `kz cache clear` removes the file.
//!
//! This module is the store and the policy; `kz_resolve::session` applies them around the
//! engine (the server uses the same session with an in-memory store).

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use kz_config::{Config, Diagnostic, Offline, ProviderInstance, SecretEntry};
use kz_secret::{Resolved, SecretValue};
use serde::{Deserialize, Serialize};
use zeroize::Zeroizing;

/// How one provider instance uses the cache (the session in `kz_resolve` applies it).
pub use kz_resolve::session::Policy;

/// Provider types read from this machine: caching them would only add staleness and a second
/// copy, so they never are.
const LOCAL_TYPES: &[&str] = &["local", "env", "dotenv", "age"];

/// The instance's policy, `None` when caching is off for it.
pub fn policy(config: &Config, inst: &ProviderInstance) -> Option<Policy> {
    if LOCAL_TYPES.contains(&inst.ty.name) {
        return None;
    }
    let max_age = inst
        .opt_duration("max_age")
        .or(config.cache.max_age)
        .filter(|d| !d.is_zero());
    let fallback = match inst.opt_str("offline") {
        Some(o) => o == "fallback",
        None => config.cache.offline == Offline::Fallback,
    };
    (max_age.is_some() || fallback).then_some(Policy { max_age, fallback })
}

/// The cache key of a secret entry (`kz_resolve::session::key`).
pub fn key(entry: &SecretEntry, inst: &ProviderInstance) -> String {
    kz_resolve::session::key(inst, &kz_resolve::Request::from_entry(entry))
}

/// Where the cache lives.
pub fn path(cache_home: &Path) -> PathBuf {
    cache_home.join("keyzero").join("cache.age")
}

struct Entry {
    value: SecretValue,
    fetched: u64,
}

#[derive(Deserialize)]
struct FileIn {
    v: u32,
    #[serde(default)]
    entries: BTreeMap<String, EntryIn>,
}

#[derive(Deserialize)]
struct EntryIn {
    value: Option<String>,
    value_b64: Option<String>,
    fetched: u64,
}

#[derive(Serialize)]
struct FileOut<'a> {
    v: u32,
    entries: BTreeMap<&'a str, EntryOut<'a>>,
}

#[derive(Serialize)]
struct EntryOut<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    value: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    value_b64: Option<&'a str>,
    fetched: u64,
}

/// The decrypted cache of one run.
pub struct Cache {
    path: PathBuf,
    identity: age::x25519::Identity,
    recipient: age::x25519::Recipient,
    entries: BTreeMap<String, Entry>,
    dirty: bool,
}

impl std::fmt::Debug for Cache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cache")
            .field("path", &self.path)
            .field("entries", &self.entries.len())
            .finish_non_exhaustive()
    }
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

fn cache_error(path: &Path, what: &str) -> Diagnostic {
    Diagnostic::warning(
        "cache::io",
        format!(
            "the cache `{}` {what}; continuing without it",
            path.display()
        ),
    )
    .help("`kz cache clear` removes it")
}

impl Cache {
    /// Opens (decrypts) the cache. A missing file is an empty cache; one that cannot be read
    /// or decrypted (the store's key changed) is a warning and an empty cache, replaced on save.
    pub fn open(
        path: PathBuf,
        identity: age::x25519::Identity,
        recipient: age::x25519::Recipient,
    ) -> (Self, Option<Diagnostic>) {
        let mut cache = Self {
            path,
            identity,
            recipient,
            entries: BTreeMap::new(),
            dirty: false,
        };
        let warning = match std::fs::read(&cache.path) {
            Ok(bytes) => cache.load(&bytes).err(),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
            Err(e) => Some(cache_error(&cache.path, &format!("cannot be read ({e})"))),
        };
        (cache, warning)
    }

    fn load(&mut self, bytes: &[u8]) -> Result<(), Diagnostic> {
        let bad = |what: &str| cache_error(&self.path, what);
        let dec = age::Decryptor::new_buffered(bytes).map_err(|_| bad("is damaged"))?;
        let mut r = dec
            .decrypt(std::iter::once(&self.identity as &dyn age::Identity))
            .map_err(|_| bad("was encrypted with another key"))?;
        let mut plain = Zeroizing::new(Vec::new());
        r.read_to_end(&mut plain).map_err(|_| bad("is damaged"))?;
        let parsed: FileIn = serde_json::from_slice(&plain).map_err(|_| bad("is damaged"))?;
        if parsed.v != 1 {
            return Err(bad("has an unknown version"));
        }
        for (k, e) in parsed.entries {
            let value = match (e.value, e.value_b64) {
                (Some(v), _) => SecretValue::from_string(v),
                (None, Some(b)) => {
                    let b = Zeroizing::new(b);
                    match base64::engine::general_purpose::STANDARD.decode(b.as_bytes()) {
                        Ok(v) => SecretValue::from_bytes(v),
                        Err(_) => continue,
                    }
                }
                (None, None) => continue,
            };
            self.entries.insert(
                k,
                Entry {
                    value,
                    fetched: e.fetched,
                },
            );
        }
        Ok(())
    }

    /// A cached value and its age.
    pub fn get(&self, key: &str) -> Option<(SecretValue, Duration)> {
        let e = self.entries.get(key)?;
        Some((
            e.value.duplicate(),
            Duration::from_secs(now().saturating_sub(e.fetched)),
        ))
    }

    /// Records a freshly fetched value.
    pub fn put(&mut self, key: String, value: &SecretValue) {
        self.entries.insert(
            key,
            Entry {
                value: value.duplicate(),
                fetched: now(),
            },
        );
        self.dirty = true;
    }

    /// Writes the cache back (encrypted, atomically, 0600) when it changed.
    pub fn save(&self) -> Result<(), Diagnostic> {
        if !self.dirty {
            return Ok(());
        }
        let encoded: BTreeMap<&str, Zeroizing<String>> = self
            .entries
            .iter()
            .filter(|(_, e)| e.value.expose_str().is_none())
            .map(|(k, e)| {
                (
                    k.as_str(),
                    Zeroizing::new(
                        base64::engine::general_purpose::STANDARD.encode(e.value.expose_bytes()),
                    ),
                )
            })
            .collect();
        let out = FileOut {
            v: 1,
            entries: self
                .entries
                .iter()
                .map(|(k, e)| {
                    let b64 = encoded.get(k.as_str()).map(|s| s.as_str());
                    (
                        k.as_str(),
                        EntryOut {
                            value: e.value.expose_str(),
                            value_b64: b64,
                            fetched: e.fetched,
                        },
                    )
                })
                .collect(),
        };
        let mut plain = Zeroizing::new(Vec::new());
        serde_json::to_writer(&mut *plain, &out)
            .map_err(|_| cache_error(&self.path, "cannot be serialised"))?;
        let enc = age::Encryptor::with_recipients(std::iter::once(
            &self.recipient as &dyn age::Recipient,
        ))
        .map_err(|_| cache_error(&self.path, "cannot be encrypted"))?;
        let mut bytes = Vec::new();
        let mut w = enc
            .wrap_output(&mut bytes)
            .map_err(|_| cache_error(&self.path, "cannot be encrypted"))?;
        w.write_all(&plain)
            .and_then(|()| w.finish().map(drop))
            .map_err(|_| cache_error(&self.path, "cannot be encrypted"))?;
        kz_providers::local::make_private_dir(self.path.parent())
            .map_err(|e| cache_error(&self.path, &e.message))?;
        kz_providers::local::write_atomic(&self.path, &bytes)
            .map_err(|e| cache_error(&self.path, &e.message))
    }
}

/// The session's view of the disk cache: only single values are kept (not the several
/// variables of `aws_sts` with `format = "env"`).
impl kz_resolve::ValueStore for Cache {
    fn get(&self, key: &str) -> Option<(Resolved, Duration)> {
        Cache::get(self, key).map(|(v, age)| (Resolved::Single(v), age))
    }

    fn put(&mut self, key: String, value: &Resolved, _: &Policy) {
        if let Resolved::Single(v) = value {
            Cache::put(self, key, v);
        }
    }
}

/// The `local` store's key pair, from the configuration's `local` instance (or its defaults).
pub fn store_keys(
    config: &Config,
    bctx: &kz_providers::BuildContext,
) -> Result<(age::x25519::Identity, age::x25519::Recipient), Diagnostic> {
    let implicit;
    let inst = match config.providers.iter().find(|p| p.ty.name == "local") {
        Some(p) => p,
        None => {
            implicit = ProviderInstance::implicit(
                kz_config::catalog::find("local")
                    .ok_or_else(|| Diagnostic::error("internal", "no local type"))?,
            );
            &implicit
        }
    };
    let local = kz_providers::local::LocalProvider::new(inst, bctx)
        .map_err(|e| Diagnostic::warning("cache::key", e.message))?;
    local.key_pair().map_err(|e| {
        Diagnostic::warning(
            "cache::key",
            format!("the cache needs the local store's key: {}", e.message),
        )
    })
}

/// `1h 5m` style age.
pub fn human_age(d: Duration) -> String {
    let s = d.as_secs();
    match s {
        0..=59 => format!("{s}s"),
        60..=3599 => format!("{}m {}s", s / 60, s % 60),
        3600..=86_399 => format!("{}h {}m", s / 3600, (s % 3600) / 60),
        _ => format!("{}d {}h", s / 86_400, (s % 86_400) / 3600),
    }
}
