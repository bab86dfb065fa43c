//! Matching values in a decoded view of a stream (blind mode's scrub and egress check).
//!
//! A server can echo a value in any mix of escaped and plain characters, so no list of encoded
//! forms is complete. [`Matcher`] instead looks at views of the input:
//!
//! - the raw bytes;
//! - the input with one layer of escapes decoded (`\uXXXX` in either case, surrogate pairs
//!   joined into UTF-8; `\/ \\ \" \' \n \t \r \b \f`; `\xHH`; `%HH` in either case; HTML/XML
//!   character references `&#NN;`, `&#xHH;` and the named ones for ASCII punctuation), each
//!   decoded byte remembering the span of original bytes it came from;
//! - the same decoding applied a second time (a percent-encoded value inside a JSON string);
//! - for each escape sequence of a decoded layer, the other segmentation: its first byte read
//!   literally and what follows decoded again until both readings meet (text next to a value
//!   can otherwise swallow the value's edge into an escape).
//!
//! A value that itself holds escape-like text (`%41`, `\n`, `&amp;`) also gets its decoded forms
//! (one and two layers) as patterns: the views read that text as the decoder does, whatever
//! else of the value a server escaped.
//!
//! Every view is compared after a fold that drops CR and LF (line-wrapped base64, values split
//! over lines) and maps space, `-` and `_` to `+` and `/` (form encoding's `+` for a space, and
//! URL-safe base64 onto the standard alphabet); patterns are folded the same way. Patterns per
//! value: the value itself and its standard base64 at the three byte alignments (without the
//! edge characters that also carry neighbouring bits), so a value inside a longer base64 blob is
//! found too.
//!
//! A match is either a whole pattern or any contiguous fragment of a pattern at least
//! [`FRAGMENT_LEN`] bytes long (so pieces of a long value reflected separately cannot be joined
//! back). Matches are found through an index of every 8-byte gram of every pattern (a bit filter
//! in front of a hash table), extended byte by byte in both directions: memory and build time are
//! linear in the total size of the values, and scanning is one table look-up per input byte.
//!
//! The covering span of original bytes is replaced by the owner's replacement (the base64 of the
//! replacement for a base64 match). [`Stream`] gives exactly what [`Matcher::replace_all`] gives
//! under any chunking: it holds back a tail that could still be part of a match or of an escape
//! sequence, and never less than the longest value written with every byte escaped in two layers.
//!
//! Boundary: no I/O. Patterns, replacements and held-back bytes are zeroed on drop; `Debug`
//! shows counts only.

use std::sync::Arc;

use zeroize::Zeroizing;

/// Contiguous fragments of a value at least this long are matched (and replaced) even when the
/// rest of the value is not there. Shorter values are matched whole only.
pub const FRAGMENT_LEN: usize = 16;

/// Values (after the fold) shorter than this cannot be matched (the index works on 8-byte grams).
pub const MIN_LEN: usize = 8;

/// Grams of this many bytes are indexed at every offset of every pattern, and looked up at every
/// `STRIDE`-th byte of the input: any occurrence of at least `GRAM + STRIDE - 1` (<= `MIN_LEN`)
/// bytes holds one looked-up gram, wherever it starts.
const GRAM: usize = 4;
const STRIDE: usize = 4;
/// A match may begin in this many trailing bytes without any looked-up gram inside it yet.
const TAIL: usize = GRAM + STRIDE - 2;
/// At most this many places per distinct gram are indexed (a value that repeats one gram many
/// times would otherwise make every look-up slow).
const MAX_PER_GRAM: usize = 8;
/// The longest escape sequence decoded (`\ud83d\ude00`, `&#x0001F600;`).
const LOOKAHEAD: usize = 12;

const SKIP: u16 = 0x100;
/// Larger buffers are processed as a stream of chunks this size (bounded memory for the views).
const WHOLE_LIMIT: usize = 1 << 20;

/// Which form of a value a match was found in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Form {
    /// The value (through any escaping the decoded views undo).
    Plain,
    /// The value's base64 (standard or URL-safe, padded or not, with line breaks or not).
    Base64,
}

/// Options for [`Matcher::new`].
#[derive(Clone, Copy, Debug, Default)]
pub struct Options {
    /// Compare ASCII letters case-insensitively (HTTP header names, which arrive lower-cased).
    pub ignore_case: bool,
    /// Do not look for base64 forms.
    pub no_base64: bool,
}

struct Pattern {
    /// Folded bytes.
    bytes: Zeroizing<Vec<u8>>,
    owner: usize,
    form: Form,
}

/// Per owner: the replacement for a plain match and for a base64 match.
type Replacement = (Zeroizing<Vec<u8>>, Zeroizing<Vec<u8>>);

struct Inner {
    fold: [u16; 256],
    patterns: Vec<Pattern>,
    /// Per owner: the replacement for a plain match and for a base64 match.
    replacements: Vec<Replacement>,
    /// The first two bytes of every indexed gram (a bit per 16-bit value, 8 KiB).
    heads: Vec<u64>,
    /// One-bit filter over gram hashes (16 bits per gram: about 6 % false hits at most).
    filter: Vec<u64>,
    filter_mask: u64,
    /// CSR table: `entries[starts[b]..starts[b + 1]]` are the (pattern, offset) of bucket `b`.
    starts: Vec<u32>,
    entries: Vec<(u32, u32)>,
    bucket_mask: u64,
    /// A stream never treats output within this many bytes of its end as final: the longest
    /// pattern written with every byte escaped in two layers (up to 18 bytes each, `\u0025` +
    /// `32` + …), plus the longest escape sequence. A safety margin under the finer bound the
    /// views compute, which the fuzzer showed could let a match ending in an escape pass.
    hold: usize,
}

/// Finds values in decoded views (see the module documentation). Cheap to clone (shared).
#[derive(Clone)]
pub struct Matcher {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Matcher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Matcher")
            .field("patterns", &self.inner.patterns.len())
            .field("grams", &self.inner.entries.len())
            .finish_non_exhaustive()
    }
}

fn mix(g: u64) -> u64 {
    let mut h = (g ^ (g >> 29)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    h ^= h >> 32;
    h.wrapping_mul(0x94d0_49bb_1331_11eb)
}

fn fold_table(ignore_case: bool) -> [u16; 256] {
    let mut t = [0u16; 256];
    for (i, slot) in t.iter_mut().enumerate() {
        let b = u8::try_from(i).unwrap_or(0);
        *slot = match b {
            b'\r' | b'\n' => SKIP,
            b' ' | b'-' => u16::from(b'+'),
            b'_' => u16::from(b'/'),
            b'A'..=b'Z' if ignore_case => u16::from(b.to_ascii_lowercase()),
            _ => u16::from(b),
        };
    }
    t
}

const B64: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

/// Standard base64 without padding, sized up front (no reallocation leaves a copy behind).
pub fn base64(bytes: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(bytes.len().div_ceil(3) * 4);
    for c in bytes.chunks(3) {
        let b0 = u32::from(c.first().copied().unwrap_or(0));
        let b1 = u32::from(c.get(1).copied().unwrap_or(0));
        let b2 = u32::from(c.get(2).copied().unwrap_or(0));
        let n = (b0 << 16) | (b1 << 8) | b2;
        let chars = c.len() + 1;
        for k in 0..chars {
            let idx = (n >> (18 - 6 * k)) & 63;
            out.extend(B64.get(idx as usize));
        }
    }
    out
}

fn is_b64_char(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'+' | b'/' | b'-' | b'_')
}

