//! `kz`: the keyzero command line.
//!
//! `main` parses the arguments, builds the [`context::Ctx`], dispatches to one module of
//! [`commands`] and turns its result into diagnostics on stderr and an exit code. Only this crate
//! prints or exits; the libraries return values and diagnostics.
#![deny(unsafe_code)]

mod cache;
mod cli;
mod commands;
mod context;
mod edit;
mod isolate;
mod quote;
mod report;
mod sys;
mod trust;

use std::process::ExitCode;

use clap::Parser;

use crate::cli::{Cli, Command};
use crate::context::{Ctx, Paths};
use crate::report::{Reporter, exit};

fn main() -> ExitCode {
    // `kz run --blind --isolate` re-executes kz as a small helper that must still be
    // single-threaded when it unshares its namespaces: dispatch before anything else runs.
    if std::env::args_os()
        .nth(1)
        .is_some_and(|a| a == isolate::HELPER_ARG)
    {
        return ExitCode::from(isolate::helper_main(std::env::args_os().skip(2).collect()));
    }
    let cli = match Cli::try_parse() {
        Ok(c) => c,
        Err(e) => {
            let code = if e.use_stderr() {
                exit::USAGE
            } else {
                exit::OK
            };
            let _ = e.print();
            return ExitCode::from(code);
        }
    };
    // Libraries never print: their notes (a plugin's stderr with -v, already masked and
    // labelled) come here.
    kz_resolve::notes::set_sink(|line| {
        use std::io::Write as _;
        let _ = writeln!(std::io::stderr().lock(), "{line}");
    });
    let out = Reporter::new(
        cli.global.error_format,
        cli.global.no_color,
        cli.global.quiet,
        cli.global.verbose,
    );
    let ctx = Ctx {
        global: cli.global,
        paths: Paths::from_env(),
        out,
    };
    let result = match cli.command {
        Command::Init(a) => commands::init::run(&ctx, &a),
        Command::Add(a) => commands::add::run(&ctx, a),
        Command::Put(a) => commands::put::run(&ctx, &a),
        Command::Rm(a) => commands::rm::run(&ctx, &a),
        Command::Import(a) => commands::import::run(&ctx, a),
        Command::Run(a) => commands::run::run(&ctx, a),
        Command::Export(a) => commands::export::run(&ctx, &a),
        Command::Status(a) => commands::status::run(&ctx, &a),
        Command::Validate(a) => commands::validate::run(&ctx, &a),
        Command::List(a) => commands::list::run(&ctx, &a),
        Command::Hook(a) => commands::hook::print_script(a.shell, ctx.global.verbose),
        Command::HookEnv(a) => commands::hook::env(&ctx, &a),
        Command::Allow => commands::trust::allow(&ctx),
        Command::Deny => commands::trust::deny(&ctx),
        Command::Doctor => commands::doctor::run(&ctx),
        Command::Cache(cli::CacheCommand::Clear) => commands::cache_clear(&ctx),
        Command::Audit(cli::AuditCommand::Verify(a)) => commands::audit_verify(&ctx, &a),
        Command::Server(cli::ServerCommand::Check(a)) => commands::team::server_check(&ctx, &a),
        Command::Server(cli::ServerCommand::Start(a)) => commands::server::start(&ctx, &a),
        Command::Policy(cli::PolicyCommand::Eval(a)) => commands::team::policy_eval(&ctx, &a),
        Command::Policy(cli::PolicyCommand::Test(a)) => commands::team::policy_test(&ctx, &a),
        Command::Token(cli::TokenCommand::Sign(a)) => commands::team::token_sign(&ctx, &a),
        Command::Completions(a) => commands::completions::completions(a.shell),
        Command::Man(a) => commands::completions::man(&a.dir),
    };
    match result {
        Ok(code) => ExitCode::from(code),
        Err(f) => {
            ctx.out.all(&f.diagnostics);
            ExitCode::from(f.code)
        }
    }
}
