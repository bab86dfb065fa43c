//! A STAND-IN for Google Cloud Secret Manager's REST API (v1) and Google's OAuth token
//! endpoints, for tests only.
//!
//! Google ships no Secret Manager emulator (see `/work/shared/research/infra.md` §3), so this
//! small axum server plays the parts kz uses, with the real wire shapes:
//!
//! - `GET  /v1/projects/P/secrets/S/versions/V:access` → `{"name","payload":{"data","dataCrc32c"}}`
//!   (`latest` = the highest version number, whatever its state, as in Secret Manager);
//! - `GET  /v1/projects/P/secrets/S/versions/V` → `{"name","state"}`;
//! - `POST /v1/projects/P/secrets/S:addVersion` (checks the sent `dataCrc32c`);
//! - `POST /v1/projects/P/secrets?secretId=S` (409 `ALREADY_EXISTS` when it exists);
//! - `POST /v1/projects/P/secrets/S/versions/V:destroy`;
//! - `POST /token`: the JWT-bearer grant (VERIFIES the RS256 signature with a trusted public
//!   key, and `iss`, `aud`, `scope`, `kid`) and the refresh-token grant;
//! - `GET  /computeMetadata/v1/instance/service-accounts/default/token` (needs
//!   `Metadata-Flavor: Google`).
//!
//! Secret Manager routes need `Authorization: Bearer <a token this stand-in issued or was told
//! to accept>` (401 `UNAUTHENTICATED` otherwise). Faults on demand: deny a secret (403), fail
//! the next call with a status (500/429), corrupt the CRC, or hang. It runs on its own thread
//! and tokio runtime on 127.0.0.1:0 and stops on Drop.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Form, State};
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use serde_json::{Value, json};

/// The metadata server's token path.
pub const METADATA_PATH: &str = "/computeMetadata/v1/instance/service-accounts/default/token";
const SCOPE: &str = "https://www.googleapis.com/auth/cloud-platform";

struct Version {
    data: Vec<u8>,
    state: &'static str,
}

/// A service account the token endpoint trusts.
struct TrustedKey {
    email: String,
    key_id: String,
    public_pem: String,
}

struct TrustedUser {
    client_id: String,
    client_secret: String,
    refresh_token: String,
}

#[derive(Default)]
struct Inner {
    /// "projects/P/secrets/S" → versions (number = index + 1).
    secrets: BTreeMap<String, Vec<Version>>,
    tokens: HashSet<String>,
    token_requests: usize,
    token_uri: String,
    service_accounts: Vec<TrustedKey>,
    users: Vec<TrustedUser>,
    expires_in: u64,
    denied: HashSet<String>,
    fail_once: Option<u16>,
    corrupt_crc: bool,
    hang: bool,
    /// "METHOD path?query" of every Secret Manager request.
    log: Vec<String>,
    /// The last token-endpoint rejection, for test diagnostics.
    last_rejection: Option<String>,
}

type Shared = Arc<Mutex<Inner>>;

