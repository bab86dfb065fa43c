//! The verifier: issuers, their key sets (static or fetched, cached, refreshed single-flight),
//! and the verified-token cache.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use kz_policy::Identity;
use sha2::{Digest, Sha256};

use crate::cache::{Replay, ReplayCache, TOKEN_CACHE_BYTES, TOKEN_CACHE_CAPACITY, TokenCache};
use crate::claims::{self, Rules};
use crate::error::{ConfigError, ErrorCode, IdentityError, show};
use crate::fetch::{self, MIN_KEYS_TTL, Remote};
use crate::keys::{self, Alg, Key, KeyType};
use crate::profile::{MAP_FIELDS, Profile, normalise};
use crate::token::{self, MAX_TOKEN_BYTES};
use crate::{FETCH_TIMEOUT, IssuerConfig, KeyMaterial, KeySource, MAX_LEEWAY};

/// A token naming an unknown `kid` (or failing every key) makes kz refetch an issuer's keys at
/// most once per this interval.
pub const REFETCH_INTERVAL: Duration = Duration::from_secs(MIN_KEYS_TTL as u64);

/// A key set and when it is due for a refresh.
#[derive(Debug)]
struct KeySet {
    keys: Vec<Key>,
    /// Whether a fetch ever succeeded (static sets: always).
    loaded: bool,
    /// Bumped whenever the keys change; cached tokens of an older generation are dropped.
    generation: u64,
    /// Unix seconds after which the set is refreshed (`i64::MAX` for static sets).
    refresh_due: i64,
}

impl KeySet {
    fn same_keys(&self, other: &[Key]) -> bool {
        self.keys.len() == other.len()
            && self.keys.iter().zip(other).all(|(a, b)| {
                a.kid == b.kid
                    && a.key_type == b.key_type
                    && a.alg == b.alg
                    && a.fingerprint == b.fingerprint
            })
    }
}

#[derive(Debug, Default)]
struct Gate {
    last_attempt: Option<i64>,
    last_error: Option<String>,
}

#[derive(Debug)]
struct Issuer {
    name: String,
    profile: Profile,
    issuer_url: String,
    audience: Option<String>,
    map: BTreeMap<String, String>,
    leeway: i64,
    max_lifetime: Option<i64>,
    single_use: bool,
    has_hmac: bool,
    remote: Option<Remote>,
    keys: RwLock<Arc<KeySet>>,
    /// The current set's generation, readable without the lock (cache hits).
    generation: AtomicU64,
    /// The current set's `refresh_due`, readable without the lock (cache hits).
    refresh_due: AtomicI64,
    gate: tokio::sync::Mutex<Gate>,
    replay: Arc<Mutex<ReplayCache>>,
}

impl Issuer {
    fn current(&self) -> Arc<KeySet> {
        Arc::clone(&self.keys.read().unwrap_or_else(PoisonError::into_inner))
    }

    fn store(&self, set: KeySet) -> Arc<KeySet> {
        let set = Arc::new(set);
        self.generation.store(set.generation, Ordering::Release);
        self.refresh_due.store(set.refresh_due, Ordering::Release);
        *self.keys.write().unwrap_or_else(PoisonError::into_inner) = Arc::clone(&set);
        set
    }

    fn rules(&self) -> Rules<'_> {
        Rules {
            name: &self.name,
            audience: self.audience.as_deref(),
            leeway: self.leeway,
            max_lifetime: self.max_lifetime,
            kubernetes: self.profile == Profile::Kubernetes,
        }
    }
}

/// Verifies tokens of the configured issuers. Cheap to share (`Arc`); every method takes
/// `&self`.
#[derive(Debug)]
pub struct Verifier {
    issuers: Vec<Issuer>,
    by_url: HashMap<String, usize>,
    client: reqwest::Client,
    cache: Mutex<TokenCache>,
    refreshes: Refreshes,
}

/// Counts of key-set fetches (for the server's metrics).
#[derive(Debug, Default)]
struct Refreshes {
    ok: AtomicU64,
    failed: AtomicU64,
}

