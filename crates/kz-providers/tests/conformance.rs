//! The provider conformance suite: one set of checks, run against every provider through the
//! real engine (`kz_resolve::resolve_all`) with configurations loaded by `kz-config`.
//!
//! Each backend supplies a [`Fixture`]: how to declare an instance, how to seed a value, and (where
//! the notion exists) how to make the backend unreachable or slow. The checks: resolve one,
//! resolve many, missing secret, wrong field, backend down, slow backend hitting the timeout,
//! write then read, and the canary never in an error.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, Once};
use std::time::{Duration, Instant};

#[allow(dead_code)]
#[path = "support/gcp_standin.rs"]
mod gcp_standin;
#[allow(dead_code)]
#[path = "support/moto.rs"]
mod moto;
#[path = "support/op_standin.rs"]
mod op_standin;
#[allow(dead_code)]
#[path = "support/openbao.rs"]
mod openbao;
#[path = "support/secret_service.rs"]
mod secret_service;

use kz_config::{Config, LoadRequest};
use kz_providers::BuildContext;
use kz_resolve::{ErrorKind, Instance, Outcome, ProviderError};
use kz_secret::{Resolved, SecretValue};

const CANARY: &str = "kz-canary-c0f3e1a2b4";

/// A backend under test.
trait Fixture {
    /// The provider type.
    fn type_name(&self) -> &'static str;
    /// `[providers.p]` body (without the header) for a working instance.
    fn options(&self, dir: &Path) -> String;
    /// Stores `value` so that `reference(name)` resolves to it.
    fn seed(&self, dir: &Path, name: &str, value: &str);
    /// The reference for a seeded name.
    fn reference(&self, name: &str) -> String;
    /// Options for an instance whose backend is down, if that notion exists for this backend.
    fn down_options(&self, dir: &Path) -> Option<String>;
    /// Options for an instance whose backend never answers, if that can happen.
    fn slow_options(&self, dir: &Path) -> Option<String>;
    /// Whether `kz put` can write through this provider.
    fn writable(&self) -> bool;
    /// Extra environment the provider reads.
    fn env(&self) -> HashMap<String, String> {
        HashMap::new()
    }
}

struct Harness {
    dir: tempfile::TempDir,
    env: Arc<Mutex<HashMap<String, String>>>,
}

impl Harness {
    fn new(f: &dyn Fixture) -> Self {
        let h = Self {
            dir: tempfile::tempdir().unwrap(),
            env: Arc::new(Mutex::new(f.env())),
        };
        std::fs::create_dir_all(h.dir.path().join("home")).unwrap();
        h
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }

    fn ctx(&self) -> BuildContext {
        let env = Arc::clone(&self.env);
        BuildContext {
            home: Some(self.path().join("home")),
            config_home: self.path().join("config"),
            data_home: self.path().join("data"),
            runtime_dir: None,
            project_dir: self.path().to_path_buf(),
            getenv: Arc::new(move |k| env.lock().unwrap().get(k).cloned()),
            verbose: false,
            interactive: false,
        }
    }

    /// Loads a config with instance `p` and the given secrets `NAME = ref (, field)`.
    fn config(
        &self,
        f: &dyn Fixture,
        options: &str,
        secrets: &[(&str, String, Option<&str>)],
    ) -> Config {
        let mut text = format!(
            "[providers.p]\ntype = \"{}\"\n{options}\n[secrets]\n",
            f.type_name()
        );
        for (name, r, field) in secrets {
            let field = field
                .map(|x| format!(", field = \"{x}\""))
                .unwrap_or_default();
            text.push_str(&format!(
                "{name} = {{ provider = \"p\", ref = {r:?}{field} }}\n"
            ));
        }
        std::fs::write(self.path().join(".keyzero.toml"), text).unwrap();
        let getenv = |_: &str| None;
        let l = kz_config::load(&LoadRequest {
            start_dir: self.path(),
            config_file: None,
            env_flag: None,
            global_file: None,
            getenv: &getenv,
        });
        let errs: Vec<_> = l.errors().collect();
        assert!(errs.is_empty(), "{errs:#?}");
        l.config.unwrap()
    }

