//! Help texts, user-facing errors (snapshots), completions and man pages.

use crate::util::{Sandbox, scrub};

const COMMANDS: &[&str] = &[
    "init",
    "add",
    "put",
    "rm",
    "import",
    "run",
    "export",
    "status",
    "validate",
    "list",
    "hook",
    "allow",
    "deny",
    "doctor",
    "completions",
];

#[test]
fn help_texts() {
    let s = Sandbox::new();
    insta::assert_snapshot!("help_kz", s.kz(&["--help"]).ok().stdout);
    for c in COMMANDS {
        let r = s.kz(&[c, "--help"]).ok();
        assert!(r.stdout.contains("Usage: kz"), "{c}");
        insta::assert_snapshot!(format!("help_{c}"), r.stdout);
    }
}

#[test]
fn version_and_usage_errors() {
    let s = Sandbox::new();
    assert!(s.kz(&["--version"]).ok().stdout.starts_with("kz "));
    let r = s.kz(&["frobnicate"]).code(2);
    assert!(r.stderr.contains("unrecognized subcommand"));
    s.kz(&["run"]).code(2);
    s.kz(&["put"]).code(2);
}

#[test]
fn user_facing_errors() {
    let cases: &[(&str, &str, &[&str])] = &[
        (
            "err_unknown_key",
            "[secrets]\nA = { provider = \"env\", ref = \"A\", feild = \"x\" }\n",
            &["validate"],
        ),
        (
            "err_unknown_option",
            "[providers.local]\npaht = \"x\"\n",
            &["validate"],
        ),
        (
            "err_credential",
            "[providers.vault]\ntoken = \"abc\"\n",
            &["validate"],
        ),
        (
            "err_scheme",
            "[secrets]\nA = \"s3://bucket/key\"\n",
            &["validate"],
        ),
        (
            "err_ambiguous",
            "[providers.a]\ntype = \"local\"\n[providers.b]\ntype = \"local\"\n[secrets]\nA = \"local://x\"\n",
            &["validate"],
        ),
        (
            "err_unknown_env",
            "[secrets]\nA = \"env://A\"\n[production.secrets]\nA = \"env://B\"\n",
            &["--env", "staging", "list"],
        ),
        (
            "err_not_found",
            "[secrets]\nA = \"local://proj/A\"\n",
            &["run", "--", "true"],
        ),
        (
            "err_untrusted",
            "[providers.p]\ntype = \"exec\"\ncommand = [\"x\"]\n[secrets]\nA = { provider = \"p\", ref = \"a\" }\n",
            &["run", "--", "true"],
        ),
        (
            "err_put_value",
            "[secrets]\nA = \"local://proj/A\"\n",
            &["put", "A", "--value", "x"],
        ),
        ("err_syntax", "[secrets\nA = 1\n", &["validate"]),
    ];
    for (name, config, args) in cases {
        let s = Sandbox::with_config(config);
        let r = s.kz(args);
        assert_ne!(r.code, Some(0), "{name}");
        insta::assert_snapshot!(*name, scrub(&s, &r.stderr));
    }
}

#[test]
fn completions_for_every_shell() {
    let s = Sandbox::new();
    for sh in ["bash", "zsh", "fish", "elvish", "powershell"] {
        let r = s.kz(&["completions", sh]).ok();
        assert!(r.stdout.contains("kz") && r.stdout.len() > 500, "{sh}");
    }
}

#[test]
fn man_pages_are_committed_and_current() {
    let s = Sandbox::new();
    let dir = s.root.path().join("man");
    s.kz(&["__man", dir.to_str().unwrap()]).ok();
    let committed = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../docs/man");
    let mut names: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    names.sort();
    assert!(names.len() > 10);
    for n in names {
        let fresh = std::fs::read_to_string(dir.join(&n)).unwrap();
        let old = std::fs::read_to_string(committed.join(&n)).unwrap_or_default();
        assert!(
            fresh == old,
            "docs/man/{} is out of date: run `cargo run -p kz-cli -- __man docs/man`",
            n.to_string_lossy()
        );
    }
}
