//! `kz validate`: check the configuration without contacting any backend, reporting every
//! problem with its file and line.

use kz_config::LoadRequest;
use serde_json::json;

use crate::cli::{ReportArgs, ReportFormat};
use crate::commands::print_out;
use crate::context::Ctx;
use crate::report::{CmdResult, exit};

/// Runs the command.
pub fn run(ctx: &Ctx, args: &ReportArgs) -> CmdResult {
    let start = ctx.start_dir();
    let file = ctx.config_file();
    let global = ctx.paths.global_file();
    let getenv = |k: &str| std::env::var(k).ok();
    let loaded = kz_config::load(&LoadRequest {
        start_dir: &start,
        config_file: file.as_deref(),
        env_flag: ctx.global.env.as_deref(),
        global_file: Some(&global),
        getenv: &getenv,
    });
    let valid = loaded.config.is_some();
    let path = loaded
        .discovered
        .as_ref()
        .map(|d| d.project_path().display().to_string())
        .unwrap_or_default();
    match args.format {
        ReportFormat::Json => {
            let item = |d: &kz_config::Diagnostic| {
                let mut m = serde_json::Map::new();
                if let Some(s) = &d.secret {
                    m.insert("name".into(), s.clone().into());
                }
                if let Some(k) = &d.key {
                    m.insert("key".into(), k.clone().into());
                }
                if let Some(f) = &d.file {
                    m.insert("file".into(), f.display().to_string().into());
                }
                if let Some(l) = d.line {
                    m.insert("line".into(), l.into());
                }
                m.insert("error".into(), d.message.clone().into());
                m.insert("code".into(), d.code.into());
                if let Some(h) = &d.help {
                    m.insert("help".into(), h.clone().into());
                }
                serde_json::Value::Object(m)
            };
            let errors: Vec<_> = loaded
                .diagnostics
                .iter()
                .filter(|d| d.is_error())
                .map(item)
                .collect();
            let warnings: Vec<_> = loaded
                .diagnostics
                .iter()
                .filter(|d| !d.is_error())
                .map(item)
                .collect();
            let doc = json!({
                "version": 1,
                "file": path,
                "valid": valid,
                "environment": loaded.config.as_ref().map(|c| c.environment.clone()),
                "secrets_count": loaded.secrets_count,
                "providers_count": loaded.providers_count,
                "errors": errors,
                "warnings": warnings,
            });
            print_out(&format!("{doc}\n"))?;
        }
        ReportFormat::Text => {
            // The path names a directory, which can hold any character: shown escaped.
            let path = crate::report::escape(&path);
            ctx.out.all(&loaded.diagnostics);
            if valid {
                print_out(&format!(
                    "{path}: valid ({} secret(s) in `{}`, {} provider(s) declared)\n",
                    loaded.secrets_count,
                    loaded
                        .config
                        .as_ref()
                        .map(|c| c.environment.as_str())
                        .unwrap_or_default(),
                    loaded.providers_count
                ))?;
            } else {
                let n = loaded.errors().count();
                eprintln!(
                    "kz: {n} problem(s) found{}",
                    if path.is_empty() {
                        String::new()
                    } else {
                        format!(" in {path}")
                    }
                );
            }
        }
    }
    Ok(if valid { exit::OK } else { exit::ERROR })
}
