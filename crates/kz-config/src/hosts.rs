//! Host patterns (`api.openai.com`, `*.stripe.com`, `localhost:8443`, `http://localhost:8080`)
//! and durations.

use std::fmt;
use std::net::IpAddr;
use std::time::Duration;

/// A parsed host pattern: an exact host or a leading wildcard label, optionally with a port, and
/// optionally the scheme `http://` (a value may then also travel over plain HTTP; without it,
/// only inside TLS). `https://` may be written and means the same as no scheme.
/// Hosts are stored lowercased and IDNA-normalised (ASCII), so comparison is exact.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostPattern {
    /// Written as `http://…`: blind mode may send a value to this host over plain HTTP too.
    pub cleartext: bool,
    /// `true` for `*.suffix`: one or more labels before `suffix`, never `suffix` itself.
    pub wildcard: bool,
    /// The host (for a wildcard, the part after `*.`), ASCII lowercase.
    pub host: String,
    /// The port, when the pattern names one (otherwise any port matches).
    pub port: Option<u16>,
}

impl HostPattern {
    /// Parses a pattern. `Err` says what is wrong.
    pub fn parse(input: &str) -> Result<Self, String> {
        let s = input.trim();
        if s.is_empty() {
            return Err("a host pattern is empty".into());
        }
        let (cleartext, s, url) = match s.split_once("://") {
            Some((scheme, rest)) if scheme.eq_ignore_ascii_case("http") => (true, rest, true),
            Some((scheme, rest)) if scheme.eq_ignore_ascii_case("https") => (false, rest, true),
            Some((scheme, _)) => {
                return Err(format!(
                    "`{input}`: the scheme `{scheme}://` is not supported (write `api.example.com` \
                     for HTTPS, or `http://host` to let a value travel over plain HTTP)"
                ));
            }
            None => (false, s, false),
        };
        // `http://host/` is accepted; any other path is not a host.
        let s = if url {
            s.strip_suffix('/').unwrap_or(s)
        } else {
            s
        };
        if s.is_empty() {
            return Err(format!("`{input}`: the host is missing"));
        }
        if s.contains('/') || s.contains('@') || s.contains('?') || s.contains('#') {
            return Err(format!(
                "`{input}` is a URL or path, not a host (write just the host, e.g. \
                 `api.example.com`, or `http://host[:port]` for plain HTTP)"
            ));
        }
        let (hostpart, port) = split_port(s).map_err(|e| format!("`{input}`: {e}"))?;
        let (wildcard, host) = match hostpart.strip_prefix("*.") {
            Some(rest) => (true, rest),
            None => (false, hostpart),
        };
        if host.contains('*') {
            return Err(format!(
                "`{input}`: a wildcard may only be the whole first label (`*.example.com`)"
            ));
        }
        let host = host.trim_start_matches('[').trim_end_matches(']');
        // An address is checked both as written and after IDNA: full-width digits and dots
        // normalise to an address too, and must be read as one (no wildcard before it).
        let ip_pattern = |ip: IpAddr| {
            if wildcard {
                return Err(format!(
                    "`{input}`: a wildcard cannot precede an IP address"
                ));
            }
            Ok(Self {
                cleartext,
                wildcard,
                host: ip.to_string(),
                port,
            })
        };
        if let Ok(ip) = host.parse::<IpAddr>() {
            return ip_pattern(ip);
        }
        let ascii = idna::domain_to_ascii(host)
            .map_err(|_| format!("`{input}` is not a valid host name"))?;
        if let Ok(ip) = ascii.parse::<IpAddr>() {
            return ip_pattern(ip);
        }
        if ascii.is_empty()
            || ascii.split('.').any(|l| l.is_empty() || l.len() > 63)
            || !ascii
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '.' || c == '_')
        {
            return Err(format!("`{input}` is not a valid host name"));
        }
        if wildcard && !ascii.contains('.') {
            return Err(format!(
                "`{input}`: a wildcard needs at least two labels after it (`*.example.com`)"
            ));
        }
        Ok(Self {
            cleartext,
            wildcard,
            host: ascii,
            port,
        })
    }

    /// Whether `host` (already lowercase ASCII) on `port` matches.
    pub fn matches(&self, host: &str, port: u16) -> bool {
        if self.port.is_some_and(|p| p != port) {
            return false;
        }
        let host = host.trim_end_matches('.');
        if self.wildcard {
            host.len() > self.host.len() + 1
                && host.ends_with(&self.host)
                && host.as_bytes().get(host.len() - self.host.len() - 1) == Some(&b'.')
        } else {
            host == self.host
        }
    }

    /// Whether the pattern names a loopback host exactly (`localhost`, `127.0.0.1`, `::1`).
    pub fn is_exact_loopback(&self) -> bool {
        !self.wildcard
            && (self.host == "localhost"
                || self.host.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback()))
    }
}

