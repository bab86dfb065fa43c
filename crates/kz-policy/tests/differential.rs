//! The guard index never changes a decision: for random rule sets and requests, the indexed
//! decision equals evaluating every rule in order (and the traced one equals both).
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use kz_policy::{Effect, Identity, PolicySet, PolicySource, Request, Transport};
use proptest::prelude::*;

const CLAUSES: &[&str] = &[
    r#"org == "a""#,
    r#"org == "b""#,
    r#""c" == org"#,
    r#"env == "prod""#,
    r#"env == "dev""#,
    r#"service == "svc""#,
    r#"ref == "prod/x""#,
    r#"ref.glob("prod/**")"#,
    r#"ref.glob("dev/*")"#,
    r#"ref.glob("prod/x")"#,
    r#"ref.startsWith("dev/")"#,
    r#"ref.startsWith("prod/x/")"#,
    r#"branch == "main""#,
    r#"mode == "direct""#,
    r#"context.flag == true"#,
    r#"has(context.flag)"#,
    r#"context.n / 0 == 1"#,
    r#"!(org == "a")"#,
    r#"org != "b""#,
    "true",
    "false",
    r#"org == "a" || env == "prod""#,
    r#"(ref.glob("prod/**") && org == "b") || context.flag == false"#,
    r#""admins" in groups"#,
];

fn rule() -> impl Strategy<Value = String> {
    prop::collection::vec(0..CLAUSES.len(), 1..4).prop_map(|idx| {
        idx.iter()
            .map(|i| format!("({})", CLAUSES[*i]))
            .collect::<Vec<_>>()
            .join(" && ")
    })
}

fn request() -> impl Strategy<
    Value = (
        String,
        String,
        String,
        String,
        Option<serde_json::Value>,
        bool,
    ),
> {
    (
        prop::sample::select(vec!["a", "b", "c", "d"]),
        prop::sample::select(vec!["prod", "dev", ""]),
        prop::sample::select(vec![
            "prod/x", "prod/x/y", "prod/x/", "prod/", "prod/z", "dev/", "dev/q", "dev/q/r", "other",
        ]),
        prop::sample::select(vec!["main", "feature"]),
        prop::option::of(prop::sample::select(vec![
            serde_json::json!({"flag": true, "n": 1}),
            serde_json::json!({"flag": false}),
            serde_json::json!({"n": "text"}),
        ])),
        any::<bool>(),
    )
        .prop_map(|(o, e, r, b, c, admin)| (o.into(), e.into(), r.into(), b.into(), c, admin))
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(300))]
    #[test]
    fn index_equals_full_scan(
        rules in prop::collection::vec((rule(), any::<bool>()), 1..12),
        reqs in prop::collection::vec(request(), 1..8),
    ) {
        let sources: Vec<PolicySource> = rules
            .iter()
            .enumerate()
            .map(|(i, (r, allow))| PolicySource {
                name: format!("p{i}"),
                rule: r.clone(),
                effect: if *allow { Effect::Allow } else { Effect::Deny },
            })
            .collect();
        let Ok(set) = PolicySet::compile(&sources) else {
            // A rule set with `true` before other rules is refused; nothing to compare.
            return Ok(());
        };
        for (org, env, reference, branch, context, admin) in reqs {
            let id = Identity {
                org,
                env,
                branch,
                service: "svc".into(),
                groups: if admin { vec!["admins".into()] } else { vec![] },
                ..Identity::default()
            };
            let context = context.unwrap_or(serde_json::Value::Null);
            let req = Request {
                identity: &id,
                reference: &reference,
                resolver: "",
                mode: "direct",
                context: &context,
                time: chrono::Utc::now(),
                ip: "",
                transport: Transport::Http,
            };
            let full = set.decide_unindexed(&req);
            prop_assert_eq!(&set.decide(&req), &full);
            prop_assert_eq!(&set.decide_traced(&req).0, &full);
        }
    }
}
