//! The `exec` provider against real plugin scripts (python3 and bash).
// Test helpers may unwrap and panic: a panic here is a failed assertion (clippy.toml's
// `allow-*-in-tests` covers `#[test]` functions only, not their helpers).
#![allow(clippy::unwrap_used, clippy::panic, clippy::indexing_slicing)]

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use kz_config::{LoadRequest, ProviderInstance, load};
use kz_providers::BuildContext;
use kz_providers::exec::ExecProvider;
use kz_resolve::{ErrorKind, Item, Provider, ProviderError};
use kz_secret::{Resolved, SecretValue};

const CANARY: &str = "kz-canary-5d1e7b";

/// Fails (never skips) when a tool the plugins need is missing.
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

struct Project {
    dir: tempfile::TempDir,
}

impl Project {
    fn new() -> Self {
        require("python3", "python3");
        require("bash", "bash");
        Self {
            dir: tempfile::tempdir().unwrap(),
        }
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }

    /// Writes an executable script under `plugins/`.
    fn script(&self, name: &str, body: &str) -> PathBuf {
        let dir = self.path().join("plugins");
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join(name);
        std::fs::write(&path, body).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
        path
    }

    fn ctx(&self, verbose: bool) -> BuildContext {
        BuildContext {
            home: Some(self.path().join("home")),
            config_home: self.path().join("config"),
            data_home: self.path().join("data"),
            runtime_dir: None,
            project_dir: self.path().to_path_buf(),
            getenv: Arc::new(|_| None),
            verbose,
            interactive: false,
        }
    }

    fn instance(&self, command: &[&str]) -> ProviderInstance {
        let argv: Vec<String> = command.iter().map(|a| format!("{a:?}")).collect();
        let toml = format!(
            "[providers.plug]\ntype = \"exec\"\ncommand = [{}]\n",
            argv.join(", ")
        );
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
        config.provider("plug").unwrap().clone()
    }

    fn provider(&self, command: &[&str]) -> ExecProvider {
        ExecProvider::new(&self.instance(command), &self.ctx(false)).unwrap()
    }
}

fn item(name: &str, reference: &str) -> Item {
    Item {
        name: name.to_string(),
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
        other => panic!("{other:?}"),
    }
}

/// The error, checked for the canary in every form it can be shown.
fn error(r: &Result<Resolved, ProviderError>) -> ProviderError {
    let e = r.as_ref().unwrap_err().clone();
    assert_no_canary(&e);
    e
}

fn assert_no_canary(e: &ProviderError) {
    let shown = format!("{e} {e:?} {:?}", e.help);
    assert!(!shown.contains(CANARY), "{shown}");
}

/// A protocol plugin: counts invocations in argv[1], keeps the last request in argv[2], and
/// answers by reference.
const BATCH_PLUGIN: &str = r#"#!/usr/bin/env python3
import json, sys
req = json.load(sys.stdin)
with open(sys.argv[1], "a") as f:
    f.write("call\n")
with open(sys.argv[2], "w") as f:
    json.dump(req, f)
results = {}
for it in req["items"]:
    ref = it["ref"]
    if ref == "missing":
        results[it["id"]] = {"error": "no such item", "not_found": True}
    elif ref == "broken":
        results[it["id"]] = {"error": "backend exploded"}
    elif ref == "params":
        results[it["id"]] = {"value": json.dumps(it["params"], sort_keys=True)}
    elif ref == "skip":
        pass
    else:
        results[it["id"]] = {"value": "value-of-" + ref}
print(json.dumps({"results": results}))
"#;

#[test]
fn a_batch_is_one_invocation_in_order() {
    let p = Project::new();
    p.script("batch.py", BATCH_PLUGIN);
    let counter = p.path().join("calls");
    let request = p.path().join("request.json");
    let prov = p.provider(&[
        "./plugins/batch.py",
        counter.to_str().unwrap(),
        request.to_str().unwrap(),
    ]);
    assert_eq!(prov.max_batch(), 256);
    assert!(!prov.handles_field());

    let items = [item("A", "a/1"), item("B", "b/2"), item("C", "c/3")];
    let out = resolve(&prov, &items);
    assert_eq!(value(&out[0]), "value-of-a/1");
    assert_eq!(value(&out[1]), "value-of-b/2");
    assert_eq!(value(&out[2]), "value-of-c/3");
    assert_eq!(
        std::fs::read_to_string(&counter).unwrap().lines().count(),
        1
    );

    let req: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&request).unwrap()).unwrap();
    assert_eq!(req["v"], 1);
    assert_eq!(req["op"], "resolve");
    assert_eq!(req["items"][1]["id"], "B");
    assert_eq!(req["items"][1]["ref"], "b/2");
    assert_eq!(req["items"][1]["params"], serde_json::json!({}));
}

