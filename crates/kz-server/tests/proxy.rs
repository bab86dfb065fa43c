//! The credential proxy end to end, in process: one server issues short-lived tokens
//! (`/v1/resolve`, Ed25519 signing key), a second one redeems them (`--proxy`, the public key)
//! towards a real HTTPS upstream on loopback (its own CA, given as the bundle's `upstream_ca`)
//! that echoes what it received, in several encodings. Requests reach the proxy as raw HTTP/1.1
//! (absolute-form and origin-form with `Host`), so each test controls every byte.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

mod common;
use common::{indent, options};

use std::net::SocketAddr;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use base64::Engine as _;
use bytes::Bytes;
use http_body_util::Full;
use hyper::service::service_fn;
use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

const CANARY: &str = "kz-canary-proxy-5d1e9a77c3";
const ISS: &str = "https://ci.example";

/// What the upstream received: method, target, headers.
type Seen = Arc<Mutex<Vec<(String, String, Vec<(String, String)>)>>>;

/// A loopback HTTPS server that records each request and answers with everything it got,
/// the `Authorization` header also base64-, percent- and JSON-escaped, and in a header.
async fn upstream(dir: &Path) -> (u16, Seen) {
    let ca_key = KeyPair::generate().unwrap();
    let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca_cert = ca.self_signed(&ca_key).unwrap();
    std::fs::write(dir.join("upstream-ca.pem"), ca_cert.pem()).unwrap();
    let issuer = Issuer::new(ca, ca_key);
    let leaf_key = KeyPair::generate().unwrap();
    let leaf = CertificateParams::new(vec!["localhost".to_string()])
        .unwrap()
        .signed_by(&leaf_key, &issuer)
        .unwrap();
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let mut tls = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(
            vec![leaf.der().clone()],
            rustls_pki_types::PrivateKeyDer::Pkcs8(leaf_key.serialize_der().into()),
        )
        .unwrap();
    tls.alpn_protocols = vec![b"http/1.1".to_vec()];
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(tls));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let seen: Seen = Arc::default();
    let record = Arc::clone(&seen);
    tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                return;
            };
            let acceptor = acceptor.clone();
            let record = Arc::clone(&record);
            tokio::spawn(async move {
                let Ok(tls) = acceptor.accept(tcp).await else {
                    return;
                };
                let service = service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
                    let record = Arc::clone(&record);
                    async move {
                        let headers: Vec<(String, String)> = req
                            .headers()
                            .iter()
                            .map(|(k, v)| {
                                (k.to_string(), String::from_utf8_lossy(v.as_bytes()).into())
                            })
                            .collect();
                        let target = req.uri().to_string();
                        record.lock().unwrap().push((
                            req.method().to_string(),
                            target.clone(),
                            headers.clone(),
                        ));
                        let auth = headers
                            .iter()
                            .find(|(k, _)| k == "authorization")
                            .map(|(_, v)| v.clone())
                            .unwrap_or_default();
                        let mut resp = if target.starts_with("/redirect") {
                            hyper::Response::builder()
                                .status(302)
                                .header("location", "http://169.254.169.254/latest/meta-data/")
                                .body(Full::new(Bytes::new()))
                                .unwrap()
                        } else {
                            let body = json!({
                                "target": target,
                                "headers": headers,
                                "b64": base64::engine::general_purpose::STANDARD.encode(&auth),
                                "pct": percent_encoding::utf8_percent_encode(&auth, percent_encoding::NON_ALPHANUMERIC).to_string(),
                            });
                            hyper::Response::new(Full::new(Bytes::from(body.to_string())))
                        };
                        if let Ok(v) = hyper::header::HeaderValue::from_str(&auth) {
                            resp.headers_mut().insert("x-echo", v);
                        }
                        resp.headers_mut().insert(
                            "set-cookie",
                            hyper::header::HeaderValue::from_static(
                                "session=minted-with-the-credential",
                            ),
                        );
                        Ok::<_, std::convert::Infallible>(resp)
                    }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(tls), service)
                    .await;
            });
        }
    });
    (port, seen)
}

