//! Loading: read the files, extract their parts, merge them (global → project → local, per
//! key), pick the environment, and check everything against the catalog. Every problem is
//! collected; the configuration loads only when there is no error.

use std::path::{Path, PathBuf};

use crate::catalog::{self, Kind, ProviderType};
use crate::diag::{Diagnostic, Pos, did_you_mean};
use crate::discover::{self, Discovered};
use crate::hosts::{HostPattern, parse_duration};
use crate::model::{
    BlindConfig, CacheConfig, Config, ConnRule, Egress, EnvSource, Offline, ProviderInstance, Role,
    SecretEntry, SwapIn, resolve_path,
};
use crate::reference;
use crate::schema::{bad_value, check_kind, check_provider, type_error, unknown_key};
use crate::tree::{Entry, Node, Val, parse_toml};

/// Top-level tables that are not environment sections.
const TOP_KEYS: &[&str] = &["providers", "resolvers", "secrets", "blind", "cache"];
const BLIND_KEYS: &[&str] = &[
    "allow",
    "egress",
    "connections",
    "isolate",
    "upstream_ca",
    "scrub_responses",
    "hide",
];
const CACHE_KEYS: &[&str] = &["max_age", "offline"];
/// Framework variables that pick an environment when kz's own are not set.
const FRAMEWORK_ENV_VARS: &[&str] = &["NODE_ENV", "RAILS_ENV", "APP_ENV", "RACK_ENV"];

/// What to load.
pub struct LoadRequest<'a> {
    /// Where discovery starts (`--dir`, else the working directory).
    pub start_dir: &'a Path,
    /// `--config FILE` or `KEYZERO_CONFIG`.
    pub config_file: Option<&'a Path>,
    /// `--env NAME`.
    pub env_flag: Option<&'a str>,
    /// The global provider file (`$XDG_CONFIG_HOME/keyzero/config.toml`).
    pub global_file: Option<&'a Path>,
    /// Reads kz's environment (injected so tests are hermetic).
    pub getenv: &'a dyn Fn(&str) -> Option<String>,
}

impl std::fmt::Debug for LoadRequest<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LoadRequest")
            .field("start_dir", &self.start_dir)
            .field("config_file", &self.config_file)
            .field("env_flag", &self.env_flag)
            .finish_non_exhaustive()
    }
}

/// The result of a load: the configuration when it is valid, and every diagnostic.
#[derive(Debug)]
pub struct Loaded {
    /// `Some` when no diagnostic is an error.
    pub config: Option<Config>,
    /// Errors and warnings, in file order.
    pub diagnostics: Vec<Diagnostic>,
    /// Where the files are (when discovery succeeded).
    pub discovered: Option<Discovered>,
    /// Secrets in the active environment (counted even when invalid).
    pub secrets_count: usize,
    /// Declared provider instances.
    pub providers_count: usize,
}

impl Loaded {
    /// The errors only.
    pub fn errors(&self) -> impl Iterator<Item = &Diagnostic> {
        self.diagnostics.iter().filter(|d| d.is_error())
    }
}

struct FileData {
    role: Role,
    root: Node,
}

#[derive(Debug)]
struct MProv {
    name: String,
    pos: Pos,
    options: Vec<(Entry, Role)>,
}

#[derive(Debug)]
struct MSecret {
    entry: Entry,
    role: Role,
}

#[derive(Debug)]
struct MSection {
    env: Option<String>,
    pos: Pos,
    secrets: Vec<MSecret>,
}

#[derive(Default)]
struct Merged {
    providers: Vec<MProv>,
    sections: Vec<MSection>,
    blind: Vec<(Entry, Role)>,
    cache: Vec<(Entry, Role)>,
}

/// Loads the configuration.
pub fn load(req: &LoadRequest<'_>) -> Loaded {
    let mut diags = Vec::new();
    let discovered = match discover::discover(req.start_dir, req.config_file) {
        Ok(d) => d,
        Err(e) => {
            return Loaded {
                config: None,
                diagnostics: vec![e],
                discovered: None,
                secrets_count: 0,
                providers_count: 0,
            };
        }
    };
    let mut sources = Vec::new();
    let mut candidates = vec![];
    if let Some(g) = req.global_file {
        candidates.push((Role::Global, g.to_path_buf()));
    }
    if let Some(p) = &discovered.project {
        candidates.push((Role::Project, p.clone()));
    }
    if let Some(l) = &discovered.local {
        candidates.push((Role::Local, l.clone()));
    }
    for (role, path) in candidates {
        match discover::read_owned(&path, &mut diags) {
            Ok(Some(text)) => sources.push(Source { role, path, text }),
            Ok(None) => {}
            Err(d) => diags.push(d),
        }
    }
    load_sources(discovered, &sources, req, diags)
}

/// One configuration file's text and role.
#[derive(Debug, Clone)]
pub struct Source {
    /// Which file it is.
    pub role: Role,
    /// Its path (for positions and relative paths).
    pub path: PathBuf,
    /// Its text.
    pub text: String,
}