fn unix(now: SystemTime) -> i64 {
    now.duration_since(UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

fn secs(d: Duration) -> i64 {
    i64::try_from(d.as_secs()).unwrap_or(i64::MAX)
}

/// Which keys of a set may verify a token.
enum Candidates<'a> {
    Keys(Vec<&'a Key>),
    /// The token's `kid` names no key of the set.
    UnknownKid,
    /// No key of the set fits the token's `alg` (with its `kid`, if any).
    NoFit,
}

fn candidates<'a>(set: &'a KeySet, alg: Alg, kid: Option<&str>) -> Candidates<'a> {
    let fitting = || set.keys.iter().filter(move |k| k.fits(alg));
    match kid {
        None => {
            let v: Vec<&Key> = fitting().collect();
            if v.is_empty() {
                Candidates::NoFit
            } else {
                Candidates::Keys(v)
            }
        }
        Some(kid) => {
            let exact: Vec<&Key> = fitting()
                .filter(|k| k.kid.as_deref() == Some(kid))
                .collect();
            if !exact.is_empty() {
                return Candidates::Keys(exact);
            }
            if set.keys.iter().any(|k| k.kid.as_deref() == Some(kid)) {
                return Candidates::NoFit;
            }
            let kidless: Vec<&Key> = fitting().filter(|k| k.kid.is_none()).collect();
            if kidless.is_empty() {
                Candidates::UnknownKid
            } else {
                Candidates::Keys(kidless)
            }
        }
    }
}

/// The outcome of trying a key set on a token.
enum Attempt {
    Verified,
    UnknownKid,
    NoFit,
    BadSignature,
}

fn attempt(set: &KeySet, parsed: &token::Parsed<'_>) -> Attempt {
    match candidates(set, parsed.alg, parsed.kid.as_deref()) {
        Candidates::UnknownKid => Attempt::UnknownKid,
        Candidates::NoFit => Attempt::NoFit,
        Candidates::Keys(keys) => {
            if keys
                .iter()
                .any(|k| k.verify(parsed.alg, parsed.signing_input, &parsed.signature))
            {
                Attempt::Verified
            } else {
                Attempt::BadSignature
            }
        }
    }
}

/// The `jti` records of `single_use` issuers, kept apart from any one [`Verifier`] so that a
/// verifier built again (a server reloading its bundle) keeps every token already used: pass
/// the same records to [`Verifier::build_sharing`]. Keyed by issuer URL; cloning shares them.
#[derive(Clone, Debug, Default)]
pub struct ReplayRecords {
    by_issuer: Arc<Mutex<HashMap<String, Arc<Mutex<ReplayCache>>>>>,
}

impl ReplayRecords {
    /// Records a one-time use of `jti` in `scope` (e.g. the credential proxy's short-lived
    /// tokens) until `until` (Unix seconds). `Err` says why it may not be used: seen before, or
    /// too many unexpired records to remember another (refused rather than forgotten).
    pub fn redeem(&self, scope: &str, jti: &str, until: i64) -> Result<(), &'static str> {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX));
        let cache = self.for_issuer(scope);
        let mut cache = cache.lock().unwrap_or_else(PoisonError::into_inner);
        match cache.check_and_insert(jti, until, now) {
            Replay::Fresh => Ok(()),
            Replay::Replayed => Err("the token was already used (single_use)"),
            Replay::Full => Err("too many single-use tokens are in use; retry later"),
        }
    }

    fn for_issuer(&self, issuer_url: &str) -> Arc<Mutex<ReplayCache>> {
        let mut map = self
            .by_issuer
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        Arc::clone(map.entry(issuer_url.to_owned()).or_default())
    }
}

impl Verifier {
    /// Like [`Verifier::build`], with the `single_use` records kept in `records` (shared with
    /// verifiers built before and after this one).
    pub fn build_sharing(
        configs: Vec<IssuerConfig>,
        records: &ReplayRecords,
    ) -> Result<Verifier, Vec<ConfigError>> {
        let mut v = Self::build(configs)?;
        for issuer in &mut v.issuers {
            issuer.replay = records.for_issuer(&issuer.issuer_url);
        }
        Ok(v)
    }

