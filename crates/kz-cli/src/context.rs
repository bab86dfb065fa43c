//! What every command shares: kz's directories, the loaded configuration, trust, provider
//! instances and resolution (with a spinner on slow backends).

use std::collections::HashMap;
use std::future::Future;
use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use kz_config::{Config, Diagnostic, Discovered, LoadRequest, ProviderInstance, SecretEntry};
use kz_providers::BuildContext;
use kz_resolve::{Cached, ErrorKind, Instance, Outcome, Provider, ProviderError, Request, Session};

/// How a value was obtained (the session's answer), for `kz status`.
pub use kz_resolve::CacheUse;

use crate::cache;

use crate::cli::Global;
use crate::report::{Failure, Reporter};

/// kz's view of the machine: environment and directories.
#[derive(Debug, Clone)]
pub struct Paths {
    /// `$HOME`.
    pub home: Option<PathBuf>,
    /// `$XDG_CONFIG_HOME` or `~/.config`.
    pub config_home: PathBuf,
    /// `$XDG_DATA_HOME` or `~/.local/share`.
    pub data_home: PathBuf,
    /// `$XDG_CACHE_HOME` or `~/.cache`.
    pub cache_home: PathBuf,
    /// `$XDG_RUNTIME_DIR`.
    pub runtime_dir: Option<PathBuf>,
    /// The working directory.
    pub cwd: PathBuf,
}

impl Paths {
    /// Reads them from the environment.
    pub fn from_env() -> Self {
        let var = |k: &str| {
            std::env::var_os(k)
                .filter(|v| !v.is_empty())
                .map(PathBuf::from)
                .filter(|p| p.is_absolute())
        };
        let home = var("HOME");
        let base = home.clone().unwrap_or_else(|| PathBuf::from("/"));
        Self {
            config_home: var("XDG_CONFIG_HOME").unwrap_or_else(|| base.join(".config")),
            data_home: var("XDG_DATA_HOME").unwrap_or_else(|| base.join(".local/share")),
            cache_home: var("XDG_CACHE_HOME").unwrap_or_else(|| base.join(".cache")),
            runtime_dir: var("XDG_RUNTIME_DIR"),
            cwd: std::env::current_dir().unwrap_or(base),
            home,
        }
    }

    /// The global provider file.
    pub fn global_file(&self) -> PathBuf {
        self.config_home.join("keyzero").join("config.toml")
    }

    /// kz's state directory (`$XDG_DATA_HOME/keyzero`).
    pub fn state_dir(&self) -> PathBuf {
        self.data_home.join("keyzero")
    }

    /// Where trust records live.
    pub fn trust_dir(&self) -> PathBuf {
        self.state_dir().join("trust")
    }
}

/// The invocation: global flags, paths and the reporter.
#[derive(Debug)]
pub struct Ctx {
    /// Global flags.
    pub global: Global,
    /// Paths.
    pub paths: Paths,
    /// Where diagnostics go.
    pub out: Reporter,
}

fn getenv(k: &str) -> Option<String> {
    std::env::var(k).ok()
}

impl Ctx {
    /// Where discovery starts.
    pub fn start_dir(&self) -> PathBuf {
        match &self.global.dir {
            Some(d) if d.is_absolute() => d.clone(),
            Some(d) => self.paths.cwd.join(d),
            None => self.paths.cwd.clone(),
        }
    }

    /// `--config`, else `KEYZERO_CONFIG`.
    pub fn config_file(&self) -> Option<PathBuf> {
        self.global.config.clone().or_else(|| {
            std::env::var_os("KEYZERO_CONFIG")
                .filter(|v| !v.is_empty())
                .map(PathBuf::from)
        })
    }

    /// Loads the configuration; errors and warnings are printed, errors fail the command.
    pub fn load(&self) -> Result<Config, Failure> {
        let start = self.start_dir();
        let file = self.config_file();
        let global = self.paths.global_file();
        let loaded = kz_config::load(&LoadRequest {
            start_dir: &start,
            config_file: file.as_deref(),
            env_flag: self.global.env.as_deref(),
            global_file: Some(&global),
            getenv: &getenv,
        });
        match loaded.config {
            Some(c) => {
                self.out.all(&c.warnings);
                Ok(c)
            }
            None => Err(Failure::many(loaded.diagnostics)),
        }
    }