/// Parses and checks configuration texts already read (no file I/O): what [`load`] does after
/// reading, and what the fuzz target drives.
pub fn load_sources(
    discovered: Discovered,
    sources: &[Source],
    req: &LoadRequest<'_>,
    mut diags: Vec<Diagnostic>,
) -> Loaded {
    let mut files = Vec::new();
    let mut global_file = None;
    for src in sources {
        match parse_toml(&src.path, &src.text) {
            Ok(root) => {
                if src.role == Role::Global {
                    global_file = Some(src.path.clone());
                }
                files.push(FileData {
                    role: src.role,
                    root,
                });
            }
            Err(d) => diags.push(d),
        }
    }
    let merged = merge(&files, &mut diags);
    let home = (req.getenv)("HOME").map(PathBuf::from);
    let providers = build_providers(&merged, &mut diags);
    let providers_count = providers.len();
    let env = select_env(req);
    let mut ctx = Ctx {
        providers,
        implicit: Vec::new(),
        diags,
    };
    let (secrets, environments) = build_sections(&merged, &env, &mut ctx);
    let secrets_count = secrets.len();
    let blind = build_blind(&merged, home.as_deref(), &mut ctx.diags);
    let cache = build_cache(&merged, &mut ctx.diags);
    check_collisions(&secrets, &mut ctx.diags);
    let Ctx {
        mut providers,
        implicit,
        diags,
    } = ctx;
    providers.extend(implicit);
    let mut diags = diags;
    // File order, so a user can fix them top to bottom (stable: same line keeps phase order).
    diags.sort_by(|a, b| (&a.file, a.line, a.column).cmp(&(&b.file, b.line, b.column)));
    let has_error = diags.iter().any(Diagnostic::is_error);
    let config = (!has_error).then(|| Config {
        discovered: discovered.clone(),
        global_file,
        environment: env.name.clone(),
        env_source: env.source.clone(),
        environments,
        providers,
        secrets,
        blind,
        cache,
        warnings: diags.clone(),
    });
    Loaded {
        config,
        diagnostics: diags,
        discovered: Some(discovered),
        secrets_count,
        providers_count,
    }
}

fn expect_table<'a>(e: &'a Entry, path: &str, diags: &mut Vec<Diagnostic>) -> Option<&'a [Entry]> {
    let t = e.node.as_table();
    if t.is_none() {
        diags.push(
            Diagnostic::error(
                "config::type",
                format!("`{path}` must be a table, found {}", e.node.val.type_name()),
            )
            .at(&e.key_pos)
            .key(path)
            .help(format!("write it as `[{path}]`")),
        );
    }
    t
}

fn merge(files: &[FileData], diags: &mut Vec<Diagnostic>) -> Merged {
    let mut m = Merged::default();
    for f in files {
        let Some(root) = f.root.as_table() else {
            continue;
        };
        for e in root {
            let k = e.key.as_str();
            if f.role == Role::Global && k != "providers" && k != "resolvers" {
                diags.push(
                    Diagnostic::error(
                        "config::global_scope",
                        format!("`{k}` is not allowed in the global file"),
                    )
                    .at(&e.key_pos)
                    .key(k)
                    .help("the global file only holds `[providers.NAME]` defaults; put secrets in a project's .keyzero.toml"),
                );
                continue;
            }
            match k {
                "providers" | "resolvers" => {
                    let Some(t) = expect_table(e, k, diags) else {
                        continue;
                    };
                    for p in t {
                        let path = format!("{k}.{}", p.key);
                        let Some(opts) = expect_table(p, &path, diags) else {
                            continue;
                        };
                        merge_provider(&mut m, p, opts, f.role);
                    }
                }
                "secrets" => {
                    if let Some(t) = expect_table(e, k, diags) {
                        merge_section(&mut m, None, &e.key_pos, t, f.role);
                    }
                }
                "blind" | "cache" => {
                    let Some(t) = expect_table(e, k, diags) else {
                        continue;
                    };
                    let target = if k == "blind" {
                        &mut m.blind
                    } else {
                        &mut m.cache
                    };
                    for x in t {
                        target.retain(|(y, _)| y.key != x.key);
                        target.push((x.clone(), f.role));
                    }
                }
                _ => match e.node.get("secrets") {
                    Some(s) if e.node.as_table().is_some() => {
                        for x in e.node.as_table().unwrap_or_default() {
                            if x.key != "secrets" {
                                let path = format!("{k}.{}", x.key);
                                diags.push(unknown_key(x, &path, &["secrets"]));
                            }
                        }
                        let path = format!("{k}.secrets");
                        if let Some(t) = expect_table(s, &path, diags) {
                            merge_section(&mut m, Some(k.to_string()), &e.key_pos, t, f.role);
                        }
                    }
                    _ => {
                        let mut d = unknown_key(e, k, TOP_KEYS);
                        if d.help.as_deref().is_some_and(|h| h.starts_with("the keys")) {
                            d = d.help(format!(
                                "the top-level tables are {}, or an environment section such as `[production.secrets]`",
                                TOP_KEYS.join(", ")
                            ));
                        }
                        diags.push(d);
                    }
                },
            }
        }
    }
    m
}

fn merge_provider(m: &mut Merged, p: &Entry, opts: &[Entry], role: Role) {
    let idx = match m.providers.iter().position(|x| x.name == p.key) {
        Some(i) => i,
        None => {
            m.providers.push(MProv {
                name: p.key.clone(),
                pos: p.key_pos.clone(),
                options: Vec::new(),
            });
            m.providers.len() - 1
        }
    };
    if let Some(mp) = m.providers.get_mut(idx) {
        for o in opts {
            mp.options.retain(|(x, _)| x.key != o.key);
            mp.options.push((o.clone(), role));
        }
    }
}