impl fmt::Display for HostPattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.cleartext {
            f.write_str("http://")?;
        }
        if self.wildcard {
            f.write_str("*.")?;
        }
        if self.host.contains(':') {
            write!(f, "[{}]", self.host)?;
        } else {
            f.write_str(&self.host)?;
        }
        if let Some(p) = self.port {
            write!(f, ":{p}")?;
        }
        Ok(())
    }
}

fn split_port(s: &str) -> Result<(&str, Option<u16>), String> {
    // `[v6]:port`, `[v6]`, a bare IPv6 address (two or more colons), or `host[:port]`.
    if let Some(rest) = s.strip_prefix('[') {
        let (h, after) = rest.split_once(']').ok_or("unclosed `[`")?;
        return match after.strip_prefix(':') {
            Some(p) => Ok((h, Some(parse_port(p)?))),
            None if after.is_empty() => Ok((h, None)),
            None => Err("unexpected text after `]`".into()),
        };
    }
    if s.matches(':').count() > 1 {
        return Ok((s, None));
    }
    match s.rsplit_once(':') {
        Some((h, p)) => Ok((h, Some(parse_port(p)?))),
        None => Ok((s, None)),
    }
}

fn parse_port(p: &str) -> Result<u16, String> {
    match p.parse::<u16>() {
        Ok(0) | Err(_) => Err(format!("`{p}` is not a port (1-65535)")),
        Ok(n) => Ok(n),
    }
}

