//! The resolution engine and the provider trait.
//!
//! [`Provider`] is the seam every backend implements (batch `resolve`, `write`, `delete`,
//! `describe`, `check`). [`engine::resolve_all`] runs a whole configuration's secrets: grouped by
//! provider instance, batched, concurrent up to each instance's `concurrency`, each batch under
//! its `timeout` (retries of transient errors included, at most three attempts with jittered
//! exponential backoff), and every failure kept with its [`ErrorKind`], so callers can list them
//! all and honour `optional` and `allow_empty`.
//!
//! The engine takes neutral [`Request`]s (from a solo secret entry, or from the server's bundle
//! refs). An [`Instance`] owns its concurrency limit; clones share it, so concurrent resolves
//! (the server's) are bounded together. [`session`] is the value cache around the engine for
//! `kz run` and the server alike, over a [`ValueStore`] (the CLI's encrypted disk cache, or
//! [`MemoryCache`]).
//!
//! Boundary: no provider code, no printing. Values stay in [`kz_secret::SecretValue`].
#![forbid(unsafe_code)]
#![warn(missing_docs)]
// Only the CLI prints (`kz-cli`); libraries return values, errors and notes.
#![deny(clippy::print_stdout, clippy::print_stderr)]

pub mod engine;
pub mod memory;
pub mod notes;
pub mod provider;
pub mod session;

pub use engine::{Instance, Outcome, Request, item_for, resolve_all};
pub use memory::MemoryCache;
pub use provider::{
    BoxFuture, Description, ErrorKind, Item, Provider, ProviderError, REDACTED, Redacting,
    join_all, json_field, redact_error, redact_text,
};
pub use session::{CacheUse, Cached, Policy, Served, Session, ValueStore};
