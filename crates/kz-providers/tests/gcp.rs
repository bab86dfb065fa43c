//! The `gcp` provider against a STAND-IN for Secret Manager's REST API and Google's token
//! endpoints (Google ships no emulator; see `support/gcp_standin.rs`).
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

#[path = "support/gcp_standin.rs"]
mod gcp_standin;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use gcp_standin::StandIn;
use kz_config::{LoadRequest, load};
use kz_providers::BuildContext;
use kz_providers::gcp::{GcpProvider, crc32c};
use kz_resolve::{ErrorKind, Item, Provider, ProviderError, json_field};
use kz_secret::{Resolved, SecretValue};

const CANARY: &str = "kz-canary-9b2e4f71";
const ENV_TOKEN: &str = "env-token-5e3c1a";
const SA_EMAIL: &str = "kz-test@acme.iam.gserviceaccount.com";
const SA_KEY_ID: &str = "key-1";
const USER_SECRET: &str = "client-secret-7d2b";
const REFRESH_TOKEN: &str = "refresh-token-1c9f";

// ---- fixtures ----

/// An RSA key pair made with `openssl` (private PKCS#8 PEM, public SPKI PEM).
struct KeyPair {
    private_pem: String,
    public_pem: String,
}

fn openssl(args: &[&str], stdin: Option<&str>) -> String {
    use std::io::Write;
    let mut child = std::process::Command::new("openssl")
        .args(args)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| {
            panic!(
                "`openssl` is needed by these tests ({e}): install openssl: apt-get install openssl"
            )
        });
    let mut input = child.stdin.take().unwrap();
    input.write_all(stdin.unwrap_or("").as_bytes()).unwrap();
    drop(input);
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "openssl {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

fn make_key_pair() -> KeyPair {
    let private_pem = openssl(&["genrsa", "2048"], None);
    let public_pem = openssl(&["rsa", "-pubout"], Some(&private_pem));
    KeyPair {
        private_pem,
        public_pem,
    }
}

/// The service account's key (trusted by stand-ins).
fn trusted_key() -> &'static KeyPair {
    static K: OnceLock<KeyPair> = OnceLock::new();
    K.get_or_init(make_key_pair)
}

/// A key no stand-in trusts.
fn rogue_key() -> &'static KeyPair {
    static K: OnceLock<KeyPair> = OnceLock::new();
    K.get_or_init(make_key_pair)
}

/// A loopback port nothing listens on.
fn closed_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A project directory with a `.keyzero.toml`, a home, and a fake environment.
struct Project {
    dir: tempfile::TempDir,
    env: HashMap<String, String>,
}

impl Project {
    /// The metadata host points at a closed port unless a test changes it, so nothing ever
    /// reaches a real metadata server.
    fn new() -> Self {
        let mut env = HashMap::new();
        env.insert(
            "GCE_METADATA_HOST".to_string(),
            format!("127.0.0.1:{}", closed_port()),
        );
        Self {
            dir: tempfile::tempdir().unwrap(),
            env,
        }
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }

    fn home(&self) -> PathBuf {
        self.path().join("home")
    }

    fn set_env(&mut self, k: &str, v: &str) -> &mut Self {
        self.env.insert(k.to_string(), v.to_string());
        self
    }

    fn ctx(&self) -> BuildContext {
        let env = self.env.clone();
        BuildContext {
            home: Some(self.home()),
            config_home: self.path().join("config"),
            data_home: self.path().join("data"),
            runtime_dir: None,
            project_dir: self.path().to_path_buf(),
            getenv: Arc::new(move |k| env.get(k).cloned()),
            verbose: false,
            interactive: false,
        }
    }

    /// `[providers.g]` with `options` (TOML lines).
    fn provider(&self, options: &str) -> GcpProvider {
        self.try_provider(options).unwrap()
    }

    fn try_provider(&self, options: &str) -> Result<GcpProvider, ProviderError> {
        let toml = format!("[providers.g]\ntype = \"gcp\"\n{options}\n");
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
        GcpProvider::new(config.provider("g").unwrap(), &self.ctx())
    }

    /// Writes a JSON file under the project.
    fn write_json(&self, rel: &str, value: &serde_json::Value) -> PathBuf {
        let path = self.path().join(rel);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, serde_json::to_vec_pretty(value).unwrap()).unwrap();
        path
    }

    fn service_account_file(&self, standin: &StandIn, key: &KeyPair) -> PathBuf {
        self.write_json(
            "keys/sa.json",
            &serde_json::json!({
                "type": "service_account",
                "project_id": "acme",
                "private_key_id": SA_KEY_ID,
                "private_key": key.private_pem,
                "client_email": SA_EMAIL,
                "client_id": "1234567890",
                "token_uri": standin.token_uri(),
            }),
        )
    }

    fn authorized_user_json(standin: &StandIn) -> serde_json::Value {
        serde_json::json!({
            "type": "authorized_user",
            "client_id": "kz-client.apps.googleusercontent.com",
            "client_secret": USER_SECRET,
            "refresh_token": REFRESH_TOKEN,
            "token_uri": standin.token_uri(),
        })
    }
}