    fn resolve(&self, config: &Config) -> Vec<Outcome> {
        let inst = config.provider("p").unwrap();
        let provider = match kz_providers::build(inst, &self.ctx()) {
            Ok(p) => p,
            // A provider may refuse to build (a missing identity file): every secret fails so.
            Err(e) => {
                return config
                    .secrets
                    .iter()
                    .map(|s| Outcome {
                        name: s.name.clone(),
                        provider: s.provider.clone(),
                        type_name: s.ty.name,
                        reference: s.reference.clone(),
                        result: Err(e.clone()),
                        latency: Duration::ZERO,
                        skipped: false,
                    })
                    .collect();
            }
        };
        let mut m = HashMap::new();
        m.insert(
            "p".to_string(),
            Instance {
                provider,
                timeout: inst.timeout(),
                concurrency: inst.concurrency(),
            },
        );
        let entries: Vec<_> = config.secrets.iter().collect();
        rt().block_on(kz_resolve::resolve_all(&entries, &m))
    }

    fn write(&self, config: &Config, name: &str, value: &str) -> Result<(), ProviderError> {
        let inst = config.provider("p").unwrap();
        let provider = kz_providers::build(inst, &self.ctx()).unwrap();
        let item = kz_resolve::item_for(config.secret(name).unwrap());
        rt().block_on(provider.write(&item, &SecretValue::from_str_copy(value)))
    }
}

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

fn value(o: &Outcome) -> String {
    match o
        .result
        .as_ref()
        .unwrap_or_else(|e| panic!("{}: {e} ({:?})", o.name, e.kind))
    {
        Resolved::Single(v) => v.expose_str().unwrap().to_string(),
        Resolved::Multi(_) => panic!("unexpected multi value"),
    }
}

fn no_canary(e: &ProviderError) {
    let shown = format!("{e} {e:?} {:?}", e.help);
    assert!(!shown.contains(CANARY), "canary in error: {shown}");
}

/// The whole suite for one backend.
fn conformance(f: &dyn Fixture) {
    process_env();
    let h = Harness::new(f);
    check_reads(&h, f);
    check_down(&h, f);
    check_slow(&h, f);
    check_write(&h, f);
}

