//! The JSON shapes of the server's HTTP API (`server.md`, "HTTP API"), in one place so that the
//! server (`kz-server`) and its client (the `keyzero` provider) cannot drift apart.
//!
//! - [`ResolveRequest`]: the body of `POST /v1/resolve` and `POST /v1/decide`.
//! - [`ResolveResponse`] / [`RefResult`]: the answer, one result per requested ref.
//! - [`ErrorBody`] / [`ErrorCode`]: every error answer.
//! - [`Health`]: `GET /healthz`.
//!
//! A resolved value is a [`SecretValue`] on both sides. It is written only by
//! [`ResolveResponse::to_json`], into a zeroizing buffer, and read only by
//! [`ResolveResponse::from_json`], which moves each value out of the parsed text and zeroizes the
//! rest: the value never passes through a plain `String` that outlives the call, and neither
//! type implements `Serialize` for a value by accident.
#![forbid(unsafe_code)]
#![warn(missing_docs)]
// Only the CLI prints (`kz-cli`); libraries return values, errors and notes.
#![deny(clippy::print_stdout, clippy::print_stderr)]

use std::collections::BTreeMap;

use kz_secret::SecretValue;
use serde::{Deserialize, Serialize};
use zeroize::Zeroizing;

/// `POST /v1/resolve`.
pub const RESOLVE_PATH: &str = "/v1/resolve";
/// `POST /v1/decide`.
pub const DECIDE_PATH: &str = "/v1/decide";
/// `GET /healthz`.
pub const HEALTH_PATH: &str = "/healthz";
/// `GET /readyz`.
pub const READY_PATH: &str = "/readyz";
/// `GET /metrics`.
pub const METRICS_PATH: &str = "/metrics";
/// The most refs one request may name.
pub const MAX_REFS: usize = 100;
/// The `error` of a ref that policy allowed but no resolver serves (its `allowed` is `false`).
pub const NO_RESOLVER: &str = "no resolver matches ref";
/// The request id header, honoured when the caller sends one and returned on every answer.
pub const REQUEST_ID_HEADER: &str = "x-request-id";

/// The body of `/v1/resolve` and `/v1/decide`: `{"ref": "…"}` (or `"resource"`) or
/// `{"refs": [...]}`, with an optional caller-supplied (untrusted) `context` object.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ResolveRequest {
    /// One ref (the published field name `resource` is accepted too).
    #[serde(
        rename = "ref",
        alias = "resource",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub reference: Option<String>,
    /// Several refs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub refs: Option<Vec<String>>,
    /// Caller-supplied context, seen by policies as `context` (untrusted).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub context: Option<serde_json::Map<String, serde_json::Value>>,
}

/// Why a request body is not a valid resolve request (the server answers `400`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RequestProblem {
    /// Neither `ref` nor `refs`, or an empty `refs`.
    NoRef,
    /// Both `ref` and `refs`.
    Both,
    /// More than [`MAX_REFS`] refs.
    TooMany(usize),
}

impl std::fmt::Display for RequestProblem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            RequestProblem::NoRef => f.write_str(
                "the body names no ref: send {\"ref\": \"NAME\"} or {\"refs\": [\"NAME\", …]}",
            ),
            RequestProblem::Both => f.write_str("send either `ref` or `refs`, not both"),
            RequestProblem::TooMany(n) => {
                write!(f, "{n} refs in one request; at most {MAX_REFS} are allowed")
            }
        }
    }
}

impl ResolveRequest {
    /// A request for these refs.
    pub fn for_refs(refs: Vec<String>) -> Self {
        Self {
            reference: None,
            refs: Some(refs),
            context: None,
        }
    }

    /// The requested refs in order, duplicates removed, after the shape checks.
    pub fn requested(&self) -> Result<Vec<&str>, RequestProblem> {
        let refs: Vec<&str> = match (&self.reference, &self.refs) {
            (Some(_), Some(_)) => return Err(RequestProblem::Both),
            (Some(r), None) => vec![r.as_str()],
            (None, Some(rs)) => rs.iter().map(String::as_str).collect(),
            (None, None) => Vec::new(),
        };
        if refs.is_empty() {
            return Err(RequestProblem::NoRef);
        }
        if refs.len() > MAX_REFS {
            return Err(RequestProblem::TooMany(refs.len()));
        }
        let mut out: Vec<&str> = Vec::with_capacity(refs.len());
        for r in refs {
            if !out.contains(&r) {
                out.push(r);
            }
        }
        Ok(out)
    }
}

/// A resolved value on the wire: one string, or several named strings (a backend that returns
/// several variables, such as `aws_sts` with `format: env`).
#[derive(Debug, PartialEq, Eq)]
pub enum WireValue {
    /// One value.
    Single(SecretValue),
    /// Several variables.
    Multi(Vec<(String, SecretValue)>),
}

