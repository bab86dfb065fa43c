//! The blind-mode proxy: plain HTTP proxy requests and `CONNECT` tunnels (TLS terminated with a
//! per-host leaf from the run's CA, or plain HTTP inside), HTTP/1.1 and HTTP/2 on both sides.
//!
//! For every request: the destination must pass the egress policy; every token in the target,
//! headers and body must belong to a secret bound to that destination, or the request is
//! refused (`403`; nothing is sent, except that a body over 16 MiB streams and is cut off at the
//! forbidden token, before any value); tokens are then swapped for values; the response has values
//! (and their encodings) scrubbed back into tokens. Before all that, a real value (or fragment)
//! in anything the command sends, to any host, refuses the request and closes a latch: from then
//! on every request gets the same `403` ([`STOPPED`]) and nothing is swapped. Swaps, refusals and scrubs are audited
//! (names only) and counted for the `-v` summary.
//!
//! Boundary: this module does network I/O; policy, rewriting and certificates live in their own
//! modules. It never logs or formats a value.

mod body;
mod upstream;

use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Method, Request, Response, StatusCode, Uri, Version};
use http_body::Frame;
use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use kz_audit::{Decision, Record, Transport, Writer};
use kz_redact::Redactor;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite};

pub use body::{BoxError, ProxyBody};
use body::{Encoding, MapBody, Prefixed, Transform, empty, full};
use upstream::{ConnectError, UpstreamClient};

use crate::ca::RunCa;
use crate::policy::{self, Destination, Policy, Verdict};
use crate::rewrite::{self, BodySwap, ScrubStream, Scrubber, SwapError, Swapper};
use crate::secrets::SecretTable;
use kz_config::BindingRefusal;

/// Request bodies with a `Content-Length` up to this are buffered and sent with their new length.
pub const BUFFER_LIMIT: usize = 16 << 20;
/// Compressed request bodies may decode to at most this.
pub const DECODED_LIMIT: usize = 64 << 20;
/// Request bodies up to this size are not counted against the memory budget.
const SMALL_BODY: u64 = 64 << 10;
/// Request bodies held in memory at once, across all requests, in MiB.
pub const BUFFER_BUDGET_MIB: u32 = 256;
/// Responses with a `Content-Length` up to this are scrubbed whole (keeping a length).
const RESPONSE_BUFFER_LIMIT: u64 = 1 << 20;

/// What the proxy needs.
#[derive(Debug)]
pub struct Settings {
    /// The secrets, their tokens and where each may go.
    pub table: SecretTable,
    /// Which hosts may be reached at all.
    pub policy: Policy,
    /// The run's CA.
    pub ca: RunCa,
    /// Upstream TLS roots (system plus `upstream_ca`).
    pub upstream_tls: rustls::ClientConfig,
    /// `[blind] scrub_responses`.
    pub scrub_responses: bool,
    /// `--audit PATH`.
    pub audit: Option<Arc<Writer>>,
}

/// Distinct `502` reasons kept for the `-v` summary.
pub const FAILURE_REASONS: usize = 16;

/// Counts for the `-v` summary at exit.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Summary {
    /// Requests handled.
    pub requests: u64,
    /// Requests that carried at least one swapped token.
    pub swapped_requests: u64,
    /// Refused requests and tunnels.
    pub refused: u64,
    /// Responses (or WebSocket messages) that had a value scrubbed.
    pub scrubbed: u64,
    /// Per secret (name, swaps, scrubs), in table order.
    pub per_secret: Vec<(String, u64, u64)>,
    /// Audit records the writer refused.
    pub audit_failures: u64,
    /// Requests answered `502` (upstream unreachable, or an answer kz cannot check).
    pub failed: u64,
    /// Why, distinct reasons in order, at most [`FAILURE_REASONS`].
    pub failures: Vec<String>,
    /// The secret whose value the command sent, when blind mode stopped (its name only).
    pub stopped_by: Option<String>,
}

#[derive(Debug, Default)]
struct Counters {
    requests: AtomicU64,
    swapped_requests: AtomicU64,
    refused: AtomicU64,
    scrubbed: AtomicU64,
    audit_failures: AtomicU64,
    failed: AtomicU64,
}

/// The proxy. Cheap to clone; every connection task holds one.
#[derive(Clone)]
pub struct Proxy {
    shared: Arc<Shared>,
}

impl std::fmt::Debug for Proxy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Proxy")
            .field("secrets", &self.shared.table.secrets.len())
            .finish_non_exhaustive()
    }
}

struct Shared {
    table: SecretTable,
    policy: Arc<Policy>,
    ca: RunCa,
    swapper: Swapper,
    /// Response scrubbing (`None` when off or nothing is long enough to scrub).
    scrubber: Option<Scrubber>,
    /// The same matcher, always: the ingress check (no value, nor a fragment of one, in anything
    /// the command sends, to any host).
    values: Scrubber,
    /// The latch: set (to the secret seen) the first time the command sends a value. From then
    /// on every request is refused and nothing is swapped.
    stopped: std::sync::OnceLock<usize>,
    /// Called once, with the secret's name, when the latch closes (kz's stderr warning).
    on_stop: std::sync::OnceLock<StopHook>,
    client: UpstreamClient,
    ws_client: UpstreamClient,
    audit: Option<Arc<Writer>>,
    counters: Counters,
    failures: std::sync::Mutex<Vec<String>>,
    swaps: Vec<AtomicU64>,
    buffer_budget: Arc<tokio::sync::Semaphore>,
    scrubs: Vec<AtomicU64>,
    /// The proxy credential (`kz:<random>`), fresh per run; every request and `CONNECT` on the
    /// proxy port must present it.
    credential: ProxyCredential,
    /// Checked DNS answers, shared by `CONNECT` and the upstream connectors.
    resolver: Arc<policy::CheckedResolver>,
}

/// What [`Proxy::on_stop`] registers.
type StopHook = Box<dyn Fn(&str) + Send + Sync>;

/// The body of every `403` after the command sent a secret value: the same whatever matched
/// (which secret, which fragment, which host), so a guess learns one bit per run at most.
pub const STOPPED: &str = "kz blind: blind mode stopped: the command sent a secret value (see the audit log). \
     Nothing more is sent in this run.\n";

/// The proxy's own credential: user `kz`, a password of [`CREDENTIAL_BYTES`] random bytes (hex)
/// from a CSPRNG. Not a secret of the run (the command holds it in its proxy URL), but it keeps
/// other local users off the proxy: never logged, never forwarded.
struct ProxyCredential {
    password: zeroize::Zeroizing<String>,
    /// `kz:<password>`, what `Basic` credentials must decode to.
    expected: zeroize::Zeroizing<Vec<u8>>,
}

/// Random bytes in the proxy password (192 bits).
const CREDENTIAL_BYTES: usize = 24;

impl ProxyCredential {
    fn new() -> Self {
        use rand::RngCore as _;
        use std::fmt::Write as _;
        let mut bytes = zeroize::Zeroizing::new([0u8; CREDENTIAL_BYTES]);
        // ThreadRng is a CSPRNG (ChaCha12) seeded and periodically reseeded from the OS.
        rand::rng().fill_bytes(bytes.as_mut());
        let mut password = zeroize::Zeroizing::new(String::with_capacity(2 * CREDENTIAL_BYTES));
        for b in bytes.iter() {
            let _ = write!(password, "{b:02x}");
        }
        let mut expected = zeroize::Zeroizing::new(Vec::with_capacity(3 + password.len()));
        expected.extend_from_slice(b"kz:");
        expected.extend_from_slice(password.as_bytes());
        Self { password, expected }
    }

