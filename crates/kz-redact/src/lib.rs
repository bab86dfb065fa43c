//! Streaming replacement of secret values, safe across chunk boundaries.
//!
//! [`Redactor`] replaces every occurrence of a set of byte patterns (secret values) with a
//! replacement (`****` for `kz run --mask`; blind mode's values and tokens), in a stream that
//! arrives in chunks of any size. It produces exactly what a whole-buffer, leftmost-longest
//! replacement would (a property test checks this under arbitrary chunking), while holding back
//! as little as possible: only a tail that could still be the start of a value. Text that cannot
//! begin a value, such as an interactive prompt, is passed on at once.
//!
//! It also records which patterns it replaced ([`Redactor::hits`]), so blind mode can audit
//! which secrets were swapped or scrubbed.
//!
//! Boundary: no I/O; the caller reads and writes. Patterns, replacements (in blind mode the
//! replacement is the secret value) and the held-back tail are zeroed when the redactor drops.
#![forbid(unsafe_code)]
#![warn(missing_docs)]
// Only the CLI prints (`kz-cli`); libraries return values, errors and notes.
#![deny(clippy::print_stdout, clippy::print_stderr)]

pub mod decoded;

use aho_corasick::{AhoCorasick, AhoCorasickBuilder, MatchKind};
use zeroize::{Zeroize, Zeroizing};

/// Replaces patterns in a stream.
///
/// A clone shares the compiled automaton and copies the stream state (held tail and hits); clone
/// a redactor that was never fed to start an independent stream cheaply.
#[derive(Clone)]
pub struct Redactor {
    ac: Option<AhoCorasick>,
    patterns: Vec<Zeroizing<Vec<u8>>>,
    /// Replacement per automaton pattern (zeroed on drop: in blind mode it is the secret value).
    replacements: Vec<Zeroizing<Vec<u8>>>,
    /// Index into the pairs as passed to [`Redactor::new`] per automaton pattern.
    origin: Vec<usize>,
    /// Per pair as passed to [`Redactor::new`]: whether it was replaced since the last
    /// [`Redactor::take_hits`].
    hit: Vec<bool>,
    max_len: usize,
    carry: Zeroizing<Vec<u8>>,
}

impl std::fmt::Debug for Redactor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Redactor")
            .field("patterns", &self.patterns.len())
            .finish_non_exhaustive()
    }
}

impl Redactor {
    /// A redactor for `(pattern, replacement)` pairs. Empty patterns are ignored (but keep their
    /// index: [`Redactor::hits`] numbers the pairs as given here). Both sides are zeroed on drop.
    pub fn new(pairs: impl IntoIterator<Item = (Vec<u8>, Vec<u8>)>) -> Self {
        let mut patterns = Vec::new();
        let mut replacements = Vec::new();
        let mut origin = Vec::new();
        let mut count = 0;
        for (i, (p, r)) in pairs.into_iter().enumerate() {
            count = i + 1;
            let (p, r) = (Zeroizing::new(p), Zeroizing::new(r));
            if !p.is_empty() {
                patterns.push(p);
                replacements.push(r);
                origin.push(i);
            }
        }
        let max_len = patterns.iter().map(|p| p.len()).max().unwrap_or(0);
        let ac = AhoCorasickBuilder::new()
            .match_kind(MatchKind::LeftmostLongest)
            .build(patterns.iter().map(|p| p.as_slice()))
            .ok()
            .filter(|_| !patterns.is_empty());
        Self {
            ac,
            patterns,
            replacements,
            origin,
            hit: vec![false; count],
            max_len,
            carry: Zeroizing::new(Vec::with_capacity(max_len)),
        }
    }

    /// Every pattern replaced by the same text (`****`).
    pub fn uniform(patterns: impl IntoIterator<Item = Vec<u8>>, replacement: &[u8]) -> Self {
        Self::new(patterns.into_iter().map(|p| (p, replacement.to_vec())))
    }

    /// Whether there is nothing to replace.
    pub fn is_empty(&self) -> bool {
        self.ac.is_none()
    }