/// The result for one ref. Absent fields are omitted on the wire.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct RefResult {
    /// Whether policy allowed the ref.
    pub allowed: bool,
    /// The deciding policy (or `implicit-deny`).
    pub policy: Option<String>,
    /// Why it was denied (a rule error), when known.
    pub reason: Option<String>,
    /// `direct` or `short_lived`, when a resolver matched and the ref was allowed.
    pub mode: Option<String>,
    /// The value (`direct`, `/v1/resolve` only).
    pub value: Option<WireValue>,
    /// A short-lived token (`short_lived`).
    pub token: Option<SecretValue>,
    /// The token's lifetime in seconds.
    pub ttl: Option<u64>,
    /// The credential proxy that redeems the token.
    pub proxy: Option<String>,
    /// Allowed, but no value: the backend failed or no resolver matched.
    pub error: Option<String>,
}

/// The answer of `/v1/resolve` and `/v1/decide`: `{"results": {"<ref>": RESULT}}`.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct ResolveResponse {
    /// One result per requested ref.
    pub results: BTreeMap<String, RefResult>,
}

/// The JSON form of a [`RefResult`] with values in borrowed form: built only inside
/// [`ResolveResponse::to_json`], never stored.
#[derive(Serialize)]
struct OutResult<'a> {
    allowed: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    policy: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    reason: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    mode: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    value: Option<OutValue<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    token: Option<Exposed<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    ttl: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    proxy: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<&'a str>,
}

#[derive(Serialize)]
#[serde(untagged)]
enum OutValue<'a> {
    Single(Exposed<'a>),
    Multi(BTreeMap<&'a str, Exposed<'a>>),
}

/// A value exposed for serialisation, as a JSON string; a value that is not UTF-8 fails the
/// whole answer with [`WireError::NotUtf8`].
struct Exposed<'a>(&'a SecretValue);

impl Serialize for Exposed<'_> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self.0.expose_str() {
            Some(v) => s.serialize_str(v),
            None => Err(serde::ser::Error::custom("a value is not UTF-8")),
        }
    }
}

/// Why a response could not be written or read.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum WireError {
    /// A value is not UTF-8 (JSON strings cannot carry it).
    NotUtf8,
    /// The answer is not the expected JSON (the message never quotes the body).
    Malformed(String),
}

impl std::fmt::Display for WireError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            WireError::NotUtf8 => f.write_str("a value is not UTF-8 and cannot be sent as JSON"),
            WireError::Malformed(m) => {
                write!(f, "the server's answer is not a resolve response: {m}")
            }
        }
    }
}

impl std::error::Error for WireError {}

/// The parsed form on the client side: values still in the parsed text, zeroized on drop.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct InResponse {
    results: BTreeMap<String, InResult>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct InResult {
    allowed: bool,
    #[serde(default)]
    policy: Option<String>,
    #[serde(default)]
    reason: Option<String>,
    #[serde(default)]
    mode: Option<String>,
    #[serde(default)]
    value: Option<InValue>,
    #[serde(default)]
    token: Option<Zeroizing<String>>,
    #[serde(default)]
    ttl: Option<u64>,
    #[serde(default)]
    proxy: Option<String>,
    #[serde(default)]
    error: Option<String>,
}

/// A value as parsed: a string or a map of strings. Read by hand, not with `untagged`, which
/// would buffer a copy of the value that is not zeroized.
enum InValue {
    Single(Zeroizing<String>),
    Multi(BTreeMap<String, Zeroizing<String>>),
}

impl<'de> Deserialize<'de> for InValue {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> serde::de::Visitor<'de> for V {
            type Value = InValue;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a string or an object of strings")
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<InValue, E> {
                Ok(InValue::Single(Zeroizing::new(v.to_owned())))
            }
            fn visit_string<E: serde::de::Error>(self, v: String) -> Result<InValue, E> {
                Ok(InValue::Single(Zeroizing::new(v)))
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                mut m: A,
            ) -> Result<InValue, A::Error> {
                let mut out = BTreeMap::new();
                while let Some((k, v)) = m.next_entry::<String, Zeroizing<String>>()? {
                    out.insert(k, v);
                }
                Ok(InValue::Multi(out))
            }
        }
        d.deserialize_any(V)
    }
}

fn take(s: Zeroizing<String>) -> SecretValue {
    SecretValue::from_str_copy(&s)
}

