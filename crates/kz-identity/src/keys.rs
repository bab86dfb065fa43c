//! Keys: algorithms, key types, static keys, JWKS documents, signature checks.
//!
//! **Invariant:** a key has one type (`Hmac`, `Rsa`, `Ec256`, `Ec384`, `Ed25519`) fixed when it
//! is built, and verifies only algorithms of that type. HMAC keys come only from a static shared
//! secret (never from a JWKS, never from PEM or JWK public key material), so a token signed with
//! `HS256` using a public key as the secret finds no key to verify it.

use jsonwebtoken::crypto::aws_lc::DEFAULT_PROVIDER;
use jsonwebtoken::{Algorithm, DecodingKey};
use serde_json::Value;

use crate::error::{ErrorCode, IdentityError, show};
use crate::token::B64;

/// A JWS algorithm kz verifies.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Alg {
    HS256,
    HS384,
    HS512,
    RS256,
    RS384,
    RS512,
    PS256,
    PS384,
    PS512,
    ES256,
    ES384,
    EdDSA,
}

impl Alg {
    pub const ALL: [Alg; 12] = [
        Alg::HS256,
        Alg::HS384,
        Alg::HS512,
        Alg::RS256,
        Alg::RS384,
        Alg::RS512,
        Alg::PS256,
        Alg::PS384,
        Alg::PS512,
        Alg::ES256,
        Alg::ES384,
        Alg::EdDSA,
    ];

    /// The exact (case-sensitive) JOSE name.
    pub fn as_str(self) -> &'static str {
        match self {
            Alg::HS256 => "HS256",
            Alg::HS384 => "HS384",
            Alg::HS512 => "HS512",
            Alg::RS256 => "RS256",
            Alg::RS384 => "RS384",
            Alg::RS512 => "RS512",
            Alg::PS256 => "PS256",
            Alg::PS384 => "PS384",
            Alg::PS512 => "PS512",
            Alg::ES256 => "ES256",
            Alg::ES384 => "ES384",
            Alg::EdDSA => "EdDSA",
        }
    }

    /// Parses a header or configuration `alg`. `none` in any spelling is its own error.
    pub fn parse(s: &str) -> Result<Alg, IdentityError> {
        if let Some(a) = Alg::ALL.iter().find(|a| a.as_str() == s) {
            return Ok(*a);
        }
        if s.trim().eq_ignore_ascii_case("none") || s.is_empty() {
            return Err(IdentityError::new(
                ErrorCode::AlgNone,
                "token is unsigned (`alg: none`); kz never accepts unsigned tokens",
            ));
        }
        Err(IdentityError::new(
            ErrorCode::UnsupportedAlg,
            format!(
                "token algorithm `{}` is not supported (RS256/384/512, PS256/384/512, ES256/384, EdDSA; HS256/384/512 with a static shared secret)",
                show(s)
            ),
        ))
    }

    pub fn key_type(self) -> KeyType {
        match self {
            Alg::HS256 | Alg::HS384 | Alg::HS512 => KeyType::Hmac,
            Alg::RS256 | Alg::RS384 | Alg::RS512 | Alg::PS256 | Alg::PS384 | Alg::PS512 => {
                KeyType::Rsa
            }
            Alg::ES256 => KeyType::Ec256,
            Alg::ES384 => KeyType::Ec384,
            Alg::EdDSA => KeyType::Ed25519,
        }
    }

    pub(crate) fn jwt(self) -> Algorithm {
        match self {
            Alg::HS256 => Algorithm::HS256,
            Alg::HS384 => Algorithm::HS384,
            Alg::HS512 => Algorithm::HS512,
            Alg::RS256 => Algorithm::RS256,
            Alg::RS384 => Algorithm::RS384,
            Alg::RS512 => Algorithm::RS512,
            Alg::PS256 => Algorithm::PS256,
            Alg::PS384 => Algorithm::PS384,
            Alg::PS512 => Algorithm::PS512,
            Alg::ES256 => Algorithm::ES256,
            Alg::ES384 => Algorithm::ES384,
            Alg::EdDSA => Algorithm::EdDSA,
        }
    }

    /// Minimum HMAC secret length (RFC 7518 §3.2: at least the hash size).
    pub fn min_hmac_len(self) -> usize {
        match self {
            Alg::HS384 => 48,
            Alg::HS512 => 64,
            _ => 32,
        }
    }
}