/// A stand-in that accepts `ENV_TOKEN`, and a project using it through GOOGLE_ACCESS_TOKEN.
fn standin_with_env_token() -> (StandIn, Project) {
    let s = StandIn::start();
    s.accept_token(ENV_TOKEN);
    let mut p = Project::new();
    p.set_env("GOOGLE_ACCESS_TOKEN", ENV_TOKEN);
    (s, p)
}

fn endpoint(s: &StandIn) -> String {
    format!("endpoint_url = \"{}\"", s.url)
}

fn item(reference: &str) -> Item {
    Item {
        name: "SECRET".to_string(),
        reference: reference.to_string(),
        field: None,
        params: vec![],
    }
}

fn item_with(reference: &str, params: &[(&str, &str)]) -> Item {
    Item {
        params: params
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
        ..item(reference)
    }
}

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

fn read_all(p: &GcpProvider, items: &[Item]) -> Vec<Result<Resolved, ProviderError>> {
    let out = rt().block_on(p.resolve(items));
    assert_eq!(out.len(), items.len());
    out
}

fn read(p: &GcpProvider, it: Item) -> Result<SecretValue, ProviderError> {
    match read_all(p, std::slice::from_ref(&it)).pop().unwrap() {
        Ok(Resolved::Single(v)) => Ok(v),
        Ok(other) => panic!("unexpected {other:?}"),
        Err(e) => Err(e),
    }
}

fn read_str(p: &GcpProvider, it: Item) -> String {
    let v = read(p, it).unwrap_or_else(|e| panic!("{e} / {:?}", e.help));
    v.expose_str().unwrap().to_string()
}

fn read_err(p: &GcpProvider, it: Item) -> ProviderError {
    let e = read(p, it).expect_err("an error");
    assert_clean(&e);
    e
}

/// No canary, token, key or user secret in an error's Display, Debug or help.
fn assert_clean(e: &ProviderError) {
    let shown = format!("{e} | {e:?} | {}", e.help.as_deref().unwrap_or(""));
    let key_body = trusted_key()
        .private_pem
        .lines()
        .nth(1)
        .unwrap()
        .to_string();
    for bad in [
        CANARY,
        ENV_TOKEN,
        USER_SECRET,
        REFRESH_TOKEN,
        "standin-token-",
        &key_body,
    ] {
        assert!(!shown.contains(bad), "`{bad}` leaked into: {shown}");
    }
}

// ---- reads ----

#[test]
fn the_tokens_sent_are_reported_as_credentials_for_redaction() {
    let (s, p) = standin_with_env_token();
    s.seed("projects/acme/secrets/db", CANARY.as_bytes());
    let g = p.provider(&format!("{}\nproject = \"acme\"", endpoint(&s)));
    assert!(g.credentials().is_empty());
    assert_eq!(read_str(&g, item("db")), CANARY);
    let creds = g.credentials();
    assert_eq!(creds.len(), 1);
    assert_eq!(creds[0].expose_str(), Some(ENV_TOKEN));
}

#[test]
fn standin_reads_full_name_and_short_name_with_project() {
    let (s, p) = standin_with_env_token();
    s.seed("projects/acme/secrets/db", CANARY.as_bytes());
    s.seed("projects/other/secrets/api", b"api-value");
    let g = p.provider(&format!("{}\nproject = \"acme\"", endpoint(&s)));
    let out = read_all(
        &g,
        &[
            item("projects/acme/secrets/db"),
            item("db"),
            item("projects/other/secrets/api"),
        ],
    );
    let values: Vec<String> = out
        .into_iter()
        .map(|r| match r.unwrap() {
            Resolved::Single(v) => v.expose_str().unwrap().to_string(),
            other => panic!("{other:?}"),
        })
        .collect();
    assert_eq!(values, [CANARY, CANARY, "api-value"]);
    assert!(
        s.log()
            .contains(&"GET /v1/projects/acme/secrets/db/versions/latest:access".to_string()),
        "{:?}",
        s.log()
    );
}

#[test]
fn standin_version_param_and_versions_in_reference() {
    let (s, p) = standin_with_env_token();
    s.seed("projects/acme/secrets/db", b"one");
    s.seed("projects/acme/secrets/db", b"two");
    s.seed("projects/acme/secrets/db", b"three");
    let g = p.provider(&format!("{}\nproject = \"acme\"", endpoint(&s)));
    assert_eq!(read_str(&g, item("db")), "three");
    assert_eq!(read_str(&g, item_with("db", &[("version", "1")])), "one");
    assert_eq!(
        read_str(&g, item("projects/acme/secrets/db/versions/2")),
        "two"
    );
    assert_eq!(
        read_str(
            &g,
            item_with("projects/acme/secrets/db/versions/2", &[("version", "2")])
        ),
        "two"
    );
    assert_eq!(
        read_str(&g, item_with("db", &[("version", "latest")])),
        "three"
    );
    let e = read_err(
        &g,
        item_with("projects/acme/secrets/db/versions/2", &[("version", "1")]),
    );
    assert_eq!(e.kind, ErrorKind::BadReference, "{e}");
    assert!(e.message.contains("version"), "{e}");
    let e = read_err(&g, item_with("db", &[("version", "9")]));
    assert_eq!(e.kind, ErrorKind::NotFound, "{e}");
}

