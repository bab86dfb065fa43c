//! `kz put`: store a value in a mapped secret's provider. The value comes from a hidden prompt
//! or standard input, never from the command line. `--missing` prompts for every secret that
//! is not stored yet and whose provider can store it.

use std::io::{IsTerminal, Read};

use kz_config::{Config, Diagnostic, SecretEntry};
use kz_secret::SecretValue;

use crate::cli::PutArgs;
use crate::context::{Ctx, block_on_with_spinner, provider_diag, unknown_secret};
use crate::report::{CmdResult, Failure, exit};

/// Runs the command.
pub fn run(ctx: &Ctx, args: &PutArgs) -> CmdResult {
    if args.value.is_some() {
        return Err(Failure::usage(
            "`--value` is refused: a value on the command line is visible to every user of this machine (ps, /proc, shell history)",
            "pipe it instead: printf %s \"$VALUE\" | kz put NAME --stdin, or omit both for a hidden prompt",
        ));
    }
    let config = ctx.load()?;
    if args.missing {
        return missing(ctx, &config);
    }
    let Some(name) = &args.name else {
        return Err(Failure::usage(
            "no secret named",
            "kz put NAME, or kz put --missing",
        ));
    };
    let entry = config
        .secret(name)
        .ok_or_else(|| Failure::one(unknown_secret(&config, name)))?;
    ensure_writable(&config, entry)?;
    let value = if args.stdin {
        read_stdin()?
    } else {
        prompt_value(name)?
    };
    store(ctx, &config, entry, &value)?;
    Ok(exit::OK)
}

fn writable(config: &Config, entry: &SecretEntry) -> bool {
    let inst = config.provider(&entry.provider);
    entry
        .ty
        .can_write(&|o| inst.is_some_and(|p| p.option(o).is_some()))
}

fn ensure_writable(config: &Config, entry: &SecretEntry) -> Result<(), Failure> {
    if writable(config, entry) {
        return Ok(());
    }
    let help = match entry.ty.writable {
        kz_config::catalog::Writable::WhenOption(o) => format!(
            "set `{o}` on the `{}` provider to let kz write",
            entry.provider
        ),
        _ => format!(
            "store the value with the `{}` backend's own tools, or map {} to a writable provider such as local",
            entry.ty.name, entry.name
        ),
    };
    Err(Failure::one(
        Diagnostic::error(
            "put::read_only",
            format!(
                "{}: provider `{}` ({}) cannot store values",
                entry.name, entry.provider, entry.ty.name
            ),
        )
        .at(&entry.pos)
        .secret(&entry.name)
        .help(help),
    ))
}

fn read_stdin() -> Result<SecretValue, Failure> {
    let mut buf = Vec::new();
    std::io::stdin().read_to_end(&mut buf).map_err(|e| {
        Failure::msg(
            "put::stdin",
            format!("cannot read standard input: {e}"),
            "pipe the value into kz put NAME --stdin",
        )
    })?;
    let mut v = SecretValue::from_bytes(buf);
    let b = v.expose_bytes();
    let cut = if b.ends_with(b"\r\n") {
        2
    } else {
        usize::from(b.ends_with(b"\n"))
    };
    if cut > 0 {
        v = SecretValue::from_bytes(b.get(..b.len() - cut).unwrap_or_default().to_vec());
    }
    Ok(v)
}

fn prompt_value(name: &str) -> Result<SecretValue, Failure> {
    if !std::io::stdin().is_terminal() || !std::io::stderr().is_terminal() {
        return Err(Failure::usage(
            "no terminal to prompt for the value on",
            format!("pipe the value: printf %s \"$VALUE\" | kz put {name} --stdin"),
        ));
    }
    dialoguer::Password::new()
        .with_prompt(format!("value for {name}"))
        .allow_empty_password(true)
        .interact()
        .map(SecretValue::from_string)
        .map_err(|e| {
            Failure::msg(
                "put::prompt",
                format!("cannot read the value: {e}"),
                "use --stdin",
            )
        })
}

