//! The TLS side of blind mode: the per-run CA, per-host leaf certificates, upstream TLS trust and
//! the private directory that hands the CA certificate to the child.
//!
//! - [`RunCa`]: a CA made for this run. Its P-256 key lives only in memory (inside rcgen's
//!   [`Issuer`]); only its certificate is ever written anywhere. Leaves are made on first use per
//!   host, each with its own fresh P-256 key and a lifetime of 24 hours, and cached (bounded) as
//!   ready-to-use rustls [`ServerConfig`]s.
//! - [`upstream_client_config`]: the rustls client config for connections to real servers (system
//!   roots plus `[blind] upstream_ca`).
//! - [`CaDir`]: the mode-0700 temporary directory with `ca.pem` (for `SSL_CERT_FILE` and friends)
//!   and `certs/<subject_hash>.0` (for `SSL_CERT_DIR`), removed when the run ends.
//!
//! Boundary: no networking here and no knowledge of secrets; the proxy ([`crate::proxy`]) decides
//! which host to ask for. All rustls configs use the aws-lc-rs provider explicitly, never a
//! process-wide default.

use std::collections::HashMap;
use std::fmt;
use std::fs::{self, OpenOptions, Permissions};
use std::io::Write;
use std::net::IpAddr;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use base64::Engine;
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, PKCS_ECDSA_P256_SHA256, SanType,
};
use rustls::crypto::CryptoProvider;
use rustls::sign::{CertifiedKey, SingleCertAndKey};
use rustls::{ClientConfig, RootCertStore, ServerConfig};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use sha1::{Digest, Sha1};
use time::{Duration, OffsetDateTime};

/// The run CA's only subject attribute (common name). Lowercase ASCII with single spaces, so
/// OpenSSL's canonical form of the name is the name itself and [`RunCa::subject_hash`] is simple.
pub const CA_COMMON_NAME: &str = "keyzero blind ca";

/// At most this many hosts keep a cached leaf; past it, leaves are made per connection and not
/// cached, so a child asking for endless host names cannot grow our memory without bound.
pub const LEAF_CACHE_LIMIT: usize = 10_000;

/// DER content octets of the OID 2.5.4.3 (id-at-commonName).
const OID_COMMON_NAME: &[u8] = &[0x55, 0x04, 0x03];

/// Errors from the CA, leaf certificates, upstream trust and the CA directory.
#[derive(Debug, thiserror::Error)]
pub enum CaError {
    /// The run CA could not be generated.
    #[error(
        "could not create the blind-mode CA ({reason}); this is a bug or a broken crypto library: \
         report it with your platform details"
    )]
    CaGeneration {
        /// What failed.
        reason: String,
    },
    /// A leaf certificate for `host` could not be made.
    #[error(
        "could not make a TLS certificate for host {host:?}: {reason}; the host must be a valid \
         DNS name or IP address"
    )]
    Leaf {
        /// The host asked for (as given, escaped when printed).
        host: String,
        /// What failed.
        reason: String,
    },
    /// rustls refused to build a TLS configuration.
    #[error("could not build the {what} TLS configuration: {reason}; this is a bug, report it")]
    TlsConfig {
        /// Which configuration (`proxy server` or `upstream client`).
        what: &'static str,
        /// rustls's reason.
        reason: String,
    },
    /// The `[blind] upstream_ca` file could not be read.
    #[error(
        "cannot read the upstream CA file {path} ([blind] upstream_ca): {source}; check the path \
         and its permissions"
    )]
    UpstreamCaRead {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The `[blind] upstream_ca` file holds no usable certificate.
    #[error(
        "the upstream CA file {path} ([blind] upstream_ca) {reason}; it must hold one or more \
         PEM certificates (-----BEGIN CERTIFICATE-----)"
    )]
    UpstreamCaInvalid {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// The private CA directory or a file in it could not be created or written.
    #[error(
        "cannot create the blind-mode CA directory or file {path}: {source}; check that the \
         temporary directory (TMPDIR) is writable"
    )]
    CaDir {
        /// The directory or file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
}

/// The certificate authority made for this run.
///
/// The CA's private key exists only inside this value (in memory) and is dropped with it. Leaf
/// server configurations are cached per host for the life of the value.
pub struct RunCa {
    issuer: Issuer<'static, KeyPair>,
    cert_der: CertificateDer<'static>,
    cert_pem: String,
    subject_hash: String,
    leaves: Mutex<HashMap<String, Arc<ServerConfig>>>,
    cache_limit: usize,
}

impl fmt::Debug for RunCa {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let cached = self.leaves.lock().map(|m| m.len()).unwrap_or_default();
        f.debug_struct("RunCa")
            .field("subject", &CA_COMMON_NAME)
            .field("subject_hash", &self.subject_hash)
            .field("cached_leaves", &cached)
            .field("key", &"[in memory, elided]")
            .finish()
    }
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::aws_lc_rs::default_provider())
}

/// Validity window `now - 1h .. now + hours_after`.
fn validity(hours_after: i64) -> (OffsetDateTime, OffsetDateTime) {
    let now = OffsetDateTime::now_utc();
    (now - Duration::hours(1), now + Duration::hours(hours_after))
}

