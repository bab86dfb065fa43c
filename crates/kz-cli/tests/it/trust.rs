//! Trust: an untrusted repository can do nothing to you. Program and server options from
//! `.keyzero.toml` or `.keyzero.local.toml` need `kz allow`; so do variables that load code,
//! other projects' `local` refs, files outside the tree and blind mode.

use crate::leaks::EchoServer;
use crate::util::{CANARY, Sandbox};

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
fn operator_overrides_for_one_invocation() {
    let mut s = project();
    s.kz(&["--trust", "run", "--", "true"]).ok();
    s.set("KEYZERO_TRUST", "1");
    s.kz(&["run", "--", "true"]).ok();
    s.set("KEYZERO_TRUST", "0");
    s.kz(&["run", "--", "true"]).code(1);
}

/// A cloned repository whose committed `.keyzero.local.toml` plants a program and a server.
fn hostile_local_file(server: &EchoServer) -> Sandbox {
    let mut s = Sandbox::with_config(
        "[secrets]\nV = { provider = \"vault\", ref = \"secret/data/app#key\" }\nP = { provider = \"plug\", ref = \"x\" }\n",
    );
    s.write(
        ".keyzero.local.toml",
        &format!(
            "[providers.vault]\ntype = \"hashicorp\"\naddress = \"{}\"\ntimeout = \"3s\"\n[providers.plug]\ntype = \"exec\"\ncommand = [\"sh\", \"-c\", \"touch ran; echo v\"]\n",
            server.address()
        ),
    );
    s.set("VAULT_TOKEN", CANARY);
    s
}

#[test]
fn a_committed_local_file_gets_nothing_without_allow() {
    let server = EchoServer::start();
    let s = hostile_local_file(&server);
    for args in [
        &["status"][..],
        &["run", "--", "true"],
        &["export"],
        &["run", "--only", "P", "--", "true"],
    ] {
        let r = s.kz(args).code(1).no_canary();
        assert!(
            r.stderr.contains("trust::untrusted_option") || r.stderr.contains("not trusted"),
            "{}",
            r.stderr
        );
        assert!(r.stderr.contains(".keyzero.local.toml"), "{}", r.stderr);
    }
    assert!(!s.path("ran").exists(), "the planted plugin ran");
    assert!(
        server.requests().is_empty(),
        "the planted address was contacted: {:?}",
        server.requests()
    );
    // Trusted after review, the same files are honoured (so the refusal above was trust).
    s.kz(&["allow"]).ok();
    s.kz(&["run", "--only", "P", "--", "true"]).ok();
    assert!(s.path("ran").exists());
    s.kz(&["run", "--only", "V", "--", "true"])
        .code(1)
        .no_canary();
    assert!(server.requests().iter().any(|h| h.contains(CANARY)));
}

#[test]
fn variables_that_load_code_are_refused_untrusted() {
    let mut s = Sandbox::with_config(
        "[secrets]\nLD_PRELOAD = { provider = \"dotenv\", ref = \"SO\" }\nBASH_ENV = \"env://KZ_RC\"\nnpm_config_script_shell = \"env://KZ_RC\"\nOK = \"env://KZ_RC\"\n",
    );
    s.write(".env", "SO=/tmp/kz-evil.so\n");
    s.set("KZ_RC", "/tmp/kz-evil-rc");
    let r = s.kz(&["run", "--", "true"]).code(1);
    for name in ["LD_PRELOAD", "BASH_ENV", "npm_config_script_shell"] {
        assert!(
            r.stderr.contains(&format!("secret: {name}")),
            "{name}: {}",
            r.stderr
        );
    }
    assert!(!r.stderr.contains("secret: OK"), "{}", r.stderr);
    assert!(
        r.stderr.contains("changes which code programs load or run"),
        "{}",
        r.stderr
    );
    assert!(r.stderr.contains("kz allow"), "{}", r.stderr);
    // Unaffected secrets still work on their own; `kz allow` lifts the rule.
    assert_eq!(
        s.kz(&["run", "--only", "OK", "--", "printenv", "OK"])
            .ok()
            .stdout
            .trim(),
        "/tmp/kz-evil-rc"
    );
    s.kz(&["allow"]).ok();
    assert_eq!(
        s.kz(&["run", "--", "printenv", "BASH_ENV"])
            .ok()
            .stdout
            .trim(),
        "/tmp/kz-evil-rc"
    );
}

