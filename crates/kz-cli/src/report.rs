//! Errors at the edge: one type ([`Failure`]) that carries diagnostics and an exit code, and
//! the rendering of diagnostics as text (`error: …`, `--> file:line:col`, `help: …`) or as one
//! JSON object per line (`--error-format json`).

use std::io::{IsTerminal, Write};

use kz_config::{Diagnostic, Severity};

use crate::cli::ErrorFormat;

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
                let _ = writeln!(std::io::stderr().lock(), "kz: {msg}");
            }
        }
    }

    /// A detail shown with `-v`.
    pub fn verbose(&self, msg: &str) {
        if self.verbose > 0 && !self.quiet {
            let _ = writeln!(std::io::stderr().lock(), "kz: {msg}");
        }
    }

    fn human(&self, d: &Diagnostic) -> String {
        let (label, color) = match d.severity {
            Severity::Error => ("error", "1;31"),
            Severity::Warning => ("warning", "1;33"),
        };
        let mut out = format!("{}: {}", self.paint(color, label), d.message);
        if let Some(loc) = d.location() {
            out.push_str(&format!("\n  {} {loc}", self.paint("1;34", "-->")));
        }
        let mut facts = Vec::new();
        if let Some(s) = &d.secret {
            facts.push(format!("secret: {s}"));
        }
        if let Some(k) = d.key.as_ref().filter(|_| d.file.is_some()) {
            facts.push(format!("key: {k}"));
        }
        if let Some(r) = &d.reference {
            facts.push(format!("ref: {r}"));
        }
        if !facts.is_empty() {
            out.push_str(&format!(
                "\n  {} {}",
                self.paint("1;34", "="),
                facts.join(", ")
            ));
        }
        if let Some(h) = &d.help {
            out.push_str(&format!("\n{}: {h}", self.paint("1;36", "help")));
        }
        out
    }
}

/// `{"code","message","file","line","column","key","secret","ref","help"}` (absent omitted), plus
/// `"severity"` for warnings.
pub fn json_line(d: &Diagnostic) -> String {
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
    serde_json::Value::Object(m).to_string()
}
