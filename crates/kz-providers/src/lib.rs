//! Provider implementations.
//!
//! [`build`] turns a configured [`ProviderInstance`] into a [`Provider`]. Each module is one
//! backend; they never depend on one another (shared helpers live in `kz-resolve`, and the HTTP
//! client settings of `hashicorp` and `keyzero` in the private `http` module).
//!
//! | type | module | backend |
//! |---|---|---|
//! | `local` | [`local`] | kz's own age-encrypted store |
//! | `env` | [`env`] | kz's own environment |
//! | `dotenv` | [`dotenv`] | a `KEY=VALUE` file |
//! | `age` | [`age_files`] | age-encrypted files |
//! | `exec` | [`exec`] | a program speaking the plugin protocol |
//! | `hashicorp` | [`hashicorp`] | HashiCorp Vault / OpenBao HTTP API |
//! | `1password` | [`onepassword`] | the 1Password CLI `op` |
//! | `gcp` | [`gcp`] | Google Cloud Secret Manager REST API |
//! | `aws`, `aws_sts` | [`aws`] | AWS Secrets Manager, SSM Parameter Store, STS (the AWS SDK) |
//! | `keychain` | [`keychain`] | macOS Keychain / Linux Secret Service |
//! | `keyzero` | [`keyzero`] | a keyzero team server (`POST /v1/resolve`) |
//!
//! Types listed in the catalog but not implemented in this build fail with a clear
//! `Unsupported` error when used. The network and daemon backends are cargo features (`aws`,
//! `gcp`, `hashicorp`, `keychain`, `keyzero`, `onepassword`), all on by default.
#![forbid(unsafe_code)]
#![warn(missing_docs)]
// Only the CLI prints (`kz-cli`); libraries return values, errors and notes.
#![deny(clippy::print_stdout, clippy::print_stderr)]

use std::path::PathBuf;
use std::sync::Arc;

use kz_config::ProviderInstance;
use kz_resolve::{ErrorKind, Provider, ProviderError};
use kz_secret::SecretValue;

pub mod age_files;
#[cfg(feature = "aws")]
pub mod aws;
pub mod dotenv;
pub mod env;
pub mod exec;
pub mod fsio;
#[cfg(feature = "gcp")]
pub mod gcp;
#[cfg(feature = "hashicorp")]
pub mod hashicorp;
#[cfg(any(feature = "hashicorp", feature = "keyzero"))]
mod http;
#[cfg(feature = "keychain")]
pub mod keychain;
#[cfg(feature = "keyzero")]
pub mod keyzero;
pub mod local;
#[cfg(feature = "onepassword")]
pub mod onepassword;

mod instances;
pub use instances::build_instances;

/// Reads a variable of kz's environment (injected so tests are hermetic).
pub type GetEnv = Arc<dyn Fn(&str) -> Option<String> + Send + Sync>;

/// What providers may know about the machine and the invocation.
#[derive(Clone)]
pub struct BuildContext {
    /// `$HOME`.
    pub home: Option<PathBuf>,
    /// `$XDG_CONFIG_HOME` (default `~/.config`).
    pub config_home: PathBuf,
    /// `$XDG_DATA_HOME` (default `~/.local/share`).
    pub data_home: PathBuf,
    /// `$XDG_RUNTIME_DIR`, when set.
    pub runtime_dir: Option<PathBuf>,
    /// The project directory (relative paths in refs resolve against the config file's
    /// directory, which is this one for the project and local files).
    pub project_dir: PathBuf,
    /// kz's environment.
    pub getenv: GetEnv,
    /// `-v` was given: plugins' stderr is shown (with values removed).
    pub verbose: bool,
    /// A terminal is attached (passphrase prompts are possible).
    pub interactive: bool,
}

impl std::fmt::Debug for BuildContext {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BuildContext")
            .field("config_home", &self.config_home)
            .field("data_home", &self.data_home)
            .field("project_dir", &self.project_dir)
            .field("verbose", &self.verbose)
            .finish_non_exhaustive()
    }
}

/// Builds the provider for a configured instance. Building does no network I/O; files are
/// read lazily on first use where possible.
///
/// The provider is wrapped in [`kz_resolve::Redacting`]: no error it returns can hold a
/// credential it used or was given (its type's credential variables, the variables its `*_env`
/// options name, a `token` option), nor a value it resolved.
pub fn build(
    inst: &ProviderInstance,
    ctx: &BuildContext,
) -> Result<Arc<dyn Provider>, ProviderError> {
    let inner = build_inner(inst, ctx)?;
    Ok(Arc::new(kz_resolve::Redacting::new(
        inner,
        ambient_credentials(inst, ctx),
    )))
}

