//! Trust: program and server options from the committed file need `kz allow`.

use crate::util::Sandbox;

fn project() -> Sandbox {
    Sandbox::with_config(
        "[providers.plug]\ntype = \"exec\"\ncommand = [\"sh\", \"-c\", \"touch ran; echo v\"]\n[secrets]\nP = { provider = \"plug\", ref = \"x\" }\n",
    )
}

#[test]
fn untrusted_program_is_not_run() {
    let s = project();
    let r = s.kz(&["run", "--", "true"]).code(1);
    assert!(!s.path("ran").exists(), "the untrusted plugin ran");
    assert!(
        r.stderr.contains("providers.plug.command") || r.stderr.contains("`command`"),
        "{}",
        r.stderr
    );
    assert!(r.stderr.contains(".keyzero.toml:3"), "{}", r.stderr);
}

#[test]
fn allow_trusts_until_the_file_changes_and_deny_revokes() {
    let s = project();
    s.kz(&["allow"]).ok();
    s.kz(&["run", "--", "true"]).ok();
    assert!(s.path("ran").exists());
    std::fs::remove_file(s.path("ran")).unwrap();
    let text = s.read(".keyzero.toml");
    s.write(".keyzero.toml", &format!("{text}\n# edited\n"));
    s.kz(&["run", "--", "true"]).code(1);
    assert!(!s.path("ran").exists());
    s.kz(&["allow"]).ok();
    s.kz(&["run", "--", "true"]).ok();
    s.kz(&["deny"]).ok();
    s.kz(&["run", "--", "true"]).code(1);
}

#[test]
fn operator_overrides_and_local_file_are_trusted() {
    let mut s = project();
    s.kz(&["--trust", "run", "--", "true"]).ok();
    s.set("KEYZERO_TRUST", "1");
    s.kz(&["run", "--", "true"]).ok();
    s.set("KEYZERO_TRUST", "0");
    s.kz(&["run", "--", "true"]).code(1);
    let s2 = Sandbox::with_config("[secrets]\nP = { provider = \"plug\", ref = \"x\" }\n");
    s2.write(
        ".keyzero.local.toml",
        "[providers.plug]\ntype = \"exec\"\ncommand = [\"sh\", \"-c\", \"echo v\"]\n",
    );
    assert_eq!(
        s2.kz(&["run", "--", "printenv", "P"]).ok().stdout.trim(),
        "v"
    );
}
