//! In-process HTTPS echo servers for the blind-mode tests, each with a test CA.
//!
//! A [`TestCa`] is made per test (rcgen, P-256); its certificate is what `[blind] upstream_ca`
//! names, or what a client trusts directly. An [`EchoServer`] listens on a free loopback port
//! (on one or more loopback addresses), speaks HTTP/1.1 and HTTP/2 (ALPN `h2`, `http/1.1`),
//! records every request it receives and answers:
//!
//! - `/echo-secret?form=raw|upper|b64|b64url|json|urlenc|gzip|chunked`: the bearer value of
//!   the request's `Authorization` header in that form (`upper`: upper-cased; `gzip`: the raw
//!   value, compressed, with `Content-Encoding: gzip`; `chunked`: the raw value in 3-byte
//!   frames, so no frame holds it whole), with an `ETag` computed over that body, for the scrub
//!   tests;
//! - `/redirect`: `302` to the cloud metadata address, which a credential must never follow;
//! - `/ws` with a WebSocket upgrade: a minimal RFC 6455 server that first sends the text frame
//!   `auth:<Authorization header value>` and then echoes every text frame;
//! - `/repo.git/info/refs?service=git-upload-pack`: the smart-HTTP advertisement of an empty
//!   repository, so `git ls-remote` succeeds;
//! - anything else: one line of JSON echoing the request (see [`EchoServer`]).
//!
//! The server runs on its own thread and stops when dropped. Nothing here leaves loopback.

use std::convert::Infallible;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use base64::Engine as _;
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::{TokioExecutor, TokioIo};
use percent_encoding::{AsciiSet, NON_ALPHANUMERIC};
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose,
};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use sha1::{Digest as _, Sha1};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// The common name of every test CA (a single lowercase word, so its subject hash is simple).
pub const CA_COMMON_NAME: &str = "kztestca";

/// The RFC 3986 unreserved characters stay as they are; everything else is percent-encoded.
pub const URL_COMPONENT: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~');

/// A certificate authority made for one test.
pub struct TestCa {
    /// The CA certificate, PEM.
    pub pem: String,
    issuer: Issuer<'static, KeyPair>,
}

impl TestCa {
    /// A fresh CA (P-256 key, `CN=kztestca`).
    pub fn new() -> Self {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, CA_COMMON_NAME);
        params.distinguished_name = dn;
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let cert = params.self_signed(&key).unwrap();
        Self {
            pem: cert.pem(),
            issuer: Issuer::new(params, key),
        }
    }

    /// Writes the CA certificate to `dir/test-ca.pem` and returns that path.
    pub fn write_pem(&self, dir: &Path) -> PathBuf {
        let p = dir.join("test-ca.pem");
        std::fs::write(&p, &self.pem).unwrap();
        p
    }

    /// A server certificate for these names (DNS names or IP addresses) and its key.
    pub fn leaf(&self, names: &[String]) -> (CertificateDer<'static>, PrivateKeyDer<'static>) {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(names.to_vec()).unwrap();
        let mut dn = DistinguishedName::new();
        dn.push(
            DnType::CommonName,
            names.first().map_or("localhost", String::as_str),
        );
        params.distinguished_name = dn;
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        let der = cert.der().clone();
        let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der()));
        (der, key)
    }
}

/// One request as the server received it.
#[derive(Clone, Debug)]
pub struct Recorded {
    /// `GET`, `POST`, …
    pub method: String,
    /// Path and query.
    pub target: String,
    /// `HTTP/1.1` or `HTTP/2.0`.
    pub version: String,
    /// Every header, names lowercase, values lossily decoded, in order.
    pub headers: Vec<(String, String)>,
    /// The whole body.
    pub body: Vec<u8>,
}

impl Recorded {
    /// The first value of header `name` (any case).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// The body, lossily decoded.
    pub fn body_text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// Whether `needle` appears anywhere in this request (target, headers or body).
    pub fn contains(&self, needle: &str) -> bool {
        self.target.contains(needle)
            || self
                .headers
                .iter()
                .any(|(n, v)| n.contains(needle) || v.contains(needle))
            || self.body_text().contains(needle)
    }
}

type Log = Arc<Mutex<Vec<Recorded>>>;

