//! Bundle load and compile (`docs/benchmarks.md`, team mode): the whole of `kz_bundle::check`
//! (YAML parse, schema, backends, resolvers, every policy compiled and indexed) on bundles of
//! 1,000 policies, median and slowest of repeated runs. `cargo bench -p kz-bundle --bench load`.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::cast_precision_loss,
    clippy::indexing_slicing
)]

use std::path::Path;
use std::time::{Duration, Instant};

fn bundle(policies: usize, with_patterns: bool) -> String {
    let mut s = String::from(
        "version: \"1\"\nissuers:\n  - { name: gha, type: github-actions, issuer_url: \"https://token.actions.githubusercontent.com\", audience: keyzero }\nbackends:\n  vault: { type: hashicorp_vault, address: \"http://127.0.0.1:8200\" }\nresolvers:\n",
    );
    for i in 0..100 {
        s.push_str(&format!(
            "  - {{ name: \"team-{i}/**\", backend: vault, path: \"secret/data/${{ref}}\" }}\n"
        ));
    }
    s.push_str("policies:\n");
    for i in 0..policies {
        let rule = if with_patterns && i % 2 == 0 {
            format!(
                "org == \"team-{i}\" && ref.glob(\"team-{i}/**\") && sub.matches(\"^repo:team-{i}/.*$\")"
            )
        } else {
            format!("org == \"team-{i}\" && branch == \"main\" && env == \"prod\"")
        };
        s.push_str(&format!(
            "  - {{ name: p{i}, rule: '{rule}', effect: allow }}\n"
        ));
    }
    s
}

fn measure(label: &str, text: &str) {
    let runs = 15;
    let mut times: Vec<Duration> = (0..runs)
        .map(|_| {
            let t = Instant::now();
            let b =
                kz_bundle::check(Path::new("bench.yaml"), text).expect("the bench bundle loads");
            let d = t.elapsed();
            assert_eq!(b.policies.len(), 1000);
            d
        })
        .collect();
    times.sort();
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    println!(
        "{label:<48} median {:>7.1} ms   slowest {:>7.1} ms   ({} KiB of YAML, {runs} runs)",
        ms(times[runs / 2]),
        ms(times[runs - 1]),
        text.len() / 1024
    );
}

fn main() {
    measure("bundle load, 1,000 plain rules", &bundle(1000, false));
    measure(
        "bundle load, 1,000 rules, half with glob+regex",
        &bundle(1000, true),
    );
}