/// Parses a duration: `"500ms"`, `"10s"`, `"5m"`, `"1h"`, `"1d"`, or a plain number of seconds.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let bad = || {
        format!(
            "`{s}` is not a duration (write e.g. \"500ms\", \"10s\", \"5m\", \"1h\" or a number of seconds)"
        )
    };
    let split = s
        .find(|c: char| !c.is_ascii_digit() && c != '.')
        .unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let n: f64 = num.parse().map_err(|_| bad())?;
    let scale = match unit {
        "" | "s" => 1.0,
        "ms" => 0.001,
        "m" => 60.0,
        "h" => 3600.0,
        "d" => 86400.0,
        _ => return Err(bad()),
    };
    let secs = n * scale;
    if !secs.is_finite() || !(0.0..=1.0e9).contains(&secs) {
        return Err(bad());
    }
    Ok(Duration::from_secs_f64(secs))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exact_wildcard_and_port() {
        let p = HostPattern::parse("API.OpenAI.com").unwrap();
        assert!(p.matches("api.openai.com", 443));
        assert!(!p.matches("x.api.openai.com", 443));
        let w = HostPattern::parse("*.stripe.com").unwrap();
        assert!(w.matches("api.stripe.com", 443));
        assert!(w.matches("a.b.stripe.com", 80));
        assert!(!w.matches("stripe.com", 443));
        assert!(!w.matches("evilstripe.com", 443));
        let l = HostPattern::parse("localhost:8443").unwrap();
        assert!(l.matches("localhost", 8443));
        assert!(!l.matches("localhost", 8444));
        assert!(l.is_exact_loopback());
        assert_eq!(l.to_string(), "localhost:8443");
    }

    #[test]
    fn ip_and_idna() {
        assert_eq!(HostPattern::parse("[::1]:8080").unwrap().port, Some(8080));
        assert!(HostPattern::parse("::1").unwrap().is_exact_loopback());
        assert!(HostPattern::parse("127.0.0.1").unwrap().is_exact_loopback());
        assert_eq!(
            HostPattern::parse("bücher.de").unwrap().host,
            "xn--bcher-kva.de"
        );
    }

    #[test]
    fn a_name_that_normalises_to_an_ip_address_is_that_address() {
        // Full-width digits and the ideographic full stop become `127.0.0.1` under IDNA: the
        // pattern is the address (found by the `reference` fuzz target: it printed as an IP
        // pattern that no longer parsed as the same pattern).
        let p = HostPattern::parse("\u{ff11}\u{ff12}\u{ff17}\u{3002}0.0.1").unwrap();
        assert_eq!(p.host, "127.0.0.1");
        assert!(p.is_exact_loopback());
        assert_eq!(HostPattern::parse(&p.to_string()).unwrap(), p);
        // …so a wildcard before it is refused, as before a written address.
        let err = HostPattern::parse("*.\u{ff11}.\u{ff12}.\u{ff13}.\u{ff14}").unwrap_err();
        assert!(err.contains("cannot precede an IP address"), "{err}");
        let err = HostPattern::parse("*.\u{ff11}::1").unwrap_err();
        assert!(
            err.contains("not a valid host name") || err.contains("IP address"),
            "{err}"
        );
    }

    #[test]
    fn rejects_bad_patterns() {
        for bad in [
            "",
            "ftp://x.com",
            "ws://x.com",
            "http://",
            "http:///",
            "http://x.com/path",
            "https://x.com/a",
            "http://user:pw@x.com",
            "http://x.com?q",
            "http://x.com#f",
            "http://http://x.com",
            "x.com/",
            "x.com/path",
            "a.*.com",
            "*",
            "*.com",
            "x.com:0",
            "x.com:99999",
            "*.1.2.3.4",
            "a b.com",
            "[::1",
        ] {
            assert!(HostPattern::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn the_http_scheme_allows_cleartext_and_https_means_no_scheme() {
        let p = HostPattern::parse("http://localhost:8080").unwrap();
        assert!(p.cleartext && !p.wildcard);
        assert_eq!((p.host.as_str(), p.port), ("localhost", Some(8080)));
        assert!(p.matches("localhost", 8080) && !p.matches("localhost", 8081));
        assert_eq!(p.to_string(), "http://localhost:8080");
        assert!(p.is_exact_loopback());
        for (raw, shown) in [
            ("HTTP://Example.COM/", "http://example.com"),
            ("http://[::1]:3000", "http://[::1]:3000"),
            ("http://*.example.com", "http://*.example.com"),
            ("http://127.0.0.1", "http://127.0.0.1"),
        ] {
            let p = HostPattern::parse(raw).unwrap();
            assert!(p.cleartext, "{raw}");
            assert_eq!(p.to_string(), shown, "{raw}");
            // Displayed form parses back to the same pattern.
            assert_eq!(HostPattern::parse(shown).unwrap(), p, "{raw}");
        }
        let tls = HostPattern::parse("https://api.example.com/").unwrap();
        assert_eq!(tls, HostPattern::parse("api.example.com").unwrap());
        assert!(!tls.cleartext);
        assert_ne!(
            HostPattern::parse("http://api.example.com").unwrap(),
            tls,
            "the scheme is part of the pattern"
        );
        let err = HostPattern::parse("ftp://x.com").unwrap_err();
        assert!(
            err.contains("`ftp://`") && err.contains("http://host"),
            "{err}"
        );
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("500ms").unwrap(), Duration::from_millis(500));
        assert_eq!(parse_duration("10s").unwrap(), Duration::from_secs(10));
        assert_eq!(parse_duration("5m").unwrap(), Duration::from_secs(300));
        assert_eq!(parse_duration("1h").unwrap(), Duration::from_secs(3600));
        assert_eq!(parse_duration("30").unwrap(), Duration::from_secs(30));
        for bad in ["", "ten", "5 min", "-1s", "1e999"] {
            assert!(parse_duration(bad).is_err(), "{bad}");
        }
    }
}