/// An HTTPS echo server on a free loopback port; stops when dropped.
///
/// The default answer is one line of JSON:
/// `{"method":…,"target":…,"version":…,"headers":[[name,value],…],"body":…}`.
pub struct EchoServer {
    /// The port, the same on every address it listens on.
    pub port: u16,
    log: Log,
    connections: Arc<AtomicUsize>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl EchoServer {
    /// A server on `127.0.0.1` with a certificate for `localhost`, `127.0.0.1`, `127.0.0.2`
    /// and `::1`.
    pub fn start(ca: &TestCa) -> Self {
        Self::start_on(ca, &[IpAddr::V4(Ipv4Addr::LOCALHOST)], &[])
    }

    /// A server listening on each of `addrs` (all loopback) on one port; its certificate also
    /// names `extra_names`.
    pub fn start_on(ca: &TestCa, addrs: &[IpAddr], extra_names: &[&str]) -> Self {
        assert!(addrs.iter().all(IpAddr::is_loopback), "loopback only");
        let mut names: Vec<String> = ["localhost", "127.0.0.1", "127.0.0.2", "::1"]
            .iter()
            .map(ToString::to_string)
            .collect();
        names.extend(extra_names.iter().map(ToString::to_string));
        let (cert, key) = ca.leaf(&names);
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let mut config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(vec![cert], key)
            .unwrap();
        config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));

        let listeners = bind_all(addrs);
        let port = listeners
            .first()
            .map(|l| l.local_addr().unwrap().port())
            .unwrap();
        let log: Log = Arc::default();
        let connections = Arc::new(AtomicUsize::new(0));
        let thread_connections = connections.clone();
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let thread_log = log.clone();
        let thread = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async move {
                let mut tasks = tokio::task::JoinSet::new();
                for l in listeners {
                    l.set_nonblocking(true).unwrap();
                    let l = tokio::net::TcpListener::from_std(l).unwrap();
                    tasks.spawn(accept_loop(
                        l,
                        acceptor.clone(),
                        thread_log.clone(),
                        thread_connections.clone(),
                    ));
                }
                let _ = stop_rx.await;
                tasks.abort_all();
            });
            rt.shutdown_timeout(Duration::from_secs(1));
        });
        Self {
            port,
            log,
            connections,
            stop: Some(stop_tx),
            thread: Some(thread),
        }
    }

    /// `https://localhost:PORT`.
    pub fn url(&self) -> String {
        format!("https://localhost:{}", self.port)
    }

    /// `localhost:PORT`, as a host pattern.
    pub fn host(&self) -> String {
        format!("localhost:{}", self.port)
    }

    /// Every request received so far.
    pub fn requests(&self) -> Vec<Recorded> {
        self.log.lock().unwrap().clone()
    }

    /// How many TCP connections were accepted so far (TLS or not, any address).
    pub fn connections(&self) -> usize {
        self.connections.load(Ordering::SeqCst)
    }

    /// Forgets the requests received so far.
    pub fn clear(&self) {
        self.log.lock().unwrap().clear();
    }
}

impl Drop for EchoServer {
    fn drop(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Binds every address on one free port (retrying when a later address has it taken).
fn bind_all(addrs: &[IpAddr]) -> Vec<std::net::TcpListener> {
    for _ in 0..50 {
        let Some(first) = addrs.first() else {
            panic!("no address to listen on")
        };
        let l = std::net::TcpListener::bind(SocketAddr::new(*first, 0)).unwrap();
        let port = l.local_addr().unwrap().port();
        let mut all = vec![l];
        for a in addrs.iter().skip(1) {
            match std::net::TcpListener::bind(SocketAddr::new(*a, port)) {
                Ok(l) => all.push(l),
                Err(_) => break,
            }
        }
        if all.len() == addrs.len() {
            return all;
        }
    }
    panic!("no free port on all of {addrs:?}")
}

async fn accept_loop(
    l: tokio::net::TcpListener,
    acceptor: tokio_rustls::TlsAcceptor,
    log: Log,
    connections: Arc<AtomicUsize>,
) {
    loop {
        let Ok((tcp, _)) = l.accept().await else {
            continue;
        };
        connections.fetch_add(1, Ordering::SeqCst);
        let acceptor = acceptor.clone();
        let log = log.clone();
        tokio::spawn(async move {
            let Ok(tls) = acceptor.accept(tcp).await else {
                return;
            };
            let service = hyper::service::service_fn(move |req| handle(req, log.clone()));
            let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                .serve_connection_with_upgrades(TokioIo::new(tls), service)
                .await;
        });
    }
}

fn reply(status: StatusCode, content_type: &str, body: impl Into<Bytes>) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(body.into()));
    *r.status_mut() = status;
    r.headers_mut()
        .insert(hyper::header::CONTENT_TYPE, content_type.parse().unwrap());
    r
}

