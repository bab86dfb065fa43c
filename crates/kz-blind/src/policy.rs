//! Where each secret may go, which hosts may be reached at all, and the address checks after DNS.
//!
//! Boundary: this module decides; it never opens a connection or touches a secret value. It
//! turns configuration (`hosts`, `[blind] allow`, `[blind] egress`, `[blind] connections`,
//! `--allow-host`) into a [`Policy`] that the proxy queries per request, normalises hosts taken
//! from requests ([`normalize_host`], [`destination_from_absolute`],
//! [`destination_from_authority`]), and resolves names to addresses that have been checked
//! ([`resolve_checked`]): loopback, private, link-local, CGNAT, metadata and other special
//! addresses are refused unless the host was allowed by an explicit (non-wildcard) pattern.
//! The caller connects to exactly the addresses returned, so a second DNS answer cannot rebind.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use kz_config::{BlindConfig, ConnRule, Egress, HostPattern};

/// A secret's name and its own `hosts` (empty when the entry has none).
#[derive(Debug, Clone, Copy)]
pub struct SecretHosts<'a> {
    /// The secret's environment variable name.
    pub name: &'a str,
    /// The entry's `hosts`.
    pub hosts: &'a [HostPattern],
}

/// The result of [`Policy::plan`].
#[derive(Debug, Clone)]
pub struct Planned {
    /// The connection policy, queried per request.
    pub policy: Policy,
    /// Per secret (same order as the input), the hosts it may be sent to.
    pub hosts: Vec<Vec<HostPattern>>,
    /// Things the user should know (printed at start).
    pub warnings: Vec<String>,
}

/// Whether a connection may be made.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Yes. `explicit`: the host and port match a non-wildcard allowed pattern, so the host may
    /// resolve to a special (loopback, private, ...) address.
    Allow {
        /// Matched by a non-wildcard pattern.
        explicit: bool,
    },
    /// No, with a reason for the user.
    Deny(String),
}

/// Why a blind-mode policy cannot be built.
#[derive(Debug, thiserror::Error)]
pub enum PolicyError {
    /// Some secrets would have no host they may be sent to.
    #[error(
        "blind mode cannot start: {} no allowed host, so {} could not be sent anywhere{}. \
         Fix: give {} entry its own hosts (e.g. `hosts = [\"api.example.com\"]`), or set \
         `[blind] allow = [\"api.example.com\"]` for every secret without `hosts`, or pass \
         `--allow-host api.example.com` to `kz run`",
        describe_names(.secrets),
        if .secrets.len() == 1 { "its value" } else { "their values" },
        if *.rules_cannot_bind {
            " ([blind] connections has only `regex` or wildcard rules: they decide which hosts \
             may be reached, but cannot bind secrets to hosts)"
        } else { "" },
        if .secrets.len() == 1 { "the" } else { "each" }
    )]
    NoAllowedHosts {
        /// Every secret left without a host.
        secrets: Vec<String>,
        /// `[blind] connections` exists but none of its rules is an exact `host` allow rule.
        rules_cannot_bind: bool,
    },
}

fn describe_names(names: &[String]) -> String {
    let list = names
        .iter()
        .map(|n| format!("`{n}`"))
        .collect::<Vec<_>>()
        .join(", ");
    if names.len() == 1 {
        format!("secret {list} has")
    } else {
        format!("secrets {list} have")
    }
}

/// Which hosts may be reached; cheap to query per request.
#[derive(Debug, Clone)]
pub struct Policy {
    egress: Egress,
    /// `[blind] connections`, in order (first match wins; no match denies).
    connections: Vec<ConnRule>,
    /// Allowlist egress: every secret's hosts, `[blind] allow`, `--allow-host`.
    reachable: Vec<HostPattern>,
    /// Non-wildcard patterns among all allowed ones (plus `allow = true` host rules).
    explicit: Vec<HostPattern>,
}

fn push_unique(list: &mut Vec<HostPattern>, p: &HostPattern) {
    if !list.contains(p) {
        list.push(p.clone());
    }
}

