//! The `hashicorp` provider against a real OpenBao dev server (`bao server -dev`), started per
//! test on a free loopback port and stopped by PID.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

#[path = "support/openbao.rs"]
mod openbao;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use kz_config::{LoadRequest, load};
use kz_providers::BuildContext;
use kz_providers::hashicorp::VaultProvider;
use kz_resolve::{ErrorKind, Item, Provider, ProviderError};
use kz_secret::{Resolved, SecretValue};
use openbao::{Bao, free_port};
use serde_json::{Value, json};

const CANARY: &str = "kz-canary-vault-3f9d1c";

struct Project {
    dir: tempfile::TempDir,
}

impl Project {
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("home")).unwrap();
        Self { dir }
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }

    fn home(&self) -> PathBuf {
        self.path().join("home")
    }

    /// Builds the provider from `options` (lines of `[providers.vault]` in .keyzero.toml),
    /// `local` (lines of the same table in .keyzero.local.toml, for credentials) and a fake
    /// environment.
    fn try_provider(
        &self,
        options: &str,
        local: &str,
        env: &[(&str, &str)],
    ) -> Result<VaultProvider, ProviderError> {
        std::fs::write(
            self.path().join(".keyzero.toml"),
            format!("[providers.vault]\ntype = \"vault\"\n{options}\n"),
        )
        .unwrap();
        let local_path = self.path().join(".keyzero.local.toml");
        if local.is_empty() {
            let _ = std::fs::remove_file(&local_path);
        } else {
            std::fs::write(&local_path, format!("[providers.vault]\n{local}\n")).unwrap();
        }
        let loaded = load(&LoadRequest {
            start_dir: self.path(),
            config_file: None,
            env_flag: None,
            global_file: None,
            getenv: &|_| None,
        });
        let cfg = loaded
            .config
            .unwrap_or_else(|| panic!("config did not load: {:?}", loaded.diagnostics));
        let inst = cfg.provider("vault").unwrap();
        let env: HashMap<String, String> = env
            .iter()
            .map(|(k, v)| ((*k).to_string(), (*v).to_string()))
            .collect();
        let ctx = BuildContext {
            home: Some(self.home()),
            config_home: self.path().join("config"),
            data_home: self.path().join("data"),
            runtime_dir: None,
            project_dir: self.path().to_path_buf(),
            getenv: Arc::new(move |k| env.get(k).cloned()),
            verbose: false,
            interactive: false,
        };
        VaultProvider::new(inst, &ctx)
    }

    fn provider(&self, options: &str, local: &str, env: &[(&str, &str)]) -> VaultProvider {
        self.try_provider(options, local, env).unwrap()
    }

    /// A provider for `bao` with the root token from the local file.
    fn root(&self, bao: &Bao, extra: &str) -> VaultProvider {
        self.provider(
            &format!("address = \"{}\"\n{extra}", bao.addr),
            "token = \"root\"",
            &[],
        )
    }
}

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

fn item(reference: &str) -> Item {
    Item {
        name: "SECRET".into(),
        reference: reference.into(),
        field: None,
        params: Vec::new(),
    }
}

fn item_field(reference: &str, field: &str) -> Item {
    Item {
        field: Some(field.into()),
        ..item(reference)
    }
}

fn item_version(reference: &str, version: &str) -> Item {
    Item {
        params: vec![("version".into(), version.into())],
        ..item(reference)
    }
}

/// Resolves one item to text.
async fn get(p: &VaultProvider, it: Item) -> Result<String, ProviderError> {
    let mut out = p.resolve(std::slice::from_ref(&it)).await;
    assert_eq!(out.len(), 1);
    match out.remove(0)? {
        Resolved::Single(v) => Ok(v.expose_str().unwrap().to_string()),
        Resolved::Multi(_) => panic!("unexpected multi value"),
    }
}

/// The error of resolving `it`, checked for the canary.
async fn get_err(p: &VaultProvider, it: Item) -> ProviderError {
    let e = get(p, it).await.expect_err("expected an error");
    assert_clean(&e);
    e
}

/// The canary never appears in an error's text, help or Debug output.
fn assert_clean(e: &ProviderError) {
    let shown = format!("{e} | {:?} | {e:?}", e.help);
    assert!(!shown.contains(CANARY), "canary leaked: {shown}");
}

async fn put(p: &VaultProvider, it: Item, value: &str) -> Result<(), ProviderError> {
    p.write(&it, &SecretValue::from_str_copy(value)).await
}

fn json_of(text: &str) -> Value {
    serde_json::from_str(text).unwrap()
}

