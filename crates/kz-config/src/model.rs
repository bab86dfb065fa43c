//! The loaded configuration: what the rest of kz works with.

use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::catalog::ProviderType;
use crate::diag::{Diagnostic, Pos};
use crate::discover::Discovered;
use crate::hosts::{HostPattern, parse_duration};
use crate::tree::{Node, Val};

/// Which file a setting came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Role {
    /// `$XDG_CONFIG_HOME/keyzero/config.toml` (providers only; always trusted).
    Global,
    /// `.keyzero.toml` (committed; trusted only after `kz allow` for some options).
    Project,
    /// `.keyzero.local.toml` (personal, but it sits in the project directory where a
    /// repository can commit one: trusted only together with `.keyzero.toml`).
    Local,
    /// Not written anywhere: a default.
    Default,
    /// A team server's bundle (usually kept in a policy repository): trusted, since the operator
    /// chose it, but literal credentials are refused as in `.keyzero.toml`.
    Bundle,
}

impl Role {
    /// `.keyzero.toml` or `.keyzero.local.toml`: files in the project directory, which whoever
    /// controls the repository can write, and which only `kz allow` trusts.
    pub fn is_project_level(self) -> bool {
        matches!(self, Role::Project | Role::Local)
    }

    /// Files that are committed: a credential written literally in them is refused.
    pub fn refuses_credentials(self) -> bool {
        matches!(self, Role::Project | Role::Bundle)
    }
}

/// How the active environment was chosen.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EnvSource {
    /// `--env NAME`.
    Flag,
    /// `KEYZERO_ENV`.
    KeyzeroEnv,
    /// `NODE_ENV`, `RAILS_ENV`, `APP_ENV` or `RACK_ENV` (the variable's name).
    Framework(&'static str),
    /// None given: `development`.
    Default,
}

impl EnvSource {
    /// Whether the environment was named explicitly (`--env`, `KEYZERO_ENV`).
    pub fn is_explicit(&self) -> bool {
        matches!(self, EnvSource::Flag | EnvSource::KeyzeroEnv)
    }
}

/// One option of a provider instance, with where it was set.
#[derive(Debug, Clone, PartialEq)]
pub struct OptionValue {
    /// The value.
    pub node: Node,
    /// The file it came from.
    pub role: Role,
}

/// A configured (or implicit) provider instance.
#[derive(Debug, Clone)]
pub struct ProviderInstance {
    /// Instance name (`[providers.NAME]`, or the type name for an implicit instance).
    pub name: String,
    /// The implementation.
    pub ty: &'static ProviderType,
    /// Options other than `type`, in order.
    pub options: Vec<(String, OptionValue)>,
    /// Declared in a file (`false`: a type used with its defaults).
    pub declared: bool,
    /// Where it was declared.
    pub pos: Option<Pos>,
}

impl ProviderInstance {
    /// An implicit instance of `ty` with default options.
    pub fn implicit(ty: &'static ProviderType) -> Self {
        Self {
            name: ty.name.to_string(),
            ty,
            options: Vec::new(),
            declared: false,
            pos: None,
        }
    }

    /// The option called `name`.
    pub fn option(&self, name: &str) -> Option<&OptionValue> {
        self.options.iter().find(|(n, _)| n == name).map(|(_, v)| v)
    }

    /// A string option.
    pub fn opt_str(&self, name: &str) -> Option<&str> {
        self.option(name)?.node.as_str()
    }

    /// A string-or-list option as a list.
    pub fn opt_list(&self, name: &str) -> Vec<String> {
        match self.option(name).map(|o| &o.node.val) {
            Some(Val::Str(s)) => vec![s.clone()],
            Some(Val::Array(a)) => a
                .iter()
                .filter_map(|n| n.as_str().map(String::from))
                .collect(),
            _ => Vec::new(),
        }
    }

    /// A path option, relative to the directory of the file that set it; `~/` is expanded.
    pub fn opt_path(&self, name: &str, home: Option<&Path>) -> Option<PathBuf> {
        let o = self.option(name)?;
        Some(resolve_path(o.node.as_str()?, &o.node.pos.file, home))
    }

    /// A duration option (validated at load).
    pub fn opt_duration(&self, name: &str) -> Option<Duration> {
        let o = self.option(name)?;
        match &o.node.val {
            Val::Str(s) => parse_duration(s).ok(),
            Val::Int(i) => u64::try_from(*i).ok().map(Duration::from_secs),
            Val::Float(f) if *f >= 0.0 && f.is_finite() => Some(Duration::from_secs_f64(*f)),
            _ => None,
        }
    }