impl Matcher {
    /// A matcher for `(value, replacement)` pairs; the index of a pair is its owner number.
    /// Values shorter than [`MIN_LEN`] after the fold are ignored. Both sides are zeroed on drop.
    pub fn new(pairs: impl IntoIterator<Item = (Vec<u8>, Vec<u8>)>, options: Options) -> Self {
        let fold = fold_table(options.ignore_case);
        let folded = |bytes: &[u8]| -> Zeroizing<Vec<u8>> {
            let mut out = Zeroizing::new(Vec::with_capacity(bytes.len()));
            for &b in bytes {
                let f = fold.get(usize::from(b)).copied().unwrap_or(SKIP);
                if f != SKIP {
                    out.push(u8::try_from(f).unwrap_or(0));
                }
            }
            out
        };
        let mut patterns: Vec<Pattern> = Vec::new();
        let mut replacements = Vec::new();
        for (owner, (value, with)) in pairs.into_iter().enumerate() {
            let value = Zeroizing::new(value);
            let with = Zeroizing::new(with);
            replacements.push((Zeroizing::new(with.to_vec()), Zeroizing::new(base64(&with))));
            let mut add = |bytes: Zeroizing<Vec<u8>>, form: Form| {
                if bytes.len() >= MIN_LEN && !patterns.iter().any(|p| *p.bytes == *bytes) {
                    patterns.push(Pattern { bytes, owner, form });
                }
            };
            let plain = folded(&value);
            if plain.len() < MIN_LEN {
                continue;
            }
            add(plain, Form::Plain);
            // A value that holds escape-like text (`%41`, `\n`, `&amp;`) is read by the decoded
            // views as the decoder reads it, whatever else of it was escaped: so its decoded
            // forms (one and two layers) are patterns too.
            if value.iter().any(|b| is_escape_start(*b)) {
                let mut l1 = Decoded::default();
                let mut l2 = Decoded::default();
                let raw = Raw(&value);
                if decode(&raw, value.len(), true, &mut l1).0 {
                    add(folded(&l1.bytes), Form::Plain);
                    if l1.nested && decode(&l1, l1.bytes.len(), true, &mut l2).0 {
                        add(folded(&l2.bytes), Form::Plain);
                    }
                }
            }
            if options.no_base64 {
                continue;
            }
            for align in 0..3usize {
                let mut shifted = Zeroizing::new(Vec::with_capacity(value.len() + align));
                shifted.resize(align, 0);
                shifted.extend_from_slice(&value);
                let enc = Zeroizing::new(base64(&shifted));
                // Characters that hold only bits of the value.
                let first = (8 * align).div_ceil(6);
                let last = (8 * (align + value.len())) / 6;
                if let Some(inner) = enc.get(first..last) {
                    add(folded(inner), Form::Base64);
                }
            }
        }
        let inner = build_index(fold, patterns, replacements);
        Self {
            inner: Arc::new(inner),
        }
    }

    /// Whether there is nothing to match.
    pub fn is_empty(&self) -> bool {
        self.inner.patterns.is_empty()
    }

    /// Number of patterns (values and their base64 forms) indexed.
    pub fn pattern_count(&self) -> usize {
        self.inner.patterns.len()
    }

    /// A new stream (see [`Stream`]).
    pub fn stream(&self) -> Stream {
        Stream {
            matcher: self.clone(),
            carry: Zeroizing::new(Vec::new()),
            buf: Zeroizing::new(Vec::new()),
            hits: Vec::new(),
            scratch: Scratch::default(),
        }
    }

    /// Replaces every match in a whole buffer; returns the output and the owners replaced
    /// (sorted, no duplicates).
    pub fn replace_all(&self, input: &[u8]) -> (Vec<u8>, Vec<usize>) {
        let mut out = Vec::with_capacity(input.len());
        if input.len() > WHOLE_LIMIT {
            // The same result (streaming equals whole-buffer), with the decoded views bounded.
            let mut st = self.stream();
            for c in input.chunks(WHOLE_LIMIT) {
                st.feed(c, &mut out);
            }
            st.finish(&mut out);
            return (out, st.take_hits());
        }
        let mut hits = Vec::new();
        self.emit(input, &mut out, &mut hits, true, &mut Scratch::default());
        (out, sorted(hits))
    }

    /// The owners [`Matcher::replace_all`] would replace in `input` (sorted, no duplicates).
    pub fn hits_in(&self, input: &[u8]) -> Vec<usize> {
        if self.is_empty() {
            return Vec::new();
        }
        if input.len() > WHOLE_LIMIT {
            return self.replace_all(input).1;
        }
        let spans = self.find(input, true, &mut Scratch::default()).0;
        sorted(
            spans
                .iter()
                .flat_map(|s| s.owners.iter().copied())
                .collect(),
        )
    }

    /// Emits the final prefix of `buf` into `out`; returns where the held tail starts.
    fn emit(
        &self,
        buf: &[u8],
        out: &mut Vec<u8>,
        hits: &mut Vec<usize>,
        last: bool,
        scratch: &mut Scratch,
    ) -> usize {
        if self.is_empty() {
            out.extend_from_slice(buf);
            return buf.len();
        }
        let (spans, cut) = self.find(buf, last, scratch);
        let mut pos = 0;
        for s in spans.iter().filter(|s| s.end <= cut) {
            out.extend_from_slice(buf.get(pos..s.start).unwrap_or_default());
            if let Some((plain, b64)) = self.inner.replacements.get(s.owner) {
                out.extend_from_slice(if s.form == Form::Base64 { b64 } else { plain });
            }
            hits.extend_from_slice(&s.owners);
            pos = s.end;
        }
        out.extend_from_slice(buf.get(pos..cut).unwrap_or_default());
        cut
    }

    /// Merged match spans (original coordinates) and the cut: everything before it is final.
    fn find(&self, buf: &[u8], last: bool, scratch: &mut Scratch) -> (Vec<Span>, usize) {
        let inner = &*self.inner;
        let mut st = Scan {
            spans: Vec::new(),
            bound: buf.len(),
            last,
            total: buf.len(),
        };
        let raw = Raw(buf);
        inner.scan_raw(buf, &mut st);
        let Scratch { l1, l2 } = scratch;
        let mut boundaries: Option<&Decoded> = None;
        let (has_l1, tentative) = decode(&raw, buf.len(), last, l1);
        // Bytes from an escape sequence that may still change on: a match may also begin in the
        // kept bytes just before it.
        if let Some(t) = tentative {
            st.lower(Some(raw.span(t).0));
            inner.bound_tail(&raw, t, &mut st);
        }
        if has_l1 {
            inner.scan_decoded(l1, &mut st);
            inner.scan_resegmented(&raw, l1, &mut st);
            // A second layer only when the first produced escape characters.
            let (has_l2, tentative) = if l1.nested {
                decode(&*l1, l1.firm, last, l2)
            } else {
                (false, None)
            };
            if let Some(t) = tentative {
                st.lower(Some(l1.span(t).0));
                inner.bound_tail(&*l1, t, &mut st);
            }
            if has_l2 {
                inner.scan_decoded(l2, &mut st);
                inner.scan_resegmented(&*l1, l2, &mut st);
                boundaries = Some(&*l2);
            } else {
                boundaries = Some(&*l1);
            }
        }
        let mut spans = st.spans;
        // Base64 matches also cover the partial character and padding that end a standalone
        // encoding.
        for s in spans.iter_mut().filter(|s| s.form == Form::Base64) {
            let tail = buf.get(s.end..).unwrap_or_default();
            let chars = tail.iter().take_while(|b| is_b64_char(**b)).count();
            let pad = tail
                .get(chars..)
                .unwrap_or_default()
                .iter()
                .take_while(|b| **b == b'=')
                .count();
            let ends = chars + pad < tail.len() || last;
            if chars <= 1 && ends {
                s.end += chars + pad;
            }
            if !last && s.end + LOOKAHEAD >= buf.len() {
                st.bound = st.bound.min(s.start);
            }
        }
        let spans = merge(spans);
        if last {
            return (spans, buf.len());
        }
        // The cut: not inside any match, not inside an escape sequence of any layer, and never
        // within `hold` bytes of the end.
        let mut cut = st.bound.min(buf.len().saturating_sub(inner.hold));
        loop {
            let before = cut;
            for s in &spans {
                if s.start < cut && s.end > cut {
                    cut = s.start;
                }
            }
            if let Some(d) = boundaries {
                cut = d.boundary_at_or_before(cut);
            }
            if cut == before {
                break;
            }
        }
        (spans, cut)
    }
}

fn sorted(mut v: Vec<usize>) -> Vec<usize> {
    v.sort_unstable();
    v.dedup();
    v
}

