//! Responses: real values → the token the child knows, wherever a response carries bytes (status
//! reason, header names and values, trailers, bodies, WebSocket frames), also when split across
//! chunks; and the egress check: which values a request carries.
//!
//! Matching is [`kz_redact::decoded`]: values are looked for in decoded views of the bytes (JSON,
//! percent, HTML escapes in any mix and case, one nested layer, base64 at any alignment with or
//! without line breaks), as whole values and as fragments of at least
//! [`FRAGMENT_LEN`](kz_redact::decoded::FRAGMENT_LEN) bytes. The covering span of original bytes
//! becomes the token (its base64 for a base64 match). Only values of at least [`MIN_SCRUB_LEN`]
//! bytes are matched. Header names are matched ignoring ASCII case (they arrive lower-cased).

use http::{HeaderMap, HeaderName, HeaderValue};
use kz_redact::decoded::{Matcher, Options, Stream};

use super::MIN_SCRUB_LEN;
use crate::secrets::SecretTable;

/// Replaces values by tokens in responses, and finds values in requests; built once per run
/// (cheap to clone: the index is shared).
#[derive(Clone)]
pub struct Scrubber {
    body: Matcher,
    /// Case-insensitive, plain values only (header names).
    names: Matcher,
}

impl std::fmt::Debug for Scrubber {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Scrubber")
            .field("patterns", &self.body.pattern_count())
            .finish_non_exhaustive()
    }
}

impl Scrubber {
    /// A scrubber for every secret of `table` whose value has at least [`MIN_SCRUB_LEN`] bytes.
    pub fn new(table: &SecretTable) -> Self {
        let pairs = || {
            table.secrets.iter().map(|s| {
                let value = s.value.expose_bytes();
                let value = if value.len() < MIN_SCRUB_LEN {
                    Vec::new()
                } else {
                    value.to_vec()
                };
                (value, s.token.as_bytes().to_vec())
            })
        };
        Self {
            body: Matcher::new(pairs(), Options::default()),
            names: Matcher::new(
                pairs(),
                Options {
                    ignore_case: true,
                    no_base64: true,
                },
            ),
        }
    }

    /// Whether there is nothing to scrub (no value long enough).
    pub fn is_empty(&self) -> bool {
        self.body.is_empty()
    }

    /// Scrubs every header name and value in place (order kept); returns the secrets scrubbed.
    /// A field whose scrubbed name or value is not legal (it cannot be: tokens are) is dropped.
    pub fn scrub_headers(&self, headers: &mut HeaderMap) -> Vec<usize> {
        if self.is_empty() {
            return Vec::new();
        }
        let mut all = Vec::new();
        let mut renamed = false;
        for name in headers.keys() {
            if !self.names.hits_in(name.as_str().as_bytes()).is_empty() {
                renamed = true;
            }
        }
        if renamed {
            let old = std::mem::take(headers);
            let mut current: Option<HeaderName> = None;
            for (name, value) in old {
                if let Some(n) = name {
                    let (new, hits) = self.names.replace_all(n.as_str().as_bytes());
                    all.extend(hits);
                    current = HeaderName::from_bytes(&new).ok();
                }
                if let Some(n) = &current {
                    headers.append(n.clone(), value);
                }
            }
        }
        for (_, value) in headers.iter_mut() {
            let (out, hits) = self.body.replace_all(value.as_bytes());
            if hits.is_empty() {
                continue;
            }
            all.extend(hits);
            // Tokens are legal header bytes, so this cannot fail; if it did, the value is
            // emptied rather than passed on.
            *value = HeaderValue::from_bytes(&out).unwrap_or_else(|_| HeaderValue::from_static(""));
        }
        super::sorted(all)
    }

    /// Scrubs a whole buffer; returns it and the secrets scrubbed.
    pub fn scrub_buffer(&self, bytes: &[u8]) -> (Vec<u8>, Vec<usize>) {
        self.body.replace_all(bytes)
    }

    /// The secrets whose values (in any form the scrub finds) `bytes` carries.
    pub fn values_in(&self, bytes: &[u8]) -> Vec<usize> {
        self.body.hits_in(bytes)
    }

