//! Connections to upstream servers: the policy check and DNS check happen here, on every new
//! connection, and the socket goes to an address that was checked (no second lookup, so a name
//! cannot rebind between check and connect). TLS on top is hyper-rustls with the run's roots.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use http::Uri;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpStream;

use super::body::ProxyBody;
use crate::policy::{self, CheckedResolver, Policy, Verdict};

/// How long one TCP connect may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Why no connection was made.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    /// Policy or the address check refused the destination (answered `403`).
    #[error("{0}")]
    Refused(String),
    /// The network failed (answered `502`).
    #[error("{0}")]
    Failed(String),
}

/// The TCP connector behind the TLS layer.
#[derive(Clone)]
pub struct Connector {
    policy: Arc<Policy>,
    resolver: Arc<CheckedResolver>,
}

impl Connector {
    /// A connector applying `policy`, resolving through `resolver`.
    pub fn new(policy: Arc<Policy>, resolver: Arc<CheckedResolver>) -> Self {
        Self { policy, resolver }
    }
}

impl std::fmt::Debug for Connector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Connector")
    }
}

type ConnectFuture = Pin<Box<dyn Future<Output = Result<TokioIo<TcpStream>, ConnectError>> + Send>>;

impl tower_service::Service<Uri> for Connector {
    type Response = TokioIo<TcpStream>;
    type Error = ConnectError;
    type Future = ConnectFuture;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, uri: Uri) -> Self::Future {
        let policy = Arc::clone(&self.policy);
        let resolver = Arc::clone(&self.resolver);
        Box::pin(async move {
            let dest = policy::destination_from_absolute(&uri).map_err(ConnectError::Refused)?;
            let explicit = match policy.connection(&dest.host, dest.port) {
                Verdict::Allow { explicit } => explicit,
                Verdict::Deny(reason) => return Err(ConnectError::Refused(reason)),
            };
            let addrs = resolver
                .resolve(&dest.host, dest.port, explicit)
                .await
                .map_err(ConnectError::Refused)?;
            let mut last = String::from("no address to connect to");
            for addr in addrs {
                match tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(addr)).await {
                    Ok(Ok(stream)) => {
                        let _ = stream.set_nodelay(true);
                        return Ok(TokioIo::new(stream));
                    }
                    Ok(Err(e)) => last = format!("connecting to {addr}: {e}"),
                    Err(_) => last = format!("connecting to {addr}: timed out"),
                }
            }
            Err(ConnectError::Failed(last))
        })
    }
}

/// The pooled upstream client.
pub type UpstreamClient = Client<hyper_rustls::HttpsConnector<Connector>, ProxyBody>;

/// A client for ordinary requests (HTTP/1.1 or HTTP/2 by ALPN), or with `http1_only` for
/// WebSocket handshakes.
pub fn client(
    policy: Arc<Policy>,
    resolver: Arc<CheckedResolver>,
    tls: rustls::ClientConfig,
    http1_only: bool,
) -> UpstreamClient {
    let builder = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(tls)
        .https_or_http();
    let https = if http1_only {
        builder
            .enable_http1()
            .wrap_connector(Connector::new(policy, resolver))
    } else {
        builder
            .enable_all_versions()
            .wrap_connector(Connector::new(policy, resolver))
    };
    Client::builder(TokioExecutor::new())
        .pool_idle_timeout(Duration::from_secs(90))
        .build(https)
}

/// Finds why a request to upstream failed: a refusal (`403`) or a failure with its reason.
pub fn classify_error(err: &(dyn std::error::Error + 'static)) -> ConnectError {
    let mut chain = Vec::new();
    let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(err);
    while let Some(e) = cur {
        if let Some(ConnectError::Refused(r)) = e.downcast_ref::<ConnectError>() {
            return ConnectError::Refused(r.clone());
        }
        let text = e.to_string();
        if chain.last() != Some(&text) {
            chain.push(text);
        }
        cur = e.source();
    }
    ConnectError::Failed(chain.join(": "))
}
