//! Which IP addresses are special (loopback, private, link-local, CGNAT, cloud metadata, …) and
//! which names are cloud metadata services: refused as destinations unless a binding names them
//! exactly.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

const fn v4(a: u8, b: u8, c: u8, d: u8) -> u32 {
    u32::from_be_bytes([a, b, c, d])
}

fn in_v4(ip: u32, net: u32, len: u32) -> bool {
    let mask = if len == 0 { 0 } else { u32::MAX << (32 - len) };
    ip & mask == net & mask
}

fn classify_v4(ip: Ipv4Addr) -> Option<&'static str> {
    let n = u32::from(ip);
    const METADATA: [u32; 4] = [
        v4(169, 254, 169, 254), // AWS, GCP, Azure, OCI, DigitalOcean, ...
        v4(100, 100, 100, 200), // Alibaba Cloud
        v4(168, 63, 129, 16),   // Azure WireServer (a public address)
        v4(192, 0, 0, 192),     // Oracle Cloud (legacy)
    ];
    if METADATA.contains(&n) {
        return Some("cloud metadata");
    }
    let table: [(u32, u32, &'static str); 16] = [
        (v4(0, 0, 0, 0), 32, "unspecified"),
        (v4(255, 255, 255, 255), 32, "broadcast"),
        (v4(0, 0, 0, 0), 8, "reserved"),
        (v4(127, 0, 0, 0), 8, "loopback"),
        (v4(10, 0, 0, 0), 8, "private"),
        (v4(172, 16, 0, 0), 12, "private"),
        (v4(192, 168, 0, 0), 16, "private"),
        (v4(169, 254, 0, 0), 16, "link-local"),
        (v4(100, 64, 0, 0), 10, "CGNAT"),
        (v4(192, 0, 0, 0), 24, "reserved"),
        (v4(192, 0, 2, 0), 24, "documentation"),
        (v4(198, 51, 100, 0), 24, "documentation"),
        (v4(203, 0, 113, 0), 24, "documentation"),
        (v4(198, 18, 0, 0), 15, "reserved"),
        (v4(224, 0, 0, 0), 4, "multicast"),
        (v4(240, 0, 0, 0), 4, "reserved"),
    ];
    table
        .iter()
        .find(|(net, len, _)| in_v4(n, *net, *len))
        .map(|(_, _, why)| *why)
}

fn in_v6(ip: u128, net: u128, len: u32) -> bool {
    let mask = if len == 0 {
        0
    } else {
        u128::MAX << (128 - len)
    };
    ip & mask == net & mask
}

fn classify_v6(ip: Ipv6Addr) -> Option<&'static str> {
    let n = u128::from(ip);
    let low32 = Ipv4Addr::from((n & 0xffff_ffff) as u32);
    if ip.is_unspecified() {
        return Some("unspecified");
    }
    if ip.is_loopback() {
        return Some("loopback");
    }
    // IPv4-mapped (::ffff:a.b.c.d), IPv4-compatible (::a.b.c.d) and NAT64 (64:ff9b::/96):
    // classified by the embedded address. A public embedded address is still public.
    if in_v6(n, 0xffff_0000_0000, 96) || in_v6(n, 0, 96) || in_v6(n, 0x0064_ff9b << 96, 96) {
        return classify_v4(low32);
    }
    if n == u128::from(Ipv6Addr::new(0xfd00, 0xec2, 0, 0, 0, 0, 0, 0x254)) {
        return Some("cloud metadata");
    }
    // 6to4 (2002:a.b.c.d::/48): the embedded address is bits 16..48.
    if in_v6(n, 0x2002 << 112, 16) {
        let embedded = Ipv4Addr::from(((n >> 80) & 0xffff_ffff) as u32);
        return classify_v4(embedded);
    }
    // Teredo (2001::/32): server in bits 32..64, client (inverted) in the low 32 bits.
    if in_v6(n, 0x2001 << 112, 32) {
        let server = Ipv4Addr::from(((n >> 64) & 0xffff_ffff) as u32);
        let client = Ipv4Addr::from(!((n & 0xffff_ffff) as u32));
        return classify_v4(client).or_else(|| classify_v4(server));
    }
    let table: [(u128, u32, &'static str); 9] = [
        (0x0064_ff9b_0001 << 80, 48, "reserved"), // local-use NAT64
        (0x0100 << 112, 64, "reserved"),          // discard-only
        (0x2001_0002 << 96, 48, "reserved"),      // benchmarking
        (0x2001_0db8 << 96, 32, "documentation"),
        (0x3fff << 112, 20, "documentation"),
        (0xfc00 << 112, 7, "private"),
        (0xfe80 << 112, 10, "link-local"),
        (0xfec0 << 112, 10, "private"), // deprecated site-local
        (0xff00 << 112, 8, "multicast"),
    ];
    if let Some((_, _, why)) = table.iter().find(|(net, len, _)| in_v6(n, *net, *len)) {
        return Some(why);
    }
    // Only 2000::/3 is global unicast; everything else is unallocated or special.
    if !in_v6(n, 0x2000 << 112, 3) {
        return Some("reserved");
    }
    None
}

