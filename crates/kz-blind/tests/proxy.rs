//! The proxy end to end, in process: a local HTTPS echo server with its own CA upstream, a
//! reqwest client (HTTP/1.1 and HTTP/2) through the proxy, and a canary value that must reach
//! the allowed upstream and nothing else.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

#[path = "support/upstream.rs"]
mod upstream;

use std::sync::Arc;

use kz_blind::ca::{RunCa, upstream_client_config};
use kz_blind::policy::{Policy, SecretHosts};
use kz_blind::proxy::{Proxy, STOPPED, Settings};
use kz_blind::secrets::{BlindSecret, SecretTable};
use kz_config::{BlindConfig, HostPattern, SwapIn};
use kz_secret::SecretValue;
use upstream::Upstream;

const CANARY: &str = "kz-canary-Zq8vLx3N0pW";

struct Harness {
    upstream: Upstream,
    other: Upstream,
    /// A plain-HTTP server; API_TOKEN is bound to it only when the test says so.
    plain: Upstream,
    proxy: Proxy,
    /// The proxy URL with its credential, as the command gets it.
    proxy_url: String,
    /// `host:port` of the proxy.
    proxy_addr: String,
    /// `Basic …`: the `Proxy-Authorization` value for raw requests.
    proxy_auth: String,
    token: String,
    ca_pem: String,
    _dir: tempfile::TempDir,
    audit: std::path::PathBuf,
    writer: Arc<kz_audit::Writer>,
}

async fn harness(extra: &[&str]) -> Harness {
    harness_with(extra, &[], SwapIn::default()).await
}

/// API_TOKEN swapped in bodies too (`swap = ["headers", "query", "body"]`).
async fn harness_body(extra: &[&str]) -> Harness {
    harness_with(
        extra,
        &[],
        SwapIn {
            body: true,
            ..SwapIn::default()
        },
    )
    .await
}

/// `api_hosts`: more hosts for API_TOKEN, with `{plain}` standing for the plain server's port.
async fn harness_with(extra: &[&str], api_hosts: &[&str], swap: SwapIn) -> Harness {
    harness_full(extra, api_hosts, swap, CANARY, true, false).await
}

/// API_TOKEN holds `value`; responses scrubbed or not.
async fn harness_value(extra: &[&str], value: &str, scrub_responses: bool) -> Harness {
    harness_full(extra, &[], SwapIn::default(), value, scrub_responses, false).await
}

/// A value with the characters servers escape differently (`/ + = & < ' >`, a space).
const RICH: &str = "kz/canary+Zq8 vLx3=N0pW&q<'>tail";