impl RunCa {
    /// A CA made for this run: P-256 key held only in memory (never written anywhere),
    /// self-signed, basicConstraints CA:true pathlen 0, keyUsage keyCertSign+cRLSign, validity
    /// now-1h .. now+24h, subject a single lowercase-ASCII common name [`CA_COMMON_NAME`].
    pub fn new() -> Result<Self, CaError> {
        let gen_err = |e: rcgen::Error| CaError::CaGeneration {
            reason: e.to_string(),
        };
        let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).map_err(gen_err)?;
        let mut params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, CA_COMMON_NAME);
        params.distinguished_name = dn;
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let (not_before, not_after) = validity(24);
        params.not_before = not_before;
        params.not_after = not_after;
        let cert = params.self_signed(&key).map_err(gen_err)?;
        let cert_pem = cert.pem();
        let cert_der = cert.der().clone();
        Ok(Self {
            issuer: Issuer::new(params, key),
            cert_der,
            cert_pem,
            subject_hash: openssl_name_hash(&[(OID_COMMON_NAME, CA_COMMON_NAME)]),
            leaves: Mutex::new(HashMap::new()),
            cache_limit: LEAF_CACHE_LIMIT,
        })
    }

    /// The CA certificate in PEM (one `CERTIFICATE` block).
    pub fn cert_pem(&self) -> &str {
        &self.cert_pem
    }

    /// The CA certificate in DER.
    pub fn cert_der(&self) -> &CertificateDer<'static> {
        &self.cert_der
    }

    /// OpenSSL's subject hash (`openssl x509 -subject_hash -noout`), 8 lowercase hex: the first
    /// 4 bytes of SHA-1 over the canonical encoding of the subject, read little-endian. This is
    /// the file name (`<hash>.0`) OpenSSL looks for in `SSL_CERT_DIR`.
    pub fn subject_hash(&self) -> String {
        self.subject_hash.clone()
    }

    /// A rustls server configuration presenting a leaf certificate for `host` (a lowercase DNS
    /// name or an IP literal, IPv6 with or without brackets). Made on first use and cached for
    /// the run (up to [`LEAF_CACHE_LIMIT`] hosts); each leaf has its own fresh P-256 key,
    /// validity now-1h .. now+23h, a DNS or IP SAN, EKU serverAuth, and is signed by the run
    /// CA. The chain sent is `[leaf, ca]`; ALPN offers `h2` and `http/1.1`.
    pub fn server_config(&self, host: &str) -> Result<Arc<ServerConfig>, CaError> {
        if let Some(found) = self.lock_leaves().get(host) {
            return Ok(Arc::clone(found));
        }
        // Made outside the lock: key generation and signing must not serialise all handshakes.
        let made = Arc::new(self.make_server_config(host)?);
        let mut leaves = self.lock_leaves();
        if let Some(found) = leaves.get(host) {
            return Ok(Arc::clone(found));
        }
        if leaves.len() < self.cache_limit {
            leaves.insert(host.to_owned(), Arc::clone(&made));
        }
        Ok(made)
    }

    fn lock_leaves(&self) -> std::sync::MutexGuard<'_, HashMap<String, Arc<ServerConfig>>> {
        // A panic while holding the lock cannot leave the map inconsistent (insert is atomic
        // from our point of view), so a poisoned lock is still usable.
        self.leaves
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn make_server_config(&self, host: &str) -> Result<ServerConfig, CaError> {
        let leaf_err = |reason: String| CaError::Leaf {
            host: host.to_owned(),
            reason,
        };
        let san = leaf_san(host).map_err(leaf_err)?;
        let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256)
            .map_err(|e| leaf_err(format!("key generation failed: {e}")))?;
        let mut params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        // X.520 caps commonName at 64 characters; the SAN is what clients check anyway.
        let cn = if host.len() <= 64 {
            host
        } else {
            "keyzero blind leaf"
        };
        dn.push(DnType::CommonName, cn);
        params.distinguished_name = dn;
        params.subject_alt_names = vec![san];
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        params.use_authority_key_identifier_extension = true;
        let (not_before, not_after) = validity(23);
        params.not_before = not_before;
        params.not_after = not_after;
        let cert = params
            .signed_by(&key, &self.issuer)
            .map_err(|e| leaf_err(format!("signing failed: {e}")))?;

        // Borrow the key bytes (no copy); rustls keeps only its parsed signing key.
        let key_der = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialized_der()));
        let signer = rustls::crypto::aws_lc_rs::sign::any_ecdsa_type(&key_der)
            .map_err(|e| leaf_err(format!("rustls rejected the leaf key: {e}")))?;
        drop(key_der);
        // rcgen keeps a copy of the key's bytes; wipe it now that rustls has its own.
        let mut key = key;
        zeroize::Zeroize::zeroize(&mut key);
        drop(key);
        let certified = CertifiedKey::new(vec![cert.der().clone(), self.cert_der.clone()], signer);
        certified
            .keys_match()
            .map_err(|e| leaf_err(format!("leaf key does not match its certificate: {e}")))?;

        let mut config = ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .map_err(|e| CaError::TlsConfig {
                what: "proxy server",
                reason: e.to_string(),
            })?
            .with_no_client_auth()
            .with_cert_resolver(Arc::new(SingleCertAndKey::from(certified)));
        config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        Ok(config)
    }
}

