//! The credential proxy (`kz server start --proxy`): redeems short-lived tokens.
//!
//! A client sends its request through the proxy with the token the server issued for a
//! `short_lived` resolver (`Proxy-Authorization: Bearer …`, or `Authorization: Bearer …`): as an
//! absolute-form request (`GET https://api.example.com/v1/x`, what `HTTP_PROXY` clients send), or
//! in origin form with `Host`, which means `https://` + that host. The proxy then
//!
//! 1. verifies the token with the public key (`--public-key`, `KEYZERO_PUBLIC_KEY_PATH`):
//!    signature, `iss: keyzero`, `aud: keyzero-proxy`, `exp`;
//! 2. finds its resolver in the bundle in force (still `short_lived`, still serving its ref);
//!    a `single_use` resolver's token is redeemed once;
//! 3. checks the target against the token's binding (`hosts`, `methods`, `paths`, on the same
//!    parsed URL that is connected to);
//! 4. resolves the credential through the resolve session (cache, metrics), drops every header
//!    that carries a credential or collides with the credential's location, and places the
//!    credential at the resolver's `credential_location`;
//! 5. sends the request through `kz-egress` (special addresses refused after DNS, the
//!    connection pinned to the checked address, no redirect followed: a `3xx` is returned as
//!    is) and returns the response with every form of the credential scrubbed (the decoded
//!    view of `kz-redact`, in headers and body);
//! 6. writes one audit record per redemption or refusal (`transport: "proxy"`).
//!
//! **Invariant:** the kz token never goes upstream, and the credential never comes back.

use std::sync::Arc;
use std::time::Instant;

use axum::Router;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderName, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use http_body_util::{BodyExt as _, Limited};
use kz_audit::{Decision, Record, Transport};
use kz_bundle::{Mode, Resolver};
use kz_config::{Binding, Diagnostic, HostPattern, Methods, PathPattern};
use serde::Deserialize;

use crate::api::{AppState, Peer, RequestId};
use crate::state::Loaded;
pub use crate::upstream::{MAX_BODY, MAX_IN_FLIGHT, MIN_SCRUBBED, UPSTREAM_TIMEOUT};
use crate::upstream::{Outgoing, Refusal, WITHHELD, refuse};

/// The `aud` and `iss` of short-lived tokens.
pub const AUDIENCE: &str = "keyzero-proxy";
/// The `iss` of short-lived tokens.
pub const ISSUER: &str = "keyzero";
/// The replay scope of redeemed `single_use` tokens.
const REPLAY_SCOPE: &str = "keyzero-proxy";
/// Tokens remembered as verified (per loaded key; a full table is emptied).
const VERIFIED_CAPACITY: usize = 4096;

/// The public key that verifies short-lived tokens, and its algorithm; with the tokens it
/// has verified, so a token used for many requests is checked once (a signature check is
/// most of a redemption's CPU time). Keyed by the SHA-256 of the whole token: only the very
/// same bytes hit, and `exp` is checked again on every hit.
pub struct VerifyKey {
    key: jsonwebtoken::DecodingKey,
    alg: jsonwebtoken::Algorithm,
    verified: std::sync::Mutex<std::collections::HashMap<[u8; 32], Claims>>,
}

impl std::fmt::Debug for VerifyKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VerifyKey")
            .field("alg", &self.alg)
            .finish_non_exhaustive()
    }
}

impl VerifyKey {
    fn new(key: jsonwebtoken::DecodingKey, alg: jsonwebtoken::Algorithm) -> Self {
        Self {
            key,
            alg,
            verified: std::sync::Mutex::default(),
        }
    }
}

