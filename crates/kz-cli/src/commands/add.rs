//! `kz add`: map a variable to a reference, validating both before the file is touched, and
//! keeping the file's formatting and comments.

use std::io::IsTerminal;

use kz_config::{Diagnostic, LOCAL_FILE, PROJECT_FILE, catalog, reference};

use crate::cli::AddArgs;
use crate::context::{Ctx, project_name};
use crate::edit::{self, NewEntry};
use crate::report::{CmdResult, Failure, exit};

/// Runs the command.
pub fn run(ctx: &Ctx, mut args: AddArgs) -> CmdResult {
    for (old, new) in [
        ("--name", "NAME"),
        ("--resolver", "--provider"),
        ("--reference", "--ref"),
    ] {
        let used = match old {
            "--name" => args.old_name.is_some(),
            "--resolver" => args.old_resolver.is_some(),
            _ => args.old_reference.is_some(),
        };
        if used {
            ctx.out.note(&format!("`{old}` is deprecated: use {new}"));
        }
    }
    args.name = args.name.or(args.old_name.take());
    args.provider = args.provider.or(args.old_resolver.take());
    args.reference = args.reference.or(args.old_reference.take());

    let discovered = kz_config::discover::discover(&ctx.start_dir(), ctx.config_file().as_deref())?;
    let interactive = std::io::stdin().is_terminal() && std::io::stderr().is_terminal();
    let name = match args.name.clone() {
        Some(n) => n,
        None if interactive => prompt("variable name", None)?,
        None => {
            return Err(Failure::usage(
                "no variable name given",
                "kz add NAME [--provider P --ref R]",
            ));
        }
    };
    if !reference::is_env_name(&name) {
        return Err(Failure::one(
            Diagnostic::error(
                "add::name",
                format!("`{name}` is not a valid environment variable name"),
            )
            .secret(&name)
            .help("use letters, digits and `_`, not starting with a digit (e.g. DATABASE_URL)"),
        ));
    }
    // The provider: flag, else interactive choice, else local.
    let config = ctx.load().ok();
    let provider = match args.provider.clone() {
        Some(p) => p,
        None if interactive && args.reference.is_none() => choose_provider(config.as_ref())?,
        // As the file loader reads a short-form ref: a known scheme picks the type, an
        // unknown one (`opp://`) is an error, never silently a ref in the local store.
        None => match args.reference.as_deref().map(reference::infer) {
            Some(Ok((ty, _))) => ty.to_string(),
            Some(Err(reference::InferError::UnknownScheme(s))) => {
                return Err(Failure::one(unknown_scheme(
                    &name,
                    &s,
                    args.reference.as_deref().unwrap_or_default(),
                )));
            }
            _ => "local".to_string(),
        },
    };
    let ty = config
        .as_ref()
        .and_then(|c| c.provider(&provider).map(|p| p.ty))
        .or_else(|| catalog::find(&provider))
        .ok_or_else(|| {
            let d = Diagnostic::error("add::provider", format!("unknown provider `{provider}`"));
            Failure::one(match kz_config::diag::did_you_mean(&provider, catalog::all_names()) {
                Some(s) => d.help(format!("did you mean `{s}`?")),
                None => d.help("use a declared provider instance or a type: local, env, dotenv, age, exec, vault, aws, 1password, …"),
            })
        })?;
    let default_ref = (ty.name == "local").then(|| format!("{}/{name}", project_name(&discovered)));
    let raw_ref = match args.reference.clone() {
        Some(r) => r,
        None if interactive => {
            eprintln!(
                "kz: a `{}` reference looks like `{}` ({})",
                ty.name, ty.example, ty.ref_syntax
            );
            prompt("reference", default_ref.as_deref())?
        }
        None => default_ref.clone().ok_or_else(|| {
            Failure::usage(
                format!("no reference given for a `{}` secret", ty.name),
                format!("add --ref, e.g. --ref {}", ty.example),
            )
        })?,
    };
    let r = reference::strip_own_scheme(ty.name, &raw_ref).map_err(|s| {
        Failure::one(
            Diagnostic::error(
                "add::reference",
                format!("`{raw_ref}` uses `{s}`, which belongs to another provider type"),
            )
            .reference(&raw_ref)
            .help(format!("drop `{s}` or choose the matching provider")),
        )
    })?;
    reference::validate(ty.name, &r).map_err(|m| {
        Failure::one(
            Diagnostic::error("add::reference", m)
                .secret(&name)
                .reference(&raw_ref)
                .help(format!(
                    "a `{}` reference looks like `{}` ({})",
                    ty.name, ty.example, ty.ref_syntax
                )),
        )
    })?;
    for h in &args.hosts {
        kz_config::HostPattern::parse(h).map_err(|m| {
            Failure::one(
                Diagnostic::error("add::hosts", m).secret(&name).help(
                    "a host pattern is `api.example.com`, `*.example.com` or `localhost:8443`",
                ),
            )
        })?;
    }
    let field = match args.field.clone() {
        Some(f) => Some(f),
        None if interactive && args.reference.is_none() && offers_fields(ty) => {
            Some(prompt("field (empty for the whole value)", Some(""))?).filter(|f| !f.is_empty())
        }
        None => None,
    };
    let file = if args.local {
        discovered.dir.join(LOCAL_FILE)
    } else {
        discovered
            .project
            .clone()
            .unwrap_or_else(|| discovered.dir.join(PROJECT_FILE))
    };
    let env = ctx.global.env.as_deref();
    if !args.force && edit::has_secret(&file, env, &name)? {
        return Err(Failure::one(
            Diagnostic::error(
                "add::exists",
                format!("`{name}` is already mapped in `{}`", file.display()),
            )
            .in_file(&file)
            .secret(&name)
            .help("pass --force to replace the mapping, or `kz rm` it first"),
        ));
    }
    let entry = NewEntry {
        provider,
        reference: r,
        field,
        hosts: args.hosts.clone(),
        allow_empty: false,
    };
    let before = edit::add_secrets(&file, env, &[(name.clone(), entry)])?;
    // The whole configuration must still load; otherwise put the file back.
    if let Err(f) = ctx.load() {
        edit::restore(&file, before.as_deref());
        return Err(f);
    }
    let section = env.map_or_else(|| "[secrets]".to_string(), |e| format!("[{e}.secrets]"));
    ctx.out
        .note(&format!("mapped {name} in {section} of {}", file.display()));
    if ty.can_write(&|o| {
        config
            .as_ref()
            .and_then(|c| c.provider(ty.name))
            .is_some_and(|p| p.option(o).is_some())
    }) {
        ctx.out
            .note(&format!("store its value with `kz put {name}`"));
    }
    Ok(exit::OK)
}