    /// An integer option (validated at load).
    pub fn opt_int(&self, name: &str) -> Option<i64> {
        match self.option(name)?.node.val {
            Val::Int(i) => Some(i),
            _ => None,
        }
    }

    /// Per-call timeout (default 10 s).
    pub fn timeout(&self) -> Duration {
        self.opt_duration("timeout")
            .unwrap_or(Duration::from_secs(10))
    }

    /// Parallel calls to this instance (default 8).
    pub fn concurrency(&self) -> usize {
        self.opt_int("concurrency")
            .and_then(|i| usize::try_from(i).ok())
            .filter(|n| *n > 0)
            .unwrap_or(8)
    }

    /// Options that need trust and came from a project-level file (`.keyzero.toml` or
    /// `.keyzero.local.toml`: a repository can commit either; only the global file is trusted).
    pub fn untrusted_options(&self) -> Vec<(&str, &Pos)> {
        self.options
            .iter()
            .filter(|(n, v)| {
                v.role.is_project_level() && self.ty.option(n).is_some_and(|s| s.needs_trust)
            })
            .map(|(n, v)| (n.as_str(), &v.node.pos))
            .collect()
    }
}

/// Resolves `p` relative to the directory of `file`, expanding a leading `~/`.
pub fn resolve_path(p: &str, file: &Path, home: Option<&Path>) -> PathBuf {
    if let (Some(rest), Some(home)) = (p.strip_prefix("~/"), home) {
        return home.join(rest);
    }
    let p = Path::new(p);
    if p.is_absolute() {
        p.to_path_buf()
    } else {
        file.parent().unwrap_or(Path::new(".")).join(p)
    }
}

/// One secret mapping of the active environment.
#[derive(Debug, Clone)]
pub struct SecretEntry {
    /// The variable name.
    pub name: String,
    /// The provider instance name.
    pub provider: String,
    /// The instance's type.
    pub ty: &'static ProviderType,
    /// The reference as the provider sees it (kz's own scheme stripped).
    pub reference: String,
    /// One field of a JSON / key-value secret.
    pub field: Option<String>,
    /// An empty value is accepted.
    pub allow_empty: bool,
    /// A missing secret is skipped with a warning.
    pub optional: bool,
    /// Blind mode: where this secret may be sent.
    pub hosts: Vec<HostPattern>,
    /// Blind mode: the methods and paths it may be used with (`methods`, `paths`).
    pub binding: crate::binding::Binding,
    /// Blind mode: where in a request its token is swapped (`swap`).
    pub swap: SwapIn,
    /// Shown by `kz list` / `kz status`.
    pub description: Option<String>,
    /// Provider parameters.
    pub params: Vec<(String, Node)>,
    /// Written in the short string form.
    pub short_form: bool,
    /// Where it is written.
    pub pos: Pos,
    /// Which file it came from.
    pub role: Role,
}

impl SecretEntry {
    /// A parameter as a string (strings as written, numbers and booleans as text).
    pub fn param(&self, name: &str) -> Option<String> {
        let (_, n) = self.params.iter().find(|(k, _)| k == name)?;
        match &n.val {
            Val::Str(s) => Some(s.clone()),
            Val::Int(i) => Some(i.to_string()),
            Val::Float(f) => Some(f.to_string()),
            Val::Bool(b) => Some(b.to_string()),
            _ => None,
        }
    }

    /// The variable names this entry sets (several for `aws_sts` with `format = "env"`).
    pub fn produces(&self) -> Vec<String> {
        if self.ty.name == "aws_sts" && self.param("format").as_deref() == Some("env") {
            let prefix = self.param("prefix").unwrap_or_default();
            [
                "AWS_ACCESS_KEY_ID",
                "AWS_SECRET_ACCESS_KEY",
                "AWS_SESSION_TOKEN",
            ]
            .iter()
            .map(|n| format!("{prefix}{n}"))
            .collect()
        } else {
            vec![self.name.clone()]
        }
    }
}

/// Where in a request blind mode swaps a secret's token for its value (the entry's `swap`).
/// A token anywhere else is left as it is (still refused toward a host the secret is not bound
/// to).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SwapIn {
    /// Header values, including inside `Authorization: Basic` credentials.
    pub headers: bool,
    /// The query string of the request target.
    pub query: bool,
    /// The path of the request target.
    pub path: bool,
    /// The request body.
    pub body: bool,
}

