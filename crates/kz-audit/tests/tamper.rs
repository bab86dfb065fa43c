#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]
//! Every kind of tampering is reported at the right line.

mod common;

use std::path::{Path, PathBuf};

use common::{lines, paths, write_lines, write_records};
use kz_audit::{Problem, VerifyError, canonical_json, verify};
use serde_json::Value;
use sha2::{Digest, Sha256};

/// A fresh 20-record log and its lines.
fn fresh() -> (tempfile::TempDir, PathBuf, Vec<String>) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("audit.jsonl");
    write_records(&path, 0, 20);
    let l = lines(&path);
    (dir, path, l)
}

fn broken(path: &Path) -> (u64, Option<String>, Problem, String) {
    let err = verify(&paths(&[path])).unwrap_err();
    let msg = err.to_string();
    assert!(!err.help().is_empty());
    match err {
        VerifyError::Broken {
            line,
            id,
            problem,
            path: p,
        } => {
            assert_eq!(p, path);
            (line, id, problem, msg)
        }
        other => panic!("unexpected {other:?}"),
    }
}

fn id_of(line: &str) -> String {
    serde_json::from_str::<Value>(line).unwrap()["id"]
        .as_str()
        .unwrap()
        .to_owned()
}

/// Re-hashes a record as a forger would: correct hash, chosen prev.
fn forge(mut record: Value, prev: &str) -> String {
    let obj = record.as_object_mut().unwrap();
    obj.remove("hash");
    obj.insert("prev".into(), prev.into());
    let body = canonical_json(&record).unwrap();
    let hash: String = Sha256::digest(body.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    record
        .as_object_mut()
        .unwrap()
        .insert("hash".into(), hash.into());
    canonical_json(&record).unwrap()
}

#[test]
fn untouched_log_verifies() {
    let (_dir, path, _) = fresh();
    assert_eq!(verify(&paths(&[&path])).unwrap().records, 20);
}

#[test]
fn changed_value_is_a_bad_hash_at_its_line() {
    for field in [
        "\"r6\"",
        "\"prod/db/6\"",
        "\"ci-main\"",
        "\"allow\"",
        "\"latency_us\":6",
    ] {
        let (_dir, path, mut l) = fresh();
        let replacement = match field {
            "\"latency_us\":6" => "\"latency_us\":7".to_owned(),
            "\"allow\"" => "\"deny\"".to_owned(),
            other => format!("\"x{}", &other[1..]),
        };
        assert!(l[6].contains(field), "{field}");
        l[6] = l[6].replacen(field, &replacement, 1);
        write_lines(&path, &l);
        let (line, id, problem, msg) = broken(&path);
        assert_eq!(line, 7, "{field}");
        assert_eq!(id.as_deref(), Some(id_of(&l[6]).as_str()));
        assert!(
            matches!(problem, Problem::BadHash { .. }),
            "{field}: {problem:?}"
        );
        assert!(msg.contains("audit.jsonl:7: record "), "{msg}");
        assert!(msg.contains("bad hash"), "{msg}");
    }
}

#[test]
fn changed_prev_or_hash_is_detected() {
    let (_dir, path, mut l) = fresh();
    let v: Value = serde_json::from_str(&l[3]).unwrap();
    let hash = v["hash"].as_str().unwrap();
    l[3] = l[3].replace(hash, &"f".repeat(64));
    write_lines(&path, &l);
    let (line, _, problem, _) = broken(&path);
    assert_eq!(line, 4);
    assert!(matches!(problem, Problem::BadHash { .. }));
}

#[test]
fn deleted_line_is_a_broken_link_where_it_was() {
    let (_dir, path, mut l) = fresh();
    l.remove(4);
    write_lines(&path, &l);
    let (line, id, problem, msg) = broken(&path);
    assert_eq!(line, 5);
    assert_eq!(id.as_deref(), Some(id_of(&l[4]).as_str()));
    assert!(matches!(problem, Problem::BrokenLink { .. }), "{problem:?}");
    assert!(msg.contains("broken link"), "{msg}");

    let (_dir, path, mut l) = fresh();
    l.remove(0);
    write_lines(&path, &l);
    assert_eq!(broken(&path).0, 1, "deleting the first record is seen");
}

#[test]
fn reordered_lines_are_a_broken_link_at_the_first() {
    let (_dir, path, mut l) = fresh();
    l.swap(10, 11);
    write_lines(&path, &l);
    let (line, _, problem, _) = broken(&path);
    assert_eq!(line, 11);
    assert!(matches!(problem, Problem::BrokenLink { .. }));
}

#[test]
fn forged_line_with_wrong_prev_is_caught_at_the_forgery() {
    let (_dir, path, mut l) = fresh();
    let template: Value = serde_json::from_str(&l[2]).unwrap();
    let forged = forge(template, &"a".repeat(64));
    l.insert(3, forged.clone());
    write_lines(&path, &l);
    let (line, id, problem, _) = broken(&path);
    assert_eq!(line, 4);
    assert_eq!(id.as_deref(), Some(id_of(&forged).as_str()));
    match problem {
        Problem::BrokenLink { found, .. } => assert_eq!(found, "a".repeat(64)),
        other => panic!("{other:?}"),
    }
}

#[test]
fn forged_line_with_right_prev_breaks_the_next_link() {
    let (_dir, path, mut l) = fresh();
    let prev: Value = serde_json::from_str(&l[2]).unwrap();
    let forged = forge(
        serde_json::from_str::<Value>(&l[2].replace("\"r2\"", "\"forged\"")).unwrap(),
        prev["hash"].as_str().unwrap(),
    );
    l.insert(3, forged);
    write_lines(&path, &l);
    let (line, _, problem, _) = broken(&path);
    assert_eq!(line, 5);
    assert!(matches!(problem, Problem::BrokenLink { .. }));
}

#[test]
fn empty_malformed_truncated_and_reformatted_lines() {
    let (_dir, path, mut l) = fresh();
    l.insert(8, String::new());
    write_lines(&path, &l);
    let (line, id, problem, _) = broken(&path);
    assert_eq!((line, id, problem), (9, None, Problem::EmptyLine));

    let (_dir, path, mut l) = fresh();
    l[12] = "{\"id\": oops".into();
    write_lines(&path, &l);
    let (line, _, problem, _) = broken(&path);
    assert_eq!(line, 13);
    assert!(matches!(problem, Problem::MalformedJson(_)), "{problem:?}");

    let (_dir, path, mut l) = fresh();
    l[12] = "[1,2]".into();
    write_lines(&path, &l);
    assert_eq!(broken(&path).2, Problem::NotAnObject);

    let (_dir, path, l) = fresh();
    let mut text = l.join("\n");
    text.push('\n');
    text.truncate(text.len() - 1); // drop the final newline
    std::fs::write(&path, &text).unwrap();
    let (line, id, problem, _) = broken(&path);
    assert_eq!((line, problem), (20, Problem::Truncated));
    assert_eq!(id.as_deref(), Some(id_of(&l[19]).as_str()));

    let (_dir, path, mut l) = fresh();
    l[5] = l[5].replacen(",", ", ", 1);
    write_lines(&path, &l);
    let (line, _, problem, _) = broken(&path);
    assert_eq!((line, problem), (6, Problem::NotCanonical));

    // A duplicated member parses "fine" for serde_json (last wins), but is not canonical.
    let (_dir, path, mut l) = fresh();
    l[5] = l[5].replacen("{", "{\"reason\":\"evil\",", 1);
    write_lines(&path, &l);
    let (line, _, problem, _) = broken(&path);
    assert_eq!(line, 6);
    assert!(
        matches!(problem, Problem::NotCanonical | Problem::BadHash { .. }),
        "{problem:?}"
    );

    let (_dir, path, mut l) = fresh();
    l[5] = l[5].replacen("\"latency_us\":5", "\"latency_us\":5.5", 1);
    write_lines(&path, &l);
    let (line, _, problem, _) = broken(&path);
    assert_eq!(line, 6);
    assert!(
        matches!(problem, Problem::UnsupportedNumber(_)),
        "{problem:?}"
    );
}

#[test]
fn tampering_in_the_second_file_names_that_file() {
    let dir = tempfile::tempdir().unwrap();
    let a = dir.path().join("a.jsonl");
    let b = dir.path().join("b.jsonl");
    write_records(&a, 0, 5);
    // Continue the chain in b by copying a and appending, then keep only the new lines.
    std::fs::copy(&a, &b).unwrap();
    write_records(&b, 5, 5);
    let tail: Vec<String> = lines(&b).split_off(5);
    write_lines(&b, &tail);
    assert_eq!(verify(&paths(&[&a, &b])).unwrap().records, 10);
    let mut t = tail.clone();
    t[2] = t[2].replace("\"r7\"", "\"r8\"");
    write_lines(&b, &t);
    match verify(&paths(&[&a, &b])).unwrap_err() {
        VerifyError::Broken { path, line, .. } => {
            assert_eq!(path, b);
            assert_eq!(line, 3);
        }
        other => panic!("{other:?}"),
    }
}
