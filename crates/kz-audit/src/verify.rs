//! Checking a chain of audit files.

use std::fs::File;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};

use serde_json::Value;

use crate::jcs::{Canon, Key, sha256_hex};

/// The `prev` of the first record of a new chain.
pub const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// What is wrong with one line of an audit file.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Problem {
    /// The line is empty.
    EmptyLine,
    /// The last line has no terminating newline (a torn or truncated write).
    Truncated,
    /// The line is not UTF-8.
    NotUtf8,
    /// The line is not valid JSON (the parser's message).
    MalformedJson(String),
    /// The line is JSON but not an object.
    NotAnObject,
    /// A required field is missing or is not a string of the right shape.
    BadField {
        /// The field's name.
        field: &'static str,
        /// What shape it must have.
        expected: &'static str,
    },
    /// The record holds a number outside the canonical subset.
    UnsupportedNumber(String),
    /// The stored hash does not match the record's content: the record was changed.
    BadHash {
        /// The `hash` field.
        stored: String,
        /// SHA-256 of the record's canonical form without `hash`.
        computed: String,
    },
    /// The line parses and hashes correctly but is not byte-for-byte canonical (reformatted,
    /// or a duplicated member).
    NotCanonical,
    /// `prev` is not the previous record's hash: a record before this one is missing, was
    /// reordered, or this one was inserted.
    BrokenLink {
        /// The previous record's hash (or the chain's start).
        expected: String,
        /// This record's `prev`.
        found: String,
    },
}

impl std::fmt::Display for Problem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::EmptyLine => f.write_str("empty line"),
            Self::Truncated => f.write_str("last line has no newline (torn or truncated write)"),
            Self::NotUtf8 => f.write_str("line is not UTF-8"),
            Self::MalformedJson(e) => write!(f, "malformed JSON: {e}"),
            Self::NotAnObject => f.write_str("line is not a JSON object"),
            Self::BadField { field, expected } => {
                write!(f, "field `{field}` is missing or not {expected}")
            }
            Self::UnsupportedNumber(n) => write!(f, "unsupported number {n}"),
            Self::BadHash { stored, computed } => write!(
                f,
                "bad hash: the record was changed (stored {stored}, content hashes to {computed})"
            ),
            Self::NotCanonical => {
                f.write_str("not in RFC 8785 canonical form (reformatted or a duplicated member)")
            }
            Self::BrokenLink { expected, found } => write!(
                f,
                "broken link: prev is {found} but the previous record's hash is {expected} \
                 (a record before this line is missing or reordered, or this one was inserted)"
            ),
        }
    }
}

/// Why verification stopped: the first bad record, precisely located.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum VerifyError {
    /// A file could not be read.
    #[error("{}: cannot read audit log: {source}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// A record is bad or missing.
    #[error("{}:{line}: {}{problem}", path.display(), id.as_deref().map(|i| format!("record {i}: ")).unwrap_or_default())]
    Broken {
        /// The file.
        path: PathBuf,
        /// 1-based line number within the file.
        line: u64,
        /// The record's `id`, when the line could be read that far.
        id: Option<String>,
        /// What is wrong.
        problem: Problem,
    },
    /// The starting hash given to [`verify_from`] is not 64 lowercase hex digits.
    #[error("chain start {0:?} is not a SHA-256 hash (64 lowercase hex digits)")]
    BadStart(String),
}

impl VerifyError {
    /// How to act on this error.
    pub fn help(&self) -> &'static str {
        match self {
            Self::Io { .. } => "check the path and its permissions",
            Self::Broken { .. } => {
                "the log was altered or records are missing at this point; compare with a backup \
                 or the log shipper's copy. If this file follows a rotated one, verify the files \
                 together in order, oldest first"
            }
            Self::BadStart(_) => "pass the `last_hash` reported when the previous files verified",
        }
    }
}

/// The result of a successful verification.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Summary {
    /// Records checked.
    pub records: u64,
    /// Files checked.
    pub files: usize,
    /// Hash of the last record (the chain start when there were none): keep it to verify
    /// later files with [`verify_from`], or to detect truncation of the tail.
    pub last_hash: String,
}

/// The parts of a record that chain checks need.
#[derive(Debug)]
pub(crate) struct Checked {
    pub(crate) id: String,
    pub(crate) prev: String,
    pub(crate) hash: String,
}

