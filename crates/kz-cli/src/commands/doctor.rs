//! `kz doctor`: check the environment kz runs in and say what to fix.

use std::path::Path;

use kz_config::Config;

use crate::commands::print_out;
use crate::context::{Ctx, block_on_with_spinner};
use crate::report::{CmdResult, exit};

#[derive(Clone, Copy, PartialEq, Eq)]
enum Level {
    Ok,
    Warn,
    Fail,
}

struct Report {
    lines: Vec<(Level, String, Option<String>)>,
}

impl Report {
    fn add(&mut self, level: Level, what: impl Into<String>, fix: Option<String>) {
        self.lines.push((level, what.into(), fix));
    }
}

/// Runs the command.
pub fn run(ctx: &Ctx) -> CmdResult {
    let mut r = Report { lines: Vec::new() };
    match ctx.load() {
        Ok(config) => {
            r.add(
                Level::Ok,
                format!(
                    "config: {} ({} secret(s) in `{}`)",
                    config.discovered.project_path().display(),
                    config.secrets.len(),
                    config.environment
                ),
                None,
            );
            trust(ctx, &config, &mut r);
            providers(ctx, &config, &mut r);
        }
        Err(f) => {
            let first = f
                .diagnostics
                .first()
                .map(|d| d.message.clone())
                .unwrap_or_default();
            r.add(
                Level::Fail,
                format!("config: {first}"),
                Some("run `kz validate` for every problem, or `kz init`".into()),
            );
        }
    }
    tools(&mut r);
    blind_support(&mut r);
    let mut text = String::new();
    for (level, what, fix) in &r.lines {
        let mark = match level {
            Level::Ok => "ok  ",
            Level::Warn => "warn",
            Level::Fail => "FAIL",
        };
        text.push_str(&format!("[{mark}] {}\n", crate::report::escape(what)));
        if let Some(f) = fix {
            text.push_str(&format!("       fix: {}\n", crate::report::escape(f)));
        }
    }
    print_out(&text)?;
    Ok(if r.lines.iter().any(|(l, _, _)| *l == Level::Fail) {
        exit::ERROR
    } else {
        exit::OK
    })
}

fn trust(ctx: &Ctx, config: &Config, r: &mut Report) {
    // The same reach checks the commands run, over every secret and provider.
    let secrets: Vec<&kz_config::SecretEntry> = config.secrets.iter().collect();
    let instances: Vec<&kz_config::ProviderInstance> = config.providers.iter().collect();
    let needs: Vec<String> = ctx
        .trust_problems(config, &secrets, &instances)
        .iter()
        .map(|d| {
            let at = match (&d.file, d.line) {
                (Some(f), Some(l)) => format!(
                    "{}:{l}: ",
                    f.file_name()
                        .map_or_else(String::new, |n| n.to_string_lossy().into_owned())
                ),
                _ => String::new(),
            };
            match &d.secret {
                Some(s) => format!("{at}{s}: {}", d.message),
                None => format!("{at}{}", d.message),
            }
        })
        .collect();
    if crate::trust::is_trusted(&ctx.paths, &config.discovered) {
        r.add(
            Level::Ok,
            "trust: this project's configuration is trusted (kz allow)",
            None,
        );
    } else if needs.is_empty() {
        r.add(
            Level::Ok,
            "trust: not trusted (nothing here reaches beyond the project; the shell hook still needs `kz allow`)",
            Some("run `kz allow` to load secrets with the shell hook".into()),
        );
    } else {
        r.add(
            Level::Warn,
            format!(
                "trust: not trusted, and this needs it: {}",
                needs.join("; ")
            ),
            Some(
                "review .keyzero.toml and .keyzero.local.toml, then run `kz allow` (or pass --trust)"
                    .into(),
            ),
        );
    }
}

