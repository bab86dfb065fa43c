//! The HTTP API (`server.md`, "HTTP API"): routes, limits, request ids, rate limiting, and the
//! JSON error shape of every answer that is not a result.
//!
//! Order of checks on `/v1/resolve` and `/v1/decide`: the audit log can take records (`503`),
//! the body is JSON (`415`) of at most [`MAX_BODY_BYTES`](crate::MAX_BODY_BYTES) (`413`),
//! arriving within 10 s, and a valid request (`400`); then the bearer token verifies (`401`;
//! a `single_use` token is only used up by a request that got this far) and the identity is
//! within its rate, counted in refs (`429`). Only then are refs decided. A `401` says which check failed by its code only
//! (`expired`, `bad_signature`, …); the full reason goes to the server's log with the request
//! id, so a caller cannot probe the key configuration.

use std::net::SocketAddr;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::time::{Instant, SystemTime};

use arc_swap::ArcSwap;
use axum::Router;
use axum::body::Body;
use axum::extract::{Request, State};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use bytes::Bytes;
use futures_util::FutureExt as _;
use governor::{DefaultKeyedRateLimiter, Quota};
use http::{HeaderMap, HeaderValue, StatusCode, header};
use kz_policy::Transport;
use kz_wire::{ErrorBody, ErrorCode, Health, ResolveRequest};
use sha2::{Digest, Sha256};

use crate::metrics::Metrics;
use crate::pipeline::{self, Caller};
use crate::state::Loaded;

/// What every request shares.
pub struct AppState {
    /// The bundle in force (swapped whole on reload).
    pub current: ArcSwap<Loaded>,
    /// The audit log.
    pub audit: kz_audit::Writer,
    /// The metrics.
    pub metrics: Metrics,
    /// Per-identity rate limit, when on.
    pub limiter: Option<DefaultKeyedRateLimiter<String>>,
    /// Time a client has to send a whole request body.
    pub body_timeout: std::time::Duration,
    /// `jti` records of redeemed `single_use` short-lived tokens (kept across reloads).
    pub replay: kz_identity::ReplayRecords,
    /// Credentials no longer served and callers no longer answered after a guess.
    pub lockout: crate::lockout::Lockout,
}

impl std::fmt::Debug for AppState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AppState")
            .field("current", &self.current.load().revision)
            .field("audit", &self.audit)
            .field("rate_limited", &self.limiter.is_some())
            .finish_non_exhaustive()
    }
}

impl AppState {
    /// The state for a first bundle.
    pub fn new(
        loaded: Loaded,
        audit: kz_audit::Writer,
        metrics: Metrics,
        rate: Option<std::num::NonZeroU32>,
        body_timeout: std::time::Duration,
        replay: kz_identity::ReplayRecords,
        lockout: crate::lockout::Lockout,
    ) -> Self {
        let limiter = rate.map(|r| {
            let burst = r.saturating_mul(std::num::NonZeroU32::MIN.saturating_add(1));
            governor::RateLimiter::keyed(Quota::per_second(r).allow_burst(burst))
        });
        Self {
            current: ArcSwap::from_pointee(loaded),
            audit,
            metrics,
            limiter,
            body_timeout,
            replay,
            lockout,
        }
    }
}

/// The peer address of a connection (set by [`crate::serve`] on every request).
#[derive(Clone, Copy, Debug)]
pub struct Peer(pub SocketAddr);

/// The request id of a request (the caller's `X-Request-Id` when acceptable, else generated).
#[derive(Clone, Debug)]
pub struct RequestId(pub String);

/// An answer that is not a result: a status and `{"error", "message"}`.
#[derive(Debug)]
pub struct ApiError {
    code: ErrorCode,
    message: String,
    retry_after: Option<u64>,
}

impl ApiError {
    /// What the caller is told.
    pub fn message(&self) -> &str {
        &self.message
    }

    /// Seconds after which a retry may succeed (`Retry-After`), when known.
    pub fn retry_after(&self) -> Option<u64> {
        self.retry_after
    }

    /// An error answer.
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
            retry_after: None,
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status =
            StatusCode::from_u16(self.code.status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let body = serde_json::to_vec(&ErrorBody {
            error: self.code,
            message: self.message,
        })
        .unwrap_or_default();
        let mut resp = (status, body).into_response();
        let h = resp.headers_mut();
        h.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
        if self.code == ErrorCode::InvalidToken {
            h.insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Bearer error=\"invalid_token\""),
            );
        }
        if let Some(s) = self.retry_after {
            h.insert(header::RETRY_AFTER, HeaderValue::from(s));
        }
        resp
    }
}

