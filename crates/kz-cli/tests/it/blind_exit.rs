//! `kz run --blind` as a parent: exit codes, signals forwarded, and the run's CA directory
//! removed on every way out (normal exit, a signal to kz, a command that cannot start).

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::Stdio;
use std::time::{Duration, Instant};

use crate::util::{CANARY, Sandbox};

fn project() -> Sandbox {
    let mut s = Sandbox::with_config(
        "[secrets]\nAPI_TOKEN = { provider = \"env\", ref = \"KZ_TEST_SRC\", hosts = [\"api.example.com\"] }\n",
    );
    // Blind mode needs a trusted configuration (trust.rs tests that part).
    s.set("KZ_TEST_SRC", CANARY).set("KEYZERO_TRUST", "1");
    s
}

#[test]
fn exit_code_is_the_commands_and_the_ca_directory_is_gone_afterwards() {
    let s = project();
    let r = s
        .kz(&[
            "run",
            "--blind",
            "--",
            "sh",
            "-c",
            "echo \"$SSL_CERT_FILE\"; exit 7",
        ])
        .code(7)
        .no_canary();
    let bundle = PathBuf::from(r.stdout.trim());
    assert!(bundle.ends_with("ca.pem"), "{}", r.stdout);
    let dir = bundle.parent().unwrap();
    assert!(!dir.exists(), "{} was left behind", dir.display());
}