async fn harness_full(
    extra: &[&str],
    api_hosts: &[&str],
    swap: SwapIn,
    value: &str,
    scrub_responses: bool,
    http1_only: bool,
) -> Harness {
    let upstream = Upstream::start_with(http1_only).await;
    let other = Upstream::start().await;
    let plain = Upstream::start_plain().await;
    let dir = tempfile::tempdir().unwrap();
    // Both test servers share nothing: trust both CAs upstream.
    let ca_file = dir.path().join("upstream-ca.pem");
    std::fs::write(&ca_file, format!("{}{}", upstream.ca_pem, other.ca_pem)).unwrap();
    let mut hosts = vec![HostPattern::parse(&format!("localhost:{}", upstream.port())).unwrap()];
    for h in api_hosts {
        let h = h.replace("{plain}", &plain.port().to_string());
        hosts.push(HostPattern::parse(&h).unwrap());
    }
    // A second secret bound to the other server, so that server is reachable (named exactly)
    // but API_TOKEN is not bound to it.
    let other_hosts = vec![HostPattern::parse(&format!("localhost:{}", other.port())).unwrap()];
    let cli: Vec<HostPattern> = extra
        .iter()
        .map(|h| HostPattern::parse(h).unwrap())
        .collect();
    let planned = Policy::plan(
        &[
            SecretHosts {
                name: "API_TOKEN",
                hosts: &hosts,
            },
            SecretHosts {
                name: "OTHER_TOKEN",
                hosts: &other_hosts,
            },
        ],
        &BlindConfig::default(),
        &cli,
    )
    .unwrap();
    let secret = BlindSecret::new(
        "API_TOKEN",
        SecretValue::from_str_copy(value),
        planned.hosts[0].clone(),
    )
    .with_swap(swap);
    let other_secret = BlindSecret::new(
        "OTHER_TOKEN",
        SecretValue::from_str_copy("other-value-not-the-canary"),
        planned.hosts[1].clone(),
    );
    let token = secret.token.clone();
    let ca = RunCa::new().unwrap();
    let ca_pem = ca.cert_pem().to_string();
    let audit = dir.path().join("audit.jsonl");
    let writer = Arc::new(kz_audit::Writer::open(&audit).unwrap());
    let proxy = Proxy::new(Settings {
        table: SecretTable {
            secrets: vec![secret, other_secret],
        },
        policy: planned.policy,
        ca,
        upstream_tls: upstream_client_config(Some(&ca_file)).unwrap(),
        scrub_responses,
        audit: Some(Arc::clone(&writer)),
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let proxy_addr = listener.local_addr().unwrap().to_string();
    let proxy_url = proxy.url_for(&proxy_addr);
    let userinfo = proxy_url
        .strip_prefix("http://")
        .unwrap()
        .split_once('@')
        .unwrap()
        .0;
    let proxy_auth = {
        use base64::Engine as _;
        format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode(userinfo)
        )
    };
    let p = proxy.clone();
    tokio::spawn(async move { p.serve_tcp(listener).await });
    Harness {
        upstream,
        other,
        plain,
        proxy,
        proxy_url,
        proxy_addr,
        proxy_auth,
        token,
        ca_pem,
        _dir: dir,
        audit,
        writer,
    }
}

fn client(h: &Harness, http2: bool) -> reqwest::Client {
    let b = reqwest::Client::builder()
        .proxy(reqwest::Proxy::all(&h.proxy_url).unwrap())
        .tls_certs_only([reqwest::Certificate::from_pem(h.ca_pem.as_bytes()).unwrap()]);
    let b = if http2 {
        b.http2_prior_knowledge()
    } else {
        b.http1_only()
    };
    b.build().unwrap()
}

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

fn audit_text(h: &Harness) -> String {
    h.writer.flush().unwrap();
    std::fs::read_to_string(&h.audit).unwrap_or_default()
}

#[test]
fn token_is_swapped_for_the_allowed_host_over_http1_and_http2() {
    rt().block_on(async {
        let h = harness(&[]).await;
        for http2 in [false, true] {
            let url = format!(
                "https://localhost:{}/v1/x?key={}",
                h.upstream.port(),
                h.token
            );
            let resp = client(&h, http2)
                .post(&url)
                .bearer_auth(&h.token)
                .header("x-basic", "x")
                .body(format!("{{\"token\":\"{}\"}}", h.token))
                .send()
                .await
                .unwrap();
            assert_eq!(resp.status(), 200);
            let text = resp.text().await.unwrap();
            assert!(text.starts_with("ok POST /v1/x"), "{text}");
        }
        let seen = h.upstream.seen();
        assert_eq!(seen.len(), 2);
        for s in &seen {
            assert_eq!(
                s.header("authorization").unwrap(),
                format!("Bearer {CANARY}").as_bytes()
            );
            assert_eq!(s.target, format!("/v1/x?key={CANARY}"));
            // Not in the body: API_TOKEN's entry does not ask for it.
            assert_eq!(s.body, format!("{{\"token\":\"{}\"}}", h.token).as_bytes());
        }
        let summary = h.proxy.summary();
        assert_eq!(summary.swapped_requests, 2);
        let audit = audit_text(&h);
        assert!(audit.contains("\"mode\":\"swap\""), "{audit}");
        assert!(audit.contains("API_TOKEN"));
        assert!(!audit.contains(CANARY) && !audit.contains(&h.token));
    });
}

#[test]
fn token_for_another_host_is_refused_and_nothing_is_sent() {
    rt().block_on(async {
        let h = harness(&[]).await;
        let url = format!("https://localhost:{}/steal", h.other.port());
        // The other server is reachable (OTHER_TOKEN's host), but API_TOKEN is not bound to it.
        let resp = client(&h, false)
            .get(&url)
            .bearer_auth(&h.token)
            .send()
            .await
            .unwrap();
        let status = resp.status();
        let text = resp.text().await.unwrap();
        assert!(status == 403, "{status} {text}");
        assert!(text.contains("API_TOKEN"), "{text}");
        assert!(h.other.seen().is_empty());
        assert!(!text.contains(CANARY));
    });
}

#[test]
fn echoed_values_are_scrubbed_plain_and_gzip() {
    rt().block_on(async {
        let h = harness(&[]).await;
        for q in ["", "?gzip"] {
            let url = format!("https://localhost:{}/echo-auth{q}", h.upstream.port());
            let resp = client(&h, false)
                .get(&url)
                .bearer_auth(&h.token)
                .send()
                .await
                .unwrap();
            assert_eq!(resp.status(), 200);
            let echo = resp.headers().get("x-echo").unwrap().as_bytes().to_vec();
            assert_eq!(echo, h.token.as_bytes());
            let body = resp.bytes().await.unwrap();
            assert_eq!(&body[..], format!("echo: {}", h.token).as_bytes(), "{q}");
        }
        let audit = audit_text(&h);
        assert!(audit.contains("\"mode\":\"scrub\""), "{audit}");
        assert!(!audit.contains(CANARY));
    });
}

#[test]
fn loopback_hosts_not_named_explicitly_are_refused() {
    rt().block_on(async {
        // 127.0.0.1 is not named by any pattern (only localhost:PORT is).
        let h = harness(&[]).await;
        let url = format!("https://127.0.0.1:{}/", h.upstream.port());
        let resp = client(&h, false).get(&url).send().await;
        // Refused at CONNECT, before any tunnel: reqwest reports the failed tunnel as an error.
        let err = resp.unwrap_err();
        assert!(format!("{err:?}").contains("TunnelUnsuccessful"), "{err:?}");
        assert!(h.upstream.seen().is_empty());
    });
}

#[test]
fn upstream_failure_is_a_502_with_the_reason() {
    rt().block_on(async {
        // A port with nothing listening, explicitly allowed.
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        drop(l);
        let h = harness(&[&format!("localhost:{port}")]).await;
        let resp = reqwest::Client::builder()
            .proxy(reqwest::Proxy::all(&h.proxy_url).unwrap())
            .build()
            .unwrap()
            .get(format!("http://localhost:{port}/"))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 502);
        let text = resp.text().await.unwrap();
        assert!(text.contains("failed"), "{text}");
    });
}

