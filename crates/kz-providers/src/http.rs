//! The HTTP client settings the HTTP-API providers (`hashicorp`, `keyzero`) share: timeouts, the
//! proxy from kz's environment, extra trusted roots from `ca_cert`, and error text.

use std::path::Path;
use std::time::Duration;

use kz_resolve::{ErrorKind, ProviderError};
use reqwest::Url;

use crate::GetEnv;

/// Upper bound for establishing a connection (the instance `timeout` may be shorter).
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// The one HTTP client of an instance (connection pooling): the instance `timeout` bounds every
/// call, a proxy comes only from kz's environment (never for a loopback address, which a proxy
/// cannot reach), and `ca_cert` (a PEM bundle) is added to the trusted roots.
pub(crate) fn build_client(
    instance: &str,
    address: &Url,
    ca_cert: Option<&Path>,
    timeout: Duration,
    getenv: &GetEnv,
    redirects: reqwest::redirect::Policy,
) -> Result<reqwest::Client, ProviderError> {
    let mut builder = reqwest::Client::builder()
        .connect_timeout(timeout.min(CONNECT_TIMEOUT))
        .timeout(timeout)
        .redirect(redirects)
        .no_proxy();
    if !is_loopback(address)
        && let Some(proxy) = proxy_from_env(address, getenv)
    {
        builder = builder.proxy(proxy);
    }
    if let Some(path) = ca_cert {
        let pem = std::fs::read(path).map_err(|e| {
            ProviderError::new(
                ErrorKind::Config,
                format!(
                    "provider `{instance}`: cannot read ca_cert {}: {e}",
                    path.display()
                ),
            )
            .help("point `ca_cert` at the PEM file of the CA that signed the server's certificate")
        })?;
        let certs = reqwest::Certificate::from_pem_bundle(&pem)
            .ok()
            .filter(|c| !c.is_empty())
            .ok_or_else(|| {
                ProviderError::new(
                    ErrorKind::Config,
                    format!(
                        "provider `{instance}`: ca_cert {} holds no PEM certificate",
                        path.display()
                    ),
                )
                .help("`ca_cert` must be a PEM file (-----BEGIN CERTIFICATE-----)")
            })?;
        builder = builder.tls_certs_merge(certs);
    }
    builder.build().map_err(|e| {
        ProviderError::new(
            ErrorKind::Config,
            format!(
                "provider `{instance}`: cannot set up the HTTP client: {}",
                error_chain(&e)
            ),
        )
    })
}

/// Whether the URL's host is a loopback name or address (`localhost`, 127.0.0.0/8, `::1`).
pub(crate) fn is_loopback(url: &Url) -> bool {
    let Some(host) = url.host_str() else {
        return false;
    };
    let bare = host.trim_start_matches('[').trim_end_matches(']');
    bare.eq_ignore_ascii_case("localhost")
        || bare
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

/// A proxy from kz's environment (`HTTPS_PROXY`/`HTTP_PROXY`/`ALL_PROXY`, `NO_PROXY`).
fn proxy_from_env(address: &Url, getenv: &GetEnv) -> Option<reqwest::Proxy> {
    let get = |name: &str| {
        getenv(name)
            .or_else(|| getenv(&name.to_lowercase()))
            .filter(|v| !v.trim().is_empty())
    };
    let scheme_var = if address.scheme() == "https" {
        "HTTPS_PROXY"
    } else {
        "HTTP_PROXY"
    };
    let url = get(scheme_var).or_else(|| get("ALL_PROXY"))?;
    let no_proxy = get("NO_PROXY").and_then(|n| reqwest::NoProxy::from_string(&n));
    reqwest::Proxy::all(url.as_str())
        .ok()
        .map(|p| p.no_proxy(no_proxy))
}

/// An error and its sources, joined.
pub(crate) fn error_chain(e: &dyn std::error::Error) -> String {
    let mut parts = vec![e.to_string()];
    let mut cur = e.source();
    while let Some(s) = cur {
        let text = s.to_string();
        if !parts.iter().any(|p| p.contains(&text)) {
            parts.push(text);
        }
        cur = s.source();
    }
    parts.join(": ")
}

/// What a transport failure of an HTTP-API provider means, and how to fix it: a timeout, a TLS
/// failure (`ca_cert` advice), or an unreachable server (transient, retried). `who` names the
/// instance and server; `address_help` says which option holds the address. Never holds a
/// token: the providers mark their credential headers sensitive.
pub(crate) fn transport_error(
    e: &reqwest::Error,
    who: &str,
    timeout: Duration,
    ca_cert: Option<&Path>,
    address_help: &str,
) -> ProviderError {
    if e.is_timeout() {
        return ProviderError::new(
            ErrorKind::Timeout,
            format!(
                "{who} did not answer within {}",
                humantime::format_duration(timeout)
            ),
        )
        .help("check that the server is up and responsive, or raise the provider's `timeout`");
    }
    let chain = error_chain(e);
    let lower = chain.to_lowercase();
    if lower.contains("certificate") || lower.contains("tls") || lower.contains("handshake") {
        let help = match ca_cert {
            Some(p) => format!(
                "check that {} holds the CA that signed the server's certificate, and that the server's host name is in the certificate",
                p.display()
            ),
            None => "set `ca_cert = \"path/to/ca.pem\"` on the provider to trust the CA that signed the server's certificate".into(),
        };
        return ProviderError::new(
            ErrorKind::Network,
            format!("TLS connection to {who} failed: {chain}"),
        )
        .help(help);
    }
    ProviderError::new(ErrorKind::Network, format!("cannot reach {who}: {chain}"))
        .help(format!(
            "check that the server is running and that {address_help} is right"
        ))
        .transient()
}
