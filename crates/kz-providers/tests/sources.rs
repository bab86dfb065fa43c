//! `Provider::sources`: every provider names the files its values and backend credentials come
//! from (what `kz run --blind --isolate` hides), from its options and environment, without
//! reading anything secret.
#![allow(clippy::unwrap_used, clippy::panic, clippy::indexing_slicing)]

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use kz_config::{LoadRequest, load};
use kz_providers::BuildContext;
use kz_resolve::Item;

fn ctx(dir: &Path, env: &[(&str, &str)]) -> BuildContext {
    let env: HashMap<String, String> = env
        .iter()
        .map(|(k, v)| ((*k).to_string(), (*v).to_string()))
        .collect();
    BuildContext {
        home: Some(dir.join("home")),
        config_home: dir.join("config"),
        data_home: dir.join("data"),
        runtime_dir: Some(dir.join("run")),
        project_dir: dir.to_path_buf(),
        getenv: Arc::new(move |k| env.get(k).cloned()),
        verbose: false,
        interactive: false,
    }
}

/// Builds instance `p` declared by `options` and returns its sources for these references.
fn sources(
    ty: &str,
    options: &str,
    env: &[(&str, &str)],
    refs: &[&str],
) -> (PathBuf, Vec<PathBuf>) {
    let tmp = tempfile::tempdir().unwrap();
    let dir = std::fs::canonicalize(tmp.path()).unwrap();
    std::fs::write(
        dir.join(".keyzero.toml"),
        format!("[providers.p]\ntype = \"{ty}\"\n{options}\n"),
    )
    .unwrap();
    let loaded = load(&LoadRequest {
        start_dir: &dir,
        config_file: None,
        env_flag: None,
        global_file: None,
        getenv: &|k| (k == "HOME").then(|| dir.join("home").display().to_string()),
    });
    let config = loaded
        .config
        .unwrap_or_else(|| panic!("{:?}", loaded.diagnostics));
    let inst = config.provider("p").unwrap();
    let p = kz_providers::build(inst, &ctx(&dir, env)).unwrap();
    let items: Vec<Item> = refs
        .iter()
        .map(|r| Item {
            name: "X".into(),
            reference: (*r).to_string(),
            field: None,
            params: vec![],
        })
        .collect();
    let got = p.sources(&items);
    // Keep the directory alive for the caller's comparisons (paths only).
    std::mem::forget(tmp);
    (dir, got)
}

#[test]
fn local_names_its_store_record_and_identity() {
    let (d, got) = sources("local", "", &[], &["proj/A"]);
    assert_eq!(
        got,
        [
            d.join("data/keyzero/store.age"),
            d.join("data/keyzero/store.age.meta"),
            d.join("config/keyzero/identity.txt"),
        ]
    );
    let (d, got) = sources(
        "local",
        "path = \"s/store.age\"\nidentity = \"~/id.txt\"",
        &[],
        &[],
    );
    assert_eq!(
        got,
        [
            d.join("s/store.age"),
            d.join("s/store.age.meta"),
            d.join("home/id.txt")
        ]
    );
}

#[test]
fn dotenv_names_its_file() {
    let (d, got) = sources("dotenv", "", &[], &["A"]);
    assert_eq!(got, [d.join(".env")]);
    let (d, got) = sources("dotenv", "path = \"conf/app.env\"", &[], &["A"]);
    assert_eq!(got, [d.join("conf/app.env")]);
}

#[test]
fn age_names_identities_and_the_files_of_the_references() {
    let (d, got) = sources(
        "age",
        "identity = [\"keys/a.txt\", \"/etc/kz/b.txt\"]",
        &[],
        &["secrets/db.age", "/abs/x.age", "../out.age"],
    );
    assert_eq!(
        got,
        [
            d.join("keys/a.txt"),
            PathBuf::from("/etc/kz/b.txt"),
            d.join("secrets/db.age"),
            PathBuf::from("/abs/x.age"),
        ]
    );
    let (_, got) = sources(
        "age",
        "",
        &[("KEYZERO_AGE_IDENTITY_FILE", "/keys/id.txt")],
        &[],
    );
    assert_eq!(got, [PathBuf::from("/keys/id.txt")]);
}

