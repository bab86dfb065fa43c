//! Blind-mode proxy benchmark (issue 4), all on 127.0.0.1, bounded in time (about 40 s):
//!
//! 1. Latency: one keep-alive HTTPS connection (HTTP/1.1), sequential `GET /` with
//!    `Authorization: Bearer …` to a local HTTPS echo server, direct (the client trusts the
//!    server's CA and sends the real value) against through the proxy (`CONNECT` with the
//!    proxy credential, the client trusts the run CA and sends the token; the proxy swaps and
//!    scrubs). Alternating batches; median, p90 and p99 per request. Targets: ≤ 0.3 ms added
//!    (median), ≤ 1 ms added (p99).
//!    Then the same with a fresh connection per request (TCP, `CONNECT`, TLS handshake, one
//!    `GET`, close), as a command-line client such as curl does it.
//! 2. Throughput: 16 and 64 concurrent keep-alive connections for 3 s (best of 2 passes), direct
//!    and through the proxy, with the CPU time each runtime spent per request (from
//!    `/proc/self/task/*/schedstat`). Target: ≥ 10,000 req/s through the proxy.
//! 3. Scrubbing (`Scrubber` stream) and request-body swapping (`BodySwap`) over 64 MiB of
//!    JSON-ish text in 64 KiB chunks with 10 secrets of 24–40 bytes. Target: ≥ 500 MB/s.
//!
//! The upstream server, the proxy (2 workers, as `kz` runs it on this machine;
//! `KZ_BENCH_PROXY_WORKERS` overrides it) and the client each run on their own Tokio runtime,
//! so the set-up looks like three processes. The client is a bare hyper HTTP/1.1 connection
//! over tokio-rustls (no pool, no proxy logic of its own). `GET`s carry no `Content-Length`, as
//! curl and reqwest send them.
//!
//! `cargo bench -p kz-blind --bench proxy [-- --write docs/benchmarks.md]`: prints a Markdown
//! table; with `--write PATH` (relative to the workspace root) also replaces the text between
//! `<!-- blind:begin -->` and `<!-- blind:end -->` in that file.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    clippy::cast_precision_loss,
    clippy::cast_possible_truncation,
    clippy::cast_sign_loss,
    missing_docs
)]

#[path = "../tests/support/upstream.rs"]
mod upstream;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{HeaderValue, Request, header};
use http_body_util::{BodyExt, Empty};
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;
use kz_blind::ca::{RunCa, upstream_client_config};
use kz_blind::policy::{Policy, SecretHosts};
use kz_blind::proxy::{Proxy, Settings};
use kz_blind::rewrite::{Scrubber, Swapper};
use kz_blind::secrets::{BlindSecret, SecretTable};
use kz_config::{BlindConfig, HostPattern, SwapIn};
use kz_secret::SecretValue;
use rustls::pki_types::{CertificateDer, ServerName, pem::PemObject};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::runtime::Runtime;
use upstream::Upstream;

/// The bench's secret value (not a real credential).
const VALUE: &str = "sk_live_bench_4fQz9LmXw2Rt7YpK1vNc";
const ROUNDS: usize = 20;
const BATCH: usize = 250;
const WARMUP: usize = 500;
const TP_SECONDS: f64 = 3.0;
const TP_WARMUP: Duration = Duration::from_millis(300);
const TP_PASSES: usize = 2;
const CONCURRENCY: [usize; 2] = [16, 64];
const SCRUB_BYTES: usize = 64 << 20;
const CHUNK: usize = 64 * 1024;
const SCRUB_RUNS: usize = 5;
/// Thread names of the three runtimes (at most 15 bytes: the kernel's `comm`).
const CLIENT: &str = "kzb-client";
const PROXY: &str = "kzb-proxy";
const SERVER: &str = "kzb-server";

