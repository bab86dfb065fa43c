//! RFC 8785 (JSON Canonicalization Scheme) for the subset of JSON that audit records use.
//!
//! Supported: `null`, booleans, strings, integers within ±(2^53 − 1) (ECMAScript's safe
//! integers, which JCS prints as plain digits), arrays and objects. Other numbers (fractions,
//! exponents, larger integers) are refused with [`JcsError::UnsupportedNumber`] instead of being
//! approximated, so a canonical form produced here is always exact.
//!
//! Rules implemented: object members sorted by the UTF-16 code units of their names, no
//! insignificant whitespace, strings escaped as ECMAScript `JSON.stringify` does (only `"`,
//! `\` and the C0 controls; `\b \t \n \f \r` in short form, other controls as lowercase
//! `\u00xx`; everything else, including U+2028, U+2029 and DEL, literally).

use std::cmp::Ordering;
use std::collections::BTreeMap;
use std::fmt::Write as _;

use serde_json::Value;
use sha2::{Digest, Sha256};

/// `Number.MAX_SAFE_INTEGER`: the largest integer magnitude a canonical form may hold.
pub const MAX_SAFE_INTEGER: i64 = (1 << 53) - 1;

/// A value that cannot be put in canonical form.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum JcsError {
    /// A number that is not an integer within ±(2^53 − 1).
    #[error(
        "number {0} is not supported in audit records (only integers within ±9007199254740991)"
    )]
    UnsupportedNumber(String),
}

/// An object member name, ordered by UTF-16 code units as RFC 8785 requires.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Key(pub(crate) String);

impl Ord for Key {
    fn cmp(&self, other: &Self) -> Ordering {
        self.0.encode_utf16().cmp(other.0.encode_utf16())
    }
}

impl PartialOrd for Key {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

/// A JSON value restricted to the canonicalizable subset: serializing it cannot fail.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Canon {
    Null,
    Bool(bool),
    Int(i64),
    Str(String),
    Arr(Vec<Canon>),
    Obj(BTreeMap<Key, Canon>),
}

impl Canon {
    /// Converts exactly, refusing numbers outside the subset.
    pub(crate) fn from_json(value: &Value) -> Result<Self, JcsError> {
        Ok(match value {
            Value::Null => Self::Null,
            Value::Bool(b) => Self::Bool(*b),
            Value::Number(n) => match n.as_i64() {
                Some(i) if (-MAX_SAFE_INTEGER..=MAX_SAFE_INTEGER).contains(&i) => Self::Int(i),
                _ => return Err(JcsError::UnsupportedNumber(n.to_string())),
            },
            Value::String(s) => Self::Str(s.clone()),
            Value::Array(items) => Self::Arr(
                items
                    .iter()
                    .map(Self::from_json)
                    .collect::<Result<_, _>>()?,
            ),
            Value::Object(map) => Self::Obj(
                map.iter()
                    .map(|(k, v)| Ok((Key(k.clone()), Self::from_json(v)?)))
                    .collect::<Result<_, JcsError>>()?,
            ),
        })
    }

    /// Converts without failing: numbers outside the subset become their JSON text as a string.
    pub(crate) fn sanitized(value: Value) -> Self {
        match value {
            Value::Null => Self::Null,
            Value::Bool(b) => Self::Bool(b),
            Value::Number(n) => match n.as_i64() {
                Some(i) if (-MAX_SAFE_INTEGER..=MAX_SAFE_INTEGER).contains(&i) => Self::Int(i),
                _ => Self::Str(n.to_string()),
            },
            Value::String(s) => Self::Str(s),
            Value::Array(items) => Self::Arr(items.into_iter().map(Self::sanitized).collect()),
            Value::Object(map) => Self::Obj(
                map.into_iter()
                    .map(|(k, v)| (Key(k), Self::sanitized(v)))
                    .collect(),
            ),
        }
    }

    /// Back to a `serde_json::Value` (for callers that want to inspect a record).
    pub(crate) fn to_json(&self) -> Value {
        match self {
            Self::Null => Value::Null,
            Self::Bool(b) => Value::Bool(*b),
            Self::Int(i) => Value::from(*i),
            Self::Str(s) => Value::String(s.clone()),
            Self::Arr(items) => Value::Array(items.iter().map(Self::to_json).collect()),
            Self::Obj(map) => Value::Object(
                map.iter()
                    .map(|(k, v)| (k.0.clone(), v.to_json()))
                    .collect(),
            ),
        }
    }

    /// Appends the canonical form.
    pub(crate) fn write(&self, out: &mut String) {
        match self {
            Self::Null => out.push_str("null"),
            Self::Bool(true) => out.push_str("true"),
            Self::Bool(false) => out.push_str("false"),
            Self::Int(i) => {
                let _ = write!(out, "{i}");
            }
            Self::Str(s) => write_str(s, out),
            Self::Arr(items) => {
                out.push('[');
                for (n, item) in items.iter().enumerate() {
                    if n > 0 {
                        out.push(',');
                    }
                    item.write(out);
                }
                out.push(']');
            }
            Self::Obj(map) => write_object(map, out),
        }
    }
}

/// Appends the canonical form of an object.
pub(crate) fn write_object(map: &BTreeMap<Key, Canon>, out: &mut String) {
    out.push('{');
    for (n, (k, v)) in map.iter().enumerate() {
        if n > 0 {
            out.push(',');
        }
        write_str(&k.0, out);
        out.push(':');
        v.write(out);
    }
    out.push('}');
}