#[test]
fn local_refs_of_another_project_are_refused_untrusted() {
    let s = Sandbox::with_config(
        "[secrets]\nS = \"local://payments/STRIPE_KEY\"\nMINE = \"local://proj/MINE\"\n",
    );
    // The other project stores its key in the shared local store.
    let payments = s.root.path().join("payments");
    std::fs::create_dir_all(&payments).unwrap();
    std::fs::write(
        payments.join(".keyzero.toml"),
        "[secrets]\nSTRIPE_KEY = \"local://payments/STRIPE_KEY\"\n",
    )
    .unwrap();
    s.kz_stdin(
        &[
            "--dir",
            payments.to_str().unwrap(),
            "put",
            "STRIPE_KEY",
            "--stdin",
        ],
        CANARY,
    )
    .ok();
    s.put("MINE", "mine");
    let r = s.kz(&["run", "--", "printenv", "S"]).code(1).no_canary();
    assert!(
        r.stderr.contains("trust::foreign_local_ref")
            || r.stderr.contains("outside this project's namespace"),
        "{}",
        r.stderr
    );
    let r = s.kz(&["export", "--format", "json"]).code(1).no_canary();
    assert!(r.stderr.contains("payments/STRIPE_KEY"), "{}", r.stderr);
    // Nor can it overwrite the other project's value.
    s.kz_stdin(&["put", "S", "--stdin"], "overwritten").code(1);
    s.kz(&["run", "--only", "MINE", "--", "true"]).ok();
    s.kz(&["allow"]).ok();
    assert_eq!(
        s.kz(&["run", "--", "printenv", "S"]).ok().stdout.trim(),
        CANARY
    );
}

#[test]
fn dotenv_files_outside_the_project_are_refused_untrusted() {
    let s = Sandbox::new();
    let outside = s.root.path().join("outside.env");
    std::fs::write(&outside, format!("K={CANARY}\n")).unwrap();
    std::fs::write(
        s.root.path().join("home/.secrets.env"),
        format!("K={CANARY}\n"),
    )
    .unwrap();
    s.write("inside/vals.env", "K=fine\n");
    for path in [
        "../outside.env",
        "~/.secrets.env",
        "inside/../../outside.env",
        outside.to_str().unwrap(),
    ] {
        s.write(
            ".keyzero.toml",
            &format!("[providers.dotenv]\npath = \"{path}\"\n[secrets]\nK = {{ provider = \"dotenv\", ref = \"K\" }}\n"),
        );
        let r = s.kz(&["run", "--", "printenv", "K"]).code(1).no_canary();
        assert!(
            r.stderr.contains("outside the project directory"),
            "{path}: {}",
            r.stderr
        );
    }
    // Through a symlink in the tree, with the default `.env`.
    s.write(
        ".keyzero.toml",
        "[secrets]\nK = { provider = \"dotenv\", ref = \"K\" }\n",
    );
    std::os::unix::fs::symlink(&outside, s.path(".env")).unwrap();
    let r = s.kz(&["run", "--", "printenv", "K"]).code(1).no_canary();
    assert!(
        r.stderr.contains("outside the project directory"),
        "{}",
        r.stderr
    );
    // Inside the tree is fine, `..` included.
    s.write(
        ".keyzero.toml",
        "[providers.dotenv]\npath = \"inside/../inside/vals.env\"\n[secrets]\nK = { provider = \"dotenv\", ref = \"K\" }\n",
    );
    assert_eq!(
        s.kz(&["run", "--", "printenv", "K"]).ok().stdout.trim(),
        "fine"
    );
}

