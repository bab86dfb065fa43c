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
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use http_body_util::{BodyExt as _, Full, Limited};
use kz_audit::{Decision, Record, Transport};
use kz_bundle::{CredentialLocation, Mode, Resolver};
use kz_config::{Binding, Diagnostic, HostPattern, Methods, PathPattern};
use kz_egress::connect::{CheckedClient, ConnectError, Gate};
use serde::Deserialize;

use crate::api::{AppState, Peer, RequestId};
use crate::state::Loaded;

/// The largest request body forwarded and the largest response body returned (both are held
/// whole: a response is scrubbed before anything of it leaves).
pub const MAX_BODY: usize = 8 * 1024 * 1024;
/// Redemptions in progress at once (each may hold two bodies of up to [`MAX_BODY`]: the bound
/// keeps the proxy's memory under about 2 GiB whatever its clients do); more get `503`.
pub const MAX_IN_FLIGHT: usize = 128;
static IN_FLIGHT: tokio::sync::Semaphore = tokio::sync::Semaphore::const_new(MAX_IN_FLIGHT);
/// How long the upstream may take to answer (head and body).
pub const UPSTREAM_TIMEOUT: Duration = Duration::from_secs(30);
/// The `aud` and `iss` of short-lived tokens.
pub const AUDIENCE: &str = "keyzero-proxy";
/// The `iss` of short-lived tokens.
pub const ISSUER: &str = "keyzero";
/// The replay scope of redeemed `single_use` tokens.
const REPLAY_SCOPE: &str = "keyzero-proxy";
/// What is escaped in a query parameter: everything but RFC 3986's unreserved characters.
const QUERY_VALUE: &percent_encoding::AsciiSet = &percent_encoding::NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~');
/// The shortest credential the proxy serves: the scrubber finds any 16-byte fragment of a
/// longer value, but a shorter one only whole (or not at all under 8 bytes), so a shorter
/// credential could come back in pieces.
pub const MIN_SCRUBBED: usize = 16;
/// What a scrubbed credential reads as.
const SCRUBBED: &[u8] = b"[scrubbed by keyzero]";

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

/// Admits the hosts one `short_lived` resolver binds (the token's own binding is checked
/// before the request is made; this is the connector's second check), and says whether that
/// resolver names the host exactly, which alone lets it be a loopback or private address: a
/// wildcard of one resolver never borrows another resolver's exact pattern.
#[derive(Debug)]
pub struct ResolverGate {
    resolver: String,
    patterns: Vec<HostPattern>,
}

impl Gate for ResolverGate {
    fn admit(&self, host: &str, port: u16) -> Result<bool, String> {
        let mut admitted = None;
        for p in self.patterns.iter().filter(|p| p.matches(host, port)) {
            admitted = Some(admitted.unwrap_or(false) || !p.wildcard);
        }
        admitted.ok_or_else(|| format!("resolver `{}` does not bind {host}:{port}", self.resolver))
    }
}

/// The proxy's upstream clients, one per `short_lived` resolver (each pools its connections),
/// built per bundle.
pub type Egress = std::collections::HashMap<String, CheckedClient<ResolverGate, Full<Bytes>>>;

