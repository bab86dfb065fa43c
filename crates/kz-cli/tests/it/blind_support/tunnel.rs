//! A plain `CONNECT` proxy for the harness's own tests: it records each `CONNECT` target and
//! either tunnels the bytes (no TLS termination, no rewriting) or refuses every tunnel with
//! `403`. It proves each client runner really goes through `HTTPS_PROXY` and shows a refused
//! tunnel as a 403, independently of kz's own proxy. It only ever connects to loopback
//! addresses; anything else is refused. Stops when dropped.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// A `CONNECT` proxy on a free `127.0.0.1` port.
pub struct TunnelProxy {
    /// The port.
    pub port: u16,
    targets: Arc<Mutex<Vec<String>>>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl TunnelProxy {
    /// A proxy that tunnels to loopback targets (`refuse = false`) or answers every `CONNECT`
    /// with `403` (`refuse = true`).
    pub fn start(refuse: bool) -> Self {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.set_nonblocking(true).unwrap();
        let port = l.local_addr().unwrap().port();
        let targets: Arc<Mutex<Vec<String>>> = Arc::default();
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let t = targets.clone();
        let thread = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async move {
                let l = tokio::net::TcpListener::from_std(l).unwrap();
                let accept = async {
                    loop {
                        let Ok((s, _)) = l.accept().await else {
                            continue;
                        };
                        tokio::spawn(serve(s, refuse, t.clone()));
                    }
                };
                tokio::select! {
                    () = accept => {}
                    _ = stop_rx => {}
                }
            });
            rt.shutdown_timeout(Duration::from_secs(1));
        });
        Self {
            port,
            targets,
            stop: Some(stop_tx),
            thread: Some(thread),
        }
    }

    /// `http://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// The `CONNECT` targets seen so far (`host:port`).
    pub fn targets(&self) -> Vec<String> {
        self.targets.lock().unwrap().clone()
    }
}

impl Drop for TunnelProxy {
    fn drop(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

async fn serve(mut s: tokio::net::TcpStream, refuse: bool, targets: Arc<Mutex<Vec<String>>>) {
    let mut head = Vec::new();
    let mut b = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        if head.len() > 16 * 1024 || s.read_exact(&mut b).await.is_err() {
            return;
        }
        head.extend_from_slice(&b);
    }
    let head = String::from_utf8_lossy(&head).into_owned();
    let mut words = head.split_whitespace();
    let (Some(method), Some(target)) = (words.next(), words.next()) else {
        return;
    };
    let target = target.to_string();
    targets.lock().unwrap().push(target.clone());
    if method != "CONNECT" {
        return refuse_with(&mut s, "only CONNECT").await;
    }
    if refuse {
        return refuse_with(&mut s, "refused by the test proxy").await;
    }
    let addrs: Vec<SocketAddr> = match tokio::net::lookup_host(&target).await {
        Ok(a) => a.filter(|a| a.ip().is_loopback()).collect(),
        Err(_) => Vec::new(),
    };
    let mut upstream = None;
    for a in addrs {
        if let Ok(u) = tokio::net::TcpStream::connect(a).await {
            upstream = Some(u);
            break;
        }
    }
    let Some(mut upstream) = upstream else {
        return refuse_with(&mut s, "not a reachable loopback target").await;
    };
    if s.write_all(b"HTTP/1.1 200 Connection established\r\n\r\n")
        .await
        .is_err()
    {
        return;
    }
    let _ = tokio::io::copy_bidirectional(&mut s, &mut upstream).await;
}

async fn refuse_with(s: &mut tokio::net::TcpStream, why: &str) {
    let _ = s
        .write_all(
            format!(
                "HTTP/1.1 403 Forbidden\r\nContent-Type: text/plain\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{why}",
                why.len()
            )
            .as_bytes(),
        )
        .await;
}
