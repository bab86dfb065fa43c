//! Format-preserving edits of configuration files (`kz add`, `kz rm`, `kz import`): comments,
//! order and spacing of everything not touched stay as they were. Files are replaced
//! atomically.

use std::path::Path;

use kz_config::Diagnostic;
use toml_edit::{DocumentMut, InlineTable, Item, Table};

/// A secret entry to write: `NAME = { provider = "…", ref = "…", … }`.
#[derive(Debug, Default)]
pub struct NewEntry {
    /// Provider instance or type.
    pub provider: String,
    /// Reference.
    pub reference: String,
    /// Field.
    pub field: Option<String>,
    /// Blind-mode hosts.
    pub hosts: Vec<String>,
    /// `allow_empty = true` (an empty value is valid).
    pub allow_empty: bool,
}

fn read_doc(path: &Path) -> Result<DocumentMut, Diagnostic> {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
        Err(e) => {
            return Err(Diagnostic::error(
                "edit::io",
                format!("cannot read `{}`: {e}", path.display()),
            )
            .in_file(path)
            .help("check the file's permissions"));
        }
    };
    text.parse::<DocumentMut>().map_err(|e| {
        Diagnostic::error(
            "config::syntax",
            format!(
                "cannot edit `{}`: invalid TOML: {}",
                path.display(),
                e.message().trim()
            ),
        )
        .in_file(path)
        .help("fix the file's syntax first (`kz validate` shows where)")
    })
}

fn section<'d>(doc: &'d mut DocumentMut, env: Option<&str>, create: bool) -> Option<&'d mut Table> {
    let root = doc.as_table_mut();
    let parent = match env {
        None => root,
        Some(e) => {
            if !root.contains_key(e) {
                if !create {
                    return None;
                }
                let mut t = Table::new();
                t.set_implicit(true);
                root.insert(e, Item::Table(t));
            }
            root.get_mut(e)?.as_table_mut()?
        }
    };
    if !parent.contains_key("secrets") {
        if !create {
            return None;
        }
        parent.insert("secrets", Item::Table(Table::new()));
    }
    parent.get_mut("secrets")?.as_table_mut()
}

/// Whether `name` is mapped in that section of the file.
pub fn has_secret(path: &Path, env: Option<&str>, name: &str) -> Result<bool, Diagnostic> {
    let mut doc = read_doc(path)?;
    Ok(section(&mut doc, env, false).is_some_and(|t| t.contains_key(name)))
}

/// Adds (or with `replace`, replaces) a mapping. Returns the previous text of the file, so
/// the caller can roll back if the result does not validate.
pub fn add_secrets(
    path: &Path,
    env: Option<&str>,
    entries: &[(String, NewEntry)],
) -> Result<Option<String>, Diagnostic> {
    let before = std::fs::read_to_string(path).ok();
    let mut doc = read_doc(path)?;
    let Some(t) = section(&mut doc, env, true) else {
        let s = env.map_or_else(|| "secrets".to_string(), |e| format!("{e}.secrets"));
        return Err(Diagnostic::error(
            "edit::shape",
            format!("`{s}` in `{}` is not a table", path.display()),
        )
        .in_file(path)
        .help(format!("make `{s}` a table ([{s}]) and try again")));
    };
    for (name, e) in entries {
        let mut it = InlineTable::new();
        it.insert("provider", e.provider.as_str().into());
        it.insert("ref", e.reference.as_str().into());
        if let Some(f) = &e.field {
            it.insert("field", f.as_str().into());
        }
        if !e.hosts.is_empty() {
            let mut arr = toml_edit::Array::new();
            for h in &e.hosts {
                arr.push(h.as_str());
            }
            it.insert("hosts", arr.into());
        }
        if e.allow_empty {
            it.insert("allow_empty", true.into());
        }
        t.insert(name, toml_edit::value(it));
    }
    write(path, &doc.to_string())?;
    Ok(before)
}

/// Removes a mapping; `Ok(false)` when it was not there.
pub fn remove_secret(path: &Path, env: Option<&str>, name: &str) -> Result<bool, Diagnostic> {
    let mut doc = read_doc(path)?;
    let removed = section(&mut doc, env, false).is_some_and(|t| t.remove(name).is_some());
    if removed {
        write(path, &doc.to_string())?;
    }
    Ok(removed)
}

/// Restores a file's previous text (`None`: it did not exist).
pub fn restore(path: &Path, before: Option<&str>) {
    let _ = match before {
        Some(t) => write(path, t).map_err(drop),
        None => std::fs::remove_file(path).map_err(drop),
    };
}

/// Writes a file atomically ([`kz_providers::fsio::write_atomic`]: an exclusive temporary file
/// with an unpredictable name, never a symlink followed), keeping its permissions (0644 for a
/// new config file).
pub fn write(path: &Path, text: &str) -> Result<(), Diagnostic> {
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(path)
        .map(|m| m.permissions().mode() & 0o777)
        .unwrap_or(0o644);
    kz_providers::fsio::write_atomic(path, text.as_bytes(), mode).map_err(|e| {
        Diagnostic::error(
            "edit::io",
            format!("cannot write `{}`: {e}", path.display()),
        )
        .in_file(path)
        .help("check the directory's permissions")
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rewrite_never_follows_a_planted_link() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join(".keyzero.toml");
        std::fs::write(&p, "[secrets]\n").unwrap();
        let victim = d.path().join("victim");
        std::fs::write(&victim, "untouched").unwrap();
        // The temporary name the old writer used (predictable from the pid).
        std::os::unix::fs::symlink(
            &victim,
            d.path()
                .join(format!(".keyzero.toml.kz-tmp-{}", std::process::id())),
        )
        .unwrap();
        write(&p, "[secrets]\nA = \"env://A\"\n").unwrap();
        assert_eq!(std::fs::read_to_string(&victim).unwrap(), "untouched");
        assert!(std::fs::symlink_metadata(&p).unwrap().file_type().is_file());
    }

    #[test]
    fn keeps_comments_and_creates_sections() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join(".keyzero.toml");
        std::fs::write(&p, "# top comment\n[providers.local]\n# keep me\n\n[secrets]\nA = \"env://A\" # trailing\n").unwrap();
        let e = NewEntry {
            provider: "local".into(),
            reference: "p/B".into(),
            field: None,
            hosts: vec!["api.x.com".into()],
            allow_empty: false,
        };
        add_secrets(&p, None, &[("B".into(), e)]).unwrap();
        add_secrets(
            &p,
            Some("production"),
            &[(
                "C".into(),
                NewEntry {
                    provider: "env".into(),
                    reference: "C".into(),
                    ..Default::default()
                },
            )],
        )
        .unwrap();
        let text = std::fs::read_to_string(&p).unwrap();
        assert!(
            text.contains("# top comment")
                && text.contains("# keep me")
                && text.contains("# trailing"),
            "{text}"
        );
        assert!(
            text.contains("B = { provider = \"local\", ref = \"p/B\", hosts = [\"api.x.com\"] }"),
            "{text}"
        );
        assert!(text.contains("[production.secrets]\nC = "), "{text}");
        assert!(has_secret(&p, Some("production"), "C").unwrap());
        assert!(remove_secret(&p, None, "A").unwrap());
        assert!(!remove_secret(&p, None, "A").unwrap());
        assert!(
            std::fs::read_to_string(&p)
                .unwrap()
                .contains("# top comment")
        );
    }
}
