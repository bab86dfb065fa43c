//! What the kz-server integration tests share: server options for a temporary directory (a
//! free loopback port, no watcher, nothing from the real environment) and indentation for PEM
//! blocks written into bundle YAML.
#![allow(dead_code)]

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

/// Options serving `dir/bundle.yaml` on `127.0.0.1:0`, with `dir` as every directory a backend
/// may use and an empty environment.
pub fn options(dir: &Path) -> kz_server::Options {
    kz_server::Options {
        bundle: dir.join("bundle.yaml"),
        listen: "127.0.0.1:0".parse().unwrap(),
        tls: None,
        audit: None,
        rate_limit: None,
        build: kz_providers::BuildContext {
            home: None,
            config_home: dir.join("config"),
            data_home: dir.join("data"),
            runtime_dir: None,
            project_dir: dir.to_path_buf(),
            getenv: Arc::new(|_| None),
            verbose: false,
            interactive: false,
        },
        drain: Duration::from_secs(5),
        watch: None,
        timeouts: kz_server::Timeouts::default(),
        signing_key: None,
        proxy_url: None,
        proxy_public_key: None,
        mcp: None,
    }
}

/// `text` with every line indented by `by` spaces (a PEM block under a YAML `|`).
pub fn indent(text: &str, by: usize) -> String {
    text.lines()
        .map(|l| format!("{}{l}\n", " ".repeat(by)))
        .collect()
}