#[test]
fn kv2_logical_and_api_paths_fields_and_versions() {
    let bao = Bao::start();
    let proj = Project::new();
    let p = proj.root(&bao, "");
    rt().block_on(async {
        bao.put_kv2("app", json!({"user": "u1", "password": CANARY}))
            .await;
        bao.put_kv2("single", json!({"token": "only-value"})).await;
        bao.put_kv2("ver", json!({"value": "one"})).await;
        bao.put_kv2("ver", json!({"value": "two"})).await;

        // Single key: its value, by logical or API path, with or without slashes around.
        assert_eq!(get(&p, item("secret/single")).await.unwrap(), "only-value");
        assert_eq!(
            get(&p, item("secret/data/single")).await.unwrap(),
            "only-value"
        );
        assert_eq!(
            get(&p, item("/secret/single/")).await.unwrap(),
            "only-value"
        );
        // Multi key: JSON of the data.
        let whole = json_of(&get(&p, item("secret/app")).await.unwrap());
        assert_eq!(whole, json!({"user": "u1", "password": CANARY}));
        let whole = json_of(&get(&p, item("secret/data/app")).await.unwrap());
        assert_eq!(whole["user"], "u1");
        // field and #field.
        assert_eq!(
            get(&p, item_field("secret/app", "user")).await.unwrap(),
            "u1"
        );
        assert_eq!(get(&p, item("secret/app#password")).await.unwrap(), CANARY);
        assert_eq!(get(&p, item("secret/data/app#user")).await.unwrap(), "u1");
        assert_eq!(
            get(&p, item_field("secret/app#user", "user"))
                .await
                .unwrap(),
            "u1"
        );
        // A wrong field lists the keys, never the values.
        let e = get_err(&p, item_field("secret/app", "passwd")).await;
        assert_eq!(e.kind, ErrorKind::Field);
        let help = e.help.clone().unwrap();
        assert!(help.contains("password") && help.contains("user"), "{help}");
        // Versions.
        assert_eq!(get(&p, item("secret/ver")).await.unwrap(), "two");
        assert_eq!(
            get(&p, item_version("secret/ver", "1")).await.unwrap(),
            "one"
        );
        assert_eq!(
            get(&p, item_version("secret/data/ver", "2")).await.unwrap(),
            "two"
        );
        let e = get_err(&p, item_version("secret/ver", "9")).await;
        assert_eq!(e.kind, ErrorKind::NotFound, "{e}");
        assert!(e.message.contains("version 9"), "{e}");
        let e = get_err(&p, item_version("secret/ver", "latest")).await;
        assert_eq!(e.kind, ErrorKind::BadReference, "{e}");
        // Missing secret: NotFound naming the path.
        let e = get_err(&p, item("secret/nope")).await;
        assert_eq!(e.kind, ErrorKind::NotFound, "{e}");
        assert!(e.message.contains("secret/data/nope"), "{e}");
        // A deleted latest version reads as not found.
        bao.api("DELETE", "secret/data/ver", None).await;
        let e = get_err(&p, item("secret/ver")).await;
        assert_eq!(e.kind, ErrorKind::NotFound, "{e}");
        assert_eq!(
            get(&p, item_version("secret/ver", "1")).await.unwrap(),
            "one"
        );
        // Non-string values come back as JSON text.
        bao.put_kv2("typed", json!({"port": 5432, "on": true}))
            .await;
        assert_eq!(
            get(&p, item_field("secret/typed", "port")).await.unwrap(),
            "5432"
        );
        assert_eq!(
            get(&p, item_field("secret/typed", "on")).await.unwrap(),
            "true"
        );

        assert!(p.handles_field());
        p.check().await.unwrap();
    });
}

#[test]
fn kv1_mount_and_other_engines() {
    let bao = Bao::start();
    let proj = Project::new();
    let p = proj.root(&bao, "");
    rt().block_on(async {
        bao.api(
            "POST",
            "sys/mounts/kv1",
            Some(json!({"type": "kv", "options": {"version": "1"}})),
        )
        .await;
        bao.api(
            "POST",
            "kv1/db",
            Some(json!({"user": "dbu", "pass": CANARY})),
        )
        .await;
        bao.api("POST", "kv1/one", Some(json!({"value": "v1-only"})))
            .await;
        // Cubbyhole is not KV: its data always comes back as JSON (like dynamic engines).
        bao.api("POST", "cubbyhole/dyn", Some(json!({"k": "cubby"})))
            .await;

        assert_eq!(get(&p, item("kv1/one")).await.unwrap(), "v1-only");
        assert_eq!(
            json_of(&get(&p, item("kv1/db")).await.unwrap()),
            json!({"user": "dbu", "pass": CANARY})
        );
        assert_eq!(get(&p, item("kv1/db#user")).await.unwrap(), "dbu");
        let e = get_err(&p, item("kv1/db#nope")).await;
        assert_eq!(e.kind, ErrorKind::Field);
        assert!(e.help.unwrap().contains("pass"));
        let e = get_err(&p, item("kv1/missing")).await;
        assert_eq!(e.kind, ErrorKind::NotFound, "{e}");
        assert!(e.message.contains("kv1/missing"), "{e}");
        let e = get_err(&p, item_version("kv1/one", "1")).await;
        assert_eq!(e.kind, ErrorKind::BadReference, "{e}");

        assert_eq!(
            json_of(&get(&p, item("cubbyhole/dyn")).await.unwrap()),
            json!({"k": "cubby"})
        );
        assert_eq!(get(&p, item("cubbyhole/dyn#k")).await.unwrap(), "cubby");
        let e = get_err(&p, item("cubbyhole/none")).await;
        assert_eq!(e.kind, ErrorKind::NotFound, "{e}");
        // Writes to a non-KV engine are refused.
        let e = put(&p, item("cubbyhole/dyn"), "x").await.unwrap_err();
        assert_eq!(e.kind, ErrorKind::Unsupported, "{e}");

        // KV v1 writes merge too, and deletes.
        put(&p, item_field("kv1/db", "host"), "h").await.unwrap();
        let (_, now) = bao.api_ns(None, "GET", "kv1/db", None).await;
        assert_eq!(
            now["data"],
            json!({"user": "dbu", "pass": CANARY, "host": "h"})
        );
        p.delete(&item_field("kv1/db", "host")).await.unwrap();
        let (_, now) = bao.api_ns(None, "GET", "kv1/db", None).await;
        assert_eq!(now["data"], json!({"user": "dbu", "pass": CANARY}));
        p.delete(&item("kv1/db")).await.unwrap();
        let (status, _) = bao.api_ns(None, "GET", "kv1/db", None).await;
        assert_eq!(status, 404);
    });
}

