//! Globs over `/`-separated names (refs, resolver names, request paths): `*` and `?` stay
//! within a segment, `**` crosses segments, `[ab]` is a class and `{a,b}` an alternation
//! (globset's syntax with `literal_separator`). Compiled once; [`Glob::literal_prefix`] feeds
//! the guard index and resolver matching ("longest literal prefix, then fewest wildcards").

use globset::GlobBuilder;

/// A compiled glob.
#[derive(Clone, Debug)]
pub struct Glob {
    pattern: String,
    matcher: globset::GlobMatcher,
    prefix_len: usize,
    wildcards: usize,
}

/// Why a glob pattern is invalid (message from the glob parser, with the pattern).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GlobError(pub String);

impl std::fmt::Display for GlobError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for GlobError {}

/// Bytes that start a wildcard or escape in globset's syntax.
const SPECIAL: &[u8] = b"*?[{\\";

/// The literal text of `pattern` before its first wildcard or escape (every match starts with
/// it), without compiling the pattern.
pub(crate) fn literal_prefix(pattern: &str) -> &str {
    let end = pattern
        .bytes()
        .position(|b| SPECIAL.contains(&b))
        .unwrap_or(pattern.len());
    pattern.get(..end).unwrap_or_default()
}

impl Glob {
    /// Compiles `pattern`.
    pub fn new(pattern: &str) -> Result<Self, GlobError> {
        let matcher = GlobBuilder::new(pattern)
            .literal_separator(true)
            .backslash_escape(true)
            .empty_alternates(true)
            .build()
            .map_err(|e| GlobError(format!("invalid glob `{pattern}`: {}", e.kind())))?
            .compile_matcher();
        Ok(Glob {
            pattern: pattern.to_owned(),
            matcher,
            prefix_len: literal_prefix(pattern).len(),
            wildcards: pattern.bytes().filter(|b| SPECIAL.contains(b)).count(),
        })
    }

    /// Whether `name` matches.
    pub fn is_match(&self, name: &str) -> bool {
        self.matcher.is_match(name)
    }

    /// The pattern as written.
    pub fn pattern(&self) -> &str {
        &self.pattern
    }

    /// The literal text before the first wildcard: every match starts with it.
    pub fn literal_prefix(&self) -> &str {
        self.pattern.get(..self.prefix_len).unwrap_or_default()
    }

    /// Whether the pattern has no wildcard at all (it matches only itself).
    pub fn is_literal(&self) -> bool {
        self.wildcards == 0
    }

    /// How many wildcard characters the pattern has (a tie-breaker: fewer is more specific).
    pub fn wildcards(&self) -> usize {
        self.wildcards
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(p: &str, s: &str) -> bool {
        Glob::new(p).unwrap().is_match(s)
    }

    #[test]
    fn star_stays_in_a_segment_and_double_star_crosses() {
        assert!(m("prod/*", "prod/db"));
        assert!(!m("prod/*", "prod/db/password"));
        assert!(m("prod/**", "prod/db/password"));
        assert!(m("prod/**", "prod/db"));
        assert!(!m("prod/**", "production/db"));
        assert!(m("*", "api-key"));
        assert!(!m("*", "a/b"));
        assert!(m("svc-?", "svc-a"));
        assert!(m("[ab]x", "bx"));
        assert!(!m("[ab]x", "cx"));
        assert!(m("{dev,staging}/**", "staging/x"));
    }

    #[test]
    fn prefix_and_wildcards() {
        let g = Glob::new("prod/db-*/**").unwrap();
        assert_eq!(g.literal_prefix(), "prod/db-");
        assert_eq!(g.wildcards(), 3);
        assert!(!g.is_literal());
        let g = Glob::new("api-key").unwrap();
        assert_eq!(g.literal_prefix(), "api-key");
        assert!(g.is_literal());
        assert!(Glob::new("[unclosed").is_err());
    }
}