#[test]
fn a_host_header_naming_another_site_is_replaced_by_the_destination() {
    rt().block_on(async {
        let h = harness(&[]).await;
        let url = format!("https://localhost:{}/front", h.upstream.port());
        for http2 in [false, true] {
            let resp = client(&h, http2)
                .get(&url)
                .header("host", "attacker.example")
                .bearer_auth(&h.token)
                .send()
                .await
                .unwrap();
            assert_eq!(resp.status(), 200);
        }
        for seen in h.upstream.seen() {
            assert!(
                seen.host.starts_with("localhost"),
                "the upstream was asked for {}",
                seen.host
            );
        }
    });
}

#[test]
fn a_streamed_body_with_a_token_for_another_host_is_refused_before_anything_is_sent() {
    rt().block_on(async {
        let h = harness(&[]).await;
        let url = format!("https://localhost:{}/upload", h.other.port());
        // No Content-Length: the body arrives chunked, the token split across chunks.
        let (a, b) = h.token.split_at(15);
        let chunks: Vec<Result<String, std::io::Error>> = vec![
            Ok(format!("data={a}")),
            Ok(b.to_string()),
            Ok("&end".into()),
        ];
        let resp = client(&h, false)
            .post(&url)
            .body(reqwest::Body::wrap_stream(futures_util::stream::iter(
                chunks,
            )))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 403);
        assert!(resp.text().await.unwrap().contains("API_TOKEN"));
        assert!(
            h.other.seen().is_empty(),
            "nothing reached the other server"
        );
    });
}

#[test]
fn a_streamed_body_is_swapped_and_audited() {
    rt().block_on(async {
        let h = harness_body(&[]).await;
        let url = format!("https://localhost:{}/upload", h.upstream.port());
        let chunks: Vec<Result<String, std::io::Error>> =
            vec![Ok("t=".into()), Ok(h.token.clone()), Ok(";".into())];
        let resp = client(&h, false)
            .post(&url)
            .body(reqwest::Body::wrap_stream(futures_util::stream::iter(
                chunks,
            )))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200);
        let seen = h.upstream.seen();
        assert_eq!(seen[0].body, format!("t={CANARY};").as_bytes());
        assert!(audit_text(&h).contains("\"mode\":\"swap\""));
    });
}

#[test]
fn values_never_travel_in_clear_text_to_a_host_not_named_exactly() {
    rt().block_on(async {
        // `*.localhost`-style wildcards cannot name a loopback host here; use a wildcard that
        // covers a plain-HTTP destination explicitly allowed for connections by another pattern.
        let h = harness(&["*.example.test"]).await;
        let resp = reqwest::Client::builder()
            .proxy(reqwest::Proxy::all(&h.proxy_url).unwrap())
            .build()
            .unwrap()
            .get("http://api.example.test/")
            .bearer_auth(&h.token)
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 403);
        let text = resp.text().await.unwrap();
        assert!(text.contains("unencrypted"), "{text}");
    });
}

#[test]
fn range_requests_are_not_forwarded_while_scrubbing() {
    rt().block_on(async {
        let h = harness(&[]).await;
        let url = format!("https://localhost:{}/r", h.upstream.port());
        let resp = client(&h, false)
            .get(&url)
            .header("range", "bytes=0-3")
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200);
        assert!(h.upstream.seen()[0].header("range").is_none());
    });
}

#[test]
fn a_body_over_the_buffer_limit_streams_and_its_swap_is_audited() {
    rt().block_on(async {
        let h = harness_body(&[]).await;
        let url = format!("https://localhost:{}/big", h.upstream.port());
        let filler = "x".repeat(kz_blind::proxy::BUFFER_LIMIT + 1024);
        let chunks: Vec<Result<String, std::io::Error>> =
            vec![Ok(filler.clone()), Ok(h.token.clone())];
        let resp = client(&h, false)
            .post(&url)
            .body(reqwest::Body::wrap_stream(futures_util::stream::iter(
                chunks,
            )))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200);
        let seen = h.upstream.seen();
        assert_eq!(seen[0].body.len(), filler.len() + CANARY.len());
        assert!(seen[0].body.ends_with(CANARY.as_bytes()));
        let audit = audit_text(&h);
        assert!(audit.contains("\"mode\":\"swap\""), "{audit}");
        assert_eq!(h.proxy.summary().swapped_requests, 1);
    });
}

#[test]
fn expect_100_continue_is_answered_and_the_body_swapped() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    rt().block_on(async {
        let h = harness_body(&[]).await;
        let mut tcp = tokio::net::TcpStream::connect(&h.proxy_addr).await.unwrap();
        let body = format!("k={}", h.token);
        // Absolute-form https target: the proxy originates the TLS connection itself.
        let head = format!(
            "POST https://localhost:{}/expect HTTP/1.1\r\nHost: localhost\r\nProxy-Authorization: {}\r\nContent-Length: {}\r\nExpect: 100-continue\r\n\r\n",
            h.upstream.port(),
            h.proxy_auth,
            body.len()
        );
        tcp.write_all(head.as_bytes()).await.unwrap();
        let mut buf = vec![0u8; 512];
        let n = tokio::time::timeout(std::time::Duration::from_secs(10), tcp.read(&mut buf))
            .await
            .unwrap()
            .unwrap();
        let interim = String::from_utf8_lossy(&buf[..n]).to_string();
        assert!(interim.starts_with("HTTP/1.1 100"), "{interim}");
        tcp.write_all(body.as_bytes()).await.unwrap();
        let mut all = Vec::new();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while !String::from_utf8_lossy(&all).contains("ok POST /expect") {
            assert!(std::time::Instant::now() < deadline, "no final answer");
            let n = tokio::time::timeout(std::time::Duration::from_secs(10), tcp.read(&mut buf))
                .await
                .unwrap()
                .unwrap();
            assert!(n > 0, "closed early: {}", String::from_utf8_lossy(&all));
            all.extend_from_slice(&buf[..n]);
        }
        assert!(String::from_utf8_lossy(&all).starts_with("HTTP/1.1 200"));
        let seen = h.upstream.seen();
        assert_eq!(seen[0].body, format!("k={CANARY}").as_bytes());
        assert!(seen[0].header("expect").is_none());
    });
}

