//! Requests: masked tokens → real values in the target, headers and body, only for secrets the
//! caller allows; any other token is reported, never swapped.

use base64::Engine;
use base64::engine::DecodePaddingMode;
use base64::engine::general_purpose::{GeneralPurpose, GeneralPurposeConfig, STANDARD};
use http::{HeaderMap, HeaderName, HeaderValue, header};
use kz_config::SwapIn;
use kz_redact::Redactor;
use kz_secret::SecretValue;
use zeroize::{Zeroize, Zeroizing};

use super::{SwapError, header_safe, percent_encode, sorted};
use crate::secrets::SecretTable;

/// Decodes `Basic` credentials with or without padding.
const BASIC: GeneralPurpose = GeneralPurpose::new(
    &base64::alphabet::STANDARD,
    GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent),
);

/// Swaps tokens for values; built once per run from the secret table. Pattern `i` of every
/// redactor here is secret `i`. Each secret is swapped only where its entry's `swap` says
/// (headers and query by default); elsewhere its token is left as it is (the location's
/// redactor replaces it with itself). Tokens are found, and checked against `allowed`,
/// everywhere.
pub struct Swapper {
    /// token → token, for every secret: finds tokens (holds no value).
    finder: Redactor,
    /// Per location, token → value (or its percent-encoding in the target) for secrets swapped
    /// there, token → token for the others.
    headers: Redactor,
    query: Redactor,
    path: Redactor,
    body: Redactor,
    /// Where each secret is swapped.
    swap: Vec<SwapIn>,
    /// Tokens and values again, to build per-request streams with forbidden tokens left alone.
    tokens: Vec<Vec<u8>>,
    raw: Vec<SecretValue>,
    /// Whether each value may go into a header as it is.
    header_ok: Vec<bool>,
}

impl std::fmt::Debug for Swapper {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Swapper")
            .field("secrets", &self.tokens.len())
            .finish_non_exhaustive()
    }
}

/// The first hit whose secret is not allowed.
fn forbidden(hits: &[usize], allowed: &dyn Fn(usize) -> bool) -> Result<(), SwapError> {
    match hits.iter().find(|&&i| !allowed(i)) {
        Some(&i) => Err(SwapError::Forbidden(i)),
        None => Ok(()),
    }
}

impl Swapper {
    /// A swapper for every secret of `table` (secret `i` is index `i` in all results).
    pub fn new(table: &SecretTable) -> Self {
        let s = &table.secrets;
        let token = |i: usize| {
            s.get(i)
                .map(|b| b.token.as_bytes().to_vec())
                .unwrap_or_default()
        };
        let at = |on: fn(&SwapIn) -> bool, encode: bool| {
            Redactor::new(s.iter().map(|b| {
                let with = match (on(&b.swap), encode) {
                    (false, _) => b.token.as_bytes().to_vec(),
                    (true, false) => b.value.expose_bytes().to_vec(),
                    (true, true) => percent_encode(b.value.expose_bytes()),
                };
                (b.token.as_bytes().to_vec(), with)
            }))
        };
        Self {
            finder: at(|_| false, false),
            headers: at(|w| w.headers, false),
            query: at(|w| w.query, true),
            path: at(|w| w.path, true),
            body: at(|w| w.body, false),
            swap: s.iter().map(|b| b.swap).collect(),
            tokens: (0..s.len()).map(token).collect(),
            raw: s.iter().map(|b| b.value.duplicate()).collect(),
            header_ok: s
                .iter()
                .map(|b| b.value.expose_bytes().iter().all(|&c| header_safe(c)))
                .collect(),
        }
    }

    /// Of `hits`, the secrets swapped at the location `on` picks.
    fn swapped(&self, hits: &[usize], on: fn(&SwapIn) -> bool) -> Vec<usize> {
        hits.iter()
            .copied()
            .filter(|&i| self.swap.get(i).is_some_and(on))
            .collect()
    }

    /// Indices of the secrets whose token occurs in `bytes` (sorted, deduplicated).
    pub fn tokens_in(&self, bytes: &[u8]) -> Vec<usize> {
        self.finder.hits_in(bytes)
    }

