//! One loaded bundle and everything built from it, swapped whole on reload.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::AtomicU64;

use kz_bundle::Bundle;
use kz_config::Diagnostic;
use kz_identity::{ReplayRecords, Verifier};
use kz_resolve::{Instance, MemoryCache};
use sha2::{Digest, Sha256};

use crate::{Options, TlsFiles};

/// Values kept by the per-resolver cache (`cache_ttl`), at most.
pub const CACHE_ENTRIES: usize = 10_000;

/// A bundle in force.
pub struct Loaded {
    /// The checked bundle.
    pub bundle: Bundle,
    /// `sha256:` + hex digest of the bundle text.
    pub revision: String,
    /// Verifies tokens against the bundle's issuers.
    pub verifier: Verifier,
    /// The bundle's backends, built.
    pub instances: HashMap<String, Instance>,
    /// Backends that could not be built, with why: their refs get that error (others serve).
    pub broken: HashMap<String, String>,
    /// Values of resolvers with `cache_ttl`.
    pub cache: MemoryCache,
    /// The TLS acceptor, when serving TLS.
    pub tls: Option<tokio_rustls::TlsAcceptor>,
    /// Key-set fetches already counted in the metrics: (succeeded, failed).
    pub refreshes_counted: (AtomicU64, AtomicU64),
    /// Signs short-lived tokens; present when the bundle has a `short_lived` resolver.
    pub signer: Option<kz_identity::TokenSigner>,
    /// `KEYZERO_PROXY_URL`, for short-lived answers.
    pub proxy_url: Option<String>,
    /// The credential proxy's public key (`--proxy` only).
    pub verify_key: Option<crate::proxy::VerifyKey>,
    /// One upstream client per resolver with `hosts` (`--proxy` and `--mcp` only).
    pub egress: Option<crate::upstream::Egress>,
    /// `single_use` records in Redis (the bundle's `replay:`), shared by replicas.
    pub replay_store: Option<crate::replay::RedisReplay>,
}

impl std::fmt::Debug for Loaded {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Loaded")
            .field("bundle", &self.bundle.file)
            .field("revision", &self.revision)
            .field("backends", &self.instances.len())
            .field("tls", &self.tls.is_some())
            .finish_non_exhaustive()
    }
}

/// Reads, checks and builds the bundle at `opts.bundle` (and the TLS files): every problem,
/// with its file and line, or the new state. Does no network I/O (keys are fetched on first
/// use, backends are contacted on first request).
///
/// `records` keeps the `jti`s of `single_use` issuers across reloads: a token used once stays
/// used when the bundle is loaded again.
pub fn load(opts: &Options, records: &ReplayRecords) -> Result<Loaded, Vec<Diagnostic>> {
    let text = kz_bundle::read(&opts.bundle)?;
    let revision = format!(
        "sha256:{}",
        kz_config::discover::hex(&Sha256::digest(text.as_bytes()))
    );
    let bundle = kz_bundle::check(&opts.bundle, &text)?;
    let issuers = bundle.issuer_configs()?;
    let verifier = Verifier::build_sharing(issuers, records).map_err(|errs| {
        errs.iter()
            .map(|e| bundle.config_diagnostic(e))
            .collect::<Vec<_>>()
    })?;
    let tls = match &opts.tls {
        Some(files) => Some(tls_acceptor(files).map_err(|d| vec![d])?),
        None => None,
    };
    let replay_store = match &bundle.replay {
        Some(r) => Some(
            crate::replay::RedisReplay::new(r, &opts.build.getenv, &opts.bundle)
                .map_err(|d| vec![d])?,
        ),
        None => None,
    };
    let verify_key = match &opts.proxy_public_key {
        Some(path) => Some(crate::proxy::verify_key(path).map_err(|d| vec![d])?),
        None => None,
    };
    let egress = if opts.proxy_public_key.is_some() || opts.mcp.is_some() {
        Some(crate::upstream::egress(&bundle).map_err(|d| vec![d])?)
    } else {
        None
    };
    // The proxy redeems tokens and issues none: it needs the public key, not the signing key.
    let signer = if opts.proxy_public_key.is_none()
        && bundle
            .resolvers
            .iter()
            .any(|r| r.mode == kz_bundle::Mode::ShortLived)
    {
        Some(token_signer(opts.signing_key.as_deref(), &bundle).map_err(|d| vec![d])?)
    } else {
        None
    };
    let mut build = opts.build.clone();
    if let Some(dir) = opts.bundle.parent().filter(|d| !d.as_os_str().is_empty()) {
        build.project_dir = dir.to_path_buf();
    }
    let (instances, failed) = kz_providers::build_instances(bundle.backends.iter(), &build);
    let broken = failed
        .into_iter()
        .map(|(name, e)| {
            let mut msg = format!("backend `{name}` is not available: {}", e.message);
            if let Some(h) = &e.help {
                msg.push_str(&format!(" ({h})"));
            }
            (name, msg)
        })
        .collect();
    Ok(Loaded {
        bundle,
        revision,
        verifier,
        instances,
        broken,
        cache: MemoryCache::new(CACHE_ENTRIES),
        tls,
        refreshes_counted: (AtomicU64::new(0), AtomicU64::new(0)),
        signer,
        proxy_url: opts.proxy_url.clone(),
        verify_key,
        egress,
        replay_store,
    })
}

