//! Listening, reload, audit reopen and graceful shutdown.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use axum::Router;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use kz_config::Diagnostic;
use kz_identity::ReplayRecords;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Mutex, watch};
use tokio::task::JoinHandle;
use tower_service::Service as _;

use crate::api::{AppState, Peer, router};
use crate::metrics::Metrics;
use crate::state::{self, Loaded};
use crate::{Options, StartError};

/// Time a client has to send a request head.
const HEADER_TIMEOUT: Duration = Duration::from_secs(10);
/// Time a client has to finish the TLS handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Audit records the queue holds (about a second of peak load here): a rotation or a slow disk
/// is absorbed before requests are answered 503.
pub const AUDIT_QUEUE: usize = 16_384;
/// Connections served at once; more wait in the kernel's backlog.
pub const MAX_CONNECTIONS: usize = 4096;
/// Connections from one address at once; more are closed at once (a load balancer in front
/// keeps a pool far smaller than this).
pub const MAX_CONNECTIONS_PER_IP: usize = 512;

/// Reloads, reopens and stops a running server (what the signals do, callable from code).
pub struct Control {
    state: Arc<AppState>,
    records: ReplayRecords,
    opts: Options,
    shutdown: watch::Sender<bool>,
    reloading: Mutex<()>,
}

impl std::fmt::Debug for Control {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Control")
            .field("bundle", &self.opts.bundle)
            .finish_non_exhaustive()
    }
}

impl Control {
    /// Loads the bundle (and TLS files) again. On success the new revision serves every request
    /// that starts from now on; on failure the old one keeps serving and the problems are
    /// returned (and logged).
    pub async fn reload(&self) -> Result<String, Vec<Diagnostic>> {
        let _one_at_a_time = self.reloading.lock().await;
        let opts = self.opts.clone();
        let records = self.records.clone();
        let loaded = tokio::task::spawn_blocking(move || state::load(&opts, &records))
            .await
            .unwrap_or_else(|_| {
                Err(vec![Diagnostic::error(
                    "server::reload",
                    "loading the bundle failed unexpectedly (a bug of kz)",
                )])
            });
        let m = &self.state.metrics;
        match loaded {
            Ok(new) => {
                let revision = new.revision.clone();
                let audit_path = new.bundle.audit.path.clone();
                let old = self.state.current.swap(Arc::new(new));
                if self.opts.audit.is_none() && old.bundle.audit.path != audit_path {
                    tracing::warn!(
                        "audit.path changed in the bundle; the audit log stays where it is until the server restarts"
                    );
                }
                m.reloads.with_label_values(&["ok"]).inc();
                m.bundle_loaded.set(unix_now());
                tracing::info!(revision = %revision, previous = %old.revision, "bundle reloaded");
                Ok(revision)
            }
            Err(diags) => {
                m.reloads.with_label_values(&["invalid"]).inc();
                for d in &diags {
                    tracing::error!(diagnostic = %d, "the new bundle is invalid; the previous one keeps serving");
                }
                Err(diags)
            }
        }
    }

    /// Reopens the audit log file (after it was moved away by log rotation); the chain
    /// continues in the new file.
    pub fn reopen_audit(&self) -> Result<(), kz_audit::AuditError> {
        let r = self.state.audit.reopen();
        match &r {
            Ok(()) => tracing::info!("audit log reopened"),
            Err(e) => tracing::error!(error = %e, "audit log could not be reopened"),
        }
        r
    }

    /// Stops accepting connections and lets in-flight requests finish (within the drain time).
    pub fn shutdown(&self) {
        let _ = self.shutdown.send(true);
    }
}

/// A started server.
#[derive(Debug)]
pub struct Running {
    /// The address it listens on (the bound port when `:0` was asked).
    pub addr: SocketAddr,
    /// Reload, reopen, shutdown.
    pub control: Arc<Control>,
    task: JoinHandle<()>,
}

impl Running {
    /// Waits until the server has shut down and drained, and the audit log is flushed.
    pub async fn wait(self) {
        let _ = self.task.await;
    }
}

fn unix_now() -> i64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
}

