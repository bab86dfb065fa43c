//! The test harness: a sandbox per test (its own HOME, XDG directories and project), the real
//! `kz` binary run with a cleared environment, and the leak canary.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

/// A value seeded into backends; it must never appear where it does not belong.
pub const CANARY: &str = "kz-canary-9f2c4e71d0b8";

/// The `kz` binary under test.
pub fn kz_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_kz"))
}

/// One test's world.
pub struct Sandbox {
    pub root: tempfile::TempDir,
    pub project: PathBuf,
    pub env: BTreeMap<String, String>,
}

impl Sandbox {
    /// An empty project called `proj` with private HOME and XDG directories.
    pub fn new() -> Self {
        let root = tempfile::tempdir().unwrap();
        let project = root.path().join("proj");
        std::fs::create_dir_all(&project).unwrap();
        let home = root.path().join("home");
        std::fs::create_dir_all(&home).unwrap();
        let mut env = BTreeMap::new();
        env.insert("PATH".into(), std::env::var("PATH").unwrap_or_default());
        env.insert("HOME".into(), home.display().to_string());
        env.insert(
            "XDG_CONFIG_HOME".into(),
            root.path().join("config").display().to_string(),
        );
        env.insert(
            "XDG_DATA_HOME".into(),
            root.path().join("data").display().to_string(),
        );
        env.insert(
            "XDG_CACHE_HOME".into(),
            root.path().join("cache").display().to_string(),
        );
        env.insert("LANG".into(), "C".into());
        env.insert("NO_COLOR".into(), "1".into());
        Self { root, project, env }
    }

    /// A project with this `.keyzero.toml`.
    pub fn with_config(text: &str) -> Self {
        let s = Self::new();
        s.write(".keyzero.toml", text);
        s
    }

    pub fn path(&self, rel: &str) -> PathBuf {
        self.project.join(rel)
    }

    pub fn write(&self, rel: &str, text: &str) -> PathBuf {
        let p = self.path(rel);
        if let Some(d) = p.parent() {
            std::fs::create_dir_all(d).unwrap();
        }
        std::fs::write(&p, text).unwrap();
        p
    }

    pub fn read(&self, rel: &str) -> String {
        std::fs::read_to_string(self.path(rel)).unwrap()
    }

    pub fn set(&mut self, k: &str, v: &str) -> &mut Self {
        self.env.insert(k.into(), v.into());
        self
    }

    /// A `kz` command in the project directory with only the sandbox's environment.
    pub fn cmd(&self, args: &[&str]) -> Command {
        let mut c = Command::new(kz_bin());
        c.args(args)
            .current_dir(&self.project)
            .env_clear()
            .envs(&self.env);
        c
    }

    /// Runs `kz` with no stdin.
    pub fn kz(&self, args: &[&str]) -> Run {
        Run::from(self.cmd(args).stdin(Stdio::null()).output().unwrap())
    }

    /// Runs `kz` with `input` on stdin.
    pub fn kz_stdin(&self, args: &[&str], input: &str) -> Run {
        let mut child = self
            .cmd(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        // kz may exit before reading (an error found first): a broken pipe is fine.
        let _ = child.stdin.take().unwrap().write_all(input.as_bytes());
        Run::from(child.wait_with_output().unwrap())
    }

    /// Stores a value in the local store under the mapping `name` (must be mapped).
    pub fn put(&self, name: &str, value: &str) {
        self.kz_stdin(&["put", name, "--stdin"], value).ok();
    }

    /// Every file under the sandbox whose content contains the canary, except `allowed`.
    pub fn files_with_canary(&self, allowed: &[&Path]) -> Vec<PathBuf> {
        let mut hits = Vec::new();
        let mut stack = vec![self.root.path().to_path_buf()];
        while let Some(d) = stack.pop() {
            for e in std::fs::read_dir(&d).unwrap().flatten() {
                let p = e.path();
                if p.is_dir() {
                    stack.push(p);
                } else if !allowed.contains(&p.as_path()) {
                    let bytes = std::fs::read(&p).unwrap_or_default();
                    if bytes.windows(CANARY.len()).any(|w| w == CANARY.as_bytes()) {
                        hits.push(p);
                    }
                }
            }
        }
        hits
    }
}

/// A finished `kz` run.
pub struct Run {
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
}

impl From<Output> for Run {
    fn from(o: Output) -> Self {
        Self {
            code: o.status.code(),
            stdout: String::from_utf8_lossy(&o.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&o.stderr).into_owned(),
        }
    }
}

impl Run {
    /// Asserts exit code 0 and returns self.
    #[track_caller]
    pub fn ok(self) -> Self {
        assert_eq!(
            self.code,
            Some(0),
            "expected success\nstdout:\n{}\nstderr:\n{}",
            self.stdout,
            self.stderr
        );
        self
    }

