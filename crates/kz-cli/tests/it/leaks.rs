//! The canary: seeded in every backend a test uses, it must appear only where a value
//! legitimately goes (the child's environment, `export` output, an explicit --output file).

use crate::util::{CANARY, Sandbox};

#[test]
fn a_full_tour_never_leaks_the_canary() {
    let mut s = Sandbox::with_config(
        "[providers.dotenv]\npath = \"vals.env\"\n[secrets]\nLOCAL = \"local://proj/LOCAL\"\nENVV = \"env://KZ_CANARY_SRC\"\nDOT = { provider = \"dotenv\", ref = \"DOT\" }\nJSONF = { provider = \"env\", ref = \"KZ_CANARY_JSON\", field = \"missing\" }\n",
    );
    s.set("KZ_CANARY_SRC", CANARY)
        .set("KZ_CANARY_JSON", &format!("{{\"secret\":\"{CANARY}\"}}"));
    let dotenv = s.write("vals.env", &format!("DOT={CANARY}\n"));
    s.kz_stdin(&["put", "LOCAL", "--stdin"], CANARY)
        .ok()
        .no_canary();
    // Every command that must not print values, in text and JSON, verbose.
    for args in [
        &["status"][..],
        &["status", "--format", "json"],
        &["-vv", "status"],
        &["--error-format", "json", "status"],
        &["list"],
        &["list", "--format", "json"],
        &["validate"],
        &["validate", "--format", "json"],
        &["doctor"],
        &["run", "--", "true"],
        &["-v", "run", "--only", "LOCAL,ENVV,DOT", "--", "true"],
        &["put", "--missing"],
    ] {
        s.kz(args).no_canary();
    }
    // The values do reach the child and export.
    let r = s
        .kz(&["run", "--only", "LOCAL", "--", "printenv", "LOCAL"])
        .ok();
    assert_eq!(r.stdout.trim(), CANARY);
    assert!(!r.stderr.contains(CANARY));
    let r = s
        .kz(&["export", "--only", "LOCAL,DOT", "--format", "json"])
        .ok();
    assert!(r.stdout.contains(CANARY) && !r.stderr.contains(CANARY));
    let out = s.path("explicit.env");
    s.kz(&["export", "--only", "LOCAL", "--output", "explicit.env"])
        .ok()
        .no_canary();
    // No file kz wrote holds the canary in plaintext, except the explicit --output (the store is
    // encrypted; vals.env is the test's own input).
    assert_eq!(
        s.files_with_canary(&[&dotenv, &out]),
        Vec::<std::path::PathBuf>::new()
    );
}

#[test]
fn debug_output_of_errors_never_holds_values() {
    let mut s = Sandbox::with_config(
        "[secrets]\nX = { provider = \"env\", ref = \"KZ_V\", field = \"a\" }\n",
    );
    s.set("KZ_V", CANARY);
    let r = s
        .kz(&["-vvv", "--error-format", "json", "run", "--", "true"])
        .code(1)
        .no_canary();
    assert!(r.stderr.contains("not a JSON object"), "{}", r.stderr);
}