    /// The provider-building context.
    pub fn build_context(&self, project_dir: &Path) -> BuildContext {
        BuildContext {
            home: self.paths.home.clone(),
            config_home: self.paths.config_home.clone(),
            data_home: self.paths.data_home.clone(),
            runtime_dir: self.paths.runtime_dir.clone(),
            project_dir: project_dir.to_path_buf(),
            getenv: Arc::new(getenv),
            verbose: self.global.verbose > 0,
            interactive: std::io::stdin().is_terminal() && std::io::stderr().is_terminal(),
        }
    }

    /// Whether the operator trusts the project file for this invocation.
    pub fn trust_override(&self) -> bool {
        self.global.trust || std::env::var("KEYZERO_TRUST").is_ok_and(|v| v == "1")
    }

    /// Whether the project's files are trusted for this invocation (`kz allow` on their current
    /// content, or the operator's `--trust` / `KEYZERO_TRUST=1`).
    pub fn trusted(&self, config: &Config) -> bool {
        self.trust_override() || crate::trust::is_trusted(&self.paths, &config.discovered)
    }

    /// Refuses, before anything is contacted, what an untrusted project configuration may not
    /// do: program/server options of the given instances (from `.keyzero.toml` or
    /// `.keyzero.local.toml`), and for the given secrets, variables that load code, `local`
    /// refs of other projects and files outside the project tree.
    pub fn check_trust(
        &self,
        config: &Config,
        secrets: &[&SecretEntry],
        instances: &[&ProviderInstance],
    ) -> Result<(), Failure> {
        if self.trusted(config) {
            return Ok(());
        }
        let diags = self.trust_problems(config, secrets, instances);
        if diags.is_empty() {
            return Ok(());
        }
        Err(Failure::many(diags))
    }

    /// What [`Ctx::check_trust`] would refuse if the configuration were not trusted (also used
    /// by `kz doctor`).
    pub fn trust_problems(
        &self,
        config: &Config,
        secrets: &[&SecretEntry],
        instances: &[&ProviderInstance],
    ) -> Vec<Diagnostic> {
        let mut diags = Vec::new();
        for inst in instances {
            for (opt, pos) in inst.untrusted_options() {
                let file = pos
                    .file
                    .file_name()
                    .map_or_else(String::new, |n| n.to_string_lossy().into_owned());
                diags.push(
                    Diagnostic::error(
                        "trust::untrusted_option",
                        format!(
                            "the option `{opt}` of provider `{}` runs a program, names a server or chooses which credential, key, recipient or CA is used, and this {file} is not trusted",
                            inst.name
                        ),
                    )
                    .at(pos)
                    .key(format!("providers.{}.{opt}", inst.name))
                    .help("review the file, then run `kz allow` to trust it (or pass --trust / KEYZERO_TRUST=1 for one invocation)"),
                );
            }
        }
        // An instance used on its own (`kz import`, `kz put`): its type alone decides.
        for inst in instances {
            if crate::trust::needs_trust_type(inst.ty.name)
                && !secrets.iter().any(|s| s.provider == inst.name)
            {
                let mut d = Diagnostic::error(
                    "trust::ambient_credentials",
                    format!(
                        "provider `{}` ({}) uses your own credentials and stores, and this configuration is not trusted",
                        inst.name, inst.ty.name
                    ),
                )
                .help("review the files, then run `kz allow` to trust them (or pass --trust / KEYZERO_TRUST=1 for one invocation)");
                if let Some(pos) = &inst.pos {
                    d = d.at(pos);
                }
                diags.push(d);
            }
        }
        diags.extend(crate::trust::config_files_outside(&config.discovered));
        diags.extend(
            secrets
                .iter()
                .filter_map(|s| crate::trust::foreign_namespace_owner(&self.paths, config, s)),
        );
        diags.extend(crate::trust::untrusted_reach(
            config,
            secrets,
            self.paths.home.as_deref(),
        ));
        diags
    }