/// The subjectAltName for `host`: an IP address for IP literals (IPv6 optionally in brackets),
/// else a DNS name, validated as one.
fn leaf_san(host: &str) -> Result<SanType, String> {
    let bare = host
        .strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(host);
    if let Ok(ip) = bare.parse::<IpAddr>() {
        return Ok(SanType::IpAddress(ip));
    }
    if bare.len() != host.len() {
        return Err("brackets hold something other than an IPv6 address".to_owned());
    }
    rustls_pki_types::DnsName::try_from(host).map_err(|e| e.to_string())?;
    let ia5 = rcgen::string::Ia5String::try_from(host).map_err(|e| e.to_string())?;
    Ok(SanType::DnsName(ia5))
}

/// OpenSSL's `X509_NAME_hash` for a name made of one attribute per RDN, each `(OID content
/// octets, value)`: SHA-1 over the canonical encoding (the RDN SETs concatenated without the
/// outer SEQUENCE; values as UTF8String, trimmed, inner whitespace runs collapsed to one space,
/// ASCII lowercased), first 4 bytes read little-endian, as 8 lowercase hex digits.
fn openssl_name_hash(rdns: &[(&[u8], &str)]) -> String {
    let mut canon = Vec::new();
    for (oid, value) in rdns {
        let mut atv = der_tlv(0x06, oid);
        atv.extend(der_tlv(0x0c, &canonical_value(value)));
        canon.extend(der_tlv(0x31, &der_tlv(0x30, &atv)));
    }
    let digest = Sha1::digest(&canon);
    let mut first = [0u8; 4];
    for (dst, src) in first.iter_mut().zip(digest.iter()) {
        *dst = *src;
    }
    format!("{:08x}", u32::from_le_bytes(first))
}

/// OpenSSL's `asn1_string_canon` for a UTF-8 value.
fn canonical_value(value: &str) -> Vec<u8> {
    // OpenSSL's ossl_isspace: space, \t, \n, \v, \f, \r.
    let is_space = |b: &u8| matches!(b, b' ' | b'\t' | b'\n' | 0x0b | 0x0c | b'\r');
    let bytes = value.as_bytes();
    let start = bytes
        .iter()
        .position(|b| !is_space(b))
        .unwrap_or(bytes.len());
    let end = bytes
        .iter()
        .rposition(|b| !is_space(b))
        .map_or(start, |i| i + 1);
    let mut out = Vec::with_capacity(end.saturating_sub(start));
    let mut in_space = false;
    for b in bytes.get(start..end).unwrap_or_default() {
        if is_space(b) {
            if !in_space {
                out.push(b' ');
            }
            in_space = true;
        } else {
            out.push(b.to_ascii_lowercase());
            in_space = false;
        }
    }
    out
}

/// A DER tag-length-value.
fn der_tlv(tag: u8, content: &[u8]) -> Vec<u8> {
    let mut out = vec![tag];
    let len = content.len();
    if len < 0x80 {
        out.push(len as u8);
    } else {
        let be = len.to_be_bytes();
        let skip = be.iter().take_while(|b| **b == 0).count();
        let digits = be.get(skip..).unwrap_or_default();
        out.push(0x80 | digits.len() as u8);
        out.extend_from_slice(digits);
    }
    out.extend_from_slice(content);
    out
}

/// The system's root certificates (honours `SSL_CERT_FILE`/`SSL_CERT_DIR`); load errors for
/// individual files are ignored, as any certificate that did load is still usable.
fn system_roots() -> Vec<CertificateDer<'static>> {
    rustls_native_certs::load_native_certs().certs
}

/// Client config for upstream TLS: the system roots (`rustls_native_certs`, which honours
/// `SSL_CERT_FILE`/`SSL_CERT_DIR`) plus every certificate in the PEM file `extra_ca`
/// (`[blind] upstream_ca`). An unreadable file, one with no certificate, or one with a
/// certificate that cannot be used as a trust anchor is an error naming the path. No ALPN is set
/// (the caller sets it). With no roots at all the config is still returned, and every upstream
/// then fails verification.
pub fn upstream_client_config(extra_ca: Option<&Path>) -> Result<ClientConfig, CaError> {
    let mut roots = RootCertStore::empty();
    roots.add_parsable_certificates(system_roots());
    if let Some(path) = extra_ca {
        let invalid = |reason: String| CaError::UpstreamCaInvalid {
            path: path.to_owned(),
            reason,
        };
        let pem = fs::read(path).map_err(|source| CaError::UpstreamCaRead {
            path: path.to_owned(),
            source,
        })?;
        let mut count = 0usize;
        for cert in CertificateDer::pem_slice_iter(&pem) {
            let cert = cert.map_err(|e| invalid(format!("is not valid PEM ({e})")))?;
            count += 1;
            roots
                .add(cert)
                .map_err(|e| invalid(format!("has certificate #{count} that is unusable ({e})")))?;
        }
        if count == 0 {
            return Err(invalid("holds no certificate".to_owned()));
        }
    }
    Ok(ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| CaError::TlsConfig {
            what: "upstream client",
            reason: e.to_string(),
        })?
        .with_root_certificates(roots)
        .with_no_client_auth())
}

