//! Masking/scrubbing throughput (target ≥ 500 MB/s): 64 MiB of log-like text with 20 secret
//! values of 24–40 bytes, a few occurrences per MiB, fed in 64 KiB chunks as `kz run --mask`
//! reads them. Prints the median of 9 runs. Then the same for the decoded-view matcher
//! (`kz_redact::decoded`, blind mode's scrub), on plain text and on JSON with escapes, and the
//! time and peak memory to build it for one value of 1 MiB and 8 MiB. `cargo bench -p kz-redact`.
#![allow(
    clippy::unwrap_used,
    clippy::indexing_slicing,
    clippy::cast_precision_loss
)]

use std::time::Instant;

use kz_redact::Redactor;
use kz_redact::decoded::{Matcher, Options};

fn peak_rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

fn decoded_mbs(m: &Matcher, data: &[u8]) -> f64 {
    let mut times = Vec::new();
    let mut out = Vec::with_capacity(data.len());
    for _ in 0..9 {
        out.clear();
        let mut st = m.stream();
        let t = Instant::now();
        for chunk in data.chunks(64 * 1024) {
            st.feed(chunk, &mut out);
        }
        st.finish(&mut out);
        times.push(t.elapsed().as_secs_f64());
    }
    times.sort_by(f64::total_cmp);
    data.len() as f64 / times[times.len() / 2] / 1e6
}

/// Indexes one value of `mib` MiB; prints the time and the growth of peak memory.
fn index_value(mib: usize) {
    let value: Vec<u8> = (0..mib << 20).map(|i| (i * 7919 % 251) as u8).collect();
    let before = peak_rss_kib();
    let t = Instant::now();
    let m = Matcher::new([(value, b"kz_masked_x".to_vec())], Options::default());
    let took = t.elapsed().as_secs_f64();
    let after = peak_rss_kib();
    println!(
        "kz-redact decoded view: a {mib} MiB value indexed in {took:.2} s, peak memory +{} MiB \
         ({} patterns)",
        after.saturating_sub(before) >> 10,
        m.pattern_count()
    );
}

fn main() {
    if let Some(mib) = std::env::var("KZ_BENCH_INDEX_MIB")
        .ok()
        .and_then(|v| v.parse().ok())
    {
        // Alone in a fresh process, so the peak is this value's.
        index_value(mib);
        return;
    }
    let secrets: Vec<Vec<u8>> = (0..20)
        .map(|i| format!("sk_live_{i:02}_{}", "x".repeat(16 + i)).into_bytes())
        .collect();
    let mut data = Vec::with_capacity(64 << 20);
    let line = b"2026-11-22T15:04:05Z INFO request handled path=/v1/items status=200 took=3ms\n";
    let mut i = 0usize;
    while data.len() < 64 << 20 {
        data.extend_from_slice(line);
        i += 1;
        if i.is_multiple_of(2000) {
            data.extend_from_slice(&secrets[i / 2000 % secrets.len()]);
            data.push(b'\n');
        }
    }
    let mut times = Vec::new();
    let mut out = Vec::with_capacity(data.len());
    for _ in 0..9 {
        let mut r = Redactor::uniform(secrets.clone(), b"****");
        out.clear();
        let t = Instant::now();
        for chunk in data.chunks(64 * 1024) {
            r.feed(chunk, &mut out);
        }
        r.finish(&mut out);
        times.push(t.elapsed().as_secs_f64());
    }
    times.sort_by(f64::total_cmp);
    let median = times[times.len() / 2];
    assert!(
        !out.windows(secrets[0].len())
            .any(|w| w == secrets[0].as_slice())
    );
    println!(
        "kz-redact: {:.0} MB/s median over 9 runs of {} MiB ({} patterns, 64 KiB chunks)",
        data.len() as f64 / median / 1e6,
        data.len() >> 20,
        secrets.len()
    );

    let m = Matcher::new(
        secrets.iter().map(|s| {
            (
                s.clone(),
                b"kz_masked_0123456789abcdef0123456789abcdef".to_vec(),
            )
        }),
        Options::default(),
    );
    println!(
        "kz-redact decoded view: {:.0} MB/s on the same text",
        decoded_mbs(&m, &data)
    );
    if std::env::var_os("KZ_BENCH_PLAIN_ONLY").is_some() {
        return;
    }
    let mut json = Vec::with_capacity(64 << 20);
    let line = b"{\"path\":\"\\/v1\\/items\",\"msg\":\"caf\\u00e9 &amp; co\",\"q\":\"a%20b\"}\n";
    while json.len() < 64 << 20 {
        json.extend_from_slice(line);
    }
    println!(
        "kz-redact decoded view: {:.0} MB/s on JSON with an escape every 10 bytes",
        decoded_mbs(&m, &json)
    );
    for mib in [1usize, 8] {
        index_value(mib);
    }
}
