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