#[test]
fn blind_mode_needs_trust_and_an_edit_of_hosts_revokes_it() {
    let mut s = Sandbox::with_config(
        "[secrets]\nE = { provider = \"env\", ref = \"KZ_SRC\", hosts = [\"api.example.com\"] }\n",
    );
    s.set("KZ_SRC", "v");
    let r = s.kz(&["run", "--blind", "--", "touch", "started"]).code(1);
    assert!(
        r.stderr.contains("trust::blind_untrusted")
            || r.stderr.contains("blind mode does not start"),
        "{}",
        r.stderr
    );
    assert!(!s.path("started").exists());
    s.kz(&["allow"]).ok();
    s.kz(&["run", "--blind", "--", "touch", "started"]).ok();
    assert!(s.path("started").exists());
    std::fs::remove_file(s.path("started")).unwrap();
    // An agent widens `hosts`: trust is gone, blind mode does not start.
    s.write(
        ".keyzero.toml",
        "[secrets]\nE = { provider = \"env\", ref = \"KZ_SRC\", hosts = [\"api.example.com\", \"evil.example\"] }\n",
    );
    s.kz(&["run", "--blind", "--", "touch", "started"]).code(1);
    assert!(!s.path("started").exists());
    // The same in a planted .keyzero.local.toml.
    s.kz(&["allow"]).ok();
    s.write(
        ".keyzero.local.toml",
        "[blind]\nallow = [\"evil.example\"]\n",
    );
    s.kz(&["run", "--blind", "--", "touch", "started"]).code(1);
    assert!(!s.path("started").exists());
    // The operator's override, for one invocation.
    s.kz(&["--trust", "run", "--blind", "--", "touch", "started"])
        .ok();
    s.set("KEYZERO_TRUST", "1");
    s.kz(&["run", "--blind", "--", "true"]).ok();
}

#[test]
fn rewrites_never_follow_links_planted_in_a_shared_directory() {
    use std::os::unix::fs::PermissionsExt;
    let s = Sandbox::new();
    // A directory another user can write (sticky, like /tmp), holding the project.
    let shared = s.root.path().join("shared");
    std::fs::create_dir_all(&shared).unwrap();
    std::fs::set_permissions(&shared, std::fs::Permissions::from_mode(0o1777)).unwrap();
    std::fs::write(shared.join(".keyzero.toml"), "[secrets]\n").unwrap();
    let victim = s.root.path().join("victim");
    std::fs::write(&victim, "untouched").unwrap();
    // The other user plants links under every temporary name the next processes could use
    // with a pid-based scheme.
    let last: u32 = std::fs::read_to_string("/proc/sys/kernel/ns_last_pid")
        .ok()
        .and_then(|t| t.trim().parse().ok())
        .unwrap_or(1000);
    for pid in last..last + 2000 {
        for name in [
            format!(".keyzero.toml.kz-tmp-{pid}"),
            format!(".keyzero.toml.tmp-{pid}"),
        ] {
            let link = shared.join(name);
            std::os::unix::fs::symlink(&victim, &link).unwrap();
            let _ = std::os::unix::fs::lchown(&link, Some(65534), Some(65534));
        }
    }
    let dir = shared.to_str().unwrap();
    s.kz(&[
        "--dir",
        dir,
        "add",
        "A",
        "--provider",
        "env",
        "--ref",
        "KZ_A",
    ])
    .ok();
    s.kz(&["--dir", dir, "rm", "A"]).ok();
    assert_eq!(std::fs::read_to_string(&victim).unwrap(), "untouched");
    let meta = std::fs::symlink_metadata(shared.join(".keyzero.toml")).unwrap();
    assert!(meta.file_type().is_file(), "the config became a link");
}

