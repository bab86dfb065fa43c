//! References, host patterns and durations: never a panic, and an inferred short form always
//! names a known provider type.
#![no_main]

use kz_config::{HostPattern, catalog, parse_duration, reference};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(s) = std::str::from_utf8(data) else { return };
    if let Ok((ty, r)) = reference::infer(s) {
        assert!(catalog::find(ty).is_some());
        let _ = reference::validate(ty, &r);
    }
    for t in catalog::TYPES {
        let _ = reference::validate(t.name, s);
        let _ = reference::strip_own_scheme(t.name, s);
    }
    if let Ok(p) = HostPattern::parse(s) {
        // A parsed pattern prints as something that parses to the same pattern.
        assert_eq!(HostPattern::parse(&p.to_string()).ok(), Some(p.clone()));
        let _ = p.matches(s, 443);
    }
    let _ = parse_duration(s);
    let _ = reference::is_env_name(s);
});
