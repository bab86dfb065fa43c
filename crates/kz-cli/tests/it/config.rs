//! Discovery, environments, validation and error output.

use crate::util::Sandbox;

#[test]
fn discovery_walks_up_and_honours_dir_config_and_env_var() {
    let s = Sandbox::with_config("[secrets]\nA = \"env://HOME\"\n");
    let sub = s.path("a/b");
    std::fs::create_dir_all(&sub).unwrap();
    let r = s
        .cmd(&["list", "--format", "json"])
        .current_dir(&sub)
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&r.stdout).contains("\"A\""));
    let other = Sandbox::new();
    other
        .kz(&["--dir", s.project.to_str().unwrap(), "list"])
        .ok();
    other.write("custom.toml", "[secrets]\nC = \"env://HOME\"\n");
    let r = other
        .kz(&["--config", "custom.toml", "list", "--format", "json"])
        .ok();
    assert!(r.stdout.contains("\"C\""));
    let mut o2 = Sandbox::new();
    o2.set(
        "KEYZERO_CONFIG",
        other.path("custom.toml").to_str().unwrap(),
    );
    assert!(
        o2.kz(&["list", "--format", "json"])
            .ok()
            .stdout
            .contains("\"C\"")
    );
}

#[test]
fn no_config_suggests_init() {
    let s = Sandbox::new();
    let r = s.kz(&["run", "--", "true"]).code(1);
    assert!(
        r.stderr.contains("no .keyzero.toml found") && r.stderr.contains("kz init"),
        "{}",
        r.stderr
    );
    assert!(r.stderr.contains(s.project.to_str().unwrap()));
}

#[test]
fn environments_are_selected_and_reported() {
    let text = "[secrets]\nA = \"env://DEV\"\n[production.secrets]\nA = \"env://PROD\"\n";
    let mut s = Sandbox::with_config(text);
    s.set("DEV", "dev-value").set("PROD", "prod-value");
    assert_eq!(
        s.kz(&["run", "--", "printenv", "A"]).ok().stdout.trim(),
        "dev-value"
    );
    assert_eq!(
        s.kz(&["--env", "production", "run", "--", "printenv", "A"])
            .ok()
            .stdout
            .trim(),
        "prod-value"
    );
    s.set("NODE_ENV", "test");
    let r = s.kz(&["run", "--", "printenv", "A"]).ok();
    assert_eq!(r.stdout.trim(), "dev-value");
    assert!(
        r.stderr
            .contains("NODE_ENV=test has no [test.secrets] section"),
        "{}",
        r.stderr
    );
    assert!(
        r.stderr
            .contains("warning: NODE_ENV=test has no [test.secrets] section")
            && !r.stderr.contains("note:"),
        "one prefix, not `warning: note:`: {}",
        r.stderr
    );
    s.set("KEYZERO_ENV", "staging");
    let r = s.kz(&["run", "--", "true"]).code(1);
    assert!(
        r.stderr.contains("available environments: production"),
        "{}",
        r.stderr
    );
}

#[test]
fn validate_reports_every_problem_with_lines() {
    let s = Sandbox::with_config(
        "[providers.vault]\ntoken = \"abc\"\n\n[secrets]\nA = { provider = \"env\", ref = \"A\", feild = \"x\" }\nB = \"zz://b\"\n9C = \"env://C\"\n",
    );
    let r = s.kz(&["validate"]).code(1);
    for (needle, line) in [
        ("holds a credential", 2),
        ("unknown key `feild`", 5),
        ("unknown reference scheme", 6),
        ("not a valid environment variable name", 7),
    ] {
        assert!(r.stderr.contains(needle), "{needle}: {}", r.stderr);
        assert!(
            r.stderr.contains(&format!(".keyzero.toml:{line}:")),
            "line {line}: {}",
            r.stderr
        );
    }
    assert!(r.stderr.contains("help: did you mean `field`?"));
    let r = s.kz(&["validate", "--format", "json"]).code(1);
    let v = r.stdout_json();
    assert_eq!(v["version"], 1);
    assert_eq!(v["valid"], false);
    assert_eq!(v["errors"].as_array().unwrap().len(), 4);
    assert_eq!(v["errors"][1]["name"], "A");
    assert_eq!(v["errors"][1]["line"], 5);
    assert!(v["file"].as_str().unwrap().ends_with(".keyzero.toml"));
}

#[test]
fn validate_contacts_no_backend() {
    let s = Sandbox::with_config(
        "[providers.local]\npath = \"store.age\"\n[providers.plug]\ntype = \"exec\"\ncommand = [\"touch\", \"ran\"]\n[secrets]\nA = { provider = \"plug\", ref = \"x\" }\nB = \"vault://secret/app\"\n",
    );
    let r = s.kz(&["--trust", "validate", "--format", "json"]).ok();
    let v = r.stdout_json();
    assert_eq!(
        (
            v["valid"].as_bool(),
            v["secrets_count"].as_u64(),
            v["providers_count"].as_u64()
        ),
        (Some(true), Some(2), Some(2))
    );
    assert!(!s.path("ran").exists(), "validate ran the plugin");
}