#[test]
fn malformed_refs_are_rejected_before_any_call() {
    let proj = Project::new();
    // Nothing listens there: a network call would give Network, not BadReference.
    let port = free_port();
    let p = proj.provider(
        &format!("address = \"http://127.0.0.1:{port}\""),
        "token = \"root\"",
        &[],
    );
    rt().block_on(async {
        for r in ["", "/", "secret//app", "secret/../x", "secret/app#", "./a"] {
            let e = get_err(&p, item(r)).await;
            assert_eq!(e.kind, ErrorKind::BadReference, "{r}: {e}");
            assert!(e.help.is_some());
        }
        let e = get_err(&p, item_field("secret/app#a", "b")).await;
        assert_eq!(e.kind, ErrorKind::BadReference, "{e}");
        let e = get_err(&p, item_version("secret/app", "0")).await;
        assert_eq!(e.kind, ErrorKind::BadReference, "{e}");
        let mut it = item("secret/app");
        it.params = vec![("colour".into(), "red".into())];
        let e = get_err(&p, it).await;
        assert_eq!(e.kind, ErrorKind::BadReference, "{e}");
    });
}

#[test]
fn namespaces_are_sent_as_a_header() {
    let bao = Bao::start();
    let proj = Project::new();
    rt().block_on(async {
        bao.api("POST", "sys/namespaces/team", None).await;
        let (s, j) = bao
            .api_ns(
                Some("team"),
                "POST",
                "sys/mounts/secret",
                Some(json!({"type": "kv", "options": {"version": "2"}})),
            )
            .await;
        assert_eq!(s, 204, "{j}");
        let (s, j) = bao
            .api_ns(
                Some("team"),
                "POST",
                "secret/data/nsonly",
                Some(json!({"data": {"value": "in-team"}})),
            )
            .await;
        assert_eq!(s, 200, "{j}");
    });
    let with_ns = proj.root(&bao, "namespace = \"team\"");
    let without = proj.root(&bao, "");
    let from_env = proj.provider(
        &format!("address = \"{}\"", bao.addr),
        "token = \"root\"",
        &[("VAULT_NAMESPACE", "team/")],
    );
    rt().block_on(async {
        assert_eq!(
            get(&with_ns, item("secret/nsonly")).await.unwrap(),
            "in-team"
        );
        assert_eq!(
            get(&from_env, item("secret/nsonly")).await.unwrap(),
            "in-team"
        );
        let e = get_err(&without, item("secret/nsonly")).await;
        assert_eq!(e.kind, ErrorKind::NotFound, "{e}");
        // The namespace can also be written as a path prefix, without the header.
        assert_eq!(
            get(&without, item("team/secret/nsonly")).await.unwrap(),
            "in-team"
        );
        // Writes go into the namespace.
        put(&with_ns, item_field("secret/nsonly", "extra"), "x")
            .await
            .unwrap();
        let (_, j) = bao
            .api_ns(Some("team"), "GET", "secret/data/nsonly", None)
            .await;
        assert_eq!(j["data"]["data"], json!({"value": "in-team", "extra": "x"}));
    });
    let d = with_ns.describe();
    assert!(d.details.contains(&("namespace".into(), "team".into())));
}

