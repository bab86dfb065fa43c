//! Quoting values for shells and dotenv files (`kz export`, the shell hook).

/// Single-quoted for POSIX shells (bash, zsh, sh): `'` becomes `'\''`.
pub fn posix(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

/// Single-quoted for fish, where `\\` and `\'` are the only escapes inside single quotes.
pub fn fish(s: &str) -> String {
    format!("'{}'", s.replace('\\', r"\\").replace('\'', r"\'"))
}

/// A dotenv value: single quotes (literal everywhere, no interpolation) when the value allows
/// it, else double quotes with `\\ \" \n \r \t \$` escapes.
pub fn dotenv(s: &str) -> String {
    if !s.contains(['\'', '\n', '\r']) {
        return format!("'{s}'");
    }
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '\\' => out.push_str(r"\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str(r"\n"),
            '\r' => out.push_str(r"\r"),
            '\t' => out.push_str(r"\t"),
            '$' => out.push_str(r"\$"),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sh(shell: &str, script: &str) -> String {
        let out = std::process::Command::new(shell)
            .arg("-c")
            .arg(script)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    }

    const HOSTILE: &[&str] = &[
        "plain",
        "it's",
        "a'b'c",
        "$(touch /tmp/kz-pwned)",
        "`x`",
        "back\\slash",
        "new\nline",
        "tab\there",
        "\"dq\"",
        "",
        "$HOME",
        "ünï",
    ];

    #[test]
    fn posix_round_trips_through_bash() {
        for v in HOSTILE {
            assert_eq!(sh("bash", &format!("printf %s {}", posix(v))), *v);
        }
    }

    #[test]
    fn dotenv_forms() {
        assert_eq!(dotenv("a$b"), "'a$b'");
        assert_eq!(dotenv("it's\n$x"), "\"it's\\n\\$x\"");
    }

    #[test]
    fn fish_escapes() {
        assert_eq!(fish(r"a\b'c"), r"'a\\b\'c'");
    }
}
