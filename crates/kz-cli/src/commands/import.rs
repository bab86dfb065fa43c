//! `kz import`: read a `.env` file, map every key and store every value in a writable provider
//! (default `local`, refs `<project>/<KEY>`), so the `.env` file can be deleted. `$VAR` is not
//! expanded. Reports what it stored, never the values.

use kz_config::{Diagnostic, PROJECT_FILE, catalog};

use crate::cli::ImportArgs;
use crate::context::{Ctx, block_on_with_spinner, project_name, provider_diag};
use crate::edit::{self, NewEntry};
use crate::report::{CmdResult, Failure, exit};

/// Runs the command.
pub fn run(ctx: &Ctx, mut args: ImportArgs) -> CmdResult {
    if let Some(f) = args.old_file.take() {
        ctx.out
            .note("`--file` is deprecated: pass the file as an argument");
        args.file = f;
    }
    if let Some(r) = args.old_resolver.take() {
        ctx.out.note("`--resolver` is deprecated: use --provider");
        args.provider = args.provider.or(Some(r));
    }
    let path = ctx.paths.cwd.join(&args.file);
    let text = std::fs::read_to_string(&path).map_err(|e| {
        Failure::one(
            Diagnostic::error(
                "import::read",
                format!("cannot read `{}`: {e}", path.display()),
            )
            .in_file(&path)
            .help("name the .env file to import: kz import path/to/.env"),
        )
    })?;
    let pairs = kz_providers::dotenv::parse(&text).map_err(|e| {
        Failure::one(
            Diagnostic::error(
                "import::syntax",
                format!("`{}`: {}", path.display(), e.message),
            )
            .at(&kz_config::Pos {
                file: path.clone(),
                line: e.line,
                column: 1,
            })
            .help("fix this line of the .env file"),
        )
    })?;
    let config = ctx.load()?;
    let provider = args.provider.clone().unwrap_or_else(|| "local".into());
    let ty = config
        .provider(&provider)
        .map(|p| p.ty)
        .or_else(|| catalog::find(&provider))
        .ok_or_else(|| {
            Failure::msg(
                "import::provider",
                format!("unknown provider `{provider}`"),
                "use --provider with a declared instance or a writable type such as local",
            )
        })?;
    let inst = config.provider(&provider);
    if !ty.can_write(&|o| inst.is_some_and(|p| p.option(o).is_some())) {
        return Err(Failure::msg(
            "import::read_only",
            format!("provider `{provider}` ({}) cannot store values", ty.name),
            "choose a writable provider with --provider (local, age with recipients, …)",
        ));
    }
    let prefix = args
        .prefix
        .clone()
        .unwrap_or_else(|| format!("{}/", project_name(&config.discovered)));
    let env = ctx.global.env.as_deref();
    let file = config
        .discovered
        .project
        .clone()
        .unwrap_or_else(|| config.discovered.dir.join(PROJECT_FILE));
    let mut entries = Vec::new();
    let mut skipped = Vec::new();
    let mut diags = Vec::new();
    let mut empty = Vec::new();
    for (key, value) in &pairs {
        if !kz_config::reference::is_env_name(key) {
            diags.push(
                Diagnostic::error(
                    "import::name",
                    format!("`{key}` is not a valid environment variable name"),
                )
                .secret(key)
                .help("rename it in the .env file"),
            );
        } else if edit::has_secret(&file, env, key)? {
            skipped.push(key.clone());
        } else {
            // `KEY=` is a value too: map it as one, or every `kz run` would fail on it.
            if value.is_empty() {
                empty.push(key.as_str());
            }
            entries.push((
                key.clone(),
                NewEntry {
                    provider: provider.clone(),
                    reference: format!("{prefix}{key}"),
                    field: None,
                    hosts: Vec::new(),
                    allow_empty: value.is_empty(),
                },
            ));
        }
    }
    if !diags.is_empty() {
        return Err(Failure::many(diags));
    }
    if !skipped.is_empty() {
        ctx.out.note(&format!(
            "already mapped, left as they are: {}",
            skipped.join(", ")
        ));
    }
    let names: Vec<&str> = entries.iter().map(|(n, _)| n.as_str()).collect();
    if !empty.is_empty() {
        ctx.out.note(&format!(
            "empty in {}, mapped with allow_empty = true: {}",
            path.display(),
            empty.join(", ")
        ));
    }
    if args.dry_run {
        super::print_out(&format!(
            "would map and store {} secret(s) in `{provider}` ({}): {}\n",
            names.len(),
            ty.name,
            names.join(", ")
        ))?;
        return Ok(exit::OK);
    }
    if entries.is_empty() {
        ctx.out.note("nothing to import");
        return Ok(exit::OK);
    }
    let before = edit::add_secrets(&file, env, &entries)?;
    let config = match ctx.load() {
        Ok(c) => c,
        Err(f) => {
            edit::restore(&file, before.as_deref());
            return Err(f);
        }
    };
    let provider_impl = ctx.instance(&config, &provider)?;
    // The refs are the ones the user chose (`--prefix`), but a directory named like another
    // project must not overwrite that project's namespace.
    let trusted = ctx.trusted(&config);
    if !trusted {
        let owned: Vec<Diagnostic> = pairs
            .iter()
            .filter_map(|(key, _)| config.secret(key).filter(|_| names.contains(&key.as_str())))
            .filter_map(|e| crate::trust::foreign_namespace_owner(&ctx.paths, &config, e))
            .collect();
        if !owned.is_empty() {
            edit::restore(&file, before.as_deref());
            return Err(Failure::many(owned));
        }
    }
    let identity_before = super::put::identity(provider_impl.as_ref());
    let mut stored = Vec::new();
    let mut failures = Vec::new();
    for (key, value) in &pairs {
        let Some(entry) = config.secret(key).filter(|_| names.contains(&key.as_str())) else {
            continue;
        };
        let item = kz_resolve::item_for(entry);
        match block_on_with_spinner(&ctx.out, "storing", provider_impl.write(&item, value))? {
            Ok(()) => {
                crate::trust::claim_namespace(&ctx.paths, &config, entry, trusted);
                stored.push(key.as_str());
            }
            Err(e) => failures.push(provider_diag(entry, &e)),
        }
    }
    ctx.out.note(&format!(
        "mapped {} and stored {} secret(s) in `{provider}` ({}): {}",
        names.len(),
        stored.len(),
        ty.name,
        stored.join(", ")
    ));
    if let Some(now) = super::put::identity(provider_impl.as_ref())
        .filter(|now| Some(now) != identity_before.as_ref())
    {
        ctx.out.note(&super::put::key_created_note(&provider, &now));
    }
    if failures.is_empty() {
        ctx.out.note(&format!(
            "check with `kz status`, then delete {}",
            path.display()
        ));
        Ok(exit::OK)
    } else {
        Err(Failure::many(failures))
    }
}
