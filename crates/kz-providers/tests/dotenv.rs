//! The `dotenv` provider against real files.
// Test helpers may unwrap and panic: a panic here is a failed assertion (clippy.toml's
// `allow-*-in-tests` covers `#[test]` functions only, not their helpers).
#![allow(clippy::unwrap_used, clippy::panic, clippy::indexing_slicing)]

use std::path::Path;
use std::sync::Arc;

use kz_config::{LoadRequest, ProviderInstance, load};
use kz_providers::BuildContext;
use kz_providers::dotenv::DotenvProvider;
use kz_resolve::{ErrorKind, Item, Provider, ProviderError};
use kz_secret::{Resolved, SecretValue};

const CANARY: &str = "kz-canary-5d1e7b";

fn ctx(dir: &Path) -> BuildContext {
    BuildContext {
        home: Some(dir.join("home")),
        config_home: dir.join("config"),
        data_home: dir.join("data"),
        runtime_dir: None,
        project_dir: dir.to_path_buf(),
        getenv: Arc::new(|_| None),
        verbose: false,
        interactive: false,
    }
}

fn instance(dir: &Path, toml: &str, name: &str) -> ProviderInstance {
    std::fs::write(dir.join(".keyzero.toml"), toml).unwrap();
    let loaded = load(&LoadRequest {
        start_dir: dir,
        config_file: None,
        env_flag: None,
        global_file: None,
        getenv: &|_| None,
    });
    let config = loaded
        .config
        .unwrap_or_else(|| panic!("{:?}", loaded.diagnostics));
    config.provider(name).unwrap().clone()
}

fn item(key: &str) -> Item {
    Item {
        name: format!("VAR_{key}"),
        reference: key.to_string(),
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

fn resolve(p: &dyn Provider, keys: &[&str]) -> Vec<Result<Resolved, ProviderError>> {
    let items: Vec<Item> = keys.iter().map(|k| item(k)).collect();
    let out = rt().block_on(p.resolve(&items));
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
fn error(r: Result<Resolved, ProviderError>) -> ProviderError {
    let e = r.unwrap_err();
    assert_no_canary(&e);
    e
}

fn assert_no_canary(e: &ProviderError) {
    let shown = format!("{e} {e:?} {:?}", e.help);
    assert!(!shown.contains(CANARY), "{shown}");
}

const ENV_FILE: &str = "\
# a comment with kz-canary-5d1e7b in it
export DB_URL=\"postgres://u:kz-canary-5d1e7b@h/db\"
API_KEY = 'abc $NOT_EXPANDED'
EMPTY=
MULTI=\"line1\\nline2\"
";

#[test]
fn resolves_a_batch_in_order_from_the_default_path() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join(".env"), ENV_FILE).unwrap();
    let p = DotenvProvider::new(
        &instance(dir.path(), "[providers.dotenv]\n", "dotenv"),
        &ctx(dir.path()),
    )
    .unwrap();
    assert!(p.max_batch() >= 1000);
    assert!(!p.handles_field());

    let out = resolve(&p, &["MULTI", "DB_URL", "NOPE", "API_KEY", "EMPTY"]);
    assert_eq!(value(&out[0]), "line1\nline2");
    assert_eq!(value(&out[1]), format!("postgres://u:{CANARY}@h/db"));
    assert_eq!(value(&out[3]), "abc $NOT_EXPANDED");
    assert_eq!(value(&out[4]), "");

    let mut out = out;
    let e = error(out.remove(2));
    assert_eq!(e.kind, ErrorKind::NotFound);
    assert!(
        e.message.contains("`NOPE`") && e.message.contains(".env"),
        "{e}"
    );
    assert!(e.help.unwrap().contains("NOPE="));
}

#[test]
fn path_option_is_relative_to_the_config_file() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("conf")).unwrap();
    std::fs::write(dir.path().join("conf/app.env"), "A=from-conf\n").unwrap();
    let inst = instance(
        dir.path(),
        "[providers.files]\ntype = \"env_file\"\npath = \"conf/app.env\"\n",
        "files",
    );
    let p = DotenvProvider::new(&inst, &ctx(dir.path())).unwrap();
    assert_eq!(value(&resolve(&p, &["A"])[0]), "from-conf");
    let d = p.describe();
    assert_eq!(d.type_name, "dotenv");
    assert_eq!(d.instance, "files");
    assert!(
        d.details
            .iter()
            .any(|(k, v)| k == "path" && v.ends_with("conf/app.env"))
    );
}

