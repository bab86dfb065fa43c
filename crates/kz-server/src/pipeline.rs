//! The decision and resolution of one request's refs, and their audit records.
//!
//! For each ref, in order: the resolver is matched, the policies decide (with the resolver's
//! name and mode, so rules can use them), and only then, for an allowed ref of a `direct`
//! resolver, the value is taken from the resolver's cache or asked of its backend. All backend
//! work of a request goes to the engine at once: refs of one backend are batched, backends run
//! concurrently, each within its instance's limit and timeout, and one backend's failure stays
//! with its refs. A denied caller learns nothing about which names exist: a ref without a
//! resolver is reported as such only when policy allowed it.

use std::time::{Duration, Instant};

use kz_audit::{Decision as AuditDecision, Record, Transport as AuditTransport};
use kz_bundle::{Mode, Resolver};
use kz_policy::{Identity, Transport};
use kz_resolve::Request as BackendRequest;
use kz_resolve::session::{self, CacheUse, Cached, Policy};
use kz_secret::Resolved;
use kz_wire::{RefResult, ResolveResponse, WireValue};
use serde_json::{Map, Value};

use crate::metrics::Metrics;
use crate::state::Loaded;

pub use kz_wire::NO_RESOLVER;

/// Who asks, as established by the front-end.
#[derive(Debug)]
pub struct Caller<'a> {
    /// The verified identity.
    pub identity: &'a Identity,
    /// `jti:ID` or `sha256:HEX` of the token (never the token).
    pub token_id: &'a str,
    /// The peer address, `""` when unknown.
    pub ip: &'a str,
    /// The request id.
    pub request_id: &'a str,
    /// How the request arrived.
    pub transport: Transport,
}

/// What was decided and served, and the records to append before answering.
#[derive(Debug)]
pub struct Answer {
    /// One result per ref.
    pub response: ResolveResponse,
    /// One record per ref.
    pub records: Vec<Record>,
}

/// One ref on its way through the pipeline.
struct Slot<'a> {
    reference: &'a str,
    resolver: Option<&'a Resolver>,
    result: RefResult,
    decision: AuditDecision,
    cache: Option<&'static str>,
}

/// Decides every ref (already validated) and, when `fetch`, resolves the allowed ones.
pub async fn answer(
    loaded: &Loaded,
    metrics: &Metrics,
    caller: &Caller<'_>,
    refs: &[&str],
    context: &Value,
    fetch: bool,
) -> Answer {
    let started = Instant::now();
    let bundle = &loaded.bundle;
    let now = chrono::Utc::now();
    let mut slots: Vec<Slot<'_>> = Vec::with_capacity(refs.len());
    for &reference in refs {
        let resolver = bundle.resolver_for(reference);
        let mode = resolver.map_or("", |r| r.mode.name());
        let decision = bundle.policies.decide(&kz_policy::Request {
            identity: caller.identity,
            reference,
            resolver: resolver.map_or("", |r| r.name.as_str()),
            mode,
            context,
            time: now,
            ip: caller.ip,
            transport: caller.transport,
        });
        let allowed = decision.allowed();
        let mut result = RefResult {
            allowed,
            policy: Some(decision.policy),
            reason: decision.reason,
            ..RefResult::default()
        };
        let mut audit = if allowed {
            AuditDecision::Allow
        } else {
            AuditDecision::Deny
        };
        if allowed {
            match resolver {
                None => {
                    result.allowed = false;
                    result.error = Some(NO_RESOLVER.into());
                    audit = AuditDecision::Error;
                }
                Some(r) => {
                    result.mode = Some(mode.to_owned());
                    if r.mode == Mode::ShortLived {
                        if fetch
                            && let Err(why) = short_lived(loaded, caller, reference, r, &mut result)
                        {
                            result.error = Some(why);
                            audit = AuditDecision::Error;
                        }
                    } else if let Some(why) = loaded.broken.get(&r.backend)
                        && fetch
                    {
                        result.error = Some(why.clone());
                        audit = AuditDecision::Error;
                    }
                }
            }
        }
        slots.push(Slot {
            reference,
            resolver,
            result,
            decision: audit,
            cache: None,
        });
    }

    if fetch {
        resolve(loaded, metrics, &mut slots).await;
    }

    let latency = u64::try_from(started.elapsed().as_micros()).unwrap_or(u64::MAX);
    let mut response = ResolveResponse::default();
    let mut records = Vec::with_capacity(slots.len());
    for slot in slots {
        let policy = slot.result.policy.as_deref().unwrap_or_default();
        metrics
            .decisions
            .with_label_values(&[slot.decision.as_str(), policy])
            .inc();
        records.push(record(loaded, caller, &slot, latency));
        response
            .results
            .insert(slot.reference.to_owned(), slot.result);
    }
    Answer { response, records }
}

/// Lifetime of a short-lived token whose resolver gives no `ttl`.
pub const DEFAULT_SHORT_LIVED_TTL: Duration = Duration::from_secs(300);

