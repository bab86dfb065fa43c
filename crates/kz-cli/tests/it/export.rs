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
    // A backtick with a quote or line break cannot be written safely for a shell: refused.
    let r = s
        .kz(&["export", "--format", "env", "--only", "A"])
        .code(1)
        .no_canary();
    assert!(
        r.stderr.contains("export::env_unsafe") || r.stderr.contains("backtick"),
        "{}",
        r.stderr
    );
    assert!(r.stderr.contains("--format shell"), "{}", r.stderr);
}

/// Values a shell must not run when it sources `kz export --format env` output.
const SOURCEABLE: &[&str] = &[
    "it's $(touch pwned1) \\ \"q\"\nline2 $HOME",
    "$(touch pwned2)",
    "`touch pwned3`",
    "a'b'c",
    "back\\slash\\",
    "new\nline",
    "\"dq\" $(touch pwned4) ${HOME}",
    "tab\there",
    "",
];

#[test]
fn env_format_is_inert_when_sourced_by_shells_and_read_back_by_kz() {
    let mut text = String::from("[secrets]\n");
    for i in 0..SOURCEABLE.len() {
        text.push_str(&format!(
            "V{i} = {{ provider = \"local\", ref = \"proj/V{i}\", allow_empty = true }}\n"
        ));
    }
    let s = Sandbox::with_config(&text);
    for (i, v) in SOURCEABLE.iter().enumerate() {
        s.kz_stdin(&["put", &format!("V{i}"), "--stdin"], v).ok();
    }
    // `put --stdin` drops one final newline; an empty value needs allow_empty: compare with
    // what kz stored (JSON), then source the env form.
    let stored = s.kz(&["export", "--format", "json"]).ok().stdout_json();
    let env = s.kz(&["export", "--format", "env"]).ok().stdout;
    let mut ran = 0;
    for shell in ["sh", "bash", "dash", "zsh", "busybox"] {
        let mut cmd = std::process::Command::new(shell);
        if shell == "busybox" {
            cmd.arg("sh");
        }
        let mut script = String::from("set -a\n. ./out.env\n");
        for i in 0..SOURCEABLE.len() {
            script.push_str(&format!("printf '%s\\0' \"$V{i}\"\n"));
        }
        s.write("out.env", &env);
        let Ok(out) = cmd.arg("-c").arg(&script).current_dir(&s.project).output() else {
            continue;
        };
        ran += 1;
        assert!(
            out.status.success(),
            "{shell}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        for n in 1..=4 {
            assert!(
                !s.path(&format!("pwned{n}")).exists(),
                "{shell} ran a command from the env output"
            );
        }
        // Plain single-quoted values come back exactly; double-quoted ones keep `\n` for a
        // line break (dotenv's escape) but never run anything.
        let got: Vec<String> = String::from_utf8_lossy(&out.stdout)
            .split('\0')
            .map(String::from)
            .collect();
        for (i, v) in SOURCEABLE.iter().enumerate() {
            let want = stored[format!("V{i}")].as_str().unwrap();
            if !want.contains(['\'', '\n']) {
                assert_eq!(got[i], want, "{shell}: {v:?}");
            }
        }
    }
    assert!(ran >= 2, "at least sh and bash must be available");
    // kz reads its own env output back unchanged.
    s.write("back.env", &env);
    let mut text = String::from("[providers.dotenv]\npath = \"back.env\"\n[secrets]\n");
    for i in 0..SOURCEABLE.len() {
        text.push_str(&format!(
            "V{i} = {{ provider = \"dotenv\", ref = \"V{i}\", allow_empty = true }}\n"
        ));
    }
    s.write(".keyzero.toml", &text);
    assert_eq!(
        s.kz(&["export", "--format", "json"]).ok().stdout_json(),
        stored
    );
}

#[test]
fn output_refused_when_git_cannot_answer_such_as_dubious_ownership() {
    let s = project();
    // A repository another user owns: git refuses to look at it ("dubious ownership").
    let repo = s.root.path().join("theirs");
    std::fs::create_dir_all(&repo).unwrap();
    let git = std::process::Command::new("git")
        .args(["init", "-q"])
        .current_dir(&repo)
        .status();
    assert!(
        git.is_ok_and(|g| g.success()),
        "git is needed: apt-get install git"
    );
    let chown = std::process::Command::new("chown")
        .args(["-R", "65534:65534"])
        .arg(&repo)
        .status()
        .unwrap();
    assert!(chown.success());
    let out = repo.join("out.env");
    let r = s
        .kz(&["export", "--only", "B", "--output", out.to_str().unwrap()])
        .code(1)
        .no_canary();
    assert!(
        r.stderr.contains("refusing to write secrets"),
        "{}",
        r.stderr
    );
    assert!(!out.exists());
    s.kz(&[
        "export",
        "--only",
        "B",
        "--output",
        out.to_str().unwrap(),
        "--force",
    ])
    .ok();
    assert!(out.exists());
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
        .kz(&[
            "export", "--format", "env", "--only", "B", "--output", "out.env",
        ])
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
