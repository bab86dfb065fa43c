//! `kz init`: a starter `.keyzero.toml` with comments, and `.keyzero.local.toml` in
//! `.gitignore`.

use std::path::Path;

use kz_config::{Diagnostic, LOCAL_FILE, PROJECT_FILE, catalog};

use crate::cli::InitArgs;
use crate::commands::print_out;
use crate::context::Ctx;
use crate::edit;
use crate::report::{CmdResult, Failure, exit};

/// The starter file for a project called `project`.
pub fn template(project: &str) -> String {
    format!(
        r#"# keyzero: this file maps environment variables to secret references.
# It holds references only, never values, so it is safe to commit.
# Personal overrides go in {LOCAL_FILE} (git-ignored).

# Provider instances. Without a [providers.NAME] table a provider type is used with its
# defaults: `local` is kz's encrypted store on this machine, no account needed.
# [providers.vault]
# type    = "hashicorp"
# address = "https://vault.example.com:8200"

[secrets]
# NAME = {{ provider = "…", ref = "…" }}  or the short form  NAME = "scheme://ref"
# An example in kz's local store (`kz add EXAMPLE_API_KEY` writes this line, `kz put` stores
# its value); a mapped secret is required: `kz run` starts nothing until every one resolves.
# EXAMPLE_API_KEY = {{ provider = "local", ref = "{project}/EXAMPLE_API_KEY" }}
# DATABASE_URL    = "op://Dev/database/url"

# Environment sections replace [secrets] as a whole when active (--env, KEYZERO_ENV, NODE_ENV).
# [production.secrets]
# EXAMPLE_API_KEY = {{ provider = "vault", ref = "secret/data/prod/example", field = "key" }}
"#
    )
}

/// Runs the command.
pub fn run(ctx: &Ctx, args: &InitArgs) -> CmdResult {
    let dir = ctx.start_dir();
    let path = dir.join(PROJECT_FILE);
    if path.exists() && !args.force {
        return Err(Failure::one(
            Diagnostic::error(
                "init::exists",
                format!("`{}` already exists", path.display()),
            )
            .in_file(&path)
            .help("edit it, use `kz add`, or pass --force to overwrite it"),
        ));
    }
    let project = kz_config::model::project_name(&dir);
    edit::write(&path, &template(&project))?;
    let ignored = ignore_local_file(&dir)?;
    let mut msg = format!("created {}\n", path.display());
    if let Some(g) = ignored {
        msg.push_str(&format!("added {LOCAL_FILE} to {}\n", g.display()));
    }
    msg.push_str(&format!(
        "\nnext steps:\n  kz add NAME                     map a variable (local store: ref {project}/NAME)\n  kz put NAME                     store its value (hidden prompt)\n  kz run -- CMD                   run CMD with the secrets in its environment\n"
    ));
    if let Some(identity) = local_identity(ctx) {
        msg.push_str(&format!(
            "\nthe local store's key is {identity}.\nback it up: losing it loses every value in the store (docs/providers.md, \"Backing up the local store\").\n"
        ));
    }
    if !ctx.global.quiet {
        print_out(&msg)?;
    }
    Ok(exit::OK)
}

/// Where the `local` provider's identity is (or will be created by the first `kz put`), as its
/// `describe` says; `None` when the configuration does not load.
fn local_identity(ctx: &Ctx) -> Option<String> {
    let config = ctx.load().ok()?;
    let implicit = kz_config::ProviderInstance::implicit(catalog::find("local")?);
    let inst = config.provider("local").unwrap_or(&implicit);
    let provider = kz_providers::build(inst, &ctx.build_context(&config.discovered.dir)).ok()?;
    super::put::identity(provider.as_ref())
}

/// Adds `.keyzero.local.toml` to `.gitignore` when the directory is in a git work tree (creating
/// the file) or already has a `.gitignore`. Returns the file changed.
fn ignore_local_file(dir: &Path) -> Result<Option<std::path::PathBuf>, Failure> {
    let gi = dir.join(".gitignore");
    let in_git = std::process::Command::new("git")
        .arg("-C")
        .arg(dir)
        .args(["rev-parse", "--is-inside-work-tree"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !in_git && !gi.exists() {
        return Ok(None);
    }
    let text = std::fs::read_to_string(&gi).unwrap_or_default();
    if text
        .lines()
        .any(|l| l.trim() == LOCAL_FILE || l.trim() == format!("/{LOCAL_FILE}"))
    {
        return Ok(None);
    }
    let mut new = text;
    if !new.is_empty() && !new.ends_with('\n') {
        new.push('\n');
    }
    new.push_str(LOCAL_FILE);
    new.push('\n');
    edit::write(&gi, &new)?;
    Ok(Some(gi))
}
