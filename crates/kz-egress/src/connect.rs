//! Connections to upstream servers: the caller's [`Gate`] and the address check run on every new
//! connection, and the socket goes to an address that was checked (no second lookup, so a name
//! cannot rebind between check and connect). TLS on top is hyper-rustls with the caller's roots.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use http::Uri;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpStream;

use crate::dest::destination_from_absolute;
use crate::resolve::CheckedResolver;

/// How long one TCP connect may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Decides, before any lookup, whether a destination may be reached at all: blind mode's egress
/// policy, or a credential's host binding.
pub trait Gate: Send + Sync + 'static {
    /// `Ok(explicit)` when `host:port` may be reached; `explicit` when an exact (non-wildcard)
    /// pattern names it, which lets it resolve to a loopback or private address (never a cloud
    /// metadata one unless named as that address). `Err(reason)` refuses it.
    fn admit(&self, host: &str, port: u16) -> Result<bool, String>;
}

/// Why no connection was made.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    /// The gate or the address check refused the destination (answered `403`).
    #[error("{0}")]
    Refused(String),
    /// The network failed (answered `502`).
    #[error("{0}")]
    Failed(String),
}

/// The TCP connector behind the TLS layer.
pub struct Connector<G> {
    gate: Arc<G>,
    resolver: Arc<CheckedResolver>,
}

impl<G> Clone for Connector<G> {
    fn clone(&self) -> Self {
        Self {
            gate: Arc::clone(&self.gate),
            resolver: Arc::clone(&self.resolver),
        }
    }
}

impl<G> Connector<G> {
    /// A connector asking `gate`, resolving through `resolver`.
    pub fn new(gate: Arc<G>, resolver: Arc<CheckedResolver>) -> Self {
        Self { gate, resolver }
    }
}

impl<G> std::fmt::Debug for Connector<G> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Connector")
    }
}

type ConnectFuture = Pin<Box<dyn Future<Output = Result<TokioIo<TcpStream>, ConnectError>> + Send>>;

impl<G: Gate> tower_service::Service<Uri> for Connector<G> {
    type Response = TokioIo<TcpStream>;
    type Error = ConnectError;
    type Future = ConnectFuture;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, uri: Uri) -> Self::Future {
        let gate = Arc::clone(&self.gate);
        let resolver = Arc::clone(&self.resolver);
        Box::pin(async move {
            let dest = destination_from_absolute(&uri).map_err(ConnectError::Refused)?;
            let explicit = gate
                .admit(&dest.host, dest.port)
                .map_err(ConnectError::Refused)?;
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

/// A pooled upstream client whose connections pass `G` and the address check.
pub type CheckedClient<G, B> = Client<hyper_rustls::HttpsConnector<Connector<G>>, B>;

/// A client for ordinary requests (HTTP/1.1 or HTTP/2 by ALPN), or with `http1_only` for
/// WebSocket handshakes. It follows no redirect (hyper's client never does).
pub fn client<G, B>(
    gate: Arc<G>,
    resolver: Arc<CheckedResolver>,
    tls: rustls::ClientConfig,
    http1_only: bool,
) -> CheckedClient<G, B>
where
    G: Gate,
    B: http_body::Body + Send + 'static,
    B::Data: Send,
{
    let builder = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(tls)
        .https_or_http();
    let https = if http1_only {
        builder
            .enable_http1()
            .wrap_connector(Connector::new(gate, resolver))
    } else {
        builder
            .enable_all_versions()
            .wrap_connector(Connector::new(gate, resolver))
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

#[cfg(test)]
mod tests {
    use super::*;
    use tower_service::Service as _;

    /// Admits `127.0.0.1` (explicitly or not, as set) and refuses everything else.
    struct OnlyLoopback {
        explicit: bool,
    }

    impl Gate for OnlyLoopback {
        fn admit(&self, host: &str, _port: u16) -> Result<bool, String> {
            if host == "127.0.0.1" || host == "localhost" {
                Ok(self.explicit)
            } else {
                Err(format!("{host} is not bound"))
            }
        }
    }

    fn connector(explicit: bool) -> Connector<OnlyLoopback> {
        Connector::new(
            Arc::new(OnlyLoopback { explicit }),
            Arc::new(CheckedResolver::default()),
        )
    }

    #[tokio::test]
    async fn the_gate_then_the_address_check_decide_before_any_connection() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let uri: Uri = format!("http://127.0.0.1:{port}/").parse().unwrap();
        // Admitted explicitly: a loopback address is reachable.
        assert!(connector(true).call(uri.clone()).await.is_ok());
        // Admitted by a wildcard-like (non-explicit) rule: the address check refuses loopback.
        match connector(false).call(uri).await {
            Err(ConnectError::Refused(why)) => assert!(why.contains("loopback"), "{why}"),
            other => panic!("{other:?}"),
        }
        // Not admitted: refused with the gate's reason, before any lookup.
        let other: Uri = "https://example.invalid/".parse().unwrap();
        match connector(true).call(other).await {
            Err(ConnectError::Refused(why)) => assert_eq!(why, "example.invalid is not bound"),
            other => panic!("{other:?}"),
        }
        // A name resolving to loopback is checked after DNS like a literal.
        let named: Uri = format!("http://localhost:{port}/").parse().unwrap();
        assert!(matches!(
            connector(false).call(named).await,
            Err(ConnectError::Refused(_))
        ));
        // User info and unknown schemes never reach the gate.
        let userinfo: Uri = format!("http://u@127.0.0.1:{port}/").parse().unwrap();
        assert!(matches!(
            connector(true).call(userinfo).await,
            Err(ConnectError::Refused(_))
        ));
    }

    #[test]
    fn refusals_are_found_inside_an_error_chain() {
        #[derive(Debug)]
        struct Outer(ConnectError);
        impl std::fmt::Display for Outer {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("client error")
            }
        }
        impl std::error::Error for Outer {
            fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
                Some(&self.0)
            }
        }
        let refused = Outer(ConnectError::Refused("no".into()));
        assert!(matches!(classify_error(&refused), ConnectError::Refused(r) if r == "no"));
        let failed = Outer(ConnectError::Failed("reset".into()));
        match classify_error(&failed) {
            ConnectError::Failed(why) => assert_eq!(why, "client error: reset"),
            other => panic!("{other:?}"),
        }
    }
}