fn build_index(fold: [u16; 256], patterns: Vec<Pattern>, replacements: Vec<Replacement>) -> Inner {
    let grams: usize = patterns
        .iter()
        .map(|p| p.bytes.len().saturating_sub(GRAM - 1))
        .sum();
    let filter_bits = (grams * 16).next_power_of_two().max(1 << 18);
    let buckets = (grams / 2).next_power_of_two().max(64);
    let filter_mask = (filter_bits - 1) as u64;
    let bucket_mask = (buckets - 1) as u64;
    let mut filter = vec![0u64; filter_bits / 64];
    let mut heads = vec![0u64; (1 << 16) / 64];
    let mut counts = vec![0u32; buckets + 1];
    let each = |f: &mut dyn FnMut(u64, u32, u32)| {
        for (pi, p) in patterns.iter().enumerate() {
            for (off, w) in p.bytes.windows(GRAM).enumerate() {
                let mut g = [0u8; GRAM];
                g.copy_from_slice(w);
                f(
                    u64::from(u32::from_le_bytes(g)),
                    u32::try_from(pi).unwrap_or(u32::MAX),
                    u32::try_from(off).unwrap_or(u32::MAX),
                );
            }
        }
    };
    each(&mut |g, _, _| {
        let head = g & 0xffff;
        if let Some(w) = heads.get_mut((head >> 6) as usize) {
            *w |= 1 << (head & 63);
        }
        let h = mix(g);
        for bit in [h & filter_mask] {
            if let Some(w) = filter.get_mut((bit >> 6) as usize) {
                *w |= 1 << (bit & 63);
            }
        }
        if let Some(c) = counts.get_mut(((h >> 16) & bucket_mask) as usize + 1) {
            *c += 1;
        }
    });
    for i in 1..counts.len() {
        let prev = counts.get(i - 1).copied().unwrap_or(0);
        if let Some(c) = counts.get_mut(i) {
            *c += prev;
        }
    }
    let mut fill = counts.clone();
    let mut entries = vec![(0u32, 0u32); grams];
    each(&mut |g, p, o| {
        let b = ((mix(g) >> 16) & bucket_mask) as usize;
        if let Some(slot) = fill.get_mut(b)
            && let Some(e) = entries.get_mut(*slot as usize)
        {
            *e = (p, o);
            *slot += 1;
        }
    });
    // Cap the places per distinct gram, compacting in place.
    let gram_of = |&(p, o): &(u32, u32)| -> u64 {
        patterns
            .get(p as usize)
            .and_then(|p| p.bytes.get(o as usize..o as usize + GRAM))
            .map_or(0, |w| {
                let mut g = [0u8; GRAM];
                g.copy_from_slice(w);
                u64::from(u32::from_le_bytes(g))
            })
    };
    let mut starts = vec![0u32; buckets + 1];
    let mut write = 0usize;
    for b in 0..buckets {
        let (from, to) = (
            counts.get(b).copied().unwrap_or(0) as usize,
            counts.get(b + 1).copied().unwrap_or(0) as usize,
        );
        if let Some(s) = starts.get_mut(b) {
            *s = u32::try_from(write).unwrap_or(u32::MAX);
        }
        let mut bucket: Vec<(u32, u32)> = entries.get(from..to).unwrap_or_default().to_vec();
        bucket.sort_by_key(|e| (gram_of(e), e.0, e.1));
        let mut run_gram = None;
        let mut run = 0;
        for e in bucket {
            let g = gram_of(&e);
            if run_gram == Some(g) {
                run += 1;
            } else {
                run_gram = Some(g);
                run = 1;
            }
            if run <= MAX_PER_GRAM
                && let Some(slot) = entries.get_mut(write)
            {
                *slot = e;
                write += 1;
            }
        }
    }
    if let Some(s) = starts.get_mut(buckets) {
        *s = u32::try_from(write).unwrap_or(u32::MAX);
    }
    entries.truncate(write);
    entries.shrink_to_fit();
    let hold = patterns
        .iter()
        .map(|p| p.bytes.len())
        .max()
        .unwrap_or(0)
        .saturating_mul(18)
        .saturating_add(LOOKAHEAD);
    Inner {
        hold,
        fold,
        patterns,
        replacements,
        heads,
        filter,
        filter_mask,
        starts,
        entries,
        bucket_mask,
    }
}

/// A view of the input: bytes, and per byte the span of original bytes it came from.
trait View {
    fn len(&self) -> usize;
    fn byte(&self, i: usize) -> u8;
    fn span(&self, i: usize) -> (usize, usize);
}

/// A view held as one slice (everything but [`Undone`]).
trait Contiguous: View {
    fn bytes(&self) -> &[u8];
}

struct Raw<'a>(&'a [u8]);

impl View for Raw<'_> {
    fn len(&self) -> usize {
        self.0.len()
    }
    #[inline]
    fn byte(&self, i: usize) -> u8 {
        self.0.get(i).copied().unwrap_or(0)
    }
    fn span(&self, i: usize) -> (usize, usize) {
        (i, i + 1)
    }
}

impl Contiguous for Raw<'_> {
    fn bytes(&self) -> &[u8] {
        self.0
    }
}

/// Decoding buffers, reused across the chunks of a stream.
#[derive(Default)]
struct Scratch {
    l1: Decoded,
    l2: Decoded,
}

/// One escape sequence a layer decoded.
#[derive(Clone, Copy)]
struct Token {
    /// View index of the first byte it produced.
    at: usize,
    /// How many bytes it produced.
    n: usize,
    /// Index of its first byte in the layer below, and its length there.
    src: usize,
    src_len: usize,
}

/// A decoded layer read with another segmentation from one of its escape sequences on: the
/// sequence's first byte taken literally and the bytes after it decoded again, until the two
/// readings meet at a token boundary. A greedy decoder commits to an escape at its introducer,
/// so text next to a value can swallow the value's first or last bytes into an escape that is
/// not part of it (`%` before a value starting with two hex digits, `\u00` before one starting
/// with `41`, a `\` before the value's own `\u0026`); this view gives them back.
struct Resegmented<'a> {
    layer: &'a Decoded,
    /// Layer bytes before this index are kept.
    at: usize,
    /// Then these bytes (with their original spans) ...
    mid: &'a [u8],
    mid_spans: &'a [(usize, usize)],
    /// ... then the layer from this index on.
    resume: usize,
}

impl Resegmented<'_> {
    fn index_of(&self, i: usize) -> usize {
        if i <= self.at {
            i
        } else {
            (i + self.at + self.mid.len()).saturating_sub(self.resume)
        }
    }
}

impl View for Resegmented<'_> {
    fn len(&self) -> usize {
        self.index_of(self.layer.len())
            .max(self.at + self.mid.len())
    }
    #[inline]
    fn byte(&self, i: usize) -> u8 {
        if i < self.at {
            self.layer.byte(i)
        } else if let Some(b) = self.mid.get(i - self.at) {
            *b
        } else {
            self.layer.byte(i - self.at - self.mid.len() + self.resume)
        }
    }
    fn span(&self, i: usize) -> (usize, usize) {
        if i < self.at {
            self.layer.span(i)
        } else if let Some(s) = self.mid_spans.get(i - self.at) {
            *s
        } else {
            self.layer.span(i - self.at - self.mid.len() + self.resume)
        }
    }
}

/// The longest stretch decoded again after an undone escape before the two readings are joined
/// anyway (a long run of backslashes never meets; values inside one are matched in pieces).
const RESEGMENT_LIMIT: usize = 64;

/// A decoded layer.
#[derive(Default)]
struct Decoded {
    bytes: Zeroizing<Vec<u8>>,
    spans: Vec<(usize, usize)>,
    /// The escape sequences this layer decoded.
    tokens: Vec<Token>,
    /// Some decoded token produced an escape character (a nested encoding may follow).
    nested: bool,
    /// Bytes from here on may still decode differently when more input arrives.
    firm: usize,
    /// Index of the layer below from which its decoding may still change.
    src_tentative: usize,
}

impl View for Decoded {
    fn len(&self) -> usize {
        self.bytes.len()
    }
    #[inline]
    fn byte(&self, i: usize) -> u8 {
        self.bytes.get(i).copied().unwrap_or(0)
    }
    fn span(&self, i: usize) -> (usize, usize) {
        self.spans.get(i).copied().unwrap_or((0, 0))
    }
}

impl Contiguous for Decoded {
    fn bytes(&self) -> &[u8] {
        &self.bytes
    }
}

impl Decoded {
    fn clear(&mut self) {
        // Zeroes what was used (decoded bytes may be a value; the rest of the allocation was
        // zeroed before) and keeps the allocation for reuse.
        zeroize::Zeroize::zeroize(self.bytes.as_mut_slice());
        self.bytes.clear();
        self.spans.clear();
        self.tokens.clear();
        self.nested = false;
        self.firm = 0;
        self.src_tentative = 0;
    }