/// PEM encoding of one certificate (64-character base64 lines).
fn cert_to_pem(der: &[u8]) -> String {
    let b64 = base64::engine::general_purpose::STANDARD.encode(der);
    let mut out = String::with_capacity(b64.len() + b64.len() / 64 + 64);
    out.push_str("-----BEGIN CERTIFICATE-----\n");
    for line in b64.as_bytes().chunks(64) {
        out.push_str(&String::from_utf8_lossy(line));
        out.push('\n');
    }
    out.push_str("-----END CERTIFICATE-----\n");
    out
}

/// The private directory handed to the child: mode 0700 under [`std::env::temp_dir`] (prefix
/// `kz-blind-`), holding the CA certificate only, never a key. Removed by [`CaDir::remove`] or,
/// best effort, on drop.
#[derive(Debug)]
pub struct CaDir {
    dir: tempfile::TempDir,
}

fn write_private(path: &Path, contents: &[u8]) -> Result<(), CaError> {
    let io_err = |source| CaError::CaDir {
        path: path.to_owned(),
        source,
    };
    let mut file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map_err(io_err)?;
    file.write_all(contents).map_err(io_err)?;
    file.sync_all().map_err(io_err)
}

impl CaDir {
    /// Creates the directory and writes `ca.pem` (mode 0600): only the run CA, or with
    /// `with_system_roots` (for `--no-force-proxy`) the run CA followed by the system roots;
    /// and `certs/<subject_hash>.0` holding only the run CA.
    pub fn create(ca: &RunCa, with_system_roots: bool) -> Result<Self, CaError> {
        let tmp = std::env::temp_dir();
        let dir = tempfile::Builder::new()
            .prefix("kz-blind-")
            .permissions(Permissions::from_mode(0o700))
            .tempdir_in(&tmp)
            .map_err(|source| CaError::CaDir { path: tmp, source })?;
        let this = Self { dir };
        // Whatever the umask did, make sure it is 0700.
        fs::set_permissions(this.path(), Permissions::from_mode(0o700)).map_err(|source| {
            CaError::CaDir {
                path: this.path().to_owned(),
                source,
            }
        })?;

        let mut bundle = ca.cert_pem().to_owned();
        if !bundle.ends_with('\n') {
            bundle.push('\n');
        }
        if with_system_roots {
            for root in system_roots() {
                bundle.push_str(&cert_to_pem(&root));
            }
        }
        write_private(&this.bundle(), bundle.as_bytes())?;

        let certs = this.cert_dir();
        fs::DirBuilder::new()
            .mode(0o700)
            .create(&certs)
            .map_err(|source| CaError::CaDir {
                path: certs.clone(),
                source,
            })?;
        write_private(
            &certs.join(format!("{}.0", ca.subject_hash())),
            ca.cert_pem().as_bytes(),
        )?;
        Ok(this)
    }

    /// The directory.
    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// `…/ca.pem`: the bundle for `SSL_CERT_FILE` and the other CA-file variables.
    pub fn bundle(&self) -> PathBuf {
        self.path().join("ca.pem")
    }

    /// `…/certs`: the hashed directory for `SSL_CERT_DIR`.
    pub fn cert_dir(&self) -> PathBuf {
        self.path().join("certs")
    }

    /// `…/proxy.sock`: where the proxy's Unix socket lives under `--isolate`.
    pub fn socket_path(&self) -> PathBuf {
        self.path().join("proxy.sock")
    }

