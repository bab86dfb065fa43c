//! `kz run --blind`: the command gets masked tokens; kz stays its parent and runs the swapping
//! proxy ([`kz_blind::proxy`]) until it exits.
//!
//! Order: plan where each secret may go (refuse to start when one may go nowhere), collect where
//! the values and backend credentials come from (hidden under `--isolate`, named in one line
//! without it), make the run's CA and its private directory, open the audit log, start the proxy (on `127.0.0.1`, or on a
//! Unix socket in that directory for `--isolate`), build the child's clean environment, start
//! the child (directly, or through the namespace helper), forward signals, wait. On every way
//! out after the directory exists (child exit, a signal to kz, an error) the directory is removed
//! and the audit log flushed.

use std::collections::BTreeSet;
use std::ffi::OsString;
use std::path::PathBuf;
use std::process::Command;
use std::sync::Arc;
use std::sync::mpsc;

use kz_blind::ca::{CaDir, RunCa, upstream_client_config};
use kz_blind::policy::{Policy, SecretHosts};
use kz_blind::proxy::{Proxy, Settings, Summary};
use kz_blind::rewrite::{MAX_VALUE_LEN, MIN_SCRUB_LEN};
use kz_blind::secrets::{BlindSecret, SecretTable};
use kz_config::{Config, Diagnostic, HostPattern, SecretEntry};
use signal_hook::consts::signal::{SIGHUP, SIGINT, SIGQUIT, SIGTERM, SIGUSR1, SIGUSR2};
use signal_hook::low_level::siginfo::Cause;

use crate::cli::RunArgs;
use crate::commands::Vars;
use crate::commands::run::{CLEAN_ENV_KEEP, start_failed};
use crate::commands::supervise::{code_of, forward, install_signals};
use crate::context::Ctx;
use crate::isolate;
use crate::report::{CmdResult, Failure, exit};

/// Inside the isolated namespace the proxy is reached on this port (nothing else listens there).
pub const ISOLATED_PROXY_PORT: u16 = 3128;

/// Variables that point clients at the proxy.
const PROXY_VARS: &[&str] = &[
    "HTTP_PROXY",
    "HTTPS_PROXY",
    "http_proxy",
    "https_proxy",
    "ALL_PROXY",
    "all_proxy",
    "GLOBAL_AGENT_HTTP_PROXY",
    "npm_config_proxy",
    "npm_config_https_proxy",
];

/// Variables that name a CA bundle file (`kz doctor` reports those preset here).
pub const CA_FILE_VARS: &[&str] = &[
    "SSL_CERT_FILE",
    "REQUESTS_CA_BUNDLE",
    "CURL_CA_BUNDLE",
    "NODE_EXTRA_CA_CERTS",
    "GIT_SSL_CAINFO",
    "CARGO_HTTP_CAINFO",
    "AWS_CA_BUNDLE",
    "PIP_CERT",
    "DENO_CERT",
    "GRPC_DEFAULT_SSL_ROOTS_FILE_PATH",
    "CLOUDSDK_CORE_CUSTOM_CA_CERTS_FILE",
];