/// A client through the proxy for plain-HTTP targets.
fn plain_client(proxy_url: &str) -> reqwest::Client {
    reqwest::Client::builder()
        .proxy(reqwest::Proxy::all(proxy_url).unwrap())
        .build()
        .unwrap()
}

/// Sends `head` (and nothing else) to the proxy port and returns what comes back until the
/// proxy closes or 10 s pass.
async fn raw_exchange(addr: &str, head: &str) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    tcp.write_all(head.as_bytes()).await.unwrap();
    let mut all = Vec::new();
    let mut buf = vec![0u8; 4096];
    while !String::from_utf8_lossy(&all).contains("\r\n\r\n") {
        let n = tokio::time::timeout(std::time::Duration::from_secs(10), tcp.read(&mut buf))
            .await
            .unwrap()
            .unwrap();
        if n == 0 {
            break;
        }
        all.extend_from_slice(&buf[..n]);
    }
    String::from_utf8_lossy(&all).into_owned()
}

#[test]
fn a_token_in_a_body_is_left_as_the_token_unless_the_entry_asks_for_body_swap() {
    rt().block_on(async {
        for body_swap in [false, true] {
            let h = if body_swap {
                harness_body(&[]).await
            } else {
                harness(&[]).await
            };
            let url = format!("https://localhost:{}/gists", h.upstream.port());
            let body = format!("{{\"content\":\"{}\"}}", h.token);
            // Buffered (known length) and streamed (chunked, the token split).
            let (a, b) = h.token.split_at(12);
            let chunks = || -> Vec<Result<String, std::io::Error>> {
                vec![Ok(format!("{{\"content\":\"{a}")), Ok(format!("{b}\"}}"))]
            };
            for streamed in [false, true] {
                let req = client(&h, false).post(&url);
                let req = if streamed {
                    req.body(reqwest::Body::wrap_stream(futures_util::stream::iter(
                        chunks(),
                    )))
                } else {
                    req.body(body.clone())
                };
                assert_eq!(req.send().await.unwrap().status(), 200);
            }
            let seen = h.upstream.seen();
            assert_eq!(seen.len(), 2);
            let want = if body_swap {
                format!("{{\"content\":\"{CANARY}\"}}")
            } else {
                body.clone()
            };
            for s in &seen {
                assert_eq!(
                    String::from_utf8_lossy(&s.body),
                    want,
                    "body swap {body_swap}"
                );
            }
            let swaps = h.proxy.summary().swapped_requests;
            assert_eq!(swaps, if body_swap { 2 } else { 0 });
            let audit = audit_text(&h);
            assert_eq!(audit.contains("\"mode\":\"swap\""), body_swap, "{audit}");
        }
    });
}

#[test]
fn a_token_in_the_path_is_not_swapped_by_default() {
    rt().block_on(async {
        let h = harness(&[]).await;
        let url = format!(
            "https://localhost:{}/bot{}/send?k={}",
            h.upstream.port(),
            h.token,
            h.token
        );
        assert_eq!(
            client(&h, false).get(&url).send().await.unwrap().status(),
            200
        );
        let seen = h.upstream.seen();
        assert_eq!(seen[0].target, format!("/bot{}/send?k={CANARY}", h.token));
    });
}

#[test]
fn a_value_over_plain_http_to_a_binding_without_the_scheme_is_refused() {
    rt().block_on(async {
        // API_TOKEN is bound to the plain server by an exact pattern, without `http://`.
        let h = harness_with(&[], &["localhost:{plain}"], SwapIn::default()).await;
        let url = format!("http://localhost:{}/v1?key={}", h.plain.port(), h.token);
        let resp = plain_client(&h.proxy_url)
            .get(&url)
            .bearer_auth(&h.token)
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 403);
        let text = resp.text().await.unwrap();
        assert!(text.contains("API_TOKEN"), "{text}");
        assert!(text.contains("would travel unencrypted"), "{text}");
        let fix = format!("bind `http://localhost:{}`", h.plain.port());
        assert!(text.contains(&fix), "{text}");
        assert!(!text.contains(CANARY));
        assert!(h.plain.seen().is_empty(), "nothing reached the server");
        let audit = audit_text(&h);
        assert!(audit.contains("secret would travel unencrypted"), "{audit}");
        assert!(!audit.contains(CANARY));
        // Token-free requests to the host are fine.
        let resp = plain_client(&h.proxy_url)
            .get(format!("http://localhost:{}/free", h.plain.port()))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200);
    });
}

#[test]
fn an_http_binding_lets_the_value_travel_over_plain_http() {
    rt().block_on(async {
        let h = harness_with(&[], &["http://localhost:{plain}"], SwapIn::default()).await;
        let url = format!("http://localhost:{}/v1?key={}", h.plain.port(), h.token);
        let resp = plain_client(&h.proxy_url)
            .get(&url)
            .bearer_auth(&h.token)
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200);
        let seen = h.plain.seen();
        assert_eq!(seen.len(), 1);
        assert_eq!(
            seen[0].header("authorization").unwrap(),
            format!("Bearer {CANARY}").as_bytes()
        );
        assert_eq!(seen[0].target, format!("/v1?key={CANARY}"));
        // The proxy's credential is for the proxy only.
        assert!(seen[0].header("proxy-authorization").is_none(), "{seen:?}");
    });
}

