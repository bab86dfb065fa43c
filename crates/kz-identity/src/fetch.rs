//! Fetching key sets: OIDC discovery and JWKS over HTTP(S), bounded in time and size.
//!
//! URLs come only from the configuration (`issuer_url`, `jwks_url`) and from the discovery
//! document of the configured issuer; never from a token. Redirects are not followed (a redirect
//! could lead anywhere), and a discovered `jwks_uri` must share the issuer URL's origin unless
//! the issuer sets `allow_private_jwks`.

use std::net::IpAddr;
use std::time::Duration;

use reqwest::Url;
use serde_json::Value;

use crate::keys::{Key, parse_jwks};

/// The most bytes read from a discovery document or a JWKS.
pub const MAX_DOCUMENT_BYTES: usize = 1024 * 1024;
/// Key sets are kept at least this long, whatever `Cache-Control` says (and a failed refresh is
/// retried after it).
pub const MIN_KEYS_TTL: i64 = 30;
/// Key sets are kept at most this long.
pub const MAX_KEYS_TTL: i64 = 24 * 3600;
/// Without `Cache-Control: max-age`, key sets are kept this long.
pub const DEFAULT_KEYS_TTL: i64 = 300;

/// The one HTTP client of a verifier.
pub(crate) fn client(timeout: Duration) -> Result<reqwest::Client, String> {
    reqwest::Client::builder()
        .timeout(timeout)
        .connect_timeout(timeout)
        .redirect(reqwest::redirect::Policy::none())
        .no_proxy()
        .user_agent(concat!("keyzero/", env!("CARGO_PKG_VERSION")))
        .build()
        .map_err(|e| format!("cannot build the HTTP client: {e}"))
}

