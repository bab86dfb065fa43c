//! The `dotenv` provider and the dotenv parser.
//!
//! [`parse`] reads `KEY=VALUE` text the way dotenv tools write it (it is also what `kz import`
//! uses); [`DotenvProvider`] resolves a reference (the key) from one such file, read afresh on
//! every `resolve` call so edits are picked up without restarting anything.
//!
//! Syntax accepted by [`parse`]:
//!
//! - blank lines and lines starting with `#` are ignored; an optional `export ` prefix is dropped;
//! - `KEY=VALUE`, with spaces or tabs tolerated around `=`; `KEY` matches
//!   `[A-Za-z_][A-Za-z0-9_.-]*`;
//! - unquoted values end at the line end or at a ` #` comment (a `#` after whitespace), and are
//!   trimmed;
//! - `'single'` and `` `backtick` `` quoted values are literal and may span lines;
//! - `"double"` quoted values may span lines and process the escapes `\n \r \t \\ \" \$`
//!   (any other backslash is kept as written);
//! - `$VAR` and `${VAR}` are never expanded;
//! - CRLF line endings are accepted, and a leading byte-order mark is skipped;
//! - a key given twice keeps its first position and its last value.
//!
//! Errors carry the 1-based line and a message that never contains any part of a value.

use std::collections::HashMap;
use std::fmt;
use std::path::PathBuf;

use kz_config::ProviderInstance;
use kz_resolve::{BoxFuture, Description, ErrorKind, Item, Provider, ProviderError};
use kz_secret::{Resolved, SecretValue};
use zeroize::Zeroizing;

use crate::BuildContext;

/// A dotenv syntax error. `message` names the problem and, at most, the key; never a value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DotenvError {
    /// 1-based line of the problem (for an unterminated quote: the line where it opened).
    pub line: usize,
    /// What is wrong.
    pub message: String,
}

impl fmt::Display for DotenvError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for DotenvError {}

/// Parses dotenv text into `(KEY, value)` pairs in file order (see the module docs for the
/// syntax).
pub fn parse(text: &str) -> Result<Vec<(String, SecretValue)>, DotenvError> {
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    let mut parser = Parser {
        src: text,
        pos: 0,
        line: 1,
    };
    let mut out: Vec<(String, SecretValue)> = Vec::new();
    let mut index: HashMap<String, usize> = HashMap::new();
    while let Some((key, value)) = parser.next_entry()? {
        match index.get(&key).and_then(|&i| out.get_mut(i)) {
            Some(slot) => slot.1 = value,
            None => {
                index.insert(key.clone(), out.len());
                out.push((key, value));
            }
        }
    }
    Ok(out)
}

/// Whether `key` is a valid dotenv key (`[A-Za-z_][A-Za-z0-9_.-]*`).
pub fn is_valid_key(key: &str) -> bool {
    let mut chars = key.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'))
}

/// A byte cursor over the text. Every delimiter is ASCII, so slicing at the positions it stops
/// at always lands on UTF-8 character boundaries.
struct Parser<'a> {
    src: &'a str,
    pos: usize,
    line: usize,
}