/// The running stand-in.
pub struct StandIn {
    /// `http://127.0.0.1:PORT`.
    pub url: String,
    /// Its address.
    pub addr: SocketAddr,
    state: Shared,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl StandIn {
    /// Starts a stand-in on a free loopback port.
    pub fn start() -> Self {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let addr = listener.local_addr().unwrap();
        let url = format!("http://{addr}");
        let state: Shared = Arc::new(Mutex::new(Inner {
            token_uri: format!("{url}/token"),
            expires_in: 3600,
            ..Inner::default()
        }));
        let app = Router::new()
            .route("/token", post(token))
            .route(METADATA_PATH, get(metadata))
            .fallback(secret_manager)
            .with_state(state.clone());
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let thread = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(1)
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async move {
                let listener = tokio::net::TcpListener::from_std(listener).unwrap();
                tokio::select! {
                    _ = axum::serve(listener, app) => {}
                    _ = rx => {}
                }
            });
            // Drops hanging handlers too.
            rt.shutdown_background();
        });
        Self {
            url,
            addr,
            state,
            shutdown: Some(tx),
            thread: Some(thread),
        }
    }

    fn inner(&self) -> MutexGuard<'_, Inner> {
        self.state.lock().unwrap()
    }

    /// The token endpoint (`aud` of service-account JWTs).
    pub fn token_uri(&self) -> String {
        self.inner().token_uri.clone()
    }

    /// Stores a new version of `projects/P/secrets/S` (creating the secret); returns its number.
    pub fn seed(&self, secret_path: &str, data: &[u8]) -> usize {
        let mut inner = self.inner();
        let versions = inner.secrets.entry(secret_path.to_string()).or_default();
        versions.push(Version {
            data: data.to_vec(),
            state: "ENABLED",
        });
        versions.len()
    }

    /// The payloads of a secret's versions (destroyed ones are empty), oldest first.
    pub fn versions(&self, secret_path: &str) -> Option<Vec<(Vec<u8>, &'static str)>> {
        self.inner()
            .secrets
            .get(secret_path)
            .map(|v| v.iter().map(|v| (v.data.clone(), v.state)).collect())
    }

    /// Sets a version's state (`ENABLED`, `DISABLED`, `DESTROYED`).
    pub fn set_state(&self, secret_path: &str, number: usize, state: &'static str) {
        let mut inner = self.inner();
        let v = &mut inner.secrets.get_mut(secret_path).unwrap()[number - 1];
        v.state = state;
        if state == "DESTROYED" {
            v.data.clear();
        }
    }

    /// Accepts `token` as a bearer token (for `GOOGLE_ACCESS_TOKEN`).
    pub fn accept_token(&self, token: &str) {
        self.inner().tokens.insert(token.to_string());
    }

    /// Trusts a service account's public key at the token endpoint.
    pub fn trust_service_account(&self, email: &str, key_id: &str, public_pem: &str) {
        self.inner().service_accounts.push(TrustedKey {
            email: email.to_string(),
            key_id: key_id.to_string(),
            public_pem: public_pem.to_string(),
        });
    }

    /// Trusts user credentials for the refresh-token grant.
    pub fn trust_user(&self, client_id: &str, client_secret: &str, refresh_token: &str) {
        self.inner().users.push(TrustedUser {
            client_id: client_id.to_string(),
            client_secret: client_secret.to_string(),
            refresh_token: refresh_token.to_string(),
        });
    }

    /// Tokens issued (token endpoint and metadata server together).
    pub fn token_requests(&self) -> usize {
        self.inner().token_requests
    }

    /// Why the token endpoint last refused a request.
    pub fn last_rejection(&self) -> Option<String> {
        self.inner().last_rejection.clone()
    }

    /// `expires_in` of issued tokens.
    pub fn set_expires_in(&self, secs: u64) {
        self.inner().expires_in = secs;
    }

    /// Answers 403 for this secret.
    pub fn deny(&self, secret_path: &str) {
        self.inner().denied.insert(secret_path.to_string());
    }

    /// Answers the next Secret Manager call with `status`.
    pub fn fail_once(&self, status: u16) {
        self.inner().fail_once = Some(status);
    }

    /// Sends a wrong `dataCrc32c`.
    pub fn corrupt_crc(&self, on: bool) {
        self.inner().corrupt_crc = on;
    }

    /// Never answers Secret Manager calls.
    pub fn hang(&self, on: bool) {
        self.inner().hang = on;
    }

    /// Secret Manager requests seen, as "METHOD path?query".
    pub fn log(&self) -> Vec<String> {
        self.inner().log.clone()
    }
}

