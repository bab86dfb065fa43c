//! CEL rules: compiling any text never crashes (limits before the parser, panics contained),
//! and a rule that compiles decides without crashing, the index agreeing with the full scan.
#![no_main]

use kz_policy::{Effect, Identity, PolicySet, PolicySource, Request, Transport};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(rule) = std::str::from_utf8(data) else { return };
    let sources = [
        PolicySource { name: "fuzz".into(), rule: rule.into(), effect: Effect::Allow },
        PolicySource { name: "last".into(), rule: r#"org == "acme""#.into(), effect: Effect::Deny },
    ];
    let Ok(set) = PolicySet::compile(&sources) else { return };
    let mut id = Identity { org: "acme".into(), branch: "main".into(), ..Identity::default() };
    id.claims.insert("repository_owner".into(), serde_json::json!("acme"));
    let context = serde_json::json!({"ticket": "INC-1", "n": 3, "list": [1, "a", null]});
    let req = Request {
        identity: &id,
        reference: "prod/db/password",
        resolver: "db",
        mode: "direct",
        context: &context,
        time: chrono::DateTime::UNIX_EPOCH,
        ip: "127.0.0.1",
        transport: Transport::Http,
    };
    let d = set.decide(&req);
    assert_eq!(d, set.decide_unindexed(&req));
});