#[test]
fn token_sources_in_order() {
    let bao = Bao::start();
    let proj = Project::new();
    let addr = format!("address = \"{}\"", bao.addr);
    rt().block_on(bao.put_kv2("t", json!({"value": "tok-ok"})));
    let token_file = proj.path().join("tok");
    std::fs::write(&token_file, "root\n").unwrap();
    let cases: Vec<(&str, VaultProvider)> = vec![
        (
            "option token",
            proj.provider(&addr, "token = \"root\"", &[]),
        ),
        (
            "token_env",
            proj.provider(
                &format!("{addr}\ntoken_env = \"MY_TOKEN\""),
                "",
                &[("MY_TOKEN", "root"), ("VAULT_TOKEN", "bogus")],
            ),
        ),
        (
            "token_file (relative to the config file)",
            proj.provider(&format!("{addr}\ntoken_file = \"tok\""), "", &[]),
        ),
        (
            "auth table with token_env",
            proj.provider(
                &format!("{addr}\nauth = {{ method = \"token\", token_env = \"T2\" }}"),
                "",
                &[("T2", "root")],
            ),
        ),
        (
            "VAULT_TOKEN before BAO_TOKEN",
            proj.provider(
                &addr,
                "",
                &[("VAULT_TOKEN", "root"), ("BAO_TOKEN", "bogus")],
            ),
        ),
        (
            "BAO_TOKEN",
            proj.provider(&addr, "", &[("BAO_TOKEN", "root")]),
        ),
        (
            "VAULT_ADDR and VAULT_TOKEN",
            proj.provider(
                "",
                "",
                &[("VAULT_ADDR", &bao.addr), ("VAULT_TOKEN", "root")],
            ),
        ),
        (
            "BAO_ADDR",
            proj.provider("", "", &[("BAO_ADDR", &bao.addr), ("BAO_TOKEN", "root")]),
        ),
    ];
    rt().block_on(async {
        for (what, p) in &cases {
            assert_eq!(
                get(p, item("secret/t"))
                    .await
                    .unwrap_or_else(|e| panic!("{what}: {e}")),
                "tok-ok",
                "{what}"
            );
        }
        // No token anywhere: an Auth error saying how to log in.
        let p = proj.provider(&addr, "", &[]);
        let e = get_err(&p, item("secret/t")).await;
        assert_eq!(e.kind, ErrorKind::Auth, "{e}");
        assert!(e.message.contains("VAULT_TOKEN"), "{e}");
        assert!(e.help.unwrap().contains("login"));
        // ~/.vault-token (HOME from the build context).
        std::fs::write(proj.home().join(".vault-token"), "root").unwrap();
        assert_eq!(get(&p, item("secret/t")).await.unwrap(), "tok-ok");
        // An explicit token_env that is unset is an error naming it (no silent fallback).
        let p = proj.provider(
            &format!("{addr}\ntoken_env = \"UNSET_VAR\""),
            "",
            &[("VAULT_TOKEN", "root")],
        );
        let e = get_err(&p, item("secret/t")).await;
        assert_eq!(e.kind, ErrorKind::Auth, "{e}");
        assert!(e.message.contains("UNSET_VAR"), "{e}");
    });
    // describe names the source, never the token.
    let p = proj.provider(&addr, "token = \"root-secret-token\"", &[]);
    let d = format!("{:?} {p:?}", p.describe());
    assert!(
        d.contains("option `token`") && !d.contains("root-secret-token"),
        "{d}"
    );
}

#[test]
fn denied_and_invalid_tokens_are_auth_errors() {
    let bao = Bao::start();
    let proj = Project::new();
    let limited = rt().block_on(async {
        bao.put_kv2("allowed", json!({"value": "fine"})).await;
        bao.put_kv2("private", json!({"value": CANARY})).await;
        bao.api(
            "PUT",
            "sys/policies/acl/only-allowed",
            Some(json!({"policy": "path \"secret/data/allowed\" { capabilities = [\"read\"] }"})),
        )
        .await;
        let t = bao
            .api(
                "POST",
                "auth/token/create",
                Some(json!({"policies": ["only-allowed"]})),
            )
            .await;
        t["auth"]["client_token"].as_str().unwrap().to_string()
    });
    let addr = format!("address = \"{}\"", bao.addr);
    let p = proj.provider(&addr, &format!("token = \"{limited}\""), &[]);
    let bogus = proj.provider(&addr, "token = \"not-a-real-token\"", &[]);
    rt().block_on(async {
        // A limited token reads what its policy allows, by logical path too.
        assert_eq!(get(&p, item("secret/allowed")).await.unwrap(), "fine");
        let e = get_err(&p, item("secret/private")).await;
        assert_eq!(e.kind, ErrorKind::Auth, "{e}");
        assert!(e.message.contains("permission denied"), "{e}");
        assert!(e.help.is_some());
        assert!(!format!("{e:?}").contains(&limited));
        let e = put(&p, item("secret/allowed"), CANARY).await.unwrap_err();
        assert_clean(&e);
        assert_eq!(e.kind, ErrorKind::Auth, "{e}");

        let e = get_err(&bogus, item("secret/allowed")).await;
        assert_eq!(e.kind, ErrorKind::Auth, "{e}");
        assert!(!format!("{e} {e:?}").contains("not-a-real-token"));
        let e = bogus.check().await.unwrap_err();
        assert_eq!(e.kind, ErrorKind::Auth, "{e}");
        p.check().await.unwrap();
    });
}

