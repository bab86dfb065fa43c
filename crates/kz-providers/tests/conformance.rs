//! The provider conformance suite: one set of checks, run against every provider through the
//! real engine (`kz_resolve::resolve_all`) with configurations loaded by `kz-config`.
//!
//! Each backend supplies a [`Fixture`]: how to declare an instance, how to seed a value, and (where
//! the notion exists) how to make the backend unreachable or slow. The checks: resolve one,
//! resolve many, missing secret, wrong field, backend down, slow backend hitting the timeout,
//! write then read, and the canary never in an error.
//!
//! Network and daemon backends run against real or stand-in servers on 127.0.0.1: OpenBao
//! (`hashicorp`, token from `VAULT_TOKEN` in the build context's environment), moto (`aws`; the
//! SDK reads the process environment set once by [`process_env`]), the Secret Manager stand-in
//! (`gcp`), a stand-in of the team server (`keyzero`), the stand-in `op` (`1password`) and gnome-keyring on a private D-Bus bus
//! (`keychain`, run in child processes because the `keyring` crate reads the bus address from
//! the process environment). "Slow" is a listener that accepts and never answers (or an `op`
//! that sleeps); "down" is a closed port, a signed-out `op`, or a bus with nothing listening.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

#[path = "support/aws_env.rs"]
mod aws_env;
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

use aws_env::aws_env;
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
            Instance::new(provider, inst.timeout(), inst.concurrency()),
        );
        let requests: Vec<_> = config
            .secrets
            .iter()
            .map(kz_resolve::Request::from_entry)
            .collect();
        rt().block_on(kz_resolve::resolve_all(&requests, &m))
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
    aws_env();
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
    aws_env();
    conformance(&Local);
}

#[test]
fn conformance_env() {
    aws_env();
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
    aws_env();
    conformance(&Dotenv);
}

#[test]
fn conformance_age() {
    aws_env();
    conformance(&AgeFiles {
        identity: age::x25519::Identity::generate(),
    });
}

#[test]
fn conformance_exec() {
    aws_env();
    conformance(&Exec);
}

// ---------------------------------------------------------------------------------------------
// Network and daemon providers.

/// A loopback address that accepts connections and never answers (held until the process exits).
fn silent_listener() -> String {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        let mut held = Vec::new();
        for s in listener.incoming().flatten() {
            held.push(s);
        }
    });
    format!("127.0.0.1:{}", addr.port())
}

/// A loopback port nothing listens on.
fn closed_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// `hashicorp` against a real OpenBao dev server; the root token comes from `VAULT_TOKEN`
/// (a credential, so never in `.keyzero.toml`).
struct Vault {
    bao: openbao::Bao,
}

impl Fixture for Vault {
    fn type_name(&self) -> &'static str {
        "hashicorp"
    }
    fn options(&self, _: &Path) -> String {
        format!("address = {:?}", self.bao.addr)
    }
    fn seed(&self, _: &Path, name: &str, value: &str) {
        // A JSON object is the secret's data (so `field` picks a key, as Vault users expect);
        // anything else is the single key `value`, which the provider returns as is.
        let data = serde_json::from_str::<serde_json::Value>(value)
            .ok()
            .filter(serde_json::Value::is_object)
            .unwrap_or_else(|| serde_json::json!({ "value": value }));
        rt().block_on(self.bao.put_kv2(name, data));
    }
    fn reference(&self, name: &str) -> String {
        format!("secret/{name}")
    }
    fn down_options(&self, _: &Path) -> Option<String> {
        Some(format!("address = \"http://127.0.0.1:{}\"", closed_port()))
    }
    fn slow_options(&self, _: &Path) -> Option<String> {
        Some(format!("address = \"http://{}\"", silent_listener()))
    }
    fn writable(&self) -> bool {
        true
    }
    fn env(&self) -> HashMap<String, String> {
        HashMap::from([("VAULT_TOKEN".to_string(), openbao::ROOT.to_string())])
    }
}

