//! Trust records (`kz allow` / `kz deny`), as direnv keeps them: a project's configuration is
//! trusted when a record for its directory holds the SHA-256 of its current files. Any edit of
//! `.keyzero.toml` or `.keyzero.local.toml` revokes trust until `kz allow` is run again. Also
//! what an untrusted configuration may not reach ([`untrusted_reach`]).

use std::path::{Path, PathBuf};

use kz_config::discover::hex;
use kz_config::{Config, Diagnostic, Discovered, Pos, ProviderInstance, SecretEntry};
use sha2::{Digest, Sha256};

use crate::context::Paths;

fn record_path(paths: &Paths, dir: &Path) -> PathBuf {
    let key = hex(&Sha256::digest(dir.as_os_str().as_encoded_bytes()));
    paths.trust_dir().join(key)
}

/// Whether the project's files, as they are now, were trusted with `kz allow`.
pub fn is_trusted(paths: &Paths, d: &Discovered) -> bool {
    is_trusted_hash(paths, d, &d.content_hash())
}

/// Same, with the content hash already computed.
pub fn is_trusted_hash(paths: &Paths, d: &Discovered, hash: &str) -> bool {
    std::fs::read_to_string(record_path(paths, &d.dir)).is_ok_and(|text| {
        text.lines().nth(1) == Some(hash) && text.lines().next() == Some(&*d.dir.to_string_lossy())
    })
}

/// Records trust in the project's current files.
pub fn allow(paths: &Paths, d: &Discovered) -> std::io::Result<PathBuf> {
    let dir = paths.trust_dir();
    std::fs::create_dir_all(&dir)?;
    set_private(&paths.state_dir());
    set_private(&dir);
    let p = record_path(paths, &d.dir);
    let text = format!("{}\n{}\n", d.dir.display(), d.content_hash());
    kz_providers::fsio::write_atomic(&p, text.as_bytes(), 0o600)?;
    Ok(p)
}

/// Removes the trust record; `Ok(false)` when there was none.
pub fn deny(paths: &Paths, d: &Discovered) -> std::io::Result<bool> {
    match std::fs::remove_file(record_path(paths, &d.dir)) {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(e),
    }
}

fn set_private(dir: &Path) {
    use std::os::unix::fs::PermissionsExt;
    let _ = std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700));
}

/// What an untrusted project configuration may not reach or set, for the secrets a command
/// uses (`config.md`, "Trust"): variables that change which code programs load or run, `local`
/// references outside the project's own namespace, and files outside the project tree
/// (`dotenv` files, age files, a `local` store `path`), with `..` and symlinks resolved before
/// the check. Empty when nothing is out of bounds.
pub fn untrusted_reach(
    config: &Config,
    secrets: &[&SecretEntry],
    home: Option<&Path>,
) -> Vec<Diagnostic> {
    let mut out = Vec::new();
    let root = &config.discovered.dir;
    let project = config.project_name();
    let how = "review the files, then run `kz allow` to trust them (or pass --trust / KEYZERO_TRUST=1 for one invocation)";
    for s in secrets {
        for var in s.produces() {
            if kz_config::trust::changes_code_loading(&var) {
                out.push(
                    Diagnostic::error(
                        "trust::code_loading_variable",
                        format!(
                            "`{var}` changes which code programs load or run, and this configuration is not trusted: a repository could use it to run its code inside your command"
                        ),
                    )
                    .at(&s.pos)
                    .secret(&s.name)
                    .help(format!("rename the secret if that is not its purpose; otherwise {how}")),
                );
            } else if kz_config::trust::changes_credential_route(&var) {
                out.push(
                    Diagnostic::error(
                        "trust::credential_route_variable",
                        format!(
                            "`{var}` changes where programs send credentials, which credentials they use or which TLS certificates they trust, and this configuration is not trusted"
                        ),
                    )
                    .at(&s.pos)
                    .secret(&s.name)
                    .help(format!("rename the secret if that is not its purpose; otherwise {how}")),
                );
            }
        }
        let Some(inst) = config.provider(&s.provider) else {
            continue;
        };
        if needs_trust_type(inst.ty.name) {
            out.push(
                Diagnostic::error(
                    "trust::ambient_credentials",
                    format!(
                        "`{}` is read through provider `{}` ({}), which uses your own credentials and stores, and this configuration is not trusted: a repository could name any of your secrets",
                        s.reference, inst.name, inst.ty.name
                    ),
                )
                .at(&s.pos)
                .secret(&s.name)
                .reference(&s.reference)
                .help(format!("untrusted projects reach only `local` refs of their own namespace, `dotenv`/`env` values and age files inside the tree; {how}")),
            );
            continue;
        }
        match inst.ty.name {
            "local" => {
                let own = format!("{project}/");
                if !s.reference.starts_with(&own) {
                    out.push(
                        Diagnostic::error(
                            "trust::foreign_local_ref",
                            format!(
                                "`{}` is outside this project's namespace `{project}/` in the shared local store, and this configuration is not trusted",
                                s.reference
                            ),
                        )
                        .at(&s.pos)
                        .secret(&s.name)
                        .reference(&s.reference)
                        .help(format!("use a ref under `{project}/`; if this project really needs another project's secret, {how}")),
                    );
                }
                if let Some(o) = inst.option("path").filter(|o| o.role.is_project_level())
                    && let Some(p) = inst.opt_path("path", home)
                {
                    out.extend(outside_tree(
                        root,
                        &p,
                        &o.node.pos,
                        "the local store `path`",
                        how,
                    ));
                }
            }
            "dotenv" => {
                let set = inst.option("path");
                if set.is_none_or(|o| o.role.is_project_level()) {
                    let p = inst
                        .opt_path("path", home)
                        .unwrap_or_else(|| root.join(".env"));
                    let pos = set.map_or(&s.pos, |o| &o.node.pos);
                    out.extend(outside_tree(root, &p, pos, "the dotenv file", how));
                }
            }
            "age" => {
                let p = Path::new(&s.reference);
                let p = if p.is_absolute() {
                    p.to_path_buf()
                } else {
                    root.join(p)
                };
                out.extend(
                    outside_tree(root, &p, &s.pos, "the age file", how)
                        .map(|d| d.secret(&s.name).reference(&s.reference)),
                );
            }
            _ => {}
        }
    }
    // One error per problem: several secrets of one dotenv instance share its file.
    let mut unique: Vec<Diagnostic> = Vec::with_capacity(out.len());
    for d in out {
        if !unique.contains(&d) {
            unique.push(d);
        }
    }
    unique
}

