//! The one way kz replaces a file: [`write_atomic`].
//!
//! A temporary file with an unpredictable name is created exclusively (`O_CREAT|O_EXCL`, so a
//! planted file or symlink at that name makes creation fail instead of being followed) in the
//! target's directory, given its mode, written, fsynced, renamed over the target (`rename`
//! replaces a symlink at the target, it never writes through it), and the directory is fsynced.
//! Used for the local store and its record, age files, configuration edits, trust records, the
//! cache and `kz export --output`.

use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

/// Replaces `path` with `bytes` atomically; the new file has `mode` (e.g. `0o600`).
pub fn write_atomic(path: &Path, bytes: &[u8], mode: u32) -> std::io::Result<()> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    let name = path.file_name().ok_or_else(|| {
        std::io::Error::new(std::io::ErrorKind::InvalidInput, "the path names no file")
    })?;
    let mut prefix = std::ffi::OsString::from(".");
    prefix.push(name);
    prefix.push(".kz-");
    let mut tmp = tempfile::Builder::new()
        .prefix(&prefix)
        .suffix(".tmp")
        .permissions(std::fs::Permissions::from_mode(mode & 0o7777))
        .tempfile_in(dir)?;
    // The umask applied at creation; set the exact mode on the open file (never by path).
    tmp.as_file()
        .set_permissions(std::fs::Permissions::from_mode(mode & 0o7777))?;
    tmp.write_all(bytes)?;
    tmp.as_file().sync_all()?;
    tmp.persist(path).map_err(|e| e.error)?;
    // Best effort: some filesystems cannot sync a directory.
    if let Ok(d) = std::fs::File::open(dir) {
        let _ = d.sync_all();
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::MetadataExt;

    #[test]
    fn replaces_a_symlink_at_the_target_instead_of_writing_through_it() {
        let d = tempfile::tempdir().unwrap();
        let victim = d.path().join("victim");
        std::fs::write(&victim, "untouched").unwrap();
        let target = d.path().join("file");
        std::os::unix::fs::symlink(&victim, &target).unwrap();
        write_atomic(&target, b"new", 0o600).unwrap();
        assert_eq!(std::fs::read_to_string(&victim).unwrap(), "untouched");
        let meta = std::fs::symlink_metadata(&target).unwrap();
        assert!(meta.file_type().is_file());
        assert_eq!(meta.mode() & 0o777, 0o600);
        assert_eq!(std::fs::read_to_string(&target).unwrap(), "new");
    }

    #[test]
    fn temporary_names_are_not_predictable_and_leave_nothing_behind() {
        let d = tempfile::tempdir().unwrap();
        let target = d.path().join("file");
        // The names the old ad-hoc writers used, planted as links to a victim.
        let victim = d.path().join("victim");
        std::fs::write(&victim, "untouched").unwrap();
        for n in [
            format!("file.kz-tmp-{}", std::process::id()),
            format!("file.tmp-{}", std::process::id()),
        ] {
            std::os::unix::fs::symlink(&victim, d.path().join(n)).unwrap();
        }
        write_atomic(&target, b"one", 0o644).unwrap();
        write_atomic(&target, b"two", 0o644).unwrap();
        assert_eq!(std::fs::read_to_string(&victim).unwrap(), "untouched");
        assert_eq!(std::fs::read_to_string(&target).unwrap(), "two");
        let leftovers = std::fs::read_dir(d.path())
            .unwrap()
            .filter(|e| {
                let n = e.as_ref().unwrap().file_name();
                n.to_string_lossy().ends_with(".tmp")
            })
            .count();
        assert_eq!(leftovers, 0);
    }
}
