//! Replicas: two `kz server start` processes serving one bundle behind a real load balancer
//! (Debian's nginx, round robin with upstream keep-alive), all on loopback. One token works on
//! both, both reload a changed bundle, each audit chain verifies, and the canary value travels
//! only in response bodies: never in nginx's logs, the replicas' logs or the audit files.

use std::fs::File;
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::util::{Background, CANARY, Sandbox, es256_key, indent, signal};

const NGINX: &str = "/usr/sbin/nginx";
const ISS: &str = "https://ci.example";

/// nginx's location for replicas serving plain HTTP: round robin over keep-alive connections,
/// nginx's request id passed on.
const PLAIN_LOCATION: &str = r#"    location / {
      proxy_pass http://keyzero;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      proxy_set_header X-Request-Id $request_id;
    }
"#;

fn bundle(public_pem: &str, extra_policy: &str) -> String {
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
  - {{ name: "app/db", backend: files, ref: APP_DB }}
  - {{ name: "app/api", backend: files, ref: APP_API }}
policies:
{extra_policy}  - name: team-a
    rule: 'issuer == "ci" && org == "a"'
    effect: allow
"#,
        pem = indent(public_pem, 10)
    )
}

/// Replaces `path` whole (temporary file and rename), as a deployment tool would.
fn replace_file(path: &Path, text: &str) {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

/// A blocking HTTP client (reqwest on a current-thread runtime), no proxy.
struct Http {
    rt: tokio::runtime::Runtime,
    client: reqwest::Client,
}

impl Http {
    fn new() -> Self {
        Self {
            rt: tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap(),
            client: reqwest::Client::builder()
                .no_proxy()
                .timeout(Duration::from_secs(20))
                .build()
                .unwrap(),
        }
    }

    fn get(&self, url: &str) -> Result<(u16, String), reqwest::Error> {
        self.rt.block_on(async {
            let r = self.client.get(url).send().await?;
            let status = r.status().as_u16();
            Ok((status, r.text().await?))
        })
    }

    fn post(&self, url: &str, token: &str, body: &Value) -> (u16, Value) {
        self.rt.block_on(async {
            let r = self
                .client
                .post(url)
                .bearer_auth(token)
                .header("content-type", "application/json")
                .body(body.to_string())
                .send()
                .await
                .unwrap();
            let status = r.status().as_u16();
            let text = r.text().await.unwrap();
            let v = serde_json::from_str(&text)
                .unwrap_or_else(|e| panic!("{url}: not JSON ({e}): {text}"));
            (status, v)
        })
    }

    /// The bundle revision a server reports on `/healthz`.
    fn revision(&self, base: &str) -> String {
        let (status, text) = self.get(&format!("{base}/healthz")).unwrap();
        assert_eq!(status, 200, "{base}/healthz: {text}");
        let v: Value = serde_json::from_str(&text).unwrap();
        v["bundle_revision"].as_str().unwrap().to_owned()
    }
}

/// Waits (up to 30 s) until `done` is true; panics with `what` otherwise.
fn wait_for(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// One `kz server start` replica: its process, address, stderr and audit file.
struct Replica {
    /// `IP:PORT`.
    addr: String,
    /// `http://IP:PORT`, or `https://` with TLS.
    base: String,
    stderr: PathBuf,
    stdout: PathBuf,
    audit: PathBuf,
}

/// Starts a replica on a free loopback port (`--listen 127.0.0.1:0`; the address is read from
/// the "listening on" line of its stderr) with its own audit file.
fn start_replica(s: &Sandbox, bg: &mut Background, name: &str, bundle: &str) -> Replica {
    start_replica_with(s, bg, name, bundle, &[])
}

/// [`start_replica`] with more arguments (`--tls-cert …`: then its base URL is `https://`).
fn start_replica_with(
    s: &Sandbox,
    bg: &mut Background,
    name: &str,
    bundle: &str,
    extra: &[&str],
) -> Replica {
    let dir = s.root.path();
    let stderr = dir.join(format!("{name}.stderr"));
    let stdout = dir.join(format!("{name}.stdout"));
    let audit = dir.join(format!("{name}-audit.jsonl"));
    let audit_arg = audit.display().to_string();
    let mut args = vec![
        "server",
        "start",
        "--bundle",
        bundle,
        "--listen",
        "127.0.0.1:0",
        "--audit",
        &audit_arg,
        "--drain",
        "2s",
    ];
    args.extend_from_slice(extra);
    let child = s
        .cmd(&args)
        .stdin(Stdio::null())
        .stdout(File::create(&stdout).unwrap())
        .stderr(File::create(&stderr).unwrap())
        .spawn()
        .unwrap();
    bg.children.push(child);
    let mut addr: Option<SocketAddr> = None;
    wait_for(&format!("replica {name} to listen"), || {
        let text = std::fs::read_to_string(&stderr).unwrap_or_default();
        addr = text
            .split("listening on ")
            .nth(1)
            .and_then(|rest| rest.split_whitespace().next())
            .and_then(|a| a.parse().ok());
        if addr.is_none()
            && let Some(Ok(Some(status))) = bg.children.last_mut().map(Child::try_wait)
        {
            panic!("replica {name} exited ({status}) before listening:\n{text}");
        }
        addr.is_some()
    });
    let addr = addr.unwrap().to_string();
    let scheme = if extra.contains(&"--tls-cert") {
        "https"
    } else {
        "http"
    };
    Replica {
        base: format!("{scheme}://{addr}"),
        addr,
        stderr,
        stdout,
        audit,
    }
}

/// A free loopback port (bound, read, released: nginx binds it next).
fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn running_as_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
}

/// nginx in front of the replicas: one worker, round robin, keep-alive to the upstreams, every
/// path (logs, pid, temporary files) inside `prefix`. Returns its base URL and log paths.
fn start_nginx(
    bg: &mut Background,
    prefix: &Path,
    upstreams: &[&Replica],
    locations: &str,
) -> (String, Vec<PathBuf>) {
    assert!(
        Path::new(NGINX).exists(),
        "{NGINX} is missing: install Debian's nginx-light (scripts/test does)"
    );
    std::fs::create_dir_all(prefix.join("tmp")).unwrap();
    let port = free_port();
    let servers: String = upstreams
        .iter()
        .map(|r| format!("    server {};\n", r.addr))
        .collect();
    let p = prefix.display();
    // As root, the master would hand its workers to `nobody`, who cannot enter the private
    // temporary directory.
    let user = if running_as_root() {
        "user root;\n"
    } else {
        ""
    };
    let conf = format!(
        r#"{user}worker_processes 1;
error_log {p}/error.log info;
events {{ worker_connections 128; }}
http {{
  log_format upstreams '$request_id $upstream_addr $status "$request"';
  access_log {p}/access.log upstreams;
  client_body_temp_path {p}/tmp/body;
  proxy_temp_path {p}/tmp/proxy;
  fastcgi_temp_path {p}/tmp/fastcgi;
  uwsgi_temp_path {p}/tmp/uwsgi;
  scgi_temp_path {p}/tmp/scgi;
  upstream keyzero {{
{servers}    keepalive 8;
  }}
  server {{
    listen 127.0.0.1:{port};
{locations}  }}
}}
"#
    );
    let conf_path = prefix.join("nginx.conf");
    std::fs::write(&conf_path, conf).unwrap();
    let early = prefix.join("early-error.log");
    let child = Command::new(NGINX)
        .arg("-p")
        .arg(prefix)
        .arg("-e")
        .arg(&early)
        .arg("-c")
        .arg(&conf_path)
        .arg("-g")
        .arg(format!("daemon off; pid {p}/nginx.pid;"))
        .stdin(Stdio::null())
        .stdout(File::create(prefix.join("nginx.stdout")).unwrap())
        .stderr(File::create(prefix.join("nginx.stderr")).unwrap())
        .spawn()
        .unwrap();
    bg.children.push(child);
    let base = format!("http://127.0.0.1:{port}");
    let http = Http::new();
    wait_for("nginx to answer", || {
        if let Some(Ok(Some(status))) = bg.children.last_mut().map(Child::try_wait) {
            panic!(
                "nginx exited ({status}):\n{}\n{}",
                std::fs::read_to_string(prefix.join("nginx.stderr")).unwrap_or_default(),
                std::fs::read_to_string(prefix.join("error.log")).unwrap_or_default()
            );
        }
        http.get(&format!("{base}/healthz"))
            .is_ok_and(|(status, _)| status == 200)
    });
    let logs = [
        "error.log",
        "access.log",
        "early-error.log",
        "nginx.stderr",
        "nginx.stdout",
    ]
    .iter()
    .map(|n| prefix.join(n))
    .collect();
    (base, logs)
}

fn audit_lines(path: &Path) -> usize {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .count()
}

fn contains(path: &Path, needle: &str) -> bool {
    let bytes = std::fs::read(path).unwrap_or_default();
    bytes.windows(needle.len()).any(|w| w == needle.as_bytes())
}

#[test]
fn replicas_behind_nginx_share_tokens_reload_together_and_keep_their_own_audit_chains() {
    let s = Sandbox::new();
    let (private, public) = es256_key(&s, "ci");
    s.write("bundle.yaml", &bundle(&public, ""));
    s.write(
        "secrets.env",
        &format!("APP_DB={CANARY}-db\nAPP_API={CANARY}-api\n"),
    );
    let token = es256_token(&s, &private);

    let mut bg = Background::default();
    let a = start_replica(&s, &mut bg, "replica-a", "bundle.yaml");
    let b = start_replica(&s, &mut bg, "replica-b", "bundle.yaml");
    let prefix = s.root.path().join("nginx");
    let (lb, nginx_logs) = start_nginx(&mut bg, &prefix, &[&a, &b], PLAIN_LOCATION);
    let http = Http::new();

    // One token, directly on each replica: both verify it and resolve the same value.
    for r in [&a, &b] {
        let (status, v) = http.post(
            &format!("{}/v1/resolve", r.base),
            &token,
            &json!({"ref": "app/db"}),
        );
        assert_eq!(status, 200, "{}: {v}", r.base);
        assert_eq!(
            v["results"]["app/db"]["value"],
            format!("{CANARY}-db"),
            "{v}"
        );
    }
    // The writer thread appends records after the answer: wait for the one of each request.
    wait_for("each replica to audit its direct request", || {
        audit_lines(&a.audit) == 1 && audit_lines(&b.audit) == 1
    });
    let (before_a, before_b) = (1, 1);

    // Through the load balancer: every request succeeds, and both replicas took some (their
    // audit files grow).
    for _ in 0..20 {
        let (status, v) = http.post(
            &format!("{lb}/v1/resolve"),
            &token,
            &json!({"refs": ["app/db", "app/api"]}),
        );
        assert_eq!(status, 200, "{v}");
        assert_eq!(v["results"]["app/db"]["allowed"], true, "{v}");
        assert_eq!(
            v["results"]["app/api"]["value"],
            format!("{CANARY}-api"),
            "{v}"
        );
    }
    wait_for("both replicas to audit requests through nginx", || {
        audit_lines(&a.audit) > before_a && audit_lines(&b.audit) > before_b
    });
    // nginx writes its access log line after the response: wait for the last ones.
    wait_for("nginx to log the 20 requests it proxied", || {
        std::fs::read_to_string(prefix.join("access.log"))
            .unwrap_or_default()
            .lines()
            .filter(|l| l.contains("/v1/resolve"))
            .count()
            >= 20
    });

    // Each replica's audit records of those requests carry nginx's request id, and nginx
    // logged that it sent exactly those requests to that replica.
    let access = std::fs::read_to_string(prefix.join("access.log")).unwrap();
    let routed: Vec<(&str, &str)> = access
        .lines()
        .filter(|l| l.contains("/v1/resolve"))
        .filter_map(|l| {
            let mut f = l.split(' ');
            Some((f.next()?, f.next()?))
        })
        .collect();
    for (r, before) in [(&a, before_a), (&b, before_b)] {
        let upstream = r.addr.as_str();
        // The audit writer appends from its own thread: wait until it has finished the line
        // it is writing (a read can land in the middle of one).
        let mut text = std::fs::read_to_string(&r.audit).unwrap();
        for _ in 0..100 {
            if text.is_empty() || text.ends_with('\n') {
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
            text = std::fs::read_to_string(&r.audit).unwrap();
        }
        for line in text.lines().skip(before) {
            let record: Value = serde_json::from_str(line).unwrap();
            let id = record["request_id"].as_str().unwrap();
            assert!(
                routed.contains(&(id, upstream)),
                "{id} in {}'s audit is not a request nginx sent there:\n{access}",
                r.base
            );
        }
    }

    // A changed bundle (a new deny policy): both replicas load it on their own and report the
    // same new revision, and the load balancer's answers follow it on every replica.
    let old = http.revision(&a.base);
    assert_eq!(
        old,
        http.revision(&b.base),
        "replicas of one bundle disagree"
    );
    replace_file(
        &s.path("bundle.yaml"),
        &bundle(
            &public,
            "  - name: deny-api\n    rule: 'ref == \"app/api\"'\n    effect: deny\n",
        ),
    );
    wait_for("both replicas to reload the changed bundle", || {
        http.revision(&a.base) != old && http.revision(&b.base) != old
    });
    assert_eq!(http.revision(&a.base), http.revision(&b.base));
    for _ in 0..6 {
        let (status, v) = http.post(
            &format!("{lb}/v1/decide"),
            &token,
            &json!({"refs": ["app/db", "app/api"]}),
        );
        assert_eq!(status, 200, "{v}");
        assert_eq!(v["results"]["app/db"]["allowed"], true, "{v}");
        assert_eq!(v["results"]["app/api"]["allowed"], false, "{v}");
        assert_eq!(v["results"]["app/api"]["policy"], "deny-api", "{v}");
        assert!(
            v["results"]["app/db"].get("value").is_none(),
            "decide fetched: {v}"
        );
    }
    for r in [&a, &b] {
        let (status, v) = http.post(
            &format!("{}/v1/resolve", r.base),
            &token,
            &json!({"ref": "app/api"}),
        );
        assert_eq!(status, 200, "{v}");
        assert_eq!(v["results"]["app/api"]["allowed"], false, "{}: {v}", r.base);
        assert!(
            !v.to_string().contains(CANARY),
            "a denied ref got its value: {v}"
        );
    }

    // Stop everything (SIGTERM: the replicas drain and flush their audit logs, exit 0).
    for child in bg.children.iter_mut().take(2) {
        let status = Background::stop(child);
        assert!(
            status.is_some_and(|st| st.success()),
            "a replica did not stop cleanly on SIGTERM: {status:?}"
        );
    }
    for child in bg.children.iter_mut().skip(2) {
        Background::stop(child);
    }

    // Each replica's audit chain verifies on its own.
    for r in [&a, &b] {
        let path = r.audit.display().to_string();
        let v = s.kz(&["audit", "verify", &path]).no_canary();
        assert_eq!(
            v.code,
            Some(0),
            "{path} does not verify:\n{}{}",
            v.stdout,
            v.stderr
        );
        let text = std::fs::read_to_string(&r.audit).unwrap();
        assert!(
            text.contains(r#""decision":"deny""#),
            "{path}: no deny record"
        );
        assert!(
            text.contains(r#""decision":"allow""#),
            "{path}: no allow record"
        );
    }

    // The value and the token travelled only in HTTP messages: not in nginx's logs, the
    // replicas' output, or the audit records.
    let mut files: Vec<PathBuf> = nginx_logs;
    for r in [&a, &b] {
        files.extend([r.stderr.clone(), r.stdout.clone(), r.audit.clone()]);
    }
    for f in &files {
        assert!(!contains(f, CANARY), "the canary is in {}", f.display());
        assert!(!contains(f, &token), "the token is in {}", f.display());
    }
    // The only files with the value: the backend's own.
    assert_eq!(
        s.files_with_canary(&[&s.path("secrets.env")]),
        Vec::<PathBuf>::new()
    );
}

/// Writes `text` as the kubelet updates a ConfigMap volume: a new timestamped directory, then
/// the `..data` symlink swapped to it by a rename, the old directory removed. `bundle.yaml` in
/// the volume is a symlink to `..data/bundle.yaml` throughout.
fn configmap_update(volume: &Path, generation: u32, text: &str) {
    let dir = format!("..2026_12_02_{generation}");
    std::fs::create_dir(volume.join(&dir)).unwrap();
    std::fs::write(volume.join(&dir).join("bundle.yaml"), text).unwrap();
    let tmp = volume.join("..data_tmp");
    std::os::unix::fs::symlink(&dir, &tmp).unwrap();
    let old = std::fs::read_link(volume.join("..data")).ok();
    std::fs::rename(&tmp, volume.join("..data")).unwrap();
    if let Some(old) = old {
        std::fs::remove_dir_all(volume.join(old)).unwrap();
    }
    let link = volume.join("bundle.yaml");
    if std::fs::symlink_metadata(&link).is_err() {
        std::os::unix::fs::symlink("..data/bundle.yaml", &link).unwrap();
    }
}

#[test]
fn replica_reloads_a_bundle_updated_by_a_configmap_symlink_swap() {
    let s = Sandbox::new();
    let (private, public) = es256_key(&s, "ci");
    let env_file = s.write(
        "secrets.env",
        &format!("APP_DB={CANARY}-db\nAPP_API={CANARY}-api\n"),
    );
    // The volume holds only the bundle, so the backend's file is named by its full path.
    let text = |extra: &str| {
        bundle(&public, extra).replace(
            "path: secrets.env",
            &format!("path: {}", env_file.display()),
        )
    };
    let volume = s.path("configmap");
    std::fs::create_dir(&volume).unwrap();
    configmap_update(&volume, 1, &text(""));
    let token = es256_token(&s, &private);
    let mut bg = Background::default();
    let r = start_replica(&s, &mut bg, "replica", "configmap/bundle.yaml");
    let http = Http::new();
    let url = format!("{}/v1/decide", r.base);
    let (_, v) = http.post(&url, &token, &json!({"ref": "app/api"}));
    assert_eq!(v["results"]["app/api"]["allowed"], true, "{v}");
    let old = http.revision(&r.base);

    // Only the symlink changes; the path the server was given stays the same.
    configmap_update(
        &volume,
        2,
        &text("  - name: deny-api\n    rule: 'ref == \"app/api\"'\n    effect: deny\n"),
    );
    wait_for("the replica to follow the swapped ConfigMap", || {
        http.revision(&r.base) != old
    });
    let (_, v) = http.post(&url, &token, &json!({"ref": "app/api"}));
    assert_eq!(v["results"]["app/api"]["allowed"], false, "{v}");
    assert_eq!(v["results"]["app/api"]["policy"], "deny-api", "{v}");
    let log = std::fs::read_to_string(&r.stderr).unwrap();
    assert!(log.contains("bundle reloaded"), "{log}");
    assert!(!log.contains(CANARY), "{log}");
}

/// A test token for `job-1` of team `a`, signed with the key file `key` (`kz token sign`).
fn sign(s: &Sandbox, key: &str, alg: &str, kid: &str) -> String {
    s.kz(&[
        "token",
        "sign",
        "--key",
        key,
        "--alg",
        alg,
        "--kid",
        kid,
        "--issuer",
        ISS,
        "--claims",
        r#"{"sub":"job-1","aud":"keyzero","team":"a"}"#,
    ])
    .ok()
    .stdout
    .trim()
    .to_owned()
}

/// An ES256 test token for the `ci` issuer.
fn es256_token(s: &Sandbox, private: &str) -> String {
    sign(s, private, "ES256", "k1")
}

/// An HMAC test token for the `hs` issuer, signed with the key file `key`.
fn hmac_token(s: &Sandbox, key: &str) -> String {
    sign(s, key, "HS256", "h1")
}

#[test]
fn replicas_reload_on_sighup_each_on_its_own() {
    // The HMAC key is a file the bundle names: not watched, read when the bundle loads, so a
    // new key takes effect on a replica when that replica gets SIGHUP, and only then.
    let s = Sandbox::new();
    s.write(
        "bundle.yaml",
        &format!(
            r#"version: "1"
issuers:
  - name: ci
    type: custom
    issuer_url: {ISS}
    audience: keyzero
    map: {{ org: team }}
    static_keys:
      - {{ kid: h1, alg: HS256, secret_file: hmac.key }}
backends:
  files: {{ type: dotenv, path: secrets.env }}
resolvers:
  - {{ name: "app/db", backend: files, ref: APP_DB }}
policies:
  - name: team-a
    rule: 'issuer == "ci" && org == "a"'
    effect: allow
"#
        ),
    );
    s.write("secrets.env", &format!("APP_DB={CANARY}-db\n"));
    s.write("hmac.key", &format!("{}\n", "1".repeat(40)));
    s.write("new-hmac.key", &format!("{}\n", "2".repeat(40)));
    let old_token = hmac_token(&s, "hmac.key");
    let new_token = hmac_token(&s, "new-hmac.key");
    let mut bg = Background::default();
    let a = start_replica(&s, &mut bg, "replica-a", "bundle.yaml");
    let b = start_replica(&s, &mut bg, "replica-b", "bundle.yaml");
    let (pid_a, pid_b) = (bg.children[0].id(), bg.children[1].id());
    let http = Http::new();
    let status = |r: &Replica, token: &str| {
        http.post(
            &format!("{}/v1/decide", r.base),
            token,
            &json!({"ref": "app/db"}),
        )
        .0
    };
    for r in [&a, &b] {
        assert_eq!(status(r, &old_token), 200);
        assert_eq!(status(r, &new_token), 401);
    }

    let revision = http.revision(&a.base);
    replace_file(&s.path("hmac.key"), &s.read("new-hmac.key"));
    // Replica a gets SIGHUP; b does not and keeps the key it loaded.
    assert!(signal(pid_a, "HUP"));
    wait_for("replica a to reload on SIGHUP", || {
        status(&a, &new_token) == 200
    });
    assert_eq!(status(&a, &old_token), 401, "a verified with the old key");
    assert_eq!(status(&b, &new_token), 401, "b reloaded without a signal");
    assert_eq!(status(&b, &old_token), 200);
    assert!(signal(pid_b, "HUP"));
    wait_for("replica b to reload on SIGHUP", || {
        status(&b, &new_token) == 200
    });
    assert_eq!(status(&b, &old_token), 401);
    // The revision is the bundle text's, which did not change.
    assert_eq!(http.revision(&a.base), revision);
    assert_eq!(http.revision(&b.base), revision);
    for r in [&a, &b] {
        let log = std::fs::read_to_string(&r.stderr).unwrap();
        assert!(log.contains("bundle reloaded"), "{log}");
        for secret in [CANARY, "1111111111111111", "2222222222222222"] {
            assert!(!log.contains(secret), "{log}");
        }
    }
}

/// A CA made for one test: its certificate (PEM) and what signs leaves.
fn test_ca(name: &str) -> (String, rcgen::Issuer<'static, rcgen::KeyPair>) {
    use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair, KeyUsagePurpose};
    let key = KeyPair::generate().unwrap();
    let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
    params.distinguished_name.push(DnType::CommonName, name);
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let pem = params.self_signed(&key).unwrap().pem();
    (pem, rcgen::Issuer::new(params, key))
}

#[test]
fn replicas_behind_nginx_over_tls_with_the_upstream_certificate_verified() {
    let s = Sandbox::new();
    let (private, public) = es256_key(&s, "ci");
    s.write("bundle.yaml", &bundle(&public, ""));
    s.write(
        "secrets.env",
        &format!("APP_DB={CANARY}-db\nAPP_API={CANARY}-api\n"),
    );
    // The replicas' certificate, for the name nginx checks, from the operator's CA.
    let (ca_pem, ca) = test_ca("keyzero test ca");
    let (other_pem, _) = test_ca("another ca");
    let leaf_key = rcgen::KeyPair::generate().unwrap();
    let mut params = rcgen::CertificateParams::new(vec!["keyzero.internal".to_owned()]).unwrap();
    params.is_ca = rcgen::IsCa::ExplicitNoCa;
    params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ServerAuth];
    let leaf = params.signed_by(&leaf_key, &ca).unwrap();
    let cert = s.write("tls/server.pem", &leaf.pem());
    let key = s.write("tls/server.key", &leaf_key.serialize_pem());
    let ca_file = s.write("tls/ca.pem", &ca_pem);
    let other_file = s.write("tls/other-ca.pem", &other_pem);
    let token = es256_token(&s, &private);

    let mut bg = Background::default();
    let (cert, key) = (cert.display().to_string(), key.display().to_string());
    let tls = ["--tls-cert", cert.as_str(), "--tls-key", key.as_str()];
    let a = start_replica_with(&s, &mut bg, "replica-a", "bundle.yaml", &tls);
    let b = start_replica_with(&s, &mut bg, "replica-b", "bundle.yaml", &tls);
    assert!(a.base.starts_with("https://"));
    // `/`: the upstream certificate verified against the operator's CA (as docs/server.md
    // shows); `/wrong/`: against another CA, which must fail.
    let verified = |path: &str, pass: &str, ca: &Path| {
        format!(
            r#"    location {path} {{
      proxy_pass {pass};
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      proxy_set_header X-Request-Id $request_id;
      proxy_ssl_verify on;
      proxy_ssl_trusted_certificate {ca};
      proxy_ssl_name keyzero.internal;
      proxy_ssl_server_name on;
      proxy_ssl_session_reuse on;
    }}
"#,
            ca = ca.display()
        )
    };
    // The wrong location goes straight to one replica, not through the upstream block: the
    // block's keep-alive connections (verified once, by `/`) are shared by every location
    // using it, and so are its TLS sessions.
    let locations = verified("/", "https://keyzero", &ca_file)
        + &verified("/wrong/", &format!("https://{}/", a.addr), &other_file)
            .replace("proxy_ssl_session_reuse on", "proxy_ssl_session_reuse off");
    let prefix = s.root.path().join("nginx");
    let (lb, nginx_logs) = start_nginx(&mut bg, &prefix, &[&a, &b], &locations);
    let http = Http::new();
    for _ in 0..6 {
        let (status, v) = http.post(
            &format!("{lb}/v1/resolve"),
            &token,
            &json!({"ref": "app/db"}),
        );
        assert_eq!(status, 200, "{v}");
        assert_eq!(
            v["results"]["app/db"]["value"],
            format!("{CANARY}-db"),
            "{v}"
        );
    }
    let (status, text) = http.get(&format!("{lb}/wrong/healthz")).unwrap();
    assert_eq!(
        status, 502,
        "nginx accepted a certificate from an unknown CA: {text}"
    );
    let errors = std::fs::read_to_string(prefix.join("error.log")).unwrap();
    assert!(errors.contains("certificate verify"), "{errors}");
    wait_for("both TLS replicas to audit requests", || {
        audit_lines(&a.audit) >= 1 && audit_lines(&b.audit) >= 1
    });
    for f in nginx_logs
        .iter()
        .chain([&a.stderr, &b.stderr, &a.audit, &b.audit])
    {
        assert!(!contains(f, CANARY), "the canary is in {}", f.display());
        assert!(!contains(f, &token), "the token is in {}", f.display());
    }
}