    /// The secrets whose values the header names and values carry (the egress check).
    pub fn values_in_headers(&self, headers: &HeaderMap) -> Vec<usize> {
        let mut all = Vec::new();
        for (name, value) in headers {
            all.extend(self.names.hits_in(name.as_str().as_bytes()));
            all.extend(self.body.hits_in(value.as_bytes()));
        }
        super::sorted(all)
    }

    /// A streaming scrub (boundary-safe; equals [`Scrubber::scrub_buffer`] under any chunking).
    pub fn stream(&self) -> ScrubStream {
        ScrubStream {
            inner: self.body.stream(),
        }
    }
}

/// A streaming scrub (see [`Scrubber::stream`]).
pub struct ScrubStream {
    inner: Stream,
}

impl std::fmt::Debug for ScrubStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ScrubStream").finish_non_exhaustive()
    }
}

impl ScrubStream {
    /// Feeds a chunk; appends what can be passed on now to `out`.
    pub fn feed(&mut self, chunk: &[u8], out: &mut Vec<u8>) {
        self.inner.feed(chunk, out);
    }

    /// Ends the stream, appending everything still held back.
    pub fn finish(&mut self, out: &mut Vec<u8>) {
        self.inner.finish(out);
    }

    /// Secrets scrubbed since the last call (sorted).
    pub fn take_hits(&mut self) -> Vec<usize> {
        self.inner.take_hits()
    }

    /// The egress check over a stream: the secrets whose values were seen so far (also matches
    /// not final yet), without producing output. See [`Stream::check`].
    pub fn check(&mut self, chunk: &[u8]) -> Vec<usize> {
        self.inner.check(chunk)
    }