    /// Checks the issuers and builds the verifier (no network: remote keys are fetched on first
    /// use). The first problem found; [`Verifier::build`] returns all of them.
    pub fn new(issuers: Vec<IssuerConfig>) -> Result<Verifier, ConfigError> {
        Self::build(issuers).map_err(|mut errs| errs.swap_remove(0))
    }

    /// Like [`Verifier::new`], with every problem (never an empty list).
    pub fn build(configs: Vec<IssuerConfig>) -> Result<Verifier, Vec<ConfigError>> {
        Self::build_with_timeout(configs, FETCH_TIMEOUT)
    }

    /// Like [`Verifier::build`] with another HTTP time limit (tests of slow servers).
    pub fn build_with_timeout(
        configs: Vec<IssuerConfig>,
        timeout: Duration,
    ) -> Result<Verifier, Vec<ConfigError>> {
        let mut errors = Vec::new();
        let mut issuers = Vec::new();
        let mut by_url = HashMap::new();
        let mut names = HashSet::new();
        for cfg in configs {
            let name = cfg.name.clone();
            if !names.insert(name.clone()) {
                errors.push(ConfigError::new(
                    "identity::duplicate_issuer",
                    &name,
                    "name",
                    "two issuers have this name",
                    "give every issuer a unique `name`",
                ));
                continue;
            }
            match build_issuer(cfg) {
                Ok(issuer) => {
                    if by_url
                        .insert(issuer.issuer_url.clone(), issuers.len())
                        .is_some()
                    {
                        errors.push(ConfigError::new(
                            "identity::duplicate_issuer_url",
                            &issuer.name,
                            "issuer_url",
                            format!("another issuer has issuer_url `{}`", issuer.issuer_url),
                            "a token's `iss` selects one issuer: merge the two, or use one audience per issuer in one entry",
                        ));
                    }
                    issuers.push(issuer);
                }
                Err(mut e) => errors.append(&mut e),
            }
        }
        let client = match fetch::client(timeout) {
            Ok(c) => Some(c),
            Err(msg) => {
                errors.push(ConfigError::new(
                    "identity::http_client",
                    "",
                    "",
                    msg,
                    "this is a problem of the TLS setup of the machine",
                ));
                None
            }
        };
        match (errors.is_empty(), client) {
            (true, Some(client)) => Ok(Verifier {
                issuers,
                by_url,
                client,
                cache: Mutex::new(TokenCache::new(TOKEN_CACHE_CAPACITY, TOKEN_CACHE_BYTES)),
                refreshes: Refreshes::default(),
            }),
            _ => Err(errors),
        }
    }

    /// Names of the configured issuers, in order.
    pub fn issuer_names(&self) -> Vec<&str> {
        self.issuers.iter().map(|i| i.name.as_str()).collect()
    }

    /// Verifies `token` at `now` and returns the identity it proves.
    pub async fn verify(&self, token: &str, now: SystemTime) -> Result<Identity, IdentityError> {
        self.verify_shared(token, now).await.map(|id| (*id).clone())
    }