#[test]
fn names_from_files_and_directories_cannot_drive_the_terminal() {
    let s = Sandbox::new();
    let evil = s.root.path().join("repo\u{1b}]0;pwned\u{7}\u{1b}[2J");
    std::fs::create_dir_all(&evil).unwrap();
    std::fs::write(
        evil.join(".keyzero.toml"),
        "[secrets]\n\"A\\u001b[31mB\" = \"env://X\"\n[blind]\n\"bad\\u009b2J\" = 1\n",
    )
    .unwrap();
    for args in [&["validate"][..], &["status"], &["list"]] {
        let mut a = vec!["--dir", evil.to_str().unwrap()];
        a.extend_from_slice(args);
        let r = s.kz(&a);
        assert_ne!(r.code, Some(0));
        assert!(
            !r.stderr.contains('\u{1b}')
                && !r.stderr.contains('\u{9b}')
                && !r.stderr.contains('\u{7}'),
            "{:?}",
            r.stderr
        );
        assert!(r.stderr.contains("\\e]0;pwned"), "{}", r.stderr);
    }
}

#[test]
fn a_cached_value_is_no_easier_to_reach_untrusted() {
    use std::os::unix::fs::PermissionsExt;
    // The plugin is in the user's global file (trusted); the project caches its value.
    let s = Sandbox::with_config(
        "[cache]\nmax_age = \"10m\"\n[secrets]\nP = { provider = \"plug\", ref = \"x\" }\n",
    );
    let plugin = s.root.path().join("plugin.sh");
    std::fs::write(&plugin, "#!/bin/sh\ncat >/dev/null\necho /tmp/kz-evil.so\n").unwrap();
    std::fs::set_permissions(&plugin, std::fs::Permissions::from_mode(0o755)).unwrap();
    let global = s.root.path().join("config/keyzero/config.toml");
    std::fs::create_dir_all(global.parent().unwrap()).unwrap();
    std::fs::write(
        &global,
        format!(
            "[providers.plug]\ntype = \"exec\"\ncommand = [\"{}\"]\n",
            plugin.display()
        ),
    )
    .unwrap();
    // A plugin spends the user's own credentials: trusted for this first run.
    s.kz(&["--trust", "run", "--", "true"]).ok();
    // Every value now comes from the cache; the repository maps one of them to LD_PRELOAD.
    s.write(
        ".keyzero.toml",
        "[cache]\nmax_age = \"10m\"\n[secrets]\nLD_PRELOAD = { provider = \"plug\", ref = \"x\" }\n",
    );
    let r = s.kz(&["run", "--", "printenv", "LD_PRELOAD"]).code(1);
    assert!(r.stderr.contains("changes which code"), "{}", r.stderr);
}

#[test]
fn age_files_outside_the_project_are_refused_untrusted() {
    let s = Sandbox::new();
    let outside = s.root.path().join("theirs.age");
    std::fs::write(&outside, "not really age").unwrap();
    std::fs::create_dir_all(s.path("secrets")).unwrap();
    std::os::unix::fs::symlink(&outside, s.path("secrets/db.age")).unwrap();
    for r in [outside.to_str().unwrap(), "secrets/db.age"] {
        s.write(
            ".keyzero.toml",
            &format!("[secrets]\nS = {{ provider = \"age\", ref = \"{r}\" }}\n"),
        );
        let r = s.kz(&["run", "--", "true"]).code(1);
        assert!(
            r.stderr.contains("the age file") && r.stderr.contains("outside the project directory"),
            "{}",
            r.stderr
        );
    }
}

#[test]
fn one_error_per_file_outside_the_tree() {
    let s = Sandbox::with_config(
        "[providers.dotenv]\npath = \"../x.env\"\n[secrets]\nA = { provider = \"dotenv\", ref = \"A\" }\nB = { provider = \"dotenv\", ref = \"B\" }\n",
    );
    let r = s.kz(&["run", "--", "true"]).code(1);
    assert_eq!(
        r.stderr.matches("outside the project directory").count(),
        1,
        "{}",
        r.stderr
    );
}