    /// Whether `headers` carry `Proxy-Authorization: Basic base64(kz:<password>)` (compared in
    /// constant time).
    fn check(&self, headers: &HeaderMap) -> bool {
        use base64::Engine as _;
        let mut values = headers.get_all(header::PROXY_AUTHORIZATION).iter();
        let (Some(value), None) = (values.next(), values.next()) else {
            return false;
        };
        let value = value.as_bytes().trim_ascii();
        let Some((scheme, b64)) = value
            .iter()
            .position(|&b| b == b' ')
            .map(|at| value.split_at(at))
        else {
            return false;
        };
        if !scheme.eq_ignore_ascii_case(b"basic") {
            return false;
        }
        let Ok(decoded) = base64::engine::general_purpose::STANDARD.decode(b64.trim_ascii()) else {
            return false;
        };
        let decoded = zeroize::Zeroizing::new(decoded);
        constant_time_eq(&decoded, &self.expected)
    }
}

/// Equal, in time that depends only on the lengths.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    let diff = a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y));
    std::hint::black_box(diff) == 0
}

/// Where requests on one connection go.
#[derive(Debug, Clone)]
enum Origin {
    /// The proxy port: absolute-form requests and `CONNECT`.
    Proxy,
    /// Inside a `CONNECT` tunnel to this destination.
    Tunnel(Destination),
}

impl Proxy {
    /// A proxy with `settings`. Must be called inside a Tokio runtime.
    pub fn new(settings: Settings) -> Self {
        let policy = Arc::new(settings.policy);
        let resolver = Arc::new(policy::CheckedResolver::default());
        let client = upstream::client(
            Arc::clone(&policy),
            Arc::clone(&resolver),
            settings.upstream_tls.clone(),
            false,
        );
        let ws_client = upstream::client(
            Arc::clone(&policy),
            Arc::clone(&resolver),
            settings.upstream_tls,
            true,
        );
        let swapper = Swapper::new(&settings.table);
        let values = Scrubber::new(&settings.table);
        let scrubber = Some(values.clone()).filter(|s| settings.scrub_responses && !s.is_empty());
        let n = settings.table.secrets.len();
        Self {
            shared: Arc::new(Shared {
                swaps: (0..n).map(|_| AtomicU64::new(0)).collect(),
                buffer_budget: Arc::new(tokio::sync::Semaphore::new(BUFFER_BUDGET_MIB as usize)),
                scrubs: (0..n).map(|_| AtomicU64::new(0)).collect(),
                credential: ProxyCredential::new(),
                resolver,
                table: settings.table,
                policy,
                ca: settings.ca,
                swapper,
                scrubber,
                values,
                stopped: std::sync::OnceLock::new(),
                on_stop: std::sync::OnceLock::new(),
                client,
                ws_client,
                audit: settings.audit,
                counters: Counters::default(),
                failures: std::sync::Mutex::new(Vec::new()),
            }),
        }
    }

    /// The URL the command is given for the proxy listening on `addr` (`host:port`):
    /// `http://kz:<credential>@addr`. Every request and `CONNECT` on the proxy port must carry
    /// that credential (`Proxy-Authorization: Basic`); anything else gets `407`.
    pub fn url_for(&self, addr: &str) -> String {
        format!(
            "http://kz:{}@{addr}",
            self.shared.credential.password.as_str()
        )
    }

    /// The counts so far.
    pub fn summary(&self) -> Summary {
        let s = &self.shared;
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        Summary {
            requests: get(&s.counters.requests),
            swapped_requests: get(&s.counters.swapped_requests),
            refused: get(&s.counters.refused),
            scrubbed: get(&s.counters.scrubbed),
            audit_failures: get(&s.counters.audit_failures),
            failed: get(&s.counters.failed),
            failures: s.failures.lock().map(|f| f.clone()).unwrap_or_default(),
            stopped_by: s.stopped.get().map(|&i| self.secret_name(i)),
            per_secret: s
                .table
                .secrets
                .iter()
                .zip(s.swaps.iter().zip(&s.scrubs))
                .map(|(sec, (w, c))| (sec.name.clone(), get(w), get(c)))
                .collect(),
        }
    }

    /// Registers what to call (once, with the secret's name, never its value) when the command
    /// sends a secret value and blind mode stops.
    pub fn on_stop(&self, hook: impl Fn(&str) + Send + Sync + 'static) {
        let _ = self.shared.on_stop.set(Box::new(hook));
    }

    /// Whether blind mode has stopped (the command sent a secret value).
    pub fn is_stopped(&self) -> bool {
        self.shared.stopped.get().is_some()
    }

    fn secret_name(&self, i: usize) -> String {
        self.shared
            .table
            .secrets
            .get(i)
            .map_or_else(|| "?".to_string(), |s| s.name.clone())
    }

    /// Closes the latch on secret `i` (the first call wins) and tells kz once.
    fn latch(&self, i: usize) {
        let s = &self.shared;
        if s.stopped.set(i).is_ok()
            && let Some(hook) = s.on_stop.get()
        {
            hook(&self.secret_name(i));
        }
    }

    /// Any request once the latch is closed: `403` [`STOPPED`], audited, nothing sent.
    async fn refuse_stopped(
        &self,
        req: Request<Incoming>,
        dest: Option<Destination>,
    ) -> Response<ProxyBody> {
        let method = req.method().clone();
        let path = if method == Method::CONNECT {
            String::new()
        } else {
            req.uri().path().to_string()
        };
        drain(req.into_body()).await;
        self.stopped_response(&method, dest.as_ref(), &path, "blind mode stopped", &[])
    }

    fn stopped_response(
        &self,
        method: &Method,
        dest: Option<&Destination>,
        path: &str,
        reason: &str,
        secrets: &[usize],
    ) -> Response<ProxyBody> {
        self.shared.counters.refused.fetch_add(1, Ordering::Relaxed);
        let record = Record::new(Transport::Blind)
            .mode("refuse")
            .decision(Decision::Deny)
            .reason(reason.to_string());
        match dest {
            Some(d) => {
                self.audit(record, method, d, path, secrets);
            }
            None => {
                if let Some(writer) = &self.shared.audit
                    && writer.try_append(record.method(method.as_str())).is_err()
                {
                    self.shared
                        .counters
                        .audit_failures
                        .fetch_add(1, Ordering::Relaxed);
                }
            }
        }
        text(StatusCode::FORBIDDEN, STOPPED.to_string())
    }

    /// Serves proxy connections accepted on `listener` until the task is dropped.
    pub async fn serve_tcp(&self, listener: tokio::net::TcpListener) -> std::io::Result<()> {
        loop {
            let (stream, _) = listener.accept().await?;
            let _ = stream.set_nodelay(true);
            self.spawn_connection(stream);
        }
    }

    /// Serves proxy connections accepted on a Unix socket (`--isolate`'s relay).
    pub async fn serve_unix(&self, listener: tokio::net::UnixListener) -> std::io::Result<()> {
        loop {
            let (stream, _) = listener.accept().await?;
            self.spawn_connection(stream);
        }
    }

