//! Streaming replacement of secret values, safe across chunk boundaries.
//!
//! [`Redactor`] replaces every occurrence of a set of byte patterns (secret values) with a
//! replacement (`****` for `kz run --mask`; later, blind mode's tokens), in a stream that arrives
//! in chunks of any size. It produces exactly what a whole-buffer, leftmost-longest replacement
//! would (a property test checks this under arbitrary chunking), while holding back as little as
//! possible: only a tail that could still be the start of a value. Text that cannot begin a
//! value, such as an interactive prompt, is passed on at once.
//!
//! Boundary: no I/O; the caller reads and writes. Patterns are zeroed when the redactor drops.
#![forbid(unsafe_code)]
#![warn(missing_docs)]

use aho_corasick::{AhoCorasick, AhoCorasickBuilder, MatchKind};
use zeroize::Zeroizing;

/// Replaces patterns in a stream.
pub struct Redactor {
    ac: Option<AhoCorasick>,
    patterns: Vec<Zeroizing<Vec<u8>>>,
    replacements: Vec<Vec<u8>>,
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
    /// A redactor for `(pattern, replacement)` pairs. Empty patterns are ignored.
    pub fn new(pairs: impl IntoIterator<Item = (Vec<u8>, Vec<u8>)>) -> Self {
        let (patterns, replacements): (Vec<_>, Vec<_>) = pairs
            .into_iter()
            .filter(|(p, _)| !p.is_empty())
            .map(|(p, r)| (Zeroizing::new(p), r))
            .unzip();
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
            max_len,
            carry: Zeroizing::new(Vec::new()),
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

    /// Feeds a chunk; appends what can be emitted now to `out`.
    pub fn feed(&mut self, input: &[u8], out: &mut Vec<u8>) {
        let mut buf = std::mem::take(&mut self.carry);
        buf.extend_from_slice(input);
        let held = self.emit(&buf, out, false);
        self.carry = Zeroizing::new(held.to_vec());
    }

    /// Ends the stream: emits everything still held.
    pub fn finish(&mut self, out: &mut Vec<u8>) {
        let buf = std::mem::take(&mut self.carry);
        self.emit(&buf, out, true);
    }

    /// Replaces a whole buffer at once (the reference the streaming form must equal).
    pub fn replace_all(&self, input: &[u8]) -> Vec<u8> {
        match &self.ac {
            None => input.to_vec(),
            Some(ac) => {
                let mut out = Vec::with_capacity(input.len());
                ac.replace_all_with_bytes(input, &mut out, |m, _, dst| {
                    dst.extend_from_slice(
                        self.replacements
                            .get(m.pattern().as_usize())
                            .map_or(&[][..], |r| r.as_slice()),
                    );
                    true
                });
                out
            }
        }
    }

    /// Emits the replaced prefix of `buf` that is final; returns the tail to hold.
    fn emit<'b>(&self, buf: &'b [u8], out: &mut Vec<u8>, last: bool) -> &'b [u8] {
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
            out.extend_from_slice(
                self.replacements
                    .get(m.pattern().as_usize())
                    .map_or(&[][..], |r| r.as_slice()),
            );
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
}
