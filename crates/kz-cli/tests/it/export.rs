//! `kz export`: shell, dotenv and JSON, and safe output files.

use std::os::unix::fs::PermissionsExt;

use crate::util::{CANARY, Sandbox};

const HOSTILE: &str = "it's $(touch pwned) `x` \\ \"q\"\nline2 $HOME";

fn project() -> Sandbox {
    let s = Sandbox::with_config("[secrets]\nA = \"local://proj/A\"\nB = \"local://proj/B\"\n");
    s.put("A", HOSTILE);
    s.put("B", CANARY);
    s
}

#[test]
fn shell_format_round_trips_through_bash() {
    let s = project();
    let r = s.kz(&["export"]).ok();
    assert!(
        r.stderr.contains("written to a pipe or file"),
        "{}",
        r.stderr
    );
    let out = std::process::Command::new("bash")
        .arg("-c")
        .arg(format!("{}\nprintf '%s' \"$A\"", r.stdout))
        .current_dir(&s.project)
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout), HOSTILE);
    assert!(!s.path("pwned").exists());
}

#[test]
fn env_and_json_formats() {
    let s = project();
    let j = s.kz(&["export", "--format", "json"]).ok().stdout_json();
    assert_eq!(j["A"], HOSTILE);
    assert_eq!(j["B"], CANARY);
    assert_eq!(
        j.as_object().unwrap().len(),
        2,
        "flat object, no version wrapper: {j}"
    );
    let e = s
        .kz(&["export", "--format", "env", "--only", "A"])
        .ok()
        .stdout;
    assert_eq!(
        e,
        "A=\"it's \\$(touch pwned) `x` \\\\ \\\"q\\\"\\nline2 \\$HOME\"\n"
    );
    // kz reads its own dotenv output back unchanged.
    s.write("back.env", &e);
    s.write(".keyzero.toml", "[providers.dotenv]\npath = \"back.env\"\n[secrets]\nA = { provider = \"dotenv\", ref = \"A\" }\n");
    assert_eq!(
        s.kz(&["export", "--format", "json"]).ok().stdout_json()["A"],
        HOSTILE
    );
}

#[test]
fn fish_quoting() {
    let s = project();
    let r = s.kz(&["export", "--shell", "fish", "--only", "A"]).ok();
    assert_eq!(
        r.stdout,
        "set -gx A 'it\\'s $(touch pwned) `x` \\\\ \"q\"\nline2 $HOME';\n"
    );
    if let Ok(out) = std::process::Command::new("fish")
        .arg("-c")
        .arg(format!("{}\nprintf '%s' \"$A\"", r.stdout))
        .output()
    {
        assert_eq!(String::from_utf8_lossy(&out.stdout), HOSTILE);
    }
}

#[test]
fn output_file_is_private_and_git_aware() {
    let s = project();
    let r = s
        .kz(&["export", "--format", "env", "--output", "out.env"])
        .ok()
        .no_canary();
    assert!(!r.stderr.contains("pipe"), "{}", r.stderr);
    let p = s.path("out.env");
    assert_eq!(
        std::fs::metadata(&p).unwrap().permissions().mode() & 0o777,
        0o600
    );
    assert!(std::fs::read_to_string(&p).unwrap().contains(CANARY));
    std::fs::remove_file(&p).unwrap();
    let git = std::process::Command::new("git")
        .args(["init", "-q"])
        .current_dir(&s.project)
        .status();
    assert!(
        git.is_ok_and(|g| g.success()),
        "git is needed: apt-get install git"
    );
    let r = s.kz(&["export", "--output", "out.env"]).code(1).no_canary();
    assert!(r.stderr.contains("git does not ignore it"), "{}", r.stderr);
    assert!(!p.exists());
    s.kz(&["export", "--output", "out.env", "--force"]).ok();
    std::fs::remove_file(&p).unwrap();
    s.write(".gitignore", "*.env\n");
    s.kz(&["export", "--output", "out.env"]).ok();
    assert!(p.exists());
}
