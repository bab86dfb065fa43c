//! `kz server start` as an operator runs it: a subprocess on loopback, `kz run` through the
//! `keyzero` provider (allow; deny with policy and reason; server down; TLS with a private CA),
//! reload on SIGHUP, audit rotation on SIGUSR1 with `kz audit verify` across the files, drain on
//! SIGTERM, and the canary never in the server's output or its audit log.

use std::path::PathBuf;
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use crate::util::{CANARY, Sandbox};

const ISS: &str = "https://ci.example";

/// A `kz server start` child, killed by its PID on drop.
pub(crate) struct Server {
    child: Child,
    pub(crate) addr: String,
    stdout: PathBuf,
    stderr: PathBuf,
}

impl Server {
    fn start(s: &Sandbox, extra: &[&str]) -> Server {
        let mut args = vec!["server", "start", "-b", "bundle.yaml", "-l", "127.0.0.1:0"];
        args.extend_from_slice(extra);
        Self::start_with(s, &args)
    }

    /// `kz` with `args` in the background, once it said where it listens.
    pub(crate) fn start_with(s: &Sandbox, args: &[&str]) -> Server {
        let stdout = s.root.path().join(format!("server-{}.out", args.len()));
        let stderr = s.root.path().join(format!("server-{}.err", args.len()));
        let child = s
            .cmd(args)
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(&stdout).unwrap())
            .stderr(std::fs::File::create(&stderr).unwrap())
            .spawn()
            .unwrap();
        let mut server = Server {
            child,
            addr: String::new(),
            stdout,
            stderr,
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            let err = std::fs::read_to_string(&server.stderr).unwrap_or_default();
            if let Some(rest) = err.split("kz server listening on ").nth(1) {
                server.addr = rest.split_whitespace().next().unwrap().to_owned();
                return server;
            }
            if let Ok(Some(status)) = server.child.try_wait() {
                panic!("kz server start exited with {status}: {err}");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!(
            "the server did not start: {}",
            std::fs::read_to_string(&server.stderr).unwrap_or_default()
        );
    }

    fn signal(&self, sig: rustix::process::Signal) {
        let pid = rustix::process::Pid::from_raw(i32::try_from(self.child.id()).unwrap()).unwrap();
        rustix::process::kill_process(pid, sig).unwrap();
    }

    pub(crate) fn output(&self) -> String {
        std::fs::read_to_string(&self.stdout).unwrap_or_default()
            + &std::fs::read_to_string(&self.stderr).unwrap_or_default()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn bundle(public: &str, first_policy: &str) -> String {
    let pem: String = public.lines().map(|l| format!("          {l}\n")).collect();
    format!(
        r#"version: "1"
issuers:
  - name: ci
    type: custom
    issuer_url: {ISS}
    audience: keyzero
    map: {{ org: team }}
    static_keys:
      - kid: k1
        alg: ES256
        pem: |
{pem}backends:
  files: {{ type: dotenv, path: secrets.env }}
resolvers:
  - {{ name: app/db, backend: files, ref: DB }}
  - {{ name: app/admin, backend: files, ref: ADMIN }}
policies:
{first_policy}  - name: no-admin
    rule: 'ref == "app/admin"'
    effect: deny
  - name: team-a
    rule: 'issuer == "ci" && org == "a"'
    effect: allow
audit:
  path: audit.jsonl
"#
    )
}

/// A sandbox with a bundle, its backend file, the issuer's private key, and a signed token.
fn team(extra_client_config: &str, endpoint: &str) -> (Sandbox, String) {
    let mut s = Sandbox::new();
    let key = rcgen::KeyPair::generate().unwrap();
    s.write("issuer.pem", &key.serialize_pem());
    s.write("issuer.pub.pem", &key.public_key_pem());
    s.write("bundle.yaml", &bundle(&key.public_key_pem(), ""));
    s.write(
        "secrets.env",
        &format!("DB={CANARY}\nADMIN={CANARY}-admin\n"),
    );
    let token = s
        .kz(&[
            "token",
            "sign",
            "--key",
            "issuer.pem",
            "--issuer",
            ISS,
            "--alg",
            "ES256",
            "--kid",
            "k1",
            "--claims",
            r#"{"aud":"keyzero","sub":"job-1","team":"a"}"#,
        ])
        .ok()
        .stdout
        .trim()
        .to_owned();
    s.set("KZ_TEAM_TOKEN", &token);
    client_config(&s, endpoint, extra_client_config);
    (s, token)
}

fn client_config(s: &Sandbox, endpoint: &str, extra: &str) {
    s.write(
        ".keyzero.toml",
        &format!(
            r#"[providers.team]
type = "keyzero"
endpoint = "{endpoint}"
token_source = "env:KZ_TEAM_TOKEN"
{extra}
[secrets]
DB = {{ provider = "team", ref = "app/db" }}
ADMIN = {{ provider = "team", ref = "app/admin", optional = true }}
"#
        ),
    );
}

#[test]
fn kz_run_resolves_through_the_server_which_reloads_rotates_and_drains() {
    let (s, token) = team("", "http://127.0.0.1:1");
    let server = Server::start(&s, &[]);
    client_config(&s, &format!("http://{}", server.addr), "");

    // Allowed: the value reaches the command.
    let r = s
        .kz(&[
            "--trust",
            "run",
            "--only",
            "DB",
            "--",
            "sh",
            "-c",
            "printf %s \"$DB\"",
        ])
        .ok();
    assert_eq!(r.stdout, CANARY);
    // Denied: the run fails with the policy (optional does not skip a denial).
    let r = s.kz(&["--trust", "run", "--", "true"]).code(1);
    assert!(
        r.stderr.contains("denied by policy `no-admin`"),
        "{}",
        r.stderr
    );
    assert!(
        !r.stderr.contains(CANARY) && !r.stderr.contains(&token),
        "{}",
        r.stderr
    );

    // Allowed by policy but no resolver: not found, not a denial.
    let config = s.read(".keyzero.toml");
    s.write(
        ".keyzero.toml",
        &format!("{config}GHOST = {{ provider = \"team\", ref = \"app/ghost\" }}\n"),
    );
    let r = s
        .kz(&["--trust", "run", "--only", "GHOST", "--", "true"])
        .code(1);
    assert!(r.stderr.contains("no resolver matches ref"), "{}", r.stderr);
    assert!(!r.stderr.contains("denied by policy"), "{}", r.stderr);
    s.write(".keyzero.toml", &config);

    // SIGHUP: a new bundle (a freeze policy first) serves.
    let public = s.read("issuer.pub.pem");
    s.write(
        "bundle.yaml",
        &bundle(
            &public,
            "  - name: freeze\n    rule: 'ref != \"\"'\n    effect: deny\n",
        ),
    );
    server.signal(rustix::process::Signal::HUP);
    let mut frozen = false;
    for _ in 0..100 {
        let r = s.kz(&["--trust", "run", "--only", "DB", "--", "true"]);
        if r.stderr.contains("denied by policy `freeze`") {
            frozen = true;
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(
        frozen,
        "the reloaded bundle did not serve: {}",
        server.output()
    );
    // An invalid bundle is refused and the freeze keeps serving.
    s.write("bundle.yaml", "version: 1\nresolvers: [ { name: x } ]\n");
    server.signal(rustix::process::Signal::HUP);
    std::thread::sleep(Duration::from_millis(300));
    let r = s
        .kz(&["--trust", "run", "--only", "DB", "--", "true"])
        .code(1);
    assert!(r.stderr.contains("freeze"), "{}", r.stderr);

    // SIGUSR1: the audit log is reopened after rotation; the chain continues across the files.
    let audit = s.path("audit.jsonl");
    let rotated = s.path("audit.jsonl.1");
    std::fs::rename(&audit, &rotated).unwrap();
    server.signal(rustix::process::Signal::USR1);
    let mut reopened = false;
    for _ in 0..100 {
        s.kz(&["--trust", "run", "--only", "DB", "--", "true"]);
        if audit.exists() && !std::fs::read_to_string(&audit).unwrap().is_empty() {
            reopened = true;
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(reopened, "{}", server.output());

    // SIGTERM: a clean exit after draining.
    server.signal(rustix::process::Signal::TERM);
    let mut server = server;
    let status = server.child.wait().unwrap();
    assert!(status.success(), "{status}: {}", server.output());
    let v = s
        .kz(&["audit", "verify", "audit.jsonl.1", "audit.jsonl"])
        .ok();
    assert!(
        v.stdout.contains("ok") || v.stdout.contains("verified"),
        "{}",
        v.stdout
    );
    let out = server.output();
    assert!(!out.contains(CANARY), "a value reached the server's output");
    assert!(
        !out.contains(&token),
        "the token reached the server's output"
    );
    for f in [&rotated, &audit] {
        let text = std::fs::read_to_string(f).unwrap();
        assert!(!text.contains(CANARY) && !text.contains(&token));
    }

    // The server down: the run fails and says where it tried.
    let r = s
        .kz(&["--trust", "run", "--only", "DB", "--", "true"])
        .code(1);
    assert!(
        r.stderr.contains(&server.addr) || r.stderr.contains("unreachable"),
        "{}",
        r.stderr
    );
}

/// A CA named `cn` and a leaf for `localhost` and `127.0.0.1` it signed (with the leaf's key).
fn test_ca(cn: &str) -> (rcgen::Certificate, rcgen::Certificate, rcgen::KeyPair) {
    let key = rcgen::KeyPair::generate().unwrap();
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, cn);
    let ca = params.self_signed(&key).unwrap();
    let issuer = rcgen::Issuer::new(params, key);
    let leaf_key = rcgen::KeyPair::generate().unwrap();
    let mut leaf_params = rcgen::CertificateParams::new(vec!["localhost".to_owned()]).unwrap();
    leaf_params
        .subject_alt_names
        .push(rcgen::SanType::IpAddress("127.0.0.1".parse().unwrap()));
    let leaf = leaf_params.signed_by(&leaf_key, &issuer).unwrap();
    (ca, leaf, leaf_key)
}

#[test]
fn the_server_serves_tls_that_the_provider_trusts_with_ca_cert() {
    let (ca, leaf, leaf_key) = test_ca("kz test CA");

    let (s, _) = team("", "https://127.0.0.1:1");
    s.write("ca.pem", &ca.pem());
    s.write("tls.pem", &leaf.pem());
    s.write("tls.key", &leaf_key.serialize_pem());
    let server = Server::start(&s, &["--tls-cert", "tls.pem", "--tls-key", "tls.key"]);
    let endpoint = format!("https://{}", server.addr);
    // Without the CA: refused, and the error says how to fix it.
    client_config(&s, &endpoint, "");
    let r = s
        .kz(&["--trust", "run", "--only", "DB", "--", "true"])
        .code(1);
    assert!(r.stderr.contains("ca_cert"), "{}", r.stderr);
    // With it: served over TLS.
    client_config(&s, &endpoint, "ca_cert = \"ca.pem\"\n");
    let r = s
        .kz(&[
            "--trust",
            "run",
            "--only",
            "DB",
            "--",
            "sh",
            "-c",
            "printf %s \"$DB\"",
        ])
        .ok();
    assert_eq!(r.stdout, CANARY);

    // A renewed certificate (from another CA) is picked up without a restart.
    let (ca2, leaf2, leaf2_key) = test_ca("kz test CA 2");
    s.write("ca2.pem", &ca2.pem());
    s.write("tls.key", &leaf2_key.serialize_pem());
    s.write("tls.pem", &leaf2.pem());
    client_config(&s, &endpoint, "ca_cert = \"ca2.pem\"\n");
    let mut renewed = false;
    for _ in 0..100 {
        let r = s.kz(&["--trust", "run", "--only", "DB", "--", "true"]);
        if r.code == Some(0) {
            renewed = true;
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(
        renewed,
        "the renewed certificate was not served: {}",
        server.output()
    );
    assert!(!server.output().contains(CANARY));
}

#[test]
fn a_github_actions_job_gets_its_secrets_through_the_server() {
    let (mut s, token) = team("", "http://127.0.0.1:1");
    // A stand-in for GitHub's OIDC token endpoint (the only part of a CI job that cannot run
    // here): checks the request bearer and the audience, answers with the workload token.
    s.write(
        "gh_oidc.py",
        &format!(
            r#"import http.server, json, sys, urllib.parse
class H(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        q = urllib.parse.parse_qs(urllib.parse.urlparse(self.path).query)
        ok = self.headers.get("Authorization") == "Bearer gh-request-bearer" and q.get("audience") == ["keyzero"]
        self.send_response(200 if ok else 403)
        self.send_header("Content-Type", "application/json")
        self.end_headers()
        self.wfile.write(json.dumps({{"value": "{token}"}} if ok else {{}}).encode())
    def log_message(self, *a):
        pass
srv = http.server.HTTPServer(("127.0.0.1", 0), H)
print(srv.server_address[1], flush=True)
srv.serve_forever()
"#
        ),
    );
    let mut gh = std::process::Command::new("python3")
        .arg(s.path("gh_oidc.py"))
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let port = {
        use std::io::BufRead as _;
        let mut line = String::new();
        std::io::BufReader::new(gh.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        line.trim().to_owned()
    };
    let server = Server::start(&s, &[]);
    s.set(
        "ACTIONS_ID_TOKEN_REQUEST_URL",
        &format!("http://127.0.0.1:{port}/token?api-version=2.0"),
    )
    .set("ACTIONS_ID_TOKEN_REQUEST_TOKEN", "gh-request-bearer");
    s.env.remove("KZ_TEAM_TOKEN");
    s.write(
        ".keyzero.toml",
        &format!(
            "[providers.team]\ntype = \"keyzero\"\nendpoint = \"http://{}\"\ntoken_source = \"github-actions\"\n\n[secrets]\nDB = {{ provider = \"team\", ref = \"app/db\" }}\n",
            server.addr
        ),
    );
    let r = s.kz(&["--trust", "run", "--", "sh", "-c", "printf %s \"$DB\""]);
    let _ = gh.kill();
    let _ = gh.wait();
    let r = r.ok();
    assert_eq!(r.stdout, CANARY);
    let audit = s.read("audit.jsonl");
    assert!(audit.contains(r#""sub":"job-1""#), "{audit}");
    assert!(!audit.contains(CANARY) && !audit.contains(&token));
}

#[test]
fn an_invalid_bundle_stops_the_start_with_its_line() {
    let s = Sandbox::new();
    s.write(
        "bundle.yaml",
        "version: 1\nresolvers:\n  - { name: x, backend: nope }\n",
    );
    let r = s
        .kz(&["server", "start", "-b", "bundle.yaml", "-l", "127.0.0.1:0"])
        .code(1);
    assert!(r.stderr.contains("bundle.yaml:3"), "{}", r.stderr);
    assert!(r.stderr.contains("nope"), "{}", r.stderr);
}

#[test]
fn audit_dash_writes_the_records_to_standard_output() {
    let (s, token) = team("", "http://127.0.0.1:1");
    let mut server = Server::start(&s, &["--audit", "-"]);
    let out = std::process::Command::new("curl")
        .args([
            "-s",
            "--noproxy",
            "*",
            "-H",
            "content-type: application/json",
            "-H",
        ])
        .arg(format!("authorization: Bearer {token}"))
        .args(["-d", r#"{"refs":["app/db","app/admin"]}"#])
        .arg(format!("http://{}/v1/decide", server.addr))
        .output()
        .unwrap();
    let body = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        body.contains(r#""app/admin":{"allowed":false,"policy":"no-admin"}"#),
        "{body}"
    );
    server.signal(rustix::process::Signal::TERM);
    assert!(server.child.wait().unwrap().success());
    let stdout = std::fs::read_to_string(&server.stdout).unwrap();
    let records: Vec<serde_json::Value> = stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(records.len(), 2, "{stdout}");
    assert_eq!(records[1]["decision"], "deny");
    assert_eq!(records[1]["prev"], records[0]["hash"]);
    assert!(
        !s.path("audit.jsonl").exists(),
        "--audit - overrides the bundle's path"
    );
}

/// A TCP relay to `upstream` that waits `delay` before forwarding each connection: a real
/// backend made slow.
fn slow_relay(upstream: String, delay: Duration) -> String {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        for client in listener.incoming().flatten() {
            let upstream = upstream.clone();
            std::thread::spawn(move || {
                std::thread::sleep(delay);
                let Ok(server) = std::net::TcpStream::connect(&upstream) else {
                    return;
                };
                let (mut c_r, mut s_w) = (client.try_clone().unwrap(), server.try_clone().unwrap());
                std::thread::spawn(move || {
                    let _ = std::io::copy(&mut c_r, &mut s_w);
                });
                let (mut s_r, mut c_w) = (server, client);
                let _ = std::io::copy(&mut s_r, &mut c_w);
            });
        }
    });
    format!("http://{addr}")
}

#[test]
fn a_slow_aws_backend_fails_only_its_refs_within_its_timeout() {
    let moto = crate::backends::MotoServer::start();
    moto.boto(&format!(
        "sm.create_secret(Name='app/aws', SecretString={:?})",
        format!("{CANARY}-aws")
    ));
    let slow = slow_relay(
        moto.url.trim_start_matches("http://").to_owned(),
        Duration::from_secs(8),
    );
    let (mut s, token) = team("", "http://127.0.0.1:1");
    crate::backends::aws_env(&mut s);
    let public = s.read("issuer.pub.pem");
    let text = bundle(&public, "").replace(
        "  files: { type: dotenv, path: secrets.env }\n",
        &format!(
            "  files: {{ type: dotenv, path: secrets.env }}\n  aws: {{ type: aws_secrets_manager, region: us-east-1, endpoint_url: \"{}\", timeout: 5s }}\n  aws_slow: {{ type: aws_secrets_manager, region: us-east-1, endpoint_url: \"{slow}\", timeout: 1s }}\n",
            moto.url
        ),
    );
    let text = text.replace(
        "resolvers:\n",
        "resolvers:\n  - { name: aws/fast, backend: aws, secret_id: app/aws }\n  - { name: aws/slow, backend: aws_slow, secret_id: app/aws }\n",
    );
    s.write("bundle.yaml", &text);
    let server = Server::start(&s, &[]);
    let started = Instant::now();
    let out = std::process::Command::new("curl")
        .args([
            "-s",
            "--noproxy",
            "*",
            "-H",
            "content-type: application/json",
            "-H",
        ])
        .arg(format!("authorization: Bearer {token}"))
        .args(["-d", r#"{"refs":["aws/fast","aws/slow","app/db"]}"#])
        .arg(format!("http://{}/v1/resolve", server.addr))
        .output()
        .unwrap();
    let elapsed = started.elapsed();
    let v: serde_json::Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|_| panic!("{}", String::from_utf8_lossy(&out.stdout)));
    let r = &v["results"];
    assert_eq!(r["aws/fast"]["value"], format!("{CANARY}-aws"), "{v}");
    assert_eq!(r["app/db"]["value"], CANARY, "{v}");
    let e = r["aws/slow"]["error"].as_str().unwrap_or_default();
    assert!(e.contains("timed out"), "{v}");
    assert!(
        elapsed < Duration::from_secs(7),
        "the slow backend held the request: {elapsed:?}"
    );
    assert!(!server.output().contains(CANARY));
}
