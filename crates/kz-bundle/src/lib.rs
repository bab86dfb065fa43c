//! The team server's bundle: issuers, backends, resolvers, policies and audit settings in one
//! YAML file (`server.md`, "Bundle").
//!
//! The bundle is a second front-end of the positioned tree `kz-config` already has: the YAML is
//! parsed by [`kz_config::yaml::parse_yaml`] into the same [`kz_config::tree::Node`] tree as
//! `.keyzero.toml`, backends are checked by the same [`kz_config::schema::check_provider`]
//! (same catalog, names, aliases and options), and every problem is a
//! [`kz_config::Diagnostic`] with file, line and key, all reported at once ([`check`]).
//!
//! On top of the schema: policies are compiled once here ([`kz_policy::PolicySet`]); resolver
//! names are globs matched deterministically ([`Bundle::resolver_for`]: exact, then longest
//! literal prefix, then fewest wildcards, then first defined); requested names are validated
//! ([`validate_ref`]) and `${ref}` expands in backend parameters ([`Resolver::reference`]).
//!
//! Issuers are also checked by `kz-identity` at load (keys parse and fit their algorithm), and
//! [`Bundle::issuer_configs`] turns them into its configuration.
//!
//! Boundary: no network. The I/O is reading the bundle file ([`load`]) and, only in
//! [`Bundle::issuer_configs`] and [`Bundle::unavailable_secrets`], the HMAC secrets the bundle
//! names. A bundle never holds a credential: literal credentials in backends and HMAC secrets in
//! issuers are refused (they are named through `*_env`/`*_file` options instead).

#![forbid(unsafe_code)]
// Only the CLI prints (`kz-cli`); libraries return values, errors and notes.
#![deny(clippy::print_stdout, clippy::print_stderr)]

mod check;
mod identity;
mod matching;

use std::path::{Path, PathBuf};
use std::time::Duration;

use kz_config::{Diagnostic, HostPattern, Pos, ProviderInstance};
use kz_policy::{Glob, PolicySet};

pub use check::check;
pub use kz_identity::Profile;
pub use matching::{RefError, validate_ref};

/// Most issuers a bundle may declare.
pub const MAX_ISSUERS: usize = 1_000;
/// Most resolvers a bundle may declare.
pub const MAX_RESOLVERS: usize = 10_000;
/// Most policies a bundle may declare.
pub const MAX_POLICIES: usize = 20_000;

/// Where a static key's material comes from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum KeyMaterial {
    /// A public key in PEM (RSA, EC, Ed25519), written in the bundle.
    Pem(String),
    /// An HMAC secret read from this environment variable when the server loads the bundle.
    SecretEnv(String),
    /// An HMAC secret read from this file when the server loads the bundle.
    SecretFile(PathBuf),
}

/// One `static_keys` entry.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StaticKey {
    /// Its index in the issuer's `static_keys` list.
    pub index: usize,
    pub kid: Option<String>,
    /// The algorithm the key verifies (`RS256`, `ES256`, `EdDSA`, `HS256`, …): required, so a
    /// key is bound to one algorithm family.
    pub alg: String,
    pub material: KeyMaterial,
    pub pos: Pos,
}

/// Where an issuer's keys come from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum KeySource {
    Static(Vec<StaticKey>),
    JwksUrl(String),
    /// `issuer_url/.well-known/openid-configuration`.
    Discovery,
}

/// One `issuers` entry.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Issuer {
    pub name: String,
    pub profile: Profile,
    pub issuer_url: String,
    /// `None` only with `allow_any_audience: true`.
    pub audience: Option<String>,
    pub allow_any_audience: bool,
    pub keys: KeySource,
    /// Identity field → dotted claim path, in file order.
    pub map: Vec<(String, String)>,
    /// Clock leeway for `exp`/`nbf`/`iat` (default 60 s).
    pub leeway: Duration,
    pub max_token_lifetime: Option<Duration>,
    /// `jti` single use (a per-replica replay cache).
    pub single_use: bool,
    /// A discovery document's `jwks_uri` may point at another host or a private address.
    pub allow_private_jwks: bool,
    pub pos: Pos,
}

