//! Strict parsing of a compact JWS: size first, then exactly three canonical base64url parts,
//! a header and a payload that are JSON objects without duplicate keys.
//!
//! Only `alg`, `kid` and `crit` of the header are read. `jwk`, `jku`, `x5u`, `x5c` and every
//! other member are ignored: keys come from the configuration, never from a token.

use base64::Engine;
use base64::alphabet::URL_SAFE;
use base64::engine::{DecodePaddingMode, GeneralPurpose, GeneralPurposeConfig};
use serde::de::{self, Deserialize, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_json::{Map, Value};

use crate::error::{ErrorCode, IdentityError, show};
use crate::keys::Alg;

/// Tokens longer than this are refused before parsing.
pub const MAX_TOKEN_BYTES: usize = 16 * 1024;

/// base64url without padding, canonical (no trailing bits), as RFC 7515 requires.
pub(crate) const B64: GeneralPurpose = GeneralPurpose::new(
    &URL_SAFE,
    GeneralPurposeConfig::new()
        .with_encode_padding(false)
        .with_decode_padding_mode(DecodePaddingMode::RequireNone),
);

/// A parsed, not yet verified token.
#[derive(Debug)]
pub(crate) struct Parsed<'a> {
    pub alg: Alg,
    pub kid: Option<String>,
    pub claims: Map<String, Value>,
    /// `header.payload`: the signed bytes.
    pub signing_input: &'a [u8],
    pub signature: Vec<u8>,
}

fn malformed(what: &str) -> IdentityError {
    IdentityError::new(ErrorCode::Malformed, format!("malformed token: {what}"))
}

/// Parses `token`: no signature is checked here.
pub(crate) fn parse(token: &str) -> Result<Parsed<'_>, IdentityError> {
    if token.len() > MAX_TOKEN_BYTES {
        return Err(IdentityError::new(
            ErrorCode::TooLarge,
            format!(
                "token is {} bytes, over the limit of {MAX_TOKEN_BYTES}",
                token.len()
            ),
        ));
    }
    let mut parts = token.split('.');
    let (Some(h), Some(p), Some(s), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(malformed(
            "a JWT is three base64url parts separated by `.` (JWE and JSON serialisation are not accepted)",
        ));
    };
    let header_bytes = B64
        .decode(h)
        .map_err(|_| malformed("the header is not canonical base64url"))?;
    let header = parse_object(&header_bytes).map_err(|e| malformed(&format!("header: {e}")))?;
    let alg = match header.get("alg") {
        Some(Value::String(a)) => Alg::parse(a)?,
        Some(_) => return Err(malformed("header `alg` is not a string")),
        None => return Err(malformed("header has no `alg`")),
    };
    let kid = match header.get("kid") {
        None => None,
        Some(Value::String(k)) => Some(k.clone()),
        Some(_) => return Err(malformed("header `kid` is not a string")),
    };
    if let Some(crit) = header.get("crit") {
        let names: Vec<String> = match crit {
            Value::Array(a) => a
                .iter()
                .map(|v| v.as_str().map(show).unwrap_or_else(|| "?".into()))
                .collect(),
            _ => vec!["?".into()],
        };
        return Err(IdentityError::new(
            ErrorCode::UnsupportedCrit,
            format!(
                "token header marks extensions as critical ({}), which kz does not implement",
                names.join(", ")
            ),
        ));
    }
    let payload_bytes = B64
        .decode(p)
        .map_err(|_| malformed("the payload is not canonical base64url"))?;
    let claims = parse_object(&payload_bytes).map_err(|e| malformed(&format!("payload: {e}")))?;
    let signature = B64
        .decode(s)
        .map_err(|_| malformed("the signature is not canonical base64url"))?;
    if signature.is_empty() {
        return Err(malformed("the signature is empty"));
    }
    let signing_input = token
        .get(..h.len() + 1 + p.len())
        .map(str::as_bytes)
        .ok_or_else(|| malformed("cannot split the token"))?;
    Ok(Parsed {
        alg,
        kid,
        claims,
        signing_input,
        signature,
    })
}

/// Reads the claims of a token without any verification (for messages and tools only).
pub(crate) fn parse_object(bytes: &[u8]) -> Result<Map<String, Value>, String> {
    let text = std::str::from_utf8(bytes).map_err(|_| "not UTF-8".to_string())?;
    let v: Strict = serde_json::from_str(text).map_err(|e| {
        // serde_json's messages name positions and kinds, never the input text.
        format!("not a JSON object ({e})")
    })?;
    match v.0 {
        Value::Object(m) => Ok(m),
        _ => Err("not a JSON object".to_string()),
    }
}