/// The error for a ref whose `scheme://` no provider type owns, with the closest known scheme.
fn unknown_scheme(name: &str, scheme: &str, raw_ref: &str) -> Diagnostic {
    let d = Diagnostic::error(
        "add::reference",
        format!("unknown reference scheme `{scheme}` in `{raw_ref}`"),
    )
    .secret(name)
    .reference(raw_ref);
    let known = reference::SCHEMES.iter().map(|s| s.prefix);
    match kz_config::diag::did_you_mean(scheme, known) {
        Some(s) => d.help(format!(
            "did you mean `{s}`? (known schemes: {}; or name the type with --provider)",
            reference::known_schemes()
        )),
        None => d.help(format!(
            "use a known scheme ({}) or name the type with --provider",
            reference::known_schemes()
        )),
    }
}

/// Whether the interactive `kz add` asks for a `field`: only for types whose values are
/// documents with members (a JSON secret, a Vault KV map, a plugin's answer). A `local`, `env`,
/// `dotenv` or `keychain` value is one string, and a 1Password ref names its field itself.
fn offers_fields(ty: &catalog::ProviderType) -> bool {
    !matches!(
        ty.name,
        "local" | "env" | "dotenv" | "keychain" | "1password"
    )
}

fn prompt(what: &str, default: Option<&str>) -> Result<String, Failure> {
    let mut p = dialoguer::Input::<String>::new().with_prompt(what);
    if let Some(d) = default {
        p = p.default(d.to_string()).allow_empty(d.is_empty());
    }
    p.interact_text().map_err(|e| {
        Failure::msg(
            "add::prompt",
            format!("cannot read the answer: {e}"),
            "pass the values as flags instead",
        )
    })
}

fn choose_provider(config: Option<&kz_config::Config>) -> Result<String, Failure> {
    let mut choices: Vec<(String, String)> = Vec::new();
    if let Some(c) = config {
        for p in c.providers.iter().filter(|p| p.declared) {
            choices.push((
                p.name.clone(),
                format!("{} (configured {})", p.name, p.ty.name),
            ));
        }
    }
    for t in catalog::TYPES {
        if !choices.iter().any(|(n, _)| n == t.name) {
            choices.push((t.name.to_string(), format!("{}: {}", t.name, t.summary)));
        }
    }
    let labels: Vec<&str> = choices.iter().map(|(_, l)| l.as_str()).collect();
    let i = dialoguer::Select::new()
        .with_prompt("provider")
        .items(&labels)
        .default(0)
        .interact()
        .map_err(|e| {
            Failure::msg(
                "add::prompt",
                format!("cannot read the answer: {e}"),
                "pass --provider instead",
            )
        })?;
    choices
        .get(i)
        .map(|(n, _)| n.clone())
        .ok_or_else(|| Failure::msg("add::prompt", "no provider chosen", "pass --provider"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn field_is_offered_only_for_types_with_members() {
        let offered: Vec<&str> = catalog::TYPES
            .iter()
            .filter(|t| offers_fields(t))
            .map(|t| t.name)
            .collect();
        for t in ["local", "env", "dotenv", "keychain", "1password"] {
            assert!(!offered.contains(&t), "{t} has no fields");
        }
        for t in ["aws", "hashicorp", "gcp", "exec"] {
            assert!(offered.contains(&t), "{t} has fields");
        }
    }
}