/// `mode:` of a resolver.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    Direct,
    ShortLived,
}

impl Mode {
    /// The name as written in a bundle (and seen by policies as `mode`).
    pub fn name(self) -> &'static str {
        match self {
            Mode::Direct => "direct",
            Mode::ShortLived => "short_lived",
        }
    }
}

/// Where a credential goes in a request (`credential_location`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CredentialLocation {
    /// `header:NAME:PREFIX` (`header:Authorization:Bearer` sends `Bearer VALUE`).
    Header { name: String, prefix: String },
    /// `query:NAME`.
    Query { name: String },
}

/// A backend parameter of a resolver, as written (`${ref}` not yet expanded).
#[derive(Clone, Debug, PartialEq)]
pub struct Param {
    pub name: String,
    pub value: String,
    pub pos: Pos,
}

/// One `resolvers` (or older `resources`) entry.
#[derive(Clone, Debug)]
pub struct Resolver {
    /// What callers request: an exact name or a glob.
    pub name: String,
    pub glob: Glob,
    /// The backend's name (a key of `backends`).
    pub backend: String,
    pub mode: Mode,
    pub params: Vec<Param>,
    pub cache_ttl: Option<Duration>,
    /// Lifetime of a `short_lived` token.
    pub ttl: Option<Duration>,
    pub hosts: Vec<HostPattern>,
    /// The methods and paths the credential may be used with (`methods`, `paths`), next to
    /// `hosts`: for `fetch`, the credential proxy and short-lived tokens.
    pub binding: kz_config::Binding,
    /// A short-lived token of this resolver is redeemed at most once (per proxy replica).
    pub single_use: bool,
    pub credential_location: Option<CredentialLocation>,
    pub pos: Pos,
}

impl Resolver {
    /// The backend reference for `requested`: the parameter that names the secret
    /// (`secret_id`, `path`, `ref`, `role_arn`) with `${ref}` expanded, or the requested name
    /// when none is given.
    pub fn reference(&self, requested: &str) -> String {
        self.params
            .iter()
            .find(|p| check::REFERENCE_PARAMS.contains(&p.name.as_str()))
            .map_or_else(|| requested.to_owned(), |p| expand(&p.value, requested))
    }

    /// What the backend is asked for `requested`: [`Resolver::reference`], the `field`
    /// parameter, and every other parameter, each with `${ref}` expanded.
    pub fn backend_request(&self, requested: &str) -> BackendRequest {
        let reference_param = self
            .params
            .iter()
            .position(|p| check::REFERENCE_PARAMS.contains(&p.name.as_str()));
        let mut field = None;
        let mut params = Vec::new();
        for (i, p) in self.params.iter().enumerate() {
            if Some(i) == reference_param {
                continue;
            }
            let value = expand(&p.value, requested);
            if p.name == "field" {
                field = Some(value);
            } else {
                params.push((p.name.clone(), value));
            }
        }
        BackendRequest {
            reference: self.reference(requested),
            field,
            params,
        }
    }

    /// Every parameter with `${ref}` expanded.
    pub fn expanded_params(&self, requested: &str) -> Vec<(String, String)> {
        self.params
            .iter()
            .map(|p| (p.name.clone(), expand(&p.value, requested)))
            .collect()
    }
}

/// What a resolver asks its backend for one requested name.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BackendRequest {
    /// The backend reference.
    pub reference: String,
    /// `field`, when set.
    pub field: Option<String>,
    /// The other backend parameters.
    pub params: Vec<(String, String)>,
}

/// `${ref}` → the requested name (the only placeholder; [`check`] refuses any other).
fn expand(value: &str, requested: &str) -> String {
    value.replace("${ref}", requested)
}