/// Runs the command in blind mode.
pub fn run(
    ctx: &Ctx,
    args: RunArgs,
    config: &Config,
    selected: &[&SecretEntry],
    vars: Vars,
) -> CmdResult {
    let isolate = args.isolate || config.blind.isolate;
    if isolate && !cfg!(target_os = "linux") {
        return Err(Failure::msg(
            "blind::isolate",
            "--isolate is Linux-only (it uses user and network namespaces)",
            "drop --isolate (and `[blind] isolate`) on this system",
        ));
    }
    let (table, policy) = plan(ctx, &args, config, selected, vars)?;
    // Where this run's values and backend credentials come from: hidden from the command under
    // --isolate, named at start without it (docs/blind.md, "Threat model").
    let sources = isolate::provider_sources(ctx, config, selected)?;
    let hide = if isolate {
        // `.keyzero.local.toml` may hold inline backend credentials (a Vault token).
        let mut extra = vec![config.discovered.local_path()];
        extra.extend(config.blind.hide.iter().cloned());
        Some(isolate::hidden_paths(&ctx.paths, &sources, &extra))
    } else {
        let root = rustix::process::geteuid().is_root();
        let in_env = isolate::values_in_environment(
            selected.iter().map(|s| s.ty),
            |n| std::env::var_os(n).is_some_and(|v| !v.is_empty()),
            std::env::vars_os().filter_map(|(k, _)| k.into_string().ok()),
        );
        if let Some(line) =
            isolate::exposure_line(&sources, in_env, root).filter(|_| cfg!(target_os = "linux"))
        {
            ctx.out.note(&line);
        }
        None
    };
    let ca = RunCa::new().map_err(|e| {
        Failure::msg(
            "blind::ca",
            format!("cannot create the run's CA: {e}"),
            "this is a bug; please report it",
        )
    })?;
    let upstream_tls =
        upstream_client_config(config.blind.upstream_ca.as_deref()).map_err(|e| {
            Failure::msg(
                "blind::upstream_ca",
                e.to_string(),
                "point `[blind] upstream_ca` at a readable PEM file of CA certificates",
            )
        })?;
    let dir = CaDir::create(&ca, args.no_force_proxy).map_err(|e| {
        Failure::msg(
            "blind::ca_dir",
            format!("cannot write the run's CA directory: {e}"),
            "check that TMPDIR is writable",
        )
    })?;
    // From here on the directory exists: every way out below removes it.
    let settings = Settings {
        table,
        policy,
        ca,
        upstream_tls,
        scrub_responses: config.blind.scrub_responses,
        audit: None,
    };
    let withheld = withheld_variables(config);
    let result = run_with_dir(ctx, args, &withheld, settings, &dir, hide.as_deref());
    if let Err(e) = dir.remove() {
        ctx.out
            .note(&format!("could not remove the run's CA directory: {e}"));
    }
    result
}

/// The per-secret table: tokens and where each secret may go.
fn plan(
    ctx: &Ctx,
    args: &RunArgs,
    config: &Config,
    selected: &[&SecretEntry],
    vars: Vars,
) -> Result<(SecretTable, Policy), Failure> {
    let mut cli_allow = Vec::new();
    for raw in &args.allow_host {
        cli_allow.push(HostPattern::parse(raw).map_err(|e| {
            Failure::usage(
                format!("--allow-host: {e}"),
                "write a host pattern: api.example.com, *.example.com, localhost:8443, or \
                 http://localhost:8080 to allow plain HTTP",
            )
        })?);
    }
    // Each variable's entry (several variables for `aws_sts` with `format = "env"`).
    let entry_of = |name: &str| {
        selected
            .iter()
            .find(|e| e.produces().iter().any(|p| p == name))
            .copied()
    };
    let hosts: Vec<&[HostPattern]> = vars
        .iter()
        .map(|(name, _)| entry_of(name).map_or(&[][..], |e| e.hosts.as_slice()))
        .collect();
    let inputs: Vec<SecretHosts<'_>> = vars
        .iter()
        .zip(&hosts)
        .map(|((name, _), hosts)| SecretHosts { name, hosts })
        .collect();
    let planned = Policy::plan(&inputs, &config.blind, &cli_allow).map_err(|e| {
        Failure::one(Diagnostic::error("blind::no_hosts", e.to_string()).help(
            "blind mode swaps a token only in requests to its secret's hosts; see docs/blind.md",
        ))
    })?;
    for w in &planned.warnings {
        ctx.out.note(w);
    }
    drop(inputs);
    // Scrubbing indexes every value (memory linear in their size): one bound per value.
    let too_large: Vec<Diagnostic> = vars
        .iter()
        .filter(|(_, value)| value.len() > MAX_VALUE_LEN)
        .map(|(name, value)| {
            Diagnostic::error(
                "blind::value_too_large",
                format!(
                    "the value of {name} is {} bytes; blind mode handles values up to {} bytes \
                     ({} MiB)",
                    value.len(),
                    MAX_VALUE_LEN,
                    MAX_VALUE_LEN >> 20
                ),
            )
            .at_opt(entry_of(name).map(|e| &e.pos))
            .help(
                "store a smaller credential (a key or token rather than a file or bundle), or run \
                 this command without --blind",
            )
        })
        .collect();
    if !too_large.is_empty() {
        return Err(Failure::many(too_large));
    }
    let mut secrets = Vec::with_capacity(vars.len());
    let mut short = Vec::new();
    for ((name, value), hosts) in vars.into_iter().zip(planned.hosts) {
        if value.len() < MIN_SCRUB_LEN {
            short.push(name.clone());
        }
        let swap = entry_of(&name).map(|e| e.swap).unwrap_or_default();
        let binding = entry_of(&name)
            .map(|e| e.binding.clone())
            .unwrap_or_default();
        secrets.push(
            BlindSecret::new(name, value, hosts)
                .with_swap(swap)
                .with_binding(binding),
        );
    }
    if !short.is_empty() && config.blind.scrub_responses {
        ctx.out.note(&format!(
            "{} shorter than {MIN_SCRUB_LEN} bytes: not scrubbed from responses (too short to \
             find without mangling other text)",
            short.join(", ")
        ));
    }
    Ok((SecretTable { secrets }, planned.policy))
}