/// The record of which project directory owns the namespace `ns` of a `local` store (its first
/// writer): `$XDG_DATA_HOME/keyzero/namespaces/<sha256(store NUL ns)>`, holding the directory.
fn namespace_record(paths: &Paths, store: &Path, ns: &str) -> PathBuf {
    let store = std::fs::canonicalize(store).unwrap_or_else(|_| store.to_path_buf());
    let mut key = store.as_os_str().as_encoded_bytes().to_vec();
    key.push(0);
    key.extend_from_slice(ns.as_bytes());
    paths
        .state_dir()
        .join("namespaces")
        .join(hex(&Sha256::digest(&key)))
}

fn local_store(paths: &Paths, inst: &ProviderInstance) -> PathBuf {
    inst.opt_path("path", paths.home.as_deref())
        .unwrap_or_else(|| paths.data_home.join("keyzero").join("store.age"))
}

fn canonical_dir(config: &Config) -> String {
    std::fs::canonicalize(&config.discovered.dir)
        .unwrap_or_else(|_| config.discovered.dir.clone())
        .to_string_lossy()
        .into_owned()
}

/// After a write of `entry` into a `local` store under the project's own namespace: records
/// this project directory as the namespace's owner when no project has claimed it yet (or,
/// `trusted`, moves the claim here). Best effort: a failure to record is said, not fatal.
pub fn claim_namespace(paths: &Paths, config: &Config, entry: &SecretEntry, trusted: bool) {
    let Some(inst) = config.provider(&entry.provider) else {
        return;
    };
    let ns = config.project_name();
    if inst.ty.name != "local" || !entry.reference.starts_with(&format!("{ns}/")) {
        return;
    }
    let rec = namespace_record(paths, &local_store(paths, inst), &ns);
    if !trusted && std::fs::symlink_metadata(&rec).is_ok() {
        return;
    }
    if let Some(dir) = rec.parent() {
        let _ = std::fs::create_dir_all(dir);
        set_private(dir);
    }
    let text = format!(
        "{}
",
        canonical_dir(config)
    );
    let _ = kz_providers::fsio::write_atomic(&rec, text.as_bytes(), 0o600);
}

/// An error when `entry` reads the project's namespace of a `local` store that another
/// project directory owns (a repository's `services/api/` is not your project `api`).
pub fn foreign_namespace_owner(
    paths: &Paths,
    config: &Config,
    entry: &SecretEntry,
) -> Option<Diagnostic> {
    let inst = config.provider(&entry.provider)?;
    let ns = config.project_name();
    if inst.ty.name != "local" || !entry.reference.starts_with(&format!("{ns}/")) {
        return None;
    }
    let text =
        std::fs::read_to_string(namespace_record(paths, &local_store(paths, inst), &ns)).ok()?;
    let owner = text.lines().next()?;
    let here = canonical_dir(config);
    if owner == here {
        return None;
    }
    Some(
        Diagnostic::error(
            "trust::namespace_owner",
            format!(
                "the namespace `{ns}/` of the local store belongs to the project `{owner}`, not to `{here}` (same directory name), and this configuration is not trusted"
            ),
        )
        .at(&entry.pos)
        .secret(&entry.name)
        .reference(&entry.reference)
        .help("if this directory really is that project (moved or renamed), review its files and run `kz allow` (or pass --trust); a trusted `kz put` here moves the namespace to it"),
    )
}

