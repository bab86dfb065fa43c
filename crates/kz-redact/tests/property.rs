//! Streaming replacement equals whole-buffer replacement under any chunking.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use kz_redact::Redactor;
use proptest::prelude::*;

fn alphabet() -> impl Strategy<Value = Vec<u8>> {
    // A small alphabet makes overlaps, prefixes and near-misses frequent.
    prop::collection::vec(prop::sample::select(vec![b'a', b'b', b'c', b'\n']), 0..200)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn streaming_equals_whole_buffer(
        patterns in prop::collection::vec(prop::collection::vec(prop::sample::select(vec![b'a', b'b', b'c']), 1..9), 1..5),
        input in alphabet(),
        cuts in prop::collection::vec(0usize..200, 0..20),
    ) {
        let pairs: Vec<_> = patterns.iter().enumerate().map(|(i, p)| (p.clone(), format!("<{i}>").into_bytes())).collect();
        let expected = Redactor::new(pairs.clone()).replace_all(&input);
        let mut cuts: Vec<usize> = cuts.into_iter().map(|c| c.min(input.len())).collect();
        cuts.sort_unstable();
        let mut r = Redactor::new(pairs.clone());
        let mut out = Vec::new();
        let mut prev = 0;
        for c in cuts.into_iter().chain([input.len()]) {
            r.feed(&input[prev..c], &mut out);
            prev = c;
        }
        r.finish(&mut out);
        prop_assert_eq!(out, expected.clone());
        // Hits: the same under any chunking, and exactly the pairs whose replacement appears.
        let (again, hits) = Redactor::new(pairs.clone()).replace_all_hits(&input);
        prop_assert_eq!(again, expected.clone());
        prop_assert_eq!(r.hits(), hits.clone());
        prop_assert_eq!(Redactor::new(pairs.clone()).hits_in(&input), hits.clone());
        let expected_text = String::from_utf8(expected).unwrap();
        for (i, (_, rep)) in pairs.iter().enumerate() {
            let shown = expected_text.contains(std::str::from_utf8(rep).unwrap());
            prop_assert_eq!(hits.contains(&i), shown, "pair {}", i);
        }
    }
}