/// `aws` (Secrets Manager) against a real moto server. The SDK reads credentials from the
/// process environment set by [`process_env`].
struct Aws {
    moto: moto::Moto,
}

impl Fixture for Aws {
    fn type_name(&self) -> &'static str {
        "aws"
    }
    fn options(&self, _: &Path) -> String {
        format!(
            "region = \"us-east-1\"\nendpoint_url = {:?}",
            self.moto.url()
        )
    }
    fn seed(&self, _: &Path, name: &str, value: &str) {
        let url = self.moto.url();
        rt().block_on(async move {
            let config = aws_config::defaults(aws_config::BehaviorVersion::latest())
                .region(aws_config::Region::new("us-east-1"))
                .endpoint_url(url)
                .load()
                .await;
            let sm = aws_sdk_secretsmanager::Client::new(&config);
            sm.create_secret()
                .name(format!("kzconf/{name}"))
                .secret_string(value)
                .send()
                .await
                .unwrap();
        });
    }
    fn reference(&self, name: &str) -> String {
        format!("sm://kzconf/{name}")
    }
    fn down_options(&self, _: &Path) -> Option<String> {
        Some(format!(
            "region = \"us-east-1\"\nendpoint_url = \"http://127.0.0.1:{}\"",
            closed_port()
        ))
    }
    fn slow_options(&self, _: &Path) -> Option<String> {
        Some(format!(
            "region = \"us-east-1\"\nendpoint_url = \"http://{}\"",
            silent_listener()
        ))
    }
    fn writable(&self) -> bool {
        true
    }
}

/// The access token the GCP stand-in accepts (given through `GOOGLE_ACCESS_TOKEN`).
const GCP_TOKEN: &str = "kz-conformance-gcp-token";

/// `gcp` against the Secret Manager STAND-IN (Google ships no emulator).
struct Gcp {
    standin: gcp_standin::StandIn,
    /// A closed port for the metadata server, so nothing ever reaches a real one.
    metadata_port: u16,
}

impl Fixture for Gcp {
    fn type_name(&self) -> &'static str {
        "gcp"
    }
    fn options(&self, _: &Path) -> String {
        format!("endpoint_url = {:?}", self.standin.url)
    }
    fn seed(&self, _: &Path, name: &str, value: &str) {
        self.standin.seed(
            &format!("projects/kz-conf/secrets/{name}"),
            value.as_bytes(),
        );
    }
    fn reference(&self, name: &str) -> String {
        format!("projects/kz-conf/secrets/{name}")
    }
    fn down_options(&self, _: &Path) -> Option<String> {
        Some(format!(
            "endpoint_url = \"http://127.0.0.1:{}\"",
            closed_port()
        ))
    }
    fn slow_options(&self, _: &Path) -> Option<String> {
        Some(format!("endpoint_url = \"http://{}\"", silent_listener()))
    }
    fn writable(&self) -> bool {
        true
    }
    fn env(&self) -> HashMap<String, String> {
        HashMap::from([
            ("GOOGLE_ACCESS_TOKEN".to_string(), GCP_TOKEN.to_string()),
            (
                "GCE_METADATA_HOST".to_string(),
                format!("127.0.0.1:{}", self.metadata_port),
            ),
        ])
    }
}

/// `1password` through the STAND-IN `op` (a Python script over a JSON state file; no real `op`
/// can be installed here). Each variant is its own `op` with its own state under the project.
struct OnePassword;