    /// Blind mode starts only on a trusted configuration: its `hosts` decide where values may
    /// go, so an edit (by an agent, say) revokes trust instead of widening its reach.
    pub fn require_trust_for_blind(&self, config: &Config) -> Result<(), Failure> {
        if self.trusted(config) {
            return Ok(());
        }
        let d = &config.discovered;
        let files: Vec<String> = [&d.project, &d.local]
            .into_iter()
            .flatten()
            .map(|p| format!("`{}`", p.display()))
            .collect();
        Err(Failure::one(
            Diagnostic::error(
                "trust::blind_untrusted",
                format!(
                    "blind mode does not start on an untrusted or changed configuration ({}): its `hosts` decide where secret values may be sent",
                    files.join(", ")
                ),
            )
            .in_file(&d.project_path())
            .help("review the files (above all every `hosts` and [blind] entry), then run `kz allow`; an operator can pass --trust or KEYZERO_TRUST=1 for one invocation"),
        ))
    }

    /// The instance a secret uses, built (for `put` and `rm --purge`), after the trust check.
    pub fn instance_for(
        &self,
        config: &Config,
        entry: &SecretEntry,
    ) -> Result<Arc<dyn Provider>, Failure> {
        if let Some(inst) = config.provider(&entry.provider) {
            self.check_trust(config, &[entry], &[inst])?;
        }
        self.instance(config, &entry.provider)
    }

    /// Builds the instances the given secrets use (after the trust check).
    pub fn instances(
        &self,
        config: &Config,
        secrets: &[&SecretEntry],
    ) -> Result<HashMap<String, Instance>, Failure> {
        let used = used_instances(config, secrets);
        self.check_trust(config, secrets, &used)?;
        let bctx = self.build_context(&config.discovered.dir);
        let (map, failed) = kz_providers::build_instances(used, &bctx);
        let mut diags = Vec::new();
        for (name, e) in &failed {
            // One build error stops every secret of the instance: said once.
            let stopped: Vec<&SecretEntry> = secrets
                .iter()
                .filter(|s| s.provider == *name)
                .copied()
                .collect();
            diags.extend(shared_diag(&stopped, e));
        }
        if diags.is_empty() {
            Ok(map)
        } else {
            Err(Failure::many(diags))
        }
    }

    /// One provider instance, built (for `put`, `rm --purge`, `import`).
    pub fn instance(&self, config: &Config, name: &str) -> Result<Arc<dyn Provider>, Failure> {
        let inst = config.provider(name).ok_or_else(|| {
            Failure::msg(
                "provider::unknown",
                format!("unknown provider `{name}`"),
                "declare it under [providers.NAME] or use a provider type",
            )
        })?;
        self.check_trust(config, &[], &[inst])?;
        kz_providers::build(inst, &self.build_context(&config.discovered.dir)).map_err(|e| {
            Failure::one(
                Diagnostic::error(
                    "provider::build",
                    format!("provider `{name}` ({}): {}", inst.ty.name, e.message),
                )
                .help(
                    e.help
                        .clone()
                        .unwrap_or_else(|| "check the provider's options".into()),
                ),
            )
        })
    }

    /// Resolves secrets on a single-threaded runtime, with a spinner after 300 ms on a terminal.
    pub fn resolve(
        &self,
        config: &Config,
        secrets: &[&SecretEntry],
    ) -> Result<Vec<Outcome>, Failure> {
        Ok(self
            .resolve_cached(config, secrets)?
            .into_iter()
            .map(|(o, _)| o)
            .collect())
    }

