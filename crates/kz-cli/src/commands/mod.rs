//! One module per command. Each `run` returns the exit code or a [`crate::report::Failure`].

pub mod add;
pub mod blind;
pub mod completions;
pub mod doctor;
pub mod export;
pub mod hook;
pub mod import;
pub mod init;
pub mod list;
pub mod put;
pub mod rm;
pub mod run;
pub mod server;
pub mod status;
pub mod supervise;
pub mod team;
pub mod team_identity;
pub mod trust;
pub mod validate;

use std::io::Write;

use kz_config::{Config, Diagnostic};
use kz_resolve::{ErrorKind, Outcome};
use kz_secret::{Resolved, SecretValue};

use crate::context::{Ctx, provider_diags};
use crate::report::Failure;

/// Resolved variables, in config order: `(NAME, value)`.
pub type Vars = Vec<(String, SecretValue)>;

/// Turns outcomes into variables, or every failure as one diagnostic each. Skipped optional
/// secrets are reported as warnings.
pub fn collect(ctx: &Ctx, config: &Config, outcomes: Vec<Outcome>) -> Result<Vars, Failure> {
    let mut vars = Vars::new();
    let mut failed = Vec::new();
    for o in outcomes {
        let Some(entry) = config.secret(&o.name) else {
            continue;
        };
        match o.result {
            Ok(Resolved::Single(v)) => vars.push((o.name, v)),
            Ok(Resolved::Multi(m)) => vars.extend(m),
            Err(e) if o.skipped => ctx.out.diagnostic(
                &Diagnostic::warning(
                    "secret::skipped",
                    format!(
                        "skipping optional secret {} ({}: {})",
                        o.name,
                        e.kind.label(),
                        e.message
                    ),
                )
                .secret(&o.name),
            ),
            Err(e) => failed.push((entry, e)),
        }
    }
    if !failed.is_empty() {
        let refs: Vec<_> = failed.iter().map(|(s, e)| (*s, e)).collect();
        return Err(Failure::many(provider_diags(&refs)));
    }
    let mut diags = Vec::new();
    // Environment values cannot hold NUL.
    for (name, v) in &vars {
        if v.expose_bytes().contains(&0) {
            diags.push(
                Diagnostic::error("secret::nul", format!("{name}: the value contains a NUL byte, which an environment variable cannot hold"))
                    .secret(name)
                    .help("store the value base64-encoded, or deliver it another way"),
            );
        }
    }
    if diags.is_empty() {
        Ok(vars)
    } else {
        Err(Failure::many(diags))
    }
}

/// `kz cache clear`: removes the encrypted cache file.
pub fn cache_clear(ctx: &Ctx) -> crate::report::CmdResult {
    let path = crate::cache::path(&ctx.paths.cache_home);
    match std::fs::remove_file(&path) {
        Ok(()) => ctx.out.note(&format!("removed {}", path.display())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            ctx.out.note("the cache is already empty")
        }
        Err(e) => {
            return Err(Failure::msg(
                "cache::clear",
                format!("cannot remove `{}`: {e}", path.display()),
                "check the file's permissions",
            ));
        }
    }
    Ok(crate::report::exit::OK)
}

/// `kz audit verify`: checks the hash chain across the files, in order.
pub fn audit_verify(ctx: &Ctx, args: &crate::cli::AuditVerifyArgs) -> crate::report::CmdResult {
    let paths: Vec<std::path::PathBuf> = args.paths.iter().map(|p| ctx.paths.cwd.join(p)).collect();
    match kz_audit::verify(&paths) {
        Ok(s) => {
            print_out(&format!(
                "ok: {} record(s) in {} file(s), chain intact; last hash {}\n",
                s.records, s.files, s.last_hash
            ))?;
            Ok(crate::report::exit::OK)
        }
        Err(e) => Err(Failure::one(
            Diagnostic::error("audit::broken", e.to_string()).help(e.help()),
        )),
    }
}

/// Whether an error kind means "not stored yet".
pub fn is_missing(kind: ErrorKind) -> bool {
    kind == ErrorKind::NotFound
}

/// Writes to stdout, treating a closed pipe as success.
pub fn print_out(text: &str) -> Result<(), Failure> {
    let mut out = std::io::stdout().lock();
    match out.write_all(text.as_bytes()).and_then(|()| out.flush()) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
        Err(e) => Err(Failure::msg(
            "io::stdout",
            format!("cannot write to standard output: {e}"),
            "check where the output goes",
        )),
    }
}
