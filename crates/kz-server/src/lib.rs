//! The team server (`kz server start`): a policy decision point over HTTP.
//!
//! Every request flows **token → identity → policy → resolve**, and a failure at any stage
//! denies; no backend is contacted before a policy allowed the ref (`server.md`).
//!
//! - [`state`]: one loaded bundle with everything built from it (verifier, backend instances,
//!   value cache, TLS), swapped whole on reload, so a request sees one revision throughout.
//! - [`pipeline`]: the decision and resolution of the refs of one request, and their audit
//!   records. Its front-ends are the HTTP API, the credential proxy and MCP.
//! - [`api`]: the axum router: `/healthz`, `/readyz`, `/metrics`, `/v1/resolve`, `/v1/decide`,
//!   limits, request ids, rate limiting, the JSON error shapes of [`kz_wire`].
//! - [`upstream`]: one credentialed call upstream (binding-checked target, the credential
//!   placed, sent through `kz-egress`, the answer scrubbed), shared by [`proxy`] and [`mcp`].
//! - [`proxy`]: the credential proxy (`--proxy`), redeeming short-lived tokens.
//! - [`mcp`]: the MCP server (`--mcp` on stdio, `--mcp-listen` on Streamable HTTP): `fetch`,
//!   `list_resources`, `resolve`.
//! - [`metrics`]: the Prometheus registry.
//! - [`serve`]: listening (plain or TLS), graceful shutdown, reload on `SIGHUP` and on file
//!   change, audit reopen on `SIGUSR1`.
//!
//! Invariants: no client input produces a 500 (a handler's panic is caught and answered as one,
//! and logged as a server bug); a value leaves the process only in a `/v1/resolve` answer, built
//! in a zeroizing buffer; audit records hold names, decisions and a token's `jti` or hash, never
//! a value or a token; a record that the audit log cannot take turns the answer into a `503`.
//!
//! Boundary: no printing (events go to `tracing`; the CLI installs the subscriber). Depends on
//! the libraries of kz (bundle, identity, policy, resolve, providers, audit, wire), never on
//! `kz-cli` or `kz-blind`.
#![forbid(unsafe_code)]
#![warn(missing_docs)]
// Only the CLI prints (`kz-cli`); libraries return values, errors and notes.
#![deny(clippy::print_stdout, clippy::print_stderr)]

pub mod api;
pub mod lockout;
pub mod mcp;
pub mod metrics;
pub mod pipeline;
pub mod proxy;
pub mod replay;
pub mod serve;
pub mod state;
pub mod upstream;

use std::net::SocketAddr;
use std::num::NonZeroU32;
use std::path::PathBuf;
use std::time::Duration;

pub use serve::{
    Control, MAX_CONNECTIONS, MAX_CONNECTIONS_PER_IP, Running, run_mcp_until_signalled,
    run_until_signalled, start,
};

/// Largest request body accepted (`413` beyond): 100 refs of 512 bytes and a context fit.
pub const MAX_BODY_BYTES: usize = 256 * 1024;
/// Largest request head (line and headers) accepted; a bearer token is at most 16 KiB.
pub const MAX_HEAD_BYTES: usize = 64 * 1024;
/// Default drain time on shutdown.
pub const DEFAULT_DRAIN: Duration = Duration::from_secs(30);
/// How often the bundle file (and TLS files) are checked for a change.
pub const DEFAULT_WATCH: Duration = Duration::from_secs(2);
/// Default per-identity rate: requests per second (with a burst of twice that).
pub const DEFAULT_RATE: u32 = 100;

/// The certificate chain and key the server presents.
#[derive(Clone, Debug)]
pub struct TlsFiles {
    /// PEM certificate chain.
    pub cert: PathBuf,
    /// PEM private key.
    pub key: PathBuf,
}

/// How to run the server.
#[derive(Clone, Debug)]
pub struct Options {
    /// The bundle file.
    pub bundle: PathBuf,
    /// Where to listen (default `127.0.0.1:8080`).
    pub listen: SocketAddr,
    /// Serve TLS with these files (reloaded with the bundle).
    pub tls: Option<TlsFiles>,
    /// The audit log path (`-` for stdout); overrides the bundle's `audit.path`.
    pub audit: Option<String>,
    /// Requests per second per identity (`None`: no limit).
    pub rate_limit: Option<NonZeroU32>,
    /// What backends may know about the machine (environment, directories).
    pub build: kz_providers::BuildContext,
    /// How long in-flight requests may take to finish on shutdown.
    pub drain: Duration,
    /// How often the bundle file is checked for a change (`None`: only on `SIGHUP`).
    pub watch: Option<Duration>,
    /// Connection and body time limits.
    pub timeouts: Timeouts,
    /// The private key that signs short-lived tokens (`KEYZERO_SIGNING_KEY_PATH`); needed when
    /// the bundle has a `short_lived` resolver, re-read on every reload.
    pub signing_key: Option<PathBuf>,
    /// The credential proxy that redeems short-lived tokens (`KEYZERO_PROXY_URL`), put in each
    /// token and answer.
    pub proxy_url: Option<String>,
    /// Serve as the credential proxy (`--proxy`), verifying short-lived tokens with this public
    /// key (`KEYZERO_PUBLIC_KEY_PATH`), instead of the HTTP API.
    pub proxy_public_key: Option<PathBuf>,
    /// Serve MCP (`--mcp`) instead of the HTTP API.
    pub mcp: Option<McpOptions>,
}

/// How the MCP server is reached and takes its caller's identity.
#[derive(Clone, Debug, Default)]
pub struct McpOptions {
    /// stdio: `--identity-token-file`, the caller's token, read at each tool call (so a token
    /// the platform refreshes is picked up); without it, each call must pass `jwt`.
    pub identity_token_file: Option<PathBuf>,
    /// `--mcp-listen`: serve Streamable HTTP on this address instead of stdio; each request's
    /// bearer token is its caller.
    pub listen: Option<SocketAddr>,
    /// `--mcp-resource`: the endpoint's public URL (default `http[s]://ADDR/mcp`), the
    /// audience its tokens must carry.
    pub resource: Option<String>,
}

/// Time limits that keep idle and slow clients from holding connections.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Timeouts {
    /// A connection with no byte either way for this long and no request in progress is closed
    /// (one that never sends anything included).
    pub idle: Duration,
    /// A request body must arrive within this time (`400` otherwise).
    pub body: Duration,
}

impl Default for Timeouts {
    fn default() -> Self {
        Self {
            idle: Duration::from_secs(30),
            body: Duration::from_secs(10),
        }
    }
}

/// Why the server did not start.
#[derive(Debug)]
pub enum StartError {
    /// The bundle (or a TLS file) is invalid: every problem, with its file and line.
    Bundle(Vec<kz_config::Diagnostic>),
    /// The audit log cannot be opened.
    Audit(kz_audit::AuditError),
    /// The address cannot be bound.
    Bind(SocketAddr, std::io::Error),
    /// The async runtime could not start.
    Runtime(std::io::Error),
}

impl std::fmt::Display for StartError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            StartError::Bundle(d) => write!(f, "the bundle has {} problem(s)", d.len()),
            StartError::Audit(e) => write!(f, "{e}"),
            StartError::Bind(a, e) => write!(f, "cannot listen on {a}: {e}"),
            StartError::Runtime(e) => write!(f, "cannot start the async runtime: {e}"),
        }
    }
}

impl std::error::Error for StartError {}