/// The type of a key, which fixes the algorithms it may verify.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum KeyType {
    Hmac,
    Rsa,
    Ec256,
    Ec384,
    Ed25519,
}

impl KeyType {
    pub fn describe(self) -> &'static str {
        match self {
            KeyType::Hmac => "HMAC shared secret",
            KeyType::Rsa => "RSA",
            KeyType::Ec256 => "EC P-256",
            KeyType::Ec384 => "EC P-384",
            KeyType::Ed25519 => "Ed25519",
        }
    }
}

/// One verification key.
#[derive(Clone)]
pub(crate) struct Key {
    pub kid: Option<String>,
    pub key_type: KeyType,
    /// When set, the only algorithm this key verifies.
    pub alg: Option<Alg>,
    pub decoding: DecodingKey,
    /// What identifies this key's material, for telling whether a refreshed set changed:
    /// the public key bytes (HMAC keys are static, never compared).
    pub fingerprint: Vec<u8>,
}

impl std::fmt::Debug for Key {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Key")
            .field("kid", &self.kid)
            .field("key_type", &self.key_type)
            .field("alg", &self.alg)
            .finish_non_exhaustive()
    }
}

impl Key {
    pub fn fits(&self, alg: Alg) -> bool {
        alg.key_type() == self.key_type && self.alg.is_none_or(|a| a == alg)
    }

    /// Whether `signature` over `input` verifies with this key under `alg` (which must fit).
    pub fn verify(&self, alg: Alg, input: &[u8], signature: &[u8]) -> bool {
        if !self.fits(alg) {
            return false;
        }
        match (DEFAULT_PROVIDER.verifier_factory)(&alg.jwt(), &self.decoding) {
            Ok(v) => v.verify(input, &signature.to_vec()).is_ok(),
            Err(_) => false,
        }
    }
}

/// Smallest RSA modulus accepted (aws-lc-rs verifies nothing shorter).
pub const MIN_RSA_BITS: usize = 2048;

fn rsa_bits(n: &[u8]) -> usize {
    let n = match n.iter().position(|&b| b != 0) {
        Some(i) => n.get(i..).unwrap_or_default(),
        None => return 0,
    };
    let lead = n.first().map_or(0, |b| 8 - b.leading_zeros() as usize);
    (n.len().saturating_sub(1)) * 8 + lead
}

/// Whether `bytes` look like public key material (PEM, a JWK, or DER starting with an ASN.1
/// SEQUENCE), leading whitespace included: such bytes are never accepted as an HMAC secret.
pub(crate) fn looks_like_public_key(bytes: &[u8]) -> bool {
    let trimmed = bytes.trim_ascii();
    if trimmed.windows(10).any(|w| w == b"-----BEGIN") {
        return true;
    }
    if trimmed.first() == Some(&b'{') && trimmed.windows(5).any(|w| w == b"\"kty\"") {
        return true;
    }
    // DER SubjectPublicKeyInfo / PKCS#1 start with SEQUENCE and a long-form length.
    if matches!(trimmed, [0x30, 0x81..=0x84, ..]) || der_sequence(trimmed) {
        return true;
    }
    // The same DER in base64 or base64url (what `openssl … -outform DER | base64` gives).
    let text = trimmed
        .strip_suffix(b"==")
        .or(trimmed.strip_suffix(b"="))
        .unwrap_or(trimmed);
    let standard = base64::engine::general_purpose::STANDARD_NO_PAD;
    [standard.decode(text).ok(), B64.decode(text).ok()]
        .into_iter()
        .flatten()
        .any(|der| der_sequence(&der))
}

