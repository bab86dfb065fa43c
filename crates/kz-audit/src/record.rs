//! The audit record: typed setters for every field a caller may set.

use std::collections::BTreeMap;

use serde_json::{Map, Value};

use crate::jcs::{Canon, Key, MAX_SAFE_INTEGER};

/// Where a request or event came from (`transport`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    /// The HTTP API (`POST /v1/resolve`).
    Http,
    /// The MCP server.
    Mcp,
    /// The credential proxy (token redemption).
    Proxy,
    /// Blind mode (`kz run --blind`): swaps, refusals and scrubs.
    Blind,
}

impl Transport {
    /// The wire spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Http => "http",
            Self::Mcp => "mcp",
            Self::Proxy => "proxy",
            Self::Blind => "blind",
        }
    }
}

/// The outcome of a decision (`decision`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// Allowed (and served).
    Allow,
    /// Denied by policy (or egress rules, in blind mode).
    Deny,
    /// Allowed, but serving failed (backend error, timeout, ...).
    Error,
}

impl Decision {
    /// The wire spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Allow => "allow",
            Self::Deny => "deny",
            Self::Error => "error",
        }
    }
}

/// One audit event, built with chained setters; fields never set are omitted from the line.
///
/// `v`, `ts`, `id`, `prev` and `hash` cannot be set here: the [`Writer`](crate::Writer) fills
/// them. Every field holds text, integers, booleans or objects of those: there is no setter that
/// takes a secret value, and this crate does not depend on the secret types at all. Callers pass
/// names (`ref`, `secrets`), never values or tokens.
///
/// ```
/// use kz_audit::{Decision, Record, Transport};
/// let r = Record::new(Transport::Http)
///     .request_id("req-1")
///     .reference("prod/db/password")
///     .decision(Decision::Allow)
///     .policy("ci-main")
///     .latency_us(420);
/// assert_eq!(r.to_json()["ref"], "prod/db/password");
/// ```
#[derive(Debug, Clone, PartialEq)]
pub struct Record {
    pub(crate) fields: BTreeMap<Key, Canon>,
}

impl Record {
    /// A record for an event on `transport`.
    pub fn new(transport: Transport) -> Self {
        let mut fields = BTreeMap::new();
        fields.insert(
            Key("transport".into()),
            Canon::Str(transport.as_str().into()),
        );
        Self { fields }
    }

    fn set(mut self, key: &str, value: Canon) -> Self {
        self.fields.insert(Key(key.into()), value);
        self
    }

    fn text(self, key: &str, value: impl Into<String>) -> Self {
        self.set(key, Canon::Str(value.into()))
    }

    /// `request_id`: the request's correlation id.
    pub fn request_id(self, id: impl Into<String>) -> Self {
        self.text("request_id", id)
    }

    /// `client_ip`: the peer address.
    pub fn client_ip(self, ip: impl Into<String>) -> Self {
        self.text("client_ip", ip)
    }

    /// `issuer`: the name of the issuer that verified the caller's token.
    pub fn issuer(self, issuer: impl Into<String>) -> Self {
        self.text("issuer", issuer)
    }

    /// `sub`: the caller's subject (named `subject` here: `sub` would read as subtraction).
    pub fn subject(self, sub: impl Into<String>) -> Self {
        self.text("sub", sub)
    }

    /// `identity`: the normalised identity fields.
    ///
    /// Numbers that are not integers within ±(2^53 − 1) are stored as their JSON text (a
    /// string), so the record stays exactly canonicalizable (see [`canonical_json`](crate::canonical_json)).
    pub fn identity(self, identity: Map<String, Value>) -> Self {
        self.set("identity", Canon::sanitized(Value::Object(identity)))
    }

    /// `claims`: the token claims that `audit.claims` asks to record (numbers as for
    /// [`identity`](Self::identity)).
    pub fn claims(self, claims: Map<String, Value>) -> Self {
        self.set("claims", Canon::sanitized(Value::Object(claims)))
    }

    /// `ref`: the requested secret's name (never its value).
    pub fn reference(self, reference: impl Into<String>) -> Self {
        self.text("ref", reference)
    }