fn merge_section(m: &mut Merged, env: Option<String>, pos: &Pos, t: &[Entry], role: Role) {
    let idx = match m.sections.iter().position(|s| s.env == env) {
        Some(i) => i,
        None => {
            m.sections.push(MSection {
                env,
                pos: pos.clone(),
                secrets: Vec::new(),
            });
            m.sections.len() - 1
        }
    };
    if let Some(sec) = m.sections.get_mut(idx) {
        for e in t {
            match sec.secrets.iter_mut().find(|s| s.entry.key == e.key) {
                Some(s) => {
                    s.entry = e.clone();
                    s.role = role;
                }
                None => sec.secrets.push(MSecret {
                    entry: e.clone(),
                    role,
                }),
            }
        }
    }
}

fn build_providers(m: &Merged, diags: &mut Vec<Diagnostic>) -> Vec<ProviderInstance> {
    m.providers
        .iter()
        .filter_map(|p| check_provider(&p.name, &p.pos, &p.options, "providers", diags))
        .collect()
}

struct ActiveEnv {
    name: String,
    source: EnvSource,
}

fn select_env(req: &LoadRequest<'_>) -> ActiveEnv {
    let nonempty = |v: Option<String>| v.filter(|s| !s.is_empty());
    if let Some(e) = req.env_flag.filter(|s| !s.is_empty()) {
        return ActiveEnv {
            name: e.to_string(),
            source: EnvSource::Flag,
        };
    }
    if let Some(e) = nonempty((req.getenv)("KEYZERO_ENV")) {
        return ActiveEnv {
            name: e,
            source: EnvSource::KeyzeroEnv,
        };
    }
    for v in FRAMEWORK_ENV_VARS {
        if let Some(e) = nonempty((req.getenv)(v)) {
            return ActiveEnv {
                name: e,
                source: EnvSource::Framework(v),
            };
        }
    }
    ActiveEnv {
        name: "development".into(),
        source: EnvSource::Default,
    }
}

struct Ctx {
    providers: Vec<ProviderInstance>,
    implicit: Vec<ProviderInstance>,
    diags: Vec<Diagnostic>,
}

fn build_sections(m: &Merged, env: &ActiveEnv, ctx: &mut Ctx) -> (Vec<SecretEntry>, Vec<String>) {
    let environments: Vec<String> = m.sections.iter().filter_map(|s| s.env.clone()).collect();
    let default = m.sections.iter().find(|s| s.env.is_none());
    let development = m
        .sections
        .iter()
        .find(|s| s.env.as_deref() == Some("development"));
    if let (Some(_), Some(dev)) = (default, development) {
        ctx.diags.push(
            Diagnostic::error(
                "config::ambiguous_development",
                "both [secrets] and [development.secrets] exist",
            )
            .at(&dev.pos)
            .key("development.secrets")
            .help("[secrets] already serves the development environment: merge the two into one"),
        );
    }
    // Validate every section, so a typo in [production.secrets] is found in development too.
    let mut by_section = Vec::new();
    for s in &m.sections {
        let prefix = s
            .env
            .as_ref()
            .map_or_else(|| "secrets".to_string(), |e| format!("{e}.secrets"));
        let mut entries = Vec::new();
        for ms in &s.secrets {
            if let Some(e) = secret_entry(ms, &prefix, ctx) {
                entries.push(e);
            }
        }
        by_section.push((s.env.clone(), entries));
    }
    let take =
        |env: Option<&str>, v: &mut Vec<(Option<String>, Vec<SecretEntry>)>| -> Vec<SecretEntry> {
            v.iter_mut()
                .find(|(e, _)| e.as_deref() == env)
                .map(|(_, s)| std::mem::take(s))
                .unwrap_or_default()
        };
    let fallback = if default.is_some() {
        None
    } else {
        development.map(|_| "development")
    };
    let active = if m
        .sections
        .iter()
        .any(|s| s.env.as_deref() == Some(&env.name))
    {
        take(Some(&env.name), &mut by_section)
    } else if env.name == "development" || m.sections.is_empty() {
        take(fallback, &mut by_section)
    } else if env.source.is_explicit() {
        let available = if environments.is_empty() {
            "none (only [secrets])".to_string()
        } else {
            environments.join(", ")
        };
        ctx.diags.push(
            Diagnostic::error(
                "config::unknown_environment",
                format!("the environment `{}` has no [{}.secrets] section", env.name, env.name),
            )
            .help(format!(
                "available environments: {available}; add a [{}.secrets] section or pick another with --env",
                env.name
            )),
        );
        Vec::new()
    } else {
        let var = match env.source {
            EnvSource::Framework(v) => v,
            _ => "the environment",
        };
        ctx.diags.push(
            Diagnostic::warning(
                "config::environment_fallback",
                format!(
                    "{var}={} has no [{}.secrets] section; using [secrets]",
                    env.name, env.name
                ),
            )
            .help("set KEYZERO_ENV or --env to choose an environment explicitly"),
        );
        take(fallback, &mut by_section)
    };
    (active, environments)
}