impl OnePassword {
    /// Writes `DIR/bin-KIND/op` over `DIR/op-KIND.json` (created with `state` if missing);
    /// returns the `op_path` option.
    fn standin(dir: &Path, kind: &str, state: &serde_json::Value) -> String {
        use std::os::unix::fs::PermissionsExt;
        let state_path = dir.join(format!("op-{kind}.json"));
        let log_path = dir.join(format!("op-{kind}.log"));
        if !state_path.exists() {
            std::fs::write(&state_path, state.to_string()).unwrap();
        }
        let script = op_standin::STANDIN_OP
            .replace(
                "{STATE}",
                &format!("{:?}", state_path.display().to_string()),
            )
            .replace("{LOG}", &format!("{:?}", log_path.display().to_string()));
        let bin = dir.join(format!("bin-{kind}"));
        std::fs::create_dir_all(&bin).unwrap();
        std::fs::write(bin.join("op"), script).unwrap();
        std::fs::set_permissions(bin.join("op"), std::fs::Permissions::from_mode(0o755)).unwrap();
        format!("op_path = \"bin-{kind}/op\"")
    }

    fn state(signed_in: bool, delay: u32) -> serde_json::Value {
        serde_json::json!({
            "signed_in": signed_in,
            "delay": delay,
            "vaults": [{"id": "v1", "name": "Dev", "items": []}],
        })
    }
}

impl Fixture for OnePassword {
    fn type_name(&self) -> &'static str {
        "1password"
    }
    fn options(&self, dir: &Path) -> String {
        let found = std::process::Command::new("sh")
            .args(["-c", "command -v python3"])
            .output()
            .is_ok_and(|o| o.status.success());
        assert!(
            found,
            "the stand-in `op` needs python3: install it with `apt-get install -y python3`"
        );
        Self::standin(dir, "live", &Self::state(true, 0))
    }
    fn seed(&self, dir: &Path, name: &str, value: &str) {
        let path = dir.join("op-live.json");
        let mut state: serde_json::Value =
            serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
        state["vaults"][0]["items"].as_array_mut().unwrap().push(serde_json::json!({
            "id": format!("i-{name}"),
            "title": name,
            "category": "PASSWORD",
            "fields": [{"id": "password", "label": "password", "type": "CONCEALED", "value": value}],
        }));
        std::fs::write(path, state.to_string()).unwrap();
    }
    fn reference(&self, name: &str) -> String {
        format!("op://Dev/{name}/password")
    }
    fn down_options(&self, dir: &Path) -> Option<String> {
        // Signed out: every call fails, as when the desktop app is locked or the session ended.
        Some(Self::standin(dir, "down", &Self::state(false, 0)))
    }
    fn slow_options(&self, dir: &Path) -> Option<String> {
        // Every invocation sleeps 30 s before answering.
        Some(Self::standin(dir, "slow", &Self::state(true, 30)))
    }
    fn writable(&self) -> bool {
        true
    }
}

/// The service the keychain fixture files its items under.
const KEYCHAIN_SERVICE: &str = "kz-conformance";
/// Set on the keychain child processes only; their tests do nothing without it.
const KEYCHAIN_INNER_VAR: &str = "KZ_CONFORMANCE_KEYCHAIN_INNER";

/// `keychain` on gnome-keyring on a private D-Bus bus. The `keyring` crate connects to the bus
/// of the *process* environment, so this fixture only works in a child process started by
/// [`conformance_keychain`] with the bus in its environment: `bus_up` says whether that bus has
/// a Secret Service (then the whole suite runs) or nothing listens at the address (then only
/// the "down" check runs, in a second child).
struct Keychain {
    bus_up: bool,
}