/// Builds the upstream clients for `bundle`: the system's roots plus the bundle's
/// `upstream_ca`; each client's gate is its resolver's `hosts`.
pub fn egress(bundle: &kz_bundle::Bundle) -> Result<Egress, Diagnostic> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in rustls_native_certs::load_native_certs().certs {
        let _ = roots.add(cert);
    }
    if let Some(ca) = &bundle.upstream_ca {
        let path = match bundle.file.parent() {
            Some(dir) if ca.is_relative() => dir.join(ca),
            _ => ca.clone(),
        };
        use rustls_pki_types::CertificateDer;
        use rustls_pki_types::pem::PemObject as _;
        let bad = |why: String| {
            Diagnostic::error(
                "server::upstream_ca",
                format!("cannot use {} as upstream_ca: {why}", path.display()),
            )
            .in_file(&path)
            .help("upstream_ca is a PEM file of CA certificates, relative to the bundle")
        };
        let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(&path)
            .map_err(|e| bad(e.to_string()))?
            .collect::<Result<_, _>>()
            .map_err(|e| bad(e.to_string()))?;
        if certs.is_empty() {
            return Err(bad("no CERTIFICATE block".into()));
        }
        for c in certs {
            roots.add(c).map_err(|e| bad(e.to_string()))?;
        }
    }
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let tls = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| Diagnostic::error("server::upstream_tls", e.to_string()))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    let resolver = Arc::new(kz_egress::CheckedResolver::default());
    Ok(bundle
        .resolvers
        .iter()
        .filter(|r| r.mode == Mode::ShortLived)
        .map(|r| {
            let gate = ResolverGate {
                resolver: r.name.clone(),
                patterns: r.hosts.clone(),
            };
            let client = kz_egress::connect::client(
                Arc::new(gate),
                Arc::clone(&resolver),
                tls.clone(),
                false,
            );
            (r.name.clone(), client)
        })
        .collect())
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

/// A refusal: status, a message for the client, the audit reason.
struct Refusal {
    status: StatusCode,
    message: String,
    /// For the audit record only (e.g. what a name resolved to, which the caller is not told).
    detail: Option<String>,
}

fn refuse(status: StatusCode, message: impl Into<String>) -> Refusal {
    Refusal {
        status,
        message: message.into(),
        detail: None,
    }
}

impl IntoResponse for Refusal {
    fn into_response(self) -> Response {
        let body = serde_json::json!({
            "error": match self.status {
                StatusCode::UNAUTHORIZED => "invalid_token",
                StatusCode::FORBIDDEN => "forbidden",
                StatusCode::BAD_GATEWAY => "upstream_failed",
                StatusCode::GATEWAY_TIMEOUT => "upstream_timeout",
                StatusCode::PAYLOAD_TOO_LARGE => "too_large",
                StatusCode::SERVICE_UNAVAILABLE => "not_ready",
                _ => "invalid_request",
            },
            "message": self.message,
        });
        let mut resp = (self.status, body.to_string()).into_response();
        resp.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        if self.status == StatusCode::UNAUTHORIZED {
            resp.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Bearer error=\"invalid_token\""),
            );
        }
        resp
    }
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

/// Headers never forwarded: hop-by-hop ones, and every one that carries a credential.
const DROPPED: [HeaderName; 13] = [
    header::CONNECTION,
    header::PROXY_AUTHORIZATION,
    header::PROXY_AUTHENTICATE,
    header::AUTHORIZATION,
    header::TE,
    header::TRAILER,
    header::TRANSFER_ENCODING,
    header::UPGRADE,
    header::HOST,
    header::COOKIE,
    header::EXPECT,
    header::RANGE,
    header::IF_RANGE,
];

