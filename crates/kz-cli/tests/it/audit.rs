//! `kz audit verify`: the hash chain of audit logs written by `kz-audit`.

use kz_audit::{Decision, Record, Transport, Writer};

use crate::util::Sandbox;

fn write_log(path: &std::path::Path, n: usize) {
    let w = Writer::open(path).unwrap();
    for i in 0..n {
        w.append_blocking(
            Record::new(Transport::Blind)
                .method("GET")
                .host("api.example.com")
                .path(format!("/v1/items/{i}"))
                .secrets(["API_KEY"])
                .decision(Decision::Allow),
        )
        .unwrap();
    }
    w.close().unwrap();
}

#[test]
fn verify_accepts_an_intact_chain_and_names_the_first_broken_record() {
    let s = Sandbox::new();
    let log = s.path("audit.jsonl");
    write_log(&log, 5);
    let r = s.kz(&["audit", "verify", "audit.jsonl"]).ok();
    assert!(
        r.stdout.starts_with("ok: 5 record(s) in 1 file(s)"),
        "{}",
        r.stdout
    );
    // Tamper with the third record.
    let text = std::fs::read_to_string(&log).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    let forged = lines[2].replace("/v1/items/2", "/v1/items/9");
    let tampered = [lines[0], lines[1], forged.as_str(), lines[3], lines[4]].join("\n") + "\n";
    std::fs::write(&log, tampered).unwrap();
    let r = s.kz(&["audit", "verify", "audit.jsonl"]).code(1);
    assert!(
        r.stderr.contains(":3") && r.stderr.contains("hash"),
        "{}",
        r.stderr
    );
    // A deleted record breaks the link at the next one.
    let without = [lines[0], lines[1], lines[3], lines[4]].join("\n") + "\n";
    std::fs::write(&log, without).unwrap();
    let r = s.kz(&["audit", "verify", "audit.jsonl"]).code(1);
    assert!(r.stderr.contains(":3"), "{}", r.stderr);
}

#[test]
fn verify_follows_the_chain_across_rotated_files() {
    let s = Sandbox::new();
    let log = s.path("audit.jsonl");
    let w = Writer::open(&log).unwrap();
    w.append_blocking(
        Record::new(Transport::Http)
            .decision(Decision::Deny)
            .reason("no policy matched"),
    )
    .unwrap();
    w.flush().unwrap();
    std::fs::rename(&log, s.path("audit.jsonl.1")).unwrap();
    w.reopen().unwrap();
    w.append_blocking(Record::new(Transport::Http).decision(Decision::Allow))
        .unwrap();
    w.close().unwrap();
    s.kz(&["audit", "verify", "audit.jsonl.1", "audit.jsonl"])
        .ok();
    // Out of order, or the newer file alone, the chain does not hold.
    s.kz(&["audit", "verify", "audit.jsonl", "audit.jsonl.1"])
        .code(1);
    s.kz(&["audit", "verify", "audit.jsonl"]).code(1);
    s.kz(&["audit", "verify", "missing.jsonl"]).code(1);
}
