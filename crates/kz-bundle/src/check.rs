//! The bundle schema on the positioned tree: every problem at once, each with its line and key.

use std::path::{Path, PathBuf};
use std::time::Duration;

use kz_config::schema::{check_provider, type_error, unknown_key};
use kz_config::tree::{Entry, Node, Val};
use kz_config::{Diagnostic, HostPattern, Pos, Role, parse_duration};
use kz_policy::{Effect, Glob, PolicySet, PolicySource};

use crate::{
    Audit, Bundle, CredentialLocation, Issuer, KeyMaterial, KeySource, MAX_ISSUERS, MAX_POLICIES,
    MAX_RESOLVERS, Mcp, Mode, Param, PolicyEntry, Profile, ReplayStore, Resolver, StaticKey,
    validate_ref,
};

const TOP_KEYS: &[&str] = &[
    "version",
    "issuers",
    "backends",
    "resolvers",
    "resources",
    "policies",
    "audit",
    "upstream_ca",
    "replay",
    "mcp",
];
const ISSUER_KEYS: &[&str] = &[
    "name",
    "type",
    "issuer_url",
    "audience",
    "allow_any_audience",
    "jwks_url",
    "static_keys",
    "map",
    "leeway",
    "max_token_lifetime",
    "single_use",
    "allow_private_jwks",
];
const STATIC_KEY_KEYS: &[&str] = &["kid", "alg", "pem", "secret_env", "secret_file"];
const RESOLVER_KEYS: &[&str] = &[
    "name",
    "backend",
    "resolver",
    "mode",
    "cache_ttl",
    "ttl",
    "hosts",
    "methods",
    "paths",
    "credential_location",
    "single_use",
];
const POLICY_KEYS: &[&str] = &["name", "rule", "effect", "description"];
const AUDIT_KEYS: &[&str] = &["path", "claims"];
const REPLAY_KEYS: &[&str] = &["redis_url", "password_env"];
const MCP_KEYS: &[&str] = &["tools"];
/// The MCP tools a bundle may list under `mcp.tools` (`list_resources` is always served).
const MCP_TOOLS: &[&str] = &["fetch", "resolve", "list_resources"];
/// Identity fields a `map` may set.
const IDENTITY_FIELDS: &[&str] = &kz_identity::MAP_FIELDS;
/// Every profile, as written in a bundle.
const PROFILES: &[&str] = &[
    "github-actions",
    "gitlab",
    "kubernetes",
    "spiffe",
    "gcp",
    "custom",
];
/// Algorithms a static key may be bound to.
const ALGORITHMS: &[&str] = &[
    "RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "EdDSA", "HS256",
    "HS384", "HS512",
];
/// Backend parameters that name the secret (the first one given is the backend reference).
pub(crate) const REFERENCE_PARAMS: &[&str] = &["secret_id", "path", "ref", "role_arn"];
/// Backend parameters every resolver may set, besides its backend type's own.
const COMMON_PARAMS: &[&str] = &[
    "secret_id",
    "path",
    "ref",
    "field",
    "version",
    "role_arn",
    "duration_seconds",
];
/// Longest `leeway` accepted.
const MAX_LEEWAY: Duration = kz_identity::MAX_LEEWAY;

/// Checks bundle text (read from `file`): a [`Bundle`], or every problem found.
pub fn check(file: &Path, text: &str) -> Result<Bundle, Vec<Diagnostic>> {
    let root = kz_config::yaml::parse_yaml(file, text)?;
    let mut c = Checker {
        diags: Vec::new(),
        top: root.pos.clone(),
    };
    let entries = root.as_table().unwrap_or_default();
    for e in entries {
        if !TOP_KEYS.contains(&e.key.as_str()) {
            c.diags.push(unknown_key(e, &e.key, TOP_KEYS));
        }
    }
    let version = c.version(root.get("version"));
    let issuers = c.issuers(root.get("issuers"));
    c.diags.extend(crate::identity::check_issuers(&issuers));
    let backends = c.backends(root.get("backends"));
    let resolvers = match (root.get("resolvers"), root.get("resources")) {
        (Some(a), Some(b)) => {
            c.diags.push(
                Diagnostic::error(
                    "bundle::both_forms",
                    "the bundle has both `resolvers:` and `resources:`",
                )
                .at(&b.key_pos)
                .key("resources")
                .help(format!(
                    "use one list: `resolvers:` (line {}) is the current form",
                    a.key_pos.line
                )),
            );
            Vec::new()
        }
        (Some(e), None) => c.resolvers(e, false, &backends),
        (None, Some(e)) => c.resolvers(e, true, &backends),
        (None, None) => Vec::new(),
    };
    let policy_entries = c.policies(root.get("policies"));
    let policies = c.compile(&policy_entries);
    let audit = c.audit(root.get("audit"));
    let replay = c.replay(root.get("replay"));
    let mcp = c.mcp(root.get("mcp"));
    let upstream_ca = root
        .get("upstream_ca")
        .and_then(|e| c.string(e, "upstream_ca"))
        .map(PathBuf::from);
    if c.diags.iter().any(Diagnostic::is_error) {
        return Err(c.diags);
    }
    let Some(policies) = policies else {
        return Err(c.diags);
    };
    Ok(Bundle {
        file: file.to_path_buf(),
        version,
        issuers,
        backends,
        resolvers,
        policy_entries,
        policies,
        audit,
        upstream_ca,
        replay,
        mcp,
    })
}

struct Checker {
    diags: Vec<Diagnostic>,
    top: Pos,
}

fn err(code: &'static str, msg: impl Into<String>, pos: &Pos, key: &str) -> Diagnostic {
    Diagnostic::error(code, msg).at(pos).key(key)
}

/// A name of an issuer, backend or policy: printable, no spaces, at most 128 bytes.
fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 128
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | ':' | '/'))
}

