//! `kz allow` / `kz deny`: trust (or revoke trust in) the current project's configuration.

use kz_config::Diagnostic;

use crate::context::Ctx;
use crate::report::{CmdResult, Failure, exit};

fn discovered(ctx: &Ctx) -> Result<kz_config::Discovered, Failure> {
    Ok(kz_config::discover::discover(
        &ctx.start_dir(),
        ctx.config_file().as_deref(),
    )?)
}

/// `kz allow`.
pub fn allow(ctx: &Ctx) -> CmdResult {
    let d = discovered(ctx)?;
    crate::trust::allow(&ctx.paths, &d).map_err(|e| {
        Failure::one(
            Diagnostic::error(
                "trust::write",
                format!(
                    "cannot record trust under `{}`: {e}",
                    ctx.paths.trust_dir().display()
                ),
            )
            .help("check that $XDG_DATA_HOME/keyzero is writable"),
        )
    })?;
    ctx.out.note(&format!(
        "trusted {} as it is now (any edit revokes this; run `kz allow` again after reviewing)",
        d.project_path().display()
    ));
    Ok(exit::OK)
}

/// `kz deny`.
pub fn deny(ctx: &Ctx) -> CmdResult {
    let d = discovered(ctx)?;
    match crate::trust::deny(&ctx.paths, &d) {
        Ok(true) => ctx.out.note(&format!(
            "no longer trusting {}",
            d.project_path().display()
        )),
        Ok(false) => ctx
            .out
            .note(&format!("{} was not trusted", d.project_path().display())),
        Err(e) => {
            return Err(Failure::msg(
                "trust::write",
                format!("cannot remove the trust record: {e}"),
                "check that $XDG_DATA_HOME/keyzero is writable",
            ));
        }
    }
    Ok(exit::OK)
}