fn secret_entry(ms: &MSecret, prefix: &str, ctx: &mut Ctx) -> Option<SecretEntry> {
    let e = &ms.entry;
    let name = &e.key;
    let path = format!("{prefix}.{name}");
    let mut ok = true;
    if !reference::is_env_name(name) {
        ctx.diags.push(
            Diagnostic::error(
                "config::secret_name",
                format!("`{name}` is not a valid environment variable name"),
            )
            .at(&e.key_pos)
            .key(&path)
            .secret(name)
            .help("use letters, digits and `_`, not starting with a digit (e.g. DATABASE_URL)"),
        );
        ok = false;
    }
    match &e.node.val {
        Val::Bool(false) => {
            if ms.role != Role::Local {
                ctx.diags.push(
                    Diagnostic::error(
                        "config::remove_outside_local",
                        format!("`{name} = false` only removes a secret in .keyzero.local.toml"),
                    )
                    .at(&e.key_pos)
                    .key(&path)
                    .secret(name)
                    .help("delete the line here instead, or move it to .keyzero.local.toml"),
                );
            }
            None
        }
        Val::Str(short) => {
            let (ty_name, r) = match reference::infer(short) {
                Ok(x) => x,
                Err(err) => {
                    let msg = match err {
                        reference::InferError::UnknownScheme(s) => {
                            format!("unknown reference scheme `{s}` in `{short}`")
                        }
                        reference::InferError::NoScheme => {
                            format!("cannot tell which provider `{short}` belongs to")
                        }
                    };
                    ctx.diags.push(
                        Diagnostic::error("config::reference_scheme", msg)
                            .at(&e.node.pos)
                            .key(&path)
                            .secret(name)
                            .reference(short)
                            .help(format!(
                                "use a known scheme ({}) or the long form {{ provider = \"…\", ref = \"…\" }}",
                                reference::known_schemes()
                            )),
                    );
                    return None;
                }
            };
            let ty = catalog::find(ty_name)?;
            let inst = instance_for_type(ty, e, &path, ctx)?;
            check_ref(ty, &r, e, &path, name, &mut ctx.diags).then_some(())?;
            ok.then(|| SecretEntry {
                name: name.clone(),
                provider: inst,
                ty,
                reference: r,
                field: None,
                allow_empty: false,
                optional: false,
                hosts: Vec::new(),
                binding: crate::binding::Binding::default(),
                swap: SwapIn::default(),
                description: None,
                params: Vec::new(),
                short_form: true,
                pos: e.key_pos.clone(),
                role: ms.role,
            })
        }
        Val::Table(t) => long_form(ms, t, &path, ctx).filter(|_| ok),
        other => {
            ctx.diags.push(
                Diagnostic::error(
                    "config::type",
                    format!(
                        "`{path}` must be a reference string or a table, found {}",
                        other.type_name()
                    ),
                )
                .at(&e.node.pos)
                .key(&path)
                .secret(name)
                .help(format!(
                    "write {name} = \"local://…\" or {name} = {{ provider = \"…\", ref = \"…\" }}"
                )),
            );
            None
        }
    }
}

