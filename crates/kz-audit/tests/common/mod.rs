#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]
//! Helpers shared by the integration tests.

use std::path::{Path, PathBuf};

use kz_audit::{Decision, Record, Transport, Writer};

/// A record whose `reason` identifies it.
pub fn record(n: usize) -> Record {
    Record::new(Transport::Http)
        .request_id(format!("req-{n}"))
        .reference(format!("prod/db/{n}"))
        .decision(Decision::Allow)
        .policy("ci-main")
        .reason(format!("r{n}"))
        .latency_us(n as u64)
}

/// Writes `count` records numbered from `from` to `path` (continuing any existing chain).
pub fn write_records(path: &Path, from: usize, count: usize) {
    let writer = Writer::open(path).unwrap();
    for n in from..from + count {
        writer.append_blocking(record(n)).unwrap();
    }
    writer.close().unwrap();
}

pub fn lines(path: &Path) -> Vec<String> {
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .map(str::to_owned)
        .collect()
}

pub fn write_lines(path: &Path, lines: &[String]) {
    let mut text = lines.join("\n");
    text.push('\n');
    std::fs::write(path, text).unwrap();
}

pub fn paths(p: &[&Path]) -> Vec<PathBuf> {
    p.iter().map(|p| p.to_path_buf()).collect()
}