#[test]
fn a_signal_to_kz_reaches_the_command_and_the_directory_is_removed() {
    let s = project();
    let mut child = s
        .cmd(&[
            "run",
            "--blind",
            "--",
            "sh",
            "-c",
            "trap 'exit 42' TERM; echo \"$SSL_CERT_FILE\"; while :; do sleep 0.05; done",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let dir = PathBuf::from(line.trim()).parent().unwrap().to_path_buf();
    assert!(
        dir.is_dir(),
        "the CA directory exists while the command runs"
    );
    let pid = rustix::process::Pid::from_child(&child);
    rustix::process::kill_process(pid, rustix::process::Signal::TERM).unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    let status = loop {
        if let Some(st) = child.try_wait().unwrap() {
            break st;
        }
        assert!(Instant::now() < deadline, "kz did not exit after SIGTERM");
        std::thread::sleep(Duration::from_millis(20));
    };
    assert_eq!(
        status.code(),
        Some(42),
        "the command's trap ran and its code came back"
    );
    assert!(!dir.exists(), "{} was left behind", dir.display());
}

#[test]
fn a_command_that_does_not_exist_is_127_and_leaves_nothing() {
    let mut s = project();
    let tmp = s.root.path().join("tmp");
    std::fs::create_dir_all(&tmp).unwrap();
    s.set("TMPDIR", tmp.to_str().unwrap());
    let r = s
        .kz(&["run", "--blind", "--", "kz-no-such-command-x"])
        .code(127)
        .no_canary();
    assert!(r.stderr.contains("command not found"), "{}", r.stderr);
    let left: Vec<_> = std::fs::read_dir(&tmp).unwrap().collect();
    assert!(left.is_empty(), "left behind: {left:?}");
}

#[test]
fn verbose_prints_bindings_and_a_summary_without_values() {
    let s = project();
    let r = s
        .kz(&["-v", "run", "--blind", "--", "true"])
        .ok()
        .no_canary();
    assert!(
        r.stderr.contains("API_TOKEN -> api.example.com"),
        "{}",
        r.stderr
    );
    assert!(r.stderr.contains("0 request(s)"), "{}", r.stderr);
}

#[test]
fn keep_env_without_clean_env_or_blind_is_a_usage_error() {
    let s = project();
    let r = s.kz(&["run", "--keep-env", "X", "--", "true"]).code(2);
    assert!(r.stderr.contains("--keep-env only applies"), "{}", r.stderr);
}

#[test]
fn bad_allow_host_is_a_usage_error_naming_the_pattern() {
    let s = project();
    let r = s
        .kz(&[
            "run",
            "--blind",
            "--allow-host",
            "https://x.test/path",
            "--",
            "true",
        ])
        .code(2);
    assert!(r.stderr.contains("--allow-host"), "{}", r.stderr);
    assert!(r.stderr.contains("https://x.test/path"), "{}", r.stderr);
}

/// The command runs as the same user as kz: it must not be able to read kz's environment
/// (provider credentials) or memory (values, the CA key) through /proc. Run as `nobody` when
/// the tests run as root (root could read any process).
#[test]
fn the_command_cannot_read_kz_through_proc() {
    use std::os::unix::fs::PermissionsExt;
    let is_root = rustix::process::getuid().is_root();
    let dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let config = dir.path().join(".keyzero.toml");
    std::fs::write(
        &config,
        "[secrets]\nAPI_TOKEN = { provider = \"env\", ref = \"KZ_TEST_SRC\", hosts = [\"api.example.com\"] }\n",
    )
    .unwrap();
    std::fs::set_permissions(&config, std::fs::Permissions::from_mode(0o644)).unwrap();
    // Control: a same-user sibling's environment is readable (so a denial below means
    // something), then kz's own.
    let script = "sleep 5 & s=$!; \
        if cat /proc/$s/environ >/dev/null 2>&1; then echo sibling=readable; else echo sibling=denied; fi; \
        kill $s; \
        if cat /proc/$PPID/environ >/dev/null 2>&1; then echo environ=readable; else echo environ=denied; fi; \
        if head -c1 /proc/$PPID/mem >/dev/null 2>&1; then echo mem=readable; else echo mem=denied; fi";
    let kz = crate::util::kz_bin();
    let mut cmd = if is_root {
        let mut c = std::process::Command::new("setpriv");
        c.args(["--reuid=65534", "--regid=65534", "--clear-groups", "--"]);
        c.arg(&kz);
        c
    } else {
        std::process::Command::new(&kz)
    };
    let out = cmd
        .args(["run", "--blind", "--config"])
        .arg(&config)
        .args(["--", "sh", "-c", script])
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("HOME", dir.path())
        .env("TMPDIR", "/tmp")
        .env("KZ_TEST_SRC", CANARY)
        .env("KEYZERO_TRUST", "1")
        .current_dir(dir.path())
        .output()
        .expect("setpriv (util-linux) runs; install it with scripts/test");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stdout}\n{stderr}");
    assert!(
        stdout.contains("sibling=readable"),
        "control failed: {stdout}"
    );
    assert!(stdout.contains("environ=denied"), "{stdout}");
    assert!(stdout.contains("mem=denied"), "{stdout}");
    assert!(!stdout.contains(CANARY) && !stderr.contains(CANARY));
}

#[test]
fn blind_isolate_in_the_config_isolates_without_the_flag() {
    let mut s = Sandbox::with_config(
        "[secrets]\nAPI_TOKEN = { provider = \"env\", ref = \"KZ_TEST_SRC\", hosts = [\"api.example.com\"] }\n\
         [blind]\nisolate = true\n",
    );
    // Blind mode needs a trusted configuration (trust.rs tests that part).
    s.set("KZ_TEST_SRC", CANARY).set("KEYZERO_TRUST", "1");
    let r = s
        .kz(&["run", "--blind", "--", "cat", "/proc/net/dev"])
        .ok()
        .no_canary();
    let interfaces: Vec<&str> = r
        .stdout
        .lines()
        .skip(2)
        .filter_map(|l| l.split(':').next())
        .map(str::trim)
        .collect();
    assert_eq!(interfaces, ["lo"], "{}", r.stdout);
}

#[test]
fn an_unreadable_upstream_ca_stops_the_run_naming_the_file() {
    let mut s = Sandbox::with_config(
        "[secrets]\nAPI_TOKEN = { provider = \"env\", ref = \"KZ_TEST_SRC\", hosts = [\"api.example.com\"] }\n\
         [blind]\nupstream_ca = \"/nonexistent/kz-test-ca.pem\"\n",
    );
    // Blind mode needs a trusted configuration (trust.rs tests that part).
    s.set("KZ_TEST_SRC", CANARY).set("KEYZERO_TRUST", "1");
    let r = s
        .kz(&["run", "--blind", "--", "touch", "started"])
        .code(1)
        .no_canary();
    assert!(
        r.stderr.contains("/nonexistent/kz-test-ca.pem"),
        "{}",
        r.stderr
    );
    assert!(
        !s.project.join("started").exists(),
        "the command must not start"
    );
}

#[test]
fn an_unwritable_audit_log_stops_the_run_before_the_command() {
    let s = project();
    let r = s
        .kz(&[
            "run",
            "--blind",
            "--audit",
            "/nonexistent-dir/audit.jsonl",
            "--",
            "touch",
            "started",
        ])
        .code(1)
        .no_canary();
    assert!(
        r.stderr.contains("/nonexistent-dir/audit.jsonl"),
        "{}",
        r.stderr
    );
    assert!(
        !s.project.join("started").exists(),
        "the command must not start"
    );
}

#[test]
fn a_value_over_the_blind_mode_limit_stops_the_run_naming_the_secret_and_the_limit() {
    let mut s = Sandbox::with_config(
        "[providers.dotenv]\npath = \"big.env\"\n\
         [secrets]\nBIG_KEY = { provider = \"dotenv\", ref = \"BIG_KEY\", hosts = [\"api.example.com\"] }\n",
    );
    s.set("KEYZERO_TRUST", "1");
    s.write(
        "big.env",
        &format!("BIG_KEY={}\n", "k".repeat((1 << 20) + 1)),
    );
    let r = s.kz(&["run", "--blind", "--", "touch", "started"]).code(1);
    assert!(
        r.stderr.contains("BIG_KEY") && r.stderr.contains("1048576 bytes"),
        "{}",
        r.stderr
    );
    assert!(
        !s.project.join("started").exists(),
        "the command must not start"
    );
    // At the limit it starts.
    s.write("big.env", &format!("BIG_KEY={}\n", "k".repeat(1 << 20)));
    s.kz(&["run", "--blind", "--", "touch", "started"]).code(0);
    assert!(s.project.join("started").exists());
}