#[allow(clippy::too_many_arguments)]
fn run_with_dir(
    ctx: &Ctx,
    args: RunArgs,
    withheld: &BTreeSet<String>,
    mut settings: Settings,
    dir: &CaDir,
    isolate: Option<&[PathBuf]>,
) -> CmdResult {
    let audit = match &args.audit {
        None => None,
        Some(path) => {
            Some(Arc::new(kz_audit::Writer::open(path).map_err(|e| {
                Failure::msg("blind::audit", e.to_string(), e.help())
            })?))
        }
    };
    settings.audit = audit.clone();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(std::thread::available_parallelism().map_or(2, |n| n.get().min(4)))
        .thread_name("kz-blind-proxy")
        .enable_all()
        .build()
        .map_err(|e| {
            Failure::msg(
                "blind::runtime",
                format!("cannot start the proxy: {e}"),
                "this is a bug; please report it",
            )
        })?;
    let no_proxy = settings.policy.no_proxy();
    let tokens: Vec<(String, String)> = settings
        .table
        .secrets
        .iter()
        .map(|s| (s.name.clone(), s.token.clone()))
        .collect();
    let bindings: Vec<String> = settings
        .table
        .secrets
        .iter()
        .map(|s| {
            let hosts: Vec<String> = s.hosts.iter().map(ToString::to_string).collect();
            let mut line = format!("{} -> {}", s.name, hosts.join(", "));
            if !s.binding.is_open() {
                line.push_str(&format!(
                    " ({}; {})",
                    s.binding.methods,
                    s.binding.paths_text()
                ));
            }
            line
        })
        .collect();
    let proxy = runtime.block_on(async { Proxy::new(settings) });
    let out = ctx.out;
    proxy.on_stop(move |name| {
        out.note(&format!(
            "warning: the command sent the real value of {name} (or part of it); blind mode \
             stopped: every request from now on is refused (see the audit log)"
        ));
    });
    let proxy_addr = if isolate.is_some() {
        let listener = runtime
            .block_on(async { tokio::net::UnixListener::bind(dir.socket_path()) })
            .map_err(|e| {
                Failure::msg(
                    "blind::listen",
                    format!("cannot listen on the proxy socket: {e}"),
                    "check that TMPDIR is writable",
                )
            })?;
        let p = proxy.clone();
        runtime.spawn(async move { p.serve_unix(listener).await });
        format!("127.0.0.1:{ISOLATED_PROXY_PORT}")
    } else {
        let listener = runtime
            .block_on(async { tokio::net::TcpListener::bind(("127.0.0.1", 0)).await })
            .map_err(|e| {
                Failure::msg(
                    "blind::listen",
                    format!("cannot listen on 127.0.0.1: {e}"),
                    "check the loopback interface",
                )
            })?;
        let addr = listener.local_addr().map_err(|e| {
            Failure::msg(
                "blind::listen",
                format!("cannot listen on 127.0.0.1: {e}"),
                "check the loopback interface",
            )
        })?;
        let p = proxy.clone();
        runtime.spawn(async move { p.serve_tcp(listener).await });
        addr.to_string()
    };
    // The URL the command gets carries the proxy's credential; it is never printed.
    ctx.out.verbose(&format!(
        "blind: proxy on http://{proxy_addr} (it needs the credential in the command's proxy URL)"
    ));
    let proxy_url = proxy.url_for(&proxy_addr);
    for b in &bindings {
        ctx.out.verbose(&format!("blind: {b}"));
    }
    let env = child_env(ctx, &args, withheld, &tokens, &proxy_url, &no_proxy, dir);
    let code = run_child(ctx, &args, env, dir, isolate);
    summarize(ctx, &proxy.summary());
    drop(proxy);
    runtime.shutdown_timeout(std::time::Duration::from_secs(1));
    if let Some(audit) = audit {
        let closed = match Arc::try_unwrap(audit) {
            Ok(w) => w.close(),
            Err(shared) => shared.flush(),
        };
        if let Err(e) = closed {
            ctx.out
                .diagnostic(&Diagnostic::error("blind::audit", e.to_string()).help(e.help()));
            return Ok(exit::ERROR);
        }
    }
    code
}