/// The user's own Vault address, in the user's global file (so the repository names only the
/// credential options and refs).
fn with_users_vault(s: &Sandbox, server: &EchoServer) {
    let global = s.root.path().join("config/keyzero/config.toml");
    std::fs::create_dir_all(global.parent().unwrap()).unwrap();
    std::fs::write(
        &global,
        format!(
            "[providers.vault]\ntype = \"hashicorp\"\naddress = \"{}\"\ntimeout = \"3s\"\n",
            server.address()
        ),
    )
    .unwrap();
}

#[test]
fn credential_options_need_trust_and_send_nothing() {
    let server = EchoServer::start();
    let key = "~/.ssh/id_ed25519";
    for opts in [
        "token_env = \"GITHUB_TOKEN\"".to_string(),
        format!("auth = {{ method = \"jwt\", role = \"r\", token_file = \"{key}\" }}"),
        "ca_cert = \"ca.pem\"".to_string(),
    ] {
        let mut s = Sandbox::with_config(&format!(
            "[providers.mine]\ntype = \"hashicorp\"\naddress = \"{}\"\n{opts}\n[secrets]\nV = {{ provider = \"mine\", ref = \"secret/data/app#key\" }}\n",
            server.address()
        ));
        s.set("GITHUB_TOKEN", CANARY);
        s.write("../home/.ssh/id_ed25519", CANARY);
        let r = s.kz(&["run", "--", "true"]).code(1).no_canary();
        let opt = opts.split(' ').next().unwrap();
        assert!(
            r.stderr.contains(&format!("option `{opt}`")),
            "{opts}: {}",
            r.stderr
        );
        assert!(r.stderr.contains("kz allow"), "{}", r.stderr);
    }
    assert!(server.requests().is_empty(), "{:?}", server.requests());
}

#[test]
fn the_users_remote_stores_are_not_reachable_untrusted() {
    let server = EchoServer::start();
    let mut s = Sandbox::with_config(
        "[secrets]\nV = { provider = \"vault\", ref = \"secret/data/other-project#key\" }\n",
    );
    with_users_vault(&s, &server);
    s.set("VAULT_TOKEN", CANARY);
    for args in [
        &["run", "--", "true"][..],
        &["export"],
        &["status"],
        &["run", "--only", "V", "--", "true"],
    ] {
        let r = s.kz(args).code(1).no_canary();
        let both = format!("{}{}", r.stdout, r.stderr);
        assert!(
            both.contains("uses your own credentials"),
            "{args:?}: {both}"
        );
    }
    // Nor can the repository overwrite or delete what the ref names.
    s.kz_stdin(&["put", "V", "--stdin"], "overwritten")
        .code(1)
        .no_canary();
    s.kz(&["rm", "V", "--purge", "--yes"]).no_canary();
    assert!(server.requests().is_empty(), "{:?}", server.requests());
    // The same files, trusted: the user's Vault is used.
    s.kz(&["allow"]).ok();
    s.kz(&["run", "--", "true"]).code(1).no_canary();
    assert!(!server.requests().is_empty());
}

#[test]
fn a_config_file_linked_out_of_the_tree_is_refused() {
    let server = EchoServer::start();
    let s = Sandbox::with_config("[secrets]\nK = { provider = \"dotenv\", ref = \"K\" }\n");
    s.write(".env", "K=fine\n");
    let other = s.root.path().join("other.local.toml");
    std::fs::write(
        &other,
        format!(
            "[providers.vault]\ntype = \"hashicorp\"\naddress = \"{}\"\ntoken = \"{CANARY}\"\n",
            server.address()
        ),
    )
    .unwrap();
    std::os::unix::fs::symlink(&other, s.path(".keyzero.local.toml")).unwrap();
    let r = s.kz(&["run", "--", "printenv", "K"]).code(1).no_canary();
    assert!(
        r.stderr.contains("leads outside the project directory"),
        "{}",
        r.stderr
    );
    assert!(server.requests().is_empty());
}

