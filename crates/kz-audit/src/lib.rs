//! Tamper-evident audit log: one hash-chained JSON line per event.
//!
//! Every decision and credential use of the server (HTTP, MCP, credential proxy) and every
//! blind-mode swap, refusal and scrub becomes a [`Record`], appended through a [`Writer`]:
//!
//! - **Fields** (absent ones omitted): `v`, `ts` (RFC 3339 UTC, microseconds), `id` (128-bit
//!   random hex), `request_id`, `transport` (`http`/`mcp`/`proxy`/`blind`), `client_ip`,
//!   `issuer`, `sub`, `identity`, `claims`, `ref`, `resolver`, `backend`, `mode`, `decision`
//!   (`allow`/`deny`/`error`), `policy`, `reason`, `cache`, `latency_us`; blind mode adds
//!   `method`, `host`, `path` (query cut off) and `secrets` (names). Never a value or a token:
//!   the record has no field that takes one, and this crate does not know the secret types.
//! - **Chain**: `prev` is the previous record's `hash` ([`GENESIS`], 64 zeros, for the first
//!   record of a new chain); `hash` is the lowercase hex SHA-256 of the record without `hash`,
//!   in RFC 8785 canonical JSON ([`canonical_json`]). Each line is itself the canonical form of
//!   the whole record. `v`, `ts`, `id`, `prev` and `hash` are filled by the writer only.
//! - **Writing**: a bounded queue feeds a dedicated thread, so callers never wait on disk.
//!   [`Writer::try_append`] either accepts a record (it will be written, retried while the sink
//!   fails) or refuses it at once ([`AuditError::Full`], [`AuditError::Unavailable`]): the
//!   caller answers 503; nothing is dropped silently. Lines are written in batches; they are
//!   fsynced on [`Writer::flush`], [`Writer::reopen`] and shutdown.
//! - **Rotation**: [`Writer::reopen`] (on `SIGUSR1`) reopens the path; the chain continues
//!   across files. Opening an existing file continues its chain from its last line.
//! - **Verification**: [`verify`] checks a sequence of files and reports the first broken or
//!   missing record by file, line and id.
#![forbid(unsafe_code)]
#![warn(missing_docs)]
// Only the CLI prints (`kz-cli`); libraries return values, errors and notes.
#![deny(clippy::print_stdout, clippy::print_stderr)]

mod error;
mod jcs;
mod record;
mod verify;
mod writer;

pub use error::AuditError;
pub use jcs::{JcsError, MAX_SAFE_INTEGER, canonical_json};
pub use record::{Decision, Record, Transport};
pub use verify::{GENESIS, Problem, Summary, VerifyError, verify, verify_from};
pub use writer::{DEFAULT_CAPACITY, FORMAT_VERSION, Sink, Writer};