    fn spawn_connection<S>(&self, stream: S)
    where
        S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let proxy = self.clone();
        tokio::spawn(async move {
            let service = service(proxy.clone(), Origin::Proxy);
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .with_upgrades()
                .await;
        });
    }

    async fn handle(&self, req: Request<Incoming>, origin: Origin) -> Response<ProxyBody> {
        self.shared
            .counters
            .requests
            .fetch_add(1, Ordering::Relaxed);
        match origin {
            Origin::Proxy if !self.shared.credential.check(req.headers()) => {
                self.refuse_unauthenticated(req).await
            }
            // The latch is closed: nothing more goes out, whatever the request.
            Origin::Tunnel(dest) if self.is_stopped() => self.refuse_stopped(req, Some(dest)).await,
            Origin::Proxy if self.is_stopped() => {
                let dest = if req.method() == Method::CONNECT {
                    req.uri()
                        .authority()
                        .and_then(|a| policy::destination_from_authority(a.as_str(), true, 0).ok())
                } else {
                    policy::destination_from_absolute(req.uri()).ok()
                };
                self.refuse_stopped(req, dest).await
            }
            // Inside a tunnel whose `CONNECT` was authenticated.
            Origin::Tunnel(dest) => self.forward(req, dest).await,
            Origin::Proxy if req.method() == Method::CONNECT => self.connect(req).await,
            Origin::Proxy => match policy::destination_from_absolute(req.uri()) {
                Ok(dest) if req.uri().scheme().is_some() => self.forward(req, dest).await,
                Ok(_) | Err(_) => text(
                    StatusCode::BAD_REQUEST,
                    "kz blind: this is a proxy; send requests in absolute form \
                     (http://host/path) or use CONNECT\n"
                        .to_string(),
                ),
            },
        }
    }

    /// A request or `CONNECT` on the proxy port without the proxy credential: `407`, audited.
    async fn refuse_unauthenticated(&self, req: Request<Incoming>) -> Response<ProxyBody> {
        self.shared.counters.refused.fetch_add(1, Ordering::Relaxed);
        let method = req.method().clone();
        let dest = if method == Method::CONNECT {
            req.uri()
                .authority()
                .and_then(|a| policy::destination_from_authority(a.as_str(), true, 0).ok())
        } else {
            policy::destination_from_absolute(req.uri()).ok()
        };
        let presented = req.headers().contains_key(header::PROXY_AUTHORIZATION);
        let path = if method == Method::CONNECT {
            String::new()
        } else {
            req.uri().path().to_string()
        };
        drain(req.into_body()).await;
        let reason = if presented {
            "wrong proxy credential"
        } else {
            "no proxy credential"
        };
        if let Some(writer) = &self.shared.audit {
            let mut record = Record::new(Transport::Blind)
                .mode("refuse")
                .decision(Decision::Deny)
                .reason(reason)
                .method(method.as_str());
            if let Some(d) = &dest {
                record = record.host(policy::host_port(&d.host, d.port));
            }
            if !path.is_empty() {
                record = record.path(path);
            }
            if writer.try_append(record).is_err() {
                self.shared
                    .counters
                    .audit_failures
                    .fetch_add(1, Ordering::Relaxed);
            }
        }
        let mut r = text(
            StatusCode::PROXY_AUTHENTICATION_REQUIRED,
            format!(
                "kz blind: {reason}. This proxy serves only the command kz started: use the proxy \
                 URL in its environment (HTTP_PROXY, HTTPS_PROXY or KZ_PROXY_URL), credential \
                 included.\n"
            ),
        );
        r.headers_mut().insert(
            header::PROXY_AUTHENTICATE,
            HeaderValue::from_static("Basic realm=\"kz\""),
        );
        r
    }

    /// `CONNECT host:port`: the destination is checked before the tunnel is answered.
    async fn connect(&self, mut req: Request<Incoming>) -> Response<ProxyBody> {
        let authority = req.uri().authority().map(|a| a.as_str().to_string());
        // The ingress check on the `CONNECT` target and headers too (see `forward`).
        let mut hits = self
            .shared
            .values
            .values_in(req.uri().to_string().as_bytes());
        hits.extend(self.shared.values.values_in_headers(req.headers()));
        if let Some(i) = hits.into_iter().next() {
            self.latch(i);
            return self.stopped_response(
                &Method::CONNECT,
                None,
                "",
                "the command sent a secret value; blind mode stopped",
                &[i],
            );
        }
        let dest = match authority
            .as_deref()
            .ok_or_else(|| "CONNECT needs host:port".to_string())
            .and_then(|a| policy::destination_from_authority(a, true, 0))
        {
            Ok(d) => d,
            Err(e) => return text(StatusCode::BAD_REQUEST, format!("kz blind: {e}\n")),
        };
        let explicit = match self.shared.policy.connection(&dest.host, dest.port) {
            Verdict::Allow { explicit } => explicit,
            Verdict::Deny(reason) => {
                return self.refuse_host(&Method::CONNECT, &dest, "", &reason);
            }
        };
        // The address check too, before the tunnel is answered (each connection made later is
        // checked again, against the address it actually uses).
        match self
            .shared
            .resolver
            .resolve(&dest.host, dest.port, explicit)
            .await
        {
            Ok(_) => {}
            Err(reason) if reason.starts_with("cannot resolve") => {
                return self.bad_gateway(reason);
            }
            Err(reason) => return self.refuse_host(&Method::CONNECT, &dest, "", &reason),
        }
        let on_upgrade = hyper::upgrade::on(&mut req);
        let proxy = self.clone();
        tokio::spawn(async move {
            if let Ok(upgraded) = on_upgrade.await {
                proxy.tunnel(TokioIo::new(upgraded), dest).await;
            }
        });
        Response::new(empty())
    }

    /// Inside a tunnel: TLS (terminated with a leaf for the `CONNECT` host) or plain HTTP.
    async fn tunnel<S>(&self, mut stream: S, mut dest: Destination)
    where
        S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let mut first = [0u8; 1];
        let Ok(n) = stream.read(&mut first).await else {
            return;
        };
        if n == 0 {
            return;
        }
        let stream = Prefixed::new(first.to_vec(), stream);
        let builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
        if first == [0x16] {
            let Ok(config) = self.shared.ca.server_config(&dest.host) else {
                return;
            };
            let Ok(tls) = tokio_rustls::TlsAcceptor::from(config).accept(stream).await else {
                return;
            };
            dest.https = true;
            let service = service(self.clone(), Origin::Tunnel(dest));
            let _ = builder
                .serve_connection_with_upgrades(TokioIo::new(tls), service)
                .await;
        } else {
            dest.https = false;
            let service = service(self.clone(), Origin::Tunnel(dest));
            let _ = builder
                .serve_connection_with_upgrades(TokioIo::new(stream), service)
                .await;
        }
    }

    /// Checks, swaps, sends and scrubs one request.
    async fn forward(&self, mut req: Request<Incoming>, dest: Destination) -> Response<ProxyBody> {
        let s = &self.shared;
        let method = req.method().clone();
        let path = req.uri().path().to_string();
        // No value from the command: it only ever holds tokens, so a value or a fragment of one
        // (in the same decoded view as scrubbing) in anything it sends, to any host, bound or
        // not, means a leak or a guess. Checked on the bytes as sent, before any other check and
        // before anything is swapped; the first one closes the latch (see `latch`). The whole
        // target (an absolute-form request's host too), header names and values here, the body
        // below.
        let any = |hits: Vec<usize>| hits.into_iter().next();
        let mut head_hits = s.values.values_in(req.uri().to_string().as_bytes());
        head_hits.extend(s.values.values_in_headers(req.headers()));
        if let Some(i) = any(head_hits) {
            drain(req.into_body()).await;
            return self.swap_refusal(&method, &dest, &path, SwapError::Value(i));
        }
        if let Verdict::Deny(reason) = s.policy.connection(&dest.host, dest.port) {
            drain(req.into_body()).await;
            return self.refuse_host(&method, &dest, &path, &reason);
        }
        if method == Method::CONNECT {
            return text(
                StatusCode::METHOD_NOT_ALLOWED,
                "kz blind: CONNECT inside a tunnel is not supported\n".into(),
            );
        }
        let websocket = is_websocket(req.headers());
        let client_upgrade = websocket.then(|| hyper::upgrade::on(&mut req));
        let (mut parts, body) = req.into_parts();
        // A value travels in clear text only to a host a pattern written `http://…` names;
        // everywhere else only inside TLS.
        // …and, for a secret bound by method and path, only for those (checked on the path as
        // sent, before any header is written).
        let allowed = |i: usize| {
            s.table.secrets.get(i).is_some_and(|sec| {
                sec.may_send(&dest.host, dest.port, dest.https)
                    && sec.may_use(method.as_str(), &path).is_ok()
            })
        };

        // The head: target and headers.
        let target = parts
            .uri
            .path_and_query()
            .map_or("/", |pq| pq.as_str())
            .to_string();
        let mut used = Vec::new();
        let target = match s.swapper.swap_target(&target, &allowed) {
            Ok(Some((t, u))) => {
                used.extend(u);
                t
            }
            Ok(None) => target,
            Err(e) => {
                drain(body).await;
                return self.swap_refusal(&method, &dest, &path, e);
            }
        };
        strip_hop_by_hop(&mut parts.headers, websocket);
        parts.headers.remove(header::EXPECT);
        // The upstream learns its host from the destination only: a `Host` naming another site
        // on a shared front end would otherwise route the value there.
        parts.headers.remove(header::HOST);
        if websocket {
            parts.headers.remove(header::SEC_WEBSOCKET_EXTENSIONS);
        }
        if s.scrubber.is_some() {
            limit_accept_encoding(&mut parts.headers);
            // A value read back in slices would match no pattern: responses come whole.
            parts.headers.remove(header::RANGE);
            parts.headers.remove(header::IF_RANGE);
        }
        let basic_before = parts.headers.get(header::AUTHORIZATION).cloned();
        match s.swapper.swap_headers(&mut parts.headers, &allowed) {
            Ok(u) => used.extend(u),
            Err(e) => {
                drain(body).await;
                return self.swap_refusal(&method, &dest, &path, e);
            }
        }
        // `Authorization: Basic` carries the value inside base64 with the user name, a form the
        // run-wide scrubber cannot know: an upstream that echoes the header gets it scrubbed by
        // this request's own pair (what was sent -> what the child wrote).
        let echo = basic_echo(
            &s.swapper,
            basic_before.as_ref(),
            parts.headers.get(header::AUTHORIZATION),
        );

        // The body: buffered when its length is known and bounded (or it is compressed),
        // streamed otherwise.
        if parts
            .headers
            .get_all(header::CONTENT_ENCODING)
            .iter()
            .count()
            > 1
        {
            drain(body).await;
            return text(
                StatusCode::BAD_REQUEST,
                "kz blind: several Content-Encoding headers; send one\n".into(),
            );
        }
        let length = content_length(&parts.headers);
        let coding = parts
            .headers
            .get(header::CONTENT_ENCODING)
            .and_then(|v| v.to_str().ok())
            .map(|v| v.trim().to_ascii_lowercase());
        let compressed = coding
            .as_deref()
            .filter(|c| !c.is_empty() && *c != "identity");
        let forbidden = Arc::new(std::sync::Mutex::new(None));
        // Bodies that end within the limit are checked whole before anything is sent; longer
        // ones stream (a forbidden token then cuts the upload off).
        // Bodies held in memory across all requests are bounded: a request that would go over
        // waits for others to finish.
        let _budget =
            if http_body::Body::is_end_stream(&body) || length.is_some_and(|l| l <= SMALL_BODY) {
                None
            } else {
                let mib = match length {
                    Some(l) if compressed.is_none() => (l >> 20) + 1,
                    _ => (BUFFER_LIMIT >> 20) as u64,
                };
                let permits = u32::try_from(mib.min((BUFFER_LIMIT >> 20) as u64)).unwrap_or(16);
                Arc::clone(&s.buffer_budget)
                    .acquire_many_owned(permits)
                    .await
                    .ok()
            };
        let prefix = if length == Some(0) {
            Prefix::Complete(Bytes::new())
        } else if compressed.is_none() && length.is_some_and(|l| l > BUFFER_LIMIT as u64) {
            Prefix::Partial(Bytes::new(), body)
        } else {
            match read_prefix(body, BUFFER_LIMIT).await {
                Ok(p) => p,
                Err(e) => {
                    return text(
                        StatusCode::BAD_REQUEST,
                        format!("kz blind: reading the request body failed: {e}\n"),
                    );
                }
            }
        };
        let body: ProxyBody = match prefix {
            Prefix::Complete(bytes) if bytes.is_empty() => empty(),
            Prefix::Complete(bytes) => {
                let found = match compressed {
                    Some(enc) => rewrite::decode_body(enc, &bytes, DECODED_LIMIT)
                        .map(|plain| s.values.values_in(&plain)),
                    None => Ok(s.values.values_in(&bytes)),
                };
                match found.map(any) {
                    Ok(None) => {}
                    Ok(Some(i)) => {
                        return self.swap_refusal(&method, &dest, &path, SwapError::Value(i));
                    }
                    Err(e) => return self.swap_refusal(&method, &dest, &path, e),
                }
                let swapped = match compressed {
                    Some(enc) => rewrite::decode_body(enc, &bytes, DECODED_LIMIT)
                        .and_then(|plain| s.swapper.swap_buffer(&plain, &allowed))
                        .and_then(|(plain, u)| {
                            if u.is_empty() {
                                Ok((bytes.to_vec(), u))
                            } else {
                                rewrite::encode_body(enc, &plain).map(|b| (b, u))
                            }
                        }),
                    None => s.swapper.swap_buffer(&bytes, &allowed),
                };
                match swapped {
                    Ok((b, u)) => {
                        used.extend(u);
                        parts
                            .headers
                            .insert(header::CONTENT_LENGTH, HeaderValue::from(b.len()));
                        full(b)
                    }
                    Err(e) => return self.swap_refusal(&method, &dest, &path, e),
                }
            }
            Prefix::Partial(..) if compressed.is_some() => {
                return text(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    format!(
                        "kz blind: a compressed request body larger than {} MiB cannot be checked\n",
                        BUFFER_LIMIT >> 20
                    ),
                );
            }
            Prefix::Partial(head, rest) => {
                parts.headers.remove(header::CONTENT_LENGTH);
                let proxy = self.clone();
                let (m, d, p) = (method.clone(), dest.clone(), path.clone());
                MapBody::new(
                    prefixed_body(head, rest),
                    SwapTransform {
                        inner: s.swapper.stream(&allowed),
                        values: s.values.stream(),
                        proxy: self.clone(),
                        forbidden: Arc::clone(&forbidden),
                        audited: Vec::new(),
                        on_use: Box::new(move |new: &[usize]| proxy.record_swap(&m, &d, &p, new)),
                    },
                )
                .boxed_unsync()
            }
        };

        used.sort_unstable();
        used.dedup();
        if !used.is_empty() && !self.record_swap(&method, &dest, &path, &used) {
            return text(
                StatusCode::SERVICE_UNAVAILABLE,
                "kz blind: the audit log cannot be written, so no secret is sent\n".into(),
            );
        }

        // The latch may have closed while this request was checked (another request).
        if self.is_stopped() {
            return self.stopped_response(&method, Some(&dest), &path, "blind mode stopped", &[]);
        }
        let uri = match upstream_uri(&dest, &target) {
            Ok(u) => u,
            Err(e) => return text(StatusCode::BAD_REQUEST, format!("kz blind: {e}\n")),
        };
        parts.uri = uri;
        parts.version = Version::HTTP_11;
        let request = Request::from_parts(parts, body);
        let sent = if websocket {
            s.ws_client.request(request).await
        } else {
            s.client.request(request).await
        };
        let mut response = match sent {
            Ok(r) => r,
            Err(e) => {
                if let Ok(mut f) = forbidden.lock()
                    && let Some(e) = f.take()
                {
                    return self.swap_refusal(&method, &dest, &path, e);
                }
                return match upstream::classify_error(&e) {
                    ConnectError::Refused(reason) => {
                        self.refuse_host(&method, &dest, &path, &reason)
                    }
                    ConnectError::Failed(reason) => self.bad_gateway(format!(
                        "upstream {}:{} failed: {reason}\n",
                        dest.host, dest.port
                    )),
                };
            }
        };
        if let Ok(mut f) = forbidden.lock()
            && let Some(e) = f.take()
        {
            // The upstream answered although the upload was cut off at a forbidden token or
            // value.
            return self.swap_refusal(&method, &dest, &path, e);
        }
        if let Some(client_upgrade) = client_upgrade
            && response.status() == StatusCode::SWITCHING_PROTOCOLS
        {
            let upstream_upgrade = hyper::upgrade::on(&mut response);
            let proxy = self.clone();
            let (ws_method, dest, path) = (method.clone(), dest.clone(), path.clone());
            tokio::spawn(async move {
                let (Ok(c), Ok(u)) = tokio::join!(client_upgrade, upstream_upgrade) else {
                    return;
                };
                let scrub: Option<Arc<dyn crate::ws::TextScrub>> =
                    proxy.shared.scrubber.is_some().then(|| {
                        Arc::new(WsScrub(
                            proxy.clone(),
                            ws_method.clone(),
                            dest.clone(),
                            path.clone(),
                        )) as Arc<dyn crate::ws::TextScrub>
                    });
                let p = proxy.clone();
                let _ = crate::ws::relay(TokioIo::new(c), TokioIo::new(u), scrub, move |hits| {
                    p.scrubbed(&ws_method, &dest, &path, &hits);
                })
                .await;
            });
        }
        self.respond(response, &method, &dest, &path, echo).await
    }

    /// The response on its way back: hop-by-hop headers dropped, values scrubbed.
    async fn respond(
        &self,
        response: Response<Incoming>,
        method: &Method,
        dest: &Destination,
        path: &str,
        echo: Option<Echo>,
    ) -> Response<ProxyBody> {
        let (mut parts, body) = response.into_parts();
        let unknown_transfer_coding = parts
            .headers
            .get_all(header::TRANSFER_ENCODING)
            .iter()
            .flat_map(|v| v.to_str().unwrap_or("?").split(','))
            .any(|c| !c.trim().eq_ignore_ascii_case("chunked"));
        let stacked = parts
            .headers
            .get_all(header::CONTENT_ENCODING)
            .iter()
            .count()
            > 1;
        if self.shared.scrubber.is_some() && (unknown_transfer_coding || stacked) {
            return self.bad_gateway(format!(
                "{}:{} answered with a transfer or content coding kz cannot decode, \
                     so the response cannot be checked for secret values\n",
                dest.host, dest.port
            ));
        }
        let upgrade = parts.status == StatusCode::SWITCHING_PROTOCOLS;
        strip_hop_by_hop(&mut parts.headers, upgrade);
        let Some(scrubber) = &self.shared.scrubber else {
            return Response::from_parts(parts, body.map_err(BoxError::from).boxed_unsync());
        };
        let mut hits = scrub_fields(scrubber, echo.as_ref(), &mut parts.headers);
        hits.extend(scrub_reason(scrubber, &mut parts.extensions));
        self.scrubbed(method, dest, path, &hits);
        let bodiless = method == Method::HEAD
            || parts.status.is_informational()
            || parts.status == StatusCode::NO_CONTENT
            || parts.status == StatusCode::NOT_MODIFIED;
        if bodiless {
            return Response::from_parts(parts, body.map_err(BoxError::from).boxed_unsync());
        }
        let Some(encoding) = Encoding::parse(parts.headers.get(header::CONTENT_ENCODING)) else {
            return self.bad_gateway(format!(
                "{}:{} answered with a content-encoding kz cannot decode, so the \
                     response cannot be checked for secret values\n",
                dest.host, dest.port
            ));
        };
        let mut body = body.map_err(BoxError::from).boxed_unsync();
        if encoding != Encoding::Identity {
            parts.headers.remove(header::CONTENT_ENCODING);
            parts.headers.remove(header::CONTENT_LENGTH);
            body = body::decoded(body, encoding);
        } else if content_length(&parts.headers).is_some_and(|l| l <= RESPONSE_BUFFER_LIMIT) {
            // Small bodies are scrubbed whole and keep an exact length.
            let bytes = match body.collect().await {
                Ok(b) => b.to_bytes(),
                Err(e) => {
                    return self.bad_gateway(format!(
                        "reading the response from {}:{} failed: {e}\n",
                        dest.host, dest.port
                    ));
                }
            };
            let (echoed, mut hits) = match &echo {
                Some(e) => e.apply(&bytes),
                None => (bytes.to_vec(), Vec::new()),
            };
            let (out, h) = scrubber.scrub_buffer(&echoed);
            hits.extend(h);
            hits.sort_unstable();
            hits.dedup();
            self.scrubbed(method, dest, path, &hits);
            parts
                .headers
                .insert(header::CONTENT_LENGTH, HeaderValue::from(out.len()));
            return Response::from_parts(parts, full(out));
        } else {
            parts.headers.remove(header::CONTENT_LENGTH);
        }
        let proxy = self.clone();
        let (method, dest, path) = (method.clone(), dest.clone(), path.to_string());
        let transform = ScrubTransform {
            inner: scrubber.stream(),
            echo,
            scrubber: scrubber.clone(),
            trailer_hits: Vec::new(),
            done: Some(Box::new(move |hits: Vec<usize>| {
                proxy.scrubbed(&method, &dest, &path, &hits);
            })),
        };
        Response::from_parts(parts, MapBody::new(body, transform).boxed_unsync())
    }

    /// A `502`: the upstream could not be reached or its answer cannot be checked. The reason
    /// (a host, a port, a network or coding error, never a value) goes to the command in the
    /// body and is kept, distinct reasons up to [`FAILURE_REASONS`], for kz's `-v` summary.
    fn bad_gateway(&self, reason: String) -> Response<ProxyBody> {
        let reason = reason.trim_end();
        self.shared.counters.failed.fetch_add(1, Ordering::Relaxed);
        if let Ok(mut f) = self.shared.failures.lock()
            && f.len() < FAILURE_REASONS
            && !f.iter().any(|r| r == reason)
        {
            f.push(reason.to_string());
        }
        text(StatusCode::BAD_GATEWAY, format!("kz blind: {reason}\n"))
    }

    /// Audits and counts a swap; `false` when the audit log refused the record (the value must
    /// not be sent).
    fn record_swap(&self, method: &Method, dest: &Destination, path: &str, used: &[usize]) -> bool {
        if !self.audit(
            Record::new(Transport::Blind)
                .mode("swap")
                .decision(Decision::Allow),
            method,
            dest,
            path,
            used,
        ) {
            return false;
        }
        let s = &self.shared;
        s.counters.swapped_requests.fetch_add(1, Ordering::Relaxed);
        for i in used {
            if let Some(c) = s.swaps.get(*i) {
                c.fetch_add(1, Ordering::Relaxed);
            }
        }
        true
    }

    fn scrubbed(&self, method: &Method, dest: &Destination, path: &str, hits: &[usize]) {
        if hits.is_empty() {
            return;
        }
        let s = &self.shared;
        s.counters.scrubbed.fetch_add(1, Ordering::Relaxed);
        for i in hits {
            if let Some(c) = s.scrubs.get(*i) {
                c.fetch_add(1, Ordering::Relaxed);
            }
        }
        self.audit(
            Record::new(Transport::Blind)
                .mode("scrub")
                .decision(Decision::Allow),
            method,
            dest,
            path,
            hits,
        );
    }

    fn swap_refusal(
        &self,
        method: &Method,
        dest: &Destination,
        path: &str,
        err: SwapError,
    ) -> Response<ProxyBody> {
        let name = |i: usize| {
            self.shared
                .table
                .secrets
                .get(i)
                .map_or("?", |s| s.name.as_str())
                .to_string()
        };
        let (status, idx, body, reason) = match err {
            SwapError::Forbidden(i)
                if !dest.https
                    && self
                        .shared
                        .table
                        .secrets
                        .get(i)
                        .is_some_and(|sec| sec.may_reach(&dest.host, dest.port)) =>
            {
                (
                    StatusCode::FORBIDDEN,
                    Some(i),
                    format!(
                        "kz blind: {} would travel unencrypted to http://{host}; blind mode sends \
                         values over plain HTTP only to a binding that names the scheme. Use \
                         https://, or bind `http://{host}` in the secret's `hosts` (or pass \
                         --allow-host http://{host}) to allow it. The request was not sent.\n",
                        name(i),
                        host = policy::host_port(&dest.host, dest.port),
                    ),
                    "secret would travel unencrypted".to_string(),
                )
            }
            SwapError::Forbidden(i)
                if let Some(Err(refusal)) = self
                    .shared
                    .table
                    .secrets
                    .get(i)
                    .filter(|sec| sec.may_send(&dest.host, dest.port, dest.https))
                    .map(|sec| sec.may_use(method.as_str(), path)) =>
            {
                let binding = self
                    .shared
                    .table
                    .secrets
                    .get(i)
                    .map(|sec| sec.binding.clone())
                    .unwrap_or_default();
                let (what, reason) = match refusal {
                    BindingRefusal::Method => (
                        format!(
                            "for {method}: it may be used only for {} (its `methods`)",
                            binding.methods
                        ),
                        "secret not bound to this method".to_string(),
                    ),
                    BindingRefusal::Path => (
                        format!(
                            "on the path {path}: it may be used only on {} (its `paths`)",
                            binding.paths_text()
                        ),
                        "secret not bound to this path".to_string(),
                    ),
                    BindingRefusal::AmbiguousPath(why) => (
                        format!(
                            "on this path: {why}, and its `paths` cannot say which resource it names"
                        ),
                        "ambiguous path for a path-bound secret".to_string(),
                    ),
                };
                (
                    StatusCode::FORBIDDEN,
                    Some(i),
                    format!(
                        "kz blind: {} may not be sent to {} {what}. The request was not sent. If \
                         this call is intended, add it to the secret's `methods`/`paths` in \
                         .keyzero.toml.\n",
                        name(i),
                        policy::host_port(&dest.host, dest.port),
                    ),
                    reason,
                )
            }
            SwapError::Forbidden(i) => {
                let allowed = self
                    .shared
                    .table
                    .secrets
                    .get(i)
                    .map(|s| {
                        s.hosts
                            .iter()
                            .map(ToString::to_string)
                            .collect::<Vec<_>>()
                            .join(", ")
                    })
                    .unwrap_or_default();
                (
                    StatusCode::FORBIDDEN,
                    Some(i),
                    format!(
                        "kz blind: {} may not be sent to {}:{} (it may go to: {allowed}). The \
                         request was not sent. If this host is intended, add it to the secret's \
                         `hosts` in .keyzero.toml or pass --allow-host.\n",
                        name(i),
                        dest.host,
                        dest.port
                    ),
                    "secret not bound to this host".to_string(),
                )
            }
            SwapError::Value(i) => {
                // The command sent a value: close the latch. The answer is the same whatever
                // matched; the audit record names the secret.
                self.latch(i);
                return self.stopped_response(
                    method,
                    Some(dest),
                    path,
                    "the command sent a secret value; blind mode stopped",
                    &[i],
                );
            }
            SwapError::IllegalInHeader(i) => (
                StatusCode::BAD_REQUEST,
                Some(i),
                format!(
                    "kz blind: the value of {} contains CR, LF or NUL, which cannot go into a \
                     header; the request was not sent\n",
                    name(i)
                ),
                "value not allowed in a header".to_string(),
            ),
            SwapError::Decode(e) => (
                StatusCode::BAD_REQUEST,
                None,
                format!("kz blind: the request body could not be decoded: {e}\n"),
                format!("request body could not be decoded: {e}"),
            ),
        };
        self.shared.counters.refused.fetch_add(1, Ordering::Relaxed);
        let secrets: Vec<usize> = idx.into_iter().collect();
        self.audit(
            Record::new(Transport::Blind)
                .mode("refuse")
                .decision(Decision::Deny)
                .reason(reason),
            method,
            dest,
            path,
            &secrets,
        );
        text(status, body)
    }

    fn refuse_host(
        &self,
        method: &Method,
        dest: &Destination,
        path: &str,
        reason: &str,
    ) -> Response<ProxyBody> {
        self.shared.counters.refused.fetch_add(1, Ordering::Relaxed);
        self.audit(
            Record::new(Transport::Blind)
                .mode("refuse")
                .decision(Decision::Deny)
                .reason(reason.to_string()),
            method,
            dest,
            path,
            &[],
        );
        text(
            StatusCode::FORBIDDEN,
            format!(
                "kz blind: connection to {}:{} refused: {reason}\n",
                dest.host, dest.port
            ),
        )
    }

    /// What an audit record says instead of a host or path that carried a secret value.
    const WITHHELD: &str = "[withheld: it carried a secret value]";

    /// Writes an audit record; `false` when the writer refused it.
    fn audit(
        &self,
        record: Record,
        method: &Method,
        dest: &Destination,
        path: &str,
        secrets: &[usize],
    ) -> bool {
        let Some(writer) = &self.shared.audit else {
            return true;
        };
        let names: Vec<&str> = secrets
            .iter()
            .filter_map(|i| self.shared.table.secrets.get(*i))
            .map(|s| s.name.as_str())
            .collect();
        // What the command sent is recorded only when it carries no secret value (a request
        // refused for carrying one would otherwise put it in the log).
        let carries = |s: &str| !self.shared.values.values_in(s.as_bytes()).is_empty();
        let host = format!("{}:{}", dest.host, dest.port);
        let mut record = record.method(method.as_str()).host(if carries(&host) {
            Self::WITHHELD.to_owned()
        } else {
            host
        });
        if !path.is_empty() {
            record = record.path(if carries(path) { Self::WITHHELD } else { path });
        }
        if !names.is_empty() {
            record = record.secrets(names);
        }
        if writer.try_append(record).is_err() {
            self.shared
                .counters
                .audit_failures
                .fetch_add(1, Ordering::Relaxed);
            return false;
        }
        true
    }
}

