//! Decision latency (`docs/benchmarks.md`, team mode): per-decision wall time, median and p99
//! over many single decisions, with the guard index and without it (every rule evaluated in
//! order), side by side in one run; the time to compile 1,000 rules (the set dropped within
//! the timing); and the first decision that evaluates 1,000 distinct globs and regexes, which
//! builds their automata, against the same decision once they are built.
//! `cargo bench -p kz-policy --bench decide`.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::cast_precision_loss
)]

use std::time::{Duration, Instant};

use kz_policy::{Effect, Identity, PolicySet, PolicySource, Request, Transport};

fn identity() -> Identity {
    let claims = serde_json::json!({
        "repository_owner": "acme", "repository": "acme/api", "ref": "refs/heads/main",
        "environment": "production", "workflow": "deploy", "actor": "octocat", "run_id": "42",
    });
    Identity {
        issuer: "gha".into(),
        sub: "repo:acme/api:ref:refs/heads/main".into(),
        org: "acme".into(),
        service: "acme/api".into(),
        env: "production".into(),
        action: "deploy".into(),
        branch: "main".into(),
        actor: "octocat".into(),
        groups: vec![],
        claims: claims.as_object().unwrap().clone(),
    }
}

fn policies(rules: impl Iterator<Item = String>, last: &str) -> Vec<PolicySource> {
    let mut v: Vec<PolicySource> = rules
        .enumerate()
        .map(|(i, rule)| PolicySource {
            name: format!("p{i}"),
            rule,
            effect: Effect::Allow,
        })
        .collect();
    v.push(PolicySource {
        name: "allow".into(),
        rule: last.into(),
        effect: Effect::Allow,
    });
    v
}

fn percentile(sorted: &[Duration], p: f64) -> f64 {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i].as_nanos() as f64 / 1000.0
}

fn measure(label: &str, set: &PolicySet, indexed: bool) -> (f64, f64) {
    let id = identity();
    let ctx = serde_json::Value::Null;
    let req = Request {
        identity: &id,
        reference: "prod/api-key",
        resolver: "api-key",
        mode: "direct",
        context: &ctx,
        time: chrono::Utc::now(),
        ip: "127.0.0.1",
        transport: Transport::Http,
    };
    let run = || {
        if indexed {
            set.decide(&req)
        } else {
            set.decide_unindexed(&req)
        }
    };
    assert!(run().allowed(), "{label}: the last rule must allow");
    for _ in 0..2_000 {
        std::hint::black_box(run());
    }
    let n = if set.len() > 1_000 && !indexed {
        300
    } else {
        20_000
    };
    let mut times = Vec::with_capacity(n);
    for _ in 0..n {
        let t = Instant::now();
        std::hint::black_box(run());
        times.push(t.elapsed());
    }
    times.sort_unstable();
    let (p50, p99) = (percentile(&times, 0.5), percentile(&times, 0.99));
    println!(
        "{label:<58} {:<10} median {p50:>9.2} µs   p99 {p99:>9.2} µs",
        if indexed { "indexed" } else { "full scan" }
    );
    (p50, p99)
}

fn main() {
    let last = r#"org == "acme" && ref.glob("prod/**")"#;
    let first_clause = PolicySet::compile(&policies(
        (0..100)
            .map(|i| format!(r#"org == "team-{i}" && ref.glob("prod/**") && branch == "main""#)),
        last,
    ))
    .unwrap();
    let fifth_clause = PolicySet::compile(&policies(
        (0..100).map(|i| {
            format!(
                r#"ref.glob("prod/**") && branch == "main" && mode == "direct" && service == "acme/api" && env == "env-{i}""#
            )
        }),
        last,
    ))
    .unwrap();
    let unguardable = PolicySet::compile(&policies(
        (0..100)
            .map(|i| format!(r#"claims.repository_owner == "team-{i}" && ref.glob("prod/**")"#)),
        last,
    ))
    .unwrap();
    let ten_thousand = PolicySet::compile(&policies(
        (0..10_000).map(|i| format!(r#"org == "team-{i}" && ref.glob("prod/**")"#)),
        last,
    ))
    .unwrap();

    println!("decisions (one request, allowing rule last):");
    for (label, set) in [
        (
            "100 rules failing on their first clause (org == …)",
            &first_clause,
        ),
        (
            "100 rules of five clauses failing on the last",
            &fifth_clause,
        ),
        ("100 rules no guard can index (claims.… == …)", &unguardable),
        ("10,000 guarded rules", &ten_thousand),
    ] {
        let (i50, i99) = measure(label, set, true);
        let (f50, f99) = measure(label, set, false);
        println!(
            "{:<58} ratio      median {:>8.1}×     p99 {:>8.1}×",
            "",
            f50 / i50,
            f99 / i99
        );
    }

    let sources = policies(
        (0..1_000).map(|i| {
            format!(r#"org == "team-{i}" && branch == "main" && ref.glob("prod/{i}/**") && sub.matches("^repo:team-{i}/")"#)
        }),
        last,
    );
    let plain = policies(
        (0..1_000)
            .map(|i| format!(r#"org == "team-{i}" && branch == "main" && env == "production""#)),
        last,
    );
    for (label, sources) in [
        ("compile 1,000 rules of 3 equality clauses", &plain),
        (
            "compile 1,000 rules of 4 clauses, a glob and a regex each",
            &sources,
        ),
    ] {
        let mut loads = Vec::new();
        for _ in 0..7 {
            let t = Instant::now();
            std::hint::black_box(PolicySet::compile(sources).unwrap());
            loads.push(t.elapsed());
        }
        loads.sort_unstable();
        println!(
            "{label:<58} median {:>8.1} ms",
            percentile(&loads, 0.5) / 1000.0
        );
    }

    // Every rule is evaluated (no guard) and evaluates its glob and its regex.
    let cold = policies(
        (0..1_000).map(|i| format!(r#"ref.glob("dev/{i}/**") || sub.matches("^repo:team-{i}/")"#)),
        last,
    );
    let id = identity();
    let ctx = serde_json::Value::Null;
    let req = Request {
        identity: &id,
        reference: "prod/api-key",
        resolver: "api-key",
        mode: "direct",
        context: &ctx,
        time: chrono::Utc::now(),
        ip: "127.0.0.1",
        transport: Transport::Http,
    };
    let (mut first, mut warm) = (Vec::new(), Vec::new());
    for _ in 0..7 {
        let set = PolicySet::compile(&cold).unwrap();
        let t = Instant::now();
        assert!(std::hint::black_box(set.decide(&req)).allowed());
        first.push(t.elapsed());
        let t = Instant::now();
        assert!(std::hint::black_box(set.decide(&req)).allowed());
        warm.push(t.elapsed());
    }
    first.sort_unstable();
    warm.sort_unstable();
    println!(
        "{:<58} median {:>8.1} ms (then {:.1} ms)",
        "first decision through 1,000 distinct globs and regexes",
        percentile(&first, 0.5) / 1000.0,
        percentile(&warm, 0.5) / 1000.0
    );
}