#[test]
fn error_format_json_has_the_documented_fields() {
    let s =
        Sandbox::with_config("[secrets]\nA = { provider = \"env\", ref = \"A\", feild = \"x\" }\n");
    let r = s
        .kz(&["--error-format", "json", "run", "--", "true"])
        .code(1);
    let lines = r.stderr_json();
    assert_eq!(lines.len(), 1);
    let e = &lines[0];
    assert_eq!(e["code"], "config::unknown_key");
    assert_eq!(e["line"], 2);
    assert_eq!(e["secret"], "A");
    assert_eq!(e["key"], "secrets.A.feild");
    assert_eq!(e["help"], "did you mean `field`?");
    assert!(e["file"].as_str().unwrap().ends_with(".keyzero.toml"));
    assert!(e["column"].as_u64().is_some());
}

#[test]
fn list_json_shape_and_published_spellings() {
    let s = Sandbox::with_config(
        "[resolvers.vault]\ntype = \"hashicorp_vault\"\naddress = \"http://127.0.0.1:8200\"\n[secrets]\nA = { resolver = \"vault\", ref = \"secret/data/a\", field = \"k\", hosts = [\"api.x.com\"], description = \"d\" }\n",
    );
    let v = s.kz(&["list", "--format", "json"]).ok().stdout_json();
    assert_eq!(v["version"], 1);
    assert_eq!(v["environment"], "development");
    let a = &v["secrets"]["A"];
    assert_eq!(
        (
            a["provider"].as_str(),
            a["resolver"].as_str(),
            a["ref"].as_str()
        ),
        (Some("vault"), Some("vault"), Some("secret/data/a"))
    );
    assert_eq!(a["hosts"][0], "api.x.com");
    assert_eq!(a["description"], "d");
    let t = s.kz(&["ls"]).ok().stdout;
    assert!(
        t.contains("A     vault (hashicorp)  secret/data/a (field k)  api.x.com  d"),
        "{t}"
    );
}

#[test]
fn local_overrides_and_global_file() {
    let mut s = Sandbox::with_config("[secrets]\nA = \"env://X\"\nB = \"env://X\"\n");
    s.write(
        ".keyzero.local.toml",
        "[secrets]\nA = \"env://Y\"\nB = false\n",
    );
    s.set("X", "x").set("Y", "y");
    let r = s
        .kz(&[
            "run",
            "--",
            "sh",
            "-c",
            "printf '%s|%s' \"$A\" \"${B-removed}\"",
        ])
        .ok();
    assert_eq!(r.stdout, "y|removed");
    let g = s.root.path().join("config/keyzero/config.toml");
    std::fs::create_dir_all(g.parent().unwrap()).unwrap();
    std::fs::write(&g, "[providers.dotenv]\npath = \"/nonexistent/kz.env\"\n").unwrap();
    s.write(
        ".keyzero.toml",
        "[secrets]\nD = { provider = \"dotenv\", ref = \"D\" }\n",
    );
    let r = s.kz(&["run", "--", "true"]).code(1);
    assert!(r.stderr.contains("/nonexistent/kz.env"), "{}", r.stderr);
}

#[test]
fn files_owned_by_someone_else_are_ignored() {
    let s = Sandbox::with_config("[secrets]\nA = \"env://HOME\"\n");
    let local = s.write(".keyzero.local.toml", "[secrets]\nA = false\n");
    if std::os::unix::fs::chown(&local, Some(65534), None).is_err() {
        return; // not root: cannot make a file owned by another user here
    }
    let r = s.kz(&["list"]).ok();
    assert!(r.stderr.contains("owned by uid 65534"), "{}", r.stderr);
    assert!(
        r.stdout.contains("A "),
        "the foreign file's removal was applied: {}",
        r.stdout
    );
}

#[test]
fn hostile_configs_never_panic() {
    let inputs = [
        "\u{0}\u{1}\u{2}",
        "[secrets]\nA = { provider = { nested = [1, [2, {}]] } }\n",
        "[[secrets]]\nA = 1\n",
        "[blind]\nconnections = \"x\"\nallow = [1, true, {}]\n",
        "[providers.x]\ntype = 3\n[providers.y]\ntype = \"exec\"\ncommand = [1]\n",
        "secrets = 5\nproviders = []\n",
        "[secrets]\nA = \"sm://\"\nB = \"op://\"\nC = \"projects//secrets/\"\nD = { provider = \"aws_sts\" }\n",
        &format!("[secrets]\nA = \"local://{}\"\n", "x".repeat(100_000)),
        &"[a.secrets]\n".repeat(500),
        "[secrets]\nA = { provider = \"hashicorp\", ref = \"secret/#\" , version = 1e400 }\n",
    ];
    for text in inputs {
        let s = Sandbox::with_config(text);
        for args in [
            &["validate"][..],
            &["list"],
            &["run", "--", "true"],
            &["status"],
        ] {
            let r = s.kz(args);
            assert!(
                matches!(r.code, Some(0..=2)),
                "{args:?} on {text:?}: code {:?}\n{}",
                r.code,
                r.stderr
            );
            assert!(!r.stderr.contains("panicked"), "{}", r.stderr);
        }
    }
}
