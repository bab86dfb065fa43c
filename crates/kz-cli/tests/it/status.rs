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