/// Resolve one, resolve many (in order), a missing secret, a wrong field.
fn check_reads(h: &Harness, f: &dyn Fixture) {
    let dir = h.path();
    let opts = f.options(dir);

    // Resolve one.
    f.seed(dir, "ONE", CANARY);
    let c = h.config(f, &opts, &[("ONE", f.reference("ONE"), None)]);
    let out = h.resolve(&c);
    assert_eq!(value(&out[0]), CANARY, "{}: resolve one", f.type_name());

    // Resolve many (and in order).
    let names: Vec<String> = (0..12).map(|i| format!("MANY_{i}")).collect();
    for n in &names {
        f.seed(dir, n, &format!("value-of-{n}"));
    }
    let secrets: Vec<_> = names
        .iter()
        .map(|n| (n.as_str(), f.reference(n), None))
        .collect();
    let out = h.resolve(&h.config(f, &opts, &secrets));
    for (n, o) in names.iter().zip(&out) {
        assert_eq!(
            value(o),
            format!("value-of-{n}"),
            "{}: resolve many",
            f.type_name()
        );
    }

    // Missing secret: NotFound, the ref named, never the canary.
    let c = h.config(
        f,
        &opts,
        &[
            ("GONE", f.reference("NEVER_SEEDED"), None),
            ("ONE", f.reference("ONE"), None),
        ],
    );
    let out = h.resolve(&c);
    let e = out[0].result.as_ref().unwrap_err();
    assert_eq!(
        e.kind,
        ErrorKind::NotFound,
        "{}: missing → {e} ({:?})",
        f.type_name(),
        e.kind
    );
    no_canary(e);
    assert_eq!(
        value(&out[1]),
        CANARY,
        "{}: other secrets unaffected",
        f.type_name()
    );

    // Wrong field: an error listing the keys, never the values.
    f.seed(
        dir,
        "JSON",
        &format!(r#"{{"user":"u","password":"{CANARY}"}}"#),
    );
    let c = h.config(
        f,
        &opts,
        &[
            ("J1", f.reference("JSON"), Some("user")),
            ("J2", f.reference("JSON"), Some("pasword")),
        ],
    );
    let out = h.resolve(&c);
    assert_eq!(value(&out[0]), "u", "{}: field", f.type_name());
    let e = out[1].result.as_ref().unwrap_err();
    assert_eq!(
        e.kind,
        ErrorKind::Field,
        "{}: wrong field → {e}",
        f.type_name()
    );
    assert!(
        format!("{e} {:?}", e.help).contains("password"),
        "{}: keys listed: {e} {:?}",
        f.type_name(),
        e.help
    );
    no_canary(e);
}

/// Backend down: a clear error, quickly. Returns whether the check ran (the fixture has a
/// notion of "down").
fn check_down(h: &Harness, f: &dyn Fixture) -> bool {
    let Some(down) = f.down_options(h.path()) else {
        return false;
    };
    let start = Instant::now();
    let out = h.resolve(&h.config(f, &down, &[("ONE", f.reference("ONE"), None)]));
    let e = out[0].result.as_ref().unwrap_err();
    assert_ne!(
        e.kind,
        ErrorKind::NotFound,
        "{}: down is not 'not found': {e}",
        f.type_name()
    );
    assert!(
        start.elapsed() < Duration::from_secs(8),
        "{}: down took {:?}",
        f.type_name(),
        start.elapsed()
    );
    no_canary(e);
    true
}

/// Slow backend: the timeout cuts it short.
fn check_slow(h: &Harness, f: &dyn Fixture) {
    if let Some(slow) = f.slow_options(h.path()) {
        let start = Instant::now();
        let out = h.resolve(&h.config(
            f,
            &format!("{slow}\ntimeout = \"700ms\""),
            &[("ONE", f.reference("ONE"), None)],
        ));
        let e = out[0].result.as_ref().unwrap_err();
        assert_eq!(e.kind, ErrorKind::Timeout, "{}: slow → {e}", f.type_name());
        assert!(
            start.elapsed() < Duration::from_secs(5),
            "{}: the timeout did not cut it short",
            f.type_name()
        );
        no_canary(e);
    }
}

/// Write then read (or a clear refusal).
fn check_write(h: &Harness, f: &dyn Fixture) {
    let opts = f.options(h.path());
    let c = h.config(f, &opts, &[("W", f.reference("WRITTEN"), None)]);
    match h.write(&c, "W", "written-value") {
        Ok(()) => {
            assert!(f.writable(), "{}: wrote although read-only", f.type_name());
            assert_eq!(
                value(&h.resolve(&c)[0]),
                "written-value",
                "{}: write then read",
                f.type_name()
            );
        }
        Err(e) => {
            assert!(!f.writable(), "{}: write failed: {e}", f.type_name());
            assert_eq!(e.kind, ErrorKind::Unsupported, "{}: {e}", f.type_name());
        }
    }
}

/// Sets the process environment the AWS SDK reads (it ignores kz's `getenv`), once, before any
/// test does anything else: credentials from a private shared-credentials file (`test`/`test`,
/// which moto accepts), no instance metadata, and no outer `AWS_*` variable that could change
/// the outcome. Every test of this binary calls it first.
fn process_env() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        let dir = tempfile::tempdir().unwrap().keep();
        let config = dir.join("config");
        let credentials = dir.join("credentials");
        std::fs::write(&config, "[default]\nregion = us-east-1\n").unwrap();
        std::fs::write(
            &credentials,
            "[default]\naws_access_key_id = test\naws_secret_access_key = test\n",
        )
        .unwrap();
        let remove = [
            "AWS_ACCESS_KEY_ID",
            "AWS_SECRET_ACCESS_KEY",
            "AWS_SESSION_TOKEN",
            "AWS_PROFILE",
            "AWS_DEFAULT_PROFILE",
            "AWS_REGION",
            "AWS_DEFAULT_REGION",
            "AWS_ENDPOINT_URL",
            "AWS_ENDPOINT_URL_SECRETS_MANAGER",
            "AWS_ENDPOINT_URL_SSM",
            "AWS_ENDPOINT_URL_STS",
            "AWS_ROLE_ARN",
            "AWS_WEB_IDENTITY_TOKEN_FILE",
            "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI",
            "AWS_CONTAINER_CREDENTIALS_FULL_URI",
            "AWS_CONTAINER_AUTHORIZATION_TOKEN",
        ];
        // SAFETY: every test of this binary calls `process_env()` first, and `Once` blocks them
        // all until this closure returns, so no other thread of the process is running code that
        // reads the environment while it changes.
        #[allow(unsafe_code)]
        unsafe {
            for k in remove {
                std::env::remove_var(k);
            }
            std::env::set_var("AWS_CONFIG_FILE", &config);
            std::env::set_var("AWS_SHARED_CREDENTIALS_FILE", &credentials);
            std::env::set_var("AWS_EC2_METADATA_DISABLED", "true");
        }
    });
}

// ---------------------------------------------------------------------------------------------
// Foundation providers.