/// What serving needs before it listens: the state, its control, and the stop signal.
struct Opened {
    state: Arc<AppState>,
    control: Arc<Control>,
    stop: watch::Receiver<bool>,
}

/// Loads the bundle, opens the audit log and starts the background tasks (file watch,
/// forgetting idle identities). The bundle's problems are all returned at once.
async fn open(opts: &Options) -> Result<Opened, StartError> {
    let load_opts = opts.clone();
    let records = ReplayRecords::default();
    let load_records = records.clone();
    let loaded: Loaded =
        tokio::task::spawn_blocking(move || state::load(&load_opts, &load_records))
            .await
            .map_err(|e| StartError::Runtime(std::io::Error::other(e.to_string())))?
            .map_err(StartError::Bundle)?;
    // --audit is relative to the working directory; the bundle's audit.path to the bundle.
    let audit_path = match (&opts.audit, &loaded.bundle.audit.path) {
        (Some(p), _) => p.clone(),
        (None, Some(p)) if p != "-" && Path::new(p).is_relative() => opts
            .bundle
            .parent()
            .map_or_else(|| p.clone(), |d| d.join(p).display().to_string()),
        (None, Some(p)) => p.clone(),
        (None, None) => "-".to_owned(),
    };
    if opts.mcp.as_ref().is_some_and(|m| m.listen.is_none()) && audit_path == "-" {
        // Standard output carries MCP's JSON-RPC: a record there would break the session.
        return Err(StartError::Bundle(vec![
            Diagnostic::error(
                "server::audit",
                "with --mcp, standard output carries the MCP protocol, so the audit log cannot go there",
            )
            .in_file(&opts.bundle)
            .help("set `audit: { path: FILE }` in the bundle, or pass --audit FILE"),
        ]));
    }
    // Guesses are kept next to the audit log, so a restart does not forget them.
    let lockout = if audit_path == "-" {
        crate::lockout::Lockout::in_memory()
    } else {
        let file = format!("{audit_path}.lockout");
        crate::lockout::Lockout::open(Path::new(&file)).map_err(|why| {
            StartError::Bundle(vec![
                Diagnostic::error("server::lockout", why)
                    .in_file(Path::new(&file))
                    .help("the lockout file records callers and credentials refused after a guess"),
            ])
        })?
    };
    let audit = kz_audit::Writer::open_with_capacity(&audit_path, AUDIT_QUEUE)
        .map_err(StartError::Audit)?;
    tracing::info!(audit = %audit_path, "audit log open");
    let metrics = Metrics::new().map_err(|e| StartError::Runtime(std::io::Error::other(e)))?;
    metrics.bundle_loaded.set(unix_now());
    let state = Arc::new(AppState::new(
        loaded,
        audit,
        metrics,
        opts.rate_limit,
        opts.timeouts.body,
        records.clone(),
        lockout,
    ));
    let (tx, rx) = watch::channel(false);
    let control = Arc::new(Control {
        state: Arc::clone(&state),
        records,
        opts: opts.clone(),
        shutdown: tx,
        reloading: Mutex::new(()),
    });
    if let Some(every) = opts.watch {
        tokio::spawn(watch_files(Arc::clone(&control), every, rx.clone()));
    }
    if state.limiter.is_some() {
        tokio::spawn(forget_idle_identities(Arc::clone(&state), rx.clone()));
    }
    Ok(Opened {
        state,
        control,
        stop: rx,
    })
}