#[test]
fn writes_merge_with_check_and_set() {
    let bao = Bao::start();
    let proj = Project::new();
    let p = Arc::new(proj.root(&bao, ""));
    rt().block_on(async {
        bao.put_kv2("w", json!({"keep": CANARY})).await;
        // A field merges into the secret, keeping the other keys.
        put(&p, item_field("secret/w", "added"), "a1")
            .await
            .unwrap();
        let (data, version) = bao.get_kv2("w").await.unwrap();
        assert_eq!(data, json!({"keep": CANARY, "added": "a1"}));
        assert_eq!(version, 2);
        // #field and the API path work for writes too; overwriting one key keeps the rest.
        put(&p, item("secret/data/w#added"), "a2").await.unwrap();
        let (data, version) = bao.get_kv2("w").await.unwrap();
        assert_eq!(data, json!({"keep": CANARY, "added": "a2"}));
        assert_eq!(version, 3);
        // Without a field: {"value": V}, merged likewise.
        put(&p, item("secret/w"), "v").await.unwrap();
        let (data, _) = bao.get_kv2("w").await.unwrap();
        assert_eq!(data, json!({"keep": CANARY, "added": "a2", "value": "v"}));
        // A new secret is created (cas 0).
        put(&p, item("secret/brand/new"), "fresh").await.unwrap();
        assert_eq!(
            bao.get_kv2("brand/new").await.unwrap(),
            (json!({"value": "fresh"}), 1)
        );
        assert_eq!(get(&p, item("secret/brand/new")).await.unwrap(), "fresh");

        // Concurrent writers of different fields: none is lost (check-and-set, retried).
        let mut set = tokio::task::JoinSet::new();
        for i in 0..4 {
            let p = Arc::clone(&p);
            set.spawn(async move {
                let it = item_field("secret/w", &format!("f{i}"));
                let mut last = None;
                for _ in 0..3 {
                    match put(&p, it.clone(), &format!("val{i}")).await {
                        Ok(()) => return (i, None),
                        Err(e) if e.transient => last = Some(e),
                        Err(e) => return (i, Some(e)),
                    }
                }
                (i, last)
            });
        }
        let results = set.join_all().await;
        let (data, _) = bao.get_kv2("w").await.unwrap();
        assert_eq!(data["keep"], CANARY);
        for (i, err) in results {
            match err {
                None => assert_eq!(data[format!("f{i}")], format!("val{i}"), "{data}"),
                Some(e) => {
                    assert_clean(&e);
                    panic!("write {i} failed: {e}");
                }
            }
        }

        // A stale check-and-set is refused by the server (what kz relies on).
        let (s, _) = bao
            .api_ns(
                None,
                "POST",
                "secret/data/w",
                Some(json!({"options": {"cas": 1}, "data": {"x": "y"}})),
            )
            .await;
        assert_eq!(s, 400);

        // Non-UTF-8 values are refused, naming no value.
        let e = p
            .write(
                &item("secret/w"),
                &SecretValue::from_bytes(vec![0xff, 0xfe]),
            )
            .await
            .unwrap_err();
        assert_eq!(e.kind, ErrorKind::Unsupported, "{e}");
        // `version` cannot be written.
        let e = put(&p, item_version("secret/w", "1"), "x")
            .await
            .unwrap_err();
        assert_eq!(e.kind, ErrorKind::BadReference, "{e}");
    });
}

#[test]
fn delete_latest_version_or_one_field() {
    let bao = Bao::start();
    let proj = Project::new();
    let p = proj.root(&bao, "");
    rt().block_on(async {
        bao.put_kv2("d", json!({"a": "1", "b": CANARY})).await;
        // One field: the others stay.
        p.delete(&item_field("secret/d", "a")).await.unwrap();
        assert_eq!(bao.get_kv2("d").await.unwrap(), (json!({"b": CANARY}), 2));
        // A missing field: Field error listing keys.
        let e = p.delete(&item("secret/d#zz")).await.unwrap_err();
        assert_clean(&e);
        assert_eq!(e.kind, ErrorKind::Field, "{e}");
        assert!(e.help.unwrap().contains('b'));
        // Whole secret: the latest version is deleted (older ones remain readable).
        p.delete(&item("secret/d")).await.unwrap();
        assert!(bao.get_kv2("d").await.is_none());
        let e = get_err(&p, item("secret/d")).await;
        assert_eq!(e.kind, ErrorKind::NotFound);
        assert_eq!(
            get(&p, item_version("secret/d", "1")).await.unwrap(),
            json!({"a": "1", "b": CANARY}).to_string()
        );
        // A field of a missing secret: NotFound.
        let e = p.delete(&item_field("secret/d", "b")).await.unwrap_err();
        assert_eq!(e.kind, ErrorKind::NotFound, "{e}");
        // Writing after a delete continues the version history (cas = the deleted version).
        put(&p, item("secret/d"), "again").await.unwrap();
        assert_eq!(
            bao.get_kv2("d").await.unwrap(),
            (json!({"value": "again"}), 3)
        );
    });
}