/// The largest signing key file read.
const MAX_KEY_BYTES: usize = 64 * 1024;

/// Reads the short-lived token key: a bundle with a `short_lived` resolver does not load
/// without one (fail closed, at start or reload, not at the first request).
fn token_signer(
    path: Option<&Path>,
    bundle: &Bundle,
) -> Result<kz_identity::TokenSigner, Diagnostic> {
    let first = bundle
        .resolvers
        .iter()
        .find(|r| r.mode == kz_bundle::Mode::ShortLived);
    let at = |d: Diagnostic| match first {
        Some(r) => d.at(&r.pos),
        None => d,
    };
    let help = "pass an Ed25519, EC P-256 or RSA private key in PEM with --signing-key or \
                KEYZERO_SIGNING_KEY_PATH (e.g. `openssl genpkey -algorithm ed25519 -out \
                signing.pem`); the credential proxy verifies with its public key";
    let Some(path) = path else {
        return Err(at(Diagnostic::error(
            "server::signing_key",
            format!(
                "resolver `{}` is short_lived, and no key to sign its tokens was given",
                first.map_or("?", |r| r.name.as_str())
            ),
        ))
        .help(help));
    };
    let bad = |why: String| {
        Diagnostic::error(
            "server::signing_key",
            format!("cannot use {} as the signing key: {why}", path.display()),
        )
        .in_file(path)
        .help(help)
    };
    let bytes = zeroize::Zeroizing::new(
        kz_bundle::read_limited(path, MAX_KEY_BYTES)
            .map_err(|e| bad(e.to_string()))?
            .ok_or_else(|| bad(format!("it is larger than {MAX_KEY_BYTES} bytes")))?,
    );
    let pem = zeroize::Zeroizing::new(
        std::str::from_utf8(&bytes)
            .map_err(|_| bad("it is not PEM text".into()))?
            .to_owned(),
    );
    kz_identity::TokenSigner::from_pem(pem).map_err(|e| bad(e.message))
}

/// A TLS acceptor for `files` (HTTP/2 and HTTP/1.1 by ALPN).
pub fn tls_acceptor(files: &TlsFiles) -> Result<tokio_rustls::TlsAcceptor, Diagnostic> {
    use rustls_pki_types::pem::PemObject as _;
    use rustls_pki_types::{CertificateDer, PrivateKeyDer};
    let bad = |path: &Path, what: &str, e: &dyn std::fmt::Display| {
        Diagnostic::error(
            "server::tls",
            format!("cannot use {} as the TLS {what}: {e}", path.display()),
        )
        .in_file(path)
        .help("pass a PEM certificate chain with --tls-cert and its PEM private key with --tls-key")
    };
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(&files.cert)
        .map_err(|e| bad(&files.cert, "certificate", &e))?
        .collect::<Result<_, _>>()
        .map_err(|e| bad(&files.cert, "certificate", &e))?;
    if certs.is_empty() {
        return Err(bad(&files.cert, "certificate", &"no CERTIFICATE block"));
    }
    let key = PrivateKeyDer::from_pem_file(&files.key).map_err(|e| bad(&files.key, "key", &e))?;
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| bad(&files.cert, "certificate", &e))?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(|e| bad(&files.key, "key", &e))?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(tokio_rustls::TlsAcceptor::from(Arc::new(config)))
}
