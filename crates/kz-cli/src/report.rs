//! Errors at the edge: one type ([`Failure`]) that carries diagnostics and an exit code, and
//! the rendering of diagnostics as text (`error: …`, `--> file:line:col`, `help: …`) or as one
//! JSON object per line (`--error-format json`).

use std::io::{IsTerminal, Write};

use kz_config::{Diagnostic, Severity};

use crate::cli::ErrorFormat;

/// Escapes every control character (C0 including newline and tab, DEL, and the C1 range) and
/// every invisible formatting character (bidirectional overrides and isolates, zero-width
/// characters, the soft hyphen, the BOM) as `\n`, `\t`, `\r`, `\e` or `\u{..}`, so text that
/// comes from files, directories, backends, tokens or the user cannot drive the terminal
/// (escape sequences, carriage returns that overwrite a line), forge lines of kz's output, or
/// show a name other than the one it is (`\u{202e}` reversing the rest of a line). A backslash itself is left alone. Used for every field
/// of a rendered diagnostic and wherever kz prints names, keys, refs or paths.
pub fn escape(s: &str) -> std::borrow::Cow<'_, str> {
    escape_keeping(s, false)
}

/// Like [`escape`], but keeps newlines and tabs (for kz's own multi-line notes).
pub fn escape_text(s: &str) -> std::borrow::Cow<'_, str> {
    escape_keeping(s, true)
}

/// Unicode format characters (category Cf) that change how text displays without showing.
fn is_invisible_format(c: char) -> bool {
    matches!(
        c,
        '\u{ad}'
            | '\u{61c}'
            | '\u{180e}'
            | '\u{200b}'..='\u{200f}'
            | '\u{202a}'..='\u{202e}'
            | '\u{2060}'..='\u{2064}'
            | '\u{2066}'..='\u{206f}'
            | '\u{feff}'
            | '\u{fff9}'..='\u{fffb}'
            | '\u{e0001}'
            | '\u{e0020}'..='\u{e007f}'
    )
}

fn escape_keeping(s: &str, keep_lines: bool) -> std::borrow::Cow<'_, str> {
    let is_control = |c: char| {
        (c.is_control() || is_invisible_format(c)) && !(keep_lines && (c == '\n' || c == '\t'))
    };
    if !s.chars().any(is_control) {
        return std::borrow::Cow::Borrowed(s);
    }
    let mut out = String::with_capacity(s.len() + 8);
    for c in s.chars() {
        if !is_control(c) {
            out.push(c);
            continue;
        }
        match c {
            '\n' => out.push_str("\\n"),
            '\t' => out.push_str("\\t"),
            '\r' => out.push_str("\\r"),
            '\u{1b}' => out.push_str("\\e"),
            c => out.push_str(&format!("\\u{{{:x}}}", u32::from(c))),
        }
    }
    std::borrow::Cow::Owned(out)
}

/// Exit codes (`cli.md`).
pub mod exit {
    /// Success.
    pub const OK: u8 = 0;
    /// An error.
    pub const ERROR: u8 = 1;
    /// A usage error.
    pub const USAGE: u8 = 2;
    /// Command not found (`kz run`).
    pub const NOT_FOUND: u8 = 127;
    /// Command not executable (`kz run`).
    pub const NOT_EXECUTABLE: u8 = 126;
}

/// A command failed: what to print and the exit code.
#[derive(Debug)]
pub struct Failure {
    /// The diagnostics to print.
    pub diagnostics: Vec<Diagnostic>,
    /// The exit code.
    pub code: u8,
}

impl Failure {
    /// One error, exit code 1.
    pub fn one(d: Diagnostic) -> Self {
        Self {
            diagnostics: vec![d],
            code: exit::ERROR,
        }
    }

    /// Several diagnostics, exit code 1.
    pub fn many(diagnostics: Vec<Diagnostic>) -> Self {
        Self {
            diagnostics,
            code: exit::ERROR,
        }
    }

    /// A usage error (exit code 2).
    pub fn usage(message: impl Into<String>, help: impl Into<String>) -> Self {
        Self {
            diagnostics: vec![Diagnostic::error("usage", message).help(help)],
            code: exit::USAGE,
        }
    }

    /// An error with no file involved.
    pub fn msg(code: &'static str, message: impl Into<String>, help: impl Into<String>) -> Self {
        Self::one(Diagnostic::error(code, message).help(help))
    }
}

impl From<Diagnostic> for Failure {
    fn from(d: Diagnostic) -> Self {
        Self::one(d)
    }
}

/// Result of a command: the exit code on success.
pub type CmdResult = Result<u8, Failure>;

/// How diagnostics and notes are written to stderr.
#[derive(Debug, Clone, Copy)]
pub struct Reporter {
    /// Text or JSON.
    pub format: ErrorFormat,
    /// ANSI colours on stderr.
    pub color: bool,
    /// `--quiet`: only errors.
    pub quiet: bool,
    /// `-v` count.
    pub verbose: u8,
}

