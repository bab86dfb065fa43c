//! Name resolution whose answers are checked: every address a name resolves to must be public
//! (or the name allowed explicitly), and the caller connects to exactly the checked addresses.

use std::net::{IpAddr, SocketAddr};

use crate::addr::{classify, forbidden_name};

/// Resolves `host` (normalised) and checks every address. An IP literal is checked as is; a name
/// is first checked against [`forbidden_name`], then looked up. Every address must be public,
/// unless `explicit` (the host was allowed by a non-wildcard pattern): then special addresses are
/// fine, except cloud metadata addresses, which only pass when the host is that exact address.
/// If any address is refused the whole host is refused. Returns the checked addresses, which
/// are the ones to connect to (no second lookup).
pub async fn resolve_checked(
    host: &str,
    port: u16,
    explicit: bool,
) -> Result<Vec<SocketAddr>, String> {
    let literal = host
        .strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(host);
    if let Ok(ip) = literal.parse::<IpAddr>() {
        if let Some(why) = classify(ip)
            && !explicit
        {
            return Err(format!(
                "`{host}` is a {why} address (allow it explicitly, e.g. `--allow-host {}`, to \
                 reach it)",
                host_port_pattern(ip, port)
            ));
        }
        return Ok(vec![SocketAddr::new(ip, port)]);
    }
    if let Some(why) = forbidden_name(host) {
        return Err(format!(
            "`{host}` is a {why} service and is never reachable"
        ));
    }
    let addrs: Vec<SocketAddr> = tokio::net::lookup_host((host, port))
        .await
        .map_err(|e| format!("cannot resolve `{host}`: {e}"))?
        .collect();
    if addrs.is_empty() {
        return Err(format!("`{host}` resolves to no address"));
    }
    let mut checked: Vec<SocketAddr> = Vec::with_capacity(addrs.len());
    for a in addrs {
        if let Some(why) = classify(a.ip())
            && (!explicit || why == "cloud metadata")
        {
            return Err(format!("`{host}` resolves to {} ({why} address)", a.ip()));
        }
        if !checked.contains(&a) {
            checked.push(a);
        }
    }
    Ok(checked)
}

/// How long a checked answer of [`CheckedResolver`] is reused.
pub const RESOLVE_TTL: std::time::Duration = std::time::Duration::from_secs(5);
/// Names a [`CheckedResolver`] remembers at once (it forgets them all when full).
const RESOLVE_CACHE_LIMIT: usize = 256;

type ResolveKey = (String, u16, bool);

/// [`resolve_checked`] with its successful answers reused for [`RESOLVE_TTL`]: a `CONNECT` and
/// the upstream connection made right after it (and every new tunnel to the same host) then
/// cost one lookup, not one each, and no trip through the blocking thread pool on the request
/// path. What is reused is the *checked* address list (per host, port and `explicit`), and the
/// caller still connects to exactly those addresses, so reuse cannot let a special address in.
/// Refusals and failures are not remembered.
#[derive(Debug, Default)]
pub struct CheckedResolver {
    answers: std::sync::Mutex<
        std::collections::HashMap<ResolveKey, (std::time::Instant, Vec<SocketAddr>)>,
    >,
}

impl CheckedResolver {
    /// As [`resolve_checked`].
    pub async fn resolve(
        &self,
        host: &str,
        port: u16,
        explicit: bool,
    ) -> Result<Vec<SocketAddr>, String> {
        let key = (host.to_string(), port, explicit);
        let now = std::time::Instant::now();
        if let Some((at, addrs)) = self.lock().get(&key)
            && now.saturating_duration_since(*at) < RESOLVE_TTL
        {
            return Ok(addrs.clone());
        }
        let addrs = resolve_checked(host, port, explicit).await?;
        let mut answers = self.lock();
        if answers.len() >= RESOLVE_CACHE_LIMIT {
            answers.clear();
        }
        answers.insert(key, (std::time::Instant::now(), addrs.clone()));
        Ok(addrs)
    }