/// Loads the bundle, opens the audit log, binds and starts serving (on the current tokio
/// runtime). The bundle's problems are all returned at once.
pub async fn start(opts: Options) -> Result<Running, StartError> {
    let Opened {
        state,
        control,
        stop,
    } = open(&opts).await?;
    let mcp_http = opts.mcp.as_ref().and_then(|m| m.listen.map(|l| (l, m)));
    let bind = mcp_http.map_or(opts.listen, |(l, _)| l);
    let listener = match TcpListener::bind(bind).await {
        Ok(l) => l,
        Err(e) => {
            control.shutdown();
            return Err(StartError::Bind(bind, e));
        }
    };
    let addr = listener
        .local_addr()
        .map_err(|e| StartError::Bind(bind, e))?;
    let app = match mcp_http {
        Some((_, m)) => {
            let tls = state.current.load().tls.is_some();
            let settings = crate::mcp::HttpSettings::new(addr, tls, m.resource.as_deref())
                .map_err(|why| {
                    control.shutdown();
                    StartError::Bundle(vec![
                        Diagnostic::error("server::mcp_resource", why)
                            .help("pass --mcp-resource https://HOST/PATH, the URL agents use"),
                    ])
                })?;
            tracing::info!(resource = %settings.resource, "serving MCP over Streamable HTTP");
            crate::mcp::http_router(Arc::clone(&state), settings)
        }
        None if state.current.load().verify_key.is_some() => {
            crate::proxy::router(Arc::clone(&state))
        }
        None => router(Arc::clone(&state)),
    };
    tracing::info!(
        addr = %addr,
        tls = state.current.load().tls.is_some(),
        revision = %state.current.load().revision,
        "serving"
    );
    let task = tokio::spawn(accept_loop(
        listener,
        state,
        app,
        opts.drain,
        opts.timeouts.idle,
        stop,
    ));
    Ok(Running {
        addr,
        control,
        task,
    })
}

/// Serves MCP over stdin/stdout (`--mcp`) until the client closes stdin or `SIGTERM`/`SIGINT`,
/// reloading on `SIGHUP` and on file change, reopening the audit log on `SIGUSR1`. The audit
/// log is flushed before it returns.
pub async fn run_mcp_until_signalled(opts: Options) -> Result<(), StartError> {
    use tokio::signal::unix::{SignalKind, signal};
    let sig = |k| signal(k).map_err(StartError::Runtime);
    let mut hup = sig(SignalKind::hangup())?;
    let mut usr1 = sig(SignalKind::user_defined1())?;
    let mut term = sig(SignalKind::terminate())?;
    let mut int = sig(SignalKind::interrupt())?;
    let identity_file = opts
        .mcp
        .as_ref()
        .and_then(|m| m.identity_token_file.clone());
    let Opened {
        state,
        control,
        stop,
    } = open(&opts).await?;
    tracing::info!(revision = %state.current.load().revision, "serving MCP on stdio");
    let server = crate::mcp::Server::new(Arc::clone(&state), identity_file);
    let signals = {
        let control = Arc::clone(&control);
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    _ = hup.recv() => { let _ = control.reload().await; }
                    _ = usr1.recv() => { let _ = control.reopen_audit(); }
                    _ = term.recv() => { control.shutdown(); break; }
                    _ = int.recv() => { control.shutdown(); break; }
                }
            }
        })
    };
    let served = crate::mcp::serve_stdio(server, stop).await;
    signals.abort();
    control.shutdown();
    if let Err(e) = state.audit.flush() {
        tracing::error!(error = %e, "the audit log could not be flushed on shutdown");
    }
    served.map_err(|e| StartError::Runtime(std::io::Error::other(e)))
}

/// Runs the server until `SIGTERM`/`SIGINT`, reloading on `SIGHUP` and reopening the audit log
/// on `SIGUSR1`. `ready` is called with the bound address once it serves.
pub async fn run_until_signalled(
    opts: Options,
    ready: impl FnOnce(SocketAddr),
) -> Result<(), StartError> {
    use tokio::signal::unix::{SignalKind, signal};
    let sig = |k| signal(k).map_err(StartError::Runtime);
    let mut hup = sig(SignalKind::hangup())?;
    let mut usr1 = sig(SignalKind::user_defined1())?;
    let mut term = sig(SignalKind::terminate())?;
    let mut int = sig(SignalKind::interrupt())?;
    let running = start(opts).await?;
    ready(running.addr);
    let control = Arc::clone(&running.control);
    let signals = tokio::spawn(async move {
        loop {
            tokio::select! {
                _ = hup.recv() => { let _ = control.reload().await; }
                _ = usr1.recv() => { let _ = control.reopen_audit(); }
                _ = term.recv() => { tracing::info!("SIGTERM: draining"); control.shutdown(); break; }
                _ = int.recv() => { tracing::info!("SIGINT: draining"); control.shutdown(); break; }
            }
        }
    });
    running.wait().await;
    signals.abort();
    Ok(())
}