#[test]
fn standin_binary_payload_round_trips() {
    let (s, p) = standin_with_env_token();
    let bytes: Vec<u8> = (0..=255u8).rev().chain(0..=255u8).collect();
    s.seed("projects/acme/secrets/bin", &bytes);
    let g = p.provider(&endpoint(&s));
    let v = read(&g, item("projects/acme/secrets/bin")).unwrap();
    assert_eq!(v.expose_bytes(), bytes.as_slice());
    // Written by kz, stored and read back byte for byte.
    let value = SecretValue::from_bytes(vec![0, 0xff, 0xfe, b'\n', 0x80]);
    rt().block_on(g.write(&item("projects/acme/secrets/bin2"), &value))
        .unwrap();
    assert_eq!(
        s.versions("projects/acme/secrets/bin2").unwrap()[0].0,
        value.expose_bytes()
    );
    assert_eq!(read(&g, item("projects/acme/secrets/bin2")).unwrap(), value);
}

#[test]
fn crc32c_agrees_with_an_independent_implementation() {
    for data in [
        &b""[..],
        b"a",
        b"123456789",
        CANARY.as_bytes(),
        &[0xffu8; 100],
    ] {
        assert_eq!(crc32c(data), gcp_standin::crc32c_bitwise(data), "{data:?}");
    }
    assert_eq!(crc32c(b"123456789"), 0xE306_9283);
}

#[test]
fn malformed_references_fail_before_any_network_call() {
    // Nothing answers anywhere: any network attempt would be a Network or Auth error.
    let p = Project::new();
    let g = p.provider(&format!(
        "endpoint_url = \"http://127.0.0.1:{}\"",
        closed_port()
    ));
    for bad in [
        "projects/acme/secrets",
        "projects/acme/secret/db",
        "projects/acme/secrets/db/versions",
        "projects/acme/secrets/db/versions/1/extra",
        "projects/acme/secrets/d b",
        "projects/ac me/secrets/db",
        "projects/acme/secrets/db/versions/1:access",
        "",
    ] {
        let e = read_err(&g, item(bad));
        assert_eq!(e.kind, ErrorKind::BadReference, "{bad}: {e}");
        assert!(
            e.help
                .as_deref()
                .unwrap()
                .contains("projects/PROJECT/secrets/NAME")
        );
    }
    let e = read_err(&g, item("db"));
    assert_eq!(e.kind, ErrorKind::BadReference, "{e}");
    assert!(e.message.contains("`project`"), "{e}");
    assert!(e.help.as_deref().unwrap().contains("project = "), "{e:?}");
}

#[test]
fn standin_missing_secret_and_version_are_not_found() {
    let (s, p) = standin_with_env_token();
    s.seed("projects/acme/secrets/db", CANARY.as_bytes());
    let g = p.provider(&endpoint(&s));
    let e = read_err(&g, item("projects/acme/secrets/nope"));
    assert_eq!(e.kind, ErrorKind::NotFound, "{e}");
    assert!(e.message.contains("projects/acme/secrets/nope"), "{e}");
    assert!(e.message.contains("not found or has no versions"), "{e}");
    assert!(e.help.is_some());
    let e = read_err(&g, item("projects/acme/secrets/db/versions/7"));
    assert_eq!(e.kind, ErrorKind::NotFound, "{e}");
}

#[test]
fn standin_denied_secret_is_auth_with_googles_message() {
    let (s, p) = standin_with_env_token();
    s.seed("projects/acme/secrets/db", CANARY.as_bytes());
    s.deny("projects/acme/secrets/db");
    let g = p.provider(&endpoint(&s));
    let e = read_err(&g, item("projects/acme/secrets/db"));
    assert_eq!(e.kind, ErrorKind::Auth, "{e}");
    assert!(
        e.message
            .contains("Permission 'secretmanager.versions.access' denied"),
        "{e}"
    );
    assert!(e.help.as_deref().unwrap().contains("secretAccessor"));
    assert!(!e.transient);
}