fn long_form(ms: &MSecret, t: &[Entry], path: &str, ctx: &mut Ctx) -> Option<SecretEntry> {
    let name = &ms.entry.key;
    let get = |k: &str| t.iter().find(|x| x.key == k);
    let mut ok = true;
    let provider_entry = match (get("provider"), get("resolver")) {
        (Some(p), Some(r)) => {
            ctx.diags.push(
                Diagnostic::error(
                    "config::duplicate_key",
                    format!("`{path}` sets both `provider` and `resolver`"),
                )
                .at(&r.key_pos)
                .key(format!("{path}.resolver"))
                .secret(name)
                .help("`resolver` is the older spelling of `provider`: keep one"),
            );
            Some(p)
        }
        (p, r) => p.or(r),
    };
    let ref_entry = get("ref");
    for x in [provider_entry, ref_entry, get("field"), get("description")]
        .into_iter()
        .flatten()
    {
        if x.node.as_str().is_none() {
            ctx.diags
                .push(type_error(x, &format!("{path}.{}", x.key), "a string"));
            ok = false;
        }
    }
    let raw_ref = ref_entry.and_then(|x| x.node.as_str());
    // Which provider instance and type.
    let (inst_name, ty) = match provider_entry.and_then(|p| p.node.as_str()) {
        Some(p) => {
            let pe = provider_entry?;
            if let Some(inst) = ctx.providers.iter().find(|i| i.name == p) {
                (inst.name.clone(), inst.ty)
            } else if let Some(ty) = catalog::find(p) {
                (instance_for_type(ty, pe, path, ctx)?, ty)
            } else {
                let names: Vec<String> = ctx
                    .providers
                    .iter()
                    .map(|i| i.name.clone())
                    .chain(catalog::all_names().map(String::from))
                    .collect();
                let mut d = Diagnostic::error(
                    "config::unknown_provider",
                    format!("unknown provider `{p}` for secret `{name}`"),
                )
                .at(&pe.node.pos)
                .key(format!("{path}.{}", pe.key))
                .secret(name);
                d = match did_you_mean(p, names.iter().map(String::as_str)) {
                    Some(s) => d.help(format!("did you mean `{s}`?")),
                    None => d.help("declare it under [providers.NAME] or use a provider type (local, env, dotenv, age, exec, …)"),
                };
                ctx.diags.push(d);
                return None;
            }
        }
        None if provider_entry.is_some() => return None,
        None => {
            // No provider: infer from the ref's scheme, as the short form does.
            let r = raw_ref.unwrap_or_default();
            match reference::infer(r) {
                Ok((ty_name, _)) => {
                    let ty = catalog::find(ty_name)?;
                    (instance_for_type(ty, &ms.entry, path, ctx)?, ty)
                }
                Err(_) => {
                    ctx.diags.push(
                        Diagnostic::error("config::missing_provider", format!("secret `{name}` names no provider"))
                            .at(&ms.entry.key_pos)
                            .key(path)
                            .secret(name)
                            .help("add provider = \"local\" (or another provider), or a ref with a scheme such as local://…"),
                    );
                    return None;
                }
            }
        }
    };
    // Keys and parameters.
    let mut params = Vec::new();
    for x in t {
        if catalog::ENTRY_KEYS.contains(&x.key.as_str()) {
            continue;
        }
        let p = format!("{path}.{}", x.key);
        if ty.any_params || ty.params.contains(&x.key.as_str()) {
            match check_kind(x, &p, Kind::Scalar) {
                Ok(()) => params.push((x.key.clone(), x.node.clone())),
                Err(d) => {
                    ctx.diags.push(d);
                    ok = false;
                }
            }
            continue;
        }
        let known: Vec<&str> = catalog::ENTRY_KEYS
            .iter()
            .chain(ty.params)
            .copied()
            .collect();
        let mut d = Diagnostic::error(
            "config::unknown_key",
            format!("unknown key `{}` in secret `{name}`", x.key),
        )
        .at(&x.key_pos)
        .key(&p)
        .secret(name);
        d = match did_you_mean(&x.key, known.iter().copied()) {
            Some(s) => d.help(format!("did you mean `{s}`?")),
            None => d.help(format!(
                "keys of a `{}` secret: {}",
                ty.name,
                known.join(", ")
            )),
        };
        ctx.diags.push(d);
        ok = false;
    }
    let bool_key = |k: &str, diags: &mut Vec<Diagnostic>| -> Option<bool> {
        let x = get(k)?;
        match x.node.val {
            Val::Bool(b) => Some(b),
            _ => {
                diags.push(type_error(
                    x,
                    &format!("{path}.{k}"),
                    "a boolean (true or false)",
                ));
                None
            }
        }
    };
    let allow_empty = bool_key("allow_empty", &mut ctx.diags).unwrap_or(false);
    let optional = bool_key("optional", &mut ctx.diags).unwrap_or(false);
    let hosts = match get("hosts") {
        None => Vec::new(),
        Some(h) => {
            parse_hosts(h, &format!("{path}.hosts"), Some(name), &mut ctx.diags).unwrap_or_default()
        }
    };
    let binding = match parse_binding(get("methods"), get("paths"), path, name, &mut ctx.diags) {
        Some(b) => b,
        None => {
            ok = false;
            crate::binding::Binding::default()
        }
    };
    let swap = match get("swap") {
        None => SwapIn::default(),
        Some(x) => match parse_swap(x, &format!("{path}.swap"), name, &mut ctx.diags) {
            Some(s) => s,
            None => {
                ok = false;
                SwapIn::default()
            }
        },
    };
    // The reference.
    let reference = match raw_ref {
        Some(r) => match reference::strip_own_scheme(ty.name, r) {
            Ok(r) => r,
            Err(scheme) => {
                if let Some(re) = ref_entry {
                    ctx.diags.push(
                        Diagnostic::error(
                            "config::reference_scheme",
                            format!("the ref `{r}` uses `{scheme}`, which belongs to another provider type than `{}`", ty.name),
                        )
                        .at(&re.node.pos)
                        .key(format!("{path}.ref"))
                        .secret(name)
                        .reference(r)
                        .help(format!("drop the `{scheme}` prefix or change the provider")),
                    );
                }
                return None;
            }
        },
        None if ty.name == "aws_sts" && params.iter().any(|(k, _)| k == "role_arn") => {
            String::new()
        }
        None => {
            ctx.diags.push(
                Diagnostic::error(
                    "config::missing_ref",
                    format!("secret `{name}` has no `ref`"),
                )
                .at(&ms.entry.key_pos)
                .key(format!("{path}.ref"))
                .secret(name)
                .help(format!("add ref = \"{}\" ({})", ty.example, ty.ref_syntax)),
            );
            return None;
        }
    };
    if !(reference.is_empty() && ty.name == "aws_sts") {
        let at = ref_entry.unwrap_or(&ms.entry);
        if !check_ref(
            ty,
            &reference,
            at,
            &format!("{path}.ref"),
            name,
            &mut ctx.diags,
        ) {
            ok = false;
        }
    }
    if ty.name == "aws_sts"
        && let Some((_, n)) = params.iter().find(|(k, _)| k == "format")
        && !matches!(n.as_str(), Some("env" | "json"))
    {
        {
            {
                ctx.diags.push(
                    Diagnostic::error("config::value", format!("`{path}.format` must be \"env\" or \"json\""))
                        .at(&n.pos)
                        .key(format!("{path}.format"))
                        .secret(name)
                        .help("format = \"env\" sets AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY and AWS_SESSION_TOKEN"),
                );
                ok = false;
            }
        }
    }
    ok.then(|| SecretEntry {
        name: name.clone(),
        provider: inst_name,
        ty,
        reference,
        field: get("field").and_then(|x| x.node.as_str()).map(String::from),
        allow_empty,
        optional,
        hosts,
        binding,
        swap,
        description: get("description")
            .and_then(|x| x.node.as_str())
            .map(String::from),
        params,
        short_form: false,
        pos: ms.entry.key_pos.clone(),
        role: ms.role,
    })
}