impl Fixture for Keychain {
    fn type_name(&self) -> &'static str {
        "keychain"
    }
    fn options(&self, _: &Path) -> String {
        format!("service = \"{KEYCHAIN_SERVICE}\"")
    }
    fn seed(&self, _: &Path, name: &str, value: &str) {
        // Stored by another tool, on the bus of this (child) process's environment.
        use std::io::Write;
        let mut child = std::process::Command::new("secret-tool")
            .args([
                "store",
                "--label=kz conformance",
                "service",
                KEYCHAIN_SERVICE,
                "username",
                name,
            ])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| {
                panic!("cannot run secret-tool ({e}): {}", secret_service::INSTALL)
            });
        child
            .stdin
            .take()
            .unwrap()
            .write_all(value.as_bytes())
            .unwrap();
        let out = secret_service::wait_bounded(child, Duration::from_secs(20), "secret-tool store");
        assert!(
            out.status.success(),
            "secret-tool store failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    fn reference(&self, name: &str) -> String {
        name.into()
    }
    fn down_options(&self, _: &Path) -> Option<String> {
        // Only meaningful in the child whose bus address has nothing listening.
        (!self.bus_up).then(|| self.options(Path::new(".")))
    }
    fn slow_options(&self, _: &Path) -> Option<String> {
        None // no way to make the Secret Service slow from here
    }
    fn writable(&self) -> bool {
        true
    }
    fn env(&self) -> HashMap<String, String> {
        // The bus the child was given (the provider names it in its messages).
        ["DBUS_SESSION_BUS_ADDRESS", "XDG_RUNTIME_DIR"]
            .into_iter()
            .filter_map(|k| std::env::var(k).ok().map(|v| (k.to_string(), v)))
            .collect()
    }
}

#[test]
fn conformance_hashicorp() {
    aws_env();
    conformance(&Vault {
        bao: openbao::Bao::start(),
    });
}

#[test]
fn conformance_aws() {
    aws_env();
    conformance(&Aws {
        moto: moto::Moto::start(&[]),
    });
}

#[test]
fn conformance_gcp() {
    aws_env();
    let standin = gcp_standin::StandIn::start();
    standin.accept_token(GCP_TOKEN);
    conformance(&Gcp {
        standin,
        metadata_port: closed_port(),
    });
}

/// `keyzero` against a STAND-IN of the team server's `POST /v1/resolve` (the real server is
/// tested end to end by the CLI's tests): a thread serving seeded values with kz-wire's own
/// types, answering an unseeded ref as "no resolver matched" and a wrong bearer with 401.
struct Keyzero {
    port: u16,
    values: Arc<Mutex<HashMap<String, String>>>,
}

const KEYZERO_TOKEN: &str = "kz-conformance-identity-token";

impl Keyzero {
    fn start() -> Self {
        use std::io::{BufRead, BufReader, Read, Write};
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let values: Arc<Mutex<HashMap<String, String>>> = Arc::default();
        let seeded = Arc::clone(&values);
        std::thread::spawn(move || {
            for conn in listener.incoming().flatten() {
                let mut reader = BufReader::new(conn);
                let (mut len, mut bearer_ok) = (0usize, false);
                loop {
                    let mut line = String::new();
                    if reader.read_line(&mut line).unwrap_or(0) == 0 || line == "\r\n" {
                        break;
                    }
                    let lower = line.to_ascii_lowercase();
                    if let Some(v) = lower.strip_prefix("content-length:") {
                        len = v.trim().parse().unwrap_or(0);
                    }
                    bearer_ok |= line.trim_end()
                        == format!("authorization: Bearer {KEYZERO_TOKEN}")
                        || line.trim_end() == format!("Authorization: Bearer {KEYZERO_TOKEN}");
                }
                let mut body = vec![0u8; len];
                if reader.read_exact(&mut body).is_err() {
                    continue;
                }
                let (status, out) = if bearer_ok {
                    let req: kz_wire::ResolveRequest = serde_json::from_slice(&body).unwrap();
                    let mut resp = kz_wire::ResolveResponse::default();
                    for r in req.requested().unwrap() {
                        let name = r.strip_prefix("team/").unwrap_or(r);
                        let result = match seeded.lock().unwrap().get(name) {
                            Some(v) => kz_wire::RefResult {
                                allowed: true,
                                value: Some(kz_wire::WireValue::Single(
                                    SecretValue::from_str_copy(v),
                                )),
                                ..Default::default()
                            },
                            None => kz_wire::RefResult {
                                allowed: true,
                                error: Some("no resolver matched the ref".into()),
                                ..Default::default()
                            },
                        };
                        resp.results.insert(r.to_string(), result);
                    }
                    ("200 OK", resp.to_json().unwrap().to_vec())
                } else {
                    (
                        "401 Unauthorized",
                        br#"{"error":"invalid_token","message":"bad token"}"#.to_vec(),
                    )
                };
                let mut conn = reader.into_inner();
                let _ = write!(
                    conn,
                    "HTTP/1.1 {status}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                    out.len()
                );
                let _ = conn.write_all(&out);
            }
        });
        Self { port, values }
    }
}

