//! Policy behaviour as the bundle author sees it: every variable and function, CEL's error
//! absorption, load-time refusals, guards and their trace, and hostile rules.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use chrono::TimeZone;
use kz_policy::{
    Decision, Effect, IMPLICIT_DENY, Identity, PolicySet, PolicySource, Request, Step, Transport,
};
use serde_json::json;

fn src(name: &str, rule: &str, effect: Effect) -> PolicySource {
    PolicySource {
        name: name.into(),
        rule: rule.into(),
        effect,
    }
}

fn allow(name: &str, rule: &str) -> PolicySource {
    src(name, rule, Effect::Allow)
}

fn identity() -> Identity {
    let claims = json!({
        "repository_owner": "acme",
        "repository": "acme/api",
        "run_id": 42,
        "kubernetes.io": {"namespace": "payments"},
        "nested": {"deep": {"x": "y"}},
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
        groups: vec!["admins".into(), "dev".into()],
        claims: claims.as_object().unwrap().clone(),
    }
}

struct Case {
    id: Identity,
    reference: String,
    resolver: String,
    mode: String,
    context: serde_json::Value,
    ip: String,
    transport: Transport,
}

impl Case {
    fn new(reference: &str) -> Self {
        Case {
            id: identity(),
            reference: reference.into(),
            resolver: "api-key".into(),
            mode: "direct".into(),
            context: serde_json::Value::Null,
            ip: "10.1.2.3".into(),
            transport: Transport::Http,
        }
    }

    fn req(&self) -> Request<'_> {
        Request {
            identity: &self.id,
            reference: &self.reference,
            resolver: &self.resolver,
            mode: &self.mode,
            context: &self.context,
            time: chrono::Utc.with_ymd_and_hms(2026, 12, 1, 12, 0, 0).unwrap(),
            ip: &self.ip,
            transport: self.transport,
        }
    }
}

fn set(sources: &[PolicySource]) -> PolicySet {
    PolicySet::compile(sources).unwrap_or_else(|e| panic!("{e:?}"))
}

/// Decides with the index and without, asserts both agree, returns the indexed one.
fn decide(set: &PolicySet, case: &Case) -> Decision {
    let a = set.decide(&case.req());
    let b = set.decide_unindexed(&case.req());
    assert_eq!(a, b, "index and full scan disagree");
    let (c, _) = set.decide_traced(&case.req());
    assert_eq!(a, c, "traced decision differs");
    a
}

fn holds(rule: &str, case: &Case) -> bool {
    let d = decide(&set(&[allow("p", rule)]), case);
    assert!(d.reason.is_none(), "{rule}: {d:?}");
    d.allowed()
}