fn is_hash(s: &str) -> bool {
    s.len() == 64 && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

/// Checks one line's integrity on its own (everything but the link to the previous record).
/// `line` excludes the newline. Returns the record id (when readable) with any problem.
pub(crate) fn check_line(line: &[u8]) -> Result<Checked, (Option<String>, Problem)> {
    if line.is_empty() || line == b"\r" {
        return Err((None, Problem::EmptyLine));
    }
    let text = std::str::from_utf8(line).map_err(|_| (None, Problem::NotUtf8))?;
    let value: Value =
        serde_json::from_str(text).map_err(|e| (None, Problem::MalformedJson(e.to_string())))?;
    let Value::Object(obj) = &value else {
        return Err((None, Problem::NotAnObject));
    };
    let id = obj.get("id").and_then(Value::as_str).map(str::to_owned);
    let fail = |p: Problem| (id.clone(), p);
    let Some(record_id) = id.clone() else {
        return Err(fail(Problem::BadField {
            field: "id",
            expected: "a string",
        }));
    };
    let hash_of = |field: &'static str| -> Result<String, (Option<String>, Problem)> {
        match obj.get(field).and_then(Value::as_str) {
            Some(h) if is_hash(h) => Ok(h.to_owned()),
            _ => Err(fail(Problem::BadField {
                field,
                expected: "64 lowercase hex digits",
            })),
        }
    };
    let hash = hash_of("hash")?;
    let prev = hash_of("prev")?;
    let Canon::Obj(mut map) =
        Canon::from_json(&value).map_err(|e| fail(Problem::UnsupportedNumber(e.to_string())))?
    else {
        return Err(fail(Problem::NotAnObject));
    };
    let stored = map.remove(&Key("hash".into()));
    let mut body = String::with_capacity(line.len());
    crate::jcs::write_object(&map, &mut body);
    let computed = sha256_hex(body.as_bytes());
    if computed != hash {
        return Err(fail(Problem::BadHash {
            stored: hash,
            computed,
        }));
    }
    if let Some(stored) = stored {
        map.insert(Key("hash".into()), stored);
    }
    let mut full = String::with_capacity(line.len());
    crate::jcs::write_object(&map, &mut full);
    if full.as_bytes() != line {
        return Err(fail(Problem::NotCanonical));
    }
    Ok(Checked {
        id: record_id,
        prev,
        hash,
    })
}

/// Verifies a chain that starts a new log: the first record's `prev` must be [`GENESIS`].
///
/// `paths` are the files in order, oldest first (for example `audit.jsonl.2`, `audit.jsonl.1`,
/// `audit.jsonl`). Every record's hash must match its content, and every `prev` must be the
/// previous record's hash, across file boundaries. Stops at the first problem.
///
/// Removing records from the END of the last file cannot be seen from the chain alone; compare
/// [`Summary::last_hash`] with a copy kept elsewhere to detect that.
///
/// # Errors
/// [`VerifyError::Broken`] with the file, line, record id and problem; [`VerifyError::Io`] when
/// a file cannot be read.
pub fn verify(paths: &[PathBuf]) -> Result<Summary, VerifyError> {
    verify_from(paths, GENESIS)
}

/// Like [`verify`], but the first record's `prev` must be `start`: to check files that follow
/// ones already verified (pass their [`Summary::last_hash`]) after older files were deleted.
///
/// # Errors
/// As [`verify`]; [`VerifyError::BadStart`] when `start` is not a hash.
pub fn verify_from(paths: &[PathBuf], start: &str) -> Result<Summary, VerifyError> {
    if !is_hash(start) {
        return Err(VerifyError::BadStart(start.to_owned()));
    }
    let mut expected = start.to_owned();
    let mut records = 0u64;
    for path in paths {
        verify_file(path, &mut expected, &mut records)?;
    }
    Ok(Summary {
        records,
        files: paths.len(),
        last_hash: expected,
    })
}

fn verify_file(path: &Path, expected: &mut String, records: &mut u64) -> Result<(), VerifyError> {
    let io = |source| VerifyError::Io {
        path: path.to_owned(),
        source,
    };
    let mut reader = BufReader::new(File::open(path).map_err(io)?);
    let mut buf = Vec::new();
    let mut line_no = 0u64;
    loop {
        buf.clear();
        if reader.read_until(b'\n', &mut buf).map_err(io)? == 0 {
            return Ok(());
        }
        line_no += 1;
        let broken = |id, problem| VerifyError::Broken {
            path: path.to_owned(),
            line: line_no,
            id,
            problem,
        };
        let Some(line) = buf.strip_suffix(b"\n") else {
            let id = match check_line(&buf) {
                Ok(checked) => Some(checked.id),
                Err((id, _)) => id,
            };
            return Err(broken(id, Problem::Truncated));
        };
        let checked = check_line(line).map_err(|(id, p)| broken(id, p))?;
        if checked.prev != *expected {
            return Err(broken(
                Some(checked.id),
                Problem::BrokenLink {
                    expected: expected.clone(),
                    found: checked.prev,
                },
            ));
        }
        *expected = checked.hash;
        *records += 1;
    }
}
