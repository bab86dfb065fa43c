//! Blind-mode rewriting (`kz_blind::rewrite`): streaming swap equals whole-buffer swap, streaming
//! scrub equals whole-buffer scrub, under the chunking the input chooses; target/header swaps and
//! body decoding never panic.
//!
//! Input layout: `n` (1..=3 secrets), then per secret a length byte and that many value bytes,
//! an allowed-mask byte, a chunk-size byte, and the body. In the body, `0xF0 i` stands for the
//! whole token of secret `i` and `0xF1 i n` for its first `n` bytes (tokens are fixed here so
//! runs are reproducible).
#![no_main]

use kz_blind::rewrite::{Scrubber, SwapError, Swapper, decode_body};
use kz_blind::secrets::{BlindSecret, SecretTable};
use kz_secret::SecretValue;
use libfuzzer_sys::fuzz_target;

fn take<'a>(data: &mut &'a [u8], n: usize) -> Option<&'a [u8]> {
    if data.len() < n {
        return None;
    }
    let (head, rest) = data.split_at(n);
    *data = rest;
    Some(head)
}

fuzz_target!(|input: &[u8]| {
    let mut data = input;
    let Some(&[n]) = take(&mut data, 1) else {
        return;
    };
    let n = usize::from(n % 3) + 1;
    let mut secrets = Vec::new();
    for i in 0..n {
        let Some(&[len]) = take(&mut data, 1) else {
            return;
        };
        let Some(value) = take(&mut data, usize::from(len % 48)) else {
            return;
        };
        secrets.push(BlindSecret {
            name: format!("S{i}"),
            value: SecretValue::from_bytes(value.to_vec()),
            token: format!("kz_masked_{i:032x}"),
            hosts: Vec::new(),
            binding: kz_config::Binding::default(),
            // Every location, so the body checks below see every swap.
            swap: kz_config::SwapIn {
                headers: true,
                query: true,
                path: true,
                body: true,
            },
        });
    }
    let Some(&[mask, chunk]) = take(&mut data, 2) else {
        return;
    };
    let table = SecretTable { secrets };
    let allowed = move |i: usize| mask & (1 << i) != 0;
    let chunk = usize::from(chunk).max(1);

    // Expand token markers.
    let mut body = Vec::with_capacity(data.len() * 2);
    let mut rest = data;
    while let Some((&b, tail)) = rest.split_first() {
        rest = tail;
        let token = |i: u8| {
            table
                .secrets
                .get(usize::from(i) % n)
                .map(|s| s.token.as_bytes())
        };
        match b {
            0xF0 => {
                let Some((&i, tail)) = rest.split_first() else {
                    break;
                };
                rest = tail;
                body.extend_from_slice(token(i).unwrap_or_default());
            }
            0xF1 => {
                let Some((&[i, k], tail)) = rest.split_first_chunk::<2>() else {
                    break;
                };
                rest = tail;
                let t = token(i).unwrap_or_default();
                body.extend_from_slice(t.get(..usize::from(k) % (t.len() + 1)).unwrap_or_default());
            }
            _ => body.push(b),
        }
    }

    // Swap: stream == buffer.
    let swapper = Swapper::new(&table);
    let expected = swapper.swap_buffer(&body, &allowed);
    let mut stream = swapper.stream(&allowed);
    let mut out = Vec::new();
    let mut result = Ok(());
    for c in body.chunks(chunk) {
        result = stream.feed(c, &mut out);
        if result.is_err() {
            break;
        }
    }
    if result.is_ok() {
        result = stream.finish(&mut out);
    }
    match (&expected, &result) {
        (Ok((want, used)), Ok(())) => {
            assert_eq!(&out, want, "streaming swap differs from buffer swap");
            assert_eq!(&stream.used(), used);
        }
        (Err(SwapError::Forbidden(_)), Err(SwapError::Forbidden(_))) => {}
        (e, r) => panic!("buffer {:?} vs stream {:?}", e.as_ref().map(|_| ()), r),
    }

    // Scrub: stream == buffer.
    let scrubber = Scrubber::new(&table);
    let (want, hits) = scrubber.scrub_buffer(&body);
    let mut s = scrubber.stream();
    let mut out = Vec::new();
    for c in body.chunks(chunk) {
        s.feed(c, &mut out);
    }
    s.finish(&mut out);
    assert_eq!(out, want, "streaming scrub differs from buffer scrub");
    assert_eq!(s.take_hits(), hits);

    // Targets, headers, codecs: no panics.
    let target = String::from_utf8_lossy(&body);
    let _ = swapper.swap_target(&target, &allowed);
    if let Ok(v) = http::HeaderValue::from_bytes(&body) {
        let mut h = http::HeaderMap::new();
        h.insert(http::header::AUTHORIZATION, v.clone());
        h.insert("x-other", v);
        let _ = swapper.swap_headers(&mut h, &allowed);
        let _ = scrubber.scrub_headers(&mut h);
    }
    for enc in ["gzip", "deflate"] {
        let _ = decode_body(enc, data, 1 << 20);
    }
});