/// The identity of a file's content as far as the metadata tells (size, change time, inode):
/// checked every interval, and a change triggers a reload.
fn stamp(path: &Path) -> Option<(u64, i64, i64, u64)> {
    use std::os::unix::fs::MetadataExt as _;
    let m = std::fs::metadata(path).ok()?;
    Some((m.len(), m.mtime(), m.mtime_nsec(), m.ino()))
}

async fn watch_files(control: Arc<Control>, every: Duration, mut stop: watch::Receiver<bool>) {
    let files = |o: &Options| {
        let mut v = vec![o.bundle.clone()];
        if let Some(t) = &o.tls {
            v.push(t.cert.clone());
            v.push(t.key.clone());
        }
        v
    };
    let paths = files(&control.opts);
    let mut seen: Vec<_> = paths.iter().map(|p| stamp(p)).collect();
    loop {
        tokio::select! {
            _ = tokio::time::sleep(every) => {}
            _ = stop.changed() => return,
        }
        let now: Vec<_> = paths.iter().map(|p| stamp(p)).collect();
        if now != seen {
            seen = now;
            tracing::info!("a bundle or TLS file changed; reloading");
            let _ = control.reload().await;
        }
    }
}

async fn forget_idle_identities(state: Arc<AppState>, mut stop: watch::Receiver<bool>) {
    loop {
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_secs(60)) => {}
            _ = stop.changed() => return,
        }
        if let Some(l) = &state.limiter {
            l.retain_recent();
            l.shrink_to_fit();
        }
    }
}

/// Counts of open connections per peer address.
#[derive(Default)]
struct PerIp(std::sync::Mutex<std::collections::HashMap<std::net::IpAddr, usize>>);

impl PerIp {
    fn enter(self: &Arc<Self>, ip: std::net::IpAddr) -> Option<PerIpGuard> {
        let mut m = self
            .0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let n = m.entry(ip).or_insert(0);
        if *n >= MAX_CONNECTIONS_PER_IP {
            return None;
        }
        *n += 1;
        Some(PerIpGuard(Arc::clone(self), ip))
    }
}

struct PerIpGuard(Arc<PerIp>, std::net::IpAddr);

impl Drop for PerIpGuard {
    fn drop(&mut self) {
        let mut m = (self.0)
            .0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(n) = m.get_mut(&self.1) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                m.remove(&self.1);
            }
        }
    }
}

async fn accept_loop(
    listener: TcpListener,
    state: Arc<AppState>,
    app: Router,
    drain: Duration,
    idle_after: Duration,
    mut stop: watch::Receiver<bool>,
) {
    let graceful = GracefulShutdown::new();
    let slots = Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
    let per_ip = Arc::new(PerIp::default());
    let mut last_warning: Option<std::time::Instant> = None;
    loop {
        let permit = tokio::select! {
            p = Arc::clone(&slots).acquire_owned() => match p {
                Ok(p) => p,
                Err(_) => break,
            },
            _ = stop.changed() => break,
        };
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, peer)) => {
                    let Some(ip_guard) = per_ip.enter(peer.ip()) else {
                        drop(stream);
                        continue;
                    };
                    let tls = state.current.load().tls.clone();
                    let watcher = graceful.watcher();
                    let app = app.clone();
                    tokio::spawn(async move {
                        serve_connection(stream, peer, tls, app, watcher, idle_after).await;
                        drop(ip_guard);
                        drop(permit);
                    });
                }
                Err(e) => {
                    // Out of file descriptors and the like: wait a little, keep serving, and
                    // say so at most once a second.
                    if last_warning.is_none_or(|t| t.elapsed() >= Duration::from_secs(1)) {
                        tracing::warn!(error = %e, "accept failed");
                        last_warning = Some(std::time::Instant::now());
                    }
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            },
            _ = stop.changed() => break,
        }
    }
    drop(listener);
    tokio::select! {
        () = graceful.shutdown() => tracing::info!("drained"),
        () = tokio::time::sleep(drain) => tracing::warn!(drain_seconds = drain.as_secs(), "connections still open after the drain time; closing them"),
    }
    if let Err(e) = state.audit.flush() {
        tracing::error!(error = %e, "the audit log could not be flushed on shutdown");
    }
}

