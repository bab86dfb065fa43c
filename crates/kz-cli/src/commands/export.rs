//! `kz export`: print the resolved secrets as shell code, dotenv or JSON, or write them to a
//! file (atomically, mode 0600, refused inside a git work tree unless git ignores it).

use std::io::IsTerminal;
use std::path::Path;

use kz_config::Diagnostic;

use crate::cli::{ExportArgs, ExportFormat, HookShell};
use crate::commands::{Vars, collect, print_out};
use crate::context::Ctx;
use crate::quote;
use crate::report::{CmdResult, Failure, exit};

/// Runs the command.
pub fn run(ctx: &Ctx, args: &ExportArgs) -> CmdResult {
    let config = ctx.load()?;
    if let Some(out) = &args.output {
        check_output_path(&ctx.paths.cwd.join(out), args.force)?;
    }
    let selected = ctx.select(&config, &args.only)?;
    let outcomes = ctx.resolve(&config, &selected)?;
    let vars = collect(ctx, &config, outcomes)?;
    let format = if args.shell.is_some() {
        ExportFormat::Shell
    } else {
        args.format.unwrap_or(ExportFormat::Shell)
    };
    let text = render(&vars, format, args.shell.unwrap_or(HookShell::Bash))?;
    match &args.output {
        Some(out) => {
            let path = ctx.paths.cwd.join(out);
            kz_providers::fsio::write_atomic(&path, text.as_bytes(), 0o600).map_err(|e| {
                Failure::msg(
                    "export::write",
                    format!("cannot write `{}`: {e}", path.display()),
                    "check the directory's permissions and free space",
                )
            })?;
            ctx.out.note(&format!(
                "wrote {} secret(s) to {} (mode 0600)",
                vars.len(),
                path.display()
            ));
        }
        None => {
            if !std::io::stdout().is_terminal() {
                ctx.out.diagnostic(&Diagnostic::warning(
                    "export::not_a_terminal",
                    "secret values are being written to a pipe or file",
                ).help("prefer `kz run -- CMD`, or --output to a git-ignored file (written with mode 0600)"));
            }
            print_out(&text)?;
        }
    }
    Ok(exit::OK)
}

/// Renders the variables in a format.
pub fn render(vars: &Vars, format: ExportFormat, shell: HookShell) -> Result<String, Failure> {
    let mut text = String::new();
    let utf8 = |name: &str, v: &kz_secret::SecretValue| -> Result<String, Failure> {
        v.expose_str().map(str::to_string).ok_or_else(|| {
            Failure::one(
                Diagnostic::error(
                    "export::binary",
                    format!(
                        "{name}: the value is not UTF-8 text and cannot be exported in this format"
                    ),
                )
                .secret(name)
                .help("use `kz run` to pass it to a program"),
            )
        })
    };
    match format {
        ExportFormat::Json => {
            let mut m = serde_json::Map::new();
            for (k, v) in vars {
                m.insert(k.clone(), serde_json::Value::String(utf8(k, v)?));
            }
            text = serde_json::Value::Object(m).to_string();
            text.push('\n');
        }
        ExportFormat::Env => {
            for (k, v) in vars {
                let v = utf8(k, v)?;
                let quoted = quote::dotenv(&v);
                // A dotenv file is often sourced by a shell: the double-quoted form (for values
                // with `'` or line breaks) escapes `$`, `"` and `\\`, but dotenv has no escape for
                // a backtick, which a shell would run as a command there.
                if quoted.starts_with('"') && v.contains('`') {
                    return Err(Failure::one(
                        Diagnostic::error(
                            "export::env_unsafe",
                            format!("{k}: the value holds a backtick together with a quote or line break, which the env format cannot write so that a shell sourcing the file would not run it"),
                        )
                        .secret(k)
                        .help("use --format shell (safe to source) or --format json, or `kz run` to pass it to a program"),
                    ));
                }
                text.push_str(&format!("{k}={quoted}\n"));
            }
        }
        ExportFormat::Shell => {
            for (k, v) in vars {
                let v = utf8(k, v)?;
                match shell {
                    HookShell::Fish => {
                        text.push_str(&format!("set -gx {k} {};\n", quote::fish(&v)))
                    }
                    _ => text.push_str(&format!("export {k}={};\n", quote::posix(&v))),
                }
            }
        }
    }
    Ok(text)
}

/// Refuses a path inside a git work tree unless git ignores it (or `--force`). Any git failure
/// other than "not a git repository" (such as "dubious ownership" of a repository another user
/// owns) counts as inside, so secrets are never written where git's answer is unknown.
fn check_output_path(path: &Path, force: bool) -> Result<(), Failure> {
    if force {
        return Ok(());
    }
    let dir = path
        .parent()
        .filter(|d| d.is_dir())
        .unwrap_or(Path::new("."));
    let git = |args: &[&std::ffi::OsStr]| {
        std::process::Command::new("git")
            .arg("-C")
            .arg(dir)
            .args(args)
            // Untranslated messages, so "not a git repository" can be recognised.
            .env("LC_ALL", "C")
            .env("LANGUAGE", "C")
            .stdin(std::process::Stdio::null())
            .output()
    };
    let has_dot_git = dir.ancestors().any(|a| a.join(".git").exists());
    let refuse = |why: String| {
        Err(Failure::one(
            Diagnostic::error(
                "export::unignored_output",
                format!("refusing to write secrets to `{}`: {why}", path.display()),
            )
            .help("add the file to .gitignore first, write it elsewhere, or pass --force"),
        ))
    };
    match git(&["rev-parse".as_ref(), "--is-inside-work-tree".as_ref()]) {
        // No git: look for a .git directory, and refuse when there is one.
        Err(_) if has_dot_git => {
            return refuse("it is inside a git work tree (git is not installed to ask whether it ignores the file)".into());
        }
        Err(_) => return Ok(()),
        Ok(out) if !out.status.success() => {
            let err = String::from_utf8_lossy(&out.stderr);
            if err.contains("not a git repository") && !has_dot_git {
                return Ok(());
            }
            let first = err.lines().next().unwrap_or("").trim();
            return refuse(format!(
                "git cannot tell whether it is inside a work tree ({})",
                crate::report::escape(first)
            ));
        }
        Ok(_) => {}
    }
    let ignored = git(&["check-ignore".as_ref(), "-q".as_ref(), path.as_os_str()])
        .is_ok_and(|o| o.status.success());
    if ignored {
        return Ok(());
    }
    refuse("it is inside a git work tree and git does not ignore it".into())
}