#[test]
fn every_variable_is_visible() {
    let c = Case::new("prod/db/password");
    for rule in [
        r#"issuer == "gha""#,
        r#"sub.startsWith("repo:acme/")"#,
        r#"org == "acme""#,
        r#"service == "acme/api""#,
        r#"env == "production""#,
        r#"action == "deploy""#,
        r#"branch == "main""#,
        r#"actor == "octocat""#,
        r#""admins" in groups && size(groups) == 2"#,
        r#"claims.repository_owner == org && claims.run_id == 42"#,
        r#"claims["kubernetes.io"].namespace == "payments""#,
        r#"claims.nested.deep.x == "y""#,
        r#"ref == "prod/db/password""#,
        r#"resolver == "api-key""#,
        r#"mode == "direct""#,
        r#"size(context) == 0"#,
        r#"request.ip == "10.1.2.3""#,
        r#"request.transport == "http""#,
        r#"request.time == now"#,
        r#"now > timestamp("2026-01-01T00:00:00Z")"#,
        r#"now.getFullYear() == 2026"#,
    ] {
        assert!(holds(rule, &c), "{rule}");
    }
    for rule in [
        r#"org == "evil""#,
        r#""ops" in groups"#,
        r#"request.transport == "mcp""#,
    ] {
        assert!(!holds(rule, &c), "{rule}");
    }
    let mut mcp = Case::new("x");
    mcp.transport = Transport::Mcp;
    assert!(holds(r#"request.transport == "mcp""#, &mcp));
}

#[test]
fn glob_matches_within_and_across_segments() {
    let c = Case::new("prod/db/password");
    assert!(holds(r#"ref.glob("prod/**")"#, &c));
    assert!(holds(r#"ref.glob("prod/*/password")"#, &c));
    assert!(!holds(r#"ref.glob("prod/*")"#, &c));
    assert!(!holds(r#"ref.glob("production/**")"#, &c));
    assert!(holds(r#"ref.glob("{dev,prod}/**")"#, &c));
    assert!(holds(r#"glob(ref, "prod/**")"#, &c));
}

#[test]
fn string_extensions_and_regex() {
    let c = Case::new("prod/db/password");
    assert!(holds(r#"sub.matches("^repo:acme/[a-z]+:")"#, &c));
    assert!(!holds(r#"sub.matches("^repo:evil/")"#, &c));
    assert!(holds(r#"matches(sub, "acme")"#, &c));
    assert!(holds(
        r#"ref.endsWith("password") && ref.contains("/db/")"#,
        &c
    ));
}

#[test]
fn error_absorbing_and_or_and_failing_rules() {
    let mut c = Case::new("x");
    // `context.ticket` does not exist: an error, absorbed by the false side.
    assert!(!holds(
        r#"has(context.ticket) && context.ticket.startsWith("INC-")"#,
        &c
    ));
    assert!(!holds(r#"context.ticket.startsWith("INC-") && false"#, &c));
    assert!(holds(r#"context.ticket == "x" || true"#, &c));
    c.context = json!({"ticket": "INC-42"});
    assert!(holds(
        r#"has(context.ticket) && context.ticket.startsWith("INC-")"#,
        &c
    ));

    // An error that nothing absorbs denies, naming the policy.
    let s = set(&[
        allow("broken", r#"context.missing.deeper == 1"#),
        allow("later", "true"),
    ]);
    let d = decide(&s, &Case::new("x"));
    assert_eq!(d.effect, Effect::Deny);
    assert_eq!(d.policy, "broken");
    assert!(d.reason.as_deref().unwrap().contains("missing"), "{d:?}");

    // A non-boolean result denies likewise.
    let s = set(&[
        allow("stringy", "claims.repository_owner"),
        allow("later", "true"),
    ]);
    let d = decide(&s, &Case::new("x"));
    assert_eq!((d.effect, d.policy.as_str()), (Effect::Deny, "stringy"));
    assert!(d.reason.unwrap().contains("not a boolean"));
}

#[test]
fn first_true_rule_decides_and_no_match_denies() {
    let s = set(&[
        src("deny-forks", "claims.repository_owner != org", Effect::Deny),
        allow(
            "ci-main",
            r#"org == "acme" && branch == "main" && ref.glob("prod/**")"#,
        ),
        src("deny-prod", r#"ref.glob("prod/**")"#, Effect::Deny),
    ]);
    let d = decide(&s, &Case::new("prod/api"));
    assert_eq!((d.effect, d.policy.as_str()), (Effect::Allow, "ci-main"));
    let mut fork = Case::new("prod/api");
    fork.id
        .claims
        .insert("repository_owner".into(), json!("evil"));
    let d = decide(&s, &fork);
    assert_eq!((d.effect, d.policy.as_str()), (Effect::Deny, "deny-forks"));
    let mut other = Case::new("prod/api");
    other.id.branch = "feature".into();
    let d = decide(&s, &other);
    assert_eq!((d.effect, d.policy.as_str()), (Effect::Deny, "deny-prod"));
    let d = decide(&s, &Case::new("dev/api"));
    assert_eq!(
        (d.effect, d.policy.as_str(), d.reason),
        (Effect::Deny, IMPLICIT_DENY, None)
    );
    assert!(!decide(&set(&[]), &Case::new("x")).allowed());
}

#[test]
fn context_cannot_shadow_identity_fields() {
    let mut c = Case::new("x");
    c.context = json!({"org": "evil", "groups": ["root"], "ref": "prod/x"});
    assert!(holds(
        r#"org == "acme" && !("root" in groups) && ref == "x""#,
        &c
    ));
    assert!(holds(r#"context.org == "evil""#, &c));
}

#[test]
fn load_refuses_every_problem_at_once() {
    let errors = PolicySet::compile(&[
        allow("syntax", "org == "),
        allow("number", "1 + 2"),
        allow("string", r#""acme""#),
        allow("list", "[true]"),
        allow("dyn-glob", "ref.glob(context.pattern)"),
        allow("bad-glob", r#"ref.glob("[oops")"#),
        allow("dyn-re", "sub.matches(context.re)"),
        allow("bad-re", r#"sub.matches("(")"#),
        allow("syntax", "true"),
        allow("after-true", r#"org == "x""#),
        allow("", "false"),
    ])
    .unwrap_err();
    let by = |name: &str| -> Vec<String> {
        errors
            .iter()
            .filter(|e| e.name == name)
            .map(|e| e.message.clone())
            .collect()
    };
    assert!(
        by("syntax").iter().any(|m| m.contains("not valid CEL")),
        "{errors:?}"
    );
    assert!(
        by("syntax").iter().any(|m| m.contains("defined twice")),
        "{errors:?}"
    );
    assert!(by("number")[0].contains("not boolean"));
    assert!(by("string")[0].contains("not boolean"));
    assert!(by("list")[0].contains("not boolean"));
    assert!(by("dyn-glob")[0].contains("string literal"));
    assert!(by("bad-glob")[0].contains("invalid glob"));
    assert!(by("dyn-re")[0].contains("string literal"));
    assert!(by("bad-re")[0].contains("invalid regex"));
    assert!(by("after-true")[0].contains("never apply"), "{errors:?}");
    assert!(by("").iter().any(|m| m.contains("empty name")));
    assert!(errors.iter().all(|e| !e.help.is_empty()));
    let indices: Vec<usize> = errors.iter().map(|e| e.policy).collect();
    assert!(indices.windows(2).all(|w| w[0] <= w[1]));
}

#[test]
fn guards_skip_rules_and_the_trace_says_so() {
    let s = set(&[
        allow("team-a", r#"org == "team-a" && ref.glob("prod/**")"#),
        allow(
            "staging",
            r#"ref.startsWith("staging/") && branch == "main""#,
        ),
        allow("acme-prod", r#"ref.glob("prod/**") && org == "acme""#),
    ]);
    let c = Case::new("prod/api");
    let (d, trace) = s.decide_traced(&c.req());
    assert_eq!(d.policy, "acme-prod");
    assert_eq!(
        trace,
        vec![
            Step::SkippedByGuard {
                policy: "team-a".into(),
                guard: r#"org == "team-a""#.into()
            },
            Step::SkippedByGuard {
                policy: "staging".into(),
                guard: r#"ref starts with "staging/""#.into()
            },
            Step::Evaluated {
                policy: "acme-prod".into(),
                value: true
            },
        ]
    );
    let c = Case::new("dev/api");
    let (d, trace) = s.decide_traced(&c.req());
    assert_eq!(d.policy, IMPLICIT_DENY);
    assert_eq!(trace.len(), 3);
    assert!(
        matches!(&trace[2], Step::SkippedByGuard { guard, .. } if guard == r#"ref starts with "prod/""#)
    );
}

#[test]
fn hostile_rules_are_refused_without_crashing_a_small_stack() {
    let rules: Vec<String> = vec![
        format!("{}true{}", "(".repeat(100_000), ")".repeat(100_000)),
        format!("{}true", "!".repeat(100_000)),
        format!("{}1", "-".repeat(100_000)),
        vec!["org"; 20_000].join(" + "),
        vec![r#"org == "a""#; 20_000].join(" && "),
        format!("{}1{}", "[".repeat(5_000), "]".repeat(5_000)),
        format!("{}{}", "{1: ".repeat(5_000), "}".repeat(5_000)),
        "a".repeat(1 << 20),
        format!("ref == \"{}\"", "\\".repeat(10_000)),
        "\"unterminated".into(),
        "'''".into(),
        "\u{0}".into(),
        "org.@@".into(),
    ];
    let handle = std::thread::Builder::new()
        .stack_size(256 * 1024)
        .spawn(move || {
            rules
                .iter()
                .map(|r| PolicySet::compile(&[allow("hostile", r)]).is_err())
                .collect::<Vec<_>>()
        })
        .unwrap();
    let refused = handle.join().expect("the compile thread crashed");
    assert!(refused.iter().all(|r| *r), "{refused:?}");
}

#[test]
fn rules_at_the_limits_evaluate_on_a_small_stack() {
    // The worst shapes the limits let through: the deepest nesting, the longest chain of
    // operators and of unary negations. A tokio worker thread has a 2 MiB stack.
    let nested = format!("{}org == \"acme\"{}", "(".repeat(31), ")".repeat(31));
    let chain = vec![r#"org == "acme""#; 120].join(" && ");
    let plus = format!("size({}) > 0", vec!["org"; 46].join(" + "));
    let nots = format!("{}(org == \"acme\")", "!".repeat(30));
    let handle = std::thread::Builder::new()
        .stack_size(2 * 1024 * 1024)
        .spawn(move || {
            let s = PolicySet::compile(&[
                allow("nested", &nested),
                allow("chain", &chain),
                allow("plus", &plus),
                allow("nots", &nots),
            ])
            .unwrap();
            let c = Case::new("x");
            s.decide(&c.req())
        })
        .unwrap();
    let d = handle.join().expect("evaluation crashed");
    assert_eq!(d.policy, "nested");
}

/// The identity's and the request's string variables, each with this case's value.
fn string_variables(c: &Case) -> Vec<(&'static str, String)> {
    let id = &c.id;
    vec![
        ("issuer", id.issuer.clone()),
        ("sub", id.sub.clone()),
        ("org", id.org.clone()),
        ("service", id.service.clone()),
        ("env", id.env.clone()),
        ("action", id.action.clone()),
        ("branch", id.branch.clone()),
        ("actor", id.actor.clone()),
        ("ref", c.reference.clone()),
        ("resolver", c.resolver.clone()),
        ("mode", c.mode.clone()),
        ("request.ip", c.ip.clone()),
    ]
}

#[test]
fn each_variable_reads_its_own_field() {
    // Every value is distinct, so a variable wired to another field fails a row.
    let c = Case::new("prod/db/password");
    let vars = string_variables(&c);
    for (name, value) in &vars {
        assert!(holds(&format!("{name} == {value:?}"), &c), "{name}");
        for (other, other_value) in &vars {
            if other != name {
                assert!(
                    !holds(&format!("{name} == {other_value:?}"), &c),
                    "{name} reads {other}"
                );
            }
        }
    }
    let mut c = Case::new("prod/db/password");
    c.context = json!({"ticket": "INC-9"});
    for (rule, expected) in [
        (r#"groups == ["admins", "dev"]"#, true),
        (r#""ops" in groups"#, false),
        (r#"claims.repository == "acme/api""#, true),
        (r#"claims.repository == "acme/other""#, false),
        (r#"has(claims.missing)"#, false),
        (r#"context.ticket == "INC-9""#, true),
        (r#"context.ticket == "INC-1""#, false),
        (r#"request.time == timestamp("2026-12-01T12:00:00Z")"#, true),
        (r#"request.time > timestamp("2026-12-01T12:00:00Z")"#, false),
        (r#"now == timestamp("2026-12-01T12:00:00Z")"#, true),
        (r#"now < timestamp("2026-12-01T12:00:00Z")"#, false),
        (r#"now - duration("1h") < request.time"#, true),
    ] {
        assert_eq!(holds(rule, &c), expected, "{rule}");
    }
    // An absent context is an empty map, not an error.
    assert!(holds("context == {}", &Case::new("x")));
    for (transport, name) in [
        (Transport::Http, "http"),
        (Transport::Mcp, "mcp"),
        (Transport::Proxy, "proxy"),
    ] {
        let mut c = Case::new("x");
        c.transport = transport;
        for other in ["http", "mcp", "proxy"] {
            let rule = format!("request.transport == {other:?}");
            assert_eq!(holds(&rule, &c), other == name, "{rule} for {name}");
        }
    }
    // A name that is no variable is refused at load (it would deny every request), with a
    // suggestion; names bound by a comprehension and CEL's type names are not variables.
    let errs = PolicySet::compile(&[allow("typo", r#"orgg == "acme""#)]).unwrap_err();
    assert!(
        errs[0].message.contains("`orgg`") && errs[0].help.contains("`org`"),
        "{errs:?}"
    );
    for ok in [
        r#"groups.exists(g, g == "oncall")"#,
        r#"groups.all(g, g.startsWith("t")) && type(org) == string"#,
        r#"[1, 2].map(x, x * 2).size() == 2"#,
    ] {
        assert!(PolicySet::compile(&[allow("ok", ok)]).is_ok(), "{ok}");
    }
    let errs = PolicySet::compile(&[allow("leak", r#"groups.exists(g, g == "x") && g == "y""#)])
        .unwrap_err();
    assert!(errs[0].message.contains("`g`"), "{errs:?}");
}

#[test]
fn nested_comprehensions_are_refused_at_load() {
    // Each level multiplies the work by a list's length: ten levels of ten never finish.
    let mut rule = String::from("true");
    for i in 0..9 {
        rule = format!("[0,1,2,3,4,5,6,7,8,9].all(x{i}, {rule})");
    }
    let errs = PolicySet::compile(&[allow("hang", &rule)]).unwrap_err();
    assert!(errs[0].message.contains("nests comprehensions"), "{errs:?}");
    let two = r#"groups.exists(g, claims.teams.exists(t, t == g))"#;
    assert!(PolicySet::compile(&[allow("two", two)]).is_err());
}

#[test]
fn functions_table() {
    let c = Case::new("prod/db/password");
    for (rule, expected) in [
        // `*` stays within a segment, `**` crosses them; on any string, not only `ref`.
        (r#"ref.glob("prod/*")"#, false),
        (r#"ref.glob("prod/*/*")"#, true),
        (r#"ref.glob("*")"#, false),
        (r#"ref.glob("**")"#, true),
        (r#"ref.glob("**/password")"#, true),
        (r#"ref.glob("prod/**/pass*")"#, true),
        (r#"ref.glob("prod/d?/password")"#, true),
        (r#"ref.glob("prod/d?")"#, false),
        (r#"service.glob("acme/*")"#, true),
        (r#"resolver.glob("api-*")"#, true),
        (r#"resolver.glob("db-*")"#, false),
        // `matches` is RE2, unanchored unless the regex anchors it.
        (r#"sub.matches("acme/api")"#, true),
        (r#"sub.matches("^acme/api")"#, false),
        (r#"sub.matches("main$")"#, true),
        (r#"ref.matches("^prod/(db|cache)/")"#, true),
        // String extensions and `size`.
        (r#"ref.startsWith("prod/")"#, true),
        (r#"ref.startsWith("dev/")"#, false),
        (r#"ref.endsWith("/password")"#, true),
        (r#"ref.endsWith("/key")"#, false),
        (r#"ref.contains("/db/")"#, true),
        (r#"ref.contains("/cache/")"#, false),
        (r#"size(ref) == 16 && ref.size() == 16"#, true),
        (r#"size(groups) == 2 && size(claims) == 5"#, true),
        (r#"size(context) == 0"#, true),
    ] {
        assert_eq!(holds(rule, &c), expected, "{rule}");
    }
}

#[test]
fn errors_are_absorbed_by_the_deciding_side_only() {
    let c = Case::new("x");
    for (rule, expected) in [
        ("false && 1 / 0 == 1", false),
        ("1 / 0 == 1 && false", false),
        ("true || 1 / 0 == 1", true),
        ("1 / 0 == 1 || true", true),
        (
            r#"has(context.ticket) && context.ticket.startsWith("INC-")"#,
            false,
        ),
        (
            r#"!has(context.ticket) || context.ticket.startsWith("INC-")"#,
            true,
        ),
    ] {
        assert_eq!(holds(rule, &c), expected, "{rule}");
    }
    // Where the error decides, the rule denies with the reason, naming itself, whatever its
    // effect and whatever comes after it.
    for rule in [
        "true && 1 / 0 == 1",
        "false || 1 / 0 == 1",
        r#"context.ticket.startsWith("INC-")"#,
        r#"claims.missing == "x""#,
        "context.n",
        "claims.run_id",
        r#"org == "acme" ? claims.repository : true"#,
    ] {
        for effect in [Effect::Allow, Effect::Deny] {
            let mut c = Case::new("x");
            c.context = json!({"n": 3});
            let d = decide(
                &set(&[src("failing", rule, effect), allow("everything", "true")]),
                &c,
            );
            assert_eq!(
                (d.effect, d.policy.as_str()),
                (Effect::Deny, "failing"),
                "{rule}"
            );
            assert!(!d.reason.unwrap_or_default().is_empty(), "{rule}");
        }
    }
}

#[test]
fn context_cannot_shadow_any_variable() {
    let names = [
        "issuer", "sub", "org", "service", "env", "action", "branch", "actor", "groups", "claims",
        "ref", "resolver", "mode", "context", "request", "now",
    ];
    let evil: serde_json::Map<String, serde_json::Value> = names
        .iter()
        .map(|n| (n.to_string(), json!("evil")))
        .collect();
    for context in [
        serde_json::Value::Object(evil),
        json!("org"),
        json!(["org", "acme"]),
        json!({"request": {"ip": "127.0.0.1", "transport": "proxy"}, "now": 0}),
    ] {
        let mut c = Case::new("prod/db/password");
        c.context = context.clone();
        for (name, value) in string_variables(&c) {
            assert!(
                holds(&format!("{name} == {value:?}"), &c),
                "{name} with {context}"
            );
        }
        for rule in [
            r#"groups == ["admins", "dev"]"#,
            r#"claims.repository == "acme/api""#,
            r#"request.transport == "http""#,
            r#"now == timestamp("2026-12-01T12:00:00Z")"#,
        ] {
            assert!(holds(rule, &c), "{rule} with {context}");
        }
    }
    // `context.org` is the caller's, `org` the identity's.
    let mut c = Case::new("x");
    c.context = json!({"org": "evil"});
    assert!(holds(r#"context.org == "evil" && org == "acme""#, &c));
    assert!(!holds(r#"context.org == org"#, &c));
}

#[test]
fn a_pattern_shared_by_rules_works_in_each() {
    // The second rule reuses the first one's glob and regex (checked once per bundle): both
    // must still be the precompiled ones.
    let s = set(&[
        allow(
            "evil-prod",
            r#"org == "evil" && ref.glob("prod/**") && sub.matches("^repo:acme/")"#,
        ),
        src(
            "acme-prod",
            r#"ref.glob("prod/**") && sub.matches("^repo:acme/")"#,
            Effect::Deny,
        ),
    ]);
    let d = decide(&s, &Case::new("prod/db"));
    assert_eq!(
        (d.effect, d.policy.as_str(), d.reason),
        (Effect::Deny, "acme-prod", None)
    );
    let d = decide(&s, &Case::new("dev/db"));
    assert_eq!(d.policy, IMPLICIT_DENY);
}

#[test]
fn oversized_regexes_are_refused_at_load() {
    // Short to write, far over the automaton limit once expanded.
    for re in [r"\w{1000}\w{1000}\w{1000}", "((a{100}){100}){100}"] {
        let errors =
            PolicySet::compile(&[allow("big", &format!("sub.matches({re:?})"))]).unwrap_err();
        assert!(errors[0].message.contains("invalid regex"), "{errors:?}");
    }
}

#[test]
fn patterns_built_on_first_use_build_on_a_small_stack() {
    // Loading only checks a pattern; the decision that first evaluates it builds the matcher
    // on the deciding thread. The deepest regex `regex` accepts, and a long glob, must build
    // and match on a tokio worker's 2 MiB stack.
    let mut sources = Vec::new();
    for depth in [50, 120, 240, 300] {
        let re = format!("{}a{}", "(".repeat(depth), ")".repeat(depth));
        sources.push(allow(
            &format!("re-{depth}"),
            &format!("sub.matches({re:?}) && org == \"nobody\""),
        ));
    }
    let glob = format!("prod/{}**", "*a/".repeat(500));
    sources.push(allow(
        "glob",
        &format!("ref.glob({glob:?}) && org == \"nobody\""),
    ));
    sources.push(allow("last", "true"));
    // Depths the regex parser refuses are refused at load; the rest must evaluate.
    let accepted: Vec<PolicySource> = sources
        .into_iter()
        .filter(|s| PolicySet::compile(std::slice::from_ref(s)).is_ok())
        .collect();
    let names: Vec<&str> = accepted.iter().map(|s| s.name.as_str()).collect();
    assert!(
        names.contains(&"re-240") && !names.contains(&"re-300"),
        "{names:?}"
    );
    assert!(names.contains(&"glob"), "{names:?}");
    let s = set(&accepted);
    let handle = std::thread::Builder::new()
        .stack_size(2 * 1024 * 1024)
        .spawn(move || {
            let mut c = Case::new("prod/x");
            c.id.sub = "a".into();
            s.decide_unindexed(&c.req())
        })
        .unwrap();
    let d = handle.join().expect("building a matcher crashed");
    assert_eq!(
        (d.effect, d.policy.as_str(), d.reason),
        (Effect::Allow, "last", None)
    );
}

#[test]
fn a_failing_rule_s_reason_names_types_never_values() {
    // Found by the fuzz target: a reason quoting a map differed between two evaluations of one
    // request (hash order), and quoted the caller's context into the decision.
    let mut c = Case::new("x");
    c.context = json!({
        "a": "CANARY-1", "b": "CANARY-2", "c": {"d": "CANARY-3"}, "e": ["CANARY-4"],
        "f": 1, "g": 2, "h": 3, "i": 4,
    });
    c.id.claims.insert("token".into(), json!("CANARY-5"));
    for rule in [
        "request / context == 1",
        "context / 2 == 1",
        "context.a / 0 == 1",
        "context.f / 0 == 1",
        "context.f % 0 == 1",
        "context < 1",
        "context.a < 1",
        r#"context.startsWith("x")"#,
        "context > context.a",
        "context[context] == 1",
        "context.e[context.f] == 1",
        "context.e[7] == 1",
        "claims + 1 == 2",
        "claims.token.foo(1)",
        r#"int(context.a) == 1"#,
        "9223372036854775807 + context.f == 1",
    ] {
        let s = set(&[allow("failing", rule)]);
        let reasons: Vec<String> = (0..6)
            .map(|_| {
                let d = decide(&s, &c);
                assert_eq!(
                    (d.effect, d.policy.as_str()),
                    (Effect::Deny, "failing"),
                    "{rule}"
                );
                d.reason.unwrap()
            })
            .collect();
        assert!(
            reasons.iter().all(|r| r == &reasons[0]),
            "{rule}: {reasons:?}"
        );
        assert!(!reasons[0].contains("CANARY"), "{rule}: {}", reasons[0]);
        assert!(!reasons[0].is_empty());
    }
}
