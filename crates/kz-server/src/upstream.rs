//! One credentialed call upstream, shared by the credential proxy and MCP `fetch`.
//!
//! The caller's request (already held to its resolver's binding) is checked for the
//! credential itself, rebuilt without any header that carries a credential, decides another
//! method or path than the one checked, or collides with the credential's location, given the
//! credential at the resolver's `credential_location`, sent through `kz-egress` (special
//! addresses refused after DNS, the connection pinned, no redirect followed), and its answer is
//! read whole and scrubbed of every form of the credential the decoded view reads.
//!
//! **Invariants:** the credential never comes back (status text, header names and values,
//! body); a request carrying the credential or a fragment of it is a guess, answered by
//! ending that credential's service and that caller's on this process, before anything is sent.

use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use http_body_util::{BodyExt as _, Full, Limited};
use kz_bundle::{CredentialLocation, Resolver};
use kz_config::{Diagnostic, HostPattern};
use kz_egress::connect::{CheckedClient, ConnectError, Gate};

use crate::api::AppState;

/// The largest request body forwarded and the largest response body returned (both are held
/// whole: a response is scrubbed before anything of it leaves).
pub const MAX_BODY: usize = 8 * 1024 * 1024;
/// Redemptions in progress at once (each may hold two bodies of up to [`MAX_BODY`]: the bound
/// keeps the proxy's memory under about 2 GiB whatever its clients do); more get `503`.
pub const MAX_IN_FLIGHT: usize = 128;
static IN_FLIGHT: tokio::sync::Semaphore = tokio::sync::Semaphore::const_new(MAX_IN_FLIGHT);
/// How long the upstream may take to answer (head and body).
pub const UPSTREAM_TIMEOUT: Duration = Duration::from_secs(30);

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

/// Admits the hosts one resolver binds (the caller's binding is checked before the request is
/// made; this is the connector's second check), and says whether that
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

/// The upstream clients, one per resolver with `hosts` (each pools its connections), built
/// per bundle.
pub type Egress = std::collections::HashMap<String, Client>;

/// One resolver's upstream client.
pub type Client = CheckedClient<ResolverGate, Full<Bytes>>;

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
        .filter(|r| !r.hosts.is_empty())
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

/// A refusal: status, a message for the client, the audit reason.
#[derive(Debug)]
pub struct Refusal {
    /// The HTTP status (the proxy's answer; MCP `fetch` reports the message).
    pub status: StatusCode,
    /// What the caller is told.
    pub message: String,
    /// For the audit record only (e.g. what a name resolved to, which the caller is not told).
    pub detail: Option<String>,
    /// The request carried the credential: its target is not written to the audit log.
    pub withhold: bool,
}

/// A refusal with `status` and `message`.
pub fn refuse(status: StatusCode, message: impl Into<String>) -> Refusal {
    Refusal {
        status,
        message: message.into(),
        detail: None,
        withhold: false,
    }
}

/// What the audit record says in place of a path or host that carried the credential.
pub const WITHHELD: &str = "[withheld: it carried the credential]";

impl Refusal {
    /// The code of the catalogue ([`kz_wire::ErrorCode`]) this refusal answers with.
    pub fn code(&self) -> kz_wire::ErrorCode {
        use kz_wire::ErrorCode as C;
        match self.status {
            StatusCode::UNAUTHORIZED => C::InvalidToken,
            StatusCode::FORBIDDEN => C::Forbidden,
            StatusCode::REQUEST_TIMEOUT => C::RequestTimeout,
            StatusCode::PAYLOAD_TOO_LARGE => C::PayloadTooLarge,
            StatusCode::UNSUPPORTED_MEDIA_TYPE => C::UnsupportedMediaType,
            StatusCode::BAD_GATEWAY => C::UpstreamFailed,
            StatusCode::GATEWAY_TIMEOUT => C::UpstreamTimeout,
            StatusCode::SERVICE_UNAVAILABLE => C::NotReady,
            _ => C::InvalidRequest,
        }
    }
}

