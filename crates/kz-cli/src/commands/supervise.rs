//! `kz run --mask` / `--watch`: kz stays as the child's parent instead of `exec`ing it.
//!
//! - **Signals.** `SIGINT SIGTERM SIGHUP SIGQUIT SIGUSR1 SIGUSR2 SIGWINCH` are forwarded to the
//!   child only when another process sent them (`kill`); a Ctrl-C or a resize from the terminal
//!   already reaches the child's process group, so it is not sent twice. With `--watch`, `SIGHUP`
//!   is consumed: it triggers a re-resolve.
//! - **`--watch [INTERVAL]`.** Every interval (and on `SIGHUP`) the secrets are resolved again;
//!   when a value changed, the child gets `SIGTERM`, then `SIGKILL` after `--grace`, and is
//!   started again with the new values. A failed re-resolve keeps the running child (warned).
//! - **`--mask`.** Every secret value of 8 bytes or more that appears in the child's stdout or
//!   stderr is replaced by `****`, also when split across writes ([`kz_redact::Redactor`]). When
//!   kz's stdout is a terminal, the child runs on a pseudo-terminal (so colours, line editing
//!   and full-screen programs keep working), kz's terminal is put in raw mode and restored at
//!   exit, keystrokes go to the child, and window-size changes follow; otherwise pipes are used.
//! - kz exits with the child's code, or 128+N when the child died of signal N.

use std::ffi::{OsStr, OsString};
use std::io::{Read, Write};
use std::os::fd::OwnedFd;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::process::ExitStatusExt;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc::{self, RecvTimeoutError};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use kz_config::{Config, Diagnostic, SecretEntry};
use kz_redact::Redactor;
use rustix::process::{Pid, Signal};
use signal_hook::consts::signal::{SIGHUP, SIGINT, SIGQUIT, SIGTERM, SIGUSR1, SIGUSR2, SIGWINCH};
use signal_hook::iterator::SignalsInfo;
use signal_hook::iterator::exfiltrator::WithOrigin;
use signal_hook::low_level::siginfo::{Cause, Origin};

use crate::commands::{Vars, collect};
use crate::context::Ctx;
use crate::report::{CmdResult, Failure, exit};

/// Values shorter than this are not masked (they would mangle unrelated text).
pub const MIN_MASK_LEN: usize = 8;

/// What the supervised child runs with.
#[derive(Debug)]
pub struct Plan<'a> {
    /// The program and its arguments.
    pub command: Vec<OsString>,
    /// The environment besides the secrets (`None`: inherit kz's).
    pub base_env: Option<Vec<(OsString, OsString)>>,
    /// `--mask`.
    pub mask: bool,
    /// `--watch` interval.
    pub watch: Option<Duration>,
    /// `--grace`.
    pub grace: Duration,
    /// The secrets to (re-)resolve.
    pub secrets: Vec<&'a SecretEntry>,
}

enum Event {
    Signal(Origin),
    Exited(std::process::ExitStatus),
}

struct Running {
    pid: Pid,
    copiers: Vec<JoinHandle<()>>,
}

/// The terminal side of `--mask` on a terminal: the child runs on a PTY whose output kz masks,
/// while kz's own terminal is in raw mode and its input goes to the PTY.
struct Terminal {
    /// The master of the current child's PTY (replaced on restart).
    master: Arc<Mutex<Option<Arc<OwnedFd>>>>,
    /// kz's terminal settings, restored on drop.
    saved: Option<rustix::termios::Termios>,
}

impl Terminal {
    fn new() -> Self {
        let saved = rustix::termios::tcgetattr(rustix::stdio::stdin()).ok();
        if let Some(t) = &saved {
            let mut raw = t.clone();
            raw.make_raw();
            let _ = rustix::termios::tcsetattr(
                rustix::stdio::stdin(),
                rustix::termios::OptionalActions::Now,
                &raw,
            );
        }
        let master: Arc<Mutex<Option<Arc<OwnedFd>>>> = Arc::new(Mutex::new(None));
        if saved.is_some() {
            // Keyboard → the current child's PTY. The thread ends with the process.
            let m = Arc::clone(&master);
            std::thread::spawn(move || {
                let mut buf = [0u8; 4096];
                let mut stdin = std::io::stdin();
                while let Ok(n) = stdin.read(&mut buf) {
                    if n == 0 {
                        break;
                    }
                    let target = m.lock().ok().and_then(|g| g.clone());
                    if let Some(fd) = target {
                        let _ = rustix::io::write(&*fd, buf.get(..n).unwrap_or_default());
                    }
                }
            });
        }
        Self { master, saved }
    }