/// Reads the proxy's public key (Ed25519, EC P-256 or RSA, PEM).
pub fn verify_key(path: &std::path::Path) -> Result<VerifyKey, Diagnostic> {
    let bad = |why: &str| {
        Diagnostic::error(
            "server::public_key",
            format!(
                "cannot use {} as the proxy's public key: {why}",
                path.display()
            ),
        )
        .in_file(path)
        .help(
            "pass the public key of the server's --signing-key with --public-key or \
             KEYZERO_PUBLIC_KEY_PATH (`openssl pkey -in signing.pem -pubout -out public.pem`)",
        )
    };
    let pem = kz_bundle::read_limited(path, 64 * 1024)
        .map_err(|e| bad(&e.to_string()))?
        .ok_or_else(|| bad("it is larger than 64 KiB"))?;
    use jsonwebtoken::{Algorithm, DecodingKey};
    if let Ok(key) = DecodingKey::from_ed_pem(&pem) {
        return Ok(VerifyKey::new(key, Algorithm::EdDSA));
    }
    if let Ok(key) = DecodingKey::from_ec_pem(&pem) {
        return Ok(VerifyKey::new(key, Algorithm::ES256));
    }
    if let Ok(key) = DecodingKey::from_rsa_pem(&pem) {
        return Ok(VerifyKey::new(key, Algorithm::RS256));
    }
    Err(bad(
        "it is not an Ed25519, EC P-256 or RSA public key in PEM",
    ))
}

/// The claims the proxy reads.
#[derive(Clone, Deserialize)]
struct Claims {
    sub: String,
    #[serde(default)]
    caller_iss: String,
    resource: String,
    resolver: String,
    jti: String,
    exp: i64,
    #[serde(default)]
    hosts: Vec<String>,
    #[serde(default)]
    methods: Vec<String>,
    #[serde(default)]
    paths: Vec<String>,
}

/// The proxy's router: every request is a redemption.
pub fn router(state: Arc<AppState>) -> Router {
    Router::new()
        .fallback(redeem)
        .layer(axum::middleware::from_fn_with_state(
            Arc::clone(&state),
            crate::api::around,
        ))
        .with_state(state)
}

/// What the audit record of a redemption says.
#[derive(Default)]
struct Seen {
    sub: String,
    caller_iss: String,
    resource: String,
    resolver: String,
    backend: String,
    method: String,
    host: String,
    path: String,
}

async fn redeem(State(state): State<Arc<AppState>>, req: Request) -> Response {
    let started = Instant::now();
    let peer = req
        .extensions()
        .get::<Peer>()
        .map(|p| p.0.ip().to_string())
        .unwrap_or_default();
    let request_id = req
        .extensions()
        .get::<RequestId>()
        .map(|r| r.0.clone())
        .unwrap_or_default();
    let loaded = state.current.load_full();
    let mut seen = Seen {
        method: req.method().as_str().to_owned(),
        ..Seen::default()
    };
    let outcome = forward(&state, &loaded, req, &mut seen).await;
    let latency = u64::try_from(started.elapsed().as_micros()).unwrap_or(u64::MAX);
    let mut record = Record::new(Transport::Proxy)
        .request_id(request_id)
        .client_ip(peer)
        .mode("short_lived")
        .method(seen.method)
        .latency_us(latency);
    for (v, set) in [
        (
            seen.caller_iss,
            Record::issuer as fn(Record, String) -> Record,
        ),
        (seen.sub, Record::subject),
        (seen.resource, Record::reference),
        (seen.resolver, Record::resolver),
        (seen.backend, Record::backend),
        (seen.host, Record::host),
        (seen.path, Record::path),
    ] {
        if !v.is_empty() {
            record = set(record, v);
        }
    }
    let (record, response) = match outcome {
        Ok(resp) => (record.decision(Decision::Allow), resp),
        Err(r) => {
            let decision = if r.status == StatusCode::BAD_GATEWAY
                || r.status == StatusCode::GATEWAY_TIMEOUT
                || r.status == StatusCode::SERVICE_UNAVAILABLE
            {
                Decision::Error
            } else {
                Decision::Deny
            };
            let reason = r.detail.clone().unwrap_or_else(|| r.message.clone());
            let record = record.decision(decision).reason(reason);
            (record, r.into_response())
        }
    };
    // The record is accepted before the answer leaves; a log that cannot take it is a 503 (the
    // upstream call was made, but nothing of it is returned unaudited).
    if state.audit.try_append_all(vec![record]).is_err() {
        return refuse(
            StatusCode::SERVICE_UNAVAILABLE,
            "the audit log cannot take the record of this request; retry later",
        )
        .into_response();
    }
    response
}