#[cfg(feature = "hashicorp")]
#[test]
fn hashicorp_names_its_token_files() {
    let addr = "address = \"http://127.0.0.1:8200\"";
    let (d, got) = sources("hashicorp", addr, &[], &["kv/a"]);
    assert_eq!(got, [d.join("home/.vault-token")]);
    let (d, got) = sources(
        "hashicorp",
        &format!("{addr}\ntoken_file = \"~/tok\""),
        &[],
        &[],
    );
    assert_eq!(got, [d.join("home/tok")]);
    let (d, got) = sources(
        "hashicorp",
        &format!(
            "{addr}\nauth = {{ method = \"approle\", role_id = \"r\", secret_id_file = \"sid\" }}"
        ),
        &[],
        &[],
    );
    assert_eq!(got, [d.join("sid")]);
    let (_, got) = sources(
        "hashicorp",
        &format!("{addr}\nauth = {{ method = \"kubernetes\", role = \"r\" }}"),
        &[],
        &[],
    );
    assert_eq!(
        got,
        [PathBuf::from(
            "/var/run/secrets/kubernetes.io/serviceaccount/token"
        )]
    );
}

#[cfg(feature = "aws")]
#[test]
fn aws_names_the_shared_files_and_the_web_identity_token() {
    let (d, got) = sources(
        "aws",
        "region = \"us-east-1\"",
        &[
            ("AWS_SHARED_CREDENTIALS_FILE", "/creds/aws"),
            ("AWS_CONFIG_FILE", "~/cfg/aws"),
            ("AWS_WEB_IDENTITY_TOKEN_FILE", "/var/run/token"),
        ],
        &[],
    );
    assert_eq!(
        got,
        [
            d.join("home/.aws"),
            PathBuf::from("/creds/aws"),
            d.join("home/cfg/aws"),
            PathBuf::from("/var/run/token"),
        ]
    );
    let (d, got) = sources("aws_sts", "region = \"us-east-1\"", &[], &[]);
    assert_eq!(got, [d.join("home/.aws")]);
}

#[cfg(feature = "gcp")]
#[test]
fn gcp_names_the_key_file_and_gclouds_directory() {
    let (d, got) = sources(
        "gcp",
        "project = \"p\"\ncredentials = \"key.json\"",
        &[("GOOGLE_APPLICATION_CREDENTIALS", "/sa.json")],
        &[],
    );
    assert_eq!(
        got,
        [
            d.join("key.json"),
            PathBuf::from("/sa.json"),
            d.join("home/.config/gcloud")
        ]
    );
    let (_, got) = sources("gcp", "project = \"p\"", &[("CLOUDSDK_CONFIG", "/gc")], &[]);
    assert_eq!(got, [PathBuf::from("/gc")]);
}

#[cfg(feature = "onepassword")]
#[test]
fn onepassword_names_the_cli_and_app_directories() {
    let (d, got) = sources("1password", "", &[("OP_CONFIG_DIR", "/opc")], &[]);
    for want in [
        PathBuf::from("/opc"),
        d.join("config/op"),
        d.join("home/.config/op"),
        d.join("home/.op"),
        d.join("home/.1password"),
    ] {
        assert!(got.contains(&want), "{want:?} missing from {got:?}");
    }
}

#[cfg(feature = "keychain")]
#[test]
fn keychain_names_the_session_bus_and_the_keyrings() {
    let (d, got) = sources("keychain", "", &[], &[]);
    assert_eq!(got, [d.join("run/bus"), d.join("data/keyrings")]);
}

#[test]
fn env_and_exec_name_nothing() {
    assert!(sources("env", "", &[], &["A"]).1.is_empty());
    assert!(
        sources("exec", "command = [\"/bin/true\"]", &[], &["A"])
            .1
            .is_empty()
    );
}