/// A connection's I/O, noting the time of its last byte in either direction.
struct Activity<T> {
    inner: T,
    epoch: std::time::Instant,
    last: Arc<std::sync::atomic::AtomicU64>,
}

impl<T> Activity<T> {
    fn touch(&self) {
        let ms = u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.last.store(ms, std::sync::atomic::Ordering::Relaxed);
    }
}

impl<T: tokio::io::AsyncRead + Unpin> tokio::io::AsyncRead for Activity<T> {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let r = std::pin::Pin::new(&mut self.inner).poll_read(cx, buf);
        if buf.filled().len() > before {
            self.touch();
        }
        r
    }
}

impl<T: tokio::io::AsyncWrite + Unpin> tokio::io::AsyncWrite for Activity<T> {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        let r = std::pin::Pin::new(&mut self.inner).poll_write(cx, buf);
        if matches!(r, std::task::Poll::Ready(Ok(n)) if n > 0) {
            self.touch();
        }
        r
    }
    fn poll_flush(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.inner).poll_flush(cx)
    }
    fn poll_shutdown(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// Requests of a connection in progress (a request waiting on a slow backend is not idle).
struct InFlight(Arc<std::sync::atomic::AtomicUsize>);

impl InFlight {
    fn enter(n: &Arc<std::sync::atomic::AtomicUsize>) -> Self {
        n.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        Self(Arc::clone(n))
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
    }
}

/// Resolves once the connection has been idle for `after` with no request in progress.
async fn idle(
    after: Duration,
    epoch: std::time::Instant,
    last: Arc<std::sync::atomic::AtomicU64>,
    inflight: Arc<std::sync::atomic::AtomicUsize>,
) {
    let timeout = u64::try_from(after.as_millis()).unwrap_or(u64::MAX);
    loop {
        tokio::time::sleep(after / 6).await;
        let now = u64::try_from(epoch.elapsed().as_millis()).unwrap_or(u64::MAX);
        let quiet = now.saturating_sub(last.load(std::sync::atomic::Ordering::Relaxed));
        if quiet >= timeout && inflight.load(std::sync::atomic::Ordering::Relaxed) == 0 {
            return;
        }
    }
}

async fn serve_connection(
    stream: TcpStream,
    peer: SocketAddr,
    tls: Option<tokio_rustls::TlsAcceptor>,
    app: Router,
    watcher: hyper_util::server::graceful::Watcher,
    idle_after: Duration,
) {
    let _ = stream.set_nodelay(true);
    let epoch = std::time::Instant::now();
    let last = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let inflight = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counter = Arc::clone(&inflight);
    let svc = hyper::service::service_fn(move |mut req: hyper::Request<Incoming>| {
        req.extensions_mut().insert(Peer(peer));
        let guard = InFlight::enter(&counter);
        let fut = app.clone().call(req);
        async move {
            let r = fut.await;
            drop(guard);
            r
        }
    });
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_TIMEOUT)
        .max_buf_size(crate::MAX_HEAD_BYTES);
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_header_list_size(u32::try_from(crate::MAX_HEAD_BYTES).unwrap_or(u32::MAX));
    let quiet = idle(idle_after, epoch, Arc::clone(&last), inflight);
    match tls {
        None => {
            let io = Activity {
                inner: stream,
                epoch,
                last,
            };
            let conn = builder.serve_connection(TokioIo::new(io), svc);
            tokio::select! {
                _ = watcher.watch(conn.into_owned()) => {}
                () = quiet => {}
            }
        }
        Some(acceptor) => {
            let Ok(Ok(stream)) =
                tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await
            else {
                return;
            };
            let io = Activity {
                inner: stream,
                epoch,
                last,
            };
            let conn = builder.serve_connection(TokioIo::new(io), svc);
            tokio::select! {
                _ = watcher.watch(conn.into_owned()) => {}
                () = quiet => {}
            }
        }
    }
}