impl SwapIn {
    /// The words `swap` accepts, in order.
    pub const LOCATIONS: [&'static str; 4] = ["headers", "query", "path", "body"];

    /// Nowhere (the start of a `swap` list).
    pub const NONE: Self = Self {
        headers: false,
        query: false,
        path: false,
        body: false,
    };

    /// Adds a location by its word; `false` for an unknown word.
    pub fn add(&mut self, word: &str) -> bool {
        match word {
            "headers" => self.headers = true,
            "query" => self.query = true,
            "path" => self.path = true,
            "body" => self.body = true,
            _ => return false,
        }
        true
    }

    /// The locations, as `swap` words.
    pub fn words(&self) -> Vec<&'static str> {
        let on = [self.headers, self.query, self.path, self.body];
        Self::LOCATIONS
            .iter()
            .zip(on)
            .filter_map(|(w, on)| on.then_some(*w))
            .collect()
    }
}

/// Headers and query string: where credentials go.
impl Default for SwapIn {
    fn default() -> Self {
        Self {
            headers: true,
            query: true,
            path: false,
            body: false,
        }
    }
}

/// `egress` in `[blind]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Egress {
    /// Token-free requests may go anywhere public.
    Open,
    /// Only to allowed hosts.
    Allowlist,
}

/// One `[blind] connections` rule.
#[derive(Debug, Clone)]
pub enum ConnRule {
    /// `{ allow = bool, host = "…" }`.
    Host {
        /// Allow or deny.
        allow: bool,
        /// The pattern.
        pattern: HostPattern,
    },
    /// `{ allow = bool, regex = "…" }`.
    Regex {
        /// Allow or deny.
        allow: bool,
        /// The compiled regex (matched against the lowercased host without port).
        regex: regex::Regex,
    },
}

/// `[blind]`.
#[derive(Debug, Clone)]
pub struct BlindConfig {
    /// Hosts every secret without its own `hosts` may be sent to.
    pub allow: Option<Vec<HostPattern>>,
    /// Token-free egress policy.
    pub egress: Egress,
    /// Published rule form.
    pub connections: Vec<ConnRule>,
    /// Network sandbox.
    pub isolate: bool,
    /// Extra upstream roots.
    pub upstream_ca: Option<PathBuf>,
    /// Re-mask values in responses.
    pub scrub_responses: bool,
    /// More paths `--isolate` hides from the command (`~` expanded, relative to the file).
    pub hide: Vec<PathBuf>,
}

impl Default for BlindConfig {
    fn default() -> Self {
        Self {
            allow: None,
            egress: Egress::Open,
            connections: Vec::new(),
            isolate: false,
            upstream_ca: None,
            scrub_responses: true,
            hide: Vec::new(),
        }
    }
}

/// `offline` in `[cache]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Offline {
    /// Never use a cached value when a provider is unreachable.
    Never,
    /// Use it, with a warning naming its age.
    Fallback,
}

/// `[cache]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CacheConfig {
    /// Reuse values fetched within this age.
    pub max_age: Option<Duration>,
    /// Offline fallback.
    pub offline: Offline,
}

impl Default for CacheConfig {
    fn default() -> Self {
        Self {
            max_age: None,
            offline: Offline::Never,
        }
    }
}

/// The loaded, merged, validated configuration for the active environment.
#[derive(Debug, Clone)]
pub struct Config {
    /// Where the files are.
    pub discovered: Discovered,
    /// The global provider file, when it was read.
    pub global_file: Option<PathBuf>,
    /// The active environment's name.
    pub environment: String,
    /// How it was chosen.
    pub env_source: EnvSource,
    /// The environments that have a section.
    pub environments: Vec<String>,
    /// Provider instances (declared, plus implicit ones that secrets use).
    pub providers: Vec<ProviderInstance>,
    /// The active environment's secrets, in file order.
    pub secrets: Vec<SecretEntry>,
    /// `[blind]`.
    pub blind: BlindConfig,
    /// `[cache]`.
    pub cache: CacheConfig,
    /// Warnings and notes (never errors: a config with errors does not load).
    pub warnings: Vec<Diagnostic>,
}

impl Config {
    /// The provider instance called `name`.
    pub fn provider(&self, name: &str) -> Option<&ProviderInstance> {
        self.providers.iter().find(|p| p.name == name)
    }

    /// The secret called `name`.
    pub fn secret(&self, name: &str) -> Option<&SecretEntry> {
        self.secrets.iter().find(|s| s.name == name)
    }

    /// The project name: the project directory's name (used for `local` refs).
    pub fn project_name(&self) -> String {
        project_name(&self.discovered.dir)
    }
}

/// A project's name from its directory (`myapp` for `/home/me/src/myapp`).
pub fn project_name(dir: &Path) -> String {
    dir.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .filter(|n| !n.is_empty())
        .unwrap_or_else(|| "project".into())
}
