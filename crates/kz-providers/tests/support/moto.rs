//! Test fixtures for the AWS providers: a real moto server, and a counting TCP forwarder that
//! sits between the provider and moto to count AWS API calls.
//!
//! moto is started through a tiny `sh` wrapper whose stdin is a pipe held by the test process:
//! `moto_server … & echo $!; read _; kill $!`. When the pipe closes — on `Drop`, or when the test
//! process exits in any way (which is how the shared, process-wide server is stopped) — the
//! wrapper kills moto by its PID. Nothing else is ever killed.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Ipv4Addr, TcpListener as StdListener, TcpStream as StdStream};
use std::path::PathBuf;
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader as TokioBufReader};
use tokio::net::{TcpListener, TcpStream};

const MOTO_MISSING: &str = "moto_server not found: run scripts/test (it installs moto[server]==5.2.5 into ~/.cache/keyzero-venv) or add that venv's bin to PATH";

/// Finds `moto_server` on PATH (fails, never skips, when it is missing).
fn moto_binary() -> PathBuf {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .map(|d| d.join("moto_server"))
        .find(|p| p.is_file())
        .unwrap_or_else(|| panic!("{MOTO_MISSING}"))
}

/// A free TCP port on 127.0.0.1.
pub fn free_port() -> u16 {
    StdListener::bind((Ipv4Addr::LOCALHOST, 0))
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A running moto server.
pub struct Moto {
    pub port: u16,
    wrapper: Child,
    stdin: Option<ChildStdin>,
    moto_pid: u32,
    log: PathBuf,
    _dir: tempfile::TempDir,
}

impl Moto {
    /// Starts moto with extra environment variables and waits until it answers.
    pub fn start(env: &[(&str, &str)]) -> Self {
        let binary = moto_binary();
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("moto.log");
        let port = free_port();
        let mut cmd = Command::new("sh");
        cmd.arg("-c")
            .arg(r#""$1" -H 127.0.0.1 -p "$2" >"$3" 2>&1 & echo $!; read _; kill $! 2>/dev/null; wait"#)
            .arg("sh")
            .arg(&binary)
            .arg(port.to_string())
            .arg(&log)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null());
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut wrapper = cmd.spawn().unwrap();
        let stdin = wrapper.stdin.take();
        let mut line = String::new();
        BufReader::new(wrapper.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let moto_pid: u32 = line.trim().parse().unwrap();
        let moto = Self {
            port,
            wrapper,
            stdin,
            moto_pid,
            log,
            _dir: dir,
        };
        moto.wait_ready();
        moto
    }

    fn wait_ready(&self) {
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            if let Ok(mut s) = StdStream::connect((Ipv4Addr::LOCALHOST, self.port)) {
                let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
                let _ = s.write_all(b"GET /moto-api/ HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n");
                let mut head = [0u8; 12];
                if s.read_exact(&mut head).is_ok() && head.ends_with(b"200") {
                    return;
                }
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        panic!(
            "moto_server did not answer on 127.0.0.1:{} within 30 s; its log:\n{}",
            self.port,
            std::fs::read_to_string(&self.log).unwrap_or_default()
        );
    }

    /// `http://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }
}

impl Drop for Moto {
    fn drop(&mut self) {
        // Closing the wrapper's stdin makes it kill moto (by PID) and exit.
        drop(self.stdin.take());
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.wrapper.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        // The wrapper is stuck: kill moto, then the wrapper, each by its PID.
        let _ = Command::new("kill").arg(self.moto_pid.to_string()).status();
        let _ = self.wrapper.kill();
        let _ = self.wrapper.wait();
    }
}

/// A TCP forwarder to an upstream port that records each HTTP request's AWS operation
/// (`X-Amz-Target`, or the `Action=` of a query-protocol body such as STS).
pub struct CountingProxy {
    pub port: u16,
    calls: Arc<Mutex<Vec<String>>>,
}

impl CountingProxy {
    /// Starts the forwarder on the current tokio runtime.
    pub async fn start(upstream: u16) -> Self {
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let calls = Arc::new(Mutex::new(Vec::new()));
        let log = calls.clone();
        tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                tokio::spawn(forward(client, upstream, log.clone()));
            }
        });
        Self { port, calls }
    }

    /// `http://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Every operation seen so far, in order.
    pub fn calls(&self) -> Vec<String> {
        self.calls.lock().unwrap().clone()
    }

    /// How many times `op` (e.g. `secretsmanager.BatchGetSecretValue`) was called.
    pub fn count(&self, op: &str) -> usize {
        self.calls().iter().filter(|c| c.as_str() == op).count()
    }

    /// Forgets what was recorded.
    pub fn reset(&self) {
        self.calls.lock().unwrap().clear();
    }
}

async fn forward(client: TcpStream, upstream: u16, log: Arc<Mutex<Vec<String>>>) {
    let Ok(server) = TcpStream::connect((Ipv4Addr::LOCALHOST, upstream)).await else {
        return;
    };
    let (client_r, mut client_w) = client.into_split();
    let (mut server_r, mut server_w) = server.into_split();
    tokio::spawn(async move {
        let _ = tokio::io::copy(&mut server_r, &mut client_w).await;
        let _ = client_w.shutdown().await;
    });
    let mut reader = TokioBufReader::new(client_r);
    loop {
        // One request head, line by line.
        let mut head = Vec::new();
        loop {
            let mut line = Vec::new();
            match reader.read_until(b'\n', &mut line).await {
                Ok(0) | Err(_) => {
                    let _ = server_w.shutdown().await;
                    return;
                }
                Ok(_) => {}
            }
            head.extend_from_slice(&line);
            if line == b"\r\n" {
                break;
            }
        }
        let text = String::from_utf8_lossy(&head).to_string();
        let header = |name: &str| {
            text.lines().find_map(|l| {
                let (k, v) = l.split_once(':')?;
                k.trim()
                    .eq_ignore_ascii_case(name)
                    .then(|| v.trim().to_string())
            })
        };
        let length: usize = header("content-length")
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        let mut body = vec![0u8; length];
        if reader.read_exact(&mut body).await.is_err() {
            return;
        }
        let op = header("x-amz-target").unwrap_or_else(|| {
            String::from_utf8_lossy(&body)
                .split('&')
                .find_map(|kv| kv.strip_prefix("Action="))
                .map_or_else(|| "unknown".to_string(), |a| format!("query.{a}"))
        });
        log.lock().unwrap().push(op);
        if server_w.write_all(&head).await.is_err() || server_w.write_all(&body).await.is_err() {
            return;
        }
    }
}