/// Proxy worker threads: 2, as `kz` runs it on a 2-core machine (`KZ_BENCH_PROXY_WORKERS`
/// overrides it for experiments).
fn proxy_workers() -> usize {
    std::env::var("KZ_BENCH_PROXY_WORKERS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(2)
}

/// CPU time (ns) used so far by this process's threads named `name`, from
/// `/proc/self/task/*/schedstat`; 0 where that is unavailable.
fn cpu_ns(name: &str) -> u64 {
    let Ok(tasks) = std::fs::read_dir("/proc/self/task") else {
        return 0;
    };
    tasks
        .flatten()
        .filter(|t| {
            std::fs::read_to_string(t.path().join("comm")).is_ok_and(|c| c.trim_end() == name)
        })
        .filter_map(|t| std::fs::read_to_string(t.path().join("schedstat")).ok())
        .filter_map(|s| s.split_whitespace().next()?.parse::<u64>().ok())
        .sum()
}

fn cpu_all() -> [u64; 3] {
    [cpu_ns(CLIENT), cpu_ns(PROXY), cpu_ns(SERVER)]
}

/// A runtime whose threads are named `name` (so their CPU time can be told apart).
fn runtime(name: &str, workers: usize) -> Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(workers)
        .thread_name(name)
        .enable_all()
        .build()
        .unwrap()
}

fn tls_client(roots: Vec<CertificateDer<'static>>) -> Arc<rustls::ClientConfig> {
    let mut store = rustls::RootCertStore::empty();
    for r in roots {
        store.add(r).unwrap();
    }
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(store)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Arc::new(config)
}

/// How the client reaches the server.
#[derive(Clone)]
struct Route {
    /// Where the TCP connection goes.
    addr: SocketAddr,
    /// `Some(host:port)`: send `CONNECT` for it first (through the proxy).
    connect: Option<String>,
    /// The proxy's `Proxy-Authorization` value (from the URL `Proxy::url_for` gives).
    proxy_auth: String,
    tls: Arc<rustls::ClientConfig>,
    host: HeaderValue,
    auth: HeaderValue,
}