/// `https://HOST…`, or `http://` to a loopback host (a test or a sidecar issuer); never with
/// userinfo (`user@`), which would both hold a credential and hide the real host.
fn valid_url(url: &str) -> bool {
    let (https, rest) = match (url.strip_prefix("https://"), url.strip_prefix("http://")) {
        (Some(r), _) => (true, r),
        (None, Some(r)) => (false, r),
        _ => return false,
    };
    let authority = rest.split(['/', '?', '#']).next().unwrap_or_default();
    if authority.is_empty()
        || authority.contains('@')
        || authority.chars().any(|c| c.is_whitespace())
    {
        return false;
    }
    if https {
        return true;
    }
    let host = match authority.rsplit_once(':') {
        Some((h, port)) if !port.is_empty() && port.bytes().all(|b| b.is_ascii_digit()) => h,
        _ => authority,
    };
    host == "localhost"
        || host == "[::1]"
        || host
            .parse::<std::net::Ipv4Addr>()
            .is_ok_and(|ip| ip.is_loopback())
}

impl Checker {
    fn table<'a>(&mut self, e: &'a Entry, path: &str) -> Option<&'a [Entry]> {
        let t = e.node.as_table();
        if t.is_none() {
            self.diags.push(type_error(e, path, "a mapping"));
        }
        t
    }

    fn list<'a>(&mut self, e: &'a Entry, path: &str) -> Option<&'a [Node]> {
        match &e.node.val {
            Val::Array(a) => Some(a),
            _ => {
                self.diags.push(type_error(e, path, "a list"));
                None
            }
        }
    }

    /// A list of mappings (`issuers`, `resolvers`, `policies`): each item's path, node and
    /// entries; a list longer than `max`, or an item that is not a mapping, is reported.
    fn mappings<'a>(
        &mut self,
        e: &'a Entry,
        list: &str,
        max: usize,
        too_many_help: &str,
        item_help: &str,
    ) -> Vec<(String, &'a Node, &'a [Entry])> {
        let Some(items) = self.list(e, list) else {
            return Vec::new();
        };
        if items.len() > max {
            self.diags.push(
                err(
                    "bundle::too_many",
                    format!("{} {list}; at most {max} are accepted", items.len()),
                    &e.key_pos,
                    list,
                )
                .help(too_many_help),
            );
            return Vec::new();
        }
        let mut out = Vec::new();
        for (i, n) in items.iter().enumerate() {
            let path = format!("{list}[{i}]");
            match n.as_table() {
                Some(t) => out.push((path, n, t)),
                None => self.diags.push(
                    err(
                        "config::type",
                        format!("`{path}` must be a mapping, found {}", n.val.type_name()),
                        &n.pos,
                        &path,
                    )
                    .help(item_help),
                ),
            }
        }
        out
    }

    fn string(&mut self, e: &Entry, path: &str) -> Option<String> {
        match e.node.as_str() {
            Some(s) => Some(s.to_owned()),
            None => {
                self.diags.push(type_error(e, path, "a string"));
                None
            }
        }
    }

    fn boolean(&mut self, e: &Entry, path: &str) -> Option<bool> {
        match e.node.val {
            Val::Bool(b) => Some(b),
            _ => {
                self.diags
                    .push(type_error(e, path, "a boolean (true or false)"));
                None
            }
        }
    }

    fn duration(&mut self, e: &Entry, path: &str) -> Option<Duration> {
        match &e.node.val {
            Val::Int(i) if *i >= 0 => Some(Duration::from_secs(i.unsigned_abs())),
            Val::Str(s) => match parse_duration(s) {
                Ok(d) => Some(d),
                Err(m) => {
                    self.diags.push(
                        err("config::value", format!("`{path}`: {m}"), &e.node.pos, path)
                            .help("write e.g. \"60s\", \"5m\" or a number of seconds"),
                    );
                    None
                }
            },
            _ => {
                self.diags.push(type_error(
                    e,
                    path,
                    "a duration such as \"60s\" or a number of seconds",
                ));
                None
            }
        }
    }

    fn strings(&mut self, e: &Entry, path: &str) -> Vec<(String, Pos)> {
        let Some(items) = self.list(e, path) else {
            return Vec::new();
        };
        let mut out = Vec::new();
        for (i, n) in items.iter().enumerate() {
            match n.as_str() {
                Some(s) => out.push((s.to_owned(), n.pos.clone())),
                None => self.diags.push(
                    err(
                        "config::type",
                        format!(
                            "`{path}[{i}]` must be a string, found {}",
                            n.val.type_name()
                        ),
                        &n.pos,
                        path,
                    )
                    .help("write each item as text"),
                ),
            }
        }
        out
    }

    fn required<'a>(
        &mut self,
        t: &'a [Entry],
        key: &str,
        path: &str,
        at: &Pos,
    ) -> Option<&'a Entry> {
        let e = t.iter().find(|e| e.key == key);
        if e.is_none() {
            self.diags.push(
                err(
                    "bundle::missing",
                    format!("`{path}` needs `{key}`"),
                    at,
                    path,
                )
                .help(format!("add `{key}:` to this entry")),
            );
        }
        e
    }

    fn unknown(&mut self, t: &[Entry], path: &str, known: &[&str]) {
        for e in t {
            if !known.contains(&e.key.as_str()) {
                self.diags
                    .push(unknown_key(e, &format!("{path}.{}", e.key), known));
            }
        }
    }

    fn name(&mut self, e: &Entry, path: &str) -> Option<String> {
        let n = self.string(e, path)?;
        if !valid_name(&n) {
            self.diags.push(
                err(
                    "bundle::bad_name",
                    format!("`{path}` is not a valid name"),
                    &e.node.pos,
                    path,
                )
                .help("use 1 to 128 letters, digits, `-`, `_`, `.`, `:` or `/`"),
            );
            return None;
        }
        Some(n)
    }

    /// Refuses a credential written literally anywhere in a value (nested tables and lists
    /// included). `false` when one was found.
    fn no_literal_credential(&mut self, n: &Node, path: &str) -> bool {
        match &n.val {
            Val::Str(v) => match literal_credential(v) {
                Some(why) => {
                    self.diags.push(
                        err(
                            "config::credential_in_project_file",
                            format!("`{path}` {why}, which is refused in a bundle"),
                            &n.pos,
                            path,
                        )
                        .help("a bundle never holds a credential: name a variable or file that holds it (`*_env`, `*_file`)"),
                    );
                    false
                }
                None => true,
            },
            Val::Array(a) => {
                a.iter()
                    .enumerate()
                    .map(|(i, x)| self.no_literal_credential(x, &format!("{path}[{i}]")))
                    .filter(|ok| !ok)
                    .count()
                    == 0
            }
            Val::Table(t) => {
                t.iter()
                    .map(|e| self.no_literal_credential(&e.node, &format!("{path}.{}", e.key)))
                    .filter(|ok| !ok)
                    .count()
                    == 0
            }
            _ => true,
        }
    }

    fn duplicate(&mut self, what: &str, name: &str, pos: &Pos, first: &Pos, path: &str) {
        self.diags.push(
            err(
                "bundle::duplicate",
                format!("{what} `{name}` is defined twice"),
                pos,
                path,
            )
            .help(format!(
                "the first is at line {}; rename or remove one",
                first.line
            )),
        );
    }

    fn version(&mut self, e: Option<&Entry>) -> String {
        let Some(e) = e else {
            self.diags.push(
                Diagnostic::error("bundle::missing", "the bundle needs `version: \"1\"`")
                    .at(&self.top)
                    .key("version")
                    .help("add `version: \"1\"` at the top"),
            );
            return String::new();
        };
        let v = match &e.node.val {
            Val::Str(s) => s.clone(),
            Val::Int(i) => i.to_string(),
            Val::Float(f) if *f == 1.0 => "1".into(),
            _ => {
                self.diags
                    .push(type_error(e, "version", "a string or number"));
                return String::new();
            }
        };
        if v != "1" {
            self.diags.push(
                err(
                    "bundle::version",
                    format!("bundle version `{v}` is not supported"),
                    &e.node.pos,
                    "version",
                )
                .help("this kz reads `version: \"1\"`"),
            );
        }
        v
    }

    fn issuers(&mut self, e: Option<&Entry>) -> Vec<Issuer> {
        let Some(e) = e else {
            return Vec::new();
        };
        let mut out: Vec<Issuer> = Vec::new();
        for (path, n, t) in self.mappings(
            e,
            "issuers",
            MAX_ISSUERS,
            "split the bundle",
            "write each issuer as `- name: …`",
        ) {
            if let Some(iss) = self.issuer(t, &path, &n.pos) {
                if let Some(first) = out.iter().find(|x| x.name == iss.name) {
                    let first = first.pos.clone();
                    self.duplicate("issuer", &iss.name, &iss.pos, &first, &path);
                } else if let Some(first) = out.iter().find(|x| x.issuer_url == iss.issuer_url) {
                    self.diags.push(
                        err(
                            "bundle::duplicate",
                            format!(
                                "issuers `{}` and `{}` have the same issuer_url",
                                first.name, iss.name
                            ),
                            &iss.pos,
                            &path,
                        )
                        .help("a token's `iss` must select one issuer: merge them"),
                    );
                } else {
                    out.push(iss);
                }
            }
        }
        out
    }

    fn issuer(&mut self, t: &[Entry], path: &str, at: &Pos) -> Option<Issuer> {
        self.unknown(t, path, ISSUER_KEYS);
        let name = self
            .required(t, "name", path, at)
            .and_then(|e| self.name(e, &format!("{path}.name")));
        let path = name
            .as_deref()
            .map_or(path.to_owned(), |n| format!("issuers.{n}"));
        let path = path.as_str();
        let profile = self.required(t, "type", path, at).and_then(|e| {
            let s = self.string(e, &format!("{path}.type"))?;
            let p = Profile::parse(&s);
            if p.is_none() {
                let mut d = err(
                    "bundle::unknown_profile",
                    format!("unknown issuer type `{s}`"),
                    &e.node.pos,
                    &format!("{path}.type"),
                );
                d = match kz_config::diag::did_you_mean(&s, PROFILES.iter().copied()) {
                    Some(m) => d.help(format!("did you mean `{m}`?")),
                    None => d.help(format!("use one of: {}", PROFILES.join(", "))),
                };
                self.diags.push(d);
            }
            p
        });
        let issuer_url = self.required(t, "issuer_url", path, at).and_then(|e| {
            let p = format!("{path}.issuer_url");
            let u = self.string(e, &p)?;
            if !valid_url(&u) {
                self.diags.push(
                    err("bundle::bad_url", format!("`{p}` must be an https:// URL"), &e.node.pos, &p)
                        .help("write the issuer exactly as its tokens' `iss` claim (http:// only for a loopback issuer)"),
                );
                return None;
            }
            Some(u)
        });
        let get = |k: &str| t.iter().find(|e| e.key == k);
        let audience = get("audience").and_then(|e| self.string(e, &format!("{path}.audience")));
        let allow_any = get("allow_any_audience")
            .and_then(|e| self.boolean(e, &format!("{path}.allow_any_audience")))
            .unwrap_or(false);
        match (&audience, allow_any) {
            (None, false) => self.diags.push(
                err(
                    "bundle::missing",
                    format!("`{path}` needs `audience`"),
                    at,
                    path,
                )
                .help("set the audience your workloads request tokens for (e.g. `audience: keyzero`); `allow_any_audience: true` accepts any"),
            ),
            (Some(a), _) if a.is_empty() => self.diags.push(
                err("config::value", format!("`{path}.audience` is empty"), at, path)
                    .help("set the audience your workloads request tokens for"),
            ),
            (Some(_), true) => self.diags.push(
                err(
                    "bundle::conflict",
                    format!("`{path}` sets both `audience` and `allow_any_audience: true`"),
                    at,
                    path,
                )
                .help("remove one"),
            ),
            _ => {}
        }
        let keys = self.key_source(get("jwks_url"), get("static_keys"), path);
        let map = get("map").map(|e| self.map(e, path)).unwrap_or_default();
        let leeway = match get("leeway") {
            Some(e) => {
                let d = self.duration(e, &format!("{path}.leeway"));
                if d.is_some_and(|d| d > MAX_LEEWAY) {
                    self.diags.push(
                        err(
                            "config::value",
                            format!("`{path}.leeway` is over {} s", MAX_LEEWAY.as_secs()),
                            &e.node.pos,
                            &format!("{path}.leeway"),
                        )
                        .help(
                            "a leeway of minutes hides a broken clock; use \"60s\" (the default)",
                        ),
                    );
                }
                d.unwrap_or(Duration::from_secs(60))
            }
            None => Duration::from_secs(60),
        };
        let max_token_lifetime = get("max_token_lifetime")
            .and_then(|e| self.duration(e, &format!("{path}.max_token_lifetime")));
        let single_use = get("single_use")
            .and_then(|e| self.boolean(e, &format!("{path}.single_use")))
            .unwrap_or(false);
        if single_use && max_token_lifetime.is_none() {
            self.diags.push(
                err(
                    "bundle::conflict",
                    format!("`{path}.single_use` needs `max_token_lifetime`"),
                    at,
                    path,
                )
                .help("the replay cache keeps each `jti` until its token expires: bound how long tokens live (e.g. `max_token_lifetime: 1h`)"),
            );
        }
        let allow_private_jwks = get("allow_private_jwks")
            .and_then(|e| self.boolean(e, &format!("{path}.allow_private_jwks")))
            .unwrap_or(false);
        Some(Issuer {
            name: name?,
            profile: profile?,
            issuer_url: issuer_url?,
            audience,
            allow_any_audience: allow_any,
            keys: keys?,
            map,
            leeway,
            max_token_lifetime,
            single_use,
            allow_private_jwks,
            pos: at.clone(),
        })
    }

    fn key_source(
        &mut self,
        jwks: Option<&Entry>,
        keys: Option<&Entry>,
        path: &str,
    ) -> Option<KeySource> {
        match (jwks, keys) {
            (Some(j), Some(_)) => {
                self.diags.push(
                    err(
                        "bundle::conflict",
                        format!("`{path}` sets both `jwks_url` and `static_keys`"),
                        &j.key_pos,
                        path,
                    )
                    .help("keep one source of keys"),
                );
                None
            }
            (Some(j), None) => {
                let p = format!("{path}.jwks_url");
                let u = self.string(j, &p)?;
                if !valid_url(&u) {
                    self.diags.push(
                        err(
                            "bundle::bad_url",
                            format!("`{p}` must be an https:// URL"),
                            &j.node.pos,
                            &p,
                        )
                        .help("http:// is accepted only for a loopback address"),
                    );
                    return None;
                }
                Some(KeySource::JwksUrl(u))
            }
            (None, Some(k)) => {
                let p = format!("{path}.static_keys");
                let items = self.list(k, &p)?;
                if items.is_empty() {
                    self.diags.push(
                        err("config::value", format!("`{p}` is empty"), &k.node.pos, &p).help(
                            "give at least one key, or remove `static_keys` to use discovery",
                        ),
                    );
                    return None;
                }
                // The keys that are well-formed go on to the identity checks even when another
                // is not (its error is recorded), so every key problem is reported at once.
                let out = items
                    .iter()
                    .enumerate()
                    .filter_map(|(i, n)| self.static_key(n, i, &format!("{p}[{i}]")))
                    .collect();
                Some(KeySource::Static(out))
            }
            (None, None) => Some(KeySource::Discovery),
        }
    }

    fn static_key(&mut self, n: &Node, index: usize, path: &str) -> Option<StaticKey> {
        let Some(t) = n.as_table() else {
            self.diags.push(
                err(
                    "config::type",
                    format!("`{path}` must be a mapping, found {}", n.val.type_name()),
                    &n.pos,
                    path,
                )
                .help("write `- { kid: …, alg: RS256, pem: … }`"),
            );
            return None;
        };
        if let Some(s) = t.iter().find(|e| e.key == "secret") {
            self.diags.push(
                err(
                    "config::credential_in_project_file",
                    format!("`{path}.secret` holds a credential, which is refused in a bundle"),
                    &s.key_pos,
                    &format!("{path}.secret"),
                )
                .help("anyone who reads the bundle could sign tokens: use `secret_env: VARIABLE` or `secret_file: PATH`"),
            );
        }
        let known: Vec<&str> = STATIC_KEY_KEYS.iter().copied().chain(["secret"]).collect();
        self.unknown(t, path, &known);
        if t.iter().any(|e| e.key == "secret") {
            return None;
        }
        let get = |k: &str| t.iter().find(|e| e.key == k);
        let kid = get("kid").and_then(|e| self.string(e, &format!("{path}.kid")));
        let alg = self.required(t, "alg", path, &n.pos).and_then(|e| {
            let a = self.string(e, &format!("{path}.alg"))?;
            if !ALGORITHMS.contains(&a.as_str()) {
                let hint = if a.eq_ignore_ascii_case("none") {
                    "unsigned tokens are never accepted".to_owned()
                } else {
                    format!("use one of: {}", ALGORITHMS.join(", "))
                };
                self.diags.push(
                    err(
                        "bundle::bad_alg",
                        format!("`{path}.alg`: `{a}` is not a supported algorithm"),
                        &e.node.pos,
                        &format!("{path}.alg"),
                    )
                    .help(hint),
                );
                return None;
            }
            Some(a)
        });
        let hmac = alg.as_deref().is_some_and(|a| a.starts_with("HS"));
        let material = match (get("pem"), get("secret_env"), get("secret_file")) {
            (Some(p), None, None) if !hmac => {
                let pem = self.string(p, &format!("{path}.pem"))?;
                let text = pem.trim_start();
                if text.contains("PRIVATE KEY") {
                    self.diags.push(
                        err(
                            "config::credential_in_project_file",
                            format!("`{path}.pem` is a private key"),
                            &p.key_pos,
                            &format!("{path}.pem"),
                        )
                        .help("a bundle holds the issuer's public key only: extract it (`openssl pkey -pubout`)"),
                    );
                    return None;
                }
                if !text.starts_with("-----BEGIN ") {
                    self.diags.push(
                        err(
                            "config::value",
                            format!("`{path}.pem` is not a PEM public key"),
                            &p.node.pos,
                            &format!("{path}.pem"),
                        )
                        .help("paste the key with its `-----BEGIN PUBLIC KEY-----` line (a YAML block: `pem: |`)"),
                    );
                    return None;
                }
                KeyMaterial::Pem(pem)
            }
            (None, Some(e), None) if hmac => {
                KeyMaterial::SecretEnv(self.string(e, &format!("{path}.secret_env"))?)
            }
            (None, None, Some(f)) if hmac => {
                let s = self.string(f, &format!("{path}.secret_file"))?;
                KeyMaterial::SecretFile(kz_config::model::resolve_path(&s, &f.node.pos.file, None))
            }
            _ if alg.is_none() => return None,
            _ => {
                let help = if hmac {
                    "an HMAC key is a shared secret: give exactly one of `secret_env` or `secret_file` (a public key never verifies an HS* token)"
                } else {
                    "give the issuer's public key as `pem` (exactly one)"
                };
                self.diags.push(
                    err(
                        "bundle::key_material",
                        format!(
                            "`{path}` has no usable key for `{}`",
                            alg.as_deref().unwrap_or_default()
                        ),
                        &n.pos,
                        path,
                    )
                    .help(help),
                );
                return None;
            }
        };
        Some(StaticKey {
            index,
            kid,
            alg: alg?,
            material,
            pos: n.pos.clone(),
        })
    }

    fn map(&mut self, e: &Entry, path: &str) -> Vec<(String, String)> {
        let p = format!("{path}.map");
        let Some(t) = self.table(e, &p) else {
            return Vec::new();
        };
        let mut out = Vec::new();
        for x in t {
            let xp = format!("{p}.{}", x.key);
            if !IDENTITY_FIELDS.contains(&x.key.as_str()) {
                self.diags.push(unknown_key(x, &xp, IDENTITY_FIELDS));
                continue;
            }
            let Some(claim) = self.string(x, &xp) else {
                continue;
            };
            if claim.is_empty() || claim.split('.').any(str::is_empty) {
                self.diags.push(
                    err(
                        "config::value",
                        format!("`{xp}` is not a claim path"),
                        &x.node.pos,
                        &xp,
                    )
                    .help(
                        "write a claim name, or a dotted path into nested claims (`claims.teams`)",
                    ),
                );
                continue;
            }
            out.push((x.key.clone(), claim));
        }
        out
    }

    fn backends(&mut self, e: Option<&Entry>) -> Vec<kz_config::ProviderInstance> {
        let Some(e) = e else {
            return Vec::new();
        };
        let Some(t) = self.table(e, "backends") else {
            return Vec::new();
        };
        let mut out = Vec::new();
        for b in t {
            let path = format!("backends.{}", b.key);
            if !valid_name(&b.key) {
                self.diags.push(
                    err(
                        "bundle::bad_name",
                        format!("`{path}` is not a valid name"),
                        &b.key_pos,
                        &path,
                    )
                    .help("use 1 to 128 letters, digits, `-`, `_`, `.`, `:` or `/`"),
                );
                continue;
            }
            let Some(opts) = self.table(b, &path) else {
                continue;
            };
            for o in opts {
                self.no_literal_credential(&o.node, &format!("{path}.{}", o.key));
            }
            let opts: Vec<(Entry, Role)> = opts.iter().map(|o| (o.clone(), Role::Bundle)).collect();
            if let Some(p) = check_provider(&b.key, &b.key_pos, &opts, "backends", &mut self.diags)
            {
                out.push(p);
            }
        }
        out
    }

    fn resolvers(
        &mut self,
        e: &Entry,
        older: bool,
        backends: &[kz_config::ProviderInstance],
    ) -> Vec<Resolver> {
        let list = if older { "resources" } else { "resolvers" };
        let mut out: Vec<Resolver> = Vec::new();
        for (path, n, t) in self.mappings(
            e,
            list,
            MAX_RESOLVERS,
            "use globs (`prod/**`) instead of one entry per name",
            "write each entry as `- name: …`",
        ) {
            if let Some(r) = self.resolver(t, &path, &n.pos, older, backends) {
                if let Some(first) = out.iter().find(|x| x.name == r.name) {
                    let first = first.pos.clone();
                    self.duplicate("resolver", &r.name, &r.pos, &first, &path);
                } else {
                    out.push(r);
                }
            }
        }
        out
    }

    fn resolver(
        &mut self,
        t: &[Entry],
        path: &str,
        at: &Pos,
        older: bool,
        backends: &[kz_config::ProviderInstance],
    ) -> Option<Resolver> {
        let name_key = if older { "ref" } else { "name" };
        let name_entry = self.required(t, name_key, path, at);
        let name = name_entry.and_then(|e| self.string(e, &format!("{path}.{name_key}")));
        let glob = match (&name, name_entry) {
            (Some(n), Some(e)) => match Glob::new(n) {
                Ok(g) => {
                    if g.is_literal()
                        && let Err(why) = validate_ref(n)
                    {
                        self.diags.push(
                            err(
                                "bundle::bad_ref",
                                format!("`{path}.{name_key}`: {why}"),
                                &e.node.pos,
                                path,
                            )
                            .help("callers could never request this name"),
                        );
                    }
                    Some(g)
                }
                Err(why) => {
                    self.diags.push(
                        err("bundle::bad_glob", format!("`{path}.{name_key}`: {why}"), &e.node.pos, path)
                            .help("`*` matches within a `/` segment, `**` across segments, `?` one character, `[ab]` a class"),
                    );
                    None
                }
            },
            _ => None,
        };
        let path = name
            .as_deref()
            .map_or(path.to_owned(), |n| format!("{path} ({n})"));
        let path = path.as_str();
        let get = |k: &str| t.iter().find(|e| e.key == k);
        let backend_entry = match (get("backend"), get("resolver")) {
            (Some(b), Some(_)) => {
                self.diags.push(
                    err(
                        "bundle::conflict",
                        format!("`{path}` sets both `backend` and `resolver`"),
                        &b.key_pos,
                        path,
                    )
                    .help("`resolver:` is the older spelling of `backend:`: keep one"),
                );
                None
            }
            (Some(b), None) | (None, Some(b)) => Some(b),
            (None, None) => {
                self.diags.push(
                    err(
                        "bundle::missing",
                        format!("`{path}` needs `backend`"),
                        at,
                        path,
                    )
                    .help("name one of the bundle's `backends:`"),
                );
                None
            }
        };
        let backend = backend_entry.and_then(|b| {
            let name = self.string(b, &format!("{path}.{}", b.key))?;
            match backends.iter().find(|x| x.name == name) {
                Some(x) => Some((name, x)),
                None => {
                    let mut d = err(
                        "bundle::dangling",
                        format!(
                            "`{path}` names backend `{name}`, which the bundle does not define"
                        ),
                        &b.node.pos,
                        path,
                    );
                    d = match kz_config::diag::did_you_mean(
                        &name,
                        backends.iter().map(|x| x.name.as_str()),
                    ) {
                        Some(m) => d.help(format!("did you mean `{m}`?")),
                        None => d.help("define it under `backends:`"),
                    };
                    self.diags.push(d);
                    None
                }
            }
        });
        let mode = match get("mode") {
            None => Some(Mode::Direct),
            Some(e) => match self.string(e, &format!("{path}.mode")).as_deref() {
                Some("direct") => Some(Mode::Direct),
                Some("short_lived") => Some(Mode::ShortLived),
                Some(other) => {
                    self.diags.push(
                        err(
                            "config::value",
                            format!("`{path}.mode`: unknown mode `{other}`"),
                            &e.node.pos,
                            path,
                        )
                        .help("use `direct` or `short_lived`"),
                    );
                    None
                }
                None => None,
            },
        };
        let cache_ttl =
            get("cache_ttl").and_then(|e| self.duration(e, &format!("{path}.cache_ttl")));
        let ttl = get("ttl").and_then(|e| {
            let d = self.duration(e, &format!("{path}.ttl"))?;
            if mode != Some(Mode::ShortLived) {
                self.diags.push(
                    err(
                        "bundle::conflict",
                        format!("`{path}.ttl` applies only to `mode: short_lived`"),
                        &e.key_pos,
                        path,
                    )
                    .help("remove `ttl`, or set `mode: short_lived`"),
                );
            }
            if d.is_zero() {
                self.diags.push(
                    err(
                        "config::value",
                        format!("`{path}.ttl` is zero"),
                        &e.node.pos,
                        path,
                    )
                    .help("give the token's lifetime in seconds"),
                );
            }
            Some(d)
        });
        let hosts = match get("hosts") {
            None => Vec::new(),
            Some(e) => {
                let mut out = Vec::new();
                for (h, pos) in self.strings(e, &format!("{path}.hosts")) {
                    match HostPattern::parse(&h) {
                        Ok(p) => out.push(p),
                        Err(why) => self.diags.push(
                            err(
                                "config::value",
                                format!("`{path}.hosts`: {why}"),
                                &pos,
                                path,
                            )
                            .help("write a host name, `*.domain`, or `http://host` for plain HTTP"),
                        ),
                    }
                }
                out
            }
        };
        let single_use = match get("single_use") {
            None => false,
            Some(e) => match &e.node.val {
                Val::Bool(b) => {
                    if *b && mode.as_ref().is_some_and(|m| *m != Mode::ShortLived) {
                        self.diags.push(
                            err(
                                "config::value",
                                format!("`{path}.single_use` applies only to `mode: short_lived`"),
                                &e.node.pos,
                                path,
                            )
                            .help("remove `single_use`, or set `mode: short_lived`"),
                        );
                    }
                    *b
                }
                _ => {
                    self.diags.push(
                        err(
                            "config::type",
                            format!("`{path}.single_use` must be true or false"),
                            &e.node.pos,
                            path,
                        )
                        .help("write `single_use: true`"),
                    );
                    false
                }
            },
        };
        let mut binding = kz_config::Binding::default();
        if let Some(e) = get("methods") {
            let p = format!("{path}.methods");
            let items = self.strings(e, &p);
            match kz_config::Methods::parse(items.iter().map(|(m, _)| m.as_str())) {
                Ok(m) if !m.is_any() => binding.methods = m,
                Ok(_) => self.diags.push(
                    err(
                        "config::value",
                        format!("`{p}` is empty: the resolver could never be used"),
                        &e.node.pos,
                        path,
                    )
                    .help("remove `methods` to allow any method, or list the allowed ones"),
                ),
                Err(why) => self.diags.push(
                    err("config::value", format!("`{p}`: {why}"), &e.node.pos, path)
                        .help("list HTTP methods, e.g. `methods: [GET, POST]`"),
                ),
            }
        }
        if let Some(e) = get("paths") {
            let p = format!("{path}.paths");
            let items = self.strings(e, &p);
            if items.is_empty() && matches!(&e.node.val, Val::Array(v) if v.is_empty()) {
                self.diags.push(
                    err(
                        "config::value",
                        format!("`{p}` is empty: the resolver could never be used"),
                        &e.node.pos,
                        path,
                    )
                    .help("remove `paths` to allow any path, or list the allowed ones"),
                );
            }
            for (s, pos) in items {
                match kz_config::PathPattern::parse(&s) {
                    Ok(pat) => binding.paths.push(pat),
                    Err(why) => self.diags.push(
                        err("config::value", format!("`{p}`: {why}"), &pos, path).help(
                            "a path pattern is a request path with `*` within a segment and `**` \
                             across segments, e.g. `/v1/charges` or `/repos/acme/**`",
                        ),
                    ),
                }
            }
        }
        let credential_location = get("credential_location").and_then(|e| {
            let p = format!("{path}.credential_location");
            let s = self.string(e, &p)?;
            let loc = parse_location(&s);
            if loc.is_none() {
                self.diags.push(
                    err("config::value", format!("`{p}`: `{s}` is not a location"), &e.node.pos, path)
                        .help("write `header:NAME:PREFIX` (e.g. `header:Authorization:Bearer`, `header:X-API-Key:`) or `query:NAME`"),
                );
            }
            loc
        });
        // Everything else is a backend parameter.
        let backend_type = backend.as_ref().map(|(_, b)| b.ty);
        let mut params = Vec::new();
        for x in t {
            let key = x.key.as_str();
            if RESOLVER_KEYS.contains(&key) || key == name_key {
                continue;
            }
            let declared = COMMON_PARAMS.contains(&key)
                || backend_type.is_some_and(|ty| ty.params.contains(&key));
            let known = declared || backend_type.is_some_and(|ty| ty.any_params);
            // A plugin (`exec`) takes any parameter: one named like a credential would be a
            // credential written in the bundle.
            if known && !declared && credential_name(key) {
                self.diags.push(
                    err(
                        "config::credential_in_project_file",
                        format!("`{path}.{key}` looks like a credential, which is refused in a bundle"),
                        &x.key_pos,
                        &format!("{path}.{key}"),
                    )
                    .help(format!("give the plugin the name of a variable or file that holds it (`{key}_env`, `{key}_file`)")),
                );
                continue;
            }
            if !self.no_literal_credential(&x.node, &format!("{path}.{key}")) {
                continue;
            }
            if !known {
                let mut allowed: Vec<&str> = RESOLVER_KEYS.to_vec();
                allowed.extend(COMMON_PARAMS);
                if let Some(ty) = backend_type {
                    allowed.extend(ty.params);
                }
                self.diags
                    .push(unknown_key(x, &format!("{path}.{key}"), &allowed));
                continue;
            }
            let value = match &x.node.val {
                Val::Str(s) => s.clone(),
                Val::Int(i) => i.to_string(),
                Val::Bool(b) => b.to_string(),
                Val::Float(f) => f.to_string(),
                _ => {
                    self.diags.push(type_error(
                        x,
                        &format!("{path}.{key}"),
                        "a string, number or boolean",
                    ));
                    continue;
                }
            };
            if let Some(bad) = bad_placeholder(&value) {
                self.diags.push(
                    err(
                        "bundle::placeholder",
                        format!("`{path}.{key}`: unknown placeholder `{bad}`"),
                        &x.node.pos,
                        path,
                    )
                    .help("`${ref}` (the requested name) is the only placeholder"),
                );
                continue;
            }
            params.push(Param {
                name: key.to_owned(),
                value,
                pos: x.node.pos.clone(),
            });
        }
        Some(Resolver {
            name: name?,
            glob: glob?,
            backend: backend?.0,
            mode: mode?,
            params,
            cache_ttl,
            ttl,
            hosts,
            binding,
            single_use,
            credential_location,
            pos: at.clone(),
        })
    }

    fn policies(&mut self, e: Option<&Entry>) -> Vec<PolicyEntry> {
        let Some(e) = e else {
            return Vec::new();
        };
        let mut out: Vec<PolicyEntry> = Vec::new();
        for (path, n, t) in self.mappings(
            e,
            "policies",
            MAX_POLICIES,
            "split the bundle",
            "write each policy as `- name: …`",
        ) {
            self.unknown(t, &path, POLICY_KEYS);
            let name = self
                .required(t, "name", &path, &n.pos)
                .and_then(|e| self.name(e, &format!("{path}.name")));
            let path = name
                .as_deref()
                .map_or(path.clone(), |n| format!("policies.{n}"));
            let rule_entry = self.required(t, "rule", &path, &n.pos);
            let rule = rule_entry.and_then(|e| self.string(e, &format!("{path}.rule")));
            let effect = self.required(t, "effect", &path, &n.pos).and_then(|e| {
                match self.string(e, &format!("{path}.effect")).as_deref() {
                    Some("allow") => Some(Effect::Allow),
                    Some("deny") => Some(Effect::Deny),
                    Some(other) => {
                        self.diags.push(
                            err(
                                "config::value",
                                format!("`{path}.effect`: `{other}` is not an effect"),
                                &e.node.pos,
                                &path,
                            )
                            .help("use `allow` or `deny`"),
                        );
                        None
                    }
                    None => None,
                }
            });
            if let Some(d) = t.iter().find(|e| e.key == "description") {
                self.string(d, &format!("{path}.description"));
            }
            let (Some(name), Some(rule), Some(effect), Some(re)) = (name, rule, effect, rule_entry)
            else {
                continue;
            };
            if let Some(first) = out.iter().find(|x| x.source.name == name) {
                let first = first.pos.clone();
                self.duplicate("policy", &name, &n.pos, &first, &path);
                continue;
            }
            out.push(PolicyEntry {
                source: PolicySource { name, rule, effect },
                pos: re.node.pos.clone(),
            });
        }
        out
    }

    /// Compiles the policies; every compile error at its rule's line.
    fn compile(&mut self, entries: &[PolicyEntry]) -> Option<PolicySet> {
        let sources: Vec<PolicySource> = entries.iter().map(|e| e.source.clone()).collect();
        match PolicySet::compile(&sources) {
            Ok(set) => Some(set),
            Err(errors) => {
                for e in errors {
                    let pos = entries.get(e.policy).map_or(&self.top, |p| &p.pos).clone();
                    self.diags.push(
                        err(
                            "bundle::policy",
                            format!("policy `{}`: {}", e.name, e.message),
                            &pos,
                            &format!("policies.{}.rule", e.name),
                        )
                        .help(e.help),
                    );
                }
                None
            }
        }
    }

    /// `mcp: { tools: [...] }`: which MCP tools are served. Without it, `fetch` and
    /// `list_resources`; `resolve` (which hands a value to the agent) only when listed.
    fn mcp(&mut self, e: Option<&Entry>) -> Mcp {
        let Some(e) = e else {
            return Mcp::default();
        };
        let Some(t) = self.table(e, "mcp") else {
            return Mcp::default();
        };
        self.unknown(t, "mcp", MCP_KEYS);
        let Some(tools) = t.iter().find(|x| x.key == "tools") else {
            return Mcp::default();
        };
        let mut out = Mcp {
            fetch: false,
            resolve: false,
        };
        for (name, pos) in self.strings(tools, "mcp.tools") {
            match name.as_str() {
                "fetch" => out.fetch = true,
                "resolve" => out.resolve = true,
                "list_resources" => {}
                other => self.diags.push(
                    err(
                        "config::value",
                        format!("`mcp.tools` names an unknown tool `{other}`"),
                        &pos,
                        "mcp",
                    )
                    .help(format!("the tools are {}", MCP_TOOLS.join(", "))),
                ),
            }
        }
        out
    }

    /// `replay: { redis_url, password_env }`: where `single_use` records live across replicas.
    fn replay(&mut self, e: Option<&Entry>) -> Option<ReplayStore> {
        let e = e?;
        let t = self.table(e, "replay")?;
        self.unknown(t, "replay", REPLAY_KEYS);
        let url_entry = self.required(t, "redis_url", "replay", &e.node.pos)?;
        let url = self.string(url_entry, "replay.redis_url")?;
        let pos = url_entry.node.pos.clone();
        let (scheme, rest) = url.split_once("://").unwrap_or(("", ""));
        let host = rest.split(['/', '?']).next().unwrap_or_default();
        let bad = if scheme == "rediss" {
            Some(
                "uses TLS (`rediss://`), which this release does not support; use `redis://` on a private network or a local TLS tunnel",
            )
        } else if scheme != "redis" {
            Some("is not a `redis://` URL")
        } else if host.contains('@') {
            Some("carries a user or password: a bundle never holds a credential")
        } else if host.is_empty() {
            Some("names no host")
        } else {
            None
        };
        if let Some(why) = bad {
            self.diags.push(
                err(
                    "config::value",
                    format!("`replay.redis_url` {why}"),
                    &pos,
                    "replay",
                )
                .help("write `redis://HOST:PORT/DB` and name a password with `password_env`"),
            );
            return None;
        }
        let password_env = t
            .iter()
            .find(|x| x.key == "password_env")
            .and_then(|x| self.string(x, "replay.password_env"));
        Some(ReplayStore {
            redis_url: url,
            password_env,
            pos,
        })
    }

    fn audit(&mut self, e: Option<&Entry>) -> Audit {
        let Some(e) = e else {
            return Audit::default();
        };
        let Some(t) = self.table(e, "audit") else {
            return Audit::default();
        };
        self.unknown(t, "audit", AUDIT_KEYS);
        let path = t
            .iter()
            .find(|x| x.key == "path")
            .and_then(|x| self.string(x, "audit.path"));
        let claims = t
            .iter()
            .find(|x| x.key == "claims")
            .map(|x| self.strings(x, "audit.claims"))
            .unwrap_or_default()
            .into_iter()
            .map(|(s, _)| s)
            .collect();
        Audit { path, claims }
    }
}

