//! CEL rules: compiling any text never crashes (limits before the parser, panics contained),
//! and a rule that compiles decides without crashing against an attacker-shaped request (the
//! identity's fields, groups and claims, `ref`, and the untrusted `context` all come from the
//! input), the index and the trace agreeing with the full scan.
//!
//! Input: fields separated by `\x1f`: the rule, then (all optional) the context as JSON (any
//! other text becomes a string context), the claims as JSON, `ref`, `org`, `branch`, `sub`,
//! the groups separated by `,`, `resolver`, `mode`, `ip`.
#![no_main]

use kz_policy::{Effect, IMPLICIT_DENY, Identity, PolicySet, PolicySource, Request, Transport};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let mut fields = text.split('\x1f');
    let rule = fields.next().unwrap_or_default();
    let mut next = || fields.next().unwrap_or_default();
    let (context, claims) = (next(), next());
    let context = serde_json::from_str(context)
        .unwrap_or_else(|_| serde_json::Value::String(context.to_owned()));
    let claims = match serde_json::from_str(claims) {
        Ok(serde_json::Value::Object(map)) => map,
        _ => serde_json::Map::new(),
    };
    let reference = next();
    let id = Identity {
        org: next().into(),
        branch: next().into(),
        sub: next().into(),
        groups: next().split(',').filter(|g| !g.is_empty()).map(String::from).collect(),
        claims,
        ..Identity::default()
    };
    let (resolver, mode, ip) = (next(), next(), next());

    let sources = [
        PolicySource { name: "fuzz".into(), rule: rule.into(), effect: Effect::Allow },
        PolicySource { name: "last".into(), rule: r#"org == "acme""#.into(), effect: Effect::Deny },
    ];
    let Ok(set) = PolicySet::compile(&sources) else { return };
    for transport in [Transport::Http, Transport::Mcp] {
        let req = Request {
            identity: &id,
            reference,
            resolver,
            mode,
            context: &context,
            time: chrono::DateTime::UNIX_EPOCH,
            ip,
            transport,
        };
        let d = set.decide(&req);
        assert_eq!(d, set.decide_unindexed(&req));
        let (traced, trace) = set.decide_traced(&req);
        assert_eq!(d, traced);
        // The decision names a policy of the set, and only a deny carries a reason.
        assert!(["fuzz", "last", IMPLICIT_DENY].contains(&d.policy.as_str()), "{d:?}");
        assert!(d.reason.is_none() || !d.allowed(), "{d:?}");
        assert!(trace.len() <= 2, "{trace:?}");
    }
});
