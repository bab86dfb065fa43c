//! `kz run`: the main job.

use crate::util::{CANARY, Sandbox};

fn project() -> Sandbox {
    let s = Sandbox::with_config(
        "[secrets]\nAPI_KEY = { provider = \"local\", ref = \"proj/API_KEY\" }\nDB = \"local://proj/DB\"\nFROM_ENV = \"env://KZ_TEST_SOURCE\"\n",
    );
    s.put("API_KEY", CANARY);
    s.put("DB", "postgres://u@h/db");
    s
}

#[test]
fn child_gets_every_secret() {
    let mut s = project();
    s.set("KZ_TEST_SOURCE", "from-env");
    let r = s
        .kz(&[
            "run",
            "--",
            "sh",
            "-c",
            "printf '%s|%s|%s' \"$API_KEY\" \"$DB\" \"$FROM_ENV\"",
        ])
        .ok();
    assert_eq!(r.stdout, format!("{CANARY}|postgres://u@h/db|from-env"));
    assert!(!r.stderr.contains(CANARY));
}

#[test]
fn only_selects_and_unknown_names_fail() {
    let mut s = project();
    s.set("KZ_TEST_SOURCE", "x");
    let r = s
        .kz(&[
            "run",
            "--only",
            "DB",
            "--",
            "sh",
            "-c",
            "printf '%s|%s' \"${API_KEY-unset}\" \"$DB\"",
        ])
        .ok();
    assert_eq!(r.stdout, "unset|postgres://u@h/db");
    let r = s.kz(&["run", "--only", "DBB", "--", "true"]).code(1);
    assert!(
        r.stderr.contains("`DBB` is not mapped") && r.stderr.contains("did you mean `DB`?"),
        "{}",
        r.stderr
    );
}

#[test]
fn clean_env_keeps_only_the_basics_and_keep_env() {
    let mut s = project();
    s.set("KZ_TEST_SOURCE", "x")
        .set("EXTRA_VAR", "e")
        .set("KEPT_VAR", "k");
    let r = s
        .kz(&["run", "--clean-env", "--keep-env", "KEPT_VAR", "--", "env"])
        .ok();
    let names: Vec<&str> = r
        .stdout
        .lines()
        .filter_map(|l| l.split('=').next())
        .collect();
    for n in [
        "PATH", "HOME", "LANG", "KEPT_VAR", "API_KEY", "DB", "FROM_ENV",
    ] {
        assert!(names.contains(&n), "{n} missing: {names:?}");
    }
    for n in ["EXTRA_VAR", "XDG_DATA_HOME", "NO_COLOR"] {
        assert!(!names.contains(&n), "{n} leaked: {names:?}");
    }
    // --keep-env needs --clean-env (blind mode is not in this build yet).
    s.kz(&["run", "--keep-env", "X", "--", "true"]).code(2);
}

#[test]
fn exit_code_and_missing_command() {
    let mut s = project();
    s.set("KZ_TEST_SOURCE", "x");
    s.kz(&["run", "--", "sh", "-c", "exit 42"]).code(42);
    let r = s
        .kz(&["run", "--", "definitely-not-a-command-kz"])
        .code(127);
    assert_eq!(
        r.stderr.trim(),
        "kz: definitely-not-a-command-kz: command not found"
    );
    s.write("notexec.sh", "#!/bin/sh\necho hi\n");
    s.kz(&["run", "--", "./notexec.sh"]).code(126);
}

#[test]
fn nothing_starts_when_a_secret_fails_and_every_failure_is_listed() {
    let s = Sandbox::with_config(
        "[secrets]\nA = \"local://proj/missing-a\"\nB = \"env://KZ_UNSET_VAR\"\nC = { provider = \"local\", ref = \"proj/C\" }\n",
    );
    s.put("C", CANARY);
    let marker = s.path("started");
    let r = s
        .kz(&["run", "--", "touch", marker.to_str().unwrap()])
        .code(1)
        .no_canary();
    assert!(!marker.exists(), "the command ran although secrets failed");
    assert!(
        r.stderr
            .contains("A: not found from provider `local` (local)"),
        "{}",
        r.stderr
    );
    assert!(
        r.stderr.contains("B: not found from provider `env` (env)"),
        "{}",
        r.stderr
    );
    assert!(
        r.stderr.contains("kz put A") && r.stderr.contains("ref: proj/missing-a"),
        "{}",
        r.stderr
    );
}

#[test]
fn optional_and_allow_empty() {
    let mut s = Sandbox::with_config(
        "[secrets]\nOPT = { provider = \"env\", ref = \"KZ_NOPE\", optional = true }\nEMPTY = { provider = \"env\", ref = \"KZ_EMPTY\" }\nEMPTY_OK = { provider = \"env\", ref = \"KZ_EMPTY\", allow_empty = true }\n",
    );
    s.set("KZ_EMPTY", "");
    let r = s.kz(&["run", "--", "true"]).code(1);
    assert!(
        r.stderr.contains("EMPTY: empty value") && !r.stderr.contains("EMPTY_OK:"),
        "{}",
        r.stderr
    );
    let r = s
        .kz(&[
            "run",
            "--only",
            "OPT,EMPTY_OK",
            "--",
            "sh",
            "-c",
            "printf '%s|%s' \"${OPT-unset}\" \"${EMPTY_OK-unset}\"",
        ])
        .ok();
    assert_eq!(r.stdout, "unset|");
    assert!(
        r.stderr.contains("skipping optional secret OPT"),
        "{}",
        r.stderr
    );
}