#[test]
fn params_are_passed_through() {
    let p = Project::new();
    p.script("batch.py", BATCH_PLUGIN);
    let counter = p.path().join("calls");
    let request = p.path().join("request.json");
    let prov = p.provider(&[
        "plugins/batch.py",
        counter.to_str().unwrap(),
        request.to_str().unwrap(),
    ]);
    let mut it = item("A", "params");
    it.params = vec![("vault".into(), "Private".into()), ("n".into(), "3".into())];
    let out = resolve(&prov, &[it]);
    assert_eq!(value(&out[0]), r#"{"n": "3", "vault": "Private"}"#);
}

#[test]
fn not_found_errors_and_missing_ids_map_per_item() {
    let p = Project::new();
    p.script("batch.py", BATCH_PLUGIN);
    let counter = p.path().join("calls");
    let request = p.path().join("request.json");
    let prov = p.provider(&[
        "./plugins/batch.py",
        counter.to_str().unwrap(),
        request.to_str().unwrap(),
    ]);
    let items = [
        item("A", "missing"),
        item("B", "ok"),
        item("C", "broken"),
        item("D", "skip"),
    ];
    let out = resolve(&prov, &items);

    let e = error(&out[0]);
    assert_eq!(e.kind, ErrorKind::NotFound);
    assert!(
        e.message.contains("`missing`") && e.message.contains("no such item"),
        "{e}"
    );
    assert_eq!(value(&out[1]), "value-of-ok");
    let e = error(&out[2]);
    assert_eq!(e.kind, ErrorKind::Backend);
    assert!(
        e.message.contains("backend exploded") && e.message.contains("./plugins/batch.py"),
        "{e}"
    );
    let e = error(&out[3]);
    assert_eq!(e.kind, ErrorKind::Backend);
    assert!(e.message.contains("no result for `D`"), "{e}");
}

#[test]
fn a_single_item_may_be_answered_with_a_plain_value() {
    let p = Project::new();
    p.script(
        "plain.sh",
        "#!/bin/bash\ncat >/dev/null\nprintf 'plain value\\n\\n'\n",
    );
    let prov = p.provider(&["./plugins/plain.sh"]);
    let out = resolve(&prov, &[item("A", "x")]);
    // Exactly one trailing newline is removed.
    assert_eq!(value(&out[0]), "plain value\n");

    // A plugin that never reads its stdin is fine too.
    p.script("noread.sh", "#!/bin/bash\necho -n 'v'\n");
    let prov = p.provider(&["./plugins/noread.sh"]);
    assert_eq!(value(&resolve(&prov, &[item("A", "x")])[0]), "v");

    // JSON that is not a protocol answer is a plain value.
    p.script(
        "json.sh",
        "#!/bin/bash\ncat >/dev/null\necho '{\"user\":\"u\",\"password\":\"p\"}'\n",
    );
    let prov = p.provider(&["./plugins/json.sh"]);
    assert_eq!(
        value(&resolve(&prov, &[item("A", "x")])[0]),
        r#"{"user":"u","password":"p"}"#
    );

    // ... but not for two items.
    let out = resolve(&prov, &[item("A", "x"), item("B", "y")]);
    let e = error(&out[0]);
    assert_eq!(e.kind, ErrorKind::Backend);
    assert!(e.message.contains("malformed"), "{e}");
    assert!(e.message.contains("./plugins/json.sh"), "{e}");
}

#[test]
fn the_program_is_found_on_path_or_relative_to_the_project() {
    let p = Project::new();
    // PATH lookup: `sh` with arguments.
    let prov = p.provider(&["sh", "-c", "cat >/dev/null; echo from-path"]);
    assert_eq!(value(&resolve(&prov, &[item("A", "x")])[0]), "from-path");

    // The plugin runs in the project directory.
    let prov = p.provider(&["sh", "-c", "cat >/dev/null; pwd"]);
    let pwd = PathBuf::from(value(&resolve(&prov, &[item("A", "x")])[0]));
    assert_eq!(
        pwd.canonicalize().unwrap(),
        p.path().canonicalize().unwrap()
    );

    let prov = p.provider(&["./plugins/does-not-exist"]);
    let e = error(&resolve(&prov, &[item("A", "x")])[0]);
    assert_eq!(e.kind, ErrorKind::Config);
    assert!(e.message.contains("not found"), "{e}");
    assert!(e.help.unwrap().contains("plugins/does-not-exist"));

    let prov = p.provider(&["kz-no-such-plugin-anywhere"]);
    let e = error(&resolve(&prov, &[item("A", "x")])[0]);
    assert_eq!(e.kind, ErrorKind::Config);
    assert!(e.help.unwrap().contains("PATH"));

    let path = p.script("noexec.sh", "#!/bin/bash\necho x\n");
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
    let prov = p.provider(&["./plugins/noexec.sh"]);
    let e = error(&resolve(&prov, &[item("A", "x")])[0]);
    assert_eq!(e.kind, ErrorKind::Config);
    assert!(e.help.unwrap().contains("chmod +x"));
}

#[test]
fn an_empty_command_is_a_config_error() {
    let p = Project::new();
    let e = ExecProvider::new(&p.instance(&[]), &p.ctx(false)).unwrap_err();
    assert_eq!(e.kind, ErrorKind::Config);
    assert!(e.help.unwrap().contains("command"));
}

#[test]
fn a_non_zero_exit_names_the_program_and_code_and_masks_values() {
    let p = Project::new();
    p.script(
        "fail.sh",
        &format!(
            "#!/bin/bash\ncat >/dev/null\necho '{{\"results\":{{\"A\":{{\"value\":\"{CANARY}\"}}}}}}'\necho 'boom: leaked {CANARY} here' >&2\necho 'second line' >&2\nexit 3\n"
        ),
    );
    let prov = p.provider(&["./plugins/fail.sh"]);
    let out = resolve(&prov, &[item("A", "x"), item("B", "y")]);
    for r in &out {
        let e = error(r);
        assert_eq!(e.kind, ErrorKind::Backend);
        assert!(e.message.contains("./plugins/fail.sh"), "{e}");
        assert!(e.message.contains("status 3"), "{e}");
        assert!(e.message.contains("boom: leaked **** here"), "{e}");
        assert!(!e.message.contains("second line"), "{e}");
    }

    // A plain value printed before failing is masked as well.
    p.script(
        "fail-plain.sh",
        &format!("#!/bin/bash\ncat >/dev/null\necho '{CANARY}'\necho \"cannot finish: {CANARY}\" >&2\nexit 1\n"),
    );
    let prov = p.provider(&["./plugins/fail-plain.sh"]);
    let e = error(&resolve(&prov, &[item("A", "x")])[0]);
    assert!(
        e.message.contains("status 1") && e.message.contains("cannot finish: ****"),
        "{e}"
    );

    // Verbose mode prints the plugin's stderr (masked) and still fails cleanly.
    let verbose =
        ExecProvider::new(&p.instance(&["./plugins/fail-plain.sh"]), &p.ctx(true)).unwrap();
    let e = error(&resolve(&verbose, &[item("A", "x")])[0]);
    assert!(e.help.unwrap().contains("above"));
}

#[test]
fn plugin_error_messages_are_masked_with_the_batch_values() {
    let p = Project::new();
    p.script(
        "echo-err.py",
        &format!(
            "#!/usr/bin/env python3\nimport json, sys\njson.load(sys.stdin)\nprint(json.dumps({{'results': {{'A': {{'value': '{CANARY}'}}, 'B': {{'error': 'differs from {CANARY}'}}}}}}))\n"
        ),
    );
    let prov = p.provider(&["./plugins/echo-err.py"]);
    let out = resolve(&prov, &[item("A", "a"), item("B", "b")]);
    assert_eq!(value(&out[0]), CANARY);
    let e = error(&out[1]);
    assert!(e.message.contains("differs from ****"), "{e}");
}

#[test]
fn malformed_output_is_a_backend_error_naming_the_program() {
    let p = Project::new();
    for (name, body) in [
        (
            "garbage.sh",
            "#!/bin/bash\ncat >/dev/null\necho 'this is not json'\n",
        ),
        (
            "results-not-map.sh",
            "#!/bin/bash\ncat >/dev/null\necho '{\"results\": 5}'\n",
        ),
        (
            "number-value.sh",
            "#!/bin/bash\ncat >/dev/null\necho '{\"results\": {\"A\": {\"value\": 5}}}'\n",
        ),
        (
            "empty-result.sh",
            "#!/bin/bash\ncat >/dev/null\necho '{\"results\": {\"A\": {}, \"B\": {}}}'\n",
        ),
    ] {
        p.script(name, body);
        let prov = p.provider(&[&format!("./plugins/{name}")]);
        let out = resolve(&prov, &[item("A", "a"), item("B", "b")]);
        for r in &out {
            let e = error(r);
            assert_eq!(e.kind, ErrorKind::Backend, "{name}: {e}");
            assert!(e.message.contains(name), "{name}: {e}");
            assert!(e.message.contains("malformed"), "{name}: {e}");
        }
    }
    // With one item, a broken `results` object is still malformed, not a plain value.
    let prov = p.provider(&["./plugins/results-not-map.sh"]);
    let e = error(&resolve(&prov, &[item("A", "a")])[0]);
    assert!(e.message.contains("malformed"), "{e}");
}

#[test]
fn a_batch_wide_error_applies_to_every_item() {
    let p = Project::new();
    p.script(
        "down.sh",
        "#!/bin/bash\ncat >/dev/null\necho '{\"error\":\"vault is sealed\"}'\n",
    );
    let prov = p.provider(&["./plugins/down.sh"]);
    let out = resolve(&prov, &[item("A", "a"), item("B", "b")]);
    for r in &out {
        let e = error(r);
        assert_eq!(e.kind, ErrorKind::Backend);
        assert!(e.message.contains("vault is sealed"), "{e}");
    }
    p.script(
        "gone.sh",
        "#!/bin/bash\ncat >/dev/null\necho '{\"error\":\"gone\",\"not_found\":true}'\n",
    );
    let prov = p.provider(&["./plugins/gone.sh"]);
    assert_eq!(
        error(&resolve(&prov, &[item("A", "a")])[0]).kind,
        ErrorKind::NotFound
    );
}

/// A plugin that stores writes in argv[1] (one JSON line per write).
const WRITE_PLUGIN: &str = r#"#!/usr/bin/env python3
import json, sys
req = json.load(sys.stdin)
if req["op"] != "write":
    print(json.dumps({"error": "only writes here"}))
elif req["ref"] == "ro":
    print(json.dumps({"error": "unsupported"}))
elif req["ref"] == "deny":
    print(json.dumps({"error": "refused to store " + req["value"]}))
elif req["ref"] == "crash":
    print("crashing with " + req["value"], file=sys.stderr)
    sys.exit(4)
elif req["ref"] == "silent":
    pass
else:
    with open(sys.argv[1], "a") as f:
        f.write(json.dumps(req) + "\n")
    print(json.dumps({"ok": True}))
"#;

#[test]
fn writes_send_the_value_and_map_answers() {
    let p = Project::new();
    p.script("store.py", WRITE_PLUGIN);
    let log = p.path().join("writes.jsonl");
    let prov = p.provider(&["./plugins/store.py", log.to_str().unwrap()]);
    let rt = rt();
    let value = SecretValue::from_str_copy(&format!("{CANARY} \"quoted\"\n"));

    let mut it = item("DB", "db/password");
    it.params = vec![("vault".into(), "Team".into())];
    rt.block_on(prov.write(&it, &value)).unwrap();
    let req: serde_json::Value =
        serde_json::from_str(std::fs::read_to_string(&log).unwrap().trim()).unwrap();
    assert_eq!(req["v"], 1);
    assert_eq!(req["op"], "write");
    assert_eq!(req["id"], "DB");
    assert_eq!(req["ref"], "db/password");
    assert_eq!(req["params"]["vault"], "Team");
    assert_eq!(req["value"].as_str().unwrap(), value.expose_str().unwrap());

    let e = rt
        .block_on(prov.write(&item("A", "ro"), &value))
        .unwrap_err();
    assert_no_canary(&e);
    assert_eq!(e.kind, ErrorKind::Unsupported);
    assert!(e.message.contains("does not support writes"), "{e}");

    let e = rt
        .block_on(prov.write(&item("A", "deny"), &value))
        .unwrap_err();
    assert_no_canary(&e);
    assert_eq!(e.kind, ErrorKind::Backend);
    assert!(e.message.contains("refused to store ****"), "{e}");

    let e = rt
        .block_on(prov.write(&item("A", "crash"), &value))
        .unwrap_err();
    assert_no_canary(&e);
    assert_eq!(e.kind, ErrorKind::Backend);
    assert!(
        e.message.contains("status 4") && e.message.contains("crashing with ****"),
        "{e}"
    );

    let e = rt
        .block_on(prov.write(&item("A", "silent"), &value))
        .unwrap_err();
    assert_no_canary(&e);
    assert!(e.message.contains("malformed"), "{e}");

    let e = rt
        .block_on(prov.write(&item("A", "db"), &SecretValue::from_bytes(vec![0xff, 0x00])))
        .unwrap_err();
    assert_eq!(e.kind, ErrorKind::Unsupported);
    assert!(e.help.unwrap().contains("another provider"));
}

#[test]
fn describe_names_the_program_but_not_its_arguments() {
    let p = Project::new();
    let prov = p.provider(&["./plugins/p", "--token", CANARY]);
    let d = prov.describe();
    assert_eq!((d.instance.as_str(), d.type_name), ("plug", "exec"));
    let shown = format!("{d:?} {prov:?}");
    assert!(shown.contains("plugins/p"), "{shown}");
    assert!(!shown.contains(CANARY), "{shown}");
}

#[test]
fn build_dispatches_to_exec() {
    let p = Project::new();
    let prov = kz_providers::build(
        &p.instance(&["sh", "-c", "cat >/dev/null; echo built"]),
        &p.ctx(false),
    )
    .unwrap();
    assert_eq!(
        value(&resolve(prov.as_ref(), &[item("A", "x")])[0]),
        "built"
    );
}