    /// Removes the directory and everything in it (also done best-effort on drop).
    pub fn remove(self) -> std::io::Result<()> {
        self.dir.close()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rustls::pki_types::ServerName;
    use rustls::{ClientConnection, ServerConnection};
    use std::process::Command;

    const OPENSSL: &str = "/usr/bin/openssl";

    fn openssl() -> Command {
        assert!(
            Path::new(OPENSSL).exists(),
            "these tests need OpenSSL's command-line tool at {OPENSSL}: install it \
             (apt-get install openssl / dnf install openssl)"
        );
        Command::new(OPENSSL)
    }

    /// A client trusting exactly `roots`, offering h2 and http/1.1.
    fn client_trusting(roots: &[&CertificateDer<'static>]) -> Arc<ClientConfig> {
        let mut store = RootCertStore::empty();
        for r in roots {
            store.add((*r).clone()).unwrap();
        }
        let mut cfg = ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(store)
            .with_no_client_auth();
        cfg.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        Arc::new(cfg)
    }

    struct Done {
        chain: Vec<CertificateDer<'static>>,
        alpn: Option<Vec<u8>>,
    }

    /// A complete in-memory TLS handshake; the client's verification error if any.
    fn handshake(
        client: Arc<ClientConfig>,
        server: Arc<ServerConfig>,
        name: &str,
    ) -> Result<Done, rustls::Error> {
        let name = ServerName::try_from(name.to_owned()).unwrap();
        let mut c = ClientConnection::new(client, name).unwrap();
        let mut s = ServerConnection::new(server).unwrap();
        for _ in 0..32 {
            let mut buf = Vec::new();
            while c.wants_write() {
                c.write_tls(&mut buf).unwrap();
            }
            let mut rd = buf.as_slice();
            while !rd.is_empty() {
                s.read_tls(&mut rd).unwrap();
                s.process_new_packets()?;
            }
            let mut buf = Vec::new();
            while s.wants_write() {
                s.write_tls(&mut buf).unwrap();
            }
            let mut rd = buf.as_slice();
            while !rd.is_empty() {
                c.read_tls(&mut rd).unwrap();
                c.process_new_packets()?;
            }
            if !c.is_handshaking() && !s.is_handshaking() {
                return Ok(Done {
                    chain: c.peer_certificates().unwrap().to_vec(),
                    alpn: c.alpn_protocol().map(<[u8]>::to_vec),
                });
            }
        }
        panic!("handshake did not finish");
    }

    /// The uncompressed P-256 public point in a certificate's SubjectPublicKeyInfo.
    fn p256_point(der: &[u8]) -> Vec<u8> {
        // namedCurve prime256v1 OID, then BIT STRING (66 bytes, no unused bits, 0x04 = uncompressed)
        let marker = [
            0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07, 0x03, 0x42, 0x00, 0x04,
        ];
        let at = der
            .windows(marker.len())
            .position(|w| w == marker)
            .expect("no P-256 key in certificate");
        der[at + marker.len()..at + marker.len() + 64].to_vec()
    }

    fn openssl_text(pem: &str) -> String {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("c.pem");
        fs::write(&f, pem).unwrap();
        let out = openssl()
            .args(["x509", "-noout", "-text", "-in"])
            .arg(&f)
            .output()
            .unwrap();
        assert!(out.status.success());
        String::from_utf8(out.stdout).unwrap()
    }

    /// (notBefore, notAfter) as parsed from `openssl x509 -dates -dateopt iso_8601`.
    fn openssl_dates(pem: &str) -> (OffsetDateTime, OffsetDateTime) {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("c.pem");
        fs::write(&f, pem).unwrap();
        let out = openssl()
            .args(["x509", "-noout", "-dates", "-dateopt", "iso_8601", "-in"])
            .arg(&f)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let text = String::from_utf8(out.stdout).unwrap();
        let parse = |key: &str| {
            let line = text.lines().find(|l| l.starts_with(key)).unwrap();
            // e.g. notBefore=2026-01-02 03:04:05Z
            let v = line.split_once('=').unwrap().1.trim().trim_end_matches('Z');
            let (d, t) = v.split_once(' ').unwrap();
            let d: Vec<i32> = d.split('-').map(|x| x.parse().unwrap()).collect();
            let t: Vec<u8> = t.split(':').map(|x| x.parse().unwrap()).collect();
            let date = time::Date::from_calendar_date(
                d[0],
                time::Month::try_from(d[1] as u8).unwrap(),
                d[2] as u8,
            )
            .unwrap();
            date.with_hms(t[0], t[1], t[2]).unwrap().assume_utc()
        };
        (parse("notBefore"), parse("notAfter"))
    }

    #[test]
    fn ca_certificate_shape() {
        let ca = RunCa::new().unwrap();
        assert_eq!(ca.cert_pem().matches("BEGIN CERTIFICATE").count(), 1);
        let text = openssl_text(ca.cert_pem());
        assert!(text.contains("Subject: CN = keyzero blind ca\n"), "{text}");
        assert!(text.contains("Issuer: CN = keyzero blind ca\n"), "{text}");
        assert!(text.contains("CA:TRUE, pathlen:0"), "{text}");
        assert!(text.contains("Certificate Sign, CRL Sign"), "{text}");
        assert!(text.contains("prime256v1"), "{text}");
        let (nb, na) = openssl_dates(ca.cert_pem());
        let now = OffsetDateTime::now_utc();
        assert!(nb <= now - Duration::minutes(59) && nb >= now - Duration::minutes(61));
        assert!(na - nb <= Duration::hours(25) && na > now + Duration::hours(23));
    }

    #[test]
    fn leaf_verifies_against_the_run_ca_and_negotiates_h2() {
        let ca = RunCa::new().unwrap();
        let client = client_trusting(&[ca.cert_der()]);
        let done = handshake(
            client,
            ca.server_config("api.example.com").unwrap(),
            "api.example.com",
        )
        .unwrap();
        assert_eq!(done.alpn.as_deref(), Some(&b"h2"[..]));
        assert_eq!(done.chain.len(), 2, "chain sent must be [leaf, ca]");
        assert_eq!(&done.chain[1], ca.cert_der());

        // Another run's CA is not trusted for this leaf, and the leaf does not cover other names.
        let other = RunCa::new().unwrap();
        let err = handshake(
            client_trusting(&[other.cert_der()]),
            ca.server_config("api.example.com").unwrap(),
            "api.example.com",
        )
        .err()
        .expect("leaf from another CA must be rejected");
        assert!(
            matches!(err, rustls::Error::InvalidCertificate(_)),
            "{err:?}"
        );
        let err = handshake(
            client_trusting(&[ca.cert_der()]),
            ca.server_config("api.example.com").unwrap(),
            "evil.example.com",
        )
        .err()
        .expect("leaf for another host must be rejected");
        assert!(
            matches!(err, rustls::Error::InvalidCertificate(_)),
            "{err:?}"
        );
    }

    #[test]
    fn leaf_alpn_falls_back_to_http1() {
        let ca = RunCa::new().unwrap();
        let mut client = (*client_trusting(&[ca.cert_der()])).clone();
        client.alpn_protocols = vec![b"http/1.1".to_vec()];
        let done = handshake(
            Arc::new(client),
            ca.server_config("a.test").unwrap(),
            "a.test",
        )
        .unwrap();
        assert_eq!(done.alpn.as_deref(), Some(&b"http/1.1"[..]));
    }

    #[test]
    fn each_leaf_has_its_own_key_and_same_host_is_cached() {
        let ca = RunCa::new().unwrap();
        let client = client_trusting(&[ca.cert_der()]);
        let a1 = ca.server_config("a.example").unwrap();
        let a2 = ca.server_config("a.example").unwrap();
        let b = ca.server_config("b.example").unwrap();
        assert!(Arc::ptr_eq(&a1, &a2));
        assert!(!Arc::ptr_eq(&a1, &b));
        let leaf_a = handshake(client.clone(), a1, "a.example").unwrap().chain[0].clone();
        let leaf_b = handshake(client, b, "b.example").unwrap().chain[0].clone();
        let (ka, kb, kca) = (
            p256_point(&leaf_a),
            p256_point(&leaf_b),
            p256_point(ca.cert_der()),
        );
        assert_ne!(ka, kb, "two hosts share a leaf key");
        assert_ne!(ka, kca, "leaf uses the CA key");
        assert_ne!(kb, kca, "leaf uses the CA key");
    }

    #[test]
    fn cache_is_bounded() {
        let mut ca = RunCa::new().unwrap();
        ca.cache_limit = 2;
        let a = ca.server_config("a.test").unwrap();
        ca.server_config("b.test").unwrap();
        let c1 = ca.server_config("c.test").unwrap();
        let c2 = ca.server_config("c.test").unwrap();
        assert!(
            !Arc::ptr_eq(&c1, &c2),
            "past the limit nothing more is cached"
        );
        assert_eq!(ca.lock_leaves().len(), 2);
        assert!(Arc::ptr_eq(&a, &ca.server_config("a.test").unwrap()));
        // The uncached config still works.
        handshake(client_trusting(&[ca.cert_der()]), c2, "c.test").unwrap();
    }

    #[test]
    fn ip_literals_get_ip_sans() {
        let ca = RunCa::new().unwrap();
        let client = client_trusting(&[ca.cert_der()]);
        for (host, name, shown) in [
            ("127.0.0.1", "127.0.0.1", "IP Address:127.0.0.1"),
            ("::1", "::1", "IP Address:0:0:0:0:0:0:0:1"),
            ("[::1]", "::1", "IP Address:0:0:0:0:0:0:0:1"),
        ] {
            let done = handshake(client.clone(), ca.server_config(host).unwrap(), name).unwrap();
            let text = openssl_text(&cert_to_pem(&done.chain[0]));
            assert!(text.contains(shown), "{host}: {text}");
            assert!(!text.contains("DNS:"), "{host}: {text}");
        }
        let done = handshake(client, ca.server_config("localhost").unwrap(), "localhost").unwrap();
        let text = openssl_text(&cert_to_pem(&done.chain[0]));
        assert!(text.contains("DNS:localhost"), "{text}");
        assert!(!text.contains("IP Address"), "{text}");
    }

    #[test]
    fn leaf_lifetime_usage_and_constraints() {
        let ca = RunCa::new().unwrap();
        let done = handshake(
            client_trusting(&[ca.cert_der()]),
            ca.server_config("x.example").unwrap(),
            "x.example",
        )
        .unwrap();
        let pem = cert_to_pem(&done.chain[0]);
        let (nb, na) = openssl_dates(&pem);
        let now = OffsetDateTime::now_utc();
        assert!(
            na - nb <= Duration::hours(24),
            "leaf lifetime {:?} > 24h",
            na - nb
        );
        assert!(nb <= now && na > now + Duration::hours(22));
        let text = openssl_text(&pem);
        assert!(text.contains("TLS Web Server Authentication"), "{text}");
        assert!(text.contains("CA:FALSE"), "{text}");
        assert!(text.contains("Issuer: CN = keyzero blind ca\n"), "{text}");
        assert!(text.contains("prime256v1"), "{text}");
    }

    #[test]
    fn hostile_hosts_are_refused_with_the_host_named() {
        let ca = RunCa::new().unwrap();
        for bad in [
            "",
            "bad host",
            "evil\r\nx",
            "[notip]",
            "caf\u{e9}.example",
            "a..b",
        ] {
            let err = ca
                .server_config(bad)
                .err()
                .unwrap_or_else(|| panic!("{bad:?} accepted"));
            let msg = err.to_string();
            assert!(matches!(err, CaError::Leaf { .. }), "{msg}");
            assert!(msg.contains(&format!("{bad:?}")), "{msg}");
            assert!(!msg.contains('\r') && !msg.contains('\n'), "{msg}");
        }
        assert_eq!(ca.lock_leaves().len(), 0);
        // A long but valid name (over the 64-character CN limit) still works.
        let long = format!("{}.example.com", "a".repeat(60));
        handshake(
            client_trusting(&[ca.cert_der()]),
            ca.server_config(&long).unwrap(),
            &long,
        )
        .unwrap();
    }

    #[test]
    fn subject_hash_matches_openssl() {
        let ca = RunCa::new().unwrap();
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("ca.pem");
        fs::write(&f, ca.cert_pem()).unwrap();
        let out = openssl()
            .args(["x509", "-subject_hash", "-noout", "-in"])
            .arg(&f)
            .output()
            .unwrap();
        assert!(out.status.success());
        let expected = String::from_utf8(out.stdout).unwrap().trim().to_owned();
        assert_eq!(ca.subject_hash(), expected);
        assert_eq!(expected.len(), 8);
    }

    #[test]
    fn name_hash_canonicalises_like_openssl() {
        // Check the canonicalisation itself against OpenSSL with a messy name.
        let dir = tempfile::tempdir().unwrap();
        let key = dir.path().join("k.pem");
        let crt = dir.path().join("c.pem");
        let st = openssl()
            .args([
                "req",
                "-x509",
                "-newkey",
                "ec",
                "-pkeyopt",
                "ec_paramgen_curve:P-256",
            ])
            .args([
                "-nodes",
                "-days",
                "1",
                "-utf8",
                "-subj",
                "/CN=  Key\tZero   BLIND ca  ",
            ])
            .arg("-keyout")
            .arg(&key)
            .arg("-out")
            .arg(&crt)
            .output()
            .unwrap();
        assert!(
            st.status.success(),
            "{}",
            String::from_utf8_lossy(&st.stderr)
        );
        let out = openssl()
            .args(["x509", "-subject_hash", "-noout", "-in"])
            .arg(&crt)
            .output()
            .unwrap();
        let expected = String::from_utf8(out.stdout).unwrap().trim().to_owned();
        assert_eq!(
            openssl_name_hash(&[(OID_COMMON_NAME, "  Key\tZero   BLIND ca  ")]),
            expected
        );
        assert_eq!(canonical_value("  A\t\n b  "), b"a b");
        assert_eq!(canonical_value("   "), b"");
        assert_eq!(der_tlv(0x04, &[0; 200])[..3], [0x04, 0x81, 200]);
        assert_eq!(der_tlv(0x04, &[0; 300])[..4], [0x04, 0x82, 0x01, 0x2c]);
    }

    fn files_under(dir: &Path) -> Vec<PathBuf> {
        let mut out = Vec::new();
        for e in fs::read_dir(dir).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                out.extend(files_under(&p));
            } else {
                out.push(p);
            }
        }
        out
    }