fn check_ref(
    ty: &ProviderType,
    r: &str,
    at: &Entry,
    path: &str,
    name: &str,
    diags: &mut Vec<Diagnostic>,
) -> bool {
    match reference::validate(ty.name, r) {
        Ok(()) => true,
        Err(msg) => {
            diags.push(
                Diagnostic::error("config::reference", format!("secret `{name}`: {msg}"))
                    .at(&at.node.pos)
                    .key(path)
                    .secret(name)
                    .reference(r)
                    .help(format!(
                        "a `{}` reference looks like `{}` ({})",
                        ty.name, ty.example, ty.ref_syntax
                    )),
            );
            false
        }
    }
}

/// The instance a secret that names a type (or uses the short form) gets: the single declared
/// instance of that type; with none, the type's defaults; with several, an error.
fn instance_for_type(
    ty: &'static ProviderType,
    at: &Entry,
    path: &str,
    ctx: &mut Ctx,
) -> Option<String> {
    let declared: Vec<&ProviderInstance> = ctx
        .providers
        .iter()
        .filter(|p| p.ty.name == ty.name)
        .collect();
    match declared.as_slice() {
        [one] => Some(one.name.clone()),
        [] => {
            if !ctx.implicit.iter().any(|p| p.name == ty.name) {
                ctx.implicit.push(ProviderInstance::implicit(ty));
            }
            Some(ty.name.to_string())
        }
        many => {
            let names: Vec<&str> = many.iter().map(|p| p.name.as_str()).collect();
            ctx.diags.push(
                Diagnostic::error(
                    "config::ambiguous_provider",
                    format!(
                        "several `{}` providers are declared ({}): which one?",
                        ty.name,
                        names.join(", ")
                    ),
                )
                .at(&at.node.pos)
                .key(path)
                .secret(&at.key)
                .help(format!(
                    "use the long form with provider = \"{}\" (or another instance name)",
                    names.first().copied().unwrap_or_default()
                )),
            );
            None
        }
    }
}

/// `swap = ["headers", "query", "path", "body"]`: a non-empty list of known locations.
fn parse_swap(e: &Entry, path: &str, secret: &str, diags: &mut Vec<Diagnostic>) -> Option<SwapIn> {
    let help = "swap lists where the token is swapped: any of \"headers\", \"query\", \"path\", \
                \"body\" (the default is [\"headers\", \"query\"])";
    let Val::Array(items) = &e.node.val else {
        diags.push(
            type_error(e, path, "a list of locations")
                .secret(secret)
                .help(help),
        );
        return None;
    };
    if items.is_empty() {
        diags.push(
            Diagnostic::error(
                "config::swap",
                format!("`{path}` is empty: the token of `{secret}` would never be swapped"),
            )
            .at(&e.node.pos)
            .key(path)
            .secret(secret)
            .help(format!("{help}; remove `swap` to get the default")),
        );
        return None;
    }
    let mut out = SwapIn::NONE;
    let mut ok = true;
    for n in items {
        let word = n.as_str();
        if word.is_some_and(|w| out.add(w)) {
            continue;
        }
        let shown = match word {
            Some(w) => format!("`{w}` is not a location"),
            None => format!("expected a string, found {}", n.val.type_name()),
        };
        let mut d = Diagnostic::error("config::swap", format!("`{path}`: {shown}"))
            .at(&n.pos)
            .key(path)
            .secret(secret);
        d = match word.and_then(|w| did_you_mean(w, SwapIn::LOCATIONS.iter().copied())) {
            Some(s) => d.help(format!("did you mean \"{s}\"? ({help})")),
            None => d.help(help),
        };
        diags.push(d);
        ok = false;
    }
    ok.then_some(out)
}

/// A secret's `methods` and `paths` (blind mode's binding by method and path).
fn parse_binding(
    methods: Option<&Entry>,
    paths: Option<&Entry>,
    path: &str,
    secret: &str,
    diags: &mut Vec<Diagnostic>,
) -> Option<crate::binding::Binding> {
    let mut ok = true;
    let mut list = |e: &Entry, key: &str, want: &str| -> Vec<(String, Pos)> {
        let Val::Array(items) = &e.node.val else {
            diags.push(type_error(e, &format!("{path}.{key}"), want).secret(secret));
            ok = false;
            return Vec::new();
        };
        let mut out = Vec::new();
        for n in items {
            match n.as_str() {
                Some(s) => out.push((s.to_string(), n.pos.clone())),
                None => {
                    diags.push(
                        Diagnostic::error(
                            "config::binding",
                            format!(
                                "`{path}.{key}`: expected a string, found {}",
                                n.val.type_name()
                            ),
                        )
                        .at(&n.pos)
                        .key(format!("{path}.{key}"))
                        .secret(secret),
                    );
                    ok = false;
                }
            }
        }
        out
    };
    let method_items = methods
        .map(|e| list(e, "methods", "a list of HTTP methods"))
        .unwrap_or_default();
    let path_items = paths
        .map(|e| list(e, "paths", "a list of path patterns"))
        .unwrap_or_default();
    let mut binding = crate::binding::Binding::default();
    for (m, pos) in &method_items {
        if let Err(why) = crate::binding::Methods::parse([m.as_str()]) {
            diags.push(
                Diagnostic::error("config::binding", format!("`{path}.methods`: {why}"))
                    .at(pos)
                    .key(format!("{path}.methods"))
                    .secret(secret)
                    .help("methods lists HTTP methods, e.g. methods = [\"GET\", \"POST\"]"),
            );
            ok = false;
        }
    }
    if ok {
        binding.methods =
            crate::binding::Methods::parse(method_items.iter().map(|(m, _)| m.as_str())).ok()?;
    }
    for (p, pos) in &path_items {
        match crate::binding::PathPattern::parse(p) {
            Ok(pat) => binding.paths.push(pat),
            Err(why) => {
                diags.push(
                    Diagnostic::error("config::binding", format!("`{path}.paths`: {why}"))
                        .at(pos)
                        .key(format!("{path}.paths"))
                        .secret(secret)
                        .help(
                            "a path pattern is a request path with `*` within a segment and `**` \
                             across segments, e.g. paths = [\"/v1/charges\", \"/repos/acme/**\"]",
                        ),
                );
                ok = false;
            }
        }
    }
    for (e, key) in [(methods, "methods"), (paths, "paths")] {
        if let Some(e) = e
            && matches!(&e.node.val, Val::Array(items) if items.is_empty())
        {
            diags.push(
                Diagnostic::error(
                    "config::binding",
                    format!("`{path}.{key}` is empty: `{secret}` could never be used"),
                )
                .at(&e.node.pos)
                .key(format!("{path}.{key}"))
                .secret(secret)
                .help(format!(
                    "remove `{key}` to allow any, or list what is allowed"
                )),
            );
            ok = false;
        }
    }
    ok.then_some(binding)
}