    /// Same, through the encrypted cache for providers that use one; says how each value was
    /// obtained. The session (`kz_resolve::session`) serves and stores the values; this adds
    /// the trust check, opening the disk cache, the spinner and the warnings.
    pub fn resolve_cached(
        &self,
        config: &Config,
        secrets: &[&SecretEntry],
    ) -> Result<Vec<(Outcome, CacheUse)>, Failure> {
        // Before the cache too: a cached value is no more reachable than a fetched one.
        self.check_trust(config, secrets, &used_instances(config, secrets))?;
        let plans: Vec<Option<Cached>> = secrets
            .iter()
            .map(|s| {
                let inst = config.provider(&s.provider)?;
                Some(Cached {
                    policy: cache::policy(config, inst)?,
                    key: cache::key(s, inst),
                })
            })
            .collect();
        let mut store = None;
        if plans.iter().any(Option::is_some) {
            match cache::store_keys(config, &self.build_context(&config.discovered.dir)) {
                Ok((id, rcpt)) => {
                    let (c, warning) =
                        cache::Cache::open(cache::path(&self.paths.cache_home), id, rcpt);
                    if let Some(w) = warning {
                        self.out.diagnostic(&w);
                    }
                    store = Some(c);
                }
                Err(w) => self.out.diagnostic(&w),
            }
        }
        let requests: Vec<Request> = secrets.iter().map(|s| Request::from_entry(s)).collect();
        // Fresh cached values are used without contacting (or building) their providers.
        let session = Session::new(&requests, &plans, store.as_mut());
        let pending = session.pending();
        let fetched = if pending.is_empty() {
            Vec::new()
        } else {
            let rest: Vec<&SecretEntry> = pending
                .iter()
                .filter_map(|i| secrets.get(*i).copied())
                .collect();
            let instances = self.instances(config, &rest)?;
            block_on_with_spinner(
                &self.out,
                "resolving secrets",
                kz_resolve::resolve_all(&session.pending_requests(), &instances),
            )?
        };
        let served = session.finish(fetched);
        for s in &served {
            if let (CacheUse::Fallback(age), Some(e)) = (s.cache, &s.unreachable) {
                self.out.diagnostic(
                    &Diagnostic::warning(
                        "cache::offline",
                        format!(
                            "{}: provider `{}` is unreachable ({}); using the cached value from {} ago",
                            s.outcome.name,
                            s.outcome.provider,
                            e.kind.label(),
                            cache::human_age(age)
                        ),
                    )
                    .secret(&s.outcome.name),
                );
            }
        }
        if let Some(c) = &store
            && let Err(w) = c.save()
        {
            self.out.diagnostic(&w);
        }
        Ok(served.into_iter().map(|s| (s.outcome, s.cache)).collect())
    }

    /// The secrets of `--only A,B` (all when empty); an unknown name is an error.
    pub fn select<'c>(
        &self,
        config: &'c Config,
        only: &[String],
    ) -> Result<Vec<&'c SecretEntry>, Failure> {
        if only.is_empty() {
            return Ok(config.secrets.iter().collect());
        }
        let mut out = Vec::new();
        let mut diags = Vec::new();
        for n in only {
            match config.secret(n) {
                Some(s) => out.push(s),
                None => diags.push(unknown_secret(config, n)),
            }
        }
        if diags.is_empty() {
            Ok(out)
        } else {
            Err(Failure::many(diags))
        }
    }
}

/// The provider instances the secrets use, each once.
fn used_instances<'c>(config: &'c Config, secrets: &[&SecretEntry]) -> Vec<&'c ProviderInstance> {
    let mut used: Vec<&ProviderInstance> = Vec::new();
    for s in secrets {
        if let Some(p) = config.provider(&s.provider)
            && !used.iter().any(|u| u.name == p.name)
        {
            used.push(p);
        }
    }
    used
}

/// `unknown secret X` with a "did you mean" and the environment.
pub fn unknown_secret(config: &Config, name: &str) -> Diagnostic {
    let d = Diagnostic::error(
        "secret::unknown",
        format!(
            "`{name}` is not mapped in the `{}` environment",
            config.environment
        ),
    )
    .secret(name);
    match kz_config::diag::did_you_mean(name, config.secrets.iter().map(|s| s.name.as_str())) {
        Some(s) => d.help(format!("did you mean `{s}`?")),
        None => d.help(format!("map it first with `kz add {name}`")),
    }
}

