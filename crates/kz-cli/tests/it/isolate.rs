//! `kz __isolate` (the namespace helper behind `kz run --blind --isolate`), run directly: the
//! child reaches the proxy's Unix socket through `127.0.0.1:PORT` and nothing else — not the
//! host's loopback, not DNS, no interface but `lo` — keeps the user's ids, gets its exit code
//! and signals through, and nothing starts when the namespace cannot be set up.
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
        let dir = tempfile::tempdir().unwrap();
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