    /// Like [`Verifier::verify`], sharing the cached identity instead of copying it.
    pub async fn verify_shared(
        &self,
        token: &str,
        now: SystemTime,
    ) -> Result<Arc<Identity>, IdentityError> {
        if token.len() > MAX_TOKEN_BYTES {
            // Before hashing or parsing anything.
            return Err(IdentityError::new(
                ErrorCode::TooLarge,
                format!(
                    "token is {} bytes, over the limit of {MAX_TOKEN_BYTES}",
                    token.len()
                ),
            ));
        }
        let now_s = unix(now);
        let digest: [u8; 32] = Sha256::digest(token.as_bytes()).into();
        if let Some(id) = self.cached(&digest, now_s) {
            return Ok(id);
        }
        let parsed = token::parse(token)?;
        let iss = match parsed.claims.get("iss") {
            Some(serde_json::Value::String(s)) => s.as_str(),
            Some(_) => {
                return Err(IdentityError::new(
                    ErrorCode::BadClaimType,
                    "claim `iss` must be a string",
                ));
            }
            None => {
                return Err(IdentityError::new(
                    ErrorCode::UnknownIssuer,
                    "token has no `iss` claim, so no issuer can verify it",
                ));
            }
        };
        let Some((index, issuer)) = self
            .by_url
            .get(iss)
            .and_then(|&i| self.issuers.get(i).map(|is| (i, is)))
        else {
            return Err(IdentityError::new(
                ErrorCode::UnknownIssuer,
                // The configured issuers are not listed: the caller may be anyone.
                format!(
                    "token issuer `{}` is not one of the {} configured issuer URLs",
                    show(iss),
                    self.issuers.len()
                ),
            ));
        };
        let generation = self.check_signature(issuer, &parsed, now_s).await?;
        let exp = claims::check(&parsed.claims, &issuer.rules(), now_s)?;
        // Normalised before the jti is recorded: a token refused here does not use it up.
        let mut id = normalise(issuer.profile, &issuer.map, &parsed.claims)?;
        id.issuer = issuer.name.clone();
        if issuer.single_use {
            let jti = claims::string_claim(&parsed.claims, "jti")?.ok_or_else(|| {
                IdentityError::new(
                    ErrorCode::MissingJti,
                    format!(
                        "issuer `{}` is single_use and the token has no `jti` claim",
                        issuer.name
                    ),
                )
            })?;
            let until = exp.saturating_add(issuer.leeway);
            let verdict = issuer
                .replay
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .check_and_insert(jti, until, now_s);
            match verdict {
                Replay::Fresh => {}
                Replay::Replayed => {
                    return Err(IdentityError::new(
                        ErrorCode::Replayed,
                        format!(
                            "token `jti` `{}` of single_use issuer `{}` was already used",
                            show(jti),
                            issuer.name
                        ),
                    ));
                }
                Replay::Full => {
                    return Err(IdentityError::new(
                        ErrorCode::ReplayCacheFull,
                        format!(
                            "the replay cache of single_use issuer `{}` is full of unexpired tokens",
                            issuer.name
                        ),
                    ));
                }
            }
        }
        let id = Arc::new(id);
        if !issuer.single_use {
            self.cache
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .insert(
                    digest,
                    token.len(),
                    Arc::clone(&id),
                    exp,
                    index,
                    generation,
                    now_s,
                );
        }
        Ok(id)
    }

    fn cached(&self, digest: &[u8; 32], now: i64) -> Option<Arc<Identity>> {
        let issuers = &self.issuers;
        self.cache
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(digest, now, |i| {
                let is = issuers.get(i)?;
                // A set due for a refresh is refreshed by a real verification first.
                (now < is.refresh_due.load(Ordering::Acquire))
                    .then(|| is.generation.load(Ordering::Acquire))
            })
    }

