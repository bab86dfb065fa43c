#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]
//! Writing, continuing, rotating and verifying chains on real files.

mod common;

use std::collections::HashSet;
use std::sync::Arc;

use common::{lines, paths, record, write_records};
use kz_audit::{
    AuditError, Decision, GENESIS, Problem, Record, Transport, VerifyError, Writer, verify,
    verify_from,
};
use proptest::prelude::*;
use serde_json::Value;

#[test]
fn many_records_form_a_valid_chain() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("audit.jsonl");
    write_records(&path, 0, 500);
    let summary = verify(&paths(&[&path])).unwrap();
    assert_eq!(summary.records, 500);
    assert_eq!(summary.files, 1);
    let all = lines(&path);
    let first: Value = serde_json::from_str(&all[0]).unwrap();
    let last: Value = serde_json::from_str(&all[499]).unwrap();
    assert_eq!(first["prev"], GENESIS);
    assert_eq!(last["hash"], summary.last_hash.as_str());
    assert_eq!(first["v"], 1);
    assert_eq!(first["transport"], "http");
    assert_eq!(first["decision"], "allow");
    assert_eq!(first["reason"], "r0");
    assert!(first.get("sub").is_none(), "unset fields are omitted");
    // ts: RFC 3339 UTC with microseconds.
    let ts = first["ts"].as_str().unwrap();
    assert_eq!(ts.len(), "2024-01-01T00:00:00.000000Z".len(), "{ts}");
    assert!(ts.ends_with('Z') && ts.as_bytes()[19] == b'.', "{ts}");
    humantime::parse_rfc3339(ts).unwrap();
    // ids: 128-bit hex, unique.
    let ids: HashSet<String> = all
        .iter()
        .map(|l| {
            serde_json::from_str::<Value>(l).unwrap()["id"]
                .as_str()
                .unwrap()
                .to_owned()
        })
        .collect();
    assert_eq!(ids.len(), 500);
    assert!(
        ids.iter()
            .all(|i| i.len() == 32 && i.bytes().all(|b| b.is_ascii_hexdigit()))
    );
}

#[test]
fn blind_event_fields() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("blind.jsonl");
    let writer = Writer::open(&path).unwrap();
    writer
        .try_append(
            Record::new(Transport::Blind)
                .method("POST")
                .host("api.github.com")
                .path("/repos/x?access_token=kz-canary-query")
                .secrets(["GH_TOKEN"])
                .decision(Decision::Deny)
                .reason("kz-canary-reason-7f3a"),
        )
        .unwrap();
    writer.close().unwrap();
    let text = std::fs::read_to_string(&path).unwrap();
    assert!(text.contains("kz-canary-reason-7f3a"), "reason is recorded");
    assert!(
        !text.contains("kz-canary-query"),
        "query strings are cut off"
    );
    let v: Value = serde_json::from_str(text.trim_end()).unwrap();
    assert_eq!(v["transport"], "blind");
    assert_eq!(v["method"], "POST");
    assert_eq!(v["host"], "api.github.com");
    assert_eq!(v["path"], "/repos/x");
    assert_eq!(v["secrets"], serde_json::json!(["GH_TOKEN"]));
    verify(&paths(&[&path])).unwrap();
}

#[cfg(unix)]
#[test]
fn file_is_created_with_mode_0600() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("audit.jsonl");
    write_records(&path, 0, 1);
    let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
}

#[test]
fn reopening_an_existing_file_continues_its_chain() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("audit.jsonl");
    write_records(&path, 0, 3);
    let before = verify(&paths(&[&path])).unwrap();
    write_records(&path, 3, 4);
    let all = lines(&path);
    assert_eq!(all.len(), 7);
    let fourth: Value = serde_json::from_str(&all[3]).unwrap();
    assert_eq!(fourth["prev"], before.last_hash.as_str());
    assert_eq!(verify(&paths(&[&path])).unwrap().records, 7);
    // An empty existing file starts a new chain.
    let empty = dir.path().join("empty.jsonl");
    std::fs::write(&empty, "").unwrap();
    write_records(&empty, 0, 2);
    assert_eq!(verify(&paths(&[&empty])).unwrap().records, 2);
}

#[test]
fn opening_a_file_with_a_bad_last_line_is_refused_with_its_line() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("audit.jsonl");
    write_records(&path, 0, 3);
    let mut text = std::fs::read_to_string(&path).unwrap();
    text.push_str("{\"torn\":");
    std::fs::write(&path, &text).unwrap();
    let err = Writer::open(&path).unwrap_err();
    match &err {
        AuditError::Corrupt { line, problem, .. } => {
            assert_eq!(*line, 4);
            assert_eq!(*problem, Problem::Truncated);
        }
        other => panic!("unexpected {other:?}"),
    }
    let msg = err.to_string();
    assert!(msg.contains("audit.jsonl, line 4"), "{msg}");
    assert!(!err.help().is_empty());

    // A complete but tampered last line is refused too.
    let mut lines = lines(&path);
    lines.pop();
    let last = lines.pop().unwrap().replace("\"r2\"", "\"rX\"");
    lines.push(last);
    common::write_lines(&path, &lines);
    match Writer::open(&path).unwrap_err() {
        AuditError::Corrupt {
            line: 3,
            problem: Problem::BadHash { .. },
            ..
        } => {}
        other => panic!("unexpected {other:?}"),
    }
}

