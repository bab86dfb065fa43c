//! `kz run --mask` and `--watch`: kz as the parent of the command.

use std::io::{BufRead, BufReader};
use std::process::{Child, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use crate::util::{CANARY, Sandbox};

fn project() -> Sandbox {
    let s = Sandbox::with_config(
        "[providers.dotenv]\npath = \"vals.env\"\n[secrets]\nV = { provider = \"dotenv\", ref = \"V\" }\nSHORT = { provider = \"dotenv\", ref = \"SHORT\" }\n",
    );
    s.write("vals.env", &format!("V={CANARY}\nSHORT=abc\n"));
    s
}

#[test]
fn mask_replaces_values_even_split_across_writes() {
    let s = project();
    let half = CANARY.len() / 2;
    let script = format!(
        "printf 'out:%s|' \"$V\"; printf '%s' '{}'; sleep 0.2; printf '%s|short:%s\\n' '{}' \"$SHORT\"; printf 'err:%s\\n' \"$V\" >&2; exit 7",
        &CANARY[..half],
        &CANARY[half..]
    );
    let r = s
        .kz(&["run", "--mask", "--", "sh", "-c", &script])
        .code(7)
        .no_canary();
    assert_eq!(r.stdout, "out:****|****|short:abc\n");
    assert_eq!(r.stderr, "err:****\n");
    // Without --mask the value is there (the command sees it either way).
    let r = s.kz(&["run", "--", "sh", "-c", "printf %s \"$V\""]).ok();
    assert_eq!(r.stdout, CANARY);
}

/// Starts kz in the background with stdout piped into a channel of lines.
fn spawn(s: &Sandbox, args: &[&str]) -> (Child, mpsc::Receiver<String>) {
    use std::os::unix::process::CommandExt;
    let mut c = s
        .cmd(args)
        // Its own process group, which kz's children share: a test can stop them all.
        .process_group(0)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let out = c.stdout.take().unwrap();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(out).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    (c, rx)
}

fn expect_line(rx: &mpsc::Receiver<String>, want: &str) {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok(l) if l == want => return,
            Ok(_) => continue,
            Err(e) => panic!("no line {want:?}: {e}"),
        }
    }
}

fn kill(c: &Child, sig: &str) {
    let ok = std::process::Command::new("kill")
        .arg(format!("-{sig}"))
        .arg(c.id().to_string())
        .status()
        .unwrap();
    assert!(ok.success());
}

fn wait(c: &mut Child) -> Option<i32> {
    let deadline = Instant::now() + Duration::from_secs(15);
    while Instant::now() < deadline {
        if let Some(st) = c.try_wait().unwrap() {
            return st.code();
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = c.kill();
    panic!("kz did not exit");
}

// The trap is set before the start line, so a signal sent on seeing the line finds it.
const LOOP: &str = "trap 'echo got-usr1' USR1; echo \"start:$V\"; while :; do sleep 0.1; done";

#[test]
fn watch_restarts_on_change_and_forwards_signals() {
    let s = project();
    s.write("vals.env", "V=first-value\nSHORT=x\n");
    let (mut c, rx) = spawn(
        &s,
        &[
            "run", "--watch", "1s", "--grace", "2s", "--", "sh", "-c", LOOP,
        ],
    );
    expect_line(&rx, "start:first-value");
    // A signal from another process is forwarded.
    kill(&c, "USR1");
    expect_line(&rx, "got-usr1");
    // A changed value restarts the command.
    s.write("vals.env", "V=second-value\nSHORT=x\n");
    expect_line(&rx, "start:second-value");
    // SIGTERM reaches the command; kz exits with 128+15.
    kill(&c, "TERM");
    assert_eq!(wait(&mut c), Some(143));
}

#[test]
fn sighup_re_resolves_and_a_stubborn_child_is_killed_after_the_grace() {
    let s = project();
    s.write("vals.env", "V=one-one-one\nSHORT=x\n");
    let stubborn = "echo \"start:$V\"; trap '' TERM; while :; do sleep 0.1; done";
    let (mut c, rx) = spawn(
        &s,
        &[
            "run", "--watch", "1h", "--grace", "500ms", "--", "sh", "-c", stubborn,
        ],
    );
    expect_line(&rx, "start:one-one-one");
    s.write("vals.env", "V=two-two-two\nSHORT=x\n");
    kill(&c, "HUP");
    expect_line(&rx, "start:two-two-two");
    // The command ignores SIGTERM: stop kz and it together (the whole process group).
    let ok = std::process::Command::new("kill")
        .args(["-KILL", "--", &format!("-{}", c.id())])
        .status()
        .unwrap();
    assert!(ok.success());
    let _ = wait(&mut c);
}

#[test]
fn a_failed_re_resolve_keeps_the_command() {
    let s = project();
    s.write("vals.env", "V=steady-value\nSHORT=x\n");
    let (mut c, rx) = spawn(
        &s,
        &[
            "run",
            "--watch",
            "300ms",
            "--",
            "sh",
            "-c",
            "echo \"start:$V\"; sleep 2; echo done",
        ],
    );
    expect_line(&rx, "start:steady-value");
    std::fs::remove_file(s.path("vals.env")).unwrap();
    expect_line(&rx, "done");
    assert_eq!(wait(&mut c), Some(0));
    let mut err = String::new();
    std::io::Read::read_to_string(&mut c.stderr.take().unwrap(), &mut err).unwrap();
    assert!(err.contains("keeps running"), "{err}");
}

#[test]
fn missing_command_is_127_in_parent_mode() {
    let s = project();
    let r = s
        .kz(&["run", "--mask", "--", "no-such-command-kz"])
        .code(127);
    assert!(
        r.stderr.contains("no-such-command-kz: command not found"),
        "{}",
        r.stderr
    );
}

/// Runs kz under `script`, which gives it a real terminal, feeding `input` as keystrokes.
fn on_terminal(s: &Sandbox, kz_args: &str, input: &str) -> (Option<i32>, String) {
    let kz = crate::util::kz_bin();
    let mut c = std::process::Command::new("script")
        .args(["-qec", &format!("{} {kz_args}", kz.display()), "/dev/null"])
        .current_dir(&s.project)
        .env_clear()
        .envs(&s.env)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| {
            panic!("`script` (util-linux) is needed: apt-get install bsdutils: {e}")
        });
    let mut stdin = c.stdin.take().unwrap();
    std::thread::sleep(Duration::from_millis(300));
    std::io::Write::write_all(&mut stdin, input.as_bytes()).unwrap();
    let o = c.wait_with_output().unwrap();
    drop(stdin);
    (
        o.status.code(),
        String::from_utf8_lossy(&o.stdout).into_owned(),
    )
}

#[test]
fn mask_on_a_terminal_keeps_the_tty_colours_and_input() {
    let s = project();
    let script = r#"sh -c 'test -t 1 && echo is-a-tty; printf "\033[31m%s\033[0m\n" "$V"; read line; echo "got:$line"; exit 5'"#;
    let (code, out) = on_terminal(&s, &format!("run --mask -- {script}"), "typed-text\n");
    assert_eq!(code, Some(5), "{out}");
    assert!(
        out.contains("is-a-tty"),
        "the command did not get a terminal: {out:?}"
    );
    assert!(
        out.contains("\u{1b}[31m****\u{1b}[0m"),
        "colours or masking lost: {out:?}"
    );
    assert!(
        out.contains("got:typed-text"),
        "keystrokes did not reach the command: {out:?}"
    );
    assert!(!out.contains(CANARY));
}