/// Provider types that spend the user's ambient credentials or read the user's own stores
/// (everything but the project's own `local` namespace, `dotenv`, `env` and `age` files in the
/// tree): an untrusted project may use none of them.
pub fn needs_trust_type(ty: &str) -> bool {
    !matches!(ty, "local" | "dotenv" | "env" | "age")
}

/// Errors for project configuration files that are symlinks leaving the project tree (a
/// committed `.keyzero.local.toml -> ../other/.keyzero.local.toml` would pull in another
/// project's settings).
pub fn config_files_outside(d: &Discovered) -> Vec<Diagnostic> {
    [&d.project, &d.local]
        .into_iter()
        .flatten()
        .filter(|p| !is_inside(&d.dir, p))
        .map(|p| {
            Diagnostic::error(
                "trust::outside_project",
                format!(
                    "the configuration file `{}` leads outside the project directory `{}` (it is a symlink), and this configuration is not trusted",
                    p.display(),
                    d.dir.display()
                ),
            )
            .in_file(p)
            .help("replace the link with a regular file; if it is yours, review it, then run `kz allow` (or pass --trust / KEYZERO_TRUST=1 for one invocation)")
        })
        .collect()
}

/// An error when `path` (after resolving `..` and symlinks) is not inside `root`.
fn outside_tree(root: &Path, path: &Path, pos: &Pos, what: &str, how: &str) -> Option<Diagnostic> {
    if is_inside(root, path) {
        return None;
    }
    Some(
        Diagnostic::error(
            "trust::outside_project",
            format!(
                "{what} `{}` is outside the project directory `{}` (after resolving `..` and symlinks), and this configuration is not trusted",
                path.display(),
                root.display()
            ),
        )
        .at(pos)
        .help(format!("keep the file inside the project; if it must live elsewhere, {how}")),
    )
}

/// Whether `path` is inside `root` once both are resolved. A path that does not exist (yet) is
/// resolved through its nearest existing ancestor, and the rest must not climb with `..`.
pub fn is_inside(root: &Path, path: &Path) -> bool {
    use std::path::Component;
    let Ok(root) = std::fs::canonicalize(root) else {
        return false;
    };
    let mut existing = path.to_path_buf();
    let mut rest: Vec<std::ffi::OsString> = Vec::new();
    let base = loop {
        match std::fs::canonicalize(&existing) {
            Ok(c) => break c,
            Err(_) => {
                // A dangling symlink is not resolved by canonicalize: refuse it outright.
                if std::fs::symlink_metadata(&existing).is_ok() {
                    return false;
                }
                match existing.components().next_back() {
                    Some(Component::Normal(n)) => rest.push(n.to_os_string()),
                    _ => return false,
                }
                if !existing.pop() {
                    return false;
                }
            }
        }
    };
    let full = rest.iter().rev().fold(base, |p, n| p.join(n));
    full.starts_with(&root)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn inside_resolves_dot_dot_and_symlinks_first() {
        let t = tempfile::tempdir().unwrap();
        let root = t.path().join("proj");
        std::fs::create_dir_all(root.join("sub")).unwrap();
        std::fs::write(t.path().join("out.env"), "").unwrap();
        std::fs::write(root.join("in.env"), "").unwrap();
        assert!(is_inside(&root, &root.join("in.env")));
        assert!(is_inside(&root, &root.join("sub/../in.env")));
        assert!(is_inside(&root, &root.join("sub/not-yet.env")));
        assert!(!is_inside(&root, &root.join("../out.env")));
        assert!(!is_inside(&root, &root.join("sub/../../out.env")));
        assert!(!is_inside(&root, &root.join("missing/../../out.env")));
        assert!(!is_inside(&root, &t.path().join("out.env")));
        std::os::unix::fs::symlink(t.path().join("out.env"), root.join("link.env")).unwrap();
        assert!(!is_inside(&root, &root.join("link.env")));
        std::os::unix::fs::symlink(t.path(), root.join("up")).unwrap();
        assert!(!is_inside(&root, &root.join("up/new.env")));
        std::os::unix::fs::symlink(t.path().join("nowhere"), root.join("dangling")).unwrap();
        assert!(!is_inside(&root, &root.join("dangling")));
    }
}