/// Issues a short-lived token for an allowed ref of a `short_lived` resolver: no backend is
/// contacted; the credential proxy resolves the credential when the token is redeemed. The
/// claims bind it to the caller, the ref, the resolver and the resolver's hosts, methods and
/// paths (server.md, "Short-lived tokens").
fn short_lived(
    loaded: &Loaded,
    caller: &Caller<'_>,
    reference: &str,
    r: &Resolver,
    result: &mut RefResult,
) -> Result<(), String> {
    let signer = loaded
        .signer
        .as_ref()
        .ok_or("no signing key is loaded for short_lived resolvers")?;
    let ttl = r.ttl.unwrap_or(DEFAULT_SHORT_LIVED_TTL).as_secs().max(1);
    let iat = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let mut jti = [0u8; 16];
    rand::RngCore::fill_bytes(&mut rand::rng(), &mut jti);
    let mut claims = serde_json::json!({
        "iss": "keyzero",
        "aud": "keyzero-proxy",
        "iat": iat,
        "exp": iat.saturating_add(ttl),
        "jti": kz_config::discover::hex(&jti),
        "sub": caller.identity.sub,
        "caller_iss": caller.identity.issuer,
        "resource": reference,
        "resolver": r.name,
        "hosts": r.hosts.iter().map(ToString::to_string).collect::<Vec<_>>(),
    });
    if let Value::Object(map) = &mut claims {
        if !r.binding.methods.is_any() {
            map.insert("methods".into(), r.binding.methods.as_slice().into());
        }
        if !r.binding.paths.is_empty() {
            let paths: Vec<String> = r.binding.paths.iter().map(ToString::to_string).collect();
            map.insert("paths".into(), paths.into());
        }
        if let Some(url) = &loaded.proxy_url {
            map.insert("proxy".into(), url.as_str().into());
        }
    }
    let token = signer
        .sign(&claims)
        .map_err(|e| format!("cannot sign the short-lived token: {}", e.message))?;
    result.token = Some(kz_secret::SecretValue::from_string(token));
    result.ttl = Some(ttl);
    result.proxy.clone_from(&loaded.proxy_url);
    Ok(())
}

/// Fills the values of allowed `direct` refs through one resolve session: values of resolvers
/// with `cache_ttl` come from the cache while fresh, the rest from one engine run, and fetched
/// values are cached for their resolver's `cache_ttl`.
async fn resolve(loaded: &Loaded, metrics: &Metrics, slots: &mut [Slot<'_>]) {
    let mut asks: Vec<BackendRequest> = Vec::new();
    let mut plans: Vec<Option<Cached>> = Vec::new();
    let mut asked: Vec<usize> = Vec::new();
    for (i, slot) in slots.iter_mut().enumerate() {
        let Some(r) = slot.resolver else { continue };
        if !slot.result.allowed || slot.result.error.is_some() || r.mode != Mode::Direct {
            continue;
        }
        let (request, plan) = match backend_request(loaded, r, slot.reference) {
            Ok(x) => x,
            Err(why) => {
                slot.result.error = Some(why);
                slot.decision = AuditDecision::Error;
                continue;
            }
        };
        plans.push(plan);
        asks.push(request);
        asked.push(i);
    }
    if asks.is_empty() {
        return;
    }
    let mut store = &loaded.cache;
    let served = session::resolve(&asks, &plans, Some(&mut store), &loaded.instances).await;
    for (i, served) in asked.into_iter().zip(served) {
        let Some(slot) = slots.get_mut(i) else {
            continue;
        };
        slot.cache = count(metrics, &served);
        let outcome = served.outcome;
        match outcome.result {
            Ok(value) => set_value(slot, value),
            Err(e) => {
                slot.result.error = Some(format!("{}: {}", e.kind.label(), e.message));
                slot.decision = AuditDecision::Error;
            }
        }
    }
}

/// The backend request for `reference` through resolver `r`, and its cache plan (`cache_ttl`).
fn backend_request(
    loaded: &Loaded,
    r: &Resolver,
    reference: &str,
) -> Result<(BackendRequest, Option<Cached>), String> {
    let backend = loaded
        .bundle
        .backend(&r.backend)
        .ok_or_else(|| format!("backend `{}` is not defined", r.backend))?;
    let asked_for = r.backend_request(reference);
    let request = BackendRequest {
        name: reference.to_owned(),
        instance: r.backend.clone(),
        type_name: backend.ty.name,
        reference: asked_for.reference,
        field: asked_for.field,
        params: asked_for.params,
        optional: false,
        allow_empty: false,
    };
    let plan = r.cache_ttl.map(|ttl| Cached {
        key: session::key(backend, &request),
        policy: Policy {
            max_age: Some(ttl),
            fallback: false,
        },
    });
    Ok((request, plan))
}

/// Counts a served request in the metrics; its cache label.
fn count(metrics: &Metrics, served: &session::Served) -> Option<&'static str> {
    let cache = match served.cache {
        CacheUse::Off => None,
        CacheUse::Hit(_) | CacheUse::Fallback(_) => Some("hit"),
        CacheUse::Miss => Some("miss"),
    };
    if let Some(c) = cache {
        metrics.cache.with_label_values(&[c]).inc();
    }
    if cache != Some("hit") {
        let outcome = &served.outcome;
        let backend = outcome.provider.as_str();
        metrics
            .backend_seconds
            .with_label_values(&[backend])
            .observe(outcome.latency.as_secs_f64());
        let label = match &outcome.result {
            Ok(_) => "ok",
            Err(e) => e.kind.label(),
        };
        metrics
            .backend_calls
            .with_label_values(&[backend, label])
            .inc();
    }
    cache
}

