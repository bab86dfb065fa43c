//! keyzero configuration.
//!
//! Turns `.keyzero.toml`, `.keyzero.local.toml` and the global provider file into a validated
//! [`Config`] for the active environment, or into a list of [`Diagnostic`]s that each name the
//! file, line and key and say how to fix the problem. All problems are reported at once.
//!
//! The pipeline: [`discover`] (walk up, or `--config`) → [`tree::parse_toml`] (a positioned value
//! tree) → [`load::load`] (merge global → project → local per key, pick the environment, check
//! every key against the [`catalog`]).
//!
//! Boundary: no network, no secrets. The only I/O is reading the configuration files. The
//! provider catalog here is data; implementations live in `kz-providers`.
#![forbid(unsafe_code)]
#![warn(missing_docs)]
// Only the CLI prints (`kz-cli`); libraries return values, errors and notes.
#![deny(clippy::print_stdout, clippy::print_stderr)]

pub mod binding;
pub mod catalog;
pub mod diag;
pub mod discover;
pub mod hosts;
pub mod load;
pub mod model;
pub mod reference;
pub mod schema;
pub mod tree;
pub mod trust;
pub mod yaml;

pub use binding::{Binding, BindingRefusal, Methods, PathPattern};
pub use diag::{Diagnostic, Pos, Severity};
pub use discover::{Discovered, LOCAL_FILE, PROJECT_FILE};
pub use hosts::{HostPattern, parse_duration};
pub use load::{LoadRequest, Loaded, Source, load, load_sources};
pub use model::{
    BlindConfig, CacheConfig, Config, ConnRule, Egress, EnvSource, Offline, ProviderInstance, Role,
    SecretEntry, SwapIn,
};