    /// Asserts this exit code and returns self.
    #[track_caller]
    pub fn code(self, code: i32) -> Self {
        assert_eq!(
            self.code,
            Some(code),
            "expected exit {code}\nstdout:\n{}\nstderr:\n{}",
            self.stdout,
            self.stderr
        );
        self
    }

    /// Asserts the canary is in neither stream.
    #[track_caller]
    pub fn no_canary(self) -> Self {
        assert!(
            !self.stdout.contains(CANARY),
            "canary leaked to stdout:\n{}",
            self.stdout
        );
        assert!(
            !self.stderr.contains(CANARY),
            "canary leaked to stderr:\n{}",
            self.stderr
        );
        self
    }

    /// The lines of stderr parsed as JSON.
    pub fn stderr_json(&self) -> Vec<serde_json::Value> {
        self.stderr
            .lines()
            .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON: {l}: {e}")))
            .collect()
    }

    pub fn stdout_json(&self) -> serde_json::Value {
        serde_json::from_str(&self.stdout)
            .unwrap_or_else(|e| panic!("stdout is not JSON: {e}\n{}", self.stdout))
    }
}

/// Replaces the sandbox's paths with stable placeholders for snapshots.
pub fn scrub(s: &Sandbox, text: &str) -> String {
    text.replace(&s.project.display().to_string(), "[PROJECT]")
        .replace(&s.root.path().display().to_string(), "[ROOT]")
}

/// An EC P-256 key pair in the sandbox: (private key path, public key PEM).
pub fn es256_key(s: &Sandbox, name: &str) -> (String, String) {
    let private = s.path(&format!("{name}.pem"));
    let public = s.path(&format!("{name}.pub.pem"));
    let ok = Command::new("openssl")
        .args([
            "genpkey",
            "-algorithm",
            "EC",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-out",
        ])
        .arg(&private)
        .status()
        .unwrap()
        .success();
    assert!(ok, "openssl genpkey");
    let ok = Command::new("openssl")
        .args(["pkey", "-pubout", "-in"])
        .arg(&private)
        .arg("-out")
        .arg(&public)
        .status()
        .unwrap()
        .success();
    assert!(ok, "openssl pkey -pubout");
    (
        private.display().to_string(),
        std::fs::read_to_string(public).unwrap(),
    )
}

/// `text` with every line indented by `by` spaces (for PEM blocks in YAML).
pub fn indent(text: &str, by: usize) -> String {
    text.lines()
        .map(|l| format!("{}{l}\n", " ".repeat(by)))
        .collect()
}

/// Sends `signal` (a name such as `TERM`) to the process `pid` with kill(1); false when there
/// is no such process.
pub fn signal(pid: u32, signal: &str) -> bool {
    Command::new("kill")
        .arg(format!("-{signal}"))
        .arg(pid.to_string())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// Processes a test started in the background, each stopped by its recorded PID when the
/// guard drops (a failing assertion included): SIGTERM (kz drains, nginx's master stops its
/// workers), then SIGKILL for anything still there after 10 s.
#[derive(Default)]
pub struct Background {
    /// Our own children: waited for, so none is left a zombie.
    pub children: Vec<std::process::Child>,
    /// PIDs read from files (a process a script started with `&`).
    pub pids: Vec<u32>,
}

impl Background {
    /// Stops one child by its PID with SIGTERM and waits for it (SIGKILL after 10 s); its exit
    /// status, `None` when it had to be killed.
    pub fn stop(child: &mut std::process::Child) -> Option<std::process::ExitStatus> {
        if let Ok(Some(status)) = child.try_wait() {
            return Some(status);
        }
        signal(child.id(), "TERM");
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while std::time::Instant::now() < deadline {
            if let Ok(Some(status)) = child.try_wait() {
                return Some(status);
            }
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        let _ = child.kill();
        let _ = child.wait();
        None
    }
}

impl Drop for Background {
    fn drop(&mut self) {
        for child in &mut self.children {
            Self::stop(child);
        }
        for &pid in &self.pids {
            if signal(pid, "TERM") {
                let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
                while std::time::Instant::now() < deadline && signal(pid, "0") {
                    std::thread::sleep(std::time::Duration::from_millis(50));
                }
                signal(pid, "KILL");
            }
        }
    }
}