/// Why an address is refused, or `None` when it is public: `"loopback"`, `"private"` (RFC 1918,
/// ULA, site-local), `"link-local"`, `"CGNAT"`, `"cloud metadata"` (`169.254.169.254`,
/// `fd00:ec2::254`, `100.100.100.200`, `168.63.129.16`, `192.0.0.192`), `"unspecified"`,
/// `"multicast"`, `"broadcast"`, `"documentation"`, `"reserved"` (everything else not globally
/// routable). IPv4-mapped/compatible, NAT64, 6to4 and Teredo IPv6 addresses are classified by
/// the IPv4 address they embed.
pub fn classify(ip: IpAddr) -> Option<&'static str> {
    match ip {
        IpAddr::V4(a) => classify_v4(a),
        IpAddr::V6(a) => classify_v6(a),
    }
}

/// Names of cloud metadata services, refused before any DNS lookup (also every name under
/// them: `x.metadata.google.internal`).
const FORBIDDEN_NAMES: [&str; 8] = [
    "metadata",
    "metadata.google.internal",
    "metadata.goog",
    "instance-data",
    "instance-data.ec2.internal",
    "metadata.tencentyun.com",
    "metadata.platformequinix.com",
    "metadata.azure.internal",
];

/// Names refused before DNS because they are cloud metadata services
/// (`metadata.google.internal`, `metadata.goog`, bare `metadata`, `instance-data.ec2.internal`,
/// ...). `Some(reason)` when `host` is one of them (any case, trailing dots ignored).
pub fn forbidden_name(host: &str) -> Option<&'static str> {
    let h = host.trim_end_matches('.').to_ascii_lowercase();
    FORBIDDEN_NAMES
        .iter()
        .any(|f| h == *f || h.strip_suffix(f).is_some_and(|rest| rest.ends_with('.')))
        .then_some("cloud metadata")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn class(s: &str) -> Option<&'static str> {
        classify(s.parse().unwrap())
    }

    #[test]
    fn classifies_special_addresses() {
        let cases = [
            ("127.0.0.1", "loopback"),
            ("127.255.1.2", "loopback"),
            ("10.1.2.3", "private"),
            ("172.16.0.1", "private"),
            ("172.31.255.255", "private"),
            ("192.168.1.1", "private"),
            ("169.254.1.1", "link-local"),
            ("169.254.169.254", "cloud metadata"),
            ("100.100.100.200", "cloud metadata"),
            ("168.63.129.16", "cloud metadata"),
            ("100.64.0.1", "CGNAT"),
            ("100.127.255.255", "CGNAT"),
            ("0.0.0.0", "unspecified"),
            ("0.1.2.3", "reserved"),
            ("224.0.0.1", "multicast"),
            ("255.255.255.255", "broadcast"),
            ("240.0.0.1", "reserved"),
            ("192.0.2.1", "documentation"),
            ("198.18.0.1", "reserved"),
            ("::", "unspecified"),
            ("::1", "loopback"),
            ("fc00::1", "private"),
            ("fd12:3456::1", "private"),
            ("fd00:ec2::254", "cloud metadata"),
            ("fe80::1", "link-local"),
            ("febf::1", "link-local"),
            ("ff02::1", "multicast"),
            ("2001:db8::1", "documentation"),
            ("::ffff:127.0.0.1", "loopback"),
            ("::ffff:169.254.169.254", "cloud metadata"),
            ("::ffff:10.0.0.1", "private"),
            ("::127.0.0.1", "loopback"),
            ("64:ff9b::a9fe:a9fe", "cloud metadata"),
            ("64:ff9b::7f00:1", "loopback"),
            ("2002:7f00:1::", "loopback"),
            ("2002:c0a8:101::1", "private"),
            ("100::1", "reserved"),
            ("4000::1", "reserved"),
        ];
        for (ip, want) in cases {
            assert_eq!(class(ip), Some(want), "{ip}");
        }
        for public in [
            "1.1.1.1",
            "8.8.8.8",
            "172.32.0.1",
            "100.128.0.1",
            "169.253.1.1",
            "2606:4700:4700::1111",
            "::ffff:1.1.1.1",
            "64:ff9b::808:808",
            "2002:808:808::1",
        ] {
            assert_eq!(class(public), None, "{public}");
        }
    }

    #[test]
    fn teredo_is_classified_by_its_client_address() {
        // Client 127.0.0.1 is stored inverted: 0x80ff_fffe.
        assert_eq!(
            class("2001:0:4136:e378:8000:63bf:80ff:fffe"),
            Some("loopback")
        );
    }

    #[test]
    fn metadata_names_are_forbidden() {
        for name in [
            "metadata.google.internal",
            "METADATA.google.internal.",
            "metadata.goog",
            "metadata",
            "instance-data",
            "instance-data.ec2.internal",
            "x.metadata.google.internal",
        ] {
            assert_eq!(forbidden_name(name), Some("cloud metadata"), "{name}");
        }
        for ok in [
            "metadata.google.internal.evil.com",
            "mymetadata.goog",
            "metadata.example.com",
            "example.com",
        ] {
            assert_eq!(forbidden_name(ok), None, "{ok}");
        }
    }
}
