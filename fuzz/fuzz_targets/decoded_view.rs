//! The decoded-view matcher (`kz_redact::decoded`): streaming equals whole-buffer under the
//! chunking the input chooses, the egress check (`hits_in`, `Stream::check`) agrees with it, and
//! a value planted in the escaped form the input chooses is never left in the output.
//!
//! Input layout: a length byte and that many value bytes, a chunk-size byte, an encoding byte
//! (how each character of the planted value is escaped: raw, `\uXXXX`, `%XX`, `&#NN;`, chosen
//! per character from its bits; `\\`, `%` and `&` are never left raw), then the body; `0xF0` in
//! the body stands for the planted value.
#![no_main]

use kz_redact::decoded::{Matcher, Options};
use libfuzzer_sys::fuzz_target;

fn escape(v: &[u8], how: u8) -> Vec<u8> {
    let mut out = Vec::new();
    for (i, &b) in v.iter().enumerate() {
        let mode = (how >> ((i % 4) * 2)) & 3;
        // An escape introducer is never left raw next to escapes (no encoder does that: JSON
        // writes `\\`, percent-encoding `%25`, HTML `&amp;`), so the planted form stays one
        // that a real server could send.
        let mode = if mode == 0 && matches!(b, b'\\' | b'%' | b'&') { 1 } else { mode };
        let e = match mode {
            0 => vec![b],
            1 => format!("\\u{b:04X}").into_bytes(),
            2 => format!("%{b:02x}").into_bytes(),
            _ => format!("&#{b};").into_bytes(),
        };
        out.extend(e);
    }
    out
}

fuzz_target!(|input: &[u8]| {
    let Some((&len, rest)) = input.split_first() else {
        return;
    };
    let len = usize::from(len % 64);
    if rest.len() < len + 2 {
        return;
    }
    let (value, rest) = rest.split_at(len);
    let (&chunk, rest) = match rest.split_first() {
        Some(x) => x,
        None => return,
    };
    let (&how, body) = match rest.split_first() {
        Some(x) => x,
        None => return,
    };
    let m = Matcher::new([(value.to_vec(), b"<T>".to_vec())], Options::default());
    // ASCII values only for the planted form (escapes of single bytes are of ASCII characters).
    let plant = value.is_ascii() && !value.contains(&b'\r') && !value.contains(&b'\n');
    let mut full = Vec::with_capacity(body.len() * 2);
    for &b in body {
        if b == 0xF0 && plant {
            full.extend(escape(value, how));
        } else {
            full.push(b);
        }
    }
    let (whole, hits) = m.replace_all(&full);
    let chunk = usize::from(chunk).max(1);
    let mut st = m.stream();
    let mut out = Vec::new();
    for c in full.chunks(chunk) {
        st.feed(c, &mut out);
    }
    st.finish(&mut out);
    assert_eq!(out, whole, "streaming differs from whole-buffer");
    assert_eq!(st.take_hits(), hits);
    assert_eq!(m.hits_in(&full), hits);
    let mut check = m.stream();
    let mut seen = Vec::new();
    for c in full.chunks(chunk) {
        seen.extend(check.check(c));
    }
    seen.extend(check.check_finish());
    seen.sort_unstable();
    seen.dedup();
    assert_eq!(seen, hits, "the streaming check differs");
    if plant && !m.is_empty() && body.contains(&0xF0) {
        assert_eq!(hits, vec![0], "a planted value was not found");
    }
});
