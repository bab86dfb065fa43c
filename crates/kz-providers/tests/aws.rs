//! The `aws` and `aws_sts` providers against a real moto server (`moto_server`, moto 5.2.5).
//!
//! One moto server is shared by the tests of this binary (starting one takes about 3 s; each
//! test uses its own secret names). It is stopped when the test process exits: it runs under a
//! `sh` wrapper that kills it by PID when the pipe the process holds closes (see
//! `support/moto.rs`). Tests that need a differently configured moto (IAM auth enforced) start
//! their own, stopped on `Drop`. AWS API calls are counted by a TCP forwarder placed between the
//! provider (`endpoint_url`) and moto, which records each request's `X-Amz-Target`.
//!
//! The AWS SDK reads the real process environment, so the environment is set once for the
//! whole binary (see [`aws_env`]): credentials come from a private shared-credentials file
//! (`[default]` = `test`/`test`, which moto accepts), instance metadata is disabled, and every
//! `AWS_*` variable of the outer environment that could change the outcome is removed.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

#[path = "support/aws_env.rs"]
mod aws_env;
use aws_env::aws_env;
#[path = "support/moto.rs"]
mod moto;

use std::collections::HashMap;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use aws_sdk_secretsmanager::primitives::Blob;
use aws_sdk_sts::primitives::{DateTime, DateTimeFormat};
use kz_config::{LoadRequest, ProviderInstance, load};
use kz_providers::BuildContext;
use kz_providers::aws::{AwsProvider, StsProvider};
use kz_resolve::{ErrorKind, Item, Provider, ProviderError};
use kz_secret::{Resolved, SecretValue};
use moto::{CountingProxy, Moto, free_port};

const CANARY: &str = "kz-canary-4e8b2a61";

// ---------------------------------------------------------------------------------------------
// Fixtures
// ---------------------------------------------------------------------------------------------

/// The moto server shared by this test binary.
fn moto() -> &'static Moto {
    static MOTO: OnceLock<Moto> = OnceLock::new();
    MOTO.get_or_init(|| Moto::start(&[]))
}

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

/// A project directory with a `.keyzero.local.toml` declaring provider instances.
struct Project {
    dir: tempfile::TempDir,
}

impl Project {
    fn new() -> Self {
        aws_env();
        Self {
            dir: tempfile::tempdir().unwrap(),
        }
    }

