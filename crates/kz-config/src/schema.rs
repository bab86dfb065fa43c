//! Schema checks shared by every front-end of the positioned tree (`.keyzero.toml` in
//! [`crate::load`], the team server's bundle YAML in `kz-bundle`): one provider-option check for
//! both file formats, and the diagnostics for unknown keys and wrong types.

use crate::catalog::{self, Kind};
use crate::diag::{Diagnostic, Pos, did_you_mean};
use crate::hosts::parse_duration;
use crate::model::{OptionValue, ProviderInstance, Role};
use crate::tree::{Entry, Val};

/// `unknown key`, with a "did you mean" among `known`.
pub fn unknown_key(e: &Entry, path: &str, known: &[&str]) -> Diagnostic {
    let mut d = Diagnostic::error("config::unknown_key", format!("unknown key `{path}`"))
        .at(&e.key_pos)
        .key(path);
    d = match did_you_mean(&e.key, known.iter().copied()) {
        Some(s) => d.help(format!("did you mean `{s}`?")),
        None => d.help(format!("the keys allowed here are: {}", known.join(", "))),
    };
    d
}

/// `path` must be `want`.
pub fn type_error(e: &Entry, path: &str, want: &str) -> Diagnostic {
    Diagnostic::error(
        "config::type",
        format!("`{path}` must be {want}, found {}", e.node.val.type_name()),
    )
    .at(&e.node.pos)
    .key(path)
    .help(format!("write `{}` as {want}", e.key))
}

/// Whether the entry's value has the shape `kind` asks for.
pub fn check_kind(e: &Entry, path: &str, kind: Kind) -> Result<(), Diagnostic> {
    let ok = match (kind, &e.node.val) {
        (Kind::Str, Val::Str(_))
        | (Kind::Bool, Val::Bool(_))
        | (Kind::StrOrTable, Val::Str(_) | Val::Table(_)) => true,
        (Kind::Int, Val::Int(i)) => *i > 0,
        (Kind::Duration, Val::Str(s)) => {
            return parse_duration(s)
                .map(drop)
                .map_err(|m| bad_value(e, path, &m));
        }
        (Kind::Duration, Val::Int(i)) => *i >= 0,
        (Kind::Duration, Val::Float(f)) => *f >= 0.0 && f.is_finite(),
        (Kind::StrList, Val::Array(a)) => a.iter().all(|n| n.as_str().is_some()),
        (Kind::StrOrList, Val::Str(_)) => true,
        (Kind::StrOrList, Val::Array(a)) => a.iter().all(|n| n.as_str().is_some()),
        (Kind::Scalar, Val::Str(_) | Val::Int(_) | Val::Float(_) | Val::Bool(_)) => true,
        _ => false,
    };
    if ok {
        return Ok(());
    }
    let want = match kind {
        Kind::Str => "a string",
        Kind::Bool => "a boolean (true or false)",
        Kind::Int => "a positive integer",
        Kind::Duration => "a duration such as \"10s\" or a number of seconds",
        Kind::StrList => "a list of strings",
        Kind::StrOrList => "a string or a list of strings",
        Kind::StrOrTable => "a string or a table",
        Kind::Scalar => "a string, number or boolean",
    };
    Err(type_error(e, path, want))
}

/// A value of the right type that is still wrong (`msg` says how).
pub fn bad_value(e: &Entry, path: &str, msg: &str) -> Diagnostic {
    Diagnostic::error("config::value", format!("`{path}`: {msg}"))
        .at(&e.node.pos)
        .key(path)
}