    /// The layer index where the byte of the layer below at `i` starts a token or a literal,
    /// or `None` when `i` is inside an escape sequence this layer decoded. `k` is a cursor into
    /// the tokens (no token before it ends after `i`); calls with growing `i` move it forward.
    fn boundary_from(&self, k: &mut usize, i: usize) -> Option<usize> {
        while self.tokens.get(*k).is_some_and(|t| t.src + t.src_len <= i) {
            *k += 1;
        }
        match self.tokens.get(*k) {
            Some(t) if i == t.src => Some(t.at),
            Some(t) if i > t.src => None,
            _ => match k.checked_sub(1).and_then(|p| self.tokens.get(p)) {
                Some(p) => Some(p.at + p.n + (i - p.src - p.src_len)),
                None => Some(i),
            },
        }
    }

    /// The greatest original position at or before `pos` where a token of this layer (and so of
    /// every layer below) starts.
    fn boundary_at_or_before(&self, pos: usize) -> usize {
        // Spans are sorted by start; the token holding `pos` starts at the greatest start <= pos.
        let idx = self.spans.partition_point(|s| s.0 <= pos);
        match idx.checked_sub(1).and_then(|i| self.spans.get(i)) {
            Some(&(s, e)) if pos < e => s,
            _ => pos,
        }
    }
}

fn hex(b: u8) -> Option<u32> {
    char::from(b).to_digit(16)
}

fn hex_n(bytes: &[u8], at: usize, n: usize) -> Option<u32> {
    let s = bytes.get(at..at + n)?;
    s.iter().try_fold(0u32, |acc, &b| Some(acc * 16 + hex(b)?))
}

fn push_char(out: &mut [u8; 4], c: char) -> usize {
    c.encode_utf8(out).len()
}

const NAMED: &[(&[u8], u8)] = &[
    (b"amp", b'&'),
    (b"lt", b'<'),
    (b"gt", b'>'),
    (b"quot", b'"'),
    (b"apos", b'\''),
    (b"sol", b'/'),
    (b"bsol", b'\\'),
    (b"plus", b'+'),
    (b"equals", b'='),
    (b"colon", b':'),
    (b"semi", b';'),
    (b"comma", b','),
    (b"period", b'.'),
    (b"excl", b'!'),
    (b"quest", b'?'),
    (b"num", b'#'),
    (b"dollar", b'$'),
    (b"percnt", b'%'),
    (b"lpar", b'('),
    (b"rpar", b')'),
    (b"ast", b'*'),
    (b"commat", b'@'),
    (b"lsqb", b'['),
    (b"rsqb", b']'),
    (b"lowbar", b'_'),
    (b"grave", b'`'),
    (b"lcub", b'{'),
    (b"rcub", b'}'),
    (b"verbar", b'|'),
    (b"tilde", b'~'),
    (b"hat", b'^'),
    (b"newline", b'\n'),
    (b"tab", b'\t'),
];

/// Decodes one escape sequence at `i`: the bytes it stands for and its length.
fn decode_one(s: &[u8], i: usize) -> Option<([u8; 4], usize, usize)> {
    let mut out = [0u8; 4];
    match s.get(i)? {
        b'\\' => match s.get(i + 1)? {
            b'u' | b'U' => {
                let u = hex_n(s, i + 2, 4)?;
                if (0xd800..0xdc00).contains(&u) {
                    if s.get(i + 6) == Some(&b'\\') && matches!(s.get(i + 7), Some(b'u' | b'U')) {
                        let lo = hex_n(s, i + 8, 4)?;
                        if (0xdc00..0xe000).contains(&lo) {
                            let c = char::from_u32(0x10000 + ((u - 0xd800) << 10) + (lo - 0xdc00))?;
                            let n = push_char(&mut out, c);
                            return Some((out, n, 12));
                        }
                    }
                    return None;
                }
                let c = char::from_u32(u)?;
                let n = push_char(&mut out, c);
                Some((out, n, 6))
            }
            b'x' | b'X' => {
                out[0] = u8::try_from(hex_n(s, i + 2, 2)?).ok()?;
                Some((out, 1, 4))
            }
            &c => {
                out[0] = match c {
                    b'/' | b'\\' | b'"' | b'\'' => c,
                    b'n' => b'\n',
                    b't' => b'\t',
                    b'r' => b'\r',
                    b'b' => 0x08,
                    b'f' => 0x0c,
                    _ => return None,
                };
                Some((out, 1, 2))
            }
        },
        b'%' => {
            out[0] = u8::try_from(hex_n(s, i + 1, 2)?).ok()?;
            Some((out, 1, 3))
        }
        b'&' => {
            if s.get(i + 1) == Some(&b'#') {
                let (radix, start) = match s.get(i + 2) {
                    Some(b'x' | b'X') => (16, i + 3),
                    _ => (10, i + 2),
                };
                let digits = s
                    .get(start..)?
                    .iter()
                    .take(LOOKAHEAD)
                    .take_while(|b| char::from(**b).is_digit(radix))
                    .count();
                if digits == 0 {
                    return None;
                }
                let mut v: u32 = 0;
                for &b in s.get(start..start + digits)? {
                    v = v
                        .checked_mul(radix)?
                        .checked_add(char::from(b).to_digit(radix)?)?;
                }
                let mut len = start + digits - i;
                if s.get(start + digits) == Some(&b';') {
                    len += 1;
                }
                if len > LOOKAHEAD {
                    return None;
                }
                let c = char::from_u32(v)?;
                let n = push_char(&mut out, c);
                return Some((out, n, len));
            }
            let name_len = s
                .get(i + 1..)?
                .iter()
                .take(8)
                .take_while(|b| b.is_ascii_alphabetic())
                .count();
            if s.get(i + 1 + name_len) != Some(&b';') {
                return None;
            }
            let name = s.get(i + 1..i + 1 + name_len)?;
            let (_, b) = NAMED.iter().find(|(n, _)| n.eq_ignore_ascii_case(name))?;
            out[0] = *b;
            Some((out, 1, name_len + 2))
        }
        _ => None,
    }
}

fn is_escape_start(b: u8) -> bool {
    matches!(b, b'\\' | b'%' | b'&')
}

/// One layer of decoding over `src` (of which bytes from `firm` on are themselves tentative):
/// the layer (`None` when nothing in it decodes, so it would equal its input) and the first
/// index of `src` whose decoding more input could still change (`None`: all final).
fn decode(
    src: &impl Contiguous,
    firm: usize,
    last: bool,
    out: &mut Decoded,
) -> (bool, Option<usize>) {
    out.clear();
    let s = src.bytes();
    // Escape sequences that start near the end of what is firm may still change.
    let tentative_from = if last {
        s.len()
    } else {
        let from = firm.min(s.len()).saturating_sub(LOOKAHEAD);
        s.get(from..)
            .unwrap_or_default()
            .iter()
            .position(|b| is_escape_start(*b))
            .map_or(firm, |p| (from + p).min(firm))
    };
    let tentative = (tentative_from < s.len()).then_some(tentative_from);
    out.src_tentative = tentative_from;
    let Some(first) = memchr::memchr3(b'\\', b'%', b'&', s) else {
        return (false, tentative);
    };
    let Decoded {
        bytes,
        spans,
        tokens,
        nested,
        firm: firm_slot,
        ..
    } = out;
    bytes.reserve(s.len());
    spans.reserve(s.len());
    let mut firm_out = None;
    let mut i = 0;
    let mut next_escape = Some(first);
    loop {
        // The literal run up to the next escape character.
        let next = next_escape.unwrap_or(s.len());
        if firm_out.is_none() && tentative_from < next {
            firm_out = Some(bytes.len() + tentative_from.saturating_sub(i));
        }
        bytes.extend_from_slice(s.get(i..next).unwrap_or_default());
        spans.extend((i..next).map(|k| src.span(k)));
        i = next;
        if i >= s.len() {
            break;
        }
        if firm_out.is_none() && i >= tentative_from {
            firm_out = Some(bytes.len());
        }
        match decode_one(s, i) {
            Some((out, n, len)) => {
                let span = (src.span(i).0, src.span(i + len - 1).1);
                let out = out.get(..n).unwrap_or_default();
                tokens.push(Token {
                    at: bytes.len(),
                    n,
                    src: i,
                    src_len: len,
                });
                *nested |= out.iter().any(|b| is_escape_start(*b));
                for &o in out {
                    bytes.push(o);
                    spans.push(span);
                }
                i += len;
            }
            None => {
                bytes.push(src.byte(i));
                spans.push(src.span(i));
                i += 1;
            }
        }
        next_escape = s
            .get(i..)
            .and_then(|rest| memchr::memchr3(b'\\', b'%', b'&', rest))
            .map(|p| i + p);
    }
    *firm_slot = firm_out.unwrap_or(bytes.len());
    (!tokens.is_empty(), tentative)
}

