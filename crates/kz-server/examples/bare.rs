//! The bare endpoint of the team server's benchmark (`scripts/bench-server`): the same HTTP stack
//! as `kz server start` (axum router, hyper-util's auto HTTP/1 + HTTP/2 builder with the same
//! timer, head timeout and buffer limit, `TCP_NODELAY`, a multi-threaded tokio runtime with its
//! default worker count) serving one route that reads the request body and answers a fixed JSON
//! body the size of a one-ref `/v1/resolve` answer. No token, no policy, no audit: what the
//! stack alone costs, the limit the server is measured against.
//!
//! `cargo run --release -p kz-server --example bare -- 127.0.0.1:8081` (`:0`: any free port;
//! the bound address is printed on standard output).

use std::io::Write as _;
use std::net::SocketAddr;
use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::response::IntoResponse;
use axum::routing::post;
use http::{HeaderValue, header};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::net::TcpListener;
use tower_service::Service as _;

/// As `serve.rs`: the time a client has to send a request head.
const HEADER_TIMEOUT: Duration = Duration::from_secs(10);

/// About the size and shape of the server's answer to `{"ref":"bench/db"}`.
const ANSWER: &str = r#"{"results":{"bench/db":{"allowed":true,"policy":"allow-bench","mode":"direct","value":"bench-value-0123456789abcdef"}}}"#;

async fn answer(_body: Bytes) -> impl IntoResponse {
    (
        [
            (
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            ),
            (header::CACHE_CONTROL, HeaderValue::from_static("no-store")),
        ],
        ANSWER,
    )
}

fn main() -> std::io::Result<()> {
    let addr: SocketAddr = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "127.0.0.1:8081".to_owned())
        .parse()
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, format!("{e}")))?;
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?
        .block_on(serve(addr))
}

async fn serve(addr: SocketAddr) -> std::io::Result<()> {
    let listener = TcpListener::bind(addr).await?;
    // The bound address (the port when `:0` was asked), for the script to read.
    let mut out = std::io::stdout();
    writeln!(out, "bare endpoint listening on {}", listener.local_addr()?)?;
    out.flush()?;
    let app = Router::new().route("/v1/resolve", post(answer));
    loop {
        let (stream, _peer) = match listener.accept().await {
            Ok(a) => a,
            Err(_) => {
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let app = app.clone();
        tokio::spawn(async move {
            let _ = stream.set_nodelay(true);
            let svc = hyper::service::service_fn(move |req: hyper::Request<Incoming>| {
                app.clone().call(req)
            });
            let mut builder = auto::Builder::new(TokioExecutor::new());
            builder
                .http1()
                .timer(TokioTimer::new())
                .header_read_timeout(HEADER_TIMEOUT)
                .max_buf_size(kz_server::MAX_HEAD_BYTES);
            builder
                .http2()
                .timer(TokioTimer::new())
                .max_header_list_size(u32::try_from(kz_server::MAX_HEAD_BYTES).unwrap_or(u32::MAX));
            let conn = builder.serve_connection(TokioIo::new(stream), svc);
            let _ = conn.into_owned().await;
        });
    }
}