/// Whether `host` (as `Url::host_str` gives it) is a loopback name or address.
pub(crate) fn is_loopback_host(host: &str) -> bool {
    let bare = host.trim_start_matches('[').trim_end_matches(']');
    if bare.eq_ignore_ascii_case("localhost") {
        return true;
    }
    bare.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

/// Checks a configured or discovered key URL: `https://`, or `http://` to a loopback host only
/// (a key set fetched in the clear could be swapped on the way); no user info, no fragment.
pub(crate) fn check_url(raw: &str) -> Result<Url, String> {
    let url = Url::parse(raw).map_err(|e| format!("`{raw}` is not a URL ({e})"))?;
    let host = url.host_str().unwrap_or("");
    if host.is_empty() {
        return Err(format!("`{raw}` has no host"));
    }
    match url.scheme() {
        "https" => {}
        "http" if is_loopback_host(host) => {}
        "http" => {
            return Err(format!(
                "`{raw}` is plain http to a host that is not loopback; keys must come over https"
            ));
        }
        other => return Err(format!("`{raw}` has scheme `{other}`; use https")),
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err(format!("`{raw}` holds user info"));
    }
    if url.fragment().is_some() {
        return Err(format!("`{raw}` has a fragment"));
    }
    Ok(url)
}

/// Whether a discovered `jwks_uri` may be used for an issuer at `origin`: on the issuer's own
/// origin, or (with `allow_other_host`) another host, but never a weaker scheme, and never
/// loopback for an issuer that is not itself on loopback.
fn jwks_uri_allowed(url: &Url, origin: &Url, allow_other_host: bool) -> Result<(), String> {
    if origin.scheme() == "https" && url.scheme() != "https" {
        return Err(format!(
            "jwks_uri `{url}` is plain http for an https issuer"
        ));
    }
    if url.host_str().is_some_and(is_loopback_host)
        && !origin.host_str().is_some_and(is_loopback_host)
    {
        return Err(format!(
            "jwks_uri `{url}` is on loopback for an issuer that is not"
        ));
    }
    if !allow_other_host && !same_origin(url, origin) {
        return Err(format!(
            "jwks_uri `{url}` is not on the issuer's own origin; set `allow_private_jwks: true` on the issuer if that host is trusted"
        ));
    }
    Ok(())
}

fn same_origin(a: &Url, b: &Url) -> bool {
    a.scheme() == b.scheme()
        && a.host_str().map(str::to_ascii_lowercase) == b.host_str().map(str::to_ascii_lowercase)
        && a.port_or_known_default() == b.port_or_known_default()
}

/// A fetched document and how long it may be kept (seconds).
pub(crate) struct Fetched {
    pub body: Vec<u8>,
    pub ttl: i64,
}

/// `max-age` of a `Cache-Control` value (`no-store`/`no-cache` count as 0), clamped to
/// [`MIN_KEYS_TTL`]..=[`MAX_KEYS_TTL`]; [`DEFAULT_KEYS_TTL`] without one.
pub(crate) fn ttl_from_cache_control(value: Option<&str>) -> i64 {
    let mut ttl = None;
    for directive in value.unwrap_or("").split(',') {
        let d = directive.trim().to_ascii_lowercase();
        if d == "no-store" || d == "no-cache" {
            ttl = Some(0);
            break;
        }
        if let Some(v) = d.strip_prefix("max-age=")
            && let Ok(n) = v.trim_matches('"').parse::<i64>()
        {
            ttl = Some(n);
        }
    }
    ttl.unwrap_or(DEFAULT_KEYS_TTL)
        .clamp(MIN_KEYS_TTL, MAX_KEYS_TTL)
}

/// GET `url`: status 200, at most [`MAX_DOCUMENT_BYTES`] (refused from `Content-Length` before
/// reading, and while streaming otherwise).
pub(crate) async fn get(client: &reqwest::Client, url: &Url) -> Result<Fetched, String> {
    let mut resp = client
        .get(url.clone())
        .header("accept", "application/json")
        .send()
        .await
        .map_err(|e| describe(url, &e))?;
    let status = resp.status();
    if !status.is_success() {
        return Err(format!("{url} answered HTTP {}", status.as_u16()));
    }
    if resp
        .content_length()
        .is_some_and(|n| n > MAX_DOCUMENT_BYTES as u64)
    {
        return Err(format!(
            "{url} sent a document over the limit of {MAX_DOCUMENT_BYTES} bytes"
        ));
    }
    let ttl = ttl_from_cache_control(
        resp.headers()
            .get(reqwest::header::CACHE_CONTROL)
            .and_then(|v| v.to_str().ok()),
    );
    let mut body = Vec::new();
    while let Some(chunk) = resp.chunk().await.map_err(|e| describe(url, &e))? {
        if body.len() + chunk.len() > MAX_DOCUMENT_BYTES {
            return Err(format!(
                "{url} sent a document over the limit of {MAX_DOCUMENT_BYTES} bytes"
            ));
        }
        body.extend_from_slice(&chunk);
    }
    Ok(Fetched { body, ttl })
}

fn describe(url: &Url, e: &reqwest::Error) -> String {
    if e.is_timeout() {
        format!("{url} did not answer in time")
    } else if e.is_connect() {
        format!("cannot connect to {url}")
    } else {
        // reqwest's message names the URL and the failure, nothing of the body.
        format!("fetching {url} failed: {e}")
    }
}

/// Where an issuer's keys come from.
#[derive(Clone, Debug)]
pub(crate) enum Remote {
    Jwks(Url),
    Discovery {
        issuer_url: String,
        config_url: Url,
        origin: Url,
        allow_other_host: bool,
    },
}

/// Fetches the current keys (through discovery when configured) and their TTL.
pub(crate) async fn fetch_keys(
    client: &reqwest::Client,
    remote: &Remote,
) -> Result<(Vec<Key>, i64), String> {
    let jwks_url = match remote {
        Remote::Jwks(u) => u.clone(),
        Remote::Discovery {
            issuer_url,
            config_url,
            origin,
            allow_other_host,
        } => discover(client, issuer_url, config_url, origin, *allow_other_host).await?,
    };
    let doc = get(client, &jwks_url).await?;
    let keys = parse_jwks(&doc.body).map_err(|e| format!("{jwks_url}: {e}"))?;
    Ok((keys, doc.ttl))
}

async fn discover(
    client: &reqwest::Client,
    issuer_url: &str,
    config_url: &Url,
    origin: &Url,
    allow_other_host: bool,
) -> Result<Url, String> {
    let doc = get(client, config_url).await?;
    let json: Value = serde_json::from_slice(&doc.body)
        .map_err(|e| format!("{config_url}: not a JSON document ({e})"))?;
    match json.get("issuer").and_then(Value::as_str) {
        Some(i) if i == issuer_url => {}
        Some(_) => {
            return Err(format!(
                "{config_url}: the document's `issuer` differs from issuer_url `{issuer_url}`"
            ));
        }
        None => return Err(format!("{config_url}: the document has no `issuer`")),
    }
    let raw = json
        .get("jwks_uri")
        .and_then(Value::as_str)
        .ok_or_else(|| format!("{config_url}: the document has no `jwks_uri`"))?;
    let url = check_url(raw).map_err(|e| format!("{config_url}: jwks_uri {e}"))?;
    jwks_uri_allowed(&url, origin, allow_other_host).map_err(|e| format!("{config_url}: {e}"))?;
    Ok(url)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_jwks_uri_never_weakens_the_scheme_or_reaches_loopback() {
        let u = |s: &str| Url::parse(s).unwrap();
        let issuer = u("https://issuer.example");
        assert!(jwks_uri_allowed(&u("https://issuer.example/keys"), &issuer, false).is_ok());
        assert!(jwks_uri_allowed(&u("https://keys.example/jwks"), &issuer, false).is_err());
        assert!(jwks_uri_allowed(&u("https://keys.example/jwks"), &issuer, true).is_ok());
        for other in [
            "http://127.0.0.1:9/keys",
            "http://localhost/keys",
            "https://127.0.0.1/keys",
        ] {
            assert!(
                jwks_uri_allowed(&u(other), &issuer, true).is_err(),
                "{other}"
            );
        }
        let local = u("http://127.0.0.1:8200/v1/identity/oidc");
        assert!(
            jwks_uri_allowed(
                &u("http://127.0.0.1:8200/v1/identity/oidc/.well-known/keys"),
                &local,
                false
            )
            .is_ok()
        );
    }

    #[test]
    fn cache_control() {
        assert_eq!(ttl_from_cache_control(None), DEFAULT_KEYS_TTL);
        assert_eq!(ttl_from_cache_control(Some("public, max-age=3600")), 3600);
        assert_eq!(ttl_from_cache_control(Some("max-age=1")), MIN_KEYS_TTL);
        assert_eq!(ttl_from_cache_control(Some("no-store")), MIN_KEYS_TTL);
        assert_eq!(
            ttl_from_cache_control(Some("max-age=99999999")),
            MAX_KEYS_TTL
        );
        assert_eq!(ttl_from_cache_control(Some("max-age=x")), DEFAULT_KEYS_TTL);
    }

    #[test]
    fn urls() {
        assert!(check_url("https://token.actions.githubusercontent.com").is_ok());
        assert!(check_url("http://127.0.0.1:8200/v1/identity/oidc").is_ok());
        assert!(check_url("http://[::1]:8200/").is_ok());
        assert!(check_url("http://localhost:1/").is_ok());
        assert!(check_url("http://example.com/").is_err());
        assert!(check_url("http://10.0.0.1/").is_err());
        assert!(check_url("file:///etc/passwd").is_err());
        assert!(check_url("https://u:p@example.com/").is_err());
        assert!(check_url("https://example.com/#x").is_err());
    }
}