#[test]
fn the_file_is_read_again_on_every_resolve() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join(".env");
    std::fs::write(&file, "A=1\n").unwrap();
    let p = DotenvProvider::new(
        &instance(dir.path(), "[providers.dotenv]\n", "dotenv"),
        &ctx(dir.path()),
    )
    .unwrap();
    assert_eq!(value(&resolve(&p, &["A"])[0]), "1");
    std::fs::write(&file, "A=2\n").unwrap();
    assert_eq!(value(&resolve(&p, &["A"])[0]), "2");
}

#[test]
fn a_missing_file_is_a_config_error_naming_the_path() {
    let dir = tempfile::tempdir().unwrap();
    let inst = instance(
        dir.path(),
        "[providers.dotenv]\npath = \"missing.env\"\n",
        "dotenv",
    );
    let p = DotenvProvider::new(&inst, &ctx(dir.path())).unwrap();
    let mut out = resolve(&p, &["A", "B"]);
    let e = error(out.remove(0));
    assert_eq!(e.kind, ErrorKind::Config);
    assert!(
        e.message.contains("missing.env") && e.message.contains("does not exist"),
        "{e}"
    );
    assert!(e.help.as_deref().unwrap().contains("create"));
    assert_eq!(error(out.remove(0)).kind, ErrorKind::Config);
    let e = rt().block_on(p.check()).unwrap_err();
    assert_eq!(e.kind, ErrorKind::Config);
}

#[test]
fn a_syntax_error_names_file_and_line_but_no_value() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join(".env"),
        format!("A=1\nB=2\nTOKEN=\"{CANARY}\n{CANARY}\n"),
    )
    .unwrap();
    let p = DotenvProvider::new(
        &instance(dir.path(), "[providers.dotenv]\n", "dotenv"),
        &ctx(dir.path()),
    )
    .unwrap();
    let e = error(resolve(&p, &["A"]).remove(0));
    assert_eq!(e.kind, ErrorKind::Config);
    assert!(e.message.contains(".env:3:"), "{e}");
    assert!(e.message.contains("`TOKEN`"), "{e}");

    std::fs::write(dir.path().join(".env"), format!("A=1\n{CANARY}\n")).unwrap();
    let e = error(resolve(&p, &["A"]).remove(0));
    assert!(e.message.contains(".env:2:"), "{e}");
}

#[test]
fn a_file_that_is_not_utf8_is_a_config_error() {
    let dir = tempfile::tempdir().unwrap();
    let mut bytes = format!("A={CANARY}").into_bytes();
    bytes.push(0xff);
    std::fs::write(dir.path().join(".env"), bytes).unwrap();
    let p = DotenvProvider::new(
        &instance(dir.path(), "[providers.dotenv]\n", "dotenv"),
        &ctx(dir.path()),
    )
    .unwrap();
    let e = error(resolve(&p, &["A"]).remove(0));
    assert_eq!(e.kind, ErrorKind::Config);
    assert!(e.message.contains("UTF-8"));
}

#[test]
fn a_reference_that_is_not_a_key_is_rejected() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join(".env"), "A=1\n").unwrap();
    let p = DotenvProvider::new(
        &instance(dir.path(), "[providers.dotenv]\n", "dotenv"),
        &ctx(dir.path()),
    )
    .unwrap();
    let e = error(resolve(&p, &["has space"]).remove(0));
    assert_eq!(e.kind, ErrorKind::BadReference);
}

#[test]
fn writes_are_unsupported() {
    let dir = tempfile::tempdir().unwrap();
    let p = DotenvProvider::new(
        &instance(dir.path(), "[providers.dotenv]\n", "dotenv"),
        &ctx(dir.path()),
    )
    .unwrap();
    let e = rt()
        .block_on(p.write(&item("A"), &SecretValue::from_str_copy(CANARY)))
        .unwrap_err();
    assert_no_canary(&e);
    assert_eq!(e.kind, ErrorKind::Unsupported);
}

#[test]
fn build_dispatches_to_dotenv() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join(".env"), "A=x\n").unwrap();
    let p = kz_providers::build(
        &instance(dir.path(), "[providers.dotenv]\n", "dotenv"),
        &ctx(dir.path()),
    )
    .unwrap();
    assert_eq!(value(&resolve(p.as_ref(), &["A"])[0]), "x");
    rt().block_on(p.check()).unwrap();
}