    /// Indices (into the pairs as passed to [`Redactor::new`]) of the patterns replaced in the
    /// output emitted so far (since the last [`Redactor::take_hits`]); sorted, no duplicates.
    pub fn hits(&self) -> Vec<usize> {
        self.hit
            .iter()
            .enumerate()
            .filter_map(|(i, h)| h.then_some(i))
            .collect()
    }

    /// Like [`Redactor::hits`], and forgets them.
    pub fn take_hits(&mut self) -> Vec<usize> {
        let hits = self.hits();
        self.hit.iter_mut().for_each(|h| *h = false);
        hits
    }

    /// Feeds a chunk; appends what can be emitted now to `out`.
    pub fn feed(&mut self, input: &[u8], out: &mut Vec<u8>) {
        let mut hit = std::mem::take(&mut self.hit);
        if self.carry.is_empty() {
            // Common case: no copy of the chunk, only of the (short) tail held back.
            let held = self.emit(input, out, false, &mut hit);
            self.carry.extend_from_slice(held);
        } else {
            // Sized up front so that no reallocation leaves a copy behind unzeroed.
            let mut buf = Zeroizing::new(Vec::with_capacity(self.carry.len() + input.len()));
            buf.extend_from_slice(&self.carry);
            buf.extend_from_slice(input);
            self.carry.zeroize();
            let held = self.emit(&buf, out, false, &mut hit);
            self.carry.extend_from_slice(held);
        }
        self.hit = hit;
    }

    /// Ends the stream: emits everything still held.
    pub fn finish(&mut self, out: &mut Vec<u8>) {
        let mut hit = std::mem::take(&mut self.hit);
        let buf = std::mem::take(&mut self.carry);
        self.emit(&buf, out, true, &mut hit);
        self.hit = hit;
    }

    /// Replaces a whole buffer at once (the reference the streaming form must equal).
    pub fn replace_all(&self, input: &[u8]) -> Vec<u8> {
        self.replace_all_hits(input).0
    }

    /// Like [`Redactor::replace_all`], also returning the indices of the pairs replaced (as
    /// [`Redactor::hits`] numbers them). Does not touch the streaming state.
    pub fn replace_all_hits(&self, input: &[u8]) -> (Vec<u8>, Vec<usize>) {
        let mut hit = vec![false; self.hit.len()];
        let mut out = Vec::with_capacity(input.len());
        self.emit(input, &mut out, true, &mut hit);
        let hits = hit
            .iter()
            .enumerate()
            .filter_map(|(i, h)| h.then_some(i))
            .collect();
        (out, hits)
    }

    /// Indices of the pairs (as [`Redactor::hits`] numbers them) that
    /// [`Redactor::replace_all`] would replace in `input`, without building the output.
    pub fn hits_in(&self, input: &[u8]) -> Vec<usize> {
        let Some(ac) = &self.ac else {
            return Vec::new();
        };
        let mut hit = vec![false; self.hit.len()];
        for m in ac.find_iter(input) {
            if let Some(h) = self
                .origin
                .get(m.pattern().as_usize())
                .and_then(|&i| hit.get_mut(i))
            {
                *h = true;
            }
        }
        hit.iter()
            .enumerate()
            .filter_map(|(i, h)| h.then_some(i))
            .collect()
    }

    /// Appends the replacement for automaton pattern `pattern` and records the hit.
    fn replace(&self, pattern: usize, out: &mut Vec<u8>, hit: &mut [bool]) {
        if let Some(r) = self.replacements.get(pattern) {
            out.extend_from_slice(r);
        }
        if let Some(h) = self.origin.get(pattern).and_then(|&i| hit.get_mut(i)) {
            *h = true;
        }
    }

