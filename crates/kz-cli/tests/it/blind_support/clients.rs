//! The clients of the blind-mode compatibility matrix: how to run each one (the scripts in
//! `tests/clients/`, the Rust reqwest client being this test binary itself), the tools each
//! needs (a missing one fails the test with a pointer to `scripts/test`), and the parser of
//! the line format they all print (`tests/clients/README.md`).

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;

/// A client of the matrix.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Client {
    /// `curl --http1.1`
    CurlH1,
    /// `curl --http2`
    CurlH2,
    /// Python requests
    Requests,
    /// Python httpx
    Httpx,
    /// Python urllib
    Urllib,
    /// Node's built-in fetch (undici preload on Node 20)
    NodeFetch,
    /// Node `https.request` with https-proxy-agent
    NodeHttps,
    /// `git ls-remote` over HTTPS
    Git,
    /// Python websockets
    PyWebsockets,
    /// npm ws
    NodeWs,
    /// Rust reqwest (this test binary, re-executed)
    Reqwest,
}

/// What a client sends: HTTP requests (`GET` and maybe `POST`), a WebSocket session, or git.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Shape {
    /// `GET /get?kz=1`, and `POST /post` with `{"token": …}` when the flag is set.
    Http { post: bool },
    /// A WebSocket session on `/ws`.
    WebSocket,
    /// `git ls-remote BASE/repo.git`.
    Git,
}

/// Set on the re-executed test binary only: the inner reqwest test does nothing without it.
pub const INNER_VAR: &str = "KZ_BLIND_INNER";
/// The base URL for the inner reqwest test.
pub const INNER_URL_VAR: &str = "KZ_BLIND_INNER_URL";
/// The inner test's full name.
pub const INNER_TEST: &str = "blind::inner::reqwest_client";

impl Client {
    /// Every client.
    pub const ALL: [Client; 11] = [
        Client::CurlH1,
        Client::CurlH2,
        Client::Requests,
        Client::Httpx,
        Client::Urllib,
        Client::NodeFetch,
        Client::NodeHttps,
        Client::Git,
        Client::PyWebsockets,
        Client::NodeWs,
        Client::Reqwest,
    ];

    /// What it sends.
    pub fn shape(self) -> Shape {
        match self {
            Client::Git => Shape::Git,
            Client::PyWebsockets | Client::NodeWs => Shape::WebSocket,
            _ => Shape::Http { post: true },
        }
    }

    /// The HTTP version the client pins: as the echo server records it, and as the client
    /// reports it (`GET-VERSION`).
    pub fn version(self) -> Option<(&'static str, &'static str)> {
        match self {
            Client::CurlH1 => Some(("HTTP/1.1", "1.1")),
            Client::CurlH2 => Some(("HTTP/2.0", "2")),
            _ => None,
        }
    }

    /// Fails the test unless the tools this client needs are installed.
    pub fn require(self) {
        match self {
            Client::CurlH1 | Client::CurlH2 => require_tool("curl"),
            Client::Git => require_tool("git"),
            Client::Requests | Client::Httpx | Client::Urllib | Client::PyWebsockets => {
                let _ = python();
            }
            Client::NodeFetch | Client::NodeHttps | Client::NodeWs => {
                let _ = node_modules();
            }
            Client::Reqwest => {}
        }
    }

    /// The command line for this client against `base` (`https://host:port`), and the
    /// variables it needs besides `API_TOKEN`, the CA variables and the proxy variables.
    pub fn command(self, base: &str) -> (Vec<String>, Vec<(String, String)>) {
        self.require();
        let script = |name: &str| clients_dir().join(name).display().to_string();
        let py = |name: &str| vec![python().display().to_string(), script(name), base.into()];
        let node = |name: &str| vec!["node".to_string(), script(name), base.into()];
        let node_env = || {
            vec![(
                "KZ_NODE_MODULES".to_string(),
                node_modules().display().to_string(),
            )]
        };
        match self {
            Client::CurlH1 => (vec![script("curl.sh"), base.into(), "h1".into()], vec![]),
            Client::CurlH2 => (vec![script("curl.sh"), base.into(), "h2".into()], vec![]),
            Client::Requests => (py("py_requests.py"), vec![]),
            Client::Httpx => (py("py_httpx.py"), vec![]),
            Client::Urllib => (py("py_urllib.py"), vec![]),
            Client::PyWebsockets => (py("py_websockets.py"), vec![]),
            Client::NodeFetch => {
                let mut env = node_env();
                env.push((
                    "NODE_OPTIONS".into(),
                    format!("--import={}", script("preload.mjs")),
                ));
                (node("node_fetch.mjs"), env)
            }
            Client::NodeHttps => (node("node_https.mjs"), node_env()),
            Client::NodeWs => (node("node_ws.mjs"), node_env()),
            Client::Git => (vec![script("git.sh"), base.into()], vec![]),
            Client::Reqwest => (
                vec![
                    std::env::current_exe().unwrap().display().to_string(),
                    "--exact".into(),
                    INNER_TEST.into(),
                    "--ignored".into(),
                    "--nocapture".into(),
                    "--test-threads=1".into(),
                ],
                vec![
                    (INNER_VAR.into(), "1".into()),
                    (INNER_URL_VAR.into(), base.into()),
                ],
            ),
        }
    }
}

/// `tests/clients/` at the repository root.
pub fn clients_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/clients")
}

fn install_hint(what: &str) -> String {
    format!("{what}: run scripts/test once (it installs the blind-mode test clients)")
}

/// Fails the test unless `tool` runs (`tool --version`).
pub fn require_tool(tool: &str) {
    let ok = Command::new(tool)
        .arg("--version")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    assert!(
        ok,
        "{}",
        install_hint(&format!("`{tool}` is not installed"))
    );
}