/// The hyper service for one connection.
fn service(
    proxy: Proxy,
    origin: Origin,
) -> impl hyper::service::Service<
    Request<Incoming>,
    Response = Response<ProxyBody>,
    Error = Infallible,
    Future = impl Future<Output = Result<Response<ProxyBody>, Infallible>> + Send,
> + Clone
+ Send
+ 'static {
    service_fn(move |req: Request<Incoming>| {
        let proxy = proxy.clone();
        let origin = origin.clone();
        async move { Ok::<_, Infallible>(proxy.handle(req, origin).await) }
    })
}

/// The WebSocket scrub, and the check of the command's frames, for one connection (the
/// handshake's method, destination and path, for the audit).
struct WsScrub(Proxy, Method, Destination, String);

impl crate::ws::TextScrub for WsScrub {
    fn scrub(&self, payload: &[u8]) -> (Vec<u8>, Vec<usize>) {
        match &self.0.shared.scrubber {
            Some(s) => s.scrub_buffer(payload),
            None => (payload.to_vec(), Vec::new()),
        }
    }

    /// The check for values from the command, over its frames: a hit closes the latch; a latch
    /// closed by any request stops the frames too.
    fn client_check(&self) -> Option<crate::ws::ClientCheck> {
        let proxy = self.0.clone();
        let (method, dest, path) = (self.1.clone(), self.2.clone(), self.3.clone());
        let mut stream = proxy.shared.values.stream();
        Some(Box::new(move |payload: &[u8]| {
            if let Some(i) = stream.check(payload).into_iter().next() {
                proxy.latch(i);
                let _ = proxy.stopped_response(
                    &method,
                    Some(&dest),
                    &path,
                    "the command sent a secret value in a WebSocket frame; blind mode stopped",
                    &[i],
                );
                return false;
            }
            !proxy.is_stopped()
        }))
    }
}

