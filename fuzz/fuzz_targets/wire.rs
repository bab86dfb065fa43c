//! The server's API shapes on both sides: any bytes as a resolve request (what the server
//! parses) and as a resolve answer (what the `keyzero` provider parses) yield a value or an
//! error, never a panic; a parsed answer written again reads back equal; an error never quotes
//! the text it was given.
#![no_main]

use kz_wire::{ResolveRequest, ResolveResponse};
use libfuzzer_sys::fuzz_target;

const CANARY: &str = "fuzz-canary-wire-71c3";

fuzz_target!(|data: &[u8]| {
    if let Ok(req) = serde_json::from_slice::<ResolveRequest>(data) {
        if let Ok(refs) = req.requested() {
            assert!(!refs.is_empty() && refs.len() <= kz_wire::MAX_REFS);
        }
    }
    match ResolveResponse::from_json(data) {
        Ok(resp) => {
            if let Ok(json) = resp.to_json() {
                let again = ResolveResponse::from_json(&json).expect("written answers read back");
                assert_eq!(again, resp);
            }
        }
        Err(e) => {
            let mut text = data.to_vec();
            text.extend_from_slice(CANARY.as_bytes());
            if let Err(e2) = ResolveResponse::from_json(&text) {
                assert!(!e2.to_string().contains(CANARY));
            }
            drop(e);
        }
    }
});
