//! Notes for the user from inside the libraries (a plugin's stderr with `-v`): libraries never
//! print; they hand a line to the sink the CLI installed, which decides where it goes and how
//! it is escaped. Without a sink, notes are dropped.

use std::sync::OnceLock;

type Sink = Box<dyn Fn(&str) + Send + Sync>;

static SINK: OnceLock<Sink> = OnceLock::new();

/// Installs the process's note sink (the CLI does, once, at start). Later calls are ignored.
pub fn set_sink(sink: impl Fn(&str) + Send + Sync + 'static) {
    let _ = SINK.set(Box::new(sink));
}

/// Hands one line (never a secret value: callers mask first) to the sink.
pub fn note(line: &str) {
    if let Some(s) = SINK.get() {
        s(line);
    }
}