#[test]
fn standin_refused_token_is_auth() {
    let s = StandIn::start();
    s.seed("projects/acme/secrets/db", CANARY.as_bytes());
    let mut p = Project::new();
    p.set_env("GOOGLE_ACCESS_TOKEN", ENV_TOKEN); // not accepted by this stand-in
    let g = p.provider(&endpoint(&s));
    let e = read_err(&g, item("projects/acme/secrets/db"));
    assert_eq!(e.kind, ErrorKind::Auth, "{e}");
    assert!(e.message.contains("UNAUTHENTICATED"), "{e}");
    assert!(e.help.as_deref().unwrap().contains("GOOGLE_ACCESS_TOKEN"));
}

#[test]
fn standin_500_and_429_are_transient_network_errors() {
    let (s, p) = standin_with_env_token();
    s.seed("projects/acme/secrets/db", CANARY.as_bytes());
    let g = p.provider(&endpoint(&s));
    for status in [500, 503, 429] {
        s.fail_once(status);
        let e = read_err(&g, item("projects/acme/secrets/db"));
        assert_eq!(e.kind, ErrorKind::Network, "{status}: {e}");
        assert!(e.transient, "{status}: {e}");
        assert!(e.message.contains(&status.to_string()), "{e}");
        // The engine's retry then succeeds.
        assert_eq!(read_str(&g, item("projects/acme/secrets/db")), CANARY);
    }
}

#[test]
fn standin_crc_mismatch_is_a_corrupted_payload_error() {
    let (s, p) = standin_with_env_token();
    s.seed("projects/acme/secrets/db", CANARY.as_bytes());
    s.corrupt_crc(true);
    let g = p.provider(&endpoint(&s));
    let e = read_err(&g, item("projects/acme/secrets/db"));
    assert_eq!(e.kind, ErrorKind::Backend, "{e}");
    assert!(e.message.contains("corrupted payload"), "{e}");
    s.corrupt_crc(false);
    assert_eq!(read_str(&g, item("projects/acme/secrets/db")), CANARY);
}

#[test]
fn backend_down_is_a_quick_transient_network_error() {
    let mut p = Project::new();
    p.set_env("GOOGLE_ACCESS_TOKEN", ENV_TOKEN);
    let g = p.provider(&format!(
        "endpoint_url = \"http://127.0.0.1:{}\"",
        closed_port()
    ));
    let start = Instant::now();
    let e = read_err(&g, item("projects/acme/secrets/db"));
    assert!(
        start.elapsed() < Duration::from_secs(3),
        "{:?}",
        start.elapsed()
    );
    assert_eq!(e.kind, ErrorKind::Network, "{e}");
    assert!(e.transient);
    assert!(e.message.contains("cannot reach Secret Manager"), "{e}");
    assert!(e.help.as_deref().unwrap().contains("endpoint_url"));
}

#[test]
fn standin_slow_backend_times_out() {
    let (s, p) = standin_with_env_token();
    s.seed("projects/acme/secrets/db", CANARY.as_bytes());
    s.hang(true);
    let g = p.provider(&format!("{}\ntimeout = \"500ms\"", endpoint(&s)));
    let start = Instant::now();
    let e = read_err(&g, item("projects/acme/secrets/db"));
    assert!(
        start.elapsed() < Duration::from_secs(3),
        "{:?}",
        start.elapsed()
    );
    assert_eq!(e.kind, ErrorKind::Timeout, "{e}");
    assert!(e.help.as_deref().unwrap().contains("timeout"));
}

#[test]
fn standin_disabled_version_is_backend_and_destroyed_is_not_found() {
    let (s, p) = standin_with_env_token();
    s.seed("projects/acme/secrets/db", CANARY.as_bytes());
    s.seed("projects/acme/secrets/db", CANARY.as_bytes());
    s.set_state("projects/acme/secrets/db", 1, "DISABLED");
    s.set_state("projects/acme/secrets/db", 2, "DESTROYED");
    let g = p.provider(&endpoint(&s));
    let e = read_err(&g, item("projects/acme/secrets/db/versions/1"));
    assert_eq!(e.kind, ErrorKind::Backend, "{e}");
    assert!(e.message.contains("DISABLED"), "{e}");
    assert!(
        e.help
            .as_deref()
            .unwrap()
            .contains("gcloud secrets versions enable 1 --secret db"),
        "{e:?}"
    );
    let e = read_err(&g, item("projects/acme/secrets/db"));
    assert_eq!(e.kind, ErrorKind::NotFound, "{e}");
    assert!(e.message.contains("destroyed"), "{e}");
}