    /// Swaps tokens in a request target: in the query string for secrets swapped there, in
    /// the path for secrets swapped there; values are percent-encoded (all but RFC 3986
    /// unreserved bytes). Any token whose secret is not `allowed` gives
    /// [`SwapError::Forbidden`], wherever it is. `Ok(None)` when nothing is swapped. Returns the
    /// new target and the secrets swapped.
    pub fn swap_target(
        &self,
        path_and_query: &str,
        allowed: &dyn Fn(usize) -> bool,
    ) -> Result<Option<(String, Vec<usize>)>, SwapError> {
        let hits = self.tokens_in(path_and_query.as_bytes());
        if hits.is_empty() {
            return Ok(None);
        }
        forbidden(&hits, allowed)?;
        let (path, query) = match path_and_query.split_once('?') {
            Some((p, q)) => (p, Some(q)),
            None => (path_and_query, None),
        };
        let mut used = self.swapped(&self.tokens_in(path.as_bytes()), |w| w.path);
        if let Some(q) = query {
            used.extend(self.swapped(&self.tokens_in(q.as_bytes()), |w| w.query));
        }
        if used.is_empty() {
            return Ok(None);
        }
        let mut out = self.path.replace_all(path.as_bytes());
        if let Some(q) = query {
            let swapped = Zeroizing::new(self.query.replace_all(q.as_bytes()));
            out.reserve_exact(1 + swapped.len());
            out.push(b'?');
            out.extend_from_slice(&swapped);
        }
        // ASCII replaced by ASCII in a `str`: always UTF-8.
        let target = String::from_utf8(out).map_err(|e| {
            e.into_bytes().zeroize();
            SwapError::Decode("the rewritten request target is not UTF-8".into())
        })?;
        Ok(Some((target, sorted(used))))
    }

    /// Swaps tokens of secrets swapped in headers in every header value, in place (swapped
    /// values are marked sensitive). In `Authorization` / `Proxy-Authorization: Basic <base64>`
    /// the credentials are decoded, swapped and re-encoded. A token whose secret is not
    /// `allowed` gives [`SwapError::Forbidden`] (checked over all headers first); a value with
    /// CR, LF, NUL or another control character bound for a header (not inside Basic) gives
    /// [`SwapError::IllegalInHeader`]. On error `headers` is unchanged. Returns the secrets
    /// swapped.
    pub fn swap_headers(
        &self,
        headers: &mut HeaderMap,
        allowed: &dyn Fn(usize) -> bool,
    ) -> Result<Vec<usize>, SwapError> {
        let mut plans = Vec::with_capacity(headers.len());
        let mut used = Vec::new();
        for (name, value) in headers.iter() {
            let mut plan = self.plan_header(name, value);
            if let Some(p) = &mut plan {
                forbidden(&p.hits, allowed)?;
                p.hits = self.swapped(&p.hits, |w| w.headers);
                used.extend_from_slice(&p.hits);
            }
            plans.push(plan.filter(|p| !p.hits.is_empty()));
        }
        if used.is_empty() {
            return Ok(used);
        }
        let mut new_values = Vec::with_capacity(plans.len());
        for plan in plans {
            new_values.push(match plan {
                Some(p) => Some(self.apply(p)?),
                None => None,
            });
        }
        for ((_, slot), new) in headers.iter_mut().zip(new_values) {
            if let Some(v) = new {
                *slot = v;
            }
        }
        Ok(sorted(used))
    }

    /// Which tokens a header value holds, and where (raw or inside Basic credentials).
    fn plan_header(&self, name: &HeaderName, value: &HeaderValue) -> Option<HeaderPlan> {
        let bytes = value.as_bytes();
        if (name == header::AUTHORIZATION || name == header::PROXY_AUTHORIZATION)
            && let Some((scheme, decoded)) = basic_credentials(bytes)
        {
            let hits = self.tokens_in(&decoded);
            if !hits.is_empty() {
                return Some(HeaderPlan {
                    hits,
                    basic: Some((scheme.to_vec(), decoded)),
                    raw: Vec::new(),
                });
            }
        }
        let hits = self.tokens_in(bytes);
        (!hits.is_empty()).then(|| HeaderPlan {
            hits,
            basic: None,
            raw: bytes.to_vec(),
        })
    }

