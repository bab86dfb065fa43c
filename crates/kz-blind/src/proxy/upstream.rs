//! Connections to upstream servers: `kz-egress`'s checked connector, with blind mode's
//! [`Policy`] as its gate (on every new connection: the policy, then DNS with every address
//! checked, then a connection to exactly a checked address). TLS on top is hyper-rustls with
//! the run's roots.

use std::sync::Arc;

pub use kz_egress::connect::{ConnectError, classify_error};

use super::body::ProxyBody;
use crate::policy::{CheckedResolver, Policy};

/// The pooled upstream client.
pub type UpstreamClient = kz_egress::connect::CheckedClient<Policy, ProxyBody>;

/// A client for ordinary requests (HTTP/1.1 or HTTP/2 by ALPN), or with `http1_only` for
/// WebSocket handshakes.
pub fn client(
    policy: Arc<Policy>,
    resolver: Arc<CheckedResolver>,
    tls: rustls::ClientConfig,
    http1_only: bool,
) -> UpstreamClient {
    kz_egress::connect::client(policy, resolver, tls, http1_only)
}
