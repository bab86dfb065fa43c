//! A local HTTPS echo server with its own test CA (HTTP/1.1 and HTTP/2 by ALPN), for the proxy's
//! tests and benchmark. It records every request it receives.
//!
//! Routes: `/echo-auth` answers with the `Authorization` header's value (after `Bearer `) in the
//! body and in an `x-echo` header (for scrub tests), `?gzip` compresses that body; anything else
//! answers `ok <method> <path>` with `content-length`. `/reflect?form=...` answers with the
//! bearer value the way a particular server stack escapes it (see [`reflect`]).

#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::convert::Infallible;
use std::io::Write;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::{Request, Response};
use hyper_util::rt::{TokioExecutor, TokioIo};
use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair, SanType};

/// What the server saw.
#[derive(Debug, Clone)]
pub struct Seen {
    pub method: String,
    /// The `:authority` (HTTP/2) or `Host` header (HTTP/1.1) the server was asked for.
    pub host: String,
    pub target: String,
    pub version: String,
    pub headers: Vec<(String, Vec<u8>)>,
    pub body: Vec<u8>,
}

impl Seen {
    pub fn header(&self, name: &str) -> Option<&[u8]> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_slice())
    }
}

/// A running server; stops when dropped (its runtime task is aborted).
pub struct Upstream {
    pub addr: SocketAddr,
    pub ca_pem: String,
    pub seen: Arc<Mutex<Vec<Seen>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Upstream {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Upstream {
    /// Starts on 127.0.0.1:0 inside the current Tokio runtime.
    pub async fn start() -> Self {
        Self::start_with(false).await
    }

    /// Like [`Upstream::start`]; `http1_only` offers only `http/1.1` by ALPN (HTTP/2 has no
    /// reason phrase).
    pub async fn start_with(http1_only: bool) -> Self {
        let ca_key = KeyPair::generate().unwrap();
        let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
        ca_params
            .distinguished_name
            .push(DnType::CommonName, "kz test upstream ca");
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let ca_cert = ca_params.self_signed(&ca_key).unwrap();
        let issuer = rcgen::Issuer::new(ca_params, ca_key);
        let leaf_key = KeyPair::generate().unwrap();
        let mut leaf_params = CertificateParams::new(vec!["localhost".to_string()]).unwrap();
        leaf_params
            .subject_alt_names
            .push(SanType::IpAddress("127.0.0.1".parse().unwrap()));
        let leaf = leaf_params.signed_by(&leaf_key, &issuer).unwrap();
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let mut config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(
                vec![leaf.der().clone(), ca_cert.der().clone()],
                rustls_pki_types::PrivateKeyDer::Pkcs8(leaf_key.serialize_der().into()),
            )
            .unwrap();
        // HTTP/1.1 only when asked, or with `KZ_BENCH_UPSTREAM_H1=1` (the benchmark's
        // comparison of upstream protocols).
        config.alpn_protocols = if http1_only || std::env::var_os("KZ_BENCH_UPSTREAM_H1").is_some()
        {
            vec![b"http/1.1".to_vec()]
        } else {
            vec![b"h2".to_vec(), b"http/1.1".to_vec()]
        };
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let seen2 = Arc::clone(&seen);
        let task = tokio::spawn(async move {
            loop {
                let Ok((tcp, _)) = listener.accept().await else {
                    return;
                };
                let _ = tcp.set_nodelay(true);
                let acceptor = acceptor.clone();
                let seen = Arc::clone(&seen2);
                tokio::spawn(async move {
                    let Ok(tls) = acceptor.accept(tcp).await else {
                        return;
                    };
                    let service = hyper::service::service_fn(move |req| {
                        let seen = Arc::clone(&seen);
                        async move { Ok::<_, Infallible>(answer(req, &seen).await) }
                    });
                    let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(tls), service)
                        .await;
                });
            }
        });
        Self {
            addr,
            ca_pem: ca_cert.pem(),
            seen,
            task,
        }
    }

    /// A plain-HTTP server (HTTP/1.1 and HTTP/2 prior knowledge) with the same routes, on
    /// 127.0.0.1:0 inside the current Tokio runtime. `ca_pem` is empty.
    pub async fn start_plain() -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let seen2 = Arc::clone(&seen);
        let task = tokio::spawn(async move {
            loop {
                let Ok((tcp, _)) = listener.accept().await else {
                    return;
                };
                let _ = tcp.set_nodelay(true);
                let seen = Arc::clone(&seen2);
                tokio::spawn(async move {
                    let service = hyper::service::service_fn(move |req| {
                        let seen = Arc::clone(&seen);
                        async move { Ok::<_, Infallible>(answer(req, &seen).await) }
                    });
                    let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(tcp), service)
                        .await;
                });
            }
        });
        Self {
            addr,
            ca_pem: String::new(),
            seen,
            task,
        }
    }

    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    pub fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }
}

