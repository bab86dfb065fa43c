//! The per-run secret table: every secret blind mode handles, its masked token and the hosts it
//! may be sent to. Indices into [`SecretTable::secrets`] are how the other modules name a secret.

use kz_config::{Binding, BindingRefusal, HostPattern, SwapIn};
use kz_secret::SecretValue;
use std::fmt::Write;

use rand::RngCore;

/// Every token starts with this.
pub const TOKEN_PREFIX: &str = "kz_masked_";

/// A fresh token: `kz_masked_` + 32 lowercase hex characters from a CSPRNG.
pub fn new_token() -> String {
    let mut bytes = [0u8; 16];
    // ThreadRng is a CSPRNG (ChaCha12) seeded and periodically reseeded from the OS.
    rand::rng().fill_bytes(&mut bytes);
    let mut token = String::with_capacity(TOKEN_PREFIX.len() + 32);
    token.push_str(TOKEN_PREFIX);
    for b in bytes {
        let _ = write!(token, "{b:02x}");
    }
    token
}

/// One secret in blind mode.
#[derive(Debug)]
pub struct BlindSecret {
    /// The environment variable name the child sees (also the name in audit records and 403s).
    pub name: String,
    /// The real value; never leaves the proxy except inside a request to an allowed host.
    pub value: SecretValue,
    /// The masked token the child holds instead.
    pub token: String,
    /// Where this secret may be sent (already merged: `hosts`, else `[blind] allow`, plus
    /// `--allow-host`).
    pub hosts: Vec<HostPattern>,
    /// Where in a request its token is swapped (the entry's `swap`; headers and query by
    /// default).
    pub swap: SwapIn,
    /// The methods and paths it may be used with (the entry's `methods` and `paths`).
    pub binding: Binding,
}

impl BlindSecret {
    /// A secret with a fresh token.
    pub fn new(name: impl Into<String>, value: SecretValue, hosts: Vec<HostPattern>) -> Self {
        Self {
            name: name.into(),
            value,
            token: new_token(),
            hosts,
            swap: SwapIn::default(),
            binding: Binding::default(),
        }
    }

    /// The same secret, limited to the binding's methods and paths.
    #[must_use]
    pub fn with_binding(mut self, binding: Binding) -> Self {
        self.binding = binding;
        self
    }

    /// Whether this secret may be used for `method` on `path` (as sent, without the query).
    pub fn may_use(&self, method: &str, path: &str) -> Result<(), BindingRefusal> {
        self.binding.check(method, path)
    }

    /// The same secret, swapped where `swap` says.
    #[must_use]
    pub fn with_swap(mut self, swap: SwapIn) -> Self {
        self.swap = swap;
        self
    }

    /// Whether this secret is bound to `host` (lowercase ASCII, no trailing dot) on `port`, over
    /// any scheme.
    pub fn may_reach(&self, host: &str, port: u16) -> bool {
        self.hosts.iter().any(|p| p.matches(host, port))
    }

    /// Whether this secret's value may be sent to `host` on `port`: bound there, and over plain
    /// HTTP (`https == false`) only by a pattern written `http://…`.
    pub fn may_send(&self, host: &str, port: u16, https: bool) -> bool {
        self.hosts
            .iter()
            .any(|p| (https || p.cleartext) && p.matches(host, port))
    }
}

/// All secrets of one run.
#[derive(Debug, Default)]
pub struct SecretTable {
    /// The secrets, in a stable order; other modules refer to them by index.
    pub secrets: Vec<BlindSecret>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_http_needs_a_binding_that_names_the_scheme() {
        let pats = |l: &[&str]| -> Vec<HostPattern> {
            l.iter().map(|p| HostPattern::parse(p).unwrap()).collect()
        };
        let s = BlindSecret::new(
            "A",
            SecretValue::from_str_copy("v"),
            pats(&[
                "api.example.com",
                "http://localhost:8080",
                "http://*.dev.test",
            ]),
        );
        assert!(s.may_send("api.example.com", 443, true));
        assert!(!s.may_send("api.example.com", 80, false));
        assert!(s.may_reach("api.example.com", 80));
        assert!(s.may_send("localhost", 8080, false));
        assert!(
            s.may_send("localhost", 8080, true),
            "`http://` allows HTTPS too"
        );
        assert!(!s.may_send("localhost", 8081, false));
        assert!(s.may_send("a.dev.test", 80, false));
        assert!(!s.may_send("other.example.com", 443, true));
        assert_eq!(s.swap, SwapIn::default());
    }

    #[test]
    fn tokens_have_the_documented_shape_and_differ() {
        let a = new_token();
        let b = new_token();
        assert_ne!(a, b);
        for t in [&a, &b] {
            let hex = t.strip_prefix(TOKEN_PREFIX).unwrap();
            assert_eq!(hex.len(), 32);
            assert!(
                hex.bytes()
                    .all(|c| c.is_ascii_digit() || (b'a'..=b'f').contains(&c))
            );
        }
    }
}
