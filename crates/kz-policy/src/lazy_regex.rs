//! The regex of a `matches` call: checked when the bundle loads, built on first use.
//!
//! Building a `regex::Regex` costs tens of microseconds (several engines and their tables),
//! most of a bundle load when every rule has its own regex, and most rules are never evaluated
//! for a given request (the guard index skips them). So loading checks what can make the regex
//! unusable, its syntax and the size of its automaton, with the same parser and the same size
//! limit `regex` applies; the full regex is built the first time a rule needs it.

use std::sync::OnceLock;

use regex_automata::nfa::thompson;
use regex_automata::util::syntax;

/// Compiled-size limit of one `matches` regex.
const SIZE_LIMIT: usize = 1 << 20;

#[derive(Debug)]
pub(crate) struct LazyRegex {
    pattern: String,
    built: OnceLock<Result<regex::Regex, String>>,
}

fn one_line(s: &str) -> String {
    s.split_whitespace().collect::<Vec<_>>().join(" ")
}

impl LazyRegex {
    /// Checks `pattern`: RE2 syntax as `regex` reads it (Unicode, UTF-8, its nesting limit)
    /// and the size of its automata (the NFAs `regex` builds, under the same limit).
    pub(crate) fn check(pattern: &str) -> Result<Self, String> {
        let hir = syntax::parse(pattern).map_err(|e| one_line(&e.to_string()))?;
        let config = thompson::Config::new()
            .utf8(true)
            .shrink(false)
            .nfa_size_limit(Some(SIZE_LIMIT));
        // `regex` builds a forward NFA with captures and, for its lazy DFA, a reverse one
        // without; either over the limit fails the build.
        for config in [
            config.clone(),
            config
                .which_captures(thompson::WhichCaptures::None)
                .reverse(true),
        ] {
            thompson::Compiler::new()
                .configure(config)
                .build_from_hir(&hir)
                .map_err(|e| one_line(&e.to_string()))?;
        }
        Ok(LazyRegex {
            pattern: pattern.to_owned(),
            built: OnceLock::new(),
        })
    }

    /// Whether `haystack` matches, building the regex on first use (concurrent first uses
    /// build it once). An error only if building fails after the load-time check passed.
    pub(crate) fn is_match(&self, haystack: &str) -> Result<bool, String> {
        let built = self.built.get_or_init(|| {
            regex::RegexBuilder::new(&self.pattern)
                .size_limit(SIZE_LIMIT)
                .build()
                .map_err(|e| format!("the regex cannot be compiled: {}", one_line(&e.to_string())))
        });
        match built {
            Ok(re) => Ok(re.is_match(haystack)),
            Err(e) => Err(e.clone()),
        }
    }

    /// Builds the regex now (tests: the load-time check and the build agree).
    #[cfg(test)]
    pub(crate) fn build(&self) -> Result<(), String> {
        self.is_match("").map(|_| ())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn load_check_and_build_agree() {
        let ok = [
            "^repo:acme/.*$",
            r"\w+@\d{2,4}",
            r"(?i)prod|staging",
            r"\p{Greek}+",
            "a{1000}",
            "",
        ];
        for p in ok {
            let re = LazyRegex::check(p).unwrap_or_else(|e| panic!("{p}: {e}"));
            assert_eq!(re.build(), Ok(()), "{p}");
            assert!(regex::Regex::new(p).is_ok(), "{p}");
        }
        let bad = [
            "(",
            "[z-a]",
            r"(?<=a)b",
            r"\1",
            // Within the rule size, far over the automaton limit.
            r"\w{1000}\w{1000}\w{1000}",
            "((((a{100}){100}){100}){100})",
        ];
        for p in bad {
            assert!(LazyRegex::check(p).is_err(), "{p}");
            assert!(
                regex::RegexBuilder::new(p)
                    .size_limit(SIZE_LIMIT)
                    .build()
                    .is_err(),
                "{p}: the regex crate accepts what the check refuses"
            );
        }
    }

    #[test]
    fn matches_like_the_regex_crate() {
        let re = LazyRegex::check("^repo:acme/[a-z]+:").unwrap();
        assert_eq!(re.is_match("repo:acme/api:ref"), Ok(true));
        assert_eq!(re.is_match("repo:evil/api:ref"), Ok(false));
        assert_eq!(re.is_match("x repo:acme/api:"), Ok(false));
    }
}