/// Whether a variable among a type's credential variables holds a secret (a token, key,
/// password, identity, session), not an address, region or profile name, which error messages
/// must keep showing.
fn holds_secret(name: &str) -> bool {
    const MARKERS: &[&str] = &[
        "TOKEN",
        "SECRET",
        "PASSWORD",
        "PASSPHRASE",
        "CREDENTIAL",
        "IDENTITY",
        "SESSION",
        "KEY",
    ];
    let upper = name.to_ascii_uppercase();
    !upper.contains("ADDR") && MARKERS.iter().any(|m| upper.contains(m))
}

/// The credentials from kz's environment and the instance's options that the provider may send.
fn ambient_credentials(inst: &ProviderInstance, ctx: &BuildContext) -> Vec<SecretValue> {
    let mut names: Vec<String> = Vec::new();
    for pat in inst.ty.credential_env {
        match pat.strip_suffix('*') {
            Some(prefix) => names.extend(
                std::env::vars_os()
                    .filter_map(|(k, _)| k.into_string().ok())
                    .filter(|k| k.starts_with(prefix)),
            ),
            None => names.push((*pat).to_string()),
        }
    }
    names.retain(|n| holds_secret(n));
    let mut direct = Vec::new();
    let mut options: Vec<(&str, &kz_config::tree::Node)> = inst
        .options
        .iter()
        .map(|(k, v)| (k.as_str(), &v.node))
        .collect();
    if let Some(t) = inst.option("auth").and_then(|o| o.node.as_table()) {
        options.extend(t.iter().map(|e| (e.key.as_str(), &e.node)));
    }
    for (key, node) in options {
        let Some(v) = node.as_str() else { continue };
        if key.ends_with("_env") {
            names.push(v.to_string());
        } else if let Some(var) = v.strip_prefix("env:").filter(|_| key == "token_source") {
            // The `keyzero` provider's token variable.
            names.push(var.trim().to_string());
        } else if matches!(key, "token" | "secret_id") {
            // Written in a (trusted) file: a credential by the catalog's definition.
            direct.push(SecretValue::from_str_copy(v));
        }
    }
    names.sort();
    names.dedup();
    names
        .iter()
        .filter_map(|n| (ctx.getenv)(n))
        .filter(|v| !v.is_empty())
        .map(SecretValue::from_string)
        .chain(direct)
        .collect()
}

fn build_inner(
    inst: &ProviderInstance,
    ctx: &BuildContext,
) -> Result<Arc<dyn Provider>, ProviderError> {
    Ok(match inst.ty.name {
        "local" => Arc::new(local::LocalProvider::new(inst, ctx)?),
        "env" => Arc::new(env::EnvProvider::new(inst, ctx)),
        "dotenv" => Arc::new(dotenv::DotenvProvider::new(inst, ctx)?),
        "age" => Arc::new(age_files::AgeProvider::new(inst, ctx)?),
        "exec" => Arc::new(exec::ExecProvider::new(inst, ctx)?),
        #[cfg(feature = "hashicorp")]
        "hashicorp" => Arc::new(hashicorp::VaultProvider::new(inst, ctx)?),
        #[cfg(feature = "onepassword")]
        "1password" => Arc::new(onepassword::OpProvider::new(inst, ctx)?),
        #[cfg(feature = "gcp")]
        "gcp" => Arc::new(gcp::GcpProvider::new(inst, ctx)?),
        #[cfg(feature = "aws")]
        "aws" => Arc::new(aws::AwsProvider::new(inst, ctx)?),
        #[cfg(feature = "aws")]
        "aws_sts" => Arc::new(aws::StsProvider::new(inst, ctx)?),
        #[cfg(feature = "keychain")]
        "keychain" => Arc::new(keychain::KeychainProvider::new(inst, ctx)?),
        #[cfg(feature = "keyzero")]
        "keyzero" => Arc::new(keyzero::KeyzeroProvider::new(inst, ctx)?),
        other => {
            return Err(ProviderError::new(
                ErrorKind::Unsupported,
                format!("the `{other}` provider is not available in this build of kz yet"),
            )
            .help("use another provider type (see `kz doctor`)"));
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credential_variables_that_hold_secrets_are_told_from_addresses_and_regions() {
        for n in [
            "VAULT_TOKEN",
            "BAO_TOKEN",
            "AWS_SECRET_ACCESS_KEY",
            "AWS_SESSION_TOKEN",
            "OP_SERVICE_ACCOUNT_TOKEN",
            "GOOGLE_ACCESS_TOKEN",
            "KEYZERO_AGE_IDENTITY",
        ] {
            assert!(holds_secret(n), "{n}");
        }
        for n in [
            "VAULT_ADDR",
            "AWS_REGION",
            "AWS_PROFILE",
            "VAULT_NAMESPACE",
            "DBUS_SESSION_BUS_ADDRESS",
            "OP_CONNECT_HOST",
        ] {
            assert!(!holds_secret(n), "{n}");
        }
    }
}