impl Parser<'_> {
    fn peek(&self) -> Option<u8> {
        self.src.as_bytes().get(self.pos).copied()
    }

    fn rest(&self) -> &[u8] {
        self.src.as_bytes().get(self.pos..).unwrap_or_default()
    }

    /// Skips spaces, tabs and carriage returns (never a newline).
    fn skip_blanks(&mut self) -> bool {
        let start = self.pos;
        while matches!(self.peek(), Some(b' ' | b'\t' | b'\r')) {
            self.pos += 1;
        }
        self.pos > start
    }

    /// Moves past the end of the current line.
    fn skip_line(&mut self) {
        match self.rest().iter().position(|&b| b == b'\n') {
            Some(i) => {
                self.pos += i + 1;
                self.line += 1;
            }
            None => self.pos = self.src.len(),
        }
    }

    fn error(line: usize, message: impl Into<String>) -> DotenvError {
        DotenvError {
            line,
            message: message.into(),
        }
    }

    /// The next `KEY=VALUE` entry, or `None` at the end of the text.
    fn next_entry(&mut self) -> Result<Option<(String, SecretValue)>, DotenvError> {
        loop {
            self.skip_blanks();
            match self.peek() {
                None => return Ok(None),
                Some(b'\n') => {
                    self.pos += 1;
                    self.line += 1;
                }
                Some(b'#') => self.skip_line(),
                Some(_) => break,
            }
        }
        let line = self.line;
        if let Some(after) = self.rest().strip_prefix(b"export")
            && matches!(after.first(), Some(b' ' | b'\t'))
        {
            self.pos += "export".len();
            self.skip_blanks();
        }

        let start = self.pos;
        while matches!(self.peek(), Some(b) if !matches!(b, b'=' | b' ' | b'\t' | b'\r' | b'\n')) {
            self.pos += 1;
        }
        let key = self.src.get(start..self.pos).unwrap_or_default();
        self.skip_blanks();
        if self.peek() != Some(b'=') {
            // The text is not echoed: a line without `=` may be a pasted secret.
            return Err(Self::error(
                line,
                "expected `KEY=VALUE`: this line has no `=` after its first word",
            ));
        }
        if !is_valid_key(key) {
            return Err(Self::error(
                line,
                "invalid key: a key starts with a letter or `_` and contains only letters, digits, `_`, `.` and `-`",
            ));
        }
        let key = key.to_string();
        self.pos += 1; // `=`
        let had_blank = self.skip_blanks();

        let value = match self.peek() {
            Some(q @ (b'\'' | b'`')) => self.literal_quoted(q, &key)?,
            Some(b'"') => self.double_quoted(&key)?,
            _ => self.unquoted(had_blank),
        };
        Ok(Some((key, value)))
    }

    /// An unquoted value: up to the line end or a ` #` comment, trimmed.
    fn unquoted(&mut self, had_blank: bool) -> SecretValue {
        let start = self.pos;
        let rest = self.rest();
        let line_end = rest.iter().position(|&b| b == b'\n').unwrap_or(rest.len());
        let mut end = line_end;
        let mut prev_blank = had_blank;
        for (i, &b) in rest.iter().take(line_end).enumerate() {
            if b == b'#' && prev_blank {
                end = i;
                break;
            }
            prev_blank = matches!(b, b' ' | b'\t');
        }
        let raw = self.src.get(start..start + end).unwrap_or_default();
        let value = raw.trim_matches(|c| matches!(c, ' ' | '\t' | '\r'));
        self.pos = start + line_end;
        if self.peek() == Some(b'\n') {
            self.pos += 1;
            self.line += 1;
        }
        SecretValue::from_str_copy(value)
    }

    /// A `'…'` or `` `…` `` value: literal, may span lines.
    fn literal_quoted(&mut self, quote: u8, key: &str) -> Result<SecretValue, DotenvError> {
        let open_line = self.line;
        let start = self.pos + 1;
        let body = self.src.as_bytes().get(start..).unwrap_or_default();
        let Some(len) = body.iter().position(|&b| b == quote) else {
            return Err(Self::error(open_line, unterminated(quote, key)));
        };
        let raw = self.src.get(start..start + len).unwrap_or_default();
        let value = SecretValue::from_str_copy(raw);
        self.line += count_newlines(raw);
        self.pos = start + len + 1;
        self.after_closing_quote(key)?;
        Ok(value)
    }

    /// A `"…"` value: escapes processed, may span lines.
    fn double_quoted(&mut self, key: &str) -> Result<SecretValue, DotenvError> {
        let open_line = self.line;
        let start = self.pos + 1;
        let body = self.src.as_bytes().get(start..).unwrap_or_default();
        let mut i = 0;
        let len = loop {
            match body.get(i) {
                None => return Err(Self::error(open_line, unterminated(b'"', key))),
                Some(b'\\') => i += 2,
                Some(b'"') => break i,
                Some(_) => i += 1,
            }
        };
        let raw = self.src.get(start..start + len).unwrap_or_default();
        // Escapes only shrink the text, so this buffer never reallocates (no stray copies).
        let mut value = String::with_capacity(raw.len());
        let mut chars = raw.chars();
        while let Some(c) = chars.next() {
            if c != '\\' {
                value.push(c);
                continue;
            }
            match chars.next() {
                Some('n') => value.push('\n'),
                Some('r') => value.push('\r'),
                Some('t') => value.push('\t'),
                Some(e @ ('\\' | '"' | '$')) => value.push(e),
                Some(other) => {
                    value.push('\\');
                    value.push(other);
                }
                None => value.push('\\'),
            }
        }
        self.line += count_newlines(raw);
        self.pos = start + len + 1;
        self.after_closing_quote(key)?;
        Ok(SecretValue::from_string(value))
    }

    /// After a closing quote only blanks and a comment may follow on the line.
    fn after_closing_quote(&mut self, key: &str) -> Result<(), DotenvError> {
        self.skip_blanks();
        match self.peek() {
            None => Ok(()),
            Some(b'\n' | b'#') => {
                self.skip_line();
                Ok(())
            }
            Some(_) => Err(Self::error(
                self.line,
                format!(
                    "unexpected text after the closing quote of `{key}` (quote the whole value)"
                ),
            )),
        }
    }
}