/// The variables a blind command never gets, even with `--keep-env`: the exact names every
/// configured instance's `*_env` options name (at any depth, `auth.secret_id_env` included), the
/// variable of a `token_source = "env:VAR"`, and
/// the variables `env` secrets are read from. The catalog's credential variables of every type
/// are matched by pattern in [`child_env`].
fn withheld_variables(config: &Config) -> BTreeSet<String> {
    fn walk(key: &str, node: &kz_config::tree::Node, out: &mut BTreeSet<String>) {
        use kz_config::tree::Val;
        match &node.val {
            Val::Str(s) if key.ends_with("_env") => {
                out.insert(s.clone());
            }
            // The `keyzero` provider's `token_source = "env:VAR"`.
            Val::Str(s) if key == "token_source" => {
                if let Some(var) = s.strip_prefix("env:") {
                    out.insert(var.trim().to_string());
                }
            }
            Val::Table(entries) => {
                for e in entries {
                    walk(&e.key, &e.node, out);
                }
            }
            _ => {}
        }
    }
    let mut out = BTreeSet::new();
    for inst in &config.providers {
        for (name, v) in &inst.options {
            walk(name, &v.node, &mut out);
        }
    }
    out.extend(
        config
            .secrets
            .iter()
            .filter(|e| e.ty.name == "env")
            .map(|e| e.reference.clone()),
    );
    out
}

/// The child's environment: clean, plus `--keep-env`, the tokens and the proxy/CA variables.
#[allow(clippy::too_many_arguments)]
fn child_env(
    ctx: &Ctx,
    args: &RunArgs,
    withheld: &BTreeSet<String>,
    tokens: &[(String, String)],
    proxy_url: &str,
    no_proxy: &str,
    dir: &CaDir,
) -> Vec<(OsString, OsString)> {
    // Credential variables of every provider type (not only the types this run used: a
    // `--keep-env VAULT_TOKEN` in a run of `env` secrets hands over the user's Vault token).
    let credential: BTreeSet<&'static str> = kz_config::catalog::TYPES
        .iter()
        .flat_map(|t| t.credential_env.iter().copied())
        .collect();
    let is_credential = |name: &str| {
        withheld.contains(name)
            || credential.iter().any(|pat| match pat.strip_suffix('*') {
                Some(prefix) => name.starts_with(prefix),
                None => name == *pat,
            })
    };
    let mut env: Vec<(OsString, OsString)> = Vec::new();
    let mut dropped = Vec::new();
    for name in CLEAN_ENV_KEEP
        .iter()
        .copied()
        .map(String::from)
        .chain(args.keep_env.iter().cloned())
    {
        if is_credential(&name) {
            dropped.push(name);
            continue;
        }
        if let Some(v) = std::env::var_os(&name) {
            env.push((name.into(), v));
        }
    }
    if !dropped.is_empty() {
        ctx.out.note(&format!(
            "not passing {} to the command: provider credentials and the variables secrets are read from are never given to a blind command",
            dropped.join(", ")
        ));
    }
    let bundle = dir.bundle().into_os_string();
    let mut set: Vec<(String, OsString)> = Vec::new();
    if !args.no_force_proxy {
        for v in PROXY_VARS {
            set.push(((*v).into(), proxy_url.into()));
        }
        set.push(("NO_PROXY".into(), no_proxy.into()));
        set.push(("no_proxy".into(), no_proxy.into()));
        set.push(("NODE_USE_ENV_PROXY".into(), "1".into()));
    }
    set.push(("KZ_PROXY_URL".into(), proxy_url.into()));
    for v in CA_FILE_VARS {
        set.push(((*v).into(), bundle.clone()));
    }
    set.push(("SSL_CERT_DIR".into(), dir.cert_dir().into_os_string()));
    set.push(("KZ_BLIND".into(), "1".into()));
    let overridden: Vec<&str> = args
        .keep_env
        .iter()
        .filter(|k| set.iter().any(|(n, _)| n == *k))
        .map(String::as_str)
        .collect();
    if !overridden.is_empty() {
        ctx.out.note(&format!(
            "--keep-env {}: blind mode sets these itself",
            overridden.join(", ")
        ));
    }
    env.retain(|(k, _)| {
        !set.iter().any(|(n, _)| k == n.as_str()) && !tokens.iter().any(|(n, _)| k == n.as_str())
    });
    env.extend(set.into_iter().map(|(k, v)| (OsString::from(k), v)));
    env.extend(
        tokens
            .iter()
            .map(|(k, t)| (OsString::from(k), OsString::from(t))),
    );
    env
}