/// One keep-alive HTTP/1.1 connection over TLS (through a `CONNECT` tunnel for the proxy).
async fn connect(route: &Route) -> SendRequest<Empty<Bytes>> {
    let mut tcp = tokio::net::TcpStream::connect(route.addr).await.unwrap();
    tcp.set_nodelay(true).unwrap();
    if let Some(target) = &route.connect {
        tcp.write_all(
            format!(
                "CONNECT {target} HTTP/1.1\r\nHost: {target}\r\nProxy-Authorization: {}\r\n\r\n",
                route.proxy_auth
            )
            .as_bytes(),
        )
        .await
        .unwrap();
        // The proxy sends nothing after its answer until the client speaks, so reading until
        // the blank line cannot swallow TLS bytes.
        let mut head = Vec::new();
        let mut buf = [0u8; 512];
        while !head.windows(4).any(|w| w == b"\r\n\r\n") {
            let n = tcp.read(&mut buf).await.unwrap();
            assert!(n > 0, "proxy closed the CONNECT");
            head.extend_from_slice(&buf[..n]);
        }
        assert!(
            head.starts_with(b"HTTP/1.1 200"),
            "CONNECT refused: {}",
            String::from_utf8_lossy(&head)
        );
    }
    let tls = tokio_rustls::TlsConnector::from(Arc::clone(&route.tls))
        .connect(ServerName::try_from("localhost").unwrap(), tcp)
        .await
        .unwrap();
    let (send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
        .await
        .unwrap();
    tokio::spawn(conn);
    send
}

/// One `GET /` on `send`; returns the body.
async fn get(send: &mut SendRequest<Empty<Bytes>>, route: &Route) -> Bytes {
    let req = Request::get("/")
        .header(header::HOST, route.host.clone())
        .header(header::AUTHORIZATION, route.auth.clone())
        .body(Empty::new())
        .unwrap();
    send.ready().await.unwrap();
    let resp = send.send_request(req).await.unwrap();
    assert_eq!(resp.status(), 200);
    resp.into_body().collect().await.unwrap().to_bytes()
}

/// Fields drop in order: the server task is aborted before the runtimes go.
struct Setup {
    upstream: Upstream,
    _up_rt: Runtime,
    _proxy_rt: Runtime,
    proxy: Proxy,
    direct: Route,
    proxied: Route,
    _dir: tempfile::TempDir,
}

fn setup() -> Setup {
    let up_rt = runtime(SERVER, 2);
    let proxy_rt = runtime(PROXY, proxy_workers());
    let upstream = up_rt.block_on(Upstream::start());
    let port = upstream.port();
    let dir = tempfile::tempdir().unwrap();
    let ca_file = dir.path().join("upstream-ca.pem");
    std::fs::write(&ca_file, &upstream.ca_pem).unwrap();
    let hosts = vec![HostPattern::parse(&format!("localhost:{port}")).unwrap()];
    let planned = Policy::plan(
        &[SecretHosts {
            name: "API_TOKEN",
            hosts: &hosts,
        }],
        &BlindConfig::default(),
        &[],
    )
    .unwrap();
    let secret = BlindSecret::new(
        "API_TOKEN",
        SecretValue::from_str_copy(VALUE),
        planned.hosts[0].clone(),
    );
    let token = secret.token.clone();
    let ca = RunCa::new().unwrap();
    let run_ca = ca.cert_der().clone();
    let settings = Settings {
        table: SecretTable {
            secrets: vec![secret],
        },
        policy: planned.policy,
        ca,
        upstream_tls: upstream_client_config(Some(&ca_file)).unwrap(),
        scrub_responses: true,
        audit: None,
    };
    let (proxy, proxy_addr) = proxy_rt.block_on(async {
        let proxy = Proxy::new(settings);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let p = proxy.clone();
        tokio::spawn(async move { p.serve_tcp(listener).await });
        (proxy, addr)
    });
    let proxy_auth = {
        use base64::Engine as _;
        let url = proxy.url_for(&proxy_addr.to_string());
        let userinfo = url
            .strip_prefix("http://")
            .and_then(|r| r.split_once('@'))
            .unwrap()
            .0;
        format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode(userinfo)
        )
    };
    let upstream_roots = CertificateDer::pem_slice_iter(upstream.ca_pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .unwrap();
    let host = HeaderValue::from_str(&format!("localhost:{port}")).unwrap();
    let direct = Route {
        addr: upstream.addr,
        connect: None,
        proxy_auth: String::new(),
        tls: tls_client(upstream_roots),
        host: host.clone(),
        auth: HeaderValue::from_str(&format!("Bearer {VALUE}")).unwrap(),
    };
    let proxied = Route {
        addr: proxy_addr,
        connect: Some(format!("localhost:{port}")),
        proxy_auth,
        tls: tls_client(vec![run_ca]),
        host,
        auth: HeaderValue::from_str(&format!("Bearer {token}")).unwrap(),
    };
    Setup {
        _up_rt: up_rt,
        _proxy_rt: proxy_rt,
        upstream,
        proxy,
        direct,
        proxied,
        _dir: dir,
    }
}

impl Setup {
    /// Checks what the server saw (the real value, both ways) and forgets it.
    fn check_and_clear_seen(&self) {
        let mut seen = self.upstream.seen.lock().unwrap();
        let want = format!("Bearer {VALUE}");
        assert!(
            seen.iter()
                .all(|s| s.header("authorization") == Some(want.as_bytes())),
            "the server saw something other than the real value"
        );
        seen.clear();
    }
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

struct Latency {
    direct: Vec<f64>,
    proxied: Vec<f64>,
    /// A fresh connection per request.
    fresh_direct: Vec<f64>,
    fresh_proxied: Vec<f64>,
}

/// Rounds × requests each way with a fresh connection per request.
const FRESH_ROUNDS: usize = 10;
const FRESH_BATCH: usize = 100;

fn latency(s: &Setup) -> Latency {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let mut d = connect(&s.direct).await;
        let mut p = connect(&s.proxied).await;
        for _ in 0..WARMUP {
            let body = get(&mut d, &s.direct).await;
            assert_eq!(&body[..], b"ok GET /");
            let body = get(&mut p, &s.proxied).await;
            assert_eq!(&body[..], b"ok GET /");
        }
        assert!(s.proxy.summary().swapped_requests >= WARMUP as u64);
        s.check_and_clear_seen();
        let mut direct = Vec::with_capacity(ROUNDS * BATCH);
        let mut proxied = Vec::with_capacity(ROUNDS * BATCH);
        for round in 0..ROUNDS {
            for leg in 0..2 {
                let through = (round + leg) % 2 == 1;
                let (send, route, out) = if through {
                    (&mut p, &s.proxied, &mut proxied)
                } else {
                    (&mut d, &s.direct, &mut direct)
                };
                for _ in 0..BATCH {
                    let t = Instant::now();
                    let body = get(send, route).await;
                    out.push(t.elapsed().as_secs_f64() * 1e3);
                    assert_eq!(body.len(), 8);
                }
            }
            s.check_and_clear_seen();
        }
        direct.sort_by(f64::total_cmp);
        proxied.sort_by(f64::total_cmp);
        drop((d, p));

        // A fresh connection per request, as curl makes them.
        let mut fresh_direct = Vec::with_capacity(FRESH_ROUNDS * FRESH_BATCH);
        let mut fresh_proxied = Vec::with_capacity(FRESH_ROUNDS * FRESH_BATCH);
        for _ in 0..FRESH_BATCH {
            for route in [&s.direct, &s.proxied] {
                let mut c = connect(route).await;
                get(&mut c, route).await;
            }
        }
        s.check_and_clear_seen();
        for round in 0..FRESH_ROUNDS {
            for leg in 0..2 {
                let through = (round + leg) % 2 == 1;
                let (route, out) = if through {
                    (&s.proxied, &mut fresh_proxied)
                } else {
                    (&s.direct, &mut fresh_direct)
                };
                for _ in 0..FRESH_BATCH {
                    let t = Instant::now();
                    let mut c = connect(route).await;
                    let body = get(&mut c, route).await;
                    drop(c);
                    out.push(t.elapsed().as_secs_f64() * 1e3);
                    assert_eq!(body.len(), 8);
                }
            }
            s.check_and_clear_seen();
        }
        fresh_direct.sort_by(f64::total_cmp);
        fresh_proxied.sort_by(f64::total_cmp);
        Latency {
            direct,
            proxied,
            fresh_direct,
            fresh_proxied,
        }
    })
}