/// The router of the API, around `state`.
pub fn router(state: Arc<AppState>) -> Router {
    Router::new()
        .route(kz_wire::HEALTH_PATH, get(healthz))
        .route(kz_wire::READY_PATH, get(readyz))
        .route(kz_wire::METRICS_PATH, get(metrics))
        .route(kz_wire::RESOLVE_PATH, post(resolve))
        .route(kz_wire::DECIDE_PATH, post(decide))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(middleware::from_fn_with_state(Arc::clone(&state), around))
        .with_state(state)
}

/// The endpoint label of a path (a closed set, so metrics stay bounded).
fn endpoint(path: &str) -> &'static str {
    match path {
        kz_wire::RESOLVE_PATH => "resolve",
        kz_wire::DECIDE_PATH => "decide",
        kz_wire::HEALTH_PATH => "healthz",
        kz_wire::READY_PATH => "readyz",
        kz_wire::METRICS_PATH => "metrics",
        _ => "other",
    }
}

/// A caller's request id is kept when it is 1–128 characters of `[A-Za-z0-9._:-]`.
fn acceptable_request_id(v: &HeaderValue) -> Option<String> {
    let s = v.to_str().ok()?;
    let ok = !s.is_empty()
        && s.len() <= 128
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b':' | b'-'));
    ok.then(|| s.to_owned())
}

/// Around every request: the request id, metrics, and a caught panic answered `500` (a bug of
/// the server, logged; never a crash of the connection task).
pub(crate) async fn around(
    State(state): State<Arc<AppState>>,
    mut req: Request,
    next: Next,
) -> Response {
    let started = Instant::now();
    let endpoint = endpoint(req.uri().path());
    let id = req
        .headers()
        .get(kz_wire::REQUEST_ID_HEADER)
        .and_then(acceptable_request_id)
        .unwrap_or_else(|| format!("{:032x}", rand::random::<u128>()));
    req.extensions_mut().insert(RequestId(id.clone()));
    let mut resp = match AssertUnwindSafe(next.run(req)).catch_unwind().await {
        Ok(r) => r,
        Err(_) => {
            tracing::error!(request_id = %id, "a request handler panicked (a bug of kz); answered 500");
            ApiError::new(
                ErrorCode::Internal,
                "internal error; the server's log has the details",
            )
            .into_response()
        }
    };
    if let Ok(v) = HeaderValue::from_str(&id) {
        resp.headers_mut().insert(kz_wire::REQUEST_ID_HEADER, v);
    }
    state
        .metrics
        .requests
        .with_label_values(&[endpoint, resp.status().as_str()])
        .inc();
    state
        .metrics
        .request_seconds
        .with_label_values(&[endpoint])
        .observe(started.elapsed().as_secs_f64());
    resp
}

async fn not_found() -> ApiError {
    ApiError::new(
        ErrorCode::NotFound,
        "no such endpoint: the API is POST /v1/resolve, POST /v1/decide, GET /healthz, /readyz and /metrics",
    )
}

async fn method_not_allowed() -> ApiError {
    ApiError::new(
        ErrorCode::MethodNotAllowed,
        "this endpoint does not take that method: /v1/resolve and /v1/decide take POST; /healthz, /readyz and /metrics take GET",
    )
}

fn json(status: StatusCode, body: Vec<u8>) -> Response {
    let mut resp = (status, body).into_response();
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    resp
}

async fn healthz(State(state): State<Arc<AppState>>) -> Response {
    let loaded = state.current.load();
    let body = serde_json::to_vec(&Health {
        status: "ok".into(),
        bundle_loaded: true,
        bundle_version: loaded.bundle.version.clone(),
        bundle_revision: loaded.revision.clone(),
    })
    .unwrap_or_default();
    json(StatusCode::OK, body)
}

/// Ready when the audit log can be written and its queue is under nine tenths full (a replica
/// whose log is behind would answer 503 to the requests a load balancer sends it).
async fn readyz(State(state): State<Arc<AppState>>) -> Response {
    let a = &state.audit;
    match a.health() {
        Err(e) => ApiError::new(
            ErrorCode::NotReady,
            format!("the audit log cannot be written: {e}"),
        )
        .into_response(),
        Ok(()) if a.queue_depth().saturating_mul(10) >= a.capacity().saturating_mul(9) => {
            ApiError::new(ErrorCode::NotReady, "the audit log is behind").into_response()
        }
        Ok(()) => json(StatusCode::OK, br#"{"status":"ready"}"#.to_vec()),
    }
}

async fn metrics(State(state): State<Arc<AppState>>) -> Response {
    let m = &state.metrics;
    m.audit_queue
        .set(i64::try_from(state.audit.queue_depth()).unwrap_or(i64::MAX));
    let loaded = state.current.load();
    let (ok, failed) = loaded.verifier.jwks_refreshes();
    for (now, counted, label) in [
        (ok, &loaded.refreshes_counted.0, "ok"),
        (failed, &loaded.refreshes_counted.1, "failed"),
    ] {
        let before = counted.swap(now, std::sync::atomic::Ordering::Relaxed);
        m.jwks_refreshes
            .with_label_values(&[label])
            .inc_by(now.saturating_sub(before));
    }
    let mut resp = (StatusCode::OK, m.render()).into_response();
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
    );
    resp
}