fn store(
    ctx: &Ctx,
    config: &Config,
    entry: &SecretEntry,
    value: &SecretValue,
) -> Result<(), Failure> {
    if value.is_empty() && !entry.allow_empty {
        return Err(Failure::one(
            Diagnostic::error(
                "put::empty",
                format!("{}: refusing to store an empty value", entry.name),
            )
            .secret(&entry.name)
            .help("set allow_empty = true on the secret if empty is valid"),
        ));
    }
    let provider = ctx.instance_for(config, entry)?;
    let item = kz_resolve::item_for(entry);
    let identity_before = identity(provider.as_ref());
    block_on_with_spinner(&ctx.out, "storing", provider.write(&item, value))?
        .map_err(|e| Failure::one(provider_diag(entry, &e)))?;
    crate::trust::claim_namespace(&ctx.paths, config, entry, ctx.trusted(config));
    ctx.out.note(&format!(
        "stored {} in `{}` ({}) as {}",
        entry.name, entry.provider, entry.ty.name, entry.reference
    ));
    // The first write to a local store records its key: say where it is, once.
    if let Some(now) =
        identity(provider.as_ref()).filter(|now| Some(now) != identity_before.as_ref())
    {
        ctx.out.note(&key_created_note(&entry.provider, &now));
    }
    Ok(())
}

/// The identity a provider describes (the `local` store's key file), if it has one.
pub fn identity(provider: &dyn kz_resolve::Provider) -> Option<String> {
    provider
        .describe()
        .details
        .into_iter()
        .find(|(k, _)| k == "identity")
        .map(|(_, v)| v)
}

/// What to say when a store was just created: where its key is and why to back it up.
pub fn key_created_note(provider: &str, identity: &str) -> String {
    format!(
        "the `{provider}` store's key is {identity}\nkz: back it up: losing it loses every value in the store (docs/providers.md, \"Backing up the local store\")"
    )
}

fn missing(ctx: &Ctx, config: &Config) -> CmdResult {
    let all: Vec<&SecretEntry> = config.secrets.iter().collect();
    let outcomes = ctx.resolve(config, &all)?;
    let mut other = Vec::new();
    let mut failed = Vec::new();
    let mut todo = Vec::new();
    for o in &outcomes {
        let Some(entry) = config.secret(&o.name) else {
            continue;
        };
        match &o.result {
            Ok(_) => {}
            Err(e) if super::is_missing(e.kind) && writable(config, entry) => todo.push(entry),
            Err(e) if super::is_missing(e.kind) => other.push(
                Diagnostic::warning(
                    "put::read_only",
                    format!(
                        "{} is not stored, and provider `{}` ({}) is read-only for kz",
                        entry.name, entry.provider, entry.ty.name
                    ),
                )
                .secret(&entry.name)
                .help(format!(
                    "store it with the `{}` backend's own tools",
                    entry.ty.name
                )),
            ),
            Err(e) => failed.push((entry, e)),
        }
    }
    // A problem several secrets share (the store's key is missing) is listed once.
    for mut d in crate::context::provider_diags(&failed) {
        d.severity = kz_config::Severity::Warning;
        other.push(d);
    }
    if todo.is_empty() {
        ctx.out.all(&other);
        ctx.out
            .note("nothing to store: every writable secret is present");
        return Ok(if other.is_empty() {
            exit::OK
        } else {
            exit::ERROR
        });
    }
    if !std::io::stdin().is_terminal() {
        return Err(Failure::usage(
            format!(
                "{} secret(s) are missing but there is no terminal to prompt on",
                todo.len()
            ),
            "run kz put --missing in a terminal, or kz put NAME --stdin for each",
        ));
    }
    for entry in todo {
        let value = prompt_value(&entry.name)?;
        store(ctx, config, entry, &value)?;
    }
    ctx.out.all(&other);
    Ok(if other.is_empty() {
        exit::OK
    } else {
        exit::ERROR
    })
}