#[test]
fn requests_and_connects_without_the_proxy_credential_get_407_and_are_audited() {
    rt().block_on(async {
        let h = harness_with(&[], &["http://localhost:{plain}"], SwapIn::default()).await;
        let plain_url = format!("http://localhost:{}/v1?key={}", h.plain.port(), h.token);
        let wrong = format!("http://kz:{}@{}", "0".repeat(48), h.proxy_addr);
        let user = h.proxy_url.replacen("http://kz:", "http://other:", 1);
        for proxy_url in [format!("http://{}", h.proxy_addr), wrong, user] {
            let resp = plain_client(&proxy_url)
                .get(&plain_url)
                .bearer_auth(&h.token)
                .send()
                .await
                .unwrap();
            assert_eq!(resp.status(), 407, "{proxy_url}");
            assert_eq!(
                resp.headers().get("proxy-authenticate").unwrap(),
                "Basic realm=\"kz\""
            );
            // CONNECT (HTTPS through the proxy): the tunnel is refused.
            let c = reqwest::Client::builder()
                .proxy(reqwest::Proxy::all(&proxy_url).unwrap())
                .tls_certs_only([reqwest::Certificate::from_pem(h.ca_pem.as_bytes()).unwrap()])
                .build()
                .unwrap();
            let err = c
                .get(format!("https://localhost:{}/x", h.upstream.port()))
                .bearer_auth(&h.token)
                .send()
                .await
                .unwrap_err();
            let e = format!("{err:?}");
            assert!(e.contains("407") || e.contains("ProxyAuth"), "{e}");
        }
        assert!(h.plain.seen().is_empty());
        assert!(h.upstream.seen().is_empty());
        assert_eq!(h.proxy.summary().swapped_requests, 0);
        let audit = audit_text(&h);
        assert!(audit.contains("no proxy credential"), "{audit}");
        assert!(audit.contains("wrong proxy credential"), "{audit}");
        assert!(audit.contains("\"method\":\"CONNECT\""), "{audit}");
        assert!(!audit.contains(CANARY));
        // The right credential still works.
        let resp = plain_client(&h.proxy_url)
            .get(&plain_url)
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200);
    });
}

#[test]
fn a_raw_client_without_the_credential_gets_nothing_swapped() {
    rt().block_on(async {
        let h = harness_with(&[], &["http://localhost:{plain}"], SwapIn::default()).await;
        let port = h.plain.port();
        let t = &h.token;
        let pw = h.proxy_url.split_once('@').unwrap().0.rsplit(':').next().unwrap().to_string();
        let heads = [
            format!("GET http://localhost:{port}/?k={t} HTTP/1.1\r\nHost: localhost:{port}\r\nAuthorization: Bearer {t}\r\n\r\n"),
            format!("CONNECT localhost:{} HTTP/1.1\r\nHost: localhost\r\n\r\n", h.upstream.port()),
            // The password alone, or in another scheme, is not the credential.
            format!("GET http://localhost:{port}/ HTTP/1.1\r\nHost: localhost\r\nProxy-Authorization: Bearer {pw}\r\nAuthorization: Bearer {t}\r\n\r\n"),
            format!("GET http://localhost:{port}/ HTTP/1.1\r\nHost: localhost\r\nProxy-Authorization: {pw}\r\nAuthorization: Bearer {t}\r\n\r\n"),
            // Twice: one must be the credential, the other is not.
            format!("GET http://localhost:{port}/ HTTP/1.1\r\nHost: localhost\r\nProxy-Authorization: {a}\r\nProxy-Authorization: Basic eDp5\r\nAuthorization: Bearer {t}\r\n\r\n", a = h.proxy_auth),
        ];
        for head in heads {
            let answer = raw_exchange(&h.proxy_addr, &head).await;
            assert!(answer.starts_with("HTTP/1.1 407"), "{head}\n{answer}");
            assert!(!answer.contains(CANARY));
        }
        assert!(h.plain.seen().is_empty());
        assert!(h.upstream.seen().is_empty());
        // With the credential, the same raw request goes through and is swapped.
        let head = format!(
            "GET http://localhost:{port}/?k={t} HTTP/1.1\r\nHost: localhost:{port}\r\nProxy-Authorization: {}\r\nAuthorization: Bearer {t}\r\n\r\n",
            h.proxy_auth
        );
        let answer = raw_exchange(&h.proxy_addr, &head).await;
        assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
        assert_eq!(h.plain.seen()[0].target, format!("/?k={CANARY}"));
    });
}

#[test]
fn the_proxy_url_carries_a_fresh_random_credential() {
    rt().block_on(async {
        let a = harness(&[]).await;
        let b = harness(&[]).await;
        let pw = |h: &Harness| {
            h.proxy_url
                .strip_prefix("http://kz:")
                .unwrap()
                .split_once('@')
                .unwrap()
                .0
                .to_string()
        };
        let (pa, pb) = (pw(&a), pw(&b));
        assert_ne!(pa, pb);
        for p in [&pa, &pb] {
            // ≥ 128 bits: 48 hex digits are 192.
            assert_eq!(p.len(), 48, "{p}");
            assert!(p.bytes().all(|c| c.is_ascii_hexdigit()), "{p}");
        }
        assert!(!format!("{:?}", a.proxy).contains(&pa));
    });
}