fn count_newlines(s: &str) -> usize {
    s.bytes().filter(|&b| b == b'\n').count()
}

fn unterminated(quote: u8, key: &str) -> String {
    let name = match quote {
        b'\'' => "single quote",
        b'`' => "backtick",
        _ => "double quote",
    };
    format!("the value of `{key}` opens a {name} that is never closed")
}

/// Resolves keys from a dotenv file (option `path`, default `.env` in the project directory).
#[derive(Debug)]
pub struct DotenvProvider {
    instance: String,
    path: PathBuf,
}

impl DotenvProvider {
    /// Builds the provider; the file is read only when a value is resolved.
    pub fn new(inst: &ProviderInstance, ctx: &BuildContext) -> Result<Self, ProviderError> {
        let path = inst
            .opt_path("path", ctx.home.as_deref())
            .unwrap_or_else(|| ctx.project_dir.join(".env"));
        Ok(Self {
            instance: inst.name.clone(),
            path,
        })
    }

    /// Reads and parses the whole file.
    fn load(&self) -> Result<Vec<(String, SecretValue)>, ProviderError> {
        let path = self.path.display();
        let text = match std::fs::read(&self.path) {
            Ok(bytes) => Zeroizing::new(bytes),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(ProviderError::new(
                    ErrorKind::Config,
                    format!("the dotenv file {path} does not exist"),
                )
                .help(format!(
                    "create {path} with `KEY=VALUE` lines, or set `path` on provider `{}`",
                    self.instance
                )));
            }
            Err(e) => {
                return Err(ProviderError::new(
                    ErrorKind::Config,
                    format!("cannot read the dotenv file {path}: {e}"),
                )
                .help(format!("check that {path} is a readable file")));
            }
        };
        let text = std::str::from_utf8(&text).map_err(|e| {
            ProviderError::new(
                ErrorKind::Config,
                format!(
                    "the dotenv file {path} is not UTF-8 text (invalid byte at offset {})",
                    e.valid_up_to()
                ),
            )
            .help("save the file as UTF-8")
        })?;
        parse(text).map_err(|e| {
            ProviderError::new(
                ErrorKind::Config,
                format!("{path}:{}: {}", e.line, e.message),
            )
            .help(format!(
                "fix line {} of {path} (dotenv syntax: KEY=VALUE, quotes, `#` comments)",
                e.line
            ))
        })
    }

    fn lookup(
        &self,
        entries: &[(String, SecretValue)],
        item: &Item,
    ) -> Result<Resolved, ProviderError> {
        let key = item.reference.as_str();
        if !is_valid_key(key) {
            return Err(ProviderError::new(
                ErrorKind::BadReference,
                format!("`{key}` is not a dotenv key"),
            )
            .help("a key starts with a letter or `_` and contains only letters, digits, `_`, `.` and `-`"));
        }
        match entries.iter().find(|(k, _)| k == key) {
            Some((_, v)) => Ok(Resolved::Single(v.duplicate())),
            None => Err(ProviderError::not_found(format!(
                "key `{key}` is not in the dotenv file {}",
                self.path.display()
            ))
            .help(format!(
                "add a `{key}=…` line to {}, or fix the reference",
                self.path.display()
            ))),
        }
    }
}

