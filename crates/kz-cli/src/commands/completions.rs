//! `kz completions SHELL` and the hidden `kz __man DIR`, both generated from the clap
//! definitions.

use std::path::Path;

use clap::CommandFactory;

use crate::cli::Cli;
use crate::report::{CmdResult, Failure, exit};

/// Prints a completion script.
pub fn completions(shell: clap_complete::Shell) -> CmdResult {
    let mut cmd = Cli::command();
    let mut buf = Vec::new();
    clap_complete::generate(shell, &mut cmd, "kz", &mut buf);
    super::print_out(&String::from_utf8_lossy(&buf))?;
    Ok(exit::OK)
}

/// Writes `kz.1` and `kz-<command>.1` for every visible command into `dir`.
pub fn man(dir: &Path) -> CmdResult {
    let io = |e: std::io::Error| {
        Failure::msg(
            "man::write",
            format!("cannot write man pages into `{}`: {e}", dir.display()),
            "check the directory",
        )
    };
    std::fs::create_dir_all(dir).map_err(io)?;
    let cmd = Cli::command();
    let mut pages = vec![("kz".to_string(), cmd.clone())];
    for sub in cmd.get_subcommands().filter(|s| !s.is_hide_set()) {
        let name = format!("kz-{}", sub.get_name());
        pages.push((name.clone(), sub.clone().name(name)));
    }
    for (name, page) in pages {
        let mut buf = Vec::new();
        clap_mangen::Man::new(page).render(&mut buf).map_err(io)?;
        kz_providers::fsio::write_atomic(&dir.join(format!("{name}.1")), &buf, 0o644)
            .map_err(io)?;
    }
    Ok(exit::OK)
}
