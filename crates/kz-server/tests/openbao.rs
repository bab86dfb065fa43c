//! A real OpenBao behind the server: a value served, then OpenBao stopped mid-run: its refs get
//! an error within the backend's timeout while another backend's refs keep being served, and
//! the server never answers 500. Needs `bao` on PATH (scripts/test installs it).
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

mod common;
#[allow(dead_code)]
#[path = "../../kz-providers/tests/support/openbao.rs"]
mod openbao;

use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

const CANARY: &str = "kz-canary-bao-61d0c2";
const ISS: &str = "https://ci.example";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backend_that_stops_mid_run_fails_only_its_refs() {
    let bao = tokio::task::spawn_blocking(openbao::Bao::start)
        .await
        .unwrap();
    bao.put_kv2("kv/db", json!({ "value": format!("{CANARY}-bao") }))
        .await;
    let dir = tempfile::tempdir().unwrap();
    let key = rcgen::KeyPair::generate().unwrap();
    let pem: String = key
        .public_key_pem()
        .lines()
        .map(|l| format!("          {l}\n"))
        .collect();
    std::fs::write(
        dir.path().join("local.env"),
        format!("LOCAL={CANARY}-local\n"),
    )
    .unwrap();
    std::fs::write(
        dir.path().join("bundle.yaml"),
        format!(
            r#"version: 1
issuers:
  - name: ci
    type: custom
    issuer_url: {ISS}
    audience: keyzero
    static_keys:
      - kid: k1
        alg: ES256
        pem: |
{pem}backends:
  vault: {{ type: hashicorp_vault, address: "{addr}", timeout: 2s }}
  files: {{ type: dotenv, path: local.env }}
resolvers:
  - {{ name: "kv/*", backend: vault, path: "secret/${{ref}}", field: value }}
  - {{ name: local, backend: files, ref: LOCAL }}
policies:
  - {{ name: all, rule: 'issuer == "ci"', effect: allow }}
audit: {{ path: audit.jsonl }}
"#,
            addr = bao.addr
        ),
    )
    .unwrap();
    let mut opts = common::options(dir.path());
    opts.build.getenv = Arc::new(|k| (k == "VAULT_TOKEN").then(|| openbao::ROOT.to_owned()));
    let running = kz_server::start(opts).await.unwrap();
    let token = kz_identity::sign(
        &key.serialize_pem(),
        Some("ES256"),
        Some("k1"),
        &json!({"iss": ISS, "aud": "keyzero", "sub": "job"}),
    )
    .unwrap();
    let client = reqwest::Client::builder().no_proxy().build().unwrap();
    let ask = || async {
        let resp = client
            .post(format!("http://{}/v1/resolve", running.addr))
            .bearer_auth(&token)
            .json(&json!({"refs": ["kv/db", "local"]}))
            .send()
            .await
            .unwrap();
        let status = resp.status().as_u16();
        (status, resp.json::<Value>().await.unwrap())
    };
    let (status, v) = ask().await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(
        v["results"]["kv/db"]["value"],
        format!("{CANARY}-bao"),
        "{v}"
    );
    assert_eq!(v["results"]["local"]["value"], format!("{CANARY}-local"));

    drop(bao); // stopped by PID
    let started = Instant::now();
    let (status, v) = ask().await;
    assert_eq!(status, 200, "{v}");
    assert!(v["results"]["kv/db"]["error"].is_string(), "{v}");
    assert!(v["results"]["kv/db"].get("value").is_none());
    assert_eq!(v["results"]["local"]["value"], format!("{CANARY}-local"));
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "{:?}",
        started.elapsed()
    );

    running.control.shutdown();
    running.wait().await;
    let audit = std::fs::read_to_string(dir.path().join("audit.jsonl")).unwrap();
    assert!(!audit.contains(CANARY));
    assert!(audit.contains(r#""decision":"error""#), "{audit}");
    kz_audit::verify(&[dir.path().join("audit.jsonl")]).unwrap();
}