fn bundle(public: &str, port: u16) -> String {
    format!(
        r#"version: "1"
issuers:
  - name: ci
    type: custom
    issuer_url: {ISS}
    audience: keyzero
    static_keys:
      - kid: k1
        alg: ES256
        pem: |
{pem}backends:
  files: {{ type: dotenv, path: secrets.env }}
resolvers:
  - name: "api/*"
    backend: files
    ref: CRED
    mode: short_lived
    ttl: 60s
    hosts: ["localhost:{port}"]
    methods: [GET, POST]
    paths: ["/v1/**", "/redirect"]
    credential_location: "header:Authorization:Bearer"
  - {{ name: "once/*", backend: files, ref: CRED, mode: short_lived, single_use: true, hosts: ["localhost:{port}"] }}
  - {{ name: "q/*", backend: files, ref: CRED, mode: short_lived, hosts: ["localhost:{port}"], credential_location: "query:api_key" }}
  - {{ name: "short/*", backend: files, ref: SHORT, mode: short_lived, hosts: ["localhost:{port}"] }}
policies:
  - {{ name: ci, rule: 'issuer == "ci"', effect: allow }}
upstream_ca: upstream-ca.pem
audit: {{ path: audit.jsonl }}
"#,
        pem = indent(public, 10)
    )
}

/// A raw HTTP/1.1 exchange with `addr`: status, head (lowercase) and body.
async fn raw(addr: SocketAddr, request: &str) -> (u16, String, String) {
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(request.as_bytes()).await.unwrap();
    let mut out = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(20), s.read_to_end(&mut out)).await;
    let text = String::from_utf8_lossy(&out).to_string();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    (status, head.to_lowercase(), body.to_string())
}

fn get(target: &str, host: &str, token: &str, extra: &str) -> String {
    format!(
        "GET {target} HTTP/1.1\r\nHost: {host}\r\nProxy-Authorization: Bearer {token}\r\n{extra}Connection: close\r\n\r\n"
    )
}

struct World {
    dir: tempfile::TempDir,
    port: u16,
    seen: Seen,
    client_key: String,
    issuing: kz_server::Running,
    proxy: kz_server::Running,
    signing_pem: String,
}

impl World {
    async fn new() -> World {
        let dir = tempfile::tempdir().unwrap();
        let (port, seen) = upstream(dir.path()).await;
        let client = KeyPair::generate().unwrap();
        std::fs::write(
            dir.path().join("bundle.yaml"),
            bundle(&client.public_key_pem(), port),
        )
        .unwrap();
        std::fs::write(
            dir.path().join("secrets.env"),
            format!("CRED={CANARY}\nSHORT=Zq7Kp2x\n"),
        )
        .unwrap();
        let signing = KeyPair::generate_for(&rcgen::PKCS_ED25519).unwrap();
        std::fs::write(dir.path().join("signing.pem"), signing.serialize_pem()).unwrap();
        std::fs::write(dir.path().join("public.pem"), signing.public_key_pem()).unwrap();
        let mut o = options(dir.path());
        o.signing_key = Some(dir.path().join("signing.pem"));
        o.audit = Some(dir.path().join("issuing.jsonl").display().to_string());
        let issuing = kz_server::start(o).await.unwrap();
        let mut o = options(dir.path());
        o.proxy_public_key = Some(dir.path().join("public.pem"));
        o.timeouts.body = Duration::from_secs(1);
        let proxy = kz_server::start(o).await.unwrap();
        World {
            dir,
            port,
            seen,
            client_key: client.serialize_pem(),
            issuing,
            proxy,
            signing_pem: signing.serialize_pem(),
        }
    }

    /// A short-lived token for `reference`, from the issuing server.
    async fn token(&self, reference: &str) -> String {
        self.token_as(reference, "agent-1").await
    }