/// Audits a secret's first swap in a streamed body; `false` stops the upload.
type OnUse = Box<dyn FnMut(&[usize]) -> bool + Send>;

/// Streaming swap of a request body. Each secret's first swap is audited before the bytes
/// holding its value leave; a refused audit record cuts the upload off.
struct SwapTransform {
    inner: BodySwap,
    /// The ingress check over the body as it streams.
    values: ScrubStream,
    /// For the latch.
    proxy: Proxy,
    /// Why the upload was cut off: `Forbidden` (a token) or `Value` (a value).
    forbidden: Arc<std::sync::Mutex<Option<SwapError>>>,
    audited: Vec<usize>,
    on_use: OnUse,
}

impl SwapTransform {
    fn check(&self, r: Result<(), SwapError>) -> Result<(), BoxError> {
        if let Err(e @ (SwapError::Forbidden(_) | SwapError::Value(_))) = &r
            && let Ok(mut f) = self.forbidden.lock()
        {
            *f = Some(match e {
                SwapError::Value(i) => SwapError::Value(*i),
                SwapError::Forbidden(i) => SwapError::Forbidden(*i),
                _ => SwapError::Decode(String::new()),
            });
        }
        r.map_err(|e| BoxError::from(e.to_string()))
    }

    /// The ingress check of a streamed body: a value (or fragment) of any secret closes the
    /// latch and stops the upload before the chunk that completes it is passed on; a latch
    /// closed by another request stops it too.
    fn check_values(&self, hits: Vec<usize>) -> Result<(), SwapError> {
        if let Some(i) = hits.into_iter().next() {
            self.proxy.latch(i);
            return Err(SwapError::Value(i));
        }
        match self.proxy.shared.stopped.get() {
            Some(&i) => Err(SwapError::Value(i)),
            None => Ok(()),
        }
    }
}

