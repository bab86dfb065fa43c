//! The bundle's issuers as `kz-identity` configuration: key material checked at load (with a
//! stand-in for each HMAC secret, which the bundle only names), and the real configuration with
//! the secrets read from `secret_env`/`secret_file` when a verifier is built.

use std::collections::BTreeMap;

use kz_config::{Diagnostic, Severity};
use kz_identity::{ConfigError, IssuerConfig};
use kz_secret::SecretValue;
use zeroize::Zeroizing;

use crate::{Bundle, Issuer, KeyMaterial, KeySource};

/// Longest HMAC secret file read.
const MAX_SECRET_BYTES: usize = 64 * 1024;

/// How HMAC secrets are obtained while building configurations.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Secrets {
    /// Read them; a missing one is an error.
    Read,
    /// A stand-in of the longest required length (the checks at load: nothing is read).
    StandIn,
}

/// Reads an HMAC secret the bundle names. `Err` says why, without any value.
fn read_secret(issuer: &Issuer, m: &KeyMaterial) -> Result<Option<SecretValue>, Diagnostic> {
    let at = |msg: String, help: &str| {
        Diagnostic::error("identity::secret_unavailable", msg)
            .at(&issuer.pos)
            .key(format!("issuers.{}", issuer.name))
            .help(help)
    };
    match m {
        KeyMaterial::Pem(_) => Ok(None),
        KeyMaterial::SecretEnv(var) => match std::env::var_os(var) {
            Some(v) if !v.is_empty() => v
                .into_string()
                .map(|s| Some(SecretValue::from_string(s)))
                .map_err(|_| {
                    at(
                        format!("the HMAC secret variable `{var}` is not UTF-8"),
                        "set the variable to the shared secret as text",
                    )
                }),
            _ => Err(at(
                format!("the HMAC secret variable `{var}` is not set"),
                "set it in the server's environment (a bundle never holds the secret)",
            )),
        },
        KeyMaterial::SecretFile(path) => match crate::read_limited(path, MAX_SECRET_BYTES) {
            Ok(None) => Err(at(
                format!(
                    "the HMAC secret file {} is over {MAX_SECRET_BYTES} bytes",
                    path.display()
                ),
                "give the file that holds only the shared secret",
            )),
            Ok(Some(bytes)) => {
                let bytes = Zeroizing::new(bytes);
                match std::str::from_utf8(&bytes) {
                    Ok(text) => Ok(Some(SecretValue::from_str_copy(
                        text.trim_end_matches(['\n', '\r']),
                    ))),
                    Err(_) => Err(at(
                        format!("the HMAC secret file {} is not UTF-8", path.display()),
                        "write the shared secret as text",
                    )),
                }
            }
            Err(e) => Err(at(
                format!("cannot read the HMAC secret file {}: {e}", path.display()),
                "check the path and its permissions",
            )),
        },
    }
}

/// One issuer as identity configuration, and the problems met reading its secrets.
fn config(i: &Issuer, secrets: Secrets) -> (IssuerConfig, Vec<Diagnostic>) {
    let mut diags = Vec::new();
    let keys = match &i.keys {
        KeySource::Discovery => kz_identity::KeySource::Discovery,
        KeySource::JwksUrl(u) => kz_identity::KeySource::JwksUrl(u.clone()),
        KeySource::Static(keys) => {
            let mut list = Vec::new();
            for k in keys {
                let material = match (&k.material, secrets) {
                    (KeyMaterial::Pem(p), _) => kz_identity::KeyMaterial::Pem(p.clone()),
                    (_, Secrets::StandIn) => {
                        kz_identity::KeyMaterial::Secret(SecretValue::from_string("s".repeat(64)))
                    }
                    (m, Secrets::Read) => match read_secret(i, m) {
                        Ok(Some(s)) => kz_identity::KeyMaterial::Secret(s),
                        Ok(None) => continue,
                        Err(d) => {
                            diags.push(d);
                            continue;
                        }
                    },
                };
                list.push(kz_identity::StaticKey {
                    kid: k.kid.clone(),
                    alg: Some(k.alg.clone()),
                    pem_or_secret: material,
                });
            }
            kz_identity::KeySource::Static(list)
        }
    };
    let mut c = IssuerConfig::new(i.name.clone(), i.profile, i.issuer_url.clone());
    c.audience = i.audience.clone();
    c.allow_any_audience = i.allow_any_audience;
    c.keys = keys;
    c.map = i.map.iter().cloned().collect::<BTreeMap<_, _>>();
    c.leeway = i.leeway;
    c.max_token_lifetime = i.max_token_lifetime;
    c.single_use = i.single_use;
    c.allow_private_jwks = i.allow_private_jwks;
    (c, diags)
}

