//! Method and path bindings: next to `hosts`, a credential may be limited to some HTTP methods
//! (`methods = ["GET", "POST"]`) and request paths (`paths = ["/v1/charges", "/repos/acme/**"]`).
//!
//! A path pattern is matched against the request path as sent, segment by segment: `*` matches
//! any run of characters within one segment, `**` (a whole segment) any number of segments,
//! anything else itself (case-sensitive). Before matching, the path is put in one canonical form
//! ([`canonical_path`]): escapes of unreserved characters are decoded (`%61` is `a`), and a path
//! that another server could read as a different path is refused outright: a `.` or `..`
//! segment, an escaped `.`, `/`, `\`, `%`, `;`, control or non-ASCII byte, a raw `\`, `;` or
//! non-ASCII character, an empty segment (`//`).
//! So a pattern never matches a path that an upstream would normalise to something else.

use std::fmt;

/// The HTTP methods a credential may be used with (uppercase). Empty: any method.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Methods(Vec<String>);

impl Methods {
    /// Parses a list of method names (`GET`, `post`, …: an HTTP token, uppercased).
    /// `Err` names the bad entry.
    pub fn parse<'a>(items: impl IntoIterator<Item = &'a str>) -> Result<Self, String> {
        let mut out: Vec<String> = Vec::new();
        for m in items {
            let t = m;
            if t.is_empty()
                || t.len() > 32
                || !t
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
            {
                return Err(format!(
                    "`{m}` is not an HTTP method (write e.g. \"GET\", \"POST\")"
                ));
            }
            let up = t.to_ascii_uppercase();
            if !out.contains(&up) {
                out.push(up);
            }
        }
        Ok(Self(out))
    }

    /// Whether the list is empty (any method is allowed).
    pub fn is_any(&self) -> bool {
        self.0.is_empty()
    }

    /// Whether `method` (as sent; compared exactly, methods are case-sensitive) is allowed.
    pub fn allows(&self, method: &str) -> bool {
        self.0.is_empty() || self.0.iter().any(|m| m == method)
    }

    /// Whether only some methods are allowed (a list was given).
    pub fn restricts(&self) -> bool {
        !self.0.is_empty()
    }

    /// The methods, uppercase.
    pub fn as_slice(&self) -> &[String] {
        &self.0
    }
}

impl fmt::Display for Methods {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0.is_empty() {
            return f.write_str("any method");
        }
        f.write_str(&self.0.join(", "))
    }
}

/// One segment of a path pattern.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Seg {
    /// `**`: any number of segments (zero included).
    Any,
    /// A segment with optional `*` wildcards: the literal pieces between them.
    Glob(Vec<String>),
}

/// A path glob (`/v1/charges`, `/repos/*/issues`, `/files/**`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PathPattern {
    text: String,
    segs: Vec<Seg>,
}

impl PathPattern {
    /// Parses a pattern. It starts with `/`, has no query (`?`) or fragment (`#`), and is itself
    /// in canonical form (see [`canonical_path`]); `**` stands alone in its segment.
    pub fn parse(input: &str) -> Result<Self, String> {
        let s = input.trim();
        if !s.starts_with('/') {
            return Err(format!(
                "`{input}` is not a path pattern: it must start with `/` (e.g. \"/v1/charges\", \
                 \"/repos/acme/**\")"
            ));
        }
        if s.contains('?') || s.contains('#') {
            return Err(format!(
                "`{input}`: a path pattern has no query or fragment (`?`, `#`)"
            ));
        }
        let canon = canonical_path(s).map_err(|why| format!("`{input}`: {why}"))?;
        let mut segs = Vec::new();
        for seg in canon.split('/').skip(1) {
            if seg == "**" {
                if segs.last() != Some(&Seg::Any) {
                    segs.push(Seg::Any);
                }
            } else if seg.contains("**") {
                return Err(format!(
                    "`{input}`: `**` must be a whole segment (`/a/**/b`); `*` matches within one"
                ));
            } else {
                segs.push(Seg::Glob(seg.split('*').map(String::from).collect()));
            }
        }
        Ok(Self { text: canon, segs })
    }

