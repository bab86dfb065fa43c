//! Test keys, hand-made tokens and a JWKS + discovery server on 127.0.0.1.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::Router;
use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use jsonwebtoken::jwk::Jwk;
use jsonwebtoken::{Algorithm, EncodingKey};
use serde_json::{Value, json};

/// A key pair for tests.
pub struct TestKey {
    pub private_pem: String,
    pub public_pem: String,
    pub public_der: Vec<u8>,
    pub alg: &'static str,
}

impl TestKey {
    fn generate(alg: &'static rcgen::SignatureAlgorithm, name: &'static str) -> Self {
        let kp = rcgen::KeyPair::generate_for(alg).unwrap();
        Self {
            private_pem: kp.serialize_pem(),
            public_pem: kp.public_key_pem(),
            public_der: rcgen::PublicKeyData::subject_public_key_info(&kp),
            alg: name,
        }
    }

    /// The public JWK (with `kid` and `alg`), as a JSON value.
    pub fn jwk(&self, kid: &str) -> Value {
        let (ek, alg) = match self.alg {
            "RS256" => (
                EncodingKey::from_rsa_pem(self.private_pem.as_bytes()).unwrap(),
                Algorithm::RS256,
            ),
            "ES256" => (
                EncodingKey::from_ec_pem(self.private_pem.as_bytes()).unwrap(),
                Algorithm::ES256,
            ),
            "ES384" => (
                EncodingKey::from_ec_pem(self.private_pem.as_bytes()).unwrap(),
                Algorithm::ES384,
            ),
            "EdDSA" => (
                EncodingKey::from_ed_pem(self.private_pem.as_bytes()).unwrap(),
                Algorithm::EdDSA,
            ),
            other => panic!("no JWK for {other}"),
        };
        let jwk = Jwk::from_encoding_key(&ek, alg).unwrap();
        let mut v = serde_json::to_value(jwk).unwrap();
        v["kid"] = json!(kid);
        v["use"] = json!("sig");
        v
    }

    /// Signs `claims` with this key (`kid` in the header when given).
    pub fn sign(&self, kid: Option<&str>, claims: &Value) -> String {
        kz_identity::sign(&self.private_pem, Some(self.alg), kid, claims).unwrap()
    }
}

pub fn rsa() -> &'static TestKey {
    static K: OnceLock<TestKey> = OnceLock::new();
    K.get_or_init(|| TestKey::generate(&rcgen::PKCS_RSA_SHA256, "RS256"))
}
pub fn rsa2() -> &'static TestKey {
    static K: OnceLock<TestKey> = OnceLock::new();
    K.get_or_init(|| TestKey::generate(&rcgen::PKCS_RSA_SHA256, "RS256"))
}
pub fn es256() -> &'static TestKey {
    static K: OnceLock<TestKey> = OnceLock::new();
    K.get_or_init(|| TestKey::generate(&rcgen::PKCS_ECDSA_P256_SHA256, "ES256"))
}
pub fn es256b() -> &'static TestKey {
    static K: OnceLock<TestKey> = OnceLock::new();
    K.get_or_init(|| TestKey::generate(&rcgen::PKCS_ECDSA_P256_SHA256, "ES256"))
}
pub fn es384() -> &'static TestKey {
    static K: OnceLock<TestKey> = OnceLock::new();
    K.get_or_init(|| TestKey::generate(&rcgen::PKCS_ECDSA_P384_SHA384, "ES384"))
}
pub fn ed25519() -> &'static TestKey {
    static K: OnceLock<TestKey> = OnceLock::new();
    K.get_or_init(|| TestKey::generate(&rcgen::PKCS_ED25519, "EdDSA"))
}

pub fn unix_now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

pub fn at(secs: i64) -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(secs as u64)
}

pub fn b64(bytes: &[u8]) -> String {
    B64.encode(bytes)
}

/// A token from raw header and claims JSON with a given signature (no signing).
pub fn raw_token(header: &Value, claims: &Value, signature: &[u8]) -> String {
    format!(
        "{}.{}.{}",
        b64(header.to_string().as_bytes()),
        b64(claims.to_string().as_bytes()),
        b64(signature)
    )
}

/// HMAC-SHA256 of the header and claims with `secret` as the key (the classic confusion
/// attack signs with a public key's bytes).
pub fn hs256_token(header: &Value, claims: &Value, secret: &[u8]) -> String {
    let input = format!(
        "{}.{}",
        b64(header.to_string().as_bytes()),
        b64(claims.to_string().as_bytes())
    );
    let key = aws_lc_rs::hmac::Key::new(aws_lc_rs::hmac::HMAC_SHA256, secret);
    let tag = aws_lc_rs::hmac::sign(&key, input.as_bytes());
    format!("{input}.{}", b64(tag.as_ref()))
}

// ---------------------------------------------------------------------------------------------
// The JWKS + discovery server

/// How the server answers.
#[derive(Clone, Debug)]
pub enum Mode {
    Normal,
    /// Every request gets this status.
    Fail(u16),
    /// Answers after this delay.
    Slow(Duration),
    /// A JWKS of this many bytes, streamed without `Content-Length`.
    Huge(usize),
}