    #[test]
    fn ca_dir_layout_modes_and_openssl_capath() {
        let ca = RunCa::new().unwrap();
        let dir = CaDir::create(&ca, false).unwrap();
        let mode = |p: &Path| fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert!(dir.path().starts_with(std::env::temp_dir()));
        assert!(
            dir.path()
                .file_name()
                .unwrap()
                .to_str()
                .unwrap()
                .starts_with("kz-blind-"),
            "{:?}",
            dir.path()
        );
        assert_eq!(mode(dir.path()), 0o700);
        assert_eq!(mode(&dir.cert_dir()), 0o700);
        assert_eq!(mode(&dir.bundle()), 0o600);
        assert_eq!(dir.bundle(), dir.path().join("ca.pem"));
        assert_eq!(dir.socket_path(), dir.path().join("proxy.sock"));
        assert!(!dir.socket_path().exists());

        let bundle = fs::read_to_string(dir.bundle()).unwrap();
        assert_eq!(bundle, ca.cert_pem());
        let hashed: Vec<_> = fs::read_dir(dir.cert_dir())
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect();
        assert_eq!(
            hashed,
            vec![dir.cert_dir().join(format!("{}.0", ca.subject_hash()))]
        );
        assert_eq!(fs::read_to_string(&hashed[0]).unwrap(), ca.cert_pem());

        // OpenSSL finds the CA through the hashed directory alone.
        let done = handshake(
            client_trusting(&[ca.cert_der()]),
            ca.server_config("verify.example").unwrap(),
            "verify.example",
        )
        .unwrap();
        let scratch = tempfile::tempdir().unwrap();
        let leaf = scratch.path().join("leaf.pem");
        fs::write(&leaf, cert_to_pem(&done.chain[0])).unwrap();
        let verify = |capath: &Path| {
            openssl()
                .args([
                    "verify",
                    "-no-CAfile",
                    "-no-CAstore",
                    "-purpose",
                    "sslserver",
                    "-CApath",
                ])
                .arg(capath)
                .arg(&leaf)
                .output()
                .unwrap()
        };
        let ok = verify(&dir.cert_dir());
        assert!(
            ok.status.success(),
            "{}{}",
            String::from_utf8_lossy(&ok.stdout),
            String::from_utf8_lossy(&ok.stderr)
        );
        // And fails without it (so the check above means something).
        let empty = tempfile::tempdir().unwrap();
        assert!(!verify(empty.path()).status.success());

        let path = dir.path().to_owned();
        dir.remove().unwrap();
        assert!(!path.exists());
    }