fn parse_hosts(
    e: &Entry,
    path: &str,
    secret: Option<&str>,
    diags: &mut Vec<Diagnostic>,
) -> Option<Vec<HostPattern>> {
    let Val::Array(items) = &e.node.val else {
        diags.push(type_error(e, path, "a list of host patterns"));
        return None;
    };
    let mut out = Vec::new();
    let mut ok = true;
    for n in items {
        let parsed = n
            .as_str()
            .ok_or_else(|| format!("expected a string, found {}", n.val.type_name()))
            .and_then(HostPattern::parse);
        match parsed {
            Ok(p) => out.push(p),
            Err(msg) => {
                let mut d = Diagnostic::error("config::host_pattern", format!("`{path}`: {msg}"))
                    .at(&n.pos)
                    .key(path)
                    .help(
                        "a host pattern is `api.example.com`, `*.example.com`, `localhost:8443`, \
                         or `http://localhost:8080` to allow plain HTTP",
                    );
                if let Some(s) = secret {
                    d = d.secret(s);
                }
                diags.push(d);
                ok = false;
            }
        }
    }
    ok.then_some(out)
}

fn build_blind(m: &Merged, home: Option<&Path>, diags: &mut Vec<Diagnostic>) -> BlindConfig {
    let mut b = BlindConfig::default();
    for (e, _) in &m.blind {
        let path = format!("blind.{}", e.key);
        match e.key.as_str() {
            "allow" => b.allow = parse_hosts(e, &path, None, diags),
            "egress" => match e.node.as_str() {
                Some("open") => b.egress = Egress::Open,
                Some("allowlist") => b.egress = Egress::Allowlist,
                _ => diags.push(
                    bad_value(e, &path, "must be \"open\" or \"allowlist\"").help(
                        "egress = \"allowlist\" lets token-free requests reach only allowed hosts",
                    ),
                ),
            },
            "isolate" | "scrub_responses" => match e.node.val {
                Val::Bool(v) if e.key == "isolate" => b.isolate = v,
                Val::Bool(v) => b.scrub_responses = v,
                _ => diags.push(type_error(e, &path, "a boolean (true or false)")),
            },
            "upstream_ca" => match e.node.as_str() {
                Some(p) => b.upstream_ca = Some(resolve_path(p, &e.node.pos.file, home)),
                None => diags.push(type_error(e, &path, "a path string")),
            },
            "connections" => b.connections = parse_connections(e, &path, diags),
            "hide" => b.hide = parse_hide(e, &path, home, diags),
            _ => diags.push(unknown_key(e, &path, BLIND_KEYS)),
        }
    }
    b
}

/// `[blind] hide`: a list of paths, `~` expanded, relative ones against the file's directory.
fn parse_hide(
    e: &Entry,
    path: &str,
    home: Option<&Path>,
    diags: &mut Vec<Diagnostic>,
) -> Vec<PathBuf> {
    let Val::Array(items) = &e.node.val else {
        diags.push(type_error(e, path, "a list of paths"));
        return Vec::new();
    };
    let mut out = Vec::new();
    for (i, n) in items.iter().enumerate() {
        let p = format!("{path}[{i}]");
        let bad = |msg: String, help: &str| {
            Diagnostic::error("config::value", format!("`{p}`: {msg}"))
                .at(&n.pos)
                .key(&p)
                .help(help)
        };
        let Some(s) = n.as_str() else {
            diags.push(bad(
                format!("expected a path string, found {}", n.val.type_name()),
                "write hide = [\"~/.ssh\", \"/etc/app/credentials\"]",
            ));
            continue;
        };
        if s.is_empty() || s.contains('\0') {
            diags.push(bad(
                "a path must be non-empty and hold no NUL character".into(),
                "write the path of a file or directory the command must not read",
            ));
            continue;
        }
        if s == "~" || s.starts_with("~/") {
            let Some(home) = home else {
                diags.push(bad(
                    format!("`{s}` starts with `~` but HOME is not set"),
                    "set HOME or write an absolute path",
                ));
                continue;
            };
            out.push(home.join(s.trim_start_matches('~').trim_start_matches('/')));
            continue;
        }
        if s.starts_with('~') {
            diags.push(bad(
                format!("`{s}`: only `~` and `~/…` (your own home) are expanded"),
                "write the absolute path of the other user's file",
            ));
            continue;
        }
        let resolved = resolve_path(s, &n.pos.file, home);
        if resolved.parent().is_none() {
            diags.push(bad(
                "hiding `/` would hide the command itself".into(),
                "name the directories or files that hold credentials",
            ));
            continue;
        }
        out.push(resolved);
    }
    out
}