#[test]
fn kz_switches_and_credential_routes_cannot_be_mapped_untrusted() {
    let s = Sandbox::with_config(
        "[secrets]\nKEYZERO_TRUST = { provider = \"dotenv\", ref = \"T\" }\nKEYZERO_CONFIG = { provider = \"dotenv\", ref = \"C\" }\nAWS_ENDPOINT_URL = { provider = \"dotenv\", ref = \"U\" }\nhttps_proxy = { provider = \"dotenv\", ref = \"U\" }\nSSL_CERT_FILE = { provider = \"dotenv\", ref = \"C\" }\nNODE_TLS_REJECT_UNAUTHORIZED = { provider = \"dotenv\", ref = \"Z\" }\nVIMINIT = { provider = \"dotenv\", ref = \"C\" }\nCC = { provider = \"dotenv\", ref = \"C\" }\nOK = { provider = \"dotenv\", ref = \"T\" }\n",
    );
    s.write(".env", "T=1\nC=/tmp/x\nU=http://127.0.0.1:9\nZ=0\n");
    let r = s.kz(&["run", "--", "true"]).code(1);
    for name in [
        "KEYZERO_TRUST",
        "KEYZERO_CONFIG",
        "AWS_ENDPOINT_URL",
        "https_proxy",
        "SSL_CERT_FILE",
        "NODE_TLS_REJECT_UNAUTHORIZED",
        "VIMINIT",
        "CC",
    ] {
        assert!(
            r.stderr.contains(&format!("secret: {name}")),
            "{name}: {}",
            r.stderr
        );
    }
    assert!(!r.stderr.contains("secret: OK"), "{}", r.stderr);
    assert!(
        r.stderr.contains("changes where programs send credentials"),
        "{}",
        r.stderr
    );
}

#[test]
fn doctor_runs_the_reach_checks_and_contacts_nothing_untrusted() {
    let server = EchoServer::start();
    let mut s = Sandbox::with_config(
        "[secrets]\nS = \"local://payments/STRIPE_KEY\"\nK = { provider = \"dotenv\", ref = \"K\" }\nV = { provider = \"vault\", ref = \"secret/data/x#k\" }\n",
    );
    with_users_vault(&s, &server);
    s.set("VAULT_TOKEN", CANARY);
    let outside = s.root.path().join("outside.env");
    std::fs::write(&outside, format!("K={CANARY}\n")).unwrap();
    std::os::unix::fs::symlink(&outside, s.path(".env")).unwrap();
    let r = s.kz(&["doctor"]).no_canary();
    assert!(!r.stdout.contains("only the shell hook"), "{}", r.stdout);
    for what in [
        "outside this project's namespace",
        "outside the project directory",
        "uses your own credentials",
        ".keyzero.toml:2",
    ] {
        assert!(r.stdout.contains(what), "{what}: {}", r.stdout);
    }
    assert!(server.requests().is_empty(), "{:?}", server.requests());
}

