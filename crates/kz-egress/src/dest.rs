//! Destinations taken from requests: hosts normalised to one form (IDNA, no numeric IPv4
//! tricks, no user info), with scheme and port.

use std::net::{Ipv4Addr, Ipv6Addr};

use kz_config::HostPattern;

/// `host:port` for messages, with IPv6 in brackets.
pub fn host_port(host: &str, port: u16) -> String {
    if host.contains(':') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    }
}

/// `s` for an error message: escaped, and cut to a readable length (request heads are hostile).
fn show(s: &str) -> String {
    const MAX: usize = 200;
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if i == MAX {
            out.push_str("...");
            break;
        }
        out.extend(c.escape_debug());
    }
    out
}

/// Whether `label` would be taken as a number by a URL parser or `inet_aton` (decimal, octal
/// with a leading 0, or hex with `0x`).
fn numeric_label(label: &str) -> bool {
    let digits = match label
        .strip_prefix("0x")
        .or_else(|| label.strip_prefix("0X"))
    {
        Some(hex) => return hex.bytes().all(|b| b.is_ascii_hexdigit()),
        None => label,
    };
    !digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit())
}

/// Normalises a host taken from a request (Host header, URI authority, `CONNECT` target):
/// strips the `[]` of an IPv6 literal, lowercases, strips one trailing dot, converts IDNA to
/// ASCII, and rejects empty hosts, invalid characters, zone ids and numeric IPv4 forms other than
/// `a.b.c.d` (`2130706433`, `0177.0.0.1`, `0x7f.1`). IP literals come back canonical (IPv6
/// without brackets; a bare IPv6 literal is accepted too, so normalising is idempotent).
pub fn normalize_host(raw: &str) -> Result<String, String> {
    let shown = show(raw);
    if raw.is_empty() {
        return Err("the host is empty".into());
    }
    if raw.len() > 1024 {
        return Err(format!("`{shown}` is too long for a host name"));
    }
    if let Some(inner) = raw.strip_prefix('[') {
        let inner = inner
            .strip_suffix(']')
            .ok_or_else(|| format!("`{shown}`: unclosed `[` in host"))?;
        return match inner.parse::<Ipv6Addr>() {
            Ok(ip) => Ok(ip.to_string()),
            Err(_) => Err(format!(
                "`{shown}` is not an IPv6 address (zone ids like `%eth0` are not accepted)"
            )),
        };
    }
    if let Ok(ip) = raw.parse::<Ipv6Addr>() {
        // A bare IPv6 literal (an already normalised host); zone ids do not parse.
        return Ok(ip.to_string());
    }
    if let Some(bad) = raw.chars().find(|c| {
        c.is_control()
            || c.is_whitespace()
            || matches!(
                c,
                '@' | '/'
                    | '\\'
                    | '?'
                    | '#'
                    | ':'
                    | '['
                    | ']'
                    | '%'
                    | '*'
                    | ','
                    | ';'
                    | '"'
                    | '\''
                    | '<'
                    | '>'
                    | '^'
                    | '`'
                    | '{'
                    | '|'
                    | '}'
                    | '='
                    | '&'
                    | '+'
                    | '!'
                    | '$'
                    | '('
                    | ')'
                    | '~'
            )
    }) {
        return Err(format!(
            "`{shown}` is not a valid host: `{}` is not allowed in a host name",
            bad.escape_debug()
        ));
    }
    let lower = raw.to_lowercase();
    let trimmed = lower.strip_suffix('.').unwrap_or(&lower);
    if trimmed.is_empty() {
        return Err(format!("`{shown}` is not a valid host"));
    }
    let ascii = if trimmed.is_ascii() {
        trimmed.to_string()
    } else {
        // IDNA via the same code that normalises configured patterns, so both compare equal.
        let p = HostPattern::parse(trimmed)
            .map_err(|_| format!("`{shown}` is not a valid host name"))?;
        if p.wildcard || p.port.is_some() {
            return Err(format!("`{shown}` is not a valid host name"));
        }
        p.host
    };
    if let Ok(ip) = ascii.parse::<Ipv4Addr>() {
        return Ok(ip.to_string());
    }
    if ascii.parse::<Ipv6Addr>().is_ok() {
        // Only reachable through IDNA mapping (':' is rejected above); demand brackets.
        return Err(format!("`{shown}`: write an IPv6 address in brackets"));
    }
    if ascii.len() > 253 {
        return Err(format!("`{shown}` is longer than 253 characters"));
    }
    let labels: Vec<&str> = ascii.split('.').collect();
    if labels.iter().any(|l| l.is_empty() || l.len() > 63) {
        return Err(format!(
            "`{shown}` is not a valid host name (empty label or a label over 63 characters)"
        ));
    }
    if !ascii
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.' || b == b'_')
    {
        return Err(format!("`{shown}` is not a valid host name"));
    }
    if labels.last().is_some_and(|l| numeric_label(l)) {
        return Err(format!(
            "`{shown}` looks like an IPv4 address in a non-standard form (decimal, octal or hex); \
             write it as four decimal numbers, e.g. `127.0.0.1`"
        ));
    }
    Ok(ascii)
}