    /// Ends a [`ScrubStream::check`]ed stream.
    pub fn check_finish(&mut self) -> Vec<usize> {
        self.inner.check_finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rewrite::percent_encode;
    use base64::Engine;
    use base64::engine::general_purpose::{STANDARD, STANDARD_NO_PAD, URL_SAFE, URL_SAFE_NO_PAD};

    /// JSON string escaping styles (reference encoders for the tests).
    #[derive(Clone, Copy, PartialEq, Eq)]
    enum Json {
        Minimal,
        Ascii,
        HtmlSafe,
    }

    const HEX_LOWER: [u8; 16] = *b"0123456789abcdef";

    fn push_u(out: &mut Vec<u8>, unit: u16) {
        out.extend_from_slice(b"\\u");
        for shift in [12, 8, 4, 0] {
            out.extend(HEX_LOWER.get(usize::from((unit >> shift) & 0xf)));
        }
    }

    fn json_escape(s: &str, style: Json) -> Vec<u8> {
        let mut out = Vec::new();
        let mut units = [0u16; 2];
        for c in s.chars() {
            match c {
                '"' => out.extend_from_slice(b"\\\""),
                '\\' => out.extend_from_slice(b"\\\\"),
                '\n' => out.extend_from_slice(b"\\n"),
                '\r' => out.extend_from_slice(b"\\r"),
                '\t' => out.extend_from_slice(b"\\t"),
                '\u{8}' => out.extend_from_slice(b"\\b"),
                '\u{c}' => out.extend_from_slice(b"\\f"),
                c if u32::from(c) < 0x20 => push_u(&mut out, u32::from(c) as u16),
                '<' | '>' | '&' | '\u{2028}' | '\u{2029}' if style == Json::HtmlSafe => {
                    for &u in c.encode_utf16(&mut units).iter() {
                        push_u(&mut out, u);
                    }
                }
                c if !c.is_ascii() && style == Json::Ascii => {
                    for &u in c.encode_utf16(&mut units).iter() {
                        push_u(&mut out, u);
                    }
                }
                c => {
                    let mut buf = [0u8; 4];
                    out.extend_from_slice(c.encode_utf8(&mut buf).as_bytes());
                }
            }
        }
        out
    }
    use crate::secrets::BlindSecret;
    use kz_secret::SecretValue;
    use proptest::prelude::*;

    const CANARY: &str = "kz-canary-7f3a9c1e5b";

    fn table(values: &[&[u8]]) -> SecretTable {
        SecretTable {
            secrets: values
                .iter()
                .enumerate()
                .map(|(i, v)| {
                    BlindSecret::new(format!("S{i}"), SecretValue::from_bytes(v.to_vec()), vec![])
                })
                .collect(),
        }
    }

    #[test]
    fn lower_case_percent_escapes_and_form_encoding_are_scrubbed() {
        let t = table(&[b"a b/c?d=e&f"]);
        let token = t.secrets[0].token.clone();
        let scrubber = Scrubber::new(&t);
        for form in [
            "a%20b%2fc%3fd%3de%26f",
            "a+b%2Fc%3Fd%3De%26f",
            "a%20b%2Fc%3Fd%3De%26f",
        ] {
            let (out, hits) = scrubber.scrub_buffer(format!("x={form};").as_bytes());
            assert_eq!(out, format!("x={token};").as_bytes(), "{form}");
            assert_eq!(hits, vec![0]);
        }
    }

    fn contains(hay: &[u8], needle: &[u8]) -> bool {
        !needle.is_empty() && hay.windows(needle.len()).any(|w| w == needle)
    }

    fn stream_all(s: &Scrubber, input: &[u8], size: usize) -> (Vec<u8>, Vec<usize>) {
        let mut st = s.stream();
        let mut out = Vec::new();
        for c in input.chunks(size.max(1)) {
            st.feed(c, &mut out);
        }
        st.finish(&mut out);
        (out, st.take_hits())
    }

    /// Every form the spec lists, with the replacement it must get.
    fn forms(value: &[u8], token: &[u8]) -> Vec<(&'static str, Vec<u8>, Vec<u8>)> {
        let mut v = vec![
            ("raw", value.to_vec(), token.to_vec()),
            ("url", percent_encode(value), token.to_vec()),
            (
                "b64",
                STANDARD.encode(value).into_bytes(),
                STANDARD.encode(token).into_bytes(),
            ),
            (
                "b64-nopad",
                STANDARD_NO_PAD.encode(value).into_bytes(),
                STANDARD_NO_PAD.encode(token).into_bytes(),
            ),
            (
                "b64url",
                URL_SAFE.encode(value).into_bytes(),
                URL_SAFE.encode(token).into_bytes(),
            ),
            (
                "b64url-nopad",
                URL_SAFE_NO_PAD.encode(value).into_bytes(),
                URL_SAFE_NO_PAD.encode(token).into_bytes(),
            ),
        ];
        if let Ok(s) = std::str::from_utf8(value) {
            // The reference JSON encoder (serde_json is not a dependency: quote by hand via Debug
            // is wrong for JSON, so build the expected forms independently).
            let mut min = String::new();
            let mut ascii = String::new();
            for c in s.chars() {
                let e = match c {
                    '"' => "\\\"".to_string(),
                    '\\' => "\\\\".to_string(),
                    '\n' => "\\n".to_string(),
                    '\r' => "\\r".to_string(),
                    '\t' => "\\t".to_string(),
                    c if (c as u32) < 0x20 => format!("\\u{:04x}", c as u32),
                    c => c.to_string(),
                };
                min.push_str(&e);
                if c.is_ascii() {
                    ascii.push_str(&e);
                } else {
                    for u in c.encode_utf16(&mut [0; 2]) {
                        ascii.push_str(&format!("\\u{u:04x}"));
                    }
                }
            }
            v.push(("json", min.into_bytes(), token.to_vec()));
            v.push(("json-ascii", ascii.into_bytes(), token.to_vec()));
        }
        v
    }

    const TRICKY: &str = "pa\"ss\nw\\ord/é€😀 <&> kz-canary-7f3a9c1e5b";

    #[test]
    fn every_form_is_scrubbed_in_bodies_whole_and_split() {
        let binary: &[u8] = b"\xff\x00\xfe binary kz-canary-7f3a9c1e5b \x80";
        for value in [TRICKY.as_bytes(), CANARY.as_bytes(), binary, b"12345678"] {
            let t = table(&[b"unrelated-secret-value", value]);
            let s = Scrubber::new(&t);
            let token = t.secrets[1].token.as_bytes();
            for (form, pattern, want) in forms(value, token) {
                let mut body = b"{\"echo\":\"".to_vec();
                body.extend_from_slice(&pattern);
                body.extend_from_slice(b"\"}");
                let mut expected = b"{\"echo\":\"".to_vec();
                expected.extend_from_slice(&want);
                expected.extend_from_slice(b"\"}");
                let (out, hits) = s.scrub_buffer(&body);
                assert_eq!(out, expected, "{form}");
                assert_eq!(hits, vec![1], "{form}");
                assert!(!contains(&out, &pattern), "{form}");
                for size in [1, 3, 7, 64] {
                    assert_eq!(
                        stream_all(&s, &body, size),
                        (expected.clone(), vec![1]),
                        "{form} split {size}"
                    );
                }
            }
        }
    }

    #[test]
    fn json_forms_differ_when_escaping_matters() {
        let minimal = json_escape(TRICKY, Json::Minimal);
        assert_eq!(
            minimal,
            "pa\\\"ss\\nw\\\\ord/é€😀 <&> kz-canary-7f3a9c1e5b".as_bytes()
        );
        let ascii = json_escape(TRICKY, Json::Ascii);
        assert_eq!(
            ascii,
            b"pa\\\"ss\\nw\\\\ord/\\u00e9\\u20ac\\ud83d\\ude00 <&> kz-canary-7f3a9c1e5b"
        );
        let go = json_escape(TRICKY, Json::HtmlSafe);
        assert_eq!(
            go,
            "pa\\\"ss\\nw\\\\ord/é€😀 \\u003c\\u0026\\u003e kz-canary-7f3a9c1e5b".as_bytes()
        );
        let t = table(&[TRICKY.as_bytes()]);
        let s = Scrubber::new(&t);
        let (out, hits) = s.scrub_buffer(&go);
        assert_eq!(out, t.secrets[0].token.as_bytes());
        assert_eq!(hits, vec![0]);
        assert_eq!(
            json_escape("\u{1}\u{8}\u{c}\u{1f}", Json::Minimal),
            b"\\u0001\\b\\f\\u001f"
        );
    }

    #[test]
    fn headers_are_scrubbed() {
        let t = table(&[CANARY.as_bytes(), TRICKY.as_bytes()]);
        let s = Scrubber::new(&t);
        let mut h = HeaderMap::new();
        h.insert("x-echo", format!("key={CANARY}").parse().unwrap());
        h.append(
            "set-cookie",
            format!("a={}", URL_SAFE_NO_PAD.encode(CANARY))
                .parse()
                .unwrap(),
        );
        h.append("set-cookie", "b=plain".parse().unwrap());
        let url = String::from_utf8(percent_encode(TRICKY.as_bytes())).unwrap();
        h.insert(
            http::header::LOCATION,
            format!("/cb?v={url}").parse().unwrap(),
        );
        assert_eq!(s.scrub_headers(&mut h), vec![0, 1]);
        assert_eq!(h["x-echo"], format!("key={}", t.secrets[0].token).as_str());
        let cookies: Vec<_> = h
            .get_all("set-cookie")
            .iter()
            .map(|v| v.to_str().unwrap().to_string())
            .collect();
        assert_eq!(
            cookies,
            [
                format!("a={}", URL_SAFE_NO_PAD.encode(&t.secrets[0].token)),
                "b=plain".into()
            ]
        );
        assert_eq!(
            h[http::header::LOCATION],
            format!("/cb?v={}", t.secrets[1].token).as_str()
        );
        let all: String = h
            .values()
            .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
            .collect();
        assert!(!all.contains(CANARY));
        assert!(s.scrub_headers(&mut h).is_empty(), "nothing left");
    }

    #[test]
    fn header_names_are_scrubbed_ignoring_case_and_order_is_kept() {
        let t = table(&[b"AbCd-Secret-Value-99"]);
        let s = Scrubber::new(&t);
        let mut h = HeaderMap::new();
        h.append("x-first", "1".parse().unwrap());
        h.append("x-abcd-secret-value-99", "2".parse().unwrap());
        h.append("x-abcd-secret-value-99", "3".parse().unwrap());
        h.append("x-last", "4".parse().unwrap());
        assert_eq!(s.values_in_headers(&h), vec![0]);
        assert_eq!(s.scrub_headers(&mut h), vec![0]);
        let got: Vec<(String, String)> = h
            .iter()
            .map(|(n, v)| (n.to_string(), v.to_str().unwrap().to_string()))
            .collect();
        let renamed = format!("x-{}", t.secrets[0].token);
        assert_eq!(
            got,
            [
                ("x-first".to_string(), "1".to_string()),
                (renamed.clone(), "2".to_string()),
                (renamed, "3".to_string()),
                ("x-last".to_string(), "4".to_string()),
            ]
        );
        assert!(s.values_in_headers(&h).is_empty());
    }

    #[test]
    fn short_values_are_not_scrubbed() {
        let t = table(&[b"1234567", b"", b"ab"]);
        let s = Scrubber::new(&t);
        assert!(s.is_empty());
        let body = b"id=1234567 ab MTIzNDU2Nw==";
        assert_eq!(s.scrub_buffer(body), (body.to_vec(), vec![]));
        assert_eq!(stream_all(&s, body, 2), (body.to_vec(), vec![]));
        let t = table(&[b"1234567", b"12345678"]);
        let s = Scrubber::new(&t);
        assert!(!s.is_empty());
        let (out, hits) = s.scrub_buffer(b"1234567 12345678");
        assert_eq!(out, format!("1234567 {}", t.secrets[1].token).as_bytes());
        assert_eq!(hits, vec![1]);
    }

    #[test]
    fn identical_values_are_deduplicated_and_hits_are_taken() {
        let t = table(&[CANARY.as_bytes(), CANARY.as_bytes()]);
        let s = Scrubber::new(&t);
        let (out, hits) = s.scrub_buffer(CANARY.as_bytes());
        assert_eq!(out, t.secrets[0].token.as_bytes(), "the first secret wins");
        assert_eq!(hits, vec![0]);
        let mut st = s.stream();
        let mut out = Vec::new();
        st.feed(format!("{CANARY} and text after it").as_bytes(), &mut out);
        st.finish(&mut out);
        assert_eq!(st.take_hits(), vec![0]);
        assert!(st.take_hits().is_empty());
        let shown = format!("{s:?} {st:?}");
        assert!(!shown.contains(CANARY), "{shown}");
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(300))]
        #[test]
        fn streaming_scrub_equals_buffer(
            parts in prop::collection::vec((0usize..8, prop::collection::vec(any::<u8>(), 0..6)), 0..12),
            cuts in prop::collection::vec(0usize..2000, 0..20),
        ) {
            let values: [&[u8]; 2] = [TRICKY.as_bytes(), b"\xff\xfe\x00binary"];
            let t = table(&values);
            let s = Scrubber::new(&t);
            let all_forms: Vec<Vec<u8>> = values.iter().zip(&t.secrets)
                .flat_map(|(v, sec)| forms(v, sec.token.as_bytes()).into_iter().map(|f| f.1))
                .collect();
            let mut body = Vec::new();
            for (k, noise) in &parts {
                body.extend_from_slice(noise);
                if let Some(f) = all_forms.get(*k) {
                    // Whole forms and their prefixes.
                    let n = if noise.len() % 2 == 0 { f.len() } else { f.len() / 2 };
                    body.extend_from_slice(&f[..n]);
                }
            }
            let expected = s.scrub_buffer(&body);
            let mut cuts: Vec<usize> = cuts.into_iter().map(|c| c.min(body.len())).collect();
            cuts.sort_unstable();
            let mut st = s.stream();
            let mut out = Vec::new();
            let mut prev = 0;
            for c in cuts.into_iter().chain([body.len()]) {
                st.feed(&body[prev..c], &mut out);
                prev = c;
            }
            st.finish(&mut out);
            prop_assert_eq!((out, st.take_hits()), expected);
        }
    }
}
