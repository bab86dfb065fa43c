//! Any text as a bundle: `kz_bundle::check` returns a bundle or diagnostics, never panics; every
//! diagnostic names the bundle file; a loaded bundle decides (totally) for a fixed request and
//! matches a resolver for refs built from its own resolver names.
#![no_main]

use std::path::Path;

use kz_policy::{Identity, Request, Transport};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    match kz_bundle::check(Path::new("/fuzz/bundle.yaml"), text) {
        Err(diags) => {
            assert!(!diags.is_empty());
            for d in &diags {
                assert!(d.file.is_some(), "a diagnostic without its file: {d:?}");
            }
        }
        Ok(b) => {
            let id = Identity { issuer: "i".into(), org: "o".into(), ..Identity::default() };
            let ctx = serde_json::json!({"k": "v"});
            for r in b.resolvers.iter().map(|r| r.name.replace('*', "x")).chain(["a/b".to_string()]) {
                if kz_bundle::validate_ref(&r).is_err() {
                    continue;
                }
                let resolver = b.resolver_for(&r).map(|x| x.name.clone()).unwrap_or_default();
                let req = Request {
                    identity: &id,
                    reference: &r,
                    resolver: &resolver,
                    mode: "direct",
                    context: &ctx,
                    time: chrono::DateTime::UNIX_EPOCH,
                    ip: "",
                    transport: Transport::Http,
                };
                let _ = b.policies.decide(&req);
            }
        }
    }
});
