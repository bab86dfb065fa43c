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
    s.set("KZ_TEST_SRC", CANARY);
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
            "https://x.test/",
            "--",
            "true",
        ])
        .code(2);
    assert!(r.stderr.contains("--allow-host"), "{}", r.stderr);
}