    /// Verifies the signature with the issuer's keys; the key set generation that did.
    async fn check_signature(
        &self,
        issuer: &Issuer,
        parsed: &token::Parsed<'_>,
        now: i64,
    ) -> Result<u64, IdentityError> {
        if parsed.alg.key_type() == KeyType::Hmac && !issuer.has_hmac {
            return Err(IdentityError::new(
                ErrorCode::UnsupportedAlg,
                format!(
                    "token says `{}`, but issuer `{}` has no static shared secret; HMAC tokens are accepted only with one",
                    parsed.alg.as_str(),
                    issuer.name
                ),
            ));
        }
        let mut set = issuer.current();
        if issuer.remote.is_some() && (!set.loaded || now >= set.refresh_due) {
            set = self.refresh(issuer, &set, now).await;
        }
        if !set.loaded {
            let gate = issuer.gate.lock().await;
            return Err(IdentityError::new(
                ErrorCode::KeysUnavailable,
                format!(
                    "the keys of issuer `{}` are not available: {}",
                    issuer.name,
                    gate.last_error.as_deref().unwrap_or("not fetched yet")
                ),
            ));
        }
        let mut outcome = attempt(&set, parsed);
        if !matches!(outcome, Attempt::Verified) && issuer.remote.is_some() {
            // An unknown kid or a failing key may mean the issuer rotated its keys.
            let newer = self.refresh(issuer, &set, now).await;
            if newer.generation != set.generation {
                set = newer;
                outcome = attempt(&set, parsed);
            }
        }
        let kid = parsed
            .kid
            .as_deref()
            .map(|k| format!("`{}`", show(k)))
            .unwrap_or_else(|| "(none)".into());
        match outcome {
            Attempt::Verified => Ok(set.generation),
            Attempt::UnknownKid => Err(IdentityError::new(
                ErrorCode::UnknownKid,
                format!(
                    "token key id {kid} names no key of issuer `{}` (its key ids: {})",
                    issuer.name,
                    key_ids(&set)
                ),
            )),
            Attempt::NoFit => Err(IdentityError::new(
                ErrorCode::NoKey,
                format!(
                    "issuer `{}` has no {} key for a token with `alg` `{}` and key id {kid}",
                    issuer.name,
                    parsed.alg.key_type().describe(),
                    parsed.alg.as_str()
                ),
            )),
            Attempt::BadSignature => Err(IdentityError::new(
                ErrorCode::BadSignature,
                format!(
                    "token signature ({}, key id {kid}) does not verify with the keys of issuer `{}`",
                    parsed.alg.as_str(),
                    issuer.name
                ),
            )),
        }
    }

    /// Refreshes the issuer's keys unless another task did since `seen` was read, or the last
    /// attempt was under [`REFETCH_INTERVAL`] ago. Single-flight: one fetch at a time per
    /// issuer; tasks waiting for it use its result. A failed refresh keeps the old keys.
    async fn refresh(&self, issuer: &Issuer, seen: &Arc<KeySet>, now: i64) -> Arc<KeySet> {
        let Some(remote) = &issuer.remote else {
            return issuer.current();
        };
        let mut gate = issuer.gate.lock().await;
        let cur = issuer.current();
        if !Arc::ptr_eq(&cur, seen) {
            return cur;
        }
        if let Some(last) = gate.last_attempt {
            // A clock that went back does not block refreshes.
            if now >= last && now < last.saturating_add(MIN_KEYS_TTL) {
                return cur;
            }
        }
        gate.last_attempt = Some(now);
        let fetched = fetch::fetch_keys(&self.client, remote).await;
        let counter = if fetched.is_ok() {
            &self.refreshes.ok
        } else {
            &self.refreshes.failed
        };
        counter.fetch_add(1, Ordering::Relaxed);
        match fetched {
            Ok((keys, ttl)) => {
                gate.last_error = None;
                let generation = if cur.loaded && cur.same_keys(&keys) {
                    cur.generation
                } else {
                    cur.generation + 1
                };
                issuer.store(KeySet {
                    keys,
                    loaded: true,
                    generation,
                    refresh_due: now.saturating_add(ttl),
                })
            }
            Err(msg) => {
                gate.last_error = Some(msg);
                // Stale keys keep serving; the next attempt is due after the interval.
                issuer.store(KeySet {
                    keys: cur.keys.clone(),
                    loaded: cur.loaded,
                    generation: cur.generation,
                    refresh_due: now.saturating_add(MIN_KEYS_TTL),
                })
            }
        }
    }

    /// Key-set fetches so far: `(succeeded, failed)` (metrics).
    pub fn jwks_refreshes(&self) -> (u64, u64) {
        (
            self.refreshes.ok.load(Ordering::Relaxed),
            self.refreshes.failed.load(Ordering::Relaxed),
        )
    }

    /// Number of verified tokens cached (tests, metrics).
    pub fn cached_tokens(&self) -> usize {
        self.cache
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .len()
    }
}