    /// The swapped header value for a plan whose secrets are all allowed.
    fn apply(&self, plan: HeaderPlan) -> Result<HeaderValue, SwapError> {
        let first = plan.hits.first().copied().unwrap_or_default();
        let bytes = match plan.basic {
            Some((scheme, decoded)) => {
                // Base64 can carry any byte: no header check on the values.
                let swapped = Zeroizing::new(self.headers.replace_all(&decoded));
                basic_value(&scheme, &swapped)
                    .ok_or(SwapError::Decode("Basic credentials are too long".into()))?
            }
            None => {
                if let Some(&bad) = plan
                    .hits
                    .iter()
                    .find(|&&i| !self.header_ok.get(i).copied().unwrap_or(false))
                {
                    return Err(SwapError::IllegalInHeader(bad));
                }
                Zeroizing::new(self.headers.replace_all(&plan.raw))
            }
        };
        let mut v =
            HeaderValue::from_bytes(&bytes).map_err(|_| SwapError::IllegalInHeader(first))?;
        v.set_sensitive(true);
        Ok(v)
    }

    /// Swaps tokens of secrets swapped in bodies in a whole body. A token whose secret is not
    /// `allowed` gives [`SwapError::Forbidden`]. Returns the new body and the secrets swapped.
    pub fn swap_buffer(
        &self,
        body: &[u8],
        allowed: &dyn Fn(usize) -> bool,
    ) -> Result<(Vec<u8>, Vec<usize>), SwapError> {
        let hits = self.tokens_in(body);
        if hits.is_empty() {
            return Ok((body.to_vec(), hits));
        }
        forbidden(&hits, allowed)?;
        let used = self.swapped(&hits, |w| w.body);
        if used.is_empty() {
            return Ok((body.to_vec(), used));
        }
        Ok((self.body.replace_all(body), used))
    }

    /// A streaming body swap: tokens of `allowed` secrets swapped in bodies are replaced (also
    /// when split across chunks), those of other allowed secrets left as they are; the token of
    /// any other secret makes [`BodySwap::feed`] fail as soon as it is complete.
    pub fn stream(&self, allowed: &dyn Fn(usize) -> bool) -> BodySwap {
        let allowed: Vec<bool> = (0..self.tokens.len()).map(allowed).collect();
        let swapped: Vec<bool> = allowed
            .iter()
            .zip(&self.swap)
            .map(|(&ok, w)| ok && w.body)
            .collect();
        let redactor = Redactor::new(self.tokens.iter().zip(&self.raw).zip(&swapped).map(
            |((t, v), &on)| {
                let with = if on {
                    v.expose_bytes().to_vec()
                } else {
                    t.clone()
                };
                (t.clone(), with)
            },
        ));
        BodySwap {
            redactor,
            allowed,
            swapped,
            failed: None,
        }
    }
}

/// A header value found to carry tokens.
struct HeaderPlan {
    hits: Vec<usize>,
    /// `Basic` scheme as written and the decoded credentials, when the tokens are inside them.
    basic: Option<(Vec<u8>, Zeroizing<Vec<u8>>)>,
    /// Otherwise the raw value.
    raw: Vec<u8>,
}

/// `Basic <base64>` → (scheme as written, decoded credentials).
fn basic_credentials(value: &[u8]) -> Option<(&[u8], Zeroizing<Vec<u8>>)> {
    let value = value.trim_ascii();
    let split = value.iter().position(|&b| b == b' ' || b == b'\t')?;
    let (scheme, rest) = value.split_at(split);
    if !scheme.eq_ignore_ascii_case(b"basic") {
        return None;
    }
    let decoded = BASIC.decode(rest.trim_ascii()).ok()?;
    Some((scheme, Zeroizing::new(decoded)))
}

/// `scheme SP base64(credentials)`, sized up front.
fn basic_value(scheme: &[u8], credentials: &[u8]) -> Option<Zeroizing<Vec<u8>>> {
    let len = base64::encoded_len(credentials.len(), true)?;
    let mut out = Zeroizing::new(vec![0u8; scheme.len() + 1 + len]);
    let (head, b64) = out.split_at_mut(scheme.len() + 1);
    let (s, sp) = head.split_at_mut(scheme.len());
    s.copy_from_slice(scheme);
    sp.fill(b' ');
    STANDARD.encode_slice(credentials, b64).ok()?;
    Some(out)
}