/// One policy with the place it is written.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PolicyEntry {
    pub source: kz_policy::PolicySource,
    pub pos: Pos,
}

/// `audit:` settings.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Audit {
    /// `None`: not set; `Some("-")`: standard output.
    pub path: Option<String>,
    /// Extra claims recorded per decision.
    pub claims: Vec<String>,
}

/// A checked bundle.
#[derive(Debug)]
pub struct Bundle {
    pub file: PathBuf,
    pub version: String,
    pub issuers: Vec<Issuer>,
    pub backends: Vec<ProviderInstance>,
    pub resolvers: Vec<Resolver>,
    pub policy_entries: Vec<PolicyEntry>,
    /// The policies, compiled once.
    pub policies: PolicySet,
    pub audit: Audit,
    /// A PEM file of extra roots for upstream TLS (private CAs) of the credential proxy and MCP
    /// `fetch`, as written (relative to the bundle's directory).
    pub upstream_ca: Option<PathBuf>,
    /// Where `single_use` records live across replicas (`replay:`); `None`: in each process.
    pub replay: Option<ReplayStore>,
    /// Which MCP tools are served (`mcp:`).
    pub mcp: Mcp,
}

/// `mcp: { tools: [...] }`: the MCP tools served besides `list_resources` (always served: it
/// names what the caller may use, never a value).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Mcp {
    /// `fetch`: calls an API with the credential, which the agent never sees (on by default).
    pub fetch: bool,
    /// `resolve`: hands the value to the agent (off unless listed).
    pub resolve: bool,
}

impl Default for Mcp {
    fn default() -> Self {
        Self {
            fetch: true,
            resolve: false,
        }
    }
}

/// `replay: { redis_url, password_env }`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReplayStore {
    /// `redis://HOST:PORT/DB` or `rediss://…`, without user or password.
    pub redis_url: String,
    /// The environment variable holding the password, if any.
    pub password_env: Option<String>,
    pub pos: Pos,
}

impl Bundle {
    /// The issuer whose `issuer_url` is `iss`.
    pub fn issuer_for(&self, iss: &str) -> Option<&Issuer> {
        self.issuers.iter().find(|i| i.issuer_url == iss)
    }

    /// The issuer called `name`.
    pub fn issuer(&self, name: &str) -> Option<&Issuer> {
        self.issuers.iter().find(|i| i.name == name)
    }

    /// The backend called `name`.
    pub fn backend(&self, name: &str) -> Option<&ProviderInstance> {
        self.backends.iter().find(|b| b.name == name)
    }

    /// The resolver serving `requested` (which [`validate_ref`] accepted): an exact name wins;
    /// otherwise the matching glob with the longest literal prefix, then the fewest wildcards,
    /// then the one defined first.
    pub fn resolver_for(&self, requested: &str) -> Option<&Resolver> {
        matching::best(&self.resolvers, requested)
    }

    /// Advice that does not stop the bundle from loading: with several issuers, a rule that
    /// compares identity fields but never names `issuer` (`org == "acme"` is as true for a
    /// GitLab group or a SPIFFE trust domain called `acme` as for the GitHub organisation).
    pub fn warnings(&self) -> Vec<Diagnostic> {
        if self.issuers.len() < 2 {
            return Vec::new();
        }
        self.policy_entries
            .iter()
            .enumerate()
            .filter(|(i, _)| {
                let names = self.policies.variables(*i);
                !names.contains(&"issuer")
                    && names.iter().any(|n| {
                        matches!(
                            *n,
                            "sub" | "org" | "service" | "env" | "action" | "branch" | "actor" | "groups"
                        )
                    })
            })
            .map(|(_, p)| {
                Diagnostic::warning(
                    "bundle::issuer_unbound",
                    format!(
                        "policy `{}` compares identity fields without naming the issuer",
                        p.source.name
                    ),
                )
                .at(&p.pos)
                .key(format!("policies.{}.rule", p.source.name))
                .help("with several issuers, start the rule with `issuer == \"NAME\" && …`: another issuer can fill the same field")
            })
            .collect()
    }