/// The token carried by the request (`Proxy-Authorization` first, then `Authorization`), and
/// the header it came in.
fn token_of(headers: &HeaderMap) -> Option<(HeaderName, String)> {
    for name in [header::PROXY_AUTHORIZATION, header::AUTHORIZATION] {
        for v in headers.get_all(&name) {
            let Ok(s) = v.to_str() else { continue };
            let Some((scheme, token)) = s.trim().split_once(' ') else {
                continue;
            };
            if scheme.eq_ignore_ascii_case("bearer") && token.matches('.').count() == 2 {
                return Some((name, token.trim().to_owned()));
            }
        }
    }
    None
}

fn verify(key: &VerifyKey, token: &str) -> Result<Claims, Refusal> {
    use sha2::Digest as _;
    let id: [u8; 32] = sha2::Sha256::digest(token.as_bytes()).into();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX));
    let lock = || {
        key.verified
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    };
    if let Some(c) = lock().get(&id) {
        if now <= c.exp.saturating_add(VERIFY_LEEWAY) {
            return Ok(c.clone());
        }
        return Err(refuse(StatusCode::UNAUTHORIZED, "the token has expired"));
    }
    let claims = verify_signature(key, token)?;
    let mut table = lock();
    if table.len() >= VERIFIED_CAPACITY {
        table.clear();
    }
    table.insert(id, claims.clone());
    Ok(claims)
}

/// Seconds of clock difference allowed on `exp`.
const VERIFY_LEEWAY: i64 = 5;

fn verify_signature(key: &VerifyKey, token: &str) -> Result<Claims, Refusal> {
    let mut v = jsonwebtoken::Validation::new(key.alg);
    v.set_audience(&[AUDIENCE]);
    v.set_issuer(&[ISSUER]);
    v.leeway = VERIFY_LEEWAY.unsigned_abs();
    v.set_required_spec_claims(&["exp", "iat", "iss", "aud"]);
    jsonwebtoken::decode::<Claims>(token, &key.key, &v)
        .map(|d| d.claims)
        .map_err(|e| {
            use jsonwebtoken::errors::ErrorKind;
            let why = match e.kind() {
                ErrorKind::ExpiredSignature => "the token has expired",
                ErrorKind::InvalidSignature => "the token's signature does not verify",
                ErrorKind::InvalidAudience | ErrorKind::InvalidIssuer => {
                    "the token is not a keyzero short-lived token"
                }
                ErrorKind::InvalidAlgorithm => "the token is signed with another algorithm",
                _ => "the token is malformed",
            };
            refuse(StatusCode::UNAUTHORIZED, why)
        })
}

/// The target URL: an absolute-form request target, or `https://` + `Host` + the path.
fn target(req: &Request) -> Result<Uri, Refusal> {
    let uri = req.uri();
    if uri.scheme().is_some() {
        return Ok(uri.clone());
    }
    let host = req
        .headers()
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .ok_or_else(|| {
            refuse(
                StatusCode::BAD_REQUEST,
                "no target: send an absolute URL (as HTTP proxy clients do) or a Host header",
            )
        })?;
    let pq = uri.path_and_query().map_or("/", |p| p.as_str());
    format!("https://{host}{pq}")
        .parse()
        .map_err(|_| refuse(StatusCode::BAD_REQUEST, "the Host header is not a host"))
}