fn key_ids(set: &KeySet) -> String {
    let ids: Vec<String> = set
        .keys
        .iter()
        .take(10)
        .map(|k| {
            k.kid
                .as_deref()
                .map(|s| format!("`{}`", show(s)))
                .unwrap_or_else(|| "(none)".into())
        })
        .collect();
    if ids.is_empty() {
        "none".into()
    } else {
        ids.join(", ")
    }
}

fn build_issuer(cfg: IssuerConfig) -> Result<Issuer, Vec<ConfigError>> {
    let name = cfg.name.as_str();
    let mut errors = Vec::new();
    let err = |code: &'static str, field: &str, msg: String, help: &str| {
        ConfigError::new(code, name, field, msg, help)
    };
    if name.is_empty() {
        errors.push(err(
            "identity::empty_name",
            "name",
            "an issuer has an empty name".into(),
            "give the issuer a `name` that policies can compare `issuer` with",
        ));
    }
    let origin = match fetch::check_url(&cfg.issuer_url) {
        Ok(u) => Some(u),
        Err(e) => {
            errors.push(err(
                "identity::bad_issuer_url",
                "issuer_url",
                format!("issuer_url {e}"),
                "issuer_url is the exact `iss` of the tokens, an https URL (http only on loopback)",
            ));
            None
        }
    };
    if cfg.audience.as_deref().is_some_and(str::is_empty) {
        errors.push(err(
            "identity::empty_audience",
            "audience",
            "audience is empty".into(),
            "set `audience` to the value the workload requests tokens for (e.g. `keyzero`)",
        ));
    }
    if cfg.audience.is_none() && !cfg.allow_any_audience {
        errors.push(err(
            "identity::missing_audience",
            "audience",
            "no audience is set".into(),
            "set `audience` (tokens minted for another service must not work here), or `allow_any_audience: true` if every token of this issuer is meant for keyzero",
        ));
    }
    if cfg.leeway > MAX_LEEWAY {
        errors.push(err(
            "identity::bad_leeway",
            "leeway",
            format!(
                "leeway of {} s is over the limit of 3600 s",
                cfg.leeway.as_secs()
            ),
            "clock skew is seconds, not hours: keep the default 60 s",
        ));
    }
    if cfg.max_token_lifetime.is_some_and(|d| d.as_secs() == 0) {
        errors.push(err(
            "identity::bad_lifetime",
            "max_token_lifetime",
            "max_token_lifetime is 0".into(),
            "set it to the longest lifetime (exp - iat) a token may have, e.g. `1h`",
        ));
    }
    for (field, path) in &cfg.map {
        if !MAP_FIELDS.contains(&field.as_str()) {
            errors.push(err(
                "identity::bad_map",
                &format!("map.{field}"),
                format!("`{field}` is not an identity field"),
                &format!("map one of: {}", MAP_FIELDS.join(", ")),
            ));
        } else if path.is_empty() || path.len() > 256 {
            errors.push(err(
                "identity::bad_map",
                &format!("map.{field}"),
                "the claim path is empty or over 256 bytes".into(),
                "write a dotted claim path such as `claims.teams` or `repository`",
            ));
        }
    }
    let mut static_keys = Vec::new();
    let mut has_hmac = false;
    let remote = match cfg.keys {
        KeySource::Static(list) => {
            if list.is_empty() {
                errors.push(err(
                    "identity::no_keys",
                    "static_keys",
                    "static_keys is empty".into(),
                    "list at least one key, or drop `static_keys` to use discovery",
                ));
            }
            for (i, k) in list.into_iter().enumerate() {
                let field = format!("static_keys[{i}]");
                let alg = match k.alg.as_deref().map(Alg::parse).transpose() {
                    Ok(a) => a,
                    Err(_) => {
                        errors.push(err(
                            "identity::bad_key",
                            &field,
                            format!(
                                "`alg` `{}` is not supported",
                                show(k.alg.as_deref().unwrap_or(""))
                            ),
                            "use RS256/384/512, PS256/384/512, ES256/384, EdDSA, or HS256/384/512 with a `secret`",
                        ));
                        continue;
                    }
                };
                let built = match (&k.pem_or_secret, alg) {
                    // A PEM given for an HMAC algorithm is the classic confusion: refuse.
                    (KeyMaterial::Pem(_), Some(a)) if a.key_type() == KeyType::Hmac => {
                        Err(format!(
                            "`alg: {}` needs a shared `secret`, not a PEM key",
                            a.as_str()
                        ))
                    }
                    (KeyMaterial::Pem(pem), alg) => {
                        keys::from_pem(pem, k.kid.clone(), alg).map_err(|e| format!("the key {e}"))
                    }
                    (KeyMaterial::Secret(s), Some(a)) => {
                        keys::from_secret(s.expose_bytes(), k.kid.clone(), a)
                            .map_err(|e| format!("the shared secret {e}"))
                    }
                    (KeyMaterial::Secret(_), None) => Err(
                        "a shared secret needs an explicit `alg` (HS256, HS384 or HS512)".into(),
                    ),
                };
                match built {
                    Ok(key) => {
                        has_hmac |= key.key_type == KeyType::Hmac;
                        static_keys.push(key);
                    }
                    Err(msg) => errors.push(err(
                        "identity::bad_key",
                        &field,
                        msg,
                        "a static key is a PEM public key (`-----BEGIN PUBLIC KEY-----`), or for HS256/384/512 a shared `secret` of at least 32/48/64 bytes",
                    )),
                }
            }
            None
        }
        KeySource::JwksUrl(url) => match fetch::check_url(&url) {
            Ok(u) => Some(Remote::Jwks(u)),
            Err(e) => {
                errors.push(err(
                    "identity::bad_jwks_url",
                    "jwks_url",
                    format!("jwks_url {e}"),
                    "jwks_url is an https URL (http only on loopback)",
                ));
                None
            }
        },
        KeySource::Discovery => origin.as_ref().and_then(|o| {
            let base = cfg.issuer_url.trim_end_matches('/');
            let raw = format!("{base}/.well-known/openid-configuration");
            match reqwest::Url::parse(&raw) {
                Ok(config_url) => Some(Remote::Discovery {
                    issuer_url: cfg.issuer_url.clone(),
                    config_url,
                    origin: o.clone(),
                    allow_other_host: cfg.allow_private_jwks,
                }),
                Err(e) => {
                    errors.push(err(
                        "identity::bad_issuer_url",
                        "issuer_url",
                        format!("cannot build the discovery URL ({e})"),
                        "issuer_url is the exact `iss` of the tokens",
                    ));
                    None
                }
            }
        }),
    };
    if !errors.is_empty() {
        return Err(errors);
    }
    let is_remote = remote.is_some();
    let set = KeySet {
        keys: static_keys,
        loaded: !is_remote,
        generation: 0,
        refresh_due: if is_remote { i64::MIN } else { i64::MAX },
    };
    Ok(Issuer {
        profile: cfg.profile,
        audience: cfg.audience,
        map: cfg.map,
        leeway: secs(cfg.leeway),
        max_lifetime: cfg.max_token_lifetime.map(secs),
        single_use: cfg.single_use,
        has_hmac,
        remote,
        generation: AtomicU64::new(set.generation),
        refresh_due: AtomicI64::new(set.refresh_due),
        keys: RwLock::new(Arc::new(set)),
        gate: tokio::sync::Mutex::new(Gate::default()),
        replay: Arc::new(Mutex::new(ReplayCache::default())),
        issuer_url: cfg.issuer_url,
        name: cfg.name,
    })
}

/// Checks one issuer's configuration (keys parse and fit their algorithm, URLs, `map`, leeway)
/// without building a verifier: every problem, no network, no HTTP client. The bundle loader
/// runs it for every issuer so `kz server check` reports key problems with the rest.
pub fn check_issuer(cfg: IssuerConfig) -> Vec<ConfigError> {
    build_issuer(cfg).err().unwrap_or_default()
}