impl SwapTransform {
    fn audit_new(&mut self, out: &mut Vec<u8>) -> Result<(), BoxError> {
        let new: Vec<usize> = self
            .inner
            .used()
            .into_iter()
            .filter(|i| !self.audited.contains(i))
            .collect();
        if new.is_empty() {
            return Ok(());
        }
        if !(self.on_use)(&new) {
            zeroize::Zeroize::zeroize(out);
            return Err("the audit log cannot be written, so no secret is sent".into());
        }
        self.audited.extend(new);
        Ok(())
    }
}

impl Transform for SwapTransform {
    fn feed(&mut self, chunk: &[u8], out: &mut Vec<u8>) -> Result<(), BoxError> {
        let hits = self.values.check(chunk);
        let r = self.check_values(hits);
        self.check(r)?;
        let r = self.inner.feed(chunk, out);
        self.check(r)?;
        self.audit_new(out)
    }

    fn finish(&mut self, out: &mut Vec<u8>) -> Result<(), BoxError> {
        let hits = self.values.check_finish();
        let r = self.check_values(hits);
        self.check(r)?;
        let r = self.inner.finish(out);
        self.check(r)?;
        self.audit_new(out)
    }
}

/// A request's own scrub pair: the `Authorization: Basic` credentials sent upstream, turned back
/// into the ones the child wrote.
struct Echo {
    redactor: Redactor,
    /// The secrets inside.
    secrets: Vec<usize>,
}