/// The token's binding, as claimed (signed by the server).
fn claimed_binding(c: &Claims) -> Result<(Vec<HostPattern>, Binding), Refusal> {
    let bad = |why: String| {
        refuse(
            StatusCode::UNAUTHORIZED,
            format!("the token's binding is invalid: {why}"),
        )
    };
    let hosts = c
        .hosts
        .iter()
        .map(|h| HostPattern::parse(h))
        .collect::<Result<Vec<_>, _>>()
        .map_err(bad)?;
    let methods = Methods::parse(c.methods.iter().map(String::as_str)).map_err(bad)?;
    let paths = c
        .paths
        .iter()
        .map(|p| PathPattern::parse(p))
        .collect::<Result<Vec<_>, _>>()
        .map_err(bad)?;
    Ok((hosts, Binding { methods, paths }))
}

async fn forward(
    state: &AppState,
    loaded: &Loaded,
    req: Request,
    seen: &mut Seen,
) -> Result<Response, Refusal> {
    let (key, egress) = match (&loaded.verify_key, &loaded.egress) {
        (Some(k), Some(e)) => (k, e),
        _ => {
            return Err(refuse(
                StatusCode::SERVICE_UNAVAILABLE,
                "this server is not a credential proxy",
            ));
        }
    };
    let (_, token) = token_of(req.headers()).ok_or_else(|| {
        refuse(
            StatusCode::UNAUTHORIZED,
            "no keyzero token: send the short-lived token as `Proxy-Authorization: Bearer <token>`",
        )
    })?;
    let claims = verify(key, &token)?;
    seen.sub.clone_from(&claims.sub);
    seen.caller_iss.clone_from(&claims.caller_iss);
    seen.resource.clone_from(&claims.resource);
    seen.resolver.clone_from(&claims.resolver);
    let resolver: &Resolver = loaded
        .bundle
        .resolver_for(&claims.resource)
        .filter(|r| r.name == claims.resolver && r.mode == Mode::ShortLived)
        .ok_or_else(|| {
            refuse(
                StatusCode::FORBIDDEN,
                "the bundle in force no longer serves this token's ref through its resolver",
            )
        })?;
    seen.backend.clone_from(&resolver.backend);

    // The target, parsed once: what is checked is what is connected to.
    let uri = target(&req)?;
    let dest = kz_egress::destination_from_absolute(&uri).map_err(|why| {
        refuse(
            StatusCode::BAD_REQUEST,
            format!("the target is refused: {why}"),
        )
    })?;
    let path = uri.path().to_owned();
    seen.host = kz_egress::host_port(&dest.host, dest.port);
    seen.path.clone_from(&path);
    // The call must be within the token's binding and within the resolver's binding in force
    // (a bundle narrowed after issuance narrows the tokens already out).
    let (hosts, binding) = claimed_binding(&claims)?;
    let in_hosts = |list: &[HostPattern]| {
        list.iter()
            .any(|p| (dest.https || p.cleartext) && p.matches(&dest.host, dest.port))
    };
    crate::upstream::never_sent(req.method())?;
    if !in_hosts(&hosts) {
        return Err(refuse(
            StatusCode::FORBIDDEN,
            format!(
                "the token may not be used with {}{} (its hosts: {})",
                if dest.https { "https://" } else { "http://" },
                seen.host,
                claims.hosts.join(", ")
            ),
        ));
    }
    if let Err(r) = binding.check(req.method().as_str(), &path) {
        let why = match r {
            kz_config::BindingRefusal::Method => format!(
                "the token may not be used for {} (its methods: {})",
                req.method(),
                binding.methods
            ),
            kz_config::BindingRefusal::Path => format!(
                "the token may not be used on {path} (its paths: {})",
                binding.paths_text()
            ),
            kz_config::BindingRefusal::AmbiguousPath(why) => {
                format!("the token's paths cannot decide this path: {why}")
            }
        };
        return Err(refuse(StatusCode::FORBIDDEN, why));
    }
    if resolver
        .binding
        .check(req.method().as_str(), &path)
        .is_err()
    {
        return Err(refuse(
            StatusCode::FORBIDDEN,
            format!(
                "resolver `{}` no longer allows {} {path} (its methods: {}; paths: {})",
                resolver.name,
                req.method(),
                resolver.binding.methods,
                resolver.binding.paths_text()
            ),
        ));
    }
    if !in_hosts(&resolver.hosts) && in_hosts(&hosts) {
        return Err(refuse(
            StatusCode::FORBIDDEN,
            format!("resolver `{}` no longer binds {}", resolver.name, seen.host),
        ));
    }
    // A body the credential check cannot read (compressed) is not forwarded.
    if req
        .headers()
        .get_all(header::CONTENT_ENCODING)
        .iter()
        .any(|v| !v.as_bytes().eq_ignore_ascii_case(b"identity"))
    {
        return Err(refuse(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "a request body with a Content-Encoding is not forwarded (send it uncompressed)",
        ));
    }
    // One slot of the bounded pool is taken before anything is read or spent.
    let _slot = crate::upstream::slot()?;
    // The body arrives before anything is spent on the request (the credential, a single use),
    // within the same time the API gives a body.
    let (parts, body) = req.into_parts();
    let body = tokio::time::timeout(state.body_timeout, Limited::new(body, MAX_BODY).collect())
        .await
        .map_err(|_| {
            refuse(
                StatusCode::REQUEST_TIMEOUT,
                format!(
                    "the request body did not arrive within {} s",
                    state.body_timeout.as_secs()
                ),
            )
        })?
        .map_err(|_| {
            refuse(
                StatusCode::PAYLOAD_TOO_LARGE,
                format!("the request body is over {MAX_BODY} bytes or broke off"),
            )
        })?
        .to_bytes();
    let caller = crate::upstream::CallerId {
        issuer: &claims.caller_iss,
        sub: &claims.sub,
    };
    crate::upstream::not_locked_out(state, caller)?;

    if resolver.single_use {
        let until = claims.exp.saturating_add(60);
        match &loaded.replay_store {
            Some(store) => match store.redeem(REPLAY_SCOPE, &claims.jti, until).await {
                Ok(()) => {}
                Err(crate::replay::Refused::Used) => {
                    return Err(refuse(
                        StatusCode::UNAUTHORIZED,
                        "the token was already used (single_use)",
                    ));
                }
                Err(crate::replay::Refused::Unavailable(why)) => {
                    return Err(refuse(StatusCode::SERVICE_UNAVAILABLE, why));
                }
            },
            None => state
                .replay
                .redeem(REPLAY_SCOPE, &claims.jti, until)
                .map_err(|why| refuse(StatusCode::UNAUTHORIZED, why))?,
        }
    }

    let credential =
        crate::pipeline::credential(loaded, &state.metrics, resolver, &claims.resource)
            .await
            .map_err(|why| {
                refuse(
                    StatusCode::BAD_GATEWAY,
                    format!("the credential is not available: {why}"),
                )
            })?;
    let outgoing = Outgoing {
        method: &parts.method,
        uri: &uri,
        headers: &parts.headers,
        body,
    };
    let client = egress.get(&resolver.name).ok_or_else(|| {
        refuse(
            StatusCode::FORBIDDEN,
            "the bundle in force has no upstream client for this token's resolver",
        )
    })?;
    crate::upstream::not_burned(state, resolver, &credential)?;
    let m = crate::upstream::matcher(&credential);
    let answer = crate::upstream::spend(state, client, resolver, &credential, &m, caller, outgoing)
        .await
        .inspect_err(|r| {
            if r.withhold {
                // The audit record must not carry what the guess carried.
                seen.path = WITHHELD.into();
                seen.host = WITHHELD.into();
                seen.method = WITHHELD.into();
            }
        })?;
    Ok(answer.into_response())
}