/// A match, in original coordinates.
#[derive(Debug, Clone)]
struct Span {
    start: usize,
    end: usize,
    owner: usize,
    form: Form,
    /// Every owner of the matches merged into this one.
    owners: Vec<usize>,
}

struct Scan {
    spans: Vec<Span>,
    /// No output at or after this original position is final yet.
    bound: usize,
    last: bool,
    total: usize,
}

impl Scan {
    fn lower(&mut self, to: Option<usize>) {
        if let Some(t) = to
            && !self.last
        {
            self.bound = self.bound.min(t);
        }
    }
}

/// Merges overlapping spans; the earliest (then longest) decides the replacement.
fn merge(mut spans: Vec<Span>) -> Vec<Span> {
    spans.sort_by(|a, b| a.start.cmp(&b.start).then(b.end.cmp(&a.end)));
    let mut out: Vec<Span> = Vec::with_capacity(spans.len());
    for s in spans {
        match out.last_mut() {
            Some(m) if s.start < m.end => {
                m.end = m.end.max(s.end);
                m.owners.extend(s.owners);
            }
            _ => out.push(s),
        }
    }
    for m in &mut out {
        m.owners.sort_unstable();
        m.owners.dedup();
    }
    out
}

impl Inner {
    #[inline]
    fn fold(&self, b: u8) -> u16 {
        self.fold.get(usize::from(b)).copied().unwrap_or(SKIP)
    }

    /// Whether some indexed gram starts with these two (folded) bytes.
    #[inline]
    fn starts_gram(&self, head: u64) -> bool {
        self.heads
            .get((head >> 6) as usize)
            .is_some_and(|w| w & (1 << (head & 63)) != 0)
    }

    #[inline]
    fn maybe(&self, g: u64) -> bool {
        let h = mix(g);
        let hit = |bit: u64| {
            self.filter
                .get((bit >> 6) as usize)
                .is_some_and(|w| w & (1 << (bit & 63)) != 0)
        };
        hit(h & self.filter_mask)
    }

    /// Scans the raw input: lines (between CR and LF, which the fold drops) with a gram read at
    /// every `STRIDE`-th byte, then the bytes around each line break the way decoded views are
    /// scanned; and bounds the tail.
    fn scan_raw(&self, buf: &[u8], st: &mut Scan) {
        let raw = Raw(buf);
        self.scan_segments(&raw, buf.len(), 0, buf.len(), st);
        self.bound_tail(&raw, buf.len(), st);
    }

    /// Scans view bytes `from..to`: each stretch between line breaks with a gram read at every
    /// `STRIDE`-th byte, and the grams across each break.
    fn scan_segments<V: Contiguous>(
        &self,
        v: &V,
        firm: usize,
        from: usize,
        to: usize,
        st: &mut Scan,
    ) {
        let window = v.bytes().get(from..to).unwrap_or_default();
        let mut seg = from;
        let mut breaks = memchr::memchr2_iter(b'\r', b'\n', window)
            .map(|p| from + p)
            .peekable();
        while let Some(at) = breaks.next() {
            self.scan_line(v, firm, seg, at, st);
            let mut end = at + 1;
            while breaks.peek() == Some(&end) {
                breaks.next();
                end += 1;
            }
            self.scan_break(v, firm, at, end, st);
            seg = end;
        }
        self.scan_line(v, firm, seg, to, st);
    }

    /// A match across a line break (bytes `at..end` dropped by the fold) with at least
    /// `GRAM` kept bytes holds one of the grams made of 1 to 3 kept bytes before the break and
    /// the rest after it.
    fn scan_break<V: View>(&self, raw: &V, firm: usize, at: usize, end: usize, st: &mut Scan) {
        let mut before = [0usize; GRAM - 1];
        let mut nb = 0;
        let mut j = at;
        while j > 0 && nb < GRAM - 1 {
            j -= 1;
            if self.fold(raw.byte(j)) != SKIP {
                if let Some(slot) = before.get_mut(nb) {
                    *slot = j;
                }
                nb += 1;
            }
        }
        let mut after = [0usize; GRAM - 1];
        let mut na = 0;
        let mut j = end;
        while j < raw.len() && na < GRAM - 1 {
            if self.fold(raw.byte(j)) != SKIP {
                if let Some(slot) = after.get_mut(na) {
                    *slot = j;
                }
                na += 1;
            }
            j += 1;
        }
        for k in 1..GRAM {
            // `k` bytes before the break, `GRAM - k` after.
            if k > nb || GRAM - k > na {
                continue;
            }
            let mut idx = [0usize; GRAM];
            for (n, slot) in idx.iter_mut().enumerate() {
                *slot = if n < k {
                    before.get(k - 1 - n).copied().unwrap_or(0)
                } else {
                    after.get(n - k).copied().unwrap_or(0)
                };
            }
            let g = idx.iter().enumerate().fold(0u64, |acc, (n, &i)| {
                acc | (u64::from(self.fold(raw.byte(i)) as u8) << (8 * n))
            });
            if self.starts_gram(g & 0xffff) && self.maybe(g) {
                let (first, last) = (idx.first().copied(), idx.last().copied());
                if let (Some(first), Some(last)) = (first, last) {
                    self.candidates(raw, firm, g, first, last, st);
                }
            }
        }
    }

    /// Scans `from..to` of the raw input, which holds no byte the fold drops: a gram at every
    /// `STRIDE`-th byte, read directly.
    fn scan_line<V: Contiguous>(
        &self,
        raw: &V,
        firm: usize,
        from: usize,
        to: usize,
        st: &mut Scan,
    ) {
        let Some(line) = raw.bytes().get(from..to) else {
            return;
        };
        let mut covered_to = 0usize;
        for (k, w) in line.chunks_exact(GRAM).enumerate() {
            let at = from + k * GRAM;
            if at + GRAM + FRAGMENT_LEN < covered_to {
                continue;
            }
            let f = |b: u8| u64::from(self.fold(b) as u8);
            let (a, b, c, d) = match w {
                [a, b, c, d] => (*a, *b, *c, *d),
                _ => continue,
            };
            let head = f(a) | (f(b) << 8);
            if !self.starts_gram(head) {
                continue;
            }
            let g = head | (f(c) << 16) | (f(d) << 24);
            if self.maybe(g)
                && let Some(end) = self.candidates(raw, firm, g, at, at + GRAM - 1, st)
            {
                covered_to = covered_to.max(end);
            }
        }
    }

    /// Scans a decoded view only around what decoding changed (elsewhere it equals its input,
    /// which was scanned already: a match there is a match of the input, with a span at least
    /// as large), and at its end.
    fn scan_decoded(&self, v: &Decoded, st: &mut Scan) {
        let n = v.len();
        let mut windows: Vec<(usize, usize)> = Vec::new();
        let mut add = |from: usize, to: usize| match windows.last_mut() {
            Some(w) if from <= w.1 => w.1 = w.1.max(to),
            _ => windows.push((from, to)),
        };
        for t in &v.tokens {
            add(
                self.back(v, t.at, GRAM + STRIDE),
                self.forward(v, t.at + t.n, GRAM + STRIDE),
            );
        }
        add(self.back(v, v.firm.min(n), GRAM + STRIDE), n);
        for (from, to) in windows {
            self.scan_segments(v, v.firm, from, to, st);
        }
        self.bound_tail(v, v.firm, st);
    }

