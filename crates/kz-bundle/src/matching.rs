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
    /// A `.` or `..` segment.
    DotDot,
    /// An empty segment: a leading or trailing `/`, or `//`.
    EmptySegment,
    /// Any other character outside the ref alphabet (`#`, `?`, a space, a control or
    /// non-ASCII character).
    Character(char),
}

impl std::fmt::Display for RefError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            RefError::Empty => f.write_str("the ref is empty"),
            RefError::TooLong => f.write_str("the ref is longer than 512 bytes"),
            RefError::Nul => f.write_str("the ref contains a NUL byte"),
            RefError::Percent => {
                f.write_str("the ref contains `%` (names are never percent-encoded)")
            }
            RefError::DotDot => f.write_str("the ref has a `.` or `..` segment"),
            RefError::EmptySegment => {
                f.write_str("the ref has an empty segment (a leading or trailing `/`, or `//`)")
            }
            RefError::Character(c) => write!(
                f,
                "the ref contains {}, outside the ref alphabet (ASCII letters, digits and `-_.~+=,@:` in `/`-separated segments)",
                describe(*c)
            ),
        }
    }
}

fn describe(c: char) -> String {
    if c.is_ascii_graphic() {
        format!("`{c}`")
    } else {
        format!("U+{:04X}", u32::from(c))
    }
}

impl std::error::Error for RefError {}

/// Whether `c` may appear in a ref segment.
fn ref_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | '~' | '+' | '=' | ',' | '@' | ':')
}

/// Checks a requested name before anything else looks at it. A ref has one canonical form, so
/// a policy about a name is a policy about the secret it reaches: `/`-separated, non-empty
/// segments of ASCII letters, digits and `-_.~+=,@:`, none of them `.` or `..`, at most 512
/// bytes. Backends read other characters specially (`#` selects a field in a Vault ref, `//`
/// and `.` segments collapse in a path, Unicode has several spellings of one name), which
/// would let two names the policy sees as different reach one secret.
pub fn validate_ref(requested: &str) -> Result<(), RefError> {
    if requested.is_empty() {
        return Err(RefError::Empty);
    }
    if requested.len() > MAX_REF_BYTES {
        return Err(RefError::TooLong);
    }
    if let Some(c) = requested.chars().find(|c| *c != '/' && !ref_char(*c)) {
        return Err(match c {
            '\0' => RefError::Nul,
            '%' => RefError::Percent,
            c => RefError::Character(c),
        });
    }
    for segment in requested.split('/') {
        match segment {
            "" => return Err(RefError::EmptySegment),
            "." | ".." => return Err(RefError::DotDot),
            _ => {}
        }
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
