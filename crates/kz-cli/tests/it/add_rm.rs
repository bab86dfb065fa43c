//! `kz init`, `kz add`, `kz rm`: editing the project file safely.

use crate::util::{CANARY, Sandbox};

#[test]
fn init_creates_refuses_and_forces() {
    let s = Sandbox::new();
    let r = s.kz(&["init"]).ok();
    assert!(r.stdout.contains("next steps"), "{}", r.stdout);
    let text = s.read(".keyzero.toml");
    assert!(text.contains("ref = \"proj/EXAMPLE_API_KEY\""), "{text}");
    assert!(text.lines().next().unwrap().starts_with('#'));
    s.kz(&["validate"]).ok();
    let r = s.kz(&["init"]).code(1);
    assert!(
        r.stderr.contains("already exists") && r.stderr.contains("--force"),
        "{}",
        r.stderr
    );
    s.kz(&["init", "--force"]).ok();
    assert!(
        !s.path(".gitignore").exists(),
        "no .gitignore outside a git work tree"
    );
}

#[test]
fn init_in_a_git_work_tree_ignores_the_local_file() {
    let s = Sandbox::new();
    let git = std::process::Command::new("git")
        .args(["init", "-q"])
        .current_dir(&s.project)
        .status();
    assert!(
        git.is_ok_and(|g| g.success()),
        "git is needed for this test: apt-get install git"
    );
    s.kz(&["init"]).ok();
    assert_eq!(s.read(".gitignore"), ".keyzero.local.toml\n");
    s.kz(&["init", "--force"]).ok();
    assert_eq!(s.read(".gitignore"), ".keyzero.local.toml\n", "added twice");
}

#[test]
fn add_defaults_to_the_local_store_and_keeps_comments() {
    let s = Sandbox::with_config("# my comment\n[secrets]\nA = \"env://A\" # why\n");
    s.kz(&["add", "DATABASE_URL"]).ok();
    let text = s.read(".keyzero.toml");
    assert!(
        text.contains("# my comment") && text.contains("# why"),
        "{text}"
    );
    assert!(
        text.contains("DATABASE_URL = { provider = \"local\", ref = \"proj/DATABASE_URL\" }"),
        "{text}"
    );
    s.kz(&[
        "add",
        "KEY",
        "--provider",
        "vault",
        "--ref",
        "vault://secret/app",
        "--field",
        "k",
        "--hosts",
        "api.x.com,*.y.com",
    ])
    .ok();
    let text = s.read(".keyzero.toml");
    assert!(text.contains("KEY = { provider = \"vault\", ref = \"secret/app\", field = \"k\", hosts = [\"api.x.com\", \"*.y.com\"] }"), "{text}");
    // The scheme picks the provider when --provider is absent.
    s.kz(&["add", "OP", "--ref", "op://Dev/item/field"]).ok();
    assert!(
        s.read(".keyzero.toml")
            .contains("OP = { provider = \"1password\", ref = \"op://Dev/item/field\" }")
    );
}

#[test]
fn add_to_an_environment_and_the_local_file() {
    let s = Sandbox::with_config("[secrets]\nA = \"env://A\"\n");
    s.kz(&[
        "--env",
        "production",
        "add",
        "A",
        "--provider",
        "env",
        "--ref",
        "PROD_A",
    ])
    .ok();
    assert!(
        s.read(".keyzero.toml")
            .contains("[production.secrets]\nA = { provider = \"env\", ref = \"PROD_A\" }")
    );
    s.kz(&["add", "MINE", "--local"]).ok();
    assert!(
        s.read(".keyzero.local.toml")
            .contains("MINE = { provider = \"local\", ref = \"proj/MINE\" }")
    );
    // KEYZERO_ENV does not pick the section written to.
    let mut s2 =
        Sandbox::with_config("[secrets]\nA = \"env://A\"\n[staging.secrets]\nA = \"env://S\"\n");
    s2.set("KEYZERO_ENV", "staging");
    s2.kz(&["add", "B", "--provider", "env", "--ref", "B"]).ok();
    assert!(
        s2.read(".keyzero.toml")
            .contains("[secrets]\nA = \"env://A\"\nB = "),
        "{}",
        s2.read(".keyzero.toml")
    );
}

#[test]
fn add_validates_before_writing() {
    let s = Sandbox::with_config("[secrets]\nA = \"env://A\"\n");
    let before = s.read(".keyzero.toml");
    let r = s.kz(&["add", "1BAD"]).code(1);
    assert!(
        r.stderr.contains("not a valid environment variable name"),
        "{}",
        r.stderr
    );
    let r = s
        .kz(&[
            "add",
            "X",
            "--provider",
            "1password",
            "--ref",
            "op://only-two",
        ])
        .code(1);
    assert!(r.stderr.contains("op://VAULT/ITEM"), "{}", r.stderr);
    let r = s
        .kz(&["add", "X", "--provider", "vualt", "--ref", "a/b"])
        .code(1);
    assert!(r.stderr.contains("did you mean `vault`?"), "{}", r.stderr);
    let r = s.kz(&["add", "X", "--hosts", "https://x.com/path"]).code(1);
    assert!(r.stderr.contains("not a host"), "{}", r.stderr);
    let r = s.kz(&["add", "A"]).code(1);
    assert!(
        r.stderr.contains("already mapped") && r.stderr.contains("--force"),
        "{}",
        r.stderr
    );
    assert_eq!(s.read(".keyzero.toml"), before);
    s.kz(&["add", "A", "--force"]).ok();
    assert!(
        s.read(".keyzero.toml")
            .contains("A = { provider = \"local\"")
    );
}