/// A body sent as several frames (HTTP/1.1 chunks, HTTP/2 DATA frames).
pub struct Chunks(std::collections::VecDeque<Bytes>);

impl hyper::body::Body for Chunks {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        _cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<hyper::body::Frame<Bytes>, Infallible>>> {
        std::task::Poll::Ready(self.0.pop_front().map(|b| Ok(hyper::body::Frame::data(b))))
    }
}

type EchoBody = http_body_util::Either<Full<Bytes>, Chunks>;

async fn handle(req: Request<Incoming>, log: Log) -> Result<Response<EchoBody>, Infallible> {
    let chunked = req.uri().path() == "/echo-secret" && req.uri().query() == Some("form=chunked");
    let resp = handle_whole(req, log).await?;
    if !chunked {
        return Ok(resp.map(http_body_util::Either::Left));
    }
    let (parts, body) = resp.into_parts();
    let bytes = body
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    let frames = bytes.chunks(3).map(Bytes::copy_from_slice).collect();
    Ok(Response::from_parts(
        parts,
        http_body_util::Either::Right(Chunks(frames)),
    ))
}

async fn handle_whole(
    mut req: Request<Incoming>,
    log: Log,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let method = req.method().to_string();
    let target = req
        .uri()
        .path_and_query()
        .map_or_else(|| req.uri().path().to_string(), ToString::to_string);
    let version = format!("{:?}", req.version());
    let headers: Vec<(String, String)> = req
        .headers()
        .iter()
        .map(|(n, v)| {
            (
                n.as_str().to_string(),
                String::from_utf8_lossy(v.as_bytes()).into_owned(),
            )
        })
        .collect();
    let authorization = req
        .headers()
        .get(hyper::header::AUTHORIZATION)
        .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
        .unwrap_or_default();
    let path = req.uri().path().to_string();
    let query = req.uri().query().unwrap_or_default().to_string();

    let is_ws = path == "/ws"
        && req
            .headers()
            .get(hyper::header::UPGRADE)
            .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"websocket"));
    if is_ws {
        let key = req
            .headers()
            .get("sec-websocket-key")
            .map(|v| v.as_bytes().to_vec())
            .unwrap_or_default();
        log.lock().unwrap().push(Recorded {
            method,
            target,
            version,
            headers,
            body: Vec::new(),
        });
        let upgrade = hyper::upgrade::on(&mut req);
        tokio::spawn(async move {
            if let Ok(up) = upgrade.await {
                ws_session(TokioIo::new(up), &authorization).await;
            }
        });
        let mut sha = Sha1::new();
        sha.update(&key);
        sha.update(b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11");
        let accept = base64::engine::general_purpose::STANDARD.encode(sha.finalize());
        let mut r = Response::new(Full::new(Bytes::new()));
        *r.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
        let h = r.headers_mut();
        h.insert(hyper::header::UPGRADE, "websocket".parse().unwrap());
        h.insert(hyper::header::CONNECTION, "Upgrade".parse().unwrap());
        h.insert("sec-websocket-accept", accept.parse().unwrap());
        return Ok(r);
    }

    let body = match req.into_body().collect().await {
        Ok(b) => b.to_bytes().to_vec(),
        Err(_) => Vec::new(),
    };
    let rec = Recorded {
        method,
        target,
        version,
        headers,
        body,
    };
    log.lock().unwrap().push(rec.clone());

    if path == "/echo-secret" {
        let value = authorization
            .strip_prefix("Bearer ")
            .unwrap_or(&authorization)
            .to_string();
        let form = query
            .split('&')
            .find_map(|kv| kv.strip_prefix("form="))
            .unwrap_or("raw");
        return Ok(echo_secret(form, &value).await);
    }
    if path == "/redirect" {
        let mut r = reply(StatusCode::FOUND, "text/plain", "");
        r.headers_mut().insert(
            hyper::header::LOCATION,
            "http://169.254.169.254/latest/meta-data/".parse().unwrap(),
        );
        return Ok(r);
    }
    if path == "/repo.git/info/refs" {
        let mut r = reply(
            StatusCode::OK,
            "application/x-git-upload-pack-advertisement",
            empty_repo_advertisement(),
        );
        r.headers_mut()
            .insert("cache-control", "no-cache".parse().unwrap());
        return Ok(r);
    }
    let json = serde_json::json!({
        "method": rec.method,
        "target": rec.target,
        "version": rec.version,
        "headers": rec.headers,
        "body": rec.body_text(),
    });
    Ok(reply(
        StatusCode::OK,
        "application/json",
        serde_json::to_string(&json).unwrap(),
    ))
}

