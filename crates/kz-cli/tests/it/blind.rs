//! Blind mode's compatibility matrix and red team (`spec/blind.md`).
//!
//! - `direct::*`: each client of the matrix against the HTTPS echo server straight, trusting
//!   the test CA through the environment only: proves the servers and client runners.
//! - `matrix::*`: each client as the child of `kz run --blind`: the echo server gets the real
//!   value, the child only ever sees its token, and the token sent to a host its secret may not
//!   reach is refused with 403 before anything is sent.
//! - `red_team::*`: echoed credentials are scrubbed in every encoding; loopback, private and
//!   metadata addresses are refused; the canary never reaches the child's environment, output
//!   or the audit file; `--isolate` leaves no way out but the proxy.
//! - `inner::reqwest_client`: the Rust reqwest client; `#[ignore]`d, it only runs when this
//!   test binary re-executes itself (with `KZ_BLIND_INNER=1`) as the child of a run.
//!
//! Servers and clients are in `blind_support/`; the client programs in `tests/clients/`.

#[path = "blind_support/mod.rs"]
pub mod support;

use crate::util::{CANARY, Run, Sandbox};
use support::{
    Client, ClientOutput, ClientRun, EchoServer, Shape, TestCa, TunnelProxy, echo_header,
};

/// A token-shaped value for the direct runs.
const DIRECT_TOKEN: &str = "kz_masked_0123456789abcdef0123456789abcdef";

/// Whether `s` is a blind-mode token: `kz_masked_` and 32 lowercase hex digits.
fn is_token(s: &str) -> bool {
    s.strip_prefix("kz_masked_").is_some_and(|h| {
        h.len() == 32
            && h.bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    })
}

/// With `KZ_BLIND_SHOW=1`, prints what a client printed (to see each client's messages).
fn show(client: Client, run: &ClientRun) {
    if std::env::var_os("KZ_BLIND_SHOW").is_some() {
        eprintln!(
            "--- {client:?} exit {:?}\n{}\n--- stderr\n{}",
            run.code, run.stdout, run.stderr
        );
    }
}

