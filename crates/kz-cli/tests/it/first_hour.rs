//! A newcomer's first hour, following the README: install paths the README promises, the
//! scripts (`scripts/test` builds its cargo tools outside the project's target directory,
//! `scripts/demo` echoes commands as typed).

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn read(rel: &str) -> String {
    std::fs::read_to_string(repo().join(rel)).unwrap()
}

fn executable(path: &Path, text: &str) {
    std::fs::write(path, text).unwrap();
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755)).unwrap();
}

#[test]
fn readme_install_paths_match_the_build_and_the_scripts() {
    let readme = read("README.md");
    // The binary the README names is the one Cargo builds.
    let manifest = read("crates/kz-cli/Cargo.toml");
    assert!(manifest.contains("[[bin]]\nname = \"kz\""), "{manifest}");
    for promise in [
        "cargo install --locked --path crates/kz-cli",
        "target/release/kz",
        "~/.cache/keyzero-target",
        "~/.cache/keyzero-tools-target",
        "43 minutes",
    ] {
        assert!(readme.contains(promise), "README lacks `{promise}`");
    }
    assert!(
        repo().join("crates/kz-cli").is_dir(),
        "the README's --path exists"
    );
    // The scripts build where the README says.
    for script in ["scripts/test", "scripts/demo"] {
        assert!(
            read(script)
                .contains("CARGO_TARGET_DIR=\"${CARGO_TARGET_DIR:-$HOME/.cache/keyzero-target}\""),
            "{script} builds elsewhere than the README says"
        );
    }
    // The test binary itself was built under <target>/debug/kz, the layout the README describes.
    assert!(
        crate::util::kz_bin().ends_with("debug/kz"),
        "{}",
        crate::util::kz_bin().display()
    );
}

/// Runs `scripts/test` with stand-ins for cargo, apt and the package managers on PATH, up to
/// the first real check (`cargo fmt`, which the stand-in fails), and returns what `cargo` was
/// asked to do, one line per call: `CARGO_TARGET_DIR=<value or unset> ARGS…`.
fn cargo_calls_of_scripts_test(target_dir: Option<&str>) -> (Vec<String>, PathBuf) {
    let tmp = tempfile::tempdir().unwrap();
    let bin = tmp.path().join("bin");
    let home = tmp.path().join("home");
    std::fs::create_dir_all(&bin).unwrap();
    std::fs::create_dir_all(&home).unwrap();
    let log = tmp.path().join("cargo.log");
    executable(
        &bin.join("cargo"),
        &format!(
            "#!/bin/sh\nprintf '%s %s\\n' \"CARGO_TARGET_DIR=${{CARGO_TARGET_DIR-unset}}\" \"$*\" >> '{}'\ncase \"$1\" in\n  install) exit 0 ;;\n  *) exit 3 ;;\nesac\n",
            log.display()
        ),
    );
    // Every Debian package present; Python and node tools from stand-ins.
    executable(
        &bin.join("dpkg-query"),
        "#!/bin/sh\nprintf 'install ok installed'\n",
    );
    executable(
        &bin.join("python3"),
        "#!/bin/sh\n# python3 -m venv DIR\nmkdir -p \"$3/bin\"\nprintf '#!/bin/sh\\n' > \"$3/bin/pip\"\nchmod +x \"$3/bin/pip\"\n",
    );
    executable(&bin.join("node"), "#!/bin/sh\necho v20.0.0\n");
    executable(&bin.join("npm"), "#!/bin/sh\nexit 0\n");
    let mut cmd = std::process::Command::new("bash");
    cmd.arg(repo().join("scripts/test"))
        .arg("--quick")
        .env_clear()
        .env("PATH", format!("{}:/usr/bin:/bin", bin.display()))
        .env("HOME", &home)
        .env("KZ_TOOLS_VENV", tmp.path().join("venv"))
        .env("KZ_NODE_DIR", tmp.path().join("node"));
    if let Some(t) = target_dir {
        cmd.env("CARGO_TARGET_DIR", t);
    }
    let out = cmd.output().unwrap();
    assert_eq!(
        out.status.code(),
        Some(3),
        "scripts/test should stop at the stand-in's `cargo fmt`: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let calls = std::fs::read_to_string(&log)
        .unwrap_or_default()
        .lines()
        .map(String::from)
        .collect();
    // Keep the directory alive for the caller's assertions on paths.
    (calls, tmp.keep())
}

#[test]
fn scripts_test_builds_cargo_tools_outside_the_project_target_directory() {
    for target in [None, Some("/tmp/kz-project-target-for-this-test")] {
        let (calls, dir) = cargo_calls_of_scripts_test(target);
        let home = dir.join("home");
        let installs: Vec<&String> = calls.iter().filter(|c| c.contains(" install ")).collect();
        assert!(
            installs.iter().any(|c| c.contains("cargo-nextest")),
            "{calls:#?}"
        );
        let tools = format!(
            "--target-dir {}/.cache/keyzero-tools-target",
            home.display()
        );
        for c in &installs {
            assert!(
                c.starts_with("CARGO_TARGET_DIR=unset "),
                "CARGO_TARGET_DIR leaked into cargo install: {c}"
            );
            assert!(c.contains(&tools), "{c}");
            assert!(c.contains("--locked"), "{c}");
        }
        // The project's own commands keep the project's target directory.
        let fmt = calls.iter().find(|c| c.contains(" fmt ")).unwrap();
        let expected = target
            .map(String::from)
            .unwrap_or_else(|| format!("{}/.cache/keyzero-target", home.display()));
        assert!(
            fmt.starts_with(&format!("CARGO_TARGET_DIR={expected} ")),
            "{fmt}"
        );
        std::fs::remove_dir_all(dir).unwrap();
    }
}

#[test]
fn scripts_demo_echoes_commands_as_typed() {
    let demo = read("scripts/demo");
    assert!(
        !demo.contains("\"$kz\""),
        "commands are run (and echoed) as `kz`, not by a path"
    );
    // Its `quote` and `run` functions, on their own.
    let start = demo.find("quote() {").unwrap();
    let end = start + demo[start..].find("\nrun kz init").unwrap();
    let funcs = &demo[start..end];
    let out = std::process::Command::new("bash")
        .arg("-c")
        .arg(format!(
            "{funcs}\nkz() {{ :; }}\nrun kz add API_TOKEN --hosts 'localhost:8443'\nrun kz run -- sh -c 'echo \"it'\\''s $X\"'\n"
        ))
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}");
    assert_eq!(
        stdout.trim_start().lines().collect::<Vec<_>>(),
        [
            "$ kz add API_TOKEN --hosts localhost:8443",
            "",
            r#"$ kz run -- sh -c 'echo "it'\''s $X"'"#,
        ],
        "{stdout}"
    );
}