/// The credential behind `reference` through resolver `r` (the credential proxy's redemption):
/// the same session, cache and metrics as `/v1/resolve`. One value only: a multi-variable
/// secret has no single place in a request.
pub async fn credential(
    loaded: &Loaded,
    metrics: &Metrics,
    r: &Resolver,
    reference: &str,
) -> Result<kz_secret::SecretValue, String> {
    if let Some(why) = loaded.broken.get(&r.backend) {
        return Err(why.clone());
    }
    let (request, plan) = backend_request(loaded, r, reference)?;
    let mut store = &loaded.cache;
    let served = session::resolve(
        std::slice::from_ref(&request),
        std::slice::from_ref(&plan),
        Some(&mut store),
        &loaded.instances,
    )
    .await;
    let served = served
        .into_iter()
        .next()
        .ok_or("the backend gave no answer")?;
    count(metrics, &served);
    match served.outcome.result {
        Ok(Resolved::Single(v)) => Ok(v),
        Ok(Resolved::Multi(_)) => Err(
            "the secret has several values; a credential location takes one (pick a `field`)"
                .into(),
        ),
        Err(e) => Err(format!("{}: {}", e.kind.label(), e.message)),
    }
}

fn set_value(slot: &mut Slot<'_>, v: Resolved) {
    match wire(v) {
        Ok(v) => slot.result.value = Some(v),
        Err(e) => {
            slot.result.error = Some(e);
            slot.decision = AuditDecision::Error;
        }
    }
}

/// The wire form of a value; JSON carries text only, so a value that is not UTF-8 is an error
/// of its ref (the others are served).
fn wire(v: Resolved) -> Result<WireValue, String> {
    let utf8 = match &v {
        Resolved::Single(v) => v.expose_str().is_some(),
        Resolved::Multi(m) => m.iter().all(|(_, v)| v.expose_str().is_some()),
    };
    if !utf8 {
        return Err(
            "the value is not UTF-8 text, which JSON cannot carry; store it base64-encoded".into(),
        );
    }
    Ok(match v {
        Resolved::Single(v) => WireValue::Single(v),
        Resolved::Multi(m) => WireValue::Multi(m),
    })
}

/// The identity fields recorded with each decision (not the claims: those only as configured).
fn identity_fields(id: &Identity) -> Map<String, Value> {
    let mut m = Map::new();
    for (k, v) in [
        ("issuer", &id.issuer),
        ("sub", &id.sub),
        ("org", &id.org),
        ("service", &id.service),
        ("env", &id.env),
        ("action", &id.action),
        ("branch", &id.branch),
        ("actor", &id.actor),
    ] {
        if !v.is_empty() {
            m.insert(k.to_owned(), Value::String(v.clone()));
        }
    }
    if !id.groups.is_empty() {
        m.insert(
            "groups".into(),
            Value::Array(id.groups.iter().cloned().map(Value::String).collect()),
        );
    }
    m
}

fn record(loaded: &Loaded, caller: &Caller<'_>, slot: &Slot<'_>, latency_us: u64) -> Record {
    let transport = match caller.transport {
        Transport::Http => AuditTransport::Http,
        Transport::Mcp => AuditTransport::Mcp,
        Transport::Proxy => AuditTransport::Proxy,
    };
    let id = caller.identity;
    let mut r = Record::new(transport)
        .request_id(caller.request_id)
        .issuer(id.issuer.as_str())
        .subject(id.sub.as_str())
        .identity(identity_fields(id))
        .token_id(caller.token_id)
        .reference(slot.reference)
        .decision(slot.decision)
        .latency_us(latency_us);
    if !caller.ip.is_empty() {
        r = r.client_ip(caller.ip);
    }
    let wanted = &loaded.bundle.audit.claims;
    if !wanted.is_empty() {
        let mut claims = Map::new();
        for name in wanted {
            if let Some(v) = kz_identity::claim_path(&id.claims, name) {
                claims.insert(name.clone(), v.clone());
            }
        }
        r = r.claims(claims);
    }
    if let Some(res) = slot.resolver {
        r = r
            .resolver(res.name.as_str())
            .backend(res.backend.as_str())
            .mode(res.mode.name());
    }
    if let Some(p) = &slot.result.policy {
        r = r.policy(p.as_str());
    }
    if let Some(reason) = slot.result.reason.as_ref().or(slot.result.error.as_ref()) {
        r = r.reason(reason.as_str());
    }
    if let Some(c) = slot.cache {
        r = r.cache(c);
    }
    r
}