    /// Copies kz's window size to the child's PTY (on start and on SIGWINCH).
    fn resize(&self) {
        let current = self.master.lock().ok().and_then(|g| g.clone());
        if let (Some(m), Ok(ws)) = (
            current,
            rustix::termios::tcgetwinsize(rustix::stdio::stdout()),
        ) {
            let _ = rustix::termios::tcsetwinsize(&*m, ws);
        }
    }
}

impl Drop for Terminal {
    fn drop(&mut self) {
        if let Some(t) = &self.saved {
            let _ = rustix::termios::tcsetattr(
                rustix::stdio::stdin(),
                rustix::termios::OptionalActions::Now,
                t,
            );
        }
    }
}

/// A new PTY pair: (master, slave).
fn open_pty() -> std::io::Result<(OwnedFd, OwnedFd)> {
    use rustix::pty::OpenptFlags;
    let master =
        rustix::pty::openpt(OpenptFlags::RDWR | OpenptFlags::NOCTTY | OpenptFlags::CLOEXEC)?;
    rustix::pty::grantpt(&master)?;
    rustix::pty::unlockpt(&master)?;
    let name = rustix::pty::ptsname(&master, Vec::new())?;
    let slave = rustix::fs::open(
        name.as_c_str(),
        rustix::fs::OFlags::RDWR | rustix::fs::OFlags::NOCTTY | rustix::fs::OFlags::CLOEXEC,
        rustix::fs::Mode::empty(),
    )?;
    Ok((master, slave))
}

/// Catches `signals` (with each one's origin) for forwarding to a child.
pub fn install_signals(signals: &[i32]) -> Result<SignalsInfo<WithOrigin>, Failure> {
    SignalsInfo::<WithOrigin>::new(signals).map_err(|e| {
        Failure::msg(
            "run::signals",
            format!("cannot install signal handlers: {e}"),
            "this is a bug; please report it",
        )
    })
}

/// Runs the child under kz's supervision until it exits; returns its exit code.
pub fn run(ctx: &Ctx, config: &Config, plan: &Plan<'_>, first: Vars) -> CmdResult {
    let mut signals =
        install_signals(&[SIGINT, SIGTERM, SIGHUP, SIGQUIT, SIGUSR1, SIGUSR2, SIGWINCH])?;
    let (tx, rx) = mpsc::channel::<Event>();
    let handle = signals.handle();
    let sig_tx = tx.clone();
    let sig_thread = std::thread::spawn(move || {
        for origin in signals.forever() {
            if sig_tx.send(Event::Signal(origin)).is_err() {
                break;
            }
        }
    });
    // On a terminal, --mask runs the command on a PTY so colours and interaction survive.
    let terminal =
        (plan.mask && rustix::termios::isatty(rustix::stdio::stdout())).then(Terminal::new);
    let result = supervise(ctx, config, plan, first, &tx, &rx, terminal.as_ref());
    drop(terminal);
    handle.close();
    let _ = sig_thread.join();
    result
}

