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
            kz_providers::local::write_atomic(&path, text.as_bytes()).map_err(|e| {
                Failure::msg(
                    "export::write",
                    e.message.clone(),
                    e.help.clone().unwrap_or_default(),
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
                text.push_str(&format!("{k}={}\n", quote::dotenv(&utf8(k, v)?)));
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

/// Refuses a path inside a git work tree unless git ignores it (or `--force`).
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
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .status()
    };
    let inside = match git(&["rev-parse".as_ref(), "--is-inside-work-tree".as_ref()]) {
        Ok(s) => s.success(),
        // No git: fall back to looking for a .git directory, and refuse when there is one.
        Err(_) => dir.ancestors().any(|a| a.join(".git").exists()),
    };
    if !inside {
        return Ok(());
    }
    let ignored =
        git(&["check-ignore".as_ref(), "-q".as_ref(), path.as_os_str()]).is_ok_and(|s| s.success());
    if ignored {
        return Ok(());
    }
    Err(Failure::one(
        Diagnostic::error(
            "export::unignored_output",
            format!("refusing to write secrets to `{}`: it is inside a git work tree and git does not ignore it", path.display()),
        )
        .help("add the file to .gitignore first, write it elsewhere, or pass --force"),
    ))
}