#[test]
fn blind_keep_env_drops_every_credential_variable_of_every_type() {
    let mut s = Sandbox::with_config(
        "[providers.mine]\ntype = \"hashicorp\"\naddress = \"http://127.0.0.1:9\"\ntoken_env = \"MY_VAULT_TOK\"\nauth = { method = \"approle\", role_id = \"r\", secret_id_env = \"MY_SECRET_ID\" }\n[providers.team]\ntype = \"keyzero\"\nendpoint = \"https://kz.example.com\"\ntoken_source = \"env:MY_KZ_ID_TOKEN\"\n[secrets]\nAPI = { provider = \"env\", ref = \"KZ_SRC\", hosts = [\"localhost:1\"] }\n",
    );
    s.kz(&["allow"]).ok();
    s.set("KZ_SRC", "not-the-canary-value-1234");
    let vars = [
        "MY_VAULT_TOK",
        "MY_SECRET_ID",
        "MY_KZ_ID_TOKEN",
        "KEYZERO_TOKEN",
        "ACTIONS_ID_TOKEN_REQUEST_TOKEN",
        "VAULT_TOKEN",
        "AWS_SECRET_ACCESS_KEY",
        "GOOGLE_OAUTH_ACCESS_TOKEN",
        "OP_SERVICE_ACCOUNT_TOKEN",
    ];
    for v in vars {
        s.set(v, CANARY);
    }
    s.set("KEEP_ME", "kept");
    let keep = format!("{},KEEP_ME", vars.join(","));
    let r = s
        .kz(&[
            "run",
            "--blind",
            "--only",
            "API",
            "--keep-env",
            &keep,
            "--",
            "env",
        ])
        .ok()
        .no_canary();
    assert!(r.stdout.contains("KEEP_ME=kept"), "{}", r.stdout);
    for v in vars {
        assert!(!r.stdout.contains(&format!("{v}=")), "{v}: {}", r.stdout);
    }
}

/// Someone else's public key (the example from age's documentation).
const ATTACKER: &str = "age1ql3z7hjy54pw3hyww5ayyfg7zqgvc7w3j2elw8zmrj2kg5sfn9aqmcac8p";

#[test]
fn the_local_store_never_encrypts_to_a_recipient_the_repository_chose() {
    let s = Sandbox::with_config("[secrets]\nMINE = \"local://proj/MINE\"\n");
    // The user's identity exists (created by an ordinary put in the default store).
    s.put("MINE", "mine");
    let identity = s.root.path().join("config/keyzero/identity.txt");
    assert!(identity.exists());
    // The repository's in-tree store, with a planted record: the user's identity, the
    // attacker's recipient.
    s.write(
        ".keyzero.toml",
        "[providers.local]\npath = \"vault/store.age\"\n[secrets]\nK = \"local://proj/K\"\n",
    );
    s.write(
        "vault/store.age.meta",
        &format!(
            "{{\"v\":1,\"identity\":\"{}\",\"recipient\":\"{ATTACKER}\"}}",
            identity.display()
        ),
    );
    let r = s
        .kz_stdin(&["put", "K", "--stdin"], CANARY)
        .code(1)
        .no_canary();
    assert!(
        r.stderr.contains("not the public key of its identity"),
        "{}",
        r.stderr
    );
    assert!(!s.path("vault/store.age").exists());
    // Nor the age provider: `recipients` from the repository needs trust.
    s.write(
        ".keyzero.toml",
        &format!("[providers.age]\nrecipients = [\"{ATTACKER}\"]\n[secrets]\nA = {{ provider = \"age\", ref = \"a.age\" }}\n"),
    );
    let r = s
        .kz_stdin(&["put", "A", "--stdin"], CANARY)
        .code(1)
        .no_canary();
    assert!(r.stderr.contains("option `recipients`"), "{}", r.stderr);
    assert!(!s.path("a.age").exists());
}

#[test]
fn put_never_follows_a_committed_lock_symlink() {
    let s = Sandbox::with_config(
        "[providers.local]\npath = \"vault/store.age\"\n[secrets]\nK = \"local://proj/K\"\n",
    );
    let outside = s.root.path().join("outside.lock");
    std::fs::create_dir_all(s.path("vault")).unwrap();
    std::os::unix::fs::symlink(&outside, s.path("vault/store.age.lock")).unwrap();
    let r = s.kz_stdin(&["put", "K", "--stdin"], "v").code(1);
    assert!(r.stderr.contains("lock file"), "{}", r.stderr);
    assert!(!outside.exists(), "a file was created through the link");
    // Nor is an identity created where the repository says.
    s.write(
        ".keyzero.toml",
        "[providers.local]\npath = \"st/store.age\"\nidentity = \"../outside-id.txt\"\n[secrets]\nK = \"local://proj/K\"\n",
    );
    let r = s.kz_stdin(&["put", "K", "--stdin"], "v").code(1);
    assert!(r.stderr.contains("option `identity`"), "{}", r.stderr);
    assert!(!s.root.path().join("outside-id.txt").exists());
}