fn supervise(
    ctx: &Ctx,
    config: &Config,
    plan: &Plan<'_>,
    first: Vars,
    tx: &mpsc::Sender<Event>,
    rx: &mpsc::Receiver<Event>,
    terminal: Option<&Terminal>,
) -> CmdResult {
    let mut vars = first;
    let mut child = start(ctx, plan, &vars, tx, terminal)?;
    let mut next_check = plan.watch.map(|w| Instant::now() + w);
    loop {
        let timeout = next_check.map_or(Duration::from_secs(3600), |t| {
            t.saturating_duration_since(Instant::now())
        });
        let event = match rx.recv_timeout(timeout) {
            Ok(e) => Some(e),
            Err(RecvTimeoutError::Timeout) => None,
            Err(RecvTimeoutError::Disconnected) => return Ok(exit::ERROR),
        };
        let recheck = match event {
            Some(Event::Exited(status)) => {
                for c in child.copiers.drain(..) {
                    let _ = c.join();
                }
                return Ok(code_of(status));
            }
            Some(Event::Signal(o)) if o.signal == SIGHUP && plan.watch.is_some() => true,
            Some(Event::Signal(o)) => {
                if matches!(o.cause, Cause::Sent(_)) {
                    forward(child.pid, o.signal);
                } else if o.signal == SIGWINCH
                    && let Some(t) = terminal
                {
                    t.resize();
                }
                false
            }
            None => next_check.is_some(),
        };
        if !recheck {
            continue;
        }
        next_check = plan.watch.map(|w| Instant::now() + w);
        let fresh = match ctx
            .resolve(config, &plan.secrets)
            .and_then(|o| collect(ctx, config, o))
        {
            Ok(v) => v,
            Err(f) => {
                ctx.out.all(&f.diagnostics);
                ctx.out
                    .note("re-resolving failed; the command keeps running with the values it has");
                continue;
            }
        };
        if same(&vars, &fresh) {
            ctx.out.verbose("re-resolved: no value changed");
            continue;
        }
        ctx.out.note("a secret changed: restarting the command");
        if let Some(code) = stop(&mut child, plan.grace, rx) {
            // The child ended on its own first; still restart, since values changed.
            ctx.out
                .verbose(&format!("the command had exited with {code}"));
        }
        vars = fresh;
        child = start(ctx, plan, &vars, tx, terminal)?;
    }
}

/// Whether two resolutions hold the same variables and values.
fn same(a: &Vars, b: &Vars) -> bool {
    a.len() == b.len()
        && a.iter()
            .zip(b)
            .all(|((n1, v1), (n2, v2))| n1 == n2 && v1 == v2)
}

/// The exit code kz returns for a child that ended with `status` (128+N for signal N).
pub fn code_of(status: std::process::ExitStatus) -> u8 {
    match (status.code(), status.signal()) {
        (Some(c), _) => u8::try_from(c).unwrap_or(exit::ERROR),
        (None, Some(s)) => u8::try_from(128 + s).unwrap_or(exit::ERROR),
        _ => exit::ERROR,
    }
}

/// Sends signal `sig` to `pid`.
pub fn forward(pid: Pid, sig: i32) {
    if let Some(s) = Signal::from_named_raw(sig) {
        let _ = rustix::process::kill_process(pid, s);
    }
}

/// `SIGTERM`, wait up to `grace` for the exit, then `SIGKILL`. Returns the exit code when the
/// child had already exited.
fn stop(child: &mut Running, grace: Duration, rx: &mpsc::Receiver<Event>) -> Option<u8> {
    let _ = rustix::process::kill_process(child.pid, Signal::TERM);
    let deadline = Instant::now() + grace;
    let mut killed = false;
    loop {
        let wait = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(if killed {
            Duration::from_secs(30)
        } else {
            wait
        }) {
            Ok(Event::Exited(status)) => {
                for c in child.copiers.drain(..) {
                    let _ = c.join();
                }
                return Some(code_of(status));
            }
            Ok(Event::Signal(o)) => {
                if matches!(o.cause, Cause::Sent(_)) && o.signal != SIGHUP {
                    forward(child.pid, o.signal);
                }
            }
            Err(RecvTimeoutError::Timeout) if !killed => {
                let _ = rustix::process::kill_process(child.pid, Signal::KILL);
                killed = true;
            }
            Err(_) => return None,
        }
    }
}

