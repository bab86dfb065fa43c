//! Links `kz` as a position-dependent executable: a PIE binary of this size spends about a
//! millisecond at every start applying ~16,000 relocations (and page-faulting the pages they
//! touch). `kz` runs in front of every command and on every shell prompt, so that millisecond
//! matters (`docs/benchmarks.md`). Libraries and proc-macros are unaffected.
fn main() {
    let os = std::env::var("CARGO_CFG_TARGET_OS").unwrap_or_default();
    if os == "linux" {
        println!("cargo:rustc-link-arg-bins=-no-pie");
    }
    println!("cargo:rerun-if-changed=build.rs");
}