impl Drop for StandIn {
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// CRC32C as the stand-in computes it (bitwise, independent of kz's table-driven one).
pub fn crc32c_bitwise(data: &[u8]) -> u32 {
    let mut crc = !0u32;
    for &b in data {
        crc ^= u32::from(b);
        for _ in 0..8 {
            crc = if crc & 1 == 1 {
                (crc >> 1) ^ 0x82F6_3B78
            } else {
                crc >> 1
            };
        }
    }
    !crc
}

fn google_error(status: u16, code: &str, message: &str) -> Response {
    let s = StatusCode::from_u16(status).unwrap();
    (
        s,
        axum::Json(json!({"error": {"code": status, "message": message, "status": code}})),
    )
        .into_response()
}

fn issue(inner: &mut Inner) -> Response {
    inner.token_requests += 1;
    let token = format!(
        "standin-token-{}-{}",
        inner.token_requests,
        std::process::id()
    );
    inner.tokens.insert(token.clone());
    axum::Json(
        json!({"access_token": token, "expires_in": inner.expires_in, "token_type": "Bearer"}),
    )
    .into_response()
}

fn oauth_error(inner: &mut Inner, error: &str, description: String) -> Response {
    inner.last_rejection = Some(format!("{error}: {description}"));
    (
        StatusCode::BAD_REQUEST,
        axum::Json(json!({"error": error, "error_description": description})),
    )
        .into_response()
}

async fn token(State(state): State<Shared>, Form(form): Form<HashMap<String, String>>) -> Response {
    let mut inner = state.lock().unwrap();
    match form.get("grant_type").map(String::as_str) {
        Some("urn:ietf:params:oauth:grant-type:jwt-bearer") => {
            let assertion = form.get("assertion").cloned().unwrap_or_default();
            match verify_assertion(&inner, &assertion) {
                Ok(()) => issue(&mut inner),
                Err(why) => oauth_error(&mut inner, "invalid_grant", why),
            }
        }
        Some("refresh_token") => {
            let ok = inner.users.iter().any(|u| {
                form.get("client_id") == Some(&u.client_id)
                    && form.get("client_secret") == Some(&u.client_secret)
                    && form.get("refresh_token") == Some(&u.refresh_token)
            });
            if ok {
                issue(&mut inner)
            } else {
                oauth_error(&mut inner, "invalid_grant", "Bad Request".to_string())
            }
        }
        other => oauth_error(
            &mut inner,
            "unsupported_grant_type",
            format!("Invalid grant_type: {}", other.unwrap_or("")),
        ),
    }
}

/// Verifies the RS256 signature with a trusted key, and `kid`, `iss`, `aud`, `scope`, `exp`.
fn verify_assertion(inner: &Inner, assertion: &str) -> Result<(), String> {
    let header =
        jsonwebtoken::decode_header(assertion).map_err(|e| format!("bad JWT header: {e}"))?;
    if header.alg != jsonwebtoken::Algorithm::RS256 {
        return Err(format!("alg {:?} is not RS256", header.alg));
    }
    let kid = header.kid.ok_or("no kid")?;
    let key = inner
        .service_accounts
        .iter()
        .find(|k| k.key_id == kid)
        .ok_or_else(|| format!("unknown kid {kid}"))?;
    let decoding = jsonwebtoken::DecodingKey::from_rsa_pem(key.public_pem.as_bytes())
        .map_err(|e| format!("bad trusted key: {e}"))?;
    let mut validation = jsonwebtoken::Validation::new(jsonwebtoken::Algorithm::RS256);
    validation.set_audience(&[&inner.token_uri]);
    validation.set_issuer(&[&key.email]);
    validation.set_required_spec_claims(&["exp", "iat", "aud", "iss"]);
    let data = jsonwebtoken::decode::<Value>(assertion, &decoding, &validation)
        .map_err(|e| format!("Invalid JWT Signature or claims: {e}"))?;
    if data.claims.get("scope").and_then(Value::as_str) != Some(SCOPE) {
        return Err("wrong scope".to_string());
    }
    let iat = data.claims.get("iat").and_then(Value::as_u64).unwrap_or(0);
    let exp = data.claims.get("exp").and_then(Value::as_u64).unwrap_or(0);
    if exp <= iat || exp - iat > 3600 {
        return Err("exp must be at most one hour after iat".to_string());
    }
    Ok(())
}

async fn metadata(State(state): State<Shared>, headers: HeaderMap) -> Response {
    let mut inner = state.lock().unwrap();
    if headers.get("metadata-flavor").and_then(|v| v.to_str().ok()) != Some("Google") {
        return (
            StatusCode::FORBIDDEN,
            "Missing Metadata-Flavor:Google header.",
        )
            .into_response();
    }
    issue(&mut inner)
}

/// Where a Secret Manager request goes.
enum Route {
    Create { parent: String, id: String },
    AddVersion(String),
    Access(String, String),
    GetVersion(String, String),
    Destroy(String, String),
}

fn route(method: &Method, path: &str, query: &str) -> Option<Route> {
    let rest = path.strip_prefix("/v1/")?;
    let parts: Vec<&str> = rest.split('/').collect();
    match (method.as_str(), parts.as_slice()) {
        ("POST", ["projects", p, "secrets"]) => {
            let id = query
                .split('&')
                .find_map(|kv| kv.strip_prefix("secretId="))?
                .to_string();
            Some(Route::Create {
                parent: format!("projects/{p}"),
                id,
            })
        }
        ("POST", ["projects", p, "secrets", s]) => {
            let s = s.strip_suffix(":addVersion")?;
            Some(Route::AddVersion(format!("projects/{p}/secrets/{s}")))
        }
        (m, ["projects", p, "secrets", s, "versions", v]) => {
            let secret = format!("projects/{p}/secrets/{s}");
            match (m, v.split_once(':')) {
                ("GET", Some((v, "access"))) => Some(Route::Access(secret, v.to_string())),
                ("POST", Some((v, "destroy"))) => Some(Route::Destroy(secret, v.to_string())),
                ("GET", None) => Some(Route::GetVersion(secret, v.to_string())),
                _ => None,
            }
        }
        _ => None,
    }
}

async fn secret_manager(
    State(state): State<Shared>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let hang = {
        let mut inner = state.lock().unwrap();
        let query = uri.query().unwrap_or("");
        inner.log.push(if query.is_empty() {
            format!("{method} {}", uri.path())
        } else {
            format!("{method} {}?{query}", uri.path())
        });
        inner.hang
    };
    if hang {
        std::future::pending::<()>().await;
    }
    let mut inner = state.lock().unwrap();
    let bearer = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    if !bearer.is_some_and(|t| inner.tokens.contains(t)) {
        return google_error(
            401,
            "UNAUTHENTICATED",
            "Request had invalid authentication credentials. Expected OAuth 2 access token.",
        );
    }
    if let Some(status) = inner.fail_once.take() {
        let code = if status == 429 {
            "RESOURCE_EXHAUSTED"
        } else {
            "INTERNAL"
        };
        return google_error(status, code, "stand-in: injected failure");
    }
    let Some(route) = route(&method, uri.path(), uri.query().unwrap_or("")) else {
        return google_error(404, "NOT_FOUND", "stand-in: no such route");
    };
    match route {
        Route::Create { parent, id } => {
            let name = format!("{parent}/secrets/{id}");
            if inner.secrets.contains_key(&name) {
                return google_error(
                    409,
                    "ALREADY_EXISTS",
                    &format!("Secret [{name}] already exists."),
                );
            }
            let body: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
            if body.pointer("/replication/automatic").is_none() {
                return google_error(400, "INVALID_ARGUMENT", "replication is required");
            }
            inner.secrets.insert(name.clone(), Vec::new());
            axum::Json(json!({"name": name, "replication": {"automatic": {}}})).into_response()
        }
        Route::AddVersion(secret) => {
            if inner.denied.contains(&secret) {
                return denied(&secret, "secretmanager.versions.add");
            }
            let Some(versions) = inner.secrets.get_mut(&secret) else {
                return google_error(404, "NOT_FOUND", &format!("Secret [{secret}] not found."));
            };
            let body: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
            let Some(data) = body
                .pointer("/payload/data")
                .and_then(Value::as_str)
                .and_then(|d| B64.decode(d).ok())
            else {
                return google_error(400, "INVALID_ARGUMENT", "payload.data is not base64");
            };
            let sent_crc = body.pointer("/payload/dataCrc32c").and_then(Value::as_str);
            if sent_crc != Some(crc32c_bitwise(&data).to_string().as_str()) {
                return google_error(
                    400,
                    "INVALID_ARGUMENT",
                    "Checksum mismatch: payload.data_crc32c",
                );
            }
            versions.push(Version {
                data,
                state: "ENABLED",
            });
            let name = format!("{secret}/versions/{}", versions.len());
            axum::Json(json!({"name": name, "state": "ENABLED"})).into_response()
        }
        Route::Access(secret, v) => {
            if inner.denied.contains(&secret) {
                return denied(
                    &format!("{secret}/versions/{v}"),
                    "secretmanager.versions.access",
                );
            }
            let corrupt = inner.corrupt_crc;
            match find_version(&inner, &secret, &v) {
                Err(r) => r,
                Ok((n, version)) => {
                    let name = format!("{secret}/versions/{n}");
                    if version.state != "ENABLED" {
                        return google_error(
                            400,
                            "FAILED_PRECONDITION",
                            &format!("Secret Version [{name}] is in {} state.", version.state),
                        );
                    }
                    let mut crc = crc32c_bitwise(&version.data);
                    if corrupt {
                        crc ^= 1;
                    }
                    axum::Json(json!({"name": name, "payload": {"data": B64.encode(&version.data), "dataCrc32c": crc.to_string()}}))
                        .into_response()
                }
            }
        }
        Route::GetVersion(secret, v) => match find_version(&inner, &secret, &v) {
            Err(r) => r,
            Ok((n, version)) => axum::Json(
                json!({"name": format!("{secret}/versions/{n}"), "state": version.state}),
            )
            .into_response(),
        },
        Route::Destroy(secret, v) => {
            let n = match find_version(&inner, &secret, &v) {
                Err(r) => return r,
                Ok((n, _)) => n,
            };
            let version = &mut inner.secrets.get_mut(&secret).unwrap()[n - 1];
            version.state = "DESTROYED";
            version.data.clear();
            axum::Json(json!({"name": format!("{secret}/versions/{n}"), "state": "DESTROYED"}))
                .into_response()
        }
    }
}

fn denied(resource: &str, permission: &str) -> Response {
    google_error(
        403,
        "PERMISSION_DENIED",
        &format!(
            "Permission '{permission}' denied for resource '{resource}' (or it may not exist)."
        ),
    )
}

/// Finds a version by number or `latest` (the highest number, whatever its state).
fn find_version<'a>(
    inner: &'a Inner,
    secret: &str,
    v: &str,
) -> Result<(usize, &'a Version), Response> {
    let not_found = || {
        google_error(
            404,
            "NOT_FOUND",
            &format!("Secret [{secret}] not found or has no versions."),
        )
    };
    let versions = inner.secrets.get(secret).ok_or_else(not_found)?;
    let n = if v == "latest" {
        versions.len()
    } else {
        v.parse::<usize>().map_err(|_| not_found())?
    };
    match n.checked_sub(1).and_then(|i| versions.get(i)) {
        Some(version) => Ok((n, version)),
        None if v == "latest" => Err(not_found()),
        None => Err(google_error(
            404,
            "NOT_FOUND",
            &format!("Secret Version [{secret}/versions/{v}] not found."),
        )),
    }
}