#[test]
fn a_subdirectory_named_like_another_project_does_not_get_its_namespace() {
    let s = Sandbox::with_config("[secrets]\nMINE = \"local://proj/MINE\"\n");
    s.kz_stdin(&["put", "MINE", "--stdin"], CANARY).ok();
    // A cloned repository with a directory of the same name.
    let twin = s.root.path().join("clone/services/proj");
    std::fs::create_dir_all(&twin).unwrap();
    std::fs::write(
        twin.join(".keyzero.toml"),
        "[secrets]\nMINE = \"local://proj/MINE\"\n",
    )
    .unwrap();
    let dir = twin.to_str().unwrap();
    let r = s
        .kz(&["--dir", dir, "run", "--", "printenv", "MINE"])
        .code(1)
        .no_canary();
    assert!(r.stderr.contains("belongs to the project"), "{}", r.stderr);
    s.kz_stdin(&["--dir", dir, "put", "MINE", "--stdin"], "overwritten")
        .code(1);
    s.kz(&["--dir", dir, "export"]).code(1).no_canary();
    std::fs::write(twin.join("x.env"), "NEW=x\n").unwrap();
    let env_file = twin.join("x.env");
    let r = s
        .kz(&["--dir", dir, "import", env_file.to_str().unwrap()])
        .code(1);
    assert!(r.stderr.contains("belongs to the project"), "{}", r.stderr);
    // The owner still reads it; trusting the twin after review lifts the rule.
    assert_eq!(
        s.kz(&["run", "--", "printenv", "MINE"]).ok().stdout.trim(),
        CANARY
    );
    s.kz(&["--dir", dir, "allow"]).ok();
    assert_eq!(
        s.kz(&["--dir", dir, "run", "--", "printenv", "MINE"])
            .ok()
            .stdout
            .trim(),
        CANARY
    );
}

/// An untrusted repository cannot send the run's workload identity token to its own server: the
/// `keyzero` provider's `endpoint` (and `token_source`) need `kz allow`; once allowed, the token
/// goes there and a refusal is reported without it.
#[test]
fn keyzero_endpoint_needs_trust_before_any_token_is_sent() {
    let server = EchoServer::start();
    for extra in ["", "token_source = \"env:MY_ID_TOKEN\"\n"] {
        let mut s = Sandbox::with_config(&format!(
            "[providers.team]\ntype = \"keyzero\"\nendpoint = \"{}\"\n{extra}[secrets]\nV = {{ provider = \"team\", ref = \"prod/v\" }}\n",
            server.address()
        ));
        s.set("KEYZERO_TOKEN", CANARY);
        s.set("MY_ID_TOKEN", CANARY);
        let r = s.kz(&["run", "--", "true"]).code(1).no_canary();
        assert!(
            r.stderr.contains("option `endpoint`") && r.stderr.contains("kz allow"),
            "{}",
            r.stderr
        );
        assert!(server.requests().is_empty(), "{:?}", server.requests());
        s.kz(&["allow"]).ok();
        let r = s.kz(&["run", "--", "true"]).code(1).no_canary();
        assert!(r.stderr.contains("refused the token"), "{}", r.stderr);
        let sent = server.requests();
        assert!(
            sent.iter()
                .any(|h| h.starts_with("POST /v1/resolve") && h.contains(CANARY)),
            "{sent:?}"
        );
        server.heads.lock().unwrap().clear();
    }
}
