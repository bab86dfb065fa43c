//! A private D-Bus session bus with gnome-keyring's Secret Service on it, for the keychain
//! tests and the conformance suite.
//!
//! The `keyring` crate connects to the bus named by the *process* environment, once per process,
//! so tests using this module re-run their own test binary as a child process with the bus in
//! its environment ([`run_child`]). `dbus-daemon` runs with a config that has no service
//! directories (nothing is ever auto-started) and `gnome-keyring-daemon --foreground` with its
//! own temporary `HOME`/`XDG_*`; both are killed by PID on drop. The user's own session bus is
//! never used.
#![allow(dead_code)]

use std::fs::File;
use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

/// How to install what these tests need.
pub const INSTALL: &str =
    "apt-get install -y gnome-keyring libsecret-tools dbus-daemon dbus-user-session";

/// Fails (never skips) when a tool is missing.
pub fn require(tool: &str) {
    let found = Command::new("sh")
        .arg("-c")
        .arg(format!("command -v {tool}"))
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false);
    assert!(
        found,
        "`{tool}` is needed by the keychain tests: install it with `{INSTALL}`"
    );
}

/// A private D-Bus session bus, optionally with gnome-keyring's Secret Service on it.
pub struct Bus {
    dir: tempfile::TempDir,
    dbus: Option<Child>,
    keyring: Option<Child>,
}

impl Bus {
    pub fn runtime(&self) -> PathBuf {
        self.dir.path().join("run")
    }

    pub fn address(&self) -> String {
        format!("unix:path={}", self.runtime().join("bus").display())
    }

    /// The environment every process that talks to this bus gets.
    pub fn env(&self) -> Vec<(String, String)> {
        let home = self.dir.path().join("home");
        vec![
            ("DBUS_SESSION_BUS_ADDRESS".into(), self.address()),
            (
                "XDG_RUNTIME_DIR".into(),
                self.runtime().display().to_string(),
            ),
            ("HOME".into(), home.display().to_string()),
            (
                "XDG_DATA_HOME".into(),
                home.join("data").display().to_string(),
            ),
            (
                "XDG_CONFIG_HOME".into(),
                home.join("config").display().to_string(),
            ),
        ]
    }

    pub fn command(&self, program: &str) -> Command {
        let mut c = Command::new(program);
        c.envs(self.env())
            .env_remove("DISPLAY")
            .env_remove("WAYLAND_DISPLAY")
            .env_remove("GNOME_KEYRING_CONTROL");
        c
    }

