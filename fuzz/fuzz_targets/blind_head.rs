//! Any bytes as an HTTP request head reaching the blind proxy: the request target (absolute
//! form, `CONNECT` authority) and the `Host` header go through `destination_from_absolute`,
//! `destination_from_authority` and `normalize_host`, and the host through the policy. Never a
//! panic; every accepted destination has a port, a host that is already normalised (normalising
//! is idempotent) and holds nothing that could smuggle another host (`@`, `/`, `%`, spaces).
#![no_main]

use std::net::IpAddr;
use std::sync::OnceLock;

use kz_blind::policy::{
    Destination, Policy, SecretHosts, classify, destination_from_absolute,
    destination_from_authority, forbidden_name, normalize_host,
};
use kz_config::{BlindConfig, Egress, HostPattern};
use libfuzzer_sys::fuzz_target;

fn check_host(host: &str) {
    assert!(!host.is_empty());
    assert_eq!(normalize_host(host).as_deref(), Ok(host), "not idempotent");
    assert!(!host.bytes().any(|b| b.is_ascii_uppercase()), "{host:?}");
    assert!(
        !host.bytes().any(|b| matches!(b, b'@' | b'/' | b'\\' | b'%' | b'[' | b']' | b'#' | b'?')
            || b.is_ascii_whitespace()
            || b.is_ascii_control()
            || !b.is_ascii()),
        "{host:?}"
    );
    if host.contains(':') {
        assert!(host.parse::<IpAddr>().is_ok(), "{host:?}");
    }
    if let Ok(ip) = host.parse::<IpAddr>() {
        let _ = classify(ip);
    } else {
        // A name is never a number in disguise (`2130706433`, `0x7f.1`).
        let last = host.rsplit('.').next().unwrap_or(host);
        assert!(!last.bytes().all(|b| b.is_ascii_digit()), "{host:?}");
    }
    let _ = forbidden_name(host);
}

fn check_dest(d: &Destination, policy: &Policy) {
    assert_ne!(d.port, 0);
    check_host(&d.host);
    let _ = policy.connection(&d.host, d.port);
}

fn policy() -> Option<&'static Policy> {
    static POLICY: OnceLock<Option<Policy>> = OnceLock::new();
    POLICY.get_or_init(build_policy).as_ref()
}

fn build_policy() -> Option<Policy> {
    let own: Vec<HostPattern> = ["api.example.com", "*.stripe.com", "localhost:8443", "[::1]:9000"]
        .iter()
        .filter_map(|p| HostPattern::parse(p).ok())
        .collect();
    let blind = BlindConfig { egress: Egress::Allowlist, ..BlindConfig::default() };
    Policy::plan(&[SecretHosts { name: "A", hosts: &own }], &blind, &[]).ok().map(|p| p.policy)
}

fuzz_target!(|data: &[u8]| {
    let Some(policy) = policy() else { return };
    let head = String::from_utf8_lossy(data);
    let mut lines = head.split('\n').map(|l| l.strip_suffix('\r').unwrap_or(l));
    let Some(request_line) = lines.next() else { return };
    let mut parts = request_line.split(' ');
    let method = parts.next().unwrap_or("");
    let target = parts.next().unwrap_or("");

    if method.eq_ignore_ascii_case("CONNECT") {
        if let Ok(d) = destination_from_authority(target, true, 0) {
            check_dest(&d, policy);
        }
    }
    if let Ok(uri) = target.parse::<http::Uri>() {
        if let Ok(d) = destination_from_absolute(&uri) {
            assert!(uri.scheme().is_some());
            check_dest(&d, policy);
        }
    }
    for line in lines {
        let Some((name, value)) = line.split_once(':') else { continue };
        if !name.trim().eq_ignore_ascii_case("host") {
            continue;
        }
        let value = value.trim();
        for (https, port) in [(true, 443), (false, 80), (true, 0)] {
            if let Ok(d) = destination_from_authority(value, https, port) {
                assert_eq!(d.https, https);
                check_dest(&d, policy);
            }
        }
        if let Ok(h) = normalize_host(value) {
            check_host(&h);
        }
    }
    if let Ok(h) = normalize_host(target) {
        check_host(&h);
    }
});
