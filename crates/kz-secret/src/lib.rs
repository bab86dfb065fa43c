//! Secret values.
//!
//! [`SecretValue`] is the only type in keyzero that holds a resolved secret. It is built so that
//! no ordinary code path can print, log or serialise the value by accident:
//!
//! - the bytes are zeroed when the value is dropped (and when it is replaced);
//! - `Debug` prints `SecretValue(<redacted, N bytes>)` and never any part of the value;
//! - there is no `Display`, no `Serialize`, no `Clone` into a plain type, no `Deref`;
//! - access is explicit and greppable: [`SecretValue::expose_bytes`] / [`SecretValue::expose_str`];
//! - equality is constant-time in the length of the shorter input (no early exit on a mismatch).
//!
//! Structs that hold a `SecretValue` must not derive `Debug` in a way that could print it; since
//! the value's own `Debug` is redacted, a derived `Debug` on the holder is safe.
//!
//! This crate is a leaf: no I/O, no async, one dependency (`zeroize`).
#![forbid(unsafe_code)]
#![warn(missing_docs)]
// Only the CLI prints (`kz-cli`); libraries return values, errors and notes.
#![deny(clippy::print_stdout, clippy::print_stderr)]

use std::fmt;

use zeroize::Zeroizing;

/// A secret value: bytes that are zeroed on drop and never formatted.
pub struct SecretValue {
    bytes: Zeroizing<Vec<u8>>,
}

impl SecretValue {
    /// Takes ownership of `bytes` (no copy is left behind).
    pub fn from_bytes(bytes: Vec<u8>) -> Self {
        Self {
            bytes: Zeroizing::new(bytes),
        }
    }

    /// Takes ownership of `s` (no copy is left behind).
    pub fn from_string(s: String) -> Self {
        Self::from_bytes(s.into_bytes())
    }

    /// Copies `s`. Prefer [`SecretValue::from_string`] when the caller owns the string, so the
    /// only copy is the zeroized one.
    pub fn from_str_copy(s: &str) -> Self {
        Self::from_bytes(s.as_bytes().to_vec())
    }

    /// The value's bytes. Every call site is a place where the value leaves this type: keep
    /// them few, and never pass the result to a formatter, logger or error.
    pub fn expose_bytes(&self) -> &[u8] {
        &self.bytes
    }

    /// The value as UTF-8, or `None` when it is not valid UTF-8. Same care as
    /// [`SecretValue::expose_bytes`].
    pub fn expose_str(&self) -> Option<&str> {
        std::str::from_utf8(&self.bytes).ok()
    }

    /// Length in bytes (not secret: it is shown by `Debug`).
    pub fn len(&self) -> usize {
        self.bytes.len()
    }

    /// Whether the value is empty.
    pub fn is_empty(&self) -> bool {
        self.bytes.is_empty()
    }

    /// A second zeroizing copy of the value.
    pub fn duplicate(&self) -> Self {
        Self::from_bytes(self.bytes.to_vec())
    }

    /// Whether `needle` occurs in `haystack` as this value (used by leak checks and masking).
    pub fn occurs_in(&self, haystack: &[u8]) -> bool {
        !self.is_empty() && haystack.windows(self.len()).any(|w| ct_eq(w, &self.bytes))
    }
}

impl fmt::Debug for SecretValue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SecretValue(<redacted, {} bytes>)", self.bytes.len())
    }
}

impl PartialEq for SecretValue {
    fn eq(&self, other: &Self) -> bool {
        ct_eq(&self.bytes, &other.bytes)
    }
}

impl Eq for SecretValue {}

/// Constant-time comparison for equal lengths; unequal lengths compare unequal (the length is
/// not secret).
fn ct_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// The resolved result of one secret entry: one value, or several variables (a provider such
/// as `aws_sts` with `format = "env"` returns a map of variable names to values).
#[derive(Debug, PartialEq, Eq)]
pub enum Resolved {
    /// One value, set as the entry's own variable.
    Single(SecretValue),
    /// Several variables; the entry's own name is not set.
    Multi(Vec<(String, SecretValue)>),
}

impl Resolved {
    /// A second zeroizing copy of every value (a cache hands out copies and keeps its own).
    pub fn duplicate(&self) -> Self {
        match self {
            Resolved::Single(v) => Resolved::Single(v.duplicate()),
            Resolved::Multi(m) => {
                Resolved::Multi(m.iter().map(|(k, v)| (k.clone(), v.duplicate())).collect())
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const CANARY: &str = "kz-canary-7f3a9c1e5b";

    #[test]
    fn debug_never_prints_the_value() {
        let v = SecretValue::from_str_copy(CANARY);
        let shown = format!("{v:?} {v:#?}");
        assert!(!shown.contains(CANARY), "{shown}");
        assert!(shown.contains("redacted"));
        assert!(shown.contains(&CANARY.len().to_string()));
        let r = Resolved::Multi(vec![("A".into(), v)]);
        assert!(!format!("{r:?}").contains(CANARY));
        assert!(!format!("{:?}", r.duplicate()).contains(CANARY));
    }

    #[test]
    fn resolved_duplicate_is_an_equal_independent_copy() {
        let single = Resolved::Single(SecretValue::from_str_copy(CANARY));
        assert_eq!(single.duplicate(), single);
        let multi = Resolved::Multi(vec![
            ("A".into(), SecretValue::from_str_copy("a")),
            ("B".into(), SecretValue::from_bytes(vec![0xff, 0])),
        ]);
        let copy = multi.duplicate();
        assert_eq!(copy, multi);
        drop(multi);
        let Resolved::Multi(m) = copy else {
            panic!("a Multi stays a Multi")
        };
        assert_eq!(m[1].1.expose_bytes(), [0xff, 0]);
    }

    #[test]
    fn access_is_explicit_and_exact() {
        let v = SecretValue::from_string(CANARY.to_string());
        assert_eq!(v.expose_str(), Some(CANARY));
        assert_eq!(v.expose_bytes(), CANARY.as_bytes());
        assert_eq!(v.len(), CANARY.len());
        assert!(!v.is_empty());
        assert!(SecretValue::from_bytes(vec![]).is_empty());
        assert_eq!(SecretValue::from_bytes(vec![0xff, 0xfe]).expose_str(), None);
    }

    #[test]
    fn equality_and_search() {
        let a = SecretValue::from_str_copy("abc");
        assert_eq!(a, a.duplicate());
        assert_ne!(a, SecretValue::from_str_copy("abd"));
        assert_ne!(a, SecretValue::from_str_copy("abcd"));
        assert!(a.occurs_in(b"xxabcxx"));
        assert!(!a.occurs_in(b"xxabxcx"));
        assert!(!SecretValue::from_bytes(vec![]).occurs_in(b"anything"));
    }
}