/// Whether `b` is exactly one DER SEQUENCE (its length, short or long form, covers the rest):
/// the shape of every encoded public key and certificate.
fn der_sequence(b: &[u8]) -> bool {
    let (len, header) = match b {
        [0x30, n @ 0..=0x7f, ..] => (usize::from(*n), 2),
        [0x30, 0x81, n, ..] => (usize::from(*n), 3),
        [0x30, 0x82, a, c, ..] => ((usize::from(*a) << 8) | usize::from(*c), 4),
        _ => return false,
    };
    len >= 16 && header + len == b.len()
}

/// Builds a key from PEM text (SPKI `PUBLIC KEY`, PKCS#1 `RSA PUBLIC KEY`, or a `CERTIFICATE`).
pub(crate) fn from_pem(pem: &str, kid: Option<String>, alg: Option<Alg>) -> Result<Key, String> {
    let bytes = pem.trim().as_bytes();
    if !bytes.starts_with(b"-----BEGIN") {
        return Err("is not PEM (expected `-----BEGIN PUBLIC KEY-----`)".into());
    }
    if bytes.windows(11).any(|w| w == b"PRIVATE KEY") {
        return Err(
            "is a private key; configure the public key (`openssl pkey -pubout`) so the bundle holds no signing key"
                .into(),
        );
    }
    let (key_type, decoding) = if let Ok(k) = DecodingKey::from_rsa_pem(bytes) {
        let der = k
            .try_get_as_bytes()
            .map_err(|_| "is not a usable RSA key".to_string())?;
        let (n, _) = (DEFAULT_PROVIDER
            .key_utils
            .rsa_pub_components_from_public_key)(der)
        .map_err(|_| "is not a usable RSA key".to_string())?;
        let bits = rsa_bits(&n);
        if bits < MIN_RSA_BITS {
            return Err(format!(
                "is a {bits}-bit RSA key; at least {MIN_RSA_BITS} bits are required"
            ));
        }
        (KeyType::Rsa, k)
    } else if let Ok(k) = DecodingKey::from_ec_pem(bytes) {
        let t = match k.try_get_as_bytes().map(<[u8]>::len) {
            Ok(65) => KeyType::Ec256,
            Ok(97) => KeyType::Ec384,
            _ => return Err("is an EC key on a curve other than P-256 or P-384".into()),
        };
        (t, k)
    } else if let Ok(k) = DecodingKey::from_ed_pem(bytes) {
        (KeyType::Ed25519, k)
    } else {
        return Err("is not an RSA, EC (P-256/P-384) or Ed25519 public key".into());
    };
    let fingerprint = match decoding.try_get_as_bytes() {
        Ok(b) => b.to_vec(),
        Err(_) => Vec::new(),
    };
    check_alg(key_type, alg)?;
    Ok(Key {
        kid,
        key_type,
        alg,
        decoding,
        fingerprint,
    })
}

fn check_alg(key_type: KeyType, alg: Option<Alg>) -> Result<(), String> {
    match alg {
        Some(a) if a.key_type() != key_type => Err(format!(
            "`alg: {}` does not fit a {} key",
            a.as_str(),
            key_type.describe()
        )),
        _ => Ok(()),
    }
}

/// Builds an HMAC key from a shared secret.
pub(crate) fn from_secret(secret: &[u8], kid: Option<String>, alg: Alg) -> Result<Key, String> {
    if alg.key_type() != KeyType::Hmac {
        return Err(format!(
            "a shared secret verifies only HS256/HS384/HS512, not `{}`",
            alg.as_str()
        ));
    }
    if looks_like_public_key(secret) {
        return Err(
            "looks like public key material (PEM, JWK or DER); an HMAC secret must be a private random value, never a public key"
                .into(),
        );
    }
    if secret.len() < alg.min_hmac_len() {
        return Err(format!(
            "is {} bytes; {} needs a secret of at least {} bytes",
            secret.len(),
            alg.as_str(),
            alg.min_hmac_len()
        ));
    }
    Ok(Key {
        kid,
        key_type: KeyType::Hmac,
        alg: Some(alg),
        decoding: DecodingKey::from_secret(secret),
        fingerprint: Vec::new(),
    })
}