#[test]
fn rotation_continues_the_chain_across_files() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("audit.jsonl");
    let rotated = dir.path().join("audit.jsonl.1");
    let writer = Writer::open(&path).unwrap();
    for n in 0..5 {
        writer.try_append(record(n)).unwrap();
    }
    writer.flush().unwrap();
    std::fs::rename(&path, &rotated).unwrap();
    // Records accepted between the rename and the reopen go to the old file.
    writer.try_append(record(5)).unwrap();
    writer.reopen().unwrap();
    for n in 6..10 {
        writer.try_append(record(n)).unwrap();
    }
    writer.close().unwrap();

    assert_eq!(lines(&rotated).len(), 6);
    assert_eq!(lines(&path).len(), 4);
    let old = verify(&paths(&[&rotated])).unwrap();
    let both = verify(&paths(&[&rotated, &path])).unwrap();
    assert_eq!((both.records, both.files), (10, 2));
    let first_new: Value = serde_json::from_str(&lines(&path)[0]).unwrap();
    assert_eq!(first_new["prev"], old.last_hash.as_str());

    // The new file alone is not a chain from genesis, but verifies from the old file's end.
    match verify(&paths(&[&path])).unwrap_err() {
        VerifyError::Broken {
            line: 1,
            problem: Problem::BrokenLink { .. },
            ..
        } => {}
        other => panic!("unexpected {other:?}"),
    }
    assert_eq!(
        verify_from(&paths(&[&path]), &old.last_hash)
            .unwrap()
            .records,
        4
    );
    // Out of order is caught at the first line of the file that comes too early.
    match verify(&paths(&[&path, &rotated])).unwrap_err() {
        VerifyError::Broken {
            path: p, line: 1, ..
        } => assert_eq!(p, path),
        other => panic!("unexpected {other:?}"),
    }
    assert!(matches!(
        verify_from(&paths(&[&path]), "nope"),
        Err(VerifyError::BadStart(_))
    ));
}

#[test]
fn concurrent_appends_all_land_in_one_valid_chain() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("audit.jsonl");
    let writer = Arc::new(Writer::open_with_capacity(&path, 16).unwrap());
    let threads: Vec<_> = (0..6)
        .map(|t| {
            let writer = Arc::clone(&writer);
            std::thread::spawn(move || {
                for n in 0..300 {
                    writer.append_blocking(record(t * 1000 + n)).unwrap();
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    writer.flush().unwrap();
    let summary = verify(&paths(&[&path])).unwrap();
    assert_eq!(summary.records, 1800);
    let reasons: HashSet<String> = lines(&path)
        .iter()
        .map(|l| {
            serde_json::from_str::<Value>(l).unwrap()["reason"]
                .as_str()
                .unwrap()
                .to_owned()
        })
        .collect();
    let expected: HashSet<String> = (0..6)
        .flat_map(|t| (0..300).map(move |n| format!("r{}", t * 1000 + n)))
        .collect();
    assert_eq!(reasons, expected);
}

#[test]
fn unopenable_path_names_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("missing-dir").join("audit.jsonl");
    let err = Writer::open(&path).unwrap_err();
    assert!(matches!(err, AuditError::Open { .. }));
    assert!(err.to_string().contains("missing-dir"), "{err}");
    let err = verify(&paths(&[&path])).unwrap_err();
    assert!(matches!(err, VerifyError::Io { .. }));
    assert!(err.to_string().contains("missing-dir"), "{err}");
}

fn text() -> impl Strategy<Value = String> {
    prop_oneof![
        any::<String>(),
        "[\"\\\\\u{0}-\u{1f}\u{7f}\u{2028}\u{2029}\u{fb33}\u{1f600}a-z ]{0,24}",
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]

    #[test]
    fn written_records_verify_and_round_trip(
        fields in proptest::collection::vec((text(), text(), text(), text()), 1..6),
        claim_key in text(),
    ) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.jsonl");
        let writer = Writer::open(&path).unwrap();
        for (sub, reason, reference, host) in &fields {
            let mut claims = serde_json::Map::new();
            claims.insert(claim_key.clone(), Value::String(reason.clone()));
            writer.try_append(
                Record::new(Transport::Mcp)
                    .subject(sub.clone())
                    .reason(reason.clone())
                    .reference(reference.clone())
                    .host(host.clone())
                    .claims(claims),
            ).unwrap();
        }
        writer.close().unwrap();
        let summary = verify(&paths(&[&path])).unwrap();
        prop_assert_eq!(summary.records, fields.len() as u64);
        let text = std::fs::read_to_string(&path).unwrap();
        for ((sub, reason, reference, host), line) in fields.iter().zip(text.lines()) {
            let v: Value = serde_json::from_str(line).unwrap();
            prop_assert_eq!(v["sub"].as_str().unwrap(), sub.as_str());
            prop_assert_eq!(v["reason"].as_str().unwrap(), reason.as_str());
            prop_assert_eq!(v["ref"].as_str().unwrap(), reference.as_str());
            prop_assert_eq!(v["host"].as_str().unwrap(), host.as_str());
            prop_assert_eq!(v["claims"][claim_key.as_str()].as_str().unwrap(), reason.as_str());
        }
    }
}

#[test]
fn writer_is_shareable_and_stdout_opens() {
    fn shareable<T: Send + Sync>() {}
    shareable::<Writer>();
    let writer = Writer::open("-").unwrap();
    assert!(writer.health().is_ok());
    assert!(format!("{writer:?}").contains("stdout"));
    writer.reopen().unwrap();
    writer.close().unwrap();
}

#[test]
fn a_link_planted_at_the_audit_path_is_never_followed() {
    let dir = tempfile::tempdir().unwrap();
    let target = dir.path().join("elsewhere.sh");
    let path = dir.path().join("audit.jsonl");
    std::os::unix::fs::symlink(&target, &path).unwrap();
    assert!(Writer::open(&path).is_err());
    assert!(
        !target.exists(),
        "the audit log was written through the link"
    );
}
