//! `kz put`: values from stdin or a prompt, never argv; the local store's guarantees.

use std::os::unix::fs::PermissionsExt;

use crate::util::{CANARY, Sandbox};

#[test]
fn stdin_strips_one_trailing_newline() {
    let s = Sandbox::with_config("[secrets]\nA = \"local://proj/A\"\nB = \"local://proj/B\"\n");
    s.kz_stdin(&["put", "A", "--stdin"], "line1\nline2\n\n")
        .ok();
    s.kz_stdin(&["put", "B", "--stdin"], "crlf\r\n").ok();
    let r = s
        .kz(&["run", "--", "sh", "-c", "printf '[%s][%s]' \"$A\" \"$B\""])
        .ok();
    assert_eq!(r.stdout, "[line1\nline2\n][crlf]");
}

#[test]
fn value_on_the_command_line_is_refused() {
    let s = Sandbox::with_config("[secrets]\nA = \"local://proj/A\"\n");
    let r = s.kz(&["put", "A", "--value", CANARY]).code(2).no_canary();
    assert!(r.stderr.contains("--stdin"), "{}", r.stderr);
    assert!(!s.path("../data/keyzero/store.age").exists());
}

#[test]
fn unmapped_read_only_and_empty_are_errors() {
    let s = Sandbox::with_config("[secrets]\nA = \"local://proj/A\"\nE = \"env://HOME\"\n");
    let r = s.kz_stdin(&["put", "NOPE", "--stdin"], "v").code(1);
    assert!(r.stderr.contains("kz add NOPE"), "{}", r.stderr);
    let r = s.kz_stdin(&["put", "E", "--stdin"], "v").code(1);
    assert!(r.stderr.contains("cannot store values"), "{}", r.stderr);
    let r = s.kz_stdin(&["put", "A", "--stdin"], "").code(1);
    assert!(
        r.stderr.contains("empty value") && r.stderr.contains("allow_empty"),
        "{}",
        r.stderr
    );
    let r = s.kz(&["put", "A"]).code(2);
    assert!(
        r.stderr.contains("no terminal") && r.stderr.contains("--stdin"),
        "{}",
        r.stderr
    );
}

#[test]
fn store_and_identity_are_private_and_encrypted() {
    let s = Sandbox::with_config("[secrets]\nA = \"local://proj/A\"\n");
    s.put("A", CANARY);
    let data = s.root.path().join("data/keyzero");
    let identity = s.root.path().join("config/keyzero/identity.txt");
    for p in [
        data.join("store.age"),
        data.join("store.age.meta"),
        identity.clone(),
    ] {
        let mode = std::fs::metadata(&p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600, "{}", p.display());
    }
    assert_eq!(
        std::fs::metadata(&data).unwrap().permissions().mode() & 0o777,
        0o700
    );
    let store = std::fs::read(data.join("store.age")).unwrap();
    assert!(store.starts_with(b"age-encryption.org/v1"));
    assert!(!store.windows(CANARY.len()).any(|w| w == CANARY.as_bytes()));
    let meta = std::fs::read_to_string(data.join("store.age.meta")).unwrap();
    assert!(meta.contains(identity.to_str().unwrap()), "{meta}");
}

#[test]
fn lost_identity_is_an_error_not_a_new_store() {
    let s = Sandbox::with_config("[secrets]\nA = \"local://proj/A\"\n");
    s.put("A", "v");
    std::fs::remove_file(s.root.path().join("config/keyzero/identity.txt")).unwrap();
    let r = s.kz(&["run", "--", "true"]).code(1);
    assert!(
        r.stderr.contains("identity") && r.stderr.contains("restore"),
        "{}",
        r.stderr
    );
    let r = s.kz_stdin(&["put", "A", "--stdin"], "w").code(1);
    assert!(r.stderr.contains("identity"), "{}", r.stderr);
    assert!(
        !s.root.path().join("config/keyzero/identity.txt").exists(),
        "a new identity was made silently"
    );
}

#[test]
fn concurrent_puts_lose_nothing() {
    let names: Vec<String> = (0..12).map(|i| format!("S{i}")).collect();
    let config: String = names
        .iter()
        .map(|n| format!("{n} = \"local://proj/{n}\"\n"))
        .collect();
    let s = Sandbox::with_config(&format!("[secrets]\n{config}"));
    let children: Vec<_> = names
        .iter()
        .map(|n| {
            let mut c = s
                .cmd(&["put", n, "--stdin"])
                .stdin(std::process::Stdio::piped())
                .stderr(std::process::Stdio::piped())
                .spawn()
                .unwrap();
            use std::io::Write;
            c.stdin
                .take()
                .unwrap()
                .write_all(format!("value-{n}").as_bytes())
                .unwrap();
            c
        })
        .collect();
    for c in children {
        let o = c.wait_with_output().unwrap();
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    }
    let script: String = names
        .iter()
        .map(|n| format!("printf '%s ' \"${n}\";"))
        .collect();
    let r = s.kz(&["run", "--", "sh", "-c", &script]).ok();
    let expected: String = names.iter().map(|n| format!("value-{n} ")).collect();
    assert_eq!(r.stdout, expected);
}

#[test]
fn missing_without_a_terminal_lists_what_it_would_prompt_for() {
    let s = Sandbox::with_config(
        "[secrets]\nA = \"local://proj/A\"\nB = \"local://proj/B\"\nE = \"env://KZ_NOT_SET\"\n",
    );
    s.put("A", "present");
    let r = s.kz(&["put", "--missing"]).code(2);
    assert!(r.stderr.contains("1 secret(s) are missing"), "{}", r.stderr);
}