#[test]
fn approle_logs_in_once_for_many_secrets() {
    let bao = Bao::start();
    let proj = Project::new();
    let (role_id, secret_id, accessor) = rt().block_on(async {
        for i in 0..20 {
            bao.put_kv2(&format!("many/s{i}"), json!({"value": format!("v{i}")}))
                .await;
        }
        bao.api(
            "PUT",
            "sys/policies/acl/reader",
            Some(json!({"policy": "path \"secret/data/many/*\" { capabilities = [\"read\"] }"})),
        )
        .await;
        bao.api("POST", "sys/auth/approle", Some(json!({"type": "approle"})))
            .await;
        bao.api(
            "POST",
            "auth/approle/role/kz",
            Some(json!({"token_policies": ["reader"], "token_ttl": "5m"})),
        )
        .await;
        let r = bao.api("GET", "auth/approle/role/kz/role-id", None).await;
        let s = bao
            .api(
                "POST",
                "auth/approle/role/kz/secret-id",
                Some(json!({"num_uses": 5})),
            )
            .await;
        (
            r["data"]["role_id"].as_str().unwrap().to_string(),
            s["data"]["secret_id"].as_str().unwrap().to_string(),
            s["data"]["secret_id_accessor"]
                .as_str()
                .unwrap()
                .to_string(),
        )
    });
    let p = Arc::new(proj.provider(
        &format!(
            "address = \"{}\"\nauth = {{ method = \"approle\", role_id = \"{role_id}\", secret_id_env = \"VAULT_SECRET_ID\" }}",
            bao.addr
        ),
        "",
        &[("VAULT_SECRET_ID", &secret_id)],
    ));
    let described = format!("{:?} {p:?}", p.describe());
    assert!(described.contains("approle") && described.contains("$VAULT_SECRET_ID"));
    assert!(!described.contains(&secret_id), "{described}");
    rt().block_on(async {
        // 20 concurrent reads, as the engine would fan them out.
        let mut set = tokio::task::JoinSet::new();
        for i in 0..20 {
            let p = Arc::clone(&p);
            set.spawn(async move { (i, get(&p, item(&format!("secret/many/s{i}"))).await) });
        }
        for (i, r) in set.join_all().await {
            assert_eq!(r.unwrap(), format!("v{i}"));
        }
        p.check().await.unwrap();
        // The secret_id was used by exactly one login.
        let l = bao
            .api(
                "POST",
                "auth/approle/role/kz/secret-id-accessor/lookup",
                Some(json!({"secret_id_accessor": accessor})),
            )
            .await;
        assert_eq!(l["data"]["secret_id_num_uses"], 4, "{l}");
        // The token's policy applies: other paths are denied.
        bao.put_kv2("other", json!({"value": CANARY})).await;
        let e = get_err(&p, item("secret/other")).await;
        assert_eq!(e.kind, ErrorKind::Auth, "{e}");

        // A wrong secret_id: Auth error (no value in it).
        let bad = proj.provider(
            &format!(
                "address = \"{}\"\nauth = {{ method = \"approle\", role_id = \"{role_id}\", secret_id_env = \"SID\" }}",
                bao.addr
            ),
            "",
            &[("SID", CANARY)],
        );
        let e = get_err(&bad, item("secret/many/s1")).await;
        assert_eq!(e.kind, ErrorKind::Auth, "{e}");
        assert!(e.help.unwrap().contains("approle"));
        // An unset secret_id variable: Auth error naming it.
        let unset = proj.provider(
            &format!(
                "address = \"{}\"\nauth = {{ method = \"approle\", role_id = \"{role_id}\", secret_id_env = \"SID\" }}",
                bao.addr
            ),
            "",
            &[],
        );
        let e = get_err(&unset, item("secret/many/s1")).await;
        assert_eq!(e.kind, ErrorKind::Auth, "{e}");
        assert!(e.message.contains("$SID"), "{e}");
    });
}

#[test]
fn login_tokens_are_renewed_before_expiry() {
    let bao = Bao::start();
    let proj = Project::new();
    let (role_id, secret_id, accessor) = rt().block_on(async {
        bao.put_kv2("r", json!({"value": "renewed"})).await;
        bao.api(
            "PUT",
            "sys/policies/acl/reader",
            Some(json!({"policy": "path \"secret/data/r\" { capabilities = [\"read\"] }"})),
        )
        .await;
        bao.api("POST", "sys/auth/approle", Some(json!({"type": "approle"})))
            .await;
        bao.api(
            "POST",
            "auth/approle/role/short",
            Some(json!({"token_policies": ["reader"], "token_ttl": "3s", "token_max_ttl": "1m"})),
        )
        .await;
        let r = bao
            .api("GET", "auth/approle/role/short/role-id", None)
            .await;
        let s = bao
            .api(
                "POST",
                "auth/approle/role/short/secret-id",
                Some(json!({"num_uses": 5})),
            )
            .await;
        (
            r["data"]["role_id"].as_str().unwrap().to_string(),
            s["data"]["secret_id"].as_str().unwrap().to_string(),
            s["data"]["secret_id_accessor"]
                .as_str()
                .unwrap()
                .to_string(),
        )
    });
    let p = proj.provider(
        &format!(
            "address = \"{}\"\nauth = {{ method = \"approle\", role_id = \"{role_id}\", secret_id_file = \"sid\" }}",
            bao.addr
        ),
        "",
        &[],
    );
    std::fs::write(proj.path().join("sid"), format!("{secret_id}\n")).unwrap();
    rt().block_on(async {
        assert_eq!(get(&p, item("secret/r")).await.unwrap(), "renewed");
        // Past two thirds of the 3 s lease, before its end: renewed, not logged in again.
        tokio::time::sleep(Duration::from_millis(2300)).await;
        assert_eq!(get(&p, item("secret/r")).await.unwrap(), "renewed");
        // Renewed again later: the token outlives its first lease.
        tokio::time::sleep(Duration::from_millis(2300)).await;
        assert_eq!(get(&p, item("secret/r")).await.unwrap(), "renewed");
        let l = bao
            .api(
                "POST",
                "auth/approle/role/short/secret-id-accessor/lookup",
                Some(json!({"secret_id_accessor": accessor})),
            )
            .await;
        assert_eq!(l["data"]["secret_id_num_uses"], 4, "{l}");
    });
}

