//! `kz __isolate` (the namespace helper behind `kz run --blind --isolate`), run directly: the
//! child reaches the proxy's Unix socket through `127.0.0.1:PORT` and nothing else — not the
//! host's loopback, not DNS, no interface but `lo`, not the host's filesystem sockets (session
//! and system bus, systemd, docker) — keeps the user's ids, gets its exit code and signals
//! through, and nothing starts when the namespace cannot be set up.
#![cfg(target_os = "linux")]

use std::io::{BufRead, BufReader, ErrorKind, Read, Write};
use std::net::{TcpListener, UdpSocket};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use crate::util::kz_bin;

/// The port the helper listens on inside the namespace (any port is free there).
const PORT: u16 = 47_613;
/// Upper bound for one helper run.
const LIMIT: Duration = Duration::from_secs(30);

/// The stand-in for the proxy: a Unix socket outside the namespace.
struct Target {
    dir: tempfile::TempDir,
    socket: PathBuf,
    connections: Arc<AtomicUsize>,
}

impl Target {
    /// Answers `pong\n` to each connection after reading one line.
    fn pong() -> Self {
        Self::serve(|mut s| {
            let mut line = String::new();
            let _ = BufReader::new(s.try_clone().unwrap()).read_line(&mut line);
            let _ = s.write_all(format!("pong {}\n", line.trim()).as_bytes());
        })
    }

    /// Echoes everything until the client half-closes, then closes.
    fn echo() -> Self {
        Self::serve(|mut s| {
            let mut data = Vec::new();
            let _ = s.read_to_end(&mut data);
            let _ = s.write_all(&data);
        })
    }

    fn serve(handler: fn(UnixStream)) -> Self {
        Self::serve_in(&std::env::temp_dir(), handler)
    }

    /// [`Target::pong`] with its directory in `parent`.
    fn pong_in(parent: &Path) -> Self {
        Self::serve_in(parent, |mut s| {
            let mut line = String::new();
            let _ = BufReader::new(s.try_clone().unwrap()).read_line(&mut line);
            let _ = s.write_all(format!("pong {}\n", line.trim()).as_bytes());
        })
    }

    fn serve_in(parent: &Path, handler: fn(UnixStream)) -> Self {
        let dir = tempfile::Builder::new()
            .prefix("kz-isolate-test-")
            .tempdir_in(parent)
            .unwrap();
        // Reachable by another uid too (the unprivileged run below).
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        let socket = dir.path().join("proxy.sock");
        let listener = UnixListener::bind(&socket).unwrap();
        std::fs::set_permissions(&socket, std::fs::Permissions::from_mode(0o777)).unwrap();
        let connections = Arc::new(AtomicUsize::new(0));
        let count = Arc::clone(&connections);
        std::thread::spawn(move || {
            for s in listener.incoming() {
                let Ok(s) = s else { break };
                count.fetch_add(1, Ordering::SeqCst);
                std::thread::spawn(move || handler(s));
            }
        });
        Self {
            dir,
            socket,
            connections,
        }
    }
}

/// `kz __isolate SOCKET PORT -- COMMAND…`, output captured.
fn helper(socket: &Path, command: &[&str]) -> Command {
    helper_with(&kz_bin(), socket, &PORT.to_string(), command)
}

fn helper_with(kz: &Path, socket: &Path, port: &str, command: &[&str]) -> Command {
    let mut c = Command::new(kz);
    c.arg("__isolate")
        .arg(socket)
        .arg(port)
        .arg("--")
        .args(command)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    c
}

struct Done {
    code: Option<i32>,
    stdout: String,
    stderr: String,
}

/// Waits for `child` at most [`LIMIT`] (killing it and failing after that).
fn finish(mut child: Child) -> Done {
    // Either stream may have been taken by the caller already.
    let read_all = |r: Option<Box<dyn Read + Send>>| {
        std::thread::spawn(move || {
            let mut s = String::new();
            if let Some(mut r) = r {
                let _ = r.read_to_string(&mut s);
            }
            s
        })
    };
    let out_t = read_all(
        child
            .stdout
            .take()
            .map(|r| Box::new(r) as Box<dyn Read + Send>),
    );
    let err_t = read_all(
        child
            .stderr
            .take()
            .map(|r| Box::new(r) as Box<dyn Read + Send>),
    );
    let deadline = Instant::now() + LIMIT;
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("kz __isolate did not finish within {LIMIT:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    Done {
        code: status.code(),
        stdout: out_t.join().unwrap(),
        stderr: err_t.join().unwrap(),
    }
}

fn run(mut cmd: Command) -> Done {
    finish(cmd.spawn().unwrap())
}

/// Runs a Python program as the child; asserts success.
fn python_ok(socket: &Path, program: &str) -> Done {
    let d = run(helper(socket, &["python3", "-c", program]));
    assert_eq!(
        d.code,
        Some(0),
        "stdout:\n{}\nstderr:\n{}",
        d.stdout,
        d.stderr
    );
    d
}

#[test]
fn a_connection_to_the_inside_port_reaches_the_unix_socket_outside() {
    let t = Target::pong();
    let program = format!(
        "import socket\n\
         c = socket.create_connection(('127.0.0.1', {PORT}), timeout=10)\n\
         c.sendall(b'ping\\n')\n\
         print(c.makefile().readline().strip())\n"
    );
    let d = python_ok(&t.socket, &program);
    assert_eq!(d.stdout.trim(), "pong ping", "stderr:\n{}", d.stderr);
    assert_eq!(t.connections.load(Ordering::SeqCst), 1);
    assert!(d.stderr.is_empty(), "stderr:\n{}", d.stderr);
}