/// Whether `bytes` still carry `value` in any form the decoded view finds.
fn carries(bytes: &[u8], value: &str) -> bool {
    let m = kz_redact::decoded::Matcher::new(
        [(value.as_bytes().to_vec(), b"x".to_vec())],
        kz_redact::decoded::Options::default(),
    );
    !m.hits_in(bytes).is_empty()
}

#[test]
fn values_reflected_the_way_real_stacks_escape_them_are_scrubbed() {
    rt().block_on(async {
        let h = harness_value(&[], RICH, true).await;
        for form in [
            "php",
            "dotnet",
            "pyquote",
            "encodeuri",
            "java",
            "html",
            "mime",
        ] {
            let url = format!(
                "https://localhost:{}/reflect?form={form}",
                h.upstream.port()
            );
            let resp = client(&h, false)
                .get(&url)
                .bearer_auth(&h.token)
                .send()
                .await
                .unwrap();
            assert_eq!(resp.status(), 200, "{form}");
            let body = resp.bytes().await.unwrap();
            assert!(
                !carries(&body, RICH),
                "{form}: {}",
                String::from_utf8_lossy(&body)
            );
            if form != "mime" {
                let body = String::from_utf8_lossy(&body);
                assert!(body.contains(&h.token), "{form}: {body}");
            }
        }
        let seen = h.upstream.seen();
        assert_eq!(
            seen.len(),
            7,
            "the value did reach the bound upstream each time"
        );
        assert_eq!(
            seen[0].header("authorization").unwrap(),
            format!("Bearer {RICH}").as_bytes()
        );
        let audit = audit_text(&h);
        assert!(audit.contains("\"mode\":\"scrub\""), "{audit}");
        assert!(!carries(audit.as_bytes(), RICH));
    });
}

/// A raw HTTP/1.1 GET through a `CONNECT` tunnel (to read the status line as sent).
async fn raw_get(h: &Harness, port: u16, target: &str) -> Vec<u8> {
    use rustls_pki_types::pem::PemObject;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut tcp = tokio::net::TcpStream::connect(&h.proxy_addr).await.unwrap();
    tcp.write_all(
        format!(
            "CONNECT localhost:{port} HTTP/1.1\r\nHost: localhost:{port}\r\nProxy-Authorization: {}\r\n\r\n",
            h.proxy_auth
        )
        .as_bytes(),
    )
    .await
    .unwrap();
    let mut head = Vec::new();
    let mut b = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        tcp.read_exact(&mut b).await.unwrap();
        head.push(b[0]);
    }
    assert!(
        head.starts_with(b"HTTP/1.1 200"),
        "{}",
        String::from_utf8_lossy(&head)
    );
    let mut roots = rustls::RootCertStore::empty();
    for c in rustls_pki_types::CertificateDer::pem_slice_iter(h.ca_pem.as_bytes()) {
        roots.add(c.unwrap()).unwrap();
    }
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let mut cfg = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
    let mut tls = tokio_rustls::TlsConnector::from(Arc::new(cfg))
        .connect(
            rustls_pki_types::ServerName::try_from("localhost").unwrap(),
            tcp,
        )
        .await
        .unwrap();
    tls.write_all(
        format!(
            "GET {target} HTTP/1.1\r\nHost: localhost:{port}\r\nAuthorization: Bearer {}\r\n\
             Connection: close\r\n\r\n",
            h.token
        )
        .as_bytes(),
    )
    .await
    .unwrap();
    let mut out = Vec::new();
    let _ = tls.read_to_end(&mut out).await;
    out
}

#[test]
fn the_status_reason_and_header_names_are_scrubbed() {
    rt().block_on(async {
        // HTTP/1.1 upstream: HTTP/2 has no reason phrase.
        let h = harness_full(&[], &[], SwapIn::default(), CANARY, true, true).await;
        let port = h.upstream.port();
        let got = raw_get(&h, port, "/reflect?form=reason").await;
        let text = String::from_utf8_lossy(&got);
        assert!(
            text.starts_with("HTTP/1.1 400 Bad key kz_masked_"),
            "{text}"
        );
        assert!(!carries(&got, CANARY), "{text}");
        let got = raw_get(&h, port, "/reflect?form=header-name").await;
        let text = String::from_utf8_lossy(&got).to_ascii_lowercase();
        assert!(
            text.contains(&format!("\r\nx-{}: 1\r\n", h.token)),
            "{text}"
        );
        assert!(!text.contains(&CANARY.to_ascii_lowercase()), "{text}");
    });
}

#[test]
fn a_followed_redirect_cannot_carry_a_value_to_another_host() {
    rt().block_on(async {
        // Scrubbing off: the redirect reaches the client with the real value in it, and the
        // client follows it; the egress check stops the second request.
        let h = harness_value(&[], CANARY, false).await;
        let url = format!(
            "https://localhost:{}/reflect?form=location&to={}",
            h.upstream.port(),
            h.other.port()
        );
        let c = reqwest::Client::builder()
            .proxy(reqwest::Proxy::all(&h.proxy_url).unwrap())
            .tls_certs_only([reqwest::Certificate::from_pem(h.ca_pem.as_bytes()).unwrap()])
            .build()
            .unwrap();
        let resp = c.get(&url).bearer_auth(&h.token).send().await.unwrap();
        let status = resp.status();
        let text = resp.text().await.unwrap();
        assert_eq!(status, 403, "{text}");
        assert_eq!(text, STOPPED);
        assert!(h.other.seen().is_empty(), "nothing reached the other host");
        let audit = audit_text(&h);
        assert!(
            audit.contains("the command sent a secret value") && audit.contains("API_TOKEN"),
            "{audit}"
        );
        assert!(!audit.contains(CANARY));
        // With scrubbing on, the redirect carries the token, which is refused as well.
        let h = harness(&[]).await;
        let url = format!(
            "https://localhost:{}/reflect?form=location&to={}",
            h.upstream.port(),
            h.other.port()
        );
        let resp = c_for(&h)
            .get(&url)
            .bearer_auth(&h.token)
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 403);
        assert!(h.other.seen().is_empty());
    });
}