async fn answer(req: Request<Incoming>, seen: &Mutex<Vec<Seen>>) -> Response<Full<Bytes>> {
    let (parts, body) = req.into_parts();
    let body = body
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    let target = parts
        .uri
        .path_and_query()
        .map_or("/".to_string(), |p| p.to_string());
    let host = parts
        .uri
        .authority()
        .map(|a| a.to_string())
        .or_else(|| {
            parts
                .headers
                .get("host")
                .map(|h| String::from_utf8_lossy(h.as_bytes()).into_owned())
        })
        .unwrap_or_default();
    let record = Seen {
        method: parts.method.to_string(),
        host,
        target: target.clone(),
        version: format!("{:?}", parts.version),
        headers: parts
            .headers
            .iter()
            .map(|(k, v)| (k.to_string(), v.as_bytes().to_vec()))
            .collect(),
        body: body.to_vec(),
    };
    let auth = record
        .header("authorization")
        .map(|v| v.strip_prefix(b"Bearer ").unwrap_or(v).to_vec())
        .unwrap_or_default();
    seen.lock().unwrap().push(record);
    if parts.uri.path() == "/reflect" {
        return reflect(&auth, parts.uri.query().unwrap_or_default());
    }
    if parts.uri.path() == "/echo-auth" {
        let mut b = Response::builder().header("x-echo", auth.clone());
        let body = if parts.uri.query() == Some("gzip") {
            b = b.header("content-encoding", "gzip");
            let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
            enc.write_all(b"echo: ").unwrap();
            enc.write_all(&auth).unwrap();
            enc.finish().unwrap()
        } else {
            [b"echo: ".as_slice(), &auth].concat()
        };
        return b.body(Full::new(Bytes::from(body))).unwrap();
    }
    Response::new(Full::new(Bytes::from(format!(
        "ok {} {}",
        parts.method,
        parts.uri.path()
    ))))
}

/// The bearer value reflected the way one server stack would write it:
/// `php` (JSON with `\/`), `dotnet` (every non-alphanumeric as upper-case `\uXXXX`), `pyquote`
/// (Python `quote`, keeps `/`), `encodeuri` (JS `encodeURI`), `java` (`URLEncoder`), `html`
/// (numeric character references), `mime` (base64 wrapped at 76 columns, the value not at the
/// start), `reason` (the status line's reason phrase), `header-name` (a header called
/// `x-<value>`), `location&to=PORT` (a redirect to `https://localhost:PORT/landing?v=<value>`).
pub fn reflect(v: &[u8], query: &str) -> Response<Full<Bytes>> {
    use base64::Engine as _;
    let form = query
        .split('&')
        .find_map(|kv| kv.strip_prefix("form="))
        .unwrap_or("raw");
    let to = query
        .split('&')
        .find_map(|kv| kv.strip_prefix("to="))
        .unwrap_or("0");
    let text = String::from_utf8_lossy(v).into_owned();
    let pct = |keep: &dyn Fn(u8) -> bool, space_plus: bool| -> String {
        v.iter()
            .map(|&b| {
                if space_plus && b == b' ' {
                    "+".to_string()
                } else if b.is_ascii_alphanumeric() || keep(b) {
                    char::from(b).to_string()
                } else {
                    format!("%{b:02X}")
                }
            })
            .collect()
    };
    let ok = |body: String| Response::new(Full::new(Bytes::from(body)));
    match form {
        "php" => ok(format!("{{\"v\":\"{}\"}}", text.replace('/', "\\/"))),
        "dotnet" => ok(format!(
            "{{\"v\":\"{}\"}}",
            v.iter()
                .map(|&b| if b.is_ascii_alphanumeric() {
                    char::from(b).to_string()
                } else {
                    format!("\\u{:04X}", b)
                })
                .collect::<String>()
        )),
        "pyquote" => ok(format!("v={}", pct(&|b| b"_.-~/".contains(&b), false))),
        "encodeuri" => ok(format!(
            "v={}",
            pct(&|b| b";,/?:@&=+$-_.!~*'()#".contains(&b), false)
        )),
        "java" => ok(format!("v={}", pct(&|b| b".-*_".contains(&b), true))),
        "html" => ok(format!(
            "<p>{}</p>",
            v.iter()
                .map(|&b| if b.is_ascii_alphanumeric() {
                    char::from(b).to_string()
                } else {
                    format!("&#{b};")
                })
                .collect::<String>()
        )),
        "mime" => {
            let mut data = vec![0x5au8; 70];
            data.extend_from_slice(v);
            data.extend_from_slice(&[0xa5; 40]);
            let enc = base64::engine::general_purpose::STANDARD.encode(&data);
            let lines: Vec<&str> = enc
                .as_bytes()
                .chunks(76)
                .map(|c| std::str::from_utf8(c).unwrap())
                .collect();
            ok(lines.join("\r\n"))
        }
        "reason" => {
            let mut r = ok("see the status line".into());
            *r.status_mut() = hyper::StatusCode::BAD_REQUEST;
            r.extensions_mut().insert(
                hyper::ext::ReasonPhrase::try_from(format!("Bad key {text}").into_bytes()).unwrap(),
            );
            r
        }
        "header-name" => Response::builder()
            .header(format!("x-{text}").as_str(), "1")
            .body(Full::new(Bytes::from("see the headers")))
            .unwrap(),
        "location" => Response::builder()
            .status(302)
            .header(
                "location",
                format!(
                    "https://localhost:{to}/landing?v={}",
                    pct(&|_| false, false)
                ),
            )
            .body(Full::new(Bytes::new()))
            .unwrap(),
        _ => ok(text),
    }
}