#[test]
fn the_relay_copies_both_ways_and_passes_half_close() {
    let t = Target::echo();
    // 1 MiB each way, three connections in turn: data intact, EOF propagated after shutdown.
    let program = format!(
        "import socket, hashlib\n\
         data = bytes(range(256)) * 4096\n\
         for _ in range(3):\n\
         \x20   c = socket.create_connection(('127.0.0.1', {PORT}), timeout=10)\n\
         \x20   c.sendall(data)\n\
         \x20   c.shutdown(socket.SHUT_WR)\n\
         \x20   got = b''\n\
         \x20   while True:\n\
         \x20       b = c.recv(65536)\n\
         \x20       if not b: break\n\
         \x20       got += b\n\
         \x20   print(len(got), got == data)\n"
    );
    let d = python_ok(&t.socket, &program);
    assert_eq!(
        d.stdout.lines().collect::<Vec<_>>(),
        ["1048576 True"; 3],
        "stderr:\n{}",
        d.stderr
    );
    assert_eq!(t.connections.load(Ordering::SeqCst), 3);
}

#[test]
fn the_hosts_loopback_is_unreachable_from_inside() {
    let t = Target::pong();
    let tcp = TcpListener::bind("127.0.0.1:0").unwrap();
    tcp.set_nonblocking(true).unwrap();
    let tcp_port = tcp.local_addr().unwrap().port();
    let udp = UdpSocket::bind("127.0.0.1:0").unwrap();
    let udp_port = udp.local_addr().unwrap().port();
    assert_ne!(tcp_port, PORT);
    let program = format!(
        "import socket\n\
         try:\n\
         \x20   socket.create_connection(('127.0.0.1', {tcp_port}), timeout=3)\n\
         \x20   print('tcp connected')\n\
         except OSError as e:\n\
         \x20   print('tcp blocked')\n\
         u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\n\
         u.sendto(b'hello', ('127.0.0.1', {udp_port}))\n\
         print('udp sent')\n"
    );
    let d = python_ok(&t.socket, &program);
    assert_eq!(
        d.stdout.lines().collect::<Vec<_>>(),
        ["tcp blocked", "udp sent"],
        "stderr:\n{}",
        d.stderr
    );
    // Neither the TCP connection nor the datagram arrived on the host.
    assert_eq!(tcp.accept().unwrap_err().kind(), ErrorKind::WouldBlock);
    udp.set_read_timeout(Some(Duration::from_millis(300)))
        .unwrap();
    let mut buf = [0u8; 16];
    assert!(udp.recv_from(&mut buf).is_err(), "a datagram got out");
    assert_eq!(t.connections.load(Ordering::SeqCst), 0);
}

#[test]
fn dns_lookups_fail_inside() {
    let t = Target::pong();
    // With only `lo`, the resolver of /etc/resolv.conf is unreachable: the lookup must fail (it
    // would only reach the network if isolation were broken). The `.` keeps it off search lists.
    let program = "import socket\n\
                   try:\n\
                   \x20   print('resolved', socket.getaddrinfo('example.com.', 80))\n\
                   except socket.gaierror as e:\n\
                   \x20   print('dns failed')\n";
    let d = python_ok(&t.socket, program);
    assert_eq!(d.stdout.trim(), "dns failed", "stderr:\n{}", d.stderr);
}

#[test]
fn loopback_is_the_only_interface() {
    let t = Target::pong();
    let d = run(helper(&t.socket, &["cat", "/proc/net/dev"]));
    assert_eq!(d.code, Some(0), "stderr:\n{}", d.stderr);
    let names: Vec<&str> = d
        .stdout
        .lines()
        .skip(2)
        .filter_map(|l| l.split(':').next())
        .map(str::trim)
        .collect();
    assert_eq!(names, ["lo"], "/proc/net/dev inside:\n{}", d.stdout);
}

#[test]
fn the_childs_exit_code_and_environment_come_through() {
    let t = Target::pong();
    let mut cmd = helper(
        &t.socket,
        &["sh", "-c", "echo \"$KZ_ISOLATE_MARK\"; exit 7"],
    );
    cmd.env("KZ_ISOLATE_MARK", "mark-1234");
    let d = run(cmd);
    assert_eq!(d.code, Some(7), "stderr:\n{}", d.stderr);
    assert_eq!(d.stdout.trim(), "mark-1234");
    // Death by signal N is 128+N.
    let d = run(helper(&t.socket, &["sh", "-c", "kill -USR1 $$"]));
    assert_eq!(d.code, Some(128 + 10), "stderr:\n{}", d.stderr);
}

#[test]
fn a_signal_sent_to_the_helper_reaches_the_child() {
    let t = Target::pong();
    let mut child = helper(
        &t.socket,
        &[
            "sh",
            "-c",
            "trap 'echo got-term; exit 42' TERM; echo ready; while :; do sleep 0.05; done",
        ],
    )
    .spawn()
    .unwrap();
    let mut out = BufReader::new(child.stdout.take().unwrap());
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let mut first = String::new();
        let _ = out.read_line(&mut first);
        let _ = tx.send(first);
        let mut rest = String::new();
        let _ = out.read_to_string(&mut rest);
        let _ = tx.send(rest);
    });
    let first = rx.recv_timeout(LIMIT);
    if first.as_deref().map(str::trim) != Ok("ready") {
        let _ = child.kill();
        panic!("the child did not start: {first:?}");
    }
    let killed = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(killed.success());
    let d = finish(child);
    assert_eq!(d.code, Some(42), "stderr:\n{}", d.stderr);
    assert_eq!(rx.recv_timeout(LIMIT).unwrap().trim(), "got-term");
}

/// `id -u`, `id -g` and the uid map, as one line each.
const IDS: &str = "id -u; id -g; cat /proc/self/uid_map /proc/self/gid_map";

fn ids_inside(d: &Done) -> Vec<String> {
    assert_eq!(d.code, Some(0), "stderr:\n{}", d.stderr);
    d.stdout
        .lines()
        .map(|l| l.split_whitespace().collect::<Vec<_>>().join(" "))
        .collect()
}

fn outer(args: &[&str]) -> String {
    let o = Command::new("id").args(args).output().unwrap();
    String::from_utf8(o.stdout).unwrap().trim().to_owned()
}

#[test]
fn the_uid_and_gid_inside_are_the_users_own() {
    let t = Target::pong();
    let (uid, gid) = (outer(&["-u"]), outer(&["-g"]));
    let d = run(helper(&t.socket, &["sh", "-c", IDS]));
    assert_eq!(
        ids_inside(&d),
        [
            uid.clone(),
            gid.clone(),
            format!("{uid} {uid} 1"),
            format!("{gid} {gid} 1")
        ]
    );
}