impl Echo {
    /// `bytes` with the pair replaced, and the secrets inside when it occurred.
    fn apply(&self, bytes: &[u8]) -> (Vec<u8>, Vec<usize>) {
        let (out, h) = self.redactor.replace_all_hits(bytes);
        let secrets = if h.is_empty() {
            Vec::new()
        } else {
            self.secrets.clone()
        };
        (out, secrets)
    }
}

/// Scrubs header fields (the head or trailers): this request's echo pair, then every secret's
/// forms. Returns the secrets hidden.
fn scrub_fields(scrubber: &Scrubber, echo: Option<&Echo>, fields: &mut HeaderMap) -> Vec<usize> {
    let mut hits = Vec::new();
    if let Some(echo) = echo {
        for v in fields.values_mut() {
            let (new, h) = echo.apply(v.as_bytes());
            if !h.is_empty()
                && let Ok(nv) = HeaderValue::from_bytes(&new)
            {
                *v = nv;
                hits.extend(h);
            }
        }
    }
    hits.extend(scrubber.scrub_headers(fields));
    hits
}

/// Scrubs the status line's reason phrase (hyper keeps a non-standard one in the response's
/// extensions and writes it back out); one that cannot be rebuilt is dropped (the standard
/// phrase is sent). Returns the secrets hidden.
fn scrub_reason(scrubber: &Scrubber, extensions: &mut http::Extensions) -> Vec<usize> {
    use hyper::ext::ReasonPhrase;
    let Some(reason) = extensions.get::<ReasonPhrase>() else {
        return Vec::new();
    };
    let (out, hits) = scrubber.scrub_buffer(reason.as_bytes());
    if !hits.is_empty() {
        match ReasonPhrase::try_from(out) {
            Ok(r) => {
                extensions.insert(r);
            }
            Err(_) => {
                extensions.remove::<ReasonPhrase>();
            }
        }
    }
    hits
}