/// The Python of the tools venv (`KZ_TOOLS_VENV`, default `~/.cache/keyzero-venv`), checked
/// to have requests, httpx, websockets and the MCP SDK.
pub fn python() -> PathBuf {
    static P: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    P.get_or_init(|| {
        let venv = std::env::var_os("KZ_TOOLS_VENV").map_or_else(
            || {
                PathBuf::from(std::env::var_os("HOME").unwrap_or_default())
                    .join(".cache/keyzero-venv")
            },
            PathBuf::from,
        );
        let py = venv.join("bin/python");
        let ok = Command::new(&py)
            .args(["-c", "import requests, httpx, websockets, mcp"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if ok {
            Ok(py)
        } else {
            Err(install_hint(&format!(
                "{} cannot import requests, httpx, websockets and mcp",
                py.display()
            )))
        }
    })
    .clone()
    .unwrap_or_else(|e| panic!("{e}"))
}

/// The npm packages of `tests/clients/package.json` (`KZ_NODE_MODULES`, default
/// `~/.cache/keyzero-node/node_modules`), checked to be there, and node on PATH.
pub fn node_modules() -> PathBuf {
    static P: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    P.get_or_init(|| {
        let dir = std::env::var_os("KZ_NODE_MODULES").map_or_else(
            || {
                PathBuf::from(std::env::var_os("HOME").unwrap_or_default())
                    .join(".cache/keyzero-node/node_modules")
            },
            PathBuf::from,
        );
        let node_ok = Command::new("node")
            .arg("--version")
            .stdin(Stdio::null())
            .output()
            .is_ok_and(|o| o.status.success());
        if !node_ok {
            return Err(install_hint("`node` is not installed"));
        }
        for p in [
            "undici",
            "ws",
            "https-proxy-agent",
            "@modelcontextprotocol/sdk",
        ] {
            if !dir.join(p).join("package.json").is_file() {
                return Err(install_hint(&format!(
                    "npm package {p} is not in {}",
                    dir.display()
                )));
            }
        }
        Ok(dir)
    })
    .clone()
    .unwrap_or_else(|e| panic!("{e}"))
}

/// One answer a client printed.
#[derive(Clone, Debug, Default)]
pub struct Answer {
    /// `GET`, `POST`, `WS` or `GIT`.
    pub kind: String,
    /// The HTTP status (or git's exit code), when the request got an answer.
    pub status: Option<u16>,
    /// The client's error, when it got none.
    pub error: Option<String>,
    /// What the client printed after the status line.
    pub body: String,
    /// The status line after the kind, as printed.
    pub rest: String,
}

impl Answer {
    /// Whether the client was refused with 403: the status, or (for a refused `CONNECT`,
    /// which clients report as an error) an error message naming 403.
    pub fn is_forbidden(&self) -> bool {
        self.status == Some(403) || self.error.as_deref().is_some_and(|e| e.contains("403"))
    }
}

/// Everything a client printed, parsed.
#[derive(Clone, Debug, Default)]
pub struct ClientOutput {
    /// The `API_TOKEN` the client had.
    pub token: String,
    /// The answers, in order.
    pub answers: Vec<Answer>,
    /// Whether `==kz== END` was printed.
    pub ended: bool,
}

impl ClientOutput {
    /// Parses the line format; lines before the first marker are ignored (libtest's own output
    /// around the inner reqwest test).
    pub fn parse(stdout: &str) -> Self {
        let mut out = Self::default();
        let mut current: Option<Answer> = None;
        for line in stdout.lines() {
            if let Some(rest) = line.strip_prefix("==kz== ") {
                if let Some(a) = current.take() {
                    out.answers.push(a);
                }
                if rest == "END" {
                    out.ended = true;
                    break;
                }
                if let Some(t) = rest.strip_prefix("TOKEN ") {
                    out.token = t.to_string();
                    continue;
                }
                let (kind, what) = rest.split_once(' ').unwrap_or((rest, ""));
                let mut a = Answer {
                    kind: kind.to_string(),
                    rest: what.to_string(),
                    ..Answer::default()
                };
                if let Some(e) = what.strip_prefix("ERROR ") {
                    a.error = Some(e.to_string());
                } else {
                    a.status = what.trim().parse().ok();
                }
                current = Some(a);
            } else if let Some(a) = current.as_mut() {
                if !a.body.is_empty() {
                    a.body.push('\n');
                }
                a.body.push_str(line);
            }
        }
        if let Some(a) = current.take() {
            out.answers.push(a);
        }
        out
    }

    /// The answer of this kind; fails the test when there is none.
    #[track_caller]
    pub fn answer(&self, kind: &str) -> &Answer {
        self.answers
            .iter()
            .find(|a| a.kind == kind)
            .unwrap_or_else(|| panic!("no {kind} answer in {self:#?}"))
    }

    /// The answer of this kind as the echo server's JSON.
    #[track_caller]
    pub fn echo_json(&self, kind: &str) -> serde_json::Value {
        let a = self.answer(kind);
        serde_json::from_str(a.body.trim())
            .unwrap_or_else(|e| panic!("{kind} body is not the echo JSON ({e}): {a:#?}"))
    }
}

/// The value of header `name` in an echo JSON (`headers: [[name, value], …]`).
pub fn echo_header(json: &serde_json::Value, name: &str) -> Option<String> {
    json.get("headers")?
        .as_array()?
        .iter()
        .find_map(|pair| {
            let name_ok = pair.get(0)?.as_str()?.eq_ignore_ascii_case(name);
            name_ok.then(|| pair.get(1)?.as_str().map(ToString::to_string))
        })
        .flatten()
}