/// The most keys kz reads from one JWKS document.
pub const MAX_JWKS_KEYS: usize = 100;

/// Parses a JWKS document. Keys kz cannot use are skipped (unknown `kty`/`crv`, `use` other than
/// `sig`, symmetric `oct` keys, malformed members); an error only when the document itself is
/// not a JWKS or no key is usable.
pub(crate) fn parse_jwks(body: &[u8]) -> Result<Vec<Key>, String> {
    let doc: Value =
        serde_json::from_slice(body).map_err(|e| format!("the JWKS is not JSON ({e})"))?;
    let Some(Value::Array(list)) = doc.get("keys") else {
        return Err("the JWKS has no `keys` list".into());
    };
    let mut keys = Vec::new();
    for jwk in list.iter().take(MAX_JWKS_KEYS) {
        if let Some(k) = parse_jwk(jwk) {
            keys.push(k);
        }
    }
    if keys.is_empty() && !list.is_empty() {
        return Err(format!(
            "none of the JWKS's {} keys is a usable signature key (RSA, EC P-256/P-384, Ed25519)",
            list.len()
        ));
    }
    Ok(keys)
}

fn b64_member(jwk: &Value, name: &str) -> Option<Vec<u8>> {
    jwk.get(name)
        .and_then(Value::as_str)
        .and_then(|s| B64.decode(s.trim_end_matches('=')).ok())
        .filter(|b| !b.is_empty())
}

use base64::Engine as _;