fn c_for(h: &Harness) -> reqwest::Client {
    reqwest::Client::builder()
        .proxy(reqwest::Proxy::all(&h.proxy_url).unwrap())
        .tls_certs_only([reqwest::Certificate::from_pem(h.ca_pem.as_bytes()).unwrap()])
        .build()
        .unwrap()
}

#[test]
fn a_value_in_any_part_of_a_request_to_any_host_is_refused_and_latches() {
    rt().block_on(async {
        let pct: String = RICH.bytes().map(|b| format!("%{b:02x}")).collect();
        let json = RICH.replace('/', "\\/").replace('&', "\\u0026");
        // A clean request to an unbound host passes.
        let h = harness_value(&[], RICH, true).await;
        let other = format!("https://localhost:{}", h.other.port());
        let resp = client(&h, false)
            .post(format!("{other}/b"))
            .body("nothing secret here")
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200);
        assert_eq!(h.other.seen().len(), 1);
        // Each form of the value, to the unbound host and to the bound one, on a fresh proxy
        // each time (the first one stops blind mode).
        for to_other in [true, false] {
            for i in 0..4 {
                let h = harness_value(&[], RICH, true).await;
                let port = if to_other {
                    h.other.port()
                } else {
                    h.upstream.port()
                };
                let other = format!("https://localhost:{port}");
                let c = client(&h, false);
                let tries = [
                    c.get(format!("{other}/q?v={pct}")),
                    c.get(format!("{other}/h")).header("x-note", RICH),
                    c.post(format!("{other}/b"))
                        .body(format!("{{\"v\":\"{json}\"}}")),
                    c.post(format!("{other}/gz"))
                        .header("content-encoding", "gzip")
                        .body({
                            use std::io::Write;
                            let mut e = flate2::write::GzEncoder::new(
                                Vec::new(),
                                flate2::Compression::fast(),
                            );
                            e.write_all(RICH.as_bytes()).unwrap();
                            e.finish().unwrap()
                        }),
                ];
                let req = tries.into_iter().nth(i).unwrap();
                let resp = req.send().await.unwrap();
                let status = resp.status();
                let text = resp.text().await.unwrap();
                assert_eq!(status, 403, "{i}: {text}");
                assert_eq!(text, STOPPED, "{i}");
                assert!(h.proxy.is_stopped(), "{i}");
                assert!(h.other.seen().is_empty(), "{i}: nothing was sent");
                assert!(h.upstream.seen().is_empty(), "{i}: nothing was sent");
            }
        }
    });
}

#[test]
fn a_streamed_body_carrying_a_value_toward_an_unbound_host_is_cut_off() {
    rt().block_on(async {
        let h = harness(&[]).await;
        let url = format!("https://localhost:{}/upload", h.other.port());
        let chunks: Vec<Result<Vec<u8>, std::io::Error>> = vec![
            Ok(vec![b'a'; 64 << 10]),
            Ok(format!("x={CANARY};").into_bytes()),
            Ok(vec![b'b'; 64 << 10]),
        ];
        let body = reqwest::Body::wrap_stream(futures_util::stream::iter(chunks));
        let resp = client(&h, false).post(&url).body(body).send().await;
        if let Ok(resp) = resp {
            assert_eq!(resp.status(), 403);
            let text = resp.text().await.unwrap();
            assert_eq!(text, STOPPED);
        }
        assert!(h.proxy.is_stopped());
        for seen in h.other.seen() {
            assert!(!carries(&seen.body, CANARY));
        }
    });
}

