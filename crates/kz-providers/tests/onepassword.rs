//! The `1password` provider against a STAND-IN `op`.
//!
//! No real 1Password CLI can be installed here (no package, and it needs a 1Password account),
//! so each test writes a stand-in `op` (a Python 3 script) into its temp dir, backed by a JSON
//! "vault" file. The stand-in implements the subset kz uses (`op read`, `op inject`,
//! `op item get/edit/create`, `op whoami`, `op vault get`, `--account`), prints errors the way
//! real `op` does, logs every invocation's argv as a JSON line, and sleeps a configurable delay
//! per invocation so batching is visible.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use std::collections::HashMap;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use kz_config::{LoadRequest, ProviderInstance, load};
use kz_providers::BuildContext;
use kz_providers::onepassword::OpProvider;
use kz_resolve::{ErrorKind, Item, Provider, ProviderError};
use kz_secret::{Resolved, SecretValue};
use serde_json::{Value, json};

const CANARY: &str = "kz-canary-0p7a3c";

#[path = "support/op_standin.rs"]
mod op_standin;
use op_standin::STANDIN_OP;

/// Fails (never skips) when a tool the stand-in needs is missing.
fn require(tool: &str, package: &str) {
    let found = std::process::Command::new("sh")
        .arg("-c")
        .arg(format!("command -v {tool}"))
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false);
    assert!(
        found,
        "`{tool}` is needed by these tests: install it (apt-get install {package})"
    );
}

/// A temp project with a stand-in `op` under `bin/op`, its state file and its argv log.
struct Project {
    dir: tempfile::TempDir,
    runtime: tempfile::TempDir,
}

fn field(label: &str, value: &str) -> Value {
    json!({"id": label, "label": label, "type": "CONCEALED", "value": value})
}