impl Fixture for Keyzero {
    fn type_name(&self) -> &'static str {
        "keyzero"
    }
    fn options(&self, _: &Path) -> String {
        format!("endpoint = \"http://127.0.0.1:{}\"", self.port)
    }
    fn seed(&self, _: &Path, name: &str, value: &str) {
        self.values
            .lock()
            .unwrap()
            .insert(name.to_string(), value.to_string());
    }
    fn reference(&self, name: &str) -> String {
        format!("team/{name}")
    }
    fn down_options(&self, _: &Path) -> Option<String> {
        Some(format!("endpoint = \"http://127.0.0.1:{}\"", closed_port()))
    }
    fn slow_options(&self, _: &Path) -> Option<String> {
        Some(format!("endpoint = \"http://{}\"", silent_listener()))
    }
    fn writable(&self) -> bool {
        false
    }
    fn env(&self) -> HashMap<String, String> {
        HashMap::from([("KEYZERO_TOKEN".to_string(), KEYZERO_TOKEN.to_string())])
    }
}

#[test]
fn conformance_keyzero() {
    aws_env();
    conformance(&Keyzero::start());
}

#[test]
fn conformance_1password() {
    // The stand-in `op`: no real 1Password CLI can be installed here.
    aws_env();
    conformance(&OnePassword);
}

#[test]
fn conformance_keychain() {
    aws_env();
    // The whole suite in a child on a private bus with gnome-keyring.
    let bus = secret_service::Bus::with_keyring();
    let exe = secret_service::current_exe();
    run_keychain_child(bus.command(&exe), "live");
    // "Down": a child whose bus address has nothing listening.
    let dir = tempfile::tempdir().unwrap();
    let runtime = dir.path().join("run");
    std::fs::create_dir(&runtime).unwrap();
    let mut cmd = std::process::Command::new(&exe);
    cmd.env(
        "DBUS_SESSION_BUS_ADDRESS",
        format!("unix:path={}", runtime.join("no-such-bus").display()),
    )
    .env("XDG_RUNTIME_DIR", &runtime)
    .env("HOME", dir.path())
    .env_remove("DISPLAY");
    run_keychain_child(cmd, "down");
}

fn run_keychain_child(cmd: std::process::Command, name: &str) {
    secret_service::run_child(
        cmd,
        &format!("keychain_inner::{name}"),
        KEYCHAIN_INNER_VAR,
        &format!("kz-conformance-keychain-done {name}"),
        CANARY,
    );
}

/// The keychain halves that run in child processes (`#[ignore]`d, and inert without
/// `KZ_CONFORMANCE_KEYCHAIN_INNER=1`, so they never touch a developer's real session bus).
mod keychain_inner {
    use super::*;

    fn is_child() -> bool {
        let child = std::env::var(KEYCHAIN_INNER_VAR).as_deref() == Ok("1");
        if !child {
            eprintln!("run by conformance_keychain in a child process on a private bus");
        }
        child
    }

    #[test]
    #[ignore = "run in a child process by conformance_keychain"]
    fn live() {
        if !is_child() {
            return;
        }
        conformance(&Keychain { bus_up: true });
        println!("kz-conformance-keychain-done live");
    }

    #[test]
    #[ignore = "run in a child process by conformance_keychain"]
    fn down() {
        if !is_child() {
            return;
        }
        aws_env();
        let f = Keychain { bus_up: false };
        assert!(
            check_down(&Harness::new(&f), &f),
            "the down check did not run"
        );
        println!("kz-conformance-keychain-done down");
    }
}