/// Whether the caller may set request header `name` (lowercase). Not forwarded, by principle:
/// hop-by-hop headers (also every one `Connection` names); credentials; and headers by which a
/// front end or framework decides another method, path or resource than the request line
/// says (method overrides, URL rewrites, WebDAV `Destination`, cloud `*-copy-source`,
/// `Forwarded`, `X-Forwarded-*` and client-address headers), or serves a slice or another
/// charset of the answer (`Range`, `Accept-Charset`), so that the binding checked is the call
/// made, and the answer is scrubbed whole in a form the scrubber reads.
fn forwardable(name: &HeaderName, named_by_connection: &[String]) -> bool {
    let n = name.as_str();
    !(DROPPED.contains(name)
        || named_by_connection.iter().any(|c| c == n)
        || matches!(
            n,
            "keep-alive"
                | "proxy-connection"
                | "forwarded"
                | "via"
                | "x-real-ip"
                | "true-client-ip"
                | "x-client-ip"
                | "destination"
                | "accept-charset"
                | "content-encoding"
        )
        || n.ends_with("-copy-source")
        || n.starts_with("x-forwarded-")
        || n.starts_with("x-original-")
        || n.starts_with("x-rewrite-")
        || (n.starts_with("x-") && n.contains("method")))
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
    if matches!(req.method().as_str(), "CONNECT" | "TRACE" | "TRACK") {
        return Err(refuse(
            StatusCode::FORBIDDEN,
            format!("{} is never forwarded with a credential", req.method()),
        ));
    }
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
    let _slot = IN_FLIGHT.try_acquire().map_err(|_| {
        refuse(
            StatusCode::SERVICE_UNAVAILABLE,
            format!("{MAX_IN_FLIGHT} requests are in progress; retry shortly"),
        )
    })?;
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
    let subject = format!("{}\u{1f}{}", claims.caller_iss, claims.sub);
    if state
        .guessed
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .contains(&subject)
    {
        return Err(refuse(
            StatusCode::FORBIDDEN,
            "this caller sent the credential it may only use through the proxy; its tokens are \
             refused until the proxy restarts (see the audit log)",
        ));
    }

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
    let location = resolver
        .credential_location
        .clone()
        .unwrap_or(CredentialLocation::Header {
            name: "Authorization".into(),
            prefix: "Bearer".into(),
        });
    if credential.expose_bytes().len() < MIN_SCRUBBED {
        return Err(refuse(
            StatusCode::BAD_GATEWAY,
            format!(
                "the credential is shorter than {MIN_SCRUBBED} bytes, too short to be found in \
                 an answer and scrubbed; the proxy does not serve it"
            ),
        ));
    }
    // No credential from the caller: it only ever holds the token, so the credential or a
    // fragment of it (in the decoded view scrubbing uses) in what it sends is a guess. Refused
    // before anything is sent, and the caller is refused from then on: scrubbing that answers
    // "this matched" would otherwise tell a caller, guess by guess, what the credential is.
    // Only what would be forwarded is looked at (the kz token and dropped headers are not:
    // a kz token and a JWT credential share their first bytes).
    let burn_key = burn_key(&resolver.name, &credential);
    if state
        .burned
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .contains(&burn_key)
    {
        return Err(refuse(
            StatusCode::FORBIDDEN,
            "this credential is no longer served by this proxy: a request tried to learn it \
             (see the audit log); rotate it, then restart the proxy",
        ));
    }
    // One matcher per redemption: the guess check here, the answer's scrubbing below.
    let m = kz_redact::decoded::Matcher::new(
        std::iter::once((credential.expose_bytes().to_vec(), SCRUBBED.to_vec())),
        kz_redact::decoded::Options::default(),
    );
    let named_by_connection = connection_named(&parts.headers);
    let guess = {
        let mut hit = !m.hits_in(parts.method.as_str().as_bytes()).is_empty()
            || !m.hits_in(uri.to_string().as_bytes()).is_empty()
            || !m.hits_in(&body).is_empty();
        for (name, v) in parts
            .headers
            .iter()
            .filter(|(n, _)| forwardable(n, &named_by_connection))
        {
            hit |= !m.hits_in(name.as_str().as_bytes()).is_empty()
                || !m.hits_in(v.as_bytes()).is_empty();
        }
        hit
    };
    if guess {
        // The audit record must not carry what the guess carried.
        seen.path = "[withheld: it carried the credential]".into();
        seen.host = "[withheld: it carried the credential]".into();
        // The answer to a guess is a bit about the credential whatever it is, so the first one
        // ends the credential's service on this replica (the operator rotates it) and the
        // caller's.
        state
            .burned
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .insert(burn_key);
        state
            .guessed
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .insert(subject);
        tracing::warn!(
            sub = %claims.sub,
            resolver = %resolver.name,
            "a caller sent the credential (or part of it) to the proxy; its tokens are refused from now on"
        );
        return Err(refuse(
            StatusCode::FORBIDDEN,
            "the request carries the credential (or part of it), which the caller may only use \
             through the proxy; refused, and this caller's tokens are refused from now on",
        ));
    }
    let out = upstream_request(
        &parts.method,
        &parts.headers,
        &named_by_connection,
        &uri,
        &location,
        &credential,
        body,
    )?;
    let client = egress.get(&resolver.name).ok_or_else(|| {
        refuse(
            StatusCode::FORBIDDEN,
            "the bundle in force has no upstream client for this token's resolver",
        )
    })?;
    let response = tokio::time::timeout(UPSTREAM_TIMEOUT, client.request(out))
        .await
        .map_err(|_| {
            refuse(
                StatusCode::GATEWAY_TIMEOUT,
                "the upstream did not answer in time",
            )
        })?
        .map_err(|e| match kz_egress::connect::classify_error(&e) {
            // What a name resolved to and which address failed stay in the audit record: the
            // caller learns that, not the internal addresses.
            ConnectError::Refused(why) => Refusal {
                detail: Some(format!("the destination is refused: {why}")),
                ..refuse(
                    StatusCode::FORBIDDEN,
                    "the destination is refused: it is not bound, or resolves to a loopback, \
                     private, link-local or metadata address",
                )
            },
            ConnectError::Failed(why) => Refusal {
                detail: Some(format!("the upstream request failed: {why}")),
                ..refuse(
                    StatusCode::BAD_GATEWAY,
                    "the upstream request failed (the audit log has the reason)",
                )
            },
        })?;
    scrubbed(response, &credential, &m).await
}