impl ResolveResponse {
    /// The JSON text of the answer, in a buffer that is zeroized when dropped. The buffer is
    /// sized up front so that growing it does not leave copies of values behind.
    pub fn to_json(&self) -> Result<Zeroizing<Vec<u8>>, WireError> {
        let mut size = 16usize;
        for (k, r) in &self.results {
            size += 160 + 2 * k.len();
            for v in [&r.policy, &r.reason, &r.mode, &r.proxy, &r.error]
                .into_iter()
                .flatten()
            {
                size += 2 * v.len() + 16;
            }
            size += r.token.as_ref().map_or(0, |t| 6 * t.len() + 16);
            size += match &r.value {
                None => 0,
                Some(WireValue::Single(v)) => 6 * v.len() + 16,
                Some(WireValue::Multi(m)) => {
                    m.iter().map(|(k, v)| 6 * (k.len() + v.len()) + 16).sum()
                }
            };
        }
        let mut buf = Zeroizing::new(Vec::with_capacity(size));
        let out: BTreeMap<&str, OutResult<'_>> = self
            .results
            .iter()
            .map(|(k, r)| {
                (
                    k.as_str(),
                    OutResult {
                        allowed: r.allowed,
                        policy: r.policy.as_deref(),
                        reason: r.reason.as_deref(),
                        mode: r.mode.as_deref(),
                        value: r.value.as_ref().map(|v| match v {
                            WireValue::Single(v) => OutValue::Single(Exposed(v)),
                            WireValue::Multi(m) => OutValue::Multi(
                                m.iter().map(|(k, v)| (k.as_str(), Exposed(v))).collect(),
                            ),
                        }),
                        token: r.token.as_ref().map(Exposed),
                        ttl: r.ttl,
                        proxy: r.proxy.as_deref(),
                        error: r.error.as_deref(),
                    },
                )
            })
            .collect();
        #[derive(Serialize)]
        struct Out<'a> {
            results: BTreeMap<&'a str, OutResult<'a>>,
        }
        serde_json::to_writer(&mut *buf, &Out { results: out }).map_err(|_| WireError::NotUtf8)?;
        Ok(buf)
    }

    /// Reads an answer. Errors describe the shape problem, never the text.
    pub fn from_json(body: &[u8]) -> Result<Self, WireError> {
        let parsed: InResponse = serde_json::from_slice(body).map_err(|e| {
            WireError::Malformed(format!(
                "{} at line {} column {}",
                match e.classify() {
                    serde_json::error::Category::Io => "read error",
                    serde_json::error::Category::Syntax => "invalid JSON",
                    serde_json::error::Category::Data => "unexpected field or type",
                    serde_json::error::Category::Eof => "truncated JSON",
                },
                e.line(),
                e.column()
            ))
        })?;
        let results = parsed
            .results
            .into_iter()
            .map(|(k, r)| {
                (
                    k,
                    RefResult {
                        allowed: r.allowed,
                        policy: r.policy,
                        reason: r.reason,
                        mode: r.mode,
                        value: r.value.map(|v| match v {
                            InValue::Single(s) => WireValue::Single(take(s)),
                            InValue::Multi(m) => {
                                WireValue::Multi(m.into_iter().map(|(k, v)| (k, take(v))).collect())
                            }
                        }),
                        token: r.token.map(take),
                        ttl: r.ttl,
                        proxy: r.proxy,
                        error: r.error,
                    },
                )
            })
            .collect();
        Ok(Self { results })
    }
}

/// The code of an error answer.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    /// 400: bad JSON, no ref, too many refs, an invalid ref.
    InvalidRequest,
    /// 401: the bearer token is missing, malformed or cannot be verified.
    InvalidToken,
    /// 403: the credential proxy refuses the request (outside the token's binding, a guess,
    /// a burned credential).
    Forbidden,
    /// 404: no such endpoint.
    NotFound,
    /// 405: the endpoint does not take this method.
    MethodNotAllowed,
    /// 413: the body is too large.
    PayloadTooLarge,
    /// 415: the body is not `application/json` (the API), or is compressed (the proxy).
    UnsupportedMediaType,
    /// 408: the request body did not arrive in time (the credential proxy).
    RequestTimeout,
    /// 429: this identity sent too many requests.
    RateLimited,
    /// 503: no bundle, or the audit log cannot take the record.
    NotReady,
    /// 500: a fault of the server itself (never caused by client input).
    Internal,
    /// 502: the credential proxy's upstream failed, or the credential is not available.
    UpstreamFailed,
    /// 504: the credential proxy's upstream did not answer in time.
    UpstreamTimeout,
}

impl ErrorCode {
    /// The HTTP status of the code.
    pub fn status(self) -> u16 {
        match self {
            ErrorCode::InvalidRequest => 400,
            ErrorCode::InvalidToken => 401,
            ErrorCode::Forbidden => 403,
            ErrorCode::RequestTimeout => 408,
            ErrorCode::NotFound => 404,
            ErrorCode::MethodNotAllowed => 405,
            ErrorCode::PayloadTooLarge => 413,
            ErrorCode::UnsupportedMediaType => 415,
            ErrorCode::RateLimited => 429,
            ErrorCode::NotReady => 503,
            ErrorCode::Internal => 500,
            ErrorCode::UpstreamFailed => 502,
            ErrorCode::UpstreamTimeout => 504,
        }
    }
}