fn providers(ctx: &Ctx, config: &Config, r: &mut Report) {
    for inst in &config.providers {
        if !config.secrets.iter().any(|s| s.provider == inst.name) && !inst.declared {
            continue;
        }
        if !inst.ty.implemented {
            r.add(
                Level::Fail,
                format!(
                    "provider `{}` ({}): not available in this build of kz yet",
                    inst.name, inst.ty.name
                ),
                Some("the `keyzero` team-server client arrives with team mode".into()),
            );
            continue;
        }
        // Checking a provider spends the user's credentials: not for an untrusted project.
        if (!inst.untrusted_options().is_empty() || crate::trust::needs_trust_type(inst.ty.name))
            && !ctx.trusted(config)
        {
            r.add(
                Level::Warn,
                format!(
                    "provider `{}` ({}): not checked (the project is not trusted)",
                    inst.name, inst.ty.name
                ),
                None,
            );
            continue;
        }
        let built = kz_providers::build(inst, &ctx.build_context(&config.discovered.dir));
        let p = match built {
            Ok(p) => p,
            Err(e) => {
                r.add(
                    Level::Fail,
                    format!("provider `{}` ({}): {}", inst.name, inst.ty.name, e.message),
                    e.help.clone(),
                );
                continue;
            }
        };
        let d = p.describe();
        let details: Vec<String> = d.details.iter().map(|(k, v)| format!("{k}: {v}")).collect();
        match block_on_with_spinner(&ctx.out, "checking providers", p.check()) {
            Ok(Ok(())) => r.add(
                Level::Ok,
                format!(
                    "provider `{}` ({}): reachable; {}",
                    inst.name,
                    inst.ty.name,
                    details.join(", ")
                ),
                None,
            ),
            Ok(Err(e)) => r.add(
                Level::Fail,
                format!("provider `{}` ({}): {}", inst.name, inst.ty.name, e.message),
                e.help.clone(),
            ),
            Err(f) => r.add(
                Level::Fail,
                format!(
                    "provider `{}`: {:?}",
                    inst.name,
                    f.diagnostics.first().map(|d| &d.message)
                ),
                None,
            ),
        }
    }
}

fn on_path(cmd: &str) -> Option<std::path::PathBuf> {
    std::env::var_os("PATH").and_then(|p| {
        std::env::split_paths(&p)
            .map(|d| d.join(cmd))
            .find(|c| c.is_file())
    })
}

fn tools(r: &mut Report) {
    match std::env::var_os("DBUS_SESSION_BUS_ADDRESS") {
        Some(_) => r.add(Level::Ok, "keychain: a D-Bus session bus is configured (a `keychain` provider checks the Secret Service itself)", None),
        None => r.add(Level::Warn, "keychain: no D-Bus session bus (DBUS_SESSION_BUS_ADDRESS unset)", Some("use the `local` provider on machines without a Secret Service".into())),
    }
    match on_path("op") {
        Some(p) => r.add(
            Level::Ok,
            format!("1password: `op` found at {}", p.display()),
            None,
        ),
        None => r.add(
            Level::Warn,
            "1password: `op` not found on PATH",
            Some("install the 1Password CLI to use op:// references".into()),
        ),
    }
    match on_path("git") {
        Some(_) => r.add(
            Level::Ok,
            "git: found (kz export --output checks .gitignore with it)",
            None,
        ),
        None => r.add(
            Level::Warn,
            "git: not found; kz export --output refuses paths under any .git directory",
            None,
        ),
    }
}

fn blind_support(r: &mut Report) {
    let preset: Vec<&str> = super::blind::CA_FILE_VARS
        .iter()
        .chain(&["SSL_CERT_DIR"])
        .copied()
        .filter(|v| std::env::var_os(v).is_some())
        .collect();
    if preset.is_empty() {
        r.add(Level::Ok, "blind mode: no CA variables preset", None);
    } else {
        r.add(
            Level::Ok,
            format!(
                "blind mode: CA variables preset here, overridden for blind children: {}",
                preset.join(", ")
            ),
            None,
        );
    }
    let read = |p: &str| {
        std::fs::read_to_string(Path::new(p))
            .ok()
            .map(|s| s.trim().to_string())
    };
    let userns = read("/proc/sys/user/max_user_namespaces");
    let clone = read("/proc/sys/kernel/unprivileged_userns_clone");
    match (
        cfg!(target_os = "linux"),
        userns.as_deref(),
        clone.as_deref(),
    ) {
        (false, _, _) => r.add(Level::Warn, "isolation: --isolate is Linux-only", None),
        (true, Some("0"), _) | (true, _, Some("0")) => r.add(
            Level::Warn,
            "isolation: unprivileged user namespaces are disabled, --isolate will refuse to start",
            Some("sysctl user.max_user_namespaces / kernel.unprivileged_userns_clone".into()),
        ),
        _ => r.add(
            Level::Ok,
            "isolation: user and network namespaces look available",
            None,
        ),
    }
}