impl IntoResponse for Refusal {
    fn into_response(self) -> Response {
        let code = self.code();
        let status = self.status;
        let body = serde_json::to_vec(&kz_wire::ErrorBody {
            error: code,
            message: self.message,
        })
        .unwrap_or_default();
        let mut resp = (status, body).into_response();
        resp.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        if status == StatusCode::UNAUTHORIZED {
            resp.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Bearer error=\"invalid_token\""),
            );
        }
        resp
    }
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
/// made, and the answer is scrubbed whole in a form the scrubber reads. Beyond the names listed,
/// any header whose name has a word saying where or how the request goes (`method`,
/// `override`, `original`, `rewrite`, `forwarded`, `path`, `url`, `uri`, `route`,
/// `destination`, `invoke`, `subrequest`, `script`: `X-Envoy-Original-Path`, `X-Invoke-Path`,
/// `Request-URI`, …) is dropped: proxies and frameworks invent such headers faster than a list
/// of names could follow.
pub fn forwardable(name: &HeaderName, named_by_connection: &[String]) -> bool {
    let n = name.as_str();
    const ROUTING_WORDS: [&str; 13] = [
        "method",
        "override",
        "original",
        "rewrite",
        "forwarded",
        "path",
        "url",
        "uri",
        "route",
        "destination",
        "invoke",
        "subrequest",
        "script",
    ];
    let routing = n
        .split(['-', '_', '.'])
        .any(|word| ROUTING_WORDS.contains(&word));
    !(routing
        || DROPPED.contains(name)
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

/// The header names a request's `Connection` header lists (hop-by-hop by its sender's say).
pub fn connection_named(headers: &HeaderMap) -> Vec<String> {
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
) -> Result<Answer, Refusal> {
    let (parts, body) = response.into_parts();
    // Only bytes kz has decoded whole are scrubbed: a content coding, or a transfer coding
    // other than the `chunked` hyper removes, would come back unread.
    let coded = |name: HeaderName, plain: &[u8]| {
        parts
            .headers
            .get_all(name)
            .iter()
            .flat_map(|v| v.as_bytes().split(|b| *b == b','))
            .map(<[u8]>::trim_ascii)
            .any(|c| !c.is_empty() && !c.eq_ignore_ascii_case(plain))
    };
    if coded(header::CONTENT_ENCODING, b"identity") || coded(header::TRANSFER_ENCODING, b"chunked")
    {
        return Err(refuse(
            StatusCode::BAD_GATEWAY,
            "the upstream answered in a content or transfer coding kz cannot scrub (it was asked \
             for identity)",
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
    let (body, hits) = matcher.replace_all(&body);
    // Headers computed over the body as the upstream sent it (validators and digests) would
    // let a caller check guesses against what was scrubbed away: dropped when anything was.
    let body_changed = !hits.is_empty();
    let mut out = Answer {
        status: parts.status,
        headers: HeaderMap::new(),
        body: Bytes::from(body),
    };
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
        if body_changed
            && matches!(
                name.as_str(),
                "etag" | "content-md5" | "digest" | "content-digest" | "repr-digest"
            )
        {
            continue;
        }
        // A header whose name carries the credential is dropped; values are scrubbed.
        if !names.hits_in(name.as_str().as_bytes()).is_empty() {
            continue;
        }
        let (clean, _) = matcher.replace_all(v.as_bytes());
        if let Ok(v) = HeaderValue::from_bytes(&clean) {
            out.headers.append(name.clone(), v);
        }
    }
    Ok(out)
}

/// The request to send, as the caller made it (the target already checked).
#[derive(Debug)]
pub struct Outgoing<'a> {
    /// The method.
    pub method: &'a Method,
    /// The absolute target.
    pub uri: &'a Uri,
    /// The caller's headers (filtered here).
    pub headers: &'a HeaderMap,
    /// The body, held whole.
    pub body: Bytes,
}

/// The upstream's answer, scrubbed.
#[derive(Debug)]
pub struct Answer {
    /// The status.
    pub status: StatusCode,
    /// The headers (hop-by-hop ones and `Set-Cookie` dropped, values scrubbed).
    pub headers: HeaderMap,
    /// The body, scrubbed.
    pub body: Bytes,
}

impl IntoResponse for Answer {
    fn into_response(self) -> Response {
        let mut out = Response::new(Body::from(self.body));
        *out.status_mut() = self.status;
        *out.headers_mut() = self.headers;
        out
    }
}

/// Who makes the call: the issuer and subject of the verified caller.
#[derive(Clone, Copy, Debug)]
pub struct CallerId<'a> {
    /// The issuer URL.
    pub issuer: &'a str,
    /// The subject.
    pub sub: &'a str,
}

/// Refuses a caller that sent a credential before ([`crate::lockout`]: kept across restarts).
pub fn not_locked_out(state: &AppState, caller: CallerId<'_>) -> Result<(), Refusal> {
    if state.lockout.is_locked_out(caller.issuer, caller.sub) {
        return Err(refuse(
            StatusCode::FORBIDDEN,
            "this caller sent a credential it may only use through keyzero, and is refused from \
             then on (see the audit log; the operator lifts it by removing its line from the \
             lockout file)",
        ));
    }
    Ok(())
}

/// The credential's matcher: the guess check and the answer's scrubbing share it. A
/// case-changed copy is the credential too (most of its entropy survives).
pub fn matcher(credential: &kz_secret::SecretValue) -> kz_redact::decoded::Matcher {
    kz_redact::decoded::Matcher::new(
        std::iter::once((credential.expose_bytes().to_vec(), SCRUBBED.to_vec())),
        kz_redact::decoded::Options {
            ignore_case: true,
            no_base64: false,
        },
    )
}

/// Refuses a credential that is no longer served after a guess (until it is rotated).
pub fn not_burned(
    state: &AppState,
    resolver: &Resolver,
    credential: &kz_secret::SecretValue,
) -> Result<(), Refusal> {
    if state
        .lockout
        .is_burned(&burn_key(&resolver.name, credential))
    {
        return Err(refuse(
            StatusCode::FORBIDDEN,
            "this credential is no longer served: a request tried to learn it (see the audit \
             log); rotate it",
        ));
    }
    Ok(())
}

/// Records a guess (the credential and the caller are refused from now on, across restarts)
/// and returns its refusal, whose target is withheld from the audit record.
pub fn guessed(
    state: &AppState,
    resolver: &Resolver,
    credential: &kz_secret::SecretValue,
    caller: CallerId<'_>,
) -> Refusal {
    state.lockout.record_guess(
        burn_key(&resolver.name, credential),
        caller.issuer,
        caller.sub,
    );
    tracing::warn!(
        issuer = %caller.issuer,
        sub = %caller.sub,
        resolver = %resolver.name,
        "a caller sent the credential (or part of it) to keyzero; it is refused from now on"
    );
    Refusal {
        withhold: true,
        ..refuse(
            StatusCode::FORBIDDEN,
            "the request carries the credential (or part of it), which the caller may only use \
             through keyzero; refused, and this caller is refused from now on",
        )
    }
}

/// Refuses the methods never sent with a credential (`CONNECT`, `TRACE`, `TRACK`), in any
/// case: a server that compares without case would obey `trace`.
pub fn never_sent(method: &Method) -> Result<(), Refusal> {
    if ["CONNECT", "TRACE", "TRACK"]
        .iter()
        .any(|m| method.as_str().eq_ignore_ascii_case(m))
    {
        return Err(refuse(
            StatusCode::FORBIDDEN,
            format!("{method} is never sent with a credential"),
        ));
    }
    Ok(())
}

/// Whether the request names a method of its own in a `_method` field (Rails, Laravel and
/// Symfony obey it in the query or the body, in any body format), in any case or escape. A
/// field is the name standing alone: `payment_method` or `_methods` is another name.
fn tunnels_a_method(uri: &Uri, body: &[u8]) -> bool {
    const FIELD: &[u8] = b"_method";
    let part_of_a_name =
        |b: Option<&u8>| b.is_some_and(|b| b.is_ascii_alphanumeric() || *b == b'_');
    let named = |text: &[u8]| {
        let decoded = percent_encoding::percent_decode(text).collect::<Vec<u8>>();
        decoded.windows(FIELD.len()).enumerate().any(|(at, w)| {
            w.eq_ignore_ascii_case(FIELD)
                && !part_of_a_name(at.checked_sub(1).and_then(|i| decoded.get(i)))
                && !part_of_a_name(decoded.get(at + FIELD.len()))
        })
    };
    named(uri.query().unwrap_or_default().as_bytes()) || named(body)
}

/// Takes one of the [`MAX_IN_FLIGHT`] slots, or refuses.
pub fn slot() -> Result<tokio::sync::SemaphorePermit<'static>, Refusal> {
    IN_FLIGHT.try_acquire().map_err(|_| {
        refuse(
            StatusCode::SERVICE_UNAVAILABLE,
            format!("{MAX_IN_FLIGHT} requests are in progress; retry shortly"),
        )
    })
}

/// Sends `out` with `credential` placed at `resolver`'s location through `client`, and returns
/// the scrubbed answer. `m` is the credential's [`matcher`] (built once per call by the front
/// end, which has checked [`not_burned`]); `caller` is locked out on a guess.
pub async fn spend(
    state: &AppState,
    client: &Client,
    resolver: &Resolver,
    credential: &kz_secret::SecretValue,
    m: &kz_redact::decoded::Matcher,
    caller: CallerId<'_>,
    out: Outgoing<'_>,
) -> Result<Answer, Refusal> {
    let location = resolver
        .credential_location
        .clone()
        .unwrap_or(CredentialLocation::Header {
            name: "Authorization".into(),
            prefix: "Bearer".into(),
        });
    never_sent(out.method)?;
    if resolver.binding.methods.restricts() && tunnels_a_method(out.uri, &out.body) {
        return Err(refuse(
            StatusCode::FORBIDDEN,
            format!(
                "`{}` may be used only for {}, and this request names another method in a \
                 `_method` field, which frameworks obey; send the method itself",
                resolver.name, resolver.binding.methods
            ),
        ));
    }
    if credential.expose_bytes().len() < MIN_SCRUBBED {
        return Err(refuse(
            StatusCode::BAD_GATEWAY,
            format!(
                "the credential is shorter than {MIN_SCRUBBED} bytes, too short to be found in \
                 an answer and scrubbed; keyzero does not send it"
            ),
        ));
    }
    // No credential from the caller: it only ever holds the token, so the credential or a
    // fragment of it (in the decoded view scrubbing uses) in what it sends is a guess. Refused
    // before anything is sent, and the caller is refused from then on: scrubbing that answers
    // "this matched" would otherwise tell a caller, guess by guess, what the credential is.
    // Only what would be forwarded is looked at (the kz token and dropped headers are not:
    // a kz token and a JWT credential share their first bytes).
    let named_by_connection = connection_named(out.headers);
    let guess = {
        let mut hit = !m.hits_in(out.method.as_str().as_bytes()).is_empty()
            || !m.hits_in(out.uri.to_string().as_bytes()).is_empty()
            || !m.hits_in(&out.body).is_empty();
        for (name, v) in out
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
        return Err(guessed(state, resolver, credential, caller));
    }
    let request = upstream_request(
        out.method,
        out.headers,
        &named_by_connection,
        out.uri,
        &location,
        credential,
        out.body,
    )?;
    let response = tokio::time::timeout(UPSTREAM_TIMEOUT, client.request(request))
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
    scrubbed(response, credential, m).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_method_field_is_a_name_standing_alone() {
        let uri = |q: &str| -> Uri { format!("https://api.example.com/v1/x{q}").parse().unwrap() };
        for (query, body) in [
            ("?_method=DELETE", ""),
            ("?a=1&%5F%4Dethod=DELETE", ""),
            ("", "a=1&_method=PUT"),
            ("", r#"{"_method": "DELETE"}"#),
            (
                "",
                "------b\r\nContent-Disposition: form-data; name=\"_METHOD\"\r\n\r\nDELETE",
            ),
        ] {
            assert!(
                tunnels_a_method(&uri(query), body.as_bytes()),
                "{query} {body}"
            );
        }
        // Other names that contain it are other fields (Stripe's `payment_method`).
        for (query, body) in [
            ("?payment_method=pm_1", ""),
            (
                "",
                r#"{"payment_method": "pm_1", "x__method": 1, "_methods": []}"#,
            ),
            ("", "default_method=card"),
        ] {
            assert!(
                !tunnels_a_method(&uri(query), body.as_bytes()),
                "{query} {body}"
            );
        }
    }

    #[test]
    fn refusals_answer_with_codes_of_the_api_catalogue() {
        for (status, code) in [
            (StatusCode::UNAUTHORIZED, "invalid_token"),
            (StatusCode::FORBIDDEN, "forbidden"),
            (StatusCode::REQUEST_TIMEOUT, "request_timeout"),
            (StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large"),
            (StatusCode::UNSUPPORTED_MEDIA_TYPE, "unsupported_media_type"),
            (StatusCode::BAD_GATEWAY, "upstream_failed"),
            (StatusCode::GATEWAY_TIMEOUT, "upstream_timeout"),
            (StatusCode::SERVICE_UNAVAILABLE, "not_ready"),
            (StatusCode::BAD_REQUEST, "invalid_request"),
        ] {
            let r = refuse(status, "why");
            assert_eq!(r.code().status(), status.as_u16(), "{status}");
            let resp = r.into_response();
            assert_eq!(resp.status(), status);
            let body =
                futures_util::FutureExt::now_or_never(axum::body::to_bytes(resp.into_body(), 1024))
                    .unwrap()
                    .unwrap();
            // The client's parser (the same wire type) reads every proxy error.
            let parsed: kz_wire::ErrorBody = serde_json::from_slice(&body).unwrap();
            assert_eq!(
                serde_json::to_value(parsed.error).unwrap(),
                serde_json::Value::String(code.into())
            );
            assert_eq!(parsed.message, "why");
        }
    }
}
