//! `kz import`: .env files into the store, never printing a value.

use crate::util::{CANARY, Sandbox};

const DOTENV: &str = "# a comment\nexport PLAIN=simple\nQUOTED=\"two words # not a comment\"\nSINGLE='literal $HOME'\nCANARY_VAR=CANARY_VALUE # trailing comment\nEMPTY_ONE=x\n";

#[test]
fn import_maps_and_stores_every_key() {
    let s = Sandbox::with_config("[secrets]\n");
    s.write(".env", &DOTENV.replace("CANARY_VALUE", CANARY));
    let r = s.kz(&["import"]).ok().no_canary();
    assert!(r.stderr.contains("stored 5 secret(s)"), "{}", r.stderr);
    let text = s.read(".keyzero.toml");
    assert!(
        text.contains("PLAIN = { provider = \"local\", ref = \"proj/PLAIN\" }"),
        "{text}"
    );
    let v = s.kz(&["export", "--format", "json"]).ok().stdout_json();
    assert_eq!(v["PLAIN"], "simple");
    assert_eq!(v["QUOTED"], "two words # not a comment");
    assert_eq!(v["SINGLE"], "literal $HOME", "$VAR must not be expanded");
    assert_eq!(v["CANARY_VAR"], CANARY);
}

#[test]
fn dry_run_changes_nothing_and_prefix_is_used() {
    let s = Sandbox::with_config("[secrets]\n");
    s.write("dev.env", "A=1\nB=2\n");
    let before = s.read(".keyzero.toml");
    let r = s.kz(&["import", "dev.env", "--dry-run"]).ok();
    assert!(
        r.stdout.contains("would map and store 2 secret(s)") && r.stdout.contains("A, B"),
        "{}",
        r.stdout
    );
    assert_eq!(s.read(".keyzero.toml"), before);
    assert!(!s.root.path().join("data/keyzero/store.age").exists());
    s.kz(&["import", "dev.env", "--prefix", "shared/"]).ok();
    assert!(s.read(".keyzero.toml").contains("ref = \"shared/A\""));
}

#[test]
fn bad_files_and_read_only_providers() {
    let s = Sandbox::with_config("[secrets]\n");
    s.write(".env", &format!("GOOD=1\n{CANARY}\n"));
    let r = s.kz(&["import"]).code(1).no_canary();
    assert!(r.stderr.contains(".env:2"), "{}", r.stderr);
    s.write(".env", "A=1\n");
    let r = s.kz(&["import", "--provider", "env"]).code(1);
    assert!(r.stderr.contains("cannot store values"), "{}", r.stderr);
    let r = s.kz(&["import", "missing.env"]).code(1);
    assert!(r.stderr.contains("missing.env"), "{}", r.stderr);
}

#[test]
fn published_flag_spellings() {
    let s = Sandbox::with_config("[secrets]\n");
    s.write("x.env", "A=1\n");
    let r = s
        .kz(&["import", "--file", "x.env", "--resolver", "local"])
        .ok();
    assert!(r.stderr.contains("deprecated"), "{}", r.stderr);
    assert!(s.read(".keyzero.toml").contains("A = "));
}

#[test]
fn import_maps_empty_values_with_allow_empty() {
    let s = Sandbox::with_config("[secrets]\n");
    s.write(
        ".env",
        &format!("EMPTY_VAR=\nFULL={CANARY}\nQUOTED_EMPTY=\"\"\n"),
    );
    let r = s.kz(&["import"]).ok().no_canary();
    assert!(
        r.stderr.contains("allow_empty = true") && r.stderr.contains("EMPTY_VAR, QUOTED_EMPTY"),
        "{}",
        r.stderr
    );
    let text = s.read(".keyzero.toml");
    assert!(
        text.contains(
            "EMPTY_VAR = { provider = \"local\", ref = \"proj/EMPTY_VAR\", allow_empty = true }"
        ),
        "{text}"
    );
    assert!(
        !text.contains("FULL = { provider = \"local\", ref = \"proj/FULL\", allow_empty"),
        "{text}"
    );
    let r = s
        .kz(&[
            "run",
            "--",
            "sh",
            "-c",
            "printf '[%s][%s]' \"$EMPTY_VAR\" \"${QUOTED_EMPTY-unset}\"",
        ])
        .ok();
    assert_eq!(r.stdout, "[][]");
}