/// Sends `head` to the proxy port and returns the status line and the body (by its length).
async fn raw_response(addr: &str, head: &str) -> (String, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    tcp.write_all(head.as_bytes()).await.unwrap();
    let mut all = Vec::new();
    let mut buf = vec![0u8; 4096];
    loop {
        let text = String::from_utf8_lossy(&all).into_owned();
        if let Some((h, body)) = text.split_once("\r\n\r\n") {
            let len = h
                .lines()
                .find_map(|l| {
                    l.to_ascii_lowercase()
                        .strip_prefix("content-length:")
                        .map(|v| v.trim().parse::<usize>().unwrap())
                })
                .unwrap_or(0);
            if body.len() >= len {
                return (h.lines().next().unwrap_or("").to_string(), body.to_string());
            }
        }
        let n = tokio::time::timeout(std::time::Duration::from_secs(10), tcp.read(&mut buf))
            .await
            .unwrap()
            .unwrap();
        if n == 0 {
            let text = String::from_utf8_lossy(&all).into_owned();
            let (h, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
            return (h.lines().next().unwrap_or("").to_string(), body.to_string());
        }
        all.extend_from_slice(&buf[..n]);
    }
}

/// The reviewer's match oracle: guesses in a header toward an unbound host, extending a known
/// prefix. The first guess that holds a fragment of the value is refused, and from then on
/// every request is, whatever it carries, and nothing more reaches any upstream.
#[test]
fn guessing_a_value_gets_one_answer_then_blind_mode_stops() {
    rt().block_on(async {
        let h = harness(&[]).await;
        let other = format!("https://localhost:{}", h.other.port());
        let c = client(&h, false);
        let right = &CANARY[2..18];
        let wrong = "kz-canary-XXXXXXXXXX";
        let resp = c
            .get(format!("{other}/g"))
            .header("x", wrong)
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200, "a wrong guess is not a value");
        assert_eq!(h.other.seen().len(), 1);
        assert!(!h.proxy.is_stopped());
        let resp = c
            .get(format!("{other}/g"))
            .header("x", right)
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 403);
        assert_eq!(resp.text().await.unwrap(), STOPPED);
        assert!(h.proxy.is_stopped());
        // Afterwards: right or wrong guesses, in a tunnel or in absolute form, a CONNECT, and a
        // normal request with the token to the bound host all get the same answer.
        for guess in [wrong, right] {
            if let Ok(resp) = c.get(format!("{other}/g")).header("x", guess).send().await {
                assert_eq!(resp.status(), 403);
                assert_eq!(resp.text().await.unwrap(), STOPPED);
            }
            let (status, body) = raw_response(
                &h.proxy_addr,
                &format!(
                    "GET http://localhost:{}/g HTTP/1.1\r\nHost: localhost:{}\r\n\
                     Proxy-Authorization: {}\r\nX: {guess}\r\n\r\n",
                    h.other.port(),
                    h.other.port(),
                    h.proxy_auth
                ),
            )
            .await;
            assert!(status.contains(" 403 "), "{status}");
            assert_eq!(body, STOPPED);
        }
        let (status, body) = raw_response(
            &h.proxy_addr,
            &format!(
                "CONNECT localhost:{p} HTTP/1.1\r\nHost: localhost:{p}\r\n\
                 Proxy-Authorization: {}\r\n\r\n",
                h.proxy_auth,
                p = h.upstream.port()
            ),
        )
        .await;
        assert!(status.contains(" 403 "), "{status}");
        assert_eq!(body, STOPPED);
        if let Ok(resp) = client(&h, false)
            .get(format!("https://localhost:{}/ok", h.upstream.port()))
            .bearer_auth(&h.token)
            .send()
            .await
        {
            assert_eq!(resp.status(), 403);
            assert_eq!(resp.text().await.unwrap(), STOPPED);
        }
        assert_eq!(
            h.other.seen().len(),
            1,
            "nothing more reached the other host"
        );
        assert!(h.upstream.seen().is_empty(), "nothing was swapped or sent");
        let summary = h.proxy.summary();
        assert_eq!(summary.stopped_by.as_deref(), Some("API_TOKEN"));
        assert_eq!(summary.swapped_requests, 0);
        let audit = audit_text(&h);
        assert!(
            audit.contains("the command sent a secret value") && audit.contains("API_TOKEN"),
            "{audit}"
        );
        assert!(audit.contains("\"blind mode stopped\""), "{audit}");
        assert!(!audit.contains(CANARY) && !audit.contains(right));
    });
}

/// Toward a host the secret is bound to as well: a fragment in a header or body is refused
/// before any swap, and blind mode stops; the echo server sees nothing.
#[test]
fn a_value_fragment_toward_a_bound_host_is_refused_and_latches() {
    rt().block_on(async {
        let h = harness(&[]).await;
        let url = format!("https://localhost:{}/echo", h.upstream.port());
        let c = client(&h, false);
        let resp = c
            .post(&url)
            .bearer_auth(&h.token)
            .body(format!("Zoz{}", &CANARY[1..17]))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 403);
        assert_eq!(resp.text().await.unwrap(), STOPPED);
        if let Ok(resp) = c.get(&url).bearer_auth(&h.token).send().await {
            assert_eq!(resp.status(), 403);
            assert_eq!(resp.text().await.unwrap(), STOPPED);
        }
        assert!(h.upstream.seen().is_empty(), "the echo server saw nothing");
        assert_eq!(h.proxy.summary().swapped_requests, 0);
    });
}

/// The answer names neither the secret nor the host: the same whichever secret matched.
#[test]
fn the_stopped_answer_is_the_same_whichever_secret_matched() {
    rt().block_on(async {
        let mut bodies = Vec::new();
        for (fragment, to_other) in [
            (&CANARY[..16], true),
            (&CANARY[4..20], false),
            ("other-value-not-the", true),
            ("value-not-the-canary", false),
        ] {
            let h = harness(&[]).await;
            let port = if to_other {
                h.other.port()
            } else {
                h.upstream.port()
            };
            let resp = client(&h, false)
                .get(format!("https://localhost:{port}/x"))
                .header("x-guess", fragment)
                .send()
                .await
                .unwrap();
            assert_eq!(resp.status(), 403, "{fragment}");
            bodies.push(resp.text().await.unwrap());
            let name = if CANARY.contains(fragment) {
                "API_TOKEN"
            } else {
                "OTHER_TOKEN"
            };
            assert_eq!(
                h.proxy.summary().stopped_by.as_deref(),
                Some(name),
                "{fragment}"
            );
        }
        assert!(bodies.iter().all(|b| b == STOPPED), "{bodies:?}");
        assert!(!STOPPED.contains("TOKEN") && !STOPPED.contains("localhost"));
    });
}