    fn lock(
        &self,
    ) -> std::sync::MutexGuard<
        '_,
        std::collections::HashMap<ResolveKey, (std::time::Instant, Vec<SocketAddr>)>,
    > {
        // Inserts and clears cannot leave the map inconsistent: a poisoned lock is still usable.
        self.answers
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

fn host_port_pattern(ip: IpAddr, port: u16) -> String {
    match ip {
        IpAddr::V4(a) => format!("{a}:{port}"),
        IpAddr::V6(a) => format!("[{a}]:{port}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn ip_literals_are_checked_without_dns() {
        let err = resolve_checked("127.0.0.1", 80, false).await.unwrap_err();
        assert!(err.contains("loopback"), "{err}");
        assert_eq!(
            resolve_checked("127.0.0.1", 80, true).await.unwrap(),
            vec!["127.0.0.1:80".parse::<SocketAddr>().unwrap()]
        );
        assert_eq!(
            resolve_checked("::1", 443, true).await.unwrap(),
            vec!["[::1]:443".parse::<SocketAddr>().unwrap()]
        );
        assert!(resolve_checked("169.254.169.254", 80, false).await.is_err());
        assert!(resolve_checked("::ffff:10.0.0.1", 80, false).await.is_err());
        // An explicit pattern naming the metadata address itself is honoured.
        assert!(resolve_checked("169.254.169.254", 80, true).await.is_ok());
        assert_eq!(
            resolve_checked("1.1.1.1", 443, false).await.unwrap(),
            vec!["1.1.1.1:443".parse::<SocketAddr>().unwrap()]
        );
    }

    #[tokio::test]
    async fn the_resolver_reuses_checked_answers_only() {
        let r = CheckedResolver::default();
        // A refusal is not remembered, and an explicit answer is not reused for a non-explicit
        // question.
        assert!(r.resolve("localhost", 8443, false).await.is_err());
        let addrs = r.resolve("localhost", 8443, true).await.unwrap();
        assert!(addrs.iter().all(|a| a.ip().is_loopback()));
        assert!(r.resolve("localhost", 8443, false).await.is_err());
        assert_eq!(r.resolve("localhost", 8443, true).await.unwrap(), addrs);
        assert_eq!(r.lock().len(), 1);
        // Literals never reach the cache's answers differently from resolve_checked.
        assert!(r.resolve("169.254.169.254", 80, false).await.is_err());
        assert!(
            r.resolve("metadata.google.internal", 80, true)
                .await
                .is_err()
        );
    }

    #[tokio::test]
    async fn localhost_is_refused_unless_explicit() {
        let err = resolve_checked("localhost", 8443, false).await.unwrap_err();
        assert!(err.starts_with("`localhost` resolves to "), "{err}");
        assert!(err.contains("loopback address"), "{err}");
        let addrs = resolve_checked("localhost", 8443, true).await.unwrap();
        assert!(!addrs.is_empty());
        assert!(
            addrs
                .iter()
                .all(|a| a.ip().is_loopback() && a.port() == 8443),
            "{addrs:?}"
        );
    }

    #[tokio::test]
    async fn a_numeric_name_resolving_to_loopback_is_refused() {
        // getaddrinfo reads `2130706433` as 127.0.0.1; the check after resolution catches it.
        let err = resolve_checked("2130706433", 80, false).await.unwrap_err();
        assert!(
            err.contains("127.0.0.1") && err.contains("loopback"),
            "{err}"
        );
    }

    #[tokio::test]
    async fn metadata_names_are_refused_before_dns_even_when_explicit() {
        for name in [
            "metadata.google.internal",
            "metadata",
            "instance-data.ec2.internal",
        ] {
            let err = resolve_checked(name, 80, true).await.unwrap_err();
            assert!(err.contains("cloud metadata"), "{err}");
        }
    }
}