#[test]
fn add_accepts_the_published_flag_spellings() {
    let s = Sandbox::with_config("[secrets]\n");
    let r = s
        .kz(&[
            "add",
            "--name",
            "OLD",
            "--resolver",
            "env",
            "--reference",
            "OLD_SRC",
        ])
        .ok();
    assert!(r.stderr.contains("deprecated"), "{}", r.stderr);
    assert!(
        s.read(".keyzero.toml")
            .contains("OLD = { provider = \"env\", ref = \"OLD_SRC\" }")
    );
}

#[test]
fn rm_removes_and_purges_with_confirmation() {
    let s = Sandbox::with_config("[secrets]\nA = \"local://proj/A\"\nB = \"local://proj/B\"\n");
    s.put("A", CANARY);
    s.put("B", "b");
    s.kz(&["rm", "B"]).ok();
    assert!(!s.read(".keyzero.toml").contains("B ="));
    let r = s.kz(&["rm", "A", "--purge"]).code(2);
    assert!(r.stderr.contains("--yes"), "{}", r.stderr);
    s.kz(&["rm", "A", "--purge", "--yes"]).ok().no_canary();
    // The value is gone: mapping it again finds nothing.
    s.kz(&["add", "A"]).ok();
    let r = s.kz(&["run", "--", "true"]).code(1);
    assert!(r.stderr.contains("not found"), "{}", r.stderr);
    let r = s.kz(&["rm", "ZZZ"]).code(1);
    assert!(r.stderr.contains("not mapped"), "{}", r.stderr);
}

#[test]
fn init_add_put_run_works_the_first_time() {
    let s = Sandbox::new();
    let r = s.kz(&["init"]).ok();
    let identity = s.root.path().join("config/keyzero/identity.txt");
    assert!(
        r.stdout.contains(&identity.display().to_string())
            && r.stdout.contains("losing it loses every value"),
        "init says where the store's key is: {}",
        r.stdout
    );
    // The starter file alone must not stop the first run.
    s.kz(&["run", "--", "true"]).ok();
    s.kz(&["add", "API_KEY"]).ok();
    let r = s
        .kz_stdin(&["put", "API_KEY", "--stdin"], CANARY)
        .ok()
        .no_canary();
    assert!(
        r.stderr.contains(&identity.display().to_string()) && r.stderr.contains("back it up"),
        "the put that creates the store says where its key is: {}",
        r.stderr
    );
    assert!(identity.exists());
    let r = s
        .kz(&["run", "--", "sh", "-c", "printf %s \"$API_KEY\""])
        .ok();
    assert_eq!(r.stdout, CANARY);
    // Said once: the next put names no key.
    let r = s.kz_stdin(&["put", "API_KEY", "--stdin"], "other").ok();
    assert!(!r.stderr.contains("back it up"), "{}", r.stderr);
}

#[test]
fn add_checks_the_ref_scheme_as_the_file_loader_does() {
    let s = Sandbox::with_config("[secrets]\n");
    let before = s.read(".keyzero.toml");
    let r = s
        .kz(&["add", "OPENAI_KEY", "--ref", "opp://Dev/openai/key"])
        .code(1);
    assert!(
        r.stderr.contains("unknown reference scheme `opp://`")
            && r.stderr.contains("did you mean `op://`?"),
        "{}",
        r.stderr
    );
    assert_eq!(s.read(".keyzero.toml"), before, "nothing written");
    // The same ref in the file is refused by the loader too.
    let s2 = Sandbox::with_config("[secrets]\nOPENAI_KEY = \"opp://Dev/openai/key\"\n");
    assert!(
        s2.kz(&["validate"])
            .code(1)
            .stderr
            .contains("unknown reference scheme"),
        "the loader and kz add agree"
    );
    // Known schemes and plain local refs still work.
    s.kz(&["add", "OPENAI_KEY", "--ref", "op://Dev/openai/key"])
        .ok();
    assert!(s.read(".keyzero.toml").contains("provider = \"1password\""));
    s.kz(&["add", "LOCAL_ONE", "--ref", "proj/LOCAL_ONE"]).ok();
    assert!(
        s.read(".keyzero.toml")
            .contains("LOCAL_ONE = { provider = \"local\"")
    );
}

/// Runs `kz ARGS` on a pseudo-terminal (util-linux `script`) with `keys` typed in; returns what
/// the terminal showed.
fn on_terminal(s: &Sandbox, args: &str, keys: &str) -> String {
    use std::io::Write;
    let mut child = std::process::Command::new("script")
        .args([
            "-qec",
            &format!("'{}' {args}", crate::util::kz_bin().display()),
            "/dev/null",
        ])
        .current_dir(&s.project)
        .env_clear()
        .envs(&s.env)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("`script` is needed (apt-get install bsdutils): {e}"));
    child
        .stdin
        .take()
        .unwrap()
        .write_all(keys.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn interactive_add_asks_for_a_field_only_where_values_have_fields() {
    let s = Sandbox::with_config("[secrets]\n");
    // local: the reference (default accepted), and no field question (the second Enter would
    // answer one).
    let shown = on_terminal(&s, "add LOCAL_ONE --provider local", "\r\r");
    assert!(shown.contains("reference"), "{shown}");
    assert!(!shown.contains("field"), "{shown}");
    assert!(
        s.read(".keyzero.toml")
            .contains("LOCAL_ONE = { provider = \"local\", ref = \"proj/LOCAL_ONE\" }")
    );
    // aws: a JSON secret has members, so the field is asked for.
    let shown = on_terminal(&s, "add AWS_ONE --provider aws", "sm://prod/app\rapi_key\r");
    assert!(shown.contains("field"), "{shown}");
    assert!(
        s.read(".keyzero.toml").contains(
            "AWS_ONE = { provider = \"aws\", ref = \"sm://prod/app\", field = \"api_key\" }"
        ),
        "{}",
        s.read(".keyzero.toml")
    );
}
