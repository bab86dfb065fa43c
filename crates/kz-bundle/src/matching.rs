//! Requested names: validation, and which resolver serves one.

use crate::Resolver;

/// Longest requested name accepted, in bytes.
pub const MAX_REF_BYTES: usize = 512;

/// Why a requested name is refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RefError {
    Empty,
    TooLong,
    Nul,
    Percent,
    DotDot,
    /// A control character (other than NUL): names are printed in logs and audit records.
    Control,
}

impl std::fmt::Display for RefError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            RefError::Empty => "the ref is empty",
            RefError::TooLong => "the ref is longer than 512 bytes",
            RefError::Nul => "the ref contains a NUL byte",
            RefError::Percent => "the ref contains `%` (names are never percent-encoded)",
            RefError::DotDot => "the ref has a `..` segment",
            RefError::Control => "the ref contains a control character",
        })
    }
}

impl std::error::Error for RefError {}

/// Checks a requested name before anything else looks at it: non-empty, at most 512 bytes, no
/// NUL, no `%`, no `..` segment, no control character.
pub fn validate_ref(requested: &str) -> Result<(), RefError> {
    if requested.is_empty() {
        return Err(RefError::Empty);
    }
    if requested.len() > MAX_REF_BYTES {
        return Err(RefError::TooLong);
    }
    if requested.contains('\0') {
        return Err(RefError::Nul);
    }
    if requested.contains('%') {
        return Err(RefError::Percent);
    }
    if requested.chars().any(char::is_control) {
        return Err(RefError::Control);
    }
    if requested.split('/').any(|s| s == "..") {
        return Err(RefError::DotDot);
    }
    Ok(())
}

/// The resolver for `requested`: an exact (wildcard-free) name wins; otherwise the matching
/// glob with the longest literal prefix, then the fewest wildcards, then the first defined.
pub(crate) fn best<'a>(resolvers: &'a [Resolver], requested: &str) -> Option<&'a Resolver> {
    if let Some(r) = resolvers
        .iter()
        .find(|r| r.glob.is_literal() && r.name == requested)
    {
        return Some(r);
    }
    let mut best: Option<&Resolver> = None;
    for r in resolvers.iter().filter(|r| r.glob.is_match(requested)) {
        let better = match best {
            None => true,
            Some(b) => {
                let (rp, bp) = (r.glob.literal_prefix().len(), b.glob.literal_prefix().len());
                rp > bp || (rp == bp && r.glob.wildcards() < b.glob.wildcards())
            }
        };
        if better {
            best = Some(r);
        }
    }
    best
}