    #[test]
    fn ca_dir_is_removed_on_drop() {
        let ca = RunCa::new().unwrap();
        let dir = CaDir::create(&ca, false).unwrap();
        let path = dir.path().to_owned();
        assert!(path.join("ca.pem").exists());
        drop(dir);
        assert!(!path.exists());
    }

    #[test]
    fn bundle_with_system_roots_has_ca_first_then_roots() {
        let ca = RunCa::new().unwrap();
        let roots = system_roots().len();
        let dir = CaDir::create(&ca, true).unwrap();
        let bundle = fs::read_to_string(dir.bundle()).unwrap();
        assert!(bundle.starts_with(ca.cert_pem()));
        assert_eq!(
            bundle.matches("-----BEGIN CERTIFICATE-----").count(),
            1 + roots
        );
        assert_eq!(
            bundle.matches("-----END CERTIFICATE-----").count(),
            1 + roots
        );
        // Every block parses back to a certificate, and the hashed dir still holds only the CA.
        let parsed: Vec<_> = CertificateDer::pem_slice_iter(bundle.as_bytes())
            .collect::<Result<_, _>>()
            .unwrap();
        assert_eq!(parsed.len(), 1 + roots);
        assert_eq!(&parsed[0], ca.cert_der());
        assert_eq!(fs::read_dir(dir.cert_dir()).unwrap().count(), 1);
        if roots == 0 {
            #[allow(clippy::print_stderr)]
            {
                eprintln!("note: this system has no root certificates; only the CA was bundled");
            }
        }
    }

