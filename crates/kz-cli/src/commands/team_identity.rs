//! Identity for the team commands: tokens verified as the server would, claims mapped through an
//! issuer's profile, and test tokens signed.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::SystemTime;

use kz_bundle::Bundle;
use kz_config::Diagnostic;
use kz_identity::{IdentityError, Verifier};
use kz_policy::Identity;
use serde_json::{Map, Value};
use zeroize::Zeroizing;

use crate::cli::TokenSignArgs;
use crate::report::Failure;

fn verifier(bundle: &Bundle) -> Result<Verifier, Failure> {
    let configs = bundle.issuer_configs().map_err(Failure::many)?;
    Verifier::build(configs).map_err(|errors| {
        Failure::many(errors.iter().map(|e| bundle.config_diagnostic(e)).collect())
    })
}

fn identity_failure(e: &IdentityError) -> Failure {
    Failure::one(
        Diagnostic::error("identity::rejected", format!("the token is refused: {e}"))
            .help("the server would deny this request; `kz policy eval --claims` shows a decision for claims you trust"),
    )
}

/// Verifies `token` exactly as the server would (keys may be fetched from the issuer).
pub fn verify_token(bundle: &Bundle, token: &str) -> Result<Identity, Failure> {
    let v = verifier(bundle)?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| {
            Failure::msg(
                "io::runtime",
                format!("cannot start the runtime: {e}"),
                "retry",
            )
        })?;
    rt.block_on(v.verify(token.trim(), SystemTime::now()))
        .map_err(|e| identity_failure(&e))
}

/// The identity of claims taken as verified: the issuer named `issuer`, else the one whose
/// `issuer_url` is the claims' `iss`, else the bundle's only issuer.
pub fn from_claims(
    bundle: &Bundle,
    issuer: Option<&str>,
    claims: &Map<String, Value>,
) -> Result<Identity, Failure> {
    let names = || {
        bundle
            .issuers
            .iter()
            .map(|i| i.name.as_str())
            .collect::<Vec<_>>()
            .join(", ")
    };
    let chosen = match issuer {
        Some(name) => bundle.issuer(name).ok_or_else(|| {
            Failure::usage(
                format!("the bundle has no issuer `{name}`"),
                format!("its issuers: {}", names()),
            )
        })?,
        None => {
            let by_iss = claims
                .get("iss")
                .and_then(Value::as_str)
                .and_then(|iss| bundle.issuer_for(iss));
            match (by_iss, bundle.issuers.as_slice()) {
                (Some(i), _) => i,
                (None, [only]) => only,
                (None, []) => {
                    return Err(Failure::msg(
                        "policy::no_issuer",
                        "the bundle has no issuers",
                        "add one under `issuers:`",
                    ));
                }
                (None, _) => {
                    return Err(Failure::usage(
                        "which issuer maps these claims? (no `iss` claim matches an issuer_url)",
                        format!(
                            "give --issuer (or `issuer:` in a test) as one of: {}",
                            names()
                        ),
                    ));
                }
            }
        }
    };
    let map: BTreeMap<String, String> = chosen.map.iter().cloned().collect();
    let mut id = kz_identity::normalise(chosen.profile, &map, claims).map_err(|e| {
        Failure::one(
            Diagnostic::error(
                "identity::claims",
                format!("the claims do not map under issuer `{}`: {e}", chosen.name),
            )
            .help("fix the claim's type, or the issuer's `map`"),
        )
    })?;
    id.issuer = chosen.name.clone();
    Ok(id)
}

/// `kz token sign`: the token (never the key) or a failure.
pub fn sign(args: &TokenSignArgs) -> Result<String, Failure> {
    let key = read_key(&args.key)?;
    let claims_text = match args.claims.strip_prefix('@') {
        Some(file) => std::fs::read_to_string(file).map_err(|e| {
            Failure::msg(
                "token::claims",
                format!("cannot read the claims file {file}: {e}"),
                "give --claims '{…}' or --claims @FILE",
            )
        })?,
        None => args.claims.clone(),
    };
    let mut claims: Value = serde_json::from_str(&claims_text).map_err(|e| {
        Failure::usage(
            format!("--claims is not JSON: {e}"),
            "give a JSON object, e.g. --claims '{\"sub\":\"ci\",\"aud\":\"keyzero\"}'",
        )
    })?;
    let Some(obj) = claims.as_object_mut() else {
        return Err(Failure::usage(
            "--claims must be a JSON object",
            "give e.g. --claims '{\"sub\":\"ci\",\"aud\":\"keyzero\"}'",
        ));
    };
    obj.insert("iss".into(), Value::String(args.issuer.clone()));
    // An HMAC secret file is read as the bundle's `secret_file` is: without its final newline.
    let hmac = args
        .alg
        .as_deref()
        .is_some_and(|a| a.to_ascii_uppercase().starts_with("HS"));
    let key: &str = if hmac {
        key.trim_end_matches(['\n', '\r'])
    } else {
        &key
    };
    kz_identity::sign(key, args.alg.as_deref(), args.kid.as_deref(), &claims).map_err(|e| {
        Failure::one(
            Diagnostic::error("token::sign", format!("cannot sign: {e}"))
                .help("give a PEM private key (RSA, EC P-256/P-384, Ed25519), or --alg HS256 with a secret file"),
        )
    })
}

fn read_key(path: &Path) -> Result<Zeroizing<String>, Failure> {
    let bytes = Zeroizing::new(std::fs::read(path).map_err(|e| {
        Failure::msg(
            "token::key",
            format!("cannot read the key {}: {e}", path.display()),
            "give the signing key's file with --key",
        )
    })?);
    match std::str::from_utf8(&bytes) {
        Ok(s) => Ok(Zeroizing::new(s.to_owned())),
        Err(_) => Err(Failure::msg(
            "token::key",
            format!(
                "the key {} is not text (PEM or a shared secret)",
                path.display()
            ),
            "convert a DER key to PEM (`openssl pkey -in key.der -inform DER`)",
        )),
    }
}
