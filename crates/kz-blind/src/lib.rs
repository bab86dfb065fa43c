//! Blind mode (`kz run --blind`): the child gets masked tokens instead of secret values, and a
//! local MITM proxy swaps each token for its value only in requests to the hosts that secret may
//! reach, scrubs values out of responses, and audits every swap, refusal and scrub.
//!
//! Map (dependencies point down):
//! - [`secrets`]: the per-run secret table (name, value, token, allowed hosts).
//! - [`policy`]: where each secret may go, which hosts may be reached at all, and the address
//!   checks after DNS (no loopback/private/link-local/CGNAT/metadata unless named explicitly).
//! - [`rewrite`]: pure byte transforms: tokens → values in request targets, headers (incl.
//!   decoded Basic auth) and bodies; values (and their encoded forms) → tokens in responses.
//! - [`ca`]: the per-run CA (key only in memory), per-host leaf certificates, upstream TLS, and
//!   the private CA directory handed to the child.
//! - [`ws`]: WebSocket relay that scrubs server text frames.
//! - [`proxy`]: the hyper-based proxy tying it together.
//!
//! Invariant: no function here formats a secret value into a string, error or log line; values
//! are only ever copied into outgoing request bytes.
#![forbid(unsafe_code)]
#![warn(missing_docs)]
// Only the CLI prints (`kz-cli`); libraries return values, errors and notes.
#![deny(clippy::print_stdout, clippy::print_stderr)]

#[cfg(feature = "proxy")]
pub mod ca;
pub mod policy;
#[cfg(feature = "proxy")]
pub mod proxy;
pub mod rewrite;
pub mod secrets;
#[cfg(feature = "proxy")]
pub mod ws;
