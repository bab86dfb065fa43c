//! Finding the configuration files and reading them safely.

use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use crate::diag::Diagnostic;

/// The project file name.
pub const PROJECT_FILE: &str = ".keyzero.toml";
/// The personal override file name.
pub const LOCAL_FILE: &str = ".keyzero.local.toml";

/// Where the configuration of a project is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Discovered {
    /// The project directory (holding the project or local file).
    pub dir: PathBuf,
    /// The project file, when it exists (or was named with `--config`).
    pub project: Option<PathBuf>,
    /// The local override file, when it exists.
    pub local: Option<PathBuf>,
}

impl Discovered {
    /// The project file path, whether or not it exists.
    pub fn project_path(&self) -> PathBuf {
        self.project
            .clone()
            .unwrap_or_else(|| self.dir.join(PROJECT_FILE))
    }

    /// The local file path, whether or not it exists.
    pub fn local_path(&self) -> PathBuf {
        self.local
            .clone()
            .unwrap_or_else(|| self.dir.join(LOCAL_FILE))
    }

    /// SHA-256 over the project and local files' contents (what `kz allow` trusts and what the
    /// shell hook watches). Missing files hash as absent, distinct from empty.
    pub fn content_hash(&self) -> String {
        let mut h = Sha256::new();
        h.update(b"keyzero-config-v1\0");
        for f in [&self.project, &self.local] {
            match f.as_ref().and_then(|p| std::fs::read(p).ok()) {
                Some(bytes) => {
                    h.update(b"1");
                    h.update((bytes.len() as u64).to_le_bytes());
                    h.update(&bytes);
                }
                None => h.update(b"0"),
            }
        }
        hex(&h.finalize())
    }
}

/// Lowercase hex of bytes.
pub fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write;
    bytes
        .iter()
        .fold(String::with_capacity(bytes.len() * 2), |mut s, b| {
            let _ = write!(s, "{b:02x}");
            s
        })
}

/// Finds the project: `explicit` (`--config` / `KEYZERO_CONFIG`) names the project file
/// outright; otherwise walk up from `start` to the first directory holding either file.
pub fn discover(start: &Path, explicit: Option<&Path>) -> Result<Discovered, Diagnostic> {
    if let Some(file) = explicit {
        let file = absolute(start, file);
        if !file.is_file() {
            return Err(Diagnostic::error(
                "config::not_found",
                format!("the configuration file `{}` does not exist", file.display()),
            )
            .in_file(&file)
            .help("check the path given with --config or KEYZERO_CONFIG"));
        }
        let dir = file
            .parent()
            .map_or_else(|| start.to_path_buf(), Path::to_path_buf);
        let local = dir.join(LOCAL_FILE);
        return Ok(Discovered {
            local: local.is_file().then_some(local),
            project: Some(file),
            dir,
        });
    }
    let start = absolute(&std::env::current_dir().unwrap_or_default(), start);
    find_up(&start).ok_or_else(|| {
        Diagnostic::error(
            "config::not_found",
            format!(
                "no {PROJECT_FILE} found in `{}` or any parent directory",
                start.display()
            ),
        )
        .help("run `kz init` to create one here, or use --dir / --config")
    })
}

/// The walk-up alone (used by the shell hook, which must not fail).
pub fn find_up(start: &Path) -> Option<Discovered> {
    let mut dir = Some(start);
    while let Some(d) = dir {
        let project = d.join(PROJECT_FILE);
        let local = d.join(LOCAL_FILE);
        let (p, l) = (project.is_file(), local.is_file());
        if p || l {
            return Some(Discovered {
                dir: d.to_path_buf(),
                project: p.then_some(project),
                local: l.then_some(local),
            });
        }
        dir = d.parent();
    }
    None
}

fn absolute(base: &Path, p: &Path) -> PathBuf {
    if p.is_absolute() {
        p.to_path_buf()
    } else {
        base.join(p)
    }
}

/// Reads a config file, refusing (with a warning) one not owned by the current user or root.
/// `Ok(None)` means "ignore this file".
pub fn read_owned(
    path: &Path,
    warnings: &mut Vec<Diagnostic>,
) -> Result<Option<String>, Diagnostic> {
    use std::os::unix::fs::MetadataExt;
    let meta = match std::fs::metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(io_error(path, &e)),
    };
    let me = rustix::process::geteuid().as_raw();
    if meta.uid() != me && meta.uid() != 0 {
        warnings.push(
            Diagnostic::warning(
                "config::foreign_owner",
                format!("ignoring `{}`: it is owned by uid {}, not by you or root", path.display(), meta.uid()),
            )
            .in_file(path)
            .help("a file another user can write could point kz at their servers; chown it if it is yours"),
        );
        return Ok(None);
    }
    std::fs::read_to_string(path)
        .map(Some)
        .map_err(|e| io_error(path, &e))
}

fn io_error(path: &Path, e: &std::io::Error) -> Diagnostic {
    Diagnostic::error(
        "config::io",
        format!("cannot read `{}`: {e}", path.display()),
    )
    .in_file(path)
    .help("check that the file exists, is readable and is UTF-8 text")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn walks_up_to_either_file() {
        let t = tempfile::tempdir().unwrap();
        let deep = t.path().join("a/b/c");
        std::fs::create_dir_all(&deep).unwrap();
        assert!(find_up(&deep).is_none() || !find_up(&deep).unwrap().dir.starts_with(t.path()));
        std::fs::write(t.path().join("a").join(LOCAL_FILE), "").unwrap();
        let d = discover(&deep, None).unwrap();
        assert_eq!(d.dir, t.path().join("a"));
        assert!(d.project.is_none() && d.local.is_some());
        std::fs::write(t.path().join("a/b").join(PROJECT_FILE), "").unwrap();
        let d = discover(&deep, None).unwrap();
        assert_eq!(d.dir, t.path().join("a/b"));
    }

    #[test]
    fn explicit_file_must_exist() {
        let t = tempfile::tempdir().unwrap();
        let e = discover(t.path(), Some(Path::new("nope.toml"))).unwrap_err();
        assert_eq!(e.code, "config::not_found");
        std::fs::write(t.path().join("x.toml"), "").unwrap();
        let d = discover(t.path(), Some(Path::new("x.toml"))).unwrap();
        assert_eq!(d.project.unwrap(), t.path().join("x.toml"));
    }

    #[test]
    fn content_hash_tracks_both_files() {
        let t = tempfile::tempdir().unwrap();
        std::fs::write(t.path().join(PROJECT_FILE), "a").unwrap();
        let d = find_up(t.path()).unwrap();
        let h1 = d.content_hash();
        std::fs::write(t.path().join(PROJECT_FILE), "b").unwrap();
        assert_ne!(h1, d.content_hash());
    }
}