    /// A bus with gnome-keyring unlocked (password `testpass`) and ready.
    pub fn with_keyring() -> Self {
        require("gnome-keyring-daemon");
        require("secret-tool");
        let mut bus = Self::bare();
        let log = File::create(bus.dir.path().join("gnome-keyring.log")).unwrap();
        let mut child = bus
            .command("gnome-keyring-daemon")
            .args(["--unlock", "--components=secrets", "--foreground"])
            .stdin(Stdio::piped())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start gnome-keyring-daemon ({e}): {INSTALL}"));
        // The unlock password, then EOF.
        let mut stdin = child.stdin.take().unwrap();
        stdin.write_all(b"testpass").unwrap();
        drop(stdin);
        bus.keyring = Some(child);
        // Ready when an item can be stored and removed.
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let stored = bus.secret_tool(
                &[
                    "store",
                    "--label=probe",
                    "service",
                    "kz-probe",
                    "username",
                    "probe",
                ],
                Some(b"probe"),
            );
            if stored.status.success() {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "gnome-keyring did not come up on the private bus: {}\nlog: {}",
                String::from_utf8_lossy(&stored.stderr),
                std::fs::read_to_string(bus.dir.path().join("gnome-keyring.log"))
                    .unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        assert!(
            bus.secret_tool(&["clear", "service", "kz-probe", "username", "probe"], None)
                .status
                .success()
        );
        bus
    }

    /// A bus with nothing on it (and no service directories, so nothing can be activated).
    pub fn bare() -> Self {
        require("dbus-daemon");
        let dir = tempfile::tempdir().unwrap();
        let runtime = dir.path().join("run");
        std::fs::create_dir(&runtime).unwrap();
        std::fs::set_permissions(&runtime, std::fs::Permissions::from_mode(0o700)).unwrap();
        for d in ["home", "home/data", "home/config"] {
            std::fs::create_dir_all(dir.path().join(d)).unwrap();
        }
        let socket = runtime.join("bus");
        let config = dir.path().join("bus.conf");
        std::fs::write(
            &config,
            format!(
                r#"<!DOCTYPE busconfig PUBLIC "-//freedesktop//DTD D-Bus Bus Configuration 1.0//EN"
 "http://www.freedesktop.org/standards/dbus/1.0/busconfig.dtd">
<busconfig>
  <type>session</type>
  <listen>unix:path={}</listen>
  <auth>EXTERNAL</auth>
  <policy context="default">
    <allow send_destination="*" eavesdrop="true"/>
    <allow eavesdrop="true"/>
    <allow own="*"/>
  </policy>
</busconfig>
"#,
                socket.display()
            ),
        )
        .unwrap();
        let log = File::create(dir.path().join("dbus.log")).unwrap();
        let dbus = Command::new("dbus-daemon")
            .arg(format!("--config-file={}", config.display()))
            .arg("--nofork")
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start dbus-daemon ({e}): {INSTALL}"));
        let bus = Self {
            dir,
            dbus: Some(dbus),
            keyring: None,
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        while !socket.exists() {
            assert!(
                Instant::now() < deadline,
                "dbus-daemon did not create {}: {}",
                socket.display(),
                std::fs::read_to_string(bus.dir.path().join("dbus.log")).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        bus
    }

    pub fn secret_tool(&self, args: &[&str], stdin: Option<&[u8]>) -> Output {
        let mut child = self
            .command("secret-tool")
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot run secret-tool ({e}): {INSTALL}"));
        let mut input = child.stdin.take().unwrap();
        if let Some(bytes) = stdin {
            input.write_all(bytes).unwrap();
        }
        drop(input);
        wait_bounded(child, Duration::from_secs(20), "secret-tool")
    }

    /// Stores an item the way another tool would: `secret-tool store service S ATTR ACCOUNT`.
    pub fn seed(&self, service: &str, attr: &str, account: &str, value: &[u8]) {
        let out = self.secret_tool(
            &[
                "store",
                "--label=seeded by test",
                "service",
                service,
                attr,
                account,
            ],
            Some(value),
        );
        assert!(
            out.status.success(),
            "secret-tool store failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// `secret-tool lookup service S username ACCOUNT`: the value, or None when absent.
    pub fn lookup(&self, service: &str, account: &str) -> Option<Vec<u8>> {
        let out = self.secret_tool(&["lookup", "service", service, "username", account], None);
        out.status.success().then_some(out.stdout)
    }
}

impl Drop for Bus {
    fn drop(&mut self) {
        for child in [self.keyring.take(), self.dbus.take()]
            .into_iter()
            .flatten()
        {
            let mut child = child;
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

pub fn current_exe() -> String {
    std::env::current_exe().unwrap().display().to_string()
}

pub fn wait_bounded(mut child: Child, limit: Duration, what: &str) -> Output {
    let deadline = Instant::now() + limit;
    loop {
        if child.try_wait().unwrap().is_some() {
            return child.wait_with_output().unwrap();
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let out = child.wait_with_output().unwrap();
            panic!(
                "{what} did not finish within {limit:?}\nstdout: {}\nstderr: {}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Runs `cmd` (this test binary) with a filter for exactly one `#[ignore]`d test `full` and
/// `inner_var=1` set, and asserts that it ran (not filtered away, not ignored), passed, printed
/// `done_marker`, and that nothing it printed holds `canary`.
pub fn run_child(mut cmd: Command, full: &str, inner_var: &str, done_marker: &str, canary: &str) {
    let child = cmd
        .args([
            "--exact",
            full,
            "--ignored",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(inner_var, "1")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let out = wait_bounded(child, Duration::from_secs(120), full);
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success() && stdout.contains("1 passed") && stdout.contains(done_marker),
        "inner test {full} failed or did not run\nstdout: {stdout}\nstderr: {stderr}"
    );
    // Nothing the child printed (panics included) holds the canary.
    assert!(
        !stdout.contains(canary) && !stderr.contains(canary),
        "the canary leaked into {full}'s output"
    );
}
