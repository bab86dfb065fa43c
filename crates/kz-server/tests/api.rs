//! The HTTP API end to end, in process: a real listener on loopback, real tokens (ES256, signed
//! by `kz_identity::sign`), real backends (`dotenv` files; an `exec` plugin for slow and broken
//! backends), the real audit log. Every status code, the identity attack list over HTTP,
//! decisions, reload, shutdown, audit failure and rotation, metrics checked by `promtool`, and
//! no `500` for any input.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

mod common;
use common::{indent, options};

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use kz_server::{Options, Running};
use serde_json::{Value, json};

const CANARY: &str = "kz-canary-server-9b2f41";
const ISS: &str = "https://ci.example";

struct Keys {
    private: String,
    public: String,
}

fn keys() -> Keys {
    let k = rcgen::KeyPair::generate().unwrap();
    Keys {
        private: k.serialize_pem(),
        public: k.public_key_pem(),
    }
}

fn bundle_text(public: &str, extra_policy: &str) -> String {
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
  slow: {{ type: exec, command: ["python3", "slow.py"], timeout: 1s }}
  garbage: {{ type: exec, command: ["python3", "garbage.py"], timeout: 10s }}
resolvers:
  - {{ name: "app/db", backend: files, ref: APP_DB }}
  - {{ name: "app/admin/root", backend: files, ref: ROOT }}
  - {{ name: "app/*", backend: files, ref: MISSING }}
  - {{ name: "cached/*", backend: files, ref: CACHED, cache_ttl: 60s }}
  - {{ name: "slow/*", backend: slow }}
  - {{ name: "garbage/*", backend: garbage }}
  - {{ name: "multi/*", backend: files }}
policies:
  - name: no-admin
    rule: 'ref.startsWith("app/admin")'
    effect: deny
  - name: broken
    rule: 'ref == "app/err" && context.missing.field == "x"'
    effect: allow
{extra_policy}  - name: team-a
    rule: 'issuer == "ci" && org == "a"'
    effect: allow
audit:
  path: audit.jsonl
  claims: [run_id]
"#,
        pem = indent(public, 10)
    )
}

struct Server {
    dir: tempfile::TempDir,
    keys: Keys,
    running: Option<Running>,
    base: String,
    client: reqwest::Client,
}

fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, text).unwrap();
    p
}

impl Server {
    async fn start_with(f: impl FnOnce(&mut Options)) -> Server {
        let dir = tempfile::tempdir().unwrap();
        let keys = keys();
        write(dir.path(), "bundle.yaml", &bundle_text(&keys.public, ""));
        write(
            dir.path(),
            "secrets.env",
            &format!("APP_DB={CANARY}-db\nROOT={CANARY}-root\nCACHED={CANARY}-cached\n"),
        );
        write(
            dir.path(),
            "slow.py",
            "import sys, time\nsys.stdin.read()\ntime.sleep(30)\n",
        );
        write(
            dir.path(),
            "garbage.py",
            "import sys\nsys.stdin.read()\nsys.stdout.buffer.write(b'\\xff\\xfe{{{ not json')\n",
        );
        let mut opts = options(dir.path());
        f(&mut opts);
        let running = kz_server::start(opts).await.unwrap();
        let base = format!("http://{}", running.addr);
        Server {
            dir,
            keys,
            running: Some(running),
            base,
            client: reqwest::Client::builder().no_proxy().build().unwrap(),
        }
    }

    async fn start() -> Server {
        Self::start_with(|_| {}).await
    }

    fn control(&self) -> &kz_server::Control {
        &self.running.as_ref().unwrap().control
    }

    fn token(&self, claims: Value) -> String {
        kz_identity::sign(&self.keys.private, Some("ES256"), Some("k1"), &claims).unwrap()
    }

    fn good_token(&self) -> String {
        self.token(json!({"iss": ISS, "aud": "keyzero", "sub": "job-1", "team": "a", "run_id": 7}))
    }

    async fn post(
        &self,
        path: &str,
        token: Option<&str>,
        body: &str,
    ) -> (u16, reqwest::header::HeaderMap, String) {
        let mut req = self
            .client
            .post(format!("{}{path}", self.base))
            .header("content-type", "application/json")
            .body(body.to_owned());
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        let resp = req.send().await.unwrap();
        let status = resp.status().as_u16();
        let headers = resp.headers().clone();
        (status, headers, resp.text().await.unwrap())
    }

    async fn resolve(&self, body: Value) -> (u16, Value) {
        let (s, _, text) = self
            .post("/v1/resolve", Some(&self.good_token()), &body.to_string())
            .await;
        (s, serde_json::from_str(&text).unwrap_or(Value::Null))
    }