/// A streaming body swap (see [`Swapper::stream`]).
pub struct BodySwap {
    redactor: Redactor,
    allowed: Vec<bool>,
    /// Allowed and swapped in bodies.
    swapped: Vec<bool>,
    failed: Option<usize>,
}

impl std::fmt::Debug for BodySwap {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BodySwap")
            .field("failed", &self.failed)
            .finish_non_exhaustive()
    }
}

impl BodySwap {
    /// Feeds a chunk, appending what can be sent now to `out`. Fails with
    /// [`SwapError::Forbidden`] as soon as a forbidden token is complete; then nothing from this
    /// chunk is appended (what it had added is zeroed) and every later call fails the same way.
    pub fn feed(&mut self, chunk: &[u8], out: &mut Vec<u8>) -> Result<(), SwapError> {
        self.guard(out, |r, out| r.feed(chunk, out))
    }

    /// Ends the stream, appending everything still held back.
    pub fn finish(&mut self, out: &mut Vec<u8>) -> Result<(), SwapError> {
        self.guard(out, |r, out| r.finish(out))
    }

    /// Secrets swapped so far (sorted).
    pub fn used(&self) -> Vec<usize> {
        self.redactor
            .hits()
            .into_iter()
            .filter(|&i| self.swapped.get(i).copied().unwrap_or(false))
            .collect()
    }