    /// Matches that need the bytes from one escape sequence of `layer` (decoded from `below`)
    /// segmented differently: every gram of kept bytes that overlaps the re-read stretch, in the
    /// view where only that stretch is read again (see [`Resegmented`]).
    fn scan_resegmented<S: Contiguous>(&self, below: &S, layer: &Decoded, st: &mut Scan) {
        let src = below.bytes();
        let mut mid: Zeroizing<Vec<u8>> = Zeroizing::new(Vec::new());
        let mut mid_spans = Vec::new();
        let mut kept: Vec<usize> = Vec::new();
        for (ti, token) in layer.tokens.iter().enumerate() {
            // The first token that ends after the position being read (tokens are in order).
            let mut k = ti;
            mid.clear();
            mid_spans.clear();
            mid.push(below.byte(token.src));
            mid_spans.push(below.span(token.src));
            let mut i = token.src + 1;
            // Decode again until `i` is a boundary of the layer's own segmentation past the
            // token (then both readings go on alike).
            let resume = loop {
                if i >= src.len() {
                    break None;
                }
                if let Some(r) = layer.boundary_from(&mut k, i) {
                    break Some(r);
                }
                if i - token.src > RESEGMENT_LIMIT {
                    // The readings never met (a long run of backslashes): literal bytes up to
                    // the end of the layer's escape that holds `i`.
                    mid.push(below.byte(i));
                    mid_spans.push(below.span(i));
                    i += 1;
                    continue;
                }
                match decode_one(src, i) {
                    Some((out, n, len)) => {
                        let span = (below.span(i).0, below.span(i + len - 1).1);
                        for &o in out.get(..n).unwrap_or_default() {
                            mid.push(o);
                            mid_spans.push(span);
                        }
                        i += len;
                    }
                    None => {
                        mid.push(below.byte(i));
                        mid_spans.push(below.span(i));
                        i += 1;
                    }
                }
            };
            let resume = resume.unwrap_or(layer.len());
            let v = Resegmented {
                layer,
                at: token.at,
                mid: &mid,
                mid_spans: &mid_spans,
                resume,
            };
            // Everything from the token on is tentative when the stretch read again reached
            // bytes of the layer below that may still change.
            let firm = if i > layer.src_tentative || layer.firm <= resume {
                layer.firm.min(token.at)
            } else {
                v.index_of(layer.firm)
            };
            let stretch_end = token.at + mid.len();
            let from = self.back(&v, token.at, GRAM - 1);
            let to = self.forward(&v, stretch_end, GRAM - 1);
            kept.clear();
            kept.extend((from..to).filter(|&j| self.fold(v.byte(j)) != SKIP));
            for w in kept.windows(GRAM) {
                let (Some(&first), Some(&last)) = (w.first(), w.last()) else {
                    continue;
                };
                if last < token.at || first >= stretch_end {
                    continue;
                }
                let g = w.iter().enumerate().fold(0u64, |acc, (n, &i)| {
                    acc | (u64::from(self.fold(v.byte(i)) as u8) << (8 * n))
                });
                if self.starts_gram(g & 0xffff) && self.maybe(g) {
                    self.candidates(&v, firm, g, first, last, st);
                }
            }
        }
    }

    /// The view index `kept` kept bytes before `at` (or 0).
    fn back(&self, v: &impl View, at: usize, kept: usize) -> usize {
        let mut j = at.min(v.len());
        let mut k = 0;
        while j > 0 && k < kept {
            j -= 1;
            if self.fold(v.byte(j)) != SKIP {
                k += 1;
            }
        }
        j
    }

    /// The view index `kept` kept bytes after `at` (or the end).
    fn forward(&self, v: &impl View, at: usize, kept: usize) -> usize {
        let n = v.len();
        let mut j = at.min(n);
        let mut k = 0;
        while j < n && k < kept {
            if self.fold(v.byte(j)) != SKIP {
                k += 1;
            }
            j += 1;
        }
        j
    }

    /// A match may still begin in the last [`TAIL`] kept bytes before the firm end.
    fn bound_tail<V: View>(&self, v: &V, firm: usize, st: &mut Scan) {
        if st.last {
            return;
        }
        let n = v.len();
        let mut kept = 0;
        let mut j = firm.min(n);
        let mut earliest = j;
        while j > 0 && kept < TAIL {
            j -= 1;
            if self.fold(v.byte(j)) != SKIP {
                kept += 1;
                earliest = j;
            }
        }
        let orig = if earliest < n {
            v.span(earliest).0
        } else {
            st.total
        };
        st.bound = st.bound.min(orig);
    }

    /// Evaluates the places gram `g` (view bytes `start..=i`) occurs in the patterns. Returns
    /// the view end of the longest accepted match.
    fn candidates<V: View>(
        &self,
        v: &V,
        firm: usize,
        g: u64,
        start: usize,
        i: usize,
        st: &mut Scan,
    ) -> Option<usize> {
        let b = ((mix(g) >> 16) & self.bucket_mask) as usize;
        let from = self.starts.get(b).copied().unwrap_or(0) as usize;
        let to = self.starts.get(b + 1).copied().unwrap_or(0) as usize;
        let mut best = None;
        for &(p, o) in self.entries.get(from..to).unwrap_or_default() {
            let Some(pat) = self.patterns.get(p as usize) else {
                continue;
            };
            let o = o as usize;
            let same = pat.bytes.get(o..o + GRAM).is_some_and(|w| {
                let mut a = [0u8; GRAM];
                a.copy_from_slice(w);
                u64::from(u32::from_le_bytes(a)) == g
            });
            if !same {
                continue;
            }
            let n = v.len();
            // Right.
            let mut po = o + GRAM;
            let mut j = i + 1;
            let mut last_kept = i;
            let mut open = false;
            while po < pat.bytes.len() {
                while j < n && self.fold(v.byte(j)) == SKIP {
                    j += 1;
                }
                if j >= firm.min(n) {
                    open = true;
                    break;
                }
                if self.fold(v.byte(j)) != u16::from(pat.bytes.get(po).copied().unwrap_or(0)) {
                    break;
                }
                last_kept = j;
                po += 1;
                j += 1;
            }
            // Left.
            let mut ps = o;
            let mut first_kept = start;
            let mut k = start;
            while ps > 0 && k > 0 {
                k -= 1;
                let f = self.fold(v.byte(k));
                if f == SKIP {
                    continue;
                }
                if f != u16::from(pat.bytes.get(ps - 1).copied().unwrap_or(0)) {
                    break;
                }
                ps -= 1;
                first_kept = k;
            }
            let orig_start = v.span(first_kept).0;
            if open && !st.last {
                st.bound = st.bound.min(orig_start);
            }
            let len = po - ps;
            if len >= FRAGMENT_LEN || (ps == 0 && po == pat.bytes.len()) {
                st.spans.push(Span {
                    start: orig_start,
                    end: v.span(last_kept).1,
                    owner: pat.owner,
                    form: pat.form,
                    owners: vec![pat.owner],
                });
                best = best.max(Some(last_kept + 1));
            }
        }
        best
    }
}

/// Sets `buf` to `a` followed by `b`, reusing its allocation; a larger one replaces it only after
/// the old one is zeroed (no reallocation leaves a copy behind).
fn fill(buf: &mut Zeroizing<Vec<u8>>, a: &[u8], b: &[u8]) {
    let need = a.len() + b.len();
    if buf.capacity() < need {
        *buf = Zeroizing::new(Vec::with_capacity(need.max(buf.capacity() * 2)));
    } else {
        buf.clear();
    }
    buf.extend_from_slice(a);
    buf.extend_from_slice(b);
}

/// A streaming [`Matcher::replace_all`]: equal output under any chunking.
pub struct Stream {
    matcher: Matcher,
    carry: Zeroizing<Vec<u8>>,
    /// The held tail plus the new chunk (reused; zeroed on drop).
    buf: Zeroizing<Vec<u8>>,
    hits: Vec<usize>,
    scratch: Scratch,
}

impl std::fmt::Debug for Stream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Stream")
            .field("held", &self.carry.len())
            .finish_non_exhaustive()
    }
}

impl Stream {
    /// Feeds a chunk; appends what is final to `out`.
    pub fn feed(&mut self, chunk: &[u8], out: &mut Vec<u8>) {
        if self.matcher.is_empty() {
            out.extend_from_slice(chunk);
            return;
        }
        fill(&mut self.buf, &self.carry, chunk);
        let cut = self
            .matcher
            .emit(&self.buf, out, &mut self.hits, false, &mut self.scratch);
        fill(
            &mut self.carry,
            self.buf.get(cut..).unwrap_or_default(),
            &[],
        );
    }