async fn resolve(State(state): State<Arc<AppState>>, req: Request) -> Response {
    serve_refs(&state, req, true)
        .await
        .unwrap_or_else(IntoResponse::into_response)
}

async fn decide(State(state): State<Arc<AppState>>, req: Request) -> Response {
    serve_refs(&state, req, false)
        .await
        .unwrap_or_else(IntoResponse::into_response)
}

/// The bearer token of `headers` (`Authorization: Bearer …`, scheme case-insensitive).
fn bearer(headers: &HeaderMap) -> Result<&str, ApiError> {
    let missing = || {
        ApiError::new(
            ErrorCode::InvalidToken,
            "no bearer token: send `Authorization: Bearer <workload identity JWT>`",
        )
    };
    let v = headers.get(header::AUTHORIZATION).ok_or_else(missing)?;
    let v = v.to_str().map_err(|_| missing())?;
    let (scheme, token) = v.split_once(' ').ok_or_else(missing)?;
    if !scheme.eq_ignore_ascii_case("bearer") {
        return Err(missing());
    }
    let token = token.trim();
    if token.is_empty() {
        return Err(missing());
    }
    Ok(token)
}

fn is_json(headers: &HeaderMap) -> bool {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .is_some_and(|m| m.trim().eq_ignore_ascii_case("application/json"))
}

/// Describes a JSON error by its category and place, without quoting the body.
fn json_problem(e: &serde_json::Error) -> String {
    let what = match e.classify() {
        serde_json::error::Category::Io | serde_json::error::Category::Eof => "truncated JSON",
        serde_json::error::Category::Syntax => "invalid JSON",
        serde_json::error::Category::Data => {
            "unexpected field or type (expected {\"ref\": \"NAME\"} or {\"refs\": [\"NAME\", …]}, optional \"context\": {…})"
        }
    };
    format!(
        "the body is not a resolve request: {what} at line {} column {}",
        e.line(),
        e.column()
    )
}

/// Whether the audit queue has room for `n` more records (checked before any backend is
/// contacted, so a request that could not be recorded is refused before it does anything).
/// Refuses when the audit log cannot take `n` more records (it is failing, or behind).
pub(crate) fn audit_room(state: &AppState, n: usize) -> Result<(), ApiError> {
    if let Err(e) = state.audit.health() {
        return Err(ApiError::new(
            ErrorCode::NotReady,
            format!("the audit log cannot be written, so no decision is made: {e}"),
        ));
    }
    if state.audit.queue_depth().saturating_add(n) > state.audit.capacity() {
        state.metrics.audit_refused.inc();
        let mut e = ApiError::new(
            ErrorCode::NotReady,
            "the audit log is behind, so no decision is made; retry shortly",
        );
        e.retry_after = Some(1);
        return Err(e);
    }
    Ok(())
}

/// Refuses an identity over its rate, counted in refs (one decision and one record each).
pub(crate) fn within_rate(
    state: &AppState,
    identity: &kz_policy::Identity,
    n: usize,
) -> Result<(), ApiError> {
    if let Some(limiter) = &state.limiter {
        // Each ref is one decision and one audit record: the rate counts refs, not requests.
        let key = format!("{}\u{0}{}", identity.issuer, identity.sub);
        let n = std::num::NonZeroU32::new(u32::try_from(n).unwrap_or(u32::MAX))
            .unwrap_or(std::num::NonZeroU32::MIN);
        let limited = match limiter.check_key_n(&key, n) {
            Ok(Ok(())) => None,
            Ok(Err(not_until)) => Some(
                not_until
                    .wait_time_from(governor::clock::Clock::now(
                        &governor::clock::DefaultClock::default(),
                    ))
                    .as_secs()
                    .max(1),
            ),
            // More refs than the burst allows at all: as if the identity waited a second.
            Err(_) => Some(1),
        };
        if let Some(wait) = limited {
            state.metrics.rate_limited.inc();
            let mut e = ApiError::new(
                ErrorCode::RateLimited,
                "too many refs requested by this identity; retry after the time in Retry-After (the limit counts refs)",
            );
            e.retry_after = Some(wait);
            return Err(e);
        }
    }
    Ok(())
}