fn start(
    ctx: &Ctx,
    plan: &Plan<'_>,
    vars: &Vars,
    tx: &mpsc::Sender<Event>,
    terminal: Option<&Terminal>,
) -> Result<Running, Failure> {
    let mut parts = plan.command.iter();
    let Some(program) = parts.next() else {
        return Err(Failure::usage(
            "no command given",
            "write the command after `--`: kz run -- npm start",
        ));
    };
    let mut cmd = Command::new(program);
    cmd.args(parts);
    if let Some(env) = &plan.base_env {
        cmd.env_clear();
        cmd.envs(env.iter().map(|(k, v)| (k, v)));
    }
    for (name, value) in vars {
        cmd.env(name, OsStr::from_bytes(value.expose_bytes()));
    }
    let pty_failure = |e: std::io::Error| {
        Failure::msg(
            "run::pty",
            format!("cannot set up a terminal for the command: {e}"),
            "run without a terminal (pipe kz's output), or without --mask",
        )
    };
    let mut pty_master = None;
    if let Some(t) = terminal {
        let (master, slave) = open_pty().map_err(pty_failure)?;
        if let Ok(ws) = rustix::termios::tcgetwinsize(rustix::stdio::stdout()) {
            let _ = rustix::termios::tcsetwinsize(&master, ws);
        }
        crate::sys::attach_pty(&mut cmd, &slave).map_err(pty_failure)?;
        let master = Arc::new(master);
        if let Ok(mut g) = t.master.lock() {
            *g = Some(Arc::clone(&master));
        }
        pty_master = Some(master);
    } else if plan.mask {
        cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
    }
    let mut child: Child = cmd.spawn().map_err(|e| {
        let name = program.to_string_lossy();
        let (code, what) = match e.kind() {
            std::io::ErrorKind::NotFound => (exit::NOT_FOUND, "command not found"),
            std::io::ErrorKind::PermissionDenied => (exit::NOT_EXECUTABLE, "permission denied"),
            _ => (exit::NOT_EXECUTABLE, "cannot execute"),
        };
        Failure {
            diagnostics: vec![
                Diagnostic::error("run::exec", format!("{name}: {what}"))
                    .help("check the command's name and PATH"),
            ],
            code,
        }
    })?;
    let mut copiers = Vec::new();
    if plan.mask {
        let values: Vec<Vec<u8>> = vars
            .iter()
            .map(|(_, v)| v.expose_bytes())
            .filter(|v| v.len() >= MIN_MASK_LEN)
            .map(<[u8]>::to_vec)
            .collect();
        let short: Vec<&str> = vars
            .iter()
            .filter(|(_, v)| v.len() < MIN_MASK_LEN)
            .map(|(n, _)| n.as_str())
            .collect();
        if !short.is_empty() {
            ctx.out.verbose(&format!(
                "not masked (shorter than {MIN_MASK_LEN} bytes): {}",
                short.join(", ")
            ));
        }
        if let Some(master) = pty_master {
            // The PTY merges stdout and stderr, as a terminal does.
            let r = Redactor::uniform(values.clone(), b"****");
            let reader = std::fs::File::from(master.try_clone().map_err(pty_failure)?);
            copiers.push(std::thread::spawn(move || {
                copy_masked(reader, std::io::stdout(), r)
            }));
        }
        if let Some(out) = child.stdout.take() {
            let r = Redactor::uniform(values.clone(), b"****");
            copiers.push(std::thread::spawn(move || {
                copy_masked(out, std::io::stdout(), r)
            }));
        }
        if let Some(err) = child.stderr.take() {
            let r = Redactor::uniform(values, b"****");
            copiers.push(std::thread::spawn(move || {
                copy_masked(err, std::io::stderr(), r)
            }));
        }
    }
    let pid = Pid::from_raw(i32::try_from(child.id()).unwrap_or(0)).ok_or_else(|| {
        Failure::msg(
            "run::exec",
            "the command started without a process id",
            "this is a bug; please report it",
        )
    })?;
    let tx = tx.clone();
    std::thread::spawn(move || {
        if let Ok(status) = child.wait() {
            let _ = tx.send(Event::Exited(status));
        }
    });
    Ok(Running { pid, copiers })
}

/// Copies `from` to `to`, masking values; flushes after every read so interactive output is not
/// delayed beyond a possible partial value.
fn copy_masked(mut from: impl Read, mut to: impl Write, mut r: Redactor) {
    let mut buf = vec![0u8; 64 * 1024];
    let mut out = Vec::with_capacity(buf.len());
    loop {
        let n = match from.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        out.clear();
        r.feed(buf.get(..n).unwrap_or_default(), &mut out);
        if to.write_all(&out).and_then(|()| to.flush()).is_err() {
            break;
        }
    }
    out.clear();
    r.finish(&mut out);
    let _ = to.write_all(&out).and_then(|()| to.flush());
}