#[test]
fn field_of_a_json_value_lists_keys_not_values() {
    let mut s = Sandbox::with_config(
        "[secrets]\nUSER = { provider = \"env\", ref = \"KZ_JSON\", field = \"user\" }\nPASS = { provider = \"env\", ref = \"KZ_JSON\", field = \"pasword\" }\n",
    );
    s.set(
        "KZ_JSON",
        &format!(r#"{{"user":"alice","password":"{CANARY}"}}"#),
    );
    let r = s
        .kz(&["run", "--only", "USER", "--", "printenv", "USER"])
        .ok();
    assert_eq!(r.stdout.trim(), "alice");
    let r = s.kz(&["run", "--", "true"]).code(1).no_canary();
    assert!(
        r.stderr.contains("field `pasword` does not exist") && r.stderr.contains("password, user"),
        "{}",
        r.stderr
    );
}

#[test]
fn dotenv_provider_end_to_end() {
    let s = Sandbox::with_config(
        "[providers.dotenv]\npath = \"secrets.env\"\n[secrets]\nTOKEN = { provider = \"dotenv\", ref = \"TOKEN\" }\n",
    );
    s.write(
        "secrets.env",
        &format!("# comment\nexport TOKEN=\"{CANARY}\"\n"),
    );
    let r = s.kz(&["run", "--", "printenv", "TOKEN"]).ok();
    assert_eq!(r.stdout.trim(), CANARY);
}

#[test]
fn exec_plugin_end_to_end_needs_trust() {
    let s = Sandbox::with_config(
        "[providers.plug]\ntype = \"exec\"\ncommand = [\"./plugin.sh\"]\n[secrets]\nP = { provider = \"plug\", ref = \"item\" }\n",
    );
    let p = s.write(
        "plugin.sh",
        "#!/bin/sh\ncat >/dev/null\nprintf 'plugin-value\\n'\n",
    );
    std::fs::set_permissions(&p, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let r = s.kz(&["run", "--", "printenv", "P"]).code(1);
    assert!(
        r.stderr.contains("`command`") && r.stderr.contains("kz allow"),
        "{}",
        r.stderr
    );
    let r = s.kz(&["--trust", "run", "--", "printenv", "P"]).ok();
    assert_eq!(r.stdout.trim(), "plugin-value");
}

#[test]
fn keyzero_refs_without_an_endpoint_say_how_to_set_one() {
    // An implicit team-server client (`kz://`) has no server to ask: a config error, no request.
    let s = Sandbox::with_config("[secrets]\nX = \"kz://prod/x\"\n");
    let r = s.kz(&["--trust", "run", "--", "true"]).code(1);
    assert!(
        r.stderr.contains("no `endpoint`") && r.stderr.contains("endpoint = \"https://"),
        "{}",
        r.stderr
    );
}

#[test]
fn mistyped_run_options_are_usage_errors_not_commands() {
    let mut s = project();
    s.set("KZ_TEST_SOURCE", "x");
    let r = s
        .kz(&["run", "--onyl", "DB", "--", "env"])
        .code(2)
        .no_canary();
    assert!(
        r.stderr.contains("--onyl") && r.stderr.contains("'--only'"),
        "names the option and the closest one: {}",
        r.stderr
    );
    s.kz(&["run", "--blnd", "--", "true"]).code(2);
    // Without `--` the command's own options stay the command's.
    let r = s
        .kz(&["run", "sh", "-c", "printf %s \"$DB\"; exit 3"])
        .code(3);
    assert_eq!(r.stdout, "postgres://u@h/db");
    let r = s.kz(&["run", "--only", "DB", "printenv", "DB"]).ok();
    assert_eq!(r.stdout.trim(), "postgres://u@h/db");
    // So are options after the command's name that kz also has.
    let r = s
        .kz(&[
            "run",
            "sh",
            "-c",
            "echo \"$*\"",
            "x",
            "--only",
            "--blind",
            "-v",
        ])
        .ok();
    assert_eq!(r.stdout.trim(), "--only --blind -v");
    // After `--`, everything is the command, even what looks like a kz option.
    let r = s
        .kz(&["run", "--", "sh", "-c", "echo \"$0\"", "--only"])
        .ok();
    assert_eq!(r.stdout.trim(), "--only");
}

#[test]
fn blind_502_says_why_under_verbose() {
    let mut s = Sandbox::with_config(
        "[secrets]\nAPI_TOKEN = { provider = \"env\", ref = \"KZ_TEST_SRC\", hosts = [\"http://localhost:1\"] }\n",
    );
    s.set("KZ_TEST_SRC", CANARY).set("KEYZERO_TRUST", "1");
    // Port 1 on loopback: allowed by the exact pattern, but nothing listens there.
    let child = "curl -s -o /dev/null -w '%{http_code}' -H \"Authorization: Bearer $API_TOKEN\" http://localhost:1/";
    let r = s
        .kz(&["-v", "run", "--blind", "--", "sh", "-c", child])
        .no_canary();
    assert_eq!(r.stdout, "502", "{}", r.stderr);
    assert!(
        r.stderr.contains("1 failed (502)")
            && r.stderr.contains("blind: 502: upstream localhost:1 failed"),
        "-v says why: {}",
        r.stderr
    );
    // Without -v, no summary.
    let r = s
        .kz(&["run", "--blind", "--", "sh", "-c", child])
        .no_canary();
    assert!(!r.stderr.contains("blind: 502"), "{}", r.stderr);
}