    /// Whether the canonical path `path` (from [`canonical_path`]) matches.
    pub fn matches(&self, path: &str) -> bool {
        let parts: Vec<&str> = path.split('/').skip(1).collect();
        match_segs(&self.segs, &parts)
    }
}

impl fmt::Display for PathPattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

/// Segment matching in time proportional to pattern segments × path segments (a path with many
/// segments against several `**` is not exponential): `ok[j]` says whether the pattern's
/// segments so far match the first `j` path segments.
fn match_segs(pat: &[Seg], parts: &[&str]) -> bool {
    let mut ok = vec![false; parts.len() + 1];
    if let Some(first) = ok.first_mut() {
        *first = true;
    }
    for seg in pat {
        let mut next = vec![false; parts.len() + 1];
        match seg {
            Seg::Any => {
                // Zero or more segments: true from the first reachable position on.
                let mut reach = false;
                for (n, o) in next.iter_mut().zip(&ok) {
                    reach |= *o;
                    *n = reach;
                }
            }
            Seg::Glob(pieces) => {
                for (j, part) in parts.iter().enumerate() {
                    if ok.get(j).copied().unwrap_or(false)
                        && glob_segment(pieces, part)
                        && let Some(n) = next.get_mut(j + 1)
                    {
                        *n = true;
                    }
                }
            }
        }
        ok = next;
    }
    ok.last().copied().unwrap_or(false)
}

/// Whether `seg` matches the literal `pieces` with a `*` between each two.
fn glob_segment(pieces: &[String], seg: &str) -> bool {
    let Some((first, rest)) = pieces.split_first() else {
        return seg.is_empty();
    };
    let Some(mut tail) = seg.strip_prefix(first.as_str()) else {
        return false;
    };
    let Some((last, middle)) = rest.split_last() else {
        return tail.is_empty(); // no `*`: exact
    };
    for p in middle {
        match tail.find(p.as_str()) {
            Some(i) => tail = tail.get(i + p.len()..).unwrap_or_default(),
            None => return false,
        }
    }
    tail.len() >= last.len() && tail.ends_with(last.as_str())
}

/// The canonical form of a request path as sent (no query), or why it is ambiguous.
///
/// Escapes of unreserved characters (letters, digits, `-`, `_`, `~`) are decoded; other escapes
/// are kept with uppercase hex. Refused: a path not starting with `/`; an empty segment; a `.`
/// or `..` segment; an escaped `.`, `/`, `\`, `%`, `;`, control or non-ASCII byte; a raw `\`,
/// `;`, control or non-ASCII character; a malformed escape. Servers disagree on exactly these, so a binding cannot say
/// which resource such a path names.
pub fn canonical_path(path: &str) -> Result<String, String> {
    if !path.starts_with('/') {
        return Err("the path does not start with `/`".into());
    }
    let bytes = path.as_bytes();
    let mut out = String::with_capacity(path.len());
    let mut i = 0;
    while let Some(&b) = bytes.get(i) {
        if b == b'%' {
            let hex = bytes
                .get(i + 1..i + 3)
                .and_then(|h| std::str::from_utf8(h).ok());
            let Some(v) = hex.and_then(|h| u8::from_str_radix(h, 16).ok()) else {
                return Err("the path has a malformed `%` escape".into());
            };
            if v.is_ascii_alphanumeric() || v == b'-' || v == b'_' || v == b'~' {
                out.push(char::from(v));
            } else if matches!(v, b'.' | b'/' | b'\\' | b'%' | b';' | b'?' | b'#')
                || !(0x20..0x7f).contains(&v)
            {
                return Err(format!(
                    "the path escapes `{}` (%{v:02X}), which servers read differently",
                    if v < 0x20 || v == 0x7f {
                        "a control byte".to_string()
                    } else if v > 0x7f {
                        "a non-ASCII byte".to_string()
                    } else {
                        char::from(v).to_string()
                    }
                ));
            } else {
                out.push('%');
                out.push_str(&format!("{v:02X}"));
            }
            i += 3;
            continue;
        }
        if b == b'\\' || b < 0x20 || b == 0x7f {
            return Err("the path has a `\\` or a control character".into());
        }
        // Servlet containers cut `;params` off a segment (`/a;.json` is `/a`), and servers that
        // normalise Unicode read fullwidth or overlong forms as `.` or `/`: neither is in the
        // one grammar every server reads alike.
        if b == b';' {
            return Err(
                "the path has `;` (path parameters, which servers read differently)".into(),
            );
        }
        if b > 0x7f {
            return Err("the path has a non-ASCII character".into());
        }
        out.push(char::from(b));
        i += 1;
    }
    for seg in out.split('/').skip(1) {
        // `..;x` and `.;x` are dot segments to servlet containers, and servers that trim
        // whitespace read `..%20` as `..`.
        let name = seg.split(';').next().unwrap_or_default().replace("%20", "");
        if name == "." || name == ".." {
            return Err("the path has a `.` or `..` segment".into());
        }
    }
    // An empty segment means different things to different servers (merged or kept); a
    // trailing `/` is kept: it is a segment of its own, matched as such.
    if out.contains("//") {
        return Err("the path has an empty segment (`//`)".into());
    }
    Ok(out)
}