/// Every error answer: `{"error": CODE, "message": "…"}`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorBody {
    /// The code.
    pub error: ErrorCode,
    /// What went wrong and how to fix it (never a value or a token).
    pub message: String,
}

/// `GET /healthz`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Health {
    /// `ok`.
    pub status: String,
    /// A bundle is loaded.
    pub bundle_loaded: bool,
    /// The bundle's `version`.
    pub bundle_version: String,
    /// `sha256:` + hex digest of the bundle file's bytes in force.
    pub bundle_revision: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    const CANARY: &str = "kz-canary-wire-5d1e";

    #[test]
    fn request_forms() {
        let r: ResolveRequest = serde_json::from_str(r#"{"ref":"a"}"#).unwrap();
        assert_eq!(r.requested().unwrap(), vec!["a"]);
        let r: ResolveRequest = serde_json::from_str(r#"{"resource":"a"}"#).unwrap();
        assert_eq!(r.requested().unwrap(), vec!["a"]);
        let r: ResolveRequest =
            serde_json::from_str(r#"{"refs":["a","b","a"],"context":{"t":1}}"#).unwrap();
        assert_eq!(r.requested().unwrap(), vec!["a", "b"]);
        let r: ResolveRequest = serde_json::from_str(r#"{"refs":[]}"#).unwrap();
        assert_eq!(r.requested(), Err(RequestProblem::NoRef));
        let r: ResolveRequest = serde_json::from_str(r#"{"ref":"a","refs":["b"]}"#).unwrap();
        assert_eq!(r.requested(), Err(RequestProblem::Both));
        let many: Vec<String> = (0..101).map(|i| format!("r{i}")).collect();
        assert_eq!(
            ResolveRequest::for_refs(many).requested(),
            Err(RequestProblem::TooMany(101))
        );
        assert!(serde_json::from_str::<ResolveRequest>(r#"{"ref":"a","x":1}"#).is_err());
        assert!(serde_json::from_str::<ResolveRequest>(r#"{"ref":1}"#).is_err());
    }

    #[test]
    fn response_round_trip_keeps_values_and_omits_absent_fields() {
        let mut resp = ResolveResponse::default();
        resp.results.insert(
            "prod/a".into(),
            RefResult {
                allowed: true,
                policy: Some("ci".into()),
                mode: Some("direct".into()),
                value: Some(WireValue::Single(SecretValue::from_str_copy(CANARY))),
                ..RefResult::default()
            },
        );
        resp.results.insert(
            "prod/b".into(),
            RefResult {
                allowed: false,
                policy: Some("implicit-deny".into()),
                ..RefResult::default()
            },
        );
        resp.results.insert(
            "sts".into(),
            RefResult {
                allowed: true,
                value: Some(WireValue::Multi(vec![(
                    "AWS_ACCESS_KEY_ID".into(),
                    SecretValue::from_str_copy("AKIA\"x"),
                )])),
                ..RefResult::default()
            },
        );
        let json = resp.to_json().unwrap();
        let text = std::str::from_utf8(&json).unwrap();
        assert!(
            text.contains(r#""prod/b":{"allowed":false,"policy":"implicit-deny"}"#),
            "{text}"
        );
        let back = ResolveResponse::from_json(&json).unwrap();
        assert_eq!(back, resp);
        // Debug of the whole answer never shows a value.
        assert!(!format!("{resp:?}").contains(CANARY));
    }

    #[test]
    fn malformed_answers_are_described_without_quoting_them() {
        for body in [
            format!(r#"{{"results":{{"a":{{"allowed":"{CANARY}"}}}}}}"#),
            format!(r#"{{"{CANARY}":1}}"#),
            CANARY.to_string(),
        ] {
            let e = ResolveResponse::from_json(body.as_bytes()).unwrap_err();
            assert!(!e.to_string().contains(CANARY), "{e}");
        }
    }

    #[test]
    fn non_utf8_values_are_refused() {
        let mut resp = ResolveResponse::default();
        resp.results.insert(
            "a".into(),
            RefResult {
                allowed: true,
                value: Some(WireValue::Single(SecretValue::from_bytes(vec![0xff]))),
                ..RefResult::default()
            },
        );
        assert_eq!(resp.to_json().unwrap_err(), WireError::NotUtf8);
    }

    #[test]
    fn error_codes_have_their_statuses() {
        let e = ErrorBody {
            error: ErrorCode::InvalidToken,
            message: "m".into(),
        };
        assert_eq!(
            serde_json::to_string(&e).unwrap(),
            r#"{"error":"invalid_token","message":"m"}"#
        );
        assert_eq!(ErrorCode::RateLimited.status(), 429);
    }
}