struct Local;

impl Fixture for Local {
    fn type_name(&self) -> &'static str {
        "local"
    }
    fn options(&self, _: &Path) -> String {
        "path = \"store/store.age\"".into()
    }
    fn seed(&self, dir: &Path, name: &str, value: &str) {
        // Seed through the provider itself, with the same store and identity directories as
        // the harness (a config elsewhere naming the store by absolute path).
        let cfgdir = tempfile::tempdir().unwrap();
        let store = dir.join("store/store.age");
        let text = format!(
            "[providers.p]\ntype = \"local\"\npath = {:?}\n[secrets]\nX = {{ provider = \"p\", ref = \"{}\" }}\n",
            store.display().to_string(),
            self.reference(name)
        );
        std::fs::write(cfgdir.path().join(".keyzero.toml"), text).unwrap();
        let getenv = |_: &str| None;
        let l = kz_config::load(&LoadRequest {
            start_dir: cfgdir.path(),
            config_file: None,
            env_flag: None,
            global_file: None,
            getenv: &getenv,
        });
        let c = l.config.unwrap();
        let ctx = BuildContext {
            home: None,
            config_home: dir.join("config"),
            data_home: dir.join("data"),
            runtime_dir: None,
            project_dir: dir.to_path_buf(),
            getenv: Arc::new(|_| None),
            verbose: false,
            interactive: false,
        };
        let p = kz_providers::build(c.provider("p").unwrap(), &ctx).unwrap();
        let item = kz_resolve::item_for(c.secret("X").unwrap());
        rt().block_on(p.write(&item, &SecretValue::from_str_copy(value)))
            .unwrap();
    }
    fn reference(&self, name: &str) -> String {
        format!("proj/{name}")
    }
    fn down_options(&self, dir: &Path) -> Option<String> {
        // A store that exists but whose identity record is gone: a clear configuration error.
        let broken = dir.join("broken");
        std::fs::create_dir_all(&broken).unwrap();
        std::fs::copy(dir.join("store/store.age"), broken.join("store.age")).unwrap();
        Some("path = \"broken/store.age\"".into())
    }
    fn slow_options(&self, _: &Path) -> Option<String> {
        None // a local file cannot be slow in a way kz controls
    }
    fn writable(&self) -> bool {
        true
    }
}

struct Env {
    vars: Mutex<HashMap<String, String>>,
}

impl Fixture for Env {
    fn type_name(&self) -> &'static str {
        "env"
    }
    fn options(&self, _: &Path) -> String {
        String::new()
    }
    fn seed(&self, _: &Path, name: &str, value: &str) {
        self.vars
            .lock()
            .unwrap()
            .insert(format!("KZT_{name}"), value.into());
    }
    fn reference(&self, name: &str) -> String {
        format!("KZT_{name}")
    }
    fn down_options(&self, _: &Path) -> Option<String> {
        None
    }
    fn slow_options(&self, _: &Path) -> Option<String> {
        None
    }
    fn writable(&self) -> bool {
        false
    }
    fn env(&self) -> HashMap<String, String> {
        self.vars.lock().unwrap().clone()
    }
}

struct Dotenv;

impl Fixture for Dotenv {
    fn type_name(&self) -> &'static str {
        "dotenv"
    }
    fn options(&self, _: &Path) -> String {
        "path = \"vals.env\"".into()
    }
    fn seed(&self, dir: &Path, name: &str, value: &str) {
        let p = dir.join("vals.env");
        let mut text = std::fs::read_to_string(&p).unwrap_or_default();
        text.push_str(&format!("{name}='{value}'\n"));
        std::fs::write(p, text).unwrap();
    }
    fn reference(&self, name: &str) -> String {
        name.into()
    }
    fn down_options(&self, _: &Path) -> Option<String> {
        Some("path = \"no-such-file.env\"".into())
    }
    fn slow_options(&self, _: &Path) -> Option<String> {
        None
    }
    fn writable(&self) -> bool {
        false
    }
}

struct AgeFiles {
    identity: age::x25519::Identity,
}