/// An identity configuration problem at the issuer's (or its static key's) line.
fn diagnostic(issuers: &[Issuer], e: &ConfigError) -> Diagnostic {
    let issuer = issuers.iter().find(|i| i.name == e.issuer);
    // `static_keys[N]` counts the keys given to kz-identity (the well-formed ones): back to the
    // bundle's key, its line and its index.
    let static_key = e
        .field
        .strip_prefix("static_keys[")
        .and_then(|r| r.split(']').next())
        .and_then(|n| n.parse::<usize>().ok())
        .and_then(|n| match issuer.map(|i| &i.keys) {
            Some(KeySource::Static(keys)) => keys.get(n),
            _ => None,
        });
    let key_pos = static_key.map(|k| k.pos.clone());
    let key = match (static_key, e.field.is_empty()) {
        (Some(k), _) => format!("issuers.{}.static_keys[{}]", e.issuer, k.index),
        (None, true) => format!("issuers.{}", e.issuer),
        (None, false) => format!("issuers.{}.{}", e.issuer, e.field),
    };
    let mut d = Diagnostic::error(e.code, e.message.clone())
        .key(key)
        .help(e.help.clone());
    if let Some(p) = key_pos.as_ref().or(issuer.map(|i| &i.pos)) {
        d = d.at(p);
    }
    d
}

/// The identity checks of every issuer (keys parse and fit their algorithm, URLs, `map`), run
/// at load with stand-ins for the HMAC secrets.
pub(crate) fn check_issuers(issuers: &[Issuer]) -> Vec<Diagnostic> {
    let mut out = Vec::new();
    for i in issuers {
        let (cfg, _) = config(i, Secrets::StandIn);
        out.extend(
            kz_identity::check_issuer(cfg)
                .iter()
                .map(|e| diagnostic(issuers, e)),
        );
    }
    out
}

impl Bundle {
    /// The issuers as identity configuration, with their HMAC secrets read from the
    /// environment or files the bundle names: what a verifier is built from.
    pub fn issuer_configs(&self) -> Result<Vec<IssuerConfig>, Vec<Diagnostic>> {
        let mut configs = Vec::new();
        let mut diags = Vec::new();
        for i in &self.issuers {
            let (c, d) = config(i, Secrets::Read);
            configs.push(c);
            diags.extend(d);
        }
        if diags.is_empty() {
            Ok(configs)
        } else {
            Err(diags)
        }
    }

    /// HMAC secrets the bundle names that cannot be read here, as warnings (`kz server check`
    /// runs where the server's environment may not be).
    pub fn unavailable_secrets(&self) -> Vec<Diagnostic> {
        let mut out = Vec::new();
        for i in &self.issuers {
            let (_, diags) = config(i, Secrets::Read);
            out.extend(diags.into_iter().map(|mut d| {
                d.severity = Severity::Warning;
                d
            }));
        }
        out
    }

    /// Maps an identity configuration problem (from building a verifier) to the bundle's line.
    pub fn config_diagnostic(&self, e: &ConfigError) -> Diagnostic {
        diagnostic(&self.issuers, e)
    }
}