fn write_str(s: &str, out: &mut String) {
    out.push('"');
    // Runs of characters that need no escape are copied whole (the common case: names, ids).
    let mut start = 0;
    for (i, b) in s.bytes().enumerate() {
        if b >= 0x20 && b != b'"' && b != b'\\' {
            continue;
        }
        out.push_str(s.get(start..i).unwrap_or_default());
        match b {
            b'"' => out.push_str("\\\""),
            b'\\' => out.push_str("\\\\"),
            0x08 => out.push_str("\\b"),
            b'\t' => out.push_str("\\t"),
            b'\n' => out.push_str("\\n"),
            0x0c => out.push_str("\\f"),
            b'\r' => out.push_str("\\r"),
            c => {
                let _ = write!(out, "\\u{:04x}", u32::from(c));
            }
        }
        start = i + 1;
    }
    out.push_str(s.get(start..).unwrap_or_default());
    out.push('"');
}

/// The entries of `map` (canonical form, comma-separated, no braces) whose keys sort before
/// `split` and those after it: a record is serialised once, and its line with a `split` entry
/// (the hash) is assembled from the two halves.
pub(crate) fn write_entries_split(map: &BTreeMap<Key, Canon>, split: &Key) -> (String, String) {
    let mut before = String::with_capacity(512);
    let mut after = String::with_capacity(256);
    for (k, v) in map {
        if k == split {
            continue;
        }
        let out = if k < split { &mut before } else { &mut after };
        if !out.is_empty() {
            out.push(',');
        }
        write_str(&k.0, out);
        out.push(':');
        v.write(out);
    }
    (before, after)
}

/// The RFC 8785 canonical form of `value`.
///
/// # Errors
/// [`JcsError::UnsupportedNumber`] for a number that is not an integer within ±(2^53 − 1).
pub fn canonical_json(value: &Value) -> Result<String, JcsError> {
    let mut out = String::new();
    Canon::from_json(value)?.write(&mut out);
    Ok(out)
}

/// Lowercase hex SHA-256 of `data`.
pub(crate) fn sha256_hex(data: &[u8]) -> String {
    let digest = Sha256::digest(data);
    let mut out = String::with_capacity(64);
    for b in digest {
        let _ = write!(out, "{b:02x}");
    }
    out
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    fn canon(text: &str) -> Result<String, JcsError> {
        canonical_json(&serde_json::from_str(text).unwrap())
    }

    /// RFC 8785 §3.2.3: sorting by UTF-16 code units (U+1F600 sorts before U+FB33).
    #[test]
    fn rfc8785_key_sorting() {
        let input = r#"{
            "\u20ac": "Euro Sign",
            "\r": "Carriage Return",
            "\ufb33": "Hebrew Letter Dalet With Dagesh",
            "1": "One",
            "\ud83d\ude00": "Emoji: Grinning Face",
            "\u0080": "Control",
            "\u00f6": "Latin Small Letter O With Diaeresis"
        }"#;
        let expected = "{\"\\r\":\"Carriage Return\",\"1\":\"One\",\"\u{80}\":\"Control\",\
            \"\u{f6}\":\"Latin Small Letter O With Diaeresis\",\"\u{20ac}\":\"Euro Sign\",\
            \"\u{1f600}\":\"Emoji: Grinning Face\",\"\u{fb33}\":\"Hebrew Letter Dalet With Dagesh\"}";
        assert_eq!(canon(input).unwrap(), expected);
    }

    /// RFC 8785 §3.2.2 sample without its floating-point `numbers` member.
    #[test]
    fn rfc8785_string_and_literals() {
        let input = r#"{
            "string": "\u20ac$\u000F\u000aA'\u0042\u0022\u005c\\\"\/",
            "literals": [null, true, false]
        }"#;
        let expected = "{\"literals\":[null,true,false],\"string\":\"\u{20ac}$\\u000f\\nA'B\\\"\\\\\\\\\\\"/\"}";
        assert_eq!(canon(input).unwrap(), expected);
    }

    #[test]
    fn escapes_controls_but_not_line_separators() {
        let v = Value::String("\u{0}\u{1f}\u{7f}\u{2028}\u{2029}\u{8}\u{c}\t".into());
        assert_eq!(
            canonical_json(&v).unwrap(),
            "\"\\u0000\\u001f\u{7f}\u{2028}\u{2029}\\b\\f\\t\""
        );
    }

    #[test]
    fn nested_no_whitespace_and_integers() {
        assert_eq!(
            canon(r#"{ "b" : [ 1 , -2, 0 ], "a" : { "z": {}, "y": [] } }"#).unwrap(),
            r#"{"a":{"y":[],"z":{}},"b":[1,-2,0]}"#
        );
        assert_eq!(
            canon("[9007199254740991,-9007199254740991]").unwrap(),
            "[9007199254740991,-9007199254740991]"
        );
    }

    #[test]
    fn refuses_numbers_outside_the_subset() {
        for text in [
            "1.5",
            "1e30",
            "1.0",
            "9007199254740992",
            "18446744073709551615",
        ] {
            assert!(
                matches!(canon(text), Err(JcsError::UnsupportedNumber(_))),
                "{text}"
            );
        }
    }

    #[test]
    fn sanitized_turns_floats_into_strings() {
        let v: Value =
            serde_json::from_str(r#"{"f":1.5,"i":3,"big":18446744073709551615}"#).unwrap();
        let mut out = String::new();
        Canon::sanitized(v).write(&mut out);
        assert_eq!(out, r#"{"big":"18446744073709551615","f":"1.5","i":3}"#);
    }

    #[test]
    fn sha256_known_vector() {
        assert_eq!(
            sha256_hex(b"abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }
}