#[test]
fn standin_field_picking_by_the_engine_lists_keys_not_values() {
    // The provider returns the whole JSON payload (handles_field is false); the engine picks
    // the member with `kz_resolve::json_field`, as done here by hand.
    let (s, p) = standin_with_env_token();
    let doc = format!(r#"{{"user":"app","password":"{CANARY}"}}"#);
    s.seed("projects/acme/secrets/db", doc.as_bytes());
    let g = p.provider(&endpoint(&s));
    assert!(!g.handles_field());
    let whole = read(&g, item("projects/acme/secrets/db")).unwrap();
    assert_eq!(
        json_field(&whole, "password").unwrap().expose_str(),
        Some(CANARY)
    );
    let e = json_field(&whole, "pass").unwrap_err();
    assert_eq!(e.kind, ErrorKind::Field);
    assert_clean(&e);
    assert!(e.help.as_deref().unwrap().contains("password"));
}

// ---- auth ----

#[test]
fn no_credentials_anywhere_is_auth_listing_the_four_ways() {
    let p = Project::new(); // no token, no files, metadata host closed, empty home
    let g = p.provider(&format!(
        "endpoint_url = \"http://127.0.0.1:{}\"",
        closed_port()
    ));
    let start = Instant::now();
    let e = read_err(&g, item("projects/acme/secrets/db"));
    assert!(
        start.elapsed() < Duration::from_secs(3),
        "{:?}",
        start.elapsed()
    );
    assert_eq!(e.kind, ErrorKind::Auth, "{e}");
    assert!(e.message.contains("no Google credentials found"), "{e}");
    let help = e.help.as_deref().unwrap();
    for way in [
        "GOOGLE_ACCESS_TOKEN",
        "GOOGLE_APPLICATION_CREDENTIALS",
        "gcloud auth application-default login",
        "metadata server",
    ] {
        assert!(help.contains(way), "{way} missing in {help}");
    }
    let e = rt().block_on(g.check()).unwrap_err();
    assert_eq!(e.kind, ErrorKind::Auth);
    let d = g.describe();
    assert!(
        d.details
            .iter()
            .any(|(k, v)| k == "auth" && v.contains("metadata server")),
        "{:?}",
        d.details
    );
}

#[test]
fn standin_service_account_jwt_is_verified_and_the_token_cached() {
    let s = StandIn::start();
    s.trust_service_account(SA_EMAIL, SA_KEY_ID, &trusted_key().public_pem);
    for i in 0..5 {
        s.seed(&format!("projects/acme/secrets/s{i}"), CANARY.as_bytes());
    }
    let p = Project::new();
    let key = p.service_account_file(&s, trusted_key());
    let g = p.provider(&format!(
        "{}\ncredentials = \"{}\"",
        endpoint(&s),
        key.display()
    ));
    let items: Vec<Item> = (0..5)
        .map(|i| item(&format!("projects/acme/secrets/s{i}")))
        .collect();
    // Five concurrent resolves (as the engine fans out) share one token fetch.
    let (a, b, c, d, e) = rt().block_on(async {
        tokio::join!(
            g.resolve(&items[0..1]),
            g.resolve(&items[1..2]),
            g.resolve(&items[2..3]),
            g.resolve(&items[3..4]),
            g.resolve(&items[4..5]),
        )
    });
    for r in [a, b, c, d, e].into_iter().flatten() {
        assert!(
            matches!(&r, Ok(Resolved::Single(v)) if v.expose_str() == Some(CANARY)),
            "{r:?} {:?}",
            s.last_rejection()
        );
    }
    rt().block_on(g.check()).unwrap();
    for r in read_all(&g, &items) {
        assert!(r.is_ok());
    }
    assert_eq!(s.token_requests(), 1, "one token for ten reads and a check");
    let d = g.describe();
    let auth = &d.details.iter().find(|(k, _)| k == "auth").unwrap().1;
    assert!(
        auth.contains(SA_EMAIL) && auth.contains("credentials"),
        "{auth}"
    );
    let shown = format!("{g:?} {:?}", d.details);
    assert!(
        !shown.contains("standin-token-") && !shown.contains("PRIVATE KEY"),
        "{shown}"
    );
}

#[test]
fn standin_service_account_from_google_application_credentials() {
    let s = StandIn::start();
    s.trust_service_account(SA_EMAIL, SA_KEY_ID, &trusted_key().public_pem);
    s.seed("projects/acme/secrets/db", CANARY.as_bytes());
    let mut p = Project::new();
    let key = p.service_account_file(&s, trusted_key());
    p.set_env("GOOGLE_APPLICATION_CREDENTIALS", key.to_str().unwrap());
    let g = p.provider(&endpoint(&s));
    assert_eq!(read_str(&g, item("projects/acme/secrets/db")), CANARY);
    assert_eq!(s.token_requests(), 1);
}

#[test]
fn standin_service_account_with_an_untrusted_key_is_refused() {
    let s = StandIn::start();
    s.trust_service_account(SA_EMAIL, SA_KEY_ID, &trusted_key().public_pem);
    s.seed("projects/acme/secrets/db", CANARY.as_bytes());
    let p = Project::new();
    let key = p.service_account_file(&s, rogue_key()); // same kid and email, other key
    let g = p.provider(&format!(
        "{}\ncredentials = \"{}\"",
        endpoint(&s),
        key.display()
    ));
    let e = read_err(&g, item("projects/acme/secrets/db"));
    assert_eq!(e.kind, ErrorKind::Auth, "{e}");
    assert!(e.message.contains("invalid_grant"), "{e}");
    assert!(e.message.contains(SA_EMAIL), "{e}");
    assert!(
        s.last_rejection()
            .unwrap()
            .contains("Invalid JWT Signature")
    );
    assert_eq!(s.token_requests(), 0);
    let rogue_body = rogue_key().private_pem.lines().nth(1).unwrap();
    assert!(!format!("{e} {e:?}").contains(rogue_body));
}

#[test]
fn credentials_file_problems_are_config_errors_without_its_content() {
    let s = StandIn::start();
    let mut p = Project::new();
    // A key file whose private key is not PEM (holds the canary).
    let bad_key = p.write_json(
        "keys/bad.json",
        &serde_json::json!({"type": "service_account", "client_email": SA_EMAIL,
            "private_key": CANARY, "token_uri": s.token_uri()}),
    );
    let g = p.provider(&format!(
        "{}\ncredentials = \"{}\"",
        endpoint(&s),
        bad_key.display()
    ));
    let e = read_err(&g, item("projects/acme/secrets/db"));
    assert_eq!(e.kind, ErrorKind::Config, "{e}");
    assert!(e.message.contains("private_key"), "{e}");
    // A field of the wrong type: serde would quote it; kz gives a position only.
    let wrong = p.write_json(
        "keys/wrong.json",
        &serde_json::json!({"type": "authorized_user", "client_id": 5,
            "client_secret": CANARY, "refresh_token": CANARY}),
    );
    p.set_env("GOOGLE_APPLICATION_CREDENTIALS", wrong.to_str().unwrap());
    let g = p.provider(&endpoint(&s));
    let e = read_err(&g, item("projects/acme/secrets/db"));
    assert_eq!(e.kind, ErrorKind::Config, "{e}");
    assert!(e.message.contains("GOOGLE_APPLICATION_CREDENTIALS"), "{e}");
    // Unsupported type, and a missing file.
    let ext = p.write_json(
        "keys/ext.json",
        &serde_json::json!({"type": "external_account"}),
    );
    let g = p.provider(&format!(
        "{}\ncredentials = \"{}\"",
        endpoint(&s),
        ext.display()
    ));
    let e = read_err(&g, item("projects/acme/secrets/db"));
    assert_eq!(e.kind, ErrorKind::Config, "{e}");
    assert!(e.message.contains("external_account"), "{e}");
    let g = p.provider(&format!(
        "{}\ncredentials = \"keys/none.json\"",
        endpoint(&s)
    ));
    let e = read_err(&g, item("projects/acme/secrets/db"));
    assert_eq!(e.kind, ErrorKind::Config, "{e}");
    assert!(e.message.contains("none.json"), "{e}");
}

#[test]
fn standin_authorized_user_from_the_default_adc_file() {
    let s = StandIn::start();
    s.trust_user(
        "kz-client.apps.googleusercontent.com",
        USER_SECRET,
        REFRESH_TOKEN,
    );
    s.seed("projects/acme/secrets/db", CANARY.as_bytes());
    let p = Project::new();
    p.write_json(
        "home/.config/gcloud/application_default_credentials.json",
        &Project::authorized_user_json(&s),
    );
    let g = p.provider(&endpoint(&s));
    assert_eq!(read_str(&g, item("projects/acme/secrets/db")), CANARY);
    assert_eq!(read_str(&g, item("projects/acme/secrets/db")), CANARY);
    assert_eq!(s.token_requests(), 1);
    let d = g.describe();
    assert!(
        d.details
            .iter()
            .any(|(k, v)| k == "auth" && v.contains("user credentials")),
        "{:?}",
        d.details
    );
}

#[test]
fn standin_authorized_user_from_cloudsdk_config_and_a_revoked_refresh_token() {
    let s = StandIn::start();
    s.trust_user(
        "kz-client.apps.googleusercontent.com",
        USER_SECRET,
        REFRESH_TOKEN,
    );
    s.seed("projects/acme/secrets/db", CANARY.as_bytes());
    let mut p = Project::new();
    p.write_json(
        "gcloud-dir/application_default_credentials.json",
        &Project::authorized_user_json(&s),
    );
    let dir = p.path().join("gcloud-dir");
    p.set_env("CLOUDSDK_CONFIG", dir.to_str().unwrap());
    let g = p.provider(&endpoint(&s));
    assert_eq!(read_str(&g, item("projects/acme/secrets/db")), CANARY);

    // Another stand-in that does not know this refresh token.
    let other = StandIn::start();
    other.seed("projects/acme/secrets/db", CANARY.as_bytes());
    p.write_json(
        "gcloud-dir/application_default_credentials.json",
        &Project::authorized_user_json(&other),
    );
    let g = p.provider(&endpoint(&other));
    let e = read_err(&g, item("projects/acme/secrets/db"));
    assert_eq!(e.kind, ErrorKind::Auth, "{e}");
    assert!(e.message.contains("invalid_grant"), "{e}");
    assert!(
        e.message.contains("application_default_credentials.json"),
        "{e}"
    );
}

#[test]
fn standin_metadata_server_via_gce_metadata_host() {
    let s = StandIn::start();
    s.seed("projects/acme/secrets/db", CANARY.as_bytes());
    let mut p = Project::new();
    p.set_env("GCE_METADATA_HOST", &s.addr.to_string());
    let g = p.provider(&endpoint(&s));
    rt().block_on(g.check()).unwrap();
    assert_eq!(read_str(&g, item("projects/acme/secrets/db")), CANARY);
    assert_eq!(s.token_requests(), 1);
    let d = g.describe();
    assert!(
        d.details
            .iter()
            .any(|(k, v)| k == "auth" && v.contains(&s.addr.to_string())),
        "{:?}",
        d.details
    );
}

#[test]
fn standin_expired_token_is_fetched_again() {
    let s = StandIn::start();
    s.set_expires_in(0);
    s.seed("projects/acme/secrets/db", CANARY.as_bytes());
    let mut p = Project::new();
    p.set_env("GCE_METADATA_HOST", &s.addr.to_string());
    let g = p.provider(&endpoint(&s));
    for _ in 0..3 {
        assert_eq!(read_str(&g, item("projects/acme/secrets/db")), CANARY);
    }
    assert_eq!(s.token_requests(), 3);
}

#[test]
fn google_access_token_comes_first() {
    let (s, mut p) = standin_with_env_token();
    s.seed("projects/acme/secrets/db", CANARY.as_bytes());
    // A credentials file and a metadata server exist too, but are not used.
    p.set_env("GCE_METADATA_HOST", &s.addr.to_string());
    let key = p.service_account_file(&s, trusted_key());
    let g = p.provider(&format!(
        "{}\ncredentials = \"{}\"",
        endpoint(&s),
        key.display()
    ));
    assert_eq!(read_str(&g, item("projects/acme/secrets/db")), CANARY);
    assert_eq!(s.token_requests(), 0);
    let d = g.describe();
    let shown = format!("{g:?} {:?}", d.details);
    assert!(shown.contains("GOOGLE_ACCESS_TOKEN"), "{shown}");
    assert!(!shown.contains(ENV_TOKEN), "{shown}");
}

// ---- writes and deletes ----

#[test]
fn standin_write_creates_the_secret_then_adds_versions() {
    let (s, p) = standin_with_env_token();
    let g = p.provider(&format!("{}\nproject = \"acme\"", endpoint(&s)));
    let rt = rt();
    rt.block_on(g.write(&item("fresh"), &SecretValue::from_str_copy("v1")))
        .unwrap();
    rt.block_on(g.write(&item("fresh"), &SecretValue::from_str_copy(CANARY)))
        .unwrap();
    assert_eq!(
        s.log(),
        [
            "POST /v1/projects/acme/secrets/fresh:addVersion",
            "POST /v1/projects/acme/secrets?secretId=fresh",
            "POST /v1/projects/acme/secrets/fresh:addVersion",
            "POST /v1/projects/acme/secrets/fresh:addVersion",
        ]
    );
    let versions = s.versions("projects/acme/secrets/fresh").unwrap();
    assert_eq!(versions.len(), 2);
    assert_eq!(versions[0].0, b"v1");
    assert_eq!(versions[1].0, CANARY.as_bytes());
    drop(rt);
    assert_eq!(read_str(&g, item("fresh")), CANARY);
    assert_eq!(read_str(&g, item_with("fresh", &[("version", "1")])), "v1");
}

#[test]
fn standin_write_errors() {
    let (s, p) = standin_with_env_token();
    s.seed("projects/acme/secrets/db", b"x");
    s.deny("projects/acme/secrets/locked");
    s.seed("projects/acme/secrets/locked", b"x");
    let g = p.provider(&endpoint(&s));
    let rt = rt();
    let value = SecretValue::from_str_copy(CANARY);
    let e = rt
        .block_on(g.write(&item("projects/acme/secrets/db/versions/1"), &value))
        .unwrap_err();
    assert_eq!(e.kind, ErrorKind::BadReference, "{e}");
    assert_clean(&e);
    let e = rt
        .block_on(g.write(&item("projects/acme/secrets/locked"), &value))
        .unwrap_err();
    assert_eq!(e.kind, ErrorKind::Auth, "{e}");
    assert!(e.message.contains("secretmanager.versions.add"), "{e}");
    assert_clean(&e);
    s.fail_once(503);
    let e = rt
        .block_on(g.write(&item("projects/acme/secrets/db"), &value))
        .unwrap_err();
    assert!(e.transient && e.kind == ErrorKind::Network, "{e}");
    assert_clean(&e);
    assert_eq!(s.versions("projects/acme/secrets/db").unwrap().len(), 1);
}

#[test]
fn standin_write_with_field_merges_into_the_json_object() {
    let (s, p) = standin_with_env_token();
    s.seed(
        "projects/acme/secrets/db",
        br#"{"user":"app","password":"old"}"#,
    );
    s.seed("projects/acme/secrets/plain", CANARY.as_bytes());
    let g = p.provider(&endpoint(&s));
    let rt = rt();
    let with_field = |r: &str, f: &str| Item {
        field: Some(f.to_string()),
        ..item(r)
    };
    rt.block_on(g.write(
        &with_field("projects/acme/secrets/db", "password"),
        &SecretValue::from_str_copy(CANARY),
    ))
    .unwrap();
    let versions = s.versions("projects/acme/secrets/db").unwrap();
    let latest: serde_json::Value = serde_json::from_slice(&versions[1].0).unwrap();
    assert_eq!(
        latest,
        serde_json::json!({"user": "app", "password": CANARY})
    );
    // A missing secret starts as an empty object.
    rt.block_on(g.write(
        &with_field("projects/acme/secrets/new", "k"),
        &SecretValue::from_str_copy("v"),
    ))
    .unwrap();
    assert_eq!(
        s.versions("projects/acme/secrets/new").unwrap()[0].0,
        br#"{"k":"v"}"#
    );
    // A value that is not a JSON object is left alone.
    let e = rt
        .block_on(g.write(
            &with_field("projects/acme/secrets/plain", "k"),
            &SecretValue::from_str_copy("v"),
        ))
        .unwrap_err();
    assert_eq!(e.kind, ErrorKind::Field, "{e}");
    assert_clean(&e);
    assert_eq!(s.versions("projects/acme/secrets/plain").unwrap().len(), 1);
}

#[test]
fn standin_delete_destroys_only_the_latest_version() {
    let (s, p) = standin_with_env_token();
    s.seed("projects/acme/secrets/db", b"old");
    s.seed("projects/acme/secrets/db", CANARY.as_bytes());
    let g = p.provider(&endpoint(&s));
    let rt = rt();
    rt.block_on(g.delete(&item("projects/acme/secrets/db")))
        .unwrap();
    assert!(
        s.log()
            .contains(&"GET /v1/projects/acme/secrets/db/versions/latest".to_string())
    );
    assert!(
        s.log()
            .contains(&"POST /v1/projects/acme/secrets/db/versions/2:destroy".to_string())
    );
    let versions = s.versions("projects/acme/secrets/db").unwrap();
    assert_eq!(versions[0], (b"old".to_vec(), "ENABLED"));
    assert_eq!(versions[1], (Vec::new(), "DESTROYED"));
    // Reading latest is now NotFound; the older version is still there.
    let e = rt
        .block_on(g.resolve(&[item("projects/acme/secrets/db")]))
        .pop()
        .unwrap()
        .unwrap_err();
    assert_eq!(e.kind, ErrorKind::NotFound, "{e}");
    // A second purge, or one of a missing secret, is NotFound (kz rm says "had no value").
    let e = rt
        .block_on(g.delete(&item("projects/acme/secrets/db")))
        .unwrap_err();
    assert_eq!(e.kind, ErrorKind::NotFound, "{e}");
    let e = rt
        .block_on(g.delete(&item("projects/acme/secrets/none")))
        .unwrap_err();
    assert_eq!(e.kind, ErrorKind::NotFound, "{e}");
    // A named version is destroyed by number.
    rt.block_on(g.delete(&item_with("projects/acme/secrets/db", &[("version", "1")])))
        .unwrap();
    assert_eq!(
        s.versions("projects/acme/secrets/db").unwrap()[0].1,
        "DESTROYED"
    );
    // With a field, nothing is destroyed.
    s.seed("projects/acme/secrets/db", b"{}");
    let e = rt
        .block_on(g.delete(&Item {
            field: Some("k".into()),
            ..item("projects/acme/secrets/db")
        }))
        .unwrap_err();
    assert_eq!(e.kind, ErrorKind::Unsupported, "{e}");
    assert_eq!(
        s.versions("projects/acme/secrets/db").unwrap()[2].1,
        "ENABLED"
    );
}

#[test]
fn bad_options_are_config_errors() {
    let p = Project::new();
    let e = p.try_provider("endpoint_url = \"ftp://x\"").unwrap_err();
    assert_eq!(e.kind, ErrorKind::Config, "{e}");
    let e = p.try_provider("project = \"a b\"").unwrap_err();
    assert_eq!(e.kind, ErrorKind::Config, "{e}");
    let g = p.provider("project = \"acme\"");
    let d = g.describe();
    assert_eq!(d.type_name, "gcp");
    assert!(
        d.details
            .iter()
            .any(|(k, v)| k == "endpoint" && v == "https://secretmanager.googleapis.com")
    );
}