#[test]
fn an_unprivileged_user_keeps_their_ids_and_reaches_the_proxy() {
    // Run as root (as in a container): check the unprivileged path as `nobody` via setpriv.
    if outer(&["-u"]) != "0" || Command::new("setpriv").arg("--version").output().is_err() {
        return;
    }
    let t = Target::pong();
    // A copy of kz that `nobody` can execute wherever the build directory is.
    let kz = t.dir.path().join("kz");
    std::fs::copy(kz_bin(), &kz).unwrap();
    std::fs::set_permissions(&kz, std::fs::Permissions::from_mode(0o755)).unwrap();
    let as_nobody = |command: &[&str]| {
        let inner = helper_with(&kz, &t.socket, &PORT.to_string(), command);
        let mut c = Command::new("setpriv");
        c.args(["--reuid=65534", "--regid=65534", "--clear-groups"])
            .arg(inner.get_program())
            .args(inner.get_args())
            .current_dir("/")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        run(c)
    };
    let d = as_nobody(&["sh", "-c", IDS]);
    assert_eq!(
        ids_inside(&d),
        ["65534", "65534", "65534 65534 1", "65534 65534 1"]
    );
    // The relay works for an unprivileged helper too (with a Python that `nobody` can run).
    let python = Path::new("/usr/bin/python3");
    if python.exists() {
        let program = format!(
            "import socket\n\
             c = socket.create_connection(('127.0.0.1', {PORT}), timeout=10)\n\
             c.sendall(b'nobody\\n')\n\
             print(c.makefile().readline().strip())\n"
        );
        let d = as_nobody(&[python.to_str().unwrap(), "-c", &program]);
        assert_eq!(d.code, Some(0), "stderr:\n{}", d.stderr);
        assert_eq!(d.stdout.trim(), "pong nobody");
    }
}

#[test]
fn when_namespaces_cannot_be_created_nothing_starts() {
    let t = Target::pong();
    let marker = t.dir.path().join("started");
    let touch = ["touch", marker.to_str().unwrap()];
    // Inside a user namespace that maps no id, a nested one is refused (EPERM).
    let inner = helper(&t.socket, &touch);
    let mut c = Command::new("unshare");
    c.arg("-U")
        .arg(inner.get_program())
        .args(inner.get_args())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let d = run(c);
    assert_eq!(d.code, Some(125), "stderr:\n{}", d.stderr);
    assert_eq!(d.stderr.lines().count(), 1, "stderr:\n{}", d.stderr);
    assert!(
        d.stderr
            .starts_with("kz: --isolate: cannot create a user namespace: ")
            && d.stderr.contains("kernel.unprivileged_userns_clone")
            && d.stderr.contains("user.max_user_namespaces"),
        "stderr:\n{}",
        d.stderr
    );
    assert!(!marker.exists(), "the command ran");
}

#[test]
fn other_setup_failures_start_nothing_either() {
    let t = Target::pong();
    let marker = t.dir.path().join("started");
    let touch = ["touch", marker.to_str().unwrap()];
    // No proxy socket.
    let missing = t.dir.path().join("missing.sock");
    let d = run(helper(&missing, &touch));
    assert_eq!(d.code, Some(125), "stderr:\n{}", d.stderr);
    assert_eq!(d.stderr.lines().count(), 1, "stderr:\n{}", d.stderr);
    assert!(
        d.stderr.starts_with("kz: --isolate: ") && d.stderr.contains("missing.sock"),
        "stderr:\n{}",
        d.stderr
    );
    // Malformed helper arguments.
    for port in ["0", "nope", "70000"] {
        let d = run(helper_with(&kz_bin(), &t.socket, port, &touch));
        assert_eq!(d.code, Some(125), "port {port}: stderr:\n{}", d.stderr);
        assert!(d.stderr.starts_with("kz: --isolate: "), "{}", d.stderr);
    }
    let d = run({
        let mut c = Command::new(kz_bin());
        c.args(["__isolate", t.socket.to_str().unwrap(), "8080"])
            .args(touch)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        c
    });
    assert_eq!(d.code, Some(125), "no `--`: stderr:\n{}", d.stderr);
    assert!(!marker.exists(), "the command ran");
    // A missing command is 127, as for `kz run`.
    let d = run(helper(&t.socket, &["kz-no-such-command-4711"]));
    assert_eq!(d.code, Some(127), "stderr:\n{}", d.stderr);
    assert_eq!(
        d.stderr.trim(),
        "kz: kz-no-such-command-4711: command not found"
    );
}

/// A Unix socket the test listens on at a host path, removed on drop.
struct HostSocket {
    path: PathBuf,
}

impl HostSocket {
    /// Listens at `path` (mode 0777, so any uid could connect) when its directory exists and
    /// the path is free; `None` otherwise.
    fn bind(path: &Path) -> Option<Self> {
        if !path.parent().is_some_and(Path::is_dir) || path.symlink_metadata().is_ok() {
            return None;
        }
        let listener = UnixListener::bind(path).ok()?;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o777)).unwrap();
        std::thread::spawn(move || {
            for s in listener.incoming() {
                drop(s);
            }
        });
        Some(Self {
            path: path.to_path_buf(),
        })
    }
}