fn join_patterns(ps: &[HostPattern]) -> String {
    ps.iter()
        .map(|p| format!("`{p}`"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// `host:port` for messages, with IPv6 in brackets.
pub fn host_port(host: &str, port: u16) -> String {
    if host.contains(':') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    }
}

impl Policy {
    /// Per-secret allowed hosts (same order as `secrets`): the secret's `hosts`, else `[blind]
    /// allow`, plus every `cli_allow` (`--allow-host`). With published `[blind] connections`
    /// rules and no `allow`, the exact `host` rules with `allow = true` serve as `allow` for
    /// secrets without `hosts` (with a warning that those secrets share them). A secret left with
    /// no host at all is an error naming it and the fix.
    pub fn plan(
        secrets: &[SecretHosts<'_>],
        blind: &BlindConfig,
        cli_allow: &[HostPattern],
    ) -> Result<Planned, PolicyError> {
        let published: Vec<HostPattern> = blind
            .connections
            .iter()
            .filter_map(|r| match r {
                ConnRule::Host {
                    allow: true,
                    pattern,
                } if !pattern.wildcard => Some(pattern.clone()),
                _ => None,
            })
            .collect();
        let fallback: &[HostPattern] = match &blind.allow {
            Some(allow) => allow,
            None => &published,
        };
        let mut warnings = Vec::new();
        let mut hosts = Vec::with_capacity(secrets.len());
        let mut missing = Vec::new();
        let mut sharing = Vec::new();
        for s in secrets {
            let mut list = Vec::new();
            let own = if s.hosts.is_empty() {
                if blind.allow.is_none() && !published.is_empty() {
                    sharing.push(format!("`{}`", s.name));
                }
                fallback
            } else {
                s.hosts
            };
            for p in own.iter().chain(cli_allow) {
                push_unique(&mut list, p);
            }
            if list.is_empty() {
                missing.push(s.name.to_string());
            }
            hosts.push(list);
        }
        if !missing.is_empty() {
            return Err(PolicyError::NoAllowedHosts {
                secrets: missing,
                rules_cannot_bind: blind.allow.is_none()
                    && !blind.connections.is_empty()
                    && published.is_empty(),
            });
        }
        if !sharing.is_empty() {
            warnings.push(format!(
                "[blind] allow is not set, so the `allow = true` host rules of [blind] connections \
                 ({}) serve as allowed hosts for {}: all of them may be sent to any of these hosts. \
                 Give each secret its own `hosts = [...]` to keep them apart",
                join_patterns(&published),
                sharing.join(", ")
            ));
        }

        let mut reachable = Vec::new();
        for p in hosts
            .iter()
            .flatten()
            .chain(blind.allow.iter().flatten())
            .chain(cli_allow)
        {
            push_unique(&mut reachable, p);
        }
        let mut explicit = Vec::new();
        for p in reachable.iter().chain(&published) {
            if !p.wildcard {
                push_unique(&mut explicit, p);
            }
        }
        let policy = Policy {
            egress: blind.egress,
            connections: blind.connections.clone(),
            reachable,
            explicit,
        };

        if !policy.connections.is_empty() {
            for (s, list) in secrets.iter().zip(&hosts) {
                for p in list.iter().filter(|p| !p.wildcard) {
                    let port = p.port.unwrap_or(443);
                    if let Some(Verdict::Deny(why)) = policy.rules_verdict(&p.host, port) {
                        warnings.push(format!(
                            "secret `{}` may be sent to `{p}`, but [blind] connections keep that \
                             host from being reached: {why}",
                            s.name
                        ));
                    }
                }
            }
        } else if policy.egress == Egress::Allowlist && policy.reachable.is_empty() {
            warnings.push(
                "[blind] egress = \"allowlist\" with no allowed host: every request will be refused"
                    .to_string(),
            );
        }
        Ok(Planned {
            policy,
            hosts,
            warnings,
        })
    }

    /// `[blind] connections` verdict, or `None` when there are no rules.
    fn rules_verdict(&self, host: &str, port: u16) -> Option<Verdict> {
        if self.connections.is_empty() {
            return None;
        }
        let bare = host.strip_suffix('.').unwrap_or(host);
        let lower;
        let bare = if bare.bytes().any(|b| b.is_ascii_uppercase()) {
            lower = bare.to_ascii_lowercase();
            lower.as_str()
        } else {
            bare
        };
        for (i, rule) in self.connections.iter().enumerate() {
            let (allow, matched, shown) = match rule {
                ConnRule::Host { allow, pattern } => (
                    *allow,
                    pattern.matches(bare, port),
                    format!("host = \"{pattern}\""),
                ),
                ConnRule::Regex { allow, regex } => (
                    *allow,
                    regex.is_match(bare),
                    format!("regex = \"{}\"", regex.as_str()),
                ),
            };
            if matched {
                return Some(if allow {
                    Verdict::Allow {
                        explicit: self.is_explicit(bare, port),
                    }
                } else {
                    Verdict::Deny(format!(
                        "`{}` is denied by [blind] connections rule {} ({shown})",
                        host_port(bare, port),
                        i + 1
                    ))
                });
            }
        }
        Some(Verdict::Deny(format!(
            "`{}` matches no [blind] connections rule (hosts no rule allows are denied)",
            host_port(bare, port)
        )))
    }

    fn is_explicit(&self, host: &str, port: u16) -> bool {
        self.explicit.iter().any(|p| p.matches(host, port))
    }

    /// May a connection go to `host` (normalised, see [`normalize_host`]) on `port` at all?
    /// `[blind] connections` rules, when there are any, decide (first match wins, no match
    /// denies). Otherwise `egress = "open"` allows everything and `"allowlist"` only hosts that
    /// some allowed pattern matches. The address checks after DNS come on top
    /// ([`resolve_checked`], with the `explicit` flag of the verdict).
    pub fn connection(&self, host: &str, port: u16) -> Verdict {
        if let Some(v) = self.rules_verdict(host, port) {
            return v;
        }
        let explicit = self.is_explicit(host, port);
        match self.egress {
            Egress::Open => Verdict::Allow { explicit },
            Egress::Allowlist => {
                if self.reachable.iter().any(|p| p.matches(host, port)) {
                    Verdict::Allow { explicit }
                } else if self.reachable.iter().any(|p| {
                    p.port.is_some() && {
                        let any_port = HostPattern {
                            port: None,
                            ..p.clone()
                        };
                        any_port.matches(host, port)
                    }
                }) {
                    Verdict::Deny(format!(
                        "`{}` is not an allowed host ([blind] egress = \"allowlist\"; that host \
                         is allowed on other ports only)",
                        host_port(host, port)
                    ))
                } else {
                    Verdict::Deny(format!(
                        "`{host}` is not an allowed host ([blind] egress = \"allowlist\")"
                    ))
                }
            }
        }
    }

    /// Whether token-free requests are limited to a list of hosts (`egress = "allowlist"`, or
    /// `[blind] connections` rules exist) rather than open to any public host.
    pub fn egress_allowlist(&self) -> bool {
        !self.connections.is_empty() || self.egress == Egress::Allowlist
    }

    /// `NO_PROXY` for the child: `localhost,127.0.0.1,::1` minus every one of them that an
    /// allowed pattern names exactly (so a local server a secret is bound to goes through the
    /// proxy and gets its swap). May be empty.
    pub fn no_proxy(&self) -> String {
        ["localhost", "127.0.0.1", "::1"]
            .into_iter()
            .filter(|name| {
                !self
                    .explicit
                    .iter()
                    .any(|p| p.is_exact_loopback() && p.host == *name)
            })
            .collect::<Vec<_>>()
            .join(",")
    }
}

// ---------------------------------------------------------------------------------------------
// Addresses

const fn v4(a: u8, b: u8, c: u8, d: u8) -> u32 {
    u32::from_be_bytes([a, b, c, d])
}

fn in_v4(ip: u32, net: u32, len: u32) -> bool {
    let mask = if len == 0 { 0 } else { u32::MAX << (32 - len) };
    ip & mask == net & mask
}

fn classify_v4(ip: Ipv4Addr) -> Option<&'static str> {
    let n = u32::from(ip);
    const METADATA: [u32; 4] = [
        v4(169, 254, 169, 254), // AWS, GCP, Azure, OCI, DigitalOcean, ...
        v4(100, 100, 100, 200), // Alibaba Cloud
        v4(168, 63, 129, 16),   // Azure WireServer (a public address)
        v4(192, 0, 0, 192),     // Oracle Cloud (legacy)
    ];
    if METADATA.contains(&n) {
        return Some("cloud metadata");
    }
    let table: [(u32, u32, &'static str); 16] = [
        (v4(0, 0, 0, 0), 32, "unspecified"),
        (v4(255, 255, 255, 255), 32, "broadcast"),
        (v4(0, 0, 0, 0), 8, "reserved"),
        (v4(127, 0, 0, 0), 8, "loopback"),
        (v4(10, 0, 0, 0), 8, "private"),
        (v4(172, 16, 0, 0), 12, "private"),
        (v4(192, 168, 0, 0), 16, "private"),
        (v4(169, 254, 0, 0), 16, "link-local"),
        (v4(100, 64, 0, 0), 10, "CGNAT"),
        (v4(192, 0, 0, 0), 24, "reserved"),
        (v4(192, 0, 2, 0), 24, "documentation"),
        (v4(198, 51, 100, 0), 24, "documentation"),
        (v4(203, 0, 113, 0), 24, "documentation"),
        (v4(198, 18, 0, 0), 15, "reserved"),
        (v4(224, 0, 0, 0), 4, "multicast"),
        (v4(240, 0, 0, 0), 4, "reserved"),
    ];
    table
        .iter()
        .find(|(net, len, _)| in_v4(n, *net, *len))
        .map(|(_, _, why)| *why)
}

fn in_v6(ip: u128, net: u128, len: u32) -> bool {
    let mask = if len == 0 {
        0
    } else {
        u128::MAX << (128 - len)
    };
    ip & mask == net & mask
}

fn classify_v6(ip: Ipv6Addr) -> Option<&'static str> {
    let n = u128::from(ip);
    let low32 = Ipv4Addr::from((n & 0xffff_ffff) as u32);
    if ip.is_unspecified() {
        return Some("unspecified");
    }
    if ip.is_loopback() {
        return Some("loopback");
    }
    // IPv4-mapped (::ffff:a.b.c.d), IPv4-compatible (::a.b.c.d) and NAT64 (64:ff9b::/96):
    // classified by the embedded address. A public embedded address is still public.
    if in_v6(n, 0xffff_0000_0000, 96) || in_v6(n, 0, 96) || in_v6(n, 0x0064_ff9b << 96, 96) {
        return classify_v4(low32);
    }
    if n == u128::from(Ipv6Addr::new(0xfd00, 0xec2, 0, 0, 0, 0, 0, 0x254)) {
        return Some("cloud metadata");
    }
    // 6to4 (2002:a.b.c.d::/48): the embedded address is bits 16..48.
    if in_v6(n, 0x2002 << 112, 16) {
        let embedded = Ipv4Addr::from(((n >> 80) & 0xffff_ffff) as u32);
        return classify_v4(embedded);
    }
    // Teredo (2001::/32): server in bits 32..64, client (inverted) in the low 32 bits.
    if in_v6(n, 0x2001 << 112, 32) {
        let server = Ipv4Addr::from(((n >> 64) & 0xffff_ffff) as u32);
        let client = Ipv4Addr::from(!((n & 0xffff_ffff) as u32));
        return classify_v4(client).or_else(|| classify_v4(server));
    }
    let table: [(u128, u32, &'static str); 9] = [
        (0x0064_ff9b_0001 << 80, 48, "reserved"), // local-use NAT64
        (0x0100 << 112, 64, "reserved"),          // discard-only
        (0x2001_0002 << 96, 48, "reserved"),      // benchmarking
        (0x2001_0db8 << 96, 32, "documentation"),
        (0x3fff << 112, 20, "documentation"),
        (0xfc00 << 112, 7, "private"),
        (0xfe80 << 112, 10, "link-local"),
        (0xfec0 << 112, 10, "private"), // deprecated site-local
        (0xff00 << 112, 8, "multicast"),
    ];
    if let Some((_, _, why)) = table.iter().find(|(net, len, _)| in_v6(n, *net, *len)) {
        return Some(why);
    }
    // Only 2000::/3 is global unicast; everything else is unallocated or special.
    if !in_v6(n, 0x2000 << 112, 3) {
        return Some("reserved");
    }
    None
}

/// Why an address is refused, or `None` when it is public: `"loopback"`, `"private"` (RFC 1918,
/// ULA, site-local), `"link-local"`, `"CGNAT"`, `"cloud metadata"` (`169.254.169.254`,
/// `fd00:ec2::254`, `100.100.100.200`, `168.63.129.16`, `192.0.0.192`), `"unspecified"`,
/// `"multicast"`, `"broadcast"`, `"documentation"`, `"reserved"` (everything else not globally
/// routable). IPv4-mapped/compatible, NAT64, 6to4 and Teredo IPv6 addresses are classified by
/// the IPv4 address they embed.
pub fn classify(ip: IpAddr) -> Option<&'static str> {
    match ip {
        IpAddr::V4(a) => classify_v4(a),
        IpAddr::V6(a) => classify_v6(a),
    }
}

/// Names of cloud metadata services, refused before any DNS lookup (also every name under
/// them: `x.metadata.google.internal`).
const FORBIDDEN_NAMES: [&str; 8] = [
    "metadata",
    "metadata.google.internal",
    "metadata.goog",
    "instance-data",
    "instance-data.ec2.internal",
    "metadata.tencentyun.com",
    "metadata.platformequinix.com",
    "metadata.azure.internal",
];

/// Names refused before DNS because they are cloud metadata services
/// (`metadata.google.internal`, `metadata.goog`, bare `metadata`, `instance-data.ec2.internal`,
/// ...). `Some(reason)` when `host` is one of them (any case, trailing dots ignored).
pub fn forbidden_name(host: &str) -> Option<&'static str> {
    let h = host.trim_end_matches('.').to_ascii_lowercase();
    FORBIDDEN_NAMES
        .iter()
        .any(|f| h == *f || h.strip_suffix(f).is_some_and(|rest| rest.ends_with('.')))
        .then_some("cloud metadata")
}

// ---------------------------------------------------------------------------------------------
// Hosts from requests

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

// ---------------------------------------------------------------------------------------------
// Resolution

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
    use std::path::PathBuf;

    use kz_config::{Discovered, LoadRequest, Role, Source, load_sources};

    fn pat(s: &str) -> HostPattern {
        HostPattern::parse(s).unwrap()
    }

    fn pats(list: &[&str]) -> Vec<HostPattern> {
        list.iter().map(|s| pat(s)).collect()
    }

    /// `[blind]` as the config loader builds it from TOML (the only way to get a `regex::Regex`).
    fn blind(toml: &str) -> BlindConfig {
        let dir = PathBuf::from("/nonexistent-kz-test");
        let discovered = Discovered {
            dir: dir.clone(),
            project: Some(dir.join(".keyzero.toml")),
            local: None,
        };
        let getenv = |_: &str| None;
        let req = LoadRequest {
            start_dir: &dir,
            config_file: None,
            env_flag: None,
            global_file: None,
            getenv: &getenv,
        };
        let text = format!("[secrets]\nA = \"env://A\"\n\n[blind]\n{toml}\n");
        let loaded = load_sources(
            discovered,
            &[Source {
                role: Role::Project,
                path: dir.join(".keyzero.toml"),
                text,
            }],
            &req,
            Vec::new(),
        );
        let Some(cfg) = loaded.config else {
            panic!("config did not load: {:?}", loaded.diagnostics)
        };
        cfg.blind
    }

    fn plan_ok(secrets: &[SecretHosts<'_>], b: &BlindConfig, cli: &[HostPattern]) -> Planned {
        Policy::plan(secrets, b, cli).unwrap()
    }

    fn allow(explicit: bool) -> Verdict {
        Verdict::Allow { explicit }
    }

    fn denied(v: &Verdict) -> &str {
        match v {
            Verdict::Deny(why) => why,
            Verdict::Allow { .. } => panic!("expected a denial, got {v:?}"),
        }
    }

    // ---- plan ---------------------------------------------------------------------------

    #[test]
    fn own_hosts_else_allow_plus_cli() {
        let own = pats(&["api.openai.com"]);
        let b = blind("allow = [\"*.stripe.com\"]");
        let cli = pats(&["localhost:8443"]);
        let p = plan_ok(
            &[
                SecretHosts {
                    name: "OPENAI",
                    hosts: &own,
                },
                SecretHosts {
                    name: "STRIPE",
                    hosts: &[],
                },
            ],
            &b,
            &cli,
        );
        assert_eq!(p.hosts[0], pats(&["api.openai.com", "localhost:8443"]));
        assert_eq!(p.hosts[1], pats(&["*.stripe.com", "localhost:8443"]));
        assert!(p.warnings.is_empty(), "{:?}", p.warnings);
    }

    #[test]
    fn cli_allow_is_not_duplicated() {
        let own = pats(&["a.example.com"]);
        let cli = pats(&["a.example.com", "b.example.com"]);
        let p = plan_ok(
            &[SecretHosts {
                name: "A",
                hosts: &own,
            }],
            &blind(""),
            &cli,
        );
        assert_eq!(p.hosts[0], pats(&["a.example.com", "b.example.com"]));
    }

    #[test]
    fn a_secret_without_hosts_is_refused_with_every_name_and_the_fix() {
        let own = pats(&["api.openai.com"]);
        let err = Policy::plan(
            &[
                SecretHosts {
                    name: "FIRST",
                    hosts: &[],
                },
                SecretHosts {
                    name: "OK",
                    hosts: &own,
                },
                SecretHosts {
                    name: "SECOND",
                    hosts: &[],
                },
            ],
            &blind(""),
            &[],
        )
        .unwrap_err();
        let PolicyError::NoAllowedHosts {
            secrets,
            rules_cannot_bind,
        } = &err;
        assert_eq!(secrets, &["FIRST", "SECOND"]);
        assert!(!rules_cannot_bind);
        let msg = err.to_string();
        for needle in [
            "`FIRST`",
            "`SECOND`",
            "hosts = [\"api.example.com\"]",
            "[blind] allow",
            "--allow-host",
        ] {
            assert!(msg.contains(needle), "{needle} missing from: {msg}");
        }
        assert!(!msg.contains("`OK`"), "{msg}");
        assert!(!msg.contains("regex"), "{msg}");
    }

    #[test]
    fn an_empty_allow_list_binds_nothing() {
        let err = Policy::plan(
            &[SecretHosts {
                name: "A",
                hosts: &[],
            }],
            &blind("allow = []"),
            &[],
        )
        .unwrap_err();
        assert!(err.to_string().contains("`A`"));
    }

    #[test]
    fn no_secrets_plans_fine() {
        let p = plan_ok(&[], &blind(""), &[]);
        assert!(p.hosts.is_empty());
        assert_eq!(p.policy.connection("example.com", 443), allow(false));
    }

    #[test]
    fn published_host_rules_serve_as_allow_with_a_warning() {
        let b = blind(
            "connections = [\n  { allow = false, host = \"bad.example.com\" },\n  \
             { allow = true, host = \"api.example.com\" },\n  \
             { allow = true, host = \"*.cdn.example.com\" },\n  \
             { allow = true, regex = \"^.*\\\\.example\\\\.org$\" },\n]",
        );
        let own = pats(&["own.example.net"]);
        let p = plan_ok(
            &[
                SecretHosts {
                    name: "A",
                    hosts: &[],
                },
                SecretHosts {
                    name: "B",
                    hosts: &[],
                },
                SecretHosts {
                    name: "C",
                    hosts: &own,
                },
            ],
            &b,
            &[],
        );
        // Only exact host rules bind secrets; wildcard and regex rules do not.
        assert_eq!(p.hosts[0], pats(&["api.example.com"]));
        assert_eq!(p.hosts[1], pats(&["api.example.com"]));
        assert_eq!(p.hosts[2], own);
        let sharing: Vec<_> = p
            .warnings
            .iter()
            .filter(|w| w.contains("share") || w.contains("all of them"))
            .collect();
        assert_eq!(sharing.len(), 1, "{:?}", p.warnings);
        assert!(sharing[0].contains("`A`") && sharing[0].contains("`B`"));
        assert!(!sharing[0].contains("`C`"));
        // C's own host is reached by no rule: warned.
        assert!(
            p.warnings
                .iter()
                .any(|w| w.contains("`C`") && w.contains("own.example.net")),
            "{:?}",
            p.warnings
        );
    }

    #[test]
    fn published_rules_do_not_replace_an_explicit_allow() {
        let b = blind(
            "allow = [\"x.example.com\"]\nconnections = [{ allow = true, host = \"api.example.com\" }]",
        );
        let p = plan_ok(
            &[SecretHosts {
                name: "A",
                hosts: &[],
            }],
            &b,
            &[],
        );
        assert_eq!(p.hosts[0], pats(&["x.example.com"]));
        assert!(!p.warnings.iter().any(|w| w.contains("all of them")));
    }

    #[test]
    fn regex_only_published_config_is_refused_and_says_why() {
        let b = blind("connections = [{ allow = true, regex = \"^api\\\\.example\\\\.com$\" }]");
        let err = Policy::plan(
            &[SecretHosts {
                name: "TOKEN",
                hosts: &[],
            }],
            &b,
            &[],
        )
        .unwrap_err();
        let PolicyError::NoAllowedHosts {
            rules_cannot_bind, ..
        } = &err;
        assert!(rules_cannot_bind);
        let msg = err.to_string();
        assert!(msg.contains("`TOKEN`"), "{msg}");
        assert!(msg.contains("regex"), "{msg}");
        assert!(msg.contains("cannot bind secrets"), "{msg}");
        assert!(msg.contains("hosts = [\"api.example.com\"]"), "{msg}");
    }

    #[test]
    fn deny_only_host_rules_bind_nothing() {
        let b = blind("connections = [{ allow = false, host = \"api.example.com\" }]");
        assert!(
            Policy::plan(
                &[SecretHosts {
                    name: "T",
                    hosts: &[]
                }],
                &b,
                &[]
            )
            .is_err()
        );
    }

    #[test]
    fn allowlist_without_any_host_warns() {
        let p = plan_ok(&[], &blind("egress = \"allowlist\""), &[]);
        assert!(
            p.warnings
                .iter()
                .any(|w| w.contains("every request will be refused"))
        );
    }

    // ---- connection ---------------------------------------------------------------------

    #[test]
    fn open_egress_allows_anything_but_only_exact_patterns_are_explicit() {
        let own = pats(&["api.example.com", "*.stripe.com", "localhost:8443"]);
        let p = plan_ok(
            &[SecretHosts {
                name: "A",
                hosts: &own,
            }],
            &blind(""),
            &[],
        )
        .policy;
        assert!(!p.egress_allowlist());
        assert_eq!(p.connection("anything.test", 443), allow(false));
        assert_eq!(p.connection("api.example.com", 443), allow(true));
        assert_eq!(p.connection("api.stripe.com", 443), allow(false));
        assert_eq!(p.connection("localhost", 8443), allow(true));
        assert_eq!(p.connection("localhost", 8444), allow(false));
        // Hostile look-alikes are not explicit.
        assert_eq!(p.connection("api.example.com.evil.com", 443), allow(false));
        assert_eq!(p.connection("evilapi.example.com", 443), allow(false));
        assert_eq!(p.connection("x.api.example.com", 443), allow(false));
    }

    #[test]
    fn allowlist_egress_allows_only_allowed_patterns() {
        let own = pats(&["api.example.com"]);
        let b = blind("egress = \"allowlist\"\nallow = [\"*.stripe.com\"]");
        let cli = pats(&["localhost:8443"]);
        let p = plan_ok(
            &[SecretHosts {
                name: "A",
                hosts: &own,
            }],
            &b,
            &cli,
        )
        .policy;
        assert!(p.egress_allowlist());
        assert_eq!(p.connection("api.example.com", 443), allow(true));
        // `[blind] allow` counts even though no secret uses it.
        assert_eq!(p.connection("api.stripe.com", 443), allow(false));
        assert_eq!(p.connection("localhost", 8443), allow(true));
        let why = p.connection("evil.test", 443);
        assert_eq!(
            denied(&why),
            "`evil.test` is not an allowed host ([blind] egress = \"allowlist\")"
        );
        assert!(denied(&p.connection("localhost", 9000)).contains("`localhost:9000`"));
        for hostile in [
            "api.example.com.evil.com",
            "stripe.com",
            "evilstripe.com",
            "xapi.example.com",
            "127.0.0.1",
        ] {
            assert!(
                matches!(p.connection(hostile, 443), Verdict::Deny(_)),
                "{hostile}"
            );
        }
    }

    #[test]
    fn connection_rules_first_match_wins_and_no_match_denies() {
        let b = blind(
            "egress = \"open\"\nconnections = [\n  \
             { allow = false, host = \"secret.example.com\" },\n  \
             { allow = true, host = \"*.example.com\" },\n  \
             { allow = true, regex = \"^[a-z]+\\\\.example\\\\.org$\" },\n  \
             { allow = false, regex = \"^.*$\" },\n  \
             { allow = true, host = \"never.example.net\" },\n]",
        );
        let own = pats(&["api.example.com:443", "localhost:8443"]);
        let p = plan_ok(
            &[SecretHosts {
                name: "A",
                hosts: &own,
            }],
            &b,
            &[],
        )
        .policy;
        assert!(p.egress_allowlist());
        // Deny rule comes first, the wildcard allow second.
        let why = p.connection("secret.example.com", 443);
        assert!(denied(&why).contains("rule 1"), "{why:?}");
        assert!(denied(&why).contains("secret.example.com"), "{why:?}");
        assert_eq!(p.connection("api.example.com", 443), allow(true));
        assert_eq!(p.connection("api.example.com", 8443), allow(false));
        assert_eq!(p.connection("www.example.com", 443), allow(false));
        assert_eq!(p.connection("docs.example.org", 443), allow(false));
        // Regex sees the host without port, lowercased.
        assert_eq!(p.connection("DOCS.example.org", 443), allow(false));
        let why = p.connection("a1.example.org", 443);
        assert!(denied(&why).contains("rule 4"), "{why:?}");
        // A later allow never overrides an earlier deny.
        assert!(matches!(
            p.connection("never.example.net", 443),
            Verdict::Deny(_)
        ));
        // With rules, the secret's own host is still subject to them.
        assert!(matches!(p.connection("localhost", 8443), Verdict::Deny(_)));
    }

    #[test]
    fn unmatched_host_is_denied_under_rules() {
        let b = blind("connections = [{ allow = true, host = \"api.example.com\" }]");
        let p = plan_ok(
            &[SecretHosts {
                name: "A",
                hosts: &[],
            }],
            &b,
            &[],
        )
        .policy;
        assert_eq!(p.connection("api.example.com", 443), allow(true));
        let why = p.connection("other.example.com", 443);
        assert!(
            denied(&why).contains("matches no [blind] connections rule"),
            "{why:?}"
        );
        assert!(denied(&why).contains("`other.example.com:443`"), "{why:?}");
        let why = p.connection("::1", 443);
        assert!(denied(&why).contains("`[::1]:443`"), "{why:?}");
    }

    #[test]
    fn allow_true_host_rules_are_explicit_even_with_own_hosts() {
        let b = blind(
            "allow = [\"a.example.com\"]\nconnections = [\n  { allow = true, host = \"localhost:9000\" },\n  \
             { allow = true, host = \"a.example.com\" },\n]",
        );
        let p = plan_ok(
            &[SecretHosts {
                name: "A",
                hosts: &[],
            }],
            &b,
            &[],
        )
        .policy;
        assert_eq!(p.connection("localhost", 9000), allow(true));
        assert_eq!(p.no_proxy(), "127.0.0.1,::1");
    }

    // ---- NO_PROXY -----------------------------------------------------------------------

    #[test]
    fn no_proxy_drops_loopback_names_that_patterns_name() {
        let none = plan_ok(
            &[SecretHosts {
                name: "A",
                hosts: &pats(&["x.example.com"]),
            }],
            &blind(""),
            &[],
        );
        assert_eq!(none.policy.no_proxy(), "localhost,127.0.0.1,::1");
        let cases: [(&[&str], &str); 6] = [
            (&["localhost:8443"], "127.0.0.1,::1"),
            (&["127.0.0.1"], "localhost,::1"),
            (&["[::1]:8080"], "localhost,127.0.0.1"),
            (&["localhost", "127.0.0.1", "::1"], ""),
            // Other loopback addresses are not in the list; wildcards name nothing exactly.
            (&["127.0.0.2", "*.a.localhost"], "localhost,127.0.0.1,::1"),
            (&["LOCALHOST"], "127.0.0.1,::1"),
        ];
        for (list, want) in cases {
            let own = pats(list);
            let p = plan_ok(
                &[SecretHosts {
                    name: "A",
                    hosts: &own,
                }],
                &blind(""),
                &[],
            );
            assert_eq!(p.policy.no_proxy(), want, "{list:?}");
        }
        let cli = pats(&["127.0.0.1:3000"]);
        let p = plan_ok(
            &[SecretHosts {
                name: "A",
                hosts: &pats(&["x.example.com"]),
            }],
            &blind(""),
            &cli,
        );
        assert_eq!(p.policy.no_proxy(), "localhost,::1");
        let p = plan_ok(
            &[SecretHosts {
                name: "A",
                hosts: &[],
            }],
            &blind("allow = [\"localhost\"]"),
            &[],
        );
        assert_eq!(p.policy.no_proxy(), "127.0.0.1,::1");
    }

    // ---- classify / forbidden_name -------------------------------------------------------

    fn class(s: &str) -> Option<&'static str> {
        classify(s.parse().unwrap())
    }

    #[test]
    fn classifies_special_addresses() {
        let cases = [
            ("127.0.0.1", "loopback"),
            ("127.255.1.2", "loopback"),
            ("10.1.2.3", "private"),
            ("172.16.0.1", "private"),
            ("172.31.255.255", "private"),
            ("192.168.1.1", "private"),
            ("169.254.1.1", "link-local"),
            ("169.254.169.254", "cloud metadata"),
            ("100.100.100.200", "cloud metadata"),
            ("168.63.129.16", "cloud metadata"),
            ("100.64.0.1", "CGNAT"),
            ("100.127.255.255", "CGNAT"),
            ("0.0.0.0", "unspecified"),
            ("0.1.2.3", "reserved"),
            ("224.0.0.1", "multicast"),
            ("255.255.255.255", "broadcast"),
            ("240.0.0.1", "reserved"),
            ("192.0.2.1", "documentation"),
            ("198.18.0.1", "reserved"),
            ("::", "unspecified"),
            ("::1", "loopback"),
            ("fc00::1", "private"),
            ("fd12:3456::1", "private"),
            ("fd00:ec2::254", "cloud metadata"),
            ("fe80::1", "link-local"),
            ("febf::1", "link-local"),
            ("ff02::1", "multicast"),
            ("2001:db8::1", "documentation"),
            ("::ffff:127.0.0.1", "loopback"),
            ("::ffff:169.254.169.254", "cloud metadata"),
            ("::ffff:10.0.0.1", "private"),
            ("::127.0.0.1", "loopback"),
            ("64:ff9b::a9fe:a9fe", "cloud metadata"),
            ("64:ff9b::7f00:1", "loopback"),
            ("2002:7f00:1::", "loopback"),
            ("2002:c0a8:101::1", "private"),
            ("100::1", "reserved"),
            ("4000::1", "reserved"),
        ];
        for (ip, want) in cases {
            assert_eq!(class(ip), Some(want), "{ip}");
        }
        for public in [
            "1.1.1.1",
            "8.8.8.8",
            "172.32.0.1",
            "100.128.0.1",
            "169.253.1.1",
            "2606:4700:4700::1111",
            "::ffff:1.1.1.1",
            "64:ff9b::808:808",
            "2002:808:808::1",
        ] {
            assert_eq!(class(public), None, "{public}");
        }
    }

    #[test]
    fn teredo_is_classified_by_its_client_address() {
        // Client 127.0.0.1 is stored inverted: 0x80ff_fffe.
        assert_eq!(
            class("2001:0:4136:e378:8000:63bf:80ff:fffe"),
            Some("loopback")
        );
    }

    #[test]
    fn metadata_names_are_forbidden() {
        for name in [
            "metadata.google.internal",
            "METADATA.google.internal.",
            "metadata.goog",
            "metadata",
            "instance-data",
            "instance-data.ec2.internal",
            "x.metadata.google.internal",
        ] {
            assert_eq!(forbidden_name(name), Some("cloud metadata"), "{name}");
        }
        for ok in [
            "metadata.google.internal.evil.com",
            "mymetadata.goog",
            "metadata.example.com",
            "example.com",
        ] {
            assert_eq!(forbidden_name(ok), None, "{ok}");
        }
    }

    // ---- normalize_host -----------------------------------------------------------------

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

    // ---- resolve_checked ----------------------------------------------------------------

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
