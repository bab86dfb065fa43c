//! References, host patterns, path patterns, methods and durations: never a panic, an inferred
//! short form always names a known provider type, patterns print as what they parse from, and
//! a canonical path is canonical (reading it again changes nothing).
#![no_main]

use kz_config::{Binding, HostPattern, Methods, PathPattern, binding, catalog, parse_duration, reference};
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
    if let Ok(p) = PathPattern::parse(s) {
        assert_eq!(PathPattern::parse(&p.to_string()).ok(), Some(p.clone()));
        let _ = p.matches(s);
        let b = Binding { methods: Methods::default(), paths: vec![p] };
        let _ = b.check("GET", s);
    }
    if let Ok(c) = binding::canonical_path(s) {
        assert_eq!(binding::canonical_path(&c).as_deref(), Ok(c.as_str()));
    }
    let _ = Methods::parse(s.split(','));
    let _ = parse_duration(s);
    let _ = reference::is_env_name(s);
});