    /// A short-lived token for `reference` issued to the workload `sub`.
    async fn token_as(&self, reference: &str, sub: &str) -> String {
        let id = kz_identity::sign(
            &self.client_key,
            Some("ES256"),
            Some("k1"),
            &json!({"iss": ISS, "aud": "keyzero", "sub": sub}),
        )
        .unwrap();
        let resp = reqwest::Client::builder()
            .no_proxy()
            .build()
            .unwrap()
            .post(format!("http://{}/v1/resolve", self.issuing.addr))
            .bearer_auth(id)
            .json(&json!({"ref": reference}))
            .send()
            .await
            .unwrap();
        let body: Value = resp.json().await.unwrap();
        body["results"][reference]["token"]
            .as_str()
            .unwrap_or_else(|| panic!("no token: {body}"))
            .to_owned()
    }

    fn host(&self) -> String {
        format!("localhost:{}", self.port)
    }

    fn upstream_count(&self) -> usize {
        self.seen.lock().unwrap().len()
    }

    async fn stop(self) -> (tempfile::TempDir, String) {
        for r in [self.issuing, self.proxy] {
            r.control.shutdown();
            r.wait().await;
        }
        let audit = std::fs::read_to_string(self.dir.path().join("audit.jsonl")).unwrap();
        (self.dir, audit)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_is_redeemed_with_the_credential_injected_and_scrubbed_from_the_answer() {
    let w = World::new().await;
    let token = w.token("api/github").await;
    let host = w.host();

    // Absolute form, with a caller `Authorization` that must not survive.
    let (status, head, body) = raw(
        w.proxy.addr,
        &get(
            &format!("https://{host}/v1/repos?x=1"),
            &host,
            &token,
            "Authorization: Basic dXNlcjpwYXNz\r\n",
        ),
    )
    .await;
    assert_eq!(status, 200, "{head}\n{body}");
    // Origin form: `Host` names the upstream, https:// implied.
    let (status, _, body2) = raw(w.proxy.addr, &get("/v1/user", &host, &token, "")).await;
    assert_eq!(status, 200, "{body2}");

    let seen = w.seen.lock().unwrap().clone();
    assert_eq!(seen.len(), 2, "{seen:#?}");
    for (_, target, headers) in &seen {
        let auths: Vec<&String> = headers
            .iter()
            .filter(|(k, _)| k == "authorization")
            .map(|(_, v)| v)
            .collect();
        assert_eq!(auths, [&format!("Bearer {CANARY}")], "{headers:?}");
        assert!(
            headers
                .iter()
                .all(|(k, v)| k != "proxy-authorization" && !v.contains(&token)),
            "the kz token reached the upstream: {headers:?}"
        );
        assert!(!target.contains(&token));
    }
    assert_eq!(seen[0].1, "/v1/repos?x=1");
    // The echo carried the credential raw, base64, percent-encoded and in a header: none of it
    // comes back.
    for text in [&head, &body, &body2] {
        assert!(!text.contains(CANARY), "{text}");
        let b64 = base64::engine::general_purpose::STANDARD.encode(format!("Bearer {CANARY}"));
        assert!(!text.contains(&b64), "{text}");
    }
    assert!(body.contains("[scrubbed by keyzero]"), "{body}");
    assert!(
        head.contains("x-echo: bearer [scrubbed by keyzero]"),
        "{head}"
    );

    let (_, audit) = w.stop().await;
    let records: Vec<Value> = audit
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let redeemed: Vec<&Value> = records
        .iter()
        .filter(|r| r["transport"] == "proxy" && r["decision"] == "allow")
        .collect();
    assert_eq!(redeemed.len(), 2, "{audit}");
    assert_eq!(redeemed[0]["sub"], "agent-1");
    assert_eq!(redeemed[0]["ref"], "api/github");
    assert_eq!(redeemed[0]["resolver"], "api/*");
    assert_eq!(redeemed[0]["path"], "/v1/repos");
    assert!(
        !audit.contains(CANARY) && !audit.contains(&token),
        "{audit}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_outside_their_binding_or_forged_are_refused_before_anything_is_sent() {
    let w = World::new().await;
    let token = w.token("api/github").await;
    let host = w.host();
    let port = w.port;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let forged =
        |claims: Value, key: &str| kz_identity::sign(key, Some("EdDSA"), None, &claims).unwrap();
    let base_claims = json!({
        "iss": "keyzero", "aud": "keyzero-proxy", "sub": "agent-1", "jti": "j1",
        "resource": "api/github", "resolver": "api/*", "hosts": [host.clone()],
        "iat": now, "exp": now + 60,
    });
    let mut expired = base_claims.clone();
    expired["iat"] = json!(now - 600);
    expired["exp"] = json!(now - 300);
    let other_key = KeyPair::generate_for(&rcgen::PKCS_ED25519)
        .unwrap()
        .serialize_pem();
    let mut wider = base_claims.clone();
    wider["hosts"] = json!(["*.example.com", "127.0.0.1"]);
    let mut tampered: Vec<String> = token.split('.').map(String::from).collect();
    tampered[1] = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(
        serde_json::to_vec(
            &json!({"iss": "keyzero", "aud": "keyzero-proxy", "sub": "x",
            "jti": "j2", "resource": "api/github", "resolver": "api/*", "hosts": ["evil.example"],
            "iat": now, "exp": now + 60}),
        )
        .unwrap(),
    );
    let tampered = tampered.join(".");

    let cases: Vec<(&str, String, u16, &str)> = vec![
        (
            "no token",
            format!(
                "GET https://{host}/v1/x HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n"
            ),
            401,
            "no keyzero token",
        ),
        (
            "expired",
            get(
                &format!("https://{host}/v1/x"),
                &host,
                &forged(expired, &w.signing_pem),
                "",
            ),
            401,
            "expired",
        ),
        (
            "another key",
            get(
                &format!("https://{host}/v1/x"),
                &host,
                &forged(base_claims.clone(), &other_key),
                "",
            ),
            401,
            "signature",
        ),
        (
            "tampered",
            get(&format!("https://{host}/v1/x"), &host, &tampered, ""),
            401,
            "signature",
        ),
        (
            "wrong host",
            get(&format!("https://127.0.0.1:{port}/v1/x"), &host, &token, ""),
            403,
            "may not be used with",
        ),
        (
            "plain http",
            get(&format!("http://{host}/v1/x"), &host, &token, ""),
            403,
            "may not be used with",
        ),
        (
            "wrong method",
            format!(
                "DELETE https://{host}/v1/x HTTP/1.1\r\nHost: {host}\r\nProxy-Authorization: Bearer {token}\r\nConnection: close\r\n\r\n"
            ),
            403,
            "methods: GET, POST",
        ),
        (
            "wrong path",
            get(&format!("https://{host}/admin"), &host, &token, ""),
            403,
            "its paths",
        ),
        (
            "dot segments",
            get(
                &format!("https://{host}/v1/%2e%2e/admin"),
                &host,
                &token,
                "",
            ),
            403,
            "cannot decide",
        ),
        (
            "userinfo",
            get(
                &format!("https://{host}@127.0.0.1:{port}/v1/x"),
                &host,
                &token,
                "",
            ),
            400,
            "user info",
        ),
        (
            "metadata by IP",
            get(
                "http://169.254.169.254/latest/meta-data/",
                "169.254.169.254",
                &token,
                "",
            ),
            403,
            "may not be used with",
        ),
        // A token whose own hosts are wider than any resolver's is still held to the bundle's
        // hosts by the connector, and to the address check after DNS.
        (
            "wider claims, loopback by IP",
            get(
                &format!("https://127.0.0.1:{port}/v1/x"),
                "127.0.0.1",
                &forged(wider, &w.signing_pem),
                "",
            ),
            403,
            "no longer binds",
        ),
        (
            "TRACE",
            format!(
                "TRACE https://{host}/v1/x HTTP/1.1\r\nHost: {host}\r\nProxy-Authorization: Bearer {token}\r\nConnection: close\r\n\r\n"
            ),
            403,
            "never sent",
        ),
        // Methods are compared without case: a server that does so would obey `trace`.
        (
            "trace",
            format!(
                "trace https://{host}/v1/x HTTP/1.1\r\nHost: {host}\r\nProxy-Authorization: Bearer {token}\r\nConnection: close\r\n\r\n"
            ),
            403,
            "never sent",
        ),
        // A method-bound token cannot name another method in a `_method` field.
        (
            "method tunnel",
            get(
                &format!("https://{host}/v1/x?_method=DELETE"),
                &host,
                &token,
                "",
            ),
            403,
            "`_method` field",
        ),
    ];
    for (what, request, want, says) in &cases {
        let (status, head, body) = raw(w.proxy.addr, request).await;
        assert_eq!(status, *want, "{what}: {head}\n{body}");
        assert!(body.contains(says), "{what}: {body}");
        assert!(!body.contains(CANARY), "{what}: {body}");
    }
    assert_eq!(w.upstream_count(), 0, "{:#?}", w.seen.lock().unwrap());

    // A trailing dot is the same host.
    let (status, _, body) = raw(
        w.proxy.addr,
        &get(
            &format!("https://localhost.:{port}/v1/x"),
            &host,
            &token,
            "",
        ),
    )
    .await;
    assert_eq!(status, 200, "{body}");

    // A redirect comes back as it is; nothing follows it with the credential.
    let (status, head, _) = raw(
        w.proxy.addr,
        &get(&format!("https://{host}/redirect"), &host, &token, ""),
    )
    .await;
    assert_eq!(status, 302, "{head}");
    assert!(head.contains("location: http://169.254.169.254/"), "{head}");
    assert_eq!(w.upstream_count(), 2);

    let (_, audit) = w.stop().await;
    let refusals = audit
        .lines()
        .filter(|l| l.contains("\"transport\":\"proxy\"") && l.contains("\"decision\":\"deny\""))
        .count();
    assert_eq!(refusals, cases.len(), "{audit}");
    assert!(!audit.contains(CANARY), "{audit}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn single_use_tokens_redeem_once_and_query_credentials_replace_the_callers() {
    let w = World::new().await;
    let host = w.host();
    let once = w.token("once/deploy").await;
    let (first, _, _) = raw(
        w.proxy.addr,
        &get(&format!("https://{host}/x"), &host, &once, ""),
    )
    .await;
    let (again, _, body) = raw(
        w.proxy.addr,
        &get(&format!("https://{host}/x"), &host, &once, ""),
    )
    .await;
    assert_eq!((first, again), (200, 401), "{body}");
    assert!(body.contains("already used"), "{body}");
    // Another token of the same resolver is a new use.
    let other = w.token("once/deploy").await;
    let (third, _, _) = raw(
        w.proxy.addr,
        &get(&format!("https://{host}/x"), &host, &other, ""),
    )
    .await;
    assert_eq!(third, 200);

    let q = w.token("q/search").await;
    let (status, _, body) = raw(
        w.proxy.addr,
        &get(
            &format!("https://{host}/search?api_key=mine&q=a%20b"),
            &host,
            &q,
            "",
        ),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let seen = w.seen.lock().unwrap().clone();
    let target = &seen.last().unwrap().1;
    assert_eq!(
        target,
        &format!("/search?q=a%20b&api_key={CANARY}"),
        "{seen:#?}"
    );
    assert!(!body.contains(CANARY), "{body}");
    w.stop().await;
}

/// A `redis-server` on a free loopback port, stopped (by PID) when dropped.
struct Redis {
    child: std::process::Child,
    port: u16,
}

impl Redis {
    fn start() -> Redis {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let child = std::process::Command::new("redis-server")
            .args([
                "--port",
                &port.to_string(),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
            ])
            .stdout(std::process::Stdio::null())
            .spawn()
            .unwrap_or_else(|e| {
                panic!("redis-server: {e} (scripts/test installs Debian's redis-server)")
            });
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                std::time::Instant::now() < deadline,
                "redis-server did not start"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        Redis { child, port }
    }

    fn stop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        self.stop();
    }
}

/// With `replay: { redis_url }`, two proxy replicas redeem a single-use token exactly once
/// between them; without it, each replica keeps its own records (as documented); with Redis
/// down, a single-use token is refused (503), never honoured on doubt.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_sharing_redis_redeem_a_single_use_token_once() {
    let w = World::new().await;
    let host = w.host();
    let mut redis = Redis::start();
    let text = std::fs::read_to_string(w.dir.path().join("bundle.yaml")).unwrap();
    std::fs::write(
        w.dir.path().join("bundle.yaml"),
        format!(
            "{text}replay: {{ redis_url: \"redis://127.0.0.1:{}/0\" }}\n",
            redis.port
        ),
    )
    .unwrap();
    let replica = || {
        let mut o = options(w.dir.path());
        o.proxy_public_key = Some(w.dir.path().join("public.pem"));
        o.audit = Some(w.dir.path().join("replicas.jsonl").display().to_string());
        kz_server::start(o)
    };
    let a = replica().await.unwrap();
    let b = replica().await.unwrap();

    let once = w.token("once/deploy").await;
    let request = get(&format!("https://{host}/x"), &host, &once, "");
    let (first, _, _) = raw(a.addr, &request).await;
    let (second, _, body) = raw(b.addr, &request).await;
    let (third, _, _) = raw(a.addr, &request).await;
    assert_eq!((first, second, third), (200, 401, 401), "{body}");
    assert!(body.contains("already used"), "{body}");
    // The per-replica default (the World's proxy has no Redis) would have let it through
    // once more: the records really are shared through Redis, not in each process.
    let (own, _, _) = raw(w.proxy.addr, &request).await;
    assert_eq!(own, 200);
    let upstream_before = w.upstream_count();

    // Redis down: refused, and nothing is sent upstream.
    redis.stop();
    let fresh = w.token("once/deploy").await;
    let (status, _, body) = raw(
        b.addr,
        &get(&format!("https://{host}/x"), &host, &fresh, ""),
    )
    .await;
    assert_eq!(status, 503, "{body}");
    assert!(body.contains("cannot confirm"), "{body}");
    assert_eq!(w.upstream_count(), upstream_before);
    // A token that is not single-use does not need the store.
    let api = w.token("api/x").await;
    let (status, _, _) = raw(
        b.addr,
        &get(&format!("https://{host}/v1/x"), &host, &api, ""),
    )
    .await;
    assert_eq!(status, 200);

    for r in [a, b] {
        r.control.shutdown();
        r.wait().await;
    }
    w.stop().await;
}

/// A token verified once is remembered by its exact bytes, and its `exp` still holds on every
/// later use.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_remembered_token_still_expires() {
    let w = World::new().await;
    let host = w.host();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    // Expired 3 s ago: within the 5 s leeway for now.
    let claims = json!({
        "iss": "keyzero", "aud": "keyzero-proxy", "sub": "agent-1", "jti": "late",
        "resource": "api/github", "resolver": "api/*", "hosts": [host.clone()],
        "iat": now - 60, "exp": now - 3,
    });
    let token = kz_identity::sign(&w.signing_pem, Some("EdDSA"), None, &claims).unwrap();
    let request = get(&format!("https://{host}/v1/x"), &host, &token, "");
    let (first, _, body) = raw(w.proxy.addr, &request).await;
    assert_eq!(first, 200, "{body}");
    tokio::time::sleep(Duration::from_millis(3500)).await;
    let (again, _, body) = raw(w.proxy.addr, &request).await;
    assert_eq!(again, 401, "{body}");
    assert!(body.contains("expired"), "{body}");
    w.stop().await;
}

/// The hostile review's findings, each as the principle that closes it: headers that would let
/// the upstream serve another method, resource or slice are not forwarded, nor is a cookie
/// minted for the credential returned; a body must arrive in time; a credential too short to
/// scrub is not served; and a caller that sends the credential (the scrubber as a guessing
/// oracle) is refused, then and from then on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn overrides_slices_cookies_slow_bodies_short_credentials_and_guesses_are_refused() {
    let w = World::new().await;
    let host = w.host();
    let token = w.token("api/github").await;
    let (status, head, _) = raw(
        w.proxy.addr,
        &get(
            &format!("https://{host}/v1/x"),
            &host,
            &token,
            "Range: bytes=7-12\r\nIf-Range: x\r\nX-HTTP-Method-Override: DELETE\r\nX-Original-URL: /admin\r\nX-Forwarded-For: 10.0.0.1\r\nForwarded: for=10.0.0.1\r\nX-Custom: kept\r\nX-Named: by-connection\r\nConnection: x-named\r\n",
        ),
    )
    .await;
    assert_eq!(status, 200, "{head}");
    assert!(!head.contains("set-cookie"), "{head}");
    let seen = w.seen.lock().unwrap().clone();
    let headers = &seen.last().unwrap().2;
    let names: Vec<&str> = headers.iter().map(|(k, _)| k.as_str()).collect();
    for gone in [
        "range",
        "if-range",
        "x-http-method-override",
        "x-original-url",
        "x-forwarded-for",
        "forwarded",
        "x-named",
    ] {
        assert!(!names.contains(&gone), "{gone} forwarded: {names:?}");
    }
    assert!(names.contains(&"x-custom"), "{names:?}");

    // A body announced and never sent: 408 within the body time, nothing upstream.
    let before = w.upstream_count();
    let started = std::time::Instant::now();
    let (status, _, body) = raw(
        w.proxy.addr,
        &format!("POST https://{host}/v1/x HTTP/1.1\r\nHost: {host}\r\nProxy-Authorization: Bearer {token}\r\nContent-Length: 100\r\n\r\n"),
    )
    .await;
    assert_eq!(status, 408, "{body}");
    assert!(started.elapsed() < Duration::from_secs(10));

    // A body the credential check cannot read is not forwarded.
    let (status, _, body) = raw(
        w.proxy.addr,
        &format!("POST https://{host}/v1/x HTTP/1.1\r\nHost: {host}\r\nProxy-Authorization: Bearer {token}\r\nContent-Encoding: gzip\r\nContent-Length: 3\r\nConnection: close\r\n\r\nabc"),
    )
    .await;
    assert_eq!(status, 415, "{body}");

    // Too short to scrub: not served.
    let short = w.token("short/x").await;
    let (status, _, body) = raw(
        w.proxy.addr,
        &get(&format!("https://{host}/x"), &host, &short, ""),
    )
    .await;
    assert_eq!(status, 502, "{body}");
    assert!(
        body.contains("too short") && !body.contains("Zq7Kp2x"),
        "{body}"
    );
    assert_eq!(w.upstream_count(), before);

    // A guess: 16 bytes of the credential in the query. Refused before sending, and every
    // token of this caller after it.
    let fragment = &CANARY[..16];
    let (status, _, body) = raw(
        w.proxy.addr,
        &get(
            &format!("https://{host}/v1/{fragment}?q={fragment}"),
            &host,
            &token,
            "",
        ),
    )
    .await;
    assert_eq!(status, 403, "{body}");
    assert!(body.contains("carries the credential"), "{body}");
    assert!(!body.contains(fragment), "{body}");
    let fresh = w.token("api/github").await;
    let (status, _, body) = raw(
        w.proxy.addr,
        &get(&format!("https://{host}/v1/x"), &host, &fresh, ""),
    )
    .await;
    assert_eq!(status, 403, "{body}");
    assert!(body.contains("refused from then on"), "{body}");
    // …and the credential is no longer served to anyone by this replica (rotate it).
    let other = w.token_as("api/github", "agent-2").await;
    let (status, _, body) = raw(
        w.proxy.addr,
        &get(&format!("https://{host}/v1/x"), &host, &other, ""),
    )
    .await;
    assert_eq!(status, 403, "{body}");
    assert!(body.contains("no longer served"), "{body}");
    assert_eq!(w.upstream_count(), before);
    let (_, audit) = w.stop().await;
    assert!(audit.contains("carries the credential"), "{audit}");
    assert!(
        !audit.contains(CANARY) && !audit.contains(fragment),
        "{audit}"
    );
    assert!(
        audit.contains("[withheld: it carried the credential]"),
        "{audit}"
    );
}