impl Reporter {
    /// A reporter for the global flags.
    pub fn new(format: ErrorFormat, no_color: bool, quiet: bool, verbose: u8) -> Self {
        let color = !no_color
            && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty())
            && std::io::stderr().is_terminal();
        Self {
            format,
            color,
            quiet,
            verbose,
        }
    }

    fn paint(&self, code: &str, s: &str) -> String {
        if self.color {
            format!("\x1b[{code}m{s}\x1b[0m")
        } else {
            s.to_string()
        }
    }

    /// Prints one diagnostic (warnings are dropped with `--quiet`).
    pub fn diagnostic(&self, d: &Diagnostic) {
        if self.quiet && !d.is_error() {
            return;
        }
        let text = match self.format {
            ErrorFormat::Json => json_line(d),
            ErrorFormat::Human => self.human(d),
        };
        let mut err = std::io::stderr().lock();
        let _ = writeln!(err, "{text}");
    }

    /// Prints every diagnostic.
    pub fn all(&self, ds: &[Diagnostic]) {
        for d in ds {
            self.diagnostic(d);
        }
    }

    /// A one-line note on stderr (not with `--quiet`; in JSON mode as a JSON warning).
    pub fn note(&self, msg: &str) {
        if self.quiet {
            return;
        }
        match self.format {
            ErrorFormat::Json => self.diagnostic(&Diagnostic::warning("note", msg)),
            ErrorFormat::Human => {
                let _ = writeln!(std::io::stderr().lock(), "kz: {}", escape_text(msg));
            }
        }
    }

    /// A detail shown with `-v`.
    pub fn verbose(&self, msg: &str) {
        if self.verbose > 0 && !self.quiet {
            let _ = writeln!(std::io::stderr().lock(), "kz: {}", escape_text(msg));
        }
    }

    fn human(&self, d: &Diagnostic) -> String {
        let (label, color) = match d.severity {
            Severity::Error => ("error", "1;31"),
            Severity::Warning => ("warning", "1;33"),
        };
        let mut out = format!("{}: {}", self.paint(color, label), escape(&d.message));
        if let Some(loc) = d.location() {
            out.push_str(&format!(
                "\n  {} {}",
                self.paint("1;34", "-->"),
                escape(&loc)
            ));
        }
        let mut facts = Vec::new();
        if let Some(s) = &d.secret {
            facts.push(format!("secret: {}", escape(s)));
        }
        if let Some(k) = d.key.as_ref().filter(|_| d.file.is_some()) {
            facts.push(format!("key: {}", escape(k)));
        }
        if let Some(r) = &d.reference {
            facts.push(format!("ref: {}", escape(r)));
        }
        if !facts.is_empty() {
            out.push_str(&format!(
                "\n  {} {}",
                self.paint("1;34", "="),
                facts.join(", ")
            ));
        }
        if let Some(h) = &d.help {
            out.push_str(&format!("\n{}: {}", self.paint("1;36", "help"), escape(h)));
        }
        out
    }
}

/// `{"code","message","file","line","column","key","secret","ref","help"}` (absent omitted), plus
/// `"severity"` for warnings.
pub fn json_line(d: &Diagnostic) -> String {
    json_value(d).to_string()
}

/// The object [`json_line`] prints.
pub fn json_value(d: &Diagnostic) -> serde_json::Value {
    let mut m = serde_json::Map::new();
    m.insert("code".into(), d.code.into());
    m.insert("message".into(), d.message.clone().into());
    if let Some(f) = &d.file {
        m.insert("file".into(), f.display().to_string().into());
    }
    if let Some(l) = d.line {
        m.insert("line".into(), l.into());
    }
    if let Some(c) = d.column {
        m.insert("column".into(), c.into());
    }
    for (k, v) in [
        ("key", &d.key),
        ("secret", &d.secret),
        ("ref", &d.reference),
        ("help", &d.help),
    ] {
        if let Some(v) = v {
            m.insert(k.into(), v.clone().into());
        }
    }
    if d.severity == Severity::Warning {
        m.insert("severity".into(), "warning".into());
    }
    serde_json::Value::Object(m)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escape_shows_invisible_formatting() {
        assert_eq!(escape("prod/\u{202e}nimda"), "prod/\\u{202e}nimda");
        assert_eq!(escape("a\u{200b}b\u{feff}"), "a\\u{200b}b\\u{feff}");
        assert_eq!(escape("caf\u{e9} \u{1f600}"), "caf\u{e9} \u{1f600}");
    }

    #[test]
    fn escape_neutralises_terminal_controls() {
        assert_eq!(escape("plain ünï \\ text"), "plain ünï \\ text");
        assert_eq!(
            escape("a\u{1b}]0;pwned\u{7}b\rc\nd\u{9b}2Je\u{7f}"),
            "a\\e]0;pwned\\u{7}b\\rc\\nd\\u{9b}2Je\\u{7f}"
        );
        assert_eq!(escape_text("line\n\tnext\u{1b}[2J"), "line\n\tnext\\e[2J");
    }

    #[test]
    fn human_rendering_escapes_every_field() {
        let r = Reporter {
            format: ErrorFormat::Human,
            color: false,
            quiet: false,
            verbose: 0,
        };
        let evil = "x\u{1b}[31my";
        let d = Diagnostic::error("c", format!("m {evil}"))
            .in_file(std::path::Path::new(&format!("/tmp/{evil}/.keyzero.toml")))
            .key(evil)
            .secret(evil)
            .reference(evil)
            .help(evil);
        let text = r.human(&d);
        assert!(!text.contains('\u{1b}'), "{text}");
        assert!(text.contains("x\\e[31my"), "{text}");
    }
}