/// Checks one provider instance (`[providers.NAME]` of a config file, `backends.NAME` of a
/// bundle) against the catalog: its type (default: the instance name), every option's name and
/// shape, credentials written literally where `role` refuses them, Vault `auth`. `section` is the
/// key path of the table holding the instances. `None` when the type is unknown.
pub fn check_provider(
    name: &str,
    pos: &Pos,
    options: &[(Entry, Role)],
    section: &str,
    diags: &mut Vec<Diagnostic>,
) -> Option<ProviderInstance> {
    let type_entry = options.iter().find(|(e, _)| e.key == "type");
    let type_name = type_entry
        .and_then(|(e, _)| e.node.as_str())
        .unwrap_or(name);
    let Some(ty) = catalog::find(type_name) else {
        let (pos, path) = match type_entry {
            Some((e, _)) => (&e.node.pos, format!("{section}.{}.type", name)),
            None => (pos, format!("{section}.{}", name)),
        };
        let mut d = Diagnostic::error(
            "config::unknown_provider_type",
            format!("unknown provider type `{type_name}`"),
        )
        .at(pos)
        .key(path);
        d = match did_you_mean(type_name, catalog::all_names()) {
            Some(s) => d.help(format!("did you mean `{s}`?")),
            None if type_entry.is_none() => d.help(format!(
                "set `type = \"…\"` in [{section}.{}]; known types: {}",
                name,
                catalog::TYPES
                    .iter()
                    .map(|t| t.name)
                    .collect::<Vec<_>>()
                    .join(", ")
            )),
            None => d.help(format!(
                "known types: {}",
                catalog::TYPES
                    .iter()
                    .map(|t| t.name)
                    .collect::<Vec<_>>()
                    .join(", ")
            )),
        };
        diags.push(d);
        return None;
    };
    let mut checked = Vec::new();
    for (e, role) in options {
        let path = format!("{section}.{}.{}", name, e.key);
        let Some(spec) = ty.option(&e.key) else {
            let mut d = unknown_key(e, &path, &[]);
            d.code = "config::unknown_option";
            d.message = format!("unknown option `{}` for a `{}` provider", e.key, ty.name);
            d = match did_you_mean(&e.key, ty.option_names()) {
                Some(s) => d.help(format!("did you mean `{s}`?")),
                None => d.help(format!(
                    "options of `{}`: {}",
                    ty.name,
                    ty.option_names().collect::<Vec<_>>().join(", ")
                )),
            };
            diags.push(d);
            continue;
        };
        if let Err(d) = check_kind(e, &path, spec.kind) {
            diags.push(d);
            continue;
        }
        if spec.credential && role.refuses_credentials() {
            diags.push(credential_refused(e, &path, *role));
            continue;
        }
        if e.key == "offline" && !matches!(e.node.as_str(), Some("fallback" | "never")) {
            diags.push(
                bad_value(e, &path, "must be \"fallback\" or \"never\"")
                    .help("write offline = \"fallback\" or offline = \"never\""),
            );
            continue;
        }
        if e.key == "auth" {
            check_vault_auth(e, &path, *role, diags);
        }
        if ty.name == "keyzero"
            && e.key == "token_source"
            && let Some(Err(m)) = e.node.as_str().map(catalog::check_keyzero_token_source)
        {
            diags.push(
                bad_value(e, &path, &m)
                    .help(format!("use one of: {}", catalog::KEYZERO_TOKEN_SOURCES)),
            );
            continue;
        }
        if e.key != "type" {
            checked.push((
                e.key.clone(),
                OptionValue {
                    node: e.node.clone(),
                    role: *role,
                },
            ));
        }
    }
    Some(ProviderInstance {
        name: name.to_string(),
        ty,
        options: checked,
        declared: true,
        pos: Some(pos.clone()),
    })
}

fn credential_refused(e: &Entry, path: &str, role: Role) -> Diagnostic {
    let file = if role == Role::Bundle {
        "a bundle"
    } else {
        "the committed .keyzero.toml"
    };
    Diagnostic::error(
        "config::credential_in_project_file",
        format!("`{path}` holds a credential, which is refused in {file}"),
    )
    .at(&e.key_pos)
    .key(path)
    .help(if role == Role::Bundle {
        format!(
            "name it instead: `{k}_env: VARIABLE` or `{k}_file: PATH`, read by the server when it starts",
            k = e.key
        )
    } else {
        format!(
            "move it to .keyzero.local.toml or the global file, or use `{k}_env = \"VARIABLE\"` or `{k}_file = \"PATH\"`",
            k = e.key
        )
    })
}

fn check_vault_auth(e: &Entry, path: &str, role: Role, diags: &mut Vec<Diagnostic>) {
    const METHODS: &[&str] = &["token", "approle", "kubernetes", "jwt"];
    let method = match &e.node.val {
        Val::Str(s) => {
            if !METHODS.contains(&s.as_str()) {
                diags.push(
                    bad_value(e, path, &format!("unknown auth method `{s}`"))
                        .help(format!("use one of: {}", METHODS.join(", "))),
                );
            }
            return;
        }
        Val::Table(t) => t
            .iter()
            .find(|x| x.key == "method")
            .and_then(|x| x.node.as_str()),
        _ => return,
    };
    let Some(method) = method.filter(|m| METHODS.contains(m)) else {
        diags.push(
            Diagnostic::error("config::value", format!("`{path}` needs `method`, one of {}", METHODS.join(", ")))
                .at(&e.node.pos)
                .key(path)
                .help("e.g. auth = { method = \"approle\", role_id = \"…\", secret_id_env = \"VAULT_SECRET_ID\" }"),
        );
        return;
    };
    let allowed: &[&str] = match method {
        "approle" => &[
            "method",
            "mount",
            "role_id",
            "secret_id",
            "secret_id_env",
            "secret_id_file",
        ],
        "kubernetes" => &["method", "mount", "role", "token_file"],
        "jwt" => &["method", "mount", "role", "token_env", "token_file"],
        _ => &["method", "token", "token_env", "token_file"],
    };
    for x in e.node.as_table().unwrap_or_default() {
        let p = format!("{path}.{}", x.key);
        if !allowed.contains(&x.key.as_str()) {
            diags.push(unknown_key(x, &p, allowed));
        } else if x.node.as_str().is_none() {
            diags.push(type_error(x, &p, "a string"));
        } else if (x.key == "secret_id" || x.key == "token") && role.refuses_credentials() {
            diags.push(credential_refused(x, &p, role));
        }
    }
}
