//! Errors of the writer.

use std::path::PathBuf;

use crate::verify::Problem;

/// Why the audit log refused a record or could not be opened.
///
/// `Full`, `Unavailable` and `Closed` from [`Writer::try_append`](crate::Writer::try_append)
/// mean the record was NOT accepted: the caller must refuse the request it describes (HTTP 503).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AuditError {
    /// The file could not be opened or created.
    #[error("cannot open audit log {}: {source}", path.display())]
    Open {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The existing file does not end with a valid record, so its chain cannot be continued.
    #[error("audit log {}, line {line}: cannot continue its hash chain: {problem}", path.display())]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// 1-based number of its last line.
        line: u64,
        /// What is wrong with it.
        problem: Problem,
    },
    /// The queue is full: the writer thread is behind.
    #[error("audit queue for {sink} is full ({capacity} records waiting to be written)")]
    Full {
        /// The file (or `stdout`).
        sink: String,
        /// The queue's capacity.
        capacity: usize,
    },
    /// The sink is failing (disk full, file removed, permissions...).
    #[error("audit log {sink} cannot be written: {reason}")]
    Unavailable {
        /// The file (or `stdout`).
        sink: String,
        /// The last I/O error.
        reason: String,
    },
    /// The writer thread has stopped.
    #[error("audit writer for {sink} has stopped")]
    Closed {
        /// The file (or `stdout`).
        sink: String,
    },
    /// The writer thread could not be started.
    #[error("cannot start the audit writer thread: {0}")]
    Spawn(std::io::Error),
    /// At shutdown, accepted records could still not be written.
    #[error(
        "audit log {sink}: {count} accepted records could not be written before shutdown: {reason}"
    )]
    Lost {
        /// The file (or `stdout`).
        sink: String,
        /// How many records were lost.
        count: usize,
        /// The last I/O error.
        reason: String,
    },
}

impl AuditError {
    /// How to act on this error.
    pub fn help(&self) -> &'static str {
        match self {
            Self::Open { .. } => {
                "check that the directory exists and is writable by this user (the file is created with mode 0600)"
            }
            Self::Corrupt { .. } => {
                "run `kz audit verify` on the file; move it aside (keeping it as evidence) so a new chain starts in a fresh file"
            }
            Self::Full { .. } => {
                "the request was refused; the disk is slower than the request rate. Retry shortly"
            }
            Self::Unavailable { .. } => {
                "requests are refused until the audit file can be written again: free disk space or fix the file's permissions"
            }
            Self::Closed { .. } | Self::Spawn(_) => "restart the server",
            Self::Lost { .. } => {
                "these events are missing from the log; fix the audit file's disk or permissions"
            }
        }
    }
}