fn parse_connections(e: &Entry, path: &str, diags: &mut Vec<Diagnostic>) -> Vec<ConnRule> {
    let Val::Array(items) = &e.node.val else {
        diags.push(type_error(
            e,
            path,
            "a list of { allow = bool, host = \"…\" } or { allow = bool, regex = \"…\" } rules",
        ));
        return Vec::new();
    };
    let mut rules = Vec::new();
    for (i, n) in items.iter().enumerate() {
        let p = format!("{path}[{i}]");
        let Some(t) = n.as_table() else {
            diags.push(
                Diagnostic::error("config::type", format!("`{p}` must be a table"))
                    .at(&n.pos)
                    .key(&p)
                    .help("write { allow = true, host = \"api.example.com\" }"),
            );
            continue;
        };
        let mut allow = None;
        let mut target = None;
        for x in t {
            let xp = format!("{p}.{}", x.key);
            match (x.key.as_str(), &x.node.val) {
                ("allow", Val::Bool(v)) => allow = Some(*v),
                ("host" | "regex", Val::Str(s)) if target.is_none() => {
                    target = Some((x.key.as_str(), s.as_str(), x))
                }
                ("host" | "regex", Val::Str(_)) => diags.push(
                    Diagnostic::error(
                        "config::value",
                        format!("`{p}` has both `host` and `regex`"),
                    )
                    .at(&x.key_pos)
                    .key(&xp)
                    .help("a rule matches either a host pattern or a regex: split it in two"),
                ),
                ("allow", _) => diags.push(type_error(x, &xp, "a boolean")),
                ("host" | "regex", _) => diags.push(type_error(x, &xp, "a string")),
                _ => diags.push(unknown_key(x, &xp, &["allow", "host", "regex"])),
            }
        }
        let (Some(allow), Some((kind, s, x))) = (allow, target) else {
            diags.push(
                Diagnostic::error(
                    "config::value",
                    format!("`{p}` needs `allow` and one of `host` or `regex`"),
                )
                .at(&n.pos)
                .key(&p)
                .help("write { allow = true, host = \"api.example.com\" }"),
            );
            continue;
        };
        if kind == "host" {
            match HostPattern::parse(s) {
                Ok(pattern) => rules.push(ConnRule::Host { allow, pattern }),
                Err(msg) => diags.push(bad_value(x, &format!("{p}.host"), &msg).help(
                    "a host pattern is `api.example.com`, `*.example.com` or `localhost:8443`",
                )),
            }
        } else {
            match regex::Regex::new(s) {
                Ok(regex) => {
                    if !s.starts_with('^') || !s.ends_with('$') {
                        diags.push(
                            Diagnostic::warning("config::unanchored_regex", format!("`{p}.regex` `{s}` is not anchored"))
                                .at(&x.node.pos)
                                .key(format!("{p}.regex"))
                                .help("an unanchored regex matches anywhere in the host (`api\\.example\\.com` also matches `api.example.com.evil.net`): write ^…$"),
                        );
                    }
                    rules.push(ConnRule::Regex { allow, regex });
                }
                Err(err) => diags.push(
                    bad_value(x, &format!("{p}.regex"), &format!("invalid regex: {err}"))
                        .help("fix the regular expression"),
                ),
            }
        }
    }
    rules
}

fn build_cache(m: &Merged, diags: &mut Vec<Diagnostic>) -> CacheConfig {
    let mut c = CacheConfig::default();
    for (e, _) in &m.cache {
        let path = format!("cache.{}", e.key);
        match e.key.as_str() {
            "max_age" => match check_kind(e, &path, Kind::Duration) {
                Ok(()) => {
                    c.max_age = match &e.node.val {
                        Val::Str(s) => parse_duration(s).ok(),
                        Val::Int(i) => u64::try_from(*i).ok().map(std::time::Duration::from_secs),
                        Val::Float(f) => Some(std::time::Duration::from_secs_f64(*f)),
                        _ => None,
                    }
                }
                Err(d) => diags.push(d),
            },
            "offline" => match e.node.as_str() {
                Some("never") => c.offline = Offline::Never,
                Some("fallback") => c.offline = Offline::Fallback,
                _ => diags.push(
                    bad_value(e, &path, "must be \"fallback\" or \"never\"").help(
                        "offline = \"fallback\" uses a cached value when a provider is unreachable",
                    ),
                ),
            },
            _ => diags.push(unknown_key(e, &path, CACHE_KEYS)),
        }
    }
    c
}

fn check_collisions(secrets: &[SecretEntry], diags: &mut Vec<Diagnostic>) {
    let mut seen: Vec<(String, &SecretEntry)> = Vec::new();
    for s in secrets {
        for var in s.produces() {
            if let Some((_, other)) = seen.iter().find(|(v, _)| *v == var) {
                diags.push(
                    Diagnostic::error(
                        "config::variable_collision",
                        format!(
                            "`{}` and `{}` both set the variable `{var}`",
                            other.name, s.name
                        ),
                    )
                    .at(&s.pos)
                    .secret(&s.name)
                    .help("rename one of them, or give the aws_sts entry a `prefix`"),
                );
            } else {
                seen.push((var, s));
            }
        }
    }
}