fn parse_jwk(jwk: &Value) -> Option<Key> {
    if let Some(u) = jwk.get("use")
        && u.as_str() != Some("sig")
    {
        return None;
    }
    let kid = match jwk.get("kid") {
        None => None,
        Some(Value::String(s)) => Some(s.clone()),
        Some(_) => return None,
    };
    let alg = match jwk.get("alg") {
        None => None,
        Some(Value::String(s)) => Some(Alg::parse(s).ok()?),
        Some(_) => return None,
    };
    let (key_type, decoding, fingerprint) = match jwk.get("kty").and_then(Value::as_str)? {
        "RSA" => {
            let n = b64_member(jwk, "n")?;
            let e = b64_member(jwk, "e")?;
            if rsa_bits(&n) < MIN_RSA_BITS {
                return None;
            }
            let mut fp = n.clone();
            fp.extend_from_slice(&e);
            (
                KeyType::Rsa,
                DecodingKey::from_rsa_raw_components(&n, &e),
                fp,
            )
        }
        "EC" => {
            let (t, len) = match jwk.get("crv").and_then(Value::as_str)? {
                "P-256" => (KeyType::Ec256, 32),
                "P-384" => (KeyType::Ec384, 48),
                _ => return None,
            };
            let x = b64_member(jwk, "x")?;
            let y = b64_member(jwk, "y")?;
            if x.len() != len || y.len() != len {
                return None;
            }
            let mut point = Vec::with_capacity(1 + 2 * len);
            point.push(0x04);
            point.extend_from_slice(&x);
            point.extend_from_slice(&y);
            (t, DecodingKey::from_ec_der(&point), point)
        }
        "OKP" => {
            if jwk.get("crv").and_then(Value::as_str)? != "Ed25519" {
                return None;
            }
            let x = b64_member(jwk, "x")?;
            if x.len() != 32 {
                return None;
            }
            (KeyType::Ed25519, DecodingKey::from_ed_der(&x), x)
        }
        // `oct` (HMAC) keys are never taken from a JWKS; anything else is unknown.
        _ => return None,
    };
    if alg.is_some_and(|a| a.key_type() != key_type) {
        return None;
    }
    Some(Key {
        kid,
        key_type,
        alg,
        decoding,
        fingerprint,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rsa_sizes() {
        assert_eq!(rsa_bits(&[0, 0x80, 0]), 16);
        assert_eq!(rsa_bits(&[0x01, 0]), 9);
        assert_eq!(rsa_bits(&[0; 4]), 0);
        let mut n = vec![0xffu8; 256];
        assert_eq!(rsa_bits(&n), 2048);
        n[0] = 0x7f;
        assert_eq!(rsa_bits(&n), 2047);
        let short = format!(
            r#"{{"keys":[{{"kty":"RSA","n":"{}","e":"AQAB"}}]}}"#,
            B64.encode(&n)
        );
        assert!(parse_jwks(short.as_bytes()).is_err());
    }

    #[test]
    fn alg_names_are_exact() {
        assert_eq!(Alg::parse("ES256").unwrap(), Alg::ES256);
        assert_eq!(
            Alg::parse("es256").unwrap_err().code,
            ErrorCode::UnsupportedAlg
        );
        assert_eq!(Alg::parse("none").unwrap_err().code, ErrorCode::AlgNone);
        assert_eq!(Alg::parse("NONE").unwrap_err().code, ErrorCode::AlgNone);
        assert_eq!(Alg::parse(" none").unwrap_err().code, ErrorCode::AlgNone);
        assert_eq!(Alg::parse("").unwrap_err().code, ErrorCode::AlgNone);
    }

    #[test]
    fn public_key_material_is_never_an_hmac_secret() {
        for s in [
            "-----BEGIN PUBLIC KEY-----\nMIIB...\n-----END PUBLIC KEY-----\n",
            "\n\t  -----BEGIN PUBLIC KEY-----\nMIIB",
            "  -----BEGIN RSA PUBLIC KEY-----",
            r#"{"kty":"RSA","n":"abc","e":"AQAB"}"#,
        ] {
            assert!(looks_like_public_key(s.as_bytes()), "{s}");
            assert!(from_secret(s.as_bytes(), None, Alg::HS256).is_err());
        }
        let mut der = vec![0x30, 0x82, 0x01, 0x22];
        der.extend(std::iter::repeat_n(7u8, 60));
        assert!(from_secret(&der, None, Alg::HS256).is_err());
        // A P-256 SPKI (short-form length) as DER, base64 and base64url, with a newline.
        let mut spki = vec![0x30, 0x59];
        spki.extend(std::iter::repeat_n(0x42u8, 0x59));
        assert!(from_secret(&spki, None, Alg::HS256).is_err());
        let b64 = base64::engine::general_purpose::STANDARD.encode(&spki);
        assert!(from_secret(format!("{b64}\n").as_bytes(), None, Alg::HS256).is_err());
        assert!(from_secret(B64.encode(&spki).as_bytes(), None, Alg::HS256).is_err());
        assert!(from_secret(&[b'k'; 32], None, Alg::HS256).is_ok());
        assert!(from_secret(&[b'k'; 31], None, Alg::HS256).is_err());
        assert!(from_secret(&[b'k'; 40], None, Alg::HS384).is_err());
        assert!(from_secret(&[b'k'; 64], None, Alg::RS256).is_err());
    }

    #[test]
    fn jwks_skips_oct_and_mismatched_keys() {
        let doc = br#"{"keys":[
            {"kty":"oct","k":"c2VjcmV0c2VjcmV0c2VjcmV0c2VjcmV0c2VjcmV0","alg":"HS256"},
            {"kty":"OKP","crv":"Ed25519","x":"11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo","alg":"RS256"},
            {"kty":"OKP","crv":"Ed25519","x":"11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo","use":"enc"},
            {"kty":"OKP","crv":"Ed25519","x":"11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo","kid":"ok"}
        ]}"#;
        let keys = parse_jwks(doc).unwrap();
        assert_eq!(keys.len(), 1);
        assert_eq!(keys[0].kid.as_deref(), Some("ok"));
        assert!(parse_jwks(br#"{"keys":[{"kty":"oct","k":"AAAA"}]}"#).is_err());
        assert!(parse_jwks(br#"{"nokeys":[]}"#).is_err());
    }
}
