//! The shell hook in real shells: load on entering a project, unload (restoring shadowed
//! values) on leaving, nothing when nothing changed, trust first.

use crate::util::{Sandbox, kz_bin};

/// Runs `script` in `shell` with kz on PATH, in the sandbox's environment, from `cwd`.
fn shell(s: &Sandbox, shell: &str, script: &str) -> (String, String) {
    let dir = kz_bin().parent().unwrap().to_path_buf();
    let path = format!("{}:{}", dir.display(), s.env["PATH"]);
    let out = std::process::Command::new(shell)
        .arg("-c")
        .arg(script)
        .current_dir(s.root.path())
        .env_clear()
        .envs(&s.env)
        .env("PATH", path)
        .output()
        .unwrap_or_else(|e| {
            panic!("{shell} is needed for this test (apt-get install {shell}): {e}")
        });
    assert!(
        out.status.success(),
        "{shell} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    (
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn project() -> Sandbox {
    let mut s = Sandbox::with_config(
        "[secrets]\nKZ_HOOK_A = \"local://proj/A\"\nSHADOW = \"local://proj/S\"\n",
    );
    s.put("KZ_HOOK_A", "alpha value");
    s.put("SHADOW", "from-kz");
    s.set("SHADOW", "original");
    s
}

const POSIX_SCRIPT: &str = r#"
cd proj; _kz_hook
echo "in:${KZ_HOOK_A-unset}:$SHADOW"
printf 'again:[%s]\n' "$(command kz __hook-env --shell SHELL --state "$_kz_state")"
env | grep -c '^_kz' || true
cd ..; _kz_hook
echo "out:${KZ_HOOK_A-unset}:$SHADOW"
"#;

fn check_posix(sh: &str) {
    let s = project();
    let setup = format!("eval \"$(kz hook --shell {sh})\"\n");
    // Untrusted: one line, nothing loaded.
    let (out, err) = shell(
        &s,
        sh,
        &format!("{setup}cd proj; _kz_hook; _kz_hook; echo \"in:${{KZ_HOOK_A-unset}}\""),
    );
    assert_eq!(out.trim(), "in:unset");
    assert_eq!(err.matches("is not trusted").count(), 1, "{err}");
    s.kz(&["allow"]).ok();
    let (out, err) = shell(
        &s,
        sh,
        &format!("{setup}{}", POSIX_SCRIPT.replace("SHELL", sh)),
    );
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines[0], "in:alpha value:from-kz", "{out}\n{err}");
    assert_eq!(lines[1], "again:[]", "the no-change path printed something");
    assert_eq!(lines[2], "0", "hook state was exported");
    assert_eq!(lines[3], "out:unset:original", "{out}");
}

#[test]
fn bash_loads_unloads_and_restores() {
    check_posix("bash");
}

#[test]
fn zsh_loads_unloads_and_restores() {
    check_posix("zsh");
}

#[test]
fn fish_loads_unloads_and_restores() {
    let s = project();
    s.kz(&["allow"]).ok();
    let script = r#"
kz hook --shell fish | source
cd proj; _kz_hook
echo "in:$KZ_HOOK_A:$SHADOW"
cd ..; _kz_hook
if set -q KZ_HOOK_A; echo "out:still-set"; else; echo "out:unset:$SHADOW"; end
"#;
    let (out, err) = shell(&s, "fish", script);
    assert_eq!(
        out.lines().collect::<Vec<_>>(),
        ["in:alpha value:from-kz", "out:unset:original"],
        "{err}"
    );
}

#[test]
fn errors_are_shown_and_the_shell_stays_usable() {
    let s = Sandbox::with_config("[secrets]\nNEVER = \"local://proj/never-stored\"\n");
    s.kz(&["allow"]).ok();
    let (out, err) = shell(
        &s,
        "bash",
        "eval \"$(kz hook --shell bash)\"; cd proj; _kz_hook; echo alive:${NEVER-unset}",
    );
    assert_eq!(out.trim(), "alive:unset");
    assert!(err.contains("NEVER: not found"), "{err}");
}

/// The hook script with kz's absolute path replaced by `[KZ]`.
fn script_for_snapshot(text: &str) -> String {
    let bin = kz_bin();
    let mut out = text.to_string();
    for p in [std::fs::canonicalize(&bin).unwrap(), bin] {
        out = out.replace(&p.display().to_string(), "[KZ]");
    }
    out
}

#[test]
fn hook_script_snapshots() {
    for sh in ["bash", "zsh", "fish"] {
        let r = Sandbox::new().kz(&["hook", "--shell", sh]).ok();
        insta::assert_snapshot!(format!("hook_{sh}"), script_for_snapshot(&r.stdout));
    }
}

#[test]
fn hook_works_without_kz_on_path_and_says_what_it_loaded_under_verbose() {
    let s = project();
    s.kz(&["allow"]).ok();
    let kz = std::fs::canonicalize(kz_bin()).unwrap();
    for sh in ["bash", "zsh"] {
        // PATH without kz's directory: the hook must call kz by its absolute path.
        let script = format!(
            "eval \"$('{}' -v hook --shell {sh})\"\ncd proj; _kz_hook\necho \"in:${{KZ_HOOK_A-unset}}\"\n",
            kz.display()
        );
        let out = std::process::Command::new(sh)
            .arg("-c")
            .arg(&script)
            .current_dir(s.root.path())
            .env_clear()
            .envs(&s.env)
            .env("PATH", "/usr/bin:/bin")
            .output()
            .unwrap_or_else(|e| panic!("{sh} is needed for this test (apt-get install {sh}): {e}"));
        let (stdout, stderr) = (
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr),
        );
        assert_eq!(stdout.trim(), "in:alpha value", "{sh}: {stderr}");
        assert!(
            stderr.contains("kz: loaded KZ_HOOK_A SHADOW"),
            "{sh} -v says what it loaded: {stderr}"
        );
    }
    // Without -v the hook loads silently.
    let (out, err) = shell(
        &s,
        "bash",
        "eval \"$(kz hook --shell bash)\"; cd proj; _kz_hook; echo \"in:$KZ_HOOK_A\"",
    );
    assert_eq!(out.trim(), "in:alpha value");
    assert!(!err.contains("loaded"), "{err}");
}