    /// `resolver`: the matched resolver's name.
    pub fn resolver(self, resolver: impl Into<String>) -> Self {
        self.text("resolver", resolver)
    }

    /// `backend`: the backend's name.
    pub fn backend(self, backend: impl Into<String>) -> Self {
        self.text("backend", backend)
    }

    /// `mode`: `direct` or `short_lived`; for blind-mode events the kind: `swap`, `refuse`, `scrub`.
    pub fn mode(self, mode: impl Into<String>) -> Self {
        self.text("mode", mode)
    }

    /// `decision`.
    pub fn decision(self, decision: Decision) -> Self {
        self.text("decision", decision.as_str())
    }

    /// `policy`: the deciding rule's name (`implicit-deny` when none matched).
    pub fn policy(self, policy: impl Into<String>) -> Self {
        self.text("policy", policy)
    }

    /// `reason`: a human-readable explanation (an error message with credentials removed).
    pub fn reason(self, reason: impl Into<String>) -> Self {
        self.text("reason", reason)
    }

    /// `token`: which bearer token was used, never the token itself: `jti:ID` when it has a
    /// `jti`, else `sha256:HEX` of the token.
    pub fn token_id(self, id: impl Into<String>) -> Self {
        self.text("token", id)
    }

    /// `cache`: how the value cache was used (e.g. `hit`, `miss`).
    pub fn cache(self, cache: impl Into<String>) -> Self {
        self.text("cache", cache)
    }

    /// `latency_us`: time to decide and serve, in microseconds (clamped to 2^53 − 1).
    pub fn latency_us(self, micros: u64) -> Self {
        let clamped = i64::try_from(micros).map_or(MAX_SAFE_INTEGER, |m| m.min(MAX_SAFE_INTEGER));
        self.set("latency_us", Canon::Int(clamped))
    }

    /// `method`: the HTTP method (blind mode).
    pub fn method(self, method: impl Into<String>) -> Self {
        self.text("method", method)
    }

    /// `host`: the target host (blind mode).
    pub fn host(self, host: impl Into<String>) -> Self {
        self.text("host", host)
    }

    /// `path`: the request path (blind mode). Anything from the first `?` or `#` on is cut off,
    /// so a query string (which may carry a token) is never recorded.
    pub fn path(self, path: impl Into<String>) -> Self {
        let mut path = path.into();
        if let Some(cut) = path.find(['?', '#']) {
            path.truncate(cut);
        }
        self.text("path", path)
    }

    /// `secrets`: the names of the secrets involved (blind mode).
    pub fn secrets<I, S>(self, names: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        let names = names.into_iter().map(|n| Canon::Str(n.into())).collect();
        self.set("secrets", Canon::Arr(names))
    }

    /// The fields set so far, as a JSON object (for inspection and tests).
    pub fn to_json(&self) -> Value {
        Value::Object(
            self.fields
                .iter()
                .map(|(k, v)| (k.0.clone(), v.to_json()))
                .collect(),
        )
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::indexing_slicing)]
    use super::*;

    #[test]
    fn setters_fill_the_spec_names() {
        let mut claims = Map::new();
        claims.insert("run_id".into(), Value::from(12));
        claims.insert("weight".into(), serde_json::json!(0.5));
        let r = Record::new(Transport::Blind)
            .method("GET")
            .host("api.example.com")
            .path("/v1/x?token=abc#frag")
            .secrets(["GH_TOKEN", "NPM_TOKEN"])
            .decision(Decision::Deny)
            .claims(claims)
            .latency_us(u64::MAX)
            .reference("a/b");
        let j = r.to_json();
        assert_eq!(j["transport"], "blind");
        assert_eq!(j["path"], "/v1/x");
        assert_eq!(j["secrets"], serde_json::json!(["GH_TOKEN", "NPM_TOKEN"]));
        assert_eq!(j["decision"], "deny");
        assert_eq!(j["ref"], "a/b");
        assert_eq!(j["claims"]["run_id"], 12);
        assert_eq!(j["claims"]["weight"], "0.5");
        assert_eq!(j["latency_us"], MAX_SAFE_INTEGER);
        assert!(j.get("sub").is_none(), "unset fields are omitted");
    }
}
