//! The `age` provider against real files, real SSH keys and the real `age` CLI.
// Test helpers may unwrap and panic: a panic here is a failed assertion (clippy.toml's
// `allow-*-in-tests` covers `#[test]` functions only, not their helpers).
#![allow(clippy::unwrap_used, clippy::panic, clippy::indexing_slicing)]

use std::collections::HashMap;
use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;

use age::secrecy::{ExposeSecret, SecretString};
use kz_config::{LoadRequest, ProviderInstance, load};
use kz_providers::BuildContext;
use kz_providers::age_files::AgeProvider;
use kz_resolve::{ErrorKind, Item, Provider, ProviderError};
use kz_secret::{Resolved, SecretValue};

const CANARY: &str = "kz-canary-5d1e7b";

/// Fails (never skips) when a tool is missing, saying how to install it.
fn require(tool: &str, package: &str) {
    let found = Command::new("sh")
        .arg("-c")
        .arg(format!("command -v {tool}"))
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false);
    assert!(
        found,
        "`{tool}` is needed by these tests: install the `{package}` package: apt-get install {package}"
    );
}

/// Runs a command, failing the test with its stderr when it fails.
fn run(cmd: &mut Command) -> Vec<u8> {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

/// An X25519 key pair made with the age crate: (identity file text, recipient).
fn keypair() -> (String, String) {
    let id = age::x25519::Identity::generate();
    let recipient = id.to_public().to_string();
    let text = format!(
        "# created: 2024-01-01T00:00:00Z\n# public key: {recipient}\n{}\n",
        id.to_string().expose_secret()
    );
    (text, recipient)
}

fn encrypt_to(recipient: &str, plaintext: &[u8], armor: bool) -> Vec<u8> {
    let r: age::x25519::Recipient = recipient.parse().unwrap();
    if armor {
        age::encrypt_and_armor(&r, plaintext).unwrap().into_bytes()
    } else {
        age::encrypt(&r, plaintext).unwrap()
    }
}

fn decrypt_with(identity_text: &str, ciphertext: &[u8]) -> Vec<u8> {
    let ids = age::IdentityFile::from_buffer(identity_text.as_bytes())
        .unwrap()
        .into_identities()
        .unwrap();
    let d = age::Decryptor::new_buffered(age::armor::ArmoredReader::new(ciphertext)).unwrap();
    let mut r = d
        .decrypt(ids.iter().map(|i| i.as_ref() as &dyn age::Identity))
        .unwrap();
    let mut out = Vec::new();
    std::io::Read::read_to_end(&mut r, &mut out).unwrap();
    out
}

struct Project {
    dir: tempfile::TempDir,
    env: HashMap<String, String>,
    interactive: bool,
}

impl Project {
    fn new() -> Self {
        Self {
            dir: tempfile::tempdir().unwrap(),
            env: HashMap::new(),
            interactive: false,
        }
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }

    fn write(&self, rel: &str, data: impl AsRef<[u8]>) -> PathBuf {
        let p = self.path().join(rel);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(&p, data).unwrap();
        p
    }

    fn ctx(&self) -> BuildContext {
        let env = self.env.clone();
        BuildContext {
            home: Some(self.path().join("home")),
            config_home: self.path().join("config"),
            data_home: self.path().join("data"),
            runtime_dir: None,
            project_dir: self.path().to_path_buf(),
            getenv: Arc::new(move |k| env.get(k).cloned()),
            verbose: false,
            interactive: self.interactive,
        }
    }

    /// `[providers.age]` with the given body.
    fn instance(&self, body: &str) -> ProviderInstance {
        std::fs::write(
            self.path().join(".keyzero.toml"),
            format!("[providers.age]\n{body}"),
        )
        .unwrap();
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
        config.provider("age").unwrap().clone()
    }

    fn provider(&self, body: &str) -> AgeProvider {
        AgeProvider::new(&self.instance(body), &self.ctx()).unwrap()
    }
}

fn item(reference: &str, field: Option<&str>) -> Item {
    Item {
        name: "SECRET".into(),
        reference: reference.into(),
        field: field.map(String::from),
        params: vec![],
    }
}

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

fn resolve_one(
    p: &dyn Provider,
    reference: &str,
    field: Option<&str>,
) -> Result<Resolved, ProviderError> {
    let mut out = rt().block_on(p.resolve(&[item(reference, field)]));
    assert_eq!(out.len(), 1);
    out.remove(0)
}

fn value(r: Result<Resolved, ProviderError>) -> Vec<u8> {
    match r {
        Ok(Resolved::Single(v)) => v.expose_bytes().to_vec(),
        other => panic!("{other:?}"),
    }
}

fn text(r: Result<Resolved, ProviderError>) -> String {
    String::from_utf8(value(r)).unwrap()
}

/// The error, checked for the canary in every form it can be shown.
fn error(r: Result<impl std::fmt::Debug, ProviderError>) -> ProviderError {
    let e = r.unwrap_err();
    let shown = format!("{e} {e:?} {:?}", e.help);
    assert!(!shown.contains(CANARY), "{shown}");
    e
}

fn write(
    p: &dyn Provider,
    reference: &str,
    field: Option<&str>,
    v: &str,
) -> Result<(), ProviderError> {
    rt().block_on(p.write(&item(reference, field), &SecretValue::from_str_copy(v)))
}

#[test]
fn x25519_round_trip_through_the_provider() {
    let p = Project::new();
    let (id, recipient) = keypair();
    p.write("keys/me.txt", &id);
    let prov = p.provider(&format!(
        "identity = \"keys/me.txt\"\nrecipients = [\"{recipient}\"]\n"
    ));
    assert!(prov.handles_field());
    assert!(prov.max_batch() > 1);

    let secret = format!("{CANARY}\nwith a newline and ünïcode");
    write(&prov, "secrets/new/db.age", None, &secret).unwrap();
    let file = p.path().join("secrets/new/db.age");
    let bytes = std::fs::read(&file).unwrap();
    assert!(
        bytes.starts_with(b"age-encryption.org/v1"),
        "a new file is binary"
    );
    assert!(!String::from_utf8_lossy(&bytes).contains(CANARY));
    assert_eq!(
        std::fs::metadata(&file).unwrap().permissions().mode() & 0o777,
        0o600
    );
    assert_eq!(decrypt_with(&id, &bytes), secret.as_bytes());
    assert_eq!(text(resolve_one(&prov, "secrets/new/db.age", None)), secret);
    // No temporary files are left behind.
    let left: Vec<_> = std::fs::read_dir(p.path().join("secrets/new"))
        .unwrap()
        .collect();
    assert_eq!(left.len(), 1);

    // Binary values survive.
    rt().block_on(prov.write(
        &item("bin.age", None),
        &SecretValue::from_bytes(vec![0, 255, 1, 254]),
    ))
    .unwrap();
    assert_eq!(
        value(resolve_one(&prov, "bin.age", None)),
        vec![0, 255, 1, 254]
    );
}

#[test]
fn reads_binary_and_armoured_files_and_batches_in_order() {
    let p = Project::new();
    let (id, recipient) = keypair();
    let (other_id, other_recipient) = keypair();
    p.write("me.txt", &id);
    p.write("other.txt", &other_id);
    p.write("a.age", encrypt_to(&recipient, b"alpha", false));
    p.write("b.age", encrypt_to(&other_recipient, b"beta", true));
    let prov = p.provider("identity = [\"me.txt\", \"other.txt\"]\n");
    let items = [
        item("b.age", None),
        item("missing.age", None),
        item("a.age", None),
        item("./sub/../a.age", None),
    ];
    let mut out = rt().block_on(prov.resolve(&items));
    assert_eq!(out.len(), 4);
    assert_eq!(text(out.remove(0)), "beta");
    let e = error(out.remove(0));
    assert_eq!(e.kind, ErrorKind::NotFound);
    assert!(e.message.contains("missing.age"), "{e}");
    assert_eq!(text(out.remove(0)), "alpha");
    assert_eq!(text(out.remove(0)), "alpha");

    // Absolute paths are taken as they are.
    let abs = p.path().join("a.age");
    assert_eq!(
        text(resolve_one(&prov, abs.to_str().unwrap(), None)),
        "alpha"
    );
}

#[test]
fn identities_from_the_environment() {
    let (id, recipient) = keypair();
    let secret_line = id
        .lines()
        .find(|l| l.starts_with("AGE-SECRET-KEY-"))
        .unwrap()
        .to_string();

    let mut p = Project::new();
    p.write("a.age", encrypt_to(&recipient, b"from-env", false));
    p.env
        .insert("KEYZERO_AGE_IDENTITY".into(), format!("{secret_line}\n"));
    let prov = p.provider("");
    assert_eq!(text(resolve_one(&prov, "a.age", None)), "from-env");
    // describe() and Debug name the source, never the key.
    let shown = format!("{:?} {prov:?}", prov.describe());
    assert!(shown.contains("KEYZERO_AGE_IDENTITY"), "{shown}");
    assert!(
        !shown.contains(&secret_line) && !shown.contains("AGE-SECRET-KEY"),
        "{shown}"
    );

    let mut p = Project::new();
    p.write("a.age", encrypt_to(&recipient, b"from-env-file", false));
    let key = p.write("home/keys/id.txt", &id);
    p.env
        .insert("KEYZERO_AGE_IDENTITY_FILE".into(), "~/keys/id.txt".into());
    let prov = p.provider("");
    assert_eq!(text(resolve_one(&prov, "a.age", None)), "from-env-file");
    let d = prov.describe();
    assert!(
        d.details
            .iter()
            .any(|(k, v)| k == "identity" && v.contains(key.to_str().unwrap())),
        "{d:?}"
    );
    assert!(
        d.details
            .iter()
            .any(|(k, v)| k == "recipients" && v.contains("read-only")),
        "{d:?}"
    );
}

#[test]
fn no_identity_explains_the_three_ways() {
    let p = Project::new();
    let (_, recipient) = keypair();
    p.write("a.age", encrypt_to(&recipient, CANARY.as_bytes(), false));
    let prov = p.provider("");
    let e = error(resolve_one(&prov, "a.age", None));
    assert_eq!(e.kind, ErrorKind::Config);
    let help = e.help.unwrap();
    for way in [
        "identity",
        "KEYZERO_AGE_IDENTITY",
        "KEYZERO_AGE_IDENTITY_FILE",
    ] {
        assert!(help.contains(way), "{help}");
    }
    let e = error(rt().block_on(prov.check()));
    assert_eq!(e.kind, ErrorKind::Config);

    let prov = p.provider("identity = \"nope.txt\"\n");
    let e = error(resolve_one(&prov, "a.age", None));
    assert_eq!(e.kind, ErrorKind::Config);
    assert!(
        e.message.contains("nope.txt") && e.help.as_deref().unwrap().contains("age-keygen"),
        "{e}"
    );

    p.write("bad.txt", format!("# comment\n{CANARY}\n"));
    let prov = p.provider("identity = \"bad.txt\"\n");
    let e = error(resolve_one(&prov, "a.age", None));
    assert_eq!(e.kind, ErrorKind::Config);
    assert!(e.message.contains("bad.txt"), "{e}");
}

#[test]
fn wrong_identity_is_auth_and_corrupt_is_backend() {
    let p = Project::new();
    let (id, my_recipient) = keypair();
    let (_, other_recipient) = keypair();
    p.write("me.txt", &id);
    p.write(
        "theirs.age",
        encrypt_to(&other_recipient, CANARY.as_bytes(), false),
    );
    let prov = p.provider("identity = \"me.txt\"\n");
    let e = error(resolve_one(&prov, "theirs.age", None));
    assert_eq!(e.kind, ErrorKind::Auth);
    assert!(
        e.message
            .contains("no identity matches the file's recipients"),
        "{e}"
    );
    assert!(e.message.contains("theirs.age"));

    p.write("junk.age", format!("not an age file {CANARY}"));
    let e = error(resolve_one(&prov, "junk.age", None));
    assert_eq!(e.kind, ErrorKind::Backend);
    assert!(e.message.contains("junk.age"), "{e}");

    let mut truncated = encrypt_to(&my_recipient, &[b'x'; 1000], false);
    truncated.truncate(truncated.len() - 20);
    p.write("truncated.age", truncated);
    assert_eq!(
        error(resolve_one(&prov, "truncated.age", None)).kind,
        ErrorKind::Backend
    );
}

#[test]
fn references_may_not_climb_out_of_the_project() {
    let p = Project::new();
    let (id, recipient) = keypair();
    p.write("me.txt", &id);
    let prov = p.provider(&format!(
        "identity = \"me.txt\"\nrecipients = [\"{recipient}\"]\n"
    ));
    for bad in [
        "../outside.age",
        "a/../../outside.age",
        "./../x.age",
        "",
        ".",
        "sub/..",
    ] {
        let e = error(resolve_one(&prov, bad, None));
        assert_eq!(e.kind, ErrorKind::BadReference, "{bad}: {e}");
        let e = error(write(&prov, bad, None, CANARY));
        assert_eq!(e.kind, ErrorKind::BadReference, "{bad}: {e}");
    }
    assert!(!p.path().parent().unwrap().join("outside.age").exists());
}

#[test]
fn fields_from_json_and_dotenv_plaintext() {
    let p = Project::new();
    let (id, recipient) = keypair();
    p.write("me.txt", &id);
    let json =
        format!(r#"{{"user":"admin","password":"{CANARY}","port":5432,"tls":{{"on":true}}}}"#);
    p.write("db.age", encrypt_to(&recipient, json.as_bytes(), false));
    let dotenv = format!("# app\nexport API_KEY=\"{CANARY}\"\nREGION=eu-west-1\n");
    p.write("app.age", encrypt_to(&recipient, dotenv.as_bytes(), true));
    p.write(
        "plain.age",
        encrypt_to(&recipient, CANARY.as_bytes(), false),
    );
    let prov = p.provider("identity = \"me.txt\"\n");

    assert_eq!(text(resolve_one(&prov, "db.age", Some("password"))), CANARY);
    assert_eq!(text(resolve_one(&prov, "db.age", Some("user"))), "admin");
    assert_eq!(text(resolve_one(&prov, "db.age", Some("port"))), "5432");
    assert_eq!(
        text(resolve_one(&prov, "db.age", Some("tls"))),
        r#"{"on":true}"#
    );
    assert_eq!(text(resolve_one(&prov, "db.age", None)), json);
    let e = error(resolve_one(&prov, "db.age", Some("pass")));
    assert_eq!(e.kind, ErrorKind::Field);
    let help = e.help.clone().unwrap();
    assert!(
        e.message.contains("`pass`") && e.message.contains("db.age"),
        "{e}"
    );
    assert!(
        help.contains("password") && help.contains("user") && help.contains("port"),
        "{help}"
    );

    assert_eq!(text(resolve_one(&prov, "app.age", Some("API_KEY"))), CANARY);
    assert_eq!(
        text(resolve_one(&prov, "app.age", Some("REGION"))),
        "eu-west-1"
    );
    let e = error(resolve_one(&prov, "app.age", Some("API")));
    assert_eq!(e.kind, ErrorKind::Field);
    let help = e.help.unwrap();
    assert!(
        help.contains("API_KEY") && help.contains("REGION"),
        "{help}"
    );

    let e = error(resolve_one(&prov, "plain.age", Some("x")));
    assert_eq!(e.kind, ErrorKind::Field);
    assert!(
        e.message.contains("neither a JSON object nor dotenv"),
        "{e}"
    );
}

#[test]
fn field_writes_keep_the_other_members_and_the_armour() {
    let p = Project::new();
    let (id, recipient) = keypair();
    p.write("me.txt", &id);
    p.write(
        "db.age",
        encrypt_to(
            &recipient,
            br#"{"user":"admin","password":"old","port":5432}"#,
            true,
        ),
    );
    let prov = p.provider(&format!(
        "identity = \"me.txt\"\nrecipients = [\"{recipient}\"]\n"
    ));

    write(&prov, "db.age", Some("password"), CANARY).unwrap();
    let bytes = std::fs::read(p.path().join("db.age")).unwrap();
    assert!(
        bytes.starts_with(b"-----BEGIN AGE ENCRYPTED FILE-----"),
        "armour is kept"
    );
    let plain: serde_json::Value = serde_json::from_slice(&decrypt_with(&id, &bytes)).unwrap();
    assert_eq!(
        plain,
        serde_json::json!({"user": "admin", "password": CANARY, "port": 5432})
    );
    assert_eq!(text(resolve_one(&prov, "db.age", Some("password"))), CANARY);

    // A new file becomes {field: value}.
    write(&prov, "fresh/new.age", Some("token"), "t0k").unwrap();
    let bytes = std::fs::read(p.path().join("fresh/new.age")).unwrap();
    let plain: serde_json::Value = serde_json::from_slice(&decrypt_with(&id, &bytes)).unwrap();
    assert_eq!(plain, serde_json::json!({"token": "t0k"}));

    // A whole-file write to an armoured file stays armoured.
    write(&prov, "db.age", None, "replaced").unwrap();
    let bytes = std::fs::read(p.path().join("db.age")).unwrap();
    assert!(bytes.starts_with(b"-----BEGIN AGE ENCRYPTED FILE-----"));
    assert_eq!(decrypt_with(&id, &bytes), b"replaced");

    // A field cannot be set in a file that is not a JSON object.
    let e = error(write(&prov, "db.age", Some("x"), CANARY));
    assert_eq!(e.kind, ErrorKind::Field);
    assert_eq!(
        decrypt_with(&id, &std::fs::read(p.path().join("db.age")).unwrap()),
        b"replaced"
    );
}

#[test]
fn writing_needs_recipients() {
    let p = Project::new();
    let (id, _) = keypair();
    p.write("me.txt", &id);
    let prov = p.provider("identity = \"me.txt\"\n");
    let e = error(write(&prov, "a.age", None, CANARY));
    assert_eq!(e.kind, ErrorKind::Unsupported);
    assert_eq!(
        e.help.as_deref(),
        Some("set `recipients` on the age provider to let kz write")
    );
    assert!(!p.path().join("a.age").exists());

    let e =
        AgeProvider::new(&p.instance("recipients = [\"age1notakey\"]\n"), &p.ctx()).unwrap_err();
    assert_eq!(e.kind, ErrorKind::Config);
    assert!(e.message.contains("recipient"), "{e}");
    let e = AgeProvider::new(&p.instance("recipients = [\"pgp:1234\"]\n"), &p.ctx()).unwrap_err();
    assert_eq!(e.kind, ErrorKind::Config);
}

#[test]
fn passphrase_protected_identities_need_a_terminal() {
    let p = Project::new();
    let (id, recipient) = keypair();
    let protected = age::Encryptor::with_user_passphrase(SecretString::from("pw".to_string()));
    let mut out = Vec::new();
    let mut w = protected.wrap_output(&mut out).unwrap();
    w.write_all(id.as_bytes()).unwrap();
    w.finish().unwrap();
    p.write("locked.age", out);
    p.write("a.age", encrypt_to(&recipient, CANARY.as_bytes(), false));
    let prov = p.provider("identity = \"locked.age\"\n");
    let e = error(resolve_one(&prov, "a.age", None));
    assert_eq!(e.kind, ErrorKind::Config);
    assert!(
        e.message.contains("passphrase identity needs a terminal"),
        "{e}"
    );
    assert!(e.message.contains("locked.age"), "{e}");
}

fn ssh_keygen(dir: &Path, name: &str, args: &[&str]) -> (PathBuf, String) {
    require("ssh-keygen", "openssh-client");
    let key = dir.join(name);
    run(Command::new("ssh-keygen")
        .args(args)
        .arg("-q")
        .arg("-C")
        .arg("kz-test")
        .arg("-f")
        .arg(&key));
    let public = std::fs::read_to_string(dir.join(format!("{name}.pub"))).unwrap();
    (key, public.trim().to_string())
}

#[test]
fn ssh_ed25519_and_rsa_identities() {
    let p = Project::new();
    let keys = p.path().join("keys");
    std::fs::create_dir_all(&keys).unwrap();
    let (ed, ed_pub) = ssh_keygen(&keys, "id_ed25519", &["-t", "ed25519", "-N", ""]);
    let (rsa, rsa_pub) = ssh_keygen(&keys, "id_rsa", &["-t", "rsa", "-b", "2048", "-N", ""]);
    assert!(ed.exists() && rsa.exists());

    // Written by the provider to both SSH recipients, read with either key.
    let body =
        format!("identity = \"keys/id_ed25519\"\nrecipients = [\"{ed_pub}\", \"{rsa_pub}\"]\n");
    let prov = p.provider(&body);
    write(&prov, "s.age", None, CANARY).unwrap();
    assert_eq!(text(resolve_one(&prov, "s.age", None)), CANARY);
    let prov_rsa = p.provider("identity = \"keys/id_rsa\"\n");
    assert_eq!(text(resolve_one(&prov_rsa, "s.age", None)), CANARY);

    // Written by the age CLI to the SSH public key.
    require("age", "age");
    run(Command::new("age")
        .arg("-r")
        .arg(&ed_pub)
        .arg("-o")
        .arg(p.path().join("cli.age"))
        .arg(p.write("plain.txt", "from-cli")));
    assert_eq!(text(resolve_one(&prov, "cli.age", None)), "from-cli");

    // A passphrase-protected SSH key needs a terminal.
    let (_, _) = ssh_keygen(&keys, "locked", &["-t", "ed25519", "-N", "secret-pass"]);
    let prov = p.provider("identity = \"keys/locked\"\n");
    let e = error(resolve_one(&prov, "s.age", None));
    assert_eq!(e.kind, ErrorKind::Config);
    assert!(e.message.contains("needs a terminal"), "{e}");
}

#[test]
fn interop_with_the_age_cli() {
    require("age", "age");
    require("age-keygen", "age");
    let p = Project::new();
    let key = p.path().join("key.txt");
    run(Command::new("age-keygen").arg("-o").arg(&key));
    let recipient = String::from_utf8(run(Command::new("age-keygen").arg("-y").arg(&key))).unwrap();
    let recipient = recipient.trim().to_string();
    let plain = p.write("plain.txt", format!("{{\"password\":\"{CANARY}\"}}"));

    // Encrypted by the CLI, binary and armoured, read by the provider.
    run(Command::new("age")
        .arg("-r")
        .arg(&recipient)
        .arg("-o")
        .arg(p.path().join("bin.age"))
        .arg(&plain));
    run(Command::new("age")
        .arg("-a")
        .arg("-r")
        .arg(&recipient)
        .arg("-o")
        .arg(p.path().join("armor.age"))
        .arg(&plain));
    assert!(
        std::fs::read(p.path().join("armor.age"))
            .unwrap()
            .starts_with(b"-----BEGIN AGE ENCRYPTED FILE-----")
    );
    let prov = p.provider(&format!(
        "identity = \"key.txt\"\nrecipients = [\"{recipient}\"]\n"
    ));
    assert_eq!(
        text(resolve_one(&prov, "bin.age", Some("password"))),
        CANARY
    );
    assert_eq!(
        text(resolve_one(&prov, "armor.age", Some("password"))),
        CANARY
    );

    // Written by the provider, decrypted by the CLI (binary, then armoured).
    write(&prov, "out/by-kz.age", None, CANARY).unwrap();
    let out = run(Command::new("age")
        .arg("-d")
        .arg("-i")
        .arg(&key)
        .arg(p.path().join("out/by-kz.age")));
    assert_eq!(out, CANARY.as_bytes());
    write(&prov, "armor.age", Some("user"), "u").unwrap();
    let mut child = Command::new("age")
        .arg("-d")
        .arg("-i")
        .arg(&key)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let armored = std::fs::read(p.path().join("armor.age")).unwrap();
    assert!(armored.starts_with(b"-----BEGIN AGE ENCRYPTED FILE-----"));
    child.stdin.take().unwrap().write_all(&armored).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success());
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v, serde_json::json!({"password": CANARY, "user": "u"}));
}

#[test]
fn build_dispatches_to_age() {
    let p = Project::new();
    let (id, recipient) = keypair();
    p.write("me.txt", &id);
    p.write("a.age", encrypt_to(&recipient, b"built", false));
    let prov = kz_providers::build(&p.instance("identity = \"me.txt\"\n"), &p.ctx()).unwrap();
    assert_eq!(text(resolve_one(prov.as_ref(), "a.age", None)), "built");
    rt().block_on(prov.check()).unwrap();
}