/// A request's destination.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Destination {
    /// Whether the request goes out over TLS.
    pub https: bool,
    /// The host, normalised by [`normalize_host`].
    pub host: String,
    /// The port (never 0).
    pub port: u16,
}

/// The destination of an absolute-form request target (`http://host[:port]/path`); the scheme
/// must be `http` or `https` (default ports 80 and 443). User info (`user@`) is refused.
pub fn destination_from_absolute(uri: &http::Uri) -> Result<Destination, String> {
    let https = match uri.scheme_str() {
        Some(s) if s.eq_ignore_ascii_case("http") => false,
        Some(s) if s.eq_ignore_ascii_case("https") => true,
        Some(s) => {
            return Err(format!(
                "`{}` requests are not supported (only http and https)",
                show(s)
            ));
        }
        None => return Err("the request target has no scheme (expected `http://host/...`)".into()),
    };
    let authority = uri
        .authority()
        .ok_or("the request target has no host (expected `http://host/...`)")?;
    destination_from_authority(authority.as_str(), https, if https { 443 } else { 80 })
}

/// The destination named by an authority `host[:port]` (`[v6][:port]` for IPv6): a `CONNECT`
/// target, or a `Host` header inside a tunnel (the caller passes the tunnel's `https`).
/// `default_port` applies when the authority has no port; `0` means the port is required (as for
/// `CONNECT`). User info, an empty or non-numeric port, port 0 and ports above 65535 are refused.
pub fn destination_from_authority(
    authority: &str,
    https: bool,
    default_port: u16,
) -> Result<Destination, String> {
    let shown = show(authority);
    if authority.contains('@') {
        return Err(format!(
            "`{shown}`: user info (`user@host`) is not accepted in a request's host"
        ));
    }
    let (host, port) = if authority.starts_with('[') {
        let end = authority
            .find(']')
            .ok_or_else(|| format!("`{shown}`: unclosed `[`"))?;
        let (h, rest) = authority.split_at(end + 1);
        match rest.strip_prefix(':') {
            Some(p) => (h, Some(p)),
            None if rest.is_empty() => (h, None),
            None => return Err(format!("`{shown}`: unexpected text after `]`")),
        }
    } else {
        match authority.split_once(':') {
            Some((h, p)) => {
                if p.contains(':') {
                    return Err(format!(
                        "`{shown}`: write an IPv6 address in brackets (`[::1]:443`)"
                    ));
                }
                (h, Some(p))
            }
            None => (authority, None),
        }
    };
    let port = match port {
        Some(p) => {
            if p.is_empty() || !p.bytes().all(|b| b.is_ascii_digit()) {
                return Err(format!("`{shown}`: `{}` is not a port", show(p)));
            }
            match p.parse::<u16>() {
                Ok(0) | Err(_) => {
                    return Err(format!("`{shown}`: `{}` is not a port (1-65535)", show(p)));
                }
                Ok(n) => n,
            }
        }
        None if default_port == 0 => {
            return Err(format!("`{shown}`: a port is required (`host:port`)"));
        }
        None => default_port,
    };
    let host = normalize_host(host)?;
    Ok(Destination { https, host, port })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normalizes_hosts() {
        let cases = [
            ("API.Example.COM", "api.example.com"),
            ("example.com.", "example.com"),
            ("[::1]", "::1"),
            ("[0:0:0:0:0:0:0:1]", "::1"),
            ("::1", "::1"),
            ("[::FFFF:127.0.0.1]", "::ffff:127.0.0.1"),
            ("127.0.0.1", "127.0.0.1"),
            ("bücher.de", "xn--bcher-kva.de"),
            ("BÜCHER.de", "xn--bcher-kva.de"),
            ("under_score.example.com", "under_score.example.com"),
            ("localhost", "localhost"),
            ("1.example.com", "1.example.com"),
            ("example.0xg", "example.0xg"),
        ];
        for (raw, want) in cases {
            assert_eq!(normalize_host(raw).as_deref(), Ok(want), "{raw}");
            // Idempotent.
            assert_eq!(normalize_host(want).as_deref(), Ok(want), "{want}");
        }
    }

    #[test]
    fn rejects_hostile_hosts() {
        for raw in [
            "",
            ".",
            "example.com..",
            "a..b.com",
            ".example.com",
            "evil.com@good.com",
            "good.com:443",
            "good.com/evil",
            "good.com\\evil",
            "good.com?x",
            "good.com#x",
            "good com",
            "good.com\r\nX: y",
            "good.com\0",
            "*.example.com",
            "[fe80::1%eth0]",
            "[fe80::1%25eth0]",
            "fe80::1%eth0",
            "[::1",
            "[example.com]",
            "[127.0.0.1]",
            "exa%6dple.com",
            "2130706433",
            "0177.0.0.1",
            "0x7f.0.0.1",
            "0x7f000001",
            "127.1",
            "127.0.1",
            "1.2.3.4.5",
            "01.02.03.04",
            "a.1",
            "example.0x",
            "example.0xff",
            "１２７．０．０．１x．1",
        ] {
            assert!(
                normalize_host(raw).is_err(),
                "{raw:?} -> {:?}",
                normalize_host(raw)
            );
        }
        assert!(normalize_host(&"a".repeat(64)).is_err());
        assert!(normalize_host(&["a"; 130].join(".")).is_err());
        let long = normalize_host(&"x".repeat(5000)).unwrap_err();
        assert!(long.len() < 300, "{long}");
        let long = destination_from_authority(&format!("{}:99999", "x".repeat(5000)), true, 0)
            .unwrap_err();
        assert!(long.len() < 300, "{long}");
    }

    #[test]
    fn fullwidth_forms_map_to_what_is_resolved() {
        // IDNA maps fullwidth digits and dots; the result is an ordinary (classified) IP.
        assert_eq!(
            normalize_host("１２７．０．０．１").as_deref(),
            Ok("127.0.0.1")
        );
        assert!(normalize_host("ｅｖｉｌ．ｃｏｍ＠good.com").is_err());
    }

    #[test]
    fn numeric_ipv4_forms_do_not_pass_as_names() {
        let err = normalize_host("2130706433").unwrap_err();
        assert!(err.contains("non-standard form"), "{err}");
    }

    // ---- destinations -------------------------------------------------------------------

    fn dest(https: bool, host: &str, port: u16) -> Destination {
        Destination {
            https,
            host: host.into(),
            port,
        }
    }

    fn abs(s: &str) -> Result<Destination, String> {
        destination_from_absolute(&s.parse::<http::Uri>().map_err(|e| e.to_string())?)
    }

    #[test]
    fn destinations_from_absolute_targets() {
        assert_eq!(
            abs("http://Example.com/x?y"),
            Ok(dest(false, "example.com", 80))
        );
        assert_eq!(
            abs("https://example.com/"),
            Ok(dest(true, "example.com", 443))
        );
        assert_eq!(
            abs("HTTP://example.com:8080/"),
            Ok(dest(false, "example.com", 8080))
        );
        assert_eq!(abs("http://[::1]:3000/"), Ok(dest(false, "::1", 3000)));
        assert_eq!(abs("http://127.0.0.1/"), Ok(dest(false, "127.0.0.1", 80)));
        for bad in [
            "ftp://example.com/",
            "/path/only",
            "http://user:pw@example.com/",
            "http://good.com@evil.com/",
            "http://example.com:0/",
            "http://example.com:65536/",
            "http://example.com:99999999999/",
            "http://example.com:/",
            "http://2130706433/",
            "http://0177.0.0.1/",
            "http://[fe80::1%25eth0]/",
        ] {
            assert!(abs(bad).is_err(), "{bad} -> {:?}", abs(bad));
        }
    }

    #[test]
    fn destinations_from_authorities() {
        let a = destination_from_authority;
        assert_eq!(
            a("example.com:443", true, 0),
            Ok(dest(true, "example.com", 443))
        );
        assert_eq!(a("[::1]:8443", true, 0), Ok(dest(true, "::1", 8443)));
        assert_eq!(
            a("example.com", true, 443),
            Ok(dest(true, "example.com", 443))
        );
        assert_eq!(a("[::1]", false, 80), Ok(dest(false, "::1", 80)));
        assert_eq!(
            a("EXAMPLE.com.:65535", false, 80),
            Ok(dest(false, "example.com", 65535))
        );
        // CONNECT (default_port 0) requires a port.
        assert!(
            a("example.com", true, 0)
                .unwrap_err()
                .contains("port is required")
        );
        for bad in [
            "",
            ":443",
            "evil.com@good.com:443",
            "user:pw@good.com:443",
            "good.com:0",
            "good.com:65536",
            "good.com:4294967739",
            "good.com:-1",
            "good.com:+443",
            "good.com: 443",
            "good.com:",
            "good.com:443:1",
            "::1:443",
            "[::1]x",
            "[::1]:",
            "[fe80::1%eth0]:443",
            "good.com:443/path",
            "2130706433:80",
        ] {
            assert!(
                a(bad, true, 443).is_err(),
                "{bad:?} -> {:?}",
                a(bad, true, 443)
            );
        }
    }
}