/// Asserts that `client`'s run reached `server` with `sent` as the bearer value (what the
/// server must have received) and that the child saw `shown` everywhere in the answers.
#[track_caller]
fn assert_reached(client: Client, run: &ClientRun, server: &EchoServer, sent: &str, shown: &str) {
    show(client, run);
    let ctx = format!(
        "{client:?}\nexit: {:?}\nstdout:\n{}\nstderr:\n{}",
        run.code, run.stdout, run.stderr
    );
    assert_eq!(run.code, Some(0), "client failed: {ctx}");
    let out = &run.out;
    assert!(out.ended, "client output incomplete: {ctx}");
    assert_eq!(out.token, shown, "API_TOKEN in the child: {ctx}");
    let recorded = server.requests();
    let bearer_sent = format!("Bearer {sent}");
    let bearer_shown = format!("Bearer {shown}");
    match client.shape() {
        Shape::Http { post } => {
            let get = out.answer("GET");
            assert_eq!(get.status, Some(200), "GET: {ctx}");
            let json = out.echo_json("GET");
            assert_eq!(json["target"], "/get?kz=1", "{ctx}");
            assert_eq!(
                echo_header(&json, "authorization").as_deref(),
                Some(bearer_shown.as_str()),
                "the echoed Authorization: {ctx}"
            );
            let r = recorded
                .iter()
                .find(|r| r.method == "GET" && r.target == "/get?kz=1")
                .unwrap_or_else(|| panic!("server saw no GET: {recorded:#?}\n{ctx}"));
            assert_eq!(
                r.header("authorization"),
                Some(bearer_sent.as_str()),
                "{ctx}"
            );
            if let Some((server_side, client_side)) = client.version() {
                // What the client spoke (to the server, or to the proxy) ...
                for kind in ["GET-VERSION", "POST-VERSION"] {
                    assert_eq!(out.answer(kind).rest, client_side, "{kind}: {ctx}");
                }
                // ... and, when nothing sits in between that terminates TLS, what the server got.
                if sent == shown {
                    assert_eq!(r.version, server_side, "HTTP version: {ctx}");
                }
            }
            if post {
                let p = out.answer("POST");
                assert_eq!(p.status, Some(200), "POST: {ctx}");
                let json = out.echo_json("POST");
                let body: serde_json::Value =
                    serde_json::from_str(json["body"].as_str().unwrap()).unwrap();
                assert_eq!(body["token"], shown, "the echoed body: {ctx}");
                let r = recorded
                    .iter()
                    .find(|r| r.method == "POST" && r.target == "/post")
                    .unwrap_or_else(|| panic!("server saw no POST: {recorded:#?}\n{ctx}"));
                let body: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
                // Tokens are swapped in headers and the query string only: one in a body
                // (API_TOKEN's entry has no `swap = [..., "body"]`) reaches the server as is.
                assert_eq!(body["token"], shown, "the body the server got: {ctx}");
                if let Some(len) = r.header("content-length") {
                    assert_eq!(len, r.body.len().to_string(), "Content-Length: {ctx}");
                }
            }
        }
        Shape::WebSocket => {
            let ws = out.answer("WS");
            assert_eq!(ws.status, Some(101), "WebSocket: {ctx}");
            assert_eq!(
                ws.body,
                format!("auth:{bearer_shown}\nhello {shown}"),
                "frames: {ctx}"
            );
            let r = recorded
                .iter()
                .find(|r| r.target == "/ws")
                .unwrap_or_else(|| panic!("server saw no upgrade: {recorded:#?}\n{ctx}"));
            assert_eq!(
                r.header("authorization"),
                Some(bearer_sent.as_str()),
                "{ctx}"
            );
        }
        Shape::Git => {
            assert_eq!(out.answer("GIT").status, Some(0), "git: {ctx}");
            let r = recorded
                .iter()
                .find(|r| r.target == "/repo.git/info/refs?service=git-upload-pack")
                .unwrap_or_else(|| panic!("server saw no ref discovery: {recorded:#?}\n{ctx}"));
            assert_eq!(
                r.header("authorization"),
                Some(bearer_sent.as_str()),
                "{ctx}"
            );
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The clients straight against the echo server: the harness itself works.

fn direct(client: Client) {
    let ca = TestCa::new();
    let dir = tempfile::tempdir().unwrap();
    let ca_path = ca.write_pem(dir.path());
    let server = EchoServer::start(&ca);
    let run = support::run_direct(client, &server.url(), &ca_path, DIRECT_TOKEN, dir.path());
    assert_reached(client, &run, &server, DIRECT_TOKEN, DIRECT_TOKEN);
}

/// A client that does not trust the test CA fails: the CA variables are what makes it work.
fn direct_untrusted(client: Client) {
    let ca = TestCa::new();
    let other = TestCa::new();
    let dir = tempfile::tempdir().unwrap();
    let other_path = other.write_pem(dir.path());
    let server = EchoServer::start(&ca);
    let run = support::run_direct(client, &server.url(), &other_path, DIRECT_TOKEN, dir.path());
    assert_ne!(
        run.code,
        Some(0),
        "{client:?} trusted an unknown CA: {run:#?}"
    );
    assert!(
        !server
            .requests()
            .iter()
            .any(|r| r.header("authorization").is_some()),
        "{client:?} sent a request over an untrusted connection"
    );
}

/// Through a plain CONNECT proxy set the way kz sets it (`NO_PROXY` without `localhost`): the
/// client goes through `HTTPS_PROXY` for a `localhost` URL.
fn via_tunnel(client: Client) {
    let ca = TestCa::new();
    let dir = tempfile::tempdir().unwrap();
    let ca_path = ca.write_pem(dir.path());
    let server = EchoServer::start(&ca);
    let proxy = TunnelProxy::start(false);
    let env = support::proxy_env(&proxy.url(), "127.0.0.1,::1");
    let run = support::run_client(
        client,
        &server.url(),
        &ca_path,
        DIRECT_TOKEN,
        dir.path(),
        &env,
    );
    assert_reached(client, &run, &server, DIRECT_TOKEN, DIRECT_TOKEN);
    let targets = proxy.targets();
    assert!(
        !targets.is_empty() && targets.iter().all(|t| *t == server.host()),
        "{client:?} did not tunnel (only) to {}: {targets:?}",
        server.host()
    );
}

/// A proxy that refuses the tunnel with 403: every client shows the 403 (as a status or in
/// its error) and nothing reaches the server. (kz refuses a forbidden destination this way.)
fn tunnel_refused(client: Client) {
    let ca = TestCa::new();
    let dir = tempfile::tempdir().unwrap();
    let ca_path = ca.write_pem(dir.path());
    let server = EchoServer::start(&ca);
    let proxy = TunnelProxy::start(true);
    let env = support::proxy_env(&proxy.url(), "127.0.0.1,::1");
    let run = support::run_client(
        client,
        &server.url(),
        &ca_path,
        DIRECT_TOKEN,
        dir.path(),
        &env,
    );
    assert_refused(client, &run);
    assert!(!proxy.targets().is_empty(), "{client:?} bypassed the proxy");
    assert!(server.requests().is_empty(), "{:#?}", server.requests());
}

/// Asserts that every request of `client` was refused with 403.
#[track_caller]
fn assert_refused(client: Client, run: &ClientRun) {
    show(client, run);
    let ctx = format!(
        "{client:?}\nexit: {:?}\nstdout:\n{}\nstderr:\n{}",
        run.code, run.stdout, run.stderr
    );
    assert!(run.out.ended, "client output incomplete: {ctx}");
    // reqwest (hyper-util's tunnel) reports a refused CONNECT without its status.
    let refused = |a: &support::Answer| {
        a.is_forbidden()
            || (client == Client::Reqwest
                && a.error
                    .as_deref()
                    .is_some_and(|e| e.contains("tunnel error: unsuccessful")))
    };
    match client.shape() {
        Shape::Http { post } => {
            assert!(refused(run.out.answer("GET")), "GET: {ctx}");
            if post {
                assert!(refused(run.out.answer("POST")), "POST: {ctx}");
            }
        }
        Shape::WebSocket => assert!(run.out.answer("WS").is_forbidden(), "WS: {ctx}"),
        Shape::Git => {
            assert_ne!(run.out.answer("GIT").status, Some(0), "git: {ctx}");
            assert!(run.stderr.contains("403"), "git: {ctx}");
        }
    }
}

macro_rules! per_client {
    ($module:ident, $f:path) => {
        mod $module {
            use super::support::Client;
            #[test]
            fn curl_http1() {
                $f(Client::CurlH1)
            }
            #[test]
            fn curl_http2() {
                $f(Client::CurlH2)
            }
            #[test]
            fn python_requests() {
                $f(Client::Requests)
            }
            #[test]
            fn python_httpx() {
                $f(Client::Httpx)
            }
            #[test]
            fn python_urllib() {
                $f(Client::Urllib)
            }
            #[test]
            fn node_fetch() {
                $f(Client::NodeFetch)
            }
            #[test]
            fn node_https_agent() {
                $f(Client::NodeHttps)
            }
            #[test]
            fn git_https() {
                $f(Client::Git)
            }
            #[test]
            fn python_websockets() {
                $f(Client::PyWebsockets)
            }
            #[test]
            fn node_ws() {
                $f(Client::NodeWs)
            }
            #[test]
            fn rust_reqwest() {
                $f(Client::Reqwest)
            }
        }
    };
}

per_client!(direct, super::direct);
per_client!(direct_untrusted, super::direct_untrusted);
per_client!(via_tunnel, super::via_tunnel);
per_client!(tunnel_refused, super::tunnel_refused);

#[test]
fn client_list_is_complete() {
    // per_client! names every client once; keep it in step with Client::ALL.
    assert_eq!(Client::ALL.len(), 11);
}

#[test]
fn output_parser_reads_statuses_errors_and_bodies() {
    let out = ClientOutput::parse(
        "running 1 test\ntest x ... \n==kz== TOKEN t\n==kz== GET 200\n{\"a\":1}\n==kz== POST ERROR Tunnel connection failed: 403 Forbidden\n==kz== WS 101\nauth:x\nhello t\n==kz== END\nok\n",
    );
    assert_eq!(out.token, "t");
    assert!(out.ended);
    assert_eq!(out.answer("GET").status, Some(200));
    assert_eq!(out.echo_json("GET")["a"], 1);
    assert!(out.answer("POST").is_forbidden());
    assert!(!out.answer("GET").is_forbidden());
    assert_eq!(out.answer("WS").body, "auth:x\nhello t");
}

// ---------------------------------------------------------------------------------------------
// The Rust reqwest client: this binary, re-executed as the child of a run.

mod inner {
    use super::support::clients::{INNER_URL_VAR, INNER_VAR};

    fn chain(e: &dyn std::error::Error) -> String {
        let mut parts = vec![e.to_string()];
        let mut s = e.source();
        while let Some(x) = s {
            parts.push(x.to_string());
            s = x.source();
        }
        parts
            .join(" <- ")
            .split_whitespace()
            .collect::<Vec<_>>()
            .join(" ")
    }

    /// Prints the answer; false when there was none.
    async fn report(kind: &str, r: reqwest::Result<reqwest::Response>) -> bool {
        let e = match r {
            Ok(r) => {
                let status = r.status().as_u16();
                match r.text().await {
                    Ok(body) => {
                        println!("==kz== {kind} {status}\n{body}");
                        return true;
                    }
                    Err(e) => e,
                }
            }
            Err(e) => e,
        };
        println!("==kz== {kind} ERROR {}", chain(&e));
        false
    }

    /// A plain reqwest client: proxy from the environment, roots from the platform verifier
    /// (which reads `SSL_CERT_FILE`). Prints the format of `tests/clients/README.md`; fails
    /// (exit 101, like the scripts' 3) when a request got no answer.
    #[test]
    #[ignore = "run as a child process by the reqwest tests (KZ_BLIND_INNER=1)"]
    fn reqwest_client() {
        if std::env::var(INNER_VAR).as_deref() != Ok("1") {
            return;
        }
        let base = std::env::var(INNER_URL_VAR).unwrap();
        let token = std::env::var("API_TOKEN").unwrap();
        println!("\n==kz== TOKEN {token}");
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let answered = rt.block_on(async {
            let client = reqwest::Client::builder()
                .timeout(std::time::Duration::from_secs(30))
                .build()
                .unwrap();
            let get = client
                .get(format!("{base}/get?kz=1"))
                .bearer_auth(&token)
                .send()
                .await;
            let get = report("GET", get).await;
            let post = client
                .post(format!("{base}/post"))
                .bearer_auth(&token)
                .json(&serde_json::json!({ "token": token }))
                .send()
                .await;
            let post = report("POST", post).await;
            get && post
        });
        println!("==kz== END");
        assert!(answered, "a request got no answer");
    }
}

// ---------------------------------------------------------------------------------------------
// Through `kz run --blind`. Interface: `kz run --blind [--allow-host P]... [--audit PATH]
// [--isolate] [--no-force-proxy] [--keep-env NAMES] -- CMD`.

/// The value of the second secret, bound to the second server.
const OTHER_VALUE: &str = "kz-other-value-3d5a7e90c1f2";

/// CA variables the machine presets (to the system bundle); blind mode must override them.
const PRESET_CA_VARS: [&str; 9] = [
    "SSL_CERT_FILE",
    "REQUESTS_CA_BUNDLE",
    "CURL_CA_BUNDLE",
    "NODE_EXTRA_CA_CERTS",
    "GIT_SSL_CAINFO",
    "AWS_CA_BUNDLE",
    "PIP_CERT",
    "GRPC_DEFAULT_SSL_ROOTS_FILE_PATH",
    "CLOUDSDK_CORE_CUSTOM_CA_CERTS_FILE",
];
const SYSTEM_BUNDLE: &str = "/etc/ssl/certs/ca-certificates.crt";

/// A project with two secrets, each bound to its own echo server:
/// `API_TOKEN` (the canary, or another value) → `allowed`, `OTHER_TOKEN` → `other`. Both
/// servers are named by a pattern, so both are reachable; only `allowed` may get `API_TOKEN`.
struct World {
    s: Sandbox,
    allowed: EchoServer,
    other: EchoServer,
    _ca: TestCa,
}

impl World {
    fn new() -> Self {
        Self::with_value(CANARY)
    }

    fn with_value(value: &str) -> Self {
        Self::build(value, "")
    }

    /// `api_extra` is appended inside API_TOKEN's entry (`, swap = [...]`).
    fn build(value: &str, api_extra: &str) -> Self {
        let ca = TestCa::new();
        let allowed = EchoServer::start(&ca);
        let other = EchoServer::start(&ca);
        let mut s = Sandbox::new();
        let ca_path = ca.write_pem(s.root.path());
        s.write(
            ".keyzero.toml",
            &format!(
                "[secrets]\n\
                 API_TOKEN = {{ provider = \"env\", ref = \"KZ_TEST_CANARY_SOURCE\", hosts = [\"{}\"]{api_extra} }}\n\
                 OTHER_TOKEN = {{ provider = \"env\", ref = \"KZ_TEST_OTHER_SOURCE\", hosts = [\"{}\"] }}\n\
                 [blind]\n\
                 upstream_ca = \"{}\"\n",
                allowed.host(),
                other.host(),
                ca_path.display()
            ),
        );
        s.set("KZ_TEST_CANARY_SOURCE", value)
            .set("KZ_TEST_OTHER_SOURCE", OTHER_VALUE)
            // Blind mode needs a trusted configuration (trust.rs tests that part).
            .set("KEYZERO_TRUST", "1");
        // What this kind of machine presets: blind mode must not let it through.
        for v in PRESET_CA_VARS {
            s.set(v, SYSTEM_BUNDLE);
        }
        s.set("SSL_CERT_DIR", "/etc/ssl/certs");
        Self {
            s,
            allowed,
            other,
            _ca: ca,
        }
    }

    /// `kz run --blind FLAGS [--keep-env NAMES] -- ARGV` with `keep` in kz's environment and
    /// named in `--keep-env`.
    fn blind(&self, flags: &[&str], argv: &[String], keep: &[(String, String)]) -> Run {
        let mut args: Vec<String> = vec!["run".into(), "--blind".into()];
        args.extend(flags.iter().map(ToString::to_string));
        if !keep.is_empty() {
            args.push("--keep-env".into());
            args.push(
                keep.iter()
                    .map(|(k, _)| k.as_str())
                    .collect::<Vec<_>>()
                    .join(","),
            );
        }
        args.push("--".into());
        args.extend(argv.iter().cloned());
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let mut c = self.s.cmd(&args);
        c.envs(keep.iter().map(|(k, v)| (k, v)))
            .stdin(std::process::Stdio::null());
        let run = Run::from(c.output().unwrap());
        if std::env::var_os("KZ_BLIND_SHOW").is_some() {
            eprintln!(
                "--- kz {args:?}\nexit {:?}\n{}\n--- stderr\n{}",
                run.code, run.stdout, run.stderr
            );
        }
        run
    }

    /// `kz run --blind FLAGS -- sh -c SCRIPT`.
    fn blind_sh(&self, flags: &[&str], script: &str, keep: &[(String, String)]) -> Run {
        self.blind(
            flags,
            &["sh".to_string(), "-c".to_string(), script.to_string()],
            keep,
        )
    }

    /// `client` against `base` as the child of `kz run --blind FLAGS`.
    fn client(&self, client: Client, base: &str, flags: &[&str]) -> (Run, ClientRun) {
        let (mut argv, env) = client.command(base);
        if flags.contains(&"--isolate") {
            // `--isolate` gives the command a private /tmp, so a checkout under /tmp (as CI's
            // may be) is hidden from it: client scripts run from a copy in the project
            // directory, which stays visible.
            let dir = support::clients::clients_dir();
            for a in &mut argv {
                let path = std::path::PathBuf::from(a.as_str());
                if let (true, Some(name)) = (path.starts_with(&dir), path.file_name()) {
                    let copy = self.s.project.join(name);
                    std::fs::copy(&path, &copy).unwrap();
                    *a = copy.display().to_string();
                }
            }
        }
        let run = self.blind(flags, &argv, &env);
        let c = ClientRun {
            code: run.code,
            stdout: run.stdout.clone(),
            stderr: run.stderr.clone(),
            out: ClientOutput::parse(&run.stdout),
        };
        show(client, &c);
        (run, c)
    }
}

/// Whether `url` is the proxy URL kz hands out: `http://kz:<48 hex>@127.0.0.1:PORT`.
fn proxy_with_credential(url: &str) -> bool {
    let Some((user, addr)) = url
        .strip_prefix("http://kz:")
        .and_then(|r| r.split_once('@'))
    else {
        return false;
    };
    user.len() == 48
        && user.bytes().all(|b| b.is_ascii_hexdigit())
        && addr
            .strip_prefix("127.0.0.1:")
            .is_some_and(|p| p.parse::<u16>().is_ok())
}

/// Parses `env` output (`NAME=value` lines; multi-line values are not expected here).
fn parse_env(stdout: &str) -> std::collections::BTreeMap<String, String> {
    stdout
        .lines()
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

/// Each client as the child of `kz run --blind`: the allowed server gets the real value, the
/// child sees only its token (the echo is scrubbed), and the token sent to the other server
/// (reachable, but not a host of `API_TOKEN`) is refused with 403 and never sent.
fn through_blind(client: Client) {
    let w = World::new();
    let (run, c) = w.client(client, &w.allowed.url(), &[]);
    let run = run.no_canary();
    let token = c.out.token.clone();
    assert!(
        is_token(&token),
        "API_TOKEN in the child: {token:?}\n{run:?}",
        run = c
    );
    assert_reached(client, &c, &w.allowed, CANARY, &token);
    assert!(!run.stdout.contains(OTHER_VALUE) && !run.stderr.contains(OTHER_VALUE));
    assert!(w.other.requests().is_empty(), "{:#?}", w.other.requests());

    w.allowed.clear();
    let (run, c) = w.client(client, &w.other.url(), &[]);
    run.no_canary();
    assert_refused(client, &c);
    assert!(
        w.other.requests().is_empty(),
        "the token's request reached a host it may not go to: {:#?}",
        w.other.requests()
    );
    assert!(w.allowed.requests().is_empty());
    // The refusal is an HTTP 403 (the host itself is reachable) naming the secret and host.
    let answers: Vec<&support::Answer> = match client.shape() {
        Shape::Http { post: true } => vec![c.out.answer("GET"), c.out.answer("POST")],
        Shape::Http { post: false } => vec![c.out.answer("GET")],
        Shape::WebSocket => vec![c.out.answer("WS")],
        Shape::Git => vec![],
    };
    for a in answers {
        assert_eq!(a.status, Some(403), "{client:?}: {a:#?}");
        assert!(
            a.body.contains("API_TOKEN") && a.body.contains(&w.other.host()),
            "{client:?}: the 403 names neither the secret nor the host: {a:#?}"
        );
    }
}

per_client!(matrix, super::through_blind);

mod red_team {
    use super::*;

    /// A value whose encodings all differ from it (`"` and `/` for JSON, `+/=` for base64,
    /// `&=?` for URL encoding); it contains the canary, so a raw leak is caught too.
    fn special_value() -> String {
        format!("{CANARY}/\"q\"+&=?x~")
    }

    #[test]
    fn an_echoed_credential_is_scrubbed_in_every_encoding() {
        support::clients::require_tool("curl");
        let value = special_value();
        let w = World::with_value(&value);
        let forms = ["raw", "b64", "b64url", "json", "urlenc", "gzip"];
        let script = format!(
            "echo \"==kz== TOKEN $API_TOKEN\"; for f in {}; do echo \"==kz== $f\"; \
             curl -sS --http1.1 -H \"Authorization: Bearer $API_TOKEN\" \"{}/echo-secret?form=$f\"; echo; done; \
             echo '==kz== END'",
            forms.join(" "),
            w.allowed.url()
        );
        let r = w.blind_sh(&[], &script, &[]).ok().no_canary();
        let out = ClientOutput::parse(&r.stdout);
        let token = out.token.clone();
        assert!(is_token(&token), "{}", r.stdout);
        let b64 = &base64::engine::general_purpose::STANDARD;
        let b64url = &base64::engine::general_purpose::URL_SAFE_NO_PAD;
        use base64::Engine as _;
        let json = |v: &str| serde_json::to_string(&serde_json::json!({ "value": v })).unwrap();
        let urlenc = |v: &str| {
            format!(
                "value={}",
                percent_encoding::utf8_percent_encode(v, support::echo::URL_COMPONENT)
            )
        };
        for (form, want, leaked) in [
            ("raw", token.clone(), value.clone()),
            ("b64", b64.encode(&token), b64.encode(&value)),
            ("b64url", b64url.encode(&token), b64url.encode(&value)),
            ("json", json(&token), json(&value)),
            ("urlenc", urlenc(&token), urlenc(&value)),
            ("gzip", token.clone(), value.clone()),
        ] {
            assert_ne!(want, leaked);
            assert_eq!(out.answer(form).body, want, "form {form}:\n{}", r.stdout);
            assert!(!r.stdout.contains(&leaked), "form {form} leaked");
        }
        // The server did get the real value each time.
        let recorded = w.allowed.requests();
        assert_eq!(recorded.len(), forms.len(), "{recorded:#?}");
        let bearer = format!("Bearer {value}");
        for r in &recorded {
            assert_eq!(r.header("authorization"), Some(bearer.as_str()));
        }
    }

    /// A name other than `localhost` that `/etc/hosts` maps to a loopback address.
    fn loopback_alias() -> String {
        use std::net::ToSocketAddrs as _;
        let hosts = std::fs::read_to_string("/etc/hosts").unwrap_or_default();
        hosts
            .lines()
            .map(|l| l.split('#').next().unwrap_or(""))
            .filter_map(|l| {
                let mut f = l.split_whitespace();
                let ip = f.next()?;
                ip.starts_with("127.")
                    .then(|| f.map(ToString::to_string).collect::<Vec<_>>())
            })
            .flatten()
            .find(|n| {
                !n.starts_with("localhost")
                    && (n.as_str(), 443)
                        .to_socket_addrs()
                        .is_ok_and(|mut a| a.all(|a| a.ip().is_loopback()))
            })
            .unwrap_or_else(|| {
                panic!(
                    "no name but localhost maps to 127.x in /etc/hosts; add one \
                     (`127.0.0.1 kz-loopback-alias`) to run this test"
                )
            })
    }

    /// `curl` to each URL from inside a run, with and without the token, printing
    /// `==kz== <label> <http_code>:<http_connect>`.
    fn probe_script(targets: &[(&str, String)]) -> String {
        let mut script = String::new();
        for (label, url) in targets {
            for (suffix, auth) in [
                ("token", "-H \"Authorization: Bearer $API_TOKEN\""),
                ("plain", ""),
            ] {
                script.push_str(&format!(
                    "printf '==kz== {label}-{suffix} '; curl -s -o /dev/null --max-time 20 {auth} \
                     -w '%{{http_code}}:%{{http_connect}}\\n' '{url}'; echo; "
                ));
            }
        }
        script.push_str("echo '==kz== END'");
        script
    }

    /// Every probe got a 403, from the proxy's CONNECT answer or from the request itself.
    #[track_caller]
    fn assert_all_403(r: &Run, labels: &[&str]) {
        let out = ClientOutput::parse(&r.stdout);
        assert!(out.ended, "{}\n{}", r.stdout, r.stderr);
        for label in labels {
            for suffix in ["token", "plain"] {
                // `<http_code>:<http_connect>`: 403 for the request inside the tunnel, or for
                // the CONNECT itself.
                let a = out.answer(&format!("{label}-{suffix}"));
                assert!(
                    a.rest.split(':').any(|c| c == "403"),
                    "{label}-{suffix} was not refused with 403: {}\n{}",
                    a.rest,
                    r.stdout
                );
            }
        }
    }

    #[test]
    fn loopback_addresses_and_names_not_named_by_a_pattern_are_refused() {
        support::clients::require_tool("curl");
        let w = World::new();
        let alias = loopback_alias();
        let ca = TestCa::new();
        // A third server, also on 127.0.0.2, with a certificate for the alias too: were the
        // proxy to connect, it would be reached and record the request.
        let target = EchoServer::start_on(
            &ca,
            &[
                std::net::IpAddr::from([127, 0, 0, 1]),
                std::net::IpAddr::from([127, 0, 0, 2]),
            ],
            &[alias.as_str()],
        );
        let p = target.port;
        let targets = [
            ("ip2", format!("https://127.0.0.2:{p}/")),
            ("alias", format!("https://{alias}:{p}/")),
            ("localhost-other-port", format!("https://localhost:{p}/")),
            ("plain-http", format!("http://127.0.0.2:{p}/")),
        ];
        let labels: Vec<&str> = targets.iter().map(|(l, _)| *l).collect();
        let r = w.blind_sh(&[], &probe_script(&targets), &[]).no_canary();
        assert_all_403(&r, &labels);
        assert_eq!(
            target.connections(),
            0,
            "the proxy connected to a loopback address no pattern names: {:#?}",
            target.requests()
        );
    }

    #[test]
    fn private_and_metadata_addresses_are_refused() {
        // Run inside a private network namespace (only `lo`): were the proxy to try, nothing
        // would leave the machine; it must answer 403 before trying.
        for tool in ["unshare", "curl"] {
            support::clients::require_tool(tool);
        }
        assert!(
            std::process::Command::new("ip")
                .arg("-V")
                .output()
                .is_ok_and(|o| o.status.success()),
            "`ip` (iproute2) is not installed: run scripts/test once"
        );
        let w = World::new();
        let targets = [
            ("rfc1918", "https://10.0.0.1/".to_string()),
            ("rfc1918-192", "https://192.168.1.1/".to_string()),
            ("cgnat", "https://100.64.0.1/".to_string()),
            (
                "metadata",
                "https://169.254.169.254/latest/meta-data/".to_string(),
            ),
            (
                "metadata-http",
                "http://169.254.169.254/latest/meta-data/".to_string(),
            ),
            ("metadata-v6", "https://[fd00:ec2::254]/".to_string()),
            (
                "metadata-gcp",
                "http://metadata.google.internal/computeMetadata/v1/".to_string(),
            ),
            ("ula", "https://[fd12:3456::1]/".to_string()),
        ];
        let labels: Vec<&str> = targets.iter().map(|(l, _)| *l).collect();
        let script = probe_script(&targets);
        let mut c = std::process::Command::new("unshare");
        c.args([
            "-r",
            "-n",
            "sh",
            "-c",
            "ip link set lo up && exec \"$0\" \"$@\"",
        ])
        .arg(crate::util::kz_bin())
        .args(["run", "--blind", "--", "sh", "-c", &script])
        .current_dir(&w.s.project)
        .env_clear()
        .envs(&w.s.env)
        .stdin(std::process::Stdio::null());
        let r = Run::from(c.output().unwrap()).no_canary();
        assert_all_403(&r, &labels);
    }

    #[test]
    fn child_environment_is_blind_and_overrides_presets() {
        support::clients::require_tool("curl");
        let mut w = World::new();
        // Presets a user might have: kz's proxy must ignore them, the child must not see them.
        w.s.set("HTTPS_PROXY", "http://127.0.0.1:9")
            .set("https_proxy", "http://127.0.0.1:9")
            .set("NO_PROXY", "*");
        let keep = vec![
            ("SSL_CERT_FILE".to_string(), SYSTEM_BUNDLE.to_string()),
            ("HTTPS_PROXY".to_string(), "http://127.0.0.1:9".to_string()),
            ("KZ_KEPT".to_string(), "kept".to_string()),
        ];
        let curl = support::clients::clients_dir().join("curl.sh");
        let script = format!(
            "env; echo '==kz== ENVEND'; '{}' '{}' h1",
            curl.display(),
            w.allowed.url()
        );
        let r = w.blind_sh(&[], &script, &keep).ok().no_canary();
        let (env_text, rest) = r.stdout.split_once("==kz== ENVEND").unwrap();
        let env = parse_env(env_text);
        let get = |k: &str| env.get(k).map(String::as_str);
        assert!(is_token(get("API_TOKEN").unwrap_or_default()), "{env_text}");
        assert!(
            is_token(get("OTHER_TOKEN").unwrap_or_default()),
            "{env_text}"
        );
        assert_ne!(get("API_TOKEN"), get("OTHER_TOKEN"));
        assert_eq!(get("KZ_BLIND"), Some("1"));
        assert_eq!(get("NODE_USE_ENV_PROXY"), Some("1"));
        assert_eq!(get("KZ_KEPT"), Some("kept"));
        let proxy = get("HTTPS_PROXY").unwrap_or_default();
        assert!(proxy_with_credential(proxy), "{env_text}");
        assert_ne!(
            proxy, "http://127.0.0.1:9",
            "a kept preset won over the proxy"
        );
        for v in [
            "HTTP_PROXY",
            "http_proxy",
            "https_proxy",
            "ALL_PROXY",
            "all_proxy",
        ] {
            assert_eq!(get(v), Some(proxy), "{v}");
        }
        for v in ["NO_PROXY", "no_proxy"] {
            let list = get(v).unwrap_or_default();
            assert!(
                !list
                    .split(',')
                    .any(|h| h.trim() == "localhost" || h.trim() == "*"),
                "{v}={list}: localhost:PORT is allowed, so it must go through the proxy"
            );
        }
        let bundle = get("SSL_CERT_FILE").unwrap_or_default();
        assert!(!bundle.is_empty() && bundle != SYSTEM_BUNDLE, "{env_text}");
        for v in PRESET_CA_VARS
            .iter()
            .chain(&["CARGO_HTTP_CAINFO", "DENO_CERT"])
        {
            assert_eq!(get(v), Some(bundle), "{v}");
        }
        assert_ne!(get("SSL_CERT_DIR"), Some("/etc/ssl/certs"));
        for (k, v) in &env {
            assert!(
                !k.starts_with("KZ_TEST_") && !k.starts_with("XDG_") && v != OTHER_VALUE,
                "{k} leaked into the child"
            );
        }
        // Overriding a kept variable is said on stderr.
        assert!(r.stderr.contains("SSL_CERT_FILE"), "{}", r.stderr);
        // And the run still works: the preset proxy was ignored by kz's own proxy.
        let c = ClientRun {
            code: Some(0),
            stdout: rest.to_string(),
            stderr: r.stderr.clone(),
            out: ClientOutput::parse(rest),
        };
        assert_reached(
            Client::CurlH1,
            &c,
            &w.allowed,
            CANARY,
            get("API_TOKEN").unwrap(),
        );
    }

    #[test]
    fn canary_never_in_child_env_output_or_audit() {
        support::clients::require_tool("curl");
        let w = World::new();
        let audit = w.s.root.path().join("audit.jsonl");
        let curl = support::clients::clients_dir().join("curl.sh");
        let script = format!(
            "env; '{c}' '{a}' h1; '{c}' '{o}' h2; echo \"$API_TOKEN\" >&2",
            c = curl.display(),
            a = w.allowed.url(),
            o = w.other.url()
        );
        let r = w
            .blind_sh(&["--audit", audit.to_str().unwrap()], &script, &[])
            .ok()
            .no_canary();
        assert!(!r.stdout.contains(OTHER_VALUE) && !r.stderr.contains(OTHER_VALUE));
        assert!(
            w.allowed.requests().iter().any(|q| q.contains(CANARY)),
            "the swap did not happen"
        );
        let hits = w.s.files_with_canary(&[]);
        assert!(hits.is_empty(), "canary written to {hits:?}");
        let text = std::fs::read_to_string(&audit).expect("--audit wrote no file");
        assert!(!text.contains(CANARY) && !text.contains(OTHER_VALUE));
        let records: Vec<serde_json::Value> = text
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        let names_api = |j: &serde_json::Value| {
            j["secrets"]
                .as_array()
                .is_some_and(|a| a.iter().any(|s| s == "API_TOKEN"))
        };
        assert!(
            records
                .iter()
                .any(|j| j["transport"] == "blind" && j["decision"] == "allow" && names_api(j)),
            "no swap audited: {text}"
        );
        assert!(
            records.iter().any(|j| j["transport"] == "blind"
                && j["decision"] == "deny"
                && names_api(j)
                && j["host"].as_str().is_some_and(|h| h.contains("localhost"))),
            "no refusal audited: {text}"
        );
        assert!(
            records
                .iter()
                .all(|j| j["path"].as_str().is_none_or(|p| !p.contains('?'))),
            "a path kept its query: {text}"
        );
        // The log is a valid chain.
        w.s.kz(&["audit", "verify", audit.to_str().unwrap()]).ok();
    }

    #[test]
    fn a_secret_without_hosts_refuses_to_start() {
        let s = Sandbox::with_config(
            "[secrets]\nAPI_TOKEN = { provider = \"env\", ref = \"KZ_TEST_CANARY_SOURCE\" }\n",
        );
        let mut s = s;
        s.set("KZ_TEST_CANARY_SOURCE", CANARY)
            .set("KEYZERO_TRUST", "1");
        let marker = s.path("started");
        let r = s
            .kz(&["run", "--blind", "--", "touch", marker.to_str().unwrap()])
            .no_canary();
        assert_ne!(r.code, Some(0));
        assert!(!marker.exists(), "the child started");
        assert!(
            r.stderr.contains("API_TOKEN") && r.stderr.contains("hosts"),
            "{}",
            r.stderr
        );
    }

    #[test]
    fn allow_host_flag_lets_a_token_go_to_one_more_host() {
        support::clients::require_tool("curl");
        let w = World::new();
        let other = w.other.host();
        let (run, c) = w.client(Client::CurlH1, &w.other.url(), &["--allow-host", &other]);
        run.no_canary();
        assert_reached(Client::CurlH1, &c, &w.other, CANARY, &c.out.token);
    }

    #[test]
    fn no_force_proxy_exports_only_the_proxy_url() {
        support::clients::require_tool("curl");
        let w = World::new();
        let script = format!(
            "env; echo '==kz== ENVEND'; echo \"==kz== CERTS $(grep -c 'BEGIN CERTIFICATE' \"$SSL_CERT_FILE\")\"; \
             curl -sS -o /dev/null -x \"$KZ_PROXY_URL\" -H \"Authorization: Bearer $API_TOKEN\" '{}/get?kz=1'",
            w.allowed.url()
        );
        let r = w
            .blind_sh(&["--no-force-proxy"], &script, &[])
            .ok()
            .no_canary();
        let (env_text, rest) = r.stdout.split_once("==kz== ENVEND").unwrap();
        let env = parse_env(env_text);
        for v in [
            "HTTP_PROXY",
            "HTTPS_PROXY",
            "http_proxy",
            "https_proxy",
            "ALL_PROXY",
        ] {
            assert!(!env.contains_key(v), "{v} set under --no-force-proxy");
        }
        assert!(
            env.get("KZ_PROXY_URL")
                .is_some_and(|u| proxy_with_credential(u)),
            "{env_text}"
        );
        assert_ne!(
            env.get("SSL_CERT_FILE").map(String::as_str),
            Some(SYSTEM_BUNDLE)
        );
        // The run's CA plus the system roots.
        let certs: usize = ClientOutput::parse(rest)
            .answer("CERTS")
            .status
            .map_or(0, usize::from);
        assert!(certs > 1, "{rest}");
        let bearer = format!("Bearer {CANARY}");
        assert!(
            w.allowed
                .requests()
                .iter()
                .any(|q| q.header("authorization") == Some(bearer.as_str())),
            "{:#?}\n{}",
            w.allowed.requests(),
            r.stdout
        );
    }
}

mod isolate {
    use super::*;

    fn netns() -> String {
        std::fs::read_link("/proc/self/ns/net")
            .map(|p| p.display().to_string())
            .unwrap_or_default()
    }

    #[test]
    fn only_the_proxy_is_reachable() {
        support::clients::require_tool("curl");
        let py = support::clients::python();
        let w = World::new();
        let port = w.allowed.port;
        // Direct attempts first, in a run of their own: the server must see no connection.
        // The DNS lookup only runs once the child is known to be in another network namespace,
        // so a broken isolation can never send a query off the machine.
        let script = format!(
            "echo '==kz== TOKEN x'; \
             printf '==kz== NETNS '; if [ \"$(readlink /proc/self/ns/net)\" = \"$KZ_TEST_PARENT_NETNS\" ]; then echo same; else echo other; fi; \
             printf '==kz== NOPROXY '; curl -sS --noproxy '*' --max-time 10 -o /dev/null 'https://localhost:{port}/' 2>/dev/null; echo $?; \
             printf '==kz== SOCKET '; '{py}' -c 'import socket; socket.create_connection((\"127.0.0.1\", {port}), timeout=5)' 2>/dev/null; echo $?; \
             if [ \"$(readlink /proc/self/ns/net)\" != \"$KZ_TEST_PARENT_NETNS\" ]; then \
               printf '==kz== DNS '; '{py}' -c 'import socket; socket.getaddrinfo(\"example.com\", 443)' 2>/dev/null; echo $?; fi; \
             echo '==kz== END'",
            py = py.display()
        );
        let keep = vec![("KZ_TEST_PARENT_NETNS".to_string(), netns())];
        let r = w.blind_sh(&["--isolate"], &script, &keep).ok().no_canary();
        let out = ClientOutput::parse(&r.stdout);
        assert!(out.ended, "{}\n{}", r.stdout, r.stderr);
        assert!(r.stdout.contains("==kz== NETNS other"), "{}", r.stdout);
        for probe in ["NOPROXY", "SOCKET", "DNS"] {
            let a = out.answer(probe);
            assert!(
                a.status.is_some_and(|rc| rc != 0),
                "{probe} succeeded under --isolate: {}",
                r.stdout
            );
        }
        assert_eq!(w.allowed.connections(), 0, "a direct connection got out");

        // Through the proxy it still works.
        let (run, c) = w.client(Client::CurlH1, &w.allowed.url(), &["--isolate"]);
        run.no_canary();
        assert_reached(Client::CurlH1, &c, &w.allowed, CANARY, &c.out.token);
    }
}

// ---------------------------------------------------------------------------------------------
// Where a token is swapped, cleartext, and the proxy's own credential.

mod proxy_rules {
    use super::*;

    #[test]
    fn a_token_in_a_body_is_swapped_only_for_an_entry_that_asks() {
        support::clients::require_tool("curl");
        for (extra, want_value) in [
            ("", false),
            (", swap = [\"headers\", \"query\", \"body\"]", true),
        ] {
            let w = World::build(CANARY, extra);
            let script = format!(
                "curl -sS -o /dev/null -H \"Authorization: Bearer $API_TOKEN\" \
                 -H 'Content-Type: application/x-www-form-urlencoded' \
                 --data \"client_secret=$API_TOKEN\" '{}/token?key='\"$API_TOKEN\"; \
                 echo \"==kz== TOKEN $API_TOKEN\"",
                w.allowed.url()
            );
            let r = w.blind_sh(&[], &script, &[]).ok().no_canary();
            let token = ClientOutput::parse(&r.stdout).token;
            assert!(is_token(&token), "{}", r.stdout);
            let recorded = w.allowed.requests();
            let q = recorded
                .iter()
                .find(|q| q.method == "POST")
                .unwrap_or_else(|| panic!("no POST: {recorded:#?}\n{}", r.stderr));
            let bearer = format!("Bearer {CANARY}");
            assert_eq!(q.header("authorization"), Some(bearer.as_str()), "{extra}");
            assert_eq!(q.target, format!("/token?key={CANARY}"), "{extra}");
            let want = if want_value { CANARY } else { token.as_str() };
            assert_eq!(
                String::from_utf8_lossy(&q.body),
                format!("client_secret={want}"),
                "{extra}"
            );
        }
    }

    /// `methods` and `paths` next to `hosts`: a request carrying the token outside them gets
    /// 403 and nothing is sent; a request without the token is not the binding's business.
    #[test]
    fn a_secret_bound_by_method_and_path_is_sent_only_for_those() {
        support::clients::require_tool("curl");
        let w = World::build(
            CANARY,
            ", methods = [\"GET\"], paths = [\"/get\", \"/v1/**\"]",
        );
        let audit = w.s.root.path().join("audit.jsonl");
        let cases = [
            ("GET", "/get", true),
            ("POST", "/get", false),
            ("GET", "/post", false),
            ("GET", "/v1/a/b", true),
            ("DELETE", "/v1/a", false),
            ("GET", "/v1/%2e%2e/post", false),
            ("GET", "/v1/..;/post", false),
            ("GET", "/v1//a", false),
            ("GET", "/v1%2fa", false),
        ];
        let mut script = String::new();
        for (m, p, _) in cases {
            script.push_str(&format!(
                "c=$(curl -sS --path-as-is -o /dev/null -w '%{{http_code}}' -X {m} \
                 -H \"Authorization: Bearer $API_TOKEN\" '{base}{p}?kz=1'); \
                 echo \"==kz== {m} {p} $c\"; ",
                base = w.allowed.url()
            ));
        }
        // Without the token, any method and path.
        script.push_str(&format!(
            "c=$(curl -sS -o /dev/null -w '%{{http_code}}' -X POST '{}/post'); echo \"==kz== NOTOKEN $c\"",
            w.allowed.url()
        ));
        let r = w
            .blind_sh(&["--audit", audit.to_str().unwrap()], &script, &[])
            .ok()
            .no_canary();
        let line = |m: &str, p: &str| {
            r.stdout
                .lines()
                .find_map(|l| l.strip_prefix(&format!("==kz== {m} {p} ")))
                .unwrap_or_else(|| panic!("no answer for {m} {p}: {}\n{}", r.stdout, r.stderr))
                .to_string()
        };
        for (m, p, ok) in cases {
            let code = line(m, p);
            if ok {
                assert_ne!(code, "403", "{m} {p}: {}", r.stderr);
            } else {
                assert_eq!(code, "403", "{m} {p}: {}", r.stderr);
            }
        }
        assert!(r.stdout.contains("==kz== NOTOKEN 200"), "{}", r.stdout);
        // The server saw the value exactly for the two allowed calls, and none of the others.
        let bearer = format!("Bearer {CANARY}");
        let recorded = w.allowed.requests();
        let with_value: Vec<(String, String)> = recorded
            .iter()
            .filter(|q| q.header("authorization") == Some(bearer.as_str()))
            .map(|q| (q.method.clone(), q.target.clone()))
            .collect();
        assert_eq!(
            with_value,
            [
                ("GET".to_string(), "/get?kz=1".to_string()),
                ("GET".to_string(), "/v1/a/b?kz=1".to_string())
            ],
            "{recorded:#?}"
        );
        assert!(
            recorded
                .iter()
                .all(|q| q.header("authorization").is_none_or(|a| a == bearer)),
            "a token reached the server: {recorded:#?}"
        );
        assert_eq!(recorded.len(), 3, "{recorded:#?}");
        let text = std::fs::read_to_string(&audit).unwrap();
        for reason in [
            "secret not bound to this method",
            "secret not bound to this path",
            "ambiguous path for a path-bound secret",
        ] {
            assert!(text.contains(reason), "{reason} not audited: {text}");
        }
        w.s.kz(&["audit", "verify", audit.to_str().unwrap()]).ok();
    }

    /// The same binding with Python's urllib (through the proxy by `HTTPS_PROXY`).
    #[test]
    fn a_python_client_meets_the_same_method_and_path_binding() {
        let w = World::build(CANARY, ", methods = [\"GET\"], paths = [\"/get\"]");
        let script = r#"
import os, sys, urllib.request, urllib.error
tok = os.environ["API_TOKEN"]
for m, p in [("GET", "/get"), ("POST", "/get"), ("GET", "/post")]:
    req = urllib.request.Request(sys.argv[1] + p, method=m, data=b"x" if m == "POST" else None,
                                 headers={"Authorization": "Bearer " + tok})
    try:
        code = urllib.request.urlopen(req, timeout=20).status
        body = ""
    except urllib.error.HTTPError as e:
        code, body = e.code, e.read().decode()
    print("==kz==", m, p, code, body.replace("\n", " "))
"#;
        let path = w.s.write("binding.py", script);
        let argv = vec![
            support::clients::python().display().to_string(),
            path.display().to_string(),
            w.allowed.url(),
        ];
        let r = w.blind(&[], &argv, &[]).ok().no_canary();
        let line = |m: &str, p: &str| {
            r.stdout
                .lines()
                .find(|l| l.starts_with(&format!("==kz== {m} {p} ")))
                .unwrap_or_else(|| panic!("no answer for {m} {p}: {}\n{}", r.stdout, r.stderr))
                .to_string()
        };
        assert!(
            line("GET", "/get").starts_with("==kz== GET /get 200"),
            "{}",
            r.stdout
        );
        let post = line("POST", "/get");
        assert!(post.starts_with("==kz== POST /get 403"), "{post}");
        assert!(
            post.contains("API_TOKEN") && post.contains("GET (its `methods`)"),
            "{post}"
        );
        let path = line("GET", "/post");
        assert!(path.starts_with("==kz== GET /post 403"), "{path}");
        assert!(path.contains("may be used only on /get"), "{path}");
        let bearer = format!("Bearer {CANARY}");
        let recorded = w.allowed.requests();
        assert_eq!(recorded.len(), 1, "{recorded:#?}");
        assert_eq!(recorded[0].header("authorization"), Some(bearer.as_str()));
    }

    #[test]
    fn a_value_fragment_from_the_command_stops_blind_mode_with_a_warning() {
        support::clients::require_tool("curl");
        let w = World::new();
        // A guess holding 16 bytes of the value, toward the host the secret is bound to, then a
        // normal request with the token: both refused, nothing reaches the server.
        let fragment = CANARY.get(..16).unwrap_or(CANARY);
        let audit = w.s.root.path().join("audit.jsonl");
        let script = format!(
            "curl -sS -H 'X-Guess: {fragment}' '{u}/get/{fragment}'; echo; \
             curl -sS -H \"Authorization: Bearer $API_TOKEN\" '{u}/get'; echo; echo '==kz== END'",
            u = w.allowed.url()
        );
        let r = w
            .blind_sh(&["--audit", audit.to_str().unwrap()], &script, &[])
            .no_canary();
        // The audit record of the guess names the secret, not what the guess carried.
        let text = std::fs::read_to_string(&audit).unwrap();
        assert!(!text.contains(fragment), "{text}");
        assert!(
            text.contains("[withheld: it carried a secret value]"),
            "{text}"
        );
        // The guess gets the 403; the next request's CONNECT gets it too (curl reports it).
        assert_eq!(
            r.stdout.matches("blind mode stopped").count(),
            1,
            "{}\n{}",
            r.stdout,
            r.stderr
        );
        assert!(r.stderr.contains("response 403"), "{}", r.stderr);
        assert!(!r.stdout.contains("API_TOKEN"), "{}", r.stdout);
        assert_eq!(w.allowed.requests().len(), 0, "{}", r.stderr);
        // One warning when it happens, one in the summary at exit, naming the secret only.
        let warnings: Vec<&str> = r
            .stderr
            .lines()
            .filter(|l| l.contains("blind mode") && l.contains("API_TOKEN"))
            .collect();
        assert_eq!(warnings.len(), 2, "{}", r.stderr);
        assert!(!r.stderr.contains(fragment), "{}", r.stderr);
    }

    #[test]
    fn a_value_over_plain_http_needs_a_binding_that_names_the_scheme() {
        support::clients::require_tool("curl");
        let w = World::new();
        // The allowed server, asked for over plain HTTP (through HTTP_PROXY): API_TOKEN's
        // binding (`localhost:PORT`) names no scheme, so the proxy refuses before connecting.
        let plain = w.allowed.url().replacen("https://", "http://", 1);
        let script = format!(
            "curl -sS -H \"Authorization: Bearer $API_TOKEN\" '{plain}/get'; echo; echo '==kz== END'"
        );
        let r = w.blind_sh(&[], &script, &[]).ok().no_canary();
        assert!(
            r.stdout.contains("would travel unencrypted"),
            "{}",
            r.stdout
        );
        assert!(r.stdout.contains("API_TOKEN"), "{}", r.stdout);
        let fix = format!("bind `http://{}`", w.allowed.host());
        assert!(r.stdout.contains(&fix), "{}", r.stdout);
        assert_eq!(w.allowed.connections(), 0, "the proxy connected");
        // `--allow-host http://HOST:PORT` allows it: the proxy now connects (the test server
        // speaks only TLS, so the exchange itself fails; what matters is that it was tried).
        let flag = format!("http://{}", w.allowed.host());
        let r = w
            .blind_sh(&["--allow-host", &flag], &script, &[])
            .ok()
            .no_canary();
        assert!(
            !r.stdout.contains("would travel unencrypted"),
            "{}",
            r.stdout
        );
        assert!(w.allowed.connections() > 0, "{}", r.stdout);
        // A scheme other than http(s) is a usage error naming the pattern.
        let r = w.blind_sh(&["--allow-host", "ftp://x.example.com"], "true", &[]);
        assert_ne!(r.code, Some(0));
        assert!(r.stderr.contains("ftp://"), "{}", r.stderr);
    }

    #[test]
    fn the_proxy_refuses_requests_without_its_credential() {
        support::clients::require_tool("curl");
        let w = World::new();
        let audit = w.s.root.path().join("audit.jsonl");
        // The proxy's address without the credential (what another local user could find).
        let script = format!(
            "bare=\"http://${{HTTPS_PROXY#*@}}\"; \
             printf '==kz== BARE '; curl -s -o /dev/null --max-time 20 -x \"$bare\" \
               -H \"Authorization: Bearer $API_TOKEN\" -w '%{{http_connect}}\\n' '{u}/get'; \
             printf '==kz== WRONG '; curl -s -o /dev/null --max-time 20 \
               -x \"http://kz:{wrong}@${{HTTPS_PROXY#*@}}\" \
               -H \"Authorization: Bearer $API_TOKEN\" -w '%{{http_connect}}\\n' '{u}/get'; \
             printf '==kz== RIGHT '; curl -s -o /dev/null --max-time 20 \
               -H \"Authorization: Bearer $API_TOKEN\" -w '%{{http_code}}\\n' '{u}/get'; \
             echo '==kz== END'",
            u = w.allowed.url(),
            wrong = "0".repeat(48),
        );
        let r = w
            .blind_sh(&["--audit", audit.to_str().unwrap()], &script, &[])
            .ok()
            .no_canary();
        let out = ClientOutput::parse(&r.stdout);
        assert!(out.ended, "{}", r.stdout);
        assert_eq!(out.answer("BARE").status, Some(407), "{}", r.stdout);
        assert_eq!(out.answer("WRONG").status, Some(407), "{}", r.stdout);
        assert_eq!(out.answer("RIGHT").status, Some(200), "{}", r.stdout);
        assert_eq!(w.allowed.requests().len(), 1, "{:#?}", w.allowed.requests());
        let text = std::fs::read_to_string(&audit).unwrap();
        assert!(text.contains("no proxy credential"), "{text}");
        assert!(text.contains("wrong proxy credential"), "{text}");
        assert!(!text.contains(CANARY));
        // The credential is never printed by kz, even with -v.
        let r = w
            .blind_sh(&["-v"], "echo \"==kz== URL $HTTPS_PROXY\"", &[])
            .ok();
        let url = r
            .stdout
            .lines()
            .find_map(|l| l.strip_prefix("==kz== URL "))
            .unwrap_or_default()
            .to_string();
        assert!(proxy_with_credential(&url), "{}", r.stdout);
        let password = url.split_once('@').unwrap().0.rsplit(':').next().unwrap();
        assert!(!r.stderr.contains(password), "{}", r.stderr);
        assert!(
            r.stderr.contains("blind: proxy on http://127.0.0.1:"),
            "{}",
            r.stderr
        );
    }
}