/// The diagnostic for a failed secret: secret, provider instance and type, ref, and the
/// backend's message (never a value).
pub fn provider_diag(s: &SecretEntry, e: &ProviderError) -> Diagnostic {
    let d = Diagnostic::error(
        "provider::resolve",
        format!(
            "{}: {} from provider `{}` ({}): {}",
            s.name,
            e.kind.label(),
            s.provider,
            s.ty.name,
            e.message
        ),
    )
    .at(&s.pos)
    .secret(&s.name)
    .reference(&s.reference);
    match &e.help {
        Some(h) => d.help(h.clone()),
        None => d,
    }
}

/// The diagnostics for failed secrets: one per failure, except that the same error about a
/// provider instance's own configuration (`Config`: the local store's key is missing, a bad
/// option) is reported once, naming every secret it stopped. Errors about an item (not found,
/// denied for that path, a bad field) stay one per secret, with its ref.
pub fn provider_diags(failures: &[(&SecretEntry, &ProviderError)]) -> Vec<Diagnostic> {
    let mut groups: Vec<(&ProviderError, Vec<&SecretEntry>)> = Vec::new();
    for (s, e) in failures {
        let shared = groups.iter_mut().find(|(ge, g)| {
            e.kind == ErrorKind::Config
                && g.first().is_some_and(|f| f.provider == s.provider)
                && ge.kind == e.kind
                && ge.message == e.message
                && ge.help == e.help
        });
        match shared {
            Some((_, entries)) => entries.push(s),
            None => groups.push((e, vec![s])),
        }
    }
    groups
        .into_iter()
        .filter_map(|(e, entries)| shared_diag(&entries, e))
        .collect()
}

/// One diagnostic for an error that stopped every secret in `entries` (all of one provider
/// instance): a single secret's is [`provider_diag`].
pub fn shared_diag(entries: &[&SecretEntry], e: &ProviderError) -> Option<Diagnostic> {
    let (first, rest) = entries.split_first()?;
    if rest.is_empty() {
        return Some(provider_diag(first, e));
    }
    let names = entries
        .iter()
        .map(|s| s.name.as_str())
        .collect::<Vec<_>>()
        .join(", ");
    let d = Diagnostic::error(
        "provider::resolve",
        format!(
            "{names}: {} from provider `{}` ({}): {}",
            e.kind.label(),
            first.provider,
            first.ty.name,
            e.message
        ),
    )
    .at(&first.pos)
    .secret(names);
    Some(match &e.help {
        Some(h) => d.help(h.clone()),
        None => d,
    })
}

/// Runs a future to completion on a current-thread runtime; shows a spinner on stderr when it
/// takes longer than 300 ms and stderr is a terminal.
pub fn block_on_with_spinner<T>(
    out: &Reporter,
    what: &str,
    fut: impl Future<Output = T>,
) -> Result<T, Failure> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| {
            Failure::msg(
                "internal::runtime",
                format!("cannot start the async runtime: {e}"),
                "this is a bug; please report it",
            )
        })?;
    let show = std::io::stderr().is_terminal() && !out.quiet;
    let what = what.to_string();
    Ok(rt.block_on(async move {
        let spinner = async {
            tokio::time::sleep(Duration::from_millis(300)).await;
            let pb = indicatif::ProgressBar::new_spinner();
            pb.set_message(what);
            pb.enable_steady_tick(Duration::from_millis(100));
            pb
        };
        tokio::pin!(fut);
        if !show {
            return fut.await;
        }
        tokio::select! {
            v = &mut fut => v,
            pb = spinner => {
                let v = fut.await;
                pb.finish_and_clear();
                v
            }
        }
    }))
}

/// The project's name (directory name), used for `local` refs.
pub fn project_name(d: &Discovered) -> String {
    kz_config::model::project_name(&d.dir)
}