/// A JSON value whose objects have no duplicate keys (two parsers must never read the same
/// token differently: a duplicate `sub` or `aud` is refused, not "last one wins").
struct Strict(Value);

impl<'de> Deserialize<'de> for Strict {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(StrictVisitor).map(Strict)
    }
}

struct StrictVisitor;

impl<'de> Visitor<'de> for StrictVisitor {
    type Value = Value;

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("a JSON value")
    }
    fn visit_bool<E>(self, v: bool) -> Result<Value, E> {
        Ok(Value::Bool(v))
    }
    fn visit_i64<E>(self, v: i64) -> Result<Value, E> {
        Ok(Value::from(v))
    }
    fn visit_u64<E>(self, v: u64) -> Result<Value, E> {
        Ok(Value::from(v))
    }
    fn visit_f64<E: de::Error>(self, v: f64) -> Result<Value, E> {
        serde_json::Number::from_f64(v)
            .map(Value::Number)
            .ok_or_else(|| E::custom("a number that is not finite"))
    }
    fn visit_str<E>(self, v: &str) -> Result<Value, E> {
        Ok(Value::String(v.to_string()))
    }
    fn visit_string<E>(self, v: String) -> Result<Value, E> {
        Ok(Value::String(v))
    }
    fn visit_unit<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }
    fn visit_none<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        let mut out = Vec::new();
        while let Some(Strict(v)) = seq.next_element()? {
            out.push(v);
        }
        Ok(Value::Array(out))
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
        let mut out = Map::new();
        while let Some(key) = map.next_key::<String>()? {
            if out.contains_key(&key) {
                return Err(de::Error::custom(format_args!(
                    "duplicate key `{}`",
                    show(&key)
                )));
            }
            let Strict(v) = map.next_value()?;
            out.insert(key, v);
        }
        Ok(Value::Object(out))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn enc(s: &str) -> String {
        B64.encode(s)
    }

    #[test]
    fn duplicate_keys_are_refused_at_any_depth() {
        assert!(parse_object(br#"{"a":1,"a":2}"#).is_err());
        assert!(parse_object(br#"{"a":{"b":1,"b":1}}"#).is_err());
        assert!(parse_object(br#"{"a":[{"b":1,"b":1}]}"#).is_err());
        assert!(parse_object(br#"{"a":{"b":1},"b":1}"#).is_ok());
    }

    #[test]
    fn non_canonical_base64_is_malformed() {
        let h = enc(r#"{"alg":"ES256"}"#);
        let p = enc(r#"{"exp":1}"#);
        // Padding is refused.
        let t = format!("{h}.{p}=.AAAA");
        assert_eq!(parse(&t).unwrap_err().code, ErrorCode::Malformed);
        // Standard alphabet is refused.
        let t = format!("{h}.{p}.AA+/");
        assert_eq!(parse(&t).unwrap_err().code, ErrorCode::Malformed);
        let t = format!("{h}.{p}.AAAA");
        assert!(parse(&t).is_ok());
    }

    #[test]
    fn header_forms() {
        let p = enc(r#"{"exp":1}"#);
        for (h, code) in [
            (r#"{"alg":"none"}"#, ErrorCode::AlgNone),
            (r#"{"alg":"None"}"#, ErrorCode::AlgNone),
            (r#"{"alg":"HS1"}"#, ErrorCode::UnsupportedAlg),
            (r#"{"alg":5}"#, ErrorCode::Malformed),
            (r#"{"typ":"JWT"}"#, ErrorCode::Malformed),
            (r#"{"alg":"ES256","kid":7}"#, ErrorCode::Malformed),
            (
                r#"{"alg":"ES256","crit":["b64"]}"#,
                ErrorCode::UnsupportedCrit,
            ),
            (r#"[1]"#, ErrorCode::Malformed),
        ] {
            let t = format!("{}.{p}.AAAA", enc(h));
            assert_eq!(parse(&t).unwrap_err().code, code, "{h}");
        }
    }

    #[test]
    fn part_counts() {
        assert_eq!(parse("a.b").unwrap_err().code, ErrorCode::Malformed);
        assert_eq!(parse("a.b.c.d").unwrap_err().code, ErrorCode::Malformed);
        assert_eq!(parse("a.b.c.d.e").unwrap_err().code, ErrorCode::Malformed);
        assert_eq!(parse("").unwrap_err().code, ErrorCode::Malformed);
    }

    #[test]
    fn oversized_refused_before_parsing() {
        let t = "a".repeat(MAX_TOKEN_BYTES + 1);
        assert_eq!(parse(&t).unwrap_err().code, ErrorCode::TooLarge);
    }
}