/// The echo pair when a swap changed an `Authorization: Basic` header.
fn basic_echo(
    swapper: &Swapper,
    before: Option<&HeaderValue>,
    after: Option<&HeaderValue>,
) -> Option<Echo> {
    use base64::Engine as _;
    let (before, after) = (before?.as_bytes(), after?.as_bytes());
    if before == after {
        return None;
    }
    let strip = |v: &[u8]| {
        v.get(..6)
            .filter(|p| p.eq_ignore_ascii_case(b"basic "))
            .and_then(|_| v.get(6..))
            .map(|rest| rest.trim_ascii().to_vec())
    };
    let (sent, written) = (strip(after)?, strip(before)?);
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(&written)
        .unwrap_or_default();
    Some(Echo {
        secrets: swapper.tokens_in(&decoded),
        redactor: Redactor::new([(sent, written)]),
    })
}

type Done = Box<dyn FnOnce(Vec<usize>) + Send>;

/// Response scrubbing: this request's echo pair first (it covers a longer form), then every
/// secret's forms.
struct ScrubTransform {
    inner: ScrubStream,
    echo: Option<Echo>,
    /// For trailers (header fields after the body).
    scrubber: Scrubber,
    trailer_hits: Vec<usize>,
    done: Option<Done>,
}

impl Transform for ScrubTransform {
    fn trailers(&mut self, trailers: &mut HeaderMap) {
        let hits = scrub_fields(&self.scrubber, self.echo.as_ref(), trailers);
        self.trailer_hits.extend(hits);
    }

    fn feed(&mut self, chunk: &[u8], out: &mut Vec<u8>) -> Result<(), BoxError> {
        match &mut self.echo {
            None => self.inner.feed(chunk, out),
            Some(echo) => {
                let mut tmp = Vec::with_capacity(chunk.len());
                echo.redactor.feed(chunk, &mut tmp);
                self.inner.feed(&tmp, out);
            }
        }
        Ok(())
    }

    fn finish(&mut self, out: &mut Vec<u8>) -> Result<(), BoxError> {
        let mut hits = Vec::new();
        if let Some(echo) = &mut self.echo {
            let mut tmp = Vec::new();
            echo.redactor.finish(&mut tmp);
            self.inner.feed(&tmp, out);
            if !echo.redactor.hits().is_empty() {
                hits.extend_from_slice(&echo.secrets);
            }
        }
        self.inner.finish(out);
        hits.extend(self.inner.take_hits());
        hits.append(&mut self.trailer_hits);
        hits.sort_unstable();
        hits.dedup();
        if let Some(done) = self.done.take() {
            done(hits);
        }
        Ok(())
    }
}

/// A request body read up to a limit.
enum Prefix {
    /// The whole body.
    Complete(Bytes),
    /// The first bytes read, and the rest still to come.
    Partial(Bytes, Incoming),
}

/// Reads `body` until it ends or holds more than `limit` bytes.
async fn read_prefix(mut body: Incoming, limit: usize) -> Result<Prefix, hyper::Error> {
    let mut buf = bytes::BytesMut::new();
    while let Some(frame) = body.frame().await {
        if let Ok(data) = frame?.into_data() {
            buf.extend_from_slice(&data);
            if buf.len() > limit {
                return Ok(Prefix::Partial(buf.freeze(), body));
            }
        }
    }
    Ok(Prefix::Complete(buf.freeze()))
}

/// `head` followed by the rest of `body`.
fn prefixed_body(head: Bytes, rest: Incoming) -> ProxyBody {
    use futures_util::StreamExt as _;
    let first = futures_util::stream::iter((!head.is_empty()).then(|| Ok(Frame::data(head))));
    let rest = http_body_util::BodyStream::new(rest).map(|r| r.map_err(BoxError::from));
    http_body_util::StreamBody::new(first.chain(rest)).boxed_unsync()
}

/// Reads (and drops) what is left of a request body before an early answer, so an HTTP/2 client
/// gets the answer rather than a reset stream. Bounded in size and time.
async fn drain(body: Incoming) {
    let _ = tokio::time::timeout(
        std::time::Duration::from_secs(2),
        Limited::new(body, 1 << 20).collect(),
    )
    .await;
}

fn text(status: StatusCode, body: String) -> Response<ProxyBody> {
    let mut r = Response::new(full(body));
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    r
}

fn content_length(headers: &HeaderMap) -> Option<u64> {
    headers
        .get(header::CONTENT_LENGTH)?
        .to_str()
        .ok()?
        .trim()
        .parse()
        .ok()
}

fn is_websocket(headers: &HeaderMap) -> bool {
    headers
        .get(header::UPGRADE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.trim().eq_ignore_ascii_case("websocket"))
}

/// Removes connection-level headers (and those the `Connection` header names); for an upgrade,
/// `Connection: upgrade` and `Upgrade` stay.
fn strip_hop_by_hop(headers: &mut HeaderMap, upgrade: bool) {
    let named: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|n| HeaderName::from_bytes(n.trim().as_bytes()).ok())
        .filter(|n| !(upgrade && *n == header::UPGRADE))
        .collect();
    for n in named {
        headers.remove(n);
    }
    for n in [
        header::PROXY_AUTHORIZATION,
        header::TE,
        header::TRAILER,
        header::TRANSFER_ENCODING,
    ] {
        headers.remove(n);
    }
    for n in ["proxy-connection", "keep-alive"] {
        headers.remove(n);
    }
    if upgrade {
        headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    } else {
        headers.remove(header::CONNECTION);
        headers.remove(header::UPGRADE);
    }
}

/// Keeps only the content codings the proxy can decode for scrubbing.
fn limit_accept_encoding(headers: &mut HeaderMap) {
    let Some(v) = headers.get(header::ACCEPT_ENCODING) else {
        return;
    };
    let kept: Vec<&str> = v
        .to_str()
        .unwrap_or_default()
        .split(',')
        .map(str::trim)
        .filter(|c| {
            let coding = c.split(';').next().unwrap_or_default().trim();
            ["gzip", "x-gzip", "deflate", "br", "zstd", "identity"]
                .iter()
                .any(|k| coding.eq_ignore_ascii_case(k))
        })
        .collect();
    match HeaderValue::from_str(&kept.join(", ")) {
        Ok(v) if !kept.is_empty() => {
            headers.insert(header::ACCEPT_ENCODING, v);
        }
        _ => {
            headers.remove(header::ACCEPT_ENCODING);
        }
    }
}

fn upstream_uri(dest: &Destination, target: &str) -> Result<Uri, String> {
    let scheme = if dest.https { "https" } else { "http" };
    let host = if dest.host.contains(':') {
        format!("[{}]", dest.host)
    } else {
        dest.host.clone()
    };
    let target = if target.starts_with('/') { target } else { "/" };
    format!("{scheme}://{host}:{}{target}", dest.port)
        .parse()
        .map_err(|_| "the request target is not a valid URI".to_string())
}