    /// Ends the stream: emits everything still held.
    pub fn finish(&mut self, out: &mut Vec<u8>) {
        let buf = std::mem::take(&mut self.carry);
        self.matcher
            .emit(&buf, out, &mut self.hits, true, &mut self.scratch);
    }

    /// Owners replaced since the last call (sorted, no duplicates).
    pub fn take_hits(&mut self) -> Vec<usize> {
        sorted(std::mem::take(&mut self.hits))
    }

    /// Checks a chunk without producing output: the owners of every match seen so far in what
    /// is held plus `chunk`, including matches not yet final (a fragment of at least
    /// [`FRAGMENT_LEN`] bytes is reported as soon as it is seen). For a check that must stop a
    /// stream before a value passes.
    pub fn check(&mut self, chunk: &[u8]) -> Vec<usize> {
        self.check_inner(chunk, false)
    }

    /// Ends a [`Stream::check`]ed stream: the owners of matches in what was held.
    pub fn check_finish(&mut self) -> Vec<usize> {
        self.check_inner(&[], true)
    }

    fn check_inner(&mut self, chunk: &[u8], last: bool) -> Vec<usize> {
        if self.matcher.is_empty() {
            return Vec::new();
        }
        fill(&mut self.buf, &self.carry, chunk);
        let (spans, cut) = self.matcher.find(&self.buf, last, &mut self.scratch);
        fill(
            &mut self.carry,
            self.buf.get(cut..).unwrap_or_default(),
            &[],
        );
        sorted(
            spans
                .iter()
                .flat_map(|s| s.owners.iter().copied())
                .collect(),
        )
    }

