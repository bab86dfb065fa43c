//! Team-mode workload identity: a JWT (GitHub Actions, GitLab CI, Kubernetes, SPIFFE, GCP or any
//! OIDC issuer) in, a normalised [`kz_policy::Identity`] out.
//!
//! - [`Verifier::new`] checks the issuers ([`IssuerConfig`], plain data the caller builds from
//!   the bundle) and their static keys; remote key sets are fetched lazily.
//! - [`Verifier::verify`]: the size limit (16 KiB) before anything else; the verified-token cache
//!   (SHA-256 of the token); strict parsing (module `token`: three canonical base64url parts, JSON
//!   objects without duplicate keys, only `alg`/`kid`/`crit` read from the header); the token's
//!   `iss` picks the issuer; only that issuer's keys whose type fits `alg` are tried; then
//!   registered claims (types first, `exp` required, `nbf`/`iat` with leeway, lifetime,
//!   audience), the `jti` replay cache of `single_use` issuers, and the profile.
//! - [`normalise`] maps verified claims to identity fields under a [`Profile`] and a `map`.
//! - [`sign`] makes test tokens (`kz token sign`).
//!
//! **Invariants:** keys come only from the configuration (static keys, `jwks_url`, discovery at
//! `issuer_url`); no header (`jwk`, `jku`, `x5u`, `x5c`) ever makes kz fetch or trust a key. A
//! key's type is fixed when it is built and it verifies only algorithms of that type; HMAC keys
//! come only from a static shared secret that is not public key material. No error message holds
//! the token, a signature or key material.

#![forbid(unsafe_code)]
// Only the CLI prints (`kz-cli`); libraries return values, errors and notes.
#![deny(clippy::print_stdout, clippy::print_stderr)]

mod cache;
mod claims;
mod error;
mod fetch;
mod keys;
mod profile;
mod sign;
mod token;
mod verifier;

use std::collections::BTreeMap;
use std::time::Duration;

use kz_secret::SecretValue;

pub use cache::{REPLAY_CACHE_CAPACITY, TOKEN_CACHE_BYTES, TOKEN_CACHE_CAPACITY};
pub use error::{ConfigError, ErrorCode, IdentityError};
pub use fetch::{DEFAULT_KEYS_TTL, MAX_DOCUMENT_BYTES, MAX_KEYS_TTL, MIN_KEYS_TTL};
pub use keys::MAX_JWKS_KEYS;
pub use profile::{MAP_FIELDS, Profile, claim_path, normalise, spiffe_parts};
pub use sign::{TokenSigner, sign};
pub use token::MAX_TOKEN_BYTES;
pub use verifier::{REFETCH_INTERVAL, ReplayRecords, Verifier, check_issuer};

/// Default clock leeway for `exp`, `nbf` and `iat`.
pub const DEFAULT_LEEWAY: Duration = Duration::from_secs(60);
/// Largest accepted leeway.
pub const MAX_LEEWAY: Duration = Duration::from_secs(3600);
/// Time limit of one HTTP request for discovery or a JWKS.
pub const FETCH_TIMEOUT: Duration = Duration::from_secs(5);

/// Key material of a static key.
#[derive(Debug)]
pub enum KeyMaterial {
    /// A PEM public key (`PUBLIC KEY`, `RSA PUBLIC KEY`) or certificate.
    Pem(String),
    /// An HMAC shared secret (HS256/384/512 only).
    Secret(SecretValue),
}

/// One configured key.
#[derive(Debug)]
pub struct StaticKey {
    pub kid: Option<String>,
    /// The only algorithm this key verifies; required for a shared secret.
    pub alg: Option<String>,
    pub pem_or_secret: KeyMaterial,
}

/// Where an issuer's keys come from.
#[derive(Debug)]
pub enum KeySource {
    Static(Vec<StaticKey>),
    /// A JWKS URL (`https://`, or `http://` to a loopback host).
    JwksUrl(String),
    /// OIDC discovery at `issuer_url/.well-known/openid-configuration`.
    Discovery,
}

/// One issuer, as the bundle states it.
#[derive(Debug)]
pub struct IssuerConfig {
    /// The issuer's name in policies (`issuer`).
    pub name: String,
    pub profile: Profile,
    /// Must equal the token's `iss` exactly.
    pub issuer_url: String,
    /// `aud` must contain it; required unless `allow_any_audience`.
    pub audience: Option<String>,
    pub allow_any_audience: bool,
    pub keys: KeySource,
    /// Identity field → dotted claim path, overriding the profile.
    pub map: BTreeMap<String, String>,
    pub leeway: Duration,
    /// Refuse tokens whose `exp - iat` exceeds this.
    pub max_token_lifetime: Option<Duration>,
    /// Remember each `jti` until its token expires and refuse it a second time.
    pub single_use: bool,
    /// Accept a discovered `jwks_uri` on another origin than `issuer_url`.
    pub allow_private_jwks: bool,
}

impl IssuerConfig {
    /// An issuer with the defaults: discovery, no audience (set one), leeway 60 s, no lifetime
    /// limit, not single-use, `jwks_uri` only on the issuer's origin.
    pub fn new(name: impl Into<String>, profile: Profile, issuer_url: impl Into<String>) -> Self {
        Self {
            name: name.into(),
            profile,
            issuer_url: issuer_url.into(),
            audience: None,
            allow_any_audience: false,
            keys: KeySource::Discovery,
            map: BTreeMap::new(),
            leeway: DEFAULT_LEEWAY,
            max_token_lifetime: None,
            single_use: false,
            allow_private_jwks: false,
        }
    }
}