impl Project {
    fn new() -> Self {
        require("python3", "python3");
        let p = Self {
            dir: tempfile::tempdir().unwrap(),
            runtime: tempfile::tempdir().unwrap(),
        };
        let script = STANDIN_OP
            .replace(
                "{STATE}",
                &format!("{:?}", p.state_path().to_str().unwrap()),
            )
            .replace("{LOG}", &format!("{:?}", p.log_path().to_str().unwrap()));
        let bin = p.path().join("bin");
        std::fs::create_dir_all(&bin).unwrap();
        std::fs::write(bin.join("op"), script).unwrap();
        std::fs::set_permissions(bin.join("op"), std::fs::Permissions::from_mode(0o755)).unwrap();
        p.set_state(json!({
            "signed_in": true,
            "delay": 0,
            "vaults": [{"id": "v1", "name": "Dev", "items": [
                {"id": "i-db", "title": "db", "category": "LOGIN",
                 "sections": [{"id": "s-prod", "label": "Prod"}],
                 "fields": [
                    field("username", "app"),
                    field("password", CANARY),
                    {"id": "f-pp", "label": "password", "type": "CONCEALED", "value": "prod-pw",
                     "section": {"id": "s-prod", "label": "Prod"}},
                 ]},
                {"id": "i-api", "title": "api", "category": "API_CREDENTIAL",
                 "fields": [field("credential", "tok-123"), field("json", r#"{"user":"u","pass":"kz-canary-0p7a3c"}"#)]},
            ]}],
        }));
        p
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }

    fn state_path(&self) -> PathBuf {
        self.path().join("state.json")
    }

    fn log_path(&self) -> PathBuf {
        self.path().join("op-calls.jsonl")
    }

    fn state(&self) -> Value {
        serde_json::from_str(&std::fs::read_to_string(self.state_path()).unwrap()).unwrap()
    }

    fn set_state(&self, state: Value) {
        std::fs::write(self.state_path(), state.to_string()).unwrap();
    }

    fn edit_state(&self, f: impl FnOnce(&mut Value)) {
        let mut s = self.state();
        f(&mut s);
        self.set_state(s);
    }

    /// Adds fields to the `api` item.
    fn add_fields(&self, fields: &[(&str, &str)]) {
        self.edit_state(|s| {
            let items = s["vaults"][0]["items"].as_array_mut().unwrap();
            let api = items.iter_mut().find(|i| i["title"] == "api").unwrap();
            for (l, v) in fields {
                api["fields"].as_array_mut().unwrap().push(field(l, v));
            }
        });
    }

    /// argv of every stand-in `op` invocation so far.
    fn calls(&self) -> Vec<Vec<String>> {
        std::fs::read_to_string(self.log_path())
            .unwrap_or_default()
            .lines()
            .map(|l| {
                let v: Value = serde_json::from_str(l).unwrap();
                v["argv"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|a| a.as_str().unwrap().to_string())
                    .collect()
            })
            .collect()
    }

    fn ctx(&self) -> BuildContext {
        let env: HashMap<String, String> = HashMap::new();
        BuildContext {
            home: Some(self.path().join("home")),
            config_home: self.path().join("config"),
            data_home: self.path().join("data"),
            runtime_dir: Some(self.runtime.path().to_path_buf()),
            project_dir: self.path().to_path_buf(),
            getenv: Arc::new(move |k| env.get(k).cloned()),
            verbose: false,
            interactive: false,
        }
    }

    /// A `1password` instance; `extra` is more TOML lines for the provider table.
    fn instance(&self, extra: &str) -> ProviderInstance {
        let toml = format!("[providers.op]\ntype = \"1password\"\n{extra}\n");
        std::fs::write(self.path().join(".keyzero.toml"), toml).unwrap();
        let loaded = load(&LoadRequest {
            start_dir: self.path(),
            config_file: None,
            env_flag: None,
            global_file: None,
            getenv: &|_| None,
        });
        let config = loaded
            .config
            .unwrap_or_else(|| panic!("{:?}", loaded.diagnostics));
        config.provider("op").unwrap().clone()
    }

    /// The provider running the stand-in `op` (by a project-relative `op_path`).
    fn provider(&self, extra: &str) -> OpProvider {
        let opts = format!("op_path = \"bin/op\"\n{extra}");
        OpProvider::new(&self.instance(&opts), &self.ctx()).unwrap()
    }
}

fn item(reference: &str) -> Item {
    Item {
        name: "SECRET".to_string(),
        reference: reference.to_string(),
        field: None,
        params: vec![],
    }
}

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

fn resolve(p: &dyn Provider, items: &[Item]) -> Vec<Result<Resolved, ProviderError>> {
    let out = rt().block_on(p.resolve(items));
    assert_eq!(out.len(), items.len());
    out
}

fn value(r: &Result<Resolved, ProviderError>) -> String {
    match r {
        Ok(Resolved::Single(v)) => v.expose_str().unwrap().to_string(),
        Ok(other) => panic!("unexpected {other:?}"),
        Err(e) => panic!("error: {e} ({:?})", e.help),
    }
}

fn assert_no_canary(e: &ProviderError) {
    let shown = format!("{e} {e:?} {:?}", e.help);
    assert!(!shown.contains(CANARY), "{shown}");
}

/// The error, checked for the canary in every form it can be shown.
fn error(r: &Result<Resolved, ProviderError>) -> ProviderError {
    let e = r.as_ref().unwrap_err().clone();
    assert_no_canary(&e);
    e
}

fn write(p: &dyn Provider, it: &Item, v: &str) -> Result<(), ProviderError> {
    let r = rt().block_on(p.write(it, &SecretValue::from_str_copy(v)));
    if let Err(e) = &r {
        assert_no_canary(e);
    }
    r
}

fn assert_no_value_in_argv(p: &Project, value: &str) {
    for argv in p.calls() {
        for a in argv {
            assert!(!a.contains(value), "a value was passed in argv: {a}");
        }
    }
}

#[test]
fn stand_in_op_single_read_uses_op_read() {
    let p = Project::new();
    let prov = p.provider("");
    assert_eq!(prov.max_batch(), 100);
    assert!(!prov.handles_field());
    let out = resolve(&prov, &[item("op://Dev/db/password")]);
    assert_eq!(value(&out[0]), CANARY);
    assert_eq!(p.calls(), vec![vec!["read", "op://Dev/db/password"]]);

    // A value's own trailing newline survives (op adds one; kz removes exactly one).
    p.add_fields(&[("nl", "ends with newline\n")]);
    let out = resolve(&prov, &[item("op://Dev/api/nl")]);
    assert_eq!(value(&out[0]), "ends with newline\n");
}

#[test]
fn stand_in_op_batch_is_one_inject_call_even_when_op_is_slow() {
    let p = Project::new();
    let tricky: Vec<(String, String)> = (0..20)
        .map(|i| {
            let v = match i % 5 {
                0 => format!("line one {i}\nline two\n\n"),
                1 => format!("quotes \"{i}\" and 'single' and `back`"),
                2 => format!("braces }}}} {{{{ op://Dev/db/password }}}} {i}"),
                3 => format!("unicode é ✓ 秘密 {i}"),
                _ => String::new(),
            };
            (format!("f{i}"), v)
        })
        .collect();
    p.add_fields(
        &tricky
            .iter()
            .map(|(l, v)| (l.as_str(), v.as_str()))
            .collect::<Vec<_>>(),
    );
    p.edit_state(|s| s["delay"] = json!(1.0));
    let prov = p.provider("");
    let items: Vec<Item> = tricky
        .iter()
        .map(|(l, _)| item(&format!("op://Dev/api/{l}")))
        .collect();

    let started = Instant::now();
    let out = resolve(&prov, &items);
    let elapsed = started.elapsed();

    for ((_, want), got) in tricky.iter().zip(&out) {
        assert_eq!(&value(got), want);
    }
    let calls = p.calls();
    assert_eq!(
        calls,
        vec![vec!["inject"]],
        "one op invocation for 20 secrets"
    );
    assert!(
        elapsed < Duration::from_secs(3),
        "20 secrets took {elapsed:?}: each op call sleeps 1 s, so they were not batched"
    );
}

#[test]
fn stand_in_op_section_reference_picks_the_sectioned_field() {
    let p = Project::new();
    let prov = p.provider("");
    let out = resolve(
        &prov,
        &[
            item("op://Dev/db/Prod/password"),
            item("op://Dev/db/s-prod/password"),
            item("op://Dev/db/password"),
        ],
    );
    assert_eq!(value(&out[0]), "prod-pw");
    assert_eq!(value(&out[1]), "prod-pw");
    assert_eq!(value(&out[2]), CANARY);
    assert_eq!(p.calls().len(), 1);
}

#[test]
fn stand_in_op_missing_item_or_field_is_not_found() {
    let p = Project::new();
    let prov = p.provider("");
    for (r, said) in [
        (
            "op://Dev/nope/password",
            "\"nope\" isn't an item in the \"Dev\" vault",
        ),
        ("op://Dev/db/nofield", "\"nofield\" isn't a field"),
        ("op://Nope/db/password", "\"Nope\" isn't a vault"),
    ] {
        let e = error(&resolve(&prov, &[item(r)])[0]);
        assert_eq!(e.kind, ErrorKind::NotFound, "{e}");
        assert!(e.message.contains(r) && e.message.contains(said), "{e}");
        assert!(!e.message.contains("[ERROR]"), "{e}");
        assert!(e.help.unwrap().contains("op item get"));
    }
}

#[test]
fn stand_in_op_batch_with_one_missing_ref_falls_back_to_reads() {
    let p = Project::new();
    let prov = p.provider("");
    let items = [
        item("op://Dev/db/password"),
        item("op://Dev/ghost/password"),
        item("op://Dev/api/credential"),
        item("op://Dev/db/Prod/password"),
    ];
    let out = resolve(&prov, &items);
    assert_eq!(value(&out[0]), CANARY);
    let e = error(&out[1]);
    assert_eq!(e.kind, ErrorKind::NotFound);
    assert!(e.message.contains("op://Dev/ghost/password"), "{e}");
    assert_eq!(value(&out[2]), "tok-123");
    assert_eq!(value(&out[3]), "prod-pw");

    let calls = p.calls();
    assert_eq!(calls[0], vec!["inject"]);
    let mut reads: Vec<&str> = calls[1..]
        .iter()
        .map(|c| {
            assert_eq!(c[0], "read");
            c[1].as_str()
        })
        .collect();
    reads.sort_unstable();
    let mut want: Vec<&str> = items.iter().map(|i| i.reference.as_str()).collect();
    want.sort_unstable();
    assert_eq!(
        reads, want,
        "each item read on its own after the batch failed"
    );
}

#[test]
fn stand_in_op_not_signed_in_is_auth_for_every_item_without_fallback() {
    let p = Project::new();
    p.edit_state(|s| s["signed_in"] = json!(false));
    let prov = p.provider("");
    let out = resolve(
        &prov,
        &[
            item("op://Dev/db/password"),
            item("op://Dev/api/credential"),
        ],
    );
    for r in &out {
        let e = error(r);
        assert_eq!(e.kind, ErrorKind::Auth, "{e}");
        assert!(e.message.contains("not currently signed in"), "{e}");
        let help = e.help.unwrap();
        assert!(
            help.contains("op signin")
                && help.contains("desktop app")
                && help.contains("OP_SERVICE_ACCOUNT_TOKEN"),
            "{help}"
        );
    }
    assert_eq!(
        p.calls().len(),
        1,
        "no per-item fallback for a sign-in failure"
    );

    let e = rt().block_on(prov.check()).unwrap_err();
    assert_eq!(e.kind, ErrorKind::Auth);
    assert_eq!(p.calls().last().unwrap(), &vec!["whoami"]);
}

#[test]
fn stand_in_op_account_flag_is_passed_to_every_call() {
    let p = Project::new();
    p.edit_state(|s| s["accounts"] = json!(["team.1password.com"]));
    let prov = p.provider("account = \"team.1password.com\"");
    let out = resolve(&prov, &[item("op://Dev/db/password")]);
    assert_eq!(value(&out[0]), CANARY);
    let out = resolve(
        &prov,
        &[
            item("op://Dev/db/password"),
            item("op://Dev/api/credential"),
        ],
    );
    assert_eq!(value(&out[1]), "tok-123");
    rt().block_on(prov.check()).unwrap();
    write(&prov, &item("op://Dev/api/credential"), "new-tok").unwrap();
    let calls = p.calls();
    assert_eq!(calls.len(), 5);
    for c in &calls {
        let at = c.iter().position(|a| a == "--account").unwrap();
        assert_eq!(c[at + 1], "team.1password.com");
    }

    // An account op is not signed in to: Auth, naming the account in the help.
    let prov = p.provider("account = \"other.1password.com\"");
    let e = error(&resolve(&prov, &[item("op://Dev/db/password")])[0]);
    assert_eq!(e.kind, ErrorKind::Auth, "{e}");
    assert!(e.help.unwrap().contains("other.1password.com"));
}

#[test]
fn stand_in_op_missing_binary_is_a_config_error_with_install_help() {
    let p = Project::new();
    for op_path in ["kz-no-such-op-anywhere", "bin/not-here/op"] {
        let prov =
            OpProvider::new(&p.instance(&format!("op_path = \"{op_path}\"")), &p.ctx()).unwrap();
        for items in [
            vec![item("op://Dev/db/password")],
            vec![
                item("op://Dev/db/password"),
                item("op://Dev/api/credential"),
            ],
        ] {
            for r in resolve(&prov, &items) {
                let e = error(&r);
                assert_eq!(e.kind, ErrorKind::Config, "{e}");
                assert!(e.message.contains(op_path), "{e}");
                let help = e.help.unwrap();
                assert!(
                    help.contains("install the 1Password CLI") && help.contains("op_path"),
                    "{help}"
                );
            }
        }
        let e = rt().block_on(prov.check()).unwrap_err();
        assert_eq!(e.kind, ErrorKind::Config);
        let e = write(&prov, &item("op://Dev/db/password"), "x").unwrap_err();
        assert_eq!(e.kind, ErrorKind::Config);
    }
}

#[test]
fn stand_in_op_default_op_path_is_op_on_path() {
    let p = Project::new();
    let prov = OpProvider::new(&p.instance(""), &p.ctx()).unwrap();
    let d = prov.describe();
    assert_eq!(d.type_name, "1password");
    assert_eq!(d.instance, "op");
    assert!(
        d.details.iter().any(|(k, v)| k == "op path" && v == "op"),
        "{:?}",
        d.details
    );
}

#[test]
fn stand_in_op_bad_refs_are_rejected_before_op_runs() {
    let p = Project::new();
    let prov = p.provider("");
    let bad = [
        "Dev/db/password",
        "op://Dev/db",
        "op://Dev/db/a/b/c",
        "op://Dev//password",
        "op://Dev/{{x}}/password",
        "op://Dev/db/pass\nword",
    ];
    let items: Vec<Item> = bad.iter().map(|r| item(r)).collect();
    for (r, out) in bad.iter().zip(resolve(&prov, &items)) {
        let e = error(&out);
        assert_eq!(e.kind, ErrorKind::BadReference, "{r}: {e}");
        assert!(e.help.unwrap().contains("op://VAULT/ITEM"));
    }
    let e = write(&prov, &item("op://Dev/db"), CANARY).unwrap_err();
    assert_eq!(e.kind, ErrorKind::BadReference);
    assert!(
        p.calls().is_empty(),
        "op ran for a bad reference: {:?}",
        p.calls()
    );

    // Good refs in the same batch still resolve.
    let out = resolve(
        &prov,
        &[item("op://Dev/db"), item("op://Dev/api/credential")],
    );
    assert_eq!(error(&out[0]).kind, ErrorKind::BadReference);
    assert_eq!(value(&out[1]), "tok-123");
    assert_eq!(p.calls(), vec![vec!["read", "op://Dev/api/credential"]]);
}

#[test]
fn stand_in_op_write_updates_an_existing_field_via_stdin_only() {
    let p = Project::new();
    let prov = p.provider("");
    let new = format!("new \"{CANARY}\"\nline two }}}} é");
    write(&prov, &item("op://Dev/db/password"), &new).unwrap();
    assert_no_value_in_argv(&p, &new);
    assert_no_value_in_argv(&p, CANARY);
    let calls = p.calls();
    assert_eq!(calls.len(), 2, "{calls:?}");
    assert_eq!(calls[0][..3], ["item", "get", "db"]);
    assert!(calls[0].contains(&"--reveal".to_string()));
    assert_eq!(calls[1], vec!["item", "edit", "i-db", "--vault", "Dev"]);

    let out = resolve(
        &prov,
        &[
            item("op://Dev/db/password"),
            item("op://Dev/db/username"),
            item("op://Dev/db/Prod/password"),
        ],
    );
    assert_eq!(value(&out[0]), new);
    assert_eq!(value(&out[1]), "app", "other fields are kept");
    assert_eq!(
        value(&out[2]),
        "prod-pw",
        "the sectioned field is untouched"
    );

    // A sectioned field, and a new field on an existing item (in a new section).
    write(&prov, &item("op://Dev/db/Prod/password"), "prod-2").unwrap();
    write(&prov, &item("op://Dev/db/Staging/token"), "stage-tok").unwrap();
    let out = resolve(
        &prov,
        &[
            item("op://Dev/db/Prod/password"),
            item("op://Dev/db/Staging/token"),
            item("op://Dev/db/password"),
        ],
    );
    assert_eq!(value(&out[0]), "prod-2");
    assert_eq!(value(&out[1]), "stage-tok");
    assert_eq!(value(&out[2]), new);
    assert_no_value_in_argv(&p, "prod-2");
    assert_no_value_in_argv(&p, "stage-tok");
    assert_eq!(p.state()["vaults"][0]["items"].as_array().unwrap().len(), 2);
    assert_eq!(
        std::fs::read_dir(p.runtime.path()).unwrap().count(),
        0,
        "no temp file is left in the runtime dir"
    );
}

#[test]
fn stand_in_op_write_creates_a_missing_item_via_stdin_only() {
    let p = Project::new();
    let prov = p.provider("");
    write(&prov, &item("op://Dev/stripe/credential"), "sk-secret-1").unwrap();
    write(&prov, &item("op://Dev/smtp/Prod/password"), "smtp-secret-2").unwrap();
    write(&prov, &item("op://Dev/plain/password"), "plain-secret-3").unwrap();
    for v in ["sk-secret-1", "smtp-secret-2", "plain-secret-3"] {
        assert_no_value_in_argv(&p, v);
    }
    let creates: Vec<_> = p
        .calls()
        .into_iter()
        .filter(|c| c[..2] == ["item", "create"])
        .collect();
    assert_eq!(creates.len(), 3);
    assert_eq!(creates[0], vec!["item", "create", "-", "--vault", "Dev"]);

    let out = resolve(
        &prov,
        &[
            item("op://Dev/stripe/credential"),
            item("op://Dev/smtp/Prod/password"),
            item("op://Dev/plain/password"),
        ],
    );
    assert_eq!(value(&out[0]), "sk-secret-1");
    assert_eq!(value(&out[1]), "smtp-secret-2");
    assert_eq!(value(&out[2]), "plain-secret-3");
    let items = p.state()["vaults"][0]["items"].clone();
    let stripe = items
        .as_array()
        .unwrap()
        .iter()
        .find(|i| i["title"] == "stripe")
        .unwrap();
    assert_eq!(stripe["fields"][0]["type"], "CONCEALED");
    assert_eq!(std::fs::read_dir(p.runtime.path()).unwrap().count(), 0);
}

#[test]
fn stand_in_op_write_errors() {
    let p = Project::new();
    let prov = p.provider("");
    // Into a vault that does not exist: op's own message, never the value.
    let e = write(&prov, &item("op://Nope/x/password"), CANARY).unwrap_err();
    assert_eq!(e.kind, ErrorKind::NotFound, "{e}");
    assert!(e.message.contains("\"Nope\" isn't a vault"), "{e}");

    let mut with_field = item("op://Dev/api/json");
    with_field.field = Some("user".into());
    let e = write(&prov, &with_field, "x").unwrap_err();
    assert_eq!(e.kind, ErrorKind::Unsupported);

    let e = write(&prov, &item("op://Dev/api/otp?attribute=otp"), "x").unwrap_err();
    assert_eq!(e.kind, ErrorKind::BadReference);

    let e = rt()
        .block_on(prov.write(
            &item("op://Dev/api/credential"),
            &SecretValue::from_bytes(vec![0xff, 0xfe]),
        ))
        .unwrap_err();
    assert_eq!(e.kind, ErrorKind::Unsupported);

    p.edit_state(|s| s["signed_in"] = json!(false));
    let e = write(&prov, &item("op://Dev/db/password"), CANARY).unwrap_err();
    assert_eq!(e.kind, ErrorKind::Auth, "{e}");
    assert_no_value_in_argv(&p, CANARY);
}

#[test]
fn stand_in_op_field_picking_is_left_to_the_engine() {
    // `handles_field` is false: the provider returns the field's whole value (the engine picks
    // JSON members, listing keys and never values).
    let p = Project::new();
    let prov = p.provider("");
    let mut it = item("op://Dev/api/json");
    it.field = Some("nope".into());
    let out = resolve(&prov, &[it]);
    let Ok(Resolved::Single(v)) = &out[0] else {
        panic!()
    };
    let e = kz_resolve::json_field(v, "nope").unwrap_err();
    assert_eq!(e.kind, ErrorKind::Field);
    assert_no_canary(&e);
    assert!(e.help.as_deref().unwrap().contains("user"));
}

#[test]
fn stand_in_op_slow_op_times_out() {
    let p = Project::new();
    p.edit_state(|s| s["delay"] = json!(30));
    let prov = p.provider("timeout = \"1s\"");
    let started = Instant::now();
    let out = resolve(
        &prov,
        &[
            item("op://Dev/db/password"),
            item("op://Dev/api/credential"),
        ],
    );
    assert!(started.elapsed() < Duration::from_secs(10));
    for r in &out {
        assert_eq!(error(r).kind, ErrorKind::Timeout);
    }
    assert_eq!(p.calls().len(), 1, "a timeout is not retried item by item");
}

#[test]
fn stand_in_op_check_and_describe() {
    let p = Project::new();
    let prov = p.provider("account = \"my.1password.com\"\nvault = \"Dev\"");
    let d = prov.describe();
    let details: HashMap<_, _> = d.details.iter().cloned().collect();
    assert!(details["op path"].ends_with("bin/op"), "{details:?}");
    assert!(Path::new(&details["op path"]).is_absolute());
    assert_eq!(details["account"], "my.1password.com");
    assert_eq!(details["vault"], "Dev");
    rt().block_on(prov.check()).unwrap();
    let calls = p.calls();
    assert_eq!(calls[0][0], "whoami");
    assert_eq!(calls[1][..3], ["vault", "get", "Dev"]);

    let prov = p.provider("vault = \"Missing\"");
    let e = rt().block_on(prov.check()).unwrap_err();
    assert_eq!(e.kind, ErrorKind::Config, "{e}");
    assert!(e.message.contains("Missing"), "{e}");
    assert!(e.help.unwrap().contains("`vault`"));
}