impl Provider for DotenvProvider {
    fn resolve<'a>(
        &'a self,
        items: &'a [Item],
    ) -> BoxFuture<'a, Vec<Result<Resolved, ProviderError>>> {
        Box::pin(async move {
            match self.load() {
                Ok(entries) => items
                    .iter()
                    .map(|item| self.lookup(&entries, item))
                    .collect(),
                Err(e) => items.iter().map(|_| Err(e.clone())).collect(),
            }
        })
    }

    fn max_batch(&self) -> usize {
        1000
    }

    /// The dotenv file.
    fn sources(&self, _items: &[Item]) -> Vec<PathBuf> {
        vec![self.path.clone()]
    }

    fn describe(&self) -> Description {
        Description {
            instance: self.instance.clone(),
            type_name: "dotenv",
            details: vec![("path".into(), self.path.display().to_string())],
        }
    }

    fn check<'a>(&'a self) -> BoxFuture<'a, Result<(), ProviderError>> {
        Box::pin(async move { self.load().map(|_| ()) })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const CANARY: &str = "kz-canary-5d1e7b";

    fn map(text: &str) -> Vec<(String, String)> {
        parse(text)
            .unwrap()
            .into_iter()
            .map(|(k, v)| (k, v.expose_str().unwrap().to_string()))
            .collect()
    }

    fn one(text: &str) -> String {
        let m = map(text);
        assert_eq!(m.len(), 1, "{m:?}");
        m[0].1.clone()
    }

    fn err(text: &str) -> DotenvError {
        let e = parse(text).unwrap_err();
        let shown = format!("{e} {e:?}");
        assert!(!shown.contains(CANARY), "{shown}");
        e
    }

    #[test]
    fn basic_lines_comments_and_blanks() {
        let m =
            map("# comment\n\nA=1\n  # indented comment\nB = two\nexport C=3\n\texport\tD = 4 \n");
        assert_eq!(
            m,
            vec![
                ("A".into(), "1".into()),
                ("B".into(), "two".into()),
                ("C".into(), "3".into()),
                ("D".into(), "4".into())
            ]
        );
    }

    #[test]
    fn unquoted_values() {
        assert_eq!(one("A=abc # comment"), "abc");
        assert_eq!(one("A=abc#not-a-comment"), "abc#not-a-comment");
        assert_eq!(one("A= # only a comment"), "");
        assert_eq!(one("A=#hash-start"), "#hash-start");
        assert_eq!(one("A=a=b=c"), "a=b=c");
        assert_eq!(one("A=  spaced  out  "), "spaced  out");
        assert_eq!(one("A=it's \"fine\""), "it's \"fine\"");
        assert_eq!(one("A="), "");
        assert_eq!(
            map("A=\nB=x"),
            vec![("A".into(), "".into()), ("B".into(), "x".into())]
        );
    }

    #[test]
    fn single_and_backtick_quotes_are_literal() {
        assert_eq!(one(r"A='a\nb $HOME ${X} \'"), r"a\nb $HOME ${X} \");
        assert_eq!(one("A='multi\nline' # c"), "multi\nline");
        assert_eq!(one("A=`back \"tick\" 'x'`"), "back \"tick\" 'x'");
        assert_eq!(one("A=''"), "");
        assert_eq!(one("A='  keep spaces  '"), "  keep spaces  ");
        assert_eq!(one("A='# not a comment'"), "# not a comment");
    }

    #[test]
    fn double_quotes_process_escapes() {
        assert_eq!(one(r#"A="a\nb\rc\td\\e\"f\$g""#), "a\nb\rc\td\\e\"f$g");
        assert_eq!(
            one(r#"A="unknown \q \u00e9 kept""#),
            r"unknown \q \u00e9 kept"
        );
        assert_eq!(one("A=\"line1\nline2\""), "line1\nline2");
        assert_eq!(
            one(r#"A="$HOME ${HOME} not expanded""#),
            "$HOME ${HOME} not expanded"
        );
        assert_eq!(one(r#"A="""#), "");
        assert_eq!(one(r#"A="ends with backslash\\""#), "ends with backslash\\");
    }

    #[test]
    fn dollar_is_never_expanded() {
        assert_eq!(one("A=$HOME"), "$HOME");
        assert_eq!(one("A=${HOME}/x"), "${HOME}/x");
    }

    #[test]
    fn duplicates_keep_first_position_and_last_value() {
        let m = map("A=1\nB=2\nA=3\n");
        assert_eq!(m, vec![("A".into(), "3".into()), ("B".into(), "2".into())]);
    }

    #[test]
    fn line_numbers_follow_multiline_values() {
        let e = err("A=\"x\ny\"\nB='z\n\nC=1\n");
        assert_eq!(e.line, 3);
        assert!(
            e.message.contains("`B`") && e.message.contains("single quote"),
            "{e}"
        );
        let e = err("A=1\r\nB=\"open\r\n");
        assert_eq!(e.line, 2);
        assert!(e.message.contains("double quote"));
        let e = err("A=1\nB=`x");
        assert_eq!((e.line, e.message.contains("backtick")), (2, true));
    }

    #[test]
    fn key_errors() {
        let e = err(&format!("A=1\n{CANARY}\n"));
        assert_eq!(e.line, 2);
        assert!(e.message.contains("no `=`"), "{e}");
        let e = err("1A=x");
        assert!(e.message.contains("invalid key"), "{e}");
        let e = err("A B=x");
        assert!(e.message.contains("no `=`"));
        let e = err(&format!("A\0B={CANARY}"));
        assert!(e.message.contains("invalid key"));
        let e = err(&format!("ÄKEY={CANARY}"));
        assert!(e.message.contains("invalid key"));
        let e = err(&format!("=\"{CANARY}\""));
        assert!(e.message.contains("invalid key"));
        let e = err("export");
        assert!(e.message.contains("no `=`"));
        assert_eq!(map("export=1"), vec![("export".into(), "1".into())]);
        assert_eq!(map("a.b-c_D9=1")[0].0, "a.b-c_D9");
    }

    #[test]
    fn text_after_closing_quote_is_an_error_without_the_value() {
        let e = err(&format!("A='{CANARY}'{CANARY}"));
        assert!(e.message.contains("`A`"), "{e}");
    }

    #[test]
    fn unterminated_quotes_never_show_the_value() {
        for q in ['\'', '"', '`'] {
            let e = err(&format!("\n\nSECRET={q}{CANARY}\nmore {CANARY}\n"));
            assert_eq!(e.line, 3);
            assert!(e.message.contains("`SECRET`"));
        }
        let e = err(&format!("A=\"{CANARY}\\"));
        assert_eq!(e.line, 1);
    }

    #[test]
    fn crlf_and_bom() {
        let m = map("\u{feff}A=1\r\nB='x'\r\n# c\r\nC=\"y\" # c\r\nD=z \r\n");
        assert_eq!(
            m,
            vec![
                ("A".into(), "1".into()),
                ("B".into(), "x".into()),
                ("C".into(), "y".into()),
                ("D".into(), "z".into())
            ]
        );
        // A CRLF inside quotes is part of the value, as written.
        assert_eq!(one("A='a\r\nb'"), "a\r\nb");
    }

    #[test]
    fn hostile_input() {
        assert_eq!(one("A=a\0b"), "a\0b");
        assert_eq!(one("A='\0'"), "\0");
        let long = "x".repeat(1 << 20);
        assert_eq!(one(&format!("A={long}")).len(), long.len());
        assert_eq!(one(&format!("A=\"{long}\"")).len(), long.len());
        assert_eq!(one("A=héllo wörld ✓ 🎉"), "héllo wörld ✓ 🎉");
        assert_eq!(one("A=\"é\\é\""), "é\\é");
        assert_eq!(one("A=\"\\🎉\""), "\\🎉");
        assert!(parse("").unwrap().is_empty());
        assert!(parse("\n\n   \n# x").unwrap().is_empty());
        assert!(parse("\u{feff}").unwrap().is_empty());
        // Many lines, none of them panicking.
        let many: String = (0..5000).map(|i| format!("K{i}=v{i}\n")).collect();
        assert_eq!(parse(&many).unwrap().len(), 5000);
        for junk in [
            "=", "==", "\"", "'", "A=\"\\", "export =", "\r", "A\r=1", "#\n=", "A='", "\u{0}",
        ] {
            let _ = parse(junk);
        }
    }

    #[test]
    fn lone_key_without_equals_is_an_error() {
        let e = err("A");
        assert_eq!(e.line, 1);
    }
}