    async fn get(&self, path: &str) -> (u16, String) {
        let resp = self
            .client
            .get(format!("{}{path}", self.base))
            .send()
            .await
            .unwrap();
        (resp.status().as_u16(), resp.text().await.unwrap())
    }

    fn audit_path(&self) -> PathBuf {
        self.dir.path().join("audit.jsonl")
    }

    async fn stop(mut self) -> tempfile::TempDir {
        if let Some(r) = self.running.take() {
            r.control.shutdown();
            r.wait().await;
        }
        self.dir
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn allow_deny_implicit_deny_rule_error_and_unknown_names() {
    let s = Server::start().await;
    let (status, v) = s
        .resolve(json!({"refs": ["app/db", "app/admin/root", "app/err", "nothing/here", "app/missing"], "context": {}}))
        .await;
    assert_eq!(status, 200, "{v}");
    let r = &v["results"];
    assert_eq!(r["app/db"]["allowed"], true, "{v}");
    assert_eq!(r["app/db"]["value"], format!("{CANARY}-db"), "{v}");
    assert_eq!(r["app/db"]["policy"], "team-a");
    assert_eq!(r["app/db"]["mode"], "direct");
    assert_eq!(r["app/admin/root"]["allowed"], false);
    assert_eq!(r["app/admin/root"]["policy"], "no-admin");
    assert!(r["app/admin/root"].get("value").is_none());
    // A rule that errors denies, named, with the error as the reason.
    assert_eq!(r["app/err"]["allowed"], false);
    assert_eq!(r["app/err"]["policy"], "broken");
    assert!(r["app/err"]["reason"].is_string(), "{v}");
    // Allowed by policy, but no resolver.
    assert_eq!(r["nothing/here"]["allowed"], false);
    assert_eq!(r["nothing/here"]["error"], "no resolver matches ref");
    // Allowed, resolver, but the backend has no such key.
    assert_eq!(r["app/missing"]["allowed"], true);
    assert!(
        r["app/missing"]["error"]
            .as_str()
            .unwrap()
            .contains("not found"),
        "{v}"
    );

    // Another identity: implicit deny, and a ref without resolver is not revealed.
    let other = s.token(json!({"iss": ISS, "aud": "keyzero", "sub": "x", "team": "b"}));
    let (status, _, text) = s
        .post(
            "/v1/resolve",
            Some(&other),
            r#"{"refs":["app/db","nothing/here"]}"#,
        )
        .await;
    assert_eq!(status, 200);
    let v: Value = serde_json::from_str(&text).unwrap();
    for r in ["app/db", "nothing/here"] {
        assert_eq!(
            v["results"][r],
            json!({"allowed": false, "policy": "implicit-deny"}),
            "{v}"
        );
    }
    assert!(!text.contains(CANARY));

    // decide: the decisions only, nothing fetched.
    let (status, _, text) = s
        .post("/v1/decide", Some(&s.good_token()), r#"{"ref":"app/db"}"#)
        .await;
    assert_eq!(status, 200);
    assert!(!text.contains(CANARY), "{text}");
    let v: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(
        v["results"]["app/db"],
        json!({"allowed": true, "policy": "team-a", "mode": "direct"})
    );

    // Every decision is audited, none with a value or the token.
    let token = s.good_token();
    let dir = s.stop().await;
    let text = std::fs::read_to_string(dir.path().join("audit.jsonl")).unwrap();
    assert!(!text.contains(CANARY), "a value reached the audit log");
    assert!(
        !text.contains(&token[..40]),
        "a token reached the audit log"
    );
    let lines: Vec<Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 5 + 2 + 1, "{text}");
    let first = &lines[0];
    assert_eq!(first["ref"], "app/db");
    assert_eq!(first["decision"], "allow");
    assert_eq!(first["issuer"], "ci");
    assert_eq!(first["sub"], "job-1");
    assert_eq!(first["identity"]["org"], "a");
    assert_eq!(first["claims"]["run_id"], 7);
    assert_eq!(first["resolver"], "app/db");
    assert_eq!(first["backend"], "files");
    assert!(first["token"].as_str().unwrap().starts_with("sha256:"));
    assert_eq!(lines[1]["decision"], "deny");
    assert_eq!(lines[3]["decision"], "error");
    let summary = kz_audit::verify(&[dir.path().join("audit.jsonl")]).unwrap();
    assert_eq!(summary.records, 8);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_error_status_has_its_json_shape() {
    let s = Server::start_with(|o| o.rate_limit = std::num::NonZeroU32::new(1)).await;
    let tok = s.good_token();
    let check = |status: u16, text: &str, want: u16, code: &str| {
        assert_eq!(status, want, "{text}");
        let v: Value = serde_json::from_str(text).unwrap();
        assert_eq!(v["error"], code, "{text}");
        assert!(v["message"].as_str().is_some_and(|m| !m.is_empty()));
    };
    // 401 without a token, with WWW-Authenticate.
    let (st, h, text) = s.post("/v1/resolve", None, r#"{"ref":"app/db"}"#).await;
    check(st, &text, 401, "invalid_token");
    assert!(
        h["www-authenticate"]
            .to_str()
            .unwrap()
            .starts_with("Bearer")
    );
    // 415, 400s, 413 (the rate is 1/s with a burst of 2: space the calls).
    let (st, _, text) = s
        .client
        .post(format!("{}/v1/resolve", s.base))
        .bearer_auth(&tok)
        .body(r#"{"ref":"app/db"}"#)
        .send()
        .await
        .map(|r| (r.status().as_u16(), (), r))
        .unwrap();
    let text = text.text().await.unwrap();
    check(st, &text, 415, "unsupported_media_type");
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let (st, _, text) = s.post("/v1/resolve", Some(&tok), "{not json").await;
    check(st, &text, 400, "invalid_request");
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let (st, _, text) = s
        .post("/v1/resolve", Some(&tok), r#"{"ref":"a/../b"}"#)
        .await;
    check(st, &text, 400, "invalid_request");
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let many: Vec<String> = (0..101).map(|i| format!("app/r{i}")).collect();
    let (st, _, text) = s
        .post(
            "/v1/resolve",
            Some(&tok),
            &json!({ "refs": many }).to_string(),
        )
        .await;
    check(st, &text, 400, "invalid_request");
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let big = format!(
        r#"{{"ref":"app/db","context":{{"x":"{}"}}}}"#,
        "a".repeat(300 * 1024)
    );
    let (st, _, text) = s.post("/v1/resolve", Some(&tok), &big).await;
    check(st, &text, 413, "payload_too_large");
    // 429 after the burst, with Retry-After.
    let mut limited = None;
    for _ in 0..5 {
        let (st, h, text) = s
            .post("/v1/decide", Some(&tok), r#"{"ref":"app/db"}"#)
            .await;
        if st == 429 {
            limited = Some((h, text));
            break;
        }
    }
    let (h, text) = limited.expect("no 429 after the burst");
    check(429, &text, 429, "rate_limited");
    assert!(h.contains_key("retry-after"));
    // 404, 405.
    let (st, text) = s.get("/v2/nothing").await;
    check(st, &text, 404, "not_found");
    let (st, text) = s.get("/v1/resolve").await;
    check(st, &text, 405, "method_not_allowed");
    // Request ids: honoured when acceptable, generated otherwise.
    let resp = s
        .client
        .get(format!("{}/healthz", s.base))
        .header("x-request-id", "abc-123")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.headers()["x-request-id"], "abc-123");
    let resp = s
        .client
        .get(format!("{}/healthz", s.base))
        .header("x-request-id", "bad id\twith spaces")
        .send()
        .await
        .unwrap();
    let id = resp.headers()["x-request-id"].to_str().unwrap().to_owned();
    assert_eq!(id.len(), 32, "{id}");
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_identity_attack_list_is_refused_over_http_without_a_value() {
    let s = Server::start().await;
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let other = keys();
    let base = json!({"iss": ISS, "aud": "keyzero", "sub": "job-1", "team": "a"});
    let with = |k: &str, v: Value| {
        let mut c = base.clone();
        c[k] = v;
        c
    };
    let mut attacks: Vec<(&str, String)> = vec![
        ("expired", s.token(with("exp", json!(now - 3600)))),
        ("not yet valid", s.token(with("nbf", json!(now + 3600)))),
        ("wrong audience", s.token(with("aud", json!("other")))),
        (
            "unknown issuer",
            s.token(with("iss", json!("https://evil.example"))),
        ),
        (
            "another key",
            kz_identity::sign(&other.private, Some("ES256"), Some("k1"), &base).unwrap(),
        ),
        ("garbage", "not-a-jwt".into()),
        ("oversized", "a".repeat(17 * 1024)),
    ];
    // alg none, and an HMAC token keyed with the public key (algorithm confusion).
    let b64 = |v: &Value| {
        use base64::Engine as _;
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v.to_string())
    };
    attacks.push((
        "alg none",
        format!(
            "{}.{}.",
            b64(&json!({"alg": "none", "kid": "k1"})),
            b64(&base)
        ),
    ));
    let tampered = {
        let t = s.good_token();
        let mut parts: Vec<&str> = t.split('.').collect();
        let body = b64(&with("team", json!("admin")));
        parts[1] = &body;
        parts.join(".")
    };
    attacks.push(("tampered claims", tampered));
    let hs = kz_identity::sign(&s.keys.public, Some("HS256"), Some("k1"), &base).unwrap();
    attacks.push(("HS256 with the public key", hs));
    for (name, token) in &attacks {
        let (st, h, text) = s
            .post("/v1/resolve", Some(token), r#"{"ref":"app/db"}"#)
            .await;
        assert_eq!(st, 401, "{name}: {text}");
        assert!(h.contains_key("www-authenticate"), "{name}");
        assert!(!text.contains(CANARY), "{name}");
    }
    let dir = s.stop().await;
    let audit = std::fs::read_to_string(dir.path().join("audit.jsonl")).unwrap_or_default();
    assert!(
        audit.is_empty(),
        "a refused token made no decision: {audit}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backend_faults_stay_with_their_refs_and_the_cache_serves_repeats() {
    let s = Server::start().await;
    let started = std::time::Instant::now();
    let (st, v) = s
        .resolve(json!({"refs": ["app/db", "slow/x", "garbage/y", "cached/a"]}))
        .await;
    assert_eq!(st, 200, "{v}");
    let r = &v["results"];
    assert_eq!(r["app/db"]["value"], format!("{CANARY}-db"));
    assert_eq!(r["cached/a"]["value"], format!("{CANARY}-cached"));
    let slow = r["slow/x"]["error"].as_str().unwrap();
    assert!(slow.contains("timed out"), "{slow}");
    let garbage = r["garbage/y"]["error"].as_str().unwrap_or_default();
    assert!(garbage.contains("not UTF-8"), "{v}");
    assert!(
        started.elapsed() < Duration::from_secs(20),
        "the slow backend held the request"
    );
    // The cached value survives the file changing under it (cache_ttl 60s).
    write(s.dir.path(), "secrets.env", "CACHED=changed\n");
    let (_, v) = s.resolve(json!({"ref": "cached/a"})).await;
    assert_eq!(
        v["results"]["cached/a"]["value"],
        format!("{CANARY}-cached")
    );
    // The writer appends off the request path: read the log once the server has flushed it.
    let audit = s.audit_path();
    let dir = s.stop().await;
    let lines: Vec<Value> = std::fs::read_to_string(&audit)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    drop(dir);
    let cache: Vec<&str> = lines
        .iter()
        .filter(|l| l["ref"] == "cached/a")
        .map(|l| l["cache"].as_str().unwrap())
        .collect();
    assert_eq!(cache, ["miss", "hit"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reload_keeps_the_old_bundle_when_the_new_one_is_invalid() {
    let s = Server::start().await;
    let (_, health) = s.get("/healthz").await;
    let h: Value = serde_json::from_str(&health).unwrap();
    assert_eq!(h["status"], "ok");
    assert_eq!(h["bundle_loaded"], true);
    let rev1 = h["bundle_revision"].as_str().unwrap().to_owned();
    assert!(rev1.starts_with("sha256:"));
    // Invalid: refused, the old revision serves.
    write(
        s.dir.path(),
        "bundle.yaml",
        "version: 1\npolicies: [{ name: x, rule: '1 +', effect: allow }]\n",
    );
    let problems = s.control().reload().await.unwrap_err();
    assert!(!problems.is_empty());
    let (_, health) = s.get("/healthz").await;
    assert!(health.contains(&rev1));
    let (_, v) = s.resolve(json!({"ref": "app/db"})).await;
    assert_eq!(v["results"]["app/db"]["allowed"], true);
    // Valid: a deny-all policy first; the new revision serves.
    write(
        s.dir.path(),
        "bundle.yaml",
        &bundle_text(
            &s.keys.public,
            "  - name: freeze\n    rule: 'ref != \"\"'\n    effect: deny\n",
        ),
    );
    let rev2 = s.control().reload().await.unwrap();
    assert_ne!(rev1, rev2);
    let (_, health) = s.get("/healthz").await;
    assert!(health.contains(&rev2));
    let (_, v) = s.resolve(json!({"ref": "app/db"})).await;
    assert_eq!(v["results"]["app/db"]["policy"], "freeze");
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_changed_file_is_reloaded_by_the_watcher() {
    let s = Server::start_with(|o| o.watch = Some(Duration::from_millis(100))).await;
    write(
        s.dir.path(),
        "bundle.yaml",
        &bundle_text(
            &s.keys.public,
            "  - name: freeze\n    rule: 'ref != \"\"'\n    effect: deny\n",
        ),
    );
    let mut policy = Value::Null;
    for _ in 0..100 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let (_, v) = s.resolve(json!({"ref": "app/db"})).await;
        policy = v["results"]["app/db"]["policy"].clone();
        if policy == "freeze" {
            break;
        }
    }
    assert_eq!(policy, "freeze");
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_drains_a_request_in_flight() {
    let s = Server::start().await;
    let client = s.client.clone();
    let url = format!("{}/v1/resolve", s.base);
    let tok = s.good_token();
    // `slow/x` takes the backend's full timeout (1 s).
    let inflight = tokio::spawn(async move {
        client
            .post(url)
            .bearer_auth(tok)
            .header("content-type", "application/json")
            .body(r#"{"ref":"slow/x"}"#)
            .send()
            .await
            .map(|r| r.status().as_u16())
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    s.control().shutdown();
    assert_eq!(
        inflight.await.unwrap().unwrap(),
        200,
        "the request in flight was cut"
    );
    let base = s.base.clone();
    let dir = s.stop().await;
    assert!(
        reqwest::get(format!("{base}/healthz")).await.is_err(),
        "still accepting"
    );
    let summary = kz_audit::verify(&[dir.path().join("audit.jsonl")]).unwrap();
    assert_eq!(summary.records, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_audit_log_that_cannot_be_written_answers_503_and_rotation_continues_the_chain() {
    let s = Server::start_with(|o| o.audit = Some("/dev/full".into())).await;
    let (st, _, text) = s
        .post("/v1/resolve", Some(&s.good_token()), r#"{"ref":"app/db"}"#)
        .await;
    // The first record is accepted into the queue, then the sink fails: later ones are refused.
    let mut statuses = vec![st];
    for _ in 0..20 {
        tokio::time::sleep(Duration::from_millis(50)).await;
        let (st, _, t) = s
            .post("/v1/resolve", Some(&s.good_token()), r#"{"ref":"app/db"}"#)
            .await;
        assert!(!t.contains(CANARY) || st == 200, "{t}");
        statuses.push(st);
    }
    assert!(statuses.contains(&503), "{statuses:?} {text}");
    let (st, _) = s.get("/readyz").await;
    assert_eq!(st, 503);
    drop(s);

    let s = Server::start().await;
    for _ in 0..3 {
        s.resolve(json!({"ref": "app/db"})).await;
    }
    let (st, _) = s.get("/readyz").await;
    assert_eq!(st, 200);
    let rotated = s.dir.path().join("audit.jsonl.1");
    s.control().reopen_audit().unwrap(); // flushes first
    std::fs::rename(s.audit_path(), &rotated).unwrap();
    s.control().reopen_audit().unwrap();
    for _ in 0..2 {
        s.resolve(json!({"ref": "app/db"})).await;
    }
    let path = s.audit_path();
    let dir = s.stop().await;
    let summary = kz_audit::verify(&[rotated.clone(), path.clone()]).unwrap();
    assert_eq!(summary.records, 5);
    // Tampering is detected.
    let text = std::fs::read_to_string(&rotated)
        .unwrap()
        .replace("app/db", "app/xx");
    std::fs::write(&rotated, text).unwrap();
    assert!(kz_audit::verify(&[rotated, path]).is_err());
    drop(dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_are_valid_prometheus_text() {
    let s = Server::start().await;
    s.resolve(json!({"refs": ["app/db", "app/admin/x", "cached/a", "cached/a"]}))
        .await;
    s.resolve(json!({"ref": "cached/a"})).await;
    let (st, text) = s.get("/metrics").await;
    assert_eq!(st, 200);
    for want in [
        "kz_http_requests_total{code=\"200\",endpoint=\"resolve\"} 2",
        "kz_decisions_total{outcome=\"deny\",policy=\"no-admin\"} 1",
        "kz_cache_lookups_total{result=\"hit\"} 1",
        "kz_backend_calls_total{backend=\"files\",outcome=\"ok\"}",
        "kz_http_request_duration_seconds_bucket",
        "kz_audit_queue_depth",
    ] {
        assert!(text.contains(want), "missing {want}:\n{text}");
    }
    let mut child = std::process::Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("promtool (Debian package prometheus) is installed by scripts/test");
    use std::io::Write as _;
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "promtool: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    s.stop().await;
}

mod no_500 {
    use super::*;
    use proptest::prelude::*;

    fn body() -> impl Strategy<Value = Vec<u8>> {
        prop_oneof![
            proptest::collection::vec(any::<u8>(), 0..200),
            "\\PC{0,100}".prop_map(String::into_bytes),
            (
                proptest::collection::vec("[a-z/*.]{0,12}", 0..5),
                any::<bool>()
            )
                .prop_map(|(refs, one)| {
                    if one {
                        json!({"ref": refs.first().cloned().unwrap_or_default()})
                            .to_string()
                            .into_bytes()
                    } else {
                        json!({"refs": refs, "context": {"a": [1, {"b": null}]}})
                            .to_string()
                            .into_bytes()
                    }
                }),
        ]
    }

    #[test]
    fn no_client_input_yields_a_500() {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        let s = rt.block_on(Server::start());
        let good = s.good_token();
        let mut runner = proptest::test_runner::TestRunner::new(ProptestConfig {
            cases: 300,
            ..ProptestConfig::default()
        });
        let strategy = (
            body(),
            prop_oneof![
                Just(None),
                Just(Some(good.clone())),
                "[ -~]{0,80}".prop_map(Some)
            ],
            prop_oneof![Just("application/json".to_owned()), "[ -~]{0,30}"],
            prop_oneof![
                Just("/v1/resolve"),
                Just("/v1/decide"),
                Just("/v1/x"),
                Just("/healthz")
            ],
            "[ -~]{0,60}",
        );
        runner
            .run(&strategy, |(body, token, ctype, path, reqid)| {
                let status = rt.block_on(async {
                    let mut req = s
                        .client
                        .post(format!("{}{path}", s.base))
                        .header("content-type", ctype.as_str())
                        .body(body);
                    if let Ok(v) = reqwest::header::HeaderValue::from_str(&reqid) {
                        req = req.header("x-request-id", v);
                    }
                    if let Some(t) = &token
                        && let Ok(v) =
                            reqwest::header::HeaderValue::from_str(&format!("Bearer {t}"))
                    {
                        req = req.header("authorization", v);
                    }
                    req.send().await.map(|r| r.status().as_u16())
                });
                let status = status.map_err(|e| TestCaseError::fail(e.to_string()))?;
                prop_assert!(status < 500, "status {status}");
                Ok(())
            })
            .unwrap();
        rt.block_on(s.stop());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bundle_in_the_published_older_form_is_served() {
    let s = Server::start().await;
    let pem = indent(&s.keys.public, 10);
    write(
        s.dir.path(),
        "bundle.yaml",
        &format!(
            r#"version: 1
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
  files: {{ type: env_file, path: secrets.env }}
resources:
  - ref: "old/db"
    resolver: files
    secret_id: APP_DB
policies:
  - name: team-a
    rule: 'issuer == "ci" && org == "a" && resolver == "old/db"'
    effect: allow
"#
        ),
    );
    s.control().reload().await.unwrap();
    let (st, _, text) = s
        .post(
            "/v1/resolve",
            Some(&s.good_token()),
            r#"{"resource":"old/db"}"#,
        )
        .await;
    assert_eq!(st, 200, "{text}");
    let v: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(
        v["results"]["old/db"]["value"],
        format!("{CANARY}-db"),
        "{v}"
    );
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_and_slow_clients_do_not_hold_connections() {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let s = Server::start_with(|o| {
        o.timeouts = kz_server::Timeouts {
            idle: Duration::from_millis(600),
            body: Duration::from_millis(600),
        };
    })
    .await;
    let addr = s.base.trim_start_matches("http://").to_owned();
    // A connection that never sends a byte is closed.
    let mut silent = tokio::net::TcpStream::connect(&addr).await.unwrap();
    let mut buf = [0u8; 64];
    let n = tokio::time::timeout(Duration::from_secs(10), silent.read(&mut buf))
        .await
        .expect("an idle connection stayed open")
        .unwrap_or(0);
    assert_eq!(n, 0, "closed without an answer");
    // A body that never finishes: 400 once the body time is up, not a connection held forever.
    let mut slow = tokio::net::TcpStream::connect(&addr).await.unwrap();
    let head = format!(
        "POST /v1/resolve HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nAuthorization: Bearer {}\r\nContent-Length: 100\r\n\r\n{{\"ref\"",
        s.good_token()
    );
    slow.write_all(head.as_bytes()).await.unwrap();
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), slow.read_to_end(&mut answer))
        .await
        .expect("a slow body held the connection");
    let text = String::from_utf8_lossy(&answer);
    assert!(text.starts_with("HTTP/1.1 400"), "{text}");
    assert!(text.contains("did not arrive"), "{text}");
    // The server still serves.
    let (st, _) = s.resolve(json!({"ref": "app/db"})).await;
    assert_eq!(st, 200);
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_rate_counts_refs_not_requests() {
    let s = Server::start_with(|o| o.rate_limit = std::num::NonZeroU32::new(10)).await;
    let refs: Vec<String> = (0..30).map(|i| format!("app/r{i}")).collect();
    let (st, h, text) = s
        .post(
            "/v1/decide",
            Some(&s.good_token()),
            &json!({ "refs": refs }).to_string(),
        )
        .await;
    assert_eq!(st, 429, "30 refs are over a burst of 20: {text}");
    assert!(h.contains_key("retry-after"));
    let (st, _, _) = s
        .post(
            "/v1/decide",
            Some(&s.good_token()),
            r#"{"refs":["app/db","app/x"]}"#,
        )
        .await;
    assert_eq!(st, 200);
    let dir = s.stop().await;
    let audit = std::fs::read_to_string(dir.path().join("audit.jsonl")).unwrap();
    assert_eq!(
        audit.lines().count(),
        2,
        "a refused request records nothing"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_single_use_token_stays_used_across_reloads_and_is_not_used_up_by_a_bad_request() {
    let s = Server::start().await;
    let text = bundle_text(&s.keys.public, "").replace(
        "    audience: keyzero\n",
        "    audience: keyzero\n    single_use: true\n    max_token_lifetime: 2h\n",
    );
    write(s.dir.path(), "bundle.yaml", &text);
    s.control().reload().await.unwrap();
    let once =
        s.token(json!({"iss": ISS, "aud": "keyzero", "sub": "j", "team": "a", "jti": "once-1"}));
    // A request refused for its shape does not use the token up.
    let resp = s
        .client
        .post(format!("{}/v1/resolve", s.base))
        .bearer_auth(&once)
        .header("content-type", "text/plain")
        .body(r#"{"ref":"app/db"}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 415);
    let (st, _, _) = s
        .post("/v1/resolve", Some(&once), r#"{"ref":"app/db"}"#)
        .await;
    assert_eq!(st, 200);
    let (st, _, _) = s
        .post("/v1/resolve", Some(&once), r#"{"ref":"app/db"}"#)
        .await;
    assert_eq!(st, 401, "replayed");
    // Reloads (the same bundle, then a changed one) keep the record.
    s.control().reload().await.unwrap();
    write(s.dir.path(), "bundle.yaml", &format!("{text}# changed\n"));
    s.control().reload().await.unwrap();
    let (st, _, text) = s
        .post("/v1/resolve", Some(&once), r#"{"ref":"app/db"}"#)
        .await;
    assert_eq!(st, 401, "a reload made a used token new again: {text}");
    s.stop().await;
}

/// `mode: short_lived`: the answer is a token signed with the server's key, bound to the caller,
/// the ref, the resolver and its hosts, methods and paths; no backend is asked; a denied caller
/// gets none; the token is never in the audit log; and without a key the bundle does not load.
#[tokio::test]
async fn short_lived_resolvers_answer_signed_tokens_bound_to_the_caller_and_the_binding() {
    let dir = tempfile::tempdir().unwrap();
    let keys = keys();
    let with_short_lived = bundle_text(&keys.public, "").replace(
        "resolvers:\n",
        "resolvers:\n  - { name: \"deploy/*\", backend: files, ref: NOT_READ, mode: short_lived, ttl: 120s, hosts: [api.example.com], methods: [POST], paths: [\"/v1/deploy/**\"] }\n",
    );
    write(dir.path(), "bundle.yaml", &with_short_lived);
    write(dir.path(), "secrets.env", &format!("APP_DB={CANARY}-db\n"));

    // No key: the bundle does not load, and says how to give one.
    let err = kz_server::start(options(dir.path())).await.unwrap_err();
    let text = format!("{err:?}");
    assert!(text.contains("server::signing_key"), "{text}");
    assert!(text.contains("KEYZERO_SIGNING_KEY_PATH"), "{text}");
    // An HMAC secret or a public key is no signing key.
    write(dir.path(), "hmac.pem", "not-a-pem-just-a-shared-secret");
    write(dir.path(), "public.pem", &keys.public);
    for bad in ["hmac.pem", "public.pem"] {
        let mut o = options(dir.path());
        o.signing_key = Some(dir.path().join(bad));
        let err = kz_server::start(o).await.unwrap_err();
        assert!(
            format!("{err:?}").contains("not an Ed25519, EC P-256 or RSA private key"),
            "{err:?}"
        );
    }

    for (alg, pair) in [
        (
            "EdDSA",
            rcgen::KeyPair::generate_for(&rcgen::PKCS_ED25519).unwrap(),
        ),
        (
            "ES256",
            rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap(),
        ),
        (
            "RS256",
            rcgen::KeyPair::generate_for(&rcgen::PKCS_RSA_SHA256).unwrap(),
        ),
    ] {
        let key = write(dir.path(), "signing.pem", &pair.serialize_pem());
        let mut o = options(dir.path());
        o.signing_key = Some(key);
        o.proxy_url = Some("https://proxy.example:8443".into());
        let running = kz_server::start(o).await.unwrap();
        let server = Server {
            dir: tempfile::tempdir().unwrap(),
            keys: Keys {
                private: keys.private.clone(),
                public: keys.public.clone(),
            },
            base: format!("http://{}", running.addr),
            running: Some(running),
            client: reqwest::Client::builder().no_proxy().build().unwrap(),
        };

        let (status, body) = server
            .resolve(json!({"refs": ["deploy/web", "deploy/api", "app/db"]}))
            .await;
        assert_eq!(status, 200, "{body}");
        let web = &body["results"]["deploy/web"];
        assert_eq!(web["allowed"], true, "{body}");
        assert_eq!(web["mode"], "short_lived", "{body}");
        assert_eq!(web["ttl"], 120, "{body}");
        assert_eq!(web["proxy"], "https://proxy.example:8443", "{body}");
        assert!(web.get("value").is_none(), "{body}");
        // A direct ref in the same request still gets its value.
        assert_eq!(body["results"]["app/db"]["value"], format!("{CANARY}-db"));

        let token = web["token"].as_str().unwrap();
        let header = jsonwebtoken::decode_header(token).unwrap();
        assert_eq!(format!("{:?}", header.alg), alg);
        let public = pair.public_key_pem();
        let decoding = match alg {
            "EdDSA" => jsonwebtoken::DecodingKey::from_ed_pem(public.as_bytes()).unwrap(),
            "ES256" => jsonwebtoken::DecodingKey::from_ec_pem(public.as_bytes()).unwrap(),
            _ => jsonwebtoken::DecodingKey::from_rsa_pem(public.as_bytes()).unwrap(),
        };
        let mut validation = jsonwebtoken::Validation::new(header.alg);
        validation.set_audience(&["keyzero-proxy"]);
        validation.set_issuer(&["keyzero"]);
        let claims: Value = jsonwebtoken::decode(token, &decoding, &validation)
            .unwrap()
            .claims;
        assert_eq!(claims["sub"], "job-1");
        assert_eq!(claims["resource"], "deploy/web");
        assert_eq!(claims["resolver"], "deploy/*");
        assert_eq!(claims["hosts"], json!(["api.example.com"]));
        assert_eq!(claims["methods"], json!(["POST"]));
        assert_eq!(claims["paths"], json!(["/v1/deploy/**"]));
        assert_eq!(claims["proxy"], "https://proxy.example:8443");
        assert_eq!(
            claims["exp"].as_u64().unwrap() - claims["iat"].as_u64().unwrap(),
            120
        );
        let other = body["results"]["deploy/api"]["token"].as_str().unwrap();
        let other: Value = jsonwebtoken::decode(other, &decoding, &validation)
            .unwrap()
            .claims;
        assert_ne!(claims["jti"], other["jti"], "each token has its own jti");
        assert_eq!(claims["jti"].as_str().unwrap().len(), 32);

        // /v1/decide decides without issuing; a caller the policies deny gets no token.
        let (_, _, decided) = server
            .post(
                "/v1/decide",
                Some(&server.good_token()),
                r#"{"ref":"deploy/web"}"#,
            )
            .await;
        assert!(!decided.contains("\"token\""), "{decided}");
        let outsider = server.token(json!({"iss": ISS, "aud": "keyzero", "sub": "x", "team": "b"}));
        let (_, _, denied) = server
            .post("/v1/resolve", Some(&outsider), r#"{"ref":"deploy/web"}"#)
            .await;
        assert!(
            denied.contains("\"allowed\":false") && !denied.contains("\"token\""),
            "{denied}"
        );

        // The audit log has the decisions, never a token or the value.
        server.stop().await;
        let audit = std::fs::read_to_string(dir.path().join("audit.jsonl")).unwrap();
        assert!(audit.contains("\"mode\":\"short_lived\""), "{audit}");
        assert!(!audit.contains(token), "a token in the audit log");
        let sig = token.rsplit('.').next().unwrap();
        assert!(!audit.contains(sig), "a token signature in the audit log");
    }
}
