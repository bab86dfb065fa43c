//! `kz status`: report without ever printing a value.

use crate::util::{CANARY, Sandbox};

#[test]
fn text_and_json_reports_without_values() {
    let s = Sandbox::with_config(
        "[secrets]\nOK = \"local://proj/OK\"\nBAD = \"local://proj/BAD\"\nOPT = { provider = \"env\", ref = \"KZ_NONE\", optional = true }\n",
    );
    s.put("OK", CANARY);
    let r = s.kz(&["status"]).code(1).no_canary();
    let ok_line = r.stdout.lines().find(|l| l.starts_with("OK ")).unwrap();
    assert!(
        ok_line.contains("local (local)") && ok_line.contains(" ok "),
        "{}",
        r.stdout
    );
    assert!(r.stdout.contains("error: not found"), "{}", r.stdout);
    assert!(r.stdout.contains("skipped (optional)"), "{}", r.stdout);
    // Not even the last four characters (0.3.0 printed them).
    assert!(
        !r.stdout.contains(&CANARY[CANARY.len() - 4..]),
        "{}",
        r.stdout
    );
    let v = s
        .kz(&["status", "--format", "json"])
        .code(1)
        .no_canary()
        .stdout_json();
    assert_eq!(v["version"], 1);
    assert_eq!(v["all_ok"], false);
    let ok = &v["secrets"][0];
    assert_eq!(
        (
            ok["name"].as_str(),
            ok["status"].as_str(),
            ok["resolver"].as_str()
        ),
        (Some("OK"), Some("ok"), Some("local"))
    );
    assert!(ok["latency_ms"].is_u64() && ok.get("error").is_none());
    assert_eq!(v["secrets"][1]["status"], "error");
    assert!(
        v["secrets"][1]["error"]
            .as_str()
            .unwrap()
            .contains("not found")
    );
    assert!(
        v["secrets"][1]["help"]
            .as_str()
            .unwrap()
            .contains("kz put BAD"),
        "{v}"
    );
    let v = s
        .kz(&["status", "--format", "json", "--only", "OK,OPT"])
        .ok()
        .stdout_json();
    assert_eq!(v["all_ok"], true);
}

#[test]
fn slow_plugin_hits_the_timeout_and_others_are_unaffected() {
    let s = Sandbox::with_config(
        "[providers.slow]\ntype = \"exec\"\ncommand = [\"sh\", \"-c\", \"sleep 5\"]\ntimeout = \"300ms\"\n[secrets]\nSLOW = { provider = \"slow\", ref = \"x\" }\nFAST = \"env://HOME\"\n",
    );
    let start = std::time::Instant::now();
    let v = s
        .kz(&["--trust", "status", "--format", "json"])
        .code(1)
        .stdout_json();
    assert!(
        start.elapsed() < std::time::Duration::from_secs(4),
        "the timeout did not cut the call short"
    );
    assert_eq!(v["secrets"][0]["status"], "error");
    assert!(
        v["secrets"][0]["error"]
            .as_str()
            .unwrap()
            .contains("no answer within 300ms"),
        "{v}"
    );
    assert_eq!(v["secrets"][1]["status"], "ok");
}

#[test]
fn status_shows_the_help_lines_run_shows() {
    let s = Sandbox::with_config("[secrets]\nBAD = \"local://proj/BAD\"\n");
    let run = s.kz(&["run", "--", "true"]).code(1);
    let help = run
        .stderr
        .lines()
        .find_map(|l| l.strip_prefix("help: "))
        .unwrap_or_else(|| panic!("kz run printed no help: {}", run.stderr))
        .to_string();
    let r = s.kz(&["status"]).code(1);
    assert!(
        r.stdout.contains(&format!("help: BAD: {help}")),
        "{}",
        r.stdout
    );
}

#[test]
fn a_missing_store_key_is_reported_once() {
    let s = Sandbox::with_config(
        "[secrets]\nA = \"local://proj/A\"\nB = \"local://proj/B\"\nC = \"local://proj/C\"\n",
    );
    for n in ["A", "B", "C"] {
        s.put(n, CANARY);
    }
    std::fs::remove_file(s.root.path().join("config/keyzero/identity.txt")).unwrap();
    let r = s.kz(&["run", "--", "true"]).code(1).no_canary();
    assert_eq!(
        r.stderr.matches("identity.txt").count(),
        1,
        "one error for the three secrets: {}",
        r.stderr
    );
    assert!(r.stderr.contains("A, B, C:"), "{}", r.stderr);
    assert!(
        r.stderr.contains("Backing up the local store"),
        "points to the backup section: {}",
        r.stderr
    );
    assert_eq!(r.stderr.matches("help:").count(), 1, "{}", r.stderr);
    let r = s.kz(&["put", "--missing"]).code(1).no_canary();
    assert_eq!(
        r.stderr.matches("identity.txt").count(),
        1,
        "kz put --missing lists it once too: {}",
        r.stderr
    );
    let r = s.kz(&["status"]).code(1).no_canary();
    assert_eq!(r.stdout.matches("help:").count(), 1, "{}", r.stdout);
    assert!(r.stdout.contains("help: A, B, C: "), "{}", r.stdout);
}