/// The header names a request's `Connection` header lists (hop-by-hop by its sender's say).
fn connection_named(headers: &HeaderMap) -> Vec<String> {
    headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|s| s.trim().to_ascii_lowercase())
        .collect()
}

/// What identifies a credential in the burned set: its resolver and the SHA-256 of its value.
fn burn_key(resolver: &str, credential: &kz_secret::SecretValue) -> [u8; 32] {
    use sha2::Digest as _;
    let mut h = sha2::Sha256::new();
    h.update(resolver.as_bytes());
    h.update([0]);
    h.update(credential.expose_bytes());
    h.finalize().into()
}

/// The request sent upstream: the caller's method, target and headers, without any header that
/// carries a credential or collides with the credential's location, and with the credential at
/// its location.
fn upstream_request(
    method: &Method,
    headers: &HeaderMap,
    named_by_connection: &[String],
    uri: &Uri,
    location: &CredentialLocation,
    credential: &kz_secret::SecretValue,
    body: Bytes,
) -> Result<http::Request<Full<Bytes>>, Refusal> {
    let value = credential.expose_str().ok_or_else(|| {
        refuse(
            StatusCode::BAD_GATEWAY,
            "the credential is not text and cannot go into a request",
        )
    })?;
    let mut uri = uri.clone();
    let mut out = HeaderMap::new();
    for (name, v) in headers {
        if !forwardable(name, named_by_connection) {
            continue;
        }
        if let CredentialLocation::Header { name: at, .. } = location
            && name.as_str().eq_ignore_ascii_case(at)
        {
            continue;
        }
        out.append(name.clone(), v.clone());
    }
    // Only encodings kz can read are asked for, so the response can be scrubbed.
    out.insert(
        header::ACCEPT_ENCODING,
        HeaderValue::from_static("identity"),
    );
    match location {
        CredentialLocation::Header { name, prefix } => {
            let text = if prefix.is_empty() {
                zeroize::Zeroizing::new(value.to_owned())
            } else {
                zeroize::Zeroizing::new(format!("{prefix} {value}"))
            };
            let mut v = HeaderValue::from_str(&text).map_err(|_| {
                refuse(
                    StatusCode::BAD_GATEWAY,
                    "the credential cannot go into a header (control characters)",
                )
            })?;
            v.set_sensitive(true);
            let n = HeaderName::from_bytes(name.as_bytes()).map_err(|_| {
                refuse(
                    StatusCode::BAD_GATEWAY,
                    "the credential location is not a header name",
                )
            })?;
            out.insert(n, v);
        }
        CredentialLocation::Query { name } => {
            let enc = |s: &str| percent_encoding::utf8_percent_encode(s, QUERY_VALUE).to_string();
            // Any parameter of the same name the caller sent is dropped.
            let kept: Vec<&str> = uri
                .query()
                .unwrap_or_default()
                .split('&')
                .filter(|p| !p.is_empty())
                .filter(|p| {
                    let k = p.split('=').next().unwrap_or_default();
                    percent_encoding::percent_decode_str(k).decode_utf8_lossy() != name.as_str()
                })
                .collect();
            let mut query = kept.join("&");
            if !query.is_empty() {
                query.push('&');
            }
            let secret = zeroize::Zeroizing::new(enc(value));
            query.push_str(&format!("{}={}", enc(name), secret.as_str()));
            let pq = zeroize::Zeroizing::new(format!("{}?{query}", uri.path()));
            let mut parts = uri.into_parts();
            parts.path_and_query = Some(pq.parse().map_err(|_| {
                refuse(
                    StatusCode::BAD_REQUEST,
                    "the target's query cannot take the credential",
                )
            })?);
            uri = Uri::from_parts(parts).map_err(|_| {
                refuse(
                    StatusCode::BAD_REQUEST,
                    "the target cannot take the credential",
                )
            })?;
        }
    }
    let mut req = http::Request::builder()
        .method(method.clone())
        .uri(uri)
        .body(Full::new(body))
        .map_err(|_| refuse(StatusCode::BAD_REQUEST, "the request cannot be rebuilt"))?;
    *req.headers_mut() = out;
    Ok(req)
}

