//! Signing test tokens (`kz token sign`): a private key in PEM (or, for `HS*`, the shared secret
//! itself) and a claims object.

use std::time::{SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use jsonwebtoken::EncodingKey;
use jsonwebtoken::crypto::aws_lc::DEFAULT_PROVIDER;
use serde_json::{Map, Value};

use crate::error::{ErrorCode, IdentityError};
use crate::keys::{Alg, KeyType};
use crate::token::B64;

fn fail(msg: impl Into<String>) -> IdentityError {
    IdentityError::new(ErrorCode::SignFailed, msg)
}

fn try_sign(alg: Alg, key: &EncodingKey, input: &[u8]) -> Option<Vec<u8>> {
    let signer = (DEFAULT_PROVIDER.signer_factory)(&alg.jwt(), key).ok()?;
    signer.try_sign(input).ok()
}

/// Signs `claims` (a JSON object) with `key_pem`. `alg` defaults to the key's usual one (RS256,
/// ES256/ES384 by curve, EdDSA); `HS256/384/512` take `key_pem` as the shared secret. `iat`
/// (now) and `exp` (`iat` + 1 h) are filled in when absent. The error never holds the key.
pub fn sign(
    key_pem: &str,
    alg: Option<&str>,
    kid: Option<&str>,
    claims: &Value,
) -> Result<String, IdentityError> {
    let Value::Object(claims) = claims else {
        return Err(fail("the claims must be a JSON object"));
    };
    let alg = alg
        .map(Alg::parse)
        .transpose()
        .map_err(|e| fail(e.message))?;
    let mut claims: Map<String, Value> = claims.clone();
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let iat = match claims.get("iat") {
        Some(v) => v.as_u64().unwrap_or(now),
        None => {
            claims.insert("iat".into(), Value::from(now));
            now
        }
    };
    if !claims.contains_key("exp") {
        claims.insert("exp".into(), Value::from(iat.saturating_add(3600)));
    }

    // Candidate (alg, key) pairs; the first that signs wins.
    let mut candidates: Vec<(Alg, EncodingKey)> = Vec::new();
    match alg {
        Some(a) if a.key_type() == KeyType::Hmac => {
            candidates.push((a, EncodingKey::from_secret(key_pem.as_bytes())));
        }
        _ => {
            let pem = key_pem.trim().as_bytes();
            if let Ok(k) = EncodingKey::from_rsa_pem(pem) {
                candidates.push((alg.unwrap_or(Alg::RS256), k));
            }
            if let Ok(k) = EncodingKey::from_ec_pem(pem) {
                match alg {
                    Some(a) => candidates.push((a, k)),
                    None => {
                        candidates.push((Alg::ES256, k.clone()));
                        candidates.push((Alg::ES384, k));
                    }
                }
            }
            if let Ok(k) = EncodingKey::from_ed_pem(pem) {
                candidates.push((alg.unwrap_or(Alg::EdDSA), k));
            }
            if candidates.is_empty() {
                return Err(fail(
                    "the key is not a PEM private key (RSA, EC P-256/P-384 or Ed25519, PKCS#8 or PKCS#1); for HS256/384/512 pass `alg` and the shared secret",
                ));
            }
        }
    }
    for (a, key) in candidates {
        let mut header = Map::new();
        header.insert("alg".into(), Value::from(a.as_str()));
        header.insert("typ".into(), Value::from("JWT"));
        if let Some(kid) = kid {
            header.insert("kid".into(), Value::from(kid));
        }
        let h = serde_json::to_vec(&header).map_err(|e| fail(e.to_string()))?;
        let c = serde_json::to_vec(&claims).map_err(|e| fail(e.to_string()))?;
        let input = format!("{}.{}", B64.encode(h), B64.encode(c));
        if let Some(sig) = try_sign(a, &key, input.as_bytes()) {
            return Ok(format!("{input}.{}", B64.encode(sig)));
        }
    }
    Err(fail(match alg {
        Some(a) => format!(
            "the key cannot sign `{}` (wrong key type or curve)",
            a.as_str()
        ),
        None => "the key cannot sign any supported algorithm".into(),
    }))
}

/// The server's key for short-lived tokens (`KEYZERO_SIGNING_KEY_PATH`): an Ed25519, EC P-256
/// or RSA private key in PEM, signing `EdDSA`, `ES256` or `RS256`. The PEM is kept in zeroizing
/// memory and never shown (`Debug` names the algorithm only).
pub struct TokenSigner {
    pem: zeroize::Zeroizing<String>,
    alg: Alg,
}

impl std::fmt::Debug for TokenSigner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenSigner")
            .field("alg", &self.alg.as_str())
            .finish_non_exhaustive()
    }
}

impl TokenSigner {
    /// Takes a PEM private key; `Err` says why it cannot sign (an HMAC secret, a public key or
    /// another curve is refused: the proxy verifies with the public key alone).
    pub fn from_pem(pem: zeroize::Zeroizing<String>) -> Result<Self, IdentityError> {
        for alg in [Alg::EdDSA, Alg::ES256, Alg::RS256] {
            let probe = serde_json::json!({"iss": "keyzero", "probe": true});
            if sign(&pem, Some(alg.as_str()), None, &probe).is_ok() {
                return Ok(Self { pem, alg });
            }
        }
        Err(fail(
            "the signing key is not an Ed25519, EC P-256 or RSA private key in PEM (PKCS#8, \
             SEC1 or PKCS#1)",
        ))
    }

    /// The algorithm it signs with (`EdDSA`, `ES256` or `RS256`).
    pub fn alg(&self) -> &'static str {
        self.alg.as_str()
    }

    /// Signs `claims` (a JSON object; `iat` and `exp` must be set by the caller).
    pub fn sign(&self, claims: &Value) -> Result<String, IdentityError> {
        sign(&self.pem, Some(self.alg.as_str()), None, claims)
    }
}