    fn guard(
        &mut self,
        out: &mut Vec<u8>,
        step: impl FnOnce(&mut Redactor, &mut Vec<u8>),
    ) -> Result<(), SwapError> {
        if let Some(i) = self.failed {
            return Err(SwapError::Forbidden(i));
        }
        let start = out.len();
        step(&mut self.redactor, out);
        let bad = self
            .redactor
            .hits()
            .into_iter()
            .find(|&i| !self.allowed.get(i).copied().unwrap_or(false));
        if let Some(i) = bad {
            if let Some(added) = out.get_mut(start..) {
                added.zeroize();
            }
            out.truncate(start);
            self.failed = Some(i);
            return Err(SwapError::Forbidden(i));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::secrets::BlindSecret;
    use proptest::prelude::*;

    const CANARY: &str = "kz-canary-7f3a9c1e5b";

    const EVERYWHERE: SwapIn = SwapIn {
        headers: true,
        query: true,
        path: true,
        body: true,
    };

    /// Secrets swapped everywhere (the tests of how swapping works).
    fn table(values: &[&[u8]]) -> SecretTable {
        table_with(values, EVERYWHERE)
    }

    fn table_with(values: &[&[u8]], swap: SwapIn) -> SecretTable {
        SecretTable {
            secrets: values
                .iter()
                .enumerate()
                .map(|(i, v)| {
                    BlindSecret::new(format!("S{i}"), SecretValue::from_bytes(v.to_vec()), vec![])
                        .with_swap(swap)
                })
                .collect(),
        }
    }

    #[test]
    fn by_default_only_headers_and_query_are_swapped() {
        let t = table_with(&[CANARY.as_bytes()], SwapIn::default());
        let s = Swapper::new(&t);
        let tk = tok(&t, 0);
        // Query: swapped; path: left as the token.
        let (new, used) = s
            .swap_target(&format!("/a/{tk}/b?key={tk}"), &all)
            .unwrap()
            .unwrap();
        assert_eq!(new, format!("/a/{tk}/b?key={CANARY}"));
        assert_eq!(used, vec![0]);
        assert!(
            s.swap_target(&format!("/a/{tk}?x=1"), &all)
                .unwrap()
                .is_none()
        );
        // Headers: swapped.
        let mut h = HeaderMap::new();
        h.insert("x-key", tk.parse().unwrap());
        assert_eq!(s.swap_headers(&mut h, &all).unwrap(), vec![0]);
        assert_eq!(h["x-key"], CANARY);
        // Body: left as the token, whole or streamed, and reported as not used.
        let body = format!("{{\"text\": \"{tk}\"}}");
        let (out, used) = s.swap_buffer(body.as_bytes(), &all).unwrap();
        assert_eq!(out, body.as_bytes());
        assert!(used.is_empty());
        let mut st = s.stream(&all);
        let mut out = Vec::new();
        for c in body.as_bytes().chunks(3) {
            st.feed(c, &mut out).unwrap();
        }
        st.finish(&mut out).unwrap();
        assert_eq!(out, body.as_bytes());
        assert!(st.used().is_empty());
        // A token not bound to the destination is refused wherever it is, swapped there or not.
        let none = |_: usize| false;
        for r in [
            s.swap_buffer(body.as_bytes(), &none).map(|_| ()),
            s.swap_target(&format!("/a/{tk}"), &none).map(|_| ()),
        ] {
            assert!(matches!(r, Err(SwapError::Forbidden(0))), "{r:?}");
        }
        let mut st = s.stream(&none);
        let mut out = Vec::new();
        assert!(st.feed(body.as_bytes(), &mut out).is_err());
        assert!(!contains(&out, CANARY.as_bytes()));
    }

    #[test]
    fn each_secret_is_swapped_where_its_entry_says() {
        let mut t = table_with(&[b"value-zero-000", b"value-one-1111"], SwapIn::default());
        t.secrets[1].swap = SwapIn {
            headers: false,
            query: false,
            path: true,
            body: true,
        };
        let s = Swapper::new(&t);
        let (t0, t1) = (tok(&t, 0).to_string(), tok(&t, 1).to_string());
        let (new, used) = s
            .swap_target(&format!("/{t0}/{t1}?a={t0}&b={t1}"), &all)
            .unwrap()
            .unwrap();
        assert_eq!(new, format!("/{t0}/value-one-1111?a=value-zero-000&b={t1}"));
        assert_eq!(used, vec![0, 1]);
        let mut h = HeaderMap::new();
        h.insert("x-a", format!("{t0} {t1}").parse().unwrap());
        let basic = STANDARD.encode(format!("{t1}:{t0}"));
        h.insert(
            header::AUTHORIZATION,
            format!("Basic {basic}").parse().unwrap(),
        );
        assert_eq!(s.swap_headers(&mut h, &all).unwrap(), vec![0]);
        assert_eq!(h["x-a"], format!("value-zero-000 {t1}").as_str());
        let auth = h[header::AUTHORIZATION].to_str().unwrap();
        let decoded = STANDARD
            .decode(auth.strip_prefix("Basic ").unwrap())
            .unwrap();
        assert_eq!(decoded, format!("{t1}:value-zero-000").as_bytes());
        let (out, used) = s
            .swap_buffer(format!("{t0}|{t1}").as_bytes(), &all)
            .unwrap();
        assert_eq!(out, format!("{t0}|value-one-1111").as_bytes());
        assert_eq!(used, vec![1]);
    }

    #[test]
    fn a_kept_token_needs_no_header_check() {
        // A value that cannot go into a header, swapped only in bodies: its token in a header is
        // left alone rather than refused.
        let t = table_with(
            &[b"line1\nline2"],
            SwapIn {
                body: true,
                ..SwapIn::NONE
            },
        );
        let s = Swapper::new(&t);
        let mut h = HeaderMap::new();
        h.insert("x-a", tok(&t, 0).parse().unwrap());
        assert!(s.swap_headers(&mut h, &all).unwrap().is_empty());
        assert_eq!(h["x-a"], tok(&t, 0));
    }

    fn tok(t: &SecretTable, i: usize) -> &str {
        &t.secrets[i].token
    }

    fn contains(hay: &[u8], needle: &[u8]) -> bool {
        hay.windows(needle.len()).any(|w| w == needle)
    }

    fn all(_: usize) -> bool {
        true
    }

    #[test]
    fn target_values_are_percent_encoded() {
        let value = format!("p@ss w/rd?&=+%#{CANARY}é");
        let t = table(&[value.as_bytes(), b"other-value-1"]);
        let s = Swapper::new(&t);
        let target = format!("/v1/items?key={}&b=2&k2={}", tok(&t, 0), tok(&t, 0));
        let (new, used) = s.swap_target(&target, &all).unwrap().unwrap();
        let enc = format!("p%40ss%20w%2Frd%3F%26%3D%2B%25%23{CANARY}%C3%A9");
        assert_eq!(new, format!("/v1/items?key={enc}&b=2&k2={enc}"));
        assert_eq!(used, vec![0]);
        assert!(
            s.swap_target("/v1/items?kz_masked_=1", &all)
                .unwrap()
                .is_none()
        );
        let path = format!("/a/{}/b", tok(&t, 1));
        assert_eq!(
            s.swap_target(&path, &all).unwrap().unwrap(),
            ("/a/other-value-1/b".to_string(), vec![1])
        );
    }

    #[test]
    fn target_with_a_forbidden_token_is_refused() {
        let t = table(&[CANARY.as_bytes(), b"second-secret"]);
        let s = Swapper::new(&t);
        let target = format!("/x?a={}&b={}", tok(&t, 0), tok(&t, 1));
        let err = s.swap_target(&target, &|i| i == 0).unwrap_err();
        assert!(matches!(err, SwapError::Forbidden(1)), "{err:?}");
        let shown = format!("{err} {err:?} {s:?}");
        assert!(
            !shown.contains(CANARY) && !shown.contains("second-secret"),
            "{shown}"
        );
        assert!(shown.contains("secret #1"));
    }

    #[test]
    fn headers_are_swapped_including_basic() {
        let t = table(&[CANARY.as_bytes(), b"pw-with:colon", b"third-value-xyz"]);
        let s = Swapper::new(&t);
        let mut h = HeaderMap::new();
        h.insert(
            header::AUTHORIZATION,
            format!("Bearer {}", tok(&t, 0)).parse().unwrap(),
        );
        let basic = STANDARD.encode(format!("user:{}", tok(&t, 1)));
        h.insert(
            header::PROXY_AUTHORIZATION,
            format!("basic  {basic}").parse().unwrap(),
        );
        h.append("x-multi", "plain".parse().unwrap());
        h.append("x-multi", format!("v={}", tok(&t, 2)).parse().unwrap());
        h.insert("x-untouched", "nothing here".parse().unwrap());
        let used = s.swap_headers(&mut h, &all).unwrap();
        assert_eq!(used, vec![0, 1, 2]);
        assert_eq!(
            h[header::AUTHORIZATION],
            format!("Bearer {CANARY}").as_str()
        );
        assert!(h[header::AUTHORIZATION].is_sensitive());
        let pa = h[header::PROXY_AUTHORIZATION].to_str().unwrap();
        let b64 = pa.strip_prefix("basic ").unwrap();
        assert_eq!(STANDARD.decode(b64).unwrap(), b"user:pw-with:colon");
        let multi: Vec<_> = h
            .get_all("x-multi")
            .iter()
            .map(|v| v.to_str().unwrap())
            .collect();
        assert_eq!(multi, ["plain", "v=third-value-xyz"]);
        assert_eq!(h["x-untouched"], "nothing here");
        assert!(!h["x-untouched"].is_sensitive());
    }

    #[test]
    fn basic_without_padding_and_raw_token_after_basic() {
        let t = table(&[CANARY.as_bytes()]);
        let s = Swapper::new(&t);
        let mut h = HeaderMap::new();
        let nopad =
            base64::engine::general_purpose::STANDARD_NO_PAD.encode(format!("u:{}", tok(&t, 0)));
        h.insert(
            header::AUTHORIZATION,
            format!("Basic {nopad}").parse().unwrap(),
        );
        s.swap_headers(&mut h, &all).unwrap();
        let b64 = h[header::AUTHORIZATION]
            .to_str()
            .unwrap()
            .strip_prefix("Basic ")
            .unwrap()
            .to_string();
        assert_eq!(
            STANDARD.decode(b64).unwrap(),
            format!("u:{CANARY}").as_bytes()
        );
        // A client that puts the token itself after `Basic` gets it swapped as it is.
        h.insert(
            header::AUTHORIZATION,
            format!("Basic {}", tok(&t, 0)).parse().unwrap(),
        );
        s.swap_headers(&mut h, &all).unwrap();
        assert_eq!(h[header::AUTHORIZATION], format!("Basic {CANARY}").as_str());
    }

    #[test]
    fn forbidden_tokens_in_headers_are_refused_and_nothing_changes() {
        let t = table(&[CANARY.as_bytes(), b"second-secret"]);
        let s = Swapper::new(&t);
        for forbidden_in_basic in [false, true] {
            let mut h = HeaderMap::new();
            h.insert("x-ok", tok(&t, 0).parse().unwrap());
            let bad = if forbidden_in_basic {
                (
                    header::AUTHORIZATION,
                    format!("Basic {}", STANDARD.encode(format!("u:{}", tok(&t, 1)))),
                )
            } else {
                (
                    HeaderName::from_static("x-bad"),
                    format!("k={}", tok(&t, 1)),
                )
            };
            h.insert(bad.0, bad.1.parse().unwrap());
            let before = h.clone();
            let err = s.swap_headers(&mut h, &|i| i == 0).unwrap_err();
            assert!(matches!(err, SwapError::Forbidden(1)), "{err:?}");
            assert_eq!(h, before, "no partial swap on error");
            assert!(!format!("{err} {err:?}").contains(CANARY));
        }
    }

    #[test]
    fn control_characters_cannot_go_into_headers() {
        for bad in [
            &b"line1\r\nInjected: yes"[..],
            b"with\nLF-only",
            b"with\0NUL-byte",
            b"with\x01ctrl",
            b"with\x7fdel",
        ] {
            let mut v = bad.to_vec();
            v.extend_from_slice(CANARY.as_bytes());
            let t = table(&[&v]);
            let s = Swapper::new(&t);
            let mut h = HeaderMap::new();
            h.insert("x-key", tok(&t, 0).parse().unwrap());
            let err = s.swap_headers(&mut h, &all).unwrap_err();
            assert!(matches!(err, SwapError::IllegalInHeader(0)), "{err:?}");
            assert!(!format!("{err} {err:?}").contains(CANARY));
            assert_eq!(h["x-key"], tok(&t, 0), "not swapped");
            // Inside Basic the value is base64-encoded: legal.
            let mut h = HeaderMap::new();
            let basic = STANDARD.encode(format!("u:{}", tok(&t, 0)));
            h.insert(
                header::AUTHORIZATION,
                format!("Basic {basic}").parse().unwrap(),
            );
            assert_eq!(s.swap_headers(&mut h, &all).unwrap(), vec![0]);
            let b64 = h[header::AUTHORIZATION].to_str().unwrap()[6..].to_string();
            assert!(contains(&STANDARD.decode(b64).unwrap(), &v));
            // In bodies, too.
            let (body, _) = s.swap_buffer(tok(&t, 0).as_bytes(), &all).unwrap();
            assert_eq!(body, v);
        }
        // Tabs and non-ASCII (obs-text) are legal header bytes.
        let t = table(&["tab\there-é".as_bytes()]);
        let s = Swapper::new(&t);
        let mut h = HeaderMap::new();
        h.insert("x-key", tok(&t, 0).parse().unwrap());
        s.swap_headers(&mut h, &all).unwrap();
        assert_eq!(h["x-key"].as_bytes(), "tab\there-é".as_bytes());
    }

    #[test]
    fn buffer_swap_and_forbidden() {
        let t = table(&[CANARY.as_bytes(), b"\xff\xfebinary\x00value", b"third"]);
        let s = Swapper::new(&t);
        let body = format!("{{\"a\":\"{}\",\"b\":\"{}\"}}", tok(&t, 0), tok(&t, 1));
        let (out, used) = s.swap_buffer(body.as_bytes(), &all).unwrap();
        let mut want = format!("{{\"a\":\"{CANARY}\",\"b\":\"").into_bytes();
        want.extend_from_slice(b"\xff\xfebinary\x00value\"}");
        assert_eq!(out, want);
        assert_eq!(used, vec![0, 1]);
        assert_eq!(s.tokens_in(body.as_bytes()), vec![0, 1]);
        let err = s.swap_buffer(body.as_bytes(), &|i| i != 1).unwrap_err();
        assert!(matches!(err, SwapError::Forbidden(1)));
        assert_eq!(
            s.swap_buffer(b"no tokens", &|_| false).unwrap(),
            (b"no tokens".to_vec(), vec![])
        );
    }

    #[test]
    fn forbidden_token_split_across_chunks_is_detected() {
        let t = table(&[CANARY.as_bytes(), b"second-secret"]);
        let s = Swapper::new(&t);
        let body = format!("a={}&b={}&c=tail", tok(&t, 0), tok(&t, 1));
        let mut st = s.stream(&|i| i == 0);
        let mut out = Vec::new();
        let mut failed_at = None;
        for (n, b) in body.as_bytes().chunks(1).enumerate() {
            if let Err(e) = st.feed(b, &mut out) {
                failed_at = Some((n, e));
                break;
            }
        }
        let (n, e) = failed_at.expect("the forbidden token must be detected");
        assert!(matches!(e, SwapError::Forbidden(1)));
        let end_of_token = body.find(tok(&t, 1)).unwrap() + tok(&t, 1).len() - 1;
        assert_eq!(
            n, end_of_token,
            "detected at the byte that completes the token"
        );
        assert!(!contains(&out, b"second-secret"));
        assert!(matches!(
            st.feed(b"more", &mut out),
            Err(SwapError::Forbidden(1))
        ));
        assert!(matches!(st.finish(&mut out), Err(SwapError::Forbidden(1))));
        // A forbidden token held back at the end is caught by finish.
        let mut st = s.stream(&|i| i == 0);
        let mut out = Vec::new();
        st.feed(tok(&t, 1).as_bytes().split_at(30).0, &mut out)
            .unwrap();
        st.feed(tok(&t, 1).as_bytes().split_at(30).1, &mut out)
            .unwrap_err();
        assert!(format!("{st:?}").contains("failed"));
    }

    #[test]
    fn stream_reports_used() {
        let t = table(&[CANARY.as_bytes(), b"second-secret"]);
        let s = Swapper::new(&t);
        let mut st = s.stream(&all);
        let mut out = Vec::new();
        st.feed(&tok(&t, 1).as_bytes()[..20], &mut out).unwrap();
        st.feed(&tok(&t, 1).as_bytes()[20..], &mut out).unwrap();
        st.finish(&mut out).unwrap();
        assert_eq!(out, b"second-secret");
        assert_eq!(st.used(), vec![1]);
        assert!(!format!("{st:?}").contains("second-secret"));
    }

    /// Body pieces: text near tokens, tokens, token prefixes.
    fn piece() -> impl Strategy<Value = Vec<u8>> {
        prop_oneof![
            prop::collection::vec(
                prop::sample::select(b"kz_masked0123abc \n\xff".to_vec()),
                0..12
            ),
            (0usize..3).prop_map(|i| vec![0xF0, i as u8]), // marker: whole token i
            (0usize..3, 1usize..42).prop_map(|(i, n)| vec![0xF1, i as u8, n as u8]), // prefix
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(500))]
        #[test]
        fn streaming_equals_buffer(
            pieces in prop::collection::vec(piece(), 0..20),
            cuts in prop::collection::vec(0usize..1000, 0..20),
            forbid in prop::option::of(0usize..3),
        ) {
            let t = table(&[b"value-zero-kz_masked_", b"", b"v2\xff\x00\r\nkz"]);
            let s = Swapper::new(&t);
            let mut body = Vec::new();
            for p in &pieces {
                match p.as_slice() {
                    [0xF0, i] => body.extend_from_slice(tok(&t, usize::from(*i)).as_bytes()),
                    [0xF1, i, n] => body.extend_from_slice(&tok(&t, usize::from(*i)).as_bytes()[..usize::from(*n)]),
                    other => body.extend_from_slice(other),
                }
            }
            let allowed = |i: usize| Some(i) != forbid;
            let expected = s.swap_buffer(&body, &allowed);
            let mut cuts: Vec<usize> = cuts.into_iter().map(|c| c.min(body.len())).collect();
            cuts.sort_unstable();
            let mut st = s.stream(&allowed);
            let mut out = Vec::new();
            let mut prev = 0;
            let mut result = Ok(());
            for c in cuts.into_iter().chain([body.len()]) {
                result = st.feed(&body[prev..c], &mut out);
                prev = c;
                if result.is_err() { break; }
            }
            if result.is_ok() {
                result = st.finish(&mut out);
            }
            match expected {
                Ok((want, used)) => {
                    prop_assert!(result.is_ok());
                    prop_assert_eq!(out, want);
                    prop_assert_eq!(st.used(), used);
                }
                Err(SwapError::Forbidden(i)) => {
                    prop_assert!(matches!(result, Err(SwapError::Forbidden(j)) if j == i));
                }
                Err(e) => prop_assert!(false, "{e}"),
            }
        }
    }
}
