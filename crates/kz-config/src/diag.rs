//! Diagnostics: one user-facing problem, with where it is and how to fix it.
//!
//! Every error a user can cause ends up as a [`Diagnostic`]. It carries the fields of the JSON
//! error format of `cli.md` (`code, message, file, line, column, key, secret, ref, help`), so the
//! edge (the CLI) can render it as text or JSON without knowing where it came from. It never
//! carries a secret value: it is built from names, references and positions only.

use std::fmt;
use std::path::{Path, PathBuf};

/// How serious a diagnostic is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Severity {
    /// Stops the command.
    Error,
    /// Reported; the command goes on.
    Warning,
}

/// A position in a configuration file (1-based line and column).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pos {
    /// The file.
    pub file: PathBuf,
    /// 1-based line.
    pub line: usize,
    /// 1-based column.
    pub column: usize,
}

/// One problem, with its location and a fix.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Diagnostic {
    /// Error or warning.
    pub severity: Severity,
    /// Stable code, e.g. `config::unknown_key`.
    pub code: &'static str,
    /// What failed (lowercase, no final period, user input in backticks).
    pub message: String,
    /// The file involved.
    pub file: Option<PathBuf>,
    /// 1-based line in `file`.
    pub line: Option<usize>,
    /// 1-based column in `file`.
    pub column: Option<usize>,
    /// The dotted key path, e.g. `secrets.DB.feild`.
    pub key: Option<String>,
    /// The secret (variable) name.
    pub secret: Option<String>,
    /// The reference.
    pub reference: Option<String>,
    /// How to fix it.
    pub help: Option<String>,
}

impl Diagnostic {
    /// A new error with a code and message.
    pub fn error(code: &'static str, message: impl Into<String>) -> Self {
        Self {
            severity: Severity::Error,
            code,
            message: message.into(),
            file: None,
            line: None,
            column: None,
            key: None,
            secret: None,
            reference: None,
            help: None,
        }
    }

    /// A new warning with a code and message.
    pub fn warning(code: &'static str, message: impl Into<String>) -> Self {
        Self {
            severity: Severity::Warning,
            ..Self::error(code, message)
        }
    }

    /// Sets the position.
    #[must_use]
    pub fn at(mut self, pos: &Pos) -> Self {
        self.file = Some(pos.file.clone());
        self.line = Some(pos.line);
        self.column = Some(pos.column);
        self
    }

    /// Sets the position when there is one.
    #[must_use]
    pub fn at_opt(self, pos: Option<&Pos>) -> Self {
        match pos {
            Some(p) => self.at(p),
            None => self,
        }
    }

    /// Sets the file only.
    #[must_use]
    pub fn in_file(mut self, file: &Path) -> Self {
        self.file = Some(file.to_path_buf());
        self
    }

    /// Sets the key path.
    #[must_use]
    pub fn key(mut self, key: impl Into<String>) -> Self {
        self.key = Some(key.into());
        self
    }

    /// Sets the secret name.
    #[must_use]
    pub fn secret(mut self, name: impl Into<String>) -> Self {
        self.secret = Some(name.into());
        self
    }

    /// Sets the reference.
    #[must_use]
    pub fn reference(mut self, r: impl Into<String>) -> Self {
        self.reference = Some(r.into());
        self
    }

    /// Sets the help line.
    #[must_use]
    pub fn help(mut self, help: impl Into<String>) -> Self {
        self.help = Some(help.into());
        self
    }

    /// Whether this is an error (not a warning).
    pub fn is_error(&self) -> bool {
        self.severity == Severity::Error
    }

    /// `file:line:column`, as much of it as is known.
    pub fn location(&self) -> Option<String> {
        let file = self.file.as_ref()?.display().to_string();
        Some(match (self.line, self.column) {
            (Some(l), Some(c)) => format!("{file}:{l}:{c}"),
            (Some(l), None) => format!("{file}:{l}"),
            _ => file,
        })
    }
}

impl fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for Diagnostic {}

/// A list of diagnostics: the "value plus its errors" of a load or validation.
pub type Diagnostics = Vec<Diagnostic>;

/// The closest of `candidates` to `input`, when close enough to suggest ("did you mean").
pub fn did_you_mean<'a>(
    input: &str,
    candidates: impl IntoIterator<Item = &'a str>,
) -> Option<&'a str> {
    let input = input.to_ascii_lowercase();
    candidates
        .into_iter()
        .map(|c| (edit_distance(&input, &c.to_ascii_lowercase()), c))
        .filter(|(d, c)| *d <= (c.len().max(input.len()) / 3).max(1))
        .min_by_key(|(d, _)| *d)
        .map(|(_, c)| c)
}

/// Damerau–Levenshtein distance (adjacent transpositions count once: `feild` → `field` is 1).
fn edit_distance(a: &str, b: &str) -> usize {
    let a: Vec<char> = a.chars().collect();
    let b: Vec<char> = b.chars().collect();
    let w = b.len() + 1;
    let mut d = vec![0usize; (a.len() + 1) * w];
    let at = |i: usize, j: usize| i * w + j;
    for i in 0..=a.len() {
        if let Some(x) = d.get_mut(at(i, 0)) {
            *x = i;
        }
    }
    for j in 0..=b.len() {
        if let Some(x) = d.get_mut(at(0, j)) {
            *x = j;
        }
    }
    for i in 1..=a.len() {
        for j in 1..=b.len() {
            let ai = a.get(i - 1);
            let bj = b.get(j - 1);
            let cost = usize::from(ai != bj);
            let get = |i, j| d.get(at(i, j)).copied().unwrap_or(usize::MAX / 2);
            let mut best = (get(i - 1, j) + 1)
                .min(get(i, j - 1) + 1)
                .min(get(i - 1, j - 1) + cost);
            if i > 1 && j > 1 && a.get(i - 1) == b.get(j - 2) && a.get(i - 2) == b.get(j - 1) {
                best = best.min(get(i - 2, j - 2) + 1);
            }
            if let Some(x) = d.get_mut(at(i, j)) {
                *x = best;
            }
        }
    }
    d.get(at(a.len(), b.len())).copied().unwrap_or(usize::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn suggests_close_names_only() {
        assert_eq!(
            did_you_mean("feild", ["field", "ref", "provider"]),
            Some("field")
        );
        assert_eq!(
            did_you_mean("resolvr", ["provider", "resolver"]),
            Some("resolver")
        );
        assert_eq!(did_you_mean("zzzzzz", ["field", "ref"]), None);
        assert_eq!(did_you_mean("", ["a"]), Some("a"));
    }

    #[test]
    fn location_renders_what_is_known() {
        let d = Diagnostic::error("x", "m").in_file(Path::new("/a/b.toml"));
        assert_eq!(d.location().as_deref(), Some("/a/b.toml"));
        let d = d.at(&Pos {
            file: "/a/b.toml".into(),
            line: 3,
            column: 7,
        });
        assert_eq!(d.location().as_deref(), Some("/a/b.toml:3:7"));
    }
}