impl Drop for HostSocket {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// `/run/user/UID`, created for the test (owned by UID, mode 0700) when missing, and then
/// removed again on drop.
struct RuntimeDir {
    path: PathBuf,
    created: bool,
}

impl RuntimeDir {
    fn ensure(uid: u32) -> Option<Self> {
        let path = PathBuf::from(format!("/run/user/{uid}"));
        if path.is_dir() {
            return Some(Self {
                path,
                created: false,
            });
        }
        std::fs::create_dir_all("/run/user").ok()?;
        std::fs::create_dir(&path).ok()?;
        let dir = Self {
            path,
            created: true,
        };
        std::os::unix::fs::chown(&dir.path, Some(uid), Some(uid)).unwrap();
        std::fs::set_permissions(&dir.path, std::fs::Permissions::from_mode(0o700)).unwrap();
        Some(dir)
    }
}

impl Drop for RuntimeDir {
    fn drop(&mut self) {
        if self.created {
            let _ = std::fs::remove_dir(&self.path);
        }
    }
}

/// For each path argument: tries to unmount what covers it (and its directory), then prints
/// `PATH reachable` or `PATH blocked` after a connection attempt.
const PROBE: &str = "import os, socket, subprocess, sys\n\
                     for p in sys.argv[1:]:\n\
                     \x20   for t in (p, os.path.dirname(p)):\n\
                     \x20       subprocess.run(['umount', t], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)\n\
                     for p in sys.argv[1:]:\n\
                     \x20   s = socket.socket(socket.AF_UNIX)\n\
                     \x20   try:\n\
                     \x20       s.connect(p)\n\
                     \x20       print(p, 'reachable')\n\
                     \x20   except OSError:\n\
                     \x20       print(p, 'blocked')\n";

/// Host sockets at hidden places (the ones this machine allows creating): in the runtime
/// directory of `uid`, the system bus directory, systemd's, and (only for `docker`, so that
/// one test uses it) `/run/docker.sock` when it is free.
fn hidden_sockets(uid: u32, runtime: &RuntimeDir, docker: bool) -> Vec<HostSocket> {
    let tag = format!("kz-isolate-test-{}-{uid}.sock", std::process::id());
    let mut places = vec![
        runtime.path.join(&tag),
        Path::new("/run/dbus").join(&tag),
        Path::new("/run/systemd").join(&tag),
    ];
    if docker {
        places.push(PathBuf::from("/run/docker.sock"));
    }
    let mut sockets: Vec<HostSocket> = places.iter().filter_map(|p| HostSocket::bind(p)).collect();
    // A symlinked spelling of a hidden directory is covered too.
    if Path::new("/var/run").is_symlink() && Path::new("/run/dbus").is_dir() {
        let tag = format!("kz-isolate-test-{}-{uid}-var.sock", std::process::id());
        if let Some(mut s) = HostSocket::bind(&Path::new("/run/dbus").join(&tag)) {
            s.path = Path::new("/var/run/dbus").join(&tag);
            sockets.push(s);
        }
    }
    sockets
}

fn probe_lines(d: &Done) -> Vec<String> {
    assert_eq!(
        d.code,
        Some(0),
        "stdout:\n{}\nstderr:\n{}",
        d.stdout,
        d.stderr
    );
    d.stdout.lines().map(str::to_owned).collect()
}

fn expect(paths: &[&Path], verdict: &str) -> Vec<String> {
    paths
        .iter()
        .map(|p| format!("{} {verdict}", p.display()))
        .collect()
}

#[test]
fn host_filesystem_sockets_are_hidden_but_the_proxy_under_them_is_reached() {
    if outer(&["-u"]) != "0" {
        return;
    }
    let Some(runtime) = RuntimeDir::ensure(0) else {
        return;
    };
    // The proxy's own socket lives in a directory that gets hidden.
    let t = Target::pong_in(&runtime.path);
    // A socket in the working directory stays reachable; one in /tmp (tmux, X11, ssh-agent
    // live there) is hidden with the rest of /tmp.
    let workdir = tempfile::tempdir().unwrap();
    let control = Target::pong_in(workdir.path());
    let in_tmp = Target::pong();
    let hidden = hidden_sockets(0, &runtime, true);
    assert!(hidden.len() >= 2, "too few places to test on this machine");
    let hidden_paths: Vec<&Path> = hidden.iter().map(|h| h.path.as_path()).collect();
    let mut probe: Vec<&str> = vec!["python3", "-c", PROBE];
    probe.extend(hidden_paths.iter().map(|p| p.to_str().unwrap()));
    // Outside, each one answers.
    let mut outside = Command::new("python3");
    outside
        .args(&probe[1..])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    assert_eq!(
        probe_lines(&run(outside)),
        expect(&hidden_paths, "reachable")
    );
    // Inside, none does, even after trying to unmount what covers it; a socket elsewhere still
    // does, and the relay reaches the proxy in its hidden directory.
    probe.push(in_tmp.socket.to_str().unwrap());
    probe.push(control.socket.to_str().unwrap());
    let mut want = expect(&hidden_paths, "blocked");
    want.extend(expect(&[in_tmp.socket.as_path()], "blocked"));
    want.extend(expect(&[control.socket.as_path()], "reachable"));
    let mut inside = helper(&t.socket, &probe);
    inside.current_dir(workdir.path());
    let d = run(inside);
    assert_eq!(probe_lines(&d), want, "stderr:\n{}", d.stderr);
    let relay = format!(
        "import os, socket\n\
         c = socket.create_connection(('127.0.0.1', {PORT}), timeout=10)\n\
         c.sendall(b'hidden\\n')\n\
         print(c.makefile().readline().strip())\n\
         p = '{}'\n\
         print(os.listdir(p) if os.path.isdir(p) else [])\n",
        runtime.path.display()
    );
    let d = python_ok(&t.socket, &relay);
    assert_eq!(
        d.stdout.lines().collect::<Vec<_>>(),
        ["pong hidden", "[]"],
        "stderr:\n{}",
        d.stderr
    );
    assert!(d.stderr.is_empty(), "stderr:\n{}", d.stderr);
    drop(t);
}

#[test]
fn an_unprivileged_user_cannot_reach_hidden_sockets_either() {
    // Run as root (as in a container): check the unprivileged path as `nobody` via setpriv.
    let python = Path::new("/usr/bin/python3");
    if outer(&["-u"]) != "0"
        || Command::new("setpriv").arg("--version").output().is_err()
        || !python.exists()
    {
        return;
    }
    let Some(runtime) = RuntimeDir::ensure(65534) else {
        return;
    };
    let t = Target::pong_in(&runtime.path);
    let hidden = hidden_sockets(65534, &runtime, false);
    assert!(hidden.len() >= 2, "too few places to test on this machine");
    // A copy of kz that `nobody` can execute wherever the build directory is.
    let bin = tempfile::tempdir().unwrap();
    std::fs::set_permissions(bin.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let kz = bin.path().join("kz");
    std::fs::copy(kz_bin(), &kz).unwrap();
    std::fs::set_permissions(&kz, std::fs::Permissions::from_mode(0o755)).unwrap();
    let as_nobody = |program: &Path, args: &[&str]| {
        let mut c = Command::new("setpriv");
        c.args(["--reuid=65534", "--regid=65534", "--clear-groups"])
            .arg(program)
            .args(args)
            .current_dir("/")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        run(c)
    };
    let hidden_paths: Vec<&Path> = hidden.iter().map(|h| h.path.as_path()).collect();
    let mut probe: Vec<&str> = vec!["-c", PROBE];
    probe.extend(hidden_paths.iter().map(|p| p.to_str().unwrap()));
    assert_eq!(
        probe_lines(&as_nobody(python, &probe)),
        expect(&hidden_paths, "reachable")
    );
    let socket = t.socket.to_str().unwrap();
    let port = PORT.to_string();
    let mut inside = vec!["__isolate", socket, &port, "--", python.to_str().unwrap()];
    inside.extend(&probe);
    assert_eq!(
        probe_lines(&as_nobody(&kz, &inside)),
        expect(&hidden_paths, "blocked")
    );
    let relay = format!(
        "import socket\n\
         c = socket.create_connection(('127.0.0.1', {PORT}), timeout=10)\n\
         c.sendall(b'nobody\\n')\n\
         print(c.makefile().readline().strip())\n"
    );
    let d = as_nobody(
        &kz,
        &[
            "__isolate",
            socket,
            &port,
            "--",
            python.to_str().unwrap(),
            "-c",
            &relay,
        ],
    );
    assert_eq!(d.code, Some(0), "stderr:\n{}", d.stderr);
    assert_eq!(d.stdout.trim(), "pong nobody", "stderr:\n{}", d.stderr);
    drop(t);
}

// ----- `kz run --blind --isolate` end to end: no source of a value is readable -----

/// A project whose values come from the local store, a dotenv file and kz's environment, with
/// credential files of other tools beside them (`~/.vault-token`, `~/.aws` through a symlink, a
/// `[blind] hide` path) and kz's cache directory. Every one of them holds the canary.
fn hostile_world() -> crate::util::Sandbox {
    use crate::util::{CANARY, Sandbox};
    let mut s = Sandbox::with_config(
        "[providers.dotenv]\npath = \"secrets.env\"\n\
         [secrets]\n\
         LOCAL_KEY = { provider = \"local\", ref = \"proj/LOCAL_KEY\", hosts = [\"api.example.com\"] }\n\
         FILE_KEY = { provider = \"dotenv\", ref = \"FILE_KEY\", hosts = [\"api.example.com\"] }\n\
         ENV_KEY = { provider = \"env\", ref = \"KZ_TEST_SRC\", hosts = [\"api.example.com\"] }\n\
         [blind]\nhide = [\"~/private/notes.txt\"]\n",
    );
    // Blind mode needs a trusted configuration; the operator's override stands in for `kz allow`.
    s.set("KZ_TEST_SRC", CANARY).set("KEYZERO_TRUST", "1");
    s.put("LOCAL_KEY", CANARY);
    s.write("secrets.env", &format!("FILE_KEY={CANARY}\n"));
    s.write(".keyzero.local.toml", &format!("# {CANARY}\n"));
    let home = s.root.path().join("home");
    std::fs::write(home.join(".vault-token"), CANARY).unwrap();
    std::fs::create_dir_all(home.join("real-aws")).unwrap();
    std::fs::write(
        home.join("real-aws/credentials"),
        format!("[default]\naws_secret_access_key = {CANARY}\n"),
    )
    .unwrap();
    std::os::unix::fs::symlink(home.join("real-aws"), home.join(".aws")).unwrap();
    std::fs::create_dir_all(home.join("private")).unwrap();
    std::fs::write(home.join("private/notes.txt"), CANARY).unwrap();
    let cache = s.root.path().join("cache/keyzero");
    std::fs::create_dir_all(&cache).unwrap();
    std::fs::write(cache.join("cache.age"), CANARY).unwrap();
    s
}

/// The probe's targets: (name, path), every one of which holds a value or a credential.
fn hostile_targets(s: &crate::util::Sandbox) -> Vec<(&'static str, PathBuf)> {
    let root = s.root.path();
    vec![
        ("store", root.join("data/keyzero/store.age")),
        ("identity", root.join("config/keyzero/identity.txt")),
        ("kz-config-dir", root.join("config/keyzero")),
        ("kz-data-dir", root.join("data/keyzero")),
        ("kz-cache-dir", root.join("cache/keyzero")),
        ("dotenv", s.project.join("secrets.env")),
        ("vault-token", root.join("home/.vault-token")),
        ("aws-via-link", root.join("home/.aws/credentials")),
        ("aws-real", root.join("home/real-aws/credentials")),
        ("hide", root.join("home/private/notes.txt")),
        ("local-config", s.project.join(".keyzero.local.toml")),
    ]
}

/// Tries to read each `NAME=PATH` (a directory: list it), then kz's own memory, environment
/// and view of the filesystem through `/proc/<kz pid>`, then a hidden file again from a nested
/// user and mount namespace after unmounting what covers it. Prints `NAME exposed` or
/// `NAME blocked` per probe — never what it read.
const HOSTILE: &str = r#"
import os, subprocess, sys
def verdict(ok):
    return "exposed" if ok else "blocked"
def read(p):
    try:
        if os.path.isdir(p):
            return bool(os.listdir(p))
        with open(p, "rb") as f:
            return bool(f.read(1 << 20))
    except OSError:
        return False
with open("/proc/%d/status" % os.getppid()) as f:
    caps = [l.split()[1] for l in f if l.startswith("CapEff:")]
print("parent-capabilities", verdict(int(caps[0], 16) != 0))
def kz_pid():
    # The parent, or the parent of the namespace helper: 0 when outside the PID namespace.
    pid = os.getppid()
    with open("/proc/%d/cmdline" % pid, "rb") as f:
        if b"__isolate" in f.read():
            with open("/proc/%d/stat" % pid) as f:
                pid = int(f.read().rsplit(")", 1)[1].split()[1])
    return pid
kz = kz_pid()
print("kz-comm", "kz" if kz else "unreachable")
for arg in sys.argv[2:]:
    name, path = arg.split("=", 1)
    print(name, verdict(read(path)))
    print(name + "-via-kz-root", verdict(read("/proc/%d/root%s" % (kz, path))))
    print(name + "-via-own-root", verdict(read("/proc/self/root" + path)))
print("kz-environ", verdict(read("/proc/%d/environ" % kz)))
def mem():
    try:
        with open("/proc/%d/mem" % kz, "rb") as f:
            return True
    except OSError:
        return False
print("kz-mem", verdict(mem()))
unmount = "umount -l %s 2>/dev/null; cat %s 2>/dev/null" % (sys.argv[1], sys.argv[1])
for name, argv in [("unmount", ["sh", "-c", unmount]),
                   ("unmount-in-nested-namespace", ["unshare", "-Urm", "sh", "-c", unmount])]:
    try:
        out = subprocess.run(argv, capture_output=True).stdout
    except OSError:
        out = b""
    print(name, verdict(bool(out)))
"#;

/// Runs the probe as `kz run --blind [EXTRA] -- PYTHON …` through `wrap` (a `Command` maker).
fn hostile_run(
    s: &crate::util::Sandbox,
    extra: &[&str],
    python: &str,
    wrap: impl Fn(&[&str]) -> Command,
) -> crate::util::Run {
    let targets: Vec<String> = hostile_targets(s)
        .iter()
        .map(|(n, p)| format!("{n}={}", p.display()))
        .collect();
    let dotenv = s.project.join("secrets.env").display().to_string();
    let mut args: Vec<&str> = vec!["run", "--blind"];
    args.extend(extra);
    args.extend(["--", python, "-c", HOSTILE, &dotenv]);
    args.extend(targets.iter().map(String::as_str));
    let out = wrap(&args).stdin(Stdio::null()).output().unwrap();
    crate::util::Run::from(out)
}

fn verdicts(r: &crate::util::Run) -> Vec<(String, String)> {
    r.stdout
        .lines()
        .filter_map(|l| l.split_once(' '))
        .map(|(a, b)| (a.to_string(), b.to_string()))
        .collect()
}

/// Every probe of a run under `--isolate` is blocked, and kz cannot even be named (it is outside
/// the command's PID namespace).
#[track_caller]
fn assert_all_blocked(r: &crate::util::Run) {
    let v = verdicts(r);
    assert!(
        v.iter().any(|(n, c)| n == "kz-comm" && c == "unreachable"),
        "the probe found kz's process\nstdout:\n{}\nstderr:\n{}",
        r.stdout,
        r.stderr
    );
    let exposed: Vec<&String> = v
        .iter()
        .filter(|(n, c)| n != "kz-comm" && c != "blocked")
        .map(|(n, _)| n)
        .collect();
    assert!(
        exposed.is_empty(),
        "readable under --isolate: {exposed:?}\nstdout:\n{}\nstderr:\n{}",
        r.stdout,
        r.stderr
    );
    // The helper's capabilities, kz's name, each target directly, through kz's root and
    // through the command's own, then environ, mem and two unmounts.
    assert_eq!(v.len(), 2 + 11 * 3 + 4, "{}", r.stdout);
}

#[test]
fn a_hostile_command_under_isolate_reads_no_source_of_the_runs_values() {
    let s = hostile_world();
    let wrap = |args: &[&str]| s.cmd(args);
    // Without --isolate the same probe reads every file (so it can tell), and as root kz's
    // environment too (tier 1: documented).
    let open = hostile_run(&s, &[], "python3", wrap).ok().no_canary();
    let v = verdicts(&open);
    assert!(
        v.contains(&("kz-comm".to_string(), "kz".to_string())),
        "the probe did not find kz without --isolate: it is broken\n{}",
        open.stdout
    );
    for (name, _) in hostile_targets(&s) {
        assert!(
            v.contains(&(name.to_string(), "exposed".to_string())),
            "{name} unreadable without --isolate: the probe is broken\n{}\n{}",
            open.stdout,
            open.stderr
        );
    }
    if outer(&["-u"]) == "0" {
        assert!(
            v.contains(&("kz-environ".to_string(), "exposed".to_string())),
            "{}",
            open.stdout
        );
    }
    let r = hostile_run(&s, &["--isolate"], "python3", wrap)
        .ok()
        .no_canary();
    assert_all_blocked(&r);
    // The files themselves are untouched.
    assert!(s.read("secrets.env").contains(crate::util::CANARY));
}

/// `chown -R` without following symlinks.
fn chown_tree(root: &Path, uid: u32) {
    std::os::unix::fs::lchown(root, Some(uid), Some(uid)).unwrap();
    if std::fs::symlink_metadata(root).unwrap().is_dir() {
        for e in std::fs::read_dir(root).unwrap() {
            chown_tree(&e.unwrap().path(), uid);
        }
    }
}

#[test]
fn a_hostile_command_running_as_an_unprivileged_user_is_blocked_too() {
    // Run as root (as in a container): the same attack as `nobody` via setpriv.
    let python = Path::new("/usr/bin/python3");
    if outer(&["-u"]) != "0"
        || Command::new("setpriv").arg("--version").output().is_err()
        || !python.exists()
    {
        return;
    }
    let s = hostile_world();
    chown_tree(s.root.path(), 65534);
    let bin = tempfile::tempdir().unwrap();
    std::fs::set_permissions(bin.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let kz = bin.path().join("kz");
    std::fs::copy(kz_bin(), &kz).unwrap();
    std::fs::set_permissions(&kz, std::fs::Permissions::from_mode(0o755)).unwrap();
    let wrap = |args: &[&str]| {
        let mut c = Command::new("setpriv");
        c.args(["--reuid=65534", "--regid=65534", "--clear-groups"])
            .arg(&kz)
            .args(args)
            .current_dir(&s.project)
            .env_clear()
            .envs(&s.env);
        c
    };
    let open = hostile_run(&s, &[], python.to_str().unwrap(), wrap)
        .ok()
        .no_canary();
    let v = verdicts(&open);
    assert!(
        v.contains(&("dotenv".to_string(), "exposed".to_string())),
        "{}\n{}",
        open.stdout,
        open.stderr
    );
    let r = hostile_run(&s, &["--isolate"], python.to_str().unwrap(), wrap)
        .ok()
        .no_canary();
    assert_all_blocked(&r);
}

#[test]
fn a_source_with_another_hard_link_stops_the_start() {
    let s = hostile_world();
    std::fs::hard_link(
        s.project.join("secrets.env"),
        s.root.path().join("home/copy.env"),
    )
    .unwrap();
    let marker = s.project.join("started");
    let r = s
        .kz(&[
            "run",
            "--blind",
            "--isolate",
            "--",
            "touch",
            marker.to_str().unwrap(),
        ])
        .code(125)
        .no_canary();
    assert!(
        r.stderr.contains("secrets.env") && r.stderr.contains("hard link"),
        "{}",
        r.stderr
    );
    assert!(!marker.exists(), "the command must not start");
}

#[test]
fn without_isolate_one_line_names_the_readable_sources_and_q_silences_it() {
    let s = hostile_world();
    let r = s.kz(&["run", "--blind", "--", "true"]).ok().no_canary();
    let lines: Vec<&str> = r
        .stderr
        .lines()
        .filter(|l| l.contains("without --isolate"))
        .collect();
    assert_eq!(lines.len(), 1, "{}", r.stderr);
    let line = lines.first().copied().unwrap_or_default();
    let root = s.root.path();
    for p in [
        root.join("data/keyzero/store.age"),
        root.join("config/keyzero/identity.txt"),
        s.project.join("secrets.env"),
    ] {
        assert!(
            line.contains(&p.display().to_string()),
            "{p:?} not named: {line}"
        );
    }
    assert!(line.contains("add --isolate"), "{line}");
    // ENV_KEY comes from kz's environment, which the process that started kz holds too.
    assert!(
        line.contains("the environment kz was started with"),
        "{line}"
    );
    let q = s
        .kz(&["-q", "run", "--blind", "--", "true"])
        .ok()
        .no_canary();
    assert!(!q.stderr.contains("without --isolate"), "{}", q.stderr);
    // Under --isolate there is nothing to warn about.
    let i = s
        .kz(&["run", "--blind", "--isolate", "--", "true"])
        .ok()
        .no_canary();
    assert!(!i.stderr.contains("without --isolate"), "{}", i.stderr);
}

#[test]
fn hiding_the_directory_that_holds_the_runs_ca_directory_stops_the_start() {
    let mut s = crate::util::Sandbox::with_config(
        "[secrets]\nAPI_TOKEN = { provider = \"env\", ref = \"KZ_TEST_SRC\", hosts = [\"api.example.com\"] }\n\
         [blind]\nhide = [\"../tmp\"]\n",
    );
    let tmp = s.root.path().join("tmp");
    std::fs::create_dir_all(&tmp).unwrap();
    s.set("KZ_TEST_SRC", crate::util::CANARY)
        .set("KEYZERO_TRUST", "1");
    s.set("TMPDIR", tmp.to_str().unwrap());
    let marker = s.project.join("started");
    let r = s
        .kz(&[
            "run",
            "--blind",
            "--isolate",
            "--",
            "touch",
            marker.to_str().unwrap(),
        ])
        .code(125)
        .no_canary();
    assert!(
        r.stderr.contains("CA directory") && r.stderr.contains(&tmp.display().to_string()),
        "{}",
        r.stderr
    );
    assert!(!marker.exists(), "the command must not start");
}

/// `kz --dir PROJECT run --blind --isolate -- sh -c SCRIPT` started in `cwd`.
fn run_from(s: &crate::util::Sandbox, cwd: &Path, script: &str) -> crate::util::Run {
    let out = s
        .cmd(&[
            "--dir",
            s.project.to_str().unwrap(),
            "run",
            "--blind",
            "--isolate",
            "--",
            "sh",
            "-c",
            script,
        ])
        .current_dir(cwd)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    crate::util::Run::from(out)
}

#[test]
fn a_command_started_in_a_hidden_directory_sees_it_empty() {
    // The working directory is entered again after the mounts: otherwise it would still name
    // the directory below the one that hides it, and relative paths would read the store.
    let s = hostile_world();
    let r = run_from(
        &s,
        &s.root.path().join("data/keyzero"),
        "ls -A | wc -l; cat store.age 2>/dev/null | wc -c",
    )
    .ok()
    .no_canary();
    let counts: Vec<&str> = r.stdout.split_whitespace().collect();
    assert_eq!(counts, ["0", "0"], "{}\n{}", r.stdout, r.stderr);
}

#[test]
fn a_working_directory_inside_a_hidden_directory_stops_the_start() {
    let s = hostile_world();
    let inside = s.root.path().join("data/keyzero/sub");
    std::fs::create_dir_all(&inside).unwrap();
    let marker = s.project.join("started");
    let r = run_from(
        &s,
        &inside,
        &format!("cat ../store.age | wc -c; touch {}", marker.display()),
    )
    .code(125)
    .no_canary();
    assert!(
        r.stderr.contains("working directory") && r.stderr.contains(&inside.display().to_string()),
        "{}",
        r.stderr
    );
    assert!(!marker.exists(), "the command must not start");
}

// ----- The command's view: its own processes, private temporary files, read-only elsewhere -----

/// The command's view of processes: whether the test's own pid is visible or can be signalled,
/// and the command's pid as it sees it.
const PID_PROBE: &str = r#"
import os, sys
host = int(sys.argv[1])
try:
    os.kill(host, 0)
    signalled = True
except OSError:
    signalled = False
print("host-pid", "exposed" if os.path.exists("/proc/%d" % host) or signalled else "blocked")
print("parent", os.getppid())
"#;

#[test]
fn the_command_cannot_name_host_processes_and_nothing_outlives_the_run() {
    let t = Target::pong();
    let me = std::process::id().to_string();
    let d = run(helper(&t.socket, &["python3", "-c", PID_PROBE, &me]));
    assert_eq!(d.code, Some(0), "stderr:\n{}", d.stderr);
    // Its parent is the namespace's init (the helper), pid 1.
    assert_eq!(
        d.stdout.lines().collect::<Vec<_>>(),
        ["host-pid blocked", "parent 1"],
        "stderr:\n{}",
        d.stderr
    );
    // A process that leaves its session behind dies with the run.
    let marker = format!("{}.{}", 4000 + std::process::id() % 1000, 17);
    let script = format!("setsid sleep {marker} </dev/null >/dev/null 2>&1 & exit 3");
    let d = run(helper(&t.socket, &["sh", "-c", &script]));
    assert_eq!(d.code, Some(3), "stderr:\n{}", d.stderr);
    let lingering: Vec<String> = std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|e| std::fs::read(e.path().join("cmdline")).ok())
        .map(|c| String::from_utf8_lossy(&c).replace('\0', " "))
        .filter(|c| c.contains(&format!("sleep {marker}")))
        .collect();
    assert!(lingering.is_empty(), "still running: {lingering:?}");
}

/// Writes where a hostile command would plant code for later, and a private temporary file.
const WRITE_PROBE: &str = r#"
import os, sys
def write(p):
    try:
        with open(p, "w") as f:
            f.write("echo planted\n")
        return "written"
    except OSError:
        return "refused"
outside, marker = sys.argv[1], sys.argv[2]
print("outside", write(os.path.join(outside, ".bashrc")))
print("workdir", write(os.path.join(os.getcwd(), "out.txt")))
print("tmp", write(os.path.join("/tmp", marker)))
print("tmpdir", os.environ.get("TMPDIR"))
print("dev", " ".join(sorted(os.listdir("/dev"))))
"#;

/// Runs [`WRITE_PROBE`] (as `uid` through setpriv when given) in a fresh working directory
/// under `/tmp`, against a stand-in for `$HOME` outside it and outside `/tmp`; checks what was
/// written where.
fn check_writes(uid: Option<u32>) {
    let t = Target::pong();
    // Under `/`, which every user can traverse (the build directory may be under a private
    // home); removed on drop.
    let outside = tempfile::Builder::new()
        .prefix(".kz-isolate-test-")
        .tempdir_in("/")
        .unwrap();
    let workdir = tempfile::tempdir().unwrap();
    let bin = tempfile::tempdir().unwrap();
    let mut kz = kz_bin();
    if let Some(uid) = uid {
        // Both writable by that user, so only the isolation can refuse.
        for d in [outside.path(), workdir.path()] {
            std::os::unix::fs::chown(d, Some(uid), Some(uid)).unwrap();
        }
        // A copy of kz that the user can execute wherever the build directory is.
        std::fs::set_permissions(bin.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        kz = bin.path().join("kz");
        std::fs::copy(kz_bin(), &kz).unwrap();
        std::fs::set_permissions(&kz, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    let marker = format!("kz-isolate-private-{}", std::process::id());
    let probe = [
        "python3",
        "-c",
        WRITE_PROBE,
        outside.path().to_str().unwrap(),
        &marker,
    ];
    let mut cmd = match uid {
        Some(uid) => {
            let mut c = Command::new("setpriv");
            c.arg(format!("--reuid={uid}"))
                .arg(format!("--regid={uid}"))
                .arg("--clear-groups")
                .arg(&kz)
                .args([
                    "__isolate",
                    t.socket.to_str().unwrap(),
                    &PORT.to_string(),
                    "--",
                ])
                .args(probe)
                .stdin(Stdio::null())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped());
            c
        }
        None => helper_with(&kz, &t.socket, &PORT.to_string(), &probe),
    };
    cmd.current_dir(workdir.path());
    let d = run(cmd);
    assert_eq!(d.code, Some(0), "stderr:\n{}", d.stderr);
    let lines: Vec<&str> = d.stdout.lines().collect();
    assert_eq!(
        lines.get(..4).unwrap_or_default(),
        [
            "outside refused",
            "workdir written",
            "tmp written",
            "tmpdir /tmp"
        ],
        "stderr:\n{}",
        d.stderr
    );
    // Only harmless devices: no disk, loop, SCSI generic or NVMe device.
    assert_eq!(
        lines.get(4).copied().unwrap_or_default(),
        "dev fd full null ptmx pts random shm stderr stdin stdout tty urandom zero"
    );
    assert!(!outside.path().join(".bashrc").exists());
    assert!(workdir.path().join("out.txt").exists());
    // The command's /tmp was its own.
    assert!(!std::env::temp_dir().join(&marker).exists());
}

#[test]
fn only_the_working_directory_and_private_temporary_directories_are_writable() {
    check_writes(None);
}

#[test]
fn an_unprivileged_user_cannot_write_outside_the_working_directory_either() {
    // Run as root (as in a container): the same as `nobody` via setpriv.
    if outer(&["-u"]) != "0" || Command::new("setpriv").arg("--version").output().is_err() {
        return;
    }
    check_writes(Some(65534));
}

/// x86_64 `keyctl(KEYCTL_GET_KEYRING_ID, KEY_SPEC_SESSION_KEYRING, 0)` through ctypes.
#[cfg(target_arch = "x86_64")]
const KEYRING_PROBE: &str = r#"
import ctypes
libc = ctypes.CDLL(None, use_errno=True)
print(libc.syscall(250, 0, -3, 0))
"#;

#[cfg(target_arch = "x86_64")]
#[test]
fn the_command_gets_a_session_keyring_of_its_own() {
    let t = Target::pong();
    let outside = Command::new("python3")
        .args(["-c", KEYRING_PROBE])
        .output()
        .unwrap();
    let outside = String::from_utf8_lossy(&outside.stdout).trim().to_string();
    assert!(
        outside.parse::<i64>().is_ok_and(|n| n > 0),
        "no session keyring outside: {outside}"
    );
    let d = python_ok(&t.socket, KEYRING_PROBE);
    let inside = d.stdout.trim();
    assert!(
        inside.parse::<i64>().is_ok_and(|n| n > 0),
        "inside: {inside}"
    );
    assert_ne!(inside, outside);
}