impl Fixture for AgeFiles {
    fn type_name(&self) -> &'static str {
        "age"
    }
    fn options(&self, dir: &Path) -> String {
        use age::secrecy::ExposeSecret;
        let id = dir.join("id.txt");
        if !id.exists() {
            std::fs::write(
                &id,
                format!("{}\n", self.identity.to_string().expose_secret()),
            )
            .unwrap();
        }
        format!(
            "identity = \"id.txt\"\nrecipients = [\"{}\"]",
            self.identity.to_public()
        )
    }
    fn seed(&self, dir: &Path, name: &str, value: &str) {
        use std::io::Write;
        let recipient = self.identity.to_public();
        let enc =
            age::Encryptor::with_recipients(std::iter::once(&recipient as &dyn age::Recipient))
                .unwrap();
        let mut out = Vec::new();
        let mut w = enc.wrap_output(&mut out).unwrap();
        w.write_all(value.as_bytes()).unwrap();
        w.finish().unwrap();
        std::fs::create_dir_all(dir.join("secrets")).unwrap();
        std::fs::write(dir.join(self.reference(name)), out).unwrap();
    }
    fn reference(&self, name: &str) -> String {
        format!("secrets/{name}.age")
    }
    fn down_options(&self, _: &Path) -> Option<String> {
        Some("identity = \"missing-identity.txt\"".into())
    }
    fn slow_options(&self, _: &Path) -> Option<String> {
        None
    }
    fn writable(&self) -> bool {
        true
    }
}

struct Exec;

impl Exec {
    fn script(dir: &Path, name: &str, body: &str) -> PathBuf {
        use std::os::unix::fs::PermissionsExt;
        let p = dir.join(name);
        std::fs::write(&p, body).unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
        p
    }
}

/// A plugin backed by a JSON file of values: the protocol of providers.md, in Python.
const PLUGIN: &str = r#"#!/usr/bin/env python3
import json, os, sys
store_path = os.path.join(os.path.dirname(os.path.abspath(__file__)), "plugin-store.json")
store = json.load(open(store_path)) if os.path.exists(store_path) else {}
req = json.load(sys.stdin)
if req["op"] == "write":
    store[req["ref"]] = req["value"]
    json.dump(store, open(store_path, "w"))
    print(json.dumps({"ok": True}))
else:
    res = {}
    for it in req["items"]:
        if it["ref"] in store:
            res[it["id"]] = {"value": store[it["ref"]]}
        else:
            res[it["id"]] = {"error": "no such item", "not_found": True}
    print(json.dumps({"results": res}))
"#;

impl Fixture for Exec {
    fn type_name(&self) -> &'static str {
        "exec"
    }
    fn options(&self, dir: &Path) -> String {
        Self::script(dir, "plugin.py", PLUGIN);
        "command = [\"./plugin.py\"]".into()
    }
    fn seed(&self, dir: &Path, name: &str, value: &str) {
        let p = dir.join("plugin-store.json");
        let mut store: HashMap<String, String> = std::fs::read(&p)
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .unwrap_or_default();
        store.insert(self.reference(name), value.into());
        std::fs::write(p, serde_json::to_vec(&store).unwrap()).unwrap();
    }
    fn reference(&self, name: &str) -> String {
        format!("items/{name}")
    }
    fn down_options(&self, dir: &Path) -> Option<String> {
        Self::script(
            dir,
            "down.sh",
            "#!/bin/sh\necho 'backend unreachable: connection refused' >&2\nexit 3\n",
        );
        Some("command = [\"./down.sh\"]".into())
    }
    fn slow_options(&self, dir: &Path) -> Option<String> {
        Self::script(dir, "slow.sh", "#!/bin/sh\nsleep 30\n");
        Some("command = [\"./slow.sh\"]".into())
    }
    fn writable(&self) -> bool {
        true
    }
}

#[test]
fn conformance_local() {
    process_env();
    conformance(&Local);
}

#[test]
fn conformance_env() {
    process_env();
    // The env provider reads a snapshot of the variables: seed first, then run.
    let f = Env {
        vars: Mutex::new(HashMap::new()),
    };
    f.seed(Path::new("."), "ONE", CANARY);
    for i in 0..12 {
        f.seed(
            Path::new("."),
            &format!("MANY_{i}"),
            &format!("value-of-MANY_{i}"),
        );
    }
    f.seed(
        Path::new("."),
        "JSON",
        &format!(r#"{{"user":"u","password":"{CANARY}"}}"#),
    );
    conformance(&f);
}

#[test]
fn conformance_dotenv() {
    process_env();
    conformance(&Dotenv);
}

#[test]
fn conformance_age() {
    process_env();
    conformance(&AgeFiles {
        identity: age::x25519::Identity::generate(),
    });
}

#[test]
fn conformance_exec() {
    process_env();
    conformance(&Exec);
}
