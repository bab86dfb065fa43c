//! Token verification latency (`docs/benchmarks.md`, team mode): ES256 tokens with a realistic
//! GitHub Actions claim set against a static key, cold (a token never seen, so the signature is
//! checked) and repeated (served by the verified-token cache), median and p99 over many single
//! calls. `cargo bench -p kz-identity --bench verify`.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::cast_precision_loss,
    clippy::cast_possible_truncation,
    clippy::cast_sign_loss
)]

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use kz_identity::{IssuerConfig, KeyMaterial, KeySource, Profile, StaticKey, Verifier};
use serde_json::json;

const ISS: &str = "https://token.actions.githubusercontent.com";

fn percentile(sorted: &[Duration], p: f64) -> f64 {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i].as_nanos() as f64 / 1000.0
}

fn claims(i: usize) -> serde_json::Value {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs();
    json!({
        "jti": format!("id-{i}"), "sub": "repo:acme/api:ref:refs/heads/main", "aud": "keyzero",
        "ref": "refs/heads/main", "sha": "d6f5a1", "repository": "acme/api",
        "repository_owner": "acme", "repository_owner_id": "123", "repository_id": "456",
        "actor_id": "12", "actor": "octocat", "workflow": "deploy", "event_name": "push",
        "ref_type": "branch", "environment": "production", "iss": ISS,
        "nbf": now, "iat": now, "exp": now + 3600, "run_id": "42", "run_attempt": "1",
        "runner_environment": "github-hosted", "repository_visibility": "private",
    })
}

fn report(label: &str, mut times: Vec<Duration>) {
    times.sort_unstable();
    println!(
        "{label:<52} median {:>9.2} µs   p99 {:>9.2} µs",
        percentile(&times, 0.5),
        percentile(&times, 0.99)
    );
}

fn main() {
    let kp = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let private = kp.serialize_pem();
    let mut cfg = IssuerConfig::new("gha", Profile::GithubActions, ISS);
    cfg.audience = Some("keyzero".into());
    cfg.keys = KeySource::Static(vec![StaticKey {
        kid: Some("k".into()),
        alg: None,
        pem_or_secret: KeyMaterial::Pem(kp.public_key_pem()),
    }]);
    let v = Verifier::new(vec![cfg]).unwrap();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();

    const COLD: usize = 5_000;
    const WARM: usize = 50_000;
    let tokens: Vec<String> = (0..COLD + 500)
        .map(|i| kz_identity::sign(&private, Some("ES256"), Some("k"), &claims(i)).unwrap())
        .collect();
    println!(
        "ES256 token of {} bytes, GitHub Actions profile, static key:",
        tokens[0].len()
    );
    rt.block_on(async {
        // Warm-up on tokens not used below.
        for t in &tokens[COLD..] {
            std::hint::black_box(v.verify(t, SystemTime::now()).await.unwrap());
        }
        let mut cold = Vec::with_capacity(COLD);
        for t in &tokens[..COLD] {
            let s = Instant::now();
            std::hint::black_box(v.verify(t, SystemTime::now()).await.unwrap());
            cold.push(s.elapsed());
        }
        report("cold (signature checked, then cached)", cold);

        let t = &tokens[0];
        let mut warm = Vec::with_capacity(WARM);
        for _ in 0..WARM {
            let s = Instant::now();
            std::hint::black_box(v.verify(t, SystemTime::now()).await.unwrap());
            warm.push(s.elapsed());
        }
        report("repeated, cache hit, `verify` (Identity copied)", warm);

        let mut shared = Vec::with_capacity(WARM);
        for _ in 0..WARM {
            let s = Instant::now();
            std::hint::black_box(v.verify_shared(t, SystemTime::now()).await.unwrap());
            shared.push(s.elapsed());
        }
        report("repeated, cache hit, `verify_shared` (Arc)", shared);
    });
}
