//! Size and shape limits checked on the rule's text **before** the CEL parser sees it.
//!
//! The `cel` crate's parser and evaluator recurse once per nesting level and per chained
//! operator, so a deeply nested or very long rule can overflow the stack of whatever thread
//! parses or evaluates it; and its parser is known to panic on some malformed input. No real
//! policy comes near these limits; a hostile or generated one is refused with a clear message
//! instead of reaching the recursion.

/// Longest rule accepted, in bytes.
pub const MAX_RULE_BYTES: usize = 4096;
/// Deepest nesting of `(`, `[`, `{` (string literals excluded), plus runs of unary `!`/`-`.
pub const MAX_NESTING: usize = 32;
/// Most operators (binary, unary, `?:`, `.` member calls and selections) in one rule: each can
/// add a level to the parsed tree.
pub const MAX_OPERATORS: usize = 256;

/// Deepest parsed tree accepted, checked after parsing (a chain of `+` nests one level per
/// operator). At this depth evaluation needs under 2 MiB of stack (a tokio worker's) even in a
/// debug build; logical `&&`/`||` chains are balanced by the parser and stay shallow.
pub const MAX_TREE_DEPTH: usize = 48;

/// Checks `rule` against the limits; the error says which limit and how to fix it.
pub(crate) fn check(rule: &str) -> Result<(), String> {
    if rule.len() > MAX_RULE_BYTES {
        return Err(format!(
            "the rule is {} bytes long; rules are limited to {MAX_RULE_BYTES} bytes",
            rule.len()
        ));
    }
    if rule.trim().is_empty() {
        return Err("the rule is empty".into());
    }
    let bytes = rule.as_bytes();
    let mut depth = 0usize;
    let mut max_depth = 0usize;
    let mut unary_run = 0usize;
    let mut operators = 0usize;
    let mut i = 0usize;
    while let Some(&b) = bytes.get(i) {
        match b {
            b'"' | b'\'' => {
                i = skip_string(bytes, i);
                unary_run = 0;
                continue;
            }
            b'(' | b'[' | b'{' => {
                depth += 1;
                max_depth = max_depth.max(depth + unary_run);
            }
            b')' | b']' | b'}' => depth = depth.saturating_sub(1),
            b'!' if bytes.get(i + 1) != Some(&b'=') => {
                unary_run += 1;
                operators += 1;
                max_depth = max_depth.max(depth + unary_run);
                i += 1;
                continue;
            }
            b'-' => {
                unary_run += 1;
                operators += 1;
                max_depth = max_depth.max(depth + unary_run);
                i += 1;
                continue;
            }
            b'&' | b'|' | b'=' | b'<' | b'>' | b'+' | b'*' | b'/' | b'%' | b'?' | b'.' | b':' => {
                // `==`, `&&`, `<=`, … are one operator each.
                let prev = i.checked_sub(1).and_then(|p| bytes.get(p));
                if !prev.is_some_and(|p| b"&|=<>!".contains(p)) {
                    operators += 1;
                }
            }
            _ => {}
        }
        if !b.is_ascii_whitespace() {
            unary_run = 0;
        }
        i += 1;
    }
    if max_depth > MAX_NESTING {
        return Err(format!(
            "the rule nests {max_depth} levels deep; at most {MAX_NESTING} are allowed"
        ));
    }
    if operators > MAX_OPERATORS {
        return Err(format!(
            "the rule has {operators} operators; at most {MAX_OPERATORS} are allowed"
        ));
    }
    Ok(())
}

/// The index just past the string literal starting at `start` (single, double or triple
/// quoted, with backslash escapes); the end of input when it is not closed (the parser then
/// reports it).
fn skip_string(bytes: &[u8], start: usize) -> usize {
    let Some(&quote) = bytes.get(start) else {
        return bytes.len();
    };
    let triple = bytes.get(start + 1) == Some(&quote) && bytes.get(start + 2) == Some(&quote);
    let mut i = start + if triple { 3 } else { 1 };
    while let Some(&b) = bytes.get(i) {
        if b == b'\\' {
            i += 2;
            continue;
        }
        if b == quote {
            if !triple {
                return i + 1;
            }
            if bytes.get(i + 1) == Some(&quote) && bytes.get(i + 2) == Some(&quote) {
                return i + 3;
            }
        }
        i += 1;
    }
    bytes.len()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ordinary_rules_pass() {
        for r in [
            r#"org == "acme" && branch == "main" && ref.glob("prod/**")"#,
            r#"has(context.ticket) && context.ticket.startsWith("INC-")"#,
            r#"claims.repository_owner != org"#,
            r#"!(env in ["prod", "staging"]) || "admins" in groups"#,
        ] {
            assert_eq!(check(r), Ok(()), "{r}");
        }
    }

    #[test]
    fn nesting_inside_strings_does_not_count() {
        let r = format!(r#"ref == "{}""#, "(".repeat(100));
        assert_eq!(check(&r), Ok(()));
    }

    #[test]
    fn deep_nesting_long_rules_and_operator_chains_are_refused() {
        let deep = format!("{}true{}", "(".repeat(40), ")".repeat(40));
        assert!(check(&deep).unwrap_err().contains("nests"));
        let nots = format!("{}true", "!".repeat(40));
        assert!(check(&nots).unwrap_err().contains("nests"));
        let long = format!("ref == \"{}\"", "a".repeat(5000));
        assert!(check(&long).unwrap_err().contains("bytes"));
        let chain = vec!["org == \"a\""; 140].join(" && ");
        assert!(check(&chain).unwrap_err().contains("operators"));
        assert!(check("  ").is_err());
    }
}
