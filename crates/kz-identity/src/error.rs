//! Errors: a stable machine code per failure and a message that never holds the token or a key.

use std::fmt;

/// Why a token was refused. [`ErrorCode::as_str`] is the stable machine code (audit records,
/// API answers); the variant names follow it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ErrorCode {
    /// Over 16 KiB: refused before any parsing.
    TooLarge,
    /// Not three base64url parts of JSON objects (truncated, bad encoding, duplicate keys, ...).
    Malformed,
    /// `alg: none` (or any unsigned form).
    AlgNone,
    /// An `alg` that kz does not verify, or one the issuer has no key type for (`HS*` without a
    /// static shared secret).
    UnsupportedAlg,
    /// The header names a critical extension (`crit`) kz does not implement.
    UnsupportedCrit,
    /// The `iss` claim names no configured issuer.
    UnknownIssuer,
    /// The token's `kid` names no key of its issuer, even after a refresh.
    UnknownKid,
    /// The issuer has no key that fits the token's `alg`.
    NoKey,
    /// No key of the issuer verifies the signature.
    BadSignature,
    /// The issuer's keys could not be fetched and no earlier set is available.
    KeysUnavailable,
    /// A registered claim has the wrong JSON type (`exp: "9999999999"`, `aud: 5`).
    BadClaimType,
    /// `exp` is missing (legacy Kubernetes service-account tokens have none).
    MissingExp,
    /// `exp` (plus leeway) is in the past.
    Expired,
    /// `nbf` (minus leeway) is in the future.
    NotYetValid,
    /// `iat` (minus leeway) is in the future.
    IssuedInFuture,
    /// `exp - iat` exceeds the issuer's `max_token_lifetime` (or `iat` is missing there).
    LifetimeTooLong,
    /// `aud` does not contain the issuer's audience.
    BadAudience,
    /// A `single_use` issuer's token without a `jti`.
    MissingJti,
    /// A `single_use` issuer's token seen before.
    Replayed,
    /// The replay cache of a `single_use` issuer is full of unexpired entries.
    ReplayCacheFull,
    /// An identity field's claim has the wrong type or form (a `spiffe` `sub` that is no SPIFFE
    /// ID, `groups` that is not a list of strings).
    BadIdentityClaim,
    /// `sign`: the key or the claims cannot be used.
    SignFailed,
}

impl ErrorCode {
    /// The stable machine code.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::TooLarge => "too_large",
            ErrorCode::Malformed => "malformed",
            ErrorCode::AlgNone => "alg_none",
            ErrorCode::UnsupportedAlg => "unsupported_alg",
            ErrorCode::UnsupportedCrit => "unsupported_crit",
            ErrorCode::UnknownIssuer => "unknown_issuer",
            ErrorCode::UnknownKid => "unknown_kid",
            ErrorCode::NoKey => "no_key",
            ErrorCode::BadSignature => "bad_signature",
            ErrorCode::KeysUnavailable => "keys_unavailable",
            ErrorCode::BadClaimType => "bad_claim_type",
            ErrorCode::MissingExp => "missing_exp",
            ErrorCode::Expired => "expired",
            ErrorCode::NotYetValid => "not_yet_valid",
            ErrorCode::IssuedInFuture => "issued_in_future",
            ErrorCode::LifetimeTooLong => "lifetime_too_long",
            ErrorCode::BadAudience => "bad_audience",
            ErrorCode::MissingJti => "missing_jti",
            ErrorCode::Replayed => "replayed",
            ErrorCode::ReplayCacheFull => "replay_cache_full",
            ErrorCode::BadIdentityClaim => "bad_identity_claim",
            ErrorCode::SignFailed => "sign_failed",
        }
    }
}

impl fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A refused token (or a failed `sign`). The message names the issuer, claim, key id or
/// algorithm involved and is built only from those (token-supplied strings escaped and cut);
/// it never holds the token, a signature or any key material.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IdentityError {
    /// The stable machine code.
    pub code: ErrorCode,
    /// What failed, for a human (lowercase, no final period).
    pub message: String,
}

impl IdentityError {
    pub(crate) fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
        }
    }

    /// The stable machine code (`expired`, `bad_signature`, `unknown_issuer`, ...).
    pub fn code(&self) -> &'static str {
        self.code.as_str()
    }
}

impl fmt::Display for IdentityError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ({})", self.message, self.code.as_str())
    }
}

impl std::error::Error for IdentityError {}

/// A problem with the issuer configuration, found by `Verifier::new`. `issuer` and `field`
/// locate it (the caller maps them to the bundle's file and line); the message never holds key
/// material.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConfigError {
    /// Stable code, e.g. `identity::bad_key`.
    pub code: &'static str,
    /// The issuer's name (`""` when the problem is not about one issuer).
    pub issuer: String,
    /// The field within the issuer, e.g. `static_keys[1]`, `issuer_url`, `map.groups`.
    pub field: String,
    /// What is wrong (lowercase, no final period).
    pub message: String,
    /// How to fix it.
    pub help: String,
}

impl ConfigError {
    pub(crate) fn new(
        code: &'static str,
        issuer: &str,
        field: impl Into<String>,
        message: impl Into<String>,
        help: impl Into<String>,
    ) -> Self {
        Self {
            code,
            issuer: issuer.to_string(),
            field: field.into(),
            message: message.into(),
            help: help.into(),
        }
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.issuer.is_empty() {
            write!(f, "{}", self.message)?;
        } else if self.field.is_empty() {
            write!(f, "issuer `{}`: {}", self.issuer, self.message)?;
        } else {
            write!(
                f,
                "issuer `{}`, `{}`: {}",
                self.issuer, self.field, self.message
            )?;
        }
        write!(f, " (help: {})", self.help)
    }
}

impl std::error::Error for ConfigError {}

/// A token-supplied string for a message: control characters escaped, cut to 80 characters.
pub(crate) fn show(s: &str) -> String {
    const MAX: usize = 80;
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if i == MAX {
            out.push_str("...");
            break;
        }
        out.extend(c.escape_debug());
    }
    out
}