/// Generates an RSA key pair with the openssl CLI (fails with an install hint when missing).
fn rsa_key(dir: &Path) -> (Vec<u8>, String) {
    let key = dir.join("jwt.key");
    let out = std::process::Command::new("openssl")
        .args([
            "genpkey",
            "-algorithm",
            "RSA",
            "-pkeyopt",
            "rsa_keygen_bits:2048",
            "-out",
        ])
        .arg(&key)
        .output()
        .unwrap_or_else(|e| {
            panic!("openssl is needed to make a JWT signing key ({e}): apt-get install openssl")
        });
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = std::process::Command::new("openssl")
        .args(["pkey", "-pubout", "-in"])
        .arg(&key)
        .output()
        .unwrap();
    assert!(out.status.success());
    (
        std::fs::read(&key).unwrap(),
        String::from_utf8(out.stdout).unwrap(),
    )
}

fn sign_jwt(private_pem: &[u8], sub: &str, aud: &str) -> String {
    let now = jsonwebtoken::get_current_timestamp();
    let claims = json!({
        "iss": "https://issuer.test",
        "sub": sub,
        "aud": aud,
        "iat": now,
        "nbf": now - 5,
        "exp": now + 600,
    });
    jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::RS256),
        &claims,
        &jsonwebtoken::EncodingKey::from_rsa_pem(private_pem).unwrap(),
    )
    .unwrap()
}

#[test]
fn jwt_and_kubernetes_logins() {
    let bao = Bao::start();
    let proj = Project::new();
    let (private, public) = rsa_key(proj.path());
    rt().block_on(async {
        bao.put_kv2("ci", json!({"value": "from-jwt"})).await;
        bao.api(
            "PUT",
            "sys/policies/acl/ci",
            Some(json!({"policy": "path \"secret/data/ci\" { capabilities = [\"read\"] }"})),
        )
        .await;
        // `jwt` at its default mount, and a second jwt backend mounted at `kubernetes`: kz's
        // Kubernetes login is the same request (role + the service-account JWT from a file).
        for mount in ["jwt", "kubernetes"] {
            bao.api(
                "POST",
                &format!("sys/auth/{mount}"),
                Some(json!({"type": "jwt"})),
            )
            .await;
            bao.api(
                "POST",
                &format!("auth/{mount}/config"),
                Some(json!({"jwt_validation_pubkeys": [public], "bound_issuer": "https://issuer.test"})),
            )
            .await;
            bao.api(
                "POST",
                &format!("auth/{mount}/role/ci"),
                Some(json!({
                    "role_type": "jwt",
                    "user_claim": "sub",
                    "bound_audiences": ["vault"],
                    "token_policies": ["ci"],
                })),
            )
            .await;
        }
    });
    let jwt = sign_jwt(&private, "pipeline", "vault");
    let p = proj.provider(
        &format!(
            "address = \"{}\"\nauth = {{ method = \"jwt\", role = \"ci\", token_env = \"CI_JWT\" }}",
            bao.addr
        ),
        "",
        &[("CI_JWT", &jwt)],
    );
    std::fs::write(proj.path().join("sa-token"), &jwt).unwrap();
    let k8s = proj.provider(
        &format!(
            "address = \"{}\"\nauth = {{ method = \"kubernetes\", role = \"ci\", token_file = \"sa-token\" }}",
            bao.addr
        ),
        "",
        &[],
    );
    // A custom mount: the kubernetes backend reached as `jwt` through `mount`.
    let mounted = proj.provider(
        &format!(
            "address = \"{}\"\nauth = {{ method = \"kubernetes\", role = \"ci\", token_file = \"sa-token\", mount = \"jwt\" }}",
            bao.addr
        ),
        "",
        &[],
    );
    let wrong_aud = sign_jwt(&private, "pipeline", "other");
    let bad = proj.provider(
        &format!(
            "address = \"{}\"\nauth = {{ method = \"jwt\", role = \"ci\", token_env = \"CI_JWT\" }}",
            bao.addr
        ),
        "",
        &[("CI_JWT", &wrong_aud)],
    );
    rt().block_on(async {
        assert_eq!(get(&p, item("secret/ci")).await.unwrap(), "from-jwt");
        assert_eq!(get(&k8s, item("secret/ci")).await.unwrap(), "from-jwt");
        assert_eq!(get(&mounted, item("secret/ci")).await.unwrap(), "from-jwt");
        let e = get_err(&bad, item("secret/ci")).await;
        assert_eq!(e.kind, ErrorKind::Auth, "{e}");
        assert!(!format!("{e} {e:?}").contains(&wrong_aud));
        let e = bad.check().await.unwrap_err();
        assert_eq!(e.kind, ErrorKind::Auth, "{e}");
    });
    let d = format!("{:?}", k8s.describe());
    assert!(d.contains("kubernetes") && !d.contains(&jwt), "{d}");
    // The default Kubernetes token file is the pod's service-account token.
    let default_k8s = proj.provider("auth = { method = \"kubernetes\", role = \"r\" }", "", &[]);
    assert!(
        format!("{:?}", default_k8s.describe())
            .contains("/var/run/secrets/kubernetes.io/serviceaccount/token")
    );
}