    #[test]
    fn no_private_key_anywhere_in_ca_dir_or_debug() {
        let ca = RunCa::new().unwrap();
        ca.server_config("k.example").unwrap();
        let key_der = ca.issuer.key().serialized_der().to_vec();
        let key_b64 = base64::engine::general_purpose::STANDARD.encode(&key_der);
        for with_roots in [false, true] {
            let dir = CaDir::create(&ca, with_roots).unwrap();
            let files = files_under(dir.path());
            assert_eq!(files.len(), 2);
            for f in files {
                let bytes = fs::read(&f).unwrap();
                let text = String::from_utf8_lossy(&bytes);
                assert!(!text.contains("PRIVATE KEY"), "{f:?}");
                assert!(!text.contains(&key_b64[..40]), "{f:?} holds the CA key");
                assert!(!bytes.windows(key_der.len()).any(|w| w == key_der), "{f:?}");
            }
        }
        let dbg = format!("{ca:?}");
        assert!(
            dbg.contains("elided") && dbg.contains(&ca.subject_hash()),
            "{dbg}"
        );
        assert!(!dbg.contains(&key_b64[..40]), "{dbg}");
        let hex: String = key_der.iter().map(|b| format!("{b:02x}")).collect();
        assert!(
            !dbg.to_lowercase().contains(&hex[hex.len() - 40..]),
            "{dbg}"
        );
        let dec: Vec<String> = key_der.iter().rev().take(8).map(u8::to_string).collect();
        assert!(!dbg.contains(&dec.join(", ")), "{dbg}");
    }

    #[test]
    fn upstream_config_trusts_extra_ca_file() {
        let ca = RunCa::new().unwrap();
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("upstream.pem");
        // A key block next to the certificate is ignored, not an error.
        fs::write(
            &f,
            format!(
                "junk\n{}-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n",
                ca.cert_pem()
            ),
        )
        .unwrap();
        let cfg = upstream_client_config(Some(&f)).unwrap();
        assert!(cfg.alpn_protocols.is_empty());
        handshake(
            Arc::new(cfg),
            ca.server_config("up.example").unwrap(),
            "up.example",
        )
        .unwrap();

        // Without the extra CA the same leaf is not trusted.
        let plain = upstream_client_config(None).unwrap();
        let err = handshake(
            Arc::new(plain),
            ca.server_config("up.example").unwrap(),
            "up.example",
        )
        .err()
        .expect("run CA must not be trusted upstream without upstream_ca");
        assert!(
            matches!(err, rustls::Error::InvalidCertificate(_)),
            "{err:?}"
        );
    }

    #[test]
    fn upstream_config_errors_name_the_path() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("missing-ca.pem");
        let err = upstream_client_config(Some(&missing)).unwrap_err();
        assert!(matches!(err, CaError::UpstreamCaRead { .. }), "{err}");
        assert!(err.to_string().contains("missing-ca.pem"), "{err}");
        assert!(err.to_string().contains("upstream_ca"), "{err}");

        let empty = dir.path().join("no-certs.pem");
        fs::write(
            &empty,
            "-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n",
        )
        .unwrap();
        let err = upstream_client_config(Some(&empty)).unwrap_err();
        assert!(matches!(err, CaError::UpstreamCaInvalid { .. }), "{err}");
        assert!(err.to_string().contains("no-certs.pem"), "{err}");
        assert!(err.to_string().contains("holds no certificate"), "{err}");

        let garbage = dir.path().join("garbage.pem");
        fs::write(
            &garbage,
            "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n",
        )
        .unwrap();
        let err = upstream_client_config(Some(&garbage)).unwrap_err();
        assert!(matches!(err, CaError::UpstreamCaInvalid { .. }), "{err}");
        assert!(err.to_string().contains("garbage.pem"), "{err}");

        let broken = dir.path().join("broken.pem");
        fs::write(
            &broken,
            "-----BEGIN CERTIFICATE-----\n!!!!\n-----END CERTIFICATE-----\n",
        )
        .unwrap();
        let err = upstream_client_config(Some(&broken)).unwrap_err();
        assert!(err.to_string().contains("broken.pem"), "{err}");
    }
}