    /// Settings that each server replica keeps on its own (said by `kz server check`): a
    /// deployment of several replicas behind a load balancer does not share them.
    pub fn per_replica_settings(&self) -> Vec<String> {
        let mut out = vec![
            "the audit log: each replica writes its own hash chain (verify each replica's files on their own)".to_owned(),
            "--rate-limit: each replica counts on its own (with N replicas behind round robin, an identity gets up to N times the limit)".to_owned(),
        ];
        for i in self.issuers.iter().filter(|i| i.single_use) {
            out.push(format!(
                "issuers.{}.single_use: the jti replay cache is per replica; a token can be used once per replica (route a workload to one replica, or run one)",
                i.name
            ));
        }
        for r in self.resolvers.iter().filter(|r| r.single_use) {
            out.push(match &self.replay {
                Some(store) => format!(
                    "resolvers.{}.single_use: shared through replay.redis_url ({}): a token is redeemed once across the proxy replicas",
                    r.name, store.redis_url
                ),
                None => format!(
                    "resolvers.{}.single_use: each proxy replica keeps its own records (a token can be redeemed once per replica); set `replay: {{ redis_url }}` to share them",
                    r.name
                ),
            });
        }
        for r in &self.resolvers {
            if let Some(t) = r.cache_ttl {
                out.push(format!(
                    "resolvers.{}.cache_ttl ({}s): each replica caches values on its own",
                    r.name,
                    t.as_secs()
                ));
            }
        }
        if self
            .issuers
            .iter()
            .any(|i| !matches!(i.keys, KeySource::Static(_)))
        {
            out.push(
                "JWKS key sets and verified tokens are cached per replica (a rotated key reaches each replica on its next refresh)"
                    .into(),
            );
        }
        out
    }
}

/// Reads and checks the bundle at `path`.
pub fn load(path: &Path) -> Result<Bundle, Vec<Diagnostic>> {
    let text = read(path)?;
    check(path, &text)
}

/// Reads at most `limit` bytes of `path`: `Ok(None)` when the file is longer (a special file
/// such as `/dev/zero` included, whose size the metadata does not give).
pub fn read_limited(path: &Path, limit: usize) -> std::io::Result<Option<Vec<u8>>> {
    use std::io::Read as _;
    let mut out = Vec::new();
    std::fs::File::open(path)?
        .take(limit as u64 + 1)
        .read_to_end(&mut out)?;
    Ok((out.len() <= limit).then_some(out))
}

/// Reads the bundle text at `path` (at most [`kz_config::yaml::MAX_YAML_BYTES`], UTF-8), for a
/// caller that needs the bytes too (the server's revision hash); [`load`] is read + [`check`].
pub fn read(path: &Path) -> Result<String, Vec<Diagnostic>> {
    let start = Pos {
        file: path.to_path_buf(),
        line: 1,
        column: 1,
    };
    let limit = kz_config::yaml::MAX_YAML_BYTES;
    let bytes = match read_limited(path, limit) {
        Ok(Some(b)) => b,
        Ok(None) => {
            return Err(vec![
                Diagnostic::error(
                    "config::too_large",
                    format!("the bundle is over {limit} bytes"),
                )
                .at(&start)
                .help("split the bundle, or remove what it does not need"),
            ]);
        }
        Err(e) => {
            return Err(vec![
                Diagnostic::error(
                    "bundle::unreadable",
                    format!("cannot read the bundle {}: {e}", path.display()),
                )
                .help("check the path given to --bundle"),
            ]);
        }
    };
    String::from_utf8(bytes).map_err(|e| {
        vec![
            Diagnostic::error(
                "config::syntax",
                format!(
                    "the bundle is not UTF-8 (invalid byte at offset {})",
                    e.utf8_error().valid_up_to()
                ),
            )
            .at(&start)
            .help("save the file as UTF-8"),
        ]
    })
}
