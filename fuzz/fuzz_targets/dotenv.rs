//! The dotenv parser (`kz import`, the dotenv provider): never a panic; every key it returns
//! is a valid key.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(s) = std::str::from_utf8(data) else { return };
    if let Ok(pairs) = kz_providers::dotenv::parse(s) {
        for (k, _) in pairs {
            assert!(kz_providers::dotenv::is_valid_key(&k), "{k:?}");
        }
    }
});