/// One throughput run.
#[derive(Clone, Copy, Default)]
struct Run {
    rps: f64,
    /// CPU µs per request of the client, proxy and server runtimes.
    cpu_us: [f64; 3],
}

/// `n` connections on `route` for [`TP_SECONDS`] after [`TP_WARMUP`].
fn throughput(s: &Setup, rt: &Runtime, route: &Route, n: usize) -> Run {
    let (total, cpu) = rt.block_on(async {
        let mut conns = Vec::with_capacity(n);
        for _ in 0..n {
            conns.push(connect(route).await);
        }
        let start = Instant::now() + TP_WARMUP;
        let end = start + Duration::from_secs_f64(TP_SECONDS);
        let tasks: Vec<_> = conns
            .into_iter()
            .map(|mut send| {
                let route = route.clone();
                tokio::spawn(async move {
                    let mut count = 0u64;
                    loop {
                        get(&mut send, &route).await;
                        let now = Instant::now();
                        if now >= end {
                            return count;
                        }
                        if now >= start {
                            count += 1;
                        }
                    }
                })
            })
            .collect();
        tokio::time::sleep_until(start.into()).await;
        let before = cpu_all();
        tokio::time::sleep_until(end.into()).await;
        let after = cpu_all();
        let mut total = 0;
        for t in tasks {
            total += t.await.unwrap();
        }
        (total, [0, 1, 2].map(|i| after[i].saturating_sub(before[i])))
    });
    s.check_and_clear_seen();
    let per = |ns: u64| ns as f64 / 1e3 / total.max(1) as f64;
    Run {
        rps: total as f64 / TP_SECONDS,
        cpu_us: cpu.map(per),
    }
}

/// The best of [`TP_PASSES`] runs per concurrency in [`CONCURRENCY`].
struct Throughput {
    direct: Vec<Run>,
    proxied: Vec<Run>,
}

