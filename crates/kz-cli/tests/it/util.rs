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
