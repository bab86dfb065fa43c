//! `kz run`: resolve, then `exec` the command with the secrets in its environment, so signals,
//! exit code and stdio are the child's own. With `--watch` or `--mask`, kz stays as the parent
//! instead (`supervise`). Nothing is started when a required secret failed.

use std::ffi::{OsStr, OsString};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::process::CommandExt;

use kz_config::Diagnostic;

use crate::cli::RunArgs;
use crate::commands::collect;
use crate::context::Ctx;
use crate::report::{CmdResult, Failure, exit};

/// Variables kept by `--clean-env`.
pub const CLEAN_ENV_KEEP: &[&str] = &[
    "PATH", "HOME", "USER", "SHELL", "TERM", "LANG", "LC_ALL", "TMPDIR", "TZ",
];

/// Runs the command.
pub fn run(ctx: &Ctx, args: RunArgs) -> CmdResult {
    if !args.keep_env.is_empty() && !args.clean_env && !args.blind {
        return Err(Failure::usage(
            "--keep-env only applies with --clean-env or --blind",
            "add --clean-env (or --blind), or drop --keep-env",
        ));
    }
    if args.blind {
        // The blind command runs as the same user: without this it could read kz's memory
        // (every value, the CA key) and start-up environment (provider credentials) through
        // /proc/PPID/{mem,environ}. Also keeps values out of core dumps. Before any value exists.
        #[cfg(target_os = "linux")]
        rustix::process::set_dumpable_behavior(rustix::process::DumpableBehavior::NotDumpable)
            .map_err(|e| {
                Failure::msg(
                    "blind::dumpable",
                    format!("cannot protect kz's memory from the command: {e}"),
                    "this is a bug; please report it",
                )
            })?;
    }
    let config = ctx.load()?;
    if args.blind {
        ctx.require_trust_for_blind(&config)?;
    }
    let selected = ctx.select(&config, &args.only)?;
    let outcomes = ctx.resolve(&config, &selected)?;
    let vars = collect(ctx, &config, outcomes)?;
    if args.blind {
        return super::blind::run(ctx, args, &config, &selected, vars);
    }
    let base_env = args.clean_env.then(|| {
        CLEAN_ENV_KEEP
            .iter()
            .copied()
            .map(String::from)
            .chain(args.keep_env.iter().cloned())
            .filter_map(|k| std::env::var_os(&k).map(|v| (OsString::from(k), v)))
            .collect::<Vec<_>>()
    });
    if args.watch.is_some() || args.mask {
        let plan = super::supervise::Plan {
            command: args.command,
            base_env,
            mask: args.mask,
            watch: args.watch,
            grace: args.grace,
            secrets: selected,
        };
        return super::supervise::run(ctx, &config, &plan, vars);
    }
    let mut command = args.command.into_iter();
    let Some(program) = command.next() else {
        return Err(Failure::usage(
            "no command given",
            "write the command after `--`: kz run -- npm start",
        ));
    };
    let mut cmd = std::process::Command::new(&program);
    cmd.args(command);
    if args.clean_env {
        cmd.env_clear();
        for k in CLEAN_ENV_KEEP
            .iter()
            .copied()
            .map(String::from)
            .chain(args.keep_env)
        {
            if let Some(v) = std::env::var_os(&k) {
                cmd.env(&k, v);
            }
        }
    }
    for (name, value) in &vars {
        cmd.env(name, OsStr::from_bytes(value.expose_bytes()));
    }
    ctx.out.verbose(&format!(
        "starting {} with {} secret(s)",
        program.to_string_lossy(),
        vars.len()
    ));
    drop(vars);
    let err = cmd.exec();
    // exec only returns on failure.
    Ok(start_failed(ctx, &program, &err))
}

/// Reports a command that could not be started; returns kz's exit code for it (127 when it does
/// not exist, 126 when it cannot be executed).
pub fn start_failed(ctx: &Ctx, program: &OsStr, err: &std::io::Error) -> u8 {
    let name = program.to_string_lossy().into_owned();
    let (code, what, help) = match err.kind() {
        std::io::ErrorKind::NotFound => (
            exit::NOT_FOUND,
            "command not found",
            "check the command's name and PATH",
        ),
        std::io::ErrorKind::PermissionDenied => (
            exit::NOT_EXECUTABLE,
            "permission denied",
            "make the file executable (chmod +x) or run it with its interpreter",
        ),
        _ => (
            exit::NOT_EXECUTABLE,
            "cannot execute",
            "check that the file is a program for this system",
        ),
    };
    if ctx.global.error_format == crate::cli::ErrorFormat::Json {
        ctx.out
            .diagnostic(&Diagnostic::error("run::exec", format!("{name}: {what}")).help(help));
    } else {
        eprintln!("kz: {name}: {what}");
    }
    code
}
