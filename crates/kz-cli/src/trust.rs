//! Trust records (`kz allow` / `kz deny`), as direnv keeps them: a project's configuration is
//! trusted when a record for its directory holds the SHA-256 of its current files. Any edit of
//! `.keyzero.toml` or `.keyzero.local.toml` revokes trust until `kz allow` is run again.

use std::path::{Path, PathBuf};

use kz_config::Discovered;
use kz_config::discover::hex;
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
    std::fs::write(&p, text)?;
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
