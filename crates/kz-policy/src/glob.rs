//! Globs over `/`-separated names (refs, resolver names, request paths): `*` and `?` stay
//! within a segment, `**` crosses segments, `[ab]` is a class and `{a,b}` an alternation
//! (globset's syntax with `literal_separator`). The pattern is parsed and checked when the
//! [`Glob`] is made; its automaton is built on the first match only (a bundle's thousand globs
//! load in well under a millisecond, and a glob no request reaches never costs more).
//! [`Glob::literal_prefix`] feeds the guard index and resolver matching ("longest literal
//! prefix, then fewest wildcards").

use std::sync::OnceLock;

use globset::GlobBuilder;

/// Size limits of a glob's automaton (those globset sets for its own matchers).
const NFA_SIZE_LIMIT: usize = 10 << 20;
const DFA_SIZE_LIMIT: usize = 10 << 20;

/// A glob, checked when made and compiled on first use.
#[derive(Clone, Debug)]
pub struct Glob {
    pattern: String,
    /// globset's translation of the pattern into a byte regex.
    regex: String,
    matcher: OnceLock<Result<regex::bytes::Regex, GlobError>>,
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
    /// Parses and checks `pattern`; every syntax error is reported here.
    pub fn new(pattern: &str) -> Result<Self, GlobError> {
        let parsed = GlobBuilder::new(pattern)
            .literal_separator(true)
            .backslash_escape(true)
            .empty_alternates(true)
            .build()
            .map_err(|e| GlobError(format!("invalid glob `{pattern}`: {}", e.kind())))?;
        Ok(Glob {
            pattern: pattern.to_owned(),
            regex: parsed.regex().to_owned(),
            matcher: OnceLock::new(),
            prefix_len: literal_prefix(pattern).len(),
            wildcards: pattern.bytes().filter(|b| SPECIAL.contains(b)).count(),
        })
    }

    /// Whether `name` matches, building the automaton on first use. Fails only if the
    /// automaton exceeds its size limit, which no pattern of a few kilobytes reaches.
    pub fn try_match(&self, name: &str) -> Result<bool, GlobError> {
        let matcher = self.matcher.get_or_init(|| {
            // globset's own matcher configuration, built without its panic on failure:
            // bytes (no UTF-8 requirement), `.` crossing newlines, its size limits.
            regex::bytes::RegexBuilder::new(&self.regex)
                .dot_matches_new_line(true)
                .size_limit(NFA_SIZE_LIMIT)
                .dfa_size_limit(DFA_SIZE_LIMIT)
                .build()
                .map_err(|e| {
                    GlobError(format!(
                        "glob `{}` cannot be compiled: {}",
                        self.pattern,
                        e.to_string()
                            .split_whitespace()
                            .collect::<Vec<_>>()
                            .join(" ")
                    ))
                })
        });
        match matcher {
            Ok(re) => Ok(re.is_match(name.as_bytes())),
            Err(e) => Err(e.clone()),
        }
    }

    /// Whether `name` matches; `false` in the case where [`Glob::try_match`] fails. Where a
    /// wrong `false` would let a request through (a deny rule), use `try_match`.
    pub fn is_match(&self, name: &str) -> bool {
        self.try_match(name).unwrap_or(false)
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

    /// The matcher built on first use is globset's own, minus its panic: for every pattern
    /// and name, both agree.
    #[test]
    fn matches_exactly_like_globset() {
        let patterns = [
            "prod/**",
            "prod/*",
            "**",
            "*",
            "**/x",
            "a/**/b",
            "prod/*/password",
            "svc-?",
            "[ab]x",
            "[!ab]x",
            "[a-c]/*",
            "{dev,staging}/**",
            "{,x}y",
            "a\\*b",
            "a.b",
            "x+y(z)",
            "^$",
            "prod/db-*/**",
            "*.json",
            "a**",
            "**a",
            "é/*",
            "",
        ];
        let names = [
            "",
            "prod",
            "prod/",
            "prod/db",
            "prod/db/password",
            "production/db",
            "a/b",
            "a/x/y/b",
            "a/b/c",
            "svc-a",
            "svc-ab",
            "bx",
            "cx",
            "c/d",
            "staging/x",
            "y",
            "xy",
            "a*b",
            "axb",
            "a.b",
            "axb",
            "x+y(z)",
            "^$",
            "prod/db-1/x",
            "k.json",
            "d/k.json",
            "prod/a\nb",
            "é/x",
            "/x",
            "x",
            "aa",
            "aaa/a",
            "prod\\db",
        ];
        for p in patterns {
            let ours = Glob::new(p).unwrap();
            let theirs = GlobBuilder::new(p)
                .literal_separator(true)
                .backslash_escape(true)
                .empty_alternates(true)
                .build()
                .unwrap()
                .compile_matcher();
            for n in names {
                assert_eq!(ours.try_match(n), Ok(theirs.is_match(n)), "{p:?} on {n:?}");
                assert_eq!(ours.is_match(n), theirs.is_match(n), "{p:?} on {n:?}");
            }
        }
        // Cloned before and after the first match, a glob still matches.
        let g = Glob::new("prod/**").unwrap();
        let before = g.clone();
        assert!(g.is_match("prod/x"));
        assert!(g.clone().is_match("prod/y") && before.is_match("prod/z"));
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