    /// Emits the replaced prefix of `buf` that is final; returns the tail to hold.
    fn emit<'b>(&self, buf: &'b [u8], out: &mut Vec<u8>, last: bool, hit: &mut [bool]) -> &'b [u8] {
        let Some(ac) = &self.ac else {
            out.extend_from_slice(buf);
            return &[];
        };
        let mut pos = 0;
        let mut hold_from = buf.len();
        for m in ac.find_iter(buf) {
            // A match is final only when every pattern that could start at or before it fits in
            // the buffer; otherwise a longer or earlier match may still complete.
            if !last && m.start() + self.max_len > buf.len() {
                hold_from = m.start();
                break;
            }
            out.extend_from_slice(buf.get(pos..m.start()).unwrap_or_default());
            self.replace(m.pattern().as_usize(), out, hit);
            pos = m.end();
        }
        if last {
            out.extend_from_slice(buf.get(pos..).unwrap_or_default());
            return &[];
        }
        // Hold the earliest tail that is a proper prefix of some pattern (it may still match).
        let start = pos.max(buf.len().saturating_sub(self.max_len.saturating_sub(1)));
        for q in start..hold_from {
            let tail = buf.get(q..).unwrap_or_default();
            if self
                .patterns
                .iter()
                .any(|p| p.len() > tail.len() && p.starts_with(tail))
            {
                hold_from = q;
                break;
            }
        }
        let hold_from = hold_from.max(pos);
        out.extend_from_slice(buf.get(pos..hold_from).unwrap_or_default());
        buf.get(hold_from..).unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stream(r: &mut Redactor, chunks: &[&[u8]]) -> Vec<u8> {
        let mut out = Vec::new();
        for c in chunks {
            r.feed(c, &mut out);
        }
        r.finish(&mut out);
        out
    }

    #[test]
    fn replaces_across_boundaries() {
        let mut r = Redactor::uniform([b"s3cr3t-value".to_vec()], b"****");
        assert_eq!(
            stream(&mut r, &[b"a s3cr", b"3t-va", b"lue b"]),
            b"a **** b"
        );
    }

    #[test]
    fn prompts_are_not_held_back() {
        let mut r = Redactor::uniform([b"s3cr3t-value".to_vec()], b"****");
        let mut out = Vec::new();
        r.feed(b"Password: ", &mut out);
        assert_eq!(
            out, b"Password: ",
            "text that cannot start a value must pass at once"
        );
        out.clear();
        r.feed(b"xx s3c", &mut out);
        assert_eq!(out, b"xx ", "a possible start is held");
    }

    #[test]
    fn longest_wins_and_no_patterns_passes_through() {
        let r = Redactor::new([
            (b"abcdefgh".to_vec(), b"<1>".to_vec()),
            (b"abcdefghij".to_vec(), b"<2>".to_vec()),
        ]);
        assert_eq!(r.replace_all(b"abcdefghij abcdefgh"), b"<2> <1>");
        let mut e = Redactor::uniform(Vec::<Vec<u8>>::new(), b"****");
        assert!(e.is_empty());
        assert_eq!(stream(&mut e, &[b"abc", b"def"]), b"abcdef");
    }

    #[test]
    fn hits_name_the_pairs_as_given_including_empty_ones() {
        let mut r = Redactor::new([
            (b"first-pattern".to_vec(), b"<0>".to_vec()),
            (Vec::new(), b"<empty>".to_vec()),
            (b"second-pattern".to_vec(), b"<2>".to_vec()),
            (b"never-seen".to_vec(), b"<3>".to_vec()),
        ]);
        assert_eq!(
            r.replace_all_hits(b"x second-pattern y"),
            (b"x <2> y".to_vec(), vec![2])
        );
        assert!(
            r.hits().is_empty(),
            "replace_all_hits leaves the stream state alone"
        );
        assert_eq!(r.hits_in(b"first-pattern second-pattern"), vec![0, 2]);
        assert_eq!(r.hits_in(b"first-patter"), Vec::<usize>::new());
        let mut out = Vec::new();
        r.feed(b"a second-pat", &mut out);
        assert!(
            r.hits().is_empty(),
            "a held-back partial match is not a hit yet"
        );
        r.feed(b"tern b first-pattern c", &mut out);
        assert_eq!(r.hits(), vec![0, 2]);
        assert_eq!(r.take_hits(), vec![0, 2]);
        assert!(r.hits().is_empty());
        r.feed(b" first-pattern", &mut out);
        r.finish(&mut out);
        assert_eq!(r.take_hits(), vec![0]);
        assert_eq!(out, b"a <2> b <0> c <0>");
    }
}