fn throughputs(s: &Setup) -> Throughput {
    let rt = runtime(CLIENT, 2);
    let mut direct = vec![Run::default(); CONCURRENCY.len()];
    let mut proxied = vec![Run::default(); CONCURRENCY.len()];
    let keep = |best: &mut Run, r: Run| {
        if r.rps > best.rps {
            *best = r;
        }
    };
    for pass in 0..TP_PASSES {
        for (i, &n) in CONCURRENCY.iter().enumerate() {
            if pass % 2 == 0 {
                keep(&mut direct[i], throughput(s, &rt, &s.direct, n));
                keep(&mut proxied[i], throughput(s, &rt, &s.proxied, n));
            } else {
                keep(&mut proxied[i], throughput(s, &rt, &s.proxied, n));
                keep(&mut direct[i], throughput(s, &rt, &s.direct, n));
            }
        }
    }
    Throughput { direct, proxied }
}

/// 64 MiB of JSON-ish lines with `plant(i)` inserted as a string value every 2000 lines.
fn json_text(plant: &dyn Fn(usize) -> Vec<u8>) -> (Vec<u8>, usize) {
    let mut data = Vec::with_capacity(SCRUB_BYTES + 4096);
    let mut i = 0usize;
    let mut planted = 0;
    while data.len() < SCRUB_BYTES {
        data.extend_from_slice(
            format!(
                "{{\"id\":{i},\"name\":\"item-{i}\",\"status\":\"active\",\
                 \"tags\":[\"alpha\",\"beta\"],\"owner\":{{\"login\":\"user{}\",\
                 \"url\":\"https://api.example.com/users/{}\"}},\
                 \"updated_at\":\"2026-11-22T15:04:05Z\"}},\n",
                i % 997,
                i % 997
            )
            .as_bytes(),
        );
        i += 1;
        if i.is_multiple_of(2000) {
            data.extend_from_slice(b"{\"token\":\"");
            data.extend_from_slice(&plant(i / 2000));
            data.extend_from_slice(b"\"},\n");
            planted += 1;
        }
    }
    (data, planted)
}

fn mb_per_s(bytes: usize, mut times: Vec<f64>) -> f64 {
    times.sort_by(f64::total_cmp);
    bytes as f64 / times[times.len() / 2] / 1e6
}

struct Rewrite {
    scrub_mbs: f64,
    swap_mbs: f64,
    /// Patterns the scrubber matches (the values and their encoded forms), from its `Debug`.
    patterns: String,
    planted: usize,
}

fn rewrite() -> Rewrite {
    let values: Vec<String> = (0..10)
        .map(|i| {
            let len = 24 + i * 16 / 9; // 24..=40 bytes
            let mut v = format!("sk_live_{i}_");
            let alphabet = b"ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz23456789";
            let mut x = 0x9e37_79b9_u32.wrapping_mul(i as u32 + 1);
            while v.len() < len {
                x ^= x << 13;
                x ^= x >> 17;
                x ^= x << 5;
                v.push(char::from(alphabet[x as usize % alphabet.len()]));
            }
            v
        })
        .collect();
    let table = SecretTable {
        secrets: values
            .iter()
            .enumerate()
            .map(|(i, v)| {
                BlindSecret::new(format!("S{i}"), SecretValue::from_str_copy(v), vec![]).with_swap(
                    SwapIn {
                        body: true,
                        ..SwapIn::default()
                    },
                )
            })
            .collect(),
    };
    let tokens: Vec<String> = table.secrets.iter().map(|s| s.token.clone()).collect();
    let scrubber = Scrubber::new(&table);
    let swapper = Swapper::new(&table);

    // Responses carry values; the scrubber turns them into tokens.
    let (data, planted) = json_text(&|k| values[k % values.len()].as_bytes().to_vec());
    let mut out = Vec::with_capacity(data.len() + 4096);
    let mut times = Vec::new();
    for _ in 0..SCRUB_RUNS {
        out.clear();
        let t = Instant::now();
        let mut st = scrubber.stream();
        for chunk in data.chunks(CHUNK) {
            st.feed(chunk, &mut out);
        }
        st.finish(&mut out);
        times.push(t.elapsed().as_secs_f64());
        assert!(!st.take_hits().is_empty());
    }
    for v in &values {
        assert!(!out.windows(v.len()).any(|w| w == v.as_bytes()));
    }
    let scrub_mbs = mb_per_s(data.len(), times);

    // Requests carry tokens; the swapper turns them into values.
    let (data, _) = json_text(&|k| tokens[k % tokens.len()].as_bytes().to_vec());
    let mut times = Vec::new();
    for _ in 0..SCRUB_RUNS {
        out.clear();
        let t = Instant::now();
        let mut st = swapper.stream(&|_| true);
        for chunk in data.chunks(CHUNK) {
            st.feed(chunk, &mut out).unwrap();
        }
        st.finish(&mut out).unwrap();
        times.push(t.elapsed().as_secs_f64());
        assert_eq!(st.used().len(), tokens.len());
    }
    assert!(
        !out.windows(tokens[0].len())
            .any(|w| w == tokens[0].as_bytes())
    );
    let swap_mbs = mb_per_s(data.len(), times);
    Rewrite {
        scrub_mbs,
        swap_mbs,
        patterns: format!("{scrubber:?}")
            .chars()
            .filter(char::is_ascii_digit)
            .collect(),
        planted,
    }
}

