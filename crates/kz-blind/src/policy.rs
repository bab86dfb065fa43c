//! Where each secret may go and which hosts may be reached at all.
//!
//! Boundary: this module decides; it never opens a connection or touches a secret value. It
//! turns configuration (`hosts`, `[blind] allow`, `[blind] egress`, `[blind] connections`,
//! `--allow-host`) into a [`Policy`] that the proxy queries per request, and that is the
//! [`kz_egress::connect::Gate`] of its upstream connections. Hosts taken from requests, the
//! special-address checks after DNS and the checked resolver are `kz-egress`'s (re-exported
//! here): loopback, private, link-local, CGNAT, metadata and other special addresses are refused
//! unless the host was allowed by an explicit (non-wildcard) pattern, and the caller connects to
//! exactly the addresses checked, so a second DNS answer cannot rebind.

use kz_config::{BlindConfig, ConnRule, Egress, HostPattern};
pub use kz_egress::{
    CheckedResolver, Destination, RESOLVE_TTL, classify, destination_from_absolute,
    destination_from_authority, forbidden_name, host_port, normalize_host, resolve_checked,
};

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

#[cfg(feature = "proxy")]
impl kz_egress::connect::Gate for Policy {
    fn admit(&self, host: &str, port: u16) -> Result<bool, String> {
        match self.connection(host, port) {
            Verdict::Allow { explicit } => Ok(explicit),
            Verdict::Deny(reason) => Err(reason),
        }
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
}
