//! Masking/scrubbing throughput (target ≥ 500 MB/s): 64 MiB of log-like text with 20 secret
//! values of 24–40 bytes, a few occurrences per MiB, fed in 64 KiB chunks as `kz run --mask`
//! reads them. Prints the median of 9 runs. `cargo bench -p kz-redact`.
#![allow(
    clippy::unwrap_used,
    clippy::indexing_slicing,
    clippy::cast_precision_loss
)]

use std::time::Instant;

use kz_redact::Redactor;

fn main() {
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
}