/// How a token is named in audit records: `jti:ID`, or `sha256:HEX` of the token (never the
/// token).
pub(crate) fn token_id(identity: &kz_policy::Identity, token: &str) -> String {
    match identity.claims.get("jti") {
        Some(serde_json::Value::String(j)) if !j.is_empty() && j.len() <= 256 => format!("jti:{j}"),
        _ => format!(
            "sha256:{}",
            kz_config::discover::hex(&Sha256::digest(token.as_bytes()))
        ),
    }
}

async fn serve_refs(state: &AppState, req: Request, fetch: bool) -> Result<Response, ApiError> {
    let request_id = req
        .extensions()
        .get::<RequestId>()
        .map(|r| r.0.clone())
        .unwrap_or_default();
    let ip = req
        .extensions()
        .get::<Peer>()
        .map(|p| p.0.ip().to_string())
        .unwrap_or_default();
    audit_room(state, 1)?;
    let (parts, body) = req.into_parts();
    // The request's shape is checked before the token: a single-use token is used up only by
    // a request that can be decided.
    if !is_json(&parts.headers) {
        return Err(ApiError::new(
            ErrorCode::UnsupportedMediaType,
            "the body must be JSON: send `Content-Type: application/json`",
        ));
    }
    let bytes: Bytes = match tokio::time::timeout(
        state.body_timeout,
        axum::body::to_bytes(Body::new(body), crate::MAX_BODY_BYTES),
    )
    .await
    {
        Err(_) => {
            return Err(ApiError::new(
                ErrorCode::InvalidRequest,
                format!(
                    "the body did not arrive within {}s",
                    state.body_timeout.as_secs()
                ),
            ));
        }
        Ok(read) => read.map_err(|e| {
            let too_large = std::error::Error::source(&e)
                .is_some_and(|s| s.is::<http_body_util::LengthLimitError>());
            if too_large {
                ApiError::new(
                    ErrorCode::PayloadTooLarge,
                    format!("the body is over {} bytes", crate::MAX_BODY_BYTES),
                )
            } else {
                ApiError::new(ErrorCode::InvalidRequest, "the body could not be read")
            }
        })?,
    };
    let ask: ResolveRequest = serde_json::from_slice(&bytes)
        .map_err(|e| ApiError::new(ErrorCode::InvalidRequest, json_problem(&e)))?;
    let refs = ask
        .requested()
        .map_err(|p| ApiError::new(ErrorCode::InvalidRequest, p.to_string()))?;
    for r in &refs {
        if let Err(e) = kz_bundle::validate_ref(r) {
            return Err(ApiError::new(
                ErrorCode::InvalidRequest,
                format!(
                    "invalid ref {}: {e}",
                    serde_json::Value::String((*r).to_owned())
                ),
            ));
        }
    }
    audit_room(state, refs.len())?;
    let loaded = state.current.load_full();
    let token = bearer(&parts.headers)?;
    let identity = loaded
        .verifier
        .verify_shared(token, SystemTime::now())
        .await
        .map_err(|e| {
            tracing::info!(request_id = %request_id, code = e.code(), reason = %e, "token refused");
            ApiError::new(
                ErrorCode::InvalidToken,
                format!("the token was refused ({}); the server's log has the details under request id {request_id}", e.code()),
            )
        })?;
    within_rate(state, &identity, refs.len())?;
    let context = ask
        .context
        .clone()
        .map_or(serde_json::Value::Null, serde_json::Value::Object);
    let token_id = token_id(&identity, token);
    let caller = Caller {
        identity: &identity,
        token_id: &token_id,
        ip: &ip,
        request_id: &request_id,
        transport: Transport::Http,
    };
    let answer = pipeline::answer(&loaded, &state.metrics, &caller, &refs, &context, fetch).await;
    // All of the request's records or none: an answer is sent exactly when its decisions are
    // recorded.
    if let Err(e) = state.audit.try_append_all(answer.records) {
        state.metrics.audit_refused.inc();
        tracing::warn!(request_id = %request_id, error = %e, "audit log refused the records; answering 503");
        let mut err = ApiError::new(
            ErrorCode::NotReady,
            format!("the audit log cannot take the decision records, so no result is given: {e}"),
        );
        err.retry_after = Some(1);
        return Err(err);
    }
    let body = answer.response.to_json().map_err(|e| {
        ApiError::new(
            ErrorCode::Internal,
            format!("the answer could not be written: {e}"),
        )
    })?;
    let mut resp = Response::new(Body::from(Bytes::from_owner(body)));
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    Ok(resp)
}