enum Event {
    Signal(i32),
    Exited(std::process::ExitStatus),
    Failed(std::io::Error),
}

/// Starts the child (or the namespace helper), forwards signals, returns its exit code.
fn run_child(
    ctx: &Ctx,
    args: &RunArgs,
    env: Vec<(OsString, OsString)>,
    dir: &CaDir,
    isolate: Option<&[PathBuf]>,
) -> CmdResult {
    let Some(program) = args.command.first().cloned() else {
        return Err(Failure::usage(
            "no command given",
            "write the command after `--`: kz run --blind -- agent",
        ));
    };
    let mut cmd = if let Some(hide) = isolate {
        let spec = isolate::Spec {
            socket: dir.socket_path(),
            port: ISOLATED_PROXY_PORT,
            hide: hide.to_vec(),
            command: args.command.clone(),
            env,
        };
        isolate::command(&spec).map_err(|e| {
            Failure::msg(
                "blind::isolate",
                format!("cannot start the isolation helper: {e}"),
                "this is a bug; please report it",
            )
        })?
    } else {
        let mut c = Command::new(&program);
        c.args(args.command.iter().skip(1));
        c.env_clear();
        c.envs(env);
        c
    };
    let mut signals = install_signals(&[SIGINT, SIGTERM, SIGHUP, SIGQUIT, SIGUSR1, SIGUSR2])?;

    let mut child = match cmd.spawn() {
        Ok(c) => c,
        Err(e) => return Ok(start_failed(ctx, &program, &e)),
    };
    let pid = rustix::process::Pid::from_child(&child);
    let (tx, rx) = mpsc::channel::<Event>();
    let handle = signals.handle();
    let sig_tx = tx.clone();
    let sig_thread = std::thread::spawn(move || {
        for origin in signals.forever() {
            // A signal from the terminal already reached the child's process group.
            if matches!(origin.cause, Cause::Sent(_))
                && sig_tx.send(Event::Signal(origin.signal)).is_err()
            {
                break;
            }
        }
    });
    let waiter = std::thread::spawn(move || {
        let _ = tx.send(match child.wait() {
            Ok(s) => Event::Exited(s),
            Err(e) => Event::Failed(e),
        });
    });
    let code = loop {
        match rx.recv() {
            Ok(Event::Signal(sig)) => forward(pid, sig),
            Ok(Event::Exited(status)) => break code_of(status),
            Ok(Event::Failed(e)) => {
                ctx.out.note(&format!("lost track of the command: {e}"));
                break exit::ERROR;
            }
            Err(_) => break exit::ERROR,
        }
    };
    handle.close();
    let _ = sig_thread.join();
    let _ = waiter.join();
    Ok(code)
}

fn summarize(ctx: &Ctx, s: &Summary) {
    ctx.out.verbose(&format!(
        "blind: {} request(s), {} with secrets swapped in, {} refused, {} scrubbed, {} failed (502)",
        s.requests, s.swapped_requests, s.refused, s.scrubbed, s.failed
    ));
    for reason in &s.failures {
        ctx.out.verbose(&format!("blind: 502: {reason}"));
    }
    for (name, swaps, scrubs) in &s.per_secret {
        if *swaps > 0 || *scrubs > 0 {
            ctx.out.verbose(&format!(
                "blind: {name}: swapped {swaps}x, scrubbed {scrubs}x"
            ));
        }
    }
    if let Some(name) = &s.stopped_by {
        ctx.out.note(&format!(
            "warning: blind mode stopped: the command sent the real value of {name} (or part of \
             it); the requests after it were refused"
        ));
    }
    if s.audit_failures > 0 {
        ctx.out.note(&format!(
            "{} audit record(s) could not be written; those requests were refused",
            s.audit_failures
        ));
    }
}