/// The upstream's answer, whole, with every form of the credential scrubbed from the status
/// text, the header values and the body. A body in an encoding kz cannot read is refused.
async fn scrubbed(
    response: http::Response<hyper::body::Incoming>,
    credential: &kz_secret::SecretValue,
    matcher: &kz_redact::decoded::Matcher,
) -> Result<Response, Refusal> {
    let (parts, body) = response.into_parts();
    if parts
        .headers
        .get_all(header::CONTENT_ENCODING)
        .iter()
        .any(|v| !v.as_bytes().eq_ignore_ascii_case(b"identity"))
    {
        return Err(refuse(
            StatusCode::BAD_GATEWAY,
            "the upstream answered in a content encoding kz cannot scrub (it was asked for identity)",
        ));
    }
    let body = tokio::time::timeout(UPSTREAM_TIMEOUT, Limited::new(body, MAX_BODY).collect())
        .await
        .map_err(|_| {
            refuse(
                StatusCode::GATEWAY_TIMEOUT,
                "the upstream's body did not arrive in time",
            )
        })?
        .map_err(|_| {
            refuse(
                StatusCode::BAD_GATEWAY,
                format!("the upstream's body is over {MAX_BODY} bytes or broke off"),
            )
        })?
        .to_bytes();
    // Header names arrive lowercased: compared without case, as blind mode does.
    let names = kz_redact::decoded::Matcher::new(
        std::iter::once((credential.expose_bytes().to_vec(), SCRUBBED.to_vec())),
        kz_redact::decoded::Options {
            ignore_case: true,
            no_base64: true,
        },
    );
    let (body, _) = matcher.replace_all(&body);
    let mut out = Response::new(Body::from(body));
    *out.status_mut() = parts.status;
    for (name, v) in &parts.headers {
        // A cookie minted upstream for the credential would be a credential of its own, usable
        // outside the binding and after `exp`: not returned.
        if matches!(
            *name,
            header::CONNECTION
                | header::TRANSFER_ENCODING
                | header::CONTENT_LENGTH
                | header::TRAILER
                | header::SET_COOKIE
        ) {
            continue;
        }
        // A header whose name carries the credential is dropped; values are scrubbed.
        if !names.hits_in(name.as_str().as_bytes()).is_empty() {
            continue;
        }
        let (clean, _) = matcher.replace_all(v.as_bytes());
        if let Ok(v) = HeaderValue::from_bytes(&clean) {
            out.headers_mut().append(name.clone(), v);
        }
    }
    Ok(out)
}