    /// Declares `[providers.NAME]` with `type` and options (values are TOML literals).
    fn instance(&self, name: &str, ty: &str, options: &[(&str, String)]) -> ProviderInstance {
        let mut toml = format!("[providers.{name}]\ntype = \"{ty}\"\n");
        for (k, v) in options {
            toml.push_str(&format!("{k} = {v}\n"));
        }
        std::fs::write(self.dir.path().join(".keyzero.toml"), "").unwrap();
        std::fs::write(self.dir.path().join(".keyzero.local.toml"), toml).unwrap();
        let loaded = load(&LoadRequest {
            start_dir: self.dir.path(),
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

    fn ctx(&self) -> BuildContext {
        let env: HashMap<String, String> = HashMap::new();
        BuildContext {
            home: Some(self.dir.path().join("home")),
            config_home: self.dir.path().join("config"),
            data_home: self.dir.path().join("data"),
            runtime_dir: None,
            project_dir: self.dir.path().to_path_buf(),
            getenv: Arc::new(move |k| env.get(k).cloned()),
            verbose: false,
            interactive: false,
        }
    }

    /// An `aws` provider pointed at `endpoint`.
    fn aws(&self, endpoint: &str, extra: &[(&str, String)]) -> AwsProvider {
        let mut opts = vec![("region", q("us-east-1")), ("endpoint_url", q(endpoint))];
        opts.extend(extra.iter().cloned());
        AwsProvider::new(&self.instance("secrets", "aws", &opts), &self.ctx()).unwrap()
    }

    /// An `aws_sts` provider pointed at `endpoint`.
    fn sts(&self, endpoint: &str, extra: &[(&str, String)]) -> StsProvider {
        let mut opts = vec![("region", q("us-east-1")), ("endpoint_url", q(endpoint))];
        opts.extend(extra.iter().cloned());
        StsProvider::new(&self.instance("deploy", "aws_sts", &opts), &self.ctx()).unwrap()
    }
}

/// A TOML string literal.
fn q(s: &str) -> String {
    format!("{s:?}")
}

fn item(reference: &str) -> Item {
    Item {
        name: "SECRET".to_string(),
        reference: reference.to_string(),
        field: None,
        params: vec![],
    }
}

fn with_field(reference: &str, field: &str) -> Item {
    Item {
        field: Some(field.to_string()),
        ..item(reference)
    }
}

fn with_params(reference: &str, params: &[(&str, &str)]) -> Item {
    Item {
        params: params
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
        ..item(reference)
    }
}

/// A unique prefix for this test's names on the shared moto server.
fn unique(test: &str) -> String {
    static N: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    format!(
        "kz-{test}-{}-{}",
        std::process::id(),
        N.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
    )
}

/// Test-side SDK clients talking straight to moto (for seeding and checking).
struct Seed {
    sm: aws_sdk_secretsmanager::Client,
    ssm: aws_sdk_ssm::Client,
}

impl Seed {
    async fn new(endpoint: &str) -> Self {
        let config = aws_config::defaults(aws_config::BehaviorVersion::latest())
            .region(aws_config::Region::new("us-east-1"))
            .endpoint_url(endpoint)
            .load()
            .await;
        Self {
            sm: aws_sdk_secretsmanager::Client::new(&config),
            ssm: aws_sdk_ssm::Client::new(&config),
        }
    }

    /// Creates a string secret; returns its ARN.
    async fn secret(&self, name: &str, value: &str) -> String {
        self.sm
            .create_secret()
            .name(name)
            .secret_string(value)
            .send()
            .await
            .unwrap()
            .arn
            .unwrap()
    }

    /// Adds a version; returns its id.
    async fn put(&self, name: &str, value: &str) -> String {
        self.sm
            .put_secret_value()
            .secret_id(name)
            .secret_string(value)
            .send()
            .await
            .unwrap()
            .version_id
            .unwrap()
    }

    async fn parameter(&self, name: &str, value: &str) {
        self.ssm
            .put_parameter()
            .name(name)
            .value(value)
            .r#type(aws_sdk_ssm::types::ParameterType::SecureString)
            .send()
            .await
            .unwrap();
    }
}

/// The value of a single result, as text.
fn text(r: &Result<Resolved, ProviderError>) -> String {
    match r {
        Ok(Resolved::Single(v)) => v.expose_str().unwrap().to_string(),
        Ok(other) => panic!("expected one value, got {other:?}"),
        Err(e) => panic!(
            "expected a value, got {:?}: {e} (help: {:?})",
            e.kind, e.help
        ),
    }
}

fn err(r: &Result<Resolved, ProviderError>) -> &ProviderError {
    match r {
        Ok(v) => panic!("expected an error, got {v:?}"),
        Err(e) => {
            assert_clean(e);
            eprintln!("[{:?}] {e}\n    help: {:?}", e.kind, e.help);
            e
        }
    }
}

/// An error never shows the canary (nor the test secret key).
fn assert_clean(e: &ProviderError) {
    let shown = format!("{e} | {:?} | {e:?}", e.help);
    assert!(!shown.contains(CANARY), "canary leaked: {shown}");
}

/// Resolves like the engine does: batches of at most `max_batch()`.
async fn resolve_as_engine(
    p: &dyn Provider,
    items: &[Item],
) -> Vec<Result<Resolved, ProviderError>> {
    let mut handles = Vec::new();
    for chunk in items.chunks(p.max_batch()) {
        handles.push(p.resolve(chunk));
    }
    let mut out = Vec::new();
    for h in handles {
        out.extend(h.await);
    }
    assert_eq!(out.len(), items.len());
    out
}

// ---------------------------------------------------------------------------------------------
// Reads
// ---------------------------------------------------------------------------------------------

#[test]
fn names_arns_and_fields() {
    let project = Project::new();
    let moto = moto();
    let name = format!("{}/db", unique("fields"));
    let json = format!(r#"{{"user":"app","password":"{CANARY}","port":5432}}"#);
    rt().block_on(async {
        let seed = Seed::new(&moto.url()).await;
        let arn = seed.secret(&name, &json).await;
        let p = project.aws(&moto.url(), &[]);
        let items = vec![
            item(&format!("sm://{name}")),
            item(&name),
            item(&format!("sm://{arn}")),
            item(&format!("sm://{name}#user")),
            with_field(&format!("sm://{name}"), "password"),
            item(&format!("sm://{arn}#port")),
            item(&format!("sm://{name}#pass")),
            with_field(&format!("sm://{name}#user"), "password"),
        ];
        let out = p.resolve(&items).await;
        assert_eq!(text(&out[0]), json);
        assert_eq!(text(&out[1]), json);
        assert_eq!(text(&out[2]), json);
        assert_eq!(text(&out[3]), "app");
        assert_eq!(text(&out[4]), CANARY);
        assert_eq!(text(&out[5]), "5432");
        let missing = err(&out[6]);
        assert_eq!(missing.kind, ErrorKind::Field);
        assert!(missing.message.contains(&name), "{missing}");
        let help = missing.help.clone().unwrap();
        for key in ["user", "password", "port"] {
            assert!(help.contains(key), "{help}");
        }
        assert_eq!(err(&out[7]).kind, ErrorKind::BadReference);

        // A single reference goes through GetSecretValue.
        let one = p.resolve(&[item(&format!("sm://{name}#password"))]).await;
        assert_eq!(text(&one[0]), CANARY);
        assert!(p.handles_field());
    });
}

#[test]
fn fifty_secrets_take_three_batch_calls() {
    let project = Project::new();
    let moto = moto();
    let prefix = unique("batch");
    rt().block_on(async {
        let seed = Seed::new(&moto.url()).await;
        for i in 0..50 {
            seed.secret(&format!("{prefix}/s{i}"), &format!("value-{i}"))
                .await;
        }
        let proxy = CountingProxy::start(moto.port).await;
        let p = project.aws(&proxy.url(), &[]);
        assert_eq!(p.max_batch(), 20);
        let items: Vec<Item> = (0..50)
            .map(|i| item(&format!("sm://{prefix}/s{i}")))
            .collect();

        // Split by the engine (20 + 20 + 10).
        let out = resolve_as_engine(&p, &items).await;
        for (i, r) in out.iter().enumerate() {
            assert_eq!(text(r), format!("value-{i}"));
        }
        let calls = proxy.calls();
        eprintln!("engine-split: {calls:?}");
        assert_eq!(
            proxy.count("secretsmanager.BatchGetSecretValue"),
            3,
            "{calls:?}"
        );
        assert!(calls.len() <= 5, "{calls:?}");

        // One call with all 50: the provider chunks by itself.
        proxy.reset();
        let out = p.resolve(&items).await;
        for (i, r) in out.iter().enumerate() {
            assert_eq!(text(r), format!("value-{i}"));
        }
        let calls = proxy.calls();
        eprintln!("one resolve call: {calls:?}");
        assert_eq!(
            proxy.count("secretsmanager.BatchGetSecretValue"),
            3,
            "{calls:?}"
        );
        assert_eq!(calls.len(), 3, "{calls:?}");
    });
}

#[test]
fn twenty_five_parameters_take_three_calls_and_mix_with_secrets() {
    let project = Project::new();
    let moto = moto();
    let prefix = unique("ssm");
    rt().block_on(async {
        let seed = Seed::new(&moto.url()).await;
        for i in 0..25 {
            seed.parameter(&format!("/{prefix}/p{i}"), &format!("param-{i}"))
                .await;
        }
        seed.parameter(
            &format!("/{prefix}/json"),
            &format!(r#"{{"token":"{CANARY}","id":"7"}}"#),
        )
        .await;
        seed.secret(&format!("{prefix}-a"), "secret-a").await;
        seed.secret(&format!("{prefix}-b"), "secret-b").await;
        let proxy = CountingProxy::start(moto.port).await;
        let p = project.aws(&proxy.url(), &[]);
        let items: Vec<Item> = (0..25)
            .map(|i| item(&format!("ssm:///{prefix}/p{i}")))
            .collect();
        let out = resolve_as_engine(&p, &items).await;
        for (i, r) in out.iter().enumerate() {
            assert_eq!(text(r), format!("param-{i}"));
        }
        let calls = proxy.calls();
        eprintln!("ssm engine-split: {calls:?}");
        assert_eq!(proxy.count("AmazonSSM.GetParameters"), 3, "{calls:?}");
        assert_eq!(calls.len(), 3, "{calls:?}");

        // A mixed batch: two secrets, parameters, a field of a parameter, a missing one.
        proxy.reset();
        let mixed = vec![
            item(&format!("sm://{prefix}-a")),
            item(&format!("ssm:///{prefix}/p3")),
            item(&format!("{prefix}-b")),
            item(&format!("ssm:///{prefix}/json#id")),
            item(&format!("ssm:///{prefix}/missing")),
            with_field(&format!("ssm:///{prefix}/json"), "nope"),
        ];
        let out = p.resolve(&mixed).await;
        assert_eq!(text(&out[0]), "secret-a");
        assert_eq!(text(&out[1]), "param-3");
        assert_eq!(text(&out[2]), "secret-b");
        assert_eq!(text(&out[3]), "7");
        let missing = err(&out[4]);
        assert_eq!(missing.kind, ErrorKind::NotFound, "{missing}");
        assert!(
            missing.message.contains(&format!("/{prefix}/missing")),
            "{missing}"
        );
        let field = err(&out[5]);
        assert_eq!(field.kind, ErrorKind::Field);
        assert!(field.help.as_deref().unwrap().contains("token"));
        let calls = proxy.calls();
        eprintln!("mixed: {calls:?}");
        assert_eq!(
            proxy.count("secretsmanager.BatchGetSecretValue"),
            1,
            "{calls:?}"
        );
        assert_eq!(proxy.count("AmazonSSM.GetParameters"), 1, "{calls:?}");
        assert_eq!(calls.len(), 2, "{calls:?}");

        // One parameter alone: GetParameter.
        proxy.reset();
        let one = p.resolve(&[item(&format!("ssm:///{prefix}/p7"))]).await;
        assert_eq!(text(&one[0]), "param-7");
        assert_eq!(proxy.calls(), vec!["AmazonSSM.GetParameter".to_string()]);
    });
}

#[test]
fn versions_by_stage_and_id() {
    let project = Project::new();
    let moto = moto();
    let name = unique("versions");
    rt().block_on(async {
        let seed = Seed::new(&moto.url()).await;
        seed.secret(&name, "first").await;
        let v2 = seed.put(&name, "second").await;
        seed.put(&name, "third").await;
        let proxy = CountingProxy::start(moto.port).await;
        let p = project.aws(&proxy.url(), &[]);
        let sm = format!("sm://{name}");
        let out = p
            .resolve(&[
                item(&sm),
                with_params(&sm, &[("version_stage", "AWSPREVIOUS")]),
                with_params(&sm, &[("version_id", &v2)]),
                with_params(&sm, &[("version_stage", "AWSCURRENT")]),
                with_params(
                    &sm,
                    &[("version_id", "00000000-0000-0000-0000-000000000000")],
                ),
            ])
            .await;
        assert_eq!(text(&out[0]), "third");
        assert_eq!(text(&out[1]), "second");
        assert_eq!(text(&out[2]), "second");
        assert_eq!(text(&out[3]), "third");
        let e = err(&out[4]);
        assert_eq!(e.kind, ErrorKind::NotFound, "{e}");
        assert!(e.message.contains("version_id"), "{e}");
        // Versioned refs cannot use the batch call: one GetSecretValue each.
        assert_eq!(
            proxy.count("secretsmanager.GetSecretValue"),
            5,
            "{:?}",
            proxy.calls()
        );
    });
}

#[test]
fn binary_secrets_are_byte_exact() {
    let project = Project::new();
    let moto = moto();
    let name = unique("binary");
    let bytes: Vec<u8> = vec![0, 159, 146, 150, 255, 10, 13, 0, 1];
    rt().block_on(async {
        let seed = Seed::new(&moto.url()).await;
        seed.sm
            .create_secret()
            .name(&name)
            .secret_binary(Blob::new(bytes.clone()))
            .send()
            .await
            .unwrap();
        let p = project.aws(&moto.url(), &[]);
        for out in [
            p.resolve(&[item(&format!("sm://{name}"))]).await,
            p.resolve(&[item(&format!("sm://{name}")), item("sm://other-missing-x")])
                .await,
        ] {
            match &out[0] {
                Ok(Resolved::Single(v)) => assert_eq!(v.expose_bytes(), bytes.as_slice()),
                other => panic!("{other:?}"),
            }
        }
        let out = p.resolve(&[item(&format!("sm://{name}#x"))]).await;
        assert_eq!(err(&out[0]).kind, ErrorKind::Field);
    });
}

#[test]
fn missing_secrets_are_not_found_and_do_not_spoil_a_batch() {
    let project = Project::new();
    let moto = moto();
    let prefix = unique("missing");
    rt().block_on(async {
        let seed = Seed::new(&moto.url()).await;
        seed.secret(&format!("{prefix}/a"), CANARY).await;
        seed.secret(&format!("{prefix}/b"), "b").await;
        let p = project.aws(&moto.url(), &[]);
        let alone = p.resolve(&[item(&format!("sm://{prefix}/nope"))]).await;
        let e = err(&alone[0]);
        assert_eq!(e.kind, ErrorKind::NotFound, "{e}");
        assert!(e.message.contains(&format!("{prefix}/nope")), "{e}");
        assert!(e.message.contains("ResourceNotFoundException"), "{e}");
        assert!(e.help.is_some());

        let out = p
            .resolve(&[
                item(&format!("sm://{prefix}/a")),
                item(&format!("sm://{prefix}/nope")),
                item(&format!("sm://{prefix}/b")),
            ])
            .await;
        assert_eq!(text(&out[0]), CANARY);
        let e = err(&out[1]);
        assert_eq!(e.kind, ErrorKind::NotFound, "{e}");
        assert!(e.message.contains(&format!("{prefix}/nope")), "{e}");
        assert_eq!(text(&out[2]), "b");

        let ssm = p.resolve(&[item(&format!("ssm:///{prefix}/nope"))]).await;
        let e = err(&ssm[0]);
        assert_eq!(e.kind, ErrorKind::NotFound, "{e}");
        assert!(e.message.contains("ParameterNotFound"), "{e}");
    });
}

#[test]
fn malformed_references_are_rejected_before_any_call() {
    let project = Project::new();
    let moto = moto();
    rt().block_on(async {
        let proxy = CountingProxy::start(moto.port).await;
        let p = project.aws(&proxy.url(), &[]);
        let out = p
            .resolve(&[
                item("vault://secret/x"),
                item("sm://"),
                item("ssm://"),
                item("sm://has space"),
                item("sm://a#"),
                with_params("ssm:///a/b", &[("version_stage", "AWSPREVIOUS")]),
                item("sm://naïve"),
            ])
            .await;
        for r in &out {
            assert_eq!(
                err(r).kind,
                ErrorKind::BadReference,
                "{:?}",
                r.as_ref().err()
            );
        }
        assert!(err(&out[0]).message.contains("sm://"));
        let w = p
            .write(
                &with_params("sm://x", &[("version_id", "v")]),
                &SecretValue::from_str_copy(CANARY),
            )
            .await
            .unwrap_err();
        assert_eq!(w.kind, ErrorKind::BadReference);
        assert_clean(&w);

        let sts = project.sts(&proxy.url(), &[]);
        let out = sts
            .resolve(&[
                with_params(
                    "arn:aws:iam::123456789012:role/r",
                    &[("duration_seconds", "soon")],
                ),
                with_params(
                    "arn:aws:iam::123456789012:role/r",
                    &[("duration_seconds", "60")],
                ),
                item(""),
                item("not-an-arn"),
                with_params("arn:aws:iam::123456789012:role/r", &[("format", "yaml")]),
                with_params(
                    "arn:aws:iam::123456789012:role/r",
                    &[("format", "env"), ("prefix", "9X")],
                ),
                with_params(
                    "arn:aws:iam::123456789012:role/r",
                    &[("session_name", "a b")],
                ),
            ])
            .await;
        for r in &out {
            assert_eq!(
                err(r).kind,
                ErrorKind::BadReference,
                "{:?}",
                r.as_ref().err()
            );
        }
        assert!(err(&out[0]).message.contains("duration_seconds"));
        assert_eq!(proxy.calls(), Vec::<String>::new());
    });
}

// ---------------------------------------------------------------------------------------------
// Writes and deletes
// ---------------------------------------------------------------------------------------------

#[test]
fn writes_create_secrets_and_update_one_field() {
    let project = Project::new();
    let moto = moto();
    let prefix = unique("write");
    rt().block_on(async {
        let seed = Seed::new(&moto.url()).await;
        let proxy = CountingProxy::start(moto.port).await;
        let p = project.aws(&proxy.url(), &[]);

        // A whole value: created, then replaced.
        let plain = format!("sm://{prefix}/plain");
        p.write(&item(&plain), &SecretValue::from_str_copy("v1"))
            .await
            .unwrap();
        assert_eq!(
            proxy.count("secretsmanager.CreateSecret"),
            1,
            "{:?}",
            proxy.calls()
        );
        p.write(&item(&plain), &SecretValue::from_str_copy("v2"))
            .await
            .unwrap();
        assert_eq!(
            proxy.count("secretsmanager.CreateSecret"),
            1,
            "{:?}",
            proxy.calls()
        );
        assert_eq!(text(&p.resolve(&[item(&plain)]).await[0]), "v2");

        // A field of a new secret, then another field: both kept.
        let db = format!("sm://{prefix}/db");
        p.write(
            &with_field(&db, "password"),
            &SecretValue::from_str_copy(CANARY),
        )
        .await
        .unwrap();
        p.write(&with_field(&db, "user"), &SecretValue::from_str_copy("app"))
            .await
            .unwrap();
        p.write(
            &item(&format!("{db}#user")),
            &SecretValue::from_str_copy("app2"),
        )
        .await
        .unwrap();
        let out = p
            .resolve(&[
                with_field(&db, "password"),
                with_field(&db, "user"),
                item(&db),
            ])
            .await;
        assert_eq!(text(&out[0]), CANARY);
        assert_eq!(text(&out[1]), "app2");
        let whole: serde_json::Value = serde_json::from_str(&text(&out[2])).unwrap();
        assert_eq!(whole.as_object().unwrap().len(), 2, "{whole}");

        // A field write into a secret that is not JSON: a Field error, the value untouched.
        let flat = format!("{prefix}/flat");
        seed.secret(&flat, CANARY).await;
        let e = p
            .write(
                &with_field(&format!("sm://{flat}"), "k"),
                &SecretValue::from_str_copy("x"),
            )
            .await
            .unwrap_err();
        assert_eq!(e.kind, ErrorKind::Field, "{e}");
        assert_clean(&e);
        assert_eq!(text(&p.resolve(&[item(&flat)]).await[0]), CANARY);

        // Binary values are stored as SecretBinary.
        let bin = format!("sm://{prefix}/bin");
        let bytes = vec![0xffu8, 0, 0xfe, 7];
        p.write(&item(&bin), &SecretValue::from_bytes(bytes.clone()))
            .await
            .unwrap();
        let stored = seed
            .sm
            .get_secret_value()
            .secret_id(format!("{prefix}/bin"))
            .send()
            .await
            .unwrap();
        assert_eq!(stored.secret_binary.unwrap().into_inner(), bytes);
        assert!(stored.secret_string.is_none());

        // Delete one field: the others stay; delete the secret: recoverable.
        p.delete(&with_field(&db, "user")).await.unwrap();
        let left = text(&p.resolve(&[item(&db)]).await[0]);
        assert!(
            left.contains("password") && !left.contains("user"),
            "<{} bytes>",
            left.len()
        );
        p.delete(&item(&plain)).await.unwrap();
        let described = seed
            .sm
            .describe_secret()
            .secret_id(format!("{prefix}/plain"))
            .send()
            .await
            .unwrap();
        assert!(described.deleted_date.is_some());
        let gone = p.resolve(&[item(&plain)]).await;
        assert_clean(err(&gone[0]));
        seed.sm
            .restore_secret()
            .secret_id(format!("{prefix}/plain"))
            .send()
            .await
            .unwrap();
        assert_eq!(text(&p.resolve(&[item(&plain)]).await[0]), "v2");
        let e = p
            .delete(&item(&format!("sm://{prefix}/never")))
            .await
            .unwrap_err();
        assert_eq!(e.kind, ErrorKind::NotFound, "{e}");
    });
}

#[test]
fn parameters_are_written_as_secure_strings() {
    let project = Project::new();
    let moto = moto();
    let prefix = unique("ssmw");
    rt().block_on(async {
        let seed = Seed::new(&moto.url()).await;
        let proxy = CountingProxy::start(moto.port).await;
        let p = project.aws(&proxy.url(), &[]);
        let r = format!("ssm:///{prefix}/token");
        p.write(&item(&r), &SecretValue::from_str_copy(CANARY))
            .await
            .unwrap();
        p.write(&item(&r), &SecretValue::from_str_copy("second"))
            .await
            .unwrap();
        assert_eq!(
            proxy.count("AmazonSSM.PutParameter"),
            2,
            "{:?}",
            proxy.calls()
        );
        let stored = seed
            .ssm
            .get_parameter()
            .name(format!("/{prefix}/token"))
            .send()
            .await
            .unwrap()
            .parameter
            .unwrap();
        assert_eq!(
            stored.r#type,
            Some(aws_sdk_ssm::types::ParameterType::SecureString)
        );
        assert_eq!(stored.version, 2);
        assert_eq!(text(&p.resolve(&[item(&r)]).await[0]), "second");

        // Field writes keep the other members; binary is refused.
        let j = format!("ssm:///{prefix}/json");
        p.write(&with_field(&j, "a"), &SecretValue::from_str_copy("1"))
            .await
            .unwrap();
        p.write(&with_field(&j, "b"), &SecretValue::from_str_copy("2"))
            .await
            .unwrap();
        assert_eq!(text(&p.resolve(&[item(&format!("{j}#a"))]).await[0]), "1");
        let e = p
            .write(&item(&r), &SecretValue::from_bytes(vec![0xff, 0xfe]))
            .await
            .unwrap_err();
        assert_eq!(e.kind, ErrorKind::Unsupported);

        p.delete(&item(&r)).await.unwrap();
        let gone = p.resolve(&[item(&r)]).await;
        assert_eq!(err(&gone[0]).kind, ErrorKind::NotFound);
        let e = p.delete(&item(&r)).await.unwrap_err();
        assert_eq!(e.kind, ErrorKind::NotFound, "{e}");
    });
}

// ---------------------------------------------------------------------------------------------
// STS
// ---------------------------------------------------------------------------------------------

#[test]
fn sts_assume_role_json_and_env() {
    let project = Project::new();
    let moto = moto();
    let role = "arn:aws:iam::123456789012:role/kz-deploy";
    rt().block_on(async {
        let proxy = CountingProxy::start(moto.port).await;
        let p = project.sts(&proxy.url(), &[]);
        assert_eq!(p.max_batch(), 1);
        let before = DateTime::from(std::time::SystemTime::now()).secs();

        let out = p
            .resolve(&[with_params(
                role,
                &[("duration_seconds", "1800"), ("session_name", "kz-test")],
            )])
            .await;
        let json: serde_json::Value = serde_json::from_str(&text(&out[0])).unwrap();
        let obj = json.as_object().unwrap();
        let mut keys: Vec<&str> = obj.keys().map(String::as_str).collect();
        keys.sort_unstable();
        assert_eq!(
            keys,
            [
                "access_key_id",
                "expiration",
                "secret_access_key",
                "session_token"
            ]
        );
        assert!(json["access_key_id"].as_str().unwrap().starts_with("ASIA"));
        assert!(!json["secret_access_key"].as_str().unwrap().is_empty());
        assert!(!json["session_token"].as_str().unwrap().is_empty());
        let expires = DateTime::from_str(
            json["expiration"].as_str().unwrap(),
            DateTimeFormat::DateTime,
        )
        .unwrap()
        .secs();
        let lifetime = expires - before;
        assert!((1700..=1900).contains(&lifetime), "lifetime {lifetime} s");
        assert_eq!(proxy.count("query.AssumeRole"), 1, "{:?}", proxy.calls());

        // format = "env" with a prefix; the role from `role_arn`.
        let out = p
            .resolve(&[with_params(
                "",
                &[("role_arn", role), ("format", "env"), ("prefix", "DEPLOY_")],
            )])
            .await;
        match &out[0] {
            Ok(Resolved::Multi(vars)) => {
                let names: Vec<&str> = vars.iter().map(|(n, _)| n.as_str()).collect();
                assert_eq!(
                    names,
                    [
                        "DEPLOY_AWS_ACCESS_KEY_ID",
                        "DEPLOY_AWS_SECRET_ACCESS_KEY",
                        "DEPLOY_AWS_SESSION_TOKEN"
                    ]
                );
                assert!(vars[0].1.expose_str().unwrap().starts_with("ASIA"));
                assert!(vars.iter().all(|(_, v)| !v.is_empty()));
            }
            other => panic!("{other:?}"),
        }
        let plain = p
            .resolve(&[with_params(
                role,
                &[("format", "env"), ("duration_seconds", "900")],
            )])
            .await;
        match &plain[0] {
            Ok(Resolved::Multi(vars)) => assert_eq!(vars[2].0, "AWS_SESSION_TOKEN"),
            other => panic!("{other:?}"),
        }

        // Not writable; check() asks GetCallerIdentity.
        let e = p
            .write(&item(role), &SecretValue::from_str_copy(CANARY))
            .await
            .unwrap_err();
        assert_eq!(e.kind, ErrorKind::Unsupported);
        assert_clean(&e);
        p.check().await.unwrap();
        assert_eq!(
            proxy.count("query.GetCallerIdentity"),
            1,
            "{:?}",
            proxy.calls()
        );
        let d = p.describe();
        assert_eq!(d.type_name, "aws_sts");
    });
}

// ---------------------------------------------------------------------------------------------
// Failures: unreachable, silent, denied, no credentials
// ---------------------------------------------------------------------------------------------

#[test]
fn closed_port_is_a_quick_network_error() {
    let project = Project::new();
    let port = free_port();
    let url = format!("http://127.0.0.1:{port}");
    rt().block_on(async {
        let p = project.aws(&url, &[("timeout", q("5s"))]);
        let start = Instant::now();
        let out = p
            .resolve(&[item("sm://x"), item("ssm://y"), item("sm://z")])
            .await;
        for r in &out {
            let e = err(r);
            assert!(
                matches!(e.kind, ErrorKind::Network | ErrorKind::Timeout),
                "{:?}: {e}",
                e.kind
            );
            assert!(!e.transient, "the SDK already retried: {e}");
        }
        let e = err(&out[0]);
        assert_eq!(e.kind, ErrorKind::Network, "{e}");
        assert!(e.message.contains(&url), "{e}");
        assert!(
            start.elapsed() < Duration::from_secs(6),
            "{:?}",
            start.elapsed()
        );
        let e = p.check().await.unwrap_err();
        assert!(
            matches!(e.kind, ErrorKind::Network | ErrorKind::Timeout),
            "{e}"
        );
        let e = p
            .write(&item("sm://x"), &SecretValue::from_str_copy(CANARY))
            .await
            .unwrap_err();
        assert_clean(&e);
    });
}

#[test]
fn silent_backend_times_out() {
    let project = Project::new();
    // Accepts connections and never answers.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let held = Arc::new(std::sync::Mutex::new(Vec::new()));
    let keep = held.clone();
    std::thread::spawn(move || {
        for s in listener.incoming().flatten() {
            keep.lock().unwrap().push(s);
        }
    });
    rt().block_on(async {
        let p = project.aws(&url, &[("timeout", q("1s"))]);
        let start = Instant::now();
        let out = p.resolve(&[item("sm://slow")]).await;
        let e = err(&out[0]);
        assert_eq!(e.kind, ErrorKind::Timeout, "{e}");
        assert!(e.message.contains("sm://slow"), "{e}");
        assert!(
            start.elapsed() < Duration::from_secs(4),
            "{:?}",
            start.elapsed()
        );
        let start = Instant::now();
        let sts = project.sts(&url, &[("timeout", q("1s"))]);
        let out = sts
            .resolve(&[item("arn:aws:iam::123456789012:role/r")])
            .await;
        assert_eq!(err(&out[0]).kind, ErrorKind::Timeout);
        assert!(
            start.elapsed() < Duration::from_secs(4),
            "{:?}",
            start.elapsed()
        );
    });
}

#[test]
fn denied_credentials_are_auth_errors() {
    let project = Project::new();
    // This moto enforces IAM auth from the first request: `test`/`test` is an unknown key.
    let strict = Moto::start(&[("INITIAL_NO_AUTH_ACTION_COUNT", "0")]);
    rt().block_on(async {
        let p = project.aws(&strict.url(), &[]);
        let out = p
            .resolve(&[
                item("sm://denied"),
                item("ssm:///denied"),
                item("sm://denied2"),
            ])
            .await;
        for r in &out {
            let e = err(r);
            assert_eq!(e.kind, ErrorKind::Auth, "{e}");
            assert!(!e.transient);
            let help = e.help.clone().unwrap_or_default();
            assert!(
                help.contains("aws sso login") && help.contains("AWS_PROFILE"),
                "{help}"
            );
        }
        assert!(err(&out[0]).message.contains("sm://denied"));
        let e = p.check().await.unwrap_err();
        assert_eq!(e.kind, ErrorKind::Auth, "{e}");
        let e = p
            .write(&item("sm://denied"), &SecretValue::from_str_copy(CANARY))
            .await
            .unwrap_err();
        assert_eq!(e.kind, ErrorKind::Auth, "{e}");
        assert_clean(&e);
        let sts = project.sts(&strict.url(), &[]);
        let out = sts
            .resolve(&[item("arn:aws:iam::123456789012:role/r")])
            .await;
        assert_eq!(err(&out[0]).kind, ErrorKind::Auth);
    });
    drop(strict);
}

#[test]
fn a_profile_without_credentials_is_an_auth_error() {
    let project = Project::new();
    let moto = moto();
    rt().block_on(async {
        let proxy = CountingProxy::start(moto.port).await;
        let p = project.aws(&proxy.url(), &[("profile", q("kz-nocreds"))]);
        let out = p.resolve(&[item("sm://whatever")]).await;
        let e = err(&out[0]);
        assert_eq!(e.kind, ErrorKind::Auth, "{e}");
        let help = e.help.clone().unwrap();
        assert!(
            help.contains("aws sso login") && help.contains("AWS_PROFILE"),
            "{help}"
        );
        assert_eq!(proxy.calls(), Vec::<String>::new());
        let d = p.describe();
        assert_eq!(d.type_name, "aws");
        let details: HashMap<String, String> = d.details.into_iter().collect();
        assert_eq!(details["profile"], "kz-nocreds");
        assert_eq!(details["region"], "us-east-1");
        assert_eq!(details["endpoint"], proxy.url());
    });
}

#[test]
fn check_and_describe() {
    let project = Project::new();
    let moto = moto();
    rt().block_on(async {
        let proxy = CountingProxy::start(moto.port).await;
        let p = project.aws(&proxy.url(), &[]);
        p.check().await.unwrap();
        assert_eq!(proxy.calls(), vec!["query.GetCallerIdentity".to_string()]);
        let shown = format!("{:?} {p:?}", p.describe());
        assert!(
            shown.contains("us-east-1") && shown.contains(&proxy.url()),
            "{shown}"
        );
        assert!(!shown.contains("aws_secret_access_key"));
    });
    // A bad endpoint is refused when the provider is built.
    let inst = project.instance("bad", "aws", &[("endpoint_url", q("127.0.0.1:4566"))]);
    let e = AwsProvider::new(&inst, &project.ctx()).unwrap_err();
    assert_eq!(e.kind, ErrorKind::Config);
}