    /// Bytes currently held back.
    pub fn held(&self) -> usize {
        self.carry.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const VALUE: &str = "sk_live_Ab+/9=x y&z\"q'w<>%~";
    const TOKEN: &str = "kz_masked_0123456789abcdef0123456789abcdef";

    fn m(values: &[&[u8]]) -> Matcher {
        Matcher::new(
            values
                .iter()
                .enumerate()
                .map(|(i, v)| (v.to_vec(), format!("<T{i}>").into_bytes())),
            Options::default(),
        )
    }

    fn one() -> Matcher {
        Matcher::new(
            [(VALUE.as_bytes().to_vec(), TOKEN.as_bytes().to_vec())],
            Options::default(),
        )
    }

    fn contains(hay: &[u8], needle: &[u8]) -> bool {
        hay.windows(needle.len()).any(|w| w == needle)
    }

    /// One character in one of several encodings.
    fn enc(b: u8, how: u8) -> String {
        match how % 9 {
            0 => char::from(b).to_string(),
            1 => format!("\\u{:04X}", b),
            2 => format!("\\u{:04x}", b),
            3 => format!("%{:02X}", b),
            4 => format!("%{:02x}", b),
            5 => format!("&#{};", b),
            6 => format!("&#x{:x};", b),
            7 => format!("&#X{:02X};", b),
            _ => match b {
                b'/' => "\\/".into(),
                b'"' => "\\\"".into(),
                b'&' => "&amp;".into(),
                b'<' => "&lt;".into(),
                b'>' => "&gt;".into(),
                b' ' => "+".into(),
                _ => format!("%25{:02X}", b), // double percent-encoding
            },
        }
    }

    fn mixed(v: &str, hows: &[u8]) -> String {
        v.bytes()
            .enumerate()
            .map(|(i, b)| enc(b, hows.get(i % hows.len().max(1)).copied().unwrap_or(0)))
            .collect()
    }

    /// A value that holds escape-like text, reflected with other characters escaped (Go's
    /// encoding/json writes `&` as `\u0026`): the decoded view reads the value's own `%41` as
    /// `A`, and still finds it.
    #[test]
    fn a_value_holding_escape_like_text_is_found_in_any_reflection() {
        let value = b"pw%41bc&cd%42de\\n-x";
        let m = Matcher::new([(value.to_vec(), b"<T>".to_vec())], Options::default());
        for form in [
            "pw%41bc\\u0026cd%42de\\\\n-x",
            "pw%41bc&amp;cd%42de\\n-x",
            "pw%2541bc&cd%2542de%5Cn-x",
            "pw%41bc&cd%42de\\n-x",
        ] {
            let body = format!("{{\"echo\":\"{form}\"}}");
            let (out, hits) = m.replace_all(body.as_bytes());
            assert_eq!(hits, vec![0], "{form}");
            let out = String::from_utf8_lossy(&out);
            assert!(
                !out.contains("bc") && out.contains("<T>"),
                "{form} gave {out}"
            );
        }
    }

    /// Text around a value can form an escape sequence with the value's first or last bytes
    /// (`%` then `AC…`, `\u00` then `41…`, `…%` then `41`, a stray `\` before the value's own
    /// `\u0026`); the value is still found, in each
    /// mix of escapes, and its whole reflection is replaced.
    #[test]
    fn an_escape_straddling_the_edge_of_a_value_does_not_hide_it() {
        let cases: [(&[u8], &str, &str, &str, bool); 5] = [
            (b"AC\\x0e-L?A", "%", "AC&#92;x0e-L&#63;A", "", true),
            (b"&secretMG", "\\\\\\", "\\u0026secretMG", "", false),
            (b"41secret/value", "\\u00", "41secret\\/value", "", true),
            (b"key\"with%", "", "key\\\"with%", "41", true),
            (
                b"de00abcdef;xyz",
                "\\ud83d\\u",
                "de00abcdef&#59;xyz",
                "",
                true,
            ),
        ];
        for (value, before, form, after, exact) in cases {
            let m = Matcher::new([(value.to_vec(), b"<T>".to_vec())], Options::default());
            let body = format!("x{before}{form}{after}y");
            let (out, hits) = m.replace_all(body.as_bytes());
            assert_eq!(hits, vec![0], "{body}");
            // The replaced span starts inside `before` at the latest (a stray `\` before the
            // value's `\u0026` also reads as a double-escaped `\u0026`: the earlier reading wins).
            let out = String::from_utf8_lossy(&out).into_owned();
            let kept = out
                .strip_prefix('x')
                .and_then(|o| o.strip_suffix(&format!("<T>{after}y")))
                .unwrap_or_else(|| panic!("{body} gave {out}"));
            assert!(before.starts_with(kept), "{body} gave {out}");
            assert!(!exact || kept == before, "{body} gave {out}");
            assert_eq!(m.hits_in(body.as_bytes()), vec![0]);
        }
    }

    #[test]
    fn every_mix_of_escapes_is_found() {
        let m = one();
        for hows in [
            vec![0],
            vec![1],
            vec![2],
            vec![3],
            vec![4],
            vec![5],
            vec![6],
            vec![7],
            vec![8],
            vec![0, 1, 3, 5, 8],
            vec![2, 0, 0, 4, 6, 7],
        ] {
            let form = mixed(VALUE, &hows);
            let body = format!("{{\"echo\":\"{form}\"}}");
            let (out, hits) = m.replace_all(body.as_bytes());
            assert_eq!(
                String::from_utf8_lossy(&out),
                format!("{{\"echo\":\"{TOKEN}\"}}"),
                "{hows:?}: {form}"
            );
            assert_eq!(hits, vec![0]);
        }
    }

    #[test]
    fn server_styles_are_found() {
        let m = one();
        for form in [
            // PHP json_encode
            "sk_live_Ab+\\/9=x y&z\\\"q'w<>%~",
            // .NET System.Text.Json
            "sk_live_Ab\\u002B/9=x y\\u0026z\\u0022q\\u0027w\\u003C\\u003E%~",
            // Python quote() (keeps '/')
            "sk_live_Ab%2B/9%3Dx%20y%26z%22q%27w%3C%3E%25~",
            // JS encodeURI (keeps + / = &)
            "sk_live_Ab+/9=x%20y&z%22q'w%3C%3E%25~",
            // Java URLEncoder (space as +, ~ encoded)
            "sk_live_Ab%2B%2F9%3Dx+y%26z%22q%27w%3C%3E%25%7E",
            // HTML escaping
            "sk_live_Ab+/9=x y&amp;z&quot;q&#39;w&lt;&gt;%~",
            // percent-encoding inside a JSON string, escaped again
            "sk_live_Ab%2B\\u002F9%3Dx%20y%26z%22q%27w%3C%3E%25~",
        ] {
            let (out, hits) = m.replace_all(format!("a={form};").as_bytes());
            assert_eq!(
                String::from_utf8_lossy(&out),
                format!("a={TOKEN};"),
                "{form}"
            );
            assert_eq!(hits, vec![0]);
        }
    }

    #[test]
    fn non_ascii_escapes_and_surrogates_are_decoded() {
        let v = "pässwörd-€-😀-secret";
        let m = Matcher::new(
            [(v.as_bytes().to_vec(), b"<T>".to_vec())],
            Options::default(),
        );
        for form in [
            "p\\u00e4ssw\\u00F6rd-\\u20AC-\\ud83d\\ude00-secret",
            "p&#228;ssw&#xf6;rd-&#8364;-&#x1F600;-secret",
            "p%C3%A4ssw%c3%b6rd-%E2%82%AC-%F0%9F%98%80-secret",
        ] {
            assert_eq!(m.replace_all(form.as_bytes()).0, b"<T>", "{form}");
        }
        // A lone surrogate is not decoded (and does not panic).
        assert_eq!(m.replace_all(b"\\ud83d x").0, b"\\ud83d x");
    }

    #[test]
    fn base64_with_line_breaks_and_alignments() {
        let v: Vec<u8> = (0u8..=255).cycle().skip(7).take(200).collect();
        let m = Matcher::new([(v.clone(), TOKEN.as_bytes().to_vec())], Options::default());
        let t64 = String::from_utf8(base64(TOKEN.as_bytes())).unwrap();
        for prefix in [0usize, 1, 2] {
            let mut data = vec![b'Q'; prefix];
            data.extend_from_slice(&v);
            let enc = String::from_utf8(base64(&data)).unwrap();
            // MIME: 76 columns, CRLF.
            let mime: String = enc
                .as_bytes()
                .chunks(76)
                .map(|c| String::from_utf8_lossy(c).into_owned())
                .collect::<Vec<_>>()
                .join("\r\n");
            let url = enc.replace('+', "-").replace('/', "_");
            for form in [enc.clone(), format!("{enc}=="), mime, url] {
                let (out, hits) = m.replace_all(format!("x {form} y").as_bytes());
                assert_eq!(hits, vec![0], "{prefix} {form}");
                let out = String::from_utf8(out).unwrap();
                assert!(out.contains(&t64), "{prefix} {out}");
                // No run of the value's encoding long enough to be a fragment is left.
                let rest = out.replace(&t64, " ");
                assert!(m.hits_in(rest.as_bytes()).is_empty(), "{prefix} {rest}");
            }
        }
        // Standalone padded encoding becomes exactly the token's encoding.
        let enc = String::from_utf8(base64(&v)).unwrap();
        let (out, _) = m.replace_all(format!("\"{enc}=\"").as_bytes());
        assert_eq!(String::from_utf8(out).unwrap(), format!("\"{t64}\""));
    }

    #[test]
    fn fragments_of_long_values_are_found_short_ones_are_not() {
        let v = b"0123456789abcdefghijklmnopqrstuvwxyzABCDEFGH";
        let m = m(&[v]);
        // Two halves reflected separately.
        let (out, hits) =
            m.replace_all(b"first=0123456789abcdefghijk; second=lmnopqrstuvwxyzABCDEFGH.");
        assert_eq!(out, b"first=<T0>; second=<T0>.");
        assert_eq!(hits, vec![0]);
        // A fragment of FRAGMENT_LEN bytes is replaced; one byte shorter is left alone.
        let frag = &v[10..10 + FRAGMENT_LEN];
        assert_eq!(m.replace_all(frag).0, b"<T0>");
        let short = &v[10..10 + FRAGMENT_LEN - 1];
        assert_eq!(m.replace_all(short).0, short);
        // Short values are matched whole only.
        let m = self::m(&[b"abcdefghij"]);
        assert_eq!(m.replace_all(b"abcdefghi abcdefghij").0, b"abcdefghi <T0>");
        // Ordinary text is left alone.
        let text = b"The quick brown fox jumps over the lazy dog, 0123 4567 89ab.";
        assert_eq!(m.replace_all(text).0, text);
    }

    #[test]
    fn ignore_case_for_header_names() {
        let m = Matcher::new(
            [(b"SeCrEt-Value-123".to_vec(), b"kz_t".to_vec())],
            Options {
                ignore_case: true,
                no_base64: true,
            },
        );
        assert_eq!(m.replace_all(b"x-secret-value-123").0, b"x-kz_t");
        assert_eq!(m.pattern_count(), 1);
    }

    #[test]
    fn debug_shows_no_value() {
        let m = one();
        let mut st = m.stream();
        let mut out = Vec::new();
        st.feed(&VALUE.as_bytes()[..10], &mut out);
        let shown = format!("{m:?} {st:?}");
        assert!(!shown.contains("sk_live"), "{shown}");
    }

    #[test]
    fn streaming_holds_only_a_short_tail() {
        let m = one();
        let mut st = m.stream();
        let mut out = Vec::new();
        st.feed(b"hello world, nothing to see here at all\n", &mut out);
        assert!(st.held() <= m.inner.hold, "held {}", st.held());
        st.finish(&mut out);
        assert_eq!(out, b"hello world, nothing to see here at all\n");
    }

    fn stream_cuts(m: &Matcher, body: &[u8], cuts: &[usize]) -> (Vec<u8>, Vec<usize>) {
        let mut cuts: Vec<usize> = cuts.iter().map(|c| c % (body.len() + 1)).collect();
        cuts.sort_unstable();
        let mut st = m.stream();
        let mut out = Vec::new();
        let mut prev = 0;
        for c in cuts.into_iter().chain([body.len()]) {
            st.feed(&body[prev..c], &mut out);
            prev = c;
        }
        st.finish(&mut out);
        (out, st.take_hits())
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(400))]
        #[test]
        fn streaming_equals_whole_and_no_form_survives(
            parts in prop::collection::vec(
                (prop::collection::vec(any::<u8>(), 0..8), prop::collection::vec(0u8..9, 1..6), 0usize..4, any::<bool>()),
                0..6),
            cuts in prop::collection::vec(0usize..4000, 0..24),
        ) {
            let values = [VALUE, "0123456789abcdefghijklmnopqrstuvwxyz-long-secret"];
            let m = Matcher::new(
                values.iter().enumerate().map(|(i, v)| (v.as_bytes().to_vec(), format!("<T{i}>").into_bytes())),
                Options::default(),
            );
            let mut body = Vec::new();
            let mut planted = Vec::new();
            for (noise, hows, which, half) in &parts {
                body.extend_from_slice(noise);
                match which {
                    0 | 1 => {
                        let v = values[*which];
                        let v = if *half { &v[..v.len() / 2] } else { v };
                        body.extend_from_slice(mixed(v, hows).as_bytes());
                        if !*half { planted.push(*which); }
                    }
                    2 => {
                        let mut e = base64(values[1].as_bytes());
                        if *half { e.splice(20..20, b"\r\n".iter().copied()); }
                        body.extend_from_slice(&e);
                        planted.push(1);
                    }
                    _ => {}
                }
            }
            let whole = m.replace_all(&body);
            for p in &planted {
                prop_assert!(whole.1.contains(p), "{:?} not found in {:?}", p, String::from_utf8_lossy(&body));
            }
            prop_assert!(!contains(&whole.0, values[0].as_bytes()));
            prop_assert!(!contains(&whole.0, values[1].as_bytes()));
            prop_assert_eq!(stream_cuts(&m, &body, &cuts), whole.clone());
            prop_assert_eq!(m.hits_in(&body), whole.1);
        }

        #[test]
        fn arbitrary_bytes_stream_like_whole(
            body in prop::collection::vec(any::<u8>(), 0..600),
            cuts in prop::collection::vec(0usize..600, 0..16),
        ) {
            let m = m(&[b"%\\u&#x;abc\\\\%25", b"zzzzzzzzzzzzzzzzzzzzzzzzzzzzz"]);
            prop_assert_eq!(stream_cuts(&m, &body, &cuts), m.replace_all(&body));
        }
    }
}
