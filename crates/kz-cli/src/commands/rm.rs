//! `kz rm`: remove a mapping, and with `--purge` the stored value (after confirmation).

use std::io::IsTerminal;

use kz_config::{Diagnostic, LOCAL_FILE, PROJECT_FILE};

use crate::cli::RmArgs;
use crate::context::{Ctx, block_on_with_spinner, provider_diag, unknown_secret};
use crate::edit;
use crate::report::{CmdResult, Failure, exit};

/// Runs the command.
pub fn run(ctx: &Ctx, args: &RmArgs) -> CmdResult {
    let config = ctx.load()?;
    let name = &args.name;
    let file = if args.local {
        config.discovered.dir.join(LOCAL_FILE)
    } else {
        config
            .discovered
            .project
            .clone()
            .unwrap_or_else(|| config.discovered.dir.join(PROJECT_FILE))
    };
    let env = ctx.global.env.as_deref();
    if args.purge {
        let entry = config
            .secret(name)
            .ok_or_else(|| Failure::one(unknown_secret(&config, name)))?;
        if !args.yes {
            if !std::io::stdin().is_terminal() || !std::io::stderr().is_terminal() {
                return Err(Failure::usage(
                    "--purge deletes the stored value and needs confirmation",
                    "pass --yes to confirm without a terminal",
                ));
            }
            let ok = dialoguer::Confirm::new()
                .with_prompt(format!(
                    "delete the value of {name} from `{}` ({}) at {}?",
                    entry.provider, entry.ty.name, entry.reference
                ))
                .default(false)
                .interact()
                .unwrap_or(false);
            if !ok {
                ctx.out.note("nothing changed");
                return Ok(exit::ERROR);
            }
        }
        let provider = ctx.instance_for(&config, entry)?;
        let item = kz_resolve::item_for(entry);
        match block_on_with_spinner(&ctx.out, "deleting", provider.delete(&item))? {
            Ok(()) => ctx.out.note(&format!(
                "deleted the value of {name} from `{}`",
                entry.provider
            )),
            Err(e) if e.kind == kz_resolve::ErrorKind::NotFound => {
                ctx.out.note(&format!("{name} had no stored value"))
            }
            Err(e) => return Err(Failure::one(provider_diag(entry, &e))),
        }
    }
    if edit::remove_secret(&file, env, name)? {
        ctx.out
            .note(&format!("removed {name} from {}", file.display()));
        Ok(exit::OK)
    } else {
        let section = env.map_or_else(|| "[secrets]".to_string(), |e| format!("[{e}.secrets]"));
        Err(Failure::one(
            Diagnostic::error("rm::not_mapped", format!("`{name}` is not mapped in {section} of `{}`", file.display()))
                .in_file(&file)
                .secret(name)
                .help("check the name with `kz list`; use --env for an environment section, --local for .keyzero.local.toml"),
        ))
    }
}