async fn echo_secret(form: &str, value: &str) -> Response<Full<Bytes>> {
    let b64 = &base64::engine::general_purpose::STANDARD;
    let b64url = &base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let text = match form {
        "raw" | "chunked" => value.to_string(),
        "upper" => value.to_ascii_uppercase(),
        "b64" => b64.encode(value),
        "b64url" => b64url.encode(value),
        "json" => serde_json::to_string(&serde_json::json!({ "value": value })).unwrap(),
        "urlenc" => format!(
            "value={}",
            percent_encoding::utf8_percent_encode(value, URL_COMPONENT)
        ),
        "gzip" => {
            let mut enc = async_compression::tokio::write::GzipEncoder::new(Vec::new());
            enc.write_all(value.as_bytes()).await.unwrap();
            enc.shutdown().await.unwrap();
            let mut r = reply(StatusCode::OK, "text/plain", enc.into_inner());
            r.headers_mut()
                .insert(hyper::header::CONTENT_ENCODING, "gzip".parse().unwrap());
            return r;
        }
        other => {
            return reply(
                StatusCode::BAD_REQUEST,
                "text/plain",
                format!("unknown form {other}"),
            );
        }
    };
    let mut sha = Sha1::new();
    sha.update(text.as_bytes());
    let etag = format!("\"{:x}\"", sha.finalize());
    let mut r = reply(StatusCode::OK, "text/plain", text);
    r.headers_mut()
        .insert(hyper::header::ETAG, etag.parse().unwrap());
    r
}

/// A pkt-line.
fn pkt(s: &str) -> String {
    format!("{:04x}{s}", s.len() + 4)
}

/// Protocol v0 advertisement of a repository with no refs.
fn empty_repo_advertisement() -> String {
    format!(
        "{}0000{}0000",
        pkt("# service=git-upload-pack\n"),
        pkt("0000000000000000000000000000000000000000 capabilities^{}\0agent=kz-echo\n")
    )
}

/// A minimal RFC 6455 server side: sends `auth:<authorization>`, then echoes text frames,
/// answers pings and closes on close. Fragmented messages are not supported (not needed).
async fn ws_session<S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin>(
    mut s: S,
    authorization: &str,
) {
    if ws_write(&mut s, 0x1, format!("auth:{authorization}").as_bytes())
        .await
        .is_err()
    {
        return;
    }
    loop {
        let mut head = [0u8; 2];
        if s.read_exact(&mut head).await.is_err() {
            return;
        }
        let opcode = head[0] & 0x0f;
        let masked = head[1] & 0x80 != 0;
        let mut len = u64::from(head[1] & 0x7f);
        if len == 126 {
            let mut b = [0u8; 2];
            if s.read_exact(&mut b).await.is_err() {
                return;
            }
            len = u64::from(u16::from_be_bytes(b));
        } else if len == 127 {
            let mut b = [0u8; 8];
            if s.read_exact(&mut b).await.is_err() {
                return;
            }
            len = u64::from_be_bytes(b);
        }
        if len > 16 << 20 {
            return;
        }
        let mut mask = [0u8; 4];
        if masked && s.read_exact(&mut mask).await.is_err() {
            return;
        }
        let mut payload = vec![0u8; usize::try_from(len).unwrap()];
        if s.read_exact(&mut payload).await.is_err() {
            return;
        }
        if masked {
            for (i, b) in payload.iter_mut().enumerate() {
                *b ^= mask[i % 4];
            }
        }
        let sent = match opcode {
            0x1 => ws_write(&mut s, 0x1, &payload).await,
            0x9 => ws_write(&mut s, 0xA, &payload).await,
            0x8 => {
                let _ = ws_write(&mut s, 0x8, &payload).await;
                return;
            }
            _ => Ok(()),
        };
        if sent.is_err() {
            return;
        }
    }
}

async fn ws_write<S: tokio::io::AsyncWrite + Unpin>(
    s: &mut S,
    opcode: u8,
    payload: &[u8],
) -> std::io::Result<()> {
    let mut frame = vec![0x80 | opcode];
    match payload.len() {
        n if n < 126 => frame.push(u8::try_from(n).unwrap()),
        n if n <= 0xffff => {
            frame.push(126);
            frame.extend_from_slice(&u16::try_from(n).unwrap().to_be_bytes());
        }
        n => {
            frame.push(127);
            frame.extend_from_slice(&u64::try_from(n).unwrap().to_be_bytes());
        }
    }
    frame.extend_from_slice(payload);
    s.write_all(&frame).await?;
    s.flush().await
}
