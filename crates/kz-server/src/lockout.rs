//! Credentials no longer served and callers no longer answered after a guess, kept on disk.
//!
//! A request that carries the credential it may only use through keyzero is a guess: the
//! answer (refused or not) is a bit about the credential. So the first guess ends that
//! credential's service (until it is rotated: the record is keyed by the SHA-256 of the
//! resolver and the value) and the caller's (its issuer and subject). Kept only in memory, a
//! restart would reset both, and an MCP client starts a new `kz` for every session: one bit per
//! session adds up to the credential. The records are therefore appended to a file next to the
//! audit log (`<audit>.lockout`, mode 0600) and read back at start; a file that cannot be read
//! or parsed stops the start (fail closed).
//!
//! Format: one JSON object per line, `{"burned": "<hex SHA-256>"}` or
//! `{"caller": "<issuer>", "sub": "<subject>"}`.

use std::collections::HashSet;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

/// The lockout state of one process (or of every process sharing the file).
#[derive(Debug, Default)]
pub struct Lockout {
    file: Option<PathBuf>,
    burned: Mutex<HashSet<[u8; 32]>>,
    callers: Mutex<HashSet<String>>,
}

/// The key of a caller: its issuer and subject.
fn caller_key(issuer: &str, sub: &str) -> String {
    format!("{issuer}\u{1f}{sub}")
}

impl Lockout {
    /// A lockout kept in memory only (audit log on standard output).
    pub fn in_memory() -> Self {
        Self::default()
    }

    /// The lockout kept in `file`, read back now (a missing file is an empty one).
    pub fn open(file: &Path) -> Result<Self, String> {
        let out = Self {
            file: Some(file.to_path_buf()),
            ..Self::default()
        };
        let text = match std::fs::read_to_string(file) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
            Err(e) => return Err(format!("cannot read {}: {e}", file.display())),
        };
        for (i, line) in text.lines().enumerate() {
            if line.trim().is_empty() {
                continue;
            }
            let bad = || {
                format!(
                    "{}:{}: not a lockout record (the file is written by keyzero; restore it or \
                     remove the line)",
                    file.display(),
                    i + 1
                )
            };
            let v: serde_json::Value = serde_json::from_str(line).map_err(|_| bad())?;
            match (v.get("burned"), v.get("caller"), v.get("sub")) {
                (Some(serde_json::Value::String(hex)), None, None) => {
                    let key = decode_hex(hex).ok_or_else(bad)?;
                    out.lock_burned().insert(key);
                }
                (
                    None,
                    Some(serde_json::Value::String(iss)),
                    Some(serde_json::Value::String(sub)),
                ) => {
                    out.lock_callers().insert(caller_key(iss, sub));
                }
                _ => return Err(bad()),
            }
        }
        Ok(out)
    }

    fn lock_burned(&self) -> std::sync::MutexGuard<'_, HashSet<[u8; 32]>> {
        self.burned
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn lock_callers(&self) -> std::sync::MutexGuard<'_, HashSet<String>> {
        self.callers
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Whether the credential with this key is no longer served.
    pub fn is_burned(&self, key: &[u8; 32]) -> bool {
        self.lock_burned().contains(key)
    }

    /// Whether this caller is no longer answered.
    pub fn is_locked_out(&self, issuer: &str, sub: &str) -> bool {
        self.lock_callers().contains(&caller_key(issuer, sub))
    }

    /// Records a guess: the credential `key` and the caller are refused from now on, in this
    /// process at once and, through the file, after a restart.
    pub fn record_guess(&self, key: [u8; 32], issuer: &str, sub: &str) {
        self.lock_burned().insert(key);
        self.lock_callers().insert(caller_key(issuer, sub));
        let Some(file) = &self.file else {
            return;
        };
        let lines = format!(
            "{}\n{}\n",
            serde_json::json!({ "burned": encode_hex(&key) }),
            serde_json::json!({ "caller": issuer, "sub": sub })
        );
        let written = (|| {
            use std::os::unix::fs::OpenOptionsExt as _;
            let mut f = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .mode(0o600)
                .open(file)?;
            f.write_all(lines.as_bytes())?;
            f.sync_data()
        })();
        if let Err(e) = written {
            // The refusal holds in this process; the operator must know it may not survive.
            tracing::error!(file = %file.display(), error = %e, "a guess could not be recorded in the lockout file; it holds until keyzero restarts");
        }
    }
}

fn encode_hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn decode_hex(text: &str) -> Option<[u8; 32]> {
    let mut out = [0u8; 32];
    if text.len() != 64 || !text.is_ascii() {
        return None;
    }
    for (slot, pair) in out.iter_mut().zip(text.as_bytes().chunks(2)) {
        let s = std::str::from_utf8(pair).ok()?;
        *slot = u8::from_str_radix(s, 16).ok()?;
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_guess_outlives_the_process_and_a_bad_file_stops_the_start() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("audit.jsonl.lockout");
        let first = Lockout::open(&file).unwrap();
        assert!(!first.is_burned(&[7; 32]));
        first.record_guess([7; 32], "https://ci.example", "agent\"1");
        assert!(first.is_burned(&[7; 32]) && first.is_locked_out("https://ci.example", "agent\"1"));
        // A new process reads it back.
        let second = Lockout::open(&file).unwrap();
        assert!(second.is_burned(&[7; 32]));
        assert!(second.is_locked_out("https://ci.example", "agent\"1"));
        assert!(!second.is_locked_out("https://ci.example", "agent"));
        use std::os::unix::fs::PermissionsExt as _;
        assert_eq!(
            std::fs::metadata(&file).unwrap().permissions().mode() & 0o777,
            0o600
        );
        std::fs::write(&file, "{\"burned\": \"zz\"}\n").unwrap();
        let e = Lockout::open(&file).unwrap_err();
        assert!(e.contains(":1: not a lockout record"), "{e}");
    }
}