pub struct ServerState {
    pub jwks: Mutex<Value>,
    pub discovery: Mutex<Option<Value>>,
    pub cache_control: Mutex<Option<String>>,
    pub mode: Mutex<Mode>,
    pub jwks_hits: AtomicUsize,
    pub discovery_hits: AtomicUsize,
    pub other_hits: AtomicUsize,
    pub bytes_sent: AtomicUsize,
}

pub struct Server {
    pub addr: SocketAddr,
    /// `http://127.0.0.1:PORT`
    pub url: String,
    pub state: Arc<ServerState>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Server {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Server {
    pub async fn start() -> Server {
        let state = Arc::new(ServerState {
            jwks: Mutex::new(json!({"keys": []})),
            discovery: Mutex::new(None),
            cache_control: Mutex::new(None),
            mode: Mutex::new(Mode::Normal),
            jwks_hits: AtomicUsize::new(0),
            discovery_hits: AtomicUsize::new(0),
            other_hits: AtomicUsize::new(0),
            bytes_sent: AtomicUsize::new(0),
        });
        let app = Router::new()
            .route("/.well-known/openid-configuration", get(discovery))
            .route("/jwks", get(jwks))
            .route("/redirect", get(redirect))
            .fallback(other)
            .with_state(Arc::clone(&state));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let task = tokio::spawn(async move {
            axum::serve(listener, app).await.unwrap();
        });
        Server {
            addr,
            url: format!("http://127.0.0.1:{}", addr.port()),
            state,
            task,
        }
    }

    pub fn set_jwks(&self, keys: Vec<Value>) {
        *self.state.jwks.lock().unwrap() = json!({ "keys": keys });
    }
    pub fn set_mode(&self, mode: Mode) {
        *self.state.mode.lock().unwrap() = mode;
    }
    pub fn set_cache_control(&self, v: &str) {
        *self.state.cache_control.lock().unwrap() = Some(v.to_string());
    }
    pub fn set_discovery(&self, doc: Value) {
        *self.state.discovery.lock().unwrap() = Some(doc);
    }
    pub fn jwks_hits(&self) -> usize {
        self.state.jwks_hits.load(Ordering::SeqCst)
    }
    pub fn discovery_hits(&self) -> usize {
        self.state.discovery_hits.load(Ordering::SeqCst)
    }
    pub fn other_hits(&self) -> usize {
        self.state.other_hits.load(Ordering::SeqCst)
    }
    pub fn total_hits(&self) -> usize {
        self.jwks_hits() + self.discovery_hits() + self.other_hits()
    }
}

async fn apply_mode(state: &ServerState) -> Option<Response> {
    let mode = state.mode.lock().unwrap().clone();
    match mode {
        Mode::Normal | Mode::Huge(_) => None,
        Mode::Fail(code) => Some(StatusCode::from_u16(code).unwrap().into_response()),
        Mode::Slow(d) => {
            tokio::time::sleep(d).await;
            None
        }
    }
}

async fn discovery(State(state): State<Arc<ServerState>>, headers: HeaderMap) -> Response {
    state.discovery_hits.fetch_add(1, Ordering::SeqCst);
    if let Some(r) = apply_mode(&state).await {
        return r;
    }
    let host = headers
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .unwrap_or("127.0.0.1")
        .to_string();
    let doc = state.discovery.lock().unwrap().clone().unwrap_or_else(|| {
        json!({
            "issuer": format!("http://{host}"),
            "jwks_uri": format!("http://{host}/jwks"),
        })
    });
    axum::Json(doc).into_response()
}

async fn jwks(State(state): State<Arc<ServerState>>) -> Response {
    state.jwks_hits.fetch_add(1, Ordering::SeqCst);
    if let Some(r) = apply_mode(&state).await {
        return r;
    }
    if let Mode::Huge(n) = state.mode.lock().unwrap().clone() {
        let chunk = vec![b' '; 64 * 1024];
        let st = Arc::clone(&state);
        let chunks = n / chunk.len();
        let stream = futures_util::stream::iter((0..chunks).map(move |_| {
            st.bytes_sent.fetch_add(chunk.len(), Ordering::SeqCst);
            Ok::<_, std::io::Error>(bytes::Bytes::from(chunk.clone()))
        }));
        return Response::new(Body::from_stream(stream));
    }
    let body = state.jwks.lock().unwrap().to_string();
    let mut resp = ([(header::CONTENT_TYPE, "application/json")], body).into_response();
    if let Some(cc) = state.cache_control.lock().unwrap().clone() {
        resp.headers_mut()
            .insert(header::CACHE_CONTROL, cc.parse().unwrap());
    }
    resp
}

async fn other(State(state): State<Arc<ServerState>>) -> Response {
    state.other_hits.fetch_add(1, Ordering::SeqCst);
    let body = state.jwks.lock().unwrap().to_string();
    ([(header::CONTENT_TYPE, "application/json")], body).into_response()
}

async fn redirect(State(state): State<Arc<ServerState>>) -> Response {
    state.other_hits.fetch_add(1, Ordering::SeqCst);
    (StatusCode::FOUND, [(header::LOCATION, "/jwks")]).into_response()
}