/// A parameter or query name that holds a credential when written with a value.
fn credential_name(name: &str) -> bool {
    let n = name.to_ascii_lowercase();
    let named_elsewhere = n.ends_with("_env") || n.ends_with("_file") || n.ends_with("_id");
    !named_elsewhere
        && [
            "token",
            "password",
            "passwd",
            "secret",
            "apikey",
            "api_key",
            "api-key",
            "private_key",
            "credential",
            "auth",
            "signature",
        ]
        .iter()
        .any(|w| n == *w || n.contains(w))
}

/// Why a literal string is a credential: a URL with userinfo or a credential-named query
/// parameter, or a secret key in a known format.
fn literal_credential(value: &str) -> Option<&'static str> {
    if value.contains("PRIVATE KEY-----") || value.contains("AGE-SECRET-KEY-") {
        return Some("holds a private key");
    }
    if let Some((_, rest)) = value.split_once("://") {
        let authority = rest.split(['/', '?', '#']).next().unwrap_or_default();
        if authority.contains('@') {
            return Some("is a URL with a user name or password (`user:pass@`)");
        }
    }
    let query = value.split_once('?').map(|(_, q)| q)?;
    query
        .split('&')
        .filter_map(|kv| kv.split_once('=').map(|(k, _)| k))
        .any(credential_name)
        .then_some("has a credential in its query string")
}

/// `header:NAME:PREFIX` or `query:NAME`.
fn parse_location(s: &str) -> Option<CredentialLocation> {
    let token = |n: &str| {
        !n.is_empty()
            && n.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
    };
    if let Some(rest) = s.strip_prefix("header:") {
        let (name, prefix) = rest.split_once(':').unwrap_or((rest, ""));
        if !token(name) || prefix.chars().any(char::is_control) {
            return None;
        }
        return Some(CredentialLocation::Header {
            name: name.to_owned(),
            prefix: prefix.trim().to_owned(),
        });
    }
    let name = s.strip_prefix("query:")?;
    token(name).then(|| CredentialLocation::Query {
        name: name.to_owned(),
    })
}

/// The first `${…}` in `value` other than `${ref}`.
fn bad_placeholder(value: &str) -> Option<String> {
    let mut rest = value;
    while let Some(i) = rest.find("${") {
        let tail = rest.get(i..).unwrap_or_default();
        let end = tail.find('}').map_or(tail.len(), |e| e + 1);
        let ph = tail.get(..end).unwrap_or(tail);
        if ph != "${ref}" {
            return Some(ph.to_owned());
        }
        rest = tail.get(end..).unwrap_or_default();
    }
    None
}