/// A credential's method and path binding (empty lists allow everything).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Binding {
    /// Allowed methods.
    pub methods: Methods,
    /// Allowed paths; empty: any path.
    pub paths: Vec<PathPattern>,
}

/// Why a request falls outside a [`Binding`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BindingRefusal {
    /// The method is not listed.
    Method,
    /// The path matches no pattern.
    Path,
    /// The path is ambiguous (see [`canonical_path`]); the text says how.
    AmbiguousPath(String),
}

impl Binding {
    /// Whether the binding limits anything.
    pub fn is_open(&self) -> bool {
        self.methods.is_any() && self.paths.is_empty()
    }

    /// Checks a request's method and path (as sent, without the query).
    pub fn check(&self, method: &str, path: &str) -> Result<(), BindingRefusal> {
        if !self.methods.allows(method) {
            return Err(BindingRefusal::Method);
        }
        if self.paths.is_empty() {
            return Ok(());
        }
        let canon = canonical_path(path).map_err(BindingRefusal::AmbiguousPath)?;
        if self.paths.iter().any(|p| p.matches(&canon)) {
            Ok(())
        } else {
            Err(BindingRefusal::Path)
        }
    }

    /// The paths, for messages (`any path` when none).
    pub fn paths_text(&self) -> String {
        if self.paths.is_empty() {
            return "any path".into();
        }
        self.paths
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join(", ")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn binding(methods: &[&str], paths: &[&str]) -> Binding {
        Binding {
            methods: Methods::parse(methods.iter().copied()).unwrap(),
            paths: paths
                .iter()
                .map(|p| PathPattern::parse(p).unwrap())
                .collect(),
        }
    }

    #[test]
    fn methods_are_tokens_uppercased_and_exact() {
        let m = Methods::parse(["get", "POST", "get"]).unwrap();
        assert_eq!(m.as_slice(), ["GET", "POST"]);
        assert!(m.allows("GET") && m.allows("POST"));
        assert!(!m.allows("HEAD") && !m.allows("get") && !m.allows("DELETE"));
        assert!(Methods::parse([]).unwrap().allows("PATCH"));
        for bad in ["", "G ET", "GET\n", "(GET)", "GÉT"] {
            assert!(Methods::parse([bad]).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn globs_within_and_across_segments() {
        let b = binding(
            &[],
            &[
                "/v1/charges",
                "/repos/*/issues",
                "/files/**",
                "/a/**/z",
                "/x/pre*suf",
            ],
        );
        for ok in [
            "/v1/charges",
            "/repos/acme/issues",
            "/files",
            "/files/a/b/c",
            "/a/z",
            "/a/b/c/z",
            "/x/presuf",
            "/x/pre-mid-suf",
        ] {
            assert_eq!(b.check("GET", ok), Ok(()), "{ok}");
        }
        for no in [
            "/v1/charges/ch_1",
            "/v1/Charges",
            "/v1/charges/",
            "/repos/acme/x/issues",
            "/repos/issues",
            "/filesx",
            "/a/b/y",
            "/x/pre",
            "/x/presu",
            "/",
        ] {
            assert_eq!(b.check("GET", no), Err(BindingRefusal::Path), "{no}");
        }
        // `/**` is every path, the root included.
        assert_eq!(binding(&[], &["/**"]).check("GET", "/"), Ok(()));
    }

    #[test]
    fn many_double_stars_on_a_long_path_stay_cheap() {
        let b = binding(&[], &["/**/a/**/b/**/c/**/d/**/e"]);
        let long = "/x".repeat(4000);
        assert_eq!(b.check("GET", &long), Err(BindingRefusal::Path));
        assert_eq!(b.check("GET", &format!("{long}/a/b/c/d/e")), Ok(()));
    }

    #[test]
    fn unreserved_escapes_are_the_same_path() {
        let b = binding(&[], &["/v1/charges", "/q/a%20b"]);
        assert_eq!(b.check("GET", "/v1/%63harges"), Ok(()));
        assert_eq!(b.check("GET", "/q/a%20b"), Ok(()));
        assert_eq!(b.check("GET", "/q/a%2cb"), Err(BindingRefusal::Path));
        assert_eq!(
            PathPattern::parse("/v1/%63harges").unwrap().to_string(),
            "/v1/charges"
        );
    }

    #[test]
    fn ambiguous_paths_are_refused_before_matching() {
        let b = binding(&[], &["/public/**"]);
        for bad in [
            "/public/../admin",
            "/public/./x",
            "/public/%2e%2e/admin",
            "/public/%2E./admin",
            "/public/..;/admin",
            "/public/..%2fadmin",
            "/public/%2F..",
            "/public\\..\\admin",
            "/public/%5c..",
            "/public/%252e%252e/admin",
            "/public//admin",
            "/public/%00",
            "/public/%0a",
            "/public/%zz",
            "/public/%2",
            "public/x",
            "/public/secret;.json",
            "/public/x%3b.json",
            "/public/\u{ff0e}\u{ff0e}/admin",
            "/public/%EF%BC%8E%EF%BC%8E/admin",
            "/public/%C0%AE%C0%AE/admin",
            "/public/x%3F.json",
            "/public/x%23.json",
            "/public/..%20/admin",
            "/public/%20..%20/admin",
            "/public/.%20/x",
        ] {
            assert!(
                matches!(b.check("GET", bad), Err(BindingRefusal::AmbiguousPath(_))),
                "{bad}: {:?}",
                b.check("GET", bad)
            );
        }
        // Without paths, the path is not looked at (the host binding decides).
        assert_eq!(binding(&["GET"], &[]).check("GET", "/a/../b"), Ok(()));
    }

    #[test]
    fn the_method_is_checked_first() {
        let b = binding(&["GET"], &["/v1/**"]);
        assert_eq!(b.check("POST", "/v1/x"), Err(BindingRefusal::Method));
        assert_eq!(b.check("GET", "/v2"), Err(BindingRefusal::Path));
        assert!(binding(&[], &[]).is_open());
        assert!(!b.is_open());
    }

    #[test]
    fn bad_patterns_say_why() {
        for (bad, why) in [
            ("v1/x", "start with `/`"),
            ("/v1?x=1", "query"),
            ("/a/b**", "whole segment"),
            ("/a/../b", "`..`"),
            ("/a//b", "empty segment"),
        ] {
            let e = PathPattern::parse(bad).unwrap_err();
            assert!(e.contains(why), "{bad}: {e}");
        }
        // `/a/**/**` is `/a/**`.
        assert_eq!(PathPattern::parse("/a/**/**").unwrap().segs.len(), 2);
    }
}