#[test]
fn auth_configuration_errors() {
    let proj = Project::new();
    let e = proj
        .try_provider(
            "auth = { method = \"approle\", secret_id_env = \"X\" }",
            "",
            &[],
        )
        .unwrap_err();
    assert_eq!(e.kind, ErrorKind::Config, "{e}");
    assert!(e.message.contains("role_id"), "{e}");
    let e = proj
        .try_provider("auth = { method = \"jwt\", role = \"r\" }", "", &[])
        .unwrap_err();
    assert_eq!(e.kind, ErrorKind::Config, "{e}");
    let e = proj
        .try_provider("auth = \"approle\"", "", &[])
        .unwrap_err();
    assert_eq!(e.kind, ErrorKind::Config, "{e}");
    let e = proj
        .try_provider("address = \"ftp://127.0.0.1\"", "", &[])
        .unwrap_err();
    assert_eq!(e.kind, ErrorKind::Config, "{e}");
    let e = proj
        .try_provider("ca_cert = \"missing.pem\"", "", &[])
        .unwrap_err();
    assert_eq!(e.kind, ErrorKind::Config, "{e}");
    assert!(e.message.contains("missing.pem"), "{e}");
    // The default address.
    let p = proj.provider("", "", &[]);
    assert!(format!("{:?}", p.describe()).contains("http://127.0.0.1:8200"));
}

#[test]
fn tls_with_and_without_ca_cert() {
    let bao = Bao::start_tls();
    let proj = Project::new();
    let ca = bao.ca.clone().unwrap();
    rt().block_on(bao.put_kv2("tls", json!({"value": "over-tls"})));
    let trusted = proj.root(&bao, &format!("ca_cert = \"{}\"", ca.display()));
    let untrusted = proj.root(&bao, "");
    rt().block_on(async {
        assert_eq!(get(&trusted, item("secret/tls")).await.unwrap(), "over-tls");
        trusted.check().await.unwrap();
        let e = get_err(&untrusted, item("secret/tls")).await;
        assert_eq!(e.kind, ErrorKind::Network, "{e}");
        assert!(e.message.contains("TLS"), "{e}");
        assert!(e.help.unwrap().contains("ca_cert"));
    });
}

#[test]
fn server_down_is_a_quick_transient_network_error() {
    let proj = Project::new();
    let port = free_port();
    let p = proj.provider(
        &format!("address = \"http://127.0.0.1:{port}\""),
        "token = \"root\"",
        &[],
    );
    rt().block_on(async {
        let start = Instant::now();
        let e = get_err(&p, item("secret/app")).await;
        assert_eq!(e.kind, ErrorKind::Network, "{e}");
        assert!(e.transient);
        assert!(e.message.contains(&port.to_string()), "{e}");
        assert!(e.help.is_some());
        let e = p.check().await.unwrap_err();
        assert_eq!(e.kind, ErrorKind::Network, "{e}");
        let e = put(&p, item("secret/app"), CANARY).await.unwrap_err();
        assert_clean(&e);
        assert!(start.elapsed() < Duration::from_secs(5));
    });
}

#[test]
fn slow_server_times_out() {
    let proj = Project::new();
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    // Accepts connections and never answers.
    let _hold = std::thread::spawn(move || {
        let mut held = Vec::new();
        for s in listener.incoming().take(8) {
            held.push(s);
        }
        std::thread::sleep(Duration::from_secs(30));
    });
    let p = proj.provider(
        &format!("address = \"http://127.0.0.1:{port}\"\ntimeout = \"1s\""),
        "token = \"root\"",
        &[],
    );
    rt().block_on(async {
        let start = Instant::now();
        let e = get_err(&p, item("secret/app")).await;
        assert_eq!(e.kind, ErrorKind::Timeout, "{e}");
        assert!(e.message.contains("1s"), "{e}");
        let e = p.check().await.unwrap_err();
        assert_eq!(e.kind, ErrorKind::Timeout, "{e}");
        assert!(
            start.elapsed() < Duration::from_secs(6),
            "{:?}",
            start.elapsed()
        );
    });
}