fn best(v: &[Run]) -> (Run, usize) {
    let (i, r) = v
        .iter()
        .enumerate()
        .max_by(|a, b| a.1.rps.total_cmp(&b.1.rps))
        .unwrap();
    (*r, CONCURRENCY[i])
}

fn others(v: &[Run], skip: usize) -> String {
    CONCURRENCY
        .iter()
        .zip(v)
        .filter(|(n, _)| **n != skip)
        .map(|(n, r)| format!("{n} connections: {}", thousands(r.rps)))
        .collect::<Vec<_>>()
        .join(", ")
}

fn cpu_note(r: &Run, proxy: bool) -> String {
    let [c, p, s] = r.cpu_us;
    if proxy {
        format!("CPU per request: client {c:.0} µs, proxy {p:.0} µs, server {s:.0} µs")
    } else {
        format!("CPU per request: client {c:.0} µs, server {s:.0} µs")
    }
}

fn thousands(x: f64) -> String {
    let s = format!("{:.0}", x);
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

fn table(lat: &Latency, tp: &Throughput, rw: &Rewrite) -> String {
    let med = |v: &[f64]| percentile(v, 0.5);
    let p90 = |v: &[f64]| percentile(v, 0.9);
    let p99 = |v: &[f64]| percentile(v, 0.99);
    let added = med(&lat.proxied) - med(&lat.direct);
    let added99 = p99(&lat.proxied) - p99(&lat.direct);
    let verdict = |ok: bool| if ok { "met" } else { "**not met**" };
    let (d_best, d_n) = best(&tp.direct);
    let (p_best, p_n) = best(&tp.proxied);
    let mut t = String::new();
    t.push_str("| case | median | p90 | p99 | note |\n|---|---|---|---|---|\n");
    t.push_str(&format!(
        "| `GET`, 1 keep-alive HTTPS connection (HTTP/1.1), direct | {:.3} ms | {:.3} ms | \
         {:.3} ms | — |\n",
        med(&lat.direct),
        p90(&lat.direct),
        p99(&lat.direct)
    ));
    t.push_str(&format!(
        "| same, through the proxy (swap + scrub) | {:.3} ms | {:.3} ms | {:.3} ms | added \
         {:.3} ms median (target ≤ 0.3 ms: {}), {:.3} ms p99 (target ≤ 1 ms: {}) |\n",
        med(&lat.proxied),
        p90(&lat.proxied),
        p99(&lat.proxied),
        added,
        verdict(added <= 0.3),
        added99,
        verdict(added99 <= 1.0)
    ));
    let fresh_added = med(&lat.fresh_proxied) - med(&lat.fresh_direct);
    let fresh_added99 = p99(&lat.fresh_proxied) - p99(&lat.fresh_direct);
    t.push_str(&format!(
        "| `GET` on a fresh connection each (TCP + TLS handshake + request, as curl), direct | \
         {:.3} ms | {:.3} ms | {:.3} ms | — |\n",
        med(&lat.fresh_direct),
        p90(&lat.fresh_direct),
        p99(&lat.fresh_direct)
    ));
    t.push_str(&format!(
        "| same, through the proxy (`CONNECT` + TLS with the run's leaf) | {:.3} ms | {:.3} ms | \
         {:.3} ms | added {:.3} ms median, {:.3} ms p99 (target ≤ 1 ms: {}) |\n",
        med(&lat.fresh_proxied),
        p90(&lat.fresh_proxied),
        p99(&lat.fresh_proxied),
        fresh_added,
        fresh_added99,
        verdict(fresh_added99 <= 1.0)
    ));
    t.push_str(&format!(
        "| throughput, direct, {d_n} connections | {} req/s | — | — | {}; {} |\n",
        thousands(d_best.rps),
        others(&tp.direct, d_n),
        cpu_note(&d_best, false)
    ));
    t.push_str(&format!(
        "| throughput, through the proxy, {p_n} connections | {} req/s | — | — | {}; {}; \
         target ≥ 10,000 req/s: {} |\n",
        thousands(p_best.rps),
        others(&tp.proxied, p_n),
        cpu_note(&p_best, true),
        verdict(p_best.rps >= 10_000.0)
    ));
    t.push_str(&format!(
        "| scrubbing responses (`Scrubber` stream) | {:.0} MB/s | — | — | 10 values as {} patterns \
         (each value and its base64 at 3 alignments, matched in the decoded view), {} occurrences \
         planted; target ≥ 500 MB/s: {} |\n",
        rw.scrub_mbs,
        rw.patterns,
        rw.planted,
        verdict(rw.scrub_mbs >= 500.0)
    ));
    t.push_str(&format!(
        "| swapping request bodies (`BodySwap`) | {:.0} MB/s | — | — | 10 tokens, \
         {} occurrences planted; target ≥ 500 MB/s: {} |\n",
        rw.swap_mbs,
        rw.planted,
        verdict(rw.swap_mbs >= 500.0)
    ));
    t
}

fn write_doc(path: &str, block: &str) {
    let mut p = PathBuf::from(path);
    if p.is_relative() {
        p = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join("../..")
            .join(p);
    }
    let text = std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
    let (begin, end) = ("<!-- blind:begin -->", "<!-- blind:end -->");
    let b = text
        .find(begin)
        .unwrap_or_else(|| panic!("{} has no {begin}", p.display()));
    let e = text
        .find(end)
        .unwrap_or_else(|| panic!("{} has no {end}", p.display()));
    assert!(b < e, "{begin} must come before {end}");
    let new = format!("{}{begin}\n{block}{}", &text[..b], &text[e..]);
    std::fs::write(&p, new).unwrap();
    println!("wrote {}", p.display());
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let write = args
        .iter()
        .position(|a| a == "--write")
        .map(|i| args.get(i + 1).expect("--write needs a path").clone());

    let started = Instant::now();
    let s = setup();
    let lat = latency(&s);
    eprintln!("latency done ({:.1} s)", started.elapsed().as_secs_f64());
    let tp = throughputs(&s);
    eprintln!("throughput done ({:.1} s)", started.elapsed().as_secs_f64());
    drop(s);
    let rw = rewrite();
    eprintln!("rewrite done ({:.1} s)", started.elapsed().as_secs_f64());

    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    let date = time::OffsetDateTime::now_utc().date();
    let head = format!(
        "{ROUNDS} alternating rounds × {BATCH} requests each way (latency; {FRESH_ROUNDS} × \
         {FRESH_BATCH} on fresh connections), {TP_SECONDS:.0} s per \
         throughput run (best of {TP_PASSES}), {SCRUB_RUNS} runs over {} MiB (rewriting), \
         {date}, {}, {cores} cores, release build, loopback\n",
        SCRUB_BYTES >> 20,
        std::env::consts::ARCH
    );
    let table = table(&lat, &tp, &rw);
    println!("{head}\n{table}");
    if let Some(path) = write {
        write_doc(&path, &format!("{head}\n{table}"));
    }
}
